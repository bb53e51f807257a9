"""Where a step of the Gluon spectral kernel spends its cycles, on a Hopper GPU.

The kernel reaches 15 % of the bf16 matrix peak where the tensor cores' own work would allow about twice that
(benchmarks/results/kernels-h200.md, "What the two unmet goals need"); which part of a step takes the rest (issuing
wgmmas, waiting for them, the epilogues on the CUDA cores, the barriers) decides what to build next. The kernel's
traced build (``kernels.spectral_gluon.traced_run``, ``TRACE``) reads the SM's cycle counter at eight points of
every step of every program (:data:`kernels.spectral_gluon.TRACE_POINTS`); this script runs it beside the untraced
kernel (the same bits: checked), and reports per segment the median cycles over every program's steps after the
first two, against the cycles the step's wgmmas would take at the Hopper SM's dense bf16 rate (4,096 FLOP per clock:
989 TFLOP/s on 132 SMs at 1.83 GHz). The SM clock during the run comes from the cycle counter against the global
nanosecond timer. Reading the counter costs the traced build a few instructions per point: its time is reported
beside the untraced kernel's.

    python benchmarks/gluon_trace.py --device cuda [--forms layer,pair] [--bands 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import results_out, write_report  # noqa: E402
from kernels.program import SpectralProgram  # noqa: E402

SM_FLOP_PER_CLOCK = 4096  # dense bf16 / fp16 wgmma, one Hopper SM (989.4 TFLOP/s = 132 SMs x 1.83 GHz x 4096)


def segments(trace: np.ndarray, groups: tuple[tuple[str, ...], ...] | None = None,
             skip: int = 2) -> dict[str, np.ndarray]:
    """Cycles of each segment of every step (``trace``: ``(programs, steps + 1, 8)`` from ``traced_run``): point k
    to point k + 1, the last to the next step's start. ``groups``: the points' names, column by column, one group
    per warpgroup that keeps its own steps (default: :data:`TRACE_POINTS`, one group of eight; ``step="ws"``:
    :data:`TRACE_POINTS_WS`). Steps before ``skip`` (the first touches cold caches) and the last (no next start)
    are left out. Also, per group, its whole step (``step``, or ``<warpgroup>: step``)."""
    from kernels.spectral_gluon import TRACE_POINTS

    out: dict[str, np.ndarray] = {}
    col = 0
    for names in groups or (TRACE_POINTS,):
        n = len(names)
        t = trace[:, :-1, col:col + n].astype(np.int64)
        ends = np.concatenate([t[:, :-1, 1:], t[:, 1:, :1]], axis=2)  # the next point; the next step's start
        d = (ends - t[:, :-1, :])[:, skip:, :]
        for k in range(n):
            out[f"{names[k]} -> {names[k + 1] if k + 1 < n else 'next step'}"] = d[:, :, k].ravel()
        prefix = names[0].split(":")[0] + ": " if ":" in names[0] else ""
        out[f"{prefix}step"] = d.sum(axis=2).ravel()
        col += n
    return out


def programs(trace: np.ndarray) -> dict[str, float]:
    """Per-program figures from the extra row: median cycles per program, the SM clock (cycles per ns of the
    global timer), how many programs an SM ran, and the spread of the programs' starts (ns)."""
    b = trace[:, -1, :].astype(np.int64)
    cycles, ns = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    per_sm = np.bincount(b[:, 4])
    per_sm = per_sm[per_sm > 0]
    return {"cycles": float(np.median(cycles)), "ghz": float(np.median(cycles / np.maximum(ns, 1))),
            "programs per SM (min)": float(per_sm.min()), "programs per SM (max)": float(per_sm.max()),
            "SMs": float(len(per_sm)), "first-to-last start (us)": float((b[:, 1].max() - b[:, 1].min()) / 1e3)}


def executed_flops_per_step(program: SpectralProgram, step: str) -> int:
    """FLOPs the wgmmas of one step of one 64-pixel program execute, padding included (what the tensor cores
    do, not what the stage needs)."""
    from kernels.spectral import _pack
    from kernels.spectral_gluon import _pair_constants

    m = _pack(program, torch.device("cpu"), torch.bfloat16)["meta"]
    nb, kt, wp, fp = m["NUM_BLOCKS"], m["KT"], m["WP"], m["FP"]
    if step == "pair":
        macs = 2 * nb * (kt + 1) * wp * 2 * wp + _pair_constants(m)["KS2_PAD"] * 2 * wp + 2 * wp * fp
    else:
        macs = 2 * nb * kt * wp * wp + m["KS_PAD"] * wp + wp * fp
    return 2 * 64 * macs


def render(head: list[str], rows: list[tuple]) -> list[str]:
    """The report: per form, the kernel's time traced and not, and the step's segments; a form whose probe
    failed, ``(name, why)``, says why."""
    lines = list(head)
    for row in rows:
        if len(row) == 2:
            lines += ["", f"## {row[0]}", "", f"Not run: {row[1]}"]
            continue
        name, times, segs, progs = row
        steps = [k for k in segs if k == "step" or k.endswith(": step")]
        step_med = float(np.median(segs[steps[0]]))  # warpgroups that hand steps over keep the same pace
        ideal = times["ideal cycles"]
        lines += ["", f"## {name}", "",
                  f"- kernel: {times['untraced']:.3f} ms untraced, {times['traced']:.3f} ms traced (median of "
                  f"do_bench); outputs equal: {times['same']}",
                  f"- SM clock {progs['ghz']:.3f} GHz; {progs['cycles']:,.0f} cycles per program (median); "
                  f"{progs['SMs']:.0f} SMs ran {progs['programs per SM (min)']:.0f}-"
                  f"{progs['programs per SM (max)']:.0f} programs each; starts spread over "
                  f"{progs['first-to-last start (us)']:.1f} us",
                  f"- a step: {step_med:,.0f} cycles (median); its wgmmas at the SM's dense rate: {ideal:,.0f} "
                  f"cycles ({ideal / step_med:.0%} of the step)", "",
                  "| segment | median cycles | p10 | p90 | share of the median step |", "|---|---:|---:|---:|---:|"]
        for seg, v in segs.items():
            if seg in steps and len(steps) == 1:
                continue
            med = float(np.median(v))
            lines.append(f"| {seg} | {med:,.0f} | {np.percentile(v, 10):,.0f} | {np.percentile(v, 90):,.0f} | "
                         f"{med / step_med:.0%} |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--forms", default="layer,pair,ws", help="names from benchmarks/kernels.py GLUON_FORMS")
    ap.add_argument("--bands", type=int, default=200)
    ap.add_argument("--pixels", type=int, default=0, help="0: the engine's GPU chunk (whole waves past 65,536)")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/gluon-trace-gpu.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "gluon-trace-gpu.md")
    dev = torch.device(args.device)
    from benchmarks.kernels import GLUON_FORMS, _probe_gluon
    from kernels.spectral import _random_program
    from kernels.spectral_gluon import TRACE_POINTS_WS, gluon_unsupported, spectral_stage_gluon, traced_run

    unknown = [f for f in args.forms.split(",") if f not in GLUON_FORMS]
    if unknown:
        raise SystemExit(f"unknown form(s) {unknown}; expected names from {sorted(GLUON_FORMS)}")
    if "wsp" in args.forms.split(","):  # several blocks a program: a trace's rows hold one
        raise SystemExit("--forms wsp: a trace holds one block of pixels per program; trace ws (the same step, a "
                         "program per block)")
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit(f"gluon_trace.py times the Gluon kernel on a Hopper GPU; got device {args.device!r} "
                         f"(CUDA available: {torch.cuda.is_available()}): run it on the GPU machine")
    import triton
    import triton.testing

    from hsi_engine.fused import _sm_count, gpu_chunk_pixels

    g = torch.Generator().manual_seed(0)
    prog = _random_program(args.bands, 24, 128, generator=g).to(dev)
    n = args.pixels or gpu_chunk_pixels(_sm_count(dev))
    x = torch.randn(n, args.bands, generator=g).to(dev, torch.bfloat16)
    why = gluon_unsupported(x, prog, "one")
    if why:
        raise SystemExit(f"the Gluon kernel cannot run here: {why}")
    import datetime as dt

    head = ["# Where a step of the Gluon spectral kernel spends its cycles", "",
            f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
            f"- device: {torch.cuda.get_device_name(dev)}, {_sm_count(dev)} SMs",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}",
            f"- command: `python benchmarks/gluon_trace.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
            f"- program: {args.bands} bands, width 24, 2 residual blocks (kernel 7), 128 features, random folded "
            f"weights; {n:,} pixels in bf16",
            "- cycles: the SM's `%clock64` at each point of `kernels.spectral_gluon.TRACE_POINTS` as each program's "
            "first thread (warp 0) passes it, every step after the first two; a segment ends where the next begins",
            "- each form runs here only after it ran once in a child process (a fault or a hang there costs only its "
            "own section); the report is rewritten after every form"]
    rows: list[tuple] = []
    for name in args.forms.split(","):
        waits, identity, step = GLUON_FORMS[name]
        label = f"{name} (waits={waits!r}, identity={identity!r}, step={step!r})"
        probe = _probe_gluon(args.bands, waits, identity, step)
        if probe:
            rows.append((label, f"the probe failed ({probe})"))
            write_report(args.out, render(head, rows))
            continue
        kw = dict(waits=waits, identity=identity, step=step)
        out = spectral_stage_gluon(x, prog, **kw)
        traced, trace = traced_run(x, prog, **kw)
        torch.cuda.synchronize(dev)
        times = {"untraced": triton.testing.do_bench(lambda: spectral_stage_gluon(x, prog, **kw), warmup=25, rep=200),
                 "traced": triton.testing.do_bench(lambda: traced_run(x, prog, **kw), warmup=25, rep=200),
                 "same": bool(torch.equal(out, traced)),
                 "ideal cycles": executed_flops_per_step(prog, step) / SM_FLOP_PER_CLOCK}
        tr = trace.cpu().numpy()
        segs = segments(tr, TRACE_POINTS_WS if step == "ws" else None)
        rows.append((label, times, segs, programs(tr)))
        write_report(args.out, render(head, rows))
    if not all(len(r) == 2 or r[1]["same"] for r in rows):
        raise SystemExit(f"a traced kernel's output differs from the untraced one's (see {args.out})")
    return Path(args.out)


if __name__ == "__main__":
    main()
