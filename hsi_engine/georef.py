"""Where a scene's class map lies: its CRS and transform (stored, or from its x/y coordinates, checked against
each other), or the ground control points it is placed by; irregular coordinates are refused, not written wrong."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .cube import FILE_TRANSFORM, SOURCE_COL, SOURCE_ROW
from .errors import IrregularGridError, SceneError, user_stacklevel
from .geotiff import CRS_ONLY_SAID, gdal_name
from .logs import quiet_affine_mul


def georeferenced(da: xr.DataArray, scene_path: Any = None) -> bool:
    """Whether the scene declares a CRS; :class:`SceneError` where it declares one that cannot be read."""
    return scene_crs(da, scene_path) is not None


def scene_crs(da: xr.DataArray, scene_path: Any = None, *, what: str | None = None, var: str = "scene",
              error: type[Exception] = SceneError) -> Any:
    """``da.rio.crs``: None where ``da`` declares no CRS, ``error`` where it declares one pyproj cannot parse. An
    unreadable CRS is not "no CRS": read as one, the map lost its placement without a word. ``what`` names ``da``
    in the message (default: ``scene <its path>``), ``var`` in the fix's code."""
    import pyproj
    import rasterio.errors

    try:
        return da.rio.crs
    except (pyproj.exceptions.CRSError, rasterio.errors.CRSError, ValueError, TypeError) as e:
        where, text, drop = _declared_crs(da, var)
        if text.strip() in ("", "None"):  # an empty placeholder (some HDF/NetCDF products write one) declares none
            return None
        shown = text if len(text) <= 80 else text[:77] + "..."
        name = what or f"scene {scene_name(da, scene_path)}"
        raise error(f"{name} declares a CRS that pyproj cannot parse ({where}: {shown!r}); taken as no CRS, the "
                    "class map would lose its placement: write the real CRS over it (in Python: "
                    f"{var} = {var}.rio.write_crs(\"EPSG:32633\"), with its own EPSG code; in the file: fix "
                    f"{where}), or remove it to place the map without a CRS ({drop})") from e


def _declared_crs(da: xr.DataArray, var: str) -> tuple[str, str, str]:
    """``(where, text, how to remove it)`` of the CRS text rioxarray reads: the grid mapping's ``spatial_ref`` or
    ``crs_wkt`` attribute, else a ``crs`` attribute."""
    gm = da.rio.grid_mapping
    attrs = da.coords[gm].attrs if gm in da.coords else {}
    for key in ("spatial_ref", "crs_wkt"):  # (rioxarray's order)
        if key in attrs:
            return (f"its {gm} coordinate's {key} attribute", str(attrs[key]),
                    f"{var} = {var}.drop_vars({gm!r}): the map is then placed by the x/y coordinates")
    return "its crs attribute", str(da.attrs.get("crs", "")), f"del {var}.attrs['crs']"


def scene_georef(da: xr.DataArray, scene_path: Any = None) -> tuple[Any, Any, Any]:
    """``(crs, transform, gcps)`` of a scene for its class map: the transform of a gridded scene, or the ground
    control points of one georeferenced by them (not orthorectified: no transform, no y/x coordinates, where
    ``rio.transform()`` reads the identity); with one warning when the scene has no CRS: then no CRS, and the
    transform its x/y coordinates give (None where they are pixel indices or absent)."""
    if not georeferenced(da, scene_path) and da.encoding.get("rpcs"):
        warnings.warn(f"scene {scene_name(da, scene_path)} is placed by RPCs (rational polynomial coefficients, a "
                      "level-1 product), which hsi-engine's class maps do not carry: the map has no georeferencing. "
                      "Orthorectify the scene first (gdalwarp -rpc -t_srs EPSG:... scene.tif ortho.tif), or copy "
                      "the scene's RPCs onto the map, which lies on the scene's pixel grid (in rasterio: "
                      "dst.rpcs = src.rpcs)", stacklevel=user_stacklevel())
        return None, None, None
    if not georeferenced(da, scene_path):
        def pixel_indices(d: str) -> bool:
            v = np.asarray(da[d].values, np.float64) if d in da.coords and da[d].ndim == 1 else None
            return v is None or v.size < 2 or bool(np.allclose(v - np.floor(v[0]), np.arange(v.size) + v[0] % 1))

        try:
            stored = da.rio.transform()
        except Exception:  # noqa: BLE001 - no transform to read
            stored = None
        if stored is not None and (stored.b or stored.d):  # a rotated grid without a CRS: keep its placement
            warnings.warn(f"scene {scene_name(da, scene_path)} has no CRS: the class map is placed by the "
                          "scene's rotated transform, with no CRS; set one with da.rio.write_crs(...) in Python, "
                          "or write it into the scene file (e.g. gdal_edit.py -a_srs EPSG:32633 for a GeoTIFF)",
                          stacklevel=user_stacklevel())
            return None, grid_transform(da, scene_path), None
        by_pixels = pixel_indices("x") and pixel_indices("y")
        transform = None
        if not by_pixels and all(d in da.coords and da[d].ndim == 1 for d in ("x", "y")):
            transform = grid_transform(da, scene_path)  # irregular coordinates are refused, as with a CRS
        placed = "written in pixel coordinates" if by_pixels else "placed by the scene's x/y coordinates, with no CRS"
        # pixel coordinates: a CRS alone would place the map at the CRS's origin (crs_without_transform)
        fix = ("set one and its transform in Python, da.rio.write_crs(...).rio.write_transform(Affine(...)) (a CRS "
               "alone puts the map at the CRS's origin)" if by_pixels else
               "set one with da.rio.write_crs(...) in Python")
        warnings.warn(f"scene {scene_name(da, scene_path)} has no georeferencing (no CRS): the class map is "
                      f"{placed}; {fix}, or write it into the scene file (e.g. gdal_edit.py -a_srs EPSG:32633 "
                      "-a_ullr ... for a GeoTIFF)", stacklevel=user_stacklevel())
        return None, transform, None
    gcps = scene_gcps(da)
    return (da.rio.crs, None, gcps) if gcps else (da.rio.crs, grid_transform(da, scene_path), None)


@quiet_affine_mul
def crs_without_transform(da: xr.DataArray) -> bool:
    """Whether ``da`` declares a CRS but nothing places it in it: no GCPs or RPCs, and its transform is the
    identity, GDAL's "no geotransform", which rioxarray also reads for a scene with no x/y coordinates and no stored
    GeoTransform (x/y, where there are any, the identity's pixel centres 0.5, 1.5, ...). Its map would lie at the
    CRS's origin in 1-unit pixels, far from its ground."""
    try:
        if (da.rio.crs is None or da.encoding.get("rpcs") or scene_gcps(da)
                or not da.rio.transform().is_identity):
            return False
    except Exception:  # noqa: BLE001 - an unreadable CRS or GCPs: refused where the map is placed
        return False
    for d in ("x", "y"):
        if d in da.coords:
            v = np.asarray(da[d].values, np.float64)
            if da[d].ndim != 1 or not np.allclose(v, np.arange(v.size) + 0.5):
                return False
    return True


def warn_crs_without_transform(da: xr.DataArray, scene_path: Any = None) -> bool:
    """Warn where ``da`` has a CRS but no transform (:func:`crs_without_transform`), unless its opening did
    (``CRS_ONLY_SAID``); True where it warned. Its map is written as the GeoTIFF reader's warning says: with the
    CRS, on the scene's pixel grid at the CRS's origin, as the scene lies."""
    if da.encoding.get(CRS_ONLY_SAID) or not crs_without_transform(da):
        return False
    name = scene_name(da, scene_path)
    gm = da.rio.grid_mapping
    drop = f"scene.drop_vars({gm!r})" if gm in da.coords else "del scene.attrs['crs']"
    in_file = ""
    if name != "(in memory)":
        in_file = (f"; in the file: gdal_edit.py -a_ullr ULX ULY LRX LRY {name}" if name.lower().endswith(
            (".tif", ".tiff", ".hdr", ".img", ".bsq", ".bil", ".bip", ".dat")) else
            "; in the file: x/y pixel-centre coordinate variables, or a GeoTransform attribute on its grid mapping")
    warnings.warn(f"scene {name} has a CRS ({da.rio.crs.to_string()}) but no transform (no GeoTransform or GCPs, "
                  "no x/y coordinates but pixel indices): its class map lies at the CRS's origin in 1-unit pixels, "
                  "far from its ground; give it its transform (in Python: scene = scene.rio.write_transform(Affine("
                  f"PIXEL, 0, ULX, 0, -PIXEL, ULY)), the product's pixel size and upper-left corner{in_file}), or "
                  f"drop the CRS for a map in pixel coordinates ({drop})", UserWarning, stacklevel=user_stacklevel())
    return True


def scene_name(da: xr.DataArray, scene_path: Any = None) -> str:
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
        raise IrregularGridError(f"scene {scene_name(da, scene_path)} has a rotated grid and its pixels were "
                                 "selected irregularly (its xc / yc coordinates follow no one transform): only a "
                                 "regular window can be placed; select one with a slice, e.g. da.isel(x=slice(a, b))")
    if t.almost_equals(stored, precision=1e-6 * math.hypot(stored.a, stored.d)):
        return stored
    if _window_of(stored, t, flips=True):  # isel moved them with the pixels: a window, strided or flipped
        return t
    warnings.warn(f"scene {scene_name(da, scene_path)}: its stored transform {tuple(stored)[:6]} disagrees with its "
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


def _bottom_up(da: xr.DataArray, from_coords: Any) -> bool:
    """Whether the scene's rows run upwards on the rows of its grid mapping's top-down GeoTransform (GDAL's netCDF
    driver stores rows bottom-up and writes the GeoTransform of the flipped, north-up raster)."""
    try:
        gm = da.rio.grid_mapping
        c, a, b, f, d, e = (float(v) for v in str(da.coords[gm].attrs["GeoTransform"]).split())
    except Exception:  # noqa: BLE001 - no grid mapping, no GeoTransform, or not six numbers
        return False
    if b or d or not e < 0 < from_coords.e or not math.isclose(from_coords.e, -e, rel_tol=1e-6):
        return False
    rows = (np.asarray(da["y"].values, np.float64) - f) / e - 0.5
    return bool(np.all(np.abs(rows - np.round(rows)) < 1e-3))


def _warn_bottom_up(da: xr.DataArray, scene_path: Any) -> None:
    warnings.warn(f"scene {scene_name(da, scene_path)}: its rows run upwards (y ascending) under its top-down "
                  "GeoTransform, as GDAL's netCDF driver stores them (or as a flip, isel(y=slice(None, None, -1)), "
                  "leaves them): the map is placed by its x/y coordinates, and is the map of the rows as they run "
                  "(south-up). The network is not flip-invariant, so it differs slightly from the north-up scene's "
                  "map (a GeoTIFF the file was converted from): for that one classify "
                  "scene.isel(y=slice(None, None, -1)). A map file of these rows is stored south-up (a positive "
                  "pixel height), which rasterio.merge and gdalbuildvrt refuse to mosaic: `gdalwarp -r near "
                  "map.tif map-north-up.tif` turns it north-up, class for class", stacklevel=user_stacklevel())


def grid_step(v: np.ndarray) -> tuple[float, float]:
    """``(step, off)`` of 1-D pixel-centre coordinates (at least two, of any numeric dtype): their mean step, and
    how far the farthest pixel lies from the regular grid of that step through the first or, where more, how far
    one step is from the usual (median) one beyond the coordinates' storage precision: a column dropped in the
    middle keeps every pixel within half a pixel of the mean grid, and its map was written on a stretched grid,
    15 m off at 30 m pixels. Grids are taken where ``off`` is at most half a pixel: float32 or rounded coordinates of
    a regular grid step unevenly by their storage precision (float32 longitudes of 1 m pixels step by one or two
    float32 spacings), but stay within a fraction of a pixel."""
    stored = np.asarray(v)
    v = stored.astype(np.float64)
    steps = np.diff(v)
    mean = float(steps.mean())
    drift = float(np.abs(np.cumsum(steps - mean)).max())
    top = float(np.abs(v).max())
    # two stored values each off by up to half their spacing: a step off by one spacing, the median step too
    slack = 2 * float(np.spacing(stored.dtype.type(top))) if stored.dtype.kind == "f" else 1.0
    if np.all(v == np.round(v)):  # whole units (rounded metres): a step of 2.5 stored as 2s and 3s, never further
        slack = max(slack, 1.0)
    jump = float(np.abs(steps - np.median(steps)).max()) - slack
    return mean, max(drift, jump)


def grid_transform(da: xr.DataArray, scene_path: Any = None) -> Any:
    """The scene's transform: the stored one (rioxarray's ``GeoTransform``, which keeps a rotation), unless its
    x/y coordinates say otherwise: a NetCDF flipped with ``isel(y=slice(None, None, -1))`` kept its north-up
    GeoTransform while its y ran upwards, and the map was written flipped and a scene's height off the ground.
    A CRS without a transform is warned of (:func:`warn_crs_without_transform`): rioxarray's identity is returned."""
    warn_crs_without_transform(da, scene_path)
    any_coords = all(d in da.coords and da[d].ndim == 1 and da[d].size > 0 for d in ("x", "y"))
    have_coords = any_coords and max(da["x"].size, da["y"].size) > 1  # one pixel wide (or tall): placed by them too
    if any_coords:
        for d in ("x", "y"):
            if not np.all(np.isfinite(np.asarray(da[d].values, np.float64))):
                raise IrregularGridError(f"scene {scene_name(da, scene_path)}: its {d} coordinates hold NaN or "
                                         "inf: no transform places its map; fix or drop them (e.g. "
                                         f"scene.assign_coords({d}=...))")
    if any_coords and not have_coords and not _stored_geotransform(da):
        # one pixel, its centre in x/y, no GeoTransform: rioxarray's fallback read the identity, and the GeoTIFF
        # map lay at (0.5, 0.5) of the CRS, thousands of km off
        from affine import Affine

        x0, y0 = float(da["x"].values[0]), float(da["y"].values[0])
        warnings.warn(f"scene {scene_name(da, scene_path)}: it is one pixel and stores no GeoTransform, so its pixel "
                      f"size is unknown: the map's pixel is centred on its coordinates ({x0:g}, {y0:g}) with a size "
                      "of 1 (coordinate unit); write its transform (scene.rio.write_transform(...)) to give it its "
                      "size", stacklevel=user_stacklevel())
        return Affine(1.0, 0.0, x0 - 0.5, 0.0, -1.0, y0 + 0.5)
    stored = da.rio.transform()
    if stored.b or stored.d:  # rotated: no x/y coordinates; a window (isel) of it keeps source_row/source_col
        if SOURCE_ROW not in da.coords and SOURCE_COL not in da.coords:
            centres = _rotated_from_centres(da, stored, scene_path)  # rioxarray's 2-D xc / yc, which isel moves
            if centres is not None:
                return centres
            if any_coords:  # GDAL's netCDF driver: 1-D x/y of the unrotated terms, rows stored bottom-up
                placed = _rotated_from_1d(da, stored)
                if placed is not None:
                    if _compose(~stored, placed).e < 0:
                        _warn_bottom_up(da, scene_path)
                    return placed
            unplaced_window(da, "a rotated transform")
        try:
            (r0, rs), (c0, cs) = _source_step(da, SOURCE_ROW, "y"), _source_step(da, SOURCE_COL, "x")
        except SceneError:
            raise IrregularGridError(f"scene {scene_name(da, scene_path)} has a rotated grid and its pixels were "
                                     "selected irregularly: only a regular window can be placed; select one with "
                                     "a slice, e.g. da.isel(x=slice(a, b))") from None
        return _rotated_window(da, stored, (r0, rs), (c0, cs), scene_path)
    if not have_coords:  # no 1-D coordinates to check against (and no GeoTransform: the identity, warned of above)
        return stored
    for d in ("x", "y"):
        v = np.asarray(da[d].values, np.float64)
        if v.size < 2:  # one pixel: its coordinate places it, at the stored pixel size
            continue
        steps = np.diff(v)
        mean, off = grid_step(np.asarray(da[d].values))
        wrap = _longitude_wrap(da, d, steps) if off > 0.5 * abs(mean) else None
        if wrap is not None:
            raise IrregularGridError(
                f"scene {scene_name(da, scene_path)}: its longitudes wrap around ({wrap}), so its x coordinates "
                "are not evenly spaced and no transform can place its map: make them continuous first, e.g. "
                + ("scene.assign_coords(x=(scene.x + 180) % 360 - 180)" if "360" in wrap else
                   "scene.assign_coords(x=scene.x % 360)"))
        if off > 0.5 * abs(mean):
            raise IrregularGridError(
                f"scene {scene_name(da, scene_path)}: its {d} coordinates are not evenly spaced (steps from "
                f"{steps.min():g} to {steps.max():g}; columns or rows dropped with isel?): a map on a regular grid "
                f"would put its pixels up to {off:.4g} (coordinate units) off; classify each evenly spaced part on "
                f"its own (e.g. scene.isel({d}=slice(0, k)))")
        if np.ptp(v) == 0:  # all equal: a map of pixels without height (width); a fine grid's steps are not 0
            raise IrregularGridError(
                f"scene {scene_name(da, scene_path)}: its {d} coordinates are all {v[0]:g}, so its pixels would "
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
        warnings.warn(f"scene {scene_name(da, scene_path)}: it is one pixel along {single[0]} and stores no "
                      f"GeoTransform, so its pixel size along {single[0]} is unknown: taken as its {other} pixel size "
                      f"({size:g}, square pixels); write its transform (scene.rio.write_transform(...)) to place it "
                      "exactly", stacklevel=user_stacklevel())
        return _transform_from_1d(da, Affine(size, 0.0, 0.0, 0.0, -size, 0.0))
    from_coords = _transform_from_1d(da, stored)
    if from_coords.almost_equals(stored, precision=1e-6 * max(abs(stored.a), abs(stored.e), 1e-12)):
        return stored
    if _window_of(stored, from_coords):  # isel(x=slice(a, b, k)): rioxarray kept the whole scene's transform
        return from_coords
    if _bottom_up(da, from_coords):
        _warn_bottom_up(da, scene_path)
        return from_coords
    warnings.warn(f"scene {scene_name(da, scene_path)}: its stored transform {tuple(stored)[:6]} disagrees with "
                  f"its x/y coordinates, which give {tuple(from_coords)[:6]} (a GeoTransform attribute left stale by "
                  "flipping or cutting the array?): the map is placed by the coordinates", stacklevel=user_stacklevel())
    return from_coords


def _rotated_window(da: xr.DataArray, stored: Any, rows: tuple[float, float], cols: tuple[float, float],
                    scene_path: Any = None) -> Any:
    """The transform of a window of a rotated scene whose pixel k lies on file row ``r0 + k * rs`` (and column):
    composed with the file's transform as :func:`open_scene` recorded it, since ``rio.isel_window`` (or
    ``write_transform``) rewrites the scene's to the window's own, which the source rows would shift again."""
    from affine import Affine

    (r0, rs), (c0, cs) = rows, cols
    # map pixel k's centre on source pixel r0 + k * rs's centre (as the GCP and x/y paths place them)
    window = _compose(Affine.translation(c0 + 0.5 - cs / 2, r0 + 0.5 - rs / 2), Affine.scale(cs, rs))
    recorded = da[SOURCE_ROW].attrs.get(FILE_TRANSFORM) if SOURCE_ROW in da.coords else None
    if recorded is None:
        return _compose(stored, window)
    file_t = Affine(*recorded)
    placed = _compose(file_t, window)
    tol = 1e-6 * math.hypot(file_t.a, file_t.d)
    whole = (r0, rs, c0, cs) == (0, 1, 0, 1) and tuple(da.encoding.get("source_shape", ()))[1:] == (
        da.sizes.get("y"), da.sizes.get("x"))
    if whole and not stored.almost_equals(file_t, precision=tol):
        return stored  # the whole file's pixels under a transform written on them: the caller's correction
    if not (stored.almost_equals(file_t, precision=tol) or _window_of(file_t, stored, flips=True)):
        # (a window's own transform, written by rio.isel_window, is one on the file's grid; a later isel leaves it)
        warnings.warn(f"scene {scene_name(da, scene_path)}: its transform {tuple(stored)[:6]} was written after "
                      f"opening, and is neither its file's {tuple(file_t)[:6]} nor a window's of it: the map is placed "
                      "by the file's transform and the window's source_row / source_col; to place it by its own "
                      "transform, drop those (da.drop_vars(['source_row', 'source_col']))",
                      stacklevel=user_stacklevel())
    return placed


def _rotated_from_1d(da: xr.DataArray, stored: Any) -> Any:
    """A rotated scene's transform from 1-D x/y coordinates as GDAL's netCDF driver writes them beside the rotated
    GeoTransform (x = c + a (col + 0.5), y = f + e (row + 0.5), its rows stored bottom-up): the file's row and
    column of each pixel, flips and windows included; None where the coordinates are not of that form."""
    from affine import Affine

    recorded = da["x"].attrs.get(FILE_TRANSFORM)
    if recorded is not None:  # open_scene's record of the file's (rio.isel_window rewrites the GeoTransform)
        stored = Affine(*recorded)
    index = {}
    for d, (step, origin) in (("x", (stored.a, stored.c)), ("y", (stored.e, stored.f))):
        v = np.asarray(da[d].values, np.float64)
        if step == 0:
            return None
        k = (v - origin) / step - 0.5
        if not np.all(np.abs(k - np.round(k)) < 1e-3):
            return None
        k = np.round(k)
        s = float(k[1] - k[0]) if k.size > 1 else 1.0
        if s == 0 or not np.array_equal(k, k[0] + s * np.arange(k.size)):
            return None
        index[d] = (float(k[0]), s)
    return _rotated_window(da, stored, index["y"], index["x"])


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
