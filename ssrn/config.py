"""SSRN architecture configuration: a frozen dataclass with named dataset presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

VARIANTS = ("ssrn", "spc", "spa")
BLOCK_FORMS = ("paper", "seed")
SHORTCUTS = ("identity", "projection")


@dataclass(frozen=True)
class SSRNConfig:
    """Architecture of one SSRN. Defaults are the paper's form (Zhong et al., TGRS 2018).

    ``block_form="paper"``: a residual block is conv-BN-ReLU-conv-BN, + shortcut, ReLU.
    ``block_form="seed"``: the released Keras code's block, x + conv(ReLU(BN(conv(x)))) with the
    pre-activation BN-ReLU before the first conv of every block but the first of a stage;
    ``stage_norms`` BN-ReLU pairs follow each residual stage (the seed has two in a row).
    """

    bands: int
    classes: int
    patch: int = 7
    stem_width: int = 24
    stem_stride: int = 2
    kernel: int = 7
    spectral_blocks: int = 2
    reduce_width: int = 128
    spatial_width: int = 24
    spatial_blocks: int = 2
    dropout: float = 0.5
    variant: str = "ssrn"
    block_form: str = "paper"
    stage_norms: int = 0
    spatial_shortcut: str = "identity"
    conv_bias: bool = False
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.block_form not in BLOCK_FORMS:
            raise ValueError(f"block_form must be one of {BLOCK_FORMS}, got {self.block_form!r}")
        if self.spatial_shortcut not in SHORTCUTS:
            raise ValueError(f"spatial_shortcut must be one of {SHORTCUTS}, got {self.spatial_shortcut!r}")
        if self.patch < 3 or self.patch % 2 == 0:
            raise ValueError(f"patch must be an odd size >= 3 (5, 7, 9, 11), got {self.patch}")
        if self.bands < self.kernel:
            raise ValueError(f"bands ({self.bands}) must be at least the spectral kernel ({self.kernel})")
        if self.classes < 2:
            raise ValueError(f"classes must be >= 2, got {self.classes}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so 'same' convs keep the band axis, got {self.kernel}")

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels: a tile needs this many extra pixels on each side."""
        return self.patch // 2

    @property
    def reduced_bands(self) -> int:
        """Band positions after the stride-2 stem (97 for 200 bands): the full-band kernel depth."""
        return (self.bands - self.kernel) // self.stem_stride + 1

    @property
    def n_spectral_blocks(self) -> int:
        return 0 if self.variant == "spa" else self.spectral_blocks

    @property
    def n_spatial_blocks(self) -> int:
        return 0 if self.variant == "spc" else self.spatial_blocks

    def replace(self, **changes: Any) -> "SSRNConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSRNConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SSRNConfig fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "SSRNConfig":
        """A dataset preset (``indian_pines``, ``pavia_university``, ``ksc``, ``salinas``)."""
        key = name.lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in PRESETS:
            raise KeyError(f"no SSRN preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)


PRESETS: dict[str, SSRNConfig] = {
    "indian_pines": SSRNConfig(bands=200, classes=16),
    "pavia_university": SSRNConfig(bands=103, classes=9),
    "ksc": SSRNConfig(bands=176, classes=13),
    "salinas": SSRNConfig(bands=204, classes=16),
}
_ALIASES = {"in": "indian_pines", "ip": "indian_pines", "up": "pavia_university", "paviau": "pavia_university",
            "pavia": "pavia_university", "kennedy_space_center": "ksc", "sa": "salinas"}
