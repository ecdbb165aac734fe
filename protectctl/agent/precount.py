"""The pre-count: a thread that walks a backup's source alongside the archiver and reports
its totals (regular files and their bytes), so progress can show a percentage and an ETA.

It counts what the archiver will archive: the same root, the same include/exclude patterns
(`PathFilter`), the same one-filesystem rule, regular files only (a point's "files"), each
hard link's size as often as the archiver counts it. It only lstats (no reads, no xattrs),
so on a first backup it finishes long before the archiver; on a sync whose directories are
reused it walks at the archiver's pace. It runs only for a renderer that shows totals
(`Progress.wants_totals`), at a lower CPU priority, and stops as soon as the archive ends.
What it cannot read it skips: the archiver reports those entries, not the count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from pathlib import Path

from protectctl.agent.patterns import PathFilter
from protectctl.engine.names import name_text
from protectctl.progress import Progress

log = logging.getLogger(__name__)

_REPORT_EVERY_S = 0.5  # partial counts while the walk goes on (a renderer may show "counting")
_NICE = 10  # the count yields the CPU to the backup it describes


class PreCount:
    """Count `root` in a daemon thread; `stop()` ends it (and waits) once the archive is done."""

    def __init__(
        self, root: Path, path_filter: PathFilter, progress: Progress, *, one_file_system: bool = False
    ) -> None:
        self.root = root
        self.filter = path_filter
        self.progress = progress
        self.one_file_system = one_file_system
        self.files = 0
        self.bytes_total = 0
        self.done = False  # the whole tree was counted (and reported with final=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="precount", daemon=True)

    def start(self) -> PreCount:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PreCount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)  # this thread only (Linux)
        try:
            if self._walk():
                self.done = True
                self.progress.total(files=self.files, bytes_total=self.bytes_total, final=True)
        except Exception as err:  # a count is a nicety: it must never fail the backup
            log.warning("precount.failed", extra={"root": str(self.root), "error": repr(err)})

    def _walk(self) -> bool:
        """Count the tree; False when stopped first (or the root is unusable)."""
        try:
            root_st = os.stat(self.root)
        except OSError:
            return False
        if not stat.S_ISDIR(root_st.st_mode):
            return False
        filt = self.filter
        stack: list[tuple[bytes, bytes, bool]] = [(os.fsencode(self.root), b"", not filt.has_includes)]
        reported = time.monotonic()
        while stack:
            if self._stop.is_set():
                return False
            path, rel, included = stack.pop()
            self._directory(path, rel, included, root_st.st_dev, stack)
            now = time.monotonic()
            if now - reported >= _REPORT_EVERY_S:
                reported = now
                self.progress.total(files=self.files, bytes_total=self.bytes_total, final=False)
        return True

    def _directory(
        self, path: bytes, rel: bytes, included: bool, root_dev: int, stack: list[tuple[bytes, bytes, bool]]
    ) -> None:
        try:
            with os.scandir(path) as entries:
                listed = [(e.name, e.path) for e in entries]
        except OSError:
            return
        filt = self.filter
        for index, (name, entry_path) in enumerate(listed):
            if index % 4096 == 4095 and self._stop.is_set():
                return  # a huge directory: the backup is over, stop now, not after its last lstat
            try:
                st = os.lstat(entry_path)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue  # symlinks, devices, ...: not "files" in a point's count
            child_rel = rel + b"/" + name if rel else name
            pattern_path = name_text(child_rel)
            if filt.excluded(pattern_path, is_dir):
                continue
            child_included = included or filt.included(pattern_path, is_dir)
            if is_dir:
                if not (self.one_file_system and st.st_dev != root_dev):
                    stack.append((entry_path, child_rel, child_included))
            elif child_included:
                self.files += 1
                self.bytes_total += st.st_size
