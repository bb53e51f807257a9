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
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import xarray as xr

from .dask_client import releases_task_thread
from .errors import (IrregularGridError, OptionError, OutputError, SceneError,
                     UnnormalisedInputWarning, user_stacklevel)
from .io import NODATA_ATTRS, as_scene, band_runs, open_scene, scene_gcps, with_window_gcps
from .logs import warnings_ignored
from .owned import closes_its_scenes, open_owned
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


def _import_whole() -> None:
    """torch's first import (through the engine and the checkpoint loader), run whole: cut half-way by a
    service's timeout raised from a signal handler, torch could not be imported again (the next call segfaulted)."""
    if "hsi_engine.fused" in sys.modules and "ssrn.checkpoint" in sys.modules:
        return
    import importlib

    from .whole import run_whole

    run_whole(lambda: [importlib.import_module(m) for m in ("hsi_engine.fused", "ssrn.checkpoint")])


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


def _wavelengths(da: xr.DataArray) -> np.ndarray | None:
    """The scene's band wavelengths in nm: its ``wavelength`` coordinate (in its ``units``), else a ``band``
    coordinate in a length unit or wavenumbers (its ``units``), else a float ``band`` coordinate that reads as
    wavelengths (all within 250-3000 nm, or 0.25-3 µm and not whole numbers; not necessarily monotonic: AVIRIS's
    spectrometers overlap), so that a reordered or mismatched band axis is caught either way; None when neither is
    there. A ``units`` of ``Index`` (ENVI's band numbers; ``Unknown`` over values 1..N) says the values are not
    wavelengths: None, as without them; a ``wavelength`` coordinate of strings is read as band names are
    ('460.0 nm') or as numbers ('460.0', in its ``units``)."""
    from .io import _to_nm, not_wavelengths, spectral_unit, wavelengths_in_names

    if "wavelength" in da.coords and da.coords["wavelength"].dims == ("band",):
        wl = da.coords["wavelength"]
        units = wl.attrs.get("units")
        if not_wavelengths(str(units) if units is not None else None, wl.values if wl.dtype.kind in "iuf" else None):
            return None
        if wl.dtype.kind in "iufb":
            return _to_nm(np.asarray(wl.values, np.float64), units)
        return _wavelength_strings(wl.values, units)
    band = da.coords.get("band")
    # band names that carry wavelengths ('460.0 nm', 'band 1 (0.4554 Micrometers)'): a ``band`` coordinate of
    # strings, or rioxarray's band descriptions (``long_name``, one per band of the file, of rioxarray.open_rasterio)
    names = None
    long_name = da.attrs.get("long_name")
    if band is not None and band.dims == ("band",) and band.dtype.kind in "UO":
        names = [str(v) for v in band.values]
    elif isinstance(long_name, (tuple, list)):
        numbers = np.asarray(band.values) if band is not None and band.dims == ("band",) else None
        if numbers is not None and numbers.dtype.kind in "iu" and numbers.size and numbers.min() >= 1 \
                and numbers.max() <= len(long_name):
            # rioxarray's band numbers (1..N of the file) move with isel; the attribute stays the file's whole
            # list: a reordered or cut band axis read it as if nothing had moved
            names = [str(long_name[int(b) - 1]) for b in numbers]
        elif len(long_name) == da.sizes["band"]:
            names = [str(v) for v in long_name]
    wl = wavelengths_in_names(names) if names else None
    if wl is not None:
        return wl
    if band is None or band.dims != ("band",) or band.size < 2:
        return None
    units = str(band.attrs.get("units", ""))
    if not_wavelengths(units, band.values if band.dtype.kind in "iuf" else None):  # band numbers
        return None
    if band.dtype.kind in "iuf" and spectral_unit(units):
        return _to_nm(np.asarray(band.values, np.float64), units)  # a unit says what the numbers are
    if band.dtype.kind != "f":
        return None
    v = np.asarray(band.values, np.float64)
    if not np.all(np.isfinite(v)):
        return None
    if np.all((v >= 250) & (v <= 3000)):
        return v
    if np.all((v >= 0.25) & (v <= 3.0)) and not np.all(v == np.round(v)):
        return v * 1000.0
    return None


def _wavelength_strings(values: Any, units: Any) -> np.ndarray:
    """Wavelengths (nm) from a ``wavelength`` coordinate that does not hold numbers: strings with a unit ('460.0 nm',
    '0.46 Micrometers', read as band names are), else strings of numbers in ``units``; else :class:`SceneError`."""
    from .io import _to_nm, wavelengths_in_names

    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]
    found = wavelengths_in_names(names)
    if found is not None:
        return found
    try:
        return _to_nm([float(v) for v in names], units)
    except (TypeError, ValueError):
        bad = next(v for v in names if not _is_number(v))
        raise SceneError(f"the scene's wavelength coordinate holds {bad!r}, which is not a wavelength; expected one "
                         "number per band (nm, or in its 'units' attribute) or text with a unit such as '460.0 nm': "
                         "fix it (scene.assign_coords(wavelength=('band', [460.0, ...]))) or drop it "
                         "(scene.drop_vars('wavelength'): the model then checks the band count only)") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _declared_nodata(da: xr.DataArray) -> float | None:
    declared = {}
    for k in ("_FillValue", "missing_value", "nodata"):
        try:
            declared[k] = float(da.attrs[k]) if k in da.attrs else None
        except (TypeError, ValueError):
            declared[k] = None
    values = {k: v for k, v in declared.items() if v is not None}
    masked = next((k for k in NODATA_ATTRS if k in da.attrs), None)
    if len({("nan" if np.isnan(v) else v) for v in values.values()}) > 1:
        listed = ", ".join(f"{k}={v:g}" for k, v in values.items())
        warnings.warn(f"the scene declares more than one nodata value ({listed}): only {masked}'s is masked, and "
                      "pixels holding the others are classified. Mask them first (e.g. scene.where(scene != VALUE) "
                      "and nodata=float('nan')), or open the file by its path, which decodes them",
                      stacklevel=user_stacklevel())
    v = da.attrs.get(masked) if masked is not None else None
    if v is None:
        try:
            v = da.rio.nodata
        except Exception:  # noqa: BLE001 - rioxarray not able to tell
            v = None
    if v is None and da.dtype.kind == "f" and "missing_value" in da.encoding:
        return float("nan")  # xarray decoded a declared missing_value to NaN (rioxarray reads only _FillValue)
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise SceneError(f"the scene declares a nodata value ({v!r}, its _FillValue/nodata attribute) that is not a "
                         "number: fix the attribute, or pass nodata=VALUE (--nodata VALUE) to override it") from None


def _nodata_bands(da: xr.DataArray) -> np.ndarray | None:
    """Indices of the bands the nodata value is looked for in: those a ``bbl`` band coordinate (ENVI's bad band
    list, 0 = bad) does not flag; None (every band) without one, or when it flags every band."""
    bbl = da.coords.get("bbl")
    if bbl is None or bbl.dims != ("band",):
        return None
    good = np.flatnonzero(np.asarray(bbl.values) != 0)
    return good if 0 < good.size < bbl.size else None


def _model_bad_bands(meta: dict[str, Any], bands: int) -> list[int]:
    """The bands the model was trained with as bad (``meta["bad_bands"]``: its training scene's bbl, or bands
    without any data there), when they fit its band count."""
    bad = sorted({int(b) for b in meta.get("bad_bands") or ()})
    return bad if bad and set(bad) < set(range(bands)) else []


def _tested_bands(da: xr.DataArray, model_bad: list[int], bands: int, trained_stats: bool = True
                  ) -> np.ndarray | None:
    """The bands nodata is looked for in: the scene's bbl good bands (every band without a bbl) less the bands
    the model was trained with as bad (which it reads as 0 whatever they hold); None: every band. Warns when
    the scene flags bands bad that a model with recorded training statistics (``trained_stats``) had data in."""
    good = _nodata_bands(da)
    if "bbl" in da.coords and (model_bad or trained_stats):
        flagged = sorted(set(range(bands)) - set(good.tolist() if good is not None else range(bands)))
        extra = sorted(set(flagged) - set(model_bad))
        if extra:
            theirs = f"its bad bands: {band_runs(model_bad)}" if model_bad else "it has no bad bands"
            warnings.warn(f"the scene's bbl flags bands {band_runs(extra)} (0-based) bad, but the model was "
                          f"trained with data in them ({theirs}): "
                          "their nodata and NaN values reach the network as the band's mean, the others as they are; "
                          "the map may differ from one of the scene without those gaps",
                          stacklevel=user_stacklevel())
    if not model_bad:
        return good
    if "bbl" not in da.coords:
        log.info("the scene flags no bad bands (no 'bbl'): the model's bad bands %s are left out of the nodata "
                 "test", model_bad)
    keep = set(range(bands)) if good is None else set(good.tolist())
    return np.array(sorted(keep - set(model_bad)), dtype=np.intp)


_SCALE_OFF = 30.0  # nearly every band this many times off the training scene's magnitude: another scale
# a sample a median this many training standard deviations from the training means: windows of real scenes of the
# training sensor read 0.3-1.2 (a window of one land cover, water included, up to 2), the shipped Indian Pines
# scene x 0.5 or x 1.5 reads 4.3 or more, x 2 9-11 (each a one-class map: its model is off by 10 % already)
_SCALE_Z = 4.0


def _sample_window(da: xr.DataArray, side: int = 32) -> dict[str, slice]:
    """At most ``side`` x ``side`` pixels at the scene's centre, inside one chunk (one chunk read)."""
    window = {}
    for axis, dim in ((1, "y"), (2, "x")):
        n = int(da.sizes[dim])
        lo, hi = 0, n
        if da.chunks is not None:
            edges = np.cumsum((0,) + tuple(da.chunks[axis]))
            k = int(np.searchsorted(edges, n // 2, side="right")) - 1
            lo, hi = int(edges[k]), int(edges[k + 1])
        start = min(max(lo, n // 2 - side // 2), max(lo, hi - side))
        window[dim] = slice(start, min(hi, start + side))
    return window


def _packing(attrs: dict, bands: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``(scale, offset, unsigned)`` per band from CF packing attributes (``scale_factor``, ``add_offset``,
    ``_Unsigned``; one value or one per band, as rioxarray gives them); None when they pack nothing."""
    try:
        scale, offset = (np.broadcast_to(np.asarray(attrs.get(k, v), np.float64).reshape(-1), (bands,))
                         for k, v in (("scale_factor", 1.0), ("add_offset", 0.0)))
    except (TypeError, ValueError):
        return None
    unsigned = str(attrs.get("_Unsigned", "false")).lower() == "true"
    return None if (scale == 1).all() and (offset == 0).all() and not unsigned else (scale, offset, unsigned)


def _check_packing(da: xr.DataArray, raw: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   nodata: float | None) -> bool:
    """Warn when an integer scene handed over in memory carries CF packing it was not decoded with
    (``xr.open_dataset(..., mask_and_scale=False)``, ``rioxarray.open_rasterio``) and its decoded values fit the
    model's training data far better than the stored integers the engine reads: the map was silently another.
    Packing that is only a note (a GeoTIFF's scale on counts a model was trained on) fits worse, and says nothing.
    Returns whether it warned."""
    packing = _packing(da.attrs, raw.shape[0]) if raw.dtype.kind in "ui" and "unpacked" not in da.attrs else None
    if packing is None:
        return False
    scale, offset, unsigned = packing
    stored = raw.astype(np.float64)
    ok = np.ones(raw.shape[1:], bool) if nodata is None else ~(raw == nodata).any(axis=0)
    used = np.isfinite(mean)
    if ok.sum() < 16 or not used.any():
        return False
    if unsigned and raw.dtype.kind == "i":
        stored = raw.view(raw.dtype.str.replace("i", "u")).astype(np.float64)
    decoded = stored * scale[:, None, None] + offset[:, None, None]

    def off(x: np.ndarray) -> float:  # the median band's sample mean from the model's, in its standard deviations
        return float(np.median(np.abs(x[used][:, ok].mean(axis=1) - mean[used]) / std[used]))

    as_read, as_decoded = off(raw.astype(np.float64)), off(decoded)
    if as_read > 3 and as_decoded * 3 < as_read:
        given = ", ".join(f"{k}={da.attrs[k]}" for k in ("scale_factor", "add_offset", "_Unsigned") if k in da.attrs)
        warnings.warn(f"the scene carries CF packing ({given}) that was not applied: the engine reads its stored "
                      f"{raw.dtype} values, {as_read:,.0f} standard deviations off the model's training data in the "
                      f"median band, against {as_decoded:,.1f} for the decoded values (a {raw.shape[1]} x "
                      f"{raw.shape[2]}-pixel sample). Decode it first (xr.decode_cf(ds), or open the file with "
                      "hsi_engine.open_scene or xr.open_dataset's defaults)",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return True
    return False


def _check_scale(da: xr.DataArray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 trained_stats: bool = True) -> None:
    """Warn (``UnnormalisedInputWarning``, an error on the command line) when a sample of the scene is not on the
    training scene's scale: ``_SCALE_OFF`` times or more off its magnitude in nearly every band (its 10th-90th
    percentile band; reflectance 0-1 against a model trained on integers x 10000), or a median ``_SCALE_Z`` or
    more training standard deviations from the training means (reflectance x 1000 against x 10000, or a scene 2x
    off: the shipped model's map is one class at 1.5x). Both on medians, so a corrupt pixel in the sample does
    not read as a scale (the run names it). The message names a power of ten where one explains the distance,
    says so where the scene looks already standardised, and otherwise gives the distance.
    ``trained_stats=False``: the model has no mean/std and takes the scene as normalised (``mean`` 0, ``std`` 1:
    values of about 1), and a float scene of raw values gave a one-class map without a word; only the factor of
    30 is checked then (no training distribution to measure a distance in)."""
    from .normalise import looks_standardised, scale_distance, scale_factor, scale_ratios

    window = _sample_window(da)
    try:  # synchronously: under a client a read through the cluster waits for its (maybe paused) workers
        sample = da.isel(window).data
        raw = np.asarray(sample.compute(scheduler="synchronous") if hasattr(sample, "dask") else sample)
    except Exception as e:  # noqa: BLE001 - a sanity check: the run reports an unreadable scene itself
        log.debug("scale check skipped: the sample could not be read (%s)", e)
        return
    if trained_stats and _check_packing(da, raw, mean, std, nodata):
        return  # its fix is to decode the scene: a factor named beside it would mislead
    ratios = scale_ratios(raw, mean, std, nodata)
    if ratios is None:
        return
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if ratios.size == 0:
        return
    lo, mid, hi = np.quantile(ratios, [0.1, 0.5, 0.9])
    off_scale = not (_SCALE_OFF * hi >= 1 and lo <= _SCALE_OFF)
    distance = scale_distance(raw, mean, std, nodata) if trained_stats else None
    if not off_scale and (distance is None or distance < _SCALE_Z):
        return
    pixels = f"a {raw.shape[1]} x {raw.shape[2]}-pixel sample"
    if not trained_stats:
        factor = 1 / mid if hi < 1 else mid
        warnings.warn(f"the model has no per-band mean/std (model.json meta), so the scene is taken as already "
                      f"normalised (values of about 1 in every band), but its values are about {factor:,.0f}x "
                      f"{'smaller' if hi < 1 else 'larger'} in nearly every band ({pixels}): the map will be "
                      "meaningless. Use a model that records its normalisation (trained with `hsi-engine train`, or "
                      "`import-keras --dataset NAME`), or normalise the scene first",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return
    if looks_standardised(raw, mean, std, nodata):
        x = raw.astype(np.float64)
        warnings.warn(f"the scene looks already standardised ({pixels}: {np.mean(x < 0):.0%} of its values "
                      f"negative, a median magnitude of {np.nanmedian(np.abs(x)):.2g}), but the model standardises "
                      "the scene itself with its training scene's per-band mean and std (model.json meta), so it "
                      "would be standardised twice and the map be meaningless. Pass the raw values (as the scene "
                      "file stores them, on the training scene's scale), not a z-scored copy",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return
    declared = [f"{k} = {da.attrs[k]}" for k in ("reflectance scale factor", "reflectance_scale_factor")
                if k in da.attrs]
    also = f"; the scene declares {declared[0]}" if declared else ""
    k = scale_factor(raw, mean, std, nodata)
    if k is None or k <= 0:  # no band with a positive training mean: the magnitudes' ratio
        k = float(mid)
    power = 10.0 ** round(math.log10(k))
    explained = power != 1 and (scale_distance(raw, mean, std, nodata, factor=1 / power) or 0.0) < _SCALE_Z
    word = "smaller" if k < 1 else "larger"
    fold = 1 / k if k < 1 else k
    fold_text = f"{fold:,.0f}" if fold >= 10 else f"{fold:.2g}"
    if explained or off_scale:  # a plain cause (an error on the command line): a factor, named where it is 10^n
        fix = (f" (e.g. {f'scene * {1 / power:g}' if k < 1 else f'scene / {power:g}'})" if explained else "")
        warnings.warn(f"the scene's values are about {fold_text}x {word} than those the model was trained on, in "
                      f"nearly every band ({pixels} against the model's per-band mean and std): a scene on another "
                      "scale (reflectance 0-1 against integers x 10000, x 1000 against x 10000, percent against "
                      "fractions) gives a meaningless map. Rescale the scene to the training scene's units"
                      f"{fix} or use a model trained on this scale" + also,
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return
    like = (f"; its values look about {fold_text}x {word} than the training scene's"
            if (scale_distance(raw, mean, std, nodata, factor=1 / k) or 0.0) < _SCALE_Z else "")
    warnings.warn(f"the scene's values lie a median {distance:,.1f} standard deviations from the model's per-band "
                  f"training means ({pixels}; windows of the training scene lie about 1 from them){like}: the "
                  "scene is not on the training scene's scale or in its units (reflectance x 1000 against x 10000, "
                  "radiance against reflectance), or not from its sensor, and the map would be meaningless. "
                  "Rescale it to the training scene's units, or use a model trained on data like it" + also,
                  UnnormalisedInputWarning, stacklevel=user_stacklevel())


def declared_scaling(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scales, offsets)`` per band that the scene declares and the engine does not apply (GDAL band
    scale/offset, kept in ``encoding`` by :func:`open_scene`; rioxarray's ``scale_factor``/``add_offset`` or
    ``scales``/``offsets`` attrs in memory); None when it declares none, or scale 1 and offset 0 in every band:
    GDAL reads a band without them as 1 and 0, so those say nothing (a ``rio merge`` mosaic drops EnMAP's)."""
    n = int(da.sizes["band"])
    found = {}
    for key, one in (("scales", "scale_factor"), ("offsets", "add_offset")):
        v = da.encoding.get(key, da.attrs.get(key, da.attrs.get(one)))
        if v is None:
            continue
        try:
            found[key] = np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (n,)).copy()
        except (TypeError, ValueError):  # not numbers, or not one per band (a band subset keeps the file's list)
            log.debug("the scene's declared %s (%s) are not one number per band: not compared", key, v)
            return None
    scales, offsets = found.get("scales", np.ones(n)), found.get("offsets", np.zeros(n))
    return None if (scales == 1).all() and (offsets == 0).all() else (scales, offsets)


def _scaling_text(scales: np.ndarray, offsets: np.ndarray) -> str:
    def one(v: np.ndarray) -> str:
        return f"{v[0]:g}" if np.all(v == v[0]) else f"{v.min():g}..{v.max():g} (per band)"
    return f"scale {one(scales)}, offset {one(offsets)}"


def _check_declared_scaling(da: xr.DataArray, meta: dict, bands: int) -> None:
    """Warn where the scene declares a band scale/offset (not applied: values are read as stored) other than the
    one the model's training scene declared (``meta["scales"]``/``["offsets"]``): the same reflectance stored
    two ways gives two maps (EnMAP-style uint16 stored + 1000 with offset -0.1 changed 98 % of a tile's
    classes without a word). ``UnnormalisedInputWarning``, an error on the command line. A scene declaring none
    (or 1 and 0) is not compared: GDAL cannot tell that from values stored as the model's; a model recording none
    only tells of a non-zero offset, as a ``UserWarning``: it cannot be checked."""
    declared = declared_scaling(da)
    if declared is None:
        return
    scales, offsets = declared
    m_scales, m_offsets = (np.full(bands, default) if meta.get(key) is None else np.asarray(meta[key], np.float64)
                           for key, default in (("scales", 1.0), ("offsets", 0.0)))
    if (m_scales == 1).all() and (m_offsets == 0).all():
        # (in memory, attrs may be CF packing left undecoded: _check_packing tells of that)
        if np.any(offsets != 0) and ("offsets" in da.encoding or "scales" in da.encoding):
            warnings.warn(f"the scene declares band {_scaling_text(scales, offsets)} (GDAL metadata), which the "
                          "engine does not apply: values are read as stored. The model records no scale/offset of "
                          "its training scene (trained before hsi-engine recorded them, or on a scene without "
                          "them), so it cannot check that its training values were stored the same way",
                          UserWarning, stacklevel=user_stacklevel())
        return
    if np.allclose(scales, m_scales, rtol=1e-6, atol=0) and np.allclose(offsets, m_offsets, rtol=1e-6, atol=1e-12):
        return
    one = (np.all(scales == scales[0]) and np.all(offsets == offsets[0]) and np.all(m_scales == m_scales[0])
           and np.all(m_offsets == m_offsets[0]))
    fix = (f" ((scene * {scales[0]:g} + {offsets[0]:g} - {m_offsets[0]:g}) / {m_scales[0]:g} in Python)" if one
           else "")
    warnings.warn(f"the scene declares band {_scaling_text(scales, offsets)}, but the model's "
                  f"training scene declared {_scaling_text(m_scales, m_offsets)} (model.json meta): values are "
                  "read as stored, not scaled, so the same reflectance stored another way gives another map. "
                  f"Store the scene as the training scene was{fix}, or use a model trained on scenes stored "
                  "like this one", UnnormalisedInputWarning, stacklevel=user_stacklevel())


LARGE_CHUNK_BYTES = 256 << 20  # a decoded chunk above this, and 16 tile windows, costs memory the tile does not set


def _warn_large_chunks(da: xr.DataArray, plan: TilePlan) -> None:
    """Warn where the scene's chunks dwarf a tile's window: every tile decodes the whole chunks it touches, so a
    store written as one chunk (``to_zarr`` of a contiguous NetCDF opened with ``chunks={}``) costs its whole size
    per reader, and is decoded again for every tile in it (a 172 KB single-chunk store took 3.6 GB and hours)."""
    if da.chunks is None:
        return
    itemsize = np.dtype(da.dtype).itemsize
    chunk = max(da.chunks[0]) * max(da.chunks[1]) * max(da.chunks[2]) * itemsize
    th, tw = plan.tile
    window = da.sizes["band"] * math.prod(plan.max_read_shape) * itemsize
    if chunk > max(LARGE_CHUNK_BYTES, 16 * window):
        warnings.warn(f"the scene's chunks are {max(da.chunks[1])} x {max(da.chunks[2])} pixels of "
                      f"{max(da.chunks[0])} bands ({chunk / 2**20:,.0f} MiB decoded each) against tiles of "
                      f"{th} x {tw}: "
                      "every tile decodes the whole chunks it touches, so memory grows by about that much per "
                      "reader thread and each chunk is decoded again for every tile in it. Rechunk the store (e.g. "
                      "xr.open_zarr(path).chunk({'y': 256, 'x': 256}).to_zarr(new_path); chunks asked of a store "
                      "that has larger ones still decode whole ones), or keep them decoded once with cache_blocks=1 "
                      "(--cache-blocks 1), at that memory", UserWarning,
                      stacklevel=user_stacklevel())


def _check_array_dims(scene: Any) -> None:
    """Refuse a numpy array or torch tensor of more than 3 dimensions, naming the fix: a length-1 axis to drop (a
    batch of one, ``(1, band, y, x)``), else a cube to pick. (A 2-D one is io's: one band, ``arr[None]``.)"""
    ndim = getattr(scene, "ndim", None)
    if isinstance(scene, (xr.DataArray, xr.Dataset, str, os.PathLike)) or not isinstance(ndim, int) or ndim <= 3:
        return
    shape = tuple(int(n) for n in scene.shape)
    extra, ones = ndim - 3, [i for i, n in enumerate(shape) if n == 1]
    if len(ones) >= extra:
        drop = ones[:extra]
        fix = (f"drop its length-1 axis with arr.squeeze({drop[0]})" if extra == 1 else
               f"drop {extra} of its length-1 axes with arr.squeeze({tuple(drop)})")
    else:
        fix = "it holds more than one cube: classify one at a time (e.g. arr[0])"
    raise SceneError(f"expected a 3-D (band, y, x) array; got {ndim} dims (shape {shape}): {fix}")


class _Job:
    """Scene + model + engine + plan: everything checked before a single tile is read."""

    def __init__(self, scene: Any, model: Any, *, tile: int | Sequence[int] | None, device: Any, backend: str,
                 precision: str, nodata: float | None, spatial_precision: str = "auto") -> None:
        from .fused import PRECISIONS, check_spatial_precision
        from .runner import check_scene

        if precision not in PRECISIONS:  # before anything is opened or read
            raise OptionError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        check_spatial_precision(spatial_precision, precision)
        if isinstance(nodata, np.ndarray) and nodata.ndim == 0:
            nodata = nodata[()]  # a 0-d array (e.g. from a file's attributes): its number
        if isinstance(nodata, numbers.Integral) and not isinstance(nodata, (bool, np.bool_)) \
                and abs(int(nodata)) > 2 ** 1023:  # past any float: float() overflows
            raise OptionError(f"nodata={nodata}: too large for any scene dtype (beyond float64); expected a number "
                              "a scene can hold")
        if nodata is not None and (isinstance(nodata, (bool, np.bool_)) or not isinstance(nodata, numbers.Real)):
            raise OptionError(f"nodata={nodata!r}; expected a number (e.g. nodata=-9999, or nodata=float('nan') for "
                              "NaN) or None (the scene's declared nodata value)")
        _check_array_dims(scene)
        da = open_owned(scene) if isinstance(scene, (str, os.PathLike)) else as_scene(scene)
        if da.ndim != 3 or set(da.dims) != {"band", "y", "x"}:
            raise SceneError(f"expected a (band, y, x) scene; got dims {da.dims}")
        self.da = da = da.transpose("band", "y", "x")
        self.model = m = _model(model)
        self.meta = dict(getattr(m, "meta", None) or {})
        bands, height, width = (int(da.sizes[d]) for d in ("band", "y", "x"))
        check_scene(m.config, self.meta, bands=bands, height=height, width=width, wavelengths=_wavelengths(da),
                    dtype=da.dtype)
        self.mean, self.std = _normalisation(m)
        trained_stats = self.mean is not None
        model_bad = _model_bad_bands(self.meta, bands)
        if model_bad:
            # a band the model was trained with as bad is read as 0 (NaN here, 0 after normalising, as the
            # untested bands' non-finite values are), whatever the scene holds in it: training saw only 0 there
            # (a model without statistics too: (x - 0) / 1 is the scene as it is, to the bit)
            self.mean = np.zeros(bands) if self.mean is None else self.mean.copy()
            self.std = np.ones(bands) if self.std is None else self.std
            self.mean[model_bad] = np.nan
        if not trained_stats and da.dtype.kind in "ui":
            warnings.warn(f"the model has no per-band mean/std (model.json meta), so the scene is taken as already "
                          f"normalised, but it holds {da.dtype} values (raw counts or scaled reflectance): the map "
                          "will be meaningless. Use a model that records its normalisation (trained with "
                          "`hsi-engine train`, or `import-keras --dataset NAME`), or normalise the scene first",
                          UnnormalisedInputWarning, stacklevel=user_stacklevel())
        self.nodata = nodata if nodata is not None else _declared_nodata(da)
        if nodata is not None and da.dtype.kind in "uib" and math.isnan(float(nodata)):
            declared = _declared_nodata(da)
            warnings.warn(f"nodata=nan masks nothing in this {da.dtype} scene (integers hold no NaN)"
                          + (f" and replaces its declared nodata value {declared:g}: pass nodata=None to use it, or "
                             "the integer its fill pixels hold" if declared is not None else
                             ": pass the integer its fill pixels hold"), UserWarning, stacklevel=user_stacklevel())
        elif nodata is not None and math.isnan(float(nodata)):
            declared = _declared_nodata(da)
            if declared is not None and not math.isnan(declared):
                warnings.warn(f"nodata=nan replaces this scene's declared nodata value {declared:g}, so pixels "
                              f"holding {declared:g} are classified, not class 0. NaN is masked with the declared "
                              "value too: pass nodata=None (no --nodata) to mask both", UserWarning,
                              stacklevel=user_stacklevel())
        if self.nodata is not None:  # a numpy scalar compares as a strong type in numpy, as a Python float in
            self.nodata = float(self.nodata)  # torch: the CPU and CUDA masks differed
        self.nodata_bands = _tested_bands(da, model_bad, bands, trained_stats=trained_stats)
        _check_declared_scaling(da, self.meta, bands)
        if trained_stats:
            _check_scale(da, self.mean, self.std, self.nodata)
        elif da.dtype.kind == "f":  # integers were warned about above
            _check_scale(da, np.zeros(bands) if self.mean is None else self.mean,
                         np.ones(bands) if self.std is None else self.std, self.nodata, trained_stats=False)
        from .integrity import check_store

        check_store(da, nodata=self.nodata)  # zarr fills missing chunks silently: refuse them up front
        self.device = _device(device)
        self.tile = tile if tile is not None else default_tile(self.device.type, bands)
        chunks = (da.chunks[1], da.chunks[2]) if da.chunks is not None else None
        self.plan: TilePlan = plan_tiles(height, width, self.tile, m.config.halo, chunks=chunks)
        _warn_large_chunks(da, self.plan)
        self.precision = precision
        self.spatial_precision = spatial_precision
        self.backend = backend
        self.height, self.width, self.classes = height, width, m.config.classes
        if log.isEnabledFor(logging.DEBUG):
            log.debug("scene %s: %d bands x %d x %d px, %s, chunks %s; model: %d classes, halo %d, %s",
                      _scene_name(da), bands, height, width, da.dtype,
                      None if chunks is None else (da.chunks[1][0], da.chunks[2][0]), self.classes, m.config.halo,
                      "per-band normalisation" if trained_stats else "no normalisation (scene taken as is)")
            log.debug("nodata: %s, looked for in %s", self.nodata, "every band" if self.nodata_bands is None else
                      f"{len(self.nodata_bands)} of {bands} bands")

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
        from .runner import run_plan
        from .tiles import describe_plan

        log.debug("plan: %s", describe_plan(self.plan))
        return run_plan(self.da, self.plan, self.engine(), sink, mean=self.mean, std=self.std,
                        nodata=self.nodata, probabilities=probabilities, queue_depth=queue_depth,
                        readers=readers, progress=progress, cache_blocks=cache_blocks, decoders=decoders,
                        nodata_bands=self.nodata_bands)

    # meta's class_names and palette were checked against the classes by _model (lists, tuples or arrays)
    def class_names(self) -> list[str]:
        names = self.meta.get("class_names")
        if names is not None:
            return [str(n) for n in names]
        return [f"class {i}" for i in range(1, self.classes + 1)]

    def palette(self) -> list[list[int]] | None:
        pal = self.meta.get("palette")
        return None if pal is None else [[int(c) for c in rgb][:3] for rgb in pal]


def _spatial_coords(da: xr.DataArray) -> dict[str, Any]:
    """Coords of ``da`` that live on (a subset of) ``(y, x)``, plus the CRS's ``spatial_ref`` variable."""
    out = {}
    for name, c in da.coords.items():
        if set(c.dims) <= {"y", "x"} and name != "band":
            out[name] = c.load() if c.chunks is not None else c  # in memory: the scene file may be closed next
    return out


def _georeferenced(da: xr.DataArray) -> bool:
    try:
        return da.rio.crs is not None
    except Exception:  # noqa: BLE001
        return False


def scene_georef(da: xr.DataArray, scene_path: Any = None) -> tuple[Any, Any, Any]:
    """``(crs, transform, gcps)`` of a scene for its class map: the transform of a gridded scene, or the ground
    control points of one georeferenced by them (not orthorectified: no transform, no y/x coordinates, where
    ``rio.transform()`` reads the identity); with one warning when the scene has no CRS: then no CRS, and the
    transform its x/y coordinates give (None where they are pixel indices or absent)."""
    if not _georeferenced(da) and da.encoding.get("rpcs"):
        warnings.warn(f"scene {_scene_name(da, scene_path)} is placed by RPCs (rational polynomial coefficients, a "
                      "level-1 product), which hsi-engine's class maps do not carry: the map has no georeferencing. "
                      "Orthorectify the scene first (gdalwarp -rpc -t_srs EPSG:... scene.tif ortho.tif), or copy "
                      "the scene's RPCs onto the map, which lies on the scene's pixel grid (in rasterio: "
                      "dst.rpcs = src.rpcs)", stacklevel=user_stacklevel())
        return None, None, None
    if not _georeferenced(da):
        def pixel_indices(d: str) -> bool:
            v = np.asarray(da[d].values, np.float64) if d in da.coords and da[d].ndim == 1 else None
            return v is None or v.size < 2 or bool(np.allclose(v - np.floor(v[0]), np.arange(v.size) + v[0] % 1))

        try:
            stored = da.rio.transform()
        except Exception:  # noqa: BLE001 - no transform to read
            stored = None
        if stored is not None and (stored.b or stored.d):  # a rotated grid without a CRS: keep its placement
            warnings.warn(f"scene {_scene_name(da, scene_path)} has no CRS: the class map is placed by the "
                          "scene's rotated transform, with no CRS; set one with da.rio.write_crs(...) in Python, "
                          "or write it into the scene file (e.g. gdal_edit.py -a_srs EPSG:32633 for a GeoTIFF)",
                          stacklevel=user_stacklevel())
            return None, _grid_transform(da, scene_path), None
        by_pixels = pixel_indices("x") and pixel_indices("y")
        transform = None
        if not by_pixels and all(d in da.coords and da[d].ndim == 1 for d in ("x", "y")):
            transform = _grid_transform(da, scene_path)  # irregular coordinates are refused, as with a CRS
        placed = "written in pixel coordinates" if by_pixels else "placed by the scene's x/y coordinates, with no CRS"
        warnings.warn(f"scene {_scene_name(da, scene_path)} has no georeferencing (no CRS): the class map is "
                      f"{placed}; set one with da.rio.write_crs(...) in Python, or write it into "
                      "the scene file (e.g. gdal_edit.py -a_srs EPSG:32633 -a_ullr ... for a GeoTIFF)",
                      stacklevel=user_stacklevel())
        return None, transform, None
    gcps = scene_gcps(da)
    return (da.rio.crs, None, gcps) if gcps else (da.rio.crs, _grid_transform(da, scene_path), None)


def _scene_name(da: xr.DataArray, scene_path: Any = None) -> str:
    """The scene as messages name it: the path given, else the file it was opened from, else ``(in memory)``."""
    name = scene_path if isinstance(scene_path, (str, os.PathLike)) else da.encoding.get("source")
    return str(name) if name else "(in memory)"


def _longitude_wrap(da: xr.DataArray, d: str, steps: np.ndarray) -> str | None:
    """How a geographic scene's x coordinates wrap (one step of about -360 or +360 degrees among regular ones):
    ``"from 360 to 0"`` or ``"from 180 to -180"``; None otherwise."""
    if d != "x" or steps.size < 2:
        return None
    try:
        geographic = da.rio.crs is not None and da.rio.crs.is_geographic
    except Exception:  # noqa: BLE001 - no readable CRS
        geographic = False
    if not geographic:
        return None
    step = float(np.median(steps))
    jumps = np.flatnonzero(np.abs(steps - step) > 0.5 * abs(step))
    if jumps.size != 1 or abs(abs(steps[jumps[0]] - step) - 360) > 1:
        return None
    x = np.asarray(da["x"].values, np.float64)
    return "from 360 to 0 degrees" if x.max() > 180 else "from 180 to -180 degrees"


def _compose(t: Any, other: Any) -> Any:
    """``t @ other`` (a composed transform, or points): affine 3 warns on ``*``, which affine before 2.4 needs."""
    return t @ other if hasattr(type(t), "__matmul__") else t * other


def _window_of(stored: Any, t: Any, flips: bool = False) -> bool:
    """Whether ``t`` is the transform of a window of ``stored``'s grid taken with a positive step (its pixel
    centres on the grid's centres): what a strided ``isel`` leaves, rioxarray keeping the whole scene's
    GeoTransform. A flip (negative step) only with ``flips``: a GeoTransform left north-up on a flipped array of
    1-D coordinates is worth a word."""
    try:
        m = _compose(~stored, t)
    except Exception:  # noqa: BLE001 - a degenerate stored transform
        return False
    steps, shifts = (m.a, m.e), (m.c + m.a / 2 - 0.5, m.f + m.e / 2 - 0.5)  # map centre 0 -> source centre
    tol = 1e-6
    return (abs(m.b) < tol and abs(m.d) < tol
            and all((abs(s) if flips else s) >= 1 - tol and abs(s - round(s)) < tol for s in steps)
            and all(abs(v - round(v)) < 1e-3 for v in shifts))


def _rotated_from_centres(da: xr.DataArray, stored: Any, scene_path: Any = None) -> Any:
    """A rotated scene's transform from its 2-D pixel-centre coordinates ``xc`` / ``yc`` (``(y, x)``, as
    ``rioxarray.open_rasterio`` gives a rotated raster; ``isel`` moves them with the pixels); None without them.
    Along a dimension of one pixel the stored transform's step is kept."""
    from affine import Affine

    if not all(c in da.coords and da[c].dims == ("y", "x") for c in ("xc", "yc")):
        return None
    xc, yc = (np.asarray(da[c].values, np.float64) for c in ("xc", "yc"))
    a, d = (xc[0, 1] - xc[0, 0], yc[0, 1] - yc[0, 0]) if xc.shape[1] > 1 else (stored.a, stored.d)
    b, e = (xc[1, 0] - xc[0, 0], yc[1, 0] - yc[0, 0]) if xc.shape[0] > 1 else (stored.b, stored.e)
    t = Affine(a, b, xc[0, 0] - (a + b) / 2, d, e, yc[0, 0] - (d + e) / 2)
    rows, cols = np.mgrid[0:xc.shape[0], 0:xc.shape[1]] + 0.5
    px, py = _compose(t, (cols, rows))
    off = float(np.max(np.hypot(px - xc, py - yc))) if xc.size else 0.0
    if not np.isfinite(off) or off > 0.25 * math.hypot(a, d):
        raise IrregularGridError(f"scene {_scene_name(da, scene_path)} has a rotated grid and its pixels were "
                                 "selected irregularly (its xc / yc coordinates follow no one transform): only a "
                                 "regular window can be placed; select one with a slice, e.g. da.isel(x=slice(a, b))")
    if t.almost_equals(stored, precision=1e-6 * math.hypot(stored.a, stored.d)):
        return stored
    if _window_of(stored, t, flips=True):  # isel moved them with the pixels: a window, strided or flipped
        return t
    warnings.warn(f"scene {_scene_name(da, scene_path)}: its stored transform {tuple(stored)[:6]} disagrees with its "
                  f"xc / yc coordinates, which give {tuple(t)[:6]} and are no window of it (a transform written with "
                  "rio.write_transform after opening leaves them as they were): the map is placed by the stored "
                  "transform", stacklevel=user_stacklevel())
    return stored


def _transform_from_1d(da: xr.DataArray, stored: Any) -> Any:
    """The north-up transform of regular 1-D pixel-centre ``x`` / ``y``; along a dimension of one pixel the stored
    pixel size (a window one pixel wide of a strided selection kept the whole scene's, and its other step)."""
    from affine import Affine

    origin, step = {}, {}
    for d, stored_step in (("x", stored.a), ("y", stored.e)):
        v = np.asarray(da[d].values, np.float64)
        step[d] = (v[-1] - v[0]) / (v.size - 1) if v.size > 1 else stored_step
        origin[d] = v[0] - step[d] / 2
    return Affine(step["x"], 0.0, origin["x"], 0.0, step["y"], origin["y"])


def _stored_geotransform(da: xr.DataArray) -> bool:
    """Whether the scene stores a transform (its grid mapping's GeoTransform, or a ``transform`` attribute), as
    rioxarray reads one, rather than rioxarray working one out from the coordinates."""
    try:
        gm = da.rio.grid_mapping
    except Exception:  # noqa: BLE001 - no grid mapping to look in
        gm = None
    if gm is not None and gm in da.coords and da.coords[gm].attrs.get("GeoTransform"):
        return True
    return da.attrs.get("transform") is not None


def _grid_transform(da: xr.DataArray, scene_path: Any = None) -> Any:
    """The scene's transform: the stored one (rioxarray's ``GeoTransform``, which keeps a rotation), unless its
    x/y coordinates say otherwise: a NetCDF flipped with ``isel(y=slice(None, None, -1))`` kept its north-up
    GeoTransform while its y ran upwards, and the map was written flipped and a scene's height off the ground."""
    have_coords = (all(d in da.coords and da[d].ndim == 1 and da[d].size > 0 for d in ("x", "y"))
                   and max(da["x"].size, da["y"].size) > 1)  # one pixel wide (or tall) is placed by them too
    if have_coords:
        for d in ("x", "y"):
            if not np.all(np.isfinite(np.asarray(da[d].values, np.float64))):
                raise IrregularGridError(f"scene {_scene_name(da, scene_path)}: its {d} coordinates hold NaN or "
                                         "inf: no transform places its map; fix or drop them (e.g. "
                                         f"scene.assign_coords({d}=...))")
    stored = da.rio.transform()
    if stored.b or stored.d:  # rotated: no x/y coordinates; a window (isel) of it keeps source_row/source_col
        from affine import Affine

        from .io import SOURCE_COL, SOURCE_ROW, _source_step, unplaced_window

        if SOURCE_ROW not in da.coords and SOURCE_COL not in da.coords:
            centres = _rotated_from_centres(da, stored, scene_path)  # rioxarray's 2-D xc / yc, which isel moves
            if centres is not None:
                return centres
            unplaced_window(da, "a rotated transform")
        try:
            (r0, rs), (c0, cs) = _source_step(da, SOURCE_ROW, "y"), _source_step(da, SOURCE_COL, "x")
        except SceneError:
            raise IrregularGridError(f"scene {_scene_name(da, scene_path)} has a rotated grid and its pixels were "
                                     "selected irregularly: only a regular window can be placed; select one with "
                                     "a slice, e.g. da.isel(x=slice(a, b))") from None
        # map pixel k's centre on source pixel r0 + k * rs's centre (as the GCP and x/y paths place them)
        shift = Affine.translation(c0 + 0.5 - cs / 2, r0 + 0.5 - rs / 2)
        return _compose(stored, _compose(shift, Affine.scale(cs, rs)))
    if not have_coords:
        return stored  # no 1-D coordinates to check against
    for d in ("x", "y"):
        steps = np.diff(np.asarray(da[d].values, np.float64))
        if steps.size == 0:  # one pixel: its coordinate places it, at the stored pixel size
            continue
        mean = float(steps.mean())
        # refused where some pixel would land more than half a pixel off: float32 or rounded coordinates of a
        # regular grid step unevenly by their storage precision, but stay within a fraction of a pixel
        off = float(np.abs(np.cumsum(steps - mean)).max())
        wrap = _longitude_wrap(da, d, steps) if off > 0.5 * abs(mean) else None
        if wrap is not None:
            raise IrregularGridError(
                f"scene {_scene_name(da, scene_path)}: its longitudes wrap around ({wrap}), so its x coordinates "
                "are not evenly spaced and no transform can place its map: make them continuous first, e.g. "
                + ("scene.assign_coords(x=(scene.x + 180) % 360 - 180)" if "360" in wrap else
                   "scene.assign_coords(x=scene.x % 360)"))
        if off > 0.5 * abs(mean):
            raise IrregularGridError(
                f"scene {_scene_name(da, scene_path)}: its {d} coordinates are not evenly spaced (steps from "
                f"{steps.min():g} to {steps.max():g}; columns or rows dropped with isel?): a map on a regular grid "
                f"would put its pixels up to {off:.4g} (coordinate units) off; classify each evenly spaced part on "
                f"its own (e.g. scene.isel({d}=slice(0, k)))")
        v = np.asarray(da[d].values, np.float64)
        if np.ptp(v) == 0:  # all equal: a map of pixels without height (width); a fine grid's steps are not 0
            raise IrregularGridError(
                f"scene {_scene_name(da, scene_path)}: its {d} coordinates are all {v[0]:g}, so its pixels would "
                f"have no {'height' if d == 'y' else 'width'} and no transform can place its map; give each "
                f"{'row' if d == 'y' else 'column'} its own pixel-centre coordinate (e.g. "
                f"scene.assign_coords({d}=...)), or drop the {d} coordinates (scene.drop_vars('{d}')) to write the "
                "map by its stored transform")
    single = [d for d in ("x", "y") if da[d].size == 1]
    if single and not _stored_geotransform(da):
        # one pixel along an axis and no GeoTransform (a CF file from a non-GDAL tool, coordinates + write_crs):
        # rioxarray's stored transform is its fallback (pixel size 1): the map was 1 unit tall and south-up
        from affine import Affine

        other = "y" if single[0] == "x" else "x"
        v = np.asarray(da[other].values, np.float64)
        size = abs(v[-1] - v[0]) / (v.size - 1)
        warnings.warn(f"scene {_scene_name(da, scene_path)}: it is one pixel along {single[0]} and stores no "
                      f"GeoTransform, so its pixel size along {single[0]} is unknown: taken as its {other} pixel size "
                      f"({size:g}, square pixels); write its transform (scene.rio.write_transform(...)) to place it "
                      "exactly", stacklevel=user_stacklevel())
        return _transform_from_1d(da, Affine(size, 0.0, 0.0, 0.0, -size, 0.0))
    from_coords = _transform_from_1d(da, stored)
    if from_coords.almost_equals(stored, precision=1e-6 * max(abs(stored.a), abs(stored.e), 1e-12)):
        return stored
    if _window_of(stored, from_coords):  # isel(x=slice(a, b, k)): rioxarray kept the whole scene's transform
        return from_coords
    warnings.warn(f"scene {_scene_name(da, scene_path)}: its stored transform {tuple(stored)[:6]} disagrees with "
                  f"its x/y coordinates, which give {tuple(from_coords)[:6]} (a GeoTransform attribute left stale by "
                  "flipping or cutting the array?): the map is placed by the coordinates", stacklevel=user_stacklevel())
    return from_coords


# ----------------------------------------------------------------------------------------------
# public functions


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
    ``progress``: tqdm bar with pixels/s (default: when stderr is a terminal). ``readers``/``queue_depth``:
    reader threads and tiles prepared ahead (defaults in :func:`hsi_engine.runner.run_plan`).
    ``cache_blocks``: decoded blocks of a chunked scene kept for reuse by neighbouring tiles (default: what
    the tile plan needs on CUDA, none on CPU; :func:`hsi_engine.runner.run_plan` says why). ``decoders``:
    threads decoding the cached blocks of one tile's window concurrently (default: one per core on CUDA, none
    on CPU, where the compute needs the cores).

    Returns a DataArray ``(y, x)`` uint8 named ``class`` (0 = nodata, 1..K = classes) carrying the scene's
    y/x coords and CRS, with attrs ``class_names`` (label i is ``class_names[i-1]``), CF's ``flag_values`` /
    ``flag_meanings``, ``palette`` (when the model has one: R, G, B of class 1, then of class 2, ... as one flat
    list, so the map writes to NetCDF too) and ``_FillValue`` 0. With ``probabilities=True`` it returns an
    ``xr.Dataset`` instead with ``labels`` (that DataArray), ``probabilities`` ``(class, y, x)`` float32
    (softmax; NaN at nodata pixels) and ``confidence`` ``(y, x)`` float32 (the top probability);
    ``probabilities="float16"`` stores them in half precision, as ``classify_to_file`` does by default.
    """
    _import_whole()
    from .runner import ArraySink

    if not (isinstance(probabilities, (bool, np.bool_)) or probabilities in (None, "float32", "float16")):
        raise OptionError(f"probabilities must be a bool, 'float32' or 'float16'; got {probabilities!r}")
    half = probabilities == "float16"
    probabilities = bool(probabilities)
    job = _Job(scene, model, tile=tile, device=device, backend=backend, precision=precision, nodata=nodata,
               spatial_precision=spatial_precision)
    sink = ArraySink(job.height, job.width, job.classes, probabilities=probabilities)
    job.run(sink, probabilities=probabilities, progress=progress, queue_depth=queue_depth, readers=readers,
            cache_blocks=cache_blocks, decoders=decoders)
    from .io import SOURCE_COL, SOURCE_ROW
    from .writers import flag_meanings

    # (source_row/source_col place a window of a rotated or GCP scene: the map carries its own transform or GCPs)
    coords = {k: v for k, v in _spatial_coords(job.da).items() if k not in (SOURCE_ROW, SOURCE_COL)}
    attrs = {"class_names": job.class_names(), "_FillValue": 0, "long_name": "SSRN class (0 = nodata)",
             "flag_values": list(range(1, job.classes + 1)),
             "flag_meanings": flag_meanings(job.class_names())}
    if job.palette() is not None:  # flat: NetCDF attributes are 1-D
        attrs["palette"] = [v for rgb in job.palette() for v in rgb]
    labels = xr.DataArray(sink.labels, dims=("y", "x"), coords=coords, name="class", attrs=attrs)
    if _georeferenced(job.da):
        labels = labels.rio.write_crs(job.da.rio.crs)
        gcps = scene_gcps(job.da)
        if gcps:  # a scene placed by ground control points: so is its map (moved to the window classified)
            labels = with_window_gcps(labels, gcps, job.da.rio.crs)
        else:  # the scene's spatial_ref may hold a GeoTransform its coordinates contradict: the map's must not
            try:
                labels = labels.rio.write_transform(_grid_transform(job.da, scene))
            except IrregularGridError as e:  # the map keeps the scene's coordinates; a transform would lie
                warnings.warn(f"{e}. The map keeps the scene's coordinates, but no transform can place it "
                              "(rio.transform() and rio.to_raster would not)", stacklevel=user_stacklevel())
    if not probabilities:
        return labels
    cls = np.arange(1, job.classes + 1)
    ds = xr.Dataset({"labels": labels,
                     "probabilities": xr.DataArray(sink.probabilities.astype(np.float16) if half
                                                   else sink.probabilities, dims=("class", "y", "x"),
                                                   coords={**coords, "class": cls},
                                                   attrs={"long_name": "softmax probability"}),
                     "confidence": xr.DataArray(sink.confidence, dims=("y", "x"), coords=coords,
                                                attrs={"long_name": "top-class probability"})})
    ds.attrs["class_names"] = job.class_names()
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
    ``cache_blocks``, ``decoders`` and ``spatial_precision`` are as in :func:`classify`. ``on_written`` is called
    with the output's path as soon as it is complete, before the run's last clean-up (the command line stops
    taking interruptions then: a SIGTERM in those milliseconds reported a finished map as interrupted).
    """
    _import_whole()
    prob = "float16" if probabilities is True else (None if probabilities in (False, None) else probabilities)
    if prob not in (None, "float16", "float32"):  # before anything is opened, on either path
        raise OptionError(f"probabilities must be a bool, 'float16' or 'float32'; got {probabilities!r}")
    from .writers import check_output_suffix

    check_output_suffix(out)  # first: an empty or suffix-less path has no side files to check
    with _removes_directories_made(out):  # a failed run leaves no directory it made for the output either
        # zarr outputs always carry a per-tile completion record, so any interrupted run can be resumed
        zarr = os.fspath(out).rstrip("/").lower().endswith(".zarr")
        if workers is not None or scheduler is not None or resume or zarr:
            from . import cluster

            return cluster.classify_to_file(scene_path, model_path, out, tile=tile, device=device, backend=backend,
                                            precision=precision, probabilities=probabilities, overwrite=overwrite,
                                            nodata=nodata, workers=workers, scheduler=scheduler, resume=resume,
                                            progress=progress, queue_depth=queue_depth, readers=readers,
                                            cache_blocks=cache_blocks, decoders=decoders,
                                            spatial_precision=spatial_precision, on_written=on_written)
        from .lock import output_lock
        from .resume import check_no_partial, discard_partial, model_digest, provenance
        from .writers import check_not_scene, open_writer

        check_not_scene(out, scene_path)  # before anything is read: --out must never replace the scene itself

        scene = open_owned(scene_path) if isinstance(scene_path, (str, os.PathLike)) else scene_path
        job = _Job(scene, model_path, tile=tile, device=device, backend=backend, precision=precision, nodata=nodata,
                   spatial_precision=spatial_precision)
        da = job.da
        crs, transform, gcps = scene_georef(da, scene_path)
        ycoords = np.asarray(da["y"].values) if "y" in da.coords else None
        xcoords = np.asarray(da["x"].values) if "x" in da.coords else None
        # one live run per output (a resumable one may be writing <out>.partial)
        with output_lock(out, side_files=prob is not None):
            # an interrupted --resume run's store: finish or discard
            stale = check_no_partial(out, overwrite=overwrite)
            with warnings_ignored(UserWarning, "writing .* without georeferencing"):  # warned above, once
                writer = open_writer(out, height=job.height, width=job.width, n_classes=job.classes, crs=crs,
                                     transform=transform, y_coords=ycoords, x_coords=xcoords,
                                     class_names=job.class_names(), palette=job.palette(), probabilities=prob,
                                     confidence=prob is not None,
                                     overwrite=overwrite, gcps=gcps,
                                     tags=provenance(model_digest(job.model), precision, spatial_precision))
            t0 = time.perf_counter()
            try:
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
