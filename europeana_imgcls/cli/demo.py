"""``eic demo``: harvest → subtract → download → train → evaluate → predict → enrich → publish, then the run's HTML
report, offline, in minutes.

Every stage runs through the same library call as its command, against the package's sandbox: a
local Search API (with passing 429/503 faults) and an image host whose images can be learnt and
whose few deliberately bad answers end up in failures.csv.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..acquisition.curation import subtract
from ..acquisition.download import download
from ..acquisition.harvest import harvest
from ..core.config import (
    DemoConfig,
    DownloadConfig,
    EnrichConfig,
    EvaluateConfig,
    HarvestConfig,
    PredictConfig,
    PublishConfig,
    ReportConfig,
    SandboxConfig,
    SubtractConfig,
    TrainConfig,
)
from ..core.errors import ConfigError
from ..core.outputs import OutputKind, claim
from ..europeana.annotation_standin import SANDBOX_TOKEN
from ..europeana.sandbox import Knobs, Sandbox
from ..europeana.vocabulary import default_vocabulary
from ..modelling.models import build_model, get_arch
from ..modelling.training import train
from ..outputs.enrichment import enrich
from ..outputs.evaluation import evaluate_run
from ..outputs.prediction import predict
from ..outputs.publish import publish
from ..outputs.report import report as html_report

DEMO_CLASSES = ("map", "painting", "photograph", "specimen")


DEMO = OutputKind("demo", "a demo", folder=True)


def _check_training(config: DemoConfig) -> None:
    """The model the demo trains, checked before it harvests and downloads for a minute and leaves a folder."""
    get_arch(config.arch)
    if config.weights not in ("none", "imagenet") and not Path(config.weights).is_file():
        raise ConfigError(f"weights {config.weights}: no such file; give none, imagenet or a weights file")
    if config.weights == "imagenet":  # fetched now (or found in the cache), not after a minute of harvest
        build_model(config.arch, len(DEMO_CLASSES), "imagenet")


@dataclass
class DemoReport:
    output_dir: Path
    stages: list[tuple[str, str, float]] = field(default_factory=list)  # (stage, what it did, seconds)


def demo(config: DemoConfig, console: Console | None = None) -> DemoReport:
    out = config.output_dir
    claim(out, DEMO, option="output_dir")  # an empty folder, or none: the demo writes every stage's outputs there
    _check_training(config)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    report = DemoReport(out)
    vocab = {name: default_vocabulary()[name] for name in DEMO_CLASSES}
    (out / "vocabulary.json").write_text(json.dumps(vocab, indent=2))

    def stage(name: str, action: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - started
        text = describe(result)
        report.stages.append((name, text, seconds))
        console.print(f"{escape(text)} [dim]({seconds:.1f} s)[/]")  # paths and values, never markup
        return result

    settings = SandboxConfig(vocab=vocab, port=0, per_level=40, bad_every=17, fail_every=11, thumbnail_missing_every=8)
    with Sandbox(settings, Knobs(variant_every=9, stall_seconds=3, image_size=(192, 144))) as sandbox:
        console.print(
            f"sandbox Search API at {escape(sandbox.api_url)} (every 11th search answers 429 or 503); its "
            "Thumbnail API has no thumbnail for every 8th record"
        )
        common = dict(api_url=sandbox.api_url, vocab=out / "vocabulary.json", quiet=True)
        stage(
            "harvest",
            lambda: harvest(
                HarvestConfig(
                    output=out / "harvested.csv", n=60, reusability=["open", "permission"], seed=config.seed, **common
                )
            ),
            lambda r: (
                f"{r.rows} records in {r.output} ({r.skipped_no_url} without an image URL skipped, "
                f"{r.ambiguous} ambiguous dropped)"
            ),
        )
        stage(
            "harvest (evaluation table)",
            lambda: harvest(
                HarvestConfig(output=out / "eval.csv", n=15, reusability=["open"], seed=config.seed + 1, **common)
            ),
            lambda r: f"{r.rows} records in {r.output}, drawn in another order: some are in the training table",
        )
        stage(
            "subtract",
            lambda: subtract(
                SubtractConfig(train=out / "harvested.csv", eval=out / "eval.csv", output=out / "train.csv")
            ),
            lambda r: (
                f"{r.kept} training records kept, {r.removed} that are in the evaluation table removed -> {r.output}"
            ),
        )
        # Thumbnails, as a training set should be fetched: originals only where a record has none.
        fetch = dict(
            quiet=True,
            timeout=2.0,
            retries=1,
            max_side=256,
            concurrency=16,
            per_host=16,
            source="thumbnail",
            thumbnail_url=f"{sandbox.base_url}/thumbnail/v3",
        )
        stage(
            "download",
            lambda: download(DownloadConfig(table=out / "train.csv", output_dir=out / "images", **fetch)),
            lambda r: (
                f"{r.saved} images in {r.output_dir} ({r.images_per_second:.0f}/s; thumbnails, originals "
                f"where there is none: {sandbox.count('/images/') + sandbox.count('/faults/')} asked), "
                f"{r.failed} failed ({', '.join(f'{k}: {v}' for k, v in r.errors.items())}) -> failures.csv"
            ),
        )
        stage(
            "download (evaluation images)",
            lambda: download(DownloadConfig(table=out / "eval.csv", output_dir=out / "eval_images", **fetch)),
            lambda r: f"{r.saved} images in {r.output_dir}, {r.failed} failed",
        )
        stage(
            "train",
            lambda: train(
                TrainConfig(
                    data_dir=out / "images",
                    output_dir=out / "run",
                    arch=config.arch,
                    weights=config.weights,
                    epochs=config.epochs,
                    patience=3,
                    input_size=config.input_size,
                    batch_size=16,
                    learning_rate=1e-3,
                    folds=3,
                    seed=config.seed,
                    device=config.device,
                    gradcam_images=4,
                    quiet=True,
                )
            ),
            lambda r: (
                f"{len(r.splits)} splits of {config.arch} in {r.output_dir}: test accuracy "
                f"{r.summary['accuracy']['mean']:.3f} ± {r.summary['accuracy']['std']:.3f}, macro-F1 "
                f"{r.summary['f1']['mean']:.3f} ± {r.summary['f1']['std']:.3f} (chance {1 / len(vocab):.2f})"
            ),
        )
        stage(
            "evaluate",
            lambda: evaluate_run(
                EvaluateConfig(
                    run=out / "run", eval_dir=out / "eval_images", output_dir=out / "evaluation", device=config.device
                )
            ),
            lambda r: (
                f"{r.images} evaluation images: accuracy {r.summary['accuracy']['mean']:.3f} ± "
                f"{r.summary['accuracy']['std']:.3f}, specificity {r.summary['specificity']['mean']:.3f} "
                f"-> {r.output_dir}"
            ),
        )
        record = next(r for r in sandbox.catalogue if r.type == "IMAGE" and r.has_url and not r.fault)
        samples = [
            str(next((out / "eval_images" / name).glob("*.jpg")))
            for name in vocab
            if any((out / "eval_images" / name).glob("*.jpg"))
        ]
        stage(
            "predict",
            lambda: predict(
                PredictConfig(
                    run=out / "run",
                    inputs=[*samples, sandbox.image_url(record)],
                    split="all",
                    output=out / "predictions.csv",
                    gradcam_dir=out / "heatmaps",
                    top_k=2,
                    device=config.device,
                    quiet=True,
                )
            ),
            lambda r: (
                f"{r.predicted} images (one per class and a URL) labelled by an ensemble of {len(r.splits)} "
                f"splits -> {r.output}; "
                f"{r.heatmaps} Grad-CAM figures in {out / 'heatmaps'}"
            ),
        )
        stage(
            "enrich",
            lambda: enrich(
                EnrichConfig(
                    run=out / "run",
                    table=out / "eval.csv",
                    output=out / "annotations.jsonld",
                    vocab=out / "vocabulary.json",
                    review_output=out / "review.json",
                    review_n=10,
                    device=config.device,
                    quiet=True,
                )
            ),
            lambda r: (
                f"{r.labelled} of {r.records} evaluation records labelled at precision {r.precision_target:.2f} "
                f"({r.abstained} abstained) -> {r.annotations} W3C annotations in {r.output}; "
                f"{r.review_tasks} Label Studio tasks in {r.review_output}"
            ),
        )
        # Publishing rehearsed: the sandbox's Annotations API applies Europeana's parsing and validation rules.
        stage(
            "publish",
            lambda: publish(
                PublishConfig(
                    enrichments=out / "annotations.jsonld",
                    annotation_api=sandbox.base_url,
                    annotation_token=SANDBOX_TOKEN,
                    quiet=True,
                )
            ),
            lambda r: (
                f"{r.sent} annotations sent to the sandbox's Annotations API, each once "
                f"({len(sandbox.annotations.live())} stored there); journal {r.journal}; eic withdraw takes them back"
            ),
        )
    stage(
        "report",
        lambda: html_report(
            ReportConfig(
                run=out / "run",
                output=out / "report.html",
                evaluation=out / "evaluation",
                enrich=out / "annotations.jsonld",
                quiet=True,
            )
        ),
        lambda r: (
            f"the run, its evaluation and enrich's thresholds on one page that opens offline: {r.output} "
            f"({r.size / 2**20:.1f} MB, {r.images} images; open it in a browser)"
        ),
    )
    return report
