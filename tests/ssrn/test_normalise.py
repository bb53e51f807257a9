"""The per-band tile normalisation against its whole-tile numpy reference: same bits, same nodata mask, every dtype."""

from __future__ import annotations

import numpy as np
import pytest

from ssrn.normalise import normalise_into, normalise_into_reference

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.float16, np.float32, np.float64, bool]


def _raw(dtype, shape=(7, 5, 9), seed=0):
    rng = np.random.default_rng(seed)
    if dtype is bool:
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 300 + 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), size=shape, endpoint=True).astype(dtype)


def _both(raw, mean, std, nodata):
    a = np.full(raw.shape, np.nan, np.float32)
    b = np.full(raw.shape, np.nan, np.float32)
    ra = normalise_into(raw, mean, std, nodata, a)
    rb = normalise_into_reference(raw, mean, std, nodata, b)
    return (a, *ra), (b, *rb)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("scaled", [True, False])
def test_kernel_equals_reference_bit_for_bit(dtype, scaled):
    raw = _raw(dtype)
    rng = np.random.default_rng(1)
    mean = rng.random(7) * 1000 if scaled else None
    std = rng.random(7) * 300 + 1 if scaled else None
    (a, bad_a, nf_a), (b, bad_b, nf_b) = _both(raw, mean, std, None)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))  # same bits, NaN poison fully overwritten
    assert not bad_a.any() and not bad_b.any() and nf_a is nf_b is False


@pytest.mark.parametrize("nodata", [None, float("nan"), -9999.0, 0.0])
def test_nonfinite_and_nodata_mask(nodata):
    raw = _raw(np.float32, seed=2)
    raw[3, 1, 2] = np.nan
    raw[0, 4, 8] = -np.inf
    raw[6, 0, 0] = -9999.0
    raw[2, 2, 2] = 0.0
    mean, std = np.full(7, 1000.0), np.full(7, 300.0)
    (a, bad_a, nf_a), (b, bad_b, nf_b) = _both(raw, mean, std, nodata)
    assert nf_a is nf_b is True
    np.testing.assert_array_equal(bad_a, bad_b)
    expected = {(1, 2), (4, 8)} | ({(0, 0)} if nodata == -9999.0 else set()) | ({(2, 2)} if nodata == 0.0 else set())
    assert set(zip(*np.nonzero(bad_a))) == expected
    good = ~bad_a
    assert np.array_equal(a[:, good], b[:, good])


def test_integer_nodata_and_strided_views():
    """uint16 with a nodata value, read as a strided window and written into the interior of a padded buffer."""
    scene = _raw(np.uint16, shape=(5, 20, 30), seed=3)
    scene[2, 6, 11] = 0
    raw = scene[:, 4:12, 7:19]  # a view, not contiguous
    mean, std = np.arange(5) * 10.0, np.arange(5) + 2.0
    pa = np.zeros((5, 14, 18), np.float32)
    pb = np.zeros((5, 14, 18), np.float32)
    bad_a, _ = normalise_into(raw, mean, std, 0.0, pa[:, 3:11, 3:15])
    bad_b, _ = normalise_into_reference(raw, mean, std, 0.0, pb[:, 3:11, 3:15])
    np.testing.assert_array_equal(pa, pb)  # the padding ring untouched, the interior identical
    np.testing.assert_array_equal(bad_a, bad_b)
    assert bad_a[2, 4]


def test_prepare_tile_fills_an_uninitialised_buffer():
    """Buffers come from torch.empty: every tile (border ones too) must come out as from a zeroed buffer."""
    from hsi_engine.runner import prepare_tile
    from hsi_engine.tiles import plan_tiles

    scene = _raw(np.uint16, shape=(4, 11, 13), seed=4)
    mean, std = np.full(4, 100.0), np.full(4, 50.0)
    plan = plan_tiles(11, 13, 5, 3)
    for t in plan:
        ry0, ry1, rx0, rx1 = t.read
        shape = (4, t.shape[0] + 6, t.shape[1] + 6)
        clean, dirty = np.zeros(shape, np.float32), np.full(shape, np.nan, np.float32)
        prepare_tile(scene[:, ry0:ry1, rx0:rx1], t, mean=mean, std=std, nodata=None, out=clean)
        prepare_tile(scene[:, ry0:ry1, rx0:rx1], t, mean=mean, std=std, nodata=None, out=dirty)
        np.testing.assert_array_equal(dirty, clean)
    assert len(plan.tiles) > 4


# ----------------------------------------------------------------------------------------------
# the device-side form (raw window staged in its own dtype, normalised by torch): same bits again


def _tensor_form(raw, mean, std, nodata, chunk_elems=1 << 24, nodata_bands=None):
    """normalise_tensor's result, after checking that its two-pass form (CUDA's) gives the four-pass form's bits."""
    import torch

    from ssrn.normalise import normalise_tensor, stage_raw

    staged, wrap = stage_raw(raw)
    m = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    s = None if std is None else torch.as_tensor(std, dtype=torch.float64)
    forms = []
    for fused in (False, True):
        out = torch.full(raw.shape, float("nan"), dtype=torch.float32)
        bad, nf = normalise_tensor(staged, m, s, nodata, out, wrap_bits=wrap, chunk_elems=chunk_elems,
                                   nodata_bands=nodata_bands, fused=fused)
        forms.append((out.numpy(), bad.numpy(), (None if nf is None else bool(nf))))
    (four, bad4, nf4), (two, bad2, nf2) = forms
    assert four.view(np.uint32).tobytes() == two.view(np.uint32).tobytes()
    assert np.array_equal(bad4, bad2) and nf4 is nf2
    return forms[0]


@pytest.mark.parametrize("dtype", DTYPES + [">i2", ">u2", ">f4"],
                         ids=lambda d: np.dtype(d).str if isinstance(d, str) else np.dtype(d).name)
@pytest.mark.parametrize("parts", [2, 3, 7, 20])
def test_stage_raw_split_over_copy_threads_gives_the_same_bytes(dtype, parts):
    """The window copied in band ranges on a thread pool (3 / 7 / 20 parts of 7 bands: uneven, one band each,
    more parts than bands) equals the one-thread copy: same dtype, same wrap, same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from ssrn.normalise import stage_raw

    raw = _raw(np.dtype(dtype).newbyteorder("=") if isinstance(dtype, str) else dtype, seed=3)
    raw = raw.astype(dtype) if isinstance(dtype, str) else raw
    raw = raw[:, 1:, ::2]  # a strided window, as a scene slice is
    one, wrap1 = stage_raw(raw)
    with ThreadPoolExecutor(4) as pool:
        split, wrap2 = stage_raw(raw, copies=pool, parts=parts)
    assert wrap1 == wrap2 and one.dtype == split.dtype and one.shape == split.shape == raw.shape
    assert one.numpy().tobytes() == split.numpy().tobytes()


@pytest.mark.parametrize("dtype", DTYPES + [">i2", ">u2", ">f4", np.uint64, np.int8],
                         ids=lambda d: np.dtype(d).str if isinstance(d, str) else np.dtype(d).name)
@pytest.mark.parametrize("scaled", [True, False])
def test_tensor_form_equals_reference_bit_for_bit(dtype, scaled):
    if isinstance(dtype, str):
        raw = _raw(np.dtype(dtype).newbyteorder("="), seed=5).astype(dtype)
    else:
        raw = _raw(dtype, seed=5)
    if raw.dtype.kind == "u" and raw.dtype.itemsize in (2, 4):  # the values whose sign bit is set travel wrapped
        raw.reshape(-1)[::3] = np.iinfo(raw.dtype).max - np.arange(raw.size)[::3].astype(raw.dtype)
    rng = np.random.default_rng(1)
    mean = rng.random(7) * 1000 if scaled else None
    std = rng.random(7) * 300 + 1 if scaled else None
    ref = np.full(raw.shape, np.nan, np.float32)
    bad_r, nf_r = normalise_into_reference(raw, mean, std, None, ref)
    for chunk in (1 << 24, 45):  # the whole window at once, and one band at a time
        out, bad, nf = _tensor_form(raw, mean, std, None, chunk)
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(bad, bad_r)
        assert not nf  # None for integer windows, False for float ones


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("nodata", [None, 3.0])
def test_tensor_form_rounds_64_bit_integers_once(dtype, nodata):
    """Values past 2**53 are not exact in float64: an unnormalised scene must round once, to float32, as numpy."""
    raw = np.array([2**60 + 2**36 + 1, 3, 2**62 - 1, 2**53 + 1], dtype=dtype).reshape(2, 1, 2)
    ref = np.zeros(raw.shape, np.float32)
    bad_r, _ = normalise_into_reference(raw, None, None, nodata, ref)
    out, bad, _ = _tensor_form(raw, None, None, nodata)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(bad, bad_r)
    assert bad[0, 1] == (nodata == 3.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16, np.int32])
@pytest.mark.parametrize("nodata", [None, float("nan"), -9999.0, 0.0, 40000.0])
def test_tensor_form_nonfinite_and_nodata_mask(dtype, nodata):
    raw = _raw(np.float32, seed=2)
    raw[6, 0, 0] = -9999.0
    raw[2, 2, 2] = 0.0
    raw[5, 3, 3] = 40000.0
    if np.dtype(dtype).kind == "f":
        raw[3, 1, 2] = np.nan
        raw[0, 4, 8] = -np.inf
    elif dtype is np.uint16:
        raw[6, 0, 0] = 1
    raw = raw.astype(dtype)
    mean, std = np.full(7, 1000.0), np.full(7, 300.0)
    ref = np.zeros(raw.shape, np.float32)
    bad_r, nf_r = normalise_into_reference(raw, mean, std, nodata, ref)
    out, bad, nf = _tensor_form(raw, mean, std, nodata, chunk_elems=90)
    np.testing.assert_array_equal(bad, bad_r)
    assert (nf if nf is not None else False) is nf_r
    good = ~bad_r
    assert np.array_equal(out[:, good].view(np.uint32), ref[:, good].view(np.uint32))
    if np.dtype(dtype).kind == "f":
        assert bad_r[1, 2] and bad_r[4, 8]


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
@pytest.mark.parametrize("chunk_elems", [45, 1 << 24])  # one band per chunk (some chunks test none), all at once
def test_bad_bands_filled_with_nodata_do_not_mask_every_pixel(dtype, chunk_elems):
    """EnMAP L2A fills its bad bands (bbl = 0) with nodata in every pixel: with those bands left out of the test
    only the pixels that are nodata in a good band are masked, in all three forms; with every band tested, all."""
    raw = _raw(np.float32, seed=4)
    raw[[1, 4]] = -32768.0  # two bad bands, nodata everywhere
    raw[5, 2, 3] = -32768.0  # a real hole in a good band
    raw = raw.astype(dtype)
    mean, std = np.full(7, 1000.0), np.full(7, 300.0)
    good = np.array([0, 2, 3, 5, 6])
    outs = [np.zeros(raw.shape, np.float32) for _ in range(2)]
    bad_k, _ = normalise_into(raw, mean, std, -32768.0, outs[0], good)
    bad_r, _ = normalise_into_reference(raw, mean, std, -32768.0, outs[1], good)
    out_t, bad_t, _ = _tensor_form(raw, mean, std, -32768.0, chunk_elems=chunk_elems, nodata_bands=good)
    for bad in (bad_k, bad_r, bad_t):
        assert set(zip(*np.nonzero(bad))) == {(2, 3)}
    assert np.array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))
    assert np.array_equal(out_t.view(np.uint32), outs[1].view(np.uint32))
    every, _ = normalise_into(raw, mean, std, -32768.0, outs[0])
    assert every.all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nodata", [None, float("nan")])
@pytest.mark.parametrize("chunk_elems", [45, 1 << 24])
def test_bad_bands_filled_with_nan_neither_mask_nor_poison_pixels(dtype, nodata, chunk_elems):
    """A scene masked to NaN (``s.where(s != nodata)``) has NaN in every pixel of its bad bands: those values
    become 0 (the band's mean) and count neither as nodata nor as non-finite input; NaN in a good band still
    does, in all three forms."""
    raw = _raw(np.float32, seed=5)
    raw[1] = np.nan
    raw[4, ::2] = np.inf
    raw = raw.astype(dtype)
    mean, std = np.full(7, 1000.0), np.full(7, 300.0)
    good = np.array([0, 2, 3, 5, 6])
    outs = [np.full(raw.shape, 7.0, np.float32) for _ in range(2)]
    forms = [normalise_into(raw, mean, std, nodata, outs[0], good),
             normalise_into_reference(raw, mean, std, nodata, outs[1], good)]
    out_t, bad_t, nf_t = _tensor_form(raw, mean, std, nodata, chunk_elems=chunk_elems, nodata_bands=good)
    for bad, nonfinite in forms + [(bad_t, nf_t)]:
        assert not bad.any() and not nonfinite
    for out in outs + [out_t]:
        assert np.isfinite(out).all() and (out[1] == 0).all() and (out[4, ::2] == 0).all()
        assert np.array_equal(out.view(np.uint32), outs[1].view(np.uint32))
    raw[5, 2, 3] = np.nan  # a hole in a good band
    for bad, nonfinite in (normalise_into(raw, mean, std, nodata, outs[0], good),
                           normalise_into_reference(raw, mean, std, nodata, outs[1], good),
                           _tensor_form(raw, mean, std, nodata, chunk_elems=chunk_elems, nodata_bands=good)[1:]):
        assert nonfinite and set(zip(*np.nonzero(bad))) == {(2, 3)}


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint16])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("chunk_elems", [45, 1 << 24])
def test_nodata_in_bad_bands_reads_as_nan_there_does(dtype, scaled, chunk_elems):
    """A bad band (bbl = 0) holding the nodata value reaches the network as the band's mean (0), as NaN there
    does: the same scene raw and masked with ``s.where(s != nodata)`` gave different maps (2,331 against 237
    of 4,800 pixels changed on a Berlin crop whose header flagged five bands bad); other values of the band,
    and the nodata value in a good band, are as before. All three forms, the same bits."""
    raw = np.abs(_raw(np.float32, seed=6)) * 10 + 5
    raw[1] = -99.0 if np.dtype(dtype).kind != "u" else 0.0
    raw[4, ::2] = raw[1, 0, 0]
    raw = raw.astype(dtype)
    nodata = float(raw[1, 0, 0])
    mean, std = (np.full(7, 100.0), np.full(7, 30.0)) if scaled else (None, None)
    good = np.array([0, 2, 3, 5, 6])
    outs = [np.full(raw.shape, 7.0, np.float32) for _ in range(2)]
    bad_k, _ = normalise_into(raw, mean, std, nodata, outs[0], good)
    bad_r, _ = normalise_into_reference(raw, mean, std, nodata, outs[1], good)
    out_t, bad_t, _ = _tensor_form(raw, mean, std, nodata, chunk_elems=chunk_elems, nodata_bands=good)
    for bad in (bad_k, bad_r, bad_t):
        assert not bad.any()
    for out in outs + [out_t]:
        assert (out[1] == 0).all() and (out[4, ::2] == 0).all() and (out[4, 1::2] != 0).all()
        assert np.array_equal(out.view(np.uint32), outs[1].view(np.uint32))
    if np.dtype(dtype).kind == "f":
        nan = np.where(raw == nodata, np.nan, raw).astype(dtype)
        masked = np.full(raw.shape, 7.0, np.float32)
        normalise_into(nan, mean, std, None, masked, good)
        assert np.array_equal(masked.view(np.uint32), outs[1].view(np.uint32))


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, ">f4", np.uint32, np.float16])
@pytest.mark.parametrize("nodata", [None, 0.0, float("nan")])
def test_tensor_form_on_cuda_equals_reference_bit_for_bit(dtype, nodata):
    """The engine's CUDA path: staged in pinned memory, normalised in float64 on the GPU, the same bits."""
    import torch

    from ssrn.normalise import normalise_tensor, stage_raw

    raw = _raw(np.dtype(dtype).newbyteorder("=") if isinstance(dtype, str) else dtype, shape=(37, 61, 53), seed=9)
    raw = raw.astype(dtype)
    if raw.dtype.kind == "f":
        raw[3, 4, 5] = np.nan
    raw[1, 2, 3] = 0
    rng = np.random.default_rng(1)
    mean, std = rng.random(37) * 1000, rng.random(37) * 300 + 1
    ref = np.zeros(raw.shape, np.float32)
    bad_r, nf_r = normalise_into_reference(raw, mean, std, nodata, ref)
    staged, wrap = stage_raw(raw, pin=True)
    out = torch.full(raw.shape, float("nan"), dtype=torch.float32, device="cuda")
    f64 = dict(dtype=torch.float64, device="cuda")
    bad, nf = normalise_tensor(staged.to("cuda", non_blocking=True), torch.as_tensor(mean, **f64),
                               torch.as_tensor(std, **f64), nodata, out, wrap_bits=wrap, chunk_elems=61 * 53 * 5)
    good = ~bad_r
    assert np.array_equal(out.cpu().numpy()[:, good].view(np.uint32), ref[:, good].view(np.uint32))
    np.testing.assert_array_equal(bad.cpu().numpy(), bad_r)
    assert (bool(nf) if nf is not None else False) is nf_r


def test_the_scale_sample_leaves_out_zero_fill_and_sits_at_the_centre():
    """A rotated swath's collar of 0 (no nodata declared) read as data 'about 32x smaller' (exit 2 on the command
    line); the sample came from the corner of the centre's chunk, where the collar lies, not from the centre."""
    import dask.array as dsa
    import xarray as xr

    from hsi_engine.scene_checks import _sample_window
    from ssrn.normalise import scale_ratios

    mean, std = np.full(4, 1000.0), np.full(4, 100.0)
    spectrum = np.array([999.0, 1000.0, 1001.0, 1000.0])[:, None]  # (a pixel of one value in every band is a fill)
    raw = np.zeros((4, 32, 32))
    raw[:, 0, 0] = spectrum[:, 0]  # one real pixel in a fill
    assert scale_ratios(raw, mean, std, None) is None
    raw[:, :, 8:] = spectrum[:, :, None]
    np.testing.assert_allclose(scale_ratios(raw, mean, std, None), spectrum[:, 0] / np.hypot(1000, 100))
    raw[:, :, 8:12] = -32768.0  # a fill of another value (a crop handed over without its nodata) is left out too
    np.testing.assert_allclose(scale_ratios(raw, mean, std, None), spectrum[:, 0] / np.hypot(1000, 100))
    da = xr.DataArray(dsa.zeros((4, 40, 700), chunks=(4, 40, 512)), dims=("band", "y", "x"))
    assert _sample_window(da) == {"y": slice(4, 36), "x": slice(334, 366)}
    da = xr.DataArray(dsa.zeros((4, 40, 530), chunks=(4, 40, 256)), dims=("band", "y", "x"))
    assert _sample_window(da)["x"] == slice(256, 288)  # the centre (265) is in chunk [256, 512): kept inside it
