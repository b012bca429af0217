"""Enrichment: calibrated probabilities, precision-targeted thresholds, W3C annotations and the review loop,
on the sandbox: a cross-validated run, then eic enrich --table, then a Label Studio export back in."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from europeana_imgcls import DownloadConfig, download
from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import EnrichConfig, EvaluateConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.europeana.annotations import CONFIDENCE, MODEL, MODEL_ID_PREFIX, NS
from europeana_imgcls.modelling.calibration import load_calibration
from europeana_imgcls.outputs.enrichment import enrich
from europeana_imgcls.outputs.evaluation import evaluate_run
from europeana_imgcls.outputs.review import labelling_config_path

from .support import TARGET, TERMINAL, VOCAB, shows_progress

SCHEMA = json.loads(resources.files("europeana_imgcls").joinpath("data/annotation.schema.json").read_text())


@pytest.mark.slow
def test_enriched_annotations_keep_the_promised_precision_and_validate(world) -> None:
    page = json.loads((world["root"] / "out.jsonld").read_text())
    # The europeana profile: the body of Europeana's batch upload, as its page parser takes it.
    assert page.keys() == {"@context", "type", "items"} and page["type"] == "AnnotationPage"
    assert page["@context"] == "http://www.w3.org/ns/anno.jsonld"
    items = page["items"]
    assert len(items) == world["enrich"].annotations
    validator = Draft202012Validator(SCHEMA)
    for item in items:
        errors = [e.message for e in validator.iter_errors(item)]
        assert not errors, errors
    uri_class = {uri: name for name, uri in VOCAB.items()}
    truth = world["truth"]
    right = sum(
        uri_class[a["body"]["source"]] == truth[a["target"]["scope"].removeprefix("http://data.europeana.eu/item")]
        for a in items
    )
    assert right / len(items) >= TARGET - 0.05
    report = world["enrich"]
    assert report.labelled / report.records > 0.3  # well above zero
    assert not set(report.per_class) & set(report.never_emitted)
    assert {a[MODEL]["id"] for a in items} == {MODEL_ID_PREFIX + report.model_id}
    assert all(a[CONFIDENCE] >= a[MODEL][NS + "threshold"] for a in items)
    assert len({a["canonical"] for a in items}) == len(items)


@pytest.mark.slow
def test_abstentions_go_to_review_as_label_studio_tasks(world) -> None:
    report = world["enrich"]
    tasks = json.loads((world["root"] / "review.json").read_text())
    abstained = [t for t in tasks if t["data"]["reason"] == "abstained"]
    assert len(abstained) == report.abstained > 0
    assert len(tasks) == report.abstained + 5
    annotated = {a["target"]["scope"] for a in json.loads((world["root"] / "out.jsonld").read_text())["items"]}
    assert not {t["data"]["URI"] for t in abstained} & annotated  # abstained records are never annotated
    config = labelling_config_path(world["root"] / "review.json").read_text()
    for task in tasks:
        prediction = task["predictions"][0]
        assert 0 <= prediction["score"] <= 1 and prediction["model_version"].endswith(report.model_id)
        result = prediction["result"][0]
        assert result["from_name"] == "category" and result["to_name"] == "image" and result["type"] == "choices"
        assert all(f'<Choice value="{c}"/>' in config for c in result["value"]["choices"])
        assert task["data"]["image"].startswith("http://127.0.0.1")


def _export(tasks: list[dict], truth: dict[str, str]) -> list[dict]:
    """A Label Studio JSON export of the review project, as the documented format has it."""
    exported = []
    for i, task in enumerate(tasks):
        answer = truth[task["data"]["ID"]]
        annotation = {
            "id": 1000 + i,
            "completed_by": {"id": 7, "email": "curator@museum.example"},
            "was_cancelled": False,
            "ground_truth": False,
            "task": i + 1,
            "lead_time": 3.2,
            "result": [
                {
                    "id": f"r{i}",
                    "from_name": "category",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [answer]},
                }
            ],
        }
        entry = {
            "id": i + 1,
            "data": task["data"],
            "project": 1,
            "predictions": task["predictions"],
            "annotations": [annotation],
        }
        exported.append(entry)
    exported[0]["annotations"] = []  # nobody labelled it
    exported[1]["annotations"][0]["was_cancelled"] = True
    other = "painting" if truth[tasks[2]["data"]["ID"]] != "painting" else "map"
    second = json.loads(json.dumps(exported[2]["annotations"][0]))
    second["result"][0]["value"]["choices"] = [other]
    exported[2]["annotations"].append(second)  # two reviewers disagree
    nothing = json.loads(json.dumps(exported[3]["annotations"][0]))
    nothing["result"] = []  # a reviewer removed the suggestion and chose no class: an answer, not an abstention
    exported[3]["annotations"].append(nothing)
    return exported


@pytest.mark.slow
def test_a_label_studio_export_round_trips_into_training_data(world, tmp_path: Path) -> None:
    tasks = json.loads((world["root"] / "review.json").read_text())
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(tasks, world["truth"])))
    table = tmp_path / "reviewed.csv"
    result = CliRunner().invoke(app, ["review", "import", str(export), "--output", str(table)])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "2 tasks skipped" in said and "2 tasks where reviewers disagree" in said
    df = pl.read_csv(table)
    assert df.columns == ["ID", "URI", "URL", "category", "skos_concept", "reviewed_by"]
    assert df.height == len(tasks) - 4
    assert all(world["truth"][i] == c for i, c in zip(df["ID"], df["category"], strict=True))
    assert set(df["reviewed_by"]) == {"curator@museum.example"}
    assert all(VOCAB[c] == s for c, s in zip(df["category"], df["skos_concept"], strict=True))
    side = json.loads((tmp_path / "reviewed.review.json").read_text())
    assert side["skipped"] == ["1", "2"] and side["conflicts"] == ["3", "4"]
    # The corrections are training data: eic download takes the table as it is.
    saved = download(DownloadConfig(table=table, output_dir=tmp_path / "img", quiet=True, max_side=32))
    assert saved.saved == df.height and saved.failed == 0


@pytest.mark.slow
def test_evaluate_reports_the_promise_on_unseen_images(world, tmp_path: Path) -> None:
    report = evaluate_run(
        EvaluateConfig(
            run=world["root"] / "run", eval_dir=world["root"] / "eval_images", output_dir=tmp_path / "ev", gallery=0
        )
    )
    rows = report.calibration_check
    assert [r["class"] for r in rows] == report.classes
    for row in rows:
        if row["threshold"] is None:
            assert row["labelled"] == 0 and row["out_of_fold_precision"] is None
        else:
            assert row["out_of_fold_precision"] >= TARGET and row["labelled"] > 0
    labelled = sum(r["labelled"] for r in rows)
    right = sum(r["precision"] * r["labelled"] for r in rows if r["labelled"])
    assert right / labelled >= TARGET - 0.1  # the promise, on images the run never saw
    assert (tmp_path / "ev" / "calibration_check.csv").read_text().startswith("class,threshold,out_of_fold_precision")


@pytest.mark.slow
def test_resume_keeps_what_was_done_and_rewrites_the_same_annotations(world, tmp_path: Path) -> None:
    root = world["root"]
    again = enrich(
        EnrichConfig(
            run=root / "run",
            table=root / "new.csv",
            output=root / "out.jsonld",
            quiet=True,
            resume=True,
            image_dir=root / "out_images",
        )
    )
    assert again.already_done == world["enrich"].records and again.annotations == world["enrich"].annotations
    result = CliRunner().invoke(
        app, ["enrich", str(root / "run"), "--table", str(root / "new.csv"), "-o", str(root / "out.jsonld"), "--quiet"]
    )
    assert result.exit_code == 1 and "already exists" in result.stderr and "--resume" in result.stderr
    result = CliRunner().invoke(  # the scoring shows its progress in a terminal
        app,
        ["enrich", str(root / "run"), "--table", str(root / "new.csv"), "-o", str(tmp_path / "again.jsonld")],
        env=TERMINAL,
    )
    assert result.exit_code == 0 and shows_progress(result.stderr, "label"), result.stderr
    with pytest.raises(DatasetError, match=r'other settings \(split: "best" then, "all" now'):
        enrich(
            EnrichConfig(
                run=root / "run",
                table=root / "new.csv",
                output=root / "out.jsonld",
                quiet=True,
                resume=True,
                split="all",
                image_dir=root / "out_images",
            )
        )


@pytest.mark.slow
def test_inputs_that_name_no_record_are_never_annotated(world, tmp_path: Path) -> None:
    sb, root = world["sandbox"], world["root"]
    record = next(r for r in sb.catalogue if r.type == "IMAGE" and r.has_url and not r.fault)
    report = enrich(
        EnrichConfig(run=root / "run", inputs=[sb.image_url(record)], output=tmp_path / "u.jsonl", quiet=True)
    )
    assert report.records == 1 and report.not_records == 1 and report.annotations == 0
    assert (tmp_path / "u.jsonl").read_text() == ""


@pytest.mark.slow
def test_a_stricter_target_labels_fewer_records(world, tmp_path: Path) -> None:
    root = world["root"]
    strict = load_calibration(root / "run", 0.999)
    loose = load_calibration(root / "run")
    assert strict.precision_target == 0.999 and loose.precision_target == TARGET
    assert all(
        s.threshold is None or (lo.threshold is not None and s.threshold >= lo.threshold)
        for s, lo in zip(strict.per_class, loose.per_class, strict=True)
    )
    result = CliRunner().invoke(
        app,
        [
            "enrich",
            str(root / "run"),
            "--table",
            str(root / "new.csv"),
            "-o",
            str(tmp_path / "strict.jsonl"),
            "--precision",
            "0.999",
            "--quiet",
            "--image-dir",
            str(root / "out_images"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    lines = (tmp_path / "strict.jsonl").read_text().splitlines()
    assert len(lines) <= world["enrich"].annotations
    assert all(json.loads(line)["type"] == "Annotation" for line in lines)


@pytest.mark.slow
def test_bad_input_is_one_line(world, tmp_path: Path) -> None:
    root = world["root"]
    runner = CliRunner()

    def fails(args: list[str], code: int, *words: str) -> None:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert all(w in result.stderr for w in words), result.stderr

    enrich_args = ["enrich", str(root / "run"), "--table", str(root / "new.csv"), "--quiet"]
    fails([*enrich_args, "-o", str(tmp_path / "a.jsonld"), "--precision", "1.5"], 2, "precision")
    fails([*enrich_args, "-o", str(tmp_path / "a.csv")], 2, ".jsonld")
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"statue": "http://data.europeana.eu/concept/base/1"}))
    emitted = next(c.name for c in world["train"].calibration.per_class if c.threshold is not None)
    fails([*enrich_args, "-o", str(tmp_path / "a.jsonld"), "--vocab", str(vocab)], 1, "no concept URI", emitted)
    fails(["calibrate", str(root / "run"), "--precision", "0"], 2, "precision")
    not_ls = tmp_path / "not_ls.json"
    not_ls.write_text(json.dumps({"tasks": []}))
    fails(["review", "import", str(not_ls), "-o", str(tmp_path / "t.csv")], 1, "not a Label Studio JSON export")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps(
            [
                {
                    "id": 1,
                    "data": {"image": "http://127.0.0.1:9/a.jpg", "ID": "/1/a"},
                    "annotations": [
                        {"result": [{"type": "choices", "from_name": "category", "value": {"choices": ["unicorn"]}}]}
                    ],
                }
            ]
        )
    )
    fails(["review", "import", str(unknown), "-o", str(tmp_path / "t.csv")], 1, "unicorn")
    other = tmp_path / "other_project.json"
    other.write_text(json.dumps([{"id": 1, "data": {"image": "http://127.0.0.1:9/a.jpg"}, "annotations": []}]))
    fails(["review", "import", str(other), "-o", str(tmp_path / "t.csv")], 1, "no task has data.ID")
    assert not (tmp_path / "t.csv").exists()


# ---------------------------------------------------------------------------------------------
# The numbers, on data with known answers


@pytest.mark.slow
def test_enrich_in_shards_then_one_merge_writes_the_same_annotations(world, tmp_path: Path) -> None:
    root = world["root"]
    out = tmp_path / "out.jsonld"
    common = dict(run=root / "run", table=root / "new.csv", output=out, quiet=True)
    shards = [enrich(EnrichConfig(**common, shard=f"{k}/2")) for k in range(2)]
    assert not out.exists() and all(s.records for s in shards)  # a shard writes no annotations
    merged = enrich(EnrichConfig(**common, resume=True))
    assert merged.already_done == sum(s.records for s in shards) == world["enrich"].records

    def said(path: Path) -> list[tuple[str, str, float]]:
        items = json.loads(path.read_text())["items"]
        return sorted((a["target"]["scope"], a["body"]["source"], round(a[CONFIDENCE], 4)) for a in items)

    assert said(out) == said(root / "out.jsonld") and merged.annotations == world["enrich"].annotations


@pytest.mark.slow
def test_enrich_with_the_exported_model_in_shards_decides_as_pytorch_does(world, tmp_path: Path) -> None:
    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.outputs.export import export

    root = world["root"]
    export(ExportConfig(run=root / "run", output=tmp_path / "onnx", quiet=True))
    out = tmp_path / "out.jsonld"
    common = dict(
        run=root / "run", table=root / "new.csv", output=out, runtime="onnx", onnx_model=tmp_path / "onnx", quiet=True
    )
    for k in range(2):
        enrich(EnrichConfig(**common, shard=f"{k}/2"))
    merged = enrich(EnrichConfig(**common, resume=True))
    assert merged.already_done == world["enrich"].records

    def probabilities(path: Path) -> dict[str, dict[str, float]]:
        return {r["ID"]: r["probabilities"] for r in map(json.loads, path.read_text().splitlines())}

    thresholds = {c.name: c.threshold for c in load_calibration(root / "run").per_class}
    ours, theirs = probabilities(out.with_name("out.predictions.jsonl")), probabilities(root / "out.predictions.jsonl")
    assert ours.keys() == theirs.keys()
    borderline = 0
    for record, probs in ours.items():
        for name, threshold in thresholds.items():
            if threshold is None:
                continue
            if abs(theirs[record][name] - threshold) < 1e-4:
                borderline += 1
            else:
                assert (probs[name] >= threshold) == (theirs[record][name] >= threshold), (record, name)
    if not borderline:
        assert merged.annotations == world["enrich"].annotations and merged.labelled == world["enrich"].labelled


def test_a_record_listed_twice_is_annotated_once(world, tmp_path: Path) -> None:
    root = world["root"]
    twice = pl.concat([pl.read_csv(root / "new.csv").head(8)] * 2)  # a table that repeats its records
    twice.write_csv(tmp_path / "twice.csv")
    out = tmp_path / "out.jsonld"
    report = enrich(EnrichConfig(run=root / "run", table=tmp_path / "twice.csv", output=out, quiet=True))
    items = json.loads(out.read_text())["items"]
    said = [(a["target"]["scope"], a["body"]["source"]) for a in items]
    assert said and len(said) == len(set(said)) == report.annotations
    assert report.records == 8


@pytest.mark.slow
def test_a_shard_with_another_model_setting_is_refused(world, tmp_path: Path) -> None:
    root = world["root"]
    common = dict(run=root / "run", table=root / "new.csv", output=tmp_path / "out.jsonld", quiet=True)
    enrich(EnrichConfig(**common, shard="0/2"))
    with pytest.raises(DatasetError, match=r'other settings \(split: "best" then, "all" now'):
        enrich(EnrichConfig(**common, shard="1/2", split="all"))  # would mix two models in one annotation set


@pytest.mark.slow
def test_a_museums_own_table_targets_its_own_records_or_is_refused_before_work(world, tmp_path: Path) -> None:
    root = world["root"]
    fresh = pl.read_csv(root / "new.csv").head(12)
    museum = tmp_path / "museum.csv"
    numbers = [f"RM-1990.{i:03d}" for i in range(fresh.height)]
    pl.DataFrame(
        {
            "object_number": numbers,
            "image": fresh["URL"],
            "link": [f"https://collection.example.org/objects/{n}" for n in numbers],
        }
    ).write_csv(museum)
    base = ["enrich", str(root / "run"), "--table", str(museum), "--quiet", "--image-dir", str(tmp_path / "img")]
    mapped = ["--columns", "ID=object_number,URL=image"]

    refused = CliRunner().invoke(app, [*base, *mapped, "-o", str(tmp_path / "a.jsonld")])
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "not Europeana record IDs (e.g. RM-1990.000)" in refused.stderr
    assert "--columns URI=" in refused.stderr and "--item-uri" in refused.stderr
    assert not (tmp_path / "a.jsonld").exists() and not (tmp_path / "img").exists()  # before any work

    template = ["--item-uri", "https://collection.example.org/object/{ID}"]
    europeana = CliRunner().invoke(app, [*base, *mapped, *template, "-o", str(tmp_path / "b.jsonld")])
    assert europeana.exit_code != 0 and "--profile w3c" in europeana.stderr, europeana.stderr

    by_template = CliRunner().invoke(
        app, [*base, *mapped, *template, "--profile", "w3c", "-o", str(tmp_path / "c.jsonl")]
    )
    assert by_template.exit_code == 0, by_template.stderr
    by_column = CliRunner().invoke(
        app,
        [
            *base,
            "--columns",
            "ID=object_number,URL=image,URI=link",
            "--profile",
            "w3c",
            "-o",
            str(tmp_path / "d.jsonl"),
        ],
    )
    assert by_column.exit_code == 0, by_column.stderr
    for name, prefix in (
        ("c.jsonl", "https://collection.example.org/object/RM-1990."),
        ("d.jsonl", "https://collection.example.org/objects/RM-1990."),
    ):
        annotations = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        scopes = {a["target"]["scope"] if isinstance(a["target"], dict) else a["target"] for a in annotations}
        assert annotations and all(s.startswith(prefix) for s in scopes), scopes

    predicted = tmp_path / "p.csv"
    result = CliRunner().invoke(
        app, ["predict", str(root / "run"), "--table", str(museum), *mapped, "-o", str(predicted), "--quiet",
              "--image-dir", str(tmp_path / "img")]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert pl.read_csv(predicted)["URI"].null_count() == fresh.height  # no made-up Europeana link


def test_enrich_writes_only_what_publish_would_send() -> None:
    """Enrich judges a source and a target by publish's rules: one annotation publish refuses stops a whole file."""
    from europeana_imgcls.outputs.enrichment import Refused, _target

    assert _target({"image": "http://x.org/a/../b.jpg", "ID": "/1/ab"}, True) == "http://data.europeana.eu/item/1/ab"
    assert isinstance(_target({"image": "http://x.org/b.jpg", "ID": "/1/ab//c"}, True), Refused)
    assert _target({"image": "http://x.org/b.jpg", "ID": "/1/ab"}, True) == {
        "scope": "http://data.europeana.eu/item/1/ab",
        "source": "http://x.org/b.jpg",
    }
