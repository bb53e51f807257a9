"""Folding and the fused tile function against the model's own stages (random weights, random BN stats)."""

from __future__ import annotations

import pytest
import torch

from _models import randomise_bn
from hsi_engine.fused import (FusedSSRN, dense_spatial, fold_spatial, fold_spectral, pad_scene, patch_forward,
                              spatial_dense, spatial_windows)
from kernels.spectral import spectral_stage_reference
from ssrn.config import SSRNConfig
from ssrn.model import SSRN

SEED_FORM = dict(block_form="seed", stage_norms=2, spatial_shortcut="projection", conv_bias=True, bn_eps=1e-3,
                 spectral_blocks=1, spatial_blocks=1)
CONFIGS = {
    "paper": {},
    "paper-bias": dict(conv_bias=True),
    "seed": SEED_FORM,
    "seed-2blocks": dict(SEED_FORM, spectral_blocks=2, spatial_blocks=2),
    "spc": dict(variant="spc"),
    "spa": dict(variant="spa"),
    "patch5": dict(patch=5),
    "patch9": dict(patch=9),
}


def random_model(bands: int = 23, classes: int = 5, seed: int = 0, **kw) -> SSRN:
    torch.manual_seed(seed)
    return randomise_bn(SSRN(SSRNConfig(bands=bands, classes=classes, **kw)), seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fold_spectral_equals_model_spectral(name):
    m = random_model(**CONFIGS[name])
    x = torch.randn(3, m.config.bands, 4, 5)
    with torch.no_grad():
        ref = m.spectral(x)  # (3, 128, 4, 5)
    prog = fold_spectral(m)
    out = spectral_stage_reference(x.permute(0, 2, 3, 1).reshape(-1, m.config.bands), prog)  # (60, 128)
    out = out.reshape(3, 4, 5, -1).permute(0, 3, 1, 2)
    assert rel_err(out, ref) < 1e-5
    assert prog.bands == m.config.bands and prog.out_features == m.config.reduce_width
    assert prog.reduced_bands == m.config.reduced_bands


def test_fold_spectral_paper_block_structure():
    prog = fold_spectral(random_model())
    assert len(prog.blocks) == 2 and not prog.post
    for b in prog.blocks:
        assert b.relu and b.pre is None and b.conv1.relu and not b.conv2.relu
    seed = fold_spectral(random_model(**dict(SEED_FORM, spectral_blocks=2)))
    assert [b.pre is not None for b in seed.blocks] == [False, True]
    assert not any(b.relu or b.conv2.relu for b in seed.blocks) and len(seed.post) == 2


def test_fold_handles_bias_and_no_bias():
    for bias in (False, True):
        m = random_model(conv_bias=bias)
        assert (m.stem.bias is not None) == bias
        prog = fold_spectral(m)
        y = torch.zeros(1, m.config.bands)
        # spectrum 0 (padding) maps to a non-zero feature vector: the folded biases carry the BN shifts
        assert spectral_stage_reference(y, prog).abs().sum() > 0


@pytest.mark.parametrize("name", ["paper", "seed", "seed-2blocks", "spc", "spa"])
def test_fold_spatial_equals_model_spatial(name):
    m = random_model(**CONFIGS[name])
    feats = torch.randn(6, m.config.reduce_width, m.config.patch, m.config.patch)
    with torch.no_grad():
        ref = m.spatial(feats)
    sp = fold_spatial(m)
    stem = torch.relu(torch.nn.functional.conv2d(feats, sp.stem_w, sp.stem_b))
    assert rel_err(spatial_windows(stem, sp), ref) < 1e-5


@pytest.mark.parametrize("name", ["paper", "seed", "seed-2blocks", "spc", "spa", "patch5", "patch9"])
def test_dense_spatial_equals_the_convs(name):
    """The Toeplitz form of the per-window stage (one GEMM per conv, pooling folded into the head) computes what
    the convs compute: pre-activations, projection shortcuts, stage affines and window sizes 3 / 5 / 7."""
    m = random_model(**CONFIGS[name])
    sp = fold_spatial(m)
    win = m.config.patch - 2
    wins = torch.randn(9, sp.stem_w.shape[0], win, win)
    ds = dense_spatial(sp, win)
    assert rel_err(spatial_dense(wins, ds), spatial_windows(wins, sp)) < 1e-5
    for t in (t for blk in ds.blocks for t in (blk[1], blk[3])):
        assert t.shape == (sp.stem_w.shape[0] * win * win,) * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["paper", "seed-2blocks", "spc"])
def test_dense_spatial_fused_epilogues_give_the_bits_of_separate_ops(name, dtype):
    """spatial_dense's bias-ReLU inside the GEMM and its in-place residual add-ReLU round exactly as addmm, relu
    and a new buffer for relu(h + s) do: ReLU commutes with rounding to the output dtype."""
    from benchmarks.spatial_epilogue import separate_epilogues  # spatial_dense as it was

    m = random_model(**CONFIGS[name])
    sp = fold_spatial(m)
    win = m.config.patch - 2
    ds = dense_spatial(sp, win).to(dtype=dtype)
    x = torch.randn(33, sp.stem_w.shape[0], win, win, dtype=dtype)
    assert torch.equal(spatial_dense(x, ds), separate_epilogues(x, ds))


@pytest.mark.parametrize("spatial", ["conv", "dense"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_tile_equals_patch_mode(name, spatial):
    m = random_model(**CONFIGS[name])
    x = torch.randn(m.config.bands, 13, 11)
    ref = patch_forward(m, x).t().reshape(m.config.classes, 13, 11)
    out = FusedSSRN(m, backend="eager", spatial=spatial)(pad_scene(x, m.halo))
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(out.argmax(0), ref.argmax(0))


def test_fused_chunking_does_not_change_results():
    m = random_model()
    x = pad_scene(torch.randn(m.config.bands, 9, 10), m.halo)
    a = FusedSSRN(m, backend="eager")(x)
    b = FusedSSRN(m, backend="eager", max_pixels=7)(x)  # many spectral chunks and one row of windows at a time
    assert rel_err(b, a) < 1e-5


def test_fused_repr_says_what_runs():
    m = random_model()
    r = repr(FusedSSRN(m, backend="auto", max_pixels=7))
    assert r.startswith("FusedSSRN(backend='eager', device='cpu', precision='float32'") and "max_pixels=7" in r


def test_fused_rejects_bad_tiles():
    m = random_model()
    f = FusedSSRN(m, backend="eager")
    with pytest.raises(ValueError, match="padded tile"):
        f(torch.zeros(m.config.bands, 5, 9))  # smaller than one patch
    with pytest.raises(ValueError, match="padded tile"):
        f(torch.zeros(m.config.bands + 1, 9, 9))
    with pytest.raises(ValueError, match="precision"):
        FusedSSRN(m, precision="int8")
    with pytest.raises(ValueError, match="spatial must be one of"):
        FusedSSRN(m, spatial="toeplitz")
    with pytest.raises(ValueError, match="spatial_precision must be 'auto', 'float32' or the engine's precision"):
        FusedSSRN(m, spatial_precision="bfloat16")  # a float32 engine stays exact
    with pytest.raises(ValueError, match="spatial_precision"):
        FusedSSRN(m, precision="bfloat16", spatial_precision="float16")
    with pytest.raises(ValueError, match="fp32_products must be one of"):
        FusedSSRN(m, fp32_products="tf32")  # one TF32 product: not float32's exactness
    with pytest.raises(ValueError, match="only with precision='float32'"):
        FusedSSRN(m, precision="bfloat16", fp32_products="tf32x3")


def test_float16_on_a_cpu_without_amx_fp16_warns_it_is_slow(caplog, monkeypatch):
    """On a CPU whose oneDNN has bf16 (AVX-512 / AMX; the AVX2 case has its own test below)."""
    from hsi_engine import fused
    from kernels import spectral

    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: True)
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: True)  # (bfloat16 fast: its own test below)
    for amx_fp16, warned in ((False, True), (True, False)):
        monkeypatch.setattr(fused, "_cpu_has_amx_fp16", lambda v=amx_fp16: v)
        caplog.clear()
        with caplog.at_level("WARNING", logger="hsi_engine.fused"):
            FusedSSRN(random_model(), backend="eager", precision="float16")
            FusedSSRN(random_model(), backend="eager", precision="bfloat16")
        assert ("runs slower than float32" in caplog.text) is warned, caplog.text


@pytest.mark.parametrize("amx, avx512_bf16, warned", [(False, False, True), (True, False, False),
                                                      (False, True, False)])
def test_bfloat16_where_onednn_emulates_it_warns_it_is_slow(caplog, monkeypatch, amx, avx512_bf16, warned):
    """An AVX-512 CPU without AVX512-BF16 or AMX: oneDNN says it supports bf16, by emulation, and a bf16 run was
    slower than float32 without a word (a tester's Xeon)."""
    from hsi_engine import fused
    from kernels import spectral

    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: True)
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: amx)
    monkeypatch.setattr(fused, "_cpuinfo_has", lambda flag, *a: avx512_bf16 and flag == "avx512_bf16")
    with caplog.at_level("WARNING", logger="hsi_engine.fused"):
        FusedSSRN(random_model(), backend="eager", precision="bfloat16")
    assert ("emulates bfloat16) runs slower than float32" in caplog.text) is warned, caplog.text


def test_fp32_products_outside_the_triton_backend_warns(caplog):
    with caplog.at_level("WARNING", logger="hsi_engine.fused"):
        engine = FusedSSRN(random_model(), backend="eager", fp32_products="tf32x3")
    assert engine.fp32_products == "tf32x3" and "applies to the triton backend only" in caplog.text


def test_auto_spatial_form_is_dense_only_for_low_precision_on_cuda_or_an_amx_cpu(monkeypatch):
    from hsi_engine import fused

    m = random_model()
    assert FusedSSRN(m, backend="eager").spatial_form == "conv"
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: False)
    assert FusedSSRN(m, backend="eager", precision="bfloat16").spatial_form == "conv"  # CPU without AMX
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: True)
    amx = FusedSSRN(m, backend="eager", precision="bfloat16")
    assert (amx.spatial_form, amx.spatial_precision, amx.max_windows) == ("dense", "bfloat16", 2048)
    kept = FusedSSRN(m, backend="eager", precision="bfloat16", spatial_precision="float32")
    assert (kept.spatial_form, kept.max_windows) == ("conv", 512)  # the float32 spatial stage stays on the convs
    assert FusedSSRN(m, backend="eager", precision="bfloat16", max_pixels=300).max_windows == 300
    # spectral calls: 512 pixels on the CPU whatever the spatial stage takes
    assert amx.max_pixels == kept.max_pixels == FusedSSRN(m, backend="eager").max_pixels == 512
    assert FusedSSRN(m, backend="eager", precision="float16").spatial_form == "conv"
    if torch.cuda.is_available():
        assert FusedSSRN(m, backend="eager", device="cuda").spatial_form == "conv"  # exact float32
        assert FusedSSRN(m, backend="eager", device="cuda", precision="bfloat16").spatial_form == "dense"
        assert FusedSSRN(random_model(patch=9), backend="eager", device="cuda",
                         precision="bfloat16").spatial_form == "conv"  # 7x7 windows: not measured


def test_auto_spatial_precision_is_low_on_cuda_and_for_bf16_on_an_amx_cpu(monkeypatch):
    """``auto``: the engine's bf16 where the CPU has AMX-BF16 (the bf16 engine 1.48x end to end there) and the
    engine's low precision on CUDA (1.13x on an H200); float32 for float32 engines, for float16 on a CPU and on
    CPUs without AMX."""
    from hsi_engine import fused

    m = random_model()
    for amx, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda amx=amx: amx)
        assert FusedSSRN(m, backend="eager", precision="bfloat16").spatial_precision == want
        assert FusedSSRN(m, backend="eager", precision="float16").spatial_precision == "float32"
        assert FusedSSRN(m, backend="eager").spatial_precision == "float32"
        assert FusedSSRN(m, backend="eager", precision="bfloat16",
                         spatial_precision="float32").spatial_precision == "float32"
    rule = fused._auto_spatial_precision
    assert [rule("cuda", p, False) for p in ("float32", "bfloat16", "float16")] == ["float32", "bfloat16", "float16"]
    assert [rule("cpu", p, True) for p in ("float32", "bfloat16", "float16")] == ["float32", "bfloat16", "float32"]
    assert [rule("cpu", p, False) for p in ("float32", "bfloat16", "float16")] == ["float32"] * 3
    if torch.cuda.is_available():
        assert FusedSSRN(m, backend="eager", device="cuda", precision="bfloat16").spatial_precision == "bfloat16"
        assert FusedSSRN(m, backend="eager", device="cuda").spatial_precision == "float32"


def test_amx_probe_needs_the_flag_and_the_os(tmp_path, monkeypatch):
    """AMX-BF16 counts when /proc/cpuinfo lists ``amx_bf16`` and torch's probe (tiles enabled by the OS) agrees."""
    from hsi_engine import fused

    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert fused._cpuinfo_has("amx_bf16", str(with_amx)) and not fused._cpuinfo_has("amx_bf16", str(without))
    assert not fused._cpuinfo_has("amx_bf16", str(tmp_path / "missing"))
    for flag, os_ok, want in ((True, True, True), (True, False, False), (False, True, False)):
        monkeypatch.setattr(fused, "_cpuinfo_has", lambda name, flag=flag: flag)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda os_ok=os_ok: os_ok, raising=False)
        fused._cpu_has_amx_bf16.cache_clear()
        assert fused._cpu_has_amx_bf16() is want
    fused._cpu_has_amx_bf16.cache_clear()


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_without_proc_cpuinfo_torch_s_probes_tell_the_cpu_s_bf16_units(tmp_path, monkeypatch, caplog, amx,
                                                                        avx512_bf16):
    """Windows and macOS have no /proc/cpuinfo: an AMX Xeon ran ``spatial_precision="auto"`` in float32 and was told
    its bf16 was emulated. Where the file says nothing, torch's own probes decide."""
    from hsi_engine import fused
    from kernels import spectral

    real = fused._cpuinfo_has
    monkeypatch.setattr(fused, "_cpuinfo_has", lambda flag, path=str(tmp_path / "none"): real(flag, path))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: True)
    fused._cpu_has_amx_bf16.cache_clear()
    try:
        assert fused._cpuinfo_has("amx_bf16") is None  # unknown, not absent
        assert fused._cpu_has_amx_bf16() is amx and fused._cpu_has_avx512_bf16() is avx512_bf16
        with caplog.at_level("WARNING", logger="hsi_engine.fused"):
            engine = FusedSSRN(random_model(), backend="eager", precision="bfloat16")
        assert engine.spatial_precision == ("bfloat16" if amx else "float32")
        assert ("emulates bfloat16" in caplog.text) is not (amx or avx512_bf16), caplog.text
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch without the probes: as before
        monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
        fused._cpu_has_amx_bf16.cache_clear()
        assert not fused._cpu_has_amx_bf16() and not fused._cpu_has_avx512_bf16()
    finally:
        fused._cpu_has_amx_bf16.cache_clear()


@pytest.mark.slow  # 15-50 s of inductor compilation on 2 shared cores; run with -m slow
def test_fused_compile_equals_eager():
    """torch.compile of the fused form equals eager (tiny shapes; ~15-50 s of compilation on 2 cores)."""
    m = random_model(bands=16, classes=4)
    x = pad_scene(torch.randn(16, 6, 5), m.halo)
    eager = FusedSSRN(m, backend="eager")(x)
    comp = FusedSSRN(m, backend="compile")
    assert comp.backend == "compile"
    assert rel_err(comp(x), eager) < 1e-4


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_runs_and_agreement_is_measured(precision, capsys):
    m = random_model(bands=40, classes=6)
    x = torch.randn(40, 16, 15)
    ref = FusedSSRN(m, backend="eager")(pad_scene(x, m.halo))
    low = FusedSSRN(m, backend="eager", precision=precision)(pad_scene(x, m.halo))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    agree = float((low.argmax(0) == ref.argmax(0)).float().mean())
    with capsys.disabled():
        print(f"\n{precision} spectral stage: argmax agreement with float32 {agree:.4f}, "
              f"max logit rel err {rel_err(low, ref):.2e}")
    assert agree > 0.5  # a sanity floor only; agreement is reported, not required to be exact


@pytest.mark.parametrize("spatial", ["conv", "dense"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_spatial_stage_is_opt_in_and_close(precision, spatial):
    """``spatial_precision`` = the engine's precision runs the per-window blocks in it: the logits move (it ran
    at that precision) but stay within the dtype's tolerance of the float32 spatial stage on the same features."""
    m = random_model(bands=40, classes=6, spatial_blocks=2)
    x = pad_scene(torch.randn(40, 12, 11), m.halo)
    base = FusedSSRN(m, backend="eager", precision=precision, spatial=spatial, spatial_precision="float32")
    low = FusedSSRN(m, backend="eager", precision=precision, spatial=spatial, spatial_precision=precision)
    assert base.spatial_precision == "float32" and low.spatial_precision == precision
    a, b = base(x), low(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert not torch.equal(a, b)
    assert rel_err(b, a) < (5e-2 if precision == "bfloat16" else 1e-2)


def test_exact_fp32_turns_tf32_off_and_restores_the_flags():
    """The float32 engine runs CUDA tiles inside exact_fp32(); the user's TF32 choice comes back afterwards."""
    from hsi_engine.fused import exact_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(RuntimeError, match="boom"), exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


_NEW_TF32_API = r"""
import json, sys, torch
from hsi_engine.fused import exact_fp32, tf32_matmul
exec(sys.argv[1])
m, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
before = conv.fp32_precision, m.fp32_precision
with exact_fp32():
    exact = conv.fp32_precision, m.fp32_precision
with tf32_matmul():
    fast = m.fp32_precision
print(json.dumps([before, exact, fast, (conv.fp32_precision, m.fp32_precision)]))
"""


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9 has no "
                    "fp32_precision switches")
@pytest.mark.parametrize("user", ["torch.backends.fp32_precision = 'tf32'",
                                  "torch.backends.cuda.matmul.fp32_precision = 'tf32'"])
def test_tf32_sections_work_under_torch_s_newer_precision_switches(user):
    """Once a user sets torch's newer ``fp32_precision`` switches, torch refuses to read the legacy ``allow_tf32``
    flags (every CUDA tile raised torch's RuntimeError): the sections use the newer ones then, and put back what
    the user set. In a subprocess: the switches are process-wide and would refuse the other tests' legacy reads."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NEW_TF32_API, user], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, exact, fast, after = json.loads(done.stdout)
    assert exact == ["ieee", "ieee"] and fast == "tf32" and after == before


def test_overlapping_tf32_sections_in_threads_put_the_user_s_flags_back():
    """Tiles of an engine shared by threads (a processes=False cluster) overlap: A saved (on, on) and set off, B
    saved A's (off, off), A put back (on, on), B put back (off, off): TF32 was left off for the process. The first
    section saves, the last one puts back."""
    import threading

    from hsi_engine.fused import exact_fp32, tf32_matmul

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with exact_fp32():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with tf32_matmul():
            b_in.set()
            a_out.wait(10)

    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        threads = [threading.Thread(target=f) for f in (a, b)]
        [t.start() for t in threads]
        [t.join(20) for t in threads]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_compile_failure_falls_back_to_eager_with_one_warning(caplog):
    """If inductor cannot build (no C++ compiler, an unsupported op), the run goes on in eager with one
    warning; bad input is still an error and does not switch backends."""
    import logging

    m = random_model(bands=16, classes=4)
    x = pad_scene(torch.randn(16, 6, 5), m.halo)
    eager = FusedSSRN(m, backend="eager")(x)
    comp = FusedSSRN(m, backend="compile")
    with pytest.raises(ValueError, match="expected a padded tile"):
        comp(x[:, :3])
    assert comp.backend == "compile"

    def broken(*args, **kwargs):  # what a failed inductor build raises at the first call
        raise RuntimeError("CppCompileError: no working C++ compiler found")

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    comp._spectral = oom  # running out of memory is not a compiler failure: it is raised, nothing switches
    with pytest.raises(torch.cuda.OutOfMemoryError):
        comp(x)
    assert comp.backend == "compile"
    comp._spectral = broken
    with caplog.at_level(logging.WARNING, logger="hsi_engine.fused"):
        out = comp(x)
        again = comp(x)
    assert comp.backend == "eager"
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    msgs = [r.getMessage() for r in caplog.records if r.name == "hsi_engine.fused"]
    assert len(msgs) == 1 and "falling back to the eager backend" in msgs[0] and "C++ compiler" in msgs[0]


@pytest.mark.parametrize("k,padding,win", [(3, 1, 5), (3, 1, 7), (1, 0, 5), (5, 2, 3)])
def test_conv_matrix_is_the_conv_of_every_one_hot_image(k: int, padding: int, win: int) -> None:
    """The dense spatial stage's matrices, placed by indexing, equal the float64 conv of every one-hot window
    (how they were first built, 14.6 ms per matrix on the CPU), bit for bit, signs of zeros included."""
    import torch.nn.functional as F

    from hsi_engine.fused import conv_matrix

    w = torch.randn(24, 20, k, k, generator=torch.Generator().manual_seed(k + win))
    eye = torch.eye(20 * win * win, dtype=torch.float64).view(-1, 20, win, win)
    want = F.conv2d(eye, w.double(), padding=padding).reshape(20 * win * win, -1).float()
    got = conv_matrix(w, win, padding)
    assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())


@pytest.mark.parametrize("form", ["paper", "seed"])
def test_low_precision_eager_engine_casts_conv_weights_once(form: str) -> None:
    """Under autocast every conv cast its float32 weights on every call; the engine now hands it convs already in
    bf16 (affines stay float32, as autocast leaves them): the same logits, bit for bit."""
    m = random_model(**(SEED_FORM if form == "seed" else {}))
    x = torch.randn(23, 14, 15, generator=torch.Generator().manual_seed(3))
    engine = FusedSSRN(m, backend="eager", precision="bfloat16", spatial_precision="float32")
    prog = engine._program_autocast
    assert prog.stem.weight.dtype == prog.reduce.weight.dtype == torch.bfloat16
    assert all(b.conv1.weight.dtype == b.conv2.weight.dtype == torch.bfloat16 for b in prog.blocks)
    assert all(a.scale.dtype == torch.float32 for a in prog.post) and all(
        b.pre.scale.dtype == torch.float32 for b in prog.blocks if b.pre is not None)
    got = engine(x)
    engine._program_autocast = engine.program  # the float32 program, cast by autocast on every call
    assert torch.equal(got, engine(x))


@pytest.mark.parametrize("sms", [132, 114, 108, 78, 1])
def test_gpu_chunk_pixels_is_the_least_whole_number_of_waves_past_65536(sms):
    """GPU spectral calls take whole waves of 64-pixel programs (one per SM): the least such count of pixels
    at or above 65,536; on 132 SMs a 512-pixel tile's calls (268,324 pixels with the halo) then need the 32
    waves its pixels need, where 65,536-pixel calls took 33."""
    import math

    from hsi_engine.fused import gpu_chunk_pixels

    c = gpu_chunk_pixels(sms)
    wave = 64 * sms
    assert c % wave == 0 and c >= 65536 and c - wave < 65536
    assert gpu_chunk_pixels(None) == 65536

    def waves(chunk: int, pixels: int = 518 * 518) -> int:
        return sum(math.ceil(math.ceil(min(chunk, pixels - i) / 64) / 132) for i in range(0, pixels, chunk))
    if sms == 132:
        assert (waves(65536), waves(c)) == (33, 32)


@pytest.mark.parametrize("onednn_bf16", [False, True])
def test_low_precision_on_a_cpu_without_onednn_bf16_says_float32_is_faster(monkeypatch, caplog, onednn_bf16):
    """On an AVX2-only CPU oneDNN has no bf16/fp16 convolutions: the bf16 demo ran at 0.15x float32's pixels/s
    (benchmarks/results/demo-precision-cpu-avx2.md) without a word, and the float16 warning recommended bf16.
    One warning names float32 there; where oneDNN has bf16 (and the CPU bf16 units), bf16 runs without one."""
    from hsi_engine import fused
    from kernels import spectral

    monkeypatch.setattr(spectral, "_onednn_bf16", lambda: onednn_bf16)
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: True)  # (emulated bf16: its own test)
    model = random_model(21, 4)
    for precision in ("bfloat16", "float16"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="hsi_engine.fused"):
            FusedSSRN(model, device="cpu", precision=precision)
        said = [r.getMessage() for r in caplog.records]
        if not onednn_bf16:
            assert len(said) == 1 and f"precision={precision!r} on this CPU" in said[0], said
            assert "use 'float32', exact and faster here" in said[0]
        elif precision == "bfloat16":
            assert said == []
    caplog.clear()
    with caplog.at_level("WARNING", logger="hsi_engine.fused"):
        FusedSSRN(model, device="cpu", precision="float32")
    assert not caplog.records


def test_a_batchnorm_that_folds_to_nan_is_refused():
    """A negative running variance (an edited in-memory model) folded to NaN weights; the spectral stage's ReLU
    turned the NaN into 0 and the engine wrote a plausible map. Folding refuses it, naming the variance."""
    from hsi_engine.errors import OptionError

    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    with torch.no_grad():
        model.reduce_bn.running_var[1] = -5.0
    with pytest.raises(OptionError, match=r"folds to non-finite values: its running variance goes down to -5"):
        fold_spectral(model)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_max_pixels_is_checked_when_the_engine_is_built(bad):
    """0 and -5 failed at the first call (range() / torch.cat errors); 2.5 became 2 silently."""
    from hsi_engine.errors import OptionError

    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    with pytest.raises(OptionError, match="max_pixels must be a whole number >= 1"):
        FusedSSRN(model, max_pixels=bad)


@pytest.mark.parametrize("call", ["fold_spectral", "fold_spatial", "patch_forward"])
def test_the_folding_functions_refuse_what_is_not_a_model(call, tmp_path):
    """A model directory's path handed where the model goes: fold_spatial and patch_forward raised a bare
    AttributeError ('str' object has no attribute 'spatial_blocks'); all three name load_model."""
    import hsi_engine
    from hsi_engine.errors import OptionError

    args = (str(tmp_path),) + ((torch.zeros(20, 5, 5),) if call == "patch_forward" else ())
    with pytest.raises(OptionError, match=rf"{call} takes an ssrn.SSRN model; got str: load a model directory "
                                          r"with hsi_engine.load_model\(path\)"):
        getattr(hsi_engine, call)(*args)


def test_a_float32_engine_names_its_tile_dtype_and_the_dtype_fixes_work():
    """A float64 tensor tile was refused with 'run under torch.autocast(cpu, dtype=torch.float64)', which torch's
    autocast does not take (it warns and the same error comes back), and program.to(), which a FusedSSRN user cannot
    reach. The engine names x.float() and the low-precision engine; the kernel's message offers autocast only for
    the dtypes autocast runs."""
    from kernels import spectral_stage_reference
    from ssrn.errors import OptionTypeError

    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    engine = FusedSSRN(model)
    x = torch.randn(20, 7, 7, dtype=torch.float64)
    with pytest.raises(OptionTypeError, match=r"takes float32 tiles; got torch.float64: pass x.float\(\)"):
        engine(x)
    assert torch.equal(engine(x.float()), engine(x.numpy()))  # the fix named, as a numpy tile is taken
    program = fold_spectral(model)
    with pytest.raises(OptionTypeError) as err:
        spectral_stage_reference(torch.zeros(3, 20, dtype=torch.float64), program)
    assert "autocast" not in str(err.value)
    with pytest.raises(OptionTypeError, match=r"torch.autocast\('cpu', dtype=torch.bfloat16\)"):
        spectral_stage_reference(torch.zeros(3, 20, dtype=torch.bfloat16), program)
    assert spectral_stage_reference(torch.zeros(3, 20, dtype=torch.float64), program.to(dtype=torch.float64)).dtype \
        == torch.float64
