"""The README's walk-through (examples/quickstart/demo.sh) runs end to end: apply, sync,
change a file, sync, restore the first point by time, and the restored file is the old one."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_demo_restores_the_first_version() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / "quickstart" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: the restored file is the one protected first." in proc.stdout
    assert "Traceback" not in proc.stderr
