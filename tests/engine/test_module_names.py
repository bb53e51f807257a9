"""The public names hsi_engine.io and hsi_engine.writers held before they were split by job (into cube, wavelengths,
geotiff, envi, stores, georef; and outputs) still import from them, and are the same objects."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "hsi_engine.io": {"WAVELENGTH_NAMES": "wavelengths", "spectral_unit": "wavelengths", "not_wavelengths":
                      "wavelengths", "wavelengths_in_names": "wavelengths", "gdal_name": "geotiff",
                      "band_runs": "cube", "NODATA_ATTRS": "cube", "SOURCE_ROW": "cube", "SOURCE_COL": "cube",
                      "MAX_DECODED_CHUNK": "stores", "MAX_CHUNKS": "stores", "scene_gcps": "georef",
                      "with_window_gcps": "georef", "unplaced_window": "georef"},
    "hsi_engine.writers": {name: "outputs" for name in (
        "ZARR_TITLE", "side_paths", "zarr_root_attributes", "is_hsi_zarr", "check_replaceable", "check_not_scene",
        "remove_tree", "sweep_leftovers", "ensure_output_dir", "URL", "zarr_unusable", "check_output_suffix")},
}


@pytest.mark.parametrize("module, name, home", [(m, n, h) for m, names in MOVED.items() for n, h in names.items()])
def test_a_name_of_the_module_before_its_split_still_imports(module, name, home):
    assert getattr(importlib.import_module(module), name) is getattr(importlib.import_module(f"hsi_engine.{home}"),
                                                                       name)


@pytest.mark.parametrize("module", ["hsi_engine.io", "hsi_engine.writers", "hsi_engine.outputs"])
def test_every_name_in_all_exists(module):
    mod = importlib.import_module(module)
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []
