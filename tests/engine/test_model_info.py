"""``hsi-engine info MODEL_DIR``: a model directory described, with the digest its class maps record, so a map's
``model_digest`` tag can be traced to the model that made it (the digest was reproducible only through a private
function, and ``info`` refused model directories)."""

from __future__ import annotations

import shutil
import numpy as np
import pytest
import rasterio

import hsi_engine
from hsi_engine.cli import main
from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE


def _info(path, capsys, *extra: str) -> tuple[int, str, str]:
    rc = main(["info", str(path), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_of_a_model_names_the_digest_its_maps_record(tmp_path, capsys):
    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 9), x=slice(0, 9))
    scene.rio.to_raster(tmp_path / "s.tif")
    assert main(["classify", str(tmp_path / "s.tif"), "--model", str(SHIPPED_MODEL), "--out",
                 str(tmp_path / "map.tif")]) == 0
    capsys.readouterr()
    with rasterio.open(tmp_path / "map.tif") as f:
        tag = f.tags()["model_digest"]
    rc, out, _ = _info(SHIPPED_MODEL, capsys)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert rc == 0 and lines["digest"].split()[0] == tag
    assert lines["network"].startswith("SSRN ssrn: 200 bands, 16 classes, patch 7")
    assert lines["classes"].startswith("Alfalfa, Corn-notill,") and "(16 in all)" in lines["classes"]
    assert lines["wavelength"].endswith("nm (200 bands)")
    assert lines["test"].startswith("OA 0.99")
    assert len(lines["weights"].split()[1]) == 64


def test_a_file_without_wavelengths_is_said_to_go_unchecked(tmp_path, caplog):
    """A file that lost its band metadata (rio merge, rio.to_raster) was classified against a model that records
    its wavelengths without a word: bands out of order gave a wrong map silently (903 of 1,024 pixels)."""
    import logging

    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 9), x=slice(0, 9))
    scene.rio.write_crs("EPSG:32616").rio.to_raster(tmp_path / "s.tif")  # (no band descriptions)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.api"):
        hsi_engine.classify(str(tmp_path / "s.tif"), SHIPPED_MODEL, progress=False)
    assert "s.tif records no wavelengths, so its 200 bands are not checked against the model's (400-2499 nm)" \
        in caplog.text
    assert "write them into the file as GeoTIFF band metadata 'wavelength'" in caplog.text  # this format's way
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hsi_engine.api"):  # the command line's way: the file opened first
        hsi_engine.classify_to_file(str(tmp_path / "s.tif"), SHIPPED_MODEL, tmp_path / "m.tif", progress=False)
    assert "s.tif records no wavelengths" in caplog.text
    caplog.clear()
    scene.to_netcdf(tmp_path / "s.nc")  # its wavelength coordinate kept: checked, nothing said
    with caplog.at_level(logging.WARNING, logger="hsi_engine.api"):
        hsi_engine.classify(str(tmp_path / "s.nc"), SHIPPED_MODEL, progress=False)
    assert "records no wavelengths" not in caplog.text
    caplog.clear()
    np.save(tmp_path / "s.npy", scene.values)  # a format without band metadata: the side file named for this scene
    with caplog.at_level(logging.WARNING, logger="hsi_engine.api"):
        hsi_engine.classify(str(tmp_path / "s.npy"), SHIPPED_MODEL, progress=False)
    assert "write them into s.wavelengths.json (or s.npy.wavelengths.json) beside s.npy" in caplog.text


def test_a_scene_of_another_pixel_size_than_the_training_scene_is_said(caplog):
    """A scene warped to 10 m pixels against a model trained at 30 m (its 7 x 7 patch covering 70 m, not 210 m), or
    reprojected to degrees, was classified without a word, though the model records its training grid."""
    import logging

    model = hsi_engine.load_model(SHIPPED_MODEL)
    model.meta["grid"] = {"crs": "EPSG:32633", "transform": [30.0, 0.0, 367935.0, 0.0, -30.0, 5807085.0],
                          "shape": [145, 145]}
    crop = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 9), x=slice(0, 9)).load()

    def said(step: float, crs: str) -> str:
        scene = crop.assign_coords(x=367935.0 + step * (np.arange(9) + 0.5),
                                   y=5807085.0 - step * (np.arange(9) + 0.5)).rio.write_crs(crs)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hsi_engine.scene_checks"):
            hsi_engine.classify(scene, model, progress=False)
        return caplog.text

    assert "has pixels of 10 x 10, the model's training scene 30 x 30 (CRS units): the model's patch covers 0.333x" \
        in said(10.0, "EPSG:32633")
    assert said(30.0, "EPSG:32632") == ""  # another UTM zone, the same pixel size: nothing to say
    assert "the model's training scene in EPSG:32633: their pixel sizes cannot be compared" in said(1e-4, "EPSG:4326")


def test_a_copied_model_has_the_same_digest_and_a_changed_one_another(tmp_path, capsys):
    shutil.copytree(SHIPPED_MODEL, tmp_path / "copy")
    digest = [line for line in _info(tmp_path / "copy", capsys)[1].splitlines() if line.startswith("digest")]
    assert digest == [line for line in _info(SHIPPED_MODEL, capsys)[1].splitlines() if line.startswith("digest")]
    model = hsi_engine.load_model(SHIPPED_MODEL)
    model.meta["mean"] = (np.asarray(model.meta["mean"]) + 1).tolist()  # another normalisation: another map
    from ssrn.checkpoint import save_model

    save_model(model, tmp_path / "other", meta=model.meta)
    other = [line for line in _info(tmp_path / "other", capsys)[1].splitlines() if line.startswith("digest")]
    assert other and other != digest


def test_a_model_whose_kappa_is_undefined_is_described(tmp_path, capsys):
    """A test set of one class has no kappa (0/0: null in model.json); ``info`` raised a TypeError formatting it."""
    model = hsi_engine.load_model(SHIPPED_MODEL)
    model.meta["report"] = {**model.meta["report"], "kappa": None}
    from ssrn.checkpoint import save_model

    save_model(model, tmp_path / "one_class", meta=model.meta)
    rc, out, err = _info(tmp_path / "one_class", capsys)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert rc == 0 and "kappa n/a (one class in the test set)" in lines["test"], err


def test_a_model_json_path_is_its_model(capsys):
    """info MODEL_DIR/model.json said "suffix '.json' is not one hsi-engine reads"."""
    rc, out, _ = _info(SHIPPED_MODEL / "model.json", capsys)
    assert rc == 0 and out == _info(SHIPPED_MODEL, capsys)[1]


def test_scene_options_on_a_model_directory_are_named(capsys):
    rc, out, err = _info(SHIPPED_MODEL, capsys, "--band-axis", "0")
    assert rc == 2 and out == "" and "is a model directory: --band-axis applies to scenes; leave it out" in err


def test_a_model_directory_with_bad_weights_is_an_error_not_a_traceback(tmp_path, capsys):
    shutil.copytree(SHIPPED_MODEL, tmp_path / "m")
    with open(tmp_path / "m" / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    rc, out, err = _info(tmp_path / "m", capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("hsi-engine info: error:") and "sha256" in err


def test_info_on_a_pickled_model_file_names_it_as_one(tmp_path, capsys):
    """`info model.pt` listed the scene suffixes it reads; classify --model said what the file is. Now info too,
    without unpickling it."""
    import pickle

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}))
    rc, out, err = _info(path, capsys)
    assert rc == 2 and out == "" and "looks like a pickle/torch.save file; hsi-engine never unpickles" in err


def test_a_progress_save_is_said_unfinished_on_stdout(tmp_path, capsys):
    """A stopped run's progress save printed no status line (only a warning on stderr): a script reading ``info``
    took it for a finished model."""
    model = hsi_engine.load_model(SHIPPED_MODEL)
    model.meta["report"] = {**model.meta["report"], "status": "training", "epochs_run": 3, "epochs": 200}
    from ssrn.checkpoint import save_model

    save_model(model, tmp_path / "progress", meta=model.meta)
    rc, out, _ = _info(tmp_path / "progress", capsys)
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert rc == 0 and lines["status"].startswith("UNFINISHED: a training run's progress save (epoch 3 of 200)")
    assert "status" not in dict(line.split(None, 1) for line in _info(SHIPPED_MODEL, capsys)[1].splitlines())
    # and a map made with it says so in its tags (a pipeline that retrains, then classifies, saw a warning only)
    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 9), x=slice(0, 9))
    with pytest.warns(UserWarning, match="progress save"):
        labels = hsi_engine.classify(scene, str(tmp_path / "progress"), progress=False)
        hsi_engine.classify_to_file(scene, str(tmp_path / "progress"), tmp_path / "map.tif", progress=False)
    assert labels.attrs["model_status"] == "unfinished: a training run's progress save (epoch 3 of 200)"
    with rasterio.open(tmp_path / "map.tif") as f:
        assert f.tags()["model_status"] == labels.attrs["model_status"]
    assert "model_status" not in hsi_engine.classify(scene, SHIPPED_MODEL, progress=False).attrs
