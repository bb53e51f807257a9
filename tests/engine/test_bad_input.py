"""Bad input: a clear error naming the problem and the fix, and no output (nor temp leftovers) under the
requested name; through the API, the resumable path and the command line (exit code 2, message on stderr)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
from hsi_engine import cluster
from hsi_engine.cli import main
from hsi_engine.errors import (BandMismatchError, CheckpointError, CorruptChunkError, NonFiniteInputError,
                               OutputError, SceneError, SceneTooSmallError)

TILE = 16


@pytest.fixture(scope="module")
def crop():
    return F.ip_crop(40, 40)


@pytest.fixture(scope="module")
def model_dir(crop, tmp_path_factory):
    return F.save_tiny_model(tmp_path_factory.mktemp("model") / "model", crop)


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def assert_nothing_written(outdir):
    left = sorted(p.name for p in outdir.iterdir())
    assert left == [], f"output or temp leftovers: {left}"


def classify_everywhere(scene, model, outdir, exc, match, *, cli_scene=None, **kw):
    """The error through classify_to_file (.tif and .zarr), the resumable path and the CLI; nothing written."""
    for name in ("map.tif", "map.zarr"):
        with pytest.raises(exc, match=match):
            hsi_engine.classify_to_file(scene, model, outdir / name, tile=TILE, **kw)
        assert_nothing_written(outdir)
    with pytest.raises(exc, match=match):
        cluster.run_to_file(scene, model, outdir / "map.zarr", tile=TILE, resume=True, **kw)
    assert_nothing_written(outdir)
    if cli_scene is not None:
        return run_cli(cli_scene, model, outdir, **kw)
    return None


def run_cli(scene, model, outdir, *extra, **kw):
    import contextlib
    import io

    args = ["classify", str(scene), "--model", str(model), "--out", str(outdir / "cli.tif"), "--tile", str(TILE),
            *extra]
    if kw.get("nodata") is not None:
        args += ["--nodata", str(kw["nodata"])]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    assert rc == 2
    assert_nothing_written(outdir)
    return err.getvalue()


# ----------------------------------------------------------------------------------------------
# scene shape


def test_band_count_differs_from_the_model(crop, model_dir, outdir, tmp_path):
    scene = F.write_zarr(tmp_path / "b20.zarr", crop[:20])
    msg = classify_everywhere(scene, model_dir, outdir, BandMismatchError, r"20 bands, model expects 24",
                              cli_scene=scene)
    assert "20 bands" in msg and "model expects 24" in msg and "error" in msg


def test_scene_without_pixels(crop, model_dir, outdir, tmp_path):
    scene = hsi_engine.as_scene(np.ascontiguousarray(crop[:, :0, :30]))
    classify_everywhere(scene, model_dir, outdir, SceneTooSmallError, r"0 x 30 pixels: nothing to classify")



def test_a_complex_scene_is_refused_naming_what_to_pass(crop, model_dir, outdir):
    scene = hsi_engine.as_scene(crop[:, :8, :8].astype(np.complex64))
    classify_everywhere(scene, model_dir, outdir, SceneError, r"dtype complex64 \(complex values: .*CInt16.*\); "
                        r"expected integer or floating point values \(.*np.abs\(scene\)")

@pytest.mark.parametrize("shape", [(5, 30), (1, 20), (1, 1)])
def test_scene_smaller_than_a_patch_is_padded_like_patch_mode(crop, model_dir, tmp_path, shape):
    """Scenes (strips, single pixels) smaller than one patch: every output equals patch mode on the zero-padded
    scene, as the border pixels of any scene do; through the API, a .tif and a .zarr."""
    import torch

    from hsi_engine.fused import patch_forward

    h, w = shape
    cube = np.ascontiguousarray(crop[:, :h, :w])
    model = hsi_engine.load_model(model_dir)
    mean = np.asarray(model.meta["mean"])[:, None, None]
    std = np.asarray(model.meta["std"])[:, None, None]
    x = torch.from_numpy(((cube - mean) / std).astype(np.float32))
    ref = patch_forward(model, x).argmax(1).reshape(h, w).numpy() + 1
    np.testing.assert_array_equal(hsi_engine.classify(cube, model, tile=TILE, progress=False).values, ref)
    scene = F.write_zarr(tmp_path / "small.zarr", cube)
    for name in ("map.tif", "map.zarr"):
        out = hsi_engine.classify_to_file(scene, model_dir, tmp_path / name, tile=TILE)
        np.testing.assert_array_equal(F.read_classes(out), ref)


# ----------------------------------------------------------------------------------------------
# non-finite values and nodata


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_without_nodata_policy(crop, model_dir, outdir, tmp_path, bad):
    cube = crop.astype(np.float32)
    cube[5, 21, 30] = bad  # tile (1, 1): found mid-run, after other tiles were written
    da = F.dataarray(cube)
    npy = tmp_path / "nan.npy"
    np.save(npy, np.moveaxis(cube, 0, -1))  # .npy: band-last, no declared nodata
    msg = classify_everywhere(da, model_dir, outdir, NonFiniteInputError,
                              r"band 6 \(index 5\), pixel \(y=21, x=30\).*no nodata policy", cli_scene=npy)
    assert "nodata" in msg


def test_finite_values_too_large_for_float32_are_named_not_classified(crop, model_dir, outdir, tmp_path):
    """A finite value beyond what the network's float32 holds (a float64 1e300: inf once cast) made
    its logits NaN: argmax gave class 1 on the 7 x 7 block around it, silently. It is named, nodata policy or
    not (it is not the nodata value), and nothing is written."""
    cube = crop.astype(np.float64)
    cube[7, 21, 30] = 1e300
    da = F.dataarray(cube)
    npy = tmp_path / "big.npy"
    np.save(npy, np.moveaxis(cube, 0, -1))
    match = r"not finite or beyond 1e\+06 .*band 8 \(index 7\) at \(y=21, x=30\) holds"
    msg = classify_everywhere(da, model_dir, outdir, NonFiniteInputError, match, cli_scene=npy)
    assert "band 8 (index 7) at (y=21, x=30)" in msg
    with pytest.raises(NonFiniteInputError, match=match):
        hsi_engine.classify(da, model_dir, tile=TILE, nodata=-9999.0, progress=False)
    from hsi_engine.runner import run_plan  # the device-normalising path, on the CPU
    from hsi_engine.tiles import plan_tiles

    model = hsi_engine.load_model(model_dir)
    engine = hsi_engine.FusedSSRN(model, backend="eager")
    with pytest.raises(NonFiniteInputError, match=match):
        run_plan(da, plan_tiles(40, 40, TILE, engine.halo), engine, _NullSink(), mean=np.asarray(model.meta["mean"]),
                 std=np.asarray(model.meta["std"]), normalise_on="device", progress=False)
    masked = cube.copy()
    masked[:, 21, 30] = -9999.0  # the same pixel declared nodata: classified, its neighbours as patch mode does
    out = hsi_engine.classify(F.dataarray(masked), model_dir, tile=TILE, nodata=-9999.0, progress=False).values
    assert out[21, 30] == 0 and (out > 0).sum() == 40 * 40 - 1
    cube[7, 21, 30] = -1e45  # beyond float32 on the cast alone
    with pytest.raises(NonFiniteInputError, match=r"holds -1e\+45"):
        hsi_engine.classify(F.dataarray(cube), model_dir, tile=TILE, progress=False)


@pytest.mark.parametrize("value", [1e30, -3e38, 1e12])
def test_finite_float32_values_far_outside_the_data_are_named_not_classified(crop, model_dir, outdir, value):
    """A float32 1e30 (a corrupted value) kept the logits finite: a 7 x 7 block of one class at confidence 1,
    silently, though README says such a value stops the run."""
    cube = crop.astype(np.float32)
    cube[7, 21, 30] = value
    match = r"beyond 1e\+06 .*far outside the model's data \(band 8 \(index 7\) at \(y=21, x=30\) holds"
    classify_everywhere(F.dataarray(cube), model_dir, outdir, NonFiniteInputError, match)
    with pytest.raises(NonFiniteInputError, match=match + r".*pass it \(scene.where"):
        hsi_engine.classify(F.dataarray(cube), model_dir, tile=TILE, progress=False)


def test_a_band_without_data_is_named_as_a_band_not_as_one_pixel(crop, model_dir):
    """A band NaN in every pixel was named by one pixel with the advice --nodata nan, which then made every pixel
    class 0 (exit 0, one log line). The error names the band and the fixes that keep the map: bbl, or drop it."""
    cube = crop.astype(np.float32)
    cube[17] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"scene band 18 \(index 17\) is nan in every pixel of tile .*"
                                                  r"flag it bad with a 'bbl' band coordinate"):
        hsi_engine.classify(F.dataarray(cube), model_dir, tile=TILE, progress=False)
    flagged = F.dataarray(cube).assign_coords(bbl=("band", (np.arange(cube.shape[0]) != 17).astype(int)))
    labels = hsi_engine.classify(flagged, model_dir, tile=TILE, nodata=float("nan"), progress=False).values
    assert (labels > 0).all()


class _NullSink:
    def write(self, *a, **k):
        pass


def test_non_finite_on_a_cluster_leaves_nothing(crop, model_dir, outdir):
    """Named from the worker's task (a real in-process LocalCluster: the same tasks as a process one's, without
    two worker processes' start-up), and nothing is left of the output."""
    from distributed import Client, LocalCluster

    cube = crop.astype(np.float32)
    cube[0, 39, 39] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with lc, Client(lc) as client:
        with pytest.raises(NonFiniteInputError, match="no nodata policy"):
            cluster.run_to_file(F.dataarray(cube), model_dir, outdir / "map.zarr", tile=TILE, scheduler=client)
        assert_nothing_written(outdir)
        cube = cube.astype(np.float64)
        cube[0, 39, 39] = 1e300  # finite, but beyond the network's float32: named on the worker too
        with pytest.raises(NonFiniteInputError, match=r"band 1 \(index 0\) at \(y=39, x=39\) holds 1e\+300"):
            cluster.run_to_file(F.dataarray(cube), model_dir, outdir / "map.zarr", tile=TILE, scheduler=client)
        assert_nothing_written(outdir)


def test_a_whole_scene_on_another_scale_is_named_as_one_not_as_corrupted_values(crop, model_dir):
    """The logit limit stops a whole scene far off the training scale too: its error told the user to mask the
    'corrupted' values, which would have masked every pixel; it names the scale."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hsi_engine.UnnormalisedInputWarning)
        with pytest.raises(NonFiniteInputError, match=r"standard deviations from the model's mean in the median "
                                                      r"band .* another scale than the model's training scene"):
            hsi_engine.classify(F.dataarray(crop.astype(np.float32) * 1e7), model_dir, tile=TILE, progress=False)


def test_nodata_nan_on_an_integer_scene_is_named(crop, model_dir):
    """nodata=nan on an integer scene can only do harm: it masks nothing and replaced the declared fill value,
    whose pixels were classified, without a word."""
    cube = crop.astype(np.int16)
    cube[:, :, :4] = -32768
    da = F.dataarray(cube)
    da.attrs["_FillValue"] = -32768
    with pytest.warns(UserWarning, match=r"nodata=nan \(--nodata nan\) masks nothing in this int16 scene .* "
                                         r"replaces its declared "
                                         r"nodata value -32768: leave nodata unset \(no --nodata\)"):
        out = hsi_engine.classify(da, model_dir, tile=TILE, nodata=float("nan"), progress=False).values
    assert (out[:, :4] > 0).all()  # as asked: the fill is classified (and the warning said so)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert (hsi_engine.classify(da, model_dir, tile=TILE, progress=False).values[:, :4] == 0).all()


def test_nodata_nan_on_a_float_scene_with_a_declared_value_is_named(crop, model_dir):
    """On a float scene NaN is masked with the declared value anyway; nodata=nan only unmasked the declared
    value's pixels, which were classified without a word (integer scenes had the warning)."""
    cube = crop.astype(np.float32)
    cube[:, :, :4] = -32768
    da = F.dataarray(cube)
    da.attrs["_FillValue"] = -32768.0
    with pytest.warns(UserWarning, match=r"nodata=nan \(--nodata nan\) replaces this scene's declared nodata value "
                                         r"-32768, so pixels "
                                         r"holding -32768 are classified.* pass nodata=None"):
        out = hsi_engine.classify(da, model_dir, tile=TILE, nodata=float("nan"), progress=False).values
    assert (out[:, :4] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert (hsi_engine.classify(da, model_dir, tile=TILE, progress=False).values[:, :4] == 0).all()
    da.attrs["_FillValue"] = np.nan  # nodata=nan where NaN is declared: nothing to say of it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hsi_engine.classify(da, model_dir, tile=TILE, nodata=float("nan"), progress=False)
    assert not any("replaces" in str(w.message) for w in seen)


def _masked_geotiff(path, cube, holes, *, sidecar: bool, nodata=None):
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=not sidecar), \
            rasterio.open(path, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                          dtype=cube.dtype, crs=F.CRS, transform=from_origin(500000, 4500000, 20, 20),
                          nodata=nodata, tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(cube)
        dst.write_mask(np.where(holes, 0, 255).astype(np.uint8))
    assert path.with_name(path.name + ".msk").exists() == sidecar
    return path


@pytest.mark.parametrize("sidecar", [False, True], ids=["internal-mask", "msk-file"])
def test_a_gdal_mask_band_makes_the_pixels_it_masks_nodata(crop, model_dir, tmp_path, sidecar):
    """A GeoTIFF's per-dataset mask (internal, or a .msk file) is how GDAL, QGIS and rasterio mark nodata pixels;
    it was ignored without a word and the masked pixels (holding anything) were classified. They read as NaN and
    are class 0: the map equals that of the same scene with the pixels declared nodata by value."""
    holes = np.zeros(crop.shape[1:], bool)
    holes[10:14, 10:14] = holes[0, 39] = holes[25, 17] = True
    cube = crop.copy()  # the masked pixels hold ordinary spectra: only the mask says they are nodata
    scene = hsi_engine.open_scene(_masked_geotiff(tmp_path / "m.tif", cube, holes, sidecar=sidecar))
    assert scene.dtype == np.float32 and np.isnan(scene.rio.nodata)  # uint16 is exact in float32
    values = scene.values
    assert np.isnan(values[:, holes]).all() and not np.isnan(values[:, ~holes]).any()
    np.testing.assert_array_equal(values[:, ~holes], cube[:, ~holes])
    out = hsi_engine.classify(scene, model_dir, tile=TILE, progress=False).values
    zeroed = cube.copy()
    zeroed[:, holes] = 0
    ref = F.dataarray(zeroed)
    ref.attrs["_FillValue"] = 0
    expected = hsi_engine.classify(ref, model_dir, tile=TILE, progress=False).values
    assert (out == 0).sum() == holes.sum() and (out[holes] == 0).all()
    np.testing.assert_array_equal(out, expected)
    from hsi_engine.io import scene_info

    assert "mask       per-dataset mask: invalid pixels read as NaN" in scene_info(scene.encoding["source"])


def test_a_gdal_mask_with_a_declared_nodata_value_masks_both(crop, model_dir, tmp_path):
    holes = np.zeros(crop.shape[1:], bool)
    holes[5, 5] = True
    cube = crop.copy()
    cube[:, 30, 30] = 7
    scene = hsi_engine.open_scene(_masked_geotiff(tmp_path / "m.tif", cube, holes, sidecar=False, nodata=7))
    assert scene.rio.nodata == 7
    out = hsi_engine.classify(scene, model_dir, tile=TILE, progress=False).values
    assert out[5, 5] == 0 and out[30, 30] == 0 and (out == 0).sum() == 2


@pytest.mark.parametrize("fmt, value", [("envi", -9999.0), ("envi", 0.5), ("geotiff", 0.5)])
def test_a_declared_nodata_value_the_dtype_cannot_hold_masks_nothing(crop, model_dir, tmp_path, fmt, value):
    """A uint16 file declaring nodata -9999 or 0.5 (no pixel can hold it) raised rioxarray's OverflowError, a
    traceback (exit 1) from open_scene, info and classify, even with --nodata given. It masks nothing."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / ("s.bsq" if fmt == "envi" else "s.tif")
    with rasterio.open(path, "w", driver="ENVI" if fmt == "envi" else "GTiff", height=crop.shape[1],
                       width=crop.shape[2], count=crop.shape[0], dtype=crop.dtype, crs=F.CRS,
                       transform=from_origin(500000, 4500000, 20, 20)) as dst:
        dst.write(crop)
    if fmt == "envi":
        hdr = path.with_suffix(".hdr")
        hdr.write_text(hdr.read_text() + f"data ignore value = {value:g}\n")
    else:
        with rasterio.open(path, "r+") as dst:
            dst.nodata = value
    scene = hsi_engine.open_scene(path)
    assert scene.dtype == np.uint16 and scene.rio.nodata is None
    out = hsi_engine.classify(scene, model_dir, tile=TILE, progress=False).values
    np.testing.assert_array_equal(out, hsi_engine.classify(F.dataarray(crop), model_dir, tile=TILE,
                                                           progress=False).values)
    assert main(["info", str(path)]) == 0


@pytest.mark.parametrize("nodata, value", [(float("nan"), np.nan), (float("nan"), np.inf), (-9999.0, -9999.0)])
def test_nodata_pixels_are_class_0_and_do_not_reach_beyond_the_patch(crop, model_dir, nodata, value):
    model = hsi_engine.load_model(model_dir)
    halo = model.config.halo
    clean = crop.astype(np.float32)
    cube = clean.copy()
    y, x = 17, 22  # interior of a tile, and a tile border within the halo
    cube[3, y, x] = value
    ref = hsi_engine.classify(F.dataarray(clean), model, tile=TILE, probabilities=True, progress=False)
    got = hsi_engine.classify(F.dataarray(cube), model, tile=TILE, probabilities=True, progress=False,
                              nodata=nodata)
    lab, ref_lab = got["labels"].values, ref["labels"].values
    assert lab[y, x] == 0 and np.isnan(got["probabilities"].values[:, y, x]).all()
    assert np.isnan(got["confidence"].values[y, x]) and np.isnan(got["probabilities"].values).sum() == \
        got["probabilities"].shape[0]  # only the nodata pixel has none
    yy, xx = np.mgrid[:clean.shape[1], :clean.shape[2]]
    far = np.maximum(abs(yy - y), abs(xx - x)) > halo  # the pixel is outside these pixels' patches
    np.testing.assert_array_equal(lab[far], ref_lab[far])
    np.testing.assert_array_equal(got["probabilities"].values[:, far], ref["probabilities"].values[:, far])
    assert (lab[~far] > 0).sum() == (~far).sum() - 1  # neighbours are still classified


def test_cli_nodata_masks_nan_to_class_0(crop, model_dir, tmp_path):
    cube = crop.astype(np.float32)
    cube[:, 10, 12] = np.nan
    npy = tmp_path / "nan.npy"
    np.save(npy, np.moveaxis(cube, 0, -1))
    out = tmp_path / "m.zarr"
    assert main(["classify", str(npy), "--model", str(model_dir), "--out", str(out), "--nodata", "nan"]) == 0
    lab = F.read_classes(out)
    assert lab[10, 12] == 0 and (lab > 0).sum() == lab.size - 1


@pytest.mark.parametrize("name", ["m.tif", "m.zarr"])
def test_probabilities_at_nodata_pixels_are_nan_and_declared(crop, model_dir, tmp_path, name):
    """A nodata pixel has no probabilities: NaN, declared as the sidecars' nodata, so a GIS's statistics and
    overviews leave it out (they were 0.0, undeclared)."""
    import rasterio
    import xarray as xr

    cube = crop.astype(np.float32)
    cube[:, 10, 12] = np.nan
    npy = tmp_path / "nan.npy"
    np.save(npy, np.moveaxis(cube, 0, -1))
    out = tmp_path / name
    how = ["--probabilities"] if name.endswith(".tif") else ["--probabilities-dtype", "float32"]  # (implied)
    assert main(["classify", str(npy), "--model", str(model_dir), "--out", str(out), "--nodata", "nan", *how]) == 0
    if name.endswith(".tif"):
        for side in ("m_probabilities.tif", "m_confidence.tif"):
            with rasterio.open(tmp_path / side) as f:
                data = f.read()
                assert np.isnan(f.nodata) and all(np.isnan(v) for v in f.nodatavals)
                assert side == "m_confidence.tif" or f.tags()["storage_dtype"] == "float16"
            assert np.isnan(data[:, 10, 12]).all() and np.isnan(data).sum() == data.shape[0]
    else:
        ds = xr.open_zarr(out, consolidated=False)
        assert ds["probabilities"].dtype == np.float32
        for var in ("probabilities", "confidence"):
            data = ds[var].values
            assert np.isnan(data[..., 10, 12]).all() and np.isnan(data).sum() == data[..., 10, 12].size


# ----------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("kind", ["uint16-high", "int16-negative"])
def test_integer_dtypes_match_float_input_of_the_same_values(crop, kind, tmp_path):
    if kind == "uint16-high":
        values = crop.astype(np.int64) + 30000  # up to ~39600 > 32767: would wrap as int16
        cube = values.astype(np.uint16)
        assert cube.max() > 32767
    else:
        values = crop.astype(np.int64) - 5000  # negatives
        cube = values.astype(np.int16)
        assert cube.min() < 0
    model = F.tiny_model(values)
    f32 = hsi_engine.classify(F.dataarray(values.astype(np.float32)), model, tile=TILE, progress=False).values
    f64 = hsi_engine.classify(F.dataarray(values.astype(np.float64)), model, tile=TILE, progress=False).values
    native = hsi_engine.classify(F.dataarray(cube), model, tile=TILE, progress=False).values
    assert len(np.unique(f32)) > 1
    np.testing.assert_array_equal(native, f32)
    np.testing.assert_array_equal(f64, f32)
    # and through a zarr store of that dtype, in-process and resumable
    store = F.write_zarr(tmp_path / f"{kind}.zarr", cube)
    assert str(hsi_engine.open_scene(store).dtype) == str(cube.dtype)
    model_dir = F.save_tiny_model(tmp_path / "m", values)
    out = cluster.run_to_file(store, model_dir, tmp_path / "o.zarr", tile=TILE, resume=True).path
    np.testing.assert_array_equal(F.read_classes(out), f32)


# ----------------------------------------------------------------------------------------------
# damaged stores


def _chunk_file(store, key="c/0/1/1"):
    p = store / "reflectance" / key
    assert p.is_file(), sorted(str(q.relative_to(store)) for q in store.rglob("*") if q.is_file())
    return p


def test_missing_zarr_chunk_is_named_not_filled(crop, model_dir, outdir, tmp_path):
    store = F.write_zarr(tmp_path / "missing.zarr", crop)
    _chunk_file(store).unlink()
    msg = classify_everywhere(store, model_dir, outdir, CorruptChunkError, r"missing 1 of 9 chunks.*c/0/1/1",
                              cli_scene=store)
    assert "re-create" in msg.lower() or "re-copy" in msg.lower()
    with pytest.raises(CorruptChunkError):
        hsi_engine.classify(hsi_engine.open_scene(store), model_dir, tile=TILE, progress=False)


@pytest.mark.parametrize("meta", ["{oops", "", "negative shape"])
def test_an_array_s_damaged_zarr_metadata_is_a_scene_error(crop, model_dir, outdir, tmp_path, meta):
    """A store without consolidated metadata whose array zarr.json is damaged (bad JSON, empty, an invalid shape)
    raised zarr's JSONDecodeError / ValueError: a traceback on the command line."""
    import json

    store = F.write_zarr(tmp_path / "broken.zarr", crop)
    path = store / "reflectance" / "zarr.json"
    if meta == "negative shape":
        doc = json.loads(path.read_text())
        doc["shape"][0] = -1
        meta = json.dumps(doc)
    path.write_text(meta)
    classify_everywhere(store, model_dir, outdir, SceneError, r"holds an array whose metadata zarr cannot read .* "
                        r"write it again", cli_scene=store)


@pytest.mark.parametrize("fmt", ["h5", "nc"])
def test_never_written_hdf5_chunks_are_named_not_read_as_zeros(crop, model_dir, outdir, tmp_path, fmt):
    """A chunked HDF5 / NetCDF4 file whose write stopped part way: HDF5 reads the chunks never written as its fill
    value (0), which were classified as land cover with exit 0 (a zarr store's are refused). Named, unless a
    nodata value is declared (then they are its fill, class 0); a file of millions of tiny chunks is refused
    before dask indexes them."""
    import h5py

    path = tmp_path / f"part.{fmt}"
    if fmt == "h5":
        with h5py.File(path, "w") as f:
            f.create_dataset("cube", shape=crop.shape, chunks=(crop.shape[0], 16, 16), dtype=crop.dtype)
            f["cube"][:, :32] = crop[:, :32]  # the last row of chunks never written
    else:
        import h5netcdf

        with h5netcdf.File(path, "w") as f:
            f.dimensions = dict(zip(("band", "y", "x"), crop.shape))
            v = f.create_variable("cube", ("band", "y", "x"), crop.dtype, chunks=(crop.shape[0], 16, 16))
            v[:, :32] = crop[:, :32]
    classify_everywhere(path, model_dir, outdir, SceneError, r"3 of its 9 chunks were never written .* fill value "
                        r"0, which would be classified as land cover", cli_scene=path)
    with h5py.File(tmp_path / "tiny.h5", "w") as f:  # 11 million chunks declared in a few KB
        f.create_dataset("cube", shape=(11, 1000, 1000), chunks=(1, 1, 1), dtype="f4")
    with pytest.raises(SceneError, match=r"in 11,000,000 chunks of \[1, 1, 1\], more than the 10,000,000"):
        hsi_engine.open_scene(tmp_path / "tiny.h5")


def test_a_sparse_geotiff_s_unwritten_blocks_are_named_not_read_as_zeros(crop, model_dir, outdir, tmp_path):
    """A sparse GeoTIFF (SPARSE_OK) whose writer stopped: GDAL read the blocks never written as 0 and they were
    classified (1,024 pixels of one class, exit 0). Named, unless the file declares a nodata value (GDAL then
    fills them with it: class 0)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    def sparse(path, nodata=None):
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=crop.shape[0], dtype=crop.dtype,
                           tiled=True, blockxsize=16, blockysize=16, sparse_ok=True, crs="EPSG:32633",
                           transform=from_origin(500000, 4500000, 30, 30), nodata=nodata) as d:
            for r in (0, 16, 32):
                for c in (0, 16, 32):
                    if (r, c) != (16, 32):
                        h, w = min(16, 40 - r), min(16, 40 - c)
                        d.write(crop[:, r:r + h, c:c + w], window=Window(c, r, w, h))
        return path

    path = sparse(tmp_path / "sparse.tif")
    classify_everywhere(path, model_dir, outdir, SceneError, r"1 of its 9 blocks \(16 x 16 pixels\) were never "
                        r"written .* rows 16:32, cols 32:40\), and GDAL reads them as 0", cli_scene=path)
    labels = hsi_engine.classify(sparse(tmp_path / "declared.tif", nodata=0), model_dir, tile=TILE,
                                 progress=False).values
    assert (labels[16:32, 32:40] == 0).all() and (labels[:16] > 0).all()


def test_missing_chunk_of_a_store_not_named_zarr_is_named_not_filled(crop, model_dir, tmp_path):
    """open_scene reads any directory with zarr metadata as a store; the missing-chunk check looked at the name
    (*.zarr) only, so the same store named 'scene_store' was classified with the chunk read as 0 (277 px wrong)."""
    store = F.write_zarr(tmp_path / "missing.zarr", crop)
    _chunk_file(store).unlink()
    plain = store.rename(tmp_path / "scene_store")
    with pytest.raises(CorruptChunkError, match=r"missing 1 of 9 chunks.*c/0/1/1"):
        hsi_engine.classify(plain, model_dir, tile=TILE, progress=False)


def test_missing_chunk_of_a_store_without_fill_value_is_one_error(crop, model_dir, outdir, tmp_path):
    """A zarr v2 store written by xarray from integers has fill_value None: the message must still build (it
    raised a TypeError while formatting), and it cannot offer the fill value as nodata."""
    import shutil as _shutil

    import xarray as xr

    store = tmp_path / "v2.zarr"
    xr.DataArray(crop.astype(np.int16), dims=("band", "y", "x"), name="r").chunk({"y": 16, "x": 16}).to_dataset() \
        .to_zarr(store, zarr_format=2, consolidated=False)
    chunk = next(p for p in (store / "r").iterdir() if p.name.startswith("0."))
    chunk.unlink() if chunk.is_file() else _shutil.rmtree(chunk)
    msg = classify_everywhere(store, model_dir, outdir, CorruptChunkError, r"missing 1 of \d+ chunks", cli_scene=store)
    assert "--nodata" not in msg


def test_missing_chunk_equal_to_declared_nodata_is_masked(crop, model_dir, tmp_path):
    """zarr 3 does not store chunks equal to the fill value: with nodata = fill value they mean 'no data'."""
    store = F.write_zarr(tmp_path / "missing.zarr", crop)
    _chunk_file(store).unlink()  # rows 16:32, cols 16:32; int16 fill value 0
    lab = hsi_engine.classify(hsi_engine.open_scene(store), model_dir, tile=TILE, progress=False, nodata=0).values
    assert (lab[16:32, 16:32] == 0).all() and (lab[:16] > 0).all()


def test_corrupt_zarr_chunk_is_named(crop, model_dir, outdir, tmp_path):
    store = F.write_zarr(tmp_path / "corrupt.zarr", crop)
    p = _chunk_file(store, "c/0/2/1")
    p.write_bytes(b"\x00garbage" * 64)
    msg = classify_everywhere(store, model_dir, outdir, CorruptChunkError,
                              r"chunk c/0/2/1 \(chunk index \(0, 2, 1\)\).*cannot be decoded.*re-create",
                              cli_scene=store)
    assert "c/0/2/1" in msg


def test_not_a_store(model_dir, outdir, tmp_path):
    bogus = tmp_path / "bogus.zarr"
    bogus.mkdir()
    (bogus / "zarr.json").write_text("{not json")
    msg = run_cli(bogus, model_dir, outdir)
    assert "bogus.zarr" in msg and "zarr" in msg


# ----------------------------------------------------------------------------------------------
# output location


def test_output_under_a_file_is_refused(crop, model_dir, tmp_path):
    scene = F.dataarray(crop)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    for out in (blocker / "map.tif", blocker / "map.zarr"):
        with pytest.raises(OutputError, match="not_a_dir"):
            hsi_engine.classify_to_file(scene, model_dir, out, tile=TILE)
        with pytest.raises(OutputError, match="not_a_dir"):
            cluster.run_to_file(scene, model_dir, out, tile=TILE, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]
    assert blocker.read_text() == "x"


def test_read_only_directory(crop, model_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 555 does not stop writes here; "
                        "test_output_under_a_file_is_refused covers the unwritable-location error path")
        with pytest.raises(OutputError, match="not writable"):
            hsi_engine.classify_to_file(F.dataarray(crop), model_dir, ro / "map.tif", tile=TILE)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_weights_not_matching_model_json(crop, model_dir, outdir, tmp_path):
    bad = tmp_path / "bad_model"
    shutil.copytree(model_dir, bad)
    doc = json.loads((bad / "model.json").read_text())
    doc["config"]["reduce_width"] = 32  # weights were saved for 16
    (bad / "model.json").write_text(json.dumps(doc))
    scene = F.write_zarr(tmp_path / "s.zarr", crop)
    msg = classify_everywhere(scene, bad, outdir, CheckpointError, "does not match|needs", cli_scene=scene)
    assert "model.json" in msg


def test_an_edited_model_json_with_a_null_mean_is_refused(crop, model_dir, outdir, tmp_path):
    """A null (NaN) per-band mean made every pixel NaN and the map one class, silently; from disk it fails at
    load, and an in-memory model given such statistics fails before anything is written."""
    bad = tmp_path / "bad_model"
    shutil.copytree(model_dir, bad)
    doc = json.loads((bad / "model.json").read_text())
    doc["meta"]["mean"][5] = None
    (bad / "model.json").write_text(json.dumps(doc))
    scene = F.write_zarr(tmp_path / "s.zarr", crop)
    msg = classify_everywhere(scene, bad, outdir, CheckpointError, r"meta.mean\[5\] is None", cli_scene=scene)
    assert "model.json" in msg
    model = hsi_engine.load_model(model_dir)
    model.meta = {**model.meta, "std": [float("nan")] + list(model.meta["std"][1:])}
    classify_everywhere(scene, model, outdir, CheckpointError, r"model.meta: meta.std\[0\] is nan")
    # numpy statistics (what a script sets in memory) are fine
    model = hsi_engine.load_model(model_dir)
    ref = hsi_engine.classify(scene, model, tile=TILE, progress=False).values
    model.meta = {**model.meta, "mean": np.asarray(model.meta["mean"]), "std": np.asarray(model.meta["std"])}
    np.testing.assert_array_equal(hsi_engine.classify(scene, model, tile=TILE, progress=False).values, ref)
    # the other checks load_model makes, on meta edited in memory (a short class_names list became 'class 1'...)
    model = hsi_engine.load_model(model_dir)
    model.meta = {**model.meta, "class_names": ["a"]}
    classify_everywhere(scene, model, outdir, CheckpointError, r"model.meta: meta.class_names must be \d+ strings")


def test_pickle_offered_as_checkpoint(crop, model_dir, outdir, tmp_path):
    import torch

    pt = tmp_path / "model.pt"
    torch.save(hsi_engine.load_model(model_dir).state_dict(), pt)
    scene = F.write_zarr(tmp_path / "s.zarr", crop)
    msg = classify_everywhere(scene, pt, outdir, CheckpointError, "pickle", cli_scene=scene)
    assert "never unpickles" in msg
    # a directory holding a pickle under the weights' name
    d = tmp_path / "pickled_dir"
    shutil.copytree(model_dir, d)
    shutil.copy(pt, d / "weights.safetensors")
    msg = run_cli(scene, d, outdir)
    assert "pickle" in msg


def test_float16_overflow_is_named_as_such_not_blamed_on_the_model():
    """precision='float16' on a scene 300x off its model's scale: the logits overflowed and the error said the
    model's weights or normalisation held NaN; it names float16's range and the precisions that hold it."""
    import warnings

    from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE

    scene = hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 32), x=slice(0, 32)).astype("float32") * 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scale check's UnnormalisedInputWarning
        with pytest.raises(NonFiniteInputError, match=r"float16 arithmetic \(largest value 65,504\) overflowed.*"
                                                      r"precision='bfloat16'"):
            hsi_engine.classify(scene, SHIPPED_MODEL, tile=32, precision="float16", progress=False)
