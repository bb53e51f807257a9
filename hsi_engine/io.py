"""Scene input: every supported store opened as a lazy ``xarray.DataArray`` with dims ``(band, y, x)``.

``open_scene(path)`` reads

* zarr stores (v3 and v2): a DataArray/Dataset written by ``xarray.to_zarr`` (CRS from its ``spatial_ref``
  coordinate), or a bare zarr array whose dims come from ``dimension_names`` / ``_ARRAY_DIMENSIONS`` /
  a ``dims`` attribute;
* NetCDF (``.nc``, ``.nc4``, ``.cdf``): the single 3-D variable (or ``variable=``);
* HDF5 (``.h5``, ``.hdf5``, ``.he5``): the single 3-D dataset (or the one named ``cube``), dims from a
  ``dims`` attribute such as ``"band,y,x"`` (the shipped Indian Pines file), a ``wavelength`` dataset;
* GeoTIFF (``.tif``, ``.tiff``) through ``rioxarray.open_rasterio``;
* ENVI (``.hdr`` or the binary ``.bsq``/``.bil``/``.bip``/``.img``/``.dat``/``.raw``) through GDAL's ENVI
  driver, with ``wavelength`` / ``wavelength units`` from the header;
* MATLAB ``.mat`` (v5 and v7.3; ``ssrn.data.load_mat_array``) and NumPy ``.npy`` (memory-mapped).

The result is dask-backed and chunked to match the store (zarr/NetCDF/HDF5 chunks, band chunks included;
GeoTIFF/ENVI blocks grouped to about 256 pixels a side, all bands in one chunk). Band-last sources are
transposed lazily. Values are those stored, except CF-packed NetCDF/zarr/HDF5 variables (``scale_factor`` /
``add_offset``), which are decoded as ``xarray.open_dataset`` decodes them (their fill becomes NaN), and stored
values outside a CF ``valid_range`` / ``valid_min`` / ``valid_max``, which read as NaN as GDAL reads them; GDAL's
scale/offset of a GeoTIFF or ENVI file are not applied, as in ``rioxarray.open_rasterio``'s default, and are kept
per band in ``encoding["scales"]`` / ``["offsets"]`` (not as CF attributes, which would make a NetCDF or zarr
copy of the scene read back scaled; ``rio.to_raster`` writes them back). The CRS and transform travel in the
``spatial_ref`` coordinate (``da.rio.crs``, ``da.rio.transform()``), band-centre wavelengths in nm in a
``wavelength`` coordinate on ``band``, and the source's nodata value in ``attrs["_FillValue"]``
(``da.rio.nodata``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers ``.rio`` on every DataArray open_scene returns)
import xarray as xr

from ssrn.errors import first_line

from .errors import (HSIEngineError, MissingSpatialDimsError, OptionError, SceneError, SceneNotFoundError,
                     user_stacklevel)
from .logs import dropped, warnings_ignored

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED_SUFFIXES", "as_scene", "open_scene", "scene_format", "scene_gcps", "scene_info",
           "with_window_gcps"]

_ENVI_DATA_SUFFIXES = (".bsq", ".bil", ".bip", ".img", ".dat", ".raw", "")
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".cdf": "netcdf",
    ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5",
    ".tif": "geotiff", ".tiff": "geotiff",
    ".hdr": "envi", ".bsq": "envi", ".bil": "envi", ".bip": "envi", ".img": "envi", ".dat": "envi",
    ".raw": "envi",
    ".mat": "matlab", ".npy": "npy",
}

# Dimension names accepted for each axis; anything here is renamed to band / y / x.
_BAND_NAMES = ("band", "bands", "wavelength", "wavelengths", "spectral", "spectrum", "channel", "channels",
               "lambda", "wl", "bandnumber", "band_number", "z")
_Y_NAMES = ("y", "lat", "latitude", "row", "rows", "line", "lines", "northing", "height")
_X_NAMES = ("x", "lon", "longitude", "col", "cols", "column", "columns", "sample", "samples", "easting", "width")
# Band coordinates (or Dataset variables) that hold the band centres, in the order looked for: EMIT names them
# 'wavelengths', others 'wl' or 'center_wavelength'; a name ending in _nm / _um gives the unit where no attr does
WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "center_wavelength", "centre_wavelength",
                    "center_wavelengths", "band_center", "band_centers", "wavelength_nm", "wavelength_um", "lambda")
_TARGET_CHUNK = 256  # pixels a side when grouping small GeoTIFF/ENVI blocks into dask chunks


# --------------------------------------------------------------------------------------------------
# helpers

def scene_format(path: str | os.PathLike) -> str:
    """The reader used for ``path`` ('zarr', 'netcdf', 'hdf5', 'geotiff', 'envi', 'matlab', 'npy')."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return SUPPORTED_SUFFIXES[suffix]
    if p.is_dir() and ((p / "zarr.json").exists() or (p / ".zarray").exists() or (p / ".zgroup").exists()):
        return "zarr"
    if _envi_header_beside(p) is not None:  # an ENVI binary of any name (.rfl, _img, none) with its header
        return "envi"
    if p.is_dir():
        inside = sorted(c.name for c in p.iterdir() if c.suffix.lower() in SUPPORTED_SUFFIXES
                        and (SUPPORTED_SUFFIXES[c.suffix.lower()] != "envi" or c.suffix.lower() == ".hdr"))
        listed = ", ".join(inside[:6]) + (f" ... ({len(inside)} in all)" if len(inside) > 6 else "")
        raise SceneError(f"{p} is a directory, not a scene (nor a zarr store): pass one of its scenes"
                         + (f": {listed}" if inside else "; it holds none hsi-engine reads"))
    if p.name.lower().endswith((".zarr.zip", ".zarr.zipx")) or (suffix == ".zip" and ".zarr" in p.name.lower()):
        raise _zipped_zarr(p)
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    raise SceneError(f"cannot tell the format of {p}: suffix {suffix or '(none)'!r} is not one hsi-engine reads. "
                     f"Supported: {supported} (and zarr directories). Convert the scene to GeoTIFF or zarr, "
                     "or rename it with the suffix of its real format.")


def _canonical_dim(name: str) -> str | None:
    n = str(name).lower()
    if n in _BAND_NAMES:
        return "band"
    if n in _Y_NAMES:
        return "y"
    if n in _X_NAMES:
        return "x"
    return None


_WAVENUMBER_UNITS = ("cm-1", "cm^-1", "cm**-1", "1/cm", "/cm", "cm⁻¹")
_METRE_UNITS = ("m", "meter", "meters", "metre", "metres")
_LENGTH_PREFIXES = ("micro", "um", "µm", "μm", "nano", "nm", "milli", "mm", "centi", "cm", "angstrom", "ångström",
                    "å")
# frequencies (ENVI's 'GHz' and 'MHz'), in Hz each: a band centre at f Hz is at c / f metres
_FREQUENCY_UNITS = {"thz": 1e12, "ghz": 1e9, "mhz": 1e6}
_SPEED_OF_LIGHT = 299_792_458.0  # m/s


def spectral_unit(units: str | None) -> bool:
    """Whether ``units`` names a length, a wavenumber or a frequency, which :func:`_to_nm` converts to nm."""
    u = (units or "").strip().lower()
    return bool(u) and (u.startswith(_LENGTH_PREFIXES + ("wavenumber",) + tuple(_FREQUENCY_UNITS))
                        or u.replace(" ", "") in _WAVENUMBER_UNITS or u in _METRE_UNITS)


def not_wavelengths(units: str | None, values: Any = None) -> bool:
    """Whether ``units`` says the listed ``values`` are not wavelengths: ENVI's ``Index`` (band numbers, read as nm
    they made ``info`` print 'wavelength 1.0..177.0 nm' and the model refuse the scene), or ``Unknown`` over values
    that are band numbers (1..N or 0..N-1); ``Unknown`` over other values is no unit at all (derived files keep
    their nm or µm lists under it), read as a list without a unit is."""
    u = (units or "").strip().lower()
    if u == "index":
        return True
    if u != "unknown" or values is None:
        return False
    try:
        v = np.asarray(values, np.float64).ravel()
    except (TypeError, ValueError):
        return False
    return v.size > 0 and bool(np.all(v == np.arange(v.size) + v[0])) and v[0] in (0.0, 1.0)


def _to_nm(values: Sequence[float], units: str | None) -> np.ndarray:
    """Wavelengths in nm: micrometre values (or values < 30 with no unit) are scaled by 1000, metres (or values
    below 1e-3 with no unit) by 1e9, Angstroms by 0.1; wavenumbers (cm-1) and frequencies (GHz, MHz, THz) are
    converted (nm = 1e7 / cm-1 = 299792458 / GHz = 299792458000 / MHz). Units that are not wavelengths
    (:func:`not_wavelengths`) are for the caller to leave out."""
    w = np.asarray(values, dtype=np.float64)
    u = (units or "").strip().lower()
    if u.startswith(("micro", "um", "µm", "μm")):
        return np.round(w * 1000.0, 6)
    if u.startswith(("nano", "nm")):
        return w
    if u.startswith(("milli", "mm")):
        return w * 1e6
    if u.startswith("wavenumber") or u.replace(" ", "") in _WAVENUMBER_UNITS:
        with np.errstate(divide="ignore"):
            return 1e7 / w
    if u.startswith(("centi", "cm")):  # a length in centimetres, not a wavenumber
        return w * 1e7
    if u.startswith(("angstrom", "ångström", "å")):
        return np.round(w * 0.1, 6)
    hz = next((per for prefix, per in _FREQUENCY_UNITS.items() if u.startswith(prefix)), None)
    if hz is not None:
        with np.errstate(divide="ignore"):
            return np.round(_SPEED_OF_LIGHT * 1e9 / (w * hz), 6)
    if u in _METRE_UNITS:
        return w * 1e9
    if w.size and 0 < np.nanmax(w) < 1e-3:  # no unit: metres (optical wavelengths are 1e-7..1e-5 m)
        return np.round(w * 1e9, 6)
    if w.size and np.nanmax(w) < 30:  # no unit: micrometres are < 30, nanometres > 300
        return np.round(w * 1000.0, 6)
    return w


def _wavelengths_nm(values: Sequence[float], units: str | None) -> np.ndarray | None:
    """:func:`_to_nm` of ``values``, or None where ``units`` says they are not wavelengths (ENVI's ``Index``): the
    scene's wavelengths are then unknown, as if none were given."""
    return None if not_wavelengths(units, values) else _to_nm(values, units)


def _guess_band_axis(shape: tuple[int, ...], where: str, default_last: bool) -> int:
    """Band axis of an unnamed 3-D array: 0 or 2, by the two equal spatial sides, else by convention."""
    a, b, c = shape
    if b == c and a != b:
        return 0
    if a == b and c != a:
        return 2
    if default_last:
        return 2
    band = 0 if a < c else 2
    warnings.warn(f"{where}: array of shape {shape} has no dimension names; taking axis {band} "
                  f"(length {shape[band]}) as the band axis. Pass band_axis=0, 1 or 2 to open_scene "
                  "(--band-axis 0, 1 or 2 on the command line) to say which it is.", stacklevel=user_stacklevel())
    return band


def _zipped_zarr(p: Path) -> SceneError:
    """The error for a zipped zarr store (``scene.zarr.zip``, or one renamed ``.zarr``): read only unzipped."""
    if p.name.lower().endswith(".zip"):
        stem = p.name[:-4]
        how = f"unzip {p.name} -d {stem if stem.lower().endswith('.zarr') else stem + '.zarr'}"
    else:  # a zip renamed .zarr: the directory takes its name back
        how = f"mv {p.name} {p.name}.zip && unzip {p.name}.zip -d {p.name}"
    return SceneError(f"{p} is a zipped zarr store, which hsi-engine does not open (renaming it does not help): "
                      f"unzip it first ({how}), or open it in Python with "
                      "xr.open_zarr(zarr.storage.ZipStore(path, mode='r')) and pass "
                      "the Dataset (hsi_engine.classify(ds, model))")


def _dims_from_attr(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        parts = [s.strip() for s in re.split(r"[,\s]+", value.strip("()[] ")) if s.strip()]
    else:
        try:
            parts = [str(v.decode() if isinstance(v, bytes) else v) for v in value]
        except TypeError:
            return None
    return tuple(parts) or None


def _bare_dataarray(data, dims: Sequence[str] | None, where: str, *, band_axis: int | None,
                    default_last: bool) -> xr.DataArray:
    """A DataArray around an unnamed (or attr-named) 3-D array, dims normalised to (band, y, x)."""
    dims = _resolve_dims(tuple(data.shape), dims, where, band_axis=band_axis, default_last=default_last)
    return _normalise_dims(xr.DataArray(data, dims=tuple(dims)), where)


def _extra_unit_dims(da: xr.DataArray) -> list[str]:
    """Dims of length 1 that are not a band/y/x axis by name (a NetCDF's ``time`` of one scene): squeezed."""
    return [str(d) for d in da.dims if da.sizes[d] == 1 and _canonical_dim(str(d)) is None]


def _cube_like(da: xr.DataArray) -> bool:
    """Whether ``da`` is a cube once its extra length-1 dims are squeezed."""
    return da.ndim - len(_extra_unit_dims(da)) == 3


def _normalise_dims(da: xr.DataArray, where: str) -> xr.DataArray:
    """Rename alternative dim names to band/y/x and transpose (lazily) to (band, y, x); length-1 dims that are
    not an axis (``time``) are squeezed, with a log line."""
    extra = _extra_unit_dims(da) if da.ndim > 3 else []
    if extra and da.ndim - len(extra) == 3:
        log.info("%s: dropping its length-1 dims %s", where, ", ".join(extra))
        da = da.isel({d: 0 for d in extra}, drop=True)
    if da.ndim != 3:
        fix = ("A 2-D image is one band: pass the whole cube, not a single band or a label map" if da.ndim == 2
               else "Select a single cube (e.g. da.isel(time=0))")
        raise MissingSpatialDimsError(f"{where} has dims {da.dims} (shape {da.shape}); expected 3 dims "
                                      f"(band, y, x). {fix}.")
    if set(da.dims) == {"band", "y", "x"}:
        return _named_wavelengths(da.transpose("band", "y", "x"))
    rename: dict[Any, str] = {}
    for d in da.dims:
        c = _canonical_dim(str(d))
        if c is not None and d != c and c not in rename.values() and c not in da.dims:
            rename[d] = c
    if rename:
        # A coordinate named after the target (e.g. 'wavelength' data coord when renaming dim 'wavelength')
        # would clash; keep wavelength values as a non-index coordinate.
        # its values become the wavelengths only when they read as such (a 'wavelength' dim, or float values with
        # units) and the scene has no wavelength coordinate of its own: band numbers 1..200 of a dim named
        # 'bands' or 'channel' were taken for nm (and replaced the real wavelengths), and the model refused the
        # scene ('band 199 is 200.00 nm in the scene, 2498.96 nm in the model')
        wl, units = None, None
        for old, new in rename.items():
            if new == "band" and old in da.coords:
                values, units = np.asarray(da[old].values), da[old].attrs.get("units")
                reads_as_wl = str(old).lower() in ("wavelength", "wavelengths", "wl", "lambda") or (
                    values.dtype.kind == "f" and units is not None)
                if not reads_as_wl:
                    continue  # renamed with its dim: a float 'band' coordinate still reads as wavelengths later
                if old == "wavelength" or "wavelength" not in da.coords:
                    wl = values
                da = da.drop_vars(old)
        da = da.rename(rename)
        if wl is not None and np.issubdtype(wl.dtype, np.number) and not not_wavelengths(units, wl):
            da = da.assign_coords(wavelength=("band", _to_nm(wl, units)))
            da["wavelength"].attrs["units"] = "nm"
    if set(da.dims) != {"band", "y", "x"}:
        raise MissingSpatialDimsError(
            f"{where} has dims {tuple(str(d) for d in da.dims)}; expected (band, y, x). Accepted names: band "
            f"{list(_BAND_NAMES)}, y {list(_Y_NAMES)}, x {list(_X_NAMES)}. Fix: "
            "da.rename({...: 'band', ...: 'y', ...: 'x'}).")
    return _named_wavelengths(da.transpose("band", "y", "x"))


def _named_wavelengths(da: xr.DataArray, source: Any = None) -> xr.DataArray:
    """A ``wavelength`` coordinate (nm) from a band coordinate, or a variable of ``source`` (a Dataset), named as
    another tool names it (:data:`WAVELENGTH_NAMES`): under another name the model's band check was skipped."""
    if "wavelength" in da.coords:
        return da
    for name in WAVELENGTH_NAMES[1:]:
        c = da.coords.get(name)
        if c is None and source is not None and name in source.variables:
            c = source[name]
        if c is None or c.ndim != 1 or c.size != da.sizes["band"] or c.dtype.kind not in "fiu":
            continue
        if c.dims != ("band",) and c.dims[0] not in ("band", *(n for n in _BAND_NAMES)):
            continue
        units = c.attrs.get("units") or {"wavelength_nm": "nm", "wavelength_um": "um"}.get(name)
        if not_wavelengths(units, c.values):
            continue
        da = da.assign_coords(wavelength=("band", _to_nm(np.asarray(c.values, np.float64), units)))
        da["wavelength"].attrs["units"] = "nm"
        return da
    return da


def _aligned_chunk(block: int, size: int, target: int = _TARGET_CHUNK) -> int:
    """A chunk length that is a whole number of ``block`` and about ``target`` (never more than ``size``).

    Blocks much larger than ``target`` (whole-width strips of a striped GeoTIFF, a contiguous array) are
    cut to ``2 * target`` so one chunk of all bands stays bounded whatever the scene size.
    """
    block = max(1, int(block))
    if block > 2 * target:
        return int(min(size, 2 * target))
    return int(min(size, block * max(1, math.ceil(target / block))))


def _resolve_dims(shape: tuple[int, ...], dims: Sequence[str] | None, where: str, *, band_axis: int | None,
                  default_last: bool) -> tuple[str, ...]:
    if len(shape) != 3:
        kind = "a 2-D image (one band?)" if len(shape) == 2 else f"a {len(shape)}-D array"
        raise SceneError(f"{where} holds {kind} of shape {tuple(shape)}; expected a 3-D hyperspectral cube "
                         "(band, y, x) or (y, x, band). Pass the cube, not a single band or a label map.")
    if band_axis is not None:
        layouts = {0: ("band", "y", "x"), 1: ("y", "band", "x"), 2: ("y", "x", "band"), -1: ("y", "x", "band")}
        if isinstance(band_axis, bool) or band_axis not in layouts:
            raise SceneError(f"band_axis={band_axis!r} for {where}; expected 0 (band, y, x), 1 (y, band, x: "
                             "PRISMA's and other line-interleaved cubes) or 2 (y, x, band)")
        return layouts[band_axis]
    if dims is not None and len(dims) == 3:
        return tuple(dims)
    return ("band", "y", "x") if _guess_band_axis(tuple(shape), where, default_last) == 0 else ("y", "x", "band")


def _default_chunks(shape: tuple[int, ...], dims: Sequence[str]) -> tuple[int, ...]:
    """All bands in one chunk, about 512 x 512 pixels (for stores without chunks of their own)."""
    return tuple(n if _canonical_dim(d) == "band" else min(n, 2 * _TARGET_CHUNK) for n, d in zip(shape, dims))


def _rechunk_bands(da: xr.DataArray, chunks) -> xr.DataArray:
    if chunks is not None:
        if isinstance(chunks, Mapping):
            chunks = {_canonical_dim(k) or k: v for k, v in chunks.items()}
        try:
            return da.chunk(chunks)
        except (ValueError, TypeError, KeyError) as e:  # (not the file's fault: the HDF5 reader blamed it)
            raise OptionError(f"chunks={chunks!r} cannot chunk a {dict(da.sizes)} scene ({first_line(e)}); expected "
                              "what DataArray.chunk takes, e.g. {'band': -1, 'y': 512, 'x': 512}") from None
    return da


def _with_bbl(da: xr.DataArray, bbl: Sequence[int] | None) -> xr.DataArray:
    """``da`` with a ``bbl`` band coordinate (the bad band list; 0 = bad) when ``bbl`` has one value per band."""
    if bbl is None or len(bbl) != da.sizes["band"]:
        return da
    da = da.assign_coords(bbl=("band", np.asarray(bbl, dtype=np.uint8)))
    da["bbl"].attrs["long_name"] = "bad band list (0 = bad band: the nodata mask leaves it out)"
    return da


def _eager_coords(da: xr.DataArray) -> xr.DataArray:
    """``da`` with its 0-d and 1-d dask-backed coordinates (a zarr/NetCDF ``wavelength``, ``bbl``, ``fwhm``) read
    now, without a scheduler: computed later inside a tile task on a dask worker, one went to the cluster and
    waited for a thread that every worker's tile task held (a run that never finished)."""
    lazy = {n: c for n, c in da.coords.items() if c.ndim <= 1 and c.chunks is not None}
    if not lazy:
        return da
    return da.assign_coords({n: c.compute(scheduler="synchronous") for n, c in lazy.items()})


_KM = {"km", "kilometre", "kilometer", "kilometres", "kilometers"}


def _cf_axis(c: xr.DataArray, name: str, units: tuple[str, ...]) -> bool:
    """Whether coordinate ``c`` is CF's latitude or longitude (by ``standard_name`` or ``units``)."""
    unit = str(c.attrs.get("units", "")).replace(" ", "").lower()
    return c.attrs.get("standard_name") == name or unit in units


def _cf_georef(da: xr.DataArray) -> xr.DataArray:
    """What CF says of the x/y coordinates and rioxarray does not read: lat/lon coordinates without a
    ``grid_mapping`` are WGS 84 (as GDAL's netCDF driver reads them; the map had a degree grid and no CRS), and
    projected coordinates in km are converted to the CRS's metres (the map was placed 1000x off)."""
    x, y = da.coords.get("x"), da.coords.get("y")
    if x is None or y is None or x.ndim != 1 or y.ndim != 1:
        return da
    try:
        crs = da.rio.crs
    except Exception:  # noqa: BLE001 - an unreadable grid mapping: left as it is
        return da
    if crs is None:
        if _cf_axis(x, "longitude", ("degrees_east", "degree_east", "degreee", "degreese", "degrees_e",
                                    "degree_e")) and \
                _cf_axis(y, "latitude", ("degrees_north", "degree_north", "degreen", "degreesn", "degrees_n",
                                         "degree_n")):
            da = da.rio.write_crs("EPSG:4326")
        return da
    units = {str(c.attrs.get("units", "")).strip().lower() for c in (x, y)}
    if units <= _KM and crs.is_projected and str(crs.linear_units).lower() in ("metre", "meter", "m"):
        coords = {}
        for n, c in (("x", x), ("y", y)):
            coords[n] = (c.dims, np.asarray(c.values, np.float64) * 1000.0, {**c.attrs, "units": "m"})
        da = da.assign_coords(coords)
        if "GeoTransform" in (da.coords[da.rio.grid_mapping].attrs if da.rio.grid_mapping in da.coords else {}):
            da = da.rio.write_transform(da.rio.transform(recalc=True))  # a stored one was in km too
    return da


def _finish(da: xr.DataArray, path: Path, fmt: str, *, wavelengths=None, nodata=None,
            chunks=None, bbl=None) -> xr.DataArray:
    da = _cf_georef(_eager_coords(_with_bbl(da, bbl)))
    if wavelengths is not None and len(wavelengths) == da.sizes["band"]:
        da = da.assign_coords(wavelength=("band", np.asarray(wavelengths, dtype=np.float64)))
        da["wavelength"].attrs["units"] = "nm"
    elif "wavelength" in da.coords and da["wavelength"].dims == ("band",):
        wl = da["wavelength"]
        if not_wavelengths(wl.attrs.get("units"), wl.values):  # band numbers ('Index'): no wavelengths, as if none
            log.info("%s: its wavelength coordinate is in %r, not a wavelength unit: left out", path,
                     wl.attrs.get("units"))
            da = da.drop_vars("wavelength")
        else:
            da = da.assign_coords(wavelength=("band", _to_nm(wl.values, wl.attrs.get("units"))))
            da["wavelength"].attrs["units"] = "nm"
    if "band" not in da.coords:
        da = da.assign_coords(band=np.arange(1, da.sizes["band"] + 1))
    if nodata is not None and "_FillValue" not in da.attrs:
        da.attrs["_FillValue"] = nodata
    da = _rechunk_bands(da, chunks)
    if "x" not in da.coords and "y" not in da.coords and SOURCE_ROW not in da.coords and \
            SOURCE_COL not in da.coords and (_has_gcps(da) or _rotated(da)):  # see scene_gcps and
        # georef.grid_transform: such a scene has no x/y coordinates that isel could shift (a saved window keeps its
        # own)
        da = da.assign_coords({SOURCE_ROW: ("y", np.arange(da.sizes["y"])),
                               SOURCE_COL: ("x", np.arange(da.sizes["x"]))})
    da.encoding["source"] = str(path)
    da.encoding["source_shape"] = tuple(int(n) for n in da.shape)  # a crop (isel keeps the encoding) is not the file
    da.attrs["source_format"] = fmt  # (a NetCDF saved from a GeoTIFF scene carries the GeoTIFF's: not this file's)
    return da


def _rotated(da: xr.DataArray) -> bool:
    """Whether the scene's transform is rotated (rioxarray gives it 2-D ``xc``/``yc``, no ``x``/``y``)."""
    try:
        t = da.rio.transform()
    except Exception:  # noqa: BLE001 - no readable transform
        return False
    return bool(t.b or t.d)


def _has_gcps(da: xr.DataArray) -> bool:
    try:
        return bool(da.rio.get_gcps())
    except Exception:  # noqa: BLE001 - no grid mapping
        return False


# --------------------------------------------------------------------------------------------------
# readers

# rasterio's log line for each metadata item that is not UTF-8 text (it skips the item), once per item and read: a
# Latin-1 ENVI header (Windows tools write 'wavelength units = µm', band names with 'grün') gave ~180 of them
_UNDECODED = "Failed to decode metadata item"


def gdal_name(path: str | os.PathLike) -> str:
    """The name to hand GDAL for the file at ``path``: absolute, since GDAL reads a name that starts with a driver
    prefix (``GTIFF_DIR:1:x.tif``, ``NETCDF:...``, ``/vsizip/``...) as that driver's syntax: a file so named in the
    working directory opened another file."""
    return os.path.abspath(path)


def _check_gdal_side_files(path: Path) -> None:
    """Refuse a pipe or device beside the raster under a name GDAL may open with it (its stem with any ending:
    .aux.xml, .msk, .ovr, .aux, .tfw, .wld, .rpb, an ENVI .hdr...): GDAL's open then blocked for ever on a FIFO,
    and a first Ctrl-C did not end it."""
    stem = path.name.split(".")[0]
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(stem + ".") or entry.name == path.name:
            continue
        try:
            odd = not entry.is_file() and not entry.is_dir()
        except OSError:
            continue
        if odd:
            raise SceneError(f"{path.parent / entry.name}, beside the scene {path}, is not a regular file (a pipe or "
                             "a device): GDAL may read it when it opens the scene (a side file or header of that "
                             "name), and would wait on it for ever; remove it or replace it with a file")


def _open_geotiff(path: Path, chunks) -> xr.DataArray:
    import rasterio

    _check_gdal_side_files(path)
    undecoded: set[str] = set()

    def drop(message: str) -> bool:
        if message.startswith(_UNDECODED):
            undecoded.add(message)
            return True
        return False

    with dropped(drop, "rasterio._base"):  # (a filter of this call's own: other threads' opens keep theirs)
        try:
            with rasterio.open(gdal_name(path)) as src:
                bh, bw = src.block_shapes[0]
                h, w, count = src.height, src.width, src.count
                tags = [src.tags(i) for i in range(1, count + 1)]
                descriptions = _band_descriptions(src)
                nodata = src.nodata
                ds_tags = src.tags()
                envi_tags = src.tags(ns="ENVI")
                rpcs = getattr(src, "rpcs", None)
                # a last band that is alpha (gdalwarp -dstalpha) is no spectral band: left out, its 0s nodata
                alpha = count > 1 and src.colorinterp[-1] == rasterio.enums.ColorInterp.alpha
                flags = rasterio.enums.MaskFlags
                masked = any(flags.per_dataset in f and not (alpha and flags.alpha in f) for f in src.mask_flag_enums)
                band_nodata = list(src.nodatavals[:count - int(alpha)])
                # band names that are not UTF-8 raise UnicodeDecodeError in rasterio's ``descriptions``, which
                # rioxarray reads too: it opens a VRT of the file then, which has the file's values and placement
                # and no band names
                source = gdal_name(path) if descriptions is not None else _vrt_without_names(src, tags, ds_tags)
        except rasterio.errors.RasterioIOError as e:
            raise SceneError(f"{path} could not be opened as a raster ({e}); is it a complete GeoTIFF/ENVI "
                             "file?") from None
        default = {"band": -1, "y": _aligned_chunk(bh, h), "x": _aligned_chunk(bw, w)}
        # per-band scales/offsets are kept in the encoding (_scales_to_encoding): rioxarray's note on them
        with warnings_ignored(UserWarning, "(Scales|Offsets) differ across bands"):
            da = rioxarray.open_rasterio(source, chunks=default, mask_and_scale=False)
    if undecoded or descriptions is None:
        log.info("%s: %d metadata item(s)%s not UTF-8 text (a Latin-1 header?), left out", path, len(undecoded),
                 " and the band names are" if descriptions is None else " are")
    if descriptions is None:
        descriptions = [None] * count
    if alpha:
        tags, descriptions = tags[:-1], descriptions[:-1]
    closer = getattr(da, "_close", None)  # the file's: the new arrays made below do not carry it
    if isinstance(da, list):
        raise SceneError(f"{path} holds {len(da)} subdatasets; open one of them")
    if isinstance(da, xr.Dataset):
        raise SceneError(f"{path} opened as a Dataset; expected a single multi-band raster")
    wl = _gdal_wavelengths(tags, descriptions, ds_tags, envi_tags)
    if "wavelength" in da.coords:  # rioxarray adds ENVI wavelengths as a (dask) coordinate in file units
        da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
    per_band = len({"nan" if v is not None and math.isnan(v) else v for v in band_nodata}) > 1
    if nodata is not None and not per_band:
        da = _with_nodata(da, nodata, f"{path}'s nodata value")
    if per_band or alpha:
        da = _nan_masked(da, path, band_nodata if per_band else None, alpha=alpha)
    da = _finish(_scales_to_encoding(da), path, "geotiff", wavelengths=wl, chunks=chunks, bbl=_gdal_bbl(tags))
    if masked:
        da = _with_gdal_mask(da, path)
    if rpcs is not None:  # placed by rational polynomial coefficients (a level-1 product); see georef.scene_georef
        da.encoding["rpcs"] = rpcs.to_dict()
    da.set_close(closer)
    return da


def _band_descriptions(src) -> list[str | None] | None:
    """The band names (GDAL descriptions) of open rasterio dataset ``src``, None when they are not UTF-8 text."""
    try:
        return list(src.descriptions)
    except UnicodeDecodeError:
        return None


def _vrt_without_names(src, tags: list[dict[str, str]], ds_tags: Mapping[str, str]) -> str:
    """A GDAL VRT (XML text, which rasterio opens as a file) over every band of open dataset ``src`` with its size,
    CRS, transform or GCPs, data types, nodata values, scales/offsets and readable metadata, but no band names:
    rioxarray reads a file's band names, and rasterio raises UnicodeDecodeError for names that are not UTF-8."""
    import xml.etree.ElementTree as ET

    from rasterio.dtypes import dtype_rev, typename_fwd

    def metadata(parent: ET.Element, items: Mapping[str, str]) -> None:
        if items:
            md = ET.SubElement(parent, "Metadata")
            for k, v in items.items():
                ET.SubElement(md, "MDI", key=k).text = v

    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    if src.crs is not None:
        ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    if not src.transform.is_identity:
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in src.transform.to_gdal())
    gcps, gcp_crs = src.gcps
    if gcps:
        listed = ET.SubElement(root, "GCPList", Projection=gcp_crs.to_wkt() if gcp_crs is not None else "")
        for g in gcps:
            ET.SubElement(listed, "GCP", Id=str(g.id or ""), Info=str(g.info or ""), Pixel=repr(g.col),
                          Line=repr(g.row), X=repr(g.x), Y=repr(g.y), Z=repr(g.z or 0.0))
    metadata(root, ds_tags)
    binary = str(Path(src.name).absolute())
    for i in range(src.count):
        band = ET.SubElement(root, "VRTRasterBand", dataType=typename_fwd[dtype_rev[src.dtypes[i]]], band=str(i + 1))
        metadata(band, tags[i])
        if src.nodatavals[i] is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(src.nodatavals[i]))
        if src.offsets[i] != 0:
            ET.SubElement(band, "Offset").text = repr(float(src.offsets[i]))
        if src.scales[i] != 1:
            ET.SubElement(band, "Scale").text = repr(float(src.scales[i]))
        source = ET.SubElement(band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = binary
        ET.SubElement(source, "SourceBand").text = str(i + 1)
    return ET.tostring(root, encoding="unicode")


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether a pixel of ``dtype`` can hold nodata ``value`` (an integer type holds no -9999 unsigned, no 0.5)."""
    return dtype.kind not in "ui" or (math.isfinite(value) and value == int(value)
                                      and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max)


def _with_nodata(da: xr.DataArray, value: float, what: str) -> xr.DataArray:
    """``da`` with nodata ``value``; a value its dtype cannot hold (-9999 or 0.5 in a uint16 file) is left out with
    a log line: no pixel can hold it, so it masks nothing (rioxarray raised OverflowError for it, and GDAL reads an
    ENVI header's 0.5 as 0 for uint16, which masked the zeros)."""
    if not _holds(da.dtype, value):
        log.info("%s (%s) cannot occur in a %s scene, so it masks nothing: left out", what, value, da.dtype)
        return da.rio.write_nodata(None, encoded=False)
    return da.rio.write_nodata(value, encoded=False)


def _nan_capable(dtype: np.dtype) -> np.dtype:
    """The dtype that holds a scene's values and NaN for its nodata: floats as they are, integers as float32 up
    to 16 bits (exactly) and float64 above."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)


def _with_gdal_mask(da: xr.DataArray, path: Path) -> xr.DataArray:
    """Pixels that a GDAL per-dataset mask (an internal mask band or a ``.msk`` file) marks invalid read as NaN, so
    they are nodata (class 0), as GIS software reads them; an integer scene is read as floats for it (exactly:
    float32 up to 16 bits), and NaN is its nodata value where it declares none."""
    import dask.array as dsa

    encoding = dict(da.encoding)
    da = da.astype(_nan_capable(da.dtype))
    valid = dsa.zeros((da.sizes["y"], da.sizes["x"]), chunks=(da.chunks[1], da.chunks[2]), dtype=bool)
    valid = valid.map_blocks(_gdal_valid, str(path), dtype=bool)
    out = da.copy(data=dsa.where(valid[None], da.data, np.array(np.nan, da.dtype)))
    out.encoding = encoding
    if _nodata_attr(out) is None:
        out = out.rio.write_nodata(np.nan, encoded=False)
    note = "per-dataset mask: invalid pixels read as NaN (nodata)"
    out.attrs["gdal_mask"] = f"{out.attrs['gdal_mask']}; {note}" if "gdal_mask" in out.attrs else note
    log.info("%s has a GDAL mask band: the pixels it marks invalid are nodata", path)
    return out


def _nan_masked(da: xr.DataArray, path: Path, band_nodata: list[float | None] | None, *,
                alpha: bool) -> xr.DataArray:
    """``da`` (as rioxarray opened the GeoTIFF) with each band's own nodata value (``band_nodata``, when the bands
    declare different ones: GDAL's ``nodata`` is band 1's, which masked 65535 holes nowhere and 0s in bands whose
    nodata is 65535) and, with ``alpha``, the pixels its last (alpha) band marks 0 read as NaN, that band left out
    (as a warp's fill, they were classified). Integers are read as floats for it, as :func:`_with_gdal_mask` does;
    NaN is the nodata value then, unless one value for every band is declared."""
    import dask.array as dsa

    n = da.sizes["band"] - int(alpha)
    data = da.data
    kept = da.isel(band=slice(0, n))
    count = da.sizes["band"]  # per-band attrs (long_name, scales, offsets) lose the alpha band's entry too
    kept.attrs = {k: (v[:n] if alpha and isinstance(v, (tuple, list)) and len(v) == count else v)
                  for k, v in da.attrs.items()}
    ftype = _nan_capable(da.dtype)
    hit = None
    notes = []
    if band_nodata is not None:
        usable = [v is not None and not math.isnan(v) and _holds(da.dtype, v) for v in band_nodata]
        values = np.array([v if ok else 0 for v, ok in zip(band_nodata, usable)], dtype=da.dtype)[:, None, None]
        hit = (kept.data == values) & np.array(usable)[:, None, None]
        unheld = sorted({v for v, ok in zip(band_nodata, usable) if v is not None and not math.isnan(v) and not ok})
        notes.append(f"its bands declare different nodata values ({_band_values(band_nodata)}): each band's own "
                     "reads as NaN (nodata)" + (f"; {', '.join(f'{v:g}' for v in unheld)} cannot occur in "
                                                f"{da.dtype} and masks nothing" if unheld else ""))
    if alpha:
        hole = (data[n] == 0)[None]  # (1, y, x): the same chunks as the bands
        hit = hole if hit is None else hit | hole
        notes.append(f"band {count} is an alpha band: left out of the scene, and the pixels it marks 0 read as NaN "
                     "(nodata)")
    out = kept.copy(data=dsa.where(hit, np.array(np.nan, ftype), kept.data.astype(ftype)))
    if band_nodata is not None or _nodata_attr(out) is None:
        out = out.rio.write_nodata(np.nan, encoded=False)
    if band_nodata is not None:
        out.attrs["band_nodata"] = _band_values(band_nodata)
    if alpha:
        out.attrs["gdal_mask"] = (f"alpha band {count}: pixels with alpha 0 read as NaN (nodata); the band is "
                                  "left out of the scene")
    log.info("%s: %s", path, "; ".join(notes))
    return out


def _band_values(values: Sequence[float | None]) -> str:
    """Per-band values as 'band 1: 0; bands 2-200: 65535', by value in order of first band (cut at ~150 chars)."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values, start=1):
        groups.setdefault("none" if v is None else f"{v:g}", []).append(i)
    parts = [f"{'bands' if len(bands) > 1 else 'band'} {band_runs(bands)}: {v}" for v, bands in groups.items()]
    text = "; ".join(parts)
    return text if len(text) <= 150 else text[:147] + "..."


def band_runs(bands: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` as ``3-5, 9``: EnMAP's bad bands are runs."""
    runs: list[list[int]] = []
    for b in bands:
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(f"{a}-{z}" if z > a else str(a) for a, z in runs)


# the attributes a scene declares its nodata value in, the one that masks first
NODATA_ATTRS = ("_FillValue", "nodata", "missing_value")


def _nodata_attr(da: xr.DataArray) -> Any:
    return next((da.attrs[k] for k in NODATA_ATTRS if k in da.attrs), None)


def _gdal_valid(block: np.ndarray, path: str, block_info: dict | None = None) -> np.ndarray:
    """One block of a GDAL per-dataset mask: True where the pixel is valid."""
    import rasterio
    from rasterio.windows import Window

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    with rasterio.open(gdal_name(path)) as src:
        return src.read_masks(1, window=Window(x0, y0, x1 - x0, y1 - y0)) > 0


def _scales_to_encoding(da: xr.DataArray) -> xr.DataArray:
    """GDAL's band scales/offsets (EnMAP: 0.0001), not applied, moved from rioxarray's CF-named attrs
    (``scale_factor``/``add_offset``, or ``scales``/``offsets`` when bands differ) to ``encoding["scales"]`` /
    ``["offsets"]``: with the CF names, ``to_netcdf``/``to_zarr`` of the stored counts wrote a file whose reader
    decodes them (x 0.0001), so the same pixels gave another map; ``rio.to_raster`` writes the band scales back
    from the encoding."""
    n = da.sizes["band"]
    for one, per_band in (("scale_factor", "scales"), ("add_offset", "offsets")):
        values = da.attrs.pop(per_band, None)
        single = da.attrs.pop(one, None)
        if values is None and single is not None:
            values = (single,) * n
        if values is not None:
            da.encoding[per_band] = tuple(float(v) for v in values)
    return da


def _gdal_bbl(tags: list[dict[str, str]]) -> list[int] | None:
    """Per-band ``bbl`` metadata (1 good, 0 bad, as EnMAP's GeoTIFFs carry it), when every band has it."""
    try:
        return [int(float(t["bbl"])) for t in tags] if tags and all("bbl" in t for t in tags) else None
    except ValueError:
        return None


_WL_IN_NAME = re.compile(r"(?<![\w.])([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
                         r"(nanometers?|nanometres?|micrometers?|micrometres?|nm|um|µm|μm)(?![a-z])", re.I)


def _gdal_wavelengths(tags: list[dict[str, str]], descriptions: list[str | None],
                      ds_tags: Mapping[str, str], envi_tags: Mapping[str, str] | None = None) -> np.ndarray | None:
    """Wavelengths (nm) from per-band ``wavelength`` metadata, else from the ENVI metadata domain's list
    (``wavelength = {...}``, as GDAL writes an ENVI header's into a GeoTIFF), else from band names such as
    'band 1 (0.4554 Micrometers)' or '460.0 nm'."""
    try:
        if tags and all("wavelength" in t for t in tags):
            units = tags[0].get("wavelength_units") or ds_tags.get("wavelength_units")
            return _wavelengths_nm([float(t["wavelength"]) for t in tags], units)
    except ValueError:
        pass
    for domain in (envi_tags or {}, ds_tags):
        if "wavelength" in domain:
            try:
                values = [float(v) for v in _envi_list(domain["wavelength"])]
            except ValueError:
                continue
            if len(values) == len(tags):
                return _wavelengths_nm(values, domain.get("wavelength_units") or domain.get("wavelength units"))
    return wavelengths_in_names(descriptions)


def wavelengths_in_names(names: Sequence[str | None]) -> np.ndarray | None:
    """Wavelengths (nm) from band names such as 'band 1 (0.4554 Micrometers)' or '460.0 nm', when every name
    carries one (the first name's unit for all); else None."""
    found = [_WL_IN_NAME.search(n or "") for n in names]
    if not found or not all(found):
        return None
    return _to_nm([float(m.group(1)) for m in found], found[0].group(2))  # type: ignore[union-attr]


# an ENVI header is text of a few KB (~100 KB with per-band names, wavelength and fwhm lists for 400+ bands): one
# of more than 4 MiB is not a header (and would take seconds to parse)
_ENVI_HEADER_MAX = 4 * 1024 * 1024


def _is_envi_header(hdr: Path) -> bool:
    """Whether ``hdr`` starts with ENVI's ``ENVI`` magic line (an ESRI EHdr header, also ``.hdr``, does not)."""
    try:
        with open(hdr, "rb") as f:
            return f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"ENVI")
    except OSError:
        return True  # unreadable: the ENVI path names the problem


def _parse_envi_header(hdr: Path) -> dict[str, str]:
    """``key -> raw value`` of an ENVI header (braced values may span lines).

    Keys are lower-cased, with GDAL's underscores read as spaces (GDAL's ``data_type`` is ``data type``); a line
    without ``=`` (the ``ENVI`` magic, a ``;`` comment) is skipped. A value starting with ``{`` runs to the first
    ``}``, on its line or a later one (``key =`` with the ``{`` on the next line too); an unclosed ``{`` is only
    its own line. Linear in the header's size, which is capped at ``_ENVI_HEADER_MAX``."""
    size = hdr.stat().st_size
    with open(hdr, "rb") as f:
        raw = f.read(_ENVI_HEADER_MAX + 1)
    try:  # UTF-8, whatever the locale; else Latin-1 (ENVI on Windows), which reads any byte
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode's universal newlines read them
    if len(text) > _ENVI_HEADER_MAX:
        raise SceneError(f"ENVI header {hdr} is {max(size, len(text)):,} bytes; expected a text header of at most "
                         f"{_ENVI_HEADER_MAX:,} bytes (ENVI headers are a few KB, some 100 KB with per-band lists "
                         "for hundreds of bands): this is not an ENVI header. Pass the scene's own .hdr, or cut "
                         "this one down to its 'key = value' lines")
    lines = text.split("\n")
    out: dict[str, str] = {}
    no_brace_after = len(lines)  # the first line from which no line holds a '}' (scanning past it is useless)
    i = 0
    while i < len(lines):
        key, eq, value = lines[i].partition("=")
        i += 1
        key = key.strip().lower().replace("_", " ")
        if not eq or not key:
            continue
        rest = value.lstrip()  # as written, for a value running on to later lines
        value = rest.rstrip()
        if not value:  # 'key =' with the braced value on the next non-blank line
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].lstrip().startswith("{"):
                rest, i = lines[j].lstrip(), j + 1
                value = rest.rstrip()
        if value.startswith("{"):
            close = value.find("}")
            if close >= 0:
                value = value[:close + 1]
            elif i < no_brace_after:
                j = i
                while j < len(lines) and "}" not in lines[j]:
                    j += 1
                if j < len(lines):
                    last = lines[j]
                    value = "\n".join([rest, *lines[i:j], last[:last.index("}") + 1]]).strip()
                    i = j + 1
                else:  # unclosed to the end: the value is its own line, and so is any later unclosed one
                    no_brace_after = i
        out[key] = value
    return out


def _envi_list(value: str) -> list[str]:
    return [s.strip() for s in value.strip().lstrip("{").rstrip("}").split(",") if s.strip()]


def _envi_header_beside(path: Path) -> Path | None:
    """The header of ENVI binary ``path``: ``scene.hdr`` or ``scene.img.hdr``, in either case (as GDAL finds it)."""
    if path.suffix.lower() == ".hdr" or not path.is_file():
        return None
    for base in (path.with_suffix(""), path):
        for suf in (".hdr", ".HDR"):
            cand = Path(str(base) + suf)
            if cand.is_file():
                return cand
    try:  # a header in any other case (scene.Hdr beside scene.Bsq), as the header finds its binary in any case
        for base in (path.with_suffix(""), path):
            for cand in base.parent.iterdir():
                if cand.name.lower() == base.name.lower() + ".hdr" and cand.name.startswith(base.name) \
                        and cand.is_file():
                    return cand
    except OSError:  # an unlistable directory: no header found
        pass
    return None


def _envi_paths(path: Path) -> tuple[Path, Path]:
    """(header, binary) for an ENVI scene given either file; suffixes match in any case (``SCENE.BSQ``)."""
    if path.suffix.lower() == ".hdr":
        hdr = path
        stem = path.with_suffix("")
        by_suffix = {}
        if path.parent.is_dir():
            for cand in path.parent.iterdir():
                if cand.with_suffix("") == stem and cand != hdr and cand.is_file():
                    by_suffix.setdefault(cand.suffix.lower(), cand)
        for suf in _ENVI_DATA_SUFFIXES:
            if suf in by_suffix:
                return hdr, by_suffix[suf]
        if stem.is_file():
            return hdr, stem
        raise SceneError(f"ENVI header {hdr} has no binary beside it; expected one of "
                         f"{[hdr.with_suffix(s).name for s in _ENVI_DATA_SUFFIXES]}; for a binary of another name "
                         "(scene.rfl), pass the binary's path: its header is found beside it")
    hdr = _envi_header_beside(path)
    if hdr is not None:
        return hdr, path
    raise SceneError(f"ENVI binary {path} has no header; expected {path.with_suffix('.hdr')} beside it")


# bytes per value of ENVI's ``data type`` codes (those GDAL's ENVI driver reads), and their names
_ENVI_BYTES = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 9: 16, 12: 2, 13: 4, 14: 8, 15: 8}
_ENVI_TYPES = {1: "uint8", 2: "int16", 3: "int32", 4: "float32", 5: "float64", 6: "complex64", 9: "complex128",
               12: "uint16", 13: "uint32", 14: "int64", 15: "uint64"}
_ENVI_INTERLEAVES = ("bsq", "bil", "bip")


def _envi_int(value: str) -> int:
    """An integer header value: '512' (or '512.0', as GDAL's atoi reads it); ValueError otherwise."""
    try:
        return int(value)
    except ValueError:
        f = float(value)
        if not f.is_integer():
            raise
        return int(f)


def _envi_layout(header: dict[str, str], hdr: Path, data: Path) -> tuple[list[int], int, str]:
    """``([samples, lines, bands], data type, interleave)`` of an ENVI header, each required (as the ENVI format
    says): GDAL reads a header without ``data type`` as bytes and one without a known ``interleave`` as bsq, so
    an int16 BIP cube became a wrong map without a word."""
    shape = []
    for key, what in (("samples", "columns"), ("lines", "rows"), ("bands", "bands")):
        if key not in header:
            raise SceneError(f"ENVI header {hdr} has no '{key}' key; expected '{key} = N' (N the scene's count "
                             f"of {what}, a positive integer): add it to the header")
        try:
            n = _envi_int(header[key])
        except ValueError:
            n = 0
        if n <= 0:
            raise SceneError(f"ENVI header {hdr}: '{key} = {header[key]}' is not a positive integer; expected "
                             f"'{key} = N' with N the scene's count of {what}: fix that line")
        shape.append(n)
    codes = ", ".join(f"{c} ({t})" for c, t in _ENVI_TYPES.items())
    if "data type" not in header:
        hint = ""
        try:
            offset = _envi_int(header.get("header offset", "0") or "0")
            per_value = (data.stat().st_size - offset) / math.prod(shape)
        except (ValueError, OSError):
            per_value = 0
        if per_value in (1, 2, 4, 8, 16):
            fits = [f"{c} ({t})" for c, t in _ENVI_TYPES.items() if _ENVI_BYTES[c] == per_value]
            hint = (f"; the binary's size gives {int(per_value)} bytes a value: "
                    f"{' or '.join(fits)}")
        raise SceneError(f"ENVI header {hdr} has no 'data type' key; expected 'data type = N' with N one of "
                         f"{codes}{hint}. GDAL would read the values as bytes: add the line for the type the "
                         "binary was written in")
    try:
        code = _envi_int(header["data type"])
    except ValueError:
        code = None
    if code not in _ENVI_BYTES:
        raise SceneError(f"ENVI header {hdr}: 'data type = {header['data type']}' is not an ENVI data type GDAL "
                         f"reads; expected one of {codes}: fix that line")
    if "interleave" not in header:
        raise SceneError(f"ENVI header {hdr} has no 'interleave' key; expected 'interleave = bsq', 'bil' or "
                         "'bip' (bands one after another, interleaved by line, or by pixel). GDAL would guess "
                         "bsq: add the line for the layout the binary was written in")
    interleave = header["interleave"].strip().lower()
    if interleave not in _ENVI_INTERLEAVES:
        raise SceneError(f"ENVI header {hdr}: 'interleave = {header['interleave']}' is not an ENVI interleave; "
                         "expected bsq, bil or bip (bands one after another, interleaved by line, or by pixel; "
                         "any case). GDAL would read it as bsq: fix that line")
    if _ENVI_BYTES[code] > 1:  # (one byte a value has no byte order: uint8 headers often leave it out)
        _check_envi_byte_order(header, hdr, code)
    return shape, code, interleave


def _check_envi_byte_order(header: dict[str, str], hdr: Path, code: int) -> None:
    """Refuse a header of values wider than a byte without a readable ``byte order`` (0 little-endian, 1
    big-endian): GDAL reads a missing one as little-endian (a value as C's atoi reads it: 0 little-endian, any other
    big-endian), so big-endian data (as older ENVI on Sun/SGI/PowerPC, and some instruments, wrote it) became a
    wrong map without a word."""
    what = f"its {_ENVI_BYTES[code]}-byte {_ENVI_TYPES[code]} values ('data type = {code}')"
    fix = ("'byte order = 0' (little-endian: Intel/AMD x86, ARM; what most files are) or 'byte order = 1' "
           "(big-endian: older Sun/SGI/PowerPC ENVI files, some instruments)")
    if "byte order" not in header:
        raise SceneError(f"ENVI header {hdr} has no 'byte order' key for {what}; expected {fix}. GDAL would "
                         "read them as little-endian: add the line for the byte order the binary was written in")
    try:
        order = _envi_int(header["byte order"])
    except ValueError:
        order = None
    if order not in (0, 1):
        leading = re.match(r"\s*[-+]?\d+", header["byte order"])  # what GDAL's atoi reads of it
        gdal = "big" if leading and int(leading.group()) != 0 else "little"
        raise SceneError(f"ENVI header {hdr}: 'byte order = {header['byte order']}' is not an ENVI byte order; "
                         f"expected {fix}. GDAL would read it as {gdal}-endian: fix that line")


def _check_envi_size(header: dict[str, str], hdr: Path, data: Path) -> None:
    """Refuse a binary shorter than its header says (an interrupted download or copy): GDAL reads the missing
    rows as zeros, which were classified as if they were the scene."""
    shape, code, _ = _envi_layout(header, hdr, data)
    size = _ENVI_BYTES[code]
    try:
        offset = _envi_int(header.get("header offset", "0") or "0")
    except ValueError:
        return  # GDAL reports a header it cannot read
    need = offset + math.prod(shape) * size
    have = data.stat().st_size
    if have < need:
        raise SceneError(f"ENVI binary {data} holds {have:,} bytes, but its header {hdr.name} declares "
                         f"{shape[2]} bands x {shape[1]} lines x {shape[0]} samples of {size} bytes"
                         f"{f' after {offset} header bytes' if offset else ''} ({need:,} bytes): the file is "
                         "incomplete (an interrupted download or copy?); fetch it again")


def _open_envi(path: Path, chunks) -> xr.DataArray:
    _check_gdal_side_files(path)  # before the header is looked for: a pipe there would block the look
    hdr, data = _envi_paths(path)
    if not data.is_file():
        raise SceneNotFoundError(f"ENVI binary {data} not found")
    _check_gdal_side_files(data)  # before the header is read here: a pipe there would block this read too
    if not _is_envi_header(hdr):  # an ESRI EHdr .hdr beside a .bil/.bsq: GDAL's EHdr driver reads it
        return _open_geotiff(data, chunks)
    header = _parse_envi_header(hdr)
    if header.get("file compression", "0").strip() not in ("0", ""):
        raise SceneError(f"{hdr} declares 'file compression = {header['file compression']}' (gzip); GDAL cannot "
                         "read compressed ENVI. Gunzip the binary and remove that header line.")
    _check_envi_size(header, hdr, data)
    da = _open_geotiff(data, chunks)
    closer = da._close
    units = header.get("wavelength units")
    try:
        listed = [float(v) for v in _envi_list(header["wavelength"])] if "wavelength" in header else None
    except ValueError:
        listed = None
    if "wavelength" in header and not_wavelengths(units, listed):  # band numbers ('Index'): as if no list were given
        log.info("%s: 'wavelength units = %s': its wavelength list holds band numbers (or values of no known unit), "
                 "not wavelengths, so the scene's wavelengths are unknown (a model checks its band count only)", hdr,
                 units)
        da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
    elif "wavelength" in header:
        try:
            wl = _to_nm([float(v) for v in _envi_list(header["wavelength"])], units)
        except ValueError:
            wl = None
            problem = "holds values that are not numbers"
        else:
            problem = f"lists {len(wl)} values for {da.sizes['band']} bands"
        if wl is not None and len(wl) == da.sizes["band"]:
            da = da.assign_coords(wavelength=("band", wl))
            da["wavelength"].attrs["units"] = "nm"
        else:  # unread, the model's band check is skipped: say so
            da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
            warnings.warn(f"{hdr}: its 'wavelength' entry {problem}, so the scene's wavelengths are unknown and "
                          "are not checked against the model's; fix the header's wavelength list",
                          stacklevel=user_stacklevel())
    if "bbl" in header:
        da = _envi_bbl(da, header["bbl"], hdr)
    if "data ignore value" in header:  # the header's own value: GDAL reads 0.5 as 0 for uint16
        try:
            value = float(header["data ignore value"])
        except ValueError:
            pass
        else:
            da = _with_nodata(da, value, f"{hdr}'s data ignore value")
    da.attrs["source_format"] = "envi"
    da.attrs["envi_interleave"] = header["interleave"].strip().lower()
    da.set_close(closer)
    return da


def _envi_bbl(da: xr.DataArray, value: str, hdr: Path) -> xr.DataArray:
    """``da`` with the header's ``bbl`` (bad band list) as a band coordinate; a list that is not one number per band
    is named and left out, as a wavelength list of the wrong length is (it was dropped without a word, and nodata
    in the bad bands it names then masked their pixels)."""
    try:
        bbl = [float(v) for v in _envi_list(value)]
    except ValueError:
        bbl = None
    if bbl is None or not all(math.isfinite(v) for v in bbl):
        problem = "holds values that are not numbers"
    elif len(bbl) != da.sizes["band"]:
        problem = f"lists {len(bbl)} values for {da.sizes['band']} bands"
    else:
        return _with_bbl(da, [int(v) for v in bbl])
    warnings.warn(f"{hdr}: its 'bbl' (bad band list) entry {problem}, so every band is taken as good (the nodata "
                  "value in a bad band masks its pixels); fix the header's bbl list: one 0 (bad) or 1 (good) per "
                  "band", stacklevel=user_stacklevel())
    return da


_LISTED = 6  # variables named in an error before the count
_FLAT_FIX = ("; its variables are 2-D images: stack the bands into one cube in Python "
             "(hsi_engine.classify(xr.open_dataset(path).to_array('band'), model)), or convert the file to a "
             "multi-band GeoTIFF with GDAL (gdalbuildvrt -separate, then gdal_translate)")
_GDAL_BAND = re.compile(r"Band(\d+)")


def _gdal_band_stack(ds: xr.Dataset, where: str, *, decode: bool) -> xr.DataArray | None:
    """The (band, y, x) cube of a NetCDF that ``gdal_translate -of netCDF`` wrote (one 2-D variable per band,
    ``Band1`` .. ``BandN``, over the same dims), its bands in band-number order; None for any other Dataset.
    ``decode``: CF-decode each band (:func:`_decode_packed`), as a file is read."""
    names = [str(k) for k, v in ds.data_vars.items() if v.ndim > 0]  # a 0-D 'crs' is the grid mapping
    numbers = [_GDAL_BAND.fullmatch(k) for k in names]
    if len(names) < 2 or not all(numbers):
        return None
    order = sorted(int(m.group(1)) for m in numbers)
    if order != list(range(1, len(names) + 1)) or len({ds[k].dims for k in names}) != 1 or ds[names[0]].ndim != 2:
        return None
    bands = [ds[f"Band{i}"] for i in order]
    if decode:
        bands = [_decode_packed(b, f"{where}'s variable {b.name!r}") for b in bands]
    first = ds["Band1"]
    cube = xr.concat(bands, dim="band", coords="minimal", compat="override", join="exact",
                     combine_attrs="drop_conflicts")
    cube.name = "bands"
    cube.encoding = {k: v for k, v in first.encoding.items() if k in ("grid_mapping", "source")}
    if "grid_mapping" in first.attrs:
        cube.attrs["grid_mapping"] = first.attrs["grid_mapping"]
    log.info("%s: its %d variables Band1..Band%d (GDAL's netCDF bands) read as one cube, in band order", where,
             len(bands), len(bands))
    return cube.assign_coords(band=np.arange(1, len(bands) + 1))


def _netcdf_group_cubes(path: Path) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The groups of a NetCDF4 file and the 3-D (or more) variables they hold (``group/name``: shape); nothing for
    NetCDF3 (no groups)."""
    import h5py

    groups: list[str] = []
    cubes: dict[str, tuple[int, ...]] = {}
    try:
        if not h5py.is_hdf5(path):
            return groups, cubes
        with h5py.File(path, "r") as f:
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Group):
                    groups.append(name)
                elif obj.ndim >= 3 and "/" in name and obj.attrs.get("CLASS") != b"DIMENSION_SCALE":
                    cubes[name] = tuple(obj.shape)
            f.visititems(visit)
    except (OSError, RuntimeError, ValueError):  # unreadable metadata: the error names what xarray found
        pass
    return groups, cubes


def _pick_variable(ds: xr.Dataset, where: str, variable: str | None,
                   how: str = "open_scene(path, variable=NAME) (--variable NAME on the command line)") -> xr.DataArray:
    if variable is not None:
        if variable not in ds.data_vars:
            names = sorted(map(str, ds.data_vars))
            listed = str(names) if len(names) <= _LISTED else f"{', '.join(names[:_LISTED])} ... ({len(names)} in all)"
            raise SceneError(f"{where} has no variable {variable!r}; variables: {listed}. Pass one of them (a NetCDF4 "
                             "group's as 'GROUP/NAME')")
        return ds[variable]
    cands = [k for k, v in ds.data_vars.items() if _cube_like(v)]  # (time=1, band, y, x) is a cube too
    if len(cands) == 1:
        return ds[cands[0]]
    if not cands:
        names = list(ds.data_vars)
        flat = sum(ds[k].ndim == 2 for k in names) > 1 and all(ds[k].ndim in (0, 2) for k in names)
        if len(names) > _LISTED:  # 200 GDAL bands were listed in one 4.6 kB line
            shown = ", ".join(f"{k!s} {tuple(map(str, ds[k].dims))}" for k in names[:_LISTED])
            raise SceneError(f"{where} holds no 3-D variable (found {len(names)} variables: {shown}, ...); expected "
                             "one (band, y, x) cube" + (_FLAT_FIX if flat else ""))
        shapes = {str(k): tuple(v.dims) for k, v in ds.data_vars.items()}
        stacks = {k: [(str(d), n) for d, n in v.sizes.items() if _canonical_dim(str(d)) is None and n > 1]
                  for k, v in ds.data_vars.items() if v.ndim == 4}
        extra = next(((k, dims[0]) for k, dims in stacks.items() if len(dims) == 1), None)
        fix = "" if extra is None else (
            f": {extra[0]!r} is a stack of {extra[1][1]} along {extra[1][0]!r}; classify one {extra[1][0]} at a "
            f"time, in Python hsi_engine.classify(xr.open_dataset(path)[{extra[0]!r}].isel({extra[1][0]}=0), model) "
            f"(or write each to its own file, e.g. ds.isel({extra[1][0]}=0).to_netcdf('one.nc'), for the command "
            "line)")
        raise SceneError(f"{where} holds no 3-D variable (found {shapes or 'none'}); expected one (band, y, x) cube"
                         + (fix or (_FLAT_FIX if flat else "")))
    for pref in ("cube", "reflectance", "radiance", "data", "image"):
        if pref in cands:
            log.info("%s: classifying its variable %r (of %s)", where, pref, ", ".join(map(str, cands)))
            return ds[pref]
    raise SceneError(f"{where} holds several 3-D variables {sorted(map(str, cands))}; pick one with {how}")


_PACKING_ATTRS = ("scale_factor", "add_offset", "_Unsigned", "missing_value")
_VALID_ATTRS = ("valid_range", "valid_min", "valid_max")


def _valid_bounds(attrs: Mapping[str, Any]) -> tuple[float, float, str] | None:
    """The CF valid range ``(low, high, attribute names)`` that ``attrs`` declare (``valid_range``, else
    ``valid_min`` / ``valid_max``), in stored (packed) values; None where none, or not numbers."""
    def number(v: Any) -> float | None:
        a = np.asarray(v).ravel()
        return float(a[0]) if a.size == 1 and a.dtype.kind in "iuf" else None

    if "valid_range" in attrs:
        a = np.asarray(attrs["valid_range"]).ravel()
        if a.size == 2 and a.dtype.kind in "iuf":
            return float(a[0]), float(a[1]), "valid_range"
        return None
    low, high = number(attrs.get("valid_min")), number(attrs.get("valid_max"))
    if low is None and high is None:
        return None
    names = " and ".join(k for k, v in (("valid_min", low), ("valid_max", high)) if v is not None)
    return (-math.inf if low is None else low), (math.inf if high is None else high), names


def _decode_packed(da: xr.DataArray, where: str | None = None) -> xr.DataArray:
    """A CF-packed variable (``scale_factor`` / ``add_offset``, ``_Unsigned`` or a ``missing_value`` in its
    attrs) decoded lazily as ``xarray.open_dataset`` decodes it (float values; fill and missing values become
    NaN, declared as the nodata value), so its map is that of the values it stands for (int16 counts with
    ``_Unsigned`` read as negative; a ``missing_value`` beside ``_FillValue`` was classified); stored values
    outside a declared ``valid_range`` / ``valid_min`` / ``valid_max`` read as NaN too, as GDAL reads them (xarray
    ignores them: a -9999 hole was classified). Other variables are returned as stored."""
    valid = _valid_bounds(da.attrs)
    if valid is None and not any(k in da.attrs for k in _PACKING_ATTRS):
        return da
    # named as in the file, so xarray's warnings (a missing_value list) name the file's variable
    name = str(da.name) if da.name is not None and str(da.name) not in da.dims else "variable"
    decoded = xr.decode_cf(xr.Dataset({name: da.variable}), mask_and_scale=True, decode_times=False,
                           decode_coords=False)[name]
    out = da.copy(data=decoded.variable.data)
    out.attrs = dict(decoded.attrs)
    applied = [f"{k}={da.attrs[k]}" for k in _PACKING_ATTRS if k in da.attrs]
    if valid is not None:
        low, high, names = valid
        raw = da.variable.data
        if str(da.attrs.get("_Unsigned", "false")).lower() == "true" and raw.dtype.kind == "i":
            raw = raw.astype(raw.dtype.str.replace("i", "u"))  # the stored values as CF reads them
        bad = (raw < low) | (raw > high)
        data = out.data.astype(_nan_capable(out.dtype))
        out = out.copy(data=xr.Variable(da.dims, data).where(~xr.Variable(da.dims, bad)).data)
        for k in _VALID_ATTRS:  # in stored values: not this decoded array's
            out.attrs.pop(k, None)
        applied += [f"{k}={np.asarray(da.attrs[k]).ravel().tolist()}" for k in _VALID_ATTRS if k in da.attrs]
        log.info("%s: values outside its %s (%s to %s, stored values) read as NaN (nodata)",
                 where or f"variable {name!r}", names, f"{low:g}", f"{high:g}")
    if valid is not None or any(k in da.attrs for k in ("_FillValue", "missing_value")):
        out.attrs["_FillValue"] = np.nan
    out.attrs["unpacked"] = f"{', '.join(applied)}, applied by hsi_engine.open_scene"
    return out


def _open_netcdf(path: Path, chunks, variable: str | None) -> xr.DataArray:
    group = None
    if variable is not None and "/" in variable.strip("/"):  # a NetCDF4 group's variable, "science/reflectance"
        group, variable = variable.strip("/").rsplit("/", 1)
    try:
        ds = xr.open_dataset(path, chunks={}, decode_coords="all", mask_and_scale=False, group=group)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as e:  # h5netcdf's for damaged metadata
        if group is not None:
            groups, _ = _netcdf_group_cubes(path)
            if group not in groups:
                raise SceneError(f"{path} has no group {group!r} (for variable {group}/{variable}); groups: "
                                 f"{groups or 'none'}. Pass variable='GROUP/NAME' (--variable GROUP/NAME) with one "
                                 "of them") from None
        raise SceneError(f"{path} could not be opened as NetCDF ({first_line(e)}); is the "
                         "file complete and undamaged?") from None
    where = str(path) if group is None else f"{path} (group {group})"
    if variable is None and not any(_cube_like(v) for v in ds.data_vars.values()):
        stack = _gdal_band_stack(ds, where, decode=True)
        if stack is not None:
            da = _normalise_dims(stack, f"{where}'s variables Band1..Band{stack.sizes['band']}")
            da = _finish(_keep_grid_mapping(da, ds), path, "netcdf", chunks=chunks)
            da.set_close(ds.close)
            return da
        groups, cubes = _netcdf_group_cubes(path) if group is None else ([], {})
        if groups:
            listed = ", ".join(f"{k} {v}" for k, v in list(cubes.items())[:_LISTED]) + (
                f" ... ({len(cubes)} in all)" if len(cubes) > _LISTED else "")
            example = next(iter(cubes), f"{groups[0]}/NAME")
            raise SceneError(f"{path} holds no 3-D variable at its root (found {sorted(map(str, ds.data_vars))}), "
                             f"but it has groups ({', '.join(groups[:_LISTED])})"
                             + (f" holding {listed}" if cubes else "")
                             + f"; pass variable={example!r} (--variable {example})")
    var = _pick_variable(ds, where, variable)
    var = _decode_packed(var, f"{where}'s variable {var.name!r}")
    da = _normalise_dims(var, f"{where}'s variable {var.name!r}")
    da = _finish(_keep_grid_mapping(da, ds), path, "netcdf", chunks=chunks)
    da.set_close(ds.close)  # (closed by a run that opened it; else when collected)
    return da


def _keep_grid_mapping(da: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """Carry the grid-mapping variable (``spatial_ref``) as a coordinate so ``da.rio.crs`` works."""
    gm = da.encoding.get("grid_mapping") or da.attrs.get("grid_mapping")
    if isinstance(gm, str) and ":" in gm:  # CF 1.7's extended form, "crs: x y" (GDAL reads it)
        gm = gm.split(":")[0].strip()
        da.encoding["grid_mapping"] = gm
        da.attrs.pop("grid_mapping", None)
    if gm and gm in ds.variables and gm not in da.coords:
        da = da.assign_coords({gm: ds[gm]})
    if gm is None and "spatial_ref" in ds.variables and "spatial_ref" not in da.coords:
        da = da.assign_coords(spatial_ref=ds["spatial_ref"])
    if "wavelength" in ds.variables and "wavelength" not in da.coords and ds["wavelength"].ndim == 1 \
            and ds["wavelength"].size == da.sizes["band"] \
            and not not_wavelengths(ds["wavelength"].attrs.get("units"), ds["wavelength"].values):
        wl = ds["wavelength"]
        da = da.assign_coords(wavelength=("band", _to_nm(wl.values, wl.attrs.get("units"))))
        da["wavelength"].attrs["units"] = "nm"
    return _named_wavelengths(da, ds)


def _open_zarr(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import zarr

    if path.is_file():
        import zipfile

        if zipfile.is_zipfile(path):
            raise _zipped_zarr(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several types for a missing/corrupt store
        if isinstance(e, MemoryError) or "can't start new thread" in str(e):  # this process's want, not the store's
            raise
        from .writers import zarr_unusable

        why = zarr_unusable() if isinstance(e, TypeError) else None
        raise SceneError(f"cannot read the zarr store {path}: {why}" if why else
                         f"{path} is not a readable zarr store ({type(e).__name__}: {e})") from None
    if isinstance(node, zarr.Array):
        return _zarr_bare_array(node, path, chunks, band_axis)
    # a group: xarray-written (dims recorded), else fall back to its single 3-D array
    for name, arr in node.arrays():  # xarray opens each of them
        _check_zarr_chunks(arr, path / name)
    try:
        with warnings_ignored(RuntimeWarning, ".*consolidated metadata"):
            ds = xr.open_dataset(str(path), engine="zarr", chunks={}, decode_coords="all", mask_and_scale=False,
                                 consolidated=None)
    except (KeyError, ValueError, TypeError):
        ds = None
    if ds is not None and ds.data_vars:
        var = _pick_variable(ds, str(path), variable)
        var = _decode_packed(var, f"{path}'s variable {var.name!r}")
        da = _normalise_dims(var, f"{path}'s variable {var.name!r}")
        da = _keep_grid_mapping(da, ds)
        da = _finish(da, path, "zarr", chunks=chunks)
        da.set_close(ds.close)
        return da
    arrays = {k: a for k, a in node.arrays() if a.ndim == 3}
    if variable is not None:
        if variable not in arrays:
            raise SceneError(f"{path} has no 3-D array {variable!r}; arrays: {sorted(k for k, _ in node.arrays())}")
        arrays = {variable: arrays[variable]}
    if len(arrays) != 1:
        raise SceneError(f"{path}: expected exactly one 3-D array in the zarr group, found {sorted(arrays)}; "
                         "pass variable=NAME (--variable NAME)")
    (name, arr), = arrays.items()
    return _zarr_bare_array(arr, path / name, chunks, band_axis)


# a store's own limits: a decoded chunk far larger than its array (a 6 MB store decoding 6.7 GB per read) or an
# absurd chunk count (10^7 x 10^7 pixels: tens of GB just to index the chunks) is refused before anything is read
MAX_DECODED_CHUNK = 1 << 30
MAX_CHUNKS = 10_000_000


def _check_zarr_chunks(arr, path: Path) -> None:
    """Refuse a zarr array whose metadata gives a chunk length of 0 or less (dask divided by it: a traceback)."""
    try:
        chunk_shape = tuple(arr.chunks)
    except (AttributeError, NotImplementedError, TypeError):
        return
    if any(not isinstance(c, int) or c <= 0 for c in chunk_shape):
        raise SceneError(f"zarr array {path} declares chunks {list(chunk_shape)} for its shape {list(arr.shape)}; "
                         "expected a positive chunk length along every axis (a 0 or negative one is a corrupt "
                         "'chunk_shape' / 'chunks' in its metadata): rewrite the store, e.g. with xarray's to_zarr")
    shape = tuple(int(n) for n in arr.shape)
    itemsize = np.dtype(arr.dtype).itemsize if np.dtype(arr.dtype).kind != "O" else 8
    chunk_bytes = math.prod(chunk_shape) * itemsize
    if chunk_bytes > max(4 * math.prod(shape) * itemsize, MAX_DECODED_CHUNK):
        raise SceneError(f"zarr array {path} declares chunks {list(chunk_shape)} ({_human(chunk_bytes)} decoded per "
                         f"chunk) for a {_human(math.prod(shape) * itemsize)} array of shape {list(shape)}: every "
                         "read would decode a whole chunk (a corrupt or hostile store); rewrite it with chunks of "
                         "at most its shape, e.g. with xarray's to_zarr")
    count = math.prod(math.ceil(n / c) for n, c in zip(shape, chunk_shape))
    if count > MAX_CHUNKS:
        raise SceneError(f"zarr array {path} declares shape {list(shape)} in {count:,} chunks of {list(chunk_shape)}, "
                         f"more than the {MAX_CHUNKS:,} a scene may have (reading it would index every chunk first): "
                         "a corrupt or hostile store; if it is real, rewrite it with larger chunks")


def _zarr_bare_array(arr, path: Path, chunks, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    dims = None
    meta = getattr(arr, "metadata", None)
    if getattr(meta, "dimension_names", None):
        dims = tuple(meta.dimension_names)
    _check_zarr_chunks(arr, path)
    attrs = dict(arr.attrs)
    dims = dims or _dims_from_attr(attrs.get("_ARRAY_DIMENSIONS")) or _dims_from_attr(attrs.get("dims"))
    data = dsa.from_zarr(arr)
    da = _bare_dataarray(data, dims, str(path), band_axis=band_axis, default_last=False)
    key = "wavelength" if attrs.get("wavelength") or "wavelengths" not in attrs else "wavelengths"
    wl = _listed_wavelengths(attrs.get(key), attrs.get("wavelength_units"), str(path), f"'{key}' attribute",
                             "'wavelength_units' attribute", f"the attributes ('{key}' a list of numbers, "
                             "'wavelength_units' a unit name)")
    nodata = attrs.get("nodata", attrs.get("_FillValue"))
    return _finish(da, path, "zarr", wavelengths=wl, nodata=nodata, chunks=chunks)


class _H5Source:
    """A picklable array-like over one HDF5 dataset: each read opens the file (dask workers included)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype) -> None:
        self.path, self.name, self.shape, self.dtype = str(path), name, tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key):
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.name][key]


def _open_hdf5(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _open_hdf5_file(f, path, chunks, variable, band_axis)
    except HSIEngineError:
        raise
    except (OSError, RuntimeError, KeyError, AttributeError, ValueError) as e:  # h5py's for damaged metadata too
        raise SceneError(f"{path} is not a readable HDF5 file ({first_line(e)}); is it "
                         "complete and undamaged?") from None


def _h5_unit_axes(shape: tuple[int, ...]) -> list[int]:
    """The length-1 axes of an HDF5 dataset of more than 3 dims that leave a cube once dropped (a (1, 200, H, W)
    stack of one scene), as the NetCDF and zarr paths drop a length-1 ``time``; none otherwise."""
    ones = [i for i, n in enumerate(shape) if n == 1]
    return ones if len(shape) > 3 and len(shape) - len(ones) == 3 else []


def _h5_attr(value: Any) -> Any:
    """An HDF5 attribute as xarray's CF decoding takes it: text as str, a 1-element array (netCDF4's) as a
    scalar."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iufb":
        return value.reshape(()).item() if value.dtype.kind == "b" else value.reshape(())[()]
    return value


def _open_hdf5_file(f, path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa
    import h5py
    found: dict[str, Any] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    if variable is not None:
        if variable not in found:
            raise SceneError(f"{path} has no dataset {variable!r}; datasets: {sorted(found)}")
        name = variable
    else:
        cubes = [k for k, v in found.items() if v.ndim == 3 or _h5_unit_axes(v.shape)]
        if "cube" in cubes:
            name = "cube"
        elif len(cubes) == 1:
            name = cubes[0]
        else:
            shapes = {k: v.shape for k, v in found.items()}
            raise SceneError(f"{path}: expected one 3-D dataset (or one named 'cube'); found {shapes}. "
                             "Pass variable=NAME (--variable NAME).")
    ds = found[name]
    unit = _h5_unit_axes(ds.shape)
    if ds.ndim != 3 and not unit:
        raise SceneError(f"{path}:{name} has shape {ds.shape}; expected a 3-D cube (band, y, x), or one with "
                         "extra length-1 dims. Pass the dataset that holds the cube with variable=NAME "
                         "(--variable NAME), or write the cube to its own dataset")
    dims = _dims_from_attr(ds.attrs.get("dims")) or _dims_from_attr(ds.attrs.get("DIMENSION_LABELS"))
    shape = tuple(n for i, n in enumerate(ds.shape) if i not in unit)
    if unit:
        named = dims is not None and len(dims) == ds.ndim
        log.info("%s:%s: dropping its length-1 dims %s", path, name,
                 ", ".join(dims[i] if named else f"axis {i}" for i in unit))
        dims = tuple(d for i, d in enumerate(dims) if i not in unit) if named else None
    dims = _resolve_dims(shape, dims, f"{path}:{name}", band_axis=band_axis, default_last=False)
    from dask.base import tokenize

    token = tokenize(str(path.resolve()), ds.name, os.stat(path).st_mtime_ns)
    if ds.chunks:
        store_chunks = ds.chunks
    else:
        inner = iter(_default_chunks(shape, dims))
        store_chunks = tuple(1 if i in unit else next(inner) for i in range(ds.ndim))
    data = dsa.from_array(_H5Source(path, ds.name, ds.shape, ds.dtype), chunks=store_chunks, lock=True,
                          name=f"hdf5-{token}", meta=np.empty((0,) * ds.ndim, ds.dtype))
    if unit:
        data = data[tuple(0 if i in unit else slice(None) for i in range(ds.ndim))]  # (band, y, x) in some order
    da = _bare_dataarray(data, dims, f"{path}:{name}", band_axis=None, default_last=False)
    wl = None
    for k in ("wavelength", "wavelengths"):
        if k in f and f[k].ndim == 1 and f[k].shape[0] == da.sizes["band"]:
            units = f[k].attrs.get("units")
            wl = _wavelengths_nm(f[k][()], units.decode() if isinstance(units, bytes) else units)
    cf = {k: _h5_attr(ds.attrs[k]) for k in ("_FillValue", *_PACKING_ATTRS, *_VALID_ATTRS) if k in ds.attrs}
    if _valid_bounds(cf) is not None or any(k in cf for k in _PACKING_ATTRS):
        # CF packing as the NetCDF path decodes it: a NetCDF4 file named .h5 gave a one-class map without a word
        da = _decode_packed(da.rename(name.rsplit("/", 1)[-1]).assign_attrs(cf), f"{path}:{name}")
        return _finish(da, path, "hdf5", wavelengths=wl, chunks=chunks)
    nodata = ds.attrs.get("nodata", ds.attrs.get("_FillValue"))
    if hasattr(nodata, "item"):
        nodata = nodata.item()
    return _finish(da, path, "hdf5", wavelengths=wl, nodata=nodata, chunks=chunks)


def _open_matlab(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    from ssrn.data import DataError, DataNotFoundError, load_mat_array

    try:
        arr, key = load_mat_array(path, [variable] if variable else None, ndim=3, what="scene")
    except DataNotFoundError as e:
        raise SceneNotFoundError(str(e)) from None
    except DataError as e:
        raise SceneError(f"{e}. Pass variable=NAME (--variable NAME) to pick the cube.") from None
    # MATLAB scenes are stored (rows, cols, bands): band-last unless the shape or band_axis says otherwise
    dims = _resolve_dims(arr.shape, None, f"{path}:{key}", band_axis=band_axis, default_last=True)
    data = dsa.from_array(arr, chunks=_default_chunks(arr.shape, dims))
    da = _bare_dataarray(data, dims, f"{path}:{key}", band_axis=None, default_last=True)
    da.name = key
    return _finish(da, path, "matlab", wavelengths=_sidecar_wavelengths(path), chunks=chunks)


def _open_npy(path: Path, chunks, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise SceneError(f"{path} is not a plain .npy array ({e}); object arrays are refused") from None
    dims = _resolve_dims(arr.shape, None, str(path), band_axis=band_axis, default_last=True)
    data = dsa.from_array(arr, chunks=_default_chunks(arr.shape, dims))
    da = _bare_dataarray(data, dims, str(path), band_axis=None, default_last=True)
    return _finish(da, path, "npy", wavelengths=_sidecar_wavelengths(path), chunks=chunks)


_SIDECAR_FIX = 'the file (a list of numbers, or {"wavelengths": [...], "unit": "nm"})'


_MAX_SIDECAR_BYTES = 1 << 20  # a wavelength list's JSON: some 10 bytes a band


def _sidecar_wavelengths(path: Path) -> np.ndarray | None:
    """Wavelengths from ``<stem>.wavelengths.json`` or ``<stem>_wavelengths.json`` beside the file, if any: a list
    of numbers, or ``{"wavelengths": [...], "unit": "nm"}``."""
    for cand in (path.with_name(path.stem + ".wavelengths.json"), path.with_name(path.stem + "_wavelengths.json")):
        if cand.is_file():
            try:
                if cand.stat().st_size > _MAX_SIDECAR_BYTES:
                    _warn_wavelengths(str(cand), f"holds {_human(cand.stat().st_size)}, more than the "
                                      f"{_human(_MAX_SIDECAR_BYTES)} a list of wavelengths takes", _SIDECAR_FIX)
                    return None
                doc = json.loads(cand.read_text(encoding="utf-8"))
            except (ValueError, OSError, RecursionError) as e:  # not JSON (or not text, or nested past Python's limit)
                _warn_wavelengths(str(cand), f"cannot be read as JSON ({first_line(e)})",
                                  _SIDECAR_FIX)
                return None
            if isinstance(doc, dict):
                return _listed_wavelengths(doc.get("wavelengths"), doc.get("unit"), str(cand), "'wavelengths' entry",
                                           "'unit' entry", _SIDECAR_FIX)
            return _listed_wavelengths(doc, None, str(cand), "content", "unit", _SIDECAR_FIX)
    return None


def _warn_wavelengths(where: str, problem: str, fix: str) -> None:
    warnings.warn(f"{where}: {problem}, so the scene's wavelengths are unknown and are not checked against the "
                  f"model's; fix {fix}", stacklevel=user_stacklevel())


def _listed_wavelengths(values: Any, units: Any, where: str, name: str, unit_name: str,
                        fix: str) -> np.ndarray | None:
    """Wavelengths in nm from a list of numbers and a unit name as stored in attributes or JSON (None if absent);
    a list or unit that is not one (strings, a dict, nested lists, a list of units) warns, as an unreadable ENVI
    wavelength list does, and is left out."""
    if values is None:
        return None
    if units is not None and not isinstance(units, str):
        _warn_wavelengths(where, f"its {unit_name} is {_short(units)}, not a unit name such as 'nm' or "
                          "'micrometers'", fix)
        return None
    arr = np.asarray(values) if isinstance(values, np.ndarray) else None
    numbers = (arr.ndim == 1 and arr.dtype.kind in "iuf") if arr is not None else (
        isinstance(values, (list, tuple))
        and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))  # None: NaN
    if not numbers:
        _warn_wavelengths(where, f"its {name} is {_short(values)}, not a list of numbers", fix)
        return None
    return _wavelengths_nm(values, units)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------------
# public API

def open_scene(path: str | os.PathLike, *, chunks: Any = None, variable: str | None = None,
               band_axis: int | None = None) -> xr.DataArray:
    """Open a scene lazily as a dask-backed ``DataArray`` with dims ``(band, y, x)``.

    ``chunks``: ``None`` (default) follows the store's own chunking; otherwise anything
    ``DataArray.chunk`` accepts (dim aliases such as ``rows``/``cols`` are understood).
    ``variable``: the array to read from a NetCDF/zarr/HDF5/MATLAB file holding several 3-D arrays.
    ``band_axis``: 0, 1 or 2 for arrays without dimension names (.npy, .mat, bare zarr/HDF5) whose layout
    cannot be told from the shape (1: line-interleaved (y, band, x), as PRISMA's HDF5 cubes; MATLAB and .npy
    default to band-last, the GIC convention).
    Values come back as stored, but CF-packed NetCDF/zarr/HDF5 variables are decoded (see the module docstring).
    A NetCDF4 group's variable is named ``GROUP/NAME``.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):  # pathlib's TypeError
        raise OptionError(f"open_scene takes a scene path (a str or pathlib.Path); got {type(path).__name__} "
                          f"{repr(path)[:80]}" + (": decode it first (os.fsdecode(path))" if isinstance(path, bytes)
                                                  else "; hsi_engine.classify takes arrays and DataArrays as they are"))
    p = Path(path)
    from .writers import URL, _utf8

    if isinstance(path, str) and URL.match(path):
        raise SceneError(f"scene {path} is a URL: hsi-engine reads local files and zarr stores only; download the "
                         "scene first, or open it with xarray / rioxarray (e.g. rioxarray.open_rasterio(url)) and "
                         "pass the DataArray")
    if str(path) in ("", "-"):
        raise SceneError(f"scene path {str(path)!r}: " + ("reading a scene from standard input is not supported"
                                                          if str(path) == "-" else "it is empty") +
                         "; pass a file (GeoTIFF, ENVI, NetCDF, HDF5, MATLAB, .npy) or a zarr store")
    if p.exists() and not (p.is_file() or p.is_dir()):  # a FIFO was read twice (a hang) or half-consumed
        raise SceneError(f"scene {p} is not a regular file (a pipe or a device): hsi-engine reads scenes by "
                         "window, in any order; save it to a file first")
    fmt = scene_format(p)
    if not p.exists() and not (fmt == "envi" and p.suffix.lower() == ".hdr" and p.with_suffix(".bsq").exists()):
        raise SceneNotFoundError(f"scene {p} does not exist")
    if fmt in ("geotiff", "envi"):
        if not _utf8(str(p.absolute())):
            raise SceneError(f"scene {os.fsencode(p)!r}: its path holds bytes that are not UTF-8 text (or this "
                             "process's locale is not UTF-8), which GDAL cannot open; rename it (or its directory) in "
                             "UTF-8, or run in a UTF-8 locale (e.g. LC_ALL=C.UTF-8)")
        given = [f"{k}={v!r}" for k, v in (("variable", variable), ("band_axis", band_axis)) if v is not None]
        if given:  # one cube, its axes named by the format: an option that cannot apply is a mistake to name
            raise SceneError(f"{p} is {'a GeoTIFF' if fmt == 'geotiff' else 'an ENVI file'}: one cube whose "
                             f"bands the format names, so {' and '.join(given)} (--variable / --band-axis) "
                             "cannot apply; leave them out")
        return _open_geotiff(p, chunks) if fmt == "geotiff" else _open_envi(p, chunks)
    if fmt == "netcdf":
        return _open_netcdf(p, chunks, variable)
    if fmt == "zarr":
        return _open_zarr(p, chunks, variable, band_axis)
    if fmt == "hdf5":
        return _open_hdf5(p, chunks, variable, band_axis)
    if fmt == "matlab":
        return _open_matlab(p, chunks, variable, band_axis)
    if fmt == "npy":
        return _open_npy(p, chunks, band_axis)
    raise AssertionError(fmt)


def as_scene(obj: Any, *, band_axis: int | None = None) -> xr.DataArray:
    """A ``(band, y, x)`` DataArray from a DataArray, a numpy array or a torch tensor (no copy where possible).

    DataArrays with alternative dim names (``bands``, ``wavelength``, ``rows``/``cols``, ``lat``/``lon``...)
    or band-last order are renamed and transposed lazily; coords, attrs and ``spatial_ref`` are kept.
    Arrays and tensors are taken as ``(band, y, x)`` unless ``band_axis`` is 1 (y, band, x) or 2 (y, x, band).
    A path is opened with
    :func:`open_scene`.
    """
    if isinstance(obj, (str, os.PathLike)):
        return open_scene(obj)
    _check_known_chunks(obj)
    if isinstance(obj, xr.Dataset):
        # values as they are: in memory, a scale_factor attr may be rioxarray's note on raw GeoTIFF counts, not
        # CF packing (open_scene decodes the NetCDF/zarr variables that are packed)
        cube = _gdal_band_stack(obj, "the Dataset", decode=False) if not any(
            _cube_like(v) for v in obj.data_vars.values()) else None
        if cube is None:
            cube = _pick_variable(obj, "the Dataset", None, how="ds[NAME] (e.g. classify(ds[NAME], model) or "
                                  "ds[NAME].hsi.classify(model))")
        # as open_scene reads the file: its grid mapping, wavelengths and CF lat/lon, where xr.open_dataset left
        # them data variables
        return _cf_georef(_keep_grid_mapping(_normalise_dims(cube, f"the Dataset's variable {cube.name!r}"), obj))
    if isinstance(obj, xr.DataArray):
        return _cf_georef(_normalise_dims(obj, f"DataArray {obj.name!r}" if obj.name is not None
                                          else "the DataArray"))
    if type(obj).__module__.startswith("torch"):
        import torch

        if getattr(obj, "layout", torch.strided) != torch.strided:  # sparse: numpy has no such arrays
            obj = obj.to_dense()
        obj = obj.detach().cpu()
        obj = (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy()  # numpy has no bfloat16: exact in float32
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") or hasattr(obj, "chunks"):
        if getattr(obj, "ndim", None) != 3:
            raise SceneError(f"expected a 3-D (band, y, x) array; got shape {tuple(getattr(obj, 'shape', ()))}. "
                             "A 2-D image is one band: add an axis with arr[None].")
        ax = 0 if band_axis is None else band_axis
        da = _bare_dataarray(obj, None, "the array", band_axis=ax, default_last=False)
        return da.assign_coords(band=np.arange(1, da.sizes["band"] + 1))
    raise SceneError(f"cannot make a scene from {type(obj).__name__}; pass an xarray.DataArray (band, y, x), "
                     "a numpy array, a torch tensor or a path")


def _check_known_chunks(obj: Any) -> None:
    """Refuse a dask array whose chunk sizes are unknown (NaN: boolean indexing), which no tile can be planned on.
    Reads ``.chunks`` only (``.data`` of a lazily opened variable reads the whole array)."""
    arrays = list(obj.data_vars.values()) if isinstance(obj, xr.Dataset) else [obj]
    for a in arrays:
        chunks = getattr(a, "chunks", None)
        if isinstance(chunks, tuple) and any(isinstance(c, float) and math.isnan(c) for dim in chunks for c in dim):
            raise SceneError("the scene's dask chunk sizes are unknown (NaN, as boolean indexing leaves them), so "
                             "its shape is unknown: call .compute_chunk_sizes() on the dask array (or "
                             "scene.copy(data=scene.data.compute_chunk_sizes()) on a DataArray) first")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    total = path.stat().st_size if path.exists() else 0
    if scene_format(path) == "envi":
        hdr, data = _envi_paths(path)
        total = hdr.stat().st_size + data.stat().st_size
    return total


SOURCE_ROW, SOURCE_COL = "source_row", "source_col"  # pixel indices in the file of a GCP-placed or rotated scene


def scene_gcps(da: xr.DataArray) -> list | None:
    """The ground control points of a scene placed by them (no y/x coordinates: not orthorectified, where
    ``rio.transform()`` reads the identity), in the pixel coordinates of ``da`` itself; None for a gridded scene
    or one without any.

    Such a scene has no coordinates that ``isel`` could shift, so :func:`open_scene` gives it ``source_row`` /
    ``source_col``: the row and column of each pixel in the file whose GCPs it carries. A window of it
    (``da.isel(y=slice(100, 300))``) keeps them, and its GCPs are moved to the window here; an irregular
    selection cannot be placed by them and is refused. rioxarray's ``rio.reproject`` does not accept 1-D
    coordinates along y/x: drop these two first (``da.drop_vars(["source_row", "source_col"])``).
    """
    if "x" in da.coords or "y" in da.coords:
        return None
    gcps = da.rio.get_gcps() or None
    if not gcps:
        return None
    unplaced_window(da, "ground control points")
    (r0, rs), (c0, cs) = _source_step(da, SOURCE_ROW, "y"), _source_step(da, SOURCE_COL, "x")
    if (r0, rs, c0, cs) == (0, 1, 0, 1):
        return gcps
    from rasterio.control import GroundControlPoint

    # pixel centres: source row r0 + k * rs + 0.5 is row k + 0.5 of the window
    return [GroundControlPoint(row=(g.row - r0 - 0.5) / rs + 0.5, col=(g.col - c0 - 0.5) / cs + 0.5, x=g.x, y=g.y,
                               z=g.z, id=g.id, info=g.info) for g in gcps]


def with_window_gcps(da: xr.DataArray, gcps: list, crs: Any) -> xr.DataArray:
    """``da`` (on a GCP-placed scene's pixels) carrying ``gcps`` already moved to its window (:func:`scene_gcps`),
    without ``source_row``/``source_col``: a class map is placed by its own GCPs, as rioxarray expects (its
    ``rio.reproject`` refuses 1-D coordinates along y/x)."""
    return da.drop_vars([c for c in (SOURCE_ROW, SOURCE_COL) if c in da.coords]).rio.write_gcps(gcps, crs)


def unplaced_window(da: xr.DataArray, placed_by: str) -> None:
    """Refuse a window of a scene placed by ``placed_by`` (GCPs, a rotated transform) that carries nothing saying
    where in its file it lies (no ``source_row``/``source_col``: opened with ``rioxarray.open_rasterio``, not
    :func:`open_scene`): the file's placement would put its map at the file's origin."""
    if SOURCE_ROW in da.coords or SOURCE_COL in da.coords:
        return
    src = da.encoding.get("source")
    if not isinstance(src, (str, os.PathLike)) or not os.path.isfile(src):
        return
    try:
        import rasterio

        with rasterio.open(gdal_name(src)) as f:
            shape = (f.height, f.width)
            file_gcps, _ = f.gcps
            file_transform = f.transform
    except Exception:  # noqa: BLE001 - not a file rasterio reads: nothing to compare with
        return
    # the file's own placement, unchanged, on fewer pixels: a window; an overview (its GCPs or transform scaled) or
    # a container GDAL reads as something else (a NetCDF of several variables) carries another placement
    if placed_by == "ground control points":
        ours = da.rio.get_gcps() or []
        same = len(ours) == len(file_gcps) and all(
            (a.row, a.col, a.x, a.y) == (b.row, b.col, b.x, b.y) for a, b in zip(ours, file_gcps))
    else:
        same = da.rio.transform().almost_equals(file_transform)
    if same and shape != (da.sizes.get("y"), da.sizes.get("x")):
        raise SceneError(f"scene {src} is placed by {placed_by}, and this is a {da.sizes.get('y')} x "
                         f"{da.sizes.get('x')} window of its {shape[0]} x {shape[1]} pixels opened without "
                         "hsi_engine.open_scene, so nothing says where in the file it lies (its map would be placed "
                         "at the file's origin): open it with hsi_engine.open_scene(path) and select the window "
                         "from that (its source_row / source_col coordinates place it)")


def _source_step(da: xr.DataArray, name: str, dim: str) -> tuple[float, float]:
    """``(first, step)`` of a GCP-placed scene's source pixel indices along ``dim`` ((0, 1) without them)."""
    if name not in da.coords or da[name].dims != (dim,) or da.sizes[dim] == 0:
        return 0, 1
    v = np.asarray(da[name].values, dtype=np.float64)
    step = float(v[1] - v[0]) if v.size > 1 else 1.0
    if step == 0 or not np.allclose(np.diff(v), step):  # a negative step is regular: a flip, isel(y=slice(-1, ...))
        raise SceneError(f"the scene is placed by ground control points, but its {dim} pixels were selected "
                         f"irregularly ({name} runs {_preview(v)}); its GCPs can place only a regular window: "
                         f"select one with a slice, e.g. da.isel({dim}=slice(a, b))")
    return float(v[0]), step


def _preview(v: np.ndarray) -> str:
    return ", ".join(f"{x:g}" for x in v[:4]) + (", ..." if v.size > 4 else "")


def scene_info(path: str | os.PathLike, *, variable: str | None = None, band_axis: int | None = None) -> str:
    """A human summary of a scene: format, shape, bands, dtype, chunks, CRS, transform, wavelengths, size;
    ``variable`` / ``band_axis`` as in :func:`open_scene`."""
    da = open_scene(path, variable=variable, band_axis=band_axis)  # the path as given: a URL is named as one
    p = Path(path)
    lines = [f"scene      {p}", f"format     {da.attrs.get('source_format', scene_format(p))}",
             f"shape      band={da.sizes['band']} y={da.sizes['y']} x={da.sizes['x']}",
             f"dtype      {da.dtype}"]
    if da.attrs.get("source_format") in ("netcdf", "zarr") and da.name is not None:
        lines.insert(2, f"variable   {da.name}")  # which of the file's variables was read
    if da.chunks is not None:
        cs = tuple(c[0] for c in da.chunks)
        lines.append(f"chunks     {cs} (band, y, x); {math.prod(len(c) for c in da.chunks)} chunks")
    crs = transform = None
    try:
        crs = da.rio.crs
        transform = da.rio.transform() if crs is not None or "spatial_ref" in da.coords else None
    except Exception:  # a scene without coordinates has no transform
        pass
    lines.append(f"crs        {crs.to_string() if crs is not None else 'none'}")
    gcps = scene_gcps(da) if crs is not None else None
    if gcps:  # placed by ground control points: the identity transform rioxarray reads means nothing
        lines.append(f"gcps       {len(gcps)} ground control points (no transform: not orthorectified)")
    elif transform is not None:
        lines.append(f"transform  {tuple(round(v, 6) for v in transform[:6])}")
        lines.append(f"pixel      {math.hypot(transform.a, transform.d):g} x {math.hypot(transform.b, transform.e):g}"
                     + (" (rotated grid)" if transform.b or transform.d else ""))
    nodata = da.attrs.get("_FillValue")
    lines.append(f"nodata     {nodata if nodata is not None else 'none'}"
                 + (f" (declared per band: {da.attrs['band_nodata']}; each read as NaN)" if "band_nodata" in da.attrs
                    else ""))
    if "gdal_mask" in da.attrs:
        lines.append(f"mask       {da.attrs['gdal_mask']}")
    lines += _scale_lines(da)
    if "wavelength" in da.coords:
        wl = np.asarray(da["wavelength"].values, dtype=float)
        lines.append(f"wavelength {np.nanmin(wl):.1f}..{np.nanmax(wl):.1f} nm ({wl.size} bands)")
    else:
        lines.append("wavelength unknown")
    lines.append(f"in memory  {_human(da.nbytes)}")
    lines.append(f"on disk    {_human(_disk_size(p))}")
    return "\n".join(lines)


def _scale_lines(da: xr.DataArray) -> list[str]:
    """``info``'s lines for the GDAL band scales/offsets a scene declares (kept in its encoding, not applied), when
    they are not all 1 / all 0: EnMAP's 0.0001 says the values are reflectance x 10000."""
    lines = []
    for key, name, identity in (("scales", "scale", 1.0), ("offsets", "offset", 0.0)):
        values = np.asarray(da.encoding.get(key) or (), dtype=np.float64)
        if values.size == 0 or np.all(values == identity):
            continue
        lo, hi = np.nanmin(values), np.nanmax(values)
        which = "all bands" if lo == hi else f"per band, {values.size} bands"
        text = f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
        lines.append(f"{name:<10} {text} ({which}; declared, not applied: values are read as stored)")
    return lines
