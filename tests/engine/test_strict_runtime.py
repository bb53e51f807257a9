"""Strict or unusual Python runtimes: ``python -OO`` (no docstrings, no asserts), ``-W error`` (our warnings raised
as errors), a standard output that cannot encode a path. Each still runs, or says what to do in one line."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

from hsi_engine.cli import main
from test_cli_errors import model_dir, scene  # noqa: F401 - the command line's scene and model fixtures


def test_without_docstrings_the_cli_runs(monkeypatch, capsys):
    """``python -OO`` strips docstrings: the parser's description came from the module's, and every command
    crashed (``--version`` and ``--help`` too)."""
    import hsi_engine.cli as cli

    monkeypatch.setattr(cli, "__doc__", None)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("hsi-engine ")


def test_under_python_o_a_zarr_that_loses_group_metadata_is_named():
    """zarr 3.1 under ``-O`` loses a group's metadata (an assert that pops a key; zarr-python #4362): every .zarr
    map failed once written, leaving a .partial. The probe finds it under -O (or finds it fixed), and never
    without -O."""
    from hsi_engine.outputs import zarr_unusable

    assert zarr_unusable() is None
    script = ("import zarr; from hsi_engine.outputs import zarr_unusable; "
              "print(zarr.__version__); print(zarr_unusable())")
    r = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    version, said = r.stdout.splitlines()[:2]
    if version.startswith("3.1."):  # (a release with #4363 in it may probe clean)
        assert said.startswith(f"this zarr ({version}) cannot read a group's metadata under python -O") \
            and "run without -O (unset PYTHONOPTIMIZE), or write a .tif" in said


def test_a_zarr_output_this_process_cannot_write_is_refused_up_front(scene, model_dir, tmp_path, monkeypatch):
    import hsi_engine.outputs as outputs

    monkeypatch.setattr(outputs, "zarr_unusable", lambda: "this zarr cannot (...): run without -O")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "map.zarr")])
    assert rc == 2 and err.getvalue().strip().splitlines()[-1] == (
        f"hsi-engine classify: error: cannot write a class map to {tmp_path / 'map.zarr'}: this zarr cannot (...): "
        "run without -O")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_our_warning_raised_as_an_error_by_w_error_is_one_cli_error_line(scene, model_dir, tmp_path):
    """``-W error`` / ``PYTHONWARNINGS=error`` turns the warning of a scene without georeferencing into an
    exception: it was a traceback and exit 1, where the README promises one error line and exit 2."""
    err = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(err):
        warnings.simplefilter("error", UserWarning)
        rc = main(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "m.tif")])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("hsi-engine classify: error: ")
    assert "raised as an error by -W error / PYTHONWARNINGS" in lines[0]
    assert not (tmp_path / "m.tif").exists()


def test_a_georeferenced_geotiff_is_classified_under_w_error(model_dir, tmp_path):
    """Under ``-W error`` rioxarray's own use of affine's deprecated ``*`` (a PendingDeprecationWarning on every
    GeoTIFF read) failed every run with 'Use `@` matmul': it is not the user's to act on, and the map is written."""
    import _scale_fixtures as F

    src = tmp_path / "scene.tif"
    F.dataarray(F.ip_crop(24, 24)).rio.to_raster(src)
    out = tmp_path / "m.tif"
    r = subprocess.run([sys.executable, "-W", "error", "-m", "hsi_engine.cli", "classify", str(src), "--model",
                        str(model_dir), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]


def test_the_python_api_reads_and_writes_geotiffs_with_warnings_as_errors(model_dir, tmp_path):
    """pytest's ``filterwarnings = error`` in a user's project: open_scene, classify and classify_to_file failed on
    rioxarray's use of affine's ``*`` (the command line already ignored it); the user's filters are kept."""
    import warnings

    import _scale_fixtures as F

    import hsi_engine

    src = tmp_path / "scene.tif"
    F.dataarray(F.ip_crop(24, 24)).rio.to_raster(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        da = hsi_engine.open_scene(src)
        labels = hsi_engine.classify(src, model_dir, progress=False)
        out = hsi_engine.classify_to_file(da, model_dir, tmp_path / "m.tif", progress=False)
        with pytest.raises(PendingDeprecationWarning):
            warnings.warn("the user's own", PendingDeprecationWarning)
    assert out.is_file() and labels.shape == (24, 24)


def test_info_escapes_a_path_its_standard_output_cannot_encode(tmp_path, monkeypatch):
    path = tmp_path / "szene_ä.npy"
    np.save(path, np.zeros((4, 5, 3), np.float32))
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["info", str(path)]) == 0
    out.flush()
    assert "szene_\\xe4.npy" in raw.getvalue().decode("ascii")


def test_patch_dataset_without_labels_says_it_has_no_targets():
    import ssrn
    from hsi_engine.errors import OptionError

    ds = ssrn.PatchDataset(np.zeros((4, 8, 8), np.float32), None, np.arange(10), 3)
    with pytest.raises(OptionError, match="no labels .* pass the label array"):
        ds.targets([0, 1])


def test_a_scene_without_georeferencing_is_read_under_w_error_and_only_our_warning_said(scene, model_dir, tmp_path):
    """rasterio's NotGeoreferencedWarning ("... The identity matrix will be returned") failed open_scene of such a
    GeoTIFF under -W error, and printed three lines beside the engine's own warning, which names the fix."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    import hsi_engine

    cube = np.ascontiguousarray(np.moveaxis(np.load(scene), -1, 0))  # the model's bands and scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "nogeo.tif", "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2],
                           count=cube.shape[0], dtype=cube.dtype) as dst:
            dst.write(cube)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(hsi_engine.open_scene(tmp_path / "nogeo.tif").values, cube)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hsi_engine.classify_to_file(tmp_path / "nogeo.tif", model_dir, tmp_path / "m.tif", progress=False)
    assert not [w for w in seen if issubclass(w.category, NotGeoreferencedWarning)], [str(w.message) for w in seen]
    assert any("georeferencing" in str(w.message) for w in seen)
