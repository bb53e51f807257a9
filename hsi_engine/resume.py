"""Resumable class-map output: a zarr store with a per-tile completion record, renamed into place when complete.

Naming. While a run is incomplete its output lives in ``<out>.partial`` beside the requested path (e.g.
``map.zarr.partial``, ``map.tif.partial``): a visible name, so an interrupted run is easy to spot, and one
that never passes for the finished product (no tool opens ``*.partial`` as a class map). The requested
name appears only when every tile is written: a ``.zarr`` output is the partial store renamed into place
(one ``os.replace``); a ``.tif`` output is converted from the completed partial store through
:class:`~hsi_engine.writers.GeoTiffClassMapWriter` (hidden temp + rename), after which the partial store is
removed. A later run with ``resume=True`` (``--resume``) finds ``<out>.partial`` by that name. The store is
built under a hidden ``.<out>.partial.tmp-*`` name and renamed once whole, and a store being removed is renamed to
a hidden ``.trash-*`` name first, so an interruption never leaves a half-made or half-deleted ``<out>.partial``
(the next run into ``out`` sweeps the hidden names).

Completion record. The store holds ``resume/tiles_done``: a ``(tile rows, tile cols)`` uint16 zarr array
in its own subgroup (xarray does not see it), one uncompressed chunk per tile, so concurrent workers never
rewrite each other's chunks. A tile's cell is set to the run number (1 for the first run, 2 for the first
resume, ...) only AFTER its labels (and probabilities) are written, and zarr's local store writes every
chunk atomically (temp file + rename), so a process killed at any point never marks an unwritten tile. The
output arrays are chunked exactly like the tiles (tile side = chunk side), so each tile is one chunk
(region writes, no read-modify-write across tiles). The marker values double as a count: after a resumed run,
``(tiles_done == k).sum()`` is the number of tiles run ``k`` computed. The group attrs hold, as JSON strings (so
the finished store converts to NetCDF), the run history (``resume_runs``) and a fingerprint of the scene (shape,
dtype, georeferencing, and its file's path, size and modification time, or a digest of its values when it is not a
file opened whole and unchanged: see :func:`hsi_engine.scene_identity.scene_identity`), model weights, tile plan,
output options and, for a low-precision run, the spatial precision ``auto`` resolved to and the kind of device;
resuming with different settings is refused. ``run_token`` names the
run that owns the store now (each run sets it at its start): a cluster task checks it before writing and before
marking its tile (:func:`check_owner`).

Which runs are resumable: every ``.zarr`` output and every run through :mod:`hsi_engine.cluster`
(``workers=``, ``scheduler=`` or ``resume=True``; ``--workers``/``--scheduler``/``--resume``). ``resume=True`` on a
first run starts a resumable run (there is nothing to continue yet), so ``--resume`` can simply be given every
time. A plain single-process ``.tif`` output keeps the writers' own atomic hidden temp (``.<name>.tmp-<random>``)
and is not resumable unless ``--resume`` is given from the start; it refuses to start while ``<out>.partial``
exists (finish that run with ``--resume``, or pass ``--overwrite``, which removes it once the new map is
committed), so an interrupted resumable run is never orphaned beside a fresh map.

A finished resumable output keeps its fingerprint (zarr root attribute, GeoTIFF tag): ``--resume`` on it with the
same settings does nothing and succeeds, so a retried pipeline task does not fail on its own output; with other
settings it is refused, as any existing output is without ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import OutputError
from .geotiff import gdal_name
from .logs import warnings_ignored
from .outputs import (TIFF_SUFFIXES, check_replaceable, in_the_way, raised_by_program, remove_tree, why_not_ours,
                      zarr_root_attributes)
from .writers import ZarrClassMapWriter

__all__ = ["MAP_VERSION", "PARTIAL_SUFFIX", "RECORD", "ResumableZarrWriter", "check_no_partial", "check_owner",
           "discard_partial", "finished_with", "json_attr", "model_digest", "model_status", "partial_path",
           "partial_tile", "pinned_store", "provenance", "read_record", "read_record_cell", "recorded_fingerprint",
           "refuse_outputs_in_the_way", "resolved_spatial_precision", "store_replaced", "sweep_chunk_temps"]

PARTIAL_SUFFIX = ".partial"
RECORD = "resume/tiles_done"
FINGERPRINT_ATTR = "hsi_engine_resume"
RUNS_ATTR = "resume_runs"
# bumped whenever the same scene, model and options give other classes than before (v2: a model's bad bands
# read as 0 without a mean/std; a finite value beyond float32 is an error; v3: a GeoTIFF's GDAL mask band masks
# its pixels): a partial of another version is never continued, since its tiles and this engine's would disagree
MAP_VERSION = 3
OWNER_ATTR = "run_token"  # the live run's token: tasks of an earlier, cancelled run write nothing once it changes


def partial_path(out: str | os.PathLike) -> Path:
    """Where the incomplete output of ``out`` lives: ``<out>.partial``."""
    p = Path(out)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def _interrupted(part: Path) -> OutputError:
    """The error for a run that would ignore the partial store an interrupted run left (or, at its name, something
    hsi-engine did not write, which neither resuming nor overwrite takes)."""
    if why_not_ours(part) is not None:
        return in_the_way(part)
    return OutputError(f"an interrupted run left {part}; pass resume=True (--resume) to finish it, or "
                       "overwrite=True (--overwrite) to discard it and start over")


def check_no_partial(out: str | os.PathLike, *, overwrite: bool) -> Path | None:
    """Before a plain (non-resumable) run into ``out``: refuse while ``<out>.partial`` exists, unless ``overwrite``.

    Returns the partial store that ``overwrite`` is to discard once the new output is committed (after checking
    it is a store of ours, so nothing else is deleted), or None when there is none.
    """
    part = partial_path(out)
    if not (part.exists() or part.is_symlink()):
        return None
    if not overwrite:
        raise _interrupted(part)
    check_replaceable(part)
    return part


def discard_partial(part: Path) -> None:
    """Remove a partial store cleared for removal by :func:`~hsi_engine.outputs.check_replaceable` (a symbolic
    link goes, its target stays); renamed away first (:func:`~hsi_engine.outputs.remove_tree`), so the next run
    creates a fresh directory that a stopped run's pinned tasks cannot reach."""
    if part.is_dir() and not part.is_symlink():
        if not remove_tree(part):
            raise OutputError(f"cannot remove the partial store {part} (or the trash it was renamed to beside it); "
                              "remove it yourself, or choose another output")
    elif part.exists() or part.is_symlink():
        part.unlink()


def _differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, a's value, b's value)`` of every leaf where two fingerprints differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{key}.{k}" if key
                                                                         else str(k))]
    return [] if a == b else [(key, a, b)]


def describe_differences(found: dict[str, Any] | None, own: dict[str, Any], first: str = "partial") -> str:
    """What differs between a recorded fingerprint and this run's, for a message: ``tile: partial has 64, this
    run 112 (...)``; a tile difference says how to give the recorded one (requested tiles are rounded up)."""
    if not found:
        return f"{first} records no settings: a run that did not ask for resuming made it"
    parts = []
    diffs = _differences(found, own)
    if any(k == "scene.source" for k, _, _ in diffs):  # another scene: its files' stat or values say nothing more
        diffs = [d for d in diffs if d[0] not in ("scene.stat", "scene.digest")]
    # a low-precision record without the device: an hsi-engine before it was recorded, which also recorded
    # spatial_precision as asked ('auto', not what it resolved to): one cause, said once, with what can be done
    unrecorded = "device" in own and "device" not in found
    auto = unrecorded and found.get("spatial_precision") == "auto" != own.get("spatial_precision")
    if auto:
        diffs = [d for d in diffs if d[0] != "spatial_precision"]
    explained = False  # the device parenthetical, given once
    for k, a, b in diffs[:4]:
        text = f"{k}: {first} has {_short(a)}, this run {_short(b)}"
        if k == "scene.source" and (a is None or b is None):
            memory = "an in-memory scene (an array, or a file's scene loaded, edited or windowed)"
            text = f"scene: {first} has {_short(a) if a else memory}, this run {_short(b) if b else memory}"
            if a and not b:  # the file's scene loaded or edited: continued by the file itself, if it is unchanged
                text += (f" (if this run's scene is that file's, unchanged, pass its path, or open_scene({_short(a)})"
                         " without loading it, to continue)")
        elif k == "scene.digest" and a is None:
            text = (f"scene: {first} records no digest of its in-memory scene's values (an earlier hsi-engine made "
                    "it), so it cannot be told to be this scene")
        elif k == "scene.digest":
            text = ("scene: another in-memory scene (other values, or a digest of them that an earlier hsi-engine "
                    "made another way)")
        elif k == "scene.stat":  # [files, bytes, newest mtime_ns]
            text = "the scene's files changed (size or modification time) since"
            if isinstance(a, list) and isinstance(b, list) and a and b and a[0] < b[0]:  # (0.2.0 counted fewer)
                text += (f" ({_short(a[0])} files then, {_short(b[0])} now: if none changed, hsi-engine 0.2.0 made "
                         f"the {first}, and did not count the scene's side files such as its .aux.xml; either way "
                         "pass overwrite=True (--overwrite) without resume to start over)")
        elif k == "model":
            text = "another model (its weights or normalisation differ)"
        elif k == "map_version":
            text = (f"{first} was made by another hsi-engine version, whose maps may differ from this one's "
                    f"(map version {_short(a)}, this run {_short(b)})")
        elif k == "device" and unrecorded:
            text = (f"{first} was made by an earlier hsi-engine, which did not record the kind of device its "
                    f"low-precision tiles ran on" + (" (nor what spatial_precision 'auto' resolved to)" if auto else "")
                    + (", so it cannot be continued safely" if first == "partial" else
                       ", so it cannot be taken for this run's map") + ": pass overwrite=True (--overwrite) to start "
                    "over")
        elif k == "device" and a == "cpu" and str(b).startswith("cpu+"):  # (0.2.0 recorded plain 'cpu' here too)
            text += (f" ({first} was made on a CPU without oneDNN's bfloat16, or on this kind of CPU by hsi-engine "
                     "0.2.0, which did not record it; either way it cannot be continued here: pass overwrite=True "
                     "(--overwrite) without resume to start over)")
        elif k in ("spatial_precision", "device") and not explained and not unrecorded:  # (low precision only)
            explained = True
            text += (f" (a {own.get('precision')} map depends on the device it is computed on, and spatial_precision "
                     "'auto' on the host: a low-precision spatial stage on CUDA and, for bfloat16, on CPUs with "
                     "AMX-BF16, float32 elsewhere; continue it on the kind of device that started it)")
        elif k == "tile" and isinstance(a, int):
            text += f" (a tile is rounded up to a multiple of 16 pixels; --tile {a} continues it)"
        parts.append(text)
    return "; ".join(parts)


def _short(v: Any, n: int = 100) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def model_digest(model: Any) -> str:
    """sha256 over the model's config, normalisation (meta mean/std, and its bad bands, read as 0) and state dict:
    identifies what makes the map. Numbers count by value: -32768 and -32768.0 (a JSON tool's rewrite of
    model.json) or a numpy array and a list of the same values digest alike."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    meta = getattr(model, "meta", None) or {}
    norm: list[Any] = [meta.get("mean"), meta.get("std")]
    try:
        norm = [None if v is None else [float(x) for x in np.asarray(v, dtype=np.float64).ravel()] for v in norm]
    except (TypeError, ValueError):
        pass  # not numbers (refused when the engine reads them): as they are
    h.update(json.dumps(norm, default=str).encode())  # normalisation
    bad = meta.get("bad_bands")
    if bad:  # (left out when empty: the digests of models without bad bands are as before)
        try:
            bad = sorted({int(b) for b in bad})
        except (TypeError, ValueError):
            pass
        h.update(json.dumps({"bad_bands": bad}, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def provenance(digest: str, precision: str, spatial_precision: str) -> dict[str, str]:
    """What made a class map, for its metadata (GeoTIFF tags, zarr and DataArray attributes): software version,
    the model's :func:`model_digest` (its config, normalisation and weights), precisions (the spatial one as
    :func:`resolved_spatial_precision` gives it, where it is known) and the map version (:data:`MAP_VERSION`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        software = f"hsi-engine {version('hsi-engine')}"
    except PackageNotFoundError:  # run from a checkout without installing
        software = "hsi-engine (not installed)"
    return {"software": software, "model_digest": digest, "precision": precision,
            "spatial_precision": spatial_precision, "map_version": str(MAP_VERSION)}


def model_status(meta: dict[str, Any]) -> dict[str, str]:
    """``{"model_status": ...}`` for a map made with a training run's progress save (a stopped or running
    training's, ``status: "training"`` in its report), else ``{}``: its tags say so, for a pipeline that retrains
    and then classifies (the warning of its load went to stderr only)."""
    from ssrn.checkpoint import is_progress_save

    if not is_progress_save(meta):
        return {}
    report = meta["report"]
    return {"model_status": f"unfinished: a training run's progress save (epoch {report.get('epochs_run', '?')} of "
                            f"{report.get('epochs', '?')})"}


def resolved_spatial_precision(spatial_precision: str, precision: str, device_type: str | None, *,
                               this_host: bool = True) -> str:
    """What ``spatial_precision`` means for a :class:`~hsi_engine.fused.FusedSSRN` of ``precision`` on a
    ``device_type`` device (``cpu``, ``cuda``): ``auto`` resolved as the engine resolves it (the low precision on
    CUDA, and bfloat16 on a CPU with AMX-BF16), so a record says what ran. ``auto`` stays where that is unknown:
    ``device_type`` None, or a CPU bfloat16 engine on another host (``this_host=False``: a cluster's workers)."""
    from .fused import _auto_spatial_precision, _cpu_has_amx_bf16

    if spatial_precision != "auto":
        return spatial_precision
    if precision == "float32":
        return "float32"
    if device_type is None or (device_type == "cpu" and precision == "bfloat16" and not this_host):
        return "auto"
    amx = device_type == "cpu" and precision == "bfloat16" and _cpu_has_amx_bf16()
    return _auto_spatial_precision(device_type, precision, amx)


def json_attr(attrs: dict[str, Any], key: str) -> Any:
    """A JSON-valued store attribute (held as a JSON string, so ``xr.open_dataset(map.zarr).to_netcdf()`` works;
    stores written before that hold the object itself); None when absent or unreadable."""
    value = attrs.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def recorded_fingerprint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The run fingerprint a resumable output recorded: a zarr store's root attribute, a GeoTIFF's tag."""
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        import rasterio

        try:
            with rasterio.open(gdal_name(p), driver="GTiff") as f:
                found = json.loads(f.tags().get(FINGERPRINT_ATTR, "null"))
        except (OSError, ValueError, rasterio.errors.RasterioError):
            return None
    else:
        found = json_attr(zarr_root_attributes(p), FINGERPRINT_ATTR)
    return found if isinstance(found, dict) else None


def finished_with(out: str | os.PathLike, fingerprint: dict[str, Any], sides: list[Path]) -> bool:
    """Whether ``out`` is a complete output this run's settings (``fingerprint``) made, with its ``sides``
    files: a resumed run then has nothing to do (a retried pipeline task must not fail on its own output)."""
    p = Path(out)
    if p.suffix.lower() == ".zarr" and zarr_root_attributes(p).get("complete") != 1:
        return False
    found = recorded_fingerprint(p)
    return found is not None and found == json.loads(json.dumps(fingerprint)) and all(s.exists() for s in sides)


def partial_tile(out: str | os.PathLike) -> int | None:
    """The tile side an interrupted run into ``out`` used (from ``<out>.partial``'s fingerprint; else a finished
    run's, from ``out``'s), so a ``--resume`` without ``--tile`` continues with it; None when neither records
    one."""
    for path in (partial_path(out), Path(out)):  # an interrupted run's, else a finished one's (nothing to do)
        tile = (recorded_fingerprint(path) or {}).get("tile")
        if isinstance(tile, int) and tile > 0:
            return tile
    return None


def read_record(store: str | os.PathLike) -> np.ndarray:
    """The ``(tile rows, tile cols)`` run-number array of a (partial or finished) store; 0 = not done.

    Only the chunks that exist are read (:func:`_record_from_files`): zarr's own read looks up every cell's chunk,
    ~0.6 ms each, 43 s per read of a 391 x 391 record even when it is empty."""
    import zarr

    arr = zarr.open_array(str(store), path=RECORD, mode="r")
    found = _record_from_files(Path(store) / RECORD, arr)
    return found if found is not None else np.asarray(arr[...])


def read_record_cell(store: str | os.PathLike, row: int, col: int) -> int:
    """One tile's run number (0: not done), reading only its own chunk: what a cluster task asks."""
    import zarr

    return int(zarr.open_array(str(store), path=RECORD, mode="r")[row, col])


_CHUNK_KEY = re.compile(r"(?:c[./])?(\d+)[./](\d+)")  # a record chunk's key: c/R/C (zarr 3's default encoding)


def _record_from_files(folder: Path, arr: Any) -> np.ndarray | None:
    """The record read from the chunk files that exist in its local directory ``folder`` (one walk), each
    holding one raw cell; a missing chunk is the fill value, 0 (zarr deletes a chunk set to it). None where the
    record is not laid out as :class:`ResumableZarrWriter` makes it (another format, codec or chunking, a store
    that is not a local directory, a chunk of another size): read it through zarr then."""
    from zarr.codecs import BytesCodec

    meta = arr.metadata
    codecs = getattr(meta, "codecs", None)
    if (getattr(meta, "zarr_format", None) != 3 or tuple(arr.chunks) != (1, 1) or arr.ndim != 2
            or np.dtype(arr.dtype) != np.uint16 or getattr(meta, "storage_transformers", ()) or not codecs
            or len(codecs) != 1 or not isinstance(codecs[0], BytesCodec) or not folder.is_dir()):
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian) or "little"
    template = _CHUNK_KEY.fullmatch(meta.encode_chunk_key((0, 0)))
    if template is None:
        return None
    prefix, sep = template[0][:template.start(1)], template[0][template.end(1):template.start(2)]
    rows, cols = arr.shape
    record = np.zeros((rows, cols), np.uint16)
    for root, _dirs, files in os.walk(folder, followlinks=True):
        rel = os.path.relpath(root, folder).replace(os.sep, "/")
        for name in files:
            key = name if rel == "." else f"{rel}/{name}"
            m = _CHUNK_KEY.fullmatch(key)
            if m is None:  # zarr.json, a temp file of a chunk being written
                continue
            r, c = int(m[1]), int(m[2])
            if r >= rows or c >= cols or key != f"{prefix}{r}{sep}{c}":  # not a key zarr reads (c/01/2)
                continue
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except FileNotFoundError:  # deleted since the walk: set to the fill value
                continue
            try:
                raw = os.read(fd, 3)
            finally:
                os.close(fd)
            if len(raw) != 2:
                return None  # not a raw cell: zarr reads it (or says what is wrong with it)
            record[r, c] = int.from_bytes(raw, endian)
    return record


class ResumableZarrWriter(ZarrClassMapWriter):
    """A :class:`ZarrClassMapWriter` that writes into ``<out>.partial`` with a per-tile completion record.

    ``grid``: ``(tile rows, tile cols)``; ``block``: the tile side (= output chunk side). ``fingerprint``:
    JSON-able settings that must match to resume. ``resume``: reopen an existing partial store (or start a
    new one when there is none). Without ``resume`` an existing partial store is refused unless
    ``overwrite`` (then it is replaced). ``out`` may end in ``.tif``: the store is then only the staging
    area for :meth:`commit_geotiff`.
    """

    def __init__(self, path: Path, *, grid: tuple[int, int], fingerprint: dict[str, Any], resume: bool,
                 **kw: Any) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.partial = partial_path(path)
        self.resumed = False
        self.map_written = False  # the finished map is in place (what remains is removing the partial store)
        self._record: np.ndarray | None = None  # the completion record as last read, with this writer's marks
        if self.partial.exists() or self.partial.is_symlink():
            if resume:
                self._verify_partial()
                self.resumed = True
            elif not kw.get("overwrite"):
                raise _interrupted(self.partial)
            else:
                check_replaceable(self.partial)  # overwrite discards it: only if it is a store of ours
        super().__init__(Path(path), **kw)

    # ---- partial store -----------------------------------------------------------------------
    def _tmp_name(self, path: Path, tag: str = "tmp") -> Path:
        if tag == "tmp" and path == self.path:
            return self.partial
        return super()._tmp_name(path, tag)

    def _verify_partial(self) -> None:
        import zarr

        try:
            g = zarr.open_group(str(self.partial), mode="r")
            found = json_attr(dict(g.attrs), FINGERPRINT_ATTR)
            zarr.open_array(str(self.partial), path=RECORD, mode="r")
        except Exception as e:  # noqa: BLE001 - not a store we wrote
            if raised_by_program(e):  # a service's deadline: the store is kept as it is,
                raise  # not called "not resumable, remove it" (its tiles thrown away on that advice)
            if why_not_ours(self.partial) is not None:
                raise in_the_way(self.partial) from None
            raise OutputError(f"{self.partial} is not a resumable hsi-engine output ({type(e).__name__}: {e}); "
                              "remove it, or pass overwrite=True (--overwrite) without resume=True (--resume) to "
                              "start over") from None
        if found != self.fingerprint:
            detail = describe_differences(found, self.fingerprint)
            raise OutputError(f"{self.partial} was started with different settings ({detail}); resume with the "
                              "same scene, model, tile and options, or pass overwrite=True (--overwrite) without "
                              "resume=True (--resume) to start over")

    def _create(self) -> None:
        import zarr

        if self.resumed:
            try:
                self._group = zarr.open_group(str(self._tmp), mode="r+")
            except BaseException:  # (a signal while reopening): the tiles stay for the next --resume
                self.keep_partial()
                raise
            return
        if self._tmp.exists() or self._tmp.is_symlink():  # overwrite=True: discard the old partial store
            discard_partial(self._tmp)
        # built whole under a hidden name, then renamed: a run stopped while creating it (a SIGTERM right after
        # start) leaves no half-made <out>.partial that neither --resume nor --overwrite could clear, only a
        # hidden temp the next run sweeps away
        partial, staging = self._tmp, self.partial.with_name(f".{self.partial.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._tmp = staging
        self._temps.append(staging)
        try:
            super()._create()
            self._group.attrs[FINGERPRINT_ATTR] = json.dumps(self.fingerprint, sort_keys=True)
            self._group.attrs[RUNS_ATTR] = "[]"
            self._group.attrs["partial"] = 1
            zarr.create_array(str(staging), name=RECORD, shape=self.grid, chunks=(1, 1), dtype="uint16",
                              fill_value=0, compressors=None, dimension_names=["tile_row", "tile_col"])
            os.rename(staging, partial)
        finally:
            self._tmp = partial
        self._temps.remove(staging)
        self._group = zarr.open_group(str(partial), mode="r+")
        self._record = np.zeros(self.grid, np.uint16)  # made empty just now: nothing to read

    # ---- record ------------------------------------------------------------------------------
    def done(self, *, fresh: bool = False) -> np.ndarray:
        """``(tile rows, tile cols)`` run numbers; 0 where the tile is not written (read-only). Read from the store
        once, then kept with this writer's own marks (:meth:`mark`) set in it: a record of 150,000 tiles takes
        seconds to read. ``fresh``: read it again, to see the tiles other processes (a cluster's tasks) marked."""
        if fresh or self._record is None:
            self._record = read_record(self._tmp)
        view = self._record.view()
        view.flags.writeable = False
        return view

    def start_run(self, token: str = "") -> int:
        """Append a run to the history and make ``token`` the store's owner (see :func:`check_owner`); returns the
        run's number (the marker value its tiles get)."""
        runs = self.runs()
        done = self.done()
        run = int(max([r["run"] for r in runs] + [int(done.max()) if done.size else 0])) + 1
        if run > np.iinfo(np.uint16).max:
            raise OutputError(f"{self.partial} has been resumed {run - 1} times; start over with overwrite=True "
                              "(--overwrite)")
        runs.append({"run": run, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "done_before": int((done > 0).sum()), "tiles": int(done.size)})
        self._group.attrs.update({RUNS_ATTR: json.dumps(runs), OWNER_ATTR: token})
        return run

    def runs(self) -> list[dict[str, Any]]:
        """The store's run history (``resume_runs``), oldest first."""
        runs = json_attr(dict(self._group.attrs), RUNS_ATTR)
        return list(runs) if isinstance(runs, list) else []

    def owner(self) -> str | None:
        """The token of the run that owns the store now (read afresh; None when the store is gone)."""
        import zarr

        try:
            return dict(zarr.open_group(str(self._tmp), mode="r").attrs).get(OWNER_ATTR)
        except Exception:  # noqa: BLE001 - removed or unreadable
            return None

    def finish_run(self, run: int, **info: Any) -> None:
        runs = self.runs()
        done = self.done()
        for r in runs:
            if r.get("run") == run:
                r.update(computed=int((done == run).sum()), **info)
        self._group.attrs[RUNS_ATTR] = json.dumps(runs)

    def mark(self, row: int, col: int, run: int) -> None:
        """Record tile ``(row, col)`` as written (call only after its data is written)."""
        mark_tile(self._tmp, row, col, run)
        if self._record is not None:
            self._record[row, col] = run

    def write_tile(self, row: int, col: int, run: int, y0: int, x0: int, labels: np.ndarray,
                   probabilities: np.ndarray | None = None, confidence: np.ndarray | None = None) -> None:
        self.write(y0, x0, labels, probabilities, confidence)
        self.mark(row, col, run)

    # ---- ending ------------------------------------------------------------------------------
    def _commit_failed(self) -> None:
        self.keep_partial()  # every tile is in it: a resume=True run only commits it

    def __del__(self):  # dropped unfinished: keep what it holds (every path that may delete it does so itself)
        try:
            if not self._done:
                self.keep_partial()  # no store I/O here: a second SIGTERM during it printed a traceback
        except BaseException:  # noqa: BLE001 - interpreter shutdown, a signal: never from __del__
            pass

    def keep_partial(self) -> Path:
        """Leave the partial store for a later ``resume=True`` run (after an interruption)."""
        self._done = True
        self._temps = [t for t in self._temps if t != self._tmp]
        self._cleanup()
        return self._tmp

    def _commit(self) -> None:
        self._group.attrs["partial"] = 0
        sweep_chunk_temps(self._tmp)  # a run killed mid-chunk-write left one: never delivered with the map
        super()._commit()
        self.map_written = True

    def commit_geotiff(self, out: Path, *, crs=None, transform=None, block: int = 256, gcps=None,
                       tags: dict[str, str] | None = None) -> Path:
        """Convert the completed partial store into the (Cloud-Optimised) GeoTIFF ``out``, then remove it."""
        from .writers import open_writer

        g = self._group

        def damaged(e: Exception, where: str) -> OutputError:  # a rerun with --resume would fail the same way
            return OutputError(f"the partial store {self.partial} is damaged ({where}: {type(e).__name__}: "
                               f"{str(e)[:200]}), so its map cannot be finished: start over with --overwrite "
                               "(without --resume; overwrite=True, resume=False)")

        try:
            classes = g["classes"]
            prob = g["probabilities"] if "probabilities" in g else None
            conf = g["confidence"] if "confidence" in g else None
        except (MemoryError, OSError):  # this process's want or the disk's: not the store's damage; kept to resume
            raise
        except Exception as e:  # noqa: BLE001 - broken array metadata (zarr.json)
            raise damaged(e, "its arrays' metadata") from None

        def read(array: Any, *index: slice) -> np.ndarray:
            try:
                return np.asarray(array[index])
            except (MemoryError, OSError):
                raise
            except Exception as e:  # noqa: BLE001 - a corrupt or truncated chunk (a codec's or zarr's error)
                raise damaged(e, f"rows {index[-2].start}:{index[-2].stop}, cols {index[-1].start}:"
                                 f"{index[-1].stop}") from None

        with warnings_ignored(UserWarning, "writing .* without georeferencing"):  # warned about already
            w = open_writer(out, height=self.height, width=self.width, n_classes=self.n_classes, crs=crs,
                            transform=transform, y_coords=self.y_coords, x_coords=self.x_coords,
                            class_names=self.class_names, palette=self.palette, probabilities=self.probabilities,
                            confidence=self.confidence, overwrite=self.overwrite, block=block, gcps=gcps,
                            tags={**(tags or {}), FINGERPRINT_ATTR: json.dumps(self.fingerprint, sort_keys=True)})
        step = max(self.block, (1024 // self.block) * self.block)
        try:
            for y0 in range(0, self.height, step):
                for x0 in range(0, self.width, step):
                    ys, xs = slice(y0, min(self.height, y0 + step)), slice(x0, min(self.width, x0 + step))
                    w.write(y0, x0, read(classes, ys, xs), None if prob is None else read(prob, slice(None), ys, xs),
                            None if conf is None else read(conf, ys, xs))
            w.commit()
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) or failed: the complete store stays for --resume
            self.map_written = w.committed  # stopped while removing its temps: the map is in place
            w.abort()
            self.keep_partial()
            raise
        self.map_written = True
        self._done = True
        self._cleanup()  # the partial store (renamed away first: an interruption leaves only a hidden trash)
        return Path(out)


def check_owner(group: Any, token: str, what: str, where: Any = None) -> None:
    """Raise :class:`OutputError` unless the run of ``token`` still owns the partial store ``group`` (a zarr
    group; ``where`` names it in the message): a task of a cancelled run that was still running must not write
    into a store a later run took over (with overwrite, the store may hold another scene)."""
    found = dict(group.attrs).get(OWNER_ATTR)
    if found != token:
        raise OutputError(f"{what}: another run has taken over {where or group.store} (run token {found!r}, this "
                          f"run's {token!r}); this task's run was stopped, so it writes nothing")


@contextlib.contextmanager
def pinned_store(store: str | os.PathLike) -> Iterator[str]:
    """A path to the store directory as it is now, for a task's check-then-write: writes through it follow
    that directory if it is renamed (a discarded store goes to a hidden trash name first) and fail once it is
    deleted, so a stopped run's task whose owner check passed just before a later run replaced the store can
    never write into the new store (nor recreate the old one). Linux ``/proc/self/fd``; elsewhere the plain
    path (the check-then-write window stays open there)."""
    if not os.path.isdir("/proc/self/fd"):  # not Linux: the plain path
        yield str(store)
        return
    try:
        fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise OutputError(f"output store {store} disappeared ({e.strerror or e}); this task's run was stopped, "
                          "so it writes nothing") from None
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def store_replaced(store: str | os.PathLike, pinned: str) -> bool:
    """Whether the directory ``pinned`` (from :func:`pinned_store`) is no longer the store at ``store``: it was
    deleted, or renamed away and perhaps replaced (a write error then means the run lost the store, not a full
    disk)."""
    try:
        mine = os.stat(pinned)
    except OSError:
        return True
    try:
        return mine.st_nlink == 0 or not os.path.samestat(mine, os.stat(store))
    except OSError:
        return True


# zarr's local store writes each chunk (and zarr.json) to '<name>.<uuid4 hex>.partial' and renames it; a process
# killed in between (or a signal zarr does not clean up after: it catches Exception only) leaves the temp for good
_CHUNK_TEMP = re.compile(r".+\.[0-9a-f]{32}\.partial")


def sweep_chunk_temps(store: str | os.PathLike) -> list[Path]:
    """Remove zarr's temporary chunk files (``<chunk>.<uuid>.partial``) from ``store``: a resumed store held one
    from the killed run, which the finished ``map.zarr`` then carried. Call once no task writes to the store."""
    removed = []
    for root, _dirs, files in os.walk(store):
        for name in files:
            if _CHUNK_TEMP.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed.append(Path(root, name))
    return removed


def mark_tile(store: str | os.PathLike, row: int, col: int, run: int) -> None:
    """Set one cell of the completion record (one atomic chunk write); used by workers too."""
    import zarr

    arr = zarr.open_array(str(store), path=RECORD, mode="r+")
    arr[row, col] = run


def refuse_outputs_in_the_way(out: Path, suffix: str, prob: str | None, *, overwrite: bool) -> None:
    """The refusals of a run that does not resume which need no fingerprint, in the order and words the checks
    after it (and the writer) give them: a side file or foreign ``.aux.xml`` of a GeoTIFF, ``<out>.partial``, the
    output itself (without ``overwrite``), or, with it, a partial store or output hsi-engine did not write. Made
    before the scene is read (its scale sample; a resumable run's digest may read all of it); the writer checks
    again when it opens the output."""
    from .lock import tidy_interrupted
    from .outputs import ours_aux, path_present, side_paths

    tidy_interrupted(out)  # a commit a killed run left half done is finished first: what is refused is whole
    sides = side_paths(out)
    if not overwrite:
        for key in ("probabilities", "confidence") if suffix in TIFF_SUFFIXES and prob is not None else ():
            if sides[key].exists():
                raise in_the_way(sides[key])
        aux = sides["aux"]
        if suffix in TIFF_SUFFIXES and (aux.exists() or aux.is_symlink()) and not ours_aux(aux):
            raise in_the_way(aux)
    check_no_partial(out, overwrite=overwrite)  # (with overwrite: only a store of ours is to be replaced)
    if not overwrite and path_present(out):
        raise in_the_way(out)
    if overwrite:
        check_replaceable(out)
