"""Probabilities that mean what they say, and thresholds that keep a promised precision.

In a k-fold run every image is in exactly one test fold, so the run holds an out-of-fold probability
for every image it was trained on. Each split's temperature (fitted on that split's validation part
when it was trained) rescales its logits; the calibrated out-of-fold probabilities of all splits
together then give, per class, the lowest threshold whose precision reaches the target, with the
share of that class's images it labels (coverage). A class that cannot reach the target is never
emitted. ``RUN/calibration.json`` keeps the result and ``RUN/reliability.png`` draws it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
from pydantic import TypeAdapter, ValidationError

from ..core.config import CalibrateConfig, Mode
from ..core.errors import CalibrationError, DatasetError
from ..core.sidecars import first_problem, read_bounded
from ..core.tables import read_csv_rows, write_json
from ..datasets.tasks import Task, task_for
from . import charts
from .run_folder import FINISHED_SPLITS, RunFolder, not_a_run

MIN_LABELLED = 5  # a precision measured on fewer images than this promises nothing
BINS = 15


log = logging.getLogger(__name__)


@dataclass
class ClassCalibration:
    name: str
    threshold: float | None  # None: the target cannot be reached, the class is never emitted
    precision: float | None  # out-of-fold precision at the threshold
    coverage: float  # share of the class's images that get labelled with it
    support: int  # images of the class
    labelled: int  # images labelled with the class at the threshold


@dataclass
class Calibration:
    mode: str
    classes: list[str]
    precision_target: float
    source: str
    images: int
    temperatures: dict[str, float]
    ece_before: float
    ece_after: float
    per_class: list[ClassCalibration] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return task_for(self.mode)

    def thresholds(self) -> np.ndarray:
        """Per class, the threshold to emit it at; inf for a class that is never emitted."""
        return np.array([math.inf if c.threshold is None else c.threshold for c in self.per_class])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> Calibration:
        """A run's ``calibration.json``, checked (types, classes, temperatures, thresholds), or one line saying to
        calibrate again: enrich's thresholds and export's sidecar come from it."""
        remedy = "calibrate the run again (eic calibrate RUN --overwrite)"
        data = read_bounded(path, what="a run's calibration", remedy=remedy, error=CalibrationError)
        try:
            calibration = _READER.validate_json(data)
        except ValidationError as exc:
            raise CalibrationError(f"{path} is not a run's calibration ({first_problem(exc)}): {remedy}") from None
        problem = calibration._problem()
        if problem:
            raise CalibrationError(f"{path} is not a run's calibration ({problem}): {remedy}")
        return calibration

    def _problem(self) -> str | None:
        if [c.name for c in self.per_class] != self.classes or len(set(self.classes)) != len(self.classes):
            return "its classes and per-class entries differ"
        if self.mode not in get_args(Mode) or not 0 < self.precision_target <= 1:
            return "its mode or precision target is not one eic writes"
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures.values()):
            return "a temperature is not a positive number"
        if not all(c.threshold is None or math.isfinite(c.threshold) for c in self.per_class):
            return "a threshold is not a number"
        return None


_READER = TypeAdapter(Calibration)  # read() finds it when called, once the class it reads is made


# ---------------------------------------------------------------------------------------------
# The pieces


def fit_temperature(task: Task, logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``truth`` (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar

    if len(truth) == 0:
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)
    result = minimize_scalar(
        lambda log_t: task.nll(task.from_logits(logits / math.exp(log_t)), truth), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(math.exp(result.x))


def expected_calibration_error(task: Task, probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> float:
    """Mean gap between stated confidence and accuracy over equal-width confidence bins, weighted by size."""
    centres, accuracy, counts = _bins(task, probs, truth, bins)
    gap = sum(n * abs(a - c) for c, a, n in zip(centres, accuracy, counts, strict=True))
    return float(gap / sum(counts)) if counts else 0.0


def choose_thresholds(
    task: Task, probs: np.ndarray, truth: np.ndarray, classes: list[str], target: float
) -> list[ClassCalibration]:
    """Per class, the lowest threshold at which the precision of the images it labels reaches ``target``."""
    support = task.support(truth, len(classes))
    return [
        _class_threshold(name, *task.candidates(probs, truth, c), int(support[c]), target)
        for c, name in enumerate(classes)
    ]


def _class_threshold(name: str, scores: np.ndarray, right: np.ndarray, support: int, target: float) -> ClassCalibration:
    order = np.argsort(-scores, kind="stable")
    scores, right = scores[order], right[order]
    hits = np.cumsum(right)
    labelled = np.arange(1, len(scores) + 1)
    precision = hits / labelled
    # A threshold labels every image scoring at least as much: only the last of equal scores is a cut.
    cut = np.r_[scores[1:] < scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    ok = np.flatnonzero(cut & (precision >= target) & (labelled >= MIN_LABELLED))
    if not len(ok):
        return ClassCalibration(name, None, None, 0.0, support, 0)
    k = int(ok[-1])
    return ClassCalibration(
        name,
        float(scores[k]),
        float(precision[k]),
        float(hits[k] / support) if support else 0.0,
        support,
        int(labelled[k]),
    )


def score_thresholds(
    task: Task, probs: np.ndarray, truth: np.ndarray, classes: list[str], thresholds: np.ndarray
) -> list[dict[str, Any]]:
    """Precision and coverage per class of the labels ``thresholds`` emit on a labelled set."""
    support = task.support(truth, len(classes))
    rows = []
    for c, name in enumerate(classes):
        scores, right = task.candidates(probs, truth, c)
        chosen = scores >= thresholds[c]
        labelled, hits = int(chosen.sum()), int(right[chosen].sum())
        rows.append(
            {
                "class": name,
                "threshold": None if math.isinf(thresholds[c]) else float(thresholds[c]),
                "support": int(support[c]),
                "labelled": labelled,
                "precision": hits / labelled if labelled else None,
                "coverage": float(hits / support[c]) if support[c] else 0.0,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# A run's out-of-fold probabilities


@dataclass
class OutOfFold:
    task: Task
    classes: list[str]
    truth: np.ndarray
    raw: np.ndarray  # as the models said
    calibrated: np.ndarray  # each split's temperature applied
    temperatures: dict[str, float]
    images: list[str] = field(default_factory=list)  # the image of each row
    folds: list[int] = field(default_factory=list)  # the split whose test fold held it


def out_of_fold(run: Path) -> OutOfFold:
    """Every test fold's predictions of a cross-validated run, with each split's temperature applied."""
    splits = RunFolder(run).finished_splits()
    if not splits:
        if not RunFolder(run).splits() and not RunFolder(run).is_split:
            raise CalibrationError(not_a_run(run))
        raise CalibrationError(
            f"{run}: no finished split ({FINISHED_SPLITS}); calibration needs a run trained by eic train"
        )
    config = splits[0].read_config()
    # Judged by the finished splits, not by split 0's settings: a run of split 0 alone carried on to every split
    # (a resume with cross-validation) holds every image in a test fold.
    if len(splits) < int(config.get("folds", len(splits))):
        raise CalibrationError(
            f"{run} has out-of-fold predictions for {len(splits)} of {config.get('folds')} folds (trained with "
            "`crossvalidation` off, or unfinished): calibration needs every image in a test fold; train with "
            "cross-validation (the default), or finish the run with eic train `resume`"
        )
    task = task_for(config.get("mode"))
    classes = splits[0].read_classes()
    truths, raws, calibrated, temperatures, images, folds = [], [], [], {}, [], []
    for split in splits:
        temperature = split.read_temperature()
        truth, logits, paths = _read_test_predictions(split.test_predictions, task, classes)
        temperatures[split.name] = temperature
        truths.append(truth)
        raws.append(task.from_logits(logits))
        calibrated.append(task.from_logits(logits / temperature))
        images += split.images_named(paths)
        folds += [split.index] * len(paths)
    return OutOfFold(
        task,
        classes,
        np.concatenate(truths),
        np.concatenate(raws),
        np.concatenate(calibrated),
        temperatures,
        images,
        folds,
    )


def _read_test_predictions(path: Path, task: Task, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    truths, probs, paths = [], [], []
    for number, row in enumerate(read_csv_rows(path), 2):  # the header is line 1
        if not row.get("logits"):
            raise CalibrationError(
                f"{path} has no logits column (the run was trained by an older eic): train it again to calibrate it"
            )
        try:
            values = json.loads(row["logits"])
            logits = [float(values[c]) for c in classes]
            truth = task.truth_of(row["truth"] or "", classes)
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # read back: a row edited or damaged since
            raise CalibrationError(
                f"{path}, line {number}: not a test prediction eic writes ({type(exc).__name__}: {str(exc)[:80]}); "
                "the run folder is damaged: train that split again"
            ) from None
        if not all(math.isfinite(v) for v in logits):
            raise CalibrationError(f"{path}, line {number}: a logit is no finite number; train that split again")
        probs.append(logits)
        truths.append(truth)
        paths.append(row["image"])
    return np.asarray(truths), np.asarray(probs, dtype=np.float64), paths


def calibrate_run(run: Path, precision: float = 0.95, *, write: bool = True, diagram: bool = True) -> Calibration:
    """Calibrate ``run`` from its out-of-fold probabilities; write calibration.json and (``diagram``)
    reliability.png."""
    check_precision(precision)
    oof = out_of_fold(run)
    calibration = Calibration(
        mode=oof.task.name,
        classes=oof.classes,
        precision_target=precision,
        source=f"out-of-fold predictions of {len(oof.temperatures)} splits",
        images=len(oof.truth),
        temperatures=oof.temperatures,
        ece_before=expected_calibration_error(oof.task, oof.raw, oof.truth),
        ece_after=expected_calibration_error(oof.task, oof.calibrated, oof.truth),
        per_class=choose_thresholds(oof.task, oof.calibrated, oof.truth, oof.classes, precision),
    )
    if write:
        folder = RunFolder(run)
        write_json(folder.calibration, calibration.to_dict())
        if diagram:
            reliability_diagram(folder.reliability, oof.task, oof.raw, oof.calibrated, oof.truth, calibration)
        else:  # an earlier calibration's diagram would stand beside this one's thresholds
            folder.reliability.unlink(missing_ok=True)
    return calibration


def calibrate(config: CalibrateConfig) -> Calibration:
    """``eic calibrate``: calibrate a run for ``config.precision`` and rewrite its model card."""
    check_precision(config.precision)
    path = RunFolder(config.run).calibration
    if path.is_file() and not config.overwrite:
        kept = Calibration.read(path).precision_target
        if not math.isclose(kept, config.precision):
            raise CalibrationError(
                f"{config.run} is calibrated for a precision of {kept}, which eic enrich uses by default: pass "
                f"`overwrite` to replace it, or keep it and give eic enrich `precision` {config.precision}"
            )
    calibration = calibrate_run(config.run, config.precision)
    from .modelcard import write_model_card  # torch's version on the card: enrich reads thresholds without it

    write_model_card(config.run)
    _warn_if_exported_before(config.run, calibration)
    return calibration


def _warn_if_exported_before(run: Path, calibration: Calibration) -> None:
    """The run's exports in it (RUN/onnx, RUN/onnx-int8...) hold the thresholds of the calibration they were made
    with, for callers without eic (model.json): eic's own commands read calibration.json, others would go on
    deciding by the old ones. (An export written elsewhere cannot be known here.)"""
    now = {c.name: c.threshold for c in calibration.per_class}
    for sidecar in sorted(RunFolder(run).path.glob("onnx*/model.json")):
        try:
            exported = json.loads(read_bounded(sidecar, what="an export's sidecar", remedy="export the run again"))
            thresholds = exported.get("thresholds", now) if isinstance(exported, dict) else now
        except (CalibrationError, DatasetError, OSError, ValueError):
            continue  # none eic can read: nothing it holds is said to callers
        if thresholds != now:
            held = "the thresholds of the calibration before this one" if thresholds else "no thresholds"
            log.warning(
                "%s holds %s, which callers without eic read: export the run again (eic export %s --overwrite)",
                sidecar,
                held,
                run,
            )


def read_run_calibration(run: Path) -> Calibration:
    """``run``'s calibration.json, read typed and held to the run: its temperatures are each finished split's own
    (a calibration copied from another run, or left from splits trained again since, names another model's
    thresholds, and enrich would publish at a precision nobody measured)."""
    path = RunFolder(run).calibration
    calibration = Calibration.read(path)
    for split in RunFolder(run).finished_splits():
        kept = calibration.temperatures.get(split.name)
        if kept is None or not math.isclose(kept, split.read_temperature(), rel_tol=1e-9):
            raise CalibrationError(
                f"{path} is not this run's calibration ({split.name}'s temperature there is not the split's): "
                f"calibrate the run again (eic calibrate {run} --overwrite)"
            )
    return calibration


def load_calibration(run: Path, precision: float | None = None) -> Calibration:
    """The run's calibration; recomputed from its out-of-fold predictions for another precision target."""
    path = RunFolder(run).calibration
    if path.is_file():
        calibration = read_run_calibration(run)
        if precision is None or math.isclose(precision, calibration.precision_target):
            return calibration
    return calibrate_run(run, precision if precision is not None else 0.95, write=False)


def check_precision(precision: float) -> None:
    if not 0 < precision <= 1:
        raise CalibrationError(f"precision must be in (0, 1], got {precision}")


def reliability_diagram(
    path: Path, task: Task, raw: np.ndarray, calibrated: np.ndarray, truth: np.ndarray, calibration: Calibration
) -> None:
    """Share correct against stated confidence per bin, before and after temperature scaling; a marker's
    area and the lower panel show how many images a bin holds (a bin of three says little)."""
    figure, (top, bottom) = charts.chart(
        (6, 6.5),
        dict(left=0.13, right=0.97, bottom=0.08, top=0.95, hspace=0.08),
        nrows=2,
        ncols=1,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, BINS + 1)
    for probs, label, ece, colour in (
        (raw, "as trained", calibration.ece_before, "tab:blue"),
        (calibrated, "temperature-scaled", calibration.ece_after, "tab:orange"),
    ):
        centres, accuracy, counts = _bins(task, probs, truth)
        top.plot(centres, accuracy, color=colour, linewidth=1, alpha=0.7)
        top.scatter(
            centres,
            accuracy,
            s=[12 + 200 * c / max(counts) for c in counts],
            color=colour,
            label=f"{label} (ECE {ece:.3f})",
            zorder=3,
        )
        confidence, _ = task.confidence_and_correct(probs, truth)
        bottom.hist(confidence, bins=edges, color=colour, alpha=0.5)
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="share correct")
    charts.title(top, f"reliability, {calibration.images} out-of-fold images")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="stated confidence", ylabel="images", yscale="log")
    charts.save(figure, path)


def _bins(
    task: Task, probs: np.ndarray, truth: np.ndarray, bins: int = BINS
) -> tuple[list[float], list[float], list[int]]:
    """Per non-empty equal-width confidence bin: the mean stated confidence, the share correct, the count."""
    confidence, correct = task.confidence_and_correct(probs, truth)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    centres, accuracy, counts = [], [], []
    for b in range(bins):
        members = which == b
        if members.any():
            centres.append(float(confidence[members].mean()))
            accuracy.append(float(correct[members].mean()))
            counts.append(int(members.sum()))
    return centres, accuracy, counts
