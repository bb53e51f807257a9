"""``hsi-engine info MODEL_DIR``: what a model directory holds, and the digest a class map made with it records, so
a map's ``model_digest`` tag can be matched to the model that made it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["is_model_dir", "model_info"]


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a ``model.json`` (a model directory, or meant as one)."""
    return Path(path).is_dir() and (Path(path) / "model.json").is_file()


def _listed(names: list[Any], n: int = 6) -> str:
    shown = ", ".join(str(x) for x in names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def model_info(path: str | os.PathLike) -> str:
    """A human summary of a model directory: network, classes, bands and wavelengths, normalisation, training
    report, the weights' sha256 and the model digest a class map records (its ``model_digest`` tag/attribute)."""
    import json

    from ssrn.checkpoint import MODEL_JSON, is_progress_save, load_model

    from .cube import band_runs
    from .resume import model_digest

    model = load_model(path)  # checks format, weights checksum and meta as classify does
    meta, cfg = model.meta, model.config
    recorded = json.loads((Path(path) / MODEL_JSON).read_text(encoding="utf-8"))
    lines = [f"model      {Path(path)}",
             f"network    SSRN {cfg.variant}: {cfg.bands} bands, {cfg.classes} classes, patch {cfg.patch}, "
             f"{cfg.spectral_blocks} spectral / {cfg.spatial_blocks} spatial blocks, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters"]
    trained = meta.get("dataset")
    if trained or meta.get("source"):
        lines.append(f"trained on {trained or '?'}" + (f" ({meta['source']})" if meta.get("source") else ""))
    names = list(meta.get("class_names") or [])
    lines.append(f"classes    {_listed(names) if names else 'unnamed'}")
    wl = meta.get("wavelengths")
    lines.append(f"wavelength {min(wl):.1f}..{max(wl):.1f} nm ({len(wl)} bands)" if wl else
                 "wavelength unknown (a scene's bands are checked by count only)")
    if meta.get("bad_bands"):
        lines.append(f"bad bands  {band_runs(sorted(int(b) for b in meta['bad_bands']))} (0-based; read as 0)")
    if meta.get("scales") is not None:
        lines.append("scaling    the training scene's declared band scales/offsets are recorded (a scene stored "
                     "otherwise is refused)")
    report = meta.get("report") or {}
    if is_progress_save(meta):  # (a cron job that retrains, then classifies, must see it here)
        lines.append(f"status     UNFINISHED: a training run's progress save (epoch {report.get('epochs_run', '?')} of "
                     f"{report.get('epochs', '?')}); the run was stopped or is still going")
    if all(k in report for k in ("oa", "aa", "kappa")):
        lines.append(f"test       OA {report['oa']:.4f}, AA {report['aa']:.4f}, kappa "
                     + (f"{report['kappa']:.4f}" if report['kappa'] is not None else "n/a (one class in the test set)")
                     + (f" ({report['split']['n_test']} test pixels)" if "n_test" in report.get("split", {})
                        else ""))
    if report.get("date") or meta.get("command"):
        lines.append(f"made       {report.get('date') or 'date unknown'}"
                     + (f" by: {meta['command']}" if meta.get("command") else ""))
    lines.append(f"weights    sha256 {recorded.get('weights_sha256', 'not recorded')}")
    lines.append(f"digest     {model_digest(model)} (the model_digest a class map made with it records)")
    return "\n".join(lines)
