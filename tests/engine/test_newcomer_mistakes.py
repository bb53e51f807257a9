"""What a newcomer following the README ran into: a scene a few times off the training scale classified as one class
without a word, a corrupt pixel blamed on the scale, a z-scored scene told to be multiplied by 1000, string
wavelengths, '~' outputs, directories left by a failed run, a map of zero pixel height, and errors that were no
HSIEngineError. Each defect's test failed on the code before the fix; the real-data tests keep the scale check's
threshold clear of real scenes."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import hsi_engine
from _refusals import cli as _cli
from _refusals import refused as _refused
from hsi_engine import (IrregularGridError, NonFiniteInputError, OptionError, OutputError, SceneError,
                        UnnormalisedInputWarning)
from hsi_engine.api import _normalisation
from hsi_engine.scene_checks import _SCALE_Z, check_scale, scene_wavelengths
from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE
from ssrn.normalise import scale_ratios

CRS = "EPSG:32633"


@pytest.fixture(scope="module")
def model():
    return hsi_engine.load_model(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def crop():
    """A 40 x 40 float32 crop of the shipped Indian Pines scene, in memory (the tester's 64 x 64, smaller)."""
    return hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 40), x=slice(0, 40)).astype("float32").load()


# --------------------------------------------------------------------------------------------------
# D1: a scene 2x-29x off the training scale


@pytest.mark.parametrize("k", [0.05, 0.5, 1.5, 2.0, 29.0])
def test_a_scene_a_few_times_off_the_training_scale_is_named(crop, model, k):
    """x 0.05 .. x 29 gave a one-class map (11 % agreement with the unscaled one) without a word: the RMS check
    needs 30x. The sample's median distance from the training means, in training standard deviations, catches
    them; the message gives the distance and the factor, and no power of ten that would not fix it."""
    msg = _refused(crop * k, model, r"lie a median [0-9.,]+ standard deviations from the model's per-band training "
                                    r"means .* Rescale it to the training scene's units")
    word = "smaller" if k < 1 else "larger"
    assert f"x {word} than the training scene's" in msg and "e.g. scene" not in msg


@pytest.mark.parametrize("k, fix", [(0.1, "scene * 10"), (10.0, "scene / 10"), (1e-4, "scene * 10000")])
def test_a_power_of_ten_is_named_where_it_explains_the_distance(crop, model, k, fix):
    """Reflectance x 1000 against a model trained on x 10000 (10x: under the 30x of the old check) gets the factor
    that fixes it, as 0-1 reflectance against x 10000 did."""
    _refused(crop * k, model, rf"about [0-9.,]+x .*\(e\.g\. {re.escape(fix)}\)")


def test_a_scene_on_the_command_line_2x_off_is_named(crop, tmp_path, caplog):
    """The command line wrote the one-class map with exit 0 and no word. It now says so in a warning line, not an
    error: a sample far from the training data, with no power of ten to explain it, may be a cloud or snow over the
    scene's centre (a factor of ten stays an error, below)."""
    path = tmp_path / "scene.npy"
    np.save(path, np.moveaxis(crop.values * 2, 0, -1))  # (y, x, band), as a .npy is read
    rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "map.tif")])
    said = err + caplog.text  # (the command's log handler, or pytest's where it has one)
    assert rc == 0 and "standard deviations from the model's per-band training means" in said, said
    assert "UnnormalisedInputWarning" in said and (tmp_path / "map.tif").exists()
    with warnings.catch_warnings():  # -W error / PYTHONWARNINGS=error: the user asked warnings to stop the run
        warnings.simplefilter("error")
        rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "m2.tif")])
    assert rc == 2 and "standard deviations from the model's per-band training means" in err, err
    assert not (tmp_path / "m2.tif").exists()


@pytest.mark.parametrize("k", [200.0, 1 / 300])
def test_a_scene_30x_off_is_named_by_its_factor_even_off_a_power_of_ten(crop, model, k):
    """200x rounds to 100, which leaves it 2x off: it got the distance wording, which the command line lets through
    as a warning; 30x or more is a plain cause (an error there), with or without a power of ten that fixes it."""
    msg = _refused(crop * k, model, r"the scene's values are about [0-9.,]+x (larger|smaller) than those the model")
    assert "lie a median" not in msg


def test_a_scene_on_the_command_line_10x_off_is_an_error(crop, tmp_path):
    path = tmp_path / "scene.npy"
    np.save(path, np.moveaxis(crop.values * 10, 0, -1))
    rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "map.tif")])
    assert rc == 2 and "e.g. scene / 10" in err, err
    assert not (tmp_path / "map.tif").exists()


def _wide_spread(bands: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training statistics that spread as an EnMAP scene over a city does (std = mean / 1.6: an all-dark sample reads
    only 1.6 standard deviations), and a 32 x 32 window drawn from them (pixels of several brightnesses)."""
    rng = np.random.default_rng(seed)
    mean = np.linspace(800, 3000, bands) * (1 + 0.3 * np.sin(np.arange(bands) / 5))
    window = mean[:, None, None] * rng.lognormal(0, 0.4, (1, 32, 32)) * (1 + 0.1 * rng.standard_normal((bands, 32, 32)))
    return mean, mean / 1.6, window


def _scale_warnings(cube: np.ndarray, mean: np.ndarray, std: np.ndarray) -> list[str]:
    import xarray as xr

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        check_scale(xr.DataArray(cube, dims=("band", "y", "x")), mean, std, None)
    return [str(w.message) for w in seen if w.category is UnnormalisedInputWarning]


def test_a_power_of_ten_off_widely_spread_training_data_is_named():
    """Reflectance x 1000 against a model of x 10000 trained on an EnMAP mosaic read 1.5 standard deviations (under
    4): a one-class map with exit 0 and no word. The spectral shape kept, off by a power of ten that brings the
    sample near the training data, is named with its fix; the window itself, the window x 0.3 (a shadow) and a
    window dark in the infrared only (water) are not."""
    mean, std, window = _wide_spread()
    said = _scale_warnings(window * 0.1, mean, std)
    assert len(said) == 1 and "look about 10x smaller" in said[0] and "Rescale it (scene * 10)" in said[0], said
    assert "larger" in " ".join(_scale_warnings(window * 10, mean, std))  # (10x larger: the distance, as before)
    water = window.copy()
    water[60:] *= 0.01
    for cube in (window, window * 0.3, window * 0.05, water, water * 0.1):  # (x 0.05 is 20x: no "10x" to name)
        assert _scale_warnings(cube, mean, std) == []


def test_a_power_of_ten_off_widely_spread_training_data_is_a_warning_line_on_the_command_line(tmp_path, caplog):
    """The command line says so and writes the map (exit 0): a window dark by nature could read this way."""
    import json
    import shutil

    mean, std, window = _wide_spread()
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model_dir)
    spec = json.loads((model_dir / "model.json").read_text())
    spec["meta"].update(mean=mean.tolist(), std=std.tolist())
    (model_dir / "model.json").write_text(json.dumps(spec))
    path = tmp_path / "scene.npy"
    np.save(path, np.moveaxis((window[:, :12, :12] * 0.1).astype(np.float32), 0, -1))
    rc, err = _cli(["classify", str(path), "--model", str(model_dir), "--out", str(tmp_path / "map.tif"),
                    "--tile", "12"])
    said = err + caplog.text
    assert rc == 0 and "look about 10x smaller" in said and (tmp_path / "map.tif").exists(), said


def test_real_scenes_of_the_training_sensor_pass_the_check_comfortably(model):
    """The threshold leaves the shipped scene's every window (and the seed protocol's whole-scene statistics) far
    inside: at most half of it."""
    from ssrn.normalise import scale_distance

    mean, std = _normalisation(model)
    cube = hsi_engine.open_scene(SHIPPED_SCENE).values
    worst = max(scale_distance(cube[:, y:y + 32, x:x + 32], mean, std, None)
                for y in range(0, 114, 16) for x in range(0, 114, 16))
    assert worst < _SCALE_Z / 2
    a = cube.reshape(cube.shape[0], -1).astype(np.float64)
    assert scale_distance(cube[:, 56:88, 56:88], a.mean(1), a.std(1), None) < _SCALE_Z / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        check_scale(hsi_engine.open_scene(SHIPPED_SCENE), mean, std, None)


def test_the_seed_model_passes_on_its_scene(seed_ssrn_dir, data_dir, tmp_path):
    """The seed's released model, imported with the seed's whole-scene standardisation, on the shipped scene."""
    from ssrn.normalise import scale_distance
    from ssrn.keras import import_keras_to_dir

    seed = hsi_engine.load_model(import_keras_to_dir(seed_ssrn_dir / "Indian_best_RES_3D_SS4_10_1.hdf5",
                                                     tmp_path / "seed", dataset="indian_pines", data_dir=data_dir))
    mean, std = _normalisation(seed)
    cube = hsi_engine.open_scene(SHIPPED_SCENE).values
    assert max(scale_distance(cube[:, y:y + 32, x:x + 32], mean, std, None)
               for y in range(0, 114, 16) for x in range(0, 114, 16)) < _SCALE_Z / 2


def test_enmap_tiles_pass_with_statistics_of_their_scene(data_dir):
    """Every EnMAP Potsdam tile (one of them a third water) against the per-band statistics of all the tiles with
    data, as the trainer takes them (its bad bands 130-135, nodata everywhere, left out); the HyMap and simulated
    EnMAP Berlin scenes' windows against their own."""
    from ssrn.normalise import scale_distance

    tiles = sorted((data_dir / "enmap_potsdam" / "images").glob("*.tif"))
    if not tiles:
        pytest.skip("no EnMAP Potsdam tiles in the data directory")
    scenes = [hsi_engine.open_scene(t).load() for t in tiles]
    pix = np.concatenate([s.values.reshape(s.shape[0], -1) for s in scenes], axis=1).astype(np.float64)
    pix[pix == -32768] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the bad bands' empty means: NaN, not read
        mean, std = np.nanmean(pix, axis=1), np.nanstd(pix, axis=1)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    for s in scenes:
        assert scale_distance(s.values, mean, std, -32768.0) < _SCALE_Z / 2
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnnormalisedInputWarning)
            check_scale(s, mean, std, -32768.0)
        tenth = s.where(s == -32768, s * 0.1)  # reflectance x 1000 against x 10000: 1.4 standard deviations only
        with pytest.warns(UnnormalisedInputWarning, match=re.escape("Rescale it (scene * 10)")):
            check_scale(tenth, mean, std, -32768.0)
    for name in ("EnMAP_BerlinUrbanGradient.bsq", "HyMap02_Berlin_Urban_Gradient_2009.bsq"):
        cube = hsi_engine.open_scene(data_dir / "berlin_urban_gradient" / name).values.astype(np.float64)
        a = cube.reshape(cube.shape[0], -1)
        b, h, w = cube.shape
        assert max(scale_distance(cube[:, y:y + 32, x:x + 32], a.mean(1), a.std(1), None)
                   for y in range(0, h - 31, 8) for x in range(0, w - 31, 8)) < _SCALE_Z / 2


# --------------------------------------------------------------------------------------------------
# D2: one corrupt pixel in the sample


@pytest.mark.parametrize("value, dtype", [(1e30, "float32"), (1e7, "float32"), (1e300, "float64")])
def test_a_corrupt_pixel_in_the_sample_is_named_not_read_as_a_scale(crop, model, value, dtype):
    """One pixel of 1e30 (or 1e7) in every band inside the 32 x 32 sample dominated the RMS: the scene was refused
    as '1.6e25x larger'. The run now names the pixel and its value; a float64 1e300 no longer overflows a square
    first (RuntimeWarning)."""
    bad = crop.astype(dtype)
    bad[:, 20, 20] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        warnings.simplefilter("error", RuntimeWarning)
        named = r"band [0-9]+ \(index [0-9]+\) at \(y=20, x=20\) holds " + re.escape(f"{value:.6g}")
        with pytest.raises(NonFiniteInputError, match=named):
            hsi_engine.classify(bad, model, progress=False)
    raw = bad.values
    mean, std = _normalisation(model)
    np.testing.assert_allclose(scale_ratios(raw, mean, std, None), scale_ratios(crop.values, mean, std, None),
                               rtol=0.05)


def test_a_corrupt_pixel_on_the_command_line_is_named(crop, tmp_path):
    path = tmp_path / "scene.npy"
    cube = crop.values.copy()
    cube[:, 20, 20] = 1e30
    np.save(path, np.moveaxis(cube, 0, -1))
    rc, err = _cli(["classify", str(path), "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "map.tif")])
    assert rc == 2 and "(y=20, x=20) holds 1e+30" in err and "larger" not in err, err


# --------------------------------------------------------------------------------------------------
# D3: a z-scored scene


def test_a_scene_already_standardised_is_told_to_pass_raw_values(crop, model):
    """It was told 'about 2,468x smaller ... (e.g. scene * 1000)': the model standardises the scene itself."""
    a = crop.values.astype(np.float64)
    z = crop.copy(data=((a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)).astype("f4"))
    msg = _refused(z, model, r"looks already standardised .* the model standardises the scene itself .* Pass the "
                             r"raw values")
    assert "scene * " not in msg
    with warnings.catch_warnings():  # reflectance 0-1 is not taken for it
        warnings.simplefilter("error", UnnormalisedInputWarning)
        with pytest.raises(UnnormalisedInputWarning, match=r"\(e\.g\. scene \* 10000\)"):
            hsi_engine.classify(crop / 10000, model, progress=False)


# --------------------------------------------------------------------------------------------------
# D4: wavelengths as strings, and units that say they are none


def test_wavelengths_given_as_strings_are_read(crop, model):
    """A ``wavelength`` coordinate of '400.0 nm' raised numpy's bare ValueError."""
    small = crop.isel(y=slice(0, 12), x=slice(0, 12))
    wl = np.asarray(model.meta["wavelengths"], np.float64)
    ref = hsi_engine.classify(small, model, progress=False).values
    for text in ([f"{w:.2f} nm" for w in wl], [f"{w / 1000:.6f} Micrometers" for w in wl], [f"{w:.3f}" for w in wl]):
        got = hsi_engine.classify(small.assign_coords(wavelength=("band", text)), model, progress=False)
        np.testing.assert_array_equal(got.values, ref)
    with pytest.raises(SceneError, match=r"wavelength coordinate holds 'band 1', which is not a wavelength.*drop_vars"):
        hsi_engine.classify(small.assign_coords(wavelength=("band", [f"band {i}" for i in range(1, 201)])), model,
                            progress=False)
    wrong = [f"{w + 100:.2f} nm" for w in wl]  # read, so still checked
    with pytest.raises(hsi_engine.BandMismatchError):
        hsi_engine.classify(small.assign_coords(wavelength=("band", wrong)), model, progress=False)


@pytest.mark.parametrize("units", ["Index", "Unknown"])
def test_a_wavelength_coordinate_of_band_numbers_is_no_wavelengths(crop, model, units):
    """ENVI's 'Index' / 'Unknown' units: band numbers, which were read as 1..200 nm and refused."""
    small = crop.isel(y=slice(0, 10), x=slice(0, 10))
    numbered = small.assign_coords(wavelength=("band", np.arange(1.0, 201.0), {"units": units}))
    np.testing.assert_array_equal(hsi_engine.classify(numbered, model, progress=False).values,
                                  hsi_engine.classify(small, model, progress=False).values)


# --------------------------------------------------------------------------------------------------
# D5, D6, D7: outputs


@pytest.mark.parametrize("out", ["~/map.tif", "~/new/map.zarr"])
def test_an_output_starting_with_a_tilde_is_refused_in_python(crop, model, tmp_path, monkeypatch, out):
    """It made a directory named '~' in the working directory (inputs said 'does not exist'; the command line
    expands it, Python does not)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"Python does not expand .* os\.path\.expanduser\('~/"):
        hsi_engine.classify_to_file(crop, model, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:scene .* has no georeferencing")
def test_a_failed_run_removes_the_directories_it_made(crop, model, tmp_path):
    """'new/dir/map.tif' failing (a NaN, no nodata) left new/dir/; an error leaves no output. Directories that were
    there stay, and so does one that holds something."""
    nan = crop.copy()
    nan[:, 5, 5] = np.nan
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "dir" / "map.tif", tmp_path / "kept" / "new" / "map.tif",
                tmp_path / "kept" / "map.tif"):
        with pytest.raises(NonFiniteInputError):
            hsi_engine.classify_to_file(nan, model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_constant_coordinates_are_refused_not_written_with_pixel_height_0(crop, model, tmp_path):
    """y coordinates all equal gave a GeoTIFF of pixel height 0 (a transform that cannot be inverted) after a
    warning; dropping them writes the map by the stored transform, as the error says."""
    import rasterio
    from affine import Affine

    small = crop.isel(y=slice(0, 12), x=slice(0, 12))
    a = Affine(30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0)
    geo = small.assign_coords(y=a.f + a.e * (np.arange(12) + 0.5), x=a.c + a.a * (np.arange(12) + 0.5))
    geo = geo.rio.write_crs(CRS).rio.write_transform(a)
    flat = geo.assign_coords(y=np.full(12, 5.0))
    with pytest.raises(IrregularGridError, match=r"y coordinates are all 5, so its pixels would have no height"):
        hsi_engine.classify_to_file(flat, model, tmp_path / "map.tif")
    assert list(tmp_path.iterdir()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        path = hsi_engine.classify_to_file(flat.drop_vars("y"), model, tmp_path / "map.tif")
    with rasterio.open(path) as f:
        assert f.transform == a
    # a fine geographic grid (1e-7 degrees, about 1 cm) at longitude -122.4 was refused as 'all -122.4'
    fine = small.assign_coords(x=-122.4 + 1e-7 * (np.arange(12) + 0.5), y=37.8 - 1e-7 * (np.arange(12) + 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = hsi_engine.classify_to_file(fine.rio.write_crs("EPSG:4326"), model, tmp_path / "fine.tif")
    with rasterio.open(path) as f:
        assert f.transform.a == pytest.approx(1e-7) and f.transform.e == pytest.approx(-1e-7)


# --------------------------------------------------------------------------------------------------
# errors that were not HSIEngineErrors, or said the wrong thing


def test_paths_that_are_not_text_are_refused_as_hsi_engine_errors(crop, model, tmp_path):
    with pytest.raises(OptionError, match=r"open_scene takes a scene path .* got bytes .*os\.fsdecode"):
        hsi_engine.open_scene(b"/data/scene.tif")
    with pytest.raises(OptionError, match=r"load_model takes a model directory path .* got bytes"):
        hsi_engine.load_model(bytes(SHIPPED_MODEL))
    with pytest.raises(OutputError, match=r"the output must be a path .* got bytes"):
        hsi_engine.classify_to_file(crop, model, bytes(tmp_path / "map.tif"))


def test_a_model_url_is_named_as_a_url():
    with pytest.raises(hsi_engine.CheckpointError, match=r"model https://example\.com/model is a URL"):
        hsi_engine.load_model("https://example.com/model")


@pytest.mark.parametrize("shape, fix", [((1, 200, 8, 8), r"drop its length-1 axis with arr\.squeeze\(0\)"),
                                        ((200, 8, 8, 1), r"drop its length-1 axis with arr\.squeeze\(3\)"),
                                        ((2, 200, 8, 8), r"it holds more than one cube: classify one at a time")])
def test_an_array_of_four_dims_is_told_how_to_drop_one(model, shape, fix):
    """The hint was 'A 2-D image is one band: add an axis with arr[None]'."""
    with pytest.raises(SceneError, match=rf"expected a 3-D \(band, y, x\) array; got 4 dims \(shape .*\): {fix}"):
        hsi_engine.classify(np.ones(shape, np.float32), model, progress=False)


def test_a_bad_readers_count_is_reported_as_passed(crop, model):
    """readers=-1 reported 'queue_depth=0', a value the user never passed (its default, readers + 1)."""
    with pytest.raises(OptionError, match=r"got readers=-1") as e:
        hsi_engine.classify(crop.isel(y=slice(0, 8), x=slice(0, 8)), model, readers=-1, progress=False)
    assert "queue_depth=" not in str(e.value)
    with pytest.raises(OptionError, match=r"got queue_depth=0"):
        hsi_engine.classify(crop.isel(y=slice(0, 8), x=slice(0, 8)), model, queue_depth=0, progress=False)



def test_chunks_far_larger_than_a_tile_are_named(monkeypatch, model):
    """A store written as one chunk cost its whole size per reader, decoded again for every tile (a 172 KB store:
    3.6 GB and hours), without a word; the same scene in tile-sized chunks says nothing."""
    import dask.array as dsa

    import hsi_engine.scene_checks as checks

    monkeypatch.setattr(checks, "LARGE_CHUNK_BYTES", 1 << 10)
    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 64), x=slice(0, 64)).load()
    one = scene.copy(data=dsa.from_array(scene.values, chunks=-1))
    with pytest.warns(UserWarning, match=r"chunks are 64 x 64 pixels .* every tile decodes the whole chunks"):
        hsi_engine.classify(one, model, tile=8, progress=False)  # (16 windows of 14 x 14 pixels: 1.25 of 1.6 MB)
    from hsi_engine.tiles import plan_tiles

    plan = plan_tiles(64, 64, 8, 3)
    small = scene.copy(data=dsa.from_array(scene.values, chunks=(-1, 16, 16)))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the scene's chunks", category=UserWarning)
        checks.warn_large_chunks(small, plan)
    # one band per chunk (a band-sequential store): each chunk small, yet every tile decodes 200 whole planes; an
    # array in memory (not its file unchanged) is told where to chunk it, not given a file's recipe
    planes = scene.copy(data=dsa.from_array(scene.values, chunks=(1, -1, -1)))
    with pytest.warns(UserWarning, match=r"a tile's 200 bands span 200 chunks, .* MiB decoded per tile\) against "
                                         r"tiles of 8 x 8: .* Fix: open it in chunks of all bands x about 256 x 256 "
                                         r"pixels where it is read \(e\.g\. xr\.open_dataset\(path, "
                                         r"chunks=\{'band': -1, 'y': 256, 'x': 256\}\) with the file's own dim "
                                         r"names"):
        checks.warn_large_chunks(planes, plan)


def test_a_scene_opened_with_its_scale_factor_applied_is_told_to_open_it_as_stored(crop, model, tmp_path):
    """rioxarray's mask_and_scale=True (or xarray's open_dataarray) applied a GeoTIFF's 1e-4 scale: the engine
    named a factor of 10000 but not where it came from."""
    import rasterio
    import rioxarray

    path = tmp_path / "scaled.tif"
    crop.astype("uint16").rio.write_crs(CRS).rio.to_raster(path)
    with rasterio.open(path, "r+") as f:
        f.scales = [1e-4] * f.count
    scaled = rioxarray.open_rasterio(path, mask_and_scale=True)
    message = _refused(scaled, model, r"x smaller .* \(e.g. scene \* 10000\)")
    assert "opened with the file's scale_factor 0.0001 applied" in message and "hsi_engine.open_scene(path)" in message
    with warnings.catch_warnings():  # as stored, the same file passes the check
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(hsi_engine.open_scene(path), model, progress=False)


def test_a_geotiff_read_by_rioxarray_is_warned_about_what_it_left_out(crop, model, tmp_path):
    """rioxarray.open_rasterio keeps neither a GDAL mask (the masked pixels were classified) nor the bands' own
    wavelengths (band 1's only: a band-reversed scene was classified as one class), without a word."""
    import rasterio
    import rioxarray

    path = tmp_path / "masked.tif"
    small = crop.isel(y=slice(0, 16), x=slice(0, 16)).assign_coords(  # (placed: a CRS alone is warned of)
        x=500000 + 20 * (np.arange(16) + 0.5), y=4500000 - 20 * (np.arange(16) + 0.5))
    small.rio.write_crs(CRS).rio.to_raster(path)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as f:
        f.write_mask(np.where(np.arange(256).reshape(16, 16) < 20, 0, 255).astype("uint8"))
        for b, nm in enumerate(scene_wavelengths(crop), start=1):  # (the scene's own: the model's)
            f.update_tags(b, wavelength=f"{nm:g}")
    with pytest.warns(UserWarning, match=r"read from .*masked\.tif by another reader than hsi_engine\.open_scene, "
                                         r"which leaves out its GDAL mask .*; its band wavelengths"):
        hsi_engine.classify(rioxarray.open_rasterio(path), model, progress=False)
    with warnings.catch_warnings():  # read by open_scene: masked as nodata, and no warning
        warnings.simplefilter("error", UserWarning)
        labels = hsi_engine.classify(hsi_engine.open_scene(path), model, progress=False).values
    assert (labels.reshape(-1)[:20] == 0).all() and (labels.reshape(-1)[20:] > 0).all()


@pytest.mark.parametrize("value, rows", [(0.0, slice(0, 3)), (-32768.0, slice(0, 48))])
def test_a_fill_at_the_edge_or_of_another_value_is_named(model, value, rows):
    """A window read past the scene's edge (rasterio's boundless read) holds 0 along the edge only, away from the
    centre's sample: classified as land cover without a word. A crop handed over as an array loses its nodata:
    -32768 in every band read as a scale 56 standard deviations off. The corners are sampled too, any one value in
    every band is a fill, and the scale check leaves such pixels out."""
    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 48), x=slice(0, 48)).astype("float32").load()
    filled = scene.copy(data=scene.values.copy())  # (48 x 48: the corners are sampled apart from the centre)
    filled[:, rows, 42:] = value
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hsi_engine.classify(filled, model, progress=False)
    said = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert any(f"hold {value:g} in every band" in m and f"Pass nodata={value:g}" in m for m in said), said
    assert not any(issubclass(w.category, UnnormalisedInputWarning) for w in seen), said


def test_a_given_nodata_that_replaces_the_declared_one_or_masks_nothing_is_named(crop, model):
    """`--nodata 0` for a mosaic's gaps on a scene declaring -9999 made the -9999 pixels land cover without a word (NaN
    was warned of, numbers not); -9999 or 0.5 in a uint16 scene masked nothing, silently."""
    counts = (crop * 10).round().astype("int16")
    counts.values[:, 0, 0] = -9999
    counts.attrs["nodata"] = -9999

    def said(scene, nodata) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            hsi_engine.classify(scene.isel(y=slice(0, 12), x=slice(0, 12)), model, nodata=nodata, progress=False,
                                tile=12)
        return [str(w.message) for w in seen if issubclass(w.category, UserWarning)]

    assert any("nodata=7777 (--nodata 7777) replaces this scene's declared nodata value -9999: one nodata value is "
               "read, so pixels holding -9999 are classified" in m for m in said(counts, 7777)), said(counts, 7777)
    assert not any("declared nodata value" in m for m in said(counts, -9999))
    low = crop.astype("float32")
    low.attrs["nodata"] = float(np.finfo(np.float32).min)
    assert not any("declared nodata value" in m for m in said(low, -3.40282346638529e+38))  # (as gdalinfo prints it)
    unsigned = counts.where(counts > 0, 1).astype("uint16")
    unsigned.attrs = {}
    for value in (-9999, 0.5):
        assert any(f"nodata={value:g} (--nodata {value:g}) masks nothing in this uint16 scene" in m
                   for m in said(unsigned, value))


def test_a_mosaic_s_zero_fill_without_nodata_is_warned_about(crop, model):
    """`rio merge` of tiles in an L leaves 0 in every band where no tile lies, and declares no nodata: the gap was
    classified as land cover (2,304 pixels of Soybean-mintill) without a word."""
    gap = crop.copy(data=crop.values.copy())
    gap[:, 20:, 20:] = 0  # a missing tile, reaching the scene's centre
    with pytest.warns(UserWarning, match=r"pixels sampled \(the scene.s centre and corners\) hold 0 in every band, "
                                         r"and the scene declares no nodata value: .* Pass nodata=0 \(--nodata 0\)"):
        hsi_engine.classify(gap, model, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        labels = hsi_engine.classify(gap, model, nodata=0, progress=False).values
    assert (labels[20:, 20:] == 0).all() and (labels[:20] > 0).all()


# --------------------------------------------------------------------------------------------------
# The scale check's sample without enough pixels with data


def test_a_scene_whose_centre_is_masked_is_checked_at_its_corners(model):
    """A 64 x 64 reflectance 0-1 scene (10,000x off) whose centre 36 x 36 is NaN (a lake, a cloud masked) gave a
    one-class map with exit 0: the centre's sample held no pixel with data and the check returned silently. Its
    corners are checked instead."""
    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 64), x=slice(0, 64)).astype("float32").load()
    scene = scene.copy(data=scene.values / 10000)
    scene[:, 14:50, 14:50] = np.nan
    msg = _refused(scene, model, r"about [0-9,]+x smaller .*\(the scene's four corners, 256 pixels")
    assert "scene * 10000" in msg


@pytest.mark.parametrize("h, w", [(1, 1), (1, 5), (3, 5)])
def test_a_scene_too_small_for_the_sample_is_checked_on_all_its_pixels(crop, model, h, w):
    """1 x 1 to 3 x 5 scenes of reflectance 0-1 gave one class without a word (fewer than 16 pixels to sample).
    The factor of 30 in nearly every band is plain on one pixel's spectrum; the same pixels on the training
    scale pass."""
    small = crop.isel(y=slice(10, 10 + h), x=slice(10, 10 + w))
    _refused(small / 10000, model, rf"about [0-9,]+x smaller .*all {h * w} pixels of a small scene")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hsi_engine.classify(small, model, progress=False)


def test_a_store_of_small_chunks_is_sampled_across_them(crop, model):
    """A store of 3 x 3-pixel chunks gave a 9-pixel sample (one chunk): too few, and reflectance 0-1 went
    unnamed. The sample spans the small chunks at the centre."""
    scene = (crop / 10000).chunk({"band": -1, "y": 3, "x": 3})
    _refused(scene, model, r"about [0-9,]+x smaller .*a 32 x 32-pixel sample")


def test_a_scene_without_enough_data_to_check_says_its_scale_was_not_checked(crop, model):
    """A small scene all but nodata: nothing to measure a scale on. Said, not passed over."""
    scene = crop.isel(y=slice(0, 20), x=slice(0, 20)).copy()
    scene[:] = np.nan
    scene[:, 3, 4] = crop[:, 3, 4]
    scene[:, 3, 4] = np.nan  # no pixel with data at all
    with pytest.warns(UserWarning, match=r"the scene's scale was not checked: the pixels sampled \(all 400 pixels of a "
                                         r"small scene\) hold too few with data"):
        labels = hsi_engine.classify(scene, model, nodata=float("nan"), progress=False)
    assert (labels.values == 0).all()


def test_float32_s_largest_value_missed_by_a_printed_nodata_is_named_with_the_value_to_give(crop, model, tmp_path):
    """-FLT_MAX fills under a nodata declared as a header prints it (-3.40282e+38, another float32) are not masked
    (GDAL's masks take both; the engine compares one value, so that pixels holding the printed value, as a warp
    to that nodata writes them, stay masked): the run stopped on "holds -3.40282e+38 ... not data", which looked
    like the declared value, and --nodata -3.40282e+38 was said to replace "-3.40282e+38". The error names the
    value in full, the warning tells the two apart, and the full value masks the pixel."""
    import rasterio

    scene = crop.isel(y=slice(0, 12), x=slice(0, 12)).astype("float32")
    scene = scene.copy(data=scene.values.copy())
    scene.values[:, 2, 3] = np.finfo(np.float32).min
    scene.attrs = {}
    path = tmp_path / "fill.tif"
    with rasterio.open(path, "w", driver="GTiff", height=12, width=12, count=scene.sizes["band"], dtype="float32",
                       nodata=float(np.finfo(np.float32).min)) as f:
        f.write(scene.values)
    with pytest.raises(NonFiniteInputError, match=r"float32's largest magnitude, a usual fill: .* give it in full, "
                                                  r"nodata=-3.4028235e\+38 \(--nodata -3.4028235e\+38\)"):
        hsi_engine.classify(scene, model, nodata=-3.40282e+38, progress=False, tile=12)
    with pytest.warns(UserWarning, match=r"nodata=-3.40282e\+38 \(--nodata -3.40282e\+38\) replaces this scene's "
                                         r"declared nodata value "
                                         r"-3.4028234663852886e\+38"):
        with pytest.raises(NonFiniteInputError):
            hsi_engine.classify(path, model, nodata=-3.40282e+38, progress=False, tile=12)
    ref = hsi_engine.classify(scene, model, nodata=-3.4028235e+38, progress=False, tile=12).values
    assert ref[2, 3] == 0 and (np.delete(ref.ravel(), 2 * 12 + 3) > 0).all()
    np.testing.assert_array_equal(hsi_engine.classify(path, model, progress=False, tile=12).values, ref)


def test_the_largest_64_bit_integer_as_nodata_is_not_said_to_mask_nothing(crop, model):
    """nodata=2**64 - 1 (GDAL's UInt64 nodata) on a uint64 scene masks its pixels (the mask compares it as a
    float, 2**64), yet was warned to mask nothing."""
    counts = crop.isel(y=slice(0, 12), x=slice(0, 12)).round().astype("uint64")
    counts = counts.copy(data=counts.values.copy())
    counts.values[:, 4, 5] = np.iinfo(np.uint64).max
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        labels = hsi_engine.classify(counts, model, nodata=2 ** 64 - 1, progress=False, tile=12).values
    assert labels[4, 5] == 0 and (labels > 0).sum() == 143


def test_a_scene_read_in_the_wrong_byte_order_is_named_as_that(crop, model):
    """An ENVI header's wrong 'byte order' gave a meaningless map under a warning of "a median 104 standard
    deviations": the sample read with its bytes swapped lies near the training data, and the fix is named. A
    scene on its right order is not."""
    counts = crop.round().astype("int16")
    swapped = counts.copy(data=counts.values.byteswap())
    msg = _refused(swapped, model, r"look byte-swapped .* a median [0-9.]+ standard deviations from the model's "
                                   r"training means .* 'byte order = 0' is little-endian")
    assert "as read" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(counts.isel(y=slice(0, 12), x=slice(0, 12)), model, progress=False)


def test_a_small_scene_with_a_masked_centre_is_checked_on_all_its_pixels(crop, model):
    """A 40 x 40 scene (too small for the corners) whose centre is 80 % NaN: 'scale was not checked', though
    hundreds of its pixels hold data. A scene of at most 64 x 64 is sampled whole then."""
    scene = crop.copy(data=crop.values / 10000)
    scene[:, 4:36, 4:36] = np.nan
    _refused(scene, model, r"about [0-9,]+x smaller .*all 1600 pixels of a small scene")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(scene * 10000, model, nodata=float("nan"), progress=False)
