"""The disk space an output needs, checked before its first tile, and a commit that fills the disk named as such."""

from __future__ import annotations

import logging
import shutil
from collections import namedtuple

import numpy as np
import pytest
from affine import Affine

from hsi_engine.errors import OutputError
from hsi_engine.output_space import check_free_space, peak_bytes, raw_bytes
from hsi_engine.writers import open_writer

GEO = dict(crs="EPSG:32633", transform=Affine(30, 0, 3e5, 0, -30, 5e6))
Usage = namedtuple("Usage", "total used free")
MiB = 1 << 20


def _free(monkeypatch, free: int) -> None:
    """The output's file system reports ``free`` bytes free (shutil.disk_usage, which the engine reads)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 40, (1 << 40) - free, free))


def _space_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hsi_engine.output_space"]


def test_the_uncompressed_peak_counts_every_copy_a_geotiff_commit_holds_at_once():
    """A GeoTIFF holds its tiles, its Cloud-Optimised copy with overviews and one overview temp at once; a resumable
    .tif keeps its .partial store until then too; a zarr store is written once."""
    raw = raw_bytes(100, 200, 8, "float16", True)
    assert raw == [20_000, 20_000 * 16, 20_000 * 4]
    total = sum(raw)
    assert peak_bytes(raw, geotiff=False) == total
    assert peak_bytes(raw, geotiff=True) == pytest.approx(total * 7 / 3 + raw[1] / 3, abs=1)
    assert peak_bytes(raw, geotiff=True, staged=True) == pytest.approx(total * 10 / 3 + raw[1] / 3, abs=1)
    assert raw_bytes(10, 10, 8, "float32", False) == [100, 100 * 8 * 4]


def test_a_map_that_may_not_fit_is_warned_of_before_its_first_tile(tmp_path, monkeypatch, caplog):
    """No free-space check came before the commit: a run whose GeoTIFF did not fit computed for hours, then failed
    at commit and lost every tile. Opening the writer now warns, naming the estimate, the free space and the fixes."""
    _free(monkeypatch, 4 * MiB)  # 512 x 512 x (1 + 4 x 4 + 4) = 5.25 MiB uncompressed, 13.6 MiB at commit
    with caplog.at_level(logging.WARNING, logger="hsi_engine.output_space"):
        w = open_writer(tmp_path / "m.tif", height=512, width=512, n_classes=4, probabilities="float32",
                        confidence=True, **GEO)
    w.abort()
    (said,) = _space_warnings(caplog)
    assert "m.tif may not fit in the 4.0 MiB free on its file system" in said
    assert "takes up to 13.6 MiB at once, uncompressed" in said and "Cloud-Optimised copy" in said
    assert "another file system (--out)" in said and "leave out the probabilities (4.0 MiB uncompressed)" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_zarr_map_is_estimated_without_a_commit_copy(tmp_path, monkeypatch, caplog):
    """A zarr store is renamed into place, not copied: the free space that warns for a GeoTIFF is enough for it."""
    _free(monkeypatch, 6 * MiB)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.output_space"):
        w = open_writer(tmp_path / "m.zarr", height=512, width=512, n_classes=4, probabilities="float32",
                        confidence=True, **GEO)
        w.abort()
        assert _space_warnings(caplog) == []
        open_writer(tmp_path / "m.tif", height=512, width=512, n_classes=4, probabilities="float32",
                    confidence=True, **GEO).abort()
    assert len(_space_warnings(caplog)) == 1


def test_enough_free_space_says_nothing(tmp_path, monkeypatch, caplog):
    _free(monkeypatch, 15 * MiB)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.output_space"):
        open_writer(tmp_path / "m.tif", height=512, width=512, n_classes=4, probabilities="float32",
                    confidence=True, **GEO).abort()
    assert _space_warnings(caplog) == []


def test_what_a_resumed_store_holds_already_is_not_needed_again(tmp_path, monkeypatch, caplog):
    """The free space excludes the tiles a resumed .partial store holds: only the rest is needed."""
    kw = dict(height=512, width=512, n_classes=4, probabilities="float32", confidence=True, block=256)
    need = peak_bytes(raw_bytes(512, 512, 4, "float32", True), geotiff=True, staged=True)
    _free(monkeypatch, need - MiB)
    with caplog.at_level(logging.WARNING, logger="hsi_engine.output_space"):
        check_free_space(tmp_path / "m.tif", geotiff=True, staged=True, present=2 * MiB, **kw)
        assert _space_warnings(caplog) == []
        check_free_space(tmp_path / "m.tif", geotiff=True, staged=True, **kw)
    (said,) = _space_warnings(caplog)
    assert ".partial store kept until then" in said


def test_a_file_system_that_certainly_cannot_hold_the_map_is_refused_before_any_tile(tmp_path, monkeypatch):
    """Below the bytes a GeoTIFF takes however well it compresses (its tile indexes), the run is refused up front
    instead of failing at its end."""
    _free(monkeypatch, 100)
    with pytest.raises(OutputError, match=r"m\.tif: its file system has 100 bytes free, and the map takes at least "
                                          r"768 \(the tile indexes"):
        open_writer(tmp_path / "m.tif", height=1024, width=1024, n_classes=4, probabilities="float16",
                    confidence=True, **GEO)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _random_map(tmp_path):
    """A 1024 x 1024 map of 255 random classes: its hidden tiled GeoTIFF takes about 1 MiB (random bytes deflate
    to their own size), so a conversion that began with 2 MiB free could not finish."""
    w = open_writer(tmp_path / "m.tif", height=1024, width=1024, n_classes=255, **GEO)
    w.write(0, 0, np.random.default_rng(0).integers(1, 256, (1024, 1024), dtype=np.uint8))
    return w


def _gdal_fills_the_disk(*args, **kwargs):
    """What the COG driver raised on a full disk: libtiff's 'No space left on device' went to stderr only, the
    half-written copy was deleted (the disk had room again), and the error was this CPLE_AppDefined (errno 1)."""
    from rasterio._err import CPLE_AppDefinedError

    raise CPLE_AppDefinedError(1, 1, ".m.tif.cog-0123abcd.tif: WriteEncodedTile/Strip() failed.")


def test_a_commit_that_fills_the_disk_is_named_full_from_the_space_it_began_with(tmp_path, monkeypatch):
    """The tester's full disk during the COG conversion said 'a write failed (...: An error occurred while writing a
    dirty block from FlushCache); check that the location is writable and healthy': by then GDAL had deleted its
    half-written copy, so the free space was back, and the error named no errno. The free space when the conversion
    began, below what it writes, names the full file system, the space and the fix."""
    import rasterio.shutil

    w = _random_map(tmp_path)
    _free(monkeypatch, 2 * MiB)
    monkeypatch.setattr(rasterio.shutil, "copy", _gdal_fills_the_disk)
    with pytest.raises(OutputError) as err:
        w.commit()
    said = str(err.value)
    assert "the file system is full (converting the tiles to a Cloud-Optimised GeoTIFF writes about " in said
    assert "MiB, and 2.0 MiB was free when it began) (.m.tif.cog-0123abcd.tif: WriteEncodedTile" in said
    assert "free space there, or choose another location (--out); a GeoTIFF takes about twice its size" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_conversion_that_fails_to_read_its_tiles_is_not_called_full(tmp_path, monkeypatch):
    """Short of the upper estimate, any failure was called a full disk: a read error (EIO on NFS) too."""
    import rasterio.shutil
    from rasterio._err import CPLE_AppDefinedError

    def read_fails(*args, **kwargs):
        raise CPLE_AppDefinedError(1, 1, "TIFFReadEncodedTile() failed (Input/output error)")

    w = _random_map(tmp_path)
    _free(monkeypatch, 2 * MiB)
    monkeypatch.setattr(rasterio.shutil, "copy", read_fails)
    with pytest.raises(OutputError) as err:
        w.commit()
    assert "full" not in str(err.value) and "TIFFReadEncodedTile() failed" in str(err.value)


def test_a_failed_conversion_with_room_to_spare_is_not_called_full(tmp_path, monkeypatch):
    import rasterio.shutil

    w = _random_map(tmp_path)
    _free(monkeypatch, 1 << 30)
    monkeypatch.setattr(rasterio.shutil, "copy", _gdal_fills_the_disk)
    with pytest.raises(OutputError, match="a write failed .*check that the location is writable and healthy"):
        w.commit()


def test_the_commit_says_when_it_starts_and_how_long_it_took(tmp_path, caplog):
    """The COG conversion ran after the last progress line, outside the ETA, without a word (29 s for a 3072^2 map
    with probabilities, 134 s for a near-empty 46,341^2 one)."""
    w = open_writer(tmp_path / "m.tif", height=40, width=30, n_classes=3, probabilities="float16", **GEO)
    w.write(0, 0, np.ones((40, 30), np.uint8), np.full((3, 40, 30), 1 / 3, np.float32))
    with caplog.at_level(logging.INFO, logger="hsi_engine.writers"):
        w.commit()
    said = [r.getMessage() for r in caplog.records if r.name == "hsi_engine.writers"]
    assert said[0].startswith(f"committing {tmp_path / 'm.tif'}: converting its 40 x 30 pixels (classes, "
                              "probabilities; ")
    assert "Cloud-Optimised GeoTIFF with overviews, on one thread" in said[0]
    assert said[-1].startswith(f"committed {tmp_path / 'm.tif'} in ") and " s (" in said[-1]
