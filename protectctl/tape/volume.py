"""A loaded cartridge as a volume: its label, and sealed records at tracked positions.

Owns labelling (erase + label record + filemark) and reading/writing sealed records
through a `TapeDrive`, taking each record's (file, record) position from the drive so the
AAD binds it. Knows nothing of points, pools or the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from protectctl.errors import TapeError
from protectctl.tape.format import (
    Label,
    RecordType,
    VolumeCipher,
    decode_label,
    encode_label,
    new_label,
    unwrap_data_key,
)
from protectctl.tape.library import EndOfDataError, TapeDrive


def write_label(
    drive: TapeDrive, pool: str, key_id: str, key_name: str, kek: bytes, library: str, now: datetime
) -> VolumeCipher:
    """Erase the cartridge and label it as a new volume; returns its cipher."""
    label, data_key = new_label(drive.barcode, pool, key_id, key_name, kek, library, now)
    drive.erase()
    drive.write_record(encode_label(label), use_reserve=True)
    drive.write_filemark()
    return VolumeCipher(label, data_key)


def read_label(drive: TapeDrive) -> Label:
    """The label of the loaded cartridge; TapeError when it has none (blank or foreign)."""
    drive.rewind()
    try:
        raw = drive.read_record()
    except EndOfDataError:
        raise TapeError(
            f"cartridge {drive.barcode} is blank (no label)", hint="label it with `protectctl tape label`"
        ) from None
    if raw is None:
        raise TapeError(f"cartridge {drive.barcode} starts with a filemark: not a protectctl tape")
    label = decode_label(raw, f"cartridge {drive.barcode}")
    if label.barcode != drive.barcode:
        raise TapeError(
            f"cartridge {drive.barcode} carries the label of {label.barcode}",
            hint="its barcode sticker and its recorded label disagree; check the cartridge",
        )
    return label


def open_volume(drive: TapeDrive, kek_of: Callable[[str], bytes]) -> VolumeCipher:
    """Label + unwrapped data key of the loaded cartridge."""
    label = read_label(drive)
    return VolumeCipher(label, unwrap_data_key(label, kek_of(label.key_id)))


class Volume:
    """Sealed records on a loaded cartridge."""

    def __init__(self, drive: TapeDrive, cipher: VolumeCipher) -> None:
        self.drive = drive
        self.cipher = cipher

    @property
    def barcode(self) -> str:
        return self.drive.barcode

    def write(self, kind: RecordType, plaintext: bytes | bytearray, *, use_reserve: bool = False) -> int:
        """Seal and write one record; returns its size on tape. EndOfMediaError leaves nothing written."""
        file_no, record_no = self.drive.position()
        raw = self.cipher.seal(kind, file_no, record_no, plaintext)
        self.drive.write_record(raw, use_reserve=use_reserve)
        return len(raw)

    def read(self) -> tuple[RecordType, bytes, bytes] | None:
        """(type, plaintext, raw) of the next record; None at a filemark; EndOfDataError at the end."""
        file_no, record_no = self.drive.position()
        raw = self.drive.read_record()
        if raw is None:
            return None
        kind, plain = self.cipher.open(raw, file_no, record_no)
        return kind, plain, raw
