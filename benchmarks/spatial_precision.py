"""What running the spatial stage in the engine's low precision costs in agreement, and what it buys in speed.

The low-precision engines (``precision="bfloat16"`` / ``"float16"``) run the spectral stage in that dtype; the
per-window spatial blocks run in float32 (TF32 on CUDA) or, with ``FusedSSRN(spatial_precision=precision)``, in
that dtype too (the default ``auto`` does so for bfloat16 on a CPU with AMX-BF16). This classifies the shipped
Indian Pines scene with the shipped weights in every combination and counts the pixels whose class differs from
the exact float32 map, and the accuracy on the labelled pixels the demo scores; then (``--time-side``) times the
engines end to end on a random scene, alternated run by run. The report is written after the agreement table
and again after the timings.

    python benchmarks/spatial_precision.py                 # CPU
    python benchmarks/spatial_precision.py --device cuda --time-side 0   # agreement with the GPU's own numerics
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (bench_device, cpu_name, int_at_least, positive_int, results_out,  # noqa: E402
                                timed_run, write_report)
from kernels.dispatch import BACKENDS  # noqa: E402


def classify_map(scene, model, *, device: str, backend: str, precision: str, spatial: str,
                 spatial_precision: str) -> np.ndarray:
    """The class map of ``scene`` from an engine built with these options (as ``classify`` builds it)."""
    from hsi_engine.api import _Job
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.runner import ArraySink, run_plan

    job = _Job(scene, model, tile=None, device=device, backend=backend, precision=precision, nodata=None)
    engine = FusedSSRN(job.model, backend=backend, device=job.device, precision=precision, spatial=spatial,
                       spatial_precision=spatial_precision)
    sink = ArraySink(job.height, job.width, job.classes)
    run_plan(job.da, job.plan, engine, sink, mean=job.mean, std=job.std, nodata=job.nodata, progress=False)
    return sink.labels.copy()


def time_engine(side: int, reps: int, *, device: str, backend: str) -> list[tuple[str, str, str, float, float]]:
    """``(precision, spatial precision, spatial form, median s, min s)`` per run of the engine on a random ``200 x side x side``
    scene in memory: float32, and each low precision with its spatial stage in float32 and in that precision;
    the engines alternate run by run."""
    import statistics

    from hsi_engine.api import _Job
    from hsi_engine.fused import FusedSSRN
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig.from_name("indian_pines")).eval()
    scene = torch.randn(200, side, side, generator=torch.Generator().manual_seed(5)).numpy()
    # (precision, spatial precision, spatial form, max_pixels): the defaults, and beside them the bf16 spatial
    # stage as convs and as dense GEMMs at 512 windows per call (max_pixels given bounds the windows too)
    cases = [("float32", "float32", "auto", None), ("bfloat16", "float32", "auto", None),
             ("bfloat16", "bfloat16", "auto", None), ("bfloat16", "bfloat16", "conv", None),
             ("bfloat16", "bfloat16", "dense", 512), ("float16", "float32", "auto", None),
             ("float16", "float16", "auto", None)]
    jobs, engines = {}, {}
    for precision, sp, form, mp in cases:
        job = jobs.setdefault(precision, _Job(scene, model, tile=None, device=device, backend=backend,
                                              precision=precision, nodata=None))
        engines[precision, sp, form, mp] = FusedSSRN(job.model, backend=backend, device=job.device,
                                                     precision=precision, spatial_precision=sp, spatial=form,
                                                     max_pixels=mp)
    times: dict[tuple, list[float]] = {c: [] for c in cases}
    for _ in range(reps + 1):  # the first round warms up
        for (precision, sp, form, mp), engine in engines.items():
            times[precision, sp, form, mp].append(timed_run(jobs[precision], engine)[0])
    rows = []
    for (precision, sp, form, mp), ts in times.items():
        e = engines[precision, sp, form, mp]
        where = f"{e.spatial_form}{' (auto)' if form == 'auto' else ''}, {e.max_windows} windows per call"
        rows.append((precision, sp, where, statistics.median(ts[1:]), min(ts[1:])))
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    # both checked here: the timing comes after minutes of maps, and a bad value once failed only then
    ap.add_argument("--time-side", type=int_at_least(0, "0: no timing"), default=384, help="side of the random "
                    "scene the bf16 engine is timed on, spatial stage in float32 and in bfloat16 (0: no timing)")
    ap.add_argument("--reps", type=positive_int, default=3)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/"
                    "spatial-precision-<device>.md, refused when that file exists)")
    args = ap.parse_args(argv)
    kind = bench_device(args.device).type
    out = results_out(args.out, REPO / "benchmarks" / "results" / f"spatial-precision-{kind}.md")

    import hsi_engine
    from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE, _load_labels, evaluation_mask

    model = hsi_engine.load_model(SHIPPED_MODEL)
    scene = hsi_engine.open_scene(SHIPPED_SCENE)
    labels = _load_labels(SHIPPED_SCENE)
    mask, _ = evaluation_mask(labels, dict(model.meta))
    device = bench_device(args.device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        from hsi_engine.fused import _cpu_has_amx_bf16

        where = (f"{cpu_name()}, {torch.get_num_threads()} threads, AMX-BF16 "
                 f"{'yes' if _cpu_has_amx_bf16() else 'no'}")

    def run(precision: str, spatial: str, spatial_precision: str) -> np.ndarray:
        return classify_map(scene, model, device=args.device, backend=args.backend, precision=precision,
                            spatial=spatial, spatial_precision=spatial_precision)

    exact = run("float32", "conv", "float32")
    rows = [("float32", "conv", "float32", exact)]
    for precision in ("bfloat16", "float16"):
        for spatial in ("conv", "dense"):
            for sp in ("float32", precision):
                rows.append((precision, spatial, sp, run(precision, spatial, sp)))
                print(f"{precision} {spatial} {sp} done", flush=True)

    n = exact.size
    command = ("python benchmarks/spatial_precision.py "
               + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    lines = ["# Spatial stage precision: agreement of the low-precision engines with the exact map", "",
             f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
             f"- device: {where}",
             f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
             f"- command: `{command}`",
             f"- scene: the shipped Indian Pines cube ({scene.shape[1]} x {scene.shape[2]} x {scene.shape[0]}, "
             f"{n} pixels); model: the shipped weights; backend {args.backend}; default tile",
             f"- accuracy: on the {int(mask.sum())} labelled pixels the demo scores (not used in training)",
             "", "| precision (spectral stage) | spatial form | spatial precision | pixels unlike the float32 map | "
             "agreement | accuracy % |", "|---|---|---|---:|---:|---:|"]
    for precision, spatial, sp, m in rows:
        diff = int((m != exact).sum())
        lines.append(f"| {precision} | {spatial} | {sp} | {diff} | {1 - diff / n:.5f} | "
                     f"{100 * float((m[mask] == labels[mask]).mean()):.2f} |")
    lines += ["", "`FusedSSRN(spatial_precision=...)`: `float32` runs the per-window blocks in float32 (TF32 GEMMs "
              "and convs on CUDA when the engine's precision is low), the engine's precision runs them in it "
              "(weights cast once, windows per call); `auto` (the default) picks the engine's low precision on CUDA "
              "and bfloat16 for a bfloat16 engine on a CPU with AMX-BF16 units, float32 elsewhere. The spatial "
              "form `auto` is then the dense GEMMs (at 2,048 windows per call on such a CPU)."]
    write_report(out, lines)  # the agreement table survives a timing cut short
    if args.time_side:
        timed = time_engine(args.time_side, args.reps, device=args.device, backend=args.backend)
        base = timed[0][3]
        lines += ["", "## The engine end to end, spatial stage in float32 and in the engine's precision", "",
                  f"Random {args.time_side} x {args.time_side} x 200 float32 scene in memory, random-init Indian "
                  f"Pines SSRN, default tile and readers, backend {args.backend}; the engines alternate run by "
                  f"run, {args.reps} timed runs each after one warm-up round.", "",
                  "| precision | spatial precision | spatial form | s per run (median) | min | pixels/s | "
                  "x float32 engine |", "|---|---|---|---:|---:|---:|---:|"]
        for precision, sp, form, med, lo in timed:
            lines.append(f"| {precision} | {sp} | {form} | {med:.3f} | {lo:.3f} | {args.time_side ** 2 / med:,.0f} | "
                         f"{base / med:.2f} |")
    return write_report(out, lines)


if __name__ == "__main__":
    main()
