"""Model directories: ``weights.safetensors`` + ``model.json``. Loading never unpickles."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import SSRNConfig
from .model import SSRN

WEIGHTS = "weights.safetensors"
MODEL_JSON = "model.json"
FORMAT = "hsi-engine.ssrn"
FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save zip archives


class CheckpointError(ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""


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


def save_model(model: SSRN, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the directory ``path`` atomically (built beside it, then renamed in).

    ``meta`` (default: ``model.meta``) travels in model.json: normalisation ``mean``/``std`` per band,
    ``class_names``, ``palette`` (RGB triplets), ``wavelengths``, the training ``report``, ``command``.
    """
    path = Path(path)
    meta = dict(model.meta if meta is None else meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a model directory is as readable as any new one
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
               "meta": _jsonable(meta)}
        (tmp / MODEL_JSON).write_text(json.dumps(doc, indent=1))
        (tmp / WEIGHTS).chmod(0o666 & ~umask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_model_json(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed model.json of a model directory, with its format checked."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        hint = (" It looks like a pickle/torch.save file; hsi-engine never unpickles. Re-save the model with "
                "ssrn.save_model(model, DIR) from a trusted environment." if head.startswith(_PICKLE_MAGIC) else "")
        raise CheckpointError(f"{path} is a file; expected a model directory holding {WEIGHTS} and "
                              f"{MODEL_JSON}.{hint}")
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist; pass a directory written by "
                              "ssrn.save_model or `hsi-engine train --out`")
    mj = path / MODEL_JSON
    if not mj.is_file():
        raise CheckpointError(f"{path} has no {MODEL_JSON}; expected a directory written by ssrn.save_model")
    try:
        doc = json.loads(mj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mj} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{mj} is not an hsi-engine model (format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{mj} has format_version {doc['format_version']}; this hsi-engine reads "
                              f"up to {FORMAT_VERSION}: upgrade hsi-engine")
    return doc


def _check_palette(palette: object, classes: int, where: Path) -> None:
    """A model's ``meta["palette"]`` is absent or one ``[r, g, b]`` (0-255 integers) per class: checked at load,
    so a bad one fails before a scene is classified, not when the class map is committed."""
    if palette is None:
        return
    ok = isinstance(palette, list) and len(palette) == classes and all(
        isinstance(c, list) and len(c) in (3, 4) and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette)
    if not ok:
        raise CheckpointError(f"{where}: meta.palette must be {classes} colours (one per class), each [r, g, b] of "
                              f"integers 0-255; found {str(palette)[:120]}. Fix or remove it (a default palette "
                              "is used without one)")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SSRN:
    """Load a model directory into an ``SSRN`` in eval mode with ``.meta`` from model.json."""
    path = Path(path)
    doc = read_model_json(path)
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path / MODEL_JSON} has no 'config' object (the network's bands, classes, widths); "
                              "expected a model directory written by ssrn.save_model")
    try:
        config = SSRNConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / MODEL_JSON} holds an invalid config ({type(e).__name__}: {e})") from None
    _check_palette((doc.get("meta") or {}).get("palette"), config.classes, path / MODEL_JSON)
    wf = path / WEIGHTS
    if not wf.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS}")
    with open(wf, "rb") as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{wf} is a pickle/torch.save file, not safetensors; hsi-engine never unpickles. "
                              "Convert it with safetensors.torch.save_file in a trusted environment.")
    try:
        tensors = load_file(str(wf), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wf} is not a readable safetensors file ({e})") from None
    model = SSRN(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{wf} does not match the config in {MODEL_JSON}: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{wf}: tensor {k!r} has shape {tuple(tensors[k].shape)}, but the config in "
                                  f"{MODEL_JSON} (bands={config.bands}, classes={config.classes}) needs "
                                  f"{tuple(v.shape)}")
    model.load_state_dict(tensors)
    model.meta = doc.get("meta") or {}
    return model.to(map_location).eval()
