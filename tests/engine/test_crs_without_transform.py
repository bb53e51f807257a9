"""A scene with a CRS but no transform (no GeoTransform, no x/y coordinates but pixel indices, no GCPs) is warned
of on every path, once, as the GeoTIFF reader warns of one: in memory (after rio.write_crs, the no-CRS warning's own
advice), a CF NetCDF whose grid mapping has no x/y coordinates, a zarr written from such a DataArray; its map is
written as a crs-only GeoTIFF's (the CRS on the scene's pixel grid), and ``info`` shows no transform, not the
identity."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import rasterio
import xarray as xr

import _scale_fixtures as F
import hsi_engine
from hsi_engine.cli import main
from hsi_engine.georef import crs_without_transform
from hsi_engine.io import scene_info
from ssrn.checkpoint import save_model

# (rioxarray's rio.transform(), called here on the maps)
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
ORIGIN = "its class map lies at the CRS's origin in 1-unit pixels"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return F.ip_crop(12, 12)


@pytest.fixture(scope="module")
def model(crop):
    return F.tiny_model(crop)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("m") / "model")


def _crs_only(crop: np.ndarray) -> xr.DataArray:
    """The scene as a numpy array given a CRS and nothing else (as_scene(arr).rio.write_crs(...))."""
    return hsi_engine.as_scene(crop).rio.write_crs(F.CRS)


def _said(caught: list) -> list[str]:
    return [str(w.message) for w in caught if "but no transform" in str(w.message)
            or "but no geotransform" in str(w.message)]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue() + capsys.readouterr().err


def test_a_scene_in_memory_with_a_crs_only_is_warned_of_on_each_path(crop, model, tmp_path):
    """classify_to_file wrote an EPSG map at (0, 0) in 1 m pixels, without a word."""
    da = _crs_only(crop)
    assert crs_without_transform(da)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = hsi_engine.classify(da, model, progress=False)
    said = _said(caught)
    assert len(said) == 1 and "scene (in memory)" in said[0] and ORIGIN in said[0]
    assert "scene.rio.write_transform(Affine(PIXEL, 0, ULX, 0, -PIXEL, ULY))" in said[0]
    assert "scene.drop_vars('spatial_ref')" in said[0] and "in the file" not in said[0]
    assert labels.rio.crs.to_string() == F.CRS and labels.rio.transform().is_identity  # as a crs-only GeoTIFF's
    for suffix in ("tif", "zarr"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hsi_engine.classify_to_file(da, model, tmp_path / f"m.{suffix}", progress=False)
        assert len(_said(caught)) == 1, suffix
    with rasterio.open(tmp_path / "m.tif") as f:
        assert f.crs.to_string() == F.CRS and f.transform.is_identity


def test_the_fixes_it_names_place_the_map(crop, model, tmp_path):
    """Following the warning: a transform written places the map; the CRS dropped puts it in pixel coordinates."""
    from affine import Affine

    da = _crs_only(crop)
    placed = da.rio.write_transform(Affine(*F.TRANSFORM))
    dropped = da.drop_vars("spatial_ref")
    assert not crs_without_transform(placed) and not crs_without_transform(dropped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = hsi_engine.classify(placed, model, progress=False)
        hsi_engine.classify(dropped, model, progress=False)
    assert not _said(caught)
    assert tuple(labels.rio.transform())[:6] == F.TRANSFORM
    # the scene placed as usual (x/y coordinates and a GeoTransform) is not taken for one
    assert not crs_without_transform(F.dataarray(crop))


def test_the_no_crs_warning_names_the_transform_too(crop, model, tmp_path):
    """Its advice, write_crs alone, led into the trap above."""
    with pytest.warns(UserWarning, match=r"has no georeferencing \(no CRS\): the class map is written in pixel "
                                         r"coordinates; set one and its transform in Python, "
                                         r"da\.rio\.write_crs\(\.\.\.\)\.rio\.write_transform\(Affine\(\.\.\.\)\) "
                                         r"\(a CRS alone puts the map at the CRS's origin\)"):
        hsi_engine.classify_to_file(hsi_engine.as_scene(crop), model, tmp_path / "m.tif", progress=False)


@pytest.fixture(scope="module")
def files(crop, tmp_path_factory) -> dict:
    """A CF NetCDF with a grid mapping and no x/y coordinate variables (a swath product carrying its CRS), and a
    zarr written from a DataArray given a CRS only (to_zarr)."""
    d = tmp_path_factory.mktemp("crs_only")
    ds = xr.Dataset({"reflectance": (("band", "y", "x"), crop)})
    ds["crs"] = xr.DataArray(np.int32(0), attrs={"grid_mapping_name": "transverse_mercator",
                                                 "crs_wkt": rasterio.crs.CRS.from_string(F.CRS).to_wkt()})
    ds["reflectance"].attrs["grid_mapping"] = "crs"
    ds.to_netcdf(d / "s.nc")
    xr.DataArray(crop, dims=("band", "y", "x"), name="cube").rio.write_crs(F.CRS).to_dataset().to_zarr(
        d / "s.zarr", mode="w", consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (rasterio's NotGeoreferencedWarning)
        with rasterio.open(d / "s.tif", "w", driver="GTiff", height=crop.shape[1], width=crop.shape[2],
                           count=crop.shape[0], dtype=crop.dtype, crs=F.CRS) as dst:
            dst.write(crop)
    return {"nc": d / "s.nc", "zarr": d / "s.zarr", "tif": d / "s.tif"}


@pytest.mark.parametrize("kind", ["nc", "zarr", "tif"])
def test_files_with_a_crs_only_are_warned_of_once_by_open_classify_and_the_cli(files, kind, model, model_dir,
                                                                               tmp_path, capsys, caplog):
    """The NetCDF and zarr were classified by the command line with exit 0 and no warning (the GeoTIFF was warned
    of); each is now warned of once: on opening, as the GeoTIFF reader does, and not again when classified."""
    path = files[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = hsi_engine.open_scene(path)
        hsi_engine.classify(scene, model, progress=False)
        hsi_engine.classify_to_file(path, model, tmp_path / "m.tif", progress=False)
    said = _said(caught)
    assert len(said) == 2 and all(str(path) in s for s in said), said  # the open, and classify_to_file's own open
    if kind != "tif":
        assert "in the file: x/y pixel-centre coordinate variables, or a GeoTransform attribute" in said[0]
    with rasterio.open(tmp_path / "m.tif") as f:
        assert f.crs.to_string() == F.CRS and f.transform.is_identity  # every path writes the same map
    caplog.clear()
    rc, err = _cli(["classify", str(path), "--model", str(model_dir), "--out", str(tmp_path / "c.tif")], capsys)
    err += caplog.text  # (the command line logs warnings)
    assert rc == 0 and err.count("but no transform") + err.count("but no geotransform") == 1, err


@pytest.mark.parametrize("kind", ["nc", "zarr", "tif"])
def test_info_shows_no_transform_for_a_crs_only(files, kind):
    """info printed rioxarray's identity, `transform (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)`, as if it were real."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = scene_info(files[kind])
    assert f"crs        {F.CRS}" in text
    assert "transform  none: a CRS without a transform" in text and "(1.0, 0.0, 0.0" not in text
    assert "pixel      1 x 1" not in text
