"""Reading a scene where the file system holds traps: a name in GDAL's own syntax, pipes where GDAL looks for its
side files, hostile wavelength sidecars (hsi_engine/geotiff.py, envi.py, stores.py)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from hsi_engine import open_scene
from hsi_engine.errors import SceneError


def test_a_file_named_in_gdal_syntax_is_read_as_itself(tmp_path, monkeypatch, geo) -> None:
    """'GTIFF_DIR:1:x.tif' is GDAL's syntax for the first image of x.tif: a file so named, given relative to the
    working directory, opened x.tif instead (a map of another scene, without a word)."""
    rng = np.random.default_rng(0)
    mine, other = rng.random((3, 8, 8), dtype=np.float32), rng.random((3, 8, 8), dtype=np.float32) + 5
    geo.write_geotiff(tmp_path / "x.tif", other, block=None)
    geo.write_geotiff(tmp_path / "mine.tif", mine, block=None)
    shutil.move(tmp_path / "mine.tif", tmp_path / "GTIFF_DIR:1:x.tif")
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(open_scene("GTIFF_DIR:1:x.tif").values, mine)


@pytest.mark.timeout(60)  # the old code waited on the pipe for ever
@pytest.mark.parametrize("side", [".tif.aux.xml", ".tif.msk", ".hdr", ".aux", ".tfw", ".wld", ".rpb"])
def test_a_pipe_where_gdal_reads_a_side_file_is_refused(tmp_path, side: str, geo) -> None:
    """GDAL opens scene.tif.aux.xml / .msk beside a GeoTIFF and scene.hdr beside an ENVI binary: a FIFO there
    blocked the open for ever (and a first Ctrl-C did not end it)."""
    cube = np.ones((3, 8, 8), np.float32)
    if side == ".hdr":
        geo.write_geotiff(tmp_path / "scene.bsq", cube, driver="ENVI", interleave="band", wavelengths=None)
        scene = tmp_path / "scene.bsq"
    else:
        scene = geo.write_geotiff(tmp_path / "scene.tif", cube, block=None)
    fifo = tmp_path / ("scene" + side)
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    with pytest.raises(SceneError, match="not a regular file.*remove it"):
        open_scene(scene)


@pytest.mark.parametrize("content", ["[" * 5000 + "]" * 5000, json.dumps([500.0] * 200_000)])
def test_a_hostile_wavelength_sidecar_is_named_and_left_out(tmp_path, content: str) -> None:
    """<stem>.wavelengths.json nested past Python's recursion limit raised RecursionError (a traceback), and one of
    megabytes was read whole; both are now named in a warning and left out, as unreadable JSON is."""
    np.save(tmp_path / "s.npy", np.ones((8, 8, 3), np.float32))
    (tmp_path / "s.wavelengths.json").write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        da = open_scene(tmp_path / "s.npy")
    assert "wavelength" not in da.coords
    assert any("s.wavelengths.json" in str(w.message) and ("cannot be read" in str(w.message) or "more than the"
                                                             in str(w.message)) for w in caught)
