"""``RUN/MODEL_CARD.md``: what a run is, what it was trained on, how well it does, where not to use it.

Written from what the run folder knows, in the sections of Mitchell et al., "Model Cards for Model
Reporting" (2019) and of the Hugging Face Hub's model card template, so an enrichment can be traced to the model
that made it and judged by a curator. Its YAML front matter is the Hub's card metadata, read whole by
``huggingface_hub.ModelCard``: a licence the Hub accepts (``other``, named by the training images' reusability),
and ``model-index`` with the run's scores (its test folds; and its latest ``eic evaluate``).
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import EicError
from ..core.sidecars import read_bounded
from ..core.tables import atomic_path, read_csv_rows, read_table
from ..core.version import __version__
from ..datasets.metrics import per_class_scores
from ..datasets.tasks import task_for
from .run_folder import RunFolder, SplitFolder, recorded_images


def write_model_card(run: Path) -> Path:
    """Write (or rewrite) ``RUN/MODEL_CARD.md`` from the run's files; returns its path."""
    folder = RunFolder(run)
    summary = _json(folder.summary)
    splits = folder.finished_splits()
    config = _json(splits[0].config) if splits else {}
    calibration = _json(folder.calibration)
    evaluation = _json(folder.evaluation)
    classes = list(summary.get("classes", []))
    model_id = folder.model_id() if splits else "unknown"
    source = _source_table(Path(config.get("data_dir", ".")))
    levels = source[1] if source else Counter()
    sections = [
        _front_matter(config, summary, model_id, levels, _model_index(run.name, config, summary, evaluation)),
        f"# Model card: {run.name}\n",
        _details(config, summary, len(splits), model_id),
        _license(levels),
        _getting_started(),
        _hyperparameters(config),
        _intended_use(config),
        _training_data(config, summary, source),
        _metrics(summary, _per_class(splits, classes, config.get("mode"))),
        _calibration(calibration, folder.reliability.name if folder.reliability.is_file() else None),
        _evaluation(evaluation),
        _bias_risks_limitations(config, summary, calibration),
        _compute(summary),
        _citation(run.name, model_id),
        CONTACT,
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


def _front_matter(
    config: dict[str, Any], summary: dict[str, Any], model_id: str, levels: Counter[str], index: list[dict[str, Any]]
) -> str:
    """The YAML block model hubs read (Hugging Face's card metadata: licence, library, task, tags, metrics, and
    ``model-index``: the scores, which the Hub shows and ``ModelCard.load(...).data.eval_results`` reads)."""
    metadata: dict[str, Any] = {
        "license": "other",
        "license_name": license_name(levels),
        "license_link": LICENSE_LINK,
        "library_name": "europeana-imgcls",
        "pipeline_tag": "image-classification",
        "tags": [
            "image-classification",
            "cultural-heritage",
            "europeana",
            config.get("mode", "single-label"),
            config.get("arch", "unknown"),
        ],
        "metrics": list(summary.get("metrics", {})),
        "model_id": model_id,
    }
    if index:
        metadata["model-index"] = index
    return "---\n" + "".join(f"{line}\n" for line in _yaml(metadata)) + "---\n"


# Where the front matter's licence points: Europeana's rights statements, under which every training image was
# published (each record names its own). The model's licence is the publisher's choice; the card says so.
LICENSE_LINK = "https://www.europeana.eu/en/rights"


def license_name(levels: Counter[str]) -> str:
    """The card's ``license_name``: the most restrictive reusability level of the training images (permission,
    then restricted, then open), or that the images' rights are unknown (no harvest table beside the folder)."""
    for level in ("permission", "restricted", "open"):
        if levels.get(level):
            return f"europeana-{level}-images"
    return "europeana-images-rights-unknown"


def _model_index(
    name: str, config: dict[str, Any], summary: dict[str, Any], evaluation: dict[str, Any]
) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: the test folds' mean scores, and those of the latest evaluation."""
    data = Path(str(config.get("data_dir", "images"))).name
    folds = summary.get("splits")
    results = [
        _result(
            f"{data}: the test folds of {config.get('folds')}-fold cross-validation",
            summary.get("metrics", {}),
            f"mean of {folds} test folds",
        )
    ]
    if evaluation:
        held_out = Path(str(evaluation.get("eval_dir", "evaluation"))).name
        results.append(
            _result(f"{held_out}: images the run never saw", evaluation.get("summary", {}), "mean of the splits")
        )
    kept = [r for r in results if r["metrics"]]
    return [{"name": name, "results": kept}] if kept else []


def _result(dataset: str, scores: dict[str, Any], how: str) -> dict[str, Any]:
    metrics = [
        {"type": metric, "value": round(float(value["mean"]), 4), "name": f"{metric} ({how})"}
        for metric, value in scores.items()
        if isinstance(value, dict) and isinstance(value.get("mean"), int | float) and value["mean"] == value["mean"]
    ]
    return {
        "task": {"type": "image-classification", "name": "Image classification"},
        # imagefolder: Hugging Face's name for a folder of class folders, which is what eic trains on
        "dataset": {"type": "imagefolder", "name": dataset, "split": "test"},
        "metrics": metrics,
    }


def _yaml(value: dict[str, Any] | list[Any], indent: str = "") -> list[str]:
    """YAML block lines of ``value`` (mappings, lists, scalars), written here rather than by a YAML library that
    eic would otherwise not need."""
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{indent}{key}:")
                lines += _yaml(item, indent + ("  " if isinstance(item, dict) else ""))
            else:
                lines.append(f"{indent}{key}: {_scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, dict | list) and item:
            nested = _yaml(item, indent + "  ")
            lines += [f"{indent}- {nested[0].lstrip()}", *nested[1:]]
        else:
            lines.append(f"{indent}- {_scalar(item)}")
    return lines


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")
# What YAML 1.1 or 1.2 would read as a number, a boolean or null rather than as the string it is
_NOT_A_STRING = re.compile(
    r"[-+]?(\d[\d_]*)?(\.[\d_]*)?([eE][-+]?\d+)?|0[xob][0-9a-fA-F_]+|\d{4}-\d\d?-\d\d?.*"
    r"|(?i:y|n|yes|no|on|off|true|false|null)"
)
# Characters YAML does not take as they are in a quoted string (C1 controls, line and paragraph separators, BOM)
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    text = str(value)
    if _PLAIN.fullmatch(text) and not _NOT_A_STRING.fullmatch(text):
        return text
    # JSON's escapes are YAML's double-quoted ones; what YAML cannot hold as it is goes escaped too
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


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
        f"{_backbone(summary.get('backbone'))}"
        f"- {splits} split model(s) from {config.get('folds')}-fold cross-validation"
        f"{' grouped by data provider' if config.get('group_by_provider') else ''}; each trained up to "
        f"{config.get('epochs')} epochs with early stopping (patience {config.get('patience')}) on its validation "
        "part, scored on its test fold.\n"
        f"- Classes ({len(summary.get('classes', []))}): {', '.join(summary.get('classes', []))}.\n"
    )


_TIMM_NAME = re.compile(r"[\w.+\-/]{1,200}")  # a timm name, tag, Hub id or version: nothing markdown reads
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _backbone(said: Any) -> str:
    """The line naming a timm backbone's origin (summary.json's ``backbone``, as the checkpoints hold it), so that
    the same starting weights can be fetched and checked; what is missing or not plainly a name is left out."""
    if not isinstance(said, dict):
        return ""

    def plain(key: str, pattern: re.Pattern[str] = _TIMM_NAME) -> str | None:
        value = said.get(key)
        return value if isinstance(value, str) and pattern.fullmatch(value) else None

    name, tag, hub, version = plain("name"), plain("pretrained_tag"), plain("hf_hub_id"), plain("timm_version")
    digest = plain("weights_sha256", _SHA256)
    if name is None:
        return ""
    parts = [f"pretrained tag `{tag}`" if tag else "", f"Hub repository `{hub}`" if hub else ""]
    parts += [f"timm `{version}`" if version else "", f"starting weights SHA-256 `{digest}`" if digest else ""]
    return f"- timm backbone `{name}`: {', '.join(p for p in parts if p) or 'no origin recorded'}.\n"


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


def _training_data(
    config: dict[str, Any], summary: dict[str, Any], table: tuple[Counter[str], Counter[str]] | None
) -> str:
    counts = summary.get("counts", {})
    total = recorded_images(summary)
    lines = [
        "## Training data\n",
        f"Images from `{config.get('data_dir', '?')}`: {sum(counts.values()) if total is None else total} in all.\n",
        "| class | images |",
        "| --- | --- |",
        *[f"| {c} | {n} |" for c, n in counts.items()],
        "",
    ]
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
        scores.append(np.stack(per_class_scores(truth, pred)))
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


def _calibration(calibration: dict[str, Any], diagram: str | None) -> str:
    if not calibration:
        return (
            "## Calibration\n\nNot calibrated: the run has no out-of-fold prediction for every image (see "
            "`docs/enrich.md`). `eic enrich` refuses an uncalibrated run.\n"
        )
    lines = [
        "## Calibration\n",
        f"From {calibration['source']} ({calibration['images']} images): temperature scaling per split "
        f"brings the expected calibration error from {calibration['ece_before']:.3f} to "
        f"{calibration['ece_after']:.3f}{f' (`{diagram}`)' if diagram else ''}. Thresholds for a precision of "
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


def _bias_risks_limitations(config: dict[str, Any], summary: dict[str, Any], calibration: dict[str, Any]) -> str:
    counts = summary.get("counts", {})
    small = [c for c, n in counts.items() if n < 50]
    never = [c["name"] for c in calibration.get("per_class", []) if c["threshold"] is None]
    lines = [
        "## Bias, risks and limitations\n",
        "- The labels were learnt from data providers' metadata (the subjects and types they catalogued, mapped "
        "to the vocabulary's concepts), not from people looking at the images: the model learns each provider's "
        "cataloguing habits, and its photography (backgrounds, colour charts, scan borders), along with the "
        "subject. A class that one provider dominates may be that provider's style as much as the class.",
        "- Labels come from harvested metadata and are noisy; scores measured against them are estimates.",
        "- Europeana's collections over-represent some countries, languages, periods and institutions, and openly "
        "reusable images favour older, public-domain works; the model inherits the skew of its training data "
        "(the providers and reusability levels above).",
        "- Subject terms are the providers' own, some of them historical; a label about people or cultures "
        "repeats the term a catalogue used, with its time's view.",
        "- Published as enrichments, machine labels can be taken for catalogued facts: every annotation eic "
        "writes names this model (its id above), so each can be traced and withdrawn.",
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
    lines += [
        "",
        "### Recommendations\n",
        "Have people review the labels before they are published (`eic enrich` writes Label Studio tasks beside "
        "its annotations); evaluate the run on images from the providers it will label (`eic evaluate`, which "
        "scores every provider); train with `--group-by-provider` to estimate how it does on new collections; "
        "and look for mislabelled training images with `eic audit`.",
    ]
    return "\n".join(lines) + "\n"


def _license(levels: Counter[str]) -> str:
    """What the front matter's licence means: eic does not choose the model's licence, its publisher does."""
    known = ", ".join(f"{level} {n}" for level, n in levels.most_common())
    basis = (
        f"the training images' reusability levels are {known}; the most restrictive names it"
        if known
        else "the training images' reusability is unknown: their folder was not filled by eic download from a "
        "harvest table"
    )
    return (
        "## License\n\n"
        f"`license: other`, named `{license_name(levels)}` ({basis}), linked to Europeana's rights statements: "
        "each training image was published under its own, and eic does not decide what they allow of a model "
        "learnt from them. Whoever publishes the model chooses its licence: set `license` (or `license_name` and "
        "`license_link`) in the copy you publish.\n"
    )


# The ONNX snippet of docs/deploy.md ("From Python, without eic"), kept equal to it by a test.
ONNX_SNIPPET = """import json, numpy as np, onnxruntime as ort
from PIL import Image

sidecar = json.load(open("RUN/onnx/model.json"))
session = ort.InferenceSession("RUN/onnx/" + sidecar["splits"][0]["file"])
size = sidecar["input"]["size"]
image = Image.open("painting.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
pixels = np.asarray(image).transpose(2, 0, 1)[None]  # 1 x 3 x size x size, uint8
(probs,) = session.run(["probabilities"], {"pixels": pixels})
print(sorted(zip(probs[0], sidecar["classes"]), reverse=True)[:3])
"""


def _getting_started() -> str:
    return (
        "## How to get started with the model\n\n"
        "`RUN` is this card's folder. With eic (`pip install europeana-imgcls`):\n\n"
        "```bash\n"
        "eic predict RUN painting.jpg more_images/ -o predictions.csv   # labels, confidence, top classes\n"
        "eic enrich RUN --table records.csv -o annotations.jsonld       # calibrated labels as annotations\n"
        "```\n\n"
        "Without eic, from its ONNX export (`eic export RUN` writes `RUN/onnx/`; then `pip install onnxruntime "
        "pillow numpy`): the file takes uint8 RGB pixels and gives calibrated probabilities (`docs/deploy.md`).\n\n"
        f"```python\n{ONNX_SNIPPET}```\n"
    )


def compute_record(device: torch.device, processes: int, seconds: float) -> dict[str, Any]:
    """What ``summary.json`` keeps of how a run was trained (``processes``: torchrun's), for the card's compute
    section: the card is rewritten later (by eic evaluate), perhaps on another machine."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "hardware": describe_hardware(device.type, name, processes),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }


def describe_hardware(device_type: str, device_name: str | None, processes: int) -> str:
    """``2 x NVIDIA H100 80GB HBM3``, ``Apple silicon GPU (mps)``, ``CPU: Intel(R) Xeon(R) ..., 16 logical cores``."""
    if device_type == "cuda":
        return f"{processes} x {device_name or 'CUDA GPU'}"
    if device_type == "mps":
        return "Apple silicon GPU (mps)"
    return f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores" + (f", {processes} processes" if processes > 1 else "")


def _cpu_name() -> str:
    """The processor's model name where the system says it (Linux's /proc/cpuinfo), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _compute(summary: dict[str, Any]) -> str:
    compute = summary.get("compute")
    if not isinstance(compute, dict):
        return "## Compute infrastructure\n\nNot recorded: the run was trained before eic recorded it.\n"
    seconds = float(compute.get("seconds") or 0)
    return (
        "## Compute infrastructure\n\n"
        f"- Hardware: {compute.get('hardware', 'unknown')}.\n"
        f"- Training time: {_duration(seconds)} (wall clock of the `eic train` that finished the run: reading the "
        "images, every split's training and scoring; a resumed run's earlier sessions are not counted).\n"
        f"- Software: europeana-imgcls {__version__}, PyTorch {compute.get('torch', '?')}.\n"
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _citation(name: str, model_id: str) -> str:
    year = datetime.now(UTC).year
    return (
        "## Citation\n\n"
        "Cite the model by its id, which every annotation it made names, and the images' source, Europeana "
        "(each image under its own rights statement):\n\n"
        "```bibtex\n"
        f"@misc{{europeana_imgcls_{model_id},\n"
        f"  title = {{{{{name}}}: an image classifier of Europeana records}},\n"
        f"  note = {{Model id {model_id}, trained with europeana-imgcls {__version__}; images and metadata from "
        "Europeana, https://www.europeana.eu},\n"
        f"  year = {{{year}}}\n"
        "}\n"
        "```\n"
    )


CONTACT = (
    "## Model card contact\n\n"
    "Not set: eic knows no contact for a run. Write who answers for this model (a name, and an e-mail address or a "
    "web page) here in the copy you publish; `eic train`, `eic evaluate` and `eic calibrate` rewrite "
    "`RUN/MODEL_CARD.md`, so keep your edits in that copy.\n"
)


def _number(value: float | None) -> str:
    """A score to three places; a dash where there is none (written null: not a number, such as the F1 of a class
    that no test image held)."""
    return "–" if value is None else f"{value:.3f}"
