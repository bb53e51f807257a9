"""Engine vs patch mode on a large synthetic scene: pixels/s, identical maps, peak host RSS at 1x and 16x.

The scene is an int16 zarr store (band, y, x) whose spectra are the real Indian Pines class-mean spectra
(from the shipped scene) laid out in blobs of classes, plus noise. Every measurement runs in a fresh
subprocess so its peak RSS (``resource.getrusage``) is its own:

- patch mode: the seed's forward (cut each pixel's 7x7 patch from the zero-padded normalised scene, run
  ``SSRN.forward``) on a random SUBSET of pixels (it is ~30x slower); its pixels/s is extrapolated from the
  subset, and its labels are compared with the engine's map on those pixels;
- engine eager and engine compile on the 1x scene (``classify_to_file`` into a zarr class map), and engine
  eager again with the decoded-block cache on (CPU default: off; the row uses the budget CUDA runs get);
- engine eager on a 16x larger scene (4x each side), for the bounded-memory check.

    python benchmarks/scene.py [--size 256] [--bands 200] [--tile 128] [--patch-pixels 192]
                               [--backends eager,compile] [--no-16x] [--out benchmarks/results/scene-cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # benchmarks/kernels.py must not shadow the kernels package

from benchmarks._common import cpu_name, int_at_least, positive_int, results_out  # noqa: E402
SHIPPED_SCENE = REPO / "hsi_engine" / "data" / "indian_pines" / "indian_pines.h5"
SHIPPED_MODEL = REPO / "hsi_engine" / "data" / "models" / "ssrn_indian_pines"


def class_spectra(bands: int) -> np.ndarray:
    """(16, bands) Indian Pines class-mean spectra (raw DN), resampled along bands when ``bands != 200``."""
    import h5py

    with h5py.File(SHIPPED_SCENE, "r") as f:
        cube = f["cube"][...].astype(np.float64)
        labels = f["labels"][...]
    means = np.stack([cube[:, labels == k].mean(axis=1) for k in range(1, 17)])  # (16, 200)
    if bands != means.shape[1]:
        src = np.linspace(0, 1, means.shape[1])
        means = np.stack([np.interp(np.linspace(0, 1, bands), src, m) for m in means])
    return means


def build_scene(path: Path, size: int, bands: int, seed: int = 0, chunk: int = 128) -> Path:
    """Write a ``size x size`` int16 zarr scene chunk row by chunk row (never the whole cube in memory)."""
    import zarr

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    spectra = class_spectra(bands)
    coarse = rng.integers(0, 16, size=(size // 16 + 2, size // 16 + 2))  # blobs of 16 x 16 pixels
    tmp = path.with_name(path.name + ".tmp")
    z = zarr.create_array(str(tmp), shape=(bands, size, size), chunks=(bands, chunk, chunk), dtype="int16",
                          zarr_format=3, overwrite=True)
    for y0 in range(0, size, chunk):
        y1 = min(size, y0 + chunk)
        yy = np.arange(y0, y1)[:, None] // 16
        xx = np.arange(size)[None, :] // 16
        cls = coarse[yy, xx]  # (rows, size)
        block = spectra[cls].transpose(2, 0, 1)  # (bands, rows, size)
        block = block * rng.normal(1.0, 0.03, size=(1, y1 - y0, size)) + rng.normal(0, 40, size=block.shape)
        z[:, y0:y1, :] = np.clip(block, -32768, 32767).astype(np.int16)
    z.attrs["dims"] = ["band", "y", "x"]
    tmp.rename(path)
    return path


def scene_path(work: Path, size: int, bands: int, seed: int) -> Path:
    """Where :func:`build_scene` caches a scene: its size, bands and seed in the name, since the store is reused
    whenever the path exists (compile_cpu.py builds the same size with another seed, and once read this one's
    scene from the shared cache)."""
    return work / f"scene-{size}-{bands}-seed{seed}.zarr"


def backend_list(text: str) -> list[str]:
    """An argparse ``type`` for ``--backends``: comma-separated engine backends, each known and named once (a
    typo must end the run here, not in a worker minutes in)."""
    from kernels.dispatch import BACKENDS

    names = [b.strip() for b in text.split(",")]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"a backend named twice in {text!r}")
    return names


def bench_model(work: Path, bands: int) -> Path:
    """The shipped model when bands == 200 and it exists; else a seeded random SSRN with IN statistics."""
    if bands == 200 and SHIPPED_MODEL.is_dir():
        return SHIPPED_MODEL
    path = work / f"model-{bands}"
    if path.is_dir():
        return path
    import torch

    from ssrn.checkpoint import save_model
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    m = SSRN(SSRNConfig.from_name("indian_pines", bands=bands)).eval()
    spectra = class_spectra(bands)
    m.meta = {"mean": spectra.mean(0).tolist(), "std": (spectra.std(0) + 100.0).tolist(),
              "class_names": [f"class {i}" for i in range(1, 17)]}
    return save_model(m, path)


# ------------------------------------------------------------------------------------------------
# workers (one per subprocess)


def worker_engine(store: str, model: str, out: str, backend: str, tile: int, cache_blocks: int | None) -> dict:
    import torch  # noqa: F401

    from hsi_engine.api import classify_to_file

    t0 = time.perf_counter()
    classify_to_file(store, model, out, tile=tile, backend=backend, device="cpu", progress=False,
                     overwrite=True, cache_blocks=cache_blocks)
    wall = time.perf_counter() - t0
    return {"wall_s": wall}


def worker_patch(store: str, model: str, pixels: int, seed: int) -> dict:
    import torch

    from hsi_engine.io import open_scene
    from ssrn.checkpoint import load_model

    m = load_model(model)
    da = open_scene(store)
    _, h, w = da.shape
    halo = m.config.halo
    rng = np.random.default_rng(seed)
    idx = rng.choice(h * w, size=pixels, replace=False)
    ys, xs = idx // w, idx % w
    mean = np.asarray(m.meta["mean"], np.float64)[:, None, None]
    std = np.asarray(m.meta["std"], np.float64)[:, None, None]
    patches = []
    for y, x in zip(ys, xs):  # cut each pixel's patch from the zero-padded normalised scene (not timed)
        y0, y1, x0, x1 = max(0, y - halo), min(h, y + halo + 1), max(0, x - halo), min(w, x + halo + 1)
        raw = np.asarray(da.data[:, y0:y1, x0:x1].compute(scheduler="synchronous"))
        block = torch.from_numpy(((raw - mean) / std).astype(np.float32))
        padded = torch.nn.functional.pad(block, (halo, halo, halo, halo))  # pads only matter at the border
        py, px = y - y0 + halo, x - x0 + halo
        patches.append(padded[:, py - halo:py + halo + 1, px - halo:px + halo + 1])
    patches = torch.stack(patches)  # (n, bands, P, P)
    labels = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, pixels, 64):  # the seed's batched patch-mode forward (timed: compute only)
            labels += (m(patches[i:i + 64]).argmax(1) + 1).tolist()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "pixels": pixels, "ys": ys.tolist(), "xs": xs.tolist(), "labels": labels}


def run_worker(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env,
                         cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "engine":
        res = worker_engine(argv[1], argv[2], argv[3], argv[4], int(argv[5]),
                            int(argv[6]) if len(argv) > 6 else None)
    elif kind == "patch":
        res = worker_patch(argv[1], argv[2], int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))
    return 0


# ------------------------------------------------------------------------------------------------


def read_map(path: Path) -> np.ndarray:
    import xarray as xr

    ds = xr.open_zarr(path)
    name = next(v for v in ("labels", "class", "classes", "class_map") if v in ds.data_vars)
    return ds[name].values


def engine_lines(rows: list[dict], big: dict | None, patch_pps: float, ref: str) -> list[str]:
    """The report's engine rows (each with ``same``: its map equals ``ref``'s) and closing lines. The figures
    the goals name (x patch mode, 16x / 1x RSS) are the 1x eager row's, looked up by name wherever --backends
    put it (the first row's once: a compile-first run reported compile's ratio as eager's); without an eager
    row they are left out, and the report says so."""
    eager = next((r for r in rows if r["backend"] == "eager" and "label" not in r), None)
    lines = []
    for r in rows:
        lines.append(f"| {r.get('label', 'engine ' + r['backend'])} (classify_to_file -> zarr) | {r['scene']} | "
                     f"{r['pps']:.0f} | {r['pps'] / patch_pps:.1f} | patch-mode agreement {r['patch_agree']}; "
                     f"identical to {ref}: {r['same']} | {r['peak_rss_mb']:.0f} |")
    if big is not None:
        lines.append(f"| engine eager | {big['scene']} (16x) | {big['pps']:.0f} | {big['pps'] / patch_pps:.1f} | "
                     f"- | {big['peak_rss_mb']:.0f} |")
        lines += ["", f"Peak RSS 16x / 1x (eager): {big['peak_rss_mb'] / eager['peak_rss_mb']:.2f} (goal <= 1.2)."
                  if eager is not None else "No 1x eager row (--backends has no eager): no 16x / 1x RSS ratio."]
    summary = (f"Engine eager / patch mode: {eager['pps'] / patch_pps:.1f}x (goal >= 30x with identical maps)."
               if eager is not None else "No engine eager row (--backends has no eager): no eager / patch mode ratio.")
    return lines + ["", f"{summary} Engine wall time includes opening the store, model load and writing the zarr "
                    "class map; the compile row includes torch.compile warm-up.", ""]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=positive_int, default=256, help="1x scene side in pixels (16x: 4x the side)")
    ap.add_argument("--bands", type=int_at_least(7, "the stem convolution's kernel"), default=200)
    ap.add_argument("--tile", type=positive_int, default=128)
    ap.add_argument("--patch-pixels", type=positive_int, default=192,
                    help="patch-mode subset (pixels/s extrapolated); at most the scene's size^2 pixels")
    ap.add_argument("--backends", type=backend_list, default="eager,compile")
    ap.add_argument("--no-16x", action="store_true")
    ap.add_argument("--no-cache-row", action="store_true", help="skip the eager row with the block cache on")
    ap.add_argument("--work", default="/tmp/hsi-bench")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/scene-cpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    if args.patch_pixels > args.size ** 2:  # the subset is drawn without replacement from the 1x scene
        ap.error(f"argument --patch-pixels: expected at most --size^2 = {args.size ** 2} pixels, got "
                 f"{args.patch_pixels}")
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "scene-cpu.md")
    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    s1 = build_scene(scene_path(work, args.size, args.bands, 0), args.size, args.bands, seed=0)
    model = bench_model(work, args.bands)
    print(f"scene {s1}, model {model}", flush=True)
    px1 = args.size ** 2
    rows = []
    patch = run_worker(["patch", str(s1), str(model), str(args.patch_pixels), "0"])
    patch_pps = patch["pixels"] / patch["wall_s"]
    print(f"patch mode: {patch_pps:.1f} px/s (subset of {patch['pixels']})", flush=True)
    maps = {}
    for backend in args.backends:
        out = work / f"map-{args.size}-{backend}.zarr"
        r = run_worker(["engine", str(s1), str(model), str(out), backend, str(args.tile)])
        maps[backend] = read_map(out)
        r.update(backend=backend, scene=f"{args.size} x {args.size}", pixels=px1, pps=px1 / r["wall_s"])
        sub = maps[backend][patch["ys"], patch["xs"]]
        r["patch_agree"] = f"{int((sub == np.asarray(patch['labels'])).sum())}/{patch['pixels']}"
        rows.append(r)
        print(r, flush=True)
    if "eager" in maps and not args.no_cache_row:  # the same run with the decoded-block cache on
        from hsi_engine.runner import cache_blocks_for

        n = cache_blocks_for((args.tile, args.tile), 3, 2)(128, 128)  # CUDA's default budget, 2 readers
        out = work / f"map-{args.size}-eager-cache.zarr"
        r = run_worker(["engine", str(s1), str(model), str(out), "eager", str(args.tile), str(n)])
        m = read_map(out)
        r.update(backend="eager", label=f"engine eager, block cache on (cache_blocks={n})",
                 scene=f"{args.size} x {args.size}", pixels=px1, pps=px1 / r["wall_s"],
                 patch_agree=f"{int((m[patch['ys'], patch['xs']] == np.asarray(patch['labels'])).sum())}/"
                             f"{patch['pixels']}", same=bool(np.array_equal(m, maps["eager"])))
        rows.append(r)
        print(r, flush=True)
    big = None
    if not args.no_16x:
        size16 = args.size * 4
        s16 = build_scene(scene_path(work, size16, args.bands, 1), size16, args.bands, seed=1)
        out = work / f"map-{size16}-eager.zarr"
        big = run_worker(["engine", str(s16), str(model), str(out), "eager", str(args.tile)])
        big.update(backend="eager", scene=f"{size16} x {size16}", pixels=size16 ** 2, pps=size16 ** 2 / big["wall_s"])
        print(big, flush=True)
    load1 = os.getloadavg()
    ref = "eager" if "eager" in maps else args.backends[0]  # what every map is compared with
    for r in rows:
        r.setdefault("same", bool(np.array_equal(maps[r["backend"]], maps[ref])))
    import dask
    import xarray
    import zarr

    lines = [
        "# Scene benchmark: engine vs patch mode (CPU)",
        "",
        f"- device: {cpu_name()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
        "no GPU",
        f"- versions: torch {torch.__version__}, numpy {np.__version__}, zarr {zarr.__version__}, "
        f"dask {dask.__version__}, xarray {xarray.__version__}, python {platform.python_version()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python benchmarks/scene.py {shlex.join(argv)}`",
        f"- scene: synthetic int16 zarr (band, y, x), {args.bands} bands, chunks ({args.bands}, 128, 128), "
        "Indian Pines class-mean spectra in 16 x 16 blobs + noise; model: "
        f"{'shipped ssrn_indian_pines' if model == SHIPPED_MODEL else 'seeded random SSRN (IN preset)'}; "
        f"tile {args.tile}",
        f"- load average before / after: {load0[0]:.2f} / {load1[0]:.2f} on 2 cores shared with other "
        "engineers' jobs (tests, training): absolute pixels/s are lower bounds and noisy; ratios within "
        "one run are the figure of merit",
        "",
        "| mode | scene | pixels/s | x patch mode | map | peak RSS (MB) |",
        "|---|---|---:|---:|---|---:|",
        f"| patch mode (SSRN.forward per 7x7 patch) | {args.size} x {args.size} | {patch_pps:.1f} "
        f"(extrapolated from {patch['pixels']} random pixels, forward only: patch cutting and I/O not timed) | 1.0 | reference | {patch['peak_rss_mb']:.0f} |",
    ]
    lines += engine_lines(rows, big, patch_pps, ref)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
