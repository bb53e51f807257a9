"""The command line's error and log lines stay one line each, whatever a path holds (hsi_engine/cli.py)."""

from __future__ import annotations

import logging

from hsi_engine.cli import _CliFormatter, main, one_line


def test_a_newline_in_a_path_is_shown_escaped_in_the_one_error_line(tmp_path, capsys) -> None:
    """A scene named $'no\\nhsi-engine classify: finished OK.tif' printed its error over two lines, the second one
    forged by the name."""
    bad = tmp_path / "no\nhsi-engine classify: finished OK.tif"
    rc = main(["classify", str(bad), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hsi-engine classify: error:") and "no\\nhsi-engine classify: finished OK.tif" in err


def test_log_lines_escape_newlines_but_keep_a_traceback() -> None:
    fmt = _CliFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("hsi_engine", logging.INFO, __file__, 1, "wrote %s", ("o6\nINFO fake.tif",), None)
    assert fmt.format(record) == "INFO wrote o6\\nINFO fake.tif"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("hsi_engine", logging.ERROR, __file__, 1, "a\nb", (), sys.exc_info())
    lines = fmt.format(record).splitlines()
    assert lines[0] == "ERROR a\\nb" and lines[1] == "Traceback (most recent call last):" and len(lines) > 3
    assert one_line("x\r\ny") == "x\\r\\ny"


def test_running_out_of_memory_is_one_error_line_naming_the_fix(tmp_path, capsys, monkeypatch) -> None:
    """torch's CPU allocator under a memory limit raised RuntimeError: an 87-line traceback and exit 1."""
    import numpy as np

    import hsi_engine.api

    def starved(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 262144 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(hsi_engine.api, "classify_to_file", starved)
    np.save(tmp_path / "s.npy", np.ones((4, 4, 3), np.float32))
    rc = main(["classify", str(tmp_path / "s.npy"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "out of memory" in err and "--tile" in err and "--readers" in err


def test_another_runtime_error_is_not_called_a_memory_error(tmp_path, monkeypatch) -> None:
    import numpy as np
    import pytest

    import hsi_engine.api

    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(hsi_engine.api, "classify_to_file", broken)
    np.save(tmp_path / "s.npy", np.ones((4, 4, 3), np.float32))
    with pytest.raises(RuntimeError, match="something else"):
        main(["classify", str(tmp_path / "s.npy"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.tif")])


def test_resource_limits_are_one_error_line_naming_the_limit(tmp_path, capsys, monkeypatch) -> None:
    """Past ``ulimit -v`` a thread or shared library fails to start (a traceback, exit 1); ``ulimit -n`` and -f
    (EMFILE, EFBIG) and a full disk's OSError without a file name ('No space left on device: None') were
    tracebacks or garbled; each is one line naming the limit, and train is not told of --tile."""
    import errno

    import numpy as np

    import hsi_engine.api

    np.save(tmp_path / "s.npy", np.ones((4, 4, 3), np.float32))
    args = ["classify", str(tmp_path / "s.npy"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.tif")]
    for raised, said in [(RuntimeError("can't start new thread"), "out of memory or threads (can't start new "
                                                                   "thread); use less: a smaller --tile"),
                         (RuntimeError("could not create a primitive"), "out of memory (could not create a "
                                                                         "primitive)"),
                         (ImportError("x.so: failed to map segment from shared object"), "out of memory (x.so"),
                         (OSError(errno.EMFILE, "Too many open files"),
                          "Too many open files; this process may open no more files: raise the limit (ulimit -n)"),
                         (OSError(errno.EFBIG, "File too large"), "File too large; a file grew past the file-size "
                                                                  "limit (ulimit -f)"),
                         (OSError(errno.ENOSPC, "No space left on device"), "No space left on device; the file "
                                                                            "system is full")]:
        def fails(*a, raised=raised, **k):
            raise raised

        monkeypatch.setattr(hsi_engine.api, "classify_to_file", fails)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(f"hsi-engine classify: error: {said}"), err
        assert ("ulimit -u" in err) == ("thread" in said), err  # (a thread limit as well as an address-space one)
    import ssrn.train

    monkeypatch.setattr(ssrn.train, "run_training", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert main(["train", "--dataset", "indian_pines", "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" in err and "--tile" not in err
