"""Tile normalisation: the whole-tile numpy formulation vs the per-band one the engine uses (ssrn.normalise).

One tile of ``--bands x (--tile + 6)^2`` pixels per dtype, written into the interior of a padded float32
buffer as the engine does; median of ``--reps`` runs after a warm-up.
Both must give the same bits; the run checks it.

    python benchmarks/normalise.py --tile 256 --bands 200
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, positive_int, results_out, write_report  # noqa: E402
from ssrn.normalise import normalise_into, normalise_into_reference  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=positive_int, default=256)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/normalise-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "normalise-cpu.md")
    side = args.tile + 6
    rng = np.random.default_rng(0)
    mean, std = rng.random(args.bands) * 1000, rng.random(args.bands) * 300 + 1
    rows = []
    for dtype in (np.uint16, np.int16, np.float32):
        scene = (rng.random((args.bands, side + 8, side + 8)) * 4000).astype(dtype)
        raw = scene[:, 4:4 + side, 4:4 + side]  # a window view, as the in-memory reader hands it over
        a = np.zeros((args.bands, side + 6, side + 6), np.float32)
        b = np.zeros_like(a)
        ref = _median_ms(lambda: normalise_into_reference(raw, mean, std, None, a[:, 3:-3, 3:-3]), args.reps)
        per = _median_ms(lambda: normalise_into(raw, mean, std, None, b[:, 3:-3, 3:-3]), args.reps)
        same = np.array_equal(a.view(np.uint32), b.view(np.uint32))
        mpix = side * side / 1e6
        rows.append((np.dtype(dtype).name, ref, per, ref / per, mpix / (per * 1e-3), same))
    cmd = "python benchmarks/normalise.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Tile normalisation on {cpu_name()}", "",
             f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- versions: python {platform.python_version()}, numpy {np.__version__}",
             f"- command: `{cmd.strip()}`",
             f"- tile: {args.bands} bands x {side} x {side} pixels (tile {args.tile} + halo), one thread, "
             f"median of {args.reps} after a warm-up", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| dtype | whole-tile numpy ms | per-band ms | speed-up | per-band Mpix/s | same bits |",
              "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {n} | {r:.1f} | {k:.1f} | {x:.1f}x | {m:.1f} | {s} |" for n, r, k, x, m, s in rows]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
