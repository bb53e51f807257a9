"""The pure-torch spectral stage's CPU fast paths (kernels/spectral.py): conv + ReLU, and a residual block's
conv2 + identity + ReLU, each as one oneDNN primitive. float32: the same bits as the plain layers; bf16: the
residual sum rounded once; non-finite input: the plain layers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kernels import spectral
from kernels.program import FoldedConv
from kernels.spectral import _random_program, spectral_stage_reference

needs_op = pytest.mark.skipif(spectral._CONV_POINTWISE is None,
                              reason="this torch has no torch.ops.mkldnn._convolution_pointwise")
needs_bf16_op = pytest.mark.skipif(spectral._CONV_POINTWISE is None or not spectral._onednn_bf16(),
                                   reason="oneDNN has no bfloat16 convolutions on this CPU (it needs AVX-512 or "
                                          "AVX-NE-CONVERT); the stage takes F.conv2d here")


def _plain(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    out = F.conv2d(y, c.weight.unsqueeze(-1), c.bias, stride=(c.stride, 1), padding=(c.padding, 0))
    return F.relu(out) if c.relu else out


def _ssrn_form(prog):
    """The shipped SSRN's block form: conv1 + ReLU, conv2 without, ReLU after the identity add (the random
    "paper" program puts a ReLU after conv2 too)."""
    return replace(prog, blocks=tuple(replace(b, conv2=replace(b.conv2, relu=False)) for b in prog.blocks))


def _all_plain(monkeypatch) -> None:
    monkeypatch.setattr(spectral, "_CONV_POINTWISE", None)
    monkeypatch.setattr(spectral, "_CONV_POINTWISE_BINARY", None)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16_op)])
@pytest.mark.parametrize("c_in,c_out,k,stride,pad,bands", [(24, 24, 7, 1, 3, 97), (1, 24, 7, 2, 0, 103),
                                                           (20, 20, 5, 1, 2, 31), (24, 128, 97, 1, 0, 97)])
def test_fused_conv_relu_gives_the_same_bits(dtype, c_in, c_out, k, stride, pad, bands) -> None:
    g = torch.Generator().manual_seed(k * 10 + c_in)
    c = FoldedConv(torch.randn(c_out, c_in, k, generator=g).to(dtype), torch.randn(c_out, generator=g).to(dtype),
                   stride, pad, True)
    y = torch.randn(1, c_in, bands, 333, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = spectral._conv(y, c)
        assert spectral._fusable(y, c)
        want = _plain(y, c)
    assert torch.equal(got, want)
    assert got.dtype == dtype and got.stride() == want.stride()


@needs_bf16_op
def test_fused_conv_relu_under_autocast_runs_in_the_autocast_dtype() -> None:
    """autocast does not know the oneDNN op: its operands are cast as autocast casts conv2d's."""
    g = torch.Generator().manual_seed(3)
    c = FoldedConv(torch.randn(24, 24, 7, generator=g), torch.randn(24, generator=g), 1, 3, True)
    y = torch.randn(1, 24, 97, 256, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = spectral._conv(y, c), _plain(y, c)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


def test_fused_path_is_not_taken_with_autograd_or_off_cpu() -> None:
    c = FoldedConv(torch.randn(4, 4, 3, requires_grad=True), torch.randn(4), 1, 1, True)
    y = torch.randn(1, 4, 9, 5).contiguous(memory_format=torch.channels_last)
    out = spectral._conv(y, c)
    assert out.grad_fn is not None  # F.conv2d then F.relu: differentiable
    out.sum().backward()
    assert c.weight.grad is not None
    if torch.cuda.is_available():
        assert not spectral._fusable(y.cuda(), c)


@needs_bf16_op
def test_mixed_dtypes_are_refused_by_the_fused_path() -> None:
    c = FoldedConv(torch.randn(4, 4, 3), torch.randn(4), 1, 1, True)
    y = torch.randn(1, 4, 9, 5, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), pytest.raises(RuntimeError, match="differ"):
        spectral._conv(y, c)


@needs_op
@pytest.mark.parametrize("relu", [True, False])
def test_fused_residual_end_float32_gives_the_same_bits(relu: bool) -> None:
    """[ReLU](conv(h) + y) as one primitive: in float32 the same bits as conv, add, ReLU."""
    g = torch.Generator().manual_seed(11)
    c = FoldedConv(0.2 * torch.randn(24, 24, 7, generator=g), torch.randn(24, generator=g), 1, 3, False)
    h = torch.randn(1, 24, 97, 300, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randn(1, 24, 97, 300, generator=g).relu().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = spectral._conv_add_cpu(h, c, y, relu)
        want = _plain(h, c) + y
    assert torch.equal(got, F.relu(want) if relu else want)


@needs_bf16_op
def test_fused_residual_end_bf16_rounds_once() -> None:
    """In bf16 the fused sum is rounded once from the conv's float32 result (as the GPU kernels do): within one
    bf16 rounding of the float32 truth everywhere, and closer to it on average than conv-then-add."""
    g = torch.Generator().manual_seed(12)
    c = FoldedConv(0.2 * torch.randn(24, 24, 7, generator=g), torch.randn(24, generator=g), 1, 3, False)
    h = torch.randn(1, 24, 97, 300, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randn(1, 24, 97, 300, generator=g).relu().contiguous(memory_format=torch.channels_last)
    cb = replace(c, weight=c.weight.bfloat16(), bias=c.bias.bfloat16())
    hb, yb = h.bfloat16(), y.bfloat16()
    with torch.no_grad():
        truth = F.relu(_plain(hb.float(), replace(cb, weight=cb.weight.float(), bias=cb.bias.float())) + yb.float())
        fused = spectral._conv_add_cpu(hb, cb, yb, True).float()
        passes = F.relu(_plain(hb, cb) + yb).float()
    assert ((fused - truth).abs() <= 2.0 ** -8 * truth.abs() + 1e-6).all()
    assert (fused - truth).abs().mean() < (passes - truth).abs().mean()


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16_op)])
def test_stage_with_fused_layers_matches_the_plain_stage(dtype, monkeypatch) -> None:
    """The whole stage in the shipped SSRN's form: float32 bit for bit; bf16 within the bf16 tolerance of the
    kernel tests (the fused residual sums round once). Only where the fused layers run in that dtype: otherwise
    it compares the plain layers with themselves."""
    g = torch.Generator().manual_seed(7)
    prog = _ssrn_form(_random_program(103, 24, 40, generator=g)).to(dtype=dtype)
    x = (torch.randn(300, 103, generator=g) * 3).to(dtype)
    with torch.no_grad():
        now = spectral_stage_reference(x, prog)
        _all_plain(monkeypatch)
        before = spectral_stage_reference(x, prog)
    if dtype == torch.float32:
        assert torch.equal(now, before)
    else:
        scale = before.float().abs().max()
        assert (now.float() - before.float()).abs().max() <= 1e-2 * scale


@needs_op
def test_non_finite_input_takes_the_plain_layers(monkeypatch) -> None:
    """oneDNN's fused ReLU maps NaN to 0; with NaN or inf in the input the stage runs the plain layers, so NaN
    propagates as in SSRN.forward, and with finite input it runs the fused ones."""
    used = []
    real, real_add = spectral._conv_relu_cpu, spectral._conv_add_cpu
    monkeypatch.setattr(spectral, "_conv_relu_cpu", lambda y, c: (used.append("relu"), real(y, c))[1])
    monkeypatch.setattr(spectral, "_conv_add_cpu", lambda h, c, y, r: (used.append("add"), real_add(h, c, y, r))[1])
    prog = _ssrn_form(_random_program(31, 8, 16, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(20, 31)
    with torch.no_grad():
        spectral_stage_reference(x, prog)
        assert set(used) == {"relu", "add"}
        used.clear()
        for bad in (float("nan"), float("inf")):
            y = x.clone()
            y[3, 4] = bad
            out = spectral_stage_reference(y, prog)
            assert not used
            assert not torch.isfinite(out[3]).all() and torch.isfinite(out[:3]).all()
        nan = x.clone()
        nan[3, 4] = float("nan")
        now = spectral_stage_reference(nan, prog)
        _all_plain(monkeypatch)
        plain = spectral_stage_reference(nan, prog)
    assert torch.isnan(now[3]).all() and torch.equal(now.nan_to_num(7.0), plain.nan_to_num(7.0))


def test_fused_path_only_for_float32_and_bfloat16() -> None:
    """oneDNN has no float64 convolution and float16 stays on the plain layers (the path measured): both take
    F.conv2d, whatever autocast says."""
    c = FoldedConv(torch.randn(4, 4, 3), torch.randn(4), 1, 1, True)
    y = torch.randn(1, 4, 9, 5).contiguous(memory_format=torch.channels_last)
    c64 = replace(c, weight=c.weight.double(), bias=c.bias.double())
    assert not spectral._fusable(y.double(), c64)
    assert not spectral._fusable(y.half(), replace(c, weight=c.weight.half(), bias=c.bias.half()))
    with torch.autocast("cpu", dtype=torch.float16):
        assert not spectral._fusable(y, c)
    with torch.no_grad():
        out = spectral._conv(y.double(), c64)
    assert out.dtype == torch.float64 and torch.equal(out, _plain(y.double(), c64))
    if spectral._CONV_POINTWISE is not None:
        assert spectral._fusable(y, c)


@pytest.mark.parametrize("stage", [spectral_stage_reference, spectral.spectral_stage_conv3d])
def test_every_formulation_has_the_kernels_contract_on_edge_inputs(stage) -> None:
    """The same answers as the Triton kernel's (which shares these checks): no pixels give an empty result,
    integer pixels, fewer bands than the stem kernel and weights of another dtype are named with the fix,
    not left to a reshape or conv error from inside torch."""
    prog = _random_program(13, 24, 40, generator=torch.Generator().manual_seed(0))
    out = stage(torch.empty(0, 13), prog)
    assert out.shape == (0, 40) and out.dtype == torch.float32
    with pytest.raises(TypeError, match=r"floating point .*\(x\.float\(\)\)"):
        stage(torch.zeros(3, 13, dtype=torch.int16), prog)
    with pytest.raises(TypeError, match=r"x is torch.bfloat16 but the weights are torch.float32: convert x "
                                        r"\(x.to\(torch.float32\)\) or the weights \(program.to\(dtype=x.dtype\)\)"):
        stage(torch.zeros(3, 13, dtype=torch.bfloat16), prog)
    assert stage(torch.zeros(3, 13, dtype=torch.bfloat16), prog.to(dtype=torch.bfloat16)).shape == (3, 40)
    short = replace(prog, bands=5)
    with pytest.raises(ValueError, match="5 bands are fewer than the stem kernel 7"):
        stage(torch.zeros(3, 5), short)


def test_bf16_takes_the_plain_layers_where_onednn_has_no_bf16(monkeypatch) -> None:
    """On a CPU whose oneDNN has no bfloat16 convolutions (AVX2 only, as AMD EPYC before Zen 4) the fused ops
    raise ('bf16 path needs the cpu support avx_ne_convert or avx512bw'): a bf16 stage runs F.conv2d there, the
    same bits as the plain stage, and float32 keeps the fused ops."""
    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: False)
    g = torch.Generator().manual_seed(5)
    prog = _ssrn_form(_random_program(37, 8, 16, generator=g))
    c = FoldedConv(torch.randn(4, 4, 3), torch.randn(4), 1, 1, True)
    y = torch.randn(1, 4, 9, 5).contiguous(memory_format=torch.channels_last)
    assert not spectral._fusable(y.bfloat16(), replace(c, weight=c.weight.bfloat16(), bias=c.bias.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not spectral._fusable(y, c)
    assert spectral._fusable(y, c) == (spectral._CONV_POINTWISE is not None)
    x = torch.randn(40, 37, generator=g).bfloat16()
    with torch.no_grad():
        got = spectral_stage_reference(x, prog.to(dtype=torch.bfloat16))
        _all_plain(monkeypatch)
        want = spectral_stage_reference(x, prog.to(dtype=torch.bfloat16))
    assert torch.equal(got, want)


@needs_op
def test_onednn_turned_off_takes_aten_s_convolutions() -> None:
    """torch.backends.mkldnn.flags(enabled=False) (a way around a oneDNN fault on some CPU) was ignored: the fused
    oneDNN ops still ran. Turned off, the stage takes the plain convolutions, with the reference's numbers."""
    import warnings

    c = FoldedConv(torch.randn(24, 24, 7), torch.randn(24), 1, 3, True)
    y = torch.randn(1, 24, 97, 40).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert spectral._fusable(y, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch's note on TF32 for Intel GPUs when the flags are set)
            with torch.backends.mkldnn.flags(enabled=False):
                assert not spectral._fusable(y, c)
                torch.testing.assert_close(spectral._conv(y, c), _plain(y, c), rtol=1e-5, atol=1e-5)
        assert spectral._fusable(y, c)
