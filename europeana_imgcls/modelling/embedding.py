"""``eic embed``: one vector per image from a frozen pretrained backbone, its classifier head removed.

Most museums have no GPU. Embedding every image once and fitting a light head per fold (``eic train
--method linear-probe|knn``) turns a k-fold protocol of hours into minutes. Images are read by the same
pipeline as training (draft decoding, resize, normalisation, DataLoader; CUDA-aware), and every vector is
journaled as it comes (``core/journal.py``: ``OUT.journal/``), so an interrupted run carries on with
``resume``. With ``shard`` I/N a run embeds only the images whose file name hashes to its shard, into its
shard's part; a run without ``shard`` and with ``resume`` finds them done and writes the table.

The table has ``image, category, ID, provider, embedding``; ``OUT.embedding.json`` beside it says which
backbone, weights and input size made it, so a run never mixes vectors of different backbones.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field, PositiveFloat, StrictInt, model_validator
from torch import nn

from ..core.config import EmbedConfig, Mode, RuntimeSettings, public_dict
from ..core.errors import ConfigError, DatasetError
from ..core.journal import Journal, Output, Records
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, claim_sidecar
from ..core.progress import RATE, Rate, progress_bar
from ..core.sidecars import Sidecar, read_typed
from ..core.tables import atomic_path, sidecar, write_json
from ..core.version import __version__
from ..datasets.folders import ModelInput
from ..datasets.imageset import ImageSet, provider_of
from ..datasets.tasks import task_for
from .models import build_model, get_arch, set_head, sized_for_model
from .runtime import autocast_dtype, inference_loader, resolve_device

EMBEDDINGS_FORMAT: Final = "europeana-imgcls/embeddings-v1"
EMBEDDINGS = OutputKind(
    "embeddings", "an embeddings table", recognise=lambda path: sidecar(path, "embedding").is_file()
)


@dataclass
class EmbedReport:
    output: Path
    images: int = 0
    embedded: int = 0
    already_done: int = 0
    unreadable: int = 0
    dim: int = 0
    seconds: float = 0.0
    shard: str | None = None  # a shard's run leaves its part of the journal for the merging run
    journal: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def feature_model(arch: str, weights: str, input_size: int | None = None) -> nn.Module:
    """The backbone of ``arch`` with ``weights`` (for ``input_size`` images: a timm transformer is built for them)
    and the classifier head replaced by the identity.

    With ``weights`` none the random weights are seeded (in a forked RNG, the caller's left alone), so two
    runs embed with the same backbone: a table and a run fitted on it always agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, 1, weights, input_size)
    set_head(model, arch, nn.Identity())
    return model.eval()


@torch.inference_mode()
def feature_size(model: nn.Module, input_size: int) -> int:
    """How many numbers ``model`` (a ``feature_model``) gives an image: one blank image through it."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return int(model(torch.zeros(1, 3, input_size, input_size, device=device)).flatten(1).shape[1])


@torch.inference_mode()
def batches(
    model: nn.Module,
    images: ImageSet,
    input_size: int,
    mean: Any,
    std: Any,
    device: torch.device,
    settings: RuntimeSettings,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch, in order: the positions in ``images``, their embeddings (float32) and whether each could be
    decoded. One loader for all the images, so its workers start once and its prefetching never drains."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = inference_loader(images, input_size, device, settings)
    dtype = autocast_dtype(device, settings.amp)
    to_model = ModelInput(mean, std, device)
    for inputs, labels, index in loader:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            vectors = model(to_model(inputs)).float().cpu().numpy()
        yield index.numpy(), vectors, np.asarray(images.task.readable(labels))


def compute(
    model: nn.Module,
    images: ImageSet,
    input_size: int,
    mean: Any,
    std: Any,
    device: torch.device,
    settings: RuntimeSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N x D, float32) of ``images`` and a mask of those that could be decoded; a bar ("embed") while
    it works (a probe run's only long wait but its splits)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with progress_bar(settings.quiet, RATE, transient=True) as bar:
        rate = Rate()
        task = bar.add_task("embed", total=len(images), rate=rate)
        for part in batches(model, images, input_size, mean, std, device, settings):
            parts.append(part)
            rate.add(len(part[0]))
            bar.advance(task, len(part[0]))
    return _joined(parts)


def _joined(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, dtype=bool)
    return np.concatenate([v for _, v, _ in parts]), np.concatenate([ok for _, _, ok in parts])


def embed(config: EmbedConfig) -> EmbedReport:
    """Embed every image of ``config.data_dir`` into ``config.output``; see the module docstring."""
    if config.output.suffix.lower() != ".parquet":
        raise ConfigError(f"{config.output}: embeddings are written as .parquet")
    config = sized_for_model(config)  # a timm model's own input size, unless one is given
    arch = get_arch(config.arch)
    # Each image is decoded as it is embedded (what fails is counted there): the scan reads headers alone, so a
    # shard does not decode the whole shared folder first.
    images = task_for(config.mode).scan(config.data_dir, config.labels, whole=False)
    if not images.paths:
        raise DatasetError(f"{config.data_dir}: no readable images to embed")
    meta = describe(config.arch, config.weights, config.input_size, arch.mean, arch.std, images)
    claim_sidecar(config.output, "embedding", option="output")  # a file of the user's of that name is kept
    shard = config.shard_spec
    journal = Journal(
        config.output.with_name(config.output.name + ".journal"),
        what=f"the embeddings into {config.output}",
        shard=shard,
        settings={**config.resume_settings(), "classes": images.classes},
        hint="resume with the settings it was started with, or delete that journal folder",
        check=_is_record,
    )
    report = EmbedReport(config.output, images=len(images), shard=config.shard, journal=journal.folder)
    # Files the scan found do not decode (cut short): counted as one that fails in a batch is, by their shard.
    report.unreadable = sum(shard is None or shard.owns(p.name) for p in images.unreadable)
    with journal.open(config.resume, embeddings_output(config.output)):  # a new table, or `resume` adds to it
        done = journal.done()  # a shard's own part; or every part, and a finished table's rows taken in
        # A file's name, not its path, picks its shard: the same on every machine that mounts the folder. What
        # is done is known by where a path points, not by how it was typed (`data` one day, `/mnt/data` the next).
        keys = [str(p.resolve()) for p in images.paths]
        report.already_done = sum(key in done for key in keys)
        todo = [
            i
            for i, (p, key) in enumerate(zip(images.paths, keys, strict=True))
            if key not in done and (shard is None or shard.owns(p.name))
        ]
        device = resolve_device(config.device)
        model = feature_model(config.arch, config.weights, config.input_size)
        started = time.perf_counter()
        wanted = images.subset(todo)
        with progress_bar(config.quiet, RATE) as bar:
            rate = Rate()
            task = bar.add_task("embed", total=len(todo), rate=rate)
            for index, vectors, readable in (
                batches(model, wanted, config.input_size, arch.mean, arch.std, device, config) if todo else ()
            ):
                _journal_batch(journal, wanted, index, vectors, readable, report)
                rate.add(len(index))
                bar.advance(task, len(index))
        report.seconds = time.perf_counter() - started
        now = {key: i for i, key in enumerate(keys)}
        # A shard leaves its part; the table holds the folder as it is now (see ``_as_the_folder_is``).
        journal.merge(lambda records: _write_table(config, meta, _as_the_folder_is(records, images, now), report))
    return report


def embeddings_output(output: Path) -> Output:
    """The embeddings table as its journal sees it: its rows read back as they are journaled, each known by
    where its image's path points."""

    def read() -> Iterator[tuple[str, dict[str, Any]]]:
        table, _ = read_embeddings(output)
        for row in table.iter_rows(named=True):
            yield str(Path(row["image"]).resolve()), _record(row, np.asarray(row["embedding"], dtype=np.float32))

    return Output(output, EMBEDDINGS, read)


def _write_table(config: EmbedConfig, meta: dict[str, Any], records: Records, report: EmbedReport) -> None:
    """The merge's rows, an image once, into the table; its sidecar first, so that a kill between the two never
    leaves a table without the sidecar that says what made it (a table `resume` would refuse as not eic's)."""
    table = _merged(records)
    report.dim = int(table["embedding"].list.len().item(0) if table.height else 0)
    write_json(
        sidecar(config.output, "embedding"),
        {**meta, "dim": report.dim, "data_dir": str(config.data_dir.resolve()), "config": public_dict(config)},
    )
    with atomic_path(config.output) as tmp:
        table.write_parquet(tmp)


def _as_the_folder_is(records: Records, images: ImageSet, now: dict[str, int]) -> Records:
    """The journaled rows of the images the folder holds now, labelled as it labels them now: an image moved to
    another class (a review applied) or set aside since an earlier run is not kept under its old class or path
    (the moved one is embedded again under its new path)."""
    for key, record in records:
        if key in now:
            yield key, {**record, **image_row(images, now[key])}


def _journal_batch(
    journal: Journal,
    images: ImageSet,
    index: np.ndarray,
    vectors: np.ndarray,
    readable: np.ndarray,
    report: EmbedReport,
) -> None:
    """One batch's vectors into the journal, an image a record (an unreadable one is counted, not kept)."""
    for i, vector, ok in zip(index.tolist(), vectors, readable, strict=True):
        if not ok:
            report.unreadable += 1
            continue
        journal.append(str(images.paths[i].resolve()), _record(image_row(images, i), vector))
        report.embedded += 1
    journal.flush()


def _record(row: dict[str, Any], vector: np.ndarray) -> dict[str, Any]:
    """A journal record: the row's text and its vector as base64 of little-endian float32 (exact, compact)."""
    return {
        **{c: row.get(c) for c in TEXT_COLUMNS},
        "embedding": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii"),
    }


def _is_record(value: Any) -> bool:
    """A journal record as ``_record`` writes it (the journal drops any other value as a damaged line)."""
    return (
        isinstance(value, dict)
        and all(isinstance(value.get(c, 0), str | None) for c in TEXT_COLUMNS)
        and isinstance(value.get("embedding"), str)
        and len(base64.b64decode(value["embedding"], validate=True)) % 4 == 0  # whole float32s
    )


def _merged(records: Records) -> pl.DataFrame:
    """The merge's rows as a table: an image once (by where its path points), in part order."""
    rows, vectors = [], []
    for _, record in records:
        rows.append(record)
        vectors.append(np.frombuffer(base64.b64decode(record["embedding"]), dtype="<f4"))
    return table_of(rows, vectors)


def describe(arch: str, weights: str, input_size: int, mean: Any, std: Any, images: ImageSet) -> dict[str, Any]:
    """What makes embeddings comparable: two tables (or a table and a run) must agree on all of it."""
    return {
        "format": EMBEDDINGS_FORMAT,
        "arch": arch,
        "weights": weights if weights in ("imagenet", "none") else str(Path(weights).resolve()),
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        "mode": images.task.name,
        "classes": images.classes,
        "software": f"europeana-imgcls {__version__}",
        # A timm backbone: its name, pretrained tag, data config and the digest of its weights.
        **({"timm": said} if (said := get_arch(arch).provenance(weights)) else {}),
    }


TEXT_COLUMNS = ("image", "category", "ID", "provider")


def image_row(images: ImageSet, i: int) -> dict[str, str | None]:
    """The text columns of image ``i``'s row: its path, label(s), record ID and provider."""
    path = images.paths[i]
    return {
        "image": str(path),
        "category": images.task.truth_text(images.labels[i], images.classes),
        "ID": record_id_of(path.name),
        "provider": provider_of(path),
    }


def table_of(rows: list[dict[str, Any]], vectors: list[np.ndarray] | np.ndarray) -> pl.DataFrame:
    """The embeddings table: the text columns of ``rows`` and one float32 vector each."""
    frame = pl.DataFrame({c: [row[c] for row in rows] for c in TEXT_COLUMNS}, schema={c: pl.Utf8 for c in TEXT_COLUMNS})
    return frame.with_columns(
        pl.Series("embedding", [np.asarray(v, np.float32).tolist() for v in vectors], dtype=pl.List(pl.Float32))
    )


def rows_frame(images: ImageSet, vectors: np.ndarray, readable: np.ndarray) -> pl.DataFrame:
    """One row per decodable image: path, label(s), record ID, provider and the vector."""
    keep = np.flatnonzero(readable)
    return table_of([image_row(images, int(i)) for i in keep], vectors[keep])


class TimmWeights(Sidecar):
    """What an embeddings table says of the timm weights that made it: enough to tell other weights under the same
    name (a file replaced, a Hub snapshot moved, another default tag)."""

    pretrained_tag: str | None = Field(None, max_length=200)
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class _EmbedSettings(Sidecar):
    """Of eic embed's settings in the sidecar, what a reader uses: the folder as the command was given it, which
    the table's paths begin with."""

    data_dir: str | None = Field(None, max_length=4096)


class EmbeddingSidecar(Sidecar):
    """``NAME.embedding.json``: what made an embeddings table (tables from before the format tag read as this
    one). Backbone fields may be absent (a table made elsewhere); what is there is of the right kind."""

    format: Literal["europeana-imgcls/embeddings-v1"] = EMBEDDINGS_FORMAT
    arch: str | None = None
    weights: str | None = None
    input_size: int | None = Field(None, ge=8, le=4096)
    mean: tuple[float, float, float] | None = None
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = None
    mode: Mode | None = None
    classes: list[str] | None = Field(None, max_length=100_000)
    dim: StrictInt | None = Field(None, ge=1)
    timm: TimmWeights | None = None
    data_dir: str | None = Field(None, max_length=4096)  # the folder embedded, resolved (eic embed's tables)
    config: _EmbedSettings | None = None

    @model_validator(mode="after")
    def _distinct_classes(self) -> EmbeddingSidecar:
        classes, task = self.classes, task_for(self.mode)
        # A name a table cell reads back as one class: not blank, and one word where a cell holds several.
        if classes is not None and (
            not all(c.strip() and len(task.classes_in(c)) == 1 for c in classes) or len(set(classes)) != len(classes)
        ):
            raise ValueError("classes are not a list of distinct class names")
        return self


def embedding_meta(path: Path) -> dict[str, Any]:
    """What made an embeddings table (its sidecar), checked."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such embeddings table (eic embed writes one)")
    meta_path = sidecar(path, "embedding")
    meta = read_typed(
        meta_path,
        EmbeddingSidecar,
        what=f"the sidecar of {path.name}, which says which backbone made it",
        remedy="run eic embed again",
    )
    return meta.model_dump(mode="json", exclude_none=True)


def read_embeddings(path: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """An embeddings table and what made it."""
    meta = embedding_meta(path)
    try:
        table = pl.read_parquet(path, glob=False)
    except Exception as exc:  # polars raises many kinds; all mean "unreadable"
        raise DatasetError(f"{path}: cannot read it ({type(exc).__name__})") from None
    missing = {"image", "category", "embedding"} - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: not an eic embeddings table (no {', '.join(sorted(missing))} column)")
    _check_rows(path, table, meta)
    return table, meta


def _check_rows(path: Path, table: pl.DataFrame, meta: dict[str, Any]) -> None:
    """Before any work, the whole table: rows there are, each with an image, a category its sidecar's task and
    classes admit, and a vector of finite numbers, all of one length, the one the sidecar names."""
    if table.height == 0:
        raise DatasetError(f"{path}: the table holds no rows: run eic embed on a folder with images")
    kind = table.schema["embedding"]
    if not (isinstance(kind, (pl.List, pl.Array)) and kind.inner is not None and kind.inner.is_numeric()):
        raise DatasetError(f"{path}: its embedding column holds {kind}, not lists of numbers: run eic embed again")
    for column in ("image", "category"):
        if table.schema[column] != pl.Utf8:
            raise DatasetError(f"{path}: its {column} column holds {table.schema[column]}, not text")
        _refuse_rows(path, table, table[column].is_null(), f"no {column}")
    lengths = table["embedding"].list.len() if isinstance(kind, pl.List) else pl.Series([kind.size] * table.height)
    _refuse_rows(path, table, table["embedding"].is_null(), "no vector")
    _refuse_rows(path, table, lengths == 0, "an empty vector")
    if lengths.n_unique() > 1:
        shortest, longest = int(lengths.min()), int(lengths.max())  # type: ignore[arg-type]
        raise DatasetError(
            f"{path}: its vectors differ in length ({shortest} to {longest}), so they are not one "
            "embedding: run eic embed again"
        )
    dim = int(lengths[0])
    if meta.get("dim") is not None and meta["dim"] != dim:
        raise DatasetError(
            f"{path}: its vectors have {dim} numbers but its sidecar says {meta['dim']}: run eic embed again"
        )
    vectors = table["embedding"] if isinstance(kind, pl.List) else table["embedding"].arr.to_list()
    finite = vectors.list.eval(pl.element().cast(pl.Float64).is_finite().fill_null(False)).list.all()
    _refuse_rows(path, table, ~finite, "a vector with numbers that are not finite (NaN, infinite or null)")
    _check_categories(path, table, meta)


def _check_categories(path: Path, table: pl.DataFrame, meta: dict[str, Any]) -> None:
    """Every row's category among the sidecar's classes, as its task reads a cell (the whole cell, or each word)."""
    classes = meta.get("classes")
    if classes is None:
        return
    known = set(classes)
    cells = table["category"].to_list()
    task = task_for(meta.get("mode"))
    unknown = [any(name not in known for name in task.classes_in(cell)) for cell in cells]
    what = f"a {task.unit} that is not one of its sidecar's classes ({_some(classes)})"
    _refuse_rows(path, table, pl.Series(unknown), what)


def _some(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _refuse_rows(path: Path, table: pl.DataFrame, bad: pl.Series, what: str) -> None:
    """Refuse the table where any row is ``bad``, naming how many and the first."""
    rows = np.flatnonzero(bad.fill_null(True).to_numpy())
    if len(rows):
        image = table["image"][int(rows[0])] if table.schema["image"] == pl.Utf8 else None
        first = f"row {rows[0] + 1}" + (f" ({image})" if image else "")
        raise DatasetError(f"{path}: {len(rows)} row(s) with {what}, e.g. {first}: run eic embed again")


def matrix(table: pl.DataFrame) -> np.ndarray:
    return np.asarray(table["embedding"].to_list(), dtype=np.float32).reshape(table.height, -1)


BACKBONE = ("arch", "weights", "input_size")  # what a table records of the backbone that made it


def backbone_of(meta: dict[str, Any], given: dict[str, Any], source: Path) -> dict[str, Any]:
    """The backbone settings of a run on an embeddings table: the table's, which the run must share; a setting
    ``given`` explicitly that differs is refused, naming both."""
    recorded = {key: meta.get(key) for key in BACKBONE}
    missing = [key for key, value in recorded.items() if value is None]
    if missing:
        raise DatasetError(f"{source}: its sidecar does not say its {', '.join(missing)}: run eic embed again")
    wanted = {k: v if k != "weights" or v in ("imagenet", "none") else str(Path(v).resolve()) for k, v in given.items()}
    differ = {k: v for k, v in wanted.items() if k in recorded and v != recorded[k]}
    if differ:
        said = "; ".join(f"`{k}` {v} given, {recorded[k]} in {source.name}" for k, v in differ.items())
        raise ConfigError(
            f"{source} was embedded with another backbone ({said}): leave those settings out to use the table's, "
            "or embed again with yours"
        )
    return recorded


def check_compatible(meta: dict[str, Any], arch: str, weights: str, input_size: int, source: Path) -> None:
    """Refuse embeddings made by another backbone, weights or input size, naming both."""
    wanted = {
        "arch": arch,
        "weights": weights if weights in ("imagenet", "none") else str(Path(weights).resolve()),
        "input_size": input_size,
    }
    differ = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    recorded = (meta.get("timm") or {}).get("weights_sha256")
    if not differ and recorded:  # the same name, path or tag may hold other weights than those that embedded
        now = (get_arch(arch).provenance(weights) or {}).get("weights_sha256")
        if now and now != recorded:
            differ["weights_sha256"] = (recorded[:12] + "...", now[:12] + "...")
    if differ:
        said = "; ".join(f"{k}: {have} in {source.name}, {want} for this run" for k, (have, want) in differ.items())
        raise DatasetError(
            f"{source} was embedded with another backbone ({said}): embed again with the run's "
            "settings, or train with the embeddings' ones"
        )
