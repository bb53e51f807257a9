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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks._common import write_report  # noqa: E402
from kernels import spectral  # noqa: E402

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


def compile_sm90(config, dtype: str = "bf16", bands: int = 200, blocks: int = 2):
    """``(compiled kernel, seconds)`` for one autotune ``config`` on the Indian Pines-shaped program."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    program = spectral._random_program(bands, 24, 128, blocks=blocks, generator=torch.Generator().manual_seed(0))
    pk = spectral._pack(program, torch.device("cpu"), _DTYPES[dtype])
    meta = dict(pk["meta"], PRECISION="ieee", INTERP_BF16=False, **config.kwargs)
    ptrs = ["x_ptr", "out_ptr", "stem_w_ptr", "stem_b_ptr", "conv_w_ptr", "conv_b_ptr", "pre_ptr", "post_ptr",
            "red_w_ptr", "red_b_ptr"]
    kinds = ["x", "x", "x", "f", "x", "f", "f", "f", "x", "f"]
    sig = {n: (f"*{dtype}" if k == "x" else "*fp32") for n, k in zip(ptrs, kinds)}
    sig.update({n: "i32" for n in ["P", "B", "D", "F", "stride_xp", "stride_xb", "stride_op", "stride_of"]})
    sig.update({k: "constexpr" for k in meta})
    t0 = time.perf_counter()
    k = triton.compile(ASTSource(fn=spectral._spectral_stage_kernel, signature=sig, constexprs=meta),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    return k, time.perf_counter() - t0


def ptxas_usage(ptx: str) -> tuple[int | None, int | None]:
    """``(registers, spill-store bytes)`` from the bundled ptxas's ``-v`` report for sm_90a."""
    try:  # where Triton keeps its ptxas differs between releases
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            ptxas = get_ptxas(90).path
        except TypeError:
            ptxas = get_ptxas().path
    except Exception:  # noqa: BLE001 - an older Triton: its knob, else give up on this column
        try:
            from triton import knobs

            ptxas = knobs.nvidia.ptxas.path
        except Exception:  # noqa: BLE001
            return None, None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                           capture_output=True, text=True)
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def step_counts(ttgir: str, unroll: int) -> dict[str, float]:
    """Per band-position step: ops in the main loop's body (``scf.for`` .. ``scf.yield``) over UNROLL."""
    start = ttgir.index("scf.for")
    body = ttgir[start:ttgir.index("scf.yield", start)]
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
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kernel-compile-sm90.md"))
    args = ap.parse_args(argv)
    import triton

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cache = tempfile.TemporaryDirectory()  # a cold cache, so the compile column times a real compile
    os.environ["TRITON_CACHE_DIR"] = cache.name
    configs = spectral._CONFIGS
    if args.dtype == "fp32":
        configs = spectral._prune_configs(configs, {"x_ptr": torch.zeros(1)}, PRECISION="ieee")
    cmd = "python benchmarks/kernel_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# The fused spectral kernel compiled offline for Hopper (sm_90), {args.dtype}", "",
             f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- machine: {platform.processor() or platform.machine()} CPU, no GPU; "
             f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__} "
             "(its bundled ptxas)",
             f"- command: `{cmd.strip()}`",
             "- program: 200 bands, stem 24 k7 s2 -> 97 positions, 2 residual blocks (24, k7), reduce -> 128",
             "- per step: ops in the main loop body divided by UNROLL (one band position of every layer); "
             "PTX counts are static, whole kernel", "",
             "These are properties of the compiled code, not timings. Which config is fastest is measured on a "
             "GPU by `benchmarks/kernels.py` (each config pinned) and by the autotuner.", "",
             "| BLOCK_P | warps | stages | UNROLL | KCAT | SCATTER | compile s | registers | spill stores (B) | shared (B) "
             "| stagings / step | smem operand loads / step | wgmma waits / step | layout conversions / step | "
             + " | ".join(_PTX_OPS) + " |",
             "|" + "---|" * (15 + len(_PTX_OPS))]
    for c in configs:
        k, secs = compile_sm90(c, args.dtype)
        regs, spill = ptxas_usage(k.asm["ptx"])
        st = step_counts(k.asm["ttgir"], c.kwargs["UNROLL"])
        pc = ptx_counts(k.asm["ptx"])
        row = (f"| {c.kwargs['BLOCK_P']} | {c.num_warps} | {c.num_stages} | {c.kwargs['UNROLL']} | "
               f"{c.kwargs['KCAT']} | {c.kwargs['SCATTER']} | {secs:.1f} | {regs} | {spill} | {k.metadata.shared} | "
               f"{st['local_alloc']:g} | {st['local_load']:g} | {st['warp_group_dot_wait']:g} | "
               f"{st['convert_layout']:g} | " + " | ".join(str(pc[op]) for op in _PTX_OPS) + " |")
        lines.append(row)
        print(row, file=sys.stderr, flush=True)
    lines += gluon_section(args.dtype)
    cache.cleanup()
    return write_report(args.out, lines + [""] + NOTES)


def gluon_section(dtype: str) -> list[str]:
    """The experimental Gluon kernel (kernels/spectral_gluon.py), compiled the same way, when this Triton can."""
    from kernels import spectral_gluon as sg

    head = ["", "## The experimental Gluon kernel (`kernels/spectral_gluon.py`: activations in shared-memory rings)", ""]
    if dtype == "fp32":
        return head + ["Not built: the Gluon kernel runs bf16 / fp16 only."]
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.experimental.gluon import GluonASTSource

        if sg.GLUON_ERROR is not None:
            raise RuntimeError(sg.GLUON_ERROR)
        program = spectral._random_program(200, 24, 128, generator=torch.Generator().manual_seed(0))
        m = spectral._pack(program, torch.device("cpu"), _DTYPES[dtype])["meta"]
        const = {k: m[k] for k in ("STEM_STRIDE", "KS", "KS_PAD", "KT", "NUM_BLOCKS", "WP", "FP", "STEM_RELU",
                                    "RELU1_MASK", "RELU2_MASK", "BLOCK_RELU_MASK", "REDUCE_RELU")}
        const.update(RING=spectral._next_pow2(m["KT"] + 1, 2), BP=sg.BLOCK_P)
        kinds = {"x_ptr": "x", "out_ptr": "x", "stem_w_ptr": "x", "stem_b_ptr": "f", "conv_w_ptr": "x",
                 "conv_b_ptr": "f", "red_w_ptr": "x", "red_b_ptr": "f"}
        sig = {n: (f"*{dtype}" if k == "x" else "*fp32") for n, k in kinds.items()}
        sig.update({n: "i32" for n in ["P", "B", "D", "F", "stride_xp", "stride_xb", "stride_op", "stride_of"]})
        sig.update({k: "constexpr" for k in const})
        t0 = time.perf_counter()
        k = triton.compile(GluonASTSource(fn=sg._gluon_stage_kernel, signature=sig, constexprs=const),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        secs = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report why, keep the rest of the report
        return head + [f"Not built here: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"]
    regs, spill = ptxas_usage(k.asm["ptx"])
    pc = ptx_counts(k.asm["ptx"])
    return head + ["| BLOCK_P | warps | compile s | registers | spill stores (B) | shared (B) | "
                   + " | ".join(_PTX_OPS) + " |", "|" + "---|" * (6 + len(_PTX_OPS)),
                   f"| {sg.BLOCK_P} | 4 | {secs:.1f} | {regs} | {spill} | {k.metadata.shared} | "
                   + " | ".join(str(pc[op]) for op in _PTX_OPS) + " |", "",
                   "Each band position: two `wgmma.wait_group` (one per phase) for 30 wgmmas that read their A "
                   "tiles from the rings in place; every activation tile is written to shared memory once."]


if __name__ == "__main__":
    main()
