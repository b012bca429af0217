"""Enrichment: calibrated probabilities, precision-targeted thresholds, W3C annotations and the review loop,
on the sandbox: a cross-validated run, then eic enrich --table, then a Label Studio export back in."""

from __future__ import annotations

import functools
import json
from http.server import SimpleHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import EnrichConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.core.naming import file_name
from europeana_imgcls.europeana.annotations import (
    CONFIDENCE,
    MODEL,
    MODEL_ID_PREFIX,
    NS,
    annotation_refusal,
    page_refusal,
    publish_problem,
)
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.modelling.calibration import load_calibration
from europeana_imgcls.outputs.enrichment import enrich
from europeana_imgcls.outputs.review import labelling_config_path

from ..support import (
    LABELS,
    TARGET,
    TERMINAL,
    VOCAB,
    _items,
    _one_line,
    assert_one_line_error,
    eic,
    make_folders,
    make_multilabel_folder,
    rows,
    sandbox_table,
    serving,
    shows_progress,
)

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
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_enrich_with_the_exported_model_in_shards_decides_as_pytorch_does(world, runtime: str, tmp_path: Path) -> None:
    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.outputs.export import export

    root = world["root"]
    export(ExportConfig(run=root / "run", output=tmp_path / "onnx", quiet=True))
    out = tmp_path / "out.jsonld"
    common = dict(
        run=root / "run", table=root / "new.csv", output=out, runtime=runtime, onnx_model=tmp_path / "onnx", quiet=True
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


def test_a_record_listed_twice_is_annotated_once(trained_run: Path, sandbox: Sandbox, tmp_path: Path) -> None:
    table = sandbox_table(sandbox, tmp_path / "records.csv")
    twice = pl.concat([pl.read_csv(table).head(8)] * 2)  # a table that repeats its records
    twice.write_csv(tmp_path / "twice.csv")
    out = tmp_path / "out.jsonld"
    config = EnrichConfig(run=trained_run, table=tmp_path / "twice.csv", output=out, precision=0.5, quiet=True)
    report = enrich(config)
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


@pytest.mark.slow  # end to end on the shared multi-label run
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


# ---------------------------------------------------------------------------------------------
# The profiles


W3C = Path(__file__).parents[1] / "data" / "w3c"


def test_the_europeana_profile_is_what_europeanas_parser_and_validator_take(enriched) -> None:
    page = json.loads((enriched["path"]["europeana.jsonld"]).read_text())
    assert page.keys() == {"@context", "type", "items"} and page_refusal(page) is None  # no label, no startIndex
    for path in ("europeana.jsonld", "europeana.jsonl"):
        for item in _items(enriched["path"][path]):
            assert annotation_refusal(item) is None and publish_problem(item) is None
            assert "id" not in item and "creator" not in item  # no update of another's; owned by the token's user
            generator = item["generator"]
            assert generator["id"].startswith("https://") and enriched["model"] in generator["id"]
            assert generator["name"].startswith("europeana-imgcls ") and enriched["model"] in generator["name"]


def _w3c_registry():
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    registry: Registry = Registry()
    for path in sorted((W3C / "definitions").glob("*.json")):
        schema = json.loads(path.read_text())
        registry = registry.with_resource(schema["id"], Resource(contents=schema, specification=DRAFT4))
    return registry


def _musts(test: str, document: Any) -> list[str]:
    """The W3C test suite's MUST assertions of ``test`` that ``document`` fails (each is evaluated on its own)."""
    from jsonschema import Draft4Validator, FormatChecker

    registry = _w3c_registry()
    failed = []
    for assertion in json.loads((W3C / test).read_text())["assertions"]:
        schema = json.loads((W3C / assertion).read_text())
        valid = Draft4Validator(schema, registry=registry, format_checker=FormatChecker()).is_valid(document)
        if valid != (schema.get("expectedResult", "valid") == "valid"):
            failed.append(f"{assertion}: {schema.get('errorMessage')}")
    return failed


def test_the_w3c_profile_passes_the_w3c_test_suites_musts(enriched) -> None:
    from jsonschema import FormatChecker

    assert "uri" in FormatChecker().checkers  # the suite's URI checks run (rfc3986-validator), not pass silently
    paths = enriched["path"]
    collection = json.loads(paths["w3c.jsonld"].read_text())
    assert not _musts("collections/collectionMusts.test", collection)
    assert not _musts("collections/pages/pageMusts.test", collection)
    for path in ("w3c.jsonld", "w3c.jsonl"):
        for item in _items(paths[path]):
            assert not _musts("annotations/annotationMusts.test", item), item
    # The europeana profile cannot pass them: an upload item with an id would update another annotation.
    europeana = _items(paths["europeana.jsonl"])[0]
    assert any("annotationIdValidated" in f for f in _musts("annotations/annotationMusts.test", europeana))


def test_every_eic_property_survives_json_ld_expansion(enriched) -> None:
    """Expanded with the W3C context (a local copy), nothing of eic's is dropped and every IRI is absolute."""
    from pyld import jsonld

    context = json.loads((W3C / "anno.jsonld").read_text())

    def loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        assert url.rstrip("/") == "http://www.w3.org/ns/anno.jsonld", url  # nothing else is fetched
        return {"contextUrl": None, "documentUrl": url, "document": context}

    for name in ("europeana.jsonl", "w3c.jsonl"):
        item = _items(enriched["path"][name])[0]
        (expanded,) = jsonld.expand(item, {"documentLoader": loader})
        assert expanded[CONFIDENCE][0]["@value"] == item[CONFIDENCE]
        (model,) = expanded[MODEL]
        assert model["@id"] == MODEL_ID_PREFIX + enriched["model"]  # absolute, not a relative IRI
        assert {k for k in item[MODEL] if k != "id"} <= set(model)  # class, threshold, run, splits... all kept
        assert model[NS + "class"][0]["@value"] in VOCAB
        (generator,) = expanded["http://www.w3.org/ns/activitystreams#generator"]
        assert generator["@id"] == item["generator"]["id"]


# ---------------------------------------------------------------------------------------------
# Publishing only what Europeana should hold: hostile files, answers, settings (issue #31)


@pytest.mark.parametrize(
    ("value", "said"), [("NaN", "NaN"), ("Infinity", "infinity"), ("1.5", "1.5"), ('"0.9"', "0.9")]
)
def test_enrich_refuses_a_probability_that_is_no_probability_in_one_line(
    enriched, tmp_path: Path, value: str, said: str
) -> None:
    """A predictions file edited or damaged between runs (eic enrich --resume reads it back): no annotation with a
    confidence that is no probability (NaN, infinite, over 1, text) is written; one line says so."""
    import shutil

    source = enriched["path"]["europeana.jsonl"]
    out = tmp_path / source.name
    predictions = out.with_name(f"{out.stem}.predictions.jsonl")
    shutil.copy(source, out)
    rows = [json.loads(line) for line in source.with_name(predictions.name).read_text().splitlines()]
    for row in rows:
        row["probabilities"] = {c: (value if i == 0 else p) for i, (c, p) in enumerate(row["probabilities"].items())}
    predictions.write_text("".join(json.dumps(r).replace('"' + value + '"', value) + "\n" for r in rows))
    journal = f"{predictions.name}.journal"  # what says which model wrote them
    shutil.copytree(source.with_name(journal), predictions.with_name(journal))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    args = ["enrich", str(enriched["trained_run"]), str(enriched["images"]), "-o", str(out), "--vocab", str(vocab)]
    result = CliRunner().invoke(app, [*args, "--precision", "0.5", "--resume", "--quiet"])
    line = _one_line(result)
    assert said in line and ("NaN" in said or "infinity" in said or predictions.name in line), line
    assert out.read_bytes() == source.read_bytes()


def test_outputs_of_one_enrich_that_are_one_file_are_refused_before_any_work(enriched, tmp_path: Path) -> None:
    """--review-output naming --output (or the predictions file resume needs) replaced the annotations with review
    tasks, and the command said it had written the annotations."""
    out = tmp_path / "out.jsonld"
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    args = ["enrich", str(enriched["trained_run"]), str(enriched["images"]), "-o", str(out), "--vocab", str(vocab)]
    for review in (out, tmp_path / "out.predictions.jsonl", tmp_path / "." / "out.jsonld"):
        line = _one_line(CliRunner().invoke(app, [*args, "--review-output", str(review), "--quiet"]))
        assert "--review-output" in line and "one file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.json"]


@pytest.mark.slow(seconds=3)  # an int8 export, then enrich with it
def test_annotations_and_the_summary_say_what_computed_them(enriched, tmp_path: Path) -> None:
    """An int8 file may put a record over a threshold that float32 does not: enrich with one said nothing of it,
    and its annotations named the same model as PyTorch's. The summary and each annotation's model block say the
    runtime and whether its file is int8."""
    import shutil

    from europeana_imgcls.core.config import ExportConfig
    from europeana_imgcls.outputs.export import export

    run = Path(shutil.copytree(enriched["trained_run"], tmp_path / "run"))
    export(ExportConfig(run=run, output=run / "int8", quantize="dynamic", min_agreement=0.0, quiet=True))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    common = ["--vocab", str(vocab), "--precision", "0.5"]
    for runtime, files, engine in (("torch", [], "PyTorch"), ("onnx", ["--onnx-model", str(run / "int8")], None)):
        engine = engine or "ONNX Runtime, int8 (dynamic)"
        out = tmp_path / f"{runtime}.jsonl"
        args = ["enrich", str(run), str(enriched["images"]), "-o", str(out), "--runtime", runtime, *files, *common]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and f", {engine})" in " ".join(result.stdout.split()), result.output
        annotations = [json.loads(line) for line in out.read_text().splitlines()]
        assert annotations and {a[MODEL][NS + "engine"] for a in annotations} == {engine}
        args = ["predict", str(run), str(enriched["images"]), "-o", str(tmp_path / f"{runtime}.csv"), "--runtime"]
        said = CliRunner().invoke(app, [*args, runtime, *files])
        assert said.exit_code == 0 and f"({engine})" in " ".join(said.stdout.split()), said.output


@pytest.mark.parametrize("damage", ["cut", "not an object", "no image"])
def test_a_damaged_line_of_the_predictions_file_is_one_line_on_resume(enriched, tmp_path: Path, damage: str) -> None:
    """The predictions file eic enrich --resume (and eic predict --resume) reads back, with a line cut short, a line
    that is no object, or a row without its image: one line naming the file and the line, not a traceback."""
    import shutil

    source = enriched["path"]["europeana.jsonl"]
    out = tmp_path / source.name
    predictions = out.with_name(f"{out.stem}.predictions.jsonl")
    shutil.copy(source, out)
    lines = source.with_name(predictions.name).read_text().splitlines()
    row = json.loads(lines[2])
    lines[2] = {"cut": lines[2][:40], "not an object": "[1, 2]", "no image": json.dumps({**row, "image": None})}[damage]
    predictions.write_text("\n".join(lines) + "\n")
    journal = f"{predictions.name}.journal"  # what says which model wrote them
    shutil.copytree(source.with_name(journal), predictions.with_name(journal))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    args = ["enrich", str(enriched["trained_run"]), str(enriched["images"]), "-o", str(out), "--vocab", str(vocab)]
    line = _one_line(CliRunner().invoke(app, [*args, "--precision", "0.5", "--resume", "--quiet"]))
    assert f"{predictions}, line 3: " in line and "into another output, without --resume" in line, line
    assert out.read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------------------------------
# Review tasks whose local images Label Studio opens


class _Files(SimpleHTTPRequestHandler):
    """``python -m http.server``, quiet."""

    def log_message(self, *args: object) -> None:
        pass


def test_review_tasks_of_local_images_get_urls_label_studio_opens(trained_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "museum"  # what Label Studio (or a web server) serves
    scans = make_folders(root / "scans", per_class=3)  # files named after their records, as eic download names them
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))

    def tasks(name: str, *options: object) -> list[dict[str, Any]]:
        """enrich's review tasks of the scans, made with ``options``: each task with the file it should show."""
        out = tmp_path / name
        result = eic(
            "enrich", trained_run, scans, "-o", out / "a.jsonld", "--review-output", out / "review.json",
            "--vocab", vocab, "--quiet", *options,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        made = json.loads((out / "review.json").read_text())
        assert len(made) == 9
        return made

    def shown(task: dict[str, Any]) -> bytes:
        """The file a task's record is: the bytes its image must show."""
        (found,) = [path for path in scans.rglob("*.jpg") if path.name == file_name(task["data"]["ID"])]
        return found.read_bytes()

    # Label Studio serves the files itself: /data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>, which it
    # reads as Django reads a query (percent-decoded), joined to that root (label_studio/core/views.py).
    for task in tasks("ls", "--document-root", root):
        image = task["data"]["image"]
        assert image.startswith("/data/local-files/?d=scans/")
        (path,) = parse_qs(urlsplit(image).query)["d"]
        assert (root / path).read_bytes() == shown(task)
    # A web server serves them: python -m http.server in the root, its address given.
    with serving(functools.partial(_Files, directory=str(root))) as base:  # type: ignore[arg-type]
        for task in tasks("http", "--document-root", root, "--image-url", base):
            answer = httpx.get(task["data"]["image"])
            assert answer.status_code == 200 and answer.content == shown(task)
    # A folder that does not hold the images: refused before any work.
    (tmp_path / "elsewhere").mkdir()
    result = eic(
        "enrich", trained_run, scans, "-o", tmp_path / "x" / "a.jsonld", "--review-output", tmp_path / "x" / "r.json",
        "--vocab", vocab, "--document-root", tmp_path / "elsewhere", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, f"{scans} is not under {tmp_path / 'elsewhere'}, which --document-root serves")
    assert not (tmp_path / "x").exists()
