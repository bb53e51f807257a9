"""Shared fixtures: where the real data lives, and a skip with a clear reason when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$HSI_ENGINE_DATA, else ../shared/data beside the checkout; None when neither exists."""
    env = os.environ.get("HSI_ENGINE_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data directory not found: set HSI_ENGINE_DATA or place shared/data beside the checkout")
    return d


TEST_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def seed_ssrn_dir() -> Path:
    """The seed's released Keras models: the data directory's copy, else the one shipped with the tests."""
    shared = shared_data_dir()
    for d in ([shared / "seed_ssrn"] if shared else []) + [TEST_DATA / "seed_ssrn"]:
        if (d / "Indian_best_RES_3D_SS4_10_1.hdf5").is_file() and (d / "UP_best_RES_3D_SS4_5_1.hdf5").is_file():
            return d
    raise FileNotFoundError(f"the seed's released Keras models are missing from {TEST_DATA / 'seed_ssrn'}")


@pytest.fixture(autouse=True)
def _test_process_keeps_its_allocator(monkeypatch):
    """``hsi-engine classify`` opts its own process into ``reuse_large_buffers()``; CLI tests run its ``main()``
    in the test process, which must keep malloc as it is (the setting is process-wide and cannot be undone).
    ``tests/engine/test_allocator.py`` checks the real setting in subprocesses."""
    import hsi_engine.allocator

    monkeypatch.setattr(hsi_engine.allocator, "reuse_large_buffers", lambda *a, **k: False)
