"""Durations and sizes as an operator writes them on the command line, and sizes
as messages show them."""

from __future__ import annotations

import re

from bgrm.errors import ParameterError

MIN_KEEP_S = 60.0  # less, and a client polling every few seconds could find nothing


def parse_duration(text: str) -> float:
    """'24h', '30m', '90s', '2d' or plain seconds -> seconds (at least a minute)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not m:
        raise ParameterError(f"--keep {text!r}: a duration like 24h, 30m, 90s or 2d")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < MIN_KEEP_S:
        raise ParameterError(f"--keep {text}: at least 1m, or results could be gone before "
                             "a client polls for them")
    return seconds


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text: str, option: str) -> int:
    """'5MB', '2GB', '500k', '1GiB' or plain bytes -> bytes (MB = 10^6, MiB = 2^20)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ParameterError(f"{option} {text!r}: a size like 500MB, 2GB or 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def show_size(n: int) -> str:
    """Bytes as a short size for messages: 5 MB, 2.5 GB, 900 bytes."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"
