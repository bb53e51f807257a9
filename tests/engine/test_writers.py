"""Class-map writers: COG GeoTIFF and zarr round trips, atomicity, refusal to overwrite, bad directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr

from hsi_engine.errors import OutputError
from hsi_engine.writers import open_writer, side_paths, write_classmap

H, W, K = 150, 230, 5
NAMES = ["roof", "pavement", "low vegetation", "tree", "water & <wet>"]
PALETTE = [(230, 0, 0), (160, 160, 160), (120, 220, 90), (0, 110, 0), (0, 60, 220)]


@pytest.fixture
def labels():
    rng = np.random.default_rng(1)
    lab = rng.integers(1, K + 1, size=(H, W)).astype(np.uint8)
    lab[:7, :9] = 0  # a nodata corner
    return lab


@pytest.fixture
def probs():
    rng = np.random.default_rng(2)
    p = rng.random((K, H, W)).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def _kw(geo, **extra):
    kw = dict(height=H, width=W, n_classes=K, crs=geo.CRS, transform=geo.affine(), class_names=NAMES,
              palette=PALETTE, block=64)
    kw.update(extra)
    return kw


def _write_tiles(w, labels, probs=None, conf=None, tile=50):
    # tiles deliberately not aligned to the 64-px blocks, with partial tiles at the right and bottom edges
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            sl = (slice(y0, y0 + tile), slice(x0, x0 + tile))
            w.write(y0, x0, labels[sl], None if probs is None else probs[(slice(None), *sl)],
                    None if conf is None else conf[sl])


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_geotiff_is_a_georeferenced_cog_with_palette_and_names(tmp_path, geo, labels):
    out = tmp_path / "map.tif"
    with open_writer(out, **_kw(geo)) as w:
        _write_tiles(w, labels)
    assert _leftovers(tmp_path) == []
    with rasterio.open(out) as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
        np.testing.assert_array_equal(src.read(1), labels)
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == pytest.approx(geo.TRANSFORM)
        assert src.nodata == 0
        # COG layout: internal tiles of `block` and overviews
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)  # COG tiles are >= 128
        assert src.overviews(1) == [2]
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        cmap = src.colormap(1)
        assert cmap[0][3] == 0  # nodata transparent
        for i, c in enumerate(PALETTE, start=1):
            assert cmap[i][:3] == c
        assert json.loads(src.tags()["class_names"]) == NAMES
        assert src.tags(1)["class_5"] == NAMES[4]
        assert src.descriptions[0] == "class"
        # the .aux.xml sidecar was parsed by GDAL (its own metadata domain comes through)...
        assert json.loads(src.tags(1, ns="hsi_engine")["class_names"]) == NAMES
        # overviews were made with MODE: still labels 0..K
        ov = src.read(1, out_shape=(H // 2, W // 2))
        assert set(np.unique(ov)) <= set(range(K + 1))
    # ... and carries GDAL category names and a thematic attribute table (QGIS shows these)
    pam = ET.parse(side_paths(out)["aux"]).getroot()
    cats = [c.text for c in pam.find("PAMRasterBand/CategoryNames")]
    assert cats == ["no data", *NAMES]
    rat = pam.find("PAMRasterBand/GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    rows = [[f.text for f in r] for r in rat.findall("Row")]
    assert rows[4] == ["5", NAMES[4], "0", "60", "220"]


def test_geotiff_probabilities_and_confidence(tmp_path, geo, labels, probs):
    out = tmp_path / "p.tif"
    conf = probs.max(0)
    with open_writer(out, **_kw(geo, probabilities="float16", confidence=True), tags={"precision": "bfloat16"}) as w:
        _write_tiles(w, labels, probs, conf)
    sides = side_paths(out)
    with rasterio.open(sides["probabilities"]) as src:
        assert src.count == K and src.crs.to_epsg() == 32633
        # the run's compute precision, as on the map; the values' storage type beside it (it overwrote 'precision')
        assert src.tags()["precision"] == "bfloat16" and src.tags()["storage_dtype"] == "float16"
        assert src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
        np.testing.assert_allclose(src.read(), probs, atol=1e-3)  # half precision
        assert src.descriptions[0] == f"p({NAMES[0]})"
        assert src.overviews(1)
    with rasterio.open(sides["confidence"]) as src:
        np.testing.assert_array_equal(src.read(1), conf)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("size", [(H, W), (H - 37, W + 21)])
def test_float16_probabilities_raise_no_gdal_error_and_read_back(tmp_path, geo, labels, probs, caplog, size):
    """GDAL reported ``Value -7.2e+29 is beyond range of float16`` on every float16 run: the padding of the
    right/bottom edge blocks (outside the raster) is encoded too. The stored values are the probabilities to
    half precision, with no error report."""
    import logging

    caplog.set_level(logging.DEBUG)
    h, w = size
    p = np.resize(probs, (K, h, w)).astype(np.float32)
    lab = np.resize(labels, (h, w))
    out = tmp_path / "h.tif"
    with open_writer(out, **_kw(geo, height=h, width=w, probabilities="float16", confidence=True)) as wr:
        for y0 in range(0, h, 50):
            for x0 in range(0, w, 50):
                sl = (slice(y0, y0 + 50), slice(x0, x0 + 50))
                wr.write(y0, x0, lab[sl], p[(slice(None), *sl)], p.max(0)[sl])
    reports = [r.getMessage() for r in caplog.records if "signalled an error" in r.getMessage()]
    assert reports == []
    with rasterio.open(side_paths(out)["probabilities"]) as src:
        assert src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16" and np.isnan(src.nodata)
        back = src.read()
        assert back.dtype == np.float32 and back.shape == (K, h, w)
        for level in src.overviews(1):
            ov = src.read(out_shape=(K, -(-h // level), -(-w // level)))
            assert np.isfinite(ov).all() and ov.min() >= 0 and ov.max() <= 1
    assert np.isfinite(back).all()
    np.testing.assert_array_equal(back.astype(np.float16).astype(np.float32), back)  # 16-bit floats stored
    # rounded to nearest, as numpy, torch and the zarr writer store float16 (GDAL's own NBITS=16 truncates: a
    # plain .tif run's probabilities were one half-precision step below a resumable run's)
    np.testing.assert_array_equal(back, p.astype(np.float16).astype(np.float32))
    assert _leftovers(tmp_path) == []


def test_zarr_round_trip(tmp_path, geo, labels, probs):
    out = tmp_path / "map.zarr"
    with open_writer(out, **_kw(geo, probabilities="float32", confidence=True)) as w:
        _write_tiles(w, labels, probs, probs.max(0))
    assert _leftovers(tmp_path) == []
    ds = xr.open_zarr(out)
    assert ds["classes"].dtype == np.uint8 and ds["classes"].dims == ("y", "x")
    assert ds["classes"].encoding["chunks"] == (64, 64)
    np.testing.assert_array_equal(ds["classes"].values, labels)
    np.testing.assert_array_equal(ds["probabilities"].values, probs)
    assert ds["probabilities"].dims == ("class", "y", "x")
    assert ds.rio.crs.to_epsg() == 32633 and ds["classes"].rio.crs.to_epsg() == 32633
    assert tuple(ds["classes"].rio.transform())[:6] == pytest.approx(geo.TRANSFORM)
    y, x = geo.pixel_centres(H, W)
    np.testing.assert_allclose(ds["y"].values, y)
    np.testing.assert_allclose(ds["x"].values, x)
    assert ds["classes"].attrs["class_names"] == NAMES
    assert ds["classes"].attrs["nodata"] == 0 and ds["classes"].rio.nodata == 0
    assert ds.attrs["complete"] == 1
    # the palette is flat, as the in-memory map's: the classes variable writes to NetCDF and GDAL opens it (a
    # nested palette became a 2-D attribute: 'NetCDF: Can't open HDF5 attribute', or a crash)
    assert ds["classes"].attrs["palette"] == [v for rgb in PALETTE for v in rgb]
    ds["classes"].to_netcdf(tmp_path / "classes.nc")
    import rasterio

    with rasterio.open(f"netcdf:{tmp_path / 'classes.nc'}:classes") as f:
        np.testing.assert_array_equal(f.read(1)[::-1] if f.transform.e > 0 else f.read(1), labels)


def test_zarr_coords_passed_through(tmp_path, geo, labels):
    y, x = geo.pixel_centres(H, W)
    out = tmp_path / "c.zarr"
    with open_writer(out, **_kw(geo, transform=None, y_coords=y, x_coords=x)) as w:
        _write_tiles(w, labels)
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds["y"].values, y)
    assert tuple(ds.rio.transform())[:6] == pytest.approx(geo.TRANSFORM)  # derived from the coords


def test_float32_coords_give_their_grid_and_irregular_ones_none():
    """A writer given only pixel-centre coordinates derives its transform from them: float32 ones of a fine grid
    (uneven in their last bits) give the grid; coordinates more than half a pixel off any grid give none."""
    from hsi_engine.writers import _transform_from_coords

    x = (np.float32(13.1) + np.float32(2.7e-4) * np.arange(300, dtype=np.float32)).astype(np.float32)
    y = (np.float32(52.4) - np.float32(2.7e-4) * np.arange(200, dtype=np.float32)).astype(np.float32)
    t = _transform_from_coords(y, x)
    dx, dy = (float(x[-1]) - float(x[0])) / 299, (float(y[-1]) - float(y[0])) / 199
    assert t is not None and tuple(t)[:6] == pytest.approx((dx, 0, float(x[0]) - dx / 2, 0, dy, float(y[0]) - dy / 2))
    gap = np.r_[x[:100], x[101:]]  # a column dropped: every pixel after it one pixel off
    assert _transform_from_coords(y, gap) is None
    assert _transform_from_coords(y, np.full(x.shape, x[0])) is None
    assert _transform_from_coords(y[:1], x) is None


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_exception_inside_with_leaves_nothing(tmp_path, geo, labels, suffix):
    out = tmp_path / f"x{suffix}"
    with pytest.raises(RuntimeError, match="boom"):
        with open_writer(out, **_kw(geo, probabilities="float32", confidence=True)) as w:
            w.write(0, 0, labels[:50, :50])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []



def test_a_temporary_that_cannot_be_removed_does_not_hide_the_error(tmp_path, geo, labels, monkeypatch, caplog):
    """A directory made read-only mid-run: removing the hidden temporary raised PermissionError, which replaced
    the run's own error; now the run's error stands and a log line names the temporary the next run removes."""
    import logging
    from pathlib import Path

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.startswith(".x.tif.tmp-"):
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.writers"), pytest.raises(RuntimeError, match="boom"):
        with open_writer(tmp_path / "x.tif", **_kw(geo)) as w:
            w.write(0, 0, labels[:50, :50])
            raise RuntimeError("boom")
    assert "could not remove the temporary" in caplog.text and "Permission denied" in caplog.text


def test_write_and_open_failures_name_the_file_limits(tmp_path):
    import errno

    from hsi_engine.writers import _open_failed, _write_failed

    big = str(_write_failed(tmp_path / "m.tif", OSError(errno.EFBIG, "File too large")))
    assert "a file grew past" in big and "ulimit -f unlimited" in big
    many = str(_open_failed(tmp_path, OSError(errno.EMFILE, "Too many open files")))
    assert "may open no more files" in many and "ulimit -n" in many and "choose a writable" not in many
    assert "choose a writable location" in str(_open_failed(tmp_path, PermissionError(13, "Permission denied")))
    import resource

    gdal = OSError("TIFFReadDirectory:Failed to read directory at offset 4096")  # what GDAL says past ulimit -f
    assert "ulimit -f" not in str(_write_failed(tmp_path / "m.tif", gdal))
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 1 << 40 if before[1] == resource.RLIM_INFINITY else min(1 << 40, before[1])  # no test file nears it
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        said = str(_write_failed(tmp_path / "m.tif", gdal))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
    assert "a write failed" in said and f"files of at most {limit:,} bytes (ulimit -f)" in said

@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_failed_run_leaves_previous_output_untouched(tmp_path, geo, labels, suffix):
    out = tmp_path / f"keep{suffix}"
    write_classmap(_as_da(labels, geo), out, class_names=NAMES, palette=PALETTE, n_classes=K)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        with open_writer(out, **_kw(geo, overwrite=True)) as w:
            w.write(0, 0, np.ones((10, 10), np.uint8))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    back = _read_labels(out)
    np.testing.assert_array_equal(back, labels)


def _as_da(labels, geo):
    y, x = geo.pixel_centres(H, W)
    return xr.DataArray(labels, dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs(geo.CRS)


def _read_labels(path):
    if path.suffix == ".zarr":
        return xr.open_zarr(path)["classes"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(1)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_refuses_existing_output_without_overwrite(tmp_path, geo, labels, suffix):
    out = tmp_path / f"o{suffix}"
    write_classmap(_as_da(labels, geo), out, n_classes=K)
    with pytest.raises(OutputError, match=rf"{out.name} already exists.*overwrite"):
        open_writer(out, **_kw(geo))
    flipped = np.where(labels > 0, K + 1 - labels, 0).astype(np.uint8)
    write_classmap(_as_da(flipped, geo), out, n_classes=K, overwrite=True)
    np.testing.assert_array_equal(_read_labels(out), flipped)
    assert _leftovers(tmp_path) == []


def test_write_classmap_takes_georef_from_the_dataarray(tmp_path, geo, labels):
    da = _as_da(labels, geo)
    da.attrs.update(class_names=NAMES, palette=[list(c) for c in PALETTE])
    out = write_classmap(da, tmp_path / "w.tif")
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == pytest.approx(geo.TRANSFORM)
        assert json.loads(src.tags()["class_names"]) == NAMES
        assert src.colormap(1)[2][:3] == PALETTE[1]


def test_output_directory_that_cannot_exist(tmp_path, geo):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    for suffix in (".tif", ".zarr"):
        with pytest.raises(OutputError, match=r"afile"):
            open_writer(blocker / f"out{suffix}", **_kw(geo))


def test_unwritable_directory(tmp_path, geo):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 0o500 does not stop this process "
                        "from writing, so an unwritable directory cannot be simulated; the unwritable-path "
                        "case is covered by test_output_directory_that_cannot_exist")
        for suffix in (".tif", ".zarr"):
            with pytest.raises(OutputError, match=rf"{d}.*not writable"):
                open_writer(d / f"out{suffix}", **_kw(geo))
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_no_georeferencing_warns_but_writes(tmp_path, labels, suffix):
    out = tmp_path / f"plain{suffix}"
    with pytest.warns(UserWarning, match="without georeferencing"):
        w = open_writer(out, height=H, width=W, n_classes=K, block=64)
    with w:
        _write_tiles(w, labels)
    np.testing.assert_array_equal(_read_labels(out), labels)
    # both maps on the identity grid: the zarr's pixel-index coordinates (0, 1, ...) put it half a pixel off the tif
    if suffix == ".tif":
        with rasterio.open(out) as f:
            assert f.transform.is_identity
    else:
        ds = xr.open_zarr(out, consolidated=False)
        assert ds["classes"].rio.transform().is_identity


def test_bad_tiles_and_suffix(tmp_path, geo, labels):
    with pytest.raises(OutputError, match=r"'\.png'.*\.tif.*\.zarr"):
        open_writer(tmp_path / "x.png", **_kw(geo))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = open_writer(tmp_path / "t.tif", **_kw(geo))
    try:
        with pytest.raises(ValueError, match="outside"):
            w.write(H - 5, 0, labels[:10, :10])
        with pytest.raises(ValueError, match=r"0 \(nodata\) or 1\.\.5"):
            w.write(0, 0, np.full((4, 4), 9, np.int64))
        # uint8 as well: written, class 9 had no colour or name and read as a real class
        with pytest.raises(ValueError, match=r"labels lie in 0\.\.9; expected 0 \(nodata\) or 1\.\.5"):
            w.write(0, 0, np.array([[0, 9], [1, 2]], np.uint8))
        w.write(0, 0, np.array([[0, K], [1, 2]], np.uint8))  # n_classes itself is a class
        with pytest.raises(ValueError, match="probabilities=None"):
            w.write(0, 0, labels[:4, :4], probabilities=np.zeros((K, 4, 4)))
    finally:
        w.abort()
    assert list(tmp_path.iterdir()) == []


def test_concurrent_geotiff_writers_put_gdal_s_cache_back(tmp_path, geo, labels, probs):
    """Each write entered rasterio.Env(GDAL_CACHEMAX=cap), which put back the value it found: two writers in two
    threads left the other's cap (64 MiB, from 1,205) for the rest of the process. The cap is taken while any
    writer writes, and the value found before the first is put back after the last."""
    import threading

    from rasterio.env import get_gdal_config

    before = get_gdal_config("GDAL_CACHEMAX")
    barrier = threading.Barrier(2)
    errors = []

    def write(name):
        try:
            with open_writer(tmp_path / name, **_kw(geo, probabilities="float32", confidence=True)) as w:
                barrier.wait(timeout=30)  # both writers open: their writes overlap
                _write_tiles(w, labels, probs, probs.max(0), tile=32)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f"{i}.tif",)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert errors == []
    assert get_gdal_config("GDAL_CACHEMAX") == before


def test_flag_meanings_are_cf_words_one_per_class():
    """Only ASCII spaces were replaced: a tab, a no-break or ideographic space gave more words than flag_values,
    an empty name fewer, and '&', '<', accents left the attribute outside CF's characters."""
    import re

    from hsi_engine.writers import flag_meanings

    names = ["Maïs (labouré)", "玉米\u3000无耕", "a\tb", "", "Oak/Broadleaf", "Oak_Broadleaf", "water & <wet>"]
    words = flag_meanings(names).split(" ")
    assert len(words) == len(names) and len(set(words)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_@+.\-]+", w) for w in words)
    assert words[3] == "class_4" and words[5] == "Oak_Broadleaf_6"


def test_k_plus_1_palette_drops_the_class_0_colour(tmp_path):
    import rasterio
    from hsi_engine.writers import write_classmap
    labels = np.array([[1, 2], [3, 0]], np.uint8)
    pal = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]  # class 0 first, then classes 1..3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_classmap(labels, tmp_path / "m.tif", n_classes=3, palette=pal)
    with rasterio.open(out) as ds:
        cmap = ds.colormap(1)
    assert cmap[1][:3] == (255, 0, 0) and cmap[3][:3] == (0, 0, 255)


def test_coordinates_whose_step_drifts_are_not_a_grid():
    import xarray as xr
    from hsi_engine.errors import IrregularGridError
    from hsi_engine.georef import grid_transform
    from hsi_engine.writers import _transform_from_coords
    # each step within 30 % of the mean step, but the steps drift: the last pixel ~7 pixels off the fitted grid
    x = np.concatenate([[0.0], np.cumsum(np.linspace(0.7, 1.3, 99))]) * 30 + 500000
    y = 4000000 - np.arange(50) * 30.0
    assert _transform_from_coords(y, x) is None
    da = xr.DataArray(np.zeros((1, 50, 100), np.float32), dims=("band", "y", "x"), coords={"x": x, "y": y})
    da = da.rio.write_crs("EPSG:32633")
    with pytest.raises(IrregularGridError):
        grid_transform(da)


def test_class_map_overviews_hold_only_classes(tmp_path):
    import rasterio
    from hsi_engine.writers import write_classmap
    labels = np.ones((1024, 1024), np.uint8)
    labels[:, 1::2] = 3  # stripes of classes 1 and 3 (GDAL averages a paletted band's colours: class 6 here)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_classmap(labels, tmp_path / "m.tif", n_classes=8)
    with rasterio.open(out) as ds:
        assert ds.overviews(1), "the COG has no overviews to check"
    with rasterio.open(out, overview_level=0) as ov:
        assert set(np.unique(ov.read(1)).tolist()) <= {1, 3}


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_write_classmap_refuses_classes_past_n_classes_in_any_dtype(tmp_path, dtype):
    """The range was checked for every dtype but uint8: a uint8 map holding class 20 of 16 was written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"labels lie in 20\.\.20; expected 0 \(nodata\) or 1\.\.16"):
            write_classmap(np.full((32, 32), 20, dtype), tmp_path / "m.tif", n_classes=16)
    assert list(tmp_path.iterdir()) == []


def test_int_labels_up_to_n_classes_are_written(tmp_path):
    from hsi_engine.writers import write_classmap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_classmap(np.array([[0, 1], [2, 3]], np.int64), tmp_path / "m.zarr", n_classes=3)
    import xarray as xr
    assert int(xr.open_zarr(out)["classes"].max()) == 3


def test_a_geotiff_map_s_cache_cap_leaves_room_for_the_scene_s_blocks(tmp_path, monkeypatch):
    """The writer's cap on GDAL's block cache (process-wide, while it writes) evicted a GeoTIFF scene's blocks at
    every tile, and the readers decoded them again (3.4x the read time). The cap now adds room for the chunks the
    readers have in flight, sized by tile and chunk, never by the scene."""
    import dask.array as da_
    import xarray as xr

    import hsi_engine
    import ssrn
    from hsi_engine.runner import read_cache_bytes
    from hsi_engine.writers import GeoTiffClassMapWriter

    lazy = xr.DataArray(da_.zeros((200, 1024, 4096), dtype=np.float32, chunks=(200, 256, 256)),
                        dims=("band", "y", "x"))
    # a 128-px tile + 2 * 3 halo touches at most 2 x 2 chunks; 3 windows (2 readers + 1) of 256^2 px x 200 bands
    assert read_cache_bytes(lazy, 128, 3, 2) == 3 * 4 * 256 * 256 * 200 * 4
    assert read_cache_bytes(lazy.isel(x=slice(0, 512)), 128, 3, 2) == read_cache_bytes(lazy, 128, 3, 2)
    assert read_cache_bytes(np.zeros((3, 8, 8)), 128, 3, 2) == 0
    base = open_writer(tmp_path / "a.tif", height=8, width=8, n_classes=2)
    roomy = open_writer(tmp_path / "b.tif", height=8, width=8, n_classes=2, read_cache_bytes=1 << 30)
    assert roomy._cache_bytes == base._cache_bytes + (1 << 30)
    base.abort(), roomy.abort()
    seen = []
    real = GeoTiffClassMapWriter.__init__

    def recording(self, path, *, read_cache_bytes=0, **kw):
        seen.append(read_cache_bytes)
        real(self, path, read_cache_bytes=read_cache_bytes, **kw)

    monkeypatch.setattr(GeoTiffClassMapWriter, "__init__", recording)
    cube = np.random.default_rng(0).normal(size=(20, 16, 16)).astype(np.float32)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=16, height=16, count=20, dtype="float32") as f:
        f.write(cube)
    model = ssrn.SSRN(ssrn.SSRNConfig(bands=20, classes=3, patch=5))
    model.meta = {"mean": [0.0] * 20, "std": [1.0] * 20}
    in_memory = xr.DataArray(cube, dims=("band", "y", "x")).chunk({"y": 8, "x": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scene, out in ((tmp_path / "s.tif", "m.tif"), (in_memory, "n.tif")):
            hsi_engine.classify_to_file(scene, model, tmp_path / out, tile=8, progress=False, readers=1)
    # room for what GDAL reads (a GeoTIFF scene); none where the writer's cap competes with no GDAL read
    assert seen == [read_cache_bytes(hsi_engine.open_scene(tmp_path / "s.tif"), 8, 2, 1), 0] and seen[0] > 0


def test_write_classmap_does_not_guess_which_class_a_name_is(tmp_path):
    """Names of K+1 (class 0's first, as open_writer takes them) without n_classes made a map of K+1 classes whose
    pixel 1 was called 'unlabelled' and 3 'forest': every name one class off. Where the largest class cannot tell,
    it is asked for; where it can (or n_classes is given), the names land on their classes."""
    labels = np.array([[1, 2], [3, 3]], np.uint8)
    names = ["unlabelled", "water", "urban", "forest"]
    with pytest.raises(Exception, match=r"4 class names for a map whose largest class is 3: pass n_classes=3"):
        write_classmap(labels, tmp_path / "a.tif", class_names=names)
    # a crop without the top class: its largest class (2) no more tells than K+1 names did
    with pytest.raises(Exception, match=r"4 class names for a map whose largest class is 2: pass n_classes=3 if the "
                                        r"first name is class 0's \(nodata\), or n_classes=4"):
        write_classmap(np.minimum(labels, 2), tmp_path / "a.tif", class_names=names)
    assert not (tmp_path / "a.tif").exists()
    write_classmap(labels, tmp_path / "b.tif", class_names=names, n_classes=3)
    write_classmap(labels, tmp_path / "c.tif", class_names=names[1:])  # K names, K the largest class: as before
    for out in ("b.tif", "c.tif"):
        with rasterio.open(tmp_path / out) as f:
            assert json.loads(f.tags()["class_names"]) == names[1:]


def test_write_classmap_reads_the_classes_of_classify_s_map_from_its_flag_values(tmp_path):
    """classify()'s map names K classes and carries CF's flag_values 1..K: a map lacking class K is written with K."""
    names = ["water", "urban", "forest", "crop"]
    labels = xr.DataArray(np.array([[1, 2], [3, 3]], np.uint8), dims=("y", "x"),
                          attrs={"class_names": names, "flag_values": [1, 2, 3, 4]})
    write_classmap(labels, tmp_path / "m.tif")
    with rasterio.open(tmp_path / "m.tif") as f:
        assert json.loads(f.tags()["class_names"]) == names


_DIRTY_HEAP_WRITE = """
import sys
import numpy as np
from hsi_engine.writers import open_writer

h, w, k = 20, 20, 16
labels = np.ones((h, w), np.uint8)
probs = np.full((k, h, w), 1 / k, np.float32)
for out, precision in zip(sys.argv[1::2], sys.argv[2::2]):
    # freed random bytes where GDAL's next tile buffers come from (the environment keeps large blocks on the heap),
    # before each map: the one before it freed its own buffers there
    junk = [np.random.default_rng(i).integers(0, 256, 8 << 20, dtype=np.uint8) for i in range(6)]
    del junk
    with open_writer(out, height=h, width=w, n_classes=k, transform=(30, 0, 0, 0, -30, 0), crs="EPSG:32633",
                     probabilities=precision, confidence=True) as wr:
        wr.write(0, 0, labels, probs, probs[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings make the heap dirty")
def test_edge_tiles_are_padded_with_zeros_not_freed_memory(tmp_path):
    """GDAL's COG copy encodes the padding of edge tiles from a buffer it never clears: a 20 x 20 map's 256 x 256
    tiles carried 1.3 MB of whatever the process had freed (here random bytes), in every file of the output.
    One child process writes both maps (float16 and float32 probabilities), the heap dirtied before each."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    maps = {precision: tmp_path / f"map_{precision}.tif" for precision in ("float16", "float32")}
    subprocess.run([sys.executable, "-c", _DIRTY_HEAP_WRITE, *(a for p, out in maps.items() for a in (str(out), p))],
                   env=env, check=True, timeout=300)
    for out in maps.values():
        for f in (out, *(side_paths(out)[k] for k in ("probabilities", "confidence"))):
            assert f.stat().st_size < 32 << 10, f"{f.name} is {f.stat().st_size} bytes: its padding is not zeros"
        with rasterio.open(side_paths(out)["probabilities"]) as src:
            np.testing.assert_allclose(src.read(), 1 / 16, rtol=1e-3)
