"""The scale and pixel-size checks against what a scene's file declares: bad bands (``bbl``) filled with nodata in
every pixel, GDAL band scales/offsets that pack the data (GeoTIFF, ENVI ``data gain values``), and a scene placed
by ground control points. Each on a small real file (ENVI written with numpy and a header, GeoTIFFs with rasterio)
cut from the shipped Indian Pines scene, against the shipped model; each test failed on the code before its fix."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import from_origin

import hsi_engine
from _refusals import cli as _cli
from _refusals import refused as _refused
from hsi_engine import UnnormalisedInputWarning
from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE
from hsi_engine.scene_checks import check_scale, warn_other_pixel_size

BAD = [0, 1, 2, 103, 104, 199]  # flagged bad (bbl 0) and filled with nodata in every pixel, as EnMAP's 130-135


@pytest.fixture(scope="module")
def model():
    return hsi_engine.load_model(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def ip():
    """The shipped scene's first 100 x 100 pixels (uint16 counts, as the model was trained on) and wavelengths."""
    scene = hsi_engine.open_scene(SHIPPED_SCENE)
    cube = np.asarray(scene.isel(y=slice(0, 100), x=slice(0, 100)).values)
    return cube, np.asarray(scene["wavelength"].values, np.float64)


def _envi(path, cube: np.ndarray, wavelengths: np.ndarray, lines: list[str]):
    """``cube`` as a little-endian BSQ at ``path`` with a handwritten ENVI header (``lines`` appended)."""
    code = {np.dtype(np.int16): 2, np.dtype(np.float32): 4}[cube.dtype]
    cube.astype(cube.dtype.newbyteorder("<")).tofile(path)
    b, h, w = cube.shape
    header = ["ENVI", f"samples = {w}", f"lines = {h}", f"bands = {b}", "header offset = 0", f"data type = {code}",
              "interleave = bsq", "byte order = 0", "wavelength units = Nanometers",
              "wavelength = {" + ", ".join(f"{v:.2f}" for v in wavelengths) + "}", *lines]
    path.with_suffix(".hdr").write_text("\n".join(header) + "\n")
    return path


def _geotiff(path, cube: np.ndarray, wavelengths: np.ndarray, *, nodata=None, scale=None, offset=None, bbl=None):
    with rasterio.open(path, "w", driver="GTiff", width=cube.shape[2], height=cube.shape[1], count=cube.shape[0],
                       dtype=cube.dtype, nodata=nodata, crs="EPSG:32616",
                       transform=from_origin(5e5, 4.5e6, 30, 30)) as dst:
        dst.write(cube)
        if scale is not None:
            dst.scales = [scale] * cube.shape[0]
        if offset is not None:
            dst.offsets = [offset] * cube.shape[0]
        for i, wl in enumerate(wavelengths):
            tags = {"wavelength": f"{wl:.2f}", "wavelength_units": "Nanometers"}
            if bbl is not None:
                tags["bbl"] = str(int(bbl[i]))
            dst.update_tags(i + 1, **tags)
    return path


# --------------------------------------------------------------------------------------------------
# F1: bad bands holding nodata in every pixel switched the scale check off


@pytest.mark.parametrize("fmt", ["envi-40", "gtiff-100"])
def test_bad_bands_all_nodata_leave_the_scale_check_on(tmp_path, ip, model, fmt):
    """Reflectance 0-1 (a model trained on counts) whose bbl bands hold -9999 in every pixel: every sampled pixel
    held nodata in some band the sample read, so 'the scale was not checked' (false: every pixel has data in every
    good band) and a one-class map was written, exit 0. The sample leaves out the bands the nodata mask leaves
    out, and the factor is named, as without those bands."""
    cube, wl = ip
    side = 40 if fmt == "envi-40" else 100
    refl = (cube[:, 50:50 + side, 50:50 + side] / 10000.0).astype(np.float32) if side == 40 else \
        (cube / 10000.0).astype(np.float32)
    refl[BAD] = -9999
    bbl = np.ones(refl.shape[0], np.uint8)
    bbl[BAD] = 0
    if fmt == "envi-40":
        path = _envi(tmp_path / "refl.bsq", refl, wl, ["data ignore value = -9999",
                                                       "bbl = {" + ", ".join(map(str, bbl)) + "}"])
        path = path.with_suffix(".hdr")
    else:
        path = _geotiff(tmp_path / "refl.tif", refl, wl, nodata=-9999, bbl=bbl)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the scene's bbl flags bands", category=UserWarning)
        msg = _refused(path, model, r"about [0-9,]+x smaller than those the model was trained on, .*\(e\.g\. "
                                    r"scene \* 10000\)")
    assert "not checked" not in msg
    rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "map.tif")])
    assert rc == 2 and "x smaller" in err and not (tmp_path / "map.tif").exists()


def test_a_scale_check_left_no_band_to_read_says_nothing(ip):
    """Every band left out (the scene's bbl and the model's bad bands together): nothing to sample, no error."""
    cube, wl = ip
    da = xr.DataArray(cube[:, :40, :40].astype(np.float32), dims=("band", "y", "x"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_scale(da, np.full(cube.shape[0], np.nan), np.ones(cube.shape[0]), None)


# --------------------------------------------------------------------------------------------------
# F4: a GDAL band scale/offset that packs the data, opened by path


@pytest.mark.parametrize("how", ["scale", "offset"])
def test_a_gdal_scale_or_offset_that_packs_the_data_is_named_by_path(tmp_path, ip, model, how):
    """A GeoTIFF storing 2x the data with scale 0.5, or the data - 5000 with offset 5000, opened by its path (values
    read as stored, as documented) got only the generic 'about 2.1x larger' / '22 standard deviations' (a
    warning line, exit 0; 825 of 1,600 pixels wrong), while rioxarray's read of it got the packing named with a fix
    that led back to the path. Named now, with a decoding that gives the unpacked values (its nodata NaN)."""
    cube, wl = ip
    crop = cube[:, 50:74, 50:74].astype(np.float64)  # (24 x 24: sampled whole)
    if how == "scale":
        stored, kw, expr = crop * 2, {"scale": 0.5}, "scene * 0.5"
    else:
        stored, kw = crop - 5000, {"offset": 5000.0, "nodata": -9999}
        expr = "(scene.where(scene != -9999.0) + 5000.0).assign_attrs(scene.attrs)"
        stored[:, 3, 4] = -9999
    path = _geotiff(tmp_path / "packed.tif", stored.astype(np.int16), wl, **kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the scene declares band scale 1, offset 5000 .GDAL metadata.",
                                category=UserWarning)  # (the model records no scales: told of the offset alone)
        msg = _refused(path, model, r"the scene declares band scale .* GDAL metadata that hsi-engine does not apply "
                                    r"\(GeoTIFF and ENVI values are read as stored\), and its stored int16 values "
                                    r"lie [0-9]+ standard deviations off .* against [01]\.[0-9] for the decoded values")
    assert f"hsi_engine.classify({expr}, model)" in msg
    assert f"gdal_translate -unscale -ot Float32 {path} decoded.tif" in msg
    scene = hsi_engine.open_scene(path)
    decoded = eval(expr, {"scene": scene})  # the fix, as the message gives it
    values = decoded.values
    if how == "offset":
        assert np.isnan(values[:, 3, 4]).all()
        values[:, 3, 4] = crop[:, 3, 4]
    np.testing.assert_array_equal(values, crop)
    assert decoded.rio.crs == scene.rio.crs and "wavelength" in decoded.coords
    assert decoded.rio.nodata == (-9999 if how == "offset" else None)  # (xarray < 2025.11 drops attrs in arithmetic)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        got = hsi_engine.classify(decoded, model, progress=False).values
    assert (got[3, 4] == 0) == (how == "offset") and (got > 0).sum() >= got.size - 1
    rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "map.tif")])
    assert rc == 2 and "GDAL metadata that hsi-engine does not apply" in err


def test_an_envi_gain_that_packs_the_data_is_named(tmp_path, ip, model):
    """ENVI 'data gain values = 0.5' on 2x the data (GDAL's band scale) read as stored, told only 'about 2.1x
    larger'."""
    cube, wl = ip
    path = _envi(tmp_path / "gain.bsq", (cube[:, 50:90, 50:90] * 2).astype(np.int16), wl,
                 ["data gain values = {" + ", ".join(["0.5"] * cube.shape[0]) + "}"])
    _refused(path.with_suffix(".hdr"), model, r"declares band scale 0\.5, offset 0 \(the ENVI header's 'data gain "
                                              r"values' / 'data offset values'\), GDAL metadata .* hsi_engine\."
                                              r"classify\(scene \* 0\.5, model\)")


def test_a_gdal_file_read_by_rioxarray_is_told_a_fix_that_decodes_it(tmp_path, ip, model):
    """rioxarray's read of a packed GeoTIFF was told to 'open the file with hsi_engine.open_scene', which reads its
    values as stored: the fix named now decodes them. A NetCDF's keeps its open_scene fix (it decodes CF)."""
    import rioxarray

    cube, wl = ip
    path = _geotiff(tmp_path / "packed.tif", (cube[:, 50:90, 50:90] * 2).astype(np.int16), wl, scale=0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the scene was read from", category=UserWarning)
        msg = _refused(rioxarray.open_rasterio(path), model, r"CF packing \(scale_factor=0\.5, add_offset=0\.0\) "
                                                             r"that was not applied: .* Decode it first")
    assert "hsi_engine.classify(scene * 0.5, model)" in msg and "mask_and_scale=True" in msg
    assert "open the file with hsi_engine.open_scene or" not in msg


def test_a_gdal_scale_that_is_only_a_note_says_nothing(tmp_path, ip, model):
    """EnMAP-style: counts stored with scale 0.0001 (reflectance), a model trained on counts: the stored values fit,
    the decoded ones do not, and nothing is said (the policy: values as stored)."""
    cube, wl = ip
    path = _geotiff(tmp_path / "note.tif", cube[:, 50:74, 50:74].astype(np.int16), wl, scale=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(path, model, progress=False)


# --------------------------------------------------------------------------------------------------
# G3: a scene placed by ground control points read as pixels of 1 x 1


GRID = {"crs": "EPSG:32633", "transform": [30.0, 0.0, 366975.0, 0.0, -30.0, 5807085.0], "shape": [64, 64]}


def _gcp_scene(tmp_path, step: float):
    """A 16 x 16 GeoTIFF placed by four GCPs (no geotransform), pixels of ``step`` m, slightly rotated."""
    x0, y0, n = 366975.0, 5807085.0, 16
    gcps = [GroundControlPoint(0, 0, x0, y0), GroundControlPoint(0, n, x0 + n * step, y0 + 0.4 * step),
            GroundControlPoint(n, 0, x0 - 0.3 * step, y0 - n * step),
            GroundControlPoint(n, n, x0 + n * step - 0.3 * step, y0 - n * step + 0.4 * step)]
    path = tmp_path / f"gcp_{step:g}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint16") as dst:
        dst.write(np.arange(3 * n * n, dtype=np.uint16).reshape(3, n, n))
        dst.gcps = (gcps, CRS.from_epsg(32633))
    return hsi_engine.open_scene(path)


def test_a_scene_placed_by_gcps_is_measured_by_them(tmp_path, caplog):
    """A GCP-placed scene (rio.transform() the identity) was told 'has pixels of 1 x 1, the model's training scene
    30 x 30 (CRS units) ... resample first'. Its pixel size is fitted to its GCPs: 30 m says nothing, 10 m is
    named as such, and a window of it (its GCPs moved to the window) too."""
    for step, said in ((30.0, None), (10.0, "has pixels of 10 x 10 (fitted to its ground control points), the "
                                            "model's training scene 30 x 30")):
        scene = _gcp_scene(tmp_path, step)
        assert scene.rio.transform().is_identity and scene.rio.get_gcps()
        for da in (scene, scene.isel(y=slice(2, 12), x=slice(3, 15))):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="hsi_engine.scene_checks"):
                warn_other_pixel_size(da, {"grid": GRID}, "gcp.tif")
            assert "1 x 1" not in caplog.text
            assert (said in caplog.text) if said else caplog.text == "", caplog.text


def test_a_scene_with_a_crs_and_no_geotransform_is_not_measured(caplog):
    """No x/y, no GCPs, the identity transform (a CRS without any placement): there is no pixel size to compare."""
    da = xr.DataArray(np.zeros((3, 8, 8), np.float32), dims=("band", "y", "x")).rio.write_crs("EPSG:32633")
    with caplog.at_level(logging.WARNING, logger="hsi_engine.scene_checks"):
        warn_other_pixel_size(da, {"grid": GRID}, "scene")
    assert caplog.text == ""


def test_a_crs_only_geotiff_opened_by_path_is_not_measured(tmp_path, caplog):
    """The same from a real file: opened by path it has x/y (0.5, 1.5, ...) in pixel units, and was told "pixels of
    1 x 1 ... resample first" beside its own "CRS but no geotransform" warning."""
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=8, width=8, count=3, dtype="float32",
                       crs="EPSG:32633") as dst:
        dst.write(np.ones((3, 8, 8), np.float32))
    with pytest.warns(UserWarning, match="no geotransform"):
        da = hsi_engine.open_scene(tmp_path / "s.tif")
    assert "x" in da.coords
    with caplog.at_level(logging.WARNING, logger="hsi_engine.scene_checks"):
        warn_other_pixel_size(da, {"grid": GRID}, "scene")
    assert caplog.text == ""


def test_the_decoding_the_packing_message_gives_keeps_every_digit():
    """The expression the message tells users to run printed numbers with six digits: float32's lowest, a common
    nodata, became a value no pixel holds (its pixels read as data), and a 7-digit offset another number."""
    from hsi_engine.scene_checks import _decoding

    lowest = float(np.finfo(np.float32).min)
    scene = xr.DataArray(np.array([[[lowest, 2.0]]], np.float32), dims=("band", "y", "x"), attrs={"nodata": lowest})
    got = eval(_decoding(np.array([0.5]), np.array([1234567.0]), lowest), {"scene": scene, "xr": xr})
    assert np.isnan(got.values[0, 0, 0]) and got.values[0, 0, 1] == np.float32(2.0) * 0.5 + 1234567.0
    assert got.attrs == scene.attrs


def test_a_prisma_l2_scaling_that_packs_the_data_is_named_with_a_python_fix(tmp_path):
    """PRISMA's L2Scale* (an HDF5 product's root attributes, kept as GDAL's band scales are) on DN a model trained
    on reflectance takes: the message named 'GDAL metadata ... (GeoTIFF and ENVI values ...)' and told the user to
    run gdal_translate -unscale, which does not read it. Named now by its attributes, with the Python decoding, which
    works (and a store written from it classifies without the warning)."""
    import _scale_fixtures as F
    from test_sensor_products import VNIR, _prisma

    dn = F.ip_crop(40, 40)
    _prisma(tmp_path / "p.he5", dn, vnir_max=0.71)
    model = F.tiny_model(dn * (0.71 / 65535))  # trained on the reflectance the product's DN stand for
    scene = hsi_engine.open_scene(tmp_path / "p.he5", variable=VNIR)
    msg = _refused(scene, model, r"the scene declares band scale 1\.08\d*e-05, offset 0 \(the product's root "
                                 r"attributes L2Scale\*Min / L2Scale\*Max, PRISMA L2's scaling")
    assert "gdal_translate" not in msg and "GDAL metadata" not in msg and "GeoTIFF and ENVI" not in msg
    expr = re.search(r"hsi_engine\.classify\((.+?), model\)", msg).group(1)
    assert expr.startswith("scene * 1.08")
    decoded = eval(expr, {"scene": scene, "xr": xr})  # the fix, as the message gives it
    np.testing.assert_allclose(decoded.values, dn * (0.71 / 65535), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(decoded, model, progress=False)
        store = re.search(r"write the decoded scene to a store first \(\((.+?)\)\.to_dataset", msg).group(1)
        assert store == expr
        decoded.to_dataset(name="cube").to_zarr(tmp_path / "decoded.zarr")
        hsi_engine.classify(hsi_engine.open_scene(tmp_path / "decoded.zarr"), model, progress=False)
