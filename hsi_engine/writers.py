"""Class-map writers: the streaming engine hands them one tile at a time; nothing is visible until commit.

``open_writer(path, height=..., width=..., n_classes=...)`` picks the format by suffix:

* ``.tif`` / ``.tiff``: a Cloud-Optimised GeoTIFF. Tiles go into a hidden tiled GeoTIFF beside the target
  (``.<name>.tmp-<random>.tif``); ``commit`` converts it with GDAL's COG driver (DEFLATE, internal tiles of
  ``block`` (at least 128, the COG driver's minimum), overviews resampled with MODE so labels stay
  labels), then ``os.replace``-s it into place.
  Band 1 is ``uint8``: 0 = nodata (declared), 1..K classes, with a colour table (the palette) and the class
  names as GeoTIFF metadata (``class_names`` JSON and ``class_<i>`` items on band 1) and as GDAL category
  names plus a thematic raster attribute table (Value, Class, Red, Green, Blue) in the ``<name>.aux.xml``
  sidecar, which GDAL, QGIS and ArcGIS read.
  Optional outputs are separate COGs beside it, so the class map itself stays a single-band paletted
  raster every viewer shows as classes: ``<stem>_probabilities.tif`` (K bands, band i = class i; float32,
  or float16 stored as 16-bit floats with ``NBITS=16``) and ``<stem>_confidence.tif`` (one float32 band).
* ``.zarr``: a zarr v3 store written through xarray: ``classes (y, x) uint8`` (attrs ``nodata = 0``,
  ``flag_values``, ``flag_meanings``, ``class_names``, ``palette``), optional ``probabilities (class, y, x)``
  and ``confidence (y, x)``, chunked ``block`` x ``block``, with ``x``/``y`` pixel-centre coordinates and
  the ``spatial_ref`` grid-mapping coordinate as rioxarray writes it (``xr.open_zarr(p).rio.crs`` works).
  Written into ``.<name>.tmp-<random>`` and renamed into place at commit.

Every writer refuses an existing output unless ``overwrite=True``, checks up front that the directory is
writable and that its file system has room (:mod:`hsi_engine.output_space`: a warning where it may not), warns when
there is no georeferencing, and on ``abort`` (or an exception inside ``with``, Ctrl-C and ``SystemExit`` included)
removes everything temporary and leaves the requested path untouched.

``overwrite=True`` replaces only what hsi-engine wrote, and the whole of it: a ``.zarr`` path must hold a
store whose root ``zarr.json`` carries ``title = "hsi-engine class map"`` (any other directory is refused, not
deleted); no ``.tif`` name (map, ``_probabilities``, ``_confidence``, ``.aux.xml``) may be a directory; and a
GeoTIFF commit removes the old ``_probabilities``/``_confidence`` sidecars the new run does not write, so no
sidecar outlives the map it belongs to. A commit is all or nothing as far as the file system allows: when a file
cannot be replaced (Windows refuses while another program holds it open) or the commit is interrupted, every file
of the previous output is put back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ssrn.errors import check_flag
from ssrn.palette import default_palette

from .allocator import zeroed_allocations
from .commit_journal import remove_journal, write_journal
from .errors import HSIEngineError, OptionError, OutputError, user_stacklevel
from .logs import dropped, quiet_affine_mul, warnings_ignored
from .outputs import (CONFIDENCE_QUANTITY, MAP_NODATA_MEANING, PROBABILITY_QUANTITY, TIFF_SUFFIXES, ZARR_TITLE,
                      check_output_suffix, check_replaceable, ensure_output_dir, in_the_way, ours_aux, path_present,
                      raised_by_program, remove_tree, side_paths, tiff_quantity)
from .outputs import URL, check_not_scene, is_hsi_zarr, sweep_leftovers, zarr_root_attributes, zarr_unusable
from .output_space import check_free_space, conversion_bytes, free_bytes, store_bytes

__all__ = ["ClassMapWriter", "GeoTiffClassMapWriter", "ZarrClassMapWriter", "default_palette", "open_writer",
           "write_classmap",
           # where outputs go (hsi_engine.outputs), importable from here as before the split
           "URL", "ZARR_TITLE", "check_not_scene", "check_output_suffix", "check_replaceable", "ensure_output_dir",
           "is_hsi_zarr", "remove_tree", "side_paths", "sweep_leftovers", "zarr_root_attributes", "zarr_unusable"]

log = logging.getLogger(__name__)
_PROB_DTYPES = (None, "float16", "float32")


def palette_colours(palette) -> list:
    """A palette as one colour per entry: RGB(A) sequences as given, or a flat R, G, B, R, G, B ... list (as
    :func:`hsi_engine.classify` stores it in the map's attrs) cut into triplets."""
    if len(palette) and all(np.ndim(v) == 0 for v in palette):
        if len(palette) % 3:
            raise OptionError(f"a flat palette holds R, G, B per class; {len(palette)} values is not a multiple of 3")
        return [palette[i:i + 3] for i in range(0, len(palette), 3)]
    return list(palette)


def _norm_palette(palette, n_classes: int) -> list[tuple[int, int, int]]:
    """Palette for classes 1..K: K RGB(A) colours (see :func:`palette_colours`), or K+1 with the first for class
    0 (then dropped)."""
    if palette is None:
        return default_palette(n_classes)
    pal = [tuple(int(v) for v in c[:3]) for c in palette_colours(palette)]
    if len(pal) == n_classes + 1:
        pal = pal[1:]
    if len(pal) < n_classes:
        raise OptionError(f"palette has {len(pal)} colours for {n_classes} classes; give one RGB triplet per class "
                         "1..K (or K+1 starting with class 0)")
    if any(not 0 <= v <= 255 for c in pal for v in c):
        raise OptionError("palette colours must be RGB triplets of integers 0..255")
    return pal[:n_classes]


def _norm_names(class_names, n_classes: int) -> list[str]:
    if class_names is None:
        return [f"class {i}" for i in range(1, n_classes + 1)]
    names = [str(n) for n in class_names]
    if len(names) == n_classes + 1:
        names = names[1:]
    if len(names) != n_classes:
        raise OptionError(f"{len(names)} class names for {n_classes} classes; give one name per class 1..K")
    return names


def _norm_crs(crs):
    if crs is None:
        return None
    from rasterio.crs import CRS

    if isinstance(crs, CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return CRS.from_wkt(crs.to_wkt())
    return CRS.from_user_input(crs)


def _transform_from_coords(y, x):
    """The affine transform of regularly spaced pixel-centre coordinates, else None: a grid within half a pixel,
    by :func:`georef.grid_step` as the scene's own transform is taken (float32 coordinates of a regular grid step
    unevenly; the map of such a scene was written with the identity transform)."""
    from affine import Affine

    from .georef import grid_step

    steps = []
    for c in (np.asarray(y), np.asarray(x)):
        v = c.astype(np.float64)
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
            return None
        step, off = grid_step(c)
        if step == 0 or off > 0.5 * abs(step):
            return None
        steps.append(step)
    (dy, dx), y0, x0 = steps, float(np.asarray(y, np.float64)[0]), float(np.asarray(x, np.float64)[0])
    return Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2)


# rasterio's one NotGeoreferencedWarning, for a map without a transform (ungeoreferenced, or placed by GCPs);
# ignored by its message alone, as the filter applies to every thread
_NO_GEOTRANSFORM = "Dataset has no geotransform"


class _CacheCaps:
    """The GeoTIFF writers' caps on GDAL's block cache, a process-wide setting: rasterio.Env per write saved and
    put back the value it found, so two writers in two threads left the other's 64 MiB cap for good (1,205 MiB
    before). The first writer saves the value, the cache is capped at the sum of the live writers' caps, the last
    one puts it back."""

    lock = threading.Lock()
    live: list[int] = []
    saved: Any = None


@contextlib.contextmanager
def _gdal_cache_cap(nbytes: int):
    """Cap GDAL's block cache at ``nbytes`` (more while other writers write) for the ``with`` block."""
    from rasterio.env import get_gdal_config, set_gdal_config

    caps = _CacheCaps
    with caps.lock:
        if not caps.live:
            caps.saved = get_gdal_config("GDAL_CACHEMAX")
        caps.live.append(int(nbytes))
        total = sum(caps.live)
        if isinstance(caps.saved, int):
            total = min(total, caps.saved)  # a cap only ever lowers the cache
        set_gdal_config("GDAL_CACHEMAX", total)
    try:
        yield
    finally:
        with caps.lock:
            caps.live.remove(int(nbytes))
            if caps.live:
                total = sum(caps.live)
                set_gdal_config("GDAL_CACHEMAX", min(total, caps.saved) if isinstance(caps.saved, int) else total)
            elif caps.saved is not None:
                set_gdal_config("GDAL_CACHEMAX", caps.saved)


def flag_meanings(names: Sequence[str]) -> str:
    """CF ``flag_meanings`` for class names: one word per class, in CF's characters (letters, digits, ``_ @ - +
    .``; anything else, whitespace of any kind included, becomes ``_``), distinct (a repeat gets ``_<class id>``)
    and never empty (``class_<id>``). The names themselves stay in ``class_names``."""
    words: list[str] = []
    for i, name in enumerate(names, start=1):
        word = re.sub(r"[^A-Za-z0-9_@+.\-]", "_", str(name)) or f"class_{i}"
        words.append(f"{word}_{i}" if word in words else word)
    return " ".join(words)


def _quiet_float16_padding():
    """Drop GDAL's ``Value ... is beyond range of float16`` reports while float16 tiles are encoded.

    GDAL 3.10 (``NBITS=16`` on Float32) converts whole edge blocks to half floats, including the padding
    beyond the raster's right/bottom edge that its block cache leaves uninitialised; garbage there is
    reported once per file. Probabilities lie in [0, 1], so the report can only come from that padding.
    """
    return dropped(lambda m: "beyond range of float16" in m, "rasterio._env", "rasterio._err", "rasterio._io")


def _io_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError, and rasterio's and GDAL's own errors."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import rasterio.errors
        from rasterio._err import CPLE_BaseError

        errors += [rasterio.errors.RasterioError, CPLE_BaseError]
    except ImportError:  # pragma: no cover - another rasterio layout: OSError still covers the file system's
        pass
    return tuple(errors)


def _write_failed(path: Path, e: BaseException, began_free: int | None = None,
                  writes: int | None = None) -> OutputError:
    """The error for an output that could not be written: names a full file system (GDAL says only 'IO error').

    ``began_free`` / ``writes``: the free space when a GeoTIFF conversion began and about what it writes. GDAL deletes
    the copy it could not finish before raising, so the disk that it filled has room again by then, and libtiff
    prints its 'No space left on device' to stderr only: the error said 'a write failed ... check that the location
    is writable and healthy'."""
    free = free_bytes(path.parent)
    code, text = (e.errno if isinstance(e, OSError) else None), str(e).lower()  # (a CPLE_*'s errno is GDAL's code)
    if code is None and not isinstance(e, MemoryError) and not any(
            w in text for w in ("no space left", "quota exceeded", "cannot allocate", "out of memory", "too large")):
        code = _refused_write(path.parent)  # GDAL's 'TIFFReadDirectory' error: libtiff's cause went to stderr only
    # (a failed write, not a read: an input/output error reading the tiles back is no full disk, whatever the space)
    wrote = re.search(r"writ|flushcache", str(e), re.IGNORECASE) is not None and "read" not in str(e).lower()
    short = began_free is not None and writes is not None and began_free < writes and wrote
    full = code == errno.ENOSPC or "no space left" in text or (free is not None and free < (1 << 20)) or short
    if code == errno.EDQUOT or "quota exceeded" in text:
        why, fix = "the disk quota is exceeded", ("free space within your quota (quota -s), or choose another "
                                                  "location (--out)")
    elif full:
        if free is not None and free < (1 << 20) or not short:
            why = "the file system is full" + (f" ({free:,} bytes free)" if free is not None else "")
        else:
            why = (f"the file system is full (converting the tiles to a Cloud-Optimised GeoTIFF writes about "
                   f"{_human(writes)}, and {_human(began_free)} was free when it began)")
        fix = "free space there, or choose another location (--out)" + (
            "; a GeoTIFF takes about twice its size at the end of the run (its tiles and their Cloud-Optimised "
            "copy), the probabilities most of it where it has them" if path.suffix.lower() in TIFF_SUFFIXES else "")
    elif any(w in str(e).lower() for w in ("cannot allocate", "out of memory")) or isinstance(e, MemoryError):
        why, fix = "out of memory", ("give the process more memory, or use less: a smaller --tile (tile=...), "
                                     "fewer --readers, or set GDAL_CACHEMAX (e.g. GDAL_CACHEMAX=64, MB)")
    elif getattr(e, "errno", None) == errno.EFBIG or "file too large" in str(e).lower():
        limit = _file_size_limit()
        why = ("a file grew past " + (f"this process's file-size limit ({limit:,} bytes, ulimit -f)" if limit else
                                      "the largest this file system holds"))
        fix = "raise the limit (ulimit -f unlimited), or write to another file system"
    elif isinstance(e, _UnreadableCopy):
        why, fix = "the converted file does not read back", (
            "a write failed without an error reaching this program (libtiff's messages above name the cause: a disk "
            "or quota full for a moment, a failing disk); check that the location has room and is healthy, or "
            "choose another, and rerun")
    else:
        limit = _file_size_limit()  # GDAL names only a seek or directory error past it
        why, fix = "a write failed", "check that the location is writable and healthy, or choose another" + (
            f"; this process may write files of at most {limit:,} bytes (ulimit -f), which a large output passes"
            if limit else "")
    return OutputError(f"cannot write the class map {path}: {why} ({e}); {fix}")


def _refused_write(where: Path) -> int | None:
    """The errno of a 64 KiB probe file written and synced in ``where`` when the file system refuses it for space
    (ENOSPC, EDQUOT), else None: names the cause of a write failure GDAL reported only as a TIFF directory error."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".hsi-engine-probe-", dir=where)
    except OSError as e:
        return e.errno if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
    try:
        os.write(fd, bytes(64 << 10))
        os.fsync(fd)
    except OSError as e:
        return e.errno if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


class _UnreadableCopy(OSError):
    """A converted GeoTIFF whose blocks do not decode: a write that failed without an error."""


def _read_back(path: Path) -> None:
    """Decode every block of every band of the GeoTIFF at ``path``, at full resolution and at each overview, one
    block at a time; raise :class:`_UnreadableCopy` with GDAL's message at the first that fails.

    Why: libtiff prints a failed write ('_tiffWriteProc: No space left on device', a disk full for a moment) to
    stderr and carries on, so GDAL's COG copy returned normally and the run committed a map whose tiles were
    unreadable. An overview block that decodes but holds the wrong values is not caught (that needs recomputing)."""
    import rasterio

    level: int | None = None
    try:
        with rasterio.open(path) as ds:
            levels = len(ds.overviews(1))
        for level in (None, *range(levels)):
            with rasterio.open(path, **({} if level is None else {"overview_level": level})) as ds:
                for _, win in ds.block_windows(1):
                    ds.read(window=win)
    except _io_errors() as e:
        if raised_by_program(e):
            raise
        at = "at full resolution" if level is None else f"at overview level {level + 1}"
        said = e.__cause__ if e.__cause__ is not None else e  # rasterio's 'Read failed': GDAL's reason is its cause
        raise _UnreadableCopy(f"{path.name} {at}: {said}") from None


def _file_bytes(path: Path) -> int:
    """The size of the file at ``path``, 0 when there is none."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _human(n: int) -> str:
    from .cube import human_bytes

    return human_bytes(n)


def _open_failed(where: Path, e: BaseException) -> OutputError:
    """The error for an output that could not be created in ``where``: too many open files is not an unwritable
    location (the advice was to choose a writable one)."""
    if getattr(e, "errno", None) in (errno.EMFILE, errno.ENFILE) or "too many open files" in str(e).lower():
        return OutputError(f"cannot create the output in {where} ({e}): this process may open no more files; raise "
                           "the limit (ulimit -n) or use fewer --readers / --workers")
    if getattr(e, "errno", None) == errno.EDQUOT or "quota exceeded" in str(e).lower():
        return OutputError(f"cannot create the output in {where} ({e}): the disk quota is exceeded; free space "
                           "within your quota (quota -s), or choose another location")
    if getattr(e, "errno", None) == errno.ENOSPC or "no space left" in str(e).lower():
        return OutputError(f"cannot create the output in {where} ({e}): the file system is full, or out of inodes "
                           "(df -h, df -i); free space there or choose another location")
    return OutputError(f"cannot write in {where} ({e}); choose a writable location")


def _replace_all(installs: Sequence[tuple[Path, Path]], remove: Sequence[Path],
                 aside: Callable[[Path], Path], journal: Path | None = None) -> list[Path]:
    """Move each ``(new, target)`` of ``installs`` into place, in order, and take ``remove`` away: all or nothing, as
    far as the file system allows. Each target that exists, the last first, is first kept under ``aside(target)`` (a
    hidden name :func:`~hsi_engine.outputs.sweep_leftovers` knows): a file as a hard link, so it stays at its name
    until replaced (a reader never finds it missing), else (a directory, a link, a file system without hard links)
    renamed. Then each path in ``remove`` is renamed aside and the new files are renamed in. On any failure, an
    interruption included, each new file goes back to its ``new`` name and every old one back to its own, and the
    error is raised. Returns the aside names, for the caller to delete once the output is committed.

    Why: Windows refuses to replace a file another program holds open (the old map shown in a GIS; a virus scan of a
    store's fresh chunks). Replaced one after another, side files first and the map last, the commit stopped half
    way and left the old map beside the new run's ``.aux.xml`` (the new model's class names on the old pixels), and
    a zarr store moved aside was deleted with the temporaries when the new one could not take its name.

    ``journal``: the output whose commit this is; its commit journal (:mod:`hsi_engine.commit_journal`) lists the
    renames before the first one and goes after the last (or once undone), so a process killed in between (SIGKILL:
    no undo) leaves them for the next run into the output to finish: never a mixed or orphaned output set."""
    # each listed before it is moved, so that an interruption right after the move is undone too
    moved: list[tuple[Path, Path]] = []  # (path, its aside name)
    done: list[tuple[Path, Path]] = []  # (new, target)
    current = None
    try:
        if journal is not None:
            write_journal(journal, installs, [p for p in remove if path_present(p)])
        for current in [t for _, t in reversed(installs)]:
            if path_present(current):
                moved.append((current, aside(current)))
                _keep_aside(current, moved[-1][1])
        for current in remove:
            if path_present(current):
                moved.append((current, aside(current)))
                os.replace(current, moved[-1][1])
        for new, current in installs:
            done.append((new, current))
            os.replace(new, current)
    except BaseException as e:
        stuck = _put_back(done, moved)
        if journal is not None:  # undone: nothing left to finish (killed before here, the next run finishes it)
            remove_journal(journal)
        if stuck:
            where = "; ".join(f"{t} is at {a}" for t, a in stuck)
            what = (f"cannot replace {current} ({str(e) or type(e).__name__}), nor put back what was moved aside: "
                    f"{where}. Rename each back to its name before running again (the next run into this output "
                    "deletes hidden leftovers, where the file system has locks)")
            if not isinstance(e, Exception):  # an interruption stays one (Ctrl-C, SystemExit): said, not replaced
                log.error("%s", what)
                raise
            raise OutputError(what) from None
        if isinstance(e, PermissionError) and current is not None:
            raise OutputError(f"cannot replace {current} ({e.strerror or e}): another program may hold it open "
                              "(Windows refuses to replace a file in use: close it in that program, e.g. the GIS "
                              "showing the map, or wait for a virus scan to finish, and run again), or "
                              f"{current.parent} is not writable. Nothing was replaced: the previous output is "
                              "unchanged") from None
        raise
    if journal is not None:
        remove_journal(journal)
    return [a for _, a in moved]


def _keep_aside(path: Path, aside: Path) -> None:
    """Keep ``path`` also under ``aside``: a hard link for a plain file (it stays at its name), else a rename."""
    if path.is_file() and not path.is_symlink():
        try:
            os.link(path, aside)
            return
        except OSError:  # no hard links here (FAT/exFAT, some network shares): renamed instead
            pass
    os.replace(path, aside)


def _put_back(done: Sequence[tuple[Path, Path]], moved: Sequence[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Undo what :func:`_replace_all` did, newest first; returns the ``(path, aside name)`` pairs that could not be
    put back (the old file or store stays under its aside name)."""
    for new, target in reversed(done):
        if not path_present(new) and path_present(target):  # renamed in (a failed rename leaves ``new`` there)
            with contextlib.suppress(OSError):
                os.replace(target, new)
    stuck = []
    for path, where in reversed(moved):
        try:
            if not path_present(where):  # never moved (its link or rename failed)
                continue
            if path_present(path):
                if not os.path.samefile(path, where):  # a new file that could not be moved off it
                    raise FileExistsError(path)
                # a hard link to what is still at its name: the old file never left it. Windows refuses the unlink
                # while a program holds the file open (the GIS this commit could not replace it under): not stuck
                with contextlib.suppress(OSError):
                    os.unlink(where)
            else:
                os.replace(where, path)
        except OSError:
            stuck.append((path, where))
    return stuck


def _file_size_limit() -> int | None:
    """The process's file-size limit in bytes (``ulimit -f``; GDAL names only a seek error past it), or None."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


class ClassMapWriter:
    """Base of the class-map writers; use :func:`open_writer`.

    ``write(y0, x0, labels, probabilities=None, confidence=None)`` stores one tile (thread-safe);
    ``commit()`` finalises and moves the output into place, returning its path; ``abort()`` removes every
    temporary file. As a context manager: commit on success, abort on exception.
    """

    def __init__(self, path: Path, *, height: int, width: int, n_classes: int, crs=None, transform=None,
                 y_coords=None, x_coords=None, class_names=None, palette=None, probabilities: str | None = None,
                 confidence: bool = False, overwrite: bool = False, block: int = 256, gcps=None,
                 tags: dict[str, str] | None = None):
        if probabilities not in _PROB_DTYPES:
            raise OptionError(f"probabilities={probabilities!r}; expected one of {_PROB_DTYPES}")
        if not (1 <= n_classes <= 255):
            raise OptionError(f"n_classes={n_classes}; a uint8 class map holds 1..255 classes (0 = nodata)")
        if height < 1 or width < 1:
            raise OptionError(f"class map of {height} x {width} pixels; expected at least 1 x 1")
        if block < 16 or block % 16:
            raise OptionError(f"block={block}; expected a multiple of 16 (GeoTIFF tiles), e.g. 256 or 512")
        self.path = path
        self.height, self.width, self.n_classes = int(height), int(width), int(n_classes)
        self.class_names = _norm_names(class_names, n_classes)
        self.palette = _norm_palette(palette, n_classes)
        self.probabilities = probabilities
        self.confidence = check_flag("confidence", confidence)
        self.block = int(block)
        self.overwrite = check_flag("overwrite", overwrite)
        self.crs = _norm_crs(crs)
        if transform is None and y_coords is not None and x_coords is not None:
            transform = _transform_from_coords(y_coords, x_coords)
        if transform is not None and not hasattr(transform, "to_gdal"):
            from affine import Affine

            transform = Affine(*transform) if len(transform) in (6, 9) else transform
        self.transform = transform
        # ground control points (rasterio GroundControlPoint), for a scene georeferenced by them instead of a
        # transform (not orthorectified): carried into the map, which then has neither transform nor y/x coords
        self.gcps = list(gcps) if gcps and transform is None else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}  # provenance: GeoTIFF tags, zarr root attrs
        self.y_coords = None if y_coords is None else np.asarray(y_coords)
        self.x_coords = None if x_coords is None else np.asarray(x_coords)
        for name, c, n in (("y_coords", self.y_coords, self.height), ("x_coords", self.x_coords, self.width)):
            if c is not None and c.shape != (n,):
                raise OptionError(f"{name} has shape {c.shape}; expected ({n},) for the {self.height} x "
                                 f"{self.width} map")
        if self.crs is None or (self.transform is None and self.gcps is None):
            missing = " and ".join(m for m, v in (("CRS", self.crs), ("transform", self.transform)) if v is None)
            warnings.warn(f"writing {path} without georeferencing (no {missing}): the class map is in pixel "
                          "coordinates. Give the scene a CRS and a transform to georeference it (in Python: "
                          "da.rio.write_crs(...).rio.write_transform(...); a CRS alone puts the map at the CRS's "
                          "origin).",
                          UserWarning, stacklevel=user_stacklevel())
        self._lock = threading.Lock()
        self._done = False
        self.committed = False  # the output is in place (its temps may still be being removed)
        self._temps: list[Path] = []
        self._check_target()

    # ---- checks -------------------------------------------------------------------------------
    def _check_space(self, *, geotiff: bool, staged: bool = False, present: int = 0) -> None:
        """Before any tile: refuse an output the file system certainly cannot hold, warn of one it may not
        (:func:`~hsi_engine.output_space.check_free_space`)."""
        check_free_space(self.path, height=self.height, width=self.width, n_classes=self.n_classes,
                         probabilities=self.probabilities, confidence=self.confidence, block=self.block,
                         geotiff=geotiff, staged=staged and geotiff, present=present)

    def _targets(self) -> list[Path]:
        return [self.path]

    def _check_target(self) -> None:
        from .lock import tidy_interrupted

        tidy_interrupted(self.path)  # (a run holding the output's lock has done it: skipped then)
        for t in self._targets():
            if path_present(t) and not self.overwrite:
                raise in_the_way(t)
        if self.overwrite:
            check_replaceable(self.path)  # before any pixel is computed: replace only what we wrote
        ensure_output_dir(self.path.parent)

    def _tmp_name(self, path: Path, tag: str = "tmp") -> Path:
        return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}{path.suffix}")

    def _check_tile(self, y0: int, x0: int, labels, probabilities, confidence):
        if self._done:
            raise RuntimeError(f"writer for {self.path} is already committed or aborted")
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise OptionError(f"labels tile has shape {labels.shape}; expected (h, w)")
        h, w = labels.shape
        if y0 < 0 or x0 < 0 or y0 + h > self.height or x0 + w > self.width:
            raise OptionError(f"tile at (y0={y0}, x0={x0}) of {h} x {w} lies outside the {self.height} x "
                             f"{self.width} class map")
        # uint8 too: a class past n_classes has no colour or name, and would read as a real class
        if labels.size and ((labels.dtype != np.uint8 and labels.min() < 0) or labels.max() > self.n_classes):
            raise OptionError(f"labels lie in {labels.min()}..{labels.max()}; expected 0 (nodata) or 1.."
                             f"{self.n_classes}")
        if labels.dtype != np.uint8:
            labels = labels.astype(np.uint8)
        if probabilities is not None:
            if self.probabilities is None:
                raise OptionError("probabilities given, but the writer was opened with probabilities=None")
            probabilities = np.asarray(probabilities)
            if probabilities.shape != (self.n_classes, h, w):
                raise OptionError(f"probabilities tile has shape {probabilities.shape}; expected "
                                 f"({self.n_classes}, {h}, {w})")
        if confidence is not None:
            if not self.confidence:
                raise OptionError("confidence given, but the writer was opened with confidence=False")
            confidence = np.asarray(confidence)
            if confidence.shape != (h, w):
                raise OptionError(f"confidence tile has shape {confidence.shape}; expected ({h}, {w})")
        return labels, probabilities, confidence

    # ---- public ------------------------------------------------------------------------------
    def write(self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None = None,
              confidence: np.ndarray | None = None) -> None:
        labels, probabilities, confidence = self._check_tile(int(y0), int(x0), labels, probabilities, confidence)
        try:
            with self._lock:
                self._write(int(y0), int(x0), labels, probabilities, confidence)
        except OutputError:
            raise
        except _io_errors() as e:
            if raised_by_program(e):
                raise
            raise _write_failed(self.path, e) from None

    def commit(self) -> Path:
        if self._done:
            raise RuntimeError(f"writer for {self.path} is already committed or aborted")
        try:
            with self._lock:
                self._commit()
        except OutputError:
            self._commit_failed()
            raise
        except _io_errors() as e:  # a full disk: GDAL's 'TIFFWriteDirectoryTagData: IO error', a traceback
            if raised_by_program(e):
                self._commit_failed()
                raise
            failed = _write_failed(self.path, e)  # (the free space while the temps still fill the disk)
            self._commit_failed()
            raise failed from None
        except BaseException:
            self._commit_failed()
            raise
        self.committed = True
        self._done = True
        self._cleanup()
        return self.path

    def _commit_failed(self) -> None:
        """After a failed or interrupted commit: remove every temporary (a resumable store keeps its tiles)."""
        self.abort()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._close()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for t in self._temps:
            if t.is_dir() and not t.is_symlink():  # a replaced symlink goes, never what it points to
                if not remove_tree(t):  # (an old store this process may not delete: a full-size hidden copy)
                    log.warning("could not remove the hidden %s (or its .trash-* rename) beside %s: a directory "
                                "this process may not delete; delete it yourself", t.name, self.path)
            else:
                try:
                    t.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:  # (a directory made read-only mid-run): the error that got here is the one
                    log.warning("could not remove the temporary %s (%s); the next run writing %s removes it",
                                t, e.strerror or e, self.path)
        self._temps.clear()

    def __enter__(self) -> ClassMapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self):  # a writer dropped without commit leaves nothing behind
        try:
            if not self._done:
                self.abort()
        except BaseException:  # noqa: BLE001 - a second Ctrl-C landing here printed a traceback; never from __del__
            pass

    # ---- format hooks ------------------------------------------------------------------------
    def _write(self, y0, x0, labels, probabilities, confidence) -> None:  # pragma: no cover
        raise NotImplementedError

    def _commit(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _close(self) -> None:
        pass


class GeoTiffClassMapWriter(ClassMapWriter):
    """Tiles into hidden tiled GeoTIFFs, converted to Cloud-Optimised GeoTIFFs at commit. ``read_cache_bytes``:
    room left in GDAL's block cache, while it writes, for the blocks a GeoTIFF scene's readers have in flight
    (:func:`~hsi_engine.runner.read_cache_bytes`)."""

    def __init__(self, path: Path, *, read_cache_bytes: int = 0, **kw):
        super().__init__(path, **kw)
        import rasterio

        self._sides = side_paths(path)
        base = dict(driver="GTiff", height=self.height, width=self.width, tiled=True, blockxsize=self.block,
                    blockysize=self.block, compress="deflate", zlevel=1, bigtiff="if_safer", crs=self.crs,
                    **({} if self.gcps else {"transform": self.transform}))
        specs = {"labels": dict(count=1, dtype="uint8", nodata=0)}
        if self.probabilities is not None:
            specs["probabilities"] = dict(count=self.n_classes, dtype="float32", nodata=float("nan"),
                                          interleave="band", **({"nbits": 16} if self.probabilities == "float16" else {}))
        if self.confidence:
            specs["confidence"] = dict(count=1, dtype="float32", nodata=float("nan"))
        self._final = {k: (self.path if k == "labels" else self._sides[k]) for k in specs}
        self._there_at_start = {t for t in (*self._final.values(), self._sides["aux"]) if path_present(t)}
        self._check_space(geotiff=True)
        self._tmp: dict[str, Path] = {}
        self._datasets: dict[str, Any] = {}
        # GDAL keeps written blocks in its block cache (5 % of RAM by default) until the file closes: a scene's
        # probabilities grew the process by 1.4 GB at 3,000^2 pixels. Capped at two block rows of every band
        # (tiles fill a block row before the next one starts), the memory follows the width, not the scene.
        bands = sum(opts["count"] * (1 if opts["dtype"] == "uint8" else 4) for opts in specs.values())
        row = -(-self.width // self.block) * self.block * self.block * bands
        self._cache_bytes = max(64 << 20, 2 * row + (16 << 20)) + int(read_cache_bytes)
        try:
            for key, opts in specs.items():
                tmp = self._tmp_name(self._final[key])
                self._temps.append(tmp)
                self._tmp[key] = tmp
                with warnings_ignored(rasterio.errors.NotGeoreferencedWarning, _NO_GEOTRANSFORM), \
                        self._gdal_cache():
                    self._datasets[key] = rasterio.open(tmp, "w", **base, **opts)
                if self.gcps:  # the COG copy keeps them
                    self._datasets[key].gcps = (self.gcps, self.crs)
            self._describe()  # colour table and tags before any pixel: TIFF fixes Photometric at first write
        except (OSError, rasterio.errors.RasterioIOError) as e:
            self.abort()
            if raised_by_program(e):
                raise
            raise _open_failed(self.path.parent, e) from None
        except BaseException:  # Ctrl-C, SystemExit: no hidden temp left behind either
            self.abort()
            raise

    def _targets(self) -> list[Path]:
        sides = side_paths(self.path)
        out = [self.path]
        if not ours_aux(sides["aux"]):  # the class names' .aux.xml is written too: not over another's unasked
            out.append(sides["aux"])  # (one of ours whose map was deleted is replaced)
        if self.probabilities is not None:
            out.append(sides["probabilities"])
        if self.confidence:
            out.append(sides["confidence"])
        return out

    def _gdal_cache(self):
        """GDAL's block cache capped at ``_cache_bytes`` while this writer writes (see ``__init__``)."""
        return _gdal_cache_cap(self._cache_bytes)

    def _write(self, y0, x0, labels, probabilities, confidence) -> None:
        from rasterio.windows import Window

        h, w = labels.shape
        win = Window(x0, y0, w, h)
        with self._gdal_cache():
            self._datasets["labels"].write(labels, 1, window=win)
            if probabilities is not None:
                if self.probabilities == "float16":  # GDAL's NBITS=16 truncates float32; round to nearest as
                    probabilities = probabilities.astype(np.float16)  # numpy, torch and the zarr writer do
                self._datasets["probabilities"].write(probabilities.astype(np.float32, copy=False), window=win)
            if confidence is not None:
                self._datasets["confidence"].write(confidence.astype(np.float32, copy=False), 1, window=win)

    def _describe(self) -> None:
        lab = self._datasets["labels"]
        cmap = {0: (0, 0, 0, 0)}
        cmap.update({i + 1: (*c, 255) for i, c in enumerate(self.palette)})
        lab.write_colormap(1, cmap)
        lab.set_band_description(1, "class")
        lab.update_tags(class_names=json.dumps(self.class_names), palette=json.dumps([list(c) for c in self.palette]),
                        n_classes=str(self.n_classes), nodata_meaning=MAP_NODATA_MEANING, **self.tags)
        lab.update_tags(1, **{f"class_{i + 1}": n for i, n in enumerate(self.class_names)})
        if "probabilities" in self._datasets:
            ds = self._datasets["probabilities"]
            for i, n in enumerate(self.class_names):
                ds.set_band_description(i + 1, f"p({n})")
            ds.update_tags(**{**self.tags, "class_names": json.dumps(self.class_names),  # provenance, run record
                              "quantity": PROBABILITY_QUANTITY, "storage_dtype": self.probabilities})
        if "confidence" in self._datasets:
            ds = self._datasets["confidence"]
            ds.set_band_description(1, "confidence")
            ds.update_tags(**{**self.tags, "quantity": CONFIDENCE_QUANTITY})

    def _aux_xml(self) -> str:
        cats = "".join(f"<Category>{escape(n)}</Category>" for n in ["no data", *self.class_names])
        # GDAL field types: 0 integer, 2 string; usages: 5 MinMax (the value), 2 Name, 6/7/8 Red/Green/Blue
        fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
        fdef = "".join(f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
                       for i, (n, t, u) in enumerate(fields))
        rows = "".join(f'<Row index="{i}"><F>{i + 1}</F><F>{escape(n)}</F><F>{r}</F><F>{g}</F><F>{b}</F></Row>'
                       for i, (n, (r, g, b)) in enumerate(zip(self.class_names, self.palette)))
        names = escape(json.dumps(self.class_names))
        return ('<PAMDataset>\n  <PAMRasterBand band="1">\n'
                f"    <CategoryNames>{cats}</CategoryNames>\n"
                f'    <Metadata domain="hsi_engine"><MDI key="class_names">{names}</MDI></Metadata>\n'
                f'    <GDALRasterAttributeTable tableType="thematic">{fdef}{rows}</GDALRasterAttributeTable>\n'
                "  </PAMRasterBand>\n</PAMDataset>\n")

    def _commit(self) -> None:
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.shutil import copy as rio_copy

        began = time.perf_counter()
        with self._gdal_cache():  # closing writes the cached blocks out
            self._close()
        tiles = {key: _file_bytes(tmp) for key, tmp in self._tmp.items()}
        # after the last tile's progress line, a large map's conversion runs for minutes on one thread: said
        log.info("committing %s: converting its %d x %d pixels (%s; %s of deflated tiles) to Cloud-Optimised GeoTIFF "
                 "with overviews, on one thread", self.path, self.height, self.width,
                 ", ".join("classes" if k == "labels" else k for k in self._tmp),
                 _human(sum(tiles.values())))
        cogs: list[tuple[Path, Path]] = []
        for key, tmp in self._tmp.items():
            target = self._final[key]
            cog = self._tmp_name(target, "cog")
            self._temps.append(cog)
            opts: dict[str, Any] = dict(driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=max(128, self.block),
                                        BIGTIFF="IF_SAFER",
                                        OVERVIEW_RESAMPLING="MODE" if key == "labels" else "AVERAGE")
            float16 = key == "probabilities" and self.probabilities == "float16"
            if float16:
                opts["NBITS"] = 16
            free = free_bytes(cog.parent)  # (a failed copy is deleted before GDAL raises: its disk has room again)
            try:
                with warnings_ignored(NotGeoreferencedWarning, _NO_GEOTRANSFORM), \
                        (_quiet_float16_padding() if float16 else contextlib.nullcontext()), self._gdal_cache(), \
                        zeroed_allocations():  # edge tiles' padding: zeros, not freed memory of this process
                    rio_copy(str(tmp), str(cog), **opts)
                _read_back(cog)
            except _io_errors() as e:
                if raised_by_program(e):
                    raise
                raise _write_failed(self.path, e, began_free=free, writes=conversion_bytes(tiles[key])) from None
            cogs.append((cog, target))
        written = sum(_file_bytes(cog) for cog, _ in cogs)
        aux_tmp = self._tmp_name(self._sides["aux"])
        self._temps.append(aux_tmp)
        aux_tmp.write_text(self._aux_xml(), encoding="utf-8")  # GDAL reads PAM XML as UTF-8
        if self.overwrite:
            check_replaceable(self.path)  # again: something may have taken a name while the tiles ran
        else:  # a file another program put at one of our names while the tiles ran is not ours to replace
            appeared = [t for t in (*self._final.values(), self._sides["aux"])
                        if t not in self._there_at_start and path_present(t)]
            if appeared:
                raise OutputError(_appeared(appeared[0]))
        stale = (self._stale_sides() if self.overwrite else []) + self._stale_pam()
        # All or nothing (_replace_all): the new side files go in first and the class map last, so its presence
        # means the whole output is complete; a file that cannot be replaced (on Windows, one a GIS holds open)
        # puts every old one back.
        installs = [(aux_tmp, self._sides["aux"]), *cogs[::-1]]
        self._temps += _replace_all(installs, [p for p in stale if p.is_file() or p.is_symlink()],
                                    lambda p: self._tmp_name(p, "old"), journal=self.path)  # (old: with the temps)
        self.committed = True  # now, not once commit() returns: a signal landing on the way is after the map
        log.info("committed %s in %.1f s (%s written)", self.path, time.perf_counter() - began, _human(written))

    def _stale_sides(self) -> list[Path]:
        """The old output's ``_probabilities``/``_confidence`` files this run does not write (and their ``.aux.xml``
        and ``.ovr``), to remove: an overwrite replaces the whole output set, so no sidecar outlives the map it was
        computed with. Only a file tagged as that quantity: a class map of its own a user named ``m_confidence.tif``
        was deleted, its ``.aux.xml`` too, by an overwrite of ``m.tif``."""
        role = {"probabilities": PROBABILITY_QUANTITY, "confidence": CONFIDENCE_QUANTITY}
        return [side for key in ("probabilities", "confidence")
                if key not in self._final and tiff_quantity(self._sides[key]) == role[key]
                for side in (self._sides[key], *(self._sides[key].with_name(self._sides[key].name + end)
                                                 for end in (".aux.xml", ".ovr")))]

    def _stale_pam(self) -> list[Path]:
        """What GDAL keeps beside the files this run writes, to remove: a ``_probabilities``/``_confidence`` file's
        ``.aux.xml`` (QGIS or ``gdalinfo -stats`` write one; an overwrite with another model left the old class
        names as band names and the old statistics) and any ``.ovr`` (external overviews of the old pixels)."""
        stale = [t.with_name(t.name + ".ovr") for t in self._final.values()]
        return stale + [t.with_name(t.name + ".aux.xml") for k, t in self._final.items() if k != "labels"]

    def _close(self) -> None:
        for ds in getattr(self, "_datasets", {}).values():
            if not ds.closed:
                ds.close()


class ZarrClassMapWriter(ClassMapWriter):
    """A zarr v3 store (through xarray) written in a hidden directory and renamed into place at commit."""

    def __init__(self, path: Path, **kw):
        super().__init__(path, **kw)
        self._tmp = self._tmp_name(self.path)
        # a .tif output staged in a resumable store (its .partial) is converted at the end; one resumed is on disk
        self._check_space(geotiff=self.path.suffix.lower() in TIFF_SUFFIXES, staged=True,
                          present=store_bytes(self._tmp))
        self._temps.append(self._tmp)
        try:
            self._create()
        except OSError as e:
            self.abort()
            if raised_by_program(e):
                raise
            raise _open_failed(self.path.parent, e) from None
        except BaseException:
            self.abort()
            raise

    def _coords(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.gcps:
            return None  # pixel coordinates would read as a (wrong) transform: the GCPs place the map
        t = self.transform
        if t is not None and (t.b or t.d):
            return None  # a rotated grid has no 1-D y/x coordinates; its GeoTransform places it
        if self.y_coords is not None and self.x_coords is not None:
            return self.y_coords, self.x_coords
        t = self.transform
        if t is not None:
            return (t.f + t.e * (np.arange(self.height) + 0.5), t.c + t.a * (np.arange(self.width) + 0.5))
        # pixel centres of the identity transform, as the GeoTIFF map and rioxarray place an ungeoreferenced raster
        return np.arange(self.height, dtype=np.float64) + 0.5, np.arange(self.width, dtype=np.float64) + 0.5

    def _create(self) -> None:
        """Write the store's metadata and coordinates, no chunk of data: every chunk stays implicit (the fill)."""
        import dask.array as dsa
        import xarray as xr

        # Each variable is a lazy array of ONE dask chunk; its zarr chunks (the tiles) come from the encoding.
        # to_zarr(compute=False) builds one write task per dask chunk and never runs them, so per-tile dask chunks
        # cost seconds to build (~4 s at 150 x 150 tiles, ~40 s at a 50k x 50k scene) before the first tile.
        b = self.block
        yx = self._coords()
        ds = xr.Dataset(coords={} if yx is None else {"y": yx[0], "x": yx[1]})
        ds["classes"] = (("y", "x"), dsa.zeros((self.height, self.width), chunks=-1, dtype=np.uint8))
        ds["classes"].attrs.update(
            long_name="class", nodata=0, flag_values=list(range(1, self.n_classes + 1)),
            flag_meanings=flag_meanings(self.class_names),
            class_names=list(self.class_names), palette=[int(v) for c in self.palette for v in c[:3]])
        # (flat R, G, B, ...: a nested list became a 2-D NetCDF attribute that GDAL cannot open, as the in-memory
        # map's attrs have it)
        ds["classes"].encoding.update(fill_value=0, chunks=(b, b))
        if self.probabilities is not None:
            ds = ds.assign_coords({"class": np.arange(1, self.n_classes + 1)})
            ds["class"].attrs["class_names"] = list(self.class_names)
            ds["probabilities"] = (("class", "y", "x"), dsa.full((self.n_classes, self.height, self.width), np.nan,
                                                                 chunks=-1, dtype=self.probabilities))
            ds["probabilities"].attrs.update(long_name="class probability (softmax)")
            ds["probabilities"].encoding.update(fill_value=np.nan, chunks=(self.n_classes, b, b))
        if self.confidence:
            ds["confidence"] = (("y", "x"), dsa.full((self.height, self.width), np.nan, chunks=-1,
                                                     dtype=np.float32))
            ds["confidence"].attrs.update(long_name="confidence of the predicted class (max softmax probability)")
            ds["confidence"].encoding.update(fill_value=np.nan, chunks=(b, b))
        if self.crs is not None or self.transform is not None:
            import rioxarray  # noqa: F401  (registers .rio)

            if self.crs is not None:
                ds = ds.rio.write_crs(self.crs)
            if self.transform is not None:
                ds = ds.rio.write_transform(self.transform)
            if self.gcps:
                ds = ds.rio.write_gcps(self.gcps, self.crs)
            for v in ds.data_vars:  # xarray drops the 0-d grid-mapping coordinate unless it is named here
                ds[v].encoding["coordinates"] = "spatial_ref"
        ds.attrs.update(title=ZARR_TITLE, n_classes=self.n_classes, complete=False, **self.tags)
        ds.to_zarr(str(self._tmp), mode="w-", compute=False, zarr_format=3, consolidated=False)
        import zarr

        self._group = zarr.open_group(str(self._tmp), mode="r+")

    def _write(self, y0, x0, labels, probabilities, confidence) -> None:
        h, w = labels.shape
        self._group["classes"][y0:y0 + h, x0:x0 + w] = labels
        if probabilities is not None:
            self._group["probabilities"][:, y0:y0 + h, x0:x0 + w] = probabilities.astype(self.probabilities,
                                                                                         copy=False)
        if confidence is not None:
            self._group["confidence"][y0:y0 + h, x0:x0 + w] = confidence.astype(np.float32, copy=False)

    def _commit(self) -> None:
        import zarr

        self._group.attrs["complete"] = 1  # an int, not a bool: NetCDF has no boolean attributes
        with warnings_ignored(Warning, ".*consolidated metadata"):  # "... not part of the zarr v3 spec"
            zarr.consolidate_metadata(str(self._tmp))
        if path_present(self.path):
            if not self.overwrite:
                raise OutputError(_appeared(self.path))
            check_replaceable(self.path)  # again: what is there now is what gets deleted
        # the old store moved aside, the new one in; if the new one cannot take the name, the old one goes back
        # (it was deleted with the temporaries: the old map lost, nothing at the output's name)
        self._temps += _replace_all([(self._tmp, self.path)], [], lambda p: self._tmp_name(p, "old"),
                                    journal=self.path)
        self.committed = True  # (see the GeoTIFF writer)


def _appeared(path: Path) -> str:
    return (f"output {path} appeared while this run was writing (another program or run wrote it): nothing was "
            "replaced; pass overwrite=True (--overwrite) to replace it, or choose another output")


def open_writer(path: str | os.PathLike, *, height: int, width: int, n_classes: int, crs=None, transform=None,
                y_coords=None, x_coords=None, class_names: Sequence[str] | None = None, palette=None,
                probabilities: str | None = None, confidence: bool = False, overwrite: bool = False,
                block: int = 256, gcps=None, tags: dict[str, str] | None = None,
                read_cache_bytes: int = 0) -> ClassMapWriter:
    """A class-map writer for ``path``: ``.tif``/``.tiff`` (Cloud-Optimised GeoTIFF) or ``.zarr`` (zarr v3).

    ``labels`` tiles are uint8 with 0 = nodata and 1..``n_classes``; ``palette`` is one RGB triplet per class
    (default: a tab20-based palette); ``probabilities`` is None, "float16" or "float32"; ``block`` is the
    internal tile / chunk side. ``gcps``: ground control points (with ``crs`` and no ``transform``) for a map of
    a scene georeferenced by them; ``tags``: provenance strings (GeoTIFF metadata, zarr root attributes);
    ``read_cache_bytes``: see :class:`GeoTiffClassMapWriter`. The output appears at ``path`` only at ``commit``.
    """
    p = Path(path)
    kw = dict(height=height, width=width, n_classes=n_classes, crs=crs, transform=transform, y_coords=y_coords,
              x_coords=x_coords, class_names=class_names, palette=palette, probabilities=probabilities,
              confidence=confidence, overwrite=overwrite, block=block, gcps=gcps, tags=tags)
    if check_output_suffix(p) in TIFF_SUFFIXES:
        return GeoTiffClassMapWriter(p, read_cache_bytes=read_cache_bytes, **kw)
    return ZarrClassMapWriter(p, **kw)


def _classes_of(data: Any, names: Sequence[str] | None, probs: Any) -> int:
    """How many classes a whole map written without ``n_classes`` has: one per probability band, else one per
    name (more names than the largest class are refused: K+1 names with class 0's first, or K names of a map
    without its top classes, a crop missing the rarest, cannot be told apart), else the largest class."""
    if probs is not None:
        return int(np.shape(probs)[0])
    largest = max(1, int(np.asarray(data.max())))
    if names is None:
        return largest
    if len(names) > largest:  # K+1 names starting with class 0's, or K names of which the top classes are absent
        raise OptionError(f"{len(names)} class names for a map whose largest class is {largest}: pass "
                          f"n_classes={len(names) - 1} if the first name is class 0's (nodata), or "
                          f"n_classes={len(names)} if it names class 1")
    return len(names)


@quiet_affine_mul
def write_classmap(labels_da, path: str | os.PathLike, **kw: Any) -> Path:
    """Write a whole ``(y, x)`` class map (DataArray or array; uint8, 0 = nodata) in one call.

    CRS, transform and coordinates come from the DataArray (rioxarray) unless given; ``class_names`` and
    ``palette`` from its attrs; ``n_classes`` from the attrs (``n_classes``, or CF's ``flag_values``), else the
    probabilities' bands, the names or the largest label. Other keywords go to
    :func:`open_writer` (``overwrite``, ``block``...). ``probabilities`` may be a ``(K, y, x)`` array (stored as
    ``probabilities_dtype``, default float32) and ``confidence`` a ``(y, x)`` array.
    """
    import xarray as xr

    probs = kw.pop("probabilities", None)
    conf = kw.pop("confidence", None)
    prob_dtype = kw.pop("probabilities_dtype", "float32")
    if isinstance(labels_da, xr.DataArray):
        if labels_da.ndim != 2:
            raise OptionError(f"class map has dims {labels_da.dims}; expected (y, x)")
        da = labels_da.transpose(*[d for d in ("y", "x") if d in labels_da.dims] or labels_da.dims)
        attrs = da.attrs
        if "crs" not in kw or "transform" not in kw:
            import rioxarray  # noqa: F401

            from .georef import grid_transform, scene_crs, scene_gcps

            if "crs" not in kw:  # an unreadable CRS is refused: written as none, the map would lose its placement
                kw["crs"] = scene_crs(da, what="the class map", var="labels", error=OptionError)
            try:
                gcps = scene_gcps(da) if kw.get("crs") is not None else None
                if gcps:  # placed by ground control points: rio.transform() would read the identity
                    kw.setdefault("gcps", gcps)
                elif "spatial_ref" in da.coords or ("x" in da.coords and "y" in da.coords):
                    kw.setdefault("transform", grid_transform(da))  # irregular x/y refused, as classify_to_file does
            except HSIEngineError:  # GCPs that cannot place this selection: said, not written wrong
                raise
            except Exception:  # no spatial coords: leave ungeoreferenced
                pass
        if "y" in da.coords and "x" in da.coords:
            kw.setdefault("y_coords", np.asarray(da["y"].values))
            kw.setdefault("x_coords", np.asarray(da["x"].values))
        for key in ("class_names", "palette"):
            if key in attrs and key not in kw:
                v = attrs[key]
                kw[key] = json.loads(v) if isinstance(v, str) else v
        if "n_classes" not in kw and "n_classes" in attrs:
            kw["n_classes"] = int(attrs["n_classes"])
        elif "n_classes" not in kw and np.ndim(attrs.get("flag_values")) == 1:  # CF's, as classify() writes them
            kw["n_classes"] = len(attrs["flag_values"])
        data = da.data
    else:
        data = labels_da
    h, w = data.shape
    if "n_classes" not in kw:
        kw["n_classes"] = _classes_of(data, kw.get("class_names"), probs)
    kw["probabilities"] = None if probs is None else prob_dtype
    kw.setdefault("block", 256)
    step = 4 * kw["block"]
    with open_writer(path, height=h, width=w, confidence=conf is not None, **kw) as wr:
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                sl = (slice(y0, y0 + step), slice(x0, x0 + step))
                wr.write(y0, x0, np.asarray(data[sl]),
                         None if probs is None else np.asarray(probs[(slice(None), *sl)]),
                         None if conf is None else np.asarray(conf[sl]))
    return Path(path)
