"""Streaming executor: reader threads -> (pinned buffers -> device) -> fused tile function -> writer thread.

Reader threads read a tile's window, at most ``queue_depth`` tiles ahead of the compute; a chunked scene is
read through a bounded cache of decoded blocks (:mod:`hsi_engine.blocks`, synchronous dask scheduler
inside the thread), so each chunk is decoded once rather than once per tile and halo that touches it. On
CPU the readers also normalise the window per band into float32 and zero-pad it where it crosses the scene
border. On CUDA they only read the raw window; one stager copies the windows in plan order, each over
``readers`` copy threads, into pinned host memory in their own dtype (the tile the compute needs next gets all
of the host's memory bandwidth); each is copied to the device on a side stream one tile ahead and normalised
and padded there (same float64 operations, same bits), because host-side float64 work capped the GPU engine.
Reading, copying, compute and writing overlap. A single writer thread hands each tile's labels (and
probabilities) to the sink. Host and device memory therefore depend on the tile size, the queue depth and the
block-cache budget, never on the scene size.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ssrn.errors import is_whole

from .blocks import BlockCache
from .errors import BandMismatchError, HSIEngineError, NonFiniteInputError, OptionError, SceneError, SceneTooSmallError
from ssrn.normalise import normalise_into, normalise_tensor, stage_raw
from .tiles import Tile, TilePlan

log = logging.getLogger("hsi_engine.runner")


class Sink(Protocol):
    def write(self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None = None,
              confidence: np.ndarray | None = None) -> None: ...


class ArraySink:
    """In-memory output: ``labels (H, W)`` uint8 (0 = nodata, 1..K), optional ``probabilities (K, H, W)``
    (float32, or ``probabilities_dtype``) and ``confidence (H, W)`` float32. This is the output, so it is
    scene-sized by nature: a map too big for memory is a :class:`MemoryError` that says so and names the fix."""

    def __init__(self, height: int, width: int, classes: int, *, probabilities: bool = False,
                 probabilities_dtype: Any = np.float32) -> None:
        need = height * width * (1 + (classes * np.dtype(probabilities_dtype).itemsize + 4 if probabilities else 0))
        try:
            self.labels = np.zeros((height, width), np.uint8)
            self.probabilities = np.zeros((classes, height, width), probabilities_dtype) if probabilities else None
            self.confidence = np.zeros((height, width), np.float32) if probabilities else None
        except MemoryError:
            raise MemoryError(
                f"the in-memory map of {height} x {width} pixels" + (f" with {classes} classes' probabilities"
                                                                     if probabilities else "")
                + f" needs {need / 2**30:.1f} GiB, more than this process can allocate: stream it to a file with "
                "classify_to_file (hsi-engine classify), which holds one tile at a time"
                + (", or leave the probabilities out" if probabilities else "")) from None

    def write(self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None = None,
              confidence: np.ndarray | None = None) -> None:
        h, w = labels.shape
        self.labels[y0:y0 + h, x0:x0 + w] = labels
        if self.probabilities is not None and probabilities is not None:
            self.probabilities[:, y0:y0 + h, x0:x0 + w] = probabilities
        if self.confidence is not None and confidence is not None:
            self.confidence[y0:y0 + h, x0:x0 + w] = confidence


# ----------------------------------------------------------------------------------------------
# checks made before any tile is read


def check_scene(config: Any, meta: dict[str, Any], *, bands: int, height: int, width: int,
                wavelengths: Sequence[float] | None = None, dtype: Any = None) -> None:
    """Band count, wavelengths (when both sides know them) and size of a scene against the model, and a class
    count a uint8 class map can hold."""
    if config.classes > 255:
        raise HSIEngineError(f"the model has {config.classes} classes; class maps are uint8 (0 = nodata, classes "
                             "1..255), so at most 255 classes can be mapped: merge classes and retrain")
    trained = meta.get("dataset") or meta.get("scene") or meta.get("trained_on")
    trained_s = f" (model trained on {trained})" if trained else ""
    if bands != config.bands:
        axis = "x (the last axis)" if width == config.bands else "y" if height == config.bands else None
        hint = (f"; its {axis} has {config.bands} values: if those are the bands, the array's layout was taken "
                "wrongly: say which it is with band_axis=0 (band, y, x), 1 (y, band, x) or 2 (y, x, band) in "
                "as_scene(array, ...) or open_scene(path, ...) (--band-axis on the command line)") if axis else ""
        model_wl = meta.get("wavelengths")
        ranges = ""
        if wavelengths is not None and model_wl is not None and bands:
            a, b = np.asarray(wavelengths, np.float64), np.asarray(model_wl, np.float64)
            if np.isfinite(a).any() and np.isfinite(b).any():  # another sensor shows in its range
                ranges = (f" (scene {np.nanmin(a):.0f}-{np.nanmax(a):.0f} nm in {bands} bands, model "
                          f"{np.nanmin(b):.0f}-{np.nanmax(b):.0f} nm in {config.bands})")
        raise BandMismatchError(
            f"scene has {bands} band{'s' if bands != 1 else ''}, model expects {config.bands}{trained_s}{ranges}"
            f"{hint}: pass a scene with the model's bands (select or resample them, e.g. scene.isel(band=...))"
            + (f" or a model trained on {bands}-band data" if bands else " (a band selection left none)"))
    model_wl = meta.get("wavelengths")
    if wavelengths is not None and model_wl is not None and len(model_wl) == bands:
        a = np.asarray(wavelengths, dtype=np.float64)
        b = np.asarray(model_wl, dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)  # a band without a wavelength (NaN) is compared by the others
        if a.shape == b.shape and both.sum() >= min(2, bands):
            diff = np.where(both, np.abs(a - b), 0.0)
            steps = np.abs(np.diff(b[np.isfinite(b)]))
            tol = max(1.0, 0.5 * float(np.median(steps))) if steps.size else 1.0
            if diff.max() > tol:
                i = int(diff.argmax())
                paired = np.isfinite(a[::-1]) & np.isfinite(b)
                flipped = np.where(paired, np.abs(a[::-1] - b), 0.0)
                if paired.sum() >= min(2, bands) and flipped.max() <= tol:  # the model's, last first
                    j = int(np.argmax(both))  # (a descending store, an isel(band=slice(None, None, -1)))
                    raise BandMismatchError(
                        f"scene wavelengths differ from the model's{trained_s}: its bands run in the reverse of the "
                        f"model's band order (band {j} is {a[j]:.2f} nm in the scene, {b[j]:.2f} nm in the model; "
                        "reversed, they match): reverse them, e.g. scene.isel(band=slice(None, None, -1)) (not "
                        "sortby: a sensor's wavelengths need not rise throughout)")
                raise BandMismatchError(
                    f"scene wavelengths differ from the model's{trained_s}: band {i} is {a[i]:.2f} nm in the "
                    f"scene, {b[i]:.2f} nm in the model (max difference {diff.max():.2f} nm > {tol:.2f} nm): "
                    "pass a scene from the same sensor and band subset, in the model's band order, or, if you are "
                    "sure the bands match, drop the scene's wavelengths (Python: scene.drop_vars('wavelength'), or "
                    "band numbers for a 'band' coordinate of wavelengths, or del scene.attrs['long_name'] for "
                    "rioxarray's band names)")
    if height < 1 or width < 1:  # smaller than a patch is fine: zero-padded exactly as patch mode pads it
        raise SceneTooSmallError(f"scene is {height} x {width} pixels: nothing to classify; pass a scene of at "
                                 "least one pixel")
    if dtype is not None:
        kind = np.dtype(dtype).kind
        if kind not in "uif":
            fix = ("a complex scene's magnitude, np.abs(scene), or real part, scene.real" if kind == "c" else
                   "a boolean array is a mask, not a scene: pass the scene's values" if kind == "b" else
                   "convert numbers held as objects or text with scene.astype(np.float32)")
            what = " (complex values: a GDAL CInt16/CFloat32 raster reads as complex64)" if kind == "c" else ""
            raise SceneError(f"scene has dtype {np.dtype(dtype)}{what}; expected integer or floating point values "
                             f"({fix})")


# ----------------------------------------------------------------------------------------------
# reading and preparing one tile


def _active_client(task: contextvars.Context | None = None) -> bool:
    """Whether a dask.distributed client is the default scheduler here; inside a task (on a worker) its worker's
    client, made now if no task there has asked for it yet (it becomes the process's default). A worker process
    has no default client until then: ``classify(scene.persist())`` in a task failed on a fresh worker
    ('persist()-ed ... cannot be fetched here') and passed once any task on that worker had called
    ``distributed.get_client()``. ``task``: the context of the task that made the reader (:func:`_task_context`),
    for a reader thread, which does not carry the task's worker itself."""
    try:
        from distributed import default_client, get_client
    except ImportError:
        return False
    try:
        default_client()
        return True
    except ValueError:  # "No clients found"
        pass
    task = task or _task_context()
    if task is None:  # not in a task
        return False
    try:
        task.copy().run(get_client)  # (a copy: reader threads may ask at once, and a context runs in one thread)
    except Exception:  # noqa: BLE001 - a worker whose scheduler does not answer: read as without a client
        return False
    return True


def _task_context() -> contextvars.Context | None:
    """This thread's context when it runs a dask.distributed task (``distributed.get_worker()`` answers), else
    None; distributed not imported: None."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        distributed.get_worker()
    except (ValueError, AttributeError):
        return None
    return contextvars.copy_context()


def window_reader(scene: Any, *, cache_blocks: int | Callable[[int, int], int] = 0,
                  decoders: Executor | None = None) -> Callable[[int, int, int, int], np.ndarray]:
    """A function ``(ry0, ry1, rx0, rx1) -> (bands, h, w)`` numpy block of a ``(band, y, x)`` scene.

    Dask-backed DataArrays compute only what is asked (synchronous scheduler: the reader threads are the
    parallelism). With ``cache_blocks`` (a count, or a function of the chunk shape ``(ch, cw)`` giving one)
    of at least 1, a chunked scene is read through a :class:`~hsi_engine.blocks.BlockCache` that keeps that
    many blocks (all bands of one spatial chunk) decoded, instead of decoding every chunk once per tile and
    halo that touches it (fewer blocks than :func:`cache_blocks_for` gives work, but decode more often);
    ``decoders`` (an executor) then decodes the blocks of one window concurrently. Lazily indexed or
    in-memory DataArrays and plain arrays are sliced.
    """
    import xarray as xr

    if isinstance(scene, xr.DataArray):
        scene = scene.transpose("band", "y", "x")
        if scene.chunks is not None:
            from dask.local import get_sync  # (the name "synchronous" imports distributed: its logging config)

            data = scene.data
            through_client = [False]
            task = _task_context()  # made in a task: its reader threads fetch a persisted scene through its worker

            def read(ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
                window = data[:, ry0:ry1, rx0:rx1]
                if through_client[0]:
                    return np.asarray(window.compute())
                try:
                    return np.asarray(window.compute(scheduler=get_sync))
                except MemoryError:  # not the store's fault: the command line's out-of-memory advice, a caller's
                    raise  # own `except MemoryError`
                except Exception as e:  # noqa: BLE001 - codec errors: name the corrupt chunk
                    # a scene persist()-ed under a dask.distributed client holds futures only that client can
                    # fetch (synchronously: 'Missing dependency', which was blamed on the store); looked for only
                    # after a failure: walking a lazy graph for them took 26 s at 800,000 chunks
                    if _active_client(task):
                        with contextlib.suppress(Exception):
                            out = np.asarray(window.compute())
                            through_client[0] = True
                            return out
                    from .integrity import read_error

                    err = read_error(scene, (ry0, ry1, rx0, rx1), e)
                    if err is e:
                        raise
                    raise err from e
            _, ych, xch = scene.chunks
            n = cache_blocks(max(ych), max(xch)) if callable(cache_blocks) else int(cache_blocks)
            if n >= 1:
                return BlockCache(read, (ych, xch), n, decoders=decoders)
            return read

        def read_da(ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
            return np.asarray(scene[:, ry0:ry1, rx0:rx1].values)
        return read_da

    def read_arr(ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        return np.asarray(scene[:, ry0:ry1, rx0:rx1])
    return read_arr


@dataclass
class Prepared:
    tile: Tile
    x: Any  # normalised (bands, h + 2H, w + 2H) float32, or (wrap is not None) the raw (bands, rh, rw) window
    mask: np.ndarray | None  # (h, w) True where the output pixel is nodata (host-normalised tiles)
    wrap: int | None = None  # raw windows: stage_raw's wrap_bits; None: x is already normalised


def _check_window(raw: np.ndarray, tile: Tile) -> None:
    ry0, ry1, rx0, rx1 = tile.read
    if raw.shape[1:] != (ry1 - ry0, rx1 - rx0):
        raise SceneError(f"tile {tile.index}: read {raw.shape[1:]} pixels for window {tile.read}; the store "
                         "returned fewer pixels than its shape declares")


def _nonfinite_error(raw: np.ndarray, tile: Tile, nodata_bands: np.ndarray | None = None) -> NonFiniteInputError:
    ry0, _, rx0, _ = tile.read
    tested = np.arange(raw.shape[0]) if nodata_bands is None else np.asarray(nodata_bands)
    b, y, x = (int(v[0]) for v in np.nonzero(~np.isfinite(raw[tested])))
    b = int(tested[b])
    if not np.isfinite(raw[b]).any():  # a band without data: --nodata nan would make every pixel class 0
        return NonFiniteInputError(
            f"scene band {b + 1} (index {b}) is {raw[b, y, x]} in every pixel of tile {tile.index} (rows "
            f"{tile.y0}:{tile.y1}, cols {tile.x0}:{tile.x1}) and no nodata policy was given: a band without data "
            "(a sensor's bad band) makes every pixel nodata under nodata=nan (--nodata nan); flag it bad with a "
            "'bbl' band coordinate (0 = bad, scene.assign_coords(bbl=('band', flags))) or drop it "
            f"(scene.isel(band=...)) with a model trained without it")
    return NonFiniteInputError(
        f"scene value at band {b + 1} (index {b}), pixel (y={ry0 + y}, x={rx0 + x}) is {raw[b, y, x]} (tile "
        f"{tile.index}, rows {tile.y0}:{tile.y1}, cols {tile.x0}:{tile.x1}), and no nodata policy "
        "was given: pass nodata=VALUE (--nodata VALUE; for NaN: nodata=float('nan'), --nodata nan) to "
        "classify such pixels as 0, or "
        "fill them first")


def prepare_tile(raw: np.ndarray, tile: Tile, *, mean: np.ndarray | None, std: np.ndarray | None,
                 nodata: float | None, out: np.ndarray, nodata_bands: np.ndarray | None = None) -> np.ndarray | None:
    """Normalise ``raw`` (bands, rh, rw) into the padded buffer ``out``; returns the nodata mask.

    ``out`` may hold garbage: the padding ring around the read window is zeroed here, the window written.

    ``(x - mean) / std`` per band is computed in float64 (as the trainer does) and stored as float32, band by
    band (:mod:`ssrn.normalise`); any integer or float dtype is accepted (uint16 cannot
    overflow). Pixels that are nodata (any band equal to ``nodata``, or non-finite, once a nodata policy is
    given) get spectrum 0, like the border padding; ``nodata_bands`` (band indices, None: all) limits the
    bands the nodata value is looked for in, leaving out a sensor's bad bands.
    Without a policy a non-finite value raises :class:`NonFiniteInputError` naming the pixel.
    """
    pt, _, pl, _ = tile.pad
    ry0, ry1, rx0, rx1 = tile.read
    rh, rw = ry1 - ry0, rx1 - rx0
    _check_window(raw, tile)
    out[:, :pt] = 0.0  # the zero padding beyond the scene border (empty slices inside the scene)
    out[:, pt + rh:] = 0.0
    out[:, :, :pl] = 0.0
    out[:, :, pl + rw:] = 0.0
    view = out[:, pt:pt + rh, pl:pl + rw]
    bad, nonfinite = normalise_into(raw, mean, std, nodata, view, nodata_bands)
    if nonfinite and nodata is None:
        raise _nonfinite_error(raw, tile, nodata_bands)
    if bad.any():
        view[:, bad] = 0.0
        return bad[tile.y0 - ry0:tile.y1 - ry0, tile.x0 - rx0:tile.x1 - rx0]
    return None


def prepare_tile_tensor(raw: Any, tile: Tile, *, halo: int, mean: Any, std: Any, nodata: float | None,
                        wrap_bits: int = 0, nodata_bands: np.ndarray | None = None) -> tuple[Any, Any, Any]:
    """:func:`prepare_tile` on the device: a raw window from ``stage_raw`` -> the padded float32 tile.

    Returns ``(x, mask, nonfinite)`` without a host synchronisation: ``mask`` (h, w) bool tensor of nodata
    output pixels (None when no nodata policy and integer input), ``nonfinite`` a 0-d bool tensor (None for
    integer input) the caller turns into :class:`NonFiniteInputError` when no nodata policy was given.
    """
    import torch

    pt, _, pl, _ = tile.pad
    ry0, ry1, rx0, rx1 = tile.read
    rh, rw = ry1 - ry0, rx1 - rx0
    h, w = tile.shape
    x = torch.zeros((raw.shape[0], h + 2 * halo, w + 2 * halo), dtype=torch.float32, device=raw.device)
    view = x[:, pt:pt + rh, pl:pl + rw]
    bad, nonfinite = normalise_tensor(raw, mean, std, nodata, view, wrap_bits=wrap_bits, nodata_bands=nodata_bands)
    if nodata is None and nonfinite is None:
        return x, None, None
    view.masked_fill_(bad, 0.0)  # nodata pixels get spectrum 0, like the border padding
    return x, bad[tile.y0 - ry0:tile.y1 - ry0, tile.x0 - rx0:tile.x1 - rx0], nonfinite


def load_tile(read: Callable[..., np.ndarray], tile: Tile, *, bands: int, halo: int, mean: np.ndarray | None,
              std: np.ndarray | None, nodata: float | None, pin: bool,
              stats: collections.Counter | None = None, nodata_bands: np.ndarray | None = None) -> Prepared:
    """A reader thread's work for one tile on the host path: read the window, normalise it into a padded float32
    buffer; ``pin`` puts the buffer in page-locked memory. (The device path: :func:`read_window`, then
    :func:`stage_window`.)"""
    import torch

    t0 = time.perf_counter()
    raw = read(*tile.read)
    t1 = time.perf_counter()
    h, w = tile.shape
    buf = torch.empty((bands, h + 2 * halo, w + 2 * halo), dtype=torch.float32, pin_memory=pin)
    mask = prepare_tile(raw, tile, mean=mean, std=std, nodata=nodata, out=buf.numpy(),  # fills all of buf
                        nodata_bands=nodata_bands)
    if stats is not None:
        stats["read_s"] += t1 - t0
        stats["prepare_s"] += time.perf_counter() - t1
    return Prepared(tile, buf, mask)


def read_window(read: Callable[..., np.ndarray], tile: Tile,
                stats: collections.Counter | None = None) -> tuple[Tile, np.ndarray]:
    """A reader thread's work for one tile on the device path: its raw window, checked (staged later, in plan
    order, by :func:`stage_window`)."""
    t0 = time.perf_counter()
    raw = read(*tile.read)
    _check_window(raw, tile)
    if stats is not None:
        stats["read_s"] += time.perf_counter() - t0
    return tile, raw


def stage_window(window: Future, *, pin: bool, copies: Executor | None, parts: int,
                 stats: collections.Counter | None = None) -> Prepared:
    """The stager's work for one tile: wait for its window (a :func:`read_window` future), then copy it into a
    fresh (pinned) buffer, split over ``parts`` copy threads. One stager takes the tiles in plan order, so the
    tile the compute needs next gets every copy thread: with the readers staging their own tiles, the first
    tile of a run shared the memory bandwidth with the eight after it, and the GPU waited for it (about a fifth
    of a 2048 x 2048 x 200 run on an H200: benchmarks/results/kernels-h200.md)."""
    tile, raw = window.result()
    t0 = time.perf_counter()
    staged, wrap = stage_raw(raw, pin=pin, copies=copies, parts=parts)
    if stats is not None:
        stats["prepare_s"] += time.perf_counter() - t0
    return Prepared(tile, staged, None, wrap)


def submit_in_plan_order(rpool: Executor, stager: Executor, read: Callable[..., np.ndarray], tile: Tile, *,
                         pin: bool, copies: Executor, parts: int, stats: collections.Counter | None = None) -> Future:
    """The device path for one tile: its window read on ``rpool``, then staged by ``stager`` (one thread, so in the
    order of these calls) over ``parts`` of the ``copies`` threads. The future gives the :class:`Prepared` tile."""
    return stager.submit(stage_window, rpool.submit(read_window, read, tile, stats), pin=pin, copies=copies,
                         parts=parts, stats=stats)


def cache_blocks_for(tile: tuple[int, int], halo: int, readers: int) -> Callable[[int, int], int]:
    """How many decoded blocks the readers of a plan keep, as a function of the chunk shape ``(ch, cw)``.

    The plan walks chunk rows, and tiles column by column inside one, so the blocks in use are the chunk
    rows a tile window can reach (halos included) across the columns the windows of the tiles in flight
    (one per reader) can reach. Keeping those means a block is decoded at most three times (as a halo of
    the row above, in its own row, as a halo of the row below) instead of once per tile and halo that
    touches it; memory grows with the tile, the readers and the chunk, never the scene.
    """
    ty, tx = tile

    def blocks(ch: int, cw: int) -> int:
        return (-(-(ty + 2 * halo) // ch) + 1) * (-(-(readers * tx + 2 * halo) // cw) + 1)
    return blocks


# ----------------------------------------------------------------------------------------------
# the executor


def tile_logits(engine: Any, x: Any, tile: Tile, mask: np.ndarray | None) -> Any:
    """The engine's ``(K, h, w)`` logits of a prepared tile; zeros, without running the network, when the host
    mask marks every output pixel nodata (class 0 and NaN whatever the logits): a swath's nodata collar, often a
    third of a scene, cost as much compute as its data."""
    import torch

    classes = getattr(engine, "classes", None)
    if classes is not None and all_nodata(mask):
        return torch.zeros((classes, *tile.shape), dtype=torch.float32, device=engine.device)
    return engine(x)


def all_nodata(mask: np.ndarray | None) -> bool:
    """Whether a tile's host nodata mask marks every output pixel."""
    return mask is not None and bool(mask.all())


LOGIT_LIMIT = 1e6  # the shipped model's logits on its whole scene stay within 142; the scene x 100 reaches 8.5e5


def blown_pixels(logits: Any, mask: Any = None) -> Any:
    """``(h, w)`` bool tensor of the pixels, nodata ones left out, whose logits are not finite or beyond
    :data:`LOGIT_LIMIT`: scene values no sensor gives near them (a corrupted float's 1e30, a float64 1e300 that
    overflows float32). Their argmax is one class at confidence 1 on a 7 x 7 block of pixels, silently."""
    blown = ~(logits.abs() <= LOGIT_LIMIT).all(0)  # NaN compares False: flagged too
    return blown if mask is None else blown & ~mask


def check_blown(blown: np.ndarray, mask: np.ndarray | None, raw: Callable[[], np.ndarray], tile: Tile, halo: int,
                mean: np.ndarray | None, std: np.ndarray | None, precision: str) -> None:
    """Raise :func:`_blown_error` when a pixel outside the host nodata ``mask`` has non-finite logits
    (``blown`` from :func:`blown_pixels`, on the host); ``raw()`` reads the tile's window, only then."""
    if mask is not None:
        blown = blown & ~mask
    if blown.any():
        raise _blown_error(raw(), tile, blown, halo, mean, std, precision)


def _blown_error(raw: np.ndarray, tile: Tile, blown: np.ndarray, halo: int, mean: np.ndarray | None,
                 std: np.ndarray | None, precision: str = "float32") -> NonFiniteInputError:
    """The error for a tile with non-finite logits: names the first such pixel and the scene's value furthest
    from the model's mean within the network's reach of it (float16's range is 65,504: named as the cause)."""
    ry0, _, rx0, _ = tile.read
    y, x = (int(v[0]) for v in np.nonzero(blown))
    gy, gx = tile.y0 + y, tile.x0 + x
    wy0, wx0 = max(gy - halo, ry0) - ry0, max(gx - halo, rx0) - rx0
    win = raw[:, wy0:gy + halo + 1 - ry0, wx0:gx + halo + 1 - rx0].astype(np.float64)
    z = np.abs(win if mean is None else (win - mean[:, None, None]) / std[:, None, None])
    b, dy, dx = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(z), z, -1.0))), z.shape)
    worst = f"band {b + 1} (index {b}) at (y={ry0 + wy0 + dy}, x={rx0 + wx0 + dx}) holds {win[b, dy, dx]:.6g}"
    if mean is not None:
        worst += f", {z[b, dy, dx]:.3g} standard deviations from the model's mean"
    if precision == "float16":
        return NonFiniteInputError(
            f"the network's output at pixel (y={gy}, x={gx}) is not finite: its float16 arithmetic (largest value "
            f"65,504) overflowed on the scene's values within {halo} pixels of it ({worst}); run "
            "precision='bfloat16' (float32's range) or 'float32' (--precision), or check the scene's scale")
    typical = float(np.nanmedian(np.where(np.isfinite(z), z, np.nan))) if mean is not None else 0.0
    if typical > 30:  # the whole window far off, not one value: a scene on another scale than the training scene's
        return NonFiniteInputError(
            f"the network's output at pixel (y={gy}, x={gx}) is beyond {LOGIT_LIMIT:.0e}: the scene's values around it "
            f"are {typical:,.0f} standard deviations from the model's mean in the median band and value ({worst}), "
            "so the scene is on another scale than the model's training scene (reflectance 0-1 against integers x "
            "10000, or the reverse: see the UnnormalisedInputWarning): rescale it to the training scene's units, or "
            "use a model trained on this scale")
    if abs(win[b, dy, dx]) < 1e30 and z[b, dy, dx] < 1e4:  # no value out of range: the normalisation or weights
        return NonFiniteInputError(
            f"the network's output at pixel (y={gy}, x={gx}) is not finite or beyond {LOGIT_LIMIT:.0e}, and no scene "
            f"value within {halo} pixels of it is out of range (the furthest: {worst}): the normalisation's "
            "mean/std or the model's weights hold NaN, inf or huge values")
    fill = ""
    if abs(win[b, dy, dx]) == float(np.finfo(np.float32).max):  # a fill declared as a header prints it misses it
        v = f"{win[b, dy, dx]:.8g}"
        fill = (f" It is float32's largest magnitude, a usual fill: if it is the scene's nodata, give it in full, "
                f"nodata={v} (--nodata {v}); -3.40282e+38, as headers print it, is another float32")
    return NonFiniteInputError(
        f"the network's output at pixel (y={gy}, x={gx}) is not finite or beyond {LOGIT_LIMIT:.0e} (a trained "
        f"network's stay within a few hundred on data): scene values within {halo} pixels of it are far outside "
        f"the model's data ({worst}). Such values are not data (a corrupted or unconverted value): set them to a "
        "nodata value and pass it (scene.where(abs(scene) < LIMIT, NODATA) with nodata=NODATA; --nodata NODATA)"
        + fill)


def labels_from_logits(logits: Any, *, probabilities: bool, mask: Any = None) -> tuple[Any, Any, Any]:
    """``(labels 1..K uint8, softmax | None, its max | None)`` of ``(K, h, w)`` logits, on their device; class 0
    and NaN probabilities where the (device) nodata ``mask`` is set."""
    import torch

    lab = (logits.argmax(0) + 1).to(torch.uint8)
    prob = conf = None
    if probabilities:
        prob = torch.softmax(logits.float(), 0)
        conf = prob.max(0).values
    if mask is not None:
        lab = lab.masked_fill(mask, 0)
        prob = prob.masked_fill(mask, float("nan")) if prob is not None else None
        conf = conf.masked_fill(mask, float("nan")) if conf is not None else None
    return lab, prob, conf


def mask_nodata(labels: np.ndarray, probabilities: np.ndarray | None, confidence: np.ndarray | None,
                mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Class 0 (and NaN probability / confidence: none was computed) where ``mask`` marks nodata pixels; copies,
    never aliases."""
    if mask is None:
        return labels, probabilities, confidence
    labels = labels.copy()
    labels[mask] = 0
    if probabilities is not None:
        probabilities = probabilities.copy()
        probabilities[:, mask] = np.nan
    if confidence is not None:
        confidence = confidence.copy()
        confidence[mask] = np.nan
    return labels, probabilities, confidence


# the per-tile steps after the network, shared by run_plan and the cluster's tasks (cluster.compute_tile), so that a
# change to what is checked, or in which order, reaches both


def tile_outputs(logits: Any, *, probabilities: bool, mask: Any = None) -> tuple[Any, Any, Any, Any]:
    """On the logits' device: ``(labels, softmax | None, confidence | None, blown)`` of one tile
    (:func:`labels_from_logits`, then :func:`blown_pixels`; ``mask``: the device nodata mask, or None)."""
    lab, prob, conf = labels_from_logits(logits, probabilities=probabilities, mask=mask)
    return lab, prob, conf, blown_pixels(logits, mask)


def finish_tile(tile: Tile, outputs: tuple[Any, Any, Any, Any], mask: np.ndarray | None, nonfinite: Any,
                raw: Callable[[], np.ndarray], *, halo: int, mean: np.ndarray | None, std: np.ndarray | None,
                precision: str, nodata_bands: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """On the host: one tile's :func:`tile_outputs` (tensors, on the host or the device) checked and masked, in the
    order every path takes: a non-finite input the device found (``nonfinite``: a bool tensor, None where a nodata
    value masks them) named from the scene, then blown logits (:func:`check_blown`), then class 0 where the host
    ``mask`` marks nodata (:func:`mask_nodata`). ``raw()`` reads the tile's window, only for an error."""
    lab, prob, conf, blown = outputs
    if nonfinite is not None and bool(nonfinite):
        raise _nonfinite_error(raw(), tile, nodata_bands)
    check_blown(blown.cpu().numpy(), mask, raw, tile, halo, mean, std, precision)
    lab = lab.cpu().numpy()
    prob = prob.cpu().numpy() if prob is not None else None
    conf = conf.cpu().numpy() if conf is not None else None
    return mask_nodata(lab, prob, conf, mask)


def check_read_settings(*, cache_blocks: int | None, decoders: int | None, readers: int | None = None,
                        queue_depth: int | None = None) -> None:
    """Refuse reader threads or a queue depth that is not a whole number >= 1, or a block-cache budget or decoder
    count that is not one >= 0 (None: the runner's default), before anything is opened or written: every path
    calls it first, also one that does not use them all (a cluster's tasks read without run_plan's readers)."""
    for name, v in (("readers", readers), ("queue_depth", queue_depth)):
        if v is not None and not is_whole(v):
            raise OptionError(f"{name} must be a whole number of threads / tiles (e.g. {name}=2); got {v!r}")
    for name, v in (("readers", readers), ("queue_depth", queue_depth)):  # as passed: a default is never at fault
        if v is not None and int(v) < 1:
            raise OptionError(f"readers and queue_depth must be >= 1; got {name}={v} (pass a whole number of "
                              f"{'threads' if name == 'readers' else 'tiles'}, e.g. {name}=2, or None for the default)")
    for name, v, what in (("cache_blocks", cache_blocks, "blocks (e.g. cache_blocks=64)"),
                          ("decoders", decoders, "threads (e.g. decoders=2)")):
        if v is not None and not is_whole(v):
            raise OptionError(f"{name} must be a whole number of {what}; got {v!r}")
    if cache_blocks is not None and int(cache_blocks) < 0:
        raise OptionError(f"cache_blocks must be >= 0 (0 turns the block cache off); got {cache_blocks}")
    if decoders is not None and int(decoders) < 0:
        raise OptionError(f"decoders must be >= 0 (0: the readers decode); got {decoders}")


def default_readers(cuda: bool) -> int:
    """Reader threads when none are asked for: the cores this process may run on (taskset), up to 8, feeding a GPU;
    2 beside a CPU's compute."""
    return min(8, _cores()) if cuda else 2


def read_cache_bytes(da: Any, tile: int | Sequence[int], halo: int, readers: int) -> int:
    """Room in GDAL's block cache for the scene blocks the reader threads have in flight: the chunks that
    ``readers + 1`` windows of ``tile + 2 * halo`` pixels touch, all bands (0 for a scene not read in chunks). A
    GeoTIFF writer's cap without it evicted a GeoTIFF scene's blocks at every tile, and its readers decoded them
    again (3.4x the read time). Follows the tile and chunk sizes, never the scene's."""
    chunks = getattr(da, "chunks", None)
    if not chunks:
        return 0
    ch, cw = max(chunks[1]), max(chunks[2])
    win = (max(int(t) for t in tile) if isinstance(tile, Sequence) else int(tile)) + 2 * int(halo)
    per_window = (-(-win // ch) + 1) * (-(-win // cw) + 1) * ch * cw
    return (int(readers) + 1) * per_window * int(da.shape[0]) * np.dtype(da.dtype).itemsize


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


LOG_PROGRESS_EVERY_S = 30.0  # without a terminal: a progress line in the log this often


class _LoggedProgress:
    """Progress as a log line every :data:`LOG_PROGRESS_EVERY_S` seconds, for a run whose stderr is not a
    terminal (a pipeline's log, a batch job): a bar redrawn with carriage returns would be one endless line
    there, and no progress at all leaves an hour-long run silent. A timer keeps the lines coming when no tile
    finishes: a WARNING where the run looks stalled (``status()`` has words on why, e.g. a cluster's paused workers,
    or no tile finished in three times the run's usual time between tiles, or in ten intervals before the first),
    else an INFO line that says how long tiles take here (a big tile, a compile or a loaded node make tiles of a
    healthy run take longer than the interval). The rate counts from the first finished tile, so start-up (a
    cluster's, a model's compile) does not dilute it: the first tile's line has no estimate yet. The tqdm calls
    the runners use."""

    def __init__(self, total: int, status: Callable[[], str | None] | None = None, name: str | None = None) -> None:
        self.every = LOG_PROGRESS_EVERY_S
        self.what = f"classify {name}" if name else "classify"  # (a service's concurrent runs told apart)
        self.total, self.n = int(total), 0
        self.t0 = self.last_log = self.last_progress = self.last_tile = time.perf_counter()
        self.first: tuple[float, int] | None = None  # (time, pixels) when the first tile finished
        self.tiles = 0
        self.status = status
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="hsi-engine-progress-log", daemon=True)
        self._timer.start()

    def update(self, n: int) -> None:
        with self._lock:
            self.n += int(n)
            self.tiles += 1
            self.last_tile = now = time.perf_counter()
            if self.first is None:
                self.first = (now, self.n)
            if now - self.last_progress >= self.every and self.n < self.total:
                self.last_progress = now
                self._log(now, stalled=False)

    def _tick(self) -> None:
        while not self._stop.wait(max(min(self.every / 6, 5.0), 0.05)):  # a stall is told within every + 5 s
            now = time.perf_counter()
            if now - self.last_log < self.every or now - self.last_tile < self.every:
                continue
            why = self.status() if self.status is not None else None  # (a scheduler call: not under the lock)
            with self._lock:
                if now - self.last_tile >= self.every and not self._stop.is_set():
                    self._log(now, stalled=True, why=why)

    def _log(self, now: float, stalled: bool, why: str | None = None) -> None:
        self.last_log = now
        done = f"{100 * self.n / max(self.total, 1):.0f} % ({_amount(self.n, self.total)})"
        if stalled:  # nothing finished since the last line: say so, and why if known
            quiet = now - self.last_tile
            if self.tiles < 2:  # no time between two tiles yet (the first one's holds the start-up)
                usual = None
                late = quiet >= 10 * self.every
            else:
                usual = (self.last_tile - self.first[0]) / (self.tiles - 1)
                late = quiet >= max(self.every, 3 * usual)
            if why or late:
                log.warning("%s: no tile finished in the last %s; %s done%s", self.what, _duration(quiet), done,
                            f"; {why}" if why else "")
            else:
                log.info("%s: no tile finished in the last %s (%s); %s done", self.what, _duration(quiet),
                         "the first tiles, with the start-up" if usual is None
                         else f"a tile takes about {_duration(usual)} here", done)
            return
        if self.first is None or self.n <= self.first[1]:  # one tile in: its time holds the start-up
            log.info("%s: %s done (an estimate once the next tile finishes)", self.what, done)
            return
        t, n = self.first
        rate = (self.n - n) / max(now - t, 1e-9)
        log.info("%s: %s at %s, about %s left", self.what, done, _rate(rate),
                 _duration((self.total - self.n) / max(rate, 1e-9)))

    def close(self) -> None:
        self._stop.set()


def _mpx(pixels: float) -> str:
    """Megapixels with the digits a reader needs: 0.0123 on a small scene, 12.3 on a large one."""
    m = pixels / 1e6
    return f"{m:.3g}" if m < 100 else f"{m:.0f}"


def _rate(per_s: float) -> str:
    """``12.3 Mpx/s``; below 0.1 Mpx/s (a CPU run) ``1,280 px/s`` (it read "0.00128 Mpx/s")."""
    return f"{_mpx(per_s)} Mpx/s" if per_s >= 100_000 else f"{per_s:,.0f} px/s"


def _amount(done: int, total: int) -> str:
    """``12.3 of 45.6 Mpx``; on a scene under a megapixel ``256 of 16384 px`` (it read "0.00 of 0.00 Mpx")."""
    return f"{_mpx(done)} of {_mpx(total)} Mpx" if total >= 1_000_000 else f"{done} of {total} px"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s" if s >= 60 \
        else f"{s} s"


def _progress_bar(total: int, enabled: bool | None, status: Callable[[], str | None] | None = None,
                  name: str | None = None):
    """A tqdm bar on a terminal or in a Jupyter kernel (``enabled`` True, or None and stderr is a terminal or a
    notebook's); None elsewhere: log lines (:class:`_LoggedProgress`, with ``status`` saying why a stalled run
    stalls); False: nothing."""
    notebook = _in_notebook()
    if sys.stderr is None and not notebook:  # pythonw, a closed fd 2 (``2>&-``): no terminal to draw on
        return _LoggedProgress(total, status, name) if enabled is None else _NoProgress()
    if enabled is None:
        # a notebook's stderr is no terminal, and the log lines reach no handler there: a run had shown nothing
        if not notebook and not sys.stderr.isatty():
            return _LoggedProgress(total, status, name)
        enabled = True
    if not enabled:  # (a disabled tqdm still starts its monitor thread, left running after the call)
        return _NoProgress()
    if notebook and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:  # (tqdm.auto warned "IProgress not found" in a kernel without ipywidgets, even for progress=False)
        from tqdm.std import tqdm
    return tqdm(total=total, unit="px", unit_scale=True, desc="classify", smoothing=0.1, dynamic_ncols=True)


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (notebook, JupyterLab, VS Code's, Colab's): IPython's shell has a
    kernel there, none in a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class _NoProgress:
    """``progress=False``: a bar that shows nothing and starts nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def run_plan(scene: Any, plan: TilePlan, engine: Any, sink: Sink, *, mean: np.ndarray | None = None,
             std: np.ndarray | None = None, nodata: float | None = None, probabilities: bool = False,
             queue_depth: int | None = None, readers: int | None = None,
             progress: bool | None = None, normalise_on: str | None = None,
             cache_blocks: int | None = None, decoders: int | None = None,
             nodata_bands: np.ndarray | None = None) -> dict[str, float]:
    """Classify every tile of ``plan`` with ``engine`` (a ``FusedSSRN``) and write it to ``sink``.

    ``scene``: ``(band, y, x)`` DataArray (dask-backed or not) or array; ``mean``/``std``: per-band
    normalisation (``None``: the scene is already normalised). ``readers`` (default 2 on CPU, up to 8 on
    CUDA, where host-side reading and normalising is the bottleneck) threads prepare up to ``queue_depth``
    (default ``readers + 1``) tiles ahead of the compute. ``normalise_on``: ``"host"`` (reader threads, the
    CPU default) or ``"device"`` (raw windows travel, the CUDA default); both give the same bits.
    ``cache_blocks``: decoded blocks kept for chunked (dask-backed) scenes; 0 reads every window straight
    from the store. Default on CUDA: what the plan and the readers use (:func:`cache_blocks_for`), since
    decoding is what bounds a GPU run; on CPU: 0, because there the cache cost more host memory than its
    blocks (allocator fragmentation beside the compute's allocations: +145 MB for four 6.5 MB blocks on a
    1024 x 1024 x 200 scene) for a 0.5-10 % speed-up (benchmarks/results/scene-cpu.md). ``decoders``: threads
    that decode the cached blocks of one window concurrently (default on CUDA: one per core, since a reader
    otherwise decodes a window's chunks, 16 for 512-pixel tiles on 256-pixel chunks, one after the other on
    one core; 0, the CPU default, leaves decoding to the readers, whose cores the compute needs); they need
    the block cache. ``nodata_bands``: the band indices the ``nodata`` value is looked for in (None: every
    band). Returns timing counters (``decoders``: the decoder threads the run used; ``nodata_px``: output
    pixels masked as nodata); a run that masks every pixel says so in a warning.
    """
    import torch

    device = engine.device
    cuda = device.type == "cuda"
    check_read_settings(cache_blocks=cache_blocks, decoders=decoders, readers=readers, queue_depth=queue_depth)
    if readers is None:
        readers = default_readers(cuda)
    if queue_depth is None:
        queue_depth = readers + 1
    asked_decoders = decoders is not None
    decoders = int(decoders) if decoders is not None else (_cores() if cuda else 0)
    if normalise_on is None:
        normalise_on = "device" if cuda else "host"
    if normalise_on not in ("host", "device"):
        raise OptionError(f"normalise_on must be 'host' or 'device'; got {normalise_on!r}")
    on_device = normalise_on == "device"
    bands = engine.config.bands
    if cache_blocks is None:
        cache_blocks = cache_blocks_for(plan.tile, plan.halo, readers) if cuda else 0
    dpool = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="hsi-decode") if decoders else None
    read = window_reader(scene, cache_blocks=cache_blocks, decoders=dpool)
    if dpool is not None and not isinstance(read, BlockCache):  # no cache: whole windows, nothing to decode apart
        dpool.shutdown()
        dpool = None
        if asked_decoders:
            log.warning("decoders=%d (--decoders) has no effect here: decoder threads decode the block cache's "
                        "chunks, and this run has no cache (%s); pass cache_blocks=N (--cache-blocks N) to use them",
                        decoders,
                        "the scene is not chunked" if getattr(scene, "chunks", None) is None else "cache_blocks=0")
    mean64 = None if mean is None else np.asarray(mean, np.float64)
    std64 = None if std is None else np.asarray(std, np.float64)
    mean_t = None if mean is None or not on_device else torch.as_tensor(mean64, device=device)
    std_t = None if std is None or not on_device else torch.as_tensor(std64, device=device)
    stats = collections.Counter()

    def mark(tile: Tile, what: str) -> None:  # when a tile reached a point, for a timeline (DEBUG only)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("tile %d %s at %.4f s", tile.index, what, time.perf_counter() - t_start)

    rpool = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="hsi-read")
    if on_device:  # readers read; one stager copies the windows in plan order, over `readers` copy threads
        stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsi-stage")
        copies = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="hsi-copy")

        def submit(tile: Tile) -> Future:
            return marked(tile, submit_in_plan_order(rpool, stager, read, tile, pin=cuda, copies=copies,
                                                     parts=readers, stats=stats))
    else:
        stager = copies = None

        def submit(tile: Tile) -> Future:
            return marked(tile, rpool.submit(load_tile, read, tile, bands=bands, halo=plan.halo, mean=mean64,
                                             std=std64, nodata=nodata, pin=cuda, stats=stats,
                                             nodata_bands=nodata_bands))

    def marked(tile: Tile, fut: Future) -> Future:
        if log.isEnabledFor(logging.DEBUG):
            fut.add_done_callback(lambda f, tile=tile: f.cancelled() or f.exception() is not None
                                  or mark(tile, "ready on the host"))
        return fut

    copy_stream = torch.cuda.Stream(device) if cuda else None

    def to_device(p: Prepared):
        if not cuda:
            return p.x, None
        with torch.cuda.stream(copy_stream):
            x = p.x.to(device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(copy_stream)
        return x, ev

    def finish(tile: Tile, logits: Any, mask: np.ndarray | None, mask_t: Any, nonfinite: Any):
        """On the compute thread: argmax (+ softmax) on the device, nodata masked there when the tile was
        normalised there, then start the copy back."""
        lab, prob, conf, blown = tile_outputs(logits, probabilities=probabilities, mask=mask_t)
        if nonfinite is not None and nodata is not None:
            nonfinite = None  # a nodata policy is given: non-finite pixels are masked, not an error
        if cuda:
            lab = lab.to("cpu", non_blocking=True)
            prob = prob.to("cpu", non_blocking=True) if prob is not None else None
            conf = conf.to("cpu", non_blocking=True) if conf is not None else None
            nonfinite = nonfinite.to("cpu", non_blocking=True) if nonfinite is not None else None
            blown = blown.to("cpu", non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
        else:
            ev = None
        return tile, lab, prob, conf, mask, nonfinite, blown, ev

    def write(item) -> None:
        tile, lab, prob, conf, mask, nonfinite, blown, ev = item
        t0 = time.perf_counter()
        if ev is not None:
            ev.synchronize()
        # (a non-finite value found on the device is named from the store: the window is read again)
        lab, prob, conf = finish_tile(tile, (lab, prob, conf, blown), mask, nonfinite, lambda: read(*tile.read),
                                      halo=plan.halo, mean=mean64, std=std64,
                                      precision=getattr(engine, "precision", "float32"), nodata_bands=nodata_bands)
        nodata_px = lab.size - np.count_nonzero(lab)
        stats["nodata_px"] += nodata_px
        sink.write(tile.y0, tile.x0, lab, prob, conf)
        stats["write_s"] += time.perf_counter() - t0
        log.debug("tile %d (rows %d:%d, cols %d:%d) written at %.2f s, %d nodata px", tile.index, tile.y0, tile.y1,
                  tile.x0, tile.x1, time.perf_counter() - t_start, nodata_px)

    depth = max(1, int(queue_depth))
    tiles = iter(plan.tiles)
    pending: collections.deque[Future] = collections.deque()
    writes: collections.deque[Future] = collections.deque()
    source = getattr(scene, "encoding", {}).get("source")  # (its progress lines say which run they are)
    bar = _progress_bar(sum(t.pixels for t in plan), progress, name=source)  # a resumed run's: only its tiles
    t_start = time.perf_counter()
    wpool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsi-write")
    try:
        for _ in range(depth):
            t = next(tiles, None)
            if t is None:
                break
            pending.append(submit(t))
        staged = None  # (Prepared, device tensor, copy event): the next tile, already on its way to the device
        while pending or staged is not None:
            if staged is None:
                p = pending.popleft().result()
                t = next(tiles, None)
                if t is not None:
                    pending.append(submit(t))
                staged = (p, *to_device(p))
                if cuda:
                    mark(p.tile, "copy queued")
            p, x, ev = staged
            staged = None
            if ev is not None:
                torch.cuda.current_stream(device).wait_event(ev)
                x.record_stream(torch.cuda.current_stream(device))
            t0 = time.perf_counter()
            mask_t = nonfinite = None
            if p.wrap is not None:
                x, mask_t, nonfinite = prepare_tile_tensor(x, p.tile, halo=plan.halo, mean=mean_t, std=std_t,
                                                           nodata=nodata, wrap_bits=p.wrap,
                                                           nodata_bands=nodata_bands)
            logits = tile_logits(engine, x, p.tile, p.mask)  # (K, h, w); on CUDA queued, not yet run
            stats["nodata_tiles"] += all_nodata(p.mask)
            item = finish(p.tile, logits, p.mask, mask_t, nonfinite)
            stats["compute_s"] += time.perf_counter() - t0
            mark(p.tile, "compute queued")
            if cuda and pending:  # the next tile's copy runs beside this tile's compute; queued after it, so
                # this tile never waits for the next one to be staged on the host
                nxt = pending.popleft().result()
                t = next(tiles, None)
                if t is not None:
                    pending.append(submit(t))
                staged = (nxt, *to_device(nxt))
                mark(nxt.tile, "copy queued")  # (CUDA only)
            while len(writes) >= depth:
                writes.popleft().result()
            writes.append(wpool.submit(write, item))
            bar.update(p.tile.pixels)
        while writes:
            writes.popleft().result()
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        bar.close()  # first: a second Ctrl-C during the joins below must not leave its log timer running
        rpool.shutdown(wait=True, cancel_futures=True)
        for pool in (stager, copies):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        wpool.shutdown(wait=True)
        if dpool is not None:
            dpool.shutdown(wait=True)
    stats["wall_s"] = time.perf_counter() - t_start
    if hasattr(read, "decoded"):
        stats["blocks_decoded"], stats["block_hits"] = read.decoded, read.hits
    stats["decoders"] = decoders if dpool is not None else 0
    stats["pixels"] = plan.height * plan.width
    stats["tiles"] = len(plan)
    if stats["pixels"] and stats["nodata_px"] == stats["pixels"]:
        warn_all_nodata(nodata, nodata_bands)
    log.debug("run: %s", ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in sorted(stats.items())))
    return dict(stats)


def warn_all_nodata(nodata: float | None, nodata_bands: Sequence[int] | None) -> None:
    """One warning for a run whose every output pixel came out nodata (class 0), with the likely cause."""
    tested = "every band" if nodata_bands is None else f"the {len(nodata_bands)} bands not flagged bad"
    log.warning("every pixel this run classified is nodata (class 0): each has a non-finite value, or a value equal to "
                "nodata (%s) in one of the bands the mask looks in (%s). If some bands hold nodata in every pixel (a sensor's bad bands, e.g. "
                "EnMAP's 130-135), flag them with a 'bbl' coordinate on 'band' (0 = bad; read from GeoTIFF and "
                "ENVI band metadata) so the mask leaves them out, or pass another nodata value (--nodata)",
                nodata, tested)


__all__ = ["ArraySink", "Prepared", "Sink", "blown_pixels", "cache_blocks_for", "check_blown", "check_read_settings",
           "check_scene", "finish_tile", "labels_from_logits", "load_tile", "prepare_tile", "prepare_tile_tensor",
           "read_window", "run_plan", "stage_window", "submit_in_plan_order", "tile_outputs", "window_reader"]
