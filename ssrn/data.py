"""Scenes, labels, splits and on-the-fly patches for SSRN training.

* Loaders for the standard MATLAB scenes (v5 via ``scipy.io.loadmat``, v7.3 via ``h5py``) returning an
  ``xarray.DataArray`` ``(band, y, x)`` and an integer label map (0 = unlabelled, 1..K).
* A registry of the four standard datasets (file names as distributed by the GIC page), class names,
  palettes and the seed's split fractions; the shipped Indian Pines copy is the fallback.
* Per-band standardisation over the scene (the seed's ``preprocessing.scale``).
* Splits: stratified random by fractions, a fixed count per class, and spatially disjoint blocks.
* :class:`PatchDataset`: patches cut on the fly from the zero-padded normalised scene; the
  ``N x P x P x B`` array is never built.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from .config import DATASET_ALIASES
from .dims import MAP_AXES, SCENE_AXES, dims_by_axis, unnamed
from .errors import (HSIEngineError, OptionError, OptionTypeError, check_flag, first_line, is_text_path, is_whole,
                     reduce_not_found, unexpanded_home)
from .palette import default_palette

__all__ = [
    "DATASETS", "DataError", "DataNotFoundError", "DatasetSpec", "PatchDataset", "Scene", "Split",
    "UnknownDatasetError", "block_split", "decode_mask", "default_data_dir", "encode_mask", "is_scene_path",
    "load_dataset", "load_mat_array", "load_scene", "per_class_split", "shipped_indian_pines",
    "split_masks_from_meta", "standardize", "standardize_scene", "stratified_split",
]

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ssrn.data")
SHIPPED_IN = REPO / "hsi_engine" / "data" / "indian_pines" / "indian_pines.h5"


class DataError(HSIEngineError, ValueError):
    """A scene or label file that cannot be used: missing key, wrong shape, bad values."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data directory, scene, ground truth or label raster that is not there (a ``FileNotFoundError`` too)."""

    __reduce__ = reduce_not_found  # (crosses back from a dask worker as itself)


class UnknownDatasetError(DataError, KeyError):
    """A dataset name that is neither registered nor a path (a ``KeyError`` too, for older callers)."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------
# registry

def _palette(hexes: str) -> list[list[int]]:
    return [[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in hexes.split()]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    scene_files: tuple[str, ...]
    scene_keys: tuple[str, ...]
    gt_files: tuple[str, ...]
    gt_keys: tuple[str, ...]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    train_fraction: float
    val_fraction: float
    sensor: str = ""
    note: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "indian_pines": DatasetSpec(
        "indian_pines", ("Indian_pines_corrected.mat",), ("indian_pines_corrected", "indian_pines"),
        ("Indian_pines_gt.mat", "gic_gt/Indian_pines_gt.mat"), ("indian_pines_gt",),
        ("Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees",
         "Grass-pasture-mowed", "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill",
         "Soybean-clean", "Wheat", "Woods", "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers"),
        tuple(map(tuple, _palette("ff0000 00ff00 0000ff ffff00 00ffff ff00ff b0b0b0 808080 800000 808000 "
                                  "008000 800080 008080 000080 ffa500 8b4513"))),
        0.2, 0.1, "AVIRIS", "seed protocol: 20% train / 10% val / 70% test"),
    "pavia_university": DatasetSpec(
        "pavia_university", ("PaviaU.mat",), ("paviaU", "pavia_u", "paviau"),
        ("PaviaU_gt.mat", "gic_gt/PaviaU_gt.mat"), ("paviaU_gt", "paviau_gt"),
        ("Asphalt", "Meadows", "Gravel", "Trees", "Painted metal sheets", "Bare soil", "Bitumen",
         "Self-blocking bricks", "Shadows"),
        tuple(map(tuple, _palette("c0c0c0 00ff00 00ffff 008000 ff00ff a0522d 800080 ff0000 ffff00"))),
        0.1, 0.1, "ROSIS", "seed protocol: 10% train / 10% val / 80% test"),
    "ksc": DatasetSpec(
        "ksc", ("KSC.mat",), ("KSC", "ksc"), ("KSC_gt.mat", "gic_gt/KSC_gt.mat"), ("KSC_gt", "ksc_gt"),
        ("Scrub", "Willow swamp", "CP hammock", "Slash pine", "Oak/Broadleaf", "Hardwood", "Swamp",
         "Graminoid marsh", "Spartina marsh", "Cattail marsh", "Salt marsh", "Mud flats", "Water"),
        tuple(map(tuple, _palette("008000 00ff00 808000 006400 8b4513 a0522d 2e8b57 ffff00 ffa500 "
                                  "ff00ff ff0000 c0c0c0 0000ff"))),
        0.2, 0.1, "AVIRIS", "seed protocol (paper): 20% train / 10% val / 70% test"),
    "salinas": DatasetSpec(
        "salinas", ("Salinas_corrected.mat",), ("salinas_corrected", "salinas"),
        ("Salinas_gt.mat", "gic_gt/Salinas_gt.mat"), ("salinas_gt",),
        ("Brocoli_green_weeds_1", "Brocoli_green_weeds_2", "Fallow", "Fallow_rough_plow", "Fallow_smooth",
         "Stubble", "Celery", "Grapes_untrained", "Soil_vinyard_develop", "Corn_senesced_green_weeds",
         "Lettuce_romaine_4wk", "Lettuce_romaine_5wk", "Lettuce_romaine_6wk", "Lettuce_romaine_7wk",
         "Vinyard_untrained", "Vinyard_vertical_trellis"),
        tuple(map(tuple, _palette("ff0000 00ff00 0000ff ffff00 00ffff ff00ff b0b0b0 808080 800000 808000 "
                                  "008000 800080 008080 000080 ffa500 8b4513"))),
        0.1, 0.1, "AVIRIS",
        "not in the seed; hsi-engine uses 10% train / 10% val / 80% test like Pavia University "
        "(Salinas has 54129 labelled pixels, more than 5x Indian Pines)"),
}


def dataset_spec(name: str) -> DatasetSpec:
    key = name.lower().replace("-", "_")
    key = DATASET_ALIASES.get(key, key)
    if key not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (or pass a path to a "
                                  ".mat/.h5/.npz scene)")
    return DATASETS[key]


def is_scene_path(name: str) -> bool:
    """Whether ``load_dataset`` reads ``name`` as a scene file (by suffix, or an existing file), not a registry name."""
    p = Path(name)
    return p.suffix.lower() in (".mat", ".h5", ".hdf5", ".npz") or p.is_file()


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$HSI_ENGINE_DATA``, else ``../shared/data`` beside the repository.

    A ``data_dir`` given explicitly must be a directory: a typo must not fall back to other data silently.
    """
    if data_dir is not None:
        if not is_text_path(data_dir):
            raise OptionError(f"data_dir must be a path (a str or pathlib.Path) or None; got {type(data_dir).__name__}"
                              + (": decode it first (os.fsdecode(data_dir))" if isinstance(data_dir, bytes) else ""))
        if not Path(data_dir).is_dir():
            what = "is not a directory" if Path(data_dir).exists() else "does not exist"
            home = unexpanded_home(data_dir, written=False)
            raise DataNotFoundError(f"data directory {data_dir} {what}; expected the directory holding the "
                                    "scene files (fix --data-dir, or leave it out for $HSI_ENGINE_DATA or "
                                    "../shared/data)" + (f" (the path {home})" if home else ""))
        return Path(data_dir)
    env = os.environ.get("HSI_ENGINE_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


# --------------------------------------------------------------------------------------------------
# MATLAB loading

def _mat_damaged(path: Path, e: BaseException) -> DataError:
    return DataError(f"{path} is a MATLAB v7.3 (HDF5) file that is truncated or damaged ({first_line(e)}); fetch it "
                     "again, or save it again (MATLAB's save -v7.3), or convert the scene to GeoTIFF or zarr")


def _mat_keys_and_reader(path: Path):
    """(keys, get(key) -> ndarray, ndim(key) -> int or None, close) for a MATLAB v5 or v7.3 file. ``ndim`` reads a
    v7.3 variable's header only (None for a group: a struct), so finding the cube reads no other variable's data."""
    import h5py
    import scipy.io

    try:
        if h5py.is_hdf5(path):
            raise NotImplementedError("MATLAB v7.3")
        d = scipy.io.loadmat(str(path))
    except NotImplementedError:  # v7.3 = HDF5
        try:
            f = h5py.File(path, "r")
        except OSError as e:  # truncated (its end-of-file address beyond the file), damaged superblock
            raise _mat_damaged(path, e) from None
        try:
            keys = [k for k in f.keys() if not k.startswith("#")]
        except (OSError, RuntimeError, KeyError) as e:
            f.close()
            raise _mat_damaged(path, e) from None

        def get(key: str) -> np.ndarray:
            try:
                a = f[key][()]
            except (OSError, RuntimeError) as e:  # a chunk cut off or corrupt (a gzip filter failure)
                raise _mat_damaged(path, e) from None
            return np.ascontiguousarray(a.transpose(tuple(range(a.ndim))[::-1]))  # MATLAB is column-major

        def ndim(key: str) -> int | None:
            try:
                obj = f.get(key)
            except (OSError, RuntimeError, KeyError) as e:
                raise _mat_damaged(path, e) from None
            return obj.ndim if isinstance(obj, h5py.Dataset) else None
        return keys, get, ndim, f.close
    except (ValueError, OSError, TypeError, IndexError, EOFError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}); is it complete? "
                        "Write it again (savemat, or MATLAB's save), or convert the scene to GeoTIFF or zarr") from None
    keys = [k for k in d if not k.startswith("__")]
    return keys, (lambda key: np.asarray(d[key])), (lambda key: np.ndim(d[key])), (lambda: None)


def _mat_which_problem(path: Path, what: str, ndim: int | None, cands: list[str], found: Sequence[str],
                       ndim_of: Any) -> str:
    """The error for a .mat file read without a key whose ``ndim``-D arrays (``cands``) are not exactly one: what was
    looked for, what the file holds, and the fix (save the array into it, or name the one to read)."""
    kind = f"{ndim}-D array" if ndim is not None else "array"
    shown = sorted(found)[:12]
    held = ", ".join(f"{k} ({'struct' if ndim_of(k) is None else f'{ndim_of(k)}-D'})" for k in shown) + (
        f" ... ({len(found)} in all)" if len(found) > len(shown) else "")
    save = f"(MATLAB: save(file, 'name'); Python: scipy.io.savemat(file, {{'name': {what.replace(' ', '_')}}}))"
    if not cands:
        return (f"{path}: looked for the {what} as the file's one {kind}, and it holds none (its variables: "
                f"{held or 'none'}); save the {what} into it as one {kind} {save}")
    name = {"scene": "scene_keys", "ground truth": "gt_keys"}.get(what)
    by_name = (f"ssrn.data.load_scene(scene_file, gt_file, {name}=[{cands[0]!r}])" if name else
               f"ssrn.data.load_mat_array(path, [{cands[0]!r}])")
    return (f"{path}: looked for the {what} as the file's one {kind}, and it holds {len(cands)} ({', '.join(cands)}), "
            f"so which is the {what} cannot be told; save the {what} alone in the file {save}, or name it in Python: "
            f"{by_name}")


def load_mat_array(path: str | os.PathLike, keys: Sequence[str] | None = None, *, ndim: int | None = None,
                   what: str = "array") -> tuple[np.ndarray, str]:
    """The array stored under the first of ``keys`` found (case-insensitive) in a .mat file.

    With ``keys=None`` the file must hold exactly one array of ``ndim`` dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{what} file {path} not found")
    found, get, ndim_of, close = _mat_keys_and_reader(path)
    try:
        lower = {k.lower(): k for k in found}
        if keys:
            for k in keys:
                if k.lower() in lower:
                    key = lower[k.lower()]
                    break
            else:
                raise DataError(f"{path}: no {what} under the expected key(s) {list(keys)}; keys found: "
                                f"{sorted(found)}. Rename the variable or pass the matching file.")
        else:
            cands = [k for k in found if ndim is None or ndim_of(k) == ndim]  # (no variable's data read)
            if len(cands) != 1:
                raise DataError(_mat_which_problem(path, what, ndim, cands, found, ndim_of))
            key = cands[0]
        arr = get(key)
    finally:
        close()
    if ndim is not None and arr.ndim != ndim:
        raise DataError(f"{path}: key {key!r} holds a {arr.ndim}-D array of shape {arr.shape}; "
                        f"expected a {ndim}-D {what}")
    return arr, key


def check_labels(labels: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """``labels`` as an int64 ``(y, x)`` map of ``shape``, refusing what is not class ids; a DataArray is read by
    its dim names (:func:`cube_array`), as the engine reads a scene's."""
    labels = cube_array(labels, f"{where}: the label map", MAP_AXES, fill=0) if _named(labels) else np.asarray(labels)
    if labels.ndim != 2 or labels.shape != tuple(shape):
        raise DataError(f"{where}: label map has shape {labels.shape} but the scene is {shape[0]} x {shape[1]} "
                        "(y, x); the ground truth must be a 2-D map of the same size as the scene")
    if labels.dtype.kind not in "biuf":  # strings (an HDF5 of class names), objects, complex, records
        found = {"S": "strings", "U": "strings", "O": "Python objects", "c": "complex numbers"}.get(
            labels.dtype.kind, "values that are not numbers")
        raise DataError(f"{where}: labels must be integer class ids (0 = unlabelled, 1..K); found {found} (dtype "
                        f"{labels.dtype}): store each pixel's class as an integer, numbering the classes 1..K")
    if not np.issubdtype(labels.dtype, np.integer):
        finite = np.isfinite(labels)
        if not finite.all():
            raise DataError(f"{where}: labels must be integers (0 = unlabelled, 1..K); found {int((~finite).sum())} "
                            "NaN or inf cells: set them to 0 (unlabelled), or declare NaN as the label file's nodata "
                            "value (a GeoTIFF: rio edit-info --nodata nan FILE)")
        if np.any(labels != np.round(labels)):
            bad = labels[labels != np.round(labels)]
            raise DataError(f"{where}: labels must be integers (0 = unlabelled, 1..K); found {bad.size} fractional "
                            f"values such as {float(bad[0])!r} (a resampled label raster: resample labels with "
                            "nearest neighbour, or round them)")
    if labels.min() < 0:
        lowest = labels.min()
        raise DataError(f"{where}: labels must be >= 0 (0 = unlabelled); found {lowest:g} "
                        f"({int((labels < 0).sum())} pixels): if it marks unlabelled pixels, set them to 0 or declare "
                        f"{lowest:g} the label raster's nodata value (rio edit-info --nodata {lowest:g} FILE)")
    return labels.astype(np.int64)


def label_class_names(values: Any, k: int, where: str, *, given: str | None = None) -> list[str]:
    """The scene file's ``class_names`` (one per class 1..K, for the map's legend), else ``class 1..K``. ``given``
    names where names given by the user came from (``"--class-names"``): the error then names that, not the file
    ``where`` whose labels they are for."""
    if values is None:
        return [f"class {i}" for i in range(1, k + 1)]
    names = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1).tolist()]
    if len(names) != k:
        if given is not None:
            raise DataError(f"{given} gives {len(names)} class names ({', '.join(names)}), but the labels of {where} "
                            f"run 1..{k}; give one name per class, in label order")
        raise DataError(f"{where}: 'class_names' holds {len(names)} names but the labels run 1..{k}; give one "
                        "name per class, in label order")
    return names


def check_class_ids(labels: np.ndarray, where: str) -> None:
    """Refuse a label map whose class ids 1..K are mostly empty (e.g. 1..16 plus 255 for "ignore"): the model
    would get K outputs, most of them classes without a single pixel. Not called where names are given for every
    class up to the highest id (a crop of a larger legend keeps its ids): the names say the ids are classes."""
    present = np.unique(labels[labels > 0])
    k = int(present[-1])
    if k - present.size <= present.size:
        return
    shown = ", ".join(map(str, present[:12])) + (", ..." if present.size > 12 else "")
    top = int((labels == k).sum())
    raise DataError(f"{where}: the labels hold {present.size} distinct classes ({shown}) but run up to {k} "
                    f"({top} pixels): a {k}-class model would have {k - present.size} classes without a pixel. If "
                    f"{k} marks unlabelled or ignored pixels, set them to 0; else number the classes 1..K, or, to "
                    f"keep these ids (a crop of a larger legend), name every class 1..{k} (--class-names with "
                    "--labels, a 'class_names' array in an .npz / .h5 scene)")


def _to_dataarray(cube_band_last: np.ndarray, wavelengths: Sequence[float] | None, name: str):
    import xarray as xr

    if cube_band_last.ndim != 3:
        raise DataError(f"{name}: scene must be 3-D (rows, cols, bands); got shape {cube_band_last.shape}")
    arr = np.moveaxis(cube_band_last, -1, 0)
    coords: dict[str, Any] = {"band": np.arange(1, arr.shape[0] + 1)}
    if wavelengths is not None and len(wavelengths) == arr.shape[0]:
        coords["wavelength"] = ("band", np.asarray(wavelengths, dtype=np.float64))
    return xr.DataArray(arr, dims=("band", "y", "x"), coords=coords, name=name)


def load_scene(scene_path: str | os.PathLike, gt_path: str | os.PathLike | None = None, *,
               scene_keys: Sequence[str] | None = None, gt_keys: Sequence[str] | None = None,
               wavelengths: Sequence[float] | None = None):
    """Read a MATLAB scene (rows, cols, bands) and its ground truth: ``(DataArray (band, y, x), labels)``."""
    scene_path = Path(scene_path)
    cube, key = load_mat_array(scene_path, scene_keys, ndim=3, what="scene")
    da = _to_dataarray(cube, wavelengths, key)
    if gt_path is None:
        return da, None
    gt, gkey = load_mat_array(gt_path, gt_keys, ndim=2, what="ground truth")
    labels = check_labels(gt, da.shape[1:], f"{gt_path} (key {gkey!r}) vs {scene_path} (key {key!r})")
    return da, labels


# --------------------------------------------------------------------------------------------------
# datasets

@dataclass
class Scene:
    """A scene with labels: ``cube`` (band, y, x) DataArray, ``labels`` (y, x) int64 with 0 = unlabelled."""

    name: str
    cube: Any
    labels: np.ndarray
    class_names: list[str]
    palette: list[list[int]]
    wavelengths: list[float] | None = None
    source: str = ""
    spec: DatasetSpec | None = None
    nodata: float | None = None  # a raster scene's declared nodata (its pixels are masked as the engine masks them)
    nodata_bands: np.ndarray | None = None  # the bands nodata is looked for in (a bbl's good bands); None: all
    grid: dict[str, Any] | None = None  # a georeferenced raster scene's CRS (WKT), transform and (height, width)

    def __post_init__(self) -> None:
        """A cube or label DataArray is read by its dim names (:mod:`ssrn.dims`, the engine's table) and kept as
        ``(band, y, x)`` / ``(y, x)`` under those names: whatever reads the scene then meets one order."""
        where = self.source or self.name
        if _named(self.cube):
            self.cube = _by_axes(self.cube, f"{where}: the scene's cube", SCENE_AXES)
        if _named(self.labels):
            self.labels = _by_axes(self.labels, f"{where}: the label map", MAP_AXES)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(band, y, x)``: a DataArray's dims are read by name (:func:`cube_array`), whatever their order."""
        if _named(self.cube):
            axes = dims_by_axis(self.cube.dims, f"{self.source or self.name}: the scene's cube", DataError)
            return tuple(int(self.cube.sizes[axes[a]]) for a in SCENE_AXES)  # type: ignore[return-value]
        return tuple(self.cube.shape)  # type: ignore[return-value]


def shipped_indian_pines():
    """The Indian Pines copy shipped in ``hsi_engine/data/indian_pines``: ``(DataArray, labels)``."""
    import h5py

    with h5py.File(SHIPPED_IN, "r") as f:
        cube = f["cube"][()]
        labels = f["labels"][()].astype(np.int64)
        wl = f["wavelength"][()]
    import xarray as xr

    da = xr.DataArray(cube, dims=("band", "y", "x"),
                      coords={"band": np.arange(1, cube.shape[0] + 1), "wavelength": ("band", wl)},
                      name="indian_pines_corrected")
    return da, labels


def _in_wavelengths(data_dir: Path | None) -> list[float] | None:
    if data_dir is not None and (data_dir / "Indian_pines_wavelengths.json").is_file():
        return list(json.loads((data_dir / "Indian_pines_wavelengths.json").read_text(encoding="utf-8"))["wavelengths"])
    if SHIPPED_IN.is_file():
        import h5py

        with h5py.File(SHIPPED_IN, "r") as f:
            return f["wavelength"][()].tolist()
    return None


def _find(data_dir: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (data_dir / n).is_file():
            return data_dir / n
    return None


def load_dataset(name: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Scene:
    """A registered dataset (``indian_pines``, ``pavia_university``, ``ksc``, ``salinas``) or a path.

    Looks in ``data_dir`` (else ``$HSI_ENGINE_DATA``, else ``../shared/data`` beside the repository);
    Indian Pines falls back to the copy this package ships.
    """
    if not is_text_path(name):
        raise OptionTypeError(f"load_dataset takes a dataset name ({', '.join(DATASETS)}) or a scene path (str or "
                              f"pathlib.Path); got {type(name).__name__}")
    ddir = default_data_dir(data_dir)  # an explicit data_dir that is not there is an error, even for a path
    name = os.fspath(name)
    if is_scene_path(name):
        return _load_path(Path(name))
    spec = dataset_spec(name)
    scene_file = _find(ddir, spec.scene_files) if ddir.is_dir() else None
    gt_file = _find(ddir, spec.gt_files) if ddir.is_dir() else None
    if scene_file is not None and gt_file is not None:
        wl = _in_wavelengths(ddir) if spec.name == "indian_pines" else None
        da, labels = load_scene(scene_file, gt_file, scene_keys=spec.scene_keys, gt_keys=spec.gt_keys,
                                wavelengths=wl)
        source = f"{scene_file} + {gt_file}"
    elif spec.name == "indian_pines" and SHIPPED_IN.is_file():
        da, labels = shipped_indian_pines()
        source = f"{SHIPPED_IN} (shipped copy)"
        # (the same scene; said where a data directory was given, whose own copy under another name is not read)
        (log.warning if data_dir is not None or os.environ.get("HSI_ENGINE_DATA") else log.info)(
            "indian_pines: %s holds no %s; using the copy shipped with hsi-engine (the same scene)", ddir,
            " or ".join(spec.scene_files))
    else:
        missing = [n for n, f in ((spec.scene_files, scene_file), (spec.gt_files, gt_file)) if f is None]
        env = os.environ.get("HSI_ENGINE_DATA") if data_dir is None else None
        whence = ""
        if env:  # the variable's directory: said where it comes from, and why nothing was found there
            home = unexpanded_home(env, written=False)
            what = "" if ddir.is_dir() else " (not a directory)" if ddir.exists() else " (it does not exist)"
            whence = f" ($HSI_ENGINE_DATA{what}{f'; the path {home}' if home else ''})"
        raise DataNotFoundError(
            f"dataset {spec.name!r}: looked in {ddir}{whence} for {' and '.join(' or '.join(m) for m in missing)} "
            f"and did not find {'them' if len(missing) > 1 else 'it'}. Download the scene and ground truth from the "
            "GIC 'Hyperspectral Remote Sensing Scenes' page (ehu.eus/ccwintco) into a directory and pass "
            "--data-dir DIR (or set HSI_ENGINE_DATA=DIR).")
    k = int(labels.max())
    if k > len(spec.class_names):
        raise DataError(f"{source}: labels go up to {k} but {spec.name} has {len(spec.class_names)} classes")
    wl = da.coords["wavelength"].values.tolist() if "wavelength" in da.coords else None
    labels, bands = _empty_bands_out(da, labels, source)
    return Scene(spec.name, da, labels, list(spec.class_names), [list(c) for c in spec.palette], wl, source, spec,
                 nodata_bands=bands)


def npy_problem(path: Path, e: BaseException, expected: str) -> str:
    """Why ``np.load(path, allow_pickle=False)`` refused a .npy with ``e``, read from the file's header, and the fix:
    a message naming ``path`` (never numpy's advice to unpickle a file, which runs code it holds)."""
    fix = f"expected {expected}: fetch it again, or write it again with numpy.save"
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                what = "is empty (0 bytes)" if f.tell() == 0 else "does not begin with the .npy signature"
                return f"{path} is not a .npy file: it {what}; {fix}"
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
        size = path.stat().st_size
    except (ValueError, TypeError, OSError, EOFError, SyntaxError) as err:  # a header cut short or not a literal
        return f"{path} is not a complete .npy file: its header cannot be read ({first_line(err)}); {fix}"
    if dtype.hasobject:
        return (f"{path} holds an object array (dtype {dtype}: pickled Python objects), refused as loading it could "
                f"run code; expected {expected}: convert the array to numbers (arr.astype) and save it with numpy.save")
    if any(n < 0 for n in shape):
        return f"{path} is not a complete .npy file: its header declares the shape {shape}, with a negative size; {fix}"
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        return (f"{path} is not a complete .npy file: its header declares {shape} {dtype} ({need} bytes with the "
                f"header) but it holds {size} bytes (truncated); {fix}")
    said = "" if "pickle" in str(e) else f" ({first_line(e)})"
    return f"{path} is not a readable .npy file{said}; {fix}"


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray, list[float] | None, Any]:
    """(cube (band, y, x), labels (y, x), wavelengths or None, class names or None) of an .npz; DataError for
    anything else."""
    import zipfile
    import zlib

    if not zipfile.is_zipfile(p):
        raise DataError(f"{p} is not an .npz archive (a zip of .npy arrays, as numpy.savez writes); expected "
                        "arrays 'cube' (band, y, x) and 'labels' (y, x)")
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: not a readable .npz ({e}); expected arrays 'cube' (band, y, x) and 'labels' "
                        "(y, x) written by numpy.savez") from None
    with z:
        if "cube" not in z or "labels" not in z:
            raise DataError(f"{p}: expected keys 'cube' (band, y, x) and 'labels' (y, x); found {sorted(z)}")
        try:
            cube, labels = z["cube"], z["labels"]
            wl = z["wavelength"].tolist() if "wavelength" in z else None
            names = z["class_names"] if "class_names" in z else None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a member cut off or corrupt
            raise DataError(f"{p} is truncated or damaged: an array in it cannot be read ({first_line(e)}); fetch "
                            "it again, or write it again with numpy.savez") from None
        except ValueError as e:  # object arrays (pickles), a member that is not an .npy
            raise DataError(f"{p}: its arrays are not readable numeric arrays ({e}); expected 'cube' "
                            "(band, y, x) and 'labels' (y, x) of numbers, written by numpy.savez") from None
    if cube.ndim != 3:
        raise DataError(f"{p}: 'cube' has shape {cube.shape}; expected a 3-D (band, y, x) array")
    return cube, labels, wl, names


def _load_path(p: Path) -> Scene:
    """A scene given by path: our HDF5 (cube/labels), an .npz (cube (band,y,x), labels) or a .mat + _gt.mat."""
    if not p.exists():
        raise DataNotFoundError(f"scene file {p} not found")
    suf = p.suffix.lower()
    names = None
    if suf not in (".npz", ".h5", ".hdf5", ".mat"):  # a scene without its labels inside or beside it
        raise DataError(f"{p} holds no labels ({suf or 'no suffix'}: a scene only): give its label raster with "
                        "--labels RASTER (hsi_engine.train(..., labels=RASTER) in Python); .mat (with a _gt.mat "
                        "beside it), .npz and .h5 scenes carry their own")
    if suf == ".npz":
        cube, labels, wl, names = _read_npz(p)
        da = _to_dataarray(np.moveaxis(cube, 0, -1), wl, p.stem)
    elif suf in (".h5", ".hdf5"):
        import h5py

        if not h5py.is_hdf5(p):
            raise DataError(f"{p} is not an HDF5 file; expected datasets 'cube' (band, y, x) and 'labels' (y, x)")
        try:
            with h5py.File(p, "r") as f:
                if "cube" not in f or "labels" not in f:
                    raise DataError(f"{p}: expected datasets 'cube' (band, y, x) and 'labels' (y, x); found "
                                    f"{sorted(f)}")
                cube, labels = f["cube"][()], f["labels"][()]
                wl = f["wavelength"][()].tolist() if "wavelength" in f else None
                names = f["class_names"][()] if "class_names" in f else None
        except (OSError, RuntimeError) as e:  # cut off (its end beyond the file), a corrupt chunk (a filter failure)
            raise DataError(f"{p} is truncated or damaged: HDF5 cannot read it ({first_line(e)}); fetch it again, "
                            "or write it again (h5py)") from None
        if cube.ndim != 3:
            raise DataError(f"{p}: 'cube' has shape {cube.shape}; expected a 3-D (band, y, x) array")
        da = _to_dataarray(np.moveaxis(cube, 0, -1), wl, p.stem)
    else:
        cands = list(dict.fromkeys([p.with_name(p.stem + "_gt.mat"),
                                    p.with_name(p.stem.replace("_corrected", "") + "_gt.mat"),
                                    p.parent / "gic_gt" / (p.stem.replace("_corrected", "") + "_gt.mat")]))
        gt = next((c for c in cands if c.is_file()), None)
        if gt is None:
            raise DataNotFoundError(f"no ground truth for {p}: looked for {[str(c) for c in cands]}; or give a "
                                    "label raster with --labels RASTER")
        da, labels = load_scene(p, gt)
    labels = check_labels(labels, da.shape[1:], str(p))
    k = int(labels.max())
    if k == 0:
        raise DataError(f"{p}: the label map has no labelled pixels (all 0); expected classes 1..K on the "
                        "pixels to train and test on (0 = unlabelled)")
    if names is None or k > np.size(names):  # names for every id: its classes, gaps and all (as a label raster's
        check_class_ids(labels, str(p))       # --class-names, hsi_engine.training.load_labelled_raster)
    names = label_class_names(names, k, str(p))
    palette = [list(c) for c in default_palette(k)]  # (random colours had made grass near-black, water beige)
    wl = da.coords["wavelength"].values.tolist() if "wavelength" in da.coords else None
    labels, bands = _empty_bands_out(da, labels, str(p))
    return Scene(p.stem, da, labels, names, palette, wl, str(p), None, nodata_bands=bands)


def _empty_bands_out(da: Any, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A float cube's bands without a finite value (water-absorption bands set to NaN) are its bad bands, as a
    raster scene's without data are: left out of the nodata test and read as 0, so the scene is not all nodata
    (every pixel trained as a zero spectrum, OA 0.01, exit 0). Labelled pixels with NaN in a good band are
    unlabelled, as the engine masks them. Returns ``(labels, the good bands or None)``."""
    raw = np.asarray(da.values)
    if raw.dtype.kind != "f" or np.isfinite(raw).all():
        return labels, None
    if not np.isfinite(raw).any(axis=tuple(range(1, raw.ndim))).any():
        raise DataError(f"{where}: no band holds a finite value; expected a cube with data")
    unlabelled, good, bad = unlabel_nodata(raw, labels, None, None, where)
    if good is not None:
        log.info("%s: bands %s hold no finite value: read as bad bands (0 once normalised), as the engine reads "
                 "them", where, np.setdiff1d(np.arange(raw.shape[0]), good).tolist())
    return unlabelled, good


def unlabel_nodata(raw: np.ndarray, labels: np.ndarray, nodata: float | None, nodata_bands: np.ndarray | None,
                    where: str = "") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The engine's mask on a training scene: without a bbl (``nodata_bands`` None), bands with no data in any
    pixel are the bad ones; the pixels the mask takes lose their labels. ``(labels, nodata_bands, bad)``.
    Pixels with NaN or inf in a tested band and no NaN nodata declared are left out with a warning: the engine
    refuses them unless told ``--nodata nan``."""
    if nodata_bands is None:
        empty = bands_without_data(raw, nodata)
        if 0 < empty.size < raw.shape[0]:
            nodata_bands = np.setdiff1d(np.arange(raw.shape[0]), empty)
    bad = _nodata_pixels(raw, nodata, nodata_bands)
    if raw.dtype.kind == "f" and nodata is None:  # (with a declared nodata value the engine masks NaN too)
        nonfinite = np.zeros(raw.shape[1:], bool)
        for b in (range(raw.shape[0]) if nodata_bands is None else nodata_bands):
            nonfinite |= ~np.isfinite(raw[b])
        if nonfinite.any():
            log.warning("%s: %d pixels hold NaN or inf (%d of them labelled) and the scene declares no nodata: "
                        "training leaves them out; classifying this scene then needs --nodata nan "
                        "(nodata=float('nan')), which maps them to class 0", where or "the scene",
                        int(nonfinite.sum()), int((nonfinite & (labels > 0)).sum()))
    lost = int((bad & (labels > 0)).sum())
    if lost:
        log.info("%s: %d labelled pixels hold the scene's nodata and are left out of training", where or "the scene",
                 lost)
    return np.where(bad, 0, labels), nodata_bands, bad


# --------------------------------------------------------------------------------------------------
# normalisation

def _as_numpy(data: Any, *, fill: float = np.nan) -> np.ndarray:
    """``data`` as a numpy array: a tensor detached and on the CPU, a masked array's masked values ``fill`` (NaN: a
    float array, exact for integers up to 32 bits), anything else through ``np.asarray``."""
    if torch.is_tensor(data):
        return data.detach().cpu().resolve_conj().resolve_neg().numpy()
    if isinstance(data, np.ma.MaskedArray):
        if not np.ma.getmaskarray(data).any():
            return np.asarray(data.data)
        dtype = np.promote_types(data.dtype, np.float32) if np.isnan(fill) else data.dtype
        return data.astype(dtype).filled(fill)
    return np.asarray(data)


def standardize(cube: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band standardisation over the scene (the seed's ``preprocessing.scale``, population std).

    Returns ``(normalised float32 (band, y, x), mean (band,), std (band,))``; a constant band gets std 1.
    The engine applies ``(x - mean) / std`` with the stored statistics.

    A DataArray is read by its dim names in any order, as the engine reads a scene's (:mod:`ssrn.dims`: band, y, x
    or ``wavelength``, ``lat``/``lon``, ``row``/``col``...); unknown or repeated names are refused (:func:`cube_array`).

    NaN, inf and a numpy masked array's masked values are nodata, as :func:`standardize_scene` reads them: a pixel
    with one in any band (bands without a finite value aside) is left out of the statistics and its spectrum is 0
    (the band means), as the engine reads nodata with ``nodata=float('nan')``; a warning counts those pixels.
    """
    raw = cube_array(cube, "standardize: the cube")
    if raw.ndim != 3:
        raise OptionError(f"standardize: expected a (band, y, x) scene; got shape {raw.shape}")
    if raw.dtype.kind not in "biuf":
        raise OptionError(f"standardize: expected a numeric (band, y, x) scene; got dtype {raw.dtype}")
    a = np.asarray(raw, dtype=np.float64)  # the stored layout, as before: the seed's statistics to the last bit
    if not np.isfinite(a).all():
        return _standardize_nonfinite(a)
    mean = a.mean(axis=(1, 2))
    std = a.std(axis=(1, 2))
    std = np.where(std > 0, std, 1.0)
    normed = ((a - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    return normed, mean, std


def _standardize_nonfinite(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`standardize` of a float64 cube holding NaN or inf: its bands without a finite value are bad bands
    (0), its other non-finite values mark nodata pixels (left out of the statistics, spectra 0)."""
    empty = bands_without_data(a, None)
    if empty.size == a.shape[0]:
        raise DataError(f"standardize: no band of the {a.shape} scene holds a finite value (NaN, inf or masked "
                        "everywhere); expected a cube with data")
    good = np.setdiff1d(np.arange(a.shape[0]), empty) if empty.size else None
    normed, mean, std, bad = _valid_statistics(a, None, good)
    if good is not None:
        normed[empty] = 0
    log.warning("standardize: %d of %d pixels hold NaN, inf or masked values%s: they are nodata, left out of the "
                "statistics and read as 0 (the band means), as the engine reads them with nodata=float('nan'); "
                "leave them out of the training indices", int(bad.sum()), bad.size,
                f" (bands {empty.tolist()[:10]} hold no finite value: read as 0)" if empty.size else "")
    return normed, mean, std


def bands_without_data(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Indices of the bands that hold the nodata value (or a non-finite one) in every pixel."""
    flat = raw.reshape(raw.shape[0], -1)
    empty = ~np.isfinite(flat).any(axis=1) if flat.dtype.kind == "f" else np.zeros(flat.shape[0], bool)
    if nodata is not None and not np.isnan(nodata):
        empty |= (flat == nodata).all(axis=1)
    return np.flatnonzero(empty)


def _nodata_pixels(raw: np.ndarray, nodata: float | None, nodata_bands: np.ndarray | None) -> np.ndarray:
    """``(y, x)`` pixels the engine masks: a non-finite value or ``nodata`` in a tested band."""
    from .normalise import normalise_into

    bad, _ = normalise_into(raw, None, None, nodata, np.empty(raw.shape, np.float32), nodata_bands)
    return bad


def standardize_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`standardize` for a scene; one with nodata pixels (a raster scene) takes its statistics over the
    pixels with data and normalises as the engine does (the same float64 operations, nodata pixels' spectra 0);
    bad bands (outside ``scene.nodata_bands``) are 0, as the engine reads a model's bad bands, so training sees
    what classifying will. A cube DataArray is read by its dim names (band, y, x); a plain array as stored."""
    normed, mean, std = _standardize_valid(scene)
    if scene.nodata_bands is not None:
        normed[np.setdiff1d(np.arange(normed.shape[0]), scene.nodata_bands)] = 0
    return normed, mean, std


def _scene_array(scene: Scene) -> np.ndarray:
    """The scene's cube as a numpy ``(band, y, x)`` array (:func:`cube_array`)."""
    return cube_array(scene.cube, f"{scene.source or scene.name}: the scene's cube")


def _named(a: Any) -> bool:
    """Whether ``a`` is an array with dim names of its own (a DataArray not left as xarray's ``dim_0``...)."""
    return hasattr(a, "dims") and not unnamed(a.dims)


def _by_axes(da: Any, where: str, axes: tuple[str, ...]) -> Any:
    """DataArray ``da`` transposed to ``axes`` and its dims renamed to them (its coordinates keep their names),
    each dim read by name (:func:`ssrn.dims.dims_by_axis`); refused with a :class:`DataError` naming the fix."""
    if tuple(da.dims) == axes:
        return da
    found = dims_by_axis(da.dims, where, DataError, axes)
    swap = {d: a for a, d in found.items() if d != a}
    clash = next((a for d, a in swap.items() if a in da.coords and da[a].dims != (d,)), None)
    if clash is not None:  # a 2-D 'y' coordinate beside dims lat/lon
        raise DataError(f"{where}: its dims {tuple(map(str, da.dims))} are read as {axes}, but it also has a "
                        f"coordinate named {clash!r} on dims {tuple(map(str, da[clash].dims))}; drop or rename that "
                        f"coordinate first, e.g. da.drop_vars({clash!r})")
    return da.transpose(*(found[a] for a in axes)).swap_dims(swap)


def cube_array(cube: Any, where: str, dims: tuple[str, ...] = SCENE_AXES, *, fill: float = np.nan) -> np.ndarray:
    """A cube (``dims`` band, y, x) or label map (y, x) as a numpy array in ``dims`` order.

    A DataArray is read by its dim names, as the engine reads a scene's (:mod:`ssrn.dims`: ``lat``/``lon``,
    ``row``/``col``, ``wavelength``... in any order); names that are unknown, repeated (``lat`` beside ``row``) or
    of another axis are refused, never read by position. xarray's unnamed ``dim_0``... are read as stored, as is a
    plain array (or tensor, or masked array: masked values ``fill``, :func:`_as_numpy`). ``where`` names the cube in
    the error."""
    if not _named(cube):
        return _as_numpy(cube.values if hasattr(cube, "dims") else cube, fill=fill)
    found = dims_by_axis(cube.dims, where, DataError, dims)
    return _as_numpy(cube.transpose(*(found[a] for a in dims)).values, fill=fill)


def _standardize_valid(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = _scene_array(scene)
    if scene.nodata is None and not np.issubdtype(raw.dtype, np.floating):
        return standardize(raw)
    bad = _nodata_pixels(raw, scene.nodata, scene.nodata_bands)
    if scene.nodata is None and not bad.any() and np.isfinite(raw).all():
        return standardize(raw)  # the seed's datasets: the statistics exactly as before
    normed, mean, std, _ = _valid_statistics(raw, scene.nodata, scene.nodata_bands, bad)
    return normed, mean, std


def _valid_statistics(raw: np.ndarray, nodata: float | None, nodata_bands: np.ndarray | None,
                      bad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(normed, mean, std, nodata pixels)``: per-band statistics over the pixels with data, normalised as the
    engine does (the same float64 operations), nodata pixels' spectra 0."""
    from .normalise import normalise_into

    if bad is None:
        bad = _nodata_pixels(raw, nodata, nodata_bands)
    valid = raw[:, ~bad].astype(np.float64)
    finite = np.isfinite(valid)  # inf in a bad band, like NaN, is no data for its statistics
    valid[~finite] = 0
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a band without data: NaN, made 0 below
        mean = valid.sum(axis=1) / n
        std = np.sqrt((np.where(finite, valid - mean[:, None], 0) ** 2).sum(axis=1) / n)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    normed = np.empty(raw.shape, np.float32)
    masked, _ = normalise_into(raw, mean, std, nodata, normed, nodata_bands)
    normed[:, masked] = 0
    return normed, mean, std, masked


# --------------------------------------------------------------------------------------------------
# splits

@dataclass
class Split:
    """Flat pixel indices (into ``y * W + x``) of the train, validation and test sets."""

    shape: tuple[int, int]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)

    def masks(self) -> dict[str, np.ndarray]:
        out = {}
        for k in ("train", "val", "test"):
            m = np.zeros(self.shape[0] * self.shape[1], bool)
            m[getattr(self, k)] = True
            out[k] = m.reshape(self.shape)
        return out

    def counts(self, labels: np.ndarray, k: int | None = None) -> dict[str, list[int]]:
        """Pixels per class 1..K (``k``, default the largest label) in each part."""
        flat = labels.reshape(-1)
        k = int(flat.max()) if k is None else int(k)
        return {s: np.bincount(flat[getattr(self, s)], minlength=k + 1)[1:].tolist() for s in ("train", "val", "test")}

    def to_meta(self) -> dict[str, Any]:
        """Compact JSON form: the train, validation and test masks packed as bits (base64), plus the
        description. The test mask is recorded too: a spatially disjoint split drops labelled pixels from every
        set, so "labelled, not train, not val" is not its test set."""
        m = self.masks()
        return {**self.description, "shape": list(self.shape), "n_train": int(self.train.size),
                "n_val": int(self.val.size), "n_test": int(self.test.size),
                "train_mask": encode_mask(m["train"]), "val_mask": encode_mask(m["val"]),
                "test_mask": encode_mask(m["test"])}


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean (y, x) mask as ``{"encoding": "packbits-base64", "shape", "data"}`` (row-major, big-endian bits)."""
    mask = np.asarray(mask, bool)
    return {"encoding": "packbits-base64", "shape": list(mask.shape),
            "data": base64.b64encode(np.packbits(mask.reshape(-1)).tobytes()).decode("ascii")}


def decode_mask(enc: dict[str, Any]) -> np.ndarray:
    if enc.get("encoding") != "packbits-base64":
        raise DataError(f"unknown mask encoding {enc.get('encoding')!r}")
    shape = tuple(enc["shape"])
    bits = np.unpackbits(np.frombuffer(base64.b64decode(enc["data"]), np.uint8))[: math.prod(shape)]
    return bits.astype(bool).reshape(shape)


def split_masks_from_meta(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"train": mask, "val": mask, "test": mask}`` from a model's ``meta["split"]``, those it records (models
    saved before the test mask was recorded have train and val only)."""
    s = meta.get("split") or {}
    return {k: decode_mask(s[f"{k}_mask"]) for k in ("train", "val", "test") if f"{k}_mask" in s}


def _labelled_by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    flat = labels.reshape(-1)
    return {int(c): np.flatnonzero(flat == c) for c in np.unique(flat) if c > 0}


def stratified_split(labels: np.ndarray, train_fraction: float, val_fraction: float, seed: int = 0) -> Split:
    """A stratified random split at the seed protocol's fractions, not the seed's own split (that, with its
    rounding and its generator, is :func:`ssrn.seed_split.seed_split`): per class, a random ``train_fraction`` for
    training, ``val_fraction`` for validation, the rest for test, each share rounded. Every class gets at least
    one training pixel, and a class of >= 3 pixels at least one validation pixel (when ``val_fraction`` > 0) and
    one test pixel as long as its rounded training share leaves it two: at high fractions a small class can get
    none (0.7 / 0.1 gives a class of 3 pixels two training pixels, no validation pixel and one test pixel; 0.9
    gives it three training pixels). The trainer names such classes in a warning and in its report's split."""
    if not (0 < train_fraction < 1 and 0 <= val_fraction < 1 and train_fraction + val_fraction < 1):
        raise OptionError(f"fractions must satisfy 0 < train, 0 <= val, train + val < 1; got "
                         f"{train_fraction}, {val_fraction}")
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for c, idx in _labelled_by_class(labels).items():
        idx = rng.permutation(idx)
        n = idx.size
        nt = max(1, int(round(train_fraction * n)))
        nv = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 3:
            nv = max(1, nv)
        nt, nv = min(nt, n), min(nv, max(0, n - nt - 1))
        tr.append(idx[:nt]); va.append(idx[nt:nt + nv]); te.append(idx[nt + nv:])
    cat = lambda xs: np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)  # noqa: E731
    return Split(labels.shape, cat(tr), cat(va), cat(te),
                 {"method": "stratified_random", "seed": seed, "train_fraction": train_fraction,
                  "val_fraction": val_fraction, "test_fraction": round(1 - train_fraction - val_fraction, 6)})


def per_class_split(labels: np.ndarray, per_class: int, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """A fixed number of training pixels per class (at most half of a small class: the description's ``capped``
    maps those class ids to the number they got), ``val_fraction`` of each class for validation, the rest for
    test."""
    if per_class < 1:
        raise OptionError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    capped = {}  # class id -> its training pixels, for classes too small to give per_class and keep half to test
    for c, idx in _labelled_by_class(labels).items():
        idx = rng.permutation(idx)
        n = idx.size
        nt = min(per_class, max(1, n // 2))
        if nt < per_class:
            capped[c] = nt
        nv = min(int(round(val_fraction * n)), max(0, n - nt - 1))
        tr.append(idx[:nt]); va.append(idx[nt:nt + nv]); te.append(idx[nt + nv:])
    return Split(labels.shape, np.sort(np.concatenate(tr)), np.sort(np.concatenate(va)), np.sort(np.concatenate(te)),
                 {"method": "per_class", "seed": seed, "per_class": per_class, "val_fraction": val_fraction,
                  "capped": capped})


BLOCK_CANDIDATES = 64  # greedy block assignments block_split draws per seed, keeping the closest to the fractions
BLOCK_ORDER_JITTER = 0.5  # sd of the log-normal factor on each block's size that orders a candidate's visits


def _assign_blocks(hist: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each block's split (0 train, 1 val, 2 test) from ``hist`` (blocks x classes: labelled pixels per class) and
    the ``target`` fractions: the best of :data:`BLOCK_CANDIDATES` greedy assignments drawn from ``rng``.

    Each candidate visits the blocks big first, in an order jittered at random (a big block placed last overshoots
    its split; a fixed order made every seed give the same split), and gives each block to the split whose
    per-class deficit, relative to the class size, its classes fill most. Deficits are relative to class size,
    so the big test share is filled first and every class reaches the test set; a class that lives in one field
    (IN: Oats, Alfalfa, Grass-pasture-mowed) can then be absent from training: the trainer names such classes,
    never hides them. The kept candidate has the smallest deviation from ``target`` summed over the splits,
    averaged over the classes both per pixel and per class (so a small class counts too)."""
    n_blocks, k = hist.shape
    if not hist.any():  # no labelled pixel: nothing to balance
        return rng.choice(3, size=n_blocks, p=target)
    n = BLOCK_CANDIDATES
    total = hist.sum(0) + 1e-9
    size = hist.sum(1)
    jitter = np.exp(BLOCK_ORDER_JITTER * rng.standard_normal((n, n_blocks)))
    orders = np.argsort(-(size[None, :] * jitter), axis=1, kind="stable")
    have = np.zeros((n, 3, k))
    assign = np.zeros((n, n_blocks), np.int64)
    cands = np.arange(n)
    for t in range(n_blocks):
        b = orders[:, t]
        hb = hist[b]  # (candidates, classes): the block each candidate visits now
        deficit = (target[None, :, None] * total - have) / total
        score = (deficit * hb[:, None, :]).sum(2) / np.maximum(hb.sum(1), 1)[:, None]
        s = np.argmax(score + 1e-6 * rng.random((n, 3)), axis=1)
        empty = hb.sum(1) == 0  # no labelled pixel: any split, at the target odds
        s = np.where(empty, rng.choice(3, size=n, p=target), s)
        assign[cands, b] = s
        have[cands, s] += hb
    present = hist.sum(0) > 0
    frac = have[:, :, present] / total[present]  # (candidates, 3, classes present)
    dev = np.abs(frac - target[None, :, None]).sum(1)  # (candidates, classes)
    weight = total[present] / total[present].sum()
    cost = (dev * weight).sum(1) + dev.mean(1)
    return assign[int(np.argmin(cost))]


def block_split(labels: np.ndarray, train_fraction: float, val_fraction: float, patch: int, seed: int = 0,
                block: int | None = None) -> Split:
    """Spatially disjoint split: the scene is cut into ``block x block`` squares, each assigned to train,
    val or test (greedily, to approach the fractions per class), and every labelled pixel whose
    ``patch x patch`` window reaches into a block of another split is dropped. So no training (or
    validation) patch contains a test pixel, and no test patch contains a training pixel: pixels of two sets lie
    at least ``patch`` pixels apart (Chebyshev distance), whatever the assignment.

    ``seed`` chooses the assignment: it draws :data:`BLOCK_CANDIDATES` greedy assignments, each visiting the blocks
    big first in a randomly jittered order, and keeps the one closest to the fractions per class. A fixed
    big-first order gave a handful of partitions for all seeds (Indian Pines: two over seeds 0..19, with the same
    training pixels), so repeated seeds measured one split's luck, not the spatial variance.
    """
    from scipy.ndimage import minimum_filter

    h, w = labels.shape
    r = patch // 2
    if block is None:  # IN (145 x 145), patch 7: 21 -> 7 x 7 blocks, ~70% of labelled pixels kept
        block = max(3 * patch, int(round(min(h, w) / 7)))
    by, bx = math.ceil(h / block), math.ceil(w / block)
    k = int(labels.max())
    target = np.array([train_fraction, val_fraction, 1 - train_fraction - val_fraction])
    hist = np.zeros((by * bx, k + 1))
    for i in range(by):
        for j in range(bx):
            sub = labels[i * block:(i + 1) * block, j * block:(j + 1) * block]
            hist[i * bx + j] = np.bincount(sub.reshape(-1), minlength=k + 1)
    assign = _assign_blocks(hist[:, 1:], target, np.random.default_rng(seed))
    amap = np.repeat(np.repeat(assign.reshape(by, bx), block, 0), block, 1)[:h, :w]
    flat = labels.reshape(-1)
    sets = []
    for s in range(3):
        inside = minimum_filter((amap == s).astype(np.uint8), size=2 * r + 1, mode="constant", cval=1).astype(bool)
        sets.append(np.flatnonzero(inside.reshape(-1) & (amap.reshape(-1) == s) & (flat > 0)))
    dropped = int((flat > 0).sum() - sum(x.size for x in sets))
    return Split(labels.shape, sets[0], sets[1], sets[2],
                 {"method": "blocks", "seed": seed, "block": block, "patch": patch, "train_fraction": train_fraction,
                  "val_fraction": val_fraction, "dropped_border_pixels": dropped,
                  "block_assignment": assign.reshape(by, bx).tolist()})


# --------------------------------------------------------------------------------------------------
# patches

class PositionError(OptionError, IndexError):
    """A :class:`PatchDataset` position that is not a whole number in the dataset (an ``IndexError`` too, as a
    sequence's: iterating a dataset ends on it)."""


class PatchDataset(torch.utils.data.Dataset):
    """Patches ``(bands, P, P)`` float32 around the given pixels (``indices``: flat row-major pixel indices, as
    ``np.flatnonzero(mask)`` gives), cut on the fly from the zero-padded normalised scene. ``dataset[i]`` ->
    ``(patch, label)`` with label 0-based; :meth:`batch` cuts many at once. The scene must be finite (NaN, inf and
    masked values are refused: :func:`standardize` reads them as nodata); ``labels`` is its ``(y, x)`` map.
    """

    def __init__(self, normed: np.ndarray | torch.Tensor, labels: np.ndarray | None, indices: np.ndarray,
                 patch: int) -> None:
        if not is_whole(patch) or patch < 1 or patch % 2 == 0:
            raise OptionError(f"PatchDataset: patch must be an odd whole number >= 1 (the model's, e.g. 5, 7, 9, 11); "
                              f"got {patch!r} ({type(patch).__name__})")
        patch = int(patch)
        # a tensor detached, masked values NaN (refused below); a DataArray by its dim names
        arr = cube_array(normed, "PatchDataset: the normalised scene")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))  # native byte order, positive strides
        if x.dim() != 3:
            raise OptionError(f"normed scene must be (band, y, x); got {tuple(x.shape)}")
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            b, y, c = ((~finite).nonzero()[0]).tolist()
            masked = " (a masked array's masked values count as NaN)" if isinstance(normed, np.ma.MaskedArray) else ""
            raise DataError(f"PatchDataset: the normalised scene holds {int((~finite).sum())} NaN or inf values"
                            f"{masked}, the first at band {b}, row {y}, col {c}; expected finite values. Normalise "
                            "the scene with ssrn.standardize, which reads NaN, inf and masked values as nodata (0, "
                            "as the engine reads them), and leave those pixels out of the indices")
        self.bands, self.h, self.w = x.shape
        self.patch = patch
        r = patch // 2
        # (y + 2r, x + 2r, band): a patch is one strided gather, band-contiguous
        self.padded = torch.nn.functional.pad(x, (r, r, r, r)).permute(1, 2, 0).contiguous()
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise OptionError(f"PatchDataset: indices must be a 1-D array of flat pixel indices (row * width + col, "
                              f"as np.flatnonzero(mask) gives); got shape {idx.shape}, dtype {idx.dtype}"
                              + (": for (row, col) pairs pass np.ravel_multi_index(pairs.T, (height, width))"
                                 if idx.ndim == 2 and idx.shape[-1] == 2 else ""))
        if idx.size and (idx.min() < 0 or idx.max() >= self.h * self.w):
            raise OptionError(f"PatchDataset: indices must be in 0..{self.h * self.w - 1} (the scene's "
                              f"{self.h} x {self.w} pixels); got {idx.min()}..{idx.max()}")
        idx = idx.astype(np.int64)
        self.indices = torch.from_numpy(idx)
        self.ys = self.indices // self.w
        self.xs = self.indices % self.w
        self.labels = None if labels is None else self._targets_of(labels, idx)
        self._off = torch.arange(patch)

    def _targets_of(self, labels: Any, idx: np.ndarray) -> torch.Tensor:
        """The 0-based int64 classes of the pixels ``idx`` in the ``(y, x)`` label map (masked cells unlabelled)."""
        lab = cube_array(labels, "PatchDataset: the label map", MAP_AXES, fill=0)
        if lab.shape != (self.h, self.w):
            hint = ": transposed? pass labels.T" if lab.shape == (self.w, self.h) else ""
            raise DataError(f"PatchDataset: labels have shape {lab.shape} but the scene is {self.h} x {self.w} "
                            f"(y, x); expected a (y, x) label map of the scene's size{hint}")
        sel = lab.reshape(-1)[idx]
        if sel.dtype.kind == "f" and sel.size and not (np.isfinite(sel).all() and (sel == np.round(sel)).all()):
            raise DataError("PatchDataset: labels must be integers (0 = unlabelled, 1..K); the indexed pixels hold "
                            "NaN, inf or fractional values: give integer class ids")
        if sel.dtype.kind not in "biuf":
            raise DataError(f"PatchDataset: labels must be integers (0 = unlabelled, 1..K); got dtype {sel.dtype}")
        lab = torch.from_numpy(sel.astype(np.int64) - 1)  # int64 first: uint8 0 - 1 would wrap to 255
        if (lab < 0).any():
            at = int(torch.nonzero(lab < 0)[0])
            first = int(idx[at])
            raise OptionError(f"PatchDataset: an index points at an unlabelled pixel ({int((lab < 0).sum())} do, the "
                              f"first {first}: row {first // self.w}, col {first % self.w}, label {int(lab[at]) + 1})"
                              "; expected labelled pixels (1..K): keep indices[labels.reshape(-1)[indices] > 0]")
        return lab

    def __len__(self) -> int:
        return int(self.indices.numel())

    def _positions(self, positions: Any) -> torch.Tensor:
        """``positions`` as a long tensor of positions in the dataset (negative ones from the end, as a list's),
        else a :class:`PositionError`: floats were truncated, a boolean mask read as positions 0 and 1."""
        try:
            pos = positions if torch.is_tensor(positions) else torch.as_tensor(np.asarray(positions))
        except (TypeError, ValueError, RuntimeError) as e:
            raise PositionError(f"PatchDataset: positions must be whole numbers (an integer array, tensor or list); "
                                f"got {type(positions).__name__} ({e})") from None
        if pos.numel() == 0:
            return pos.long().reshape(-1)
        if pos.dtype == torch.bool or pos.is_floating_point() or pos.is_complex():
            fix = (": for a mask, pass its positions (torch.nonzero(mask) or np.flatnonzero(mask))"
                   if pos.dtype == torch.bool else "")
            raise PositionError(f"PatchDataset: positions must be whole numbers (the dataset's 0..{len(self) - 1}); "
                                f"got dtype {str(pos.dtype).replace('torch.', '')}{fix}")
        pos = pos.long()
        lo, hi = int(pos.min()), int(pos.max())
        if lo < -len(self) or hi >= len(self):
            raise PositionError(f"PatchDataset: positions must be in 0..{len(self) - 1} (its {len(self)} patches; "
                                f"negative ones count from the end); got {lo}..{hi}")
        return pos

    def batch(self, positions: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Patches for dataset positions ``positions``: ``(n, bands, P, P)`` float32."""
        pos = self._positions(positions)
        rows = self.ys[pos][:, None] + self._off  # padded coords: pixel y sits at y + r, window starts at y
        cols = self.xs[pos][:, None] + self._off
        out = self.padded[rows[:, :, None], cols[:, None, :]]  # (n, P, P, B)
        return out.permute(0, 3, 1, 2).contiguous()

    def targets(self, positions) -> torch.Tensor:
        if self.labels is None:
            raise OptionError("this PatchDataset has no labels (made with labels=None), so it has no targets; "
                              "pass the label array when making it")
        return self.labels[self._positions(positions)]

    def __getitem__(self, i: int):
        given = i
        if isinstance(i, (bool, np.bool_)) or (isinstance(i, torch.Tensor) and i.dtype == torch.bool):
            i = None
        else:
            try:  # a Python or numpy integer, or a 0-dim integer tensor (for i in torch.randperm(len(ds)))
                i = operator.index(i)
            except TypeError:
                i = None
        if i is None:
            raise PositionError(f"PatchDataset index must be a whole number; got {given!r} ({type(given).__name__}): "
                                "for many patches at once use .batch(positions)")
        p = self.batch([i])[0]
        return (p, self.labels[i]) if self.labels is not None else p

    def iter_batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        """Yield ``(patches, targets, positions)`` batches; targets is None without labels."""
        if not is_whole(batch_size) or batch_size < 1:
            raise OptionError(f"iter_batches: batch_size must be a whole number >= 1; got {batch_size!r} "
                              f"({type(batch_size).__name__})")
        batch_size = int(batch_size)
        shuffle = check_flag("shuffle", shuffle)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            pos = order[s:s + batch_size]
            yield self.batch(pos), (self.labels[pos] if self.labels is not None else None), pos


def __getattr__(name: str) -> Any:
    if name == "load_labelled_raster":  # (0.2.0 had it here; the engine's readers place label rasters now)
        # an ImportError: what `from ssrn.data import load_labelled_raster` then says (an AttributeError here
        # becomes 'cannot import name')
        raise ImportError("ssrn.data.load_labelled_raster moved to the engine, whose readers place a label raster "
                          "on its scene: use hsi_engine.load_labelled_raster (and hsi_engine.train to train on it)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
