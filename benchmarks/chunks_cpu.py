"""Pixels per spectral call on CPU: the engine end to end at several ``max_pixels``, windows per spatial call fixed.

The CPU engine runs the spectral stage ``max_pixels`` pixels at a time. With conv + ReLU and a block's end fused
into single oneDNN primitives (benchmarks/results/conv-relu-cpu.md) the best chunk moved; this times the engine
(eager backend, random 200-band scene in memory, random-init Indian Pines SSRN) at each size, the spatial stage
at its default windows per call, engines alternating run by run after one warm-up round.

    python benchmarks/chunks_cpu.py [--sides 256 384] [--reps 4] [--out benchmarks/results/chunks-cpu.md]
    python benchmarks/chunks_cpu.py --sides 256 --reps 8 --pair 2048   # two sizes alone

The sweep's sizes run in increasing order; with 512 and 2,048 alone the order of the allocations differs, and
the result turned around (benchmarks/results/chunks-cpu.md): glibc's allocator state is one suspect.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import cpu_report_head, positive_int, results_out, timed_run, write_report  # noqa: E402

SIZES = {"float32": (512, 768, 1024, 1536), "bfloat16": (512, 1024, 2048, 4096)}


def sweep(side: int, reps: int, sizes: dict[str, tuple[int, ...]] = SIZES) -> list[tuple]:
    """``(precision, windows per call, {max_pixels: px/s}, default max_pixels)`` per precision."""
    from hsi_engine.api import _Job
    from hsi_engine.fused import FusedSSRN
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig.from_name("indian_pines")).eval()
    scene = torch.randn(200, side, side, generator=torch.Generator().manual_seed(5)).numpy()
    rows = []
    for precision, sizes in sizes.items():
        job = _Job(scene, model, tile=None, device="cpu", backend="eager", precision=precision, nodata=None)
        default = FusedSSRN(job.model, backend="eager", device="cpu", precision=precision)
        engines = {}
        for mp in sizes:
            e = FusedSSRN(job.model, backend="eager", device="cpu", precision=precision, max_pixels=mp)
            e.max_windows = default.max_windows  # the spatial stage as the default runs it
            engines[mp] = e
        times: dict[int, list[float]] = {mp: [] for mp in engines}
        for _ in range(reps + 1):
            for mp, e in engines.items():
                times[mp].append(timed_run(job, e)[0])
        rows.append((precision, default.max_windows,
                     {mp: side * side / statistics.median(ts[1:]) for mp, ts in times.items()}, default.max_pixels))
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", type=positive_int, nargs="+", default=[256, 384])
    ap.add_argument("--reps", type=positive_int, default=4)
    ap.add_argument("--pair", type=positive_int, default=None, help="bf16 only, 512 against this size alone, alternating")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/chunks-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    if args.pair == 512:  # the sizes are a dict's keys: the pair would collapse to one size, timed alone
        ap.error("argument --pair: expected a size other than 512 (it is timed against 512), got 512")
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "chunks-cpu.md")
    sizes = {"bfloat16": (512, args.pair)} if args.pair else SIZES
    lines = cpu_report_head("Pixels per spectral call on CPU (the engine end to end)", "chunks_cpu.py", argv) + [
             f"- medians of {args.reps} runs per size after one warm-up round, sizes alternating; px/s, and in "
             "brackets the ratio to 512 pixels per call", ""]
    for side in args.sides:
        lines += [f"## {side} x {side} x 200 random scene in memory", "",
                  "| precision | windows per spatial call | pixels per spectral call: px/s (x 512) "
                  "| default in this run |",
                  "|---|---:|---|---:|"]
        for precision, windows, px, default in sweep(side, args.reps, sizes):
            cells = ", ".join(f"{mp}: {v:,.0f} ({v / px[512]:.2f}x)" for mp, v in px.items())
            lines.append(f"| {precision} | {windows} | {cells} | {default} |")
            print(lines[-1], flush=True)
        lines.append("")
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()  # (write_report prints the report)
