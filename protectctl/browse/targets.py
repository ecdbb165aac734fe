"""The sources browsing reads: GROUP[/MEMBER] of the policy (or of an agent config), and sources
removed from the policy whose points are still in one of its storages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl.agent.sources import (
    SourceTarget,
    all_sources,
    open_storage,
    parse_selector,
    passphrase_reader,
    scan_points,
    select_sources,
)
from protectctl.errors import ProtectctlError

if TYPE_CHECKING:
    from protectctl.browse import contents
    from protectctl.browse.ops import Changes, Found, History, Listing
    from protectctl.browse.service import BrowseSource


def browse_sources(policy_dir: Path, selector: str, *, agent_config: Path | None) -> list[BrowseSource]:
    """GROUP[/MEMBER] as `BrowseSource`s: the policy's sources, else those of a group removed from
    the policy whose points are still in one of its storages."""
    ref = parse_selector(selector)
    try:
        targets = select_sources(
            policy_dir, agent_config=agent_config, group=ref.group, member=ref.member, include_remote=True
        )
    except ProtectctlError as err:
        if agent_config is not None:
            raise
        removed = removed_sources(policy_dir, selector)
        if not removed:
            raise err from None
        return removed
    return [_of_target(t) for t in targets]


def _of_target(target: SourceTarget) -> BrowseSource:
    return browse_source(target.source, target.provider, target.inputs["spec"], target.inputs["storage"])


def browse_source(
    source: str, provider: str, spec: Mapping[str, Any], storage: Mapping[str, Any], in_policy: bool = True
) -> BrowseSource:
    from protectctl.agent.jobs import open_repository
    from protectctl.browse.service import BrowseSource

    stored = dict(storage)
    return BrowseSource(
        source,
        provider,
        dict(spec),
        stored,
        lambda: open_repository(open_storage(stored), passphrase_reader(stored)()),
        in_policy,
    )


def removed_sources(policy_dir: Path, selector: str | None = None) -> list[BrowseSource]:
    """Sources with points in the policy's storages but no longer in the policy (a group or member
    removed): reachable by GROUP/MEMBER for as long as their points exist."""
    scan = scan_points(policy_dir, selector, agent_config=None, include_removed=True)
    out: dict[str, BrowseSource] = {}
    for p, storage in scan.found:
        if p.source in scan.removed and p.source not in out:
            out[p.source] = browse_source(p.source, str(p.tags.get("provider", "")), {}, storage, in_policy=False)
    return list(out.values())


def mount_sources(policy_dir: Path, selector: str | None, *, agent_config: Path | None) -> list[BrowseSource]:
    """What `protectctl mount` serves: the selected sources, by default every source (removed ones
    included when read from the policy)."""
    if selector:
        return browse_sources(policy_dir, selector, agent_config=agent_config)
    every = all_sources(policy_dir, agent_config=agent_config, include_remote=True)
    return [_of_target(t) for t in every] + ([] if agent_config else removed_sources(policy_dir))


def _one_source(policy_dir: Path, source: str, agent_config: Path | None) -> BrowseSource:
    from protectctl.browse.service import one_source

    return one_source(browse_sources(policy_dir, source, agent_config=agent_config), source)


def browse_ls(
    policy_dir: Path, source: str, path: str, to_time: str, *, agent_config: Path | None
) -> Listing | contents.Listing:
    from protectctl.browse import service

    return service.ls(_one_source(policy_dir, source, agent_config), path, to_time)


def browse_cat(
    policy_dir: Path,
    source: str,
    path: str,
    to_time: str,
    write: Callable[[bytes], object],
    *,
    agent_config: Path | None,
) -> int:
    from protectctl.browse import service

    return service.cat(_one_source(policy_dir, source, agent_config), path, to_time, write)


def browse_versions(
    policy_dir: Path, source: str, path: str, *, agent_config: Path | None
) -> History | contents.History:
    from protectctl.browse import service

    return service.versions(_one_source(policy_dir, source, agent_config), path)


def browse_diff(policy_dir: Path, source: str, before: str, after: str, *, agent_config: Path | None) -> Changes:
    from protectctl.browse import service

    return service.diff(_one_source(policy_dir, source, agent_config), before, after)


def browse_find(
    policy_dir: Path, selector: str, pattern: str, *, since: str | None, until: str | None, agent_config: Path | None
) -> Found:
    from protectctl.browse import service

    return service.find(
        browse_sources(policy_dir, selector, agent_config=agent_config), selector, pattern, since=since, until=until
    )


def browse_mount(
    policy_dir: Path,
    mountpoint: Path,
    selector: str | None,
    *,
    allow_other: bool,
    agent_config: Path | None,
    ready: Callable[[], None] | None = None,
) -> None:
    """`protectctl mount`: the points of the selected sources (default: every source, removed ones
    included) as a read-only filesystem, served until unmounted or interrupted."""
    from protectctl.browse.mount import MountError, serve

    chosen = mount_sources(policy_dir, selector, agent_config=agent_config)
    if not chosen:
        raise MountError("there is no source to mount", hint="protect a group first (apply, then run sync)")
    storages = {repr(sorted(s.storage.items())) for s in chosen}
    if len(storages) > 1:
        raise MountError(
            f"the sources selected are in {len(storages)} storages; one mount serves one storage",
            hint="mount each group on its own mountpoint: protectctl mount MOUNTPOINT GROUP",
        )
    with chosen[0].open_repository() as repo:
        serve(repo, [s.source for s in chosen], str(mountpoint.absolute()), allow_other=allow_other, ready=ready)
