"""The CPU engine's oneDNN work: fused conv layers against the plain ones, the spatial stem's weight layout, and the
engine end to end before and after both (with the spectral chunk re-tuned for them, benchmarks/chunks_cpu.py).

On CPU ``kernels.spectral`` runs conv + ReLU as one oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``
with a ReLU post-op, what inductor emits) and a residual block's end, ReLU(conv2(h) + y), as another (a binary-add
post-op, then ReLU); the plain layers write each conv's output and read it again for the add and the ReLU.
float32 gives the same bits; bf16 rounds the residual sum once (checked: same map / max difference per row).
Runs alternate, one round of warm-up first. On a CPU where oneDNN has no bf16 (AVX2 only) the bf16 rows say "not
run" with the reason: the fused ops raise there, and the engine runs the plain layers in both arms.

    python benchmarks/conv_relu_cpu.py [--side 256] [--reps 5] [--out benchmarks/results/conv-relu-cpu.md]

(The first engine rows, kept below the latest run, compared the plain and fused layers at 512-pixel calls.)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import (cpu_report_head, doc_description, positive_int, results_out, timed_run,  # noqa: E402
                                write_report)

from kernels import spectral  # noqa: E402


def unfused():
    """The plain layers: both oneDNN ops looked up as missing, as on a torch without them."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(spectral, "_CONV_POINTWISE", None))
    stack.enter_context(mock.patch.object(spectral, "_CONV_POINTWISE_BINARY", None))
    return stack


ARMS = ("plain", "fused")


def arm(name: str):
    return unfused() if name == "plain" else contextlib.nullcontext()


def bf16_refusal() -> str | None:
    """Why the bf16 rows are not run here (oneDNN's fused bf16 ops raise on a CPU without bf16: AVX-512 or
    AVX-NE-CONVERT), else None; the engine checks the same (``kernels.spectral._fusable``)."""
    if spectral._onednn_bf16():
        return None
    return f"not run: oneDNN has no bf16 on this CPU (ISA {torch.backends.cpu.get_cpu_capability()})"


def layer_rows(pixels: int, reps: int, bf16_skip: str | None) -> list[tuple]:
    """One 24 -> 24, kernel-7 conv over 97 bands and ``pixels`` pixels, channels-last, per dtype: with its ReLU,
    and as a residual block's end (conv, + identity, ReLU). A row the fused op cannot run holds the reason."""
    from kernels.program import FoldedConv

    g = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        w, b = (0.2 * torch.randn(24, 24, 7, generator=g)).to(dtype), torch.randn(24, generator=g).to(dtype)
        y = torch.randn(1, 24, 97, pixels, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        idn = torch.randn(1, 24, 97, pixels, generator=g).relu().to(dtype).contiguous(memory_format=torch.channels_last)
        cases = {"conv + ReLU": (FoldedConv(w, b, 1, 3, True), lambda c: spectral._conv_relu_cpu(y, c),
                                 lambda c: spectral._conv_unfused(y, c)),
                 "conv + identity + ReLU": (FoldedConv(w, b, 1, 3, False),
                                            lambda c: spectral._conv_add_cpu(y, c, idn, True),
                                            lambda c: F.relu(spectral._conv_unfused(y, c) + idn))}
        name = str(dtype).removeprefix("torch.")
        for what, (c, fused, plain) in cases.items():
            if dtype == torch.bfloat16 and bf16_skip:
                rows.append((what, name, bf16_skip))
                continue
            times: dict[str, list[float]] = {a: [] for a in ARMS}
            outs = {}
            with torch.no_grad():
                for _ in range(reps + 1):
                    for a, fn in (("plain", plain), ("fused", fused)):
                        t0 = time.perf_counter()
                        outs[a] = fn(c)
                        times[a].append(time.perf_counter() - t0)
            diff = (outs["plain"].float() - outs["fused"].float()).abs().max().item()
            rows.append((what, name, *(statistics.median(times[a][1:]) * 1e3 for a in ARMS), diff))
    return rows


def spatial_stem_row(reps: int) -> tuple:
    """The spatial stage's stem (128 -> 24 channels, 3x3) on a 134 x 134 channels-last feature map (how the
    engine hands it over: (HW, 128) transposed), float32: an NCHW weight, then a channels-last one."""
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(134 * 134, 128, generator=g).t().reshape(1, 128, 134, 134)
    w, b = 0.05 * torch.randn(24, 128, 3, 3, generator=g), torch.randn(24, generator=g)
    wcl = w.contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"nchw": [], "cl": []}
    with torch.no_grad():
        for _ in range(reps + 1):
            for name, weight in (("nchw", w), ("cl", wcl)):
                t0 = time.perf_counter()
                out = F.conv2d(fmap, weight, b)
                times[name].append(time.perf_counter() - t0)
        diff = (F.conv2d(fmap, w, b) - out).abs().max().item()
    return (*(statistics.median(times[k][1:]) * 1e3 for k in ("nchw", "cl")), diff)


ENGINE_ARMS = ("before", "fused", "now")


def engine_rows(side: int, reps: int, bf16_skip: str | None) -> list[tuple]:
    """The engine (eager backend, default settings) on a random ``200 x side x side`` scene in memory, step by
    step: ``before`` (plain layers, the spatial stem's weight NCHW), ``fused`` (the fused layers), ``now`` (and the
    channels-last stem weight: the defaults). bfloat16 holds ``bf16_skip`` where it is given: there the engine
    runs the plain layers in both arms, which would read as a fused speed-up."""

    from hsi_engine.api import _Job
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.runner import ArraySink, run_plan
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig.from_name("indian_pines")).eval()
    scene = torch.randn(200, side, side, generator=torch.Generator().manual_seed(5)).numpy()
    rows = []
    for precision in ("float32", "bfloat16"):
        if precision == "bfloat16" and bf16_skip:
            rows.append((precision, bf16_skip, None))
            continue
        job = _Job(scene, model, tile=None, device="cpu", backend="eager", precision=precision, nodata=None)
        now = FusedSSRN(job.model, backend="eager", device="cpu", precision=precision)

        def older() -> FusedSSRN:
            e = FusedSSRN(job.model, backend="eager", device="cpu", precision=precision)
            e._stem_w = e.spatial.stem_w  # the NCHW weight the spatial stem conv had
            return e

        engines = {"before": older(), "fused": older(), "now": now}
        times: dict[str, list[float]] = {a: [] for a in ENGINE_ARMS}
        for _ in range(reps + 1):
            for a in ENGINE_ARMS:
                with arm("plain" if a == "before" else "fused"):
                    times[a].append(timed_run(job, engines[a])[0])
        maps = {}
        for a in ("before", "now"):
            with arm("plain" if a == "before" else "fused"):
                sink = ArraySink(job.height, job.width, job.classes)
                run_plan(job.da, job.plan, engines[a], sink, mean=job.mean, std=job.std, nodata=job.nodata,
                         progress=False)
                maps[a] = sink.labels
        differ = int((maps["before"] != maps["now"]).sum())
        rows.append((precision, [side * side / statistics.median(times[a][1:]) for a in ENGINE_ARMS], differ))
    return rows


def layer_line(what: str, dtype: str, *cells) -> str:
    """A layer row: timed (plain ms, fused ms, max difference), or the one cell saying why it was not run."""
    if len(cells) == 1:
        return f"| {what} | {dtype} | {cells[0]} | | | |"
    plain, fused, diff = cells
    return f"| {what} | {dtype} | {plain:.3f} | {fused:.3f} | {plain / fused:.2f}x | {diff:.2g} |"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=doc_description(__doc__))
    ap.add_argument("--side", type=positive_int, default=256, help="scene side for the engine rows")
    ap.add_argument("--pixels", type=positive_int, default=512, help="pixels per layer call (the engine's CPU chunk)")
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/conv-relu-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "conv-relu-cpu.md")
    if spectral._CONV_POINTWISE is None or spectral._CONV_POINTWISE_BINARY is None:
        raise SystemExit("this torch has no torch.ops.mkldnn._convolution_pointwise(.binary): nothing to compare")
    bf16_skip = bf16_refusal()  # checked once
    layers = layer_rows(args.pixels, 20 * args.reps, bf16_skip)
    stem = spatial_stem_row(4 * args.reps)
    engines = engine_rows(args.side, args.reps, bf16_skip)
    lines = cpu_report_head("The CPU engine's oneDNN work: fused conv layers, the spatial stem's weight layout (CPU)",
                            "conv_relu_cpu.py", argv) + [
             f"- medians of {20 * args.reps} layer calls and {args.reps} engine runs, plain and fused alternating "
             "after one warm-up round", "",
             f"## One spectral layer (24 -> 24 channels, kernel 7, 97 bands, {args.pixels} pixels, channels-last)", "",
             "| layer | dtype | plain layers ms | fused ms | speed-up | max difference |", "|---|---|---:|---:|---:|---:|"]
    lines += [layer_line(*row) for row in layers]
    lines += ["", "## The spatial stage's stem conv (128 -> 24, 3x3, float32, 134 x 134 channels-last feature map)", "",
              "| weight | ms |", "|---|---:|", f"| NCHW (before: oneDNN copies the map to NCHW first) | {stem[0]:.2f} |",
              f"| channels-last (now, CPU) | {stem[1]:.2f} |", "",
              f"{stem[0] / stem[1]:.2f}x; max difference {stem[2]:.2g} (another summation order).", ""]
    lines += ["", f"## The engine end to end ({args.side} x {args.side} x 200 random scene in memory, eager backend, "
              "default settings, random-init Indian Pines SSRN)", "",
              "| precision | before: plain layers, NCHW stem weight | + fused layers | now: + channels-last stem "
              "weight | fused / before | now / before | pixels whose class differs |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p} | {v[0]:,.0f} | {v[1]:,.0f} | {v[2]:,.0f} | {v[1] / v[0]:.2f}x | {v[2] / v[0]:.2f}x | {x} |"
              if not isinstance(v, str) else f"| {p} | {v} | | | | | |" for p, v, x in engines]
    lines += ["", "px/s; each arm adds one change to the one before it."]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()  # (write_report prints the report)
