"""``eic train``: fine-tune a classifier with stratified k-fold cross-validation.

Each split trains on k-2 folds, stops early on the validation fold's loss and is scored on its test
fold. The loop is two plain functions, ``train_one_epoch()`` and ``evaluate()``; the model returns
logits and the loss is cross-entropy (softmax only when predicting). On CUDA it uses autocast (bf16
where supported), channels_last, cudnn.benchmark, pinned memory and non-blocking copies; under
``torchrun`` it trains with DistributedDataParallel and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from .calibration import Calibration, calibrate_run, fit_temperature
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, public_dict
from .data import (
    UNREADABLE,
    DecodedCache,
    ImageDataset,
    ImageSet,
    Split,
    check_trainable,
    fold_groups,
    load_image,
    make_loader,
    make_splits,
    sample,
    scan_images,
    to_tensor,
)
from .errors import CalibrationError, DatasetError
from .explain import TILE, figure, heatmaps, save_figure
from .heads import train_heads
from .metrics import classification_metrics, mean_std
from .modelcard import write_model_card
from .models import build_model, get_arch, safe_load
from .multilabel import (
    MaskedBCEWithLogits,
    check_multilabel_trainable,
    iterative_folds,
    multilabel_metrics,
    positive_weights,
    tune_thresholds,
)
from .naming import record_id_of
from .runtime import Dist, autocast_dtype, default_workers, distributed, seed_everything
from .tables import atomic_path, write_json
from .tasks import task_for

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "accuracy", "precision", "recall", "f1",
                   "learning_rate", "seconds", "images_per_second"]
ML_HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "exact_match", "micro_f1", "macro_f1",
                      "mean_average_precision", "learning_rate", "seconds", "images_per_second"]
SHOWN = {"single-label": ("accuracy", "precision", "recall", "f1"),
         "multi-label": ("exact_match", "micro_f1", "macro_f1", "mean_average_precision")}
log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    index: int
    metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    best_val_loss: float


@dataclass
class TrainReport:
    output_dir: Path
    classes: list[str]
    counts: dict[str, int]
    splits: list[SplitResult] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: int = 0
    calibration: Calibration | None = None
    calibration_note: str = ""  # why there is no calibration


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class Evaluation:
    loss: float
    truth: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    logits: np.ndarray | None = None  # exact, for calibration (probabilities near 1 lose digits)


# ---------------------------------------------------------------------------------------------
# The loop


def train_one_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, dtype: torch.dtype | None = None,
                    scaler: torch.amp.GradScaler | None = None,
                    on_batch: Callable[[float, int], None] | None = None) -> EpochStats:
    model.train()
    started = time.perf_counter()
    total_loss, seen = 0.0, 0
    for inputs, targets, _ in loader:
        batch = int(readable_rows(targets).sum())
        inputs, targets = _to_device(inputs, targets, device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
            # A batch of unreadable images only: a zero loss keeps DDP ranks in step without learning noise.
            loss = criterion(logits, targets) if batch else logits.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * batch
        seen += batch
        if on_batch:
            on_batch(loss.item(), batch)
    return EpochStats(total_loss / max(seen, 1), seen, time.perf_counter() - started)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module | None,
             device: torch.device, dtype: torch.dtype | None = None) -> Evaluation:
    """Loss, truths and probabilities (softmax; sigmoid for multi-label targets) of a whole loader."""
    model.eval()
    total_loss, seen = 0.0, 0
    truths, probs, indices, raw = [], [], [], []
    for inputs, targets, index in loader:
        inputs, targets = _to_device(inputs, targets, device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
        logits = logits.float()
        counted = int(readable_rows(targets).sum())
        if criterion is not None and counted:
            total_loss += criterion(logits, targets).item() * counted
        seen += counted
        truths.append(targets.cpu())
        multilabel = targets.ndim == 2
        probs.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu())
        raw.append(logits.cpu())
        indices.append(index)
    truth, prob, index = torch.cat(truths).numpy(), torch.cat(probs).numpy(), torch.cat(indices).numpy()
    readable = truth[:, 0] >= 0 if truth.ndim == 2 else truth != UNREADABLE
    return Evaluation(total_loss / max(seen, 1), truth[readable], prob[readable], index[readable],
                      torch.cat(raw).numpy()[readable])


def readable_rows(targets: torch.Tensor) -> torch.Tensor:
    """Rows of a batch whose image could be decoded (single-label: label >= 0; multi-label: row >= 0)."""
    return targets[:, 0] >= 0 if targets.ndim == 2 else targets != UNREADABLE


def _to_device(inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    if device.type == "cuda":
        inputs = inputs.to(device, non_blocking=True, memory_format=torch.channels_last)
        return inputs, targets.to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so that a balanced set gets weight 1 everywhere: N / (C * n_c)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# The protocol


def train(config: TrainConfig) -> TrainReport:
    """Train every split of ``config`` (or split 0 alone) and write the run folder."""
    get_arch(config.arch)
    with distributed(config.device) as (device, world), _torch_settings_restored():
        return _train(config, device, world)


@contextlib.contextmanager
def _torch_settings_restored() -> Iterator[None]:
    """Training tunes cudnn and the thread count for itself; the caller gets its own settings back."""
    benchmark, threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)


def _train(config: TrainConfig, device: torch.device, world: Dist) -> TrainReport:
    multi = config.mode == "multi-label"
    images = scan_images(config.data_dir, config.mode, config.labels)
    check = check_multilabel_trainable if multi else check_trainable
    check(images, config.data_dir, config.folds)
    images = sample(images, config.sample, config.seed)
    check(images, config.data_dir, config.folds)
    out = config.output_dir
    if world.main:
        _check_run_folder(out, config.resume)
        _check_resumed_run(config, images)
    groups = fold_groups(images, config.group_by_provider, config.duplicate_groups)
    splits = (make_multilabel_splits(images.labels, config.folds, config.seed, groups) if multi
              else make_splits(images.labels, config.folds, config.seed, groups))
    chosen = range(len(splits)) if config.crossvalidation else range(1)
    check_splits(images, splits, chosen, config.group_by_provider or config.duplicate_groups is not None)
    report = TrainReport(out, images.classes, images.counts(), unreadable=len(images.unreadable))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif world.active:
        torch.set_num_threads(max(1, torch.get_num_threads() // world.world))
    if config.method != "finetune":
        if world.main:  # a head per split on embeddings: seconds, no need to spread it over processes
            report.splits = train_heads(config, images, splits, chosen, device)
    else:
        # One cache for the whole run: an image is decoded in the first split that reads it, never again.
        cache = DecodedCache.for_images(len(images), config.input_size, config.cache_mb,
                                        default_workers(device, config.num_workers))
        for i in chosen:
            report.splits.append(_run_split(config, images, splits[i], i, device, world, cache))
    if world.main:
        names = report.splits[0].metrics.keys()
        report.summary = {m: mean_std([s.metrics[m] for s in report.splits]) for m in names}
        write_json(out / "summary.json", {"classes": images.classes, "counts": report.counts,
                                          "splits": len(report.splits), "metrics": report.summary})
        _calibrate(config, report)
        write_model_card(out)
    return report


RESUME_KEYS = ("data_dir", "labels", "mode", "method", "arch", "weights", "input_size", "folds", "seed", "sample",
               "group_by_provider", "duplicate_groups", "embeddings")


def _check_resumed_run(config: TrainConfig, images: ImageSet) -> None:
    """A resumed run must be the same run: same data, model and folds, or split 0 would be reused for another."""
    if not config.resume or not (config.output_dir / "split_0" / "config.json").is_file():
        return
    before = json.loads((config.output_dir / "split_0" / "config.json").read_text(encoding="utf-8"))
    now = public_dict(config)
    defaults = {k: TrainConfig.model_fields[k].default for k in RESUME_KEYS}
    differ = [k for k in RESUME_KEYS if _same(k, before.get(k, defaults[k])) != _same(k, now.get(k))]
    if differ:
        said = ", ".join(f"{k} {before.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise DatasetError(f"cannot resume {config.output_dir}: it was trained with other settings ({said}); "
                           "resume with the same settings, or choose another `output_dir`")
    index = config.output_dir / "split_0" / "class_index.json"
    classes = list(json.loads(index.read_text(encoding="utf-8"))) if index.is_file() else images.classes
    if classes != images.classes:
        raise DatasetError(f"cannot resume {config.output_dir}: its classes were {', '.join(classes)}, the data "
                           f"now has {', '.join(images.classes)}")


def _same(key: str, value: Any) -> Any:
    """Paths compare by where they point, not how they were written (a weights file too)."""
    is_path = key in ("data_dir", "labels", "embeddings", "duplicate_groups") or (
        key == "weights" and value not in ("imagenet", "none"))
    return str(Path(value).resolve()) if is_path and value else value


def check_splits(images: ImageSet, splits: list[Split], chosen: range, grouped: bool) -> None:
    """Every class in the training, validation and test part of every split, before any training: a class
    missing from a training part gets an infinite weight and a run that dies hours later."""
    for i in chosen:
        for part_name, part in (("training", splits[i].train), ("validation", splits[i].val),
                                ("test", splits[i].test)):
            labels = images.labels[part]
            present = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(images.classes))
            missing = [c for c, n in zip(images.classes, present, strict=True) if n == 0]
            if missing:
                raise DatasetError(_missing_message(images, missing[0], i, part_name, grouped))


def _missing_message(images: ImageSet, name: str, split: int, part: str, grouped: bool) -> str:
    c = images.classes.index(name)
    members = images.labels[:, c] > 0 if images.labels.ndim == 2 else images.labels == c
    providers = Counter(g for g, m in zip(images.groups(), members, strict=True) if m)
    shown = ", ".join(f"{p} ({n})" for p, n in providers.most_common(3)) + (", ..." if len(providers) > 3 else "")
    advice = ("folds are grouped, and its images come from few groups: drop `group_by_provider` (or "
              "`duplicate_groups`), or add images of it from other providers" if grouped
              else "add images of it, or lower `folds`")
    return (f"split {split}'s {part} part has no image of class '{name}' ({int(members.sum())} images from "
            f"{len(providers)} provider(s): {shown}); {advice}")


def _calibrate(config: TrainConfig, report: TrainReport) -> None:
    """Calibrate a cross-validated run from its out-of-fold predictions; a run that cannot be is still a run."""
    try:
        report.calibration = calibrate_run(config.output_dir, config.precision)
    except CalibrationError as exc:
        report.calibration_note = str(exc)


def make_multilabel_splits(targets: np.ndarray, folds: int, seed: int, groups: list[str] | None = None
                           ) -> list[Split]:
    """As ``make_splits``, with iterative stratification so every part keeps each label's frequency."""
    outer = iterative_folds(targets, folds, seed, groups)
    splits = []
    for i, test in enumerate(outer):
        rest = np.sort(np.concatenate([f for j, f in enumerate(outer) if j != i]))
        inner = iterative_folds(targets[rest], folds - 1, seed + i, [groups[r] for r in rest] if groups else None)
        val = rest[inner[0]]
        splits.append(Split(np.setdiff1d(rest, val), np.sort(val), test))
    return splits


def _check_run_folder(out: Path, resume: bool) -> None:
    # Only training state counts: a run that failed before its first epoch (weights offline, say) left
    # split_0/config.json alone, and the natural retry must not be refused for it.
    trained = any(p.name in ("model.pt", "last.pt", "metrics.json") for p in out.glob("split_*/*"))
    if not resume and trained:
        raise DatasetError(f"{out} already holds a training run: pass `resume` to continue it, "
                           "or choose another `output_dir`")
    out.mkdir(parents=True, exist_ok=True)


def _run_split(config: TrainConfig, images: ImageSet, split: Split, index: int, device: torch.device,
               world: Dist, cache: DecodedCache | None) -> SplitResult:
    split_dir = config.output_dir / f"split_{index}"
    if config.resume and (split_dir / "metrics.json").exists():
        done = json.loads((split_dir / "metrics.json").read_text())
        if world.main:
            log.info("split %d: finished earlier, skipped", index)
        return SplitResult(index, done["test"], done["epochs_run"], done["best_epoch"], done["best_val_loss"])
    if world.main:
        split_dir.mkdir(parents=True, exist_ok=True)
        write_json(split_dir / "config.json", public_dict(config))
        write_json(split_dir / "class_index.json", {name: i for i, name in enumerate(images.classes)})
    seed_everything(config.seed + index)
    arch = get_arch(config.arch)
    n_classes = len(images.classes)
    model = build_model(config.arch, n_classes, config.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = _SplitState()
    if config.resume and (split_dir / "last.pt").exists():
        state = _SplitState.restore(split_dir / "last.pt", model, optimizer)
        if world.main:
            log.info("split %d: resuming after epoch %d", index, state.epoch)
    net = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world.active else model
    multi = config.mode == "multi-label"
    if multi:
        # Class weights as positive weights: negatives / positives of each label in the training part.
        pos_weight = positive_weights(images.labels[split.train]).to(device) if config.weighted_loss else None
        criterion: nn.Module = MaskedBCEWithLogits(pos_weight)
    else:
        weights = class_weights(images.labels[split.train], n_classes).to(device) if config.weighted_loss else None
        criterion = nn.CrossEntropyLoss(weight=weights, ignore_index=UNREADABLE)
    dtype = autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loaders = _loaders(config, images, split, arch.mean, arch.std, device, world, index, cache)
    meta = dict(arch=config.arch, class_names=images.classes, input_size=config.input_size, mean=list(arch.mean),
                std=list(arch.std), mode=config.mode, config=public_dict(config), split=index)

    with _progress(config.quiet or not world.main) as progress:
        for epoch in range(state.epoch, config.epochs):
            if state.bad_epochs >= config.patience:
                break
            if isinstance(loaders["train"].sampler, torch.utils.data.DistributedSampler):
                loaders["train"].sampler.set_epoch(epoch)
            task = progress.add_task(f"split {index} epoch {epoch + 1}", total=len(loaders["train"]), loss=math.nan,
                                     rate=0.0)
            counted = {"images": 0, "clock": time.perf_counter()}

            def tick(loss: float, batch: int, task: Any = task, counted: dict[str, float] = counted) -> None:
                counted["images"] += batch * world.world
                elapsed = time.perf_counter() - counted["clock"]
                progress.update(task, advance=1, loss=loss, rate=counted["images"] / elapsed if elapsed else 0.0)

            stats = train_one_epoch(net, loaders["train"], criterion, optimizer, device, dtype, scaler, tick)
            progress.remove_task(task)
            val = evaluate(model, loaders["val"], criterion, device, dtype)
            val_loss = _agreed(val.loss, device, world)  # every rank must take the same early-stopping turn
            scores = multilabel_metrics(val.truth, val.probs) if multi else classification_metrics(val.truth, val.probs)
            row = {"epoch": epoch + 1, "train_loss": stats.loss, "val_loss": val_loss, **{
                k: scores[k] for k in SHOWN[config.mode]},
                "learning_rate": optimizer.param_groups[0]["lr"], "seconds": stats.seconds,
                "images_per_second": stats.images_per_second * world.world}
            state.history.append(row)
            state.epoch = epoch + 1
            improved = val_loss < state.best_loss
            if improved:
                state.best_loss, state.best_epoch, state.bad_epochs = val_loss, epoch + 1, 0
            else:
                state.bad_epochs += 1
            if world.main:
                if improved:
                    save_checkpoint(split_dir / "model.pt", model, epoch=epoch + 1, best_val_loss=val_loss, **meta)
                state.save(split_dir / "last.pt", model, optimizer)
                _write_history(split_dir / "history.csv", state.history,
                               ML_HISTORY_COLUMNS if multi else HISTORY_COLUMNS)
                if not config.quiet:
                    shown = ", ".join(f"{k.replace('_', ' ')} {scores[k]:.3f}" for k in SHOWN[config.mode][::3])
                    log.info("split %d epoch %d/%d: train loss %.4f, val loss %.4f, %s, %.0f images/s%s", index,
                             epoch + 1, config.epochs, stats.loss, val_loss, shown, row["images_per_second"],
                             " *" if improved else "")
            if state.bad_epochs >= config.patience:
                if world.main and not config.quiet:
                    log.info("split %d: early stop, no better validation loss for %d epochs", index, config.patience)
                break

    result = SplitResult(index, {}, state.epoch, state.best_epoch, state.best_loss)
    if world.main and not (split_dir / "model.pt").exists():
        # The validation loss was never finite (nan or inf every epoch): keep the last model, say so.
        log.warning("split %d: the validation loss was never finite; its last model is kept and its scores "
                    "are not to be trusted (check the data and the learning rate)", index)
        save_checkpoint(split_dir / "model.pt", model, epoch=state.epoch, best_val_loss=math.inf,
                        val_loss_never_finite=True, **meta)
    if world.main:
        result.metrics = _finish_split(config, images, split, split_dir, loaders, device, dtype, state)
    if world.active:
        dist.barrier()
        result.metrics = _broadcast(result.metrics)
    return result


class _SplitState:
    """What a split needs to carry on after an interruption (stored in last.pt)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []

    def save(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        with atomic_path(path) as tmp:
            torch.save({"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                        "epoch": self.epoch, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                        "bad_epochs": self.bad_epochs, "history": self.history,
                        "rng": torch.get_rng_state()}, tmp)

    @classmethod
    def restore(cls, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> _SplitState:
        saved = safe_load(path)
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer_state"])
        torch.set_rng_state(saved["rng"])
        state = cls()
        state.epoch, state.best_loss = saved["epoch"], saved["best_loss"]
        state.best_epoch, state.bad_epochs, state.history = saved["best_epoch"], saved["bad_epochs"], saved["history"]
        return state


def _loaders(config: TrainConfig, images: ImageSet, split: Split, mean: Any, std: Any, device: torch.device,
             world: Dist, index: int, cache: DecodedCache | None) -> dict[str, torch.utils.data.DataLoader]:
    workers = default_workers(device, config.num_workers)
    pin = device.type == "cuda"
    seed = config.seed + 1000 * index
    size = config.input_size

    def dataset(part: np.ndarray, hflip: float = 0.0, vflip: float = 0.0) -> ImageDataset:
        return ImageDataset(images.subset(part), size, mean, std, hflip, vflip, cache=cache, cache_rows=part)

    train_set = dataset(split.train, config.hflip, config.vflip)
    sampler = (torch.utils.data.DistributedSampler(train_set, world.world, world.rank, shuffle=True, seed=seed)
               if world.active else None)
    common = dict(batch_size=config.batch_size, num_workers=workers, seed=seed, pin_memory=pin)
    return {
        # A last batch of one image breaks batch norm; dropping the remainder costs nothing (reshuffled).
        "train": make_loader(train_set, shuffle=True, sampler=sampler,
                             drop_last=len(train_set) > config.batch_size * world.world, **common),
        "val": make_loader(dataset(split.val), shuffle=False, **common),
        "test": make_loader(dataset(split.test), shuffle=False, **common),
    }


def _finish_split(config: TrainConfig, images: ImageSet, split: Split, split_dir: Path,
                  loaders: dict[str, torch.utils.data.DataLoader], device: torch.device, dtype: torch.dtype | None,
                  state: _SplitState) -> dict[str, float]:
    """Score the best checkpoint on the test fold; write metrics, predictions, curves and heatmaps.

    Multi-label: per-label thresholds are first tuned on the validation part and stored in the checkpoint.
    """
    best = load_checkpoint(split_dir / "model.pt")
    model = build_model(config.arch, len(images.classes), "none")
    model.load_state_dict(best["model_state"])
    model.to(device)
    test = evaluate(model, loaders["test"], None, device, dtype)
    val = evaluate(model, loaders["val"], None, device, dtype)
    test_images = images.subset(split.test)
    scores, extra = score_split(config.mode, images, split, split_dir, test, val)
    # A resumed split may hold a temperature already: the new values win, never a duplicate keyword.
    save_checkpoint(split_dir / "model.pt", model, **{**{k: v for k, v in best.items()
                                                         if k not in ("model_state", "format")}, **extra})
    write_split_metrics(split_dir, scores, split, state.epoch, state.best_epoch, state.best_loss,
                        extra["temperature"])
    plot_curves(state.history, split_dir / "curves.png", state.best_epoch)
    if config.gradcam_images:
        _gradcam(model, config, test_images, test, images.classes, split_dir / "gradcam", device)
    (split_dir / "last.pt").unlink(missing_ok=True)  # the split is finished; model.pt is what stays
    return scores


def score_split(mode: str, images: ImageSet, split: Split, split_dir: Path, test: Evaluation, val: Evaluation
                ) -> tuple[dict[str, float], dict[str, Any]]:
    """Test metrics and ``test_predictions.csv`` of a finished split, and what its checkpoint gains from the
    validation part: the temperature that makes its probabilities honest (multi-label: tuned thresholds)."""
    test_images = images.subset(split.test)
    task = task_for(mode)
    extra: dict[str, Any] = {"temperature": fit_temperature(task, val.logits, val.truth)}
    if mode == "multi-label":
        thresholds = tune_thresholds(val.truth, val.probs)
        extra["thresholds"] = [float(t) for t in thresholds]
        _write_multilabel_predictions(split_dir / "test_predictions.csv", test, test_images, images.classes,
                                      thresholds)
        return multilabel_metrics(test.truth, test.probs, thresholds), extra
    with (split_dir / "test_predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "truth", "prediction", "confidence", "probabilities", "logits"])
        for i, truth, prob, logit in zip(test.indices, test.truth, test.probs, test.logits, strict=True):
            writer.writerow([str(test_images.paths[i]), images.classes[truth], images.classes[int(prob.argmax())],
                             f"{prob.max():.6f}", _by_class(images.classes, prob, 6),
                             _by_class(images.classes, logit, 5)])
    return classification_metrics(test.truth, test.probs), extra


def _by_class(classes: list[str], values: np.ndarray, digits: int) -> str:
    return json.dumps({c: round(float(v), digits) for c, v in zip(classes, values, strict=True)})


def write_split_metrics(split_dir: Path, scores: dict[str, float], split: Split, epochs_run: int, best_epoch: int,
                        best_val_loss: float, temperature: float) -> None:
    write_json(split_dir / "metrics.json", {"test": scores, "test_images": len(split.test),
                                             "train_images": len(split.train), "val_images": len(split.val),
                                             "epochs_run": epochs_run, "best_epoch": best_epoch,
                                             "best_val_loss": best_val_loss, "temperature": temperature})


def _write_multilabel_predictions(path: Path, test: Evaluation, test_images: ImageSet, classes: list[str],
                                  thresholds: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "truth", "prediction", "probabilities", "logits"])
        for i, truth, prob, logit in zip(test.indices, test.truth, test.probs, test.logits, strict=True):
            writer.writerow([str(test_images.paths[i]), " ".join(c for c, t in zip(classes, truth, strict=True) if t),
                             " ".join(c for c, p, t in zip(classes, prob, thresholds, strict=True) if p >= t),
                             _by_class(classes, prob, 6), _by_class(classes, logit, 5)])


def _gradcam(model: nn.Module, config: TrainConfig, test_images: ImageSet, test: Evaluation, classes: list[str],
             folder: Path, device: torch.device) -> None:
    """Heatmaps of test images spread over the fold, for their predicted class; names carry truth and
    prediction, as the pilot's did."""
    folder.mkdir(exist_ok=True)
    arch = get_arch(config.arch)
    by_image = np.argsort(test.indices)
    spread = np.linspace(0, len(by_image) - 1, min(config.gradcam_images, len(by_image))).astype(int)
    order = by_image[np.unique(spread)]
    paths = [test_images.paths[test.indices[k]] for k in order]
    pictures = [load_image(p, config.input_size) for p in paths]
    batch = torch.stack([to_tensor(p, arch.mean, arch.std) for p in pictures]).to(device)
    predicted = [int(test.probs[k].argmax()) for k in order]
    maps = heatmaps(model.float(), arch.cam_layer(model), batch, predicted)
    for n, (k, path, heat) in enumerate(zip(order, paths, maps, strict=True)):
        truth = ("+".join(c for c, t in zip(classes, test.truth[k], strict=True) if t) or "none"
                 if test.truth.ndim == 2 else classes[test.truth[k]])
        pred, confidence = classes[predicted[n]], float(test.probs[k].max())
        name = f"{n:03d}_true-{truth}_pred-{pred}_{confidence:.2f}.jpg"
        title = f"{record_id_of(path.name) or path.name} · true {truth}"
        save_figure(figure(load_image(path, TILE), [heat], [f"predicted {pred} {confidence:.2f}"], title),
                    folder / name, title)


def _agreed(value: float, device: torch.device, world: Dist) -> float:
    if not world.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def _broadcast(metrics: dict[str, float]) -> dict[str, float]:
    box: list[Any] = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _write_history(path: Path, history: list[dict[str, float]], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def plot_curves(history: list[dict[str, float]], path: Path, best_epoch: int = 0) -> None:
    """Loss and validation scores per (whole) epoch, the kept epoch marked. matplotlib's object API: no
    global backend switch, nothing left open."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    chart = Figure(figsize=(10, 4))
    left, right = chart.subplots(1, 2)
    left.plot(epochs, [r["train_loss"] for r in history], label="train")
    left.plot(epochs, [r["val_loss"] for r in history], label="validation")
    left.set(title="loss", xlabel="epoch")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    if best_epoch:
        kept = next(r for r in history if r["epoch"] == best_epoch)
        left.plot([best_epoch], [kept["val_loss"]], marker="o", color="black", linestyle="none",
                  label=f"kept: epoch {best_epoch}")
    left.legend()
    for key, label in (("accuracy", "accuracy"), ("f1", "macro F1"), ("micro_f1", "micro F1"),
                       ("macro_f1", "macro F1"), ("mean_average_precision", "mAP")):
        if key in history[0]:
            right.plot(epochs, [r[key] for r in history], label=label)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend()
    chart.tight_layout()
    chart.savefig(path, dpi=100)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} images/s"),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=quiet, transient=True)
