"""Vocabularies: JSON objects mapping a category name to a concept URI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError
from ..core.sidecars import read_bounded


def default_vocabulary() -> dict[str, str]:
    """The pilot's 20 concepts (15 Europeana entities and 5 Getty AAT terms)."""
    text = resources.files("europeana_imgcls").joinpath("data/vocabulary.json").read_text("utf-8")
    return json.loads(text)


def load_vocabulary(path: Path | str | Mapping[str, str] | None) -> dict[str, str]:
    """The built-in vocabulary (None), a JSON file's, or a mapping given as it is: every entry checked."""
    if path is None:
        return default_vocabulary()
    if isinstance(path, Mapping):
        return _checked(dict(path), "the vocabulary")
    if not Path(path).exists():
        raise DatasetError(f"vocabulary {path}: no such file")
    text = read_bounded(Path(path), what="a vocabulary", remedy='give a JSON object {"category": "concept URI"}')
    try:
        data = json.loads(text.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"vocabulary {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:  # bytes that are not UTF-8; nesting too deep to read
        raise DatasetError(f"vocabulary {path}: not a JSON text eic can read ({type(exc).__name__})") from None
    return _checked(data, f"vocabulary {path}")


def _checked(data: Any, where: str) -> dict[str, str]:
    path = where
    if not isinstance(data, dict) or not data:
        raise DatasetError(f'{path}: expected a JSON object {{"category": "concept URI", ...}}')
    vocab: dict[str, str] = {}
    for name, uri in data.items():
        if not isinstance(uri, str) or not uri.strip().startswith(("http://", "https://")):
            raise DatasetError(f"{path}: '{name}' must map to a concept URI, got {uri!r}")
        if not name.strip() or any(ch in name for ch in "/\\") or " " in name.strip():
            raise DatasetError(f"{path}: category name {name!r} must be one word without slashes")
        vocab[name.strip()] = uri.strip()
    return vocab
