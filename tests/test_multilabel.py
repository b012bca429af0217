"""Multi-label: iterative stratification, tuned thresholds, metrics, and a set that really learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from europeana_imgcls import EvaluateConfig, PredictConfig, evaluate, predict
from europeana_imgcls.modelling.checkpoint import load_checkpoint

from .support import LABELS, make_multilabel_folder, rows


def test_evaluate_and_predict_use_the_tuned_thresholds(ml_run, tmp_path: Path) -> None:
    data, out = ml_run
    held_out = make_multilabel_folder(tmp_path / "eval", count=24, seed=7)
    report = evaluate(EvaluateConfig(run=out, eval_dir=held_out, output_dir=tmp_path / "ev"))
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    thresholds = json.loads((tmp_path / "ev" / "report.json").read_text())["thresholds"]
    predictions = rows(tmp_path / "ev" / "predictions.csv")
    for k, split in enumerate(report.splits):
        mine = [p for p in predictions if p["split"] == split]
        truth = np.array([[c in p["truth"].split() for c in LABELS] for p in mine])
        probs = np.array([[json.loads(p["probabilities"])[c] for c in LABELS] for p in mine])
        predicted = probs >= np.array(thresholds[split])
        assert [" ".join(c for c, v in zip(LABELS, row, strict=True) if v) for row in predicted] == [
            p["prediction"] for p in mine
        ]
        assert metrics["micro_f1"]["per_split"][k] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert metrics["micro_f1"]["mean"] > 0.6
    per_label = rows(tmp_path / "ev" / "per_label.csv")
    assert [r["label"] for r in per_label] == list(LABELS)
    everything = evaluate(EvaluateConfig(run=out, eval_dir=held_out, output_dir=tmp_path / "ev0", threshold=0.0))
    assert everything.summary["micro_recall"]["mean"] == 1.0  # a threshold of 0 says yes to every label

    result = predict(
        PredictConfig(
            run=out,
            inputs=[str(held_out)],
            output=tmp_path / "p.jsonl",
            split="all",
            gradcam_dir=tmp_path / "cams",
            quiet=True,
        )
    )
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert result.predicted == len(lines) == 24
    cuts = np.mean([load_checkpoint(out / f"split_{i}" / "model.pt").meta.thresholds for i in range(3)], axis=0)
    for line in lines:
        expected = [c for c, t in zip(LABELS, cuts, strict=True) if line["probabilities"][c] >= t]
        assert line["labels"] == expected
    assert len(list((tmp_path / "cams").glob("*.jpg"))) == 24


def test_a_multilabel_run_is_calibrated_per_label_and_enriched(ml_run, tmp_path: Path) -> None:
    from europeana_imgcls.core.config import EnrichConfig
    from europeana_imgcls.europeana.annotations import MODEL, NS
    from europeana_imgcls.outputs.enrichment import enrich
    from europeana_imgcls.outputs.review import labelling_config_path

    data, out = ml_run
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["mode"] == "multi-label" and [c["name"] for c in calibration["per_class"]] == list(LABELS)
    assert calibration["images"] == len(rows(data / "labels.csv"))
    reachable = [c for c in calibration["per_class"] if c["threshold"] is not None]
    assert reachable and all(c["precision"] >= 0.95 for c in reachable)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({label: f"http://example.org/concept/{label}" for label in LABELS}))
    fresh = make_multilabel_folder(tmp_path / "fresh", count=30, seed=5)
    report = enrich(
        EnrichConfig(
            run=out,
            inputs=[str(fresh)],
            output=tmp_path / "a.jsonl",
            vocab=vocab,
            review_output=tmp_path / "review.json",
            review_n=3,
            quiet=True,
        )
    )
    truth = {"http://data.europeana.eu/item" + r["ID"]: set(r["category"].split()) for r in rows(fresh / "labels.csv")}
    annotations = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert annotations and report.records == 30 and report.not_records == 0
    # Local files named by eic download still name their record: the record is the target.
    right = sum(a[MODEL][NS + "class"] in truth[a["target"]] for a in annotations)
    assert right / len(annotations) >= 0.85
    per_record = {}
    for a in annotations:
        per_record.setdefault(a["target"], []).append(a[MODEL][NS + "class"])
    assert max(len(v) for v in per_record.values()) >= 2  # several labels for one image
    assert 'choice="multiple"' in labelling_config_path(tmp_path / "review.json").read_text()


def test_a_multilabel_export_has_a_sigmoid_per_label_in_its_graph(ml_run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.outputs.export import export

    run = Path(shutil.copytree(ml_run[1], tmp_path / "run"))
    report = export(ExportConfig(run=run, split="0", quiet=True))  # checked against PyTorch, else refused
    assert max(report.max_difference.values()) <= 1e-3
    sidecar = json.loads((report.output / "model.json").read_text())
    assert sidecar["mode"] == "multi-label"
    assert sidecar["outputs"]["probabilities"]["what"].startswith("sigmoid per label")
