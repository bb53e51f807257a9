"""``ssrn.lock.file_lock`` on filesystems whose locks differ from a local disk's: none at all (Lustre without
``flock``, NFS without its lock daemon) and NFS's emulation of ``flock`` by POSIX locks (an exclusive lock needs a
file open for writing)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os

import pytest

from ssrn.errors import OutputError
from ssrn.lock import file_lock, lock_held, lock_path


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_a_filesystem_without_locks_is_warned_of_not_blamed_on_another_run(tmp_path, monkeypatch, caplog, code):
    """Every run into a Lustre noflock mount was refused as 'another run is writing ... now' (a run that did not
    exist), and left its lock file behind."""
    def flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    out = tmp_path / "m.tif"
    with caplog.at_level(logging.WARNING, "ssrn.lock"):
        with file_lock(out, fix="wait") as held:
            assert held is None
    assert any("file locks are not available" in r.getMessage() and "not detected" in r.getMessage()
               for r in caplog.records)
    assert list(tmp_path.iterdir()) == []
    assert not lock_held(out)
    with pytest.raises(ValueError) as raised:  # the run's own error, not chained to flock's
        with file_lock(out, fix="wait"):
            raise ValueError("the run's")
    assert raised.value.__context__ is None


def _nfs(monkeypatch, *, other_holds: bool, foreign):
    """NFS's emulation: LOCK_EX on a read-only descriptor is EBADF; ``other_holds``: another host's run holds an
    exclusive lock (any lock of ours is refused); ``foreign``: another user's lock file (read-only to us, while
    that file is there)."""
    real_open, real_flock = os.open, fcntl.flock
    theirs = os.stat(foreign).st_ino

    def nfs_open(path, flags, *a):
        if os.fspath(path) == os.fspath(foreign) and flags & os.O_RDWR:
            try:
                if os.stat(path).st_ino == theirs:
                    raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            except FileNotFoundError:
                pass
        return real_open(path, flags, *a)

    def nfs_flock(fd, op):
        if op & fcntl.LOCK_UN:
            return real_flock(fd, op)
        if other_holds:
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, op)

    monkeypatch.setattr(os, "open", nfs_open)
    monkeypatch.setattr(fcntl, "flock", nfs_flock)


def test_nfs_another_users_leftover_lock_is_replaced_not_a_block_for_ever(tmp_path, monkeypatch):
    """A colleague's killed run left a 0644 lock file in a shared directory: on NFS every later run was refused,
    naming the dead run. Nobody holds it, so it is replaced by this run's own."""
    out = tmp_path / "m.tif"
    stale = lock_path(out)
    stale.write_text(json.dumps({"pid": 999999, "host": "node17", "started": "2026-11-01T03:00:00+00:00"}))
    _nfs(monkeypatch, other_holds=False, foreign=stale)
    assert not lock_held(out)  # probed with a shared lock: no write access needed
    with file_lock(out, fix="wait") as held:
        assert held == stale
        assert json.loads(stale.read_text())["pid"] == os.getpid()
    assert not stale.exists()


def test_nfs_another_users_live_run_is_still_refused(tmp_path, monkeypatch):
    out = tmp_path / "m.tif"
    live = lock_path(out)
    live.write_text(json.dumps({"pid": 4242, "host": "node3", "started": "2026-11-28T03:00:00+00:00"}))
    _nfs(monkeypatch, other_holds=True, foreign=live)
    assert lock_held(out)
    with pytest.raises(OutputError, match=r"another run is writing .*m.tif now \(pid 4242 on node3.*\); wait"):
        with file_lock(out, fix="wait"):
            pass
    assert live.exists()


def test_a_held_lock_is_refused_and_a_free_one_taken_on_a_local_disk(tmp_path):
    out = tmp_path / "m.tif"
    with file_lock(out, fix="try later", resumable=True) as held:
        assert held == lock_path(out) and lock_held(out)
        with pytest.raises(OutputError, match=r"another run is writing .* now \(pid \d+ on .*\); keeps True"):
            with file_lock(out, fix=lambda keeps: f"keeps {keeps}"):
                pass
    assert not lock_held(out) and not lock_path(out).exists()
