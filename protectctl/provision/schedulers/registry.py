"""Scheduler renderers by name: a Host's `scheduler` → the module that renders it.

A table, not a chain of ifs, and the one module that names every scheduler: base.py holds the
shared types and imports none of them (no cycle), and choosing one scheduler imports only its
module. A new scheduler is a module with a `SCHEDULER` (a SchedulerRenderer) and a line here.
"""

from __future__ import annotations

import importlib
from pathlib import PurePosixPath

from protectctl.provision.schedulers.base import DaemonJob, JobError, SchedulerRenderer

SCHEDULERS: dict[str, str] = {
    "systemd": "protectctl.provision.schedulers.systemd",
    "cron": "protectctl.provision.schedulers.cron",
}


def _known() -> str:
    return " or ".join(SCHEDULERS)


def _load(kind: str) -> SchedulerRenderer | None:
    module = SCHEDULERS.get(kind)
    if module is None:
        return None
    scheduler: SchedulerRenderer = importlib.import_module(module).SCHEDULER
    return scheduler


def renderer_for(kind: str) -> SchedulerRenderer:
    """The renderer for a Host's `scheduler` (`systemd` or `cron`); JobError for anything else."""
    scheduler = _load(kind)
    if scheduler is None:
        raise JobError(f"{kind!r} is not a scheduler; expected {_known()}")
    return scheduler


def render_daemon(kind: str, job: DaemonJob) -> dict[PurePosixPath, str]:
    """The files that keep `job` running under a Host's `scheduler`: a systemd service with
    Restart=always, or a cron.d `@reboot` line (the command supervises itself); JobError otherwise."""
    scheduler = _load(kind)
    if scheduler is None:
        raise JobError(f"unknown scheduler {kind!r}; expected {_known()}")
    return scheduler.render_daemon(job)
