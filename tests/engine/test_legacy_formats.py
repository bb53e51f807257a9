"""Scenes as older or other tools store them (CF packing and valid ranges in HDF5, a length-1 leading HDF5 dim,
zipped zarr, NetCDF4 groups, GDAL's one-variable-per-band NetCDF), written here with h5py/xarray/zarr, read back."""

from __future__ import annotations

import logging
import shutil
import warnings

import h5py
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from hsi_engine.errors import SceneError
from hsi_engine.io import as_scene, open_scene

B, H, W = 5, 4, 6


def _cube(dtype=np.int16) -> np.ndarray:
    return (np.arange(B * H * W).reshape(B, H, W) * 7 % 900 + 100).astype(dtype)


def _dataset(data: np.ndarray, name: str = "reflectance") -> xr.Dataset:
    return xr.DataArray(data, dims=("band", "y", "x"), name=name).to_dataset()


def test_hdf5_copy_of_packed_netcdf4_decodes_as_the_netcdf(tmp_path):
    """A NetCDF4 file (uint16 with add_offset -100) copied to .h5 reads as the .nc does: before, the stored counts
    were read and the map was one class."""
    values = _cube(np.float32)
    values[:, 1, 2] = np.nan
    nc = tmp_path / "packed.nc"
    _dataset(values).to_netcdf(nc, engine="h5netcdf", encoding={"reflectance": {
        "dtype": "uint16", "add_offset": -100.0, "scale_factor": 0.5, "_FillValue": 65535}})
    shutil.copy(nc, tmp_path / "packed.h5")
    from_nc, from_h5 = open_scene(nc).values, open_scene(tmp_path / "packed.h5").values
    np.testing.assert_array_equal(from_h5, from_nc)
    np.testing.assert_allclose(from_h5, values)  # NaN where the fill is
    assert np.isnan(open_scene(tmp_path / "packed.h5").attrs["_FillValue"])


def test_hdf5_unsigned_and_missing_value_decoded(tmp_path):
    """``_Unsigned`` and ``missing_value`` on a plain HDF5 dataset are decoded as CF says."""
    stored = _cube().astype(np.uint16)
    stored[0, 0, 0], stored[1, 1, 1] = 40000, 7
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("cube", data=stored.view(np.int16))
        d.attrs["dims"] = "band,y,x"
        d.attrs["_Unsigned"] = "true"
        d.attrs["missing_value"] = np.int16(7)
    got = open_scene(path).values
    assert got[0, 0, 0] == 40000 and np.isnan(got[1, 1, 1])


def test_valid_range_masks_in_netcdf_zarr_and_hdf5(tmp_path, caplog):
    """Stored values outside valid_range / valid_min / valid_max read as NaN, with a log line naming the attribute;
    the others are as stored. Before, a -9999 hole with no _FillValue was classified."""
    data = _cube()
    data[:, 2, 3] = -9999  # below the range
    data[0, 0, 0] = 12000  # above it
    below, above = np.zeros(data.shape, bool), np.zeros(data.shape, bool)
    below[:, 2, 3], above[0, 0, 0] = True, True
    ds = _dataset(data)
    ds["reflectance"].attrs["valid_range"] = np.array([0, 10000], np.int16)
    ds.to_netcdf(tmp_path / "vr.nc")
    del ds["reflectance"].attrs["valid_range"]
    ds["reflectance"].attrs["valid_min"] = np.int16(0)
    ds.to_zarr(tmp_path / "vmin.zarr")
    with h5py.File(tmp_path / "vmax.h5", "w") as f:
        d = f.create_dataset("cube", data=data)
        d.attrs["valid_max"], d.attrs["dims"] = np.int16(10000), "band,y,x"
    for name, masked in (("vr.nc", below | above), ("vmin.zarr", below), ("vmax.h5", above)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hsi_engine"):
            da = open_scene(tmp_path / name)
        assert da.dtype == np.float32 and np.isnan(da.attrs["_FillValue"])
        np.testing.assert_array_equal(np.isnan(da.values), masked)
        np.testing.assert_array_equal(da.values[~masked], data[~masked])
        assert {"vr.nc": "valid_range", "vmin.zarr": "valid_min", "vmax.h5": "valid_max"}[name] in caplog.text


def test_an_inverted_valid_range_or_a_text_scale_factor_is_named(tmp_path):
    """valid_range [10000, 0] made every pixel nodata: a map of class 0, exit 0, an INFO line the only word; a
    scale_factor stored as text ('NaN') failed as "dtype <U3" with advice to astype the scene."""
    from hsi_engine.errors import SceneError

    ds = _dataset(_cube())
    ds["reflectance"].attrs["valid_range"] = np.array([10000, 0], np.int16)
    ds.to_zarr(tmp_path / "inverted.zarr")
    with pytest.raises(SceneError, match=r"declares valid_range 10000 to 0: its low end above its high one"):
        open_scene(tmp_path / "inverted.zarr")
    ds = _dataset(_cube())
    ds["reflectance"].attrs["scale_factor"] = "NaN"
    ds.to_zarr(tmp_path / "text.zarr")
    with pytest.raises(SceneError, match=r"declares scale_factor = 'NaN', which is not a number"):
        open_scene(tmp_path / "text.zarr")


def test_scene_without_cf_attrs_unchanged(tmp_path):
    """A plain int16 scene stays int16, as stored."""
    _dataset(_cube()).to_netcdf(tmp_path / "plain.nc")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("cube", data=_cube()).attrs["dims"] = "band,y,x"
    for p in (tmp_path / "plain.nc", tmp_path / "plain.h5"):
        da = open_scene(p)
        assert da.dtype == np.int16 and "unpacked" not in da.attrs
        np.testing.assert_array_equal(da.values, _cube())


@pytest.mark.parametrize("dims", [None, "time,band,y,x"])
def test_hdf5_length1_leading_dim_dropped(tmp_path, caplog, dims):
    """A (1, band, y, x) HDF5 dataset is read as its cube, as NetCDF/zarr drop a length-1 time: before, the error
    asked for --variable, then refused the dataset it named."""
    path = tmp_path / "t1.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("reflectance", data=_cube()[None])
        if dims:
            d.attrs["dims"] = dims
    with caplog.at_level(logging.INFO, logger="hsi_engine"):
        da = open_scene(path, band_axis=None if dims else 0)
    assert da.dims == ("band", "y", "x") and da.shape == (B, H, W)
    np.testing.assert_array_equal(da.values, _cube())
    assert "dropping its length-1 dims " + ("time" if dims else "axis 0") in caplog.text


def test_hdf5_two_long_extra_dims_still_refused(tmp_path):
    """A stack of two scenes is no cube: refused, and named, with or without --variable."""
    with h5py.File(tmp_path / "t2.h5", "w") as f:
        f.create_dataset("reflectance", data=np.zeros((2, B, H, W), np.int16))
    with pytest.raises(SceneError, match="expected one 3-D dataset"):
        open_scene(tmp_path / "t2.h5")
    with pytest.raises(SceneError, match="length-1"):
        open_scene(tmp_path / "t2.h5", variable="reflectance")


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")  # zarr's ZipStore rewrites its metadata
def test_zipped_zarr_says_unzip(tmp_path):
    """A zipped zarr store (as zarr's ZipStore writes it), zipped or renamed .zarr, is refused with the unzip
    command and the Python way: before, the advice was to rename it, which fails."""
    import zarr

    path = tmp_path / "scene.zarr.zip"
    store = zarr.storage.ZipStore(path, mode="w")
    _dataset(_cube()).to_zarr(store, consolidated=False)
    store.close()
    with pytest.raises(SceneError, match=r"unzip scene\.zarr\.zip -d scene\.zarr.*ZipStore"):
        open_scene(path)
    shutil.copy(path, tmp_path / "renamed.zarr")
    with pytest.raises(SceneError, match=r"zipped zarr store.*unzip renamed\.zarr\.zip -d renamed\.zarr"):
        open_scene(tmp_path / "renamed.zarr")


def test_netcdf4_group(tmp_path):
    """A cube in a NetCDF4 group opens as variable='GROUP/NAME'; without it the error names group/name."""
    path = tmp_path / "grp.nc"
    xr.Dataset({"title": ((), 0)}).to_netcdf(path, engine="h5netcdf")
    _dataset(_cube()).to_netcdf(path, group="science", mode="a", engine="h5netcdf")
    with pytest.raises(SceneError, match=r"groups \(science\).*--variable science/reflectance"):
        open_scene(path)
    np.testing.assert_array_equal(open_scene(path, variable="science/reflectance").values, _cube())
    with pytest.raises(SceneError, match=r"no group 'sci'.*\['science'\]"):
        open_scene(path, variable="sci/reflectance")


def _gdal_like(path, names, crs="EPSG:32633"):
    """A NetCDF as gdal_translate -of netCDF writes one: a 2-D variable per band and a grid-mapping variable."""
    cube = _cube()
    ds = xr.Dataset({n: (("y", "x"), cube[i]) for i, n in enumerate(names)},
                    coords={"y": 5000.0 - 30 * np.arange(H) - 15, "x": 300000.0 + 30 * np.arange(W) + 15})
    ds = ds.rio.write_crs(crs)
    for n in names:
        ds[n].attrs["long_name"] = f"GDAL Band Number {n[4:]}"
    ds.to_netcdf(path)
    return cube


def test_gdal_netcdf_bands_stacked_in_band_order(tmp_path):
    """Band1..BandN 2-D variables (stored in any order) read as one cube in band-number order, with the CRS: before,
    the error listed every variable in one line and named no fix."""
    names = [f"Band{i}" for i in (1, 5, 2, 3, 4)]  # stored out of order
    cube = _gdal_like(tmp_path / "g.nc", names)
    da = open_scene(tmp_path / "g.nc")
    expect = cube[[names.index(f"Band{i}") for i in range(1, B + 1)]]
    np.testing.assert_array_equal(da.values, expect)
    assert da.rio.crs.to_epsg() == 32633 and da.rio.transform().c == 300000.0
    np.testing.assert_array_equal(as_scene(xr.open_dataset(tmp_path / "g.nc")).values, expect)


def test_many_2d_variables_listing_capped_with_fix(tmp_path):
    """2-D variables not named as GDAL names bands: the error names a few and the count, and the fix."""
    names = [f"layer_{i}" for i in range(B)]
    ds = xr.Dataset({n: (("y", "x"), _cube()[0]) for n in names + ["more_a", "more_b", "more_c"]})
    ds.to_netcdf(tmp_path / "many.nc")
    with pytest.raises(SceneError) as e:
        open_scene(tmp_path / "many.nc")
    text = str(e.value)
    assert "8 variables" in text and "more_c" not in text and "to_array('band')" in text and len(text) < 600


def test_missing_value_list_warning_names_the_variable(tmp_path):
    """xarray's warning about several missing values names the file's variable, not the engine's 'v'."""
    ds = _dataset(_cube())
    ds["reflectance"].attrs["missing_value"] = np.array([-9999, -32768], np.int16)
    ds.to_netcdf(tmp_path / "mv.nc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_scene(tmp_path / "mv.nc")
    texts = [str(w.message) for w in caught if "fill values" in str(w.message)]
    assert texts and all("'reflectance'" in t and "'v'" not in t for t in texts)


# --- MATLAB: the variable= hint only where a variable can help ----------------------------------------------------

def test_an_unreadable_mat_file_is_not_told_to_pick_a_variable(tmp_path):
    """Every MATLAB error ended 'Pass variable=NAME (--variable NAME) to pick the cube.', a truncated file's too,
    where passing one gave the same error."""
    p = tmp_path / "bad.mat"
    p.write_text("nope")
    for kw in ({}, {"variable": "x"}):
        with pytest.raises(SceneError, match=r"is not a readable MATLAB file") as e:
            open_scene(p, **kw)
        assert "variable" not in str(e.value)


def test_a_mat_file_without_a_cube_says_what_was_looked_for(tmp_path):
    """'found 0 (keys: ['x']). Keep only that variable in the file, or name it as the dataset registry expects':
    no 'that variable', internal jargon, and a variable= hint no variable could satisfy."""
    import scipy.io

    p = tmp_path / "flat.mat"
    scipy.io.savemat(p, {"x": np.zeros((4, 6))})
    with pytest.raises(SceneError, match=r"flat\.mat holds no 3-D array; expected the scene cube, a 3-D array \(rows "
                                         r"x columns x bands\), and found x \(4 x 6\); save the scene into it") as e:
        open_scene(p)
    assert "registry" not in str(e.value) and "variable=" not in str(e.value)
    with pytest.raises(SceneError, match=r"variable 'x' is a 2-D array of 4 x 6; expected the scene cube.*holds none"):
        open_scene(p, variable="x")


def test_a_mat_file_with_several_cubes_names_them_and_variable(tmp_path):
    import scipy.io

    p = tmp_path / "two.mat"
    cube = np.moveaxis(_cube(), 0, -1)
    scipy.io.savemat(p, {"a": cube, "b": cube + 1, "m": np.zeros((2, 2))})
    with pytest.raises(SceneError, match=r"holds 2 3-D arrays \(a \(4 x 6 x 5\), b \(4 x 6 x 5\)\), and which is the "
                                         r"scene cannot be told; pass the scene cube's name, e.g. variable='a' "
                                         r"\(--variable a on the command line\)"):
        open_scene(p)
    with pytest.raises(SceneError, match=r"has no variable 'c'; it holds a \(4 x 6 x 5\), b \(4 x 6 x 5\), m \(2 x 2\)"
                                         r"; pass the scene cube's name"):
        open_scene(p, variable="c")
    with pytest.raises(SceneError, match=r"variable 'm' is a 2-D array of 2 x 2; .* Its 3-D arrays: a \(4 x 6 x 5\)"):
        open_scene(p, variable="m")
    np.testing.assert_array_equal(open_scene(p, variable="B").values, _cube() + 1)


def test_a_v73_struct_named_as_the_cube_is_a_scene_error(tmp_path):
    """A MATLAB v7.3 struct (an HDF5 group) passed as variable= raised h5py's bare TypeError."""
    p = tmp_path / "v73.mat"
    with h5py.File(p, "w") as f:
        f["cube"] = np.moveaxis(_cube(), 0, -1).T  # (rows, columns, bands) in MATLAB's column-major order
        f.create_group("meta")
    with pytest.raises(SceneError, match=r"variable 'meta' is a struct; expected the scene cube.*Its 3-D arrays: "
                                         r"cube \(4 x 6 x 5\)"):
        open_scene(p, variable="meta")


# --- a .nc file that is not NetCDF --------------------------------------------------------------------------------

@pytest.mark.parametrize("content, said", [
    (b"hello", r"is not NetCDF but text, starting 'hello'"),
    (b"<html><body>404 Not Found</body></html>", r"is not NetCDF but text \(an HTML page: a failed download\?\)"),
    (b"II*\x00" + bytes(60), r"is not NetCDF but a TIFF image .*: rename it to \.tif"),
    (b"", r"is empty \(0 bytes\)"),
    (bytes(range(256)), r"is not a NetCDF file: it starts with b'\\x00\\x01"),
])
def test_a_nc_file_that_is_not_netcdf_is_named_as_such(tmp_path, content, said):
    """xarray's 'did not find a match in any of xarray's currently installed IO backends ... via the ``engine``
    parameter ... see:' was passed on: an option neither open_scene nor the command line has, cut at 'see:'."""
    p = tmp_path / "s.nc"
    p.write_bytes(content)
    with pytest.raises(SceneError, match=said) as e:
        open_scene(p)
    assert "engine" not in str(e.value) and "see:" not in str(e.value)
    assert "expected a NetCDF file, which starts with 'CDF' (NetCDF3) or HDF5's signature (NetCDF4)" in str(e.value)
