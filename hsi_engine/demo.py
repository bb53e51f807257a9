"""``hsi-engine demo``: classify the shipped Indian Pines scene with the shipped SSRN and report accuracy.

Needs nothing but the repository (scene in ``hsi_engine/data/indian_pines``, weights in
``hsi_engine/data/models/ssrn_indian_pines``); works offline. Writes into OUT:

* ``classmap.tif``: Cloud-Optimised GeoTIFF, uint8, 0 = nodata, 1..16 classes, colour table and class names
  (the scene has no georeferencing, so the map is in pixel coordinates);
* ``classmap.png``: false colour | ground truth | prediction, with a legend of class names;
* ``report.json``: overall accuracy, average accuracy, kappa, per-class accuracy and the confusion matrix,
  computed on the labelled pixels the model did NOT see in training or validation (the split recorded in
  the model's ``model.json``), plus pixels/s, device, backend and the number of evaluated pixels.

Re-running into the same OUT replaces these three files (each atomically).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HSIEngineError, OptionError, OutputError
from .logs import quiet_affine_mul, warnings_ignored
from .tiles import default_tile

__all__ = ["SHIPPED_MODEL", "SHIPPED_SCENE", "evaluation_mask", "run_demo"]

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
SHIPPED_SCENE = DATA / "indian_pines" / "indian_pines.h5"
SHIPPED_MODEL = DATA / "models" / "ssrn_indian_pines"



def cpu_name() -> str:
    """The CPU's model from /proc/cpuinfo (``platform.processor()`` says only 'x86_64' on Linux), else what
    ``platform`` knows: a pixels-per-second figure names the machine it was measured on."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"

def _load_labels(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if "labels" not in f:
            raise HSIEngineError(f"{path} holds no 'labels' dataset; the demo needs the shipped ground truth")
        return f["labels"][()].astype(np.int64)


def evaluation_mask(labels: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    """Labelled pixels not used for training or validation, per the split recorded in ``meta["split"]``: its test
    mask when it records one (a spatially disjoint split leaves out pixels whose patch reaches another set).

    Returns ``(mask, counts)`` with ``counts`` = labelled / train / val / evaluated pixel numbers. Raises
    :class:`HSIEngineError` when the model records no split (its accuracy on the scene would include
    pixels it was trained on), or when ``labels`` leave some of its training pixels unlabelled: not its own scene's
    labels (a neighbouring tile of the same size was scored on 10 arbitrary pixels, OA 0.50 for 0.26).
    """
    from ssrn.data import split_masks_from_meta

    labelled = labels > 0
    try:
        masks = split_masks_from_meta(meta)
    except (KeyError, ValueError) as e:
        raise HSIEngineError(f"model.json's split cannot be decoded ({e}); re-save the model with "
                             "ssrn.data.Split.to_meta()") from None
    if "train" not in masks:
        raise HSIEngineError("the model's model.json records no training split (meta['split']['train_mask']); "
                             "the demo cannot tell test pixels from training pixels. Ship a model trained with "
                             "`hsi-engine train`, which records it.")
    excl = np.zeros_like(labelled)
    counts = {"labelled_pixels": int(labelled.sum())}
    for k in ("train", "val"):
        m = masks.get(k)
        if m is None:
            counts[f"{k}_pixels"] = 0
            continue
        if m.shape != labels.shape:
            raise HSIEngineError(f"the model's {k} mask is {m.shape} but the scene is {labels.shape}: this model "
                                 "was not trained on this scene")
        unlabelled = int((m & ~labelled).sum())
        if unlabelled:  # every pixel it trained (or validated) on was labelled in its own labels
            raise HSIEngineError(
                f"{unlabelled} of the model's {int(m.sum())} {'training' if k == 'train' else 'validation'} pixels "
                "are unlabelled in these labels: they are not the labels it was trained on (another scene of the "
                "same size, or these shifted), and its split does not apply to them; a scene the model never saw "
                "is scored on all its labelled pixels (labels > 0)")
        counts[f"{k}_pixels"] = int((m & labelled).sum())
        excl |= m
    mask = labelled & ~excl
    test = masks.get("test")
    if test is not None and test.shape == labels.shape:  # a spatially disjoint split also drops buffer pixels
        mask &= test
    counts["evaluated_pixels"] = int(mask.sum())
    return mask, counts


def _versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["hsi-engine"] = version("hsi-engine")
    except Exception:  # not installed as a distribution (running from a checkout)
        pass
    return out


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


DEMO_OUTPUTS = ("classmap.tif", "classmap.tif.aux.xml", "classmap.png", "report.json")
DEMO_TAG = "hsi_engine_demo"  # on the demo's own map: a rerun replaces only what a demo wrote


def _check_demo_out(out: Path) -> None:
    """``out`` is a directory the demo may write into: new, or without its output names, or an earlier demo's
    (its report.json says so: rerunning the README's command replaces it); never someone else's files."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; the demo writes a directory (classmap.tif, classmap.png, "
                          "report.json): pass a directory's path")
    if not out.exists() and out.suffix.lower() in (".tif", ".tiff", ".png", ".json", ".zarr"):
        raise OutputError(f"--out {out} names a file, but the demo writes a directory (classmap.tif, classmap.png, "
                          f"report.json): pass a directory's path (e.g. --out {out.with_suffix('')})")
    taken = [n for n in DEMO_OUTPUTS if (out / n).exists()] if out.is_dir() else []
    if not taken:
        return
    try:
        doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
        ours = "evaluated_on" in doc and doc["outputs"]["report"] == "report.json"
    except (OSError, ValueError, TypeError, KeyError):
        ours = False
    if not ours and (out / "classmap.tif").is_file():  # a demo stopped before its report: its map says so
        import rasterio

        try:
            with rasterio.open(out / "classmap.tif") as f:
                ours = f.tags().get(DEMO_TAG) == "1"  # (any classify map says software=hsi-engine)
        except rasterio.errors.RasterioIOError:
            ours = False
    if not ours:
        raise OutputError(f"{out} already holds {', '.join(taken)}, which no earlier demo wrote (no demo report.json "
                          "beside them); the demo would replace them: pass another --out, or move them away")


@quiet_affine_mul
def run_demo(out: str | os.PathLike, *, device: Any = None, backend: str = "auto", tile: int | None = None,
             model_dir: str | os.PathLike | None = None, scene_path: str | os.PathLike | None = None,
             progress: bool | None = None, precision: str = "float32") -> dict[str, Any]:
    """Classify the shipped scene with the shipped model; write classmap.tif, classmap.png, report.json in ``out``.

    ``device`` (default: cuda if available, else cpu), ``backend`` (auto, eager, compile, triton), ``tile``
    and ``precision`` (float32 exact; bfloat16 / float16 opt-in, the report then shows what it costs in
    accuracy) go to :func:`hsi_engine.api.classify`. ``model_dir``/``scene_path`` replace the shipped ones
    (the scene file must hold ``cube`` and ``labels`` like the shipped HDF5). Returns the report.
    """
    from kernels.dispatch import BACKENDS

    from .api import _device, load_model
    from .fused import PRECISIONS
    from .io import open_scene

    scene_path = Path(scene_path) if scene_path is not None else SHIPPED_SCENE
    model_dir = Path(model_dir) if model_dir is not None else SHIPPED_MODEL
    if not scene_path.is_file():
        raise HSIEngineError(f"demo scene {scene_path} is missing; reinstall hsi-engine from a complete checkout")
    if not model_dir.is_dir():
        raise HSIEngineError(f"demo model {model_dir} is missing; it ships with hsi-engine (weights.safetensors + "
                             "model.json), or train one with `hsi-engine train --dataset indian_pines --out DIR`")
    dev = _device(device)  # every argument checked before OUT is created
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    out = Path(out)
    scene = open_scene(scene_path)
    labels = _load_labels(scene_path)
    model = load_model(model_dir)
    meta = dict(getattr(model, "meta", None) or {})
    mask, counts = evaluation_mask(labels, meta)
    _check_demo_out(out)
    created = not out.exists()  # made only once the inputs are known good; removed again if the run fails
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the demo output directory {out} ({e.strerror or e})") from None
    try:
        return _classify_and_report(out, scene, scene_path, labels, model, model_dir, meta, mask, counts, dev=dev,
                                    backend=backend, tile=tile, progress=progress, precision=precision)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _classify_and_report(out: Path, scene: Any, scene_path: Path, labels: np.ndarray, model: Any, model_dir: Path,
                         meta: dict[str, Any], mask: np.ndarray, counts: dict[str, int], *, dev: Any, backend: str,
                         tile: int | None, progress: bool | None, precision: str) -> dict[str, Any]:
    """The demo's work once its inputs are checked: classify, score, write the three outputs into ``out``."""
    import torch

    from ssrn.metrics import classification_report

    from .api import classify
    from .fused import PRECISIONS
    from .render import save_comparison
    from .resume import model_digest, provenance
    from .scene_checks import declared_nodata
    from .writers import write_classmap

    from kernels.dispatch import resolve_backend

    try:
        resolved = resolve_backend(backend, dev, PRECISIONS[precision])
    except ValueError:  # classify below says what is wrong with it
        resolved = backend

    log.info("classifying %s (%d x %d x %d) on %s with backend %s", scene_path.name, *scene.shape, dev, resolved)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    pred_da = classify(scene, model, tile=tile, device=dev, backend=backend, precision=precision,
                       progress=progress)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    pred = np.asarray(pred_da.values)
    n_pixels = int(pred.size)

    k = int(model.config.classes)
    class_names = list(pred_da.attrs.get("class_names") or meta.get("class_names") or
                       [f"class {i}" for i in range(1, k + 1)])
    palette = pred_da.attrs.get("palette") or meta.get("palette")
    # classes 0..K: a test pixel left unclassified (0) counts as an error; truth is never 0 on the mask
    rep = classification_report(labels[mask], pred[mask].astype(np.int64), n_classes=k + 1)
    rep["per_class_accuracy"] = rep["per_class_accuracy"][1:]
    rep["support"] = rep["support"][1:]

    # the shipped scene has no CRS: the map is in pixel coordinates, by design
    with warnings_ignored(UserWarning, ".*without georeferencing"):
        # the scene and the nodata it masked, as a classify map records them (`hsi-engine info MAP` prints them)
        nodata = declared_nodata(scene)
        scene_tags = {"scene": os.fsencode(scene_path).decode("utf-8", "backslashreplace"),
                      "scene_nodata": "none" if nodata is None else repr(float(nodata))}
        tif = write_classmap(pred_da, out / "classmap.tif", n_classes=k, class_names=class_names, palette=palette,
                             overwrite=True, tags={**provenance(model_digest(model), precision,  # (auto as it resolved)
                                                                 pred_da.attrs.get("spatial_precision", "auto")),
                                                   **scene_tags, DEMO_TAG: "1"})
    title = (f"Indian Pines, SSRN: OA {rep['oa']:.4f}, AA {rep['aa']:.4f}, kappa {rep['kappa']:.4f} "
             f"on {counts['evaluated_pixels']} test pixels")
    png = save_comparison(scene, labels, pred, out / "classmap.png", class_names=class_names, palette=palette,
                          title=title)

    report: dict[str, Any] = {
        "scene": str(scene_path.relative_to(DATA.parent.parent)) if scene_path.is_relative_to(DATA.parent.parent)
        else str(scene_path),
        "model": str(model_dir.relative_to(DATA.parent.parent)) if model_dir.is_relative_to(DATA.parent.parent)
        else str(model_dir),
        "evaluated_on": "labelled pixels not used for training or validation (model.json split)",
        "overall_accuracy": rep["oa"], "average_accuracy": rep["aa"], "kappa": rep["kappa"],
        "per_class_accuracy": {n: a for n, a in zip(class_names, rep["per_class_accuracy"])},
        "per_class_support": {n: int(s) for n, s in zip(class_names, rep["support"])},
        "confusion_matrix": rep["confusion_matrix"][1:],
        "confusion_matrix_layout": "rows: true class 1..K; columns: predicted 0..K (0 = left unclassified)",
        **counts,
        "pixels": n_pixels, "height": int(pred.shape[0]), "width": int(pred.shape[1]),
        "bands": int(scene.sizes["band"]), "seconds": seconds, "pixels_per_second": n_pixels / seconds,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "backend": resolved, "backend_requested": backend, "precision": precision,
        "tile": tile if tile is not None else default_tile(dev.type, int(scene.sizes["band"])),
        "outputs": {"classmap": tif.name, "figure": png.name, "report": "report.json"},
        "versions": _versions(),
        "training_report": meta.get("report"),
    }
    _write_json(out / "report.json", report)
    log.info("OA %.4f  AA %.4f  kappa %.4f on %d test pixels; %.0f pixels/s on %s (%s)", rep["oa"], rep["aa"],
             rep["kappa"], counts["evaluated_pixels"], report["pixels_per_second"], dev, resolved)
    log.info("wrote %s, %s and %s", tif, png, out / "report.json")
    return report
