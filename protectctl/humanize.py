"""Human-readable figures for output (pure, import-free so every command can afford it)."""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
    """Decimal units, as sizes are written in policies (`100GB` = 10^11 bytes)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"
