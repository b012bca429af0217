"""``eic predict``: label new images (files, folders, URLs, harvest tables or Search API results).

Predictions are journaled batch by batch (``core/journal.py``: ``<output>.journal/``) and written to the output
at the end, so an interrupted run loses nothing and ``resume`` carries on; the journal's settings (the run's
models by digest, the split, ``top_k``, ``threshold``) keep a resume or a merge from mixing two models. Under
``torchrun`` each rank labels a share of the inputs into its own part and rank 0 merges them. With ``shard``
I/N (separate jobs, on any scheduler) a run labels only its shard's records into the shard's part and leaves it
there; a run without ``shard`` and with ``resume`` counts every shard's rows as done and merges them into the
output.

The inputs are gathered by ``inputs``, the models loaded by ``runtimes`` (an ``inference.Ensemble``, whatever
runs it), the figures drawn by ``heatmaps``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import PredictConfig
from ..core.errors import ConfigError, DatasetError
from ..core.journal import Journal, KeySet, Output, Records, input_key, json_line
from ..core.outputs import OutputKind, refuse_beside_classes
from ..core.progress import RATE, Rate, progress_bar
from ..core.recognise import csv_header
from ..core.tables import atomic_path, read_csv_rows, write_csv
from ..datasets.tasks import unlabelled
from ..europeana.search_api import is_record_id, record_uri
from ..modelling.processes import Dist, under_torchrun
from ..modelling.run_folder import RunFolder
from .heatmaps import claim_gradcam_dir, figures
from .inference import Ensemble, ModelRequest, SplitModel
from .inputs import Item, check_arguments, gather
from .runtimes import check_runtime, load_models

if TYPE_CHECKING:
    import torch


def is_predictions(path: Path) -> bool:
    """Whether a file is predictions eic wrote (predict's, or enrich's beside its annotations): a CSV whose header
    names the image and its scores, or JSON Lines whose first row does."""
    if path.suffix.lower() == ".jsonl":
        with path.open("rb") as handle:
            row = json.loads(handle.readline(1 << 16))
        return isinstance(row, dict) and "image" in row
    header = csv_header(path)
    return "image" in header and bool({"confidence", "probabilities"} & set(header))


PREDICTIONS = OutputKind("predictions", "predictions", recognise=is_predictions)

MakeRows = Callable[[Sequence[SplitModel], "PredictConfig"], "Rows"]


@dataclass
class PredictReport:
    output: Path
    predicted: int = 0
    already_done: int = 0
    unreadable: list[str] = field(default_factory=list)
    not_fetched: int = 0
    heatmaps: int = 0
    splits: list[str] = field(default_factory=list)
    shard: str | None = None  # a shard's rows stay in its journal part until a run without shard merges them
    journal: Path | None = None
    model_id: str = ""  # the digest of the run's checkpoints that labelled
    engine: str = "PyTorch"  # what computed the labels: the runtime, and float32 or int8 for an export

    def rows(self) -> Iterator[dict[str, Any]]:
        """The labelled rows of the output, read one at a time (a run over millions stays in the file)."""
        return read_output(self.output)


class Rows:
    """How one image's probabilities become one output row: the top classes (and labels), as predict writes."""

    calibrated = False  # probabilities with each split's temperature applied

    def __init__(self, models: Sequence[SplitModel], config: PredictConfig) -> None:
        self.classes = models[0].classes
        self.task = models[0].task
        self.columns = list(self.task.prediction_columns)
        self.k = min(config.top_k, len(self.classes))
        # An ensemble whose splits tuned thresholds decides with their mean. The splits of a run share a task (see
        # inference), so all have thresholds or none does.
        tuned = [t for m in models if (t := m.thresholds(config.threshold)) is not None]
        self.thresholds = np.mean(tuned, axis=0) if tuned else None

    def row(self, item: Item, probs: np.ndarray) -> dict[str, Any]:
        classes = self.classes
        order = np.argsort(-probs)[: self.k]
        result = {
            "image": item.image,
            "prediction": classes[order[0]],
            "confidence": float(probs[order[0]]),
            "top_k": [[classes[c], round(float(probs[c]), 6)] for c in order],
            "ID": item.record,  # a file eic download named: the record it shows
            "URI": item.uri or (record_uri(item.record) if item.record and is_record_id(item.record) else None),
        }
        if self.thresholds is not None:
            result["labels"] = [classes[c] for c in self.task.emitted(probs, self.thresholds)]
            result["probabilities"] = {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)}
        return result


def predict(config: PredictConfig) -> PredictReport:
    """Label every input image with ``config.run``; see the module docstring."""
    report = run_predictions(config, Rows)
    refuse_nothing_labelled(report, None if config.shard else config.output)  # a shard's output is its part
    return report


def refuse_nothing_labelled(report: PredictReport, output: Path | None) -> None:
    """When nothing was labelled and something could not be read or fetched: one line and a non-zero exit, not an
    empty output (which is removed: it holds no more than a header, and a retry must not be refused). An output
    that holds rows (earlier runs', carried on with resume) stays as it is."""
    if report.predicted or report.already_done or not (report.unreadable or report.not_fetched):
        return
    if output is not None and not _holds_rows(output):
        output.unlink(missing_ok=True)
    named = ", ".join(report.unreadable[:3]) + (", ..." if len(report.unreadable) > 3 else "")
    raise DatasetError(
        "nothing could be labelled: "
        + (f"{named} cannot be read as images" if named else f"{report.not_fetched} image(s) could not be fetched")
    )


def _holds_rows(output: Path) -> bool:
    """Whether ``output`` holds a labelled row (anything it cannot tell: kept, as holding one)."""
    try:
        return next(read_output(output), None) is not None
    except FileNotFoundError:
        return False
    except (OSError, ValueError, DatasetError):
        return True


def run_predictions(config: PredictConfig, rows: MakeRows) -> PredictReport:
    """Predict's machinery (inputs, fetching, batching, ensembles, resume, shards) with rows made by ``rows``."""
    suffix = config.output.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"{config.output}: predictions are written as .csv or .jsonl")
    if not (config.inputs or config.table or config.query):
        raise ConfigError(f"nothing to {config.stage}: give image files, folders or URLs, or `table`, or `query`")
    check_arguments(config.run, config.inputs)
    for given in config.inputs:  # its journal and fetched images beside it would be read as a class next time
        refuse_beside_classes(config.output, Path(given))
    check_runtime(config, explain=config.gradcam_dir is not None)
    claim_gradcam_dir(config)
    with _placed(config.device) as (device, world):
        return _predict(config, device, world, rows)


@contextmanager
def _placed(device_name: str) -> Iterator[tuple[str | torch.device, Dist]]:
    """Where labelling runs and this process's place: under torchrun, the rank's device and process group (which
    load torch); alone, the device as named (auto, cpu, cuda...), which the runtime that loads the models resolves
    (PyTorch's with torch, an export's with its own library: a process that never loads torch)."""
    if not under_torchrun():
        yield device_name, Dist()
        return
    from ..modelling.runtime import distributed

    with distributed(device_name) as (device, world):
        yield device, world


def _predict(config: PredictConfig, device: str | torch.device, world: Dist, make_rows: MakeRows) -> PredictReport:
    digest = RunFolder(config.run).model_id()  # hashes the checkpoints once: the export is checked against it too
    request = ModelRequest(config.run, device, config.split, config.amp, digest, config.onnx_model)
    models = load_models(config.runtime, request)
    rows = make_rows(models, config)
    report = PredictReport(
        config.output, splits=models.splits, shard=config.shard, model_id=digest, engine=models[0].engine()
    )
    items, report.not_fetched = gather(config, world)
    journal = output_journal(config, digest, rows.columns, world, models)
    report.journal = journal.folder
    output = predictions_output(config.output, rows.columns)
    with journal.open(config.resume, output):  # a new output, or `resume` adds to it
        done = _previous(config, journal, world, output)
        report.already_done = sum(1 for item in items if item.key in done)
        mine = [item for item in items[world.rank :: world.world] if item.key not in done]
        # One loader for the whole shard: its workers start once, and each batch is journaled as it comes.
        writer = _Writer(journal, config.output.suffix.lower(), rows.columns)
        _label(mine, _Labelling(models, config, rows, writer, report))
        if world.active:
            journal.close()  # rank 0 merges every rank's part: it must be free
            counts = [report.predicted, len(report.unreadable)]
            report.predicted = sum(c[0] for c in world.gather(counts))
        # The run without shard (its rank 0) merges every part; a shard leaves its part for it.
        journal.merge(lambda records: _write_output(config.output, rows.columns, records))
    world.barrier()  # nobody reads the output before rank 0 has merged it
    return report


def output_journal(config: PredictConfig, digest: str, columns: list[str], world: Dist, models: Ensemble) -> Journal:
    """The journal of ``config.output``: what its writers must share is the model (by digest; exported: by its
    files too, float32 or int8), its classes' columns and the settings that shape a row."""
    identity = models.journal_identity()  # a runtime that runs other files than the checkpoints names them
    return Journal(
        config.output.with_name(config.output.name + ".journal"),
        what=f"the predictions into {config.output}",
        settings={
            **config.resume_settings(),
            **config.runtime_settings(),
            **identity,
            "model": digest,
            "columns": columns,
        },
        shard=config.shard_spec,
        rank=world.rank if world.active else None,
        hint="resume with the same run and the same `split`, `top_k` and `threshold`, or choose another `output`",
        check=lambda row: isinstance(row, dict) and set(row) == set(columns),  # else a damaged line, not a stray row
    )


@dataclass
class _Labelling:
    """What labelling a shard's images takes: the ensemble, the settings, how a row is made and where it goes."""

    models: Ensemble
    config: PredictConfig
    rows: Rows
    writer: _Writer
    report: PredictReport

    def write(self, items: list[Item], probs: np.ndarray, ok: np.ndarray) -> None:
        """A batch's rows, journaled; an image that could not be read, said in the report."""
        for item, row, good in zip(items, probs, ok, strict=True):
            if not good:
                self.report.unreadable.append(item.image)
                continue
            self.writer.write(self.rows.row(item, row))
            self.report.predicted += 1
        self.writer.flush()


def _label(items: list[Item], job: _Labelling) -> None:
    """Label ``items`` batch by batch (and draw their figures), journaling each batch as it comes."""
    models, config = job.models, job.config
    images = unlabelled([item.path for item in items], models[0].classes)
    loader = models.batches(images, config)  # as the runtime reads them: PyTorch's loader, or numpy arrays
    with (
        progress_bar(config.quiet, RATE, transient=True) as bar,
        figures(models, config, job.rows.thresholds) as drawing,
    ):
        rate = Rate()
        task = bar.add_task("label" + (" + Grad-CAM" if drawing else ""), total=len(items), rate=rate)
        for inputs, labels, index in loader:
            batch = [items[i] for i in index.tolist()]
            first = drawing.forward(inputs) if drawing else None  # the first split's logits, where they serve
            # An ensemble averages the probabilities of its split models.
            probs = models.probabilities(inputs, job.rows.calibrated, first).mean(axis=0)
            ok = np.asarray(images.task.readable(labels))
            job.write(batch, probs, ok)
            if drawing:
                job.report.heatmaps += drawing.draw(batch, probs, ok)
            rate.add(len(index))
            bar.update(task, advance=len(index))


# ---------------------------------------------------------------------------------------------
# Output


class _Writer:
    """An output row as the output's format writes it, journaled under the input's key."""

    def __init__(self, journal: Journal, suffix: str, columns: list[str]) -> None:
        self.journal, self.csv, self.columns = journal, suffix == ".csv", columns

    def write(self, row: dict[str, Any]) -> None:
        self.journal.append(input_key(row.get("ID"), row["image"]), self.cells(row))

    def cells(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.csv:
            return {c: row.get(c) for c in self.columns}
        cells = {
            "confidence": f"{row['confidence']:.6f}",
            "top_k": json.dumps(row["top_k"]),
            "labels": " ".join(row.get("labels", [])),
            "probabilities": json.dumps(row.get("probabilities")),
            "ID": row["ID"] or "",
            "URI": row["URI"] or "",
        }
        return {c: cells.get(c, row.get(c)) for c in self.columns}

    def flush(self) -> None:
        self.journal.flush()


def predictions_output(output: Path, columns: list[str]) -> Output:
    """The predictions file as its journal sees it: its rows read back keyed as they are journaled."""

    def read() -> Iterator[tuple[str, dict[str, Any]]]:
        return ((input_key(row.get("ID") or None, row["image"]), row) for row in read_output(output, columns))

    return Output(output, PREDICTIONS, read)


def _previous(config: PredictConfig, journal: Journal, world: Dist, output: Output) -> KeySet:
    """The keys already predicted: a shard's own, or (the merging run) every shard's and rank's, and the rows of
    a finished output that ``resume`` adds to (the journal took them in as it opened)."""
    world.barrier()  # no rank writes before every rank has looked for old parts, and all see what rank 0 took in
    merged = config.resume and config.shard is not None and config.output.exists()
    return journal.done(also=_keys(output) if merged else ())  # a shard run after a merge: the merged rows are done


def _keys(output: Output) -> Iterator[str]:
    return (key for key, _ in output.read()) if output.read else iter(())


def read_output(output: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a predictions file (CSV or JSONL), one at a time; a CSV row of other columns is skipped. A JSONL
    line that is no row eic writes (damaged or edited since: a resume reads it back) is one line naming it."""
    if output.suffix.lower() == ".jsonl":
        with output.open("rb") as handle:  # lines end at "\n" alone, whatever characters the values hold
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield _jsonl_row(output, number, line)
        return
    for row in read_csv_rows(output):
        if columns is None or list(row) == columns:
            yield row


def _jsonl_row(output: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:  # not JSON, or not UTF-8
        problem = f"not JSON ({str(exc).splitlines()[0]:.80})"
    else:
        if isinstance(row, dict) and isinstance(row.get("image"), str):
            return row
        problem = "not a row of predictions with its image"
    raise DatasetError(
        f"{output}, line {number}: {problem}; the file is damaged: run the command again into another output, without "
        "`resume`"
    )


def _write_output(output: Path, columns: list[str], records: Records) -> None:
    """The merge's rows, each input once, into the output: written whole or not at all."""
    if output.suffix.lower() == ".csv":
        write_csv(output, columns, (row for _, row in records))
    else:
        with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            handle.writelines(json_line(row) + "\n" for _, row in records)
