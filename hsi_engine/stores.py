"""Self-describing array stores: NetCDF, zarr, HDF5, MATLAB and NumPy ``.npy`` (with a wavelength sidecar);
the variable picked, CF packing decoded, a store's chunk limits checked."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ssrn.errors import first_line

from .cube import (bare_dataarray, canonical_dim, cube_like, default_chunks, dims_from_attr, finish_scene, human_bytes,
                   named_wavelengths, nan_capable, normalise_dims, resolve_dims, with_bbl)
from .errors import HSIEngineError, SceneError, SceneNotFoundError
from .logs import warnings_ignored
from .products import (H5_NODATA_ATTRS, BandList, band_axis_by_lists, band_axis_fix, cube_hints, good_wavelengths_bbl,
                       h5_dims_attr, h5_good_bands, h5_nodata, h5_wavelength_lists, prisma_scaling,
                       sensor_geometry_error)
from .wavelengths import (WAVELENGTH_NAMES, inverse_spectral_unit, listed_wavelengths, not_wavelengths, to_nm,
                          warn_wavelengths, wavelength_side_files, wavelengths_in_names, wavelengths_nm)

log = logging.getLogger(__name__)


def zipped_zarr(p: Path) -> SceneError:
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


_LISTED = 6  # variables named in an error before the count
_FLAT_FIX = ("; its variables are 2-D images: stack the bands into one cube in Python "
             "(hsi_engine.classify(xr.open_dataset(path).to_array('band'), model)), or convert the file to a "
             "multi-band GeoTIFF with GDAL (gdalbuildvrt -separate, then gdal_translate)")
_GDAL_BAND = re.compile(r"Band(\d+)")


def gdal_band_stack(ds: xr.Dataset, where: str, *, decode: bool) -> xr.DataArray | None:
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
    cube = cube.assign_coords(band=np.arange(1, len(bands) + 1))
    return _gdal_band_coords(cube, bands, where)


def _per_band_numbers(bands: Sequence[xr.DataArray], key: str) -> np.ndarray | None:
    """Attribute ``key`` of every band as numbers (GDAL's netCDF driver writes band metadata as numbers, or as text
    where it reads as none); None where a band lacks it or holds no single number."""
    values = []
    for b in bands:
        v = b.attrs.get(key)
        if v is None or isinstance(v, bool) or np.ndim(v) > 1 or np.size(v) != 1:
            return None
        try:
            x = np.asarray(v).ravel()[0]
            # a float32 as written (GDAL stores 419.62 as float32 where that round-trips, 400.02 as float64)
            values.append(float(str(x)) if isinstance(x, np.float32) else float(x))
        except (TypeError, ValueError):
            return None
    return np.asarray(values, np.float64)


def _gdal_band_coords(cube: xr.DataArray, bands: Sequence[xr.DataArray], where: str) -> xr.DataArray:
    """``cube`` with the band metadata that ``gdal_translate -of netCDF`` writes as attributes of each ``BandN``
    (a GeoTIFF's or ENVI file's per-band ``wavelength`` with ``wavelength_units``, ``fwhm``, ``bbl``), or band names
    such as '460.0 nm' in their ``long_name``, as band coordinates, as the GeoTIFF and ENVI readers give them:
    concatenated, they were dropped as attributes that differ, and the scene had no wavelengths and no bad bands
    (its bad bands' nodata then masked every pixel)."""
    unit_set = {str(b.attrs.get("wavelength_units", "")).strip() for b in bands}
    units = (next(iter(unit_set)) or None) if len(unit_set) == 1 else None
    raw = _per_band_numbers(bands, "wavelength")
    wl = None
    if raw is not None and len(unit_set) > 1:
        warn_wavelengths(where, f"its bands' 'wavelength_units' attributes differ ({sorted(unit_set)})",
                         "the variables' wavelength_units (one unit for every band)")
        raw = None
    elif raw is not None:
        wl = wavelengths_nm(raw, units)
    else:
        wl = wavelengths_in_names([b.attrs.get("long_name") if isinstance(b.attrs.get("long_name"), str) else None
                                   for b in bands])
    if wl is not None:
        cube = cube.assign_coords(wavelength=("band", np.asarray(wl, np.float64)))
        cube["wavelength"].attrs["units"] = "nm"
        fwhm = _per_band_numbers(bands, "fwhm")
        if fwhm is not None and raw is not None and np.all(raw != 0) and not inverse_spectral_unit(units):
            cube = cube.assign_coords(fwhm=("band", fwhm * (np.asarray(wl) / raw)))  # in the wavelengths' unit
            cube["fwhm"].attrs["units"] = "nm"
    bbl = _per_band_numbers(bands, "bbl")
    if bbl is not None:
        cube = with_bbl(cube, [int(v) for v in bbl])
    found = [k for k in ("wavelength", "fwhm", "bbl") if k in cube.coords]
    if found:
        log.info("%s: band %s read from its variables' attributes", where, ", ".join(found))
    for k in ("wavelength", "wavelength_units", "fwhm", "bbl"):
        cube.attrs.pop(k, None)  # (left where every band held the same)
    return cube


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


def pick_variable(ds: xr.Dataset, where: str, variable: str | None,
                   how: str = "open_scene(path, variable=NAME) (--variable NAME on the command line)") -> xr.DataArray:
    if variable is not None:
        if variable not in ds.data_vars:
            names = sorted(map(str, ds.data_vars))
            listed = str(names) if len(names) <= _LISTED else f"{', '.join(names[:_LISTED])} ... ({len(names)} in all)"
            raise SceneError(f"{where} has no variable {variable!r}; variables: {listed}. Pass one of them (a NetCDF4 "
                             "group's as 'GROUP/NAME')")
        return ds[variable]
    cands = [k for k, v in ds.data_vars.items() if cube_like(v)]  # (time=1, band, y, x) is a cube too
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
        stacks = {k: [(str(d), n) for d, n in v.sizes.items() if canonical_dim(str(d)) is None and n > 1]
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
    shown = where or f"variable {da.name!r}"
    if valid is not None and valid[0] > valid[1]:  # every pixel would be nodata: a map of class 0, exit 0
        raise SceneError(f"{shown} declares {valid[2]} {valid[0]:g} to {valid[1]:g}: its low end above its high one, "
                         "so every value would be outside it and read as nodata; fix the attribute (low, high) or "
                         "remove it")
    for k in ("scale_factor", "add_offset"):
        if k in da.attrs and np.asarray(da.attrs[k]).dtype.kind not in "iuf":  # text: xarray's decode failed on it
            raise SceneError(f"{shown} declares {k} = {str(da.attrs[k])[:40]!r}, which is not a number; fix the "
                             "attribute (a number, as CF packing has it) or remove it")
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
        data = out.data.astype(nan_capable(out.dtype))
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


def open_netcdf(path: Path, chunks, variable: str | None) -> xr.DataArray:
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
        raise _netcdf_open_error(path, e) from None
    where = str(path) if group is None else f"{path} (group {group})"
    if variable is None and not any(cube_like(v) for v in ds.data_vars.values()):
        stack = gdal_band_stack(ds, where, decode=True)
        if stack is not None:
            da = normalise_dims(stack, f"{where}'s variables Band1..Band{stack.sizes['band']}")
            da = finish_scene(keep_grid_mapping(da, ds), path, "netcdf", chunks=chunks)
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
    var = pick_variable(ds, where, variable)
    swath = sensor_geometry_error(path, var, f"{where}'s variable {var.name!r}")
    if swath is not None:
        ds.close()
        raise swath
    _check_netcdf4_chunks(path, group, var, where)
    var = _decode_packed(var, f"{where}'s variable {var.name!r}")
    da = normalise_dims(var, f"{where}'s variable {var.name!r}")
    da = finish_scene(keep_grid_mapping(da, ds), path, "netcdf", chunks=chunks)
    da.set_close(ds.close)  # (closed by a run that opened it; else when collected)
    return da


# what a file named .nc that is not NetCDF is, by its first bytes: (signature, what it is, the fix)
_NOT_NETCDF = ((b"II*\x00", "a TIFF image", "rename it to .tif"), (b"MM\x00*", "a TIFF image", "rename it to .tif"),
               (b"II+\x00", "a BigTIFF image", "rename it to .tif"),
               (b"MM\x00+", "a BigTIFF image", "rename it to .tif"),
               (b"\x0e\x03\x13\x01", "an HDF4 file, which hsi-engine does not read",
                "convert it to GeoTIFF (gdal_translate) or NetCDF4"),
               (b"GRIB", "a GRIB file, which hsi-engine does not read",
                "convert it to NetCDF (cdo -f nc copy IN OUT.nc)"),
               (b"PK\x03\x04", "a zip archive", "unzip it and pass the file inside"),
               (b"\x1f\x8b", "a gzip-compressed file", "gunzip it and pass the file inside"),
               (b"MATLAB", "a MATLAB file", "rename it to .mat"), (b"\x93NUMPY", "a NumPy array", "rename it to .npy"))


def _netcdf_open_error(path: Path, e: BaseException) -> SceneError:
    """The error for a file xarray could not open as NetCDF: one naming what the file is where it does not start as
    NetCDF (classic 'CDF') or NetCDF4 (HDF5) does, for xarray's own says only that no backend matched and to pass
    an ``engine``, which neither open_scene nor the command line takes; else xarray's reason, the file damaged."""
    import h5py

    try:
        with open(path, "rb") as f:
            head = f.read(512)
        hdf5 = h5py.is_hdf5(path)
    except OSError:
        head, hdf5 = b"CDF", False  # unreadable now: xarray's reason stands
    if hdf5 or head.startswith(b"CDF"):
        return SceneError(f"{path} could not be opened as NetCDF ({first_line(e)}); is the file complete and "
                          "undamaged? Fetch or write it again")
    expected = "expected a NetCDF file, which starts with 'CDF' (NetCDF3) or HDF5's signature (NetCDF4)"
    if not head:
        return SceneError(f"{path} is empty (0 bytes); {expected}: fetch or write it again")
    kind = next(((what, fix) for sig, what, fix in _NOT_NETCDF if head.startswith(sig)), None)
    if kind is not None:
        return SceneError(f"{path} is not NetCDF but {kind[0]} (it starts with {head[:4]!r}); {expected}: {kind[1]}")
    if all(c >= 32 or c in b"\t\r\n\f" for c in head):  # no control bytes: text (UTF-8 or another encoding)
        text = head.decode("utf-8", errors="replace")
        line = text.strip().splitlines()[0][:60] if text.strip() else ""
        page = " (an HTML page: a failed download?)" if text.lstrip()[:1] == "<" else ""
        return SceneError(f"{path} is not NetCDF but text{page}, starting {line!r}; {expected}: fetch or write the "
                          "file again")
    return SceneError(f"{path} is not a NetCDF file: it starts with {head[:8]!r}; {expected}. Pass the scene's NetCDF "
                      "file, or give a file of another format its own suffix (.tif, .h5, .hdr, .mat, .npy)")


def _check_netcdf4_chunks(path: Path, group: str | None, var: xr.DataArray, where: str) -> None:
    """:func:`check_h5_chunks` on a NetCDF4 (HDF5) file's variable; nothing for NetCDF3, which has no chunks."""
    import h5py

    try:
        f = h5py.File(path, "r") if h5py.is_hdf5(path) else None
    except (OSError, RuntimeError, ValueError):
        return  # the reader itself reports a damaged file
    if f is None:
        return
    with f:
        dset = f.get(f"{group}/{var.name}" if group else str(var.name))
        if isinstance(dset, h5py.Dataset):
            declared = any(k in var.attrs or k in var.encoding for k in ("_FillValue", "missing_value", "nodata"))
            check_h5_chunks(dset, f"{where}'s variable {var.name!r}", declared)


def keep_grid_mapping(da: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """Carry the grid-mapping variable (``spatial_ref``) as a coordinate so ``da.rio.crs`` works, and the band
    wavelengths and ``good_wavelengths`` flags (as ``bbl``) that ``ds`` holds beside the cube."""
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
        da = da.assign_coords(wavelength=("band", to_nm(wl.values, wl.attrs.get("units"))))
        da["wavelength"].attrs["units"] = "nm"
    return named_wavelengths(good_wavelengths_bbl(da, ds), ds)


def open_zarr(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import zarr

    if path.is_file():
        import zipfile

        if zipfile.is_zipfile(path):
            raise zipped_zarr(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several types for a missing/corrupt store
        if isinstance(e, MemoryError) or "can't start new thread" in str(e):  # this process's want, not the store's
            raise
        from .outputs import zarr_unusable

        why = zarr_unusable() if isinstance(e, TypeError) else None
        raise SceneError(f"cannot read the zarr store {path}: {why}" if why else
                         f"{path} is not a readable zarr store ({type(e).__name__}: {e})") from None
    if isinstance(node, zarr.Array):
        return _zarr_bare_array(node, path, chunks, band_axis)
    if variable is not None and "/" in variable.strip("/"):  # a cube in a subgroup ('tile_0_0/cube'), as in NetCDF4
        group, _, name = variable.strip("/").rpartition("/")
        if not (path / group).is_dir():
            raise SceneError(f"{path} has no group {group!r} (from variable={variable!r}); groups: "
                             f"{sorted(k for k, _ in node.groups())}")
        return open_zarr(path / group, chunks, name, band_axis)
    # a group: xarray-written (dims recorded), else fall back to its single 3-D array
    try:
        members = list(node.arrays())  # (each array's zarr.json / .zarray is read here: a broken one raises)
    except Exception as e:  # noqa: BLE001 - JSONDecodeError, a codec zarr does not know, an invalid shape...
        if isinstance(e, MemoryError):
            raise
        raise SceneError(f"{path} holds an array whose metadata zarr cannot read ({type(e).__name__}: "
                         f"{str(e)[:200]}): the store is damaged or written by another tool; write it again (e.g. "
                         "xarray's to_zarr)") from None
    for name, arr in members:  # xarray opens each of them
        _check_zarr_chunks(arr, path / name)
    try:
        with warnings_ignored(RuntimeWarning, ".*consolidated metadata"):
            ds = xr.open_dataset(str(path), engine="zarr", chunks={}, decode_coords="all", mask_and_scale=False,
                                 consolidated=None)
    except (KeyError, ValueError, TypeError):
        ds = None
    if ds is not None and ds.data_vars:
        var = pick_variable(ds, str(path), variable)
        var = _decode_packed(var, f"{path}'s variable {var.name!r}")
        da = normalise_dims(var, f"{path}'s variable {var.name!r}")
        da = keep_grid_mapping(da, ds)
        da = finish_scene(da, path, "zarr", chunks=chunks)
        da.set_close(ds.close)
        return da
    arrays = {k: a for k, a in node.arrays() if a.ndim == 3}
    groups = sorted(k for k, _ in node.groups())
    in_groups = (f"; its groups {groups[:8]}{' ...' if len(groups) > 8 else ''} hold arrays: pass "
                 f"variable='{groups[0]}/NAME' (--variable {groups[0]}/NAME), or open {path / groups[0]}"
                 if groups else "")
    if variable is not None:
        if variable not in arrays:
            raise SceneError(f"{path} has no 3-D array {variable!r}; arrays: {sorted(k for k, _ in node.arrays())}"
                             + in_groups)
        arrays = {variable: arrays[variable]}
    if len(arrays) != 1:
        raise SceneError(f"{path}: expected exactly one 3-D array in the zarr group, found {sorted(arrays)}"
                         + (in_groups if not arrays and groups else "; pass variable=NAME (--variable NAME)"))
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
        raise SceneError(f"zarr array {path} declares chunks {list(chunk_shape)} ({human_bytes(chunk_bytes)} "
                         f"decoded per chunk) for a {human_bytes(math.prod(shape) * itemsize)} array of shape "
                         f"{list(shape)}: every read would decode a whole chunk (a corrupt or hostile store); rewrite "
                         "it with chunks of at most its shape, e.g. with xarray's to_zarr")
    _chunk_count(f"zarr array {path}", shape, chunk_shape, "store")


def _chunk_count(where: str, shape: Sequence[int], chunks: Sequence[int], kind: str) -> int:
    """The number of chunks of ``shape`` in ``chunks``; a SceneError beyond ``MAX_CHUNKS`` (dask would index each
    before the first read: a few-KB file held a run for minutes)."""
    count = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks))
    if count > MAX_CHUNKS:
        raise SceneError(f"{where} declares shape {list(shape)} in {count:,} chunks of {list(chunks)}, more than the "
                         f"{MAX_CHUNKS:,} a scene may have (reading it would index every chunk first): a corrupt or "
                         f"hostile {kind}; if it is real, rewrite it with larger chunks")
    return count


def check_h5_chunks(ds: Any, where: str, declared: bool) -> None:
    """Refuse an HDF5 (or NetCDF4) dataset of more than ``MAX_CHUNKS`` chunks (dask indexed each: a 6 KB file
    held a run for minutes), or with chunks never written (an interrupted write: HDF5 reads them as its fill value,
    0 by default, which was classified as land cover without a word) unless ``declared`` (a nodata value masks
    the fill)."""
    if not ds.chunks:
        return
    count = _chunk_count(where, ds.shape, ds.chunks, "file")
    if declared or count > 1_000_000 or not math.prod(ds.shape):
        return
    try:
        written = ds.id.get_num_chunks()
    except Exception:  # noqa: BLE001 - an HDF5 library without it: nothing to compare
        return
    if written < count:
        raise SceneError(f"{where}: {count - written:,} of its {count:,} chunks were never written (an interrupted "
                         f"write or copy?), and HDF5 reads them as its fill value {ds.fillvalue}, which would be "
                         "classified as land cover: write the file again, or declare the fill as its nodata (a "
                         "_FillValue attribute) to make those pixels class 0")


def _zarr_bare_array(arr, path: Path, chunks, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    dims = None
    meta = getattr(arr, "metadata", None)
    if getattr(meta, "dimension_names", None):
        dims = tuple(meta.dimension_names)
    _check_zarr_chunks(arr, path)
    attrs = dict(arr.attrs)
    dims = dims or dims_from_attr(attrs.get("_ARRAY_DIMENSIONS")) or dims_from_attr(attrs.get("dims"))
    data = dsa.from_zarr(arr)
    da = bare_dataarray(data, dims, str(path), band_axis=band_axis, default_last=False)
    key = "wavelength" if attrs.get("wavelength") or "wavelengths" not in attrs else "wavelengths"
    wl = listed_wavelengths(attrs.get(key), attrs.get("wavelength_units"), str(path), f"'{key}' attribute",
                             "'wavelength_units' attribute", f"the attributes ('{key}' a list of numbers, "
                             "'wavelength_units' a unit name)")
    nodata = attrs.get("nodata", attrs.get("_FillValue"))
    return finish_scene(da, path, "zarr", wavelengths=wl, nodata=nodata, chunks=chunks)


class _H5Source:
    """A picklable array-like over one HDF5 dataset: each read opens the file (dask workers included)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype) -> None:
        # absolute: each read opens the file, and the process may change directory between reads
        self.path, self.name, self.shape, self.dtype = os.path.abspath(path), name, tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key):
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.name][key]


def open_hdf5(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
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


def _h5_text(value: Any) -> str | None:
    """An HDF5 text attribute (bytes, str or a 1-element array of either) as str; None for anything else."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip("\x00 ").strip() if isinstance(value, str) else None


# the NAME netCDF4 gives the dimension scale of a dim that has no coordinate variable: the dim is the scale's name
_NC_PHONY_SCALE = "This is a netCDF dimension but not a netCDF variable"


def _h5_dim_scales(ds: Any) -> list[tuple[str | None, Any]]:
    """Per axis of HDF5 dataset ``ds``: its dim's name from the HDF5 dimension scale attached to it (its
    ``DIMENSION_LIST``; the scale's ``NAME``, else its dataset name, as netCDF4 and h5py's ``make_scale`` write
    them), and that scale dataset; ``(None, None)`` for an axis without one. Unreadable references give none."""
    out: list[tuple[str | None, Any]] = []
    for i in range(ds.ndim):
        try:
            scale = ds.dims[i][0] if len(ds.dims[i]) else None
        except (OSError, RuntimeError, KeyError, ValueError, TypeError):  # a dangling reference
            scale = None
        if scale is None:
            out.append((None, None))
            continue
        named = _h5_text(scale.attrs.get("NAME"))
        if not named or named.startswith(_NC_PHONY_SCALE):
            named = str(scale.name).rsplit("/", 1)[-1]
        out.append((named or None, scale))
    return out


def _h5_scale_dims(scales: list[tuple[str | None, Any]], unit: list[int]) -> tuple[str, ...] | None:
    """The dims of a dataset from its dimension scales (:func:`_h5_dim_scales`), its length-1 axes ``unit``
    included, when the others read as band, y and x (one of them unnamed, or named otherwise, is the one left);
    else None (the shape is guessed from, as before)."""
    names = [n for n, _ in scales]
    axes = [i for i in range(len(names)) if i not in unit]
    if len(axes) != 3:
        return None
    canon = {i: canonical_dim(names[i]) if names[i] else None for i in axes}
    known = [c for c in canon.values() if c is not None]
    if len(known) < 2 or len(set(known)) != len(known):
        return None
    if len(known) == 2:
        left = ({"band", "y", "x"} - set(known)).pop()
        canon = {i: c or left for i, c in canon.items()}
    return tuple(str(canon[i]) if i in canon else (names[i] or f"dim_{i}") for i in range(len(names)))


def _h5_scale_wavelengths(found: Mapping[str, Any], scale: Any, bands: int,
                          where: str) -> tuple[np.ndarray | None, str] | None:
    """The wavelengths (nm) that go with a cube's band dimension scale ``scale``: the scale itself where it is a
    wavelength coordinate (a NetCDF4 dim ``wavelength``), else a 1-D dataset named as a wavelength list
    (:data:`WAVELENGTH_NAMES`) on that scale (NetCDF4's ``wavelength`` coordinate of dim ``band``), in its
    ``units``; ``(None, name)`` where its units say they are not wavelengths (``Index``), None where there is
    none."""
    def names_wavelengths(ds: Any) -> bool:
        return str(ds.name).rsplit("/", 1)[-1].lower() in WAVELENGTH_NAMES

    def on_scale(ds: Any) -> bool:
        try:
            return ds == scale or (len(ds.dims[0]) > 0 and ds.dims[0][0] == scale)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError):
            return False

    phony = (_h5_text(scale.attrs.get("NAME")) or "").startswith(_NC_PHONY_SCALE)
    cands = [scale] if names_wavelengths(scale) and not phony else []
    cands += [d for d in found.values() if d.ndim == 1 and d.shape[0] == bands and d != scale
              and names_wavelengths(d) and on_scale(d)]
    for ds in cands:
        if ds.shape != (bands,) or ds.dtype.kind not in "iuf":
            continue
        short = str(ds.name).rsplit("/", 1)[-1]
        units = _h5_text(ds.attrs.get("units")) or {"wavelength_nm": "nm", "wavelength_um": "um"}.get(short.lower())
        wl = wavelengths_nm(np.asarray(ds[()], np.float64), units)
        log.info("%s: wavelengths from its band dimension's %r (%s)", where, str(ds.name), units or "no units")
        return wl, str(ds.name)
    return None


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
            # (PRISMA: its VNIR and SWIR cubes, bands on axis 1 as their wavelength lists tell)
            raise SceneError(f"{path}: expected one 3-D dataset (or one named 'cube'); found {shapes}. "
                             "Pass variable=NAME (--variable NAME)" + cube_hints(f, found, cubes) + ".")
    ds = found[name]
    unit = _h5_unit_axes(ds.shape)
    if ds.ndim != 3 and not unit:
        raise SceneError(f"{path}:{name} has shape {ds.shape}; expected a 3-D cube (band, y, x), or one with "
                         "extra length-1 dims. Pass the dataset that holds the cube with variable=NAME "
                         "(--variable NAME), or write the cube to its own dataset")
    dims = h5_dims_attr(ds.attrs)
    scales = _h5_dim_scales(ds)
    if dims is None or len(dims) != ds.ndim or not all(dims):  # (h5py leaves a label not set '')
        dims = _h5_scale_dims(scales, unit) or dims  # a NetCDF4 file named .h5: its dims are dimension scales
    shape = tuple(n for i, n in enumerate(ds.shape) if i not in unit)
    if unit:
        named = dims is not None and len(dims) == ds.ndim
        log.info("%s:%s: dropping its length-1 dims %s", path, name,
                 ", ".join(dims[i] if named else f"axis {i}" for i in unit))
        dims = tuple(d for i, d in enumerate(dims) if i not in unit) if named else None
    lists = h5_wavelength_lists(f, found, name)
    if band_axis is None and (dims is None or len(dims) != 3):
        by_list = band_axis_by_lists(shape, lists)  # (PRISMA's (lines, bands, samples): never guessed, axis 0 or 2)
        if by_list is not None:
            band_axis = by_list[0]
            log.info("%s:%s: its axis %d (length %d) read as its band axis: the length of the wavelengths in %s",
                     path, name, band_axis, shape[band_axis], by_list[1].source)
    dims = resolve_dims(shape, dims, f"{path}:{name}", band_axis=band_axis, default_last=False)
    check_h5_chunks(ds, f"{path}:{name}", any(k in ds.attrs for k in (*H5_NODATA_ATTRS, "missing_value")))
    from dask.base import tokenize

    token = tokenize(str(path.resolve()), ds.name, os.stat(path).st_mtime_ns)
    if ds.chunks:
        store_chunks = ds.chunks
    else:
        inner = iter(default_chunks(shape, dims))
        store_chunks = tuple(1 if i in unit else next(inner) for i in range(ds.ndim))
    data = dsa.from_array(_H5Source(path, ds.name, ds.shape, ds.dtype), chunks=store_chunks, lock=True,
                          name=f"hdf5-{token}", meta=np.empty((0,) * ds.ndim, ds.dtype))
    if unit:
        data = data[tuple(0 if i in unit else slice(None) for i in range(ds.ndim))]  # (band, y, x) in some order
    da = bare_dataarray(data, dims, f"{path}:{name}", band_axis=None, default_last=False)
    wl = None
    axes = [i for i in range(ds.ndim) if i not in unit]  # the file's axes that hold dims (band, y, x in some order)
    band = next((axes[k] for k, d in enumerate(dims) if canonical_dim(d) == "band"), None)
    scale = scales[band][1] if band is not None else None
    wl_set = None if scale is None else _h5_scale_wavelengths(found, scale, da.sizes["band"], f"{path}:{name}")
    own = next((k for k in ("wavelength", "wavelengths") if k in ds.attrs), None)
    if wl_set is not None:
        wl = wl_set[0]
    elif own is not None:  # the dataset's own attributes, as a zarr array's are read
        wl = listed_wavelengths(_h5_attr(ds.attrs[own]), _h5_attr(ds.attrs.get("wavelength_units")),
                                f"{path}:{name}", f"'{own}' attribute", "'wavelength_units' attribute",
                                f"the dataset's attributes ('{own}' one number per band, 'wavelength_units' a unit "
                                "name)")
        if wl is not None and len(wl) != da.sizes["band"]:
            match = band_axis_by_lists(shape, [BandList(np.asarray(wl), None, "")])
            fix = f"; its axis {match[0]} has that length: open it with {band_axis_fix(name, match[0])}" \
                if match is not None else ""
            warn_wavelengths(f"{path}:{name}", f"its '{own}' attribute lists {len(wl)} values for "
                             f"{da.sizes['band']} bands{fix}", f"the dataset's '{own}' attribute (one number per band)")
            wl = None
    if wl is None and wl_set is None:  # (an unusable attribute of the cube's own leaves the file's lists to read)
        lst = next((b for b in lists if not b.own and b.values.size == da.sizes["band"]), None)
        if lst is not None:
            wl = wavelengths_nm(lst.values, lst.units)
            log.info("%s:%s: wavelengths from its %s (%s)", path, name, lst.source, lst.units or "no units")
    bbl = h5_good_bands(f, found, name, da.sizes["band"], f"{path}:{name}")
    cf = {k: _h5_attr(ds.attrs[k]) for k in ("_FillValue", *_PACKING_ATTRS, *_VALID_ATTRS) if k in ds.attrs}
    if _valid_bounds(cf) is not None or any(k in cf for k in _PACKING_ATTRS):
        # CF packing as the NetCDF path decodes it: a NetCDF4 file named .h5 gave a one-class map without a word
        da = _decode_packed(da.rename(name.rsplit("/", 1)[-1]).assign_attrs(cf), f"{path}:{name}")
        return finish_scene(da, path, "hdf5", wavelengths=wl, chunks=chunks, bbl=bbl)
    # named for its dataset, as the packed one above and a NetCDF/zarr variable are (a dask token had been its name
    # in reprs and errors)
    da = da.rename(name.rsplit("/", 1)[-1])
    packed = prisma_scaling(f, name, ds.dtype, da.sizes["band"], f"{path}:{name}")
    if packed is not None:  # as GDAL's band scales are kept: not applied, compared with the model's by classify
        da.encoding["scales"], da.encoding["offsets"] = packed
    return finish_scene(da, path, "hdf5", wavelengths=wl, nodata=h5_nodata(ds.attrs), chunks=chunks, bbl=bbl)


def open_matlab(path: Path, chunks, variable: str | None, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    from ssrn.data import DataError, DataNotFoundError, load_mat_array

    try:
        arr, key = load_mat_array(path, [variable] if variable else None, ndim=3, what="scene")
    except DataNotFoundError as e:
        raise SceneNotFoundError(str(e)) from None
    except DataError as e:
        raise SceneError(_matlab_problem(path, variable, e)) from None
    except TypeError as e:  # a v7.3 struct (an HDF5 group) named by variable=: the loader reads it as an array
        shapes = _mat_variables(path) or {}
        if variable is None or not any(k.lower() == variable.lower() and v is None for k, v in shapes.items()):
            raise
        raise SceneError(_matlab_problem(path, variable, e)) from None
    # MATLAB scenes are stored (rows, cols, bands): band-last unless the shape or band_axis says otherwise
    dims = resolve_dims(arr.shape, None, f"{path}:{key}", band_axis=band_axis, default_last=True)
    data = dsa.from_array(arr, chunks=default_chunks(arr.shape, dims))
    da = bare_dataarray(data, dims, f"{path}:{key}", band_axis=None, default_last=True)
    da.name = key
    return finish_scene(da, path, "matlab", wavelengths=_sidecar_wavelengths(path), chunks=chunks)


def _mat_variables(path: Path) -> dict[str, tuple[int, ...] | None] | None:
    """Each variable of a .mat file with its shape as MATLAB shows it (None for a v7.3 struct), read from the
    variables' headers only; None where the file cannot be listed (a damaged file: its own error says so)."""
    import h5py
    import scipy.io

    try:
        if h5py.is_hdf5(path):  # v7.3: HDF5, stored column-major (the shape reversed)
            with h5py.File(path, "r") as f:
                return {k: tuple(reversed(v.shape)) if isinstance(v, h5py.Dataset) else None
                        for k, v in f.items() if not k.startswith("#")}
        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(str(path))}
    except Exception:  # noqa: BLE001 - unlistable: the loader's error names the problem
        return None


def _matlab_problem(path: Path, variable: str | None, e: Exception) -> str:
    """The error for a .mat scene the loader refused: where the problem is which variable holds the cube (none, or
    several, 3-D; ``variable`` missing or not 3-D), one naming the file's variables and the fix; else the loader's
    own (a damaged file, or a cube that cannot be read: no variable= helps there)."""
    shapes = _mat_variables(path)
    if shapes is None:
        return str(e)

    def shown(names: Sequence[str]) -> str:
        text = ", ".join(f"{k} ({' x '.join(map(str, shapes[k])) if shapes[k] is not None else 'struct'})"
                         for k in names[:_LISTED])
        return text + (f" ... ({len(names)} in all)" if len(names) > _LISTED else "")

    names = sorted(shapes)
    cubes = [k for k in names if shapes[k] is not None and len(shapes[k]) == 3]  # type: ignore[arg-type]
    pick = (f"; pass the scene cube's name, e.g. variable={cubes[0]!r} (--variable {cubes[0]} on the command line)"
            if cubes else "")
    save = ("; save the scene into it as one 3-D array, rows x columns x bands (MATLAB: save(file, 'cube'); Python: "
            "scipy.io.savemat(file, {'cube': cube}))")
    if variable is not None:
        key = next((k for k in names if k.lower() == variable.lower()), None)
        if key is None:
            return (f"{path} has no variable {variable!r}; it holds {shown(names) or 'no variables'}"
                    + (pick if cubes else f", none of them 3-D{save}"))
        shape = shapes[key]
        if shape is None or len(shape) != 3:
            what = "a struct" if shape is None else f"a {len(shape)}-D array of {' x '.join(map(str, shape))}"
            others = [k for k in cubes if k != key]
            return (f"{path}: variable {key!r} is {what}; expected the scene cube, a 3-D array (rows x columns x "
                    "bands)" + (f". Its 3-D arrays: {shown(others)}{pick}" if others else f", and the file holds "
                                f"none{save}"))
        return str(e)
    if len(cubes) == 1:
        return str(e)
    if not cubes:
        return (f"{path} holds no 3-D array; expected the scene cube, a 3-D array (rows x columns x bands), and found "
                f"{shown(names) or 'no variables'}{save}")
    return f"{path} holds {len(cubes)} 3-D arrays ({shown(cubes)}), and which is the scene cannot be told{pick}"


def open_npy(path: Path, chunks, band_axis: int | None) -> xr.DataArray:
    import dask.array as dsa

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError) as e:  # truncated, empty, a negative shape, objects
        from ssrn.data import npy_problem

        raise SceneError(npy_problem(path, e, "a numeric array of the scene")) from None
    dims = resolve_dims(arr.shape, None, str(path), band_axis=band_axis, default_last=True)
    data = dsa.from_array(arr, chunks=default_chunks(arr.shape, dims))
    da = bare_dataarray(data, dims, str(path), band_axis=None, default_last=True).rename(path.stem)  # (not a token)
    return finish_scene(da, path, "npy", wavelengths=_sidecar_wavelengths(path), chunks=chunks)


_SIDECAR_FIX = 'the file (a list of numbers, or {"wavelengths": [...], "unit": "nm"})'


_MAX_SIDECAR_BYTES = 1 << 20  # a wavelength list's JSON: some 10 bytes a band


def _sidecar_wavelengths(path: Path) -> np.ndarray | None:
    """Wavelengths from the JSON file beside the scene (:func:`~hsi_engine.wavelengths.wavelength_side_files`:
    ``scene.wavelengths.json``, ``scene_wavelengths.json`` or ``scene.mat.wavelengths.json``), if any: a list of
    numbers, or ``{"wavelengths": [...], "unit": "nm"}``. Two of them that disagree are named and left out."""
    found = [c for c in wavelength_side_files(path) if c.is_file()]
    read = [_read_sidecar(c) for c in found]
    if any(not _same_wavelengths(read[0], r) for r in read[1:]):
        warn_wavelengths(str(path), f"its wavelength files {', '.join(c.name for c in found)} list different "
                         "wavelengths", "it: keep the one that is right and remove the others")
        return None
    return read[0] if read else None


def _same_wavelengths(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is b or (a is not None and b is not None and a.shape == b.shape and np.allclose(a, b, equal_nan=True))


def _read_sidecar(cand: Path) -> np.ndarray | None:
    """The wavelengths (nm) wavelength file ``cand`` lists; None, with a warning naming the problem, where it lists
    none that can be read."""
    try:
        if cand.stat().st_size > _MAX_SIDECAR_BYTES:
            warn_wavelengths(str(cand), f"holds {human_bytes(cand.stat().st_size)}, more than the "
                              f"{human_bytes(_MAX_SIDECAR_BYTES)} a list of wavelengths takes", _SIDECAR_FIX)
            return None
        doc = json.loads(cand.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError) as e:  # not JSON (or not text, or nested past Python's limit)
        warn_wavelengths(str(cand), f"cannot be read as JSON ({first_line(e)})", _SIDECAR_FIX)
        return None
    if isinstance(doc, dict):
        return listed_wavelengths(doc.get("wavelengths"), doc.get("unit"), str(cand), "'wavelengths' entry",
                                   "'unit' entry", _SIDECAR_FIX)
    return listed_wavelengths(doc, None, str(cand), "content", "unit", _SIDECAR_FIX)