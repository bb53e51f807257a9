"""The large-chunk warning's rechunk recipe, run as the message gives it: it was ``xr.open_zarr(path)...chunk({'band':
-1, 'y': 256, 'x': 256})`` for every scene, which fails on a NetCDF (open_zarr cannot read one) and on a zarr store
whose dims are named otherwise (``bands, lines, samples``: 'chunks keys not found'). Each format's recipe is executed
here, and the store it writes opens (by the engine) with the same values, CRS and wavelengths and without the
warning. The chunk side and the warning's threshold are scaled down so that small scenes show it."""

from __future__ import annotations

import re
import warnings

import dask.array as dsa
import h5py
import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

import hsi_engine
import hsi_engine.scene_checks as checks
from hsi_engine.tiles import plan_tiles

SIDE = 32  # the recipe's chunk side here (256 by default)
CRS = "EPSG:32616"


@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setattr(checks, "LARGE_CHUNK_BYTES", 1 << 10)
    monkeypatch.setattr(checks, "RECHUNK_SIDE", SIDE, raising=False)  # (raising=False: it ran on the code before too)


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, (6, 96, 96)).astype(np.int16)


def _said(scene: xr.DataArray, tile: int = 16) -> list[str]:
    """The large-chunk warnings for ``scene`` against ``tile`` x ``tile`` tiles (16: a window of 22 x 22 pixels, 16 of
    them about 7,700 pixels, under a 96 x 96 chunk and over a 32 x 32 one)."""
    plan = plan_tiles(scene.sizes["y"], scene.sizes["x"], tile, 3, chunks=(scene.chunks[1], scene.chunks[2]))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        checks.warn_large_chunks(scene, plan)
    return [str(w.message) for w in seen if "the scene's chunks are" in str(w.message)]


def _follow(path, tile: int = 16) -> tuple[str, xr.DataArray, xr.DataArray]:
    """The warning for the scene at ``path``, the scene, and the scene the recipe in it wrote (opened by the
    engine), the recipe run as the message gives it."""
    scene = hsi_engine.open_scene(path)
    said = _said(scene, tile)
    assert len(said) == 1, said
    found = re.search(r"in Python: (.+?), and classify (\S+?)(?:,? \(| \(chunks asked)", said[0])
    assert found, said[0]
    exec(found.group(1), {})  # noqa: S102 - the message's own recipe, as a user pastes it
    new = hsi_engine.open_scene(found.group(2))
    return said[0], scene, new


def _same(scene: xr.DataArray, new: xr.DataArray, side: int = SIDE, tile: int = 16) -> None:
    assert new.dtype == scene.dtype and new.shape == scene.shape
    np.testing.assert_array_equal(new.values, scene.values)
    assert new.rio.crs == scene.rio.crs
    if "wavelength" in scene.coords:
        np.testing.assert_array_equal(new["wavelength"].values, scene["wavelength"].values)
    assert max(new.chunks[1]) == side and max(new.chunks[2]) == side and len(new.chunks[0]) == 1
    assert _said(new, tile) == []


def test_a_contiguous_netcdf_is_rewritten_through_open_dataset_in_its_own_dim_names(tmp_path, cube):
    """A contiguous NetCDF (xarray's to_netcdf default) opens as one chunk; its dims (wavelength, lines, samples)
    and its CF packing go along."""
    da = xr.DataArray(cube, dims=("wavelength", "lines", "samples"), name="refl",
                      coords={"wavelength": ("wavelength", np.linspace(400.0, 2400.0, 6), {"units": "nm"}),
                              "lines": 4.5e6 - 30 * np.arange(96.0), "samples": 5e5 + 30 * np.arange(96.0)})
    ds = da.rio.set_spatial_dims("samples", "lines").rio.write_crs(CRS).to_dataset()
    ds["refl"].attrs["scale_factor"] = 1e-4
    ds.to_netcdf(tmp_path / "s.nc")
    said, scene, new = _follow(tmp_path / "s.nc")
    assert "xr.open_dataset(" in said and "'wavelength': -1, 'lines': 32, 'samples': 32" in said
    assert "open_zarr" not in said
    _same(scene, new)


def test_a_zarr_store_is_rewritten_in_its_own_dim_names(tmp_path, cube):
    """A one-chunk zarr store of dims (lines, samples, bands): the recipe named band/y/x, which the store has not."""
    xr.DataArray(dsa.from_array(cube.transpose(1, 2, 0), chunks=-1), dims=("lines", "samples", "bands"),
                 name="cube").to_dataset().to_zarr(tmp_path / "s.zarr")
    said, scene, new = _follow(tmp_path / "s.zarr")
    assert "xr.open_zarr(" in said and "'bands': -1, 'lines': 32, 'samples': 32" in said
    _same(scene, new)


def test_a_geotiff_is_rewritten_tiled_with_its_tags(tmp_path, monkeypatch):
    """GeoTIFF blocks of 512 x 512 (read as chunks of that size) against tiles of 64: a copy in tiles of 256 keeps
    CRS, wavelengths, nodata and band scales (GDAL's CreateCopy). At full size: GeoTIFF chunks follow its blocks."""
    monkeypatch.setattr(checks, "RECHUNK_SIDE", 256, raising=False)
    cube = np.random.default_rng(1).integers(0, 1000, (6, 600, 600)).astype(np.int16)
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=6, dtype="int16", crs=CRS,
                       transform=from_origin(5e5, 4.5e6, 30, 30), tiled=True, blockxsize=512, blockysize=512,
                       nodata=-9999) as f:
        f.write(cube)
        f.scales = [0.5] * 6
        for b in range(1, 7):
            f.update_tags(b, wavelength=str(400 + 100 * b), wavelength_units="nm")
    said, scene, new = _follow(path, tile=64)
    assert "rasterio.shutil.copy(" in said and "gdal_translate -co TILED=YES" in said
    _same(scene, new, side=256, tile=64)
    assert new.encoding.get("scales") == scene.encoding.get("scales") and new.rio.nodata == -9999


def test_other_formats_go_through_open_scene(tmp_path, cube):
    """An HDF5 dataset stored as one chunk: the recipe through open_scene (its wavelengths and CRS are coordinates
    the store keeps)."""
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("cube", data=cube, chunks=cube.shape)
    said, scene, new = _follow(tmp_path / "s.h5")
    assert "hsi_engine.open_scene(" in said
    _same(scene, new)


def test_a_scene_in_memory_is_told_where_to_chunk_it(cube):
    """An array that is not its file unchanged gets no file's recipe (it would rewrite what was not classified)."""
    scene = xr.DataArray(dsa.from_array(cube, chunks=-1), dims=("band", "y", "x"))
    said = _said(scene)
    assert len(said) == 1 and "open it in chunks of all bands" in said[0] and "to_zarr" not in said[0]
