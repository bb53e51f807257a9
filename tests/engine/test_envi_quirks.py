"""ENVI headers as other tools write them: Latin-1 text, no byte order, a bad band list of the wrong length and
wavelength units that are not nanometres (or not wavelengths at all), each on a small scene written here with
numpy and a handwritten header, and read with the public ``open_scene`` / ``scene_info`` / command line."""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pytest
import torch

import hsi_engine
from hsi_engine.cli import main
from hsi_engine.errors import SceneError
from hsi_engine.io import open_scene, scene_info
from ssrn.config import SSRNConfig
from ssrn.model import SSRN

BANDS, HEIGHT, WIDTH = 12, 14, 13
WAVELENGTHS_NM = np.round(np.linspace(460.0, 2400.0, BANDS), 3)
MAP_INFO = "{UTM, 1.000, 1.000, 366015.0, 5809965.0, 30.0, 30.0, 33, North, WGS-84, units=Meters}"


def make_cube(dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.uniform(500, 4000, size=(1, HEIGHT, WIDTH))
    cube = base * np.linspace(0.5, 1.5, BANDS)[:, None, None] + rng.normal(0, 20, size=(BANDS, HEIGHT, WIDTH))
    return cube.astype(dtype)


def write_envi(path, cube: np.ndarray, *, byte_order: str | None = "0", lines: tuple[str, ...] = (),
               encoding: str = "utf-8", big_endian: bool = False):
    """``cube`` (band, y, x) as a BSQ binary at ``path`` and its handwritten header beside it (``byte order`` left
    out when None; ``lines`` appended as written)."""
    code = {np.dtype(np.uint8): 1, np.dtype(np.int16): 2, np.dtype(np.float32): 4}[cube.dtype]
    cube.astype(cube.dtype.newbyteorder(">" if big_endian else "<")).tofile(path)
    b, h, w = cube.shape
    header = ["ENVI", f"samples = {w}", f"lines = {h}", f"bands = {b}", "header offset = 0",
              "file type = ENVI Standard", f"data type = {code}", "interleave = bsq"]
    if byte_order is not None:
        header.append(f"byte order = {byte_order}")
    header += [f"map info = {MAP_INFO}", *lines]
    path.with_suffix(".hdr").write_bytes(("\n".join(header) + "\n").encode(encoding))
    return path


def wavelength_lines(values, units: str) -> tuple[str, str]:
    return f"wavelength units = {units}", "wavelength = {" + ", ".join(f"{v:.6f}" for v in values) + "}"


# --------------------------------------------------------------------------------------------------
# a Latin-1 header (Windows tools)

def _latin1_scene(tmp_path):
    cube = make_cube()
    names = "band names = {" + ", ".join(f"grün {i}" for i in range(1, BANDS + 1)) + "}"
    path = write_envi(tmp_path / "s.bsq", cube, encoding="latin-1",
                      lines=(*wavelength_lines(WAVELENGTHS_NM / 1000.0, "µm"), names))
    assert b"\xb5m" in path.with_suffix(".hdr").read_bytes()  # (Latin-1, not UTF-8)
    return path, cube


def test_a_latin1_header_opens_without_rasterio_s_warnings(tmp_path, caplog):
    """rasterio raised UnicodeDecodeError reading the band names GDAL made of the header ('grün 1 (0.46 µm)')
    after ~180 'Failed to decode metadata item' warnings: info, classify and train ended in a traceback."""
    path, cube = _latin1_scene(tmp_path)
    logger = logging.getLogger("rasterio._base")
    filters = list(logger.filters)
    with caplog.at_level(logging.INFO):
        da = open_scene(path)
    assert not [r for r in caplog.records if r.name.startswith("rasterio")], "rasterio's warnings were not dropped"
    assert any("not UTF-8 text" in r.getMessage() for r in caplog.records if r.name.startswith("hsi_engine."))
    assert logger.filters == filters  # the filter is gone after the read
    np.testing.assert_array_equal(da.values, cube)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM)  # 'µm' in Latin-1 is micrometres
    assert da.rio.crs.to_epsg() == 32633
    assert tuple(da.rio.transform())[:6] == pytest.approx((30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0))
    assert "long_name" not in da.attrs  # the band names GDAL could not give as text are left out


def test_a_latin1_header_through_the_command_line(tmp_path, capsys):
    path, _ = _latin1_scene(tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "wavelength 460.0..2400.0 nm (12 bands)" in out and "crs        EPSG:32633" in out


def test_a_geotiff_with_latin1_band_names_keeps_its_nodata_scales_and_values(tmp_path):
    """The same band names in a GeoTIFF (as GDAL copies them from a Latin-1 ENVI header) raised the same
    UnicodeDecodeError; the scene read without them keeps everything else of the file."""
    import rasterio
    from rasterio.transform import from_origin

    cube = make_cube(np.float32)
    cube[:, 0, 0] = np.nan
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=BANDS, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(366015, 5809965, 30, 30), nodata=np.nan) as dst:
        dst.write(cube)
        for b in range(1, BANDS + 1):
            dst.set_band_description(b, f"grXn {b:02d}")
        dst.scales = (0.5,) * BANDS
        dst.offsets = (1.0,) + (0.0,) * (BANDS - 1)
    raw = path.read_bytes()
    assert raw.count(b"grXn") == BANDS
    path.write_bytes(raw.replace(b"grXn", "grün".encode("latin-1")))  # (same length: the TIFF stays valid)
    da = open_scene(path)
    np.testing.assert_array_equal(da.values, cube)
    assert np.isnan(da.rio.nodata) and da.rio.crs.to_epsg() == 32633
    assert da.encoding["scales"] == (0.5,) * BANDS and da.encoding["offsets"] == (1.0,) + (0.0,) * (BANDS - 1)
    assert tuple(da.rio.transform())[:6] == pytest.approx((30.0, 0.0, 366015.0, 0.0, -30.0, 5809965.0))


def test_the_real_berlin_scene_with_a_latin1_header(data_dir, tmp_path):
    """The tester's reproduction: EnMAP's Berlin header with 'wavelength units = µm', in Latin-1."""
    src = data_dir / "berlin_urban_gradient"
    if not (src / "EnMAP_BerlinUrbanGradient.bsq").is_file():
        pytest.skip(f"{src}/EnMAP_BerlinUrbanGradient.bsq not found in the shared data directory")
    shutil.copy(src / "EnMAP_BerlinUrbanGradient.bsq", tmp_path / "s.bsq")
    text = (src / "EnMAP_BerlinUrbanGradient.hdr").read_text(encoding="utf-8")
    assert "wavelength units = Micrometers" in text
    (tmp_path / "s.hdr").write_bytes(text.replace("wavelength units = Micrometers",
                                                  "wavelength units = µm").encode("latin-1"))
    da = open_scene(tmp_path / "s.bsq")
    ref = open_scene(src / "EnMAP_BerlinUrbanGradient.bsq")
    np.testing.assert_array_equal(da["wavelength"].values, ref["wavelength"].values)
    np.testing.assert_array_equal(da.isel(band=slice(0, 3)).values, ref.isel(band=slice(0, 3)).values)
    assert da.rio.nodata == ref.rio.nodata and da.rio.transform() == ref.rio.transform()


# --------------------------------------------------------------------------------------------------
# byte order

def test_a_header_without_byte_order_is_refused_for_multibyte_data(tmp_path):
    """GDAL reads a header without 'byte order' as little-endian: big-endian int16 became a wrong map, exit 0."""
    cube = make_cube()
    path = write_envi(tmp_path / "s.bsq", cube, byte_order=None, big_endian=True)
    with pytest.raises(SceneError, match=r"s\.hdr has no 'byte order' key for its 2-byte int16 values \('data "
                                         r"type = 2'\); expected 'byte order = 0' \(little-endian.*or 'byte order "
                                         r"= 1' \(big-endian.*add the line for the byte order"):
        open_scene(path)
    hdr = path.with_suffix(".hdr")
    hdr.write_text(hdr.read_text() + "byte order = 1\n")
    np.testing.assert_array_equal(open_scene(path).values, cube)  # with the line: read as written
    for value, gdal in (("big", "little"), ("2", "big")):  # (as GDAL's atoi reads the line)
        hdr.write_text(hdr.read_text().replace("byte order = 1", f"byte order = {value}"))
        with pytest.raises(SceneError, match=rf"'byte order = {value}' is not an ENVI byte order; expected 'byte "
                                             rf"order = 0'.*GDAL would read it as {gdal}-endian: fix that line"):
            open_scene(path)
        hdr.write_text(hdr.read_text().replace(f"byte order = {value}", "byte order = 1"))


def test_a_data_ignore_value_that_is_not_a_number_masks_nothing(tmp_path, caplog):
    """'data ignore value = none': GDAL read it as 0, so every pixel with a 0 in any band was nodata (class 0)."""
    cube = make_cube()
    cube[1, :3, :3] = 0
    path = write_envi(tmp_path / "s.bsq", cube, lines=("data ignore value = none",))
    with caplog.at_level(logging.WARNING, "hsi_engine.envi"):
        da = open_scene(path)
    assert da.rio.nodata is None
    assert any("'data ignore value = none' is not a number" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(da.values, cube)


@pytest.mark.parametrize("key, values", [("wavelength", "n/a"), ("wavelength", "{} nm"), ("fwhm", "unknown")])
def test_a_header_list_of_words_is_named_with_the_fix(tmp_path, key, values):
    """rioxarray parses an ENVI header's wavelength and fwhm lists into numbers: 'n/a' or '450 nm' raised numpy's
    bare ValueError (a traceback on the command line) from deep inside."""
    cube = make_cube()
    path = write_envi(tmp_path / "s.bsq", cube)
    hdr = path.with_suffix(".hdr")
    listed = ", ".join(values.format(400 + 10 * i) for i in range(cube.shape[0]))
    hdr.write_text("\n".join(line for line in hdr.read_text().splitlines() if not line.startswith(key))
                   + f"\n{key} = {{{listed}}}\n")
    with pytest.raises(SceneError, match=rf"the ENVI header of .*s\.bsq: its {key} could not be read as numbers .*"
                                         r"write them as plain numbers"):
        open_scene(path)


@pytest.mark.parametrize("encoding, found", [("utf-8-sig", r"starts with a UTF-8 byte-order mark \(bytes EF BB BF"),
                                             ("utf-16", r"is UTF-16 text")], ids=["utf-8 with BOM", "utf-16"])
@pytest.mark.parametrize("given", ["s.hdr", "s.bsq"])
def test_a_header_saved_with_a_byte_order_mark_is_named_with_the_fix(tmp_path, encoding, found, given):
    """Notepad's 'UTF-8 with BOM' and 'Unicode': GDAL recognises an ENVI header by its first bytes, 'ENVI', so the
    scene 'could not be opened as a raster (... not recognized ...)'. The error names the encoding and how to
    re-save the header; the command it gives does, and the scene then opens as written."""
    import shlex
    import subprocess
    import sys

    cube = make_cube()
    write_envi(tmp_path / "s.bsq", cube, encoding=encoding)
    with pytest.raises(SceneError, match=rf"ENVI header .*s\.hdr {found}.*GDAL does not recognise it as an ENVI "
                                         r"header .*re-save it as UTF-8 without a byte-order mark") as info:
        open_scene(tmp_path / given)
    command = shlex.split(str(info.value).split("e.g. ", 1)[1])
    assert command[0] == "python"
    subprocess.run([sys.executable, *command[1:]], check=True)
    assert (tmp_path / "s.hdr").read_bytes().startswith(b"ENVI\n")
    np.testing.assert_array_equal(open_scene(tmp_path / given).values, cube)


def test_single_byte_data_needs_no_byte_order(tmp_path):
    cube = (make_cube() % 251).astype(np.uint8)
    path = write_envi(tmp_path / "s.bsq", cube, byte_order=None)
    np.testing.assert_array_equal(open_scene(path).values, cube)


# --------------------------------------------------------------------------------------------------
# bad band list

@pytest.mark.parametrize("bbl, problem", [
    ([1] * (BANDS - 1), rf"lists {BANDS - 1} values for {BANDS} bands"),
    ([1] * (BANDS + 2), rf"lists {BANDS + 2} values for {BANDS} bands"),
    (["1"] * (BANDS - 1) + ["x"], r"holds values that are not numbers"),
])
def test_a_bbl_of_the_wrong_length_is_named(tmp_path, bbl, problem):
    """It was dropped without a word: every band then counted as good, and a bad band's nodata masked pixels."""
    path = write_envi(tmp_path / "s.bsq", make_cube(), lines=("bbl = {" + ", ".join(map(str, bbl)) + "}",))
    with pytest.warns(UserWarning, match=rf"s\.hdr: its 'bbl' \(bad band list\) entry {problem}, so every band is "
                                         r"taken as good.*fix the header's bbl list"):
        da = open_scene(path)
    assert "bbl" not in da.coords


def test_a_bbl_of_the_right_length_is_read_without_a_warning(tmp_path):
    bbl = [1] * BANDS
    bbl[3] = 0
    path = write_envi(tmp_path / "s.bsq", make_cube(), lines=("bbl = {" + ", ".join(map(str, bbl)) + "}",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        da = open_scene(path)
    np.testing.assert_array_equal(da["bbl"].values, bbl)


# --------------------------------------------------------------------------------------------------
# wavelength units

C = 299_792_458.0


@pytest.mark.parametrize("units, values", [
    ("Angstroms", WAVELENGTHS_NM * 10.0),
    ("GHz", C / WAVELENGTHS_NM),  # nm = c / GHz: 500 nm is 599,585 GHz
    ("MHz", C * 1e3 / WAVELENGTHS_NM),  # nm = c * 1000 / MHz
    ("Nanometers", WAVELENGTHS_NM),
    ("Micrometers", WAVELENGTHS_NM / 1000.0),
])
def test_envi_wavelength_units_are_converted_to_nm(tmp_path, units, values):
    """Angstroms, GHz and MHz (valid ENVI units) were read as nanometres."""
    path = write_envi(tmp_path / "s.bsq", make_cube(), lines=wavelength_lines(values, units))
    da = open_scene(path)
    np.testing.assert_allclose(da["wavelength"].values, WAVELENGTHS_NM, rtol=1e-6)
    assert da["wavelength"].attrs["units"] == "nm"
    assert "wavelength 460.0..2400.0 nm (12 bands)" in scene_info(path)


@pytest.mark.parametrize("units", ["Index", "Unknown", "index"])
def test_envi_band_indices_are_not_wavelengths(tmp_path, units):
    """'wavelength units = Index' (band numbers) printed 'wavelength 1.0..12.0 nm' and made classify refuse the
    scene for a wavelength mismatch: now the scene has no wavelengths, as without a list ('Unknown' too, over band
    numbers; over real wavelengths it is no unit: test_envi_unknown_units_over_wavelengths_keep_them)."""
    path = write_envi(tmp_path / "s.bsq", make_cube(), lines=wavelength_lines(np.arange(1, BANDS + 1), units))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # as if no list were given: nothing to warn about
        da = open_scene(path)
    assert "wavelength" not in da.coords
    assert "wavelength unknown" in scene_info(path)


def test_a_geotiff_with_envi_index_units_has_no_wavelengths(tmp_path):
    """The same units copied into a GeoTIFF's band metadata (as gdal_translate copies an ENVI header)."""
    import rasterio
    from rasterio.transform import from_origin

    cube = make_cube()
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=BANDS,
                       dtype=cube.dtype, crs="EPSG:32633", transform=from_origin(366015, 5809965, 30, 30)) as dst:
        dst.write(cube)
        for b in range(1, BANDS + 1):
            dst.update_tags(b, wavelength=str(b), wavelength_units="Index")
    assert "wavelength" not in open_scene(tmp_path / "s.tif").coords


def _model_with_wavelengths(cube: np.ndarray) -> SSRN:
    torch.manual_seed(0)
    model = SSRN(SSRNConfig(bands=BANDS, classes=4)).eval()
    a = cube.astype(np.float64)
    model.meta = {"mean": a.mean(axis=(1, 2)).tolist(), "std": a.std(axis=(1, 2)).tolist(),
                  "class_names": ["a", "b", "c", "d"], "wavelengths": WAVELENGTHS_NM.tolist()}
    return model


def test_a_scene_with_band_indices_is_classified_by_band_count(tmp_path):
    cube = make_cube()
    model = _model_with_wavelengths(cube)
    path = write_envi(tmp_path / "s.bsq", cube, lines=wavelength_lines(np.arange(1, BANDS + 1), "Index"))
    labels = hsi_engine.classify(open_scene(path), model, progress=False)
    ghz = write_envi(tmp_path / "g.bsq", cube, lines=wavelength_lines(C / WAVELENGTHS_NM, "GHz"))
    np.testing.assert_array_equal(hsi_engine.classify(open_scene(ghz), model, progress=False).values, labels.values)


def test_envi_unknown_units_over_wavelengths_keep_them(tmp_path):
    """ENVI writes 'Unknown' on derived files whose lists are still wavelengths: they are read as a list without a
    unit is (here nm), and checked against a model's, not dropped."""
    path = write_envi(tmp_path / "s.bsq", make_cube(), lines=wavelength_lines(WAVELENGTHS_NM, "Unknown"))
    np.testing.assert_allclose(open_scene(path)["wavelength"].values, WAVELENGTHS_NM, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# the byte order a scene was read in, as its header declares it

@pytest.mark.parametrize("order, word", [("0", "little-endian"), ("1", "big-endian")])
def test_the_declared_byte_order_is_recorded_on_the_scene(tmp_path, order, word):
    """GDAL returns the values in the machine's order whatever the header declares: the scene records the order they
    were read in, which the byte-swap warning names (it had named numpy's native order, 'little-endian', for a
    file read big-endian as declared). One-byte values have none."""
    cube = make_cube()
    path = write_envi(tmp_path / "s.bsq", cube, byte_order=order, big_endian=order == "1")
    da = open_scene(path)
    assert da.attrs["byte_order"] == word
    np.testing.assert_array_equal(da.values, cube)
    assert "byte_order" not in open_scene(write_envi(tmp_path / "u.bsq", make_cube(np.uint8), byte_order=None)).attrs


def test_a_byte_swapped_warning_names_the_order_the_header_declared(tmp_path):
    """A little-endian binary under 'byte order = 1': GDAL reads it big-endian, as declared, and the warning said
    'they were read little-endian' (numpy's order of the array GDAL returned)."""
    cube = make_cube()
    path = write_envi(tmp_path / "s.bsq", cube, byte_order="1", big_endian=False,
                      lines=wavelength_lines(WAVELENGTHS_NM, "nm"))
    with pytest.warns(hsi_engine.UnnormalisedInputWarning, match=r"byte-swapped") as caught:
        hsi_engine.classify(path, _model_with_wavelengths(cube), progress=False)
    swapped = next(str(w.message) for w in caught if "byte-swapped" in str(w.message))
    assert "they were read big-endian" in swapped
