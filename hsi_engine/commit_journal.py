"""A class map's commit journal: what a commit's renames are, written before the first one, removed after the last.

A GeoTIFF output is several files (the map, its ``.aux.xml``, ``_probabilities``, ``_confidence``) renamed into
place one after another; a process killed between two renames (SIGKILL, a lost node) left the new run's side files
beside the old map, or beside no map, which a GIS opens as complete. The journal (``.<name>.commit`` beside the
output) lists the complete hidden files and their final names, so the next run into the output finishes the renames
(:func:`roll_forward`, under the output's lock, before its sweep deletes the hidden files): every file of a commit
is complete before its journal is written, so finishing it is always safe, and the output becomes that run's, whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

__all__ = ["journal_path", "remove_journal", "roll_forward", "write_journal"]

log = logging.getLogger(__name__)


def journal_path(out: str | os.PathLike) -> Path:
    """The commit journal of output ``out``: ``.<name>.commit`` in its directory."""
    p = Path(out)
    return p.with_name(f".{p.name}.commit")


def _staging(out: str | os.PathLike) -> Path:
    return journal_path(out).with_name(journal_path(out).name + ".tmp")


def write_journal(out: str | os.PathLike, installs: Sequence[tuple[Path, Path]], remove: Sequence[Path]) -> Path:
    """Record the renames a commit into ``out`` is about to make (``(new, target)`` pairs, then the paths it takes
    away), all in the output's directory; written whole (staged, flushed, renamed) so a reader never finds half."""
    doc = {"installs": [[Path(n).name, Path(t).name] for n, t in installs], "remove": [Path(r).name for r in remove],
           "before": {Path(t).name: _state(Path(t)) for t in [*(t for _, t in installs), *remove]}}
    staging, path = _staging(out), journal_path(out)
    with open(staging, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)
    return path


def _state(path: Path) -> list[int] | None:
    """What stands at ``path`` (inode, mtime, size; None when nothing): a target changed since the journal was
    written is not the commit's to replace."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def remove_journal(out: str | os.PathLike) -> None:
    """Remove the journal of ``out`` (the commit finished, or was undone)."""
    for p in (journal_path(out), _staging(out)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _allowed(out: Path) -> tuple[set[str], object]:
    """The names a journal of ``out`` may rename to (the output and its side files) and a test for the hidden
    names it may rename from: a journal is a file on disk, so one naming other files is not followed."""
    from .outputs import is_leftover, side_paths

    finals = {out.name, *(s.name for s in side_paths(out).values())}

    def hidden(name: str) -> bool:
        return name == out.name + ".partial" or is_leftover(name, finals)
    return finals, hidden


def roll_forward(out: str | os.PathLike) -> bool:
    """Finish the commit into ``out`` a killed run left half done (its journal is there): rename each of its
    complete hidden files still present to its final name and take away what it was to remove. Call only while
    holding the output's lock. Returns whether there was a commit to finish."""
    p = Path(out)
    path = journal_path(p)
    with contextlib.suppress(FileNotFoundError):
        _staging(p).unlink()  # killed while writing the journal: no rename was made yet
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        installs = [(str(n), str(t)) for n, t in doc["installs"]]
        remove = [str(r) for r in doc.get("remove", [])]
        before = dict(doc.get("before", {}))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError, KeyError) as e:
        log.warning("ignored the unreadable commit journal %s (%s); removed it", path, e)
        remove_journal(p)
        return False
    finals, hidden = _allowed(p)
    side_ends = ("", ".aux.xml", ".ovr")
    if not all(t in finals and hidden(n) for n, t in installs) or not all(
            any(r == f + end for f in finals for end in side_ends) for r in remove):
        log.warning("ignored the commit journal %s: it names files that are not this output's; removed it", path)
        remove_journal(p)
        return False
    # a target that changed since the journal was written (a backup put back by hand, another program's file) is
    # not the killed run's to replace: the commit is given up, the hidden files left to the sweep
    pending = [t for n, t in installs if p.with_name(n).exists() or p.with_name(n).is_symlink()]
    changed = [t for t in [*pending, *(remove if pending else [])]
               if t in before and _state(p.with_name(t)) != (list(before[t]) if before[t] is not None else None)]
    if changed:
        log.warning("did not finish the commit an interrupted run left half done in %s: %s changed since it began "
                    "(put back or written by something else), so they are kept; the run's hidden files are removed",
                    p.parent, ", ".join(changed))
        remove_journal(p)
        return False
    finished = []
    try:
        for name in remove:
            r = p.with_name(name)
            if r.is_file() or r.is_symlink():
                r.unlink()
        for new_name, target_name in installs:
            new, target = p.with_name(new_name), p.with_name(target_name)
            if not (new.exists() or new.is_symlink()):
                continue  # renamed in before the run was killed
            if target.is_dir() and not target.is_symlink():  # an old store: aside, for the sweep to delete
                os.replace(target, target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}{target.suffix}"))
            os.replace(new, target)
            finished.append(target_name)
    except OSError as e:  # the hidden files stay (the sweep must not delete the only complete output)
        from .errors import OutputError

        raise OutputError(f"cannot finish the commit an interrupted run left half done in {p.parent} ({e}): its "
                          f"journal {path.name} lists the renames; make {p.parent} writable and run again, or remove "
                          f"{path.name} and rerun with --overwrite (overwrite=True) to start over") from None
    remove_journal(p)
    log.info("finished the commit of an interrupted run into %s (it was killed while renaming its files into "
             "place): the output is that run's, whole%s", p,
             f" ({', '.join(finished)} renamed in now)" if finished else "")
    return True
