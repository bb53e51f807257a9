"""Band-centre wavelengths: a unit (nm, um, m, wavenumbers, frequencies) to nm, wavelengths named in band
descriptions, and listed wavelengths checked before a scene carries them."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import user_stacklevel


# Band coordinates (or Dataset variables) that hold the band centres, in the order looked for: EMIT names them
# 'wavelengths', others 'wl' or 'center_wavelength'; a name ending in _nm / _um gives the unit where no attr does
WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "center_wavelength", "centre_wavelength",
                    "center_wavelengths", "band_center", "band_centers", "wavelength_nm", "wavelength_um", "lambda")


_WAVENUMBER_UNITS = ("cm-1", "cm^-1", "cm**-1", "1/cm", "/cm", "cm⁻¹")
_METRE_UNITS = ("m", "meter", "meters", "metre", "metres")
_LENGTH_PREFIXES = ("micro", "um", "µm", "μm", "nano", "nm", "milli", "mm", "centi", "cm", "angstrom", "ångström",
                    "å")
# frequencies (ENVI's 'GHz' and 'MHz'), in Hz each: a band centre at f Hz is at c / f metres
_FREQUENCY_UNITS = {"thz": 1e12, "ghz": 1e9, "mhz": 1e6}
_SPEED_OF_LIGHT = 299_792_458.0  # m/s


def spectral_unit(units: str | None) -> bool:
    """Whether ``units`` names a length, a wavenumber or a frequency, which :func:`to_nm` converts to nm."""
    u = (units or "").strip().lower()
    return bool(u) and (u.startswith(_LENGTH_PREFIXES + ("wavenumber",) + tuple(_FREQUENCY_UNITS))
                        or u.replace(" ", "") in _WAVENUMBER_UNITS or u in _METRE_UNITS)


def inverse_spectral_unit(units: str | None) -> bool:
    """Whether ``units`` is a wavenumber or a frequency, whose values :func:`to_nm` inverts (a band width in them is
    no width in nm by one factor)."""
    u = (units or "").strip().lower()
    return u.startswith(("wavenumber", *_FREQUENCY_UNITS)) or u.replace(" ", "") in _WAVENUMBER_UNITS


def not_wavelengths(units: str | None, values: Any = None) -> bool:
    """Whether ``units`` says the listed ``values`` are not wavelengths: ENVI's ``Index`` (band numbers, read as nm
    they made ``info`` print 'wavelength 1.0..177.0 nm' and the model refuse the scene), or ``Unknown`` over values
    that are band numbers (1..N or 0..N-1); ``Unknown`` over other values is no unit at all (derived files keep
    their nm or µm lists under it), read as a list without a unit is."""
    u = (units or "").strip().lower()
    if u == "index":
        return True
    if u != "unknown" or values is None:
        return False
    try:
        v = np.asarray(values, np.float64).ravel()
    except (TypeError, ValueError):
        return False
    return v.size > 0 and bool(np.all(v == np.arange(v.size) + v[0])) and v[0] in (0.0, 1.0)


def to_nm(values: Sequence[float], units: str | None) -> np.ndarray:
    """Wavelengths in nm: micrometre values (or values < 30 with no unit) are scaled by 1000, metres (or values
    below 1e-3 with no unit) by 1e9, Angstroms by 0.1; wavenumbers (cm-1) and frequencies (GHz, MHz, THz) are
    converted (nm = 1e7 / cm-1 = 299792458 / GHz = 299792458000 / MHz). Units that are not wavelengths
    (:func:`not_wavelengths`) are for the caller to leave out."""
    w = np.asarray(values, dtype=np.float64)
    u = (units or "").strip().lower()
    if u.startswith(("micro", "um", "µm", "μm")):
        return np.round(w * 1000.0, 6)
    if u.startswith(("nano", "nm")):
        return w
    if u.startswith(("milli", "mm")):
        return w * 1e6
    if u.startswith("wavenumber") or u.replace(" ", "") in _WAVENUMBER_UNITS:
        with np.errstate(divide="ignore"):
            return 1e7 / w
    if u.startswith(("centi", "cm")):  # a length in centimetres, not a wavenumber
        return w * 1e7
    if u.startswith(("angstrom", "ångström", "å")):
        return np.round(w * 0.1, 6)
    hz = next((per for prefix, per in _FREQUENCY_UNITS.items() if u.startswith(prefix)), None)
    if hz is not None:
        with np.errstate(divide="ignore"):
            return np.round(_SPEED_OF_LIGHT * 1e9 / (w * hz), 6)
    if u in _METRE_UNITS:
        return w * 1e9
    if w.size and 0 < np.nanmax(w) < 1e-3:  # no unit: metres (optical wavelengths are 1e-7..1e-5 m)
        return np.round(w * 1e9, 6)
    if w.size and np.nanmax(w) < 30:  # no unit: micrometres are < 30, nanometres > 300
        return np.round(w * 1000.0, 6)
    return w


def wavelengths_nm(values: Sequence[float], units: str | None) -> np.ndarray | None:
    """:func:`to_nm` of ``values``, or None where ``units`` says they are not wavelengths (ENVI's ``Index``): the
    scene's wavelengths are then unknown, as if none were given."""
    return None if not_wavelengths(units, values) else to_nm(values, units)


# (a number after '_' too: 'B001_400nm'; not one inside a word or a number, 'B12nm', '1.5')
_WL_IN_NAME = re.compile(r"(?<![A-Za-z0-9.])([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
                         r"(nanometers?|nanometres?|micrometers?|micrometres?|nm|um|µm|μm)(?![a-z])", re.I)


def wavelengths_in_names(names: Sequence[str | None]) -> np.ndarray | None:
    """Wavelengths (nm) from band names such as 'band 1 (0.4554 Micrometers)' or '460.0 nm', when every name
    carries one (the first name's unit for all); else None."""
    found = [_WL_IN_NAME.search(n or "") for n in names]
    if not found or not all(found):
        return None
    return to_nm([float(m.group(1)) for m in found], found[0].group(2))  # type: ignore[union-attr]


# where each format's reader takes wavelengths from (see the readers), as the fix for a scene that records none
_RECORD_WAVELENGTHS = {
    "geotiff": "as GeoTIFF band metadata 'wavelength' and 'wavelength_units' (rasterio's update_tags(band, ...)), "
               "the file's metadata 'wavelength={400,410,...}' and 'wavelength_units=nm' (gdal_edit.py -mo), or band "
               "descriptions such as '460.0 nm'",
    "envi": "as the ENVI header's 'wavelength' list and 'wavelength units'",
    "netcdf": "as a 'wavelength' coordinate on the band dimension, with 'units' (e.g. 'nm')",
    "zarr": "as a 'wavelength' coordinate on the band dimension with 'units' (xarray's to_zarr), or the array's "
            "'wavelength' and 'wavelength_units' attributes",
    "hdf5": "as a 1-D 'wavelength' dataset with 'units' (or the cube's own 'wavelength' and 'wavelength_units' "
            "attributes)",
}
# the formats that cannot hold wavelengths, read from a JSON file beside the scene (wavelength_side_files)
_SIDE_FILE_FORMATS = ("matlab", "npy")
_SIDE_FILE_CONTENT = 'a list of numbers, or {"wavelengths": [...], "unit": "nm"}'


def wavelength_side_files(path: str | os.PathLike) -> list[Path]:
    """The files a .mat or .npy scene's wavelengths are read from, in the order looked for: ``scene.wavelengths.json``
    or ``scene_wavelengths.json`` beside ``scene.mat`` (its name without the suffix, as ENVI's ``scene.hdr``), or
    ``scene.mat.wavelengths.json`` (its whole name, as GDAL's ``scene.tif.aux.xml``; ENVI's ``scene.img.hdr``)."""
    path = Path(path)
    names = [path.stem + ".wavelengths.json", path.stem + "_wavelengths.json", path.name + ".wavelengths.json"]
    return [path.with_name(n) for n in dict.fromkeys(names)]


def _side_file_fix(path: str | os.PathLike | None) -> str:
    """Where a .mat/.npy scene's wavelengths go: the file names for ``path``, or the rule where it is not known."""
    if path is None:
        return (f"write them into a JSON file beside the scene named for it without its suffix ({_SIDE_FILE_CONTENT}): "
                "scene.wavelengths.json for scene.mat (or scene.mat.wavelengths.json)")
    path = Path(path)
    first, whole = path.stem + ".wavelengths.json", path.name + ".wavelengths.json"
    also = f" (or {whole})" if whole != first else ""
    return f"write them into {first}{also} beside {path.name}, a JSON file ({_SIDE_FILE_CONTENT})"


def record_wavelengths_fix(fmt: str | None, path: str | os.PathLike | None = None) -> str:
    """How to record band wavelengths in a scene of format ``fmt`` (a scene's ``attrs['source_format']``: 'geotiff',
    'envi', 'netcdf', 'zarr', 'hdf5', 'matlab', 'npy') so that its reader takes them; every format's where ``fmt``
    is another or None. ``path``, the scene's file, names the side file a .mat or .npy scene's are read from."""
    if fmt in _SIDE_FILE_FORMATS:
        return _side_file_fix(path)
    if fmt in _RECORD_WAVELENGTHS:
        return f"write them into the file {_RECORD_WAVELENGTHS[fmt]}"
    return ("write them into the file (ENVI header 'wavelength', GeoTIFF band descriptions, a NetCDF/zarr "
            "'wavelength' coordinate with units)")


def warn_wavelengths(where: str, problem: str, fix: str) -> None:
    warnings.warn(f"{where}: {problem}, so the scene's wavelengths are unknown and are not checked against the "
                  f"model's; fix {fix}", stacklevel=user_stacklevel())


def listed_wavelengths(values: Any, units: Any, where: str, name: str, unit_name: str,
                        fix: str) -> np.ndarray | None:
    """Wavelengths in nm from a list of numbers and a unit name as stored in attributes or JSON (None if absent);
    a list or unit that is not one (strings, a dict, nested lists, a list of units) warns, as an unreadable ENVI
    wavelength list does, and is left out."""
    if values is None:
        return None
    if units is not None and not isinstance(units, str):
        warn_wavelengths(where, f"its {unit_name} is {_short(units)}, not a unit name such as 'nm' or "
                          "'micrometers'", fix)
        return None
    arr = np.asarray(values) if isinstance(values, np.ndarray) else None
    numbers = (arr.ndim == 1 and arr.dtype.kind in "iuf") if arr is not None else (
        isinstance(values, (list, tuple))
        and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))  # None: NaN
    if not numbers:
        warn_wavelengths(where, f"its {name} is {_short(values)}, not a list of numbers", fix)
        return None
    return wavelengths_nm(values, units)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
