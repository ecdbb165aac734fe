"""`python -m protectctl`: how agents and timers start the CLI."""

from protectctl.cli import main

main()
