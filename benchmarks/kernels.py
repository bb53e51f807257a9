"""Spectral-stage kernel benchmark: seed Conv3d vs eager reference vs torch.compile vs the fused Triton kernel.

One run, one device. Times, on the same folded program (Indian Pines shape by default: 200 bands,
stem 24 k7 s2 -> 97 positions, two residual blocks of 24 k7 convs, full-band reduce to 128):

- ``seed-conv3d``: the seed's formulation, :func:`kernels.spectral.spectral_stage_conv3d` (Conv3d layers
  over ``(P, C, bands, 1, 1)``, cuDNN on CUDA, where it is the engine's eager path), same folded weights;
- ``eager``: :func:`kernels.spectral.spectral_stage_reference` (conv2d, channels-last);
- ``compile``: ``torch.compile`` of the reference (as :mod:`kernels.dispatch` builds it);
- ``gluon``: :func:`kernels.spectral_gluon.spectral_stage_gluon` (Hopper, bf16 / fp16 only), and the
  ``triton`` backend as the engine calls it (:func:`kernels.dispatch.get_spectral_stage`: Gluon where it applies);
- ``triton``: :func:`kernels.spectral.spectral_stage_triton` (CUDA only), autotuned, and then every config
  the autotuner chooses among pinned (block shape and the KCAT / UNROLL / SCATTER variants) in bfloat16,
  and those the exact float32 path tunes over; in float32 also with TF32 and with split products on tensor
  cores (``input_precision`` tf32x3 / bf16x3 / bf16x6, ~fp32 accuracy); the trial configs (CHAINS, PIPE,
  one-warp programs) pinned in bfloat16, in every mode;

per layer (stem, one block conv, reduce) and for the whole stage, in float32 and bfloat16 (CUDA),
float32 (CPU), with achieved TFLOP/s. FLOPs = ``program.flops_per_pixel() * pixels`` (2 x multiply-adds
of every conv; the padded / masked work a kernel may do is not counted). The device's bf16 (and fp32)
matmul peak and its copy bandwidth are measured in the same run; the engine end to end
(``classify``'s job and runner on a 200-band scene in memory and streamed from a zarr store) is reported
in Mpix/s, and the engine's per-pixel spatial stage is timed on as many windows as the stage has pixels.

Timing: ``triton.testing.do_bench`` on CUDA (median, 20th / 80th percentiles); on CPU the median of
repeated wall-clock runs after a warm-up.

    python benchmarks/kernels.py                   # CUDA when present, else CPU; writes results/kernels-<device>.md
    python benchmarks/kernels.py --device cpu --pixels 4096
    python benchmarks/kernels.py --quick           # whole-stage, spatial and default engine rows, compile last
    python benchmarks/kernels.py --quick --no-compile --zarr-side 2048   # what a 15-minute GPU session fits
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import logging
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (bench_device, cpu_isa, cpu_name, gpu_label, positive_int, results_out,  # noqa: E402
                                timed_run)
from kernels.dispatch import get_spectral_stage  # noqa: E402
from kernels.program import SpectralProgram  # noqa: E402
from kernels.spectral import (_conv3d, _random_program, spectral_stage_conv3d, spectral_stage_reference,  # noqa: E402
                              triton_kernel_report)

PENDING_GPU = "pending: needs a CUDA device"


# --- timers ---------------------------------------------------------------------------------------------------

def make_timer(device: torch.device, cpu_reps: int) -> Callable[[Callable[[], object]], tuple[float, float, float]]:
    """Returns ms (median, p20, p80)."""
    if device.type == "cuda":
        import triton.testing

        def bench(fn):
            med, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=50, rep=300)
            return med, lo, hi
        return bench

    def bench_cpu(fn):
        fn()
        ts = []
        for _ in range(cpu_reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]  # noqa: E731
        return statistics.median(ts), q(0.2), q(0.8)
    return bench_cpu


def measure_peaks(device: torch.device, bench, dtypes: list[torch.dtype], n: int | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    n = n or (8192 if device.type == "cuda" else 1024)
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = bench(lambda: a @ b)[0]
        out[f"matmul {str(dtype).removeprefix('torch.')} TFLOP/s ({n}^3)"] = 2 * n**3 / (ms * 1e-3) / 1e12
    m = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.empty(m, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))[0]
    out[f"copy GB/s (read+write, {4 * m >> 20} MiB)"] = 2 * 4 * m / (ms * 1e-3) / 1e9
    return out


# --- per-layer pieces ---------------------------------------------------------------------------------------

def layer_cases(program: SpectralProgram, p: int, device: torch.device, dtype: torch.dtype):
    """(layer, flops, seed-conv3d fn, eager fn) for stem, one block conv, reduce."""
    d, w = program.reduced_bands, program.width
    g = torch.Generator().manual_seed(1)
    x = torch.randn(p, program.bands, generator=g).to(device, dtype)
    h = torch.randn(p, w, d, generator=g).to(device, dtype)
    h3 = h[..., None, None].contiguous()  # (P, W, D, 1, 1)
    h2 = h.permute(1, 2, 0).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # (1, W, D, P)
    x2 = x.t().reshape(1, 1, program.bands, p).contiguous(memory_format=torch.channels_last)
    conv = program.blocks[0].conv1 if program.blocks else None

    def c2(y, c):  # with the layer's ReLU, as _conv3d applies it (until 2026-11-28 the Conv3d side alone had it)
        out = F.conv2d(y, c.weight.unsqueeze(-1), c.bias, stride=(c.stride, 1), padding=(c.padding, 0))
        return F.relu(out) if c.relu else out

    cases = [("stem (1->24, k7, s2)", 2 * program.stem.weight.numel() * d * p,
              lambda: _conv3d(x[:, None, :, None, None], program.stem), lambda: c2(x2, program.stem))]
    if conv is not None:
        cases.append(("block conv (24->24, k7, same)", 2 * conv.weight.numel() * d * p,
                      lambda: _conv3d(h3, conv), lambda: c2(h2, conv)))
    cases.append((f"reduce (24x{d} -> {program.out_features})", 2 * program.reduce.weight.numel() * p,
                  lambda: _conv3d(h3, program.reduce), lambda: c2(h2, program.reduce)))
    return cases


def spatial_cases(device: torch.device, n: int, float32: bool = True):
    """(label, flops, fn) for the engine's per-pixel spatial stage (``spatial_windows``) on ``n`` windows of a
    random-init Indian Pines SSRN: float32 exact (what the float32 engine runs), float32 with TF32 allowed
    (cuDNN's default: what a bfloat16 engine ran through session 4, its low precision covering the spectral stage
    only), the dense (Toeplitz GEMM) form with TF32 matmuls (what it runs now on CUDA for 5x5 windows), and
    the convs under bfloat16 autocast (for comparison) and the dense form in bfloat16 / float16 with its
    matrices cast once (what a low-precision engine runs with ``spatial_precision`` set to its precision).
    ``float32=False`` (--bf16-only) leaves out the float32 engine's rows."""
    from hsi_engine.fused import dense_spatial, exact_fp32, fold_spatial, spatial_dense, spatial_windows, tf32_matmul

    model = _engine_model()
    sp = fold_spatial(model).to(device)
    win = model.config.patch - 2
    x = torch.randn(n, sp.blocks[0].w1.shape[1], win, win, generator=torch.Generator().manual_seed(3)).to(device)
    per_window = sum(b.w1.numel() + b.w2.numel() + (b.shortcut[0].numel() if b.shortcut is not None else 0)
                     for b in sp.blocks) * win * win * 2 + 2 * sp.head_w.numel()

    def exact():
        with exact_fp32():
            return spatial_windows(x, sp)

    def tf32():
        # cudnn.flags' other arguments default to cuDNN *off*: name them (the first H200 run timed the fallback)
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=True):
            return spatial_windows(x, sp)

    def bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return spatial_windows(x, sp)

    ds = dense_spatial(sp, win)

    def dense_tf32():
        with tf32_matmul():
            return spatial_dense(x, ds)

    def dense_exact():
        with exact_fp32():
            return spatial_dense(x, ds)

    def dense_low(dtype: torch.dtype):
        low = ds.to(dtype=dtype)  # as the engine runs it: the matrices cast once, the windows per call

        def run():
            return spatial_dense(x.to(dtype), low).float()
        return run

    cases = ([("float32 exact (TF32 off)", exact), ("dense (Toeplitz GEMMs), float32 exact", dense_exact)]
             if float32 else [])
    if device.type == "cuda":
        cases.append(("float32 convs, TF32 allowed (the bf16 engine's spatial stage before)", tf32))
        cases.append(("dense (Toeplitz GEMMs), TF32 (the bf16 engine's spatial stage on CUDA)", dense_tf32))
    cases.append(("convs, bfloat16 autocast (not used by the engine)", bf16))
    cases.append(("dense (Toeplitz GEMMs), bfloat16 (spatial_precision=bfloat16)", dense_low(torch.bfloat16)))
    if device.type == "cuda":
        cases.append(("dense (Toeplitz GEMMs), float16 (spatial_precision=float16)",
                      dense_low(torch.float16)))
    return [(label, per_window * n, fn) for label, fn in cases]


def _engine_model():
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    return SSRN(SSRNConfig.from_name("indian_pines")).eval()


def _time_run(scene, model, reps: int, *, device: str, backend: str, precision: str, readers: int | None,
              normalise_on: str | None, max_pixels: int | None, spatial: str = "auto",
              spatial_precision: str = "auto", fp32_products: str = "ieee",
              decoders: int | None = None) -> tuple[float, dict]:
    """Median seconds of the engine's whole run (hsi_engine.api's job + runner.run_plan) over ``reps`` runs,
    and the last run's counters. The engine is built once, as ``classify`` builds it, then reused."""
    from hsi_engine.api import _Job
    from hsi_engine.fused import FusedSSRN

    job = _Job(scene, model, tile=None, device=device, backend=backend, precision=precision, nodata=None)
    engine = FusedSSRN(job.model, backend=backend, device=job.device, precision=precision, max_pixels=max_pixels,
                       spatial=spatial, spatial_precision=spatial_precision, fp32_products=fp32_products)
    ts, stats = [], {}
    for _ in range(reps):
        t, stats = timed_run(job, engine, readers=readers, normalise_on=normalise_on, decoders=decoders)
        ts.append(t)
    return statistics.median(ts), stats


@functools.lru_cache(maxsize=2)
def _random_scene(side: int, scene_dtype: str):
    """The engine rows' ``200 x side x side`` scene, made once per run (a 2048-pixel float32 one is 3.4 GB and
    took seconds to draw for every row); the rows only read it."""
    g = torch.Generator().manual_seed(5)
    if scene_dtype == "uint16":
        return (torch.rand(200, side, side, generator=g) * 12000).to(torch.int32).numpy().astype("uint16")
    return torch.randn(200, side, side, generator=g).numpy()


@contextlib.contextmanager
def _gluon_default_step(step: str):
    """The triton backend with ``step`` as the Gluon kernel's default form, its per-shape checks redone, for the
    duration of the block."""
    from kernels import dispatch, spectral_gluon

    saved = spectral_gluon.DEFAULT_STEP, dict(dispatch._GLUON_CHECKED), dict(dispatch._GLUON_FORM)
    spectral_gluon.DEFAULT_STEP = step
    dispatch._GLUON_CHECKED.clear()
    dispatch._GLUON_FORM.clear()
    try:
        yield
    finally:
        spectral_gluon.DEFAULT_STEP = saved[0]
        dispatch._GLUON_CHECKED.clear()
        dispatch._GLUON_CHECKED.update(saved[1])
        dispatch._GLUON_FORM.clear()
        dispatch._GLUON_FORM.update(saved[2])


def engine_mpix(device: torch.device, backend: str, side: int, bench_cpu_reps: int, *,
                precision: str = "float32", zarr_dir: Path | None = None, readers: int | None = None,
                normalise_on: str | None = None, max_pixels: int | None = None,
                scene_dtype: str = "float32", spatial: str = "auto", spatial_precision: str = "auto",
                fp32_products: str = "ieee", decoders: int | None = None,
                reuse_malloc: bool = False, gluon_step: str | None = None) -> tuple[str, float | None]:
    """Engine end to end on a random ``200 x side x side`` scene: in memory, or streamed from a zarr store.

    ``normalise_on`` / ``max_pixels`` / ``decoders`` left at None are the engine's defaults; set, they reproduce
    an older default beside the new one in the same run. ``reuse_malloc`` applies
    :func:`hsi_engine.reuse_large_buffers` (as ``hsi-engine classify`` does) first: process-wide and for good,
    so such a row comes after every other. ``gluon_step`` runs the triton backend with that Gluon form as its
    default (``kernels.spectral_gluon.DEFAULT_STEP``) for this row only.
    """
    try:
        from hsi_engine.api import open_scene
    except ImportError as e:
        return f"pending: hsi_engine.api not importable ({e})", None
    model = _engine_model()
    scene = _random_scene(side, scene_dtype)
    if scene_dtype == "uint16":  # 16-bit sensor counts; the model's mean/std make them O(1)
        model.meta = {"mean": [6000.0] * 200, "std": [3464.0] * 200}
    kw = dict(device=str(device), backend=backend, precision=precision, readers=readers,
              normalise_on=normalise_on, max_pixels=max_pixels, spatial=spatial,
              spatial_precision=spatial_precision, fp32_products=fp32_products, decoders=decoders)
    if reuse_malloc:
        from hsi_engine.allocator import reuse_large_buffers

        reused = reuse_large_buffers()
    if gluon_step is not None:
        with _gluon_default_step(gluon_step):
            desc, mpix = engine_mpix(device, backend, side, bench_cpu_reps, precision=precision, zarr_dir=zarr_dir,
                                     readers=readers, normalise_on=normalise_on, max_pixels=max_pixels,
                                     scene_dtype=scene_dtype, spatial=spatial, spatial_precision=spatial_precision,
                                     fp32_products=fp32_products, decoders=decoders, reuse_malloc=reuse_malloc)
        return desc.replace(" (last run", f", Gluon step={gluon_step!r} (last run", 1), mpix
    # warm-up (compile / autotune / allocator); on CUDA a whole run: a run's first engine row measured 1.3-1.44x
    # slower than the same row later in the run, over all three of its timed runs (kernels-h200.md, runs 8, 10)
    _time_run(scene if device.type == "cuda" and zarr_dir is None else scene[:, :64, :64], model, 1, **kw)
    reps = 3 if device.type == "cuda" else max(1, bench_cpu_reps // 5)
    where = "in memory"
    if zarr_dir is not None:
        import xarray as xr

        path = zarr_dir / f"scene{side}-{scene_dtype}.zarr"
        if not path.exists():
            xr.DataArray(scene, dims=("band", "y", "x"), name="reflectance").chunk(
                {"band": -1, "y": 256, "x": 256}).to_zarr(path)
        scene = open_scene(path)
        where = "streamed from zarr (256x256 chunks, all bands, default codec, block cache)"
        reps = 2
    t, stats = _time_run(scene, model, reps, **kw)
    opts = ["default readers" if readers is None else f"readers={readers}"]
    if normalise_on is not None:
        opts.append(f"normalised on the {normalise_on}")
    if max_pixels is not None:
        opts.append(f"max_pixels={max_pixels}")
    if spatial != "auto":
        opts.append(f"spatial={spatial}")
    if spatial_precision != "auto":
        opts.append(f"spatial_precision={spatial_precision}")
    if fp32_products != "ieee":
        opts.append(f"fp32_products={fp32_products}")
    if reuse_malloc:
        opts.append("malloc " + ("reusing large buffers (as the CLI runs)" if reused
                                 else "as it comes (reuse_large_buffers() not applicable here)"))
    if decoders is not None:
        opts.append(f"decoders={decoders}" + (" (each reader decodes its window's blocks one by one)"
                                              if decoders == 0 else ""))
    elif zarr_dir is not None:
        opts.append(f"default decoders ({stats.get('decoders', 0)})")
    busy = ", ".join(f"{k} {stats[k]:.2f}" for k in ("read_s", "prepare_s", "compute_s", "write_s") if k in stats)
    return (f"{side}x{side}x200 {scene_dtype} scene {where}, backend={backend}, {precision}, {', '.join(opts)}, "
            f"median of {reps} (last run, s summed over threads: {busy}; wall {stats.get('wall_s', 0):.2f})",
            side * side / t / 1e6)


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping ``(start, end)`` spans merged, in order."""
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def timeline(begin: float, end: float, kernels: list[tuple[float, float]], copies: list[tuple[float, float]],
             gap: float = 1000.0) -> dict:
    """When the GPU worked during a run from ``begin`` to ``end`` (microseconds, one clock): the spans its kernels
    and its copies ran, merged. Returns ms: kernels busy, copies busy, idle before the first kernel and after the
    last, the gaps between kernels longer than ``gap`` us (count, sum), and those gaps' share that a copy covered.
    Where the wall exceeds the kernels' time, this says whether the GPU waited at the start, at the end or
    between tiles, and whether it waited on a copy."""
    k, c = _union(kernels), _union(copies)
    if not k:
        return {}
    gaps = [(b0, a1) for (_, b0), (a1, _) in zip(k, k[1:]) if a1 - b0 > gap]
    covered = sum(max(0.0, min(g1, c1) - max(g0, c0)) for g0, g1 in gaps for c0, c1 in c)
    ms = 1e-3
    return dict(wall=(end - begin) * ms, kernels=sum(b - a for a, b in k) * ms, copies=sum(b - a for a, b in c) * ms,
                before=(k[0][0] - begin) * ms, after=(end - k[-1][1]) * ms, gaps=len(gaps),
                gaps_ms=sum(b - a for a, b in gaps) * ms, gaps_copying_ms=covered * ms,
                gap_spans=[((a - begin) * ms, (b - begin) * ms) for a, b in gaps],
                copy_spans=[((a - begin) * ms, (b - begin) * ms) for a, b in c])


class _TileMarks(logging.Handler):
    """The runner's DEBUG timeline lines (``tile N <what> at T s``, ``tile N (rows ...) written at T s``) as
    ``{tile: {what: ms}}``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tiles: dict[int, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "tile %d %s at %.4f s":
            i, what, t = record.args
        elif str(record.msg).startswith("tile %d (rows") and "written at" in str(record.msg):
            i, what, t = record.args[0], "written", record.args[5]
        else:
            return
        self.tiles.setdefault(int(i), {})[str(what)] = 1e3 * float(t)


@contextlib.contextmanager
def tile_marks():
    """The runner's per-tile host timeline for the duration of the block (its DEBUG lines, kept from the log's
    other handlers)."""
    log = logging.getLogger("hsi_engine.runner")
    marks, level, propagate = _TileMarks(), log.level, log.propagate
    log.addHandler(marks)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield marks.tiles
    finally:
        log.removeHandler(marks)
        log.setLevel(level)
        log.propagate = propagate


def engine_profile(device: torch.device, backend: str, side: int, *, precision: str = "float32",
                   top: int = 14) -> dict:
    """One engine run (as :func:`engine_mpix` times it, in memory) under ``torch.profiler``: where the time goes.

    On CUDA: device time per kernel (and copy), summed over the run, against its wall clock: the share of the
    wall the GPU was busy says whether the engine is bound by its kernels or by what feeds them. On CPU: self
    CPU time per op, summed over every thread.
    """
    from torch.profiler import ProfilerActivity, profile

    model = _engine_model()
    scene = _random_scene(side, "float32")
    kw = dict(device=str(device), backend=backend, precision=precision, readers=None, normalise_on=None,
              max_pixels=None)
    _time_run(scene[:, :64, :64], model, 1, **kw)  # warm-up: compile / autotune / allocator outside the trace
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof, tile_marks() as marks:
        wall, stats = _time_run(scene, model, 1, **kw)
    events = list(prof.key_averages())
    if cuda:  # kernels and copies only: a CPU op's device time is that of the kernels it launched, listed too
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                  and not getattr(e, "is_user_annotation", False)]

        def own(e):
            return e.self_device_time_total
    else:
        def own(e):
            return e.self_cpu_time_total
    events = [e for e in events if own(e) > 0]
    events.sort(key=own, reverse=True)
    total = sum(own(e) for e in events) / 1e3
    rows = [(e.key, e.count, own(e) / 1e3) for e in events[:top]]
    when = {}
    if cuda:
        every = list(prof.events())
        spans = {True: [], False: []}
        for e in every:
            if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
                spans["Memcpy" in e.name or "Memset" in e.name].append((e.time_range.start, e.time_range.end))
        cpu = [e.time_range for e in every if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU]
        if cpu:
            when = timeline(min(r.start for r in cpu), max(r.end for r in cpu), spans[False], spans[True])
    return dict(desc=f"{side}x{side}x200 float32 scene in memory, backend={backend}, {precision}", wall_ms=wall * 1e3,
                total_ms=total, rows=rows, what="device" if cuda else "self CPU (all threads)",
                others=max(0, len(events) - top), timeline=when, tiles=marks)


# --- main ------------------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def _engine_cell(desc: str, mpix: float | None) -> str:
    """An engine row's figure; a row with none says why: failed or not run on this device (the row's text says
    how), or pending only when it needs a GPU this run did not have."""
    if mpix is not None:
        return f"{mpix:.4f}"
    for what in ("failed", "not run"):
        if f": {what} (" in desc:
            return what
    return PENDING_GPU if "triton" in desc else "pending"


def padding_flops(program) -> int:
    """The part of ``program.flops_per_pixel()`` spent on taps that land on zero padding: a stride-1 conv padded
    ``p`` on each side has ``p - i`` taps outside at output ``i`` from either end, ``p * (p + 1)`` in all, per
    input-output channel pair. The header says how much of the counted work that is (~1.5 % at 200 bands)."""
    convs = [program.stem, *(c for b in program.blocks for c in (b.conv1, b.conv2)), program.reduce]
    return sum(2 * c.weight.shape[0] * c.weight.shape[1] * c.padding * (c.padding + 1) for c in convs
               if c.padding and c.stride == 1)


def _pct(tflops: float, peak: float | None) -> str:
    """``tflops`` as a percentage of a measured peak; n/a where it exceeds it (then the peak is no peak)."""
    if not peak:
        return ""
    return f"{100 * tflops / peak:.1f}%" if tflops <= peak else "n/a"


def render(head: list[str], peaks: dict[str, float], stage_rows: list, layer_rows: list, engine_rows: list,
           kernel_rows: list | None = None, spatial_rows: list | None = None, profile: dict | None = None,
           layers_skipped: str | None = None) -> str:
    """The Markdown report from whatever rows exist so far (it is rewritten after every row); ``layers_skipped``:
    why there are no per-layer rows (--quick), said in place of an empty table."""
    lines = list(head)
    lines += ["## Device peaks (measured in this run)", "", "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in peaks.items()]
    peak = {dtn: v for k, v in peaks.items() for dtn in ("float32", "bfloat16") if f"matmul {dtn}" in k}
    lines += ["", "## Whole spectral stage", "",
              "| formulation | dtype | ms (median [p20, p80]) | TFLOP/s | % of matmul peak (bf16 / same dtype) "
              "| Mpix/s | check |",
              "|---|---|---|---|---|---|---|"]
    for label, dtn, t, tf, mp, note in stage_rows:
        if t is None:
            lines.append(f"| {label} | {dtn} | {note} | | | | |")
        else:
            pct = f"{_pct(tf, peak.get('bfloat16'))} / {_pct(tf, peak[dtn])}" if dtn in peak else ""
            lines.append(f"| {label} | {dtn} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {tf:.4f} | {pct} | {mp:.3f} | {note} |")
    if any("n/a" in ln for ln in lines):
        lines += ["", "n/a: the formulation ran faster than the matmul measured as that dtype's peak, so that matmul "
                  "is no peak on this device (a CPU without bfloat16 matrix units; one matmul size that is not the "
                  "CPU's best)"]
    lines += ["", "## Per layer", ""]
    if layers_skipped:
        lines.append(f"Not run: {layers_skipped}.")
    else:
        lines += ["| layer | formulation | dtype | ms (median [p20, p80]) | TFLOP/s |", "|---|---|---|---|---|"]
    for layer, label, dtn, t, tf in layer_rows:
        if t is None:
            lines.append(f"| {layer} | {label} | {dtn} | {tf} | |")
        else:
            lines.append(f"| {layer} | {label} | {dtn} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {tf:.4f} |")
    if spatial_rows:
        lines += ["", "## Spatial stage (after the spectral stage: two residual blocks of 3x3 convs on each pixel's "
                  "5x5 window, pool, head; `hsi_engine.fused.spatial_windows`)", "",
                  "| run | windows | ms (median [p20, p80]) | TFLOP/s | Mpix/s |", "|---|---|---|---|---|"]
        for label, n, t, tf in spatial_rows:
            lines.append(f"| {label} | {n} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {tf:.4f} | {n / (t[0] * 1e-3) / 1e6:.3f} |")
        if any(label.startswith("dense") for label, *_ in spatial_rows):
            lines += ["", "TFLOP/s counts the convs' work (2 x multiply-adds of their taps) on every row: the dense "
                      "(Toeplitz GEMM) rows report that conv-equivalent rate, not the GEMMs' own, which also multiply "
                      "the zeros of their Toeplitz matrices."]
    lines += ["", "## Engine end to end (classify's job + runner.run_plan, random-init Indian Pines SSRN)", "",
              "| run | Mpix/s |", "|---|---|"]
    for desc, mp in engine_rows:
        lines.append(f"| {desc} | {_engine_cell(desc, mp)} |")
    if profile:
        lines += ["", "## Where the engine's time goes (one run under torch.profiler)", "",
                  f"{profile['desc']}: wall {profile['wall_ms']:.1f} ms; {profile['what']} time summed over "
                  f"kernels / ops: {profile['total_ms']:.1f} ms" + (" (copies run on a side stream, beside the "
                  "kernels)" if profile["what"] == "device" else ""), "",
                  "| kernel / op | calls | ms | % of the wall |", "|---|---:|---:|---:|"]
        for name, calls, ms in profile["rows"]:
            name = name.replace("|", "/")
            name = name if len(name) <= 90 else name[:87] + "..."
            lines.append(f"| `{name}` | {calls} | {ms:.2f} | {100 * ms / profile['wall_ms']:.1f}% |")
        if profile["others"]:
            lines.append(f"| ({profile['others']} more) | | | |")
        t = profile.get("timeline")
        if t:
            lines += ["", f"Timeline (the profiled span, {t['wall']:.1f} ms from the first CPU op to the last): "
                      f"kernels ran {t['kernels']:.1f} ms of it (spans merged) and copies {t['copies']:.1f} ms; "
                      f"the first kernel began {t['before']:.1f} ms in, the last ended {t['after']:.1f} ms before "
                      f"the end; "
                      f"{t['gaps']} gaps over 1 ms between kernels took {t['gaps_ms']:.1f} ms, "
                      f"{t['gaps_copying_ms']:.1f} ms of them while a copy ran."]
            spans = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in t.get("gap_spans", []))
            copies = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in t.get("copy_spans", []))
            lines += ["", f"Gaps over 1 ms (ms from the span's start): {spans or 'none'}.", "",
                      f"Copies (merged, ms from the span's start): {copies or 'none'}."]
        tiles = profile.get("tiles")
        if tiles:
            whats = ["ready on the host", "copy queued", "compute queued", "written"]
            lines += ["", "Per tile, on the host (ms from run_plan's start, a few ms after the span's; the runner's "
                      "DEBUG timeline):", "", "| tile | " + " | ".join(whats) + " |",
                      "|---:|" + "---:|" * len(whats)]
            for i in sorted(tiles):
                lines.append(f"| {i} | " + " | ".join(f"{tiles[i][w]:.1f}" if w in tiles[i] else ""
                                                       for w in whats) + " |")
    if kernel_rows:
        keys = list(dict.fromkeys(k for _, info in kernel_rows for k in info if k not in ("ttgir", "ptx")))
        lines += ["", "## The compiled fused kernel (what Triton built for the timed calls)", "",
                  "Counts are occurrences in the kernel's TTGIR / PTX text (the loop body appears once); the texts "
                  "are saved beside this report.", "",
                  "| dtype | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for dtn, info in kernel_rows:
            lines.append(f"| {dtn} | " + " | ".join(str(info.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pixels", type=positive_int, default=None,
                    help="pixels per call (default 65536 CUDA, 4096 CPU)")
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--reps", type=positive_int, default=15, help="CPU repetitions per timing")
    ap.add_argument("--engine-side", type=positive_int, default=None,
                    help="scene side for the in-memory end-to-end rows")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-side", type=positive_int, default=None,
                    help="side n of the n^3 matmuls that measure the peaks (default 8192 on CUDA, 1024 on CPU)")
    ap.add_argument("--quick", action="store_true", help="skip the per-layer rows, the pinned Triton configs and "
                                                         "the engine's older-default rows")
    ap.add_argument("--zarr-side", type=positive_int, default=1024,
                    help="scene side of the zarr-streamed engine rows")
    ap.add_argument("--no-zarr", action="store_true", help="skip the zarr-streamed engine rows")
    ap.add_argument("--bf16-only", action="store_true", help="bfloat16 rows only (stage, spatial and engine)")
    ap.add_argument("--no-trials", action="store_true", help="skip the pinned trial configs of the Triton kernel")
    ap.add_argument("--gluon-forms", default=",".join(GLUON_FORMS),
                    help="comma-separated Gluon kernel forms to time (each probed in a child process first): "
                         + ", ".join(GLUON_FORMS))
    ap.add_argument("--zarr-dir", default=None, help="where to write the zarr scene for the streamed row "
                                                    "(default: a temporary directory; CUDA only)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/kernels-<device>.md, "
                    "refused when that file exists: pass --out)")
    args = ap.parse_args(argv)
    if args.bands < 7:
        ap.error(f"--bands {args.bands}: the stem convolution needs at least 7 bands (its kernel)")
    unknown = set(args.gluon_forms.split(",")) - set(GLUON_FORMS)  # checked on every device: a typo is one
    if unknown:
        ap.error(f"--gluon-forms: unknown {sorted(unknown)}; expected some of {list(GLUON_FORMS)}")

    device = bench_device(args.device)
    cuda = device.type == "cuda"
    p = args.pixels if args.pixels is not None else (65536 if cuda else 4096)
    dtypes = [torch.float32, torch.bfloat16]  # CPUs with AMX / AVX-512 bf16 run bf16 convolutions fast too
    if args.bf16_only:
        dtypes = [torch.bfloat16]
    bench = make_timer(device, args.reps)
    if cuda:
        name = torch.cuda.get_device_name(device)
        dev_label = gpu_label(name)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} torch threads"
        dev_label = "cpu"
    isa = "" if cuda else f", {cpu_isa()}"  # what the CPU rows' bf16 figures depend on
    out_path = results_out(args.out, REPO / "benchmarks" / "results" / f"kernels-{dev_label}.md")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/kernels.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    base = _random_program(args.bands, 24, 128, generator=torch.Generator().manual_seed(0))
    flops = base.flops_per_pixel() * p
    head = [f"# Spectral-stage kernels: {name}", "",
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- device: {name}" + (f", CUDA {torch.version.cuda}" if cuda else isa),
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"triton {_triton_version()}", f"- commit: {git_commit()}",
            f"- command: `{cmd.strip()}`",
            f"- program: {args.bands} bands, stem 24 k7 s2 -> {base.reduced_bands} positions, "
            f"{len(base.blocks)} residual blocks (24, k7), reduce -> {base.out_features}; random folded weights",
            f"- pixels per call: {p}; FLOPs = program.flops_per_pixel() x pixels = "
            f"{base.flops_per_pixel():,} x {p} (2 x multiply-adds of every conv tap at every output position: the "
            f"taps on the block convs' zero padding, {padding_flops(base) / base.flops_per_pixel():.1%} of it, "
            "included)",
            "- timing: " + ("triton.testing.do_bench, median [p20, p80]" if cuda else
                            f"median [p20, p80] of {args.reps} wall-clock runs after one warm-up"),
            "- float32 rows run with TF32 off everywhere (cuDNN enables it for convolutions by default): exact "
            "float32 is what the engine's `precision=\"float32\"` promises; the `tf32` row is the opt-in.", ""]
    head += ["The Triton kernel fuses the whole stage in one launch (stem, residual blocks, stage affines, "
             "full-band reduce; activations stay in registers, band axis streamed); per-layer Triton rows "
             "therefore do not exist. The report is rewritten after every row, so a run cut short keeps "
             "what it measured.", ""]
    if not cuda:
        head += ["CPU-only run: this machine has no GPU.",
                 f"Every Triton row is \"{PENDING_GPU}\"; no GPU figure here is estimated.", ""]
    peaks: dict[str, float] = {}
    stage_rows: list = []
    layer_rows: list = []
    kernel_rows: list = []  # (dtype, triton_kernel_report without its texts)
    engine_rows: list = []
    spatial_rows: list = []
    profile: dict | None = None
    layers_skipped = "--quick skips the per-layer rows" if args.quick else None

    def emit(row: str) -> None:
        out_path.write_text(render(head, peaks, stage_rows, layer_rows, engine_rows, kernel_rows, spatial_rows,
                                   profile, layers_skipped))
        print(row, flush=True)

    from hsi_engine.fused import exact_fp32

    def precise(dtype: torch.dtype):
        return exact_fp32() if dtype == torch.float32 else contextlib.nullcontext()

    order = [torch.bfloat16, torch.float32] if cuda else [torch.float32, torch.bfloat16]
    peaks.update(measure_peaks(device, bench, order, args.peak_side))
    emit(f"peaks: {peaks}")

    def time_stage(label: str, fn: Callable, dtype: torch.dtype, x, prog, ref,
                   note: str | Callable[[], str] = "") -> None:
        with precise(dtype):
            got = fn(x, prog)
            err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            med, lo, hi = bench(lambda: fn(x, prog))
        stage_rows.append((label, str(dtype).removeprefix("torch."), (med, lo, hi), flops / (med * 1e-3) / 1e12,
                           p / (med * 1e-3) / 1e6, f"max rel. diff vs eager {err:.1e}" + (note() if callable(note) else note)))
        emit(f"stage {label} {dtype}: {med:.3f} ms")

    def try_stage(label: str, fn: Callable, dtype: torch.dtype, x, prog, ref,
                  note: str | Callable[[], str] = "") -> None:
        """:func:`time_stage`, or a 'failed' row: one failing variant (a Triton that cannot build it, a probe
        that failed) must not lose the others or the report."""
        try:
            time_stage(label, fn, dtype, x, prog, ref, note)
        except Exception as e:  # noqa: BLE001
            stage_rows.append((label, str(dtype).removeprefix("torch."), None, None, None,
                               f"failed: {type(e).__name__}: {str(e)[:300]}"))
            emit(f"stage {label} {dtype}: failed {e}")

    def pinned(prefix: str, c) -> tuple[str, Callable]:
        """Label and stage function of one Triton config, pinned."""
        from kernels.spectral import spectral_stage_triton

        cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        return (prefix + ", ".join(f"{k}={v}" for k, v in cfg.items()),
                lambda a, b: spectral_stage_triton(a, b, config=cfg))

    inputs = {}
    for dtype in dtypes:
        prog = base.to(device=device, dtype=dtype)
        x = torch.randn(p, args.bands, generator=torch.Generator().manual_seed(2)).to(device, dtype)
        with precise(dtype):
            ref = spectral_stage_reference(x, prog)
        inputs[dtype] = (x, prog, ref)
        time_stage("seed-conv3d (eager)", spectral_stage_conv3d, dtype, x, prog, ref)
        time_stage("eager (conv2d channels-last)", spectral_stage_reference, dtype, x, prog, ref)
        if cuda:
            from kernels.spectral import spectral_stage_triton

            time_stage("triton (fused)", spectral_stage_triton, dtype, x, prog, ref, _tuned_config)
            try:
                info = triton_kernel_report(x, prog)
            except Exception as e:  # noqa: BLE001 - informational; never lose the timed rows
                info = {"error": f"{type(e).__name__}: {e}"}
            dtn = str(dtype).removeprefix("torch.")
            for part in ("ttgir", "ptx"):
                if info.get(part):
                    out_path.with_name(f"{out_path.stem}-{dtn}.{part}").write_text(info[part])
            kernel_rows.append((dtn, info))
            emit(f"kernel {dtn}: " + ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("ttgir", "ptx")))
            if dtype == torch.float32:
                time_stage("triton (fused, tf32 opt-in)", lambda a, b: spectral_stage_triton(a, b, allow_tf32=True),
                           dtype, x, prog, ref, _tuned_config)
                # split products on tensor cores, ~fp32 accuracy: candidates for the exact float32 engine
                for products in ("tf32x3", "bf16x3", "bf16x6"):  # bf16x3 / bf16x6: not in every Triton
                    try_stage(f"triton (fused, {products} split products)",
                              lambda a, b, pr=products: spectral_stage_triton(a, b, input_precision=pr),
                              dtype, x, prog, ref, _tuned_config)
        else:
            stage_rows.append(("triton (fused)", str(dtype).removeprefix("torch."), None, None, None, PENDING_GPU))
        for layer, lflops, f3, f2 in ([] if args.quick else layer_cases(prog, p, device, dtype)):
            for label, fn in (("seed-conv3d", f3), ("eager conv2d", f2)):
                with precise(dtype):
                    med, lo, hi = bench(fn)
                layer_rows.append((layer, label, str(dtype).removeprefix("torch."), (med, lo, hi),
                                   lflops / (med * 1e-3) / 1e12))
                emit(f"layer {layer} {label} {dtype}: {med:.3f} ms")
            layer_rows.append((layer, "triton", str(dtype).removeprefix("torch."), None,
                               "fused: timed as a whole stage only"))

    if cuda and not args.quick:  # every config the autotuner chooses among, pinned: which variant wins, by how much
        from kernels import spectral

        for dtype in sorted(dtypes, key=lambda d: d != torch.bfloat16):  # bf16 first: fp32 compiles slowly
            x, prog, ref = inputs[dtype]
            configs = spectral._prune_configs(spectral._CONFIGS, {"x_ptr": x}, PRECISION="ieee")
            for c in configs:
                try_stage(*pinned("triton pinned: ", c), dtype, x, prog, ref)

    # the trial configs (not autotuned until a GPU has timed them), bf16
    if cuda and torch.bfloat16 in inputs and not args.no_trials:
        from kernels import spectral

        x, prog, ref = inputs[torch.bfloat16]
        for c in spectral._TRIAL_CONFIGS:
            try_stage(*pinned("triton trial, pinned: ", c), torch.bfloat16, x, prog, ref)

    probes: dict[tuple[str, str, str], str] = {}  # Gluon form -> '' (ran in a child process) or why not
    if cuda:  # the Gluon kernel, probed in a child process first, so a fault (which would poison this process's
        # CUDA context) or a hang on a GPU / Triton it never ran on costs only its own rows
        from kernels.spectral_gluon import DEFAULT_IDENTITY, DEFAULT_STEP, DEFAULT_WAITS, spectral_stage_gluon

        forms = [GLUON_FORMS[name] for name in args.gluon_forms.split(",")]
        default = (DEFAULT_WAITS, DEFAULT_IDENTITY, DEFAULT_STEP)  # the engine's form: always probed
        probes.update({f: _probe_gluon(args.bands, *f) for f in dict.fromkeys(forms + [default])})
        for dtype in [d for d in dtypes if d != torch.float32]:
            x, prog, ref = inputs[dtype]
            engine_stage = get_spectral_stage("triton", device, dtype)
            rows = [(f"gluon (shared-memory rings, wgmma), waits={w!r}, identity={i!r}"
                     + (f", step={st!r}" if st != "one" else ""),
                     functools.partial(spectral_stage_gluon, waits=w, identity=i, step=st), probes[w, i, st])
                    for w, i, st in forms]
            rows.append(("backend='triton' as the engine calls it", engine_stage,
                         probes[default]))
            for label, fn, probe in rows:
                if probe:  # a row that says why, as try_stage writes it
                    why = f"not run in this process: the probe failed ({probe})"
                    stage_rows.append((label, str(dtype).removeprefix("torch."), None, None, None,
                                       f"failed: RuntimeError: {why[:300]}"))
                    emit(f"stage {label} {dtype}: failed {why}")
                    continue
                try_stage(label, fn, dtype, x, prog, ref)

    for label, sflops, fn in spatial_cases(device, p, float32=not args.bf16_only):
        med, lo, hi = bench(fn)
        spatial_rows.append((label, p, (med, lo, hi), sflops / (med * 1e-3) / 1e12))
        emit(f"spatial {label}: {med:.3f} ms")

    side = args.engine_side if args.engine_side is not None else (2048 if cuda else 145)
    # (backend, precision, zarr, options): the defaults first, then the older defaults beside them
    runs = ([("triton", "float32", False, {}), ("triton", "bfloat16", False, {}), ("triton", "float16", False, {}),
             ("triton", "bfloat16", False, {"spatial": "conv"}),
             ("triton", "bfloat16", False, {"spatial_precision": "float32"}),
             ("triton", "bfloat16", False, {"max_pixels": 262144}),
             ("triton", "bfloat16", False, {"max_pixels": 65536}),  # the default before whole waves
             ("triton", "bfloat16", False, {"gluon_step": "one"}),  # the default before the two-warpgroup form
             ("triton", "bfloat16", False, {"gluon_step": "pair"}),
             ("triton", "bfloat16", False, {"gluon_step": "ws"}),
             ("triton", "bfloat16", False, {"gluon_step": "wsp"}),
             ("triton", "float32", False, {"fp32_products": "bf16x3"}),
             ("triton", "bfloat16", False, {"scene_dtype": "uint16"}),
             ("triton", "bfloat16", False, {"normalise_on": "host"}),
             ("triton", "bfloat16", False, {"max_pixels": 8192}),
             ("triton", "bfloat16", False, {"normalise_on": "host", "max_pixels": 8192}),
             ("triton", "bfloat16", False, {"again": True}),  # the default once more: what the row order moves
             ("eager", "float32", False, {}), ("triton", "float32", True, {}), ("triton", "bfloat16", True, {}),
             ("triton", "bfloat16", True, {"decoders": 0})]
            if cuda else [("eager", "float32", False, {}), ("eager", "bfloat16", False, {}),
                          ("eager", "bfloat16", False, {"spatial_precision": "float32"})])
    if args.no_zarr:
        runs = [r for r in runs if not r[2]]
    if args.bf16_only:
        runs = [r for r in runs if r[1] == "bfloat16"]
    if args.quick:
        quick_opts = {"spatial", "spatial_precision", "fp32_products", "decoders", "gluon_step", "again"}
        runs = [r for r in runs if not r[3] or quick_opts & set(r[3]) or r[3].get("max_pixels", 0) >= 65536]
    zarr_tmp = tempfile.TemporaryDirectory()  # one zarr scene per side and dtype, written once for every row
    zdir = Path(args.zarr_dir) if args.zarr_dir else Path(zarr_tmp.name)

    def engine_row(backend: str, precision: str, zarr: bool, again: bool = False, **opts) -> None:
        try:
            desc, mpix = engine_mpix(device, backend, args.zarr_side if zarr else side, args.reps,
                                     precision=precision, zarr_dir=zdir if zarr else None, **opts)
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            desc, mpix = f"{backend} {precision}{' zarr' if zarr else ''} {opts}: failed ({type(e).__name__}: {e})", None
        if again:
            desc += ", the first row again (after the others: the spread the row order makes)"
        engine_rows.append((desc, mpix))
        emit(f"engine {desc}: {mpix}")

    for backend, precision, zarr, opts in runs:
        probe = probes.get(("layer", "epilogue", opts["gluon_step"])) if "gluon_step" in opts else ""
        if probe is None or probe:  # never probed, or the probe failed: a fault would poison the later rows
            why = probe or "not probed: add it to --gluon-forms"
            engine_rows.append((f"{backend} {precision} {opts}: not run ({why})", None))
            continue
        engine_row(backend, precision, zarr, **opts)
    if not cuda:
        engine_rows.append(("backend=triton", None))
    try:
        profile = engine_profile(device, "triton" if cuda else "eager", side,
                                 precision="bfloat16" if cuda or args.bf16_only else "float32")
        emit(f"profile: wall {profile['wall_ms']:.1f} ms, {profile['what']} {profile['total_ms']:.1f} ms")
    except Exception as e:  # noqa: BLE001 - the profile must not lose the rows above
        print(f"engine profile failed: {type(e).__name__}: {e}", flush=True)

    if not args.no_compile:  # last: max-autotune compiles for minutes on a GPU
        compiled = get_spectral_stage("compile", device)
        for dtype in dtypes:
            x, prog, ref = inputs[dtype]
            time_stage("compile" + (" (max-autotune)" if cuda else ""), compiled, dtype, x, prog, ref)
        if cuda:
            engine_row("compile", "float32", False)

    if cuda and not args.no_zarr:  # last of all: the malloc setting is process-wide and cannot be undone
        engine_row("triton", "bfloat16", True, reuse_malloc=True)
    zarr_tmp.cleanup()

    text = render(head, peaks, stage_rows, layer_rows, engine_rows, kernel_rows, spatial_rows, profile, layers_skipped)
    out_path.write_text(text)
    print(text)
    return out_path


# the Gluon kernel's forms the stage rows time: name -> (waits, identity, step)
GLUON_FORMS = {"phase": ("phase", "epilogue", "one"), "layer": ("layer", "epilogue", "one"),
               "stem_last": ("stem_last", "epilogue", "one"), "layer+mma": ("layer", "mma", "one"),
               "stem_last+mma": ("stem_last", "mma", "one"), "pair": ("layer", "epilogue", "pair"),
               "ws": ("layer", "epilogue", "ws"), "wsp": ("layer", "epilogue", "wsp")}

_GLUON_PROBE = """
import sys, torch
sys.path.insert(0, {repo!r})
from kernels.spectral import _random_program, spectral_stage_reference
from kernels.spectral_gluon import spectral_stage_gluon
prog = _random_program({bands}, 24, 128, generator=torch.Generator().manual_seed(0)).to("cuda")
x = torch.randn(3001, {bands}, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
out = spectral_stage_gluon(x, prog, waits={waits!r}, identity={identity!r}, step={step!r}).float()
ref = spectral_stage_reference(x.float(), prog)
torch.cuda.synchronize()
rel = float((out - ref).abs().max() / ref.abs().max())
print("rel", rel)
if not rel < 5e-2:  # a kernel that runs but computes something else must not be timed
    sys.exit(f"the kernel ran but differs from the reference: max rel. diff {{rel:.3g}}")
"""


def _probe_gluon(bands: int, waits: str, identity: str, step: str = "one", timeout: int = 45) -> str:
    """Run the Gluon kernel once in a child process: '' when it ran, else why not (its error, a fault, a hang)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _GLUON_PROBE.format(repo=str(REPO), bands=bands, waits=waits,
                                                                         identity=identity, step=step)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no result within {timeout} s"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    return ""


def _tuned_config() -> str:
    """The block shape Triton's autotuner picked for the last kernel key timed ('' when unknown)."""
    try:
        from kernels import spectral

        c = spectral._active_tuner().best_config
        extra = "".join(f", {k}={c.kwargs[k]}" for k in spectral._OPTIONAL_KEYS if k in c.kwargs)
        return (f"; tuned: BLOCK_P={c.kwargs['BLOCK_P']}, UNROLL={c.kwargs['UNROLL']}, KCAT={c.kwargs['KCAT']}, "
                f"SCATTER={c.kwargs['SCATTER']}{extra}, {c.num_warps} warps, {c.num_stages} stages")
    except Exception:  # noqa: BLE001 - an informational note only
        return ""


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
