"""``eic publish`` and ``eic withdraw``: eic enrich's annotations onto Europeana, each once, and off again with
the model that made them.

Publishing checks every annotation first, with the rules Europeana's parser and validator apply and eic's own
(``europeana/annotations.py``), and sends nothing from a file that breaks one. It then sends batches to the
Annotations API and journals (``core/journal.py``: ``ENRICHMENTS.published/``) each annotation's state under
its canonical IRI:

    sending    the batch it is in was sent, no answer yet      published  Europeana's id for it, and its model
    unsent     it was not stored (a refusal, no answer at all)  rejected   Europeana refused it alone: why
    withdrawn  deleted again by eic withdraw

The last state of a canonical IRI is what counts. Europeana has no duplicate check, so nothing is sent twice:
a re-run sends only what is not published, and an annotation left ``sending`` by a run that stopped mid-upload
(Ctrl-C, kill -9, a lost connection) is first looked for on Europeana by its model, record and concept, and
sent again only if it is not there. A batch Europeana refuses for one item is halved until that item stands
alone, so the others still go and the one is reported with Europeana's message.

Withdrawing reads the same journals: every annotation of the model that is published there is deleted
(``DELETE /annotation/{n}``); one already gone (404, 410) counts as withdrawn.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import AnnotationApiSettings, PublishConfig, WithdrawConfig
from ..core.errors import ApiError, ConfigError, DatasetError
from ..core.journal import Journal
from ..core.progress import progress_bar
from ..europeana.annotations import (
    MODEL_ID_PREFIX,
    AnnotationsClient,
    AnnotationsError,
    UnknownOutcome,
    identifier_of,
    model_of,
    publish_problem,
    record_of,
)


@dataclass
class PublishReport:
    source: Path
    journal: Path
    annotations: int = 0  # in the file (each canonical IRI once)
    sent: int = 0  # stored on Europeana by this run
    published_before: int = 0  # by an earlier run
    found: int = 0  # of an upload an earlier run did not see end: found on Europeana, not sent again
    rejected: list[tuple[str, str]] = field(default_factory=list)  # canonical IRI, Europeana's message
    models: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False


@dataclass
class WithdrawReport:
    model: str
    journals: list[Path]
    withdrawn: int = 0  # deleted by this run
    gone_before: int = 0  # Europeana had no such annotation any more (404, 410)
    withdrawn_before: int = 0  # by an earlier run
    remaining: int = 0  # dry run: what would be deleted
    dry_run: bool = False


# ---------------------------------------------------------------------------------------------
# Publish


def publish(config: PublishConfig) -> PublishReport:
    """Send the annotations of ``config.enrichments`` that Europeana does not hold yet; see the module docstring."""
    items = _checked(config.enrichments)
    journal = _journal(config.journal or config.enrichments.with_name(config.enrichments.name + ".published"), config)
    report = PublishReport(
        config.enrichments,
        journal.folder,
        annotations=len(items),
        dry_run=config.dry_run,
        models=Counter(model_of(item) or "" for item in items.values()),
    )
    if config.dry_run:
        state = _states(journal) if journal.folder.is_dir() else {}
        report.published_before = sum(state.get(c, {}).get("state") == "published" for c in items)
        return report
    with journal.open(), _client(config) as client:
        state = _states(journal)
        report.published_before = sum(state.get(c, {}).get("state") == "published" for c in items)
        report.found = _settle(journal, client, state)
        todo = [item for canonical, item in items.items() if state.get(canonical, {}).get("state") != "published"]
        with progress_bar(config.quiet, transient=True) as bar:  # the summary says what was done
            task = bar.add_task("publish", total=len(todo))
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                _send(batch, journal, client, report)
                bar.advance(task, len(batch))
    return report


def _checked(path: Path) -> dict[str, dict[str, Any]]:
    """The file's annotations by canonical IRI (each once), every one publishable, or one line saying which is
    not and why; nothing is sent from a file with one bad annotation."""
    items: dict[str, dict[str, Any]] = {}
    for number, item in enumerate(_read(path), start=1):
        problem = publish_problem(item)
        if problem is not None:
            name = item.get("canonical") if isinstance(item, dict) else None
            raise DatasetError(
                f"{path}: annotation {number}{f' ({name})' if name else ''} cannot be published: "
                f"{problem}; nothing was sent"
            )
        items.setdefault(item["canonical"], item)
    if not items:
        raise DatasetError(f"{path}: no annotation in it; nothing to publish")
    return items


def _read(path: Path) -> Iterator[Any]:
    """The annotations of an eic enrich output: a .jsonld AnnotationPage (the europeana profile) or .jsonl."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file of annotations (eic enrich writes one)")
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open("rb") as handle:
                lines = [json.loads(line) for line in handle if line.strip()]
            yield from lines
            return
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{path}: not JSON ({type(exc).__name__}); publish the .jsonld or .jsonl eic enrich writes"
        ) from None
    if isinstance(data, dict) and data.get("type") == "AnnotationCollection":
        raise DatasetError(
            f"{path} is an AnnotationCollection (the w3c profile): Europeana takes the europeana "
            "profile; write it with eic enrich --profile europeana"
        )
    if not (isinstance(data, dict) and data.get("type") == "AnnotationPage" and isinstance(data.get("items"), list)):
        raise DatasetError(f"{path}: not an AnnotationPage of annotations (eic enrich --profile europeana writes one)")
    yield from data["items"]


def _send(batch: list[dict[str, Any]], journal: Journal, client: AnnotationsClient, report: PublishReport) -> None:
    """One upload, journaled before and after; a refused batch halved until the refused item stands alone."""
    for item in batch:
        journal.append(item["canonical"], _sending(item))
    journal.flush()
    try:
        ids = client.create(batch)
    except AnnotationsError as refused:  # the batch is all or nothing: none of it was stored
        _mark(journal, batch, {"state": "unsent"})
        if len(batch) == 1:
            _mark(journal, batch, {"state": "rejected", "error": str(refused)})
            report.rejected.append((batch[0]["canonical"], str(refused)))
            return
        middle = len(batch) // 2
        _send(batch[:middle], journal, client, report)
        _send(batch[middle:], journal, client, report)
        return
    except UnknownOutcome as lost:  # left as sending; so is a batch cut short by Ctrl-C: the next run settles it
        raise DatasetError(
            f"{lost}: Europeana may or may not hold the last {len(batch)} annotations sent; run "
            "eic publish again: it looks for them before it sends them again"
        ) from None
    except ApiError:  # a refused token, a server that stayed down or out of reach: nothing of it was stored
        _mark(journal, batch, {"state": "unsent"})
        raise
    for item, europeana_id in zip(batch, ids, strict=True):
        journal.append(item["canonical"], {"state": "published", "id": europeana_id, "model": model_of(item)})
    journal.flush()
    report.sent += len(batch)


def _sending(item: dict[str, Any]) -> dict[str, Any]:
    """What a later run needs to find the annotation on Europeana if this upload's answer never comes."""
    return {
        "state": "sending",
        "model": model_of(item),
        "generator": item["generator"]["id"],
        "record": record_of(item),
        "concept": item["body"]["source"],
    }


def _mark(journal: Journal, batch: list[dict[str, Any]], state: dict[str, Any]) -> None:
    for item in batch:
        journal.append(item["canonical"], {**state, "model": model_of(item)})
    journal.flush()


def _settle(journal: Journal, client: AnnotationsClient, state: dict[str, dict[str, Any]]) -> int:
    """Annotations an earlier run sent without seeing the answer: found on Europeana (recorded as published;
    counted) or not (recorded as unsent, so they go again)."""
    found = 0
    for canonical, last in state.items():
        if last.get("state") != "sending":
            continue
        ids = client.find(last["generator"], last["record"], last["concept"])
        if ids:
            last = {"state": "published", "id": ids[0], "model": last.get("model")}
            found += 1
        else:
            last = {**last, "state": "unsent"}
        journal.append(canonical, last)
        state[canonical] = last
    journal.flush()
    return found


# ---------------------------------------------------------------------------------------------
# Withdraw


def withdraw(config: WithdrawConfig) -> WithdrawReport:
    """Delete every annotation ``config.model`` published from the given files; see the module docstring."""
    model = config.model.removeprefix(MODEL_ID_PREFIX)
    journals = [_journal(_journal_folder(path), config) for path in config.published]
    report = WithdrawReport(model, [j.folder for j in journals], dry_run=config.dry_run)
    states = [(journal, _states(journal)) for journal in journals]
    known: set[str] = {m for _, state in states for s in state.values() if isinstance(m := s.get("model"), str)}
    if model not in known:
        said = ", ".join(sorted(known)) or "none"
        raise DatasetError(
            f"no annotation of model {model} was published from {', '.join(map(str, config.published))} "
            f"(their journals know the models: {said})"
        )
    if config.dry_run:
        report.remaining = sum(
            s.get("model") == model and s.get("state") in ("published", "sending")
            for _, state in states
            for s in state.values()
        )
        return report
    with _client(config) as client:
        for journal, _ in states:
            with journal.open():
                _withdraw(journal, _states(journal), model, client, report, config.quiet)
    return report


def _withdraw(
    journal: Journal,
    state: dict[str, dict[str, Any]],
    model: str,
    client: AnnotationsClient,
    report: WithdrawReport,
    quiet: bool,
) -> None:
    mine = {c: s for c, s in state.items() if s.get("model") == model}
    report.withdrawn_before += sum(s.get("state") == "withdrawn" for s in mine.values())
    _settle(journal, client, mine)  # an upload that never saw its answer: what of it is on Europeana goes too
    live = {c: s for c, s in mine.items() if s.get("state") == "published"}
    with progress_bar(quiet, transient=True) as bar:
        task = bar.add_task("withdraw", total=len(live))
        for canonical, last in live.items():
            number = identifier_of(str(last["id"]))
            if number is None:
                raise DatasetError(
                    f"{journal.folder}: {canonical} was recorded with the id {last['id']!r}, which "
                    "names no annotation of the Annotations API"
                )
            deleted = client.delete(number)
            journal.append(canonical, {"state": "withdrawn", "id": last["id"], "model": model})
            journal.flush()
            report.gone_before += deleted.gone_before
            report.withdrawn += not deleted.gone_before
            bar.advance(task)


def _journal_folder(path: Path) -> Path:
    """An enrichment file's publish journal (or a journal folder given itself)."""
    if path.is_dir():
        return path
    folder = path.with_name(path.name + ".published")
    if not folder.is_dir():
        raise DatasetError(f"{path}: nothing was published from it ({folder} does not exist)")
    return folder


# ---------------------------------------------------------------------------------------------
# Shared


def _journal(folder: Path, config: AnnotationApiSettings) -> Journal:
    return Journal(
        folder,
        what=f"the publication journal {folder}",
        settings={"annotation_api": config.annotation_api},
        hint="this journal records what went to that Annotations API: name the same `annotation_api`, or "
        "publish to another one with another `journal`",
    )


def _states(journal: Journal) -> dict[str, dict[str, Any]]:
    """Each canonical IRI's last journaled state."""
    state: dict[str, dict[str, Any]] = {}
    for canonical, value in journal.entries():
        if isinstance(value, dict):
            state[canonical] = value
    return state


def _client(config: AnnotationApiSettings) -> AnnotationsClient:
    if config.annotation_token is None:
        raise ConfigError(
            "writing to the Annotations API needs a token: pass `annotation_token` (or set "
            "EUROPEANA_ANNOTATION_TOKEN); `dry_run` checks without one"
        )
    return AnnotationsClient(
        config.annotation_api,
        config.annotation_token.get_secret_value(),
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        timeout=config.timeout,
        retries=config.retries,
        rate=config.rate,
    )
