"""A process killed (SIGKILL) between a GeoTIFF commit's renames: the next run into the output finishes the commit
from its journal, so the output set is the killed run's, whole (never its side files beside the old map, or beside
no map); timeouts a program raises are not taken for disk failures; a writer's __del__ is silent on a signal."""

from __future__ import annotations

import errno
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hsi_engine.commit_journal import journal_path
from hsi_engine.errors import OutputError
from hsi_engine.writers import open_writer

# writes a 32 x 32 map with probabilities and confidence into argv[1]; with argv[2] == "kill" it SIGKILLs itself
# at the rename of the class map (argv[3]: "before" or "after" it), as a lost node or the OOM killer would
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from hsi_engine.writers import open_writer

    out, mode, when, seed, overwrite = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    if mode == "kill":
        real = os.replace
        def replace(src, dst, *a, **k):
            hit = os.path.basename(os.fspath(dst)) == "map.tif"
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst, *a, **k)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 4, (32, 32)).astype(np.uint8)
    probs = rng.random((3, 32, 32)).astype(np.float32)
    w = open_writer(out, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                    class_names=[f"c{seed}_{i}" for i in range(3)], probabilities="float32", confidence=True,
                    overwrite=overwrite, block=16)
    w.write(0, 0, labels, probs, probs.max(0))
    w.commit()
""")
NAMES = ("map.tif", "map_probabilities.tif", "map_confidence.tif", "map.tif.aux.xml")


def child(out: Path, *, seed: int, kill: str | None = None, overwrite: bool = False) -> int:
    return subprocess.run([sys.executable, "-c", CHILD, str(out), "kill" if kill else "run", kill or "-", str(seed),
                           "1" if overwrite else "0"], capture_output=True, timeout=60).returncode


def output_set(d: Path) -> dict[str, object]:
    """Each visible file of the output: its arrays (GeoTIFFs) or text (.aux.xml)."""
    import rasterio

    found: dict[str, object] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix == ".tif":
            with rasterio.open(p) as f:
                found[p.name] = f.read()
        else:
            found[p.name] = p.read_text()
    return found


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ref")
    assert child(d / "map.tif", seed=2) == 0
    return output_set(d)


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "fresh"])
def test_a_commit_killed_before_the_map_s_rename_is_finished_by_the_next_run(tmp_path, reference, overwrite, caplog):
    out = tmp_path / "map.tif"
    if overwrite:
        assert child(out, seed=1) == 0  # an old output, of other pixels and class names
    assert child(out, seed=2, kill="before", overwrite=overwrite) == -signal.SIGKILL
    assert journal_path(out).exists()  # the side files are the new run's, the map is not: the journal says so
    with caplog.at_level(logging.INFO, logger="hsi_engine"), pytest.raises(OutputError, match="already exists"):
        open_writer(out, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                    probabilities="float32", confidence=True)
    assert "finished the commit of an interrupted run" in caplog.text
    assert_same(output_set(tmp_path), reference)  # the killed run's output, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # journal and temps swept


def test_a_commit_killed_after_the_map_s_rename_leaves_no_hidden_copy_after_a_refused_rerun(tmp_path, reference):
    from hsi_engine.resume import refuse_outputs_in_the_way

    out = tmp_path / "map.tif"
    assert child(out, seed=2, kill="after") == -signal.SIGKILL
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # full-size hidden temps
    with pytest.raises(OutputError, match="already exists"):
        refuse_outputs_in_the_way(out, ".tif", "float32", overwrite=False)  # the plain rerun's first refusal
    assert_same(output_set(tmp_path), reference)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_map_put_back_by_hand_after_the_kill_is_not_replaced_by_the_stale_commit(tmp_path, caplog):
    """An --overwrite run killed mid-commit, then the user's own map.tif put back (a backup restored): the next run
    finished the killed run's renames over it, without --overwrite. A target changed since the journal was written
    gives the commit up: the user's file stays, the killed run's hidden files are swept."""
    import shutil

    out = tmp_path / "map.tif"
    assert child(out, seed=1) == 0
    backup = tmp_path.parent / f"{tmp_path.name}-backup.tif"
    shutil.copy2(out, backup)
    assert child(out, seed=2, kill="before", overwrite=True) == -signal.SIGKILL
    out.unlink()
    shutil.copy(backup, out)  # the backup put back by hand: another file at the map's name
    kept = out.read_bytes()
    with caplog.at_level(logging.WARNING, logger="hsi_engine"), pytest.raises(OutputError, match="already exists"):
        open_writer(out, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                    probabilities="float32", confidence=True)
    assert "did not finish the commit an interrupted run left half done" in caplog.text and "map.tif" in caplog.text
    assert out.read_bytes() == kept
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_journal_naming_other_files_is_not_followed(tmp_path, caplog):
    from hsi_engine.commit_journal import roll_forward

    (tmp_path / "precious.txt").write_text("keep")
    journal_path(tmp_path / "map.tif").write_text('{"installs": [["precious.txt", "map.tif"]], "remove": []}')
    with caplog.at_level(logging.WARNING, logger="hsi_engine"):
        assert roll_forward(tmp_path / "map.tif") is False
    assert (tmp_path / "precious.txt").read_text() == "keep" and not (tmp_path / "map.tif").exists()
    assert not journal_path(tmp_path / "map.tif").exists()


class SceneTimeout(TimeoutError):
    """A service's deadline, raised from its signal handler."""


def _writer(path: Path):
    return open_writer(path, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                       block=16)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_program_s_timeout_mid_write_is_raised_as_itself_not_as_a_disk_failure(tmp_path, suffix):
    w = _writer(tmp_path / f"m{suffix}")

    def late(*a, **k):
        raise SceneTimeout("the service's limit for this scene")
    w._write = late
    with pytest.raises(SceneTimeout):
        w.write(0, 0, np.ones((16, 16), np.uint8))
    w._commit = late
    with pytest.raises(SceneTimeout):
        w.commit()
    assert not list(tmp_path.iterdir())  # aborted: nothing left


def test_a_timeout_the_os_reports_is_still_a_write_failure(tmp_path):
    w = _writer(tmp_path / "m.tif")

    def timed_out(*a, **k):
        raise OSError(errno.ETIMEDOUT, "Connection timed out")  # (an NFS write: TimeoutError with an errno)
    w._write = timed_out
    with pytest.raises(OutputError, match="a write failed"):
        w.write(0, 0, np.ones((16, 16), np.uint8))
    w.abort()


def test_a_signal_in_a_dropped_writer_s_cleanup_prints_nothing(tmp_path, capsys):
    w = _writer(tmp_path / "m.tif")

    def interrupted():
        raise KeyboardInterrupt
    w.abort = interrupted
    w.__del__()  # (the second Ctrl-C landing while a dropped writer cleans up)
    w._done = True
    assert capsys.readouterr().err == ""


def test_a_stray_zarr_chunk_temp_in_a_resumed_store_is_not_delivered(tmp_path):
    """zarr writes a chunk to '<chunk>.<uuid>.partial' and renames it: one a killed run left stayed in the store."""
    import xarray as xr

    from hsi_engine.resume import ResumableZarrWriter

    out = tmp_path / "m.zarr"
    kw = dict(grid=(2, 2), fingerprint={"k": 1}, height=32, width=32, n_classes=3, block=16)
    w = ResumableZarrWriter(out, resume=False, **kw)
    w.write_tile(0, 0, 1, 0, 0, np.ones((16, 16), np.uint8))
    stray = w.partial / "classes" / "c" / "0" / f"1.{'ab' * 16}.partial"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a chunk")  # (the killed run's)
    w.keep_partial()
    w = ResumableZarrWriter(out, resume=True, **kw)
    for r, c in ((0, 1), (1, 0), (1, 1)):
        w.write_tile(r, c, 2, 16 * r, 16 * c, np.full((16, 16), 2, np.uint8))
    w.commit()
    assert not [p for p in out.rglob("*.partial")]
    assert int(xr.open_zarr(out)["classes"].sum()) == 16 * 16 * (1 + 2 * 3)
