"""Public API: input kinds, normalisation semantics, outputs with coords/CRS, bad input, georeferenced files."""

from __future__ import annotations

import contextlib
import copy
import re
import warnings

import dask.array
import numpy as np
import pytest
import torch
import xarray as xr

import hsi_engine
from hsi_engine import (BandMismatchError, HSIEngineError, NonFiniteInputError, SceneError, SceneTooSmallError,
                        classify, classify_to_file)
from hsi_engine.fused import patch_forward
from ssrn.checkpoint import load_model, save_model
from ssrn.config import SSRNConfig
from ssrn.model import SSRN

CLASSES = 4


def make_model(bands: int, *, meta: bool = True, seed: int = 0, cube: np.ndarray | None = None) -> SSRN:
    torch.manual_seed(seed)
    m = SSRN(SSRNConfig(bands=bands, classes=CLASSES)).eval()
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    if meta:
        a = cube.astype(np.float64)
        m.meta = {"mean": a.mean(axis=(1, 2)).tolist(), "std": a.std(axis=(1, 2)).tolist(),
                  "class_names": ["water", "forest", "field", "urban"],
                  "palette": [[0, 0, 255], [0, 128, 0], [255, 255, 0], [255, 0, 0]]}
    return m


def reference_labels(model: SSRN, raw: np.ndarray) -> np.ndarray:
    if model.meta.get("mean") is not None:
        mean = np.asarray(model.meta["mean"])[:, None, None]
        std = np.asarray(model.meta["std"])[:, None, None]
        raw = (raw.astype(np.float64) - mean) / std
    x = torch.from_numpy(np.asarray(raw, np.float32))
    return patch_forward(model, x).argmax(1).reshape(x.shape[1:]).numpy().astype(np.uint8) + 1


@pytest.fixture(scope="module")
def _case_once(geo) -> tuple[np.ndarray, SSRN, np.ndarray]:
    """A 14 x 13 cube and a random-weight model whose head bias is centred on the cube's median logits, so the
    map holds every class (random init maps every pixel to one class, and a one-class map checks nothing).
    Built once per module (a model and two patch_forward passes); tests take copies through ``case``."""
    cube = geo.make_cube(height=14, width=13)
    model = make_model(geo.BANDS, cube=cube)
    a = cube.astype(np.float64)
    x = (a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)
    with torch.no_grad():
        model.head.bias -= patch_forward(model, torch.from_numpy(x.astype(np.float32))).median(0).values
    ref = reference_labels(model, cube)
    assert len(np.unique(ref)) == CLASSES, np.unique(ref)
    return cube, model, ref


@pytest.fixture
def case(_case_once) -> tuple[np.ndarray, SSRN, np.ndarray]:
    """Fresh copies of the module's cube, model and reference map: some tests change the model's meta in place,
    and none of that may reach the next test."""
    cube, model, ref = _case_once
    return cube.copy(), copy.deepcopy(model), ref.copy()


def test_numpy_torch_dataarray_and_accessor_agree(case, geo):
    cube, model, ref = case
    a = classify(cube, model, tile=5, progress=False)
    b = classify(torch.from_numpy(cube), model, tile=(3, 13), progress=False)
    da = geo.cube_dataarray(cube)
    c = classify(da, model, tile=64, progress=False)
    d = da.hsi.classify(model, tile=4, progress=False)
    e = da.chunk({"y": 5, "x": 6}).hsi.classify(model, tile=7, progress=False)
    f = da.to_dataset(name="reflectance").hsi.classify(model, tile=6, progress=False)  # the Dataset accessor
    for out in (a, b, c, d, e, f):
        assert isinstance(out, xr.DataArray) and out.dims == ("y", "x") and out.dtype == np.uint8
        np.testing.assert_array_equal(out.values, ref)


def test_output_keeps_coords_crs_and_class_metadata(case, geo):
    cube, model, _ = case
    da = geo.cube_dataarray(cube)
    out = classify(da, model, progress=False)
    np.testing.assert_array_equal(out["y"].values, da["y"].values)
    np.testing.assert_array_equal(out["x"].values, da["x"].values)
    assert out.rio.crs == da.rio.crs
    assert tuple(out.rio.transform())[:6] == tuple(da.rio.transform())[:6]
    assert out.attrs["class_names"] == model.meta["class_names"]
    assert out.attrs["palette"] == [v for rgb in model.meta["palette"] for v in rgb]
    flags = out.attrs["flag_values"]
    assert flags.dtype == np.uint8 and flags.tolist() == list(range(1, len(model.meta["class_names"]) + 1))
    assert out.attrs["_FillValue"] == 0
    # CF's coordinate attributes, for readers that place a NetCDF copy by its coordinates (no units had been there)
    assert (out["x"].attrs["axis"], out["y"].attrs["axis"]) == ("X", "Y")
    assert out["x"].attrs["standard_name"] == "projection_x_coordinate" and out["x"].attrs["units"] == "metre"


def test_class_metadata_held_as_arrays_or_tuples_in_memory_is_taken(case, tmp_path):
    """An in-memory model's palette and class names as numpy arrays or tuples (save_model writes them as lists,
    and the saved model loaded) are taken as the lists: a numpy palette was refused as "must be 4 colours", then
    failed on its truth value."""
    import rasterio

    cube, model, ref = case
    palette, names = model.meta["palette"], model.meta["class_names"]
    model.meta = dict(model.meta, palette=np.asarray(palette, np.uint8), class_names=tuple(names))
    out = classify(cube, model, progress=False)
    assert out.attrs["palette"] == [v for rgb in palette for v in rgb] and out.attrs["class_names"] == names
    model.meta["palette"] = [tuple(rgb) for rgb in palette]
    with rasterio.open(classify_to_file(cube, model, tmp_path / "m.tif", progress=False)) as f:
        assert [f.colormap(1)[i][:3] for i in (1, 4)] == [tuple(palette[0]), tuple(palette[3])]
        np.testing.assert_array_equal(f.read(1), ref)


def test_a_model_without_a_palette_gives_the_map_in_memory_the_geotiff_s_colours(case, tmp_path):
    """The GeoTIFF of a model without a palette had a colour table (the default colours) while the map in memory
    had no ``palette`` to draw a matching legend with: both carry the same colours now."""
    import rasterio

    cube, model, _ = case
    model.meta = {k: v for k, v in model.meta.items() if k != "palette"}
    out = classify(cube, model, progress=False)
    with rasterio.open(classify_to_file(cube, model, tmp_path / "m.tif", progress=False)) as f:
        table = [list(f.colormap(1)[i][:3]) for i in range(1, len(model.meta["class_names"]) + 1)]
    assert out.attrs["palette"] == [v for rgb in table for v in rgb]
    assert len(set(map(tuple, table))) == len(table)  # distinct colours


@pytest.mark.parametrize("probabilities", [False, True])
def test_the_map_writes_to_netcdf_and_back_with_its_metadata(case, geo, tmp_path, probabilities):
    """The returned map (or Dataset) is written by ``to_netcdf`` (a nested palette attribute made it fail) and
    read back with its values and class metadata; its flat palette writes the same GeoTIFF colour table."""
    cube, model, _ = case
    out = classify(geo.cube_dataarray(cube), model, probabilities=probabilities, progress=False)
    out.to_netcdf(tmp_path / "map.nc", engine="h5netcdf")
    back = xr.open_dataset(tmp_path / "map.nc", engine="h5netcdf", mask_and_scale=False)
    labels = out["labels"] if probabilities else out
    got = back["labels" if probabilities else "class"]
    np.testing.assert_array_equal(got.values, labels.values)
    assert list(got.attrs["class_names"]) == model.meta["class_names"]
    assert [int(v) for v in got.attrs["palette"]] == labels.attrs["palette"]
    assert got.attrs["flag_values"].dtype == got.dtype == np.uint8  # CF 3.5: flag_values of the variable's type
    import rasterio

    from hsi_engine.writers import write_classmap

    write_classmap(labels, tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as f:
        cmap = f.colormap(1)
    assert [list(cmap[i][:3]) for i in range(1, len(model.meta["palette"]) + 1)] == \
        [list(c) for c in model.meta["palette"]]
    if probabilities:  # every variable placed where GDAL reads it (probabilities had no CRS)
        for var in ("labels", "probabilities", "confidence"):
            with rasterio.open(f"netcdf:{tmp_path / 'map.nc'}:{var}") as f:
                assert f.crs is not None and f.crs.to_epsg() == 32633, var


def test_progress_off_leaves_no_thread_and_a_non_numeric_nodata_attr_is_named(case, geo):
    """progress=False built a disabled tqdm, whose monitor thread outlived the call; a _FillValue attribute that
    is not a number ('abc', a list) was a bare ValueError/TypeError."""
    import threading

    cube, model, _ = case
    da = geo.cube_dataarray(cube)
    earlier = set(threading.enumerate())  # (a tqdm monitor another test's progress bar left is not this call's)
    classify(da, model, progress=False)
    before = {t.name for t in threading.enumerate()}
    classify(da, model, progress=False)
    assert not [t for t in threading.enumerate() if t not in earlier and "monitor" in type(t).__name__.lower()
                or t.name not in before and t.is_alive()]
    da.attrs["_FillValue"] = "abc"
    with pytest.raises(SceneError, match=r"declares a nodata value .* that is not a number.*--nodata"):
        classify(da, model, progress=False)
    da.attrs["_FillValue"] = [1, 2] * 100  # one per band: refused in a line, not 200 values long
    with pytest.raises(SceneError, match=r"declares 200 nodata values, not all the same .*\[1, 2, 1\]\.\.\.\), "
                                         r"and one value is masked in every band: pass nodata=VALUE") as e:
        classify(da, model, progress=False)
    assert len(str(e.value)) < 300
    da.attrs["_FillValue"] = [-1.0] * da.sizes["band"]  # one value repeated per band: that value
    np.testing.assert_array_equal(classify(da, model, progress=False).values,
                                  classify(geo.cube_dataarray(cube), model, progress=False).values)
    np.testing.assert_array_equal(classify(da, model, nodata=-1.0, progress=False).values,
                                  classify(geo.cube_dataarray(cube), model, progress=False).values)


def test_a_model_with_more_classes_than_a_uint8_map_holds_is_refused(case):
    """Class 256 would wrap to 0 (nodata) in the uint8 map: refused before anything is read."""
    cube, _, _ = case
    big = SSRN(SSRNConfig(bands=cube.shape[0], classes=256)).eval()
    with pytest.raises(HSIEngineError, match="256 classes.*at most 255"):
        classify(cube, big, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"nodata": "0"}, r"nodata='0'; expected a number"),
                                           ({"tile": "128"}, r"tile='128'; expected a whole number")])
def test_keyword_of_the_wrong_type_is_named(case, kwargs, match):
    cube, model, _ = case
    with pytest.raises(ValueError, match=match):
        classify(cube, model, progress=False, **kwargs)
    holed = cube.copy()
    holed[:, 2, 3] = -9999.0
    for nodata in (np.array(-9999.0), np.float32(-9999.0), -9999):  # numbers numpy hands out are numbers too
        assert classify(holed, model, progress=False, nodata=nodata).values[2, 3] == 0


def test_bare_model_takes_scene_as_normalised(case):
    cube, model, ref = case
    bare = SSRN(model.config)
    bare.load_state_dict(model.state_dict())
    bare.eval()
    assert not bare.meta
    mean = np.asarray(model.meta["mean"])[:, None, None]
    std = np.asarray(model.meta["std"])[:, None, None]
    normed = ((cube - mean) / std).astype(np.float32)
    np.testing.assert_array_equal(classify(normed, bare, tile=6, progress=False).values, ref)


def test_loaded_model_and_path(case, tmp_path):
    cube, model, ref = case
    path = save_model(model, tmp_path / "m")
    loaded = hsi_engine.load_model(path)
    np.testing.assert_array_equal(classify(cube, loaded, tile=8, progress=False).values, ref)
    np.testing.assert_array_equal(classify(cube, str(path), tile=8, progress=False).values, ref)


def test_probabilities_dataset(case):
    cube, model, ref = case
    ds = classify(cube, model, tile=5, probabilities=True, progress=False)
    assert isinstance(ds, xr.Dataset)
    assert ds["probabilities"].dims == ("class", "y", "x") and ds["probabilities"].dtype == np.float32
    np.testing.assert_allclose(ds["probabilities"].sum("class").values, 1.0, atol=1e-5)
    np.testing.assert_array_equal(ds["labels"].values, ref)
    np.testing.assert_array_equal(ds["probabilities"].argmax("class").values + 1, ref)
    np.testing.assert_allclose(ds["confidence"].values, ds["probabilities"].max("class").values)
    # the storage types classify_to_file takes: 'float16' returned float32 silently, and 'no' meant yes
    half = classify(cube, model, tile=5, probabilities="float16", progress=False)
    assert half["probabilities"].dtype == np.float16
    np.testing.assert_array_equal(half["probabilities"].values, ds["probabilities"].values.astype(np.float16))
    with pytest.raises(ValueError, match="probabilities must be a bool, 'float32' or 'float16'; got 'no'"):
        classify(cube, model, probabilities="no", progress=False)


def test_band_mismatch_named_before_reading(case, geo):
    cube, model, _ = case
    with pytest.raises(BandMismatchError, match=r"scene has 11 bands, model expects 12"):
        classify(cube[:11], model, progress=False)
    # with wavelengths on both sides, their ranges: another sensor shows (there are no 12 bands to select)
    saved = model.meta.get("wavelengths")
    model.meta["wavelengths"] = list(np.linspace(400.0, 1000.0, 12))
    other = xr.DataArray(cube[:11], dims=("band", "y", "x"),
                         coords={"wavelength": ("band", np.linspace(450.0, 2400.0, 11))})
    with pytest.raises(BandMismatchError, match=r"model expects 12 \(scene 450-2400 nm in 11 bands, model 400-1000 nm "
                                                r"in 12\)"):
        classify(other, model, progress=False)
    model.meta["wavelengths"] = saved
    if saved is None:
        del model.meta["wavelengths"]
    band_last = np.moveaxis(cube, 0, -1).copy()  # (y, x, band), taken as (band, y, x)
    with pytest.raises(BandMismatchError, match=r"x \(the last axis\) has 12 values.*or 2 \(y, x, band\)"):
        classify(band_last, model, progress=False)
    np.testing.assert_array_equal(classify(hsi_engine.as_scene(band_last, band_axis=2), model, progress=False),
                                  classify(cube, model, progress=False))


def test_wavelength_mismatch(case, geo):
    cube, model, _ = case
    model.meta["wavelengths"] = list(np.linspace(400.0, 1000.0, geo.BANDS))  # a VNIR-only sensor
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(geo.cube_dataarray(cube), model, progress=False)
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    classify(geo.cube_dataarray(cube), model, progress=False)


@pytest.mark.parametrize("scale", [1.0, 1e-3])  # the band coordinate in nm, or in µm
def test_wavelengths_in_a_float_band_coordinate_are_checked_too(case, geo, scale):
    """A scene whose float ``band`` coordinate holds wavelengths (no ``wavelength`` coordinate): in the model's
    order it runs and equals the reference; reversed (bands and wavelengths together) it is refused, where
    before it ran silently into a wrong map. Integer band numbers are not taken for wavelengths."""
    cube, model, ref = case
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    wl = np.asarray(geo.WAVELENGTHS_NM) * scale
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"band": wl})
    np.testing.assert_array_equal(classify(da, model, progress=False).values, ref)
    with pytest.raises(BandMismatchError, match=r"wavelengths differ.*run in the reverse of the model's band order "
                                                r".*reverse them, e\.g\. scene\.isel\(band=slice\(None, None, -1\)\)"):
        classify(da.isel(band=slice(None, None, -1)), model, progress=False)
    with pytest.raises(BandMismatchError, match=r"wavelengths differ.*in the model's band order, or"):  # not reversed
        classify(da.isel(band=np.r_[1, 0, 2:geo.BANDS]), model, progress=False)
    numbered = xr.DataArray(cube[::-1].copy(), dims=("band", "y", "x"), coords={"band": np.arange(1.0, geo.BANDS + 1)})
    classify(numbered, model, progress=False)  # band numbers: nothing to compare, so it runs


def test_wavelengths_in_band_names_and_with_gaps_are_checked(case, geo, tmp_path):
    """A reversed cube was classified silently (17,601 of 21,025 pixels wrong on Indian Pines) when its wavelengths
    were band names ('2498.96 nm') in a string ``band`` coordinate or a NetCDF, rioxarray's band descriptions
    (``long_name``), or a ``wavelength`` coordinate with one NaN: each is now compared with the model's."""
    import rasterio
    import rioxarray

    cube, model, ref = case
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    names = [f"{w:.2f} nm" for w in geo.WAVELENGTHS_NM]
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"band": names})
    np.testing.assert_array_equal(classify(da, model, progress=False).values, ref)
    rev = da.isel(band=slice(None, None, -1))
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(rev, model, progress=False)
    rev.to_dataset(name="reflectance").to_netcdf(tmp_path / "rev.nc")
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(tmp_path / "rev.nc", model, progress=False)
    with rasterio.open(tmp_path / "rev.tif", "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2],
                       count=cube.shape[0], dtype="float32") as dst:
        dst.write(cube[::-1].astype(np.float32))
        dst.descriptions = tuple(names[::-1])
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(rioxarray.open_rasterio(tmp_path / "rev.tif"), model, progress=False)
    gap = np.asarray(geo.WAVELENGTHS_NM, np.float64)[::-1].copy()
    gap[3] = np.nan  # one band without a wavelength: the others are still compared
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(xr.DataArray(cube[::-1].copy(), dims=("band", "y", "x"), coords={"wavelength": ("band", gap)}),
                 model, progress=False)


def test_a_rioxarray_scene_reordered_or_cut_after_opening_is_checked(case, geo, tmp_path):
    """rioxarray keeps the file's band descriptions (long_name) whole after isel, while its band numbers move:
    a reversed or cut band axis read the stale names as its own and ran into a wrong map (827 of 1,600 pixels),
    where the same isel of an open_scene scene was refused. The names follow the band numbers now."""
    import rasterio
    import rioxarray

    cube, model, ref = case
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2],
                       count=cube.shape[0], dtype="float32") as dst:
        dst.write(cube.astype(np.float32))
        dst.descriptions = tuple(f"{w:.2f} nm" for w in geo.WAVELENGTHS_NM)
    ro = rioxarray.open_rasterio(tmp_path / "s.tif")
    np.testing.assert_array_equal(classify(ro, model, progress=False).values, ref)
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(ro.isel(band=slice(None, None, -1)), model, progress=False)
    swapped = np.arange(geo.BANDS)
    swapped[[0, 5]] = swapped[[5, 0]]
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(ro.isel(band=swapped), model, progress=False)
    with pytest.raises(BandMismatchError, match="scene has"):
        classify(ro.isel(band=slice(1, None)), model, progress=False)  # (and its names are the right ones)


@pytest.mark.parametrize("dtype", ["float64", "int64"])
def test_a_band_coordinate_with_units_is_read_in_them(case, geo, dtype):
    """A ``band`` coordinate in wavenumbers (cm-1, ascending: wavelengths descending) or integer nm with its
    ``units`` was not read as wavelengths (outside the float-nm heuristic): reversed bands ran into a wrong map,
    while the same coordinate named ``channel`` was checked."""
    cube, model, ref = case
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    wl = np.asarray(geo.WAVELENGTHS_NM, np.float64)
    if dtype == "int64":
        model.meta["wavelengths"] = list(np.round(wl))
        coord = xr.Variable("band", np.round(wl).astype(np.int64), attrs={"units": "nm"})
    else:
        coord = xr.Variable("band", 1e7 / wl, attrs={"units": "cm-1"})
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"band": coord})
    np.testing.assert_array_equal(classify(da, model, progress=False).values, ref)
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(da.isel(band=slice(None, None, -1)), model, progress=False)


def test_overlapping_spectrometer_wavelengths_are_checked(case, geo):
    """AVIRIS's wavelengths step back where its spectrometers overlap: a float ``band`` coordinate like that is
    still read as wavelengths, so a reversed band axis is refused rather than classified into a wrong map."""
    cube, model, ref = case
    wl = np.asarray(geo.WAVELENGTHS_NM, np.float64).copy()
    wl[6] = wl[5] - 8.0  # the next spectrometer starts below the last band of the previous one
    model.meta["wavelengths"] = list(wl)
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"band": wl})
    np.testing.assert_array_equal(classify(da, model, progress=False).values, ref)
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(da.isel(band=slice(None, None, -1)), model, progress=False)


@pytest.mark.parametrize("units", ["micrometers", "µm"])
def test_a_wavelength_coordinate_in_micrometres_is_read_in_its_units(case, geo, units, tmp_path):
    """A ``wavelength`` coordinate (or dimension) in µm with its ``units`` attribute is compared in nm, in memory
    and through a NetCDF file, instead of being refused as 1000x too short."""
    cube, model, ref = case
    model.meta["wavelengths"] = list(geo.WAVELENGTHS_NM)
    um = xr.DataArray(np.asarray(geo.WAVELENGTHS_NM) / 1000.0, dims="wavelength", attrs={"units": units})
    da = xr.DataArray(cube, dims=("wavelength", "y", "x"), coords={"wavelength": um}, name="r")
    np.testing.assert_array_equal(classify(da, model, progress=False).values, ref)
    da.to_netcdf(tmp_path / "um.nc", engine="h5netcdf")
    scene = hsi_engine.open_scene(tmp_path / "um.nc")
    np.testing.assert_allclose(scene["wavelength"].values, geo.WAVELENGTHS_NM)
    assert scene["wavelength"].attrs["units"] == "nm"
    np.testing.assert_array_equal(classify(scene, model, progress=False).values, ref)
    with pytest.raises(BandMismatchError, match="wavelengths differ"):
        classify(da.isel(wavelength=slice(None, None, -1)), model, progress=False)


def test_a_model_without_normalisation_on_raw_integers_is_warned_about(case):
    cube, model, _ = case
    bare = SSRN(model.config)
    bare.load_state_dict(model.state_dict())
    bare.eval().meta = {}
    with pytest.warns(UserWarning, match="no per-band mean/std .* holds uint16 values"):
        classify(np.clip(cube, 0, None).astype(np.uint16), bare, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float input taken as normalised: no warning
        classify((cube - cube.mean()) / cube.std(), bare, progress=False)
    # a float scene of raw values (an imported Keras model without --dataset on a float32 GeoTIFF) gave a map of
    # one class without a word: its scale is checked against the normalised one's
    raw = (np.clip(cube, 0, None) * 1000 + 1000).astype(np.float32)
    with pytest.warns(UserWarning, match=r"no per-band mean/std .* taken as already normalised .* about [\d,]+x "
                                         r"larger in nearly every band"):
        classify(raw, bare, progress=False)


def test_two_declared_nodata_values_are_warned_about(case):
    """``_FillValue`` and ``missing_value`` (or ``nodata``) both declared in a scene's attrs (xr.open_dataset with
    mask_and_scale=False): only the first was masked, and a dropped scan line of the other was classified, without
    a word."""
    cube, model, _ = case
    da = xr.DataArray(np.clip(cube, 0, None).astype(np.int16), dims=("band", "y", "x"),
                      attrs={"_FillValue": -32768, "missing_value": -9999})
    with pytest.warns(UserWarning, match=r"more than one nodata value \(_FillValue=-32768, missing_value=-9999\): "
                                         r"only _FillValue's is masked"):
        classify(da, model, progress=False)


def test_odd_arguments_are_option_errors_and_bfloat16_tensors_are_scenes(case):
    """model=None, readers='2' and nodata=10**400 escaped ``except HSIEngineError`` (TypeError, OverflowError); a
    bfloat16 or sparse torch tensor could not be read (numpy has neither)."""
    import torch

    from hsi_engine.errors import OptionError

    cube, model, ref = case
    for kw in ({"model": None}, {"readers": "2"}, {"nodata": 10 ** 400}):
        args = {"model": model, **kw}
        with pytest.raises(OptionError):
            classify(cube, args.pop("model"), progress=False, **args)
    t = torch.from_numpy(cube)
    exact = t.to(torch.bfloat16).float().numpy()  # what the bf16 tensor holds, exactly, in float32
    np.testing.assert_array_equal(classify(t.to(torch.bfloat16), model, progress=False).values,
                                  classify(exact, model, progress=False).values)
    np.testing.assert_array_equal(classify(t.to_sparse(), model, progress=False).values, ref)


def test_scene_smaller_than_a_patch_equals_patch_mode(case):
    cube, model, _ = case
    small = cube[:, :6, :3]
    np.testing.assert_array_equal(classify(small, model, progress=False).values, reference_labels(model, small))
    with pytest.raises(SceneTooSmallError, match="0 x 3 pixels: nothing to classify"):
        classify(cube[:, :0, :3], model, progress=False)


def test_non_finite_without_policy_names_the_pixel(case):
    cube, model, _ = case
    bad = cube.copy()
    bad[3, 9, 4] = np.nan
    with pytest.raises(NonFiniteInputError, match=r"pixel \(y=9, x=4\)"):
        classify(bad, model, tile=5, progress=False)


@pytest.mark.parametrize("nodata", ["nan", -9999.0])
def test_nodata_pixels_are_class_zero_and_padded_like_the_border(case, nodata):
    cube, model, _ = case
    bad = cube.copy()
    value = np.nan if nodata == "nan" else nodata
    bad[:, 9, 4] = value
    bad[2, 1, 1] = value
    out = classify(bad, model, tile=5, nodata=float(value), progress=False).values
    assert out[9, 4] == 0 and out[1, 1] == 0 and (np.delete(out.ravel(), [9 * 13 + 4, 13 + 1]) > 0).all()
    # reference: the masked pixels' normalised spectra are zero, exactly like padding
    mean = np.asarray(model.meta["mean"])[:, None, None]
    std = np.asarray(model.meta["std"])[:, None, None]
    normed = ((cube - mean) / std).astype(np.float32)
    normed[:, 9, 4] = 0
    normed[:, 1, 1] = 0
    bare = SSRN(model.config)
    bare.load_state_dict(model.state_dict())
    ref = reference_labels(bare.eval(), normed)
    ref[9, 4] = ref[1, 1] = 0
    np.testing.assert_array_equal(out, ref)


def test_bad_bands_flagged_by_bbl_are_left_out_of_the_nodata_mask(case, geo, caplog):
    """A band holding nodata in every pixel (EnMAP's bad bands) masks the whole scene unless a ``bbl`` coordinate
    flags it bad; flagged, only the real hole is nodata, the bad band's nodata values read as its mean (0 once
    normalised, as NaN there does: the map of ``s.where(s != nodata)`` is the same) and the rest equals the
    reference on the same values. Masking everything says so in one warning; a bad band the model had data in,
    another."""
    cube, model, _ = case
    raw = cube.copy()
    raw[3] = -32768.0  # a bad band, as the sensor fills it
    raw[:, 6, 7] = -32768.0  # a real hole
    da = geo.cube_dataarray(raw)
    bbl = np.ones(raw.shape[0], np.uint8)
    bbl[3] = 0
    with caplog.at_level("WARNING", logger="hsi_engine.runner"):
        everything = classify(da, model, tile=6, nodata=-32768.0, progress=False).values
    assert (everything == 0).all()
    assert sum("every pixel this run classified is nodata" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    flagged = da.assign_coords(bbl=("band", bbl))
    with caplog.at_level("WARNING", logger="hsi_engine.runner"), \
            pytest.warns(UserWarning, match=r"flags bands 3 \(0-based\) bad, but the model was trained with data"):
        out = classify(flagged, model, tile=6, nodata=-32768.0, progress=False).values
    assert not caplog.records
    ref = _reference_on(model, raw, zero=[3, (slice(None), 6, 7)])  # the hole's spectrum is zeroed like the
    ref[6, 7] = 0  # border padding
    np.testing.assert_array_equal(out, ref)
    assert (out == 0).sum() == 1
    with pytest.warns(UserWarning, match="trained with data in them"):
        masked = classify(flagged.where(flagged != -32768.0), model, tile=6, nodata=float("nan"), progress=False)
    np.testing.assert_array_equal(masked.values, out)


def _reference_on(model, raw, *, zero=()):
    """Patch-mode labels of ``raw`` normalised with the model's statistics, the ``zero`` index expressions (a
    band, a pixel's spectrum) set to 0 after normalising, as the engine pads nodata pixels and NaN bad bands."""
    mean = np.asarray(model.meta["mean"])[:, None, None]
    std = np.asarray(model.meta["std"])[:, None, None]
    normed = ((raw - mean) / std).astype(np.float32)
    for idx in zero:
        normed[idx] = 0
    bare = SSRN(model.config)
    bare.load_state_dict(model.state_dict())
    return reference_labels(bare.eval(), normed)


def test_bad_bands_masked_to_nan_are_classified_as_their_mean(case, geo):
    """``s.where(s != nodata)`` turns a bad band (bbl = 0) into NaN in every pixel: with the bbl coordinate the
    scene is classified, the bad band taken at its mean (normalised 0) and only the NaN hole in a good band is
    nodata, equal to the reference on those values; the same with no nodata policy but that hole filled."""
    cube, model, _ = case
    raw = cube.copy()
    raw[3] = np.nan
    raw[:, 6, 7] = np.nan
    bbl = np.ones(raw.shape[0], np.uint8)
    bbl[3] = 0
    da = geo.cube_dataarray(raw).assign_coords(bbl=("band", bbl))
    out = classify(da, model, tile=6, nodata=float("nan"), progress=False).values
    ref = _reference_on(model, raw, zero=[3, (slice(None), 6, 7)])
    ref[6, 7] = 0
    np.testing.assert_array_equal(out, ref)
    assert (out == 0).sum() == 1
    raw[:, 6, 7] = cube[:, 6, 7]
    raw[3, 6, 7] = np.nan  # the bad band stays NaN there too
    filled = classify(geo.cube_dataarray(raw).assign_coords(bbl=("band", bbl)), model, tile=6, progress=False)
    np.testing.assert_array_equal(filled.values, _reference_on(model, raw, zero=[3]))


def test_a_model_without_statistics_still_reads_its_bad_bands_as_zero(case):
    """``meta.bad_bands`` are read as 0 whatever the scene holds there; a model without mean/std read them as
    stored (50 in a bad band changed every label), as the scene's values pass unnormalised."""
    cube, model, _ = case
    bare = SSRN(model.config)
    bare.load_state_dict(model.state_dict())
    bare.eval().meta = {"bad_bands": [3]}
    a = cube.astype(np.float64)  # a scene already normalised, as such a model takes it
    normed = ((a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)).astype(np.float32)
    junk, zero = normed.copy(), normed.copy()
    junk[3], zero[3] = 5.0, 0.0

    def probabilities(x):  # the reference's, (classes, y, x)
        logits = patch_forward(bare, torch.from_numpy(x)).softmax(1)
        return logits.t().reshape(-1, *x.shape[1:]).numpy()

    got = classify(junk, bare, tile=6, probabilities=True, progress=False)
    np.testing.assert_array_equal(got["labels"].values, reference_labels(bare, zero))
    np.testing.assert_allclose(got["probabilities"].values, probabilities(zero), atol=1e-5)
    assert np.abs(probabilities(junk) - probabilities(zero)).max() > 1e-3  # read as stored, the band matters


@pytest.mark.parametrize(("factor", "word", "fix"), [(1e-4, "smaller", "scene * 10000"),
                                                     (100.0, "larger", "scene / 100")])
def test_a_scene_on_another_scale_than_the_training_scene_is_named(case, factor, word, fix):
    """Reflectance 0-1 classified with a model trained on integers x 10000 gave a one-class map without a word: a
    sample of the scene off the training statistics by 30x or more in nearly every band warns (an error on the
    command line), naming the factor and the fix; a scene dark in most bands (water) is not such a scene."""
    cube, model, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("error", hsi_engine.UnnormalisedInputWarning)
        classify(cube, model, progress=False)
        dark = cube.copy()
        dark[: 2 * cube.shape[0] // 3] *= 1e-3
        classify(dark, model, progress=False)
    with pytest.warns(hsi_engine.UnnormalisedInputWarning, match=rf"about [0-9,]+x {word} .* \(e\.g\. "
                                                                 rf"{re.escape(fix)}\)"):
        classify(cube * factor, model, progress=False)


@pytest.mark.parametrize("store", ["packed.nc", "packed.zarr"])
def test_cf_packed_values_are_decoded_as_xarray_decodes_them(tmp_path, store, case):
    """A variable stored as scaled integers (CF ``scale_factor`` / ``add_offset``, a packed ``_FillValue``) opens
    as the values it stands for, lazily, with its fill as NaN declared as nodata, equal to ``xr.open_dataset``;
    its class map equals that of the unpacked values, holes 0. Before, the packed integers were classified."""
    cube, model, _ = case
    packed = np.round((cube - 1000.0) / 0.5).astype(np.int16)
    packed[:, 3, 4] = -999
    ds = xr.Dataset({"r": (("band", "y", "x"), packed,
                           {"scale_factor": 0.5, "add_offset": 1000.0, "_FillValue": np.int16(-999)})})
    p = tmp_path / store
    ds.to_netcdf(p, engine="h5netcdf") if store.endswith(".nc") else ds.to_zarr(p, mode="w", consolidated=False)
    da = hsi_engine.open_scene(p)
    assert isinstance(da.data, dask.array.Array) and np.isnan(da.attrs["_FillValue"]) and "scale_factor" not in da.attrs
    how = {"engine": "h5netcdf"} if store.endswith(".nc") else {"engine": "zarr", "consolidated": False}
    want = xr.open_dataset(p, **how)["r"].values
    np.testing.assert_array_equal(da.values, want)
    unpacked = packed * 0.5 + 1000.0
    got = hsi_engine.classify(da, model, progress=False).values
    expect = hsi_engine.classify(unpacked, model, progress=False).values
    expect[3, 4] = 0
    ok = np.ones(got.shape, bool)
    h = model.config.halo  # the hole's neighbours see a zero spectrum where the unpacked scene has its values
    ok[3 - h:3 + h + 1, 4 - h:4 + h + 1] = False
    np.testing.assert_array_equal(got[ok], expect[ok])
    assert got[3, 4] == 0


def test_cf_packing_left_undecoded_in_memory_is_named(tmp_path, case):
    """``xr.open_dataset(mask_and_scale=False)`` or ``rioxarray.open_rasterio`` hand over the packed integers with
    their ``scale_factor`` / ``add_offset`` / ``_Unsigned`` as attributes: the map was of the integers, silently.
    It warns where the decoded values fit the model and the integers do not; a scale that is only a note on
    integers the model was trained on (a GeoTIFF's reflectance scale) says nothing, nor does a decoded scene."""
    cube, model, _ = case
    packed = np.round((cube - 1000.0) / 0.1).astype(np.int16)
    ds = xr.Dataset({"r": (("band", "y", "x"), packed, {"scale_factor": 0.1, "add_offset": 1000.0})})
    p = tmp_path / "packed.nc"
    ds.to_netcdf(p, engine="h5netcdf")
    raw = xr.open_dataset(p, engine="h5netcdf", mask_and_scale=False)
    for scene in (raw["r"], raw):
        with pytest.warns(hsi_engine.UnnormalisedInputWarning, match=r"CF packing \(scale_factor=0.1, "
                          r"add_offset=1000.0\) that was not applied: .* Decode it first"):
            classify(scene, model, progress=False)
    unsigned = np.round(cube * 10).astype(np.uint16)  # uint16 values stored as int16: CF's _Unsigned
    assert (unsigned > 32767).any()
    with pytest.warns(hsi_engine.UnnormalisedInputWarning, match=r"_Unsigned=true\) .* against 0\.[0-9] for"):
        classify(xr.DataArray(unsigned.view(np.int16), dims=("band", "y", "x"),
                              attrs={"scale_factor": 0.1, "_Unsigned": "true"}), model, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hsi_engine.UnnormalisedInputWarning)
        classify(xr.open_dataset(p, engine="h5netcdf")["r"], model, progress=False)
        note = xr.DataArray(cube.astype(np.uint16), dims=("band", "y", "x"), attrs={"scale_factor": 1e-4})
        classify(note, model, progress=False)


@pytest.mark.parametrize("name, resume", [("map.tif", False), ("map.zarr", False), ("map.tif", True),
                                          ("map.zarr", True), ("mem", False)])
def test_a_scene_placed_by_ground_control_points_gives_a_map_placed_by_them(case, tmp_path, name, resume):
    """A GeoTIFF georeferenced by GCPs (not orthorectified: no transform) gave a map with the CRS and an identity
    transform, a 1-pixel-per-metre square at the CRS's origin; its map now carries the same GCPs (and no pixel
    coordinates that would read as a transform), in memory, as a COG (sidecars too) and as zarr."""
    import rasterio

    cube, model, ref = case
    scene = _gcp_scene(tmp_path / "gcp.tif", cube)
    with rasterio.open(scene) as f:
        gcps = f.gcps[0]

    def same(got):
        assert [(g.row, g.col, g.x, g.y) for g in got] == [(g.row, g.col, g.x, g.y) for g in gcps]

    if name == "mem":
        labels = classify(hsi_engine.open_scene(scene), model, progress=False)
        np.testing.assert_array_equal(labels.values, ref)
        assert labels.rio.crs.to_epsg() == 32633 and "x" not in labels.coords
        same(labels.rio.get_gcps())
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scene is georeferenced: no "written in pixel coordinates" warning
        out = hsi_engine.classify_to_file(scene, model, tmp_path / name, probabilities=True, progress=False,
                                          resume=resume)  # resume: the resumable (cluster) path
    if name.endswith(".tif"):
        for path in (out, tmp_path / "map_probabilities.tif"):
            with rasterio.open(path) as f:
                got, crs = f.gcps
                assert crs.to_epsg() == 32633 and f.transform.is_identity
                same(got)
        with rasterio.open(out) as f:
            np.testing.assert_array_equal(f.read(1), ref)
    else:
        ds = xr.open_zarr(out, consolidated=False, decode_coords="all")
        assert "x" not in ds.coords and "y" not in ds.coords and ds["classes"].rio.crs.to_epsg() == 32633
        same(ds["classes"].rio.get_gcps())
        np.testing.assert_array_equal(ds["classes"].values, ref)


def _write_rotated(path, cube, transform):
    """``cube`` as a float32 GeoTIFF in EPSG:32633 with a rotated ``transform``."""
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                       dtype="float32", crs="EPSG:32633", transform=transform) as dst:
        dst.write(cube.astype(np.float32))
    return path


@pytest.mark.parametrize("name", ["map.tif", "map.zarr"])
def test_a_rotated_grid_keeps_its_transform_and_no_wrong_coordinates(case, tmp_path, name):
    """A rotated geotransform has no 1-D y/x coordinates: the zarr map wrote ones that ignored the rotation
    (5 pixels off at the far corner); now both outputs carry the transform itself and no such coordinates."""
    import rasterio
    from affine import Affine

    cube, model, ref = case
    t = Affine.translation(366000, 5810000) * Affine.rotation(10) * Affine.scale(30, -30)
    scene = _write_rotated(tmp_path / "rot.tif", cube, t)
    assert "pixel      30 x 30 (rotated grid)" in hsi_engine.io.scene_info(scene)  # it said 29.5442 x 29.5442
    out = hsi_engine.classify_to_file(scene, model, tmp_path / name, progress=False)
    if name.endswith(".tif"):
        with rasterio.open(out) as f:
            assert f.transform.almost_equals(t) and f.crs.to_epsg() == 32633
            np.testing.assert_array_equal(f.read(1), ref)
            assert f.tags()["precision"] == "float32" and len(f.tags()["model_digest"]) == 32  # provenance
    else:
        ds = xr.open_zarr(out, consolidated=False, decode_coords="all")
        assert "x" not in ds.coords and "y" not in ds.coords
        assert ds["classes"].rio.transform().almost_equals(t)
        np.testing.assert_array_equal(ds["classes"].values, ref)


def test_a_window_of_a_rotated_scene_is_placed_at_the_window(case, tmp_path):
    """``isel`` of a rotated scene (no x/y coordinates to shift) kept the file's transform: the map of a window
    was placed at the whole scene's origin, 100s of m off, silently. The window's pixels in the file
    (``source_row``/``source_col``, as for GCP scenes) place it, strided windows too; an irregular selection is
    refused."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from hsi_engine.errors import IrregularGridError

    cube, model, _ = case
    t = Affine.translation(366000, 5810000) * Affine.rotation(15) * Affine.scale(30, -30)
    path = _write_rotated(tmp_path / "rot.tif", cube, t)
    scene = hsi_engine.open_scene(path)
    window = scene.isel(y=slice(3, 11), x=slice(5, 13))
    out = hsi_engine.classify_to_file(window, model, tmp_path / "w.tif", progress=False)
    with rasterio.open(out) as f:
        assert f.transform.almost_equals(t * Affine.translation(5, 3))  # = the file's window_transform
        assert rasterio.open(path).window_transform(Window(5, 3, 8, 8)).almost_equals(f.transform)
        np.testing.assert_array_equal(f.read(1), classify(window, model, progress=False).values)
    labels = classify(window, model, progress=False)
    assert labels.rio.transform().almost_equals(t * Affine.translation(5, 3))
    assert "source_row" not in labels.coords
    strided = classify(scene.isel(x=slice(1, None, 2)), model, progress=False)
    # map pixel k's centre on source pixel 1 + 2k's centre (the strided map was anchored at corners: 21 m off)
    assert strided.rio.transform().almost_equals(t * Affine.translation(0.5, 0) * Affine.scale(2, 1))
    assert strided.rio.transform() * (0.5, 0.5) == pytest.approx(t * (1.5, 0.5))
    with pytest.raises(IrregularGridError, match="rotated grid and its pixels were selected irregularly"):
        classify_to_file(scene.isel(x=[0, 1, 5]), model, tmp_path / "irr.tif", progress=False)


def test_rio_isel_window_of_a_rotated_scene_is_placed_once(case, tmp_path):
    """``rio.isel_window`` rewrites a rotated scene's transform to the window's own, and its source_row /
    source_col moved with the window too: the map was shifted twice (at twice the window's offset), silently. The
    file's transform, recorded at open, now places it; a transform written that is neither is named."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    cube, model, _ = case
    t = Affine.translation(366000, 5810000) * Affine.rotation(20) * Affine.scale(30, -30)
    scene = hsi_engine.open_scene(_write_rotated(tmp_path / "rot.tif", cube, t))
    window = scene.rio.isel_window(Window(5, 3, 8, 6))
    assert window.rio.transform().almost_equals(t * Affine.translation(5, 3))  # rioxarray wrote the window's own
    out = classify_to_file(window, model, tmp_path / "w.tif", progress=False)
    with rasterio.open(out) as f:
        assert f.transform.almost_equals(t * Affine.translation(5, 3))
    inner = window.isel(y=slice(1, None), x=slice(2, None))  # a plain isel of it: the window's transform left stale
    assert classify(inner, model, progress=False).rio.transform().almost_equals(t * Affine.translation(7, 4))
    moved = window.rio.write_transform(Affine.translation(10, 0) * t)
    with pytest.warns(UserWarning, match="was written after opening, and is neither its file's .* nor a window's "
                                         "of it: .*drop_vars"):
        labels = classify(moved, model, progress=False)
    assert labels.rio.transform().almost_equals(t * Affine.translation(5, 3))
    corrected = Affine.translation(100000, 0) * t  # a transform written on the whole scene: the caller's own
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*was written after opening")
        assert classify(scene.rio.write_transform(corrected), model, progress=False).rio.transform().almost_equals(
            corrected)


def test_a_rotated_scene_converted_to_netcdf_by_gdal_is_placed_by_its_rows(case, tmp_path):
    """GDAL's netCDF driver stores rows bottom-up beside the top-down rotated GeoTransform: the map was placed
    upside down (three quarters of its pixels on other ground) and a window at the file's origin, silently. The
    1-D x/y it writes say which file row and column each pixel is; every map pixel now lies on its source pixel."""
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as gdal_translate

    cube, model, _ = case
    h = cube.shape[1]
    t = Affine.translation(366000, 5810000) * Affine.rotation(20) * Affine.scale(30, -30)
    gdal_translate(str(_write_rotated(tmp_path / "rot.tif", cube, t)), str(tmp_path / "rot.nc"), driver="netCDF")
    scene = hsi_engine.open_scene(tmp_path / "rot.nc")
    np.testing.assert_array_equal(scene.values, cube[:, ::-1].astype(np.float32))  # stored bottom-up
    with pytest.warns(UserWarning, match="rows run upwards .* GDAL's netCDF driver"):
        out = classify_to_file(scene, model, tmp_path / "map.tif", progress=False)
    with rasterio.open(out) as f:
        for r, c in ((0, 0), (2, 5), (h - 1, 3)):  # map row r holds stored row r: file row h - 1 - r
            assert f.transform * (c + 0.5, r + 0.5) == pytest.approx(t * (c + 0.5, h - 1 - r + 0.5))
    with pytest.warns(UserWarning, match="rows run upwards"):
        labels = classify(scene.isel(y=slice(2, 9), x=slice(3, 10)), model, progress=False)
    assert labels.rio.transform() * (0.5, 0.5) == pytest.approx(t * (3.5, h - 3 + 0.5))
    # rio.isel_window rewrites the GeoTransform (to a top-down window over bottom-up rows), and one pixel has no
    # step: both were placed off by pixels, silently; the file's transform recorded at open places them
    from rasterio.windows import Window

    with pytest.warns(UserWarning, match="rows run upwards"):
        labels = classify(scene.rio.isel_window(Window(5, 3, 9, 6)), model, progress=False)
    assert labels.rio.transform() * (0.5, 0.5) == pytest.approx(t * (5.5, h - 3 - 1 + 0.5))
    one = classify(scene.isel(y=slice(4, 5), x=slice(6, 7)), model, progress=False)
    assert one.rio.transform() * (0.5, 0.5) == pytest.approx(t * (6.5, h - 4 - 1 + 0.5))


def test_a_north_up_netcdf_written_by_gdal_is_named_bottom_up_not_stale(case, tmp_path):
    """Every north-up GeoTIFF converted with ``gdal_translate -of netCDF`` warned of a GeoTransform "left stale by
    flipping or cutting the array" that nobody flipped: GDAL stores the rows bottom-up. Named as that, with the
    way to the north-up scene's map."""
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as gdal_translate

    cube, model, ref = case
    t = Affine.translation(366000, 5810000) * Affine.scale(30, -30)
    src = tmp_path / "n.tif"
    with rasterio.open(src, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                       dtype="float32", crs="EPSG:32633", transform=t) as dst:
        dst.write(cube.astype(np.float32))
    gdal_translate(str(src), str(tmp_path / "n.nc"), driver="netCDF")
    scene = hsi_engine.open_scene(tmp_path / "n.nc")
    with pytest.warns(UserWarning, match=r"rows run upwards .* classify scene.isel\(y=slice\(None, None, -1\)\)") as w:
        classify(scene, model, progress=False)
    assert not any("stale" in str(x.message) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flipped back: the north-up scene, its map the GeoTIFF's, no warning
        np.testing.assert_array_equal(classify(scene.isel(y=slice(None, None, -1)), model, progress=False).values,
                                      ref)


def test_a_flipped_rotated_or_gcp_scene_is_placed_flipped(case, tmp_path):
    """``isel(y=slice(None, None, -1))`` (classify's advice for a south-up scene) of a rotated or GCP scene was
    refused as 'selected irregularly'; the in-memory map kept the unflipped transform. Map row 0 is now source row
    h - 1, on the ground."""
    import rasterio
    from affine import Affine

    cube, model, _ = case
    h, w = cube.shape[1:]
    t = Affine.translation(366000, 5810000) * Affine.rotation(15) * Affine.scale(30, -30)
    rot = hsi_engine.open_scene(_write_rotated(tmp_path / "rot.tif", cube, t)).isel(y=slice(None, None, -1))
    out = classify_to_file(rot, model, tmp_path / "rot-map.tif", progress=False)
    with rasterio.open(out) as f:
        for r, c in ((0, 0), (2, 5), (h - 1, w - 1)):
            assert f.transform * (c + 0.5, r + 0.5) == pytest.approx(t * (c + 0.5, h - 1 - r + 0.5))
        np.testing.assert_array_equal(f.read(1), classify(rot, model, progress=False).values)
    gcp = hsi_engine.open_scene(_gcp_scene(tmp_path / "gcp.tif", cube)).isel(x=slice(None, None, -1))
    labels = classify(gcp, model, progress=False)
    for g in labels.rio.get_gcps():  # map column c is source column w - 1 - c: its centre c + 0.5 -> w - (c + 0.5)
        r, c = g.row, w - g.col
        assert (g.x, g.y) == pytest.approx((366000.0 + 30 * c + 3 * r, 5810000.0 - 30 * r))


def test_a_rioxarray_window_of_a_rotated_scene_is_placed_and_of_a_gcp_scene_refused(case, tmp_path):
    """A window of a rotated scene opened with ``rioxarray.open_rasterio`` (no source_row / source_col) was placed
    at the file's origin, 280 m off, silently: its 2-D xc / yc coordinates now place it. A GCP scene's window
    opened so carries nothing that says where it lies: refused, naming open_scene."""
    import rasterio
    import rioxarray
    from affine import Affine

    from hsi_engine.errors import SceneError

    cube, model, _ = case
    t = Affine.translation(366000, 5810000) * Affine.rotation(30) * Affine.scale(30, -30)
    path = _write_rotated(tmp_path / "rot.tif", cube, t)
    win = rioxarray.open_rasterio(path).isel(y=slice(3, 11), x=slice(5, 13))
    for name in ("w.tif", "w.zarr"):
        out = classify_to_file(win, model, tmp_path / name, progress=False)
        if name.endswith(".tif"):
            with rasterio.open(out) as f:
                assert f.transform.almost_equals(t * Affine.translation(5, 3))
        else:
            ds = xr.open_zarr(out, consolidated=False, decode_coords="all")
            assert ds["classes"].rio.transform().almost_equals(t * Affine.translation(5, 3))
    strided = rioxarray.open_rasterio(path).isel(x=slice(1, None, 2))
    assert classify(strided, model, progress=False).rio.transform() * (0.5, 0.5) == pytest.approx(t * (1.5, 0.5))
    gwin = rioxarray.open_rasterio(_gcp_scene(tmp_path / "gcp.tif", cube)).isel(y=slice(4, 12))
    with pytest.raises(SceneError, match="window of its .* opened without hsi_engine.open_scene"):
        classify_to_file(gwin, model, tmp_path / "g.tif", progress=False)
    assert not (tmp_path / "g.tif").exists()


def test_whole_scenes_of_another_grid_than_their_file_are_not_taken_for_windows(case, tmp_path):
    """The window check compared the array with its file's shape only: a GCP GeoTIFF's overview (its GCPs scaled
    to it) was refused as a window. A transform written onto a rotated rioxarray scene (its xc / yc left as they
    were) is the one placed, with a warning, not the stale coordinates'."""
    import rasterio
    import rioxarray
    from affine import Affine
    from rasterio.enums import Resampling

    cube, model, _ = case
    path = _gcp_scene(tmp_path / "gcp.tif", cube)
    with rasterio.open(path, "r+") as f:
        f.build_overviews([2], Resampling.average)
    ovr = rioxarray.open_rasterio(path, overview_level=0)
    assert ovr.sizes["y"] < cube.shape[1]
    labels = classify(ovr, model, progress=False)
    assert [(g.row, g.col) for g in labels.rio.get_gcps()] == [(g.row, g.col) for g in ovr.rio.get_gcps()]
    t = Affine.translation(366000, 5810000) * Affine.rotation(30) * Affine.scale(30, -30)
    rot = rioxarray.open_rasterio(_write_rotated(tmp_path / "rot.tif", cube, t))
    moved = Affine.translation(1000, 0) * t
    with pytest.warns(UserWarning, match="disagrees with its xc / yc coordinates.*placed by the stored transform"):
        labels = classify(rot.rio.write_transform(moved), model, progress=False)
    assert labels.rio.transform().almost_equals(moved)


def test_a_strided_window_one_pixel_wide_is_placed_at_its_own_pixel_size(geo, tmp_path):
    """One column of every third row: the map kept the whole scene's 30 m row height (a 5-row map 150 m tall
    where its rows lie 90 m apart), as a one-pixel-wide window was never checked against its coordinates."""
    import rioxarray
    from affine import Affine

    cube = geo.make_cube(height=15, width=10)
    model = make_model(geo.BANDS, cube=cube)
    t = Affine.translation(366000, 5810000) * Affine.scale(30, -30)
    path = _write_rotated(tmp_path / "north.tif", cube, t)
    da = rioxarray.open_rasterio(path)
    for win, step in ((da.isel(x=slice(4, 5), y=slice(0, None, 3)), (30, -90)),
                      (da.isel(y=slice(3, 4), x=slice(1, None, 2)), (60, -30))):
        got = classify(win, model, progress=False).rio.transform()
        assert (got.a, got.e) == pytest.approx(step)
        for r in range(win.sizes["y"]):  # every map pixel's centre on its source pixel's centre
            assert got * (0.5, r + 0.5) == pytest.approx((float(win.x[0]), float(win.y[r])))


def test_a_one_row_window_of_a_scene_without_a_stored_transform_keeps_its_pixel_size(geo, tmp_path):
    """A scene placed by its x/y coordinates alone (a CF file from a non-GDAL tool, coordinates + write_crs) has
    no stored transform; one row (or column) of it took rioxarray's fallback pixel size, 1: the map was 1 m tall,
    south-up, with a warning blaming a stale GeoTransform. The other axis's pixel size is taken, and said."""
    import rasterio

    cube = geo.make_cube(height=15, width=10)
    model = make_model(geo.BANDS, cube=cube)
    da = xr.DataArray(cube, dims=("band", "y", "x"),
                      coords={"y": 4500000.0 - 20 * (np.arange(15) + 0.5), "x": 600000.0 + 20 * (np.arange(10) + 0.5)})
    da = da.rio.write_crs("EPSG:32616")
    assert "GeoTransform" not in da["spatial_ref"].attrs
    for win, centre in ((da.isel(y=slice(5, 6)), (600010.0, 4499890.0)), (da.isel(x=slice(3, 4)), (600070.0,
                                                                                                    4499990.0))):
        with pytest.warns(UserWarning, match=r"stores no GeoTransform, so its pixel size along [xy] is unknown: "
                                             r"taken as its [xy] pixel size \(20, square pixels\)"):
            out = classify_to_file(win, model, tmp_path / f"w{win.sizes['y']}.tif", progress=False)
        with rasterio.open(out) as f:
            assert (f.transform.a, f.transform.e) == (20.0, -20.0)
            assert f.transform * (0.5, 0.5) == pytest.approx(centre)
    from hsi_engine.errors import IrregularGridError

    with pytest.raises(IrregularGridError, match="x coordinates are not evenly spaced"):  # still checked
        classify_to_file(da.isel(y=slice(5, 6), x=[0, 1, 2, 7, 8, 9]), model, tmp_path / "gap.tif", progress=False)
    # one pixel: no pixel size to take, and rioxarray's fallback read the identity (the GeoTIFF's pixel lay at
    # (0.5, 0.5) of the CRS); it is centred on its coordinates, and said
    one = da.isel(y=slice(5, 6), x=slice(3, 4))
    with pytest.warns(UserWarning, match=r"one pixel and stores no GeoTransform, so its pixel size is unknown: the "
                                         r"map's pixel is centred on its coordinates \(600070, 4\.49989e\+06\)"):
        out = classify_to_file(one, model, tmp_path / "one.tif", progress=False)
    with rasterio.open(out) as f:
        assert f.transform * (0.5, 0.5) == pytest.approx((600070.0, 4499890.0)) and f.transform.e < 0


def test_a_rotated_scene_without_a_crs_keeps_its_transform(case, tmp_path):
    """A rotated GeoTIFF with no CRS lost its transform (the map was written in pixel coordinates): it keeps it,
    with no CRS, and the warning says so."""
    import rasterio
    from affine import Affine

    cube, model, _ = case
    t = Affine.translation(366000, 5810000) * Affine.rotation(30) * Affine.scale(30, -30)
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", height=cube.shape[1], width=cube.shape[2], count=cube.shape[0],
                       dtype="float32", transform=t) as dst:
        dst.write(cube.astype(np.float32))
    with pytest.warns(UserWarning, match="placed by the scene's rotated transform, with no CRS"):
        out = classify_to_file(path, model, tmp_path / "map.tif", progress=False)
    with rasterio.open(out) as f:
        assert f.transform.almost_equals(t) and f.crs is None


def test_integer_dtypes_converted_without_overflow(case):
    cube, model, ref = case
    scaled = np.clip(cube, 0, None).astype(np.uint16)
    m = make_model(cube.shape[0], cube=scaled)
    ref16 = reference_labels(m, scaled)
    np.testing.assert_array_equal(classify(scaled, m, tile=6, progress=False).values, ref16)
    np.testing.assert_array_equal(classify(scaled.astype(np.int64), m, tile=6, progress=False).values, ref16)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_georeferencing_round_trip(geo, tmp_path, suffix):
    import rasterio
    import rioxarray

    cube = geo.make_cube(height=18, width=15)
    src = geo.write_geotiff(tmp_path / "scene.tif", cube, nodata=None)
    model = make_model(geo.BANDS, cube=cube)
    mdir = save_model(model, tmp_path / "model")
    out = classify_to_file(src, mdir, tmp_path / f"map{suffix}", tile=8, progress=False)
    ref = reference_labels(load_model(mdir), cube)
    scene = hsi_engine.open_scene(src)
    if suffix == ".tif":
        with rasterio.open(out) as f:
            assert f.crs.to_string() == geo.CRS
            assert tuple(f.transform)[:6] == geo.TRANSFORM
            assert f.nodata == 0
            np.testing.assert_array_equal(f.read(1), ref)
        back = rioxarray.open_rasterio(out).squeeze("band", drop=True)
    else:
        back = _zarr_labels(out)
        np.testing.assert_array_equal(back.values, ref)
    assert back.rio.crs.to_string() == geo.CRS
    assert tuple(back.rio.transform())[:6] == geo.TRANSFORM
    np.testing.assert_allclose(back["y"].values, scene["y"].values)
    np.testing.assert_allclose(back["x"].values, scene["x"].values)


def _zarr_labels(path):
    ds = xr.open_zarr(path)
    name = next(v for v in ("labels", "class", "classes", "class_map") if v in ds.data_vars)
    return ds[name].load()


def test_missing_georeferencing_warns(geo, tmp_path):
    cube = geo.make_cube(height=9, width=9)
    model = make_model(geo.BANDS, cube=cube)
    with pytest.warns(UserWarning, match=r"scene \(in memory\) has no georeferencing .* in pixel coordinates"):
        classify_to_file(cube, model, tmp_path / "m.zarr", progress=False)
    # projected coordinates without a CRS: the map is placed by them (the warning said 'pixel coordinates')
    y, x = geo.pixel_centres(9, 9)
    placed = xr.DataArray(cube, dims=("band", "y", "x"), coords={"y": y, "x": x})
    with pytest.warns(UserWarning, match=r"no CRS\): the class map is placed by the scene's x/y coordinates"):
        classify_to_file(placed, model, tmp_path / "p.tif", progress=False)
    import rasterio

    with rasterio.open(tmp_path / "p.tif") as f:
        assert f.crs is None and f.transform.c == pytest.approx(geo.TRANSFORM[2])
    # a level-1 scene placed by RPCs: the advice to set a CRS with -a_ullr was wrong; the map cannot carry them
    from rasterio.rpc import RPC

    rpc = RPC(height_off=50, height_scale=100, lat_off=52.39, lat_scale=0.01, line_den_coeff=[1] + [0] * 19,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_off=4, line_scale=4, long_off=13.05, long_scale=0.01,
              samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=4, samp_scale=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "rpc.tif", "w", driver="GTiff", height=9, width=9, count=cube.shape[0],
                           dtype="float32", rpcs=rpc) as dst:
            dst.write(cube.astype(np.float32))
    with pytest.warns(UserWarning, match=r"rpc.tif is placed by RPCs .*gdalwarp -rpc"):
        classify_to_file(tmp_path / "rpc.tif", model, tmp_path / "rpcmap.tif", progress=False)
    # a scene opened from a file names it, however it was opened (--variable, --band-axis: scene_path is None)
    path = tmp_path / "nogeo.nc"
    xr.DataArray(cube, dims=("band", "y", "x"), name="cube_a").to_dataset().to_netcdf(path)
    scene = hsi_engine.open_scene(path, variable="cube_a")
    with pytest.warns(UserWarning, match=rf"scene {re.escape(str(path))} has no georeferencing"):
        classify_to_file(scene, model, tmp_path / "n.zarr", progress=False)


def test_bad_input_leaves_no_output(case, tmp_path):
    cube, model, _ = case
    bad = cube.copy()
    bad[0, 12, 12] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NonFiniteInputError):
            classify_to_file(bad, model, tmp_path / "m.tif", tile=4, progress=False)
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("spelling", ["m.zarr/.", "M.ZARR", "m.zarr/"])
def test_every_spelling_of_a_zarr_output_takes_the_resumable_path(case, tmp_path, spelling):
    """The writer goes by the suffix pathlib resolves; the resumable path was chosen by the text's ending, so
    'm.zarr/.' (as Windows' 'maps\\m.zarr\\') wrote a .zarr map without the completion record --resume needs."""
    import zarr

    cube, model, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = classify_to_file(cube, model, str(tmp_path) + "/" + spelling, tile=8, progress=False)
    assert out.name == spelling.rstrip("/.") and "resume" in zarr.open_group(str(out), mode="r")



def test_bad_precision_is_refused_before_anything_is_read():
    import dask.array as dsa

    from hsi_engine.api import _Job

    scene = xr.DataArray(dsa.zeros((12, 50, 50), chunks=(12, 25, 25), dtype=np.float32), dims=("band", "y", "x"))
    with pytest.raises(ValueError, match="precision must be one of"):
        _Job(scene, make_model(12, meta=False), tile=None, device="cpu", backend="auto", precision="int8",
             nodata=None)


def test_spatial_precision_reaches_the_engine_and_bad_pairs_are_refused(tmp_path, capsys):
    """``spatial_precision`` through classify and the CLI: a float32 run refuses a lower spatial stage before
    anything is read or written; a bf16 run may keep its spatial stage in float32 (one map on any host)."""
    from hsi_engine.api import _Job
    from hsi_engine.cli import main

    from test_runner import _cube, _model

    cube = _cube(np.float32, h=12, w=14)
    model = _model(stats=True)
    with pytest.raises(ValueError, match="spatial_precision must be 'auto', 'float32' or the engine's precision"):
        classify(cube, model, spatial_precision="bfloat16", progress=False)
    job = _Job(cube, model, tile=8, device="cpu", backend="eager", precision="bfloat16", nodata=None,
               spatial_precision="float32")
    assert job.engine().spatial_precision == "float32"
    save_model(model, tmp_path / "model")

    xr.DataArray(cube, dims=("band", "y", "x"), name="r").to_netcdf(tmp_path / "s.nc")
    base = ["classify", str(tmp_path / "s.nc"), "--model", str(tmp_path / "model"), "--tile", "8"]
    assert main(base + ["--out", str(tmp_path / "bad.tif"), "--spatial-precision", "bfloat16"]) == 2
    assert "--spatial-precision bfloat16 needs --precision bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "bad.tif").exists()
    assert main(base + ["--out", str(tmp_path / "ok.tif"), "--precision", "bfloat16",
                        "--spatial-precision", "float32"]) == 0
    import rasterio

    with rasterio.open(tmp_path / "ok.tif") as f:
        got = f.read(1)
    want = classify(cube, model, tile=8, precision="bfloat16", spatial_precision="float32", progress=False)
    np.testing.assert_array_equal(got, want.values)


def test_real_enmap_tile_bad_bands_do_not_mask_the_scene(data_dir):
    """A real EnMAP L2A tile (bands 130-135 are nodata, -32768, in every pixel; their bbl is 0): every pixel is
    classified, none masked, and with the bbl coordinate dropped every pixel is masked (the mask is what changed)."""
    scene = hsi_engine.open_scene(data_dir / "enmap_potsdam" / "images" / "enmap_potsdam_tile_128_0.tif")
    model = make_model(224, meta=False)
    out = classify(scene, model, tile=16, progress=False)
    assert out.rio.crs.to_epsg() == 32633
    assert (out.values > 0).all()
    assert (classify(scene.drop_vars("bbl"), model, tile=16, progress=False).values == 0).all()


@pytest.mark.parametrize("name", ["map.tif", "map.zarr"])
def test_an_ungeoreferenced_scene_is_warned_about_once_and_the_output_logged(case, tmp_path, name, caplog):
    cube, model, ref = case
    with warnings.catch_warnings(record=True) as seen, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        path = classify_to_file(cube, model, tmp_path / name, tile=8, progress=False)
    georef = [w for w in seen if "georeferencing" in str(w.message)]
    assert len(georef) == 1, [str(w.message) for w in georef]
    assert any(r.getMessage().startswith(f"wrote {path}") for r in caplog.records)


@pytest.mark.parametrize("name", ["map.tif", "map.zarr"])
def test_a_scene_without_crs_is_placed_by_its_float32_coordinates(case, geo, tmp_path, name):
    """No CRS, float32 x/y coordinates of a 2.7e-4 degree grid (which step unevenly by their precision): the map
    lies where the warning says, on those coordinates; it was written with the identity transform."""
    import rasterio

    cube, model, ref = case
    x = (np.float32(-86.9) + np.float32(2.7e-4) * np.arange(cube.shape[2], dtype=np.float32)).astype(np.float32)
    y = (np.float32(40.6) - np.float32(2.7e-4) * np.arange(cube.shape[1], dtype=np.float32)).astype(np.float32)
    assert np.ptp(np.diff(x.astype(np.float64))) > 1e-6 * 2.7e-4  # uneven steps, as float32 stores them
    da = geo.cube_dataarray(cube, crs=None).assign_coords(x=x, y=y)
    with pytest.warns(UserWarning, match="placed by the scene's x/y coordinates"):
        path = classify_to_file(da, model, tmp_path / name, tile=8, progress=False)
    if name.endswith(".tif"):
        with rasterio.open(path) as f:
            t, got = f.transform, f.read(1)
    else:
        out = xr.open_zarr(path)
        t, got = out.rio.transform(), out["classes"].values
    np.testing.assert_array_equal(got, ref)
    dx, dy = (float(x[-1]) - float(x[0])) / (x.size - 1), (float(y[-1]) - float(y[0])) / (y.size - 1)
    assert tuple(t)[:6] == pytest.approx((dx, 0, float(x[0]) - dx / 2, 0, dy, float(y[0]) - dy / 2), rel=1e-9)


def test_warnings_point_at_the_callers_line_on_every_path(tmp_path):
    """The engine's warnings name the user's line, however many of its own frames lie between (the resumable
    path adds cluster frames; a fixed stacklevel pointed into hsi_engine/cluster.py there)."""
    import inspect

    cube = np.random.default_rng(0).integers(0, 100, (12, 6, 5)).astype(np.uint16)
    np.save(tmp_path / "s.npy", np.moveaxis(cube, 0, -1))
    bare = SSRN(SSRNConfig(bands=12, classes=CLASSES)).eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        hsi_engine.classify_to_file(tmp_path / "s.npy", bare, tmp_path / "m.zarr", resume=True, progress=False)
    assert seen and all(w.filename == __file__ and w.lineno == line for w in seen), \
        [(w.filename, w.lineno, str(w.message)[:40]) for w in seen]


def _gcp_scene(path, cube):
    """A GeoTIFF placed by 5 GCPs of an affine relation (x = 366000 + 30 col + 3 row, y = 5810000 - 30 row), so
    any pixel position can be checked against it."""
    import rasterio
    from rasterio.control import GroundControlPoint

    h, w = cube.shape[1:]
    gcps = [GroundControlPoint(r, c, 366000.0 + 30 * c + 3 * r, 5810000.0 - 30 * r, id=str(i))
            for i, (r, c) in enumerate([(0, 0), (0, w), (h, 0), (h, w), (h / 2, w / 2)])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=cube.shape[0],
                           dtype="float32") as dst:
            dst.write(cube.astype(np.float32))
            dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(32633))
    return path


def _placed_at(gcps, dy: float, dx: float) -> None:
    """Every GCP of a window starting at source pixel (dy, dx) names the ground point of the source pixel."""
    for g in gcps:
        r, c = g.row + dy, g.col + dx
        assert (g.x, g.y) == pytest.approx((366000.0 + 30 * c + 3 * r, 5810000.0 - 30 * r)), (g.row, g.col)


def test_a_window_of_a_gcp_scene_gives_a_map_placed_where_the_window_lies(case, tmp_path):
    """isel on a scene placed by ground control points kept the file's GCPs: the map of rows 4.. was placed as if
    it began at row 0 (4 pixels = 120 m off, silently). The GCPs now move with the window, in memory, through
    write_classmap, and into a file. (The map then carries its own GCPs, as rioxarray expects: a window of the
    map is rioxarray's to place, as for any GCP array.)"""
    import rasterio

    cube, model, ref = case
    scene = hsi_engine.open_scene(_gcp_scene(tmp_path / "gcp.tif", cube))
    win = scene.isel(y=slice(4, 12), x=slice(3, 11))
    labels = classify(win, model, progress=False)
    _placed_at(labels.rio.get_gcps(), 4, 3)
    from hsi_engine.writers import write_classmap

    out = write_classmap(labels, tmp_path / "mem.tif")
    with rasterio.open(out) as f:
        _placed_at(f.gcps[0], 4, 3)  # the map's own GCPs, not moved a second time
    for name in ("map.tif", "map.zarr"):
        path = hsi_engine.classify_to_file(win, model, tmp_path / name, progress=False)
        if name.endswith(".tif"):
            with rasterio.open(path) as f:
                _placed_at(f.gcps[0], 4, 3)
                assert f.transform.is_identity
        else:
            ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
            _placed_at(ds["classes"].rio.get_gcps(), 4, 3)
    _placed_at(hsi_engine.io.scene_gcps(scene), 0, 0)  # the whole scene: the file's own


def test_an_irregular_selection_of_a_gcp_scene_is_refused(case, tmp_path):
    from hsi_engine.errors import SceneError

    cube, model, _ = case
    scene = hsi_engine.open_scene(_gcp_scene(tmp_path / "gcp.tif", cube))
    with pytest.raises(SceneError, match=r"y pixels were selected irregularly \(source_row runs 0, 1, 5.*slice"):
        hsi_engine.classify_to_file(scene.isel(y=[0, 1, 5, 6]), model, tmp_path / "map.tif", progress=False)
    assert not (tmp_path / "map.tif").exists()


def test_a_saved_window_of_a_gcp_scene_keeps_its_place_and_its_map_reprojects(case, tmp_path):
    """A window written to NetCDF/zarr keeps source_row/source_col beside the file's GCPs: reopened, it is placed
    where it lies (open_scene numbered it from 0 again: 4 rows off). The map carries its own GCPs only, so
    rioxarray can orthorectify it (1-D coords along y/x made rio.reproject fail)."""
    from rasterio.enums import Resampling

    cube, model, _ = case
    scene = hsi_engine.open_scene(_gcp_scene(tmp_path / "gcp.tif", cube))
    win = scene.isel(y=slice(4, 12), x=slice(3, 11))
    win.to_dataset(name="radiance").to_zarr(tmp_path / "win.zarr", zarr_format=3, consolidated=False)
    again = hsi_engine.open_scene(tmp_path / "win.zarr")
    _placed_at(hsi_engine.io.scene_gcps(again), 4, 3)
    labels = classify(again, model, progress=False)
    _placed_at(labels.rio.get_gcps(), 4, 3)
    assert "source_row" not in labels.coords
    ortho = labels.rio.reproject("EPSG:32633", resampling=Resampling.nearest)
    assert ortho.rio.transform().a == pytest.approx(30.0, rel=0.2) and ortho.rio.crs.to_epsg() == 32633


@pytest.mark.parametrize("package", ["hsi_engine", "ssrn"])
def test_the_lazy_packages_give_every_public_name_and_submodule(package):
    """``import hsi_engine`` / ``import ssrn`` load names on first use: each of ``__all__`` resolves, and each
    submodule is an attribute (``hsi_engine.api``, ``ssrn.data``) as when the packages imported everything."""
    import importlib
    from pathlib import Path

    pkg = importlib.import_module(package)
    files = {p.stem for p in Path(pkg.__file__).parent.glob("*.py")} - {"__init__", "__main__"}  # (python -m's)
    assert files <= set(dir(pkg))  # a new module is reachable too
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
    for name in files:
        assert getattr(pkg, name).__name__ == f"{package}.{name}"
    assert set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="nothing_here"):
        pkg.nothing_here


def test_every_error_is_public_and_the_version_is_the_installed_one():
    """``except hsi_engine.IrregularGridError`` works for every error the engine raises (three were reachable only
    through ``hsi_engine.errors``), and ``__version__`` / ``hsi-engine --version`` give the installed version."""
    from importlib.metadata import version

    import hsi_engine
    from hsi_engine import errors
    from hsi_engine.cli import main

    assert set(errors.__all__) <= set(hsi_engine.__all__)
    for name in errors.__all__:
        assert getattr(hsi_engine, name) is getattr(errors, name)
    assert hsi_engine.__version__ == version("hsi-engine")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0


def test_a_stale_geotransform_is_overruled_by_the_coordinates(tmp_path, geo):
    """A scene flipped with ``isel(y=slice(None, None, -1))`` keeps a north-up GeoTransform while its y runs
    upwards: the map was written with that transform, flipped and off the ground. The coordinates place it, with
    a warning; a consistent scene (north-up, or south-up with its own transform) gives no warning."""
    import rasterio
    from rasterio.transform import from_origin

    cube = geo.make_cube(height=12, width=10)
    model = make_model(geo.BANDS, cube=cube)
    da = xr.DataArray(cube, dims=("band", "y", "x")).assign_coords(
        y=366000 - 30 * (np.arange(12) + 0.5), x=500000 + 30 * (np.arange(10) + 0.5))
    da = da.rio.write_crs("EPSG:32633").rio.write_transform(from_origin(500000, 366000, 30, 30))
    flipped = da.isel(y=slice(None, None, -1))
    with pytest.warns(UserWarning, match=r"rows run upwards .* a flip, isel\(y=slice\(None, None, -1\)\)"):
        classify_to_file(flipped, model, tmp_path / "flipped.tif", progress=False)
    with rasterio.open(tmp_path / "flipped.tif") as f:
        assert tuple(f.transform)[:6] == pytest.approx((30, 0, 500000, 0, 30, 366000 - 12 * 30))
    # the in-memory map kept the scene's spatial_ref, stale GeoTransform and all: rio.transform() read it
    with pytest.warns(UserWarning, match="rows run upwards"):
        labels = classify(flipped, model, progress=False)
    assert tuple(labels.rio.transform())[:6] == pytest.approx((30, 0, 500000, 0, 30, 366000 - 12 * 30))
    consistent = flipped.rio.write_transform(flipped.rio.transform(recalc=True))
    # a strided or offset window keeps rioxarray's whole-scene GeoTransform: a window of the grid, nothing stale
    strided = da.isel(x=slice(1, None, 2), y=slice(2, 11))
    for scene, name in ((da, "north.tif"), (consistent, "south.tif"), (strided, "strided.tif")):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*(disagrees with its x/y|rows run upwards)")
            classify_to_file(scene, model, tmp_path / name, progress=False)


def test_write_classmap_refuses_a_map_on_irregular_coordinates(geo, tmp_path):
    """write_classmap (the demo's writer) wrote a map whose x had columns dropped with the scene's stale
    GeoTransform, 300 m off, silently, where classify_to_file refuses it: it refuses it too."""
    from hsi_engine.errors import IrregularGridError
    from hsi_engine.writers import write_classmap

    labels = xr.DataArray(np.ones((6, 12), np.uint8), dims=("y", "x")).assign_coords(
        y=366000 - 30 * (np.arange(6) + 0.5), x=500000 + 30 * (np.arange(12) + 0.5))
    labels = labels.rio.write_crs("EPSG:32633").rio.write_transform(labels.rio.transform(recalc=True))
    cut = labels.isel(x=np.r_[0:4, 8:12])
    with pytest.raises(IrregularGridError, match="x coordinates are not evenly spaced"):
        write_classmap(cut, tmp_path / "cut.tif")
    # one column dropped in the middle: every pixel within half a pixel of the mean grid, yet a stretched map
    with pytest.raises(IrregularGridError, match=r"x coordinates are not evenly spaced \(steps from 30 to 60"):
        write_classmap(labels.isel(x=np.r_[0:6, 7:12]), tmp_path / "cut.tif")
    three = labels.assign_coords(x=500000 + 3 * np.arange(12))  # whole metres: told from rounding at 3 m
    with pytest.raises(IrregularGridError, match=r"x coordinates are not evenly spaced \(steps from 3 to 6"):
        write_classmap(three.isel(x=np.r_[0:6, 7:12]), tmp_path / "cut.tif")
    assert not (tmp_path / "cut.tif").exists()
    assert write_classmap(labels, tmp_path / "ok.tif").exists()


def test_irregular_coordinates_are_refused_for_a_file_and_warned_in_memory(geo, tmp_path):
    """Columns dropped with ``isel(x=np.r_[0:4, 8:12])``: the map got one transform averaged from the first and
    last coordinates (a 45 m pixel for 30 m, pixels 60 m off), silently. A file output is refused before any
    tile; the in-memory map keeps the true coordinates and warns that no transform places it."""
    from hsi_engine.errors import IrregularGridError

    cube = geo.make_cube(height=8, width=12)
    model = make_model(geo.BANDS, cube=cube)
    y, x = geo.pixel_centres(8, 12)
    da = xr.DataArray(cube, dims=("band", "y", "x"), coords={"y": y, "x": x}).rio.write_crs("EPSG:32633")
    gappy = da.isel(x=np.r_[0:4, 8:12])
    with pytest.raises(IrregularGridError, match=r"its x coordinates are not evenly spaced \(steps from 30 to 150"):
        classify_to_file(gappy, model, tmp_path / "gap.tif", progress=False)
    with pytest.raises(IrregularGridError, match=r"its x coordinates are not evenly spaced \(steps from 30 to 60"):
        classify_to_file(da.isel(x=np.r_[0:6, 7:12]), model, tmp_path / "gap.tif", progress=False)  # the middle one
    assert list(tmp_path.iterdir()) == []
    # without a CRS too: the file was written in pixel coordinates, under a warning that said the coordinates placed it
    with pytest.raises(IrregularGridError, match=r"its x coordinates are not evenly spaced"):
        classify_to_file(gappy.drop_vars("spatial_ref"), model, tmp_path / "gap.tif", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="no transform can place it"):
        labels = classify(gappy, model, progress=False)
    np.testing.assert_array_equal(labels["x"].values, gappy["x"].values)
    with warnings.catch_warnings():  # a strided window is evenly spaced: placed, no warning
        warnings.filterwarnings("error", message=".*not evenly spaced")
        classify_to_file(da.isel(x=slice(0, None, 2)), model, tmp_path / "strided.tif", progress=False)
    # a regular grid stored imprecisely is still one: float32 lon/lat of ~1 m pixels (steps vary by the float32
    # spacing, 30 % of a step) and UTM coordinates rounded to whole metres at 2.5 m pixels (steps 2 and 3)
    lat = (45.0 - 1e-5 * (np.arange(8) + 0.5)).astype(np.float32)
    lon = (120.0 + 1.3e-5 * (np.arange(12) + 0.5)).astype(np.float32)
    assert np.ptp(np.diff(lon.astype(np.float64))) > 0.2 * 1.3e-5
    rounded = np.round(500000 + 2.5 * np.arange(12))
    for name, x_, y_, crs in (("f32.tif", lon, lat, "EPSG:4326"), ("round.tif", rounded, np.round(y), "EPSG:32633")):
        ok = xr.DataArray(cube, dims=("band", "y", "x"), coords={"y": y_, "x": x_}).rio.write_crs(crs)
        classify_to_file(ok, model, tmp_path / name, progress=False)
    # NaN coordinates: one clear error, not a NaN transform (nor 'steps from nan to nan')
    with pytest.raises(IrregularGridError, match=r"its x coordinates hold NaN or inf"):
        classify_to_file(da.assign_coords(x=np.r_[np.nan, x[1:]]), model, tmp_path / "nan.tif", progress=False)


@pytest.mark.parametrize("fmt", ["netcdf", "envi"])  # (ENVI through the GeoTIFF reader; HDF5 opens per read)
def test_a_scene_opened_from_a_path_is_closed_when_the_run_ends(make_scene, tmp_path, case, fmt):
    """A service classifying files in a loop held every scene open (a deleted one's disk space too) until a
    garbage collection: a scene the run opened from its path is closed when it returns or fails."""
    import os

    _, model, _ = case

    def open_files() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [n for n in names if str(tmp_path) in n]

    path = make_scene(fmt)
    classify(path, model, progress=False, tile=32)
    classify_to_file(path, model, tmp_path / "m.tif", progress=False, tile=32)
    classify_to_file(path, model, tmp_path / "m.zarr", progress=False, tile=32, resume=True)
    with pytest.raises(HSIEngineError, match="already exists"):  # a failed run closes it too
        classify_to_file(path, model, tmp_path / "m.tif", progress=False, tile=32)
    assert open_files() == []


def test_longitudes_that_wrap_are_named_with_the_fix_that_works(case, geo, tmp_path):
    """A 0..360 grid crossing the prime meridian (359.99 -> 0.01) was refused as 'columns dropped with isel?'; the
    error names the wrap and a fix, which then places the map."""
    cube, model, _ = case
    da = geo.cube_dataarray(cube)
    w = da.sizes["x"]
    lon = (359.99 - 0.002 * (w // 2) + 0.002 * np.arange(w)) % 360
    lat = 52.0 - 0.002 * np.arange(da.sizes["y"])
    scene = xr.DataArray(da.values, dims=("band", "y", "x"), coords={"y": lat, "x": lon}).rio.write_crs("EPSG:4326")
    fix = r"scene\.assign_coords\(x=\(scene\.x \+ 180\) % 360 - 180\)"
    wrap = r"longitudes wrap around \(from 360 to 0 degrees\).*"
    with pytest.raises(hsi_engine.IrregularGridError, match=wrap + fix):
        classify_to_file(scene, model, tmp_path / "w.tif", progress=False)
    fixed = scene.assign_coords(x=(scene.x + 180) % 360 - 180)
    out = classify_to_file(fixed, model, tmp_path / "w.tif", progress=False)
    import rasterio

    with rasterio.open(out) as f:
        assert f.transform.c == pytest.approx(float(fixed.x[0]) - 0.001, abs=1e-6)


def test_a_returned_map_does_not_read_the_scene_file_it_came_from(case, geo, tmp_path):
    """The scene opened from a path is closed when classify returns: a swath's 2-D lat/lon, lazy coordinates of
    the scene, then reopened the file (or failed once it was deleted) when the map's coordinates were read."""
    import os

    cube, model, _ = case
    h, w = cube.shape[1:]
    lat = 52.0 + 0.001 * np.add.outer(np.arange(h), np.arange(w) * 0.1)
    ds = xr.Dataset({"reflectance": (("band", "y", "x"), cube)},
                    coords={"lat": (("y", "x"), lat), "lon": (("y", "x"), 13.0 + 0.001 * lat)})
    path = tmp_path / "swath.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    out = classify(path, model, progress=False, probabilities=True)
    os.remove(path)  # a service deletes the scene it classified
    np.testing.assert_allclose(out["lat"].values, lat)
    np.testing.assert_allclose(out["labels"]["lon"].values, 13.0 + 0.001 * lat)


def test_a_strided_window_is_placed_without_affines_deprecated_operator(geo, tmp_path):
    """affine 3 warns on ``*``; under a filter making that warning an error (a test suite's usual setting) the
    window check swallowed it and warned that a correct strided window's transform was stale."""
    import warnings

    from affine import Affine

    cube = geo.make_cube(height=12, width=12)
    model = make_model(geo.BANDS, cube=cube)
    t = Affine.translation(366000, 5810000) * Affine.scale(30, -30)
    win = hsi_engine.open_scene(_write_rotated(tmp_path / "north.tif", cube, t)).isel(y=slice(0, 12, 2), x=slice(0, 12, 2))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("error", category=PendingDeprecationWarning, module="hsi_engine")
        got = classify(win, model, progress=False).rio.transform()
    assert (got.a, got.e) == pytest.approx((60, -60))
    assert not [w for w in seen if "disagrees" in str(w.message)]


def test_the_packages_are_marked_typed_for_type_checkers():
    """Without a ``py.typed`` in the wheel mypy read every hsi_engine, ssrn and kernels name as Any."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for pkg in ("hsi_engine", "ssrn", "kernels"):
        assert (repo / pkg / "py.typed").is_file() and "py.typed" in data[pkg]


def test_a_band_scale_and_offset_other_than_the_training_scenes_is_named(tmp_path, case):
    """GDAL band scales/offsets are not applied (values are read as stored), so the same reflectance stored
    another way gave another map without a word: a model recording its training scene's (``hsi-engine train``
    does) names a scene declaring others (an error on the command line); one recording none hears of an offset
    only, and in-memory attrs (maybe CF packing, told of elsewhere) only where the model records some."""
    import rasterio
    from rasterio.transform import from_origin

    cube, model, _ = case
    bands = cube.shape[0]
    model.meta.update(scales=[1e-4] * bands, offsets=[0.0] * bands)

    def write(name, values, offset):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=values.shape[2], height=values.shape[1],
                           count=bands, dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(0, 0, 30, 30)) as dst:
            dst.write(values)
            dst.scales, dst.offsets = [1e-4] * bands, [offset] * bands
        return tmp_path / name

    same, shifted = write("a.tif", cube.astype(np.uint16), 0.0), write("b.tif", (cube + 1000).astype(np.uint16), -0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)  # rioxarray's affine use
        classify(same, model, progress=False)
        with pytest.raises(hsi_engine.UnnormalisedInputWarning, match=r"declares band scale 0.0001, offset -0.1, "
                           r"but the model's training scene declared scale 0.0001, offset 0 .*\(\(scene \* 0.0001 "
                           r"\+ -0.1 - 0\) / 0.0001 in Python\)"):
            classify(shifted, model, progress=False)
        attrs = xr.DataArray(cube.astype(np.uint16), dims=("band", "y", "x"),
                             attrs={"scale_factor": 1e-4, "add_offset": -0.1})  # rioxarray's in memory
        with pytest.raises(hsi_engine.UnnormalisedInputWarning, match="declares band scale 0.0001, offset -0.1"):
            classify(attrs, model, progress=False)
        model.meta["offsets"] = [0.0] * (bands - 1) + [-0.1]
        with pytest.raises(hsi_engine.UnnormalisedInputWarning, match=r"declared scale 0.0001, offset -0.1..0 "
                           r"\(per band\) .* like this one$"):
            classify(shifted, model, progress=False)
        model.meta["offsets"] = np.zeros(bands)  # numpy meta, as an in-memory model may hold
        model.meta["scales"] = np.full(bands, 1e-4)
        classify(same, model, progress=False)
        plain = write("plain.tif", cube.astype(np.uint16), 0.0)  # no scale (GDAL: 1 and 0): not compared, as a
        with rasterio.open(plain, "r+") as f:  # `rio merge` mosaic of the training tiles declares none
            f.scales = [1.0] * bands
        classify(plain, model, progress=False)
        del model.meta["scales"], model.meta["offsets"]  # a model from before they were recorded
        with pytest.raises(UserWarning, match="offset -0.1 .* records no scale/offset"):
            classify(shifted, model, progress=False)
        classify(same, model, progress=False)  # a scale alone: the scale check looks at the values
        classify(attrs, model, progress=False)
        model.meta.update(scales=[1.0] * bands, offsets=[0.0] * bands)  # recorded as none
        classify(same, model, progress=False)
    from hsi_engine.scene_checks import declared_scaling

    assert declared_scaling(hsi_engine.open_scene(plain)) is None


def test_a_missing_value_decoded_by_xarray_is_nodata(tmp_path, case):
    """A variable declaring only ``missing_value``, opened with ``xr.open_dataset`` (decoded to NaN; rioxarray reads
    only ``_FillValue``), was a NonFiniteInputError where its path was masked."""
    cube, model, _ = case
    held = cube.astype(np.int16)
    held[:, 3, 4] = -9999
    xr.Dataset({"r": (("band", "y", "x"), held, {"missing_value": np.int16(-9999)})}).to_netcdf(
        tmp_path / "mv.nc", engine="h5netcdf")
    by_path = classify(tmp_path / "mv.nc", model, progress=False).values
    decoded = classify(xr.open_dataset(tmp_path / "mv.nc", engine="h5netcdf"), model, progress=False).values
    assert by_path[3, 4] == 0
    np.testing.assert_array_equal(decoded, by_path)


def _model_with_a_zero_std(std0: bool):
    import torch
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN
    cfg = SSRNConfig.from_name("indian_pines")
    torch.manual_seed(0)
    m = SSRN(cfg).eval()
    std = [2.0] * cfg.bands
    if std0:
        std[5] = 0.0
    m.meta = {"mean": [1.0] * cfg.bands, "std": std}
    return m, cfg


def test_a_saved_std_of_0_loads_and_reads_as_1(tmp_path):
    import hsi_engine
    from ssrn.checkpoint import load_model, save_model
    m, cfg = _model_with_a_zero_std(std0=True)
    path = save_model(m, tmp_path / "m")
    loaded = load_model(path)  # (was refused: 'a standard deviation is >= 0')
    rng = np.random.default_rng(0)
    scene = rng.normal(3.0, 2.0, (cfg.bands, 9, 9)).astype(np.float32)
    scene[5] = 1.0  # the constant band, at its mean
    got = hsi_engine.classify(scene, loaded, progress=False).values
    m1 = load_model(path)
    m1.meta["std"] = [1.0 if s == 0 else s for s in m1.meta["std"]]
    want = hsi_engine.classify(scene, m1, progress=False).values
    np.testing.assert_array_equal(got, want)  # (raised NonFiniteInputError: a division by 0)
