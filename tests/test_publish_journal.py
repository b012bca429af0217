"""The publication journal (``FILE.published/``) read back as hostile input: its lines cut, garbled, swapped,
repeated or rewritten with other values. eic publish and eic withdraw then either work, or say one line on stderr
and exit non-zero; nothing eic did not write is touched, and no annotation of another model or user is deleted."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import PublishConfig
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox
from europeana_imgcls.outputs.publish import publish

from .hostile import assert_untouched, cli_works_or_one_line, mutated_json, scratch, snapshot
from .support import MODEL_A, MODEL_B, _made, _write, sandbox_config

ENV = {"EUROPEANA_ANNOTATION_TOKEN": SANDBOX_TOKEN}
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
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mutated_publication_journal_works_or_is_refused_in_one_line(sandbox: Sandbox, data: st.DataObject) -> None:
    with scratch() as folder:
        path = _write(folder / "a.jsonl", _made(4))
        api = ["--annotation-api", sandbox.base_url]
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
