"""Tape libraries: the `TapeLibrary` / `TapeDrive` Protocols and the file-backed `VirtualLibrary`.

A library has numbered storage slots and drives; a cartridge (named by its barcode) sits in
a slot, in a drive, or outside the library (exported: in a vault or in transit, which the
tape catalog tracks). A drive reads and writes records (opaque byte strings) and filemarks,
like a SCSI sequential-access device: writing anywhere but at the end of data discards what
followed; writing past the early-warning point raises `EndOfMediaError` (nothing written),
after which small records may still go into the reserve (`use_reserve=True`) so the writer
can close the volume, as real drives allow between early warning and physical end.

After a crash (power loss, a killed writer) the media keep what reached them: the last tape
file may lack its filemark, and a record cut off mid-write is not a record (end of data lies
before it). `seek_end_of_data` then stops inside that unterminated file; a writer that wants
whole files seeks back to its first record (`seek_file`) and writes from there, which
discards the partial file, as a real drive does when told to write after the last filemark.

This module knows nothing of the tape format, encryption or the catalog. The conformance
suite every implementation must pass is tests/unit/tape/library_suite.py.

VirtualLibrary layout under its path (each cartridge is a directory of files):
    library.json                   slots, drives and which barcode is where
    cartridges/BARCODE/meta.json   barcode, capacity
    cartridges/BARCODE/fNNNNNN     one tape file: frames b"R" u32be len data ... [b"F"]
    exported/BARCODE/              a cartridge taken out of the library (not loadable)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protectctl.errors import TapeError
from protectctl.fsutil import atomic_write

BARCODE_PATTERN = re.compile(r"^[A-Z0-9]{1,16}$")
_FRAME_RECORD = b"R"
_FRAME_MARK = b"F"
_META = "meta.json"


class EndOfMediaError(TapeError):
    """The record would pass the early-warning point; it was not written."""


class EndOfDataError(TapeError):
    """A read reached the end of recorded data."""


class MediaError(TapeError):
    """The cartridge cannot be found, loaded or used as asked."""


@dataclass(frozen=True, slots=True)
class Element:
    """One place in a library: a slot or a drive, and the barcode in it (None: empty)."""

    kind: str  # "slot" | "drive"
    index: int  # 1-based
    barcode: str | None


class TapeDrive(Protocol):
    """A loaded drive: positioned reads and writes of records and filemarks."""

    @property
    def barcode(self) -> str: ...

    @property
    def capacity_bytes(self) -> int: ...

    @property
    def used_bytes(self) -> int: ...

    def rewind(self) -> None: ...

    def position(self) -> tuple[int, int]:
        """(file number, record number within the file), both 0-based."""
        ...

    def seek_file(self, file_no: int) -> None:
        """Position at the first record of file `file_no`; MediaError if it does not exist."""
        ...

    def locate(self, file_no: int, record_no: int) -> None:
        """Position before record `record_no` of file `file_no` (SCSI LOCATE); `record_no` may be
        the file's record count (at its filemark or end). MediaError when there is no such place."""
        ...

    def seek_end_of_data(self) -> None:
        """Position after the last record or filemark, ready to append. After an interrupted
        write this is inside the last file (record number > 0): it has no filemark."""
        ...

    def write_record(self, data: bytes | bytearray, *, use_reserve: bool = False) -> None:
        """Write one record; EndOfMediaError when it would pass early warning (unless use_reserve)."""
        ...

    def write_filemark(self) -> None: ...

    def read_record(self) -> bytes | None:
        """The next record; None when a filemark was passed; EndOfDataError at end of data
        (also at the end of an unterminated file, and at a record cut off by a crash)."""
        ...

    def erase(self) -> None:
        """Discard everything on the cartridge (long erase); positions at the beginning."""
        ...


class TapeLibrary(Protocol):
    """A changer with slots and drives holding barcoded cartridges."""

    @property
    def slot_count(self) -> int: ...

    @property
    def drive_count(self) -> int: ...

    def elements(self) -> list[Element]:
        """Every slot and drive with what it holds."""
        ...

    def add_cartridge(self, barcode: str) -> int:
        """Put a new blank cartridge into a free slot (the mail slot); returns the slot."""
        ...

    def export_cartridge(self, barcode: str) -> None:
        """Take a cartridge out of the library (to send it off-site)."""
        ...

    def import_cartridge(self, barcode: str) -> int:
        """Bring an exported cartridge back into a free slot; returns the slot."""
        ...

    def exported(self) -> list[str]:
        """Barcodes known to this library but outside it."""
        ...

    def load(self, barcode: str, drive: int | None = None) -> TapeDrive:
        """Move a cartridge from its slot into a drive (a free one if None), rewound."""
        ...

    def unload(self, drive: int) -> None:
        """Return the cartridge in `drive` to a free slot."""
        ...


# -- the virtual library --------------------------------------------------------------------


class VirtualDrive:
    """A drive holding a cartridge directory; positions are kept in memory."""

    def __init__(self, directory: Path, barcode: str, capacity_bytes: int, reserve_bytes: int) -> None:
        self._dir = directory
        self._barcode = barcode
        self._capacity = capacity_bytes
        self._reserve = reserve_bytes
        self._file = 0
        self._record = 0
        self._offset = 0  # byte offset within the current tape file
        self._used = self._measure()

    @property
    def barcode(self) -> str:
        return self._barcode

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        return self._used

    def _path(self, file_no: int) -> Path:
        return self._dir / f"f{file_no:06d}"

    def _files(self) -> list[int]:
        return sorted(int(p.name[1:]) for p in self._dir.glob("f[0-9]*"))

    def _measure(self) -> int:
        """Bytes used: record payloads (framing and filemarks are free, as on real media)."""
        total = 0
        for file_no in self._files():
            for _offset, kind, length in _frames(self._path(file_no)):
                if kind == _FRAME_RECORD:
                    total += length
        return total

    def rewind(self) -> None:
        self._file, self._record, self._offset = 0, 0, 0

    def position(self) -> tuple[int, int]:
        return self._file, self._record

    def seek_file(self, file_no: int) -> None:
        if file_no != 0 and not self._path(file_no).exists() and not self._closed(file_no - 1):
            raise MediaError(f"cartridge {self._barcode} has no file {file_no}")
        self._file, self._record, self._offset = file_no, 0, 0

    def locate(self, file_no: int, record_no: int) -> None:
        self.seek_file(file_no)
        path = self._path(file_no)
        frames = _frames(path) if path.exists() else []
        records = [f for f in frames if f[1] == _FRAME_RECORD]
        if record_no < 0 or record_no > len(records):
            raise MediaError(
                f"cartridge {self._barcode} file {file_no} has {len(records)} record(s), not {record_no + 1}"
            )
        offset = 0 if record_no == 0 else records[record_no - 1][0] + 5 + records[record_no - 1][2]
        self._file, self._record, self._offset = file_no, record_no, offset

    def _closed(self, file_no: int) -> bool:
        """Whether tape file `file_no` exists and ends with a filemark (so file_no + 1 is end of data)."""
        path = self._path(file_no)
        if not path.exists():
            return False
        frames = _frames(path)
        return bool(frames) and frames[-1][1] == _FRAME_MARK

    def seek_end_of_data(self) -> None:
        files = self._files()
        if not files:
            self.rewind()
            return
        last = files[-1]
        frames = _frames(self._path(last))
        if frames and frames[-1][1] == _FRAME_MARK:
            self._file, self._record, self._offset = last + 1, 0, 0
        else:  # unterminated: end of data is after its last whole record
            end = frames[-1][0] + 5 + frames[-1][2] if frames else 0
            self._file, self._record, self._offset = last, len(frames), end

    def _truncate_here(self) -> None:
        """Writing in the middle of a tape discards everything after the head."""
        later = [file_no for file_no in self._files() if file_no > self._file]
        for file_no in later:
            self._path(file_no).unlink()
        removed = bool(later)
        path = self._path(self._file)
        if path.exists() and path.stat().st_size > self._offset:
            os.truncate(path, self._offset)
            removed = True
        if removed:
            self._used = self._measure()

    def write_record(self, data: bytes | bytearray, *, use_reserve: bool = False) -> None:
        if not data:
            raise MediaError("a tape record cannot be empty")
        self._truncate_here()
        limit = self._capacity if use_reserve else self._capacity - self._reserve
        if self._used + len(data) > limit:
            raise EndOfMediaError(f"cartridge {self._barcode} is full ({self._used} of {self._capacity} bytes used)")
        self._append(_FRAME_RECORD + len(data).to_bytes(4, "big"), data)
        self._used += len(data)
        self._record += 1

    def write_filemark(self) -> None:
        self._truncate_here()
        self._append(_FRAME_MARK)
        # a filemark is where a writer counts on its records being on the media: file and the
        # directory entry of a new tape file survive a power cut from here on
        self._fsync(self._path(self._file))
        self._fsync(self._dir)
        self._file, self._record, self._offset = self._file + 1, 0, 0

    def _append(self, *frame: bytes | bytearray) -> None:
        """Append a frame given in pieces (a record's data is not copied to prefix its length)."""
        with open(self._path(self._file), "ab") as out:
            for piece in frame:
                out.write(piece)
        self._offset += sum(len(piece) for piece in frame)

    @staticmethod
    def _fsync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_record(self) -> bytes | None:
        path = self._path(self._file)
        try:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                src.seek(self._offset)
                kind = src.read(1)
                if kind == _FRAME_MARK:
                    self._file, self._record, self._offset = self._file + 1, 0, 0
                    return None
                prefix = src.read(4)
                length = int.from_bytes(prefix, "big")
                # anything but a whole record frame (a record cut off by a crash) is end of data
                if kind != _FRAME_RECORD or len(prefix) != 4 or self._offset + 5 + length > size:
                    raise EndOfDataError(f"end of data on cartridge {self._barcode} (file {self._file})")
                data = src.read(length)
        except FileNotFoundError:
            raise EndOfDataError(f"end of data on cartridge {self._barcode}") from None
        self._offset += 5 + length
        self._record += 1
        return data

    def erase(self) -> None:
        for file_no in self._files():
            self._path(file_no).unlink()
        self._used = 0
        self.rewind()

    def flush(self) -> None:
        path = self._path(self._file)
        if path.exists():
            self._fsync(path)


def _frames(path: Path) -> list[tuple[int, bytes, int]]:
    """(offset, kind, payload length) of every whole frame in a tape file, up to its filemark.

    A frame cut off by a crash (its length runs past the end of the file) and anything that
    is not a frame end the list: that is where the recorded data ends."""
    out: list[tuple[int, bytes, int]] = []
    size = path.stat().st_size
    with open(path, "rb") as src:
        offset = 0
        while offset < size:
            src.seek(offset)
            kind = src.read(1)
            if kind == _FRAME_MARK:
                out.append((offset, kind, 0))
                break
            if kind != _FRAME_RECORD:
                break
            length = int.from_bytes(src.read(4), "big")
            if offset + 5 + length > size:
                break
            out.append((offset, kind, length))
            offset += 5 + length
    return out


class VirtualLibrary:
    """A library whose cartridges are directories; capacity is enforced per cartridge."""

    def __init__(self, path: Path, *, slots: int, drives: int, capacity_bytes: int) -> None:
        if capacity_bytes < 4096:
            raise TapeError(f"a virtual cartridge needs at least 4096 bytes of capacity, not {capacity_bytes}")
        self.path = path
        self._slots = slots
        self._drives = drives
        self.capacity_bytes = capacity_bytes
        # early warning: 1 % of the cartridge, at most 1 MiB (LTO drives warn some GB before the end)
        self.reserve_bytes = min(1 << 20, max(1024, capacity_bytes // 100))
        self._loaded: dict[int, VirtualDrive] = {}
        try:
            (path / "cartridges").mkdir(parents=True, exist_ok=True)
            (path / "exported").mkdir(exist_ok=True)
        except OSError as err:
            raise TapeError(f"cannot use {path} for a virtual tape library: {err.strerror}") from err

    @property
    def slot_count(self) -> int:
        return self._slots

    @property
    def drive_count(self) -> int:
        return self._drives

    # -- library.json: which barcode is where ---------------------------------------------

    def _layout(self) -> dict[str, dict[str, str | None]]:
        try:
            raw = json.loads((self.path / "library.json").read_bytes())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as err:
            raise TapeError(f"library state {self.path / 'library.json'} is unreadable: {err}") from err
        slots = {str(i): raw.get("slots", {}).get(str(i)) for i in range(1, self._slots + 1)}
        drives = {str(i): raw.get("drives", {}).get(str(i)) for i in range(1, self._drives + 1)}
        # cartridges left in slots/drives that no longer exist (library shrunk) stay visible
        for kind, table, count in (("slots", slots, self._slots), ("drives", drives, self._drives)):
            for key, barcode in raw.get(kind, {}).items():
                if barcode and int(key) > count:
                    raise TapeError(f"{kind[:-1]} {key} holds {barcode} but the library has only {count}")
                table.setdefault(key, barcode)
        return {"slots": slots, "drives": drives}

    def _save(self, layout: dict[str, dict[str, str | None]]) -> None:
        try:
            atomic_write(self.path / "library.json", json.dumps(layout, sort_keys=True, indent=1).encode())
        except OSError as err:
            raise TapeError(f"writing {self.path / 'library.json'}: {err.strerror}") from err

    def elements(self) -> list[Element]:
        layout = self._layout()
        out = [Element("slot", int(k), v) for k, v in layout["slots"].items()]
        out += [Element("drive", int(k), v) for k, v in layout["drives"].items()]
        return sorted(out, key=lambda e: (e.kind != "slot", e.index))

    def _where(self, layout: dict[str, dict[str, str | None]], barcode: str) -> tuple[str, str] | None:
        for kind in ("slots", "drives"):
            for key, held in layout[kind].items():
                if held == barcode:
                    return kind, key
        return None

    @staticmethod
    def _free(layout: dict[str, dict[str, str | None]], kind: str) -> str | None:
        return next((k for k, v in sorted(layout[kind].items(), key=lambda kv: int(kv[0])) if v is None), None)

    def add_cartridge(self, barcode: str) -> int:
        if not BARCODE_PATTERN.match(barcode):
            raise MediaError(f"{barcode!r} is not a barcode (upper-case letters and digits, e.g. PT0001L9)")
        layout = self._layout()
        directory = self.path / "cartridges" / barcode
        if directory.exists() or (self.path / "exported" / barcode).exists():
            raise MediaError(f"cartridge {barcode} already exists in library {self.path}")
        slot = self._free(layout, "slots")
        if slot is None:
            raise MediaError(
                f"library {self.path} has no free slot for {barcode}",
                hint="export full cartridges to a vault with `protectctl tape move`",
            )
        directory.mkdir()
        atomic_write(directory / _META, json.dumps({"barcode": barcode, "capacity": self.capacity_bytes}).encode())
        layout["slots"][slot] = barcode
        self._save(layout)
        return int(slot)

    def export_cartridge(self, barcode: str) -> None:
        layout = self._layout()
        where = self._where(layout, barcode)
        if where is None:
            raise MediaError(f"cartridge {barcode} is not in library {self.path}")
        if where[0] == "drives":
            raise MediaError(f"cartridge {barcode} is in drive {where[1]}; unload it first")
        os.replace(self.path / "cartridges" / barcode, self.path / "exported" / barcode)
        layout["slots"][where[1]] = None
        self._save(layout)

    def import_cartridge(self, barcode: str) -> int:
        layout = self._layout()
        if self._where(layout, barcode) is not None:
            raise MediaError(f"cartridge {barcode} is already in library {self.path}")
        source = self.path / "exported" / barcode
        if not source.exists():
            raise MediaError(f"cartridge {barcode} is not known to library {self.path}")
        slot = self._free(layout, "slots")
        if slot is None:
            raise MediaError(f"library {self.path} has no free slot for {barcode}")
        os.replace(source, self.path / "cartridges" / barcode)
        layout["slots"][slot] = barcode
        self._save(layout)
        return int(slot)

    def exported(self) -> list[str]:
        return sorted(p.name for p in (self.path / "exported").iterdir() if p.is_dir())

    def load(self, barcode: str, drive: int | None = None) -> VirtualDrive:
        layout = self._layout()
        where = self._where(layout, barcode)
        if where is None:
            raise MediaError(f"cartridge {barcode} is not in library {self.path}")
        if where[0] == "drives":
            key = where[1]
        else:
            key = str(drive) if drive is not None else (self._free(layout, "drives") or "")
            if key not in layout["drives"]:
                raise MediaError(f"library {self.path} has no drive {drive}")
            if layout["drives"][key] is not None:
                if drive is None:
                    raise MediaError(f"every drive of library {self.path} is busy")
                raise MediaError(f"drive {key} holds {layout['drives'][key]}; unload it first")
            layout["slots"][where[1]] = None
            layout["drives"][key] = barcode
            self._save(layout)
        handle = self._loaded.get(int(key))
        if handle is None or handle.barcode != barcode:
            handle = VirtualDrive(
                self.path / "cartridges" / barcode, barcode, self._capacity_of(barcode), self.reserve_bytes
            )
            self._loaded[int(key)] = handle
        handle.rewind()
        return handle

    def _capacity_of(self, barcode: str) -> int:
        try:
            meta = json.loads((self.path / "cartridges" / barcode / _META).read_bytes())
            return int(meta["capacity"])
        except (OSError, ValueError, KeyError) as err:
            raise MediaError(f"cartridge {barcode}: unreadable {_META} ({err})") from err

    def unload(self, drive: int) -> None:
        layout = self._layout()
        barcode = layout["drives"].get(str(drive))
        if barcode is None:
            return
        handle = self._loaded.pop(drive, None)
        if handle is not None:
            handle.flush()
        slot = self._free(layout, "slots")
        if slot is None:
            raise MediaError(f"library {self.path} has no free slot to unload drive {drive} into")
        layout["drives"][str(drive)] = None
        layout["slots"][slot] = barcode
        self._save(layout)

    def unload_all(self) -> None:
        for element in self.elements():
            if element.kind == "drive" and element.barcode is not None:
                self.unload(element.index)

    def destroy_cartridge(self, barcode: str) -> None:
        """Remove a cartridge for good (tests and `tape` maintenance only)."""
        layout = self._layout()
        where = self._where(layout, barcode)
        if where is not None:
            layout[where[0]][where[1]] = None
            self._save(layout)
        for parent in ("cartridges", "exported"):
            shutil.rmtree(self.path / parent / barcode, ignore_errors=True)
