"""Spectral-stage kernels: each beside a pure-torch reference with the same signature."""

from .dispatch import auto_choice, available_backends, get_spectral_stage, resolve_backend
from .program import Affine, FoldedBlock, FoldedConv, SpectralProgram
from .spectral import spectral_stage_conv3d, spectral_stage_reference, spectral_stage_triton

__all__ = ["Affine", "FoldedBlock", "FoldedConv", "SpectralProgram", "auto_choice", "available_backends",
           "get_spectral_stage", "resolve_backend", "spectral_stage_conv3d", "spectral_stage_reference",
           "spectral_stage_triton"]
