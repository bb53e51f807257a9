"""A service's deadline (a ``TimeoutError`` its signal handler raises) or an interruption while a backend is being
checked propagates as itself: it is never reported, nor cached, as the backend's failure; and a request that asked
for a backend and runs another is never silent, however many came before it."""

from __future__ import annotations

import logging

import pytest
import torch

import kernels.spectral
from kernels import dispatch
from kernels.dispatch import program_exception, resolve_backend

CPU = torch.device("cpu")



def _wrapped(inner: BaseException) -> Exception:
    """What dynamo raises around an exception of the traced call: a new error ``from None`` (the cause hidden, the
    context kept), itself the cause of another."""
    try:
        try:
            raise inner
        except BaseException:
            raise RuntimeError("RuntimeError when making fake tensor call") from None
    except RuntimeError as mid:
        outer = RuntimeError("InternalTorchDynamoError: Timeout")
        outer.__cause__ = mid
        return outer


@pytest.mark.parametrize("inner", [TimeoutError("request timed out"), InterruptedError("stopped"),
                                   KeyboardInterrupt(), SystemExit(3)], ids=lambda e: type(e).__name__)
def test_program_exception_finds_the_programs_exception_in_a_wrapped_chain(inner):
    assert program_exception(inner) is inner
    assert program_exception(_wrapped(inner)) is inner


def test_program_exception_ignores_failures_and_errno_timeouts():
    assert program_exception(RuntimeError("CppCompileError")) is None
    assert program_exception(FileNotFoundError(2, "No such file or directory", "/proc/nope")) is None
    assert program_exception(TimeoutError(110, "Connection timed out")) is None  # a socket's, with its errno
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a  # a cycle ends the walk
    assert program_exception(a) is None
    try:  # a timeout the compiler's own code handled (a worker pool's), then raised its failure for: no deadline
        try:
            raise TimeoutError()
        except TimeoutError:
            raise RuntimeError("the compile worker did not answer")
    except RuntimeError as handled:
        assert program_exception(handled) is None


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "wrapped"])
def test_a_timeout_while_compile_starts_propagates_and_is_not_cached(fresh_dispatch, monkeypatch, caplog, wrap):
    """TimeoutError is an OSError: it had been reported as an uncreatable cache directory, and cached, so every
    later request ran eager."""
    def timed_out(*a, **kw):
        raise _wrapped(TimeoutError("request timed out")) if wrap else TimeoutError("request timed out")

    monkeypatch.setattr(torch, "compile", timed_out)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        with pytest.raises(TimeoutError, match="request timed out"):
            resolve_backend("compile", CPU)
        assert not [r for r in caplog.records if r.name == "kernels.dispatch"]
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the next request's compile starts
        assert resolve_backend("compile", CPU) == "compile"
    assert not [r for r in caplog.records if r.name == "kernels.dispatch"]


def test_a_keyboard_interrupt_while_compile_starts_is_not_cached(fresh_dispatch, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "compile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_backend("compile", CPU)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    assert resolve_backend("compile", CPU) == "compile"


def _self_check_raises(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def fail(*a, **kw):
        raise exc

    monkeypatch.setattr(kernels.spectral, "_random_program", fail)  # the self-check's first step


def test_a_timeout_during_the_triton_self_check_propagates_and_is_not_cached(fresh_dispatch, monkeypatch):
    """One timeout during the self-check had disabled auto-Triton for the process's life."""
    monkeypatch.setattr(dispatch, "_triton_unavailable_reason", lambda dev: None)
    cuda = torch.device("cuda")
    _self_check_raises(monkeypatch, _wrapped(TimeoutError("request timed out")))
    with pytest.raises(TimeoutError, match="request timed out"):
        resolve_backend("auto", cuda, torch.bfloat16)
    _self_check_raises(monkeypatch, RuntimeError("no C compiler"))  # a real failure: cached
    assert "no C compiler" in dispatch._triton_self_check(cuda, torch.bfloat16)
    _self_check_raises(monkeypatch, TimeoutError("not reached"))
    assert "no C compiler" in dispatch._triton_self_check(cuda, torch.bfloat16)


def test_an_out_of_memory_self_check_is_not_cached(fresh_dispatch, monkeypatch):
    cuda = torch.device("cuda")
    _self_check_raises(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 MiB"))
    assert "ran out of memory" in dispatch._triton_self_check(cuda, torch.bfloat16)
    _self_check_raises(monkeypatch, RuntimeError("no C compiler"))
    assert "no C compiler" in dispatch._triton_self_check(cuda, torch.bfloat16)


def _fallback_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "kernels.dispatch"]


def _compile_fails(*a, **kw):
    raise RuntimeError("CppCompileError: no working C++ compiler found")


@pytest.mark.parametrize("backend, broken, said", [
    ("triton", None, "spectral backend 'triton' is not available"),
    ("compile", _compile_fails, "torch.compile failed to start (RuntimeError: CppCompileError"),
])
def test_each_explicit_request_that_falls_back_says_so(backend, broken, said, fresh_dispatch, monkeypatch, caplog):
    """One WARNING per process, then an INFO line per request: later requests had got no line at all."""
    if broken is not None:
        monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        for _ in range(3):
            assert resolve_backend(backend, CPU) == "eager"
    lines = _fallback_lines(caplog)
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO, logging.INFO], lines
    assert all(said in msg for _, msg in lines), lines
