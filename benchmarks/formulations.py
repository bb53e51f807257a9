"""GFLOP/s of one kernel-7, 24-channel spectral conv over 97 bands in six torch formulations (CPU or CUDA).

FLOPs = 2 * 24 * 24 * 7 * 97 * pixels (multiply-adds x 2, 'same' padding along bands). Writes
benchmarks/results/formulations.md with device, versions, command and date.

    python benchmarks/formulations.py [--pixels 4900] [--repeat 10] [--out benchmarks/results/formulations.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from benchmarks._common import cpu_name, int_at_least, positive_int, results_out  # noqa: E402

C, D, K = 24, 97, 7


def timeit(fn, repeat: int) -> float:
    with torch.no_grad():
        fn()
        fn()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def formulations(pixels: int):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(C, C, K, generator=g) * 0.1
    b = torch.zeros(C)
    n = pixels // 49  # 7x7 patches for the Conv3d forms
    x5 = torch.randn(n, C, D, 7, 7, generator=g)
    x5cl = x5.contiguous(memory_format=torch.channels_last_3d)
    w5 = w.view(C, C, K, 1, 1)
    x4 = torch.randn(1, C, D, n * 49, generator=g)
    x4cl = x4.contiguous(memory_format=torch.channels_last)
    w4 = w.view(C, C, K, 1)
    x3 = torch.randn(n * 49, C, D, generator=g)
    wmat = w.permute(1, 2, 0).reshape(C * K, C)  # (in*k, out)

    def unfold_matmul():
        cols = F.pad(x3, (K // 2, K // 2)).unfold(2, K, 1)  # (P, C, D, K)
        return cols.permute(0, 2, 1, 3).reshape(-1, C * K) @ wmat  # (P*D, C)

    return n * 49, {
        "Conv3d k(7,1,1), default (N, C, D, 7, 7)": lambda: F.conv3d(x5, w5, b, padding=(K // 2, 0, 0)),
        "Conv3d k(7,1,1), channels_last_3d": lambda: F.conv3d(x5cl, w5, b, padding=(K // 2, 0, 0)),
        "conv2d k(7,1), default (1, C, D, pixels)": lambda: F.conv2d(x4, w4, b, padding=(K // 2, 0)),
        "conv2d k(7,1), channels_last": lambda: F.conv2d(x4cl, w4, b, padding=(K // 2, 0)),
        "conv1d k7 (pixels, C, D)": lambda: F.conv1d(x3, w, b, padding=K // 2),
        "unfold + matmul": unfold_matmul,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=int_at_least(49, "one 7x7 patch for the Conv3d rows"), default=4900,
                    help="pixels per call, rounded down to whole 7x7 patches")
    ap.add_argument("--repeat", type=positive_int, default=10)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/formulations.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "formulations.md")
    load0 = os.getloadavg()
    pixels, forms = formulations(args.pixels)
    flops = 2 * C * C * K * D * pixels
    rows = []
    for name, fn in forms.items():
        t = timeit(fn, args.repeat)
        rows.append((name, t * 1e3, flops / t / 1e9))
        print(f"{name:45s} {t * 1e3:8.2f} ms {flops / t / 1e9:8.1f} GFLOP/s", flush=True)
    load1 = os.getloadavg()
    lines = [
        "# Spectral conv formulations (kernel 7, 24 -> 24 channels, 97 bands)",
        "",
        f"- device: {cpu_name()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}",
        f"- versions: torch {torch.__version__}, python {platform.python_version()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}`",
        f"- pixels: {pixels} (= {pixels // 49} 7x7 patches for the Conv3d rows); FLOPs = 2*24*24*7*97*pixels "
        f"= {flops / 1e9:.2f} GFLOP per call; median of {args.repeat} calls after 2 warm-ups",
        f"- load average before / after: {load0[0]:.2f} / {load1[0]:.2f} (the 2 cores are shared with other "
        "engineers' jobs: absolute figures are lower bounds, compare rows within this run)",
        "",
        "| formulation | ms / call | GFLOP/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {ms:.2f} | {gf:.1f} |" for n, ms, gf in rows]
    best = max(rows, key=lambda r: r[2])
    lines += ["", f"Fastest here: **{best[0]}** ({best[2]:.1f} GFLOP/s). The spectral stage "
              "(`kernels.spectral.spectral_stage_reference`, `SSRN.spectral`) uses conv2d k(7,1) channels-last.", ""]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
