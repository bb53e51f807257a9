"""Strict reading of zarr scenes: missing chunks and chunks that do not decode become :class:`CorruptChunkError`.

zarr fills a chunk that is absent from the store with the array's ``fill_value`` and says nothing, so a
deleted or never-copied chunk would be classified as if it were real data. :func:`check_store` lists the
store's chunk keys before any tile is read and names the missing ones. The exception: when the scene
declares the fill value as its nodata value (or the run's nodata policy is that value), an absent chunk
is the store's legitimate way of saying "all nodata" (zarr 3 does not write chunks that equal the fill
value), and those pixels are masked to class 0 like any other nodata pixel.

A chunk whose bytes do not decode raises whatever the codec raises (``RuntimeError: Zstd decompression
error`` ...); :func:`read_error` turns such a failure of one read window into a :class:`CorruptChunkError`
naming the chunk key and index (found by decoding the window's chunks one by one). A sharded store (zarr 3) is
checked and named by its shards, the objects it holds (``c/0/1/1``), each of several chunks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptChunkError, HSIEngineError, SceneError

__all__ = ["check_store", "read_error", "zarr_array_of"]


def zarr_array_of(da: Any):
    """The zarr array behind a scene opened from a zarr store, or ``None`` (other formats, in-memory data)."""
    src = getattr(da, "encoding", {}).get("source") if da is not None else None
    # by what the directory holds, not its name: open_scene reads any directory with zarr metadata as a store, and
    # one not named *.zarr went unchecked, its missing chunks read as 0
    if not src or not (_holds_zarr(Path(src)) or _holds_zarr(Path(src).parent)):
        return None
    try:
        import zarr

        node = zarr.open(str(src), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store after all: nothing to check
        return None
    if isinstance(node, zarr.Array):
        arr = node
    else:
        name = getattr(da, "name", None)
        arr = node.get(str(name)) if name is not None else None
        if not isinstance(arr, zarr.Array):
            cands = [a for _, a in node.arrays() if a.ndim == 3]
            if len(cands) != 1:
                return None
            arr = cands[0]
    if sorted(arr.shape) != sorted(int(s) for s in da.shape):
        return None  # sliced or resampled after opening: chunk coordinates no longer map
    return arr


def _holds_zarr(p: Path) -> bool:
    """Whether ``p`` is a zarr store or group: named ``*.zarr``, or a directory with zarr v2/v3 metadata."""
    return p.suffix.lower() == ".zarr" or (p.is_dir() and any((p / n).is_file() for n in ("zarr.json", ".zgroup",
                                                                                             ".zarray")))


def _list_keys(arr) -> set[str]:
    from zarr.core.sync import sync

    sp = arr.store_path
    prefix = f"{sp.path}/" if sp.path else ""

    async def collect() -> list[str]:
        return [k async for k in sp.store.list_prefix(prefix)]

    return {k[len(prefix):] for k in sync(collect())}


def _fill_is_nodata(arr, da: Any, nodata: float | None) -> bool:
    fill = arr.fill_value
    if fill is None:
        return False
    fill = float(np.asarray(fill).item()) if np.asarray(fill).dtype.kind in "biuf" else None
    if fill is None:
        return False
    declared = [nodata, da.attrs.get("_FillValue"), da.attrs.get("nodata")]
    for v in declared:
        if v is None:
            continue
        v = float(v)
        if (math.isnan(v) and math.isnan(fill)) or v == fill:
            return True
    return False


def _stored_grid(arr) -> tuple[tuple[int, ...], str]:
    """The shape of the objects ``arr`` is stored in, and what they are called: its shards where sharded (zarr 3:
    one object, ``c/0/1/1``, holds several chunks), else its chunks. Their coordinates make the store's keys
    (``arr.metadata.encode_chunk_key``): a chunk's coordinates there named keys that do not exist."""
    shards = getattr(arr, "shards", None)
    return (tuple(int(c) for c in shards), "shards") if shards else (tuple(int(c) for c in arr.chunks), "chunks")


def _grid_coords(shape: Sequence[int], grid: Sequence[int]):
    return itertools.product(*(range(-(-int(n) // int(c))) for n, c in zip(shape, grid)))


def check_store(da: Any, *, nodata: float | None = None) -> None:
    """Raise :class:`CorruptChunkError` if the zarr store behind ``da`` lacks chunks (see the module doc)."""
    arr = zarr_array_of(da)
    if arr is None:
        return
    try:
        if arr.nchunks_initialized == arr.nchunks:
            return
        if _fill_is_nodata(arr, da, nodata):
            return
        present = _list_keys(arr)
        grid, kind = _stored_grid(arr)
        keys = [(c, arr.metadata.encode_chunk_key(c)) for c in _grid_coords(arr.shape, grid)]
        missing = [(c, k) for c, k in keys if k not in present]
    except HSIEngineError:
        raise
    except Exception:  # noqa: BLE001 - a store we cannot list: leave it to the reads
        return
    if not missing:
        return
    src = da.encoding.get("source")
    one = kind[:-1]
    shown = ", ".join(f"{k} ({one} {tuple(int(i) for i in c)})" for c, k in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    fill = arr.fill_value
    declare = (f"; if those regions are meant to be empty, declare the fill value as nodata (nodata={float(fill)!r}, "
               f"--nodata {float(fill)!r}) so they are classified as 0") if isinstance(fill, (int, float, np.number)) \
        and not isinstance(fill, bool) else ""
    raise CorruptChunkError(
        f"zarr store {src} is missing {len(missing)} of {len(keys)} {kind} of array {arr.path or '/'}: {shown}"
        f"{more}. zarr would silently fill them with {fill!r}. Re-create (re-copy) the store{declare}")


def _axes(arr, da: Any) -> list[str] | None:
    """Which of band/y/x each axis of ``arr`` is."""
    from .cube import canonical_dim

    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS") \
        or arr.attrs.get("dims")
    if names and len(names) == 3:
        axes = [canonical_dim(str(n)) for n in names]
        if sorted(a for a in axes if a) == ["band", "x", "y"]:
            return axes  # type: ignore[return-value]
    sizes = {d: int(da.sizes[d]) for d in ("band", "y", "x")}
    if len(set(sizes.values())) == 3:
        inv = {v: k for k, v in sizes.items()}
        return [inv[s] for s in arr.shape]
    return None


def why_failed(exc: BaseException) -> str:
    """``exc``'s type and message, with the message of the error it was raised from where it defers to that one
    (rasterio's "Read failed. See previous exception for details." hid GDAL's reason: a truncated tile...)."""
    inner, text = exc.__cause__ or exc.__context__, str(exc)
    if inner is None or "previous exception" not in text or not str(inner).strip():
        return f"{type(exc).__name__}: {text}"
    return f"{type(exc).__name__}: {text.replace(' See previous exception for details.', '')} {str(inner).strip()}"


def read_error(da: Any, window: Sequence[int], exc: BaseException) -> BaseException:
    """The error to raise for a failed read of ``window = (ry0, ry1, rx0, rx1)`` of the scene ``da``: a named
    corrupt zarr chunk, the file's read failure for a scene that is its file (:func:`~hsi_engine.io.file_of`), or,
    for a scene computed from it (a caller's own dask graph), ``exc`` itself: the file is not at fault."""
    if isinstance(exc, HSIEngineError):
        return exc
    src = getattr(da, "encoding", {}).get("source", "the scene")
    ry0, ry1, rx0, rx1 = (int(v) for v in window)
    if "Missing dependency" in str(exc):  # dask's synchronous scheduler on a graph of a client's futures
        return SceneError(f"reading rows {ry0}:{ry1}, cols {rx0}:{rx1} of the scene failed: it was persist()-ed "
                          "under a dask.distributed client, so its chunks are that client's futures, which cannot be "
                          "fetched here (inside a tile task on a cluster's worker, the same cluster's included, or "
                          "after that client closed); the file is not at fault. Pass the scene computed "
                          "(scene.compute()) or opened from its file (each worker then reads its own tiles); "
                          "without scheduler=/workers=, a scene persisted under the client in use is read as it is")
    arr = zarr_array_of(da)
    axes = _axes(arr, da) if arr is not None else None
    if arr is not None and axes is not None:
        ranges = {"band": (0, int(da.sizes["band"])), "y": (ry0, ry1), "x": (rx0, rx1)}
        grid, kind = _stored_grid(arr)  # a shard is one object: read whole, it names the key that is at fault
        per_axis = []
        for ax, c in zip(axes, grid):
            a, b = ranges[ax]
            per_axis.append(range(a // c, max(a // c + 1, -(-b // c))))
        what = kind[:-1]
        for coords in itertools.product(*per_axis):
            try:
                arr.get_block_selection(coords)  # (zarr's blocks are its shards where it has them)
            except PermissionError as e:  # a readable store, not a corrupt one
                key = arr.metadata.encode_chunk_key(coords)
                return SceneError(f"zarr {what} {key} of array {arr.path or '/'} in {src} cannot be read "
                                  f"({e.strerror or e}): check the store's permissions")
            except Exception as e:  # noqa: BLE001 - the codec's own error type
                key = arr.metadata.encode_chunk_key(coords)
                return CorruptChunkError(
                    f"zarr {what} {key} ({what} index {coords}) of array {arr.path or '/'} in {src} cannot be "
                    f"decoded ({type(e).__name__}: {e}); the store is corrupt: re-create (re-copy) it from its "
                    "source")
    from .io import file_of

    if file_of(da) is not None:
        # (HDF5's decompression filter fails the same way when the process is short of memory: ulimit -v)
        short = ("; or this process ran short of memory (a limit such as ulimit -v, or other work): retry with "
                 "more, or a smaller --tile" if "filter returned failure" in str(exc) else "")
        return SceneError(f"reading rows {ry0}:{ry1}, cols {rx0}:{rx1} of {src} failed ({why_failed(exc)}); the store "
                          f"may be damaged or unreadable: check it (hsi-engine info) or re-create it{short}")
    # a window, a band selection or a cast of the file, whose read failed (what a reader, a codec or GDAL raises:
    # an OSError always, the others where the file's read is still in the graph), or the caller's step over it
    if isinstance(exc, OSError) or (_reads_the_file(da) and isinstance(exc, (RuntimeError, ValueError, KeyError,
                                                                             EOFError))):
        origin, culprit = (src, src) if src != "the scene" else ("a file", "the file it is read from")
        return SceneError(f"reading rows {ry0}:{ry1}, cols {rx0}:{rx1} of a scene computed from {origin} failed "
                          f"({why_failed(exc)}); {culprit} may be damaged or unreadable (check it: "
                          "hsi-engine info; or re-create it), or the error is in the computation over it")
    return exc  # the caller's own graph (a map_blocks step, arithmetic) raised it: its own error, as raised


def _reads_the_file(da: Any) -> bool:
    """Whether the dask graph of ``da`` still holds the read of the file :func:`~hsi_engine.io.open_scene` made
    (its array's layer: windows, band selections and casts keep it)."""
    name = (getattr(da, "encoding", None) or {}).get("source_array")
    graph = getattr(getattr(da, "data", None), "dask", None)
    layers = getattr(graph, "layers", None)
    return bool(name) and layers is not None and name in layers
