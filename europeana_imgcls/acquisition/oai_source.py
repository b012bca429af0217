"""``eic harvest --source oai-pmh``: records from Europeana's OAI-PMH service (``europeana/oai_pmh.py``).

A unit is a set (``--set``, a dataset's numeric ID), or without sets the whole repository (``oai|*``), both within
``--from``/``--until``. Each ListRecords page is one piece, journaled with the records it gave and the resumption
token of the next page: a harvest killed at any moment resumes at the token of the last page it kept, so no record
is lost or read twice. A set with no records (noRecordsMatch) is no error: its unit ends with nothing, and a note.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

from ..core.config import HarvestConfig
from ..europeana.oai_pmh import OaiPmhClient
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
        pages = self.client.list_records(spec=spec, start=self.config.from_date, until=self.config.until, token=after)
        asked = after
        for page in pages:
            if page.empty:
                log.warning("%s: the OAI-PMH service has no records there (noRecordsMatch)", _named(spec))
            items, no_url, left_out = self.found(page.records)
            advance(len(page.records))
            # Known by the token that asked for it: the same page has the same key however often it is asked.
            yield Piece(_key(unit, asked), unit, items, no_url, left_out, page.token)
            asked = page.token

    def close(self) -> None:
        self.client.close()


def _key(unit: str, token: str | None) -> str:
    if token is None:
        return f"{unit}|first"
    return f"{unit}|{hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest()[:20]}"


def _named(spec: str | None) -> str:
    return f"set {spec}" if spec else "the whole repository"
