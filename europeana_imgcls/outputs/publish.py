"""``eic publish`` and ``eic withdraw``: eic enrich's annotations onto Europeana, each once, and off again with
the model that made them.

Publishing checks every annotation first, with the rules Europeana's parser and validator apply and eic's own
(``europeana/annotations.py``: among them, only Europeana records as targets and plain http(s) addresses as
sources), and sends nothing from a file that breaks one. It then sends batches to the Annotations API and
journals (``core/journal.py``: ``ENRICHMENTS.published/``) each annotation's state under its canonical IRI:

    sending    the batch it is in was sent, no answer yet      published  the API's id for it, and its model
    unsent     it was not stored (a refusal, no answer at all)  rejected   the API refused it alone: why
    withdrawn  deleted again by eic withdraw

The last state of a canonical IRI is what counts. Each is a typed record (``State``) with a format tag; a line
whose value is not a state eic writes (a hand edit, another program's) is skipped and said, as a cut line is,
and the state before it counts (a ``sending`` precedes every ``published``, so nothing published is forgotten);
a state of another format stops the run in one line. Europeana has no duplicate check, so nothing is sent twice:
a re-run sends only what is not published, and an annotation left ``sending`` by a run that stopped mid-upload
(Ctrl-C, kill -9, a lost connection) is first looked for on the API by its model, record and concept, and sent
again only if it is not there. A published annotation whose content (what Europeana keeps of it) changed since
is reported, not sent again. A batch the API refuses for one item is halved until that item stands alone, so the
others still go and the one is reported with the API's message.

Withdrawing reads the same journals: every annotation of the model that is published there, and that the API says
is the model's (its search lists it under the model's generator, or, not listed yet, the annotation names it), is
deleted (``DELETE /annotation/{n}``); one the journal names that is another model's is left and said. One already
gone (404, 410) counts as withdrawn. Without journals (lost, or another machine's) it asks the API's search for the
model's generator and deletes what it finds. The API lets only an annotation's creator delete it: one another
account published (the same model's tag of the same record, found by publish and not sent twice) is refused (403),
left and said, and the others are deleted all the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from ..core.config import AnnotationApiSettings, PublishConfig, WithdrawConfig
from ..core.errors import ApiError, ConfigError, DatasetError
from ..core.journal import SETTINGS, Journal
from ..core.progress import progress_bar
from ..core.recognise import peek_json
from ..core.sidecars import Sidecar, first_problem
from ..europeana.annotation_client import (
    AnnotationsClient,
    AnnotationsError,
    SearchTooLong,
    UnknownOutcome,
    generator_of,
)
from ..europeana.annotations import (
    KEPT,
    MODEL_ID_PREFIX,
    absolute_uri,
    annotation_number,
    api_name,
    model_generator,
    model_of,
    publish_problem,
    record_of,
    record_uri_problem,
    web_address_problem,
)
from ..europeana.search_api import ITEM_BASE

STATE_FORMAT: Literal["eic-publish-state/1"] = "eic-publish-state/1"
log = logging.getLogger(__name__)


@dataclass
class PublishReport:
    source: Path
    journal: Path
    annotations: int = 0  # in the file (each canonical IRI once)
    sent: int = 0  # stored on the API by this run
    published_before: int = 0  # by an earlier run
    # found on the API, not sent again: of an upload an earlier run did not see end, or sent from another file (or
    # by a run whose journal was lost) by the same model
    found: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # canonical IRI, the API's message
    changed: list[str] = field(default_factory=list)  # published, and what the API keeps of it changed since
    gone: int = 0  # published by an earlier run, no longer on the API (withdrawn since): sent again
    models: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False
    where: str = "Europeana"  # the API, as messages name it

    @property
    def to_send(self) -> int:
        """What a run sends (a dry run: would send): not published earlier, or gone since, and not found there."""
        return self.annotations - self.published_before + self.gone - self.found


@dataclass
class WithdrawReport:
    model: str
    journals: list[Path]
    withdrawn: int = 0  # deleted by this run
    gone_before: int = 0  # the API had no such annotation any more (404, 410)
    withdrawn_before: int = 0  # by an earlier run
    remaining: int = 0  # dry run: what would be deleted
    dry_run: bool = False
    where: str = "Europeana"
    by_search: bool = False  # found by the model's generator on the API (no journals given)
    refused: int = 0  # the API refused to delete them (403): created by another account
    refusal: str = ""  # the API's reason, as it gave it last
    not_the_models: int = 0  # named in a journal, but another model's annotation on the API: left


# ---------------------------------------------------------------------------------------------
# The journal's states: what publish and withdraw read back from ENRICHMENTS.published/


class _State(Sidecar):
    model_config = ConfigDict(extra="forbid")  # a state with a field eic never writes is a damaged one
    format: Literal["eic-publish-state/1"] = STATE_FORMAT  # journals written before the tag: the same shape
    model: str = Field(pattern=r"^[0-9a-f]{16}$")


class _Whereabouts(_State):
    """Where a sent annotation can be looked for on the API, and a digest of what the API keeps of it."""

    generator: str | None = None
    record: str | None = None
    concept: str | None = None
    digest: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")

    @field_validator("generator", "concept")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        problem = None if value is None else web_address_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("record")
    @classmethod
    def _record(cls, value: str | None) -> str | None:
        problem = None if value is None else record_uri_problem(ITEM_BASE + value)
        if problem is not None:
            raise ValueError(problem)
        return value


class Sending(_Whereabouts):
    state: Literal["sending"]
    generator: str
    record: str
    concept: str

    @model_validator(mode="after")
    def _the_models_generator(self) -> Sending:
        # What the API is searched by for this model's annotation (and withdraw deletes what it finds): publish
        # sends only annotations whose generator is their model's.
        if self.generator != model_generator(self.model):
            raise ValueError(f"its generator is not model {self.model}'s")
        return self


class Unsent(_State):
    state: Literal["unsent"]


class Rejected(_State):
    state: Literal["rejected"]
    error: str


class _Named(_State):
    """A state that names the annotation on the API: an annotation URI of that API, nothing else."""

    id: str

    @field_validator("id")
    @classmethod
    def _annotation(cls, value: str, info: ValidationInfo) -> str:
        api = (info.context or {}).get("api")
        if annotation_number(value, api) is None:
            raise ValueError("names no annotation of the Annotations API")
        return value


class Published(_Named):
    state: Literal["published"]
    digest: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")


class Withdrawn(_Named):
    state: Literal["withdrawn"]


State = Sending | Unsent | Rejected | Published | Withdrawn
_STATE: TypeAdapter[State] = TypeAdapter(Annotated[State, Field(discriminator="state")])


def _states(journal: Journal, api: str) -> dict[str, State]:
    """Each canonical IRI's last state eic wrote. A value that is not one is skipped and said (the state before
    it counts); a state of another format, written by another version of eic, stops
    everything."""
    states: dict[str, State] = {}
    skipped: list[tuple[str, str]] = []
    for key, value in journal.entries():
        tag = value.get("format", STATE_FORMAT) if isinstance(value, dict) else STATE_FORMAT
        if isinstance(tag, str) and tag.startswith("eic-publish-state/") and tag != STATE_FORMAT:
            raise DatasetError(
                f"{journal.folder} holds states of the format {tag[:40]!r}, which this eic does not read (it reads "
                f"{STATE_FORMAT}): publish and withdraw with the eic that wrote them"
            )
        try:
            if not absolute_uri(key):
                raise ValueError("the key is no canonical IRI")
            states[key] = _STATE.validate_python(value, context={"api": api})
        except (ValidationError, ValueError) as exc:
            skipped.append((key, _why(exc)))
    if skipped:
        key, why = skipped[0]
        log.warning(
            "%s: skipped %d record(s) that are no state eic writes (the first, of %.80r: %s); the state before "
            "each counts, as for a cut line",
            journal.folder,
            len(skipped),
            key,
            why,
        )
    return states


def _why(exc: Exception) -> str:
    return first_problem(exc) if isinstance(exc, ValidationError) else str(exc)


# ---------------------------------------------------------------------------------------------
# Publish


def publish(config: PublishConfig) -> PublishReport:
    """Send the annotations of ``config.enrichments`` the API does not hold yet; see the module docstring."""
    items = _checked(config.enrichments)
    journal = _journal(config.journal or config.enrichments.with_name(config.enrichments.name + ".published"), config)
    report = PublishReport(
        config.enrichments,
        journal.folder,
        annotations=len(items),
        dry_run=config.dry_run,
        models=Counter(_model(item) for item in items.values()),
        where=api_name(config.annotation_api),
    )
    if config.dry_run:  # the API is asked as a run would ask it (reads only); the journal is not written
        journal.check_settings()  # another Annotations API's journal is refused, as the run refuses it
        state = _states(journal, config.annotation_api) if journal.folder.is_dir() else {}
        report.published_before = sum(isinstance(state.get(c), Published) for c in items)
        if state:  # with nothing sent before, everything would go: no question for the API
            with _client(config, token_needed=False) as client:
                _ask(None, client, items, state, report)
        report.changed = _changed(items, state)
        return report
    with _client(config) as client, journal.open():
        state = _states(journal, config.annotation_api)
        report.published_before = sum(isinstance(state.get(c), Published) for c in items)  # before any is found
        _ask(journal, client, items, state, report)
        report.changed = _changed(items, state)
        todo = [item for canonical, item in items.items() if not isinstance(state.get(canonical), Published)]
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
                f"{path}: annotation {number}{f' ({name!r:.80})' if name else ''} cannot be published: "
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
                lines = [json.loads(line, parse_constant=_no_constant) for line in handle if line.strip()]
            yield from lines
            return
        data = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except _NotJson as exc:
        raise DatasetError(
            f"{path}: holds {exc}, which is no number JSON allows (a confidence that is no number?); nothing "
            "was sent: write the file again with eic enrich"
        ) from None
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


class _NotJson(ValueError):
    """NaN, Infinity or -Infinity: Python's JSON reader takes them, JSON and Europeana do not."""


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def _digest(item: dict[str, Any]) -> str:
    """What the API keeps of an annotation (its own times aside: it sets them), as 32 hex digits: how a re-run
    knows a published annotation changed since it was sent."""
    kept = {key: item[key] for key in KEPT if key in item and key not in ("created", "generated")}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def _changed(items: dict[str, dict[str, Any]], state: dict[str, State]) -> list[str]:
    """The published annotations whose content differs from what was sent (journals from before the digest say
    nothing: they are taken as unchanged)."""
    return [
        canonical
        for canonical, item in items.items()
        if isinstance(last := state.get(canonical), Published) and last.digest and last.digest != _digest(item)
    ]


def _send(batch: list[dict[str, Any]], journal: Journal, client: AnnotationsClient, report: PublishReport) -> None:
    """One upload, journaled before and after; a refused batch halved until the refused item stands alone."""
    sending = [_sending(item) for item in batch]
    for item, state in zip(batch, sending, strict=True):
        _append(journal, item["canonical"], state)
    journal.flush()
    try:
        ids = client.create(batch)
    except AnnotationsError as refused:  # the batch is all or nothing: none of it was stored
        if len(batch) == 1:
            message = str(refused)
            _mark(journal, batch, lambda item: Rejected(state="rejected", error=message, model=_model(item)))
            report.rejected.append((batch[0]["canonical"], message))
            return
        _mark(journal, batch, lambda item: Unsent(state="unsent", model=_model(item)))
        middle = len(batch) // 2
        _send(batch[:middle], journal, client, report)
        _send(batch[middle:], journal, client, report)
        return
    except UnknownOutcome as lost:  # left as sending; so is a batch cut short by Ctrl-C: the next run settles it
        raise DatasetError(
            f"{lost}: it may or may not hold the last {len(batch)} annotations sent; run eic publish again: it "
            "looks for them before it sends them again"
        ) from None
    except ApiError:  # a refused token, a server that stayed down, no API there: nothing of it was stored
        _mark(journal, batch, lambda item: Unsent(state="unsent", model=_model(item)))
        raise
    for item, sent, annotation_id in zip(batch, sending, ids, strict=True):
        published = Published(state="published", id=annotation_id, model=sent.model, digest=sent.digest)
        _append(journal, item["canonical"], published)
    journal.flush()
    report.sent += len(batch)


def _model(item: dict[str, Any]) -> str:
    model = model_of(item)
    assert model is not None  # publish_problem refused every annotation that names none
    return model


def _sending(item: dict[str, Any]) -> Sending:
    """What a later run needs to find the annotation on the API if this upload's answer never comes."""
    record = record_of(item)
    assert record is not None  # publish_problem refused every target that is no record
    return Sending(
        state="sending",
        model=_model(item),
        generator=item["generator"]["id"],
        record=record,
        concept=item["body"]["source"],
        digest=_digest(item),
    )


def _ask(
    journal: Journal | None,
    client: AnnotationsClient,
    items: dict[str, dict[str, Any]],
    state: dict[str, State],
    report: PublishReport,
) -> None:
    """What the API holds of the journal's annotations, into ``state`` (and the journal, unless a dry run's)."""
    published = {c for c, last in state.items() if isinstance(last, Published)}
    report.found = _settle(journal, client, state) + _reconcile(journal, client, items, state)
    report.gone = sum(c in published and isinstance(state.get(c), Unsent) for c in items)


def _append(journal: Journal | None, canonical: str, state: State) -> None:
    if journal is not None:  # None: a dry run's, which writes nothing
        journal.append(canonical, state.model_dump(mode="json", exclude_none=True))


def _mark(journal: Journal, batch: list[dict[str, Any]], state: Any) -> None:
    for item in batch:
        _append(journal, item["canonical"], state(item))
    journal.flush()


def _settle(journal: Journal | None, client: AnnotationsClient, state: dict[str, State]) -> int:
    """Annotations an earlier run sent without seeing the answer: found on the API (recorded as published;
    counted) or not (recorded as unsent, so they go again)."""
    found = 0
    for canonical, last in state.items():  # values replaced, none added: the dict may be walked as it changes
        if not isinstance(last, Sending):
            continue
        ids = client.find(last.generator, last.record, last.concept)
        settled: State
        if ids:
            settled = Published(state="published", id=ids[0], model=last.model, digest=last.digest)
            found += 1
        else:
            settled = Unsent(state="unsent", model=last.model)
        _append(journal, canonical, settled)
        state[canonical] = settled
    if journal is not None:
        journal.flush()
    return found


SAMPLED = 3  # of each model, published annotations a run asks the API for by id: a withdrawn model shows


@dataclass
class _Online:
    """What the API's search lists of the file's models: each annotation's id by its (generator, record,
    concept), and the numbers of those it lists."""

    held: dict[tuple[str | None, str | None, str | None], str]
    numbers: set[int | None]


def _reconcile(
    journal: Journal | None, client: AnnotationsClient, items: dict[str, dict[str, Any]], state: dict[str, State]
) -> int:
    """The journal is one file's: set against what the API holds. Where there is something to send, or one of a
    few published annotations of a model is gone when asked for by id (``SAMPLED`` a model, spread over the
    journal: ``eic withdraw --model`` deletes by search and writes no journal), the API's search lists the file's
    models: an annotation not published by this journal that the API holds (sent from another file, or by a run
    whose journal was lost: the same model, record and concept) is recorded as published, not sent again; one the
    journal says is published that the listing lacks is asked for by its id (the index lags behind the newest
    uploads) and sent again if gone. A re-run with nothing to send and nothing gone in its sample asks no more.
    How many were found."""
    published = [canonical for canonical in items if isinstance(state.get(canonical), Published)]
    gone = any(_gone(client, state[canonical]) for canonical in _sample(published, items))
    if len(published) == len(items) and not gone:
        return 0
    online = _online(client, items)
    found = 0
    for canonical, item in items.items():
        last = state.get(canonical)
        settled: State | None = None
        if isinstance(last, Published):
            listed = online is not None and annotation_number(last.id, client.api_url) in online.numbers
            if (online is not None or gone) and not listed and _gone(client, last):
                settled = Unsent(state="unsent", model=last.model)
        elif annotation_id := _held(client, item, online):
            settled = Published(state="published", id=annotation_id, model=_model(item), digest=_digest(item))
            found += 1
        if settled is not None:
            _append(journal, canonical, settled)
            state[canonical] = settled
    if journal is not None:
        journal.flush()
    return found


def _sample(published: list[str], items: dict[str, dict[str, Any]]) -> list[str]:
    """Up to ``SAMPLED`` published annotations of each model: its first, its middle and its last in the file."""
    by_model: dict[str, list[str]] = {}
    for canonical in published:
        by_model.setdefault(_model(items[canonical]), []).append(canonical)
    return [mine[k] for mine in by_model.values() for k in sorted({0, len(mine) // 2, len(mine) - 1})[:SAMPLED]]


def _gone(client: AnnotationsClient, last: State) -> bool:
    """Whether the API no longer holds the annotation a published state names (it says so for its id)."""
    number = annotation_number(getattr(last, "id", None), client.api_url)
    return number is not None and not client.exists(number)


def _key(item: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """An annotation's model (its generator), record and concept."""
    generator = generator_of(item)
    return (generator if isinstance(generator, str) else None, record_of(item), _concept(item))


def _online(client: AnnotationsClient, items: dict[str, dict[str, Any]]) -> _Online | None:
    """Every annotation of the file's models' generators, as the search lists them; None where a model has more
    than the search pages through, or the search answers with ids alone (then each annotation is looked for on its
    own, by model, record and concept)."""
    online = _Online({}, set())
    try:
        for generator in sorted({item["generator"]["id"] for item in items.values()}):
            for listed in client.made_by(generator):
                key = _key(listed)
                if None in key:  # an answer without the annotation's content: nothing to match it by
                    return None
                online.held.setdefault(key, str(listed["id"]))
                online.numbers.add(annotation_number(listed["id"], client.api_url))
    except SearchTooLong:
        return None
    return online


def _held(client: AnnotationsClient, item: dict[str, Any], online: _Online | None) -> str | None:
    """The id of the annotation the API holds of ``item``'s model, record and concept, if any."""
    generator, record, concept = _key(item)
    if online is not None:
        return online.held.get((generator, record, concept))
    found = client.find(str(generator), str(record), str(concept))
    return found[0] if found else None


def _concept(item: dict[str, Any]) -> str | None:
    """The concept an annotation tags its record with (its body's source; a body that is the URI itself)."""
    body = item.get("body")
    concept = body.get("source") if isinstance(body, dict) else body
    return concept if isinstance(concept, str) else None


# ---------------------------------------------------------------------------------------------
# Withdraw


def withdraw(config: WithdrawConfig) -> WithdrawReport:
    """Delete every annotation ``config.model`` published from the given files (none given: every one the API's
    search finds by the model's generator); see the module docstring."""
    model = config.model.removeprefix(MODEL_ID_PREFIX)
    if not config.published:
        return _withdraw_found(config, model)
    folders = dict.fromkeys(_journal_folder(path, model, config).resolve() for path in config.published)  # once each
    journals = [_journal(folder, config) for folder in folders]
    report = WithdrawReport(
        model, [j.folder for j in journals], dry_run=config.dry_run, where=api_name(config.annotation_api)
    )
    with ExitStack() as held:  # every journal held and read once, before any work
        states = [(held.enter_context(journal.open()), _states(journal, config.annotation_api)) for journal in journals]
        known = {s.model for _, state in states for s in state.values()}
        if model not in known:
            said = ", ".join(sorted(known)) or "none"
            raise DatasetError(
                f"no annotation of model {model} was published from {', '.join(map(str, config.published))} "
                f"(their journals know the models: {said})"
            )
        if config.dry_run:
            report.remaining = sum(
                s.model == model and isinstance(s, Published | Sending) for _, state in states for s in state.values()
            )
            return report
        with _client(config) as client:
            theirs = _ModelOnTheApi(client, model)  # one listing of the model's annotations for every journal
            for journal, state in states:
                _withdraw(journal, state, theirs, report, config.quiet)
    return report


def _withdraw(
    journal: Journal, state: dict[str, State], theirs: _ModelOnTheApi, report: WithdrawReport, quiet: bool
) -> None:
    model, client = theirs.model, theirs.client
    mine = {c: s for c, s in state.items() if s.model == model}
    report.withdrawn_before += sum(isinstance(s, Withdrawn) for s in mine.values())
    _settle(journal, client, mine)  # an upload that never saw its answer: what of it is on the API goes too
    published = [(c, s) for c, s in mine.items() if isinstance(s, Published)]
    live = [(c, s) for c, s in published if theirs.holds(s)]
    report.not_the_models += len(published) - len(live)

    def withdrawn(i: int) -> None:
        canonical, last = live[i]
        _append(journal, canonical, Withdrawn(state="withdrawn", id=last.id, model=model))
        journal.flush()

    _delete_each([s.id for _, s in live], client, report, quiet, after=withdrawn)


@dataclass
class _ModelOnTheApi:
    """What the API says is a model's: listed by its search under the model's generator (asked once a run, whatever
    the number of journals), or, not listed (the index lags behind the newest uploads; the search answers with ids
    alone), fetched by id and naming that generator. A journal is a file in the user's folder: edited or damaged,
    it must not delete another model's annotation."""

    client: AnnotationsClient
    model: str

    @functools.cached_property
    def listed(self) -> set[int | None]:
        generator = model_generator(self.model)
        try:
            found = self.client.made_by(generator)
        except SearchTooLong:
            return set()
        return {annotation_number(x["id"], self.client.api_url) for x in found if "generator" in x}

    def holds(self, state: Published) -> bool:
        """Whether the annotation a published state names is the model's (one already gone stays, for delete to
        count)."""
        number = _number(state.id, self.client)
        if number in self.listed:
            return True
        held = self.client.get(number)
        return held is None or generator_of(held) == model_generator(self.model)


def _withdraw_found(config: WithdrawConfig, model: str) -> WithdrawReport:
    """No journals: the model's annotations as the API's search finds them by the model's generator (every
    annotation eic enrich made with it names it), deleted one by one. A re-run finds what is left."""
    report = WithdrawReport(model, [], dry_run=config.dry_run, where=api_name(config.annotation_api), by_search=True)
    with _client(config, token_needed=not config.dry_run) as client:
        ids = client.by_generator(model_generator(model))
        if config.dry_run:
            report.remaining = len(ids)
        else:
            _delete_each(ids, client, report, config.quiet)
    return report


def _delete_each(
    ids: list[str],
    client: AnnotationsClient,
    report: WithdrawReport,
    quiet: bool,
    after: Callable[[int], None] | None = None,
) -> None:
    """Delete each annotation, counting those already gone and those the API refuses (another account's: left, and
    the rest deleted all the same); ``after(i)`` once the i-th is gone (its journal)."""
    with progress_bar(quiet, transient=True) as bar:
        task = bar.add_task("withdraw", total=len(ids))
        for i, annotation_id in enumerate(ids):
            deleted = client.delete(_number(annotation_id, client))
            bar.advance(task)
            if deleted.refused is not None:  # another account's: left, and the rest tried all the same
                report.refused, report.refusal = report.refused + 1, deleted.refused
                continue
            if after is not None:
                after(i)
            report.gone_before += deleted.gone_before
            report.withdrawn += not deleted.gone_before


def _number(annotation_id: str, client: AnnotationsClient) -> int:
    number = annotation_number(annotation_id, client.api_url)
    assert number is not None  # the states and the client's answers were checked when read
    return number


def _journal_folder(path: Path, model: str, config: WithdrawConfig) -> Path:
    """An enrichment file's publish journal (or a journal folder given itself: only one eic publish wrote, or
    withdraw would write a journal into any folder it is given)."""
    if path.is_dir():
        if not (path / SETTINGS).is_file():
            raise DatasetError(
                f"{path}: no journal of eic publish (it writes ENRICHMENTS.published/ with its {SETTINGS}): give "
                "the enrichments file eic publish sent, or its .published folder"
            )
        return path
    folder = path.with_name(path.name + ".published")
    if not folder.is_dir():
        raise DatasetError(
            f"{path}: nothing was published from it ({folder} does not exist); if it was published from another "
            f"machine or its journal is lost, run eic withdraw `model` {model} without files: the model's "
            f"annotations are then found on {api_name(config.annotation_api)} by their generator"
        )
    return folder


# ---------------------------------------------------------------------------------------------
# Shared


def _journal(folder: Path, config: AnnotationApiSettings) -> Journal:
    _refuse_foreign(folder)
    journal = Journal(
        folder,
        what=f"the publication journal {folder}",
        settings={"annotation_api": config.annotation_api.rstrip("/")},  # http://h/ is http://h, as the client says
        hint="this journal records what went to that Annotations API: name the same `annotation_api`, or "
        "publish to another one with another `journal`",
    )
    journal.update_older_settings(_without_trailing_slash)  # a journal an earlier eic wrote with one
    return journal


def _refuse_foreign(folder: Path) -> None:
    """A journal is written into a new or empty folder, or one eic publish wrote: never into a file, a link or a
    folder of other files (`--journal run/`, say)."""
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise DatasetError(f"`journal` {folder} is not a folder: give a folder for the publication journal")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    settings = peek_json(folder / SETTINGS)
    if not (isinstance(settings, dict) and "annotation_api" in settings):
        raise DatasetError(
            f"`journal` {folder} holds files and is no publication journal eic wrote: give a new or empty folder, "
            "or the journal an earlier eic publish of this file wrote"
        )


def _without_trailing_slash(settings: dict[str, Any]) -> dict[str, Any]:
    api = settings.get("annotation_api")
    return {**settings, "annotation_api": api.rstrip("/")} if isinstance(api, str) else settings


def _client(config: AnnotationApiSettings, token_needed: bool = True) -> AnnotationsClient:
    if config.annotation_token is None and token_needed:
        raise ConfigError(
            "writing to the Annotations API needs a token: set EUROPEANA_ANNOTATION_TOKEN (or pass "
            "`annotation_token`); `dry_run` checks without one"
        )
    return AnnotationsClient(
        config.annotation_api,
        config.annotation_token.get_secret_value() if config.annotation_token else None,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        timeout=config.timeout,
        retries=config.retries,
        rate=config.rate,
    )
