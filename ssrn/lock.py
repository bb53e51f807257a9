"""One live writer per output: an advisory lock on a hidden file beside it (``.<name>.lock``).

Two runs into the same output (a class map, a model directory) would write over each other, and one's commit (a
rename) or abort (a delete) would pull the output from under the other. :func:`file_lock` takes ``flock`` on
``.<out name>.lock`` for a whole run; a second run is refused with the first one's pid, host and start time. The
kernel drops the lock when its process dies, however it dies (SIGKILL, a lost node), so a stale lock file never
blocks a rerun: the next run simply takes it. The file is removed when its run ends; one left by a killed run is
harmless. ``flock`` is honoured across processes on one host and, on Linux, across NFS clients (emulated by POSIX
locks); on a platform without ``fcntl`` (Windows) no lock is taken. The trainer locks its model directory with it;
the engine's class-map runs (:func:`hsi_engine.lock.output_lock`) add the output's directory and their sweep.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputError

__all__ = ["file_lock", "lock_held", "lock_path"]

log = logging.getLogger(__name__)

# what flock says when another process holds the lock (locally EWOULDBLOCK; NFS's POSIX-lock emulation EAGAIN or
# EACCES); a filesystem without locks says one of _NO_LOCKS (Lustre mounted noflock: ENOSYS; some SMB/NFS mounts:
# EOPNOTSUPP; NFS without its lock daemon: ENOLCK)
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOLCK, errno.EINVAL}


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
    try:  # a shared lock is refused only while an exclusive one is held (and needs no write access on NFS)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in _HELD
    finally:
        os.close(fd)  # (closing releases a lock taken here)
    return False


def held_by(out: str | os.PathLike) -> str | None:
    """Who holds the lock of output ``out`` now ("pid N on HOST, started T"), or None where no live run does."""
    return _holder(lock_path(out))[0] if lock_held(out) else None


def _holder(path: Path) -> tuple[str, bool | None]:
    """Who holds the lock, and whether its run keeps its tiles when stopped (None: it did not say)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        resumable = info.get("resumable")
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}",
                resumable if isinstance(resumable, bool) else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "a process that has not recorded itself yet", None


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """Open (or create) the lock file, never through a link: a symlink or a hard link planted at the lock's name
    made the run truncate and overwrite the file it pointed at (the input scene, any file the process could
    write). ``(fd, writable)``."""
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    writable = True
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)  # (the umask decides)
        except PermissionError:  # another user's file (a run of theirs, or its leftover): flock needs no write
            fd, writable = os.open(path, os.O_RDONLY | flags), False
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
    return fd, writable


def _stale_for_us(fd: int) -> bool:
    """Whether another user's lock file we could only open read-only is held by nobody (a shared lock is
    granted): on NFS an exclusive lock needs write access, so such a leftover of a killed run is removed."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def file_lock(out: str | os.PathLike, *, fix: str | Callable[[bool | None], str], required: bool = True,
              prepare: Callable[[Path], object] | None = None, on_locked: Callable[[], object] | None = None,
              resumable: bool = False, side_files: bool = False) -> Iterator[Path | None]:
    """Hold the lock of ``out`` for the ``with`` block; raise :class:`OutputError` when another live run holds it.

    Yields the lock file's path (None where the platform has no ``flock``). ``fix``: what the refusal tells the
    second run to do (or a function of whether the holder keeps its work when stopped: ``resumable``, as it
    recorded, None where it did not say); ``required=False``: where the lock file cannot be made (a read-only or
    missing directory), go on without a lock (yields None) instead of refusing; ``prepare(directory)`` runs before
    the lock file is opened (the engine creates the output's directory), ``on_locked()`` once the lock is held and
    recorded (the engine's sweep of a killed run's temporaries). ``resumable`` and ``side_files`` are recorded in
    the lock file for the second run's refusal.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    path = lock_path(out)
    removed_stale = False
    while True:
        try:
            if prepare is not None:
                prepare(path.parent)
            existed = os.path.lexists(path)
            fd, writable = _open_lock_file(path)
        except OutputError:
            if required:
                raise
            fd = None
        if fd is None:
            yield None
            return
        unlocked = None  # why no lock can be had here (the run then goes on without one)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            no_locks = e.errno in _NO_LOCKS
            if e.errno == errno.EBADF and not writable:  # NFS: an exclusive lock needs a file open for writing
                no_locks = _stale_for_us(fd)  # (else another user's live run holds it)
                if no_locks and not removed_stale:  # another user's leftover, held by nobody: make our own
                    removed_stale = True
                    with contextlib.suppress(OSError):
                        path.unlink()  # while our shared lock keeps its owner's new run from taking it
                    os.close(fd)
                    continue
            os.close(fd)
            if not no_locks:
                who, keeps = _holder(path)
                raise OutputError(f"another run is writing {out} now ({who}); "
                                  f"{fix if isinstance(fix, str) else fix(keeps)}") from None
            if not existed:
                with contextlib.suppress(OSError):
                    path.unlink()
            unlocked = ("another user's lock file there, left by an ended run, is read-only to this user and cannot "
                        "be replaced" if e.errno == errno.EBADF else e.strerror or str(e))
        if unlocked is not None:  # (outside the except: the run's own errors are not chained to flock's)
            log.warning("file locks are not available for %s (%s): a second run into %s at the same time is not "
                        "detected, and a killed run's hidden temporaries are not removed; make sure only one runs",
                        path.parent, unlocked, out)
            yield None
            return
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
        if on_locked is not None:
            on_locked()
        yield path
    finally:
        with contextlib.suppress(OSError):  # gone, or another user's in a sticky directory
            path.unlink()  # while still locked: a waiting run then opens a fresh file
        os.close(fd)
