"""connect() fails fast with one clear error for a --scheduler that is not a dask scheduler (an HTTP server, the
dashboard port, a worker), a malformed or refused address, and a local cluster that cannot start; a local cluster
keeps distributed's INFO chatter out of the log. Real sockets, real HTTP servers and a real LocalCluster."""

from __future__ import annotations

import contextlib
import http.server
import logging
import multiprocessing
import operator
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402

import _scale_fixtures as F  # noqa: E402

from hsi_engine import cluster, dask_client  # noqa: E402
from hsi_engine.cli import main  # noqa: E402
from hsi_engine.errors import HSIEngineError  # noqa: E402

pytestmark = pytest.mark.timeout(60)  # a regression hangs (the review's 150 s): fail it instead

CONNECT_2S = {"distributed.comm.timeouts.connect": "2s"}
# for a peer that accepts and never answers: the error comes when the whole timeout has passed, so keep it short
CONNECT_HALF_S = {"distributed.comm.timeouts.connect": "0.5s"}
REFUSED_GRACE_S = 0.2  # dask_client._REFUSED_GRACE_S (2 s) in tests that wait it out on a refused port
HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("connect")
    cube = F.ip_crop(32, 32)
    return {"scene": F.write_zarr(d / "scene.zarr", cube), "model": F.save_tiny_model(d / "model", cube)}


@pytest.fixture(scope="module")
def local():
    """A real dask cluster in this process, over TCP (scheduler, one worker, the HTTP/dashboard server)."""
    from distributed import LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                          host="127.0.0.1", dashboard_address="127.0.0.1:0")
    try:
        yield lc
    finally:
        lc.close()


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 (yields its port) running ``handle(conn)`` for each connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        th.join(5)
        srv.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # not on the test's stderr
        pass


@contextlib.contextmanager
def http_server() -> Iterator[int]:
    """``python -m http.server`` in a thread: the review's stand-in for the dashboard port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(5)


def free_port() -> int:
    """A port nothing listens on (bound, then released): connecting is refused."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def join_error(address: str) -> tuple[BaseException, float]:
    """What connect(scheduler=address) raised, and how long it took."""
    t0 = time.monotonic()
    with pytest.raises(BaseException) as info:
        with cluster.connect(scheduler=address):
            pass
    return info.value, time.monotonic() - t0


def one_line_cli_error(capsys, files, tmp_path, *extra: str) -> str:
    """Run `hsi-engine classify` expecting exit 2 and nothing written: its one stderr line."""
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["classify", str(files["scene"]), "--model", str(files["model"]), "--out", str(out / "map.tif"),
               *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("hsi-engine classify: error: "), err
    assert list(out.iterdir()) == []
    return err


# ----------------------------------------------------------------------------------------------
# 1. a service that is not a dask scheduler


def test_an_http_server_is_not_a_scheduler_and_does_not_hang():
    """`python -m http.server` (the dashboard-port mistake) waits for a request line forever: dask's handshake
    never completes, so the connection must time out with the dashboard hint."""
    with http_server() as port, dask.config.set(CONNECT_HALF_S):
        err, took = join_error(f"tcp://127.0.0.1:{port}")
    assert isinstance(err, HSIEngineError), repr(err)
    msg = str(err)
    assert f"tcp://127.0.0.1:{port} did not answer as a dask scheduler" in msg
    assert "dashboard" in msg and "8786" in msg and "no dask handshake within 0.5 s" in msg, msg
    assert took < 3.5, took


def test_a_server_replying_http_400_is_not_a_scheduler():
    """Dask read the HTTP status line as a frame length (`Unable to allocate 3.07 EiB`): a clear error instead."""

    def reply_400(conn: socket.socket) -> None:
        with conn:
            conn.sendall(HTTP_400)

    with tcp_server(reply_400) as port, dask.config.set(CONNECT_2S):
        err, took = join_error(f"tcp://127.0.0.1:{port}")
    assert isinstance(err, HSIEngineError) and not isinstance(err, MemoryError), repr(err)
    assert "did not answer as a dask scheduler" in str(err) and "EiB" not in str(err)
    assert took < 5, took


def test_a_silent_service_times_out_and_leaves_nothing_running():
    """A service that accepts and never answers: the error comes within the connect timeout, our end of the
    connection is closed (the service reads EOF) and no probe thread is left behind."""
    closed = threading.Event()

    def silent(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                while conn.recv(4096):
                    pass
                closed.set()  # EOF: the client closed its end

    threads = set(threading.enumerate())
    with tcp_server(silent) as port, dask.config.set(CONNECT_HALF_S):
        err, took = join_error(f"tcp://127.0.0.1:{port}")
        assert isinstance(err, HSIEngineError) and "did not answer as a dask scheduler" in str(err), repr(err)
        assert "no dask handshake within 0.5 s" in str(err), str(err)
        assert 0.4 < took < 3.5, took  # the connect timeout (0.5 s), not forever
        assert closed.wait(5), "the half-open connection was left open"
    left = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not [n for n in left if "probe" in n], left


def test_the_dashboard_port_of_a_real_scheduler_is_named(local):
    """The realistic mistake: the scheduler's HTTP (dashboard) port instead of its comm port."""
    http_port = local.scheduler.http_server.port
    with dask.config.set(CONNECT_HALF_S):
        err, took = join_error(f"tcp://127.0.0.1:{http_port}")
    assert isinstance(err, HSIEngineError) and "did not answer as a dask scheduler" in str(err), repr(err)
    assert "dashboard" in str(err) and took < 3.5, (str(err), took)


def test_a_worker_address_is_not_a_scheduler(local):
    (worker,) = local.scheduler.workers
    with dask.config.set(CONNECT_2S):
        err, took = join_error(worker)
    assert isinstance(err, HSIEngineError), repr(err)
    assert f"{worker} is a dask Worker, not a scheduler" in str(err) and took < 5


@pytest.mark.parametrize("form", ["scheme", "bare"])
def test_a_real_scheduler_is_joined_by_address(local, form, caplog):
    """The checks do not get in the way of a real scheduler, with or without tcp://, and leave nothing in its
    log (a bare socket probe would log 'closed before handshake completed' on every run)."""
    address = local.scheduler_address if form == "scheme" else local.scheduler_address.removeprefix("tcp://")
    with caplog.at_level(logging.INFO, logger="distributed"):
        with dask.config.set(CONNECT_2S), cluster.connect(scheduler=address) as client:
            assert client.submit(operator.add, 1, 2).result(timeout=10) == 3
            assert client.scheduler.address == local.scheduler_address
    assert client.status == "closed"
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("distributed")]
    assert any("Receive client connection" in m for m in logged), logged  # the scheduler's log is seen here
    assert not [m for m in logged if "before handshake" in m or "Exception" in m], logged


def test_a_scheduler_that_starts_a_moment_later_is_joined():
    """A refused port is retried briefly: a script that starts `dask scheduler` and then classifies still works."""
    from distributed import LocalCluster

    port = free_port()
    started: list = []

    def start() -> None:
        time.sleep(0.3)  # connect() meets a refused port first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started.append(LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                                        scheduler_port=port, dashboard_address=None))

    th = threading.Thread(target=start)
    th.start()
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "10s"}):
            with cluster.connect(scheduler=f"tcp://127.0.0.1:{port}") as client:
                assert client.scheduler.address == f"tcp://127.0.0.1:{port}"
    finally:
        th.join(30)
        for lc in started:
            lc.close()


def test_cli_names_the_dashboard_mistake(files, tmp_path, capsys):
    with http_server() as port, dask.config.set(CONNECT_HALF_S):
        err = one_line_cli_error(capsys, files, tmp_path, "--scheduler", f"tcp://127.0.0.1:{port}")
    assert "did not answer as a dask scheduler" in err and "dashboard" in err and "within 0.5 s" in err, err


# ----------------------------------------------------------------------------------------------
# 2. malformed and refused addresses


@pytest.mark.parametrize("address, problem", [
    ("bogus", "no port"),
    ("nonsense://x:1", "unknown scheme 'nonsense'"),
    ("localhost:99999", "port 99999 is out of range 1-65535"),
    ("tcp://127.0.0.1:0", "port 0 is out of range 1-65535"),
    ("tcp://:8786", "no host"),
    ("http://127.0.0.1:8787/status", "the dashboard's web address"),
    ("tcp://127.0.0.1:8786/", "port '8786/' is not a number"),
    ("", "the address is empty"),
])
def test_a_malformed_address_is_refused_up_front(address, problem):
    t0 = time.monotonic()
    with pytest.raises(cluster.ClusterUsageError) as info:
        with cluster.connect(scheduler=address):
            pass
    msg = str(info.value)
    assert f"scheduler address {address!r}" in msg and problem in msg and "tcp://HOST:PORT" in msg, msg
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("address, parsed", [
    ("tcp://10.0.0.5:8786", ("tcp", "10.0.0.5", 8786)),
    ("10.0.0.5:8786", ("tcp", "10.0.0.5", 8786)),
    ("TLS://sched.example.org:8786", ("tls", "sched.example.org", 8786)),
    ("ws://[::1]:8786", ("ws", "[::1]", 8786)),
    ("inproc://10.0.0.5/123/1", ("inproc", "10.0.0.5/123/1", None)),
])
def test_well_formed_addresses_are_accepted(address, parsed):
    assert dask_client._parse_scheduler_address(address) == parsed


def test_a_refused_connection_fails_fast_not_after_the_connect_timeout(monkeypatch):
    """Dask retries a refused connection for the whole connect timeout (30 s): nothing listens there, say so
    (after the grace for a scheduler still starting, shortened here; the real one is joined in
    test_a_scheduler_that_starts_a_moment_later_is_joined)."""
    monkeypatch.setattr(dask_client, "_REFUSED_GRACE_S", REFUSED_GRACE_S)
    port = free_port()
    with dask.config.set({"distributed.comm.timeouts.connect": "30s"}):
        err, took = join_error(f"tcp://127.0.0.1:{port}")
    assert isinstance(err, HSIEngineError), repr(err)
    assert f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in str(err) and "refused" in str(err)
    assert took < 5, took


def test_an_unknown_host_is_named():
    with dask.config.set(CONNECT_2S):
        err, took = join_error("tcp://no-such-host.invalid:8786")
    assert isinstance(err, HSIEngineError) and "no-such-host.invalid" in str(err), repr(err)
    assert "cannot reach" in str(err) and took < 5


@pytest.mark.parametrize("address", ["bogus", "nonsense://x:1", "localhost:99999"])
def test_cli_refuses_a_malformed_address_in_one_line(files, tmp_path, capsys, address):
    t0 = time.monotonic()
    err = one_line_cli_error(capsys, files, tmp_path, "--scheduler", address)
    assert f"scheduler address {address!r}" in err and "tcp://HOST:PORT" in err
    assert time.monotonic() - t0 < 5


def test_a_malformed_address_fails_before_the_scene_is_read(tmp_path):
    with pytest.raises(cluster.ClusterUsageError, match="unknown scheme"):
        cluster.run_to_file(tmp_path / "missing.zarr", tmp_path / "missing-model", tmp_path / "x.zarr",
                            scheduler="nonsense://x:1")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 3. a local cluster that cannot start


@pytest.fixture
def unusable_temp_dir(tmp_path):
    """DASK_TEMPORARY_DIRECTORY pointing below a regular file: no worker can make its scratch space there."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = blocker / "dask-scratch"
    with dask.config.set({"temporary-directory": str(bad)}):
        yield bad


@contextlib.contextmanager
def records_of(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records logger ``name`` passes to its handlers (after its filters)."""
    got: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = got.append  # type: ignore[method-assign]
    logging.getLogger(name).addHandler(handler)
    try:
        yield got
    finally:
        logging.getLogger(name).removeHandler(handler)


def test_a_local_cluster_that_cannot_start_is_one_clear_error(unusable_temp_dir):
    """distributed's `RuntimeError: Cluster failed to start` (and its 'closed without starting up' warning)
    become one error naming the cause and the fix; nothing is left running."""
    before = set(multiprocessing.active_children())
    with pytest.raises(HSIEngineError) as info, records_of("distributed.deploy.spec") as spec_records:
        cluster.make_local_cluster(2, gpu=False)
    assert not [r.getMessage() for r in spec_records if r.levelno >= logging.WARNING]
    msg = str(info.value)
    assert "could not start a local dask cluster of 2 workers" in msg, msg
    assert str(unusable_temp_dir) in msg and "DASK_TEMPORARY_DIRECTORY" in msg and "without workers= (--workers)" in msg
    assert "Cluster failed to start" not in msg
    time.sleep(0.2)
    assert set(multiprocessing.active_children()) - before == set()  # no worker process left behind


def test_cli_workers_with_an_unusable_temp_dir_is_one_line(files, tmp_path, capsys, unusable_temp_dir):
    err = one_line_cli_error(capsys, files, tmp_path, "--workers", "2")
    assert "could not start a local dask cluster" in err and "DASK_TEMPORARY_DIRECTORY" in err
    assert "run without --workers to classify in-process" in err  # the command line's own spelling


def test_workers_below_one_is_a_usage_error():
    with pytest.raises(cluster.ClusterUsageError, match="workers must be >= 1, got -1"):
        cluster.make_local_cluster(-1, gpu=False)


# ----------------------------------------------------------------------------------------------
# 4. distributed's INFO chatter


@contextlib.contextmanager
def logger_at(level: int, name: str = "distributed") -> Iterator[logging.Logger]:
    """The logger ``name`` at ``level`` for the block, its own level put back after."""
    lg = logging.getLogger(name)
    old = lg.level
    lg.setLevel(level)
    try:
        yield lg
    finally:
        lg.setLevel(old)


def distributed_levels() -> tuple[bool, bool, bool]:
    """Whether distributed's scheduler and nanny log INFO, and whether the nanny logs WARNING."""
    scheduler, nanny = logging.getLogger("distributed.scheduler"), logging.getLogger("distributed.nanny")
    return scheduler.isEnabledFor(logging.INFO), nanny.isEnabledFor(logging.INFO), nanny.isEnabledFor(logging.WARNING)


def test_debug_logging_leaves_distributed_s_loggers_alone():
    """With our logger at DEBUG (`hsi-engine -v`), distributed's INFO lines are wanted."""
    with logger_at(logging.DEBUG, "hsi_engine.cluster"), logger_at(logging.INFO), \
            dask_client._quiet_distributed_logs():
        assert logging.getLogger("distributed.scheduler").isEnabledFor(logging.INFO)


def test_quieting_restores_explicit_levels_of_distributed_s_loggers():
    with logger_at(logging.DEBUG, "distributed.scheduler") as child:
        with logger_at(logging.INFO), dask_client._quiet_distributed_logs():
            assert not child.isEnabledFor(logging.INFO) and child.isEnabledFor(logging.WARNING)
        assert child.level == logging.DEBUG


def test_overlapping_quiet_spans_restore_the_levels_when_the_last_ends():
    """Two runs' local clusters in threads: the first to end put distributed's INFO back while the other's
    cluster was still closing, and its INFO lines reached stderr."""
    with logger_at(logging.INFO):
        first, second = dask_client._quiet_distributed_logs(), dask_client._quiet_distributed_logs()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert not distributed_levels()[0]  # still quiet: the second run goes on
        second.__exit__(None, None, None)
        assert distributed_levels()[0]  # put back by the last


def test_closing_a_worker_slow_to_exit_logs_no_warning(caplog):
    """A worker still busy (or slow on a loaded machine) when the run ends is killed after 4 s: distributed logged
    "Worker process still alive after 4.0 seconds, killing", a WARNING at the end of a finished run (seen in
    test_cli_workers_starts_a_local_cluster on a loaded 2-core machine). Its work is done; the line is dropped."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(lc) as client:
            busy = client.submit(time.sleep, 60)  # (held: a released future's task is cancelled)
            deadline = time.monotonic() + 30
            while not any(client.processing().values()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert busy.status == "pending" and any(client.processing().values()), "the task did not start"
            time.sleep(0.3)  # the task is running in the worker process, which now exits only when killed
            with caplog.at_level(logging.INFO, logger="distributed.nanny"):
                dask_client._close_workers(lc)
            assert not lc.workers, "the busy worker was not stopped"
    finally:
        lc.close()
    nanny = [r for r in caplog.records if r.name == "distributed.nanny"]
    assert any("killed by signal" in r.getMessage() for r in nanny), "the kill (what the warning told) never ran"
    assert not [r.getMessage() for r in nanny if r.levelno >= logging.WARNING]


def test_a_scene_persisted_under_a_client_is_classified(files):
    """``scene.persist()`` under a dask.distributed client (a notebook's habit) holds futures, which the engine's
    synchronous reads could not fetch: 'Missing dependency', reported as a damaged store. They are read through
    the client, to the same map."""
    from distributed import Client

    import hsi_engine

    scene = hsi_engine.open_scene(files["scene"])
    ref = hsi_engine.classify(scene, files["model"], tile=16, progress=False).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)
    try:
        persisted = scene.persist()
        from distributed import futures_of

        assert futures_of(persisted.data), "the scene was not persisted as futures"
        got = hsi_engine.classify(persisted, files["model"], tile=16, progress=False).values
    finally:
        client.close()
    np.testing.assert_array_equal(got, ref)
    # its client gone, the futures cannot be fetched: said so, not blamed on the (intact) file
    with pytest.raises(hsi_engine.SceneError, match=r"persist\(\)-ed under a dask.distributed client.* the file is "
                                                    r"not at fault"):
        hsi_engine.classify(persisted, files["model"], tile=16, progress=False)


def test_classify_in_a_task_of_a_one_thread_worker_reads_a_persisted_scene(files, tmp_path):
    """client.submit(hsi_engine.classify, persisted_scene): reading the persisted chunks runs tasks on the same
    cluster, and a worker of one thread, held by the classify task itself, never ran them (a hang). The call hands
    its worker thread back (secede) and rejoins when done."""
    from distributed import Client, LocalCluster

    import hsi_engine

    scene = hsi_engine.open_scene(files["scene"])
    ref = hsi_engine.classify(scene, files["model"], tile=16, progress=False).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
        client = Client(cl)
    try:
        persisted = scene.compute().chunk({"y": 8}).persist()
        got = client.submit(hsi_engine.classify, persisted, files["model"], tile=16, progress=False,
                            pure=False).result(timeout=120)
        np.testing.assert_array_equal(got.values, ref)
        out = client.submit(hsi_engine.classify_to_file, persisted, files["model"], tmp_path / "m.tif", tile=16,
                            progress=False, pure=False).result(timeout=120)
        assert out.exists()
        assert client.submit(lambda: 1, pure=False).result(timeout=30) == 1  # the worker's thread is back
    finally:
        client.close()
        cl.close()


def test_a_service_s_timeout_during_the_cluster_start_leaves_no_workers_and_stays_its_own():
    """A per-scene timeout raised by a SIGALRM handler while workers= started its local cluster left the whole
    cluster running (2 workers, ~300 MiB, per cancelled call); and a TimeoutError of the caller's own class was
    rewrapped as 'could not start a local dask cluster', so the service's own except never matched."""
    import signal

    import psutil

    class SceneTimeout(TimeoutError):
        pass

    def on_alarm(signum, frame):
        raise SceneTimeout("scene took too long")

    def workers() -> list:
        return [p for p in psutil.Process().children(recursive=True)
                if "spawn_main" in " ".join(p.cmdline())]

    before = {p.pid for p in workers()}
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # mid-start: the cluster takes seconds
        with pytest.raises(SceneTimeout):
            with dask_client.connect(workers=2):
                time.sleep(30)  # (reached only if the start beat the timer: the timer still fires)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    deadline = time.monotonic() + 20
    while {p.pid for p in workers()} - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not {p.pid for p in workers()} - before, "worker processes left running"
    with pytest.raises(SceneTimeout):  # the caller's own class passes through the start's error wrapping
        dask_client._started(2, lambda: (_ for _ in ()).throw(SceneTimeout("own")))


def test_a_local_cluster_leaves_the_process_as_it_found_it():
    """Each workers= call left OMP_NUM_THREADS=1 & co. in os.environ (a service's later subprocesses ran on one
    thread), one more log handler on distributed.scheduler (up to 10,000 records each) and one more dashboard
    route in dask's config: all are put back when the cluster closes. And --workers printed every INFO line of
    the scheduler and nannies: distributed is at WARNING while the clusters run, its level back afterwards."""
    import os

    import dask
    import dask.array

    def state():
        return ({k: os.environ.get(k) for k in dask_client._CLUSTER_ENV},
                {n: len(lg.handlers) for n, lg in logging.Logger.manager.loggerDict.items()
                 if n.startswith("distributed") and isinstance(lg, logging.Logger) and lg.handlers},
                list(dask.config.get("distributed.scheduler.http.routes", [])), dask.config.get("scheduler", None))

    before = state()
    # two overlapping runs, the first to start closing first: each put back what it had found, so the second
    # restored the first one's settings for good
    first_up, second_up, first_may_close = threading.Event(), threading.Event(), threading.Event()
    results, levels = [], []

    def first():
        with dask_client.connect(workers=1) as client:
            results.append(client.submit(operator.add, 1, 2).result(timeout=30))
            levels.append(distributed_levels())
            first_up.set()
            first_may_close.wait(60)

    def second():
        first_up.wait(60)
        with dask_client.connect(workers=1) as client:
            second_up.set()
            levels.append(distributed_levels())
            first_may_close.set()
            t1.join(60)
            results.append(client.submit(operator.add, 2, 3).result(timeout=30))

    with logger_at(logging.INFO) as lg:
        assert distributed_levels() == (True, True, True)
        t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
        t1.start(), t2.start()
        t2.join(120)
        assert lg.level == logging.INFO
    assert results == [3, 5] and second_up.is_set()
    assert levels == [(False, False, True)] * 2, levels  # at WARNING while one cluster runs, and while two do
    after = state()
    assert after[0] == before[0]
    assert {n: c for n, c in after[1].items() if c != before[1].get(n, 0)} == {}
    assert after[2] == before[2]
    assert after[3] == before[3]  # each Client sets dask's scheduler: closed out of order, they left it set
    assert dask.array.ones(3).sum().compute() == 3  # "Requested dask.distributed scheduler but no Client active"


def test_a_script_s_failed_cluster_start_names_the_main_guard_first(monkeypatch):
    """Each spawned worker imports the script that started it: without `if __name__ == "__main__":` the worker
    ran the script's classify call again and the start failed ('Nanny failed to start worker process'); the
    error pointed at the dask configuration only."""
    import __main__

    from hsi_engine import dask_client

    monkeypatch.setattr(__main__, "__file__", "/srv/jobs/make_maps.py", raising=False)
    hint = dask_client._main_guard_hint()
    assert hint.startswith('that make_maps.py keeps its top-level code under `if __name__ == "__main__":`')
    monkeypatch.setattr(__main__, "__file__", "/venv/bin/hsi-engine")  # the command line has its guard
    assert dask_client._main_guard_hint() == ""
    monkeypatch.delattr(__main__, "__file__")  # python -c, a notebook
    assert dask_client._main_guard_hint() == ""


def test_a_daemon_process_asking_for_workers_is_told_why_it_cannot(monkeypatch):
    """classify_to_file(workers=N) inside a dask task (a daemonic worker process) failed with 'AssertionError:
    Status.starting' and a hint at the dask configuration (or at a main guard the script had)."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    with pytest.raises(cluster.ClusterUsageError, match=r"it is a daemon process .* Pass scheduler="):
        cluster.make_local_cluster(1, gpu=False)


def test_closing_a_runs_workers_says_nothing_of_the_data_it_no_longer_needs(caplog):
    """After a successful workers=N run, distributed logged 'ERROR - Removing worker ... caused the cluster to lose
    scattered data' (the run's scene and model, whose release was still on its way): a service alerting on ERROR
    fired for a good map. Closing the run's own workers drops that record, and only that one."""
    class Closing:
        workers: dict = {}

        def scale(self, n):
            log = logging.getLogger("distributed.scheduler")
            log.error("Removing worker 'tcp://127.0.0.1:1' caused the cluster to lose scattered data, which can't be "
                      "recovered: {'SSRN-1', 'DataArray-2'} (stimulus_id='x')")
            log.error("something else went wrong")

    with caplog.at_level(logging.INFO, "distributed.scheduler"):
        dask_client._close_workers(Closing())
    said = [r.getMessage() for r in caplog.records]
    assert said == ["something else went wrong"]


def test_a_closed_client_and_a_cluster_s_own_cancellations_are_named(local, files, tmp_path):
    """A closed Client passed as scheduler= raised distributed's ClosedClientError; a task cancelled by the
    cluster's owner (client.restart(), a lost scheduler) raised FutureCancelledError, a traceback on the command
    line, or was blamed on memory. Both are the engine's errors, saying what happened and that --resume finishes."""
    from distributed import Client
    from distributed.client import FutureCancelledError

    from hsi_engine.cluster import _cancel_reason
    from hsi_engine.errors import ClusterUsageError

    client = Client(local)
    client.close()
    with pytest.raises(ClusterUsageError, match="the Client given as scheduler= is closed: pass an open one"):
        cluster.run_to_file(files["scene"], files["model"], tmp_path / "map.zarr", scheduler=client)
    assert not (tmp_path / "map.zarr").exists()
    assert "scheduler was restarted" in _cancel_reason(FutureCancelledError("k", "scheduler-restart"))
    assert "connection to its scheduler was lost" in _cancel_reason(
        FutureCancelledError("k", "scheduler-connection-lost"))
    assert _cancel_reason(FutureCancelledError("k", "lost dependencies")) is None  # (told as before)
    assert _cancel_reason(ValueError("scheduler-restart")) is None


def test_a_caller_s_local_cluster_is_watched_for_losing_every_worker(local):
    """A caller's LocalCluster whose workers all died for good (killed again while their nannies restarted them)
    left classify_to_file(scheduler=client) waiting for ever, silently with progress=False; a cluster object in
    this process that cannot grow back by itself is watched as the run's own is (an adaptive one is not)."""
    from distributed import Client

    from hsi_engine.cluster import _own_workers_gone, _watchable

    with Client(local) as client:
        assert _watchable(client)
        assert "every worker of the cluster given as scheduler= died" in str(_own_workers_gone(client, local=False))
    with Client(local.scheduler_address) as by_address:
        assert not _watchable(by_address)  # (no cluster object: someone else's scheduler)
