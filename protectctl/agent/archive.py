"""The engine services providers use (protectctl.provider): the sink a snapshot writes into,
and `archive`, a directory tree into that sink with the change journal opened, kept and
committed here, so no provider touches the archiver, the journal or the repository.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from protectctl.agent.archiver import ArchiveOptions as ArchiverOptions
from protectctl.agent.archiver import Archiver, BigFileReader, SnapshotView
from protectctl.agent.journal import Journal, writing_error
from protectctl.agent.patterns import PathFilter
from protectctl.agent.precount import PreCount
from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point
from protectctl.engine.repository import BlobKind, BlobWriter, Repository
from protectctl.engine.tree import Tree
from protectctl.errors import ProtectctlError
from protectctl.progress import wants_totals
from protectctl.provider import Archived, ArchiveOptions, Compression, SnapshotRequest, journal_path

# zstd level of `store_content(compression="fast")`: on a MariaDB backup stream (hex-random rows,
# InnoDB pages, 609 MiB) level 1 took 0.99 CPU s, level 2 1.27, level 3 (the default) 2.85, for
# sizes within 1 % (docs/mariadb.md).
FAST_LEVEL = 1

if TYPE_CHECKING:
    from protectctl.agent.changes import Decision, JournalWalk
    from protectctl.agent.watch import Cut


class RepositorySink:
    """A repository's write session as a provider's `SnapshotSink`."""

    def __init__(self, repo: Repository, writer: BlobWriter) -> None:
        self.repo = repo
        self.writer = writer
        self._chunker = repo.chunker()

    @property
    def repository_id(self) -> str:
        return self.repo.id

    def hash_content(self, data: bytes | bytearray | memoryview) -> bytes:
        hasher = self.repo.content_hasher()
        hasher.update(data)
        return hasher.digest()

    def store_content(
        self, data: bytes | bytearray | memoryview, *, compression: Compression = "default"
    ) -> tuple[BlobId, ...]:
        level = FAST_LEVEL if compression == "fast" else None
        return tuple(self.writer.add(BlobKind.DATA, piece, level=level)[0] for piece in self._chunker.iter_buffer(data))

    def store_chunk(self, data: bytes | bytearray | memoryview) -> tuple[BlobId, bool]:
        return self.writer.add(BlobKind.DATA, data)

    def save_tree(self, tree: Tree) -> BlobId:
        return self.repo.save_tree(self.writer, tree)

    def has_blob(self, blob: BlobId) -> bool:
        return self.repo.has_blob(blob)

    def list_points(self, source: str) -> list[Point]:
        return self.repo.list_points(source)


def archive_parallelism(setting: int | None) -> int:
    """Worker processes for a first backup (agent/workers.py): the `parallelism` setting, by
    default the cores, at most 4 (as the writer's threads); 1 archives in this process alone."""
    return max(1, setting if setting is not None else min(4, os.cpu_count() or 1))


def archive(
    request: SnapshotRequest,
    options: ArchiveOptions,
    *,
    journal: str,
    snapshot: SnapshotView | None = None,
    started_ns: int | None = None,
    big_files: BigFileReader | None = None,
    live_subvolumes: list[str] | None = None,
    cut: Cut | str | None = None,
    live_root: Path | None = None,
) -> Archived:
    """See protectctl.provider.archive; the keywords come from agent/tracking.py (the snapshot read
    and its instant, the big-file reader; `live_subvolumes` gets the nested subvolumes read live;
    the watcher's `cut`, taken before the snapshot, and the `live_root` it watches)."""
    sink = request.sink
    if not isinstance(sink, RepositorySink):
        raise TypeError("archive() writes into the sink the agent handed the provider")
    repo = sink.repo
    book = Journal(journal_path(request.state_dir, journal, repo.id), repo_id=repo.id)
    live = Path(options.root) if live_root is None else live_root
    decision = None
    digest = ""
    if options.change_journal == "watch":  # imported only then: the watcher's modules cost start-up
        from protectctl.agent.changes import options_digest, take_cut

        digest = options_digest(live, options.include, options.exclude, options.one_file_system)
        if cut is None:
            cut = take_cut(request.state_dir, request.source)
        decision = _decide(request, options, book, cut, live, digest, sink)
    try:
        out = book.begin(started_ns=started_ns, in_place=decision is not None and decision.changes is not None)
    except (sqlite3.Error, OSError) as err:
        book.close()
        raise writing_error(book.path, err) from err
    walk: JournalWalk | None = None
    if decision is not None and decision.changes is not None:
        from protectctl.agent.changes import JournalWalk

        try:
            walk = JournalWalk(decision.changes, book, out, repo)
        except sqlite3.Error as err:
            out.abort()
            book.close()
            raise writing_error(book.path, err) from err
    path_filter = PathFilter([str(p) for p in options.include], [str(p) for p in options.exclude])
    # the totals a renderer shows (percentage, ETA) are counted alongside, never before; not for
    # a journal walk, which reuses what it does not walk: counting would lstat every file it skips
    count = (
        PreCount(Path(options.root), path_filter, request.progress, one_file_system=options.one_file_system)
        if wants_totals(request.progress) and walk is None
        else None
    )
    try:
        if count is not None:
            count.start()
        result = Archiver(
            repo,
            sink.writer,
            book,
            out,
            ArchiverOptions(
                root=Path(options.root),
                filter=path_filter,
                one_file_system=options.one_file_system,
                verify_all=options.verify_all,
                reread=options.reread,
                keep_trees=options.keep_trees,
                snapshot=snapshot,
                big_files=big_files,
                unchanged=walk,
                parallelism=archive_parallelism(sink.writer.parallelism),
            ),
            request.progress,
        ).run()
    except sqlite3.Error as err:  # the next journal cannot be written: a full disk
        out.abort()
        book.close()
        raise writing_error(book.path, err) from err
    except BaseException:
        out.abort()
        book.close()
        raise
    finally:
        if count is not None:
            count.stop()
    previous_meta = dict(book.meta)
    book.close()
    assert result.tree is not None and result.root is not None
    meta = {"point_id": "", "source": request.source}
    facts: dict[str, object] = {}
    if decision is not None:
        from protectctl.agent.changes import cut_meta

        facts = decision.facts(len(walk.walked) if walk is not None else None)
        if decision.cut is not None:
            linked = walk.linked(previous_meta, result.linked_dirs) if walk is not None else result.linked_dirs
            meta.update(cut_meta(decision.cut, digest, linked))
    if live_subvolumes is not None:
        live_subvolumes += result.live_subvolumes

    def finish(point_id: str | None) -> None:
        if point_id is None:
            out.abort()
        else:
            out.commit({**meta, "point_id": point_id})

    root: os.stat_result = result.root
    return Archived(
        tree=result.tree,
        files=result.files,
        dirs=result.dirs,
        bytes_total=result.bytes_total,
        bytes_read=result.bytes_read,
        files_read=result.files_read,
        files_reused=result.files_reused,
        silent_changes=result.silent_changes,
        silent_changed=tuple(result.silent_changed),
        errors=tuple(result.errors),
        root=root,
        trees=dict(result.trees),
        finish=finish,
        capture=facts,
    )


def _decide(
    request: SnapshotRequest,
    options: ArchiveOptions,
    book: Journal,
    cut: Cut | str,
    live: Path,
    digest: str,
    sink: RepositorySink,
) -> Decision:
    from protectctl.agent.changes import Decision, decide
    from protectctl.agent.watch import Cut

    if options.verify_all:
        return Decision(cut if isinstance(cut, Cut) else None, "a full reads everything")
    if options.reread is not None or options.keep_trees:
        return Decision(cut if isinstance(cut, Cut) else None, "this provider vets every file")
    points = []
    last = book.point_id
    if isinstance(cut, Cut) and last and book.meta.get("watch_generation") in (cut.generation, cut.rotated_from):
        try:  # one manifest, not the repository's list of points
            if sink.repo.load_point(last).source == request.source:
                points.append(last)
        except ProtectctlError:
            pass  # gone (pruned) or unreadable: a full walk says so
    return decide(
        book, cut, state_dir=request.state_dir, source=request.source, live_root=live, digest=digest, points=points
    )
