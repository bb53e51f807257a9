"""A pipe where the writer looks for its own side files: refused or ignored, never waited on
(hsi_engine/writers.py, outputs.py)."""

from __future__ import annotations

import os

import _scale_fixtures as F
import pytest

import hsi_engine
from hsi_engine.errors import HSIEngineError
from hsi_engine.outputs import ours_aux, zarr_root_attributes


@pytest.mark.timeout(120)  # the old code opened the pipe to read it and waited for ever
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_pipe_at_the_maps_aux_xml_is_refused_not_read(tmp_path, overwrite: bool) -> None:
    cube = F.ip_crop(8, 8)
    out = tmp_path / "map.tif"
    aux = tmp_path / "map.tif.aux.xml"
    os.mkfifo(aux)
    if overwrite:  # replaced, as --overwrite replaces what is at the map's side-file names
        hsi_engine.classify_to_file(F.dataarray(cube), F.tiny_model(cube), out, overwrite=True, progress=False)
        assert out.is_file() and (aux.is_file() or not aux.exists())
        return
    with pytest.raises(HSIEngineError, match="map.tif.aux.xml"):
        hsi_engine.classify_to_file(F.dataarray(cube), F.tiny_model(cube), out, progress=False)
    assert not out.exists()


@pytest.mark.timeout(60)
def test_side_file_readers_do_not_open_pipes(tmp_path) -> None:
    os.mkfifo(tmp_path / "x.aux.xml")
    (tmp_path / "store.zarr").mkdir()
    os.mkfifo(tmp_path / "store.zarr" / "zarr.json")
    assert ours_aux(tmp_path / "x.aux.xml") is False
    assert zarr_root_attributes(tmp_path / "store.zarr") == {}
