"""Trainer for SSRN: the seed's protocol by default (RMSprop lr 3e-4, batch 16, 200 epochs, best validation
loss kept), with options (AdamW, cosine schedule, early stopping, AMP on CUDA, seeds: the same weights again on
the same number of threads)."""

from __future__ import annotations

import contextlib
import copy
import decimal
import importlib
import logging
import math
import numbers
import operator
import os
import platform
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import MAX_BANDS, PRESETS, SSRNConfig
from .data import (DataError, DatasetSpec, PatchDataset, Scene, Split, block_split, check_labels, dataset_spec,
                   is_scene_path, load_dataset, per_class_split, standardize_scene, stratified_split)
from .devices import DeviceError, resolve_device
from .errors import (HSIEngineError, OptionError, check_flag, first_line, is_text_path, is_whole,
                     not_a_model_error)
from .metrics import classification_report
from .model import SSRN, count_parameters, filled_model

__all__ = ["TrainOptionError", "Trainer", "TrainResult", "check_train_options", "predict", "run_training",
           "seed_everything"]

log = logging.getLogger("ssrn.train")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's, numpy's and torch's global generators; ``deterministic``: also set cuDNN's flags for
    repeatable convolutions, process-wide (:meth:`Trainer.fit` restores them when it returns)."""
    seed = _whole("seed", seed)  # a numpy integer as an int (random.seed refuses np.int64)
    deterministic = check_flag("deterministic", deterministic, TrainOptionError)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@contextlib.contextmanager
def global_rngs_kept():
    """Python's, numpy's and torch's global generators (CPU and every CUDA device) put back as they were on exit:
    a run that seeds them for its own reproducibility leaves a caller's streams where the caller left them."""
    py, nps = random.getstate(), np.random.get_state()
    # CUDA's generators only where the caller has used CUDA (saving them would initialise it)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)


def _check_optimizer_setup() -> None:
    """Building a torch optimizer imports ``torch._dynamo``, which creates the compiler's cache directory (though
    training never compiles): an unusable ``TORCHINDUCTOR_CACHE_DIR``, or no usable temporary directory, failed
    the run after the scene was read, with only "[Errno 2] No such file or directory: '/proc/nope'". Now, before."""
    try:
        importlib.import_module("torch._dynamo")
    except (OSError, AssertionError) as e:  # (AssertionError: a second import, after one that failed)
        where = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        asked = f"TORCHINDUCTOR_CACHE_DIR={where}" if where else "its default under the temporary directory"
        again = "" if isinstance(e, OSError) else ", then start a new process (it failed earlier in this one)"
        raise TrainOptionError(f"torch cannot create its compiler cache directory ({asked}: "
                               f"{getattr(e, 'strerror', None) or e}), which building the optimizer needs: point "
                               f"TORCHINDUCTOR_CACHE_DIR (or TMPDIR) at a writable directory{again}") from None


class TrainOptionError(OptionError):
    """A training option that cannot work: out of range, two options that cannot both apply, a missing device
    (an :class:`~ssrn.errors.OptionError`: an ``HSIEngineError`` and a ``ValueError``)."""


_AS_TEXT = (": a string (from a config file or os.environ) is not read as a number, convert it first (int(...) or "
            "float(...))")


def _whole(name: str, value: Any, optional: bool = False) -> int | None:
    """``value`` as an int (a numpy integer too), else a :class:`TrainOptionError` naming the option."""
    if optional and value is None:
        return None
    if not is_whole(value):
        raise TrainOptionError(f"{name} must be a whole number{' (or None)' if optional else ''}, got {value!r} "
                               f"({type(value).__name__})" + (_AS_TEXT if isinstance(value, str) else ""))
    return int(value)


def _real(name: str, value: Any, optional: bool = False) -> float | None:
    """``value`` as a float (a numpy number, Fraction or Decimal too: model.json holds JSON's numbers only, and such
    an option failed the save after the training), else a :class:`TrainOptionError` naming the option."""
    if optional and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise TrainOptionError(f"{name} must be a number{' (or None)' if optional else ''}, got {value!r} "
                               f"({type(value).__name__})" + (_AS_TEXT if isinstance(value, str) else ""))
    return float(value)


class TrainingDivergedError(HSIEngineError, RuntimeError):
    """The loss became NaN or infinite before any epoch gave a usable model: nothing is saved."""


def _device(device: str | torch.device | None) -> torch.device:
    """:func:`ssrn.devices.resolve_device`, its error as a :class:`TrainOptionError` (refused before any work)."""
    try:
        return resolve_device(device)
    except DeviceError as e:
        raise TrainOptionError(str(e)) from None


def _declared_scaling(cube: Any) -> tuple[Any, Any] | None:
    """The training scene's declared band ``(scales, offsets)`` (values stored as read, not scaled), or None."""
    import xarray as xr

    from .normalise import declared_scaling

    return declared_scaling(cube) if isinstance(cube, xr.DataArray) else None


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type != "cpu":  # mps, xpu...: not a CPU's run
        return str(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did. The best epoch is the one of the lowest ``selected_on`` loss (``"val_loss"``,
    or ``"train_loss"`` without validation pixels), that loss weighted as the training's (``class_weight``);
    ``best_val_loss`` is None (and each epoch's ``val_loss`` in ``history``) without validation pixels."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float | None = float("inf")
    best_loss: float = float("inf")  # the selection loss at the best epoch
    selected_on: str = "val_loss"
    selection_class_weight: str | None = None  # the weighting of the selection loss: the training loss's
    epochs_run: int = 0
    stopped_early: bool = False
    stopped_by_time_budget: bool = False
    diverged_epoch: int | None = None  # the epoch whose loss became NaN/inf (training stopped there)
    train_time_s: float = 0.0


@torch.no_grad()
def scene_features(model: SSRN, data: PatchDataset, rows: int = 8, amp: bool = False) -> torch.Tensor:
    """Spectral features of every pixel of the zero-padded scene, ``(Hp, Wp, reduce_width)``.

    Spectral layers have a 1x1 footprint, so in eval mode a pixel's features do not depend on the patch
    it sits in: computing them once per pixel and cutting feature patches gives the patch-mode result.
    """
    dev = next(model.parameters()).device
    model.eval()
    hp, wp, _ = data.padded.shape
    out = []
    for r0 in range(0, hp, rows):
        x = data.padded[r0:r0 + rows].permute(2, 0, 1).unsqueeze(0).to(dev)  # (1, B, rows, Wp)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            f = model.spectral(x).float()
        out.append(f[0].permute(1, 2, 0).cpu())
    return torch.cat(out, 0)


@torch.no_grad()
def predict(model: SSRN, data: PatchDataset, batch_size: int = 256, device: str | torch.device | None = None,
            amp: bool = False, dense: bool | None = None,
            weight: torch.Tensor | None = None) -> tuple[np.ndarray, float | None]:
    """Argmax predictions (0-based) for every patch of ``data`` and the mean loss when labelled.

    ``dense`` (default: when the patches cover more pixels than the scene) computes the spectral stage once
    per scene pixel and runs only the spatial stage per patch (same result as patch mode, far fewer FLOPs).
    ``weight``: per-class loss weights (:func:`class_weights`); the loss is then their weighted mean, as
    ``F.cross_entropy(..., weight=weight)`` gives (NaN where no pixel has a weight above 0).
    """
    amp = check_flag("amp", amp, TrainOptionError)
    if dense is not None:
        dense = check_flag("dense", dense, TrainOptionError)
    dev = _device(device) if device is not None else next(model.parameters()).device
    weight = weight.to(dev) if weight is not None else None
    model.eval()
    if dense is None:
        dense = len(data) * data.patch ** 2 > data.padded.shape[0] * data.padded.shape[1]
    feats = scene_features(model, data, amp=amp) if dense else None
    if feats is not None:
        feat_ds = PatchDataset.__new__(PatchDataset)
        feat_ds.__dict__.update(data.__dict__)
        feat_ds.padded = feats
    preds, loss_sum, weight_sum = [], 0.0, 0.0
    for x, y, pos in data.iter_batches(batch_size) if feats is None else feat_ds.iter_batches(batch_size):
        x = x.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            logits = (model(x) if feats is None else model.spatial(x)).float()
        if y is not None:
            y = y.to(dev)
            loss_sum += float(F.cross_entropy(logits, y, weight=weight, reduction="sum"))
            weight_sum += float(weight[y].sum()) if weight is not None else 0.0
        preds.append(logits.argmax(1).cpu())
    p = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
    if data.labels is None:
        return p, None
    if weight is None:
        return p, loss_sum / max(1, len(data))
    return p, loss_sum / weight_sum if weight_sum > 0 else float("nan")


CLASS_WEIGHTS = (None, "none", "balanced")
OPTIMIZERS = ("rmsprop", "adamw")
SCHEDULES = ("constant", "cosine")


def _check_class_weight(mode: str | None) -> None:
    if mode not in CLASS_WEIGHTS:
        raise TrainOptionError(f"class_weight must be None, 'none' or 'balanced', got {mode!r}")


def _check_optimizer_options(optimizer: str, schedule: str, class_weight: str | None) -> None:
    """Refuse an optimizer, schedule or class weighting the trainer does not have, before any work."""
    if optimizer not in OPTIMIZERS:
        raise TrainOptionError(f"optimizer must be 'rmsprop' or 'adamw', got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise TrainOptionError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    _check_class_weight(class_weight)


def class_weights(labels: np.ndarray | torch.Tensor, classes: int, mode: str | None) -> torch.Tensor | None:
    """Per-class loss weights: ``None`` (the seed: plain cross-entropy) or ``"balanced"``.

    ``balanced`` weighs class k by ``n / (classes_present * n_k)`` (scikit-learn's rule), so the 20-pixel
    Oats class of Indian Pines weighs as much in the loss as the 2,455-pixel soybean class; classes absent
    from ``labels`` get weight 0.
    """
    _check_class_weight(mode)
    if mode is None or mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=classes)[:classes].astype(np.float64)
    present = counts > 0
    w = np.zeros(classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


class Trainer:
    """Train an SSRN on patch datasets, keeping the weights of the best validation loss.

    Defaults are the seed's: RMSprop (Keras' rho 0.9), lr 3e-4, batch 16, 200 epochs, constant learning rate, no
    early stopping, float32 (``amp=True``: bfloat16 autocast on CUDA, opt-in). Two numerics differ from the seed's
    Keras 2.0.6 run, and are kept as the shipped model and ``benchmarks/results/accuracy.md`` were trained (a seed
    gives the same weights again): RMSprop's epsilon is 1e-7 where the seed's hdf5 ``training_config`` records
    1e-08, and BatchNormalization's running statistics move with torch's momentum 0.1 where the seed's Keras
    momentum 0.99 is torch's 0.01 (too slow for their averages to settle in a short run).
    ``weight_decay=None`` is each optimizer's usual default: 0 for RMSprop, 1e-2 for AdamW.
    """

    def __init__(self, model: SSRN, *, optimizer: str = "rmsprop", lr: float = 3e-4, weight_decay: float | None = None,
                 batch_size: int = 16, epochs: int = 200, schedule: str = "constant", patience: int | None = None,
                 device: str | torch.device | None = None, amp: bool = False, seed: int = 0,
                 eval_batch_size: int = 256, progress: bool = True, time_budget_s: float | None = None,
                 class_weight: str | None = None,
                 on_improve: Callable[[SSRN, TrainResult], None] | None = None) -> None:
        from .checkpoint import is_ssrn

        if not is_ssrn(model):  # (a path: an AttributeError on .to before)
            raise not_a_model_error("Trainer", model, "; to train a new model on a dataset, call "
                                    "ssrn.run_training(dataset, out)")
        _check_optimizer_options(optimizer, schedule, class_weight)  # now, not after the data has loaded
        # (run_training checks these too; a Trainer built directly took batch_size=1, skipped every batch and
        # reported a trained model)
        time_budget_s = _real("time_budget_s", time_budget_s, optional=True)
        o = check_train_options(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                                max_minutes=None if time_budget_s is None else time_budget_s / 60, seed=seed)
        epochs, batch_size, lr, patience, seed = (o[k] for k in ("epochs", "batch_size", "lr", "patience", "seed"))
        weight_decay = _real("weight_decay", weight_decay, optional=True)
        if weight_decay is not None and not weight_decay >= 0:
            raise TrainOptionError(f"weight_decay must be >= 0 (or None: the optimizer's default), got {weight_decay}")
        eval_batch_size = _whole("eval_batch_size", eval_batch_size)
        if eval_batch_size < 1:
            raise TrainOptionError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        amp, progress = check_flag("amp", amp, TrainOptionError), check_flag("progress", progress, TrainOptionError)
        self.device = _device(device)
        self.model = model.to(self.device)
        self.batch_size, self.epochs, self.patience, self.seed = batch_size, epochs, patience, seed
        self.eval_batch_size, self.progress, self.on_improve = eval_batch_size, progress, on_improve
        self.time_budget_s = time_budget_s
        self.class_weight = class_weight
        self.amp = amp and self.device.type == "cuda"
        self.lr = lr
        params = model.parameters()
        if optimizer == "rmsprop":
            self.optimizer = torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7,
                                                 weight_decay=0.0 if weight_decay is None else weight_decay)
        else:  # adamw (_check_optimizer_options refused the rest)
            decay = 1e-2 if weight_decay is None else weight_decay
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, epochs))
                          if schedule == "cosine" else None)

    def fit(self, train: PatchDataset, val: PatchDataset | None = None) -> TrainResult:
        """Train on ``train``, keeping the weights of the best ``val`` loss; cuDNN runs deterministic meanwhile,
        and its flags are as before when this returns (a classify after it in the same process keeps its own), as
        are the global random generators it seeds (dropout draws from torch's)."""
        cudnn = torch.backends.cudnn
        flags = cudnn.benchmark, cudnn.deterministic
        try:
            with global_rngs_kept():
                return self._fit(train, val)
        finally:
            cudnn.benchmark, cudnn.deterministic = flags

    def _fit(self, train: PatchDataset, val: PatchDataset | None) -> TrainResult:
        seed_everything(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        res = TrainResult()
        best_state = None
        bad = 0
        t0 = time.perf_counter()
        model, dev = self.model, self.device
        weight = class_weights(train.labels.numpy(), model.config.classes, self.class_weight)
        weight = weight.to(dev) if weight is not None else None
        # the best epoch is chosen on the loss training minimises: weighted as it is (an unweighted validation
        # loss kept the epoch best on the big classes that --class-weight balanced trains away from), and on the
        # training loss where there is no validation pixel (recorded so: not as a validation loss)
        has_val = val is not None and len(val) > 0
        res.selected_on = "val_loss" if has_val else "train_loss"
        res.best_val_loss = float("inf") if has_val else None
        val_weight = weight
        if has_val and weight is not None and not bool(weight[val.labels.to(dev)].sum() > 0):
            log.warning("the validation pixels all belong to classes without a training pixel (weight 0 in the "
                        "class-weighted loss): the best epoch is chosen on their unweighted loss")
            val_weight = None
        res.selection_class_weight = self.class_weight if (val_weight if has_val else weight) is not None else None
        for epoch in range(1, self.epochs + 1):
            te = time.perf_counter()
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y, _ in train.iter_batches(self.batch_size, shuffle=True, generator=gen):
                if x.shape[0] < 2 and len(train) > 1:  # BatchNorm needs > 1 sample in training mode
                    continue
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, weight=weight)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_sum += float(loss.detach()) * x.shape[0]
                correct += int((logits.argmax(1) == y).sum())
                seen += x.shape[0]
            if self.scheduler is not None:
                self.scheduler.step()
            rec: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(1, seen),
                                   "train_acc": correct / max(1, seen)}
            if has_val:
                vp, vl = predict(model, val, self.eval_batch_size, amp=self.amp, weight=val_weight)
                rec["val_loss"] = float(vl)
                rec["val_acc"] = float((vp == val.labels.numpy()).mean())
            else:
                rec["val_loss"] = None  # (the training loss stood here, read as a validation loss)
            rec["time_s"] = time.perf_counter() - te
            res.history.append(rec)
            res.epochs_run = epoch
            crit = rec[res.selected_on]
            if not (math.isfinite(rec["train_loss"]) and math.isfinite(crit)):
                loss = rec["train_loss"] if not math.isfinite(rec["train_loss"]) else crit
                which = "training" if not math.isfinite(rec["train_loss"]) else "validation"
                if best_state is None:
                    raise TrainingDivergedError(
                        f"the {which} loss is {loss} at epoch {epoch}, before any epoch gave a usable model (the "
                        f"weights hold NaN or inf): nothing is saved; lower the learning rate (--lr, now "
                        f"{self.lr:g}){' or drop --amp' if self.amp else ''}")
                res.diverged_epoch = epoch
                log.warning("the %s loss is %s at epoch %d: training stops; the model is the best epoch's (%d); "
                            "a lower learning rate (--lr, now %g) may train further", which, loss, epoch,
                            res.best_epoch, self.lr)
                break
            improved = crit < res.best_loss
            if improved:
                res.best_loss, res.best_val_loss, res.best_epoch, bad = crit, rec["val_loss"], epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                bad += 1
            if self.progress:
                held_out = (f"val_loss {rec['val_loss']:.4f}  val_acc {rec['val_acc']:.4f}" if "val_acc" in rec
                            else "(no validation pixels: the best epoch is chosen on the training loss)")
                log.info("epoch %d/%d  loss %.4f  acc %.4f  %s  %.1fs%s", epoch, self.epochs, rec["train_loss"],
                         rec["train_acc"], held_out, rec["time_s"], "  *best" if improved else "")
            if improved and self.on_improve is not None:
                res.train_time_s = time.perf_counter() - t0
                self.on_improve(model, res)
            if self.patience is not None and bad >= self.patience and epoch < self.epochs:  # (the last: not early)
                res.stopped_early = True
                log.info("early stop: no %s improvement for %d epochs (best epoch %d)",
                         "val-loss" if has_val else "training-loss", bad, res.best_epoch)
                break
            elapsed = time.perf_counter() - t0
            if (self.time_budget_s is not None and epoch < self.epochs
                    and elapsed + elapsed / epoch > self.time_budget_s):
                res.stopped_by_time_budget = True
                log.info("stop after epoch %d: the next epoch would pass the time budget of %.0f s (best epoch %d)",
                         epoch, self.time_budget_s, res.best_epoch)
                break
        res.train_time_s = time.perf_counter() - t0
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return res


# --------------------------------------------------------------------------------------------------

def _fractions(spec: DatasetSpec | None, train_fraction: float | None,
               val_fraction: float | None) -> tuple[float, float]:
    """The train and validation fractions: those given, else the dataset's seed protocol (0.2 / 0.1 for a path)."""
    tf = train_fraction if train_fraction is not None else (spec.train_fraction if spec else 0.2)
    vf = val_fraction if val_fraction is not None else (spec.val_fraction if spec else 0.1)
    return tf, vf


def _check_split_options(spec: DatasetSpec | None, split: str, train_fraction: Any, val_fraction: Any,
                         per_class: Any) -> tuple[float | None, float | None, int | None]:
    """Refuse split options that cannot all apply (each message names the option to drop or change); returns
    ``(train_fraction, val_fraction, per_class)`` as plain floats and int (None where not given)."""
    train_fraction = _real("train fraction (--train-fraction)", train_fraction, optional=True)
    val_fraction = _real("validation fraction (--val-fraction)", val_fraction, optional=True)
    per_class = _whole("per_class (--per-class)", per_class, optional=True)
    if split not in ("random", "blocks"):
        raise TrainOptionError(f"split must be 'random' or 'blocks', got {split!r}")
    if per_class is not None:
        if per_class < 1:
            raise TrainOptionError(f"per_class (--per-class) must be >= 1, got {per_class}")
        if split == "blocks":
            raise TrainOptionError("--per-class applies to the random split only: the block split assigns whole "
                                   "blocks by --train-fraction / --val-fraction. Drop --per-class, or use "
                                   "--split random")
        if train_fraction is not None:
            raise TrainOptionError("--per-class and --train-fraction both set the training pixels (a count per "
                                   "class, or a fraction of each class): give one of them")
    tf, vf = _fractions(spec, train_fraction, val_fraction)
    where = f" (the {spec.name} protocol's default)" if spec is not None else " (the default for a scene file)"
    if not 0 < tf < 1:
        raise TrainOptionError(f"train fraction (--train-fraction) must be in (0, 1), got {tf}")
    if not 0 <= vf < 1:
        raise TrainOptionError(f"validation fraction (--val-fraction) must be in [0, 1), got {vf}")
    if per_class is None and tf + vf >= 1:
        raise TrainOptionError(
            f"train fraction {tf}{'' if train_fraction is not None else where} + validation fraction "
            f"{vf}{'' if val_fraction is not None else where} = {tf + vf:g} leaves no test pixels; expected a sum "
            "< 1: lower --train-fraction or --val-fraction")
    return train_fraction, val_fraction, per_class


def check_train_options(*, epochs: int, batch_size: int, lr: float, patience: int | None,
                        max_minutes: float | None, spec: DatasetSpec | None = None, split: str = "random",
                        train_fraction: float | None = None, val_fraction: float | None = None,
                        per_class: int | None = None, seed: int = 0,
                        save_progress_every_s: float = 300.0) -> dict[str, Any]:
    """Raise :class:`TrainOptionError` for an option that cannot give a trained model, before any data is read.

    Returns the numeric options by name as plain ints and floats (a numpy number, ``Fraction`` or ``Decimal``
    converted; a string or a bool is refused): what the run uses and records."""
    o: dict[str, Any] = {name: _whole(f"{name} (--{name.replace('_', '-')})", value, optional) for name, value, optional
                         in (("epochs", epochs, False), ("batch_size", batch_size, False),
                             ("patience", patience, True), ("seed", seed, False))}
    o["lr"] = _real("lr (--lr)", lr)
    o["max_minutes"] = _real("max_minutes (--max-minutes)", max_minutes, optional=True)
    o["save_progress_every_s"] = _real("save_progress_every_s", save_progress_every_s)
    if not 0 <= o["seed"] < 2 ** 63:
        raise TrainOptionError(f"seed (--seed) must be in 0..2**63-1 (what torch's generator takes), got {seed}")
    epochs, batch_size, patience, lr, max_minutes = (o[k] for k in ("epochs", "batch_size", "patience", "lr",
                                                                    "max_minutes"))
    every = o["save_progress_every_s"]
    bounds = [("epochs (--epochs)", epochs, epochs >= 1, ">= 1"),
              ("batch_size (--batch-size)", batch_size, batch_size >= 2,
               ">= 2 (BatchNorm needs two samples per batch: with 1 no optimiser step ever runs)"),
              ("lr (--lr)", lr, lr > 0 and math.isfinite(lr), "> 0"),
              ("patience (--patience)", patience, patience is None or patience >= 1, ">= 1 (or None: no early stop)"),
              ("max_minutes (--max-minutes)", max_minutes, max_minutes is None or max_minutes > 0,
               "> 0 (or None: no budget)"),
              ("save_progress_every_s", every, every >= 0, ">= 0 (0: a progress save at every better epoch)")]
    for name, value, ok, bound in bounds:
        if not ok:
            raise TrainOptionError(f"{name} must be {bound}, got {value}")
    o["train_fraction"], o["val_fraction"], o["per_class"] = _check_split_options(spec, split, train_fraction,
                                                                                  val_fraction, per_class)
    return o


def make_split(scene: Scene, split: str = "random", train_fraction: float | None = None,
               val_fraction: float | None = None, per_class: int | None = None, seed: int = 0,
               patch: int = 7) -> Split:
    """The split the options ask for: blocks, a count per class, or stratified fractions (the seed's fractions;
    its own draws are :func:`ssrn.seed_split.seed_split`)."""
    spec = scene.spec
    train_fraction, val_fraction, per_class = _check_split_options(spec, split, train_fraction, val_fraction,
                                                                   per_class)
    tf, vf = _fractions(spec, train_fraction, val_fraction)
    if split == "blocks":
        return block_split(scene.labels, tf, vf, patch, seed)
    if per_class is not None:
        return per_class_split(scene.labels, per_class, vf, seed)
    return stratified_split(scene.labels, tf, vf, seed)


def _versions() -> dict[str, str]:
    import sys

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}


def _check_scene(scene: Scene) -> None:
    """A ``Scene`` as run_training reads it, checked before training (one built in Python skips the loaders'
    checks): labels whole numbers >= 0 on the scene's grid (float labels holding whole numbers, as GeoTIFF label
    tiles are, read as ints), one name per class up to the highest label, names and palette a model can record.
    A name list the labels outgrew failed with an IndexError, and a bad palette only at the save, after training."""
    from .checkpoint import class_names_problem, palette_ok

    where = scene.source or scene.name
    scene.labels = check_labels(scene.labels, scene.shape[1:], where)
    if isinstance(scene.class_names, np.ndarray):  # (numpy str arrays trained before this check)
        scene.class_names = [str(n) for n in scene.class_names.tolist()]
    if isinstance(scene.palette, np.ndarray) and scene.palette.dtype.kind in "ui":
        scene.palette = scene.palette.tolist()
    elif isinstance(scene.palette, (list, tuple)) and all(  # tuples and numpy integers, as model.json holds them
            isinstance(c, (list, tuple)) and all(is_whole(v) for v in c) for c in scene.palette):
        scene.palette = [[int(v) for v in c] for c in scene.palette]
    names = scene.class_names
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: Scene.class_names must be a list of str, one per class 1..K; found "
                        f"{str(names)[:120]}")
    top = int(scene.labels.max())
    if top == 0:
        raise DataError(f"{where}: the label map has no labelled pixels (all 0); expected classes 1..K on the "
                        "pixels to train and test on (0 = unlabelled)")
    if top > len(names):
        raise DataError(f"{where}: the labels run up to {top} ({int((scene.labels == top).sum())} pixels) but "
                        f"class_names name {len(names)} classes: give one name per class 1..{top}; if {top} marks "
                        "unlabelled or ignored pixels, set them to 0")
    why = class_names_problem(list(names))
    if why:
        raise DataError(f"{where}: Scene.class_names: {why}")
    if not palette_ok(scene.palette, len(names)):
        raise DataError(f"{where}: Scene.palette must be {len(names)} colours (one per class), each [r, g, b] of "
                        f"integers 0-255; found {repr(scene.palette)[:120]}")


def _warn_empty_classes(scene: Scene) -> None:
    """Warn of classes 1..K without a labelled pixel: the model gets an output for each that no pixel trains. Where
    the classes are unnamed, the highest label may be an "ignore" code (10 beside classes 1..6 trained a 10-class
    model without a word)."""
    k = scene.n_classes
    counts = np.bincount(scene.labels.ravel(), minlength=k + 1)[1:k + 1]
    empty = [i + 1 for i in range(k) if counts[i] == 0]
    if not empty:
        return
    def shown(items: list) -> str:
        return str(items) if len(items) <= 12 else f"{str(items[:12])[:-1]}, ...] ({len(items)} in all)"

    if scene.class_names != [f"class {i}" for i in range(1, k + 1)]:
        log.warning("%s: classes %s have no labelled pixel with data in this scene; the model still has an output "
                    "for each of the %d named classes", scene.name, shown([scene.class_names[i - 1] for i in empty]), k)
        return
    apart = counts[k - 1] > 0 and k - 1 in empty  # (10 beside 1..6; not 4 beside 2..3, a crop's classes)
    hint = (f"If {k} ({int(counts[k - 1])} pixels) marks unlabelled or ignored pixels, set them to 0 (or declare {k} "
            "the label raster's nodata value); else number" if apart else "Number")
    log.warning("%s: the labels hold no pixel of classes %s (of 1..%d): the model still has an output for each, "
                "which no pixel trains. %s the classes 1..K without gaps, or name them (--class-names) to keep the "
                "ids", scene.name, shown(empty), k, hint)


def _scene_config(scene: Scene, base: SSRNConfig | None, bands: int, classes: int, patch: int, variant: str,
                  overrides: dict[str, Any]) -> SSRNConfig:
    """The network's config for this scene; a scene the network cannot take (too few bands or classes) is a
    DataError naming the scene, not a config traceback."""
    try:
        if base is not None:
            return base.replace(bands=bands, classes=classes, patch=patch, variant=variant, **overrides)
        return SSRNConfig(bands=bands, classes=classes, patch=patch, variant=variant, **overrides)
    except ValueError as e:
        hint = (": a classifier needs 2 or more classes; label a background or other class too" if classes < 2
                else "")
        raise DataError(f"{scene.source or scene.name}: an SSRN cannot be built for this scene ({bands} bands, "
                        f"{classes} classes): {e}{hint}") from None


def _check_network_options(patch: int, variant: str, overrides: dict[str, Any] | None,
                           base: SSRNConfig | None = None) -> None:
    """The network's own fields (``patch``, ``variant``, ``config_overrides``) checked before the data is read, on
    the dataset's preset where it has one: on the widest scene a network takes, so only what the scene decides (its
    bands and classes) is left for later."""
    fields = {k: v for k, v in dict(overrides or {}).items() if k not in ("bands", "classes")}
    try:
        if base is not None:
            base.replace(bands=MAX_BANDS, classes=2, patch=patch, variant=variant, **fields)
        else:
            SSRNConfig(bands=MAX_BANDS, classes=2, patch=patch, variant=variant, **fields)
    except ValueError as e:  # an InvalidConfig naming the field
        raise TrainOptionError(str(e)) from None


def run_training(dataset: str | os.PathLike | Scene | Callable[[], Scene], out: str | Path,
                 data_dir: str | Path | None = None, epochs: int = 200,
                 batch_size: int = 16, train_fraction: float | None = None, val_fraction: float | None = None,
                 per_class: int | None = None, split: str = "random", seed: int = 0,
                 device: str | torch.device | None = None,
                 variant: str = "ssrn", patch: int = 7, optimizer: str = "rmsprop", lr: float = 3e-4,
                 schedule: str = "constant", patience: int | None = None, command: str | None = None,
                 save_progress_every_s: float = 300.0, max_minutes: float | None = None,
                 config_overrides: dict[str, Any] | None = None, amp: bool = False,
                 class_weight: str | None = None, overwrite: bool = False, labels: str | Path | None = None,
                 class_names: Sequence[str] | None = None
                 ) -> dict[str, Any]:
    """Train on a dataset with the seed's protocol (or the given options) and write a model directory.

    Returns the report dict also stored in ``model.json`` meta. While training, the best model so far is
    written to ``out`` at most every ``save_progress_every_s`` seconds (report ``status: "training"``).
    ``out`` must be new or empty, or (with ``overwrite``) a model directory; the output, the device and the
    options are checked before the data is read, so a training run is never lost to a bad argument.
    ``dataset``: a registered dataset's name, a scene file that holds its labels (.mat beside its _gt.mat, .npz,
    .h5), a :class:`~ssrn.data.Scene`, or a function returning one (called once the options are checked).
    A georeferenced scene with a label raster is read by the engine: ``hsi_engine.train(scene, out, labels=...)``
    (``labels`` and ``class_names`` here only say so). The global random generators it seeds are put back when it
    returns.
    """
    with global_rngs_kept():
        return _run_training(**locals())


def _run_training(dataset: str | os.PathLike, out: str | Path, data_dir: str | Path | None, epochs: int,
                  batch_size: int, train_fraction: float | None, val_fraction: float | None, per_class: int | None,
                  split: str, seed: int, device: str | torch.device | None, variant: str, patch: int, optimizer: str,
                  lr: float, schedule: str, patience: int | None, command: str | None, save_progress_every_s: float,
                  max_minutes: float | None, config_overrides: dict[str, Any] | None, amp: bool,
                  class_weight: str | None, overwrite: bool, labels: str | Path | None,
                  class_names: Sequence[str] | None) -> dict[str, Any]:
    from .checkpoint import check_model_path, check_model_target, save_model

    if labels is not None or class_names is not None:
        raise TrainOptionError("ssrn.run_training reads no label rasters (the engine's readers place them on the "
                               "scene): call hsi_engine.train(dataset, out, labels=..., class_names=..., <the same "
                               "options>), or pass a Scene (hsi_engine.load_labelled_raster(scene, labels))")
    for name, value in (("dataset", dataset), ("out", out), ("data_dir", data_dir)):
        if (name == "dataset" and (isinstance(value, Scene) or callable(value))) or (name == "data_dir"
                                                                                     and value is None):
            continue
        if not is_text_path(value):
            what = "a path (a str or pathlib.Path)" + (", a dataset name or a Scene" if name == "dataset" else
                                                       " or None" if name == "data_dir" else "")
            fix = ("pass the model directory's path" if name == "out" else "decode it first (os.fsdecode(data_dir))"
                   if isinstance(value, bytes) and name == "data_dir" else "pass the directory's path"
                   if name == "data_dir" else "write an array or DataArray to a file first (e.g. "
                   "da.rio.to_raster('scene.tif')) and pass its path, or build a ssrn.data.Scene")
            raise TrainOptionError(f"{name} must be {what}; got {type(value).__name__}: {fix}")
    check_model_path(out)  # ('~/models/in' is refused before a lock beside it is made in a directory named '~')
    amp, overwrite = check_flag("amp", amp, TrainOptionError), check_flag("overwrite", overwrite, TrainOptionError)
    if isinstance(dataset, (str, os.PathLike)):
        dataset = os.fspath(dataset)
    dev = _device(device)
    _check_optimizer_setup()
    if isinstance(dataset, Scene):
        spec = dataset.spec
    else:
        spec = None if callable(dataset) or is_scene_path(dataset) else dataset_spec(dataset)
    o = check_train_options(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                            max_minutes=max_minutes, spec=spec, split=split, train_fraction=train_fraction,
                            val_fraction=val_fraction, per_class=per_class, seed=seed,
                            save_progress_every_s=save_progress_every_s)
    # plain ints and floats from here on: a Fraction or numpy number failed model.json's save after training
    epochs, batch_size, lr, patience, max_minutes, seed = (o[k] for k in ("epochs", "batch_size", "lr", "patience",
                                                                          "max_minutes", "seed"))
    train_fraction, val_fraction, per_class = o["train_fraction"], o["val_fraction"], o["per_class"]
    save_progress_every_s = o["save_progress_every_s"]
    _check_optimizer_options(optimizer, schedule, class_weight)
    _check_network_options(patch, variant, config_overrides, PRESETS.get(spec.name) if spec is not None else None)
    patch = operator.index(patch)  # (an odd whole number: checked with the network's options)
    # one run per model directory: a second run into the same --out (a copied job script) is refused now, not
    # after hours of training when its save finds the first run's model (nor told to pass --overwrite because the
    # first one's progress save is there)
    target = Path(os.path.abspath(out))  # beside a symlink at --out, not its target (the link is replaced, not
    # written through: checkpoint.check_model_target)
    if not target.parent.is_dir():  # nothing to lock beside yet: the output is checked before its parents are made
        check_model_target(out, overwrite)
    with _output_locked(target):
        check_model_target(out, overwrite)
        # a directory that was there (empty) stays: its files are replaced inside it by the later saves too
        stays = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
        amp_used = amp and dev.type == "cuda"
        if amp and not amp_used:
            log.warning("--amp (bfloat16 autocast) applies on CUDA only: training on %s in float32", dev)
        seed_everything(seed, deterministic=False)  # the weights' initialisation; fit sets cuDNN's flags
        scene = dataset if isinstance(dataset, Scene) else dataset() if callable(dataset) else \
            load_dataset(dataset, data_dir)
        if not isinstance(scene, Scene):
            raise TrainOptionError(f"run_training's dataset function returned {type(scene).__name__!r}; expected "
                                   "a ssrn.data.Scene")
        _check_scene(scene)
        if scene.n_classes > 255:
            raise DataError(f"{scene.source}: the labels have {scene.n_classes} classes; class maps are uint8 (0 = "
                            "nodata, classes 1..255), so a model of more than 255 classes could not map a scene: merge "
                            "classes")
        _warn_empty_classes(scene)
        normed, mean, std = standardize_scene(scene)
        sp = make_split(scene, split, train_fraction, val_fraction, per_class, seed, patch)
        if sp.train.size == 0:
            why = (f"the block split's blocks (patch {patch}) are too few for this {scene.labels.shape[0]} x "
                   f"{scene.labels.shape[1]} scene: all went to test" if split == "blocks" else "no class kept a pixel")
            raise DataError(f"{scene.source}: the split leaves no training pixels ({why}); "
                            + ("use --split random, or a larger scene or a smaller --patch" if split == "blocks"
                               else "check the labels"))
        k = scene.n_classes
        bands = normed.shape[0]
        key = scene.spec.name if scene.spec is not None else None
        base = PRESETS.get(key) if key else None
        config = _scene_config(scene, base, bands, k, patch, variant, dict(config_overrides or {}))
        model = SSRN(config)
        train_ds = PatchDataset(normed, scene.labels, sp.train, patch)
        val_ds = PatchDataset(normed, scene.labels, sp.val, patch)
        test_ds = PatchDataset(normed, scene.labels, sp.test, patch)
        counts = sp.counts(scene.labels, scene.n_classes)
        absent = [scene.class_names[i] for i, c in enumerate(counts["train"]) if c == 0]
        split_away = [scene.class_names[i] for i, c in enumerate(counts["train"]) if c == 0
                      and counts["val"][i] + counts["test"][i] > 0]  # (one without a labelled pixel: warned of above)
        untested = [scene.class_names[i] for i in range(k)
                    if counts["test"][i] == 0 and counts["train"][i] + counts["val"][i] > 0]
        unvalidated = [scene.class_names[i] for i in range(k) if len(val_ds) and counts["val"][i] == 0
                       and counts["train"][i] + counts["test"][i] > 0]  # (none drawn: warned of below)
        if not len(val_ds) and sp.description.get("val_fraction", 0) > 0:  # asked for, none drawn
            log.warning("%s: the split drew no validation pixel (validation fraction %g), so the best epoch is chosen "
                        "on the training loss; for a validated choice %s", scene.name, sp.description["val_fraction"],
                        "use a larger scene or a smaller --patch (more, smaller blocks), --split random, or a larger "
                        "--val-fraction" if split == "blocks" else "use a larger --val-fraction or more labels")
        if split_away:  # the model gets an output for it that no training pixel ever raised
            log.warning("%s: classes %s have no training pixel (the split put all their pixels in validation or "
                        "test): the model will hardly ever predict them; use a larger --train-fraction, "
                        "--split random, or more labels", scene.name, split_away)
        if unvalidated:  # a small class at a high --train-fraction: the best epoch is chosen without it
            log.warning("%s: classes %s have no validation pixel (their few pixels are in training or test): the "
                        "best epoch is chosen on the other classes' validation loss; use a larger --val-fraction "
                        "or more labels", scene.name, unvalidated)
        if untested:  # its few pixels all went to training: AA and per-class accuracy leave it out
            log.warning("%s: classes %s have no test pixel (all their pixels are in training or validation): AA "
                        "averages the other classes and reports no accuracy for them", scene.name, untested)
        capped = sp.description.get("capped") or {}
        if capped:  # --per-class N on a class of fewer than 2N pixels: half of it trains, the rest tests
            log.warning("%s: per_class (--per-class) %s: classes %s have fewer than %d pixels: each trains on half "
                        "of its pixels (%s)", scene.name, sp.description["per_class"],
                        [scene.class_names[c - 1] for c in capped], 2 * sp.description["per_class"],
                        ", ".join(f"{scene.class_names[c - 1]} {n}" for c, n in capped.items()))
        split_desc = {**sp.description, "n_train": len(train_ds), "n_val": len(val_ds), "n_test": len(test_ds),
                      "classes_absent_from_train": absent, "classes_absent_from_val": unvalidated,
                      "classes_absent_from_test": untested}
        split_desc.pop("block_assignment", None)
        log.info("%s: scene %s from %s; split %s; %d parameters; device %s", scene.name, scene.shape, scene.source,
                 split_desc, count_parameters(model), dev)
        meta: dict[str, Any] = {
            "dataset": scene.name, "source": scene.source, "mean": mean.tolist(), "std": std.tolist(),
            "normalisation": ("per-band (x - mean) / std over the whole scene (population std); zero padding of "
                              "patch//2 at the border after normalisation") if scene.nodata is None else
                             ("per-band (x - mean) / std over the scene's pixels with data (population std); nodata "
                              "pixels and bad bands 0 after normalisation, as the engine reads them; zero padding of "
                              "patch//2 at the border"),
            "class_names": scene.class_names, "palette": scene.palette, "command": command,
            "split": {**sp.to_meta(), "counts": counts},
        }
        if scene.grid is not None:  # the split's pixel indices, placed on the ground
            meta["grid"] = scene.grid
        bad_bands = set() if scene.nodata_bands is None else set(range(bands)) - {int(b) for b in scene.nodata_bands}
        constant = sorted(set(np.flatnonzero(~normed.reshape(bands, -1).any(axis=1)).tolist()) - bad_bands)
        if constant:  # trained as 0 ((c - c) / 1): read as 0 when classifying too, whatever another scene holds
            log.warning("%s: bands %s hold one value in every pixel with data: they carry nothing to learn, and are "
                        "recorded as bad bands (read as 0 when classifying, as in training), so a scene with data "
                        "in them is not read raw", scene.name, constant)
        if len(bad_bands | set(constant)) == bands:
            raise DataError(f"{scene.source or scene.name}: no band varies over the pixels with data (every band "
                            "is a bad band or holds one value): there is nothing to learn; check the scene (a fill, "
                            "a nodata value not declared, the wrong file)")
        if scene.nodata_bands is not None or constant:  # a scene classified later without its bbl is still not
            meta["bad_bands"] = sorted(bad_bands | set(constant))  # all nodata
        if scene.wavelengths is None:
            log.warning("%s: the scene has no band wavelengths (none in its file; a mosaic also loses them), so the "
                        "model records none and cannot check a scene's bands against its own when it classifies",
                        scene.name)
        else:
            meta["wavelengths"] = scene.wavelengths
            meta["wavelength_unit"] = "nm"
        declared = _declared_scaling(scene.cube)
        if declared is not None:  # the band scale/offset its values were stored with: classify checks a scene's
            meta["scales"], meta["offsets"] = (v.tolist() for v in declared)
        base_report = {"dataset": scene.name, "device": _device_name(dev), "seed": seed, "split": split_desc,
                       "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "epochs": epochs,
                       "schedule": schedule, "patience": patience, "max_minutes": max_minutes, "amp": amp_used,
                       "class_weight": class_weight, "variant": variant, "patch": patch,
                       "parameters": count_parameters(model), "versions": _versions(), "command": command}
        last_save = [time.monotonic()]
        written = [False]
        keep = overwrite and _finished_model(out)  # an --overwrite run keeps the old model until it has a new one
        if keep:
            log.info("%s holds a finished model: progress is not saved over it; it is replaced when this run ends", out)

        def save(m: SSRN, meta_: dict[str, Any]) -> None:
            """Write ``out``; once this run has written it, later saves replace its own model (inside the directory
            where that was there before the run)."""
            save_model(m, out, meta=meta_, overwrite=overwrite or written[0], in_place=stays)
            written[0] = True

        def on_improve(m: SSRN, res: TrainResult) -> None:
            if keep or time.monotonic() - last_save[0] < save_progress_every_s:
                return
            last_save[0] = time.monotonic()
            rep = {**base_report, "status": "training", "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
                   "best_val_loss": res.best_val_loss, "selected_on": res.selected_on,
                   "train_time_s": res.train_time_s}
            # (not SSRN(config): its initial weights drew from the generator the training's dropout draws from)
            snap = filled_model(config, {k: v.detach().cpu().clone() for k, v in m.state_dict().items()})
            from .checkpoint import CheckpointError

            try:
                save(snap, {**meta, "report": rep})
            except (CheckpointError, OSError) as e:  # (a full disk): the training in memory is not lost for it
                log.warning("could not save progress to %s (%s): training goes on, %s", out, first_line(e),
                            "the last progress save there is kept" if written[0] else "and saves at its end")
                return
            log.info("saved progress to %s (epoch %d)", out, res.epochs_run)

        trainer = Trainer(model, optimizer=optimizer, lr=lr, batch_size=batch_size, epochs=epochs, schedule=schedule,
                          patience=patience, device=dev, seed=seed, on_improve=on_improve, amp=amp,
                          class_weight=class_weight,
                          time_budget_s=None if max_minutes is None else 60.0 * max_minutes)
        res = trainer.fit(train_ds, val_ds)
        t0 = time.perf_counter()
        pred, test_loss = predict(trainer.model, test_ds, device=dev, amp=trainer.amp)
        test_time = time.perf_counter() - t0
        true = test_ds.labels.numpy()
        rep = classification_report(true, pred, k, scene.class_names)
        kappa = rep["kappa"] if math.isfinite(rep["kappa"]) else None  # undefined: null in JSON, not NaN
        report = {**base_report, "status": "done", "oa": rep["oa"], "aa": rep["aa"], "kappa": kappa,
                  "per_class_accuracy": rep["per_class_accuracy"], "support": rep["support"],
                  "confusion_matrix": rep["confusion_matrix"],
                  "confusion_matrix_layout": "rows: true class 1..K; columns: predicted class 1..K (class_names' "
                                             "order)",
                  "test_loss": test_loss,
                  "train_time_s": res.train_time_s, "test_time_s": test_time, "epochs_run": res.epochs_run,
                  "best_epoch": res.best_epoch, "best_val_loss": res.best_val_loss, "selected_on": res.selected_on,
                  "selection_class_weight": res.selection_class_weight, "stopped_early": res.stopped_early,
                  "stopped_by_time_budget": res.stopped_by_time_budget, "diverged_epoch": res.diverged_epoch,
                  "epoch_time_s_mean": float(np.mean([h["time_s"] for h in res.history])) if res.history else None,
                  "history": [{k2: round(v, 5) if isinstance(v, float) else v for k2, v in h.items()}
                              for h in res.history],
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        meta["report"] = report
        trainer.model.meta = meta
        save(trainer.model.cpu(), meta)
        log.info("%s: OA %.4f  AA %.4f  %s  (%d epochs, best %d, train %.0fs, test %.1fs) -> %s", scene.name,
                 rep["oa"], rep["aa"], _kappa_text(kappa), res.epochs_run, res.best_epoch, res.train_time_s, test_time,
                 out)
        return report


@contextlib.contextmanager
def _output_locked(target: Path) -> Iterator[None]:
    """Hold the lock of the model directory ``target`` (none for the file-system root, which the check refuses, or
    where none can be made beside it: a read-only directory), creating its parent directories first, and removing
    those left empty when the run fails. Once the lock is held, what killed saves into it left is removed."""
    from .checkpoint import CheckpointError, sweep_save_leftovers
    from .lock import file_lock

    if not target.name:
        yield
        return
    made = next((d for d in reversed(target.parents) if not d.exists()), None)  # the first directory to make
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the directory {target.parent} for the model ({e.strerror or e}); "
                              "choose an output directory you can write to") from None

    def sweep() -> None:
        swept = sweep_save_leftovers(target)
        if swept:
            log.info("removed what a killed save into %s left: %s", target, ", ".join(swept))

    try:
        with file_lock(target, fix="wait for it to finish, or train into another --out", required=False,
                       on_locked=sweep):
            yield
    except BaseException:
        for d in [target.parent, *target.parent.parents] if made is not None else []:
            if not d.is_relative_to(made):
                break
            with contextlib.suppress(OSError):
                d.rmdir()  # (fails where a file is left in it)
        raise


def _kappa_text(kappa: float | None) -> str:
    """``kappa 0.9967`` for a log line, or why there is none: kappa is undefined (NaN, null in a report) when the
    test set holds one class and every prediction is that class (chance agreement 1)."""
    if kappa is None or not math.isfinite(kappa):
        return "kappa n/a (one class in the test set)"
    return f"kappa {kappa:.4f}"


def _finished_model(out: Any) -> bool:
    """Whether ``out`` holds a model whose training finished (not a progress save), which a Ctrl-C after a
    progress save over it would have lost."""
    from .checkpoint import CheckpointError, is_progress_save, read_model_json

    try:
        doc = read_model_json(out)
    except (CheckpointError, OSError):
        return False
    return not is_progress_save(doc.get("meta"))
