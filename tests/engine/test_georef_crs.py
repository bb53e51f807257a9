"""A CRS that pyproj cannot parse is not "no CRS": classify, classify_to_file, the command line and write_classmap
refuse it (naming the text and the fix), ``info`` says so on its crs line; a scene without a CRS is unchanged."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import xarray as xr

import _scale_fixtures as F
import hsi_engine
from hsi_engine.cli import main
from hsi_engine.errors import OptionError, SceneError
from hsi_engine.georef import georeferenced, scene_crs
from hsi_engine.io import scene_info
from hsi_engine.writers import write_classmap
from ssrn.checkpoint import save_model

BAD = "NOT A CRS"
FIX = r"write the real CRS over it \(in Python: scene = scene.rio.write_crs\(\"EPSG:32633\"\)"


def _bad_crs(da: xr.DataArray) -> xr.DataArray:
    """``da`` with its grid mapping's CRS text replaced by text PROJ rejects (as a file from a tool whose WKT this
    PROJ cannot read carries it)."""
    da = da.rio.write_crs(F.CRS)
    da["spatial_ref"].attrs.update(crs_wkt=BAD, spatial_ref=BAD)
    return da


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return F.ip_crop(12, 12)


@pytest.fixture(scope="module")
def model(crop):
    return F.tiny_model(crop)


@pytest.fixture(scope="module")
def bad_nc(tmp_path_factory, crop):
    path = tmp_path_factory.mktemp("bad") / "s.nc"
    _bad_crs(F.dataarray(crop)).to_netcdf(path)
    return path


def test_an_unreadable_crs_is_not_no_crs():
    """georeferenced() answered False on a CRSError: the map lost its CRS under a 'no georeferencing' warning."""
    da = F.dataarray(np.zeros((3, 4, 4), np.float32), crs=None)
    assert not georeferenced(da) and scene_crs(da) is None  # no CRS at all: still "no CRS"
    with pytest.raises(SceneError, match=rf"scene \(in memory\) declares a CRS that pyproj cannot parse \(its "
                                         rf"spatial_ref coordinate's spatial_ref attribute: '{BAD}'\).*{FIX}.*"
                                         r"scene.drop_vars\('spatial_ref'\)"):
        georeferenced(_bad_crs(da))
    long = da.rio.write_crs(F.CRS)
    long["spatial_ref"].attrs.update(crs_wkt="X" * 500, spatial_ref="X" * 500)
    with pytest.raises(SceneError, match=r"attribute: 'X{77}\.\.\.'\)") as e:
        georeferenced(long)
    assert "X" * 78 not in str(e.value)  # quoted truncated: a WKT runs to a thousand characters
    with pytest.raises(SceneError, match=r"its crs attribute: 'garbage'.*del scene.attrs\['crs'\]"):
        georeferenced(da.assign_attrs(crs="garbage"))


def test_classify_and_classify_to_file_refuse_an_unreadable_crs(bad_nc, model, tmp_path):
    """classify() returned a map carrying the unreadable spatial_ref (labels.rio.to_raster then raised pyproj's
    CRSError); classify_to_file wrote a map without a CRS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no wavelengths to check)
        with pytest.raises(SceneError, match=rf"scene {bad_nc} declares a CRS that pyproj cannot parse.*{FIX}"):
            hsi_engine.classify(bad_nc, model, progress=False)
        with pytest.raises(SceneError, match="declares a CRS that pyproj cannot parse"):
            hsi_engine.classify_to_file(bad_nc, model, tmp_path / "m.tif", progress=False)
        assert not (tmp_path / "m.tif").exists()
        # each fix the message names works: the real CRS written over it, or the text removed
        scene = hsi_engine.open_scene(bad_nc)
        fixed = hsi_engine.classify(scene.rio.write_crs(F.CRS), model, progress=False)
        assert fixed.rio.crs.to_string() == F.CRS
        dropped = hsi_engine.classify(scene.drop_vars("spatial_ref"), model, progress=False)
        assert dropped.rio.crs is None and dropped.rio.transform().c == pytest.approx(F.TRANSFORM[2])


def test_cli_classify_refuses_and_info_says_so(bad_nc, model, tmp_path, capsys):
    """The command line wrote the map without a CRS and exited 0; info printed 'crs none'."""
    model_dir = save_model(model, tmp_path / "model")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["classify", str(bad_nc), "--model", str(model_dir), "--out", str(tmp_path / "c.tif")])
    assert rc != 0 and not (tmp_path / "c.tif").exists()
    assert f"declares a CRS that pyproj cannot parse (its spatial_ref coordinate's spatial_ref attribute: '{BAD}')" \
        in err.getvalue() + capsys.readouterr().err
    text = scene_info(bad_nc)
    assert "crs        unreadable: scene" in text and f"'{BAD}'" in text and "crs        none" not in text
    assert "transform  (20.0, 0.0, 500000.0" in text  # the rest of the summary is still there
    assert main(["info", str(bad_nc)]) == 0
    assert "crs        unreadable" in capsys.readouterr().out


def test_write_classmap_refuses_a_map_with_an_unreadable_crs(tmp_path):
    """write_classmap's `except Exception: pass` wrote such a map without a CRS."""
    labels = F.dataarray(np.ones((1, 6, 6), np.uint8), crs=None).isel(band=0, drop=True)
    with pytest.raises(OptionError, match=r"the class map declares a CRS that pyproj cannot parse.*"
                                          r"labels = labels.rio.write_crs"):
        write_classmap(_bad_crs(labels), tmp_path / "m.tif", n_classes=2)
    assert not (tmp_path / "m.tif").exists()
    # a CRS given explicitly is used, the map's own not read
    out = write_classmap(_bad_crs(labels), tmp_path / "n.tif", n_classes=2, crs=F.CRS)
    import rasterio

    with rasterio.open(out) as f:
        assert f.crs.to_string() == F.CRS


def test_training_refuses_a_scene_with_an_unreadable_crs(bad_nc, tmp_path):
    """load_labelled_raster read da.rio.crs inside `except Exception`: the unreadable CRS was taken as none, and the
    labels were matched pixel for pixel, their CRS and grid unchecked."""
    from hsi_engine.training import load_labelled_raster
    from ssrn.data import DataError

    labels = np.zeros((12, 12), np.uint8)
    labels[2:6, 2:6], labels[7:10, 5:11] = 1, 2
    np.save(tmp_path / "l.npy", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no wavelengths)
        with pytest.raises(DataError, match=rf"scene {bad_nc} declares a CRS that pyproj cannot parse.*{FIX}"):
            load_labelled_raster(bad_nc, tmp_path / "l.npy")


def test_classify_refuses_an_unreadable_crs_before_any_tile_runs(bad_nc, model, monkeypatch):
    """classify() met the unreadable CRS only once the whole map was computed (georeferenced() at its end): a
    large scene ran for its whole time to fail. Checked with the scene's other checks now; open_scene still opens
    it (info shows the rest of the scene)."""
    import hsi_engine.api as api

    def ran(*a, **k):
        raise AssertionError("a tile ran before the CRS was checked")

    monkeypatch.setattr(api._Job, "run", ran)
    scene = hsi_engine.open_scene(bad_nc)  # not refused on opening
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no wavelengths to check)
        for given in (bad_nc, scene, scene.load()):
            with pytest.raises(SceneError, match=rf"declares a CRS that pyproj cannot parse.*{FIX}"):
                hsi_engine.classify(given, model, progress=False)


def test_the_pixel_size_check_refuses_an_unreadable_crs_with_the_fix(crop):
    """warn_other_pixel_size read da.rio.crs itself: against a model that records its training grid, the scene's
    unreadable CRS raised pyproj's CRSError (no HSIEngineError, no fix)."""
    from hsi_engine.scene_checks import warn_other_pixel_size

    grid = {"crs": F.CRS, "transform": list(F.TRANSFORM)}
    with pytest.raises(SceneError, match=rf"scene s\.nc declares a CRS that pyproj cannot parse.*{FIX}"):
        warn_other_pixel_size(_bad_crs(F.dataarray(crop)), {"grid": grid}, "s.nc")
    warn_other_pixel_size(F.dataarray(crop), {"grid": grid}, "s.nc")  # a readable one: measured, nothing said


@pytest.mark.parametrize("placeholder", ["", "  ", None])
def test_an_empty_crs_placeholder_declares_no_crs(placeholder, tmp_path):
    """Some HDF/NetCDF products write an empty ``crs`` attribute: it declares nothing, so the scene classifies as
    one without a CRS (the unreadable-CRS refusal had stopped it), while an array or bytes value is refused."""
    import warnings

    import numpy as np
    import xarray as xr

    import hsi_engine
    from hsi_engine.errors import SceneError
    from hsi_engine.georef import scene_crs
    from ssrn import SSRN, SSRNConfig

    da = xr.DataArray(np.random.default_rng(0).random((20, 9, 9), np.float32), dims=("band", "y", "x"))
    da.attrs["crs"] = placeholder
    assert scene_crs(da) is None
    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert hsi_engine.classify(da, model, progress=False).shape == (9, 9)
    da.attrs["crs"] = np.array([1, 2])
    with pytest.raises(SceneError, match=r"declares a CRS that pyproj cannot parse \(its crs attribute: '\[1 2\]'\)"):
        scene_crs(da)
