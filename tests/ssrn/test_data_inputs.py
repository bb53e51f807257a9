"""The trainer's in-memory inputs: masked arrays, NaN, labels' shape and dtype, odd layouts and tensors."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
import xarray as xr

from ssrn import data as D
from ssrn.data import DataError
from ssrn.errors import OptionError


def _cube(b=12, h=10, w=9, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(100, 4000, (b, h, w)).astype(np.float32)


def _labels(h=10, w=9, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 4, (h, w)).astype(np.int64)


def _scene(cube, labels=None) -> D.Scene:
    labels = _labels(*cube.shape[-2:]) if labels is None else labels
    return D.Scene("t", cube, labels, ["a", "b", "c"], [[0, 0, 0]] * 3)


def _valid_stats(cube: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and population std over the pixels not in ``bad`` (y, x)."""
    v = cube[:, ~bad].astype(np.float64)
    return v.mean(axis=1), v.std(axis=1)


# 1. masked arrays: masked values are nodata, as NaN is


def test_standardize_reads_a_masked_arrays_masked_values_as_nodata():
    cube = _cube()
    mask = np.zeros(cube.shape, bool)
    mask[:, 2, 3] = True
    mask[5, 7, 1] = True  # one band masked: the whole pixel is nodata, as NaN in one band makes it
    ma = np.ma.masked_array(np.where(mask, np.float32(-9999), cube), mask=mask)
    normed, mean, std = D.standardize(ma)
    bad = mask.any(axis=0)
    ref_mean, ref_std = _valid_stats(cube, bad)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    assert np.isfinite(normed).all() and (normed[:, bad] == 0).all()
    nan = np.where(mask, np.float32(np.nan), cube)  # the same scene with NaN where the mask is
    for got, want in zip((normed, mean, std), D.standardize(nan)):
        np.testing.assert_array_equal(got, want)


def test_a_masked_array_without_masked_values_is_the_plain_array():
    cube = _cube()
    for got, want in zip(D.standardize(np.ma.masked_array(cube)), D.standardize(cube)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(D.standardize(np.ma.masked_array(cube, mask=np.zeros(cube.shape, bool))),
                         D.standardize(cube)):
        np.testing.assert_array_equal(got, want)


def test_an_integer_masked_array_is_read_as_nodata_too():
    cube = np.rint(_cube()).astype(np.uint16)
    mask = np.zeros(cube.shape, bool)
    mask[:, 4, 4] = True
    normed, mean, _ = D.standardize(np.ma.masked_array(cube, mask=mask))
    np.testing.assert_allclose(mean, _valid_stats(cube, mask.any(axis=0))[0], rtol=1e-12)
    assert (normed[:, 4, 4] == 0).all()


def test_patch_dataset_refuses_masked_values():
    normed, _, _ = D.standardize(_cube())
    mask = np.zeros(normed.shape, bool)
    mask[:, 2, 3] = True
    with pytest.raises(DataError, match=r"NaN or inf .*masked values count as NaN.*band 0, row 2, col 3.*standardize"):
        D.PatchDataset(np.ma.masked_array(np.where(mask, 1e6, normed), mask=mask), _labels(), np.arange(90), 7)
    ds = D.PatchDataset(np.ma.masked_array(normed), _labels(), np.arange(90), 7)  # nothing masked: accepted
    np.testing.assert_array_equal(ds.padded, D.PatchDataset(normed, _labels(), np.arange(90), 7).padded)


def test_patch_dataset_reads_masked_labels_as_unlabelled():
    normed, _, _ = D.standardize(_cube())
    lab = _labels()
    masked = np.ma.masked_array(lab, mask=np.zeros(lab.shape, bool))
    masked[2, 3] = np.ma.masked
    with pytest.raises(OptionError, match=r"unlabelled pixel .*row 2, col 3"):
        D.PatchDataset(normed, masked, np.arange(90), 7)
    keep = np.setdiff1d(np.arange(90), [2 * 9 + 3])
    np.testing.assert_array_equal(D.PatchDataset(normed, masked, keep, 7).labels,
                                  D.PatchDataset(normed, lab, keep, 7).labels)


# 2. NaN: NaN-aware statistics, and PatchDataset refuses non-finite data


def test_standardize_takes_statistics_over_the_pixels_without_nan(caplog):
    cube = _cube()
    cube[:, 2, 3] = np.nan
    with caplog.at_level(logging.WARNING, logger="ssrn.data"):
        normed, mean, std = D.standardize(cube)
    assert "1 of 90 pixels hold NaN, inf or masked values" in caplog.text
    bad = np.zeros(cube.shape[1:], bool)
    bad[2, 3] = True
    ref_mean, ref_std = _valid_stats(cube, bad)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    assert np.isfinite(normed).all() and (normed[:, 2, 3] == 0).all()
    np.testing.assert_allclose(normed[:, ~bad], ((cube[:, ~bad] - ref_mean[:, None]) / ref_std[:, None]), atol=1e-5)
    # the same as standardize_scene on that scene, which reads NaN as the engine does
    for got, want in zip((normed, mean, std), D.standardize_scene(_scene(cube))):
        np.testing.assert_array_equal(got, want)


def test_standardize_reads_a_band_without_data_as_a_bad_band():
    cube = _cube()
    cube[4] = np.nan
    cube[0, 1, 1] = np.inf
    normed, mean, std = D.standardize(cube)
    assert (normed[4] == 0).all() and mean[4] == 0 and std[4] == 1
    assert (normed[:, 1, 1] == 0).all() and np.count_nonzero(normed[0]) == 89
    good = np.setdiff1d(np.arange(12), [4])
    bad = np.zeros(cube.shape[1:], bool)
    bad[1, 1] = True
    np.testing.assert_allclose(mean[good], _valid_stats(cube[good], bad)[0], rtol=1e-12)
    with pytest.raises(DataError, match="no band .* holds a finite value"):
        D.standardize(np.full((3, 4, 4), np.nan))


def test_standardize_of_a_finite_scene_is_unchanged(caplog):
    cube = _cube()
    with caplog.at_level(logging.WARNING, logger="ssrn.data"):
        normed, mean, std = D.standardize(cube)
    assert caplog.text == ""
    a = cube.astype(np.float64)
    np.testing.assert_array_equal(mean, a.mean(axis=(1, 2)))
    np.testing.assert_array_equal(normed, ((a - a.mean(axis=(1, 2))[:, None, None])
                                           / a.std(axis=(1, 2))[:, None, None]).astype(np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_patch_dataset_refuses_non_finite_data(value):
    normed, _, _ = D.standardize(_cube())
    normed[3, 4, 5] = value
    with pytest.raises(DataError, match=r"1 NaN or inf values, the first at band 3, row 4, col 5; expected finite"):
        D.PatchDataset(normed, _labels(), np.arange(90), 7)


def test_standardize_then_patch_dataset_trains_on_a_scene_with_a_nan_pixel():
    cube = _cube()
    cube[:, 2, 3] = np.nan
    normed, _, _ = D.standardize(cube)
    ds = D.PatchDataset(normed, _labels(), np.arange(90), 7)
    assert torch.isfinite(ds.batch(np.arange(90))).all()


# 3. labels' shape


@pytest.mark.parametrize("shape", [(9, 10), (5, 9), (90,), (10, 9, 1)])
def test_patch_dataset_refuses_labels_of_another_shape(shape):
    normed, _, _ = D.standardize(_cube())
    lab = np.ones(shape, np.int64)
    with pytest.raises(DataError, match=re.escape(f"labels have shape {shape} but the scene is 10 x 9 (y, x)")):
        D.PatchDataset(normed, lab, np.arange(10), 7)


def test_transposed_labels_are_named_as_such():
    normed, _, _ = D.standardize(_cube())
    with pytest.raises(DataError, match=r"\(9, 10\) but the scene is 10 x 9 .*transposed\? pass labels.T"):
        D.PatchDataset(normed, _labels().T.copy(), np.arange(90), 7)


# 4. unsigned (and other) label dtypes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int32, ">i8", ">u2", np.float32])
def test_patch_dataset_label_dtypes_give_the_int64_targets(dtype):
    normed, _, _ = D.standardize(_cube())
    lab = _labels()
    ds = D.PatchDataset(normed, lab.astype(dtype), np.arange(90), 7)
    ref = D.PatchDataset(normed, lab, np.arange(90), 7)
    assert ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.targets(np.arange(90)), ref.targets(np.arange(90)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_an_unsigned_label_map_still_refuses_an_unlabelled_index(dtype):
    normed, _, _ = D.standardize(_cube())
    lab = _labels()
    lab[2, 3] = 0
    with pytest.raises(OptionError, match=r"unlabelled pixel \(1 do, the first 21: row 2, col 3, label 0\)"):
        D.PatchDataset(normed, lab.astype(dtype), np.arange(90), 7)


def test_fractional_labels_are_refused():
    normed, _, _ = D.standardize(_cube())
    lab = _labels().astype(np.float64)
    lab[0, 0] = 1.5
    with pytest.raises(DataError, match="labels must be integers"):
        D.PatchDataset(normed, lab, np.arange(90), 7)


# 5. layouts and tensors that should just work


def test_patch_dataset_takes_negative_strides_and_big_endian_data():
    normed, _, _ = D.standardize(_cube())
    lab = _labels()
    flipped = normed[:, :, ::-1]
    ref = D.PatchDataset(np.ascontiguousarray(flipped), np.ascontiguousarray(lab[:, ::-1]), np.arange(90), 7)
    for x in (flipped, flipped.astype(">f4"), np.asfortranarray(flipped)):
        ds = D.PatchDataset(x, lab[:, ::-1], np.arange(90), 7)
        np.testing.assert_array_equal(ds.batch(np.arange(90)), ref.batch(np.arange(90)))
        np.testing.assert_array_equal(ds.labels, ref.labels)
    ds = D.PatchDataset(normed, lab.astype(">i8"), np.arange(90), 7)
    np.testing.assert_array_equal(ds.labels, D.PatchDataset(normed, lab, np.arange(90), 7).labels)


def test_tensors_that_require_grad_are_read_as_their_values():
    cube = _cube()
    for got, want in zip(D.standardize(torch.from_numpy(cube).requires_grad_()), D.standardize(cube)):
        np.testing.assert_array_equal(got, want)
    normed, _, _ = D.standardize(cube)
    ds = D.PatchDataset(torch.from_numpy(normed.copy()).requires_grad_(), torch.from_numpy(_labels()),
                        np.arange(90), 7)
    ref = D.PatchDataset(normed, _labels(), np.arange(90), 7)
    assert not ds.padded.requires_grad
    np.testing.assert_array_equal(ds.batch(np.arange(90)), ref.batch(np.arange(90)))
    np.testing.assert_array_equal(ds.labels, ref.labels)


def test_standardize_of_odd_layouts_is_the_plain_arrays():
    """Flipped views and big-endian values give the same bits; a Fortran-ordered cube (a MATLAB scene) sums in its
    stored order, as standardize always has (the shipped model's statistics to the last bit): within 1e-12."""
    cube = _cube()
    ref = D.standardize(cube)
    for x in (cube[:, ::-1, ::-1][:, ::-1, ::-1], cube.astype(">f4")):
        for got, want in zip(D.standardize(x), ref):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(D.standardize(np.asfortranarray(cube)), ref):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6 if got.dtype == np.float32 else 0)
    with pytest.raises(OptionError, match=r"expected a \(band, y, x\) scene; got shape \(10, 9\)"):
        D.standardize(cube[0])


# 7. standardize_scene's cube: a plain array, or a DataArray stored in another order


def test_standardize_scene_takes_a_plain_numpy_cube():
    cube = _cube()
    cube[:, 2, 3] = np.nan  # the NaN-aware path reads the cube too
    da = xr.DataArray(cube, dims=("band", "y", "x"))
    for plain in (cube, np.rint(np.nan_to_num(cube)).astype(np.uint16)):
        for got, want in zip(D.standardize_scene(_scene(plain)), D.standardize_scene(_scene(da.copy(data=plain)))):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dims", [("y", "x", "band"), ("band", "x", "y"), ("x", "band", "y")])
def test_standardize_scene_reads_a_dataarray_by_its_dim_names(dims):
    cube = _cube()
    cube[:, 2, 3] = np.nan
    da = xr.DataArray(cube, dims=("band", "y", "x"))
    stored = da.transpose(*dims)
    scene = _scene(stored)
    assert scene.shape == (12, 10, 9)
    for got, want in zip(D.standardize_scene(scene), D.standardize_scene(_scene(da))):
        np.testing.assert_array_equal(got, want)
    clean = xr.DataArray(_cube(), dims=("band", "y", "x"))
    for got, want in zip(D.standardize_scene(_scene(clean.transpose(*dims))), D.standardize_scene(_scene(clean))):
        np.testing.assert_array_equal(got, want)


def test_standardize_scene_reads_row_col_band_by_name_and_refuses_unknown_names():
    """(row, col, band) was refused; the engine reads it (ssrn.dims), so the trainer does. Names in no alias list
    are refused, not read by position."""
    da = xr.DataArray(np.moveaxis(_cube(), 0, -1), dims=("row", "col", "band"))
    for got, want in zip(D.standardize_scene(_scene(da)), D.standardize(_cube())):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match=r"dims \('p', 'q', 'band'\): 'p', 'q' are not names of a band, y or x axis"):
        _scene(da.rename(row="p", col="q"))


@pytest.mark.parametrize("dims", [("y", "x", "band"), ("x", "band", "y")])
def test_standardize_and_patch_dataset_read_a_dataarray_by_its_dim_names(dims):
    """standardize and PatchDataset read a DataArray by position: a (y, x, band) cube was standardised over x
    and a PatchDataset of it had 9 bands. They read it by name now, as standardize_scene does."""
    cube, labels = _cube(), _labels()
    order = [("band", "y", "x").index(d) for d in dims]
    ref = D.standardize(cube)
    for got, want in zip(D.standardize(xr.DataArray(cube.transpose(order), dims=dims)), ref):
        np.testing.assert_array_equal(got, want)
    idx = np.arange(0, 90, 7)
    want = D.PatchDataset(ref[0], labels, idx, 5)
    got = D.PatchDataset(xr.DataArray(ref[0].transpose(order), dims=dims), xr.DataArray(labels.T, dims=("x", "y")),
                         idx, 5)
    assert got.bands == 12 and torch.equal(got.batch(np.arange(len(idx))), want.batch(np.arange(len(idx))))
    assert torch.equal(got.labels, want.labels)
    unnamed = xr.DataArray(cube)  # xarray's dim_0..dim_2: read as stored, as a plain array
    assert np.array_equal(D.standardize(unnamed)[1], ref[1])


@pytest.mark.parametrize("call", [lambda a: D.standardize(a), lambda a: D.PatchDataset(a, None, np.arange(3), 5)])
def test_a_dataarray_with_other_dim_names_is_read_as_the_engine_reads_it_or_refused(call):
    """(lat, lon, wavelength) was refused though the engine reads it: read by the engine's table now; names that
    tell no axis are refused, not read by position."""
    da = xr.DataArray(np.moveaxis(_cube(), 0, -1), dims=("lat", "lon", "wavelength"))
    call(da)
    with pytest.raises(DataError, match=r"has dims \('lat', 'lon', 'spectre'\): 'spectre' is not a name of a band, "
                                        r"y or x axis \(dims are read by name, never by their order\); expected "
                                        r"\(band, y, x\), in any order\. Accepted names: .*Fix: "
                                        r"da\.rename\("):
        call(da.rename(wavelength="spectre"))


@pytest.mark.parametrize("dims", [("band", "row", "col"), ("band", "lat", "lon"), ("wavelength", "y", "x"),
                                  ("y", "x", "wavelength")])
def test_a_cube_whose_band_axis_its_names_tell_is_read(dims):
    """``band`` first beside two other dims, or ``y`` and ``x`` beside a third: the axes are known, and were read so
    before dims were read by name (then refused); 2-D labels of other names are read as stored."""
    cube = _cube()
    band = dims.index("band") if "band" in dims else next(i for i, d in enumerate(dims) if d not in ("y", "x"))
    stored = np.moveaxis(cube, 0, band)
    for got, want in zip(D.standardize(xr.DataArray(stored, dims=dims)), D.standardize(cube)):
        np.testing.assert_array_equal(got, want)
    ds = D.PatchDataset(D.standardize(cube)[0], xr.DataArray(_labels(), dims=("row", "col")), np.arange(4), 5)
    assert torch.equal(ds.labels, D.PatchDataset(D.standardize(cube)[0], _labels(), np.arange(4), 5).labels)
    assert torch.equal(ds[torch.tensor(2)][0], ds[2][0])  # a 0-dim tensor index (for i in torch.randperm(n))


@pytest.mark.parametrize("patch", [7.0, "7", True, np.float64(5)])
def test_patch_dataset_refuses_a_patch_that_is_not_a_whole_number(patch):
    """patch=True made 1 x 1 patches; 7.0 and '7' were torch's and Python's TypeErrors."""
    with pytest.raises(OptionError, match=rf"patch must be an odd whole number >= 1 .*got {re.escape(repr(patch))}"):
        D.PatchDataset(D.standardize(_cube())[0], None, np.arange(4), patch)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.batch(np.array([True, False, True, False])), r"got dtype bool: for a mask, pass its positions"),
    (lambda d: d.batch(np.arange(4) + 0.7), "positions must be whole numbers .*got dtype float64"),
    (lambda d: d.targets([0.5, 1.5]), "positions must be whole numbers"),
    (lambda d: d.batch([10 ** 6]), r"positions must be in 0..5 \(its 6 patches; .*got 1000000..1000000"),
    (lambda d: d[6], r"positions must be in 0..5"),
    (lambda d: d[1.0], "index must be a whole number; got 1.0"),
    (lambda d: list(d.iter_batches(0)), r"batch_size must be a whole number >= 1; got 0 \(int\)"),
    (lambda d: list(d.iter_batches(4.0)), r"batch_size must be a whole number >= 1; got 4.0 \(float\)"),
    (lambda d: list(d.iter_batches(-1)), "batch_size must be a whole number >= 1; got -1"),
    (lambda d: list(d.iter_batches(True)), r"batch_size must be a whole number >= 1; got True \(bool\)"),
    (lambda d: list(d.iter_batches(4, shuffle="no")), "shuffle must be True or False; got str 'no'"),
])
def test_patch_dataset_positions_and_batches_are_checked(call, message):
    """A boolean mask was read as positions 1 and 0, floats were truncated, iter_batches(True) gave batches of one
    and iter_batches(-1) none; out-of-range positions were a bare IndexError (still an IndexError: iteration)."""
    d = D.PatchDataset(D.standardize(_cube())[0], _labels(), np.arange(6), 5)
    with pytest.raises(OptionError, match=message) as e:
        call(d)
    if "positions must be in" in message:
        assert isinstance(e.value, IndexError)
    assert d.batch([-1]).shape == (1, 12, 5, 5) and len(list(d)) == 6  # negative positions, as a list's
