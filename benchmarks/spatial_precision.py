"""What running the spatial stage in the engine's low precision costs in agreement, on the shipped scene.

The low-precision engines (``precision="bfloat16"`` / ``"float16"``) run the spectral stage in that dtype and the
per-window spatial blocks in float32 (TF32 on CUDA) by default; ``FusedSSRN(spatial_precision=precision)`` runs
those in it too. This classifies the shipped Indian Pines scene with the shipped weights in every combination
and counts the pixels whose class differs from the exact float32 map, and the accuracy on the labelled pixels
the demo scores. Speed is measured by ``benchmarks/kernels.py`` (spatial rows and an engine row).

    python benchmarks/spatial_precision.py                 # CPU
    python benchmarks/spatial_precision.py --device cuda   # the GPU's own numerics (TF32, cuBLAS)
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import cpu_name, write_report  # noqa: E402


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


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/spatial-precision-<device>.md)")
    args = ap.parse_args(argv)

    import hsi_engine
    from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE, _load_labels, evaluation_mask

    model = hsi_engine.load_model(SHIPPED_MODEL)
    scene = hsi_engine.open_scene(SHIPPED_SCENE)
    labels = _load_labels(SHIPPED_SCENE)
    mask, _ = evaluation_mask(labels, dict(model.meta))
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"

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
    command = " ".join(["python benchmarks/spatial_precision.py", *(argv if argv is not None else sys.argv[1:])])
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
    lines += ["", "Spatial precision `float32` is the default (on CUDA its GEMMs and convs run in TF32 when the "
              "engine's precision is low); the engine's own precision is `FusedSSRN(spatial_precision=...)`."]
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"spatial-precision-{device.type}.md"
    return write_report(out, lines)


if __name__ == "__main__":
    main()
