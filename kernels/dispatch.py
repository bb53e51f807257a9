"""Pick the spectral-stage implementation: ``triton`` / ``compile`` / ``eager``, by device and availability.

One small function decides (STYLE: never an environment variable read at import time):

- ``eager``: plain torch, in the formulation measured fastest on the device:
  :func:`kernels.spectral.spectral_stage_reference` (channels-last conv2d) on CPU,
  :func:`kernels.spectral.spectral_stage_conv3d` (cuDNN Conv3d) on CUDA.
- ``compile``: a cached ``torch.compile`` of the reference (``max-autotune`` on CUDA, default mode on
  CPU; ``dynamic=True`` so changing tile sizes, i.e. pixel counts, do not recompile: it sees each chunk as a
  contiguous tensor of its own, since a view's base sizes and strides became guards that edge tiles failed; torch's
  conv picks its algorithm by size, which may still add a recompile or two as chunks cross those sizes).
- ``triton``: :func:`kernels.spectral.spectral_stage_triton`, CUDA only (and CPU under Triton's
  interpreter, ``TRITON_INTERPRET=1``, which tests use); in bfloat16 / float16 on a Hopper GPU, for the
  paper's block form, :func:`kernels.spectral_gluon.spectral_stage_gluon` instead (2.30 ms against the Triton
  kernel's 3.13 per 65,536 pixels of 200 bands on an H200, benchmarks/results/kernels-h200.md run 6), once it
  matched the reference on the first pixels of a program shape (in the order of ``_gluon_forms``: its persistent
  two-warpgroup form, the two-warpgroup form, the one-position form, the one-wait-per-phase form; else the Triton
  kernel, with one warning).
- ``auto``: on CUDA, ``triton`` for bfloat16 / float16 when Triton imports and the kernel passes a tiny
  self-check against the reference, and ``eager`` for float32 (exact float32 has no tensor-core path: on an
  H100 the Conv3d formulation took 20.98 ms per 65,536 pixels, the fused kernel 23.96 and compile 19.70
  after minutes of max-autotune; in bf16 the kernel took 3.42 ms against compile's 5.48 and Conv3d's 14.14,
  benchmarks/results/kernels-h100.md); ``eager`` on CPU: the compiled stage runs 1.39x the eager one at the
  engine's 512-pixel chunks in isolation, but a whole 2.36 M-pixel scene took 97.5 s compiled against 87.9 s
  eager, warm-up included (benchmarks/results/compile-cpu.md).

Asking for ``triton`` where it cannot run falls back with ONE warning on
``logging.getLogger("kernels.dispatch")`` per process (per device and reason: a service's log is not flooded
request after request), then an INFO line at each later fallback (a request that asked for a backend and runs
another is never silent), never an exception; so does ``compile`` where ``torch.compile`` cannot start (its cache
directory, ``TORCHINDUCTOR_CACHE_DIR``, cannot be created: torch makes it when the compiler is imported).
``triton`` on CPU under the interpreter runs, with one warning that it is slow. A timeout or interruption the
caller's program raised while a backend was being checked (:func:`program_exception`: a service's deadline from a
signal handler) propagates as itself: it is never reported, nor cached, as the backend's failure.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import torch

from ssrn.errors import program_exception

from .program import SpectralProgram
from .spectral import spectral_stage_conv3d, spectral_stage_reference

log = logging.getLogger("kernels.dispatch")

BACKENDS = ("auto", "eager", "compile", "triton")

SpectralStage = Callable[[torch.Tensor, SpectralProgram], torch.Tensor]


def _device(device: torch.device | str | None) -> torch.device:
    try:
        return torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        from ssrn.errors import OptionError

        raise OptionError(f"device {device!r} is not a torch device name; expected cpu, cuda or cuda:N") from None


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    """None when Triton imports (and the kernel module defined its kernel); else the reason."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return f"Triton does not import ({type(e).__name__}: {e})"
    from . import spectral

    if not getattr(spectral, "HAS_TRITON", False):  # pragma: no cover
        return "Triton imported but the spectral kernel was not defined"
    return None


def _interpreted() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1`` was set before the kernel's import)."""
    if _triton_import_error() is not None:
        return False
    from . import spectral

    return spectral._interpreting()


def _triton_unavailable_reason(device: torch.device) -> str | None:
    if device.type == "cpu" and _interpreted():  # tests: the kernel runs on CPU tensors, slowly
        return None
    if device.type != "cuda":
        return f"the triton backend needs a CUDA device; got {device}"
    if not torch.cuda.is_available():
        return "the triton backend needs CUDA; torch.cuda.is_available() is False"
    return _triton_import_error()


class _Transient(Exception):
    """A failure that says nothing about the next try (out of memory), carrying its reason past a cache."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _triton_self_check(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Run the kernel once in ``dtype`` on a tiny random program; None when it matches the float32 reference
    (to 1e-3 in float32, to 5 % of the largest feature in bf16 / fp16), else why not. The verdict is cached per
    device and dtype, except an out-of-memory failure's (the next engine tries again); a timeout or interruption
    the program raised propagates (:func:`program_exception`) and is not cached either."""
    try:
        return _triton_self_check_cached(device, dtype)
    except _Transient as t:
        return t.reason


@functools.lru_cache(maxsize=None)
def _triton_self_check_cached(device: torch.device, dtype: torch.dtype) -> str | None:
    """:func:`_triton_self_check`'s run. One small config, pinned: autotuning over every config for a 23-band toy
    would cost a dozen compiles before the real work starts."""
    interrupted = None
    try:
        from .spectral import _SMALL_PLAIN, _random_program, spectral_stage_triton

        g = torch.Generator().manual_seed(0)
        prog = _random_program(23, 8, 16, generator=g).to(device)
        x = torch.randn(5, 23, generator=g).to(device)
        ref = spectral_stage_reference(x, prog)
        out = spectral_stage_triton(x.to(dtype), prog, config=dict(_SMALL_PLAIN, num_warps=4, num_stages=1)).float()
        torch.cuda.synchronize(device)
        tol = 1e-3 if dtype == torch.float32 else 5e-2 * float(ref.abs().max())
        if not torch.allclose(out, ref, rtol=tol, atol=tol):
            return (f"the Triton kernel's {dtype} self-check differs from the reference by "
                    f"{(out - ref).abs().max():.3g}")
    except torch.cuda.OutOfMemoryError as e:  # another engine holds the memory now: not cached
        raise _Transient(f"the Triton kernel's self-check ran out of memory ({(str(e).splitlines() or [''])[0]})") \
            from None
    except Exception as e:  # noqa: BLE001 - any failure means: do not pick triton automatically
        interrupted = program_exception(e)
        if interrupted is None:
            return f"the Triton kernel failed its self-check ({type(e).__name__}: {e})"
    if interrupted is not None:  # raised outside the handler: the program's exception as it was, not cached
        raise interrupted
    return None


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Concrete backends that can run on ``device`` (``auto`` excluded): ``triton`` first where it can run (a CUDA
    device, or any under ``TRITON_INTERPRET=1``, where it is for tests, not speed), then ``eager`` and ``compile``.
    Which is fastest depends on the dtype too: :func:`auto_choice` says."""
    dev = _device(device)
    out = ["eager", "compile"]
    if _triton_unavailable_reason(dev) is None:
        out.insert(0, "triton")
    return out


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def _fell_back(message: str) -> None:
    """Say that a request runs another backend than it asked for: a WARNING the first time per process
    (:func:`_warn_once`), an INFO line each later time, so no request falls back silently."""
    hits = _warn_once.cache_info().hits
    _warn_once(message)
    if _warn_once.cache_info().hits > hits:  # (another thread's hit in between adds one INFO line, never hides one)
        log.info(message)


def _check_dtype(dtype: torch.dtype) -> None:
    """Refuse a dtype that is not a ``torch.dtype`` ('float32' compared unequal to torch.float32: a low-precision
    path was taken)."""
    if not isinstance(dtype, torch.dtype):
        from ssrn.errors import OptionError

        raise OptionError(f"dtype must be a torch.dtype (torch.float32, torch.bfloat16 or torch.float16); got "
                          f"{type(dtype).__name__} {dtype!r}")


def auto_choice(device_type: str, dtype: torch.dtype, triton_ok: bool) -> str:
    """What ``auto`` picks: the fastest measured path end to end (see the module doc)."""
    device_type = getattr(device_type, "type", device_type)  # a torch.device is taken for its type
    _check_dtype(dtype)
    if device_type == "cuda" and dtype in (torch.bfloat16, torch.float16) and triton_ok:
        return "triton"
    return "eager"


def check_backend(backend: str) -> None:
    """Refuse a name that is not one of :data:`BACKENDS` (an ``OptionError``), without looking at any device: what
    a cluster's driver checks before its workers start."""
    if not isinstance(backend, str) or backend not in BACKENDS:  # the engine's OptionError (a ValueError)
        from ssrn.errors import OptionError

        raise OptionError(f"unknown spectral backend {backend!r}; valid backends are {list(BACKENDS)}")


def resolve_backend(backend: str, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend (``eager``, ``compile`` or ``triton``) that ``backend`` means on ``device`` for a
    spectral stage run in ``dtype``."""
    check_backend(backend)  # a user's backend= / --backend
    _check_dtype(dtype)
    dev = _device(device)
    if backend == "auto":
        reason = None
        if dev.type == "cuda" and dtype != torch.float32:  # where auto would pick the kernel
            reason = _triton_unavailable_reason(dev) or _triton_self_check(dev, dtype)
            if reason is not None:  # the kernel is several times faster: a DEBUG line had been all that said so
                _fell_back(f"spectral backend 'auto' runs the {str(dtype).removeprefix('torch.')} spectral stage on "
                           f"the eager backend: the Triton kernel, several times faster on a GPU, cannot run here "
                           f"({reason}); install a Triton that matches torch (pip install 'hsi-engine[gpu]'), or "
                           "pass backend='eager' (--backend eager) to choose eager")
        return auto_choice(dev.type, dtype, dev.type == "cuda" and reason is None)
    if backend == "triton":
        reason = _triton_unavailable_reason(dev)
        if reason is not None:
            fallback = "eager"
            _fell_back(f"spectral backend 'triton' is not available ({reason}); falling back to '{fallback}'")
            return fallback
        if dev.type == "cpu":  # runs only under the interpreter (reason None): correct, but over 1000x slower
            _warn_once("spectral backend 'triton' on CPU runs Triton's interpreter (TRITON_INTERPRET=1 is set), "
                       "which is for tests only and over 1000x slower than the eager backend (a 400-pixel crop: "
                       "minutes, not 0.3 s): unset TRITON_INTERPRET and use backend 'eager' (or 'auto') on CPU for "
                       "the fast path")
    if backend == "compile":
        reason = _compile_failure(dev.type)
        if reason is not None:
            _fell_back(f"torch.compile failed to start ({reason}); falling back to the eager backend for the "
                       "whole run")
            return "eager"
    return backend


@functools.lru_cache(maxsize=None)
def _compile_failure(device_type: str) -> str | None:
    """None when the compiled stage for ``device_type`` can be made; else why not (cached: torch's compiler is
    imported once per process, and an import that failed half-way cannot be retried). ``torch.compile`` imports
    ``torch._dynamo``, which creates the compiler's cache directory: an unusable ``TORCHINDUCTOR_CACHE_DIR``
    (read-only, or under a file) fails there, before any first-tile fallback could catch it. A timeout or
    interruption the program raised meanwhile (:func:`program_exception`) propagates, and nothing is cached."""
    interrupted = None
    try:
        _compiled(device_type)
    except Exception as e:  # noqa: BLE001 - the compiler's own error types vary by version: run eager
        interrupted = program_exception(e)  # a TimeoutError is an OSError: not a cache directory's failure
        if interrupted is None:
            return _compile_reason(e)
    if interrupted is not None:  # raised outside the handler: the program's exception as it was
        raise interrupted
    return None


def _compile_reason(e: Exception) -> str:
    """Why ``torch.compile`` could not start, from what it raised (an OSError: its cache directory)."""
    if isinstance(e, OSError):
        where = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        asked = f"TORCHINDUCTOR_CACHE_DIR={where}" if where else "its default, TORCHINDUCTOR_CACHE_DIR unset"
        return (f"{type(e).__name__}: {e}: the compiler's cache directory ({asked}) cannot be created; point "
                "TORCHINDUCTOR_CACHE_DIR (the compiler's cache) at a writable directory")
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


@functools.lru_cache(maxsize=None)
def _compiled(device_type: str) -> SpectralStage:
    cuda = device_type == "cuda"
    fn = torch.compile(spectral_stage_reference, mode="max-autotune" if cuda else None, dynamic=True)

    def stage(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
        # a contiguous tensor that is no view: a view's base (a tile, square or not) and strides became guards
        out = fn(x.contiguous().detach(), program)
        # max-autotune replays CUDA graphs whose outputs the next replay overwrites; callers keep results
        return out.clone() if cuda else out

    return stage


def get_spectral_stage(backend: str, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> SpectralStage:
    """A callable ``(x (P, bands), program) -> (P, out_features)`` for ``backend`` on ``device`` in ``dtype``."""
    dev = _device(device)
    name = resolve_backend(backend, dev, dtype)
    if name == "eager":
        return spectral_stage_conv3d if dev.type == "cuda" else spectral_stage_reference
    if name == "compile":
        return _compiled(dev.type)
    from .spectral import spectral_stage_triton

    return fused_stage if dev.type == "cuda" and dtype != torch.float32 else spectral_stage_triton


_GLUON_CHECKED: dict[tuple, str] = {}  # program shape -> '' (a Gluon form matched the reference), else why not
_GLUON_FORM: dict[tuple, tuple[str, str]] = {}  # program shape -> the Gluon form (waits, step) that matched
_FORM_NAMES = {("phase", "one"): "one-wait-per-phase form", ("layer", "one"): "per-layer-wait form",
               ("stem_last", "one"): "stem-last form", ("layer", "pair"): "two-positions-per-step form",
               ("layer", "ws"): "two-warpgroup (warp-specialized) form",
               ("layer", "wsp"): "persistent two-warpgroup form"}


def _gluon_forms() -> list[tuple[str, str]]:
    """The Gluon forms ``(waits, step)`` the backend tries, in order: the default (``wsp``), then ``ws`` (the
    same step, one block a program) where the default is ``wsp``, the default waits' one-position form, and the
    one-wait-per-phase form (the first that ran on a GPU)."""
    from .spectral_gluon import DEFAULT_STEP, DEFAULT_WAITS

    steps = [DEFAULT_STEP, "ws"] if DEFAULT_STEP == "wsp" else [DEFAULT_STEP]  # ws: the same step, a block a program
    return list(dict.fromkeys([(DEFAULT_WAITS, s) for s in steps] + [(DEFAULT_WAITS, "one"), ("phase", "one")]))


def gluon_check_key(program: SpectralProgram, dtype: torch.dtype, device: torch.device) -> tuple:
    """The program shape :func:`fused_stage` files its Gluon check under (``_GLUON_CHECKED``, ``_GLUON_FORM``), for
    inputs of ``dtype`` on ``device`` (a tensor's device: ``cuda:0``): what a caller that checked the kernel
    elsewhere (the benchmark's probe in a child process) files its verdict under."""
    return (program.bands, tuple(program.stem.weight.shape), program.stem.stride, program.out_features,
            len(program.blocks), program.blocks[0].conv1.weight.shape[2], dtype, device)


def fused_stage(x: torch.Tensor, program: SpectralProgram) -> torch.Tensor:
    """The ``triton`` backend in bf16 / fp16 on CUDA: the Gluon kernel where it applies (Hopper, the paper's
    block form, fits in shared memory) and matched the reference on this program shape (its default form, else
    the next of :func:`_gluon_forms`), else the Triton kernel."""
    from .spectral import spectral_stage_triton
    from .spectral_gluon import _run, gluon_unsupported

    if x.dtype == torch.float32 or gluon_unsupported(x, program, "one") is not None:
        return spectral_stage_triton(x, program)
    key = gluon_check_key(program, x.dtype, x.device)
    if key not in _GLUON_CHECKED:
        whys = []
        for waits, step in _gluon_forms():
            if step != "one" and gluon_unsupported(x, program, step) is not None:
                continue  # a form this program does not fit (its shared memory): the next, with no warning
            why = _gluon_disagrees(x, program, waits=waits, step=step)
            if not why:
                _GLUON_FORM[key] = (waits, step)
                break
            whys.append(f"{why} (waits={waits!r}, step={step!r})")
        why = _GLUON_CHECKED[key] = "; ".join(whys) if key not in _GLUON_FORM else ""
        if why:
            log.warning("fused spectral stage: %s; running the Triton kernel for this program shape", why)
        elif whys:
            log.warning("fused spectral stage: %s; running the Gluon kernel's %s", "; ".join(whys),
                        _FORM_NAMES.get(_GLUON_FORM[key], str(_GLUON_FORM[key])))
        else:
            log.info("fused spectral stage: the Gluon (Hopper) kernel for %d bands, %s", program.bands,
                     str(x.dtype).removeprefix("torch."))
    if _GLUON_CHECKED[key]:
        return spectral_stage_triton(x, program)
    waits, step = _GLUON_FORM[key]
    return _run(x, program, waits=waits, step=step)  # gluon_unsupported ran its checks (_gluon_disagrees: step's)


def _check_pixels(x: torch.Tensor, n: int = 512) -> torch.Tensor:
    """What :func:`_gluon_disagrees` runs: up to ``n`` pixels spread over ``x`` and ``n`` seeded N(0, 1) spectra
    (a normalised scene's range) in ``x``'s dtype. The random half keeps the check meaningful when the scene's
    pixels are not: a first tile's first pixels are its zero halo rows."""
    idx = torch.linspace(0, x.shape[0] - 1, min(n, x.shape[0]), device=x.device).round().long().unique()
    noise = torch.randn(n, x.shape[1], generator=torch.Generator().manual_seed(0)).to(device=x.device, dtype=x.dtype)
    return torch.cat([x[idx], noise])


def _gluon_disagrees(x: torch.Tensor, program: SpectralProgram, n: int = 512, *, waits: str | None = None,
                     step: str = "one") -> str:
    """'' when the Gluon kernel's output on :func:`_check_pixels` of ``x`` is within 5 % of the largest feature
    of the float32 reference (bf16 / fp16 rounding stays near 1 %), else why not. It ran on one GPU and one
    Triton release before it was wired in: a miscompile elsewhere must cost speed, never numbers."""
    from .spectral import _off_by
    from . import spectral_gluon

    head = _check_pixels(x, n)
    try:  # wsp on two programs: each runs several blocks of pixels, as on the engine's chunks
        got = spectral_gluon.spectral_stage_gluon(head, program, waits=waits or spectral_gluon.DEFAULT_WAITS,
                                                  step=step, programs=2 if step == "wsp" else None).float()
    except Exception as e:  # noqa: BLE001 - any failure means: use the Triton kernel
        return f"the Gluon kernel failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]})"
    off = _off_by(got, spectral_stage_reference(head.float(), program.to(dtype=torch.float32)), 5e-2)
    return (f"the Gluon kernel differs from the reference {off} on {head.shape[0]} check pixels (the scene's and "
            "random spectra)" if off else "")
