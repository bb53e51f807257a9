"""Moved to :mod:`ssrn.normalise` (the trainer and the engine share the normalisation); this name stays for code
written against hsi-engine 0.2.0."""

from ssrn.normalise import (declared_scaling, looks_standardised, normalise_into, normalise_into_reference,
                            normalise_tensor, scale_distance, scale_factor, scale_ratios, stage_raw)

__all__ = ["declared_scaling", "looks_standardised", "normalise_into", "normalise_into_reference", "normalise_tensor",
           "scale_distance", "scale_factor", "scale_ratios", "stage_raw"]
