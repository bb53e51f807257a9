"""Class colours for a model whose labels come without a colour table."""

from __future__ import annotations


def default_palette(n_classes: int) -> list[tuple[int, int, int]]:
    """K distinct RGB colours (matplotlib's tab20, then hsv) for classes 1..K: what a map of a model without a
    palette is drawn with, and what a trainer stores when its labels have no colour table."""
    import matplotlib

    base = [tuple(int(round(255 * c)) for c in matplotlib.colormaps["tab20"](i)[:3]) for i in range(20)]
    if n_classes <= 20:
        return base[:n_classes]
    hsv = matplotlib.colormaps["hsv"]
    return base + [tuple(int(round(255 * c)) for c in hsv(i / (n_classes - 20))[:3]) for i in range(n_classes - 20)]
