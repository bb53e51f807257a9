"""What agency HDF5/NetCDF products declare outside CF and the readers take from them: band wavelength lists and
good-band flags (PRISMA, NEON, Planet Tanager, EMIT), PRISMA's L2 DN scaling, NEON's ``Data_Ignore_Value`` and
``Dimension_Labels``, and EMIT's sensor geometry."""

from __future__ import annotations

import logging
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ssrn.dims import BAND_NAMES, canonical_dim

from .cube import dims_from_attr, with_bbl
from .errors import MissingSpatialDimsError, user_stacklevel
from .wavelengths import WAVELENGTH_NAMES

log = logging.getLogger(__name__)

# an HDF5 dataset's attributes that declare its nodata value, the first found masking: NEON AOP's reflectance
# declares Data_Ignore_Value (-9999) only, and a flight-line gap away from the sampled pixels was classified
H5_NODATA_ATTRS = ("nodata", "_FillValue", "Data_Ignore_Value")
_GOOD_BANDS = ("good_wavelengths",)  # Tanager's attribute, EMIT's sensor_band_parameters variable: 1 good, 0 bad


@dataclass(frozen=True)
class BandList:
    """A list of band-centre wavelengths a file carries for a cube: its values as stored, their unit, where it was
    found (for messages), and whether it is the cube's own attribute."""

    values: np.ndarray
    units: str | None
    source: str
    own: bool = False


def _text(value: Any) -> str | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00 ").strip() if isinstance(value, str) else None


def _numbers(value: Any) -> np.ndarray | None:
    """``value`` as a 1-D float array when it is a list of numbers, else None."""
    a = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
    return a.astype(np.float64) if a is not None and a.ndim == 1 and a.size and a.dtype.kind in "iuf" else None


def h5_dims_attr(attrs: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A dataset's dim names from its ``dims`` or ``DIMENSION_LABELS`` attribute, or NEON's ``Dimension_Labels``
    ('Line, Sample, Wavelength') where those name one band, one y and one x axis."""
    dims = dims_from_attr(attrs.get("dims")) or dims_from_attr(attrs.get("DIMENSION_LABELS"))
    if dims is not None:
        return dims
    labels = dims_from_attr(_text(attrs.get("Dimension_Labels")))
    if labels is not None and sorted(str(canonical_dim(d)) for d in labels) == ["band", "x", "y"]:
        return labels
    return None


def h5_nodata(attrs: Mapping[str, Any]) -> Any:
    """The nodata value an HDF5 dataset declares (:data:`H5_NODATA_ATTRS`), as a Python number; None without."""
    v = next((attrs[k] for k in H5_NODATA_ATTRS if k in attrs), None)
    return v.item() if hasattr(v, "item") and np.size(v) == 1 else v


def _prisma_part(name: str) -> str | None:
    """'Vnir' or 'Swir' for PRISMA's hyperspectral cubes (``.../Data Fields/VNIR_Cube``, ``SWIR_Cube``); else None."""
    base = name.rsplit("/", 1)[-1].lower()
    return {"vnir_cube": "Vnir", "swir_cube": "Swir"}.get(base)


def _nearest(found: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> list[str]:
    """The 1-D numeric datasets named one of ``keys`` (any case), those sharing most of ``name``'s groups first
    (NEON's ``SITE/Reflectance/Metadata/Spectral_Data/Wavelength`` for ``SITE/Reflectance/Reflectance_Data``)."""
    parts = name.split("/")[:-1]

    def shared(path: str) -> int:
        n = 0
        for a, b in zip(path.split("/")[:-1], parts):
            if a != b:
                break
            n += 1
        return n

    hits = [k for k, d in found.items()
            if k.rsplit("/", 1)[-1].lower() in keys and d.ndim == 1 and d.dtype.kind in "iuf"]
    return sorted(hits, key=lambda k: (-shared(k), k))


def h5_wavelength_lists(f: Any, found: Mapping[str, Any], name: str) -> list[BandList]:
    """The wavelength lists file ``f`` carries for its cube ``name``, the most specific first: the cube's own
    ``wavelength(s)`` attribute, PRISMA's root ``List_Cw_Vnir`` / ``List_Cw_Swir`` for its VNIR / SWIR cube (0, the
    value of a band its ``_Flags`` leave unused, read as no wavelength), and 1-D datasets named as a wavelength list
    (:data:`WAVELENGTH_NAMES`), nearest the cube in the file's groups first."""
    ds = found[name]
    lists = []
    for k in ("wavelength", "wavelengths"):
        values = _numbers(ds.attrs.get(k))
        if values is not None:
            lists.append(BandList(values, _text(ds.attrs.get("wavelength_units")), f"its '{k}' attribute", own=True))
    part = _prisma_part(name)
    values = _numbers(f.attrs.get(f"List_Cw_{part}")) if part else None
    if values is not None:
        lists.append(BandList(np.where(values > 0, values, np.nan), "nm", f"root attribute 'List_Cw_{part}'"))
    for k in _nearest(found, name, WAVELENGTH_NAMES):
        units = _text(found[k].attrs.get("units")) or _text(found[k].attrs.get("Units"))
        lists.append(BandList(np.asarray(found[k][()], np.float64), units, f"dataset {k!r}"))
    return lists


def band_axis_by_lists(shape: tuple[int, ...], lists: list[BandList]) -> tuple[int, BandList] | None:
    """The axis of ``shape`` whose length is that of the first wavelength list that fits an axis, with the list;
    None where no list fits one, or the first that fits fits two (a 66 x 66-pixel crop of 66 bands)."""
    for lst in lists:
        axes = [i for i, n in enumerate(shape) if n == lst.values.size]
        if axes:
            return (axes[0], lst) if len(axes) == 1 else None
    return None


def band_axis_fix(name: str, axis: int) -> str:
    """How to open dataset ``name`` with its bands on ``axis``, in Python and on the command line."""
    return f"variable={name!r}, band_axis={axis} (--variable {shlex.quote(name)} --band-axis {axis})"


def cube_hints(f: Any, found: Mapping[str, Any], cubes: list[str]) -> str:
    """For a file of several cubes: those whose band axis a wavelength list tells, with how to open each."""
    hints = []
    for name in (k for k in cubes if found[k].ndim == 3):  # (a stack's length-1 axes would shift the axis named)
        shape = tuple(found[name].shape)
        match = band_axis_by_lists(shape, h5_wavelength_lists(f, found, name))
        if match is not None:
            axis, lst = match
            hints.append(f"{name!r} {shape}, whose axis {axis} holds the {shape[axis]} wavelengths of {lst.source}: "
                         f"{band_axis_fix(name, axis)}")
    return ("; its cubes with band wavelengths: " + "; ".join(hints)) if hints else ""


def h5_good_bands(f: Any, found: Mapping[str, Any], name: str, bands: int, where: str) -> list[int] | None:
    """The bad band list (1 good, 0 bad: ENVI's ``bbl``) file ``f`` declares for cube ``name`` of ``bands`` bands:
    its ``good_wavelengths`` attribute (Planet Tanager), PRISMA's root ``List_Cw_Vnir_Flags`` / ``_Swir_Flags``, or a
    1-D ``good_wavelengths`` dataset (EMIT's); None without one. A list of another length or of values other than 0
    and 1 warns and is left out: the bad bands' fill then masks every pixel."""
    ds = found[name]
    part = _prisma_part(name)
    cands = [(ds.attrs.get(k), f"'{k}' attribute") for k in _GOOD_BANDS if k in ds.attrs]
    if part and f"List_Cw_{part}_Flags" in f.attrs:
        cands.append((f.attrs[f"List_Cw_{part}_Flags"], f"root attribute 'List_Cw_{part}_Flags'"))
    cands += [(found[k][()], f"dataset {k!r}") for k in _nearest(found, name, _GOOD_BANDS)]
    for value, source in cands:
        flags = _numbers(value)
        if flags is not None and flags.size == bands and np.isin(flags, (0, 1)).all():
            log.info("%s: bad band list from its %s (%d of %d bands bad)", where, source, int((flags == 0).sum()),
                     bands)
            return [int(v) for v in flags]
        problem = (f"lists {flags.size} values for {bands} bands" if flags is not None and flags.size != bands
                   else "holds values other than 0 (bad) and 1 (good)")
        warnings.warn(f"{where}: its {source} {problem}, so every band is taken as good (the nodata value in a bad "
                      "band masks its pixels); pass a scene with a 'bbl' band coordinate in Python "
                      "(scene.assign_coords(bbl=('band', flags)))", stacklevel=user_stacklevel())
        return None
    return None


def prisma_scaling(f: Any, name: str, dtype: np.dtype, bands: int,
                   where: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """PRISMA L2's DN scaling of its VNIR / SWIR cube as per-band ``(scales, offsets)`` (reflectance = L2ScaleMin +
    DN * (L2ScaleMax - L2ScaleMin) / 65535, from the root attributes ``L2Scale{Vnir,Swir}{Min,Max}``), kept in the
    encoding as GDAL's band scales are: values read as stored, the scale shown by ``info``, recorded by training and
    compared with the model's by classify. None for other cubes; a scaling that is not two finite numbers, Max above
    Min, on a uint16 cube warns and is left out."""
    part = _prisma_part(name)
    keys = (f"L2Scale{part}Min", f"L2Scale{part}Max")
    if part is None or not all(k in f.attrs for k in keys):
        return None
    low, high = (_numbers(np.atleast_1d(f.attrs[k])) for k in keys)
    if low is None or high is None or low.size != 1 or high.size != 1 or not np.isfinite([low[0], high[0]]).all() \
            or high[0] <= low[0] or np.dtype(dtype) != np.uint16:
        shown = [np.asarray(f.attrs[k]).tolist() for k in keys]
        warnings.warn(f"{where}: its root attributes {keys[0]} = {shown[0]!r} and {keys[1]} = {shown[1]!r} on a "
                      f"{np.dtype(dtype)} cube are not PRISMA's L2 scaling (two numbers, "
                      "Max above Min, of a uint16 cube), so its values are read as stored with no declared scale: a "
                      "model trained on another product's values cannot check them", stacklevel=user_stacklevel())
        return None
    scale, offset = (high[0] - low[0]) / 65535.0, float(low[0])
    log.info("%s: PRISMA L2 scaling %s..%s (reflectance = %g + DN * %g) kept as its band scale/offset, not applied: "
             "values are read as stored", where, f"{low[0]:g}", f"{high[0]:g}", offset, scale)
    return (scale,) * bands, (offset,) * bands


def good_wavelengths_bbl(da: xr.DataArray, source: xr.Dataset | None = None) -> xr.DataArray:
    """``da`` with a ``bbl`` band coordinate from a ``good_wavelengths`` one (or a 1-D variable of ``source`` on the
    band dim) of 0 and 1 per band, as emit_tools' orthorectified EMIT and Tanager carry it, where it has no bbl."""
    if "bbl" in da.coords:
        return da
    c = da.coords.get("good_wavelengths")
    if c is None and source is not None and "good_wavelengths" in source.variables:
        c = source["good_wavelengths"]
    if c is None or c.ndim != 1 or c.size != da.sizes["band"] or (c.dims != ("band",) and c.dims[0] not in BAND_NAMES):
        return da
    flags = np.asarray(c.values)
    if flags.dtype.kind not in "iufb" or not np.isin(flags, (0, 1)).all():
        return da
    log.info("bad band list from its 'good_wavelengths' (%d of %d bands bad)", int((flags == 0).sum()), flags.size)
    return with_bbl(da, [int(v) for v in flags])


_SWATH_DIMS = ("downtrack", "crosstrack")  # EMIT's L1B/L2A dims: lines along and across the track


def sensor_geometry_error(path: Path, var: xr.DataArray, where: str) -> MissingSpatialDimsError | None:
    """The error for a swath in sensor geometry (EMIT's ``downtrack`` x ``crosstrack``), which no map grid places:
    it is to be orthorectified with the file's geometry lookup table first. None for other variables."""
    if not all(d in var.dims for d in _SWATH_DIMS):
        return None
    glt = _glt_names(path)
    band = next((str(d) for d in var.dims if d not in _SWATH_DIMS), "bands")
    rename = "downtrack='y', crosstrack='x'" + ("" if band.lower() in BAND_NAMES else f", {band}='band'")
    return MissingSpatialDimsError(
        f"{where} has dims {tuple(map(str, var.dims))}: it is in sensor geometry (EMIT's swath, lines along and "
        "across its track as the instrument saw them), not on a map grid, so no map of it could be placed. "
        "Orthorectify it first with its geometry lookup table"
        + (f" ({' and '.join(glt)})" if glt else " (the file's location/glt_x and glt_y)")
        + ", e.g. with NASA's emit_tools: emit_xarray(path, ortho=True).to_netcdf('ortho.nc'), then classify "
        "ortho.nc; or classify the swath unplaced in Python: hsi_engine.classify(xr.open_dataset(path)"
        f"[{str(var.name)!r}].rename({rename}), model)")


def _glt_names(path: Path) -> list[str]:
    """The GLT variables (``location/glt_x``, ``location/glt_y``) an EMIT NetCDF holds, as ``group/name``."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return []
        with h5py.File(path, "r") as f:
            return [k for k in ("location/glt_x", "location/glt_y") if k in f]
    except (OSError, RuntimeError, ValueError):
        return []
