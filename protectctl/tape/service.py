"""Tape operations behind `protectctl run tape`, `tape …`, `keys …` and restore `--from tape`.

Owns the glue: which library and key a pool uses, the catalog file and key store under the
state directory, cartridge locations (live from the library for cartridges inside it, from
the catalog for vaults and transit), and the results the CLI renders. Cartridges are the
truth; the catalog is saved after every change.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protectctl.catalog.select import select_point
from protectctl.engine.crypto import DEFAULT_KDF_N
from protectctl.errors import ProtectctlError, RestoreError, TapeError
from protectctl.progress import NullProgress, Progress
from protectctl.tape.catalog import (
    Cartridge,
    CartridgeState,
    Copy,
    Location,
    LocationKind,
    PartialKind,
    PartialSegment,
    expiry_of,
    load_catalog,
    recyclable,
    save_catalog,
    sorted_cartridges,
)
from protectctl.tape.copy import PoolTarget, PoolWriter, location_in
from protectctl.tape.inventory import ScanResult, confirm, leftovers, merge_scans, scan_volume, used_files
from protectctl.tape.keys import KeyInfo, KeyStore, unexported_warnings
from protectctl.tape.library import TapeLibrary, VirtualLibrary
from protectctl.tape.reader import TapePointReader
from protectctl.tape.volume import Volume, open_volume, write_label

if TYPE_CHECKING:
    from protectctl.agent.jobs import RestoreResult, SourceJob
    from protectctl.engine.points import Point
    from protectctl.policy.load import Policy


@dataclass(frozen=True, slots=True)
class LibraryConfig:
    name: str
    type: str
    path: Path
    slots: int
    drives: int
    capacity_bytes: int
    media_type: str
    key_name: str


@dataclass(frozen=True, slots=True)
class TapeContext:
    """Where tape state lives and what the policy says about libraries and keys."""

    home: Path  # the directory holding state.json
    libraries: Mapping[str, LibraryConfig]
    passphrases: Mapping[str, Callable[[], bytes]] = field(repr=False)
    kdf_n: int = DEFAULT_KDF_N

    @property
    def catalog_path(self) -> Path:
        return self.home / "tape" / "catalog.json"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"


def context_from_policy(policy: Policy, home: Path, *, kdf_n: int = DEFAULT_KDF_N) -> TapeContext:
    """Libraries and key passphrase resolvers from a loaded policy."""
    from protectctl.plan.resources import resolve_path
    from protectctl.policy.model import EncryptionKeySpec, Kind, TapeLibrarySpec
    from protectctl.secret import SecretRef

    libraries = {}
    for doc in policy.of(Kind.TAPE_LIBRARY).values():
        spec = doc.spec
        assert isinstance(spec, TapeLibrarySpec)
        libraries[doc.name] = LibraryConfig(
            doc.name,
            spec.type,
            Path(resolve_path(doc, spec.path)),
            spec.slots,
            spec.drives,
            spec.media.capacity.bytes,
            spec.media.type,
            spec.encryption.key,
        )
    passphrases: dict[str, Callable[[], bytes]] = {}
    for doc in policy.of(Kind.ENCRYPTION_KEY).values():
        spec = doc.spec
        assert isinstance(spec, EncryptionKeySpec)
        ref = SecretRef(
            env=spec.passphrase.env,
            file=Path(resolve_path(doc, spec.passphrase.file)) if spec.passphrase.file else None,
        )
        passphrases[doc.name] = lambda ref=ref: ref.resolve().value  # type: ignore[misc]
    return TapeContext(home, libraries, passphrases, kdf_n)


# -- results ----------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


@dataclass(frozen=True, slots=True)
class CartridgeRow:
    barcode: str
    library: str
    pool: str
    state: str
    location: str
    expires: datetime | None
    key_id: str
    bytes_used: int
    capacity_bytes: int
    points: int
    partial: tuple[PartialSegment, ...] = ()  # segments no copy counts on (interrupted runs, damage)

    def to_json(self) -> dict[str, object]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["expires"] = _iso(self.expires)
        out["partial"] = [p.to_json() for p in self.partial]
        return out

    def partial_lines(self) -> list[str]:
        return [p.describe(self.barcode) for p in self.partial]


@dataclass(frozen=True, slots=True)
class CopiedPoint:
    source: str
    point_id: str
    point_time: datetime
    barcodes: tuple[str, ...]
    bytes_plain: int

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "point_id": self.point_id,
            "point_time": _iso(self.point_time),
            "barcodes": list(self.barcodes),
            "bytes_plain": self.bytes_plain,
        }


@dataclass(frozen=True, slots=True)
class TapeRunResult:
    group: str
    pool: str
    copied: tuple[CopiedPoint, ...]
    skipped: tuple[str, ...]  # why a source had nothing to copy
    duration_s: float
    repaired: tuple[str, ...] = ()  # partial segments of interrupted runs replaced by this one

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "pool": self.pool,
            "copied": [c.to_json() for c in self.copied],
            "skipped": list(self.skipped),
            "repaired": list(self.repaired),
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True, slots=True)
class RecycleResult:
    recycled: tuple[str, ...]
    away: tuple[str, ...]  # expired but outside the library: "BARCODE (vault X)"
    refused: tuple[str, ...]  # the cartridge itself holds unexpired data (catalog out of date)
    dry_run: bool

    def to_json(self) -> dict[str, object]:
        return {
            "recycled": list(self.recycled),
            "away": list(self.away),
            "refused": list(self.refused),
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class InventoryResult:
    scanned: tuple[str, ...]
    problems: tuple[str, ...]
    copies: int
    rebuilt: bool
    partial: tuple[str, ...] = ()  # partial segments found, one sentence each

    def to_json(self) -> dict[str, object]:
        return {
            "scanned": list(self.scanned),
            "problems": list(self.problems),
            "partial": list(self.partial),
            "copies": self.copies,
            "rebuilt": self.rebuilt,
        }


@dataclass(frozen=True, slots=True)
class TapeVerifyResult:
    """`run verify` of a group's tape copies: every record of the pool's cartridges read back."""

    group: str
    pool: str
    scanned: tuple[str, ...]
    copies_ok: int
    bad: tuple[str, ...]  # copies the catalog counts on that are not whole on tape
    partial: tuple[str, ...]  # segments no copy counts on
    not_read: tuple[str, ...]  # cartridges outside the library, or unreadable

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "pool": self.pool,
            "ok": self.ok,
            "scanned": list(self.scanned),
            "copies_ok": self.copies_ok,
            "bad": list(self.bad),
            "partial": list(self.partial),
            "not_read": list(self.not_read),
        }


# -- the service -------------------------------------------------------------------------------------


class TapeService:
    """One run's view of the tape catalog, key store and libraries."""

    def __init__(self, ctx: TapeContext, *, now: datetime) -> None:
        self.ctx = ctx
        self.now = now
        self.catalog = load_catalog(ctx.catalog_path)
        self.keys = KeyStore(ctx.keys_dir, ctx.passphrases, kdf_n=ctx.kdf_n)
        self._libraries: dict[str, TapeLibrary] = {}

    def save(self) -> None:
        save_catalog(self.ctx.catalog_path, self.catalog)

    # -- libraries and locations --------------------------------------------------------------------

    def library_name(self, name: str | None) -> str:
        if name is not None:
            if name not in self.ctx.libraries:
                raise TapeError(
                    f"no TapeLibrary named {name!r}",
                    hint=f"libraries: {', '.join(sorted(self.ctx.libraries)) or 'none'}",
                )
            return name
        if len(self.ctx.libraries) != 1:
            raise TapeError(
                "the policy has "
                + (
                    f"{len(self.ctx.libraries)} TapeLibrary documents; say which with --library"
                    if self.ctx.libraries
                    else "no TapeLibrary"
                )
            )
        return next(iter(self.ctx.libraries))

    def library(self, name: str) -> TapeLibrary:
        lib = self._libraries.get(name)
        if lib is None:
            config = self.ctx.libraries.get(name)
            if config is None:
                raise TapeError(
                    f"cartridges of library {name!r} are in the catalog, but the policy has no TapeLibrary of that name"
                )
            if config.type != "virtual":
                raise TapeError(
                    f"TapeLibrary {name}: type {config.type!r} is not supported by this version",
                    hint="use type: virtual",
                )
            lib = VirtualLibrary(
                config.path, slots=config.slots, drives=config.drives, capacity_bytes=config.capacity_bytes
            )
            self._libraries[name] = lib
        return lib

    def release_drives(self) -> list[str]:
        """Unload what runs that died left in the drives (call holding the tape lock: no live run
        has a cartridge loaded then). Returns the barcodes unloaded."""
        released = []
        for name in sorted(self.ctx.libraries):
            try:
                lib = self.library(name)
                for element in lib.elements():
                    if element.kind == "drive" and element.barcode is not None:
                        lib.unload(element.index)
                        released.append(element.barcode)
            except TapeError:
                continue  # an unusable library: the command that needs it says why
        return released

    def location_of(self, cart: Cartridge) -> Location:
        """Live for cartridges inside their library, from the catalog otherwise."""
        live = location_in(self.library(cart.library), cart.barcode) if cart.library in self.ctx.libraries else None
        if live is not None:
            return live
        if cart.location.in_library:
            return Location(LocationKind.TRANSIT, "")  # the library no longer has it and nobody said where
        return cart.location

    def mount_cartridge(self, barcode: str) -> tuple[Volume, Callable[[], None]]:
        """A catalog's cartridge loaded and its volume opened; the callback unloads it."""
        return self._mount(self.catalog.cartridge(barcode))

    def _mount(self, cart: Cartridge) -> tuple[Volume, Callable[[], None]]:
        lib = self.library(cart.library)
        drive = lib.load(cart.barcode)
        drive_no = next(e.index for e in lib.elements() if e.kind == "drive" and e.barcode == cart.barcode)
        try:
            cipher = open_volume(drive, self.keys.kek)
        except BaseException:
            lib.unload(drive_no)
            raise
        return Volume(drive, cipher), lambda: lib.unload(drive_no)

    # -- label, list, move ----------------------------------------------------------------------------

    def label(self, count: int, pool: str, library: str | None) -> list[Cartridge]:
        """New blank cartridges in free slots, labelled for `pool` under the library's current key."""
        if count < 1:
            raise TapeError("--count must be at least 1")
        name = self.library_name(library)
        lib, config = self.library(name), self.ctx.libraries[name]
        key = self.keys.ensure(config.key_name, now=self.now)
        kek = self.keys.kek(key.id)
        made = []
        for barcode in self._new_barcodes(name, config.media_type, count):
            lib.add_cartridge(barcode)
            drive = lib.load(barcode)
            drive_no = next(e.index for e in lib.elements() if e.kind == "drive" and e.barcode == barcode)
            try:
                cipher = write_label(drive, pool, key.id, key.name, kek, name, self.now)
                cart = Cartridge(
                    barcode,
                    name,
                    pool,
                    CartridgeState.SCRATCH,
                    key.id,
                    cipher.label.vid,
                    self.now,
                    drive.capacity_bytes,
                    drive.used_bytes,
                )
            finally:
                lib.unload(drive_no)
            cart.moved(self.location_of(cart), self.now, "labelled")
            self.catalog.cartridges[barcode] = cart
            made.append(cart)
        self.save()
        return made

    def _new_barcodes(self, library: str, media_type: str, count: int) -> list[str]:
        suffix = "L" + (media_type[-1] if media_type[-1:].isdigit() else "X")
        used = set(self.catalog.cartridges)
        lib = self.library(library)
        used |= {e.barcode for e in lib.elements() if e.barcode} | set(lib.exported())
        numbers = [int(b[2:6]) for b in used if b.startswith("PT") and b[2:6].isdigit()]
        start = max(numbers, default=0) + 1
        return [f"PT{n:04d}{suffix}" for n in range(start, start + count)]

    def rows(self, pool: str | None = None) -> list[CartridgeRow]:
        out = []
        for cart in sorted_cartridges(self.catalog, pool):
            copies = self.catalog.copies_on(cart.barcode)
            out.append(
                CartridgeRow(
                    cart.barcode,
                    cart.library,
                    cart.pool,
                    cart.state.value,
                    str(self.location_of(cart)),
                    expiry_of(copies),
                    cart.key_id,
                    cart.bytes_used,
                    cart.capacity_bytes,
                    len(copies),
                    tuple(cart.partial),
                )
            )
        return out

    def move(self, barcode: str, to: str) -> Cartridge:
        """Record a cartridge's new place; leaving or entering the library moves it physically."""
        cart = self.catalog.cartridge(barcode)
        where = Location.parse(to)
        lib = self.library(cart.library)
        here = location_in(lib, barcode)
        if where.in_library:
            if here is None:
                lib.import_cartridge(barcode)
        elif here is not None:
            if here.kind is LocationKind.DRIVE:
                lib.unload(int(here.name))
            lib.export_cartridge(barcode)
        cart.moved(self.location_of(cart) if where.in_library else where, self.now, f"moved to {to}")
        self.save()
        return cart

    # -- D2D2T ---------------------------------------------------------------------------------------

    def copy_group(
        self,
        group: str,
        target: PoolTarget,
        jobs: Sequence[SourceJob],
        *,
        all_points: bool = False,
        copy_from: Literal["disk", "source"] = "disk",
        progress: Progress | None = None,
    ) -> TapeRunResult:
        """Copy each source's newest complete point not yet on tape (every such point with all_points)."""
        import time

        from protectctl.engine.repository import Repository

        started = time.monotonic()
        progress = progress or NullProgress()
        writer = PoolWriter(
            self.library(target.library_name), target, self.catalog, self.keys, self.save, self.now, progress
        )
        copied: list[CopiedPoint] = []
        skipped: list[str] = []
        current: list[str] = []  # sources whose newest complete point is on tape after this run
        try:
            for job in jobs:
                if copy_from == "source":
                    copied += self._copy_direct(job, writer, progress)
                    current.append(job.source)
                    continue
                with (
                    Repository.open(job.storage, job.passphrase()) as repo,
                    repo.lock(exclusive=False, command=f"tape {job.source}"),
                ):
                    listed = repo.list_points(job.source)
                    todo = self._points_to_copy(listed, all_points)
                    if not todo:
                        skipped.append(
                            f"{job.source}: every complete point is already on tape"
                            if listed
                            else f"{job.source}: no recovery point yet"
                        )
                        if any(p.complete for p in listed):
                            current.append(job.source)
                    for point in todo:
                        copied.append(_copied(writer.copy_point(repo, point)))
                    if todo:
                        current.append(job.source)
        finally:
            writer.close()
        from protectctl.agent.jobs import record_tape_copies

        record_tape_copies(jobs, current, self.now)
        return TapeRunResult(
            group, target.pool, tuple(copied), tuple(skipped), time.monotonic() - started, tuple(writer.repaired)
        )

    def _points_to_copy(self, points: Sequence[Point], all_points: bool) -> list[Point]:
        """Complete points not on tape; without all_points only the newest, if newer than any on tape."""
        done = {pid for pid, c in self.catalog.copies.items() if c.complete}
        fresh = [p for p in points if p.complete and p.id not in done]
        if all_points:
            return fresh
        on_tape = [
            c.point_time for c in self.catalog.copies.values() if c.complete and points and c.source == points[0].source
        ]
        newest = fresh[-1:]
        if newest and on_tape and newest[0].time <= max(on_tape):
            return []
        return newest

    def _copy_direct(self, job: SourceJob, writer: PoolWriter, progress: Progress) -> list[CopiedPoint]:
        """D2T: a full backup into a throw-away repository, copied to tape, then deleted."""
        import os

        from protectctl.agent.jobs import run_backup
        from protectctl.engine.repository import Repository
        from protectctl.engine.storage.local import LocalStorage

        with tempfile.TemporaryDirectory(prefix="protectctl-d2t-") as tmp:
            passphrase = os.urandom(32)
            storage = LocalStorage(Path(tmp) / "repo")
            Repository.init(storage, passphrase, kdf_n=2**10)  # the key never leaves this process
            temp_job = dataclasses.replace(
                job,
                storage=storage,
                passphrase=lambda: passphrase,
                state_dir=Path(tmp) / "state",
                throttle_bps=None,
            )
            result = run_backup(temp_job, "full", progress=progress, now=lambda: self.now)
            with Repository.open(storage, passphrase) as repo:
                return [_copied(writer.copy_point(repo, repo.load_point(result.point_id)))]

    # -- restore -------------------------------------------------------------------------------------

    def copies_of(self, source: str) -> list[Copy]:
        return sorted(
            (c for c in self.catalog.copies.values() if c.source == source and c.complete),
            key=lambda c: c.point_time,
        )

    def choose(self, source: str, when: datetime | Literal["latest"]) -> Copy:
        copies = self.copies_of(source)
        if not copies:
            raise RestoreError(f"there is no copy of {source} on tape", hint="see `protectctl tape list`")
        chosen: Copy = select_point(_Timed.wrap(copies), when, source=f"{source} on tape").copy
        return chosen

    def restore(
        self,
        job: SourceJob,
        copy: Copy,
        *,
        target: Path | None,
        subpaths: Sequence[str],
        dry_run: bool,
        overwrite: bool,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Read `copy` from its cartridges and restore it through the source's provider."""
        from protectctl.agent.jobs import RestoreResult
        from protectctl.provider import RestoreRequest, load_provider

        away = []
        for part in copy.parts:
            cart = self.catalog.cartridge(part.barcode)
            where = self.location_of(cart)
            if not where.in_library:
                away.append(f"{part.barcode} ({where})")
        if away:
            raise TapeError(
                f"restoring {copy.source} from tape needs cartridge(s) outside the library: {', '.join(away)}",
                hint="bring them back and run `protectctl tape move BARCODE --to library`",
            )
        progress = progress or NullProgress()
        provider = load_provider(job.provider)
        with TapePointReader() as reader:
            mount = lambda barcode: self._mount(self.catalog.cartridge(barcode))  # noqa: E731
            if subpaths and copy.index:  # read only the records the paths need (format 2)
                reader.read_index(copy.point_id, copy.parts, copy.index, mount, copied_at=copy.copied_at)
            else:
                reader.read_parts(copy.point_id, copy.parts, mount, progress, copied_at=copy.copied_at)
            point = reader.point
            outcome = provider.restore(
                RestoreRequest(
                    job.source,
                    job.spec,
                    point,
                    reader,
                    target,
                    tuple(subpaths),
                    dry_run,
                    overwrite,
                    progress,
                    from_tape=True,
                )
            )
        return RestoreResult.of(
            job.source,
            point,
            outcome,
            dry_run=dry_run,
            notes=(f"read from tape: {', '.join(p.barcode for p in copy.parts)}",),
        )

    # -- recycle and inventory -------------------------------------------------------------------------

    def recycle(self, *, dry_run: bool = False) -> RecycleResult:
        """Expired cartridges back to scratch; each is re-read first, refused if it holds unexpired data."""
        recycled, away, refused = [], [], []
        for barcode in recyclable(self.catalog, self.now):
            cart = self.catalog.cartridges[barcode]
            where = self.location_of(cart)
            if not where.in_library:
                away.append(f"{barcode} ({where})")
                continue
            volume, release = self._mount(cart)
            try:
                scan = scan_volume(volume, cart.library, where)
                latest = max((seg.header.expires for seg in scan.segments), default=None)
                damaged = [f.file for f in scan.faults] + [
                    seg.file for seg in scan.segments if seg.fault is PartialKind.DAMAGED
                ]
                if damaged:  # what it holds cannot all be read: its expiry cannot be confirmed
                    refused.append(f"{barcode}: damaged tape file(s) {sorted(set(damaged))}; expiry not confirmed")
                    continue
                if latest is not None and latest > self.now:
                    refused.append(f"{barcode}: holds data until {latest:%Y-%m-%d}")
                    continue
                if not dry_run:
                    self._relabel_scratch(volume, cart)
                    self.save()  # the new volume id at once: the catalog never names an erased volume
            finally:
                release()
            recycled.append(barcode)
        if not dry_run:
            self.save()
        return RecycleResult(tuple(recycled), tuple(away), tuple(refused), dry_run)

    def _relabel_scratch(self, volume: Volume, cart: Cartridge) -> None:
        config = self.ctx.libraries[cart.library]
        key = self.keys.ensure(config.key_name, now=self.now)
        cipher = write_label(volume.drive, cart.pool, key.id, key.name, self.keys.kek(key.id), cart.library, self.now)
        for copy in self.catalog.copies_on(cart.barcode):
            del self.catalog.copies[copy.point_id]
        cart.state, cart.key_id, cart.vid, cart.labelled_at = (
            CartridgeState.SCRATCH,
            key.id,
            cipher.label.vid,
            self.now,
        )
        cart.files, cart.bytes_used, cart.partial = 0, volume.drive.used_bytes, []
        cart.moved(cart.location, self.now, "recycled")

    def inventory(self, *, rebuild: bool) -> InventoryResult:
        """Read every cartridge in the libraries.

        Without `rebuild`, labels and end of data only: locations are refreshed, and cartridges
        the catalog does not know, files it does not account for and a partial last file are
        reported. With `rebuild`, every record is read: copies still whole on tape are kept, whole
        copies the catalog lacks are added, and each cartridge lists its partial segments
        (off-site cartridges and their copies are kept as they are)."""
        scans: list[ScanResult] = []
        problems: list[str] = []
        scanned: list[str] = []
        for name in sorted(self.ctx.libraries):
            lib = self.library(name)
            for element in lib.elements():
                if element.barcode is None:
                    continue
                stub = Cartridge(element.barcode, name, "", CartridgeState.SCRATCH, "", "", self.now, 0)
                location = Location(
                    LocationKind.SLOT if element.kind == "slot" else LocationKind.DRIVE, str(element.index)
                )
                try:
                    volume, release = self._mount(stub)
                    try:
                        if rebuild:
                            scans.append(scan_volume(volume, name, location))
                        else:
                            problems += self._check_label(volume, location)
                    finally:
                        release()
                    scanned.append(element.barcode)
                except ProtectctlError as err:
                    problems.append(f"{element.barcode}: {err.message}")
        if rebuild:
            self.catalog, dropped = merge_scans(scans, self.catalog)
            problems += dropped
            for scan in scans:
                self.catalog.cartridges[scan.cartridge.barcode].location = (
                    location_in(self.library(scan.cartridge.library), scan.cartridge.barcode) or scan.cartridge.location
                )
        self.save()
        partial = [
            p.describe(barcode)
            for barcode in scanned
            if barcode in self.catalog.cartridges
            for p in self.catalog.cartridges[barcode].partial
        ]
        return InventoryResult(tuple(scanned), tuple(problems), len(self.catalog.copies), rebuild, tuple(partial))

    def _check_label(self, volume: Volume, location: Location) -> list[str]:
        label = volume.cipher.label
        cart = self.catalog.cartridges.get(label.barcode)
        if cart is None:
            return [f"{label.barcode}: not in the catalog (pool {label.pool}); run `tape inventory --rebuild`"]
        if cart.vid != label.vid:
            return [f"{label.barcode}: relabelled since the catalog was written; run `tape inventory --rebuild`"]
        cart.moved(location, self.now)
        return self._check_end_of_data(volume, cart)

    @staticmethod
    def _check_end_of_data(volume: Volume, cart: Cartridge) -> list[str]:
        """Where the tape ends against what the catalog accounts for (one space-to-end-of-data)."""
        volume.drive.seek_end_of_data()
        file_no, record_no = volume.drive.position()
        closed = max(file_no - 1, 0)
        out = []
        if record_no > 0 and not any(p.file == file_no for p in cart.partial):
            cart.partial.append(
                PartialSegment(file_no, PartialKind.UNTERMINATED, "", 0, f"{record_no} record(s) without a filemark")
            )
        if closed > cart.files and not all(
            any(p.file == f for p in cart.partial) for f in range(cart.files + 1, closed + 1)
        ):
            out.append(
                f"{cart.barcode}: holds {closed} closed tape file(s), the catalog accounts for "
                f"{cart.files}; run `tape inventory --rebuild` to read them"
            )
        if closed < cart.files:
            out.append(
                f"{cart.barcode}: ends after tape file {closed}, the catalog records {cart.files}; "
                "copies on it may be lost: run `tape inventory --rebuild`"
            )
        return out

    # -- verify ----------------------------------------------------------------------------------

    def verify_pool(self, group: str, target: PoolTarget, sources: Sequence[str]) -> TapeVerifyResult:
        """Read back every cartridge of the pool that holds a copy of `sources` or is being filled:
        each copy the catalog counts on must be whole on tape; partial segments are listed."""
        wanted = [c for c in self.catalog.copies.values() if c.source in sources and c.complete]
        barcodes = {p.barcode for c in wanted for p in c.parts} | {
            b
            for b, c in self.catalog.cartridges.items()
            if c.pool == target.pool and c.library == target.library_name and c.state is CartridgeState.FILLING
        }
        scans: dict[str, ScanResult] = {}
        not_read = []
        for barcode in sorted(barcodes):
            cart = self.catalog.cartridge(barcode)
            where = self.location_of(cart)
            if not where.in_library:
                not_read.append(f"{barcode} ({where})")
                continue
            try:
                volume, release = self._mount(cart)
                try:
                    scans[barcode] = scan_volume(volume, cart.library, where)
                finally:
                    release()
            except ProtectctlError as err:
                not_read.append(f"{barcode}: {err.message}")
        bad = []
        for copy in sorted(wanted, key=lambda c: (c.source, c.point_time)):
            why = confirm(copy, scans)
            if why is not None:
                bad.append(f"{copy.source} point {copy.point_id[:12]} of {copy.point_time:%Y-%m-%d %H:%M:%S}Z: {why}")
        used = used_files(self.catalog.copies.values())
        partial = []
        for barcode, scan in sorted(scans.items()):
            found = leftovers(scan, used)
            self.catalog.cartridges[barcode].partial = found
            partial += [p.describe(barcode) for p in found]
        self.save()
        return TapeVerifyResult(
            group,
            target.pool,
            tuple(sorted(scans)),
            len(wanted) - len(bad),
            tuple(bad),
            tuple(partial),
            tuple(not_read),
        )

    # -- keys --------------------------------------------------------------------------------------

    def cartridges_by_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cart in self.catalog.cartridges.values():
            if cart.state is not CartridgeState.SCRATCH:
                counts[cart.key_id] = counts.get(cart.key_id, 0) + 1
        return counts

    def key_warnings(self) -> list[str]:
        return unexported_warnings(self.keys.infos(), self.cartridges_by_key())


@dataclass(frozen=True, slots=True)
class _Timed:
    copy: Copy

    @property
    def time(self) -> datetime:
        return self.copy.point_time

    @staticmethod
    def wrap(copies: Sequence[Copy]) -> list[_Timed]:
        return [_Timed(c) for c in copies]


def _copied(copy: Copy) -> CopiedPoint:
    return CopiedPoint(
        copy.source,
        copy.point_id,
        copy.point_time,
        tuple(dict.fromkeys(p.barcode for p in copy.parts)),
        copy.bytes_plain,
    )


def key_rows(keys: Sequence[KeyInfo], cartridges_by_key: Mapping[str, int]) -> list[dict[str, object]]:
    return [{"kind": "tape", **k.to_json(), "cartridges": cartridges_by_key.get(k.id, 0)} for k in keys]


def has_tape_copy(policy: Policy, group: str) -> bool:
    """Whether the group's SLA copies to tape."""
    from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec

    doc = policy.get(Kind.PROTECTION_GROUP, group)
    if doc is None or not isinstance(doc.spec, ProtectionGroupSpec):
        return False
    sla_doc = policy.get(Kind.SLA, doc.spec.sla)
    return sla_doc is not None and isinstance(sla_doc.spec, SLASpec) and sla_doc.spec.tape is not None


def group_target(policy: Policy, group: str) -> tuple[PoolTarget, Literal["disk", "source"]]:
    """The pool a group's SLA copies to; TapeError when its SLA has no `tape:`."""
    from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec, TapeLibrarySpec

    doc = policy.get(Kind.PROTECTION_GROUP, group)
    if doc is None:
        raise TapeError(f"no ProtectionGroup named {group!r}")
    assert isinstance(doc.spec, ProtectionGroupSpec)
    sla_doc = policy.get(Kind.SLA, doc.spec.sla)
    assert sla_doc is not None and isinstance(sla_doc.spec, SLASpec)
    tape = sla_doc.spec.tape
    if tape is None:
        raise TapeError(
            f"SLA {doc.spec.sla} of group {group} has no tape copy",
            hint="add `tape: {library, pool, schedule, retention, copyFrom}` to the SLA",
        )
    lib_doc = policy.get(Kind.TAPE_LIBRARY, tape.library)
    if lib_doc is None:
        raise TapeError(f"SLA {doc.spec.sla} names TapeLibrary {tape.library!r}, which the policy lacks")
    assert isinstance(lib_doc.spec, TapeLibrarySpec)
    target = PoolTarget(tape.library, tape.pool, lib_doc.spec.encryption.key, tape.retention.seconds)
    return target, tape.copy_from
