"""The dense spatial stage's epilogues: conv1's bias and ReLU inside the GEMM (``torch._addmm_activation``, cuBLASLt's
RELU_BIAS epilogue on CUDA) and the residual add and ReLU in place, against the separate ops the engine ran before
(``addmm`` then ``relu``; ``relu(h + s)`` into a new buffer). ReLU commutes with rounding to the output dtype, so
both give the same bits: the run checks it. Windows of a random-init Indian Pines SSRN (24 channels, 5 x 5),
as many per call as the engine passes (``--windows``), median of ``--reps`` after a warm-up, arms alternated.

    python benchmarks/spatial_epilogue.py [--device cuda] [--windows 2048] [--reps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (bench_device, cpu_report_head, doc_description, gpu_label,  # noqa: E402
                                positive_int, results_out, wall_ms, write_report)
from hsi_engine.fused import DenseSpatial, dense_spatial, exact_fp32, fold_spatial, spatial_dense  # noqa: E402


def separate_epilogues(win: torch.Tensor, ds: DenseSpatial) -> torch.Tensor:
    """``spatial_dense`` as it was: every bias-ReLU and residual add-ReLU its own op, each into a new buffer."""
    x = win.reshape(win.shape[0], -1)
    for pre, t1, c1, t2, c2, sc, relu in ds.blocks:
        h = F.relu(x * pre[0] + pre[1]) if pre is not None else x
        h = F.relu(torch.addmm(c1, h, t1))
        h = torch.addmm(c2, h, t2)
        s = torch.addmm(sc[1], x, sc[0]) if sc is not None else x
        x = F.relu(h + s) if relu else h + s
    for scale, shift in ds.post:
        x = F.relu(x * scale + shift)
    return torch.addmm(ds.head_b, x, ds.head_w)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=doc_description(__doc__))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--windows", type=positive_int, default=2048, help="windows per call (the bf16 engine's default: 2048)")
    ap.add_argument("--reps", type=positive_int, default=20)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/"
                    "spatial-epilogue-<device>.md, refused when that file exists)")
    args = ap.parse_args(argv)
    dev = bench_device(args.device)
    name = "cpu" if dev.type == "cpu" else gpu_label(torch.cuda.get_device_name(dev))
    out = results_out(args.out, REPO / "benchmarks" / "results" / f"spatial-epilogue-{name}.md")
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    torch.manual_seed(0)
    model = SSRN(SSRNConfig.from_name("indian_pines")).eval()
    sp = fold_spatial(model)
    win = model.config.patch - 2
    ds32 = dense_spatial(sp, win).to(dev)
    x32 = torch.randn(args.windows, sp.stem_w.shape[0], win, win, generator=torch.Generator().manual_seed(3)).to(dev)

    rows = []
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if dev.type == "cuda" else [])
    for dtype in dtypes:
        ds, x = ds32.to(dtype=dtype), x32.to(dtype)
        arms = {"separate": lambda: separate_epilogues(x, ds), "fused": lambda: spatial_dense(x, ds)}
        with exact_fp32() if dev.type == "cuda" else contextlib.nullcontext():
            outs = {k: fn() for k, fn in arms.items()}  # warm-up, and the outputs compared
            times: dict[str, list[float]] = {k: [] for k in arms}
            for _ in range(args.reps):
                for k, fn in arms.items():
                    times[k].append(wall_ms(fn, dev))
        s, f = (statistics.median(times[k]) for k in arms)
        rows.append((str(dtype).removeprefix("torch."), s, f, torch.equal(outs["separate"], outs["fused"])))
    head = cpu_report_head("The dense spatial stage: epilogues fused into the GEMM and in place, against separate ops",
                           "spatial_epilogue.py", argv, dev)
    lines = head + [f"- {args.windows} windows of 24 channels x {win} x {win} per call (random-init Indian Pines "
                    f"SSRN, its two spatial blocks and head); median of {args.reps}, arms alternated after a "
                    "warm-up; float32 rows with TF32 off", "",
                    "| dtype | separate ops ms | fused epilogues ms | speed-up | same bits |", "|---|---:|---:|---:|---|"]
    lines += [f"| {d} | {s:.3f} | {f:.3f} | {s / f:.2f}x | {same} |" for d, s, f, same in rows]
    if not all(r[3] for r in rows):
        raise SystemExit("the two forms gave different bits:\n" + "\n".join(lines))
    return write_report(out, lines)


if __name__ == "__main__":
    main()
