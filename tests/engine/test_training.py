"""Training on a georeferenced scene and a label raster on its grid (``--labels``): the loader's checks, its
nodata handling (the engine's), and the command line on a written GeoTIFF pair and on the real EnMAP tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from hsi_engine.training import load_labelled_raster, train
from ssrn.data import DataError, standardize_scene

T = from_origin(366015.0, 5809965.0, 30.0, 30.0)
NODATA = -32768


def _write_scene(path, *, bands=12, h=20, w=24, seed=0, hole=(4, 5), bbl=True, crs="EPSG:32633"):
    rng = np.random.default_rng(seed)
    cube = rng.integers(200, 6000, size=(bands, h, w)).astype(np.int16)
    cube[3] = NODATA  # a bad band (bbl 0), nodata in every pixel, as EnMAP's
    cube[:, hole[0], hole[1]] = NODATA  # a real hole
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype="int16", nodata=NODATA,
                       crs=crs, transform=T) as dst:
        dst.write(cube)
        for b in range(bands):
            dst.update_tags(b + 1, wavelength=str(450.0 + 20 * b), **({"bbl": "0" if b == 3 else "1"} if bbl else {}))
    return cube


def _write_labels(path, labels, *, transform=T, crs="EPSG:32633", nodata=None, names=None, colours=True):
    with rasterio.open(path, "w", driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(labels.astype(np.uint8), 1)
        if names:
            dst.update_tags(class_names=json.dumps(names))
        if colours:
            dst.write_colormap(1, {i: (10 * i, 20 * i, 30 * i, 255) for i in range(1, int(labels.max()) + 1)})


def _labels(h=20, w=24):
    lab = np.zeros((h, w), np.uint8)
    lab[2:8, 2:10] = 1
    lab[10:18, 3:12] = 2
    lab[4:16, 14:22] = 3
    return lab


def test_a_label_raster_without_a_colour_table_gets_the_maps_default_colours(tmp_path):
    """Random colours had made a model's classes near-black and look-alike (grass [19, 4, 44]); the default
    palette the GeoTIFF maps use (tab20) is stored instead."""
    from ssrn.palette import default_palette

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert sc.palette == [list(c) for c in default_palette(3)] and sc.palette[0] == [31, 119, 180]


def test_a_scene_and_its_label_raster_make_a_training_scene_masked_as_the_engine_masks(tmp_path):
    """The hole's label is dropped and its spectrum zeroed, the bad band does not mask anything, the label raster's
    nodata is unlabelled, names and colours come from the raster; the statistics are those of the pixels with
    data and the normalised cube is, bit for bit, what the engine classifies."""
    from ssrn.normalise import normalise_into

    cube = _write_scene(tmp_path / "s.tif")
    lab = _labels()
    lab[4, 5] = 2  # labelled, but a hole in the scene
    lab[0, 0] = 255  # the label raster's nodata
    _write_labels(tmp_path / "l.tif", lab, nodata=255, names=["roof", "tree", "water"])
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert sc.labels[4, 5] == 0 and sc.labels[0, 0] == 0 and sc.labels.max() == 3
    assert sc.class_names == ["roof", "tree", "water"] and sc.palette[1] == [20, 40, 60]
    assert sc.nodata == NODATA and list(sc.nodata_bands) == [b for b in range(12) if b != 3]
    assert sc.wavelengths[:2] == [450.0, 470.0]
    normed, mean, std = standardize_scene(sc)
    valid = np.ones((20, 24), bool)
    valid[4, 5] = False
    np.testing.assert_allclose(mean, cube[:, valid].astype(np.float64).mean(axis=1))
    assert mean[3] == NODATA and std[3] == 1.0
    assert (normed[:, 4, 5] == 0).all()
    engine = np.empty(cube.shape, np.float32)
    bad, _ = normalise_into(cube, mean, std, float(NODATA), engine, sc.nodata_bands)
    engine[:, bad] = 0
    assert np.array_equal(normed.view(np.uint32), engine.view(np.uint32))


@pytest.mark.parametrize("what, kw, match", [
    ("grid", {"transform": from_origin(366030.0, 5809965.0, 30.0, 30.0)},  # half a pixel off
     r"is not the scene's \(30.0, 0.0, 366015.0.* and not on its pixels; warp the labels"),
    ("crs", {"crs": "EPSG:32632"}, "the labels are in EPSG:32632, the scene in EPSG:32633"),
    ("shape", {}, r"label map has shape \(20, 23\) but the scene is 20 x 24"),
])
def test_a_label_raster_off_the_scene_grid_is_refused_with_the_fix(tmp_path, what, kw, match):
    """Another CRS, a grid off the scene's pixels, or (a label map without georeferencing, .npy) another size."""
    _write_scene(tmp_path / "s.tif")
    if what == "shape":
        np.save(tmp_path / "l.npy", _labels()[:, :23])
    else:
        _write_labels(tmp_path / "l.tif", _labels(), **kw)
    with pytest.raises(DataError, match=match):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / ("l.npy" if what == "shape" else "l.tif"))


def test_a_scene_with_a_transform_and_no_crs_is_placed_by_it(tmp_path):
    """The label grid was compared only for a scene with a CRS: a GeoTIFF with a transform and no CRS took labels
    half a pixel off, or stored south-up, row for row (782 of 1,024 EnMAP labels upside down)."""
    import warnings

    from rasterio.transform import Affine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning-like notes on a CRS-less file
        _write_scene(tmp_path / "s.tif", crs=None)
    lab = _labels()
    _write_labels(tmp_path / "half.tif", lab, transform=from_origin(366030.0, 5809965.0, 30.0, 30.0))
    with pytest.raises(DataError, match=r"is not the scene's \(30.0, 0.0, 366015.0.* and not on its pixels"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "half.tif")
    south_up = Affine(30.0, 0.0, 366015.0, 0.0, 30.0, 5809965.0 - 30.0 * 20)
    _write_labels(tmp_path / "south.tif", lab[::-1], transform=south_up)
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "south.tif")
    expect = lab.copy()
    expect[4, 5] = 0  # the scene's hole
    np.testing.assert_array_equal(sc.labels, expect)


def test_a_band_flagged_good_but_empty_is_named_when_it_masks_every_pixel(tmp_path):
    """Every labelled pixel was nodata because one band flagged good held nodata everywhere; the error named
    neither the band nor the fix (classify's names both)."""
    _write_scene(tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif", "r+") as f:
        f.write(np.full((20, 24), NODATA, np.int16), 6)
    _write_labels(tmp_path / "l.tif", _labels())
    with pytest.raises(DataError, match=r"no labelled pixel with data .*: bands \[5\] \(0-based\) hold nodata in "
                                        r"every pixel yet the scene flags them good.*'bbl'"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")


def test_float_labels_with_nan_and_no_nodata_name_the_fix(tmp_path):
    _write_scene(tmp_path / "s.tif")
    lab = _labels().astype(np.float32)
    lab[0, :3] = np.nan
    with rasterio.open(tmp_path / "l.tif", "w", driver="GTiff", height=20, width=24, count=1, dtype="float32",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(lab, 1)
    with pytest.raises(DataError, match=r"found 3 NaN or inf cells: set them to 0 \(unlabelled\), or declare NaN "
                                        r"as the label file's nodata"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    lab[0, :3] = 1.5
    with rasterio.open(tmp_path / "l.tif", "r+") as dst:
        dst.write(lab, 1)
    with pytest.raises(DataError, match=r"fractional values such as 1.5"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")


def test_a_scene_without_crs_or_regular_grid_takes_labels_pixel_for_pixel(tmp_path):
    """Placing CRS-less scenes by their transform must not refuse one whose x/y place nothing (uneven
    coordinates, no CRS): its .npy labels are its pixels'."""
    import xarray as xr

    cube = np.random.default_rng(0).integers(200, 6000, size=(12, 20, 24)).astype(np.int16)
    x = np.r_[np.arange(12), np.arange(20, 32)].astype(float)
    xr.Dataset({"r": (("band", "y", "x"), cube)}, coords={"x": x, "y": np.arange(20.0)}).to_netcdf(
        tmp_path / "irr.nc", engine="h5netcdf")
    np.save(tmp_path / "l.npy", _labels())
    sc = load_labelled_raster(tmp_path / "irr.nc", tmp_path / "l.npy")
    np.testing.assert_array_equal(sc.labels, _labels())


def test_a_larger_label_raster_on_the_scene_grid_is_cut_to_the_scene(tmp_path):
    """Land-cover rasters cover more than one scene: on the same pixel grid, the scene's window is read (pixels
    beyond the raster unlabelled), as for the Berlin scenes and their 400 x 220 land-cover map."""
    _write_scene(tmp_path / "s.tif")
    big = np.zeros((40, 30), np.uint8)
    big[5:25, 3:27] = _labels()[:, :24]  # the scene's pixels lie 5 rows down, 3 columns right in the raster
    _write_labels(tmp_path / "l.tif", big, transform=from_origin(366015.0 - 3 * 30, 5809965.0 + 5 * 30, 30, 30))
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    want = _labels()
    want[4, 5] = 0  # the scene's hole
    np.testing.assert_array_equal(sc.labels, want)
    # a raster starting 5 rows below the scene's top: the scene's rows above it are unlabelled
    _write_labels(tmp_path / "edge.tif", big[10:, :], transform=from_origin(366015.0 - 3 * 30, 5809965.0 - 5 * 30,
                                                                              30, 30))
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "edge.tif")
    assert (sc.labels[:5] == 0).all()
    np.testing.assert_array_equal(sc.labels[5:], want[5:])


def test_a_south_up_scene_takes_the_labels_of_its_own_ground_rows(tmp_path):
    """A scene flipped to south-up and saved as NetCDF keeps a stale north-up GeoTransform: the label window was
    taken from it, rows 63..126 of the raster instead of 0..63, silently. The coordinates place the scene (with
    the engine's warning) and a north-up raster's window is read flipped, row for row."""
    import hsi_engine

    _write_scene(tmp_path / "s.tif", h=20, w=24)
    rows = np.repeat(np.arange(1, 41, dtype=np.uint8)[:, None], 24, 1)  # 40 rows; label = ground row + 1
    _write_labels(tmp_path / "rows.tif", rows)
    north = load_labelled_raster(tmp_path / "s.tif", tmp_path / "rows.tif").labels
    assert north[0, 0] == 1 and north[19, 0] == 20
    scene = hsi_engine.open_scene(tmp_path / "s.tif").load()
    scene.isel(y=slice(None, None, -1)).to_dataset(name="r").to_netcdf(tmp_path / "south.nc")
    with pytest.warns(UserWarning, match="rows run upwards"):
        south = load_labelled_raster(tmp_path / "south.nc", tmp_path / "rows.tif").labels
    np.testing.assert_array_equal(south, north[::-1])


def test_the_legend_of_the_label_raster_decides_the_classes(tmp_path):
    """A land-cover raster names more classes than one scene holds (or its last class lies only on nodata): the
    model keeps the legend's K classes (empty ones included) and its colours, instead of refusing the names; a
    raster with the scene's origin but a larger extent is cut too; inf in a bad band does not leave the band
    unstandardised."""
    cube = _write_scene(tmp_path / "s.tif")
    big = np.zeros((30, 30), np.uint8)
    big[:20, :24] = _labels()
    big[25:, 25:] = 5  # outside the scene
    names = ["roof", "tree", "water", "soil", "pool"]
    _write_labels(tmp_path / "l.tif", big, names=names)
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert sc.class_names == names and sc.n_classes == 5 and sc.labels.max() == 3
    assert sc.palette[4] == [50, 100, 150]
    with pytest.raises(DataError, match=r"class_names= \(--class-names\) gives 2 class names \(a, b\), but the "
                                         r"labels of .*l\.tif run 1\.\.3; give one name per class"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif", class_names=["a", "b"])
    with rasterio.open(tmp_path / "f.tif", "w", driver="GTiff", height=20, width=24, count=12, dtype="float32",
                       crs="EPSG:32633", transform=T, nodata=NODATA) as dst:
        f = cube.astype(np.float32)
        f[3] = np.nan
        f[3, 0, 0] = np.inf
        dst.write(f)
        for b in range(12):
            dst.update_tags(b + 1, bbl="0" if b == 3 else "1")
    _, mean, std = standardize_scene(load_labelled_raster(tmp_path / "f.tif", tmp_path / "l.tif"))
    assert mean[3] == 0 and std[3] == 1 and np.isfinite(mean).all() and np.isfinite(std).all()


def test_train_from_a_geotiff_and_its_labels_then_classify(tmp_path, capsys):
    """The command line end to end: train on the pair, then classify the scene with the model; the map's legend
    carries --class-names, and --class-names without --labels is refused before anything is read."""
    from hsi_engine.cli import main

    _write_scene(tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif", "r+") as f:  # EnMAP's band scale, not applied: recorded
        f.scales = [1e-4] * 12
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    model = tmp_path / "model"
    assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                 "--class-names", "roof, tree, water", "--out", str(model), "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu"]) == 0
    meta = json.loads((model / "model.json").read_text())["meta"]
    assert meta["class_names"] == ["roof", "tree", "water"] and meta["source"].endswith("l.tif")
    assert meta["scales"] == [1e-4] * 12 and meta["offsets"] == [0.0] * 12
    assert meta["grid"]["transform"] == list(T)[:6] and meta["grid"]["shape"] == [20, 24]  # the split, placed
    assert rasterio.crs.CRS.from_wkt(meta["grid"]["crs"]).to_epsg() == 32633
    assert main(["classify", str(tmp_path / "s.tif"), "--model", str(model), "--out", str(tmp_path / "m.tif")]) == 0
    with rasterio.open(tmp_path / "m.tif") as f:
        out = f.read(1)
        assert json.loads(f.tags()["class_names"]) == ["roof", "tree", "water"] and f.transform == T
    assert out[4, 5] == 0 and (out > 0).sum() == out.size - 1
    assert main(["train", "--dataset", "indian_pines", "--class-names", "a,b", "--out", str(tmp_path / "x")]) == 2
    assert "--class-names" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_mosaic_without_band_metadata_keeps_its_empty_bands_out_of_the_mask(tmp_path):
    """``rio merge`` drops the per-band bbl: a band with no data in any pixel is then taken as bad in training,
    recorded in the model (``bad_bands``), and left out of the nodata test when the same scene is classified
    without a bbl, which would otherwise mask every pixel."""
    from hsi_engine.cli import main

    _write_scene(tmp_path / "s.tif", bbl=False)
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert list(sc.nodata_bands) == [b for b in range(12) if b != 3] and (sc.labels > 0).sum() == 48 + 72 + 96 - 1  # the hole
    model = tmp_path / "model"
    assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                 "--out", str(model), "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    assert json.loads((model / "model.json").read_text())["meta"]["bad_bands"] == [3]
    assert main(["classify", str(tmp_path / "s.tif"), "--model", str(model), "--out", str(tmp_path / "m.tif")]) == 0
    with rasterio.open(tmp_path / "m.tif") as f:
        out = f.read(1)
    assert out[4, 5] == 0 and (out > 0).sum() == out.size - 1


def test_what_a_bad_band_holds_does_not_change_the_map(tmp_path):
    """Training reads its bad bands as 0; so does the engine for a model that records them, whatever the scene
    holds there (-32768, 0, NaN, another sensor's fill), with or without the scene's bbl. Before, a zarr-trained
    model put every pixel of the same scene as a GeoTIFF into one class. A scene flagging more bands bad than the
    model was trained without is warned about."""
    import warnings as w

    import hsi_engine

    from hsi_engine.cli import main

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    model_dir = tmp_path / "model"

    assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                 "--out", str(model_dir), "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    model = hsi_engine.load_model(model_dir)
    scene = hsi_engine.open_scene(tmp_path / "s.tif")
    ref = hsi_engine.classify(scene, model, progress=False).values
    assert ref[4, 5] == 0 and (ref > 0).sum() == ref.size - 1
    for fill in (0, 12345, np.nan):
        other = scene.astype(np.float32).copy()
        other[3] = fill
        for s in (other, other.drop_vars("bbl")):
            np.testing.assert_array_equal(hsi_engine.classify(s, model, progress=False).values, ref)
    more = scene.copy()
    more["bbl"] = ("band", np.where(np.isin(np.arange(12), [3, 7]), 0, 1).astype(np.uint8))
    with w.catch_warnings(record=True) as seen:
        w.simplefilter("always")
        hsi_engine.classify(more, model, progress=False)
    assert any("flags bands 7 (0-based) bad, but the model was trained with data in them" in str(x.message) for x in seen)


def test_a_band_constant_in_training_is_read_as_0_when_classifying(tmp_path, caplog):
    """A band with one value in every training pixel (a dead detector) is trained as 0 ((c - c) / 1): the model
    read it raw on a scene with data there, hundreds of standard deviations off, and mapped every pixel to one
    class without a word. It is recorded as a bad band, with a warning, so any value there gives the same map."""
    import logging

    import hsi_engine
    from hsi_engine.cli import main

    cube = _write_scene(tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif", "r+") as f:
        band = f.read(11)
        band[band != NODATA] = 500  # constant on the pixels with data; the hole stays nodata
        f.write(band, 11)
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    model_dir = tmp_path / "model"
    with caplog.at_level(logging.WARNING, logger="ssrn.train"):
        assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                     "--out", str(model_dir), "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    assert "bands [10] hold one value in every pixel with data" in caplog.text
    assert json.loads((model_dir / "model.json").read_text())["meta"]["bad_bands"] == [3, 10]
    model = hsi_engine.load_model(model_dir)
    scene = hsi_engine.open_scene(tmp_path / "s.tif")
    ref = hsi_engine.classify(scene, model, progress=False).values
    live = scene.copy(data=np.where(np.arange(12)[:, None, None] == 10, cube[0], scene.values))
    np.testing.assert_array_equal(hsi_engine.classify(live, model, progress=False).values, ref)


def test_a_bad_band_with_data_and_no_nodata_is_0_in_training_as_in_the_engine(tmp_path):
    """A scene with a bbl but no declared nodata whose bad band varies (AVIRIS's water-vapour bands): training
    reads it as 0, as the engine does for the model's bad bands, so the engine's map is patch mode's on the
    training input, pixel for pixel."""
    import torch

    import hsi_engine
    from hsi_engine.cli import main
    from hsi_engine.fused import patch_forward

    rng = np.random.default_rng(3)
    cube = rng.integers(200, 6000, size=(12, 20, 24)).astype(np.int16)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=20, width=24, count=12, dtype="int16",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(cube)
        for b in range(12):
            dst.update_tags(b + 1, bbl="0" if b == 3 else "1")
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    normed, _, _ = standardize_scene(sc)
    assert sc.nodata is None and (normed[3] == 0).all() and not np.signbit(normed[3]).any()
    assert normed[2].std() > 0.5
    assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                 "--out", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    model = hsi_engine.load_model(tmp_path / "m")
    got = hsi_engine.classify(hsi_engine.open_scene(tmp_path / "s.tif"), model, progress=False).values
    with torch.no_grad():
        logits = patch_forward(model, torch.from_numpy(normed))  # (pixels, K), row-major: patch mode
    np.testing.assert_array_equal(got, logits.argmax(1).numpy().reshape(got.shape) + 1)


def test_class_names_of_an_envi_classification_label_file(tmp_path):
    """An ENVI classification (as the EnMAP-Box writes land-cover maps) names its classes in the header's
    ``class names``, the first one class 0's: those name the model's classes."""
    _write_scene(tmp_path / "s.tif")
    with rasterio.open(tmp_path / "l.bsq", "w", driver="ENVI", height=20, width=24, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(_labels(), 1)
    hdr = tmp_path / "l.hdr"
    hdr.write_text(hdr.read_text() + "file type = ENVI Classification\nclasses = 4\n"
                   "class names = {unclassified, roof, tree, water}\n")
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.bsq")
    assert sc.class_names == ["roof", "tree", "water"]
    # given by its header, as --dataset takes an ENVI scene (GDAL refused it: 'select the data file')
    by_header = load_labelled_raster(tmp_path / "s.tif", hdr)
    assert by_header.class_names == sc.class_names
    np.testing.assert_array_equal(by_header.labels, sc.labels)


def test_train_on_a_real_enmap_tile_and_its_labels(data_dir, tmp_path):
    """A real EnMAP L2A tile (224 bands, bad bands 130-135 nodata everywhere) and its land-cover labels: the
    bad bands mask nothing, every labelled pixel is kept, and the model classifies the tile."""
    from hsi_engine.cli import main

    d = data_dir / "enmap_potsdam"
    img, lab = d / "images" / "enmap_potsdam_tile_128_128.tif", d / "labels" / "enmap_potsdam_tile_128_128.tif"
    sc = load_labelled_raster(img, lab)
    with rasterio.open(lab) as f:
        assert (sc.labels > 0).sum() == (f.read(1) > 0).sum() == 399
    assert sc.n_classes == 6 and len(sc.cube) == 224
    model = tmp_path / "m"
    assert main(["train", "--dataset", str(img), "--labels", str(lab), "--out", str(model), "--epochs", "1",
                 "--device", "cpu"]) == 0
    assert main(["classify", str(img), "--model", str(model), "--out", str(tmp_path / "map.tif")]) == 0
    with rasterio.open(tmp_path / "map.tif") as f, rasterio.open(img) as src:
        assert f.transform == src.transform and (f.read(1) > 0).all()


def test_a_real_envi_scene_and_a_larger_landcover_raster(data_dir):
    """The Berlin EnMAP ENVI scene (80 x 60, nodata -99) and the 400 x 220 land-cover raster of its area, on the
    same 30 m grid: the labels are its window (rows 69.., cols 84..); the 9 m HyMap scene is refused with the fix."""
    from rasterio.windows import Window

    d = data_dir / "berlin_urban_gradient"
    lc = d / "landcover_berlin_polygon_30m_l3.tif"
    sc = load_labelled_raster(d / "EnMAP_BerlinUrbanGradient.hdr", lc)
    with rasterio.open(lc) as f:
        want = f.read(1, window=Window(84, 69, 60, 80))
    np.testing.assert_array_equal(sc.labels, want.astype(np.int64))
    assert sc.nodata == -99 and (sc.labels > 0).sum() == 832
    with pytest.raises(DataError, match=r"not on its pixels; warp the labels .*rio warp .*landcover_berlin_polygon_"
                                        r"30m_l3.tif out.tif --like .*HyMap02_Berlin_Urban_Gradient_2009.bsq\)"):
        load_labelled_raster(d / "HyMap02_Berlin_Urban_Gradient_2009.hdr", lc)  # rio cannot open the header


def test_training_without_validation_pixels_says_what_it_watches(tmp_path, caplog):
    """--val-fraction 0: the epoch lines say the best epoch is chosen on the training loss (they printed the
    training loss as 'val_loss' beside 'val_acc nan')."""
    from hsi_engine.cli import main

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels(), colours=False)
    with caplog.at_level("INFO", logger="ssrn.train"):
        assert main(["train", "--dataset", str(tmp_path / "s.tif"), "--labels", str(tmp_path / "l.tif"),
                     "--out", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "32", "--val-fraction", "0",
                     "--device", "cpu"]) == 0
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert len(epochs) == 1 and "the best epoch is chosen on the training loss" in epochs[0]
    assert "val_acc nan" not in epochs[0]


def test_class_names_from_gdal_categories_beside_a_label_geotiff(tmp_path):
    """A land-cover GeoTIFF from QGIS or gdal_translate names its classes as GDAL categories in ``.aux.xml``
    (entry i names value i; entry 0 is the unlabelled value's)."""
    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels())
    (tmp_path / "l.tif.aux.xml").write_text(
        '<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames><Category>unclassified</Category>'
        "<Category>roof</Category><Category>tree &amp; shrub</Category><Category>water</Category><Category />"
        "</CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n")
    sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert sc.class_names == ["roof", "tree & shrub", "water"]
    assert load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif", class_names=["a", "b", "c"]).class_names \
        == ["a", "b", "c"]  # given names win


def test_class_names_written_by_rio_to_raster_are_read(tmp_path, caplog):
    """A map saved with ``labels.rio.to_raster`` (README's Python example) carries ``class_names`` as a Python
    list's repr, not JSON: ``train --labels`` on it stopped with a JSONDecodeError traceback. Read either; a tag
    that is neither is ignored with a warning naming ``--class-names``."""
    import rioxarray  # noqa: F401
    import xarray as xr

    _write_scene(tmp_path / "s.tif")
    names = ["roof", "tree's shade", "water"]
    da = xr.DataArray(_labels(), dims=("y", "x"), attrs={"class_names": names})
    da.rio.write_crs("EPSG:32633", inplace=True).rio.write_transform(T, inplace=True)
    da.rio.to_raster(tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as f:
        assert f.tags()["class_names"].startswith("['roof'")  # what rioxarray writes
    assert load_labelled_raster(tmp_path / "s.tif", tmp_path / "map.tif").class_names == names
    _write_labels(tmp_path / "odd.tif", _labels(), colours=False)
    with rasterio.open(tmp_path / "odd.tif", "r+") as f:
        f.update_tags(class_names="roof; tree; water")
    with caplog.at_level("WARNING", logger="ssrn.data"):
        sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "odd.tif")
    assert sc.class_names == ["class 1", "class 2", "class 3"]
    assert "is not a list of names" in caplog.text and "--class-names" in caplog.text


def test_a_label_raster_beside_the_scene_is_refused_as_not_overlapping(tmp_path):
    """A label raster on the scene's grid that covers another area: named as such (it read as 'no labelled pixel
    with data' after a log line of negative offsets)."""
    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels(), transform=from_origin(366015.0 + 100 * 30, 5809965.0, 30, 30))
    with pytest.raises(DataError, match=r"the labels do not overlap the scene: on the labels' grid the scene is "
                                        r"rows 0\.\.19, cols -100\.\.-77, the labels rows 0\.\.19, cols 0\.\.23"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")


def test_nan_pixels_without_a_nan_nodata_are_left_out_with_a_warning_naming_the_engine_option(tmp_path, caplog):
    """Training left NaN pixels out silently, and classifying the same scene with the new model then failed
    (NonFiniteInputError) until --nodata nan was given: the training says so."""
    rng = np.random.default_rng(0)
    cube = rng.normal(1000, 100, size=(12, 20, 24)).astype(np.float32)
    cube[:, 6, 7] = np.nan  # a labelled pixel
    cube[2, 0, 23] = np.nan  # an unlabelled one, NaN in one band
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=20, width=24, count=12, dtype="float32",
                       crs="EPSG:32633", transform=T) as dst:
        dst.write(cube)
    _write_labels(tmp_path / "l.tif", _labels())
    with caplog.at_level("WARNING", logger="ssrn.data"):
        sc = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert sc.labels[6, 7] == 0
    msg = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert len(msg) == 1 and "2 pixels hold NaN or inf (1 of them labelled)" in msg[0] and "--nodata nan" in msg[0]
    # with a nodata value declared the engine masks NaN as well: no such advice
    with rasterio.open(tmp_path / "s.tif", "r+") as dst:
        dst.nodata = -9999.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssrn.data"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert not [r for r in caplog.records if "NaN or inf" in r.getMessage()]


def test_a_scene_whose_coordinates_are_not_evenly_spaced_is_a_data_error(tmp_path):
    """The irregular-grid error switched the CRS check and the label window off (caught as 'rioxarray cannot
    tell'): it is the training's DataError, naming the coordinates."""
    import hsi_engine

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels())
    scene = hsi_engine.open_scene(tmp_path / "s.tif").load()
    scene.isel(x=np.r_[0:8, 16:24]).to_dataset(name="r").to_netcdf(tmp_path / "gap.nc")
    with pytest.raises(DataError, match="its x coordinates are not evenly spaced"):
        load_labelled_raster(tmp_path / "gap.nc", tmp_path / "l.tif")


def test_zero_labels_beside_a_negative_nodata_are_named_as_maybe_zero_based(tmp_path, caplog):
    """Classes 0..2 with 255 declared nodata (classes counted from 0) lost class 0 as unlabelled without a word."""
    import logging

    _write_scene(tmp_path / "s.tif")
    lab = (_labels().astype(np.int16) - 1) % 256  # 0-based classes, the background 255
    _write_labels(tmp_path / "l.tif", lab, nodata=255, colours=False)
    with caplog.at_level(logging.WARNING, "ssrn"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert any("declares nodata 255 and also holds 0" in r.getMessage() and "add 1" in r.getMessage()
               for r in caplog.records), caplog.text
    caplog.clear()
    _write_labels(tmp_path / "l.tif", _labels(), nodata=0)  # 1-based, 0 the nodata: nothing to say
    with caplog.at_level(logging.WARNING, "ssrn"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    assert not any("also holds 0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("what", ["dataset", "labels", "out"])
def test_arrays_where_train_takes_paths_are_named(tmp_path, what):
    """An ndarray or DataArray for the scene or the labels raised a bare TypeError ('expected str, bytes or
    os.PathLike object, not ndarray') from deep inside."""
    from ssrn.train import TrainOptionError

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels())
    kw = dict(dataset=tmp_path / "s.tif", labels=tmp_path / "l.tif", out=tmp_path / "m")
    kw[what] = np.zeros((3, 4, 5))
    with pytest.raises(TrainOptionError, match=rf"^{what} must be a path .* got ndarray"):
        train(kw.pop("dataset"), kw.pop("out"), labels=kw.pop("labels"), epochs=1)
    assert not (tmp_path / "m").exists()


def test_the_run_lock_of_a_symlinked_target_sits_beside_the_link(tmp_path, monkeypatch):
    """The lock sat beside the directory a symlink at --out points to, which the run never writes (the link is
    replaced): two runs into one link were not kept apart by where they write."""
    import ssrn.lock

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    seen = []

    def lock(target, **kw):
        seen.append(target)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ssrn.lock, "file_lock", lock)
    with pytest.raises(RuntimeError, match="stop here"):
        train(tmp_path / "s.tif", tmp_path / "link", labels=tmp_path / "l.tif", epochs=1)
    assert seen == [tmp_path / "link"]



def test_a_legend_class_without_labelled_pixels_is_not_said_to_be_split_away(tmp_path, caplog):
    """A legend class no pixel carries was warned of twice, the second time as 'the split put all their pixels in
    validation or test'; the report still lists it as absent from training."""

    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels(), names=["roof", "tree", "water", "pool"])
    with caplog.at_level("INFO"):
        meta = train(str(tmp_path / "s.tif"), out=tmp_path / "m", labels=tmp_path / "l.tif", epochs=1,
                     batch_size=32, device="cpu")
    said = [r.getMessage() for r in caplog.records]
    assert any("classes ['pool'] have no labelled pixel with data in this scene" in m for m in said)
    assert not any("have no training pixel" in m for m in said)
    assert meta["split"]["classes_absent_from_train"] == ["pool"]


def test_train_checks_its_class_names_before_reading(tmp_path, monkeypatch):
    """--class-names split on commas is a list; names without a label raster name nothing: both refused before
    the scene is read."""
    import hsi_engine.training
    from ssrn.train import TrainOptionError

    def refuse(*a, **k):
        raise AssertionError("the scene was read before refusing a bad argument")

    monkeypatch.setattr(hsi_engine.training, "load_labelled_raster", refuse)
    with pytest.raises(TrainOptionError, match=r"class_names must be a list of names.*\['roof', 'tree'\]"):
        train(str(tmp_path / "s.tif"), tmp_path / "m", labels=tmp_path / "l.tif", class_names="roof,tree", epochs=1)
    with pytest.raises(TrainOptionError, match=r"name the classes of a label raster: give labels="):
        train("indian_pines", tmp_path / "m", class_names=["a", "b"], epochs=1)
    with pytest.raises(TrainOptionError, match=r"lr \(--lr\) must be > 0"):
        train(str(tmp_path / "s.tif"), tmp_path / "m", labels=tmp_path / "l.tif", epochs=1, lr=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_load_labelled_raster_refuses_a_string_of_names_and_bytes_paths(tmp_path):
    """class_names='abc' named three classes 'a', 'b', 'c'; a bytes path raised pathlib's TypeError."""
    from hsi_engine import load_labelled_raster
    from ssrn.data import DataError

    with pytest.raises(DataError, match=r"class_names must be a list of names.*\['water', 'grass'\]"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif", class_names="water,grass")
    with pytest.raises(DataError, match=r"labels_path must be a path \(a str or pathlib.Path\); got bytes: decode"):
        load_labelled_raster(tmp_path / "s.tif", b"l.tif")


def test_a_line_interleaved_scene_trains_with_band_axis(tmp_path):
    """train --band-axis / --variable: the trainer's warning named --band-axis, which train did not have, and
    load_labelled_raster read a PRISMA-like (y, band, x) cube as (band, y, x) = 12 bands of 7 x 10."""
    from hsi_engine import load_labelled_raster, train
    from hsi_engine.cli import build_parser
    from ssrn.train import TrainOptionError

    cube = np.random.default_rng(0).random((12, 7, 10), dtype=np.float32)  # (y, band, x)
    np.save(tmp_path / "scene.npy", cube)
    np.save(tmp_path / "labels.npy", (np.arange(120).reshape(12, 10) % 3).astype(np.uint8))
    scene = load_labelled_raster(tmp_path / "scene.npy", tmp_path / "labels.npy", band_axis=1)
    np.testing.assert_array_equal(np.asarray(scene.cube), cube.transpose(1, 0, 2))
    with pytest.raises(TrainOptionError, match=r"band_axis=\.\.\. \(--band-axis\) opens the scene of a label raster"):
        train(tmp_path / "scene.npz", tmp_path / "m", band_axis=1)
    args = build_parser().parse_args(["train", "--dataset", "s.h5", "--labels", "l.tif", "--out", "m",
                                      "--variable", "cube", "--band-axis", "1"])
    assert (args.variable, args.band_axis) == ("cube", 1)


def test_labels_of_a_rotated_or_gcp_placed_scene_are_checked_against_its_grid(tmp_path):
    """A rotated scene has no x/y coordinates and a GCP-placed one no transform: the labels' grid was never compared,
    so labels 100 km away trained without a word, and labels on the scene's own rotated grid but offset were
    refused (or, read boundless, warped north-up)."""
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.transform import Affine

    from hsi_engine import load_labelled_raster
    from ssrn.data import DataError

    rotated = Affine(17.32, 10.0, 500000.0, 10.0, -17.32, 4500000.0)  # 20 m pixels turned 30 degrees
    cube = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
    labels = (np.arange(256).reshape(16, 16) % 3 + 1).astype(np.uint8)

    def tif(name, data, **kw):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", count=data.shape[0], height=16, width=16,
                           dtype=data.dtype, crs="EPSG:32633", **kw) as dst:
            dst.write(data)
        return tmp_path / name

    scene = tif("rot.tif", cube, transform=rotated)
    shifted = tif("shifted.tif", labels[None], transform=rotated * Affine.translation(5, 2))
    got = np.asarray(load_labelled_raster(scene, shifted).labels)
    np.testing.assert_array_equal(got[2:, 5:], labels[:14, :11])  # the scene's pixel (x, y) is the labels' (x-5, y-2)
    assert not got[:2].any() and not got[:, :5].any()
    far = tif("far.tif", labels[None], transform=Affine(20, 0, 600000.0, 0, -20, 4400000.0))
    with pytest.raises(DataError, match="not the scene's .* and not on its pixels"):
        load_labelled_raster(scene, far)
    gcps = [GroundControlPoint(row=r, col=c, x=500000.0 + 20 * c, y=4500000.0 - 20 * r) for r, c in
            ((0, 0), (0, 16), (16, 0), (16, 16))]
    with rasterio.open(tmp_path / "gcp.tif", "w", driver="GTiff", count=4, height=16, width=16, dtype="float32") as dst:
        dst.write(cube)
        dst.gcps = (gcps, "EPSG:32633")
    with pytest.raises(DataError, match="placed by ground control points .* the labels by a geotransform"):
        load_labelled_raster(tmp_path / "gcp.tif", far)


def test_a_label_raster_with_an_alpha_band_is_told_to_keep_band_1(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from hsi_engine.training import _read_label_raster
    from ssrn.data import DataError

    path = tmp_path / "labels.tif"
    with rasterio.open(path, "w", driver="GTiff", count=2, height=4, width=4, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(0, 0, 1, 1), ALPHA="YES") as dst:
        dst.write(np.ones((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"has 2 bands; .*its second is an alpha band .*\(gdal_translate -b 1"):
        _read_label_raster(path, (4, 4), None, None, "labels", path)


def test_train_is_the_public_name_of_training_on_a_label_raster():
    import hsi_engine

    assert hsi_engine.train is train and hsi_engine.load_labelled_raster is load_labelled_raster
    assert {"train", "load_labelled_raster"} <= set(hsi_engine.__all__)


def test_train_passes_a_scene_object_to_the_trainer(tmp_path):
    """hsi_engine.train took only paths, where run_training takes a Scene too."""
    _write_scene(tmp_path / "s.tif")
    _write_labels(tmp_path / "l.tif", _labels())
    scene = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")
    report = train(scene, tmp_path / "m", epochs=1, batch_size=32, device="cpu")
    assert report["status"] == "done" and report["dataset"] == "s"


def test_the_old_module_name_of_the_normalisation_still_imports():
    import hsi_engine.normalise as old
    import ssrn.normalise as new

    assert old.normalise_into is new.normalise_into and set(old.__all__) == set(new.__all__)


def test_a_crop_of_a_larger_legend_keeps_its_ids(tmp_path):
    """A crop holding classes 2, 11 and 16 of a 16-class legend, all 16 names given, was refused ('number the classes
    1..K'), a fix that breaks the legend: the names set K; without them the mostly-empty ids are still refused."""
    from hsi_engine.training import load_labelled_raster

    _write_scene(tmp_path / "s.tif")
    lab = np.array([0, 2, 11, 16], np.uint8)[_labels()]
    _write_labels(tmp_path / "l.tif", lab, colours=False)
    names = [f"class {c}" for c in "ABCDEFGHIJKLMNOP"]
    scene = load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif", class_names=names)
    assert scene.n_classes == 16 and sorted(np.unique(scene.labels).tolist()) == [0, 2, 11, 16]
    with pytest.raises(DataError, match=r"the labels hold 3 distinct classes \(2, 11, 16\) but run up to 16"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "l.tif")


def test_a_vrt_saved_as_the_label_raster_is_not_opened_as_one(tmp_path):
    """GDAL opened a VRT (XML) saved as labels.tif, whose sources read any local file, pipe or URL: refused, with
    the formats label rasters are read as; a truncated GeoTIFF keeps the GeoTIFF driver's own reason."""
    _write_scene(tmp_path / "s.tif", h=20, w=24)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(1, 4)) * 200)
    (tmp_path / "labels.tif").write_text(
        '<VRTDataset rasterXSize="24" rasterYSize="20"><VRTRasterBand dataType="Byte" band="1" '
        f'subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="0">{secret}</SourceFilename><ImageOffset>0'
        '</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>24</LineOffset></VRTRasterBand></VRTDataset>')
    with pytest.raises(DataError, match=r"could not be read as a label raster .* read as GeoTIFF, ENVI, .* or "
                                        r"\.npy: convert it"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "labels.tif")
    _write_labels(tmp_path / "good.tif", np.ones((20, 24), np.uint8))
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:100])  # its directory cut off
    with pytest.raises(DataError, match="could not be read as a label raster .*TIFFReadDirectory"):
        load_labelled_raster(tmp_path / "s.tif", tmp_path / "cut.tif")
