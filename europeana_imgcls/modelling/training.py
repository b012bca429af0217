"""``eic train``: fine-tune a classifier with stratified k-fold cross-validation.

Each split trains on k-2 folds, stops early on the validation fold's loss and is scored on its test
fold. ``fit()`` is the loop: ``train_one_epoch()`` and ``evaluate_loader()`` per epoch, a history row each, and
a callback that the protocol uses to save checkpoints and log; everything that differs between
single- and multi-label (loss, scores, thresholds) comes from the run's ``Task``. On CUDA it uses
autocast (bf16 where supported), channels_last, cudnn.benchmark, pinned memory and non-blocking copies of
uint8 batches that are normalised on the GPU; under ``torchrun`` it trains with DistributedDataParallel and
only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import TaskID
from torch import nn

from ..core.config import TrainConfig, public_dict
from ..core.errors import CalibrationError, DatasetError, ModelError
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, claim
from ..core.progress import RATE, Rate, progress_bar
from ..core.recognise import peek_json
from ..core.tables import atomic_path, write_csv, write_json
from ..datasets.decoding import decode_device
from ..datasets.folders import (
    DecodedCache,
    ImageDataset,
    LoaderSettings,
    ModelInput,
    fold_groups,
    load_image,
    make_loader,
    pixels_of,
    sample,
)
from ..datasets.imageset import ImageSet, Split
from ..datasets.metrics import mean_std
from ..datasets.tasks import Task, task_for
from . import charts
from .calibration import Calibration, calibrate_run
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .embedding import BACKBONE, backbone_of, embedding_meta
from .explain import TILE, figure, heatmaps, save_figure
from .heads import train_heads
from .modelcard import compute_record, write_model_card
from .models import build_model, get_arch, safe_load, sized_for_model
from .run_folder import CheckpointMeta, RunFolder, SplitFolder
from .runtime import Dist, autocast_dtype, default_workers, distributed, seed_everything
from .splits import (
    IMAGES_DIGEST,
    Evaluation,
    SplitOutput,
    SplitResult,
    images_digest,
    score_split,
    start_split_folder,
    write_split_metrics,
)
from .tensorboard_logs import TensorBoardRun
from .tensorboard_logs import check_available as check_tensorboard

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class Forward:
    """How batches go through the model: onto its device and normalised (``to_model``), under autocast at
    ``dtype`` (None: full precision), read by the run's task (which images are readable, what probabilities)."""

    to_model: ModelInput
    task: Task
    dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.to_model.device

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype is not None)


def train_one_epoch(
    training: Training,
    loader: torch.utils.data.DataLoader,
    forward: Forward,
    scaler: torch.amp.GradScaler | None = None,
    on_batch: Callable[[float, int], None] | None = None,
) -> EpochStats:
    """One pass over ``loader``, a step of ``training``'s optimiser per batch (``scaler``: float16's)."""
    model, optimizer = training.model, training.optimizer
    model.train()
    started = time.perf_counter()
    total_loss, seen = 0.0, 0
    for inputs, targets, _ in loader:
        batch = int(forward.task.readable(targets).sum())
        inputs, targets = forward.to_model(inputs), _to_device(targets, forward.device)
        with forward.autocast():
            logits = model(inputs)
            # A batch of unreadable images only: a zero loss keeps DDP ranks in step without learning noise.
            loss = training.criterion(logits, targets) if batch else logits.sum() * 0.0
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
def evaluate_loader(
    model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module | None, forward: Forward
) -> Evaluation:
    """Loss, truths, logits and the task's probabilities of the readable images of a whole loader."""
    model.eval()
    task = forward.task
    total_loss, seen = 0.0, 0
    truths, indices, raw = [], [], []
    for inputs, targets, index in loader:
        inputs, targets = forward.to_model(inputs), _to_device(targets, forward.device)
        with forward.autocast():
            logits = model(inputs)
        logits = logits.float()
        counted = int(task.readable(targets).sum())
        if criterion is not None and counted:
            total_loss += criterion(logits, targets).item() * counted
        seen += counted
        truths.append(targets.cpu())
        raw.append(logits.cpu())
        indices.append(index)
    truth, index, logits = torch.cat(truths).numpy(), torch.cat(indices).numpy(), torch.cat(raw).numpy()
    keep = task.readable(truth)
    return Evaluation(total_loss / max(seen, 1), truth[keep], task.from_logits(logits[keep]), index[keep], logits[keep])


def _to_device(targets: torch.Tensor, device: torch.device) -> torch.Tensor:
    return targets.to(device, non_blocking=device.type == "cuda")


@dataclass
class SplitState:
    """Where a split's training stands: enough to carry on after an interruption (stored in last.pt)."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, row: dict[str, float]) -> bool:
        """Add an epoch's history row; whether its validation loss is the best so far."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        improved = row["val_loss"] < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = row["val_loss"], self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def save(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        with atomic_path(path) as tmp:
            torch.save(
                {
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "epoch": self.epoch,
                    "best_loss": self.best_loss,
                    "best_epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                    "history": self.history,
                    "rng": torch.get_rng_state(),
                },
                tmp,
            )

    @classmethod
    def restore(cls, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> SplitState:
        saved = cast(dict[str, Any], safe_load(path))  # the dict ``save`` wrote
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer_state"])
        torch.set_rng_state(saved["rng"])
        return cls(saved["epoch"], saved["best_loss"], saved["best_epoch"], saved["bad_epochs"], saved["history"])


@dataclass(frozen=True)
class Training:
    """What a split trains and where it stands: the model, its loss and optimiser, and the state a resume
    carries on from."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    state: SplitState = field(default_factory=SplitState)


@dataclass(frozen=True)
class Stopping:
    """When a split's training ends: after ``epochs``, or once ``patience`` epochs in a row bring no better
    validation loss."""

    epochs: int
    patience: int

    def out_of_patience(self, state: SplitState) -> bool:
        return state.bad_epochs >= self.patience

    def stopped_early(self, state: SplitState) -> bool:
        return self.out_of_patience(state) and state.epoch < self.epochs


@dataclass(frozen=True)
class SplitLoaders:
    """A split's loaders: its training part (shuffled, flipped as asked), its validation and test parts."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader
    seed: int = 0  # of the training part's shuffle

    def start_epoch(self, epoch: int) -> None:
        """The training part's order for ``epoch``, from the seed and the epoch alone: a split resumed at that
        epoch sees its images in the order a run never stopped did (a distributed sampler is told the epoch)."""
        sampler = self.train.sampler
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
            return
        generator = getattr(getattr(self.train, "loader", self.train), "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 1_000_003 + epoch)


def fit(
    training: Training,
    loaders: SplitLoaders,
    forward: Forward,
    stopping: Stopping,
    *,
    world: Dist | None = None,
    on_batch: Callable[[int, float, int], None] | None = None,
    on_epoch: Callable[[dict[str, float], bool], None] | None = None,
) -> SplitState:
    """Train on ``loaders.train`` and validate on ``loaders.val`` each epoch, until ``stopping`` says so;
    ``training.state`` (fresh or restored) holds the history.

    ``on_batch(epoch, loss, images)`` follows every batch, ``on_epoch(row, improved)`` every epoch."""
    world, device, state = world or Dist(), forward.device, training.state
    ids = [device.index] if device.type == "cuda" else None
    net = nn.parallel.DistributedDataParallel(training.model, device_ids=ids) if world.active else training.model
    stepped = replace(training, model=net)
    scaler = torch.amp.GradScaler("cuda") if forward.dtype == torch.float16 else None
    for epoch in range(state.epoch, stopping.epochs):
        if stopping.out_of_patience(state):
            break
        loaders.start_epoch(epoch)
        tick = (lambda loss, n, epoch=epoch: on_batch(epoch, loss, n)) if on_batch else None
        stats = train_one_epoch(stepped, loaders.train, forward, scaler, tick)
        val = evaluate_loader(training.model, loaders.val, training.criterion, forward)
        scores = forward.task.metrics(val.truth, val.probs)
        row = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "val_loss": _agreed(val.loss, device, world),  # every rank takes the same early-stopping turn
            **{k: scores[k] for k in forward.task.shown},
            "learning_rate": training.optimizer.param_groups[0]["lr"],
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second * world.world,
        }
        improved = state.record(row)
        if on_epoch:
            on_epoch(row, improved)
    return state


# ---------------------------------------------------------------------------------------------
# The protocol


def train(config: TrainConfig) -> TrainReport:
    """Train every split of ``config`` (or split 0 alone) and write the run folder."""
    config = sized_for_model(_on_embeddings(config))  # a timm model's own input size, unless one is given
    if config.tensorboard is not None:
        check_tensorboard()
    with (
        distributed(config.device) as (device, world),
        _torch_settings_restored(),
        _nothing_left_unless_trained(config.output_dir, world.main),
    ):
        return _train(config, device, world)


@contextlib.contextmanager
def _nothing_left_unless_trained(out: Path, main: bool) -> Iterator[None]:
    """A run that fails before anything worth keeping (the weights offline, an interruption in the first epoch)
    leaves no run folder it created: a retry starts as the first run did. A folder that was there is left to the
    checks of a later run; a run that has trained something keeps it, for ``resume``."""
    created = main and not os.path.lexists(out)
    try:
        yield
    except BaseException:
        if created and out.is_dir() and not out.is_symlink() and not RunFolder(out).trained():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _on_embeddings(config: TrainConfig) -> TrainConfig:
    """A probe on an embeddings table takes the backbone the table records (arch, weights, input size) instead
    of asking for it again; a setting given that differs is refused."""
    if config.embeddings is None or config.method == "fine-tune":
        return config
    given = {key: getattr(config, key) for key in BACKBONE if key in config.model_fields_set}
    return config.model_copy(update=backbone_of(embedding_meta(config.embeddings), given, config.embeddings))


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
    started = time.perf_counter()  # the model card's training time
    task = task_for(config.mode)
    images = task.scan(config.data_dir, config.labels)
    task.check_trainable(images, config.data_dir, config.folds)
    images = sample(images, config.sample, config.seed)
    task.check_trainable(images, config.data_dir, config.folds)
    out = config.output_dir
    if world.main:
        _check_run_folder(out, config.resume, config.data_dir)
        _check_resumed_run(config, images)
    groups = fold_groups(images, config.group_by_provider, config.duplicate_groups)
    splits = task.splits(images.labels, config.folds, config.seed, groups)
    chosen = range(len(splits)) if config.crossvalidation else range(1)
    check_splits(images, splits, chosen, config.group_by_provider or config.duplicate_groups is not None)
    report = TrainReport(out, images.classes, images.counts(), unreadable=len(images.unreadable))
    board = (
        TensorBoardRun(config.tensorboard, out, config.resume)
        if config.tensorboard is not None and world.main
        else None
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif world.active:
        torch.set_num_threads(max(1, torch.get_num_threads() // world.world))
    if config.method != "finetune":
        if world.main:  # a head per split on embeddings: seconds, no need to spread it over processes
            report.splits = train_heads(config, images, splits, chosen, device)
    else:
        report.splits = _fine_tune(config, images, [(i, splits[i]) for i in chosen], device, world, board)
    if world.main:
        names = report.splits[0].metrics.keys()
        report.summary = {m: mean_std([s.metrics[m] for s in report.splits]) for m in names}
        summary = {
            "classes": images.classes,
            "counts": report.counts,
            "images": len(images),  # not the counts' sum: a multi-label image is in several
            "splits": len(report.splits),
            "metrics": report.summary,
            "compute": compute_record(device, world.world, time.perf_counter() - started),
        }
        backbone = get_arch(config.arch).provenance(config.weights)  # a timm model's, as its checkpoints say
        write_json(RunFolder(out).summary, {**summary, "backbone": backbone} if backbone else summary)
        _calibrate(config, report)
        write_model_card(out)
        if board is not None:
            board.finish(out, images.classes, task, report.splits, report.summary, public_dict(config))
    return report


def _check_resumed_run(config: TrainConfig, images: ImageSet) -> None:
    """A resumed run must be the same run: same data, model and folds, or split 0 would be reused for another."""
    first = RunFolder(config.output_dir).split(0)
    if not config.resume or not first.config.is_file():
        return
    before = first.read_config()
    now = public_dict(config)
    keys = TrainConfig.resume_keys  # declared once, with the config
    defaults = {k: TrainConfig.model_fields[k].default for k in keys}
    differ = [k for k in keys if _same(k, before.get(k, defaults[k])) != _same(k, now.get(k))]
    if differ:
        said = ", ".join(f"{k} {before.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise DatasetError(
            f"cannot resume {config.output_dir}: it was trained with other settings ({said}); "
            "resume with the same settings, or choose another `output_dir`"
        )
    classes = first.read_classes() if first.class_index.is_file() else images.classes
    if classes != images.classes:
        raise DatasetError(
            f"cannot resume {config.output_dir}: its classes were {', '.join(classes)}, the data "
            f"now has {', '.join(images.classes)}"
        )
    digest = before.get(IMAGES_DIGEST)  # None in a run from before eic recorded it
    if digest is not None and digest != images_digest(images, config.data_dir):
        raise DatasetError(
            f"cannot resume {config.output_dir}: its images are not those in {config.data_dir} now (added, removed "
            "or moved to another class since it started), and its folds are cut from them: resume with the images "
            "it started with, or train the folder as it is into another `output_dir`"
        )


def _same(key: str, value: Any) -> Any:
    """Paths compare by where they point, not how they were written (a weights file too)."""
    is_path = key in ("data_dir", "labels", "embeddings", "duplicate_groups") or (
        key == "weights" and value not in ("imagenet", "none")
    )
    return str(Path(value).resolve()) if is_path and value else value


def check_splits(images: ImageSet, splits: list[Split], chosen: range, grouped: bool) -> None:
    """Every class in the training, validation and test part of every split, before any training: a class
    missing from a training part gets an infinite weight and a run that dies hours later."""
    for i in chosen:
        for part_name, part in (("training", splits[i].train), ("validation", splits[i].val), ("test", splits[i].test)):
            present = images.task.support(images.labels[part], len(images.classes))
            missing = [c for c, n in zip(images.classes, present, strict=True) if n == 0]
            if missing:
                raise DatasetError(_missing_message(images, missing[0], i, part_name, grouped))


def _missing_message(images: ImageSet, name: str, split: int, part: str, grouped: bool) -> str:
    c = images.classes.index(name)
    members = images.task.members(images.labels, c)
    providers = Counter(g for g, m in zip(images.groups(), members, strict=True) if m)
    shown = ", ".join(f"{p} ({n})" for p, n in providers.most_common(3)) + (", ..." if len(providers) > 3 else "")
    advice = (
        "folds are grouped, and its images come from few groups: drop `group_by_provider` (or "
        "`duplicate_groups`), or add images of it from other providers"
        if grouped
        else "add images of it, or lower `folds`"
    )
    return (
        f"split {split}'s {part} part has no image of class '{name}' ({int(members.sum())} images from "
        f"{len(providers)} provider(s): {shown}); {advice}"
    )


def _calibrate(config: TrainConfig, report: TrainReport) -> None:
    """Calibrate a cross-validated run from its out-of-fold predictions; a run that cannot be is still a run."""
    try:
        report.calibration = calibrate_run(config.output_dir, config.precision, diagram=config.figures)
    except CalibrationError as exc:
        report.calibration_note = str(exc)


# What every split's config.json of eic's holds (its TrainConfig, as every version wrote it): a folder of the
# user's with a split_0/ or a model.pt of its own (a Hugging Face download) is not a run to carry on.
_RUN_SETTINGS = frozenset({"arch", "data_dir", "seed", "epochs", "folds"})


def _is_run_folder(path: Path) -> bool:
    run = RunFolder(path)
    split = SplitFolder(path, 0) if run.is_split else run.split(0)  # a split folder stands for a run of one
    found = peek_json(split.config)
    return isinstance(found, dict) and found.keys() >= _RUN_SETTINGS


RUN = OutputKind("run", "a training run", folder=True, recognise=_is_run_folder)


def _check_run_folder(out: Path, resume: bool, data_dir: Path) -> None:
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise DatasetError(
            f"`output_dir` {out} is inside the data folder {data_dir}: the next scan would read the run as a class "
            "folder (its figures as images); choose a folder outside it"
        )
    # Only training state counts: a run that failed before its first epoch (weights offline, say) left
    # split_0/config.json alone, and the natural retry must not be refused for it: it is carried on as resumed.
    claim(out, RUN, resume=resume or not RunFolder(out).trained(), option="output_dir")
    out.mkdir(parents=True, exist_ok=True)


def _fine_tune(
    config: TrainConfig,
    images: ImageSet,
    chosen: list[tuple[int, Split]],
    device: torch.device,
    world: Dist,
    board: TensorBoardRun | None,
) -> list[SplitResult]:
    """Fine-tune the chosen splits one after another (under torchrun, every rank together)."""
    arch = get_arch(config.arch)
    forward = Forward(ModelInput(arch.mean, arch.std, device), images.task, autocast_dtype(device, config.amp))
    # One cache for the whole run: an image is decoded in the first split that reads it, never again.
    cache = DecodedCache.for_images(
        len(images), config.input_size, config.cache_mb, default_workers(device, config.num_workers)
    )
    run = RunFolder(config.output_dir)
    results = []
    for index, split in chosen:
        output = SplitOutput(run.split(index), CheckpointMeta.for_split(config, arch, images.classes, index), board)
        results.append(_run_split(config, images, split, output, forward, world, cache))
    return results


def _run_split(
    config: TrainConfig,
    images: ImageSet,
    split: Split,
    output: SplitOutput,
    forward: Forward,
    world: Dist,
    cache: DecodedCache | None,
) -> SplitResult:
    """One split: fit, keep the best model, score it on the test fold. Rank 0 alone writes."""
    folder, index = output.folder, output.folder.index
    if config.resume and folder.finished:
        if world.main:
            log.info("split %d: finished earlier, skipped", index)
        return SplitResult.finished_earlier(folder)
    seed_everything(config.seed + index)
    # The model first: one that cannot be built (ImageNet's weights offline) leaves no split folder behind.
    training = _start_training(config, images, split, folder, forward.device, world)
    if world.main:
        start_split_folder(folder, config, images)
    loaders = _loaders(config, images, split, forward.device, world, index, cache)
    stopping = Stopping(config.epochs, config.patience)
    saver = _EpochSaver(output, training, config) if world.main else None
    with _EpochProgress(config.quiet or not world.main, index, len(loaders.train), world.world) as bar:
        state = fit(training, loaders, forward, stopping, world=world, on_batch=bar.tick, on_epoch=saver)
    result = SplitResult(index, {}, state.epoch, state.best_epoch, state.best_loss)
    if world.main:
        if stopping.stopped_early(state) and not config.quiet:
            log.info("split %d: early stop, no better validation loss for %d epochs", index, config.patience)
        _keep_a_model(output, training)
        result.metrics = _finish_split(config, images, split, folder, loaders, forward, state)
    if world.active:
        dist.barrier()
        result.metrics = _broadcast(result.metrics)
    return result


def _start_training(
    config: TrainConfig, images: ImageSet, split: Split, folder: SplitFolder, device: torch.device, world: Dist
) -> Training:
    """The split's model, loss and optimiser; its state fresh, or restored where an interrupted run left it."""
    model = build_model(config.arch, len(images.classes), config.weights, config.input_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = SplitState()
    if config.resume and folder.last.exists():
        state = SplitState.restore(folder.last, model, optimizer)
        if world.main:
            log.info("split %d: resuming after epoch %d", folder.index, state.epoch)
    criterion = images.task.criterion(images.labels[split.train], len(images.classes), config.weighted_loss)
    return Training(model, criterion.to(device), optimizer, state)


class _EpochSaver:
    """After each epoch (rank 0): the best model, the state to resume from, the history, a log line and,
    when asked for, TensorBoard's scalars."""

    def __init__(self, output: SplitOutput, training: Training, config: TrainConfig) -> None:
        self.output, self.training, self.epochs, self.quiet = output, training, config.epochs, config.quiet
        task = task_for(config.mode)
        self.columns, self.shown = task.history_columns, task.shown[::3]  # the first and last score

    def __call__(self, row: dict[str, float], improved: bool) -> None:
        folder, training = self.output.folder, self.training
        if improved:
            update = {"epoch": int(row["epoch"]), "best_val_loss": row["val_loss"]}
            save_checkpoint(folder.model, training.model, self.output.meta.model_copy(update=update))
        training.state.save(folder.last, training.model, training.optimizer)
        _write_history(folder.history, training.state.history, self.columns)
        if self.output.board is not None:
            self.output.board.epoch(folder.index, row)
        if not self.quiet:
            scores = ", ".join(f"{k.replace('_', ' ')} {row[k]:.3f}" for k in self.shown)
            log.info(
                "split %d epoch %d/%d: train loss %.4f, val loss %.4f, %s, %.0f images/s%s",
                folder.index,
                row["epoch"],
                self.epochs,
                row["train_loss"],
                row["val_loss"],
                scores,
                row["images_per_second"],
                " *" if improved else "",
            )


class _EpochProgress:
    """A progress bar per epoch with the running loss and images/s (on stderr, gone when the epoch ends)."""

    def __init__(self, quiet: bool, index: int, batches: int, world: int) -> None:
        self.bar = progress_bar(quiet, "loss {task.fields[loss]:.4f}", RATE, transient=True)
        self.index, self.batches, self.world = index, batches, world
        self.epoch, self.rate = -1, Rate()
        self.task: TaskID | None = None

    def __enter__(self) -> _EpochProgress:
        self.bar.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.bar.__exit__(exc_type, exc, traceback)

    def tick(self, epoch: int, loss: float, images: int) -> None:
        if epoch != self.epoch:
            if self.task is not None:
                self.bar.remove_task(self.task)
            # The clock starts as the epoch's first batch ends (when it began is not known here): its images are
            # not counted, and an epoch of one batch shows no rate rather than its images over a microsecond.
            self.epoch, self.rate = epoch, Rate()
            self.task = self.bar.add_task(
                f"split {self.index} epoch {epoch + 1}", total=self.batches, loss=math.nan, rate=self.rate
            )
        else:
            self.rate.add(images * self.world)
        assert self.task is not None  # added above: the first tick starts epoch 0
        self.bar.update(self.task, advance=1, loss=loss)


def _keep_a_model(output: SplitOutput, training: Training) -> None:
    """The validation loss was never finite (nan or inf every epoch): keep the last model, and say so."""
    folder = output.folder
    if folder.model.exists():
        return
    log.warning(
        "split %d: the validation loss was never finite; its last model is kept and its scores "
        "are not to be trusted (check the data and the learning rate)",
        folder.index,
    )
    update = {"epoch": training.state.epoch, "best_val_loss": math.inf, "val_loss_never_finite": True}
    save_checkpoint(folder.model, training.model, output.meta.model_copy(update=update))


def _loaders(
    config: TrainConfig,
    images: ImageSet,
    split: Split,
    device: torch.device,
    world: Dist,
    index: int,
    cache: DecodedCache | None,
) -> SplitLoaders:
    size = config.input_size
    reading = LoaderSettings(
        config.batch_size,
        num_workers=default_workers(device, config.num_workers),
        seed=config.seed + 1000 * index,
        pin_memory=device.type == "cuda",
        decode_on=decode_device(config.decode, device),
    )

    def dataset(part: np.ndarray, hflip: float = 0.0, vflip: float = 0.0) -> ImageDataset:
        return ImageDataset(images.subset(part), size, hflip, vflip, cache=cache, cache_rows=part)

    train_set = dataset(split.train, config.hflip, config.vflip)
    sampler: torch.utils.data.Sampler[int] | None = (
        torch.utils.data.DistributedSampler(train_set, world.world, world.rank, shuffle=True, seed=reading.seed)
        if world.active
        else None
    )
    # A last batch of one image breaks batch norm; dropping the remainder costs nothing (reshuffled).
    drop_last = len(train_set) > config.batch_size * world.world
    return SplitLoaders(
        make_loader(train_set, reading, shuffle=True, sampler=sampler, drop_last=drop_last),
        make_loader(dataset(split.val), reading, shuffle=False),
        make_loader(dataset(split.test), reading, shuffle=False),
        seed=reading.seed,
    )


def _finish_split(
    config: TrainConfig,
    images: ImageSet,
    split: Split,
    folder: SplitFolder,
    loaders: SplitLoaders,
    forward: Forward,
    state: SplitState,
) -> dict[str, float]:
    """Score the best checkpoint on the test fold; write metrics, predictions, curves and heatmaps.

    What the checkpoint learns from the validation part (a temperature; multi-label thresholds) is stored in it.
    """
    best = load_checkpoint(folder.model)
    model = model_from_checkpoint(best).to(forward.device)
    test = evaluate_loader(model, loaders.test, None, forward)
    val = evaluate_loader(model, loaders.val, None, forward)
    scores, extra = score_split(images, split, folder, test, val)
    # A resumed split may hold a temperature already: the new values win.
    save_checkpoint(folder.model, model, best.meta.model_copy(update=extra))
    if config.figures:
        plot_curves(state.history, folder.curves, state.best_epoch)
    if config.gradcam_images:
        _gradcam(model, config, images.subset(split.test), test, images.classes, folder.gradcam, forward.to_model)
    # Last: metrics.json is what marks the split finished, so a split stopped before it is done again on resume.
    write_split_metrics(folder, scores, split, state.epoch, state.best_epoch, state.best_loss, extra["temperature"])
    folder.last.unlink(missing_ok=True)  # the split is finished; model.pt is what stays
    return scores


def _gradcam(
    model: nn.Module,
    config: TrainConfig,
    test_images: ImageSet,
    test: Evaluation,
    classes: list[str],
    folder: Path,
    to_model: ModelInput,
) -> None:
    """Heatmaps of test images spread over the fold, for their predicted class; names carry truth and
    prediction, as the pilot's did."""
    arch = get_arch(config.arch)
    try:
        layer = arch.cam_layer(model)
    except ModelError as exc:  # a model Grad-CAM cannot look into: the split is scored all the same
        log.warning("no Grad-CAM figures: %s", exc)
        return
    folder.mkdir(exist_ok=True)
    by_image = np.argsort(test.indices)
    spread = np.linspace(0, len(by_image) - 1, min(config.gradcam_images, len(by_image))).astype(int)
    order = by_image[np.unique(spread)]
    paths = [test_images.paths[test.indices[k]] for k in order]
    pictures = [load_image(p, config.input_size) for p in paths]
    batch = to_model(torch.stack([pixels_of(p) for p in pictures]))
    predicted = [int(test.probs[k].argmax()) for k in order]
    maps = heatmaps(model.float(), layer, batch, predicted, reshape=arch.cam_reshape(model))
    for n, (k, path, heat) in enumerate(zip(order, paths, maps, strict=True)):
        truth = test_images.task.truth_text(test.truth[k], classes).replace(" ", "+") or "none"
        pred, confidence = classes[predicted[n]], float(test.probs[k].max())
        title = f"{record_id_of(path.name) or path.name} · true {truth}"
        save_figure(
            figure(load_image(path, TILE, keep_aspect=True), [heat], [f"predicted {pred} {confidence:.2f}"], title),
            folder / figure_name(n, truth, pred, confidence),
            title,
        )


NAMED = 40  # the most characters of a class a figure's file name holds (its title holds the whole)


def figure_name(n: int, truth: str, predicted: str, confidence: float) -> str:
    """A Grad-CAM figure's file name, with its true and predicted classes as the pilot's had them: each reduced to
    ASCII letters, digits and ``.+-`` (a byte a character), and cut (with a digest of the whole) past ``NAMED``, so
    that any class name (250 characters, a slash, 40 CJK characters of three bytes each, a multi-label image's
    labels together) makes a name the disk takes: under 120 bytes."""

    def part(text: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9.+-]", "_", text)
        if safe == text and len(safe) <= NAMED:
            return safe  # else a digest of the whole tells two names apart that read the same here
        return f"{safe[: NAMED - 9]}~{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"

    return f"{n:03d}_true-{part(truth)}_pred-{part(predicted)}_{confidence:.2f}.jpg"


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
    write_csv(path, columns, history)


def plot_curves(history: list[dict[str, float]], path: Path, best_epoch: int = 0) -> None:
    """Loss and validation scores per (whole) epoch, the kept epoch marked (charts.py: drawn, not measured)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    canvas, (left, right) = charts.chart(
        (10, 4), dict(left=0.06, right=0.98, bottom=0.13, top=0.92, wspace=0.16), nrows=1, ncols=2
    )
    left.plot(epochs, [r["train_loss"] for r in history], label="train")
    left.plot(epochs, [r["val_loss"] for r in history], label="validation")
    left.set(xlabel="epoch")
    charts.title(left, "loss")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    if best_epoch:
        kept = next(r for r in history if r["epoch"] == best_epoch)
        left.plot(
            [best_epoch],
            [kept["val_loss"]],
            marker="o",
            color="black",
            linestyle="none",
            label=f"kept: epoch {best_epoch}",
        )
    left.legend()
    for key, label in (
        ("accuracy", "accuracy"),
        ("f1", "macro F1"),
        ("micro_f1", "micro F1"),
        ("macro_f1", "macro F1"),
        ("mean_average_precision", "mAP"),
    ):
        if key in history[0]:
            right.plot(epochs, [r[key] for r in history], label=label)
    right.set(xlabel="epoch", ylim=(0, 1))
    charts.title(right, "validation")
    right.legend()
    charts.save(canvas, path)
