"""Helpers for the cluster / resume / bad-input tests: a tiny random SSRN and real Indian Pines crops.

The model is tiny (24 bands, 4 classes, narrow widths) with random weights and randomised BN statistics,
normalised with the crop's per-band mean/std, saved with ``ssrn.save_model``; the scene is a crop of the
shipped Indian Pines cube (every 8th band, uint16) written as a chunked, georeferenced zarr v3 store.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from _models import randomise_bn
from ssrn.checkpoint import save_model
from ssrn.config import SSRNConfig
from ssrn.model import SSRN

IP_H5 = Path(__file__).resolve().parents[2] / "hsi_engine" / "data" / "indian_pines" / "indian_pines.h5"
BANDS = 24
CLASSES = 4
CRS = "EPSG:32616"
TRANSFORM = (20.0, 0.0, 500000.0, 0.0, -20.0, 4500000.0)


def ip_crop(height: int = 40, width: int = 40, *, y0: int = 30, x0: int = 40, bands: int = BANDS) -> np.ndarray:
    """A (bands, height, width) uint16 crop of the real Indian Pines scene (every 8th band)."""
    import h5py

    with h5py.File(IP_H5, "r") as f:
        cube = f["cube"][: 8 * bands: 8, y0:y0 + height, x0:x0 + width]
    return np.ascontiguousarray(cube)


def tiny_config(bands: int = BANDS, classes: int = CLASSES) -> SSRNConfig:
    return SSRNConfig(bands=bands, classes=classes, stem_width=8, reduce_width=16, spatial_width=8,
                      spectral_blocks=1, spatial_blocks=1)


def tiny_model(cube: np.ndarray | None = None, *, seed: int = 0, bands: int = BANDS) -> SSRN:
    """Random weights, randomised BN statistics, per-band mean/std of ``cube`` (or of a crop), the head's bias
    centred on that scene's median logits: random init maps a whole crop to one class or two, and a map of one
    class cannot tell a resumed, reordered or shifted tile from the right one."""
    import torch

    from hsi_engine.fused import patch_forward

    torch.manual_seed(seed)
    m = randomise_bn(SSRN(tiny_config(bands)), seed)
    a = (ip_crop(bands=bands) if cube is None else cube).astype(np.float64)
    mean, std = a.mean(axis=(1, 2)), a.std(axis=(1, 2))
    m.meta = {"mean": mean.tolist(), "std": std.tolist(), "class_names": [f"c{i}" for i in range(1, CLASSES + 1)]}
    x = torch.from_numpy(((a - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
    with torch.no_grad():
        m.head.bias -= patch_forward(m, x).median(0).values
    return m


def save_tiny_model(path: Path, cube: np.ndarray | None = None, **kw) -> Path:
    return save_model(tiny_model(cube, **kw), path)


def dataarray(cube: np.ndarray, *, crs: str | None = CRS):
    import rioxarray  # noqa: F401
    import xarray as xr
    from affine import Affine

    b, h, w = cube.shape
    a, _, c, _, e, f = TRANSFORM
    coords = {"band": np.arange(1, b + 1), "y": f + e * (np.arange(h) + 0.5), "x": c + a * (np.arange(w) + 0.5)}
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords=coords, name="reflectance")
    if crs is not None:
        da = da.rio.write_crs(crs).rio.write_transform(Affine(*TRANSFORM))
    return da


def write_zarr(path: Path, cube: np.ndarray, *, chunks: tuple[int, int] = (16, 16)) -> Path:
    """``cube`` as a zarr v3 store (xarray layout, CRS in ``spatial_ref``), chunked (all bands, *chunks)."""
    da = dataarray(cube)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da.to_dataset().chunk({"band": -1, "y": chunks[0], "x": chunks[1]}).to_zarr(
            path, zarr_format=3, mode="w-", consolidated=False)
    return path


def classified_crop(d: Path, height: int, width: int, *, y0: int, x0: int, tile: int) -> dict:
    """An Indian Pines crop as a zarr scene in ``d``, a tiny model, and the reference map of an in-memory run
    (which must hold more than one class, to tell a wrong tile): the start of the run-safety and resume tests."""
    import hsi_engine

    cube = ip_crop(height, width, y0=y0, x0=x0)
    scene = write_zarr(d / "scene.zarr", cube)
    model = save_tiny_model(d / "model", cube)
    ref = hsi_engine.classify(hsi_engine.open_scene(scene), str(model), tile=tile, progress=False).values
    assert len(np.unique(ref)) > 1
    return {"dir": d, "cube": cube, "scene": scene, "model": model, "ref": ref,
            "tiles": -(-height // tile) * -(-width // tile)}


def read_classes(path: Path) -> np.ndarray:
    """The class map of a finished output (.zarr or .tif) as a (y, x) uint8 array."""
    if Path(path).suffix.lower() == ".zarr":
        import zarr

        return np.asarray(zarr.open_group(str(path), mode="r")["classes"][...])
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def leftovers(directory: Path, name: str) -> list[str]:
    """Everything in ``directory`` derived from the output name ``name`` (temps, partial stores, sides)."""
    stem = Path(name).stem
    return sorted(p.name for p in Path(directory).iterdir() if name in p.name or p.name.startswith(f".{stem}")
                  or p.name.startswith(stem))


def crash_writes_after(monkeypatch, n: int) -> None:
    """Make the in-process resumable writer die (a crash, not bad input) after ``n`` tiles."""
    from hsi_engine import cluster

    real = cluster._MarkingSink.write
    count = {"n": 0}

    def write(self, *a, **kw):
        if count["n"] >= n:
            raise RuntimeError("simulated crash")
        count["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(cluster._MarkingSink, "write", write)
