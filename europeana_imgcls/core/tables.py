"""Reading and writing dataset tables (CSV or Parquet) without ever leaving half a file behind."""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import DatasetError

log = logging.getLogger(__name__)
TABLE_SUFFIXES = (".csv", ".parquet")
TEMP_SUFFIX = ".eic-part"
# Temporary names of earlier eic versions, so their leftovers are still cleaned up (and nothing else is).
_LEGACY_TEMP = re.compile(
    r"^\..+\.jpg\.\d+\.part$|^\.labels\.csv\.part$"
    r"|^\.(failures\.csv|labels\.csv|config\.json)\.[a-z0-9_]{8}\.part$"
)


# OWASP's rule against CSV injection: a spreadsheet takes a text cell that begins with one of = + - @ tab or
# carriage return for a formula (`=HYPERLINK(...)` from a hostile API or a review export), so eic's CSVs begin such
# a cell with an apostrophe, which spreadsheets show as text. A cell that already begins with apostrophes before
# one of them gets one more, and readers take exactly one away: every value reads back as it was written. Numbers
# (-0.5) are left alone; Parquet and JSON, which no spreadsheet evaluates, are never touched.
_FORMULA = r"^'*[=+\-@\t\r]"
_ESCAPED = r"^'+[=+\-@\t\r]"
# A number is the whole cell: Python's `$` also matches before a last newline ("-1\n" would pass for a number and
# keep its minus unescaped), so Python matches it whole (fullmatch); in polars (Rust's regex) `$` is the text's end.
# ASCII digits only: `\d` would take other scripts' digits ("-١") for a number, which no spreadsheet does.
_NUMBER_BODY = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_NUMBER = re.compile(_NUMBER_BODY)
_POLARS_NUMBER = f"^{_NUMBER_BODY}$"


def for_spreadsheets(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: text that would begin a formula gets a leading apostrophe."""
    if isinstance(value, str) and re.match(_FORMULA, value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def from_spreadsheets(value: Any) -> Any:
    """A cell as it was before ``for_spreadsheets``."""
    return value[1:] if isinstance(value, str) and re.match(_ESCAPED, value) else value


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> None:
    """A CSV for people and for eic, written whole or not at all, every cell safe to open in a spreadsheet; a row
    is a mapping (columns it lacks are empty, others left out) or a sequence in the columns' order."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([for_spreadsheets(c) for c in columns])
        for row in rows:
            values = [row.get(c) for c in columns] if isinstance(row, Mapping) else row
            writer.writerow([for_spreadsheets(v) for v in values])


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a CSV eic wrote (``write_csv``), one at a time, each cell as it was given."""
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            yield {from_spreadsheets(k): from_spreadsheets(v) for k, v in row.items()}


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of bytes that are not UTF-8


def read_csv_salvaged(path: Path, then: str) -> list[dict[str, str]]:
    """The whole rows of a CSV eic wrote (``write_csv``) that may since have been damaged (cut inside a character
    by a full disk, bytes overwritten): a row with bytes that are not UTF-8, or with cells missing or too many, is
    left out, and so is whatever follows a place the csv module cannot read on; one warning says how many rows
    (``then``: what that costs). Never an exception for what the file holds."""
    rows: list[dict[str, str]] = []
    damaged = 0
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                cells = [*row, *row.values()]
                if None in cells or any(_NOT_UTF8.search(c) for c in cells if isinstance(c, str)):
                    damaged += 1
                    continue
                rows.append({from_spreadsheets(k): from_spreadsheets(v) for k, v in row.items()})
        except csv.Error:  # a quote never closed, a field past the csv module's limit: nothing after it is sure
            damaged += 1
    if damaged:
        log.warning(
            "%s: %d damaged row(s) left out (bytes that are not UTF-8, or not a whole row: a cut or damaged file); %s",
            path,
            damaged,
            then,
        )
    return rows


def spreadsheet_safe(df: pl.DataFrame) -> pl.DataFrame:
    """``for_spreadsheets`` on every text cell and column name of a table bound for a CSV."""
    text = [c for c, kind in df.schema.items() if kind == pl.Utf8]
    escaped = df.with_columns(
        pl.when(pl.col(c).str.contains(_FORMULA) & ~pl.col(c).str.contains(_POLARS_NUMBER))
        .then(pl.lit("'") + pl.col(c))
        .otherwise(pl.col(c))
        .alias(c)
        for c in text
    )
    return escaped.rename({c: for_spreadsheets(c) for c in df.columns})


def _unescaped(df: pl.DataFrame) -> pl.DataFrame:
    """``from_spreadsheets`` on every cell and column name of a CSV just read (its cells are all text)."""
    restored = df.with_columns(
        pl.when(pl.col(c).str.contains(_ESCAPED)).then(pl.col(c).str.slice(1)).otherwise(pl.col(c)).alias(c)
        for c in df.columns
    )
    return restored.rename({c: from_spreadsheets(c) for c in df.columns})


def temp_path(target: Path) -> Path:
    """A temporary name beside ``target``: hidden, unique per call (not only per process), and
    recognisably eic's, so a clean-up never touches a file that eic did not name itself."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def is_own_temp(name: str) -> bool:
    """Whether a file name is one of eic's temporary names (this version's or an earlier one's)."""
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or bool(_LEGACY_TEMP.match(name)))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (checkpoints, backbones, exports, a harvest's table)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    The file is created by the caller with the process's umask (``mkstemp`` would make it 0600)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def sidecar(output: Path, kind: str) -> Path:
    """Where a table's companion file goes: ``harvested.csv`` -> ``harvested.<kind>.json``."""
    return output.with_name(f"{output.stem}.{kind}.json")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON that every parser reads: a number that is not finite (a loss that diverged, a
    metric of an empty class) is written null, never the NaN or Infinity that Python alone accepts."""
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
        )


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def check_table_suffix(path: Path) -> None:
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DatasetError(f"{path}: tables must end in .csv or .parquet")


def read_table(path: Path, required: tuple[str, ...] = (), columns: Mapping[str, str] | None = None) -> pl.DataFrame:
    """Read a table as strings, cleaned the way real harvested tables need.

    Column names and values are stripped of surrounding spaces, unnamed columns and wholly blank
    rows (what spreadsheets leave behind) are dropped, and empty strings become nulls. ``columns``
    maps eic's column names to the table's own (``{"ID": "id", "URL": "image_url"}``), so a museum's
    table works as it is.
    """
    check_table_suffix(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such table")
    try:
        df = _unescaped(_read_csv(path)) if path.suffix.lower() == ".csv" else pl.read_parquet(path, glob=False)
    except DatasetError:
        raise
    except Exception as exc:  # polars raises many kinds; all mean "unreadable"
        raise DatasetError(f"{path}: cannot read table ({type(exc).__name__}: {_first_line(exc)})") from None
    df = rename_columns(path, _clean(df, path), columns)
    check_columns(path, df.columns, required, mappable=columns is not None)
    return df


def iter_table(
    path: Path, required: tuple[str, ...] = (), chunk_size: int = 10_000, columns: Mapping[str, str] | None = None
) -> Iterator[pl.DataFrame]:
    """Stream a table in cleaned chunks, so memory stays flat however long the table is."""
    lazy = _scan(path)
    check_columns(path, _header(path, lazy, columns), required, mappable=columns is not None)
    try:
        csv_file = path.suffix.lower() == ".csv"
        for chunk in lazy.collect_batches(chunk_size=chunk_size):
            yield rename_columns(path, _clean(_unescaped(chunk) if csv_file else chunk, path), columns)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read table ({type(exc).__name__}: {_first_line(exc)})") from None


def table_columns(path: Path, columns: Mapping[str, str] | None = None) -> list[str]:
    """A table's column names as eic reads them (after the ``columns`` mapping), from its header alone."""
    return _header(path, _scan(path), columns)


def _header(path: Path, lazy: pl.LazyFrame, columns: Mapping[str, str] | None) -> list[str]:
    try:
        names = [from_spreadsheets(c).strip() for c in lazy.collect_schema().names()]
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read table ({type(exc).__name__}: {_first_line(exc)})") from None
    return [name for name in _renamed(path, names, columns) if name is not None]


def rename_columns(path: Path, df: pl.DataFrame, columns: Mapping[str, str] | None) -> pl.DataFrame:
    """The table with its own columns renamed to eic's, as ``columns`` maps them."""
    if not columns:
        return df
    names = _renamed(path, df.columns, columns)
    keep = [old for old, new in zip(df.columns, names, strict=True) if new is not None]
    return df.select(keep).rename({old: new for old, new in zip(df.columns, names, strict=True) if new is not None})


def _renamed(path: Path, names: list[str], columns: Mapping[str, str] | None) -> list[str | None]:
    """Each column's name after the mapping; None for one that a mapped column replaces."""
    if not columns:
        return list(names)
    # A mapping that a table does not need (it has the eic name already) is no error: one setting serves
    # a museum's table and a harvested one alike.
    missing = [source for target, source in columns.items() if source not in names and target not in names]
    if missing:
        raise DatasetError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} to use as "
            f"{', '.join(k for k, v in columns.items() if v in missing)} (has: {', '.join(names)})"
        )
    source_of = {source: target for target, source in columns.items() if source in names}
    # eic-named columns that a mapped column present in this table takes the place of
    replaced = {target for target, source in columns.items() if source in names and source != target}
    return [source_of.get(name) or (None if name in replaced else name) for name in names]


def count_rows(path: Path) -> int:
    return int(_scan(path).select(pl.len()).collect().item())


def _scan(path: Path) -> pl.LazyFrame:
    check_table_suffix(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such table")
    if path.suffix.lower() != ".csv":
        return pl.scan_parquet(path, glob=False)  # a user's path is a name, never a pattern (`tab[1].csv`)
    dialect = csv_dialect(path)
    if dialect.encoding != "utf8" or dialect.cr_lines:  # polars streams UTF-8 lines only; a spreadsheet fits in memory
        try:
            return _read_csv(path).lazy()
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read table ({type(exc).__name__}: {_first_line(exc)})") from None
    return pl.scan_csv(path, separator=dialect.separator, infer_schema=False, truncate_ragged_lines=True, glob=False)


# ---------------------------------------------------------------------------------------------
# A CSV as a spreadsheet saved it
#
# Excel saves "CSV" in the machine's locale: where the decimal separator is a comma (most of Europe) the cells are
# separated by semicolons, and "CSV (Comma delimited)" is Windows-1252, not UTF-8 ("Unicode Text" is UTF-16 with
# tabs). A museum's table comes that way as often as not, so eic reads all of them rather than refusing them.

SEPARATORS = (",", ";", "\t")  # the first wins a tie: a one-column table is a comma's
_SNIFF_BYTES = 1 << 16  # the header line is looked for in this much
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CsvDialect:
    separator: str  # one of SEPARATORS
    encoding: str  # "utf8", "cp1252" (Excel's "CSV" on Windows) or "utf-16" (Excel's "Unicode Text")
    cr_lines: bool = False  # lines end with CR alone (Excel's "CSV (Macintosh)"), which polars does not split on


def csv_dialect(path: Path) -> CsvDialect:
    """How a CSV file is written: its encoding (UTF-8, else Windows-1252; UTF-16 when it starts with that byte
    order mark) and its separator (of SEPARATORS, the one that splits the header into the most columns). A file
    that is none of these is refused in one line, saying how to save it."""
    stat = path.stat()
    return _dialect(path, path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)  # a stage opens its table more than once (its header, its rows): read it once
def _dialect(path: Path, where: Path, size: int, mtime: int) -> CsvDialect:
    """``csv_dialect`` of ``path`` (as given, for messages) once per file and version (``where``, size, mtime)."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\x00" in head:  # no text table holds a NUL byte (Windows-1252 would read any bytes as letters)
        raise DatasetError(
            f"{path}: not a text table (it holds binary bytes: a workbook, an image, a compressed file?): save it as "
            "CSV UTF-8 (Excel: File > Save As > CSV UTF-8 (Comma delimited))"
        )
    elif _decodes(path, "utf-8"):
        encoding = "utf8"
    elif _decodes(path, "cp1252"):
        encoding = "cp1252"
        log.warning(
            "%s is not UTF-8: read as Windows-1252, as Excel saves a CSV; if its accents look wrong, save it as "
            "CSV UTF-8",
            path,
        )
    else:
        raise DatasetError(
            f"{path}: neither UTF-8 nor Windows-1252 text: save it as CSV UTF-8 (Excel: File > Save As > "
            "CSV UTF-8 (Comma delimited))"
        )
    text = head.decode("utf-8" if encoding == "utf8" else encoding, errors="replace").lstrip("\ufeff")
    header = text.splitlines()[0] if text.strip() else ""
    separator = max(SEPARATORS, key=lambda sep: len(next(csv.reader([header], delimiter=sep), [])))
    return CsvDialect(separator, encoding, cr_lines="\r" in text and "\n" not in text)


def _decodes(path: Path, encoding: str) -> bool:
    """Whether the whole file is text in ``encoding`` (read a chunk at a time: a table may be large)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _read_csv(path: Path) -> pl.DataFrame:
    """A CSV's cells as text, in its own dialect (``csv_dialect``)."""
    dialect = csv_dialect(path)
    source: Path | io.BytesIO = path
    if dialect.cr_lines:
        text = path.read_bytes().decode("utf-8" if dialect.encoding == "utf8" else dialect.encoding)
        source = io.BytesIO(text.replace("\r", "\n").encode("utf-8"))
    return pl.read_csv(
        source,
        separator=dialect.separator,
        encoding="utf8" if dialect.cr_lines else dialect.encoding,
        infer_schema=False,
        truncate_ragged_lines=True,
        glob=False,
    )


def check_columns(path: Path, columns: list[str], required: tuple[str, ...], mappable: bool = True) -> None:
    """Refuse a table without the ``required`` columns; ``mappable``: the command takes a ``columns`` mapping,
    which is how a museum's table names them."""
    missing = [col for col in required if col not in columns]
    if missing:
        example = ",".join(f"{col}=your_column" for col in missing)
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(c for c in columns if c) or 'none'})"
            + (f"; name the table's own with `columns` {example}" if mappable else "")
        )


_NOT_TEXT = (pl.List, pl.Array, pl.Struct, pl.Object, pl.Binary)  # a Parquet column eic cannot read as text


def _clean(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    keep = [c for c in df.columns if c.strip() and not c.startswith("_duplicated_") and not c.startswith("Unnamed:")]
    names = [c.strip() for c in keep]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise DatasetError(f"{path}: two columns are named {twice!r} once their spaces are stripped: rename one")
    nested = next((c for c in keep if isinstance(df.schema[c], _NOT_TEXT)), None)
    if nested is not None:
        raise DatasetError(f"{path}: column {nested.strip()!r} holds {df.schema[nested]}, not one text a cell")
    df = df.select(keep).rename(dict(zip(keep, names, strict=True)))
    df = df.with_columns(pl.col(c).cast(pl.Utf8).str.strip_chars().replace("", None) for c in df.columns)
    return df.filter(~pl.all_horizontal(pl.all().is_null())) if df.width else df


def write_table(df: pl.DataFrame, path: Path, written: Callable[[Path], object] | None = None) -> None:
    """``df`` at ``path``, whole or not at all; ``written`` is told of the complete file before it takes ``path``'s
    place (what records it must know it before a kill could leave it there unrecorded)."""
    check_table_suffix(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            spreadsheet_safe(df).write_csv(tmp)
        else:
            df.write_parquet(tmp)
        if written is not None:
            written(tmp)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "unknown error"
