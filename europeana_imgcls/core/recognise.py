"""What a path is, in words, for messages that say what to pass where another thing was expected
(``eic predict x.jpg RUN``, ``eic enrich RUN eval.csv``, ``eic train table.csv``). Torch-free and cheap: names,
suffixes and a look at a folder's first level; a JSON file is read only to tell eic's review tasks from an export.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .config import TABLE_SETTINGS
from .run_names import MODEL_FILE, SPLIT_GLOB, split_index
from .sidecars import MAX_SIDECAR_BYTES, small_regular_file
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
    return path.is_dir() and ((path / MODEL_FILE).is_file() or any(path.glob(f"{SPLIT_GLOB}/{MODEL_FILE}")))


def run_of_split(path: Path) -> Path | None:
    """The run whose split ``path`` is (``RUN/split_0``, holding the split's model), or None."""
    if split_index(path.name) is None or not (path / MODEL_FILE).is_file():
        return None
    return path.parent if path.parent != Path(".") else path.absolute().parent


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
    tasks = peek_json(path)
    return (
        isinstance(tasks, list)
        and bool(tasks)
        and all(isinstance(t, dict) and "data" in t and not t.get("annotations") for t in tasks)
    )


def is_review_tasks(path: Path) -> bool:
    """Whether ``path`` is review tasks as eic writes them (enrich's, audit's): a list of tasks each carrying eic's
    suggestion, beside the labelling interface written with them (which alone tells an empty list of eic's), and
    no one's answers: Label Studio's export of them, saved in their place, holds people's work."""
    tasks = peek_json(path, MAX_SIDECAR_BYTES)
    if not isinstance(tasks, list) or not path.with_name(f"{path.stem}.labelling.xml").is_file():
        return False
    return all(
        isinstance(t, dict)
        and isinstance(t.get("data"), dict)
        and isinstance(t.get("predictions"), list)
        and not t.get("annotations")
        for t in tasks
    )


def is_eic_table(path: Path) -> bool:
    """Whether a table is one eic wrote: eic writes its settings (``NAME.config.json``) or a review's notes
    (``NAME.review.json``, ``NAME.apply.json``) beside every table it makes, naming the table as its `output`
    (``NAME.csv`` and ``NAME.parquet`` share the name: the one eic wrote is the one named). A museum's own table
    has none."""
    if path.suffix.lower() not in (".csv", ".parquet"):
        return False
    return any(sidecar_output(sidecar(path, kind)) == path.name for kind in ("config", "review", "apply"))


def sidecar_output(path: Path) -> str | None:
    """The name of the table an eic sidecar was written beside (its settings' `output`, or those of the review's
    `config`), or None for a file that is not one (a link, no JSON object, no `output`, more than one stage's
    settings: see ``TABLE_SETTINGS``)."""
    data = peek_json(path, MAX_SIDECAR_BYTES)  # never a link's target
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("config"), dict):  # a review's notes: the settings it ran with inside
        settings = data["config"]
    elif any(set(data) <= fields for fields in TABLE_SETTINGS):
        settings = data
    else:  # a person's settings file of that name (a stage's table, a key, another stage's settings)
        return None
    output = settings.get("output")
    return Path(output).name if isinstance(output, str) else None


def peek_json(path: Path, limit: int = _PEEK_BYTES) -> object:
    """A regular JSON file's contents, up to ``limit`` bytes; None for anything else (never a pipe, never a
    larger file, never a traceback)."""
    if not small_regular_file(path, limit):
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def csv_header(path: Path) -> list[str]:
    """The column names on a CSV's first line (what eic's writers put there), read no further."""
    with path.open("rb") as handle:  # the bytes as read may end inside a character; Excel's CSV UTF-8 starts with a BOM
        first = handle.readline(1 << 16).decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = first.splitlines()  # a line ends at CR too (Excel for Mac's CSV)
    try:
        return next(csv.reader(lines[:1]), [])
    except csv.Error:  # a line break inside a quoted field of the header: no header eic writes
        return []
