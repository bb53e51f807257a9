"""The command line on user mistakes and signals: one error line and exit 2 (never a traceback), exit 130 on
Ctrl-C or SIGTERM, and nothing left on disk; bad arguments refused before anything is read or created."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import _scale_fixtures as F

from hsi_engine.cli import main
from ssrn.checkpoint import CheckpointError, load_model


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    import numpy as np

    path = tmp_path_factory.mktemp("scene") / "crop.npy"
    # (y, x, band), as a .npy is read: saved (band, y, x), its bands were the crop's columns, which the scale check
    # (rightly) finds a median 4.8 training standard deviations off, an error on the command line
    np.save(path, np.moveaxis(F.ip_crop(24, 24), 0, -1))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return F.save_tiny_model(tmp_path_factory.mktemp("model") / "model", F.ip_crop(24, 24))


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


def test_a_mistyped_option_is_named_by_its_command_with_the_closest_option(scene, model_dir, tmp_path, capsys):
    """A typo got the top-level usage and 'hsi-engine: error: unrecognized arguments: --overwirte': the error is
    the command's, as its other argument errors are, and names the option meant; nothing is written."""
    out = tmp_path / "a.tif"
    with pytest.raises(SystemExit) as e:
        main(["classify", str(scene), "--model", str(model_dir), "--out", str(out), "--overwirte", "--foo"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: hsi-engine classify" in err
    assert err.strip().splitlines()[-1] == ("hsi-engine classify: error: unrecognized arguments: --overwirte --foo "
                                            "(--overwirte: did you mean --overwrite?)")
    assert not out.exists()


@pytest.mark.parametrize("tile", ["0", "-5", "many"])
def test_tile_is_checked_when_parsed(scene, model_dir, tmp_path, tile, capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "a.tif"), "--tile", tile])
    assert e.value.code == 2
    assert "argument --tile: expected an integer >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_backend_is_one_of_the_backends(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "d"), "--backend", "garbage"])
    assert e.value.code == 2 and "invalid choice: 'garbage'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("device, match", [
    ("garbage", "device 'garbage' is not a torch device name; expected cpu, cuda or cuda:N"),
    ("npu", "device 'npu' is not a torch device name"),
    pytest.param("cuda", "sees no CUDA device: use cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_device_is_checked_before_anything_is_written(scene, model_dir, tmp_path, device, match):
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "a.tif"),
                    "--device", device])
    assert rc == 2 and match in err and "Traceback" not in err
    rc, err = _cli(["demo", "--out", str(tmp_path / "demo"), "--device", device])
    assert rc == 2 and match in err
    assert list(tmp_path.iterdir()) == []  # the demo's OUT is not created for a run that cannot start


@pytest.mark.parametrize("palette", [[[300, -2, 3]] * F.CLASSES, [[1, 2]] * F.CLASSES, [[0, 0, 0]] * 2, "red"])
def test_bad_palette_is_refused_when_the_model_loads(scene, model_dir, tmp_path, palette):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    doc = json.loads((bad / "model.json").read_text())
    doc["meta"]["palette"] = palette
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"meta.palette must be \d+ colours .* integers 0-255"):
        load_model(bad)
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _cli(["classify", str(scene), "--model", str(bad), "--out", str(out / "a.tif")])
    assert rc == 2 and "meta.palette" in err
    assert list(out.iterdir()) == []


def test_model_json_without_config_names_it(model_dir, tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    doc = json.loads((bad / "model.json").read_text())
    del doc["config"]
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="has no 'config' object"):
        load_model(bad)


@pytest.mark.parametrize(("burst", "sig"), [(False, signal.SIGTERM), (True, signal.SIGTERM), (False, signal.SIGHUP)],
                         ids=["one", "burst", "hangup"])
@pytest.mark.parametrize("out_name", ["a.tif", "a.zarr"])
def test_sigterm_unwinds_like_ctrl_c_and_leaves_nothing(scene, model_dir, tmp_path, monkeypatch, out_name, burst,
                                                        sig):
    """SIGTERM (what `timeout` and batch schedulers send) mid-run: exit 130, one line, no output and no temp
    file; for .zarr the tiles written so far are kept as a partial store for --resume, as on Ctrl-C. A burst of
    SIGTERMs (schedulers and `kill` loops send several) must not cut the cleanup short: it left hidden GeoTIFF
    temps, or a traceback when one landed in the 'interrupted' line. SIGHUP (a closed SSH session) too: it left
    the lock and hidden temps, exit 129."""
    from hsi_engine import writers
    from hsi_engine.fused import FusedSSRN

    if burst:
        cleanup = writers.ClassMapWriter._cleanup

        def signalled_cleanup(self):
            os.kill(os.getpid(), signal.SIGTERM)  # more of the burst, while the run unwinds
            time.sleep(0.05)
            cleanup(self)

        monkeypatch.setattr(writers.ClassMapWriter, "_cleanup", signalled_cleanup)

    slow = FusedSSRN.__call__
    calls = []
    timer = threading.Timer(0.1, os.kill, (os.getpid(), sig))

    def call(self, x):
        calls.append(1)
        if len(calls) == 3:  # two tiles done: the signal lands mid-run, whatever the machine's speed
            timer.start()
        time.sleep(0.2)
        return slow(self, x)

    monkeypatch.setattr(FusedSSRN, "__call__", call)
    out = tmp_path / "out"
    out.mkdir()
    try:
        rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(out / out_name),
                        "--tile", "4", "--readers", "1"])
    finally:
        timer.cancel()
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is not None  # main() put the previous handler back
    assert 3 <= len(calls) < 36  # stopped mid-run: 36 tiles in all
    left = {p.name for p in out.iterdir()}
    assert left <= ({"a.zarr.partial"} if out_name == "a.zarr" else set()), left


def test_variable_and_band_axis_from_the_command_line(model_dir, tmp_path, capsys):
    """The advice the errors give (--variable, --band-axis) works: a NetCDF with two cubes is refused naming
    --variable, then classified with it; a band-first .npy is read as the user says, not as guessed."""
    import numpy as np
    import rasterio
    import xarray as xr

    cube = F.ip_crop(10, 12)  # (24, 10, 12)
    nc = tmp_path / "two.nc"
    xr.Dataset({"a": (("band", "y", "x"), cube), "b": (("band", "y", "x"), cube[::-1].copy())}).to_netcdf(nc)
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _cli(["classify", str(nc), "--model", str(model_dir), "--out", str(out / "m.tif")])
    assert rc == 2 and "--variable NAME" in err and list(out.iterdir()) == []
    assert _cli(["classify", str(nc), "--variable", "a", "--model", str(model_dir), "--out", str(out / "m.tif")])[0] == 0
    assert main(["info", str(nc), "--variable", "b"]) == 0
    assert "band=24 y=10 x=12" in capsys.readouterr().out

    npy = tmp_path / "bandfirst.npy"
    np.save(npy, cube)
    assert _cli(["classify", str(npy), "--band-axis", "0", "--model", str(model_dir),
                 "--out", str(out / "n.tif")])[0] == 0
    with rasterio.open(out / "m.tif") as a, rasterio.open(out / "n.tif") as b:
        assert a.shape == b.shape == (10, 12)
        np.testing.assert_array_equal(a.read(1), b.read(1))  # the same cube, read the same way


@pytest.mark.parametrize("caller_captures", [False, True])
def test_main_leaves_the_callers_warning_capture_as_it_was(scene, caller_captures, capsys):
    import logging
    import warnings

    logging.captureWarnings(caller_captures)
    showwarning = warnings.showwarning
    try:
        assert main(["info", str(scene)]) == 0
        assert (warnings.showwarning is showwarning) and (
            (getattr(logging, "_warnings_showwarning", None) is not None) == caller_captures)
    finally:
        logging.captureWarnings(False)


def test_main_takes_its_root_log_handler_off_again(scene, capsys):
    """main() adds a stderr handler to the root logger when the caller has none; it stayed after main returned,
    so the caller's own logging.basicConfig(...) afterwards did nothing."""
    import logging

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []  # a caller without logging set up (pytest adds its own capture handlers)
    try:
        assert main(["info", str(scene)]) == 0
        assert root.handlers == [] and root.level == level
    finally:
        root.handlers = saved
        root.setLevel(level)


def test_no_stderr_at_all_is_not_a_crash(scene, model_dir, tmp_path, monkeypatch, capsys):
    """sys.stderr is None under pythonw, in a windowed app, or with fd 2 closed (``2>&-``): choosing whether to
    show progress called sys.stderr.isatty() and raised AttributeError (exit 1, nothing written)."""
    import sys

    monkeypatch.setattr(sys, "stderr", None)
    assert main(["info", str(scene)]) == 0
    monkeypatch.setattr(sys, "stdout", None)  # `info >&-`: exit 0 having printed nothing, before
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert main(["info", str(scene)]) == 2 and "standard output is closed" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "m.tif")]) == 0
    import hsi_engine

    assert hsi_engine.classify(str(scene), str(model_dir)).shape == (24, 24)
    assert hsi_engine.classify(str(scene), str(model_dir), progress=True).shape == (24, 24)


def test_verbose_logs_are_this_projects_not_gdals(tmp_path, model_dir):
    """``-v`` (before or after the command) turns on hsi-engine's DEBUG lines only: rasterio echoes every GDAL
    message at DEBUG/INFO, which drowned a run's log (hundreds of lines for a 32 x 32 tile)."""
    import subprocess
    import sys

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    cube = F.ip_crop(24, 24)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", height=24, width=24, count=cube.shape[0], dtype="float32",
                       crs="EPSG:32633", transform=from_origin(366000, 5810000, 30, 30)) as dst:
        dst.write(cube.astype(np.float32))
    code = "import sys; from hsi_engine.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "classify", str(scene), "--model", str(model_dir),
                           "--out", str(tmp_path / "map.tif"), "-v"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert not [ln for ln in lines if "rasterio" in ln.split(":")[0]], "\n".join(lines[:20])
    # stderr is not a terminal here, as in a pipeline's log: each line carries its time
    assert any(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO hsi_engine", ln) for ln in lines), lines[:5]
    # and -v says what the run decided and did, for troubleshooting (it added nothing before)
    debug = [ln.split(" DEBUG ", 1)[1] for ln in lines if " DEBUG " in ln]
    for want in (r"hsi_engine.api: scene \S+scene.tif: 24 bands x 24 x 24 px, float32",
                 r"hsi_engine.api: nodata: None, looked for in every band$",
                 r"hsi_engine.api: plan: 1 tiles, up to 24 x 24 px \(\+3 px halo each side\)",
                 r"hsi_engine.api: engine: eager backend \(asked: auto\) on cpu, spectral stage in float32",
                 r"hsi_engine.runner: tile 0 \(rows 0:24, cols 0:24\) written", r"hsi_engine.runner: run: .*wall_s"):
        assert any(re.match(want, d) for d in debug), (want, debug)


def test_a_model_without_normalisation_on_raw_integers_is_an_error_on_the_command_line(tmp_path, capsys):
    """Python warns (UnnormalisedInputWarning); the command line, where a pipeline reads only the exit status,
    refuses: exit 2, one error line naming the fix, no output (it exited 0 with a one-class map)."""
    import numpy as np

    from ssrn.checkpoint import save_model

    cube = np.clip(F.ip_crop(24, 24), 0, None).astype(np.uint16)
    scene = tmp_path / "raw.npy"
    np.save(scene, cube)
    bare = F.tiny_model(F.ip_crop(24, 24))
    bare.meta = {k: v for k, v in bare.meta.items() if k not in ("mean", "std")}
    model = save_model(bare, tmp_path / "bare")
    out = tmp_path / "map.tif"
    rc = main(["classify", str(scene), "--model", str(model), "--out", str(out), "--band-axis", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: the model has no per-band mean/std" in err and "--dataset NAME" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bare", "raw.npy"]


def test_a_scene_on_another_scale_than_the_model_is_an_error_on_the_command_line(tmp_path, capsys):
    """Reflectance 0-1 against a model trained on the integers x 10000 (the same scene as another provider
    delivers it) exited 0 with a one-class map: exit 2, one line naming the factor and the fix, no output."""
    import numpy as np

    cube = F.ip_crop(24, 24)
    scene = tmp_path / "reflectance.npy"
    np.save(scene, (cube / 10000).astype(np.float32))
    model = F.save_tiny_model(tmp_path / "model", cube)
    out = tmp_path / "map.tif"
    rc = main(["classify", str(scene), "--model", str(model), "--out", str(out), "--band-axis", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"error: the scene's values are about [0-9,]+x smaller .*scene \* 10000", err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model", "reflectance.npy"]


def test_a_burst_of_sigterms_stops_a_run_once_and_a_later_one_again():
    """The handler ignores the rest of a burst (it cut the cleanup short), but not for ever: a SIGTERM that
    Python swallowed (raised in a __del__) must not leave the process deaf to the next one. Each Ctrl-C counts."""
    from hsi_engine import cli

    handler = cli._Interrupt(grace_s=0.2)
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        handler(signal.SIGTERM, None)
    handler(signal.SIGTERM, None)  # the burst: ignored
    time.sleep(0.25)
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)  # after the grace: stops again
    ctrl_c = cli._Interrupt(cli._GRACE_S[signal.SIGINT])
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            ctrl_c(signal.SIGINT, None)


def test_a_signal_that_lands_in_a_log_call_is_delivered_again_not_lost():
    """GDAL reports errors through rasterio's C callback into Python logging; a KeyboardInterrupt raised there
    was swallowed ('Exception ignored in: rasterio._env.log_error') and the run went on to exit 0. A signal
    that lands in a log call is delivered again a moment later."""
    import logging

    from hsi_engine import cli

    handler = cli._Interrupt(grace_s=10.0)
    seen = []

    class SignalledHere(logging.Filter):  # runs inside the log call, as the signal handler would
        def filter(self, record):
            import sys

            handler(signal.SIGTERM, sys._getframe())  # no raise here: it would be lost
            seen.append(record.getMessage())
            return True

    lg = logging.getLogger("hsi_engine.test_signal_in_log")
    previous = signal.signal(signal.SIGTERM, handler)
    lg.addFilter(SignalledHere())
    try:
        lg.warning("GDAL says something")
        assert seen == ["GDAL says something"] and handler.first is None
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            time.sleep(2)  # the second delivery raises outside the log call
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_command_exits_with_main_s_status_whatever_signals_follow(monkeypatch):
    """A burst's later SIGTERMs, or one while the interpreter shuts down after "wrote ...", ended the process with
    143 (main had put the default handler back): the work was done. The command's exit status is main's."""
    from hsi_engine import cli

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(cli, "main", lambda argv=None: 0)
    try:
        with pytest.raises(SystemExit) as done:
            cli.run()
        os.kill(os.getpid(), signal.SIGTERM)  # after the work: ignored, the process is exiting with main's status
        time.sleep(0.05)
        assert done.value.code == 0

        def signalled_at_the_end(argv=None):
            os.kill(os.getpid(), signal.SIGTERM)  # lands after main's own handling, before it returns
            time.sleep(0.05)
            return 0

        for s, h in previous.items():  # (run() left both ignored, as the process was exiting)
            signal.signal(s, h)
        monkeypatch.setattr(cli, "main", signalled_at_the_end)
        assert cli._run_main() == 130  # (run() then ends the process at once: see the next test)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_PENDING_ZARR_IO = """
import asyncio, sys
from hsi_engine import cli

def interrupted(argv=None):  # a run interrupted while zarr's event loop had reads in flight
    from zarr.core.sync import _get_loop
    loop = _get_loop()
    for _ in range(20):
        asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), loop)
    print("hsi-engine classify: interrupted", file=sys.stderr)
    return 130

cli.main = interrupted
cli.run()
"""


def test_an_interrupted_command_ends_without_teardown_tracebacks():
    """After 'interrupted' came 16-216 lines: zarr reads the interruption left pending were destroyed while the
    interpreter tore down ('Task was destroyed but it is pending', 'Event loop is closed'). The run has kept or
    removed its files already: the process ends at once, 'interrupted' its last line, exit 130."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PENDING_ZARR_IO], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip() == "hsi-engine classify: interrupted", proc.stderr[-2000:]


@pytest.mark.parametrize("out_name", ["a.tif", "a.zarr"])
def test_a_sigterm_after_the_map_is_written_does_not_make_the_run_interrupted(scene, model_dir, tmp_path,
                                                                              monkeypatch, out_name):
    """A SIGTERM in the milliseconds after the map was committed (releasing the lock, freeing the run) printed
    'interrupted' and exit 130 for a finished map: a plain rerun was then refused ('already exists')."""
    from hsi_engine import api
    from hsi_engine import cli as cli_module

    real = api.classify_to_file
    written = []

    def then_signalled(*a, **k):
        path = real(*a, on_written=lambda p: (written.append(p), k["on_written"](p)), **{
            n: v for n, v in k.items() if n != "on_written"})
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the command returns
        time.sleep(0.05)
        return path

    monkeypatch.setattr(api, "classify_to_file", then_signalled)
    out = tmp_path / out_name
    rc = cli_module.main(["classify", str(scene), "--model", str(model_dir), "--out", str(out), "--tile", "8"])
    assert rc == 0 and written == [out] and out.exists()


def test_a_signal_while_main_returns_a_written_map_changes_nothing(monkeypatch):
    """main() put its caller's handlers back first; a SIGTERM (or Ctrl-C) in the rest of its clean-up then made a
    finished map exit 130 with no message. The command's own handlers are marked finished too."""
    import logging

    from hsi_engine import cli

    def written(args, on_written=None):
        on_written(Path("map.tif"))
        return 0

    real = logging.captureWarnings

    def signalled(capture):
        if not capture:  # main's finally, after its handlers were put back
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        real(capture)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(cli, "_cmd_classify", written)
    monkeypatch.setattr(cli.sys, "argv", ["hsi-engine", "classify", "s.tif", "--model", "m", "--out", "map.tif"])
    monkeypatch.setattr(logging, "captureWarnings", signalled)
    try:
        assert cli._run_main() == 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@pytest.mark.parametrize("out_name", ["a.tif", "a.zarr"])
def test_a_signal_while_a_written_map_s_temps_are_removed_is_a_finished_run(scene, model_dir, tmp_path,
                                                                              monkeypatch, out_name):
    """Stopped after the map was renamed into place, while its temps (or the replaced map, or the partial store)
    were being removed: the map is complete, so exit 0, not 'interrupted' and 130 (a plain rerun was then
    refused); what is left is swept by the next run."""
    from hsi_engine import writers

    out = tmp_path / out_name
    assert _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(out), "--tile", "8"])[0] == 0
    cleanup = writers.ClassMapWriter._cleanup

    def stopped(self):
        if self.committed and not getattr(self, "_stopped_once", False):
            self._stopped_once = True
            raise KeyboardInterrupt("signal 15")
        cleanup(self)

    monkeypatch.setattr(writers.ClassMapWriter, "_cleanup", stopped)
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(out), "--tile", "8",
                    "--overwrite"])
    assert rc == 0 and "interrupted" not in err, err
    assert out.exists()


def test_the_command_leaves_an_ignored_signal_ignored():
    """Started ignoring SIGINT (`cmd &` in a script, nohup): a terminal's Ctrl-C must not stop it."""
    from hsi_engine import cli

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert signal.SIGINT not in cli._handlers() and signal.SIGTERM in cli._handlers()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert {signal.SIGTERM, signal.SIGINT} <= set(cli._handlers())


def test_a_handler_set_from_c_is_left_to_its_application(monkeypatch):
    """An embedding application's SIGTERM handler (set from C: Python reads it as None) could not be put back
    once replaced; the command leaves that signal alone, and so does a cluster's start."""
    from hsi_engine import cli, dask_client

    real = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real(s))
    assert signal.SIGTERM not in cli._handlers() and signal.SIGINT in cli._handlers()
    replaced = []
    real_signal = signal.signal
    monkeypatch.setattr(signal, "signal", lambda s, h: (replaced.append(s), real_signal(s, h))[1])
    with dask_client._signals_held():
        pass
    assert signal.SIGTERM not in replaced and replaced == [signal.SIGINT, signal.SIGINT]


_COMMAND = "import sys; sys.argv[0] = 'hsi-engine'; from hsi_engine.cli import run; run()"  # the console script


def test_the_command_answers_without_importing_torch():
    """``import hsi_engine`` (and the command's module) loads no torch: ``--help`` and usage errors took 3-7 s,
    and the accessor still registers with the package. The usage error itself loads none either."""
    import subprocess
    import sys

    # one child: the imports, then the console script's usage error (its modules listed before and after)
    code = ("import sys, xarray, numpy; import hsi_engine.cli, hsi_engine, ssrn\n"
            "da = xarray.DataArray(numpy.zeros(1))\n"
            "assert hasattr(da, 'hsi') and hasattr(da, 'rio')\n"
            "def heavy():\n"
            "    names = ('torch', 'triton', 'numba', 'distributed', 'zarr')\n"
            "    return sorted(m for m in sys.modules if m.split('.')[0] in names)\n"
            "print(heavy(), flush=True)\n"
            "try:\n"
            f"    {_COMMAND}\n"
            "finally:\n"
            "    print(heavy(), flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, "classify", "s.tif", "--model", "m", "--out", "o.tif", "--tile",
                           "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "argument --tile" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "[]"], proc.stdout


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/PID/maps to see torch loading")
def test_ctrl_c_while_torch_loads_is_an_interruption(scene, model_dir, tmp_path):
    """The command's handlers go in before torch is imported: Ctrl-C while it loaded printed a 40-line import
    traceback (the package imported torch before ``run`` could take signals)."""
    import subprocess
    import sys

    out = tmp_path / "map.tif"
    proc = subprocess.Popen([sys.executable, "-c", _COMMAND, "classify", str(scene), "--model", str(model_dir),
                             "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/maps") as maps:
            if "libtorch" in maps.read():
                break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().endswith("hsi-engine classify: interrupted"), err[-2000:]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_one_except_catches_the_trainer_s_and_the_model_s_errors_too():
    """A pipeline's ``except HSIEngineError`` let a bad model directory (CheckpointError), a bad training
    option or scene, and a missing device through: every error class the packages define derives from it."""
    import inspect

    import ssrn.data
    import ssrn.devices
    import ssrn.errors
    import ssrn.keras
    import ssrn.train

    import hsi_engine
    import hsi_engine.errors

    classes = {c for m in (ssrn.data, ssrn.devices, ssrn.errors, ssrn.keras, ssrn.train, hsi_engine.errors)
               for _, c in inspect.getmembers(m, inspect.isclass)
               if issubclass(c, Exception) and c.__module__.split(".")[0] in ("ssrn", "hsi_engine")}
    assert len(classes) >= 15, sorted(c.__name__ for c in classes)
    assert [c.__name__ for c in classes if not issubclass(c, hsi_engine.HSIEngineError)] == []
    with pytest.raises(hsi_engine.HSIEngineError, match="does not exist"):
        hsi_engine.load_model("/nonexistent/model/dir")


def test_a_pipe_stdin_an_empty_out_and_a_full_disk_are_one_line_each(scene, model_dir, tmp_path):
    """A FIFO scene hung `info` (read twice) or gave a rasterio traceback; `-` said 'suffix (none)'; `--out ""`
    (an unset $OUT) was a ValueError traceback, exit 1; `info > /dev/full` an OSError traceback."""
    import subprocess
    import sys

    fifo = tmp_path / "f.tif"
    os.mkfifo(fifo)
    for args, words in ((["info", str(fifo)], "is not a regular file (a pipe or a device)"),
                        (["info", "-"], "reading a scene from standard input is not supported"),
                        (["classify", str(scene), "--model", str(model_dir), "--out", ""],
                         "argument --out: an empty path")):
        rc, err = _cli(args)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-c", "from hsi_engine.cli import run; run()", "info", str(scene)],
                                  stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert proc.returncode == 2 and "cannot write to standard output" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("url", ["s3://bucket/map.zarr", "gs://b/map.tif", "file:///tmp/map.tif",
                                 "https://example.com/map.tif"])
def test_urls_are_refused_in_one_line_and_nothing_is_made(scene, model_dir, tmp_path, monkeypatch, url):
    """``--out s3://bucket/map.zarr`` exited 0 having written the map into ./s3:/bucket/ (pathlib collapses '//');
    a file:// output left a hidden temp beside the real path. URLs are refused, outputs and scenes alike."""
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", url])
    assert rc == 2 and "writes local paths only" in err and err.count("\n") == 1
    rc, err = _cli(["classify", url.rsplit(".", 1)[0] + ".tif", "--model", str(model_dir), "--out", "m.tif"])
    assert rc == 2 and "is a URL" in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_too_long_for_its_temporaries_is_refused_before_any_tile(scene, model_dir, tmp_path):
    """A 230-byte name computed every tile, then failed at commit with a traceback (exit 1): its temporaries'
    names passed NAME_MAX. It is refused up front; a name within the limit works."""
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / ("a" * 226 + ".tif"))])
    assert rc == 2 and "choose a name of at most 215 bytes" in err
    assert list(tmp_path.iterdir()) == []
    rc, _ = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / ("b" * 211 + ".tif"))])
    assert rc == 0


def test_a_tilde_the_shell_left_is_the_home_directory_and_zarr_in_capitals_is_resumable(scene, model_dir, tmp_path,
                                                                                      monkeypatch):
    """``--out '~/maps/x.tif'`` wrote into a literal ./~ directory; ``--out MAP.ZARR`` took the single-process
    writer (no completion record: an interrupted run kept nothing, and --resume then refused the finished map)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert _cli(["classify", str(scene), "--model", str(model_dir), "--out", "~/maps/x.tif"])[0] == 0
    assert (home / "maps" / "x.tif").is_file() and list(work.iterdir()) == []
    assert _cli(["classify", str(scene), "--model", str(model_dir), "--out", "MAP.ZARR"])[0] == 0
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", "MAP.ZARR", "--resume"])
    assert rc == 0, err


@pytest.mark.parametrize("argv, name", [(["demo", "--out", ""], "--out"),
                                        (["classify", "", "--model", "m", "--out", "x.tif"], "scene")])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(argv, name, tmp_path, monkeypatch):
    """``hsi-engine demo --out "$OUT"`` with OUT unset wrote the demo's files into the current directory."""
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(argv)
    assert rc == 2 and f"argument {name}: an empty path" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_negative_nodata_in_exponent_form_is_a_value(scene, model_dir, tmp_path):
    """``--nodata -3.4028235e38`` (float32's usual nodata) gave 'argument --nodata: expected one argument'."""
    from hsi_engine.cli import _negative_values_joined

    assert _negative_values_joined(["classify", "s", "--nodata", "-3.4e38", "-v"]) == \
        ["classify", "s", "--nodata=-3.4e38", "-v"]
    assert _negative_values_joined(["--nodata", "-v"]) == ["--nodata", "-v"]
    rc, err = _cli(["classify", str(scene), "--model", str(model_dir), "--out", str(tmp_path / "m.tif"),
                    "--nodata", "-3.4028235e38"])
    assert rc == 0, err


def test_a_read_only_or_full_file_system_is_one_line(scene, monkeypatch, capsys):
    """An OSError other than a few named ones (a read-only TORCHINDUCTOR_CACHE_DIR at torch's import, a full disk)
    was a traceback and exit 1."""
    import errno

    from hsi_engine import cli

    for code, words in ((errno.EROFS, "the file system is read-only"), (errno.ENOSPC, "the file system is full")):
        def fail(args, code=code):
            raise OSError(code, os.strerror(code), "/scratch/cache/inductor")

        monkeypatch.setattr(cli, "_cmd_info", fail)
        assert main(["info", str(scene)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "/scratch/cache/inductor" in err[0] and words in err[0], err


def test_a_tilde_without_a_home_is_refused_not_made_a_directory(tmp_path, monkeypatch, capsys):
    """With no HOME and no passwd entry (a container's user), '~/x.tif' was written to a directory named '~'."""
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)
    monkeypatch.chdir(tmp_path)
    assert main(["info", "~/x.tif"]) == 2
    assert "names the home directory, but this user has none" in capsys.readouterr().err
    assert not (tmp_path / "~").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_an_error_line_stderr_cannot_take_still_exits_2(tmp_path):
    """``2>/dev/full`` (or a pipe closed early): writing the error line raised OSError out of main, and the command
    exited 1, a crash's status, where scripts tell errors (2) from crashes (1)."""
    from hsi_engine.cli import main

    with io.TextIOWrapper(open("/dev/full", "wb", buffering=0), write_through=True) as full, \
            contextlib.redirect_stderr(full):  # (as a process's stderr: each write reaches the device)
        assert main(["info", str(tmp_path / "none.tif")]) == 2


def test_messages_are_spelled_as_the_command_line_takes_them(scene, model_dir, tmp_path, capsys):
    """Lines that kept Python's spelling on the command line: 'pass --overwrite (overwrite=True)', 'band_axis=0
    (--variable / --band-axis) cannot apply', 'nodata=nan masks nothing', and 'patch must be ...' for --patch."""
    import warnings

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    import hsi_engine
    from hsi_engine.cli import cli_words
    from ssrn.checkpoint import save_model

    # import-keras / save_model into an existing model: the error as main() says it
    with pytest.raises(CheckpointError) as e:
        save_model(load_model(model_dir), model_dir)
    said = cli_words(str(e.value))
    assert "--overwrite" in said and "overwrite=True" not in said, said
    assert cli_words("pass --overwrite (overwrite=True) to replace it") == "pass --overwrite to replace it"
    # an option a GeoTIFF cannot use, named as typed
    tif = tmp_path / "s.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=4, height=4, count=3, dtype="float32",
                       transform=from_origin(0, 4, 1, 1)) as f:
        f.write(np.ones((3, 4, 4), np.float32))
    rc, err = _cli(["classify", str(tif), "--model", str(model_dir), "--out", str(tmp_path / "m.tif"),
                    "--band-axis", "0"])
    assert rc == 2 and "so --band-axis 0 cannot apply" in err and "band_axis=" not in err, err
    rc, err = _cli(["info", str(tif), "--variable", "a b", "--band-axis", "2"])
    assert rc == 2 and "so --variable 'a b' and --band-axis 2 cannot apply" in err, err
    # --nodata nan on an integer scene: the warning's line as the command line formats it
    with pytest.warns(UserWarning, match=r"nodata=nan \(--nodata nan\) masks nothing") as seen:
        hsi_engine.classify(str(scene), model_dir, nodata=float("nan"), progress=False)
    said = [cli_words(str(w.message)) for w in seen if "masks nothing" in str(w.message)]
    assert said[0].startswith("--nodata nan masks nothing in this uint16 scene"), said
    assert cli_words("nodata=-9999 (--nodata -9999) replaces") == "--nodata -9999 replaces"
    # --patch, checked before anything is read, named as typed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, err = _cli(["train", "--dataset", str(scene), "--out", str(tmp_path / "model"), "--patch", "4"])
    assert rc == 2 and "error: --patch must be an odd whole number 3..31" in err, err
    assert not (tmp_path / "model").exists()
