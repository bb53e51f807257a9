"""A commit that replaces an output is all or nothing: when one of the renames fails (Windows refuses to replace a file
another program holds open: the old map shown in a GIS, a store's chunks being scanned by an antivirus) or is
interrupted, every file of the previous output is back where it was, and no hidden temporary is left."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import _scale_fixtures as F

import hsi_engine
from hsi_engine.errors import OutputError
from hsi_engine.writers import open_writer

TILE = 16


def write_map(path: Path, *, names=("water", "field", "forest"), probabilities: str | None = "float32",
              overwrite: bool = False) -> Path:
    """A 32 x 32 class map through the writer alone (no model run): ``names`` end up in its ``.aux.xml``."""
    rng = np.random.default_rng(len(names[0]))
    labels = rng.integers(1, 4, (32, 32)).astype(np.uint8)
    probs = rng.random((3, 32, 32)).astype(np.float32) if probabilities else None
    w = open_writer(path, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                    class_names=list(names), probabilities=probabilities, confidence=probabilities is not None,
                    overwrite=overwrite, block=TILE)
    w.write(0, 0, labels, probs, None if probs is None else probs.max(0))
    return w.commit()


def state(d: Path) -> dict[str, tuple[int, str]]:
    """Every entry of ``d`` (hidden ones too): its inode and the sha256 of its bytes (of every file under a store)."""
    out = {}
    for p in sorted(d.iterdir()):
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
            h.update(str(f.relative_to(d)).encode())
            h.update(f.read_bytes())
        out[p.name] = (p.stat().st_ino, h.hexdigest())
    return out


def held_open(monkeypatch, *held: Path, links: bool = True, exc=None) -> None:
    """Rename as Windows does while another program holds each of ``held`` open: neither renaming it away nor
    replacing it (PermissionError, WinError 32), while a hard link to it is made (NTFS); ``links=False``: a file
    system without hard links (FAT, exFAT). ``exc``: raise that instead (an interruption at that rename)."""
    real_replace, real_unlink = os.replace, os.unlink
    inodes = {p.stat().st_ino for p in held if p.exists()}
    held = {os.fspath(p) for p in held}

    def unlink(path, *a, **k):  # no name of a file held open can be deleted, a hard link's included
        if exc is None and os.path.exists(path) and os.stat(path).st_ino in inodes:
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used by "
                                  "another process", os.fspath(path), 32)
        return real_unlink(path, *a, **k)

    def replace(src, dst, *a, **k):
        if os.fspath(src) in held or os.fspath(dst) in held:
            if exc is not None:
                raise exc
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used by "
                                  "another process", os.fspath(src), 32, os.fspath(dst))
        return real_replace(src, dst, *a, **k)

    def no_link(src, dst, *a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    if not links:
        monkeypatch.setattr(os, "link", no_link)


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
@pytest.mark.parametrize("held", ["m.tif", "m_confidence.tif", "m.tif.aux.xml"])
def test_a_geotiff_overwrite_that_cannot_replace_a_file_changes_nothing(tmp_path, monkeypatch, held, links):
    """The side files and .aux.xml were replaced first and the map last, with no way back: a map held open in a
    GIS was left beside the new run's class names. Now every file is as before, and the error names the file and
    the program that may hold it (not 'check that the location is writable')."""
    out = write_map(tmp_path / "m.tif")
    (tmp_path / "m.tif.ovr").write_bytes(b"old overviews")  # GDAL side files of the old map: removed at commit
    (tmp_path / "m_probabilities.tif.aux.xml").write_text("<PAMDataset/>")
    before = state(tmp_path)
    held_open(monkeypatch, tmp_path / held, links=links)
    with pytest.raises(OutputError, match=rf"cannot replace .*{held} .*another program may hold it open .*close it "
                                          r"in that program.* Nothing was replaced"):
        write_map(out, names=("new 1", "new 2", "new 3"), overwrite=True)
    monkeypatch.undo()
    after = state(tmp_path)
    # the same files (inodes), the same bytes, no hidden temp; at most a hard link to the held file, which Windows
    # does not let go while it is open (left for a later run's sweep)
    asides = {k: v for k, v in after.items() if ".old-" in k}
    assert {k: v for k, v in after.items() if k not in asides} == before
    assert all(v[0] == before[held][0] for v in asides.values()) and len(asides) <= (1 if links else 0)
    assert "new 1" not in (tmp_path / "m.tif.aux.xml").read_text()


def test_a_geotiff_overwrite_that_cannot_replace_the_map_keeps_the_side_files_it_would_remove(tmp_path, monkeypatch):
    """A run without probabilities removes the old _probabilities/_confidence files at commit: not when the map
    itself cannot be replaced."""
    out = write_map(tmp_path / "m.tif")
    before = state(tmp_path)
    held_open(monkeypatch, out)
    with pytest.raises(OutputError, match="another program may hold it open"):
        write_map(out, probabilities=None, overwrite=True)
    monkeypatch.undo()
    after = state(tmp_path)
    asides = [k for k in after if k.startswith(".m.tif.old-")]  # a link to the held map Windows does not let go
    assert {k: v for k, v in after.items() if k not in asides} == before
    assert [after[k][0] for k in asides] == [before["m.tif"][0]]
    write_map(out, probabilities=None, overwrite=True)  # closed: the overwrite goes through
    assert sorted(p.name for p in tmp_path.iterdir() if ".old-" not in p.name) == ["m.tif", "m.tif.aux.xml"]
    from hsi_engine.outputs import sweep_leftovers

    sweep_leftovers(out)  # (as a run's lock does before it starts: the link left behind goes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "m.tif.aux.xml"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_geotiff_commit_interrupted_at_the_map_s_rename_puts_the_old_output_back(tmp_path, monkeypatch, exc):
    out = write_map(tmp_path / "m.tif")
    before = state(tmp_path)
    held_open(monkeypatch, out, exc=exc())
    with pytest.raises(exc):
        write_map(out, names=("new 1", "new 2", "new 3"), overwrite=True)
    monkeypatch.undo()
    assert state(tmp_path) == before
    fresh = tmp_path / "fresh"  # a first run stopped there leaves nothing, not the side files without their map
    fresh.mkdir()
    held_open(monkeypatch, fresh / "m.tif", exc=exc())
    with pytest.raises(exc):
        write_map(fresh / "m.tif")
    assert list(fresh.iterdir()) == []


@pytest.mark.parametrize("exc", [PermissionError, KeyboardInterrupt])
def test_an_old_file_that_cannot_be_put_back_is_named_and_kept(tmp_path, monkeypatch, caplog, exc):
    """No hard links, and the map's name refuses every rename onto it, its own return included: the error says
    where the old map is (under its hidden aside name, not deleted with the temporaries); the rest is put back. An
    interruption stays one, with the same words logged."""
    out = write_map(tmp_path / "m.tif")
    old = out.read_bytes()
    real_replace = os.replace

    calls = []

    def replace(src, dst, *a, **k):  # (interrupted at the map's first rename; its return then refused)
        if Path(dst) == out:
            calls.append(src)
            raise exc() if len(calls) == 1 and exc is not PermissionError else PermissionError(
                errno.EACCES, "Access is denied", os.fspath(dst))
        return real_replace(src, dst, *a, **k)

    def no_link(src, dst, *a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", no_link)
    said = r"nor put back what was moved aside: .*m\.tif is at .*\.m\.tif\.old-[0-9a-f]{8}\.tif\. Rename each back"
    with pytest.raises(OutputError if exc is PermissionError else exc) as info, \
            caplog.at_level("ERROR", logger="hsi_engine.writers"):
        write_map(out, names=("new 1", "new 2", "new 3"), overwrite=True)
    monkeypatch.undo()
    assert re.search(said, str(info.value) if exc is PermissionError else caplog.text)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tif.old-")]
    assert len(kept) == 1 and kept[0].read_bytes() == old and not out.exists()
    assert "new 1" not in (tmp_path / "m.tif.aux.xml").read_text()  # the side files went back
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "m.tif.aux.xml", "m_confidence.tif", "m_probabilities.tif"]


def test_a_zarr_overwrite_whose_new_store_cannot_take_the_name_keeps_the_old_store(tmp_path, monkeypatch):
    """The plain writer: the old store was moved aside, registered as a temporary, and deleted with them when the
    new one could not be renamed in."""
    out = write_map(tmp_path / "m.zarr", probabilities=None)
    before = state(tmp_path)
    real_replace = os.replace

    def scanned(src, dst, *a, **k):  # the new store's fresh chunks are being scanned: it cannot be renamed
        if ".tmp-" in Path(src).name and Path(dst) == out:
            raise PermissionError(errno.EACCES, "Access is denied", os.fspath(src), 5, os.fspath(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", scanned)
    with pytest.raises(OutputError, match=r"cannot replace .*m\.zarr .*another program may hold it open"):
        write_map(out, names=("new 1", "new 2", "new 3"), probabilities=None, overwrite=True)
    monkeypatch.undo()
    assert state(tmp_path) == before


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("rollback")
    cube = F.ip_crop(32, 32)
    model = F.save_tiny_model(d / "model", cube)
    ref = hsi_engine.classify(F.dataarray(cube), str(model), tile=TILE, progress=False).values
    return {"scene": F.write_zarr(d / "scene.zarr", cube), "model": model, "ref": ref}


def test_a_resumable_zarr_overwrite_that_cannot_rename_the_new_store_keeps_the_old_map(case, tmp_path, monkeypatch):
    """``classify_to_file(..., "m.zarr", overwrite=True)``: the old map was moved aside, then deleted when the
    complete ``m.zarr.partial`` could not take its name (Windows: 'Access is denied' while an antivirus scans the
    fresh chunks): the old map lost. It stays, and the partial store finishes the new map with --resume."""
    out = tmp_path / "m.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, progress=False)
        before = state(tmp_path)
        real_replace = os.replace

        def scanned(src, dst, *a, **k):  # the store's fresh chunks are being scanned: it cannot be renamed
            if Path(src).name == "m.zarr.partial" and Path(dst) == out:
                raise PermissionError(errno.EACCES, "Access is denied", os.fspath(src), 5, os.fspath(dst))
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", scanned)
        with pytest.raises(OutputError, match=r"cannot replace .*m\.zarr \(Access is denied\): another program may "
                                              r"hold it open"):
            hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, overwrite=True, progress=False)
        monkeypatch.undo()
        assert {k: v for k, v in state(tmp_path).items() if k != "m.zarr.partial"} == before
        assert (tmp_path / "m.zarr.partial").is_dir()  # every tile, for --resume
        hsi_engine.classify_to_file(case["scene"], case["model"], out, tile=TILE, resume=True, progress=False)
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_a_commit_that_fills_the_disk_is_named_full_though_its_temps_free_it(tmp_path, monkeypatch):
    """The COG conversion needs about twice the map's size: a disk filled by it said 'a write failed ... check that
    the location is writable and healthy', since the free space was measured after the temps were removed."""
    import shutil

    import rasterio.errors

    w = open_writer(tmp_path / "m.tif", height=8, width=8, n_classes=2)
    w.write(0, 0, np.ones((8, 8), np.uint8))
    assert w._temps and all(t.exists() for t in w._temps)

    def filling() -> None:
        raise rasterio.errors.RasterioIOError("TIFFAppendToStrip: Write error at scanline 0")

    real = shutil.disk_usage
    monkeypatch.setattr(w, "_commit", filling)
    monkeypatch.setattr(shutil, "disk_usage",  # full while the temps are on it
                        lambda p: real(p)._replace(free=0 if any(t.exists() for t in w._temps) else 1 << 40))
    with pytest.raises(OutputError, match="the file system is full"):
        w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_signal_once_the_new_map_is_in_place_finds_the_writer_committed(tmp_path, monkeypatch, suffix):
    """A SIGTERM landing after the renames but before ``commit()`` returned: the new map was in place and the old one
    gone, yet the writer was not marked committed, so the run said "interrupted" (exit 130) over a finished map."""
    from hsi_engine import writers

    old = write_map(tmp_path / f"m{suffix}", probabilities=None)
    before = state(tmp_path)
    cls = writers.GeoTiffClassMapWriter if suffix == ".tif" else writers.ZarrClassMapWriter
    real = cls._commit

    def signalled(self):
        real(self)
        raise KeyboardInterrupt  # what the CLI's SIGTERM handler raises, here at the end of the commit

    monkeypatch.setattr(cls, "_commit", signalled)
    w = open_writer(old, height=32, width=32, n_classes=3, crs="EPSG:32633", transform=(30, 0, 0, 0, -30, 0),
                    class_names=["a", "b", "c"], overwrite=True, block=TILE)
    w.write(0, 0, np.full((32, 32), 2, np.uint8))
    with pytest.raises(KeyboardInterrupt):
        w.commit()
    assert w.committed
    after = state(tmp_path)
    assert sorted(after) == sorted(before) and after[old.name] != before[old.name]  # the new map, no leftovers


def test_an_old_store_that_cannot_be_deleted_is_named(tmp_path, monkeypatch, caplog):
    """An overwritten zarr map the process may not delete stayed as a full-size hidden copy, and the run said
    nothing (a file that cannot be removed was already named)."""
    from hsi_engine import writers

    old = write_map(tmp_path / "m.zarr", probabilities=None)
    monkeypatch.setattr(writers, "remove_tree", lambda path: False)
    with caplog.at_level("WARNING", logger="hsi_engine.writers"):
        write_map(old, probabilities=None, overwrite=True)
    assert re.search(r"could not remove the hidden \.m\.zarr\.old-\w+\.zarr .*beside .*m\.zarr", caplog.text)
