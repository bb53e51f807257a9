"""Quicklooks with matplotlib (Agg, no global state): false colour, class maps, and the side-by-side figure
"false colour | ground truth | prediction" with a legend of class names (after Fig. 2 of the SSRN paper).

Figures are drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas, so nothing here touches
``pyplot`` or the process-wide backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptionError

__all__ = ["classmap_rgb", "false_colour", "pick_rgb_bands", "save_classmap", "save_comparison", "save_false_colour"]

RGB_NM = (650.0, 550.0, 450.0)
# fractions of the band count used when wavelengths are unknown (about red/green/blue on a 400-2500 nm sensor)
_RGB_FRACTIONS = (0.12, 0.07, 0.02)


def pick_rgb_bands(scene, rgb_nm: Sequence[float] = RGB_NM) -> tuple[int, int, int]:
    """Band indices (0-based) nearest ``rgb_nm`` when the scene has a ``wavelength`` coord, else fixed fractions."""
    n = scene.sizes["band"] if hasattr(scene, "sizes") else int(np.shape(scene)[0])
    if hasattr(scene, "coords") and "wavelength" in scene.coords:
        wl = np.asarray(scene["wavelength"].values, dtype=np.float64)
        if np.isfinite(wl).any():
            return tuple(int(np.nanargmin(np.abs(wl - t))) for t in rgb_nm)  # type: ignore[return-value]
    return tuple(min(n - 1, int(round(f * (n - 1)))) for f in _RGB_FRACTIONS)  # type: ignore[return-value]


def false_colour(scene, *, bands: Sequence[int] | None = None, percentiles: tuple[float, float] = (2.0, 98.0),
                 nodata: float | None = None) -> np.ndarray:
    """``(y, x, 3)`` float image in [0, 1] from three bands, each stretched between two percentiles.

    ``scene`` is a ``(band, y, x)`` DataArray (only the three bands are read) or array. Nodata
    (``nodata`` or the scene's ``_FillValue``) and non-finite pixels are black and excluded from the stretch.
    """
    idx = list(bands) if bands is not None else list(pick_rgb_bands(scene))
    if nodata is None and hasattr(scene, "attrs"):
        nodata = scene.attrs.get("_FillValue")
    if hasattr(scene, "isel"):
        rgb = np.asarray(scene.isel(band=idx).values, dtype=np.float64)
    else:
        rgb = np.asarray(scene, dtype=np.float64)[idx]
    valid = np.isfinite(rgb).all(0)
    if nodata is not None and np.isfinite(nodata):
        valid &= ~(rgb == nodata).any(0)
    out = np.zeros(rgb.shape[1:] + (3,), dtype=np.float64)
    for c in range(3):
        ch = rgb[c]
        vals = ch[valid]
        if vals.size == 0:
            continue
        lo, hi = np.percentile(vals, percentiles)
        out[..., c] = np.clip((ch - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out[~valid] = 0.0
    return out


def classmap_rgb(labels, palette: Sequence[Sequence[int]] | None = None, *, n_classes: int | None = None,
                 background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``(y, x, 3)`` uint8 image of a class map: class i in ``palette[i-1]``, 0 (nodata) in ``background``."""
    from .writers import _norm_palette, palette_colours

    lab = np.asarray(labels)
    k = n_classes if n_classes is not None else (len(palette_colours(palette)) if palette is not None
                                                 else max(1, int(lab.max())))
    pal = np.asarray([tuple(background)] + list(_norm_palette(palette, k)), dtype=np.uint8)
    lab = np.clip(lab.astype(np.int64), 0, k)
    return pal[lab]


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(fig, class_names: Sequence[str], palette, *, present: Sequence[int] | None = None, ncol: int = 4):
    from matplotlib.patches import Patch

    from .writers import _norm_names, _norm_palette

    k = len(class_names)
    pal = _norm_palette(palette, k)
    names = _norm_names(class_names, k)
    handles = [Patch(facecolor=np.asarray(pal[i]) / 255.0, edgecolor="0.3", label=f"{i + 1} {names[i]}")
               for i in range(k) if present is None or (i + 1) in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol, len(handles)), fontsize=8,
                   frameon=False)


def _save(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.png")
    fig.savefig(tmp, dpi=fig.dpi)
    os.replace(tmp, p)
    return p


def _aspect_size(h: int, w: int, panels: int, panel_in: float = 4.0, legend_in: float = 1.4) -> tuple[float, float]:
    scale = panel_in / max(h, w)
    return panels * w * scale + 0.4, h * scale + legend_in + 0.5


def save_false_colour(scene, path: str | os.PathLike, *, bands: Sequence[int] | None = None,
                      title: str | None = None) -> Path:
    """PNG of the false-colour composite."""
    img = false_colour(scene, bands=bands)
    h, w = img.shape[:2]
    fig = _figure(*_aspect_size(h, w, 1, legend_in=0.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or _rgb_title(scene, bands), fontsize=9)
    return _save(fig, path)


def _rgb_title(scene, bands) -> str:
    idx = list(bands) if bands is not None else list(pick_rgb_bands(scene))
    if hasattr(scene, "coords") and "wavelength" in scene.coords:
        wl = np.asarray(scene["wavelength"].values)
        return "false colour (R, G, B = " + ", ".join(f"{wl[i]:.0f}" for i in idx) + " nm)"
    return "false colour (bands " + ", ".join(str(i + 1) for i in idx) + ")"


def save_classmap(labels, path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                  palette=None, title: str = "class map") -> Path:
    """PNG of a class map with its legend."""
    from .writers import palette_colours

    lab = np.asarray(labels)
    k = len(class_names) if class_names is not None else (len(palette_colours(palette)) if palette is not None
                                                          else int(lab.max()))
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(1, k + 1)]
    h, w = lab.shape
    fig = _figure(*_aspect_size(h, w, 1, legend_in=0.25 * (k + 3) / 2))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(classmap_rgb(lab, palette, n_classes=k), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    _legend(fig, names, palette, ncol=2)
    return _save(fig, path)


def save_comparison(scene, ground_truth, prediction, path: str | os.PathLike, *,
                    class_names: Sequence[str] | None = None, palette=None, title: str | None = None,
                    subtitles: Sequence[str] = ("false colour", "ground truth", "prediction"),
                    bands: Sequence[int] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """PNG "false colour | ground truth | prediction" with one legend of class names below.

    ``ground_truth`` and ``prediction`` are ``(y, x)`` label maps (0 = unlabelled / nodata, drawn black).
    ``extra`` may add a fourth panel ``{"title": str, "labels": (y, x) map}`` (e.g. errors only).
    """
    from .writers import palette_colours

    gt = np.asarray(ground_truth)
    pred = np.asarray(prediction)
    if gt.shape != pred.shape:
        raise OptionError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    k = len(class_names) if class_names is not None else (len(palette_colours(palette)) if palette is not None
                                                          else int(max(gt.max(), pred.max())))
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(1, k + 1)]
    panels = [("rgb", false_colour(scene, bands=bands)), ("cls", classmap_rgb(gt, palette, n_classes=k)),
              ("cls", classmap_rgb(pred, palette, n_classes=k))]
    titles = list(subtitles)
    if extra is not None:
        panels.append(("cls", classmap_rgb(np.asarray(extra["labels"]), palette, n_classes=k)))
        titles.append(extra.get("title", ""))
    h, w = gt.shape
    rows_legend = int(np.ceil(k / 4))
    fig = _figure(*_aspect_size(h, w, len(panels), legend_in=0.22 * rows_legend + 0.3))
    for i, ((_, img), t) in enumerate(zip(panels, titles)):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(t, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    _legend(fig, names, palette, ncol=4)
    return _save(fig, path)
