"""glibc malloc settings: an opt-in, process-wide one that makes decoding compressed scenes cheaper, and the
zeroed allocations a GeoTIFF map's commit needs (glibc only).

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

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from ssrn.errors import is_whole

from .errors import OptionError

log = logging.getLogger("hsi_engine.allocator")

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_PERTURB = -6


def _mallopt() -> Any:
    """glibc's ``mallopt`` (C int, C int -> C int), or None where the C library has none (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return None
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _startup_perturb() -> int:
    """The perturb byte glibc started with (``MALLOC_PERTURB_``, or the ``glibc.malloc.perturb`` tunable), which
    :func:`zeroed_allocations` puts back; 0 (off) unless the user asked for it."""
    tunable = re.search(r"glibc\.malloc\.perturb=(\d+)", os.environ.get("GLIBC_TUNABLES", ""))
    value = tunable.group(1) if tunable else os.environ.get("MALLOC_PERTURB_", "0")
    try:
        return int(value) & 0xFF
    except ValueError:
        return 0


class _Zeroing:
    """How many :func:`zeroed_allocations` blocks are running (writers may commit in several threads at once), and
    the perturb byte to put back: the process's own, read once (the environment may be set later for children)."""
    lock = threading.Lock()
    depth = 0
    restore = _startup_perturb()


@contextlib.contextmanager
def zeroed_allocations() -> Iterator[None]:
    """While the block runs, glibc's malloc hands out zeroed memory (``M_PERTURB``), process-wide.

    GDAL's COG copy encodes the padding of a map's edge tiles (beyond its right and bottom edges) from a buffer it
    allocates and never clears, so the padding held whatever the process had freed there: pieces of the scene or
    of other arrays went into the file, and compressed badly (a 20 x 20-pixel probabilities file took 1.3 MB, not
    5 kB). Meanwhile every thread's malloc clears what it hands out and free fills what it takes back (a memset:
    no cost measured beside the copy's compression). A no-op where the C library has no ``mallopt``; there the
    padding stays as GDAL leaves it."""
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    with _Zeroing.lock:
        if _Zeroing.depth == 0:
            mallopt(_M_PERTURB, 0xFF)  # allocated bytes are set to the complement of this byte: 0
        _Zeroing.depth += 1
    try:
        yield
    finally:
        with _Zeroing.lock:
            _Zeroing.depth -= 1
            if _Zeroing.depth == 0:
                mallopt(_M_PERTURB, _Zeroing.restore)


def reuse_large_buffers(mmap_threshold_mb: int = 256, trim_threshold_mb: int = 1024) -> bool:
    """Have glibc serve allocations below ``mmap_threshold_mb`` from its heaps, and return free heap memory to
    the system only beyond ``trim_threshold_mb``: chunk-sized decode buffers are then reused instead of being
    mapped, faulted in and unmapped for every chunk. Process-wide. Returns whether it was applied: False on a
    C library without ``mallopt`` (macOS, Windows, musl) or a glibc that refuses the thresholds (logged as a
    warning)."""
    for name, mb in (("mmap_threshold_mb", mmap_threshold_mb), ("trim_threshold_mb", trim_threshold_mb)):
        if not is_whole(mb) or not 1 <= int(mb) < 2048:  # a C int
            raise OptionError(f"{name} must be a whole number in 1..2047 (MB; mallopt takes a 32-bit byte count); "
                              f"got {mb!r}")
    mallopt = _mallopt()
    if mallopt is None:
        log.info("this C library has no mallopt: large decode buffers keep the system allocator's behaviour")
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20) == 1
    if not ok:
        log.warning("this glibc refused the malloc thresholds (mmap %d MB, trim %d MB): large decode buffers are "
                    "mapped afresh for every chunk, as without reuse_large_buffers()", mmap_threshold_mb,
                    trim_threshold_mb)
    return ok


__all__ = ["reuse_large_buffers"]
