"""Log lines and warnings that say nothing to a user of this engine, dropped for the span that makes them."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["affine_mul_quiet", "dropped", "dropped_for_good", "quiet_affine_mul", "warnings_ignored"]

P = ParamSpec("P")
R = TypeVar("R")


class _Dropping(logging.Filter):
    def __init__(self, drop: Callable[[str], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextlib.contextmanager
def dropped(drop: Callable[[str], bool], *loggers: str) -> Iterator[None]:
    """Drop the records of ``loggers`` whose message ``drop`` matches, inside the ``with`` block (a filter of its
    own, so two runs in one process never remove each other's)."""
    f = _Dropping(drop)
    targets = [logging.getLogger(n) for n in loggers]
    for lg in targets:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(f)


def dropped_for_good(drop: Callable[[str], bool], logger: str) -> None:
    """Drop the records of ``logger`` whose message ``drop`` matches from now on (for a process of our own, such as
    a local cluster's worker)."""
    logging.getLogger(logger).addFilter(_Dropping(drop))


_ignored_lock = threading.Lock()
_ignored: dict[tuple[str, type[Warning]], list] = {}  # (message, category) -> [users, the filter entry]


@contextlib.contextmanager
def warnings_ignored(category: type[Warning] = Warning, message: str = "") -> Iterator[None]:
    """Ignore warnings of ``category`` whose message starts with the regex ``message`` (``.`` matching newlines
    too) inside the ``with`` block,
    beside other threads doing the same. ``warnings.catch_warnings`` saves and restores the whole filter list, so
    two threads' blocks ending out of order left one's ``ignore`` in place for good (a service's later
    UnnormalisedInputWarning went unseen); this adds one entry, shared by the blocks that want it, and takes
    that entry alone off when the last one ends. Keep ``message`` narrow: the entry applies to every thread (and a
    ``catch_warnings`` block of another thread that spans the end of ours restores it with its snapshot)."""
    key = (message, category)
    with _ignored_lock:
        if key not in _ignored:  # "(?s)": a path with a newline in it must not make '.*' stop short
            warnings.filterwarnings("ignore", message="(?s)" + message if message else "", category=category)
            _ignored[key] = [0, warnings.filters[0]]  # type: ignore[attr-defined]
        _ignored[key][0] += 1
    try:
        yield
    finally:
        with _ignored_lock:
            held = _ignored[key]
            held[0] -= 1
            if held[0] == 0:
                del _ignored[key]
                with contextlib.suppress(ValueError):  # (a caller's resetwarnings() took it already)
                    warnings.filters.remove(held[1])  # type: ignore[attr-defined]
                _filters_changed()


@contextlib.contextmanager
def affine_mul_quiet() -> Iterator[None]:
    """Ignore affine's ``PendingDeprecationWarning`` for rioxarray's own use of its ``*`` (every GeoTIFF read and
    transform): not the user's to act on, and under ``-W error`` (pytest's ``filterwarnings = error``) it failed
    every run. So are rasterio's ``NotGeoreferencedWarning`` of a raster without georeferencing (read, or written
    as a map in pixel coordinates): the engine says so itself, with the fix; under ``-W error`` rasterio's line
    failed every such scene ("The identity matrix will be returned")."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings_ignored(PendingDeprecationWarning, "Use `@` matmul instead of `\\*` mul"), \
            warnings_ignored(NotGeoreferencedWarning, "Dataset has no geotransform"), \
            warnings_ignored(NotGeoreferencedWarning, "The given matrix is equal to Affine.identity"):
        yield


def quiet_affine_mul(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run inside :func:`affine_mul_quiet` (the public functions that read or write rasters)."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with affine_mul_quiet():
            return fn(*args, **kwargs)
    return run


def _filters_changed() -> None:
    """Tell the warnings module its filter list changed (its per-module caches of what was shown go stale); no
    public call does it, and the private one's name differs between Python versions."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
        return
    held = getattr(warnings, "_filters_mutated_lock_held", None)
    if held is not None:
        with getattr(warnings, "_lock", contextlib.nullcontext()):
            held()
