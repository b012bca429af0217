"""Enrichments that reach Europeana and can be taken back: the two profiles (Europeana's parser, the W3C suite's
MUSTs, JSON-LD), eic publish and eic withdraw against the sandbox's Annotations API over real loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import PublishConfig, WithdrawConfig
from europeana_imgcls.core.errors import ConfigError, DatasetError
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN, AnnotationStore
from europeana_imgcls.europeana.annotations import CONFIDENCE, MODEL, MODEL_ID_PREFIX, NS
from europeana_imgcls.europeana.sandbox import ANNOTATION_PATHS, Knobs, Sandbox
from europeana_imgcls.outputs.publish import publish, withdraw

from ..hostile import assert_untouched, cli_works_or_one_line, mutated_json, scratch, snapshot
from ..support import (
    MODEL_A,
    MODEL_B,
    _config,
    _items,
    _made,
    _one_line,
    _write,
    eic_on_a_deploy_machine,
    examples,
    sandbox_config,
)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# The profiles


# ---------------------------------------------------------------------------------------------
# Publish and withdraw


def _fresh_copy(enriched, tmp_path: Path, name: str = "europeana.jsonld") -> Path:
    copy = tmp_path / name
    copy.write_bytes(enriched["path"][name].read_bytes())
    return copy


def test_publish_sends_each_once_and_withdraw_takes_them_back(enriched, tmp_path: Path) -> None:
    path = _fresh_copy(enriched, tmp_path)
    total = len(_items(path))
    with Sandbox(sandbox_config(per_level=2)) as sb:
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


@pytest.mark.slow(seconds=2)  # eic processes without torch
def test_publish_and_withdraw_run_on_a_machine_that_only_labels(enriched, tmp_path: Path) -> None:
    """Where only what docs/deploy.md installs can be imported (no PyTorch), enrich's annotations go out and come
    back as they do from a full install."""
    path = _fresh_copy(enriched, tmp_path)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        env = {"EUROPEANA_ANNOTATION_API": sb.base_url, "EUROPEANA_ANNOTATION_TOKEN": SANDBOX_TOKEN}
        done = eic_on_a_deploy_machine("publish", str(path), "--quiet", runtime=None, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(sb.annotations.live()) == len(_items(path))
        done = eic_on_a_deploy_machine("withdraw", str(path), "--model", enriched["model"], runtime=None, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not sb.annotations.live()


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
    with Sandbox(sandbox_config(per_level=2)) as sb:
        # The search for what the model has online and the first batch go through, the second waits at the server.
        sb.hold_after(2, ANNOTATION_PATHS)
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
    with Sandbox(sandbox_config(per_level=2)) as sb:
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

    with Sandbox(sandbox_config(per_level=2)) as sb:
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
    with Sandbox(sandbox_config(per_level=2)) as sb:
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
    with Sandbox(sandbox_config(per_level=2)) as sb:
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
    with Sandbox(
        sandbox_config(per_level=2), Knobs(annotation_tokens={SANDBOX_TOKEN: "sandbox-user", "other": "someone"})
    ) as sb:
        publish(_config(path, sb))
        with pytest.raises(DatasetError, match=f"no annotation of model 0000000000000000 .*{enriched['model']}"):
            withdraw(
                WithdrawConfig(
                    published=[path], model="0" * 16, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN
                )
            )
        refused = withdraw(  # another user's annotations are not theirs to delete: refused (403), each left
            WithdrawConfig(
                published=[path],
                model=enriched["model"],
                annotation_api=sb.base_url,
                annotation_token="other",
                quiet=True,
            )
        )
        assert refused.refused == len(_items(path)) and refused.withdrawn == 0 and "creators" in refused.refusal
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


# ---------------------------------------------------------------------------------------------
# Publishing only what Europeana should hold: hostile files, answers, settings (issue #31)

W3C_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
ENV = {"EUROPEANA_ANNOTATION_TOKEN": SANDBOX_TOKEN}


def test_a_file_with_a_hostile_target_is_refused_in_one_line_and_nothing_is_sent(tmp_path: Path) -> None:
    items = _made(3)
    items[2]["target"] = {"scope": "http://data.europeana.eu/item/9000/r2/../../../user/7", "source": "https://i/1"}
    path = _write(tmp_path / "a.jsonl", items)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        result = CliRunner().invoke(app, ["publish", str(path), "--annotation-api", sb.base_url], env=ENV)
        line = _one_line(result)
        assert "annotation 3" in line and "nothing was sent" in line
        assert sb.count("/annotation") == 0


def test_an_id_the_server_gives_that_names_no_annotation_of_it_is_not_taken_as_published(tmp_path: Path) -> None:
    """A 201 whose ids are not annotation URIs of that API: nothing is recorded as published; the next run finds
    what was stored by search and sends nothing twice."""
    path = _write(tmp_path / "a.jsonl", _made(4))
    forged = ["javascript:alert(1)", "http://evil.example.org/annotation/1", "http://data.europeana.eu/annotation/x"]

    class Forger(AnnotationStore):
        def post_batch(self, authorization: str | None, body: bytes):  # type: ignore[no-untyped-def]
            status, page = super().post_batch(authorization, body)
            if status == 201 and page is not None:
                page["items"] = [dict(a, id=forged[i % len(forged)]) for i, a in enumerate(page["items"])]
            return status, page

    with Sandbox(sandbox_config(per_level=2)) as sb:
        sb.annotations = Forger({SANDBOX_TOKEN: "sandbox-user"})
        result = CliRunner().invoke(app, ["publish", str(path), "--annotation-api", sb.base_url], env=ENV)
        line = _one_line(result)
        assert sb.base_url in line and "javascript" not in line.split(sb.base_url)[0]
        from europeana_imgcls.core.journal import read_records

        states = [v for _, v in read_records(tmp_path / "a.jsonl.published" / "part.ndjson")]
        assert states and not any(s["state"] == "published" for s in states)
        sb.annotations.__class__ = AnnotationStore  # the server mends its ways
        again = publish(_config(path, sb))
        assert again.found == 4 and again.sent == 0 and len(sb.annotations.live()) == 4


def test_withdraw_deletes_nothing_it_cannot_name(tmp_path: Path) -> None:
    """A journal state whose id is not an annotation of that API (another host's, a path that climbs) deletes
    nothing there, whatever number it ends with."""
    from europeana_imgcls.core.journal import frame

    path = _write(tmp_path / "a.jsonl", _made(3))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        asked = sb.count("/annotation/")  # publish's search for what the model has online
        folder = tmp_path / "forged.published"
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({"annotation_api": sb.base_url}))
        ids = ["http://evil.example.org/annotation/2", "http://data.europeana.eu/annotation/9/../2", "2"]
        (folder / "part.ndjson").write_bytes(
            b"".join(
                frame(f"urn:uuid:{i}", {"state": "published", "id": id_, "model": MODEL_A}) for i, id_ in enumerate(ids)
            )
        )
        result = CliRunner().invoke(
            app, ["withdraw", str(folder), "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV
        )
        assert result.exit_code == 1 and "no annotation of model" in _one_line(result)
        assert len(sb.annotations.live()) == 3 and sb.count("/annotation/") == asked


def test_withdraw_without_the_journals_finds_the_models_annotations_by_their_generator(tmp_path: Path) -> None:
    """The journals lost (or on another machine): eic withdraw --model ID without files asks the API's search
    for the model's generator, page by page, and deletes what it finds: that model's, nobody else's."""
    import shutil

    mine = _write(tmp_path / "a.jsonl", _made(230))  # three pages of 100
    other = _write(tmp_path / "b.jsonl", _made(5, digest=MODEL_B))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(mine, sb, batch_size=100))
        publish(_config(other, sb))
        shutil.rmtree(tmp_path / "a.jsonl.published")
        runner = CliRunner()
        dry = runner.invoke(app, ["withdraw", "--model", MODEL_A, "--annotation-api", sb.base_url, "--dry-run"])
        assert dry.exit_code == 0 and "230" in dry.stdout and len(sb.annotations.live()) == 235, dry.output
        result = runner.invoke(app, ["withdraw", "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV)
        assert result.exit_code == 0, result.output
        assert "230" in result.stdout and sb.base_url in result.stdout
        left = sb.annotations.live()
        assert len(left) == 5 and all(MODEL_B in a["generator"]["id"] for a in left)
        again = runner.invoke(app, ["withdraw", "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV)
        assert again.exit_code == 0 and again.stdout.startswith("0 annotations"), again.output


def test_what_the_api_holds_already_is_not_sent_again_from_another_file_or_a_lost_journal(tmp_path: Path) -> None:
    """The journal is one file's: the same annotations in a second file (a copy, another enrich of the same records
    by the same model), or the first file after its journal was lost, were all sent again, and Europeana held each
    twice. Publish asks the API what the model's generator holds before it sends."""
    import shutil

    first = _write(tmp_path / "a.jsonl", _made(130))
    copy = _write(tmp_path / "copy.jsonl", _made(130))
    overlapping = _write(tmp_path / "more.jsonl", _made(20, start=120))  # 10 held already, 10 new
    with Sandbox(sandbox_config(per_level=2)) as sb:
        assert publish(_config(first, sb)).sent == 130
        again = publish(_config(copy, sb))
        assert again.sent == 0 and again.found == 130 and len(sb.annotations.live()) == 130
        more = publish(_config(overlapping, sb))
        assert (more.sent, more.found) == (10, 10) and len(sb.annotations.live()) == 140
        shutil.rmtree(tmp_path / "a.jsonl.published")
        assert publish(_config(first, sb)).sent == 0 and len(sb.annotations.live()) == 140
        assert publish(_config(copy, sb)).sent == 0  # its journal knows them now: nothing asked, nothing sent
        assert len(sb.annotations.live()) == 140


def test_two_models_tagging_one_record_with_one_concept_are_two_annotations(tmp_path: Path) -> None:
    """What the API holds is matched by model too: model B's tag of a record was taken for model A's (the same
    record and concept), never sent, and withdrawing B deleted A's."""
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(_write(tmp_path / "a.jsonl", _made(3)), sb))
        both = publish(_config(_write(tmp_path / "both.jsonl", _made(3) + _made(3, digest=MODEL_B)), sb))
        assert (both.sent, both.found) == (3, 3) and len(sb.annotations.live()) == 6
        gone = withdraw(
            WithdrawConfig(
                published=[tmp_path / "both.jsonl"],
                model=MODEL_B,
                annotation_api=sb.base_url,
                annotation_token=SANDBOX_TOKEN,
                quiet=True,
            )
        )
        left = sb.annotations.live()
        assert gone.withdrawn == 3 and len(left) == 3 and all(MODEL_A in a["generator"]["id"] for a in left)


def test_a_rejected_annotation_the_api_holds_since_is_not_sent_again(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb:
        a = _write(tmp_path / "a.jsonl", _made(1))
        sb.fail_next(400, ("/annotations/",))
        assert len(publish(_config(a, sb)).rejected) == 1 and not sb.annotations.live()
        assert publish(_config(_write(tmp_path / "b.jsonl", _made(1)), sb)).sent == 1
        again = publish(_config(a, sb))
        assert (again.sent, again.found) == (0, 1) and len(sb.annotations.live()) == 1


def test_a_rerun_with_nothing_to_send_asks_the_api_little_and_a_model_past_the_search_limit_still_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish read a model's whole online history at every run (31 searches for 3,000 annotations, with nothing to
    send), and could not publish at all past the search's page limit."""
    from europeana_imgcls.europeana import annotation_client

    path = _write(tmp_path / "a.jsonl", _made(250))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb, batch_size=100))
        before = sb.count("/annotation/")
        assert publish(_config(path, sb)).sent == 0
        assert sb.count("/annotation/") - before == 3  # three published annotations asked for by id, no search
        monkeypatch.setattr(annotation_client, "MAX_SEARCH_PAGES", 2)  # as a model of over a million would be
        more = publish(_config(_write(tmp_path / "more.jsonl", _made(5, start=248)), sb))
        assert (more.sent, more.found) == (3, 2) and len(sb.annotations.live()) == 253  # each looked for alone


def test_annotations_deleted_outside_the_sample_are_sent_again_once_the_api_is_listed(tmp_path: Path) -> None:
    """The few published annotations a run asks for by id are a sample: where the search runs (something to send,
    or a model withdrawn), every annotation the journal says is published is checked against it. A file of two
    models whose second was withdrawn by search is caught by that model's own sample."""
    with Sandbox(sandbox_config(per_level=2)) as sb:
        path = _write(tmp_path / "a.jsonl", _made(6))
        publish(_config(path, sb))
        for annotation in sb.annotations.live()[3:]:  # deleted on the API, by id, outside any eic journal
            sb.annotations.delete(f"Bearer {SANDBOX_TOKEN}", annotation["id"].rsplit("/", 1)[1])
        grown = publish(_config(_write(tmp_path / "a.jsonl", _made(7)), sb))  # one more: the search runs
        assert grown.sent == 4 and len(sb.annotations.live()) == 7
        both = _write(tmp_path / "both.jsonl", _made(3, start=50) + _made(3, start=50, digest=MODEL_B))
        publish(_config(both, sb))
        result = CliRunner().invoke(app, ["withdraw", "--model", MODEL_B, "--annotation-api", sb.base_url], env=ENV)
        assert result.exit_code == 0 and len(sb.annotations.live()) == 10, result.output
        again = publish(_config(both, sb))
        assert again.sent == 3 and len(sb.annotations.live()) == 13


@pytest.mark.parametrize("answer", ["generator as its IRI", "ids alone"])
def test_what_the_api_holds_is_found_however_its_search_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """Europeana's search may answer a generator as its IRI (not an object), or annotations by their ids alone:
    matched all the same (each looked for on its own where the answer holds nothing to match by)."""
    from europeana_imgcls.europeana.annotation_client import AnnotationsClient

    real = AnnotationsClient.search

    def answered(self: AnnotationsClient, query: str) -> list[dict[str, Any]]:
        found = real(self, query)
        if answer == "ids alone":
            return [{"id": item["id"]} for item in found]
        return [{**item, "generator": item["generator"]["id"]} if "generator" in item else item for item in found]

    monkeypatch.setattr(AnnotationsClient, "search", answered)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(_write(tmp_path / "a.jsonl", _made(4)), sb))
        copy = publish(_config(_write(tmp_path / "copy.jsonl", _made(4)), sb))
        assert (copy.sent, copy.found) == (0, 4) and len(sb.annotations.live()) == 4


def test_after_withdraw_by_the_models_generator_publish_sends_them_again(tmp_path: Path) -> None:
    """eic withdraw --model (no files) deletes by the API's search and writes no journal: publish then trusted its
    journal, said every annotation was online and sent none. What its journal says is published and the API has
    no more is sent again."""
    path = _write(tmp_path / "a.jsonl", _made(12))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        result = CliRunner().invoke(app, ["withdraw", "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV)
        assert result.exit_code == 0 and not sb.annotations.live(), result.output
        again = publish(_config(path, sb))
        assert again.sent == 12 and len(sb.annotations.live()) == 12
        assert publish(_config(path, sb)).sent == 0 and len(sb.annotations.live()) == 12


def test_a_file_whose_journal_is_missing_says_how_to_withdraw_without_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", _made(2))
    result = CliRunner().invoke(app, ["withdraw", str(path), "--model", MODEL_A], env=ENV)
    line = _one_line(result)
    assert "a.jsonl.published" in line and "without" in line and "--model" in line


class _Redirecting:
    """A loopback server that answers every request with a redirect elsewhere, and counts them."""

    def __enter__(self) -> _Redirecting:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _moved(self) -> None:
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(301)
                self.send_header("Location", "https://annotations.example.org/moved/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_DELETE = _moved  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_that_redirects_or_is_not_there_stops_at_the_first_batch(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb, _Redirecting() as moved:
        for name, api in (("wrong", sb.base_url + "/wrong"), ("moved", moved.url)):
            path = _write(tmp_path / f"{name}.jsonl", _made(6))
            result = CliRunner().invoke(
                app, ["publish", str(path), "--annotation-api", api, "--batch-size", "2"], env=ENV
            )
            line = _one_line(result)
            assert api in line and ("404" in line or "301" in line), line
        assert sb.count("/wrong/") == 1 and moved.requests == 1
        for api in (sb.base_url + "/wrong", moved.url):  # withdraw by search: the same, at its first request
            result = CliRunner().invoke(app, ["withdraw", "--model", MODEL_A, "--annotation-api", api], env=ENV)
            assert api in _one_line(result)


@pytest.mark.parametrize("token", ["", "a\nb", "tok\r\nX-Other: 1", "t\u00f6ken", "tok en"])
def test_a_token_that_cannot_be_one_is_refused_before_any_work(tmp_path: Path, token: str) -> None:
    path = _write(tmp_path / "a.jsonl", _made(2))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        for command in (["publish", str(path)], ["withdraw", "--model", MODEL_A]):
            result = CliRunner().invoke(app, [*command, "--annotation-api", sb.base_url, "--token", token])
            line = _one_line(result)
            assert result.exit_code == 2 and "--annotation-token" in line
            assert not token.strip() or token not in result.output
        assert sb.count("/annotation") == 0 and not (tmp_path / "a.jsonl.published").exists()


def test_the_token_over_plain_http_to_another_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import httpx

    from europeana_imgcls.europeana.annotation_client import AnnotationsClient

    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    with caplog.at_level(logging.WARNING, logger="europeana_imgcls"):
        for api in ("http://annotations.example.org", "http://127.0.0.1:9", "http://localhost", "https://a.example"):
            with AnnotationsClient(api, "token", transport=transport):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "annotations.example.org" in warnings[0] and "https://" in warnings[0]


def test_the_docs_pass_the_token_by_environment_and_agree_on_how_the_key_goes() -> None:
    readme, docs = (ROOT / "README.md").read_text(), (ROOT / "docs" / "publish.md").read_text()
    for text in (readme, docs):
        commands = [line for line in text.splitlines() if line.lstrip().startswith(("eic publish", "eic withdraw"))]
        assert commands and not any("--token" in c or "--annotation-token" in c for c in commands), commands
        assert "EUROPEANA_ANNOTATION_TOKEN" in text
    assert "`wskey`" in docs and "X-Api-Key" not in docs.split("## `eic withdraw`")[0].replace("not as X-Api-Key", "")
    assert "wskey" in PublishConfig.model_fields["api_key"].description


def test_an_annotation_changed_since_it_was_published_is_reported_not_sent_again(tmp_path: Path) -> None:
    items = _made(4)
    path = _write(tmp_path / "a.jsonl", items)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        items[1]["target"]["source"] = "https://images.example.org/another.jpg"  # what Europeana holds differs
        items[2]["created"] = items[2]["generated"] = "2001-01-01T00:00:00Z"  # Europeana sets these itself
        items[3][CONFIDENCE] = 0.5  # Europeana does not keep it
        _write(path, items)
        again = publish(_config(path, sb))
        assert again.sent == 0 and again.changed == [items[1]["canonical"]] and len(sb.annotations.live()) == 4
        assert publish(_config(path, sb, dry_run=True)).changed == [items[1]["canonical"]]
        result = CliRunner().invoke(app, ["publish", str(path), "--annotation-api", sb.base_url], env=ENV)
        assert result.exit_code == 0 and "1 changed since" in result.stdout and items[1]["canonical"] in result.stdout


@pytest.mark.parametrize("status", [502, 504, 520, 524])
def test_an_upload_a_gateway_lost_the_answer_to_is_looked_for_not_sent_again(tmp_path: Path, status: int) -> None:
    """A gateway in front of the Annotations API that gives up after the API stored the batch: the upload is not
    sent again blindly (it would be stored twice); the run stops in one line and the next finds what was stored."""
    items = _made(3)
    path = _write(tmp_path / "a.jsonl", items)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        sb.fail_next(status, ("/annotations",), acted=True)
        with pytest.raises(DatasetError, match="may or may not hold the last 3 annotations sent; run eic publish"):
            publish(_config(path, sb))
        assert len(sb.annotations.live()) == 3  # stored once, though its answer was lost
        again = publish(_config(path, sb))
        assert again.found == 3 and again.sent == 0 and len(sb.annotations.live()) == 3


@pytest.mark.parametrize("rate", [1e-9, 0.001, 1e4, float("inf")])
def test_the_request_rate_is_bounded(tmp_path: Path, rate: float) -> None:
    path = _write(tmp_path / "a.jsonl", _made(1))
    with pytest.raises(ConfigError, match="invalid setting 'rate'"):
        PublishConfig(enrichments=path, rate=rate)
    assert PublishConfig(enrichments=path, rate=0.5).rate == 0.5


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonld"])
def test_a_confidence_that_is_no_number_is_refused_by_a_dry_run(tmp_path: Path, constant: str, suffix: str) -> None:
    items = _made(3)
    items[1][CONFIDENCE] = "@@"
    path = tmp_path / f"a{suffix}"
    if suffix == ".jsonl":
        _write(path, items)
    else:
        path.write_text(json.dumps({"@context": W3C_CONTEXT, "type": "AnnotationPage", "items": items}))
    path.write_text(path.read_text().replace('"@@"', constant))
    result = CliRunner().invoke(app, ["publish", str(path), "--dry-run"])
    line = _one_line(result)
    assert "confidence" in line or constant.lstrip("-") in line
    assert not (tmp_path / f"a{suffix}.published").exists()


def test_messages_name_the_apis_address_when_it_is_not_europeana(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", _made(3))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        runner = CliRunner()
        dry = runner.invoke(app, ["publish", str(path), "--annotation-api", sb.base_url, "--dry-run"])
        sent = runner.invoke(app, ["publish", str(path), "--annotation-api", sb.base_url], env=ENV)
        gone = runner.invoke(app, ["withdraw", str(path), "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV)
        for result in (dry, sent, gone):
            assert result.exit_code == 0 and sb.base_url in result.stdout, result.output
            assert "Europeana" not in result.stdout.replace("Europeana's rules", ""), result.stdout
    fresh = _write(tmp_path / "b.jsonl", _made(3))  # nothing sent from it: a dry run asks the API nothing
    report = publish(PublishConfig(enrichments=fresh, dry_run=True))
    assert report.where == "Europeana" and report.to_send == 3


@pytest.mark.parametrize(
    "state",
    [
        {"state": "published", "model": MODEL_A},
        {"state": "published", "id": "http://evil.example.org/annotation/1", "model": MODEL_A},
        {"state": "published", "id": "http://data.europeana.eu/annotation/1", "model": "not a model"},
        {"state": "published", "id": ["http://data.europeana.eu/annotation/1"], "model": MODEL_A},
        {"state": "teleported", "model": MODEL_A},
        {"state": 5},
        {"state": "sending", "model": MODEL_A, "generator": "javascript:x", "record": "/9000/r0", "concept": "x"},
        {"state": "withdrawn", "id": "http://data.europeana.eu/annotation/1", "model": MODEL_A, "extra": {"a": [1]}},
    ],
)
def test_a_damaged_journal_state_is_skipped_and_said_never_a_traceback(tmp_path: Path, state: dict) -> None:
    """A state eic does not write is dropped as a cut line is (one warning); the state before it counts."""
    from europeana_imgcls.core.journal import frame

    items = _made(3)
    path = _write(tmp_path / "a.jsonl", items)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        with (tmp_path / "a.jsonl.published" / "part.ndjson").open("ab") as part:
            part.write(frame(items[0]["canonical"], state))
        again = publish(_config(path, sb))
        assert again.sent == 0 and again.published_before == 3
        gone = withdraw(
            WithdrawConfig(published=[path], model=MODEL_A, annotation_api=sb.base_url, annotation_token=SANDBOX_TOKEN)
        )
        assert gone.withdrawn == 3 and not sb.annotations.live()


def test_a_journal_of_another_format_is_refused_in_one_line(tmp_path: Path) -> None:
    from europeana_imgcls.core.journal import frame

    items = _made(2)
    path = _write(tmp_path / "a.jsonl", items)
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        with (tmp_path / "a.jsonl.published" / "part.ndjson").open("ab") as part:
            part.write(frame(items[0]["canonical"], {"format": "eic-publish-state/9", "state": "beamed"}))
        hits = sb.count("/annotation")
        for command in (["publish", str(path)], ["withdraw", str(path), "--model", MODEL_A]):
            result = CliRunner().invoke(app, [*command, "--annotation-api", sb.base_url], env=ENV)
            line = _one_line(result)
            assert "eic-publish-state/9" in line and "a.jsonl.published" in line
        assert sb.count("/annotation") == hits and len(sb.annotations.live()) == 2


STATES = ["sending", "unsent", "rejected", "published", "withdrawn", "beamed", "", "PUBLISHED"]
# Words of the journal's lines, for the values Hypothesis puts in them.
WORDS = (
    MODEL_A,
    MODEL_B,
    *STATES,
    "http://data.europeana.eu/annotation/1",
    "http://evil.example.org/annotation/1",
    "http://data.europeana.eu/annotation/1/../2",
    "javascript:alert(1)",
    "eic-publish-state/1",
    "eic-publish-state/2",
    "/9000/r0",
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One stand-in for every example, holding an annotation of another model by another user that must stay."""
    with Sandbox(
        sandbox_config(per_level=2), Knobs(annotation_tokens={SANDBOX_TOKEN: "sandbox-user", "other": "someone"})
    ) as sb:
        with tempfile.TemporaryDirectory() as name:
            theirs = _write(Path(name) / "theirs.jsonl", _made(1, digest=MODEL_B))
            publish(PublishConfig(enrichments=theirs, annotation_api=sb.base_url, annotation_token="other", quiet=True))
        yield sb


# A place in a line, drawn without knowing the line: its length depends on the ids the shared sandbox gave, and
# Hypothesis wants the same draws for the same example.
_POSITION = st.integers(0, 10**6)


def _mutated_lines(data: st.DataObject, lines: list[bytes]) -> list[bytes]:
    """The journal's lines with one of them rewritten, garbled, cut, repeated, moved or removed."""
    at = data.draw(st.integers(0, len(lines) - 1))
    kind = data.draw(st.sampled_from(["value", "value", "value", "bytes", "cut", "repeat", "swap", "remove"]))
    lines = list(lines)
    if kind == "value":
        record = json.loads(lines[at])
        lines[at] = json.dumps(data.draw(mutated_json(record, WORDS))).encode() + b"\n"
    elif kind == "bytes":
        junk = data.draw(st.binary(min_size=1, max_size=4))
        where = data.draw(_POSITION) % len(lines[at])
        lines[at] = lines[at][:where] + junk + lines[at][where + len(junk) :]
    elif kind == "cut":
        lines[at] = lines[at][: data.draw(_POSITION) % len(lines[at])]
        lines = lines[: at + 1]  # a cut line is the last one written
    elif kind == "repeat":
        lines.insert(at, lines[at])
    elif kind == "swap":
        other = data.draw(st.integers(0, len(lines) - 1))
        lines[at], lines[other] = lines[other], lines[at]
    else:
        del lines[at]
    return lines


@given(st.data())
@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mutated_publication_journal_works_or_is_refused_in_one_line(sandbox: Sandbox, data: st.DataObject) -> None:
    with scratch() as folder:
        path = _write(folder / "a.jsonl", _made(4))
        api = ["--annotation-api", sandbox.base_url]
        # What an earlier example's mutated journal left online goes first: publish would find it there and
        # write another journal than the one drawn on.
        assert CliRunner().invoke(app, ["withdraw", "--model", MODEL_A, *api], env=ENV).exit_code == 0
        assert CliRunner().invoke(app, ["publish", str(path), "--batch-size", "2", *api], env=ENV).exit_code == 0
        journal = folder / "a.jsonl.published"
        part = journal / "part.ndjson"
        lines = part.read_bytes().splitlines(keepends=True)
        part.write_bytes(b"".join(_mutated_lines(data, lines)))
        (folder / "bystander.txt").write_text("not eic's")
        (journal / "notes.txt").write_text("not eic's either")
        before = snapshot(folder)
        published = CliRunner().invoke(app, ["publish", str(path), *api], env=ENV)
        cli_works_or_one_line(published)
        withdrawn = CliRunner().invoke(app, ["withdraw", str(path), "--model", MODEL_A, *api], env=ENV)
        cli_works_or_one_line(withdrawn)
        eics = {"a.jsonl.published/part.ndjson", "a.jsonl.published/part.ndjson.lock"}
        assert_untouched(before, snapshot(folder), eics)
    assert any(MODEL_B in a["generator"]["id"] for a in sandbox.annotations.live())  # another's stays


def test_withdraw_deletes_its_own_and_says_which_another_account_holds(tmp_path: Path) -> None:
    """Two accounts publish one released model; Bob's records overlap Alice's on r2, whose tag publish finds on
    the API (Alice's) and does not send twice. The API refuses (403) Bob's deletion of Alice's annotation: that one
    is left and said, his own are deleted all the same, by his journal or by search, and the run ends non-zero."""
    alice, bob = _write(tmp_path / "alice.jsonl", _made(3)), _write(tmp_path / "bob.jsonl", _made(3, start=2))
    tokens = {"tok-alice": "alice", "tok-bob": "bob"}
    with Sandbox(sandbox_config(per_level=2), Knobs(annotation_tokens=tokens)) as sb:
        publish(PublishConfig(enrichments=alice, annotation_api=sb.base_url, annotation_token="tok-alice", quiet=True))
        publish(PublishConfig(enrichments=bob, annotation_api=sb.base_url, annotation_token="tok-bob", quiet=True))

        def owners() -> list[str]:
            return sorted(a["creator"]["id"].rsplit("/", 1)[-1] for a in sb.annotations.live())

        assert owners() == ["alice"] * 3 + ["bob"] * 2
        env = {"EUROPEANA_ANNOTATION_TOKEN": "tok-bob"}
        runner, api = CliRunner(), ["--annotation-api", sb.base_url]
        by_file = runner.invoke(app, ["withdraw", str(bob), "--model", MODEL_A, *api], env=env)
        assert owners() == ["alice"] * 3, by_file.output
        assert by_file.stdout.startswith("2 annotations"), by_file.output
        line = _one_line(by_file)
        assert "1 annotation" in line and "403" in line and "another account" in line
        by_search = runner.invoke(app, ["withdraw", "--model", MODEL_A, *api], env=env)
        assert owners() == ["alice"] * 3 and by_search.stdout.startswith("0 annotations"), by_search.output
        assert "3 annotations" in _one_line(by_search)
        withdrawn = withdraw(
            WithdrawConfig(model=MODEL_A, annotation_api=sb.base_url, annotation_token="tok-alice", quiet=True)
        )
        assert withdrawn.withdrawn == 3 and withdrawn.refused == 0 and owners() == []


def test_withdraw_deletes_only_what_the_api_says_is_the_models(tmp_path: Path) -> None:
    """A journal edited (or damaged) to name another model's annotation, as published or as being sent with that
    model's generator: withdraw --model A deletes A's and none of B's, and says what it left."""
    from europeana_imgcls.core.journal import frame

    a, b = _write(tmp_path / "a.jsonl", _made(2)), _write(tmp_path / "b.jsonl", _made(2, digest=MODEL_B, start=5))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(a, sb))
        publish(_config(b, sb))
        theirs = [x for x in sb.annotations.live() if MODEL_B in x["generator"]["id"]]
        part = tmp_path / "a.jsonl.published" / "part.ndjson"
        foreign = {"state": "sending", "model": MODEL_A, "generator": theirs[1]["generator"]["id"]}
        foreign |= {"record": theirs[1]["target"]["scope"], "concept": theirs[1]["body"]["source"]}
        with part.open("ab") as handle:
            handle.write(frame("urn:uuid:forged-1", {"state": "published", "id": theirs[0]["id"], "model": MODEL_A}))
            handle.write(frame("urn:uuid:forged-2", foreign))
        result = CliRunner().invoke(
            app, ["withdraw", str(a), "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV
        )
        assert result.exit_code == 0, result.output
        left = sb.annotations.live()
        assert len(left) == 2 and all(MODEL_B in x["generator"]["id"] for x in left)
        assert result.stdout.startswith("2 annotations") and "not model" in result.output, result.output


def test_withdraw_goes_past_any_number_of_another_accounts_annotations(tmp_path: Path) -> None:
    """Alice published 21 tags first; Bob's publish found them and sent his 3 others. Bob's withdraw meets 21
    refusals (403) before his own: an early stop after 20 had deleted none of his and blamed his token."""
    alice, bob = _write(tmp_path / "alice.jsonl", _made(21)), _write(tmp_path / "bob.jsonl", _made(24))
    tokens = {"tok-alice": "alice", "tok-bob": "bob"}
    with Sandbox(sandbox_config(per_level=2), Knobs(annotation_tokens=tokens)) as sb:
        publish(PublishConfig(enrichments=alice, annotation_api=sb.base_url, annotation_token="tok-alice", quiet=True))
        publish(PublishConfig(enrichments=bob, annotation_api=sb.base_url, annotation_token="tok-bob", quiet=True))
        result = CliRunner().invoke(
            app,
            ["withdraw", str(bob), "--model", MODEL_A, "--annotation-api", sb.base_url],
            env={"EUROPEANA_ANNOTATION_TOKEN": "tok-bob"},
        )
        assert result.stdout.startswith("3 annotations") and "21 annotations" in _one_line(result)
        assert {a["creator"]["id"].rsplit("/", 1)[-1] for a in sb.annotations.live()} == {"alice"}


def test_a_journal_an_earlier_eic_wrote_with_a_trailing_slash_still_carries_on(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.jsonl", _made(2))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        settings = tmp_path / "e.jsonl.published" / "settings.json"
        settings.write_text(json.dumps({"annotation_api": sb.base_url + "/"}))  # as the eic before this one wrote it
        for given in (sb.base_url, sb.base_url + "/"):
            again = CliRunner().invoke(app, ["publish", str(path), "--annotation-api", given], env=ENV)
            assert again.exit_code == 0, again.output


def test_withdraw_takes_only_publish_journals_and_each_once(tmp_path: Path) -> None:
    """A folder given that is no publish journal got a journal written into it (even with --dry-run), and a file
    named with its journal (`eic withdraw out/*`) was refused as being written by the very run."""
    path = _write(tmp_path / "e.jsonl", _made(3))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("hi")
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        api = ["--model", MODEL_A, "--annotation-api", sb.base_url]
        result = CliRunner().invoke(app, ["withdraw", str(notes), *api, "--dry-run"], env=ENV)
        assert "no journal of eic publish" in _one_line(result)
        assert sorted(p.name for p in notes.iterdir()) == ["mine.txt"]
        both = CliRunner().invoke(app, ["withdraw", str(path), str(tmp_path / "e.jsonl.published"), *api], env=ENV)
        assert both.exit_code == 0 and both.stdout.startswith("3 annotations"), both.output
        assert not sb.annotations.live()


def test_an_address_with_a_trailing_slash_is_the_same_annotations_api(tmp_path: Path) -> None:
    """Published to `http://h/`, withdrawn from `http://h`: refused as "started with other settings"."""
    path = _write(tmp_path / "e.jsonl", _made(2))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        published = CliRunner().invoke(app, ["publish", str(path), "--annotation-api", sb.base_url + "/"], env=ENV)
        assert published.exit_code == 0 and len(sb.annotations.live()) == 2, published.output
        result = CliRunner().invoke(
            app, ["withdraw", str(path), "--model", MODEL_A, "--annotation-api", sb.base_url], env=ENV
        )
        assert result.exit_code == 0 and not sb.annotations.live(), result.output


def test_a_dry_run_counts_what_a_run_would_send_after_a_withdrawal_by_model(tmp_path: Path) -> None:
    """After `eic withdraw --model` (no file: by search, no journal of the file's written), `eic publish --dry-run`
    said "0 to send, 3 published earlier", and the real run straight after sent 3: the dry run trusted the
    journal where the run asks the API."""
    path = _write(tmp_path / "a.jsonl", _made(3))
    with Sandbox(sandbox_config(per_level=2)) as sb:
        api = ["--annotation-api", sb.base_url]
        runner = CliRunner()
        assert runner.invoke(app, ["publish", str(path), *api], env=ENV).exit_code == 0
        assert runner.invoke(app, ["withdraw", "--model", MODEL_A, *api], env=ENV).exit_code == 0
        journal = sorted((p.name, p.read_bytes()) for p in (tmp_path / "a.jsonl.published").iterdir())
        dry = publish(_config(path, sb, dry_run=True))
        assert (dry.to_send, dry.gone, dry.published_before) == (3, 3, 3) and not sb.annotations.live()
        assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "a.jsonl.published").iterdir()) == journal
        said = runner.invoke(app, ["publish", str(path), *api, "--dry-run"])
        assert "3 to send" in " ".join(said.stdout.split()), said.output
        sent = publish(_config(path, sb))
    assert sent.sent == dry.to_send == 3


def test_a_journal_is_never_written_into_a_file_or_a_folder_of_other_files(tmp_path: Path) -> None:
    """`eic publish --journal FILE` said "File exists", and `--journal run/` wrote part.ndjson and settings.json into
    a training run's folder."""
    path = _write(tmp_path / "a.jsonl", _made(3))
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with Sandbox(sandbox_config(per_level=2)) as sb:
        for journal, said in ((tmp_path / "notes.txt", "not a folder"), (run, "no publication journal")):
            result = CliRunner().invoke(
                app, ["publish", str(path), "--annotation-api", sb.base_url, "--journal", str(journal)], env=ENV
            )
            assert result.exit_code == 1 and said in result.stderr and len(result.stderr.splitlines()) == 1
        assert not sb.annotations.live()
        ours = CliRunner().invoke(
            app, ["publish", str(path), "--annotation-api", sb.base_url, "--journal", str(tmp_path / "j")], env=ENV
        )
        again = CliRunner().invoke(
            app, ["publish", str(path), "--annotation-api", sb.base_url, "--journal", str(tmp_path / "j")], env=ENV
        )
    assert ours.exit_code == 0 and again.exit_code == 0 and "3 published earlier" in again.stdout
    assert sorted(p.name for p in run.iterdir()) == ["summary.json"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_dry_run_refuses_another_api_as_the_run_does(tmp_path: Path) -> None:
    """A dry run against another Annotations API than the journal's counted the first API's journal against the
    second ("2 to send, gone from it since") where the run itself refuses another API."""
    path = _write(tmp_path / "a.jsonl", _made(2))
    with Sandbox(sandbox_config(per_level=2)) as first, Sandbox(sandbox_config(per_level=2)) as second:
        assert publish(_config(path, first)).sent == 2
        with pytest.raises(DatasetError, match="another `journal`"):
            publish(_config(path, second))
        with pytest.raises(DatasetError, match="another `journal`"):
            publish(_config(path, second, dry_run=True))
