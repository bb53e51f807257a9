"""Run a step that must not be cut half-way (a local cluster's start, torch's first import) whole."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["run_whole"]


def run_whole(fn: Callable[[], Any], *, on_interrupted: Callable[[Any], None] | None = None,
              limit_s: float = 120.0) -> Any:
    """``fn()``, run in a thread of its own; its result, or its exception re-raised here.

    An exception that a signal handler raises in the calling thread while it waits (a service's per-scene
    timeout, Ctrl-C) used to cut the step half-way: a cluster's start left its workers running, an interrupted
    ``import torch`` left torch unimportable (the next call segfaulted). Now the step finishes (up to ``limit_s``
    more), ``on_interrupted`` gets its result (to close what it started), and the exception goes on.
    """
    box: dict[str, Any] = {}
    done = threading.Event()  # (not Thread.join: one interrupted by an exception may report the thread ended)

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="hsi-whole-step", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException:
        deadline = time.monotonic() + limit_s
        while not done.is_set() and time.monotonic() < deadline:
            try:
                done.wait(0.1)
            except BaseException:  # noqa: BLE001 - another timeout or Ctrl-C: the step still finishes first
                pass
        if on_interrupted is not None and "value" in box:
            on_interrupted(box["value"])
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
