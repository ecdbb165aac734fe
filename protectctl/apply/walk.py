"""Execute a Plan: walk the graph in parallel, save the state after every resource.

Creations and updates go dependencies-first; deletions go dependants-first. A resource
runs once everything it waits for succeeded; dependants of a failure are skipped (their
error is not repeated). The state is written (atomic, fsync, rename) after each resource,
so an interrupted or partly failed apply loses nothing and the next plan shows only what
is left. Apply acts on the plan alone: it never re-plans.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from protectctl.apply.effects import EFFECTS, ApplyContext, Outputs
from protectctl.errors import ProtectctlError
from protectctl.plan.model import Action, Change, Plan
from protectctl.plan.resources import inputs_hash
from protectctl.state.backend import StateBackend
from protectctl.state.model import ResourceState, State

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ResourceResult:
    address: str
    action: Action
    outcome: Outcome
    host: str | None
    message: str = ""
    duration_s: float = 0.0


def _waits_for(plan: Plan) -> dict[str, set[str]]:
    """address → addresses of this plan it must wait for."""
    changes = {c.address: c for c in plan.changes}
    waits: dict[str, set[str]] = {a: set() for a in changes}
    for c in plan.changes:
        for dep in c.depends_on:
            if dep not in changes:
                continue
            if c.action is Action.DELETE and changes[dep].action is Action.DELETE:
                waits[dep].add(c.address)  # delete dependants before what they depend on
            elif c.action is not Action.DELETE and changes[dep].action is not Action.DELETE:
                waits[c.address].add(dep)
    return waits


class _Walker:
    def __init__(
        self,
        plan: Plan,
        state: State,
        backend: StateBackend,
        ctx: ApplyContext,
        on_result: Callable[[ResourceResult], None],
    ) -> None:
        self.plan = plan
        self.state = state
        self.backend = backend
        self.ctx = ctx
        self.on_result = on_result
        self.lock = threading.Lock()
        self.results: dict[str, ResourceResult] = {}

    def run_one(self, change: Change) -> ResourceResult:
        started = time.monotonic()
        try:
            self._execute(change)
        except ProtectctlError as err:
            return self._result(change, Outcome.FAILED, err.message, started)
        except OSError as err:
            return self._result(change, Outcome.FAILED, f"{err.strerror or err}", started)
        except Exception as err:  # noqa: BLE001 - a bug in one effect must not strand the others
            log.exception("apply of %s failed", change.address)
            return self._result(change, Outcome.FAILED, f"internal error (a bug): {type(err).__name__}: {err}", started)
        return self._result(change, Outcome.OK, "", started)

    def _result(self, change: Change, outcome: Outcome, message: str, started: float) -> ResourceResult:
        return ResourceResult(change.address, change.action, outcome, change.host, message, time.monotonic() - started)

    def _execute(self, change: Change) -> None:
        effect = EFFECTS[change.kind]
        rec = self.state.resources.get(change.address)
        outputs: Outputs = dict(rec.outputs) if rec else {}
        if change.action is Action.DELETE:
            assert change.before is not None
            effect.delete(change.before, outputs, self.ctx, delete_data=change.delete_data)
            self._save(change.address, None)
            return
        assert change.after is not None
        if change.action is Action.REPLACE and change.before is not None:
            effect.delete(change.before, outputs, self.ctx, delete_data=False)
            self._save(change.address, None)
            outputs = effect.create(change.after, self.ctx)
        elif change.action is Action.CREATE:
            outputs = effect.create(change.after, self.ctx)
        else:
            outputs = effect.update(change.after, outputs, self.ctx)
        self._save(
            change.address,
            ResourceState(
                kind=change.kind,
                inputs=change.after,
                inputs_hash=inputs_hash(change.after),
                outputs=outputs,
                depends_on=change.depends_on,
                host=change.host,
                holds_data=change.holds_data,
                updated_at=datetime.now(UTC),
            ),
        )

    def _save(self, address: str, record: ResourceState | None) -> None:
        with self.lock:
            if record is None:
                self.state.resources.pop(address, None)
            else:
                self.state.resources[address] = record
            self.state.serial += 1
            self.backend.write(self.state)


def apply_plan(
    plan: Plan,
    state: State,
    backend: StateBackend,
    ctx: ApplyContext,
    *,
    parallelism: int = 10,
    on_result: Callable[[ResourceResult], None] = lambda r: None,
) -> list[ResourceResult]:
    """Run every change of the plan; returns one result per change, in completion order."""
    walker = _Walker(plan, state, backend, ctx, on_result)
    changes = {c.address: c for c in plan.changes}
    waits = _waits_for(plan)
    done: dict[str, Outcome] = {}
    results: list[ResourceResult] = []
    running: dict[Future[ResourceResult], str] = {}

    def finish(result: ResourceResult) -> None:
        done[result.address] = result.outcome
        results.append(result)
        on_result(result)

    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        while len(done) < len(changes):
            before = len(done)
            for address in list(changes):
                if address in done or address in running.values():
                    continue
                blockers = waits[address]
                if any(done.get(b) in (Outcome.FAILED, Outcome.SKIPPED) for b in blockers):
                    failed = sorted(b for b in blockers if b in done and done[b] is not Outcome.OK)
                    finish(
                        ResourceResult(
                            address,
                            changes[address].action,
                            Outcome.SKIPPED,
                            changes[address].host,
                            f"skipped: {', '.join(failed)} did not apply",
                        )
                    )
                elif all(done.get(b) is Outcome.OK for b in blockers) and len(running) < parallelism:
                    running[pool.submit(walker.run_one, changes[address])] = address
            if not running:
                if len(done) == before:
                    raise ProtectctlError("apply cannot proceed: the plan's dependencies form a cycle")
                continue
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                finish(future.result())
    return results
