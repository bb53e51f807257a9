"""Fused spectral stage: pure-torch reference (also the eager CPU path). The Triton kernel sits beside it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref

import torch
import torch.nn.functional as F

from ssrn.errors import OptionError, OptionTypeError

from .program import Affine, FoldedBlock, FoldedConv, SpectralProgram


def _conv(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    # y: (1, C_in, D, P) channels-last; kernel (k, 1) slides along bands only.
    if c.relu and _fusable(y, c):
        return _conv_relu_cpu(y, c)
    return _conv_unfused(y, c)


def _conv_unfused(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    out = F.conv2d(y, c.weight.unsqueeze(-1), c.bias, stride=(c.stride, 1), padding=(c.padding, 0))
    return F.relu(out) if c.relu else out


def _conv_add(h: torch.Tensor, c: FoldedConv, y: torch.Tensor, relu: bool) -> torch.Tensor:
    """A residual block's end, ``[ReLU](conv(h) + y)``: one oneDNN primitive where :func:`_fusable`, else the
    conv, the add and the ReLU."""
    if _CONV_POINTWISE_BINARY is not None and _fusable(h, c):
        return _conv_add_cpu(h, c, y, relu)
    out = _conv_unfused(h, c) + y
    return F.relu(out) if relu else out


_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_CONV_POINTWISE_BINARY = getattr(_CONV_POINTWISE, "binary", None)


def _fusable(y: torch.Tensor, c: FoldedConv) -> bool:
    """Whether this conv and what follows it can run as one oneDNN primitive: CPU, eager (torch.compile fuses
    on its own), no autograd, float32 or bfloat16 (oneDNN has no float64; float16 stays on the plain path
    measured; bfloat16 only where oneDNN runs it: AVX-512 or AVX-NE-CONVERT, not an AVX2-only CPU), a torch that
    has the op, oneDNN not turned off (``torch.backends.mkldnn.flags(enabled=False)``)."""
    if _CONV_POINTWISE is None or y.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if not torch.backends.mkldnn.enabled:  # turned off (around a oneDNN fault on some CPU): ATen's convs, as torch's
        return False
    dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else y.dtype
    if dt not in (torch.float32, torch.bfloat16) or c.weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    if torch.bfloat16 in (dt, c.weight.dtype) and not _onednn_bf16():
        return False
    return not (torch.is_grad_enabled() and (y.requires_grad or c.weight.requires_grad))


@functools.cache
def _onednn_bf16() -> bool:
    """Whether oneDNN has bfloat16 convolutions on this CPU (its fused ops raise where it has none)."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return bool(probe is not None and probe())


def _autocast_operands(*ts: torch.Tensor | None) -> tuple:
    """The operands as autocast hands them to conv2d (it does not know the oneDNN ops); as they are outside it,
    where mixed dtypes are refused, as F.conv2d refuses them, rather than run in either."""
    if torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        return tuple(t.to(dt) if t is not None else None for t in ts)
    if len({t.dtype for t in ts if t is not None}) > 1:
        raise RuntimeError(f"conv operands differ in dtype: {[t.dtype for t in ts if t is not None]}")
    return ts


def _conv_relu_cpu(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    """ReLU(conv) as one oneDNN primitive (the post-op inductor uses): the same bits as F.conv2d then F.relu for
    finite values, without a second pass over the activations (1.14-1.44x / 1.28-1.33x per layer in float32 /
    bf16 in three runs on the development CPU, benchmarks/results/conv-relu-cpu.md). oneDNN's ReLU maps NaN to 0
    where F.relu keeps it, so :func:`spectral_stage_reference` takes this path only for finite input."""
    y, w, b = _autocast_operands(y, c.weight.unsqueeze(-1), c.bias)
    return _CONV_POINTWISE(y, w, b, [c.padding, 0], [c.stride, 1], [1, 1], 1, "relu", [], "")


def _conv_add_cpu(h: torch.Tensor, c: FoldedConv, y: torch.Tensor, relu: bool) -> torch.Tensor:
    """``[ReLU](conv(h) + y)``, a residual block's end, as one oneDNN primitive (a binary-add post-op, then ReLU):
    in float32 the same bits as the three passes; in bf16 the sum is taken on the conv's float32 result and
    rounded once (as the Triton and Gluon kernels do), where the passes round the conv first."""
    h, y, w, b = _autocast_operands(h, y, c.weight.unsqueeze(-1), c.bias)
    return _CONV_POINTWISE_BINARY(h, y, w, b, [c.padding, 0], [c.stride, 1], [1, 1], 1, "add", 1.0,
                                  "relu" if relu else None, [], "")


def _affine(y: torch.Tensor, a: Affine) -> torch.Tensor:
    return F.relu(y * a.scale.view(1, -1, 1, 1) + a.shift.view(1, -1, 1, 1))


def _run_program(y: torch.Tensor, program: SpectralProgram, conv, affine, conv_add=None) -> torch.Tensor:
    """The program's layers in order (stem, residual blocks, stage affines, reduce) with a layout's ``conv`` /
    ``affine``: one definition of the stage for every plain-torch formulation. ``conv_add(h, c, y, relu)``, when
    given, computes a block's ``[ReLU](conv(h) + y)`` in one pass (blocks whose conv2 has no ReLU of its own)."""
    y = conv(y, program.stem)
    for b in program.blocks:
        h = affine(y, b.pre) if b.pre is not None else y
        h = conv(h, b.conv1)
        if conv_add is not None and not b.conv2.relu:  # ReLU(conv2(h) + y) in one pass
            y = conv_add(h, b.conv2, y, b.relu)
            continue
        h = conv(h, b.conv2) + y
        y = F.relu(h) if b.relu else h
    for a in program.post:
        y = affine(y, a)
    return conv(y, program.reduce)


def _check_pixels(x: torch.Tensor, program: SpectralProgram) -> None:
    """Every formulation's input, with the same errors in each: a 2-D floating ``(P, bands)`` tensor of the
    program's band count, at least the stem kernel's."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != program.bands:
        raise OptionError(f"expected pixels (P, {program.bands}); got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise OptionTypeError(f"x must be floating point (float32, bfloat16 or float16); got {x.dtype}: convert it "
                        "(x.float()) first")
    if program.reduced_bands < 1:
        raise OptionError(f"{program.bands} bands are fewer than the stem kernel {program.stem.weight.shape[2]}")


def _check_dtypes(x: torch.Tensor, program: SpectralProgram) -> None:
    """The eager formulations multiply in the weights' dtype: a mismatch is named (the Triton kernel casts the
    weights to ``x``'s dtype itself), except under autocast, which casts both."""
    w = program.stem.weight.dtype
    if x.dtype != w and not torch.is_autocast_enabled(x.device.type):
        autocast = f", or run under torch.autocast('{x.device.type}', dtype={x.dtype})" \
            if x.dtype in (torch.bfloat16, torch.float16) else ""  # (autocast's only dtypes)
        raise OptionTypeError(f"x is {x.dtype} but the weights are {w}: convert x (x.to({w})) or the weights "
                              f"(program.to(dtype=x.dtype)){autocast}")


def spectral_stage_reference(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
    """Spectral features of ``x (P, bands)`` pixels: ``(P, out_features)`` in ``x``'s dtype.

    The formulation (conv2d with (k, 1) kernels, channels-last, bands on dim 2, pixels on dim 3)
    measured fastest on CPU; see benchmarks/results/formulations.md. On CPU, for finite float32 / bfloat16
    input, each conv + ReLU and each residual block's conv2 + identity + ReLU run as one oneDNN primitive
    (the engine 1.10x / 1.20x end to end in float32 / bf16, benchmarks/results/conv-relu-cpu.md): float32 gives
    the same bits as the plain layers, bf16 rounds the residual sums once instead of twice.
    """
    _check_pixels(x, program)
    _check_dtypes(x, program)
    p = x.shape[0]
    if p == 0:
        return x.new_empty((0, program.out_features))
    # channels-last strides spelled out: for one channel .contiguous(channels_last) keeps NCHW strides,
    # and the convs would then run (and return) NCHW, 2x slower on CPU
    xt = x.t().contiguous()
    y = xt.as_strided((1, 1, program.bands, p), (program.bands * p, 1, p, 1))
    # NaN / inf in: the plain layers, so NaN propagates through every ReLU as in SSRN.forward (the fused one
    # would zero it); the engine refuses or masks non-finite input before this. One float32 sum over the
    # contiguous copy decides: non-finite exactly when an input is (or, harmlessly, when the sum overflows)
    plain = x.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(
        torch.isfinite(xt.sum(dtype=torch.float32)))
    y = _run_program(y, program, _conv_unfused if plain else _conv, _affine,  # (1, W, D, P) inside, (1, F, 1, P) out
                     None if plain else _conv_add)
    return y.reshape(-1, p).t()


def _conv3d(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    # y: (P, C_in, D, 1, 1), one (bands x 1 x 1) cube per pixel as in the seed's Keras Conv3D
    out = F.conv3d(y, c.weight[..., None, None], c.bias, stride=(c.stride, 1, 1), padding=(c.padding, 0, 0))
    return F.relu(out) if c.relu else out


def _affine3d(y: torch.Tensor, a: Affine) -> torch.Tensor:
    return F.relu(y * a.scale.view(1, -1, 1, 1, 1) + a.shift.view(1, -1, 1, 1, 1))


def spectral_stage_conv3d(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
    """:func:`spectral_stage_reference` in the seed's layout: Conv3d over ``(P, C, bands, 1, 1)``.

    Same contract and arithmetic, another summation order. On CUDA (cuDNN) it measured the fastest eager
    formulation of the whole stage, in float32 (20.98 ms against 24.13 for the channels-last conv2d, TF32
    off) and bfloat16 (14.14 against 14.94; benchmarks/results/kernels-h100.md, 65,536 pixels); on CPU the
    channels-last conv2d is faster (58.2 against 28.2 GFLOP/s for a default-layout Conv3d,
    benchmarks/results/formulations.md), so that stays the CPU eager path.
    """
    _check_pixels(x, program)
    _check_dtypes(x, program)
    if x.shape[0] == 0:
        return x.new_empty((0, program.out_features))
    y = _run_program(x[:, None, :, None, None], program, _conv3d, _affine3d)  # (P, W, D, 1, 1) inside
    return y.reshape(x.shape[0], -1)


def _random_program(bands: int, width: int = 24, out_features: int = 128, *, blocks: int = 2,
                    form: str = "paper", stage_norms: int = 0, kernel: int = 7, stride: int = 2,
                    conv2_relu: bool = False, generator: torch.Generator | None = None) -> SpectralProgram:
    """A random folded program (for self-checks, tests and benchmarks); weights scaled to keep O(1) activations.

    ``form="paper"``: the SSRN block as ``hsi_engine.fused.fold_spectral`` folds it, ReLU(conv2(ReLU(conv1(x)))
    + x). ``form="seed"``: blocks after the first get a ``pre`` affine, the block ReLU is off, and
    ``stage_norms`` post affines follow, as it folds the seed's variant. ``conv2_relu``: a ReLU after conv2 too
    (before the identity add; no SSRN has one, but the kernels implement it, and their tests cover it). Before
    session 8 the paper form had that ReLU, so the H100 / H200 stage timings up to then include one more ReLU
    per block epilogue than the shipped network runs.
    """
    g = generator

    def conv(c_out: int, c_in: int, k: int, *, stride: int = 1, padding: int = 0, relu: bool = True) -> FoldedConv:
        w = torch.randn(c_out, c_in, k, generator=g) * (2.0 / (c_in * k)) ** 0.5
        return FoldedConv(w, 0.1 * torch.randn(c_out, generator=g), stride, padding, relu)

    def affine() -> Affine:
        return Affine(1.0 + 0.2 * torch.randn(width, generator=g), 0.1 * torch.randn(width, generator=g))

    d = (bands - kernel) // stride + 1
    seed = form == "seed"
    blks = tuple(FoldedBlock(conv(width, width, kernel, padding=kernel // 2),
                             conv(width, width, kernel, padding=kernel // 2, relu=conv2_relu),
                             pre=affine() if seed and i > 0 else None, relu=not seed)
                 for i in range(blocks))
    return SpectralProgram(bands=bands, stem=conv(width, 1, kernel, stride=stride), blocks=blks,
                           post=tuple(affine() for _ in range(stage_norms)), reduce=conv(out_features, width, d))



# ---------------------------------------------------------------------------------------------------------
# Triton: the whole spectral stage in one kernel.
#
# Layout and why. One program owns BLOCK_P pixels and walks the band axis once, position by position
# (band-major streaming). The activation of one layer at one band position is a (BLOCK_P, WP) tile,
# pixels x channels, held in registers. A kernel-k conv along bands then is, for one output position,
# sum over taps t of tile[d + t - k//2] @ W_t with W_t a (WP, WP) matrix: k accumulating tl.dot calls on
# tensor cores. The hard part of a conv along an on-chip axis, the shift, disappears: each layer keeps a
# sliding window of its last k input tiles as a tuple that is loop-carried, so "shift by one band" is
# `window[1:] + (new,)`, a renaming of registers, never a gather and never a trip through memory.
#
# The layers run as a wavefront: at step j the stem produces position j; residual block b (conv1, conv2,
# identity add) consumes its input window and produces position j - (b+1)(k-1) (each same-padded conv
# lags its input by k//2 positions; the identity operand is the oldest tile of the block's own input
# window, exactly aligned); the stage affines are pointwise; the full-band reduction to out_features is
# an accumulating (BLOCK_P, WP) @ (WP, FP) dot with the reduce weights of that band position, so it is
# streamed too and never needs the whole (D, BLOCK_P, WP) activation. The loop runs D + n_blocks(k-1)
# steps; positions outside [0, D) are forced to zero where they feed a conv (that is the conv's zero
# padding, and it also stops relu(bias) or relu(shift) from leaking into the padding), and the reduce
# weights of such positions load as zeros.
#
# Registers held per program (the plain form; the variants below _spectral_stage_kernel differ): 2 windows
# of k tiles per residual block (block input, conv1 output), the (BLOCK_P, FP) fp32 reduce accumulator, and
# transient tiles; windows are stored in the input dtype (bf16/fp16 halve them), every dot accumulates in
# fp32. The conv weights (~57 KB in bf16 for two blocks) are loop-invariant: Triton stages them into shared
# memory once, before the loop; the reduce weights of each position are read on its step.
#
# Channel widths that are not powers of two (24) are padded to WP (32) on the host: the packed weights,
# biases and affine parameters are zero in the padded channels, so the padded channels stay exactly
# zero through every layer and no per-channel mask is needed inside the loop; pixel and band edges are
# masked loads/stores. Any band count works (the stem reads with a mask on the band index).
# ---------------------------------------------------------------------------------------------------------

# The plain form of the kernel (windows gathered tap by tap, one band position per iteration) and a small
# config of it: what the interpreter runs, what the variants are checked against, what the tuning falls back to.
_SMALL_PLAIN = dict(BLOCK_P=16, UNROLL=1, KCAT=False, SCATTER=False)


def _is_plain(variant: dict) -> bool:
    return (variant.get("UNROLL", 1) == 1 and not variant.get("KCAT") and not variant.get("SCATTER")
            and variant.get("CHAINS", 1) == 1 and not variant.get("PIPE"))


try:  # Triton is optional (absent on macOS / Windows wheels); the reference above never needs it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False


if HAS_TRITON:

    @triton.jit
    def _relu(v):
        # NaN stays NaN, as in torch's relu and the reference (tl.maximum's default returns the other operand: a
        # NaN or inf pixel became finite features, and the engine's check of the logits never saw it)
        return tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _in_bands(q, D, like):
        # 0 <= q < D as a tensor shaped like `like` (broadcast-ready; the interpreter mishandles scalar masks)
        qv = like * 0 + q
        return (qv >= 0) & (qv < D)

    # INTERP_BF16 is set only under the interpreter with bfloat16 data, to work around two interpreter gaps
    # (triton 3.9 runtime/interpreter.py): its tl.dot multiplies the raw uint16 bits of bf16 operands, and its
    # fp32 -> bf16 cast truncates where the GPU rounds to nearest even. bf16 x bf16 products are exact in
    # fp32, so the upcast dot is the same sum; the rounding is emulated on the bits. The GPU path never
    # takes these branches.

    @triton.jit
    def _round(v, dt: tl.constexpr, INTERP_BF16: tl.constexpr):
        if INTERP_BF16:
            u = v.to(tl.float32).to(tl.uint32, bitcast=True)
            u = u + 0x7FFF + ((u >> 16) & 1)
            return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return v.to(dt)

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a, b, acc, input_precision=PRECISION)

    @triton.jit
    def _cat_taps(tiles, KT: tl.constexpr, KT_PAD: tl.constexpr, LOG2_KT_PAD: tl.constexpr):
        # KT (BLOCK_P, WP) tiles -> one (BLOCK_P, WP * KT_PAD) dot operand whose column c * KT_PAD + t is tiles[t][:, c]
        # (zero for t >= KT): pairwise joins, tile i with tile i + half, so the row-major reshape lands in tap order
        ts = tiles
        for _ in tl.static_range(KT_PAD - KT):
            ts = ts + (tiles[0] * 0,)
        for lvl in tl.static_range(LOG2_KT_PAD):
            nxt = ()
            for i in tl.static_range(KT_PAD >> (lvl + 1)):
                nxt = nxt + (tl.join(ts[i], ts[i + (KT_PAD >> (lvl + 1))]),)
            ts = nxt
        return tl.reshape(ts[0], (tiles[0].shape[0], tiles[0].shape[1] * KT_PAD))

    @triton.jit
    def _scatter_conv(h, ring, c, conv_w_ptr, conv_b_ptr, offs_c, w_tile, KT: tl.constexpr, WP: tl.constexpr,
                      PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr, BLOCK_P: tl.constexpr):
        # input position q (h) adds its tap KT-1-i into the partial sum of output q - KT//2 + i, i = 0..KT-1;
        # ring[i] holds that sum from earlier inputs (the last output starts at the bias). Output q - KT//2 is then
        # complete: (it, the ring for q + 1).
        sums = ()
        for i in tl.static_range(KT):
            if i < KT - 1:
                base = ring[i]
            else:
                base = tl.zeros((BLOCK_P, WP), dtype=tl.float32) + tl.load(conv_b_ptr + c * WP + offs_c)[None, :]
            wt = tl.load(conv_w_ptr + (c * KT + (KT - 1 - i)) * WP * WP + w_tile)
            sums = sums + (_dot(h, wt, base, PRECISION, INTERP_BF16),)
        return sums[0], sums[1:]

    @triton.jit
    def _block_scatter(y, pos, st, b: tl.constexpr, D, col0, offs_c, conv_w_ptr, conv_b_ptr, pre_ptr, w_tile,
                       KT: tl.constexpr, WP: tl.constexpr, PRE_MASK: tl.constexpr, RELU1_MASK: tl.constexpr,
                       RELU2_MASK: tl.constexpr, BLOCK_RELU_MASK: tl.constexpr, PRECISION: tl.constexpr,
                       INTERP_BF16: tl.constexpr, BLOCK_P: tl.constexpr):
        # residual block b, SCATTER form: its input y (position pos) is used by the dots in the step that made it,
        # so it reaches the MMAs from registers; st = (conv1 sums, conv2 sums, inputs pos-LAG .. pos-1).
        # Returns (the block's output at pos - LAG, the state for the next step): the same wavefront as the windows.
        dt = conv_w_ptr.dtype.element_ty
        HALF: tl.constexpr = KT // 2
        h = y
        if (PRE_MASK >> b) & 1:
            sc = tl.load(pre_ptr + (2 * b) * WP + offs_c)
            sh = tl.load(pre_ptr + (2 * b + 1) * WP + offs_c)
            h = _relu(y.to(tl.float32) * sc[None, :] + sh[None, :])
            h = _round(tl.where(_in_bands(pos, D, col0), h, 0.0), dt, INTERP_BF16)
        acc, ring1 = _scatter_conv(h, st[0], 2 * b, conv_w_ptr, conv_b_ptr, offs_c, w_tile, KT, WP, PRECISION,
                                   INTERP_BF16, BLOCK_P)
        if (RELU1_MASK >> b) & 1:
            acc = _relu(acc)
        u = _round(tl.where(_in_bands(pos - HALF, D, col0), acc, 0.0), dt, INTERP_BF16)
        acc, ring2 = _scatter_conv(u, st[1], 2 * b + 1, conv_w_ptr, conv_b_ptr, offs_c, w_tile, KT, WP, PRECISION,
                                   INTERP_BF16, BLOCK_P)
        if (RELU2_MASK >> b) & 1:
            acc = _relu(acc)
        delay = st[2] + (y,)
        acc = acc + delay[0].to(tl.float32)  # the block input at pos - LAG (y itself when KT == 1)
        if (BLOCK_RELU_MASK >> b) & 1:
            acc = _relu(acc)
        out = _round(tl.where(_in_bands(pos - (KT - 1), D, col0), acc, 0.0), dt, INTERP_BF16)
        return out, (ring1, ring2, delay[1:])

    @triton.jit
    def _taps(hs, c: tl.constexpr, acc, conv_w_ptr, w_tile, KT: tl.constexpr, WP: tl.constexpr,
              PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr, CHAINS: tl.constexpr):
        # sum over taps t of hs[t] @ W_{c,t} onto acc; CHAINS=2 accumulates the odd taps into a second tile, so
        # the MMAs form two independent chains of ~KT/2 instead of one of KT (latency, not work)
        acc2 = acc * 0.0
        for t in tl.static_range(KT):
            wt = tl.load(conv_w_ptr + (c * KT + t) * WP * WP + w_tile)
            if CHAINS == 2 and t % 2 == 1:
                acc2 = _dot(hs[t], wt, acc2, PRECISION, INTERP_BF16)
            else:
                acc = _dot(hs[t], wt, acc, PRECISION, INTERP_BF16)
        if CHAINS == 2 and KT > 1:
            acc = acc + acc2
        return acc

    @triton.jit
    def _block_plain(new, pos, st, b: tl.constexpr, D, col0, offs_c, conv_w_ptr, conv_b_ptr, pre_ptr, w_tile,
                     k_tile, k_mask, KT: tl.constexpr, KT_PAD: tl.constexpr, LOG2_KT_PAD: tl.constexpr,
                     WP: tl.constexpr, PRE_MASK: tl.constexpr, RELU1_MASK: tl.constexpr, RELU2_MASK: tl.constexpr,
                     BLOCK_RELU_MASK: tl.constexpr, PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
                     BLOCK_P: tl.constexpr, KCAT: tl.constexpr, CHAINS: tl.constexpr):
        # residual block b, windows gathered by the convs: its input ``new`` is at position pos; st = (input
        # window, conv1-output window). Returns (the block's output at pos - LAG, the windows for the next step).
        dt = conv_w_ptr.dtype.element_ty
        HALF: tl.constexpr = KT // 2
        LAG: tl.constexpr = KT - 1
        yw = st[0][1:] + (new,)
        # conv1 (optionally after the pre-activation affine + ReLU) -> position pos - HALF
        acc = tl.zeros((BLOCK_P, WP), dtype=tl.float32) + tl.load(conv_b_ptr + (2 * b) * WP + offs_c)[None, :]
        hs = yw
        if (PRE_MASK >> b) & 1:
            sc = tl.load(pre_ptr + (2 * b) * WP + offs_c)
            sh = tl.load(pre_ptr + (2 * b + 1) * WP + offs_c)
            hs = ()
            for t in tl.static_range(KT):
                h = _relu(yw[t].to(tl.float32) * sc[None, :] + sh[None, :])
                hs = hs + (_round(tl.where(_in_bands(pos - LAG + t, D, col0), h, 0.0), dt, INTERP_BF16),)
        if KCAT:
            wk = tl.load(conv_w_ptr + (2 * b) * KT * WP * WP + k_tile, mask=k_mask, other=0.0)
            acc = _dot(_cat_taps(hs, KT, KT_PAD, LOG2_KT_PAD), wk, acc, PRECISION, INTERP_BF16)
        else:
            acc = _taps(hs, 2 * b, acc, conv_w_ptr, w_tile, KT, WP, PRECISION, INTERP_BF16, CHAINS)
        if (RELU1_MASK >> b) & 1:
            acc = _relu(acc)
        u = _round(tl.where(_in_bands(pos - HALF, D, col0), acc, 0.0), dt, INTERP_BF16)
        uw = st[1][1:] + (u,)
        # conv2 -> position pos - LAG, then the identity add (the oldest tile of yw is that position)
        acc = tl.zeros((BLOCK_P, WP), dtype=tl.float32) + tl.load(conv_b_ptr + (2 * b + 1) * WP + offs_c)[None, :]
        if KCAT:
            wk = tl.load(conv_w_ptr + (2 * b + 1) * KT * WP * WP + k_tile, mask=k_mask, other=0.0)
            acc = _dot(_cat_taps(uw, KT, KT_PAD, LOG2_KT_PAD), wk, acc, PRECISION, INTERP_BF16)
        else:
            acc = _taps(uw, 2 * b + 1, acc, conv_w_ptr, w_tile, KT, WP, PRECISION, INTERP_BF16, CHAINS)
        if (RELU2_MASK >> b) & 1:
            acc = _relu(acc)
        acc = acc + yw[0].to(tl.float32)
        if (BLOCK_RELU_MASK >> b) & 1:
            acc = _relu(acc)
        out = _round(tl.where(_in_bands(pos - LAG, D, col0), acc, 0.0), dt, INTERP_BF16)
        return out, (yw, uw)

    @triton.jit
    def _step(j, state, acc_r, x_rows, stride_xb, B, D, p_mask, col0, offs_k, offs_c, stem_w, stem_b,
              conv_w_ptr, conv_b_ptr, pre_ptr, post_ptr, red_w_ptr, w_tile, k_tile, k_mask, r_tile,
              STEM_STRIDE: tl.constexpr, KS: tl.constexpr, KT: tl.constexpr, KT_PAD: tl.constexpr,
              LOG2_KT_PAD: tl.constexpr, NUM_BLOCKS: tl.constexpr,
              NUM_POST: tl.constexpr, WP: tl.constexpr, FP: tl.constexpr, STEM_RELU: tl.constexpr,
              PRE_MASK: tl.constexpr, RELU1_MASK: tl.constexpr, RELU2_MASK: tl.constexpr, BLOCK_RELU_MASK: tl.constexpr,
              PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr, BLOCK_P: tl.constexpr, KCAT: tl.constexpr,
              SCATTER: tl.constexpr, CHAINS: tl.constexpr, PIPE: tl.constexpr):
        # one wavefront step: stem position j, every block's output LAG further back, that position's reduce
        # share. state[b]: (input window, conv1-output window) gathered by the convs, or with SCATTER
        # (conv1 partial sums, conv2 partial sums, block input delayed by LAG). PIPE: every stage (stem, each
        # block, the reduce) takes what the stage before it made in the PREVIOUS step (state[NUM_BLOCKS] holds
        # those hand-off tiles), so the stages of one step do not wait on each other and their MMA chains can
        # interleave; each stage then lags one more position.
        dt = conv_w_ptr.dtype.element_ty
        LAG: tl.constexpr = KT - 1  # a residual block's output lags its input by two half-kernels
        # stem: valid conv, stride STEM_STRIDE, one input channel -> position j
        cols = j * STEM_STRIDE + offs_k
        xs = tl.load(x_rows + cols[None, :] * stride_xb,
                     mask=p_mask[:, None] & (offs_k[None, :] < KS) & (cols[None, :] < B), other=0.0)
        s = _dot(xs.to(dt), stem_w, tl.zeros((BLOCK_P, WP), dtype=tl.float32), PRECISION, INTERP_BF16) + stem_b[None, :]
        if STEM_RELU:
            s = _relu(s)
        new = _round(tl.where(_in_bands(j, D, col0), s, 0.0), dt, INTERP_BF16)
        made = (new,)
        pos = j
        state_next = ()
        for b in tl.static_range(NUM_BLOCKS):
            if PIPE:  # the previous step's output of stage b (stem for b = 0), one position per step behind
                new = state[NUM_BLOCKS][b]
                pos = j - 1 - b * (LAG + 1)
            if SCATTER:
                new, st = _block_scatter(new, pos, state[b], b, D, col0, offs_c, conv_w_ptr, conv_b_ptr, pre_ptr, w_tile,
                                         KT, WP, PRE_MASK, RELU1_MASK, RELU2_MASK, BLOCK_RELU_MASK, PRECISION,
                                         INTERP_BF16, BLOCK_P)
            else:
                new, st = _block_plain(new, pos, state[b], b, D, col0, offs_c, conv_w_ptr, conv_b_ptr, pre_ptr,
                                       w_tile, k_tile, k_mask, KT, KT_PAD, LOG2_KT_PAD, WP, PRE_MASK, RELU1_MASK,
                                       RELU2_MASK, BLOCK_RELU_MASK, PRECISION, INTERP_BF16, BLOCK_P, KCAT, CHAINS)
            state_next = state_next + (st,)
            pos = pos - LAG
            made = made + (new,)
        if PIPE:  # the reduce takes the last stage's output of the previous step
            new = state[NUM_BLOCKS][NUM_BLOCKS]
            pos = j - 1 - NUM_BLOCKS * (LAG + 1)
            state_next = state_next + (made,)
        # stage affines (pointwise), then this position's share of the full-band reduction
        yf = new.to(tl.float32)
        for a in tl.static_range(NUM_POST):
            sc = tl.load(post_ptr + (2 * a) * WP + offs_c)
            sh = tl.load(post_ptr + (2 * a + 1) * WP + offs_c)
            yf = _relu(yf * sc[None, :] + sh[None, :])
        wr = tl.load(red_w_ptr + pos * WP * FP + r_tile, mask=_in_bands(pos, D, r_tile), other=0.0)
        acc_r = _dot(_round(yf, dt, INTERP_BF16), wr, acc_r, PRECISION, INTERP_BF16)
        return state_next, acc_r

    @triton.jit
    def _spectral_stage_kernel(
        # pointers
        x_ptr, out_ptr, stem_w_ptr, stem_b_ptr, conv_w_ptr, conv_b_ptr, pre_ptr, post_ptr, red_w_ptr, red_b_ptr,
        # sizes
        P, B, D, F,
        # strides
        stride_xp, stride_xb, stride_op, stride_of,
        # meta
        STEM_STRIDE: tl.constexpr, KS: tl.constexpr, KS_PAD: tl.constexpr, KT: tl.constexpr,
        KT_PAD: tl.constexpr, LOG2_KT_PAD: tl.constexpr, NUM_BLOCKS: tl.constexpr, NUM_POST: tl.constexpr, WP: tl.constexpr, FP: tl.constexpr,
        STEM_RELU: tl.constexpr, PRE_MASK: tl.constexpr, RELU1_MASK: tl.constexpr, RELU2_MASK: tl.constexpr,
        BLOCK_RELU_MASK: tl.constexpr, REDUCE_RELU: tl.constexpr, PRECISION: tl.constexpr,
        INTERP_BF16: tl.constexpr, BLOCK_P: tl.constexpr, UNROLL: tl.constexpr, KCAT: tl.constexpr,
        SCATTER: tl.constexpr, CHAINS: tl.constexpr = 1, PIPE: tl.constexpr = False,
    ):
        dt = stem_w_ptr.dtype.element_ty  # dot operand dtype (the input's); accumulation is fp32
        pid = tl.program_id(0)
        offs_p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = offs_p < P
        offs_c = tl.arange(0, WP)
        offs_k = tl.arange(0, KS_PAD)
        offs_f = tl.arange(0, FP)
        w_tile = offs_c[:, None] * WP + offs_c[None, :]  # (c_in, c_out) within one packed tap
        r_tile = offs_c[:, None] * FP + offs_f[None, :]  # (c_in, f) within one band position of reduce
        LAG: tl.constexpr = KT - 1
        # taps concatenated along K (KCAT): row c * KT_PAD + t of a conv's (WP * KT_PAD, WP) operand is tap t's row c
        offs_r = tl.arange(0, WP * KT_PAD)
        k_tile = (offs_r % KT_PAD)[:, None] * WP * WP + (offs_r // KT_PAD)[:, None] * WP + offs_c[None, :]
        k_mask = (offs_r % KT_PAD)[:, None] + offs_c[None, :] * 0 < KT

        stem_w = tl.load(stem_w_ptr + offs_k[:, None] * WP + offs_c[None, :])  # (KS_PAD, WP) taps x c_out
        stem_b = tl.load(stem_b_ptr + offs_c)
        rows64 = offs_p[:, None].to(tl.int64)  # P x bands may pass 2**31 elements on a whole scene
        x_rows = x_ptr + rows64 * stride_xp
        col0 = offs_p[:, None] * 0  # (BLOCK_P, 1) int zeros: position-validity tests broadcast from it

        zero = tl.zeros((BLOCK_P, WP), dtype=dt)
        if SCATTER:  # per block: conv1 / conv2 partial sums (bias + no input yet), block input delay line
            state = ()
            for b in tl.static_range(NUM_BLOCKS):
                bias1 = tl.zeros((BLOCK_P, WP), dtype=tl.float32) + tl.load(conv_b_ptr + (2 * b) * WP + offs_c)[None, :]
                bias2 = tl.zeros((BLOCK_P, WP), dtype=tl.float32) + tl.load(conv_b_ptr + (2 * b + 1) * WP + offs_c)[None, :]
                state = state + (((bias1,) * LAG, (bias2,) * LAG, (zero,) * LAG),)
        else:  # per block: its input at positions pos-KT+1 .. pos, conv1 output at pos-HALF-KT+1 .. pos-HALF
            state = (((zero,) * KT, (zero,) * KT),) * NUM_BLOCKS
        if PIPE:  # the hand-off tiles: what the stem and each block made in the previous step
            state = state + ((zero,) * (NUM_BLOCKS + 1),)
        acc_r = tl.zeros((BLOCK_P, FP), dtype=tl.float32)

        # UNROLL steps per iteration: a tile made inside the iteration feeds the later steps' dots straight from
        # registers; only loop-carried tiles are staged through shared memory. Steps past the last one needed
        # are harmless: every position outside [0, D) is zero and its reduce weights load as zero.
        for j0 in range(0, D + NUM_BLOCKS * LAG + (NUM_BLOCKS + 1 if PIPE else 0), UNROLL):
            for i in tl.static_range(UNROLL):
                state, acc_r = _step(
                    j0 + i, state, acc_r, x_rows, stride_xb, B, D, p_mask, col0, offs_k, offs_c, stem_w,
                    stem_b, conv_w_ptr, conv_b_ptr, pre_ptr, post_ptr, red_w_ptr, w_tile, k_tile, k_mask, r_tile,
                    STEM_STRIDE, KS, KT, KT_PAD, LOG2_KT_PAD, NUM_BLOCKS, NUM_POST, WP, FP, STEM_RELU, PRE_MASK, RELU1_MASK, RELU2_MASK, BLOCK_RELU_MASK,
                    PRECISION, INTERP_BF16, BLOCK_P, KCAT, SCATTER, CHAINS, PIPE)

        out = acc_r + tl.load(red_b_ptr + offs_f)[None, :]
        if REDUCE_RELU:
            out = _relu(out)
        tl.store(out_ptr + rows64 * stride_op + offs_f[None, :] * stride_of,
                 _round(out, out_ptr.dtype.element_ty, INTERP_BF16), mask=p_mask[:, None] & (offs_f[None, :] < F))

    # Hopper: 16-64 pixel rows per program, 4-8 warps. The kernel is register-bound (the tuple windows grow
    # with BLOCK_P): compiled offline for sm_90 with two bf16 blocks, BLOCK_P=16/4 warps takes 168 registers
    # and no spills (3 programs per SM), 32/4 and 32/8 take 255/254 with no spills (mma.sync), 64/4 and 64/8
    # spill ~1 KB of stack (wgmma). 128 rows needs more shared memory than an SM has.
    #
    # The offline compile also shows where a step's time goes besides the MMAs (benchmarks/results/
    # kernel-compile-sm90.md): a window tile is loop-carried in the accumulator layout, and a dot operand that
    # comes from a loop-carried value is staged through shared memory (store, barrier, load) at every use, so each
    # tile crosses shared memory KT times, with a barrier per tap (31 stagings and ~60 barriers per step; the
    # wgmma form waits on every one of its 30 dots). Two variants cut that down, and the autotuner measures them
    # beside the plain form: KCAT concatenates a conv's KT taps along K (one (BLOCK_P, WP*KT_PAD) operand, one
    # staging, one dot per conv: 7 stagings and 22 barriers per step, 6 wgmma waits instead of 30, at 8/7 of
    # the MMA work for KT=7); UNROLL=2 runs two positions per iteration, so a tile made in the first feeds the
    # second from registers (19 stagings per step; more registers live). SCATTER turns each conv around: the
    # input tile made this step multiplies all KT taps at once, adding into the partial sums of the KT outputs
    # it feeds (fp32, loop-carried but only ever added to); no activation is a loop-carried dot operand, so none
    # is staged for reuse (in the 64-row wgmma form the A operand comes straight from registers: 2 stagings per
    # step, stem and reduce), at the price of 2 x (KT-1) fp32 tiles per block held in registers. num_stages=2 is
    # not tuned: the loop has nothing to pipeline, and Triton 3.9 emits the same PTX as with 1.
    #
    # Measured, every variant pinned, on an H200 (Triton 3.6, 65,536 pixels of 200 bands, two blocks;
    # benchmarks/results/kernels-h200.md), bf16 ms: UNROLL=2 16/4 3.10, plain 32/4 3.50, 16/4 4.36, SCATTER 16/4
    # 4.40, KCAT 32/4 4.62 (KCAT 5.75-34.9 elsewhere), plain 32/8 7.52, 64/4 7.91, 64/8 18.7, SCATTER 64/8 11.7;
    # TF32 picked SCATTER 16/4 (5.67 ms); exact fp32: plain 32/8 24.2, 16/4 27.6, 32/4 67.7 (it spills 2 KB).
    # The configs below are those that won or came within 1.5x in some precision: KCAT and the 64-row forms
    # lost everywhere and cost a compile each on a shape's first call (still pinnable through ``config``).
    _CONFIGS = [triton.Config({"BLOCK_P": bp, "UNROLL": un, "KCAT": kc, "SCATTER": sc}, num_warps=nw, num_stages=1)
                for bp, nw, un, kc, sc in [
                    (16, 4, 1, False, False), (32, 4, 1, False, False), (32, 8, 1, False, False),
                    (16, 4, 2, False, False), (16, 4, 1, False, True)]]

    # Trials, not yet timed on a GPU, so not autotuned: benchmarks/kernels.py times each pinned. Offline sm_90
    # compiles (Triton 3.9, bf16, two blocks; benchmarks/results/kernel-compile-sm90.md): with 4 warps on 16
    # or 32 rows the MMA layout splits a tile's channels across warps, so every tap's operand crosses shared
    # memory behind a CTA barrier (58 bar.sync in the 16/4 kernel, 31 stagings per step), and the barriers cut
    # a step into short stretches the scheduler cannot interleave. One warp per program (16/1) owns whole rows:
    # the conversions stay in registers (2 stagings per step, 10 barriers in all), at the price of ~1.5 KB of
    # spills and, with the weights staged in 66 KB of shared memory per program, at most 3 warps per SM. Two
    # variants aim at latency: CHAINS=2 splits each conv's KT-tap accumulation into two independent MMA
    # chains; PIPE lets every stage (stem, each block, the reduce) take what the stage before it made in the
    # previous step, so the stages of a step do not wait on each other (one more position of lag per stage).
    # Both give the plain form's numbers (interpreter) with the same MMA count.
    _TRIAL_CONFIGS = [triton.Config({"BLOCK_P": bp, "UNROLL": un, "KCAT": False, "SCATTER": False} | extra,
                                    num_warps=nw, num_stages=1)
                      for bp, nw, un, extra in [
                          (16, 1, 1, {}), (16, 1, 1, {"CHAINS": 2}), (16, 1, 1, {"PIPE": True}),
                          (16, 4, 1, {"PIPE": True}), (16, 4, 2, {"CHAINS": 2})]]

    def _prune_configs(configs, named_args, **meta):
        # exact fp32 dots lower to FMA loops (no tensor cores) that compile slowly (7-32 s each on a shared CPU)
        # and spill in most shapes (offline sm_90: 96 B at 32/8, 128 B at 16/4, 2 KB at 32/4; KCAT ~35 KB,
        # SCATTER ~2 KB): tune over the plain form with at most 4 pixel rows per warp (32/4 took 2.8x 32/8)
        if meta.get("PRECISION") == "ieee" and named_args["x_ptr"].dtype == torch.float32:
            return [c for c in configs if _is_plain(c.kwargs) and c.kwargs["BLOCK_P"] <= 4 * c.num_warps]
        return configs

    # the autotuner adds the tensor arguments' dtypes to the key; the pixel count is left out on purpose, so
    # the last, partial tile of a scene does not trigger a new search. Timings are kept in Triton's on-disk
    # cache where this Triton can (cache_results), so a machine tunes a program shape once, not once per process.
    _tune_opts = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    _TUNE_KEY = ["B", "D", "F", "WP", "FP", "KT", "NUM_BLOCKS", "NUM_POST", "PRECISION"]
    _spectral_stage_kernel_tuned = triton.autotune(
        configs=_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs},
        **_tune_opts)(_spectral_stage_kernel)
    # The plain form alone (the one first measured on an H100): what the kernel tunes over if a variant cannot be
    # built by this machine's Triton; Triton's autotuner stops at the first config that fails to compile.
    _PLAIN_CONFIGS = [c for c in _CONFIGS if _is_plain(c.kwargs)]
    _spectral_stage_kernel_tuned_plain = triton.autotune(
        configs=_PLAIN_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs},
        **_tune_opts)(_spectral_stage_kernel)


def _next_pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(int(n), 1) - 1).bit_length())


_PACK_CACHE: dict[tuple, tuple] = {}


def _pack(program: SpectralProgram, device: torch.device, dtype: torch.dtype) -> dict:
    """Program weights in the kernel's padded, tap-major layout (cached per program object, device, dtype)."""
    key = (id(program), str(device), dtype)
    hit = _PACK_CACHE.get(key)
    if hit is not None and hit[0]() is program:
        return hit[1]
    w, f, d = program.width, program.out_features, program.reduced_bands
    wp, fp = _next_pow2(w), _next_pow2(f)
    ks = program.stem.weight.shape[2]
    ks_pad = _next_pow2(ks)
    nb = len(program.blocks)
    kt = program.blocks[0].conv1.weight.shape[2] if nb else 1
    f32 = dict(device=device, dtype=torch.float32)

    def vec(v: torch.Tensor, n: int) -> torch.Tensor:
        out = torch.zeros(n, **f32)
        out[: v.numel()] = v.reshape(-1).to(**f32)
        return out

    stem_w = torch.zeros(ks_pad, wp, **f32)
    stem_w[:ks, :w] = program.stem.weight[:, 0, :].t().to(**f32)
    conv_w = torch.zeros(max(2 * nb, 1), kt, wp, wp, **f32)
    conv_b = torch.zeros(max(2 * nb, 1), wp, **f32)
    pre = torch.zeros(max(2 * nb, 1), wp, **f32)
    for i, blk in enumerate(program.blocks):
        for c, conv in enumerate((blk.conv1, blk.conv2)):
            conv_w[2 * i + c, :, :w, :w] = conv.weight.permute(2, 1, 0).to(**f32)  # (tap, c_in, c_out)
            conv_b[2 * i + c] = vec(conv.bias, wp)
        if blk.pre is not None:
            pre[2 * i], pre[2 * i + 1] = vec(blk.pre.scale, wp), vec(blk.pre.shift, wp)
    post = torch.zeros(max(2 * len(program.post), 1), wp, **f32)
    for i, a in enumerate(program.post):
        post[2 * i], post[2 * i + 1] = vec(a.scale, wp), vec(a.shift, wp)
    red_w = torch.zeros(d, wp, fp, **f32)
    red_w[:, :w, :f] = program.reduce.weight.permute(2, 1, 0).to(**f32)  # (position, c_in, f)

    def bits(flags) -> int:
        return sum(1 << i for i, on in enumerate(flags) if on)

    packed = dict(
        stem_w=stem_w.to(dtype), stem_b=vec(program.stem.bias, wp), conv_w=conv_w.to(dtype).contiguous(),
        conv_b=conv_b, pre=pre, post=post, red_w=red_w.to(dtype).contiguous(), red_b=vec(program.reduce.bias, fp),
        meta=dict(STEM_STRIDE=int(program.stem.stride), KS=int(ks), KS_PAD=ks_pad, KT=int(kt),
                  KT_PAD=_next_pow2(kt, 1), LOG2_KT_PAD=_next_pow2(kt, 1).bit_length() - 1, NUM_BLOCKS=nb,
                  NUM_POST=len(program.post), WP=wp, FP=fp, STEM_RELU=bool(program.stem.relu),
                  PRE_MASK=bits(b.pre is not None for b in program.blocks),
                  RELU1_MASK=bits(b.conv1.relu for b in program.blocks),
                  RELU2_MASK=bits(b.conv2.relu for b in program.blocks),
                  BLOCK_RELU_MASK=bits(b.relu for b in program.blocks), REDUCE_RELU=bool(program.reduce.relu)))
    if len(_PACK_CACHE) >= 16:
        _PACK_CACHE.clear()
    _PACK_CACHE[key] = (weakref.ref(program), packed)
    return packed


def _check_program(program: SpectralProgram) -> None:
    """The program forms the kernel implements; anything else is a real error, not a silent mismatch."""
    stem, red = program.stem, program.reduce
    if stem.weight.dim() != 3 or stem.weight.shape[1] != 1:
        raise OptionError(f"stem weight must be (width, 1, k); got {tuple(stem.weight.shape)}")
    if stem.padding != 0:
        raise OptionError(f"the Triton kernel implements a valid (unpadded) stem; got padding {stem.padding}")
    d, w = program.reduced_bands, program.width
    if d < 1:
        raise OptionError(f"{program.bands} bands are fewer than the stem kernel {stem.weight.shape[2]}")
    if red.weight.shape[1:] != (w, d) or red.stride != 1 or red.padding != 0:
        raise OptionError(f"reduce must be a valid full-band conv with weight (F, {w}, {d}); got "
                         f"{tuple(red.weight.shape)}, stride {red.stride}, padding {red.padding}")
    kts = {c.weight.shape[2] for b in program.blocks for c in (b.conv1, b.conv2)}
    if len(kts) > 1:
        raise OptionError(f"all residual-block convs must share one kernel size; got {sorted(kts)}")
    for i, b in enumerate(program.blocks):
        for name, c in (("conv1", b.conv1), ("conv2", b.conv2)):
            k = c.weight.shape[2]
            if c.weight.shape[:2] != (w, w) or c.stride != 1 or c.padding != k // 2 or k % 2 == 0:
                raise OptionError(f"blocks[{i}].{name} must be a same-padded stride-1 odd-kernel conv {w}->{w}; "
                                 f"got weight {tuple(c.weight.shape)}, stride {c.stride}, padding {c.padding}")
    if len(program.blocks) > 30:
        raise OptionError(f"at most 30 residual blocks are supported; got {len(program.blocks)}")


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TUNED_KEYS: set[tuple] = set()  # autotune keys launched in this process (for the one log line per shape)
_VARIANTS_FAILED: list[str] = []  # why the variants were dropped in this process (empty: they build)
log = logging.getLogger("kernels.spectral")


def _interpreting() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_spectral_stage_kernel, InterpretedFunction)


# How float32 dot products may run (Triton's ``input_precision``): exact fp32 FMAs (no tensor cores), one TF32
# product (10-bit mantissa), or each operand split into two or three parts whose cross products run on tensor
# cores: tf32x3 and bf16x6 keep ~fp32 accuracy, bf16x3 ~16 bits. Emulated on the CPU for the Indian Pines
# program (200 bands, float64 reference; max error / max |output|): tf32 5.2e-4, bf16x3 8.4e-6, tf32x3 1.4e-7,
# bf16x6 5.6e-8. Compiled for sm_90 (16 pixels, 4 warps) they issue 3x (tf32x3, bf16x6) and 1.5x (bf16x3) the
# MMA instructions of tf32. bf16x3 / bf16x6 need a Triton that has them (3.9 does). On an H200 (Triton 3.6,
# 65,536 pixels of 200 bands; benchmarks/results/kernels-h200.md run 4): bf16x3 12.2 ms (max error 9.9e-6),
# bf16x6 22.3 ms, against 24.2 ms ieee and 19.7 ms for the Conv3d stage; tf32x3 stages the weights twice in
# float32 (250 KB of shared memory, 227 KB on an SM) and cannot run the paper's network.
INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16x3", "bf16x6")


def spectral_stage_triton(x: torch.Tensor, program: SpectralProgram, *, allow_tf32: bool = False,
                          input_precision: str | None = None, config: dict | None = None) -> torch.Tensor:
    """Fused Triton spectral stage: ``x (P, bands)`` -> ``(P, out_features)`` in ``x``'s dtype.

    Same contract as :func:`spectral_stage_reference`. Dot operands are in ``x``'s dtype (float32,
    bfloat16 or float16; the program's weights are cast to it), accumulation is float32. float32 inputs
    use exact fp32 products unless ``allow_tf32=True`` (TF32) or ``input_precision`` names one of
    :data:`INPUT_PRECISIONS` (split products on tensor cores, e.g. ``"tf32x3"``). Needs CUDA (or
    ``TRITON_INTERPRET=1`` set before Triton is imported, for CPU tests; the interpreter multiplies in fp32
    whatever the precision). ``config`` pins one kernel variant instead of autotuning (tests and
    benchmarks): keys ``BLOCK_P``, ``UNROLL``, ``KCAT``, ``SCATTER`` and optionally ``num_warps`` / ``num_stages``.
    """
    precision = _products(x, allow_tf32, input_precision)
    try:
        return _launch(x, program, precision, config)[0]
    except Exception as e:  # noqa: BLE001 - Triton's OutOfResources moved between modules across releases
        if precision == "tf32x3" and type(e).__name__ == "OutOfResources":
            raise OptionError(
                f"input_precision='tf32x3' stages the program's weights twice in float32 and needs more shared "
                f"memory than this GPU has for it ({str(e).splitlines()[0][:200]}); use input_precision='bf16x3' "
                "(max error 1e-5 of the largest feature, 1.6x the Conv3d stage on an H200) or 'bf16x6'") from e
        raise


def _products(x: torch.Tensor, allow_tf32: bool, input_precision: str | None) -> str:
    """The kernel's PRECISION for ``x`` from the public ``allow_tf32`` / ``input_precision`` arguments."""
    if input_precision is None:
        return "tf32" if allow_tf32 else "ieee"
    if input_precision not in INPUT_PRECISIONS:
        raise OptionError(f"input_precision must be one of {list(INPUT_PRECISIONS)}; got {input_precision!r}")
    if allow_tf32 and input_precision != "tf32":
        raise OptionError(f"allow_tf32=True asks for TF32 products, input_precision={input_precision!r} for "
                         "others: pass one of them")
    if input_precision != "ieee" and isinstance(x, torch.Tensor) and x.dtype != torch.float32:
        raise OptionError(f"input_precision={input_precision!r} chooses how float32 products run; x is {x.dtype}, "
                         "whose products the tensor cores take as they are: leave input_precision unset")
    return input_precision


_VARIANT_KEYS = ("BLOCK_P", "UNROLL", "KCAT", "SCATTER")
_OPTIONAL_KEYS = ("CHAINS", "PIPE")  # default 1 and False: the forms every earlier measurement ran


def _check_config(config: dict) -> None:
    missing = [k for k in _VARIANT_KEYS if k not in config]
    extra = sorted(set(config) - set(_VARIANT_KEYS) - set(_OPTIONAL_KEYS) - {"num_warps", "num_stages"})
    if missing or extra:
        raise OptionError(f"config needs keys {list(_VARIANT_KEYS)} (optional {list(_OPTIONAL_KEYS)}, num_warps, "
                         f"num_stages); missing {missing}, unknown {extra}")
    bp, un, kc, sc = config["BLOCK_P"], config["UNROLL"], config["KCAT"], config["SCATTER"]
    if not (isinstance(bp, int) and bp >= 16 and bp & (bp - 1) == 0):
        raise OptionError(f"config BLOCK_P must be a power of two >= 16 (a tl.dot tile); got {bp!r}")
    if not (isinstance(un, int) and un >= 1):
        raise OptionError(f"config UNROLL must be an int >= 1 (band positions per loop iteration); got {un!r}")
    if not (isinstance(kc, bool) and isinstance(sc, bool)):
        raise OptionError(f"config KCAT and SCATTER must be bools; got KCAT={kc!r}, SCATTER={sc!r}")
    if kc and sc:
        raise OptionError("config KCAT and SCATTER are two forms of the same convs: set at most one")
    chains, pipe = config.get("CHAINS", 1), config.get("PIPE", False)
    if not (type(chains) is int and chains in (1, 2)):
        raise OptionError(f"config CHAINS must be the int 1 or 2 (accumulator chains per conv); got {chains!r}")
    if chains == 2 and (kc or sc):
        raise OptionError("config CHAINS=2 splits the plain form's tap-by-tap sums; KCAT and SCATTER sum otherwise: "
                         "set CHAINS=2 only with both off")
    if not isinstance(pipe, bool):
        raise OptionError(f"config PIPE must be a bool; got {pipe!r}")


_INT32_OFFSETS = 2**31  # the kernels form a band's offset, band x x.stride(1), in 32 bits (a row's in 64)


def _bands_addressable(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a contiguous copy where a band's offset within a row, ``band * x.stride(1)``, passes 32 bits (a
    ``cube.reshape(bands, -1).t()`` view of a 224-band cube of 9.6 M pixels): the kernels would wrap it and read
    other memory (a wrong spectrum, or a fault that ends the CUDA context)."""
    if x.dim() == 2 and (x.shape[1] - 1) * x.stride(1) >= _INT32_OFFSETS:
        return x.contiguous()
    return x


def _launch(x: torch.Tensor, program: SpectralProgram, precision: str,
            config: dict | None = None) -> tuple[torch.Tensor, object]:
    """Checks, packs and launches the kernel (autotuned, or the pinned ``config``): ``(out, Triton's launch)``."""
    if not HAS_TRITON:
        raise RuntimeError("the triton spectral backend needs the 'triton' package; use the eager backend")
    if config is not None:
        _check_config(config)
    _check_pixels(x, program)
    if x.dtype not in _DTYPES:
        raise OptionTypeError(f"x must be float32, bfloat16 or float16; got {x.dtype}")
    interp = _interpreting()
    if x.device.type != "cuda" and not interp:
        raise OptionError(f"spectral_stage_triton needs a CUDA tensor; got one on {x.device} "
                         "(use kernels.get_spectral_stage('auto', device) to pick a backend)")
    _check_program(program)
    x = _bands_addressable(x)
    p, f = x.shape[0], program.out_features
    out = torch.empty(p, f, device=x.device, dtype=x.dtype)
    if p == 0:
        return out, None
    pk = _pack(program, x.device, x.dtype)
    meta = dict(pk["meta"], PRECISION=precision,
                INTERP_BF16=interp and x.dtype == torch.bfloat16)
    args = (x, out, pk["stem_w"], pk["stem_b"], pk["conv_w"], pk["conv_b"], pk["pre"], pk["post"], pk["red_w"],
            pk["red_b"], p, program.bands, program.reduced_bands, f, x.stride(0), x.stride(1), out.stride(0),
            out.stride(1))
    if config is not None or interp:  # the autotuner times with CUDA events: the interpreter runs one small config
        cfg = dict(config) if config is not None else dict(_SMALL_PLAIN)
        opts = {"num_stages": 1} | {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
        opts = {} if interp else opts  # num_stages 1 as in every autotune config (Triton's default is 3)
        with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
            compiled = _spectral_stage_kernel[(triton.cdiv(p, cfg["BLOCK_P"]),)](*args, **meta, **cfg, **opts)
    else:
        grid = lambda m: (triton.cdiv(p, m["BLOCK_P"]),)  # noqa: E731
        tune_key = (program.bands, program.reduced_bands, f, meta["WP"], meta["KT"], meta["NUM_BLOCKS"],
                    meta["NUM_POST"], meta["PRECISION"], x.dtype)
        first = tune_key not in _TUNED_KEYS
        if first:  # the first call per program shape may stop for a while: say why
            _TUNED_KEYS.add(tune_key)
            log.info("fused spectral kernel: first call for %d bands, %s in this process: autotuning up to %d "
                     "configs, unless Triton's on-disk cache already holds the kernels and timings",
                     program.bands, str(x.dtype).removeprefix("torch."), len(_CONFIGS))
        with torch.cuda.device(x.device):
            tuner = _active_tuner()
            try:
                compiled = tuner[grid](*args, **meta)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - maybe a variant this Triton cannot build: try the plain form
                if tuner is _spectral_stage_kernel_tuned_plain:
                    raise
                try:
                    compiled = _spectral_stage_kernel_tuned_plain[grid](*args, **meta)
                except Exception:  # noqa: BLE001 - the plain form fails too: the first error is the real one
                    raise e from None
                _VARIANTS_FAILED.append(f"{type(e).__name__}: {e}")
                log.warning("fused spectral kernel: a variant failed on this Triton (%s); tuning over the plain "
                            "form only from now on", _VARIANTS_FAILED[0].splitlines()[0][:300])
            else:
                why = _variant_disagrees(tuner, x, out, args, meta) if first and tuner is not \
                    _spectral_stage_kernel_tuned_plain else ""
                if why:  # a variant this Triton builds but gets wrong: never hand its numbers on
                    _VARIANTS_FAILED.append(why)
                    log.warning("fused spectral kernel: %s; tuning over the plain form only from now on", why)
                    compiled = _spectral_stage_kernel_tuned_plain[grid](*args, **meta)
    return out, compiled


def _variant_disagrees(tuner, x: torch.Tensor, out: torch.Tensor, args: tuple, meta: dict) -> str:
    """Once per program shape: when the autotuner picked a variant (KCAT, SCATTER, UNROLL > 1), run the plain
    form on the first pixels and compare. '' when they agree (or the pick is the plain form), else why not.
    The variants were checked against the reference on CPU (interpreter) and compile for sm_90, but a GPU and
    Triton release they never ran on could still miscompile one; the autotuner picks by speed alone."""
    best = getattr(tuner, "best_config", None)
    kw = dict(best.kwargs) if best is not None else {}
    if _is_plain(kw):
        return ""
    n = min(x.shape[0], 512)
    check = torch.empty(n, out.shape[1], device=out.device, dtype=out.dtype)
    plain = list(args)
    plain[0], plain[1], plain[10], plain[16], plain[17] = x[:n], check, n, check.stride(0), check.stride(1)
    _spectral_stage_kernel[(triton.cdiv(n, _SMALL_PLAIN["BLOCK_P"]),)](*plain, **meta, **_SMALL_PLAIN, num_warps=4,
                                                                      num_stages=1)
    exact = x.dtype == torch.float32 and meta["PRECISION"] != "tf32"  # ieee and the split products: ~fp32
    off = _off_by(out[:n].float(), check.float(), 1e-3 if exact else 5e-2)
    return f"the tuned variant {kw} differs from the plain form {off} on the first {n} pixels" if off else ""


def _off_by(got: torch.Tensor, ref: torch.Tensor, rel: float) -> str:
    """'' when ``got``'s rows are finite and within ``rel`` x the largest ``|ref|`` of ``ref`` where ``ref``'s are
    (a pixel holding NaN or inf gives NaN in both, the kernels' ReLUs keeping it: those rows must be non-finite in
    ``got`` too), else 'by D (tolerance T)': the once-per-shape checks that keep a fast form's wrong numbers from
    being handed on. (A NaN pixel among the checked ones had made the tolerance NaN and passed any output.)"""
    rows = torch.isfinite(ref).flatten(1).all(1)
    if not bool((~torch.isfinite(got[~rows])).flatten(1).any(1).all()):
        return "by a finite output where the reference is NaN or inf"
    got, ref = got[rows], ref[rows]
    tol = rel * max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-6)
    diff = (float((got - ref).abs().max()) if got.numel() else 0.0) if bool(torch.isfinite(got).all()) \
        else float("inf")
    return f"by {diff:.3g} (tolerance {tol:.3g})" if diff > tol else ""


def _active_tuner():
    """The autotuned kernel in use: every variant, or the plain form alone once a variant failed to build."""
    return _spectral_stage_kernel_tuned_plain if _VARIANTS_FAILED else _spectral_stage_kernel_tuned


# what to count in the compiled kernel's text: layout conversions (through shared memory when they change the
# thread mapping), shared-memory traffic, the MMA form (wgmma needs 64-row tiles; mma.sync is the older form)
# and register spills (local memory)
_TTGIR_OPS = ("convert_layout", "local_alloc", "local_load", "local_store", "warp_group_dot", "tt.dot")
_PTX_OPS = ("wgmma.mma_async", "mma.sync", "ld.local", "st.local", "bar.sync")


def triton_kernel_report(x: torch.Tensor, program: SpectralProgram, *, allow_tf32: bool = False,
                         input_precision: str | None = None, config: dict | None = None) -> dict:
    """Launch the fused kernel once on ``x`` and describe what Triton compiled for it: the tuned block shape,
    registers, spills, shared memory, counts of telling ops in its TTGIR / PTX, and those texts. For benchmark
    reports (where the 9.8 %-of-peak kernel loses time); ``{}`` when the launch gives nothing to inspect
    (Triton's interpreter, an older Triton). ``config`` pins a variant as in :func:`spectral_stage_triton`."""
    _, k = _launch(x, program, _products(x, allow_tf32, input_precision), config)
    asm = getattr(k, "asm", None)
    if not asm:
        return {}
    info: dict = {"n_regs": getattr(k, "n_regs", None), "n_spills": getattr(k, "n_spills", None),
                  "variants dropped": _VARIANTS_FAILED[0][:200] if _VARIANTS_FAILED else "no"}
    md = getattr(k, "metadata", None)
    for name in ("num_warps", "num_stages", "shared"):
        info[name] = getattr(md, name, None) if md is not None and not isinstance(md, dict) else (md or {}).get(name)
    try:
        chosen = config if config is not None else _active_tuner().best_config.kwargs
        info.update({key: chosen.get(key) for key in _VARIANT_KEYS})
        info.update(CHAINS=chosen.get("CHAINS", 1), PIPE=chosen.get("PIPE", False))
    except Exception:  # noqa: BLE001 - informational
        info.update(dict.fromkeys(_VARIANT_KEYS + _OPTIONAL_KEYS))
    ttgir, ptx = str(asm.get("ttgir", "")), str(asm.get("ptx", ""))
    info.update({f"ttgir {op}": ttgir.count(op) for op in _TTGIR_OPS})
    info.update({f"ptx {op}": ptx.count(op) for op in _PTX_OPS})
    info["ttgir"], info["ptx"] = ttgir, ptx
    return info
