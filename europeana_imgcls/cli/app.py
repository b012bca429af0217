"""The ``eic`` command: each subcommand builds one config and calls one library function."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console

from ..core.config import (
    AuditConfig,
    CalibrateConfig,
    DemoConfig,
    DownloadConfig,
    EmbedConfig,
    EnrichConfig,
    EvaluateConfig,
    HarvestConfig,
    PredictConfig,
    ReviewImportConfig,
    StatsConfig,
    SubtractConfig,
    TrainConfig,
    build_config,
)
from ..core.errors import EicError
from . import report

app = typer.Typer(
    name="eic",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # configs hold the API key
    help="Europeana records to trained image classifiers. Try `eic demo` first: the whole pipeline, offline.",
)
console = Console()
T = TypeVar("T")


def opt(model: type[BaseModel], name: str, *decls: str, **kwargs: Any) -> Any:
    """A Typer option whose help and shown default come from the config model's field."""
    field = model.model_fields[name]
    default = field.default if field.default is not PydanticUndefined else None
    if field.default_factory is not None:
        default = field.default_factory()  # type: ignore[call-arg]
    shown: str | bool = False if default is None or default == {} else _show(default)
    return typer.Option(*decls, help=field.description, show_default=shown, **kwargs)


def _show(value: Any) -> str:
    if hasattr(value, "get_secret_value"):
        return "the public demo key"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="TOML or JSON settings file; flags override it, it overrides EUROPEANA_* env.",
                 exists=False, dir_okay=False),
]
Quiet = Annotated[
    bool | None, typer.Option("--quiet/--no-quiet", help="No progress bars (for CI).", show_default=False)
]


def run(action: Callable[[], T]) -> T:
    """Call the library; an EicError becomes one line on stderr and a non-zero exit code."""
    try:
        return action()
    except EicError as exc:
        typer.echo(f"eic: error: {report.as_flags(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(f"eic: interrupted; what was finished is kept ({_carry_on()})", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # the file system said no (a full disk, a path through a file, no permission)
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"eic: error: {where}{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def _carry_on() -> str:
    """How the interrupted command carries on: by running it again, or with --resume."""
    import click

    context = click.get_current_context(silent=True)
    name = context.info_name if context is not None else ""
    if name in ("download", "subtract", "stats", "evaluate", "calibrate", "audit", "demo"):
        return "run the same command again to carry on" if name == "download" else "run it again"
    return "run the same command with --resume to carry on"


@app.command()
def harvest(
    output: Annotated[Path | None, opt(HarvestConfig, "output", "--output", "-o")] = None,
    vocab: Annotated[Path | None, opt(HarvestConfig, "vocab", "--vocab")] = None,
    n: Annotated[int | None, opt(HarvestConfig, "n", "--n", "-n")] = None,
    reusability: Annotated[list[str] | None, opt(HarvestConfig, "reusability", "--reusability")] = None,
    mode: Annotated[str | None, opt(HarvestConfig, "mode", "--mode")] = None,
    seed: Annotated[int | None, opt(HarvestConfig, "seed", "--seed")] = None,
    keep_ambiguous: Annotated[
        bool | None, opt(HarvestConfig, "keep_ambiguous", "--keep-ambiguous/--drop-ambiguous")
    ] = None,
    resume: Annotated[bool | None, opt(HarvestConfig, "resume", "--resume/--no-resume")] = None,
    api_url: Annotated[str | None, opt(HarvestConfig, "api_url", "--api-url")] = None,
    api_key: Annotated[str | None, opt(HarvestConfig, "api_key", "--api-key")] = None,
    timeout: Annotated[float | None, opt(HarvestConfig, "timeout", "--timeout")] = None,
    retries: Annotated[int | None, opt(HarvestConfig, "retries", "--retries")] = None,
    max_quota_wait: Annotated[float | None, opt(HarvestConfig, "max_quota_wait", "--max-quota-wait")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Query the Search API per concept (or 2-3 concept combination) and write a dataset table."""
    from ..acquisition.harvest import harvest as run_harvest

    flags = dict(output=output, vocab=vocab, n=n, reusability=reusability or None, mode=mode, seed=seed,
                 keep_ambiguous=keep_ambiguous, resume=resume, api_url=api_url, api_key=api_key,
                 timeout=timeout, retries=retries, max_quota_wait=max_quota_wait, quiet=quiet)
    result = run(lambda: run_harvest(build_config(HarvestConfig, flags, config)))
    report.print_harvest(console, result)


@app.command()
def subtract(
    train: Annotated[Path, typer.Argument(help="Training table (.csv or .parquet).")],
    eval: Annotated[Path, typer.Argument(help="Evaluation table; its IDs leave the training table.")],  # noqa: A002
    output: Annotated[Path | None, opt(SubtractConfig, "output", "--output", "-o")] = None,
    columns: Annotated[str | None, opt(SubtractConfig, "columns", "--columns")] = None,
    overwrite: Annotated[bool | None, opt(SubtractConfig, "overwrite", "--overwrite")] = None,
    config: ConfigFile = None,
) -> None:
    """Remove from a training table every record whose ID is in an evaluation table."""
    from ..acquisition.curation import subtract as run_subtract

    flags = dict(columns=columns, train=train, eval=eval, output=output, overwrite=overwrite)
    result = run(lambda: run_subtract(build_config(SubtractConfig, flags, config)))
    console.print(f"kept {result.kept} rows, removed {result.removed}; wrote {result.output}")


@app.command()
def stats(
    table: Annotated[Path, typer.Argument(help="Table to describe (.csv or .parquet).")],
    vocab: Annotated[Path | None, opt(StatsConfig, "vocab", "--vocab")] = None,
    output: Annotated[Path | None, opt(StatsConfig, "output", "--output", "-o")] = None,
    columns: Annotated[str | None, opt(StatsConfig, "columns", "--columns")] = None,
    overwrite: Annotated[bool | None, opt(StatsConfig, "overwrite", "--overwrite")] = None,
    config: ConfigFile = None,
) -> None:
    """Records per category, reusability level and provider, and what looks wrong in a table."""
    from ..acquisition.curation import stats as run_stats

    flags = dict(columns=columns, table=table, vocab=vocab, output=output, overwrite=overwrite)
    result = run(lambda: run_stats(build_config(StatsConfig, flags, config)))
    report.print_stats(console, result)


@app.command()
def download(
    table: Annotated[Path, typer.Argument(help="Harvest table (.csv or .parquet) with ID, URL (and category).")],
    output_dir: Annotated[Path | None, opt(DownloadConfig, "output_dir", "--output-dir", "-o")] = None,
    columns: Annotated[str | None, opt(DownloadConfig, "columns", "--columns")] = None,
    mode: Annotated[str | None, opt(DownloadConfig, "mode", "--mode")] = None,
    concurrency: Annotated[int | None, opt(DownloadConfig, "concurrency", "--concurrency")] = None,
    per_host: Annotated[int | None, opt(DownloadConfig, "per_host", "--per-host")] = None,
    timeout: Annotated[float | None, opt(DownloadConfig, "timeout", "--timeout")] = None,
    retries: Annotated[int | None, opt(DownloadConfig, "retries", "--retries")] = None,
    max_bytes: Annotated[int | None, opt(DownloadConfig, "max_bytes", "--max-bytes")] = None,
    max_pixels: Annotated[int | None, opt(DownloadConfig, "max_pixels", "--max-pixels")] = None,
    max_side: Annotated[int | None, opt(DownloadConfig, "max_side", "--max-side")] = None,
    quality: Annotated[int | None, opt(DownloadConfig, "quality", "--quality")] = None,
    workers: Annotated[int | None, opt(DownloadConfig, "workers", "--workers")] = None,
    decode_memory_mb: Annotated[int | None, opt(DownloadConfig, "decode_memory_mb", "--decode-memory-mb")] = None,
    fallback_preview: Annotated[
        bool | None, opt(DownloadConfig, "fallback_preview", "--fallback-preview/--no-fallback-preview")
    ] = None,
    retry_failed: Annotated[
        bool | None, opt(DownloadConfig, "retry_failed", "--retry-failed/--no-retry-failed")
    ] = None,
    source: Annotated[str | None, opt(DownloadConfig, "source", "--source")] = None,
    thumbnail_url: Annotated[str | None, opt(DownloadConfig, "thumbnail_url", "--thumbnail-url")] = None,
    rate: Annotated[float | None, opt(DownloadConfig, "rate", "--rate")] = None,
    shard: Annotated[str | None, opt(DownloadConfig, "shard", "--shard")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Fetch the images of a table into class folders (or one folder plus labels.csv)."""
    from ..acquisition.download import download as run_download

    flags = dict(columns=columns, table=table,
                 output_dir=output_dir, mode=mode, concurrency=concurrency, per_host=per_host,
                 timeout=timeout, retries=retries, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side,
                 quality=quality, workers=workers, decode_memory_mb=decode_memory_mb, fallback_preview=fallback_preview,
                 retry_failed=retry_failed, source=source, thumbnail_url=thumbnail_url, rate=rate, shard=shard,
                 quiet=quiet)
    result = run(lambda: run_download(build_config(DownloadConfig, flags, config)))
    report.print_download(console, result)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Class folders, as eic download writes them.")],
    output_dir: Annotated[Path | None, opt(TrainConfig, "output_dir", "--output-dir", "-o")] = None,
    arch: Annotated[str | None, opt(TrainConfig, "arch", "--arch")] = None,
    weights: Annotated[str | None, opt(TrainConfig, "weights", "--weights")] = None,
    epochs: Annotated[int | None, opt(TrainConfig, "epochs", "--epochs")] = None,
    patience: Annotated[int | None, opt(TrainConfig, "patience", "--patience")] = None,
    input_size: Annotated[int | None, opt(TrainConfig, "input_size", "--input-size")] = None,
    batch_size: Annotated[int | None, opt(TrainConfig, "batch_size", "--batch-size")] = None,
    learning_rate: Annotated[float | None, opt(TrainConfig, "learning_rate", "--learning-rate")] = None,
    folds: Annotated[int | None, opt(TrainConfig, "folds", "--folds")] = None,
    crossvalidation: Annotated[
        bool | None, opt(TrainConfig, "crossvalidation", "--crossvalidation/--no-crossvalidation")
    ] = None,
    weighted_loss: Annotated[
        bool | None, opt(TrainConfig, "weighted_loss", "--weighted-loss/--no-weighted-loss")
    ] = None,
    sample: Annotated[float | None, opt(TrainConfig, "sample", "--sample")] = None,
    hflip: Annotated[float | None, opt(TrainConfig, "hflip", "--hflip")] = None,
    vflip: Annotated[float | None, opt(TrainConfig, "vflip", "--vflip")] = None,
    num_workers: Annotated[int | None, opt(TrainConfig, "num_workers", "--num-workers")] = None,
    device: Annotated[str | None, opt(TrainConfig, "device", "--device")] = None,
    amp: Annotated[bool | None, opt(TrainConfig, "amp", "--amp/--no-amp")] = None,
    seed: Annotated[int | None, opt(TrainConfig, "seed", "--seed")] = None,
    resume: Annotated[bool | None, opt(TrainConfig, "resume", "--resume/--no-resume")] = None,
    group_by_provider: Annotated[
        bool | None, opt(TrainConfig, "group_by_provider", "--group-by-provider/--no-group-by-provider")
    ] = None,
    gradcam_images: Annotated[int | None, opt(TrainConfig, "gradcam_images", "--gradcam-images")] = None,
    mode: Annotated[str | None, opt(TrainConfig, "mode", "--mode")] = None,
    labels: Annotated[Path | None, opt(TrainConfig, "labels", "--labels")] = None,
    cache_mb: Annotated[int | None, opt(TrainConfig, "cache_mb", "--cache-mb")] = None,
    precision: Annotated[float | None, opt(TrainConfig, "precision", "--precision")] = None,
    method: Annotated[str | None, opt(TrainConfig, "method", "--method")] = None,
    embeddings: Annotated[Path | None, opt(TrainConfig, "embeddings", "--embeddings")] = None,
    neighbours: Annotated[int | None, opt(TrainConfig, "neighbours", "--neighbours")] = None,
    duplicate_groups: Annotated[Path | None, opt(TrainConfig, "duplicate_groups", "--duplicate-groups")] = None,
    tensorboard: Annotated[Path | None, opt(TrainConfig, "tensorboard", "--tensorboard")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Fine-tune a ResNet (or another registered model) with stratified k-fold cross-validation."""
    flags = dict(data_dir=data_dir, output_dir=output_dir, arch=arch, weights=weights, epochs=epochs,
                 patience=patience, input_size=input_size, batch_size=batch_size, learning_rate=learning_rate,
                 folds=folds, crossvalidation=crossvalidation, weighted_loss=weighted_loss, sample=sample,
                 hflip=hflip, vflip=vflip, num_workers=num_workers, device=device, amp=amp, seed=seed,
                 resume=resume, group_by_provider=group_by_provider, gradcam_images=gradcam_images, mode=mode,
                 labels=labels, cache_mb=cache_mb, precision=precision, method=method, embeddings=embeddings,
                 neighbours=neighbours, duplicate_groups=duplicate_groups, tensorboard=tensorboard, quiet=quiet)
    settings = run(lambda: build_config(TrainConfig, flags, config))
    from ..modelling.training import train as run_train

    result = run(lambda: run_train(settings))
    if result.summary and os.environ.get("RANK", "0") == "0":
        report.print_summary(console, f"test metrics over {len(result.splits)} split(s)", result.summary)
        if result.calibration is not None:
            report.print_calibration(console, result.calibration)
        elif result.calibration_note:
            console.print(f"[yellow]not calibrated:[/] {report.as_flags(result.calibration_note)}")
        console.print(f"run written to {result.output_dir}")


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A cross-validated training run folder.")],
    precision: Annotated[float | None, opt(CalibrateConfig, "precision", "--precision")] = None,
    config: ConfigFile = None,
) -> None:
    """Per-class thresholds for a precision target, from a run's calibrated out-of-fold predictions."""
    from ..modelling.calibration import calibrate as run_calibrate

    flags = dict(run=run_dir, precision=precision)
    report.print_calibration(console, run(lambda: run_calibrate(build_config(CalibrateConfig, flags, config))))
    console.print(f"written to {run_dir / 'calibration.json'}, {run_dir / 'reliability.png'}, "
                  f"{run_dir / 'MODEL_CARD.md'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A training run folder or one split folder.")],
    eval_dir: Annotated[Path, typer.Argument(help="Evaluation images in class folders.")],
    output_dir: Annotated[Path | None, opt(EvaluateConfig, "output_dir", "--output-dir", "-o")] = None,
    batch_size: Annotated[int | None, opt(EvaluateConfig, "batch_size", "--batch-size")] = None,
    device: Annotated[str | None, opt(EvaluateConfig, "device", "--device")] = None,
    num_workers: Annotated[int | None, opt(EvaluateConfig, "num_workers", "--num-workers")] = None,
    amp: Annotated[bool | None, opt(EvaluateConfig, "amp", "--amp/--no-amp")] = None,
    gallery: Annotated[int | None, opt(EvaluateConfig, "gallery", "--gallery")] = None,
    labels: Annotated[Path | None, opt(EvaluateConfig, "labels", "--labels")] = None,
    threshold: Annotated[float | None, opt(EvaluateConfig, "threshold", "--threshold")] = None,
    overwrite: Annotated[bool | None, opt(EvaluateConfig, "overwrite", "--overwrite")] = None,
    config: ConfigFile = None,
) -> None:
    """Score every split of a run on an evaluation set: metrics as mean ± std, per class, confusion matrix."""
    flags = dict(run=run_dir, eval_dir=eval_dir, output_dir=output_dir, batch_size=batch_size, device=device,
                 num_workers=num_workers, amp=amp, gallery=gallery, labels=labels, threshold=threshold,
                 overwrite=overwrite)
    settings = run(lambda: build_config(EvaluateConfig, flags, config))
    from ..outputs.evaluation import evaluate_run

    result = run(lambda: evaluate_run(settings))
    report.print_evaluation(console, result)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A training run folder or one split folder.")],
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Image files, folders (recursive) or http(s) URLs.")
    ] = None,
    output: Annotated[Path | None, opt(PredictConfig, "output", "--output", "-o")] = None,
    top_k: Annotated[int | None, opt(PredictConfig, "top_k", "--top-k")] = None,
    threshold: Annotated[float | None, opt(PredictConfig, "threshold", "--threshold")] = None,
    gradcam_dir: Annotated[Path | None, opt(PredictConfig, "gradcam_dir", "--gradcam-dir")] = None,
    cam_method: Annotated[str | None, opt(PredictConfig, "cam_method", "--cam-method")] = None,
    split: Annotated[str | None, opt(PredictConfig, "split", "--split")] = None,
    table: Annotated[Path | None, opt(PredictConfig, "table", "--table")] = None,
    columns: Annotated[str | None, opt(PredictConfig, "columns", "--columns")] = None,
    query: Annotated[str | None, opt(PredictConfig, "query", "--query")] = None,
    n: Annotated[int | None, opt(PredictConfig, "n", "--n", "-n")] = None,
    reusability: Annotated[list[str] | None, opt(PredictConfig, "reusability", "--reusability")] = None,
    image_dir: Annotated[Path | None, opt(PredictConfig, "image_dir", "--image-dir")] = None,
    resume: Annotated[bool | None, opt(PredictConfig, "resume", "--resume/--no-resume")] = None,
    batch_size: Annotated[int | None, opt(PredictConfig, "batch_size", "--batch-size")] = None,
    device: Annotated[str | None, opt(PredictConfig, "device", "--device")] = None,
    num_workers: Annotated[int | None, opt(PredictConfig, "num_workers", "--num-workers")] = None,
    amp: Annotated[bool | None, opt(PredictConfig, "amp", "--amp/--no-amp")] = None,
    api_url: Annotated[str | None, opt(PredictConfig, "api_url", "--api-url")] = None,
    api_key: Annotated[str | None, opt(PredictConfig, "api_key", "--api-key")] = None,
    source: Annotated[str | None, opt(PredictConfig, "source", "--source")] = None,
    thumbnail_url: Annotated[str | None, opt(PredictConfig, "thumbnail_url", "--thumbnail-url")] = None,
    rate: Annotated[float | None, opt(PredictConfig, "rate", "--rate")] = None,
    shard: Annotated[str | None, opt(PredictConfig, "shard", "--shard")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Label new images with top-k classes (and Grad-CAM figures); an ensemble with --split all."""
    flags = dict(columns=columns, run=run_dir, inputs=inputs or None, output=output, top_k=top_k, threshold=threshold,
                 gradcam_dir=gradcam_dir, cam_method=cam_method, split=split, table=table, query=query, n=n,
                 reusability=reusability or None, image_dir=image_dir, resume=resume, batch_size=batch_size,
                 device=device, num_workers=num_workers, amp=amp, api_url=api_url, api_key=api_key, quiet=quiet,
                 source=source, thumbnail_url=thumbnail_url, rate=rate, shard=shard)
    settings = run(lambda: build_config(PredictConfig, flags, config))
    from ..outputs.prediction import predict as run_predict

    result = run(lambda: run_predict(settings))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        report.print_prediction(console, result)


@app.command()
def enrich(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A calibrated (cross-validated) training run.")],
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Image files, folders (recursive) or http(s) URLs.")
    ] = None,
    output: Annotated[Path | None, opt(EnrichConfig, "output", "--output", "-o")] = None,
    format: Annotated[str | None, opt(EnrichConfig, "format", "--format")] = None,  # noqa: A002
    precision: Annotated[float | None, opt(EnrichConfig, "precision", "--precision")] = None,
    vocab: Annotated[Path | None, opt(EnrichConfig, "vocab", "--vocab")] = None,
    review_output: Annotated[Path | None, opt(EnrichConfig, "review_output", "--review-output")] = None,
    review_n: Annotated[int | None, opt(EnrichConfig, "review_n", "--review-n")] = None,
    split: Annotated[str | None, opt(EnrichConfig, "split", "--split")] = None,
    table: Annotated[Path | None, opt(EnrichConfig, "table", "--table")] = None,
    columns: Annotated[str | None, opt(EnrichConfig, "columns", "--columns")] = None,
    query: Annotated[str | None, opt(EnrichConfig, "query", "--query")] = None,
    n: Annotated[int | None, opt(EnrichConfig, "n", "--n", "-n")] = None,
    reusability: Annotated[list[str] | None, opt(EnrichConfig, "reusability", "--reusability")] = None,
    image_dir: Annotated[Path | None, opt(EnrichConfig, "image_dir", "--image-dir")] = None,
    resume: Annotated[bool | None, opt(EnrichConfig, "resume", "--resume/--no-resume")] = None,
    batch_size: Annotated[int | None, opt(EnrichConfig, "batch_size", "--batch-size")] = None,
    device: Annotated[str | None, opt(EnrichConfig, "device", "--device")] = None,
    num_workers: Annotated[int | None, opt(EnrichConfig, "num_workers", "--num-workers")] = None,
    amp: Annotated[bool | None, opt(EnrichConfig, "amp", "--amp/--no-amp")] = None,
    api_url: Annotated[str | None, opt(EnrichConfig, "api_url", "--api-url")] = None,
    api_key: Annotated[str | None, opt(EnrichConfig, "api_key", "--api-key")] = None,
    source: Annotated[str | None, opt(EnrichConfig, "source", "--source")] = None,
    thumbnail_url: Annotated[str | None, opt(EnrichConfig, "thumbnail_url", "--thumbnail-url")] = None,
    rate: Annotated[float | None, opt(EnrichConfig, "rate", "--rate")] = None,
    shard: Annotated[str | None, opt(EnrichConfig, "shard", "--shard")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Precision-targeted labels as W3C Web Annotations (Europeana's shape); the doubtful ones to review."""
    flags = dict(columns=columns, run=run_dir, inputs=inputs or None, output=output,
                 format=format, precision=precision, vocab=vocab,
                 review_output=review_output, review_n=review_n, split=split, table=table, query=query, n=n,
                 reusability=reusability or None, image_dir=image_dir, resume=resume, batch_size=batch_size,
                 device=device, num_workers=num_workers, amp=amp, api_url=api_url, api_key=api_key, quiet=quiet,
                 source=source, thumbnail_url=thumbnail_url, rate=rate, shard=shard)
    settings = run(lambda: build_config(EnrichConfig, flags, config))
    from ..outputs.enrichment import enrich as run_enrich

    result = run(lambda: run_enrich(settings))
    if os.environ.get("RANK", "0") == "0":
        report.print_enrichment(console, result)


@app.command()
def embed(
    data_dir: Annotated[Path, typer.Argument(help="Class folders (or one folder and labels.csv), as eic download "
                                                  "writes them.")],
    output: Annotated[Path | None, opt(EmbedConfig, "output", "--output", "-o")] = None,
    arch: Annotated[str | None, opt(EmbedConfig, "arch", "--arch")] = None,
    weights: Annotated[str | None, opt(EmbedConfig, "weights", "--weights")] = None,
    input_size: Annotated[int | None, opt(EmbedConfig, "input_size", "--input-size")] = None,
    mode: Annotated[str | None, opt(EmbedConfig, "mode", "--mode")] = None,
    labels: Annotated[Path | None, opt(EmbedConfig, "labels", "--labels")] = None,
    resume: Annotated[bool | None, opt(EmbedConfig, "resume", "--resume/--no-resume")] = None,
    batch_size: Annotated[int | None, opt(EmbedConfig, "batch_size", "--batch-size")] = None,
    device: Annotated[str | None, opt(EmbedConfig, "device", "--device")] = None,
    num_workers: Annotated[int | None, opt(EmbedConfig, "num_workers", "--num-workers")] = None,
    amp: Annotated[bool | None, opt(EmbedConfig, "amp", "--amp/--no-amp")] = None,
    shard: Annotated[str | None, opt(EmbedConfig, "shard", "--shard")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """One vector per image from a frozen pretrained backbone, for linear probes, k-NN and eic audit."""
    flags = dict(data_dir=data_dir, output=output, arch=arch, weights=weights, input_size=input_size, mode=mode,
                 labels=labels, resume=resume, batch_size=batch_size, device=device, num_workers=num_workers,
                 amp=amp, shard=shard, quiet=quiet)
    settings = run(lambda: build_config(EmbedConfig, flags, config))
    from ..modelling.embedding import embed as run_embed

    result = run(lambda: run_embed(settings))
    target = f"{result.output}.partial/" if result.shard else f"{result.dim} dimensions -> {result.output}"
    console.print(f"{result.embedded} images embedded in {result.seconds:.1f} s ({result.images_per_second:.1f} "
                  f"images/s), {target}"
                  + (f"; {result.already_done} done earlier" if result.already_done else "")
                  + (f"; {result.unreadable} unreadable" if result.unreadable else "")
                  + report.shard_note(result.shard, "embed", result.output))


@app.command()
def audit(
    source: Annotated[Path, typer.Argument(metavar="RUN_OR_EMB", help="A cross-validated training run, or an "
                                                                        "embeddings table from eic embed.")],
    output_dir: Annotated[Path | None, opt(AuditConfig, "output_dir", "--output-dir", "-o")] = None,
    embeddings: Annotated[Path | None, opt(AuditConfig, "embeddings", "--embeddings")] = None,
    similarity: Annotated[float | None, opt(AuditConfig, "similarity", "--similarity")] = None,
    folds: Annotated[int | None, opt(AuditConfig, "folds", "--folds")] = None,
    top: Annotated[int | None, opt(AuditConfig, "top", "--top")] = None,
    seed: Annotated[int | None, opt(AuditConfig, "seed", "--seed")] = None,
    overwrite: Annotated[bool | None, opt(AuditConfig, "overwrite", "--overwrite")] = None,
    quiet: Quiet = None,
    config: ConfigFile = None,
) -> None:
    """Likely mislabelled images (cleanlab) and near-duplicates across folds, labels and providers."""
    from ..outputs.audit import audit as run_audit

    flags = dict(source=source, output_dir=output_dir, embeddings=embeddings, similarity=similarity, folds=folds,
                 top=top, seed=seed, overwrite=overwrite, quiet=quiet)
    report.print_audit(console, run(lambda: run_audit(build_config(AuditConfig, flags, config))))


review_app = typer.Typer(no_args_is_help=True, help="The review loop: Label Studio exports back into tables.")
app.add_typer(review_app, name="review")


@review_app.command("import")
def review_import(
    export: Annotated[Path, typer.Argument(help="Label Studio JSON export of an eic enrich review project.")],
    output: Annotated[Path | None, opt(ReviewImportConfig, "output", "--output", "-o")] = None,
    vocab: Annotated[Path | None, opt(ReviewImportConfig, "vocab", "--vocab")] = None,
    overwrite: Annotated[bool | None, opt(ReviewImportConfig, "overwrite", "--overwrite")] = None,
    config: ConfigFile = None,
) -> None:
    """Turn people's corrections (a Label Studio JSON export) into a table download and train accept."""
    from ..outputs.review import import_review

    flags = dict(export=export, output=output, vocab=vocab, overwrite=overwrite)
    result = run(lambda: import_review(build_config(ReviewImportConfig, flags, config)))
    report.print_review_import(console, result)


@app.command()
def demo(
    output_dir: Annotated[Path | None, opt(DemoConfig, "output_dir", "--output-dir", "-o")] = None,
    epochs: Annotated[int | None, opt(DemoConfig, "epochs", "--epochs")] = None,
    input_size: Annotated[int | None, opt(DemoConfig, "input_size", "--input-size")] = None,
    arch: Annotated[str | None, opt(DemoConfig, "arch", "--arch")] = None,
    weights: Annotated[str | None, opt(DemoConfig, "weights", "--weights")] = None,
    device: Annotated[str | None, opt(DemoConfig, "device", "--device")] = None,
    seed: Annotated[int | None, opt(DemoConfig, "seed", "--seed")] = None,
    config: ConfigFile = None,
) -> None:
    """Run harvest, subtract, download, train, evaluate and predict offline against the built-in sandbox."""
    from .demo import demo as run_demo

    flags = dict(output_dir=output_dir, epochs=epochs, input_size=input_size, arch=arch, weights=weights,
                 device=device, seed=seed)
    result = run(lambda: run_demo(build_config(DemoConfig, flags, config), console))
    total = sum(seconds for _, _, seconds in result.stages)
    console.rule("[bold]done")
    console.print(f"the whole pipeline ran offline in {total:.0f} s; everything is in {result.output_dir}")


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 8642,
    per_level: Annotated[int, typer.Option(help="Single-concept records per concept and reusability level.")] = 30,
    fail_every: Annotated[int, typer.Option(help="Answer every Nth search with 429 or 503 (0: never).")] = 0,
    bad_every: Annotated[
        int, typer.Option(help="Every Nth record's image is a deliberately bad answer (0: none).")
    ] = 0,
    vocab: Annotated[Path | None, typer.Option(help="Vocabulary JSON; default: the 20 built-in concepts.")] = None,
    thumbnail_missing_every: Annotated[
        int, typer.Option(help="Every Nth record has no thumbnail: v3 answers 404, v2 the placeholder (0: none).")
    ] = 0,
    quota: Annotated[
        int, typer.Option(help="Search API requests allowed per --quota-window, announced in RateLimit headers "
                               "(0: no quota).")
    ] = 0,
    quota_window: Annotated[float, typer.Option(help="Seconds of one quota window.")] = 3600.0,
) -> None:
    """Serve a local stand-in of the Search API, the Thumbnail API and an image host until Ctrl-C."""
    from ..europeana.sandbox import Sandbox
    from ..europeana.vocabulary import load_vocabulary

    vocabulary = run(lambda: load_vocabulary(vocab))
    try:
        server = Sandbox(vocabulary, port=port, per_level=per_level, fail_every=fail_every,
                         bad_every=bad_every, variant_every=7 if bad_every else 0,
                         thumbnail_missing_every=thumbnail_missing_every, quota=quota, quota_window=quota_window)
    except OSError as exc:
        typer.echo(f"eic: error: cannot listen on 127.0.0.1:{port} ({exc.strerror}); try --port 0", err=True)
        raise typer.Exit(1) from None
    console.print(f"Search API: {server.api_url}")
    console.print(f"Thumbnail API: {server.base_url}/thumbnail/v3")
    console.print(f"try: EUROPEANA_API_URL={server.api_url} eic harvest --n 10 --output sandbox.csv")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def main() -> None:
    # The library speaks through logging; the command shows it on stderr.
    from rich.logging import RichHandler

    # Training's line per epoch is INFO (the library logs it only when not quiet); warnings always show.
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False,
                          show_level=False)
    logging.getLogger("europeana_imgcls").addHandler(handler)
    logging.getLogger("europeana_imgcls").setLevel(logging.INFO)
    app()
