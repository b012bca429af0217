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

import heapq
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..core.config import EnrichConfig, InputSettings, PredictConfig
from ..core.errors import CalibrationError, ConfigError, DatasetError
from ..core.journal import json_line
from ..core.naming import record_id_of
from ..core.outputs import REVIEW_TASKS, OutputKind, absolute, claim
from ..core.tables import atomic_path, read_table, table_columns
from ..core.version import HOMEPAGE, __version__
from ..europeana.annotations import (
    ANNO_CONTEXT,
    CONFIDENCE,
    MODEL,
    MODEL_ID_PREFIX,
    NS,
    http_url,
    is_probability,
    model_generator,
    record_uri_problem,
    web_address_problem,
)
from ..europeana.search_api import ITEM_BASE, is_record_id, record_uri
from ..europeana.vocabulary import load_vocabulary
from ..modelling.calibration import Calibration, check_precision, load_calibration
from ..modelling.processes import main_process
from .inference import SplitModel
from .inputs import Item, check_arguments
from .prediction import PREDICTIONS, Rows, read_output, refuse_nothing_labelled, run_predictions
from .review import ImageLinks, claim_labelling_config, review_task, shown_in_label_studio, write_review_tasks

SOFTWARE = f"europeana-imgcls {__version__}"
CANONICAL_NS = uuid.UUID("5d7c3f0e-4a43-4b8e-9d1c-2f4a1f0c9e11")
PREDICTION_COLUMNS = ["image", "ID", "URI", "probabilities"]
log = logging.getLogger(__name__)


def _is_annotations(path: Path) -> bool:
    """Whether a file is annotations eic enrich wrote: its predictions file beside it, and Web Annotations in it."""
    if not path.with_name(f"{path.stem}.predictions.jsonl").is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    return ANNO_CONTEXT.encode() in head or head.strip() == b""


ANNOTATIONS = OutputKind("annotations", "annotations", recognise=_is_annotations)


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
    refused: dict[str, int] = field(default_factory=dict)  # records not annotated, by reason
    annotations: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    review_output: Path | None = None
    review_tasks: int = 0
    review_local: int = 0  # review tasks showing a local file's path, which Label Studio cannot open
    unreadable: list[str] = field(default_factory=list)
    not_fetched: int = 0
    already_done: int = 0
    precision_target: float = 0.0
    never_emitted: list[str] = field(default_factory=list)
    shard: str | None = None  # a shard's run journals its records; the merging run writes the annotations
    engine: str = "PyTorch"  # what computed the probabilities: the runtime, and float32 or int8 for an export


class CalibratedRows(Rows):
    """Rows of the predictions file: the image, the record and every class's calibrated probability (no
    heatmaps, no tuned thresholds: the calibration decides)."""

    calibrated = True

    def __init__(self, models: Sequence[SplitModel], config: PredictConfig) -> None:
        self.classes, self.task = models[0].classes, models[0].task
        self.columns, self.k, self.thresholds = PREDICTION_COLUMNS, len(self.classes), None

    def row(self, item: Item, probs: np.ndarray) -> dict[str, Any]:
        return {
            "image": item.image,
            "ID": item.record,  # a file eic download named: the record it shows
            "URI": item.uri,
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)},
        }


def enrich(config: EnrichConfig) -> EnrichReport:
    """Enrich the inputs of ``config`` with ``config.run``; see the module docstring."""
    fmt = _format(config)
    check_arguments(config.run, config.inputs)
    if config.precision is not None:
        check_precision(config.precision)
    predictions = config.output.with_name(f"{config.output.stem}.predictions.jsonl")
    _check_outputs(config, predictions)
    links = _review_links(config)
    _check_targets(config)
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
    refuse_nothing_labelled(predicted, predictions)
    report = EnrichReport(
        config.output,
        predictions,
        model_id=predicted.model_id,
        splits=predicted.splits,
        engine=predicted.engine,
        unreadable=predicted.unreadable,
        not_fetched=predicted.not_fetched,
        already_done=predicted.already_done,
        precision_target=calibration.precision_target,
        never_emitted=[c.name for c in calibration.per_class if c.threshold is None],
    )
    model = ModelInfo(
        report.model_id, config.run.resolve().name, predicted.splits, calibration.precision_target, predicted.engine
    )
    review = _ReviewQueue(config.review_n)
    with atomic_path(config.output) as tmp, tmp.open("w", encoding="utf-8") as handle:
        writer = _AnnotationWriter(handle, fmt, config.profile, model)
        annotator = _Annotator(calibration, vocab, model, writer, review, report)
        for record in read_output(predictions):
            annotator.decide(record)
        writer.close()
    report.annotations = writer.count
    if config.review_output is not None:
        report.review_output = config.review_output
        tasks = review.all()
        report.review_tasks = _write_review(config.review_output, tasks, calibration, report.model_id, links)
        report.review_local = sum(not shown_in_label_studio(t["data"]["image"]) for t in tasks)
    return report


def _format(config: EnrichConfig) -> str:
    suffix = config.output.suffix.lower().lstrip(".")
    fmt = config.format or suffix
    if fmt not in ("jsonld", "jsonl"):
        raise ConfigError(
            f"{config.output}: annotations are written as .jsonld (a collection) or .jsonl (one a line); or set format"
        )
    return fmt


def _check_targets(config: EnrichConfig) -> None:
    """Before any work: every annotation needs a record to target, which a museum's own IDs do not name."""
    template = config.item_uri
    if template and config.profile == "europeana" and not template.startswith(ITEM_BASE + "/"):
        raise ConfigError(
            f"`item_uri` {template} names records outside Europeana, which the europeana profile (Europeana's "
            "Annotations API) cannot target: pass `profile` w3c"
        )
    if config.table is None or template or "URI" in table_columns(config.table, config.columns):
        return
    ids = read_table(config.table, required=("ID",), columns=config.columns)["ID"].drop_nulls()
    if len(ids) and not any(is_record_id(i) for i in ids):
        raise DatasetError(
            f"{config.table}: its IDs are not Europeana record IDs (e.g. {ids[0]}), so no annotation would know its "
            "record: give the table a URI column (`columns` URI=your_column) or an `item_uri` template such as "
            "https://collection.example.org/object/{ID}"
        )


def _check_outputs(config: EnrichConfig, predictions: Path) -> None:
    if not (config.inputs or config.table or config.query):
        raise ConfigError("nothing to enrich: give image files, folders or URLs, or `table`, or `query`")
    resume = config.resume or config.shard is not None  # shards share the folder; their journal minds their parts
    if config.review_output is not None and absolute(config.review_output) in (
        absolute(config.output),
        absolute(predictions),
    ):
        raise ConfigError(
            f"`review_output` {config.review_output} and the annotations ({config.output}) or the predictions "
            f"they are made from ({predictions}) would be one file: give the review tasks another name"
        )
    for path, kind, option in (
        (config.output, ANNOTATIONS, "output"),
        (predictions, PREDICTIONS, "output"),
        (config.review_output, REVIEW_TASKS, "review_output"),
    ):
        if path is not None:
            claim(path, kind, resume=resume, option=option)
    if config.review_output is not None:
        claim_labelling_config(config.review_output)


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


@dataclass
class _Annotator:
    """What deciding a record takes: the calibration, the vocabulary and the model, and where the annotations, the
    review tasks and the counts go."""

    calibration: Calibration
    vocab: dict[str, str]
    model: ModelInfo
    writer: _AnnotationWriter
    review: _ReviewQueue
    report: EnrichReport

    def __post_init__(self) -> None:
        self.thresholds = self.calibration.thresholds()  # once: ``decide`` runs once per record

    def decide(self, record: dict[str, Any]) -> None:
        """A record's annotations (its emitted classes), or an abstention; counted either way."""
        report, thresholds = self.report, self.thresholds
        report.records += 1
        target = _target(record, europeana_only=self.writer.profile == "europeana")
        if target is None:  # a file or URL that is no record: nothing a catalogue could attach a label to
            report.not_records += 1
            return
        if isinstance(target, Refused):
            report.refused[target.reason] = report.refused.get(target.reason, 0) + 1
            return
        classes = self.calibration.classes
        probs = _probabilities(record, classes, report.predictions)
        emitted = self.calibration.task.emitted(probs, thresholds)
        if not emitted:
            report.abstained += 1
            self.review.abstained(record, probs, classes)
            return
        report.labelled += 1
        for c in emitted:
            name = classes[c]
            confidence, threshold = float(probs[c]), float(thresholds[c])
            self.writer.write(
                annotation(target, self.vocab[name], confidence, self.model, name, threshold, self.writer.profile)
            )
            report.per_class[name] = report.per_class.get(name, 0) + 1
        margin = min(float(probs[c] - thresholds[c]) for c in emitted)
        self.review.labelled(record, probs, classes, emitted, margin)


def _probabilities(record: dict[str, Any], classes: list[str], source: Path) -> np.ndarray:
    """A record's calibrated probabilities, each a number between 0 and 1. A predictions file read back (a resume)
    may have been edited or damaged: no annotation may carry a confidence that is no probability (NaN included)."""
    given = record.get("probabilities")
    values = [given.get(c) if isinstance(given, dict) else None for c in classes]
    for name, value in zip(classes, values, strict=True):
        if not is_probability(value):
            who = str(record.get("ID") or record.get("image"))
            raise DatasetError(
                f"{source}: the probability of {name!r} for {who!r:.80} is {value!r:.40}, not a number between 0 "
                "and 1; the file is damaged: enrich again into another `output`, without `resume`"
            )
    return np.array(values, dtype=float)


@dataclass(frozen=True)
class Refused:
    """A record that is not annotated, and why."""

    reason: str


def _target(record: dict[str, Any], europeana_only: bool) -> dict[str, str] | str | Refused | None:
    """The record (and the image of it that was classified, when that has a web address), or None for an input
    that names no record, or why a record is refused.

    A Europeana record's target is derived from its ID, never taken as given: a ``URI`` that names another record
    is refused, so no annotation lands on a record it was not made for. A record of a museum's own table (an ID
    that is no Europeana record ID) is known by the URI its table or ``item_uri`` gave it, which must be an http(s)
    URI; the europeana profile, which Europeana's Annotations API takes, targets Europeana's records only. A local
    file named by eic download still names its record, but has no web address to give as the source."""
    image = record["image"]
    web = web_address_problem(image) is None  # as publish judges a source: a source it would refuse is left out
    remote = image.lower().startswith(("http://", "https://"))
    record_id = record.get("ID") or (None if remote else record_id_of(Path(image).name))
    if not record_id:
        return None
    given = record.get("URI")
    if is_record_id(record_id):
        scope = record_uri(record_id)
        if given and given != scope:
            return Refused("a URI that is not its record's item URI")
    elif not given:
        return Refused("an ID that is no Europeana record ID (/dataset/local), and no URI")
    elif not http_url(given):
        return Refused("a URI that is not an http(s) URI")
    else:
        scope = given
    if europeana_only and record_uri_problem(scope) is not None:  # publish's rule, so what enrich writes is sent
        return Refused("a record outside Europeana, which the europeana profile cannot target (use the w3c profile)")
    return {"scope": scope, "source": image} if web else scope


@dataclass(frozen=True)
class ModelInfo:
    """The model that labels, as every annotation names it."""

    digest: str
    run: str
    splits: list[str]
    precision_target: float
    engine: str = "PyTorch"  # what computed the probabilities (an int8 export's may cross a threshold float32's do not)

    @property
    def iri(self) -> str:
        return MODEL_ID_PREFIX + self.digest

    @property
    def generator(self) -> dict[str, str]:
        """The software agent of every annotation: an http(s) id and a name that say eic, its version and the
        model (Europeana keeps the generator, and drops eic's own properties)."""
        return {
            "id": model_generator(self.digest),  # what eic withdraw finds the model's annotations by
            "type": "Software",
            "name": f"{SOFTWARE}, model {self.digest}",
            "homepage": HOMEPAGE,
        }


def annotation(
    target: dict[str, str] | str,
    concept: str,
    confidence: float,
    model: ModelInfo,
    name: str,
    threshold: float,
    profile: str = "europeana",
) -> dict[str, Any]:
    """One W3C Web Annotation tagging a record (or its image) with a concept.

    The europeana profile is what Europeana's batch upload takes: no ``id`` (Europeana reads one as an update
    of an existing annotation), no ``creator`` (Europeana then names the token's user, the only one allowed to
    withdraw it). The w3c profile adds an ``id`` (the canonical IRI). eic's own properties are absolute IRIs,
    so a JSON-LD processor keeps them; Europeana drops them, and keeps the generator that names the model."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    scope = target if isinstance(target, str) else target["scope"]
    canonical = f"urn:uuid:{uuid.uuid5(CANONICAL_NS, '|'.join((model.digest, scope, concept)))}"
    return {
        "@context": ANNO_CONTEXT,
        **({"id": canonical} if profile == "w3c" else {}),
        "type": "Annotation",
        "motivation": "tagging",
        "canonical": canonical,
        "body": {"type": "SpecificResource", "source": concept, "purpose": "tagging"},
        "target": target,
        "created": now,
        "generator": model.generator,
        "generated": now,
        CONFIDENCE: round(confidence, 6),
        MODEL: {
            "id": model.iri,
            NS + "class": name,
            NS + "threshold": round(threshold, 6),
            NS + "precisionTarget": model.precision_target,
            NS + "run": model.run,
            NS + "splits": model.splits,
            NS + "engine": model.engine,
            NS + "software": SOFTWARE,
        },
    }


class _AnnotationWriter:
    """Streams annotations: one a line (jsonl); or one AnnotationPage (europeana: the body of Europeana's batch
    upload), or one AnnotationCollection with its first page (w3c, every part with an id)."""

    def __init__(self, handle: TextIO, fmt: str, profile: str, model: ModelInfo) -> None:
        self.handle, self.fmt, self.profile, self.count = handle, fmt, profile, 0
        if fmt != "jsonld":
            return
        if profile == "europeana":
            handle.write(f'{{"@context": "{ANNO_CONTEXT}", "type": "AnnotationPage", "items": [\n')
            return
        collection = f"urn:uuid:{uuid.uuid5(CANONICAL_NS, model.digest + '|collection|' + model.run)}"
        head = json.dumps(
            {
                "@context": ANNO_CONTEXT,
                "id": collection,
                "type": "AnnotationCollection",
                "label": f"{SOFTWARE} enrichments by model {model.digest} ({model.run})",
            }
        )
        page = json.dumps(
            {"id": f"{collection}:page:0", "type": "AnnotationPage", "partOf": collection, "startIndex": 0}
        )
        handle.write(head[:-1] + ', "first": ' + page[:-1] + ', "items": [\n')

    def write(self, item: dict[str, Any]) -> None:
        text = json_line(item)
        if self.fmt == "jsonld":
            self.handle.write((",\n" if self.count else "") + text)
        else:
            self.handle.write(text + "\n")
        self.count += 1

    def close(self) -> None:
        if self.fmt != "jsonld":
            return
        if self.profile == "europeana":
            self.handle.write("\n]}\n")
        else:
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
    return review_task(record_id, record["image"], suggestion, score, reason, record.get("URI"))


def _review_links(config: EnrichConfig) -> ImageLinks:
    """How the review tasks show a local image; an input they cannot reach is refused before any work."""
    links = ImageLinks.of(config.document_root, config.image_url)
    if config.review_output is not None:
        for given in config.inputs:
            if not given.lower().startswith(("http://", "https://")):
                links.check(Path(given))
    return links


def _write_review(
    path: Path, tasks: list[dict[str, Any]], calibration: Calibration, model_id: str, links: ImageLinks
) -> int:
    classes, task = calibration.classes, calibration.task
    return write_review_tasks(path, tasks, classes, task, f"{SOFTWARE} {model_id}", links)
