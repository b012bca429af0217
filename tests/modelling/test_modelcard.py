"""modelling/modelcard.py: MODEL_CARD.md names the model and reports its evaluation, and the Hugging Face Hub
reads it whole (huggingface_hub, on the local file: no network)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from europeana_imgcls.modelling.modelcard import ONNX_SNIPPET, license_name, write_model_card

from ..support import make_folders

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Publish and withdraw


def test_the_model_card_names_the_model_and_reports_its_evaluation(enriched, trained_run: Path, tmp_path: Path) -> None:
    from europeana_imgcls import EvaluateConfig, evaluate

    model = enriched["model"]
    run = tmp_path / "run"  # a copy: the shared run is evaluated by other tests, and evaluating writes into it
    shutil.copytree(trained_run, run)
    for written in (run / "evaluation.json", run / "MODEL_CARD.md"):
        written.unlink(missing_ok=True)
    write_model_card(run)
    card = (run / "MODEL_CARD.md").read_text()
    _, front, body = card.split("---\n", 2)  # the YAML block model hubs read, first
    for line in (
        "library_name: europeana-imgcls",
        "pipeline_tag: image-classification",
        f"model_id: {model}",
        "- image-classification",
        "- accuracy",
    ):
        assert line in front.splitlines() or any(x.startswith(line) for x in front.splitlines()), line
    assert front.startswith("license: ")
    assert f"Model id **{model}**" in body and f"eic withdraw --model {model}" in body
    for row in (
        "| architecture | tiny |",
        "| optimiser, learning rate | Adam, ",
        "| folds | 3 stratified |",
        "| augmentation | horizontal flip 0.5",
    ):
        assert row in body, row
    assert "Not evaluated yet" in body
    evaluate(EvaluateConfig(run=run, eval_dir=enriched["images"], output_dir=tmp_path / "ev", gallery=0, figures=False))
    card = (run / "MODEL_CARD.md").read_text()
    evaluation = card.split("## Evaluation")[1].split("## Bias, risks and limitations")[0]
    assert f"({3 * 8} images)" in evaluation and "| accuracy |" in evaluation
    providers = [line for line in evaluation.splitlines() if line.startswith("| 90")]
    assert {line.split(" | ")[0].strip("| ") for line in providers} == {
        "9000",
        "9001",
        "9002",
        "9010",
        "9011",
        "9012",
        "9020",
        "9021",
        "9022",
    }
    assert f"model_id: {model}" in card  # evaluating changes no model


# ---------------------------------------------------------------------------------------------
# As the Hugging Face Hub reads it


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run: evaluating it, or editing it, writes into it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_the_hub_reads_the_cards_scores_licence_and_sections(trained_run: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard  # here: its import costs every worker 0.4 s

    from europeana_imgcls import EvaluateConfig, evaluate

    run = _copy(trained_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    card = ModelCard.load(run / "MODEL_CARD.md")  # a local path: huggingface_hub reads the file, asks no server
    data = card.data
    assert data.license == "other" and data.license_name == "europeana-images-rights-unknown"
    assert data.license_link == "https://www.europeana.eu/en/rights"
    assert data.library_name == "europeana-imgcls" and data.pipeline_tag == "image-classification"
    assert data.eval_results is not None and data.model_name == "run"
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {
        name: round(value["mean"], 4) for name, value in summary["metrics"].items()
    }
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in data.eval_results} == {
        ("image-classification", "imagefolder", "test")
    }
    folder = Path(json.loads((run / "split_0" / "config.json").read_text())["data_dir"]).name
    assert data.eval_results[0].dataset_name == f"{folder}: the test folds of 3-fold cross-validation"
    for section in (
        "## Model details",
        "## License",
        "## How to get started with the model",
        "## Intended use",
        "## Training data",
        "## Evaluation",
        "## Bias, risks and limitations",
        "### Recommendations",
        "## Compute infrastructure",
        "## Citation",
        "## Model card contact",
    ):
        assert section in card.text, section
    compute = card.text.split("## Compute infrastructure")[1].split("##")[0]
    assert summary["compute"]["hardware"] in compute and "- Training time: " in compute, compute
    assert f"```python\n{ONNX_SNIPPET}```" in card.text and "eic predict RUN" in card.text

    # An evaluation adds its scores, named after its folder
    eval_dir = make_folders(tmp_path / "held_out", per_class=3, size=40)
    evaluate(
        EvaluateConfig(run=run, eval_dir=eval_dir, output_dir=tmp_path / "ev", gallery=0, figures=False, quiet=True)
    )
    results = ModelCard.load(run / "MODEL_CARD.md").data.eval_results
    assert {r.dataset_name for r in results} == {
        f"{folder}: the test folds of 3-fold cross-validation",
        "held_out: images the run never saw",
    }


def test_the_licence_is_named_by_the_training_images_most_restrictive_reusability() -> None:
    assert license_name(Counter({"open": 40})) == "europeana-open-images"
    assert license_name(Counter({"open": 40, "restricted": 1})) == "europeana-restricted-images"
    assert license_name(Counter({"open": 4, "permission": 2, "restricted": 1})) == "europeana-permission-images"
    assert license_name(Counter()) == "europeana-images-rights-unknown"


@pytest.mark.parametrize(
    "folder",
    ["2024-01-01", "yes", "1e5", "0123", 'a "quoted": name # not a comment', "ligne\u2028deux", "bildarchiv ü 🖼"],
)
def test_the_front_matter_reads_back_whatever_the_training_folder_is_called(
    trained_run: Path, tmp_path: Path, folder: str
) -> None:
    # The card names the training folder in model-index: YAML must read back the string it is, not a date, a
    # boolean, a number or a broken block.
    from huggingface_hub import ModelCard  # here: its import costs every worker 0.4 s

    run = _copy(trained_run, tmp_path)
    for config in run.glob("split_*/config.json"):
        settings = json.loads(config.read_text())
        config.write_text(json.dumps({**settings, "data_dir": str(tmp_path / folder)}))
    write_model_card(run)
    results = ModelCard.load(run / "MODEL_CARD.md").data.eval_results
    assert results[0].dataset_name == f"{folder}: the test folds of 3-fold cross-validation"


def test_the_cards_onnx_snippet_is_deploy_docs() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert f"```python\n{ONNX_SNIPPET}```" in deploy


def test_a_run_trained_before_compute_was_recorded_says_so(trained_run: Path, tmp_path: Path) -> None:
    run = _copy(trained_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    del summary["compute"]
    (run / "summary.json").write_text(json.dumps(summary))
    write_model_card(run)
    text = (run / "MODEL_CARD.md").read_text()
    assert re.search(r"## Compute infrastructure\n\nNot recorded", text)


DIGEST = "0123456789abcdef" * 4
TIMM = {"name": "resnet18", "pretrained_tag": "a1_in1k", "hf_hub_id": "timm/resnet18.a1_in1k"}


@pytest.mark.parametrize(
    ("backbone", "line"),
    [
        (
            {**TIMM, "timm_version": "1.0.15", "weights_sha256": DIGEST},
            "- timm backbone `resnet18`: pretrained tag `a1_in1k`, Hub repository `timm/resnet18.a1_in1k`, timm "
            f"`1.0.15`, starting weights SHA-256 `{DIGEST}`.",
        ),
        ({"name": "resnet18"}, "- timm backbone `resnet18`: no origin recorded."),
        # summary.json is read back: what is not plainly a name is left out, never written into the card as markdown
        ({**TIMM, "weights_sha256": "not a digest", "timm_version": ["1"]}, "Hub repository `timm/resnet18.a1_in1k`."),
        ({**TIMM, "name": "x\n# Injected heading"}, None),
        ({**TIMM, "name": "`code`"}, None),
        ("timm/resnet18", None),
        ([TIMM], None),
        (None, None),
    ],
)
def test_the_card_names_a_timm_backbones_origin_as_the_run_recorded_it(
    trained_run: Path, tmp_path: Path, backbone: object, line: str | None
) -> None:
    run = _copy(trained_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "backbone": backbone}))
    text = write_model_card(run).read_text()
    said = [row for row in text.splitlines() if "timm backbone" in row]
    assert said[0].endswith(line) if line else said == [], said
    assert "# Injected" not in text and "# Model card" in text
