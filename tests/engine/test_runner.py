"""The executor's two tile preparations: normalised by reader threads on the host (the CPU default) or
staged raw and normalised on the device (the CUDA default). On CPU the "device" is the CPU, so both run here
and must give the same map, probabilities, nodata handling and errors; the same tests run on CUDA (marked
``gpu``), where the staging is pinned and the flags come back asynchronously."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from hsi_engine.errors import NonFiniteInputError
from hsi_engine.fused import FusedSSRN
from hsi_engine.runner import ArraySink, run_plan
from hsi_engine.tiles import plan_tiles
from ssrn.config import SSRNConfig
from ssrn.model import SSRN

from _models import randomise_bn


class CountingSink(ArraySink):
    """An ArraySink that counts how often each pixel is written (every pixel exactly once)."""

    def __init__(self, height, width, classes, **kw):
        super().__init__(height, width, classes, **kw)
        self.written = np.zeros((height, width), np.uint8)

    def write(self, y0, x0, labels, probabilities=None, confidence=None):
        super().write(y0, x0, labels, probabilities, confidence)
        self.written[y0:y0 + labels.shape[0], x0:x0 + labels.shape[1]] += 1

BANDS, CLASSES = 9, 5
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


def _model(stats: bool = False) -> SSRN:
    """``stats``: the per-band mean / std of :func:`_cube`'s scale in its meta, as a trained model records them (a
    model without them takes a scene as normalised, and the command line refuses one of raw values)."""
    torch.manual_seed(3)
    m = randomise_bn(SSRN(SSRNConfig(bands=BANDS, classes=CLASSES)), seed=3)
    m.head.weight.data *= 300  # random init maps everything to one class; a sharp head gives a varied map
    if stats:
        m.meta = {**(getattr(m, "meta", None) or {}), "mean": [32000.0] * BANDS, "std": [7000.0] * BANDS}
    return m


def _cube(dtype, h=19, w=23, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ends = rng.uniform(20000, 45000, size=(3, BANDS))  # uint16 values above 32767 travel wrapped: cover them
    abundance = rng.dirichlet(np.full(3, 0.3), size=(h, w))  # (h, w, 3): varied spectra, a varied map
    cube = np.einsum("hwk,kb->bhw", abundance, ends) + rng.normal(0, 300, size=(BANDS, h, w))
    return cube.astype(dtype)


def _run(cube, mode, *, nodata=None, tile=8, probabilities=True, device="cpu", nodata_bands=None):
    model = _model()
    a = cube.astype(np.float64)
    a[~np.isfinite(a)] = np.nan  # statistics of the finite values: a NaN or inf mean made every logit NaN
    mean, std = np.nanmean(a, axis=(1, 2)), np.nanstd(a, axis=(1, 2))
    engine = FusedSSRN(model, backend="eager", device=device)
    plan = plan_tiles(cube.shape[1], cube.shape[2], tile, model.config.halo)
    sink = CountingSink(cube.shape[1], cube.shape[2], CLASSES, probabilities=probabilities)
    run_plan(cube, plan, engine, sink, mean=mean, std=std, nodata=nodata, probabilities=probabilities,
             progress=False, normalise_on=mode, nodata_bands=nodata_bands)
    return sink


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_bad_bands_left_out_of_the_mask_on_host_and_device(dtype):
    """nodata_bands: a band filled with nodata everywhere masks nothing once left out; a hole in a good band
    still does; host and device normalisation give the same bits."""
    cube = _cube(np.dtype(dtype))
    cube[1] = 7
    cube[:, 4, 9] = 7
    good = np.array([b for b in range(cube.shape[0]) if b != 1])
    host = _run(cube, "host", nodata=7.0, nodata_bands=good)
    dev = _run(cube, "device", nodata=7.0, nodata_bands=good)
    np.testing.assert_array_equal(dev.labels, host.labels)
    assert np.array_equal(dev.probabilities.view(np.uint32), host.probabilities.view(np.uint32))
    assert set(zip(*np.nonzero(host.labels == 0))) == {(4, 9)}
    assert (_run(cube, "device", nodata=7.0).labels == 0).all()


def test_tiles_of_nodata_only_skip_the_network_and_give_the_same_map(caplog):
    """A swath's nodata collar ran the network like data (the ops tester's 99 %-nodata scene: 1 h 50 min): a tile
    whose every output pixel is nodata is written as class 0 / NaN without calling the engine; the map, the
    probabilities and the tiles that hold data are those of the run that computed everything."""
    import logging

    cube = _cube(np.float32, h=24, w=24)
    cube[:, :, :8] = np.nan  # the first tile column (tile 8) is nodata; tile 2's halo reaches into it
    cube[:, 16:, 8:16] = np.nan
    calls = []

    class Counting(FusedSSRN):
        def __call__(self, x):
            calls.append(tuple(x.shape))
            return super().__call__(x)

    model = _model()
    mean, std = np.nanmean(cube, axis=(1, 2)), np.nanstd(cube, axis=(1, 2))
    plan = plan_tiles(24, 24, 8, model.config.halo)
    sinks = []
    for engine in (Counting(model, backend="eager"), None):
        if engine is None:  # everything computed: the engine without its class count (the skip needs it)
            engine = FusedSSRN(model, backend="eager")
            engine.classes = None
        sink = ArraySink(24, 24, CLASSES, probabilities=True)
        with caplog.at_level(logging.DEBUG, logger="hsi_engine.runner"):
            run_plan(cube, plan, engine, sink, mean=mean, std=std, nodata=float("nan"), probabilities=True,
                     progress=False)
        sinks.append(sink)
    assert len(calls) == 9 - 4  # 3 tiles of the first column, one more below
    np.testing.assert_array_equal(sinks[0].labels, sinks[1].labels)
    np.testing.assert_array_equal(sinks[0].probabilities, sinks[1].probabilities)
    assert (sinks[0].labels[:, :8] == 0).all() and (sinks[0].labels[:16, 8:] > 0).all()
    assert "nodata_tiles 4" in caplog.text  # the run's debug summary counts them


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, ">f4"], ids=str)
def test_device_normalisation_gives_the_host_map_bit_for_bit(dtype, device):
    cube = _cube(np.dtype(dtype))
    host, dev = _run(cube, "host", device=device), _run(cube, "device", device=device)
    np.testing.assert_array_equal(dev.labels, host.labels)
    if device == "cpu":  # the same tiles through the same deterministic engine: the same bits
        assert np.array_equal(dev.probabilities.view(np.uint32), host.probabilities.view(np.uint32))
        assert np.array_equal(dev.confidence.view(np.uint32), host.confidence.view(np.uint32))
    else:  # cuDNN may pick another algorithm between runs; the tiles' bits are checked by the test below
        np.testing.assert_allclose(dev.probabilities, host.probabilities, rtol=0, atol=1e-6)
    assert (host.written == 1).all() and (dev.written == 1).all()
    assert len(np.unique(host.labels)) > 1  # a map that can disagree


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nodata", [float("nan"), 0.0])
def test_device_normalisation_masks_nodata_like_the_host(nodata, device):
    cube = _cube(np.float32, seed=1)
    cube[4, 2, 3] = np.nan
    cube[0, 11, 20] = 0.0
    cube[:, 18, 0] = 0.0  # a corner pixel of an edge tile
    host, dev = _run(cube, "host", nodata=nodata, device=device), _run(cube, "device", nodata=nodata, device=device)
    np.testing.assert_array_equal(dev.labels, host.labels)
    np.testing.assert_array_equal(dev.probabilities, host.probabilities)
    assert host.labels[2, 3] == 0 and np.isnan(host.probabilities[:, 2, 3]).all()
    assert (host.labels[11, 20] == 0) == (nodata == 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_device_normalisation_raises_the_same_nonfinite_error(device):
    cube = _cube(np.float32, seed=2)
    cube[5, 13, 17] = np.inf
    messages = []
    for mode in ("host", "device"):
        with pytest.raises(NonFiniteInputError, match=r"pixel \(y=13, x=17\) is inf") as e:
            _run(cube, mode, device=device)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_unknown_normalise_on_is_refused():
    with pytest.raises(ValueError, match="normalise_on must be 'host' or 'device'"):
        _run(_cube(np.float32), "gpu")


@pytest.mark.parametrize("kw, match", [({"readers": 0}, "readers and queue_depth must be >= 1"),
                                       ({"queue_depth": 0}, "readers and queue_depth must be >= 1"),
                                       ({"cache_blocks": -1}, "cache_blocks must be >= 0")])
def test_bad_reader_settings_are_refused(kw, match):
    from hsi_engine.api import classify

    with pytest.raises(ValueError, match=match):
        classify(_cube(np.float32), _model(), progress=False, **kw)


def test_device_path_stages_tiles_in_plan_order_whatever_order_they_are_read_in():
    """The readers read tiles concurrently, in any order (here the first tile is the slowest to read); one stager
    copies them in plan order, so the tile the compute needs next is never behind later ones for the copy
    threads. The map is the host path's."""
    import threading
    import time

    import hsi_engine.runner as runner

    cube = _cube(np.float32, h=24, w=24, seed=4)
    plan = plan_tiles(24, 24, 8, _model().config.halo)
    read_order, staged_order, lock = [], [], threading.Lock()
    real_reader, real_stage = runner.window_reader, runner.stage_raw

    def slow_first_reader(scene, **kw):
        read = real_reader(scene, **kw)

        def read_window(ry0, ry1, rx0, rx1):
            first = (ry0, rx0) == plan.tiles[0].read[::2]
            time.sleep(0.3 if first else 0.0)
            with lock:
                read_order.append((ry0, rx0))
            return read(ry0, ry1, rx0, rx1)
        return read_window

    def recording_stage(raw, **kw):
        windows = [cube[:, t.read[0]:t.read[1], t.read[2]:t.read[3]] for t in plan.tiles]
        with lock:
            staged_order.append(next(i for i, w in enumerate(windows) if w.shape == raw.shape
                                     and np.array_equal(w, raw)))
        return real_stage(raw, **kw)

    model = _model()
    a = cube.astype(np.float64)
    a[~np.isfinite(a)] = np.nan  # statistics of the finite values: a NaN or inf mean made every logit NaN
    mean, std = np.nanmean(a, axis=(1, 2)), np.nanstd(a, axis=(1, 2))
    engine = FusedSSRN(model, backend="eager", device="cpu")
    sinks = []
    for mode in ("device", "host"):
        sink = ArraySink(24, 24, CLASSES)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "window_reader", slow_first_reader)
            mp.setattr(runner, "stage_raw", recording_stage)
            read_order.clear()
            staged_order.clear()
            run_plan(cube, plan, engine, sink, mean=mean, std=std, progress=False, normalise_on=mode, readers=3)
        sinks.append(sink)
        if mode == "device":
            assert read_order[0] != plan.tiles[0].read[::2], "the slow first read should finish after others"
            assert staged_order == list(range(len(plan.tiles)))
    np.testing.assert_array_equal(sinks[0].labels, sinks[1].labels)


@pytest.mark.timeout(60)
def test_device_path_read_error_reaches_the_caller_and_stops_the_stager():
    """A window that fails to read (tile 2 of 9) raises its error from run_plan; the stager, which waits for
    that read, and the copy threads stop with it (no hang, no later tile written)."""
    import hsi_engine.runner as runner
    from hsi_engine.errors import SceneError

    cube = _cube(np.float32, h=24, w=24, seed=5)
    plan = plan_tiles(24, 24, 8, _model().config.halo)
    real_reader = runner.window_reader
    bad = plan.tiles[2].read

    def failing_reader(scene, **kw):
        read = real_reader(scene, **kw)

        def read_window(*window):
            if tuple(window) == tuple(bad):
                raise SceneError("chunk (0, 0, 1) is corrupt")
            return read(*window)
        return read_window

    a = cube.astype(np.float64)
    engine = FusedSSRN(_model(), backend="eager", device="cpu")
    sink = CountingSink(24, 24, CLASSES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "window_reader", failing_reader)
        with pytest.raises(SceneError, match="corrupt"):
            run_plan(cube, plan, engine, sink, mean=a.mean(axis=(1, 2)), std=a.std(axis=(1, 2)), progress=False,
                     normalise_on="device", readers=3)
    assert sink.written[plan.tiles[2].y0:plan.tiles[2].y1, plan.tiles[2].x0:plan.tiles[2].x1].max() == 0


def test_without_a_terminal_progress_is_a_log_line_not_a_bar(monkeypatch, caplog):
    """A pipeline's log (stderr not a terminal) got no progress at all; it now gets a line every 30 s."""
    import logging
    import sys

    from hsi_engine import runner

    monkeypatch.setattr(sys, "stderr", type("NotATerminal", (), {"isatty": staticmethod(lambda: False),
                                                                 "write": staticmethod(lambda s: len(s)),
                                                                 "flush": staticmethod(lambda: None)})())
    monkeypatch.setattr(runner, "LOG_PROGRESS_EVERY_S", 0.0)
    m = _model()
    plan = plan_tiles(19, 23, 8, m.config.halo)
    sink = ArraySink(19, 23, CLASSES)
    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        run_plan(_cube(np.float32), plan, FusedSSRN(m, backend="eager"), sink)  # progress=None: the default
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("classify: ")
             and "no tile finished" not in r.getMessage()]  # (the timer's lines between tiles, at this interval)
    assert len(lines) == len(plan) - 1, lines  # one per tile but the last (the run's own summary follows it)
    first = plan.tiles[0].pixels
    # a small scene in pixels (it read "0.00 of 0.00 Mpx")
    assert lines[0].startswith(f"classify: {100 * first / (19 * 23):.0f} % ({first} of 437 px)")
    assert "left" in lines[-1]
    caplog.clear()
    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        run_plan(_cube(np.float32), plan, FusedSSRN(m, backend="eager"), sink, progress=False)
    assert not any(r.getMessage().startswith("classify: ") for r in caplog.records)
    import xarray as xr

    scene = xr.DataArray(_cube(np.float32), dims=("band", "y", "x"))
    scene.encoding["source"] = "/data/scene_a.tif"  # a service's concurrent runs: their lines say which run
    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        run_plan(scene, plan, FusedSSRN(m, backend="eager"), sink)
    assert any(r.getMessage().startswith("classify /data/scene_a.tif: ") for r in caplog.records)


class _FakeTime:
    """The runner's ``time`` with a ``perf_counter`` the test moves (the real module's other functions pass
    through). The progress timer still ticks in real time (every 0.05 s here) and reads this clock at each tick:
    :meth:`advance` moves it and returns once the timer has read it twice (the first read sees the new time, the
    second comes after that tick's log line), so a phase takes a tick or two of real time, not its length."""

    def __init__(self) -> None:
        self.now, self.timer_reads = 1000.0, 0
        self.timer: threading.Thread | None = None  # the progress timer's thread: its reads are counted
        self._cv = threading.Condition()

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def perf_counter(self) -> float:
        with self._cv:
            if threading.current_thread() is self.timer:
                self.timer_reads += 1
                self._cv.notify_all()
            return self.now

    def advance(self, seconds: float) -> None:
        with self._cv:
            self.now += seconds
            start = self.timer_reads
            assert self._cv.wait_for(lambda: self.timer_reads >= start + 2, timeout=30), "the timer stopped ticking"


def _logged_progress(monkeypatch, total: int, status=None) -> tuple[object, _FakeTime]:
    """A runner._LoggedProgress logging every 0.2 s of a fake clock, and the clock."""
    from hsi_engine import runner

    clock = _FakeTime()
    monkeypatch.setattr(runner, "time", clock)
    monkeypatch.setattr(runner, "LOG_PROGRESS_EVERY_S", 0.2)
    bar = runner._LoggedProgress(total, status=status)
    clock.timer = bar._timer
    return bar, clock


def test_in_a_jupyter_kernel_progress_is_a_bar(monkeypatch):
    """A notebook's stderr is no terminal, and the log lines reach no handler there: a run showed nothing. In a
    kernel (IPython's shell has one) the default is a bar; tqdm's plain one without ipywidgets, which
    ``tqdm.auto`` had warned about even for ``progress=False``."""
    import sys
    import types

    from tqdm.std import tqdm as plain_bar

    from hsi_engine import runner

    monkeypatch.setattr(sys, "stderr", type("KernelStream", (), {"isatty": staticmethod(lambda: False),
                                                                 "write": staticmethod(lambda s: len(s)),
                                                                 "flush": staticmethod(lambda: None)})())
    def logged(bar) -> bool:  # (closed: its timer thread had gone on logging "no tile finished" into later tests)
        bar.close()
        return isinstance(bar, runner._LoggedProgress)

    assert logged(runner._progress_bar(10, None))  # a pipeline's log, as before
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setattr(runner.importlib.util, "find_spec", lambda name: None)  # no ipywidgets
    bar = runner._progress_bar(10, None)
    try:
        assert type(bar) is plain_bar and bar.total == 10
    finally:
        bar.close()
    assert isinstance(runner._progress_bar(10, False), runner._NoProgress)
    shell.kernel = None  # a terminal IPython: no kernel
    assert logged(runner._progress_bar(10, None))


def test_a_stalled_run_s_log_says_no_tile_finished_and_why(monkeypatch, caplog):
    """The log lines came only when a tile finished: a stalled run (a cluster's paused workers, a hung read) was
    silent. A timer now says no tile finished, with the runner's words on why; the rate leaves start-up out."""
    import logging

    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        bar, clock = _logged_progress(monkeypatch, 4_000_000, status=lambda: "every worker (2) is paused")
        try:
            clock.advance(2.0)  # start-up: nothing finishes
            bar.update(1_000_000)
            clock.advance(0.3)
            bar.update(1_000_000)  # 1 Mpx in 0.3 s after the first tile: 3.3 Mpx/s (not 2 Mpx in 2.3 s, 0.9)
            clock.advance(0.7)  # stalled again
        finally:
            bar.close()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    stalls = [m for lv, m in msgs if "no tile finished" in m]
    assert stalls and all(lv == logging.WARNING for lv, m in msgs if "no tile finished" in m)
    assert stalls[0].startswith("classify: no tile finished in the last ") and "0 % (0 of 4 Mpx) done" in stalls[0]
    assert stalls[0].endswith("; every worker (2) is paused")
    assert any("50 % (2 of 4 Mpx) done" in m for m in stalls)
    rates = [m for lv, m in msgs if "Mpx/s" in m]
    assert rates and float(rates[-1].split(" at ")[1].split(" Mpx/s")[0]) > 1.5, rates
    n = len(caplog.records)
    clock.now += 1.0  # five intervals with no tile: a running timer would say so within a tick
    time.sleep(0.3)  # six ticks
    assert len(caplog.records) == n  # closed: the timer stopped


def test_a_healthy_run_with_slow_tiles_is_not_called_stalled(monkeypatch, caplog):
    """Tiles that take longer than the log interval (a big --tile, bf16 on AVX2, a loaded node) gave WARNING lines
    'no tile finished' in a healthy run, and the first tile's estimate counted the start-up. Now: INFO lines saying
    how long a tile takes here, a WARNING only past three such times, and no estimate from one tile."""
    import logging

    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        bar, clock = _logged_progress(monkeypatch, 4_000_000)
        try:
            clock.advance(0.5)  # start-up and the first tile
            bar.update(1_000_000)
            for _ in range(2):
                clock.advance(0.3)  # each tile 0.6 s: a timer line between tiles
                clock.advance(0.3)
                bar.update(1_000_000)
            for _ in range(3):
                clock.advance(1.0)  # then no tile for five tiles' time: stalled
        finally:
            bar.close()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    healthy = [m for lv, m in msgs if lv == logging.INFO and "no tile finished" in m]
    assert healthy and any("a tile takes about" in m for m in healthy), msgs
    warned = [m for lv, m in msgs if lv == logging.WARNING]
    assert warned and all("75 % (3 of 4 Mpx) done" in m for m in warned), warned  # only once it stalled
    assert not any("left" in m for lv, m in msgs if "25 % (1 of 4 Mpx)" in m and "no tile finished" not in m)


def test_rates_read_in_pixels_per_second_below_a_tenth_of_a_megapixel():
    from hsi_engine.runner import _rate

    assert [_rate(r) for r in (1280.4, 99_999, 3_300_000)] == ["1,280 px/s", "99,999 px/s", "3.3 Mpx/s"]


def test_durations_read_as_people_write_them():
    from hsi_engine.runner import _duration

    assert [_duration(s) for s in (4.4, 75, 3600 * 2 + 61)] == ["4 s", "1 min 15 s", "2 h 01 min"]


def test_a_scene_one_band_off_the_model_is_refused():
    from types import SimpleNamespace
    from hsi_engine.errors import BandMismatchError
    from hsi_engine.runner import check_scene
    wl = 400.0 + 10.0 * np.arange(50)
    cfg = SimpleNamespace(classes=5, bands=50)
    check_scene(cfg, {"wavelengths": wl.tolist()}, bands=50, height=9, width=9, wavelengths=wl + 4.0)  # within 1/2
    with pytest.raises(BandMismatchError, match="wavelengths differ"):  # the scene's bands one band further on
        check_scene(cfg, {"wavelengths": wl.tolist()}, bands=50, height=9, width=9, wavelengths=wl + 10.0)


def test_reversed_bands_are_said_only_where_wavelengths_were_compared():
    """Reversed with NaN in the way: "reversed, they match" was said where no pair had been compared, and "band 0
    is nan nm" named a band without a wavelength."""
    from hsi_engine.errors import BandMismatchError
    from hsi_engine.runner import check_scene
    from ssrn.config import SSRNConfig

    wl = 400.0 + 100.0 * np.arange(8)
    meta = {"wavelengths": wl.tolist()}
    config = SSRNConfig(bands=8, classes=3)
    with pytest.raises(BandMismatchError, match=r"reverse of the model's band order \(band 1 is 1000\.00 nm"):
        check_scene(config, meta, bands=8, height=5, width=5, wavelengths=np.r_[np.nan, wl[::-1][1:]])
    with pytest.raises(BandMismatchError) as e:
        check_scene(config, meta, bands=8, height=5, width=5, wavelengths=np.r_[1900.0, 1990.0, [np.nan] * 6])
    assert "reverse" not in str(e.value)


def test_a_map_too_big_for_memory_says_so_and_names_classify_to_file():
    """A scene-sized probabilities array that could not be allocated was numpy's bare MemoryError."""
    with pytest.raises(MemoryError, match=r"in-memory map of 2000000 x 2000000 pixels with 16 classes' probabilities "
                                          r"needs .* GiB.*classify_to_file .*leave the probabilities out"):
        ArraySink(2_000_000, 2_000_000, 16, probabilities=True)
    sink = ArraySink(2, 3, 4, probabilities=True, probabilities_dtype=np.float16)  # (classify's "float16")
    sink.write(0, 0, np.ones((2, 3), np.uint8), np.full((4, 2, 3), 0.1, np.float32), np.ones((2, 3), np.float32))
    assert sink.probabilities.dtype == np.float16 and sink.probabilities[0, 0, 0] == np.float16(0.1)
