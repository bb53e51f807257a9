"""The disk space a class map takes while it is written, checked against the free space before its first tile.

A GeoTIFF output holds its tiles in a hidden tiled GeoTIFF and, at commit, writes a second full copy beside it (the
Cloud-Optimised one, with overviews, built in a ``.ovr.tmp`` first), so the commit needs about twice the map's size;
a resumable ``.tif`` keeps its ``.partial`` zarr store until then too. A disk that held the tiles failed the run at
its end, after hours of compute, and the commit's cleanup took every tile with it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

from .errors import OutputError

__all__ = ["check_free_space", "conversion_bytes", "free_bytes", "peak_bytes", "store_bytes"]

log = logging.getLogger(__name__)

OVERVIEWS = 1 / 3  # overviews halve each side down to one block: 1/4 + 1/16 + ... of the full-resolution pixels
# what one COG conversion writes, at most, per byte of the hidden tiled GeoTIFF it reads: its own (level 6) deflate
# of the pixels, their overviews and GDAL's overview temp; 1.2-1.75 measured on random and blocky maps, float16
# and float32 probabilities (a smooth map's averaged overviews compress worst)
CONVERSION_PER_TILE_BYTE = 2.5
INDEX_BYTES = 8  # a TIFF's offset and byte count of one tile (4 + 4 in a classic TIFF, 8 + 8 in a BigTIFF)


def raw_bytes(height: int, width: int, n_classes: int, probabilities: str | None, confidence: bool) -> list[int]:
    """Each file's pixels, uncompressed: the classes at 1 byte a pixel, the probabilities at ``n_classes`` x 2
    (float16) or 4 bytes, the confidence at 4."""
    pixels = int(height) * int(width)
    sizes = [pixels]
    if probabilities is not None:
        sizes.append(pixels * int(n_classes) * (2 if probabilities == "float16" else 4))
    if confidence:
        sizes.append(pixels * 4)
    return sizes


def peak_bytes(raw: list[int], *, geotiff: bool, staged: bool = False) -> int:
    """The most the output's files take on disk at once, uncompressed (an upper bound: deflate usually shrinks a
    map a lot). ``geotiff``: the hidden tiles, every Cloud-Optimised copy with its overviews and one overview temp;
    ``staged`` (a GeoTIFF only): the tiles go into a ``.partial`` zarr store first, kept until the GeoTIFF is
    committed."""
    total = sum(raw)
    if not geotiff:
        return total
    peak = total + (1 + OVERVIEWS) * total + OVERVIEWS * max(raw)
    return math.ceil(peak + (total if staged else 0))


def certain_bytes(height: int, width: int, block: int, files: int) -> int:
    """What a GeoTIFF output takes however well its pixels compress: each of its ``files`` has a tile index in the
    hidden tiled GeoTIFF and in the Cloud-Optimised copy."""
    tiles = math.ceil(height / block) * math.ceil(width / block)
    return 2 * files * tiles * INDEX_BYTES


def free_bytes(where: Path) -> int | None:
    """The bytes this process may still write on ``where``'s file system, or None when it cannot be told."""
    try:
        return int(shutil.disk_usage(where).free)
    except (OSError, ValueError):
        return None


def store_bytes(path: Path) -> int:
    """The bytes a directory tree (a zarr store) takes on disk; 0 when there is none."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    else:
                        st = e.stat(follow_symlinks=False)
                        blocks = getattr(st, "st_blocks", None)  # (none on Windows)
                        total += st.st_size if blocks is None else blocks * 512
        except OSError:  # gone or unreadable: what was counted
            continue
    return total


def conversion_bytes(tile_bytes: int) -> int:
    """About the most one Cloud-Optimised conversion writes, from the size of the hidden tiled GeoTIFF it reads."""
    return math.ceil(CONVERSION_PER_TILE_BYTE * tile_bytes)


def check_free_space(path: Path, *, height: int, width: int, n_classes: int, probabilities: str | None,
                     confidence: bool, block: int, geotiff: bool, staged: bool = False, present: int = 0) -> None:
    """Before the first tile: refuse an output its file system certainly cannot hold, and warn (a log WARNING) of one
    that may not fit (free space below its uncompressed peak), naming the estimate, the free space and the fixes.

    ``present``: bytes of the output already on disk (a resumed ``.partial`` store), which the free space excludes.
    """
    from .cube import human_bytes

    free = free_bytes(path.parent)
    if free is None:
        return
    raw = raw_bytes(height, width, n_classes, probabilities, confidence)
    if geotiff:
        floor = certain_bytes(height, width, block, len(raw))
        if free < floor:
            raise OutputError(f"cannot write the class map {path}: its file system has {free:,} bytes free, and the "
                              f"map takes at least {floor:,} (the tile indexes of its GeoTIFF files alone); free "
                              "space there or choose another location (--out)")
    need = peak_bytes(raw, geotiff=geotiff, staged=staged) - max(0, int(present))
    if free >= need:
        return
    how = ("its tiles, then its Cloud-Optimised copy with overviews at the end of the run"
           + (", its .partial store kept until then" if staged else "")) if geotiff else "its tiles"
    fixes = ["free space there", "write the map to another file system (--out)"]
    if probabilities is not None:
        fixes.append(f"leave out the probabilities ({human_bytes(raw[1])} uncompressed)")
    log.warning("%s may not fit in the %s free on its file system: writing it takes up to %s at once, uncompressed "
                "(%s; deflate usually shrinks it a lot, but a run that fills the disk fails there, at worst at its "
                "end, its tiles lost unless it is resumable): %s",
                path, human_bytes(free), human_bytes(need), how, ", or ".join([", ".join(fixes[:-1]), fixes[-1]]))
