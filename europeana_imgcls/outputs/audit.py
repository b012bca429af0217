"""``eic audit``: what is wrong with the data, from out-of-fold probabilities and embeddings.

Labels harvested from metadata are noisy, and near-duplicates that sit in different folds inflate
scores. From a cross-validated run (its out-of-fold predictions) or an embeddings table (out-of-fold
probabilities of a k-fold linear probe made here) the audit writes:

- ``label_issues.csv``: likely mislabelled images, ranked by cleanlab's confident learning
  (``find_label_issues``; score = label quality, lower is worse), with given and suggested label;
- ``issue_rates.csv``: the share of flagged images per class and per data provider (a provider whose
  records are often "wrong" usually has a metadata-mapping problem);
- ``duplicates.csv``: groups of images whose embeddings' cosine similarity reaches ``similarity``, each
  flagged when it spans folds (leakage), labels (a conflict) or providers; ``eic train
  --duplicate-groups duplicates.csv`` keeps every group in one fold;
- ``suspects.png``: a contact sheet of the top suspects, and ``summary.json``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ..acquisition.download import CONFIG_FILE, FETCHED_FILE
from ..core.config import AuditConfig, public_dict
from ..core.errors import CalibrationError, ConfigError, DatasetError, EicError
from ..core.naming import record_id_of
from ..core.outputs import REVIEW_TASKS, OutputKind, absolute, build_folder, claimed
from ..core.progress import progress_bar
from ..core.recognise import run_of_split
from ..core.sidecars import Sidecar, read_typed
from ..core.tables import read_table, write_csv, write_json
from ..datasets.folders import DECODE_ERRORS, connected, load_image
from ..datasets.imageset import provider_of
from ..datasets.tasks import Task, task_for
from ..europeana.annotations import http_url
from ..modelling.calibration import out_of_fold
from ..modelling.embedding import matrix, read_embeddings
from ..modelling.heads import head_probabilities, linear_head
from ..modelling.run_folder import RunFolder
from .review import ImageLinks, claim_labelling_config, review_task, shown_in_label_studio, write_review_tasks

log = logging.getLogger(__name__)


@dataclass
class Findings:
    """What the audit works on: one row per image."""

    task: Task
    classes: list[str]
    images: list[str]
    truth: np.ndarray
    probs: np.ndarray
    folds: list[int]
    providers: list[str]
    ids: list[str | None]
    embeddings: np.ndarray | None  # rows aligned with ``images``, or None


AUDIT = OutputKind(
    "audit",
    "an audit",
    folder=True,
    legacy=("summary.json", "label_issues.csv", "issue_rates.csv", "duplicates.csv", "suspects.png"),
    legacy_sign=lambda summary: (
        isinstance(summary, dict) and {"images", "label_issues", "duplicate_groups", "leaking_groups"} <= summary.keys()
    ),
)


@dataclass
class AuditReport:
    output_dir: Path
    images: int = 0
    issues: int = 0
    duplicate_groups: int = 0
    leaking_groups: int = 0
    conflicting_groups: int = 0
    cross_provider_groups: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)
    worst_providers: list[tuple[str, int, float]] = field(default_factory=list)
    note: str = ""
    review_output: Path | None = None
    review_tasks: int = 0
    web_images: int = 0  # review tasks whose image Label Studio opens (a web image, or a file it serves)


def audit(config: AuditConfig) -> AuditReport:
    """Audit ``config.source`` (a run or an embeddings table); see the module docstring."""
    run = run_of_split(config.source)
    if run is not None:  # the out-of-fold predictions are every split's: one split has a fold of them
        raise DatasetError(f"{config.source} is {config.source.name} of the run {run}: pass {run}")
    ImageLinks.of(config.document_root, config.image_url)  # settings that cannot work, refused before any work
    if config.review_output is not None and absolute(config.output_dir).is_relative_to(absolute(config.review_output)):
        raise DatasetError(
            f"{config.review_output} is the audit's folder (or holds it): give `review_output` a file name, such as "
            "suspects.json"
        )
    review = _outside(config.review_output, config.output_dir)
    with ExitStack() as held:
        # The review file is claimed first: a path that is not eic's review tasks (the training table, the run's
        # summary.json) is refused before any work, whatever `overwrite` says.
        if review is not None:
            held.enter_context(claimed(review, REVIEW_TASKS, overwrite=config.overwrite, option="review_output"))
            claim_labelling_config(review)
        out = held.enter_context(
            build_folder(config.output_dir, AUDIT, overwrite=config.overwrite, option="output_dir")
        )
        return _audit(config, out, review or _inside(config.review_output, config.output_dir, out))


def _outside(review: Path | None, folder: Path) -> Path | None:
    """The review file, when it is not inside the audit's folder (which is built beside its place and swapped)."""
    return review if review is not None and not absolute(review).is_relative_to(absolute(folder)) else None


def _inside(review: Path | None, folder: Path, building: Path) -> Path | None:
    """The review file's place in the folder being built, when it goes inside the audit's folder."""
    return None if review is None else building / absolute(review).relative_to(absolute(folder))


def _audit(config: AuditConfig, out: Path, review: Path | None) -> AuditReport:
    """The audit, written into ``out``; the review tasks (if asked for) into ``review``."""
    probes = config.folds if not config.source.is_dir() else 0  # an embeddings table: a probe fitted per fold
    with progress_bar(config.quiet, transient=True) as bar:
        task = bar.add_task(f"probe 1 of {probes}" if probes else "out-of-fold probabilities", total=probes + 3)

        def step(then: str) -> None:
            """One step done; ``then`` is the next."""
            bar.update(task, advance=1, description=then)

        findings, note = _findings(config, step)
        report = AuditReport(config.output_dir, images=len(findings.images), note=note)
        bar.update(task, completed=probes, description="label issues (cleanlab)")
        ranked, quality = _label_issues(findings)
        report.issues = len(ranked)
        report.top = _write_issues(out / "label_issues.csv", findings, ranked, quality)
        report.worst_providers = _write_rates(out / "issue_rates.csv", findings, ranked)
        step("near-duplicates")
        groups: list[list[int]] = []
        if findings.embeddings is not None:
            groups = near_duplicates(findings.embeddings, config.similarity)
            _write_duplicates(out / "duplicates.csv", findings, groups, report)
        step("contact sheet")
        contact_sheet(out / "suspects.png", report.top[: config.top])
        if review is not None:
            _write_review(config, review, findings, ranked, quality, groups, report)
        step("done")
    write_json(
        out / "summary.json",
        {
            "images": report.images,
            "label_issues": report.issues,
            "duplicate_groups": report.duplicate_groups,
            "leaking_groups": report.leaking_groups,
            "conflicting_groups": report.conflicting_groups,
            "cross_provider_groups": report.cross_provider_groups,
            "note": note,
            "config": public_dict(config),
        },
    )
    return report


# ---------------------------------------------------------------------------------------------
# Out-of-fold probabilities


def _findings(config: AuditConfig, step: Callable[[str], None]) -> tuple[Findings, str]:
    source = config.source
    if source.is_dir():
        findings, note = _from_run(config)
    elif source.suffix.lower() == ".parquet":
        findings, note = _from_embeddings(config, step), ""
    else:
        raise DatasetError(f"{source}: give a training run folder or an embeddings table (.parquet) from eic embed")
    _named_by_download(findings)
    return findings, note


def _named_by_download(findings: Findings) -> None:
    """The record IDs a file name cannot hold: eic download names a record whose ID is too long for one (over 200
    bytes) by a hash, and its fetched.csv says which record each file is; without it the review task of such an
    image names no record, and its answer is dropped at import."""
    folder = _download_folder(findings)
    if folder is None or all(findings.ids):
        return
    try:
        rows = read_table(folder / FETCHED_FILE, required=("ID", "file"))
    except EicError:
        return
    by_file = {r["file"]: r["ID"] for r in rows.iter_rows(named=True) if r["ID"] and r["file"]}
    findings.ids = [i or by_file.get(Path(image).name) for i, image in zip(findings.ids, findings.images, strict=True)]


def _from_run(config: AuditConfig) -> tuple[Findings, str]:
    try:
        oof = out_of_fold(config.source)
    except CalibrationError as exc:
        raise CalibrationError(
            f"{exc}; or audit an embeddings table (eic embed), for which eic audit makes "
            "its own out-of-fold probabilities"
        ) from None
    embeddings, note = None, ""
    source = config.embeddings or _run_embeddings(config.source)
    if source.is_file():
        table, _ = read_embeddings(source)
        names = table["image"].to_list()
        if config.embeddings is None:  # the run's own table: its images named as its splits' files name them
            names = _placed(config.source, names)
        where = {str(Path(path).resolve()): row for row, path in enumerate(names)}
        wanted = [str(Path(image).resolve()) for image in oof.images]
        if all(image in where for image in wanted):
            embeddings = matrix(table)[[where[image] for image in wanted]]
        else:
            note = f"{source} does not cover the run's images: no near-duplicate search"
    else:
        note = (
            "no embeddings for this run (fine-tuned): no near-duplicate search; pass `embeddings` from eic "
            "embed with the same images"
        )
    paths = [Path(image) for image in oof.images]
    findings = Findings(
        oof.task,
        oof.classes,
        oof.images,
        oof.truth,
        oof.raw,
        oof.folds,
        [provider_of(p) for p in paths],
        [record_id_of(p.name) for p in paths],
        embeddings,
    )
    return findings, note


def _run_embeddings(run: Path) -> Path:
    """The embeddings a probe run was fitted on: its own, or the eic embed table it was given."""
    folder = RunFolder(run)
    if folder.embeddings.is_file():
        return folder.embeddings
    splits = folder.splits()
    given = splits[0].read_config().get("embeddings") if splits and splits[0].config.is_file() else None
    return Path(given) if given else folder.embeddings


def _from_embeddings(config: AuditConfig, step: Callable[[str], None]) -> Findings:
    """Out-of-fold probabilities from a linear probe on the embeddings, fitted per split as ``eic train
    --method linear-probe`` fits it: the test fold scored, the L2 strength chosen on the validation part."""
    table, meta = read_embeddings(config.source)
    task = task_for(meta.get("mode"))
    classes = list(meta.get("classes") or sorted({c for cell in table["category"] for c in cell.split()}))
    truth = np.asarray([task.truth_of(cell, classes) for cell in table["category"]])
    vectors = matrix(table)
    probs = np.zeros((len(truth), len(classes)))
    assigned = np.zeros(len(truth), dtype=int)
    for k, split in enumerate(task.splits(truth, config.folds, config.seed)):
        head = linear_head(
            vectors[split.train], truth[split.train], vectors[split.val], truth[split.val], task, True, len(classes)
        )
        probs[split.test] = head_probabilities(head, vectors[split.test], task)
        assigned[split.test] = k
        step(f"probe {k + 2} of {config.folds}" if k + 1 < config.folds else "label issues (cleanlab)")
    providers = (
        table["provider"].to_list() if "provider" in table.columns else [provider_of(Path(p)) for p in table["image"]]
    )
    ids = table["ID"].to_list() if "ID" in table.columns else [None] * table.height
    return Findings(task, classes, table["image"].to_list(), truth, probs, assigned.tolist(), providers, ids, vectors)


# ---------------------------------------------------------------------------------------------
# Label issues


def _placed(run: Path, names: list[str]) -> list[str]:
    """Image names a run's files wrote relative to where it trained, placed under its recorded data folder."""
    splits = RunFolder(run).finished_splits()
    return splits[0].images_named(names) if splits else names


def _label_issues(findings: Findings) -> tuple[np.ndarray, np.ndarray]:
    """Indices of likely mislabelled images, worst first, and every image's label quality."""
    try:
        import cleanlab  # noqa: F401 - only to say what is missing
    except ImportError:
        raise ConfigError("eic audit needs cleanlab: pip install 'europeana-imgcls[audit]'") from None
    present = findings.task.indicator(findings.truth, len(findings.classes))
    everywhere = [name for name, column in zip(findings.classes, present.T, strict=True) if column.all()]
    if everywhere:
        log.warning(
            "%s: on every image, so no label of it can be told wrong; the ranking judges the other classes",
            ", ".join(everywhere),
        )
    return findings.task.label_issues(findings.truth, findings.probs)


def _given(findings: Findings, i: int) -> str:
    return findings.task.truth_text(findings.truth[i], findings.classes)


def _suggested(findings: Findings, i: int) -> str:
    return " ".join(_suggested_labels(findings, i))


def _write_issues(path: Path, findings: Findings, ranked: np.ndarray, quality: np.ndarray) -> list[dict[str, Any]]:
    rows = [
        {
            "rank": n + 1,
            "image": findings.images[i],
            "ID": findings.ids[i] or "",
            "provider": findings.providers[i],
            "given": _given(findings, i),
            "suggested": _suggested(findings, i),
            "label_quality": round(float(quality[i]), 6),
            "fold": findings.folds[i],
        }
        for n, i in enumerate(ranked)
    ]
    write_csv(path, ["rank", "image", "ID", "provider", "given", "suggested", "label_quality", "fold"], rows)
    return rows


def _write_rates(path: Path, findings: Findings, ranked: np.ndarray) -> list[tuple[str, int, float]]:
    """Issue rates per class and per provider; returns the providers with the highest rates."""
    flagged = set(ranked.tolist())
    rows, providers = [], []
    # Class names may hold spaces ("fine art"): an image's classes by index, not by splitting its label text.
    member = np.stack([findings.task.members(findings.truth, c) for c in range(len(findings.classes))], axis=1)
    classes = [[findings.classes[c] for c in np.flatnonzero(row)] for row in member]
    for kind, keys in (("class", classes), ("provider", [[p] for p in findings.providers])):
        total: Counter[str] = Counter()
        issues: Counter[str] = Counter()
        for i, names in enumerate(keys):
            for name in names:
                total[name] += 1
                issues[name] += i in flagged
        for name in sorted(total, key=lambda n: (-issues[n] / total[n], n)):
            rows.append(
                {
                    "kind": kind,
                    "name": name,
                    "images": total[name],
                    "issues": issues[name],
                    "rate": round(issues[name] / total[name], 4),
                }
            )
            if kind == "provider" and issues[name]:
                providers.append((name, issues[name], issues[name] / total[name]))
    write_csv(path, ["kind", "name", "images", "issues", "rate"], rows)
    return providers[:5]


# ---------------------------------------------------------------------------------------------
# Near-duplicates


def near_duplicates(vectors: np.ndarray, similarity: float, chunk: int = 1024) -> list[list[int]]:
    """Groups (two or more images) joined by cosine similarity >= ``similarity``, found chunk by chunk so
    memory stays at ``chunk`` x N however many images there are."""
    wide = vectors.astype(np.float64)
    unit = wide / np.clip(np.linalg.norm(wide, axis=1, keepdims=True), 1e-12, None)
    # Two identical vectors have a cosine a rounding error below 1: "at least 1" must still join them.
    cut = similarity - 1e-9
    edges: list[tuple[int, int]] = []
    for start in range(0, len(unit), chunk):
        rows, cols = np.nonzero(unit[start : start + chunk] @ unit.T >= cut)
        edges += [(int(r), int(c)) for r, c in zip(rows + start, cols, strict=True) if c > r]
    members: defaultdict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(connected(len(unit), edges)):
        members[int(label)].append(i)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def _write_duplicates(path: Path, findings: Findings, groups: list[list[int]], report: AuditReport) -> None:
    rows = []
    for number, group in enumerate(groups, start=1):
        spans_folds = len({findings.folds[i] for i in group}) > 1
        conflict = len({_given(findings, i) for i in group}) > 1
        providers = len({findings.providers[i] for i in group}) > 1
        report.leaking_groups += spans_folds
        report.conflicting_groups += conflict
        report.cross_provider_groups += providers
        rows += [
            {
                "group": number,
                "image": findings.images[i],
                "ID": findings.ids[i] or "",
                "provider": findings.providers[i],
                "category": _given(findings, i),
                "fold": findings.folds[i],
                "across_folds": spans_folds,
                "conflicting_labels": conflict,
                "across_providers": providers,
            }
            for i in group
        ]
    report.duplicate_groups = len(groups)
    write_csv(
        path,
        [
            "group",
            "image",
            "ID",
            "provider",
            "category",
            "fold",
            "across_folds",
            "conflicting_labels",
            "across_providers",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------------------
# The suspects, to people


def _write_review(
    config: AuditConfig,
    path: Path,
    findings: Findings,
    ranked: np.ndarray,
    quality: np.ndarray,
    groups: list[list[int]],
    report: AuditReport,
) -> None:
    """Label Studio tasks for the top ``review_n`` suspects: likely mislabels (the model's label suggested),
    then the members of near-duplicate groups labelled differently (their given label suggested)."""
    web = _web_images(config, findings)
    tasks: list[dict[str, Any]] = []
    chosen: set[int] = set()

    def add(i: int, suggestion: list[str], reason: str) -> None:
        record = findings.ids[i]
        image = web.get(record or "") or str(Path(findings.images[i]).resolve())
        tasks.append(review_task(record or "", image, suggestion, float(quality[i]), reason))
        chosen.add(i)

    for i in ranked[: config.review_n].tolist():
        add(i, _suggested_labels(findings, i), f"likely mislabelled: given {_given(findings, i) or 'none'}")
    for group in groups:
        if len({_given(findings, i) for i in group}) < 2:
            continue
        for i in group:
            if len(tasks) < config.review_n and i not in chosen:
                others = ", ".join(findings.ids[j] or Path(findings.images[j]).name for j in group if j != i)
                given = _given(findings, i)
                add(i, _given_labels(findings, i), f"near-duplicate of {others}, labelled otherwise; given {given}")
    report.review_output = config.review_output
    links = ImageLinks.of(config.document_root, config.image_url)
    for item in tasks:  # an image the links cannot reach is refused before the tasks are written
        if not http_url(item["data"]["image"]):
            links.check(Path(item["data"]["image"]))
    report.review_tasks = write_review_tasks(
        path, tasks, findings.classes, findings.task, f"eic audit {config.source.name}", links
    )
    report.web_images = sum(shown_in_label_studio(t["data"]["image"]) for t in tasks)


def _suggested_labels(findings: Findings, i: int) -> list[str]:
    return [findings.classes[c] for c in findings.task.suggested(findings.probs[i])]


def _given_labels(findings: Findings, i: int) -> list[str]:
    return findings.task.truth_names(findings.truth[i], findings.classes)


def _web_images(config: AuditConfig, findings: Findings) -> dict[str, str]:
    """Record ID -> its web image: the URL eic download fetched it from (``fetched.csv``: the thumbnail, the
    original or the preview, whichever it saved), else the table's (``config.table``, or the one eic download
    recorded in the image folder). Label Studio shows a web image to reviewers anywhere (a local file needs its
    local storage set up), and the fetched URL is the one known to answer with the image (a table's may be dead)."""
    table, columns, folder = config.table, None, _download_folder(findings)
    if table is None and folder is not None:
        table, columns = _recorded_download(folder / CONFIG_FILE) or (None, None)
    web = _urls(table, columns) if table is not None else {}
    return web | (_urls(folder / FETCHED_FILE, None) if folder is not None else {})


def _download_folder(findings: Findings) -> Path | None:
    """The folder eic download filled with the images (its ``config.json`` says so): the images' folder, or the
    one above (class folders); None when the images are not a download's."""
    if not findings.images:
        return None
    first = Path(findings.images[0]).resolve()
    return next((f for f in (first.parent, first.parent.parent) if (f / CONFIG_FILE).is_file()), None)


def _urls(table: Path, columns: dict[str, str] | None) -> dict[str, str]:
    """Record ID -> http(s) URL, from a table's ID and URL columns; nothing from a table that cannot say."""
    try:
        rows = read_table(table, required=("ID", "URL"), columns=columns)
    except EicError:
        return {}
    return {r["ID"]: r["URL"] for r in rows.iter_rows(named=True) if r["ID"] and http_url(r["URL"] or "")}


class _DownloadSettings(Sidecar):
    """What audit reads of a download folder's settings (``config.json``): the table it was filled from."""

    table: str = Field(min_length=1)
    columns: dict[str, str] | None = None


def _recorded_download(path: Path) -> tuple[Path, dict[str, str] | None] | None:
    """The table a download folder was filled from, and its column mapping; None when its settings cannot say
    (missing, damaged, a pipe): the review tasks then show the local files."""
    try:
        recorded = read_typed(path, _DownloadSettings, what="a download's settings", remedy="download again")
    except EicError:
        return None
    table = Path(recorded.table)
    return (table, recorded.columns) if table.is_file() else None


# ---------------------------------------------------------------------------------------------
# Output


def contact_sheet(path: Path, suspects: list[dict[str, Any]]) -> None:
    """The top suspects with their given and suggested labels and where they come from."""
    from ..modelling.charts import Cell, sheet
    from ..modelling.explain import wrapped

    cells = []
    for row in suspects:
        try:
            image = load_image(Path(row["image"]), 256, keep_aspect=True)
        except DECODE_ERRORS:
            image = None
        name = row["ID"] or Path(row["image"]).name
        title = f"#{row['rank']} given {row['given']} -> {row['suggested']}\nquality {row['label_quality']:.2g}"
        cells.append(Cell(image, title, wrapped(name, 40), note="unreadable"))  # the whole ID, to look it up
    sheet(cells, path, empty="no label issues found")
