"""The publication journal (``FILE.published/``) read back as hostile input: its lines cut, garbled, swapped,
repeated or rewritten with other values. eic publish and eic withdraw then either work, or say one line on stderr
and exit non-zero; nothing eic did not write is touched, and no annotation of another model or user is deleted."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import PublishConfig
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.outputs.publish import publish

from .conftest import VOCAB
from .test_publish import MODEL_A, MODEL_B, _made, _write

ENV = {"EUROPEANA_ANNOTATION_TOKEN": SANDBOX_TOKEN}
STATES = ["sending", "unsent", "rejected", "published", "withdrawn", "beamed", "", "PUBLISHED"]
_TEXT = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
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
            "\u202e",
        ]
    ),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One stand-in for every example, holding an annotation of another model by another user that must stay."""
    with Sandbox(VOCAB, per_level=2, annotation_tokens={SANDBOX_TOKEN: "sandbox-user", "other": "someone"}) as sb:
        with tempfile.TemporaryDirectory() as name:
            theirs = _write(Path(name) / "theirs.jsonl", _made(1, digest=MODEL_B))
            publish(PublishConfig(enrichments=theirs, annotation_api=sb.base_url, annotation_token="other", quiet=True))
        yield sb


def _mutated_value(data: st.DataObject, value: Any) -> Any:
    """``value`` with one node replaced, removed or given a sibling, chosen by walking down from the top."""
    children = list(range(len(value))) if isinstance(value, list) else list(value) if isinstance(value, dict) else []
    if not children or data.draw(st.integers(0, 3)) == 0:
        return data.draw(_JSON)
    key = data.draw(st.sampled_from(children))
    action = data.draw(st.sampled_from(["descend", "descend", "remove", "add"]))
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    if action == "remove":
        del copy[key]
    elif action == "add" and isinstance(copy, dict):
        copy[data.draw(_TEXT)] = data.draw(_JSON)
    else:
        copy[key] = _mutated_value(data, copy[key])
    return copy


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
        lines[at] = json.dumps(_mutated_value(data, record)).encode() + b"\n"
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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_line_or_success(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("eic: error: "), result.output


@given(st.data())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mutated_publication_journal_works_or_is_refused_in_one_line(sandbox: Sandbox, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = _write(folder / "a.jsonl", _made(4))
        api = ["--annotation-api", sandbox.base_url]
        assert CliRunner().invoke(app, ["publish", str(path), "--batch-size", "2", *api], env=ENV).exit_code == 0
        journal = folder / "a.jsonl.published"
        part = journal / "part.ndjson"
        lines = part.read_bytes().splitlines(keepends=True)
        part.write_bytes(b"".join(_mutated_lines(data, lines)))
        (folder / "bystander.txt").write_text("not eic's")
        (journal / "notes.txt").write_text("not eic's either")
        before = _files(folder)
        published = CliRunner().invoke(app, ["publish", str(path), *api], env=ENV)
        _one_line_or_success(published)
        withdrawn = CliRunner().invoke(app, ["withdraw", str(path), "--model", MODEL_A, *api], env=ENV)
        _one_line_or_success(withdrawn)
        after = _files(folder)
        eics = {"a.jsonl.published/part.ndjson", "a.jsonl.published/part.ndjson.lock"}
        assert {k: v for k, v in after.items() if k not in eics} == {k: v for k, v in before.items() if k not in eics}
    assert any(MODEL_B in a["generator"]["id"] for a in sandbox.annotations.live())  # another's stays
