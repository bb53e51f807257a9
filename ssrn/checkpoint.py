"""Model directories: ``weights.safetensors`` + ``model.json`` (which records the weights' sha256, checked at
load). Loading never unpickles."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .config import InvalidConfig, SSRNConfig
from .errors import (CheckpointError, OptionError, check_flag, first_line, is_text_path, is_whole,
                     not_a_model_error, unexpanded_home)
from .model import SSRN, filled_model

WEIGHTS = "weights.safetensors"
MODEL_JSON = "model.json"
FORMAT = "hsi-engine.ssrn"
FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save zip archives
MAX_MODEL_JSON_BYTES = 16 << 20  # the shipped model's is 57 KB (its split masks included)
MAX_MAP_CLASSES = 255  # class maps are uint8: 0 is nodata
# what a weight may be stored as (safetensors dtype names); BatchNorm's num_batches_tracked may also be int64
_WEIGHT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_COUNTER_DTYPES = {**_WEIGHT_DTYPES, "I64": "int64"}
_MAX_INT_DIGITS = 100  # an integer in model.json longer than this is hostile (a class count has 3 digits)
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8}
# a weights file's safetensors header: the shipped model's is 6 KB, a 64 + 64-block network's ~200 KB
MAX_WEIGHTS_HEADER_BYTES = 4 << 20


def _looks_pickled(path: Path) -> bool:
    """Whether the file ``path`` starts like a pickle or a torch.save archive (see :func:`_pickled_bytes`)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return _pickled_bytes(head, path.stat().st_size)


def _pickled_bytes(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` is a pickle (protocol >= 2) or a torch.save zip
    archive, and not safetensors: a safetensors file starts with its header's length (u64, little-endian; its
    first byte is 0x80 for 1 in 256 header sizes) followed by the header's ``{``."""
    if not head.startswith(_PICKLE_MAGIC):
        return False
    return not (len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size)


def _check_not_a_pointer(path: Path, head: bytes) -> None:
    """Refuse a Git LFS pointer (a repository cloned without its LFS files; ``head``: the file's first bytes) for
    what it is."""
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights: the repository was cloned without its "
                              "LFS files; run `git lfs pull` in it (or copy the model directory from a full copy)")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {_MAX_INT_DIGITS} are read)")
    return int(text)


def _parse_json(path: Path) -> Any:
    """``path`` parsed as JSON, refusing what would exhaust the parser: a file over MAX_MODEL_JSON_BYTES, a huge
    integer (int() of n digits is quadratic), nesting past the recursion limit. Raises CheckpointError."""
    size = path.stat().st_size
    if size > MAX_MODEL_JSON_BYTES:
        raise CheckpointError(f"{path} is {size:,} bytes; a model.json is at most {MAX_MODEL_JSON_BYTES:,} "
                              f"(the shipped model's is ~60 KB): it is not a model written by ssrn.save_model; "
                              "re-save the model, or trim what was added to its meta")
    with open(path, "rb") as f:
        data = f.read(MAX_MODEL_JSON_BYTES + 1)  # the file may have grown since stat
    if len(data) > MAX_MODEL_JSON_BYTES:
        raise CheckpointError(f"{path} is over {MAX_MODEL_JSON_BYTES:,} bytes; a model.json is at most that: "
                              "re-save the model")
    _check_not_a_pointer(path, data)
    try:
        return json.loads(data.decode("utf-8-sig"), parse_int=_parse_int)  # (a BOM: Windows editors add one)
    except RecursionError:
        raise CheckpointError(f"{path} is not a readable model.json: its JSON nests too deeply (a model.json nests "
                              "a few levels); re-save the model with ssrn.save_model") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, _parse_int's refusal
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); expected the "
                              "UTF-8 JSON written by ssrn.save_model: if you edited it, fix it and save it as UTF-8; "
                              "else re-save the model") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_MODEL_FILES = frozenset({WEIGHTS, MODEL_JSON})
# a file the model hsi-engine ships carries beside its model files (ssrn cannot import hsi_engine to find its path)
SHIPPED_MARKER = "SHIPPED.md"


def _shipped_dir(target: Path) -> Path | None:
    """The model directory holding :data:`SHIPPED_MARKER` that ``target`` is or lies in (a link at ``target`` is
    replaced, not written through: only its parents count), else None. Only a model directory counts: a project's
    own SHIPPED.md above its models is not the shipped model."""
    for d in ([] if target.is_symlink() else [target]) + list(target.parents):
        if (d / SHIPPED_MARKER).is_file() and all((d / f).is_file() for f in _MODEL_FILES):
            return d
    return None


def _check_not_shipped(target: Path, given: str) -> None:
    """Refuse the model this package ships (or a directory inside it) as a save target, even with overwrite: an
    ``import-keras --overwrite`` replaced it, and the demo, which scores it on its recorded split, then failed."""
    shipped = _shipped_dir(target)
    if shipped is None:
        return
    where = "is" if shipped == target else f"lies inside {shipped},"
    raise CheckpointError(f"{given} {where} the model hsi-engine ships (its directory holds {SHIPPED_MARKER}; the "
                          "demo scores it on its recorded split): hsi-engine never replaces it or writes into it, "
                          "even with --overwrite; write the new model to a new directory (a new --out). If it is a "
                          f"copy you made and mean to replace, delete {shipped / SHIPPED_MARKER} from it first")


def _is_model_json(path: Path) -> bool:
    """Whether ``path`` is a model.json carrying this project's format marker (written by save_model)."""
    try:
        doc = _parse_json(path)
    except (OSError, CheckpointError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


# save_model's temporaries beside or inside a model directory NAME: '.NAME.hsi-save-XXXXXXXX' (the new model) and
# '.NAME.hsi-old-XXXXXXXX' (the replaced one), XXXXXXXX mkdtemp's 8 random characters; a tag no person would give a
# backup, so that sweeping them never takes one
_SAVE_TAG = "hsi-save-"
_OLD_TAG = "hsi-old-"
_TEMP_EXTRA = len(".") + len(".") + len(_SAVE_TAG) + 8  # the longest: mkdtemp's prefix around the name, 8 characters
_TEMP_SUFFIX = re.compile(f"(?:{_SAVE_TAG}|{_OLD_TAG})[a-z0-9_]{{8}}")  # (mkdtemp's alphabet)
# the names earlier releases gave them ('.NAME.XXXXXXXX', '.NAME.old.XXXXXXXX'): named in a refusal, never swept
_LEGACY_TEMP_SUFFIX = re.compile(r"(?:old\.)?[a-z0-9_]{8}")


def _temp_prefix(name: str, tag: str) -> str:
    """The prefix of save_model's temporaries (``tag``: :data:`_SAVE_TAG` or :data:`_OLD_TAG`) for a model directory
    named ``name``."""
    return f".{name}.{tag}"


def _is_temp_name(entry: str, name: str) -> bool:
    """Whether ``entry`` is a name save_model gives its temporaries for a model directory named ``name``:
    ``.NAME.hsi-save-XXXXXXXX`` (the new model, built beside the target or inside it) or ``.NAME.hsi-old-XXXXXXXX``
    (the replaced one, beside it)."""
    prefix = f".{name}."
    return entry.startswith(prefix) and _TEMP_SUFFIX.fullmatch(entry[len(prefix):]) is not None


def _is_legacy_temp_name(entry: str, name: str) -> bool:
    """Whether ``entry`` is a name earlier releases gave save_model's temporaries (``.NAME.XXXXXXXX``,
    ``.NAME.old.XXXXXXXX``); a person may name a backup so too (``.NAME.20240101``)."""
    prefix = f".{name}."
    return entry.startswith(prefix) and _LEGACY_TEMP_SUFFIX.fullmatch(entry[len(prefix):]) is not None


def is_progress_save(meta: object) -> bool:
    """Whether a model's ``meta`` is a training run's progress save (its report says ``status: "training"``), not
    the finished model of a run."""
    report = meta.get("report") if isinstance(meta, dict) else None
    return isinstance(report, dict) and report.get("status") == "training"


def check_model_path(path: Any) -> None:
    """Refuse a model directory path that is no text path (:class:`OptionError`) or starts with ``~``
    (:class:`CheckpointError`: Python does not expand it, and ``"~/models/in"`` made a directory named ``~``)."""
    if not is_text_path(path):
        raise OptionError(f"the model directory must be a path (a str or pathlib.Path); got {type(path).__name__} "
                          f"{repr(path)[:80]}" + (": decode it first (os.fsdecode(path))" if isinstance(path, bytes)
                                                  else ""))
    home = unexpanded_home(path)
    if home is not None:
        raise CheckpointError(f"model directory {home}")


def check_model_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a ``save_model`` target that cannot or must not be written, before any work is spent on it.

    A target is fine when it does not exist (its nearest existing ancestor must be a writable directory), is
    an empty directory, or, with ``overwrite``, is a model directory (only model.json with this project's
    format marker and weights.safetensors). The model hsi-engine ships (a directory holding
    :data:`SHIPPED_MARKER`) is refused even with ``overwrite``, as is any path inside it. Anything else raises
    :class:`CheckpointError`; nothing is created. Returns the absolute path (its directories resolved, its last
    component kept as given).

    A symbolic link at the target is never written through (as classify's outputs): one to a model directory is,
    with ``overwrite``, replaced by the new model directory, the directory it points to left untouched (without
    ``overwrite`` it is refused like that directory); a link to anything else (an empty or other directory, a file,
    nothing) is refused, naming what it points to.
    """
    check_model_path(path)
    overwrite = check_flag("overwrite", overwrite)
    given_path = Path(path)
    # the last component is not resolved: a link there is the target itself, replaced (never written through)
    target = (given_path.resolve() if given_path.name in ("", "..")
              else given_path.parent.resolve() / given_path.name)
    if not target.name:
        raise CheckpointError(f"cannot write a model directory at {str(path)!r} (the file-system root); "
                              "expected a directory path such as models/indian_pines")
    # "." or "a/.." say little in a message: name the directory they stand for too
    given = str(path) if Path(path).name == target.name else f"{path} ({target})"
    _check_not_shipped(target, given)
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        name_max = os.pathconf(existing if existing.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    size = len(os.fsencode(target.name))
    if size + _TEMP_EXTRA > name_max:  # the save's temporary directories beside it: '.NAME.hsi-save-XXXXXXXX'
        raise CheckpointError(f"cannot write a model directory named {target.name[:40]!r}...: its name is {size} "
                              f"bytes, and the temporary directories the save writes beside it add {_TEMP_EXTRA} "
                              f"more than the file system's {name_max}; choose a name of at most "
                              f"{name_max - _TEMP_EXTRA} bytes")
    if target.is_symlink():
        _check_model_link(target, given, overwrite)
        return target
    if target.is_dir():
        entries = sorted(e.name for e in target.iterdir())
        if not entries:
            _check_writable(target, given)
            return target
        if set(entries) <= _MODEL_FILES and MODEL_JSON in entries and _is_model_json(target / MODEL_JSON):
            if not overwrite:
                raise CheckpointError(f"{given} is an existing model directory; pass --overwrite "
                                      "(overwrite=True) to replace it, or choose another output directory")
            # (its parent need not be writable: the files are then replaced inside it, see save_model)
            _check_writable(target, given)
            return target
        foreign = [e for e in entries if e not in _MODEL_FILES]
        shown = ", ".join((foreign or entries)[:5]) + (", ..." if len(foreign or entries) > 5 else "")
        if foreign and all(_is_temp_name(e, target.name) for e in foreign):
            them = "it" if len(foreign) == 1 else "them"
            raise CheckpointError(f"{given} holds {shown}: the temporary "
                                  f"{'directory' if len(foreign) == 1 else 'directories'} of a save into it that "
                                  f"was killed before it finished, or is still running; once none runs, delete "
                                  f"{them} ({target / foreign[0]}) and rerun (hsi-engine train removes {them} "
                                  "itself where it can lock its --out)")
        if foreign and all(_is_temp_name(e, target.name) or _is_legacy_temp_name(e, target.name) for e in foreign):
            one = len(foreign) == 1
            raise CheckpointError(f"{given} holds {shown}, named like the temporary "
                                  f"{'directory' if one else 'directories'} an earlier hsi-engine's save left when "
                                  "it was killed before it finished (this one no longer removes such names itself: "
                                  f"a backup may be named so); if {'it is' if one else 'they are'} that, delete "
                                  f"{'it' if one else 'them'} ({target / foreign[0]}), else move "
                                  f"{'it' if one else 'them'} out; then rerun")
        what = (f"it holds files a model directory does not ({shown})" if foreign
                else f"its {MODEL_JSON} is not a model's" if MODEL_JSON in entries
                else f"it holds {shown} but no {MODEL_JSON}")
        raise CheckpointError(f"{given} exists and is not a model directory ({what}); hsi-engine "
                              "writes a model only into a new or empty directory, or replaces one it wrote "
                              "(with --overwrite): choose another output directory, or move those files out")
    if target.exists() or target.is_symlink():
        raise CheckpointError(f"{given} exists and is not a directory; expected a new or empty directory "
                              "for the model: choose another output path")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CheckpointError(f"cannot create the model directory {given}: {ancestor} is a file, not a "
                              "directory; choose an output path under a directory")
    _check_writable(ancestor, given)
    return target


def _is_model_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding only what save_model writes (and the shipped model's marker), its
    model.json carrying the format."""
    try:
        entries = {e.name for e in path.iterdir()}
    except OSError:
        return False
    return entries <= _MODEL_FILES | {SHIPPED_MARKER} and MODEL_JSON in entries and _is_model_json(path / MODEL_JSON)


def _check_model_link(target: Path, given: str, overwrite: bool) -> None:
    """Refuse a symbolic link at a save target unless it points to a model directory and ``overwrite`` is set:
    then the save replaces the link itself (its directory is kept), as classify replaces a link at its outputs."""
    link = os.readlink(target)
    if target.is_dir() and _is_model_dir(target):
        if not overwrite:
            raise CheckpointError(f"{given} is a symbolic link to the model directory {link}; pass --overwrite "
                                  "(overwrite=True) to replace the link by the new model directory (the directory "
                                  f"it points to is kept), or choose another output directory")
        _check_writable(target.parent, given)
        return
    found = ("nothing (a broken link)" if not target.exists() else "a file" if target.is_file()
             else "an empty directory" if target.is_dir() and not any(target.iterdir())
             else "a directory that is not a model directory" if target.is_dir() else "a special file")
    raise CheckpointError(f"{given} is a symbolic link to {link} ({found}); hsi-engine never writes a model "
                          "through a link, and replaces one only where it points to a model directory (with "
                          f"--overwrite): pass the directory itself ({Path(os.path.realpath(target))}) or choose "
                          "another output directory")


def _check_writable(directory: Path, given: str) -> None:
    """Refuse now a directory the model could not be written into later (after the training is spent)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write the model directory {given}: no write permission in {directory}; "
                              "choose an output directory you can write to")


def _remove_model_dir(path: Path) -> None:
    """Delete a replaced model directory: only the files save_model writes, then the (then empty) directory.

    Anything else found there, or what cannot be deleted (a directory made read-only since the save began), is
    left in place with a warning: the new model is already in place. A replaced symbolic link is removed, never
    what it points to."""
    try:
        if path.is_symlink():
            path.unlink()
            return
        for name in _MODEL_FILES:
            (path / name).unlink(missing_ok=True)
        path.rmdir()
    except OSError as e:
        logging.getLogger("ssrn.checkpoint").warning("the replaced model directory %s was left in place (%s); "
                                                     "the new model is saved: delete it by hand", path,
                                                     e.strerror or e)


def _holds_cwd(target: Path) -> bool:
    """Whether the process's working directory is ``target`` or lies inside it."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory is already gone
        return False
    return cwd == target or target in cwd.parents


def _move_into_empty(tmp: Path, target: Path) -> None:
    """Move the files of ``tmp`` into the empty directory ``target`` (kept: it may be the working directory),
    model.json last so it never names weights that are not there yet; on failure ``target`` is empty again."""
    moved: list[Path] = []
    try:
        for name in (WEIGHTS, MODEL_JSON):
            (tmp / name).rename(target / name)
            moved.append(target / name)
    except BaseException:
        for f in moved:
            f.unlink(missing_ok=True)
        raise
    tmp.rmdir()


def _looks_like_save_temp(path: Path) -> bool:
    """Whether the directory ``path`` holds nothing but what save_model writes into its temporary (model files,
    and the empty ``.umask`` probe), so that removing it loses nothing of anyone else's."""
    if path.is_symlink() or not path.is_dir():
        return False
    for e in path.iterdir():
        if e.name == ".umask":
            if e.is_symlink() or not e.is_dir() or any(e.iterdir()):
                return False
        elif e.name not in _MODEL_FILES or e.is_symlink() or not e.is_file():
            return False
    return True


def sweep_save_leftovers(path: str | os.PathLike) -> list[str]:
    """Clear what killed saves into the model directory ``path`` left, returning the names removed: their new
    models' temporaries (``.NAME.hsi-save-XXXXXXXX`` beside it or inside it) and the replaced models
    (``.NAME.hsi-old-XXXXXXXX`` beside it), only where they hold nothing but model files. What can be recovered is,
    with a warning: a save killed between moving its files into ``path`` is finished (see :func:`_finish_move`);
    when ``path`` is missing (a save killed between its swap's renames), the model it was replacing is put back.
    Call only while holding the output's lock (:func:`ssrn.lock.file_lock`): no other run is saving there then."""
    log = logging.getLogger("ssrn.checkpoint")
    target = Path(os.path.abspath(path))
    name, removed = target.name, []
    try:
        beside = [target.parent / e for e in os.listdir(target.parent) if _is_temp_name(e, name)]
        inner = ([target / e for e in os.listdir(target) if _is_temp_name(e, name)]
                 if target.is_dir() and not target.is_symlink() else [])
    except OSError:
        return removed
    # an inner temporary left holding model.json alone: finished, or kept (never removed: the model is in it)
    inner = [e for e in inner if _finish_move(e, target, log) is None]
    old = [e for e in beside if e.name.startswith(_temp_prefix(name, _OLD_TAG)) and _is_model_dir(e)]  # (or a link)
    if old and not os.path.lexists(target):
        back = max(old, key=lambda e: e.lstat().st_mtime_ns)
        try:
            os.rename(back, target)
        except OSError as err:
            log.warning("%s is missing (a save replacing it was killed between its renames), and the model it replaced "
                        "could not be put back from %s (%s): rename that to %s yourself", target, back,
                        err.strerror or err, name)
        else:
            log.warning("%s was missing (a save replacing it was killed between its renames): put back the model "
                        "it was replacing, from %s", target, back.name)
            old.remove(back)
    for e in old + [e for e in beside + inner if e not in old and _looks_like_save_temp(e)]:
        with contextlib.suppress(OSError):
            if e.is_symlink():
                e.unlink()  # a replaced link: never what it points to
            else:
                shutil.rmtree(e)
            removed.append(e.name)
    return removed


def _finish_move(tmp: Path, target: Path, log: logging.Logger) -> bool | None:
    """Finish the save whose temporary ``tmp`` (inside ``target``) was killed after moving its weights into
    ``target`` but before its model.json followed (in :func:`_move_into_empty` or :func:`_replace_files`):
    ``tmp``'s model.json is moved in where ``target``'s weights are the ones it records (``weights_sha256``), and
    True returned; else both are left as they are, with a warning, and False returned. None where ``tmp`` is not
    such a temporary (it does not hold model.json alone)."""
    src = tmp / MODEL_JSON
    try:
        if tmp.is_symlink() or {e.name for e in tmp.iterdir()} != {MODEL_JSON} or src.is_symlink():
            return None
    except OSError:
        return None
    weights, dest = target / WEIGHTS, target / MODEL_JSON
    try:
        doc = _parse_json(src)
        recorded = doc.get("weights_sha256") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
        ours = (isinstance(recorded, str) and weights.is_file() and not weights.is_symlink()
                and (not os.path.lexists(dest) or (dest.is_file() and not dest.is_symlink() and _is_model_json(dest)))
                and file_sha256(weights) == recorded)
        if ours:
            os.replace(src, dest)
            tmp.rmdir()
    except (OSError, CheckpointError) as e:
        log.warning("%s holds the model.json of a save into %s that was killed before it finished; it could not be "
                    "finished (%s) and is left as it is: delete %s, then rerun the training or the save", tmp.name,
                    target, getattr(e, "strerror", None) or e, tmp)
        return False
    if not ours:
        log.warning("%s holds the model.json of a save into %s that was killed before it finished, but %s is not the "
                    "weights it records (missing, or another sha256): left as it is; delete %s, then rerun the "
                    "training or the save", tmp.name, target, WEIGHTS, tmp)
        return False
    log.warning("finished a save into %s that was killed before it finished: its weights were in place (their "
                "sha256 the one its model.json records), and its %s is now moved in from %s", target, MODEL_JSON,
                tmp.name)
    return True


def _replace_files(tmp: Path, target: Path) -> None:
    """Replace the model files of the directory ``target`` by those of ``tmp`` (inside it), model.json last."""
    for name in (WEIGHTS, MODEL_JSON):
        os.replace(tmp / name, target / name)
    tmp.rmdir()


def _check_still_free(target: Path, tmp: Path, given: Path) -> None:
    """Refuse, at the moment of the move, a target that is no longer new or empty (``tmp``, this save's own
    temporary, aside): another save wrote there since the check, and without overwrite it is never replaced."""
    if target.is_symlink() or (target.exists() and not (target.is_dir() and all(
            e == tmp for e in target.iterdir()))):
        raise CheckpointError(f"{given} was written by another save while this one ran (it was new or empty when "
                              "this save began); it is left as that save wrote it: pass --overwrite "
                              "(overwrite=True) to replace it, or choose another output directory")


def _rename_new(tmp: Path, target: Path, given: Path) -> None:
    """Move ``tmp`` to the new ``target``: a directory that appeared there since the check is never replaced
    (rename(2) refuses a non-empty one; an empty one made meanwhile is)."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not os.path.lexists(target):
            raise
        _check_still_free(target, tmp, given)
        raise


def _swap(tmp: Path, target: Path) -> None:
    """Put the new model directory ``tmp`` in place of the model directory (or link to one) ``target``, then drop
    the old one's files; a mount point, which cannot be renamed, has its files replaced inside it instead. Until the
    new one is in place, any failure or interrupt puts the old one back."""
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, _OLD_TAG), dir=target.parent))
    old.rmdir()  # a unique free name to move the old directory to
    try:
        try:
            os.rename(target, old)
        except OSError as e:
            if e.errno != errno.EBUSY or target.is_symlink() or not target.is_dir():
                raise
            _replace_from_beside(tmp, target)  # (a mount point: rename(2) says EBUSY)
            return
        os.rename(tmp, target)
    except BaseException:
        # (checked here, not by a flag set after the rename: an interrupt between the two left the old model
        # hidden under its temporary name and nothing at the target)
        if os.path.lexists(old) and not os.path.lexists(target):
            os.rename(old, target)  # the old model goes back where it was
        raise
    _remove_model_dir(old)


def _replace_from_beside(tmp: Path, target: Path) -> None:
    """Replace the model files inside ``target`` by those of ``tmp`` (beside it, maybe on another file system):
    moved first into a temporary inside ``target``, so that the replacing renames stay on its file system."""
    inner = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, _SAVE_TAG), dir=target))
    try:
        for name in (WEIGHTS, MODEL_JSON):
            shutil.move(tmp / name, inner / name)
        _replace_files(inner, target)
    except BaseException:
        shutil.rmtree(inner, ignore_errors=True)
        raise
    tmp.rmdir()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_ssrn(model: Any) -> bool:
    """Whether ``model`` is an ``ssrn.SSRN`` (a torch module with an SSRNConfig), as save_model and the trainer
    take: not a path, a state dict or a config."""
    return isinstance(model, torch.nn.Module) and isinstance(getattr(model, "config", None), SSRNConfig)


def _umask_in(directory: Path) -> int:
    """The process's umask, read from a directory made in ``directory`` (this save's own temporary one):
    ``os.umask`` can only be read by setting it, process-wide, and for that moment other threads (GDAL's, HDF5's)
    created files world-writable."""
    probe = directory / ".umask"
    probe.mkdir(0o777)
    try:
        return 0o777 & ~stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()


def save_model(model: SSRN, path: str | os.PathLike, meta: dict[str, Any] | None = None, *,
               overwrite: bool = False, in_place: bool = False) -> Path:
    """Write ``model`` to the directory ``path``, never half-written (built beside it, then moved in).

    ``path`` must be new or an empty directory; an existing model directory (written by save_model) is
    replaced only with ``overwrite=True``. Any other existing path raises :class:`CheckpointError` and is
    left untouched (see :func:`check_model_target`). A model directory that is replaced is swapped for the new
    one, unless it must stay where it is: then its files are replaced inside it, model.json last (its checksum
    pairs it with the weights). It stays when it was empty, holds the working directory, lies in a directory this
    process cannot write, is a mount point, or ``in_place`` asks it to (the trainer's later saves into the
    directory its first save filled: its mode and owner are the user's).

    ``meta`` (default: ``model.meta``) travels in model.json: normalisation ``mean``/``std`` per band,
    ``class_names``, ``palette`` (RGB triplets), ``wavelengths``, the training ``report``, ``command``.
    """
    if not is_ssrn(model):  # (a state dict or a path: an AttributeError on .meta before)
        swapped = " (the arguments are save_model(model, path))" if is_ssrn(path) else ""
        raise not_a_model_error("save_model", model, swapped)
    target = check_model_target(path, overwrite)
    in_place = check_flag("in_place", in_place)
    given = Path(path)
    meta = dict(model.meta if meta is None else meta)
    # as load_model will read it: a meta that no longer fits the network (a cut std, two class names for 16
    # classes) was saved, over a working model with overwrite=True, as a directory that could not be loaded
    _check_meta(json.loads(json.dumps(_jsonable(meta))), model.config, f"the meta to save in {given}")
    # built inside the target where the directory itself must stay: an empty one or one the caller keeps
    # (``in_place``), one holding the working directory (`--out .`: swapping it would leave the process in a
    # deleted one), or one in a parent this process cannot write (an empty directory made for the user in theirs)
    link = target.is_symlink()  # (to a model directory, overwrite=True: checked above) replaced, not written into
    empty = not link and target.is_dir() and not any(target.iterdir())
    inside = not link and target.is_dir() and (empty or in_place or _holds_cwd(target)
                                               or not os.access(target.parent, os.W_OK | os.X_OK))
    if inside and not os.access(target, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write the model into {given}: no write permission there")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, _SAVE_TAG), dir=target if inside else target.parent))
    umask = _umask_in(tmp)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a model directory is as readable as any new one
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        try:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        except SafetensorError as e:  # (a full disk: 'I/O error: No space left on device', a traceback)
            raise CheckpointError(f"cannot write the model into {given} ({first_line(e)}); free space there, or "
                                  "write it elsewhere") from None
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
               "weights_sha256": file_sha256(tmp / WEIGHTS), "meta": _jsonable(meta)}
        try:
            (tmp / MODEL_JSON).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        except OSError as e:  # a full disk: a bare OSError without a file name
            raise CheckpointError(f"cannot write the model into {given} ({e.strerror or e}); free space there, or "
                                  "write it elsewhere") from None
        (tmp / WEIGHTS).chmod(0o666 & ~umask)
        if not overwrite:  # another save may have written there since the check: never replaced without overwrite
            _check_still_free(target, tmp, given)
        if inside and empty:
            _move_into_empty(tmp, target)
        elif inside:  # a model directory that stays: its files replaced, model.json last (its checksum pairs them)
            _replace_files(tmp, target)
        elif not overwrite or not (target.exists() or link):
            _rename_new(tmp, target, given)
        else:  # a model directory, overwrite=True (checked above): swap, then drop the old one's files
            _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def read_model_json(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed model.json of a model directory, with its format checked."""
    path = Path(path)
    if path.is_file():
        hint = (" It looks like a pickle/torch.save file; hsi-engine never unpickles. Re-save the model with "
                "ssrn.save_model(model, DIR) from a trusted environment." if _looks_pickled(path) else "")
        raise CheckpointError(f"{path} is a file; expected a model directory holding {WEIGHTS} and "
                              f"{MODEL_JSON}.{hint}")
    if not path.is_dir():
        home = unexpanded_home(path, written=False)
        raise CheckpointError(f"model directory {path} does not exist; pass a directory written by "
                              "ssrn.save_model or `hsi-engine train --out`" + (f" (the path {home})" if home else ""))
    mj = path / MODEL_JSON
    if not mj.is_file():
        raise CheckpointError(f"{path} has no {MODEL_JSON}; expected a directory written by ssrn.save_model")
    try:
        doc = _parse_json(mj)
    except OSError as e:
        raise CheckpointError(f"cannot read {mj} ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = repr(doc.get("format"))[:80] if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise CheckpointError(f"{mj} is not an hsi-engine model (format {found}, expected {FORMAT!r})")
    version = doc.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{mj}: 'format_version' must be a whole number (this hsi-engine writes "
                              f"{FORMAT_VERSION}); found {repr(version)[:40]} ({type(version).__name__}); "
                              f"fix it to {FORMAT_VERSION} or re-save the model with ssrn.save_model")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{mj} has format_version {version}; this hsi-engine reads "
                              f"up to {FORMAT_VERSION}: upgrade hsi-engine")
    return doc


def palette_ok(palette: object, classes: int) -> bool:
    """Whether ``palette`` is what model.json holds: a list of ``classes`` colours, each a list ``[r, g, b]`` (or
    with alpha) of Python integers 0-255 (a numpy integer fails JSON's save)."""
    return isinstance(palette, list) and len(palette) == classes and all(
        isinstance(c, list) and len(c) in (3, 4) and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette)


def _check_palette(palette: object, classes: int, where: Path | str) -> None:
    """A model's ``meta["palette"]`` is absent or one ``[r, g, b]`` (0-255 integers) per class: checked at load,
    so a bad one fails before a scene is classified, not when the class map is committed."""
    if palette is None:
        return
    if not palette_ok(palette, classes):
        raise CheckpointError(f"{where}: meta.palette must be {classes} colours (one per class), each [r, g, b] of "
                              f"integers 0-255; found {str(palette)[:120]}. Fix or remove it (a default palette "
                              "is used without one)")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def class_names_problem(names: list[str]) -> str | None:
    """Why ``names`` cannot name a map's classes (GeoTIFF tags and ``.aux.xml`` are UTF-8 XML, ``flag_meanings``
    one word per class), else None: an empty or repeated name, a control character, text that is not UTF-8."""
    import unicodedata

    for i, n in enumerate(names, start=1):
        if not n.strip():
            return f"class {i}'s name is empty; expected one non-empty, distinct name per class"
        if any(unicodedata.category(c) == "Cc" for c in n):
            return f"class {i}'s name {n!r} holds a control character (a tab, a newline, NUL); remove it"
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            return (f"class {i}'s name {n!r} is not valid text (bytes that were not UTF-8, or half of an escaped "
                    "character): retype it")
    repeated = sorted({n for n in names if names.count(n) > 1})
    return f"the names {repeated} are repeated; expected one distinct name per class" if repeated else None


def _as_lists(value: Any) -> Any:
    """``value`` with its arrays and tuples as lists, nested, as JSON will hold them; numbers kept as they are
    (NaN too, so that a check names it)."""
    if hasattr(value, "tolist") and not isinstance(value, (int, float, str)):
        value = value.tolist()
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _check_meta(meta: object, config: SSRNConfig, where: Path | str) -> None:
    """The ``meta`` values the engine reads, checked at load: an edited model.json whose per-band statistics,
    wavelengths, declared band scales/offsets, class names or palette no longer fit the network fails here, naming
    the key, not as a silently wrong map (a null mean made every pixel one class; a short class_names list gave
    generic names). A wavelength may be null (unknown: the scene's bands are then not checked against the
    model's)."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: 'meta' must be an object; found {type(meta).__name__}")
    _check_recorded_patch(meta, config, where)
    # an in-memory model's meta may hold numpy arrays or tuples (what save_model writes as JSON lists)
    meta = {k: _as_lists(v) for k, v in meta.items() if k in ("mean", "std", "wavelengths", "class_names",
                                                               "bad_bands", "scales", "offsets", "palette")}
    _check_palette(meta.get("palette"), config.classes, where)
    fix = "; fix model.json or retrain (hsi-engine train writes them)"
    if ("mean" in meta) != ("std" in meta):
        has, lacks = ("mean", "std") if "mean" in meta else ("std", "mean")
        raise CheckpointError(f"{where}: meta has '{has}' but no '{lacks}': the engine normalises with both, or "
                              f"takes the scene as normalised with neither{fix}")
    for key in ("mean", "std", "wavelengths", "scales", "offsets"):
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != config.bands:
            found = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
            raise CheckpointError(f"{where}: meta.{key} must be {config.bands} numbers (one per band, the config's "
                                  f"bands); found {found}{fix}")
        bad = [i for i, x in enumerate(v) if not (_is_number(x) or (key == "wavelengths" and x is None))]
        if bad:
            raise CheckpointError(f"{where}: meta.{key}[{bad[0]}] is {v[bad[0]]!r}; expected a finite number "
                                  f"({len(bad)} such band{'s' if len(bad) > 1 else ''}){fix}")
    negative = [i for i, x in enumerate(meta.get("std") or ()) if _is_number(x) and x < 0]
    if negative:
        raise CheckpointError(f"{where}: meta.std[{negative[0]}] is {meta['std'][negative[0]]!r}; a standard deviation "
                              f"is >= 0 (0: a constant band, read as 1){fix}")
    names = meta.get("class_names")
    why = class_names_problem(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
    if why:
        raise CheckpointError(f"{where}: meta.class_names: {why}{fix}")
    if names is not None and not (isinstance(names, list) and len(names) == config.classes
                                  and all(isinstance(n, str) for n in names)):
        found = (f"{len(names)} entries" if isinstance(names, list) and len(names) != config.classes
                 else str(names)[:120])
        raise CheckpointError(f"{where}: meta.class_names must be {config.classes} strings (one per class, the "
                              f"config's classes); found {found}. Fix or remove it (classes are named 'class 1', "
                              "... without one)")
    bad_bands = meta.get("bad_bands")
    if bad_bands is not None and not (isinstance(bad_bands, list) and all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < config.bands for b in bad_bands)):
        raise CheckpointError(f"{where}: meta.bad_bands must be band indices 0..{config.bands - 1}; found "
                              f"{str(bad_bands)[:120]}{fix}")
    if bad_bands is not None and len(set(bad_bands)) >= config.bands:  # the engine ignored such a list silently
        raise CheckpointError(f"{where}: meta.bad_bands lists every one of the {config.bands} bands, so the network "
                              f"would read none of the scene; list only the bands without data{fix}")


def _check_recorded_patch(meta: dict[str, Any], config: SSRNConfig, where: Path | str) -> None:
    """``config.patch`` against the patch the meta records the weights were made with: the training report's
    ``patch``, an imported Keras model's zero ``padding`` width (``patch // 2``). No weight's shape depends on the
    patch, so an edited config.patch loaded and classified, silently, with patches the network never saw."""
    report, padding = meta.get("report"), meta.get("padding")
    trained = report.get("patch") if isinstance(report, dict) else None
    if is_whole(trained) and trained > 0 and trained != config.patch:
        raise CheckpointError(f"{where}: config.patch is {config.patch}, but meta.report records that the weights "
                              f"were trained on {trained} x {trained} patches; no weight's shape depends on the patch, "
                              "so the network would classify with patches it never saw (another map, and not the "
                              f"report's accuracy): set config.patch back to {trained}, or retrain with patch "
                              f"{config.patch} (--patch {config.patch})")
    width = padding.get("width") if isinstance(padding, dict) else None
    if is_whole(width) and width >= 0 and width != config.patch // 2:
        raise CheckpointError(f"{where}: config.patch is {config.patch}, but meta.padding records the zero padding "
                              f"of a {2 * width + 1} x {2 * width + 1} patch ({width} pixels, patch // 2) the model "
                              f"was imported with; no weight's shape depends on the patch, so the network would "
                              f"classify with patches it never saw: set config.patch back to {2 * width + 1}, or "
                              "import the model again (hsi-engine import-keras)")


def _config_from(raw: dict[str, Any], mj: Path) -> SSRNConfig:
    """model.json's ``config`` as an SSRNConfig, every field type-checked and bounded (SSRNConfig does that),
    plus what a loadable model needs beyond a valid network: classes that fit the engine's uint8 maps."""
    try:
        config = SSRNConfig.from_dict(raw)
    except InvalidConfig as e:
        key = "config" if e.field is None else f"config.{e.field}"
        raise CheckpointError(f"{mj}: invalid {key}: {e}. Fix {key} in {MODEL_JSON}, or re-save the model with "
                              "ssrn.save_model (hsi-engine train writes a valid config)") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{mj} holds an invalid config ({type(e).__name__}: {e}); fix the config in "
                              f"{MODEL_JSON}, or re-save the model with ssrn.save_model") from None
    if config.classes > MAX_MAP_CLASSES:
        raise CheckpointError(f"{mj}: invalid config.classes: {config.classes} classes; class maps are uint8 (0 = "
                              f"nodata, classes 1..{MAX_MAP_CLASSES}), so a model maps at most {MAX_MAP_CLASSES} "
                              "classes (hsi-engine train refuses more): fix config.classes or merge classes and "
                              "retrain")
    return config


def _expected_tensors(config: SSRNConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The state dict of ``SSRN(config)``: name -> (shape, dtype), built on the meta device (allocates nothing)."""
    with torch.device("meta"):
        model = SSRN(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _read_model_files(path: Path) -> tuple[dict[str, Any], SSRNConfig, Path, dict[str, Any]]:
    """model.json (its config checked), the weights file's path and the tensors the config needs (name -> (shape,
    dtype); the weights are read by :func:`_read_weights`, and checked against the config before the meta is)."""
    doc = read_model_json(path)
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path / MODEL_JSON} has no 'config' object (the network's bands, classes, widths); "
                              "expected a model directory written by ssrn.save_model")
    config = _config_from(doc["config"], path / MODEL_JSON)
    recorded = doc.get("weights_sha256")
    if recorded is not None and not isinstance(recorded, str):
        raise CheckpointError(f"{path / MODEL_JSON}: 'weights_sha256' must be the hex sha256 of {WEIGHTS} (a "
                              f"string); found {repr(recorded)[:40]} ({type(recorded).__name__}); re-save the "
                              f"model, or delete 'weights_sha256' from {MODEL_JSON}")
    wf = path / WEIGHTS
    return doc, config, wf, _expected_tensors(config)


def _kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words, for a file that is not a regular one."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "a special file"


def _read_weights(path: Path, wf: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  config: SSRNConfig) -> bytes:
    """The bytes of the weights file ``wf``, read once, and only once it is known to be this model's: a regular
    file (a symbolic link to one, as git-annex makes, is followed), not a Git LFS pointer or a pickle, no larger
    than the config's tensors stored as float64 plus a header of MAX_WEIGHTS_HEADER_BYTES, whose header declares
    ``expected``'s tensors and whose size is exactly that header plus those tensors. A file that fails is refused
    before the rest of it is read (a 40 GiB sparse file costs one stat). Raises CheckpointError."""
    link = f" (a symbolic link to {os.readlink(wf)})" if wf.is_symlink() else ""
    try:
        # O_NONBLOCK: opening a FIFO would wait for a writer (it is refused below, once fstat says what it is)
        fd = os.open(wf, os.O_RDONLY | sum(getattr(os, f, 0) for f in ("O_NONBLOCK", "O_CLOEXEC", "O_BINARY")))
    except FileNotFoundError:
        if link:
            raise CheckpointError(f"{wf} is a broken symbolic link (to {os.readlink(wf)}): its file is not there (a "
                                  "git-annex file not fetched: `git annex get`); copy the model directory again"
                                  ) from None
        raise CheckpointError(f"{path} has no {WEIGHTS}; expected a model directory written by ssrn.save_model "
                              f"({WEIGHTS} beside {MODEL_JSON}): copy the model directory again") from None
    except OSError as e:  # (unreadable: another user's model) an HSIEngineError like every other refusal
        fix = "check its permissions" if isinstance(e, PermissionError) else "copy the model directory again"
        raise CheckpointError(f"{wf}{link} could not be read ({e.strerror or e}); {fix}") from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{wf}{link} is {_kind(st.st_mode)}, not a regular file; expected the safetensors "
                              "file written by ssrn.save_model: copy the model directory again")
    size = st.st_size
    with os.fdopen(fd, "rb") as f:
        try:
            head = f.read(min(size, 64))
            _check_not_a_pointer(wf, head)
            if _pickled_bytes(head[:9], size):
                raise CheckpointError(f"{wf} is a pickle/torch.save file, not safetensors; hsi-engine never "
                                      "unpickles. Convert it with safetensors.torch.save_file in a trusted "
                                      "environment.")
            numel = sum(math.prod(shape) for shape, _ in expected.values())
            most = 8 + MAX_WEIGHTS_HEADER_BYTES + 8 * numel
            if size > most:
                raise CheckpointError(f"{wf}{link} is {size:,} bytes, but the config in {MODEL_JSON} (bands="
                                      f"{config.bands}, classes={config.classes}) needs {numel:,} weights: at most "
                                      f"{most:,} bytes (each weight as float64, plus a header of at most "
                                      f"{MAX_WEIGHTS_HEADER_BYTES:,}); it is not this model's weights file: copy "
                                      "the model directory again, or re-save the model with ssrn.save_model")
            bad = f"{wf}{link} is not a safetensors file"
            fix = "copy the model directory again, or re-save the model with ssrn.save_model"
            if size < 8:
                raise CheckpointError(f"{bad}: it is {size} bytes, shorter than the 8-byte header length a "
                                      f"safetensors file starts with; {fix}")
            n = int.from_bytes(head[:8], "little")
            if n > size - 8:  # (its value is not shown: it is 8 bytes of whatever file this is)
                raise CheckpointError(f"{bad}: its header length field (its first 8 bytes) exceeds the file's "
                                      f"size ({size:,} bytes); {fix}")
            if n > MAX_WEIGHTS_HEADER_BYTES:
                raise CheckpointError(f"{bad} of this model: its header length field declares over "
                                      f"{MAX_WEIGHTS_HEADER_BYTES:,} bytes of header (at most that for any model "
                                      f"hsi-engine reads; the shipped model's is ~6 KB); {fix}")
            start = head if len(head) >= 8 + n else head + f.read(8 + n - len(head))
            tensor_bytes = _check_weights_header(wf, start[8:8 + n], expected, config)
            need = 8 + n + tensor_bytes
            if size != need:
                raise CheckpointError(f"{wf}{link} is {size:,} bytes, but its header and the config in {MODEL_JSON} "
                                      f"make {need:,} ({n:,} bytes of header, {tensor_bytes:,} of tensors): the "
                                      f"file is {'truncated' if size < need else 'longer than its tensors'}; {fix}")
            f.seek(0)
            data = f.read(need + 1)  # (once, whole: the checksum and the tensors come from these bytes)
        except OSError as e:
            raise CheckpointError(f"{wf}{link} could not be read ({e.strerror or e}); check its permissions, or "
                                  "copy the model directory again") from None
    if len(data) != need or not data.startswith(start[:8 + n]):
        raise CheckpointError(f"{wf} changed while it was being read ({len(data):,} bytes read, {need:,} expected); "
                              "load the model again once the copy is complete")
    return bytes(data)


def _json_changed(path: Path, doc: dict[str, Any]) -> bool:
    try:
        return read_model_json(path) != doc
    except CheckpointError:
        return True


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (safetensors headers hold integers)")


def _is_dim(d: object) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


def _check_weights_header(wf: Path, header: bytes, expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                          config: SSRNConfig) -> int:
    """The tensors the weights file's header (``header``: its JSON bytes) declares are exactly ``expected``'s
    names and shapes, each stored as a float (int64 also allowed for BatchNorm's integer counters); returns the
    bytes those tensors take as stored. Every header value is type-checked before it is used (a shape of
    ``1e400``, JSON nested 3,000 deep). Raises CheckpointError."""
    fix = "copy the model directory again, or re-save the model with ssrn.save_model"
    try:
        doc = json.loads(header.decode("utf-8"), parse_int=_parse_int, parse_constant=_reject_constant)
    except RecursionError:
        raise CheckpointError(f"{wf} is not a readable safetensors file: its header's JSON nests too deeply (a "
                              f"safetensors header nests 3 levels); {fix}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, _parse_int's and _reject_constant's refusals
        raise CheckpointError(f"{wf} is not a readable safetensors file (its header is not valid JSON: "
                              f"{type(e).__name__}: {str(e)[:200]}); {fix}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{wf} is not a readable safetensors file: its header is a JSON {type(doc).__name__}, "
                              f"expected an object of tensors; {fix}")
    header_: dict[str, tuple[Any, Any]] = {}
    for k, v in doc.items():
        if k == "__metadata__":
            continue
        shape = v.get("shape") if isinstance(v, dict) else None
        dtype = v.get("dtype") if isinstance(v, dict) else None
        if not (isinstance(shape, list) and all(_is_dim(d) for d in shape) and isinstance(dtype, str)):
            found = (f"shape {repr(shape)[:80]}, dtype {repr(dtype)[:40]}" if isinstance(v, dict)
                     else f"a JSON {type(v).__name__}")
            raise CheckpointError(f"{wf} is not a readable safetensors file: tensor {k[:80]!r} has {found}; "
                                  "expected a shape of non-negative integers and a dtype name (such as "
                                  f"{{\"dtype\": \"F32\", \"shape\": [16, 24]}}); {fix}")
        header_[k] = (tuple(shape), dtype)
    missing = sorted(set(expected) - set(header_))
    unexpected = sorted(set(header_) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{wf} does not match the config in {MODEL_JSON}: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {[k[:80] for k in unexpected[:5]]}"
                              f"{'...' if len(unexpected) > 5 else ''}; the weights and model.json must come from "
                              "the same save (ssrn.save_model)")
    for k, (_, dtype) in expected.items():
        stored = header_[k][1]
        allowed = _WEIGHT_DTYPES if dtype.is_floating_point else _COUNTER_DTYPES
        if stored not in allowed:
            raise CheckpointError(f"{wf}: tensor {k!r} is stored as {stored[:40]}; expected one of "
                                  f"{', '.join(allowed.values())} (weights are floats; they are not cast from "
                                  "integers, booleans or 8-bit floats): re-save the weights with "
                                  "ssrn.save_model, or convert them to float32")
    for k, (shape, dtype) in expected.items():
        if header_[k][0] != shape:
            shown = str(header_[k][0]) if len(str(header_[k][0])) <= 120 else str(header_[k][0])[:120] + "..."
            raise CheckpointError(f"{wf}: tensor {k!r} has shape {shown}, but the config in "
                                  f"{MODEL_JSON} (bands={config.bands}, classes={config.classes}) needs "
                                  f"{shape}; the weights and model.json must come from the same save: if its "
                                  "config was edited, undo the edit, else copy the model directory again")
    return sum(math.prod(shape) * _DTYPE_BYTES[header_[k][1]] for k, (shape, _) in expected.items())


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # scheme://..., as the engine tells a URL from a path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SSRN:
    """Load a model directory into an ``SSRN`` in eval mode with ``.meta`` from model.json.

    The weights are read once: their checksum and their tensors come from the same bytes, so a save replacing
    the directory meanwhile (``train --overwrite``) gives the old model or the new one, never one's meta with the
    other's weights (read again when model.json changed under the load; refused if it keeps changing)."""
    from .devices import resolve_device

    if not is_text_path(path):
        raise OptionError(f"load_model takes a model directory path (a str or pathlib.Path); got "
                          f"{type(path).__name__} {repr(path)[:80]}" + (": decode it first (os.fsdecode(path))"
                                                                        if isinstance(path, bytes) else ""))
    if _URL.match(os.fspath(path)):  # pathlib would collapse it to 'https:/...' and call that missing
        raise CheckpointError(f"model {os.fspath(path)} is a URL: hsi-engine loads local model directories only; "
                              f"download its {WEIGHTS} and {MODEL_JSON} into one directory and pass that directory")
    map_location = resolve_device(map_location)  # (torch's AssertionError for "cuda" on a CPU build)
    path = Path(path)
    for attempt in range(3):
        doc, config, wf, expected = _read_model_files(path)
        try:  # names, dtypes and shapes from the safetensors header against the config's, then the file's size,
            # before the rest is read, any tensor or the network is materialised: a config edited to need gigabytes
            # fails here, allocating nothing (nor does a 40 GiB weights file)
            data = _read_weights(path, wf, expected, config)
        except CheckpointError:
            if attempt < 2 and _json_changed(path, doc):  # a save replaced the model between the two reads
                continue
            raise
        recorded = doc.get("weights_sha256")
        actual = hashlib.sha256(data).hexdigest() if recorded is not None else None
        if recorded is None or recorded == actual:
            break
        if attempt < 2 and _json_changed(path, doc):  # a save replaced the model between the two reads
            continue
        raise CheckpointError(f"{wf} does not match the checksum in {MODEL_JSON} (sha256 {actual[:16]}..., "
                              f"recorded {str(recorded)[:16]}...): the file was changed or damaged since the model "
                              "was saved; copy the model directory again, or, if you replaced the weights on "
                              f"purpose, delete 'weights_sha256' from {MODEL_JSON}")
    # after the weights' shapes: an edited config.classes is named as such, not as a palette or class_names list
    # that no longer fits it (whose removal the user was sent to first, for nothing)
    _check_meta(doc.get("meta"), config, path / MODEL_JSON)
    try:
        tensors = {k: t.to(map_location) for k, t in load_safetensors(data).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wf} is not a readable safetensors file ({e})") from None
    floats = {getattr(torch, name) for name in _WEIGHT_DTYPES.values()}
    if {k: tuple(t.shape) for k, t in tensors.items()} != {k: s for k, (s, _) in expected.items()} or any(
            t.dtype not in floats and not (t.dtype == torch.int64 and not expected[k][1].is_floating_point)
            for k, t in tensors.items()):
        raise CheckpointError(f"{wf} changed while it was being read (its tensors no longer match its header); "
                              "load the model again once the copy is complete")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # a diverged training's weights: every pixel would map to one class, silently
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{wf}: tensor {bad[0]!r}{more} {'hold' if more else 'holds'} NaN or inf values: the "
                              "training that wrote them diverged (retrain with a lower learning rate, --lr), or the "
                              "file is damaged")
    negative = [k for k, t in tensors.items() if k.endswith("running_var") and bool((t < 0).any())]
    if negative:  # a variance below 0: its folded BatchNorm scale is NaN, and the spectral stage's ReLU hid it
        raise CheckpointError(f"{wf}: tensor {negative[0]!r} holds negative values (a BatchNorm's running variance "
                              f"is never below 0, {float(tensors[negative[0]].min()):g} here): the file was edited or "
                              "damaged; copy the model directory again, or retrain")
    model = filled_model(config, tensors)
    model.meta = doc.get("meta") or {}
    if is_progress_save(model.meta):
        report = model.meta["report"]
        warnings.warn(f"{path} holds a training run's progress save (epoch {report.get('epochs_run', '?')} of "
                      f"{report.get('epochs', '?')}; the run was stopped or is still going), not its final model: "
                      "its accuracy is not the report's; finish the training (rerun it with --overwrite, or "
                      "overwrite=True in Python)", stacklevel=_caller_stacklevel())
    return model.to(map_location).eval()


def _caller_stacklevel() -> int:
    """``stacklevel`` pointing at the first frame outside this project's packages (the user's line): with a fixed 2
    the warning was the line in ``hsi_engine.load_model`` that called here, so Python's once-per-location filter
    showed it for the first unfinished model loaded and never again in the session."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = tuple(os.path.join(root, pkg) + os.sep for pkg in ("ssrn", "hsi_engine", "kernels"))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(ours):
        frame, level = frame.f_back, level + 1
    return level
