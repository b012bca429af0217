"""A client of Europeana's OAI-PMH service: ListRecords in EDM (``metadataPrefix=edm``), a set per dataset,
from/until, resumption tokens followed page by page (facts: ``shared/europeana_bulk.md`` §A).

Each page is parsed as it arrives (an lxml pull parser fed the response's chunks: no entity expanded, no DTD or
network reached, no tree larger than libxml2's safe limits), its records read by ``edm.record_from_rdf`` and cleared
at once. A page's ``resumptionToken`` is where the list goes on; the last page has none. Tokens are opaque: a caller
keeps them (a harvest journals each page's with its records) and hands one back to carry on after a kill.

Retries and pacing are the other clients' (``core/retry.py``: the statuses of ``RETRYABLE``, timeouts, dropped
connections; ``RateLimit``); every OAI-PMH error answer is one line (``OaiPmhError`` and its branches), except
``noRecordsMatch``, which is an empty list, not an error. No API key is sent: the service needs none, and refuses a
parameter it does not know (``wskey`` included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from lxml import etree

from ..core.config import DEFAULT_OAI_URL
from ..core.errors import ApiError
from ..core.retry import RETRYABLE, Failed, Retry, retry_after, send
from .edm import RDF_TAG, EdmRecord, record_from_rdf
from .ratelimit import RateLimit
from .search_api import server_text
from .tls import tls_context

OAI = "http://www.openarchives.org/OAI/2.0/"
_ERROR, _TOKEN = f"{{{OAI}}}error", f"{{{OAI}}}resumptionToken"
MAX_WAIT = 60.0  # never sleep longer than this for one retry, whatever Retry-After says
log = logging.getLogger(__name__)


class OaiPmhError(ApiError):
    """The OAI-PMH service answered an error (``code``: OAI-PMH's name for it), or no OAI-PMH answer at all."""

    code = ""


class BadResumptionToken(OaiPmhError):
    """A resumption token the service no longer knows: expired (Europeana's live 24 hours) or damaged."""

    code = "badResumptionToken"


class CannotDisseminateFormat(OaiPmhError):
    code = "cannotDisseminateFormat"


class BadArgument(OaiPmhError):
    code = "badArgument"


# What to do about each error the service may send, after its own words.
_REMEDIES = {
    "badResumptionToken": "a token lives 24 hours at Europeana: run the same harvest with `resume`, which reads a set "
    "whose token expired again from its first page and keeps what was harvested",
    "badArgument": "check `set` (a dataset's numeric ID, e.g. 2021672) and the `from_date`/`until` dates "
    "(YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ)",
    "cannotDisseminateFormat": "the service does not serve EDM: check `oai_url`",
    "badVerb": "this is not an OAI-PMH endpoint eic can use: check `oai_url`",
    "idDoesNotExist": "check the record's identifier",
}
_BRANCHES: dict[str, type[OaiPmhError]] = {
    cls.code: cls for cls in (BadResumptionToken, CannotDisseminateFormat, BadArgument)
}


@dataclass
class Page:
    """One ListRecords answer: its records (those naming a record ID), the token of the next page (None: the list
    ends here), the list's size as the service counts it, and whether it said noRecordsMatch."""

    records: list[EdmRecord] = field(default_factory=list)
    token: str | None = None
    size: int | None = None
    empty: bool = False


class OaiPmhClient:
    """``with OaiPmhClient(url) as client: for page in client.list_records(spec="2021672"): ...``"""

    def __init__(
        self,
        base_url: str = DEFAULT_OAI_URL,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, self.timeout, self.retries, self.backoff = base_url, timeout, retries, backoff
        self.pacer = RateLimit(rate)
        self._http = httpx.Client(
            # gzip: Europeana's Identify says it compresses; httpx decodes whatever Content-Encoding comes back.
            headers={"User-Agent": "europeana-imgcls", "Accept-Encoding": "gzip", "Accept": "text/xml"},
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            verify=tls_context(),
        )

    def __enter__(self) -> OaiPmhClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def list_records(
        self, *, spec: str | None = None, start: str | None = None, until: str | None = None, token: str | None = None
    ) -> Iterator[Page]:
        """Every page of a ListRecords list: from its first (``spec`` the set, ``start`` as ``from``, ``until``), or
        after a kill from ``token``, the token of the last page kept. A token sent before ends the list in one line (the
        paging would go round for ever)."""
        seen: set[str] = set()
        while True:
            if token is None:
                params = [("verb", "ListRecords"), ("metadataPrefix", "edm")]
                params += [(k, v) for k, v in (("set", spec), ("from", start), ("until", until)) if v]
            else:
                params = [("verb", "ListRecords"), ("resumptionToken", token)]
            page = self.request(params)
            yield page
            if page.token is None:
                return
            if page.token in seen:
                raise OaiPmhError(
                    f"the OAI-PMH service at {self.base_url} sent a resumption token it sent before: its list would "
                    "never end; what was harvested before it is kept"
                )
            seen.add(page.token)
            token = page.token

    def request(self, params: Sequence[tuple[str, str]]) -> Page:
        """One ListRecords request, retried when the failure is passing (``core/retry.py``)."""
        request = tuple(params)
        outcome = send(lambda: self._attempt(request), Retry(self.retries, self.backoff, MAX_WAIT), "OAI-PMH")
        if isinstance(outcome, Failed):
            raise OaiPmhError(self._gave_up(outcome))
        return outcome

    def _attempt(self, params: tuple[tuple[str, str], ...]) -> Page | Failed:
        self.pacer.block()
        try:
            with self._http.stream("GET", self.base_url, params=params) as response:
                if response.status_code in RETRYABLE:
                    asked = response.headers.get("Retry-After")
                    if response.status_code == 429:  # the server spoke about the client, not one request
                        self.pacer.pause(min(MAX_WAIT, retry_after(asked) or 0.0))
                    return Failed(f"answered {response.status_code}", asked, response)
                return self._read(response)
        except httpx.TimeoutException as exc:
            return Failed("timed out", error=exc)
        except (httpx.TransportError, httpx.DecodingError) as exc:  # a broken body is as bad as no body
            return Failed(f"unreachable ({type(exc).__name__})", error=exc)

    def _read(self, response: httpx.Response) -> Page:
        """A page as its bytes arrive: each record read and cleared as soon as its ``rdf:RDF`` ends. The whole answer
        must come within ``timeout`` (httpx's bounds each read: a server trickling a byte a second would hold the
        harvest for ever)."""
        deadline = time.monotonic() + self.timeout
        parser = etree.XMLPullParser(
            events=("end",),
            tag=(RDF_TAG, _ERROR, _TOKEN),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
        )
        page, error = Page(), None
        try:
            for chunk in response.iter_bytes():
                parser.feed(chunk)
                error = self._take(parser.read_events(), page) or error
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the answer took longer than the timeout", request=response.request)
            parser.close()
            error = self._take(parser.read_events(), page) or error
        except etree.XMLSyntaxError as exc:
            raise OaiPmhError(
                self._not_oai(response, f"not well-formed XML: {' '.join(str(exc).split())[:120]}")
            ) from None
        if error is not None:
            code, message = error
            if code == "noRecordsMatch":
                return Page(empty=True)
            branch = _BRANCHES.get(code, OaiPmhError)
            remedy = _REMEDIES.get(code)
            said = server_text(message, response, limit=200)
            raise branch(
                f"the OAI-PMH service at {self.base_url} answered {code}: {said}" + (f"; {remedy}" if remedy else "")
            )
        if response.status_code != 200:
            raise OaiPmhError(self._not_oai(response, "no OAI-PMH error in it"))
        return page

    @staticmethod
    def _take(events: Any, page: Page) -> tuple[str, str] | None:
        """Records, the token and an error from the parser's finished elements; each record's element cleared with
        what came before it, so a page is held one record at a time."""
        error = None
        for _, element in events:
            if element.tag == RDF_TAG:
                record = record_from_rdf(element)
                if record is not None:
                    page.records.append(record)
                _clear(element)
            elif element.tag == _TOKEN:
                page.token = (element.text or "").strip() or None  # an empty token also ends the list
                size = element.get("completeListSize") or ""
                page.size = int(size) if size.isdigit() else None
            else:
                error = (element.get("code") or "unknown", element.text or "")
        return error

    def _not_oai(self, response: httpx.Response, why: str) -> str:
        kind = response.headers.get("content-type", "no content type")
        return (
            f"the OAI-PMH service at {self.base_url} answered {response.status_code} with something that is not "
            f"OAI-PMH ({kind}; {why}); check `oai_url` (Europeana's: {DEFAULT_OAI_URL})"
        )

    def _gave_up(self, failed: Failed) -> str:
        if failed.response is not None:
            # Europeana fails a whole ListRecords page when one of its records cannot be converted (a 500 at every
            # ask): no resume gets past it, where the dataset's dump holds every record (shared/europeana_bulk.md).
            lasting = (
                "; a 500 at the same page on every resume is a record Europeana cannot convert: harvest that "
                "dataset from its dump instead (`source` dump)"
                if failed.response.status_code == 500
                else ""
            )
            return (
                f"the OAI-PMH service at {self.base_url} answered {failed.response.status_code} after "
                f"{failed.attempts} attempts; try again later (`resume` carries on at the last page kept){lasting}"
            )
        if isinstance(failed.error, httpx.TimeoutException):
            return (
                f"the OAI-PMH service at {self.base_url} did not answer in time after {failed.attempts} attempts; "
                "try later or raise `timeout` (`resume` carries on at the last page kept)"
            )
        return (
            f"cannot reach the OAI-PMH service at {self.base_url} ({type(failed.error).__name__}) after "
            f"{failed.attempts} attempts; check `oai_url` and the network"
        )


def _clear(element: Any) -> None:
    """Drop a record's element once read, and the records before it, so the tree never grows with the page."""
    element.clear(keep_tail=True)
    record = element.getparent()  # <metadata>, inside <record>
    while record is not None and record.getparent() is not None and record.tag != f"{{{OAI}}}record":
        record = record.getparent()
    if record is None or record.getparent() is None:
        return
    parent = record.getparent()
    while record.getprevious() is not None:
        del parent[0]
