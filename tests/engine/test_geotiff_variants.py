"""GeoTIFF variants GDAL writes and open_scene once misread: per-band nodata values (a PAM .aux.xml), a trailing
alpha band (``gdalwarp -dstalpha``), and declared band scales/offsets that ``info`` now names. Tiny rasters of the
real Indian Pines crop, written with rasterio and read back; classified with a tiny random-weight model."""

from __future__ import annotations

import logging
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

import _scale_fixtures as F

import hsi_engine
from hsi_engine.io import scene_info

TILE = 16
SIDE = 16


@pytest.fixture(scope="module")
def crop():
    return F.ip_crop(SIDE, SIDE)  # (24, 16, 16) uint16: one tile


@pytest.fixture(scope="module")
def model(crop, tmp_path_factory):
    return hsi_engine.load_model(F.save_tiny_model(tmp_path_factory.mktemp("model") / "model", crop))


def _write(path, cube, *, tags=None, mask=None, scales=None, offsets=None):
    """``cube`` as a tiled GeoTIFF (no nodata declared), with per-band ``tags``, an internal GDAL ``mask``
    (0 = invalid) and band ``scales`` / ``offsets``."""
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
            rasterio.open(path, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                          dtype=cube.dtype, crs=F.CRS, transform=from_origin(500000, 4500000, 20, 20), tiled=True,
                          blockxsize=16, blockysize=16) as dst:
        dst.write(cube)
        for b, t in enumerate(tags or (), start=1):
            dst.update_tags(b, **t)
        if mask is not None:
            dst.write_mask(np.where(mask, 0, 255).astype(np.uint8))
        if scales is not None:
            dst.scales = scales
        if offsets is not None:
            dst.offsets = offsets
    return path


def _pam_nodata(path, values):
    """Per-band nodata in a PAM .aux.xml beside ``path``, as GDAL writes it for bands that differ."""
    bands = "".join(f'<PAMRasterBand band="{b}"><NoDataValue>{v}</NoDataValue></PAMRasterBand>'
                    for b, v in enumerate(values, start=1))
    path.with_name(path.name + ".aux.xml").write_text(f"<PAMDataset>{bands}</PAMDataset>")


def _reference(cube, holes, model):
    """The map of ``cube`` with ``holes`` NaN (declared nodata), in memory: what the file must give."""
    ref = F.dataarray(np.where(holes[None], np.nan, cube.astype(np.float32)).astype(np.float32))
    ref.attrs["_FillValue"] = np.nan
    return hsi_engine.classify(ref, model, tile=TILE, progress=False).values


def test_per_band_nodata_masks_each_band_by_its_own_value(crop, model, tmp_path, caplog):
    """Band 1 declares nodata 0 and bands 2..N 65535 (GDAL's ``nodata`` is band 1's only): 65535 in band 2 was
    classified, and 0 was masked in bands where it is data. Each band's own value is nodata (class 0), once said."""
    cube = crop.copy()
    holes1, holes2 = np.zeros(crop.shape[1:], bool), np.zeros(crop.shape[1:], bool)
    holes1[3:5, 3:6] = True
    holes2[15, 12] = holes2[0, 15] = True
    cube[0][holes1] = 0
    cube[1][holes2] = 65535
    cube[2, 10, 10] = 0  # band 3's nodata is 65535: this 0 is data
    path = _write(tmp_path / "s.tif", cube)
    _pam_nodata(path, [0] + [65535] * (crop.shape[0] - 1))
    with caplog.at_level(logging.INFO, logger="hsi_engine"):
        scene = hsi_engine.open_scene(path)
    said = [r.getMessage() for r in caplog.records if "different nodata values" in r.getMessage()]
    assert len(said) == 1 and "band 1: 0; bands 2-24: 65535" in said[0]
    assert scene.dtype == np.float32 and np.isnan(scene.rio.nodata)
    holes = holes1 | holes2
    values = scene.values
    assert np.isnan(values[0][holes1]).all() and np.isnan(values[1][holes2]).all()
    assert np.isnan(values).sum() == holes1.sum() + holes2.sum() and values[2, 10, 10] == 0
    np.testing.assert_array_equal(values[:, ~holes], cube[:, ~holes])  # the rest as stored
    hsi_engine.classify_to_file(path, model, tmp_path / "map.tif", tile=TILE, progress=False)
    out = F.read_classes(tmp_path / "map.tif")
    assert (out == 0).sum() == holes.sum() and (out[holes] == 0).all()
    assert "nodata     nan (declared per band: band 1: 0; bands 2-24: 65535; each read as NaN)" in scene_info(path)


def test_per_band_nodata_composes_with_a_gdal_mask_and_bad_bands(crop, model, tmp_path):
    """Per-band nodata and an internal GDAL mask both mask; a band flagged bad by ``bbl`` masks nothing (its
    nodata is read as the band's mean, as for one declared value), nor does a value its dtype cannot hold."""
    cube = crop.copy()
    masked, own, bad = (np.zeros(crop.shape[1:], bool) for _ in range(3))
    masked[13:15, 2] = True
    own[6, 7] = True
    bad[9, 12] = True
    cube[0][own] = 0
    cube[1][bad] = 65535  # band 2 is a bad band
    tags = [{"bbl": "0" if b == 1 else "1"} for b in range(crop.shape[0])]
    path = _write(tmp_path / "s.tif", cube, tags=tags, mask=masked)
    _pam_nodata(path, [0, 65535, -1] + [65535] * (crop.shape[0] - 3))  # -1: no uint16 pixel holds it
    scene = hsi_engine.open_scene(path)
    assert scene["bbl"].values.tolist() == [1, 0] + [1] * (crop.shape[0] - 2)
    assert "gdal_mask" in scene.attrs and "band_nodata" in scene.attrs
    assert np.isnan(scene.values[:, masked]).all() and np.isnan(scene.values[0][own]).all()
    assert np.isnan(scene.values[1][bad]).all() and np.isnan(scene.values).sum() == \
        masked.sum() * crop.shape[0] + own.sum() + bad.sum()
    with pytest.warns(UserWarning, match="bbl flags bands 1 .0-based. bad"):
        out = hsi_engine.classify(scene, model, tile=TILE, progress=False).values
    assert (out[masked | own] == 0).all() and (out == 0).sum() == (masked | own).sum() and out[bad].all()


def _with_alpha(path, cube, alpha, *, tags=None, scales=None):
    _write(path, np.concatenate([cube, alpha[None]]), tags=tags, scales=scales)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (cube.shape[0] - 1) + [ColorInterp.alpha]
        dst.descriptions = tuple(f"b{b}" for b in range(1, cube.shape[0] + 2))
    return path


def test_a_trailing_alpha_band_is_left_out_and_its_zeros_are_nodata(crop, model, tmp_path, caplog):
    """A ``gdalwarp -dstalpha`` file's last band is alpha: it was read as band N+1 (the model refused the scene)
    and, dropped by hand, its warp fill (alpha 0) was classified. It is left out, everywhere, and its 0s are NaN."""
    holes = np.zeros(crop.shape[1:], bool)
    holes[:, :3] = holes[10, 11] = True
    n = crop.shape[0]
    wl = np.round(np.linspace(400, 2400, n + 1), 1)
    tags = [{"wavelength": str(w), "wavelength_units": "nm", "bbl": "1"} for w in wl]
    path = _with_alpha(tmp_path / "s.tif", crop, np.where(holes, 0, 65535).astype(np.uint16), tags=tags,
                       scales=(0.0001,) * (n + 1))
    with caplog.at_level(logging.INFO, logger="hsi_engine"):
        scene = hsi_engine.open_scene(path)
    assert sum("alpha band" in r.getMessage() for r in caplog.records) == 1
    assert scene.sizes["band"] == n and scene["band"].values.tolist() == list(range(1, n + 1))
    np.testing.assert_allclose(scene["wavelength"].values, wl[:n])
    assert scene["bbl"].size == n and len(scene.attrs["long_name"]) == n and len(scene.encoding["scales"]) == n
    assert np.isnan(scene.values[:, holes]).all() and not np.isnan(scene.values[:, ~holes]).any()
    out = hsi_engine.classify(scene, model, tile=TILE, progress=False).values
    np.testing.assert_array_equal(out, _reference(crop, holes, model))
    assert (out == 0).sum() == holes.sum()
    assert f"mask       alpha band {n + 1}: pixels with alpha 0 read as NaN" in scene_info(path)


@pytest.mark.parametrize("bands, alpha_at, kept", [(4, 4, 3), (3, 1, 3)], ids=["rgba-gdal-masks-too", "not-last"])
def test_alpha_band_where_gdal_masks_by_it_or_not_last(tmp_path, bands, alpha_at, kept):
    """With 4 bands GDAL itself masks by the alpha band: it is applied once. An alpha band that is not last is
    left as it is (no scene writes one)."""
    cube = np.full((bands, 4, 5), 255, np.uint16)
    cube[alpha_at - 1, 0, 0] = 0
    path = _write(tmp_path / "s.tif", cube)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.alpha if b == alpha_at else ColorInterp.gray if b == 1 else
                           ColorInterp.undefined for b in range(1, bands + 1)]
    scene = hsi_engine.open_scene(path)
    assert scene.sizes["band"] == kept
    if kept < bands:
        assert scene.attrs["gdal_mask"].startswith("alpha band 4:") and np.isnan(scene.values).sum() == kept
    else:
        assert scene.dtype == np.uint16 and "gdal_mask" not in scene.attrs


@pytest.mark.skipif(shutil.which("gdalwarp") is None, reason="the gdalwarp command is not installed")
def test_gdalwarp_dstalpha_output(crop, tmp_path):
    """The real thing: a warped scene's fill is alpha 0, and exactly those pixels are nodata."""
    src = _write(tmp_path / "s.tif", crop)
    warped = tmp_path / "w.tif"
    # a target extent wider than the scene, as a mosaic's: the margin is the warp's fill
    subprocess.run(["gdalwarp", "-q", "-dstalpha", "-te", "499900", "4499420", "500580", "4500100", str(src),
                    str(warped)], check=True)
    with rasterio.open(warped) as f:
        fill = f.read(f.count) == 0
    assert fill.any()
    scene = hsi_engine.open_scene(warped)
    assert scene.sizes["band"] == crop.shape[0]
    np.testing.assert_array_equal(np.isnan(scene.values).any(axis=0), fill)


@pytest.mark.parametrize("scales, offsets, expect, absent", [
    ((0.0001,) * 3, None, ["scale      0.0001 (all bands; declared, not applied: values are read as stored)"],
     ["offset"]),
    ((0.0001, 0.0001, 0.0002), (-0.1,) * 3, ["scale      0.0001..0.0002 (per band, 3 bands; declared, not applied",
                                             "offset     -0.1 (all bands; declared, not applied"], []),
    (None, None, [], ["scale", "offset"]),
], ids=["one-scale", "per-band-scale-and-offset", "none"])
def test_info_names_declared_scales_and_offsets(tmp_path, scales, offsets, expect, absent):
    """EnMAP-style band scales (kept in the encoding, not applied) were invisible in ``info``."""
    path = _write(tmp_path / "s.tif", np.ones((3, 4, 5), np.uint16), scales=scales, offsets=offsets)
    with warnings.catch_warnings():  # rioxarray's note on per-band scales is not passed on: they are kept
        warnings.simplefilter("error", UserWarning)
        text = scene_info(path)
    for line in expect:
        assert line in text
    for word in absent:
        assert not any(line.startswith(word) for line in text.splitlines())
