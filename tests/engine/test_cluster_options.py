"""Cluster runs refuse what their workers would refuse (a backend name, a device) on the driver, before any cluster
starts; worker counts and the read settings take whole numbers only, as readers= does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")

import _scale_fixtures as F  # noqa: E402

import hsi_engine  # noqa: E402
from hsi_engine import cluster, dask_client  # noqa: E402
from hsi_engine.errors import ClusterUsageError, OptionError  # noqa: E402


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster_options")
    cube = F.ip_crop(16, 16)
    return {"scene": F.write_zarr(d / "scene.zarr", cube), "model": F.save_tiny_model(d / "model", cube)}


@pytest.fixture
def no_cluster(monkeypatch):
    """Any attempt to start or join a cluster fails the test."""

    def connect(**kw):
        raise AssertionError(f"a cluster was started or joined ({kw})")

    monkeypatch.setattr(cluster, "connect", connect)


BAD_ENGINES = [
    (dict(workers=1, backend="TRITON"), "unknown spectral backend 'TRITON'"),
    (dict(scheduler="tcp://127.0.0.1:1", backend="nope"), "unknown spectral backend 'nope'"),
    (dict(workers=1, device="meta"), "device 'meta' is not supported by the engine; expected cpu, cuda"),
    (dict(scheduler="tcp://127.0.0.1:1", device="meta"), "device 'meta' is not supported by the engine"),
    (dict(scheduler="tcp://127.0.0.1:1", device="mps"), "device 'mps' is not supported by the engine"),
]


@pytest.mark.parametrize("kw, message", BAD_ENGINES)
def test_a_cluster_run_refuses_a_bad_backend_or_device_before_any_cluster_starts(case, tmp_path, no_cluster, kw,
                                                                                 message):
    out = tmp_path / "sub" / "map.tif"  # (a directory made for the output is removed too)
    with pytest.raises(OptionError, match=message):
        hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=16, progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_a_local_cluster_run_checks_the_device_as_an_in_process_run_does(case, tmp_path, no_cluster):
    """--workers runs on this host: cuda where this torch sees none is the in-process error, not a worker's."""
    with pytest.raises(OptionError, match="sees no CUDA device"):
        cluster.run_to_file(case["scene"], case["model"], tmp_path / "map.zarr", workers=1, device="cuda",
                            progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_workers_with_an_unsupported_device_is_one_line(case, tmp_path, no_cluster, capsys):
    from hsi_engine.cli import main

    assert main(["classify", str(case["scene"]), "--model", str(case["model"]), "--out", str(tmp_path / "o.tif"),
                 "--workers", "1", "--device", "meta"]) == 2
    err = capsys.readouterr().err
    assert "error: device 'meta' is not supported by the engine" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers", [True, 1.5, "3", np.float64(2.0)])
def test_workers_must_be_a_whole_number(case, tmp_path, no_cluster, workers):
    with pytest.raises(ClusterUsageError, match=rf"workers must be a whole number of worker processes .*got "
                                                rf"{repr(workers).replace('(', '.').replace(')', '.')}"):
        cluster.run_to_file(case["scene"], case["model"], tmp_path / "map.zarr", workers=workers, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n", [True, 1.5, "3", 0, -1])
def test_make_local_cluster_refuses_what_is_not_a_worker_count(monkeypatch, n):
    monkeypatch.setattr(dask_client, "_started", lambda *a: pytest.fail("a cluster was started"))
    with pytest.raises(ClusterUsageError, match="workers must be"):
        cluster.make_local_cluster(n, gpu=False)


def test_make_local_cluster_takes_numpy_integers(monkeypatch):
    monkeypatch.setattr(dask_client, "_started", lambda n, start: n)
    assert cluster.make_local_cluster(np.int64(1), gpu=False) == 1


@pytest.mark.parametrize("name", ["cache_blocks", "decoders"])
@pytest.mark.parametrize("value", [True, 1.5, "3"])
def test_read_settings_must_be_whole_numbers(case, tmp_path, name, value):
    """They were truncated (1.5 -> 1, True -> 1) or, for "3", reached int() and ran; readers= was refused."""
    from hsi_engine.runner import check_read_settings

    with pytest.raises(OptionError, match=rf"{name} must be a whole number of \w+ \(e.g. {name}=\d+\); got "
                                          rf"{repr(value).replace('.', '[.]')}"):
        check_read_settings(**{"cache_blocks": None, "decoders": None, name: value})
    with pytest.raises(OptionError, match=f"{name} must be a whole number"):
        cluster.run_to_file(case["scene"], case["model"], tmp_path / "map.zarr", progress=False, **{name: value})
    assert list(tmp_path.iterdir()) == []
    check_read_settings(cache_blocks=np.int64(4), decoders=0)  # numpy integers and 0 stay accepted


def test_a_low_open_files_limit_is_named_when_a_local_cluster_fails(monkeypatch):
    """Under `ulimit -n 32` the workers failed with 'Too many open files' in their logs only; the error named
    distributed's follow-on AssertionError and the dask configuration."""
    import resource

    from hsi_engine import dask_client

    monkeypatch.setattr(resource, "getrlimit", lambda which: (32, 4096))
    assert "may open only 32 files (ulimit -n)" in dask_client._nofile_hint()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    assert dask_client._nofile_hint() == ""
