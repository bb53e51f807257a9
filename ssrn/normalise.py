"""Per-band standardisation of a raw tile into the engine's padded float32 buffer.

``normalise_into`` works a band at a time with a cache-resident float64 scratch band (numpy releases the
GIL, so the engine's reader threads run it side by side); ``normalise_into_reference`` is the whole-tile
numpy formulation it replaces, with the same signature and the same bits: ``(x - mean) / std`` in float64,
rounded once to float32. Measured 1.7-2.8x faster per tile (benchmarks/results/normalise-cpu.md); a numba
kernel was no faster and cost ~0.5 s of start-up per process.

``stage_raw`` and ``normalise_tensor`` are the device-side form used on CUDA, where host-side float64 work
was the engine's bottleneck: the reader threads only copy the raw window, in its own dtype, into pinned
memory (half the bytes of float32 for 16-bit sensors), and the device normalises it with the same float64
operations, so the tile's bits are those of ``normalise_into``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from concurrent.futures import Executor

    import torch
    import xarray as xr

_log = logging.getLogger(__name__)


# a value more than this many times the training scene's magnitude (sqrt(mean^2 + std^2)) is no measurement on any
# scale (a corrupted float32 1e30, a float64 1e300): such pixels are left out of the scale sample, and the run names
# them (a scene 1e4x off, reflectance 0-1 against integers x 10000, is far inside)
_EXTREME = 1e9


def _scale_sample(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                  min_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, used)``: the float64 values ``(used bands, pixels)`` of a raw ``(bands, h, w)`` sample on the pixels
    finite, free of ``nodata`` and within ``_EXTREME`` of the training magnitude in every band the model reads
    (finite ``mean``: ``used``), and not one value in all of them (a fill: 0, or -32768 in a crop handed over
    without its nodata, read as a scale 56 standard deviations off); None with fewer than 16 such pixels or a
    quarter of the sample (too few to tell a scale from a dark corner), or than ``min_pixels`` where given (a small
    scene sampled whole). A band of non-finite ``mean`` is left out: the model's bad bands, and those the scene's
    ``bbl`` flags bad, which the caller marks so (they may hold nodata in every pixel, as EnMAP's 130-135 do)."""
    used = np.isfinite(mean)
    if not used.any():
        return None
    x = raw[used].reshape(int(used.sum()), -1).astype(np.float64)
    magnitude = np.hypot(mean[used], std[used])[:, None]
    with np.errstate(invalid="ignore"):  # NaN compares False: left out by the finite test
        varies = (x != x[:1]).any(axis=0) if x.shape[0] > 1 else (x != 0)[0]
        ok = np.isfinite(x).all(axis=0) & varies & (np.abs(x) <= _EXTREME * magnitude).all(axis=0)
    if nodata is not None:
        ok &= ~(x == nodata).any(axis=0)
    if ok.sum() < (max(16, ok.size // 4) if min_pixels is None else max(1, min_pixels)):
        return None
    return x[:, ok], used


def scale_ratios(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 min_pixels: int | None = None) -> np.ndarray | None:
    """Per band, the median magnitude of a raw ``(bands, h, w)`` sample over the magnitude the model's
    normalisation implies (``sqrt(mean^2 + std^2)``), on the pixels :func:`_scale_sample` keeps; NaN for the bands
    the model does not read (non-finite ``mean``); None where too few pixels are left. A scene on another scale than
    the training scene (reflectance 0-1 against integers x 10000) reads about 1e-4 in every band. Medians: one
    corrupt pixel (1e30 in every band) made an RMS read the whole scene as 1e25x too large."""
    sample = _scale_sample(raw, mean, std, nodata, min_pixels)
    if sample is None:
        return None
    x, used = sample
    out = np.full(mean.shape, np.nan)
    out[used] = np.median(np.abs(x), axis=1) / np.hypot(mean[used], std[used])
    return out


def scale_distance(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                   factor: float = 1.0, min_pixels: int | None = None) -> float | None:
    """How far a raw ``(bands, h, w)`` sample (times ``factor``) lies from the model's training data: the median,
    over the pixels :func:`_scale_sample` keeps and the bands the model reads, of ``|x - mean| / std``; None where
    too few pixels are left. Real scenes of the training sensor read about 0.3-1.2 (a window of one land cover,
    water included, up to 2.5; a small crop of water against a model trained without any, 4.4); the shipped
    Indian Pines scene x 2 reads 9-11, x 0.5 4.5-5."""
    sample = _scale_sample(raw, mean, std, nodata, min_pixels)
    if sample is None:
        return None
    x, used = sample
    return float(np.median(np.abs(x * factor - mean[used, None]) / std[used, None]))


def scale_factor(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 min_pixels: int | None = None) -> float | None:
    """The factor a raw ``(bands, h, w)`` sample looks scaled by from the training scene: the median, over the bands
    whose training mean is positive, of the sample's median over that mean; None where too few pixels are left or
    no band has a positive mean."""
    sample = _scale_sample(raw, mean, std, nodata, min_pixels)
    if sample is None:
        return None
    x, used = sample
    positive = mean[used] > 0
    if not positive.any():
        return None
    return float(np.median(np.median(x[positive], axis=1) / mean[used][positive]))


def looks_standardised(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                       min_pixels: int | None = None) -> bool:
    """Whether a raw ``(bands, h, w)`` sample looks already standardised (values about mean 0 and std 1: a fifth or
    more of them negative, their median magnitude 0.1-5) where the model's training data are not (its per-band
    means are mostly over 2 standard deviations above 0): a scene z-scored by the user, which the model would
    standardise a second time. Reflectance 0-1 is not negative that often, except near 0 (water's infrared bands),
    where its magnitude is far below 0.1; a window of a z-scored scene has a median magnitude of 0.5-1.2."""
    sample = _scale_sample(raw, mean, std, nodata, min_pixels)
    if sample is None:
        return False
    x, used = sample
    raw_training = np.median(mean[used] / std[used]) > 2  # the model reads raw values: it standardises them itself
    return bool(raw_training and (x < 0).mean() >= 0.2 and 0.1 <= np.median(np.abs(x)) < 5)


def normalise_into_reference(raw: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
                             nodata: float | None, out: np.ndarray,
                             nodata_bands: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Write ``(raw - mean) / std`` (or ``raw`` when ``mean`` is None) into ``out`` (same shape, float32).

    Returns ``(bad, nonfinite)``: ``bad`` (h, w) marks pixels with a non-finite value or, when ``nodata`` is a
    number, a value equal to it among ``nodata_bands`` (band indices; None: every band; a sensor's bad bands,
    filled with nodata or NaN in every pixel, are left out so they do not mask the whole scene); ``nonfinite``
    says whether any of those bands' values was non-finite. ``out`` is written for every pixel, bad ones
    included (the caller zeroes or rejects them); non-finite values of the bands left out, and values equal to
    ``nodata`` there, become 0 (the band's mean), so a pixel is classified whatever its bad bands hold, and the
    same whether they hold the nodata value or NaN (a NaN ``mean`` of such a band reads it as 0 whatever it holds).
    """
    h, w = raw.shape[1:]
    bad = np.zeros((h, w), dtype=bool)
    nonfinite = False
    if raw.dtype.kind == "f":
        finite = np.isfinite(_tested(raw, nodata_bands))
        if not finite.all():
            nonfinite = True
            bad |= ~finite.all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        bad |= (_tested(raw, nodata_bands) == nodata).any(axis=0)
    with np.errstate(over="ignore"):
        if mean is not None:
            out[...] = (raw - mean[:, None, None]) / std[:, None, None]
        else:
            out[...] = raw
    if nodata_bands is not None:
        skipped = ~np.isin(np.arange(raw.shape[0]), nodata_bands)
        if raw.dtype.kind == "f" or mean is not None:
            out[skipped] = np.where(np.isfinite(out[skipped]), out[skipped], 0)
        if nodata is not None and not np.isnan(nodata):
            out[skipped] = np.where(raw[skipped] == nodata, 0, out[skipped])
    return bad, nonfinite


def _tested(raw: np.ndarray, nodata_bands: np.ndarray | None) -> np.ndarray:
    """The bands of ``raw`` the nodata value is looked for in (all of them when ``nodata_bands`` is None)."""
    return raw if nodata_bands is None else raw[nodata_bands]


def normalise_into(raw: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, nodata: float | None,
                   out: np.ndarray, nodata_bands: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Same contract and bits as :func:`normalise_into_reference`, a band at a time.

    The float64 intermediate is one band (half a megabyte for a 262 x 262 tile), reused, so it stays in
    cache; the whole-tile formulation streams two float64 temporaries twice the tile's size through memory.
    The nodata mask is built only when some value is non-finite or a nodata value is set.
    """
    b, h, w = raw.shape
    is_float = raw.dtype.kind == "f"
    tested = np.ones(b, bool) if nodata_bands is None else np.isin(np.arange(b), nodata_bands)
    tmp = np.empty((h, w), np.float64)
    nonfinite = False
    check_nodata = nodata is not None and not np.isnan(nodata)
    for k in range(b):
        band = raw[k]
        with np.errstate(over="ignore"):  # a float64 value beyond float32 becomes inf: the runner names it
            if mean is not None:
                # dtype: numpy 1.x subtracts a float64 scalar in the band's own dtype (float16: 178 of the shipped
                # scene's pixels changed class), whatever ``out`` holds
                np.subtract(band, mean[k], out=tmp, dtype=np.float64)
                np.divide(tmp, std[k], out=tmp, dtype=np.float64)
                out[k] = tmp
            else:
                out[k] = band
        if not tested[k]:
            if is_float or mean is not None:
                np.nan_to_num(out[k], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            if check_nodata:
                out[k][band == nodata] = 0.0
        elif is_float and not nonfinite and not np.isfinite(band).all():
            nonfinite = True
    bad = np.zeros((h, w), dtype=bool)
    if nonfinite:
        bad |= ~np.isfinite(_tested(raw, nodata_bands)).all(axis=0)
    if check_nodata:
        bad |= (_tested(raw, nodata_bands) == nodata).any(axis=0)
    return bad, nonfinite


# numpy kind+size -> torch dtype name the raw window travels in; unsigned 16/32-bit go as their signed twins
# bits (torch's uint16/uint32 support is partial) and are unwrapped on the device, exactly, in float64
_STAGE = {"b1": "uint8", "u1": "uint8", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64", "u2": "int16",
          "u4": "int32", "f2": "float16", "f4": "float32", "f8": "float64"}
_WRAP = {"u2": 16, "u4": 32}


def stage_raw(raw: np.ndarray, *, pin: bool = False, copies: "Executor | None" = None,
              parts: int = 1) -> tuple["torch.Tensor", int]:
    """Copy a raw ``(bands, h, w)`` window into a fresh (optionally pinned) torch tensor for the device;
    with ``copies`` (a thread pool) the copy is split over ``parts`` band ranges copied concurrently.

    Returns ``(tensor, wrap_bits)``: uint16/uint32 travel as int16/int32 bit patterns (``wrap_bits`` 16/32,
    else 0), which :func:`normalise_tensor` maps back exactly. Byte order is made native by the copy;
    uint64 travels as int64 when every value fits, else (values >= 2**63) as float64, which for an
    unnormalised scene rounds twice where numpy rounds once.
    """
    import torch

    key = f"{raw.dtype.kind}{raw.dtype.itemsize}"
    name = _STAGE.get(key)
    if key == "u8":
        name = "int64" if raw.size == 0 or int(raw.max()) < 2**63 else None
    if name is None:
        raw, name = raw.astype(np.float64), "float64"
    buf = torch.empty(raw.shape, dtype=getattr(torch, name), pin_memory=pin)
    view = buf.numpy()
    if key in _WRAP:
        view = view.view(np.dtype(f"u{raw.dtype.itemsize}"))
    parts = max(1, min(int(parts), raw.shape[0])) if copies is not None else 1
    if parts == 1:
        np.copyto(view, raw, casting="unsafe")  # bool -> uint8, big-endian -> native; values unchanged
    else:  # numpy releases the GIL while it copies
        cut = np.linspace(0, raw.shape[0], parts + 1).astype(int)
        for f in [copies.submit(np.copyto, view[a:b], raw[a:b], casting="unsafe") for a, b in zip(cut, cut[1:])]:
            f.result()
    return buf, _WRAP.get(key, 0)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in a 1-D boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(z)) for a, z in zip(edges[::2], edges[1::2])]


def normalise_tensor(raw: "torch.Tensor", mean: "torch.Tensor | None", std: "torch.Tensor | None",
                     nodata: float | None, out: "torch.Tensor", *, wrap_bits: int = 0,
                     chunk_elems: int = 1 << 24, nodata_bands: np.ndarray | None = None,
                     fused: bool | None = None) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """:func:`normalise_into` in torch, on ``raw``'s device, without a host synchronisation.

    ``raw``: a window from :func:`stage_raw`; ``mean``/``std``: float64 tensors on the same device (or None:
    the values are cast); ``out``: float32 view of the same shape. Returns ``(bad, nonfinite)`` as tensors:
    ``bad`` (h, w) bool, ``nonfinite`` a 0-d bool tensor (None for integer input). float64 work goes a few
    bands at a time (``chunk_elems`` values), so its memory is bounded whatever the tile. ``nodata_bands``: as
    :func:`normalise_into`. ``fused``: with mean / std, subtract and divide in two passes (``torch.sub`` makes the
    float64 difference, ``torch.div`` rounds the float64 quotient once into ``out``) instead of four (cast, subtract,
    divide, copy): the same bits, 1.46-1.79x on an H200 and 0.40-0.67x on 2-core CPUs
    (``benchmarks/results/normalise-device-*.md``); None: on CUDA.
    """
    import torch

    b, h, w = raw.shape
    if fused is None:
        fused = raw.device.type == "cuda"
    is_float = raw.dtype.is_floating_point
    bad = torch.zeros((h, w), dtype=torch.bool, device=raw.device)
    nonf = torch.zeros((h, w), dtype=torch.bool, device=raw.device) if is_float else None
    check_nodata = nodata is not None and not np.isnan(nodata)
    tested = np.ones(b, bool) if nodata_bands is None else np.isin(np.arange(b), nodata_bands)
    step = max(1, chunk_elems // max(1, h * w))
    for k0 in range(0, b, step):
        k1 = min(b, k0 + step)
        r = raw[k0:k1]
        runs = _runs(tested[k0:k1])  # the chunk's bands the nodata value is looked for in, as slices: an index
        # tensor would be a blocking host-to-device copy per chunk
        if is_float:
            for a, z in runs:
                nonf |= ~torch.isfinite(r[a:z]).all(0)
                if check_nodata:  # in the raw dtype, as numpy compares a float array with a Python float
                    bad |= (r[a:z] == nodata).any(0)
        d = None
        two_passes = fused and mean is not None and not wrap_bits and not (check_nodata and not is_float)
        if not two_passes and (wrap_bits or mean is not None or (check_nodata and not is_float)):
            d = r.to(torch.float64, copy=True)  # a float64 window is not normalised in place (the caller's)
            if wrap_bits:
                d = torch.where(d < 0, d + float(1 << wrap_bits), d)
            if check_nodata and not is_float:  # integers compare in float64, as numpy does
                for a, z in runs:
                    bad |= (d[a:z] == nodata).any(0)
        skipped = _runs(~tested[k0:k1]) if nodata_bands is not None else []
        # the bad bands' nodata values, compared as the tested bands' are (floats in their dtype, integers in
        # float64), before d is normalised in place
        fills = [(a, z, (r[a:z] if is_float else d[a:z]) == nodata) for a, z in skipped] if check_nodata else []
        if two_passes:  # d was not made: nothing below reads it (no integer nodata, no wrap)
            torch.div(torch.sub(r, mean[k0:k1, None, None]), std[k0:k1, None, None], out=out[k0:k1])
        elif mean is not None:
            d.sub_(mean[k0:k1, None, None]).div_(std[k0:k1, None, None])
            out[k0:k1].copy_(d)  # one rounding to float32, as numpy's assignment
        else:  # one rounding from the raw values (wrapped ones are exact in float64)
            out[k0:k1].copy_(d if wrap_bits else r)
        if is_float or mean is not None:
            for a, z in skipped:
                torch.nan_to_num_(out[k0 + a:k0 + z], nan=0.0, posinf=0.0, neginf=0.0)
        for a, z, fill in fills:
            out[k0 + a:k0 + z].masked_fill_(fill, 0.0)
    if nonf is None:
        return bad, None
    return bad | nonf, nonf.any()


__all__ = ["declared_scaling", "looks_standardised", "normalise_into", "normalise_into_reference", "normalise_tensor",
           "scale_distance", "scale_factor", "scale_ratios", "stage_raw"]


def declared_scaling(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scales, offsets)`` per band that the scene declares and the engine does not apply (GDAL band
    scale/offset, kept in ``encoding`` by ``hsi_engine.open_scene``; rioxarray's ``scale_factor``/``add_offset`` or
    ``scales``/``offsets`` attrs in memory); None when it declares none, or scale 1 and offset 0 in every band:
    GDAL reads a band without them as 1 and 0, so those say nothing (a ``rio merge`` mosaic drops EnMAP's)."""
    n = int(da.sizes["band"])
    found = {}
    for key, one in (("scales", "scale_factor"), ("offsets", "add_offset")):
        v = da.encoding.get(key, da.attrs.get(key, da.attrs.get(one)))
        if v is None:
            continue
        try:
            found[key] = np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (n,)).copy()
        except (TypeError, ValueError):  # not numbers, or not one per band (a band subset keeps the file's list)
            _log.debug("the scene's declared %s (%s) are not one number per band: not compared", key, v)
            return None
    scales, offsets = found.get("scales", np.ones(n)), found.get("offsets", np.zeros(n))
    return None if (scales == 1).all() and (offsets == 0).all() else (scales, offsets)
