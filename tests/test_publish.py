"""Enrichments that reach Europeana and can be taken back: the two profiles (Europeana's parser, the W3C suite's
MUSTs, JSON-LD), eic publish and eic withdraw against the sandbox's Annotations API over real loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import EnrichConfig, PublishConfig, WithdrawConfig
from europeana_imgcls.core.errors import ApiError, DatasetError
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN, AnnotationStore
from europeana_imgcls.europeana.annotations import (
    CONFIDENCE,
    MODEL,
    MODEL_ID_PREFIX,
    NS,
    annotation_refusal,
    page_refusal,
    publish_problem,
)
from europeana_imgcls.europeana.sandbox import ANNOTATION_PATHS, Sandbox
from europeana_imgcls.outputs.enrichment import enrich
from europeana_imgcls.outputs.publish import publish, withdraw

from .conftest import VOCAB, make_folders

W3C = Path(__file__).parent / "data" / "w3c"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def enriched(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared run's annotations of 24 records (files named after their record, as eic download names them),
    in both profiles and both formats."""
    root = tmp_path_factory.mktemp("enriched")
    images = make_folders(root / "images", per_class=8, size=40)
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps(VOCAB))
    made, paths = {}, {}
    for profile in ("europeana", "w3c"):
        for fmt in ("jsonld", "jsonl"):
            out = root / f"{profile}_{fmt}" / f"{profile}.{fmt}"  # a folder each: they share a stem
            made[out.name] = enrich(
                EnrichConfig(
                    run=trained_run,
                    inputs=[str(images)],
                    output=out,
                    vocab=vocab,
                    profile=profile,
                    precision=0.5,
                    quiet=True,
                )
            )
            paths[out.name] = out
    assert made["europeana.jsonld"].annotations >= 10
    return {"path": paths, "reports": made, "model": made["europeana.jsonld"].model_id, "images": images}


def _items(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
    data = json.loads(path.read_text())
    return data["items"] if data["type"] == "AnnotationPage" else data["first"]["items"]


# ---------------------------------------------------------------------------------------------
# The profiles


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
# Publish and withdraw


def _config(path: Path, sb: Sandbox, **kw: Any) -> PublishConfig:
    return PublishConfig(enrichments=path, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN, quiet=True, **kw)


def _fresh_copy(enriched, tmp_path: Path, name: str = "europeana.jsonld") -> Path:
    copy = tmp_path / name
    copy.write_bytes(enriched["path"][name].read_bytes())
    return copy


def test_publish_sends_each_once_and_withdraw_takes_them_back(enriched, tmp_path: Path) -> None:
    path = _fresh_copy(enriched, tmp_path)
    total = len(_items(path))
    with Sandbox(VOCAB, per_level=2) as sb:
        dry = publish(_config(path, sb, dry_run=True))
        assert dry.annotations == total and dry.sent == 0 and not sb.annotations.live()
        first = publish(_config(path, sb, batch_size=7))
        stored = sb.annotations.live()
        assert first.sent == total == len(stored) and sb.count("/annotations/") == -(-total // 7)
        assert {a["canonical"] for a in stored} == {a["canonical"] for a in _items(path)}
        assert all(a["creator"]["id"] == "http://data.europeana.eu/user/sandbox-user" for a in stored)
        assert not any(k.startswith(NS) for a in stored for k in a)  # Europeana keeps its fields alone
        again = publish(_config(path, sb))
        assert again.sent == 0 and again.published_before == total and len(sb.annotations.live()) == total
        model = enriched["model"]
        gone = withdraw(
            WithdrawConfig(
                published=[path], model=model, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN, quiet=True
            )
        )
        assert gone.withdrawn == total and not sb.annotations.live()
        deletes = sb.count("/annotation/")
        rerun = withdraw(
            WithdrawConfig(
                published=[path],
                model=MODEL_ID_PREFIX + model,
                annotation_api=sb.base_url,
                annotation_token=SANDBOX_TOKEN,
                quiet=True,
            )
        )
        assert rerun.withdrawn == 0 and rerun.withdrawn_before == total and sb.count("/annotation/") == deletes
        back = publish(_config(path, sb))  # withdrawn, then published again on purpose: sent again
        assert back.sent == total and len(sb.annotations.live()) == total


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_publish_stopped_mid_upload_leaves_exactly_one_copy_of_each(
    enriched, tmp_path: Path, sig: signal.Signals
) -> None:
    """The client is stopped while its second upload waits at the server; the server then acts on it (it stores
    it, or finds it cut short) with nobody left to hear the answer. The re-run looks for what it cannot know,
    and sends only what is not there: one copy of each, whichever way the server went."""
    path = _fresh_copy(enriched, tmp_path)
    total = len(_items(path))
    with Sandbox(VOCAB, per_level=2) as sb:
        sb.hold_after(1, ANNOTATION_PATHS)  # the first batch goes through, the second waits at the server
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EUROPEANA_ANNOTATION_TOKEN": SANDBOX_TOKEN}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "europeana_imgcls",
                "publish",
                str(path),
                "--annotation-api",
                sb.base_url,
                "--batch-size",
                "3",
                "--quiet",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert sb.wait_until_held(1), "the upload never reached the server"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and (sig == signal.SIGKILL or b"eic: interrupted" in err), err
        sb.release()
        deadline = time.monotonic() + 120  # a guard against a hang, not a pace
        while sb.annotations.batches_answered < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        held = len(sb.annotations.live()) - 3  # 3 if the server stored the second batch, 0 if it came cut short
        report = publish(_config(path, sb, batch_size=3))
    assert report.published_before == 3 and report.found == held and report.sent == total - 3 - held
    canonicals = [a["canonical"] for a in sb.annotations.live()]
    assert len(canonicals) == len(set(canonicals)) == total


def test_an_upload_whose_answer_never_came_is_found_not_sent_again(enriched, tmp_path: Path) -> None:
    """What a run that stopped mid-upload leaves in the journal ("sending"): found on Europeana by its model,
    record and concept, recorded with its id, never sent twice."""
    from europeana_imgcls.core.journal import Journal, frame

    path = _fresh_copy(enriched, tmp_path)
    items = _items(path)
    with Sandbox(VOCAB, per_level=2) as sb:
        publish(_config(path, sb))
        part = Journal(tmp_path / "europeana.jsonld.published", what="t", settings={}).part
        with part.open("ab") as handle:  # as if no answer had come for any of them
            for item in items:
                handle.write(
                    frame(
                        item["canonical"],
                        {
                            "state": "sending",
                            "model": enriched["model"],
                            "generator": item["generator"]["id"],
                            "record": item["target"].removeprefix("http://data.europeana.eu/item"),
                            "concept": item["body"]["source"],
                        },
                    )
                )
        again = publish(_config(path, sb))
        assert again.found == len(items) and again.sent == 0 and len(sb.annotations.live()) == len(items)


def test_a_batch_refused_for_one_item_still_sends_the_others(enriched, tmp_path: Path) -> None:
    """A rule of Europeana's that eic does not know (here: one concept refused) costs that item alone."""
    path = _fresh_copy(enriched, tmp_path, "europeana.jsonl")
    items = _items(path)
    bad = items[3]["canonical"]

    class Stricter(AnnotationStore):
        def _check(self, batch: list[dict[str, Any]]):  # type: ignore[override]
            if any(item["canonical"] == bad for item in batch):
                return 400, {
                    "success": False,
                    "error": "Batch upload failed!",
                    "operationReport": {"errors": {"0": "Invalid tag format: not on today's list"}},
                }
            return super()._check(batch)

    with Sandbox(VOCAB, per_level=2) as sb:
        sb.annotations = Stricter({SANDBOX_TOKEN: "sandbox-user"})
        report = publish(_config(path, sb, batch_size=8))
        assert report.sent == len(items) - 1 and [c for c, _ in report.rejected] == [bad]
        assert "not on today's list" in report.rejected[0][1]
        assert {a["canonical"] for a in sb.annotations.live()} == {a["canonical"] for a in items} - {bad}


def test_a_file_eic_did_not_write_or_of_another_profile_is_refused_before_anything_is_sent(
    enriched, tmp_path: Path
) -> None:
    items = _items(enriched["path"]["europeana.jsonl"])
    cases = {
        "with_id.jsonl": [dict(items[0], id="http://example.org/anno/5")],  # would update annotation 5
        "creator.jsonl": [dict(items[0], creator={"type": "Software", "name": "x"})],  # never withdrawable
        "other.jsonl": [{k: v for k, v in items[0].items() if k != MODEL}],  # names no model
        "not_record.jsonl": [dict(items[0], target="http://example.org/thing/1")],
        "bad_source.jsonl": [dict(items[0], body={"type": "SpecificResource", "source": "urn:x:y"})],
    }
    with Sandbox(VOCAB, per_level=2) as sb:
        for name, bad in cases.items():
            path = tmp_path / name
            path.write_text("\n".join(json.dumps(b) for b in [*items[1:3], *bad]) + "\n")
            with pytest.raises(DatasetError, match="cannot be published") as refused:
                publish(_config(path, sb))
            assert "annotation 3" in str(refused.value) and "nothing was sent" in str(refused.value)
        result = CliRunner().invoke(
            app,
            ["publish", str(enriched["path"]["w3c.jsonld"]), "--annotation-api", sb.base_url, "--token", SANDBOX_TOKEN],
        )
        assert result.exit_code == 1 and "--profile europeana" in result.stderr
        assert sb.count("/annotations/") == 0


def test_a_missing_or_refused_token_gets_one_line_and_sends_nothing_more(enriched, tmp_path: Path) -> None:
    path = _fresh_copy(enriched, tmp_path)
    with Sandbox(VOCAB, per_level=2) as sb:
        runner = CliRunner()
        missing = runner.invoke(app, ["publish", str(path), "--annotation-api", sb.base_url])
        assert missing.exit_code == 2 and "--annotation-token" in missing.stderr
        refused = runner.invoke(app, ["publish", str(path), "--annotation-api", sb.base_url, "--token", "stolen"])
        assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert "refused the token (401" in refused.stderr and "stolen" not in refused.stderr
        assert sb.count("/annotations/") == 1 and not sb.annotations.live()  # one try, then nothing more
        assert publish(_config(path, sb)).sent == len(_items(path))  # the right token carries on


def test_withdraw_takes_only_the_named_models_and_says_so_for_an_unknown_one(enriched, tmp_path: Path) -> None:
    path = _fresh_copy(enriched, tmp_path)
    with Sandbox(VOCAB, per_level=2, annotation_tokens={SANDBOX_TOKEN: "sandbox-user", "other": "someone"}) as sb:
        publish(_config(path, sb))
        with pytest.raises(DatasetError, match=f"no annotation of model 0000000000000000 .*{enriched['model']}"):
            withdraw(
                WithdrawConfig(
                    published=[path], model="0" * 16, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN
                )
            )
        with pytest.raises(ApiError, match="403"):  # another user's annotations are not theirs to delete
            withdraw(
                WithdrawConfig(
                    published=[path],
                    model=enriched["model"],
                    annotation_api=sb.base_url,
                    annotation_token="other",
                    quiet=True,
                )
            )
        with pytest.raises(DatasetError, match=r"annotation_api: .* then, .* now"):
            withdraw(
                WithdrawConfig(
                    published=[path],
                    model=enriched["model"],
                    annotation_api="http://127.0.0.1:9",
                    annotation_token=SANDBOX_TOKEN,
                )
            )
        assert len(sb.annotations.live()) == len(_items(path))


def test_the_stand_in_refuses_what_europeana_refuses(enriched) -> None:
    """The upload shapes Europeana's parser and validator reject, as the stand-in answers them."""
    import httpx

    good = _items(enriched["path"]["europeana.jsonl"])[0]
    with Sandbox(VOCAB, per_level=2) as sb:

        def post(page: dict[str, Any], token: str | None = SANDBOX_TOKEN) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{sb.base_url}/annotations/", json=page, headers=headers)

        page = {"@context": "http://www.w3.org/ns/anno.jsonld", "type": "AnnotationPage", "items": [good]}
        labelled = post({**page, "label": "eic"})
        assert labelled.status_code == 500 and "Unsupported Property: label" in labelled.json()["error"]
        collection = post({"type": "AnnotationCollection", "first": page})
        assert collection.status_code == 500 and "Unsupported Property: first" in collection.json()["error"]
        long_tag = dict(good, body={"value": "x" * 70})
        report = post({**page, "items": [good, long_tag]})
        assert report.status_code == 400 and report.json()["operationReport"]["errors"] == {
            "0": "Invalid tag size. Must be shorter then 64 characters! tag.size: 70"
        }
        assert post(page, token=None).status_code == 401 and not sb.annotations.live()  # all or nothing
        stored = post(page)
        assert stored.status_code == 201 and stored.json()["items"][0]["id"].startswith(
            "http://data.europeana.eu/annotation/"
        )
        assert post(page).status_code == 201 and len(sb.annotations.live()) == 2  # no duplicate check


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
