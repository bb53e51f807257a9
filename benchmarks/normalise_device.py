"""The device path's normalisation (``ssrn.normalise.normalise_tensor``) in its two forms: four passes per
chunk of bands (cast to float64, subtract in place, divide in place, copy to float32; ``fused=False``, the CPU's)
against two (raw -> float64 difference by type promotion, then the quotient rounded once to float32 as it is
stored; ``fused=True``, CUDA's). Same float64 operations, same bits: the run checks it. Two passes move 24 bytes
per value where four move 56, but run torch's mixed-dtype loops, which made them slower on the 2-core dev CPU
(normalise-device-cpu.md) and 1.46-1.79x faster on an H200 (normalise-device-h200.md, then against the engine's
four passes): each device keeps the form that measured faster on it. One padded tile per dtype, median of
``--reps`` after a warm-up, arms alternated.

    python benchmarks/normalise_device.py [--device cuda] [--tile 512] [--bands 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (bench_device, cpu_report_head, doc_description, positive_int, results_out,  # noqa: E402
                                wall_ms, write_report)
from ssrn.normalise import normalise_tensor  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=doc_description(__doc__))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tile", type=positive_int, default=512)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/normalise-device-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "normalise-device-cpu.md")
    dev = bench_device(args.device)
    side = args.tile + 6
    g = torch.Generator().manual_seed(0)
    mean = (torch.rand(args.bands, generator=g, dtype=torch.float64) * 1000).to(dev)
    std = (torch.rand(args.bands, generator=g, dtype=torch.float64) * 300 + 1).to(dev)

    rows = []
    for dtype in (torch.int16, torch.float32):
        raw = (torch.rand(args.bands, side, side, generator=g) * 4000).to(dtype).to(dev)
        now = torch.zeros(args.bands, side + 6, side + 6, device=dev)
        cand = torch.zeros_like(now)
        arms = {"now": lambda: normalise_tensor(raw, mean, std, None, now[:, 3:-3, 3:-3], fused=False),
                "candidate": lambda: normalise_tensor(raw, mean, std, None, cand[:, 3:-3, 3:-3], fused=True)}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for fn in arms.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for k, fn in arms.items():
                times[k].append(wall_ms(fn, dev))
        n, c = (statistics.median(times[k]) for k in ("now", "candidate"))
        same = torch.equal(now.view(torch.int32), cand.view(torch.int32))
        rows.append((str(dtype).removeprefix("torch."), n, c, same))
    head = cpu_report_head("The device path's normalisation: four passes against two (normalise_tensor's fused)",
                           "normalise_device.py", argv, dev)
    lines = head + [f"- tile: {args.bands} bands x {side} x {side} pixels (tile {args.tile} + halo) into a padded "
                    f"float32 buffer; mean / std given; median of {args.reps}, arms alternated", "",
                    "| raw dtype | four passes (fused=False) ms | two passes (fused=True) ms | two passes' speed-up | "
                    "same bits |",
                    "|---|---:|---:|---:|---|"]
    lines += [f"| {d} | {n:.2f} | {c:.2f} | {n / c:.2f}x | {s} |" for d, n, c, s in rows]
    lines += ["", "Both arms check float windows for non-finite values the same way; only the arithmetic differs. "
              "The device path runs this once per tile: CUDA in two passes, any other device in four."]
    if not all(r[3] for r in rows):
        raise SystemExit("the two forms gave different bits:\n" + "\n".join(lines))
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
