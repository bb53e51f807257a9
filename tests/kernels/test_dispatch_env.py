"""Backends under environment settings the process was started with: a ``TORCHINDUCTOR_CACHE_DIR`` that cannot be
created (``compile`` runs eager, with one warning) and ``TRITON_INTERPRET=1`` (``triton`` on CPU warns that it is
Triton's slow interpreter)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernels import dispatch
from kernels.dispatch import get_spectral_stage, resolve_backend
from kernels.spectral import spectral_stage_reference

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]



def _cache_dir_fails(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """What ``torch.compile`` raises where importing ``torch._dynamo`` cannot make the cache directory (that import
    runs once per process, so it is simulated here)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", path)

    def compile_(*a, **kw):
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(torch, "compile", compile_)


def _dispatch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kernels.dispatch" and r.levelno == logging.WARNING]


def test_compile_that_cannot_make_its_cache_runs_eager_with_one_warning(fresh_dispatch, monkeypatch, caplog):
    _cache_dir_fails(monkeypatch, "/proc/nope")
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert resolve_backend("compile", CPU) == "eager"
        assert get_spectral_stage("compile", CPU) is spectral_stage_reference
        assert resolve_backend("compile", CPU) == "eager"
    msgs = _dispatch_warnings(caplog)
    assert len(msgs) == 1, msgs
    assert "TORCHINDUCTOR_CACHE_DIR=/proc/nope" in msgs[0] and "FileNotFoundError" in msgs[0], msgs[0]
    assert "point TORCHINDUCTOR_CACHE_DIR (the compiler's cache) at a writable directory" in msgs[0], msgs[0]
    assert "falling back to the eager backend" in msgs[0], msgs[0]


def test_an_engine_asked_for_compile_runs_eager_when_compile_cannot_start(fresh_dispatch, monkeypatch, caplog):
    """The engine also compiles its spatial stage: it must not reach ``torch.compile`` either, and its map equals
    the eager engine's."""
    from hsi_engine.fused import FusedSSRN
    from ssrn.model import SSRN, SSRNConfig

    model = SSRN(SSRNConfig(bands=12, classes=3, stem_width=8, reduce_width=16, spatial_width=8,
                            spectral_blocks=1, spatial_blocks=1)).eval()
    x = torch.randn(12, 10, 10, generator=torch.Generator().manual_seed(0))
    eager = FusedSSRN(model, backend="eager", device="cpu")(x)
    _cache_dir_fails(monkeypatch, "/etc/hostname/sub")
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        engine = FusedSSRN(model, backend="compile", device="cpu")
        out = engine(x)
    assert engine.backend == "eager"
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    assert len(_dispatch_warnings(caplog)) == 1


def test_a_real_unusable_cache_dir_falls_back_in_a_fresh_process(tmp_path):
    """The real thing: ``torch._dynamo`` makes its cache directory at import, here under a file. Training, which
    never compiles, imports it too (building its optimizer): it failed after the scene was read with a bare errno
    line; it is refused before, naming the variable."""
    (tmp_path / "file").write_text("")
    script = textwrap.dedent("""
        import logging, torch
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
        from kernels.dispatch import get_spectral_stage
        from kernels.spectral import _random_program, spectral_stage_reference
        from ssrn.train import TrainOptionError, run_training
        try:
            run_training(OUT + "/none.npz", OUT + "/model")  # (no such scene: the check comes before it is read)
        except TrainOptionError as e:
            print("TRAIN", e)
        fn = get_spectral_stage("compile", "cpu")
        prog = _random_program(23, 8, 16, generator=torch.Generator().manual_seed(0))
        x = torch.randn(5, 23, generator=torch.Generator().manual_seed(1))
        print("EQUAL", torch.equal(fn(x, prog), spectral_stage_reference(x, prog)))
    """).replace("OUT", repr(str(tmp_path)))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "file" / "sub"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EQUAL True" in proc.stdout
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("kernels.dispatch WARNING")]
    assert len(warned) == 1 and "NotADirectoryError" in warned[0] and "TORCHINDUCTOR_CACHE_DIR" in warned[0], \
        proc.stderr[-2000:]
    assert "TRAIN torch cannot create its compiler cache directory (TORCHINDUCTOR_CACHE_DIR=" in proc.stdout, \
        proc.stdout + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_triton_under_the_interpreter_warns_once_that_it_is_slow(fresh_dispatch, monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_interpreted", lambda: True)  # as with TRITON_INTERPRET=1 and Triton installed
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert resolve_backend("triton", CPU) == "triton"
        assert resolve_backend("triton", CPU, torch.bfloat16) == "triton"
    msgs = _dispatch_warnings(caplog)
    assert len(msgs) == 1, msgs
    assert "Triton's interpreter (TRITON_INTERPRET=1" in msgs[0] and "for tests only" in msgs[0], msgs[0]
    assert "unset TRITON_INTERPRET" in msgs[0] and "'eager'" in msgs[0], msgs[0]


def test_auto_on_cpu_under_the_interpreter_says_nothing(fresh_dispatch, monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_interpreted", lambda: True)
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert resolve_backend("auto", CPU) == "eager"
    assert _dispatch_warnings(caplog) == []
