"""One live run per output, and what an interrupted run leaves: a second run into the same output is refused
while the first lives (and not after it is killed); a cancelled run's task still running writes nothing into a
store a later run took over; a run stopped while writing its final map keeps every tile for --resume."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
from hsi_engine import cluster
from hsi_engine.errors import OutputError
from hsi_engine.lock import lock_path, output_lock
from hsi_engine.resume import OWNER_ATTR, ResumableZarrWriter, partial_path, read_record

TILE = 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return F.classified_crop(tmp_path_factory.mktemp("safety"), 32, 48, y0=10, x0=30, tile=TILE)  # 2 x 3 tiles


def _stopped_run_s_task(case, out: Path, token: str, index: int, fingerprint: str = "x"):
    """A partial store run ``token`` owns, left as a stopped run leaves it, and that run's task spec for tile
    ``index`` (2 x 3 tiles of 16)."""
    w = ResumableZarrWriter(out, grid=(2, 3), fingerprint={"run": fingerprint}, resume=False, height=32, width=48,
                            n_classes=5, block=TILE)
    w.start_run(token)
    w.keep_partial()
    tile = hsi_engine.tiles.plan_tiles(32, 48, TILE, 2).tiles[index]
    spec = cluster.TaskSpec(store=str(partial_path(out).resolve()), run=1, tile=TILE, scene=str(case["scene"]),
                            model=str(case["model"]), model_key="k", mean=None, std=None, nodata=None,
                            backend="eager", precision="float32", device="cpu", probabilities=False, token=token)
    return spec, tile


def _hold_lock(out: Path, resumable: bool = False) -> subprocess.Popen:
    """Another process holding ``out``'s lock, as a live run does (returns once it holds it)."""
    script = ("import sys, time; from hsi_engine.lock import output_lock\n"
              "with output_lock(sys.argv[1], resumable=sys.argv[2] == '1'):\n    print('held', flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out), "1" if resumable else "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def test_a_second_run_into_a_live_run_s_output_is_refused_until_that_run_dies(case, tmp_path):
    out = tmp_path / "map.tif"
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputError, match=rf"another run is writing .*map\.tif now \(pid {holder.pid} on "):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
        assert not out.exists() and not partial_path(out).exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without unlocking: the kernel drops its lock
        holder.wait(30)
    assert lock_path(out).exists()  # the killed run's stale file ...
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)  # ... blocks nothing
    assert rep.computed == case["tiles"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert F.leftovers(tmp_path, out.name) == ["map.tif", "map.tif.aux.xml"]  # the lock file went with the run


@pytest.mark.parametrize("resumable", [False, True])
def test_the_refusal_says_whether_stopping_the_live_run_keeps_its_tiles(case, tmp_path, resumable):
    """A run started without --resume keeps no tiles when stopped: the refusal told the second run to stop it and
    'rerun with --resume to finish its tiles', which then started over. It says so now; a resumable holder's
    refusal keeps the advice."""
    out = tmp_path / "map.tif"
    holder = _hold_lock(out, resumable=resumable)
    try:
        with pytest.raises(OutputError) as e:
            hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    if resumable:
        assert "rerun with resume=True (--resume) to finish its tiles" in str(e.value)
    else:
        assert "started without resume=True (--resume), so it keeps no tiles" in str(e.value)
        assert "to finish its tiles" not in str(e.value)


def test_the_cli_names_the_live_run_in_one_line_and_exits_2(case, tmp_path, capsys):
    from hsi_engine.cli import main

    out = tmp_path / "map.zarr"
    holder = _hold_lock(out)
    try:
        rc = main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(out), "--tile",
                   str(TILE), "--resume"])
    finally:
        holder.kill()
        holder.wait(30)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"pid {holder.pid}" in err and "Traceback" not in err


def test_the_lock_is_taken_again_after_its_holder_released_it(tmp_path):
    out = tmp_path / "a.zarr"
    with output_lock(out) as p:
        assert p == lock_path(out) and p.exists()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):  # a second open file description conflicts
            with output_lock(out):
                pass
    assert not p.exists()
    with output_lock(out):
        pass


def test_a_cancelled_run_s_task_writes_nothing_into_a_store_another_run_took_over(case, tmp_path):
    """A task of an interrupted cluster run keeps running after client.cancel; when it ends, a rerun with
    --overwrite may have put another scene's run in the same partial store. The task must not write there."""
    out = tmp_path / "map.zarr"
    new_run, tile = _stopped_run_s_task(case, out, "new-run-token", 4, fingerprint="new")  # the rerun's store
    spec = cluster.TaskSpec(**{**new_run.__dict__, "token": "old-run-token"})  # the cancelled run's task
    store = spec.store
    with pytest.raises(OutputError, match="another run has taken over"):
        cluster._tile_task(spec, tile)
    import zarr

    g = zarr.open_group(store, mode="r")
    assert (np.asarray(g["classes"][...]) == 0).all()  # nothing written ...
    assert (read_record(store) == 0).all()  # ... nor marked
    assert dict(g.attrs)[OWNER_ATTR] == "new-run-token"
    # the run that owns it writes
    res = cluster._tile_task(new_run, tile)
    assert res["index"] == tile.index and read_record(store)[tile.y0 // TILE, tile.x0 // TILE] == 1


@pytest.mark.parametrize("rerun_committed", [False, True], ids=["rerun-writing", "rerun-committed"])
def test_a_stopped_run_s_write_that_passed_its_check_never_reaches_the_run_that_took_over(case, tmp_path,
                                                                                         monkeypatch,
                                                                                         rerun_committed):
    """The owner check is check-then-write: on slow storage a stopped run's task can pass it, and its chunk write
    can stall, while an --overwrite rerun replaces the store. That write must not land in the rerun's map, nor
    recreate ``<out>.partial`` after the rerun committed (both seen with 10 s chunk writes)."""
    import zarr

    out = tmp_path / "map.zarr"
    kw = dict(grid=(2, 3), height=32, width=48, n_classes=5, block=TILE)
    # the old run's driver was stopped; its task is still computing
    spec, tile = _stopped_run_s_task(case, out, "old-run-token", 4, fingerprint="old")
    plan = hsi_engine.tiles.plan_tiles(32, 48, TILE, 2)
    new: list[ResumableZarrWriter] = []
    stalled: list[str] = []
    real_set = zarr.storage.LocalStore.set

    def takeover():
        w = ResumableZarrWriter(out, fingerprint={"run": "new"}, resume=False, overwrite=True, **kw)
        w.start_run("new-run-token")
        for t in plan.tiles:
            w.write_tile(t.y0 // TILE, t.x0 // TILE, 1, t.y0, t.x0, np.full((t.y1 - t.y0, t.x1 - t.x0), 2, np.uint8))
        if rerun_committed:
            w.commit()
        new.append(w)

    async def stalled_set(self, key, value):
        if "classes/c/" in key and not stalled:  # the task's chunk write stalls; meanwhile the rerun takes over
            import asyncio

            stalled.append(key)
            await asyncio.to_thread(takeover)
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", stalled_set)
    with pytest.raises(OutputError, match="was removed while tile"):  # the old store is gone: nothing lands
        cluster._tile_task(spec, tile)
    monkeypatch.undo()
    assert new, "the takeover did not happen"
    if not rerun_committed:
        assert (read_record(partial_path(out)) == 1).all()
        new[0].commit()
    classes = np.asarray(zarr.open_group(str(out), mode="r")["classes"][...])
    assert (classes == 2).all()  # the rerun's map holds only its own tiles
    assert not partial_path(out).exists()  # nothing recreated the old partial store
    assert F.leftovers(tmp_path, out.name) == ["map.zarr"]


@pytest.mark.parametrize("name", ["map.tif", "map.zarr"])
def test_a_run_stopped_while_writing_its_map_keeps_every_tile(case, tmp_path, monkeypatch, caplog, name):
    """SIGTERM (the CLI turns it into KeyboardInterrupt) during the final GeoTIFF conversion or zarr commit must
    not delete the complete partial store; --resume then writes the map without computing a tile."""
    import logging

    from hsi_engine import writers

    out = tmp_path / name
    hook = writers.GeoTiffClassMapWriter if name.endswith(".tif") else writers.ZarrClassMapWriter

    def interrupted(self):
        raise KeyboardInterrupt("signal 15")

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="hsi_engine"):
        m.setattr(hook, "_commit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    gc.collect()  # a dropped writer must not delete it either
    part = partial_path(out)
    # (it said "wrote map.tif, then stopped ... the map is complete" of a GeoTIFF commit stopped mid-way)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"stopped while writing {out}; {part} holds every tile: rerun with resume=True (--resume) to write the map "
        "without computing again"]
    assert (read_record(part) == 1).all() and not out.exists()
    rep = cluster.run_to_file(case["scene"], case["model"], out, resume=True)
    assert rep.computed == 0 and rep.skipped == case["tiles"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert not part.exists() and not lock_path(out).exists()


@pytest.mark.parametrize("when", ["map-temps", "before-removal", "mid-removal"])
def test_a_run_stopped_after_its_map_was_written_blocks_no_rerun(case, tmp_path, monkeypatch, caplog, when):
    """SIGTERM ~64 ms after the last tile of a .tif run landed while the partial store was being deleted: the map
    was complete, the half-deleted store blocked every rerun (--resume, --overwrite, plain) with messages pointing
    at each other, and the stop message said the store held every tile. The store is now renamed away before it
    is deleted; --resume on the complete map removes a store left whole; the next run sweeps the trash."""
    import logging
    import shutil

    from hsi_engine import writers

    out = tmp_path / "map.tif"
    with monkeypatch.context() as m:
        if when == "map-temps":  # the GeoTIFF is in place; its writer's temps (COG copies) are being unlinked
            cleanup, calls = writers.GeoTiffClassMapWriter._cleanup, []

            def stopped_cleanup(self):
                calls.append(1)
                if len(calls) == 1:
                    raise KeyboardInterrupt("signal 15")
                cleanup(self)

            m.setattr(writers.GeoTiffClassMapWriter, "_cleanup", stopped_cleanup)
        elif when == "before-removal":
            m.setattr(writers, "remove_tree", lambda path: (_ for _ in ()).throw(KeyboardInterrupt("signal 15")))
        else:
            m.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("signal 15")))
        with caplog.at_level(logging.WARNING, logger="hsi_engine"), pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    gc.collect()
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])  # the map is complete
    stop = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(stop) == 1 and stop[0].startswith(f"wrote {out}, then stopped") and "holds every tile" not in stop[0]
    part = partial_path(out)
    if when in ("map-temps", "before-removal"):
        assert part.exists() and "--resume" in stop[0]
        with pytest.raises(OutputError, match="pass resume=True"):  # a plain rerun is sent to --resume, ...
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE)
    else:
        assert not part.exists()
        assert [n for n in F.leftovers(tmp_path, out.name) if ".trash-" in n]  # what the delete did not finish
    rep = cluster.run_to_file(case["scene"], case["model"], out, resume=True)  # ... which removes what is left
    assert rep.computed == 0
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert F.leftovers(tmp_path, out.name) == ["map.tif", "map.tif.aux.xml"]  # store and trash gone


def test_a_commit_stopped_between_the_side_files_and_the_map_is_resumed(case, tmp_path, monkeypatch):
    """Side files are replaced first, the map last; stopped in between, --resume refused with 'output
    ..._probabilities.tif already exists'. Side files this run's commit wrote (its fingerprint tag) are redone."""
    out = tmp_path / "map.tif"
    real = os.replace

    def stopped_at_the_map(src, dst, *a, **k):
        if Path(dst) == out:
            raise KeyboardInterrupt("signal 15")
        return real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", stopped_at_the_map)
        m.setattr(hsi_engine.writers, "_put_back", lambda done, moved: [])  # killed between renames: no undo runs
        with pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, probabilities=True)
    gc.collect()
    sides = hsi_engine.outputs.side_paths(out)
    assert sides["probabilities"].exists() and not out.exists() and (read_record(partial_path(out)) == 1).all()
    rep = cluster.run_to_file(case["scene"], case["model"], out, resume=True, probabilities=True)
    assert rep.computed == 0
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert F.leftovers(tmp_path, out.name) == ["map.tif", "map.tif.aux.xml", "map_confidence.tif",
                                               "map_probabilities.tif"]
    other = tmp_path / "other.tif"  # a side file some other run wrote is never taken over
    hsi_engine.classify_to_file(case["scene"], case["model"], tmp_path / "x.tif", tile=TILE, probabilities=True,
                                progress=False)
    os.replace(tmp_path / "x_probabilities.tif", tmp_path / "other_probabilities.tif")
    with pytest.raises(OutputError, match="other_probabilities.tif already exists"):
        cluster.run_to_file(case["scene"], case["model"], other, tile=TILE, resume=True, probabilities=True)


def test_a_run_stopped_between_its_last_tile_and_the_commit_keeps_every_tile(case, tmp_path, monkeypatch):
    out = tmp_path / "map.tif"

    def interrupted(self, run, **info):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ResumableZarrWriter, "finish_run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    gc.collect()
    assert (read_record(partial_path(out)) == 1).all()
    assert cluster.run_to_file(case["scene"], case["model"], out, resume=True).computed == 0


def test_a_plain_run_is_refused_while_another_run_lives(case, tmp_path):
    """A plain (non-resumable) run with --overwrite discards <out>.partial once committed: never a live run's."""
    out = tmp_path / "plain.tif"
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputError, match="another run is writing"):
            hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True,
                                        progress=False)
    finally:
        holder.kill()
        holder.wait(30)
    hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, progress=False)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert F.leftovers(tmp_path, out.name) == ["plain.tif", "plain.tif.aux.xml"]


def test_another_user_s_leftover_lock_file_blocks_no_one(tmp_path, monkeypatch):
    """A lock file a killed run of another user left (0644, not writable for us) could not be opened for
    writing: 'cannot create the lock file ... Permission denied' for good. flock needs only a read-only
    descriptor. (The test runs as one user, often root, who may open anything: os.open refuses O_RDWR on that
    file here as the kernel does for another user.)"""
    from hsi_engine import lock

    out = tmp_path / "map.tif"
    lock_path(out).write_text('{"pid": 1, "host": "elsewhere", "started": "yesterday"}')
    real_open = os.open

    def open_as_another_user(path, flags, *a):
        if Path(path) == lock_path(out) and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(lock.os, "open", open_as_another_user)
    with output_lock(out):
        with pytest.raises(OutputError, match="another run is writing"):  # and it does hold it
            with output_lock(out):
                pass
    assert not lock_path(out).exists()


@pytest.mark.parametrize("resume", [False, True])
def test_an_unsupported_output_suffix_leaves_no_directory(case, tmp_path, resume):
    out = tmp_path / "new" / "map.png"
    with pytest.raises(OutputError, match=r"suffix '\.png' is not supported"):
        hsi_engine.classify_to_file(case["scene"], case["model"], out, resume=resume, progress=False)
    assert not out.parent.exists()


def test_taking_the_lock_sweeps_only_a_killed_run_s_hidden_temps(tmp_path):
    """A SIGKILLed run leaves hidden temps (GeoTIFF tiles, COG copies, a store being deleted); the next run into
    that output removes them once it holds the lock, and nothing else: not the partial store, not another
    output's temps, not files that merely start with the same name."""
    keep = ["map.tif.partial", "map.tif", "map2.tif", ".map2.tif.tmp-0123abcd.tif", ".map.tif.tmpx", "notes.txt",
            ".map.tif.partialx", ".map.tif.old-backup.tif", ".map.tif.cog-decade-notes",
            ".map_probabilities.tif.tmp-fixed", ".map.tif.tmp-0123abcd.tif.bak"]
    gone = [".map.tif.tmp-0123abcd.tif", ".map.tif.cog-89abcdef.tif", ".map_probabilities.tif.tmp-01234567.tif",
            ".map.tif.aux.xml.tmp-01234567.xml", ".map.tif.partial.trash-0a1b2c3d", ".map.tif.old-00ff00ff.tif",
            ".map.tif.tmp-0123abcd.tif.trash-456789ab", ".map.tif.partial.tmp-0123abcd"]
    for n in keep + gone:
        if "partial" in n or "trash" in n:
            (tmp_path / n).mkdir()
            (tmp_path / n / "zarr.json").write_text("{}")
        else:
            (tmp_path / n).write_bytes(b"x")
    with output_lock(tmp_path / "map.tif"):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [".map.tif.lock"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_a_cluster_task_s_disk_full_is_the_run_s_own_error_not_a_takeover(case, tmp_path, monkeypatch):
    """A write error while the store is still the run's own (a full disk) must stay that error: reported as 'the
    store was removed, this run was stopped' (an OutputError, bad input) the driver deleted every written tile."""
    import errno

    import zarr

    spec, tile = _stopped_run_s_task(case, tmp_path / "full.zarr", "token", 1)

    async def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    with pytest.raises(OSError, match="No space left") as err:
        cluster._tile_task(spec, tile)
    assert not isinstance(err.value, OutputError)


def test_a_plain_overwrite_that_cannot_remove_the_old_partial_store_still_succeeds(case, tmp_path, monkeypatch,
                                                                                 caplog):
    """--overwrite discards <out>.partial after the new map is committed; when that store cannot be removed the
    map is still written: a warning naming what is left, not an error (exit 2) for a finished run."""
    import logging

    from hsi_engine import resume

    out = tmp_path / "map.tif"
    w = ResumableZarrWriter(out, grid=(2, 3), fingerprint={"run": "old"}, resume=False, height=32, width=48,
                            n_classes=5, block=TILE)
    w.keep_partial()
    monkeypatch.setattr(resume, "remove_tree", lambda path: False)
    with caplog.at_level(logging.WARNING, logger="hsi_engine"):
        hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True, progress=False)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert any(r.getMessage().startswith(f"wrote {out}, but cannot remove the partial store") for r in caplog.records)


def test_a_zarr_run_stopped_just_after_its_rename_says_the_map_is_written(case, tmp_path, monkeypatch, caplog):
    """The zarr commit is one rename; a signal right after it said 'stopped while writing ...; <out>.partial holds
    every tile' though the store had become the map. The message follows what is on disk."""
    import logging

    from hsi_engine import writers

    out = tmp_path / "map.zarr"

    def renamed_then_stopped(self):
        self._group.attrs["partial"] = 0
        writers.ZarrClassMapWriter._commit(self)
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(ResumableZarrWriter, "_commit", renamed_then_stopped)
    with caplog.at_level(logging.WARNING, logger="hsi_engine"), pytest.raises(KeyboardInterrupt):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    stop = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert stop == [f"wrote {out}, then stopped while cleaning up; the next run into it removes what is left"]
    monkeypatch.undo()
    assert cluster.run_to_file(case["scene"], case["model"], out, resume=True).computed == 0
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


def test_a_run_stopped_while_creating_its_partial_store_leaves_nothing_that_blocks(case, tmp_path, monkeypatch):
    """SIGTERM a few ms after <out>.partial appeared left a store holding only x/zarr.json (zarr's I/O thread
    wrote it after the run had removed the store): --resume called it not ours, --overwrite refused to delete it,
    a pipeline was stuck. The store is built under a hidden name and renamed whole; what a late write leaves
    there is swept by the next run."""
    import zarr

    from hsi_engine import resume

    out = tmp_path / "map.zarr"
    real = zarr.create_array

    def stopped(store, *a, **k):
        if k.get("name") == resume.RECORD:  # the signal lands in the main thread while zarr's I/O thread is
            def late_write():  # still writing: its write lands after the run removed the store
                (Path(store) / "x").mkdir(parents=True, exist_ok=True)
                (Path(store) / "x" / "zarr.json").write_text("{}")

            late = threading.Timer(0.3, late_write)
            late.start()
            writers.append(late)
            raise KeyboardInterrupt("signal 15")
        return real(store, *a, **k)

    writers: list = []
    with monkeypatch.context() as m:
        m.setattr(zarr, "create_array", stopped)
        with pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    writers[0].join()
    gc.collect()
    assert not partial_path(out).exists()  # nothing half-made under the name reruns look at (a hidden temp)
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE)  # a plain rerun: not refused
    assert rep.computed == case["tiles"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert F.leftovers(tmp_path, out.name) == ["map.zarr"]


def test_resume_with_overwrite_finishes_an_interrupted_run_else_replaces_the_output(case, tmp_path, monkeypatch):
    """--resume --overwrite (as --help says): an interrupted run with these settings is finished; with none, the
    existing output is computed again and replaced."""
    out = tmp_path / "map.zarr"
    cluster.run_to_file(case["scene"], case["model"], out, tile=TILE)
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, overwrite=True)
    assert rep.computed == case["tiles"]  # no interrupted run: started over, the map replaced
    with monkeypatch.context() as m:
        F.crash_writes_after(m, 2)
        with pytest.raises(RuntimeError, match="simulated crash"):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True)
    assert (read_record(partial_path(out)) > 0).sum() == 2
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, overwrite=True)
    assert rep.computed == case["tiles"] - 2 and not partial_path(out).exists()  # the interrupted run, finished
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


def test_a_resume_stopped_while_reopening_its_store_keeps_every_tile(case, tmp_path, monkeypatch):
    """A signal while a resumed run reopened <out>.partial made the writer abort, and the abort deleted the store
    with every tile of the interrupted run."""
    import zarr

    out = tmp_path / "map.zarr"
    with monkeypatch.context() as m:
        F.crash_writes_after(m, 3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE)
    real = zarr.open_group

    def stopped(store, *a, **k):
        if k.get("mode") == "r+":
            raise KeyboardInterrupt("signal 15")
        return real(store, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(zarr, "open_group", stopped)
        with pytest.raises(KeyboardInterrupt):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    gc.collect()
    assert (read_record(partial_path(out)) > 0).sum() == 3
    assert cluster.run_to_file(case["scene"], case["model"], out, resume=True).computed == case["tiles"] - 3


def test_a_rescheduled_task_of_a_tile_its_run_wrote_does_not_compute_it_again(case, tmp_path, monkeypatch):
    """dask reschedules a finished task whose worker died before the driver fetched its result: the tile was
    computed (and written) a second time. The task finds its tile written by its own run and returns at once."""
    spec, tile = _stopped_run_s_task(case, tmp_path / "map.zarr", "token", 4)
    first = cluster._tile_task(spec, tile)
    assert first["reused"] is False
    computed = []
    real = cluster.compute_tile
    monkeypatch.setattr(cluster, "compute_tile", lambda *a, **k: computed.append(1) or real(*a, **k))
    again = cluster._tile_task(spec, tile)
    assert again["reused"] is True and computed == [] and again["nodata_px"] == first["nodata_px"]
    other_run = cluster.TaskSpec(**{**spec.__dict__, "run": 2, "token": "token"})  # another run number: computes
    assert cluster._tile_task(other_run, tile)["reused"] is False and computed == [1]


@pytest.mark.parametrize("out_name", ["map.tif", "map.zarr"])
def test_a_scene_changed_while_it_is_read_leaves_no_map(case, tmp_path, monkeypatch, out_name):
    """A `cp` over the scene, a truncation, a zarr chunk deleted part-way through a run: HDF5 reads zeros past the
    new end and zarr fills a missing chunk, so the run finished with a map of two versions, exit 0. The scene's files
    are checked again after the last tile: a change is a SceneError and no map is written (a resumable run keeps
    its tiles, which --resume then refuses as another scene's)."""
    import shutil

    from hsi_engine.errors import SceneError
    from hsi_engine.fused import FusedSSRN

    scene = tmp_path / "scene.zarr"
    shutil.copytree(case["scene"], scene)
    real = FusedSSRN.__call__

    def touching(self, x):  # after the first tile: a chunk file rewritten (another mtime)
        chunk = next(p for p in sorted(scene.rglob("*")) if p.is_file() and p.name != "zarr.json")
        os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))
        return real(self, x)

    monkeypatch.setattr(FusedSSRN, "__call__", touching)
    out = tmp_path / out_name
    with pytest.raises(SceneError, match=r"changed while this run read it: .* changed .*; the map would mix two"):
        hsi_engine.classify_to_file(str(scene), str(case["model"]), out, tile=TILE, progress=False)
    assert not out.exists()
    monkeypatch.setattr(FusedSSRN, "__call__", real)
    if out_name.endswith(".zarr"):
        assert partial_path(out).exists()
        with pytest.raises(OutputError):
            hsi_engine.classify_to_file(str(scene), str(case["model"]), out, tile=TILE, progress=False, resume=True)


def test_a_run_record_that_cannot_be_written_leaves_no_store(case, tmp_path, monkeypatch):
    """The journal's run record written on a full disk (or with no inode left): a bare OSError, and an empty
    .partial store left that refused the next plain run."""
    import errno

    from hsi_engine.resume import ResumableZarrWriter

    def full(self, token=""):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.partial / "zarr.json"))

    out = tmp_path / "map.zarr"
    with monkeypatch.context() as m:
        m.setattr(ResumableZarrWriter, "start_run", full)
        with pytest.raises(OutputError, match="the file system is full"):
            hsi_engine.classify_to_file(str(case["scene"]), str(case["model"]), out, tile=TILE, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    hsi_engine.classify_to_file(str(case["scene"]), str(case["model"]), out, tile=TILE, progress=False)
    assert (F.read_classes(out) == case["ref"]).all()


def test_statistics_a_gis_writes_beside_the_scene_are_no_change(tmp_path):
    """GDAL writes a scene's statistics to its .aux.xml when a GIS shows it: the pixels are the same, so that is no
    change (a run was refused for it); a dangling link in a store (zarr skips it) is left out, not an OSError."""
    import rasterio

    from hsi_engine.scene_identity import scene_changed, scene_state

    tif = tmp_path / "s.tif"
    with rasterio.open(tif, "w", driver="GTiff", height=4, width=4, count=2, dtype="uint16") as f:
        f.write(np.ones((2, 4, 4), np.uint16))
    before = scene_state(tif)
    (tmp_path / "s.tif.aux.xml").write_text("<PAMDataset/>")
    assert scene_changed(tif, before) is None
    with open(tif, "ab") as f:
        f.write(b"\0")
    assert "s.tif changed (" in str(scene_changed(tif, before))
    store = tmp_path / "z"
    store.mkdir()
    (store / "a").write_bytes(b"1")
    (store / "dangling").symlink_to(tmp_path / "nowhere")
    before = scene_state(store)
    assert list(before) == [str(store / "a")]
    (store / "b").write_bytes(b"2")
    assert "z/b appeared" in str(scene_changed(store, before))
