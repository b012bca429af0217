"""Operations on harvested tables: ``eic subtract`` and ``eic stats``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..core.config import StatsConfig, SubtractConfig, public_dict
from ..core.outputs import TABLE, OutputKind, claim_sidecar, claimed, refuse_input
from ..core.recognise import peek_json
from ..core.sidecars import MAX_SIDECAR_BYTES
from ..core.tables import read_table, write_json, write_table
from ..europeana.vocabulary import load_vocabulary


def _is_stats(path: Path) -> bool:
    """Whether a JSON file is statistics eic stats wrote (its counts, by their names)."""
    data = peek_json(path, MAX_SIDECAR_BYTES)
    return isinstance(data, dict) and {"rows", "unique_ids", "per_category"} <= set(data)


STATS = OutputKind("stats", "statistics", recognise=_is_stats)
log = logging.getLogger(__name__)
MOST = 0.5  # subtract warns when it removes more than this share of a class or a level


@dataclass
class SubtractReport:
    output: Path
    kept: int
    removed: int
    warnings: list[str] = field(default_factory=list)  # a class or level the evaluation table took most of


def subtract(config: SubtractConfig) -> SubtractReport:
    """Write the training table without every row whose ID is in the evaluation table."""
    refuse_input(config.output, "evaluation table", config.eval)
    with claimed(config.output, TABLE, overwrite=config.overwrite):
        settings = claim_sidecar(config.output, "config", own=config.train)
        train = read_table(config.train, required=("ID",), columns=config.columns)
        evaluation = read_table(config.eval, required=("ID",), columns=config.columns)
        eval_ids = evaluation.select(record_key(pl.col("ID"))).get_column("ID").drop_nulls().unique()
        # A row without an ID cannot be in the evaluation table: it stays.
        kept = train.filter(~record_key(pl.col("ID")).is_in(eval_ids.implode()).fill_null(False))
        write_json(settings, public_dict(config))  # first: a table of eic's is one with its settings beside it
        write_table(kept, config.output)
    report = SubtractReport(output=config.output, kept=kept.height, removed=train.height - kept.height)
    report.warnings = _most_removed(train, kept)
    for warning in report.warnings:
        log.warning("%s", warning)
    return report


# A record's ID as other tables write it: its URI, its page on europeana.eu (with a language, or the old portal's
# record/...html), without the leading slash (the pilot's eval_multilabel.csv) or with a trailing one.
# An address's query and fragment (the Search API's guid carries utm_ tracking, a browser's ?query= and #media).
_QUERY = r"(?i)^(https?://[^?#]*)[?#].*$"
_URI = r"(?i)^https?://(?:data\.europeana\.eu/item|(?:www\.)?europeana\.eu/(?:[a-z]{2}/)?item)(/.*)$"
_PORTAL = r"(?i)^https?://(?:www\.)?europeana\.eu/portal/(?:[a-z]{2}/)?record(/.*?)(?:\.html)?$"
_RECORD_API = r"(?i)^https?://api\.europeana\.eu/record(?:/v2)?(/.*?)(?:\.(?:json|jsonld|rdf|nt|ttl))?$"


def record_key(ids: pl.Expr) -> pl.Expr:
    """Record IDs however a table writes them, as ``/DATASET/LOCAL``: what subtract matches two tables' rows by."""
    key = ids.str.strip_chars().str.replace(_QUERY, "${1}")
    for form in (_URI, _PORTAL, _RECORD_API):
        key = key.str.replace(form, "${1}")
    key = key.str.strip_chars_end("/")
    return pl.when(key.str.starts_with("/")).then(key).otherwise(pl.lit("/") + key)


def _most_removed(train: pl.DataFrame, kept: pl.DataFrame) -> list[str]:
    """A class or reusability level of which subtract removed most: an evaluation harvest whose ``n`` (per
    category and level) reaches a level's every record leaves training none of it, and nothing else says so."""
    found = []
    for column, what in (("category", "class"), ("reusability", "reusability level")):
        if column not in train.columns:
            continue
        before, after = _label_counts(train, column), _label_counts(kept, column)
        for name, total in before.items():
            removed = total - after.get(name, 0)
            if removed > MOST * total:
                found.append(
                    f"subtract removed {removed} of {total} records of {what} '{name}' ({removed / total:.0%}): "
                    "training keeps little of it; harvest the evaluation table with a smaller --n (it counts per "
                    "category and level), or add records of it to training"
                )
    return found


def _label_counts(df: pl.DataFrame, column: str) -> dict[str, int]:
    """Rows per value of ``column``; a multi-label cell counts once for each of its space-separated labels."""
    labels = df.select(pl.col(column).str.split(" ")).explode(column).drop_nulls(column).filter(pl.col(column) != "")
    return _counts(labels, column)


@dataclass
class TableStats:
    rows: int
    unique_ids: int
    per_category: dict[str, int] = field(default_factory=dict)
    per_reusability: dict[str, int] = field(default_factory=dict)
    per_provider: dict[str, int] = field(default_factory=dict)
    provider_column: str = "data_provider"
    without_url: int = 0
    without_category: int = 0
    duplicate_rows: int = 0
    ids_in_several_categories: int = 0
    unknown_categories: dict[str, int] = field(default_factory=dict)


def stats(config: StatsConfig) -> TableStats:
    """Describe a table: counts per category, level and provider, and what looks wrong in it.

    With ``config.output`` the statistics are also written there as JSON."""
    if config.output is None:
        return _describe(config)
    with claimed(config.output, STATS, overwrite=config.overwrite):
        result = _describe(config)
        write_json(config.output, dataclasses.asdict(result))
    return result


def _describe(config: StatsConfig) -> TableStats:
    df = read_table(config.table, required=("ID",), columns=config.columns)
    vocab = load_vocabulary(config.vocab)
    has_category = "category" in df.columns
    labels = (
        df.select("ID", pl.col("category").str.extract_all(r"\S+")).explode("category").drop_nulls("category")
        if has_category
        else pl.DataFrame({"ID": [], "category": []}, schema={"ID": pl.Utf8, "category": pl.Utf8})
    )
    per_category = _counts(labels, "category")
    provider_column = "data_provider" if "data_provider" in df.columns else "dataset"
    if provider_column == "dataset":
        # Tables without a provider column: the dataset ID (first segment of the record ID)
        # names the collection just as well.
        df = df.with_columns(pl.col("ID").str.strip_chars("/").str.split("/").list.first().alias("dataset"))
    several = 0
    if has_category:
        several = (
            df.drop_nulls("ID")
            .group_by("ID")
            # A record's labels as a set: "drawing ceramics" is "ceramics drawing"
            .agg(pl.col("category").str.extract_all(r"\S+").list.sort().list.join(" ").n_unique().alias("k"))
            .filter(pl.col("k") > 1)
            .height
        )
    return TableStats(
        rows=df.height,
        unique_ids=df.get_column("ID").drop_nulls().n_unique(),  # a row without an ID is no record
        per_category=per_category,
        per_reusability=_counts(df, "reusability") if "reusability" in df.columns else {},
        per_provider=_counts(df, provider_column),
        provider_column=provider_column,
        without_url=df.height if "URL" not in df.columns else df.get_column("URL").null_count(),
        without_category=df.get_column("category").null_count() if has_category else df.height,
        duplicate_rows=df.height - df.unique().height,
        ids_in_several_categories=several,
        unknown_categories={c: n for c, n in per_category.items() if c not in vocab},
    )


def _counts(df: pl.DataFrame, column: str) -> dict[str, int]:
    counted = df.get_column(column).fill_null("(empty)").value_counts(sort=True)
    return {row[column]: row["count"] for row in counted.iter_rows(named=True)}
