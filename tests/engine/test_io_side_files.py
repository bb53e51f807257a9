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


def test_side_files_gdal_is_set_to_ignore_are_refused(tmp_path, monkeypatch, geo) -> None:
    """GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR (common in cloud images) hid an external .msk (its pixels classified
    as land cover, exit 0) and an ENVI header; GDAL_PAM_ENABLED=NO the per-band nodata of an .aux.xml."""
    import rasterio

    cube = np.ones((3, 8, 8), np.float32)
    masked = geo.write_geotiff(tmp_path / "masked.tif", cube, block=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(masked, "r+") as f:
        f.write_mask(np.where(np.arange(64).reshape(8, 8) < 5, 0, 255).astype(np.uint8))
    assert (tmp_path / "masked.tif.msk").exists()
    pam = geo.write_geotiff(tmp_path / "pam.tif", cube, block=None)
    (tmp_path / "pam.tif.aux.xml").write_text('<PAMDataset><PAMRasterBand band="1"><NoDataValue>1</NoDataValue>'
                                              "</PAMRasterBand></PAMDataset>")
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    with pytest.raises(SceneError, match=r"masked\.tif: GDAL is set to ignore the files beside it .*masked\.tif\.msk "
                                         r"is there.*unset GDAL_DISABLE_READDIR_ON_OPEN"):
        open_scene(masked)
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN")
    monkeypatch.setenv("GDAL_PAM_ENABLED", "NO")
    with pytest.raises(SceneError, match=r"GDAL_PAM_ENABLED=NO\), but .*pam\.tif\.aux\.xml gives the scene's "
                                         r"NoDataValue"):
        open_scene(pam)
    open_scene(masked)  # an .msk is read without PAM
    (tmp_path / "pam.tif.aux.xml").write_text("<PAMDataset><Metadata><MDI key='STATISTICS_MEAN'>1</MDI></Metadata>"
                                              "</PAMDataset>")
    open_scene(pam)  # statistics alone change nothing the engine reads


def test_a_crs_without_a_geotransform_is_warned_of(tmp_path) -> None:
    """A GeoTIFF with a CRS and no geotransform: its map lay at the CRS's origin in 1-unit pixels, and rasterio's
    warning (quiet in the engine's calls) had been the only word."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(tmp_path / "crs.tif", "w", driver="GTiff", height=4, width=4, count=3, dtype="float32",
                           crs="EPSG:32633") as dst:
            dst.write(np.ones((3, 4, 4), np.float32))
    with pytest.warns(UserWarning, match=r"crs\.tif has a CRS \(EPSG:32633\) but no geotransform \(nor GCPs\): its "
                                         r"map would lie at the CRS's origin"):
        open_scene(tmp_path / "crs.tif")


@pytest.mark.parametrize("suffix", [".npy", ".mat"])
@pytest.mark.parametrize("side", ["{stem}.wavelengths.json", "{stem}_wavelengths.json", "{name}.wavelengths.json"])
def test_wavelength_side_files_by_either_name_are_read(tmp_path, suffix: str, side: str) -> None:
    """'scene.mat.wavelengths.json' (the whole name, as GDAL's scene.tif.aux.xml) was ignored without a word, and the
    'records no wavelengths' warning repeated its fix: both names are read, as ENVI's scene.hdr and scene.img.hdr."""
    import scipy.io

    cube = np.ones((8, 8, 3), np.float32)
    path = tmp_path / f"scene{suffix}"
    if suffix == ".npy":
        np.save(path, cube)
    else:
        scipy.io.savemat(path, {"cube": cube})
    (tmp_path / side.format(stem="scene", name=path.name)).write_text(json.dumps([450.0, 550.0, 650.0]))
    np.testing.assert_allclose(open_scene(path)["wavelength"].values, [450.0, 550.0, 650.0])


def test_wavelength_side_files_that_disagree_are_named_and_left_out(tmp_path) -> None:
    np.save(tmp_path / "s.npy", np.ones((8, 8, 3), np.float32))
    (tmp_path / "s.wavelengths.json").write_text(json.dumps([450.0, 550.0, 650.0]))
    (tmp_path / "s.npy.wavelengths.json").write_text(json.dumps({"wavelengths": [0.45, 0.55, 0.65], "unit": "um"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(open_scene(tmp_path / "s.npy")["wavelength"].values, [450.0, 550.0, 650.0])
    (tmp_path / "s.npy.wavelengths.json").write_text(json.dumps([460.0, 560.0, 660.0]))
    with pytest.warns(UserWarning, match=r"s\.npy: its wavelength files s\.wavelengths\.json, "
                                         r"s\.npy\.wavelengths\.json list different wavelengths, so the scene's "
                                         r"wavelengths are unknown.*keep the one that is right"):
        da = open_scene(tmp_path / "s.npy")
    assert "wavelength" not in da.coords
