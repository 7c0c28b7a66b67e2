"""Keep memory that a training step frees inside the process, for the next step to reuse (glibc's malloc).

Every step frees and allocates again the same large blocks: activations, gradients, temporaries of
the optimizer. glibc hands blocks above its mmap threshold back to the kernel on free, and trims the
heap's top, so the next step faults the same pages in again and the kernel zeroes each of them: here
~1,000 page faults per step of the 512-2048-2048-20 MLP, and on virtual machines whose host reclaims
freed pages, stalls of 50-300 ms on one rank that every other rank then waits for. Three ``mallopt``
settings keep that memory instead: blocks up to 32 MiB come from the heap, the heap is never trimmed,
and it grows 64 MiB at a time. The process's resident memory then stays at its peak until it exits.

Set ``LEANTRAIN_MALLOC=system`` to keep the C library's defaults. Elsewhere than Linux with glibc this
does nothing, and the run record says so.
"""
from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TOP_PAD = 64 << 20
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int
KEPT = "glibc: freed memory kept for reuse (mmap threshold 32 MiB, heap never trimmed)"

_setting: str | None = None


def keep_freed_memory() -> str:
    """Apply the settings once per process; return what the allocator does (for the run record)."""
    global _setting
    if _setting is None:
        _setting = _apply()
    return _setting


def allocator_setting() -> str:
    """What the allocator does in this process (for the run record); applies nothing."""
    return _setting or "system defaults (not set by leantrain in this process)"


def _apply() -> str:
    if os.environ.get("LEANTRAIN_MALLOC", "keep") == "system":
        return "system defaults (LEANTRAIN_MALLOC=system)"
    if not sys.platform.startswith("linux"):
        return "system defaults (not Linux)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
        gnu_get_libc_version = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return "system defaults (not glibc)"
    del gnu_get_libc_version  # present only in glibc: musl's mallopt is a stub
    applied = all(mallopt(param, value) == 1 for param, value in
                  ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_TOP_PAD, TOP_PAD)))
    return KEPT if applied else "system defaults (mallopt refused)"
