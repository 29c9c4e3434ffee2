"""Keep freed memory for reuse instead of handing it back to the kernel after every large answer.

A large answer passes through buffers of several megabytes: a 10,000-entity `read_graph` is 9.8 MB,
and what the kernel does not take at once is copied into the socket transport's buffer, which
grows to megabytes and is freed again; a chunk of the graph that changed is rebuilt into fresh
buffers too. With glibc's defaults, buffers that size are mmap'ed and unmapped again, or trimmed
off the top of the heap, on every call, so every call pays page faults on fresh zeroed pages.
Measured end to end on a 10,000-entity graph (scripts/bench.py, docs/performance.md): read_graph
9.1 ms with glibc's defaults, 5.4 ms with the settings below. The cost is that the process keeps up
to `_TRIM_THRESHOLD` of freed memory mapped after a peak.

Linux with glibc only; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
"""Allocations below this come from the heap, not a fresh mapping (glibc's largest allowed)."""
_TRIM_THRESHOLD = 128 * 1024 * 1024
"""Free memory at the top of the heap is returned to the kernel only beyond this."""


def keep_freed_memory() -> bool:
    """Apply the settings; True if glibc took them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    log.debug("malloc thresholds %s", "set" if applied else "not set")
    return applied
