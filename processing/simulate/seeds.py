"""Seeds of the synthetic program's random generators: stable across Python processes and
versions (not Python's salted ``hash``), so the same seed writes the same bytes."""

from __future__ import annotations


def hash_str(s: str) -> int:
    """Stable (not Python's salted hash) 32-bit integer of a string (FNV-1a)."""
    h = 2166136261
    for c in s.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h
