"""Run the Triton spectral kernel under the interpreter (CPU) on tiny cases; print one JSON line per case.

Executed by test_spectral.py in a subprocess with ``TRITON_INTERPRET=1`` in its environment: Triton reads
that variable when ``@triton.jit`` decorates the kernel (at import of ``kernels.spectral``), so it must be
set before the import and must not leak into the test process, where other tests import the same module.
Each line: the case, the kernel's max abs error against a float64 reference, plain torch's error at the
same precision (for the low-precision rule), and the reference's max magnitude.
"""

from __future__ import annotations

import json
import os
import sys
import zlib

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kernels.spectral import _random_program, spectral_stage_reference, spectral_stage_triton  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PLAIN = dict(BLOCK_P=16, UNROLL=1, KCAT=False, SCATTER=False)
KCAT = dict(PLAIN, KCAT=True)
UNROLL2 = dict(PLAIN, UNROLL=2)
SCATTER = dict(PLAIN, SCATTER=True)

# (name, bands, width, out_features, blocks, form, stage_norms, pixels, dtype[, {config, kernel}])
# The kernel streams over band positions (the band count and the depth are runtime arguments, not constexprs):
# a band count sets the loop's trip count and the masks at the ends, so small odd counts reach every branch the
# realistic ones do (103 ... 425 bands run in the GPU test; 103 here in float32, 200 in engine_case). The bf16
# cases are the slow ones under the interpreter: 47 bands (depth 21) and 19 (depth 7, one full window of the
# 7-tap convs).
CASES = [
    ("paper-b23-w24", 23, 24, 128, 2, "paper", 0, 5, "float32"),
    ("paper-b31-w16", 31, 16, 40, 2, "paper", 0, 3, "float32"),
    ("seed-b31-w20-post2", 31, 20, 128, 2, "seed", 2, 4, "float32"),
    ("seed-b23-w24-1block-post1", 23, 24, 64, 1, "seed", 1, 5, "float32"),
    ("spa-b29-w24-0blocks", 29, 24, 128, 0, "paper", 0, 3, "float32"),
    ("paper-b103-w24", 103, 24, 128, 2, "paper", 0, 5, "float32"),
    ("paper-b23-w24-bf16", 23, 24, 128, 2, "paper", 0, 5, "bfloat16"),
    ("seed-b19-w20-post2-bf16", 19, 20, 128, 2, "seed", 2, 4, "bfloat16"),
    ("paper-b31-w24-fp16", 31, 24, 128, 2, "paper", 0, 5, "float16"),
    ("seed-b47-w24-post2-bf16", 47, 24, 128, 2, "seed", 2, 3, "bfloat16"),
    # the kernel's variants, pinned (the autotuner picks among them on a GPU); odd kernel sizes pad KT to KT_PAD
    ("kcat-paper-b23-w24", 23, 24, 128, 2, "paper", 0, 5, "float32", {"config": KCAT}),
    ("kcat-seed-b19-w20-post2-bf16", 19, 20, 128, 2, "seed", 2, 4, "bfloat16", {"config": KCAT}),
    ("kcat-paper-b29-w24-k5-fp16", 29, 24, 64, 2, "paper", 0, 3, "float16", {"config": KCAT, "kernel": 5}),
    ("kcat-unroll3-seed-b26-w16-k3", 26, 16, 40, 2, "seed", 1, 3, "float32",
     {"config": dict(KCAT, UNROLL=3), "kernel": 3}),
    ("kcat-paper-b12-w16-k1", 12, 16, 40, 2, "paper", 0, 3, "float32", {"config": KCAT, "kernel": 1}),
    ("unroll2-paper-b31-w24-bf16", 31, 24, 128, 2, "paper", 0, 4, "bfloat16", {"config": UNROLL2}),
    ("unroll2-seed-b22-w20-post1", 22, 20, 128, 2, "seed", 1, 3, "float32", {"config": UNROLL2}),
    ("scatter-paper-b23-w24", 23, 24, 128, 2, "paper", 0, 5, "float32", {"config": SCATTER}),
    ("scatter-seed-b19-w20-post2-bf16", 19, 20, 128, 2, "seed", 2, 4, "bfloat16", {"config": SCATTER}),
    ("scatter-unroll2-seed-b17-w16-k3-fp16", 17, 16, 40, 2, "seed", 1, 3, "float16",
     {"config": dict(SCATTER, UNROLL=2), "kernel": 3}),
    ("scatter-seed-b12-w16-k1", 12, 16, 40, 2, "seed", 1, 3, "float32", {"config": SCATTER, "kernel": 1}),
    # the latency variants (same arithmetic as the plain form, another schedule)
    ("chains2-seed-b19-w20-post2-bf16", 19, 20, 128, 2, "seed", 2, 4, "bfloat16", {"config": dict(PLAIN, CHAINS=2)}),
    ("pipe-seed-b31-w20-post2", 31, 20, 128, 2, "seed", 2, 4, "float32", {"config": dict(PLAIN, PIPE=True)}),
    ("pipe-chains2-paper-b23-w24-bf16", 23, 24, 128, 2, "paper", 0, 3, "bfloat16",
     {"config": dict(PLAIN, PIPE=True, CHAINS=2)}),
    ("pipe-unroll2-seed-b22-w20-1block-post1", 22, 20, 64, 1, "seed", 1, 3, "float32",
     {"config": dict(PLAIN, PIPE=True, UNROLL=2)}),
    ("pipe-scatter-paper-b17-w16-k3", 17, 16, 40, 2, "paper", 0, 3, "float16",
     {"config": dict(PLAIN, PIPE=True, SCATTER=True), "kernel": 3}),
    ("pipe-kcat-spa-b29-w24-0blocks", 29, 24, 128, 0, "paper", 0, 3, "float32", {"config": dict(KCAT, PIPE=True)}),
    ("pipe-kcat-seed-b25-w16-post1-bf16", 25, 16, 40, 2, "seed", 1, 3, "bfloat16", {"config": dict(KCAT, PIPE=True)}),
    # a ReLU after conv2 as well (before the identity add): no SSRN has one, the kernel implements it
    ("relu2-paper-b23-w24", 23, 24, 128, 2, "paper", 0, 3, "float32", {"conv2_relu": True}),
    ("relu2-scatter-paper-b31-w20-bf16", 31, 20, 64, 2, "paper", 0, 3, "bfloat16",
     {"config": SCATTER, "conv2_relu": True}),
    # split fp32 products (the interpreter multiplies in fp32 whatever they are: this checks the plumbing)
    ("tf32x3-paper-b23-w24", 23, 24, 128, 2, "paper", 0, 3, "float32", {"input_precision": "tf32x3"}),
]


def run_case(name, bands, width, out_features, blocks, form, stage_norms, pixels, dtype, opts=None, *,
             strided=False, program=None):
    opts = opts or {}
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    prog = program if program is not None else _random_program(
        bands, width, out_features, blocks=blocks, form=form, stage_norms=stage_norms,
        kernel=opts.get("kernel", 7), conv2_relu=opts.get("conv2_relu", False), generator=g)
    x64 = torch.randn(pixels, bands, generator=g, dtype=torch.float64)
    ref = spectral_stage_reference(x64, prog.to(dtype=torch.float64))
    dt = DTYPES[dtype]
    x = x64.to(dt)
    if strided:  # a non-contiguous view: every other band of a wider array
        wide = torch.zeros(pixels, 2 * bands, dtype=dt)
        wide[:, ::2] = x
        x = wide[:, ::2]
    out = spectral_stage_triton(x, prog, config=opts.get("config"), input_precision=opts.get("input_precision"))
    plain = spectral_stage_reference(x.contiguous(), prog.to(dtype=dt))
    assert out.dtype == dt and out.shape == ref.shape
    return dict(name=name, dtype=dtype, err=(out.double() - ref).abs().max().item(),
                torch_err=(plain.double() - ref).abs().max().item(), scale=ref.abs().max().item(),
                finite=bool(torch.isfinite(out).all()))


def _random_ssrn(bands: int, form: str = "paper", norms: int = 0) -> torch.nn.Module:
    """A random-init SSRN with non-trivial BN statistics (so the folded affines are not identities)."""
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig(bands=bands, classes=5, block_form=form, stage_norms=norms))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def folded_cases() -> list[dict]:
    """Programs folded from random-init SSRNs (with non-trivial BN statistics) by the engine's folder."""
    try:
        from hsi_engine.fused import fold_spectral
    except ImportError:
        return []
    out = []
    for form, norms in (("paper", 0), ("seed", 2)):
        prog = fold_spectral(_random_ssrn(37, form, norms))
        out.append(run_case(f"folded-ssrn-{form}-b37", 37, 24, 128, 2, form, norms, 4, "float32", program=prog))
    return out


def engine_case() -> list[dict]:
    """The engine's class map with backend triton against eager, shipped model on a real 2 x 3 crop (one tile,
    zero-padded on every side: 72 pixels through the kernel, 5 interpreted programs of 200 bands; a 7 x 8 crop took
    175 s of this script's 230 on a 2-core AVX2 machine)."""
    try:
        import hsi_engine
        from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE
        from hsi_engine.fused import FusedSSRN
    except ImportError:
        return []
    import h5py

    from ssrn import load_model

    with h5py.File(SHIPPED_SCENE, "r") as f:
        raw = np.ascontiguousarray(f["cube"][:, 60:62, 70:73])
    model = load_model(SHIPPED_MODEL)
    tri = hsi_engine.classify(raw, model, backend="triton", probabilities=True, progress=False)
    eag = hsi_engine.classify(raw, model, backend="eager", probabilities=True, progress=False)
    return [dict(name="engine-triton-vs-eager", kind="engine", backend=FusedSSRN(model, backend="triton").backend,
                 labels_equal=bool((tri["labels"].values == eag["labels"].values).all()),
                 labels=tri["labels"].values.tolist(),
                 max_prob_diff=float(np.abs(tri["probabilities"].values - eag["probabilities"].values).max()))]


def engine_paths_case(bands: int = 37) -> list[dict]:
    """FusedSSRN's launch paths into the kernel, on a random ``bands``-band SSRN (the path does not depend on the
    band count; the shipped 200-band model took 15 s of interpreter time here): float32 with split products
    (fp32_products), and the bf16 engine's chunk-by-chunk cast of the transposed tile."""
    try:
        from hsi_engine.fused import FusedSSRN, pad_scene
    except ImportError:
        return []
    model = _random_ssrn(bands)
    g = torch.Generator().manual_seed(bands)
    x = pad_scene(torch.randn(bands, 2, 3, generator=g), model.config.halo)
    split, small = FusedSSRN(model, backend="triton", fp32_products="tf32x3"), x[:, :4, :4]  # 16 pixels
    got, want = split.features(small), FusedSSRN(model, backend="eager").features(small)
    # the bf16 engine casts each chunk of the transposed tile straight to pixel-major bf16: the kernel's input,
    # hence its output, equals casting a pixel-major float32 copy
    low = FusedSSRN(model, backend="triton", precision="bfloat16")
    pixels = small.reshape(small.shape[0], -1).t()
    bf16_direct = low.features(small)
    bf16_copied = low.spectral_features(pixels.contiguous()).t().reshape(-1, 4, 4)
    return [dict(name="engine-triton-bf16-features", kind="engine", backend=low.backend, bands=bands,
                 equal=bool(torch.equal(bf16_direct, bf16_copied)), shape=list(bf16_direct.shape)),
            dict(name="engine-triton-tf32x3-vs-eager", kind="engine", backend=split.backend, bands=bands,
                 products=getattr(split._spectral, "keywords", {}).get("input_precision"),
                 argmax_equal=bool((got.argmax(0) == want.argmax(0)).all()),
                 rel_err=float((got - want).abs().max() / want.abs().max()))]


def variant_check_case():
    """kernels.spectral._variant_disagrees (the once-per-shape guard against a miscompiled variant): silent when
    the tuned output equals the plain form's, names the difference when it does not. Strided input, 21 pixels."""
    import triton

    from kernels import spectral

    g = torch.Generator().manual_seed(5)
    prog = _random_program(23, 24, 40, generator=g)
    wide = torch.randn(21, 46, generator=g)
    x = wide[:, ::2]
    good = spectral_stage_triton(x, prog)
    pk = spectral._pack(prog, x.device, x.dtype)
    meta = dict(pk["meta"], PRECISION="ieee", INTERP_BF16=False)

    class Tuned:
        best_config = triton.Config({"BLOCK_P": 16, "UNROLL": 1, "KCAT": True, "SCATTER": False}, num_warps=4)

    def verdict(out):
        args = (x, out, pk["stem_w"], pk["stem_b"], pk["conv_w"], pk["conv_b"], pk["pre"], pk["post"], pk["red_w"],
                pk["red_b"], x.shape[0], prog.bands, prog.reduced_bands, prog.out_features, x.stride(0), x.stride(1),
                out.stride(0), out.stride(1))
        return spectral._variant_disagrees(Tuned(), x, out, args, meta)

    wrong = good.clone()
    wrong[7, 3] += 0.5 * float(good.abs().max())
    return [dict(name="variant-check", kind="variant-check", agrees=verdict(good.clone()), disagrees=verdict(wrong))]


def nonfinite_case() -> list[dict]:
    """A pixel holding inf or NaN gives NaN features in the kernel, as in the reference (the ReLUs' max kept the
    other operand: finite features, and the engine's check of the logits never saw the pixel); the others are
    untouched."""
    g = torch.Generator().manual_seed(11)
    prog = _random_program(23, 24, 40, generator=g)
    x = torch.randn(4, 23, generator=g)
    x[1, 5], x[2, 9] = float("inf"), float("nan")
    out, ref = spectral_stage_triton(x, prog), spectral_stage_reference(x, prog)
    return [dict(name="nonfinite", kind="nonfinite", kernel_nan=torch.isnan(out).any(1).tolist(),
                 reference_nan=torch.isnan(ref).any(1).tolist(),
                 clean_err=float((out[[0, 3]] - ref[[0, 3]]).abs().max()), scale=float(ref[[0, 3]].abs().max()))]


def wide_stride_case() -> list[dict]:
    """A view whose band offsets pass the kernels' 32-bit limit is copied before the launch (the limit lowered so
    that a small view reaches it: a real one is a cube.reshape(bands, -1).t() of 9.6 M pixels at 224 bands)."""
    from kernels import spectral

    g = torch.Generator().manual_seed(12)
    prog = _random_program(23, 24, 40, generator=g)
    x = torch.randn(23, 5, generator=g).t()  # (5, 23), stride (1, 5): band 22 sits 110 elements in
    seen = []
    real = spectral._bands_addressable
    spectral._INT32_OFFSETS = 100
    spectral._bands_addressable = lambda t: seen.append(real(t).is_contiguous()) or real(t)
    try:
        out = spectral_stage_triton(x, prog)
    finally:
        spectral._INT32_OFFSETS, spectral._bands_addressable = 2**31, real
    ref = spectral_stage_reference(x.contiguous(), prog)
    return [dict(name="wide-stride", kind="wide-stride", copied=seen, err=float((out - ref).abs().max()),
                 scale=float(ref.abs().max()))]


def kernel_cases() -> list[dict]:
    """The kernel against the float64 reference: every pinned case and a strided input; non-finite pixels and a
    view too wide for 32-bit band offsets."""
    rows = [run_case(*c) for c in CASES]
    rows.append(run_case("paper-b23-w24-strided", 23, 24, 128, 2, "paper", 0, 3, "float32", strided=True))
    return rows + nonfinite_case() + wide_stride_case()


# the two folded SSRNs run in the engine group: it balances the two (about 44 s of CPU time each)
GROUPS = {"kernel": kernel_cases,
          "engine": lambda: engine_case() + engine_paths_case() + variant_check_case() + folded_cases()}


def main() -> None:
    """``_interpreted_cases.py [GROUP ...]`` (default: every group). The two groups take about as long (~44 s of
    CPU time each on a 2-core AVX-512 machine), so the test runs one process per group, side by side."""
    for group in sys.argv[1:] or list(GROUPS):
        for r in GROUPS[group]():
            print(json.dumps(r))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
