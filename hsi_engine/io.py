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

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers ``.rio`` on every DataArray open_scene returns)
import xarray as xr

from ssrn.errors import is_text_path, is_whole, unexpanded_home

from .cube import bare_dataarray, cf_georef, cube_like, human_bytes, normalise_dims
from .envi import envi_header_beside, envi_paths, open_envi
from .errors import OptionError, SceneError, SceneNotFoundError
from .georef import crs_without_transform, scene_crs, scene_gcps, warn_crs_without_transform, with_window_gcps
from .geotiff import CRS_ONLY_SAID, open_geotiff
from .logs import quiet_affine_mul
from .scene_checks import declared_nodata, scene_wavelengths
from .stores import (gdal_band_stack, keep_grid_mapping, open_hdf5, open_matlab, open_netcdf, open_npy, open_zarr,
                     pick_variable, zipped_zarr)

# the other public names io.py held before it was split by job; importable from here as before
from .cube import NODATA_ATTRS, SOURCE_COL, SOURCE_ROW, band_runs
from .georef import unplaced_window
from .geotiff import gdal_name
from .stores import MAX_CHUNKS, MAX_DECODED_CHUNK
from .wavelengths import WAVELENGTH_NAMES, not_wavelengths, spectral_unit, wavelengths_in_names


__all__ = ["SUPPORTED_SUFFIXES", "as_scene", "file_of", "open_scene", "scene_format", "scene_gcps", "scene_info",
           "with_window_gcps",
           # held here before the split by job (imported above)
           "MAX_CHUNKS", "MAX_DECODED_CHUNK", "NODATA_ATTRS", "SOURCE_COL", "SOURCE_ROW", "WAVELENGTH_NAMES",
           "band_runs", "gdal_name", "not_wavelengths", "spectral_unit", "unplaced_window", "wavelengths_in_names"]

SUPPORTED_SUFFIXES: dict[str, str] = {
    ".zarr": "zarr", ".nc": "netcdf", ".nc4": "netcdf", ".cdf": "netcdf",
    ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5",
    ".tif": "geotiff", ".tiff": "geotiff",
    ".hdr": "envi", ".bsq": "envi", ".bil": "envi", ".bip": "envi", ".img": "envi", ".dat": "envi",
    ".raw": "envi",
    ".mat": "matlab", ".npy": "npy",
}


def scene_format(path: str | os.PathLike) -> str:
    """The reader used for ``path`` ('zarr', 'netcdf', 'hdf5', 'geotiff', 'envi', 'matlab', 'npy')."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return SUPPORTED_SUFFIXES[suffix]
    if p.is_dir() and ((p / "zarr.json").exists() or (p / ".zarray").exists() or (p / ".zgroup").exists()):
        return "zarr"
    if envi_header_beside(p) is not None:  # an ENVI binary of any name (.rfl, _img, none) with its header
        return "envi"
    if p.is_dir():
        inside = sorted(c.name for c in p.iterdir() if c.suffix.lower() in SUPPORTED_SUFFIXES
                        and (SUPPORTED_SUFFIXES[c.suffix.lower()] != "envi" or c.suffix.lower() == ".hdr"))
        listed = ", ".join(inside[:6]) + (f" ... ({len(inside)} in all)" if len(inside) > 6 else "")
        raise SceneError(f"{p} is a directory, not a scene (nor a zarr store): pass one of its scenes"
                         + (f": {listed}" if inside else "; it holds none hsi-engine reads"))
    if p.name.lower().endswith((".zarr.zip", ".zarr.zipx")) or (suffix == ".zip" and ".zarr" in p.name.lower()):
        raise zipped_zarr(p)
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    if suffix == ".vrt":  # (a mosaic's sources would escape a resumed run's check of its files)
        raise SceneError(f"{p} is a GDAL virtual raster (.vrt), which hsi-engine does not read: write it out as a "
                         f"GeoTIFF with `gdal_translate {p} {p.with_suffix('.tif')}`, which keeps the bands' "
                         "wavelengths and bbl (`rio convert` and `rio merge` drop them)")
    raise SceneError(f"cannot tell the format of {p}: suffix {suffix or '(none)'!r} is not one hsi-engine reads. "
                     f"Supported: {supported} (and zarr directories). Convert the scene to GeoTIFF or zarr, "
                     "or rename it with the suffix of its real format.")


def _check_chunks(chunks: Any) -> None:
    """Refuse chunk sizes dask would take in another sense or fail on deep inside: ``0`` (a division by zero) and a
    bare number as text (``'8'``: dask reads 8 bytes, so one-element chunks)."""
    def listed(v: Any) -> list:  # (a numpy array of sizes as its items)
        v = v.tolist() if isinstance(v, np.ndarray) else v
        return list(v) if isinstance(v, (tuple, list)) else [v]

    values = list(chunks.values()) if isinstance(chunks, dict) else listed(chunks)
    for v in values:
        for size in listed(v):
            if isinstance(size, float) and size.is_integer():
                size = int(size)  # (16.0: dask takes it)
            if size is None or size == -1 or (isinstance(size, str) and not size.strip().isdigit()):
                continue  # the whole axis, or dask's 'auto' / '64MiB'
            if isinstance(size, str):
                raise OptionError(f"chunks={chunks!r}: dask reads the text {size!r} as a number of bytes; pass "
                                  f"{int(size)} (elements), or a size with its unit ('64MiB')")
            if not is_whole(size) or size < 1:
                raise OptionError(f"chunks={chunks!r}: each chunk size must be a whole number >= 1 (or -1 / None for "
                                  f"the whole axis, 'auto'); got {size!r}")


@quiet_affine_mul
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
    if not is_text_path(path):  # (pathlib's bare TypeError)
        raise OptionError(f"open_scene takes a scene path (a str or pathlib.Path); got {type(path).__name__} "
                          f"{repr(path)[:80]}" + (": decode it first (os.fsdecode(path))" if isinstance(path, bytes)
                                                  else "; hsi_engine.classify takes arrays and DataArrays as they are"))
    if variable is not None and not isinstance(variable, str):
        raise OptionError(f"variable must be the name of one array (a str); got {type(variable).__name__} "
                          f"{repr(variable)[:80]}")
    _check_chunks(chunks)
    p = Path(path)
    from .outputs import URL, gdal_reaches

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
    try:
        fmt = scene_format(p)
    except SceneError:  # (a missing nothere.vrt was told to be converted)
        if p.exists() or p.is_symlink():
            raise
        fmt = None
    if not p.exists() and not (fmt == "envi" and p.suffix.lower() == ".hdr" and p.with_suffix(".bsq").exists()):
        home = unexpanded_home(path, written=False)
        raise SceneNotFoundError(f"scene {p} does not exist" + (f" (the path {home})" if home else ""))
    if fmt in ("geotiff", "envi"):
        if not gdal_reaches(str(p.absolute())):
            raise SceneError(f"scene {os.fsencode(p)!r}: its path holds bytes that are not UTF-8 text (or this "
                             "process's locale is not UTF-8), which GDAL cannot open; rename it (or its directory) in "
                             "UTF-8, or run in a UTF-8 locale (e.g. LC_ALL=C.UTF-8)")
        given = [f"{k}={v!r}" for k, v in (("variable", variable), ("band_axis", band_axis)) if v is not None]
        if given:  # one cube, its axes named by the format: an option that cannot apply is a mistake to name
            raise SceneError(f"{p} is {'a GeoTIFF' if fmt == 'geotiff' else 'an ENVI file'}: one cube whose "
                             f"bands the format names, so {' and '.join(given)} (--variable / --band-axis) "
                             "cannot apply; leave them out")
        da = open_geotiff(p, chunks) if fmt == "geotiff" else open_envi(p, chunks)
    elif fmt == "netcdf":
        da = open_netcdf(p, chunks, variable)
    elif fmt == "zarr":
        da = open_zarr(p, chunks, variable, band_axis)
    elif fmt == "hdf5":
        da = open_hdf5(p, chunks, variable, band_axis)
    elif fmt == "matlab":
        da = open_matlab(p, chunks, variable, band_axis)
    elif fmt == "npy":
        da = open_npy(p, chunks, band_axis)
    else:
        raise AssertionError(fmt)
    # the name of the file's own lazy (dask) array: a scene still holding it is the file, while one loaded, edited
    # in place, copied with other data or windowed keeps the encoding but not the name (scene_identity.scene_identity)
    da.encoding["source_array"] = da.data.name if da.chunks is not None else None
    if "source" in da.encoding:  # absolute: the file a resumed run compares with, from any working directory
        da.encoding["source"] = os.path.abspath(da.encoding["source"])
    # a CRS but no transform (a CF file's grid mapping without x/y coordinates): said on opening, as a GeoTIFF's is
    if warn_crs_without_transform(da, p):
        da.encoding[CRS_ONLY_SAID] = True
    return da


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
        cube = gdal_band_stack(obj, "the Dataset", decode=False) if not any(
            cube_like(v) for v in obj.data_vars.values()) else None
        if cube is None:
            maps = sorted({str(v.attrs["grid_mapping"]) for v in obj.data_vars.values()
                           if isinstance(v.attrs.get("grid_mapping"), str) and v.attrs["grid_mapping"] in obj})
            keep = "".join(f", {m!r}" for m in maps)  # ds[NAME] alone drops a grid mapping that is a data variable
            cube = pick_variable(obj, "the Dataset", None,
                                 how=(f"ds[['NAME'{keep}]] (e.g. classify(ds[['NAME'{keep}]], model), which keeps "
                                      f"its grid mapping {maps[0]!r} and so its CRS; from a file, "
                                      "open_scene(path, variable='NAME'))" if maps else
                                      "ds[NAME] (e.g. classify(ds[NAME], model) or ds[NAME].hsi.classify(model))"))
        # as open_scene reads the file: its grid mapping, wavelengths and CF lat/lon, where xr.open_dataset left
        # them data variables
        return cf_georef(keep_grid_mapping(normalise_dims(cube, f"the Dataset's variable {cube.name!r}"), obj))
    if isinstance(obj, xr.DataArray):
        return cf_georef(normalise_dims(obj, f"DataArray {obj.name!r}" if obj.name is not None
                                          else "the DataArray"))
    if type(obj).__module__.startswith("torch"):
        import torch

        if getattr(obj, "is_meta", False):
            raise SceneError(f"the scene is a meta tensor (shape {tuple(obj.shape)}), which holds no values: pass "
                             "the tensor with its data (on the cpu or a GPU)")
        if getattr(obj, "layout", torch.strided) != torch.strided:  # sparse: numpy has no such arrays
            obj = obj.to_dense()
        obj = obj.detach().cpu().resolve_conj().resolve_neg()
        obj = (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy()  # numpy has no bfloat16: exact in float32
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") or hasattr(obj, "chunks"):
        ndim = getattr(obj, "ndim", None)
        if ndim != 3:
            shape = tuple(getattr(obj, "shape", ()))
            fix = ("A 2-D image is one band: add an axis (" + ("df.to_numpy()[None]" if hasattr(obj, "to_numpy")
                   and not isinstance(obj, np.ndarray) else "arr[None]") + ")" if ndim == 2 else
                   "Reshape it to (band, y, x), e.g. arr.reshape(bands, height, width)" if ndim == 1 else
                   "Select or squeeze it to (band, y, x)")
            raise SceneError(f"expected a 3-D (band, y, x) array; got shape {shape}. {fix}.")
        masked = isinstance(obj, np.ma.MaskedArray) and bool(np.ma.getmaskarray(obj).any())
        if isinstance(obj, np.ma.MaskedArray):  # masked values read as NaN: exact for <= 16-bit ints and float32
            obj = np.ma.filled(obj.astype(np.result_type(obj.dtype, np.float32)), np.nan) if masked else obj.data
        ax = 0 if band_axis is None else band_axis
        da = bare_dataarray(obj, None, "the array", band_axis=ax, default_last=False)
        if masked:  # the mask says which values are no data: nodata pixels (class 0), as a declared nodata value
            da.attrs["_FillValue"] = np.nan
        return da.assign_coords(band=np.arange(1, da.sizes["band"] + 1))
    raise SceneError(f"cannot make a scene from {type(obj).__name__}; pass an xarray.DataArray (band, y, x), "
                     "a numpy array, a torch tensor or a path" + (" (a str: decode a bytes path with os.fsdecode())"
                                                                  if isinstance(obj, bytes) else ""))


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


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    total = path.stat().st_size if path.exists() else 0
    if scene_format(path) == "envi":
        hdr, data = envi_paths(path)
        total = hdr.stat().st_size + data.stat().st_size
    return total


@quiet_affine_mul
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
    try:  # an unreadable CRS is said on its line (classify refuses it), not shown as none
        crs = scene_crs(da, path)
        crs_line = crs.to_string() if crs is not None else "none"
    except SceneError as e:
        crs_line = f"unreadable: {e}"
    try:
        transform = da.rio.transform() if crs is not None or "spatial_ref" in da.coords else None
    except Exception:  # a scene without coordinates has no transform
        pass
    lines.append(f"crs        {crs_line}")
    gcps = scene_gcps(da) if crs is not None else None
    if gcps:  # placed by ground control points: the identity transform rioxarray reads means nothing
        lines.append(f"gcps       {len(gcps)} ground control points (no transform: not orthorectified)")
    elif crs is not None and crs_without_transform(da):  # rioxarray's identity is no transform (open_scene warned)
        lines.append("transform  none: a CRS without a transform (no GeoTransform, no x/y coordinates but pixel "
                     "indices), so a map would lie at the CRS's origin in 1-unit pixels")
    elif transform is not None:
        lines.append(f"transform  {tuple(round(v, 6) for v in transform[:6])}")
        lines.append(f"pixel      {math.hypot(transform.a, transform.d):g} x {math.hypot(transform.b, transform.e):g}"
                     + (" (rotated grid)" if transform.b or transform.d else ""))
    lines.append(f"nodata     {_nodata_text(da)}"
                 + (f" (declared per band: {da.attrs['band_nodata']}; each read as NaN)" if "band_nodata" in da.attrs
                    else ""))
    if "gdal_mask" in da.attrs:
        lines.append(f"mask       {da.attrs['gdal_mask']}")
    lines += _scale_lines(da)
    lines.append(f"wavelength {_wavelength_text(da)}")
    lines.append(f"in memory  {human_bytes(da.nbytes)}")
    lines.append(f"on disk    {human_bytes(_disk_size(p))}")
    return "\n".join(lines)


def _nodata_text(da: xr.DataArray) -> str:
    """``info``'s nodata value: the one classify masks (:func:`~hsi_engine.scene_checks.declared_nodata`)."""
    try:
        v = declared_nodata(da)
    except SceneError as e:  # classify refuses it: said here, with the rest of the summary
        return f"unreadable: {e}"
    if v is None:
        return "none"
    return str(int(v)) if da.dtype.kind in "iu" and float(v).is_integer() else str(v)


def _wavelength_text(da: xr.DataArray) -> str:
    """``info``'s wavelengths: those classify checks against the model's
    (:func:`~hsi_engine.scene_checks.scene_wavelengths`)."""
    try:
        wl = scene_wavelengths(da)
    except SceneError as e:  # classify refuses them: said here, with the rest of the summary
        return f"unreadable: {e}"
    if wl is None:
        return "unknown"
    return f"{np.nanmin(wl):.1f}..{np.nanmax(wl):.1f} nm ({wl.size} bands)"


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


def file_of(da: Any) -> str | None:
    """The file ``da`` holds whole and unchanged: its ``encoding["source"]`` when its data is still the dask array
    :func:`open_scene` recorded (same name, same shape); else None. xarray keeps the encoding
    through ``load()``, in-place assignment, ``copy(data=...)`` and ``isel``, none of which keeps that array."""
    enc = getattr(da, "encoding", None) or {}
    src, name = enc.get("source"), enc.get("source_array")
    if src is None or name is None or getattr(da, "chunks", None) is None:
        return None
    if tuple(enc.get("source_shape", ())) != tuple(da.shape):
        return None  # a window of the file
    return src if getattr(da.data, "name", None) == name else None
