"""Getting a ``distributed.Client`` for the engine: join a running scheduler by address (checked to be a dask
scheduler, quickly, with a clear error when it is not: a dashboard port, a worker, nothing listening, a malformed
address), or start a local cluster (one worker per GPU, else single-threaded worker processes), with
distributed's own logs kept at WARNING while it runs. Used by :mod:`hsi_engine.cluster`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from ssrn.errors import is_whole

from .errors import ClusterUsageError, HSIEngineError
from .logs import dropped, dropped_for_good
from .whole import run_whole

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("hsi_engine.cluster")

__all__ = ["connect", "make_local_cluster"]


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def check_workers(workers: Any) -> None:
    """Refuse a worker count that is not a whole number >= 1 (None: no local cluster), as readers= is refused."""
    if workers is None:
        return
    if not is_whole(workers):
        raise ClusterUsageError(f"workers must be a whole number of worker processes (e.g. workers=2); got "
                                f"{workers!r}")
    if int(workers) < 1:
        raise ClusterUsageError(f"workers must be >= 1, got {workers}: pass the number of worker processes")


def make_local_cluster(n_workers: int | None = None, *, gpu: bool | None = None, silence_logs: int = logging.ERROR):
    """A local dask cluster for the engine: one worker per GPU, else ``n_workers`` single-threaded processes.

    ``gpu=None``: use GPUs when CUDA is available. GPU workers carry the resource ``GPU=1``. A cluster that fails
    to start is an :class:`HSIEngineError` naming the cause and the fix (not distributed's ``RuntimeError``).
    """
    import multiprocessing

    from distributed import LocalCluster

    if multiprocessing.current_process().daemon:  # (distributed's error: 'AssertionError: Status.starting')
        raise ClusterUsageError("this process cannot start worker processes: it is a daemon process (a dask "
                                "worker's, or a multiprocessing pool's), which may have no children. Pass scheduler= "
                                "(the cluster it runs on: distributed.get_client().scheduler.address) instead of "
                                "workers=, or run without workers= to classify in-process")
    check_workers(n_workers)
    ngpu = _cuda_count() if gpu is not False else 0
    if gpu and ngpu == 0:
        raise HSIEngineError("gpu=True but no CUDA device is visible: run CPU workers (gpu=False) or check "
                             "CUDA_VISIBLE_DEVICES / the driver")
    if ngpu:
        n = min(ngpu, n_workers or ngpu)
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return _started(n, lambda: _nanny_per_gpu(n, ngpu, silence_logs))
        return _started(n, lambda: LocalCUDACluster(n_workers=n, threads_per_worker=1, resources={"GPU": 1},
                                                    dashboard_address=":0", silence_logs=silence_logs,
                                                    preload=[_PRELOAD]))
    n = int(n_workers or 1)
    from .runner import _cores

    cores = _cores()
    if n > cores:
        log.warning("%d workers on %d usable cores: they share the cores and each holds a model and its buffers; "
                    "--workers %d is as fast with less memory", n, cores, cores)
    return _started(n, lambda: LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", silence_logs=silence_logs,
                                            preload=[_PRELOAD]))


def _nanny_per_gpu(n: int, ngpu: int, silence_logs: int) -> Any:
    """Without dask_cuda: ``n`` nannies, one per visible GPU (``CUDA_VISIBLE_DEVICES`` set for each)."""
    from distributed import Nanny, Scheduler, SpecCluster

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",")] if visible else [str(i) for i in range(ngpu)]
    workers = {f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                                      "env": {"CUDA_VISIBLE_DEVICES": ids[i]},
                                                      "silence_logs": silence_logs, "preload": [_PRELOAD]}}
               for i in range(n)}
    return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}, workers=workers,
                       silence_logs=silence_logs)


_STARTING = threading.Lock()


def _started(n: int, start: Callable[[], Any]) -> Any:
    """``start()``, a local cluster of ``n`` workers; failing to start is one clear error (distributed raises
    ``RuntimeError('Cluster failed to start: ...')`` and has already closed what it started)."""
    try:  # (distributed's 'closed without starting up' warning: our error says so, with the cause)
        # one start at a time: two threads' schedulers importing distributed.dashboard at once (bokeh absent, it
        # is imported again at every start) failed one of them, 3 runs in 15
        with _STARTING, dropped(lambda m: m == "Cluster closed without starting up", "distributed.deploy.spec"):
            return start()
    except Exception as e:  # noqa: BLE001 - whatever stopped it is named in the error
        if not _library_error(e):  # the caller's own (a service's timeout raised by its signal handler): theirs
            raise
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
        raise HSIEngineError(f"could not start a local dask cluster of {n} workers ({_brief(cause)}): "
                             f"{_nofile_hint()}check {_main_guard_hint()}{_scratch_hint()}, or run without workers= "
                             "(--workers) to classify in-process") from None


def _nofile_hint() -> str:
    """A low open-files limit, named first: under ``ulimit -n 32`` the workers failed with 'Too many open files' in
    their own logs, and the error named distributed's follow-on ``AssertionError`` and the dask configuration."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # (no resource module on Windows)
        return ""
    if soft == resource.RLIM_INFINITY or soft >= 200:  # (macOS's default is 256, Linux's 1024)
        return ""
    return (f"this process may open only {soft} files (ulimit -n), too few for a cluster's processes and their "
            "connections: raise it (ulimit -n 4096); else ")


def _main_guard_hint() -> str:
    """Run from a script, a likely cause first: each worker process imports the script, which without a main
    guard runs its classify call again in the worker (whose start then fails, e.g. on the output's lock)."""
    import __main__

    script = getattr(__main__, "__file__", None)
    if not script or Path(script).name == "hsi-engine" or "pytest" in Path(script).name:
        return ""
    return (f"that {Path(script).name} keeps its top-level code under `if __name__ == \"__main__\":` (each worker "
            "process imports it, and runs unguarded code again), then ")


def refuse_unguarded_main(call: str) -> None:
    """Refuse ``call`` (the run being started) from the top-level code of a script that a child process of
    multiprocessing (a dask worker that ``workers=`` started) is importing as ``__mp_main__``: the script has no
    ``if __name__ == "__main__":`` guard, and its run started again in each worker. Told as that: the worker's
    run had failed on the output's lock ('another run is writing ... (pid <its parent>)'), beside the parent's map.
    (``multiprocessing.parent_process()`` is still None while the child imports the script: it is set after.)"""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            break
        frame = frame.f_back
    else:
        return
    script = Path(frame.f_code.co_filename).name
    raise ClusterUsageError(
        f"{call} was called by {script}'s top-level code in a worker process (pid {os.getpid()}) that "
        f"multiprocessing started for the run of pid {os.getppid()}: each worker process "
        f"imports the script, and code outside `if __name__ == \"__main__\":` runs again in it (this call, and "
        f"anything before it). Put {script}'s top-level code under `if __name__ == \"__main__\":`")


@contextlib.contextmanager
def task_thread_released() -> Iterator[None]:
    """Inside a dask.distributed task (``client.submit(hsi_engine.classify, ...)``), hand the task's worker thread
    back for the call (``secede``, then ``rejoin``): reading a scene persisted on that cluster runs tasks there,
    and on a worker of one thread the call waited for ever for the thread it held itself."""
    distributed = sys.modules.get("distributed")  # (not imported: not in a task)
    in_task = False
    if distributed is not None:
        try:
            from distributed.worker import thread_state

            distributed.get_worker()
            in_task = getattr(thread_state, "key", None) is not None
        except (ImportError, ValueError, AttributeError):
            in_task = False
    if not in_task or getattr(_released, "on", False):  # (a nested call: released already)
        yield
        return
    distributed.secede()
    _released.on = True
    try:
        yield
    finally:
        _released.on = False
        distributed.rejoin()


_released = threading.local()


def releases_task_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run under :func:`task_thread_released`."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with task_thread_released():
            return fn(*args, **kwargs)
    return run


def _library_error(e: BaseException) -> bool:
    """Whether ``e`` is Python's or a library's exception, not one of the caller's own classes."""
    return type(e).__module__.split(".")[0] in ("builtins", "distributed", "dask", "tornado", "asyncio",
                                                 "concurrent", "dask_cuda", "psutil", "socket", "ssl",
                                                 "multiprocessing", "pickle", "_pickle", "msgpack", "cloudpickle")


def _close_interrupted(cluster: Any) -> None:
    """Close a cluster whose start an exception interrupted (see :func:`hsi_engine.whole.run_whole`)."""
    try:
        cluster.close(timeout=30)
    except Exception as e:  # noqa: BLE001 - named; the caller's exception goes on
        log.warning("could not close the local dask cluster whose start was interrupted (%s); its workers may be "
                    "left running", _brief(e))


_PRELOAD = __name__  # the local workers run dask_setup below when they start (restarted ones too)


def dask_setup(worker: Any) -> None:
    """Preload of our local workers: ignore SIGINT. A terminal's Ctrl-C reaches every process of its group, and
    each worker printed a 30-line KeyboardInterrupt traceback while the driver was already stopping the run and
    closing them; the driver alone handles it. A worker's "Failed to communicate with scheduler during heartbeat"
    (two tracebacks) is dropped: on a loaded machine a worker still closing when the scheduler goes logged it after a
    Ctrl-C; a scheduler really lost is the driver's to name (:class:`hsi_engine.errors.WorkerLostError`). Only
    once the worker is closing: see :func:`closing_heartbeat`."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    dropped_for_good(lambda m: closing_heartbeat(worker, m), "distributed.worker")


def closing_heartbeat(worker: Any, message: str) -> bool:
    """Whether ``message`` is a closing worker's heartbeat failure (dropped): while it runs, the same line is the
    clue to a driver whose scheduler stopped answering, and is kept."""
    status = getattr(getattr(worker, "status", None), "name", "")
    return message.startswith("Failed to communicate with scheduler during heartbeat") and status in (
        "stopping", "stopped", "closing", "closed", "closing_gracefully", "failed")


def _scratch_hint() -> str:
    """Where a local cluster's start usually fails: the workers' scratch directory, named when it is configured."""
    import dask

    scratch = dask.config.get("temporary-directory", None)
    if scratch:
        return (f"that the workers' scratch directory {scratch!r} (DASK_TEMPORARY_DIRECTORY / dask config "
                "temporary-directory) is a writable directory")
    return "the dask configuration (DASK_* variables, ~/.config/dask: temporary-directory, ports, memory limits)"


def _brief(e: BaseException) -> str:
    """An exception as one short line, for a one-line error."""
    text = " ".join(str(e).split()) or "no message"
    return f"{type(e).__name__}: {text[:200]}"


@contextlib.contextmanager
def _quiet_distributed_logs() -> Iterator[None]:
    """distributed's loggers at WARNING while our local clusters run (its scheduler and nannies log every start,
    registration and close at INFO), unless our logger is at DEBUG; their levels are restored when the last of
    overlapping runs ends (the first to end restored INFO while another's cluster was still closing)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _Quiet.lock:
        _Quiet.live += 1
        if _Quiet.live == 1:
            names = ["distributed"] + sorted(name for name, lg in list(logging.Logger.manager.loggerDict.items())
                                             if name.startswith("distributed.") and isinstance(lg, logging.Logger))
            _Quiet.raised = []
            for name in names:
                lg = logging.getLogger(name)
                if (name == "distributed" or lg.level != logging.NOTSET) and \
                        lg.getEffectiveLevel() < logging.WARNING:
                    _Quiet.raised.append((lg, lg.level))
                    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        with _Quiet.lock:
            _Quiet.live -= 1
            if _Quiet.live == 0:
                for lg, level in _Quiet.raised:
                    if lg.level == logging.WARNING:  # not changed by someone else meanwhile
                        lg.setLevel(level)
                _Quiet.raised = []


class _Quiet:
    """The loggers the first of the live quiet spans raised to WARNING, and how many spans are live."""

    lock = threading.Lock()
    live = 0
    raised: list[tuple[logging.Logger, int]] = []


# what distributed's local cluster leaves in the process that started it: environment variables for the workers
# it spawns (a service's later subprocesses ran single-threaded), a log handler per scheduler (each holds up to
# 10,000 records: one more per call) and a dashboard route per scheduler in dask's config
_CLUSTER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
                "PYTHONHASHSEED", "__DASK_PARENT_PID")


class _Kept:
    """What the first of the live local clusters (or joined schedulers) found (see above): overlapping runs in one
    process put it back when the last one closes; each putting back its own snapshot left the first one's
    single-thread settings, and dask's scheduler config at dask.distributed."""

    lock = threading.Lock()
    live = 0
    env: dict[str, str | None] = {}
    loggers: dict[str, list[logging.Handler]] = {}
    routes: list | None = None
    scheduler: Any = None  # dask's "scheduler" config: each Client sets it, and two closed out of order left it set


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Put back, once the last local cluster (or joined scheduler) is closed, what starting them changed in this
    process (see above)."""
    import dask

    kept = _Kept
    with kept.lock:
        if not kept.live:
            kept.env = {k: os.environ.get(k) for k in _CLUSTER_ENV}
            kept.loggers = {name: list(lg.handlers) for name, lg in list(logging.Logger.manager.loggerDict.items())
                            if name.startswith("distributed") and isinstance(lg, logging.Logger)}
            routes = dask.config.get("distributed.scheduler.http.routes", None)
            kept.routes = list(routes) if isinstance(routes, (list, tuple)) else None
            kept.scheduler = dask.config.get("scheduler", None)
        kept.live += 1
    try:
        yield
    finally:
        with kept.lock:
            kept.live -= 1
            if not kept.live:
                _put_back(kept)


def _put_back(kept: type[_Kept]) -> None:
    import dask

    for k, v in kept.env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("distributed") and isinstance(lg, logging.Logger):
            before = kept.loggers.get(name, [])
            for h in [h for h in lg.handlers if h not in before]:
                lg.removeHandler(h)
    if kept.routes is not None:
        dask.config.set({"distributed.scheduler.http.routes": kept.routes})
    if kept.scheduler is None:  # ("Requested dask.distributed scheduler but no Client active" for every compute)
        dask.config.config.pop("scheduler", None)
    else:
        dask.config.set(scheduler=kept.scheduler)


_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")  # dask's comm schemes
_ADDRESS_FORM = "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786; the scheduler listens on 8786 by default)"
_START_HINT = "start one (`dask scheduler` + `dask worker ADDRESS`) or use --workers N for a local cluster"
_NOT_SCHEDULER_HINT = ("is it the dashboard port (8787 by default)? the scheduler listens on 8786 by default; give "
                       "the address `dask scheduler` prints as 'Scheduler at:'")
_REFUSED_GRACE_S = 2.0  # a refused port is retried this long (a scheduler may be starting), not the 30 s timeout


def _parse_scheduler_address(address: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of a scheduler address (scheme ``tcp`` when none is given; ``inproc``: its location
    and no port); a malformed one is a ClusterUsageError saying what is wrong, before anything connects."""

    def bad(problem: str) -> ClusterUsageError:
        return ClusterUsageError(f"scheduler address {address!r}: {problem}; give the scheduler's address as "
                                 f"{_ADDRESS_FORM}")

    text = address.strip()
    if not text:
        raise bad("the address is empty")
    scheme, sep, rest = text.partition("://")
    scheme, rest = (scheme.lower(), rest) if sep else ("tcp", text)
    if scheme in ("http", "https"):
        raise bad("an http(s):// URL is the dashboard's web address, not the scheduler's")
    if scheme not in _SCHEMES:
        raise bad(f"unknown scheme {scheme!r} (dask knows {', '.join(_SCHEMES)})")
    if scheme == "inproc":
        if not rest:
            raise bad("no location after inproc://")
        return scheme, rest, None
    m = re.fullmatch(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>.*))?", rest)
    if m is None:
        raise bad(f"{rest!r} is not HOST:PORT (an IPv6 host goes in brackets: tcp://[::1]:8786)")
    host, port = m["host"], m["port"]
    if not host:
        raise bad("no host")
    if any(c.isspace() or c in "/@?#" for c in host):
        raise bad(f"host {host!r} is not a host name or IP address")
    if port is None:
        raise bad("no port")
    if not port.isdigit():
        raise bad(f"port {port!r} is not a number")
    if not 1 <= int(port) <= 65535:
        raise bad(f"port {int(port)} is out of range 1-65535")
    return scheme, host, int(port)


def check_scheduler(scheduler: Any) -> None:
    """Refuse, before anything is read, a ``scheduler=`` that is neither a scheduler address (text, checked by
    :func:`_parse_scheduler_address`) nor a ``distributed.Client`` or cluster object (a port number alone,
    ``scheduler=8786``, was tried as an address after the scene was read: 'cannot reach the dask scheduler at 8786
    (TypeError ...)'); None: no scheduler."""
    if scheduler is None or hasattr(scheduler, "submit") or hasattr(scheduler, "scheduler_address"):
        return
    if isinstance(scheduler, str):
        _parse_scheduler_address(scheduler)
        return
    example = f" (tcp://HOST:{scheduler})" if is_whole(scheduler) else ""
    raise ClusterUsageError(f"scheduler must be the scheduler's address as text{example}, a distributed.Client or a "
                            f"cluster object (e.g. a LocalCluster); got {type(scheduler).__name__} {scheduler!r:.80}: "
                            f"give the address as {_ADDRESS_FORM}")


def _connect_timeout() -> float:
    """dask's connect timeout in seconds (config ``distributed.comm.timeouts.connect``, 30 s by default)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def _join_scheduler(scheduler: Any) -> Any:
    """A Client of ``scheduler`` (an address, or e.g. a cluster object), the address checked first so that a wrong
    one fails within the connect timeout with one clear error: dask retries a refused port for the whole timeout,
    never times out its handshake with a service that does not answer it, and raises whatever it reads."""
    from distributed import Client

    timeout = _connect_timeout()
    deadline = time.monotonic() + timeout
    address = scheduler
    if isinstance(scheduler, str):
        scheme, host, port = _parse_scheduler_address(scheduler)
        address = f"{scheme}://{host}" + ("" if port is None else f":{port}")
        if port is not None and scheme in ("tcp", "tls", "ws", "wss"):  # inproc, ucx: joined as dask joins them
            _check_is_scheduler(scheduler, address, host, port, timeout, deadline)
    try:
        return Client(address, timeout=max(1.0, deadline - time.monotonic()))
    except Exception as e:  # noqa: BLE001 - any failure to join is the same clear error
        raise HSIEngineError(f"cannot reach the dask scheduler at {scheduler} ({_brief(e)}); {_START_HINT}") \
            from None


def _check_is_scheduler(shown: str, address: str, host: str, port: int, timeout: float, deadline: float) -> None:
    """Ask ``address`` who it is over dask's protocol before ``deadline``: anything but a dask scheduler (the
    dashboard's HTTP port, another service, a worker) is a clear error, not a hang or a stray traceback."""
    import asyncio

    try:
        reply = _scheduler_identity(shown, address, host, port, deadline)
    except HSIEngineError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever it answered, it is not a scheduler
        if _connect_phase_failed(e):
            raise HSIEngineError(f"cannot reach the dask scheduler at {shown} ({e}); {_START_HINT}") from None
        log.debug("%s is not a dask scheduler", address, exc_info=e)
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
            why = f"no dask handshake within {timeout:g} s"
        elif isinstance(e, OSError):  # CommClosedError among them
            why = f"it closed the connection without a dask handshake: {_brief(e)}"
        else:  # e.g. an HTTP status line read as a frame length: a MemoryError for exabytes
            why = "its answer is not dask's protocol"
        raise HSIEngineError(f"{shown} did not answer as a dask scheduler ({why}): {_NOT_SCHEDULER_HINT}") from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind is None:
        raise HSIEngineError(f"{shown} did not answer as a dask scheduler (its identity reply is {reply!r:.80}): "
                             f"{_NOT_SCHEDULER_HINT}")
    if kind != "Scheduler":
        raise HSIEngineError(f"{shown} is a dask {kind}, not a scheduler: give the scheduler's address (`dask "
                             "scheduler` prints it as 'Scheduler at:'; port 8786 by default)")


def _connect_phase_failed(e: BaseException) -> bool:
    """Whether dask's ``connect`` gave up opening the connection (before any handshake): its own timeout error."""
    return isinstance(e, OSError) and str(e).startswith("Timed out trying to connect")


def _scheduler_identity(shown: str, address: str, host: str, port: int, deadline: float) -> Any:
    """The identity reply of the dask server at ``address``. dask retries a refused port for its whole connect
    timeout; here only for ``_REFUSED_GRACE_S`` (a scheduler still starting; at most half the timeout), then a
    plain socket says what is wrong (nothing listens, unknown host, no answer), or, once the port answers, the
    question is asked again."""

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    try:  # the connect phase ends well before the whole deadline, so that its failure is told apart
        return _ask_identity(address, min(_REFUSED_GRACE_S, left() / 2), left())
    except Exception as e:  # noqa: BLE001 - only a connect phase that gave up is looked into
        if not _connect_phase_failed(e):
            raise
    _check_listening(shown, host, port, left())
    return _ask_identity(address, left(), left())


def _check_listening(shown: str, host: str, port: int, timeout: float) -> None:
    """A clear error unless something accepts TCP connections on ``host:port`` within ``timeout``."""
    import socket

    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return
    except ConnectionRefusedError:
        raise HSIEngineError(f"cannot reach the dask scheduler at {shown}: nothing listens on port {port} of {host} "
                             f"(connection refused); {_START_HINT}") from None
    except socket.gaierror as e:
        raise HSIEngineError(f"cannot reach the dask scheduler at {shown}: unknown host {host!r} ({e.strerror}); "
                             "check the host name") from None
    except TimeoutError:
        raise HSIEngineError(f"cannot reach the dask scheduler at {shown}: no answer from {host}:{port} within the "
                             "connect timeout; check the host and any firewall between") from None
    except OSError as e:  # no route to the host, network down
        raise HSIEngineError(f"cannot reach the dask scheduler at {shown} ({_brief(e)}); {_START_HINT}") from None


def _ask_identity(address: str, connect_s: float, timeout: float) -> Any:
    """The ``identity`` reply of the dask server at ``address``: dask's connect retries for ``connect_s``, and the
    whole exchange gets ``timeout`` seconds. It runs on an event loop of its own in a short-lived thread (a caller's
    running loop, e.g. Jupyter's, is no obstacle); on timeout it is cancelled and the loop closed before this
    returns."""
    import asyncio

    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    async def ask() -> Any:
        comm = await comm_connect(address, timeout=connect_s, **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            reply = await comm.read()
            await comm.write({"op": "close", "reply": False})
            return reply
        finally:
            await comm.close()

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    th = threading.Thread(target=run, name="hsi-scheduler-probe", daemon=True)
    th.start()
    th.join(timeout + 5)  # wait_for cancels at the timeout; the margin is the loop's shutdown
    if th.is_alive():
        raise TimeoutError(f"no answer from {address} within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


@contextlib.contextmanager
def connect(*, workers: int | None = None, scheduler: Any = None, gpu: bool | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` (an address or a Client, used as is) or to a new local
    cluster of ``workers`` (closed on exit). An address is checked before it is joined: a malformed one is a
    :class:`ClusterUsageError`, one that is not a reachable dask scheduler an :class:`HSIEngineError`, within the
    connect timeout (dask config ``distributed.comm.timeouts.connect``)."""
    from distributed import Client

    if scheduler is not None and workers is not None:
        raise ClusterUsageError("give workers= (start a local cluster) or scheduler= (join one), not both")
    check_scheduler(scheduler)
    if scheduler is not None and hasattr(scheduler, "submit"):
        if getattr(scheduler, "status", None) in ("closing", "closed"):  # its first scatter raised dask's own
            raise ClusterUsageError(f"the Client given as scheduler= is {scheduler.status}: pass an open one (or "
                                    "its scheduler's address, which is joined afresh)")
        yield scheduler
        return
    if scheduler is not None:
        with _process_state_kept():  # dask's scheduler config, which overlapping Clients closed out of order leave
            client = _join_scheduler(scheduler)
            try:
                yield client
            finally:
                client.close()
        return
    with contextlib.ExitStack() as stack:  # closed in reverse: the client, the cluster, then the log levels
        stack.enter_context(_process_state_kept())
        stack.enter_context(_quiet_distributed_logs())
        held: list[int] = []
        try:
            with _signals_held() as held:  # a cluster interrupted mid-start printed tracebacks at exit
                # whole: a service's timeout raised mid-start left the cluster running, ~300 MiB a call
                cluster = run_whole(lambda: make_local_cluster(workers, gpu=gpu), on_interrupted=_close_interrupted)
                stack.callback(cluster.close)
                client = Client(cluster)
                stack.callback(client.close)
                stack.callback(_close_workers, cluster)
        except BaseException as e:
            if held and isinstance(e, Exception):  # a terminal's Ctrl-C reaches the starting workers too, and
                # they die of it: the start failed because the user stopped the run, which is what to say (not
                signal.raise_signal(held[0])  # 'could not start a local dask cluster', exit 2)
            raise
        if held:
            signal.raise_signal(held[0])  # now, to the handler it was meant for (Ctrl-C, the CLI's SIGTERM)
        yield client


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM while a local cluster starts (a few seconds) and yield what arrived, for the caller
    to deliver once the cluster is up and closable: interrupted mid-start, distributed left half-started nannies
    that printed 'Exception ignored in atexit callback' and 'Nanny failed to start' tracebacks."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    held: list[int] = []
    # a handler set from C (an embedding application's: QGIS, uWSGI) reads as None and could not be put back:
    # such a signal is left to it
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not None}
    try:
        yield held
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _close_workers(cluster: Any, timeout: float = 10.0) -> None:
    """Close a local cluster's workers before its scheduler: closed the other way round, a worker whose heartbeat
    was in flight logged 'Failed to communicate with scheduler during heartbeat' with two tracebacks (seen after
    a Ctrl-C, when the workers, which ignore SIGINT, are still up). Its "Removing worker ... caused the cluster to
    lose already computed task(s)" is dropped: a tile's small result whose release had not reached the scheduler
    yet; nothing is lost. So is its ERROR "... caused the cluster to lose scattered data" (the run's scene and
    model, whose release was still on its way: the run is over), and the nanny's "Worker process still alive after
    4.0 seconds, killing" (a worker slow to exit on a loaded machine, its work done)."""
    try:
        with dropped(lambda m: "lose already computed task" in m or "lose scattered data" in m,
                     "distributed.scheduler"), \
                dropped(lambda m: m.startswith("Worker process still alive after"), "distributed.nanny"):
            cluster.scale(0)
            deadline = time.monotonic() + timeout
            while cluster.workers and time.monotonic() < deadline:
                time.sleep(0.05)
    except Exception:  # noqa: BLE001 - cluster.close() still closes whatever is left
        pass


def _gpu_resources(client: Any) -> dict[str, float] | None:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:
        info = client.scheduler_info()
    if any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values()):
        return {"GPU": 1}
    return None
