"""A GeoTIFF scene classified into a GeoTIFF map: GDAL's block cache with and without room for the scene's blocks.

The GeoTIFF writer caps GDAL's block cache (process-wide) while it writes a tile, so that the map's own blocks
follow the width, not the scene. Capped without room for the scene's blocks the reader threads have in flight,
every write evicted them and the readers decoded them again. This runs the engine's pipeline on a pixel-interleaved
GeoTIFF scene (``--size`` pixels a side, ``--bands`` bands, 256-pixel blocks) into a GeoTIFF map both ways,
alternated in one process, with the network replaced by zeros (``--network`` keeps it: slower, same ratio of
reading), and checks the maps are the same.

    python benchmarks/geotiff_read_cache.py --size 512 --bands 200 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_report_head, positive_int, results_out, write_report  # noqa: E402


def _scene(path: Path, size: int, bands: int) -> Path:
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=bands, dtype="float32", tiled=True,
                       blockxsize=256, blockysize=256, interleave="pixel", crs="EPSG:32633",
                       transform=Affine(30, 0, 500000, 0, -30, 5800000)) as f:
        for y in range(0, size, 256):
            h = min(256, size - y)
            f.write(rng.normal(1000, 200, (bands, h, size)).astype(np.float32),
                    window=rasterio.windows.Window(0, y, size, h))
    return path


def ratio_words(before: float, now: float, better: str, worse: str) -> str:
    """``before / now`` worded as staging.py words it: "1.50x faster" when above 1, "1.50x slower" (the inverse)
    below it, never "0.67x faster"."""
    return f"{before / now:.2f}x {better}" if now <= before else f"{now / before:.2f}x {worse}"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=positive_int, default=512)
    ap.add_argument("--bands", type=positive_int, default=200)
    ap.add_argument("--reps", type=positive_int, default=3)
    ap.add_argument("--network", action="store_true", help="run the network too (default: zeros in its place)")
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/geotiff-read-cache-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "geotiff-read-cache-cpu.md")
    import rasterio
    import torch

    import hsi_engine
    import hsi_engine.runner as runner
    import ssrn
    from hsi_engine.fused import FusedSSRN

    model = ssrn.SSRN(ssrn.SSRNConfig(bands=args.bands, classes=8))
    model.meta = {"mean": [1000.0] * args.bands, "std": [200.0] * args.bands}

    def zeros(self, x):
        return torch.zeros((self.classes, x.shape[1] - 2 * self.halo, x.shape[2] - 2 * self.halo))

    real, network = runner.read_cache_bytes, FusedSSRN.__call__
    times: dict[str, list[tuple[float, float]]] = {"with room": [], "without": []}
    maps = {}
    # both patches are undone on the way out: main() also runs in the test process (test_benchmark_smoke.py)
    with tempfile.TemporaryDirectory() as d:
        try:
            if not args.network:
                FusedSSRN.__call__ = zeros
            scene = _scene(Path(d) / "scene.tif", args.size, args.bands)
            # round -1 warms both arms up untimed (the first run ever was twice as slow: a cold page cache,
            # allocator and GDAL); the order then alternates round by round, the warm-up's first arm second
            for rep in range(-1, args.reps):
                for name in (list(times) if rep % 2 else list(times)[::-1]):
                    runner.read_cache_bytes = real if name == "with room" else (lambda *a, **k: 0)
                    out = Path(d) / f"{name.replace(' ', '_')}.tif"
                    t0, c0 = time.perf_counter(), time.process_time()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        hsi_engine.classify_to_file(scene, model, out, overwrite=True, progress=False)
                    if rep >= 0:
                        times[name].append((time.perf_counter() - t0, time.process_time() - c0))
                    with rasterio.open(out) as f:
                        maps[name] = f.read(1)
        finally:
            runner.read_cache_bytes, FusedSSRN.__call__ = real, network
    same = all(np.array_equal(maps["with room"], m) for m in maps.values())
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    lines = cpu_report_head("GeoTIFF scene to GeoTIFF map: GDAL's block cache with room for the scene's blocks",
                            "geotiff_read_cache.py", argv)
    lines += [f"- scene: {args.size} x {args.size} px, {args.bands} bands float32, 256-px blocks, pixel-interleaved; "
              f"{'the network' if args.network else 'the network replaced by zeros (the pipeline alone)'}; "
              f"median of {args.reps} after an untimed warm-up of each, alternated in one process; maps identical: "
              f"{same}", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| GDAL cache while writing | wall s | CPU s | runs (wall) |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {w:.2f} | {c:.2f} | {', '.join(f'{a:.2f}' for a, _ in times[k])} |"
              for k, (w, c) in med.items()]
    (wall0, cpu0), (wall1, cpu1) = med["without"], med["with room"]
    lines += ["", f"with room / without: wall {ratio_words(wall0, wall1, 'faster', 'slower')}, CPU "
              f"{ratio_words(cpu0, cpu1, 'less', 'more')}"]
    return write_report(args.out, lines)


if __name__ == "__main__":
    main()
