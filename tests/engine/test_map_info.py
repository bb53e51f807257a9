"""``hsi-engine info MAP``: a class map or an interrupted run's partial store that hsi-engine wrote is described by
what made it (software, model digest, precisions, map version, scene, tiles done), where info read a .tif map as a
1-band scene and refused a .zarr map or partial ("expected (band, y, x)")."""

from __future__ import annotations

import os

import pytest

import _scale_fixtures as F

from hsi_engine import cluster
from hsi_engine.cli import main
from hsi_engine.resume import partial_path

TILE = 16


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return F.classified_crop(tmp_path_factory.mktemp("mapinfo"), 32, 48, y0=10, x0=10, tile=TILE)  # 2 x 3 tiles


def _info(path, capsys) -> dict[str, str]:
    assert main(["info", str(path)]) == 0
    return dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_class_map_is_described_by_what_made_it(case, tmp_path, capsys, suffix):
    out = tmp_path / f"map{suffix}"
    assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--tile",
                 str(TILE), "--resume", "--nodata", "-9999"]) == 0
    capsys.readouterr()
    model_digest = _info(case["model"], capsys)["digest"].split()[0]
    said = _info(out, capsys)
    assert said["class"] == f"map  {out}" and said["shape"] == "y=32 x=48"
    assert said["model"].startswith(f"digest {model_digest} ")
    assert said["software"].startswith("hsi-engine ") and said["precision"] == "float32"
    # the nodata it masked, as a plain run's map says it (a resumable run's was not shown)
    assert said["map"] == "version 3" and said["scene"] == f"{case['scene']}; tile {TILE}; nodata -9999.0"
    assert said["classes"].startswith("4: ")
    # a map's pixels are class ids, not a scene's bands: the scene options were ignored and the map described
    assert main(["info", str(out), "--variable", "x", "--band-axis", "0"]) == 2
    got = capsys.readouterr()
    assert got.out == "" and f"{out} is a class map hsi-engine wrote: --variable and --band-axis apply to scenes; " \
        "leave them out" in got.err


def test_an_interrupted_runs_partial_store_says_how_far_it_got(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "map.tif"
    F.crash_writes_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    said = _info(partial_path(out), capsys)
    assert said["format"] == "zarr, the partial store of an interrupted run" and said["tiles"] == "2 of 6 done"
    # while a run holds the output's lock (resuming it now), the store is not called interrupted
    from hsi_engine.lock import output_lock

    with output_lock(out):
        said = _info(partial_path(out), capsys)
    assert said["format"].startswith(f"zarr, the partial store of a run in progress (pid {os.getpid()} on ")


def test_a_scene_is_still_described_as_a_scene(case, capsys):
    assert _info(case["scene"], capsys)["format"] == "zarr"


def test_a_map_of_a_plain_run_records_its_scene_and_what_made_it(case, tmp_path, capsys):
    """A run in one go recorded no scene (a resumable one's fingerprint does): its GeoTIFF tags, classify()'s attrs
    and info now name the scene's file (or the array) and the nodata it masked."""
    import numpy as np
    import rasterio

    import hsi_engine

    out = tmp_path / "plain.tif"
    assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--nodata",
                 "-9999"]) == 0
    capsys.readouterr()
    said = _info(out, capsys)
    assert said["format"] == "GeoTIFF" and said["model"].startswith("digest ")
    assert said["scene"] == f"{case['scene']}; nodata -9999.0"
    with rasterio.open(out) as f:
        assert f.tags()["scene"] == str(case["scene"]) and f.nodata == 0  # (the map's own nodata is untouched)
    cube = np.asarray(hsi_engine.open_scene(case["scene"]).values)
    labels = hsi_engine.classify(cube, case["model"], progress=False)
    assert labels.attrs["scene"] == f"an in-memory array {cube.shape} (band, y, x) of {cube.dtype}"
    assert labels.attrs["scene_nodata"] == "none" and labels.rio.nodata == 0


def test_a_scene_whose_file_name_is_not_utf8_is_recorded_escaped(case, tmp_path):
    """Linux file names are bytes: a scene at 'sc\\xffene.zarr' crashed the GeoTIFF map's tags (UTF-8 only)."""
    import os
    import shutil

    import rasterio

    import hsi_engine

    scene = tmp_path / os.fsdecode(b"sc\xffene.zarr")
    shutil.copytree(case["scene"], scene)
    out = tmp_path / "m.tif"
    hsi_engine.classify_to_file(scene, case["model"], out, progress=False)
    with rasterio.open(out) as f:
        assert f.tags()["scene"] == str(tmp_path / "sc\\xffene.zarr")


def _ungeoreferenced_map(path):
    import warnings

    import numpy as np

    from hsi_engine.writers import open_writer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = open_writer(path, height=4, width=4, n_classes=2, class_names=["a", "b"], tags={"model_digest": "0" * 16})
        w.write(0, 0, np.ones((4, 4), np.uint8))
        return w.commit()


def test_an_ungeoreferenced_map_is_described_without_rasterio_s_warning(tmp_path, capsys):
    """The demo's map has no georeferencing: ``info`` printed rasterio's NotGeoreferencedWarning beside its own
    "crs none", and exited 2 under -W error."""
    import warnings

    out = _ungeoreferenced_map(tmp_path / "m.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["info", str(out)]) == 0
    assert "crs        none" in capsys.readouterr().out


def test_a_missing_dependency_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """A dependency removed from the environment gave a raw traceback; the line names the package and the fix."""
    import sys

    out = _ungeoreferenced_map(tmp_path / "m.tif")
    real = sys.modules["rasterio"]  # (imported by the map's writer)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # what an uninstalled package raises: ModuleNotFoundError
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: the package 'rasterio' is missing" in err and "pip install rasterio" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "rasterio", real)
    import hsi_engine.map_info

    def lacking(path):  # an installed package lacking a part (a typo in our code, a version mismatch): a bug,
        import rasterio.errorz  # noqa: F401  # its traceback kept, not "pip install rasterio"

    monkeypatch.setattr(hsi_engine.map_info, "map_info", lacking)
    with pytest.raises(ModuleNotFoundError, match="rasterio.errorz"):
        main(["info", str(out)])
