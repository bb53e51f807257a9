"""The trainer reads a DataArray's dim names by the engine's table (``ssrn.dims``): the same pixel at (y, x) in
both, or the same refusal. The trainer read ``band`` beside two other names as (y, x) in stored order, so a
``(band, lon, lat)`` cube was trained transposed (patches paired with other pixels' labels) while the engine
classified it the right way round."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.numpy import load_file

from hsi_engine import as_scene
from hsi_engine import cube as engine_cube
from hsi_engine.errors import MissingSpatialDimsError
from ssrn import data as D
from ssrn import dims
from ssrn.train import run_training

# (band, y, x) names, each permuted below: every alias family the table has
_NAMES = [("band", "lat", "lon"), ("wavelength", "row", "col"), ("bands", "northing", "easting"),
          ("Channel", "Latitude", "Longitude"), ("z", "line", "sample"), ("spectral", "height", "width")]


def _coded(b=3, h=5, w=4) -> np.ndarray:
    """A (band, y, x) cube whose value says where it is: 100 * band + 10 * y + x."""
    return (100 * np.arange(b)[:, None, None] + 10 * np.arange(h)[:, None] + np.arange(w)).astype(np.float32)


def _stored(cube: np.ndarray, names: tuple[str, str, str], order: tuple[int, ...]) -> xr.DataArray:
    """``cube`` (band, y, x) stored in axis ``order`` under ``names`` (band, y, x)."""
    return xr.DataArray(cube.transpose(order), dims=tuple(names[i] for i in order))


@pytest.mark.parametrize("names", _NAMES)
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_trainer_and_the_engine_put_the_same_pixel_at_y_x(names, order):
    cube = _coded()
    da = _stored(cube, names, order)
    np.testing.assert_array_equal(as_scene(da).values, cube)
    np.testing.assert_array_equal(D.cube_array(da, "cube"), cube)
    np.testing.assert_array_equal(D.standardize(da)[0], D.standardize(cube)[0])


def test_the_engine_reads_the_trainers_table():
    assert engine_cube._Y_NAMES is dims.Y_NAMES and engine_cube._X_NAMES is dims.X_NAMES
    assert engine_cube._BAND_NAMES is dims.BAND_NAMES and engine_cube.canonical_dim is dims.canonical_dim


def test_patches_are_paired_with_their_own_pixels_label():
    """The maintainer's repro: a (band, lon, lat) cube beside (lat, lon) labels on a square scene paired 20 of 25
    patches with another pixel's label, without an error."""
    n = 5
    code = (10 * np.arange(n)[:, None] + np.arange(n)).astype(np.float32)  # (lat, lon): 10 * lat + lon
    cube = xr.DataArray(code.T[None], dims=("band", "lon", "lat"))
    labels = xr.DataArray((code + 1).astype(np.int64), dims=("lat", "lon"))
    ds = D.PatchDataset(cube, labels, np.arange(n * n), patch=1)
    assert [float(ds[i][0][0, 0, 0]) for i in range(n * n)] == [float(ds[i][1]) for i in range(n * n)]
    assert ds.batch(np.arange(n * n))[:, 0, 0, 0].tolist() == code.reshape(-1).tolist()  # flat row-major (y, x)


@pytest.mark.parametrize("label_dims", [("lat", "lon"), ("lon", "lat"), ("row", "col"), ("x", "y")])
def test_a_scene_reads_its_cube_and_labels_by_name(label_dims):
    cube = _coded(h=6, w=6)  # square: a transposed read fits the shape and is silent
    labels = np.arange(36).reshape(6, 6) % 3 + 1
    da = _stored(cube, ("wavelength", "lat", "lon"), (2, 0, 1))
    lab = xr.DataArray(labels if label_dims in (("lat", "lon"), ("row", "col")) else labels.T, dims=label_dims)
    scene = D.Scene("t", da, lab, ["a", "b", "c"], [[0, 0, 0]] * 3)
    assert scene.cube.dims == ("band", "y", "x") and scene.shape == (3, 6, 6) and scene.labels.dims == ("y", "x")
    np.testing.assert_array_equal(scene.cube.values, cube)
    np.testing.assert_array_equal(D.check_labels(lab, (6, 6), "t"), labels)  # a DataArray given later, too
    for got, want in zip(D.standardize_scene(scene), D.standardize(cube)):
        np.testing.assert_array_equal(got, want)


def test_run_training_of_a_transposed_scene_trains_the_same_model(tmp_path):
    """run_training(Scene(...)) of (band, lon, lat) + (lon, lat) DataArrays trains what the (band, y, x) scene
    does: the same pixels, labels and statistics (it read the cube transposed and the labels as stored)."""
    rng = np.random.default_rng(0)
    cube = rng.uniform(100, 900, (8, 8, 8)).astype(np.float32)
    labels = np.repeat(np.arange(1, 5), 16).reshape(8, 8)
    labels[2, 5], labels[6, 1] = 4, 1  # not symmetric: a transposed read pairs other labels
    common = dict(epochs=1, batch_size=8, patch=3, seed=0, device="cpu", per_class=3)
    names, palette = ["a", "b", "c", "d"], [[0, 0, 0]] * 4
    plain = D.Scene("s", xr.DataArray(cube, dims=("band", "y", "x")), labels, names, palette)
    odd = D.Scene("s", xr.DataArray(cube.transpose(0, 2, 1), dims=("band", "lon", "lat")),
                  xr.DataArray(labels.T, dims=("lon", "lat")), names, palette)
    a, b = run_training(plain, tmp_path / "a", **common), run_training(odd, tmp_path / "b", **common)
    assert a["support"] == b["support"] and a["oa"] == b["oa"]
    wa, wb = (load_file(str(tmp_path / m / "weights.safetensors")) for m in "ab")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.mark.parametrize("found, said", [
    (("band", "lat", "row"), r"'lat' and 'row' both name its y axis, so which is y cannot be told"),
    (("band", "y", "northing"), r"'y' and 'northing' both name its y axis"),
    (("wavelength", "band", "x"), r"'wavelength' and 'band' both name its band axis"),
    (("band", "i", "j"), r"'i', 'j' are not names of a band, y or x axis \(dims are read by name, never by their "
                         r"order\); expected \(band, y, x\), in any order\. Accepted names: band \["),
    (("lat", "lon", "time"), r"'time' is not a name of a band, y or x axis"),
])
def test_names_that_do_not_tell_the_axes_apart_are_refused_by_both(found, said):
    """``band`` beside two unknown names was read as (band, y, x) by position; both readers refuse it now."""
    da = xr.DataArray(np.zeros((3, 4, 5), np.float32), dims=found)
    with pytest.raises(MissingSpatialDimsError, match=said):
        as_scene(da)
    with pytest.raises(D.DataError, match=r"standardize: the cube has dims .*" + said):
        D.standardize(da)
    with pytest.raises(D.DataError, match=said):
        D.Scene("t", da, np.ones((4, 5), int), ["a"], [[0, 0, 0]])


@pytest.mark.parametrize("found, said", [
    (("a", "b"), r"'a', 'b' are not names of a band, y or x axis.*expected \(y, x\)"),
    (("lat", "row"), r"'lat' and 'row' both name its y axis"),
    (("band", "y", "x"), r"'band' names its band axis; expected \(y, x\).*da\.squeeze\('band'\)"),
])
def test_label_maps_are_matched_by_name_or_refused(found, said):
    """2-D labels of other names were read as stored, whatever the cube's names said."""
    shape = (1, 4, 5) if len(found) == 3 else (4, 5)
    lab = xr.DataArray(np.ones(shape, np.int64), dims=found)
    with pytest.raises(D.DataError, match=r"PatchDataset: the label map has dims .*" + said):
        D.PatchDataset(np.zeros((3, 4, 5), np.float32), lab, np.arange(3), 3)
    with pytest.raises(D.DataError, match=r"t: the label map has dims .*" + said):
        D.check_labels(lab, (4, 5), "t")


def test_plain_and_unnamed_arrays_are_read_as_stored():
    cube = _coded()
    for a in (cube, torch.from_numpy(cube), xr.DataArray(cube)):  # xarray's dim_0..: no names to read
        np.testing.assert_array_equal(D.cube_array(a, "cube"), cube)
    labels = np.arange(20).reshape(5, 4)
    ds = D.PatchDataset(cube, xr.DataArray(labels + 1), np.arange(20), 1)
    assert ds.labels.tolist() == labels.reshape(-1).tolist()


def test_a_coordinate_named_as_an_axis_on_other_dims_is_refused():
    da = xr.DataArray(np.zeros((3, 4, 5)), dims=("band", "lat", "lon"),
                      coords={"y": (("lat", "lon"), np.zeros((4, 5)))})
    with pytest.raises(D.DataError, match=r"also has a coordinate named 'y' on dims \('lat', 'lon'\).*"
                                          r"da\.drop_vars\('y'\)"):
        D.Scene("t", da, np.ones((4, 5), int), ["a"], [[0, 0, 0]])
    kept = xr.DataArray(np.zeros((3, 4, 5)), dims=("band", "y", "x")).assign_coords(wavelength=("band", [1., 2, 3]))
    kept = kept.swap_dims({"band": "wavelength"}).transpose("x", "wavelength", "y")  # a 1-D coord on its own dim
    scene = D.Scene("t", kept, np.ones((4, 5), int), ["a"], [[0, 0, 0]])
    assert scene.cube.dims == ("band", "y", "x") and scene.cube["wavelength"].values.tolist() == [1, 2, 3]
