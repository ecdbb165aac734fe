"""What the plan must not lose: keys and libraries still needed by unexpired cartridges. Pure.

`api.make_plan` reads the tape catalog and key store (effects) and passes these mappings to
`plan.diff.make_plan` as `Observations.keys_in_use` / `Observations.libraries_in_use`:
resource address → a sentence naming the cartridges and their expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from protectctl.tape.catalog import CartridgeState, Catalog, expiry_of


def unexpired_cartridges(catalog: Catalog, now: datetime) -> dict[str, datetime]:
    """Barcode → expiry of every cartridge that holds something not yet expired."""
    out: dict[str, datetime] = {}
    for barcode, cart in sorted(catalog.cartridges.items()):
        if cart.state is CartridgeState.SCRATCH:
            continue
        expires = expiry_of(catalog.copies_on(barcode))
        if expires is not None and expires > now:
            out[barcode] = expires
    return out


def _describe(found: Mapping[str, datetime]) -> str:
    last = max(found.values())
    listed = ", ".join(f"{b} (expires {e:%Y-%m-%d})" for b, e in sorted(found.items()))
    return f"{len(found)} unexpired cartridge(s) need it until {last:%Y-%m-%d}: {listed}"


def keys_in_use(
    catalog: Catalog, key_names: Mapping[str, str], library_keys: Mapping[str, str], now: datetime
) -> dict[str, str]:
    """`key.NAME` → why it must stay: the EncryptionKey whose passphrase wraps the cartridges' KEK.

    `key_names` maps a KEK id to its EncryptionKey name (the key store); a KEK the store does
    not know is attributed to its library's key (`library_keys`: library name → key name).
    """
    unexpired = unexpired_cartridges(catalog, now)
    by_key: dict[str, dict[str, datetime]] = {}
    for barcode, expires in unexpired.items():
        cart = catalog.cartridges[barcode]
        name = key_names.get(cart.key_id) or library_keys.get(cart.library)
        if name is None:
            continue
        by_key.setdefault(f"key.{name}", {})[f"{barcode} [key id {cart.key_id}]"] = expires
    return {address: _describe(found) for address, found in sorted(by_key.items())}


def libraries_in_use(catalog: Catalog, now: datetime) -> dict[str, str]:
    """`library.NAME` → its unexpired cartridges (deleting the library deletes them)."""
    by_lib: dict[str, dict[str, datetime]] = {}
    for barcode, expires in unexpired_cartridges(catalog, now).items():
        by_lib.setdefault(f"library.{catalog.cartridges[barcode].library}", {})[barcode] = expires
    return {address: _describe(found) for address, found in sorted(by_lib.items())}
