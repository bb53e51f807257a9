"""The checks a scene passes before it is classified: its wavelengths against the model's, its declared nodata
and bad bands, its scale against the training scene's (magnitude, CF packing, GDAL scale/offset), its chunking
and dimensions. Each names the problem and the fix; the scale checks warn (the command line makes them errors)."""

from __future__ import annotations

import logging
import math
import sys
import numbers
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ssrn.normalise import declared_scaling

from .errors import SceneError, UnnormalisedInputWarning, user_stacklevel
from .cube import NODATA_ATTRS, band_runs
from .tiles import TilePlan

log = logging.getLogger(__name__)


def scene_wavelengths(da: xr.DataArray) -> np.ndarray | None:
    """The scene's band wavelengths in nm: its ``wavelength`` coordinate (in its ``units``), else a ``band``
    coordinate in a length unit or wavenumbers (its ``units``), else a float ``band`` coordinate that reads as
    wavelengths (all within 250-3000 nm, or 0.25-3 µm and not whole numbers; not necessarily monotonic: AVIRIS's
    spectrometers overlap), so that a reordered or mismatched band axis is caught either way; None when neither is
    there. A ``units`` of ``Index`` (ENVI's band numbers; ``Unknown`` over values 1..N) says the values are not
    wavelengths: None, as without them; a ``wavelength`` coordinate of strings is read as band names are
    ('460.0 nm') or as numbers ('460.0', in its ``units``)."""
    from .wavelengths import not_wavelengths, spectral_unit, to_nm, wavelengths_in_names

    if "wavelength" in da.coords and da.coords["wavelength"].dims == ("band",):
        wl = da.coords["wavelength"]
        units = wl.attrs.get("units")
        if not_wavelengths(str(units) if units is not None else None, wl.values if wl.dtype.kind in "iuf" else None):
            return None
        if wl.dtype.kind in "iufb":
            return to_nm(np.asarray(wl.values, np.float64), units)
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
        return to_nm(np.asarray(band.values, np.float64), units)  # a unit says what the numbers are
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
    from .wavelengths import to_nm, wavelengths_in_names

    names = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]
    found = wavelengths_in_names(names)
    if found is not None:
        return found
    try:
        return to_nm([float(v) for v in names], units)
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


def _one_value(v: Any) -> Any:
    """A one-element array attribute (HDF5 and some NetCDF writers store ``_FillValue = [-9999.]``), or one value
    repeated per band, as its value."""
    if np.ndim(v) == 0 or np.size(v) == 0 or isinstance(v, (str, bytes)):
        return v
    flat = np.asarray(v).reshape(-1)
    try:
        same = flat.size == 1 or bool(np.all(flat == flat[0]) or np.all(np.isnan(flat.astype(np.float64))))
    except (TypeError, ValueError):
        return v
    return flat[0] if same else v


def declared_nodata(da: xr.DataArray) -> float | None:
    declared = {}
    for k in ("_FillValue", "missing_value", "nodata"):
        try:
            declared[k] = float(_one_value(da.attrs[k])) if k in da.attrs else None
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
        return float(_one_value(v))
    except (TypeError, ValueError):
        if np.ndim(v) > 0 and np.size(v) > 1:
            raise SceneError(f"the scene declares {np.size(v)} nodata values, not all the same (its "
                             f"_FillValue/nodata attribute, {np.asarray(v).reshape(-1)[:3].tolist()}...), and one "
                             "value is masked in every band: pass nodata=VALUE (--nodata VALUE), the fill its "
                             "pixels hold") from None
        raise SceneError(f"the scene declares a nodata value ({v!r}, its _FillValue/nodata attribute) that is not a "
                         "number: fix the attribute, or pass nodata=VALUE (--nodata VALUE) to override it") from None


def nodata_bands(da: xr.DataArray) -> np.ndarray | None:
    """Indices of the bands the nodata value is looked for in: those a ``bbl`` band coordinate (ENVI's bad band
    list, 0 = bad) does not flag; None (every band) without one, or when it flags every band."""
    bbl = da.coords.get("bbl")
    if bbl is None or bbl.dims != ("band",):
        return None
    good = np.flatnonzero(np.asarray(bbl.values) != 0)
    return good if 0 < good.size < bbl.size else None


def model_bad_bands(meta: dict[str, Any], bands: int) -> list[int]:
    """The bands the model was trained with as bad (``meta["bad_bands"]``: its training scene's bbl, or bands
    without any data there), when they fit its band count."""
    bad = sorted({int(b) for b in meta.get("bad_bands") or ()})
    return bad if bad and set(bad) < set(range(bands)) else []


def tested_bands(da: xr.DataArray, model_bad: list[int], bands: int, trained_stats: bool = True
                  ) -> np.ndarray | None:
    """The bands nodata is looked for in: the scene's bbl good bands (every band without a bbl) less the bands
    the model was trained with as bad (which it reads as 0 whatever they hold); None: every band. Warns when
    the scene flags bands bad that a model with recorded training statistics (``trained_stats``) had data in."""
    good = nodata_bands(da)
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
    """At most ``side`` x ``side`` pixels at the scene's centre, inside one chunk (one chunk read), or across the
    chunks it spans where one holds under a quarter of that and they decode at most ``_CORNER_BYTES`` together (a
    store of 3 x 3-pixel chunks gave a sample of 9 pixels: too few to check its scale)."""
    window, spans = {}, {}
    for axis, dim in ((1, "y"), (2, "x")):
        n = int(da.sizes[dim])
        lo, hi = 0, n
        if da.chunks is not None:
            edges = np.cumsum((0,) + tuple(da.chunks[axis]))
            k = int(np.searchsorted(edges, n // 2, side="right")) - 1
            lo, hi = int(edges[k]), int(edges[k + 1])
            wide = max(0, min(n, n // 2 + side - side // 2) - side)  # the centred window, kept within the scene
            first = int(np.searchsorted(edges, wide, side="right")) - 1
            last = int(np.searchsorted(edges, min(n, wide + side), side="left"))
            spans[dim] = (lo, hi, wide, int(edges[last] - edges[first]))
        start = min(max(lo, n // 2 - side // 2), max(lo, hi - side))
        window[dim] = slice(start, min(hi, start + side))
    one_chunk = (window["y"].stop - window["y"].start) * (window["x"].stop - window["x"].start)
    whole = min(side, int(da.sizes["y"])) * min(side, int(da.sizes["x"]))
    if len(spans) == 2 and one_chunk < min(whole, side * side // 4):
        decoded = spans["y"][3] * spans["x"][3] * int(da.sizes["band"]) * np.dtype(da.dtype).itemsize
        if decoded <= _CORNER_BYTES:
            window = {d: slice(wide, min(int(da.sizes[d]), wide + side)) for d, (_, _, wide, _) in spans.items()}
    return window


def _packing(attrs: dict, bands: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``(scale, offset, unsigned)`` per band from CF packing attributes (``scale_factor``, ``add_offset``,
    ``_Unsigned``; one value or one per band, as rioxarray gives them: ``scales``/``offsets`` where they differ
    between bands); None when they pack nothing."""
    try:
        scale, offset = (np.broadcast_to(np.asarray(attrs.get(k, attrs.get(many, v)), np.float64).reshape(-1),
                                         (bands,))
                         for k, many, v in (("scale_factor", "scales", 1.0), ("add_offset", "offsets", 0.0)))
    except (TypeError, ValueError):
        return None
    unsigned = str(attrs.get("_Unsigned", "false")).lower() == "true"
    return None if (scale == 1).all() and (offset == 0).all() and not unsigned else (scale, offset, unsigned)


def _gdal_scaling(da: xr.DataArray, bands: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, offset)`` per band of a GDAL band scale/offset that :func:`~hsi_engine.open_scene` kept in the
    encoding (``scales``/``offsets``: GeoTIFF and ENVI values are read as stored); None without one, with scale 1 and
    offset 0 (GDAL's reading of none), or with a list that is not one finite number per band (a band subset keeps
    the file's)."""
    if "scales" not in da.encoding and "offsets" not in da.encoding:
        return None
    try:
        scale, offset = (np.broadcast_to(np.asarray(da.encoding.get(k, v), np.float64).reshape(-1), (bands,))
                         for k, v in (("scales", 1.0), ("offsets", 0.0)))
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(scale).all() and np.isfinite(offset).all()) or ((scale == 1).all() and (offset == 0).all()):
        return None
    return scale, offset


def _number(v: float) -> str:
    """``v`` as Python reads a float, every digit kept (``5000.0``, ``0.5``, ``-3.4028234663852886e+38``: ``:g``'s
    six digits had made float32's lowest, a common nodata, a value no pixel holds): an int16 scene plus ``5000.0``
    stays exact."""
    return repr(float(v))


def _decoding(scale: np.ndarray, offset: np.ndarray, nodata: float | None) -> str:
    """The Python expression that decodes ``scene = hsi_engine.open_scene(path)`` with ``scale``/``offset`` (per
    band: the lists its encoding keeps), its nodata pixels first made NaN (masked whatever the declared value) and
    its attributes (the nodata value) put back: xarray before 2025.11 drops them in arithmetic. Coordinates (the
    CRS, wavelengths, bbl) go along in any version."""
    masked = nodata is not None and not np.isnan(nodata)
    x = f"scene.where(scene != {_number(nodata)})" if masked else "scene"
    if not (np.all(scale == scale[0]) and np.all(offset == offset[0])):
        s, o = (f"xr.DataArray(list(scene.encoding[{k!r}]), dims='band')" for k in ("scales", "offsets"))
        expr = f"{x} * {s} + {o}"
    else:
        s, o = float(scale[0]), float(offset[0])
        expr = (x + (f" * {_number(s)}" if s != 1 else "") + (f" + {_number(o)}" if o > 0 else "")
                + (f" - {_number(-o)}" if o < 0 else ""))
    return f"({expr}).assign_attrs(scene.attrs)" if masked else expr


# where an HDF5 scene's band scale/offset (kept in its encoding, as GDAL's are) comes from (hsi_engine.products)
_HDF5_SCALING = ("the product's root attributes L2Scale*Min / L2Scale*Max, PRISMA L2's scaling: reflectance = Min + "
                 "DN x (Max - Min) / 65535")


def _check_packing(da: xr.DataArray, raw: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   nodata: float | None) -> bool:
    """Warn when the scene carries a packing it was not decoded with and its decoded values fit the model's
    training data far better than the stored values the engine reads: the map was silently another. Either CF
    packing on an integer scene handed over in memory (``xr.open_dataset(..., mask_and_scale=False)``,
    ``rioxarray.open_rasterio``), or a GDAL band scale/offset of a GeoTIFF or ENVI file opened by its path (kept in
    the encoding, values read as stored: a file storing 2x the data with scale 0.5, or the data - 5000 with offset
    5000, read only as 'about 2.1x larger' or 22 standard deviations off), or an HDF5 product's own scaling kept
    the same way (PRISMA's L2Scale*: its fix is Python's decoding, not gdal_translate). Packing that is only a note
    (a GeoTIFF's reflectance scale on counts a model was trained on) fits worse, and says nothing. ``mean``'s
    non-finite bands (the model's and the scene's bad bands) are left out. Returns whether it warned."""
    bands = raw.shape[0]
    packing = _packing(da.attrs, bands) if raw.dtype.kind in "ui" and "unpacked" not in da.attrs else None
    gdal = _gdal_scaling(da, bands) if packing is None and raw.dtype.kind in "uif" else None
    if packing is None and gdal is None:
        return False
    scale, offset, unsigned = packing if packing is not None else (*gdal, False)
    used = np.isfinite(mean)
    if not used.any():
        return False
    part = raw[used]
    as_stored = part.astype(np.float64)
    stored = as_stored
    if unsigned and raw.dtype.kind == "i":
        stored = part.view(raw.dtype.str.replace("i", "u")).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(as_stored).all(axis=0)
        if nodata is not None:
            ok &= ~(part == nodata).any(axis=0)
    if ok.sum() < 16:
        return False
    decoded = stored * scale[used, None, None] + offset[used, None, None]

    def off(x: np.ndarray) -> float:  # the median band's sample mean from the model's, in its standard deviations
        return float(np.median(np.abs(x[:, ok].mean(axis=1) - mean[used]) / std[used]))

    as_read, as_decoded = off(as_stored), off(decoded)
    if not (as_read > 3 and as_decoded * 3 < as_read):
        return False
    found = (f"{as_read:,.0f} standard deviations off the model's training data in the median band, against "
             f"{as_decoded:,.1f} for the decoded values (a {raw.shape[1]} x {raw.shape[2]}-pixel sample)")
    by_gdal = gdal is not None or "rasterio_dtype" in da.encoding  # a GeoTIFF's or ENVI file's (GDAL's) scales
    src = da.encoding.get("source")
    translate = (f"gdal_translate -unscale -ot Float32 {shlex.quote(src if isinstance(src, str) else 'scene.tif')} "
                 "decoded.tif")
    if gdal is not None and da.attrs.get("source_format") == "hdf5":  # a product's own scaling (PRISMA's L2Scale*),
        # kept as GDAL's band scales are: gdal_translate does not read it, Python decodes it
        expr = _decoding(scale, offset, nodata)
        warnings.warn(f"the scene declares band {_scaling_text(scale, offset)} ({_HDF5_SCALING}), which hsi-engine "
                      f"does not apply (the product's values are read as stored), and its stored {raw.dtype} values "
                      f"lie {found}: the product packs its data with them, and the map of the stored values would be "
                      "meaningless. Decode the scene first, in Python: with scene = hsi_engine.open_scene(path, "
                      f"variable=...) as opened now, hsi_engine.classify({expr}, model) (its CRS and wavelengths go "
                      "along); for the command line, write the decoded scene to a store first "
                      f"(({expr}).to_dataset(name='cube').to_zarr('decoded.zarr')) and classify that",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return True
    if gdal is not None:
        envi = (" (the ENVI header's 'data gain values' / 'data offset values')"
                if da.attrs.get("source_format") == "envi" else "")
        expr = _decoding(scale, offset, nodata)
        warnings.warn(f"the scene declares band {_scaling_text(scale, offset)}{envi}, GDAL metadata that hsi-engine "
                      f"does not apply (GeoTIFF and ENVI values are read as stored), and its stored {raw.dtype} "
                      f"values lie {found}: the file packs its data with them, and the map of the stored values "
                      "would be meaningless. Decode the scene first: in Python, scene = hsi_engine.open_scene(path); "
                      f"hsi_engine.classify({expr}, model) (its CRS and wavelengths go along), or on the command "
                      f"line write a decoded copy ({translate}) and classify that",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return True
    given = ", ".join(f"{k}={da.attrs[k]}" for k in ("scale_factor", "add_offset", "_Unsigned") if k in da.attrs)
    if "scales" in da.attrs or "offsets" in da.attrs:  # rioxarray's, where they differ between bands
        given = _scaling_text(scale, offset)
    if by_gdal:  # open_scene reads a GeoTIFF's or ENVI file's values as stored: it is no fix here
        fix = ("scene = hsi_engine.open_scene(path), which keeps the band wavelengths but reads the values as "
               f"stored, then hsi_engine.classify({_decoding(scale, offset, nodata)}, model); or "
               f"rioxarray.open_rasterio(path, mask_and_scale=True); on the command line, a decoded copy: {translate}")
    else:
        fix = "xr.decode_cf(ds), or open the file with hsi_engine.open_scene or xr.open_dataset's defaults"
    warnings.warn(f"the scene carries CF packing ({given}) that was not applied: the engine reads its stored "
                  f"{raw.dtype} values, {found}. Decode it first ({fix})",
                  UnnormalisedInputWarning, stacklevel=user_stacklevel())
    return True


def _read(da: xr.DataArray, window: dict[str, slice]) -> np.ndarray:
    """A window of the scene as numpy, read synchronously: under a client a read through the cluster waits for its
    (maybe paused) workers."""
    part = da.isel(window).data
    from dask.local import get_sync  # (the name "synchronous" imports distributed, whose logging config a service
                                     # then has: its tornado logger set to CRITICAL)
    return np.asarray(part.compute(scheduler=get_sync) if hasattr(part, "dask") else part)


_CORNER_BYTES = 64 << 20  # at most this much decoded per corner (a band-chunked store decodes whole bands)


def _corners(da: xr.DataArray, side: int = 8) -> list[np.ndarray]:
    """The scene's four ``side`` x ``side`` corners (one chunk each), where a window read past the scene's edge
    (rasterio's ``boundless=True``, ``gdal_translate -srcwin``) or a swath's edge holds its fill; none that
    cannot be read."""
    h, w = int(da.sizes["y"]), int(da.sizes["x"])
    if h < 48 or w < 48:
        return []  # (the centre's sample reaches the corners' rows or columns)
    if da.chunks is not None:  # each corner decodes its chunks in every band: skip where that costs a scene's read
        itemsize = np.dtype(da.dtype).itemsize
        for ys in (0, -1):
            for xs in (0, -1):
                if int(da.chunks[1][ys]) * int(da.chunks[2][xs]) * int(da.sizes["band"]) * itemsize > _CORNER_BYTES:
                    return []
    out = []
    for ys in (slice(0, min(side, h)), slice(max(0, h - side), h)):
        for xs in (slice(0, min(side, w)), slice(max(0, w - side), w)):
            try:
                out.append(_read(da, {"y": ys, "x": xs}))
            except Exception as e:  # noqa: BLE001 - a sanity check: the run reports an unreadable scene itself
                _reraise_the_programs(e)
                log.debug("fill check: a corner could not be read (%s)", e)
                return out
    return out


def _reraise_the_programs(e: Exception) -> None:
    """The checks' reads skip what the run reports itself (an unreadable scene), never a timeout the program
    raised from a signal handler: swallowed, the call ran on past its deadline with its scale check skipped."""
    from .outputs import raised_by_program

    if raised_by_program(e):
        raise e


def _warn_fill(da: xr.DataArray, raw: np.ndarray, nodata: float | None,
               corners: list[np.ndarray] | None = None) -> None:
    """Warn when pixels of the scale check's sample or of the scene's corners hold one value in every band that is
    not the scene's nodata (a mosaic's gaps after ``rio merge``, a swath's edge, a window read past the scene's
    edge, -32768 in a crop handed over as an array): they are classified as land cover, and the pixels near them
    read the fill in their window. Samples only: a fill elsewhere goes unseen."""
    if raw.ndim != 3 or raw.shape[0] < 2:
        return
    found: dict[float, int] = {}
    looked = 0
    for part in [raw, *(_corners(da) if corners is None else corners)]:
        flat = part.reshape(part.shape[0], -1)
        looked += flat.shape[1]
        with np.errstate(invalid="ignore"):
            same = (flat == flat[:1]).all(axis=0) & np.isfinite(flat[0].astype(np.float64))
        for v, n in zip(*np.unique(flat[0][same], return_counts=True)):
            if nodata is None or v != nodata:
                found[float(v)] = found.get(float(v), 0) + int(n)
    if not found or max(found.values()) < 4:
        return
    value = max(found, key=found.get)
    v = f"{value:g}"
    declared = "the scene declares no nodata value" if nodata is None else f"the scene's nodata is {nodata:g}"
    warnings.warn(f"{found[value]} of {looked} pixels sampled (the scene's centre and corners) hold {v} in every band, "
                  f"and {declared}: such pixels (a mosaic's gaps, a swath's edge, a window read past the scene's edge) "
                  f"are classified as land cover, and the pixels near them with the fill in their window. Pass "
                  f"nodata={v} (--nodata {v}) to make them class 0, or declare the fill as the scene's nodata",
                  UserWarning, stacklevel=user_stacklevel())


_UNIFORM_SPREAD = 4.0  # the 90th over the 10th percentile band's ratio: a window's spectral shape kept
_UNIFORM_GAIN = 0.6  # how much nearer the training data a power of ten must bring a sample to be read as its cause


def _warn_uniform_power(raw: np.ndarray, ratios: np.ndarray, mean: np.ndarray, std: np.ndarray,
                        nodata: float | None, distance: float, pixels: str) -> None:
    """Warn when a sample under the distance limit is the training data's spectral shape off by a power of ten:
    where the training scene's bands spread widely (EnMAP over a city), x 0.1 cannot read 4 standard deviations
    (an all-dark sample reads only ``median(mean / std)``, 1.6 there), so reflectance x 1000 against a model of
    x 10000 gave a one-class map without a word. Windows of EnMAP tiles x 0.1 keep their ratios within 3.4x of
    each other and come 0.27-0.78 from the training data once x 10 (1.4 as given); open water (ratios 0 in the
    infrared) and a window only darker (x 0.3, a shadow) do not. A warning, not an error on the command line:
    a window that is dark by nature could read this way."""
    from ssrn.normalise import scale_distance, scale_factor

    k = scale_factor(raw, mean, std, nodata)
    if k is None or k <= 0:
        return
    power = 10.0 ** round(math.log10(k))
    lo, hi = np.quantile(ratios, [0.1, 0.9])
    if power == 1 or hi > _UNIFORM_SPREAD * lo or abs(math.log10(k / power)) > 0.2:  # (x 3.5 is no 10x)
        return
    rescaled = scale_distance(raw, mean, std, nodata, factor=1 / power)
    if rescaled is None or rescaled >= min(_UNIFORM_GAIN * distance, 2.0):
        return
    word, fold = ("smaller", 1 / power) if power < 1 else ("larger", power)
    fix = f"scene * {1 / power:g}" if power < 1 else f"scene / {power:g}"
    warnings.warn(f"the scene's values look about {fold:g}x {word} than the training scene's, in nearly every band by "
                  f"about the same factor ({pixels}: per-band ratios {lo:.2g}-{hi:.2g} of the training magnitude, a "
                  f"median {distance:.1f} standard deviations from the model's per-band means as given, {rescaled:.1f} "
                  f"once {'multiplied' if power < 1 else 'divided'} by {fold:g}): a scene on another scale "
                  f"(reflectance x 1000 against x 10000) gives a meaningless map, often one class. Rescale it ({fix}) "
                  "or use a model trained on its scale; if the scene's centre is dark by nature (a shadow), check the "
                  "map",
                  UnnormalisedInputWarning, stacklevel=user_stacklevel())


def _warn_swapped(da: xr.DataArray, raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                  distance: float | None, pixels: str) -> bool:
    """Warn (and say so) where the sample read with its bytes in the other order lies near the training data: an
    ENVI header's wrong 'byte order' (or a raw file's) gave a meaningless map under a warning of its distance."""
    from ssrn.normalise import scale_distance

    if raw.dtype.itemsize < 2 or raw.dtype.kind not in "iuf":
        return False
    with np.errstate(all="ignore"):
        swapped = scale_distance(raw.byteswap(), mean, std, nodata, min_pixels=None if distance is not None else 1)
    if swapped is None or swapped >= 2.0:
        return False
    order = {"<": "little-endian", ">": "big-endian", "=": sys.byteorder + "-endian"}
    # the order the file was read in (an ENVI header's, as GDAL reads it), not numpy's for the array GDAL returned
    as_read = da.attrs.get("byte_order") or order.get(raw.dtype.byteorder, order["="])
    warnings.warn(f"the scene's values look byte-swapped ({pixels}): read with each value's bytes in the other "
                  f"order they lie a median {swapped:.1f} standard deviations from the model's training means"
                  + (f" ({distance:,.0f} as read)" if distance is not None else "") + f"; they were read "
                  f"{as_read}. Fix the byte order the file declares (an ENVI header's 'byte order = 0' is "
                  "little-endian, 1 big-endian), or swap the values (scene.copy(data=scene.values.byteswap()))",
                  UnnormalisedInputWarning, stacklevel=user_stacklevel())
    return True


def check_scale(da: xr.DataArray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 trained_stats: bool = True) -> None:
    """Warn (``UnnormalisedInputWarning``, an error on the command line) when a sample of the scene is not on the
    training scene's scale: ``_SCALE_OFF`` times or more off its magnitude in nearly every band (its 10th-90th
    percentile band; reflectance 0-1 against a model trained on integers x 10000), or a median ``_SCALE_Z`` or
    more training standard deviations from the training means (reflectance x 1000 against x 10000, or a scene 2x
    off: the shipped model's map is one class at 1.5x). Both on medians, so a corrupt pixel in the sample does
    not read as a scale (the run names it). The message names a power of ten where one explains the distance,
    says so where the scene looks already standardised, and otherwise gives the distance. Under the distance limit,
    a sample off by a power of ten in the training data's spectral shape is named too (:func:`_warn_uniform_power`).
    ``trained_stats=False``: the model has no mean/std and takes the scene as normalised (``mean`` 0, ``std`` 1:
    values of about 1), and a float scene of raw values gave a one-class map without a word; only the factor of
    30 is checked then (no training distribution to measure a distance in). The bands the scene's ``bbl`` flags bad
    are left out of the sample, as they are of the nodata mask (:func:`nodata_bands`)."""
    from ssrn.normalise import looks_standardised, scale_distance, scale_factor, scale_ratios

    good = nodata_bands(da)
    if good is not None:  # the bands the scene's bbl flags bad are left out of the sample, as the nodata mask leaves
        # them out: EnMAP-style bad bands holding nodata in every pixel left no pixel to sample, and reflectance 0-1
        # against a model of x 10000 went unnamed (a NaN mean: a band the sample does not read)
        mean = mean.astype(np.float64, copy=True)
        mean[np.setdiff1d(np.arange(mean.shape[0]), good)] = np.nan
    if not np.isfinite(mean).any():
        return  # (every band bad, the scene's or the model's: nothing to sample)
    window = _sample_window(da)
    try:
        raw = _read(da, window)
    except Exception as e:  # noqa: BLE001 - a sanity check: the run reports an unreadable scene itself
        _reraise_the_programs(e)
        log.debug("scale check skipped: the sample could not be read (%s)", e)
        return
    corners = _corners(da)
    _warn_fill(da, raw, nodata, corners)
    if trained_stats and _check_packing(da, raw, mean, std, nodata):
        return  # its fix is to decode the scene: a factor named beside it would mislead
    pixels = f"a {raw.shape[1]} x {raw.shape[2]}-pixel sample"
    few: int | None = None  # the fewest pixels the sample may hold: the default (16 and a quarter) unless small
    ratios = scale_ratios(raw, mean, std, nodata)
    if ratios is None and corners:  # its centre masked (a cloud, a lake, a mosaic's gap): its corners
        raw = np.concatenate([c.reshape(c.shape[0], 1, -1) for c in corners], axis=2)
        pixels = f"the scene's four corners, {raw.shape[2]} pixels (the sample at its centre held too few with data)"
        ratios = scale_ratios(raw, mean, std, nodata)
    h, w = int(da.sizes["y"]), int(da.sizes["x"])
    if ratios is None and raw.shape[1:] != (h, w) and h * w <= 64 * 64:  # a small scene (33-47 px: no corners
        try:                                                                # read) whose centre is masked: all of it
            raw = _read(da, {"y": slice(0, h), "x": slice(0, w)})
            pixels = f"all {h * w} pixels of a small scene"
            ratios = scale_ratios(raw, mean, std, nodata)
        except Exception as e:  # noqa: BLE001 - a sanity check: the run reports an unreadable scene itself
            _reraise_the_programs(e)
            log.debug("scale check: the small scene could not be read whole (%s)", e)
    if ratios is None and raw.shape[1:] == (h, w):  # a small scene, sampled whole: the
        few = 1  # factor of 30 in nearly every band is plain on one pixel's spectrum; no distance on so few
        pixels = f"all {raw.shape[1] * raw.shape[2]} pixels of a small scene"
        ratios = scale_ratios(raw, mean, std, nodata, few)
    if ratios is None:
        warnings.warn(f"the scene's scale was not checked: the pixels sampled ({pixels}) hold too few with data "
                      "(finite, not nodata, not one value in every band), so a scene on another scale "
                      "than the model's training scene (reflectance 0-1 against integers x 10000) would go unnamed: "
                      "check that the map is not one class", UserWarning, stacklevel=user_stacklevel())
        return
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if ratios.size == 0:
        return
    lo, mid, hi = np.quantile(ratios, [0.1, 0.5, 0.9])
    off_scale = not (_SCALE_OFF * hi >= 1 and lo <= _SCALE_OFF)
    distance = scale_distance(raw, mean, std, nodata) if trained_stats and few is None else None
    if not off_scale and (distance is None or distance < _SCALE_Z):
        if distance is not None:
            _warn_uniform_power(raw, ratios, mean, std, nodata, distance, pixels)
        return
    if trained_stats and _warn_swapped(da, raw, mean, std, nodata, distance, pixels):
        return
    if not trained_stats:
        factor = 1 / mid if hi < 1 else mid
        warnings.warn(f"the model has no per-band mean/std (model.json meta), so the scene is taken as already "
                      f"normalised (values of about 1 in every band), but its values are about {factor:,.0f}x "
                      f"{'smaller' if hi < 1 else 'larger'} in nearly every band ({pixels}): the map will be "
                      "meaningless. Use a model that records its normalisation (trained with `hsi-engine train`, or "
                      "`import-keras --dataset NAME`), or normalise the scene first",
                      UnnormalisedInputWarning, stacklevel=user_stacklevel())
        return
    if looks_standardised(raw, mean, std, nodata, few):
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
    k = scale_factor(raw, mean, std, nodata, few)
    if k is None or k <= 0:  # no band with a positive training mean: the magnitudes' ratio
        k = float(mid)
    applied = _one_value(da.encoding.get("scale_factor", 1.0))
    if isinstance(applied, numbers.Real) and applied != 1 and (applied < 1) == (k < 1):
        also += (f"; it was opened with the file's scale_factor {float(applied):g} applied (xarray's or rioxarray's "
                 "mask_and_scale): a model trained on the stored values takes hsi_engine.open_scene(path), which "
                 "reads them as stored")
    power = 10.0 ** round(math.log10(k))
    explained = power != 1 and (scale_distance(raw, mean, std, nodata, factor=1 / power, min_pixels=few)
                                or 0.0) < _SCALE_Z
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
            if (scale_distance(raw, mean, std, nodata, factor=1 / k, min_pixels=few) or 0.0) < _SCALE_Z else "")
    warnings.warn(f"the scene's values lie a median {distance:,.1f} standard deviations from the model's per-band "
                  f"training means ({pixels}; windows of the training scene lie about 1 from them){like}: the "
                  "scene is not on the training scene's scale or in its units (reflectance x 1000 against x 10000, "
                  "radiance against reflectance), or not from its sensor, and the map would be meaningless. "
                  "Rescale it to the training scene's units, or use a model trained on data like it" + also,
                  UnnormalisedInputWarning, stacklevel=user_stacklevel())


def _scaling_text(scales: np.ndarray, offsets: np.ndarray) -> str:
    def one(v: np.ndarray) -> str:
        return f"{v[0]:g}" if np.all(v == v[0]) else f"{v.min():g}..{v.max():g} (per band)"
    return f"scale {one(scales)}, offset {one(offsets)}"


def check_declared_scaling(da: xr.DataArray, meta: dict, bands: int) -> None:
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
            where = _HDF5_SCALING if da.attrs.get("source_format") == "hdf5" else "GDAL metadata"
            warnings.warn(f"the scene declares band {_scaling_text(scales, offsets)} ({where}), which the "
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
RECHUNK_SIDE = 256  # the pixels a side of the chunks the rechunk recipe writes (all bands in each)


def _file_axes(da: xr.DataArray, src: str, fmt: str) -> dict[str, str] | None:
    """``{axis: the file's dim}`` of the variable ``da`` was read from (a NetCDF's or xarray zarr store's, named by
    ``da.name``): open_scene renamed them to band/y/x, and a recipe in those names failed on the file ('chunks keys
    not found'). A zarr store's are its encoding's ``preferred_chunks`` keys; a NetCDF's are read from its header.
    None where they cannot be told (a variable in a group, a GDAL band stack, a zarr array without xarray's dims)."""
    from ssrn.dims import canonical_dim

    dims = list(da.encoding.get("preferred_chunks") or ())
    if not dims and fmt == "netcdf" and da.name is not None:
        try:
            with xr.open_dataset(src, decode_cf=False, decode_times=False) as ds:  # (the header only)
                dims = list(ds[da.name].dims) if da.name in ds.variables else []
        except Exception:  # noqa: BLE001 - unreadable now: the generic recipe
            return None
    axes: dict[str, str] = {}
    for d in dims:
        axis = canonical_dim(d)
        if axis is None or axis in axes:
            return None
        axes[axis] = str(d)
    return axes if set(axes) == {"band", "y", "x"} else None


def rechunk_recipe(da: xr.DataArray) -> str:
    """Python that writes the scene's file again in chunks of all bands x :data:`RECHUNK_SIDE` pixels a side, beside
    it, by its source format (``attrs['source_format']``): a NetCDF or zarr variable through xarray in the file's
    own dim names, a GeoTIFF as a tiled GeoTIFF (GDAL's CreateCopy: its tags, scales and nodata kept), any other
    file through :func:`~hsi_engine.open_scene`; for a scene that is not its file unchanged, where to chunk it."""
    from .io import file_of

    src, fmt, side = file_of(da), da.attrs.get("source_format"), RECHUNK_SIDE
    if src is None:
        return (f"open it in chunks of all bands x about {side} x {side} pixels where it is read (e.g. "
                f"xr.open_dataset(path, chunks={{'band': -1, 'y': {side}, 'x': {side}}}) with the file's own dim "
                "names: rechunking a "
                "one-chunk array afterwards still decodes the whole chunk), or pass the file's path, or load the "
                "scene into memory first (scene = scene.load()) where it fits")
    stem = Path(src.rstrip("/\\"))
    axes = _file_axes(da, src, fmt) if fmt in ("netcdf", "zarr") else None
    if axes is not None:
        new = str(stem.with_name(stem.stem + ".rechunked.zarr"))
        chunks = "{" + ", ".join(f"{axes[a]!r}: {-1 if a == 'band' else side}" for a in ("band", "y", "x")) + "}"
        opened = (f"xr.open_dataset({src!r}, mask_and_scale=False)" if fmt == "netcdf" else
                  f"xr.open_zarr({src!r}, mask_and_scale=False)")  # (values as stored: the engine decodes them)
        return (f"rewrite it in chunks of all bands x {side} x {side} pixels, in Python: import xarray as xr; "
                f"{opened}.drop_encoding().chunk({chunks}).to_zarr({new!r}), and classify {new}")
    if fmt == "geotiff":
        new = str(stem.with_name(stem.stem + ".tiled.tif"))
        return (f"rewrite it as a GeoTIFF of {side} x {side}-pixel tiles, in Python: import rasterio.shutil; "
                f"rasterio.shutil.copy({src!r}, {new!r}, driver='GTiff', tiled=True, blockxsize={side}, "
                f"blockysize={side}, BIGTIFF='IF_SAFER'), and classify {new} (on the command line: gdal_translate -co "
                f"TILED=YES -co BLOCKXSIZE={side} -co BLOCKYSIZE={side} {shlex.quote(src)} {shlex.quote(new)})")
    new = str(stem.with_name(stem.stem + ".rechunked.zarr"))
    return (f"rewrite it as a zarr store in chunks of all bands x {side} x {side} pixels (open_scene given the "
            "variable= / band_axis= it was opened with, if any), in Python: import hsi_engine; "
            f"hsi_engine.open_scene({src!r}).drop_encoding().chunk({{'band': -1, 'y': {side}, 'x': {side}}})"
            f".to_dataset(name='cube').to_zarr({new!r}), and classify {new}")


def warn_large_chunks(da: xr.DataArray, plan: TilePlan) -> None:
    """Warn where the scene's chunks dwarf a tile's window: every tile decodes the whole chunks it touches, so a
    store written as one chunk (``to_zarr`` of a contiguous NetCDF opened with ``chunks={}``) costs its whole size
    per reader, and is decoded again for every tile in it (a 172 KB single-chunk store took 3.6 GB and hours). The
    fix names a recipe for the scene's own file (:func:`rechunk_recipe`)."""
    if da.chunks is None:
        return
    itemsize = np.dtype(da.dtype).itemsize
    chunk = max(da.chunks[0]) * max(da.chunks[1]) * max(da.chunks[2]) * itemsize
    # a tile reads every band: a chunk of few bands (a band-sequential store, xr.concat of 2-D bands) is small
    # itself, yet a tile decodes the whole planes of all of them (one of 4000 x 4000 pixels: 12 GiB per tile)
    per_tile = da.sizes["band"] * max(da.chunks[1]) * max(da.chunks[2]) * itemsize
    th, tw = plan.tile
    window = da.sizes["band"] * math.prod(plan.max_read_shape) * itemsize
    if per_tile > max(LARGE_CHUNK_BYTES, 16 * window):
        bands = (f"; a tile's {da.sizes['band']} bands span {len(da.chunks[0])} chunks, "
                 f"{per_tile / 2**20:,.0f} MiB decoded per tile" if per_tile > chunk else "")
        warnings.warn(f"the scene's chunks are {max(da.chunks[1])} x {max(da.chunks[2])} pixels of "
                      f"{max(da.chunks[0])} bands ({chunk / 2**20:,.0f} MiB decoded each{bands}) against tiles of "
                      f"{th} x {tw}: "
                      "every tile decodes the whole chunks it touches, so memory grows by about that much per "
                      "reader thread and each chunk is decoded again for every tile in it. Fix: "
                      f"{rechunk_recipe(da)} (chunks asked of a store that has larger ones, open_scene's chunks= "
                      "among them, still decode whole ones); or keep them decoded once with cache_blocks=1 "
                      "(--cache-blocks 1), at that memory", UserWarning,
                      stacklevel=user_stacklevel())


def check_array_dims(scene: Any) -> None:
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


def warn_other_pixel_size(da: xr.DataArray, meta: dict[str, Any], where: str) -> None:
    """Log a warning where the scene's pixels are not the training scene's size (``meta["grid"]``): the model's
    patch then covers other ground (a scene warped to 10 m against a 30 m model: 70 m where training saw 210 m),
    and the map is silently of another network's worth; or where their CRSs' units cannot be compared. A scene placed
    by ground control points (no geotransform: ``rio.transform()`` reads the identity, pixels of 1 x 1) is measured
    by the affine transform that fits its GCPs best; one placed otherwise without a geotransform (RPCs only) is not
    compared."""
    from .georef import scene_crs

    grid = meta.get("grid") or {}
    if not grid.get("crs") or not grid.get("transform"):
        return
    crs = scene_crs(da, None if where == "the scene" else where)  # unreadable: SceneError naming the fix, not pyproj's
    if crs is None:
        return
    by_gcps = ""
    try:
        from rasterio.crs import CRS
        from rasterio.transform import from_gcps

        from .georef import scene_gcps

        ours, theirs = CRS.from_user_input(crs), CRS.from_user_input(grid["crs"])
        t = grid["transform"]
        size = (math.hypot(t[0], t[3]), math.hypot(t[1], t[4]))
        s = da.rio.transform()
        if "x" not in da.coords and "y" not in da.coords:  # no 1-D grid: GCPs (in this window's pixels), a
            gcps = scene_gcps(da)  # rotated transform (2-D xc/yc), or no geotransform (the identity: RPCs only)
            if gcps and len(gcps) >= 3:
                s, by_gcps = from_gcps(gcps), " (fitted to its ground control points)"
            elif gcps or s.is_identity:
                return
        elif s.is_identity and not scene_gcps(da):  # a CRS and no geotransform: pixel coordinates (its own warning)
            return
        here = (math.hypot(s.a, s.d), math.hypot(s.b, s.e))
    except Exception:  # noqa: BLE001 - an odd CRS, grid or set of GCPs: nothing to compare, nothing said
        return
    if not all(size) or not all(here):
        return
    if ours.is_geographic != theirs.is_geographic or (ours.linear_units or "") != (theirs.linear_units or ""):
        log.warning("%s is in %s, the model's training scene in %s: their pixel sizes cannot be compared, and a "
                    "patch covers the ground of the training scene's only on pixels of its size (%g x %g %s); "
                    "classify scenes on a grid like the training scene's", where, ours.to_string(),
                    theirs.to_string(), size[0], size[1], theirs.linear_units or "degrees")
        return
    ratio = max(here[0] / size[0], here[1] / size[1], size[0] / here[0], size[1] / here[1])
    if ratio > 1.25:
        log.warning("%s has pixels of %.4g x %.4g%s, the model's training scene %g x %g (CRS units): the model's "
                    "patch covers %.3gx the ground it was trained on, and its map is no longer the trained network's; "
                    "classify scenes at the training scene's pixel size (resample first)", where, here[0],
                    here[1], by_gcps, size[0], size[1], here[0] / size[0])


def warn_file_read_elsewhere(da: xr.DataArray) -> None:
    """Warn when ``da`` was read from a GeoTIFF or ENVI file by another reader (``rioxarray.open_rasterio``,
    ``xr.open_dataarray``) and the file holds what that reader leaves behind and :func:`~hsi_engine.open_scene`
    reads: a GDAL mask or alpha band (those pixels were classified), per-band nodata values (one was kept), or per-band
    wavelengths (only band 1's kept: the model could not check the bands)."""
    enc = getattr(da, "encoding", None) or {}
    src = enc.get("source")
    if not isinstance(src, str) or "source_array" in enc or "://" in src or not os.path.isfile(src):
        return  # open_scene's own, an in-memory scene, or a remote file (not opened again here)
    try:
        import rasterio
        from rasterio.enums import MaskFlags

        with rasterio.open(src) as f:
            if f.count != da.sizes.get("band"):
                return
            lost = []
            if any(MaskFlags.all_valid not in flags and MaskFlags.nodata not in flags for flags in f.mask_flag_enums):
                lost.append("its GDAL mask (or alpha band): the masked pixels are classified")
            if len({("nan" if v is not None and v != v else v) for v in f.nodatavals}) > 1:
                lost.append("its per-band nodata values (one is kept)")
            if f.count > 1 and scene_wavelengths(da) is None and any(
                    "wavelength" in {k.lower() for k in f.tags(b)} for b in range(2, f.count + 1)):
                lost.append("its band wavelengths (the model cannot check the bands)")
    except Exception:  # noqa: BLE001 - not a file GDAL reads: nothing to compare
        return
    if lost:
        warnings.warn(f"the scene was read from {src} by another reader than hsi_engine.open_scene, which leaves out "
                      f"{'; '.join(lost)}: pass the path, or hsi_engine.open_scene(path)",
                      UserWarning, stacklevel=user_stacklevel())
