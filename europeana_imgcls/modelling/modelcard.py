"""``RUN/MODEL_CARD.md``: what a run is, what it was trained on, how well it does, where not to use it.

Written from what the run folder knows, in the sections of Mitchell et al., "Model Cards for Model
Reporting" (2019), so an enrichment can be traced to the model that made it and judged by a curator.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from ..core.errors import EicError
from ..core.sidecars import read_bounded
from ..core.tables import atomic_path, read_csv_rows, read_table
from ..core.version import __version__
from ..datasets.tasks import task_for
from .run_folder import RunFolder, SplitFolder


def write_model_card(run: Path) -> Path:
    """Write (or rewrite) ``RUN/MODEL_CARD.md`` from the run's files; returns its path."""
    folder = RunFolder(run)
    summary = _json(folder.summary)
    splits = folder.finished_splits()
    config = _json(splits[0].config) if splits else {}
    calibration = _json(folder.calibration)
    classes = list(summary.get("classes", []))
    model_id = folder.model_id() if splits else "unknown"
    sections = [
        _front_matter(config, summary, model_id),
        f"# Model card: {run.name}\n",
        _details(config, summary, len(splits), model_id),
        _hyperparameters(config),
        _intended_use(config),
        _training_data(config, summary),
        _metrics(summary, _per_class(splits, classes, config.get("mode"))),
        _calibration(calibration, folder.reliability.name),
        _evaluation(_json(folder.evaluation)),
        _limitations(config, summary, calibration),
    ]
    path = folder.model_card
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(sections), encoding="utf-8")
    return path


def _json(path: Path) -> dict[str, Any]:
    """A JSON object of the run's, or nothing (missing, damaged, a pipe, not an object): the card leaves it out."""
    try:
        data = json.loads(read_bounded(path, what="a run's record", remedy="train the run again"))
    except (EicError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _front_matter(config: dict[str, Any], summary: dict[str, Any], model_id: str) -> str:
    """The YAML block model hubs read (Hugging Face's card metadata: licence, library, task, tags, metrics)."""
    metrics = "".join(f"- {name}\n" for name in summary.get("metrics", {}))
    return (
        "---\n"
        "license: other  # the training images' rights vary by record; set the licence you publish the model under\n"
        "library_name: europeana-imgcls\n"
        "pipeline_tag: image-classification\n"
        "tags:\n- image-classification\n- cultural-heritage\n- europeana\n"
        f"- {config.get('mode', 'single-label')}\n- {config.get('arch', 'unknown')}\n"
        f"metrics:\n{metrics}"
        f"model_id: {model_id}\n"
        "---\n"
    )


def _details(config: dict[str, Any], summary: dict[str, Any], splits: int, model_id: str) -> str:
    weights = config.get("weights", "?")
    return (
        "## Model details\n\n"
        f"- Model id **{model_id}** (a digest of the split models' files): every annotation eic enrich writes with "
        f"this run names it (`urn:europeana-imgcls:model:{model_id}`, and the generator "
        f"`...#model-{model_id}` that Europeana keeps); `eic withdraw --model {model_id}` takes them back.\n"
        f"- Made by europeana-imgcls {__version__} (`eic train`) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}.\n"
        f"- Architecture `{config.get('arch', '?')}`, starting weights `{weights}`, input {config.get('input_size')}"
        f" px, {config.get('mode', 'single-label')}.\n"
        f"- {splits} split model(s) from {config.get('folds')}-fold cross-validation"
        f"{' grouped by data provider' if config.get('group_by_provider') else ''}; each trained up to "
        f"{config.get('epochs')} epochs with early stopping (patience {config.get('patience')}) on its validation "
        "part, scored on its test fold.\n"
        f"- Classes ({len(summary.get('classes', []))}): {', '.join(summary.get('classes', []))}.\n"
    )


def _hyperparameters(config: dict[str, Any]) -> str:
    """How the run was trained: enough to train it again."""
    method = config.get("method", "finetune")
    rows = [
        ("method", method),
        ("architecture", config.get("arch")),
        ("starting weights", config.get("weights")),
        ("input size", f"{config.get('input_size')} px"),
        (
            "epochs (most), patience",
            f"{config.get('epochs')}, {config.get('patience')}"
            if method == "finetune"
            else "none: a head fitted per split on frozen embeddings",
        ),
        ("batch size", config.get("batch_size")),
        (
            "optimiser, learning rate",
            f"Adam, {config.get('learning_rate')}"
            if method == "finetune"
            else (
                "L-BFGS, L2 strength chosen on the validation part"
                if method == "linear-probe"
                else f"none: {config.get('neighbours')} nearest neighbours vote"
            ),
        ),
        ("augmentation", f"horizontal flip {config.get('hflip')}, vertical flip {config.get('vflip')}"),
        ("loss weighting", "inverse class frequency" if config.get("weighted_loss", True) else "none"),
        (
            "folds",
            f"{config.get('folds')} stratified"
            + (", grouped by data provider" if config.get("group_by_provider") else "")
            + (", near-duplicate groups kept together" if config.get("duplicate_groups") else ""),
        ),
        ("sample of the images", config.get("sample", 1.0)),
        ("seed", config.get("seed")),
    ]
    return "## Training hyperparameters\n\n| setting | value |\n| --- | --- |\n" + "".join(
        f"| {name} | {value} |\n" for name, value in rows
    )


def _evaluation(evaluation: dict[str, Any]) -> str:
    """What the latest eic evaluate measured on images the run never saw (it rewrites this section)."""
    if not evaluation:
        return (
            "## Evaluation\n\nNot evaluated yet: `eic evaluate RUN EVAL_DIR` scores the run on images it never "
            "saw and fills this section in.\n"
        )
    lines = [
        "## Evaluation\n",
        f"On `{evaluation.get('eval_dir')}` ({evaluation.get('images')} images), {evaluation.get('date')}; mean "
        "± standard deviation over the split models.\n",
        "| metric | mean ± std |",
        "| --- | --- |",
    ]
    for name, value in evaluation.get("summary", {}).items():
        lines.append(f"| {name} | {_number(value.get('mean'))} ± {_number(value.get('std'))} |")
    check = evaluation.get("calibration_check")
    if check:
        lines += [
            "",
            "Does the calibration's promise hold here? Per class, at the run's thresholds:\n",
            "| class | promised precision (out of fold) | precision here | coverage here | labelled |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in check:
            promised, here = row.get("out_of_fold_precision"), row.get("precision")
            lines.append(
                f"| {row['class']} | {'–' if promised is None else f'{promised:.3f}'} | "
                f"{'–' if here is None else f'{here:.3f}'} | {row.get('coverage', 0):.3f} | "
                f"{row.get('labelled')} |"
            )
    providers = evaluation.get("per_provider")
    if providers:
        metric = evaluation.get("provider_metric", "score")
        lines += [
            "",
            f"Per data provider (Mitchell et al.'s factors: does the model serve every collection?), {metric}:\n",
            f"| provider | images | {metric} |",
            "| --- | --- | --- |",
        ]
        for provider, row in sorted(providers.items(), key=lambda kv: -kv[1]["images"]):
            lines.append(f"| {provider} | {row['images']} | {_number(row['score'])} |")
    return "\n".join(lines) + "\n"


def _intended_use(config: dict[str, Any]) -> str:
    return (
        "## Intended use\n\n"
        "Suggesting subject tags for digitised cultural-heritage images of the kinds it was trained on, for "
        "review by people or for publication as machine-generated enrichments at the precision its calibration "
        "promises (`eic enrich` emits only labels above the calibrated per-class thresholds and names this model "
        "in every annotation, so an enrichment can be traced and withdrawn).\n\n"
        "## Out-of-scope use\n\n"
        "Images unlike the training collections (other media, other periods, other providers' photography); "
        "classes not listed above (the model always answers with one of its own classes, `eic enrich` abstains "
        "instead); decisions about people; publishing labels without a calibration, or below its thresholds, "
        "as if they were catalogued facts.\n"
    )


def _training_data(config: dict[str, Any], summary: dict[str, Any]) -> str:
    counts = summary.get("counts", {})
    lines = [
        "## Training data\n",
        f"Images from `{config.get('data_dir', '?')}`: {sum(counts.values())} in all.\n",
        "| class | images |",
        "| --- | --- |",
        *[f"| {c} | {n} |" for c, n in counts.items()],
        "",
    ]
    table = _source_table(Path(config.get("data_dir", ".")))
    if table is not None:
        providers, levels = table
        if providers:
            lines += [
                "Records per data provider (the harvest table the images came from; top 10):\n",
                "| provider | records |",
                "| --- | --- |",
                *[f"| {p} | {n} |" for p, n in providers.most_common(10)],
                "",
            ]
        if levels:
            lines.append("Reusability levels: " + ", ".join(f"{k} {n}" for k, n in levels.most_common()) + ".\n")
    return "\n".join(lines)


def _source_table(data_dir: Path) -> tuple[Counter[str], Counter[str]] | None:
    """Providers and reusability levels of the table ``eic download`` filled ``data_dir`` from, if known."""
    table = _json(data_dir / "config.json").get("table")
    if not table or not Path(table).is_file():
        return None
    try:
        df = read_table(Path(table))
    except Exception:  # the card is a courtesy: an unreadable table only leaves the section out
        return None
    provider = "data_provider" if "data_provider" in df.columns else None
    providers = Counter(v for v in df[provider].to_list() if v) if provider else Counter()
    levels = Counter(v for v in df["reusability"].to_list() if v) if "reusability" in df.columns else Counter()
    return providers, levels


def _per_class(splits: list[SplitFolder], classes: list[str], mode: str | None) -> list[tuple[str, str, str, str]]:
    """Per class: precision, recall and F1 on the test folds, mean ± std over splits."""
    task = task_for(mode)
    scores = []
    for split in splits:
        path = split.test_predictions
        if not path.is_file():
            continue
        rows = list(read_csv_rows(path))
        # Per class, whatever the task: whether each row's truth and prediction carry it (one class a row, or a
        # set of labels), as the task reads a cell.
        truth = np.array([[c in task.classes_in(r["truth"]) for c in classes] for r in rows], dtype=int)
        pred = np.array([[c in task.classes_in(r["prediction"]) for c in classes] for r in rows], dtype=int)
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
        scores.append(np.stack([p, r, f]))
    if not scores:
        return []
    array = np.stack(scores)  # splits x 3 x classes
    mean, std = array.mean(axis=0), array.std(axis=0, ddof=1) if len(array) > 1 else np.zeros(array.shape[1:])
    shown = [[f"{mean[m, c]:.3f} ± {std[m, c]:.3f}" for m in range(3)] for c in range(len(classes))]
    return [(name, p, r, f) for name, (p, r, f) in zip(classes, shown, strict=True)]


def _metrics(summary: dict[str, Any], per_class: list[tuple[str, str, str, str]]) -> str:
    lines = [
        "## Metrics\n",
        "On each split's test fold, mean ± standard deviation over splits.\n",
        "| metric | mean ± std |",
        "| --- | --- |",
    ]
    for name, value in summary.get("metrics", {}).items():
        lines.append(f"| {name} | {_number(value.get('mean'))} ± {_number(value.get('std'))} |")
    if per_class:
        lines += [
            "",
            "| class | precision | recall | F1 |",
            "| --- | --- | --- | --- |",
            *[f"| {name} | {p} | {r} | {f} |" for name, p, r, f in per_class],
        ]
    return "\n".join(lines) + "\n"


def _calibration(calibration: dict[str, Any], diagram: str) -> str:
    if not calibration:
        return (
            "## Calibration\n\nNot calibrated: the run has no out-of-fold prediction for every image (see "
            "`docs/enrich.md`). `eic enrich` refuses an uncalibrated run.\n"
        )
    lines = [
        "## Calibration\n",
        f"From {calibration['source']} ({calibration['images']} images): temperature scaling per split "
        f"brings the expected calibration error from {calibration['ece_before']:.3f} to "
        f"{calibration['ece_after']:.3f} (`{diagram}`). Thresholds for a precision of "
        f"{calibration['precision_target']:.2f}:\n",
        "| class | threshold | precision | coverage | labelled / support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in calibration["per_class"]:
        if c["threshold"] is None:
            lines.append(f"| {c['name']} | never emitted | – | 0 | 0 / {c['support']} |")
        else:
            lines.append(
                f"| {c['name']} | {c['threshold']:.4f} | {c['precision']:.3f} | {c['coverage']:.3f} | "
                f"{c['labelled']} / {c['support']} |"
            )
    return "\n".join(lines) + "\n"


def _limitations(config: dict[str, Any], summary: dict[str, Any], calibration: dict[str, Any]) -> str:
    counts = summary.get("counts", {})
    small = [c for c, n in counts.items() if n < 50]
    never = [c["name"] for c in calibration.get("per_class", []) if c["threshold"] is None]
    lines = [
        "## Limitations\n",
        "- Labels come from harvested metadata and are noisy; scores measured against them are estimates.",
        "- Precision promised by the calibration holds for images like the training images; check it on an "
        "evaluation set the run never saw (`eic evaluate` reports it per class).",
        "- Test folds share providers with training unless the run was grouped by provider; scores may then "
        "be optimistic for new collections."
        if not config.get("group_by_provider")
        else "- Folds were grouped by data provider, so scores estimate performance on unseen providers.",
    ]
    if small:
        lines.append(f"- Few training images (under 50) for: {', '.join(small)}.")
    if never:
        lines.append(f"- Never emitted at the target precision: {', '.join(never)}.")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    """A score to three places; a dash where there is none (written null: not a number, such as the F1 of a class
    that no test image held)."""
    return "–" if value is None else f"{value:.3f}"
