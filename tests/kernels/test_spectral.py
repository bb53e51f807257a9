"""The fused Triton spectral kernel against the pure-torch reference.

CPU: the kernel runs under Triton's interpreter in a subprocess (``TRITON_INTERPRET=1`` must be set
before ``kernels.spectral`` is imported and must not leak into this process), on a few pixels per case;
the kernel is also compiled offline for Hopper (sm_90) with the ptxas that ships in the Triton wheel.
GPU (``-m gpu``): realistic sizes on a CUDA device.

Tolerances (max abs error over the output, against a float64 reference; ``scale`` = max |reference|):
- float32: <= 1e-4 * scale (exact fp32 products; TF32 only with ``allow_tf32=True``; the split products of
  ``input_precision`` tf32x3 / bf16x3 / bf16x6 are held to the same bound).
- bfloat16 / float16 (flash-attention's rule): <= 2 x plain torch's error at the same precision
  + 1e-3 * scale, and never more than 1e-2 * scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.offline import loop_body
from kernels.program import SpectralProgram
from kernels.spectral import _random_program, spectral_stage_reference, spectral_stage_triton

REPO = Path(__file__).resolve().parents[2]
FP32_RTOL = 1e-4
LOWP_ATOL = 1e-3  # x scale
LOWP_CAP = 1e-2  # x scale


def check_tolerance(r: dict) -> None:
    err, scale = r["err"], r["scale"]
    assert r["finite"], r
    assert scale > 0.1, f"degenerate case (all-zero output?): {r}"
    if r["dtype"] == "float32":
        assert err <= FP32_RTOL * scale, f"{r['name']}: error {err:.3g} > {FP32_RTOL} x {scale:.3g}"
    else:
        bound = min(2 * r["torch_err"] + LOWP_ATOL * scale, LOWP_CAP * scale)
        assert err <= bound, f"{r['name']}: error {err:.3g} > bound {bound:.3g} (torch {r['torch_err']:.3g})"


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRITON_DEFAULT_FP_FUSION="1")
    script = str(Path(__file__).with_name("_interpreted_cases.py"))
    # one process per group, side by side: the interpreter keeps one core busy and each group takes about a minute
    procs = [subprocess.Popen([sys.executable, script, group], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for group in ("kernel", "engine")]
    rows = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-4000:]
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {r["name"]: r for r in rows}


def _static_case_names() -> list[str]:
    # parse CASES without importing the script (it asserts TRITON_INTERPRET=1 at import)
    src = Path(__file__).with_name("_interpreted_cases.py").read_text()
    block = src[src.index("CASES = [") : src.index("]\n", src.index("CASES = ["))]
    names = [line.split('"')[1] for line in block.splitlines() if line.strip().startswith('("')]
    return names + ["paper-b23-w24-strided"]


@pytest.mark.parametrize("name", _static_case_names())
def test_kernel_matches_reference_interpreted(interpreted: dict[str, dict], name: str) -> None:
    assert name in interpreted, f"case {name} did not run; got {sorted(interpreted)}"
    check_tolerance(interpreted[name])


def test_kernel_matches_folded_ssrn_interpreted(interpreted: dict[str, dict]) -> None:
    for form in ("paper", "seed"):
        check_tolerance(interpreted[f"folded-ssrn-{form}-b37"])


def test_kernel_keeps_nan_and_inf_pixels_nan_interpreted(interpreted: dict[str, dict]) -> None:
    """The ReLUs propagate NaN (``tl.maximum`` returns the other operand by default): a pixel holding inf or NaN
    gives NaN features as in the reference, so the engine's check of the logits names it."""
    r = interpreted["nonfinite"]
    assert r["reference_nan"] == [False, True, True, False], r
    assert r["kernel_nan"] == r["reference_nan"], r
    assert r["clean_err"] <= FP32_RTOL * r["scale"], r


def test_kernel_copies_a_view_whose_band_offsets_pass_32_bits_interpreted(interpreted: dict[str, dict]) -> None:
    r = interpreted["wide-stride"]
    assert r["copied"] == [True], r
    assert r["err"] <= FP32_RTOL * r["scale"], r


def test_the_once_per_shape_checks_compare_pixels_holding_nan_as_nan() -> None:
    """The kernels keep NaN now, so a NaN pixel among the checked ones reaches ``_off_by``: it had made the
    tolerance NaN (any output passed) and would now fail a right kernel (its NaN row): that row must be NaN in both,
    the others are compared."""
    from kernels.spectral import _off_by

    ref = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    ref[2] = float("nan")
    got = ref + 1e-5
    assert _off_by(got, ref, 1e-3) == ""
    wrong = got.clone()
    wrong[4] += 1.0
    assert _off_by(wrong, ref, 1e-3).startswith("by 1")
    finite = got.clone()
    finite[2] = 0.0  # the kernel that turned the NaN pixel into numbers
    assert "finite output where the reference is NaN" in _off_by(finite, ref, 1e-3)
    stray = got.clone()
    stray[0, 0] = float("nan")
    assert _off_by(stray, ref, 1e-3).startswith("by inf")


def test_band_offsets_past_32_bits_are_copied_and_others_kept() -> None:
    """``_bands_addressable`` on the strides of a real scene (meta tensors: no memory): the transposed view of a
    224-band cube of 9.63 M pixels reaches 2**31 at its last band and is made contiguous; 9.5 M pixels are not."""
    from kernels.spectral import _bands_addressable

    for pixels, copied in ((9_630_000, True), (9_500_000, False)):
        view = torch.empty(224, pixels, device="meta").t()
        got = _bands_addressable(view)
        assert got.is_contiguous() is copied and (got is view) is not copied
    row_major = torch.empty(40_000_000, 224, device="meta")  # rows are addressed in 64 bits already
    assert _bands_addressable(row_major) is row_major


def test_engine_map_with_triton_equals_eager_interpreted(interpreted: dict[str, dict]) -> None:
    """Issue 4's CPU check: ``classify(backend="triton")`` runs the kernel (interpreted) and gives eager's map."""
    r = interpreted["engine-triton-vs-eager"]
    assert r["backend"] == "triton", "the engine fell back instead of running the kernel"
    assert r["labels_equal"], r
    assert min(min(row) for row in r["labels"]) >= 1  # every pixel classified
    assert r["max_prob_diff"] < 1e-4, r


def test_bf16_engine_casts_the_transposed_tile_chunk_by_chunk_interpreted(interpreted: dict[str, dict]) -> None:
    """The bf16 triton engine makes each chunk pixel-major as it casts it (no float32 copy of the whole tile): the
    kernel sees the bits a pixel-major float32 copy cast to bf16 gives, so its features are equal (a random
    37-band SSRN: the path does not depend on the band count)."""
    r = interpreted["engine-triton-bf16-features"]
    assert r["backend"] == "triton" and r["shape"] == [128, 4, 4] and r["bands"] == 37, r
    assert r["equal"], r


def test_engine_float32_with_split_products_reaches_the_kernel_interpreted(interpreted: dict[str, dict]) -> None:
    """``FusedSSRN(fp32_products="tf32x3")`` runs the Triton kernel with split products (the interpreter multiplies
    in fp32 whatever they are, so this checks the wiring, on a random 37-band SSRN; the GPU test checks the
    accuracy)."""
    r = interpreted["engine-triton-tf32x3-vs-eager"]
    assert (r["backend"], r["products"], r["bands"]) == ("triton", "tf32x3", 37), r
    assert r["argmax_equal"] and r["rel_err"] < FP32_RTOL, r


def test_variant_guard_compares_with_the_plain_form_interpreted(interpreted: dict[str, dict]) -> None:
    r = interpreted["variant-check"]
    assert r["agrees"] == "", r
    assert "differs from the plain form" in r["disagrees"], r


# --- wrapper errors (no kernel launch needed) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def prog() -> SpectralProgram:
    return _random_program(23, 24, 32, generator=torch.Generator().manual_seed(1))


def test_wrong_band_count_is_a_value_error(prog: SpectralProgram) -> None:
    with pytest.raises(ValueError, match=r"expected pixels \(P, 23\)"):
        spectral_stage_triton(torch.zeros(4, 22), prog)
    with pytest.raises(ValueError, match="expected pixels"):
        spectral_stage_triton(torch.zeros(23), prog)


def test_integer_input_is_a_type_error(prog: SpectralProgram) -> None:
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        spectral_stage_triton(torch.zeros(4, 23, dtype=torch.int32), prog)


def test_cpu_tensor_without_interpreter_names_cuda(prog: SpectralProgram) -> None:
    from kernels import spectral

    if spectral._interpreting():
        pytest.skip("this process runs Triton's interpreter")
    with pytest.raises(ValueError, match="CUDA"):
        spectral_stage_triton(torch.zeros(4, 23), prog)


def test_unsupported_program_form_is_rejected(prog: SpectralProgram) -> None:
    from dataclasses import replace

    bad = replace(prog, blocks=(replace(prog.blocks[0], conv1=replace(prog.blocks[0].conv1, padding=0)),))
    from kernels.spectral import _check_program

    with pytest.raises(ValueError, match="same-padded"):
        _check_program(bad)


def test_input_precision_is_checked(prog: SpectralProgram) -> None:
    with pytest.raises(ValueError, match="input_precision must be one of"):
        spectral_stage_triton(torch.zeros(4, 23), prog, input_precision="fp8")
    with pytest.raises(ValueError, match="pass one of them"):
        spectral_stage_triton(torch.zeros(4, 23), prog, allow_tf32=True, input_precision="tf32x3")
    with pytest.raises(ValueError, match="leave input_precision unset"):
        spectral_stage_triton(torch.zeros(4, 23, dtype=torch.bfloat16), prog, input_precision="tf32x3")


def test_pinned_config_is_checked(prog: SpectralProgram) -> None:
    ok = dict(BLOCK_P=16, UNROLL=1, KCAT=False, SCATTER=False)
    for bad, match in [(dict(BLOCK_P=16, UNROLL=1), "missing"), (dict(ok, BLOCK_P=24), "power of two"),
                       (dict(ok, UNROLL=0), "UNROLL must be"), (dict(ok, KCAT=1), "must be bools"),
                       (dict(ok, KCAT=True, SCATTER=True), "at most one"), (dict(ok, warps=4), "unknown"),
                       (dict(ok, CHAINS=3), "CHAINS must be the int 1 or 2"), (dict(ok, CHAINS=True), "CHAINS must be"),
                       (dict(ok, CHAINS=2.0), "CHAINS must be"), (dict(ok, CHAINS=2, KCAT=True), "only with both off"),
                       (dict(ok, CHAINS=2, SCATTER=True), "only with both off"),
                       (dict(ok, PIPE=1), "PIPE must be a bool")]:
        with pytest.raises(ValueError, match=match):
            spectral_stage_triton(torch.zeros(4, 23), prog, config=bad)


# --- offline compile for Hopper ------------------------------------------------------------------------------

def _compile_sm90(form: str, blocks: int, stage_norms: int, dtype: str, variant: dict, num_warps: int = 4):
    """Lower the kernel (200 bands) to sm_90 with Triton's bundled ptxas: no GPU needed."""
    pytest.importorskip("triton")
    from kernels import spectral
    from kernels.offline import compile_triton, default_program

    if spectral._interpreting():
        pytest.skip("this process runs Triton's interpreter")
    try:
        return compile_triton(variant, num_warps=num_warps, dtype=dtype,
                              program=default_program(blocks, form, stage_norms))
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"Triton's offline compiler is not available: {e}")
    except Exception as e:  # noqa: BLE001
        if "ptxas" in str(e).lower() and "not found" in str(e).lower():
            pytest.skip(f"no ptxas: {e}")
        raise


PLAIN = dict(BLOCK_P=32, UNROLL=1, KCAT=False, SCATTER=False)


@pytest.mark.parametrize("form,blocks,stage_norms,dtype,variant", [
    ("paper", 2, 0, "bf16", PLAIN), ("seed", 1, 2, "fp16", PLAIN), ("paper", 0, 0, "bf16", PLAIN),
    ("seed", 2, 2, "bf16", dict(PLAIN, KCAT=True)), ("paper", 2, 0, "fp16", dict(PLAIN, BLOCK_P=16, UNROLL=2)),
    ("seed", 2, 2, "bf16", dict(PLAIN, BLOCK_P=16, SCATTER=True))])
def test_kernel_compiles_for_hopper_sm90(form: str, blocks: int, stage_norms: int, dtype: str, variant: dict) -> None:
    ptx = _compile_sm90(form, blocks, stage_norms, dtype, variant).asm["ptx"]
    assert "mma.sync" in ptx or "wgmma" in ptx, "the band convolutions did not lower to tensor-core MMAs"
    assert "st.local" not in ptx, "the kernel keeps an array in local memory (a tile tuple indexed at run time?)"


def test_split_fp32_products_run_on_tensor_cores() -> None:
    """float32 with split products (``input_precision``): the MMAs of one TF32 product, times the number of
    partial products (tf32x3: 3; bf16x3: 3 bf16 MMAs of twice the K, so 1.5x the instructions), never the
    FMA loops of exact fp32 (sm_90, 16 pixels, 4 warps)."""
    pytest.importorskip("triton")
    from kernels.offline import compile_triton

    v = dict(PLAIN, BLOCK_P=16)
    try:
        ptx = {p: compile_triton(v, dtype="fp32", precision=p).asm["ptx"] for p in ("tf32", "tf32x3", "bf16x3")}
    except Exception as e:  # noqa: BLE001
        if "ptxas" in str(e).lower() or "input_precision must be one of" in str(e):
            pytest.skip(f"this Triton cannot build it offline: {str(e)[:200]}")
        raise
    n = {p: t.count("mma.sync") + t.count("wgmma.mma_async") for p, t in ptx.items()}
    assert n["tf32"] > 0 and n["tf32x3"] == 3 * n["tf32"] and 2 * n["bf16x3"] == 3 * n["tf32"], n
    assert all("fma.rn.f32" not in t for t in ptx.values())


def test_one_warp_programs_stage_no_operand_through_shared_memory() -> None:
    """Why the 16-row / 1-warp configs exist: one warp owns whole rows, so the accumulator -> dot-operand
    conversions of the window tiles stay in registers (the 4-warp form stages 31 per step, each behind a
    barrier); CHAINS and PIPE change the schedule, not the MMA count."""
    one = {name: _compile_sm90("paper", 2, 0, "bf16", dict(PLAIN, BLOCK_P=16, **extra), num_warps=1)
           for name, extra in (("plain", {}), ("chains", {"CHAINS": 2}), ("pipe", {"PIPE": True}))}
    four = _compile_sm90("paper", 2, 0, "bf16", dict(PLAIN, BLOCK_P=16), num_warps=4)
    stagings = {n: loop_body(k.asm["ttgir"]).count("ttg.local_alloc") for n, k in one.items()}
    assert max(stagings.values()) <= 4 < loop_body(four.asm["ttgir"]).count("ttg.local_alloc"), stagings
    assert all(k.asm["ptx"].count("bar.sync") * 4 < four.asm["ptx"].count("bar.sync") for k in one.values())
    mmas = {n: k.asm["ptx"].count("mma.sync") for n, k in one.items()}
    assert len(set(mmas.values())) == 1 and mmas["plain"] > 0, mmas


def test_kcat_stages_each_conv_operand_once() -> None:
    """Why KCAT exists: the plain form stages every tap's operand through shared memory (a store and a barrier
    per tap and step); KCAT stages one concatenated operand per conv. Counted in the sm_90 compile (32 pixels,
    4 warps, mma.sync): per step, shared-memory stagings of loop-carried tiles and barriers in the whole kernel."""
    plain = _compile_sm90("paper", 2, 0, "bf16", PLAIN)
    kcat = _compile_sm90("paper", 2, 0, "bf16", dict(PLAIN, KCAT=True))
    n_alloc = [loop_body(k.asm["ttgir"]).count("ttg.local_alloc") for k in (plain, kcat)]
    n_bar = [k.asm["ptx"].count("bar.sync") for k in (plain, kcat)]
    # plain: 2 blocks x 2 convs x 7 taps + stem + reduce + the new tile; kcat: one per conv + stem + reduce
    assert n_alloc[0] >= 2 * 2 * 7 and n_alloc[1] <= 2 * 2 + 3, n_alloc
    assert n_bar[1] * 2 < n_bar[0], n_bar


def test_scatter_feeds_wgmma_from_registers() -> None:
    """Why SCATTER exists: in the 64-row wgmma form no activation is staged through shared memory per step
    (the plain form stages 26); what remains is the stem's input and the reduce's operand."""
    plain = _compile_sm90("paper", 2, 0, "bf16", dict(PLAIN, BLOCK_P=64), num_warps=8)
    scatter = _compile_sm90("paper", 2, 0, "bf16", dict(PLAIN, BLOCK_P=64, SCATTER=True), num_warps=8)
    assert "warp_group_dot" in scatter.asm["ttgir"]
    n_alloc = [loop_body(k.asm["ttgir"]).count("ttg.local_alloc") for k in (plain, scatter)]
    assert n_alloc[0] >= 2 * 2 * 6 and n_alloc[1] <= 2, n_alloc


# --- GPU: realistic sizes ------------------------------------------------------------------------------------

def _cuda_case(bands: int, pixels: int, dtype: torch.dtype, *, form: str = "paper", stage_norms: int = 0,
               width: int = 24, allow_tf32: bool = False, seed: int = 0, config: dict | None = None,
               input_precision: str | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    prog = _random_program(bands, width, 128, form=form, stage_norms=stage_norms, generator=g).to("cuda")
    x64 = torch.randn(pixels, bands, generator=g, dtype=torch.float64).cuda()
    ref = spectral_stage_reference(x64, prog.to(dtype=torch.float64))
    x = x64.to(dtype)
    out = spectral_stage_triton(x, prog, allow_tf32=allow_tf32, config=config, input_precision=input_precision)
    torch.cuda.synchronize()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow_tf32):
        plain = spectral_stage_reference(x, prog.to(dtype=dtype))
    return dict(name=f"b{bands}-{form}-{dtype}", dtype=str(dtype).removeprefix("torch."), err=(out.double() - ref).abs().max().item(),
                torch_err=(plain.double() - ref).abs().max().item(), scale=ref.abs().max().item(),
                finite=bool(torch.isfinite(out).all()))


gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("bands", [103, 176, 200, 204, 224, 425])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_matches_reference_realistic(bands: int, dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    check_tolerance(_cuda_case(bands, 10_007, dtype))


def _config_ids() -> list[int]:
    try:
        from kernels.spectral import _CONFIGS, _TRIAL_CONFIGS
    except ImportError:  # pragma: no cover - no triton
        return []
    return list(range(len(_CONFIGS) + len(_TRIAL_CONFIGS)))


@gpu
@pytest.mark.parametrize("i", _config_ids())
def test_gpu_every_autotuned_variant_matches_reference(i: int) -> None:
    """Each config the autotuner may pick, and each trial config, pinned, at a realistic size (bf16; the seed
    form with a pre-affine, an odd pixel count); float32 too where the exact path tunes over it."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kernels import spectral

    c = (spectral._CONFIGS + spectral._TRIAL_CONFIGS)[i]
    cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    check_tolerance(_cuda_case(200, 5_003, torch.bfloat16, form="seed", stage_norms=2, config=cfg))
    if c in spectral._prune_configs(spectral._CONFIGS, {"x_ptr": torch.zeros(1)}, PRECISION="ieee"):
        check_tolerance(_cuda_case(103, 2_001, torch.float32, config=cfg))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_seed_form_with_post_affines(dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    check_tolerance(_cuda_case(200, 4_099, dtype, form="seed", stage_norms=2, width=20))


@gpu
def test_gpu_tf32_only_when_asked() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    exact = _cuda_case(200, 4_096, torch.float32)
    check_tolerance(exact)
    tf32 = _cuda_case(200, 4_096, torch.float32, allow_tf32=True)
    # TF32 (10-bit mantissa, like float16) is held to the float16 bound of 1e-2 of scale, and must be visibly
    # less exact than the default. (torch's own "TF32" reference is no yardstick: cuDNN may pick a non-TF32
    # algorithm; on an H100 it came out at 7e-6 while the kernel's TF32 dots gave 2.5e-3.)
    assert tf32["err"] <= LOWP_CAP * tf32["scale"], tf32
    assert exact["err"] < tf32["err"], (exact, tf32)


@gpu
@pytest.mark.parametrize("products", ["tf32x3", "bf16x3", "bf16x6"])
def test_gpu_split_fp32_products_keep_fp32_accuracy(products: str) -> None:
    """float32 through split products on tensor cores stays within the exact float32 tolerance and is visibly
    more exact than one TF32 product (CPU emulation of the 200-band program, error / scale: tf32 5e-4, bf16x3
    8e-6, tf32x3 1e-7, bf16x6 6e-8)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    try:
        split = _cuda_case(200, 4_096, torch.float32, input_precision=products)
    except Exception as e:  # noqa: BLE001
        if "input_precision must be one of" in str(e):
            pytest.skip(f"this Triton has no {products}: {str(e)[:200]}")
        if products == "tf32x3" and "shared memory" in str(e):  # an H200 SM: 227 KB; tf32x3 asks 250 KB
            assert isinstance(e, ValueError) and "use input_precision='bf16x3'" in str(e), e
            return
        raise
    check_tolerance(split)
    tf32 = _cuda_case(200, 4_096, torch.float32, allow_tf32=True)
    assert split["err"] * 10 < tf32["err"], (split, tf32)


@gpu
def test_gpu_odd_pixel_counts_and_strided_input() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    prog = _random_program(200, 24, 128, generator=torch.Generator().manual_seed(3)).to("cuda")
    for p in (1, 15, 17, 1000, 65_537):
        wide = torch.randn(p, 400, device="cuda")
        x = wide[:, ::2]
        ref = spectral_stage_reference(x.double(), prog.to(dtype=torch.float64))
        out = spectral_stage_triton(x, prog)
        assert out.shape == (p, 128)
        assert (out.double() - ref).abs().max() <= FP32_RTOL * ref.abs().max()


@gpu
def test_gpu_view_whose_band_offsets_pass_32_bits() -> None:
    """The transposed view of a 224-band cube past 9.6 M pixels: band offsets beyond 2**31 elements (a 4.3 GB
    bf16 buffer on the GPU), read right by the Triton kernel and by the Gluon one where it runs."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kernels.spectral_gluon import gluon_unsupported, spectral_stage_gluon

    prog = _random_program(224, 24, 128, generator=torch.Generator().manual_seed(4)).to("cuda")
    step = 2**31 // 223 + 1
    cube = torch.zeros(224 * step, dtype=torch.bfloat16, device="cuda")
    view = cube.as_strided((5, 224), (1, step))  # pixels 0-4 of a (224, step) cube, as cube.reshape(224, -1).t()
    view.copy_(torch.randn(5, 224, device="cuda"))
    want = spectral_stage_reference(view.double(), prog.to(dtype=torch.float64))
    tol = LOWP_CAP * float(want.abs().max())
    assert float((spectral_stage_triton(view, prog).double() - want).abs().max()) <= tol
    if gluon_unsupported(view, prog) is None:
        assert float((spectral_stage_gluon(view, prog).double() - want).abs().max()) <= tol


@gpu
def test_gpu_dispatch_auto_picks_triton_in_bf16_and_conv3d_in_fp32() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kernels.dispatch import fused_stage, get_spectral_stage, resolve_backend
    from kernels.spectral import spectral_stage_conv3d

    dev = torch.device("cuda")
    for dt in (torch.bfloat16, torch.float16):
        assert resolve_backend("auto", dev, dt) == "triton"
        assert get_spectral_stage("auto", dev, dt) is fused_stage  # Gluon where it applies, else Triton
    assert resolve_backend("auto", dev) == "eager"
    assert get_spectral_stage("auto", dev) is spectral_stage_conv3d


def test_exact_fp32_autotunes_over_the_small_plain_form_only() -> None:
    """Exact fp32 compiles slowly and spills in the variants (see _prune_configs): its tuning is kept small."""
    pytest.importorskip("triton")
    from kernels import spectral

    if spectral._interpreting():
        pytest.skip("this process runs Triton's interpreter")
    fp32 = spectral._prune_configs(spectral._CONFIGS, {"x_ptr": torch.zeros(1)}, PRECISION="ieee")
    assert 1 <= len(fp32) < len(spectral._CONFIGS)
    assert all(c.kwargs["BLOCK_P"] <= min(32, 4 * c.num_warps) and c.kwargs["UNROLL"] == 1 and not c.kwargs["KCAT"]
               and not c.kwargs["SCATTER"] for c in fp32)
    bf16 = spectral._prune_configs(spectral._CONFIGS, {"x_ptr": torch.zeros(1, dtype=torch.bfloat16)},
                                   PRECISION="ieee")
    assert bf16 == spectral._CONFIGS


def _install_tuner(monkeypatch, tuner) -> None:
    """Replace the kernel's autotuned launcher with ``tuner`` and start from a process that has tuned nothing."""
    from kernels import spectral

    monkeypatch.setattr(spectral, "_spectral_stage_kernel_tuned", tuner)
    monkeypatch.setattr(spectral, "_VARIANTS_FAILED", [])
    monkeypatch.setattr(spectral, "_TUNED_KEYS", set())


@gpu
def test_gpu_variant_that_fails_to_build_falls_back_to_the_plain_form(monkeypatch, caplog) -> None:
    """Triton's autotuner stops at the first config that fails to compile; the kernel then tunes over the plain
    form only, with one warning, and still gives the reference's numbers."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kernels import spectral

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("variant does not build here")
            return launch

    _install_tuner(monkeypatch, Broken())
    with caplog.at_level("WARNING", logger="kernels.spectral"):
        check_tolerance(_cuda_case(200, 3_001, torch.bfloat16))
        check_tolerance(_cuda_case(103, 1_001, torch.bfloat16))
    assert spectral._active_tuner() is spectral._spectral_stage_kernel_tuned_plain
    assert sum("variant failed" in r.getMessage() for r in caplog.records) == 1, caplog.text
    assert "does not build here" in spectral._VARIANTS_FAILED[0]


@gpu
def test_gpu_variant_that_computes_wrong_numbers_is_dropped(monkeypatch, caplog) -> None:
    """The autotuner picks by speed alone: a variant that builds but computes wrong numbers (a miscompile on a
    Triton it never ran on) is caught by the once-per-shape comparison with the plain form, and the plain form's
    numbers are returned."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import triton

    from kernels import spectral

    class Wrong:
        best_config = triton.Config({"BLOCK_P": 16, "UNROLL": 1, "KCAT": True, "SCATTER": False}, num_warps=4)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                args[1].fill_(1.0)  # every feature 1.0: fast and wrong
            return launch

    _install_tuner(monkeypatch, Wrong())
    with caplog.at_level("WARNING", logger="kernels.spectral"):
        check_tolerance(_cuda_case(200, 3_001, torch.bfloat16))
    assert spectral._active_tuner() is spectral._spectral_stage_kernel_tuned_plain
    assert "differs from the plain form" in spectral._VARIANTS_FAILED[0], spectral._VARIANTS_FAILED


@gpu
def test_gpu_kernel_report_describes_the_compiled_kernel() -> None:
    """What benchmarks/kernels.py records about the compiled kernel: tuned shape, registers, ops in its IR."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kernels.spectral import _CONFIGS, triton_kernel_report

    g = torch.Generator().manual_seed(0)
    prog = _random_program(200, 24, 128, generator=g).to("cuda")
    x = torch.randn(4096, 200, generator=g).to("cuda", torch.bfloat16)
    info = triton_kernel_report(x, prog)
    assert info["BLOCK_P"] in {c.kwargs["BLOCK_P"] for c in _CONFIGS}
    assert 0 < info["n_regs"] <= 255 and info["n_spills"] >= 0 and info["num_warps"] in (4, 8)
    assert "tt.func" in info["ttgir"] and ".entry" in info["ptx"]
    assert info["ttgir warp_group_dot"] + info["ttgir tt.dot"] >= 1
    assert info["ptx wgmma.mma_async"] + info["ptx mma.sync"] >= 1
