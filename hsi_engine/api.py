"""Public API: ``classify``, ``classify_to_file``, ``open_scene``, ``load_model`` and the ``da.hsi`` accessor.

torch (and the model code) is imported lazily, inside the functions, so importing ``hsi_engine`` (and so
registering the accessor) stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, overload

import numpy as np
import xarray as xr

from ssrn.errors import check_flag, is_whole

from .dask_client import refuse_unguarded_main, releases_task_thread
from .errors import (IrregularGridError, OptionError, OutputError, SceneError,
                     UnnormalisedInputWarning, user_stacklevel, warn_each_call)
from .georef import georeferenced, grid_transform, scene_gcps, scene_georef, scene_name, with_window_gcps
from .io import as_scene, open_scene
from .logs import quiet_affine_mul, warnings_ignored
from .owned import closes_its_scenes, open_owned
from .scene_checks import (check_array_dims, check_declared_scaling, check_scale, declared_nodata, model_bad_bands,
                           scene_wavelengths, tested_bands, warn_file_read_elsewhere, warn_large_chunks,
                           warn_other_pixel_size)
from .tiles import TilePlan, default_tile, plan_tiles

if TYPE_CHECKING:
    from ssrn.model import SSRN

log = logging.getLogger(__name__)

__all__ = ["classify", "classify_to_file", "load_model", "open_scene"]


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> SSRN:
    """Load a model directory (``weights.safetensors`` + ``model.json``) as an ``ssrn.SSRN`` in eval mode.

    ``model.meta`` carries the per-band ``mean``/``std`` the scene is normalised with, ``class_names``,
    ``palette`` and, when known, the band ``wavelengths``.
    """
    _import_whole()
    from ssrn.checkpoint import load_model as _load

    return _load(path, map_location=map_location)


# the resumable/zarr/cluster path's own imports (zarr's codecs and fsspec load on a store's first use): a Ctrl-C in
# the middle of them left zarr half-imported ("module 'zarr' has no attribute 'core'") for every later zarr run
_CLUSTER_PATH_MODULES = ("hsi_engine.cluster", "distributed", "zarr", "zarr.storage", "numcodecs", "fsspec",
                         "fsspec.compression")


def _import_whole(modules: tuple[str, ...] = ("hsi_engine.fused", "ssrn.checkpoint")) -> None:
    """First imports run whole (torch's, through the engine and the checkpoint loader, by default): cut half-way
    by a service's timeout raised from a signal handler, torch could not be imported again (the next call
    segfaulted)."""
    if all(m in sys.modules for m in modules):
        return
    import importlib

    from .whole import run_whole

    run_whole(lambda: [importlib.import_module(m) for m in modules])


# ----------------------------------------------------------------------------------------------
# shared set-up


def _device(device: Any):
    """The torch device to run on (default: cuda when available, else cpu): cpu or cuda, checked by
    :func:`hsi_engine.fused.engine_device` before anything is read."""
    from .fused import engine_device

    return engine_device(device)


def _model(model: Any):
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not hasattr(model, "config") or not hasattr(model, "spectral_blocks"):
        raise OptionError(f"model must be an ssrn.SSRN (or a model directory path); got {type(model).__name__}")
    from ssrn.checkpoint import _check_meta

    _check_meta(getattr(model, "meta", None), model.config, "model.meta")  # edited in memory: load_model's checks
    return model


def _normalisation(model: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-band ``(mean, std)`` from ``model.meta`` (checked by :func:`_model`: both or neither, one finite number
    per band); ``(None, None)`` when absent (scene taken as normalised). A std of 0 reads as 1, as the trainer's."""
    meta = getattr(model, "meta", None) or {}
    if meta.get("mean") is None or meta.get("std") is None:
        return None, None
    std = np.asarray(meta["std"], np.float64)
    return np.asarray(meta["mean"], np.float64), np.where(std > 0, std, 1.0)



class _Shown(float):
    """A float whose ``:g`` shows all its digits (two values that print alike under ``:g`` told apart)."""

    def __format__(self, spec: str) -> str:
        return repr(float(self)) if spec == "g" else super().__format__(spec)


def _warn_given_nodata(da: xr.DataArray, nodata: float) -> None:
    """Warn where a value given as ``nodata`` masks nothing in an integer scene (NaN, -9999 or 0.5 in uint16), or
    replaces the value the scene declares: one nodata value is read, so ``--nodata 0`` for a mosaic's gaps made
    the declared fill's pixels land cover without a word (NaN is masked beside a declared value, not instead)."""
    if math.isnan(nodata):
        declared = declared_nodata(da)
        if da.dtype.kind in "uib":
            warn_each_call(f"nodata=nan (--nodata nan) masks nothing in this {da.dtype} scene (integers hold no NaN)"
                           + (f" and replaces its declared nodata value {declared:g}: leave nodata unset (no "
                              "--nodata) to use it, or the integer its fill pixels hold" if declared is not None else
                              ": pass the integer its fill pixels hold"))
        elif declared is not None and not math.isnan(declared):
            warn_each_call(f"nodata=nan (--nodata nan) replaces this scene's declared nodata value {declared:g}, so "
                           f"pixels holding {declared:g} are classified, not class 0. NaN is masked with the declared "
                           "value too: pass nodata=None (no --nodata) to mask both")
        return
    if da.dtype.kind in "ui":
        info = np.iinfo(da.dtype)
        if not (nodata.is_integer() and (info.min <= nodata <= info.max or nodata == float(info.max))):
            # (2**64 - 1, GDAL's UInt64 nodata, is 2**64 as a float: the mask compares it so and finds its pixels)
            warn_each_call(f"nodata={nodata:g} (--nodata {nodata:g}) masks nothing in this {da.dtype} scene (it "
                           f"holds whole numbers {info.min}..{info.max}): pass the value its fill pixels hold")
            return
    try:
        declared = declared_nodata(da)
    except SceneError:  # a declared value that is no number: the given one overrides it, as its error says
        return
    same = declared is not None and (declared == nodata or (da.dtype.kind == "f" and np.asarray(
        declared, da.dtype) == np.asarray(nodata, da.dtype)))  # (float32's min as gdalinfo prints it)
    if declared is not None and not same and not math.isnan(declared):
        if f"{nodata:g}" == f"{declared:g}":  # (-3.40282e+38 given, float32's -3.4028235e+38 declared: both print so)
            nodata, declared = _Shown(nodata), _Shown(declared)
        warn_each_call(f"nodata={nodata:g} (--nodata {nodata:g}) replaces this scene's declared nodata value "
                       f"{declared:g}: one nodata value is read, so pixels holding {declared:g} are classified, not "
                       f"class 0. To mask both, make one fill of them first (scene.where(scene != {nodata:g}, "
                       f"{declared:g}), then no nodata=), or pass nodata=None (no --nodata) to use the declared one")


class _Job:
    """Scene + model + engine + plan: everything checked before a single tile is read. ``plan=False`` leaves the
    tile plan to the caller (:meth:`plan_for`): a resumable run plans on its output's chunk side."""

    def __init__(self, scene: Any, model: Any, *, tile: int | Sequence[int] | None, device: Any, backend: str,
                 precision: str, nodata: float | None, spatial_precision: str = "auto", plan: bool = True) -> None:
        from .fused import PRECISIONS, check_spatial_precision
        from .runner import check_scene

        if precision not in PRECISIONS:  # before anything is opened or read
            raise OptionError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        check_spatial_precision(spatial_precision, precision)
        if isinstance(nodata, np.ndarray) and nodata.ndim == 0:
            nodata = nodata[()]  # a 0-d array (e.g. from a file's attributes): its number
        if is_whole(nodata) and abs(int(nodata)) > 2 ** 1023:  # past any float: float() overflows
            raise OptionError(f"nodata={nodata}: too large for any scene dtype (beyond float64); expected a number "
                              "a scene can hold")
        if nodata is not None and (isinstance(nodata, (bool, np.bool_)) or not isinstance(nodata, numbers.Real)):
            raise OptionError(f"nodata={nodata!r}; expected a number (e.g. nodata=-9999, or nodata=float('nan') for "
                              "NaN) or None (the scene's declared nodata value)")
        check_array_dims(scene)
        da = open_owned(scene) if isinstance(scene, (str, os.PathLike)) else as_scene(scene)
        if da.ndim != 3 or set(da.dims) != {"band", "y", "x"}:
            raise SceneError(f"expected a (band, y, x) scene; got dims {da.dims}")
        self.da = da = da.transpose("band", "y", "x")
        if not isinstance(scene, (str, os.PathLike)):
            warn_file_read_elsewhere(da)
        from .io import file_of

        # what the map records it was made of: the scene's file, or the in-memory array's shape and type
        self.source = os.path.abspath(scene) if isinstance(scene, (str, os.PathLike)) else file_of(da)
        # a CRS pyproj cannot read is refused before a tile runs (classify() met it only once the map was made);
        # open_scene lets it through, so that info can show the rest of the scene
        georeferenced(da, scene if isinstance(scene, (str, os.PathLike)) else None)
        self.model = m = _model(model)
        self.meta = dict(getattr(m, "meta", None) or {})
        bands, height, width = (int(da.sizes[d]) for d in ("band", "y", "x"))
        wavelengths = scene_wavelengths(da)
        check_scene(m.config, self.meta, bands=bands, height=height, width=width, wavelengths=wavelengths,
                    dtype=da.dtype)
        model_wl = np.asarray(self.meta.get("wavelengths") or [], np.float64)
        if wavelengths is None and np.isfinite(model_wl).any() and self.source is not None:  # (a file's scene)
            # a file that lost its band metadata (rio merge, gdal_translate): bands out of order ran silently into
            # a wrong map (903 of 1,024 pixels), where the same file with its wavelengths is refused
            from .wavelengths import record_wavelengths_fix

            log.warning("%s records no wavelengths, so its %d bands are not checked against the model's (%.0f-%.0f "
                        "nm): bands in another order or subset would give a wrong map without a word; %s to check "
                        "them", self.source, bands, np.nanmin(model_wl), np.nanmax(model_wl),
                        record_wavelengths_fix(da.attrs.get("source_format"), self.source))
        self.mean, self.std = _normalisation(m)
        trained_stats = self.mean is not None
        model_bad = model_bad_bands(self.meta, bands)
        if model_bad:
            # a band the model was trained with as bad is read as 0 (NaN here, 0 after normalising, as the
            # untested bands' non-finite values are), whatever the scene holds in it: training saw only 0 there
            # (a model without statistics too: (x - 0) / 1 is the scene as it is, to the bit)
            self.mean = np.zeros(bands) if self.mean is None else self.mean.copy()
            self.std = np.ones(bands) if self.std is None else self.std
            self.mean[model_bad] = np.nan
        if not trained_stats and da.dtype.kind in "ui":
            warn_each_call(f"the model has no per-band mean/std (model.json meta), so the scene is taken as already "
                           f"normalised, but it holds {da.dtype} values (raw counts or scaled reflectance): the map "
                           "will be meaningless. Use a model that records its normalisation (trained with "
                           "`hsi-engine train`, or `import-keras --dataset NAME`), or normalise the scene first",
                           UnnormalisedInputWarning)
        warn_other_pixel_size(da, self.meta, self.source or "the scene")
        self.nodata = nodata if nodata is not None else declared_nodata(da)
        if nodata is not None:
            _warn_given_nodata(da, float(nodata))
        if self.nodata is not None:  # a numpy scalar compares as a strong type in numpy, as a Python float in
            self.nodata = float(self.nodata)  # torch: the CPU and CUDA masks differed
        self.nodata_bands = tested_bands(da, model_bad, bands, trained_stats=trained_stats)
        check_declared_scaling(da, self.meta, bands)
        if trained_stats:
            check_scale(da, self.mean, self.std, self.nodata)
        elif da.dtype.kind == "f":  # integers were warned about above
            check_scale(da, np.zeros(bands) if self.mean is None else self.mean,
                         np.ones(bands) if self.std is None else self.std, self.nodata, trained_stats=False)
        from .integrity import check_store

        check_store(da, nodata=self.nodata)  # zarr fills missing chunks silently: refuse them up front
        self.device = _device(device)
        self.height, self.width, self.classes = height, width, m.config.classes
        self.tile: int | Sequence[int] | None = None
        self.plan: TilePlan | None = None
        if plan:
            self.tile = tile if tile is not None else default_tile(self.device.type, bands)
            self.plan = self.plan_for(self.tile)
        self.precision = precision
        self.spatial_precision = spatial_precision
        self.backend = backend
        if log.isEnabledFor(logging.DEBUG):
            log.debug("scene %s: %d bands x %d x %d px, %s, chunks %s; model: %d classes, halo %d, %s",
                      scene_name(da), bands, height, width, da.dtype,
                      None if da.chunks is None else (da.chunks[1][0], da.chunks[2][0]), self.classes, m.config.halo,
                      "per-band normalisation" if trained_stats else "no normalisation (scene taken as is)")
            log.debug("nodata: %s, looked for in %s", self.nodata, "every band" if self.nodata_bands is None else
                      f"{len(self.nodata_bands)} of {bands} bands")

    def plan_for(self, tile: int | Sequence[int]) -> TilePlan:
        """The tile plan of ``tile`` over this scene (cut on its chunks), with the warning for chunks that dwarf a
        tile's window (:func:`warn_large_chunks`): made here for every path, so each warns on the plan it runs."""
        chunks = (self.da.chunks[1], self.da.chunks[2]) if self.da.chunks is not None else None
        plan = plan_tiles(self.height, self.width, tile, self.model.config.halo, chunks=chunks)
        warn_large_chunks(self.da, plan)
        return plan

    def engine(self):
        from .fused import FusedSSRN

        engine = FusedSSRN(self.model, backend=self.backend, device=self.device, precision=self.precision,
                           spatial_precision=self.spatial_precision)
        log.debug("engine: %s backend (asked: %s) on %s, spectral stage in %s, spatial stage in %s", engine.backend,
                  self.backend, engine.device, engine.precision, engine.spatial_precision)
        return engine

    def run(self, sink: Any, *, probabilities: bool, progress: bool | None, queue_depth: int | None,
            readers: int | None, cache_blocks: int | None = None, decoders: int | None = None
            ) -> dict[str, float]:
        """Classify the plan into ``sink``; a scene whose files change meanwhile raises :class:`SceneError` (its map
        would mix two versions of it), whatever the sink: a map in memory as much as a file."""
        from .runner import run_plan
        from .scene_identity import scene_changed, scene_state
        from .tiles import describe_plan

        if self.plan is None:
            raise RuntimeError("_Job(plan=False) has no plan to run: run_plan(job.da, job.plan_for(tile), ...)")
        log.debug("plan: %s", describe_plan(self.plan))
        before = scene_state(self.source)
        stats = run_plan(self.da, self.plan, self.engine(), sink, mean=self.mean, std=self.std,
                         nodata=self.nodata, probabilities=probabilities, queue_depth=queue_depth,
                         readers=readers, progress=progress, cache_blocks=cache_blocks, decoders=decoders,
                         nodata_bands=self.nodata_bands)
        changed = scene_changed(self.source, before)
        if changed is not None:
            raise changed
        return stats

    # meta's class_names and palette were checked against the classes by _model (lists, tuples or arrays)
    def class_names(self) -> list[str]:
        names = self.meta.get("class_names")
        if names is not None:
            return [str(n) for n in names]
        return [f"class {i}" for i in range(1, self.classes + 1)]

    def model_palette(self) -> list[list[int]] | None:
        """The model's class colours, None where it has none (what a resumable run's settings record)."""
        pal = self.meta.get("palette")
        return None if pal is None else [[int(c) for c in rgb][:3] for rgb in pal]

    def palette(self) -> list[list[int]]:
        """The model's class colours, or the writers' default ones (the GeoTIFF map had its colour table while the
        map in memory had no palette to draw a matching legend with)."""
        from ssrn.palette import default_palette

        pal = self.model_palette()
        return pal if pal is not None else [list(c) for c in default_palette(self.classes)]


def _provenance(job: _Job) -> dict[str, str]:
    """The provenance (:func:`hsi_engine.resume.provenance`) of a map ``job`` makes in this process, its spatial
    precision as the engine resolves ``auto`` on the job's device, and the scene it classified (its file, or the
    array's shape and type) with the nodata value it masked."""
    from .resume import model_digest, model_status, provenance, resolved_spatial_precision

    spatial = resolved_spatial_precision(job.spatial_precision, job.precision, job.device.type)
    # (a file name that is not UTF-8, as Linux allows, with its odd bytes escaped: GDAL's tags are UTF-8)
    scene = (os.fsencode(job.source).decode("utf-8", "backslashreplace") if job.source else
             f"an in-memory array {tuple(int(n) for n in job.da.shape)} (band, y, x) of {job.da.dtype}")
    # ('scene_nodata', not 'nodata': rioxarray reads a 'nodata' attribute as the class map's own)
    return {**provenance(model_digest(job.model), job.precision, spatial), "scene": scene,
            "scene_nodata": "none" if job.nodata is None else repr(float(job.nodata)), **model_status(job.meta)}


def _spatial_coords(da: xr.DataArray) -> dict[str, Any]:
    """Coords of ``da`` that live on (a subset of) ``(y, x)``, plus the CRS's ``spatial_ref`` variable."""
    out = {}
    for name, c in da.coords.items():
        if set(c.dims) <= {"y", "x"} and name != "band":
            out[name] = c.load() if c.chunks is not None else c  # in memory: the scene file may be closed next
    return out


# ----------------------------------------------------------------------------------------------
# public functions


# (the return type follows ``probabilities``: a map, or a Dataset with the probabilities, for type checkers)
@overload
def classify(scene: Any, model: Any, *, tile: int | Sequence[int] | None = None, device: Any = None,
             backend: str = "auto", precision: str = "float32", probabilities: Literal[False] = False,
             nodata: float | None = None, progress: bool | None = None, queue_depth: int | None = None,
             readers: int | None = None, cache_blocks: int | None = None,
             decoders: int | None = None, spatial_precision: str = "auto") -> xr.DataArray: ...


@overload
def classify(scene: Any, model: Any, *, tile: int | Sequence[int] | None = None, device: Any = None,
             backend: str = "auto", precision: str = "float32", probabilities: Literal[True, "float32", "float16"],
             nodata: float | None = None, progress: bool | None = None, queue_depth: int | None = None,
             readers: int | None = None, cache_blocks: int | None = None,
             decoders: int | None = None, spatial_precision: str = "auto") -> xr.Dataset: ...


@overload
def classify(scene: Any, model: Any, *, tile: int | Sequence[int] | None = None, device: Any = None,
             backend: str = "auto", precision: str = "float32", probabilities: bool | str = False,
             nodata: float | None = None, progress: bool | None = None, queue_depth: int | None = None,
             readers: int | None = None, cache_blocks: int | None = None,
             decoders: int | None = None, spatial_precision: str = "auto") -> xr.DataArray | xr.Dataset: ...


@quiet_affine_mul
@releases_task_thread
@closes_its_scenes
def classify(scene: Any, model: Any, *, tile: int | Sequence[int] | None = None, device: Any = None,
             backend: str = "auto", precision: str = "float32", probabilities: bool | str = False,
             nodata: float | None = None, progress: bool | None = None, queue_depth: int | None = None,
             readers: int | None = None, cache_blocks: int | None = None,
             decoders: int | None = None, spatial_precision: str = "auto") -> xr.DataArray | xr.Dataset:
    """Classify every pixel of ``scene`` with the SSRN ``model``; exact against patch mode in float32.

    ``scene``: a ``(band, y, x)`` DataArray (dask-backed scenes are read tile by tile), a path (opened with
    :func:`open_scene`), a numpy array or a torch tensor ``(band, y, x)``.
    ``model``: an ``ssrn.SSRN`` (or a model directory). When ``model.meta`` holds per-band ``mean``/``std``
    (every model loaded with :func:`load_model`), the scene is normalised with them; a bare ``SSRN`` whose
    meta has none takes the scene as ALREADY normalised. BN always runs with its running statistics.
    ``tile``: output tile side ``T`` or ``(ty, tx)`` (default 128 on CPU, 64 above 256 bands; 512 on CUDA);
    each tile is read with a halo of ``patch // 2``; any size gives the same map. The map is that of the
    array as stored: a scene stored south-up (ascending y) is seen mirrored by the spatial stage, so its map
    differs from the north-up one near class edges (flip it first, ``scene.isel(y=slice(None, None, -1))``,
    to match a model trained north-up). ``backend``: ``auto``/``eager``/``compile``/
    ``triton`` (``auto``: the fused Triton kernel for bf16/fp16 on CUDA, eager otherwise, as measured; see
    ``kernels.dispatch``); ``precision``: ``float32`` (exact) or ``bfloat16``/``float16`` (opt-in: the spectral
    stage; the spatial stage too on CUDA and, in bfloat16, on a CPU with AMX-BF16). ``spatial_precision``: ``auto`` (that
    rule), ``float32`` (the spatial stage in float32 whatever the host; one map across mixed hosts) or the
    engine's ``precision`` (see :class:`~hsi_engine.fused.FusedSSRN`).
    ``nodata``: input value (or ``float('nan')``) marking missing pixels -> class 0; default: the scene's
    declared nodata (``_FillValue``), if any. Without one, NaN/inf raise :class:`NonFiniteInputError`. A pixel
    is nodata when one of its bands holds the value, except bands a ``bbl`` band coordinate flags bad (0; read
    from GeoTIFF and ENVI band metadata): a sensor's bad bands, nodata in every pixel, would mask the scene.
    ``progress``: tqdm bar with pixels/s (default: when stderr is a terminal, or in a Jupyter kernel).
    ``readers``/``queue_depth``: reader threads and tiles prepared ahead (defaults in
    :func:`hsi_engine.runner.run_plan`).
    ``cache_blocks``: decoded blocks of a chunked scene kept for reuse by neighbouring tiles (default: what
    the tile plan needs on CUDA, none on CPU; :func:`hsi_engine.runner.run_plan` says why). ``decoders``:
    threads decoding the cached blocks of one tile's window concurrently (default: one per core on CUDA, none
    on CPU, where the compute needs the cores).

    Returns a DataArray ``(y, x)`` uint8 named ``class`` (0 = nodata, 1..K = classes) carrying the scene's
    y/x coords and CRS, with attrs ``class_names`` (label i is ``class_names[i-1]``), CF's ``flag_values`` /
    ``flag_meanings``, ``palette`` (the model's, or the default colours the GeoTIFF map gets: R, G, B of class 1,
    then of class 2, ... as one flat list, so the map writes to NetCDF too), ``_FillValue`` 0 (so GDAL reads 0 as
    nodata; xarray reads such a file back as float with NaN unless opened with ``mask_and_scale=False``), CF
    attributes on x and y, and the provenance the file outputs carry (``software``, ``model_digest``, ``precision``,
    ``spatial_precision`` as resolved, ``map_version``: see :func:`hsi_engine.resume.provenance`), which
    ``to_netcdf`` and ``rio.to_raster`` keep. With ``probabilities=True`` it returns an ``xr.Dataset`` instead
    (the provenance on it and on each variable) with ``labels`` (that DataArray), ``probabilities``
    ``(class, y, x)`` float32 (softmax; NaN at nodata pixels) and ``confidence`` ``(y, x)`` float32 (the top
    probability); ``probabilities="float16"`` stores them in half precision, as ``classify_to_file`` does by
    default.
    """
    refuse_unguarded_main("classify")  # (a worker of workers= re-running an unguarded script)
    _import_whole()
    from .runner import ArraySink, check_read_settings

    if not (isinstance(probabilities, (bool, np.bool_)) or probabilities in (None, "float32", "float16")):
        raise OptionError(f"probabilities must be a bool, 'float32' or 'float16'; got {probabilities!r}")
    check_read_settings(cache_blocks=cache_blocks, decoders=decoders, readers=readers, queue_depth=queue_depth)
    half = probabilities == "float16"
    probabilities = bool(probabilities)
    progress = check_flag("progress", progress) if progress is not None else None
    job = _Job(scene, model, tile=tile, device=device, backend=backend, precision=precision, nodata=nodata,
               spatial_precision=spatial_precision)
    sink = ArraySink(job.height, job.width, job.classes, probabilities=probabilities,
                     probabilities_dtype=np.float16 if half else np.float32)
    job.run(sink, probabilities=probabilities, progress=progress, queue_depth=queue_depth, readers=readers,
            cache_blocks=cache_blocks, decoders=decoders)
    from .cube import SOURCE_COL, SOURCE_ROW
    from .writers import flag_meanings

    # (source_row/source_col place a window of a rotated or GCP scene: the map carries its own transform or GCPs)
    coords = {k: v for k, v in _spatial_coords(job.da).items() if k not in (SOURCE_ROW, SOURCE_COL)}
    attrs = {"class_names": job.class_names(), "_FillValue": 0, "long_name": "SSRN class (0 = nodata)",
             "flag_values": np.arange(1, job.classes + 1, dtype=np.uint8),  # CF: the variable's type, in NetCDF too
             "flag_meanings": flag_meanings(job.class_names())}
    attrs["palette"] = [v for rgb in job.palette() for v in rgb]  # flat: NetCDF attributes are 1-D
    # what made the map, as the file outputs record it: kept by labels.to_netcdf() and labels.rio.to_raster()
    made_by = _provenance(job)
    attrs.update(made_by)
    labels = xr.DataArray(sink.labels, dims=("y", "x"), coords=coords, name="class", attrs=attrs)
    if georeferenced(job.da):
        labels = labels.rio.write_crs(job.da.rio.crs)
        gcps = scene_gcps(job.da)
        if gcps:  # a scene placed by ground control points: so is its map (moved to the window classified)
            labels = with_window_gcps(labels, gcps, job.da.rio.crs)
        else:  # the scene's spatial_ref may hold a GeoTransform its coordinates contradict: the map's must not
            try:
                labels = labels.rio.write_transform(grid_transform(job.da, scene))
            except IrregularGridError as e:  # the map keeps the scene's coordinates; a transform would lie
                warnings.warn(f"{e}. The map keeps the scene's coordinates, but no transform can place it "
                              "(rio.transform() and rio.to_raster would not)", stacklevel=user_stacklevel())
        if "x" in labels.coords and "y" in labels.coords:  # CF's units, standard_name and axis for readers
            try:                                              # that place by coordinates (NetCDF without GDAL)
                labels = labels.rio.write_coordinate_system()
            except Exception:  # noqa: BLE001 - a CRS pyproj cannot describe in CF terms: the attributes are extras
                pass
    if not probabilities:
        return labels
    cls = np.arange(1, job.classes + 1)
    ds = xr.Dataset({"labels": labels,
                     "probabilities": xr.DataArray(sink.probabilities, dims=("class", "y", "x"),
                                                   coords={**coords, "class": cls},
                                                   attrs={"long_name": "softmax probability", **made_by}),
                     "confidence": xr.DataArray(sink.confidence, dims=("y", "x"), coords=coords,
                                                attrs={"long_name": "top-class probability", **made_by})})
    ds.attrs["class_names"] = job.class_names()
    ds.attrs.update(made_by)
    if "spatial_ref" in labels.coords:  # every variable's grid mapping: GDAL read probabilities without a CRS
        ds = ds.rio.write_grid_mapping("spatial_ref")
    return ds


@contextlib.contextmanager
def _removes_directories_made(out: str | os.PathLike) -> Iterator[None]:
    """Remove, when the block fails, the output's parent directories that did not exist before it (deepest first,
    each only while empty): ``classify_to_file(..., "new/dir/map.tif")`` failing on the scene left ``new/dir/``.
    A directory that holds something (a resumable run's ``<out>.partial``, a map committed before an interruption,
    another program's file) stays, and so do those above it."""
    made = []
    d = Path(os.fspath(out)).absolute().parent
    while not os.path.lexists(d) and d != d.parent:
        made.append(d)
        d = d.parent
    try:
        yield
    except BaseException:
        for d in made:
            try:
                d.rmdir()  # only an empty directory
            except FileNotFoundError:
                continue  # not made after all (the run failed before it got there)
            except OSError:
                break
        raise


@quiet_affine_mul
@releases_task_thread
@closes_its_scenes
def classify_to_file(scene_path: Any, model_path: Any, out: str | os.PathLike, *,
                     tile: int | Sequence[int] | None = None, device: Any = None, backend: str = "auto",
                     precision: str = "float32", probabilities: bool | str = False, overwrite: bool = False,
                     nodata: float | None = None, workers: int | None = None, scheduler: str | None = None,
                     resume: bool = False, progress: bool | None = None, queue_depth: int | None = None,
                     readers: int | None = None, cache_blocks: int | None = None,
                     decoders: int | None = None, spatial_precision: str = "auto",
                     on_written: Callable[[Path], None] | None = None) -> Path:
    """Stream the class map of a scene into ``out`` (``.tif`` Cloud-Optimised GeoTIFF or ``.zarr``).

    Opens the scene (a path, or anything :func:`classify` takes), loads the model (a directory, or an
    ``SSRN``), checks bands / wavelengths / size before reading a tile, then writes tile by tile through
    ``hsi_engine.writers.open_writer`` with the scene's CRS, transform, coords, the model's class names and
    palette, and commits atomically (an error leaves no output, nor a directory made for it). ``out`` is a local
    path; one starting with ``~`` is refused (Python does not expand it: pass ``os.path.expanduser(out)``).
    ``probabilities``: ``True`` (float16), ``"float16"`` or ``"float32"`` also writes per-class probabilities and the
    confidence. ``overwrite`` replaces an output hsi-engine wrote, all of it (old side files this run does not write,
    a stale ``<out>.partial``), and is refused up front for anything else: a directory or store we did not write, or
    an ``out`` that is (or holds, or lies inside) the scene.

    ``workers`` (local dask cluster of N workers), ``scheduler`` (address of a running scheduler) and
    ``resume`` (finish an interrupted output) run the same plan on ``hsi_engine.cluster``. A ``.zarr`` output
    always goes that way too: it is built in ``<out>.partial`` with a per-tile completion record, so an
    interrupted run is finished by ``resume=True`` (``--resume``). Warns when the scene has no
    georeferencing (the map is then written in pixel coordinates). ``progress``, ``queue_depth``, ``readers``
    ``cache_blocks``, ``decoders`` and ``spatial_precision`` are as in :func:`classify` (a cluster run's tasks use
    no reader threads: ``readers``/``queue_depth`` have no effect there, and a warning says so). ``on_written`` is
    called with the output's path as soon as it is complete, before the run's last clean-up (the command line stops
    taking interruptions then: a SIGTERM in those milliseconds reported a finished map as interrupted).
    """
    refuse_unguarded_main("classify_to_file")  # (a worker of workers= re-running an unguarded script)
    _import_whole()
    if isinstance(probabilities, np.bool_):
        probabilities = bool(probabilities)
    prob = "float16" if probabilities is True else (None if probabilities in (False, None) else probabilities)
    if prob not in (None, "float16", "float32"):  # before anything is opened, on either path
        raise OptionError(f"probabilities must be a bool, 'float16' or 'float32'; got {probabilities!r}")
    overwrite, resume = check_flag("overwrite", overwrite), check_flag("resume", resume)
    progress = check_flag("progress", progress) if progress is not None else None
    if on_written is not None and not callable(on_written):  # (called once the map is committed: too late then)
        raise OptionError(f"on_written must be a function taking the output's path, or None; got "
                          f"{type(on_written).__name__} {on_written!r}")
    from .runner import check_read_settings

    # on every path, before anything is opened: the .tif path's GDAL cache room reads readers first
    check_read_settings(cache_blocks=cache_blocks, decoders=decoders, readers=readers, queue_depth=queue_depth)
    from .outputs import ZARR_SUFFIXES, check_output_suffix

    # first: an empty or suffix-less path has no side files to check. The suffix it resolves decides the path below
    # too, as it decides the writer: a test of the text ('m.zarr/.', Windows' 'maps\\m.zarr\\') sent a .zarr output
    # down the plain path, without the completion record that makes it resumable
    suffix = check_output_suffix(out)
    with _removes_directories_made(out):  # a failed run leaves no directory it made for the output either
        # zarr outputs always carry a per-tile completion record, so any interrupted run can be resumed
        zarr = suffix in ZARR_SUFFIXES
        if workers is not None or scheduler is not None or resume or zarr:
            _import_whole(_CLUSTER_PATH_MODULES)
            from . import cluster

            return cluster.classify_to_file(scene_path, model_path, out, tile=tile, device=device, backend=backend,
                                            precision=precision, probabilities=probabilities, overwrite=overwrite,
                                            nodata=nodata, workers=workers, scheduler=scheduler, resume=resume,
                                            progress=progress, queue_depth=queue_depth, readers=readers,
                                            cache_blocks=cache_blocks, decoders=decoders,
                                            spatial_precision=spatial_precision, on_written=on_written)
        from .lock import output_lock
        from .resume import check_no_partial, discard_partial, refuse_outputs_in_the_way
        from .io import scene_format
        from .runner import default_readers, read_cache_bytes
        from .outputs import check_not_scene
        from .writers import open_writer

        check_not_scene(out, scene_path)  # before anything is read: --out must never replace the scene itself
        refuse_outputs_in_the_way(Path(out), suffix, prob, overwrite=overwrite)  # (the writer checks again)

        scene = open_owned(scene_path) if isinstance(scene_path, (str, os.PathLike)) else scene_path
        job = _Job(scene, model_path, tile=tile, device=device, backend=backend, precision=precision, nodata=nodata,
                   spatial_precision=spatial_precision)
        da = job.da
        crs, transform, gcps = scene_georef(da, scene_path)
        ycoords = np.asarray(da["y"].values) if "y" in da.coords else None
        xcoords = np.asarray(da["x"].values) if "x" in da.coords else None
        # GDAL's block cache, capped while the map is written, keeps room for the blocks a scene GDAL reads
        # (GeoTIFF, ENVI) has in flight
        gdal_room = read_cache_bytes(job.da, job.tile, job.model.config.halo, readers or default_readers(
            job.device.type == "cuda")) if job.source and scene_format(job.source) in ("geotiff", "envi") else 0
        # one live run per output (a resumable one may be writing <out>.partial)
        with output_lock(out, side_files=prob is not None):
            # an interrupted --resume run's store: finish or discard
            stale = check_no_partial(out, overwrite=overwrite)
            with warnings_ignored(UserWarning, "writing .* without georeferencing"):  # warned above, once
                writer = open_writer(out, height=job.height, width=job.width, n_classes=job.classes, crs=crs,
                                     transform=transform, y_coords=ycoords, x_coords=xcoords,
                                     class_names=job.class_names(), palette=job.palette(), probabilities=prob,
                                     confidence=prob is not None,
                                     overwrite=overwrite, gcps=gcps, tags=_provenance(job),
                                     read_cache_bytes=gdal_room)
            t0 = time.perf_counter()
            try:  # (a scene changed while read raises here too: no map of two versions of it is committed)
                stats = job.run(writer, probabilities=prob is not None, progress=progress, queue_depth=queue_depth,
                                readers=readers, cache_blocks=cache_blocks, decoders=decoders)
            except BaseException:
                writer.abort()  # nothing half-written is left behind
                raise
            try:
                path = Path(writer.commit())
            except BaseException:
                if writer.committed and on_written is not None:  # stopped while removing temps: the map is in place
                    on_written(Path(out))
                raise
            if on_written is not None:
                on_written(path)
            if stale is not None:
                try:
                    discard_partial(stale)  # replaced by the output just committed
                except OutputError as e:  # the map is written: say what is left, do not fail the run
                    log.warning("wrote %s, but %s", path, e)
        log.info("wrote %s: %d tiles, %d x %d pixels in %.1f s", path, stats.get("tiles", len(job.plan)), job.height,
                 job.width, time.perf_counter() - t0)
        return path
