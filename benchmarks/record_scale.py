"""A resumable output's completion record and store at scale: the ways of reading and creating them, side by side.

A 50,000-pixel square scene at tile 128 has 152,881 tiles; the record holds one chunk file per tile (so that a
cluster's workers never write the same chunk). Read through zarr, every cell's chunk is looked up (~0.6 ms each,
also for an empty record); ``read_record`` reads the chunk files that exist, and a cluster task reads its own
cell. The output store was created with a dask graph of one task per tile; it is created from one-chunk arrays
now, with the same zarr chunks. Each pair runs in this process, one after the other, on the same store.

    python benchmarks/record_scale.py --tiles 150 --marked 0.1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_report_head, positive_int, results_out, write_report  # noqa: E402

BLOCK, CLASSES = 16, 16


def _timed(fn, repeat: int = 3) -> float:
    """The best of ``repeat`` runs of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _to_zarr_create(path: Path, n: int, per_tile: bool) -> None:
    """The output store's metadata as the writer makes it (classes, float16 probabilities), from dask arrays of one
    chunk per tile (``per_tile``, as before) or of one chunk, the zarr chunks per tile either way."""
    import dask.array as dsa
    import numpy as np
    import xarray as xr

    side = n * BLOCK
    yx = (side, side)
    chunks = (BLOCK, BLOCK) if per_tile else -1
    ds = xr.Dataset({"classes": (("y", "x"), dsa.zeros(yx, chunks=chunks, dtype=np.uint8)),
                     "probabilities": (("class", "y", "x"), dsa.full((CLASSES, *yx), np.nan, dtype=np.float16,
                                                                      chunks=(CLASSES, BLOCK, BLOCK) if per_tile
                                                                      else -1))})
    ds["classes"].encoding.update(chunks=(BLOCK, BLOCK), fill_value=0)
    ds["probabilities"].encoding.update(chunks=(CLASSES, BLOCK, BLOCK), fill_value=np.nan)
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=positive_int, default=150, help="tiles a side (record of N x N cells)")
    parser.add_argument("--marked", type=float, default=0.1, help="fraction of the tiles marked done")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/record-scale-cpu.md)")
    args = parser.parse_args(argv)
    import numpy as np
    import zarr

    from hsi_engine.resume import RECORD, ResumableZarrWriter, read_record, read_record_cell

    n = args.tiles
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t_old = _timed(lambda: _to_zarr_create(Path(d) / "old.zarr", n, per_tile=True), repeat=1)
        t_new = _timed(lambda: _to_zarr_create(Path(d) / "new.zarr", n, per_tile=False), repeat=1)
        rows.append(("create the output store (to_zarr, compute=False)", t_old, t_new))
        out = Path(d) / "map.zarr"
        w = ResumableZarrWriter(out, grid=(n, n), fingerprint={"bench": 1}, resume=False, height=n * BLOCK,
                                width=n * BLOCK, n_classes=CLASSES, block=BLOCK)
        store = w.partial
        full = lambda: np.asarray(zarr.open_array(str(store), path=RECORD, mode="r")[...])  # noqa: E731
        rows.append(("read the empty record", _timed(full, 1), _timed(lambda: read_record(store))))
        run = w.start_run("bench")
        rng = np.random.default_rng(0)
        cells = rng.choice(n * n, size=int(args.marked * n * n), replace=False)
        for c in cells:
            w.mark(int(c) // n, int(c) % n, run)
        assert (full() == read_record(store)).all()  # the two reads agree, cell for cell
        rows.append((f"read the record, {len(cells):,} of {n * n:,} tiles marked", _timed(full, 1),
                     _timed(lambda: read_record(store))))
        rows.append(("a cluster task's check of its own tile", _timed(full, 1),
                     _timed(lambda: read_record_cell(store, n // 2, n // 2))))
        w.abort()
    import dask
    import xarray

    lines = cpu_report_head("Completion record and output store at scale", "record_scale.py", argv)
    lines.append(f"- libraries: zarr {zarr.__version__}, xarray {xarray.__version__}, dask {dask.__version__}; "
                 "a local disk")
    lines += ["", f"Record of {n} x {n} tiles ({n * n:,} chunk files at most), tiles of {BLOCK} px, {CLASSES} classes "
              "with float16 probabilities; seconds, best of 3 for the new ways (the old ones once: they are slow).",
              "", "| step | before (whole-record zarr read / a task per tile) | now | ratio |", "|---|---|---|---|"]
    for what, old, new in rows:
        lines.append(f"| {what} | {old:.3f} s | {new:.4f} s | {old / max(new, 1e-9):,.0f}x |")
    return write_report(results_out(args.out, REPO / "benchmarks/results/record-scale-cpu.md"), lines)


if __name__ == "__main__":
    main()
