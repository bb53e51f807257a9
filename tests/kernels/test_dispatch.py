"""Backend choice: fallbacks log once and never raise; unknown names are errors; compile equals eager."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import dispatch
from kernels.dispatch import available_backends, get_spectral_stage, resolve_backend
from kernels.spectral import _random_program, spectral_stage_reference

CPU = torch.device("cpu")


def test_cpu_backends_and_auto_is_eager() -> None:
    assert available_backends(CPU) == ["eager", "compile"]
    assert resolve_backend("auto", CPU) == "eager"
    assert get_spectral_stage("auto", CPU) is spectral_stage_reference
    assert get_spectral_stage("eager", "cpu") is spectral_stage_reference


def test_triton_without_cuda_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    dispatch._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert resolve_backend("triton", CPU) == "eager"
        assert get_spectral_stage("triton", CPU) is spectral_stage_reference
        assert resolve_backend("triton", CPU) == "eager"
    records = [r for r in caplog.records if r.name == "kernels.dispatch"]
    assert len(records) == 1, [r.getMessage() for r in records]
    msg = records[0].getMessage()
    assert "triton" in msg and "CUDA" in msg and "eager" in msg


def test_auto_on_cuda_without_a_working_kernel_says_so_once(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """``auto`` in bf16 on a CUDA device whose Triton fails its self-check runs eager, several times slower: one
    warning names why (it had been a DEBUG line); float32, where auto picks eager anyway, says nothing."""
    dispatch._warn_once.cache_clear()
    monkeypatch.setattr(dispatch, "_triton_unavailable_reason", lambda dev: None)
    monkeypatch.setattr(dispatch, "_triton_self_check", lambda dev, dtype: "the Triton kernel failed its self-check "
                        "(CalledProcessError: no C compiler)")
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert resolve_backend("auto", cuda, torch.float32) == "eager"
        assert not caplog.records
        assert resolve_backend("auto", cuda, torch.bfloat16) == "eager"
        assert resolve_backend("auto", cuda, torch.bfloat16) == "eager"
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "'auto' runs the bfloat16 spectral stage on the eager backend" in msg and "no C compiler" in msg
    monkeypatch.setattr(dispatch, "_triton_self_check", lambda dev, dtype: None)
    assert resolve_backend("auto", cuda, torch.bfloat16) == "triton"


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown spectral backend 'cudnn'.*'auto', 'eager', 'compile', 'triton'"):
        resolve_backend("cudnn", CPU)
    with pytest.raises(ValueError, match="valid backends"):
        get_spectral_stage("", CPU)


def test_check_backend_needs_no_device() -> None:
    """What a cluster's driver runs before its workers start: the name alone, the same error as resolve_backend."""
    dispatch.check_backend("compile")
    for bad in ("TRITON", "", None, ["eager"]):
        with pytest.raises(ValueError, match=r"unknown spectral backend .*valid backends are"):
            dispatch.check_backend(bad)  # type: ignore[arg-type]


def test_compile_backend_equals_eager() -> None:
    """torch.compile of the reference (dynamic pixel dim): same numbers, and new pixel counts reuse it: a square
    tile's pixels, an edge tile's (a view of a (3, 8) tile: its base's sizes were a guard), band-major pixels."""
    from torch._dynamo.utils import counters

    prog = _random_program(31, 24, 128, form="seed", stage_norms=2, generator=torch.Generator().manual_seed(0))
    fn = get_spectral_stage("compile", CPU)
    assert fn is get_spectral_stage("compile", CPU)  # cached
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 8, 31, generator=g).view(64, 31), torch.randn(3, 8, 31, generator=g).view(24, 31),
          torch.randn(31, 37, generator=g).t(), torch.randn(7, 31, generator=g)]
    graphs = None
    for x in xs:
        torch.testing.assert_close(fn(x, prog), spectral_stage_reference(x, prog), rtol=1e-5, atol=1e-5)
        graphs = graphs if graphs is not None else counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


def test_auto_choice_follows_the_measured_table() -> None:
    """On CUDA: the fused kernel in bf16 / fp16 (fastest there), the Conv3d eager path in exact float32 (the
    fused kernel has no tensor-core path there and measured slower); eager wherever Triton cannot run."""
    assert dispatch.auto_choice("cuda", torch.bfloat16, True) == "triton"
    assert dispatch.auto_choice("cuda", torch.float16, True) == "triton"
    assert dispatch.auto_choice("cuda", torch.float32, True) == "eager"
    assert dispatch.auto_choice("cuda", torch.bfloat16, False) == "eager"
    assert dispatch.auto_choice("cpu", torch.bfloat16, True) == "eager"
    assert resolve_backend("auto", CPU, torch.bfloat16) == "eager"
    assert dispatch.auto_choice(torch.device("cuda"), torch.bfloat16, True) == "triton"  # a device: its type
    with pytest.raises(ValueError, match=r"dtype must be a torch.dtype .*; got str 'float32'"):
        dispatch.get_spectral_stage("triton", CPU, "float32")  # != torch.float32: took the low-precision path


@pytest.mark.parametrize("form, bands", [("paper", 200), ("paper", 103), ("seed", 31)])
def test_conv3d_formulation_equals_the_reference(form: str, bands: int) -> None:
    """The Conv3d formulation CUDA's eager path uses: same stage, another summation order (fp32: 1e-5 of the
    features' scale; near-zero features differ by more than 1e-5 of themselves where oneDNN picks another
    algorithm, as on an AVX2-only CPU)."""
    from kernels.spectral import spectral_stage_conv3d

    g = torch.Generator().manual_seed(bands)
    prog = _random_program(bands, 24, 128, form=form, stage_norms=2 if form == "seed" else 0, generator=g)
    x = torch.randn(45, bands, generator=g)
    ref = spectral_stage_reference(x, prog)
    out = spectral_stage_conv3d(x, prog)
    assert out.shape == ref.shape == (45, 128)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert ref.abs().max() > 0.1  # features that can disagree
    with pytest.raises(ValueError, match=rf"expected pixels \(P, {bands}\)"):
        spectral_stage_conv3d(x[:, :-1], prog)



def test_gluon_check_pixels_are_not_only_the_halo() -> None:
    """The Gluon self-check's input: the scene's pixels spread over the whole call (not only its first, which on
    a first tile are zero halo rows) and seeded random spectra, in the call's dtype."""
    x = torch.zeros(10_000, 23, dtype=torch.bfloat16)
    x[-1] = 1.0  # a scene pixel only a spread sample reaches
    got = dispatch._check_pixels(x, n=64)
    assert got.dtype == torch.bfloat16 and got.shape == (128, 23)
    assert (got[:64] == 1.0).all(dim=1).sum() == 1  # the last pixel is among the scene's
    noise = got[64:].float()
    assert noise.std() > 0.5 and len(noise.unique(dim=0)) == 64
    assert torch.equal(dispatch._check_pixels(x, n=64), got)  # seeded: the same check every time
    small = dispatch._check_pixels(torch.ones(3, 23), n=64)  # a call smaller than n: each pixel once
    assert small.shape == (67, 23) and (small[:3] == 1).all()
