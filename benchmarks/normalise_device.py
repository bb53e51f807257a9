"""The device path's normalisation (``hsi_engine.normalise.normalise_tensor``, four passes per chunk of bands: cast
to float64, subtract in place, divide in place, copy to float32) against a two-pass candidate (raw -> float64
difference by type promotion, then the quotient rounded once to float32 as it is stored). Same float64 operations,
same bits: the run checks it. The candidate moves 24 bytes per value where the engine's form moves 56, but it runs
torch's mixed-dtype loops; on the 2-core dev CPU those made it slower (normalise-device-cpu.md), so the engine
keeps four passes until a GPU has timed both. One padded tile per dtype, median of ``--reps`` after a warm-up,
arms alternated.

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
from hsi_engine.normalise import normalise_tensor  # noqa: E402


def two_passes(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor,
               chunk_elems: int = 1 << 24) -> None:
    """The candidate for a window with mean / std and no nodata policy: ``normalise_tensor``'s finite-value
    check, then two passes."""
    b, h, w = raw.shape
    nonf = torch.zeros((h, w), dtype=torch.bool, device=raw.device)
    step = max(1, chunk_elems // max(1, h * w))
    for k0 in range(0, b, step):
        k1 = min(b, k0 + step)
        if raw.dtype.is_floating_point:
            nonf |= ~torch.isfinite(raw[k0:k1]).all(0)
        torch.div(torch.sub(raw[k0:k1], mean[k0:k1, None, None]), std[k0:k1, None, None], out=out[k0:k1])


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
        arms = {"now": lambda: normalise_tensor(raw, mean, std, None, now[:, 3:-3, 3:-3]),
                "candidate": lambda: two_passes(raw, mean, std, cand[:, 3:-3, 3:-3])}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for fn in arms.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for k, fn in arms.items():
                times[k].append(wall_ms(fn, dev))
        n, c = (statistics.median(times[k]) for k in ("now", "candidate"))
        same = torch.equal(now.view(torch.int32), cand.view(torch.int32))
        rows.append((str(dtype).removeprefix("torch."), n, c, same))
    head = cpu_report_head("The device path's normalisation: four passes (the engine's) against two",
                           "normalise_device.py", argv, dev)
    lines = head + [f"- tile: {args.bands} bands x {side} x {side} pixels (tile {args.tile} + halo) into a padded "
                    f"float32 buffer; mean / std given; median of {args.reps}, arms alternated", "",
                    "| raw dtype | four passes (the engine's) ms | two passes (candidate) ms | candidate speed-up | "
                    "same bits |",
                    "|---|---:|---:|---:|---|"]
    lines += [f"| {d} | {n:.2f} | {c:.2f} | {n / c:.2f}x | {s} |" for d, n, c, s in rows]
    lines += ["", "Both arms check float windows for non-finite values the same way; only the arithmetic differs. "
              "The device path runs this once per tile."]
    if not all(r[3] for r in rows):
        raise SystemExit("the two forms gave different bits:\n" + "\n".join(lines))
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
