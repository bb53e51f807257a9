"""The demo as users run it, exact float32 against bfloat16, alternated run by run in one process tree.

Each run is ``hsi-engine demo --device D --precision P --out TMP`` in a fresh process (start-up and model load
excluded from its figure: the demo's own ``pixels_per_second`` times the classification); the report gives
every run's pixels/s and held-out accuracy, the medians and their ratio, and how many of the scene's pixels
change class between the two precisions.

    python benchmarks/demo_precision.py --out /tmp/demo-precision-cpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_report_head, results_out, write_report  # noqa: E402


def demo_run(precision: str, device: str, out: Path) -> dict:
    """One ``hsi-engine demo`` in a fresh process: its report.json, and the class map it wrote."""
    code = "import sys; from hsi_engine.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "demo", "--device", device, "--precision", precision,
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"hsi-engine demo --precision {precision} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text())


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=2, help="runs per precision, alternated (default 2)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/demo-precision-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: expected at least 1")
    out = results_out(args.out, REPO / "benchmarks" / "results" / "demo-precision-cpu.md")
    import rasterio

    rows, maps = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for precision in ("float32", "bfloat16"):
                d = Path(tmp) / f"{precision}-{i}"
                rep = demo_run(precision, args.device, d)
                if rep.get("precision") != precision:
                    raise SystemExit(f"hsi-engine demo --precision {precision} reports precision "
                                     f"{rep.get('precision')!r}: the option did not reach the engine")
                rows.append((i + 1, precision, rep["pixels_per_second"], rep["overall_accuracy"],
                             rep["average_accuracy"], rep["kappa"]))
                with rasterio.open(d / "classmap.tif") as f:
                    maps.setdefault(precision, f.read(1))
    med = {p: statistics.median(r[2] for r in rows if r[1] == p) for p in ("float32", "bfloat16")}
    changed = int((maps["float32"] != maps["bfloat16"]).sum())
    lines = cpu_report_head("The demo in float32 and bfloat16", "demo_precision.py", argv, device=args.device)
    lines += ["- scene: the shipped Indian Pines (145 x 145 x 200) and shipped weights; pixels/s is the demo's "
              "own figure (classification only), each run a fresh process", "",
              "| run | precision | pixels/s | OA | AA | kappa |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {i} | {p} | {px:,.0f} | {oa * 100:.2f} | {aa * 100:.2f} | {k * 100:.2f} |"
              for i, p, px, oa, aa, k in rows]
    lines += ["", f"Median bfloat16 / float32: {med['bfloat16']:,.0f} / {med['float32']:,.0f} px/s = "
              f"**{med['bfloat16'] / med['float32']:.2f}x**; {changed} of {maps['float32'].size:,} pixels change "
              "class (first run of each)."]
    return write_report(out, lines)


if __name__ == "__main__":
    main()
