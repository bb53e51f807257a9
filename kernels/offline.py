"""Lower the spectral kernels for Hopper (sm_90) without a GPU: Triton's compiler and the ptxas in its wheel.

What the compiled code holds (registers, spills, shared memory, which MMA instructions, how often a step
stages operands through shared memory) can be read on any machine; tests and ``benchmarks/kernel_compile.py``
use it. Timings still need a GPU.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import torch

from .program import SpectralProgram

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _signature(fn, pointers: dict[str, str], constexprs: dict, dtype: str) -> dict[str, str]:
    # pointers: name -> "x" (the input's dtype), "f" (float32) or "i64"; every other argument an i32 size or a
    # constexpr; in the kernel's argument order
    sig = {n: {"x": f"*{dtype}", "f": "*fp32", "i64": "*i64"}[kind] for n, kind in pointers.items()}
    sig.update(dict.fromkeys(constexprs, "constexpr"))
    return {n: sig.get(n, "i32") for n in fn.arg_names}


def _aligned(fn, pointers: dict[str, str]) -> dict:
    """Specialisation attributes that say every pointer argument is 16-byte aligned, as Triton's launcher finds
    torch's allocations at run time (without them the offline build cannot vectorise its loads)."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}


def default_program(blocks: int = 2, form: str = "paper", stage_norms: int = 0) -> SpectralProgram:
    """The Indian Pines-shaped program the compile reports use: 200 bands, width 24, 128 features."""
    from .spectral import _random_program

    return _random_program(200, 24, 128, blocks=blocks, form=form, stage_norms=stage_norms,
                           generator=torch.Generator().manual_seed(0))


def compile_triton(variant: dict, *, num_warps: int = 4, num_stages: int = 1, dtype: str = "bf16",
                   program: SpectralProgram | None = None, precision: str = "ieee"):
    """The fused Triton kernel for one ``variant`` (BLOCK_P, UNROLL, KCAT, SCATTER; optional CHAINS, PIPE),
    compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import spectral

    program = program if program is not None else default_program()
    meta = dict(spectral._pack(program, torch.device("cpu"), _DTYPES[dtype])["meta"], PRECISION=precision,
                INTERP_BF16=False, **(dict(CHAINS=1, PIPE=False) | variant))
    pointers = dict(x_ptr="x", out_ptr="x", stem_w_ptr="x", stem_b_ptr="f", conv_w_ptr="x", conv_b_ptr="f",
                    pre_ptr="f", post_ptr="f", red_w_ptr="x", red_b_ptr="f")
    src = ASTSource(fn=spectral._spectral_stage_kernel, signature=_signature(spectral._spectral_stage_kernel, pointers, meta, dtype), constexprs=meta,
                    attrs=_aligned(spectral._spectral_stage_kernel, pointers))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def compile_gluon(*, dtype: str = "bf16", program: SpectralProgram | None = None, waits: str | None = None,
                  identity: str | None = None, step: str | None = None, trace: bool = False):
    """The Gluon kernel (kernels/spectral_gluon.py) in one of its forms, compiled for sm_90 (raises when this
    Triton has no Gluon or cannot compile it offline); ``trace``: its build that writes step timestamps."""
    import triton
    from triton.backends.compiler import GPUTarget

    try:
        from triton.experimental.gluon import GluonASTSource
    except ImportError:  # Triton 3.6 keeps it here
        from triton.experimental.gluon._runtime import GluonASTSource

    from . import spectral, spectral_gluon

    if spectral_gluon.GLUON_ERROR is not None:
        raise RuntimeError(spectral_gluon.GLUON_ERROR)
    program = program if program is not None else default_program()
    m = spectral._pack(program, torch.device("cpu"), _DTYPES[dtype])["meta"]
    pointers = dict(x_ptr="x", out_ptr="x", stem_w_ptr="x", stem_b_ptr="f", conv_w_ptr="x", conv_b_ptr="f",
                    red_w_ptr="x", red_b_ptr="f", trace_ptr="i64" if trace else "x")
    waits = waits or spectral_gluon.DEFAULT_WAITS
    identity = identity or spectral_gluon.DEFAULT_IDENTITY
    step = spectral_gluon._resolve_step(waits, identity, step)
    spectral_gluon._check_form(waits, identity, step)
    if step in spectral_gluon.WS_STEPS:
        fn, const = spectral_gluon._gluon_ws_kernel, spectral_gluon._ws_constants(m)
    elif step == "pair":
        fn, const = spectral_gluon._gluon_pair_kernel, spectral_gluon._pair_constants(m)
    else:
        fn, const = spectral_gluon._gluon_stage_kernel, spectral_gluon._one_constants(m, waits, identity)
    const = dict(const, TRACE=trace)
    src = GluonASTSource(fn=fn, signature=_signature(fn, pointers, const, dtype), constexprs=const,
                         attrs=_aligned(fn, pointers))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def ptxas_report(ptx: str) -> str | None:
    """The bundled ptxas's ``-v`` report for ``ptx`` on sm_90a (None when this Triton's ptxas cannot be found):
    registers, spills and its performance notes, such as C7515 (every wgmma serialized) and C7517 (a wgmma
    wait injected), which a kernel that keeps wgmmas in flight past a register use can trigger."""
    ptxas = _ptxas_path()
    if ptxas is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                           capture_output=True, text=True)
    return r.stdout + r.stderr


def _ptxas_path() -> str | None:
    try:  # where Triton keeps its ptxas differs between releases
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            return get_ptxas(90).path
        except TypeError:
            return get_ptxas().path
    except Exception:  # noqa: BLE001 - an older Triton: its knob, else none
        try:
            from triton import knobs

            return knobs.nvidia.ptxas.path
        except Exception:  # noqa: BLE001
            return None


def sass_loop(cubin: bytes) -> dict[str, int] | None:
    """Counts over the main loop of a compiled kernel's SASS (its longest backward branch), from the
    ``cuobjdump`` beside Triton's ptxas (None without one): ``instructions``, ``local loads`` / ``local stores``
    (register spills touched every step), ``HGMMA`` (wgmma instructions), ``BAR`` (barriers)."""
    ptxas = _ptxas_path()
    tool = Path(ptxas).with_name("cuobjdump") if ptxas else None
    if tool is None or not tool.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.cubin").write_bytes(cubin)
        text = subprocess.run([str(tool), "-sass", str(Path(tmp) / "k.cubin")], capture_output=True,
                              text=True).stdout
    code = [(int(m.group(1), 16), line) for line in text.splitlines()
            if (m := re.search(r"/\*([0-9a-f]{4,6})\*/\s+\S", line))]
    where = {addr: i for i, (addr, _) in enumerate(code)}
    loops = [(where[int(m.group(1), 16)], i) for i, (_, line) in enumerate(code)
             if (m := re.search(r"\bBRA[^;]*?0x([0-9a-f]+)", line)) and where.get(int(m.group(1), 16), i) < i]
    if not loops:
        return None
    first, last = max(loops, key=lambda ab: ab[1] - ab[0])
    body = [line for _, line in code[first:last + 1]]

    def n(pattern: str) -> int:
        return sum(1 for line in body if re.search(pattern, line))
    return {"instructions": len(body), "local loads": n(r"\bLDL\b"), "local stores": n(r"\bSTL\b"),
            "HGMMA": n(r"\bHGMMA\b"), "BAR": n(r"\bBAR\b")}


def ptxas_usage(ptx: str) -> tuple[int | None, int | None]:
    """``(registers, spill-store bytes)`` from :func:`ptxas_report` (None, None without a ptxas)."""
    text = ptxas_report(ptx)
    if text is None:
        return None, None
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def loop_body(ttgir: str) -> str:
    """The main loop's body (``scf.for`` .. its ``scf.yield``) in a kernel's TTGIR."""
    start = ttgir.index("scf.for")
    return ttgir[start:ttgir.index("scf.yield", start)]
