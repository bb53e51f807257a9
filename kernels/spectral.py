"""Fused spectral stage: pure-torch reference (also the eager CPU path). The Triton kernel sits beside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .program import Affine, FoldedConv, SpectralProgram


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
