"""``eic predict``: label new images (files, folders, URLs, harvest tables or Search API results).

Predictions are journaled batch by batch (``core/journal.py``: ``<output>.journal/``) and written to the output
at the end, so an interrupted run loses nothing and ``resume`` carries on; the journal's settings (the run's
models by digest, the split, ``top_k``, ``threshold``) keep a resume or a merge from mixing two models. Under
``torchrun`` each rank labels a share of the inputs into its own part and rank 0 merges them. With ``shard``
I/N (separate jobs, on any scheduler) a run labels only its shard's records into the shard's part and leaves it
there; a run without ``shard`` and with ``resume`` counts every shard's rows as done and merges them into the
output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import torch
import torch.distributed as dist

from ..core.config import DownloadConfig, PredictConfig
from ..core.errors import ConfigError, DatasetError
from ..core.journal import Journal, KeySet, Output, Records, input_key, json_line
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, claim
from ..core.progress import progress_bar
from ..core.recognise import csv_header, is_run, what_is
from ..core.tables import atomic_path, check_table_suffix, read_csv_rows, read_table, write_csv
from ..datasets.folders import list_images, load_image
from ..datasets.imageset import UNREADABLE, ImageSet
from ..datasets.tasks import task_for
from ..europeana.search_api import PAGE_ROWS, SearchClient, first, is_record_id, record_uri
from ..modelling.run_folder import RunFolder
from ..modelling.runtime import Dist, autocast_dtype, distributed, inference_loader
from .inference import RunModel, SplitModel, load_run, probabilities
from .onnx_runtime import OnnxModel, load_export

if TYPE_CHECKING:
    from ..modelling.explain import CamSession

IMAGE_DIR_MARKER = ".eic-predict-images"  # an image folder predict made (and may write inputs and labels in)


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


@dataclass(frozen=True)
class Item:
    image: str  # what the user gave: a path or a URL
    path: Path  # the local file to read (a URL's once fetched)
    id: str | None = None
    uri: str | None = None

    @functools.cached_property
    def key(self) -> str:  # cached: a local file's key resolves its path, and runs look it up more than once
        return input_key(self.record, self.image)

    @property
    def record(self) -> str | None:
        """The record the image shows: its ID, or the one a file named by eic download encodes."""
        return self.id or (
            None if self.image.lower().startswith(("http://", "https://")) else record_id_of(self.path.name)
        )


MakeRows = Callable[[Sequence[SplitModel], "PredictConfig"], "Rows"]


def _unique(items: list[Any], key: Callable[[Any], str]) -> list[Any]:
    """``items`` in order, each key once: an input given twice is labelled (and annotated) once."""
    seen: set[str] = set()
    kept = []
    for item in items:
        known = key(item)
        if known not in seen:
            seen.add(known)
            kept.append(item)
    return kept


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
        # An ensemble of multi-label splits decides with the mean of their tuned thresholds.
        # The splits of a run share a mode (see inference), so all have thresholds or none does.
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
    empty output (which is removed: it holds no more than a header, and a retry must not be refused)."""
    if report.predicted or report.already_done or not (report.unreadable or report.not_fetched):
        return
    if output is not None:
        output.unlink(missing_ok=True)
    named = ", ".join(report.unreadable[:3]) + (", ..." if len(report.unreadable) > 3 else "")
    raise DatasetError(
        "nothing could be labelled: "
        + (f"{named} cannot be read as images" if named else f"{report.not_fetched} image(s) could not be fetched")
    )


def run_predictions(config: PredictConfig, rows: MakeRows) -> PredictReport:
    """Predict's machinery (inputs, fetching, batching, ensembles, resume, shards) with rows made by ``rows``."""
    suffix = config.output.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"{config.output}: predictions are written as .csv or .jsonl")
    if not (config.inputs or config.table or config.query):
        raise ConfigError(f"nothing to {config.stage}: give image files, folders or URLs, or `table`, or `query`")
    check_arguments(config.run, config.inputs)
    if config.onnx_model is not None and config.runtime != "onnx":
        raise ConfigError("`onnx_model` is what `runtime` onnx runs: pass `runtime` onnx too (or leave it out)")
    if config.runtime == "onnx" and config.gradcam_dir is not None:
        raise ConfigError(
            "`gradcam_dir` needs the PyTorch model's gradients: leave out `runtime` onnx to draw heatmaps"
        )
    with distributed(config.device) as (device, world):
        return _predict(config, device, world, rows)


def load_models(config: PredictConfig, device: torch.device, model_id: str) -> list[SplitModel]:
    """The run's chosen split models, in PyTorch or (``runtime`` onnx) from the run's export of ``model_id``."""
    if config.runtime == "onnx":
        return list(load_export(config.run, config.onnx_model, config.split, device, model_id))
    return list(load_run(config.run, device, config.split))


def check_arguments(run: Path, inputs: list[str]) -> None:
    """Before any work: a run and images given the other way round, or a table given as images, said with what
    to pass instead (the command would otherwise find nothing to read and end with an empty output)."""
    runs = [given for given in inputs if is_run(Path(given))]
    if runs and not is_run(run):
        raise DatasetError(
            f"{run} is {what_is(run) or 'not a training run'} and {runs[0]} is a training run: the run comes "
            "first, then the images"
        )
    for given in inputs:
        kind = what_is(Path(given))
        if kind == "a table":
            raise DatasetError(f"{given} is a table: pass it as `table` {given}")
        if kind and not kind.startswith(("an image", "a folder of class folders")):
            raise DatasetError(f"{given} is {kind}, not images")


def _predict(config: PredictConfig, device: torch.device, world: Dist, make_rows: MakeRows) -> PredictReport:
    digest = RunFolder(config.run).model_id()  # hashes the checkpoints once: the export is checked against it too
    models = load_models(config, device, digest)
    rows = make_rows(models, config)
    report = PredictReport(config.output, splits=[m.split for m in models], shard=config.shard, model_id=digest)
    items, report.not_fetched = _gather(config, world)
    journal = output_journal(config, digest, rows.columns, world, models)
    report.journal = journal.folder
    output = predictions_output(config.output, rows.columns)
    with journal.open(config.resume, output):  # a new output, or `resume` adds to it
        done = _previous(config, journal, world, output)
        report.already_done = sum(1 for item in items if item.key in done)
        mine = [item for item in items[world.rank :: world.world] if item.key not in done]
        # One loader for the whole shard: its workers start once, and each batch is journaled as it comes.
        _label(mine, models, config, device, _Writer(journal, config.output.suffix.lower(), rows.columns), report, rows)
        if world.active:
            journal.close()  # rank 0 merges every rank's part: it must be free
            counts = [report.predicted, len(report.unreadable)]
            box: list[Any] = [None] * world.world
            dist.all_gather_object(box, counts)
            report.predicted = sum(c[0] for c in box)
        # The run without shard (its rank 0) merges every part; a shard leaves its part for it.
        journal.merge(lambda records: _write_output(config.output, rows.columns, records))
    if world.active:
        dist.barrier()  # nobody reads the output before rank 0 has merged it
    return report


def output_journal(
    config: PredictConfig, digest: str, columns: list[str], world: Dist, models: Sequence[SplitModel] = ()
) -> Journal:
    """The journal of ``config.output``: what its writers must share is the model (by digest; exported: by its
    files too, float32 or int8), its classes' columns and the settings that shape a row."""
    exported = [m.sha256 for m in models if isinstance(m, OnnxModel)]
    return Journal(
        config.output.with_name(config.output.name + ".journal"),
        what=f"the predictions into {config.output}",
        settings={
            **config.resume_settings(),
            **config.runtime_settings(),
            **({"onnx_files": exported} if exported else {}),
            "model": digest,
            "columns": columns,
        },
        shard=config.shard_spec,
        rank=world.rank if world.active else None,
        hint="resume with the same run and the same `split`, `top_k` and `threshold`, or choose another `output`",
        check=lambda row: isinstance(row, dict) and set(row) == set(columns),  # else a damaged line, not a stray row
    )


def _label(
    items: list[Item],
    models: list[SplitModel],
    config: PredictConfig,
    device: torch.device,
    writer: _Writer,
    report: PredictReport,
    rows: Rows,
) -> None:
    size = models[0].preprocessing[0]
    images = ImageSet(
        [item.path for item in items], np.zeros(len(items), dtype=np.int64), models[0].classes, task_for("single-label")
    )  # labels unknown: every image is read as class 0
    # Exported models run on ONNX Runtime's own device, and take their pixels from the CPU.
    loader = inference_loader(images, size, device, config, decode=config.runtime == "torch")
    dtype = autocast_dtype(device, config.amp)
    # Figures are encoded in a thread (zlib lets go of the GIL) while the next batch's heatmaps are computed.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="eic-figures") as saver,
        progress_bar(config.quiet, "{task.fields[rate]:.1f} images/s", transient=True) as bar,
        _cam_session(models[0], config) as session,
    ):
        task = bar.add_task("label" + (" + Grad-CAM" if config.gradcam_dir else ""), total=len(items), rate=0.0)
        started = time.perf_counter()

        def advance(images: int) -> None:
            bar.update(task, advance=images, rate=bar.tasks[0].completed / max(time.perf_counter() - started, 1e-9))

        pending: list[Future[None]] = []
        _label_batches(
            loader, items, models, config, device, dtype, writer, report, rows, (session, saver, pending), advance
        )
        for done in pending:
            done.result()  # a figure that could not be written is an error, not a silent gap


@contextmanager
def _cam_session(model: SplitModel, config: PredictConfig) -> Iterator[CamSession | None]:
    """The heatmaps' session on the first split's model, when figures are asked for."""
    if config.gradcam_dir is None or not isinstance(model, RunModel):  # exported models draw none (refused above)
        yield None
        return
    # Imported when figures are asked for: the grad-cam package (and what it imports) costs seconds of every start.
    from ..modelling.explain import cam_session
    from ..modelling.models import get_arch

    config.gradcam_dir.mkdir(parents=True, exist_ok=True)
    net = model.model.float()
    with cam_session(net, get_arch(model.meta.arch).cam_layer(net), config.cam_method) as session:
        yield session


_Figures = tuple["CamSession | None", ThreadPoolExecutor, list[Future[None]]]


def _label_batches(
    loader: Any,
    items: list[Item],
    models: list[SplitModel],
    config: PredictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    writer: _Writer,
    report: PredictReport,
    rows: Rows,
    figures: _Figures,
    advance: Callable[[int], None],
) -> None:
    session = figures[0]
    for inputs, labels, index in loader:
        cam_logits = None
        if session is not None:
            # One forward pass labels with the first split and draws its heatmaps (at full precision: with
            # mixed precision the labelling pass is another one, so that figures never change a label).
            assert isinstance(models[0], RunModel)  # figures are refused with exported models
            logits = session.forward(models[0].model_input(device)(inputs))
            cam_logits = logits if dtype is None else None
        # An ensemble averages the probabilities of its split models.
        probs = probabilities(models, inputs, device, dtype, rows.calibrated, cam_logits).mean(axis=0)
        ok = (labels != UNREADABLE).numpy()
        for row, i, good in zip(probs, index.tolist(), ok, strict=True):
            if not good:
                report.unreadable.append(items[i].image)
                continue
            writer.write(rows.row(items[i], row))
            report.predicted += 1
        writer.flush()
        if session is not None:
            report.heatmaps += _explain(
                models[0].classes, probs, ok, [items[i] for i in index.tolist()], config, rows.thresholds, figures
            )
        advance(len(index))


def _explain(
    classes: list[str],
    probs: np.ndarray,
    ok: np.ndarray,
    items: list[Item],
    config: PredictConfig,
    thresholds: np.ndarray | None,
    figures: _Figures,
) -> int:
    """One figure per readable image of the batch the session last saw: the image, then a heatmap per class at
    least ``threshold`` probable (multi-label: per predicted label), at most ``top_k``, at least the most
    probable class.

    Heatmaps are computed a batch at a time (one backward pass per rank of class, not per image) and the
    figures composed with Pillow: matplotlib's layout and PNG writing cost more than the heatmaps themselves."""
    from ..modelling.explain import TILE, figure, save_figure  # loaded by _cam_session already

    session, saver, pending = figures
    folder = config.gradcam_dir
    assert folder is not None and session is not None
    orders = []
    for row in probs:
        cuts = (
            thresholds
            if thresholds is not None
            else np.full(len(row), 0.3 if config.threshold is None else config.threshold)
        )
        orders.append([int(c) for c in np.argsort(-row)[: config.top_k] if row[c] >= cuts[c]] or [int(row.argmax())])
    maps: list[list[np.ndarray]] = [[] for _ in items]
    for rank in range(max((len(o) for o, good in zip(orders, ok, strict=True) if good), default=0)):
        # Every image takes part in the pass (an image's gradient is its own); those without a class of this
        # rank are given their first, and that heatmap is not kept.
        drawn = session.heatmaps([order[rank] if len(order) > rank else order[0] for order in orders])
        for i, order in enumerate(orders):
            if len(order) > rank:
                maps[i].append(drawn[i])
    count = 0
    for item, row, order, heat, good in zip(items, probs, orders, maps, ok, strict=True):
        if not good:
            continue
        title = f"{item.record or Path(item.image).name} · {classes[order[0]]} {row[order[0]]:.2f}"
        picture = load_image(item.path, TILE, keep_aspect=True)
        image = figure(picture, heat, [f"{classes[c]} {row[c]:.2f}" for c in order], title)
        pending.append(saver.submit(save_figure, image, folder / _figure_name(item), title))
        count += 1
    return count


def _figure_name(item: Item) -> str:
    """Readable and unique: the record's (or file's, or URL's last part's) name plus a short hash of where it
    came from."""
    record = item.record
    stem = re.sub(r"[^\w.-]+", "_", record.strip("/")) if record else Path(_last_part(item.image)).stem
    return f"{stem[:80]}_{hashlib.sha1(item.key.encode()).hexdigest()[:8]}.jpg"


# ---------------------------------------------------------------------------------------------
# Inputs


def _gather(config: PredictConfig, world: Dist) -> tuple[list[Item], int]:
    items: list[Item] = []
    urls: list[dict[str, str | None]] = []
    for given in config.inputs:
        if given.lower().startswith(("http://", "https://")):
            urls.append({"ID": _url_id(given), "URL": given, "URI": None, "image": given})
            continue
        path = Path(given)
        if path.is_dir():
            items += [Item(str(p), p) for p in list_images(path)]
        elif path.is_file():
            items.append(Item(str(path), path))
        else:
            raise DatasetError(f"{given}: no such image file, folder or URL")
    if config.table is not None:
        check_table_suffix(config.table)
        table = read_table(config.table, required=("ID", "URL"), columns=config.columns)
        for row in table.iter_rows(named=True):
            if row["ID"]:
                urls.append(
                    {
                        "ID": row["ID"],
                        "URL": row["URL"],
                        "URI": table_uri(row["ID"], row.get("URI"), config.item_uri),
                        "preview": row.get("preview"),
                        "image": row["URL"] or row["ID"],
                        "record": "yes",
                    }
                )
    if config.query:
        urls += _query(config)
    urls = _unique(urls, lambda row: row["ID"] or "")  # a record listed twice is fetched once
    shard = config.shard_spec
    if shard is not None:  # a file by its name (the same on every machine), a record by its ID
        items = [item for item in items if shard.owns(Path(item.image).name)]
        urls = [row for row in urls if shard.owns(row["ID"] or "")]
    failed = 0
    if urls:
        fetched, failed = _fetch(urls, config, world)
        items += fetched
    items = _unique(items, lambda item: item.key)
    if not items and not failed:
        raise DatasetError("no images found in the inputs")
    return items, failed


def table_uri(record_id: str, given: str | None, template: str | None) -> str | None:
    """The URI of a table row's record: the table's own, else ``template``'s (a museum's IDs), else Europeana's
    for a Europeana record ID; None when nothing says which record the row is."""
    if given:
        return given
    if template:
        return template.replace("{ID}", quote(record_id, safe="/:@-._~"))
    return record_uri(record_id) if is_record_id(record_id) else None


def _url_id(url: str) -> str:
    """A bare URL's stand-in record ID: its last path part and a hash, so its fetched file gets a readable
    name (not ``http:[ph][ph]host[ph]...``) and two URLs never share one."""
    return f"url-{hashlib.sha1(url.encode()).hexdigest()[:10]}-{_last_part(url)[:60]}"


def _last_part(url: str) -> str:
    """A URL's (or path's) last part, query dropped, in characters any file system takes."""
    last = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in last) or "image"


def _query(config: PredictConfig) -> list[dict[str, str | None]]:
    """Up to ``n`` records with an image, level after level, as harvest asks for them."""
    found: list[dict[str, str | None]] = []
    with SearchClient(
        config.api_url,
        config.api_key.get_secret_value(),
        timeout=config.timeout,
        retries=config.retries,
        max_quota_wait=config.max_quota_wait * 3600,
    ) as client:
        for level in config.reusability:
            client.expect(-(-(config.n - len(found)) // PAGE_ROWS))  # the key's quota is paced to what is left
            for item in client.iter_items(config.query or "*", ["TYPE:IMAGE"], reusability=level):
                if len(found) >= config.n:
                    return found
                url = first(item.get("edmIsShownBy"))
                if url:
                    found.append(
                        {
                            "ID": item["id"],
                            "URL": url,
                            "URI": record_uri(item["id"]),
                            "preview": first(item.get("edmPreview")),
                            "image": url,
                            "record": "yes",
                        }
                    )
    return found


def _fetch(rows: list[dict[str, str | None]], config: PredictConfig, world: Dist) -> tuple[list[Item], int]:
    """Download (once, on rank 0) the images of URL inputs into the image folder; map them back."""
    import polars as pl

    from ..acquisition.download import download, file_name
    from ..core.tables import write_table

    folder = config.image_dir or config.output.with_name(f"{config.output.stem}_images")
    shard = config.shard_spec
    table = folder / (f"inputs.{shard.tag}.csv" if shard else "inputs.csv")  # shards share the folder
    if world.main:
        _check_image_dir(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / IMAGE_DIR_MARKER).touch()  # first: shards starting at once see the folder is predict's
        write_table(
            pl.DataFrame(
                [{k: r.get(k) for k in ("ID", "URL", "preview")} for r in rows],
                schema={"ID": pl.Utf8, "URL": pl.Utf8, "preview": pl.Utf8},
            ),
            table,
        )
        download(
            DownloadConfig(
                table=table,
                output_dir=folder,
                mode="multi-label",
                quiet=config.quiet,
                fallback_preview=True,
                max_side=512,
                source=config.source,
                thumbnail_url=config.thumbnail_url,
                rate=config.rate,
                shard=config.shard,
                timeout=config.timeout,
                retries=config.retries,
            )
        )
    if world.active:
        dist.barrier()
    items, failed = [], 0
    for row in rows:
        path = folder / file_name(row["ID"] or "")
        if path.is_file():
            # A URL given as an input names no record: its ID is only a file name
            items.append(Item(row["image"] or "", path, row["ID"] if row.get("record") else None, row.get("URI")))
        else:
            failed += 1
    return items, failed


def _written_by_predict(config_file: Path, folder: Path) -> bool:
    """Whether a download's config file says it fetched one of predict's input tables into ``folder``."""
    try:
        written = Path(json.loads(config_file.read_text(encoding="utf-8")).get("table")).resolve()
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return written.parent == folder.resolve() and written.name.startswith("inputs") and written.suffix == ".csv"


def _check_image_dir(folder: Path) -> None:
    """The image folder is predict's own (it writes inputs.csv, labels.csv and config.json there; a shard
    its own inputs and config): refuse a folder that holds anything else, such as a training set, rather
    than overwrite its files."""
    claim(folder, IMAGE_DIR, resume=True, option="image_dir")


def _is_image_dir(folder: Path) -> bool:
    return (folder / IMAGE_DIR_MARKER).is_file() or any(
        _written_by_predict(path, folder) for path in folder.glob("config*.json")
    )


IMAGE_DIR = OutputKind("predict-images", "the images eic predict fetched", folder=True, recognise=_is_image_dir)


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
    if world.active:
        dist.barrier()  # no rank writes before every rank has looked for old parts, and all see what rank 0 took in
    merged = config.resume and config.shard is not None and config.output.exists()
    return journal.done(also=_keys(output) if merged else ())  # a shard run after a merge: the merged rows are done


def _keys(output: Output) -> Iterator[str]:
    return (key for key, _ in output.read()) if output.read else iter(())


def read_output(output: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a predictions file (CSV or JSONL), one at a time; a CSV row of other columns is skipped."""
    if output.suffix.lower() == ".jsonl":
        with output.open("rb") as handle:  # lines end at "\n" alone, whatever characters the values hold
            for line in handle:
                if line.strip():
                    yield json.loads(line)
        return
    for row in read_csv_rows(output):
        if columns is None or list(row) == columns:
            yield row


def _write_output(output: Path, columns: list[str], records: Records) -> None:
    """The merge's rows, each input once, into the output: written whole or not at all."""
    if output.suffix.lower() == ".csv":
        write_csv(output, columns, (row for _, row in records))
    else:
        with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            handle.writelines(json_line(row) + "\n" for _, row in records)
