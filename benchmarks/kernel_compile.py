"""What Triton builds for the fused spectral kernel on Hopper, compiled offline: no GPU needed.

For every config the autotuner chooses among (:data:`kernels.spectral._CONFIGS`), lowers the kernel for
sm_90 with the Triton installed here and the ptxas bundled in its wheel, and reports registers, spill bytes
(``ptxas -v``), shared memory, and what one band-position step of the main loop does: shared-memory stagings
of dot operands (``ttg.local_alloc``), operand loads from shared memory (``ttg.local_load``), waits on
asynchronous wgmma, per step (the loop body divided by its UNROLL), plus static counts of telling PTX
instructions in the whole kernel (barriers, MMAs, ``ldmatrix`` / ``stmatrix``, shared stores).

These are facts about the compiled code, not timings: which config is fastest is measured on a GPU
(``benchmarks/kernels.py`` times each one pinned). The GPU machine's Triton may be older than the one here
and compile differently; ``kernels.py`` records what was built there (``triton_kernel_report``).

    python benchmarks/kernel_compile.py            # writes benchmarks/results/kernel-compile-sm90.md
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks._common import results_out, write_report  # noqa: E402
from kernels import spectral  # noqa: E402
from kernels.offline import (compile_gluon, compile_triton, loop_body, ptxas_report, ptxas_usage,  # noqa: E402
                             sass_loop)

_PTX_OPS = ("bar.sync", "mma.sync", "wgmma.mma_async", "wgmma.wait_group", "ldmatrix", "stmatrix", "st.shared",
            "ld.shared")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


NOTES = [
    "## How to read it",
    "",
    "- **stagings / step**: a dot operand that is not already in registers in the layout the MMA wants is "
    "written to shared memory first (`local_alloc`), with a barrier before it is read. The activation windows "
    "are loop-carried tuples in the accumulator layout, and Triton stages a loop-carried operand at every use: "
    "the plain form (KCAT=False, UNROLL=1) stages each window tile once per tap, 7 times over its life, "
    "28 times per step for two blocks (+ stem, reduce and the new tile).",
    "- **KCAT=True** concatenates a conv's taps along K (`tl.join` + `reshape`, one (BLOCK_P, 32 x 8) operand): "
    "one staging and one dot per conv, so far fewer barriers and, in the wgmma form (BLOCK_P=64), one wait per "
    "conv instead of one per tap. The price: K padded from 7 x 32 = 224 to 256 (+14 % MMA work, the "
    "`mma.sync` / `ldmatrix` counts) and 16-byte `st.shared` stores in place of `stmatrix`.",
    "- **UNROLL=2** runs two band positions per loop iteration: tiles made in the first step feed the "
    "second step's dots from registers, so stagings per step drop from 31 to 19, at the cost of more live "
    "registers (255 and a 16-byte spill at BLOCK_P=16).",
    "- **SCATTER=True** turns each conv around: the tile made this step multiplies all 7 taps at once and adds "
    "into the fp32 partial sums of the 7 outputs it feeds, so no activation is a loop-carried dot operand. "
    "With BLOCK_P=64 the wgmma takes its A operand from registers: 2 stagings per step (the stem's input and "
    "the reduce's operand) instead of 26. The partial sums cost registers (2 x 6 fp32 tiles per block).",
    "- BLOCK_P=64 lowers to wgmma (`warp_group_dot`), every other shape to `mma.sync`; the 64-row forms spill "
    "1-2 KB of registers to local memory.",
    "- The weights are hoisted: all 28 tap matrices are staged into shared memory once, before the loop "
    "(the `shared` column), in every form.",
]


def step_counts(ttgir: str, unroll: int) -> dict[str, float]:
    """Per band-position step: ops in the main loop's body (``scf.for`` .. ``scf.yield``) over UNROLL."""
    body = loop_body(ttgir)
    ops = ("ttg.local_alloc", "ttg.local_load", "ttng.warp_group_dot_wait", "ttg.convert_layout")
    return {op.split(".")[-1]: body.count(op + " ") / unroll for op in ops}


def ptx_counts(ptx: str) -> dict[str, int]:
    c: collections.Counter = collections.Counter()
    for line in ptx.splitlines():
        ins = line.strip().split()[0] if line.strip() else ""
        for op in _PTX_OPS:
            if ins.startswith(op):
                c[op] += 1
    return {op: c[op] for op in _PTX_OPS}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/kernel-compile-sm90.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    args.out = results_out(args.out, REPO / "benchmarks" / "results" / "kernel-compile-sm90.md")
    import triton

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cache = tempfile.TemporaryDirectory()  # a cold cache, so the compile column times a real compile
    os.environ["TRITON_CACHE_DIR"] = cache.name
    configs = [("autotuned", c) for c in spectral._CONFIGS] + [("trial", c) for c in spectral._TRIAL_CONFIGS]
    if args.dtype == "fp32":
        keep = spectral._prune_configs([c for _, c in configs], {"x_ptr": torch.zeros(1)}, PRECISION="ieee")
        configs = [(kind, c) for kind, c in configs if c in keep]
    cmd = "python benchmarks/kernel_compile.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [f"# The fused spectral kernel compiled offline for Hopper (sm_90), {args.dtype}", "",
             f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- machine: {platform.processor() or platform.machine()} CPU, no GPU; "
             f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__} "
             "(its bundled ptxas)",
             f"- command: `{cmd.strip()}`",
             "- program: 200 bands, stem 24 k7 s2 -> 97 positions, 2 residual blocks (24, k7), reduce -> 128",
             "- per step: ops in the main loop body divided by UNROLL (one band position of every layer); "
             "PTX counts are static, whole kernel",
             "- pointer arguments compiled as 16-byte aligned, as Triton's launcher specialises torch's tensors at run "
             "time (reports before 2026-11-26 15:10 compiled them unaligned: scalar loads, more registers)", "",
             "These are properties of the compiled code, not timings. Which config is fastest is measured on a "
             "GPU by `benchmarks/kernels.py` (each config pinned) and by the autotuner.", "",
             "| set | BLOCK_P | warps | stages | UNROLL | KCAT | SCATTER | CHAINS | PIPE | compile s | registers | "
             "spill stores (B) | shared (B) "
             "| stagings / step | smem operand loads / step | wgmma waits / step | layout conversions / step | "
             + " | ".join(_PTX_OPS) + " |",
             "|" + "---|" * (17 + len(_PTX_OPS))]
    for kind, c in configs:
        t0 = time.perf_counter()
        k = compile_triton(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, dtype=args.dtype)
        secs = time.perf_counter() - t0
        regs, spill = ptxas_usage(k.asm["ptx"])
        st = step_counts(k.asm["ttgir"], c.kwargs["UNROLL"])
        pc = ptx_counts(k.asm["ptx"])
        row = (f"| {kind} | {c.kwargs['BLOCK_P']} | {c.num_warps} | {c.num_stages} | {c.kwargs['UNROLL']} | "
               f"{c.kwargs['KCAT']} | {c.kwargs['SCATTER']} | {c.kwargs.get('CHAINS', 1)} | "
               f"{c.kwargs.get('PIPE', False)} | "
               f"{secs:.1f} | {regs} | {spill} | {k.metadata.shared} | "
               f"{st['local_alloc']:g} | {st['local_load']:g} | {st['warp_group_dot_wait']:g} | "
               f"{st['convert_layout']:g} | " + " | ".join(str(pc[op]) for op in _PTX_OPS) + " |")
        lines.append(row)
        print(row, file=sys.stderr, flush=True)
    lines += gluon_section(args.dtype)
    cache.cleanup()
    return write_report(args.out, lines + [""] + NOTES)


def gluon_section(dtype: str) -> list[str]:
    """The Gluon kernel (kernels/spectral_gluon.py), compiled the same way, when this Triton can."""
    from kernels import spectral_gluon as sg

    head = ["", "## The Gluon kernel (`kernels/spectral_gluon.py`: activations in shared-memory rings)", ""]
    if dtype == "fp32":
        return head + ["Not built: the Gluon kernel runs bf16 / fp16 only."]
    rows = ["| step | waits | identity | BLOCK_P | warps | compile s | registers | spill stores (B) | shared (B) | "
            "wgmma waits (in order) | ptxas notes | SASS loop instructions / band position | HGMMA / position | "
            "spill loads in the loop / position | " + " | ".join(_PTX_OPS) + " |", "|" + "---|" * (14 + len(_PTX_OPS))]
    forms = [(w, "epilogue", "one") for w in sg.WAITS] + [(w, "mma", "one") for w in sg.WAITS] + [
        ("layer", "epilogue", "pair"), ("layer", "epilogue", "ws")]
    for waits, identity, step in forms:
        try:
            t0 = time.perf_counter()
            k = compile_gluon(dtype=dtype, waits=waits, identity=identity, step=step)
            secs = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - report why, keep the rest of the report
            rows.append(f"| {step} | {waits} | {identity} | not built here: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300] if str(e) else ''} |")
            continue
        ptx = k.asm["ptx"]
        regs, spill = ptxas_usage(ptx)
        notes = ", ".join(sorted(set(re.findall(r"\((C75\d\d)\)", ptxas_report(ptx) or "")))) or "none"
        waits_seq = " ".join(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx))
        pc = ptx_counts(ptx)
        loop = sass_loop(k.asm["cubin"]) or {}
        per = 2 if step == "pair" else 1

        def each(key: str) -> str:
            return f"{loop[key] / per:g}" if key in loop else "?"
        rows.append(f"| {step} | {waits} | {identity} | {sg.BLOCK_P} | {k.metadata.num_warps} | {secs:.1f} | {regs} | "
                    f"{spill} | "
                    f"{k.metadata.shared} | {waits_seq} | {notes} | {each('instructions')} | {each('HGMMA')} | "
                    f"{each('local loads')} | " + " | ".join(str(pc[op]) for op in _PTX_OPS) + " |")
    return head + rows + [
        "", "Each band position: 30 wgmmas that read their A tiles from the rings in place; every activation tile "
        "is written to shared memory once. `phase` waits once per phase (two `wgmma.wait_group` 0); `layer` and "
        "`stem_last` wait for one layer at a time (the numbers are how many wgmma groups may stay in flight). "
        "`identity=mma` adds each block's identity inside conv2's sum (one more wgmma against an identity matrix, "
        "no epilogue load: no `ldmatrix`); not yet timed on a GPU. "
        "ptxas notes: C7515 = ptxas serialized every wgmma of the kernel, C7517 = it injected a wait (both from "
        "registers touched while a wgmma that uses them is in flight).",
        "", "`step=pair` runs two band positions of every layer per step: each conv's output pair in one (64, 2 x 32) "
        "accumulator, fed by 8 wgmmas of N = 64 (two tap tiles stacked, K-major slices of one weight buffer with zero "
        "tiles between the convs) where the one-position kernel issues 2 x 7 of N = 32: the HGMMA count per position "
        "falls, each twice as wide, and half as many steps, waits and barriers. Not yet timed on a GPU. The SASS "
        "columns count the main loop (its longest backward branch) of the `cuobjdump -sass` listing, per band "
        "position.",
        "", "`step=ws` splits the one-position step over two warpgroups (`gl.warp_specialize`, mbarrier hand-overs): "
        "the stem and conv2s in one, the conv1s and the reduce in the other, so each one's epilogues run while the "
        "tensor cores take the other's wgmmas; 8 warps, the second warpgroup's registers capped by setmaxnreg. Its "
        "waits list both warpgroups' loops, and so do the SASS columns (the listing's longest backward branch spans "
        "both loops: all 59 HGMMA of a step), shared between two instruction streams. Not yet run on a GPU."]


if __name__ == "__main__":
    main()
