"""In-memory scenes in containers a Python user hands over: a numpy masked array's mask is its nodata, a boolean
or object array is refused with the fix that applies, 1-D / 2-D / pandas inputs and tensors without plain data get
an error naming them (hsi_engine/io.py as_scene, runner.check_scene)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hsi_engine
from hsi_engine import BandMismatchError, SceneError
from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE


@pytest.fixture(scope="module")
def model():
    return hsi_engine.load_model(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """A 12 x 11 uint16 crop of the shipped scene (the model's own sensor and scale)."""
    return np.asarray(hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(20, 32), x=slice(30, 41)).values)


def _labels(scene, model, **kw) -> np.ndarray:
    return hsi_engine.classify(scene, model, progress=False, **kw).values


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_masked_arrays_mask_is_its_nodata(cube, model, dtype):
    """classify(np.ma) was refused with 'pixel (y=3, x=4) is nan' although the caller's array held no NaN; the mask
    says which values are no data: those pixels are class 0, and the map is the one of NaN there with nodata=nan."""
    data = cube.astype(dtype)
    mask = np.zeros(data.shape, bool)
    mask[:, 3, 4] = True
    mask[7, 9, 2] = True  # one band of a pixel: the pixel has no full spectrum
    masked = np.ma.masked_array(data, mask=mask, fill_value=0 if dtype is np.uint16 else -9999)
    labels = _labels(masked, model)
    nan = data.astype(np.float32)
    nan[mask] = np.nan
    np.testing.assert_array_equal(labels, _labels(nan, model, nodata=float("nan")))
    assert labels[3, 4] == 0 and labels[9, 2] == 0 and (np.delete(labels.ravel(), [3 * 11 + 4, 9 * 11 + 2]) > 0).all()
    assert masked.mask.sum() == 1 + data.shape[0] and (masked.data == data).all()  # the caller's array untouched


def test_a_masked_array_without_masked_values_is_its_data(cube, model):
    np.testing.assert_array_equal(_labels(np.ma.masked_array(cube), model), _labels(cube, model))


@pytest.mark.parametrize("dtype, fix", [(bool, r"a boolean array is a mask, not a scene"),
                                        (object, r"scene\.astype\(np\.float32\)"),
                                        (np.complex64, r"np\.abs\(scene\)")])
def test_a_scene_of_no_numbers_is_refused_with_the_fix_for_its_dtype(cube, model, dtype, fix):
    """A boolean cube (a mask passed by mistake) was classified; an object array was told to take np.abs."""
    with pytest.raises(SceneError, match=rf"scene has dtype .*; expected integer or floating point values .*{fix}"):
        _labels((cube > 4000) if dtype is bool else cube.astype(dtype), model)


def test_arrays_of_one_or_two_dims_are_told_their_own_fix(cube, model):
    pd = pytest.importorskip("pandas")
    with pytest.raises(SceneError, match=r"got shape \(12, 11\)\. A 2-D image is one band: add an axis "
                                         r"\(df\.to_numpy\(\)\[None\]\)"):
        _labels(pd.DataFrame(cube[0]), model)
    with pytest.raises(SceneError, match=r"got shape \(12, 11\)\. A 2-D image is one band: add an axis "
                                         r"\(arr\[None\]\)"):
        _labels(cube[0], model)
    with pytest.raises(SceneError, match=r"got shape \(26400,\)\. Reshape it to \(band, y, x\)"):
        _labels(cube.ravel(), model)


def test_a_scene_of_no_bands_is_named_as_such(cube, model):
    with pytest.raises(BandMismatchError, match=r"scene has 0 bands, .*\(a band selection left none\)") as e:
        _labels(cube[:0], model)
    assert "0-band" not in str(e.value)


def test_tensors_without_plain_values(cube, model):
    """A meta tensor raised torch's NotImplementedError; a conjugated or negated view numpy's RuntimeError."""
    with pytest.raises(SceneError, match=r"the scene is a meta tensor \(shape \(200, 12, 11\)\), which holds no "
                                         r"values"):
        _labels(torch.empty(200, 12, 11, device="meta"), model)
    neg = torch.from_numpy(-cube.astype(np.float32))._neg_view()  # values equal to the cube's, as a lazy negation
    np.testing.assert_array_equal(_labels(neg, model), _labels(cube.astype(np.float32), model))
