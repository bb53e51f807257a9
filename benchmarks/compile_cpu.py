"""Eager against torch.compile for the whole engine on a large scene on CPU (is compiling worth it there?).

The compiled spectral stage runs ~1.4x the eager one in isolation (``kernels-cpu.md``); this asks whether
that survives a real run: the same synthetic scene (``benchmarks/scene.py``'s int16 zarr store: Indian Pines
class-mean spectra in blobs, plus noise; shipped model), ``classify_to_file`` with each backend in a fresh
subprocess, compile warm-up included, maps compared. It decided that ``auto`` stays eager on CPU.

    python benchmarks/compile_cpu.py --size 1536
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # benchmarks/kernels.py must not shadow the kernels package

from benchmarks._common import cpu_name, int_at_least, results_out, write_report  # noqa: E402
from benchmarks.scene import SHIPPED_MODEL, build_scene, read_map, scene_path  # noqa: E402


def worker(store: str, out: str, backend: str) -> dict:
    import logging

    from hsi_engine.api import classify_to_file
    from kernels.dispatch import resolve_backend

    fell_back = []

    class Catch(logging.Handler):  # the compile backend's one warning when it had to run eager instead
        def emit(self, record: logging.LogRecord) -> None:
            fell_back.append(record.getMessage())

    logging.getLogger("hsi_engine.fused").addHandler(Catch(logging.WARNING))
    t0 = time.perf_counter()
    classify_to_file(store, SHIPPED_MODEL, out, backend=backend, device="cpu", progress=False, overwrite=True)
    ran = resolve_backend(backend, "cpu")
    return {"wall_s": time.perf_counter() - t0, "resolved": f"eager ({fell_back[0]})" if fell_back else ran}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        print(json.dumps(worker(*argv[1:4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the engine classifies any scene of a pixel or more (its halo is zero-padded): 0 is the only size too small
    ap.add_argument("--size", type=int_at_least(1, "a scene of at least one pixel"), default=1536,
                    help="scene side in pixels")
    ap.add_argument("--work", default="/tmp/hsi-bench")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/compile-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "compile-cpu.md")
    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = build_scene(scene_path(work, args.size, 200, 2), args.size, 200, seed=2)
    px = args.size ** 2
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows, maps = [], {}
    for backend in ("eager", "compile"):
        out = work / f"compile-map-{args.size}-{backend}.zarr"
        p = subprocess.run([sys.executable, __file__, "--worker", str(store), str(out), backend], capture_output=True,
                           text=True, env=env, cwd=REPO)
        if p.returncode:
            raise RuntimeError(p.stderr[-3000:])
        r = json.loads(p.stdout.strip().splitlines()[-1])
        maps[backend] = read_map(out)
        rows.append((backend, r["resolved"], r["wall_s"], px / r["wall_s"]))
        print(rows[-1], flush=True)
    diff = int((maps["eager"] != maps["compile"]).sum())
    import dask
    import zarr

    lines = ["# Eager against torch.compile, whole engine, large scene (CPU)", "",
             f"- device: {cpu_name()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; no GPU",
             f"- versions: torch {torch.__version__}, numpy {np.__version__}, zarr {zarr.__version__}, "
             f"dask {dask.__version__}, python {platform.python_version()}",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- command: `python benchmarks/compile_cpu.py {shlex.join(argv)}`",
             f"- scene: {args.size} x {args.size} x 200 int16 zarr ({px:,} pixels), benchmarks/scene.py's "
             "synthetic scene; shipped Indian Pines model; `classify_to_file` into a zarr class map in a fresh "
             "process each, wall time including opening the store, loading the model and compiling", "",
             "| backend asked | ran | wall s | pixels/s |", "|---|---|---:|---:|"]
    lines += [f"| {b} | {r} | {w:.1f} | {v:,.0f} |" for b, r, w, v in rows]
    lines += ["", f"compile / eager speed: {rows[0][2] / rows[1][2]:.2f}x; maps differ on {diff:,} of {px:,} pixels "
              "(float32 both; the compiled stage sums in another order)", ""]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
