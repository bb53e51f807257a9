"""Errors the engine's command line catches before anything heavy is imported (no torch here), and the checks of
arguments every module shares (a flag, a path starting with ``~``)."""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def first_line(e: BaseException) -> str:
    """``Type: message`` of an exception, its message's first line only (h5py's and xarray's run on with advice
    that does not apply; a ``KeyError``'s without the quotes its str adds)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return f"{type(e).__name__}: {(text.splitlines() or [''])[0][:300]}"


def raised_by_program(e: BaseException) -> bool:
    """Whether ``e`` is a timeout or interruption the caller's program raised: ``KeyboardInterrupt``, ``SystemExit``,
    or a ``TimeoutError`` / ``InterruptedError`` without an errno (a service's deadline raised from a signal handler;
    ``TimeoutError`` is an OSError: with an errno it is a socket's or a disk's). It propagates as itself, never
    re-labelled a failed read, write or compile (``except SceneTimeout`` never fired)."""
    return isinstance(e, (KeyboardInterrupt, SystemExit)) or (
        isinstance(e, (TimeoutError, InterruptedError)) and e.errno is None)


def program_exception(e: BaseException) -> BaseException | None:
    """The exception of :func:`raised_by_program` that ``e`` is or wraps, else None: its ``__cause__`` chain, and its
    ``__context__`` where that is hidden (``raise ... from None``, as torch.compile wraps what a traced call raised:
    ``TorchRuntimeError``, ``InternalTorchDynamoError``). A timeout that code handled and then raised another error
    for (a plain ``raise`` in its ``except``: the context shown) is that code's failure, not the program's."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if raised_by_program(cur):
            return cur
        cur = cur.__cause__ if cur.__cause__ is not None else (cur.__context__ if cur.__suppress_context__ else None)
    return None


class HSIEngineError(Exception):
    """Base of the project's errors, the trainer's and the model's included: one ``except`` for a pipeline."""


def reduce_not_found(self: BaseException) -> tuple:
    """``__reduce__`` for an error that is a ``FileNotFoundError`` and a ``ValueError`` (or another non-OSError
    base): BaseException's reduction, not OSError's. With OSError's, the exception pickling distributed uses for a
    task's error (tblib) rebuilt it through ValueError.__new__, which Python refuses for a class that is also an
    OSError, and the caller got a bare Exception of its repr (a cluster run's traceback, exit 1)."""
    args = self.args
    if getattr(self, "filename", None) is not None and len(args) == 2:  # OSError(errno, strerror, filename)
        args = (*args, self.filename)
    return type(self), args, self.__dict__ or None


class OptionError(HSIEngineError, ValueError):
    """An argument outside what the function accepts: names the argument, what was given and what is accepted."""


class OptionTypeError(OptionError, TypeError):
    """An argument of a type the function does not take (an integer tensor where floats are computed): an
    ``OptionError`` that is also the ``TypeError`` Python code expects."""


class OutputError(HSIEngineError, OSError):
    """The output (a class map, a model directory) exists (without overwrite) or cannot be written."""


class CheckpointError(HSIEngineError, ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""


def check_flag(name: str, value: Any, error: type[Exception] = OptionError) -> bool:
    """``value`` as a bool, refusing anything but ``True``/``False`` (numpy's too) with ``error``:
    ``overwrite='no'`` read from a config file or ``os.environ`` is truthy, and replaced a model."""
    np = sys.modules.get("numpy")  # (not imported here: a numpy bool exists only where numpy is loaded)
    if isinstance(value, bool) or (np is not None and isinstance(value, np.bool_)):
        return bool(value)
    raise error(f"{name} must be True or False; got {type(value).__name__} {repr(value)[:80]}"
                + (": a string from a config file or os.environ is not read as a bool, convert it first"
                   if isinstance(value, str) else ""))


def is_whole(value: Any) -> bool:
    """Whether ``value`` is a whole number: a Python or numpy integer, not a bool (``True`` is 1 to Python, never
    a count of pixels or epochs)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_text_path(value: Any) -> bool:
    """Whether ``value`` is a path given as text: a ``str`` or an ``os.PathLike`` of one (bytes paths are not:
    pathlib refuses them with a bare ``TypeError``, and their names would need decoding)."""
    return isinstance(value, (str, os.PathLike)) and isinstance(os.fspath(value), str)


def unexpanded_home(path: str | os.PathLike, *, written: bool = True) -> str | None:
    """Why ``path`` cannot be used as given when it starts with ``~`` (``~`` or ``~user``), which Python does not
    expand (a shell does): ``"~/models/in"`` made a directory named ``~`` in the working directory (``written``:
    say so). None if it does not."""
    raw = os.fspath(path)
    parts = Path(raw).parts
    first = parts[0] if parts else ""
    if not (first.startswith("~") and (first == "~" or os.path.expanduser(first) != first)):
        return None
    made = f" (a directory named {first!r} would be made in {os.getcwd()})" if written else ""
    return (f"{raw!r} starts with {first!r}, which Python does not expand to a home directory{made}: pass "
            f"os.path.expanduser({raw!r}) ({os.path.expanduser(raw)}) or a path without '~'")


def not_a_model_error(where: str, got: Any, also: str = "") -> OptionTypeError:
    """The error for ``where`` (a call that takes an ``ssrn.SSRN``) given ``got``, a path, a state dict or anything
    else, naming the call that makes a model of it (``also``: a further hint for that call)."""
    if is_text_path(got):
        fix = (f"got the path {os.fspath(got)!r}: load the model directory first (model = ssrn.load_model(path), "
               "or hsi_engine.load_model)")
    elif isinstance(got, Mapping):
        fix = ("got a dict (a state dict?): load it into a model first (model = ssrn.SSRN(SSRNConfig(...)); "
               "model.load_state_dict(state_dict))")
    else:
        fix = (f"got {type(got).__name__}: load a model directory with ssrn.load_model(path), or build one with "
               "ssrn.SSRN(SSRNConfig(...))")
    return OptionTypeError(f"{where} takes an ssrn.SSRN model; {fix}{also}")
