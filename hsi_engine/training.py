"""Training on the engine's scenes: a georeferenced scene (anything :func:`~hsi_engine.open_scene` reads) and a
label raster on its pixel grid become a training :class:`ssrn.data.Scene`; :func:`train` runs the trainer on them.

The trainer (:mod:`ssrn`) reads the standard datasets and self-contained scene files itself; label rasters need the
engine's readers and georeferencing, so they are read here, the layer above it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ssrn.checkpoint import class_names_problem
from ssrn.data import (DataError, DataNotFoundError, Scene, bands_without_data, check_class_ids, check_labels,
                       label_class_names, unlabel_nodata)
from ssrn.errors import is_text_path
from ssrn.palette import default_palette

from .logs import quiet_affine_mul

__all__ = ["load_labelled_raster", "train"]

log = logging.getLogger("ssrn.data")  # (the trainer's data logger: what a training run says of its data)


def _label_window(transform: Any, scene_transform: Any, shape: tuple[int, int]):
    """The scene's pixels as a window of a label raster on the same pixel grid (same pixel size and axes, its
    origin a whole number of pixels away), else None."""
    from rasterio.windows import Window

    a, b, c, d, e, f = tuple(transform)[:6]
    sa, sb, sc, sd, se, sf = tuple(scene_transform)[:6]
    scale = max(abs(a), abs(b), abs(d), abs(e))
    pairs = ((a, sa), (b, sb), (d, sd), (e, se))
    if not all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12 * scale) for u, v in pairs):
        return None
    col, row = ~transform * (sc, sf)  # the scene's corner on the labels' pixel grid (rotated grids too)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return Window(round(col), round(row), shape[1], shape[0])


def _read_window(f: Any, window: Any, shape: tuple[int, int], fill: float) -> np.ndarray:
    """Band 1 of the open raster ``f`` in ``window`` (None: all of it), ``fill`` beyond its edges. Not rasterio's
    boundless read, which goes through a warped VRT: on a rotated grid it resampled north-up."""
    from rasterio.windows import Window

    if window is None:
        return f.read(1, fill_value=fill)
    r0, c0 = int(window.row_off), int(window.col_off)
    out = np.full(shape, fill, dtype=f.dtypes[0])
    ir0, ic0 = max(r0, 0), max(c0, 0)
    ir1, ic1 = min(r0 + shape[0], f.height), min(c0 + shape[1], f.width)
    if ir1 > ir0 and ic1 > ic0:
        out[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = f.read(1, window=Window(ic0, ir0, ic1 - ic0, ir1 - ir0),
                                                           fill_value=fill)
    return out


def _same_gcps(a: Any, b: Any) -> bool:
    """Whether two lists of ground control points place the same pixels at the same coordinates."""
    def key(g: Any) -> tuple[float, ...]:
        return (round(g.row, 6), round(g.col, 6), round(g.x, 6), round(g.y, 6))
    return sorted(map(key, a)) == sorted(map(key, b))


def _read_label_raster(path: Path, shape: tuple[int, int], scene_crs: Any, scene_transform: Any, where: str,
                       like: Path, scene_gcps: Any = None
                       ) -> tuple[np.ndarray, list[str] | None, dict[int, tuple] | None]:
    """A one-band label raster (GeoTIFF, ENVI, ... through rasterio; or .npy ``(y, x)``) on the scene's pixels:
    ``(labels, class names, colour table)``. A raster on the same pixel grid but a larger (or other) extent is cut to
    the scene's window (pixels beyond it unlabelled); another CRS or grid is refused with the fix. Its nodata
    becomes 0 (unlabelled); names from a ``class_names`` tag (as hsi-engine's maps carry them), an ENVI
    classification header or GDAL category names (``.aux.xml``), colours from its colour table."""
    if path.suffix.lower() == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, OverflowError) as e:  # objects, truncated, empty, not a .npy
            from ssrn.data import npy_problem

            raise DataError(npy_problem(path, e, "a 2-D array of integer class ids")) from None
        return check_labels(labels, shape, where), None, None
    import rasterio
    from affine import Affine

    try:
        with _open_label_raster(path) as f:
            if f.count != 1:
                from rasterio.enums import ColorInterp

                alpha = f.count == 2 and f.colorinterp[1] == ColorInterp.alpha
                raise DataError(f"{path} has {f.count} bands; expected one band of class ids (0 = unlabelled)" + (
                    f": its second is an alpha band (as gdalwarp -dstalpha adds); keep band 1 (gdal_translate -b 1 "
                    f"{path} labels.tif) and make its unlabelled pixels 0 or its nodata" if alpha else ""))
            transform = None if f.transform.is_identity else f.transform
            flip = (transform is not None and scene_transform is not None and transform.e * scene_transform.e < 0
                    and not (scene_transform.b or scene_transform.d))
            if flip:  # a south-up scene over north-up labels (or the reverse): read the window, then flip its rows
                st = scene_transform
                scene_transform = Affine(st.a, st.b, st.c, st.d, -st.e, st.f + st.e * shape[0])
            if scene_gcps:  # not orthorectified: only labels on its raw pixels (no placement, or its own GCPs) fit
                label_gcps = f.gcps[0] if f.gcps and f.gcps[0] else None
                other = label_gcps and not _same_gcps(label_gcps, scene_gcps)
                if (transform is not None and not label_gcps) or other:
                    raise DataError(f"{where}: the scene is placed by ground control points (not orthorectified), "
                                    "the labels by " + ("other ground control points" if label_gcps else "a "
                                    "geotransform") + ", so their pixels cannot be matched: give labels on the "
                                    "scene's own pixels (the same size, with its GCPs or no georeferencing), or "
                                    f"orthorectify the scene (gdalwarp) and warp the labels onto it (rio warp {path} "
                                    "out.tif --like ORTHO.tif)")
            if f.crs is not None and scene_crs is not None and f.crs != scene_crs:
                raise DataError(f"{where}: the labels are in {f.crs}, the scene in {scene_crs}; reproject the "
                                f"labels onto the scene's grid (e.g. rio warp {path} out.tif --like {like})")
            window = None
            if transform is not None and scene_transform is not None and \
                    (not transform.almost_equals(scene_transform) or f.shape != tuple(shape)):
                window = _label_window(transform, scene_transform, shape)
                if window is None:
                    raise DataError(f"{where}: the labels' grid {tuple(transform)[:6]} is not the scene's "
                                    f"{tuple(scene_transform)[:6]} and not on its pixels; warp the labels to the "
                                    f"scene's pixels (rio warp {path} out.tif --like {like})")
                if not (window.row_off < f.height and window.row_off + shape[0] > 0 and
                        window.col_off < f.width and window.col_off + shape[1] > 0):
                    raise DataError(f"{where}: the labels do not overlap the scene: on the labels' grid the scene "
                                    f"is rows {_span(window.row_off, shape[0])}, cols {_span(window.col_off, shape[1])}"
                                    f", the labels rows 0..{f.height - 1}, cols 0..{f.width - 1}; give the label "
                                    "raster that covers this scene")
            fill = f.nodata if f.nodata is not None else 0
            height, width = f.height, f.width
            labels = _read_window(f, window, shape, fill)
            if flip:
                labels = np.ascontiguousarray(labels[::-1])
            if f.nodata is not None:
                zeros = int(np.count_nonzero(labels == 0)) if f.nodata != 0 else 0
                labels = np.nan_to_num(labels, nan=0) if np.isnan(f.nodata) else np.where(labels == f.nodata, 0,
                                                                                          labels)
                if zeros and zeros < labels.size and np.count_nonzero(labels) > 0:
                    log.warning("%s declares nodata %s and also holds 0 in %d pixels: 0 is read as unlabelled "
                                "(classes are 1..K), so if its classes count from 0, class 0's pixels are left out of "
                                "training; add 1 to the labels (and make 0 the nodata) to keep them", path,
                                f"{f.nodata:g}", zeros)
            names = _tag_names(f.tags().get("class_names"), path)
            try:
                cmap = f.colormap(1)
            except ValueError:  # no colour table
                cmap = None
            if names is None and f.driver == "ENVI":  # an ENVI classification (e.g. from the EnMAP-Box)
                names = _envi_class_names(path)
            if names is None:  # GDAL category names (QGIS, gdal_translate and hsi-engine keep them in .aux.xml)
                names = _gdal_category_names(path)
    except rasterio.errors.RasterioIOError as e:
        from .integrity import why_failed

        formats = ", ".join(_LABEL_DRIVERS.values())
        raise DataError(f"{path} could not be read as a label raster ({why_failed(e)}); label rasters are read as "
                        f"{formats} or .npy: convert it (gdal_translate -of GTiff)") from None
    if window is not None:
        log.info("%s: the scene is rows %s, cols %s of the labels' grid (%d x %d px)%s", path,
                 _span(window.row_off, shape[0]), _span(window.col_off, shape[1]), width, height,
                 "" if window.row_off >= 0 and window.col_off >= 0 and window.row_off + shape[0] <= height and
                 window.col_off + shape[1] <= width else "; its pixels beyond the labels are unlabelled")
    return check_labels(labels, shape, where), names, cmap


def _span(start: int, size: int) -> str:
    return f"{start}..{start + size - 1}"


def _tag_names(text: str | None, path: Path) -> list[str] | None:
    """Class names from a ``class_names`` tag: JSON, as hsi-engine's maps write it, or a Python list's repr, as
    ``rio.to_raster`` writes a map's ``class_names`` attribute; anything else is ignored with a warning."""
    if not text:
        return None
    import ast

    for parse in (json.loads, ast.literal_eval):
        try:
            names = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            return list(names)
    log.warning("%s: its class_names tag %r is not a list of names (expected JSON such as [\"water\", \"forest\"]); "
                "ignored: give the names with --class-names A,B,... (class_names= in Python)", path, text[:80])
    return None


def _gdal_category_names(path: Path) -> list[str] | None:
    """The names of classes 1..K from GDAL's category names of band 1 in the ``.aux.xml`` beside a raster (entry i
    names value i; entry 0, the unlabelled value's, is dropped, as are empty trailing ones); None without any."""
    import xml.etree.ElementTree as ET

    aux = path.with_name(path.name + ".aux.xml")
    try:
        root = ET.parse(aux).getroot()
    except (OSError, ET.ParseError):
        return None
    for band in root.iter("PAMRasterBand"):
        if band.get("band", "1") == "1":
            names = [(c.text or "").strip() for c in band.iter("Category")][1:]
            while names and not names[-1]:
                names.pop()
            return names or None
    return None


def _envi_class_names(path: Path) -> list[str] | None:
    """The names of classes 1..K from an ENVI classification header's ``class names`` (its first name is class
    0's, e.g. "unclassified"); None when the header has none."""
    from .envi import envi_list, envi_paths, parse_envi_header

    try:
        header = parse_envi_header(envi_paths(path)[0])
    except Exception:  # noqa: BLE001 - no readable header beside it: no names
        return None
    names = envi_list(header.get("class names", ""))
    return names[1:] or None


def _check_class_names(class_names: Any, error: type[Exception]) -> None:
    """Refuse a string for ``class_names`` (a list of its letters would name the classes)."""
    if isinstance(class_names, (str, bytes)):
        raise error(f"class_names must be a list of names, one per class; got the string {class_names[:60]!r}: pass "
                    f"class_names={str(class_names).split(',')[:3]}... (the command line's --class-names splits on "
                    "commas)")


_LABEL_DRIVERS = {"GTiff": "GeoTIFF", "ENVI": "ENVI", "EHdr": "ESRI EHdr", "HFA": "ERDAS Imagine (.img)",
                  "netCDF": "NetCDF", "AAIGrid": "ESRI ASCII grid (.asc)", "SAGA": "SAGA (.sdat)",
                  "RST": "IDRISI (.rst)", "PNG": "PNG"}  # GDAL drivers a label raster is opened with (not VRT)


def _open_label_raster(path: Path) -> Any:
    """``path`` opened by the first of :data:`_LABEL_DRIVERS` that reads it (not GDAL's VRT, whose sources read any
    file, pipe or URL; rasterio takes one driver per open)."""
    import rasterio

    errors = []
    for driver in _LABEL_DRIVERS:
        try:
            return rasterio.open(path, driver=driver)
        except rasterio.errors.RasterioIOError as e:
            errors.append(e)
    # the error of the driver that knew the file (a truncated GeoTIFF's), not the others' "not recognized"
    raise next((e for e in errors if "not recognized" not in str(e)), errors[-1])


@quiet_affine_mul
def load_labelled_raster(scene_path: str | os.PathLike, labels_path: str | os.PathLike, *,
                         class_names: Sequence[str] | None = None, variable: str | None = None,
                         band_axis: int | None = None) -> Scene:
    """A georeferenced scene (anything :func:`~hsi_engine.open_scene` reads: GeoTIFF, ENVI, zarr, NetCDF...) and a
    label raster on its pixel grid (the same pixels, or a larger raster on the same grid, cut to the scene) as a
    training :class:`ssrn.data.Scene`. The scene's nodata pixels (its declared nodata, or NaN, in the bands a
    ``bbl`` does not flag bad) are unlabelled and masked as the engine masks them; mosaic tiles first (e.g.
    ``rio merge``). ``variable`` and ``band_axis`` open the scene as :func:`~hsi_engine.open_scene` does."""
    from .envi import envi_paths
    from .errors import IrregularGridError, SceneError
    from .georef import grid_transform, scene_gcps
    from .georef import scene_crs as declared_crs
    from .io import open_scene, scene_format
    from .scene_checks import declared_nodata
    from .scene_checks import nodata_bands as scene_nodata_bands

    _check_class_names(class_names, DataError)
    for name, value in (("scene_path", scene_path), ("labels_path", labels_path)):
        if not is_text_path(value):
            raise DataError(f"{name} must be a path (a str or pathlib.Path); got {type(value).__name__}"
                            + (": decode it with os.fsdecode()" if isinstance(value, bytes) else ""))
    scene_path, labels_path = Path(scene_path), Path(labels_path)
    if not labels_path.exists():
        raise DataNotFoundError(f"label raster {labels_path} not found")
    if labels_path.suffix.lower() == ".hdr":  # an ENVI classification given by its header, as --dataset takes one
        try:
            labels_path = envi_paths(labels_path)[1]
        except SceneError as e:
            raise DataError(str(e)) from None
    da = open_scene(scene_path, variable=variable, band_axis=band_axis)
    # an unreadable CRS is refused, not read as none (the labels were matched pixel for pixel, unchecked)
    scene_crs = declared_crs(da, scene_path, error=DataError)
    try:
        # as the engine places the scene's map: its coordinates overrule a GeoTransform left stale by flipping it;
        # a scene with a transform and no CRS is placed by it too (pixel coordinates are no placement)
        gcps = scene_gcps(da) if scene_crs is not None else None
        try:  # (a rotated scene has no x/y coordinates, only its transform; a GCP-placed one neither)
            scene_transform = grid_transform(da, scene_path) if not gcps and (
                "x" in da.coords or scene_crs is not None) else None
        except IrregularGridError:
            if scene_crs is not None:
                raise
            scene_transform = None  # no CRS and no regular grid: nothing places it; labels match pixel for pixel
        if scene_transform is not None and scene_transform.is_identity:
            scene_transform = None
    except SceneError as e:  # irregular coordinates (or GCPs): its labels could not be placed on it either
        raise DataError(str(e)) from None
    except Exception:  # noqa: BLE001 - rioxarray cannot tell where it lies: only its CRS to compare
        scene_transform = gcps = None
    where = f"{labels_path} vs {scene_path}"
    like = scene_path  # what `rio warp --like` opens: an ENVI scene's data file, not its header
    if scene_format(scene_path) == "envi":
        like = envi_paths(scene_path)[1]
    labels, names, cmap = _read_label_raster(labels_path, tuple(da.shape[1:]), scene_crs, scene_transform, where,
                                             like, gcps)
    nodata, nodata_bands = declared_nodata(da), scene_nodata_bands(da)
    raw = np.asarray(da.values)
    labels, nodata_bands, bad = unlabel_nodata(raw, labels, nodata, nodata_bands,  # (no bbl: a mosaic lost it)
                                                str(scene_path))
    k = int(labels.max())
    if k == 0:
        tested = np.arange(raw.shape[0]) if nodata_bands is None else np.asarray(nodata_bands)
        dead = np.intersect1d(bands_without_data(raw, nodata), tested).tolist()
        why = (f": bands {dead[:10]}{'...' if len(dead) > 10 else ''} (0-based) hold nodata in every pixel yet the "
               "scene flags them good, so every pixel counts as nodata; flag them with a 'bbl' band coordinate (0 = "
               "bad; GeoTIFF band metadata bbl=0, ENVI 'bbl'), or drop them" if dead else "")
        raise DataError(f"{where}: no labelled pixel with data (labels 1..K on pixels that are not nodata); found "
                        f"{int(bad.sum())} nodata pixels{why}")
    names = class_names if class_names is not None else names
    if names is not None:
        names = [str(n).strip() for n in names]
        why = class_names_problem(names)
        if why:
            raise DataError(f"class names {names}: {why} "
                            f"({'--class-names' if class_names is not None else 'the label raster'})")
        if k <= len(names):  # the legend's classes, whether or not this scene holds the last ones (a crop of a
            k = len(names)   # larger legend: its ids kept; run_training warns of the classes without a pixel)
    if names is None or k > len(names):
        check_class_ids(labels, str(labels_path))
    names = label_class_names(names, k, str(labels_path),
                              given="class_names= (--class-names)" if class_names is not None else None)
    palette = [list(cmap[i][:3]) for i in range(1, k + 1)] if cmap and all(i in cmap for i in range(1, k + 1)) \
        else [list(c) for c in default_palette(k)]  # (random colours had made grass near-black, water beige)
    wl = da.coords["wavelength"].values.tolist() if "wavelength" in da.coords else None
    cube = da.copy(data=raw)
    grid = None
    if scene_crs is not None and scene_transform is not None:  # where the split's pixels lie on the ground
        grid = {"crs": scene_crs.to_wkt(), "transform": [float(v) for v in tuple(scene_transform)[:6]],
                "shape": [int(n) for n in labels.shape]}
    return Scene(scene_path.stem, cube, labels, names, palette, wl,
                 f"{scene_path.resolve()} + {labels_path.resolve()}", None, nodata, nodata_bands, grid)


def _check_not_shipped(out: Any) -> None:
    """Refuse the model this package ships as a training output: ``--overwrite`` replaced it, and the demo (which
    scores it on its own split) then failed."""
    from ssrn.train import TrainOptionError

    from .demo import SHIPPED_MODEL

    if is_text_path(out):
        try:  # lstat: a link to it is replaced, its target kept (ssrn.checkpoint.check_model_target)
            here, ours = os.lstat(out), os.stat(SHIPPED_MODEL)
        except OSError:
            return
        if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):
            raise TrainOptionError(f"out {os.fspath(out)} is the model hsi-engine ships ({SHIPPED_MODEL}, the demo's): "
                                   "train into another directory")


def train(dataset: str | os.PathLike | Scene, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
          class_names: Sequence[str] | None = None, variable: str | None = None, band_axis: int | None = None,
          **options: Any) -> dict[str, Any]:
    """Train a model into ``out`` (:func:`ssrn.train.run_training` with ``options``), on a standard dataset or a
    self-contained scene file, or (``labels``) on the scene ``dataset`` names and its label raster
    (:func:`load_labelled_raster`; ``class_names`` name its classes 1..K; ``variable`` and ``band_axis`` open
    that scene as :func:`~hsi_engine.open_scene` does). Returns the training report.

    As ``hsi-engine train``: the output, the device and the options are checked before the scene is read."""
    from ssrn.train import TrainOptionError, run_training

    _check_not_shipped(out)
    if labels is not None:  # (without labels, run_training checks dataset and out; with them, out)
        for name, value in (("dataset", dataset), ("labels", labels)):
            if not is_text_path(value):
                raise TrainOptionError(f"{name} must be a path (a str or pathlib.Path) with labels=; got "
                                       f"{type(value).__name__}: write an array or DataArray to a file first (e.g. "
                                       "da.rio.to_raster('scene.tif'), or np.save for labels) and pass its path")
    _check_class_names(class_names, TrainOptionError)
    if labels is None:
        if class_names is not None:
            raise TrainOptionError("class_names (--class-names) name the classes of a label raster: give labels= "
                                   "(--labels) too, or put 'class_names' in the .npz / .h5 scene")
        given = [f"{k}=... (--{k.replace('_', '-')})" for k, v in (("variable", variable), ("band_axis", band_axis))
                 if v is not None]  # (the command line reads "--band-axis opens ...")
        if given:
            raise TrainOptionError(f"{' and '.join(given)} {'opens' if len(given) == 1 else 'open'} the scene of a "
                                   "label raster: give labels= (--labels) "
                                   "too; a .mat / .npz / .h5 training scene is read by its own keys ('cube', "
                                   "'labels')")
        return run_training(dataset, out, **options)
    scene_path, labels_path = Path(dataset), Path(labels)
    return run_training(lambda: load_labelled_raster(scene_path, labels_path, class_names=class_names,
                                                     variable=variable, band_axis=band_axis), out, **options)
