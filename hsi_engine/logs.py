"""Other libraries' log lines that say nothing to a user of this engine, dropped for the span that makes them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

__all__ = ["dropped"]


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
