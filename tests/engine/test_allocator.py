"""The opt-in malloc setting: with it, a freed 52 MB buffer (a 200-band 256 x 256 float32 chunk) allocated on a
worker thread, where the engine decodes, is reused by the next one instead of being mapped and page-faulted in
afresh. Each case runs in its own process, so the test process's allocator is left alone."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hsi_engine.allocator import reuse_large_buffers

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import resource, sys, threading
sys.path.insert(0, {repo!r})
from hsi_engine.allocator import reuse_large_buffers
applied = reuse_large_buffers() if sys.argv[1] == "on" else None
n = 52 << 20  # above glibc's largest adaptive mmap threshold (32 MB), under a thread heap's 64 MB
faults = []

def decode_like():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = bytearray(n)
        buf[::4096] = b"\\x01" * (n // 4096)  # touch every page, as a decoder writing its output does
        del buf
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

t = threading.Thread(target=decode_like)
t.start()
t.join()
print(applied, sum(faults[1:]) // 5)
"""


def _faults_per_buffer(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(repo=str(REPO)), mode], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_large_buffers_are_reused_instead_of_faulted_in_again():
    pages = (52 << 20) // 4096
    applied, on = _faults_per_buffer("on")
    if applied == "False":
        pytest.skip("this glibc refuses a 256 MB mmap threshold (older releases cap it at 32 MB)")
    _, off = _faults_per_buffer("off")
    assert applied == "True"
    assert off > pages // 2, f"without the setting each 52 MB buffer should fault in afresh; saw {off} faults"
    assert on < pages // 10, f"with it the freed buffer should be reused; saw {on} faults per buffer"


def test_bad_thresholds_are_refused():
    """0 MB, and 2 GB or more (mallopt's C int of bytes would wrap round to 0 or a negative, silently asking for
    the opposite)."""
    with pytest.raises(ValueError, match=r"mmap_threshold_mb must be a whole number in 1\.\.2047"):
        reuse_large_buffers(0)
    with pytest.raises(ValueError, match=r"trim_threshold_mb must be a whole number in 1\.\.2047 .* got 4096"):
        reuse_large_buffers(256, 4096)
    for bad in ("256", True, 2.0):  # text from a config file, a flag, a float: refused, not read as 256 or 1
        with pytest.raises(ValueError, match=rf"mmap_threshold_mb must be a whole number .* got {bad!r}"):
            reuse_large_buffers(bad)


def test_the_cli_classify_applies_it_to_its_own_process(tmp_path, monkeypatch, caplog):
    """``hsi-engine classify`` opts its process in (recorded here instead of applied: the test process keeps
    its allocator); the map is written all the same."""
    import numpy as np
    import xarray as xr

    import hsi_engine.allocator
    from hsi_engine.cli import main
    from ssrn.checkpoint import save_model

    from test_runner import _cube, _model

    calls = []
    monkeypatch.setattr(hsi_engine.allocator, "reuse_large_buffers", lambda *a, **k: calls.append(a) or True)
    xr.DataArray(_cube(np.float32, h=12, w=14), dims=("band", "y", "x"), name="r").to_zarr(tmp_path / "s.zarr")
    save_model(_model(stats=True), tmp_path / "model")
    assert main(["classify", str(tmp_path / "s.zarr"), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "map.tif")]) == 0
    assert calls == [()] and (tmp_path / "map.tif").exists()
    # the CLI logs warnings as one line each (py.warnings), once
    assert sum("georeferencing" in r.getMessage() for r in caplog.records if r.name == "py.warnings") == 1


def test_without_mallopt_nothing_is_applied(monkeypatch):
    """A C library without mallopt (macOS, Windows, musl): False and a log line, never an exception."""
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert reuse_large_buffers() is False
