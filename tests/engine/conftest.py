"""Engine fixtures: tiny seeded scenes with a real CRS and transform, written in every supported format.

``make_scene(fmt, **opts)`` writes the same (band, y, x) cube as GeoTIFF, ENVI (bsq/bil/bip), zarr v3/v2,
NetCDF, HDF5, .npy or .mat into ``tmp_path`` and returns the path; ``scene_cube`` is that cube as a
georeferenced in-memory DataArray (the reference every reader is compared with).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CRS = "EPSG:32633"
# pixel 30 m, upper-left corner of the EnMAP Potsdam tile 128_0 (see shared/data/MANIFEST.md)
TRANSFORM = (30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0)
BANDS, HEIGHT, WIDTH = 12, 40, 56
WAVELENGTHS_NM = np.round(np.linspace(420.0, 2400.0, BANDS), 3)
NODATA = -9999.0


def make_cube(bands: int = BANDS, height: int = HEIGHT, width: int = WIDTH, seed: int = 0,
              dtype=np.float32) -> np.ndarray:
    """A seeded (band, y, x) cube with smooth spectra and a little noise; no nodata pixels."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(500, 4000, size=(1, height, width))
    slope = np.linspace(0.5, 1.5, bands)[:, None, None]
    cube = base * slope + rng.normal(0, 20, size=(bands, height, width))
    return cube.astype(dtype)


def affine():
    from affine import Affine

    return Affine(*TRANSFORM)


def pixel_centres(height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    a, _, c, _, e, f = TRANSFORM
    return f + e * (np.arange(height) + 0.5), c + a * (np.arange(width) + 0.5)


def cube_dataarray(cube: np.ndarray | None = None, *, crs: str | None = CRS, wavelengths=True):
    """The cube as a (band, y, x) DataArray with pixel-centre coords, CRS/transform and wavelengths."""
    import rioxarray  # noqa: F401
    import xarray as xr

    cube = make_cube() if cube is None else cube
    b, h, w = cube.shape
    y, x = pixel_centres(h, w)
    coords: dict[str, Any] = {"band": np.arange(1, b + 1), "y": y, "x": x}
    if wavelengths:
        coords["wavelength"] = ("band", np.round(np.linspace(420.0, 2400.0, b), 3))
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords=coords, name="reflectance")
    if crs is not None:
        da = da.rio.write_crs(crs).rio.write_transform(affine())
    return da


def write_geotiff(path: Path, cube: np.ndarray, *, block: int | None = 16, driver: str = "GTiff",
                  interleave: str | None = None, nodata: float | None = NODATA, crs: str | None = CRS,
                  wavelengths=WAVELENGTHS_NM, units: str = "Nanometers") -> Path:
    """Write ``cube`` with rasterio (GTiff tiled by ``block``, or ENVI with ``interleave`` bsq/bil/bip)."""
    import rasterio

    b, h, w = cube.shape
    prof: dict[str, Any] = dict(driver=driver, height=h, width=w, count=b, dtype=str(cube.dtype), nodata=nodata)
    if crs is not None:
        prof.update(crs=crs, transform=affine())
    if driver == "GTiff" and block is not None:
        prof.update(tiled=True, blockxsize=block, blockysize=block)
    if interleave is not None:
        prof["interleave"] = interleave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(cube)
            if wavelengths is not None and driver == "GTiff":
                for i, wl in enumerate(wavelengths[:b]):
                    dst.update_tags(i + 1, wavelength=str(wl), wavelength_units=units)
    return path


def add_envi_wavelengths(hdr: Path, wavelengths_um: np.ndarray) -> None:
    """Append ENVI ``wavelength`` / ``wavelength units`` (micrometres, as many sensors write them)."""
    text = hdr.read_text()
    text += "wavelength units = Micrometers\nwavelength = {" + ", ".join(f"{w:.6f}" for w in wavelengths_um) + "}\n"
    hdr.write_text(text)


@pytest.fixture
def scene_cube():
    """The reference cube as a georeferenced (band, y, x) DataArray (numpy-backed)."""
    return cube_dataarray()


@pytest.fixture
def make_scene(tmp_path):
    """Factory: ``make_scene(fmt, **opts) -> Path`` for fmt in geotiff, envi, zarr, zarr2, zarr-bare, netcdf,
    hdf5, npy, mat. Options: ``cube`` (band, y, x), ``band_last`` (store as y, x, band), ``chunks`` (store
    chunks as a (band, y, x) tuple), ``interleave`` (ENVI: bsq/bil/bip), ``block`` (GeoTIFF tile), ``name``.
    """
    counter = iter(range(10_000))

    def make(fmt: str, *, cube: np.ndarray | None = None, band_last: bool = False, chunks=(BANDS, 16, 16),
             interleave: str = "bsq", block: int = 16, name: str | None = None, crs: str | None = CRS) -> Path:
        cube = make_cube() if cube is None else cube
        stem = name or f"scene{next(counter)}"
        if fmt == "geotiff":
            return write_geotiff(tmp_path / f"{stem}.tif", cube, block=block, crs=crs)
        if fmt == "envi":
            path = tmp_path / f"{stem}.{interleave}"
            write_geotiff(path, cube, driver="ENVI", interleave=interleave.upper(), wavelengths=None, crs=crs)
            add_envi_wavelengths(path.with_suffix(".hdr"), WAVELENGTHS_NM[: cube.shape[0]] / 1000.0)
            return path
        if fmt in ("zarr", "zarr2"):
            da = cube_dataarray(cube, crs=crs)
            if band_last:
                da = da.transpose("y", "x", "band")
                ch = {"y": chunks[1], "x": chunks[2], "band": chunks[0]}
            else:
                ch = dict(zip(("band", "y", "x"), chunks))
            path = tmp_path / f"{stem}.zarr"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                da.to_dataset().chunk(ch).to_zarr(path, zarr_format=3 if fmt == "zarr" else 2, mode="w-",
                                                  consolidated=False)
            return path
        if fmt == "zarr-bare":
            import zarr

            arr = np.moveaxis(cube, 0, -1) if band_last else cube
            dims = ["y", "x", "band"] if band_last else ["band", "y", "x"]
            ch = (chunks[1], chunks[2], chunks[0]) if band_last else chunks
            path = tmp_path / f"{stem}.zarr"
            z = zarr.create_array(str(path), shape=arr.shape, chunks=ch, dtype=arr.dtype, zarr_format=3)
            z[...] = arr
            z.attrs["dims"] = dims
            z.attrs["wavelength"] = WAVELENGTHS_NM[: cube.shape[0]].tolist()
            z.attrs["wavelength_units"] = "nm"
            return path
        if fmt == "netcdf":
            da = cube_dataarray(cube, crs=crs)
            if band_last:
                da = da.transpose("y", "x", "band")
                ch = (chunks[1], chunks[2], chunks[0])
            else:
                ch = chunks
            path = tmp_path / f"{stem}.nc"
            da.to_dataset().to_netcdf(path, engine="h5netcdf", encoding={"reflectance": {"chunksizes": ch}})
            return path
        if fmt == "hdf5":
            import h5py

            path = tmp_path / f"{stem}.h5"
            arr = np.moveaxis(cube, 0, -1) if band_last else cube
            ch = (chunks[1], chunks[2], chunks[0]) if band_last else chunks
            with h5py.File(path, "w") as f:
                d = f.create_dataset("cube", data=arr, chunks=ch)
                d.attrs["dims"] = "y,x,band" if band_last else "band,y,x"
                w = f.create_dataset("wavelength", data=WAVELENGTHS_NM[: cube.shape[0]])
                w.attrs["units"] = "nm"
            return path
        if fmt == "npy":
            path = tmp_path / f"{stem}.npy"
            np.save(path, np.moveaxis(cube, 0, -1) if band_last else cube)
            (tmp_path / f"{stem}_wavelengths.json").write_text(
                json.dumps({"unit": "nm", "wavelengths": WAVELENGTHS_NM[: cube.shape[0]].tolist()}))
            return path
        if fmt == "mat":
            import scipy.io

            path = tmp_path / f"{stem}.mat"
            scipy.io.savemat(path, {"scene": np.moveaxis(cube, 0, -1)}, do_compression=True)
            return path
        raise ValueError(f"unknown fmt {fmt!r}")

    return make


@pytest.fixture(scope="session")
def geo():
    """Constants and helpers of the fixture scenes (tests/ has no packages, so import them through this):
    ``geo.CRS``, ``geo.TRANSFORM`` (a..f), ``geo.BANDS/HEIGHT/WIDTH``, ``geo.WAVELENGTHS_NM``, ``geo.NODATA``,
    ``geo.make_cube(...)``, ``geo.pixel_centres(h, w)``, ``geo.cube_dataarray(cube)``, ``geo.affine()``,
    ``geo.write_geotiff(path, cube, ...)``."""
    from types import SimpleNamespace

    return SimpleNamespace(CRS=CRS, TRANSFORM=TRANSFORM, BANDS=BANDS, HEIGHT=HEIGHT, WIDTH=WIDTH,
                           WAVELENGTHS_NM=WAVELENGTHS_NM, NODATA=NODATA, make_cube=make_cube,
                           pixel_centres=pixel_centres, cube_dataarray=cube_dataarray, affine=affine,
                           write_geotiff=write_geotiff)
