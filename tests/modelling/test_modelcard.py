"""modelling/modelcard.py: MODEL_CARD.md names the model and reports its evaluation."""

from __future__ import annotations

from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Publish and withdraw


def test_the_model_card_names_the_model_and_reports_its_evaluation(enriched, trained_run: Path, tmp_path: Path) -> None:
    import shutil

    from europeana_imgcls import EvaluateConfig, evaluate

    model = enriched["model"]
    run = tmp_path / "run"  # a copy: the shared run is evaluated by other tests, and evaluating writes into it
    shutil.copytree(trained_run, run)
    for written in (run / "evaluation.json", run / "MODEL_CARD.md"):
        written.unlink(missing_ok=True)
    from europeana_imgcls.modelling.modelcard import write_model_card

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
    evaluate(EvaluateConfig(run=run, eval_dir=enriched["images"], output_dir=tmp_path / "ev", gallery=0))
    card = (run / "MODEL_CARD.md").read_text()
    evaluation = card.split("## Evaluation")[1].split("## Limitations")[0]
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
