"""The engine's CUDA path (pinned buffers, side-stream copies, every spectral backend) on the whole real scene.

Marked ``gpu``: CI has no GPU; run with ``pytest -m gpu tests/engine``. The reference is patch mode
(``SSRN.forward`` on every pixel's 7x7 patch of the zero-padded normalised scene) on the same GPU with TF32
off, the contract of ``precision="float32"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hsi_engine
from hsi_engine.fused import exact_fp32, patch_forward
from ssrn import load_model

from test_exactness import SHIPPED_MODEL, indian_pines, normalise  # noqa: F401  (indian_pines: a fixture)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def shipped_reference(indian_pines):
    """(raw cube, model, patch-mode logits (K, H, W) float64) for the shipped model on the whole scene."""
    cube = indian_pines[0]
    model = load_model(SHIPPED_MODEL)
    with exact_fp32():
        ref = patch_forward(model.cuda(), normalise(cube, model).cuda(), batch=4096)
    model.cpu()
    return cube, model, ref.double().cpu().t().reshape(-1, *cube.shape[1:])


@pytest.mark.parametrize("backend", ["eager", "triton", "auto"])
@pytest.mark.parametrize("tile", [512, 48])
def test_cuda_engine_equals_patch_mode(shipped_reference, backend: str, tile: int) -> None:
    cube, model, ref = shipped_reference
    ds = hsi_engine.classify(cube, model, device="cuda", backend=backend, tile=tile, probabilities=True,
                             progress=False)
    labels = ds["labels"].values
    np.testing.assert_array_equal(labels, ref.argmax(0).numpy() + 1)
    prob = torch.softmax(ref, 0).numpy()
    assert np.abs(ds["probabilities"].values - prob).max() < 1e-4


def test_cuda_bf16_is_opt_in_and_close(shipped_reference, capsys) -> None:
    cube, model, ref = shipped_reference
    labels = hsi_engine.classify(cube, model, device="cuda", backend="triton", precision="bfloat16",
                                 progress=False).values
    agree = float((labels == ref.argmax(0).numpy() + 1).mean())
    with capsys.disabled():
        print(f"\nbfloat16 triton spectral stage, whole Indian Pines scene: argmax agreement {agree:.5f}")
    assert agree > 0.98


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_cuda_low_precision_spatial_stage_is_close(shipped_reference, precision: str, capsys) -> None:
    """``spatial_precision`` = the engine's precision on CUDA (bf16 / fp16 dense GEMMs instead of TF32): it runs,
    moves the logits, and the map stays as close to patch mode as the low-precision spectral stage alone."""
    from hsi_engine.fused import FusedSSRN, pad_scene

    cube, model, ref = shipped_reference
    x = pad_scene(normalise(cube, model), model.config.halo).cuda()
    want = ref.argmax(0).numpy()
    out = {}
    for sp in ("float32", precision):
        engine = FusedSSRN(model, backend="triton", device="cuda", precision=precision, spatial_precision=sp)
        assert engine.spatial_form == "dense"
        out[sp] = engine(x).double().cpu()
    agree = {sp: float((o.argmax(0).numpy() == want).mean()) for sp, o in out.items()}
    with capsys.disabled():
        print(f"\n{precision} engine on CUDA, whole Indian Pines scene: argmax agreement with patch mode {agree}")
    assert not torch.equal(out["float32"], out[precision])
    assert agree[precision] > 0.98 and agree[precision] > agree["float32"] - 0.002


def test_cuda_matches_cpu_engine_on_a_crop(shipped_reference) -> None:
    cube, model, _ = shipped_reference
    raw = np.ascontiguousarray(cube[:, 40:90, 30:101])
    gpu = hsi_engine.classify(raw, model, device="cuda", backend="triton", progress=False).values
    cpu = hsi_engine.classify(raw, model, device="cpu", backend="eager", progress=False).values
    np.testing.assert_array_equal(gpu, cpu)


def test_cuda_zarr_round_trip(shipped_reference, tmp_path) -> None:
    """The streamed path: a chunked zarr scene in, a zarr class map out, on CUDA."""
    xr = pytest.importorskip("xarray")
    cube, model, ref = shipped_reference
    src = tmp_path / "scene.zarr"
    xr.DataArray(cube, dims=("band", "y", "x"), name="reflectance").chunk({"band": -1, "y": 50, "x": 60}).to_zarr(src)
    out = hsi_engine.classify_to_file(src, model, tmp_path / "map.zarr", device="cuda", backend="triton",
                                      tile=64, progress=False)
    got = xr.open_zarr(out)["classes"].values
    np.testing.assert_array_equal(got, ref.argmax(0).numpy() + 1)
