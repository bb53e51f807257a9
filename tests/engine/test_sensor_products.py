"""Agency products read as their specs declare them: PRISMA L2 HE5 (uint16 DN scaled by root L2Scale* attributes,
cubes stored (lines, bands, samples), wavelength lists and flags in root attributes), NEON AOP reflectance HDF5
(Data_Ignore_Value, Dimension_Labels, Metadata/Spectral_Data/Wavelength), Planet Tanager HDF5 (good_wavelengths),
and EMIT L2A NetCDF (a swath in sensor geometry; good_wavelengths once orthorectified). Each on a small mock-up of
the product's layout, written here with h5py / xarray."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import xarray as xr

import hsi_engine
from _scale_fixtures import BANDS, ip_crop, save_tiny_model
from hsi_engine.errors import MissingSpatialDimsError, SceneError, UnnormalisedInputWarning
from hsi_engine.io import open_scene
from hsi_engine.scene_checks import nodata_bands
from ssrn.normalise import declared_scaling

H, W = 40, 40
PRISMA_CUBES = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
VNIR = f"{PRISMA_CUBES}/VNIR_Cube"


def _strict_open(path, **kw) -> xr.DataArray:
    """``open_scene`` with every warning an error (a guessed band axis warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return open_scene(path, **kw)


# --- PRISMA L2 ------------------------------------------------------------------------------------------------------

def _prisma(path, dn: np.ndarray, *, vnir_max: float = 0.71, swir_bands: int = 7, flagged: int = 2):
    """A PRISMA L2D HE5 as the ASI spec lays it out: VNIR and SWIR uint16 cubes (lines, bands, samples) with error
    matrices of the same shape, wavelengths in root List_Cw_* (longest first, 0 where List_Cw_*_Flags is 0),
    reflectance = L2ScaleMin + DN * (L2ScaleMax - L2ScaleMin) / 65535. ``dn`` is the VNIR cube (band, y, x)."""
    bands = dn.shape[0]
    cw = np.concatenate([np.linspace(972.0, 402.0, bands - flagged), np.zeros(flagged)]).astype(np.float32)
    cw_s = np.linspace(2497.0, 942.0, swir_bands).astype(np.float32)
    with h5py.File(path, "w") as f:
        a = f.attrs
        a["Processing_Level"] = np.bytes_("2D")
        a["List_Cw_Vnir"], a["List_Cw_Vnir_Flags"] = cw, (cw > 0).astype(np.int8)
        a["List_Cw_Swir"], a["List_Cw_Swir_Flags"] = cw_s, np.ones(swir_bands, np.int8)
        a["L2ScaleVnirMin"], a["L2ScaleVnirMax"] = 0.0, vnir_max
        a["L2ScaleSwirMin"], a["L2ScaleSwirMax"] = 0.01, 0.63
        g = f.create_group(PRISMA_CUBES)
        g.create_dataset("VNIR_Cube", data=dn.transpose(1, 0, 2))
        g.create_dataset("VNIR_PIXEL_L2_ERR_MATRIX", data=np.zeros((H, bands, W), np.uint8))
        g.create_dataset("SWIR_Cube", data=np.ones((H, swir_bands, W), np.uint16))
        g.create_dataset("SWIR_PIXEL_L2_ERR_MATRIX", data=np.zeros((H, swir_bands, W), np.uint8))
        geo = f.create_group("HDFEOS/SWATHS/PRS_L2D_HCO/Geolocation Fields")
        geo.create_dataset("Latitude", data=np.full((H, W), 45.7, np.float32))
    return cw


def test_prisma_refusal_names_each_cube_with_its_band_axis(tmp_path):
    """Several cubes: the refusal names the VNIR and SWIR cubes and that their bands are on axis 1 (the length of
    their List_Cw_*), not only 'pass --variable' (which then took the samples for bands)."""
    _prisma(tmp_path / "p.he5", ip_crop(H, W))
    with pytest.raises(SceneError, match="expected one 3-D dataset") as e:
        open_scene(tmp_path / "p.he5")
    msg = str(e.value)
    assert f"--variable '{VNIR}' --band-axis 1" in msg and f"variable={VNIR!r}, band_axis=1" in msg
    assert "List_Cw_Vnir" in msg and "SWIR_Cube" in msg and "List_Cw_Swir" in msg
    assert "ERR_MATRIX' (" not in msg  # (named in the shapes, not offered as a cube)


def test_prisma_cube_reads_its_bands_wavelengths_flags_and_scaling(tmp_path):
    """--variable alone: bands on axis 1 (from List_Cw_Vnir's length, no guess, no warning), wavelengths with the
    flagged bands' 0 read as none, the flags as bbl, and L2ScaleVnirMin/Max kept as the band scale/offset that
    training records and classify compares (values read as stored DN, as GDAL's band scales are)."""
    dn = ip_crop(H, W)
    cw = _prisma(tmp_path / "p.he5", dn, flagged=2)
    s = _strict_open(tmp_path / "p.he5", variable=VNIR)
    assert s.dims == ("band", "y", "x") and s.shape == dn.shape and s.dtype == np.uint16
    np.testing.assert_array_equal(s.values, dn)
    np.testing.assert_array_equal(s["wavelength"].values[:-2], cw[:-2])
    assert np.isnan(s["wavelength"].values[-2:]).all()
    np.testing.assert_array_equal(s["bbl"].values, [1] * (BANDS - 2) + [0, 0])
    scales, offsets = declared_scaling(s)
    np.testing.assert_allclose(scales, 0.71 / 65535, rtol=1e-12)
    np.testing.assert_array_equal(offsets, 0.0)
    swir = _strict_open(tmp_path / "p.he5", variable=f"{PRISMA_CUBES}/SWIR_Cube")
    scales, offsets = declared_scaling(swir)
    np.testing.assert_allclose(scales, 0.62 / 65535, rtol=1e-12)
    np.testing.assert_allclose(offsets, 0.01)
    assert _strict_open(tmp_path / "p.he5", variable=VNIR, band_axis=1).shape == dn.shape


def test_prisma_product_on_another_scale_than_the_models_is_refused(tmp_path):
    """A model trained on one PRISMA product (L2ScaleVnirMax 0.55, recorded in its meta as training records it) given
    another's DN (0.71: the same DN mean 1.29x the reflectance) is told so, not classified as if they agreed; the same
    product's scale passes."""
    dn = ip_crop(H, W)
    _prisma(tmp_path / "a.he5", dn, vnir_max=0.55)
    _prisma(tmp_path / "b.he5", dn, vnir_max=0.71)
    trained = declared_scaling(open_scene(tmp_path / "a.he5", variable=VNIR))
    model = hsi_engine.load_model(save_tiny_model(tmp_path / "m", dn))
    model.meta["scales"], model.meta["offsets"] = (v.tolist() for v in trained)
    with pytest.warns(UnnormalisedInputWarning, match=r"declares band scale 1\.08\d*e-05, offset 0, but the model's "):
        hsi_engine.classify(open_scene(tmp_path / "b.he5", variable=VNIR), model, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)
        hsi_engine.classify(open_scene(tmp_path / "a.he5", variable=VNIR), model, progress=False)


def test_prisma_scaling_that_is_not_one_warns(tmp_path):
    _prisma(tmp_path / "p.he5", ip_crop(H, W), vnir_max=-1.0)
    with pytest.warns(UserWarning, match="L2ScaleVnirMin = 0.0 and L2ScaleVnirMax = -1.0 .* not PRISMA's L2 scaling"):
        s = open_scene(tmp_path / "p.he5", variable=VNIR)
    assert declared_scaling(s) is None


# --- NEON AOP ---------------------------------------------------------------------------------------------------

def _neon(path, cube: np.ndarray, wl: np.ndarray):
    """NEON's reflectance HDF5: SITE/Reflectance/Reflectance_Data (rows, cols, bands) int16 x 10000 with
    Data_Ignore_Value and Dimension_Labels; wavelengths in Metadata/Spectral_Data/Wavelength."""
    with h5py.File(path, "w") as f:
        g = f.create_group("NIWO/Reflectance")
        d = g.create_dataset("Reflectance_Data", data=cube.transpose(1, 2, 0), chunks=(H, W, 1))
        d.attrs["Data_Ignore_Value"] = -9999.0
        d.attrs["Scale_Factor"] = 10000.0
        d.attrs["Dimension_Labels"] = np.bytes_("Line, Sample, Wavelength")
        w = g.create_dataset("Metadata/Spectral_Data/Wavelength", data=wl)
        w.attrs["Units"] = np.bytes_("nanometers")
        g.create_dataset("Metadata/Spectral_Data/FWHM", data=np.full(wl.size, 5.0))
        g.create_dataset("Metadata/Ancillary_Imagery/Water_Vapor_Column", data=np.zeros((H, W), np.float32))


def test_neon_data_ignore_value_is_nodata(tmp_path):
    """A flight-line gap of -9999 away from the pixels the checks sample: class 0, as the declared value says (it was
    classified as land cover, exit 0); bands from Dimension_Labels, wavelengths from Metadata/Spectral_Data."""
    cube = ip_crop(H, W).astype(np.int16)
    cube[:, 10:20, 34:] = -9999
    wl = np.linspace(383.9, 2511.9, BANDS)
    _neon(tmp_path / "n.h5", cube, wl)
    s = _strict_open(tmp_path / "n.h5")
    assert s.dims == ("band", "y", "x") and s.shape == cube.shape
    np.testing.assert_array_equal(s.values, cube)
    assert s.attrs["_FillValue"] == -9999
    np.testing.assert_allclose(s["wavelength"].values, wl)
    model = hsi_engine.load_model(save_tiny_model(tmp_path / "m", ip_crop(H, W)))
    labels = hsi_engine.classify(s, model, progress=False).values
    assert (labels[10:20, 34:] == 0).all() and (labels[:10] != 0).all()


# --- Planet Tanager -----------------------------------------------------------------------------------------------

def _tanager(path, cube: np.ndarray, good: np.ndarray):
    """Tanager's ortho surface reflectance: HDFEOS/GRIDS/HYP/Data Fields/surface_reflectance (bands, y, x) float32
    with _FillValue -9999, wavelengths and good_wavelengths attributes."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("HDFEOS/GRIDS/HYP/Data Fields/surface_reflectance", data=cube, fillvalue=-9999.0)
        d.attrs["wavelengths"] = np.linspace(376.0, 2499.0, cube.shape[0]).astype(np.float32)
        d.attrs["good_wavelengths"] = good
        d.attrs["_FillValue"] = np.float32(-9999.0)
        f.create_dataset("HDFEOS/GRIDS/HYP/Data Fields/nodata_pixels", data=np.zeros(cube.shape[1:], np.uint8))


def test_tanager_good_wavelengths_is_the_bad_band_list(tmp_path):
    """Bad bands holding the fill in every pixel: good_wavelengths flags them (bbl), so the nodata test leaves them
    out and the map is not all class 0 (it was: every pixel nodata, exit 0). The band axis is the one of the
    'wavelengths' attribute's length, where the shape alone guessed the last axis."""
    cube = ip_crop(12, 10).astype(np.float32)  # (24, 12, 10): bands > samples, guessed as the band axis before
    good = np.ones(BANDS, np.uint8)
    good[[5, 6, 17]] = 0
    cube[good == 0] = -9999.0
    cube[:, :2, :2] = -9999.0
    _tanager(tmp_path / "t.h5", cube, good)
    s = _strict_open(tmp_path / "t.h5")
    assert s.shape == cube.shape
    np.testing.assert_array_equal(s["bbl"].values, good)
    np.testing.assert_array_equal(nodata_bands(s), np.flatnonzero(good))
    model = hsi_engine.load_model(save_tiny_model(tmp_path / "m", ip_crop(12, 10)))
    with pytest.warns(UserWarning, match="bbl flags bands 5-6, 17 .* bad, but the model was trained with data"):
        labels = hsi_engine.classify(s, model, progress=False).values
    assert (labels[:2, :2] == 0).all() and (labels != 0).sum() == 12 * 10 - 4


def test_good_wavelengths_of_another_length_warns(tmp_path):
    _tanager(tmp_path / "t.h5", ip_crop(12, 10).astype(np.float32), np.ones(BANDS - 1, np.uint8))
    with pytest.warns(UserWarning, match="'good_wavelengths' attribute lists 23 values for 24 bands"):
        s = open_scene(tmp_path / "t.h5")
    assert "bbl" not in s.coords


def test_a_band_axis_against_the_wavelength_list_names_the_axis_that_fits(tmp_path):
    _tanager(tmp_path / "t.h5", ip_crop(12, 10).astype(np.float32), np.ones(BANDS, np.uint8))
    with pytest.warns(UserWarning, match="lists 24 values for 10 bands; its axis 0 has that length: open it with "
                                         r".*band_axis=0 \(--variable .* --band-axis 0\)"):
        open_scene(tmp_path / "t.h5", band_axis=2)


# --- EMIT ---------------------------------------------------------------------------------------------------------

def _emit_l2a(path, bands: int = 8):
    """EMIT L2A RFL as LP DAAC ships it: 'reflectance' (downtrack, crosstrack, bands), sensor_band_parameters and
    location groups, the latter with the GLT (glt_x, glt_y) on the ortho grid."""
    import h5netcdf

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"downtrack": 12, "crosstrack": 10, "bands": bands, "ortho_y": 14, "ortho_x": 13}
        v = f.create_variable("reflectance", ("downtrack", "crosstrack", "bands"), "f4", fillvalue=-9999.0)
        v[...] = np.full((12, 10, bands), 0.2, np.float32)
        sbp = f.create_group("sensor_band_parameters")
        sbp.create_variable("wavelengths", ("bands",), "f4")[...] = np.linspace(381.0, 2493.0, bands)
        sbp.create_variable("good_wavelengths", ("bands",), "u1")[...] = 1
        loc = f.create_group("location")
        for k in ("glt_x", "glt_y"):
            loc.create_variable(k, ("ortho_y", "ortho_x"), "i4")[...] = 1


def test_emit_swath_is_refused_as_sensor_geometry_naming_its_glt(tmp_path):
    _emit_l2a(tmp_path / "EMIT_L2A_RFL.nc")
    with pytest.raises(MissingSpatialDimsError, match="sensor geometry") as e:
        open_scene(tmp_path / "EMIT_L2A_RFL.nc")
    msg = str(e.value)
    assert "location/glt_x and location/glt_y" in msg and "emit_xarray(path, ortho=True)" in msg
    assert "rename(downtrack='y', crosstrack='x')" in msg


def test_orthorectified_emit_reads_good_wavelengths_as_bbl(tmp_path):
    """emit_tools' orthorectified form (latitude, longitude, wavelengths; good_wavelengths a coordinate), saved to
    NetCDF and handed over as a Dataset: its good_wavelengths is the scene's bbl."""
    good = np.array([1, 1, 0, 1, 1, 0, 1, 1], np.uint8)
    ds = xr.Dataset({"reflectance": (("latitude", "longitude", "wavelengths"), np.full((12, 10, 8), 0.2))},
                    coords={"latitude": 35.2 - 0.01 * np.arange(12), "longitude": -118.5 + 0.01 * np.arange(10),
                            "wavelengths": np.linspace(381.0, 2493.0, 8), "good_wavelengths": ("wavelengths", good)})
    ds.to_netcdf(tmp_path / "ortho.nc")
    s = open_scene(tmp_path / "ortho.nc")
    np.testing.assert_array_equal(s["bbl"].values, good)
    np.testing.assert_allclose(s["wavelength"].values, np.linspace(381.0, 2493.0, 8))
    s = hsi_engine.as_scene(ds)
    np.testing.assert_array_equal(s["bbl"].values, good)
