"""Fused spectral stage: pure-torch reference (also the eager CPU path). The Triton kernel sits beside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .program import Affine, FoldedBlock, FoldedConv, SpectralProgram


def _conv(y: torch.Tensor, c: FoldedConv) -> torch.Tensor:
    # y: (1, C_in, D, P) channels-last; kernel (k, 1) slides along bands only.
    out = F.conv2d(y, c.weight.unsqueeze(-1), c.bias, stride=(c.stride, 1), padding=(c.padding, 0))
    return F.relu(out) if c.relu else out


def _affine(y: torch.Tensor, a: Affine) -> torch.Tensor:
    return F.relu(y * a.scale.view(1, -1, 1, 1) + a.shift.view(1, -1, 1, 1))


def spectral_stage_reference(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
    """Spectral features of ``x (P, bands)`` pixels: ``(P, out_features)`` in ``x``'s dtype.

    The formulation (conv2d with (k, 1) kernels, channels-last, bands on dim 2, pixels on dim 3)
    measured fastest on CPU; see benchmarks/results/formulations.md.
    """
    if x.dim() != 2 or x.shape[1] != program.bands:
        raise ValueError(f"expected pixels (P, {program.bands}); got {tuple(x.shape)}")
    p = x.shape[0]
    y = x.t().reshape(1, 1, program.bands, p).contiguous(memory_format=torch.channels_last)
    y = _conv(y, program.stem)  # (1, W, D, P)
    for b in program.blocks:
        h = _affine(y, b.pre) if b.pre is not None else y
        h = _conv(_conv(h, b.conv1), b.conv2) + y
        y = F.relu(h) if b.relu else h
    for a in program.post:
        y = _affine(y, a)
    y = _conv(y, program.reduce)  # (1, F, 1, P)
    return y.reshape(-1, p).t()


def _random_program(bands: int, width: int = 24, out_features: int = 128, *, blocks: int = 2,
                    form: str = "paper", stage_norms: int = 0, kernel: int = 7, stride: int = 2,
                    generator: torch.Generator | None = None) -> SpectralProgram:
    """A random folded program (for self-checks, tests and benchmarks); weights scaled to keep O(1) activations.

    ``form="seed"``: blocks after the first get a ``pre`` affine, the block ReLU and conv2's ReLU are off,
    and ``stage_norms`` post affines follow, as ``hsi_engine.fused.fold_spectral`` folds the seed's variant.
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
                             conv(width, width, kernel, padding=kernel // 2, relu=not seed),
                             pre=affine() if seed and i > 0 else None, relu=not seed)
                 for i in range(blocks))
    return SpectralProgram(bands=bands, stem=conv(width, 1, kernel, stride=stride), blocks=blks,
                           post=tuple(affine() for _ in range(stage_norms)), reduce=conv(out_features, width, d))


try:  # Triton is optional (absent on macOS / Windows wheels); the reference above never needs it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False


def spectral_stage_triton(x: torch.Tensor, program: SpectralProgram, *, allow_tf32: bool = False) -> torch.Tensor:
    """Placeholder until the fused kernel lands."""
    raise NotImplementedError("the fused Triton spectral kernel is not implemented yet")
