"""Peak memory of the GeoTIFF writer with probabilities: GDAL's block cache capped (the writer's default) vs not.

Each case runs in its own process (GDAL's cache and the allocator's high-water mark are per process): an
engine-shaped run of 128-pixel tiles (16 classes, float16 probabilities and confidence) into an N x N map, then
the COG commit; peak RSS sampled every 50 ms. Uncapped, GDAL holds written blocks until the file closes (up to
5 % of RAM), so memory grew with the scene; capped, with its width.

    python benchmarks/writer_memory.py --sizes 1000 3000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_report_head, positive_int, results_out, write_report  # noqa: E402

CLASSES, TILE = 16, 128


def _case(n: int, capped: bool, out: Path) -> dict:
    """One run in this process: returns peak RSS (MiB) while writing tiles and during the commit, and times."""
    import numpy as np
    import psutil

    from hsi_engine import writers

    if not capped:
        writers.GeoTiffClassMapWriter._gdal_cache = lambda self: contextlib.nullcontext()
    proc, peak, phase = psutil.Process(), {"tiles": 0, "commit": 0}, ["tiles"]

    def sample() -> None:
        while True:
            peak[phase[0]] = max(peak[phase[0]], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    commit = writers.GeoTiffClassMapWriter._commit
    times = {}

    def timed_commit(self) -> None:
        phase[0] = "commit"
        t0 = time.perf_counter()
        commit(self)
        times["commit_s"] = time.perf_counter() - t0

    writers.GeoTiffClassMapWriter._commit = timed_commit
    rng = np.random.default_rng(0)
    base = proc.memory_info().rss
    t0 = time.perf_counter()
    with writers.open_writer(out, height=n, width=n, n_classes=CLASSES, probabilities="float16", confidence=True,
                             overwrite=True) as w:
        for y in range(0, n, TILE):
            for x in range(0, n, TILE):
                h, ww = min(TILE, n - y), min(TILE, n - x)
                logits = rng.normal(size=(CLASSES, h, ww)).astype(np.float32)
                p = np.exp(logits) / np.exp(logits).sum(0)
                w.write(y, x, (p.argmax(0) + 1).astype(np.uint8), p, p.max(0))
    return dict(n=n, capped=capped, base_mib=base >> 20, tiles_mib=peak["tiles"] >> 20,
                commit_mib=peak["commit"] >> 20, total_s=time.perf_counter() - t0, **times)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=positive_int, nargs="+", default=[1000, 3000], help="map sides in pixels")
    ap.add_argument("--work", default="/tmp/hsi-writer-memory", help="directory for the maps written")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/writer-memory-cpu.md, "
                    "refused when that file exists)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.case:
        n, capped = args.case.split(",")
        print(json.dumps(_case(int(n), capped == "1", work / f"map{n}.tif")))
        return work
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "writer-memory-cpu.md")
    rows = []
    for n in args.sizes:
        for capped in (False, True):
            proc = subprocess.run([sys.executable, __file__, "--work", str(work), "--case", f"{n},{int(capped)}"],
                                  capture_output=True, text=True)
            if proc.returncode:  # the child's own reason, not a bare CalledProcessError
                raise SystemExit(f"the {n:,}^2 case ({'capped' if capped else 'GDAL default'} cache) failed (exit "
                                 f"{proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lines = cpu_report_head("GeoTIFF writer memory with probabilities", "writer_memory.py", argv)
    lines += ["", f"{CLASSES} classes, float16 probabilities + confidence, {TILE}-pixel tiles in plan order, then "
              "the COG commit; peak RSS of a fresh process (its baseline: imports). The cap (two block rows of every "
              "band, at least 64 MiB) trades write time for memory: GDAL flushes and re-reads blocks it kept before.",
              "",
              "| map | GDAL cache | baseline MiB | peak writing tiles MiB | peak in commit MiB | commit s | total s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']:,}^2 | {'capped' if r['capped'] else 'GDAL default'} | {r['base_mib']} | {r['tiles_mib']} | "
              f"{r['commit_mib']} | {r['commit_s']:.1f} | {r['total_s']:.1f} |" for r in rows]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
