"""An opt-in, process-wide malloc setting that makes decoding compressed scenes cheaper (glibc only).

Decoding one chunk of a compressed store allocates a few fresh buffers the size of the chunk: zarr's read of
the file, the codec's output. A 200-band 256 x 256 float32 chunk is 52 MB, above the largest threshold glibc's
malloc adapts to (32 MB), so every one of those buffers is a new memory mapping: its first touch page-faults
every 4 KiB (about 25,000 faults per chunk), and mapping and unmapping it takes the process's memory-map lock,
which other threads' page faults also need. Serving such buffers from malloc's heaps, and keeping freed memory
there instead of returning it at once, removes the faults: float32 zarr reads 1.15-1.43x faster on 2 cores
(``benchmarks/results/host-cpu-malloc.md``, both settings in one run).

Limit: glibc's per-thread heaps are at most 64 MB, so a buffer allocated on a reader or decoder thread (where
decoding happens) is only reused up to about that size; larger chunks (e.g. 400-band 256 x 256 float32 ones)
are still mapped afresh. Chunks of at most 64 MB decoded are what this setting helps.

The price is memory: the process keeps up to its high-water mark of decode buffers (a few chunks per reader
and decoder thread) rather than returning them. That is a whole-process choice, so the library never makes it
on its own: ``hsi-engine classify`` applies it to its own process; Python callers opt in with
:func:`reuse_large_buffers`, or start Python with the equivalent environment variables
``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from .errors import OptionError

log = logging.getLogger("hsi_engine.allocator")

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def reuse_large_buffers(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 1024) -> bool:
    """Have glibc serve allocations below ``mmap_threshold_mb`` from its heaps, and return free heap memory to
    the system only beyond ``trim_threshold_mb``: chunk-sized decode buffers are then reused instead of being
    mapped, faulted in and unmapped for every chunk. Process-wide. Returns whether it was applied: False on a
    C library without ``mallopt`` (macOS, Windows, musl) or a glibc that refuses the thresholds (logged as a
    warning)."""
    for name, mb in (("mmap_threshold_mb", mmap_threshold_mb), ("trim_threshold_mb", trim_threshold_mb)):
        if not 1 <= int(mb) < 2048:  # mallopt takes a C int of bytes
            raise OptionError(f"{name} must be in 1..2047 (MB; mallopt takes a 32-bit byte count); got {mb}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("this C library has no mallopt: large decode buffers keep the system allocator's behaviour")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20) == 1
    if not ok:
        log.warning("this glibc refused the malloc thresholds (mmap %d MB, trim %d MB): large decode buffers are "
                    "mapped afresh for every chunk, as without reuse_large_buffers()", mmap_threshold_mb,
                    trim_threshold_mb)
    return ok


__all__ = ["reuse_large_buffers"]
