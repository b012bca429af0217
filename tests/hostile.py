"""What the hostile-file tests share: Hypothesis strategies that damage a JSON file eic reads back, and the checks
that the read then has only two outcomes (it works, or one line that says why), touching nothing it did not write.

- ``mutated_json(doc)``: ``doc`` with one place changed, found by walking down from the top: given another value,
  nested ``depth`` deep, removed, duplicated, or given a new sibling.
- ``mutated_bytes(doc)``: ``doc`` as JSON, either mutated so, or damaged as bytes: cut anywhere, a few bytes
  inserted or overwritten (a flipped byte, a damaged disk, an editor's slip), a byte that is not UTF-8.
- ``works_or_one_line(read)`` for a library call, ``cli_works_or_one_line(result)`` for an eic command.
- ``snapshot``, ``assert_untouched``, ``scratch`` and ``without_hanging`` for what the checks are made around.

Users: ``test_hostile_files.py``, ``outputs/test_review.py``, ``outputs/test_review_apply.py``,
``outputs/test_publish.py``.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from typer.testing import Result

from europeana_imgcls.cli.report import as_flags
from europeana_imgcls.core.errors import EicError

# Text a reader may take for a path, a cut C string, another direction of writing or a number.
HOSTILE_WORDS = ("", "..", "../x", "\x00", "\u202e", "NaN", "[/b]", "a\nb", "\x85\u2028")


@cache
def _shapes(words: tuple[str, ...]) -> tuple[st.SearchStrategy[str], st.SearchStrategy[Any]]:
    """Text (any, or a hostile word, or one of ``words``) and JSON values made of it; built once per ``words``."""
    text = st.text(max_size=12) | st.sampled_from([*HOSTILE_WORDS, *words])
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3))
    return text, values


def _children(node: Any) -> list[Any]:
    return list(range(len(node))) if isinstance(node, list) else list(node) if isinstance(node, dict) else []


def _mutate(draw: st.DrawFn, node: Any, words: tuple[str, ...], depth: int) -> Any:
    text, values = _shapes(words)
    children = _children(node)
    if not children or draw(st.integers(0, 3)) == 0:  # change this node itself
        if depth and draw(st.integers(0, 2)) == 0:
            for _ in range(depth):
                node = [node]
            return node
        return draw(values)
    key = draw(st.sampled_from(children))
    action = draw(st.sampled_from(["descend", "descend", "remove", "duplicate", "add"]))
    copy: Any = list(node) if isinstance(node, list) else dict(node)
    if action == "remove":
        del copy[key]
    elif action in ("duplicate", "add"):
        sibling = copy[key] if action == "duplicate" else draw(values)
        if isinstance(copy, list):
            copy.insert(key, sibling)
        else:
            copy[draw(text)] = sibling
    else:
        copy[key] = _mutate(draw, copy[key], words, depth)
    return copy


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any, words: tuple[str, ...] = (), depth: int = 1000) -> Any:
    """``doc`` with one place given another value (text drawn also from ``words``, the file's own), nested
    ``depth`` deep (0: never), removed, duplicated or given a new sibling; ``doc`` itself is left as it was."""
    return _mutate(draw, doc, tuple(words), depth)


@st.composite
def mutated_bytes(draw: st.DrawFn, doc: Any, words: tuple[str, ...] = (), depth: int = 1000) -> bytes:
    """``doc`` as JSON, mutated as a document (``mutated_json``), or as bytes: cut anywhere, a few bytes inserted
    or overwritten, a byte that is not UTF-8."""
    if draw(st.booleans()):
        return json.dumps(draw(mutated_json(doc, words, depth))).encode()
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 1]))).encode()
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "insert", "overwrite", "not UTF-8"]))
    if how == "cut":
        return text[:at]
    if how == "not UTF-8":
        return text[:at] + "é".encode("latin-1") + text[at:]
    junk = draw(st.binary(min_size=1, max_size=4))
    return text[:at] + junk + text[at + (len(junk) if how == "overwrite" else 0) :]


def works_or_one_line(read: Callable[[], object]) -> None:
    """A library read's only two outcomes: it works, or an EicError with a message that the CLI shows as one line
    (a line end a value brings into the message, such as a vocabulary's key, is shown escaped there)."""
    try:
        read()
    except EicError as exc:
        shown = as_flags(str(exc))
        assert shown and len(shown.splitlines()) == 1, repr(exc)


def cli_works_or_one_line(result: Result) -> None:
    """An eic command's only two outcomes: it works, or exactly one line ``eic: error: ...`` on stderr and a
    non-zero exit; never an exception other than the exit, never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr, result.output
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("eic: error: "), result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (path relative to it) and what it holds."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_untouched(before: dict[str, bytes], after: dict[str, bytes], written: set[str]) -> None:
    """Two snapshots agree on every file but those in ``written`` (eic's own): none was changed, made or removed."""
    assert {k: v for k, v in after.items() if k not in written} == {k: v for k, v in before.items() if k not in written}


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per Hypothesis example (a function-scoped fixture is made once per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="eic-hostile-") as folder:
        yield Path(folder)


def without_hanging(action: Callable[[], object], fifo: Path, timeout: float = 30) -> object:
    """What ``action`` returned or raised. It must end by itself: if it waits on the named pipe ``fifo`` for a
    writer, the pipe is given one so that the test fails rather than hangs."""
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(action())
        except BaseException as exc:  # noqa: BLE001  handed over to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=timeout)
    if worker.is_alive():
        with open(fifo, "wb"):  # unblocks a reader that opened the pipe
            pass
        worker.join(timeout=10)
        pytest.fail(f"eic waited on the named pipe {fifo.name}")
    return outcome[0]
