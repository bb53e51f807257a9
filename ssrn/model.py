"""The SSRN network: the one definition shared by the trainer, the patch-mode reference and the engine.

Spectral layers have a 1x1 spatial footprint, so they are stored as ``nn.Conv2d`` with kernel
``(k, 1)`` over a ``(N, C, bands, pixels)`` layout: the band axis is dim 2, all pixels of all
patches sit on dim 3. In channels-last memory this is the fastest CPU formulation measured
(conv2d channels-last 58.2 GFLOP/s against 28.2 for the seed's Conv3d layout and 55.8 for a channels-last
Conv3d, on 2 cores: benchmarks/results/formulations.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import SSRNConfig
from .errors import OptionError


class ResidualBlock(nn.Module):
    """Two same-padded convs with a shortcut, in the paper's or the seed's arrangement."""

    def __init__(self, width: int, kernel: tuple[int, int], padding: tuple[int, int], *, form: str,
                 first: bool, projection: bool, bias: bool, eps: float) -> None:
        super().__init__()
        self.form = form
        self.pre = form == "seed" and not first
        self.bn0 = nn.BatchNorm2d(width, eps=eps) if self.pre else None
        self.conv1 = nn.Conv2d(width, width, kernel, padding=padding, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, kernel, padding=padding, bias=bias)
        self.bn2 = nn.BatchNorm2d(width, eps=eps) if form == "paper" else None
        self.shortcut = nn.Conv2d(width, width, 1, bias=bias) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(x)) if self.bn0 is not None else x
        h = self.conv2(F.relu(self.bn1(self.conv1(h))))
        if self.bn2 is not None:
            h = self.bn2(h)
        s = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(h + s) if self.form == "paper" else h + s


class StageNorms(nn.Module):
    """``n`` BN-ReLU pairs in a row after a residual stage (the seed has two; the paper none)."""

    def __init__(self, width: int, n: int, eps: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(width, eps=eps) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for bn in self.norms:
            x = F.relu(bn(x))
        return x


class SSRN(nn.Module):
    """Spectral-spatial residual network (Zhong et al., IEEE TGRS 56(2), 2018).

    ``forward(patches)`` is the paper's patch mode: ``(N, bands, P, P)`` -> logits ``(N, classes)``,
    computed as ``spatial(spectral(patches))``.
    """

    def __init__(self, config: SSRNConfig) -> None:
        if not isinstance(config, SSRNConfig):
            fix = ("SSRN(SSRNConfig.from_dict(d))" if isinstance(config, dict) else
                   f"SSRN(SSRNConfig.from_name({config!r}))" if isinstance(config, str) else
                   "SSRN(SSRNConfig(bands=..., classes=...)), or a preset: SSRN(SSRNConfig.from_name('indian_pines'))")
            raise OptionError(f"SSRN takes an SSRNConfig; got {type(config).__name__}: pass {fix}")
        super().__init__()
        self.config = c = config
        self.meta: dict[str, Any] = {}
        k, w, eps, bias = c.kernel, c.stem_width, c.bn_eps, c.conv_bias
        self.stem = nn.Conv2d(1, w, (k, 1), stride=(c.stem_stride, 1), bias=bias)
        self.stem_bn = nn.BatchNorm2d(w, eps=eps)
        self.spectral_blocks = nn.ModuleList(
            ResidualBlock(w, (k, 1), (k // 2, 0), form=c.block_form, first=i == 0, projection=False,
                          bias=bias, eps=eps)
            for i in range(c.n_spectral_blocks))
        self.spectral_norms = StageNorms(w, c.stage_norms if c.n_spectral_blocks else 0, eps)
        self.reduce = nn.Conv2d(w, c.reduce_width, (c.reduced_bands, 1), bias=bias)
        self.reduce_bn = nn.BatchNorm2d(c.reduce_width, eps=eps)
        s = c.spatial_width
        self.spatial_stem = nn.Conv2d(c.reduce_width, s, 3, bias=bias)
        self.spatial_stem_bn = nn.BatchNorm2d(s, eps=eps)
        self.spatial_blocks = nn.ModuleList(
            ResidualBlock(s, (3, 3), (1, 1), form=c.block_form, first=i == 0,
                          projection=c.spatial_shortcut == "projection", bias=bias, eps=eps)
            for i in range(c.n_spatial_blocks))
        self.spatial_norms = StageNorms(s, c.stage_norms if c.n_spatial_blocks else 0, eps)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(s, c.classes)

    @property
    def halo(self) -> int:
        return self.config.halo

    def spectral(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel spectral features: ``(N, bands, H, W)`` -> ``(N, reduce_width, H, W)``.

        No spatial mixing: the output at a pixel depends on that pixel's spectrum alone.
        """
        if x.dim() != 4 or x.shape[1] != self.config.bands:
            raise OptionError(f"spectral() expects (N, {self.config.bands}, H, W); got {tuple(x.shape)}")
        n, b, h, w = x.shape
        # channels-last strides spelled out: for one channel .contiguous(channels_last) keeps NCHW strides,
        # and the convs would then run (and return) NCHW, 2x slower on CPU
        y = x.reshape(n, 1, b, h * w).contiguous().as_strided((n, 1, b, h * w), (b * h * w, 1, h * w, 1))
        y = F.relu(self.stem_bn(self.stem(y)))  # (N, 24, 97, HW), channels-last
        for block in self.spectral_blocks:
            y = block(y)
        y = self.spectral_norms(y)
        y = F.relu(self.reduce_bn(self.reduce(y)))  # (N, 128, 1, HW)
        return y.reshape(n, -1, h, w)

    def spatial(self, features: torch.Tensor) -> torch.Tensor:
        """Spatial stage on patch features: ``(N, reduce_width, P, P)`` -> logits ``(N, classes)``."""
        y = F.relu(self.spatial_stem_bn(self.spatial_stem(features)))  # (N, 24, P-2, P-2)
        for block in self.spatial_blocks:
            y = block(y)
        y = self.spatial_norms(y)
        y = y.mean(dim=(2, 3))  # global average pool, (N, 24)
        return self.head(self.dropout(y))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of the centre pixels of ``patches`` ``(N, bands, patch, patch)``, normalised."""
        c = self.config
        if patches.dim() != 4 or patches.shape[1:] != (c.bands, c.patch, c.patch):
            raise OptionError(f"SSRN expects patches (N, {c.bands}, {c.patch}, {c.patch}); "
                             f"got {tuple(patches.shape)}")
        return self.spatial(self.spectral(patches))


def filled_model(config: SSRNConfig, state: dict[str, torch.Tensor]) -> SSRN:
    """An ``SSRN`` holding ``state`` (every parameter and buffer, checked strictly), built without initial weights:
    drawing them from torch's global generator, or saving and restoring it around the draw, moved or rewound the
    stream of a seeded training (its dropout) in this or another thread."""
    with torch.device("meta"):
        model = SSRN(config)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (the paper's tables count both)."""
    if not isinstance(model, nn.Module):
        fix = ": pass the network, count_parameters(SSRN(config))" if isinstance(model, SSRNConfig) else ""
        raise OptionError(f"count_parameters takes a model (a torch nn.Module such as an SSRN); got "
                          f"{type(model).__name__}{fix}")
    return sum(p.numel() for p in model.parameters())
