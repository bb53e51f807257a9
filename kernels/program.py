"""The folded spectral stage as plain tensors: what every spectral backend (eager, compile, Triton) runs.

Batch norms are folded into the preceding convolution where one precedes them; the BN-ReLU pairs
that cannot be folded (the seed's stage norms and pre-activations) stay as per-channel affines.
``hsi_engine.fused.fold_spectral`` builds a ``SpectralProgram`` from an ``ssrn.SSRN``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class FoldedConv:
    """A conv along bands: ``weight (out, in, k)``, ``bias (out,)``; ReLU after it when ``relu``."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int = 1
    padding: int = 0
    relu: bool = True


@dataclass(frozen=True)
class Affine:
    """Per-channel ``relu(x * scale + shift)``: an inference-mode BN followed by a ReLU."""

    scale: torch.Tensor
    shift: torch.Tensor


@dataclass(frozen=True)
class FoldedBlock:
    """Residual block: ``h = conv2(conv1(pre(x)))``; ``out = h + x``, ReLU after the add when ``relu``."""

    conv1: FoldedConv
    conv2: FoldedConv
    pre: Affine | None = None
    relu: bool = True


@dataclass(frozen=True)
class SpectralProgram:
    """Raw (normalised) spectrum -> stem -> residual blocks -> stage affines -> full-band reduction."""

    bands: int
    stem: FoldedConv
    blocks: tuple[FoldedBlock, ...]
    post: tuple[Affine, ...]
    reduce: FoldedConv

    @property
    def width(self) -> int:
        return int(self.stem.weight.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.reduce.weight.shape[0])

    @property
    def reduced_bands(self) -> int:
        return (self.bands - self.stem.weight.shape[2] + 2 * self.stem.padding) // self.stem.stride + 1

    def flops_per_pixel(self) -> int:
        """Multiply-adds x 2 of all convs for one pixel (the figure benchmarks report TFLOP/s against)."""
        d = self.reduced_bands
        total = 2 * self.stem.weight.numel() * d
        for b in self.blocks:
            total += 2 * (b.conv1.weight.numel() + b.conv2.weight.numel()) * d
        return total + 2 * self.reduce.weight.numel()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SpectralProgram":
        """The program with every tensor moved to ``device`` and / or cast to ``dtype``."""
        return _map_tensors(self, lambda t: t.to(device=device, dtype=dtype))

    def with_conv_dtype(self, dtype: torch.dtype) -> "SpectralProgram":
        """The convs' weights and biases in ``dtype``, the affines as they are: what autocast hands each conv,
        cast once instead of on every call (the 128 x 24 x 97 reduce weight took 2.6 % of a bf16 CPU run)."""
        def cast(c: FoldedConv) -> FoldedConv:
            return replace(c, weight=c.weight.to(dtype), bias=c.bias.to(dtype) if c.bias is not None else None)

        return replace(self, stem=cast(self.stem), reduce=cast(self.reduce),
                       blocks=tuple(replace(b, conv1=cast(b.conv1), conv2=cast(b.conv2)) for b in self.blocks))


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, fn) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj)
                               if isinstance(getattr(obj, f.name), (torch.Tensor, tuple)) or
                               hasattr(getattr(obj, f.name), "__dataclass_fields__")})
    return obj
