"""``eic harvest --source oai-pmh``: records from Europeana's OAI-PMH service (``europeana/oai_pmh.py``).

A unit is a set (``--set``, a dataset's numeric ID), or without sets the whole repository (``oai|*``), both within
``--from``/``--until``. Each ListRecords page is one piece, journaled with the records it gave and the resumption
token of the next page: a harvest killed at any moment resumes at the token of the last page it kept, so no record
is lost or read twice. A set with no records (noRecordsMatch) is no error: its unit ends with nothing, and a note.

A token lives 24 hours at Europeana: a harvest resumed later than that finds its token expired (badResumptionToken)
at the first page it asks for. The unit is then read again from its first page, marked as a new pass (``again``):
what its earlier pass found goes, records and counts, and the new pass's stands (``harvest._Found.replay``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

from ..core.config import HarvestConfig
from ..europeana.oai_pmh import BadResumptionToken, OaiPmhClient
from .sources import Advance, BulkSource, Piece, Plan

log = logging.getLogger(__name__)
WHOLE = "oai|*"  # the unit of a harvest without sets: every record the service has


class OaiPmhSource(BulkSource):
    """The OAI-PMH source: a unit per set, a piece per page."""

    def __init__(self, config: HarvestConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.sets: dict[str, str | None] = {f"oai|{spec}": spec for spec in dict.fromkeys(config.set)} or {WHOLE: None}
        self.client = OaiPmhClient(config.oai_url, timeout=config.timeout, retries=config.retries)

    def units(self) -> list[str]:
        return list(self.sets)

    def fetch(self, unit: str, after: str | None, advance: Advance) -> Iterator[Piece]:
        spec = self.sets[unit]
        pieces = self._pieces(unit, after, advance)
        try:
            first = next(pieces, None)
        except BadResumptionToken:
            if after is None:
                raise  # a token of this run's own expired: a page took a day
            log.warning(
                "%s: the resumption token this harvest stopped at has expired (Europeana keeps one 24 hours): reading "
                "it again from its first page, its records as they are now",
                _named(spec),
            )
            pieces = self._pieces(unit, None, advance, again=after)
            first = next(pieces, None)
        if first is not None:
            yield first
            yield from pieces

    def _pieces(self, unit: str, after: str | None, advance: Advance, again: str | None = None) -> Iterator[Piece]:
        """The unit's pages from ``after`` (None: its first); ``again``: the expired token a new pass replaces."""
        spec = self.sets[unit]
        start, until = _day(self.config.from_date, "00:00:00"), _day(self.config.until, "23:59:59")
        pages = self.client.list_records(spec=spec, start=start, until=until, token=after)
        asked = after
        for page in pages:
            if page.empty:
                log.warning("%s: the OAI-PMH service has no records there (noRecordsMatch)", _named(spec))
            items, no_url, left_out = self.found(page.records)
            advance(len(page.records))
            # Known by the token that asked for it: the same page has the same key however often it is asked. A new
            # pass's first page, by the token it replaces (its first page's own key is the first pass's).
            key = _key(unit, asked) if again is None else _key(unit, again, "again")
            yield Piece(key, unit, items, no_url, left_out, page.token, again=again is not None)
            asked, again = page.token, None

    def close(self) -> None:
        self.client.close()


def _key(unit: str, token: str | None, kind: str = "") -> str:
    if token is None:
        return f"{unit}|first"
    digest = hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest()[:20]
    return f"{unit}|{kind}|{digest}" if kind else f"{unit}|{digest}"


def _day(date: str | None, time: str) -> str | None:
    """A date alone as the second that starts (``from``) or ends (``until``) its day: Europeana reads a date
    alone as its midnight, so `until` 2021-06-18 would leave that whole day out. Its granularity is the second."""
    return f"{date}T{time}Z" if date and len(date) == 10 else date


def _named(spec: str | None) -> str:
    return f"set {spec}" if spec else "the whole repository"
