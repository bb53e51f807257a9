"""Spectral-stage kernel benchmark: seed Conv3d vs eager reference vs torch.compile vs the fused Triton kernel.

One run, one device. Times, on the same folded program (Indian Pines shape by default: 200 bands,
stem 24 k7 s2 -> 97 positions, two residual blocks of 24 k7 convs, full-band reduce to 128):

- ``seed-conv3d``: the seed's formulation, :func:`kernels.spectral.spectral_stage_conv3d` (Conv3d layers
  over ``(P, C, bands, 1, 1)``, cuDNN on CUDA, where it is the engine's eager path), same folded weights; with
  ``torch.backends.cudnn.benchmark`` off (torch's default, what the engine runs) and, on CUDA, on (cuDNN
  autotuned, as Keras/TF runs its convolutions), the latter in a child process of its own (cuDNN's plan cache is
  keyed without the flag, so one process cannot time both);
- ``eager``: :func:`kernels.spectral.spectral_stage_reference` (conv2d, channels-last), the same two ways;
- ``compile``: ``torch.compile`` of the reference (as :mod:`kernels.dispatch` builds it: max-autotune on CUDA);
- ``triton (fused)``: ``backend='triton'`` as the engine calls it (:func:`kernels.dispatch.get_spectral_stage`:
  the Gluon kernel's default form in bf16 / fp16 on Hopper, the Triton kernel in float32);

per layer (stem, one block conv, reduce) and for the whole stage, in float32 and bfloat16, with achieved TFLOP/s
and GB/s. FLOPs = ``program.flops_per_pixel() * pixels`` (2 x multiply-adds of every conv tap); bytes = the
compulsory ones (the input read once, the output written once). The device's bf16 (and fp32) matmul peak and its
copy bandwidth are measured in the same run, over several sizes, before and after the stage rows (the largest is
used); the engine end to end (``classify``'s job and runner on a 200-band scene in memory and streamed from a zarr
store, a model with per-band mean/std) is reported in Mpix/s, its arms alternated, every repeat shown. The report
writes its goals table from its own rows.

``--required-only`` runs exactly that (what the issue asks, in one run) and nothing else; without it the optional
sweeps follow: the Triton kernel's pinned and trial configs, TF32 and split products, other Gluon forms, a
static-shape compile, the spatial stage, the engine's older defaults and a profile. Every row or section a run
leaves out (by a flag, the time budget or a failure) says so in the report: "not run in this run (why)"; a row
the run ended in (a timeout, a hang) says "stopped during this row". Every log line starts with the seconds since
the script's start, every row has its wall seconds (compiles included), and the report lists where the time went.

Timing: ``triton.testing.do_bench`` on CUDA (median, 20th / 80th percentiles; L2 flushed between calls); on CPU
the median of repeated wall-clock runs after a warm-up. Compilation and autotuning run on an untimed first call.

    python benchmarks/kernels.py --device cuda --required-only --deadline $(($(date +%s) + 330)) --out k.md
                                                  # the issue's one run (gpu_session.sh passes its own deadline)
    python benchmarks/kernels.py --device cuda --required-only --rows fused,compile,layer-compile --out k2.md
                                                  # a second call: only the rows the first one missed
    python benchmarks/kernels.py --device cpu --pixels 4096                  # CPU: every Triton row "pending"
    python benchmarks/kernels.py --quick           # no per-layer rows, pinned configs or older-default engine rows
"""

from __future__ import annotations

import time

T0 = time.time()  # the run's clock starts here, before torch's and the repository's imports (5-15 s on a cold machine)

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (bench_device, cpu_isa, cpu_name, gpu_label, int_at_least,  # noqa: E402
                                package_version, positive_int, results_out, timed_run)
from kernels.dispatch import get_spectral_stage  # noqa: E402
from kernels.program import SpectralProgram  # noqa: E402
from kernels.spectral import (_conv3d, _random_program, spectral_stage_conv3d, spectral_stage_reference,  # noqa: E402
                              triton_kernel_report)

PENDING_GPU = "pending: needs a CUDA device"
NOT_RUN = "not run in this run"
NOT_REACHED = f"{NOT_RUN} (not reached: the run stopped before this row: a timeout, a signal or a crash; see its log)"
FUSED_LABEL = "triton (fused): backend='triton' as the engine calls it"
STOPPED_IN = "stopped during this row"
BENCH_ON = ", cudnn.benchmark on"


def not_run(reason: str) -> str:
    return f"{NOT_RUN} ({reason})"


# --- timers ---------------------------------------------------------------------------------------------------

def make_timer(device: torch.device, cpu_reps: int) -> Callable[[Callable[[], object]], tuple[float, float, float]]:
    """Returns ms (median, p20, p80). On CUDA 150 ms of calls after 25 ms of warm-up (a 12 ms call: 12 samples;
    the stage's 1.4 ms: about 100): half of what it was, for the GPU session's budget."""
    if device.type == "cuda":
        import triton.testing

        def bench(fn):
            med, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=150)
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


class Budget:
    """The run's time: ``--budget-s`` seconds counted from this module's import (the step's timeout counts the
    imports too), and ``--deadline``, an absolute time (seconds since the epoch) the GPU session passes, computed
    from the step's own timeout; the earlier binds. A row that needs more than is left is not started, and says
    so."""

    def __init__(self, seconds: float | None, deadline: float | None = None) -> None:
        self.seconds, self.deadline = seconds, deadline

    def left(self) -> float:
        now = time.time()
        left = [float("inf")]
        if self.seconds is not None:
            left.append(self.seconds - (now - T0))
        if self.deadline is not None:
            left.append(self.deadline - now)
        return min(left)

    def what(self) -> str:
        return " and ".join(w for w in (f"--budget-s {self.seconds:.0f}" if self.seconds is not None else "",
                                        "--deadline" if self.deadline is not None else "") if w)

    def why_not(self, need_s: float) -> str | None:
        """None when ``need_s`` seconds fit in what is left, else the reason the row is not run."""
        if self.left() >= need_s:
            return None
        return (f"time budget: {max(0.0, self.left()):.0f} s of {self.what()} left {elapsed():.0f} s into the run, "
                f"this needs about {need_s:.0f} s")


def elapsed() -> float:
    """Seconds since this module's import: every log line and the report's step times count from there."""
    return time.time() - T0


# --- device peaks ---------------------------------------------------------------------------------------------

PEAK_BF16, PEAK_FP32, PEAK_COPY = "matmul bfloat16 TFLOP/s", "matmul float32 TFLOP/s", "copy GB/s (read + write)"


def _fits(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` of tensors fit on ``device`` with room to spare (always on the CPU: its sizes are small)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * nbytes < free


def measure_peaks(device: torch.device, bench, dtypes: list[torch.dtype], sides: list[int],
                  copy_mib: list[int]) -> list[tuple[str, str, float | None]]:
    """``(what, size, value)`` for the n^3 matmuls of each side in ``sides`` per dtype (float32 with TF32 off, on
    CUDA at most 8192: without tensor cores a larger one only takes longer) and the copy of each size in
    ``copy_mib``; value None where the size does not fit in the device's free memory. The peak is the largest."""
    from hsi_engine.fused import exact_fp32

    out: list[tuple[str, str, float | None]] = []
    for dtype in dtypes:
        what = PEAK_BF16 if dtype == torch.bfloat16 else PEAK_FP32
        for n in sides:
            if dtype == torch.float32 and device.type == "cuda" and n > 8192:
                continue
            if not _fits(device, 3 * n * n * dtype.itemsize):
                out.append((what, f"{n}^3", None))
                continue
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            with exact_fp32():
                ms = bench(lambda: a @ b)[0]
            out.append((what, f"{n}^3", 2 * n**3 / (ms * 1e-3) / 1e12))
            a = b = None  # freed before the next size
    for mib in copy_mib:
        m = (mib << 20) // 4  # float32 elements
        if not _fits(device, 2 * 4 * m):
            out.append((PEAK_COPY, f"{mib} MiB", None))
            continue
        src = torch.empty(m, device=device, dtype=torch.float32)
        dst = torch.empty_like(src)
        ms = bench(lambda: dst.copy_(src))[0]
        out.append((PEAK_COPY, f"{mib} MiB", 2 * 4 * m / (ms * 1e-3) / 1e9))
        src = dst = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sm_clock(device: torch.device) -> str | None:
    """The GPU's SM clock now (and its maximum, temperature and power) from nvidia-smi, else torch's
    ``cuda.clock_rate``; None on the CPU or where neither answers. Read on an idle GPU it says little (the clock
    drops between kernels): :func:`clock_under_load` reads it while a matmul runs."""
    if device.type != "cuda":
        return None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if q.returncode == 0 and q.stdout.strip():
            return "SM clock, max SM clock, temperature, power (nvidia-smi): " + q.stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        return f"SM clock {torch.cuda.clock_rate(device)} MHz (torch.cuda.clock_rate)"
    except Exception:  # noqa: BLE001 - optional (needs pynvml)
        return None


SMI_SAMPLE_MS = 50


class ClockSampler:
    """nvidia-smi's SM clock, maximum SM clock, temperature and power every :data:`SMI_SAMPLE_MS` ms, in the
    background for the duration of the block (``cmd``: another command printing such lines, for the tests);
    ``lines`` holds its readings afterwards (none where nvidia-smi is missing)."""

    def __init__(self, index: int = 0, cmd: list[str] | None = None) -> None:
        self.cmd = cmd or ["nvidia-smi", "-i", str(index), "--query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,"
                           "power.draw", "--format=csv,noheader,nounits", "-lms", str(SMI_SAMPLE_MS)]
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> "ClockSampler":
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines = (out or "").splitlines()


def clock_summary(lines: list[str]) -> str | None:
    """nvidia-smi's readings (``sm, max sm, temperature, power`` without units) in one line: the SM clock's
    minimum / median / maximum, the maximum SM clock, the highest temperature and power; None without a reading."""
    rows = []
    for line in lines:
        parts = [v.strip() for v in line.split(",")]
        try:
            rows.append((float(parts[0]), parts[1], parts[2], parts[3]))
        except (ValueError, IndexError):
            continue
    if not rows:
        return None

    def top(i: int) -> str:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[i]))
            except ValueError:
                pass
        return f"{max(vals):.0f}" if vals else "n/a"

    sm = sorted(r[0] for r in rows)
    return (f"SM clock {sm[0]:.0f} / {statistics.median(sm):.0f} / {sm[-1]:.0f} MHz (min / median / max of "
            f"{len(sm)} readings), max SM clock {rows[-1][1]} MHz, temperature up to {top(2)} C, power up to "
            f"{top(3)} W")


def clock_under_load(device: torch.device, sides: list[int], seconds: float = 1.0) -> str | None:
    """The SM clock while the largest bf16 matmul of ``sides`` that fits runs back to back for ``seconds``
    (nvidia-smi sampling in the background): the clock the peak ran at, not an idle GPU's. None on the CPU."""
    if device.type != "cuda":
        return None
    n = max([s for s in sides if _fits(device, 3 * s * s * 2)] or [0])
    if not n:
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    torch.cuda.synchronize(device)
    with ClockSampler(device.index or 0) as smi:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(8):
                a @ b
            torch.cuda.synchronize(device)
    a = b = None
    torch.cuda.empty_cache()
    got = clock_summary(smi.lines)
    where = f"during {seconds:.0f} s of {n}^3 bf16 matmuls back to back (nvidia-smi every {SMI_SAMPLE_MS} ms)"
    if got:
        return f"{got}, {where}"
    after = sm_clock(device)
    return f"{after} (right after {seconds:.0f} s of {n}^3 bf16 matmuls: nvidia-smi gave no readings during them)" \
        if after else None


def fixed(v: float) -> str:
    """A measured figure in fixed notation (never "3e+03")."""
    return f"{v:.1f}" if v >= 100 else f"{v:.3f}" if v >= 1 else f"{v:.5f}"


# --- provenance -----------------------------------------------------------------------------------------------

def git_commit() -> str:
    """HEAD's short hash, with ``-dirty`` and how many tracked files differ from it where the working tree does
    (a lent machine's copy of ``.git`` can lag the tree sent: the flag says the run measured something else)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *cmd], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=20).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
    except Exception:  # noqa: BLE001
        return "unknown (no git repository)"
    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    except Exception:  # noqa: BLE001
        return f"{head} (whether the working tree differs: unknown)"
    return f"{head}-dirty ({len(changed)} tracked files differ from it)" if changed else f"{head} (clean)"


def _driver_version() -> str:
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        return q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown (no nvidia-smi)"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def provenance(cuda: bool) -> list[str]:
    """The report's lines naming what ran: versions (torch, CUDA, cuDNN, driver, Triton, the scene readers')."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines = [f"- versions: python {platform.python_version()}, torch {torch.__version__}, triton {_triton_version()}, "
             f"numpy {package_version('numpy')}, xarray {package_version('xarray')}, zarr {package_version('zarr')}, "
             f"numcodecs {package_version('numcodecs')}, dask {package_version('dask')}"]
    if cuda:
        lines.append(f"- CUDA (torch built with) {torch.version.cuda}, cuDNN {cudnn}, driver {_driver_version()}")
    lines.append(f"- commit: {git_commit()}")
    return lines


# --- per-layer pieces ---------------------------------------------------------------------------------------

def _layer_conv2d(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                  relu: bool) -> torch.Tensor:
    """One folded conv as the eager formulation runs it, its ReLU included (as ``_conv3d`` applies it)."""
    out = F.conv2d(y, weight, bias, stride=(stride, 1), padding=(padding, 0))
    return F.relu(out) if relu else out


class LayerCase(NamedTuple):
    name: str
    flops: int
    seed: Callable[[], torch.Tensor]  # the seed's Conv3d
    eager: Callable[[], torch.Tensor]  # conv2d channels-last: _layer_conv2d(*conv2d_args)
    conv2d_args: tuple  # what the eager and compiled rows hand _layer_conv2d
    in_bytes: int  # the layer's input, read once (the output's bytes come from the call)


def layer_cases(program: SpectralProgram, p: int, device: torch.device, dtype: torch.dtype) -> list[LayerCase]:
    """A :class:`LayerCase` for stem, one block conv, reduce."""
    d, w = program.reduced_bands, program.width
    g = torch.Generator().manual_seed(1)
    x = torch.randn(p, program.bands, generator=g).to(device, dtype)
    h = torch.randn(p, w, d, generator=g).to(device, dtype)
    h3 = h[..., None, None].contiguous()  # (P, W, D, 1, 1)
    h2 = h.permute(1, 2, 0).unsqueeze(0).contiguous(memory_format=torch.channels_last)  # (1, W, D, P)
    x2 = x.t().reshape(1, 1, program.bands, p).contiguous(memory_format=torch.channels_last)
    conv = program.blocks[0].conv1 if program.blocks else None

    def case(name: str, flops: int, seed_in: torch.Tensor, y: torch.Tensor, c) -> LayerCase:
        # (until 2026-11-28 the Conv3d side alone applied the layer's ReLU)
        args = (y, c.weight.unsqueeze(-1), c.bias, c.stride, c.padding, c.relu)
        return LayerCase(name, flops, lambda: _conv3d(seed_in, c), functools.partial(_layer_conv2d, *args), args,
                         y.numel() * y.element_size())

    cases = [case("stem (1->24, k7, s2)", 2 * program.stem.weight.numel() * d * p, x[:, None, :, None, None], x2,
                  program.stem)]
    if conv is not None:
        cases.append(case("block conv (24->24, k7, same)", 2 * conv.weight.numel() * d * p, h3, h2, conv))
    cases.append(case(f"reduce (24x{d} -> {program.out_features})", 2 * program.reduce.weight.numel() * p, h3, h2,
                      program.reduce))
    return cases


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def cudnn_benchmark_rows(bands: int, p: int, dtype_names: list[str], layers: bool, device: str,
                         cpu_reps: int = 1, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """The seed-Conv3d and eager rows (whole stage, and per layer where ``layers``) timed with
    ``torch.backends.cudnn.benchmark`` on, in this process: run it in a fresh one (:func:`_cudnn_child`), where
    the flag is on before any convolution ran. cuDNN's plan cache (``Conv_v8.cpp``) is keyed without the flag and
    looked up first, so in a process that ran a shape with the flag off the flag changes nothing for it. Each row
    goes to ``on_row`` as soon as it is timed (the child prints it at once: a timeout keeps the rows before it);
    ``s``: the row's wall seconds, cuDNN's search included."""
    from hsi_engine.fused import exact_fp32

    torch.backends.cudnn.benchmark = True
    dev = torch.device(device)
    base = _random_program(bands, 24, 128, generator=torch.Generator().manual_seed(0))
    rows: list[dict] = []
    timer = make_timer(dev, cpu_reps)  # do_bench on CUDA, as the parent times; the CPU for the tests

    def add(row: dict, t0: float) -> None:
        row["s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for dtn in dtype_names:
        dtype = getattr(torch, dtn)
        precise = exact_fp32() if dtype == torch.float32 else contextlib.nullcontext()
        prog = base.to(device=dev, dtype=dtype)
        x = torch.randn(p, bands, generator=torch.Generator().manual_seed(2)).to(dev, dtype)
        with precise:
            ref = spectral_stage_reference(x, prog)
            for key, fn in (("seed", spectral_stage_conv3d), ("eager", spectral_stage_reference)):
                t0 = time.perf_counter()
                got = fn(x, prog)  # cuDNN's search for each shape: untimed
                err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                add(dict(kind="stage", key=key + "+bench", dtype=dtn, t=list(timer(lambda: fn(x, prog))),
                         bytes=_nbytes(x) + _nbytes(got), note=f"max rel. diff vs eager {err:.1e}"), t0)
            if layers:
                for case in layer_cases(prog, p, dev, dtype):
                    for key, fn in (("seed", case.seed), ("eager", case.eager)):
                        t0 = time.perf_counter()
                        out = fn()
                        add(dict(kind="layer", key=key + "+bench", dtype=dtn, layer=case.name, t=list(timer(fn)),
                                 bytes=case.in_bytes + _nbytes(out)), t0)
    return rows


def stream_rows(cmd: list[str], timeout: float, on_row: Callable[[dict], None]) -> int:
    """Run ``cmd`` (a child printing one ``ROW <json>`` line per row, flushed), handing each row to ``on_row`` as
    it arrives; the child is killed after ``timeout`` s. Returns the rows' count; raises RuntimeError (after the
    rows that did arrive were handed on) when the child failed, was killed or sent no row. A signal to this
    process (the step's timeout) leaves the rows already handed on in place."""
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        n = 0
        try:
            for line in proc.stdout:
                if line.startswith("ROW "):
                    on_row(json.loads(line[4:]))
                    n += 1
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if killed.is_set():
            raise RuntimeError(f"no result within {timeout:.0f} s (killed after {n} rows)")
        if rc != 0 or not n:
            err.seek(0)
            last = (err.read().strip().splitlines() or [f"exit {rc}, {n} rows"])[-1][:300]
            raise RuntimeError(f"{last} (after {n} rows)" if n else last)
        return n


def _cudnn_child(bands: int, p: int, dtype_names: list[str], layers: bool, device: str, timeout: float,
                 on_row: Callable[[dict], None]) -> int:
    """:func:`cudnn_benchmark_rows` in a child process (a fresh cuDNN plan cache, the flag on from its start),
    each row handed to ``on_row`` as the child times it (:func:`stream_rows`)."""
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); import torch; "
            "torch.backends.cudnn.benchmark = True; from benchmarks.kernels import cudnn_benchmark_rows; "
            f"cudnn_benchmark_rows({bands}, {p}, {dtype_names!r}, {layers}, {device!r}, "
            "on_row=lambda r: print('ROW ' + json.dumps(r), flush=True))")
    return stream_rows([sys.executable, "-c", code], timeout, on_row)


def spatial_cases(device: torch.device, n: int, float32: bool = True):
    """(label, flops, fn, input bytes) for the engine's per-pixel spatial stage (``spatial_windows``) on ``n``
    windows of a random-init Indian Pines SSRN: float32 exact (what the float32 engine runs), float32 with TF32 allowed
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
    return [(label, per_window * n, fn, _nbytes(x)) for label, fn in cases]



def _engine_model(scene_dtype: str = "float32"):
    """A random-init Indian Pines SSRN with per-band mean/std in its meta, as every real model has (the shipped
    one, ``hsi-engine train``, ``import-keras --dataset``), so the engine rows time the normalisation too (until
    2026-11-29 they ran without: the float32 scene was taken as normalised and only copied). The statistics fit
    the random scenes of :func:`_random_scene`: per-band values near 0 and 1 for the N(0, 1) float32 scene (its
    scale checks pass; the device divides and subtracts all the same), 6000 and 3464 for the uint16 counts."""
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig.from_name("indian_pines")).eval()
    bands = model.config.bands
    if scene_dtype == "uint16":  # 16-bit sensor counts; the model's mean/std make them O(1)
        model.meta = {"mean": [6000.0] * bands, "std": [3464.0] * bands}
    else:
        model.meta = {"mean": [0.01 * (b % 7 - 3) for b in range(bands)],
                      "std": [1.0 + 0.01 * (b % 5) for b in range(bands)]}
    return model


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


ZARR_WHERE = "streamed from zarr (256x256 chunks, all bands, default codec, block cache; the store in page cache)"


def zarr_scene(zarr_dir: Path, side: int, scene_dtype: str) -> Path:
    """The zarr copy of :func:`_random_scene` (256 x 256 chunks, all bands, the default codec), written once."""
    import xarray as xr

    path = Path(zarr_dir) / f"scene{side}-{scene_dtype}.zarr"
    if not path.exists():
        xr.DataArray(_random_scene(side, scene_dtype), dims=("band", "y", "x"), name="reflectance").chunk(
            {"band": -1, "y": 256, "x": 256}).to_zarr(path)
    return path


@dataclasses.dataclass
class Arm:
    """One engine configuration, built once (job checks, the engine's fold), then run untimed once and timed
    ``reps`` times, its runs alternated with the other arms' of its group."""
    key: str | None  # "backend:precision:memory|zarr" for the required arms (the goals read them)
    what: str
    short: str  # e.g. "triton bfloat16 in memory": how the other arms of its group name it
    job: object
    engine: object
    run_kw: dict
    pixels: int
    times: list = dataclasses.field(default_factory=list)
    stats: dict = dataclasses.field(default_factory=dict)
    warm: bool = False
    error: str | None = None  # why the arm stopped (its rows say "failed"; the other arms go on)
    seconds: float = 0.0  # wall seconds spent on this arm: its build, its untimed run and its timed ones

    def mpix(self) -> list[float]:
        return [self.pixels / t / 1e6 for t in self.times]

    def median(self) -> float:
        return self.pixels / statistics.median(self.times) / 1e6


def build_arm(device: torch.device, backend: str, side: int, *, precision: str = "float32",
              zarr_dir: Path | None = None, readers: int | None = None, normalise_on: str | None = None,
              max_pixels: int | None = None, scene_dtype: str = "float32", spatial: str = "auto",
              spatial_precision: str = "auto", fp32_products: str = "ieee", decoders: int | None = None,
              key: str | None = None) -> Arm:
    """An engine arm on the random ``200 x side x side`` scene, in memory or streamed from its zarr copy in
    ``zarr_dir``. Options left at None are the engine's defaults; set, they reproduce an older default."""
    from hsi_engine.api import _Job, open_scene
    from hsi_engine.fused import FusedSSRN

    t0 = time.perf_counter()
    scene, where = _random_scene(side, scene_dtype), "in memory"
    if zarr_dir is not None:
        scene, where = open_scene(zarr_scene(zarr_dir, side, scene_dtype)), ZARR_WHERE
    job = _Job(scene, _engine_model(scene_dtype), tile=None, device=str(device), backend=backend,
               precision=precision, nodata=None)
    engine = FusedSSRN(job.model, backend=backend, device=job.device, precision=precision, max_pixels=max_pixels,
                       spatial=spatial, spatial_precision=spatial_precision, fp32_products=fp32_products)
    opts = ["default readers" if readers is None else f"readers={readers}"]
    if normalise_on is not None:
        opts.append(f"normalised on the {normalise_on}")
    for name, value, default in (("max_pixels", max_pixels, None), ("spatial", spatial, "auto"),
                                 ("spatial_precision", spatial_precision, "auto"),
                                 ("fp32_products", fp32_products, "ieee")):
        if value != default:
            opts.append(f"{name}={value}")
    if decoders is not None:
        opts.append(f"decoders={decoders}" + (" (each reader decodes its window's blocks one by one)"
                                              if decoders == 0 else ""))
    elif zarr_dir is not None:
        opts.append("default decoders")
    extra = [o for o in opts if not o.startswith("default")]
    short = (f"{backend} {precision} {'from zarr' if zarr_dir is not None else 'in memory'}"
             + (f" ({', '.join(extra)})" if extra else "") + ("" if scene_dtype == "float32" else f", {scene_dtype}"))
    return Arm(key, f"{side}x{side}x200 {scene_dtype} scene {where}, backend={backend}, {precision}, "
               f"{', '.join(opts)}", short, job, engine,
               dict(readers=readers, normalise_on=normalise_on, decoders=decoders), side * side,
               seconds=time.perf_counter() - t0)


def run_arms(arms: list[Arm], reps: int) -> None:
    """Each arm not yet warm runs once untimed (compile / autotune / the Gluon self-check / pinned buffers; a zarr
    arm reads its whole store, which puts it in the page cache), then ``reps`` rounds run every arm once in turn
    (A B C A B C ...), so a drift over the run (clocks, the host's caches) reaches every arm alike."""
    def run(arm: Arm) -> float | None:
        if arm.error is not None:
            return None
        t0 = time.perf_counter()
        try:
            t, stats = timed_run(arm.job, arm.engine, **arm.run_kw)
        except Exception as e:  # noqa: BLE001 - one failing arm must not lose the others
            arm.error = f"{type(e).__name__}: {str(e)[:300]}"
            return None
        finally:
            arm.seconds += time.perf_counter() - t0
        arm.stats = stats
        return t

    for arm in arms:
        if not arm.warm:
            arm.warm = run(arm) is not None
    for _ in range(reps):
        for arm in arms:
            t = run(arm)
            if t is not None:
                arm.times.append(t)


def arm_row(arm: Arm, others: list[Arm] = (), note: str = "") -> dict:
    """The engine table's row of a timed arm: its median, every repeat, with whom it alternated."""
    if arm.error is not None or not arm.times:
        return dict(key=arm.key, desc=f"{arm.what}: failed ({arm.error})", mpix=None, reps=arm.mpix(),
                    why=f"failed ({arm.error})", s=arm.seconds)
    s = arm.stats
    busy = ", ".join(f"{k} {s[k]:.2f}" for k in ("read_s", "prepare_s", "compute_s", "write_s") if k in s)
    alt = (f"; alternated with: {'; '.join(o.short for o in others)}" if others else "; not alternated")
    dec = f", {s['decoders']} decoders" if "decoders" in s and "zarr" in arm.what else ""
    desc = (f"{arm.what}, median of {len(arm.times)}{alt} (last run{dec}, s summed over threads: {busy}; wall "
            f"{s.get('wall_s', 0):.2f}){note}")
    return dict(key=arm.key, desc=desc, mpix=arm.median(), reps=arm.mpix(), why="", s=arm.seconds)


def engine_mpix(device: torch.device, backend: str, side: int, reps: int = 3, *, precision: str = "float32",
                zarr_dir: Path | None = None, gluon_step: str | None = None, **opts) -> tuple[str, float]:
    """One engine arm on its own (built, warmed, ``reps`` timed runs): ``(description, median Mpix/s)``.
    ``gluon_step`` runs the triton backend with that Gluon form as its default for this arm only."""
    ctx = _gluon_default_step(gluon_step) if gluon_step is not None else contextlib.nullcontext()
    with ctx:
        arm = build_arm(device, backend, side, precision=precision, zarr_dir=zarr_dir, **opts)
        run_arms([arm], reps)
    row = arm_row(arm, note=f", Gluon step={gluon_step!r}" if gluon_step else "")
    return row["desc"], row["mpix"]


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



# --- the report -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    """Everything a report shows, rewritten after every row (a run cut short keeps what it measured, and the rows
    it did not reach say so). Rows are dicts: stage ``key, label, dtype, t, bytes, note``; layer the same plus
    ``layer, flops``; engine ``key, desc, mpix, reps``. ``t``: ms (median, p20, p80), or None with ``note`` saying
    why (pending on the CPU, failed, not run in this run)."""
    head: list[str]
    cuda: bool = False
    pixels: int = 0
    stage_flops: int = 0
    peaks: list = dataclasses.field(default_factory=list)  # (when, what, size, value | None)
    peaks_after: str | None = NOT_REACHED  # '' once measured after the stage rows, else why not
    clocks: list = dataclasses.field(default_factory=list)  # (when, text)
    stage_rows: list = dataclasses.field(default_factory=list)
    layer_rows: list = dataclasses.field(default_factory=list)
    spatial_rows: list = dataclasses.field(default_factory=list)
    engine_rows: list = dataclasses.field(default_factory=list)
    kernel_rows: list = dataclasses.field(default_factory=list)
    profile: dict | None = None
    skipped: dict = dataclasses.field(default_factory=dict)  # section -> why it was not run in this run
    notes: dict = dataclasses.field(default_factory=dict)  # section -> lines under its table
    steps: list = dataclasses.field(default_factory=list)  # (what, seconds into the run at its start, its seconds)
    running: dict | None = None  # what runs now: what, t0 (time.time()), rows (their placeholders say so)
    stopped: str | None = None  # what stopped the run mid-way (a signal), said at the report's top

    def find(self, rows: str, key: str, dtype: str | None = None, layer: str | None = None) -> dict | None:
        for r in getattr(self, rows):
            if r.get("key") == key and (dtype is None or r.get("dtype") == dtype) and r.get("layer") == layer:
                return r
        return None

    def set(self, rows: str, key: str, dtype: str | None = None, layer: str | None = None, **fields) -> None:
        row = self.find(rows, key, dtype, layer)
        if row is None:
            raise KeyError((rows, key, dtype, layer))
        row.update(fields)


def peak(rep: Report, what: str) -> float | None:
    """The largest value measured of ``what`` (before or after the stage rows, any size): the peak used."""
    values = [v for _, w, _, v in rep.peaks if w == what and v is not None]
    return max(values) if values else None


def _gbps(nbytes: int | None, ms: float) -> float | None:
    return None if not nbytes else nbytes / (ms * 1e-3) / 1e9


def _engine_cell(desc: str, mpix: float | None) -> str:
    """An engine row's figure; a row with none says why: failed or not run in this run (the row's text says
    how), or pending only when it needs a GPU this run did not have."""
    if mpix is not None:
        return f"{mpix:.4f}"
    if ": failed (" in desc:
        return "failed"
    if ": not run" in desc:
        return "not run"
    return PENDING_GPU if "triton" in desc else "pending"


ROW_S = ("s: the row's wall seconds in this run, its untimed first call (compile, autotuning, cuDNN's search) "
         "included; the cudnn.benchmark rows' as their child process timed them.")


def _row_s(row: dict) -> str:
    return f"{row['s']:.1f}" if row.get("s") is not None else ""


def _measured(row: dict | None) -> bool:
    return row is not None and row.get("t") is not None


def _why_missing(row: dict | None, what: str) -> str:
    if row is None:
        return f"no {what} row in this run"
    return f"{what}: {row.get('note') or 'no figure'}"


def _stage_ms(row: dict) -> float:
    return row["t"][0]


REFERENCE = "n/a (reference)"


def goals(rep: Report) -> list[tuple[str, str, str, str]]:
    """The issue's goals, each ``(goal, figure, rows it came from, met)`` from this run's own rows only; a goal
    whose rows this run lacks says "not measured in this run (why)". The Conv3d baseline is the faster of its
    cudnn.benchmark off / on rows, the compile baseline the faster of its compile rows (the fair baselines)."""
    out = []
    bf16 = peak(rep, PEAK_BF16)
    for dtn in ("bfloat16", "float32"):
        fused = rep.find("stage_rows", "fused", dtn)
        if not _measured(fused):  # where the engine's form could not run: the Triton kernel, said as such
            plain = rep.find("stage_rows", "triton-plain", dtn)
            fused = plain if _measured(plain) else fused
        # the issue's goals name no dtype and every earlier table measured them in bf16: the float32 lines are a
        # reference, never a goal met or missed
        reference = dtn != "bfloat16"
        tag = " (float32: a reference, not an issue goal)" if reference else ""
        for goal, keys, need in ((f"fused Triton stage >= 5x faster than the Conv3d eager formulation{tag}",
                                  ("seed", "seed+bench"), 5.0),
                                 (f"fused Triton stage >= 1.5x faster than torch.compile{tag}",
                                  ("compile", "compile-static"), 1.5)):
            bases = [r for r in (rep.find("stage_rows", k, dtn) for k in keys) if _measured(r)]
            if not _measured(fused) or not bases:
                why = (_why_missing(fused, "fused stage") if not _measured(fused)
                       else _why_missing(rep.find("stage_rows", keys[0], dtn), "baseline"))
                out.append((goal, f"not measured in this run ({why})", "", REFERENCE if reference else
                            "not measured"))
                continue
            base = min(bases, key=_stage_ms)
            r = _stage_ms(base) / _stage_ms(fused)
            others = [b for b in bases if b is not base]
            if others:
                also = f"; the other baseline row: {_stage_ms(others[0]):.3f} ms ({others[0]['label']})"
            elif keys[0] == "compile":  # only the dynamic-shape compile ran: a static one may be faster
                static = rep.find("stage_rows", "compile-static", dtn)
                also = ("; the static-shape compile (perhaps faster, which would lower this ratio): "
                        + ("not run in this run (an optional row: not with --required-only or --rows)"
                           if static is None else (static.get("note") or "not measured")))
            else:
                also = "; the other baseline row was not measured"
            out.append((goal, f"{_stage_ms(base):.3f} / {_stage_ms(fused):.3f} ms = **{r:.2f}x**{also}",
                        f"`{base['label']}` / `{fused['label']}`, {dtn}",
                        REFERENCE if reference else "yes" if r >= need else "no"))
    fused = rep.find("stage_rows", "fused", "bfloat16")
    if not _measured(fused):
        plain = rep.find("stage_rows", "triton-plain", "bfloat16")
        fused = plain if _measured(plain) else fused
    goal = ">= 30% of the measured bf16 matrix peak (fused stage, bf16)"
    if not _measured(fused) or bf16 is None:
        why = _why_missing(fused, "fused stage") if not _measured(fused) else "no bf16 matmul peak measured"
        out.append((goal, f"not measured in this run ({why})", "", "not measured"))
    else:
        tf = rep.stage_flops / (_stage_ms(fused) * 1e-3) / 1e12
        rows = f"`{fused['label']}`, bfloat16; the peak table's largest bf16 matmul"
        if tf > bf16:  # then the matmul measured is no peak (a CPU without bf16 matrix units)
            out.append((goal, f"{fixed(tf)} TFLOP/s, above the {fixed(bf16)} measured as the peak: that matmul is no "
                        "peak here", rows, "n/a"))
        else:
            out.append((goal, f"{fixed(tf)} TFLOP/s of {fixed(bf16)} = **{100 * tf / bf16:.1f}%**", rows,
                        "yes" if tf >= 0.3 * bf16 else "no"))
    for where, words in (("memory", "held in memory"), ("zarr", "streamed from zarr")):
        goal = f"engine >= 50 Mpix/s on 200 bands (backend=triton, bf16, scene {words})"
        row = rep.find("engine_rows", f"triton:bfloat16:{where}")
        if row is None or row.get("mpix") is None:
            why = ((row.get("why") or "no figure") if row is not None else
                   "the goal is the triton backend on a GPU; no such row in this run")
            out.append((goal, f"not measured in this run ({why})", "", "not measured"))
            continue
        reps = ", ".join(fixed(m) for m in row["reps"])
        out.append((goal, f"**{fixed(row['mpix'])} Mpix/s** (median; repeats {reps})",
                    f"the engine row of backend=triton, bfloat16, the scene {words}", "yes" if row["mpix"] >= 50
                    else "no"))
    return out


ENGINE_SCOPE = ("Each row times `runner.run_plan` in the warm steady state: the job (scene and scale checks), the "
                "engine's build (fold, weights on the device) and one whole untimed run (compiles, autotuning, the "
                "Gluon self-check, pinned buffers; a zarr arm's store read once, so it is in the page cache) come "
                "first, outside the timed region. Timed: reading the scene (in memory: array slices; zarr: "
                "decoding every chunk from the page-cached store), normalising it with the model's per-band "
                "mean/std, the copies to the device, both stages, the argmax, and the class map written into an "
                "in-memory sink. Not timed: writing any output file (GeoTIFF / zarr), the process's start. The "
                "arms of a group run in turn (A B C A B C ...), every repeat shown; the figure is pixels / median "
                "time.")


def render(rep: Report) -> str:
    """The Markdown report from whatever rows exist so far."""
    lines = list(rep.head)
    bf16, copy = peak(rep, PEAK_BF16), peak(rep, PEAK_COPY)
    peaks = {"float32": peak(rep, PEAK_FP32), "bfloat16": bf16}
    if rep.running:
        n = time.time() - rep.running["t0"]
        lines += [f"**{'Stopped' if rep.stopped else 'Running'} during {rep.running['what']}**, "
                  f"{rep.running['t0'] - T0:.0f} s into the run, after {n:.0f} s of it"
                  + (f" ({rep.stopped})." if rep.stopped else ": where this line stays, the run ended there (a "
                     "timeout's kill, a hang or a crash; see its log)."), ""]
    elif rep.stopped:
        lines += [f"**Stopped between rows** ({rep.stopped}), {elapsed():.0f} s into the run.", ""]
    if rep.steps:
        lines += ["## Where this run's time went (wall seconds from the script's start, imports included)", "",
                  "| step | started at s | s |", "|---|---:|---:|"]
        lines += [f"| {what} | {at:.1f} | {took:.1f} |" for what, at, took in rep.steps]
        lines.append("")

    lines += ["## Device peaks (measured in this run)", ""]
    if "peaks" in rep.skipped:
        lines += [f"Not run in this run: {rep.skipped['peaks']}.", ""]
    lines += ["| what | size | before the stage rows | after the stage rows |", "|---|---|---|---|"]
    keys = list(dict.fromkeys((w, s) for _, w, s, _ in rep.peaks))
    for w, s in keys:
        cells = []
        for when in ("before", "after"):
            v = [val for wh, ww, ss, val in rep.peaks if (wh, ww, ss) == (when, w, s)]
            cells.append(fixed(v[0]) if v and v[0] is not None else "does not fit in free memory" if v
                         else (rep.peaks_after or "") if when == "after" else "")
        lines.append(f"| {w} | {s} | {cells[0]} | {cells[1]} |")
    used = ", ".join(f"{name} {fixed(v)}" for name, v in (("bf16 matmul TFLOP/s", bf16),
                                                         ("float32 matmul TFLOP/s", peaks["float32"]),
                                                         ("copy GB/s", copy)) if v is not None)
    if used:
        lines += ["", f"Peaks used below (the largest of each, before or after, any size): {used}."]
    for when, text in rep.clocks:
        lines.append(f"- {when}: {text}")

    lines += ["", f"## The issue's goals (from this run's rows{'' if rep.cuda else '; a CPU run measures none'})",
              "", "| goal | figure | rows | met |", "|---|---|---|---|"]
    for goal, figure, rows, met in goals(rep):
        lines.append(f"| {goal} | {figure} | {rows} | {met} |")
    lines += ["", "The goals are stated for one H100. Baselines: the faster of the seed-Conv3d rows with "
              "cudnn.benchmark off (the engine's setting) and on (autotuned, as Keras/TF runs); the faster of the "
              "compile rows. The float32 lines are a reference (met: n/a): the issue's goals name no dtype, and "
              "every earlier table measured them in bf16."]

    lines += ["", "## Whole spectral stage", "",
              "Rows without \"cudnn.benchmark on\" ran with it off (torch's default, the engine's). GB/s: the "
              "compulsory bytes (the input read once, the output written once) over the time; % of copy: of the "
              "copy bandwidth measured above (a row far below both the matmul peak and the copy bandwidth is bound "
              "by neither).", "",
              "| formulation | dtype | ms (median [p20, p80]) | TFLOP/s | % of matmul peak (bf16 / same dtype) "
              "| GB/s | % of copy | Mpix/s | check | s |",
              "|---|---|---|---|---|---|---|---|---|---:|"]
    for r in rep.stage_rows:
        t, dtn = r.get("t"), r["dtype"]
        if t is None:
            lines.append(f"| {r['label']} | {dtn} | {r.get('note', '')} | | | | | | | {_row_s(r)} |")
            continue
        tf = rep.stage_flops / (t[0] * 1e-3) / 1e12
        pct = f"{_pct(tf, bf16)} / {_pct(tf, peaks.get(dtn))}" if peaks.get(dtn) else ""
        gb = _gbps(r.get("bytes"), t[0])
        lines.append(f"| {r['label']} | {dtn} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {tf:.4f} | {pct} | "
                     f"{fixed(gb) if gb else ''} | {_pct(gb, copy) if gb else ''} | "
                     f"{rep.pixels / (t[0] * 1e-3) / 1e6:.3f} | {r.get('note', '')} | {_row_s(r)} |")
    if any("n/a" in ln for ln in lines if ln.startswith("| ")):
        lines += ["", "n/a: the formulation ran faster than the matmul measured as that dtype's peak, so that matmul "
                  "is no peak on this device (a CPU without bfloat16 matrix units; one matmul size that is not the "
                  "CPU's best)"]
    lines += ["", ROW_S]
    lines += rep.notes.get("stage", [])

    lines += ["", "## Per layer", ""]
    if "layers" in rep.skipped:
        lines.append(f"Not run in this run: {rep.skipped['layers']}.")
    else:
        lines += ["| layer | formulation | dtype | ms (median [p20, p80]) | TFLOP/s | GB/s | % of copy | s |",
                  "|---|---|---|---|---|---|---|---:|"]
        for r in rep.layer_rows:
            t = r.get("t")
            if t is None:
                lines.append(f"| {r['layer']} | {r['label']} | {r['dtype']} | {r.get('note', '')} | | | | "
                             f"{_row_s(r)} |")
                continue
            gb = _gbps(r.get("bytes"), t[0])
            lines.append(f"| {r['layer']} | {r['label']} | {r['dtype']} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | "
                         f"{r['flops'] / (t[0] * 1e-3) / 1e12:.4f} | {fixed(gb) if gb else ''} | "
                         f"{_pct(gb, copy) if gb else ''} | {_row_s(r)} |")

    lines += ["", "## Spatial stage (after the spectral stage: two residual blocks of 3x3 convs on each pixel's "
              "5x5 window, pool, head; `hsi_engine.fused.spatial_windows`)", ""]
    if "spatial" in rep.skipped:
        lines.append(f"Not run in this run: {rep.skipped['spatial']}.")
    elif rep.spatial_rows:
        lines += ["| run | windows | ms (median [p20, p80]) | TFLOP/s | GB/s | Mpix/s |", "|---|---|---|---|---|---|"]
        for label, n, t, tf, nbytes in rep.spatial_rows:
            gb = _gbps(nbytes, t[0])
            lines.append(f"| {label} | {n} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {tf:.4f} | "
                         f"{fixed(gb) if gb else ''} | {n / (t[0] * 1e-3) / 1e6:.3f} |")
        if any(label.startswith("dense") for label, *_ in rep.spatial_rows):
            lines += ["", "TFLOP/s counts the convs' work (2 x multiply-adds of their taps) on every row: the dense "
                      "(Toeplitz GEMM) rows report that conv-equivalent rate, not the GEMMs' own, which also multiply "
                      "the zeros of their Toeplitz matrices."]
    else:
        lines.append(NOT_REACHED + ".")

    lines += ["", "## Engine end to end (classify's job + runner.run_plan, random-init Indian Pines SSRN with "
              "per-band mean/std)", "", ENGINE_SCOPE, "",
              "| run | Mpix/s (median) | every repeat, in run order (Mpix/s) | s |", "|---|---|---|---:|"]
    for r in rep.engine_rows:
        reps = ", ".join(fixed(m) for m in r.get("reps") or [])
        lines.append(f"| {r['desc']} | {_engine_cell(r['desc'], r.get('mpix'))} | {reps} | {_row_s(r)} |")
    lines += ["", "s: the arm's wall seconds in this run: its build (the job's checks, the fold), its untimed run "
              "(compiles, autotuning, the Gluon self-check) and its timed runs."]
    lines += rep.notes.get("engine", [])

    profile = rep.profile
    lines += ["", "## Where the engine's time goes (one run under torch.profiler)", ""]
    if "profile" in rep.skipped:
        lines.append(f"Not run in this run: {rep.skipped['profile']}.")
    elif not profile:
        lines.append(NOT_REACHED + ".")
    else:
        lines += [f"{profile['desc']}: wall {profile['wall_ms']:.1f} ms; {profile['what']} time summed over "
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

    lines += ["", "## The compiled fused kernel (what Triton built for the timed calls)", ""]
    if "kernel" in rep.skipped:
        lines.append(f"Not run in this run: {rep.skipped['kernel']}.")
    elif rep.kernel_rows:
        keys = list(dict.fromkeys(k for _, info in rep.kernel_rows for k in info if k not in ("ttgir", "ptx")))
        lines += ["Counts are occurrences in the kernel's TTGIR / PTX text (the loop body appears once); the texts "
                  "are saved beside this report.", "",
                  "| dtype | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for dtn, info in rep.kernel_rows:
            lines.append(f"| {dtn} | " + " | ".join(str(info.get(k, "")) for k in keys) + " |")
    else:
        lines.append(NOT_REACHED + ".")
    return "\n".join(lines) + "\n"


def incomplete(rep: Report) -> list[str]:
    """The required rows this run did not measure for a reason other than a flag that asked it or the lack of a
    GPU: failed, cut by the time budget, or never reached. Empty: the run is the whole one the issue asks for."""
    bad = []
    for section in ("stage_rows", "layer_rows"):
        for r in getattr(rep, section):
            note = r.get("note") or ""
            if r.get("required") and r.get("t") is None and (note.startswith("failed") or "time budget" in note
                                                            or note == NOT_REACHED or STOPPED_IN in note):
                bad.append(f"{r.get('layer') or 'stage'}: {r['label']} {r['dtype']}: {note}")
    for r in rep.engine_rows:
        if r.get("required") and r.get("mpix") is None and (": failed (" in r["desc"] or "time budget" in r["desc"]
                                                            or NOT_REACHED in r["desc"] or STOPPED_IN in r["desc"]):
            bad.append(r["desc"])
    if rep.peaks_after and (rep.peaks_after == NOT_REACHED or "time budget" in rep.peaks_after
                            or STOPPED_IN in rep.peaks_after):
        bad.append(f"peaks after the stage rows: {rep.peaks_after}")
    return bad


# --- main ------------------------------------------------------------------------------------------------------

class _Stopped(BaseException):
    """SIGTERM (a step's timeout): the report is finished with what ran, the zarr store removed."""


def _int_list(text: str) -> list[int]:
    """An argparse ``type``: positive integers separated by commas."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _fused_note(dtype: torch.dtype) -> str:
    """What ``backend='triton'`` ran for ``dtype``: the Gluon kernel's form, or the Triton kernel's tuned config."""
    if dtype == torch.float32:
        return _tuned_config()
    from kernels import dispatch

    forms = [f for k, f in dispatch._GLUON_FORM.items() if k[-2] == dtype]
    if forms:
        return f"; the Gluon kernel, waits={forms[-1][0]!r}, step={forms[-1][1]!r}"
    whys = [w for k, w in dispatch._GLUON_CHECKED.items() if k[-2] == dtype and w]
    return (f"; the Triton kernel, not the Gluon kernel: {whys[-1][:300]}" if whys else "") + _tuned_config()


def gluon_key(program: SpectralProgram, dtype: torch.dtype, device: torch.device) -> tuple:
    """The key :func:`kernels.dispatch.fused_stage` files a program shape's Gluon check under, for inputs of
    ``dtype`` on ``device`` (a tensor's device: ``cuda:0``, not ``cuda``)."""
    from kernels.dispatch import gluon_check_key

    return gluon_check_key(program, dtype, device)


def skip_gluon(reason: str, programs: list[SpectralProgram], device: torch.device | str,
               dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)) -> list[tuple]:
    """Make this process's ``backend='triton'`` run the Triton kernel, never the Gluon kernel, for ``programs``'
    shapes in ``dtypes``: each shape's per-shape check is filed as failed with ``reason`` (what the dispatcher
    does after a self-check that failed), so neither the check nor the kernel runs here. For a probe that failed
    in a child process: a fault would poison this process's CUDA context, a hang would stop it in a CUDA call that
    no signal interrupts. Returns the keys set."""
    from kernels import dispatch

    dev = torch.empty(0, device=device).device  # as a tensor's .device reads: cuda:0
    keys = [gluon_key(prog, dtype, dev) for prog in programs if prog.blocks for dtype in dtypes]
    for key in keys:
        dispatch._GLUON_CHECKED[key] = reason
        dispatch._GLUON_FORM.pop(key, None)
    return keys


ROW_GROUPS = {"peaks": "the matmul and copy peaks, before and after the stage rows",
              "stage": "the whole stage's seed-Conv3d and eager rows (cudnn.benchmark off)",
              "fused": "the whole stage's fused row (backend='triton' as the engine calls it)",
              "bench": "the seed-Conv3d and eager rows with cudnn.benchmark on (stage and per layer; a child process)",
              "compile": "the whole stage's torch.compile (bf16 before the engine rows, float32 after them)",
              "engine": "the engine end to end (in memory and from zarr)",
              "layers": "the per-layer seed-Conv3d and eager rows",
              "layer-compile": "the per-layer torch.compile rows"}


def _row_groups(text: str) -> list[str]:
    """An argparse ``type``: names of :data:`ROW_GROUPS`, comma-separated."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in ROW_GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown row group(s) {unknown}; expected some of {list(ROW_GROUPS)}"
                                         if unknown else "expected row groups, comma-separated")
    return list(dict.fromkeys(names))


def _group(section: str, key: str) -> str:
    """The row group (:data:`ROW_GROUPS`) a required row belongs to."""
    if key.endswith("+bench"):
        return "bench"
    if section == "layer_rows":
        return "layer-compile" if key == "compile" else "layers"
    return {"fused": "fused", "compile": "compile"}.get(key, "stage")


def _set_why(row: dict, why: str) -> None:
    """Say why a row has no figure: a stage or layer row's note, an engine row's reason and text."""
    if "desc" in row:
        row["why"] = why
        row["desc"] = f"{row.get('base', row['desc'])}: {why}"
    else:
        row["note"] = why


def _has_figure(row: dict) -> bool:
    return row.get("mpix") is not None if "desc" in row else row.get("t") is not None


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--required-only", action="store_true",
                    help="exactly the issue's rows (seed Conv3d with cudnn.benchmark off and on, eager, torch.compile, "
                         "the fused kernel's default form; per layer and whole stage; fp32 and bf16; the peaks; the "
                         "engine in memory and from zarr) and nothing else")
    ap.add_argument("--rows", type=_row_groups, default=None,
                    help="run only these groups of the required rows, comma-separated (the others say 'not run in "
                         "this run (--rows ...)'; no optional sweep): a second call fills what a first one missed. "
                         + "; ".join(f"{k}: {v}" for k, v in ROW_GROUPS.items()))
    ap.add_argument("--budget-s", type=positive_int, default=None,
                    help="seconds this run may take, counted from the script's start (its imports included): a row "
                         "that would not fit is not started, and says so")
    ap.add_argument("--deadline", type=float, default=None,
                    help="the time (seconds since the epoch, as `date +%%s` prints) by which the run must have "
                         "finished its rows: what the GPU session passes, its step's timeout less a margin for the "
                         "report; with --budget-s, the earlier binds")
    ap.add_argument("--pixels", type=positive_int, default=None,
                    help="pixels per call (default 65536 CUDA, 4096 CPU)")
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--reps", type=positive_int, default=15, help="CPU repetitions per timing")
    ap.add_argument("--engine-side", type=positive_int, default=None,
                    help="scene side for the in-memory end-to-end rows (default 2048 CUDA, 145 CPU)")
    ap.add_argument("--engine-reps", type=int_at_least(3, "a median of 3 at least"), default=3,
                    help="timed runs of each of the engine's required arms, alternated (default 3)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-side", type=_int_list, default=None,
                    help="sides n of the n^3 matmuls that measure the peaks, comma-separated (default "
                         "4096,8192,16384 on CUDA, 1024 on CPU): the largest rate is the peak")
    ap.add_argument("--copy-mib", type=_int_list, default=None,
                    help="sizes of the copies that measure the bandwidth, MiB, comma-separated (default "
                         "256,1024,2048 on CUDA, 128 on CPU)")
    ap.add_argument("--quick", action="store_true", help="skip the per-layer rows, the pinned Triton configs and "
                                                         "the engine's older-default rows")
    ap.add_argument("--zarr-side", type=positive_int, default=None,
                    help="scene side of the zarr-streamed engine rows (default 1024 CUDA, --engine-side CPU)")
    ap.add_argument("--no-zarr", action="store_true", help="skip the zarr-streamed engine rows")
    ap.add_argument("--bf16-only", action="store_true", help="bfloat16 rows only (stage, spatial and engine)")
    ap.add_argument("--no-trials", action="store_true", help="skip the pinned trial configs of the Triton kernel")
    ap.add_argument("--gluon-forms", default="ws,wsp",
                    help="comma-separated Gluon kernel forms to time beside the engine's (each probed in a child "
                         "process first; not with --required-only): " + ", ".join(GLUON_FORMS))
    ap.add_argument("--zarr-dir", default=None, help="where to write the zarr scene for the streamed rows "
                                                    "(default: a temporary directory, removed at the end)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/kernels-<device>.md, "
                    "refused when that file exists: pass --out)")
    args = ap.parse_args(argv)
    if args.bands < 7:
        ap.error(f"--bands {args.bands}: the stem convolution needs at least 7 bands (its kernel)")
    unknown = set(args.gluon_forms.split(",")) - set(GLUON_FORMS)  # checked on every device: a typo is one
    if unknown:
        ap.error(f"--gluon-forms: unknown {sorted(unknown)}; expected some of {list(GLUON_FORMS)}")
    if args.required_only and args.quick:
        ap.error("--required-only runs the per-layer rows the issue asks for; --quick skips them: pass one")

    device = bench_device(args.device)
    cuda = device.type == "cuda"
    req = args.required_only
    p = args.pixels if args.pixels is not None else (65536 if cuda else 4096)
    side = args.engine_side if args.engine_side is not None else (2048 if cuda else 145)
    zside = args.zarr_side if args.zarr_side is not None else (1024 if cuda else side)
    budget = Budget(args.budget_s, args.deadline)
    bench = make_timer(device, args.reps)
    if cuda:
        name = torch.cuda.get_device_name(device)
        dev_label = gpu_label(name)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} torch threads"
        dev_label = "cpu"
    out_path = results_out(args.out, REPO / "benchmarks" / "results" / f"kernels-{dev_label}.md")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/kernels.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    dtypes = [torch.bfloat16, torch.float32] if cuda else [torch.float32, torch.bfloat16]  # the goals' dtype first
    run_dtypes = [d for d in dtypes if not (args.bf16_only and d == torch.float32)]

    def dtn(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")

    base = _random_program(args.bands, 24, 128, generator=torch.Generator().manual_seed(0))
    flops = base.flops_per_pixel() * p
    sides = args.peak_side or ([4096, 8192, 16384] if cuda else [1024])
    copy_mib = args.copy_mib or ([256, 1024, 2048] if cuda else [128])
    rows_why = (not_run(f"--rows {','.join(args.rows)}: not among the rows asked for")
                if args.rows is not None else None)
    limit = ""
    if budget.what():
        left = budget.left()
        limit = (f"; time budget: {budget.what()}, {left:.0f} s left {elapsed():.0f} s after the script's start "
                 "(a row that would not fit is not started, and says so)")
    head = [f"# Spectral-stage kernels: {name}", "",
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- device: {name}" + ("" if cuda else f", {cpu_isa()}"), *provenance(cuda),
            f"- command: `{cmd.strip()}`",
            "- mode: " + ("--required-only: the issue's rows, nothing else" if req else
                          "every row: the issue's first, then the optional sweeps")
            + (f"; only the row groups {', '.join(args.rows)} (--rows; no optional sweep)" if args.rows else "")
            + limit,
            f"- program: {args.bands} bands, stem 24 k7 s2 -> {base.reduced_bands} positions, "
            f"{len(base.blocks)} residual blocks (24, k7), reduce -> {base.out_features}; random folded weights",
            f"- pixels per call: {p}; FLOPs = program.flops_per_pixel() x pixels = "
            f"{base.flops_per_pixel():,} x {p} (2 x multiply-adds of every conv tap at every output position: the "
            f"taps on the block convs' zero padding, {padding_flops(base) / base.flops_per_pixel():.1%} of it, "
            "included); bytes = the input read once and the output written once",
            f"- peaks: matmuls of sides {', '.join(map(str, sides))} (bf16 with float32 accumulation; float32 with "
            f"TF32 off{', at most 8192' if cuda else ''}), copies of {', '.join(f'{m} MiB' for m in copy_mib)} "
            "(read + write counted), each measured before the stage rows and after them"
            + ("; the SM clock read while the largest bf16 matmul runs for 1 s" if cuda else ""),
            "- timing: " + ("triton.testing.do_bench (L2 flushed between calls), median [p20, p80]; compiles, "
                            "autotuning and cuDNN's search on an untimed first call" if cuda else
                            f"median [p20, p80] of {args.reps} wall-clock runs after one warm-up"),
            "- float32 rows run with TF32 off everywhere (cuDNN enables it for convolutions by default): exact "
            "float32 is what the engine's `precision=\"float32\"` promises; the `tf32` row is the opt-in.", "",
            "The fused kernel runs the whole stage in one launch (stem, residual blocks, stage affines, full-band "
            "reduce; activations stay on chip, band axis streamed); per-layer fused rows therefore do not exist. The "
            "report is rewritten after every row and when a row starts, so a run cut short keeps what it measured, "
            "and every row it did not measure says why (\"stopped during this row\": the run ended while it ran).",
            ""]
    if not cuda:
        head += ["CPU-only run: this machine has no GPU.",
                 f"Every Triton row is \"{PENDING_GPU}\"; no GPU figure here is estimated.", ""]
    rep = Report(head=head, cuda=cuda, pixels=p, stage_flops=flops)

    def emit(msg: str) -> None:
        out_path.write_text(render(rep))
        print(f"[{elapsed():7.1f} s] {msg}", flush=True)

    def put(section: str, key: str, dn: str, layer: str | None = None, label: str | None = None, **fields) -> dict:
        """Fill the row ``key`` (a required row's placeholder) or append it (an optional row)."""
        row = rep.find(section, key, dn, layer)
        if row is None:
            row = dict(key=key, label=label or key, dtype=dn, layer=layer)
            getattr(rep, section).append(row)
        if label:
            row["label"] = label
        row.update(fields)
        return row

    @contextlib.contextmanager
    def running(what: str, rows: list[dict] = (), step: bool = False):
        """While the block runs, the report says so and ``rows`` say "stopped during this row" (written to disk at
        once: a kill or a hang leaves that, not "not reached"); a signal during it (_Stopped) makes them say after
        how many seconds. ``step``: the block's seconds go into the report's table of where the time went."""
        prev, t0 = rep.running, time.time()
        rep.running = dict(what=what, t0=t0, rows=list(rows))
        for r in rows:
            _set_why(r, not_run(f"{STOPPED_IN}: it started {t0 - T0:.0f} s into the run and did not finish: a "
                                "timeout's kill, a hang or a crash; see its log"))
        emit(f"start: {what}")
        try:
            yield
        except _Stopped as e:
            if rep.stopped is None:  # the innermost block: its rows were the ones running
                rep.stopped = str(e)
                for r in rows:
                    if not _has_figure(r):
                        _set_why(r, not_run(f"{STOPPED_IN} after {time.time() - t0:.0f} s: {e}"))
            raise
        finally:
            if step:
                rep.steps.append((what, t0 - T0, time.time() - t0))
            if rep.stopped is None:
                rep.running = prev

    # every required row, as a placeholder that says why it has no figure until it has one
    compile_label = "compile (max-autotune, dynamic shapes: as the engine builds it)" if cuda else \
        "compile (dynamic shapes: as the engine builds it)"
    stage_required = [("seed", "seed-conv3d (eager)"), ("seed+bench", "seed-conv3d (eager)" + BENCH_ON),
                      ("eager", "eager (conv2d channels-last)"),
                      ("eager+bench", "eager (conv2d channels-last)" + BENCH_ON),
                      ("fused", FUSED_LABEL), ("compile", compile_label)]

    def preset(section: str, key: str, dn: str) -> str:
        if dn == "float32" and args.bf16_only:
            return not_run("--bf16-only")
        if key.endswith("+bench") and not cuda:
            return not_run("cuDNN's autotuning: CUDA only; this run is on the CPU")
        if key == "fused" and not cuda:
            return PENDING_GPU
        if key == "compile" and args.no_compile:
            return not_run("--no-compile")
        if rows_why and _group(section, key) not in args.rows:
            return rows_why
        return NOT_REACHED

    for dtype in dtypes:
        for key, label in stage_required:
            rep.stage_rows.append(dict(key=key, label=label, dtype=dtn(dtype), layer=None, t=None,
                                       note=preset("stage_rows", key, dtn(dtype)), required=True))
    layer_required = [("seed", "seed-conv3d"), ("seed+bench", "seed-conv3d" + BENCH_ON), ("eager", "eager conv2d"),
                      ("eager+bench", "eager conv2d" + BENCH_ON),
                      ("compile", "compile (max-autotune without CUDA graphs, static shapes)" if cuda else
                       "compile (static shapes)")]
    if args.quick:
        rep.skipped["layers"] = "--quick skips the per-layer rows"
    else:
        for dtype in dtypes:
            for case in layer_cases(base, 1, torch.device("cpu"), torch.float32):
                for key, label in layer_required:
                    rep.layer_rows.append(dict(key=key, label=label, dtype=dtn(dtype), layer=case.name, t=None,
                                               flops=case.flops * p, note=preset("layer_rows", key, dtn(dtype)),
                                               required=True))
                rep.layer_rows.append(dict(key="fused", label="triton", dtype=dtn(dtype), layer=case.name, t=None,
                                           note="fused: timed as a whole stage only"))
    engine_backend = "triton" if cuda else "eager"
    arm_specs = ([("bfloat16", "memory"), ("bfloat16", "zarr"), ("float32", "memory")] if cuda else
                 [("bfloat16" if args.bf16_only else "float32", "memory"),
                  ("bfloat16" if args.bf16_only else "float32", "zarr")])
    for precision, where in arm_specs:
        why = (not_run("--no-zarr") if where == "zarr" and args.no_zarr else
               not_run("--bf16-only") if precision == "float32" and args.bf16_only and cuda else
               rows_why if rows_why and "engine" not in args.rows else NOT_REACHED)
        s = zside if where == "zarr" else side
        base_desc = (f"{s}x{s}x200 float32 scene {'in memory' if where == 'memory' else ZARR_WHERE}, "
                     f"backend={engine_backend}, {precision}")
        rep.engine_rows.append(dict(key=f"{engine_backend}:{precision}:{where}", mpix=None, reps=[], required=True,
                                    why=why, base=base_desc, desc=f"{base_desc}: {why}"))
    if not cuda:
        rep.engine_rows.append(dict(key=None, mpix=None, reps=[], desc="backend=triton (the engine's GPU backend), "
                                    "bfloat16, in memory and streamed from zarr"))
    if rows_why and "peaks" not in args.rows:
        rep.skipped["peaks"] = rep.peaks_after = rows_why
    if req or args.rows is not None:
        why = "--required-only: not among the issue's rows" if req else "--rows: the required rows asked for only"
        rep.skipped.update(spatial=why, profile=why, kernel=why)
        rep.notes["stage"] = ["", f"Optional rows {NOT_RUN} ({'--required-only' if req else '--rows'}): the plain "
                              "Triton kernel in bf16 (the engine runs the Gluon kernel there), its pinned and trial "
                              "configs, TF32 and split products in float32, the Gluon kernel's other forms, a "
                              "static-shape whole-stage compile."]
        rep.notes["engine"] = ["", f"Optional rows {NOT_RUN} ({'--required-only' if req else '--rows'}): the "
                               "engine's older defaults and options (max_pixels, normalisation on the host, spatial "
                               "forms, Gluon forms, fp32_products, float16, a uint16 scene, decoders=0, malloc "
                               "reuse, backends eager and compile)."]

    zarr_tmp = None if args.zarr_dir else tempfile.TemporaryDirectory(prefix="kernels-zarr-")
    zdir = Path(args.zarr_dir) if args.zarr_dir else Path(zarr_tmp.name)

    def on_term(signum, frame):  # noqa: ARG001
        raise _Stopped(f"{signal.Signals(signum).name}, {elapsed():.0f} s into the run: the step's timeout, or a "
                       "kill")

    old_term = signal.signal(signal.SIGTERM, on_term)
    stopped = None
    try:
        _run(args, rep, emit, put, running, device, cuda, req, p, side, zside, budget, bench, run_dtypes, dtn, base,
             sides, copy_mib, zdir, out_path, engine_backend, arm_specs)
    except _Stopped as e:
        stopped = str(e)
        rep.stopped = rep.stopped or stopped
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if zarr_tmp is not None:
            zarr_tmp.cleanup()
        out_path.write_text(render(rep))
    print(render(rep))
    if stopped:
        print(f"[{elapsed():7.1f} s] stopped by {stopped}: the report keeps what ran ({out_path})", file=sys.stderr)
        raise SystemExit(143)
    bad = incomplete(rep)
    if bad:
        print(f"[{elapsed():7.1f} s] required rows without a figure:\n  " + "\n  ".join(bad), file=sys.stderr)
        raise SystemExit(3)
    print(f"[{elapsed():7.1f} s] done: {out_path}", file=sys.stderr)
    return out_path


def _run(args, rep: Report, emit, put, running, device, cuda, req, p, side, zside, budget: Budget, bench,
         run_dtypes, dtn, base, sides, copy_mib, zdir, out_path, engine_backend, arm_specs) -> None:
    """The rows in the order that keeps the issue's goals safe from a budget cut: peaks; the stage (Conv3d, eager,
    fused; bf16 first); cudnn.benchmark on; the bf16 compile; peaks again; the engine; per layer (Conv3d, eager);
    the float32 compile; per-layer compile; then (without --required-only or --rows) the optional sweeps."""
    from hsi_engine.fused import exact_fp32

    from kernels import dispatch

    rep.steps.append(("imports, arguments, the report's placeholders", 0.0, elapsed()))

    def wanted(group: str) -> bool:
        return args.rows is None or group in args.rows

    @contextlib.contextmanager
    def step_time(what: str):
        """The block's seconds in the report's table of where the time went (a signal's stop included)."""
        t0 = time.time()
        try:
            yield
        finally:
            rep.steps.append((what, t0 - T0, time.time() - t0))

    def precise(dtype: torch.dtype):
        return exact_fp32() if dtype == torch.float32 else contextlib.nullcontext()

    inputs: dict = {}

    def get_inputs(dtype: torch.dtype):
        if dtype not in inputs:
            prog = base.to(device=device, dtype=dtype)
            x = torch.randn(p, args.bands, generator=torch.Generator().manual_seed(2)).to(device, dtype)
            with precise(dtype):
                ref = spectral_stage_reference(x, prog)
            inputs[dtype] = (x, prog, ref)
        return inputs[dtype]

    def time_stage(key: str, fn: Callable, dtype: torch.dtype, note: str | Callable[[], str] = "",
                   label: str | None = None, need_s: float = 5.0) -> None:
        """A stage row: checked against eager and compiled / autotuned on an untimed call, then timed; a row that
        fails (a Triton that cannot build it) or does not fit in the budget says so, and the others go on."""
        dn = dtn(dtype)
        why = budget.why_not(need_s)
        if why:
            put("stage_rows", key, dn, label=label, t=None, note=not_run(why))
            emit(f"stage {key} {dn}: {why}")
            return
        row = put("stage_rows", key, dn, label=label)
        t0 = time.perf_counter()
        with running(f"the stage row `{row['label']}`, {dn}", [row]):
            try:
                x, prog, ref = get_inputs(dtype)
                with precise(dtype):
                    got = fn(x, prog)
                    err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                    t = bench(lambda: fn(x, prog))
                put("stage_rows", key, dn, label=label, t=t, bytes=_nbytes(x) + _nbytes(got),
                    note=f"max rel. diff vs eager {err:.1e}" + (note() if callable(note) else note),
                    s=time.perf_counter() - t0)
                emit(f"stage {key} {dn}: {t[0]:.3f} ms (the row took {time.perf_counter() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001 - one failing row must not lose the others or the report
                put("stage_rows", key, dn, label=label, t=None, note=f"failed: {type(e).__name__}: {str(e)[:300]}",
                    s=time.perf_counter() - t0)
                emit(f"stage {key} {dn}: failed {e}")

    def time_layer(case: LayerCase, key: str, fn: Callable, dtype: torch.dtype, need_s: float = 3.0) -> None:
        dn = dtn(dtype)
        why = budget.why_not(need_s)
        if why:
            put("layer_rows", key, dn, layer=case.name, t=None, note=not_run(why))
            emit(f"layer {case.name} {key} {dn}: {why}")
            return
        row = put("layer_rows", key, dn, layer=case.name)
        t0 = time.perf_counter()
        with running(f"the layer row {case.name}, `{row['label']}`, {dn}", [row]):
            try:
                with precise(dtype):
                    nbytes = case.in_bytes + _nbytes(fn())
                    fn()  # a second untimed call (a compiled layer's lazy work, cuDNN's caches)
                    t = bench(fn)
                put("layer_rows", key, dn, layer=case.name, t=t, bytes=nbytes, s=time.perf_counter() - t0)
                emit(f"layer {case.name} {key} {dn}: {t[0]:.3f} ms (the row took {time.perf_counter() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001
                put("layer_rows", key, dn, layer=case.name, t=None, note=f"failed: {type(e).__name__}: {str(e)[:300]}",
                    s=time.perf_counter() - t0)
                emit(f"layer {case.name} {key} {dn}: failed {e}")

    def measure(when: str) -> None:
        order = [torch.bfloat16, torch.float32] if cuda else [torch.float32, torch.bfloat16]
        with running(f"the peaks {when} the stage rows", step=True):
            rep.peaks += [(when, w, s, v) for w, s, v in measure_peaks(device, bench, order, sides, copy_mib)]
            clock = clock_under_load(device, sides)
            if clock:
                rep.clocks.append((f"{when} the stage rows", clock))
        emit(f"peaks {when} the stage rows: " + ", ".join(f"{w} {s} {fixed(v) if v else v}"
                                                          for wh, w, s, v in rep.peaks if wh == when))

    # 0. the Gluon kernel's default form, probed in a child process (a fault there costs only the probe) as this
    # process runs it: the dispatcher's self-check (two programs), the stage row's and the engine's pixels; while
    # this process makes the engine's scenes and zarr store (host work, nothing timed)
    probe_future = None
    gluon_needed = cuda and any(d != torch.float32 for d in run_dtypes) and (
        wanted("fused") or wanted("engine") or args.rows is None)
    if gluon_needed:
        from concurrent.futures import ThreadPoolExecutor

        from kernels.spectral_gluon import DEFAULT_IDENTITY, DEFAULT_STEP, DEFAULT_WAITS

        pool = ThreadPoolExecutor(1)
        probe_future = pool.submit(_probe_gluon, args.bands, DEFAULT_WAITS, DEFAULT_IDENTITY, DEFAULT_STEP,
                                   pixels=p)
        pool.shutdown(wait=False)
    gluon: dict = {}

    def gluon_guard() -> str:
        """Before this process's first bf16 call of backend='triton': the probe's result ('' when it passed).
        When it failed, the dispatcher's per-shape check is filed as failed with the probe's reason, for the
        stage's program and the engine's, so this process runs the Triton kernel and never the Gluon one (nor
        its self-check); the rows say so."""
        if probe_future is None:
            return ""
        if "probe" not in gluon:
            with running("waiting for the Gluon kernel's probe (a child process)", step=True):
                gluon["probe"] = probe_future.result()
            if gluon["probe"]:
                from hsi_engine.fused import fold_spectral

                why = (f"the Gluon kernel's probe in a child process failed ({gluon['probe'][:300]}): this process "
                       "never ran it")
                keys = skip_gluon(why, [base, fold_spectral(_engine_model())], device)
                note = [f"**The Gluon kernel's probe failed** ({gluon['probe'][:300]}): backend='triton' ran the "
                        "Triton kernel in bf16 in this run (the dispatcher's per-shape check filed as failed for "
                        f"{len(keys)} program shapes and dtypes before any bf16 call, so this process never ran the "
                        "Gluon kernel)."]
                rep.notes["stage"] = ["", *note, *rep.notes.get("stage", [])]
                rep.notes["engine"] = ["", *note, *rep.notes.get("engine", [])]
                emit(f"the Gluon kernel's probe failed: {gluon['probe']}; backend='triton' runs the Triton kernel "
                     "in this process")
            else:
                emit("the Gluon kernel's probe passed")
        return gluon["probe"]

    engine_todo = [(row, spec) for row, spec in zip([r for r in rep.engine_rows if r.get("required")], arm_specs)
                   if row["why"] == NOT_REACHED]
    if engine_todo:
        try:
            with running("the engine's scenes in memory and the zarr store (host work; the probe meanwhile)",
                         step=True):
                for _, (_, where) in engine_todo:
                    _random_scene(zside if where == "zarr" else side, "float32")
                    if where == "zarr":
                        zarr_scene(zdir, zside, "float32")
        except Exception:  # noqa: BLE001 - the engine rows say it when they build their arms
            pass

    # 1. peaks, before
    if wanted("peaks"):
        measure("before")

    # 2. the stage: seed Conv3d, eager, the fused kernel (the engine's form), per dtype
    for dtype in run_dtypes:
        if not (wanted("stage") or (cuda and wanted("fused"))):
            continue
        if cuda and wanted("fused") and dtype != torch.float32:
            gluon_guard()
        with step_time(f"the stage rows, {dtn(dtype)}"):
            if wanted("stage"):
                time_stage("seed", spectral_stage_conv3d, dtype)
                time_stage("eager", spectral_stage_reference, dtype)
            if cuda and wanted("fused"):
                time_stage("fused", _resolved(get_spectral_stage, "triton", device, dtype), dtype,
                           functools.partial(_fused_note, dtype), need_s=60 if dtype == torch.float32 else 30)

    # 3. the Conv3d and eager rows with cudnn.benchmark on (stage, and per layer), in a child process, each row
    # sent as it is timed
    if cuda and wanted("bench"):
        bench_rows = [r for sec in ("stage_rows", "layer_rows") for r in getattr(rep, sec)
                      if r["key"].endswith("+bench") and r.get("t") is None and r["note"] == NOT_REACHED]
        why = budget.why_not(60)
        if why:
            for r in bench_rows:
                r["note"] = not_run(why)
        elif bench_rows:
            def got_row(r: dict) -> None:
                put("stage_rows" if r["kind"] == "stage" else "layer_rows", r["key"], r["dtype"],
                    layer=r.get("layer"), t=tuple(r["t"]), bytes=r["bytes"], s=r.get("s"),
                    note=(r.get("note", "") + "; " if r.get("note") else "") + "a child process, the flag on "
                    "from its start")
                emit(f"cudnn.benchmark row {r.get('layer') or 'stage'} {r['key']} {r['dtype']}: {r['t'][0]:.3f} ms")

            with running("the cudnn.benchmark rows (a child process)", bench_rows, step=True):
                try:
                    _cudnn_child(args.bands, p, [dtn(d) for d in run_dtypes], not args.quick, str(device),
                                 timeout=max(30.0, min(300.0, budget.left() - 15)), on_row=got_row)
                except Exception as e:  # noqa: BLE001
                    for r in bench_rows:
                        if r.get("t") is None:
                            r["note"] = (f"failed: the cudnn.benchmark child process: {type(e).__name__}: "
                                         f"{str(e)[:300]}")
        emit("cudnn.benchmark rows: done")

    # 4. torch.compile of the whole stage, as the engine builds it, in the goals' dtype (bf16; float32 is a
    # reference, compiled after the engine rows)
    compile_reason = None

    def compile_stage(dtypes: list[torch.dtype]) -> None:
        nonlocal compile_reason
        if args.no_compile or not wanted("compile") or not dtypes:
            return
        with step_time(f"the whole stage's torch.compile, {', '.join(dtn(d) for d in dtypes)}"):
            compile_reason = compile_reason or dispatch._compile_failure(device.type)
            for dtype in dtypes:
                if compile_reason:
                    put("stage_rows", "compile", dtn(dtype), t=None,
                        note=f"failed: torch.compile did not start: {compile_reason}")
                    continue
                time_stage("compile", _resolved(get_spectral_stage, "compile", device), dtype,
                           need_s=90 if cuda else 5)

    compile_stage([d for d in run_dtypes if d != torch.float32])

    # 5. peaks, after the stage rows
    if wanted("peaks"):
        why = budget.why_not(20 if cuda else 1)
        if why:
            rep.peaks_after = not_run(why)
            emit(f"peaks after the stage rows: {why}")
        else:
            rep.peaks_after = not_run(f"{STOPPED_IN}: the run ended while the peaks after the stage rows ran")
            measure("after")
            rep.peaks_after = ""

    # 6. the engine end to end: in memory and from zarr, arms alternated
    arms: list[Arm] = []
    default_arm = {}
    if engine_todo:
        if cuda:
            gluon_guard()
        why = budget.why_not(60 if cuda else 1)
        rows = [row for row, _ in engine_todo]
        if why:
            for row in rows:
                _set_why(row, not_run(why))
        else:
            with running("the engine rows (each arm built, run once untimed, then the arms alternated)", rows,
                         step=True):
                for row, (precision, where) in engine_todo:
                    try:
                        arm = build_arm(device, engine_backend, zside if where == "zarr" else side,
                                        precision=precision, zarr_dir=zdir if where == "zarr" else None,
                                        key=row["key"])
                        arms.append(arm)
                    except Exception as e:  # noqa: BLE001
                        _set_why(row, f"failed ({type(e).__name__}: {str(e)[:300]})")
                if arms:
                    try:
                        run_arms(arms, args.engine_reps)
                        for arm in arms:
                            row = next(r for r in rep.engine_rows if r.get("key") == arm.key)
                            row.update(arm_row(arm, [a for a in arms if a is not arm]))
                            if arm.error is None:  # bf16 (CUDA) in memory, from zarr
                                default_arm.setdefault(arm.key.rsplit(":", 1)[1], arm)
                    except Exception as e:  # noqa: BLE001
                        failed = f"failed ({type(e).__name__}: {str(e)[:300]})"
                        for arm in arms:
                            row = next(r for r in rep.engine_rows if r.get("key") == arm.key)
                            if row.get("mpix") is None:
                                row.update(why=failed, desc=f"{arm.what}: {failed}")
        emit("engine rows: " + ", ".join(f"{r['key']} {r.get('mpix')}" for r in rep.engine_rows if r.get("required")))

    # 7. per layer: seed Conv3d and eager; the float32 whole-stage compile; then the per-layer compile rows (static
    # shapes; max-autotune on CUDA, the slowest to make, so last, where a budget cut costs only these rows; without
    # CUDA graphs, whose replays copy every input that is not a parameter into the graph's own buffers: a 300 MB
    # activation per call, which the layer does not read)
    cases: dict = {}
    if not args.quick and (wanted("layers") or wanted("layer-compile")):
        cases = {dtype: layer_cases(get_inputs(dtype)[1], p, device, dtype) for dtype in run_dtypes}
    if cases and wanted("layers"):
        with step_time("the per-layer seed-Conv3d and eager rows"):
            for dtype in run_dtypes:
                for case in cases[dtype]:
                    time_layer(case, "seed", case.seed, dtype)
                    time_layer(case, "eager", case.eager, dtype)
    compile_stage([d for d in run_dtypes if d == torch.float32])
    if cases and wanted("layer-compile") and not args.no_compile:
        with step_time("the per-layer torch.compile rows"):
            for dtype in run_dtypes:
                for case in cases[dtype]:
                    compiled = torch.compile(_layer_conv2d, mode="max-autotune-no-cudagraphs" if cuda else None,
                                             dynamic=False)
                    time_layer(case, "compile", functools.partial(compiled, *case.conv2d_args), dtype,
                               need_s=45 if cuda else 3)
    if req or args.rows is not None:
        return

    # --- the optional sweeps ---
    if cuda:
        gluon_guard()
    with step_time("the optional sweeps"):
        _optional(args, rep, emit, put, device, cuda, p, side, zside, budget, bench, run_dtypes, dtn, get_inputs,
                  time_stage, zdir, out_path, engine_backend, default_arm)


def _optional(args, rep: Report, emit, put, device, cuda, p, side, zside, budget: Budget, bench, run_dtypes, dtn,
              get_inputs, time_stage, zdir, out_path, engine_backend, default_arm) -> None:
    """What the issue does not ask for: the kernel's variants, the spatial stage, the engine's older defaults and
    options (each alternated with the default arm of its kind), a profile."""
    skipped: list[str] = []
    if cuda:
        from kernels import spectral
        from kernels.spectral import spectral_stage_triton

        if torch.bfloat16 in run_dtypes and rep.find("stage_rows", "triton-plain", "bfloat16") is None:
            # the plain Triton kernel, autotuned (the engine runs the Gluon kernel in bf16)
            time_stage("triton-plain", spectral_stage_triton, torch.bfloat16, _tuned_config, need_s=60,
                       label="triton (fused, the Triton kernel, autotuned)")
        if torch.float32 in run_dtypes:
            time_stage("tf32", lambda a, b: spectral_stage_triton(a, b, allow_tf32=True), torch.float32,
                       _tuned_config, label="triton (fused, tf32 opt-in)", need_s=60)
            for products in ("tf32x3", "bf16x3", "bf16x6"):  # bf16x3 / bf16x6: not in every Triton
                time_stage(products, lambda a, b, pr=products: spectral_stage_triton(a, b, input_precision=pr),
                           torch.float32, _tuned_config, label=f"triton (fused, {products} split products)", need_s=60)
        for dtype in run_dtypes:  # what Triton built for the engine's form
            x, prog, _ = get_inputs(dtype)
            try:
                info = triton_kernel_report(x, prog)
            except Exception as e:  # noqa: BLE001 - informational; never lose the timed rows
                info = {"error": f"{type(e).__name__}: {e}"}
            for part in ("ttgir", "ptx"):
                if info.get(part):
                    out_path.with_name(f"{out_path.stem}-{dtn(dtype)}.{part}").write_text(info[part])
            rep.kernel_rows.append((dtn(dtype), info))
        if args.quick:
            skipped.append("every autotune config pinned (--quick)")
        else:  # every config the autotuner chooses among, pinned: which variant wins, by how much
            for dtype in run_dtypes:
                x, _, _ = get_inputs(dtype)
                for c in spectral._prune_configs(spectral._CONFIGS, {"x_ptr": x}, PRECISION="ieee"):
                    label, fn = _pinned("triton pinned: ", c)
                    time_stage(label, fn, dtype, label=label, need_s=30)
        if args.no_trials:
            skipped.append("the trial configs pinned (--no-trials)")
        elif torch.bfloat16 in run_dtypes:
            for c in spectral._TRIAL_CONFIGS:
                label, fn = _pinned("triton trial, pinned: ", c)
                time_stage(label, fn, torch.bfloat16, label=label, need_s=30)
    else:
        rep.skipped["kernel"] = PENDING_GPU
        skipped.append(f"the Triton kernel's variants (autotuned in bf16, pinned configs, trial configs, TF32, split "
                       f"products) and the Gluon kernel's forms: {PENDING_GPU}")

    probes: dict[tuple[str, str, str], str] = {}  # Gluon form -> '' (ran in a child process) or why not
    if cuda:  # the Gluon kernel's forms, each probed in a child process first (at once), so a fault (which would
        # poison this process's CUDA context) or a hang on a GPU / Triton it never ran on costs only its own rows
        from concurrent.futures import ThreadPoolExecutor

        from kernels.spectral_gluon import spectral_stage_gluon

        forms = list(dict.fromkeys(GLUON_FORMS[n] for n in args.gluon_forms.split(",")))
        with ThreadPoolExecutor(len(forms)) as pool:
            probes.update(zip(forms, pool.map(lambda f: _probe_gluon(args.bands, *f, pixels=p), forms)))
        for dtype in [d for d in run_dtypes if d != torch.float32]:
            for w, i, st in forms:
                label = (f"gluon (shared-memory rings, wgmma), waits={w!r}, identity={i!r}"
                         + (f", step={st!r}" if st != "one" else ""))
                if probes[w, i, st]:
                    put("stage_rows", label, dtn(dtype), label=label, t=None,
                        note=f"failed: not run in this process: the probe failed ({probes[w, i, st][:300]})")
                    continue
                time_stage(label, functools.partial(spectral_stage_gluon, waits=w, identity=i, step=st), dtype,
                           label=label, need_s=30)
    if args.no_compile:
        skipped.append("a static-shape whole-stage compile (--no-compile)")
    else:
        static = torch.compile(spectral_stage_reference, mode="max-autotune" if cuda else None, dynamic=False)
        for dtype in run_dtypes:
            time_stage("compile-static", lambda a, b: static(a.contiguous(), b).clone(), dtype,
                       label="compile (max-autotune, static shapes)" if cuda else "compile (static shapes)",
                       need_s=120 if cuda else 5)
    if skipped:
        rep.notes["stage"] = [*rep.notes.get("stage", []), "", f"Optional rows {NOT_RUN}: " + "; ".join(skipped) + "."]

    # the spatial stage
    if budget.why_not(20 if cuda else 1):
        rep.skipped["spatial"] = budget.why_not(20 if cuda else 1)
    else:
        for label, sflops, fn, in_bytes in spatial_cases(device, p, float32=not args.bf16_only):
            out = fn()
            t = bench(fn)
            rep.spatial_rows.append((label, p, t, sflops / (t[0] * 1e-3) / 1e12, in_bytes + _nbytes(out)))
            emit(f"spatial {label}: {t[0]:.3f} ms")

    # the engine's older defaults and options, each alternated with the default arm of its kind
    runs = ([("triton", "float16", False, {}), ("triton", "bfloat16", False, {"spatial": "conv"}),
             ("triton", "bfloat16", False, {"spatial_precision": "float32"}),
             ("triton", "bfloat16", False, {"max_pixels": 262144}),
             ("triton", "bfloat16", False, {"max_pixels": 65536}),  # the default before whole waves
             ("triton", "bfloat16", False, {"gluon_step": "one"}),  # the default before the two-warpgroup form
             ("triton", "bfloat16", False, {"gluon_step": "pair"}),
             ("triton", "bfloat16", False, {"gluon_step": "ws"}),
             ("triton", "float32", False, {"fp32_products": "bf16x3"}),
             ("triton", "bfloat16", False, {"scene_dtype": "uint16"}),
             ("triton", "bfloat16", False, {"normalise_on": "host"}),
             ("triton", "bfloat16", False, {"max_pixels": 8192}),
             ("triton", "bfloat16", False, {"normalise_on": "host", "max_pixels": 8192}),
             ("eager", "float32", False, {}), ("triton", "bfloat16", True, {"decoders": 0})]
            + ([] if args.no_compile else [("compile", "float32", False, {})])
            if cuda else [("eager", "bfloat16", False, {}),
                          ("eager", "bfloat16", False, {"spatial_precision": "float32"})])
    if args.no_zarr:
        runs = [r for r in runs if not r[2]]
    if args.bf16_only:
        runs = [r for r in runs if r[1] == "bfloat16"]
    if args.quick:
        quick_opts = {"spatial", "spatial_precision", "fp32_products", "decoders", "gluon_step"}
        runs = [r for r in runs if not r[3] or quick_opts & set(r[3]) or r[3].get("max_pixels", 0) >= 65536]
    opt_reps = 3 if cuda else max(1, args.reps // 5)
    for backend, precision, zarr, opts in runs:
        opts = dict(opts)
        step = opts.pop("gluon_step", None)
        label = f"{backend} {precision}{' zarr' if zarr else ''} {opts}" + (f" Gluon step={step!r}" if step else "")
        why = budget.why_not(30 if cuda else 1)
        if why:
            rep.engine_rows.append(dict(key=None, desc=f"{label}: {not_run(why)}", mpix=None, reps=[]))
            continue
        if step is not None:
            probe = probes.get(("layer", "epilogue", step))
            if probe is None or probe:  # never probed, or the probe failed: a fault would poison the later rows
                why = not_run(probe or "not probed: add it to --gluon-forms")
                rep.engine_rows.append(dict(key=None, desc=f"{label}: {why}", mpix=None, reps=[]))
                continue
        try:
            s = zside if zarr else side
            if step is not None:  # process-wide: not alternated
                with _gluon_default_step(step):
                    arm = build_arm(device, backend, s, precision=precision, zarr_dir=zdir if zarr else None, **opts)
                    run_arms([arm], opt_reps)
                row = arm_row(arm, note=f", Gluon step={step!r} as the backend's default (not alternated: the "
                                        "form is process-wide)")
            else:
                arm = build_arm(device, backend, s, precision=precision, zarr_dir=zdir if zarr else None, **opts)
                other = default_arm.get("zarr" if zarr else "memory")
                if other is None:
                    run_arms([arm], opt_reps)
                    row = arm_row(arm)
                else:
                    n0 = len(other.times)
                    run_arms([other, arm], opt_reps)
                    theirs = [other.pixels / t / 1e6 for t in other.times[n0:]]
                    ratio = arm.median() / (other.pixels / statistics.median(other.times[n0:]) / 1e6)
                    row = arm_row(arm, [other], note=f"; the default arm in these rounds: "
                                  f"{', '.join(fixed(m) for m in theirs)} Mpix/s; this row / it: {ratio:.3f}x")
            del arm
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            row = dict(desc=f"{label}: failed ({type(e).__name__}: {str(e)[:300]})", mpix=None, reps=[])
        rep.engine_rows.append(row | {"key": None})
        emit(f"engine {row['desc']}: {row.get('mpix')}")
    if not cuda:
        rep.notes["engine"] = [*rep.notes.get("engine", []), "", "The other rows of a GPU run (older defaults, Gluon "
                               "forms, a uint16 scene, decoders=0) need CUDA: not run on the CPU."]

    try:
        if budget.why_not(20 if cuda else 1):
            rep.skipped["profile"] = budget.why_not(20 if cuda else 1)
        else:
            rep.profile = engine_profile(device, engine_backend, side,
                                         precision="bfloat16" if cuda or args.bf16_only else "float32")
            emit(f"profile: wall {rep.profile['wall_ms']:.1f} ms")
    except Exception as e:  # noqa: BLE001 - the profile must not lose the rows above
        rep.skipped["profile"] = f"failed: {type(e).__name__}: {e}"

    if cuda and not args.no_zarr and not budget.why_not(30):  # last of all: the setting is process-wide for good
        from hsi_engine.allocator import reuse_large_buffers

        try:
            reused = reuse_large_buffers()
            arm = build_arm(device, "triton", zside, precision="bfloat16", zarr_dir=zdir)
            run_arms([arm], opt_reps)
            rep.engine_rows.append(arm_row(arm, note=", malloc " + ("reusing large buffers (as the CLI runs)" if reused
                                   else "as it comes (reuse_large_buffers() not applicable here)")) | {"key": None})
        except Exception as e:  # noqa: BLE001
            rep.engine_rows.append(dict(key=None, desc=f"triton bfloat16 zarr, malloc reuse: failed ({e})", mpix=None,
                                        reps=[]))
        emit("engine malloc row")


def _resolved(make: Callable, *args) -> Callable:
    """A stage function made by ``make(*args)`` on its first call (inside the row's try: a backend that cannot be
    made fails its row, not the run), then called directly."""
    fn: list[Callable] = []

    def call(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
        if not fn:
            fn.append(make(*args))
        return fn[0](x, program)
    return call


def _pinned(prefix: str, c) -> tuple[str, Callable]:
    """Label and stage function of one Triton config, pinned."""
    from kernels.spectral import spectral_stage_triton

    cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    return (prefix + ", ".join(f"{k}={v}" for k, v in cfg.items()),
            lambda a, b: spectral_stage_triton(a, b, config=cfg))




# the Gluon kernel's forms the stage rows time: name -> (waits, identity, step)
GLUON_FORMS = {"phase": ("phase", "epilogue", "one"), "layer": ("layer", "epilogue", "one"),
               "stem_last": ("stem_last", "epilogue", "one"), "layer+mma": ("layer", "mma", "one"),
               "stem_last+mma": ("stem_last", "mma", "one"), "pair": ("layer", "epilogue", "pair"),
               "ws": ("layer", "epilogue", "ws"), "wsp": ("layer", "epilogue", "wsp")}

_GLUON_PROBE = """
import sys, torch
sys.path.insert(0, {repo!r})
from kernels.dispatch import _check_pixels
from kernels.spectral import _random_program, spectral_stage_reference
from kernels.spectral_gluon import spectral_stage_gluon
dev = {device!r}
prog = _random_program({bands}, 24, 128, generator=torch.Generator().manual_seed(0)).to(dev)
x = torch.randn({pixels}, {bands}, generator=torch.Generator().manual_seed(1)).to(dev, torch.bfloat16)
two = 2 if {step!r} == "wsp" else None  # the dispatcher's self-check runs wsp on two programs

def run(what, x, programs):
    out = spectral_stage_gluon(x, prog, waits={waits!r}, identity={identity!r}, step={step!r},
                               programs=programs).float()
    ref = spectral_stage_reference(x.float(), prog)
    torch.cuda.synchronize()
    rel = float((out - ref).abs().max() / ref.abs().max())
    print(what, "max rel. diff", rel, flush=True)
    if not rel < 5e-2:  # a kernel that runs but computes something else must not be timed (NaN included)
        sys.exit(f"{{what}}: the kernel ran but differs from the reference: max rel. diff {{rel:.3g}}")

run("the dispatcher's self-check (its check pixels, programs=2)", _check_pixels(x), two)
run("{pixels} pixels on two programs (each runs many blocks)", x, two)
run("{pixels} pixels, the default grid (the stage row's and the engine's call)", x, None)
"""


def _probe_gluon(bands: int, waits: str, identity: str, step: str = "one", timeout: int = 60,
                 pixels: int = 65536, device: str = "cuda") -> str:
    """Run the Gluon kernel in a child process as this process would: the dispatcher's self-check (its check
    pixels, ``wsp`` on two programs), then ``pixels`` pixels on two programs (each runs many blocks as one stream)
    and on the default grid (what the stage row and the engine run), each against the float32 reference. '' when
    all ran and matched, else why not (the first error, a fault, a hang)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _GLUON_PROBE.format(
            repo=str(REPO), bands=bands, waits=waits, identity=identity, step=step, pixels=pixels, device=device)],
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


if __name__ == "__main__":
    main()
