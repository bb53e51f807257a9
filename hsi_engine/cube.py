"""A source's array as the engine's scene: dims named and ordered ``(band, y, x)``, band wavelengths, CF
georeferencing, bad-band flags and chunks; what every format's reader finishes with."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ssrn.dims import BAND_NAMES, X_NAMES, Y_NAMES, canonical_dim, dims_by_axis
from ssrn.errors import first_line

from .errors import MissingSpatialDimsError, OptionError, SceneError, user_stacklevel
from .wavelengths import WAVELENGTH_NAMES, not_wavelengths, to_nm

log = logging.getLogger(__name__)


# The dimension names read as band / y / x: the trainer's table (ssrn.dims), so both read a DataArray alike.
_BAND_NAMES, _Y_NAMES, _X_NAMES = BAND_NAMES, Y_NAMES, X_NAMES
_TARGET_CHUNK = 256  # pixels a side when grouping small GeoTIFF/ENVI blocks into dask chunks


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


def dims_from_attr(value: Any) -> tuple[str, ...] | None:
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


def bare_dataarray(data, dims: Sequence[str] | None, where: str, *, band_axis: int | None,
                    default_last: bool) -> xr.DataArray:
    """A DataArray around an unnamed (or attr-named) 3-D array, dims normalised to (band, y, x)."""
    dims = resolve_dims(tuple(data.shape), dims, where, band_axis=band_axis, default_last=default_last)
    return normalise_dims(xr.DataArray(data, dims=tuple(dims)), where)


def _extra_unit_dims(da: xr.DataArray) -> list[str]:
    """Dims of length 1 that are not a band/y/x axis by name (a NetCDF's ``time`` of one scene): squeezed."""
    return [str(d) for d in da.dims if da.sizes[d] == 1 and canonical_dim(str(d)) is None]


def cube_like(da: xr.DataArray) -> bool:
    """Whether ``da`` is a cube once its extra length-1 dims are squeezed."""
    return da.ndim - len(_extra_unit_dims(da)) == 3


def normalise_dims(da: xr.DataArray, where: str) -> xr.DataArray:
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
        return named_wavelengths(da.transpose("band", "y", "x"))
    axes = dims_by_axis(da.dims, where, MissingSpatialDimsError)  # unknown, repeated or missing axes refused
    rename: dict[Any, str] = {d: axis for axis, d in axes.items() if d != axis}
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
        clash = {old: new for old, new in rename.items()  # (1-D on that dim: swap_dims' band numbers, renamed fine)
                 if new in da.coords and new not in da.dims and da[new].dims != (old,)}
        if clash:
            old, new = next(iter(clash.items()))
            raise MissingSpatialDimsError(
                f"{where}: its dim {str(old)!r} is read as {new!r}, but it also has a coordinate named {new!r} on "
                f"dims {da[new].dims} (2-D x/y beside a lat/lon grid?); drop or rename that coordinate first, e.g. "
                f"da.drop_vars({new!r}) or da.rename({{{new!r}: '{new}_aux'}})")
        da = da.rename(rename)
        if wl is not None and np.issubdtype(wl.dtype, np.number) and not not_wavelengths(units, wl):
            da = da.assign_coords(wavelength=("band", to_nm(wl, units)))
            da["wavelength"].attrs["units"] = "nm"
    return named_wavelengths(da.transpose("band", "y", "x"))


def named_wavelengths(da: xr.DataArray, source: Any = None) -> xr.DataArray:
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
        if c.dims != ("band",) and c.dims[0] not in BAND_NAMES:
            continue
        units = c.attrs.get("units") or {"wavelength_nm": "nm", "wavelength_um": "um"}.get(name)
        if not_wavelengths(units, c.values):
            continue
        da = da.assign_coords(wavelength=("band", to_nm(np.asarray(c.values, np.float64), units)))
        da["wavelength"].attrs["units"] = "nm"
        return da
    return da


def aligned_chunk(block: int, size: int, target: int = _TARGET_CHUNK) -> int:
    """A chunk length that is a whole number of ``block`` and about ``target`` (never more than ``size``).

    Blocks much larger than ``target`` (whole-width strips of a striped GeoTIFF, a contiguous array) are
    cut to ``2 * target`` so one chunk of all bands stays bounded whatever the scene size.
    """
    block = max(1, int(block))
    if block > 2 * target:
        return int(min(size, 2 * target))
    return int(min(size, block * max(1, math.ceil(target / block))))


def resolve_dims(shape: tuple[int, ...], dims: Sequence[str] | None, where: str, *, band_axis: int | None,
                  default_last: bool) -> tuple[str, ...]:
    if len(shape) != 3:
        kind = "a 2-D image (one band?)" if len(shape) == 2 else f"a {len(shape)}-D array"
        raise SceneError(f"{where} holds {kind} of shape {tuple(shape)}; expected a 3-D hyperspectral cube "
                         "(band, y, x) or (y, x, band). Pass the cube, not a single band or a label map.")
    if band_axis is not None:
        layouts = {0: ("band", "y", "x"), 1: ("y", "band", "x"), 2: ("y", "x", "band"), -1: ("y", "x", "band")}
        if isinstance(band_axis, bool) or band_axis not in layouts:
            raise OptionError(f"band_axis={band_axis!r} for {where}; expected 0 (band, y, x), 1 (y, band, x: "
                              "PRISMA's and other line-interleaved cubes) or 2 (y, x, band; also -1)")
        return layouts[band_axis]
    if dims is not None and len(dims) == 3:
        return tuple(dims)
    return ("band", "y", "x") if _guess_band_axis(tuple(shape), where, default_last) == 0 else ("y", "x", "band")


def default_chunks(shape: tuple[int, ...], dims: Sequence[str]) -> tuple[int, ...]:
    """All bands in one chunk, about 512 x 512 pixels (for stores without chunks of their own)."""
    return tuple(n if canonical_dim(d) == "band" else min(n, 2 * _TARGET_CHUNK) for n, d in zip(shape, dims))


def _rechunk_bands(da: xr.DataArray, chunks) -> xr.DataArray:
    if chunks is not None:
        if isinstance(chunks, Mapping):
            chunks = {canonical_dim(k) or k: v for k, v in chunks.items()}
        try:
            return da.chunk(chunks)
        except (ValueError, TypeError, KeyError) as e:  # (not the file's fault: the HDF5 reader blamed it)
            raise OptionError(f"chunks={chunks!r} cannot chunk a {dict(da.sizes)} scene ({first_line(e)}); expected "
                              "what DataArray.chunk takes, e.g. {'band': -1, 'y': 512, 'x': 512}") from None
    return da


def with_bbl(da: xr.DataArray, bbl: Sequence[int] | None) -> xr.DataArray:
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
    from dask.local import get_sync  # (not "synchronous": dask imports distributed to look that name up)

    return da.assign_coords({n: c.compute(scheduler=get_sync) for n, c in lazy.items()})


_KM = {"km", "kilometre", "kilometer", "kilometres", "kilometers"}


def _cf_axis(c: xr.DataArray, name: str, units: tuple[str, ...]) -> bool:
    """Whether coordinate ``c`` is CF's latitude or longitude (by ``standard_name`` or ``units``)."""
    unit = str(c.attrs.get("units", "")).replace(" ", "").lower()
    return c.attrs.get("standard_name") == name or unit in units


def cf_georef(da: xr.DataArray) -> xr.DataArray:
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


def finish_scene(da: xr.DataArray, path: Path, fmt: str, *, wavelengths=None, nodata=None,
            chunks=None, bbl=None) -> xr.DataArray:
    da = cf_georef(_eager_coords(with_bbl(da, bbl)))
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
            da = da.assign_coords(wavelength=("band", to_nm(wl.values, wl.attrs.get("units"))))
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
        if _rotated(da):  # the file's transform, which its source rows/cols index (rio.isel_window rewrites the
            da[SOURCE_ROW].attrs[FILE_TRANSFORM] = list(da.rio.transform())[:6]  # scene's to the window's own)
    elif "x" in da.coords and da["x"].ndim == 1 and _rotated(da):  # GDAL's rotated NetCDF: its 1-D x/y index the
        da["x"].attrs[FILE_TRANSFORM] = list(da.rio.transform())[:6]  # file's grid (see georef._rotated_from_1d)
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


def holds_value(dtype: np.dtype, value: float) -> bool:
    """Whether a pixel of ``dtype`` can hold nodata ``value`` (an integer type holds no -9999 unsigned, no 0.5)."""
    return dtype.kind not in "ui" or (math.isfinite(value) and value == int(value)
                                      and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max)


def nan_capable(dtype: np.dtype) -> np.dtype:
    """The dtype that holds a scene's values and NaN for its nodata: floats as they are, integers as float32 up
    to 16 bits (exactly) and float64 above."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)


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


def nodata_attr(da: xr.DataArray) -> Any:
    return next((da.attrs[k] for k in NODATA_ATTRS if k in da.attrs), None)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


SOURCE_ROW, SOURCE_COL = "source_row", "source_col"  # pixel indices in the file of a GCP-placed or rotated scene
FILE_TRANSFORM = "file_transform"  # SOURCE_ROW's attribute: a rotated scene's transform in its file
