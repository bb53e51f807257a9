"""SSRN architecture configuration: a frozen dataclass with named dataset presets."""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import sys
from dataclasses import dataclass
from typing import Any

from .errors import OptionError

VARIANTS = ("ssrn", "spc", "spa")
BLOCK_FORMS = ("paper", "seed")
SHORTCUTS = ("identity", "projection")

# Bounds of a sane network (model.json is read from files that may be hostile: a field must never make the
# loader allocate gigabytes or loop for minutes). The weights of a config at these bounds are far beyond any
# real SSRN's (the paper's has ~0.36 M parameters); load_model also compares the weights file's shapes with the
# config's before it builds the network.
MIN_PATCH, MAX_PATCH = 3, 31  # odd; the engine reads each tile with a halo of patch // 2
MAX_BANDS = 4096
MAX_CLASSES = 65535  # the engine's uint8 class maps hold 255 (checked there, and by load_model / the trainer)
MAX_WIDTH = 4096
MAX_BLOCKS = 64
MAX_STAGE_NORMS = 16
MAX_KERNEL = 255


class InvalidConfig(OptionError):
    """An SSRNConfig field of the wrong type or out of bounds; ``field`` names it (None: the whole config)
    and ``found`` holds the value given."""

    def __init__(self, field: str | None, message: str, found: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.found = found

    def __reduce__(self) -> tuple:  # pickle called __init__ with the message alone (a process pool's, a worker's)
        return type(self), (self.field, str(self.args[0]) if self.args else "", self.found)


class UnknownPresetError(OptionError, KeyError):
    """A preset name :meth:`SSRNConfig.from_name` does not know (a ``KeyError`` too, for older callers)."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


# field -> (kind, low, high): kind "int" (an integer, not a bool), "odd" (an odd one), "float" (a finite number),
# "bool", or the tuple of allowed strings; bounds inclusive, except the floats' ">0" (above 0) and "<1" (below 1)
_FIELDS: dict[str, tuple[Any, Any, Any]] = {
    "bands": ("int", 1, MAX_BANDS),
    "classes": ("int", 2, MAX_CLASSES),
    "patch": ("odd", MIN_PATCH, MAX_PATCH),
    "stem_width": ("int", 1, MAX_WIDTH),
    "stem_stride": ("int", 1, MAX_BANDS),
    "kernel": ("odd", 1, MAX_KERNEL),
    "spectral_blocks": ("int", 0, MAX_BLOCKS),
    "reduce_width": ("int", 1, MAX_WIDTH),
    "spatial_width": ("int", 1, MAX_WIDTH),
    "spatial_blocks": ("int", 0, MAX_BLOCKS),
    "dropout": ("float", 0.0, "<1"),
    "variant": (VARIANTS, None, None),
    "block_form": (BLOCK_FORMS, None, None),
    "stage_norms": ("int", 0, MAX_STAGE_NORMS),
    "spatial_shortcut": (SHORTCUTS, None, None),
    "conv_bias": ("bool", None, None),
    "bn_eps": ("float", ">0", 1.0),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def _is_bool(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


def _checked(name: str, value: Any, kind: Any, lo: Any, hi: Any) -> Any:
    """``value`` checked against its field's kind and bounds, as the plain Python type (a numpy integer or
    float becomes an int or float, so the config stays hashable and JSON-writable)."""
    found = f"found {_shown(value)} ({type(value).__name__})"
    if kind in ("int", "odd"):
        what = (f"an odd whole number {lo}..{hi}" + (" (the paper studies 5, 7, 9 and 11)" if name == "patch" else
                                                     " (so 'same' convs keep the band axis)")
                if kind == "odd" else f"a whole number {lo}..{hi}")
        if _is_bool(value) or not hasattr(value, "__index__"):
            raise InvalidConfig(name, f"{name} must be {what}; {found}", value)
        value = operator.index(value)
        if not lo <= value <= hi or (kind == "odd" and value % 2 == 0):
            raise InvalidConfig(name, f"{name} must be {what}; found {_shown(value)}", value)
        return value
    if kind == "float":
        span = f"{'above 0' if lo == '>0' else f'>= {lo}'} and {'below 1' if hi == '<1' else f'<= {hi}'}"
        if _is_bool(value) or not isinstance(value, numbers.Real):
            raise InvalidConfig(name, f"{name} must be a number {span}; {found}", value)
        value = float(value)
        ok = math.isfinite(value) and (value > 0 if lo == ">0" else value >= lo) and (
            value < 1 if hi == "<1" else value <= hi)
        if not ok:
            raise InvalidConfig(name, f"{name} must be a finite number {span}; found {_shown(value)}", value)
        return value
    if kind == "bool":
        if _is_bool(value):
            return bool(value)
        raise InvalidConfig(name, f"{name} must be true or false; {found}", value)
    if not isinstance(value, str) or value not in kind:
        raise InvalidConfig(name, f"{name} must be one of {kind}; {found}", value)
    return value


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
        for f in dataclasses.fields(self):
            kind, lo, hi = _FIELDS[f.name]
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), kind, lo, hi))
        if self.bands < self.kernel:
            raise InvalidConfig("bands", f"bands ({self.bands}) must be at least the spectral kernel "
                                f"({self.kernel})", self.bands)
        if self.stem_stride > self.bands:
            raise InvalidConfig("stem_stride", f"stem_stride must be 1..bands ({self.bands}); found "
                                f"{self.stem_stride}", self.stem_stride)

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
        """A copy with ``changes`` applied (and checked, as any new config is)."""
        _refuse_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what ``model.json`` stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSRNConfig":
        """A config from its :meth:`to_dict` form (model.json's ``config``): every field type-checked and
        bounded; a bad one raises :class:`InvalidConfig` (a ``ValueError``) naming it."""
        if not isinstance(d, dict):
            raise InvalidConfig(None, f"an SSRNConfig is an object of fields; found {type(d).__name__}", d)
        _refuse_unknown(d)
        missing = [n for n in ("bands", "classes") if n not in d]
        if missing:
            raise InvalidConfig(missing[0], f"SSRNConfig needs {' and '.join(missing)} (no default); found none",
                                None)
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "SSRNConfig":
        """A dataset preset (``indian_pines``, ``pavia_university``, ``ksc``, ``salinas``)."""
        if not isinstance(name, str):
            raise OptionError(f"SSRNConfig.from_name takes a preset's name (a str, one of {sorted(PRESETS)}); got "
                              f"{type(name).__name__} {repr(name)[:60]}"
                              + (": decode it first (name.decode())" if isinstance(name, bytes) else ""))
        key = name.lower().replace("-", "_")
        key = DATASET_ALIASES.get(key, key)
        if key not in PRESETS:
            raise UnknownPresetError(f"no SSRN preset {name!r}; known presets: {sorted(PRESETS)}")
        return PRESETS[key].replace(**overrides)


def _refuse_unknown(fields: dict[str, Any]) -> None:
    """Refuse names that are no SSRNConfig field (``replace(foo=1)`` was dataclasses' bare TypeError)."""
    names = [f.name for f in dataclasses.fields(SSRNConfig)]
    unknown = sorted(str(k) for k in set(fields) - set(names))
    if unknown:
        raise InvalidConfig(unknown[0], f"unknown SSRNConfig fields {unknown}; expected a subset of "
                            f"{sorted(names)}", fields[unknown[0]] if unknown[0] in fields else None)


PRESETS: dict[str, SSRNConfig] = {
    "indian_pines": SSRNConfig(bands=200, classes=16),
    "pavia_university": SSRNConfig(bands=103, classes=9),
    "ksc": SSRNConfig(bands=176, classes=13),
    "salinas": SSRNConfig(bands=204, classes=16),
}
DATASET_ALIASES = {"in": "indian_pines", "ip": "indian_pines", "indianpines": "indian_pines", "up": "pavia_university",
                   "paviau": "pavia_university", "pavia": "pavia_university", "pavia_u": "pavia_university",
                   "kennedy_space_center": "ksc", "sa": "salinas"}  # short names of the presets and of ssrn.data's

