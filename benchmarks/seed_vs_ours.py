"""The seed's released Keras SSRN beside this project's trained SSRN on the shipped Indian Pines scene.

For each model, in one run on one device: OA / AA / kappa / per-class accuracy from the engine's class map,
on (a) the labelled pixels this project's model did not train or validate on, (b) the seed's own test split
(rebuilt from its code by ``ssrn.seed_split.seed_split``), (c) the labelled pixels neither model trained or
validated on, and (d) all labelled pixels; the seed model's figures on (b) as the seed's Load_IN.py computes
them, against its record ``records/IN_test_SS_10.txt``; and pixels/s of patch-mode inference
(``SSRN.forward`` on every pixel's 7x7 patch, as the seed runs it, timed on a random subset) versus the engine
(``hsi_engine.classify`` on the whole scene). The engine's map is checked against patch mode on the timed
subset. Writes benchmarks/results/seed-vs-ours-<device>.md.

    python benchmarks/seed_vs_ours.py [--patch-pixels 2048] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # benchmarks/kernels.py must not shadow the kernels package

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hsi_engine  # noqa: E402
from benchmarks._common import bench_device, cpu_name, positive_int, results_out  # noqa: E402
from hsi_engine.demo import evaluation_mask  # noqa: E402
from hsi_engine.fused import patch_forward  # noqa: E402
from ssrn.data import shipped_indian_pines, split_masks_from_meta  # noqa: E402
from ssrn.keras import import_keras_to_dir  # noqa: E402
from ssrn.metrics import classification_report  # noqa: E402
from ssrn.seed_split import SEED_IN_RECORD, seed_scores, seed_split  # noqa: E402

OURS = REPO / "hsi_engine" / "data" / "models" / "ssrn_indian_pines"
SEED_FILE = "Indian_best_RES_3D_SS4_10_1.hdf5"


def _seed_file() -> Path:
    for d in (REPO.parent / "shared" / "data" / "seed_ssrn", REPO / "tests" / "data" / "seed_ssrn"):
        if (d / SEED_FILE).is_file():
            return d / SEED_FILE
    raise SystemExit(f"{SEED_FILE} not found under shared/data/seed_ssrn or tests/data/seed_ssrn")


def _measure(model, da, labels, masks, device, n_patch, rng) -> dict:
    hsi_engine.classify(da[:, :16, :16], model, device=device, backend="eager", progress=False)  # warm-up
    t0 = time.perf_counter()
    labels_map = hsi_engine.classify(da, model, device=device, backend="eager", progress=False)
    engine_s = time.perf_counter() - t0
    pred = np.asarray(labels_map.values).astype(np.int64)
    mean = np.asarray(model.meta["mean"], np.float32)[:, None, None]
    std = np.asarray(model.meta["std"], np.float32)[:, None, None]
    norm = torch.from_numpy((da.values.astype(np.float32) - mean) / std)
    h, w = labels.shape
    pix = rng.choice(h * w, size=min(n_patch, h * w), replace=False)
    pixels = torch.from_numpy(np.stack([pix // w, pix % w], 1))
    m = model.to(device)
    patch_forward(m, norm[:, :8, :8].to(device))  # warm-up
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    logits = patch_forward(m, norm.to(device), pixels.to(device))  # the scene's copy counted, as the engine's is
    sync()  # queued kernels finish inside the timed span
    patch_s = time.perf_counter() - t0
    agree = float((logits.argmax(1).cpu().numpy() + 1 == pred.reshape(-1)[pix]).mean())
    out = {"engine_px_s": h * w / engine_s, "patch_px_s": len(pix) / patch_s, "agreement": agree,
           "n_patch": len(pix)}
    for name, mask in masks.items():
        out[name] = classification_report(labels[mask] - 1, pred[mask] - 1, n_classes=int(labels.max()))
    out["seed_formula"] = seed_scores(np.asarray(out["seed_test"]["confusion_matrix"]))  # as the seed's Load_IN.py
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-pixels", type=positive_int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/seed-vs-ours-<device>.md, "
                    "refused when that file exists)")
    args = ap.parse_args(argv)
    device = bench_device(args.device)  # a device this machine lacks: refused here, with the reason
    cuda = device.type == "cuda"
    tag = torch.cuda.get_device_name(device).split()[-1].lower() if cuda else device.type
    out = results_out(args.out, REPO / "benchmarks" / "results" / f"seed-vs-ours-{tag}.md")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    da, labels = shipped_indian_pines()
    ours = hsi_engine.load_model(OURS)
    test_mask, counts = evaluation_mask(labels, ours.meta)
    our_split = split_masks_from_meta(ours.meta)
    seed_sets = seed_split(labels)  # the seed's np.random.seed(1334); sampling(0.8, gt); last 1025 validate
    sm = seed_sets.masks()
    masks = {"held_out": test_mask, "seed_test": sm["test"], "held_out_by_both": test_mask & sm["test"],
             "all_labelled": labels > 0}
    overlap = {"held_in_seed_train": int((test_mask & sm["train"]).sum()),
               "held_in_seed_val": int((test_mask & sm["val"]).sum()),
               "seed_test_in_our_train": int((sm["test"] & our_split["train"]).sum()),
               "seed_test_in_our_val": int((sm["test"] & our_split["val"]).sum())}
    with tempfile.TemporaryDirectory() as tmp:
        seed = hsi_engine.load_model(import_keras_to_dir(_seed_file(), Path(tmp) / "seed", dataset="indian_pines"))
    results = {"seed (released Keras, imported)": _measure(seed, da, labels, masks, device, args.patch_pixels, rng),
               "hsi-engine (trained here)": _measure(ours, da, labels, masks, device, args.patch_pixels, rng)}
    names = ours.meta.get("class_names") or [str(i) for i in range(1, 17)]
    seed_r = results["seed (released Keras, imported)"]
    sf = seed_r["seed_formula"]
    rec_ok = all(abs(sf[k] - SEED_IN_RECORD[k]) < 1e-12 for k in ("oa", "aa", "kappa"))
    dev = torch.cuda.get_device_name(device) if cuda else cpu_name()
    lines = ["# The seed's released SSRN beside hsi-engine's trained SSRN (Indian Pines, shipped scene)", "",
             f"- device: {dev} ({device}, torch threads {torch.get_num_threads()})",
             f"- versions: torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}",
             f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- command: `python benchmarks/seed_vs_ours.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
             f"- ours: `{ours.meta.get('command', '?')}`; held-out pixels = labelled pixels outside its training and "
             f"validation split ({counts}).",
             "- seed_test = the seed's own test split, rebuilt from its code (`ssrn.seed_split.seed_split`: "
             "`np.random.seed(1334)`, then its `sampling(0.8, gt)` as in its SSRN_IN.py and Load_Models/Load_IN.py, "
             f"the last {seed_sets.val.size} of the second list validating): {seed_sets.train.size} train, "
             f"{seed_sets.val.size} validation, {seed_sets.test.size} test pixels. The seed model's engine map scored "
             "there as its Load_IN.py scores it gives OA / AA (its own, see below) / kappa "
             f"{' / '.join(f'{sf[k]:.17g}' for k in ('oa', 'aa', 'kappa'))}; its record "
             "`records/IN_test_SS_10.txt` has "
             f"{' / '.join(f'{SEED_IN_RECORD[k]:.17g}' for k in ('oa', 'aa', 'kappa'))} "
             f"({'equal to 1e-12' if rec_ok else 'NOT equal to 1e-12'}).",
             f"- Of our {int(test_mask.sum())} held-out pixels, {overlap['held_in_seed_train']} are in the seed's "
             f"training set and {overlap['held_in_seed_val']} in its validation set, so the seed's 'held_out' "
             f"figures include pixels it trained or validated on; of the seed's {seed_sets.test.size} test pixels, "
             f"our model trained on {overlap['seed_test_in_our_train']} and validated on "
             f"{overlap['seed_test_in_our_val']}, so ours on 'seed_test' include pixels it trained or validated on. "
             f"held_out_by_both = the {int(masks['held_out_by_both'].sum())} labelled pixels neither model trained or "
             "validated on; 'all labelled' is the same set for both.",
             f"- The record's AA {100 * SEED_IN_RECORD['aa']:.2f} % is another metric than this table's AA: the "
             "seed's Load_IN.py calls `confusion_matrix(pred, gt)` with the predictions first, so its per-class "
             "'accuracy' is precision (the fraction of the pixels predicted as a class that are that class); the "
             f"seed model's mean precision on seed_test is {100 * sf['aa']:.2f} % here, its mean per-class recall "
             f"(our AA) {100 * seed_r['seed_test']['aa']:.2f} %.",
             "- patch mode = `SSRN.forward` on each pixel's 7x7 patch (what the seed runs), timed on "
             f"{args.patch_pixels} random pixels; engine = `hsi_engine.classify` on the whole 145 x 145 scene "
             "(eager backend, I/O and normalisation included); both in this one run.", "",
             "| model | pixels | OA % | AA % | kappa % | patch mode px/s | engine px/s | engine / patch | "
             "engine = patch mode on timed pixels |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model_name, r in results.items():
        for mname in masks:
            rep = r[mname]
            lines.append(f"| {model_name} | {mname} ({sum(rep['support'])}) | {100 * rep['oa']:.2f} | "
                         f"{100 * rep['aa']:.2f} | {100 * rep['kappa']:.2f} | {r['patch_px_s']:.0f} | "
                         f"{r['engine_px_s']:.0f} | {r['engine_px_s'] / r['patch_px_s']:.1f}x | "
                         f"{100 * r['agreement']:.2f}% |")
    lines += ["", "Per-class accuracy % (held-out pixels | all labelled pixels):", "",
              "| class | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for i, n in enumerate(names):
        cells = []
        for r in results.values():
            a, b = r["held_out"]["per_class_accuracy"][i], r["all_labelled"]["per_class_accuracy"][i]
            cells.append(f"{'-' if a is None else f'{100 * a:.1f}'} / {'-' if b is None else f'{100 * b:.1f}'}")
        lines.append(f"| {i + 1} {n} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
