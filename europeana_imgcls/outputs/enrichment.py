"""``eic enrich``: labels a catalogue can take, as W3C Web Annotations, and a review file for the rest.

Prediction runs as in ``eic predict`` (same inputs, safe model loading, batching, ensembles, resume),
but with each split's temperature applied, into a file of calibrated probabilities
(``<output stem>.predictions.jsonl``, kept; journaled, resumed and sharded as predict's output is). Those
are then turned into annotations: a class is
emitted for a record only when its calibrated probability reaches the threshold that met the precision
target out of fold; a record with no emitted class is abstained on, counted, and sent to review with
the least certain emitted ones, as Label Studio tasks.

Annotations follow the shape Europeana's Annotations API takes (``docs/enrich.md``): ``motivation``
tagging, the concept URI as a ``SpecificResource`` body, the record as the target's scope and the
image as its source, the software as creator and generator, and the confidence and the model under
properties of eic's own namespace (the W3C model has none for them).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..core.config import EnrichConfig, InputSettings, PredictConfig
from ..core.errors import CalibrationError, ConfigError, DatasetError
from ..core.naming import record_id_of
from ..core.tables import atomic_path
from ..core.version import __version__
from ..europeana.search_api import record_uri
from ..europeana.vocabulary import load_vocabulary
from ..modelling.calibration import Calibration, check_precision, load_calibration
from ..modelling.runtime import main_process
from .inference import RunModel
from .prediction import Item, Rows, read_output, run_predictions

ANNO_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
NS = "urn:europeana-imgcls:"  # eic's own properties: absolute IRIs, so JSON-LD processors keep them
CONFIDENCE = NS + "confidence"
MODEL = NS + "model"
SOFTWARE = f"europeana-imgcls {__version__}"
CANONICAL_NS = uuid.UUID("5d7c3f0e-4a43-4b8e-9d1c-2f4a1f0c9e11")
PREDICTION_COLUMNS = ["image", "ID", "URI", "probabilities"]
CHOICES_NAME = "category"
log = logging.getLogger(__name__)


@dataclass
class EnrichReport:
    output: Path
    predictions: Path  # every record's calibrated probabilities
    model_id: str = ""
    splits: list[str] = field(default_factory=list)
    records: int = 0
    labelled: int = 0
    abstained: int = 0
    not_records: int = 0  # inputs that name no record (plain files, bare URLs): never annotated
    annotations: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    review_output: Path | None = None
    review_tasks: int = 0
    unreadable: list[str] = field(default_factory=list)
    not_fetched: int = 0
    already_done: int = 0
    precision_target: float = 0.0
    never_emitted: list[str] = field(default_factory=list)
    shard: str | None = None  # a shard's run journals its records; the merging run writes the annotations


class CalibratedRows(Rows):
    """Rows of the predictions file: the image, the record and every class's calibrated probability (no
    heatmaps, no tuned thresholds: the calibration decides)."""

    calibrated = True

    def __init__(self, models: list[RunModel], config: PredictConfig) -> None:
        self.classes, self.task = models[0].classes, models[0].task
        self.columns, self.k, self.thresholds = PREDICTION_COLUMNS, len(self.classes), None

    def row(self, item: Item, probs: np.ndarray) -> dict[str, Any]:
        return {
            "image": item.image,
            "ID": item.id,
            "URI": item.uri,
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)},
        }


def enrich(config: EnrichConfig) -> EnrichReport:
    """Enrich the inputs of ``config`` with ``config.run``; see the module docstring."""
    fmt = _format(config)
    if config.precision is not None:
        check_precision(config.precision)
    predictions = config.output.with_name(f"{config.output.stem}.predictions.jsonl")
    _check_outputs(config, predictions)
    calibration = load_calibration(config.run, config.precision)
    vocab = load_vocabulary(config.vocab)
    _check_vocabulary(calibration, vocab, config.vocab)
    if config.split == "all":
        log.warning(
            "the thresholds were measured on single split models; an ensemble of splits averages "
            "them, which usually keeps the precision but is not measured: check it with eic evaluate"
        )
    predicted = run_predictions(_predict_config(config, predictions), CalibratedRows)
    if config.shard is not None:  # the run without shard merges every shard's predictions and annotates
        return EnrichReport(
            config.output,
            predictions,
            model_id=predicted.model_id,
            splits=predicted.splits,
            records=predicted.predicted,
            already_done=predicted.already_done,
            shard=config.shard,
        )
    if not main_process():  # under torchrun, rank 0 writes for all
        return EnrichReport(config.output, predictions, splits=predicted.splits)
    report = EnrichReport(
        config.output,
        predictions,
        model_id=predicted.model_id,
        splits=predicted.splits,
        unreadable=predicted.unreadable,
        not_fetched=predicted.not_fetched,
        already_done=predicted.already_done,
        precision_target=calibration.precision_target,
        never_emitted=[c.name for c in calibration.per_class if c.threshold is None],
    )
    model = {
        "id": report.model_id,
        "run": config.run.resolve().name,
        "splits": predicted.splits,
        "precisionTarget": calibration.precision_target,
        "software": SOFTWARE,
    }
    review = _ReviewQueue(config.review_n)
    with atomic_path(config.output) as tmp, tmp.open("w", encoding="utf-8") as handle:
        writer = _AnnotationWriter(handle, fmt, config.run.name)
        thresholds = calibration.thresholds()  # once: the loop below runs once per record
        for record in read_output(predictions):
            _decide(record, calibration, thresholds, vocab, model, writer, review, report)
        writer.close()
    report.annotations = writer.count
    if config.review_output is not None:
        report.review_output = config.review_output
        report.review_tasks = _write_review(config.review_output, review, calibration, report.model_id)
    return report


def _format(config: EnrichConfig) -> str:
    suffix = config.output.suffix.lower().lstrip(".")
    fmt = config.format or suffix
    if fmt not in ("jsonld", "jsonl"):
        raise ConfigError(
            f"{config.output}: annotations are written as .jsonld (a collection) or .jsonl (one a line); or set format"
        )
    return fmt


def _check_outputs(config: EnrichConfig, predictions: Path) -> None:
    if not (config.inputs or config.table or config.query):
        raise ConfigError("nothing to enrich: give image files, folders or URLs, or `table`, or `query`")
    if config.resume or config.shard:  # shards share the folder; their journal minds their parts
        return
    for path in (config.output, predictions):
        if path.exists():
            raise DatasetError(
                f"{path} already exists: pass `resume` to carry on that enrichment, or choose another `output`"
            )
    if config.review_output is not None and config.review_output.exists():
        raise DatasetError(f"{config.review_output} already exists: choose another `review_output` (or `resume`)")


def _check_vocabulary(calibration: Calibration, vocab: dict[str, str], source: Path | None) -> None:
    """Every class that can be emitted needs a concept URI to be a body."""
    missing = [c.name for c in calibration.per_class if c.threshold is not None and c.name not in vocab]
    if missing:
        where = str(source) if source else "the built-in vocabulary"
        raise CalibrationError(
            f"no concept URI for class(es) {', '.join(missing)} in {where}: pass `vocab` FILE "
            'with {"class": "concept URI"} for every class of the run'
        )


def _predict_config(config: EnrichConfig, predictions: Path) -> PredictConfig:
    shared = config.model_dump(include=set(InputSettings.model_fields) | {"run", "inputs", "resume"})
    shared["image_dir"] = config.image_dir or config.output.with_name(f"{config.output.stem}_images")
    return PredictConfig(**shared, output=predictions)


def _decide(
    record: dict[str, Any],
    calibration: Calibration,
    thresholds: np.ndarray,
    vocab: dict[str, str],
    model: dict[str, Any],
    writer: _AnnotationWriter,
    review: _ReviewQueue,
    report: EnrichReport,
) -> None:
    report.records += 1
    target = _target(record)
    if target is None:  # a file or URL that is no record: nothing a catalogue could attach a label to
        report.not_records += 1
        return
    classes = calibration.classes
    probs = np.array([record["probabilities"][c] for c in classes])
    emitted = calibration.task.emitted(probs, thresholds)
    if not emitted:
        report.abstained += 1
        review.abstained(record, probs, classes)
        return
    report.labelled += 1
    for c in emitted:
        name = classes[c]
        writer.write(
            annotation(
                target, vocab[name], float(probs[c]), {**model, "class": name, "threshold": float(thresholds[c])}
            )
        )
        report.per_class[name] = report.per_class.get(name, 0) + 1
    margin = min(float(probs[c] - thresholds[c]) for c in emitted)
    review.labelled(record, probs, classes, emitted, margin)


def _target(record: dict[str, Any]) -> dict[str, str] | str | None:
    """The record (and the image of it that was classified, when that has a web address), or None.

    Europeana wants a target's scope and source together, the scope being the record; a local file named by
    eic download still names its record, but has no web address to give as the source."""
    image = record["image"]
    web = image.lower().startswith(("http://", "https://"))
    record_id = record.get("ID") or (None if web else record_id_of(Path(image).name))
    scope = record.get("URI") or (record_uri(record_id) if record_id else None)
    if scope is None:
        return None
    return {"scope": scope, "source": image} if web else scope


def annotation(target: dict[str, str] | str, concept: str, confidence: float, model: dict[str, Any]) -> dict[str, Any]:
    """One W3C Web Annotation tagging a record (or its image) with a concept, as Europeana's Annotations API
    takes it."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    scope = target if isinstance(target, str) else target["scope"]
    agent = {"type": "Software", "name": SOFTWARE}
    return {
        "@context": ANNO_CONTEXT,
        "type": "Annotation",
        "motivation": "tagging",
        # Not "id": Europeana treats an item with an id as an update of an existing annotation.
        "canonical": f"urn:uuid:{uuid.uuid5(CANONICAL_NS, '|'.join((model['id'], scope, concept)))}",
        "body": {"type": "SpecificResource", "source": concept, "purpose": "tagging"},
        "target": target,
        "creator": agent,
        "created": now,
        "generator": agent,
        "generated": now,
        CONFIDENCE: round(confidence, 6),
        MODEL: model,
    }


class _AnnotationWriter:
    """Streams annotations: one a line (jsonl), or the items of one AnnotationCollection's first page."""

    def __init__(self, handle: TextIO, fmt: str, label: str) -> None:
        self.handle, self.fmt, self.count = handle, fmt, 0
        if fmt == "jsonld":
            head = json.dumps(
                {
                    "@context": ANNO_CONTEXT,
                    "type": "AnnotationCollection",
                    "label": f"{SOFTWARE} enrichments ({label})",
                },
                ensure_ascii=False,
            )
            handle.write(head[:-1] + ', "first": {"type": "AnnotationPage", "startIndex": 0, "items": [\n')

    def write(self, item: dict[str, Any]) -> None:
        text = json.dumps(item, ensure_ascii=False)
        if self.fmt == "jsonld":
            self.handle.write((",\n" if self.count else "") + text)
        else:
            self.handle.write(text + "\n")
        self.count += 1

    def close(self) -> None:
        if self.fmt == "jsonld":
            self.handle.write(f'\n]}}, "total": {self.count}}}\n')


class _ReviewQueue:
    """Every abstained record, plus the ``n`` labelled records with the smallest margin over their threshold."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tasks: list[dict[str, Any]] = []
        self._least: list[tuple[float, int, dict[str, Any]]] = []  # a max-heap on margin, by negation
        self._seen = 0

    def abstained(self, record: dict[str, Any], probs: np.ndarray, classes: list[str]) -> None:
        top = int(probs.argmax())
        self.tasks.append(_task(record, [classes[top]], float(probs[top]), "abstained"))

    def labelled(
        self, record: dict[str, Any], probs: np.ndarray, classes: list[str], emitted: list[int], margin: float
    ) -> None:
        if not self.n:
            return
        self._seen += 1
        task = _task(record, [classes[c] for c in emitted], float(min(probs[c] for c in emitted)), "least certain")
        entry = (-margin, self._seen, task)
        if len(self._least) < self.n:
            heapq.heappush(self._least, entry)
        elif -margin > self._least[0][0]:
            heapq.heapreplace(self._least, entry)

    def all(self) -> list[dict[str, Any]]:
        least = [task for _, _, task in sorted(self._least, key=lambda e: (-e[0], e[1]))]
        return self.tasks + least


def _task(record: dict[str, Any], suggestion: list[str], score: float, reason: str) -> dict[str, Any]:
    """A Label Studio task with the model's suggestion as a pre-annotation."""
    record_id = record.get("ID") or record_id_of(Path(record["image"]).name) or ""
    data = {
        "image": record["image"],
        "ID": record_id,
        "URI": record.get("URI") or (record_uri(record_id) if record_id else ""),
        "reason": reason,
    }
    # Result ids must differ across a project's tasks: derive one from the record.
    result_id = hashlib.sha1((record_id or record["image"]).encode()).hexdigest()[:10]
    return {
        "data": data,
        "predictions": [
            {
                "score": round(score, 6),
                "result": [
                    {
                        "id": result_id,
                        "type": "choices",
                        "from_name": CHOICES_NAME,
                        "to_name": "image",
                        "value": {"choices": suggestion},
                    }
                ],
            }
        ],
    }


def _write_review(path: Path, review: _ReviewQueue, calibration: Calibration, model_id: str) -> int:
    tasks = review.all()
    version = f"{SOFTWARE} {model_id}"
    for task in tasks:
        task["predictions"][0]["model_version"] = version
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with atomic_path(labelling_config_path(path)) as tmp:
        tmp.write_text(labelling_config(calibration.classes, calibration.task.multilabel), encoding="utf-8")
    return len(tasks)


def labelling_config_path(review: Path) -> Path:
    return review.with_name(f"{review.stem}.labelling.xml")


def labelling_config(classes: list[str], multilabel: bool) -> str:
    """The Label Studio labelling interface the review tasks are made for."""
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    kind = "multiple" if multilabel else "single"
    return (
        f'<View>\n  <Image name="image" value="$image"/>\n  <Text name="record" value="$ID"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="image" choice="{kind}" showInline="true">\n{choices}\n'
        "  </Choices>\n</View>\n"
    )
