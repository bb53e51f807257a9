"""What a resumable output records about what made it, read back from real outputs: a scene is its file only while
it holds the file's untouched lazy array (an edited, loaded or windowed one is identified by a digest of its
values), so no other array continues or completes its map; a low-precision run records the spatial precision auto
resolved to and the device kind; every map, classify()'s in-memory one included, carries its provenance."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
from hsi_engine import cluster, scene_identity
from hsi_engine.errors import OutputError
from hsi_engine.resume import FINGERPRINT_ATTR, MAP_VERSION, partial_path, read_record, recorded_fingerprint

TILE = 16
PROVENANCE = ("software", "model_digest", "precision", "spatial_precision", "map_version")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return F.classified_crop(tmp_path_factory.mktemp("identity"), 64, 64, y0=20, x0=20, tile=TILE)  # 4 x 4 tiles


def _classify(scene, model, **kw) -> np.ndarray:
    return hsi_engine.classify(scene, model, tile=TILE, progress=False, **kw).values


def _interrupted(monkeypatch, scene, model, out, n: int = 3, **kw) -> None:
    """A resumable run into ``out`` that crashes after ``n`` tiles, leaving ``<out>.partial``."""
    F.crash_writes_after(monkeypatch, n)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(scene, model, out, tile=TILE, resume=True, readers=1, queue_depth=1, **kw)
    monkeypatch.undo()
    assert int((read_record(partial_path(out)) > 0).sum()) == n


def test_a_file_s_scene_edited_in_memory_is_not_taken_for_the_file(case, tmp_path):
    """xarray keeps ``encoding["source"]`` through ``load()``, in-place assignment and ``copy(data=...)``: such a
    scene was recorded as the file, and --resume into the file's finished map said "complete" and kept the file's
    map. Now only the file's own lazy array is the file; an edited scene is refused there and recorded by digest."""
    out = tmp_path / "map.tif"
    cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True)
    before = F.read_classes(out)
    opened = hsi_engine.open_scene(case["scene"])
    assert cluster.run_to_file(opened, case["model"], out, tile=TILE, resume=True).computed == 0  # still the file
    relabelled = opened.assign_coords(band=opened["band"].values * 10)  # the same data: still the file
    assert hsi_engine.io.file_of(relabelled) == hsi_engine.io.file_of(opened) is not None

    loaded = hsi_engine.open_scene(case["scene"]).load()
    loaded[:, :30, :] = loaded[:, :30, :] // 2  # a haze correction, say, done in place after loading
    copied = opened.copy(data=loaded.values)
    lazy_edit = hsi_engine.open_scene(case["scene"])
    lazy_edit[:, :30, :] = lazy_edit[:, :30, :] // 2  # in place on the dask array: a new array, the same encoding
    edited_map = _classify(loaded, case["model"])
    assert (edited_map != before).any()  # the edit changes the map
    for edited in (loaded, copied, lazy_edit):
        assert edited.encoding["source"] == opened.encoding["source"]  # what fooled the old check
        assert hsi_engine.io.file_of(edited) is None
        with pytest.raises(OutputError, match=r"scene: it has '[^']*scene.zarr', this run an in-memory scene"):
            cluster.run_to_file(edited, case["model"], out, tile=TILE, resume=True)
    np.testing.assert_array_equal(F.read_classes(out), before)  # refused: the file's map untouched

    fresh = tmp_path / "edited.zarr"
    cluster.run_to_file(copied, case["model"], fresh, tile=TILE, resume=True)
    np.testing.assert_array_equal(F.read_classes(fresh), edited_map)
    scene = recorded_fingerprint(fresh)["scene"]
    assert scene["source"] is None and "stat" not in scene and len(scene["digest"]) == 32
    # the same values again (another copy of them) complete it; the file itself does not
    assert cluster.run_to_file(loaded.copy(deep=True), case["model"], fresh, tile=TILE, resume=True).computed == 0
    with pytest.raises(OutputError, match=r"scene: it has an in-memory scene .*, this run '[^']*scene.zarr'"):
        cluster.run_to_file(case["scene"], case["model"], fresh, tile=TILE, resume=True)


@pytest.mark.parametrize("name", ["map.zarr", "map.tif"])
def test_an_interrupted_in_memory_run_is_continued_only_by_the_same_values(case, tmp_path, monkeypatch, name):
    """Two in-memory arrays of one shape, dtype and georeferencing had one fingerprint: an interrupted run of A
    was finished with B's tiles. The digest of the values refuses B; A (another copy of it) continues, and then
    finds its finished output done."""
    a = F.dataarray(case["cube"])
    b = F.dataarray(np.ascontiguousarray(case["cube"][:, ::-1, ::-1]))  # another scene, same shape and place
    ref_a, ref_b = _classify(a, case["model"]), _classify(b, case["model"])
    assert (ref_a != ref_b).any()
    out = tmp_path / name
    _interrupted(monkeypatch, a, case["model"], out)
    with pytest.raises(OutputError, match=r"started with different settings \(scene: another in-memory scene"):
        cluster.run_to_file(b, case["model"], out, tile=TILE, resume=True)
    assert not out.exists() and int((read_record(partial_path(out)) > 0).sum()) == 3
    rep = cluster.run_to_file(F.dataarray(case["cube"].copy()), case["model"], out, tile=TILE, resume=True)
    assert (rep.skipped, rep.computed) == (3, case["tiles"] - 3)
    np.testing.assert_array_equal(F.read_classes(out), ref_a)
    assert cluster.run_to_file(a, case["model"], out, tile=TILE, resume=True).computed == 0
    with pytest.raises(OutputError, match=r"made with different settings \(scene: another in-memory scene"):
        cluster.run_to_file(b, case["model"], out, tile=TILE, resume=True)
    np.testing.assert_array_equal(F.read_classes(out), ref_a)


def test_a_window_of_a_file_is_identified_by_its_values_read_once_more(case, tmp_path, monkeypatch, caplog):
    """A window of an opened file (dask data that is not the file) is hashed block by block, which reads it once
    more (said in the log, with the way to avoid it); another window of the same shape does not continue its
    partial; the same window does."""
    opened = hsi_engine.open_scene(case["scene"])
    a, b = opened.isel(y=slice(0, 48), x=slice(0, 48)), opened.isel(y=slice(16, 64), x=slice(16, 64))
    out = tmp_path / "window.zarr"
    with caplog.at_level(logging.INFO, logger="hsi_engine"):
        _interrupted(monkeypatch, a, case["model"], out)
    assert any("reading it once more" in r.getMessage() and "to_zarr" in r.getMessage() for r in caplog.records)
    with pytest.raises(OutputError, match=r"scene: another in-memory scene"):
        cluster.run_to_file(b, case["model"], out, tile=TILE, resume=True)
    rep = cluster.run_to_file(opened.isel(y=slice(0, 48), x=slice(0, 48)), case["model"], out, tile=TILE,
                              resume=True)
    assert rep.computed == 9 - 3
    np.testing.assert_array_equal(F.read_classes(out), _classify(a, case["model"]))


def test_an_in_memory_scene_on_a_local_cluster_is_identified_by_its_values(case, tmp_path):
    """A numpy scene scattered to workers=2 gives the in-process map; the same array again finds it done (before
    the cluster starts), another array is refused."""
    pytest.importorskip("distributed")
    a = F.dataarray(case["cube"])
    out = tmp_path / "map.zarr"
    rep = cluster.run_to_file(a, case["model"], out, tile=TILE, workers=2, resume=True, progress=False)
    assert rep.computed == case["tiles"] and rep.workers == 2
    np.testing.assert_array_equal(F.read_classes(out), _classify(a, case["model"]))
    assert "device" not in recorded_fingerprint(out)  # float32: exact on any device, recorded as before
    assert cluster.run_to_file(a, case["model"], out, tile=TILE, workers=2, resume=True).computed == 0
    other = F.dataarray(np.ascontiguousarray(case["cube"][:, ::-1]))
    with pytest.raises(OutputError, match=r"scene: another in-memory scene"):
        cluster.run_to_file(other, case["model"], out, tile=TILE, workers=2, resume=True)


def test_a_bfloat16_run_records_whether_onednn_computed_it(case, tmp_path, monkeypatch):
    """A bfloat16 run stopped on a CPU whose oneDNN has no bfloat16 (AVX2 only: the plain path, two roundings of a
    residual sum) was continued on one that fuses it (one rounding): a map of both, matching neither (7 px apart)."""
    import kernels.spectral

    out = tmp_path / "map.tif"
    monkeypatch.setattr(kernels.spectral, "_onednn_bf16", lambda: False)
    _interrupted(monkeypatch, case["scene"], case["model"], out, precision="bfloat16")  # (undoes the patch too)
    assert recorded_fingerprint(partial_path(out))["device"] in ("cpu", "cpu+amx_bf16")
    monkeypatch.setattr(kernels.spectral, "_onednn_bf16", lambda: True)
    if cluster._device_record("cpu", "bfloat16", this_host=True) == "cpu+onednn_bf16":  # (not on an AMX host)
        with pytest.raises(OutputError, match=r"device: partial has 'cpu', this run 'cpu\+onednn_bf16' \(partial was "
                                              r"made on a CPU without oneDNN's bfloat16, or on this kind of CPU by "
                                              r"hsi-engine 0.2.0.* \(--overwrite\) without resume"):
            cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, precision="bfloat16")


def test_a_bfloat16_run_records_what_auto_resolved_to(case, tmp_path, monkeypatch):
    """spatial_precision='auto' was recorded as asked: a bfloat16 run interrupted where auto meant a bfloat16
    spatial stage (an AMX-BF16 CPU, simulated) was continued where it means float32, one map of two kinds of
    tiles. The fingerprint and tags now hold the resolved precision and the device kind."""
    from hsi_engine import fused

    out = tmp_path / "map.tif"
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: True)
    _interrupted(monkeypatch, case["scene"], case["model"], out, precision="bfloat16")  # (undoes the patch too)
    found = recorded_fingerprint(partial_path(out))
    assert (found["spatial_precision"], found["device"]) == ("bfloat16", "cpu+amx_bf16")
    with pytest.raises(OutputError, match=r"device: partial has 'cpu\+amx_bf16', this run 'cpu(\+onednn_bf16)?' "
                                          r"\(a bfloat16 map "
                                          r"depends on the device .*\); spatial_precision: partial has 'bfloat16', "
                                          r"this run 'float32'\)") as err:
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, precision="bfloat16")
    assert str(err.value).count("depends on the device") == 1  # the explanation once, not after each difference
    monkeypatch.setattr(fused, "_cpu_has_amx_bf16", lambda: True)
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, precision="bfloat16")
    assert rep.computed == case["tiles"] - 3
    import rasterio

    with rasterio.open(out) as f:
        tags = f.tags()
    assert (tags["precision"], tags["spatial_precision"]) == ("bfloat16", "bfloat16")
    assert json.loads(tags["hsi_engine_resume"])["device"] == "cpu+amx_bf16"


def test_classify_s_map_carries_the_provenance_of_the_file_outputs(case, tmp_path):
    """classify() returned a map without provenance, so labels.rio.to_raster() / to_netcdf() lost what made it;
    every output also records the map version."""
    import rasterio
    import xarray as xr
    import zarr

    labels = hsi_engine.classify(hsi_engine.open_scene(case["scene"]), case["model"], tile=TILE, progress=False)
    tif = tmp_path / "plain.tif"
    hsi_engine.classify_to_file(case["scene"], case["model"], tif, tile=TILE, progress=False)
    with rasterio.open(tif) as f:
        file_tags = {k: f.tags()[k] for k in PROVENANCE}
    assert file_tags["map_version"] == str(MAP_VERSION) and file_tags["spatial_precision"] == "float32"
    assert {k: labels.attrs[k] for k in PROVENANCE} == file_tags

    labels.rio.to_raster(tmp_path / "labels.tif")
    with rasterio.open(tmp_path / "labels.tif") as f:
        assert {k: f.tags()[k] for k in PROVENANCE} == file_tags
    labels.to_netcdf(tmp_path / "labels.nc")
    with xr.open_dataset(tmp_path / "labels.nc") as ds:
        assert {k: ds["class"].attrs[k] for k in PROVENANCE} == file_tags

    ds = hsi_engine.classify(hsi_engine.open_scene(case["scene"]), case["model"], tile=TILE, progress=False,
                             probabilities=True)
    ds.to_netcdf(tmp_path / "probabilities.nc")
    with xr.open_dataset(tmp_path / "probabilities.nc") as back:
        for attrs in (back.attrs, *(back[v].attrs for v in ("labels", "probabilities", "confidence"))):
            assert {k: attrs[k] for k in PROVENANCE} == file_tags
    store = tmp_path / "map.zarr"
    hsi_engine.classify_to_file(case["scene"], case["model"], store, tile=TILE, progress=False)
    root = dict(zarr.open_group(str(store), mode="r").attrs)
    assert {k: root[k] for k in PROVENANCE} == file_tags


def test_a_geotiff_with_an_internal_mask_opened_whole_is_its_file(case, tmp_path):
    """A masked GeoTIFF's array is rebuilt after the reader finishes it (its mask read as NaN): the name of the
    file's array is recorded once open_scene is done, so such a scene is still its file (no digest, no extra
    read)."""
    import rasterio

    src = hsi_engine.open_scene(case["scene"])
    path = tmp_path / "masked.tif"
    data = np.asarray(src.values)
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
               "dtype": str(data.dtype), "crs": "EPSG:32633", "transform": rasterio.Affine(30, 0, 0, 0, -30, 0)}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        mask = np.full(data.shape[1:], 255, np.uint8)
        mask[:3, :3] = 0
        dst.write_mask(mask)
    opened = hsi_engine.open_scene(path)
    assert "gdal_mask" in opened.attrs and src.sizes == opened.sizes
    assert hsi_engine.io.file_of(opened) == str(path)
    ident = scene_identity.scene_identity(None, opened, None, None, None)
    assert ident["source"] == str(path.resolve()) and "digest" not in ident


def test_a_scene_s_aux_xml_and_msk_are_part_of_its_identity(case, tmp_path):
    """A corrected per-band nodata value in the scene's .aux.xml (PAM) left a --resume finished on the stale map:
    the identity held the file and its .msk only (an ENVI scene's .msk neither)."""
    import shutil

    scene = tmp_path / "scene.tif"
    hsi_engine.open_scene(case["scene"]).rio.write_crs("EPSG:32633").rio.to_raster(scene)
    before = scene_identity._files_stat(scene)
    (tmp_path / "scene.tif.aux.xml").write_text("<PAMDataset></PAMDataset>\n")
    after = scene_identity._files_stat(scene)
    assert after[0] == before[0] + 1 and after != before
    shutil.copy(scene, tmp_path / "scene.bsq")  # (any bytes: the stat only)
    (tmp_path / "scene.hdr").write_text("ENVI\n")
    envi = scene_identity._files_stat(tmp_path / "scene.hdr")
    (tmp_path / "scene.bsq.msk").write_bytes(b"mask")
    assert scene_identity._files_stat(tmp_path / "scene.hdr")[0] == envi[0] + 1


def test_a_read_that_fails_while_digesting_is_the_error_a_tile_s_read_gives(case, tmp_path):
    """An OSError in the caller's dask graph over a file: a plain .tif run named the file and the window (a
    SceneError), while .zarr, resume=True and workers= runs, which read the scene first for its digest, raised the
    bare OSError."""
    import dask.array as dsa

    def failing(block):
        raise OSError(5, "Input/output error")

    base = hsi_engine.open_scene(case["scene"]).load()
    scene = base.copy(data=dsa.from_array(base.values, chunks=(base.shape[0], 16, 16)).map_blocks(
        failing, dtype=base.dtype))
    for out, kw in ((tmp_path / "plain.tif", {}), (tmp_path / "resumable.tif", {"resume": True}),
                    (tmp_path / "m.zarr", {})):
        with pytest.raises(hsi_engine.SceneError, match=r"reading rows .* of a scene computed from .* failed "
                                                        r"\(OSError: \[Errno 5\] Input/output error\)"):
            hsi_engine.classify_to_file(scene, case["model"], out, tile=TILE, **kw)


def test_a_low_precision_partial_of_the_previous_engine_says_to_start_over(case, tmp_path, monkeypatch):
    """The previous hsi-engine recorded no device and spatial_precision as asked ('auto'): such a partial was refused
    with "device: partial has None, this run 'cpu' (... continue it on the kind of device that started it)" and the
    same parenthetical again after spatial_precision, advice no one can follow. It says what made the partial, once,
    and the way on."""
    import zarr

    out = tmp_path / "map.tif"
    _interrupted(monkeypatch, case["scene"], case["model"], out, precision="bfloat16")
    group = zarr.open_group(str(partial_path(out)), mode="r+")
    old = json.loads(group.attrs[FINGERPRINT_ATTR])
    del old["device"]  # as the hsi-engine before the device was recorded wrote it
    old["spatial_precision"] = "auto"
    group.attrs[FINGERPRINT_ATTR] = json.dumps(old, sort_keys=True)
    with pytest.raises(OutputError, match=r"\(partial was made by an earlier hsi-engine, which did not record the "
                                          r"kind of device its low-precision tiles ran on \(nor what "
                                          r"spatial_precision 'auto' resolved to\), so it cannot be continued "
                                          r"safely: pass overwrite=True \(--overwrite\) to start over\)") as err:
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, precision="bfloat16")
    assert "has None" not in str(err.value) and "kind of device that started it" not in str(err.value)
    assert int((read_record(partial_path(out)) > 0).sum()) == 3  # refusing keeps the tiles
    rep = cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, precision="bfloat16", overwrite=True)
    assert rep.computed == case["tiles"] and not partial_path(out).exists()


def _counting_lazy_scene(cube: np.ndarray):
    """A band-last ``(y, x, band)`` DataArray on a lazy backend array, as xr.open_dataset gives one without chunks,
    counting the reads of its data."""
    import xarray as xr
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class Counting(BackendArray):
        def __init__(self, a: np.ndarray) -> None:
            self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, 0

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

        def _read(self, key):
            self.reads += 1
            return self.a[key]

    backend = Counting(np.ascontiguousarray(np.moveaxis(cube, 0, -1)))
    var = xr.Variable(("y", "x", "band"), indexing.LazilyIndexedArray(backend))
    return xr.DataArray(var, name="r"), backend


def test_the_digest_reads_rows_of_all_bands_and_depends_on_the_values_only(case, tmp_path, monkeypatch, caplog):
    """A lazily opened file (xr.open_dataset without chunks) was hashed a band at a time: a band-last store read
    whole once per band (31-40 s against 0.3 s for one read of a 300 x 300 x 120 NetCDF), with no word in the log.
    The digest reads strips of whole rows of all bands (rows from the shape and dtype only), says so, and numpy,
    lazy and dask data of the same values (chunked any way) give one digest."""
    import dask.array as dsa
    import xarray as xr

    cube = case["cube"]  # (24, 64, 64) uint16: 3,072 bytes a row of all bands
    monkeypatch.setattr(scene_identity, "_DIGEST_STRIP_BYTES", 16 * 3072)  # 16 rows a strip: 4 strips
    assert scene_identity._digest_rows(cube.shape, cube.dtype) == 16
    expected = scene_identity.content_digest(cube)
    lazy, backend = _counting_lazy_scene(cube)
    with caplog.at_level(logging.INFO, logger="hsi_engine"):
        assert scene_identity.content_digest(hsi_engine.as_scene(lazy)) == expected
    assert backend.reads == 4  # a strip a read (was 24: a band a read)
    assert any("read lazily" in r.getMessage() and "reading it once more, 16 rows of all bands" in r.getMessage()
               for r in caplog.records)

    nc = tmp_path / "band_last.nc"
    xr.DataArray(np.moveaxis(cube, 0, -1), dims=("y", "x", "band"), name="r").to_netcdf(nc)
    with xr.open_dataset(nc) as ds:
        assert scene_identity.content_digest(hsi_engine.as_scene(ds["r"])) == expected
        window = hsi_engine.as_scene(ds["r"][5:50, 3:60, 2:20])  # a lazy window, then transposed
        assert scene_identity.content_digest(window) == scene_identity.content_digest(np.asarray(window.values))
    for chunks in ((24, 16, 16), (5, 7, 64), (24, 64, 64)):  # (was: another digest for each chunking)
        assert scene_identity.content_digest(xr.DataArray(dsa.from_array(cube, chunks=chunks),
                                                    dims=("band", "y", "x"))) == expected
    assert scene_identity.content_digest(np.asfortranarray(cube)) == expected
    assert scene_identity.content_digest(cube.astype(">u2")) == expected
    assert scene_identity.content_digest(cube.astype(np.int32)) != expected  # the dtype counts


def test_a_dask_scene_s_digest_reads_each_block_once(case, monkeypatch):
    """Strips that cut across the scene's chunks still read each block once (one dask graph)."""
    import threading

    import dask.array as dsa
    import xarray as xr

    cube, reads, lock = case["cube"], {"n": 0}, threading.Lock()

    def count(block):
        with lock:
            reads["n"] += 1
        return block

    lazy = dsa.from_array(cube, chunks=(24, 16, 16)).map_blocks(count, dtype=cube.dtype)
    monkeypatch.setattr(scene_identity, "_DIGEST_STRIP_BYTES", 10 * 3072)  # 10-row strips across 16-row chunks
    reads["n"] = 0  # (map_blocks calls it once on an empty block to learn its output)
    assert (scene_identity.content_digest(xr.DataArray(lazy, dims=("band", "y", "x")))
            == scene_identity.content_digest(cube))
    assert reads["n"] == lazy.npartitions


def test_the_digest_is_the_same_in_every_process(case, tmp_path):
    """A resumed run is another process: its digest of the same values (numpy or dask) must be the recorded one.
    One child process (its own hash seed) against this one."""
    import dask.array as dsa
    import xarray as xr

    np.save(tmp_path / "cube.npy", case["cube"])
    code = ("import sys, numpy as np, dask.array as dsa, xarray as xr\n"
            "from hsi_engine import scene_identity\n"
            "c = np.load(sys.argv[1])\n"
            "print(scene_identity.content_digest(c), scene_identity.content_digest(xr.DataArray(dsa.from_array("
            "c, chunks=(8, 16, 16)), dims=('band', 'y', 'x'))))\n")
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cube.npy")], capture_output=True, text=True,
                           check=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "random"}).stdout.split()
    here = scene_identity.content_digest(case["cube"])
    lazy = xr.DataArray(dsa.from_array(case["cube"], chunks=(8, 16, 16)), dims=("band", "y", "x"))
    assert child == [here, scene_identity.content_digest(lazy)] == [here] * 2


@pytest.mark.parametrize("name", ["map.zarr", "map.tif"])
def test_an_output_in_the_way_is_refused_before_the_scene_is_read_for_its_digest(case, tmp_path, monkeypatch, name):
    """An existing output without overwrite read the whole (dask) scene for its digest before "already exists"
    (10 block reads where 1 did before): the refusals that need no fingerprint come first, in the same words."""
    import shutil

    scene = F.dataarray(case["cube"]).chunk({"y": 16, "x": 16})  # dask, not a file: identified by a digest
    out = tmp_path / name
    F.crash_writes_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()

    def no_digest(da):
        raise AssertionError("the scene was read for its digest before the refusal")

    monkeypatch.setattr(scene_identity, "content_digest", no_digest)
    with pytest.raises(OutputError, match=r"an interrupted run left .*\.partial; pass resume=True"):
        hsi_engine.classify_to_file(scene, case["model"], out, tile=TILE, progress=False)
    monkeypatch.undo()
    cluster.run_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True, probabilities=True)
    monkeypatch.setattr(scene_identity, "content_digest", no_digest)
    with pytest.raises(OutputError, match=r"output .*map\.(zarr|tif) already exists; pass overwrite=True"):
        cluster.run_to_file(scene, case["model"], out, tile=TILE)
    if name == "map.tif":  # a side file left beside no map
        out.unlink()
        with pytest.raises(OutputError, match=r"output .*map_probabilities\.tif already exists"):
            cluster.run_to_file(scene, case["model"], out, tile=TILE, probabilities=True)
    else:  # overwrite: only a store hsi-engine wrote is replaced
        shutil.rmtree(out)
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        with pytest.raises(OutputError, match=r"refusing to replace .*map\.zarr: expected a zarr store"):
            cluster.run_to_file(scene, case["model"], out, tile=TILE, overwrite=True)
        assert (out / "notes.txt").read_text() == "mine"


def test_an_envi_scene_named_by_its_header_or_its_data_file_is_one_scene(tmp_path):
    """The scene path 's.hdr' and open_scene('s.hdr') (whose source is the data file 's.bsq') had two identities,
    so --resume across the two forms was refused."""
    import rasterio

    cube = np.arange(3 * 5 * 4, dtype=np.int16).reshape(3, 5, 4)
    with rasterio.open(tmp_path / "s.bsq", "w", driver="ENVI", count=3, height=5, width=4, dtype="int16") as dst:
        dst.write(cube)
    idents = [scene_identity.scene_identity(p, None, None, None, None)
              for p in (tmp_path / "s.hdr", tmp_path / "s.bsq")]
    idents += [scene_identity.scene_identity(None, hsi_engine.open_scene(tmp_path / "s.hdr"), None, None, None)]
    assert idents[0] == idents[1] == idents[2] and idents[0]["source"] == str((tmp_path / "s.bsq").resolve())
