"""What a path is, in words, for messages that say what to pass where another thing was expected
(``eic predict x.jpg RUN``, ``eic enrich RUN eval.csv``, ``eic train table.csv``). Torch-free and cheap: names,
suffixes and a look at a folder's first level; a JSON file is read only to tell eic's review tasks from an export.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tables import sidecar

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_PEEK_BYTES = 1 << 20  # a review file larger than this is not opened to be named


def what_is(path: Path) -> str | None:
    """'a table', 'an embeddings table', 'a training run', 'an image', 'an image folder', 'annotations', 'Label
    Studio tasks', or None when it is none of these (or nothing at all)."""
    if path.is_dir():
        return _folder(path)
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".parquet" and sidecar(path, "embedding").is_file():
        return "an embeddings table (eic embed)"
    if suffix in (".csv", ".parquet"):
        return "a table"
    if suffix in IMAGE_SUFFIXES:
        return "an image"
    if suffix in (".jsonld", ".jsonl") and path.name.endswith((".jsonld", ".predictions.jsonl")):
        return "annotations (eic enrich)" if suffix == ".jsonld" else "predictions"
    if suffix == ".json" and _review_tasks(path):
        return "Label Studio tasks (eic enrich's review file, to import into Label Studio)"
    return None


def is_run(path: Path) -> bool:
    return path.is_dir() and ((path / "model.pt").is_file() or any(path.glob("split_*/model.pt")))


def _folder(path: Path) -> str | None:
    if is_run(path):
        return "a training run"
    try:
        entries = list(path.iterdir())
    except OSError:
        return None
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return "an image folder"
    if any(p.is_dir() and not p.name.startswith(".") for p in entries):
        return "a folder of class folders"
    return None


def _review_tasks(path: Path) -> bool:
    """Whether a JSON file is eic's review tasks: a list of tasks with data and no one's annotations yet."""
    try:
        if path.stat().st_size > _PEEK_BYTES:
            return False
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(tasks, list)
        and bool(tasks)
        and all(isinstance(t, dict) and "data" in t and not t.get("annotations") for t in tasks)
    )
