"""A timeout the service raised during the compiled engine's first tile, which torch.compile wraps, reaches the
service as itself: the engine neither logs a compiler failure nor finishes the tile on eager after the deadline."""

from __future__ import annotations

import logging

import pytest
import torch

from _models import randomise_bn
from hsi_engine import fused
from hsi_engine.fused import FusedSSRN, pad_scene, spatial_windows
from kernels import dispatch
from kernels.spectral import spectral_stage_reference
from ssrn.config import SSRNConfig
from ssrn.model import SSRN


def _model() -> SSRN:
    torch.manual_seed(0)
    return randomise_bn(SSRN(SSRNConfig(bands=12, classes=3, stem_width=8, reduce_width=16, spatial_width=8,
                                        spectral_blocks=1, spatial_blocks=1)), 0)


class TorchRuntimeError(RuntimeError):
    """Stands for ``torch._dynamo.exc.TorchRuntimeError`` (not imported: see below)."""


def _dynamo_wrapped(inner: BaseException):
    """A first compiled call that fails as dynamo reports an exception of the traced code: a TorchRuntimeError
    raised ``from None`` (its context kept)."""

    def first_call(*args, **kwargs):
        try:
            raise inner
        except BaseException:
            raise TorchRuntimeError("RuntimeError when making fake tensor call") from None

    return first_call


@pytest.mark.parametrize("inner", [TimeoutError("request timed out"), InterruptedError("stopped")],
                         ids=lambda e: type(e).__name__)
def test_a_timeout_on_the_first_compiled_tile_is_raised_not_run_eager(monkeypatch, caplog, inner):
    # stand-ins for the compiled stages: no torch.compile is made here (importing dynamo alone takes seconds)
    monkeypatch.setattr(dispatch, "_compile_failure", lambda device_type: None)
    monkeypatch.setattr(dispatch, "_compiled", lambda device_type: spectral_stage_reference)
    monkeypatch.setattr(fused, "_compiled_windows", lambda: spatial_windows)
    m = _model()
    x = pad_scene(torch.randn(12, 6, 5), m.config.halo)
    eager = FusedSSRN(m, backend="eager")(x)
    comp = FusedSSRN(m, backend="compile")
    comp._spectral = _dynamo_wrapped(inner)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.fused"):
        with pytest.raises(type(inner)) as got:
            comp(x)
    assert got.value is inner
    assert comp.backend == "compile"
    assert not [r for r in caplog.records if r.name == "hsi_engine.fused"]
    comp._spectral = spectral_stage_reference  # the next request's first tile compiles again
    torch.testing.assert_close(comp(x), eager, rtol=1e-5, atol=1e-5)
    assert comp.backend == "compile" and comp._compiled_once
