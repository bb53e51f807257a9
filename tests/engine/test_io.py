"""open_scene / as_scene / scene_info on files written here (every format) and on the real shared data."""

from __future__ import annotations

import re
import warnings

import dask.array as dsa
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import rasterio
import xarray as xr

from hsi_engine.errors import MissingSpatialDimsError, OptionError, SceneError
from hsi_engine.io import as_scene, file_of, open_scene, scene_info

CRS = "EPSG:32633"
TRANSFORM = (30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0)
BANDS, HEIGHT, WIDTH = 12, 40, 56
NODATA = -9999.0
WAVELENGTHS_NM = np.round(np.linspace(420.0, 2400.0, BANDS), 3)


@pytest.fixture(autouse=True)
def _helpers(geo):
    # the fixture scenes' constants (tests/engine/conftest.py); kept in sync by this check
    assert (geo.CRS, geo.TRANSFORM, geo.BANDS, geo.HEIGHT, geo.WIDTH, geo.NODATA) == \
        (CRS, TRANSFORM, BANDS, HEIGHT, WIDTH, NODATA)
    global make_cube, pixel_centres
    make_cube, pixel_centres = geo.make_cube, geo.pixel_centres


def _is_lazy(da: xr.DataArray) -> bool:
    return isinstance(da.data, dsa.Array)


def _check_georef(da: xr.DataArray, transform=TRANSFORM) -> None:
    assert da.rio.crs is not None and da.rio.crs.to_epsg() == 32633
    assert tuple(da.rio.transform())[:6] == pytest.approx(transform)
    assert "spatial_ref" in da.coords
    y, x = pixel_centres(da.sizes["y"], da.sizes["x"])
    np.testing.assert_allclose(da["y"].values, y)
    np.testing.assert_allclose(da["x"].values, x)


# --------------------------------------------------------------------------------------------------
# every format, written here

@pytest.mark.parametrize("fmt", ["geotiff", "zarr", "zarr2", "netcdf", "hdf5", "zarr-bare"])
def test_chunked_stores_keep_values_chunks_and_wavelengths(make_scene, fmt):
    cube = make_cube()
    path = make_scene(fmt, cube=cube, chunks=(BANDS, 16, 24), block=16)
    da = open_scene(path)
    assert da.dims == ("band", "y", "x") and da.shape == (BANDS, HEIGHT, WIDTH)
    assert _is_lazy(da)
    expect = (16, 16) if fmt == "geotiff" else (16, 24)  # GeoTIFF: the 16 x 16 tiles, grouped to <= 256
    if fmt == "geotiff":
        assert da.chunks[1][0] == 40 and da.chunks[2][0] == 56  # 16-px blocks grouped (whole scene < 256 px)
    else:
        assert (da.chunks[1][0], da.chunks[2][0]) == expect
    assert da.chunks[0] == (BANDS,)
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)
    assert da["wavelength"].attrs["units"] == "nm"
    if fmt != "zarr-bare" and fmt != "hdf5":
        _check_georef(da)


def test_geotiff_tiles_become_store_aligned_chunks(make_scene):
    cube = make_cube(bands=3, height=600, width=520)
    da = open_scene(make_scene("geotiff", cube=cube, block=64))
    assert da.chunks[1][0] == 256 and da.chunks[2][0] == 256  # 4 x 64-px tiles per chunk
    assert all(c % 64 == 0 for c in da.chunks[1][:-1])
    assert da.rio.nodata == NODATA and da.attrs["_FillValue"] == NODATA


def test_user_chunks_override_and_accept_aliases(make_scene):
    da = open_scene(make_scene("zarr"), chunks={"band": -1, "rows": 8, "cols": 8})
    assert da.chunks[1][0] == 8 and da.chunks[2][0] == 8


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_interleaves(make_scene, interleave):
    cube = make_cube(dtype=np.int16)
    path = make_scene("envi", cube=cube, interleave=interleave)
    for p in (path, path.with_suffix(".hdr")):
        da = open_scene(p)
        assert _is_lazy(da) and da.dims == ("band", "y", "x")
        np.testing.assert_array_equal(da.values, cube)
        _check_georef(da)
        np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)  # micrometres in the header -> nm
        assert da.rio.nodata == NODATA
        assert da.attrs["envi_interleave"] == interleave


def test_a_directory_of_scenes_names_them(make_scene, tmp_path):
    """A folder of ENVI files as the scene got 'suffix (none) ... rename it with the suffix of its real format'."""
    make_scene("envi", name="a")
    make_scene("geotiff", name="b")
    with pytest.raises(SceneError, match=r"is a directory, not a scene \(nor a zarr store\): pass one of its "
                                         r"scenes: a.hdr, b.tif$"):
        open_scene(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="it holds none hsi-engine reads"):
        open_scene(tmp_path / "empty")


def test_envi_files_are_found_in_any_case_and_by_any_binary_name(make_scene):
    """GDAL finds ``SCENE.BSQ`` + ``SCENE.HDR`` (as Windows tools write them) and a binary of any name beside its
    header (``scene.rfl``); both were refused ("has no header", "has no binary beside it")."""
    cube = make_cube(dtype=np.int16)
    path = make_scene("envi", cube=cube)
    upper = path.parent / "upper"
    upper.mkdir()
    path.rename(upper / "SCENE.BSQ")
    path.with_suffix(".hdr").rename(upper / "SCENE.HDR")
    for p in (upper / "SCENE.BSQ", upper / "SCENE.HDR"):
        np.testing.assert_array_equal(open_scene(p).values, cube)
    (upper / "SCENE.BSQ").rename(upper / "SCENE.rfl")
    with pytest.raises(SceneError, match=r"has no binary beside it.*pass the binary's path"):
        open_scene(upper / "SCENE.HDR")
    da = open_scene(upper / "SCENE.rfl")
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)
    (upper / "SCENE.rfl").rename(upper / "SCENE.Bsq")  # mixed case both ways: the binary found its header only
    (upper / "SCENE.HDR").rename(upper / "SCENE.Hdr")  # as .hdr or .HDR
    for p in (upper / "SCENE.Bsq", upper / "SCENE.Hdr"):
        np.testing.assert_array_equal(open_scene(p).values, cube)


def test_a_vrt_under_a_geotiff_or_envi_name_is_not_opened_as_a_vrt(make_scene, tmp_path):
    """A GDAL VRT (XML) saved as scene.tif, or as an ENVI binary beside a valid header, was opened as a VRT: its
    sources read any local file (/etc/passwd as pixel values), a URL (/vsicurl/: the refusal of URLs got round) or
    a pipe (a hang Ctrl-C did not end). Only the named format's driver opens a scene now."""
    cube = make_cube(dtype=np.int16)
    real = make_scene("geotiff", cube=cube)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"x" * 4000)
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{i}" subClass="VRTRawRasterBand"><SourceFilename '
                    f'relativeToVRT="0">{secret}</SourceFilename><ImageOffset>0</ImageOffset><PixelOffset>1'
                    f'</PixelOffset><LineOffset>{WIDTH}</LineOffset></VRTRasterBand>' for i in range(1, BANDS + 1))
    xml = f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}">{bands}</VRTDataset>'.encode()
    with rasterio.open(real) as f:
        assert f.driver == "GTiff"
    (tmp_path / "scene.tif").write_bytes(xml)
    with rasterio.open(tmp_path / "scene.tif") as f:
        assert f.driver == "VRT" and f.read(1)[0, 0] == ord("x")  # what GDAL alone makes of it
    with pytest.raises(SceneError, match=r"could not be opened as a GeoTIFF raster .*GDAL's GTiff driver alone "
                                         r"reads it: .* a GDAL VRT among them, is not read"):
        open_scene(tmp_path / "scene.tif")
    envi = make_scene("envi", cube=cube)
    envi.write_bytes(xml.ljust(envi.stat().st_size, b" "))  # the size its header declares
    values = open_scene(envi).values  # the ENVI driver reads the file's bytes as its pixels, not as a VRT's XML
    np.testing.assert_array_equal(values.ravel()[:4].astype("<i2").tobytes(), xml[:8])


@pytest.mark.parametrize("interleave", ["bsq", "bip"])
def test_a_truncated_envi_binary_is_refused(make_scene, interleave):
    """An interrupted download: GDAL read the missing half as zeros and the map classified them, exit 0."""
    path = make_scene("envi", cube=make_cube(dtype=np.int16), interleave=interleave)
    open_scene(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 2)
    with pytest.raises(SceneError, match=rf"holds {size - 2:,} bytes.*declares .*\({size:,} bytes\): the file is "
                                         "incomplete"):
        open_scene(path.with_suffix(".hdr"))


def test_an_envi_wavelength_list_of_the_wrong_length_is_named(make_scene):
    """One value short, the list was dropped without a word, and with it the model's band check."""
    path = make_scene("envi")
    hdr = path.with_suffix(".hdr")
    text = hdr.read_text()
    start = text.index("wavelength = {")
    end = text.index("}", start)
    values = text[start + len("wavelength = {"):end].split(",")
    hdr.write_text(text[:start] + "wavelength = {" + ",".join(values[:-1]) + text[end:])
    with pytest.warns(UserWarning, match=rf"'wavelength' entry lists {len(values) - 1} values for {BANDS} bands"):
        da = open_scene(path)
    assert "wavelength" not in da.coords


@pytest.mark.parametrize("where", ["envi domain", "descriptions"])
def test_geotiff_wavelengths_from_the_envi_domain_and_plain_band_names(make_scene, where):
    """Wavelengths in a GeoTIFF's ENVI metadata domain (``wavelength = {...}``, as GDAL copies an ENVI header) or
    in band names like '460.0 nm' were not read, so a band-reversed copy passed the model's band check."""
    cube = make_cube()
    path = make_scene("geotiff", cube=cube)
    with rasterio.open(path, "r+") as dst:
        for b in range(1, BANDS + 1):  # only the form under test
            dst.update_tags(b, wavelength="", wavelength_units="")
            dst.set_band_description(b, "")
        if where == "envi domain":
            dst.update_tags(ns="ENVI", wavelength="{" + ", ".join(f"{w / 1000:.6f}" for w in WAVELENGTHS_NM) + "}",
                            wavelength_units="Micrometers")
        else:
            for b, w in enumerate(WAVELENGTHS_NM, start=1):
                dst.set_band_description(b, f"{w:.1f} nm")
    np.testing.assert_allclose(open_scene(path)["wavelength"].values, WAVELENGTHS_NM)


def test_a_line_interleaved_cube_opens_with_band_axis_1(tmp_path):
    """PRISMA stores its cubes (lines, bands, samples): band_axis=1 reads them; the error asked for 0 or 2."""
    import h5py

    cube = make_cube(bands=5, height=7, width=9)
    p = tmp_path / "prisma.he5"
    with h5py.File(p, "w") as f:
        f.create_dataset("HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube", data=np.moveaxis(cube, 0, 1))
    da = open_scene(p, band_axis=1)
    assert da.dims == ("band", "y", "x")
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_array_equal(as_scene(np.moveaxis(cube, 0, 1), band_axis=1).values, cube)
    with pytest.raises(OptionError, match=r"band_axis=3 .*1 \(y, band, x"):
        open_scene(p, band_axis=3)
    with pytest.raises(OptionError, match=r"band_axis=.0. for"):  # (an argument outside what it accepts)
        as_scene(cube, band_axis="0")


@pytest.mark.parametrize("fmt", ["geotiff", "envi"])
def test_bad_band_list_becomes_a_bbl_coordinate(make_scene, fmt):
    """Per-band GDAL ``bbl`` metadata (as EnMAP's GeoTIFFs carry it) and an ENVI header's ``bbl`` list become a
    ``bbl`` band coordinate, which the engine's nodata mask reads; a list of the wrong length is named and left out."""
    bbl = [1] * BANDS
    bbl[2] = bbl[7] = 0
    path = make_scene(fmt)
    if fmt == "geotiff":
        with rasterio.open(path, "r+") as dst:
            for b, v in enumerate(bbl, start=1):
                dst.update_tags(b, bbl=str(v))
    else:
        hdr = path.with_suffix(".hdr")
        hdr.write_text(hdr.read_text() + "bbl = {" + ", ".join(map(str, bbl)) + "}\n")
    da = open_scene(path)
    assert da["bbl"].dims == ("band",)
    np.testing.assert_array_equal(da["bbl"].values, bbl)
    if fmt == "envi":
        hdr.write_text(hdr.read_text().replace("bbl = {", "bbl = {1, "))
        with pytest.warns(UserWarning, match=rf"'bbl' \(bad band list\) entry lists {BANDS + 1} values for {BANDS} "
                                             "bands"):
            assert "bbl" not in open_scene(path).coords


@pytest.mark.parametrize("fmt", ["zarr", "netcdf", "hdf5", "zarr-bare", "npy"])
def test_band_last_sources_are_transposed_lazily(make_scene, fmt):
    cube = make_cube()
    path = make_scene(fmt, cube=cube, band_last=True, chunks=(BANDS, 16, 24))
    da = open_scene(path)
    assert da.dims == ("band", "y", "x") and da.shape == (BANDS, HEIGHT, WIDTH)
    assert _is_lazy(da), "band-last source was loaded instead of transposed lazily"
    if fmt != "npy":
        assert (da.chunks[1][0], da.chunks[2][0]) == (16, 24)
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)


def test_mat_scene(make_scene):
    cube = make_cube()
    da = open_scene(make_scene("mat", cube=cube))
    assert da.dims == ("band", "y", "x") and _is_lazy(da)
    np.testing.assert_array_equal(da.values, cube)


def test_netcdf_several_cubes_need_a_variable(tmp_path):
    ds = xr.Dataset({"a": (("band", "y", "x"), make_cube(bands=2, height=4, width=5)),
                     "b": (("band", "y", "x"), make_cube(bands=2, height=4, width=5))})
    p = tmp_path / "two.nc"
    ds.to_netcdf(p, engine="h5netcdf")
    with pytest.raises(SceneError, match=r"several 3-D variables \['a', 'b'\].*variable=NAME"):
        open_scene(p)
    np.testing.assert_array_equal(open_scene(p, variable="b").values, ds["b"].values)
    with pytest.raises(SceneError, match=r"several 3-D variables \['a', 'b'\].*ds\[NAME\]"):
        as_scene(ds)  # in memory there is no file to name a variable of


def test_alternative_dim_names_are_renamed(tmp_path):
    cube = make_cube(bands=3, height=5, width=6)
    ds = xr.Dataset({"r": (("lat", "lon", "wavelength"), np.moveaxis(cube, 0, -1))},
                    coords={"wavelength": [450.0, 550.0, 650.0]})
    p = tmp_path / "alt.nc"
    ds.to_netcdf(p, engine="h5netcdf")
    da = open_scene(p)
    assert da.dims == ("band", "y", "x") and _is_lazy(da)
    np.testing.assert_array_equal(da["wavelength"].values, [450.0, 550.0, 650.0])
    np.testing.assert_array_equal(da.values, cube)



def test_a_2d_x_coordinate_beside_lat_lon_dims_is_named_not_a_bare_value_error():
    """dims (band, lat, lon) with 2-D x/y coordinates: renaming lon to x raised xarray's bare ValueError."""
    from hsi_engine.errors import MissingSpatialDimsError
    from hsi_engine.io import as_scene

    cube = make_cube(bands=3, height=5, width=6)
    xx, yy = np.meshgrid(np.arange(6.0), np.arange(5.0))
    da = xr.DataArray(cube, dims=("band", "lat", "lon"),
                      coords={"x": (("lat", "lon"), xx), "y": (("lat", "lon"), yy)})
    with pytest.raises(MissingSpatialDimsError, match=r"dim 'lat' is read as 'y', but it also has a coordinate "
                                                      r"named 'y' .*da\.drop_vars\('y'\)"):
        as_scene(da)
    assert as_scene(da.drop_vars(["x", "y"])).dims == ("band", "y", "x")
    # a 1-D coordinate of the target name on that very dim is renamed with it, as before: swap_dims' band numbers
    wl = xr.DataArray(cube, dims=("band", "y", "x"), coords={"band": [1, 2, 3], "wavelength": ("band", [450.0,
                                                                                                      550.0, 650.0])})
    swapped = as_scene(wl.swap_dims({"band": "wavelength"}).sel(wavelength=[550.0, 650.0]))
    np.testing.assert_array_equal(swapped["wavelength"].values, [550.0, 650.0])


def test_the_advice_for_a_dataset_of_two_cubes_keeps_its_crs(tmp_path):
    """xr.open_dataset leaves a CF grid mapping a data variable: the advice ds[NAME] dropped it (a map without a
    CRS); the advice names it, and following it keeps the CRS."""
    from hsi_engine.errors import SceneError
    from hsi_engine.io import as_scene

    cube = make_cube(bands=3, height=5, width=6)
    da = xr.DataArray(cube, dims=("band", "y", "x"),
                      coords={"y": 4000015.0 - 30 * np.arange(5), "x": 500015.0 + 30 * np.arange(6)})
    ds = xr.Dataset({"a": da, "b": da + 1}).rio.write_crs("EPSG:32616")
    ds.to_netcdf(tmp_path / "two.nc", engine="h5netcdf")
    opened = xr.open_dataset(tmp_path / "two.nc", engine="h5netcdf")
    assert "spatial_ref" in opened.data_vars
    with pytest.raises(SceneError, match=r"pick one with ds\[\['NAME', 'spatial_ref'\]\]"):
        as_scene(opened)
    assert as_scene(opened[["a", "spatial_ref"]]).rio.crs.to_epsg() == 32616

# --------------------------------------------------------------------------------------------------
# errors

def test_unknown_suffix_lists_supported(tmp_path):
    p = tmp_path / "scene.xyz"
    p.write_bytes(b"123")
    with pytest.raises(SceneError, match=r"'\.xyz'.*Supported: .*\.tif.*\.zarr"):
        open_scene(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_scene(tmp_path / "nope.tif")


def test_two_d_array_is_refused(tmp_path):
    p = tmp_path / "band.npy"
    np.save(p, np.zeros((4, 5), np.float32))
    with pytest.raises(SceneError, match=r"2-D image .*\(4, 5\).*3-D hyperspectral cube"):
        open_scene(p)


def test_netcdf_without_a_cube(tmp_path):
    p = tmp_path / "flat.nc"
    xr.Dataset({"gt": (("y", "x"), np.zeros((3, 4)))}).to_netcdf(p, engine="h5netcdf")
    with pytest.raises(SceneError, match=r"no 3-D variable.*'gt'"):
        open_scene(p)


def test_corrupt_zarr(tmp_path):
    p = tmp_path / "bad.zarr"
    p.mkdir()
    (p / "zarr.json").write_text("{not json")
    with pytest.raises(SceneError, match="not a readable zarr store"):
        open_scene(p)


@pytest.mark.parametrize("suffix", [".h5", ".nc"])
def test_damaged_hdf5_and_netcdf_metadata_is_a_scene_error(tmp_path, suffix):
    """h5py raises RuntimeError / KeyError for damaged metadata: a traceback and exit 1, not one error line."""
    p = tmp_path / f"s{suffix}"
    xr.Dataset({"r": (("band", "y", "x"), np.ones((3, 8, 8), np.float32))}).to_netcdf(p, engine="h5netcdf")
    with open(p, "r+b") as f:
        f.seek(400)
        f.write(b"\xff" * 256)
    with pytest.raises(SceneError, match=r"(not a readable HDF5 file|could not be opened as NetCDF) \(\w+Error: "
                                         r".*undamaged\?"):
        open_scene(p)


def test_a_mat_path_that_is_not_a_file_is_scene_not_found(tmp_path):
    from hsi_engine import SceneNotFoundError

    (tmp_path / "d.mat").mkdir()
    with pytest.raises(SceneNotFoundError, match=r"not found$") as e:
        open_scene(tmp_path / "d.mat")
    assert isinstance(e.value, FileNotFoundError)


def test_ambiguous_bare_array_warns_and_band_axis_decides(tmp_path):
    p = tmp_path / "amb.h5"
    import h5py

    with h5py.File(p, "w") as f:
        f.create_dataset("cube", data=np.zeros((6, 30, 20), np.float32))
    with pytest.warns(UserWarning, match="band_axis"):
        assert open_scene(p).sizes["band"] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_scene(p, band_axis=2).sizes["band"] == 20


def test_a_dask_scene_of_unknown_chunk_sizes_is_one_clear_error():
    """Boolean indexing leaves dask chunk sizes NaN: classify raised numpy's 'cannot convert float NaN to integer'
    or xarray's TypeError, not an HSIEngineError naming the fix."""
    import dask.array as dsa

    a = dsa.zeros((4, 20, 20), chunks=(4, 10, 20))[:, dsa.from_array(np.arange(20) != 3, chunks=10), :]
    for obj in (a, xr.DataArray(a, dims=("band", "y", "x")), xr.Dataset({"r": (("band", "y", "x"), a)})):
        with pytest.raises(SceneError, match=r"chunk sizes are unknown .* \.compute_chunk_sizes\(\)"):
            as_scene(obj)
    assert as_scene(a.compute_chunk_sizes()).shape == (4, 19, 20)


def test_as_scene_leaves_a_lazily_opened_file_unread(tmp_path):
    """The chunk check read .data, which loads a lazily opened (unchunked) variable whole: a NetCDF larger than
    memory ran out of it before any tile."""
    xr.Dataset({"r": (("band", "y", "x"), np.zeros((4, 30, 30), np.float32))}).to_netcdf(tmp_path / "s.nc")
    with xr.open_dataset(tmp_path / "s.nc") as ds:
        for obj in (ds, ds["r"]):
            as_scene(obj)
            assert not ds["r"].variable._in_memory


def test_a_multi_date_file_says_how_to_classify_one_date(tmp_path):
    """A (time, band, y, x) file was refused with no way forward named, on the command line too."""
    cube = np.zeros((3, 4, 5, 6), np.float32)
    xr.Dataset({"refl": (("time", "band", "y", "x"), cube)}).to_netcdf(tmp_path / "stack.nc")
    with pytest.raises(SceneError, match=r"'refl' is a stack of 3 along 'time'; classify one time at a time, in "
                                         r"Python hsi_engine.classify\(xr.open_dataset\(path\)\['refl'\]"
                                         r"\.isel\(time=0\), model\)"):
        open_scene(tmp_path / "stack.nc")


def test_chunks_that_cannot_chunk_the_scene_are_an_option_error(make_scene):
    """A bad chunks= was xarray's ValueError, or for HDF5 a 'not a readable HDF5 file' blaming the file."""
    from hsi_engine.demo import SHIPPED_SCENE
    from hsi_engine.errors import OptionError

    for path, chunks, match in ((make_scene("geotiff"), {"foo": 3}, r"chunks=.* cannot chunk a .* scene"),
                                (SHIPPED_SCENE, {"y": -5}, r"chunks=.* each chunk size must be a whole number >= 1")):
        with pytest.raises(OptionError, match=match):
            open_scene(path, chunks=chunks)


def test_as_scene_variants():
    cube = make_cube(bands=3, height=5, width=6)
    da = as_scene(cube)
    assert da.dims == ("band", "y", "x") and da.shape == (3, 5, 6)
    np.testing.assert_array_equal(as_scene(np.moveaxis(cube, 0, -1), band_axis=2).values, cube)
    import torch

    np.testing.assert_array_equal(as_scene(torch.from_numpy(cube)).values, cube)
    bl = xr.DataArray(np.moveaxis(cube, 0, -1), dims=("rows", "cols", "bands"))
    assert as_scene(bl).dims == ("band", "y", "x")
    lazy = xr.DataArray(dsa.from_array(np.moveaxis(cube, 0, -1), chunks=2), dims=("y", "x", "band"))
    out = as_scene(lazy)
    assert _is_lazy(out) and out.dims == ("band", "y", "x")
    with pytest.raises(MissingSpatialDimsError, match=r"\('time', 'a', 'b'\).*rename"):
        as_scene(xr.DataArray(cube, dims=("time", "a", "b")))
    with pytest.raises(SceneError, match="3-D"):
        as_scene(cube[0])


def test_as_scene_keeps_crs(scene_cube):
    out = as_scene(scene_cube.transpose("y", "x", "band"))
    assert out.rio.crs.to_string() == CRS
    assert tuple(out.rio.transform())[:6] == pytest.approx(TRANSFORM)


def test_scene_info(make_scene):
    text = scene_info(make_scene("geotiff"))
    for expect in ("band=12 y=40 x=56", "float32", "EPSG:32633", "420.0..2400.0 nm", "chunks", "on disk",
                   "366015.0", f"nodata     {NODATA}"):
        assert expect in text


def test_scene_info_reports_the_wavelengths_and_nodata_classify_uses(tmp_path):
    """info read only a 'wavelength' coordinate and _FillValue: a band coordinate of wavelengths (which classify
    checks) printed 'wavelength unknown', and an int16 scene's nodata attribute (which classify masks) 'none'."""
    from hsi_engine.scene_checks import declared_nodata, scene_wavelengths

    data = np.random.default_rng(0).integers(1, 1000, (5, 8, 8)).astype(np.int16)
    by_band = xr.DataArray(data, dims=("band", "y", "x"), name="cube",
                           coords={"band": ("band", np.linspace(450.5, 850.5, 5), {"units": "nm"})})
    by_band.to_netcdf(tmp_path / "band.nc")
    assert scene_wavelengths(open_scene(tmp_path / "band.nc")) is not None
    assert "wavelength 450.5..850.5 nm (5 bands)" in scene_info(tmp_path / "band.nc")
    xr.DataArray(data, dims=("band", "y", "x"), name="cube", attrs={"nodata": -1}).to_netcdf(tmp_path / "nd.nc")
    assert declared_nodata(open_scene(tmp_path / "nd.nc")) == -1
    assert "nodata     -1\n" in scene_info(tmp_path / "nd.nc")
    xr.DataArray(data, dims=("band", "y", "x"), name="cube").to_netcdf(tmp_path / "none.nc")
    text = scene_info(tmp_path / "none.nc")
    assert "nodata     none" in text and "wavelength unknown" in text


def test_cli_info(make_scene, capsys):
    from hsi_engine.cli import main

    assert main(["info", str(make_scene("zarr"))]) == 0
    assert "EPSG:32633" in capsys.readouterr().out
    assert main(["info", "https://example.com/x.tif"]) == 2  # was "scene https:/example.com/x.tif does not exist"
    assert "https://example.com/x.tif is a URL" in capsys.readouterr().err


def test_cli_info_into_a_closed_pipe_ends_quietly(make_scene):
    """`hsi-engine info scene | head -2` printed a BrokenPipeError traceback: the reader leaving is not an error;
    exit 141, as a shell reports SIGPIPE, and nothing on stderr."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from hsi_engine.cli import run; run()", "info",
                             str(make_scene("zarr"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# --------------------------------------------------------------------------------------------------
# the real data (skipped without shared/data)

def test_real_enmap_geotiff_tile(data_dir):
    p = data_dir / "enmap_potsdam" / "images" / "enmap_potsdam_tile_128_0.tif"
    da = open_scene(p)
    assert da.shape == (224, 32, 32) and _is_lazy(da) and da.dtype == np.float32
    assert da.rio.crs.to_epsg() == 32633
    assert tuple(da.rio.transform())[:6] == pytest.approx((30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0))
    assert da.rio.nodata == -32768
    wl = da["wavelength"].values
    assert wl[0] == pytest.approx(418.24) and wl[-1] == pytest.approx(2445.53)
    assert np.flatnonzero(da["bbl"].values == 0).tolist() == list(range(129, 135))  # bands 130-135 (MANIFEST)


def test_real_berlin_envi(data_dir):
    da = open_scene(data_dir / "berlin_urban_gradient" / "EnMAP_BerlinUrbanGradient.hdr")
    assert da.shape == (177, 80, 60) and da.dtype == np.int16 and _is_lazy(da)
    assert da.rio.crs.to_epsg() == 32633
    assert tuple(da.rio.transform())[:6] == pytest.approx((30.0, 0.0, 383472.37, 0.0, -30.0, 5818302.35))
    assert da["wavelength"].values[0] == pytest.approx(460.0) and da["wavelength"].values[-1] == pytest.approx(2409.0)
    assert da.rio.nodata == -99
    hymap = open_scene(data_dir / "berlin_urban_gradient" / "HyMap02_Berlin_Urban_Gradient_2009.bsq")
    assert hymap.shape == (111, 100, 67)
    assert hymap["wavelength"].values[0] == pytest.approx(455.4)  # from the band names


def test_real_indian_pines_npy_mat_and_shipped(data_dir):
    from hsi_engine.io import open_scene as o

    npy = o(data_dir / "Indian_pines_corrected.npy")
    mat = o(data_dir / "Indian_pines_corrected.mat")
    assert npy.shape == mat.shape == (200, 145, 145)
    assert _is_lazy(npy) and _is_lazy(mat)
    a = npy[:, 70:75, 10:14].values
    np.testing.assert_array_equal(a, mat[:, 70:75, 10:14].values)


def test_shipped_indian_pines_h5():
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "hsi_engine" / "data" / "indian_pines" / "indian_pines.h5"
    assert p.is_file(), f"the shipped scene {p} is missing: it ships with the package"
    da = open_scene(p)
    assert da.shape == (200, 145, 145) and da.dtype == np.uint16 and _is_lazy(da)
    assert da["wavelength"].values[0] == pytest.approx(400.02)


def test_striped_geotiff_chunks_stay_bounded(tmp_path, geo):
    # an untiled (striped) GeoTIFF has whole-width blocks; chunks must not grow with the scene width
    cube = make_cube(bands=2, height=20, width=1300)
    p = geo.write_geotiff(tmp_path / "strips.tif", cube, block=None)
    with rasterio.open(p) as src:
        assert not src.profile.get("tiled") and src.block_shapes[0][1] == 1300
    da = open_scene(p)
    assert max(da.chunks[2]) <= 512
    np.testing.assert_array_equal(da.values, cube)


@pytest.mark.parametrize("kw", [{"variable": "foo"}, {"band_axis": 2}])
def test_options_a_geotiff_cannot_use_are_refused(tmp_path, geo, kw):
    """--variable / --band-axis on a GeoTIFF were ignored silently: a pipeline's wrong option must be named."""
    p = geo.write_geotiff(tmp_path / "s.tif", make_cube(bands=2, height=4, width=5))
    with pytest.raises(SceneError, match=r"is a GeoTIFF.*cannot apply; leave them out"):
        open_scene(p, **kw)


def test_contiguous_npy_is_chunked(tmp_path):
    p = tmp_path / "big.npy"
    np.save(p, np.zeros((700, 600, 3), np.float32))  # band-last by the (rows, cols, bands) convention
    da = open_scene(p)
    assert da.shape == (3, 700, 600) and da.chunks[0] == (3,) and max(da.chunks[1]) <= 512


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_nodata_is_recorded_not_masked(tmp_path, zarr_format):
    a = np.ones((3, 4, 5), np.int16)
    a[0, 0, 0] = -99
    da = xr.DataArray(a, dims=("band", "y", "x"), name="r")
    da.encoding["_FillValue"] = -99
    p = tmp_path / "nd.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da.to_dataset().to_zarr(p, zarr_format=zarr_format, consolidated=False)
    out = open_scene(p)
    assert out.dtype == np.int16 and out.attrs["_FillValue"] == -99 and out.rio.nodata == -99
    assert int(out[0, 0, 0]) == -99  # values are left as stored; the engine masks them


@pytest.mark.parametrize("units, values, nm", [
    ("nm", [450.0, 2400.0], [450.0, 2400.0]), ("Micrometers", [0.45, 2.4], [450.0, 2400.0]),
    ("cm-1", [22222.2222, 4166.6667], [450.0, 2400.0]), ("cm^-1", [22222.2222, 4166.6667], [450.0, 2400.0]),
    ("wavenumber", [22222.2222, 4166.6667], [450.0, 2400.0]), ("cm", [4.5e-5, 2.4e-4], [450.0, 2400.0]),
    ("centimeters", [4.5e-5, 2.4e-4], [450.0, 2400.0]), ("m", [4.5e-7, 2.4e-6], [450.0, 2400.0]),
    ("mm", [4.5e-4, 2.4e-3], [450.0, 2400.0]), (None, [0.45, 2.4], [450.0, 2400.0]),
    (None, [4.5e-7, 2.4e-6], [450.0, 2400.0])])  # metres without a unit read as "0.00 nm"
def test_wavelength_units_are_read_as_written(units, values, nm):
    """'cm' was read as a wavenumber (cm-1): 4.5e-5 cm became 2.2e11 nm and every band check failed."""
    from hsi_engine.wavelengths import to_nm

    np.testing.assert_allclose(to_nm(values, units), nm, rtol=1e-6)


@pytest.mark.parametrize("save", ["netcdf", "zarr"])
def test_a_geotiff_scene_saved_as_netcdf_or_zarr_reads_back_as_stored(tmp_path, save):
    """GDAL's band scale (EnMAP stores reflectance x 10,000 with scale 0.0001) is not applied and is not kept
    under the CF names: a NetCDF/zarr copy of the opened scene held the counts with ``scale_factor`` beside
    them, which reading it decodes (x 0.0001), so the same pixels gave another map. Its source format is the
    copy's own."""
    from rasterio.transform import from_origin

    cube = np.random.default_rng(3).integers(200, 10000, (5, 6, 7)).astype(np.int16)
    path = tmp_path / "scaled.tif"
    with rasterio.open(path, "w", driver="GTiff", height=6, width=7, count=5, dtype="int16", crs="EPSG:32633",
                       transform=from_origin(366000, 5810000, 30, 30)) as dst:
        dst.write(cube)
        dst.scales = (0.0001,) * 5
        dst.offsets = (0.5,) * 5
    scene = open_scene(path)
    assert not {"scale_factor", "add_offset", "scales", "offsets"} & set(scene.attrs)
    assert scene.encoding["scales"] == (0.0001,) * 5 and scene.encoding["offsets"] == (0.5,) * 5
    copy = tmp_path / f"copy.{'nc' if save == 'netcdf' else 'zarr'}"
    scene.to_netcdf(copy) if save == "netcdf" else scene.to_zarr(copy)
    back = open_scene(copy)
    np.testing.assert_array_equal(back.values, cube)
    assert back.attrs["source_format"] == save and back.rio.crs.to_epsg() == 32633
    # a GeoTIFF copy (a crop) keeps GDAL's band scales, and reads back the same
    scene.isel(x=slice(0, 4)).rio.to_raster(tmp_path / "crop.tif")
    with rasterio.open(tmp_path / "crop.tif") as f:
        assert f.scales == (0.0001,) * 5 and f.offsets == (0.5,) * 5
        assert not {"scale_factor", "scales", "stored_scale_factor"} & set(f.tags())
    crop = open_scene(tmp_path / "crop.tif")
    np.testing.assert_array_equal(crop.values, cube[:, :, :4])
    assert crop.encoding["scales"] == (0.0001,) * 5


def test_cf_projection_coordinates_in_km_are_read_in_metres(tmp_path):
    """CF x/y coordinates in km (units="km", projection_x/y_coordinate) over a metre CRS: the map was placed 1000x
    off (origin 366 m, 0.03 m pixels), silently. They read in the CRS's metres."""
    from pyproj import CRS as PCRS

    y, x = pixel_centres(HEIGHT, WIDTH)
    ds = xr.Dataset({"refl": (("band", "y", "x"), make_cube())}, coords={"y": y / 1000, "x": x / 1000})
    for d in ("x", "y"):
        ds[d].attrs.update(standard_name=f"projection_{d}_coordinate", units="km")
    ds["crs"] = xr.DataArray(0, attrs=PCRS.from_epsg(32633).to_cf())
    ds["refl"].attrs["grid_mapping"] = "crs"
    ds.to_netcdf(tmp_path / "km.nc", engine="h5netcdf")
    da = open_scene(tmp_path / "km.nc")
    assert da.rio.crs.to_epsg() == 32633
    assert tuple(da.rio.transform())[:6] == pytest.approx(TRANSFORM)
    np.testing.assert_allclose(da["x"].values, x)
    assert da["x"].attrs["units"] == "m"


def test_cf_lat_lon_coordinates_without_a_grid_mapping_are_wgs84(tmp_path):
    """Latitude/longitude coordinates and no grid_mapping (GDAL's netCDF driver reads them as WGS 84): the map
    had a degree grid and no CRS, and the warning said 'pixel coordinates'. They read as EPSG:4326."""
    lat = 52.4 - 0.0003 * (np.arange(HEIGHT) + 0.5)
    lon = 13.0 + 0.0003 * (np.arange(WIDTH) + 0.5)
    ds = xr.Dataset({"refl": (("band", "lat", "lon"), make_cube())}, coords={"lat": lat, "lon": lon})
    ds["lat"].attrs.update(standard_name="latitude", units="degrees_north")
    ds["lon"].attrs.update(units="degrees_east")  # units alone say it too
    ds.to_netcdf(tmp_path / "ll.nc", engine="h5netcdf")
    da = open_scene(tmp_path / "ll.nc")
    assert da.rio.crs.to_epsg() == 4326
    assert tuple(da.rio.transform())[:6] == pytest.approx((0.0003, 0, 13.0, 0, -0.0003, 52.4))
    # without those attributes the coordinates say nothing of a CRS: none is invented
    for d in ("lat", "lon"):
        ds[d].attrs.clear()
    ds.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    assert open_scene(tmp_path / "plain.nc").rio.crs is None


def test_another_band_dim_name_keeps_the_wavelengths_and_takes_no_band_numbers_for_them():
    """A band dim named 'channel' or 'bands' (accepted names) with band numbers 1..B: the numbers were taken for
    wavelengths in nm, replacing the scene's real ones, and the model refused the scene ('band 199 is 200.00 nm
    in the scene'). Band numbers stay band numbers; a real wavelength coordinate stays; a 'wavelength' dim and
    float values with units are still wavelengths."""
    cube = make_cube()
    da = xr.DataArray(cube, dims=("band", "y", "x"),
                      coords={"band": np.arange(1, BANDS + 1), "wavelength": ("band", WAVELENGTHS_NM)})
    kept = as_scene(da.rename(band="channel"))
    np.testing.assert_allclose(kept["wavelength"].values, WAVELENGTHS_NM)
    bare = as_scene(xr.DataArray(cube, dims=("bands", "rows", "cols"), coords={"bands": np.arange(1, BANDS + 1)}))
    assert "wavelength" not in bare.coords and bare.dims == ("band", "y", "x")
    by_name = as_scene(xr.DataArray(cube, dims=("wavelength", "y", "x"), coords={"wavelength": WAVELENGTHS_NM}))
    np.testing.assert_allclose(by_name["wavelength"].values, WAVELENGTHS_NM)
    microns = xr.DataArray(cube, dims=("bands", "y", "x"), coords={"bands": WAVELENGTHS_NM / 1000})
    microns["bands"].attrs["units"] = "micrometers"
    np.testing.assert_allclose(as_scene(microns)["wavelength"].values, WAVELENGTHS_NM)
    with pytest.raises(MissingSpatialDimsError, match="A 2-D image is one band"):
        as_scene(da.isel(band=0))


def _proj_dataset(cube: np.ndarray) -> xr.Dataset:
    """A CF Dataset on the fixture grid: cube (wavelength, y, x), a 'crs' grid mapping."""
    from pyproj import CRS as PCRS

    y, x = pixel_centres(HEIGHT, WIDTH)
    ds = xr.Dataset({"reflectance": (("wavelength", "y", "x"), cube, {"grid_mapping": "crs"})},
                    coords={"y": y, "x": x, "wavelength": WAVELENGTHS_NM})
    ds["crs"] = xr.DataArray(0, attrs=PCRS.from_epsg(32633).to_cf())
    return ds


def test_a_time_dim_of_one_scene_is_dropped_and_the_cube_picked_by_it(tmp_path):
    """reflectance(time=1, wavelength, lat, lon) beside quality_flags(time, lat, lon): the flags, the only 3-D
    variable, were picked (an error sending the user to rename 'time' into a band axis), and beside a 3-D
    uncertainty cube that one was classified, silently. Length-1 dims that are not an axis are dropped."""
    cube = make_cube()
    ds = _proj_dataset(cube)
    ds = ds.assign(reflectance=ds["reflectance"].expand_dims(time=[0]),
                   quality_flags=(("time", "y", "x"), np.zeros((1, HEIGHT, WIDTH), np.uint8)))
    ds.to_netcdf(tmp_path / "t1.nc", engine="h5netcdf")
    for scene in (open_scene(tmp_path / "t1.nc"), as_scene(xr.open_dataset(tmp_path / "t1.nc"))):
        assert scene.dims == ("band", "y", "x") and "time" not in scene.coords
        np.testing.assert_array_equal(scene.values, cube)
    ds["uncertainty"] = (("wavelength", "y", "x"), cube * 0 + 1)
    ds.to_netcdf(tmp_path / "t2.nc", engine="h5netcdf")
    np.testing.assert_array_equal(open_scene(tmp_path / "t2.nc").values, cube)  # 'reflectance' by name
    with pytest.raises(MissingSpatialDimsError, match=r"variable 'quality_flags' has dims"):
        open_scene(tmp_path / "t2.nc", variable="quality_flags")


@pytest.mark.parametrize("name, units, scale", [("wavelengths", "um", 1e-3), ("wl", "nm", 1.0),
                                                ("center_wavelength", None, 1.0), ("wavelength_um", None, 1e-3)])
def test_wavelengths_under_another_tool_s_name_are_read(tmp_path, name, units, scale):
    """EMIT's 'wavelengths', 'wl', 'center_wavelength' band coordinates were ignored: the model's band check was
    skipped, and a reordered band axis classified silently. They read as the wavelength coordinate, in nm."""
    cube = make_cube()
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={name: ("band", WAVELENGTHS_NM * scale)})
    if units:
        da[name].attrs["units"] = units
    np.testing.assert_allclose(as_scene(da)["wavelength"].values, WAVELENGTHS_NM)
    ds = _proj_dataset(cube).drop_vars("wavelength")
    ds[name] = ("wavelength", WAVELENGTHS_NM * scale, {"units": units} if units else {})
    ds = ds.set_coords(name) if name != "wl" else ds  # a coordinate, or a data variable of the file
    ds.to_netcdf(tmp_path / "w.nc", engine="h5netcdf")
    np.testing.assert_allclose(open_scene(tmp_path / "w.nc")["wavelength"].values, WAVELENGTHS_NM)


def test_a_dataset_from_open_dataset_keeps_its_crs_and_wavelengths_as_the_path_does(tmp_path):
    """xr.open_dataset leaves the grid mapping and a wavelength variable as data variables: classify(ds) had no
    CRS and skipped the band check where classify(path) had both."""
    ds = _proj_dataset(make_cube())
    ds = ds.drop_vars("wavelength").assign(wavelength=("wavelength", WAVELENGTHS_NM))
    ds.to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    opened = xr.open_dataset(tmp_path / "d.nc", decode_coords=False)
    assert "crs" in opened.data_vars
    scene = as_scene(opened)
    assert scene.rio.crs.to_epsg() == 32633
    np.testing.assert_allclose(scene["wavelength"].values, WAVELENGTHS_NM)
    lat = 52.4 - 0.0003 * (np.arange(HEIGHT) + 0.5)
    ll = xr.DataArray(make_cube(), dims=("band", "lat", "lon"),
                      coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                              "lon": ("lon", 13 + 0.0003 * np.arange(WIDTH), {"units": "degrees_east"})})
    assert as_scene(ll).rio.crs.to_epsg() == 4326  # in memory as from a file: CF lat/lon are WGS 84


@pytest.mark.parametrize("store", ["nc", "zarr"])
def test_cf_unsigned_and_missing_value_are_decoded(tmp_path, store):
    """int16 counts with _Unsigned="true" read as negative (40000 -> -25536), and a missing_value beside
    _FillValue was classified: both are decoded as xarray decodes them."""
    cube = make_cube().astype(np.uint16)
    cube[0, 0, 0] = 40000
    cube[:, 1, 1] = 9999
    stored = cube.view(np.int16)
    ds = _proj_dataset(stored)
    ds["reflectance"].attrs.update(_Unsigned="true", _FillValue=np.int16(-1), missing_value=np.int16(9999))
    path = tmp_path / f"u.{store}"
    ds.to_netcdf(path, engine="h5netcdf") if store == "nc" else ds.to_zarr(path, mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's note on two fill values
        da = open_scene(path)
        values = da.values
    assert values[0, 0, 0] == 40000 and np.isnan(values[:, 1, 1]).all()
    assert np.isnan(da.attrs["_FillValue"])


def test_cf_extended_grid_mapping_is_read(tmp_path):
    """CF 1.7's grid_mapping = "crs: x y" (GDAL reads it) gave no CRS, and a map without georeferencing."""
    ds = _proj_dataset(make_cube())
    ds["reflectance"].attrs["grid_mapping"] = "crs: x y"
    ds.to_netcdf(tmp_path / "g.nc", engine="h5netcdf")
    assert open_scene(tmp_path / "g.nc").rio.crs.to_epsg() == 32633


def test_an_envi_header_is_parsed_in_linear_time(make_scene):
    """A trailing line of N blanks took O(N^3) in the header regex (2 s at 1,000, minutes at 5,000), and lines of
    ``a = {`` without a closing brace grew quadratically (192 KB: 81 s): the header is now read line by line."""
    import time

    cube = make_cube(dtype=np.int16)
    path = make_scene("envi", cube=cube)
    hdr = path.with_suffix(".hdr")
    text = hdr.read_text()
    hdr.write_text(text + " " * 100_000 + "\n" + "a = {\n" * 5_000 + "\t" * 100_000 + "x" + " " * 100_000 + "\n")
    start = time.perf_counter()
    da = open_scene(path)
    assert time.perf_counter() - start < 5
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)
    hdr.write_text(text + "a = {\n" * 800_000)  # 4.8 MB: not a header
    start = time.perf_counter()
    with pytest.raises(SceneError, match=r"hdr is 4,8\d\d,\d\d\d bytes; expected a text header of at most "
                                         r"4,194,304 bytes .*Pass the scene's own .hdr"):
        open_scene(path)
    assert time.perf_counter() - start < 5


def test_envi_header_values_are_read_as_gdal_reads_them(tmp_path):
    """The line-by-line parser keeps what the regex read (keys in any case, braced values over several lines,
    ';' comments, a '{' on the line after 'key ='), and reads GDAL's 'data_type' spelling as 'data type'."""
    from hsi_engine.envi import parse_envi_header

    hdr = tmp_path / "h.hdr"
    hdr.write_text("ENVI\ndescription = {\n  made by = hand,\n  two lines}\n; comment = 1\nSamples   = 24 \n"
                   "Data_Type = 2\nwavelength =\n\n{ 0.4,\n 0.5 }\nbbl = {1, 1} trailing\nopen = {\n"
                   "next = 3\n\n  spaced key\t=\tv \n")
    assert parse_envi_header(hdr) == {
        "description": "{\n  made by = hand,\n  two lines}", "; comment": "1", "samples": "24", "data type": "2",
        "wavelength": "{ 0.4,\n 0.5 }", "bbl": "{1, 1}", "open": "{", "next": "3", "spaced key": "v"}


@pytest.mark.parametrize("edit, message", [
    (("data type = 2\n", ""), r"has no 'data type' key; expected 'data type = N' with N one of 1 \(uint8\), "
                              r"2 \(int16\).*the binary's size gives 2 bytes a value: 2 \(int16\) or 12 \(uint16\)"),
    (("data type = 2", "data type = 7"), r"'data type = 7' is not an ENVI data type GDAL reads; expected one of "
                                         r"1 \(uint8\).*15 \(uint64\): fix that line"),
    (("interleave = bip", "interleave = bpi"), r"'interleave = bpi' is not an ENVI interleave; expected bsq, bil "
                                               r"or bip .*GDAL would read it as bsq: fix that line"),
    (("interleave = bip\n", ""), r"has no 'interleave' key; expected 'interleave = bsq', 'bil' or 'bip'"),
    (("bands   = 12", "bands = twelve"), r"'bands = twelve' is not a positive integer"),
    (("samples = 56\n", ""), r"has no 'samples' key; expected 'samples = N' \(N the scene's count of columns"),
])
def test_an_envi_header_without_its_data_type_or_interleave_is_refused(make_scene, edit, message):
    """GDAL reads a header without 'data type' as bytes and an unknown 'interleave' (a typo) as bsq: the int16
    BIP cube was classified as garbage, exit 0. The keys the layout needs are required, as ENVI's format says."""
    cube = make_cube(dtype=np.int16)
    path = make_scene("envi", cube=cube, interleave="bip")
    hdr = path.with_suffix(".hdr")
    text = hdr.read_text()
    assert edit[0] in text
    hdr.write_text(text.replace(*edit))
    with pytest.raises(SceneError, match=rf"ENVI header .*{hdr.name}.*{message}"):
        open_scene(path)


def test_envi_layout_keys_are_read_in_any_case_and_spelling(make_scene):
    cube = make_cube(dtype=np.int16)
    path = make_scene("envi", cube=cube, interleave="bip")
    hdr = path.with_suffix(".hdr")
    hdr.write_text(hdr.read_text().replace("interleave = bip", "INTERLEAVE = BIP").replace("data type", "data_type"))
    da = open_scene(path)
    np.testing.assert_array_equal(da.values, cube)
    assert da.attrs["envi_interleave"] == "bip"


@pytest.mark.parametrize("attrs, problem", [
    ({"wavelength": ["a"] * 40}, r"its 'wavelength' attribute is \['a', 'a'.*\.\.\., not a list of numbers"),
    ({"wavelength": {"a": 1}}, r"its 'wavelength' attribute is \{'a': 1\}, not a list of numbers"),
    ({"wavelength": [[400.0, 500.0]] * 6}, r"its 'wavelength' attribute is \[\[400.0, 500.0\].*not a list of numbers"),
    ({"wavelength": 500.0}, r"its 'wavelength' attribute is 500.0, not a list of numbers"),
    ({"wavelength_units": ["nm"]}, r"its 'wavelength_units' attribute is \['nm'\], not a unit name such as 'nm'.*"),
])
def test_unreadable_zarr_wavelength_attributes_warn_and_are_left_out(make_scene, attrs, problem):
    """A bare zarr array's 'wavelength' of strings or a dict, or a list as its units, crashed info and classify
    with a traceback: it warns, as an unreadable ENVI wavelength list does, and the scene opens without them."""
    import zarr

    cube = make_cube()
    path = make_scene("zarr-bare", cube=cube)
    zarr.open_array(str(path), mode="r+").attrs.update(attrs)
    with pytest.warns(UserWarning, match=rf"{path.name}: {problem}, so the scene's wavelengths are unknown and are "
                                         "not checked against the model's; fix the attributes"):
        da = open_scene(path)
    assert "wavelength" not in da.coords
    np.testing.assert_array_equal(da.values, cube)
    with pytest.warns(UserWarning, match="wavelengths are unknown"):
        assert "wavelength unknown" in scene_info(path)


@pytest.mark.parametrize("doc, problem", [
    ('{"unit": "nm", "wavelengths": ["x", "y"]}', r"its 'wavelengths' entry is \['x', 'y'\], not a list of numbers"),
    ('{"unit": ["nm"], "wavelengths": [400, 500]}', r"its 'unit' entry is \['nm'\], not a unit name such as 'nm'.*"),
    ('"400 nm"', r"its content is '400 nm', not a list of numbers"),
    ("[400, 500", r"cannot be read as JSON \(JSONDecodeError"),
])
def test_unreadable_sidecar_wavelengths_warn_and_are_left_out(make_scene, doc, problem):
    cube = make_cube()
    path = make_scene("npy", cube=cube, band_last=True)
    side = path.with_name(path.stem + "_wavelengths.json")
    side.write_text(doc)
    with pytest.warns(UserWarning, match=rf"{side.name}: {problem}.*wavelengths are unknown.*fix the file"):
        da = open_scene(path)
    assert "wavelength" not in da.coords
    np.testing.assert_array_equal(da.values, cube)


@pytest.mark.parametrize("fmt", ["zarr-bare", "zarr"])
def test_a_zarr_chunk_length_of_zero_is_refused(make_scene, fmt):
    """chunk_shape [12, 0, 16] in zarr.json ended in dask's ZeroDivisionError (a traceback, exit 1)."""
    import json

    path = make_scene(fmt)
    meta = path / "zarr.json" if fmt == "zarr-bare" else path / "reflectance" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["chunk_grid"]["configuration"]["chunk_shape"][1] = 0
    meta.write_text(json.dumps(doc))
    with pytest.raises(SceneError, match=r"zarr array .*zarr.* declares chunks \[12, 0, 16\] for its shape "
                                         r"\[12, 40, 56\]; expected a positive chunk length .*: rewrite the store"):
        open_scene(path)


@pytest.mark.parametrize("shape, chunks, match", [
    ((200, 10**7, 10**7), (200, 64, 64), r"in 24,414,062,500 chunks .* more than the 10,000,000"),
    ((200, 40, 40), (200, 4096, 4096), r"6\.2 GiB decoded per chunk\) for a 625\.0 KiB array")])
def test_a_zarr_store_declaring_absurd_chunks_is_refused_before_reading(tmp_path, shape, chunks, match):
    """An 8 KB store declaring 10^7 x 10^7 pixels grew to 7 GB indexing its chunks; a 6 MB store whose one chunk
    decodes to 6.7 GB for a 40 x 40 scene was OOM-killed: both are refused when opened."""
    import zarr

    path = tmp_path / "s.zarr"
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="int16", dimension_names=("band", "y", "x"),
                      fill_value=0)
    with pytest.raises(SceneError, match=match):
        open_scene(path)


def test_an_esri_ehdr_raster_is_not_held_to_envi_s_header_keys(tmp_path):
    """A .bil/.hdr pair from GDAL's EHdr driver (not an ENVI header: no 'ENVI' line, no 'samples') was refused
    with advice to add ENVI keys; GDAL reads it, and so does open_scene."""
    from rasterio.transform import from_origin

    cube = (np.arange(5 * 20 * 30).reshape(5, 20, 30) % 97).astype("int16")
    with rasterio.open(tmp_path / "s.bil", "w", driver="EHdr", width=30, height=20, count=5, dtype="int16",
                       crs=CRS, transform=from_origin(366000, 5810000, 30, 30)) as d:
        d.write(cube)
    da = open_scene(tmp_path / "s.bil")
    np.testing.assert_array_equal(da.values, cube)
    assert da.rio.crs.to_epsg() == 32633


def test_a_path_of_bytes_that_are_not_utf8_is_named_not_a_traceback(tmp_path):
    """A file name unzipped from a Latin-1 archive reached GDAL as a UnicodeEncodeError traceback (exit 1)."""
    import os

    from hsi_engine.errors import OutputError
    from hsi_engine.outputs import check_output_suffix

    bad = tmp_path / os.fsdecode(b"sc\xe8ne.tif")
    bad.write_bytes(b"II*\x00")  # refused before GDAL would read it
    with pytest.raises(SceneError, match=r"holds bytes that are not UTF-8 text .*, which GDAL cannot open"):
        open_scene(bad)
    with pytest.raises(OutputError, match=r"not UTF-8 text .*, which GDAL cannot take"):
        check_output_suffix(tmp_path / os.fsdecode(b"d\xe9") / "m.tif")
    assert check_output_suffix(tmp_path / os.fsdecode(b"d\xe9") / "m.zarr") == ".zarr"


def test_a_non_ascii_path_under_a_locale_that_is_not_utf8_is_refused_before_gdal(tmp_path, monkeypatch):
    """Under a Latin-1 locale 'ö' is b'\\xf6' on disk but GDAL takes the text as UTF-8 (b'\\xc3\\xb6'): a scene
    'did not exist', and a map was computed, then its write failed, leaving garbled hidden temporaries and an
    orphan .aux.xml. Both are refused up front, naming the locale."""
    import os

    from hsi_engine.errors import OutputError
    from hsi_engine.outputs import check_output_suffix

    scene = tmp_path / "szene_ä.tif"
    scene.write_bytes(b"II*\x00")
    monkeypatch.setattr(os, "fsencode", lambda t: os.fspath(t).encode("latin-1", "surrogateescape"))
    with pytest.raises(SceneError, match=r"locale is not UTF-8.*LC_ALL=C.UTF-8"):
        open_scene(scene)
    with pytest.raises(OutputError, match=r"locale is not UTF-8.*LC_ALL=C.UTF-8"):
        check_output_suffix(tmp_path / "karte_ö.tif")
    assert check_output_suffix(tmp_path / "karte.tif") == ".tif"


def test_an_unreadable_zarr_chunk_is_not_called_corrupt(make_scene, monkeypatch):
    """A chunk the user may not read was reported as 'the store is corrupt: re-create it'."""
    import zarr

    from hsi_engine.integrity import read_error

    da = open_scene(make_scene("zarr"))

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zarr.Array, "get_block_selection", denied)
    err = read_error(da, (0, 8, 0, 8), PermissionError(13, "Permission denied"))
    assert isinstance(err, SceneError) and "check the store's permissions" in str(err) and "corrupt" not in str(err)


@pytest.mark.parametrize("error", [ZeroDivisionError, TypeError, MemoryError])
def test_an_error_of_the_callers_own_graph_is_its_own_not_the_stores(make_scene, error):
    """A step of the caller's own dask graph over a healthy file (map_blocks) that raised came back as 'reading
    rows ... of FILE failed ...; the store may be damaged: re-create it', its type lost to a SceneError (a host's
    `except MemoryError` no longer fired). The file's own read failing still names the file."""
    from hsi_engine.integrity import read_error
    from hsi_engine.runner import window_reader

    da = open_scene(make_scene("hdf5"))

    def fail(block):
        raise error("in the caller's step")

    derived = da.copy(data=da.data.map_blocks(fail, dtype=da.dtype))
    with pytest.raises(error, match="in the caller's step"):
        window_reader(derived)(0, 8, 0, 8)
    assert read_error(derived, (0, 8, 0, 8), e := ZeroDivisionError("x")) is e
    err = read_error(da, (0, 8, 0, 8), OSError("Can't read data"))
    assert isinstance(err, SceneError) and "the store may be damaged" in str(err)


def test_a_damaged_file_read_through_a_window_or_a_cast_is_still_named(tmp_path):
    """A corrupt GeoTIFF read as open_scene(p).isel(...) or .astype(...) (not the file's own array) raised
    rasterio's bare 'Read failed' without the file or the fix."""
    import rasterio

    from hsi_engine.runner import window_reader

    p = tmp_path / "s.tif"
    cube = (np.random.default_rng(0).random((200, 64, 64)) * 4000).astype("uint16")
    with rasterio.open(p, "w", driver="GTiff", width=64, height=64, count=200, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate", interleave="pixel") as f:
        f.write(cube)
    raw = bytearray(p.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 2000):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    scene = open_scene(p)
    for derived, named in ((scene.isel(y=slice(0, 48)), str(p)), (scene.astype("float32"), "a file")):
        with pytest.raises(SceneError, match=rf"of a scene computed from {re.escape(named)} failed .*may be "
                                             r"damaged or unreadable"):
            window_reader(derived)(0, derived.sizes["y"], 0, 64)


def test_a_scene_opened_by_a_relative_path_is_read_and_identified_after_a_chdir(tmp_path, monkeypatch):
    """The HDF5 reader kept the relative path, so reading after os.chdir raised a raw FileNotFoundError, and the
    recorded source of every format was relative, so a resumed run elsewhere no longer found the scene's file."""
    import h5py

    cube = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("cube", data=cube).attrs["dims"] = "band,y,x"
    xr.DataArray(cube, dims=("band", "y", "x")).to_dataset(name="r").to_zarr(tmp_path / "s.zarr")
    monkeypatch.chdir(tmp_path)
    scenes = {name: open_scene(name) for name in ("s.h5", "s.zarr")}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for name, da in scenes.items():
        np.testing.assert_array_equal(da.values, cube)
        assert da.encoding["source"] == str(tmp_path / name) == file_of(da)


def test_a_cube_in_a_zarr_subgroup_opens_by_group_and_name(tmp_path):
    """Crops written as to_zarr(store, group='c_0_0'): --variable c_0_0/cube said 'no 3-D array ...; arrays: []'
    and the store alone 'pass --variable NAME'. The group's path works as in NetCDF4, and the errors name the groups."""
    rng = np.random.default_rng(0)
    for i in range(2):
        da = xr.DataArray(rng.random((5, 4, 6), np.float32) + i, dims=("band", "y", "x"))
        da.to_dataset(name="cube").to_zarr(tmp_path / "t.zarr", group=f"c_{i}", mode="w")
    opened = open_scene(tmp_path / "t.zarr", variable="c_1/cube")
    np.testing.assert_array_equal(opened.values, open_scene(tmp_path / "t.zarr" / "c_1").values)
    assert opened.values.min() >= 1
    for variable, said in [(None, "its groups ['c_0', 'c_1'] hold arrays: pass variable='c_0/NAME'"),
                           ("nope/cube", "has no group 'nope' (from variable='nope/cube'); groups: ['c_0', 'c_1']")]:
        with pytest.raises(SceneError, match=re.escape(said)):
            open_scene(tmp_path / "t.zarr", variable=variable)


def test_a_missing_vrt_is_missing_and_a_bare_suffix_is_no_output_name(tmp_path):
    """A typo'd nothere.vrt was told to be converted with gdal_translate; `--out .tif` read 'suffix (none)'."""
    from hsi_engine.errors import OutputError, SceneNotFoundError
    from hsi_engine.outputs import check_output_suffix

    with pytest.raises(SceneNotFoundError, match="does not exist"):
        open_scene(tmp_path / "nothere.vrt")
    (tmp_path / "there.vrt").write_text("<VRTDataset/>")
    with pytest.raises(SceneError, match="gdal_translate"):
        open_scene(tmp_path / "there.vrt")
    with pytest.raises(OutputError, match=re.escape("the name '.tif' is a suffix alone; give the map a name (e.g. "
                                                    "map.tif)")):
        check_output_suffix(tmp_path / ".tif")


def test_a_decompression_failure_also_names_memory(tmp_path):
    """Under `ulimit -v` HDF5's filter fails as on a damaged file: the error said only 're-create it'."""
    import h5py

    from hsi_engine.integrity import read_error

    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["cube"] = np.ones((3, 4, 5), np.float32)
    da = open_scene(tmp_path / "s.h5", variable="cube", band_axis=0)
    said = str(read_error(da, (0, 4, 0, 5), OSError("Can't synchronously read data (filter returned failure "
                                                    "during read)")))
    assert "may be damaged or unreadable" in said and "ran short of memory (a limit such as ulimit -v" in said
    assert "short of memory" not in str(read_error(da, (0, 4, 0, 5), OSError("truncated file")))
