"""Model helpers shared by the engine tests (imported by name: tests/engine is on sys.path under pytest)."""

from __future__ import annotations

import torch


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN running stats and affine params, so BN folding is really exercised; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.6 * torch.rand(n, generator=g) - 0.3)
    return model.eval()
