"""Spectral-stage kernels: each beside a pure-torch reference with the same signature."""

from .program import Affine, FoldedBlock, FoldedConv, SpectralProgram
from .spectral import spectral_stage_reference

__all__ = ["Affine", "FoldedBlock", "FoldedConv", "SpectralProgram", "spectral_stage_reference"]
