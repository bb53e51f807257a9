"""One live run per output: an advisory lock on a hidden file beside it (``.<name>.lock``).

Two resumable runs into the same output would write the same partial store, and one's commit (a rename) or abort
(a delete) would pull it from under the other. :func:`output_lock` takes ``flock`` on ``.<out name>.lock`` for the
whole run; a second run is refused with the first one's pid, host and start time. The kernel drops the lock when
its process dies, however it dies (SIGKILL, a lost node), so a stale lock file never blocks a rerun: the next run
simply takes it. The file is removed when its run ends; one left by a killed run is harmless. A run that takes the
lock first removes the hidden temps a killed run left (:func:`~hsi_engine.outputs.sweep_leftovers`). ``flock`` is
honoured across processes on one host and, on Linux, across NFS clients (emulated by POSIX locks); on a platform
without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

__all__ = ["lock_held", "lock_path", "output_lock"]


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output ``out``: ``.<name>.lock`` in its directory."""
    p = Path(out)
    return p.with_name(f".{p.name}.lock")


def lock_held(out: str | os.PathLike) -> bool:
    """Whether a live run holds the lock of output ``out`` now (never through a link)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locks
        return False
    try:
        fd = os.open(lock_path(out), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing releases a lock taken here)
    return False


def _holder(path: Path) -> tuple[str, bool | None]:
    """Who holds the lock, and whether its run keeps its tiles when stopped (None: it did not say)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        resumable = info.get("resumable")
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}",
                resumable if isinstance(resumable, bool) else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "a process that has not recorded itself yet", None


def _open_lock_file(path: Path) -> int:
    """Open (or create) the lock file, never through a link: a symlink or a hard link planted at the lock's name
    made the run truncate and overwrite the file it pointed at (the input scene, any file the process could
    write)."""
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except PermissionError:  # another user's file (a run of theirs, or its leftover): flock needs no write
            fd = os.open(path, os.O_RDONLY | flags)
    except OSError as e:
        if path.is_symlink():
            raise OutputError(f"the lock file {path} is a symbolic link (to {os.readlink(path)}); hsi-engine never "
                              "writes through one: remove it, or choose another output") from None
        raise OutputError(f"cannot open the lock file {path} ({e.strerror or e}); choose a writable location "
                          "for the output") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} hard links"
        raise OutputError(f"the lock file {path} {what}; hsi-engine writes only a file of its own there: remove it, "
                          "or choose another output")
    return fd


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
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    from .outputs import ensure_output_dir, sweep_leftovers

    path = lock_path(out)
    while True:
        try:
            if create_dir:
                ensure_output_dir(path.parent)
            fd = _open_lock_file(path)
        except OutputError:
            if required:
                raise
            fd = None
        if fd is None:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            who, keeps = _holder(path)
            if fix is None:
                fix = ("wait for it to finish, or stop it and rerun (it was started without resume=True (--resume), "
                       "so it keeps no tiles: the rerun starts over)" if keeps is False else
                       "wait for it to finish, or stop it and rerun with resume=True (--resume) to finish its tiles")
            raise OutputError(f"another run is writing {out} now ({who}); {fix}") from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "resumable": resumable,
                "side_files": side_files}
        with contextlib.suppress(OSError):  # read-only (another user's file): the holder goes unnamed
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        if sweep:
            _check_side_clash(Path(out), side_files)
            sweep_leftovers(out)  # hidden temps of a killed run: nobody else writes them while we hold the lock
        yield path
    finally:
        with contextlib.suppress(OSError):  # gone, or another user's in a sticky directory
            path.unlink()  # while still locked: a waiting run then opens a fresh file
        os.close(fd)


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
