"""One live run per class map: :func:`ssrn.lock.file_lock` on ``.<name>.lock`` beside the output, with what a
class-map run adds: the output's directory is created, a killed run's hidden temps are removed once the lock is held
(:func:`~hsi_engine.outputs.sweep_leftovers`), and a run into another live run's side file is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ssrn.lock import file_lock, lock_held, lock_path

from .errors import OutputError

__all__ = ["lock_held", "lock_path", "output_lock", "tidy_interrupted"]


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, *, fix: str | None = None, sweep: bool = True,
                required: bool = True, create_dir: bool = True, resumable: bool = False,
                side_files: bool = False) -> Iterator[Path | None]:
    """Hold the lock of ``out`` for the ``with`` block; raise :class:`OutputError` when another live run holds it.

    Yields the lock file's path (None where the platform has no ``flock``); creates the output's directory.
    ``fix``: what the refusal tells the second run to do (default: a class map's); ``sweep``: remove a killed
    class-map run's hidden temps once the lock is held; ``required=False``: where the lock file cannot be made
    (a read-only directory), go on without a lock (yields None) instead of refusing; ``create_dir=False``: a
    missing output directory is not created (no lock then, with ``required=False``). ``resumable``: this run keeps
    its tiles when stopped (recorded, so that a second run's refusal says whether stopping this one loses them).
    A class-map run (``sweep``) into another live run's side file (``m_confidence.tif`` while ``m.tif`` is written
    with its probabilities) is refused, and so is one writing side files (``side_files``) one of which another
    live run writes as its map: they shared (and swept) each other's temporaries.
    """
    from .outputs import ensure_output_dir, sweep_leftovers

    def on_locked() -> None:
        if sweep:
            _check_side_clash(Path(out), side_files)
            sweep_leftovers(out)  # hidden temps of a killed run: nobody else writes them while we hold the lock

    with file_lock(out, fix=fix if fix is not None else _class_map_fix, required=required,
                   prepare=ensure_output_dir if create_dir else None, on_locked=on_locked, resumable=resumable,
                   side_files=side_files) as path:
        yield path


def _class_map_fix(keeps: bool | None) -> str:
    """What a second class-map run is told to do, by whether the live one keeps its tiles when stopped."""
    return ("wait for it to finish, or stop it and rerun (it was started without resume=True (--resume), so it keeps "
            "no tiles: the rerun starts over)" if keeps is False else
            "wait for it to finish, or stop it and rerun with resume=True (--resume) to finish its tiles")


def _check_side_clash(out: Path, side_files: bool) -> None:
    """Refuse a run whose output is a live run's side file, or whose side files (``side_files``) are a live run's
    output (see :func:`output_lock`)."""
    from .outputs import TIFF_SUFFIXES, side_paths

    if out.suffix.lower() not in TIFF_SUFFIXES:
        return
    for key in ("probabilities", "confidence"):  # side_paths' names: <stem>_<key><suffix>
        if out.stem.endswith(f"_{key}"):
            owner = out.with_name(out.stem[: -len(key) - 1] + out.suffix)
            if lock_held(owner) and _writes_side_files(owner):
                raise OutputError(f"another run is writing {owner} with its side file {out.name} now: choose "
                                  "another output name, or wait for that run to finish")
        side = side_paths(out)[key]
        if side_files and lock_held(side):
            raise OutputError(f"another run is writing {side} now, which this run's {key} would replace: "
                              "choose another output name, or wait for that run to finish")


def _writes_side_files(out: Path) -> bool:
    """Whether the live run into ``out`` said it writes side files (True when its lock file does not say)."""
    try:
        return json.loads(lock_path(out).read_text(encoding="utf-8")).get("side_files", True) is not False
    except (OSError, ValueError, AttributeError):
        return True


def tidy_interrupted(out: str | os.PathLike) -> None:
    """Where a killed run left a half-done commit (its journal) or hidden temporaries beside ``out`` and no live run
    holds its lock, take the lock for a moment so they are finished and swept (:func:`output_lock`'s sweep): a
    rerun refused because the output exists (without ``overwrite``) never took the lock, so the side files of a
    commit killed before the map's rename stayed orphaned, and a full-size hidden copy of the output for ever."""
    from .commit_journal import journal_path
    from .outputs import leftovers

    p = Path(out)
    if lock_held(p) or not (os.path.lexists(journal_path(p)) or leftovers(p)):
        return
    with output_lock(p, create_dir=False, required=False):
        pass
