"""Where class maps go: which paths an output may take or replace (only what hsi-engine wrote, and the whole of it),
its side files (``_probabilities``, ``_confidence``, ``.aux.xml``), and the hidden leftovers of killed runs."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from ssrn.errors import is_text_path, raised_by_program, unexpanded_home

from .errors import OutputError
from .logs import warnings_ignored

__all__ = ["ZARR_TITLE", "check_not_scene", "check_output_suffix", "check_replaceable", "ensure_output_dir",
           "in_the_way", "is_hsi_zarr", "raised_by_program", "side_paths", "sweep_leftovers", "tiff_quantity",
           "zarr_root_attributes"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
ZARR_TITLE = "hsi-engine class map"  # the root attribute that marks a zarr store as ours (safe to overwrite)


def path_present(path: Path) -> bool:
    """Whether anything is at ``path``: a file, a directory, or a link (a dangling one too)."""
    return path.exists() or path.is_symlink()


def ours_aux(path: Path) -> bool:
    """Whether ``path`` is an ``.aux.xml`` hsi-engine wrote (its ``hsi_engine`` metadata domain); a pipe or device
    there is not (opening a FIFO to read it blocked for ever)."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            return b'domain="hsi_engine"' in f.read(1 << 20)
    except OSError:
        return False


def side_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Where the optional outputs of a GeoTIFF class map go: probabilities, confidence, the .aux.xml sidecar."""
    p = Path(path)
    return {"probabilities": p.with_name(f"{p.stem}_probabilities{p.suffix}"),
            "confidence": p.with_name(f"{p.stem}_confidence{p.suffix}"),
            "aux": p.with_name(p.name + ".aux.xml")}


def zarr_root_attributes(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes in a zarr v3 store's root ``zarr.json``, read as plain JSON ({} when there is none, or when it
    is no regular file of at most 16 MiB: a FIFO there blocked the read for ever)."""
    doc_path = Path(path) / "zarr.json"
    try:
        if not doc_path.is_file() or doc_path.stat().st_size > 16 << 20:
            return {}
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def is_hsi_zarr(path: str | os.PathLike) -> bool:
    """True when ``path`` is a zarr store hsi-engine wrote: a root ``zarr.json`` whose attributes hold our title."""
    return zarr_root_attributes(path).get("title") == ZARR_TITLE


def _found(path: Path) -> str:
    """What is at ``path``, in words, for error messages (``a directory holding thesis.txt, ...``)."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}"
    if path.is_dir():
        try:
            names = sorted(p.name for p in path.iterdir())
        except OSError:
            return "a directory that cannot be listed"
        if not names:
            return "an empty directory"
        if "zarr.json" in names:
            return ("a class-map zarr store hsi-engine wrote" if is_hsi_zarr(path) else
                    f"a zarr store without the attribute title = {ZARR_TITLE!r}")
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"a directory holding {shown}"
    return "a file" if path.is_file() else "something that is neither a file nor a directory"


MAP_NODATA_MEANING = "0 = no data (not classified)"  # a class map's tag since the first release
CONFIDENCE_QUANTITY = "confidence of the predicted class (max softmax probability)"  # a confidence file's tag
PROBABILITY_QUANTITY = "class probability (softmax)"  # a probabilities file's tag


def _tiff_tags(path: Path) -> dict[str, str] | None:
    """The dataset tags of the GeoTIFF at ``path``, or None where it is no regular file GDAL reads as a raster (a
    pipe there is not opened: reading it blocked for ever)."""
    if not path.is_file():
        return None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from .logs import warnings_ignored

    try:  # (a map in pixel coordinates: rasterio's warning; catch_warnings would mute other threads' warnings)
        with warnings_ignored(NotGeoreferencedWarning), rasterio.open(path, driver="GTiff") as f:
            return f.tags()  # (a VRT saved under the name is no map of ours: its sources are not opened)
    except Exception as e:  # noqa: BLE001 - anything GDAL cannot open is not a map we wrote
        if raised_by_program(e):  # (a service's deadline: not "no map of ours", which
            raise  # left an old model's probabilities beside a new map, or called a valid map foreign)
        return None


def _is_ours_tiff(tags: dict[str, str]) -> bool:
    """Whether GeoTIFF ``tags`` are those of an output hsi-engine wrote: a class map (its ``nodata_meaning``, any
    version), a probabilities or confidence file (their ``quantity``), or any with our ``software`` tag."""
    return (tags.get("nodata_meaning") == MAP_NODATA_MEANING
            or tags.get("quantity") in (CONFIDENCE_QUANTITY, PROBABILITY_QUANTITY)
            or str(tags.get("software", "")).startswith("hsi-engine"))


def tiff_quantity(path: Path) -> str | None:
    """The ``quantity`` tag of the GeoTIFF at ``path`` (our probabilities and confidence files carry one; a class map
    does not), or None."""
    return (_tiff_tags(path) or {}).get("quantity")


def why_not_ours(path: Path) -> str | None:
    """Why ``overwrite`` would not replace what is at ``path`` (``expected ..., found ...``), or None when it would
    (nothing there, or an output hsi-engine wrote: a zarr store with our title, a GeoTIFF with our tags; a
    ``--out scene.tif --overwrite`` typo replaced a 200-band scene with a class map)."""
    if path.suffix.lower() in ZARR_SUFFIXES or path.name.endswith(".partial"):
        if path_present(path) and not (path.is_dir() and is_hsi_zarr(path)):
            return (f"expected a zarr store hsi-engine wrote (zarr.json with title = {ZARR_TITLE!r}), "
                    f"found {_found(path)}")
        return None
    if path.is_dir():
        return f"expected a GeoTIFF file, found {_found(path)}"
    if path.suffix.lower() in TIFF_SUFFIXES and path_present(path):
        tags = _tiff_tags(path)
        if tags is None:
            return f"expected a GeoTIFF hsi-engine wrote, found {_found(path)} that is not a GeoTIFF"
        if not _is_ours_tiff(tags):
            return (f"expected a GeoTIFF hsi-engine wrote (its tag nodata_meaning = {MAP_NODATA_MEANING!r}), found "
                    "a GeoTIFF without it (a scene, or another program's raster)")
    return None


_REMOVE_IT = "choose another output path (--out), or remove it yourself if you no longer need it"


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse (``OutputError``) to replace anything at ``path`` but an output hsi-engine wrote there.

    ``.zarr`` and ``.partial``: an hsi-engine store (:func:`is_hsi_zarr`; a symbolic link to one is replaced,
    its target kept); ``.tif``/``.tiff``: the map and its side files must not be directories (``os.replace``
    cannot put a file there).
    """
    p = Path(path)
    zarr_like = p.suffix.lower() in ZARR_SUFFIXES or p.name.endswith(".partial")
    for t in (p,) if zarr_like else (p, *side_paths(p).values()):
        why = why_not_ours(t)
        if why is not None:
            raise OutputError(f"refusing to replace {t}: {why}; {_REMOVE_IT}")


def in_the_way(path: str | os.PathLike) -> OutputError:
    """The error for something at ``path`` that a run without ``overwrite`` will not write over: ``overwrite`` is
    offered only where it would replace it; elsewhere the error says what is there and that only its owner can
    remove it, so no suggestion leads to a second refusal."""
    p = Path(path)
    why = why_not_ours(p)
    if why is None:
        return OutputError(f"output {p} already exists; pass overwrite=True (--overwrite on the command line) to "
                           "replace it, or choose another path")
    if p.is_dir() and not p.is_symlink() and is_hsi_zarr(p):  # ours, but a store where a GeoTIFF goes
        return OutputError(f"{p} is in the way: {why}, and overwrite=True (--overwrite) does not replace a map of "
                           f"one format with another's; {_REMOVE_IT}")
    return OutputError(f"{p} is in the way: {why}, and overwrite=True (--overwrite) replaces only what hsi-engine "
                       f"wrote; {_REMOVE_IT}")


def _scene_source(scene: Any) -> Path | None:
    """The file or store a scene argument comes from: a path, or the ``source`` of an opened DataArray."""
    if isinstance(scene, (str, os.PathLike)):
        return Path(scene)
    enc = getattr(scene, "encoding", None)
    src = enc.get("source") if isinstance(enc, dict) else None
    return Path(src) if isinstance(src, str) and src else None


def check_not_scene(out: str | os.PathLike, scene: Any) -> None:
    """Refuse an output that is, holds or lies inside the input scene: writing it would destroy the input.

    Checks the map, its side files (``_probabilities``, ``_confidence``, ``.aux.xml``, replaced or removed at
    commit) and its ``.partial`` store, after resolving symbolic links (and hard links, by inode).
    """
    from .resume import partial_path  # resume imports this module

    src = _scene_source(scene)
    if src is None or not path_present(src):
        return
    s = Path(os.path.realpath(src))
    for t in (Path(out), *side_paths(out).values(), partial_path(out)):
        r = Path(os.path.realpath(t))
        if r == s or (t.exists() and os.path.samefile(t, s)):
            how = "is"
        elif s in r.parents:
            how = "lies inside"
        elif r in s.parents:
            how = "holds"
        else:
            continue
        raise OutputError(f"output {t} {how} the input scene {src}: writing the class map there would destroy "
                          "the scene; choose an --out outside the scene")


# what follows ".<output name>" in the names _tmp_name and remove_tree give (".tmp-0123abcd.tif", ".partial.trash-...");
# a GeoTIFF commit moves an old map's GDAL side files aside too (".m.tif.ovr.old-0123abcd.ovr",
# ".m_confidence.tif.aux.xml.old-0123abcd.xml"), and GDAL's COG driver builds overviews in "<destination>.ovr.tmp"
# and "<destination>.msk.ovr.tmp" beside the hidden COG copy (a run killed then left them for good)
_LEFTOVER = re.compile(r"(?:\.(?:aux\.xml|ovr))?"
                       r"(?:\.(?:partial\.)?(?:tmp|old|cog|trash)-[0-9a-f]{8}(?:\.(?:tiff?|zarr|xml|ovr|partial))?)+"
                       r"(?:\.(?:msk\.)?ovr\.tmp)?")


def is_leftover(name: str, names: Any) -> bool:
    """Whether ``name`` is a hidden temporary hsi-engine writes beside one of the outputs ``names``."""
    return any(name.startswith(f".{n}") and _LEFTOVER.fullmatch(name, len(n) + 1) is not None for n in names)


def leftovers(out: str | os.PathLike) -> list[Path]:
    """The hidden temporaries of killed runs beside ``out`` (see :func:`sweep_leftovers`), but those of a side
    file's name that another live run writes as its own output (``x_probabilities.tif``)."""
    p = Path(out)
    try:
        entries = list(p.parent.iterdir())
    except OSError:
        return []
    from .lock import lock_held

    names = [n for n in (p.name, *(s.name for s in side_paths(p).values()))
             if n == p.name or not lock_held(p.with_name(n))]
    return [e for e in entries if is_leftover(e.name, names)]


def remove_tree(path: Path) -> bool:
    """Delete a directory we wrote, renaming it to a hidden ``.<name>.trash-<random>`` first, so an interruption
    (SIGTERM) mid-delete leaves no half-deleted store under its real name, and a write still pinned to the
    directory (a stopped cluster task, see :func:`hsi_engine.resume.pinned_store`) lands in the trash. Returns
    whether it is gone (a directory the process may not delete stays, under the trash name if it could be
    renamed)."""
    trash = path.with_name(f".{path.name.lstrip('.')}.trash-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path  # cannot rename (gone, or a read-only directory entry): delete it where it is
    for _ in range(3):  # a file a late write created between rmtree's listing and its rmdir: one more pass
        shutil.rmtree(trash, ignore_errors=True)
        if not trash.exists():
            return True
    return False


def sweep_leftovers(out: str | os.PathLike) -> list[Path]:
    """Remove what a killed run into ``out`` left hidden beside it: ``.<name>.tmp-*``, ``.old-*``, ``.cog-*`` (and
    GDAL's ``.ovr.tmp`` overviews of it) and ``.trash-*`` of the map, its side files and ``<out>.partial`` (never the
    partial store itself). A commit the killed run left half done (its journal) is finished first
    (:func:`~hsi_engine.commit_journal.roll_forward`): its hidden files are the new output. Call only while holding
    the output's lock (:func:`hsi_engine.lock.output_lock`): no other run is writing them then."""
    from .commit_journal import roll_forward

    p = Path(out)
    roll_forward(p)
    removed = []
    for e in leftovers(p):
        with contextlib.suppress(OSError):
            if e.is_dir() and not e.is_symlink():
                remove_tree(e)
            else:
                e.unlink()
            removed.append(e)
    if removed:
        log.info("removed %d leftover(s) of an interrupted run beside %s: %s", len(removed), p,
                 ", ".join(r.name for r in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    return removed


def ensure_output_dir(d: Path) -> None:
    """Create the output's directory (and its parents); :class:`OutputError` when it cannot be made or written."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if raised_by_program(e):
            raise
        above = next((a for a in (d, *d.parents) if a.exists() or a.is_symlink()), None)
        if above is not None and not above.is_dir():  # mkdir says only "File exists"
            raise OutputError(f"cannot create the output directory {d}: {above} is {_found(above)}, not a directory; "
                              "choose another --out") from None
        raise OutputError(f"cannot create the output directory {d} ({e.strerror or e}); choose a writable "
                          "location for the class map") from None
    if not d.is_dir():
        raise OutputError(f"output directory {d} is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {d} is not writable; choose another --out or fix its permissions")


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # scheme://...: a URL, which pathlib would collapse to scheme:/...
# the longest name the writers add to the output's own: '.' + NAME + '.aux.xml.tmp-XXXXXXXX.xml' (and
# NAME_probabilities.tif's side files)
_TEMP_EXTRA = 40


def gdal_reaches(text: str) -> bool:
    """Whether GDAL, which takes a path's text as UTF-8, reaches the file whose bytes ``text`` stands for: not when
    those bytes are not UTF-8 (they come back from the OS as lone surrogates), nor under a locale that is not
    UTF-8 (Latin-1: 'ö' is b'\\xf6' on disk and b'\\xc3\\xb6' to GDAL)."""
    try:
        return os.fsencode(text) == text.encode("utf-8")
    except UnicodeEncodeError:
        return False


@functools.lru_cache(maxsize=1)
def zarr_unusable() -> str | None:
    """Why this process cannot read or write zarr groups holding groups, or None: under ``python -O`` zarr 3.1
    loses a group's metadata (an ``assert`` that pops a key; zarr-python #4362), so every class map (its
    ``resume`` group) failed once written, leaving a ``.partial``. Probed once, in memory, only under -O."""
    if not sys.flags.optimize:
        return None
    import zarr
    import zarr.storage

    store = zarr.storage.MemoryStore()
    try:
        with warnings_ignored(Warning, "Consolidated metadata"):
            zarr.open_group(store, mode="w").create_group("sub")
            zarr.consolidate_metadata(store)
    except TypeError as e:
        return (f"this zarr ({zarr.__version__}) cannot read a group's metadata under python -O / PYTHONOPTIMIZE "
                f"({e}; zarr-python issue 4362): run without -O (unset PYTHONOPTIMIZE), or write a .tif")
    return None


def check_output_suffix(path: str | os.PathLike) -> str:
    """The output's suffix (lower case) when it names a class-map format we write; else :class:`OutputError`.
    A URL (``s3://``, ``file://``) or a name too long for the temporary files written beside it is refused too,
    before anything is computed, and so is a path starting with ``~``, which Python does not expand (the command line
    does): ``"~/map.tif"`` made a directory named ``~`` in the working directory."""
    if not is_text_path(path):
        raise OutputError(f"the output must be a path (a str or pathlib.Path, e.g. 'map.tif'); got "
                          f"{type(path).__name__} {repr(path)[:80]}" + (": decode it first (os.fsdecode(out))"
                                                                        if isinstance(path, bytes) else ""))
    raw = os.fspath(path)
    home = unexpanded_home(raw)
    if home:
        raise OutputError(f"output {home}")
    if URL.match(raw):
        raise OutputError(f"cannot write a class map to {raw}: hsi-engine writes local paths only (a URL would be "
                          "taken as a local directory named after its scheme); write the map locally and copy it "
                          "(e.g. aws s3 cp map.tif s3://...), or write into a mounted path")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES and not gdal_reaches(str(p.absolute())):
        raise OutputError(f"cannot write a GeoTIFF to {os.fsencode(p)!r}: the path holds bytes that are not UTF-8 "
                          "text (or this process's locale is not UTF-8), which GDAL cannot take; choose a path in "
                          "UTF-8, run in a UTF-8 locale (e.g. LC_ALL=C.UTF-8), or write a .zarr")
    if suffix not in TIFF_SUFFIXES + ZARR_SUFFIXES:
        if p.name.lower() in TIFF_SUFFIXES + ZARR_SUFFIXES:  # ('.tif': a hidden file's name, without a suffix)
            raise OutputError(f"cannot write a class map to {p}: the name {p.name!r} is a suffix alone; give the map "
                              f"a name (e.g. map{p.name})")
        raise OutputError(f"cannot write a class map to {p}: suffix {suffix or '(none)'!r} is not supported; use "
                          ".tif/.tiff (Cloud-Optimised GeoTIFF) or .zarr")
    if suffix in ZARR_SUFFIXES and zarr_unusable():
        raise OutputError(f"cannot write a class map to {p}: {zarr_unusable()}")
    try:
        name_max = os.pathconf(p.parent if p.parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    if len(os.fsencode(p.name)) + _TEMP_EXTRA > name_max:
        raise OutputError(f"cannot write a class map to {p}: its name is {len(os.fsencode(p.name))} bytes, and the "
                          f"temporary and side files written beside it add up to {_TEMP_EXTRA} more than this file "
                          f"system's {name_max}: choose a name of at most {name_max - _TEMP_EXTRA} bytes")
    return suffix
