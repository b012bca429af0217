"""The review loop end to end on the sandbox with planted label noise: audit's suspects to people (Label Studio
tasks), their answers imported and applied to the training table, the image folder brought in line by a re-run
of eic download. The reviewers here answer what each image truly shows."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.naming import file_name
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox

from .support import VOCAB, sandbox_config, sandbox_records, sandbox_table

# Found, not imported: importing cleanlab (scikit-learn) at collection costs every worker about a second.
pytestmark = pytest.mark.skipif(find_spec("cleanlab") is None, reason="eic audit needs the [audit] extra (cleanlab)")
TINY = ["--arch", "tiny", "--weights", "none", "--input-size", "32", "--quiet"]


def _answers(tasks: list[dict[str, Any]], truth: dict[str, str]) -> list[dict[str, Any]]:
    """Label Studio's JSON export of the project, each task answered with what its image shows."""
    return [
        {
            "id": n + 1,
            "data": task["data"],
            "predictions": task["predictions"],
            "annotations": [
                {
                    "id": 100 + n,
                    "completed_by": {"id": 3, "email": "curator@museum.example"},
                    "was_cancelled": False,
                    "result": [
                        {
                            "id": f"r{n}",
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


def _check_against_labelling_config(tasks: list[dict[str, Any]], config: str) -> None:
    """What Label Studio checks when the tasks are imported into a project with this labelling interface."""
    view = ET.fromstring(config)
    variables = {tag.get("value", "")[1:] for tag in view.iter() if tag.get("value", "").startswith("$")}
    choices = view.find("Choices")
    assert choices is not None
    allowed = {c.get("value") for c in choices.iter("Choice")}
    image = view.find("Image")
    assert image is not None and choices.get("toName") == image.get("name")
    for task in tasks:
        assert variables <= set(task["data"]), (variables, task["data"])
        (result,) = task["predictions"][0]["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == (
            choices.get("name"),
            image.get("name"),
            "choices",
        )
        assert set(result["value"]["choices"]) <= allowed


@pytest.mark.slow  # end to end: embed, audit, review, apply and download again on the sandbox
def test_audit_review_apply_download_puts_reviewed_records_in_their_true_class(tmp_path: Path) -> None:
    with Sandbox(
        sandbox_config(per_level=24, label_noise=0.15), Knobs(shared_per_concept=0, triples_per_concept=0)
    ) as sb:
        table = sandbox_table(sb, tmp_path / "train.csv")
        records = sandbox_records(sb)
        planted = {r.id for r in records if r.mislabelled}
        truth = {r.id: (r.shows or r.labels)[0] for r in records}
        images = tmp_path / "images"
        download(DownloadConfig(table=table, output_dir=images, quiet=True, max_side=64))
        fetched = sb.count("/images/")
        runner = CliRunner()
        embedded = runner.invoke(app, ["embed", str(images), "-o", str(tmp_path / "emb.parquet"), *TINY])
        assert embedded.exit_code == 0, embedded.stderr
        review = tmp_path / "review.json"
        audited = runner.invoke(
            app,
            ["audit", str(tmp_path / "emb.parquet"), "-o", str(tmp_path / "audit"), "--review-output", str(review),
             "--review-n", "20", "--quiet"],
        )  # fmt: skip
        assert audited.exit_code == 0, audited.stderr
        tasks = json.loads(review.read_text())
        assert 0 < len(tasks) <= 20 and "20 suspects to review" in " ".join(audited.stdout.split())
        _check_against_labelling_config(tasks, review.with_name("review.labelling.xml").read_text())
        assert all(t["data"]["image"].startswith(sb.base_url) for t in tasks)  # the web image, from the table
        found = {t["data"]["ID"] for t in tasks} & planted
        assert len(found) >= len(tasks) // 2, (len(found), len(tasks), len(planted))  # the audit finds the noise

        export = tmp_path / "export.json"
        export.write_text(json.dumps(_answers(tasks, truth)))
        vocab = tmp_path / "vocab.json"
        vocab.write_text(json.dumps(VOCAB))
        steps = [
            ["review", "import", str(export), "-o", str(tmp_path / "reviewed.csv"), "--vocab", str(vocab)],
            ["review", "apply", str(table), str(tmp_path / "reviewed.csv"), "-o", str(tmp_path / "new.csv")],
            ["download", str(tmp_path / "new.csv"), "-o", str(images), "--prune", "--max-side", "64", "--quiet"],
        ]
        for step in steps:
            result = runner.invoke(app, step)
            assert result.exit_code == 0, (step, result.stderr)
        assert sb.count("/images/") == fetched  # the loop fetched nothing twice
    new = {r["ID"]: r["category"] for r in pl.read_csv(tmp_path / "new.csv").to_dicts()}
    for record in found:  # every planted error that was reviewed is fixed, in the table and in the folder
        assert new[record] == truth[record]
        assert (images / truth[record] / file_name(record)).is_file()
        assert [p.parent.name for p in images.glob("*/*.jpg") if p.name == file_name(record)] == [truth[record]]
