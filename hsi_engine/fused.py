"""Inference form of SSRN: batch norms folded into convs, the spectral stage run once per pixel.

Every spectral layer of SSRN has a 1x1 spatial footprint, so its output at a pixel does not depend
on the patch the pixel sits in. ``FusedSSRN`` therefore runs, for one tile read with a halo of
``patch // 2`` pixels on every side:

1. the folded spectral program once per pixel of the tile plus halo (``kernels`` backends),
2. the valid 3x3 spatial stem densely over the tile's 128-feature map (a plain conv2d),
3. only the small spatial residual blocks, pooling and head per pixel, on the ``(P-2) x (P-2)``
   windows of the dense stem output (``unfold``; the blocks' same-padding zero-pads each window
   exactly as in patch mode): as 3x3 convs, or, in bf16 / fp16 on CUDA and in bf16 on a CPU with AMX, as one
   dense GEMM per conv over the flattened window (``spatial_dense``: 2.3x the convs on an H200,
   benchmarks/results/kernels-h200.md).

The result equals ``SSRN.forward`` on the pixel's patch cut from the zero-padded normalised scene
(float32: logits to ~1e-6 relative; tests hold 1e-4), at ~1/30 of the arithmetic.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels.program import Affine, FoldedBlock, FoldedConv, SpectralProgram
from ssrn.errors import OptionTypeError, is_whole

from .errors import OptionError

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPATIAL_FORMS = ("auto", "conv", "dense")
FP32_PRODUCTS = ("ieee", "tf32x3", "bf16x3", "bf16x6")  # one plain TF32 product would break float32's exactness

log = logging.getLogger("hsi_engine.fused")


# ----------------------------------------------------------------------------------------------
# folding


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``x * scale + shift`` (float64)."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * scale
    if not bool(torch.isfinite(scale).all() and torch.isfinite(shift).all()):
        # (a NaN folded into the spectral stage came out of its ReLU as 0: a plausible map, not an error)
        raise OptionError(f"the model's BatchNorm ({tuple(var.shape)[0]} channels) folds to non-finite values: its "
                          f"running variance goes down to {float(var.min()):g} (never below 0 in a trained network) "
                          "or its parameters hold NaN or inf; the weights were edited or damaged")
    return scale, shift


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` (float32 out)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                                 device=w.device)
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        b = b * scale + shift
    return w.float(), b.float()


def _affine(bn: nn.BatchNorm2d) -> Affine:
    scale, shift = _bn_scale_shift(bn)
    return Affine(scale.float(), shift.float())


def _band_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, *, relu: bool) -> FoldedConv:
    w, b = _fold(conv, bn)  # (out, in, k, 1)
    return FoldedConv(w[..., 0].contiguous(), b, stride=conv.stride[0], padding=conv.padding[0], relu=relu)


def _check_model(model: Any, where: str) -> None:
    """Refuse what is not an ``ssrn.SSRN`` (a path, a state dict, a config) with the call that makes one."""
    from ssrn.config import SSRNConfig

    if not (isinstance(model, nn.Module) and isinstance(getattr(model, "config", None), SSRNConfig)):
        raise OptionError(f"{where} takes an ssrn.SSRN model; got {type(model).__name__}: load a model directory "
                          "with hsi_engine.load_model(path), or build one with ssrn.SSRN(SSRNConfig(...))")


def fold_spectral(model: nn.Module) -> SpectralProgram:
    """The spectral stage of ``model`` (an ``ssrn.SSRN``) as a ``SpectralProgram`` with BN folded in.

    Paper blocks: ``relu(conv1+bn1)``, ``conv2+bn2``, add, ReLU. Seed blocks: ``relu(conv1+bn1)``, ``conv2``
    (bias, no BN), add, no ReLU; blocks after the first start with ``pre = relu(bn0(x))``. The seed's stage
    norms become the program's ``post`` affines.
    """
    _check_model(model, "fold_spectral")
    c = model.config
    blocks = []
    for blk in model.spectral_blocks:
        seed = blk.form == "seed"
        blocks.append(FoldedBlock(conv1=_band_conv(blk.conv1, blk.bn1, relu=True),
                                  conv2=_band_conv(blk.conv2, blk.bn2, relu=False),
                                  pre=_affine(blk.bn0) if blk.bn0 is not None else None,
                                  relu=not seed))
    return SpectralProgram(bands=c.bands, stem=_band_conv(model.stem, model.stem_bn, relu=True),
                           blocks=tuple(blocks), post=tuple(_affine(bn) for bn in model.spectral_norms.norms),
                           reduce=_band_conv(model.reduce, model.reduce_bn, relu=True))


@dataclass(frozen=True)
class SpatialBlock:
    """Folded spatial residual block: ``out = conv2(relu(conv1(pre(x)))) + shortcut(x)``, ReLU if ``relu``."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    pre: Affine | None
    shortcut: tuple[torch.Tensor, torch.Tensor] | None
    relu: bool


@dataclass(frozen=True)
class SpatialProgram:
    """Spatial stem (3x3 valid, BN folded) + residual blocks + stage affines + pooled linear head."""

    stem_w: torch.Tensor  # (24, 128, 3, 3)
    stem_b: torch.Tensor
    blocks: tuple[SpatialBlock, ...]
    post: tuple[Affine, ...]
    head_w: torch.Tensor  # (classes, 24)
    head_b: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SpatialProgram":
        from kernels.program import _map_tensors

        return _map_tensors(self, lambda t: t.to(device=device, dtype=dtype))


def fold_spatial(model: nn.Module) -> SpatialProgram:
    """The spatial stage of ``model`` in eval mode with every foldable BN folded into its conv."""
    _check_model(model, "fold_spatial")
    blocks = []
    for blk in model.spatial_blocks:
        w1, b1 = _fold(blk.conv1, blk.bn1)
        w2, b2 = _fold(blk.conv2, blk.bn2)
        sc = _fold(blk.shortcut, None) if blk.shortcut is not None else None
        blocks.append(SpatialBlock(w1, b1, w2, b2, _affine(blk.bn0) if blk.bn0 is not None else None, sc,
                                   relu=blk.form == "paper"))
    sw, sb = _fold(model.spatial_stem, model.spatial_stem_bn)
    return SpatialProgram(sw, sb, tuple(blocks), tuple(_affine(bn) for bn in model.spatial_norms.norms),
                          model.head.weight.detach().float().clone(), model.head.bias.detach().float().clone())


def check_spatial_precision(spatial_precision: str, precision: str) -> None:
    """``spatial_precision`` is ``auto``, ``float32`` or the engine's ``precision``: the spatial stage never runs
    below the spectral stage's precision, so a float32 engine stays exact."""
    if spatial_precision not in ("auto", "float32", precision):
        raise OptionError(f"spatial_precision must be 'auto', 'float32' or the engine's precision ({precision!r}); "
                         f"got {spatial_precision!r}: the spatial stage never runs below the spectral stage's "
                         "precision" + (", so a float32 engine stays exact" if precision == "float32" else ""))


def _relu_affine(y: torch.Tensor, a: Affine) -> torch.Tensor:
    return F.relu(y * a.scale.view(1, -1, 1, 1) + a.shift.view(1, -1, 1, 1))


def spatial_windows(win: torch.Tensor, sp: SpatialProgram) -> torch.Tensor:
    """Spatial blocks + pool + head on stem-output windows ``(N, 24, P-2, P-2)`` -> logits ``(N, classes)``."""
    for blk in sp.blocks:
        h = _relu_affine(win, blk.pre) if blk.pre is not None else win
        h = F.relu(F.conv2d(h, blk.w1, blk.b1, padding=1))
        h = F.conv2d(h, blk.w2, blk.b2, padding=1)
        s = F.conv2d(win, blk.shortcut[0], blk.shortcut[1]) if blk.shortcut is not None else win
        win = F.relu(h + s) if blk.relu else h + s
    for a in sp.post:
        win = _relu_affine(win, a)
    return F.linear(win.mean(dim=(2, 3)), sp.head_w, sp.head_b)


@dataclass(frozen=True)
class DenseSpatial:
    """The spatial blocks, stage affines, pooling and head of a ``SpatialProgram`` as maps of the flattened
    ``(C * win * win)`` window: each same-padded 3x3 conv is one ``(C*win*win)^2`` matrix (its Toeplitz form),
    so a conv is one GEMM of tensor-core shape (N x 600 x 600 for 24 channels on 5x5 windows), where cuDNN's
    3x3 convs on 24 channels and 5x5 images are not. ``blocks``: per block ``(pre, t1, c1, t2, c2, shortcut,
    relu)`` with ``pre`` a flattened ``(scale, shift)`` or None and ``shortcut`` a ``(matrix, bias)`` or None;
    ``post``: flattened ``(scale, shift)`` pairs; ``head``: pooling folded into the head, ``(C*win*win, classes)``."""

    win: int
    blocks: tuple
    post: tuple
    head_w: torch.Tensor
    head_b: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DenseSpatial":
        from kernels.program import _map_tensors

        return _map_tensors(self, lambda t: t.to(device=device, dtype=dtype))


def conv_matrix(w: torch.Tensor, win: int, padding: int) -> torch.Tensor:
    """The ``(C_in * win * win, C_out * win * win)`` matrix of a stride-1 conv ``w (C_out, C_in, k, k)`` on
    ``win x win`` images (zero padding ``padding``, 'same' size), flattened channel-major as ``reshape`` does:
    entry ``[(ci, yi, xi), (co, yo, xo)] = w[co, ci, yi - yo + padding, xi - xo + padding]`` where that tap exists,
    else 0. Every entry is one weight or zero, placed by indexing (no arithmetic)."""
    c_out, c_in, k, _ = w.shape
    pos = torch.arange(win, device=w.device)
    dy = pos.view(-1, 1) - pos.view(1, -1) + padding  # (y_in, y_out)
    ok = (dy >= 0) & (dy < k)
    dy = dy.clamp(0, k - 1)
    # taps[co, ci, yi, yo, xi, xo] = w[co, ci, dy[yi, yo], dy[xi, xo]]
    taps = w[:, :, dy.view(win, win, 1, 1), dy.view(1, 1, win, win)]
    valid = (ok.view(win, win, 1, 1) & ok.view(1, 1, win, win))
    taps = torch.where(valid, taps, torch.zeros((), dtype=w.dtype, device=w.device))
    # -> [(ci, yi, xi), (co, yo, xo)]
    return taps.permute(1, 2, 4, 0, 3, 5).reshape(c_in * win * win, c_out * win * win).contiguous()


def dense_spatial(sp: SpatialProgram, win: int) -> DenseSpatial:
    """``sp``'s per-window stage as dense matrices for ``win x win`` windows (every matrix entry is one weight or
    zero, :func:`conv_matrix`)."""
    n = win * win

    def toeplitz(w: torch.Tensor, padding: int) -> torch.Tensor:
        return conv_matrix(w.float(), win, padding)

    def flat(v: torch.Tensor) -> torch.Tensor:
        return v.repeat_interleave(n).contiguous()

    blocks = []
    for b in sp.blocks:
        pre = (flat(b.pre.scale), flat(b.pre.shift)) if b.pre is not None else None
        sc = (toeplitz(b.shortcut[0], 0), flat(b.shortcut[1])) if b.shortcut is not None else None
        blocks.append((pre, toeplitz(b.w1, 1), flat(b.b1), toeplitz(b.w2, 1), flat(b.b2), sc, b.relu))
    post = tuple((flat(a.scale), flat(a.shift)) for a in sp.post)
    head_w = (sp.head_w.t().double().repeat_interleave(n, dim=0) / n).float().contiguous()  # (C*n, classes)
    return DenseSpatial(win, tuple(blocks), post, head_w, sp.head_b)


def spatial_dense(win: torch.Tensor, ds: DenseSpatial) -> torch.Tensor:
    """:func:`spatial_windows` through ``ds``'s matrices: ``(N, C, win, win)`` -> logits ``(N, classes)``."""
    x = win.reshape(win.shape[0], -1)
    for pre, t1, c1, t2, c2, sc, relu in ds.blocks:
        h = F.relu(x * pre[0] + pre[1]) if pre is not None else x
        # bias and ReLU in the GEMM's epilogue (cuBLASLt's RELU_BIAS on CUDA): ReLU commutes with the rounding to
        # the output dtype, so the bits are those of addmm then relu (benchmarks/results/spatial-epilogue-cpu.md)
        h = torch._addmm_activation(c1, h, t1)
        h = torch.addmm(c2, h, t2)
        s = torch.addmm(sc[1], x, sc[0]) if sc is not None else x
        x = h.add_(s).relu_() if relu else h.add_(s)  # h is this call's own: no second buffer
    for scale, shift in ds.post:
        x = F.relu(x * scale + shift)
    return torch.addmm(ds.head_b, x, ds.head_w)


class _TF32Flags:
    """torch's TF32 switches are process-wide: tiles of engines shared by threads (a processes=False cluster)
    each saved and put back the value they found, and overlapping ones left TF32 off for the rest of the process.
    The first section saves the switches, the last one puts them back. (While a float32 and a low-precision
    engine's tiles overlap in two threads, the switches are the last setter's: run those engines apart.)"""

    lock = threading.Lock()
    depth = 0
    saved: tuple[bool, bool] | tuple[str, str] = (True, False)


@contextlib.contextmanager
def _tf32(*, cudnn: bool | None = None, matmul: bool | None = None) -> Iterator[None]:
    """Set cuDNN's and cuBLAS's TF32 switches for the duration (None: left as they are); see :class:`_TF32Flags`."""
    flags = _TF32Flags
    with flags.lock:
        if flags.depth == 0:
            flags.saved = _tf32_switches()
        flags.depth += 1
        _set_tf32_switches(cudnn, matmul, new_api=isinstance(flags.saved[0], str))
    try:
        yield
    finally:
        with flags.lock:
            flags.depth -= 1
            if flags.depth == 0:
                cudnn_was, matmul_was = flags.saved
                _set_tf32_switches(cudnn_was, matmul_was, new_api=isinstance(cudnn_was, str))


def _tf32_switches() -> tuple[bool, bool] | tuple[str, str]:
    """cuDNN's and cuBLAS's TF32 switches as the process has set them: the legacy ``allow_tf32`` flags, or, once
    anything set torch's newer ``fp32_precision`` ones (``torch.backends.fp32_precision = "tf32"``, torch >= 2.9;
    torch then refuses to read the legacy flags, and every CUDA tile stopped on that), those."""
    try:
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    except RuntimeError:
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def _set_tf32_switches(cudnn: bool | str | None, matmul: bool | str | None, *, new_api: bool) -> None:
    """Set the switches through the API :func:`_tf32_switches` read them from (None: left as they are); a bool
    is on/off, a string a ``fp32_precision`` value put back as it was."""
    if not new_api:
        if cudnn is not None:
            torch.backends.cudnn.allow_tf32 = cudnn
        if matmul is not None:
            torch.backends.cuda.matmul.allow_tf32 = matmul
        return

    def precision(v: bool | str) -> str:
        return v if isinstance(v, str) else ("tf32" if v else "ieee")

    if cudnn is not None:
        torch.backends.cudnn.conv.fp32_precision = precision(cudnn)
    if matmul is not None:
        torch.backends.cuda.matmul.fp32_precision = precision(matmul)


def tf32_matmul() -> contextlib.AbstractContextManager[None]:
    """TF32 matmuls for the duration: the precision cuDNN's convolutions run at by default, which the
    low-precision engine's spatial stage has always used."""
    return _tf32(matmul=True)


# ----------------------------------------------------------------------------------------------
# the fused tile function


class FusedSSRN:
    """An ``ssrn.SSRN`` in its tiled inference form.

    ``fused(x)``: ``x (bands, h + 2*halo, w + 2*halo)`` float32, a NORMALISED tile already zero-padded
    where it crosses the scene border -> logits ``(classes, h, w)`` float32 for the tile's ``h x w``
    interior pixels.

    ``backend``: ``eager`` | ``compile`` | ``triton`` | ``auto`` (via ``kernels.dispatch``); ``precision``:
    ``float32`` (exact) or ``bfloat16`` / ``float16`` (opt-in: autocast / low-precision kernel on the spectral
    stage; the spatial stage follows ``spatial_precision``). ``max_pixels`` bounds the pixels per spectral
    call and the windows per spatial call, so memory depends on it and not on the tile size beyond the tile
    itself. Default on GPU: 65,536 rounded up to whole waves of the Gluon kernel (:func:`gpu_chunk_pixels`:
    67,584 on 132 SMs); on CPU 512 pixels per spectral call and 512 windows per spatial call (2,048 for the dense
    bf16 spatial stage).
    ``spatial``: how the per-window blocks run: ``conv`` (:func:`spatial_windows`), ``dense``
    (:func:`spatial_dense`, one GEMM per conv) or ``auto``: dense on CUDA in bfloat16 / float16 (TF32 GEMMs, the
    precision the convs had there) and for a bf16 spatial stage on an AMX CPU, for windows of at most 5x5, conv
    elsewhere (float32 stays on the convs that the exactness tests hold to patch mode). ``spatial_precision``:
    ``float32`` (the per-window blocks in float32, TF32 on CUDA when ``precision`` is low), the engine's own low
    ``precision`` (they run in it, weights cast once), or ``auto``: the engine's low precision on CUDA (dense
    bf16 GEMMs 0.74 ms per 65,536 windows against 1.36 for TF32, the bf16 engine 20.5 Mpix/s against 12.3 with
    the spatial stage as cuDNN convs on an H200: benchmarks/results/kernels-h200.md, run 9) and for a bfloat16
    engine on a CPU with AMX-BF16 units, where it then runs as dense GEMMs at 2,048 windows per call (the bf16
    engine end to end 1.48x the same engine with a float32 spatial stage, 2.51x the float32 engine:
    benchmarks/results/spatial-precision-cpu.md); float32 elsewhere: float16 on a CPU (slower than float32 on
    that CPU, either way) and CPUs without AMX (not measured). On the shipped Indian Pines scene the bf16
    engine moved 53 of 21,025 pixels with its spatial stage in bf16 and in float32 alike on the CPU, 39 against
    37 on an H200; float16 10 and 10, 8 against 7.
    ``fp32_products``: how the triton backend's float32 spectral stage multiplies on CUDA: ``ieee`` (exact FMAs,
    the default) or products split across tensor-core MMAs that keep ~fp32 accuracy (``bf16x3``: 12.2 ms per
    65,536 pixels against 19.7 for the Conv3d stage and 24.2 for ``ieee`` on an H200, max error 1e-5 of the
    largest feature; ``bf16x6``;
    ``tf32x3``, whose weights do not fit an SM's shared memory for the paper's network; see
    ``kernels.spectral.INPUT_PRECISIONS``). Other backends ignore it.
    """

    def __init__(self, model: nn.Module, *, backend: str = "auto", device: torch.device | str | None = None,
                 precision: str = "float32", max_pixels: int | None = None, spatial: str = "auto",
                 spatial_precision: str = "auto", fp32_products: str = "ieee") -> None:
        from kernels.dispatch import get_spectral_stage, resolve_backend

        _check_model(model, "FusedSSRN")
        if precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if spatial not in SPATIAL_FORMS:
            raise OptionError(f"spatial must be one of {list(SPATIAL_FORMS)}, got {spatial!r}")
        if fp32_products not in FP32_PRODUCTS or (fp32_products != "ieee" and precision != "float32"):
            raise OptionError(f"fp32_products must be one of {list(FP32_PRODUCTS)}, and anything but 'ieee' only "
                             f"with precision='float32'; got {fp32_products!r} with precision={precision!r}")
        check_spatial_precision(spatial_precision, precision)
        self.device = engine_device(device, default="cpu")
        self.config = model.config
        self.halo = model.config.halo
        self.patch = model.config.patch
        self.classes = model.config.classes
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        cpu_bf16 = self.device.type == "cpu" and precision == "bfloat16" and _cpu_has_amx_bf16()
        # CPU: 512-pixel chunks ran the whole tile 2x faster than 8192 when chosen (commit be4c591; no results
        # file kept that run). With
        # the fused oneDNN layers, bf16 at 2,048 ran 1.23-1.33x 512 in sweeps of sizes and 0.85x alternated with
        # 512 alone (benchmarks/results/chunks-cpu.md): not changed. GPU: about 65,536 pixels per call (eager
        # activations are then ~0.6 GB per layer), rounded to whole waves of the Gluon kernel (gpu_chunk_pixels)
        if max_pixels is not None:
            if not is_whole(max_pixels) or max_pixels < 1:
                raise OptionError(f"max_pixels must be a whole number >= 1 (pixels per spectral call), got "
                                  f"{max_pixels!r}")
            self.max_pixels = int(max_pixels)
        elif self.device.type == "cpu":
            self.max_pixels = 512
        else:
            self.max_pixels = gpu_chunk_pixels(_sm_count(self.device))
        self.backend = resolve_backend(backend, self.device, self.dtype)
        self.program = fold_spectral(model).to(self.device)
        self.spatial = fold_spatial(model).to(self.device)
        # the feature map arrives channels-last ((HW, 128) transposed); a channels-last weight keeps oneDNN's conv
        # there instead of copying the map to NCHW first: 3.9x on the CPU for the 128 -> 24 3x3 conv of a
        # 134 x 134 tile (benchmarks/results/conv-relu-cpu.md); CUDA keeps the weight as it is (not timed)
        self._stem_w = (self.spatial.stem_w.contiguous(memory_format=torch.channels_last)
                        if self.device.type == "cpu" else self.spatial.stem_w)
        # triton: the kernel runs in x's dtype and packs the (float32) program for it itself
        self._program_lp = self.program if self.backend == "triton" and self.dtype != torch.float32 else None
        # autocast (eager / compile in low precision): the conv weights cast once here, not on every call
        self._program_autocast = (self.program.with_conv_dtype(self.dtype)
                                  if self.dtype != torch.float32 and self._program_lp is None else self.program)
        self._spectral = get_spectral_stage(self.backend, self.device, self.dtype)
        self.fp32_products = fp32_products
        if fp32_products != "ieee" and self.backend == "triton":
            from kernels.spectral import spectral_stage_triton

            self._spectral = functools.partial(spectral_stage_triton, input_precision=fp32_products)
        elif fp32_products != "ieee":
            log.warning("fp32_products=%r applies to the triton backend only; this engine runs the %s backend on %s "
                        "(exact float32 products): pass backend='triton' on a CUDA device to use it",
                        fp32_products, self.backend, self.device)
        self._compiled_once = False
        win = self.patch - 2
        if self.device.type == "cpu" and precision != "float32":
            from kernels.spectral import _onednn_bf16

            if not _onednn_bf16():  # an AVX2-only CPU: oneDNN has neither bf16 nor fp16 convolutions here
                log.warning("precision=%r on this CPU (no bfloat16/float16 support in oneDNN: no AVX-512 or AMX) "
                            "runs several times slower than float32 (bfloat16 0.15x on a 2-core AMD EPYC with AVX2, "
                            "benchmarks/results/demo-precision-cpu-avx2.md): use 'float32', exact and faster here",
                            precision)
            elif precision == "bfloat16" and not (_cpu_has_amx_bf16() or _cpu_has_avx512_bf16()):
                log.warning("precision='bfloat16' on this CPU (AVX-512 without AVX512-BF16 or AMX-BF16: oneDNN "
                            "emulates bfloat16) runs slower than float32: use 'float32', exact and faster here")
            elif precision == "float16" and not _cpu_has_amx_fp16():
                log.warning("precision='float16' on a CPU without AMX-FP16 units runs slower than float32 (0.6x on "
                            "a Xeon with AMX-BF16, benchmarks/results/spatial-precision-cpu.md): use 'bfloat16' for "
                            "speed on such CPUs, or 'float32'")
        if spatial_precision == "auto":
            spatial_precision = _auto_spatial_precision(self.device.type, precision, cpu_bf16)
        self.spatial_precision = spatial_precision
        # dense where measured faster: CUDA in bf16 / fp16 (TF32 GEMMs, 2.3x the convs on an H200) and the bf16
        # spatial stage of an AMX CPU (1.15x the bf16 convs end to end, spatial-precision-cpu.md)
        if spatial == "auto":
            low_dense = (self.device.type == "cuda" and self.dtype != torch.float32) or (
                cpu_bf16 and spatial_precision == "bfloat16")
            spatial = "dense" if low_dense and win <= 5 and self.backend != "compile" else "conv"
        self.spatial_form = spatial
        # windows per spatial call: max_pixels, when given, bounds both; by default max_pixels on GPU, on CPU 512,
        # except the dense bf16 GEMMs: 1.11x end to end at 2,048 against 512 (AMX; 2.5 MB of bf16 activations
        # per layer; spatial-precision-cpu.md)
        if max_pixels is not None or self.device.type != "cpu":
            self.max_windows = self.max_pixels
        else:
            self.max_windows = 2048 if spatial == "dense" and spatial_precision == "bfloat16" else 512
        if spatial == "dense" and self.spatial.blocks:
            self._dense = dense_spatial(self.spatial, win)
        self._windows = self._pick_windows()

    # -- stages ----------------------------------------------------------------------------------
    def spectral_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(P, bands)`` normalised spectra -> ``(P, 128)`` float32 features, ``max_pixels`` at a time."""
        out = []
        for i in range(0, pixels.shape[0], self.max_pixels):
            out.append(self._spectral_chunk(pixels[i:i + self.max_pixels]))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _spectral_chunk(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self._spectral(x, self.program)
        if self._program_lp is not None:  # triton: the kernel runs in the input's dtype, on pixel-major rows
            return self._spectral(x.to(self.dtype, memory_format=torch.contiguous_format), self._program_lp).float()
        with torch.autocast(self.device.type, dtype=self.dtype):
            y = self._spectral(x, self._program_autocast)
        return y.float()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Spectral feature map of a tile: ``(bands, H, W)`` -> ``(128, H, W)``."""
        b, hh, ww = x.shape
        pix = x.reshape(b, hh * ww).t()  # (HW, bands), a view; the reference transposes it back for free
        if self.backend == "triton" and self._program_lp is None:  # low precision: each chunk is made pixel-major
            pix = pix.contiguous()  # as it is cast (one pass, no float32 copy of the tile)
        return self.spectral_features(pix).t().reshape(-1, hh, ww)

    def __repr__(self) -> str:
        return (f"FusedSSRN(backend={self.backend!r}, device={str(self.device)!r}, precision={self.precision!r}, "
                f"spatial={self.spatial_form!r}, spatial_precision={self.spatial_precision!r}, "
                f"bands={self.config.bands}, classes={self.classes}, max_pixels={self.max_pixels})")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(classes, h, w)`` of a normalised tile padded by the halo, ``(bands, h + 2*halo, w + 2*halo)``:
        each pixel's patch-mode logits, with the spectral stage computed once per padded pixel."""
        c = self.config
        if not isinstance(x, torch.Tensor):  # a numpy tile (float64 as numpy makes it), as patch_forward takes one:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)  # the engine's tiles' dtype
        if x.dim() != 3 or x.shape[0] != c.bands or x.shape[1] < self.patch or x.shape[2] < self.patch:
            raise OptionError(f"expected a padded tile ({c.bands}, h + {2 * self.halo}, w + {2 * self.halo}) "
                              f"with h, w >= 1; got {tuple(x.shape)}")
        if self.precision == "float32" and x.is_floating_point() and x.dtype != torch.float32:
            raise OptionTypeError(f"this float32 FusedSSRN takes float32 tiles; got {x.dtype}: pass x.float(), or "
                                  "build FusedSSRN(model, precision='bfloat16') (or 'float16') to run in low "
                                  "precision")
        if self.backend != "compile" or self._compiled_once:
            return self._run(x)
        from kernels.dispatch import program_exception

        interrupted = None
        try:  # the first call compiles: if that fails (no C++ compiler for inductor, an unsupported op), go eager
            out = self._run(x)
            self._compiled_once = True
            return out
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the compiler's own error types vary by version
            # a service's deadline (a TimeoutError from its signal handler) that dynamo wrapped is no compiler failure
            interrupted = program_exception(e)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if "PermissionError" in reason or "Read-only file system" in reason:
                reason += "; point TORCHINDUCTOR_CACHE_DIR (the compiler's cache) at a writable directory"
        if interrupted is not None:  # as itself, outside the handler; the next call compiles again
            raise interrupted
        log.warning("torch.compile failed on the first tile (%s); falling back to the eager backend for the "
                    "whole run", reason)
        self._use_eager()
        return self._run(x)  # outside the handler: the failed call's tensors are freed first

    def _pick_windows(self) -> Callable[[torch.Tensor, SpatialProgram], torch.Tensor]:
        """The per-window function for this engine's spatial form, backend and spatial precision."""
        if self.spatial_form == "dense" and self.spatial.blocks:
            windows = self._dense_windows
        elif self.backend == "compile":
            windows = _compiled_windows()
        else:
            windows = spatial_windows
        if self.spatial_precision == "float32":
            return windows
        # the weights cast once, the windows once per call: autocast would cast the (600 x 600) dense matrices
        # on every call, which took 4.5x the bf16 GEMM itself on the CPU (2,048 windows)
        low = PRECISIONS[self.spatial_precision]
        if windows == self._dense_windows:
            dense = self._dense.to(dtype=low)
            return lambda wins, sp: spatial_dense(wins.to(low), dense).float()
        sp_low = self.spatial.to(dtype=low)
        return lambda wins, sp: windows(wins.to(low), sp_low).float()

    def _dense_windows(self, wins: torch.Tensor, sp: SpatialProgram) -> torch.Tensor:
        if self.dtype == torch.float32:
            return spatial_dense(wins, self._dense)
        with tf32_matmul():
            return spatial_dense(wins, self._dense)

    def _use_eager(self) -> None:
        from kernels.dispatch import get_spectral_stage

        self.backend = "eager"
        self._spectral = get_spectral_stage("eager", self.device, self.dtype)
        self._windows = self._pick_windows()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and self.dtype == torch.float32:
            with exact_fp32():
                return self._logits(x)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        sp = self.spatial
        feats = self.features(x)  # (128, h+2H, w+2H)
        stem = F.relu(F.conv2d(feats.unsqueeze(0), self._stem_w, sp.stem_b))[0]  # (24, h+2H-2, w+2H-2)
        win = self.patch - 2
        h, w = x.shape[1] - 2 * self.halo, x.shape[2] - 2 * self.halo
        if not sp.blocks:  # no per-window work: stage affines are pointwise, pooling is a dense box filter
            y = stem.unsqueeze(0)
            for a in sp.post:
                y = _relu_affine(y, a)
            pooled = F.avg_pool2d(y, win, stride=1)[0]  # (24, h, w)
            return torch.einsum("kc,chw->khw", sp.head_w, pooled) + sp.head_b.view(-1, 1, 1)
        if self.spatial_precision != "float32":  # the windows (25x the stem's size) then gather in that dtype
            stem = stem.to(PRECISIONS[self.spatial_precision])
        rows = max(1, self.max_windows // w)
        out = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            s = stem[:, r0:r1 + win - 1]  # (24, rows + win - 1, w + win - 1)
            wins = s.unfold(1, win, 1).unfold(2, win, 1)  # (24, rows, w, win, win)
            wins = wins.permute(1, 2, 0, 3, 4).reshape(-1, stem.shape[0], win, win)  # (rows*w, 24, win, win)
            out.append(self._windows(wins, sp))  # (rows*w, classes)
        logits = out[0] if len(out) == 1 else torch.cat(out)
        return logits.t().reshape(-1, h, w)


def engine_device(device: torch.device | str | None, *, default: str | None = None) -> torch.device:
    """``device`` checked as one the engine runs on (cpu, or a CUDA device this torch sees), else an
    :class:`OptionError` saying what was asked for and what to pass; None: ``default``, or cuda when available."""
    from ssrn.devices import DeviceError, resolve_device

    asked = default if device is None else device
    try:
        kind = None if asked is None else torch.device(asked).type
    except (RuntimeError, TypeError):
        kind = None  # resolve_device names it: not a torch device name
    if kind not in (None, "cpu", "cuda"):
        raise OptionError(f"device {device!r} is not supported by the engine; expected cpu, cuda or cuda:N")
    try:
        return resolve_device(asked)
    except DeviceError as e:
        raise OptionError(str(e)) from None


def gpu_chunk_pixels(sms: int | None, target: int = 65536, program_pixels: int = 64) -> int:
    """Pixels per spectral call on a GPU: ``target`` rounded up to whole waves of the Gluon kernel, whose
    64-pixel programs run one per SM (its shared memory). 65,536 pixels on 132 SMs are 7.76 waves, which take
    8; a 512-pixel tile (268,324 pixels with its halo) took 33 waves in 65,536-pixel calls, 32 in 67,584-pixel
    ones (the least its pixels need). ``sms`` None (unknown): ``target``."""
    if not sms:
        return target
    wave = program_pixels * int(sms)
    return -(-target // wave) * wave


def _sm_count(device: torch.device) -> int | None:
    try:
        return torch.cuda.get_device_properties(device).multi_processor_count
    except Exception:  # noqa: BLE001 - not a CUDA device here: the plain default
        return None


def _auto_spatial_precision(device_type: str, precision: str, cpu_amx_bf16: bool) -> str:
    """``spatial_precision="auto"``: the engine's low precision on CUDA (dense bf16 GEMMs 1.82x the TF32 ones,
    the bf16 engine 1.13x end to end on an H200) and for bf16 on an AMX-BF16 CPU (1.48x); float32 elsewhere."""
    if precision != "float32" and (device_type == "cuda" or (precision == "bfloat16" and cpu_amx_bf16)):
        return precision
    return "float32"


@functools.lru_cache(maxsize=1)
def _cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 matrix units that this process may use: the ``amx_bf16`` flag (Linux
    /proc/cpuinfo) and, where torch has the probe, tiles the OS has enabled. oneDNN's bf16 convolutions ran 2.9x
    float32 on such a Xeon (Sapphire Rapids, benchmarks/results/kernels-cpu.md). Where there is no /proc/cpuinfo
    (Windows, macOS) torch's probe decides alone: every CPU with AMX tiles (Sapphire Rapids and later) has AMX-BF16,
    and without this fallback such a CPU ran ``spatial_precision="auto"`` in float32 and was warned bf16 was slow."""
    tiles = _torch_cpu_probe("_is_amx_tile_supported")  # private; absent from older torch
    if tiles is False:
        return False
    flag = _cpuinfo_has("amx_bf16")
    return bool(tiles) if flag is None else flag


@functools.lru_cache(maxsize=1)
def _cpu_has_amx_fp16() -> bool:
    """Whether this CPU has AMX-FP16 units (torch's probe; Granite Rapids and later), the only CPUs where a float16
    engine could run faster than float32."""
    probe = _torch_cpu_probe("_is_amx_fp16_supported")
    return bool(_cpuinfo_has("amx_fp16")) if probe is None else probe


def _cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 (oneDNN's bf16 is native there, emulated on other AVX-512 CPUs): the flag in
    /proc/cpuinfo, else (Windows, macOS) torch's probe."""
    flag = _cpuinfo_has("avx512_bf16")
    return bool(_torch_cpu_probe("_is_avx512_bf16_supported")) if flag is None else flag


def _torch_cpu_probe(name: str) -> bool | None:
    """What ``torch.cpu.<name>()`` (a private CPU-feature probe) says; None where this torch lacks it or it fails
    (a failing probe says nothing either way)."""
    probe = getattr(torch.cpu, name, None)
    if probe is None:
        return None
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - see above
        return None


def _cpuinfo_has(flag: str, path: str = "/proc/cpuinfo") -> bool | None:
    """Whether a ``flags`` line of ``path`` lists ``flag``; None where there is no such file or it has no ``flags``
    line (Windows, macOS, ARM's ``Features``): the flags are unknown, not absent."""
    try:
        with open(path) as f:
            lines = [line for line in f if line.startswith("flags")]
    except OSError:
        return None
    return any(flag in line.split() for line in lines) if lines else None


def exact_fp32() -> contextlib.AbstractContextManager[None]:
    """Plain float32 convolutions and matmuls on CUDA for the duration (cuDNN's TF32 is on by default).

    The float32 engine is exact against patch mode only when both run without TF32's 10-bit mantissa.
    """
    return _tf32(cudnn=False, matmul=False)


@functools.lru_cache(maxsize=1)
def _compiled_windows() -> Callable[[torch.Tensor, SpatialProgram], torch.Tensor]:
    """One ``torch.compile`` of :func:`spatial_windows` per process (dynamic: window counts vary per tile)."""
    return torch.compile(spatial_windows, dynamic=True)


# ----------------------------------------------------------------------------------------------
# patch mode: the reference the engine must equal


def pad_scene(normalised: torch.Tensor, halo: int) -> torch.Tensor:
    """Zero-pad a normalised ``(bands, H, W)`` scene by ``halo`` on every side, as training does."""
    return F.pad(normalised, (halo, halo, halo, halo))


def patch_forward(model: nn.Module, normalised: torch.Tensor | np.ndarray,
                  pixels: torch.Tensor | np.ndarray | None = None, *, batch: int = 256) -> torch.Tensor:
    """Patch-mode logits: ``model.forward`` on each pixel's ``P x P`` patch of the zero-padded scene.

    ``normalised``: ``(bands, H, W)`` floating tensor or array (cast to the model's dtype); ``pixels``: ``(N, 2)``
    integer (row, col) indices inside the scene (default every pixel, row-major). Returns ``(N, classes)``. This is
    what the seed and peer toolboxes run; it recomputes the spectral stage ``P*P`` times per pixel. The model runs
    in eval mode (running statistics, no dropout), as the engine folds it; its mode is put back after.
    """
    from .errors import OptionError

    _check_model(model, "patch_forward")
    normalised = torch.as_tensor(normalised)
    if normalised.ndim != 3 or not normalised.is_floating_point():
        raise OptionError(f"normalised must be a (bands, H, W) floating array; got {tuple(normalised.shape)} "
                          f"{normalised.dtype}")
    weight = next(model.parameters())  # (its dtype and device: those of the logits)
    normalised = normalised.to(weight.dtype)
    if pixels is None:
        yy, xx = torch.meshgrid(torch.arange(normalised.shape[1]), torch.arange(normalised.shape[2]),
                                indexing="ij")
        pixels = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 2 or pixels.shape[1] != 2 or pixels.is_floating_point() or pixels.is_complex() \
            or pixels.dtype == torch.bool:
        raise OptionError(f"pixels must be an (N, 2) integer array of (row, col) indices; got {tuple(pixels.shape)} "
                          f"{pixels.dtype}")
    pixels = pixels.long()
    h_px, w_px = normalised.shape[1:]
    outside = (pixels < 0).any(1) | (pixels[:, 0] >= h_px) | (pixels[:, 1] >= w_px)  # (on the pixels' device)
    if bool(outside.any()):
        bad = pixels[outside][0].tolist()
        raise OptionError(f"pixel {bad} lies outside the {normalised.shape[1]} x {normalised.shape[2]} scene: rows "
                          f"and columns run from 0 (negative indices do not count from the end)")
    p, h = model.config.patch, model.config.halo
    padded = pad_scene(normalised, h)
    out = []
    offs = torch.arange(p)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, pixels.shape[0], batch):
                pix = pixels[i:i + batch]
                ys = (pix[:, 0:1] + offs).view(-1, 1, p, 1)  # (n, 1, P, 1)
                xs = (pix[:, 1:2] + offs).view(-1, 1, 1, p)
                patches = padded[:, ys, xs]  # (bands, n, 1, P, P)
                patches = patches[:, :, 0].permute(1, 0, 2, 3).contiguous()  # (n, bands, P, P)
                out.append(model(patches))
    finally:
        model.train(training)
    return torch.cat(out) if out else weight.new_empty(0, model.config.classes)


__all__ = ["FusedSSRN", "PRECISIONS", "SpatialBlock", "SpatialProgram", "check_spatial_precision", "fold_spatial",
           "fold_spectral", "pad_scene", "patch_forward", "spatial_windows"]
