"""What every benchmark report shares: the CPU it ran on, and how it is written."""

from __future__ import annotations

import argparse
import platform
import shlex
from pathlib import Path

from hsi_engine.demo import cpu_name  # noqa: F401 - re-exported: every report names its CPU the same way


def cpu_report_head(title: str, script: str, argv: list[str] | None, device=None) -> list[str]:
    """A report's title and the lines naming date, device (the CPU's; ``device``, when a CUDA one, the GPU's),
    versions and the command that made it."""
    import datetime as dt
    import sys

    import torch

    cmd = f"python benchmarks/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
    cuda = device is not None and torch.device(device).type == "cuda"
    where = (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}" if cuda
             else f"{cpu_name()}, torch threads {torch.get_num_threads()}, {cpu_isa()}")
    return [f"# {title}", "", f"- date: {dt.datetime.now().isoformat(timespec='seconds')}", f"- device: {where}",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}",
            f"- command: `{cmd.strip()}`"]


def package_version(name: str) -> str:
    """An installed distribution's version, without importing it; "not installed" where it is not."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_isa() -> str:
    """What decides the CPU's low-precision speed: torch's vector ISA and whether oneDNN has bf16 here, and how.
    oneDNN's probe says yes on any AVX-512 CPU, but without AVX512_BF16 or AMX-BF16 it emulates bf16 (a bf16 run
    several times slower than float32, as on the development CPU), which the line must not call plain "yes"."""
    import torch

    from hsi_engine.fused import _cpu_has_amx_bf16, _cpuinfo_has, _torch_cpu_probe
    from kernels.spectral import _onednn_bf16

    isa = f"ISA {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 "
    if not _onednn_bf16():
        return isa + "no"
    if _cpu_has_amx_bf16():
        return isa + "yes (AMX-BF16)"
    avx512_bf16 = _torch_cpu_probe("_is_avx512_bf16_supported")
    if avx512_bf16 is None:
        avx512_bf16 = _cpuinfo_has("avx512_bf16")
    if avx512_bf16 is None:
        return isa + "yes (whether in hardware is unknown: no CPU flags to read)"
    return isa + ("yes (AVX512_BF16)" if avx512_bf16 else "emulated (no AVX512_BF16 or AMX-BF16: slower than float32)")


def gpu_label(name: str) -> str:
    """The word a report's default name takes from a GPU's name: its model ("NVIDIA H100 80GB HBM3": h100), the
    same for every script (spatial_epilogue.py once took the last word, the memory's "hbm3")."""
    return name.replace("NVIDIA ", "").split()[0].lower()


def doc_description(doc: str) -> str:
    """A script's ``--help`` description: its docstring's first paragraph on one line (a first line alone can
    stop mid-sentence)."""
    return " ".join(doc.split("\n\n")[0].split())


def positive_int(text: str) -> int:
    """An argparse ``type`` for sizes and counts: an integer above 0 (argparse then names the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_at_least(low: int, why: str = ""):
    """An argparse ``type`` for an integer of at least ``low``; ``why`` (e.g. "one 7x7 patch") says where the bound
    comes from, so the refusal names the minimum and its reason (argparse then names the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}{f' ({why})' if why else ''}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"  # argparse's 'invalid <name> value' for errors not raised above
    return parse


def bench_device(name: str):
    """``torch.device(name)``, checked as the engine checks it: a device this machine lacks ends the run with
    the reason (no traceback from deep inside the first CUDA call)."""
    from ssrn.devices import DeviceError, resolve_device

    try:
        return resolve_device(name)
    except DeviceError as e:
        raise SystemExit(f"--device: {e}") from None


def results_out(given: str | Path | None, default: Path) -> Path:
    """The report's path: ``given`` (``--out``), else ``default`` under benchmarks/results unless that file is
    there already: the committed reports carry runs and notes assembled by hand, which a rerun must not replace
    unasked."""
    if given:
        return Path(given)
    if default.exists():
        raise SystemExit(f"{default} exists (committed results, with notes written by hand): pass --out PATH to "
                         f"write this run elsewhere, or --out {default} to replace it")
    return default


def write_report(path: str | Path, lines: list[str]) -> Path:
    """Write the Markdown report (creating its folder) and echo it to stdout."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def timed_run(job, engine, **run_kw) -> tuple[float, dict]:
    """Seconds (CUDA synchronised on both sides) and counters of one run of ``job``'s plan (an
    ``hsi_engine.api._Job``) through ``engine`` into an in-memory sink; ``run_kw`` go to ``run_plan``."""
    import time

    import torch

    from hsi_engine.runner import ArraySink, run_plan

    cuda = job.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stats = run_plan(job.da, job.plan, engine, ArraySink(job.height, job.width, job.classes), mean=job.mean,
                     std=job.std, nodata=job.nodata, progress=False, **run_kw)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, stats


def wall_ms(fn, device) -> float:
    """Milliseconds of one call of ``fn``, the device synchronised before and after (CUDA; nothing on CPU)."""
    import time

    import torch

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3
