"""The GeoTIFF writer reads its Cloud-Optimised copies back before installing them, and names a disk quota."""
from __future__ import annotations

import errno

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from hsi_engine.errors import OutputError
from hsi_engine.writers import _open_failed, _write_failed, open_writer

H, W, K = 300, 300, 4
GEO = dict(crs="EPSG:32632", transform=Affine(10, 0, 500000, 0, -10, 5000000))


def _corrupting_copy(monkeypatch, ovr):
    """rasterio.shutil.copy that copies, then overwrites the start of the first tile of the class map (``ovr``: of
    that overview level; None: full resolution), as a write libtiff failed without GDAL raising leaves it."""
    real = rasterio.shutil.copy

    def copy(src, dst, **kw):
        real(src, dst, **kw)
        if "_probabilities" in str(dst) or "_confidence" in str(dst):
            return
        with rasterio.open(dst) as ds:
            offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=ovr))
        with open(dst, "r+b") as f:
            f.seek(offset)
            f.write(b"\xff" * 16)

    monkeypatch.setattr(rasterio.shutil, "copy", copy)


@pytest.mark.parametrize("ovr", [None, 0, 1])
def test_a_copy_whose_tile_does_not_decode_is_a_failed_write(tmp_path, monkeypatch, ovr):
    _corrupting_copy(monkeypatch, ovr)
    out = tmp_path / "m.tif"
    labels = np.random.default_rng(0).integers(1, K + 1, (H, W)).astype(np.uint8)
    w = open_writer(out, height=H, width=W, n_classes=K, block=64, **GEO, probabilities="float16", confidence=True)
    w.write(0, 0, labels, np.full((K, H, W), 1 / K, np.float32), np.full((H, W), 0.5, np.float32))
    with pytest.raises(OutputError, match="does not read back") as err:
        w.commit()
    assert ("full resolution" if ovr is None else f"overview level {ovr + 1}") in str(err.value)
    assert "IReadBlock failed" in str(err.value) or "TIFFRead" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing installed, no temporary left


def test_a_program_timeout_while_reading_back_propagates(tmp_path, monkeypatch):
    import hsi_engine.writers as writers

    def timeout(path):
        raise TimeoutError("the service's deadline")

    monkeypatch.setattr(writers, "_read_back", timeout)
    w = open_writer(tmp_path / "m.tif", height=8, width=8, n_classes=2, **GEO)
    w.write(0, 0, np.ones((8, 8), np.uint8))
    with pytest.raises(TimeoutError, match="deadline"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_a_disk_quota_is_named(tmp_path):
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    for said in (str(_write_failed(tmp_path / "m.tif", quota)), str(_open_failed(tmp_path, quota))):
        assert "the disk quota is exceeded" in said and "within your quota" in said
        assert "choose a writable location" not in said and "writable and healthy" not in said


def test_gdals_directory_error_on_a_refusing_file_system_names_the_quota(tmp_path, monkeypatch):
    import os

    real = os.write

    def refuse(fd, data):  # the probe's write: the file system refuses it as it refused libtiff's
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refuse)
    gdal = OSError("TIFFReadDirectory:Failed to read directory at offset 872")  # all GDAL raises
    said = str(_write_failed(tmp_path / "m.tif", gdal))
    assert "the disk quota is exceeded" in said
    assert [p.name for p in tmp_path.iterdir()] == []  # the probe file is removed
