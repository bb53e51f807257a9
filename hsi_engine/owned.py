"""Scenes a run opens from paths, closed when the run ends."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Any, Callable, ParamSpec, TypeVar

__all__ = ["closes_its_scenes", "open_owned"]

P = ParamSpec("P")
R = TypeVar("R")
_OPENED: contextvars.ContextVar[list | None] = contextvars.ContextVar("hsi_engine_opened", default=None)


def open_owned(path: str | os.PathLike) -> Any:
    """``open_scene(path)`` for a run that closes it when it ends (:func:`closes_its_scenes`)."""
    from .io import open_scene

    da = open_scene(path)
    opened = _OPENED.get()
    if opened is not None:
        opened.append(da)
    return da


def closes_its_scenes(fn: Callable[P, R]) -> Callable[P, R]:
    """Close the scenes ``fn`` opened from paths when it returns or fails: a service classifying files in a loop
    held each one open (deleted ones' disk space included) until a garbage collection."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        opened: list = []
        token = _OPENED.set(opened)
        try:
            return fn(*args, **kwargs)
        finally:
            _OPENED.reset(token)
            for da in opened:
                with contextlib.suppress(Exception):
                    da.close()
    return run
