"""Per-band standardisation of a raw tile into the engine's padded float32 buffer, in one pass.

``normalise_into`` is a numba kernel (GIL released, so the engine's reader threads run it side by side);
``normalise_into_reference`` is the numpy formulation it replaces, with the same signature and the same
bits: ``(x - mean) / std`` in float64, rounded once to float32. The kernel also learns in the same pass
whether any value is non-finite, where numpy needed a separate ``isfinite`` pass and float64 temporaries
twice the tile's size (benchmarks/results/normalise-cpu.md).
"""

from __future__ import annotations

import numba
import numpy as np


def normalise_into_reference(raw: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
                             nodata: float | None, out: np.ndarray) -> tuple[np.ndarray, bool]:
    """Write ``(raw - mean) / std`` (or ``raw`` when ``mean`` is None) into ``out`` (same shape, float32).

    Returns ``(bad, nonfinite)``: ``bad`` (h, w) marks pixels with a non-finite band or, when ``nodata`` is a
    number, a band equal to it; ``nonfinite`` says whether any value was non-finite. ``out`` is written for
    every pixel, bad ones included (the caller zeroes or rejects them).
    """
    h, w = raw.shape[1:]
    bad = np.zeros((h, w), dtype=bool)
    nonfinite = False
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        if not finite.all():
            nonfinite = True
            bad |= ~finite.all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        bad |= (raw == nodata).any(axis=0)
    if mean is not None:
        out[...] = (raw - mean[:, None, None]) / std[:, None, None]
    else:
        out[...] = raw
    return bad, nonfinite


# 'reassoc' only lets LLVM vectorise the sum z; (f - m) / s has nothing to reassociate, so the stored values
# keep numpy's bits (tested bit for bit). No cache=True: an on-disk cache saved ~0.04 s of the ~0.3 s first
# call (numba's own start-up dominates) and fails where the install directory is read-only.
@numba.njit(nogil=True, fastmath={"reassoc"})
def _kernel(raw, mean, std, out):  # pragma: no cover - compiled
    b, h, w = raw.shape
    z = 0.0
    for k in range(b):
        m = mean[k]
        s = std[k]
        for i in range(h):
            for j in range(w):
                f = np.float64(raw[k, i, j])
                out[k, i, j] = (f - m) / s
                z += f - f  # NaN exactly when some value is NaN or infinite
    return z


def normalise_into(raw: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, nodata: float | None,
                   out: np.ndarray) -> tuple[np.ndarray, bool]:
    """Same contract and bits as :func:`normalise_into_reference`: one compiled, branch-free pass; the nodata
    mask is built (with numpy) only when the pass saw a non-finite value or a nodata value is set."""
    if raw.dtype.kind not in "fiub" or raw.dtype.itemsize > 8:
        return normalise_into_reference(raw, mean, std, nodata, out)
    if raw.dtype.kind == "b":
        raw = raw.view(np.uint8)
    if raw.dtype == np.float16:  # numba has no float16 arithmetic; float32 holds every float16 exactly
        raw = raw.astype(np.float32)
    b, h, w = raw.shape
    m = np.asarray(mean, np.float64) if mean is not None else np.zeros(b)
    s = np.asarray(std, np.float64) if mean is not None else np.ones(b)  # (x - 0) / 1 == x exactly
    z = _kernel(raw, m, s, out)
    nonfinite = raw.dtype.kind == "f" and bool(np.isnan(z))
    bad = np.zeros((h, w), dtype=bool)
    if nonfinite:
        bad |= ~np.isfinite(raw).all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        bad |= (raw == nodata).any(axis=0)
    return bad, nonfinite


__all__ = ["normalise_into", "normalise_into_reference"]
