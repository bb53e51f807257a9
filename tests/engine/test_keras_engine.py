"""The engine runs the seed's released Keras SSRN (imported with ``ssrn.keras``) exactly as patch mode does.

References here never touch the engine: the scene is standardised with sklearn's ``preprocessing.scale``
(the seed's own call), zero-padded by 3, and fed patch by patch to ``SSRN.forward`` of the imported model.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

import hsi_engine
from ssrn.keras import import_keras_to_dir

IN_FILE = "Indian_best_RES_3D_SS4_10_1.hdf5"
SHIPPED = Path(__file__).resolve().parents[2] / "hsi_engine" / "data" / "indian_pines" / "indian_pines.h5"


@pytest.fixture(scope="module")
def seed_model(seed_ssrn_dir: Path, tmp_path_factory):
    out = import_keras_to_dir(seed_ssrn_dir / IN_FILE, tmp_path_factory.mktemp("keras") / "seed_in",
                              dataset="indian_pines", data_dir=seed_ssrn_dir.parent)
    return hsi_engine.load_model(out)


@pytest.fixture(scope="module")
def scene():
    with h5py.File(SHIPPED, "r") as f:
        cube, labels, wl = f["cube"][()], f["labels"][()].astype(np.int64), f["wavelength"][()]
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"wavelength": ("band", wl)}, name="indian_pines")
    return da, labels


def seed_scale(cube: np.ndarray) -> np.ndarray:
    """sklearn ``preprocessing.scale`` on the (pixels, bands) matrix, as the seed does; back to (band, y, x)."""
    from sklearn import preprocessing

    b, h, w = cube.shape
    d = preprocessing.scale(np.moveaxis(cube, 0, -1).reshape(h * w, b).astype(np.float64))
    return np.moveaxis(d.reshape(h, w, b), -1, 0).astype(np.float32)


def patch_forward(model, normed: np.ndarray, ys: np.ndarray, xs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of ``model.forward`` on the 7x7 patches of the zero-padded normalised scene at (ys, xs)."""
    r = model.config.patch // 2
    padded = np.pad(normed, ((0, 0), (r, r), (r, r)))
    out = []
    with torch.inference_mode():
        for i in range(0, len(ys), batch):
            p = np.stack([padded[:, y:y + 2 * r + 1, x:x + 2 * r + 1] for y, x in zip(ys[i:i + batch], xs[i:i + batch])])
            out.append(model(torch.from_numpy(p)).numpy())
    return np.concatenate(out)


def metrics(pred: np.ndarray, truth: np.ndarray, k: int) -> dict:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (truth - 1, pred - 1), 1)
    pc = np.diag(cm) / cm.sum(axis=1)
    oa = np.trace(cm) / cm.sum()
    pe = (cm.sum(0) * cm.sum(1)).sum() / cm.sum() ** 2
    return {"oa": oa, "aa": pc.mean(), "kappa": (oa - pe) / (1 - pe), "per_class": pc, "cm": cm}


def test_engine_equals_patch_forward_on_every_pixel_of_a_crop(seed_model, scene):
    """A 16 x 20 crop (a scene of its own: its borders are zero-padded) in 7 x 8 tiles."""
    da, _ = scene
    crop = da.isel(y=slice(60, 76), x=slice(20, 40))
    res = hsi_engine.classify(crop, seed_model, tile=(7, 8), backend="eager", probabilities=True, progress=False)
    # reference: the crop standardised with the model's recorded whole-scene statistics
    mean = np.asarray(seed_model.meta["mean"])[:, None, None]
    std = np.asarray(seed_model.meta["std"])[:, None, None]
    normed = ((crop.values.astype(np.float64) - mean) / std).astype(np.float32)
    yy, xx = np.mgrid[0:16, 0:20]
    logits = patch_forward(seed_model, normed, yy.ravel(), xx.ravel())
    want = (logits.argmax(1) + 1).reshape(16, 20)
    got = res["labels"].values
    assert got.dtype == np.uint8 and got.shape == (16, 20)
    np.testing.assert_array_equal(got, want)
    prob = torch.softmax(torch.from_numpy(logits), 1).numpy().reshape(16, 20, -1).transpose(2, 0, 1)
    np.testing.assert_allclose(res["probabilities"].values, prob, atol=1e-5)


def test_engine_full_scene_accuracy_equals_patch_mode(seed_model, scene):
    """OA / AA / kappa / per-class of the engine's full-scene map equal patch mode's on all 10249 labelled pixels.

    Patch mode on every labelled pixel costs ~50 M multiply-adds each (minutes on 2 CPU cores), so the
    reference is the patch forward on a stratified subset plus, for all pixels, the model's own
    ``spatial(spectral(.))`` on the zero-padded seed-normalised scene -- exact because the spectral
    layers are per-pixel, and checked against the patch forward on the subset.
    """
    da, labels = scene
    got = hsi_engine.classify(da, seed_model, backend="eager", progress=False)
    assert got.attrs["class_names"][8] == "Oats"
    got = got.values

    normed = seed_scale(da.values)  # the seed's preprocessing, not the engine's
    ys, xs = np.nonzero(labels)
    with torch.inference_mode():
        feats = seed_model.spectral(torch.from_numpy(np.pad(normed, ((0, 0), (3, 3), (3, 3))))[None])[0]
        win = feats.unfold(1, 7, 1).unfold(2, 7, 1)  # (128, 145, 145, 7, 7)
        ref_logits = seed_model.spatial(win[:, ys, xs].permute(1, 0, 2, 3).contiguous()).numpy()
    ref = ref_logits.argmax(1) + 1

    rng = np.random.default_rng(0)
    sub = np.concatenate([rng.choice(np.flatnonzero(labels[ys, xs] == c), 4, replace=False) for c in range(1, 17)])
    direct = patch_forward(seed_model, normed, ys[sub], xs[sub])
    np.testing.assert_allclose(ref_logits[sub], direct, atol=1e-4 * np.abs(direct).max())
    np.testing.assert_array_equal(ref[sub], direct.argmax(1) + 1)
    np.testing.assert_array_equal(got[ys, xs][sub], direct.argmax(1) + 1)

    np.testing.assert_array_equal(got[ys, xs], ref)
    m_engine, m_ref = metrics(got[ys, xs].astype(np.int64), labels[ys, xs], 16), metrics(ref, labels[ys, xs], 16)
    np.testing.assert_array_equal(m_engine["cm"], m_ref["cm"])
    for k in ("oa", "aa", "kappa"):
        assert m_engine[k] == m_ref[k]
    np.testing.assert_array_equal(m_engine["per_class"], m_ref["per_class"])
    # the released model on all labelled pixels (see tests/ssrn/test_keras.py): OA 0.9950, AA 0.9131
    assert m_engine["oa"] == pytest.approx(0.99502, abs=2e-4)
    assert m_engine["aa"] == pytest.approx(0.91311, abs=2e-4)
    # every pixel of the scene is classified (no unclassified border ring)
    assert got.min() >= 1 and got.max() <= 16
