"""protectctl: declarative, policy-as-code data protection for Linux fleets.

The package top stays tiny so that `protectctl --version` starts fast; the public
library surface is `protectctl.api`.
"""

__version__ = "0.1.0"
