"""Metadata that other tools write beside or into a scene's values, read as they mean it: a NetCDF4 file named
.h5 (its dims HDF5 dimension scales), two ENVI headers beside one binary, the per-band attributes of
``gdal_translate -of netCDF``, a sharded zarr store's shards, and wavelengths in an HDF5 dataset's attributes or
in band names such as ``B001_400nm``. Each on a small file written here for real (h5py / xarray, rasterio, zarr)."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.transform import Affine

from hsi_engine.errors import CorruptChunkError, SceneError
from hsi_engine.integrity import check_store, read_error
from hsi_engine.io import open_scene
from hsi_engine.wavelengths import record_wavelengths_fix, wavelengths_in_names


def _cube(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 4000, shape).astype(np.uint16)


def _strict_open(path, **kw) -> xr.DataArray:
    """``open_scene`` with every warning an error (a guessed band axis warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return open_scene(path, **kw)


# --- F2: a NetCDF4 file named .h5: dims from its HDF5 dimension scales --------------------------------------------

@pytest.mark.parametrize("shape", [(6, 6, 6), (5, 5, 3)])  # the shape alone says x (6, 6, 6) or bands last (5, 5, 3)
def test_netcdf4_named_h5_reads_its_dimension_scales(tmp_path, shape):
    cube = _cube(shape)
    wl = np.linspace(400.0, 900.0, shape[0])
    da = xr.DataArray(cube, dims=("band", "y", "x")).assign_coords(wavelength=("band", wl))
    da["wavelength"].attrs["units"] = "nm"
    path = tmp_path / "scene.h5"
    da.to_dataset(name="reflectance").to_netcdf(path, engine="h5netcdf")
    s = _strict_open(path)  # no "has no dimension names" warning: they are its dimension scales
    assert s.dims == ("band", "y", "x") and s.shape == shape
    np.testing.assert_array_equal(s.values, cube)
    np.testing.assert_allclose(s["wavelength"].values, wl)


def test_netcdf4_wavelength_dim_in_micrometres_named_h5(tmp_path):
    cube = _cube((6, 6, 6), seed=1)
    da = xr.DataArray(cube.transpose(1, 2, 0), dims=("lat", "lon", "wavelength"))
    da = da.assign_coords(wavelength=np.linspace(0.4, 0.9, 6))
    da["wavelength"].attrs["units"] = "micrometers"
    path = tmp_path / "scene.h5"
    da.to_dataset(name="r").to_netcdf(path, engine="h5netcdf")
    s = _strict_open(path)
    np.testing.assert_array_equal(s.values, cube)
    np.testing.assert_allclose(s["wavelength"].values, np.linspace(400.0, 900.0, 6))


def test_h5py_dimension_scales_and_the_wavelengths_on_the_band_scale(tmp_path):
    cube = _cube((6, 6, 6), seed=2)
    path = tmp_path / "scene.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("cube", data=cube.transpose(1, 0, 2))  # (rows, bands, cols), as PRISMA stores them
        for i, name in enumerate(("rows", "bands", "cols")):
            scale = f.create_dataset(f"{name}_scale", data=np.arange(6))
            scale.make_scale(name)
            d.dims[i].attach_scale(scale)
        w = f.create_dataset("center_wavelength", data=np.linspace(0.4, 0.9, 6))
        w.attrs["units"] = "um"
        w.dims[0].attach_scale(f["bands_scale"])
    s = _strict_open(path)
    np.testing.assert_array_equal(s.values, cube)
    np.testing.assert_allclose(s["wavelength"].values, np.linspace(400.0, 900.0, 6))


# --- F7: an HDF5 dataset's own wavelength attributes ---------------------------------------------------------------

def test_h5_dataset_wavelength_attribute(tmp_path):
    cube = _cube((6, 5, 4))
    path = tmp_path / "scene.h5"
    with h5py.File(path, "w") as f:
        d = f.create_group("data").create_dataset("reflectance", data=cube.transpose(1, 2, 0))
        d.attrs["dims"] = "y, x, band"
        d.attrs["wavelength"] = np.linspace(0.4, 0.9, 6)
        d.attrs["wavelength_units"] = "micrometers"
    s = _strict_open(path)
    np.testing.assert_array_equal(s.values, cube)
    np.testing.assert_allclose(s["wavelength"].values, np.linspace(400.0, 900.0, 6))


def test_an_unusable_wavelength_attribute_leaves_the_file_s_wavelength_dataset_to_read(tmp_path):
    """The cube's own 'wavelength' attribute of another length (copied from before a band subset) had hidden the
    file's right '/wavelength' dataset: no wavelengths, and a reversed cube was classified without a word."""
    cube = _cube((6, 5, 4))
    path = tmp_path / "scene.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("reflectance", data=cube)
        d.attrs["dims"] = "band, y, x"
        d.attrs["wavelength"] = np.linspace(0.4, 0.9, 10)
        f.create_dataset("wavelength", data=np.linspace(400.0, 900.0, 6)).attrs["units"] = "nm"
    with pytest.warns(UserWarning, match="attribute lists 10 values for 6 bands"):
        s = open_scene(path)
    np.testing.assert_allclose(s["wavelength"].values, np.linspace(400.0, 900.0, 6))


def test_band_names_with_an_underscore_before_the_wavelength():
    np.testing.assert_allclose(wavelengths_in_names(["B001_400nm", "B002_410.5nm"]), [400.0, 410.5])
    assert wavelengths_in_names(["B12nm", "B13nm"]) is None  # a number inside a word is no wavelength


def test_record_wavelengths_fix_names_the_format():
    assert "wavelength_units" in record_wavelengths_fix("hdf5") and "ENVI" not in record_wavelengths_fix("zarr")
    assert "ENVI header" in record_wavelengths_fix(None)


def test_record_wavelengths_fix_names_the_side_file_of_the_scene():
    """'<name>.wavelengths.json' left open whether <name> was 'scene' or 'scene.mat': the fix names the file for the
    scene given, and the rule (with an example) where no path is known."""
    assert record_wavelengths_fix("matlab", "/data/scene.mat").startswith(
        "write them into scene.wavelengths.json (or scene.mat.wavelengths.json) beside scene.mat, a JSON file")
    assert "p.v2.wavelengths.json (or p.v2.npy.wavelengths.json)" in record_wavelengths_fix("npy", "p.v2.npy")
    assert "scene.wavelengths.json for scene.mat" in record_wavelengths_fix("matlab")
    assert "<name>" not in record_wavelengths_fix("npy")


# --- F3: two ENVI headers beside one binary -----------------------------------------------------------------------

def _envi(dirname, cube: np.ndarray, headers: dict[str, str]) -> None:
    b, h, w = cube.shape
    cube.astype("<i2").tofile(dirname / "s.img")
    for name, interleave in headers.items():
        (dirname / name).write_text(f"ENVI\nsamples = {w}\nlines = {h}\nbands = {b}\nheader offset = 0\n"
                                    f"data type = 2\ninterleave = {interleave}\nbyte order = 0\n")


@pytest.mark.parametrize("passed", ["s.hdr", "s.img"])
def test_envi_two_headers_that_differ_are_refused(tmp_path, passed):
    cube = _cube((4, 5, 6)).astype(np.int16)
    _envi(tmp_path, cube, {"s.hdr": "bsq", "s.img.hdr": "bil"})  # s.img.hdr stale: GDAL reads the binary with it
    with pytest.raises(SceneError, match=r"two headers beside it that differ: .*s\.hdr .*s\.img\.hdr .*remove or "
                                         r"rename the stale one"):
        open_scene(tmp_path / passed)


def test_envi_two_headers_that_agree_are_read(tmp_path):
    """Headers that agree on how the binary is read are read, whatever else differs (a description ENVI adds)."""
    cube = _cube((4, 5, 6)).astype(np.int16)
    _envi(tmp_path, cube, {"s.hdr": "bsq", "s.img.hdr": "bsq"})
    np.testing.assert_array_equal(open_scene(tmp_path / "s.hdr").values, cube)
    with open(tmp_path / "s.hdr", "a") as f:
        f.write("description = {written by ENVI 5.6}\n")
    np.testing.assert_array_equal(open_scene(tmp_path / "s.hdr").values, cube)
    # the same values written otherwise (BSQ, -99 against -99.0, spacing): the same header to GDAL
    (tmp_path / "s.hdr").write_text((tmp_path / "s.img.hdr").read_text().replace("bsq", "BSQ")
                                    + "data ignore value = -99\nwavelength = {0.46,0.5, 0.6,0.7}\n")
    with open(tmp_path / "s.img.hdr", "a") as f:
        f.write("data ignore value = -99.0\nwavelength = { 0.460000, 0.500000, 0.600000, 0.700000 }\n")
    np.testing.assert_array_equal(open_scene(tmp_path / "s.hdr").values, cube)


# --- F5: gdal_translate -of netCDF's per-band attributes ----------------------------------------------------------

def test_gdal_netcdf_band_attributes_become_band_coordinates(tmp_path):
    cube = _cube((5, 6, 7)).astype(np.int16)
    cube[0] = -9999  # a bad band filled with nodata: without its bbl every pixel was nodata
    wl_um = np.array([0.40002, 0.40982, 0.41962, 0.5, 0.6])
    tif, nc = tmp_path / "g.tif", tmp_path / "g.nc"
    with rasterio.open(tif, "w", driver="GTiff", width=7, height=6, count=5, dtype="int16", nodata=-9999,
                       crs="EPSG:32633", transform=Affine(30, 0, 500000, 0, -30, 5800000)) as dst:
        dst.write(cube)
        for i in range(5):
            dst.update_tags(i + 1, wavelength=f"{wl_um[i]}", wavelength_units="Micrometers", fwhm="0.01",
                            bbl="0" if i == 0 else "1")
    rasterio.shutil.copy(tif, nc, driver="netCDF", WRITE_BOTTOMUP="NO")
    s = open_scene(nc)
    np.testing.assert_allclose(s["wavelength"].values, wl_um * 1000)
    assert s["wavelength"].attrs["units"] == "nm"
    np.testing.assert_array_equal(s["bbl"].values, [0, 1, 1, 1, 1])
    np.testing.assert_allclose(s["fwhm"].values, 10.0)
    np.testing.assert_array_equal(s.values, cube)
    np.testing.assert_array_equal(s["wavelength"].values, open_scene(tif)["wavelength"].values)
    from hsi_engine.io import as_scene

    with xr.open_dataset(nc) as ds:  # the Dataset handed over reads the same
        np.testing.assert_allclose(as_scene(ds)["wavelength"].values, wl_um * 1000)


# --- F6: a sharded zarr store's missing or corrupt shard ----------------------------------------------------------

def _sharded(path) -> np.ndarray:
    cube = _cube((4, 40, 40))
    ds = xr.DataArray(cube, dims=("band", "y", "x")).to_dataset(name="r")
    ds.to_zarr(path, zarr_format=3, mode="w", consolidated=False,
               encoding={"r": {"chunks": (4, 10, 10), "shards": (4, 20, 20)}})
    return cube


def test_sharded_zarr_missing_shard_is_named(tmp_path):
    store = tmp_path / "s.zarr"
    _sharded(store)
    os.remove(store / "r" / "c" / "0" / "1" / "1")
    with pytest.raises(CorruptChunkError, match=r"missing 1 of 4 shards of array r: c/0/1/1 \(shard \(0, 1, 1\)\)\."):
        check_store(open_scene(store))


def test_sharded_zarr_truncated_shard_is_named(tmp_path):
    store = tmp_path / "s.zarr"
    _sharded(store)
    shard = store / "r" / "c" / "0" / "1" / "1"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    s = open_scene(store)
    with pytest.raises(Exception) as failed:
        s.values
    err = read_error(s, (0, 40, 0, 40), failed.value)
    assert isinstance(err, CorruptChunkError)
    assert "zarr shard c/0/1/1 (shard index (0, 1, 1))" in str(err) and "re-create" in str(err)


def test_hdf5_and_npy_scenes_are_named_for_their_dataset_and_file(tmp_path):
    """A bare HDF5 dataset and a .npy were named by a dask token ('hdf5-e92b...'), shown in every repr and in
    errors ("DataArray 'hdf5-e92b...' has dims ..."): the dataset's name and the file's stem now."""
    import hsi_engine

    cube = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("group/radiance", data=cube)
    np.save(tmp_path / "flight_07.npy", cube)
    assert hsi_engine.open_scene(tmp_path / "s.h5", band_axis=0).name == "radiance"
    assert hsi_engine.open_scene(tmp_path / "flight_07.npy", band_axis=0).name == "flight_07"


def _geotiff_bands(path, describe, bands=4):
    """A small georeferenced float32 GeoTIFF whose bands ``describe(dst, band)`` tags."""
    with rasterio.open(path, "w", driver="GTiff", height=3, width=3, count=bands, dtype="float32",
                       crs="EPSG:32633", transform=Affine(30, 0, 0, 0, -30, 0)) as dst:
        dst.write(np.arange(bands * 3 * 3, dtype=np.float32).reshape(bands, 3, 3))
        for b in range(1, bands + 1):
            describe(dst, b)


def test_geotiff_imagery_domain_central_wavelengths_are_read(tmp_path):
    """GDAL >= 3.10 records a band's centre wavelength in the IMAGERY domain (``CENTRAL_WAVELENGTH_UM``): alone,
    it had given a scene without wavelengths (band order unchecked)."""
    import hsi_engine

    um = (0.45, 0.55, 0.65, 0.85)
    _geotiff_bands(tmp_path / "s.tif", lambda dst, b: dst.update_tags(b, ns="IMAGERY",
                                                                     CENTRAL_WAVELENGTH_UM=str(um[b - 1])))
    wl = hsi_engine.open_scene(tmp_path / "s.tif")["wavelength"].values
    np.testing.assert_allclose(wl, [450, 550, 650, 850])


def test_band_names_that_disagree_with_the_wavelength_metadata_are_warned_of(tmp_path):
    """Per-band 'wavelength' tags and band names saying other wavelengths (the names reversed): the tags won without
    a word. Still the tags, with a warning naming a band of each."""
    import hsi_engine

    nm = (450.0, 550.0, 650.0, 850.0)

    def describe(dst, b):
        dst.update_tags(b, wavelength=str(nm[b - 1]), wavelength_units="nm")
        dst.set_band_description(b, f"band {b} ({nm[4 - b]} nm)")

    _geotiff_bands(tmp_path / "s.tif", describe)
    with pytest.warns(UserWarning, match=r"band names say other wavelengths than its band metadata \(band 1: 850 nm "
                                         r"in its name, 450 nm in its metadata\)"):
        wl = hsi_engine.open_scene(tmp_path / "s.tif")["wavelength"].values
    np.testing.assert_allclose(wl, nm)
    with rasterio.open(tmp_path / "s.tif", "r+") as f:  # names that agree (rounded): nothing said
        for b in range(1, 5):
            f.set_band_description(b, f"band {b} ({nm[b - 1] + 0.4:.1f} nm)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hsi_engine.open_scene(tmp_path / "s.tif")
