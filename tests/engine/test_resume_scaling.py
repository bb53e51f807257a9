"""The completion record at scale: read by listing the chunks that exist (not by looking up every cell), kept in
memory by the driver's writer, read one cell at a time by cluster tasks; and a cluster run's tasks submitted in a
bounded window. A 50,000-pixel square scene at tile 128 has 152,881 tiles: each full read of its record took
~43 s, and every tile task made one."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import _scale_fixtures as F

from hsi_engine import cluster, resume
from hsi_engine.resume import RECORD, ResumableZarrWriter, mark_tile, partial_path, read_record, read_record_cell

TILE = 16
pytestmark = pytest.mark.filterwarnings("ignore:writing .* without georeferencing:UserWarning")


def _record(store: Path, shape: tuple[int, int], **kw) -> zarr.Array:
    """An empty record laid out as ResumableZarrWriter makes it (``kw`` changes that layout)."""
    zarr.open_group(str(store), mode="w")
    opts = dict(chunks=(1, 1), dtype="uint16", fill_value=0, compressors=None,
                dimension_names=["tile_row", "tile_col"])
    return zarr.create_array(str(store), name=RECORD, shape=shape, **{**opts, **kw})


def _no_full_zarr_read(monkeypatch) -> None:
    """Fail any read of the record through zarr's own indexing (the read that looks up every cell's chunk)."""
    real = zarr.Array.__getitem__

    def getitem(self, key):
        if self.path == RECORD and key in (Ellipsis, (Ellipsis,), slice(None)):
            raise AssertionError("the whole record was read through zarr")
        return real(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", getitem)


def test_the_record_is_read_from_the_chunks_that_exist(tmp_path, monkeypatch):
    store = tmp_path / "m.zarr"
    arr = _record(store, (40, 50))
    want = np.zeros((40, 50), np.uint16)
    for r, c, v in [(0, 0, 1), (3, 49, 2), (39, 0, 65535), (39, 49, 7), (17, 23, 3)]:
        arr[r, c] = v
        want[r, c] = v
    arr[17, 23] = 0  # set back to the fill value: zarr deletes the chunk
    want[17, 23] = 0
    chunks = store / RECORD / "c"
    (chunks / "3" / "49.0123456789abcdef0123456789abcdef.partial").write_bytes(b"\x09\x00")  # a write in flight
    (chunks / "3" / "049").write_bytes(b"\x09\x00")  # not a key zarr reads (c/3/49 is)
    (chunks / "99").mkdir()
    (chunks / "99" / "0").write_bytes(b"\x09\x00")  # beyond the grid
    np.testing.assert_array_equal(np.asarray(arr[...]), want)  # (zarr's own reading of the same files)
    _no_full_zarr_read(monkeypatch)
    got = read_record(store)
    assert got.dtype == np.uint16 and got.shape == (40, 50)
    np.testing.assert_array_equal(got, want)
    assert read_record_cell(store, 39, 0) == 65535 and read_record_cell(store, 17, 23) == 0


def test_an_empty_record_of_a_big_scene_reads_at_once(tmp_path):
    store = tmp_path / "m.zarr"
    _record(store, (391, 391))  # a 50,000-pixel square scene at tile 128: ~43 s through zarr
    t = time.perf_counter()
    got = read_record(store)
    assert time.perf_counter() - t < 1.0
    assert got.shape == (391, 391) and not got.any()


@pytest.mark.parametrize("layout", ["big-endian", "compressed", "zarr-v2"])
def test_a_record_laid_out_otherwise_is_read_right(tmp_path, layout):
    """Big-endian cells are decoded as such; another codec or zarr format is read through zarr."""
    from zarr.codecs import BytesCodec

    store = tmp_path / "m.zarr"
    kw = {"big-endian": dict(serializer=BytesCodec(endian="big")), "compressed": dict(compressors="auto"),
          "zarr-v2": dict(zarr_format=2, dimension_names=None)}[layout]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = _record(store, (5, 6), **kw)
    arr[2, 3] = 258
    arr[4, 5] = 1
    got = read_record(store)
    assert got[2, 3] == 258 and got[4, 5] == 1 and int((got > 0).sum()) == 2


def test_a_chunk_that_is_not_one_raw_cell_is_left_to_zarr(tmp_path):
    store = tmp_path / "m.zarr"
    arr = _record(store, (3, 3))
    arr[1, 1] = 4
    (store / RECORD / "c" / "1" / "1").write_bytes(b"\x04\x00\x00")  # truncated or grown: not the raw layout
    with pytest.raises(Exception, match="size|bytes|shape|reshape"):  # zarr's own error for a chunk of that size
        read_record(store)


def test_a_cluster_task_reads_only_its_own_cell(tmp_path, monkeypatch):
    """The check whether a rescheduled task's tile is written read the whole record in every task."""
    out = tmp_path / "map.zarr"
    w = ResumableZarrWriter(out, grid=(2, 3), fingerprint={"run": "x"}, resume=False, height=32, width=48,
                            n_classes=5, block=TILE)
    run = w.start_run("tok")
    labels = np.zeros((TILE, TILE), np.uint8)
    labels[:4] = 2
    w.write_tile(1, 2, run, TILE, 2 * TILE, labels)
    w.keep_partial()
    spec = cluster.TaskSpec(store=str(partial_path(out).resolve()), run=run, tile=TILE, scene=None, model=None,
                            model_key="k", mean=None, std=None, nodata=None, backend="eager", precision="float32",
                            device="cpu", probabilities=False, token="tok")

    def whole(*a, **k):
        raise AssertionError("the whole record was read")

    monkeypatch.setattr(resume, "read_record", whole)
    monkeypatch.setattr(cluster, "read_record", whole, raising=False)
    _no_full_zarr_read(monkeypatch)
    assert cluster._already_written(spec, 1, 2) == TILE * TILE - 4 * TILE  # written: its nodata pixels
    assert cluster._already_written(spec, 0, 0) is None  # not written: computed


def test_the_driver_s_writer_keeps_the_record_it_read(tmp_path, monkeypatch):
    reads = []
    real = resume.read_record
    monkeypatch.setattr(resume, "read_record", lambda store: reads.append(store) or real(store))
    out = tmp_path / "map.zarr"
    w = ResumableZarrWriter(out, grid=(2, 3), fingerprint={"run": "x"}, resume=False, height=32, width=48,
                            n_classes=5, block=TILE)
    assert not w.done().any() and reads == []  # made empty just now: nothing to read
    run = w.start_run("tok")
    w.write_tile(0, 1, run, 0, TILE, np.ones((TILE, TILE), np.uint8))
    assert w.done()[0, 1] == run and int((w.done() > 0).sum()) == 1 and reads == []
    with pytest.raises(ValueError):
        w.done()[0, 0] = 5  # read-only: the writer's copy is not changed by a caller
    mark_tile(w.partial, 1, 2, run)  # a cluster task marks its tile in the store only
    assert w.done()[1, 2] == 0  # (the kept copy does not see it) ...
    assert w.done(fresh=True)[1, 2] == run and len(reads) == 1  # ... a fresh read does
    w.finish_run(run)
    assert len(reads) == 1 and w.runs()[-1]["computed"] == 2
    w.keep_partial()

    reads.clear()  # a resumed run reads the record once
    w2 = ResumableZarrWriter(out, grid=(2, 3), fingerprint={"run": "x"}, resume=True, height=32, width=48,
                             n_classes=5, block=TILE)
    assert w2.resumed and int((w2.done() > 0).sum()) == 2
    assert w2.start_run("tok2") == run + 1 and w2.runs()[-1]["done_before"] == 2 and len(reads) == 1
    w2.keep_partial()


class _Fut:
    def __init__(self, key: str) -> None:
        self.key = key


class _Completed(list):
    add = list.append


def test_the_task_window_submits_in_order_and_never_more_than_its_size():
    submitted: list[str] = []

    def submit(key: str) -> _Fut:
        submitted.append(key)
        return _Fut(key)

    keys = [f"t{i}" for i in range(7)]
    w = cluster._TaskWindow(submit, keys, _Completed(), lambda: 3)
    w.fill()
    assert submitted == keys[:3] and w.left() == 4
    w.fill()  # full: nothing more
    assert submitted == keys[:3]
    w.finished(w.completed[1])
    w.fill()
    assert submitted == keys[:4]
    assert sorted(f.key for f in w.close()) == ["t0", "t2", "t3"]  # in flight, to cancel
    w.finished(w.completed[0])
    w.fill()  # closed (a watcher stopped the run): nothing more is submitted
    assert submitted == keys[:4] and w.left() == 3


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return F.classified_crop(tmp_path_factory.mktemp("scaling"), 48, 64, y0=10, x0=30, tile=TILE)  # 3 x 4 tiles


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
        c = distributed.Client(lc)
    try:
        yield c
    finally:
        c.close()
        lc.close()


def test_a_cluster_run_keeps_a_bounded_window_of_tasks_submitted(case, client, tmp_path, monkeypatch, caplog):
    import logging
    from pathlib import Path

    from hsi_engine import runner

    monkeypatch.setattr(runner, "LOG_PROGRESS_EVERY_S", 0.0)  # (stderr is no terminal here: log lines)
    monkeypatch.setattr(cluster, "_WINDOW_MIN", 3)
    monkeypatch.setattr(cluster, "_WINDOW_PER_THREAD", 0)
    futures: list = []
    in_flight: list[int] = []
    real = type(client).submit

    def submit(self, *a, **k):
        in_flight.append(sum(not f.done() for f in futures) + 1)
        futures.append(real(self, *a, **k))
        return futures[-1]

    monkeypatch.setattr(type(client), "submit", submit)
    out = tmp_path / "map.zarr"
    with caplog.at_level(logging.INFO, "hsi_engine.runner"):
        rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, scheduler=client, throttle_s=0.02)
    assert rep.computed == rep.tiles == 12 and len(futures) == 12
    # its progress lines say which run they are (a service's concurrent runs)
    assert any(r.getMessage().startswith(f"classify {Path(case['scene']).resolve()}: ") for r in caplog.records)
    assert max(in_flight) <= 3, in_flight
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert (read_record(out) == 1).all()
