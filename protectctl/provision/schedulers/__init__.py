"""Scheduler renderers: a job in, systemd units or a cron.d file out (see base.py)."""

from __future__ import annotations

from protectctl.provision.schedulers.base import JobError, ScheduledJob, SchedulerRenderer, unit_name
from protectctl.provision.schedulers.registry import renderer_for

__all__ = ["JobError", "ScheduledJob", "SchedulerRenderer", "renderer_for", "unit_name"]
