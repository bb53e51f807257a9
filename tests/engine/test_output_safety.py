"""Output safety: --overwrite replaces only what hsi-engine wrote, all of it, never the scene; refusals come before
any tile is computed and leave every file as it was; an interrupted run (Ctrl-C, SystemExit) leaves nothing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

import _scale_fixtures as F

import hsi_engine
from hsi_engine import cluster
from hsi_engine.cli import main
from hsi_engine.errors import OutputError
from hsi_engine.fused import FusedSSRN
from hsi_engine.resume import partial_path, read_record
from hsi_engine.outputs import side_paths
from hsi_engine.writers import GeoTiffClassMapWriter

TILE = 16


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    cube = F.ip_crop(40, 40)
    model = F.save_tiny_model(d / "model", cube)
    ref = hsi_engine.classify(F.dataarray(cube), str(model), tile=TILE, progress=False).values
    assert len(np.unique(ref)) > 1
    return {"cube": cube, "model": model, "ref": ref}


@pytest.fixture
def computed(monkeypatch):
    """Counts the engine's tile computations, to show a refusal came before any of them."""
    calls = {"n": 0}
    real = FusedSSRN.__call__

    def counting(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(FusedSSRN, "__call__", counting)
    return calls


def write_scene_tif(path: Path, cube: np.ndarray) -> Path:
    """``cube`` as a georeferenced, tiled GeoTIFF scene."""
    from affine import Affine

    b, h, w = cube.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=b, dtype=str(cube.dtype), crs=F.CRS,
                       transform=Affine(*F.TRANSFORM), tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(cube)
    return path


def digest(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (names and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def cli(scene, model, out, *extra) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["classify", str(scene), "--model", str(model), "--out", str(out), "--tile", str(TILE), *extra])
    return rc, err.getvalue()


def classify_to_file(case, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return hsi_engine.classify_to_file(F.dataarray(case["cube"]), case["model"], out, tile=TILE, **kw)


# ----------------------------------------------------------------------------------------------
# 1. --overwrite never deletes a directory hsi-engine did not write


def _foreign_zarr(path: Path) -> None:
    import zarr

    zarr.create_array(str(path), shape=(4, 4), chunks=(4, 4), dtype="uint8", zarr_format=3)[...] = 7


@pytest.mark.parametrize("kind", ["files", "foreign zarr", "empty"])
def test_overwrite_refuses_a_zarr_path_that_is_not_our_store(case, tmp_path, computed, kind):
    out = tmp_path / "x.zarr"
    if kind == "files":
        out.mkdir()
        (out / "thesis.txt").write_text("precious")
    elif kind == "foreign zarr":
        _foreign_zarr(out)
    else:
        out.mkdir()
    before = digest(out)
    expect = {"files": "thesis.txt", "foreign zarr": "zarr store without the attribute title",
              "empty": "empty directory"}[kind]
    with pytest.raises(OutputError, match=rf"refusing to replace .*x\.zarr.*found .*{expect}.*another output path"):
        classify_to_file(case, out, overwrite=True)
    with pytest.raises(OutputError, match="refusing to replace"):  # the resumable path: same refusal
        cluster.run_to_file(F.dataarray(case["cube"]), case["model"], out, tile=TILE, overwrite=True, resume=True)
    scene = F.write_zarr(tmp_path / "s.zarr", case["cube"])
    rc, msg = cli(scene, case["model"], out, "--overwrite")
    assert rc == 2 and "refusing to replace" in msg and "Traceback" not in msg
    assert computed["n"] == 0, "tiles were computed before the refusal"
    assert digest(out) == before
    assert listing(tmp_path) == ["s.zarr", "x.zarr"]


@pytest.mark.parametrize("kind", ["scene", "text", "probabilities of another", "ours"])
def test_overwrite_replaces_only_a_geotiff_hsi_engine_wrote(case, tmp_path, computed, kind):
    """`--out other_scene.tif --overwrite` (a typo in a script that always passes it) replaced a 200-band scene with a
    class map, and a text file named notes.tif too: a GeoTIFF is replaced only when its tags say we wrote it (a class
    map's nodata_meaning, any version), the main map and its side files alike."""
    out = tmp_path / "out.tif"
    classify_to_file(case, out, probabilities=True)  # an earlier run's map, probabilities and .aux.xml
    computed["n"] = 0
    target = {"scene": out, "text": out, "probabilities of another": side_paths(out)["probabilities"],
              "ours": out}[kind]
    if kind == "text":
        target.write_text("precious notes")
    elif kind != "ours":
        write_scene_tif(target, case["cube"][:3])
    before = digest(target)
    if kind == "ours":
        inode = target.stat().st_ino
        classify_to_file(case, out, overwrite=True, probabilities=True)
        assert computed["n"] > 0 and target.stat().st_ino != inode  # written anew (to the same bytes)
        return
    expect = "that is not a GeoTIFF" if kind == "text" else "a GeoTIFF without it"
    with pytest.raises(OutputError, match=rf"refusing to replace .*{target.name}: expected a GeoTIFF hsi-engine "
                                          rf"wrote.*{expect}"):
        classify_to_file(case, out, overwrite=True, probabilities=True)
    rc, msg = cli(write_scene_tif(tmp_path / "s.tif", case["cube"]), case["model"], out, "--overwrite",
                  "--probabilities")
    assert rc == 2 and "refusing to replace" in msg and "Traceback" not in msg, msg
    assert computed["n"] == 0 and digest(target) == before


def test_overwrite_replaces_our_own_zarr_store_whole(case, tmp_path):
    import zarr

    out = tmp_path / "m.zarr"
    classify_to_file(case, out, probabilities=True)
    assert "probabilities" in zarr.open_group(str(out), mode="r")
    classify_to_file(case, out, overwrite=True)  # a zarr output has no side files: the store is replaced whole
    assert "probabilities" not in zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    assert listing(tmp_path) == ["m.zarr"]


def test_overwrite_refuses_a_foreign_partial_store(case, tmp_path, computed):
    for out in (tmp_path / "m.zarr", tmp_path / "m.tif"):  # the resumable (.zarr) and the plain .tif run
        part = partial_path(out)
        part.mkdir()
        (part / "notes.txt").write_text("mine")
        with pytest.raises(OutputError, match=r"refusing to replace .*\.partial.*holding notes\.txt"):
            classify_to_file(case, out, overwrite=True)
        assert (part / "notes.txt").read_text() == "mine"
    assert computed["n"] == 0
    assert listing(tmp_path) == ["m.tif.partial", "m.zarr.partial"]


@pytest.mark.parametrize("what", ["file named .zarr", "foreign partial"])
def test_what_overwrite_would_refuse_is_not_offered_overwrite(case, tmp_path, computed, what):
    """Without overwrite, something in the way that overwrite would refuse too gets the fix that works (another path,
    or remove it): the message offered --overwrite (and --resume), and the run it suggested was refused again."""
    out = tmp_path / ("m.zarr" if what == "file named .zarr" else "m.tif")
    if what == "file named .zarr":
        out.write_text("notes")
    else:
        partial_path(out).mkdir()
        (partial_path(out) / "notes.txt").write_text("mine")
    for kw in ({}, {"resume": True}):
        with pytest.raises(OutputError) as e:
            classify_to_file(case, out, **kw)
        assert "is in the way" in str(e.value) and "remove it yourself" in str(e.value), str(e.value)
        assert "pass overwrite=True" not in str(e.value) and "pass resume=True" not in str(e.value), str(e.value)
    with pytest.raises(OutputError, match="refusing to replace"):
        classify_to_file(case, out, overwrite=True)
    assert computed["n"] == 0
    assert listing(tmp_path) == (["m.zarr"] if what == "file named .zarr" else ["m.tif.partial"])


def test_overwrite_through_a_symlink_replaces_the_link_not_its_target(case, tmp_path):
    target = tmp_path / "store.zarr"
    classify_to_file(case, target)
    before = digest(target)
    link = tmp_path / "latest.zarr"
    link.symlink_to(target, target_is_directory=True)
    classify_to_file(case, link, overwrite=True)
    assert link.is_dir() and not link.is_symlink()
    np.testing.assert_array_equal(F.read_classes(link), case["ref"])
    assert digest(target) == before
    assert listing(tmp_path) == ["latest.zarr", "store.zarr"]  # no .latest.zarr.old-* left


# ----------------------------------------------------------------------------------------------
# 2. --out can never be the scene


def test_out_that_is_the_scene_is_refused(case, tmp_path, computed):
    scene = write_scene_tif(tmp_path / "self.tif", case["cube"])
    before = digest(scene)
    link = tmp_path / "alias.tif"
    link.symlink_to(scene)
    hard = tmp_path / "hard.tif"
    os.link(scene, hard)
    for out in (scene, link, hard, tmp_path / "sub" / ".." / "self.tif"):
        with pytest.raises(OutputError, match=r"is the input scene .*self\.tif.*outside the scene"):
            hsi_engine.classify_to_file(scene, case["model"], out, tile=TILE, overwrite=True)
    with pytest.raises(OutputError, match="is the input scene"):  # an opened scene knows its source
        hsi_engine.classify_to_file(hsi_engine.open_scene(scene), case["model"], scene, tile=TILE, overwrite=True)
    with pytest.raises(OutputError, match="is the input scene"):
        hsi_engine.classify_to_file(scene, case["model"], scene, tile=TILE, overwrite=True, resume=True)
    with pytest.raises(OutputError, match="is the input scene"):  # the resumable driver, called directly
        cluster.run_to_file(scene, case["model"], scene, tile=TILE, overwrite=True, resume=True)
    rc, msg = cli(scene, case["model"], scene, "--overwrite")
    assert rc == 2 and "is the input scene" in msg
    assert computed["n"] == 0
    assert digest(scene) == before
    assert listing(tmp_path) == ["alias.tif", "hard.tif", "self.tif"]


def test_out_whose_side_file_is_the_scene_is_refused(case, tmp_path):
    scene = write_scene_tif(tmp_path / "m_probabilities.tif", case["cube"])
    before = digest(scene)
    # m.tif without --probabilities would remove m_probabilities.tif as a stale side file at commit
    with pytest.raises(OutputError, match=r"m_probabilities\.tif is the input scene"):
        hsi_engine.classify_to_file(scene, case["model"], tmp_path / "m.tif", tile=TILE, overwrite=True)
    assert digest(scene) == before and listing(tmp_path) == ["m_probabilities.tif"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_planted_at_the_lock_s_name_is_never_written_through(case, tmp_path, computed, link):
    """`.map.tif.lock -> scene.tif` made the run truncate the scene to 68 bytes of lock JSON (and a link to any
    other file overwrote it, exit 0): the lock is opened without following links, and a link there is refused."""
    scene = write_scene_tif(tmp_path / "scene.tif", case["cube"])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    before = digest(scene), victim.read_text()
    for target in (scene, victim):
        lock = tmp_path / ".map.tif.lock"
        os.symlink(target, lock) if link == "symlink" else os.link(target, lock)
        with pytest.raises(OutputError, match=r"lock file .*\.map\.tif\.lock (is a symbolic link|has 2 hard "
                                              r"links).*remove it"):
            hsi_engine.classify_to_file(scene, case["model"], tmp_path / "map.tif", tile=TILE)
        rc, msg = cli(scene, case["model"], tmp_path / "map.tif")
        assert rc == 2 and "lock file" in msg
        lock.unlink()
    assert (digest(scene), victim.read_text()) == before and computed["n"] == 0
    assert not (tmp_path / "map.tif").exists()


def test_out_inside_or_around_a_zarr_scene_is_refused(case, tmp_path):
    scene = F.write_zarr(tmp_path / "scene.zarr", case["cube"])
    before = digest(scene)
    for out, how in ((scene, "is"), (scene / "map.tif", "lies inside"), (scene / "c" / "map.zarr", "lies inside")):
        with pytest.raises(OutputError, match=rf"{how} the input scene"):
            hsi_engine.classify_to_file(scene, case["model"], out, tile=TILE, overwrite=True)
    nested = F.write_zarr(tmp_path / "maps.zarr" / "scene.zarr", case["cube"])
    with pytest.raises(OutputError, match="holds the input scene"):
        hsi_engine.classify_to_file(nested, case["model"], tmp_path / "maps.zarr", tile=TILE, overwrite=True)
    assert digest(scene) == before
    assert (nested / "zarr.json").is_file()


# ----------------------------------------------------------------------------------------------
# 3. a directory at a .tif name is refused up front


@pytest.mark.parametrize("name", ["dir.tif", "dir_probabilities.tif", "dir.tif.aux.xml"])
def test_overwrite_onto_a_directory_named_like_a_tif_output(case, tmp_path, computed, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep.txt").write_text("x")
    out = tmp_path / "dir.tif"
    for kw in ({}, {"probabilities": True}, {"resume": True}):
        with pytest.raises(OutputError, match=rf"refusing to replace .*{name}: expected a GeoTIFF file, found a "
                                              "directory holding keep.txt"):
            classify_to_file(case, out, overwrite=True, **kw)
    assert computed["n"] == 0
    assert listing(tmp_path) == [name]
    assert (tmp_path / name / "keep.txt").read_text() == "x"


# ----------------------------------------------------------------------------------------------
# 4. an overwrite replaces the whole output set


@pytest.mark.parametrize("resume", [False, True])
def test_overwrite_removes_sidecars_the_new_run_does_not_write(case, tmp_path, resume):
    out = tmp_path / "a.tif"
    classify_to_file(case, out, probabilities=True)
    sides = side_paths(out)
    assert sides["probabilities"].is_file() and sides["confidence"].is_file()
    unrelated = tmp_path / "a_probabilities_old.tif"  # not a name the writer produces: left alone
    unrelated.write_text("x")
    classify_to_file(case, out, overwrite=True, resume=resume)
    assert listing(tmp_path) == ["a.tif", "a.tif.aux.xml", "a_probabilities_old.tif"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])
    classify_to_file(case, out, overwrite=True, probabilities="float32")  # and back: all three again
    with rasterio.open(sides["probabilities"]) as src:
        prob = src.read()
    np.testing.assert_array_equal(prob.argmax(0) + 1, case["ref"])



def test_an_overwrite_keeps_a_class_map_named_like_a_side_file(case, tmp_path):
    """A class map of its own the user named ``a_confidence.tif`` is no confidence file of ``a.tif``: an overwrite
    of ``a.tif`` without probabilities deleted it and its ``.aux.xml``, silently, exit 0."""
    own = tmp_path / "a_confidence.tif"
    classify_to_file(case, own)
    kept = {p.name: digest(p) for p in (own, own.with_name(own.name + ".aux.xml"))}
    out = tmp_path / "a.tif"
    classify_to_file(case, out)
    classify_to_file(case, out, overwrite=True)
    assert {n: digest(tmp_path / n) for n in kept} == kept

def test_an_overwrite_leaves_no_gdal_side_file_of_the_old_outputs(case, tmp_path):
    """GDAL keeps a ``_probabilities``/``_confidence`` file's statistics and band names in its own ``.aux.xml``
    (QGIS writes one when it shows the layer) and external overviews in ``.ovr``: an overwrite kept them, so the
    new file read with the old model's class names as band names and the old statistics."""
    out = tmp_path / "a.tif"
    classify_to_file(case, out, probabilities=True)
    sides = side_paths(out)

    def stale(path):
        pam = path.with_name(path.name + ".aux.xml")
        pam.write_text('<PAMDataset><PAMRasterBand band="1"><Description>p(Old)</Description><Metadata><MDI '
                       'key="STATISTICS_MINIMUM">0.09</MDI></Metadata></PAMRasterBand></PAMDataset>')
        return pam

    pams = [stale(sides["probabilities"]), stale(sides["confidence"])]
    ovr = out.with_name("a.tif.ovr")
    ovr.write_bytes(b"old overviews")
    classify_to_file(case, out, overwrite=True, probabilities=True)
    assert not any(p.exists() for p in (*pams, ovr))
    with rasterio.open(sides["probabilities"]) as src:
        assert src.descriptions[0] != "p(Old)" and "STATISTICS_MINIMUM" not in src.tags(1)
    pams = [stale(sides["probabilities"]), stale(sides["confidence"])]
    classify_to_file(case, out, overwrite=True)  # without them: their side files go too
    assert listing(tmp_path) == ["a.tif", "a.tif.aux.xml"]

def test_without_overwrite_sidecars_are_never_removed(case, tmp_path):
    out = tmp_path / "a.tif"
    classify_to_file(case, out, probabilities=True)
    out.unlink()
    before = digest(side_paths(out)["probabilities"])
    with pytest.raises(OutputError, match="a_probabilities.tif already exists"):
        classify_to_file(case, out, probabilities=True)
    classify_to_file(case, out)  # a new map alone: the user's remaining files are not ours to delete
    assert digest(side_paths(out)["probabilities"]) == before



def test_without_overwrite_another_s_aux_xml_is_not_replaced(case, tmp_path):
    """An OUT.tif.aux.xml hsi-engine did not write (a GIS's statistics and styling) was silently replaced by the
    class names' one: refused like the map; one of ours left by a deleted map is replaced."""
    out = tmp_path / "a.tif"
    aux = side_paths(out)["aux"]
    aux.write_text("<PAMDataset><!-- QGIS styling --></PAMDataset>")
    with pytest.raises(OutputError, match=r"a\.tif\.aux\.xml already exists; pass overwrite=True"):
        classify_to_file(case, out)
    with pytest.raises(OutputError, match=r"a\.tif\.aux\.xml already exists; pass overwrite=True"):
        classify_to_file(case, out, resume=True)  # the resumable path: before any tile, not after all of them
    assert not partial_path(out).exists()
    assert "QGIS" in aux.read_text() and not out.exists()
    classify_to_file(case, out, overwrite=True)
    assert 'domain="hsi_engine"' in aux.read_text()
    out.unlink()
    classify_to_file(case, out)  # ours, its map deleted: replaced without asking


# ----------------------------------------------------------------------------------------------
# 5. a plain .tif run does not orphan an interrupted resumable run


def test_plain_tif_run_refuses_a_partial_store_and_overwrite_discards_it(case, tmp_path, monkeypatch):
    out = tmp_path / "r.tif"
    F.crash_writes_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        classify_to_file(case, out, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    part = partial_path(out)
    assert int((read_record(part) > 0).sum()) == 2
    before = digest(part)
    with pytest.raises(OutputError, match=r"interrupted run left .*r\.tif\.partial.*--resume.*--overwrite"):
        classify_to_file(case, out)
    scene = write_scene_tif(tmp_path / "scene.tif", case["cube"])
    rc, msg = cli(scene, case["model"], out)
    assert rc == 2 and "--resume" in msg and "--overwrite" in msg
    assert listing(tmp_path) == ["r.tif.partial", "scene.tif"] and digest(part) == before
    classify_to_file(case, out, overwrite=True)  # start over: the stale partial store goes with the commit
    assert listing(tmp_path) == ["r.tif", "r.tif.aux.xml", "scene.tif"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


def test_resume_still_finishes_the_partial_store(case, tmp_path, monkeypatch):
    out = tmp_path / "r.tif"
    F.crash_writes_after(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        classify_to_file(case, out, resume=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    classify_to_file(case, out, resume=True)
    assert listing(tmp_path) == ["r.tif", "r.tif.aux.xml"]
    np.testing.assert_array_equal(F.read_classes(out), case["ref"])


# ----------------------------------------------------------------------------------------------
# 6. Ctrl-C / SystemExit (what the CLI turns SIGTERM into) inside a run: no temp, no output


def _interrupt(monkeypatch, where: str, exc: type[BaseException], after: int = 2) -> None:
    count = {"n": 0}
    if where == "engine":  # the main thread, mid-scene
        real = FusedSSRN.__call__

        def hook(self, x):
            count["n"] += 1
            if count["n"] > after:
                raise exc()
            return real(self, x)

        monkeypatch.setattr(FusedSSRN, "__call__", hook)
    elif where == "writer":  # the writer thread, mid-scene
        real_w = GeoTiffClassMapWriter._write

        def hook_w(self, *a):
            count["n"] += 1
            if count["n"] > after:
                raise exc()
            return real_w(self, *a)

        monkeypatch.setattr(GeoTiffClassMapWriter, "_write", hook_w)
    elif where == "open":  # while the writer creates its hidden temp files
        real_d = GeoTiffClassMapWriter._describe

        def hook_d(self):
            real_d(self)
            raise exc()

        monkeypatch.setattr(GeoTiffClassMapWriter, "_describe", hook_d)
    else:  # the COG conversion at commit: the class map converted, its probabilities not yet
        import rasterio.shutil

        real_c = rasterio.shutil.copy

        def hook_c(*a, **kw):
            count["n"] += 1
            if count["n"] > 1:
                raise exc()
            return real_c(*a, **kw)

        monkeypatch.setattr(rasterio.shutil, "copy", hook_c)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("where", ["engine", "writer", "open", "commit"])
def test_interrupt_leaves_no_temp_and_keeps_the_previous_output(case, tmp_path, monkeypatch, exc, where):
    out = tmp_path / "m.tif"
    classify_to_file(case, out, probabilities=True)
    before = {n: digest(tmp_path / n) for n in listing(tmp_path)}
    _interrupt(monkeypatch, where, exc)
    # `as info` keeps the traceback (and so the writer) alive, as a handler printing it does: the cleanup must
    # have run already, not wait for the writer to be garbage-collected
    with pytest.raises(exc) as info:
        classify_to_file(case, out, probabilities=True, overwrite=True, readers=1, queue_depth=1)
    monkeypatch.undo()
    assert {n: digest(tmp_path / n) for n in listing(tmp_path)} == before  # no hidden .m.tif.tmp-* either
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _interrupt(monkeypatch, where, exc)
    with pytest.raises(exc) as info:
        classify_to_file(case, fresh / "m.tif", probabilities=True, readers=1, queue_depth=1)
    assert listing(fresh) == []
    del info


def test_a_full_disk_while_the_geotiff_is_committed_is_one_error_and_leaves_nothing(case, tmp_path, monkeypatch,
                                                                                    capsys):
    """GDAL reports a full disk as 'TIFFWriteDirectoryTagData: IO error writing tag data' (a CPLE_AppDefinedError):
    the command line printed a traceback and exited 1 (the zarr path said 'No space left', exit 2). It is an
    OutputError naming the full file system, exit 2, and no temp is left."""
    import shutil
    from collections import namedtuple

    import rasterio.shutil
    from rasterio._err import CPLE_AppDefinedError

    def full(*a, **k):
        raise CPLE_AppDefinedError(1, 1, "TIFFWriteDirectoryTagData:IO error writing tag data")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(rasterio.shutil, "copy", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, (10 << 20) - 4096, 4096))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    scene = F.write_zarr(tmp_path / "s.zarr", case["cube"])
    with pytest.raises(OutputError, match=r"the file system is full \(4,096 bytes free\) .*IO error writing tag"):
        hsi_engine.classify_to_file(scene, case["model"], out_dir / "map.tif", tile=TILE, progress=False)
    assert list(out_dir.iterdir()) == []
    rc = main(["classify", str(scene), "--model", str(case["model"]), "--out", str(out_dir / "cli.tif"),
               "--tile", str(TILE)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "error: cannot write the class map" in err
    assert list(out_dir.iterdir()) == []


def test_a_sweep_leaves_the_temps_of_a_live_run_into_a_side_file_s_name(tmp_path):
    """A run into x.tif swept `.x_probabilities.tif.tmp-*`, the live temp of a concurrent run whose own output is
    x_probabilities.tif; that run then failed at its end ('a write failed'). Names another live run holds are
    left alone; a killed run's temps (no live lock) are still swept."""
    from hsi_engine.lock import output_lock
    from hsi_engine.outputs import sweep_leftovers

    temp = tmp_path / ".x_probabilities.tif.tmp-e700f66b.tif"
    temp.write_bytes(b"live")
    with output_lock(tmp_path / "x_probabilities.tif", sweep=False):
        assert sweep_leftovers(tmp_path / "x.tif") == [] and temp.exists()
    assert sweep_leftovers(tmp_path / "x.tif") == [temp] and not temp.exists()


def test_a_sweep_removes_gdal_s_overview_temps_and_a_commit_s_aside_copies(tmp_path):
    """GDAL's COG driver builds overviews in '<destination>.ovr.tmp' (and '.msk.ovr.tmp') beside the hidden COG copy,
    and a commit keeps the old output's files under hidden '.old-' names until it is done: a run killed then left
    them for good. Names that only look alike stay."""
    from hsi_engine.outputs import sweep_leftovers

    gone = [".m.tif.cog-0123abcd.tif.ovr.tmp", ".m.tif.cog-0123abcd.tif.msk.ovr.tmp", ".m.tif.cog-0123abcd.tif",
            ".m_probabilities.tif.cog-89abcdef.tif.ovr.tmp", ".m.tif.old-0123abcd.tif", ".m.tif.ovr.old-0123abcd.ovr",
            ".m_confidence.tif.aux.xml.old-0123abcd.xml", ".m_probabilities.tif.ovr.old-0123abcd.ovr",
            ".m.tif.aux.xml.old-0123abcd.xml"]
    keep = ["m.tif", ".m.tif.ovr.tmp", ".m.tif.cog-0123abcd.tif.ovr.tmp.bak", ".m.tif.cog-0123abcd.tif.ovr",
            ".m.tif.ovr.old-backup.ovr", ".m.tif.aux.xml.ovr.tmp", ".other.tif.cog-0123abcd.tif.ovr.tmp"]
    for n in gone + keep:
        (tmp_path / n).write_bytes(b"x")
    assert sorted(p.name for p in sweep_leftovers(tmp_path / "m.tif")) == sorted(gone)
    assert listing(tmp_path) == sorted(keep)


def test_a_run_into_a_live_run_s_side_file_is_refused_and_sweeps_nothing(case, tmp_path, computed):
    """Run A writing m.tif with probabilities; run B into m_confidence.tif: B's sweep deleted A's live temporary
    (A then failed after its whole compute, told to check the disk), or B's map silently replaced A's confidence
    file. B is refused up front; with A writing no side files, B goes on."""
    from hsi_engine.lock import output_lock

    scene = F.dataarray(case["cube"])
    live_temp = tmp_path / ".m_confidence.tif.tmp-0123abcd.tif"  # A's confidence file being written
    with output_lock(tmp_path / "m.tif", side_files=True):
        live_temp.write_bytes(b"A's tiles")
        for run in (hsi_engine.classify_to_file, cluster.run_to_file):
            with pytest.raises(OutputError, match=r"another run is writing .*m\.tif with its side file "
                                                  r"m_confidence\.tif now"):
                run(scene, case["model"], tmp_path / "m_confidence.tif", tile=TILE, progress=False)
        assert live_temp.read_bytes() == b"A's tiles" and computed["n"] == 0
    with output_lock(tmp_path / "n.tif", side_files=False):
        hsi_engine.classify_to_file(scene, case["model"], tmp_path / "n_confidence.tif", tile=TILE, progress=False)


def test_a_run_whose_side_file_is_a_live_run_s_map_is_refused(case, tmp_path, computed):
    from hsi_engine.lock import output_lock

    scene = F.dataarray(case["cube"])
    with output_lock(tmp_path / "m_probabilities.tif"):  # B: a map of its own at A's side-file name
        with pytest.raises(OutputError, match=r"another run is writing .*m_probabilities\.tif now, which this run's "
                                              r"probabilities would replace"):
            hsi_engine.classify_to_file(scene, case["model"], tmp_path / "m.tif", tile=TILE, probabilities=True,
                                        progress=False)
        assert computed["n"] == 0
        hsi_engine.classify_to_file(scene, case["model"], tmp_path / "m.tif", tile=TILE, progress=False)


def test_a_file_put_at_the_output_while_the_run_wrote_is_not_replaced(case, tmp_path, monkeypatch):
    """Without --overwrite, a .tif run replaced a file another program put at its name meanwhile (a .zarr run
    refused); it refuses, keeps that file and leaves no temporaries."""
    out = tmp_path / "m.tif"
    real = GeoTiffClassMapWriter._commit

    def someone_writes_first(self):
        out.write_bytes(b"another program's file")
        return real(self)

    monkeypatch.setattr(GeoTiffClassMapWriter, "_commit", someone_writes_first)
    with pytest.raises(OutputError, match=r"appeared while this run was writing .* nothing was replaced; pass "
                                          r"overwrite=True \(--overwrite\)"):
        hsi_engine.classify_to_file(F.dataarray(case["cube"]), case["model"], out, tile=TILE, progress=False)
    assert out.read_bytes() == b"another program's file" and sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


@pytest.mark.parametrize("name, kw", [("a.tif", {}), ("a.zarr", {}), ("a.tif", {"probabilities": True})])
def test_an_output_in_the_way_is_refused_before_the_scene_is_read(case, tmp_path, monkeypatch, name, kw):
    """Into an existing output without overwrite, the run read the scene (its georeferencing, its scale sample: a
    large scene's seconds) before 'already exists; pass --overwrite'."""
    import hsi_engine.api

    out = tmp_path / name
    classify_to_file(case, out, **kw)

    def read(*a, **k):
        raise AssertionError("the scene was read before the output in the way was refused")

    monkeypatch.setattr(hsi_engine.api, "_Job", read)
    with pytest.raises(OutputError, match=r"already exists; pass overwrite=True"):
        classify_to_file(case, out, **kw)


def test_what_is_in_the_way_is_named_as_it_is(case, tmp_path):
    """Our own zarr map at a ``.tif`` name was called "a zarr store without the attribute title ..." (it has it), and
    an output under a path whose parent is a file got mkdir's bare "File exists"."""
    classify_to_file(case, tmp_path / "z.zarr")
    (tmp_path / "z.zarr").rename(tmp_path / "z.tif")
    with pytest.raises(OutputError, match="found a class-map zarr store hsi-engine wrote"):
        classify_to_file(case, tmp_path / "z.tif", overwrite=True)
    with pytest.raises(OutputError, match=r"class-map zarr store hsi-engine wrote, and overwrite=True \(--overwrite\) "
                                          r"does not replace a map of one format with another's"):
        classify_to_file(case, tmp_path / "z.tif")  # (not offered --overwrite, which would be refused)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(OutputError, match=r"notes is a file, not a directory; choose another --out"):
        classify_to_file(case, tmp_path / "notes" / "sub" / "m.tif")
    assert listing(tmp_path) == ["notes", "z.tif"]
