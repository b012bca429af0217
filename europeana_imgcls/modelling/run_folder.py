"""The run folder, typed: every path ``eic train`` writes and every later stage reads, and what a checkpoint
says about its model.

    RUN/
      summary.json  calibration.json  reliability.png  MODEL_CARD.md  report.html (eic report)
      backbone.pt  embeddings.parquet          (linear-probe and k-NN runs)
      onnx/                                    (eic export: split_<i>.onnx, model.json)
      split_<i>/
        config.json  class_index.json  metrics.json  history.csv  curves.png
        model.pt  last.pt (while the split trains)  test_predictions.csv  gradcam/

No other module spells these names: they ask a ``RunFolder`` or a ``SplitFolder`` (a split's name and the model's
come from ``core/run_names.py``, where ``core/recognise.py`` reads them too). A folder that holds a ``model.pt``
itself is one split of a run, and can stand for a run of one split wherever models are loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.config import TrainConfig, public_dict
from ..core.errors import ModelError
from ..core.recognise import what_is
from ..core.run_names import MODEL_FILE, SPLIT_GLOB, SPLIT_NAME, split_index, split_name
from ..core.tables import file_sha256

if TYPE_CHECKING:
    from .models import Arch  # torch: only its type here, so that the run's paths load without it

CHECKPOINT_FORMAT: Final = "europeana-imgcls/checkpoint-v1"
SPLIT_NAME_PATTERN: Final = SPLIT_NAME.pattern  # a split's name, for the formats that carry one (an export's sidecar)
DATA_DIR_RESOLVED: Final = "data_dir_resolved"  # in a split's config.json: its data folder, wherever a reader runs


def _under(name: Path, given: Path, where: Path) -> str:
    if name.is_absolute() or not name.is_relative_to(given):
        return str(name)
    return str(where / name.relative_to(given))


@dataclass(frozen=True)
class SplitFolder:
    """``RUN/split_<i>/``: one split's settings, model and scores."""

    path: Path
    index: int

    METRICS: ClassVar[str] = "metrics.json"  # written last: a split that has it is finished

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def class_index(self) -> Path:
        return self.path / "class_index.json"

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def last(self) -> Path:
        """The state a split's training resumes from; removed once the split is finished."""
        return self.path / "last.pt"

    @property
    def test_predictions(self) -> Path:
        return self.path / "test_predictions.csv"

    @property
    def gradcam(self) -> Path:
        return self.path / "gradcam"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def trained(self) -> bool:
        """Whether training has left anything worth keeping here (a model, a resumable state, scores)."""
        return self.model.is_file() or self.last.is_file() or self.finished

    def read_config(self) -> dict[str, Any]:
        return read_object(self.config)

    def images_named(self, names: list[str]) -> list[str]:
        """Image paths as the split's files name them, each as a path from anywhere: a run trained with its data
        folder given relative (``eic train data -o run``) named its test images relative to where it ran, and read
        from another folder they were other files, or none. Such a name is taken under the data folder the split
        recorded (``data_dir_resolved``); one it cannot place (or a damaged config.json) stays as it is."""
        try:
            config = self.read_config() if self.config.is_file() else {}
        except ModelError:
            return names  # said by whatever reads the settings themselves
        given, where = config.get("data_dir"), config.get(DATA_DIR_RESOLVED)
        if not isinstance(given, str) or not isinstance(where, str) or Path(given).is_absolute():
            return names
        return [_under(Path(name), Path(given), Path(where)) for name in names]

    def read_classes(self) -> list[str]:
        """The split's classes in the order of its outputs (``class_index.json``: each name and its index)."""
        index = read_json(self.class_index)
        if not (
            isinstance(index, dict)
            and all(isinstance(name, str) for name in index)
            and list(index.values()) == list(range(len(index)))
        ):
            raise ModelError(f"{self.class_index}: not a class index eic writes; the run folder is damaged")
        return list(index)

    def read_metrics(self) -> dict[str, Any]:
        return read_object(self.metrics)

    def read_temperature(self) -> float:
        """The split's fitted temperature (1 when it has none); anything but a positive number is a damaged run."""
        value = self.read_metrics().get("temperature", 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ModelError(
                f"{self.metrics}: its temperature is {str(value)[:40]!r}, not a positive number; "
                "the run folder is damaged"
            )
        return float(value)


FINISHED_SPLITS: Final = f"{SPLIT_GLOB}/{SplitFolder.METRICS}"  # what a run's finished splits are, for messages


@dataclass(frozen=True)
class RunFolder:
    """``RUN/``, as ``eic train`` writes it."""

    path: Path

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.json"

    @property
    def reliability(self) -> Path:
        return self.path / "reliability.png"

    @property
    def model_card(self) -> Path:
        return self.path / "MODEL_CARD.md"

    @property
    def backbone(self) -> Path:
        """The frozen backbone that the heads of a linear-probe or k-NN run share."""
        return self.path / "backbone.pt"

    @property
    def onnx(self) -> Path:
        """Where eic export writes the run's ONNX files and their sidecar by default."""
        return self.path / "onnx"

    @property
    def embeddings(self) -> Path:
        """The embeddings a probe run computed itself (eic audit's near-duplicate search reads them)."""
        return self.path / "embeddings.parquet"

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def split(self, index: int) -> SplitFolder:
        return SplitFolder(self.path / split_name(index), index)

    def splits(self) -> list[SplitFolder]:
        """The ``split_<i>`` folders in split order (other folders, ``split_x`` say, are not splits)."""
        if not self.path.is_dir():
            return []
        found = [
            SplitFolder(p, index)
            for p in self.path.iterdir()
            if p.is_dir() and (index := split_index(p.name)) is not None
        ]
        return sorted(found, key=lambda s: s.index)

    def finished_splits(self) -> list[SplitFolder]:
        return [s for s in self.splits() if s.finished]

    @property
    def is_split(self) -> bool:
        """A split folder given where a run is expected: it stands for a run of one split."""
        return (self.path / MODEL_FILE).is_file()

    def model_paths(self) -> list[Path]:
        """The split models in split order (a split folder: its own), or a ModelError naming what is missing."""
        if self.is_split:
            return [self.path / MODEL_FILE]
        paths = [s.model for s in self.splits() if s.model.is_file()]
        if not paths:
            raise ModelError(not_a_run(self.path))
        return paths

    def trained(self) -> bool:
        return any(s.trained for s in self.splits())

    def model_id(self) -> str:
        """A short digest of the run's checkpoint files: the same models, the same id. Predict's journal compares
        it, enrich's annotations and the model card name it, eic withdraw takes it."""
        # Asked by more than one part of a command (eic report's summary and its enrich thresholds), and the
        # checkpoints are tens of megabytes each: hashed once a version of them.
        found = [(path.resolve(), path.stat()) for path in self.model_paths()]
        return _model_id(tuple((path, info.st_size, info.st_mtime_ns) for path, info in found))

    @property
    def report(self) -> Path:
        """Where eic report writes the run's HTML page by default."""
        return self.path / "report.html"

    @property
    def evaluation(self) -> Path:
        """The latest ``eic evaluate`` of the run, which its model card reports."""
        return self.path / "evaluation.json"

    def read_summary(self) -> dict[str, Any]:
        return read_object(self.summary)


def read_json(path: Path) -> Any:
    """A JSON file eic wrote, or a ModelError that names it (missing, unreadable or cut short)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; the run folder is incomplete (train it again, or `resume`)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({type(exc).__name__}); the run folder is damaged") from None


def read_object(path: Path) -> dict[str, Any]:
    """A JSON object eic wrote (a split's config, metrics, a run's summary): anything else is a damaged run, in one
    line, not an AttributeError in whoever reads a key of it."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelError(
            f"{path}: holds a {type(value).__name__}, not the JSON object eic writes; the run folder is damaged"
        )
    return value


class TimmMeta(BaseModel):
    """What a checkpoint says of a timm backbone (``arch`` timm/<name>), checked when it is read: an export copies
    its data config, and a damaged one is a damaged checkpoint."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    pretrained_tag: str = ""
    data_config: dict[str, Any]
    weights: str | None = None
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class CheckpointMeta(BaseModel):
    """What a checkpoint says about its model, beside the weights: enough to rebuild it and its
    preprocessing without the settings it was trained with.

    Older checkpoints lack the later fields; their defaults say what those runs did."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Literal["europeana-imgcls/checkpoint-v1"] = CHECKPOINT_FORMAT
    arch: str
    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: Literal["single-label", "multi-label"] = "single-label"
    config: dict[str, Any] = {}
    split: int = 0
    epoch: int = 0
    best_val_loss: float = float("inf")
    val_loss_never_finite: bool = False
    temperature: float = 1.0
    thresholds: list[float] | None = None  # multi-label: tuned per label on the validation part
    method: Literal["finetune", "linear-probe", "knn"] = "finetune"
    head: Literal["linear", "knn"] | None = None  # probe runs: the kind of head
    neighbours: int | None = None  # knn
    backbone: str | None = None  # probe runs: the shared backbone, relative to the checkpoint
    backbone_sha256: str | None = None
    # ``arch`` timm/<name>: its name, pretrained tag, data config and the SHA-256 of the weights it started from.
    timm: dict[str, Any] | None = None

    @field_validator("timm")
    @classmethod
    def _timm(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else TimmMeta.model_validate(value).model_dump(mode="json")

    @classmethod
    def for_split(cls, config: TrainConfig, arch: Arch, classes: list[str], split: int) -> CheckpointMeta:
        """What the checkpoints of split ``split`` of a run trained with ``config`` say, whatever the method (a
        probe run's name their head); the epoch, loss and what validation teaches are added as they are known."""
        probe: dict[str, Any] = {}
        if config.method != "finetune":
            probe = {"head": "knn" if config.method == "knn" else "linear", "neighbours": config.neighbours}
        return cls(
            arch=config.arch,
            class_names=classes,
            input_size=config.input_size,
            mean=arch.mean,
            std=arch.std,
            mode=config.mode,
            config=public_dict(config),
            split=split,
            method=config.method,
            timm=arch.provenance(config.weights),
            **probe,
        )

    @classmethod
    def parse(cls, data: Any, source: Path) -> CheckpointMeta:
        """The metadata of a loaded checkpoint, or a ModelError saying what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"{source} is not a checkpoint written by eic train")
        try:
            meta = cls.model_validate({k: v for k, v in data.items() if k != "model_state"})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ModelError(f"{source}: damaged checkpoint ({where}: {err['msg']}); train the run again") from None
        if (meta.backbone is None) != (meta.backbone_sha256 is None):
            raise ModelError(
                f"{source}: damaged checkpoint (a backbone reference without its SHA-256, or the "
                "reverse); train the run again"
            )
        return meta

    @property
    def classes(self) -> list[str]:
        return list(self.class_names)

    @property
    def multilabel(self) -> bool:
        return self.mode == "multi-label"

    def saved(self) -> dict[str, Any]:
        """The fields as a checkpoint stores them (beside ``model_state``)."""
        return self.model_dump(mode="python")


@functools.lru_cache(maxsize=16)
def _model_id(checkpoints: tuple[tuple[Path, int, int], ...]) -> str:
    """``model_id`` of these checkpoint files (path, size, modification time): read once a version of them."""
    return hashlib.sha256("".join(file_sha256(path) for path, _, _ in checkpoints).encode()).hexdigest()[:16]


def not_a_run(path: Path) -> str:
    """Why ``path`` cannot be used as a run, saying what it is where that is known."""
    kind = what_is(path)
    if kind and kind != "a training run":
        return f"{path} is {kind}, not a training run: point at an eic train output"
    return f"{path}: no {MODEL_FILE} in it or in {SPLIT_GLOB}/ folders; point at an eic train output"


def recorded_images(summary: dict[str, Any]) -> int | None:
    """The images a run learnt from, as its summary.json says (None: a run from before it said, or a damaged
    value); not its classes' counts summed, which count a multi-label image in each of its classes."""
    said = summary.get("images")
    return said if isinstance(said, int) and not isinstance(said, bool) and said >= 0 else None
