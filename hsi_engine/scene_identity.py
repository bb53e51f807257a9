"""Which scene a run read, and whether its files changed while it read them.

:func:`scene_identity` names a scene in a resumable run's fingerprint (its files, or a digest of its values), so a
resumed run never continues another scene's map; :func:`scene_state` and :func:`scene_changed` tell a scene whose
files were rewritten during a run, whose map would mix two versions of it. Shared by every path that classifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SceneError

log = logging.getLogger(__name__)

__all__ = ["content_digest", "scene_changed", "scene_identity", "scene_state"]


def scene_identity(scene_path: Any, da: Any, crs: Any, transform: Any, gcps: Any, cube: Any = None
                   ) -> dict[str, Any]:
    """Which scene a run classified, for its fingerprint, so that neither an interrupted nor a finished run is taken
    for another scene, or the same one rewritten in place or edited in memory.

    A scene given as a path, or a DataArray whose data is still the untouched lazy array :func:`open_scene` made of
    the whole file (:func:`~hsi_engine.io.file_of`), is its file: the resolved path (``source``) and the count, size
    and newest modification time of its files (``stat``: every file of a zarr store, an ENVI header and its data).
    Any other scene (numpy or torch data, a DataArray loaded, edited in place, copied with other data or windowed,
    whose ``encoding`` still names the file) has ``source`` None and a ``digest`` of its values (:func:`content_digest`
    of ``cube``, the ``(band, y, x)`` DataArray classified; default ``da``). Both record where the scene lies
    (``georef``). Since the digest tells two arrays apart, a finished output of an in-memory scene is taken as
    done for the same values (the same array passed again), no longer refused as it was while only the shape
    identified such a scene; an array of other values, or an edited one, never continues nor completes another's
    output."""
    from .io import file_of

    src = scene_path if isinstance(scene_path, (str, os.PathLike)) else file_of(da)
    ident: dict[str, Any] = {"source": None}
    if src and Path(src).exists():
        p = Path(src).resolve()
        from .envi import envi_paths
        from .io import scene_format

        if not p.is_dir() and scene_format(p) == "envi":  # its header or its data file: one scene, one name
            p = envi_paths(p)[1].resolve()
        ident["source"] = str(p)
        ident["stat"] = _files_stat(p)
    else:
        ident["digest"] = content_digest(da if cube is None else cube)
    ident["georef"] = [None if crs is None else crs.to_wkt(),
                       None if transform is None else [float(v) for v in tuple(transform)[:6]],
                       None if not gcps else [[g.row, g.col, g.x, g.y] for g in gcps]]
    return ident


_DIGEST_STRIP_BYTES = 32 << 20  # about this much of the scene (all bands, whole rows) is hashed at a time


def _digest_rows(shape: Sequence[int], dtype: Any) -> int:
    """Rows of the ``(band, y, x)`` scene in each strip :func:`content_digest` hashes: about
    :data:`_DIGEST_STRIP_BYTES` of all bands, from the shape and dtype alone, so every process, and numpy, lazy and
    dask data of the same values, hash the same strips."""
    bands, width = int(shape[0]), int(shape[-1])
    return max(1, _DIGEST_STRIP_BYTES // max(1, bands * width * np.dtype(dtype).itemsize))


def content_digest(da: Any) -> str:
    """A digest (blake2b) of a scene's dtype, shape and values, for the identity of a scene that is not its file.
    The ``(band, y, x)`` scene is hashed in strips of whole rows of all bands (:func:`_digest_rows`, about 32 MB
    each): numpy data in memory (about 1 GB/s, little beside classifying it); a lazily opened file (xarray or
    rioxarray without chunks) one strip read at a time, and dask data in the same strips through dask, each block
    read once: both read the scene once more (logged). The digest depends on the values, dtype and shape only,
    not on how they are held or chunked."""
    import xarray as xr

    if not isinstance(da, xr.DataArray):
        from .io import as_scene

        da = as_scene(da)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([np.dtype(da.dtype).newbyteorder("=").str, [int(n) for n in da.shape]]).encode())
    rows = _digest_rows(da.shape, da.dtype)
    height = int(da.shape[1])
    how = ("write it to a zarr store (scene.to_zarr(PATH)) and classify that path, or pass a file opened whole by "
           "hsi_engine.open_scene(PATH), to skip this read")
    try:
        for part in _digest_parts(da, rows, height, how):
            h.update(part)
    except Exception as e:  # noqa: BLE001 - the read's failure, as a tile's read would report it
        from .integrity import read_error

        err = read_error(da, (0, height, 0, int(da.shape[2])), e)
        if err is e:
            raise
        raise err from e
    return h.hexdigest()


def _digest_parts(da: Any, rows: int, height: int, how: str) -> Any:
    """The digests of :func:`content_digest`'s strips, in order (computed through dask for dask data)."""
    if da.chunks is not None:
        import dask

        log.info("the scene is a dask array that is not a file opened whole and unchanged (a window, an edit, or "
                 "built in memory): reading it once more to record a digest of its values, so a resumed run can "
                 "tell it from another scene; %s", how)
        strips = da.data.rechunk({0: -1, 1: rows, 2: -1}).to_delayed().ravel() if height else []
        return dask.compute(*[dask.delayed(_bytes_digest, pure=True)(b) for b in strips])
    var = da.variable
    if not var._in_memory:  # a backend's lazy array (xr.open_dataset, rioxarray.open_rasterio, no chunks)
        log.info("the scene is read lazily from a file it was not opened whole from by open_scene (opened by "
                 "xarray or rioxarray, a window, or an edit): reading it once more, %d rows of all bands at a "
                 "time, to record a digest of its values, so a resumed run can tell it from another scene; %s",
                 rows, how)
    read = _source_order_reader(var) or (lambda y0, y1: np.asarray(
        (var if (y0, y1) == (0, height) else var[:, y0:y1]).values))  # (whole: not sliced lazily)
    return (_bytes_digest(read(y0, min(y0 + rows, height))) for y0 in range(0, height, rows))


def _source_order_reader(var: Any) -> Callable[[int, int], np.ndarray] | None:
    """For a backend's lazy array that :func:`~hsi_engine.io.as_scene` transposed (a band-last file opened by
    xarray without chunks): ``(y0, y1) -> (band, y1 - y0, x)`` numpy rows of all bands, read through the file's own
    axis order (slices) and transposed in memory; None for anything else (read as sliced). xarray holds a lazy
    transpose as an index array per axis and turns a slice of it into an index per element (about 0.5 us each, 20
    times a read of the file: 5 s for a 300 x 300 x 120 NetCDF, 0.3 s this way). Only a pure transpose of
    ascending ranges is taken (checked here); any other lazy indexing, or another xarray, is read as sliced."""
    try:
        from xarray.core import indexing

        data = var._data
        while isinstance(data, (indexing.CopyOnWriteArray, indexing.MemoryCachedArray)):
            data = data.array
        if not isinstance(data, indexing.LazilyVectorizedIndexedArray) or var.ndim != 3:
            return None
        keys = [np.asarray(k) for k in data.key.tuple]
        source: dict[int, tuple[int, int]] = {}  # axis of the scene -> (axis of the file, first index read)
        for i, k in enumerate(keys):
            axes = [a for a in range(3) if k.ndim == 3 and k.shape[a] != 1]
            flat = k.reshape(-1)
            if len(axes) != 1 or flat[0] < 0 or not np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
                return None  # (a length-1 axis cannot be told from a broadcast one: read as sliced)
            source[axes[0]] = (i, int(flat[0]))
        if sorted(source) != [0, 1, 2] or len(keys) != 3 or any(
                keys[source[j][0]].shape[j] != var.shape[j] for j in range(3)):
            return None
        inner = data.array
    except Exception:  # noqa: BLE001 - xarray's internals as they were (2024-2026): else read as sliced
        return None
    order = [source[j][0] for j in range(3)]

    def read(y0: int, y1: int) -> np.ndarray:
        sl: list[slice] = [slice(None)] * 3
        for j, (i, first) in source.items():
            lo, hi = (y0, y1) if j == 1 else (0, int(var.shape[j]))
            sl[i] = slice(first + lo, first + hi)
        block = indexing.LazilyIndexedArray(inner, indexing.BasicIndexer(tuple(sl))).get_duck_array()
        return np.transpose(np.asarray(block), order)
    return read


def _bytes_digest(a: np.ndarray) -> bytes:
    """blake2b of an array's values in C order and native byte order (fed a band at a time: a strip of a C-order
    scene is hashed without a copy, and the digest is that of the strip's bytes however it is laid out)."""
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    h = hashlib.blake2b(digest_size=16)
    for part in (a if a.ndim > 1 else (a,)):
        h.update(np.ascontiguousarray(part).data)
    return h.digest()


def scene_state(source: str | os.PathLike | None) -> dict[str, tuple[int, int]] | None:
    """``{file: (bytes, mtime_ns)}`` of the files a scene's pixels are read from: every file under a directory
    store, an ENVI header with its data file, else the file itself (and a GDAL ``.msk`` mask beside it). Not its
    ``.aux.xml``: GDAL writes statistics there when a GIS shows the scene, the pixels unchanged. Entries that cannot
    be read (a dangling link zarr skips) are left out. None for no file (an in-memory scene)."""
    if not source or not os.path.exists(source):
        return None
    state = {}
    for f in _scene_files(Path(source), (".msk",)):
        try:
            st = f.stat()
        except OSError:
            continue
        state[str(f)] = (st.st_size, st.st_mtime_ns)
    return state


def scene_changed(source: str | os.PathLike | None, before: dict[str, tuple[int, int]] | None) -> SceneError | None:
    """The error for a scene whose files changed since ``before`` (:func:`scene_state`, taken before the run read
    it): a ``cp`` over it, a truncation, a chunk deleted. HDF5 reads zeros past a new end of file and zarr fills a
    missing chunk, so such a run finished with a map of two versions, exit 0. None when unchanged or not a file."""
    if before is None:
        return None
    now = scene_state(source) or {}
    changed = sorted(set(before) ^ set(now)) or [f for f in sorted(before) if before[f] != now.get(f)]
    if not changed:
        return None
    f = changed[0]
    what = ("appeared" if f not in before else "disappeared" if f not in now else
            f"changed ({before[f][0]:,} bytes before, {now[f][0]:,} after; modified again)")
    more = f" (and {len(changed) - 1} more files)" if len(changed) > 1 else ""
    return SceneError(f"the scene {source} changed while this run read it: {f} {what}{more}; the map would mix two "
                      "versions of it. Rerun once nothing writes to it (or classify a copy)")


def _scene_files(p: Path, sides: tuple[str, ...]) -> list[Path]:
    """A scene's files: every file under a directory store, an ENVI header with its data file, else the file itself;
    beside a file (the data file), those of its ``sides`` suffixes that exist (``.msk``, ``.aux.xml``)."""
    from .envi import envi_paths
    from .io import scene_format

    if p.is_dir():
        return [Path(root) / f for root, _, names in os.walk(p) for f in names]
    files = [f for f in envi_paths(p) if f.is_file()] if scene_format(p) == "envi" else [p]
    return files + [f.with_name(f.name + s) for f in files[-1:] for s in sides if f.with_name(f.name + s).is_file()]


def _files_stat(p: Path) -> list[int]:
    """``[files, bytes, newest mtime_ns]`` of a scene's files: every file under a directory store, an ENVI
    header with its data file, else the file itself; beside a file GDAL reads, its ``.msk`` (a mask) and its
    ``.aux.xml`` (per-band nodata, ``bbl``, georeferencing: a corrected nodata typo left a stale map finished)."""
    stats = [f.stat() for f in _scene_files(p, (".msk", ".aux.xml"))]
    return [len(stats), sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)]
