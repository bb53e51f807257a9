"""A zarr class map's store is created without per-tile work: its cost must not grow with the tile count.

The store is made by xarray's ``to_zarr(compute=False)``, which builds one write task per dask chunk (and never
runs them); per-tile dask chunks cost seconds before the first tile at 150 x 150 tiles and ~40 s at 50k x 50k.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from hsi_engine.resume import ResumableZarrWriter
from hsi_engine.writers import ZarrClassMapWriter

TILES, BLOCK, K = 120, 16, 4  # 14,400 tiles: a per-tile graph is ~43,000 tasks here


@pytest.fixture
def graph_sizes(monkeypatch):
    """The number of dask tasks in each store-creating ``to_zarr(compute=False)`` call."""
    sizes: list[int] = []
    to_zarr = xr.Dataset.to_zarr

    def spy(self, *a, **kw):
        delayed = to_zarr(self, *a, **kw)
        if delayed is not None:
            sizes.append(len(delayed.__dask_graph__()))
        return delayed

    monkeypatch.setattr(xr.Dataset, "to_zarr", spy)
    return sizes


def _kw(**extra):
    kw = dict(height=TILES * BLOCK, width=TILES * BLOCK, n_classes=K, block=BLOCK, probabilities="float32",
              confidence=True, crs="EPSG:32633", transform=Affine(30, 0, 366015, 0, -30, 5809965))
    kw.update(extra)
    return kw


def _check_store(store, n_tiles: int) -> None:
    """Chunks of one tile each, none of them written (all are the fill), read back as tiles by xarray."""
    for var, chunks, fill in (("classes", [BLOCK, BLOCK], 0), ("probabilities", [K, BLOCK, BLOCK], "NaN"),
                              ("confidence", [BLOCK, BLOCK], "NaN")):
        meta = json.loads((store / var / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == chunks
        assert meta["fill_value"] == fill
        assert not (store / var / "c").exists(), f"{var}: chunk data written at creation"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(store, consolidated=False)
    assert ds["classes"].data.numblocks == (n_tiles, n_tiles)
    assert ds.rio.crs.to_epsg() == 32633
    assert int(ds["classes"][:BLOCK, :BLOCK].max()) == 0
    assert bool(np.isnan(ds["confidence"][-BLOCK:, -BLOCK:]).all())


def test_zarr_store_created_without_per_tile_tasks(tmp_path, graph_sizes):
    w = ZarrClassMapWriter(tmp_path / "map.zarr", **_kw())
    try:
        assert len(graph_sizes) == 1 and graph_sizes[0] < 100, graph_sizes  # was ~3 tasks per tile
        _check_store(w._tmp, TILES)
    finally:
        w.abort()


def test_resumable_store_created_without_per_tile_tasks(tmp_path, graph_sizes):
    w = ResumableZarrWriter(tmp_path / "map.zarr", grid=(TILES, TILES), fingerprint={"k": 1}, resume=False, **_kw())
    try:
        assert len(graph_sizes) == 1 and graph_sizes[0] < 100, graph_sizes
        _check_store(w.partial, TILES)
        w.write(BLOCK, 2 * BLOCK, np.full((BLOCK, BLOCK), 3, np.uint8), np.full((K, BLOCK, BLOCK), 0.25, np.float32),
                np.full((BLOCK, BLOCK), 0.25, np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(w.partial, consolidated=False)
        assert int(ds["classes"][BLOCK, 2 * BLOCK]) == 3 and int(ds["classes"][0, 0]) == 0
        assert sorted(p.name for p in (w.partial / "classes" / "c").rglob("*") if p.is_file()) == ["2"]
    finally:
        w.abort()
