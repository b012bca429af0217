"""The sandbox's bulk paths: each record of the world its Search API serves, as Europeana's EDM RDF/XML, served
over OAI-PMH and as dataset dumps, in the shapes of ``shared/europeana_bulk.md`` (Europeana's OAI-PMH server and
its dump generator, europeana/OAI-PMH and europeana/downloadable-datasets).

- ``EdmWriter``: one record as ``rdf:RDF`` (``edm:ProvidedCHO``, ``ore:Aggregation`` with ``edm:isShownBy``,
  ``edm:object``, ``edm:rights``, ``edm:dataProvider``, ``edm:provider``; the provider's and Europeana's
  ``ore:Proxy``; ``edm:WebResource`` with ``ebucore:hasMimeType``; ``edm:EuropeanaAggregation`` with
  ``edm:datasetName``; ``skos:Concept`` and ``foaf:Organization`` blocks). A record links exactly the concepts the
  Search API stand-in finds it by (its ``labels``), in the forms Europeana writes them: ``concept/base/N`` and
  ``concept/N`` for Europeana's entities, Getty AAT URIs on the provider's proxy, on ``dc:type``, ``dc:subject``,
  ``dcterms:medium``, ``dc:format`` or ``edm:hasType`` in turn; a literal ``dc:type`` (a word, not a concept) too.
- ``OaiRepository``: the six verbs, ``metadataPrefix=edm`` only, sets (a set is a dataset: ``setSpec`` the numeric
  id), ``from``/``until`` on the record's last update, pages ordered by (update, id), resumption tokens as
  Europeana's (URL-safe Base64 of ``FROM|UNTIL|SET|FORMAT|EXPIRY_MS|COMPLETE_LIST_SIZE|CURSOR|CURSOR_MARK``; the
  last page has none), and the documented errors in their XML shape and HTTP status.
- ``dataset_zip`` / ``md5sum``: a dataset's dump (flat, one ``<local id>.xml`` per record, deflated) and its
  checksum file (hex MD5 with its leading zeros dropped, as the generator's ``BigInteger.toString(16)`` writes it).

Everything is built with lxml: no record's text is ever pasted into XML.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime as dt
import functools
import hashlib
import io
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from lxml import etree

RIGHTS = {
    "open": "http://creativecommons.org/publicdomain/zero/1.0/",
    "restricted": "http://creativecommons.org/licenses/by-nc/4.0/",
    "permission": "http://rightsstatements.org/vocab/InC/1.0/",
}
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "dcterms": "http://purl.org/dc/terms/",
    "edm": "http://www.europeana.eu/schemas/edm/",
    "ore": "http://www.openarchives.org/ore/terms/",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "ebucore": "http://www.ebu.ch/metadata/ontologies/ebucore/ebucore#",
}
OAI = "http://www.openarchives.org/OAI/2.0/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD_INTEGER = "http://www.w3.org/2001/XMLSchema#integer"
DATA = "http://data.europeana.eu"
ITEM = f"{DATA}/item"
EDM_SCHEMA = "http://www.europeana.eu/schemas/edm/EDM.xsd"
# The properties a concept link is written on, in turn (the list; Europeana's own on its proxy).
CONCEPT_PROPERTIES = ("dc:type", "dc:subject", "dcterms:medium", "dc:format", "edm:hasType")
# A concept of no vocabulary (Europeana's "panel", in the Mauritshuis sample): a record may carry it, never found by it.
UNLISTED_CONCEPT = f"{DATA}/concept/1770"
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
SPREAD = 3 * 365 * 86_400  # the records' last updates fall within three years of EPOCH
GRANULARITY = "%Y-%m-%dT%H:%M:%SZ"
DUMP_DECLARATION = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
PAGE_SIZE = 50  # Europeana's ListRecords page; ListIdentifiers' is six times that (300), ListSets' 2000
TOKEN_TTL = 86_400.0  # seconds a resumption token lives (Europeana's 24 h)
ALLOWED = ("verb", "metadataPrefix", "from", "until", "set", "resumptionToken", "identifier")
SET_ID = re.compile(r"^[a-zA-Z0-9\-_]*$")
Answer = tuple[int, bytes]  # HTTP status, XML


class Record(Protocol):
    """What the bulk paths read of a sandbox record (``sandbox.SandboxRecord``)."""

    @property
    def serial(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def level(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def has_url(self) -> bool: ...
    @property
    def variant(self) -> str | None: ...
    @property
    def dataset(self) -> str: ...


def updated(record: Record) -> dt.datetime:
    """The record's last update (``timestamp_update``: what from/until filter and pages are ordered by), spread
    over three years in an order that is not the catalogue's, the same on every run."""
    return EPOCH + dt.timedelta(seconds=(record.serial * 7_919_993 + 86_399) % SPREAD)


def created(record: Record) -> dt.datetime:
    """The record's creation (GetRecord's datestamp, as on Europeana's server)."""
    return updated(record) - dt.timedelta(days=30 + record.serial % 300)


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(GRANULARITY)


def local_id(record_id: str) -> str:
    """The local part of a record ID (after its last ``/``): a dump's entry is named by it."""
    return record_id.rsplit("/", 1)[-1]


def dataset_name(dataset: str) -> str:
    """``edm:datasetName``: the numeric id, ``_``, a name (the Search API's ``edmDatasetName`` says the same)."""
    return f"{dataset}_Sandbox"


def data_provider(dataset: str) -> str:
    """The data provider's name, as the Search API's ``dataProvider`` gives it."""
    return f"Sandbox Museum {dataset}"


PROVIDER = "Sandbox Aggregator"


@functools.cache
def _q(name: str) -> str:
    """``edm:type`` as lxml names it: ``{http://www.europeana.eu/schemas/edm/}type``."""
    prefix, _, local = name.partition(":")
    return f"{{{NS[prefix]}}}{local}"


_ATTRIBUTES = {
    "about": _q("rdf:about"),
    "resource": _q("rdf:resource"),
    "datatype": _q("rdf:datatype"),
    "lang": "{http://www.w3.org/XML/1998/namespace}lang",
}


def _add(parent: etree._Element, name: str, text: str | None = None, **attributes: str) -> etree._Element:
    """A child element: ``about``/``resource``/``lang``/``datatype`` become rdf:about, rdf:resource, xml:lang and
    rdf:datatype; lxml escapes whatever the text holds."""
    element = etree.SubElement(parent, _q(name), {_ATTRIBUTES[k]: v for k, v in attributes.items()})
    if text is not None:
        element.text = text
    return element


@dataclass(frozen=True)
class EdmWriter:
    """Records as EDM RDF/XML. ``media_url``: where a record's media is (None: it has none, only a landing page);
    ``landing``: its page on the sandbox; ``mime``: its media's type."""

    vocab: Mapping[str, str]
    media_url: Callable[[Record], str | None]
    landing: Callable[[Record], str]
    mime: Callable[[Record], str]
    image_size: tuple[int, int] = (320, 240)

    def rdf(self, record: Record) -> etree._Element:
        rdf = etree.Element(_q("rdf:RDF"), nsmap=NS)
        uri, path = ITEM + record.id, record.id
        _add(rdf, "edm:ProvidedCHO", about=uri)
        media = self.media_url(record)
        if media is not None:
            self._web_resource(rdf, record, media)
        links = self._concept_links(record)
        for concept, _, label in links:
            if label is not None:  # Europeana dereferences its own entities; an AAT term only now and then
                block = _add(rdf, "skos:Concept", about=concept)
                _add(block, "skos:prefLabel", label.replace("_", " "), lang="en")
        self._aggregation(rdf, record, media)
        provider_proxy = self._proxy(rdf, record, europeana=False)
        europeana_proxy = self._proxy(rdf, record, europeana=True)
        for concept, prop, _ in links:
            on = europeana_proxy if concept.startswith(f"{DATA}/concept/") else provider_proxy
            _add(on, prop, resource=concept)
        _add(provider_proxy, "edm:type", record.type)
        _add(europeana_proxy, "edm:type", record.type)
        europeana = _add(rdf, "edm:EuropeanaAggregation", about=f"{DATA}/aggregation/europeana{path}")
        _add(europeana, "edm:aggregatedCHO", resource=uri)
        _add(europeana, "dcterms:created", stamp(created(record)))
        _add(europeana, "dcterms:modified", stamp(updated(record)))
        _add(europeana, "edm:datasetName", dataset_name(record.dataset))
        _add(europeana, "edm:country", "Europe")
        if media is not None:
            _add(europeana, "edm:preview", resource=media)
        _add(europeana, "edm:landingPage", resource=f"https://www.europeana.eu/item{path}")
        if self._organisations(record):
            organisation = _add(rdf, "foaf:Organization", about=self._organisation_uri(record))
            _add(organisation, "skos:prefLabel", data_provider(record.dataset), lang="en")
        return rdf

    def _web_resource(self, rdf: etree._Element, record: Record, media: str) -> None:
        resource = _add(rdf, "edm:WebResource", about=media)
        _add(resource, "ebucore:hasMimeType", self.mime(record))
        if record.type == "IMAGE":
            width, height = self.image_size
            _add(resource, "ebucore:width", str(width), datatype=XSD_INTEGER)
            _add(resource, "ebucore:height", str(height), datatype=XSD_INTEGER)

    def _aggregation(self, rdf: etree._Element, record: Record, media: str | None) -> None:
        aggregation = _add(rdf, "ore:Aggregation", about=f"{DATA}/aggregation/provider{record.id}")
        _add(aggregation, "edm:aggregatedCHO", resource=ITEM + record.id)
        if self._organisations(record):  # the 2026 form: an organisation's URI and a foaf:Organization block
            _add(aggregation, "edm:dataProvider", resource=self._organisation_uri(record))
        else:  # the older form: the name as a literal
            _add(aggregation, "edm:dataProvider", data_provider(record.dataset))
        _add(aggregation, "edm:isShownAt", resource=self.landing(record))
        if media is not None:
            _add(aggregation, "edm:isShownBy", resource=media)
            _add(aggregation, "edm:object", resource=media)
        _add(aggregation, "edm:provider", PROVIDER)
        _add(aggregation, "edm:rights", resource=RIGHTS[record.level])

    def _proxy(self, rdf: etree._Element, record: Record, *, europeana: bool) -> etree._Element:
        kind = "europeana" if europeana else "provider"
        proxy = _add(rdf, "ore:Proxy", about=f"{DATA}/proxy/{kind}{record.id}")
        if not europeana:
            _add(proxy, "dc:title", f"Sandbox {' and '.join(record.labels)} no. {record.serial}", lang="en")
            for label in record.labels:  # a provider's own word for it: text, which no concept search finds
                _add(proxy, "dc:type", label.replace("_", " "), lang="en")
        _add(proxy, "edm:europeanaProxy", "true" if europeana else "false")
        _add(proxy, "ore:proxyFor", resource=ITEM + record.id)
        _add(proxy, "ore:proxyIn", resource=f"{DATA}/aggregation/{kind}{record.id}")
        if europeana:
            _add(proxy, "ore:lineage", resource=f"{DATA}/proxy/provider{record.id}")
        return proxy

    def _concept_links(self, record: Record) -> list[tuple[str, str, str | None]]:
        """(concept URI as written, the property it is on, its label when a skos:Concept block describes it): each
        of the record's labels once, and, now and then, a concept of no vocabulary beside them."""
        links: list[tuple[str, str, str | None]] = []
        for k, label in enumerate(record.labels):
            uri = written_form(self.vocab[label], record.serial + k)
            prop = CONCEPT_PROPERTIES[(record.serial + k) % len(CONCEPT_PROPERTIES)]
            described = uri.startswith(f"{DATA}/concept/") or (record.serial + k) % 3 == 0
            links.append((uri, prop, label if described else None))
        if record.serial % 4 == 1 and UNLISTED_CONCEPT not in {_normal(u) for u in self.vocab.values()}:
            links.append((UNLISTED_CONCEPT, "dcterms:medium", "panel"))
        return links

    @staticmethod
    def _organisations(record: Record) -> bool:
        """Whether the record names its data provider by an organisation's URI (even datasets) or by name (odd)."""
        return not int(record.dataset) % 2

    @staticmethod
    def _organisation_uri(record: Record) -> str:
        return f"{DATA}/organization/{record.dataset}"

    def dump_entry(self, record: Record) -> bytes:
        """A dump's file of one record: the declaration, then ``rdf:RDF`` on one line, as the dump generator
        writes the text of the OAI-PMH ``<metadata>``."""
        return DUMP_DECLARATION + etree.tostring(self.rdf(record), encoding="UTF-8")


def _normal(uri: str) -> str:
    return uri.replace(f"{DATA}/concept/base/", f"{DATA}/concept/")


def written_form(uri: str, turn: int) -> str:
    """A Europeana concept in one of its two forms, in turn: ``concept/base/N`` (older records) or ``concept/N``
    (current); any other URI (Getty AAT's) as the vocabulary has it."""
    match = re.fullmatch(r"http://data\.europeana\.eu/concept/(?:base/)?(\d+)", uri)
    if match is None:
        return uri
    return f"{DATA}/concept/base/{match[1]}" if turn % 2 else f"{DATA}/concept/{match[1]}"


# ----------------------------------------------------------------------------------------------
# Dumps


def dataset_zip(records: Iterable[Record], writer: EdmWriter) -> bytes:
    """A dataset's dump: flat, one ``<local id>.xml`` per record, deflated; the same bytes for the same world."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            info = zipfile.ZipInfo(f"{local_id(record.id)}.xml", updated(record).timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, writer.dump_entry(record))
    return buffer.getvalue()


def md5sum(data: bytes) -> str:
    """A dump's ``.md5sum`` file: the hex MD5 with its leading zeros dropped, then a newline, no file name."""
    return format(int.from_bytes(hashlib.md5(data).digest(), "big"), "x") + "\n"


# ----------------------------------------------------------------------------------------------
# OAI-PMH


class OaiError(Exception):
    """An OAI-PMH error answer: its code, its message, its HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class _Token:
    start: str
    until: str
    set: str
    format: str
    expiry_ms: int
    size: int
    cursor: int
    mark: str

    def encode(self) -> str:
        fields = (self.start, self.until, self.set, self.format, self.expiry_ms, self.size, self.cursor, self.mark)
        return base64.urlsafe_b64encode("|".join(map(str, fields)).encode()).decode()


@dataclass(frozen=True)
class _Selection:
    """What a list verb asks for: its format, dates (as given), set, and where a resumption token left off."""

    start: str = ""
    until: str = ""
    set: str = ""
    cursor: int = 0
    after: tuple[dt.datetime, str] | None = None  # the (update, id) a token's page ended at


class OaiRepository:
    """Europeana's OAI-PMH server over ``records``. ``answer`` takes a request's parameters (every value of each)
    and gives (HTTP status, XML)."""

    def __init__(
        self,
        records: Sequence[Record],
        writer: EdmWriter,
        base_url: str,
        *,
        page_size: int = PAGE_SIZE,
        token_ttl: float = TOKEN_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer, self.base_url, self.page_size, self.token_ttl, self.clock = (
            writer,
            base_url,
            page_size,
            token_ttl,
            clock,
        )
        self.records = sorted(records, key=_order)  # Europeana's: timestamp_update asc, europeana_id asc
        self._keys = [_order(record) for record in self.records]
        self._by_id = {record.id: record for record in records}
        # Each set's records and their keys, in that order: a page is found by bisection, never by a scan.
        self._sets: dict[str, tuple[list[Record], list[tuple[dt.datetime, str]]]] = {}
        for record, key in zip(self.records, self._keys, strict=True):
            members, keys = self._sets.setdefault(record.dataset, ([], []))
            members.append(record)
            keys.append(key)
        sizes = Counter(record.dataset for record in records)
        self.sets = sorted(sizes, key=lambda s: (-sizes[s], s))  # by record count, as Europeana's facet

    def answer(self, params: Mapping[str, Sequence[str]], method: str = "GET") -> Answer:
        verb = next(iter(params.get("verb") or ()), None)
        echoed: dict[str, str] = {}  # what the error's <request> repeats: a request OAI-PMH could read
        try:
            if method not in ("GET", "POST"):
                raise OaiError("badMethod", f"{method} is not allowed.", 405)
            given = _validated(params)
            handler = _VERBS.get(verb or "")
            if handler is None:
                raise OaiError("badVerb", f'Verb "{verb if verb is not None else "null"}" is invalid!')
            echoed = given
            return 200, handler(self, given)
        except OaiError as error:
            if error.code == "badArgument":
                echoed = {}
            return error.status, self._envelope(None, echoed, error)

    # -- the verbs

    def identify(self, given: dict[str, str]) -> bytes:
        _only(given, (), "Identify")
        body = etree.Element(f"{{{OAI}}}Identify")
        for name, value in (
            ("repositoryName", "Europeana OAI Endpoint v2.0"),
            ("baseURL", self.base_url),
            ("protocolVersion", "2.0"),
            ("adminEmail", "api@europeana.eu"),
            ("earliestDatestamp", "1970-01-01T00:00:00Z"),
            ("deletedRecord", "no"),
            ("granularity", "YYYY-MM-DDThh:mm:ssZ"),
            ("compression", "gzip"),
        ):
            etree.SubElement(body, f"{{{OAI}}}{name}").text = value
        return self._envelope(body, given)

    def list_metadata_formats(self, given: dict[str, str]) -> bytes:
        _only(given, ("identifier",), "ListMetadataFormats")
        if "identifier" in given:
            self._record(given["identifier"], f"Record with identifier {given['identifier']} not found!")
        body = etree.Element(f"{{{OAI}}}ListMetadataFormats")
        element = etree.SubElement(body, f"{{{OAI}}}metadataFormat")
        for name, value in (("metadataPrefix", "edm"), ("schema", EDM_SCHEMA), ("metadataNamespace", NS["edm"])):
            etree.SubElement(element, f"{{{OAI}}}{name}").text = value
        return self._envelope(body, given)

    def list_sets(self, given: dict[str, str]) -> bytes:
        _only(given, ("from", "until", "resumptionToken"), "ListSets")
        if "resumptionToken" in given:  # one page holds every set of the sandbox: no token of its is ever sent
            _token(given["resumptionToken"], self.clock())
        start, until = _dates(given)
        updates = {r.dataset for r in self.records if _within(updated(r), start, until)}
        sets = [s for s in self.sets if s in updates]
        if not sets:
            raise OaiError("noSetsMatch", "No sets exist!", 200)
        body = etree.Element(f"{{{OAI}}}ListSets")
        for spec in sets:
            element = etree.SubElement(body, f"{{{OAI}}}set")
            etree.SubElement(element, f"{{{OAI}}}setSpec").text = spec
            etree.SubElement(element, f"{{{OAI}}}setName").text = dataset_name(spec)
        return self._envelope(body, given)

    def list_records(self, given: dict[str, str]) -> bytes:
        return self._list(given, "ListRecords", self.page_size)

    def list_identifiers(self, given: dict[str, str]) -> bytes:
        return self._list(given, "ListIdentifiers", 6 * self.page_size)

    def get_record(self, given: dict[str, str]) -> bytes:
        _only(given, ("identifier", "metadataPrefix"), "GetRecord")
        for name in ("metadataPrefix", "identifier"):
            if name not in given:
                raise OaiError("badArgument", f'Required parameter "{name}" is missing.')
        _format(given["metadataPrefix"])
        record = self._record(given["identifier"], given["identifier"])
        body = etree.Element(f"{{{OAI}}}GetRecord")
        body.append(self._record_element(record, created(record), metadata=True))
        return self._envelope(body, given)

    # -- how the lists page

    def _list(self, given: dict[str, str], verb: str, page_size: int) -> bytes:
        selection = self._selection(given, verb)
        records, keys = self._sets.get(selection.set, ([], [])) if selection.set else (self.records, self._keys)
        start, until = _dates({"from": selection.start, "until": selection.until})
        low = 0 if start is None else bisect.bisect_left(keys, (start, ""))
        high = len(keys) if until is None else bisect.bisect_right(keys, (until, "\U0010ffff"))
        first = low if selection.after is None else max(low, bisect.bisect_right(keys, selection.after))
        page = records[first : min(first + page_size, high)]
        if not page:
            raise OaiError("noRecordsMatch", "No records found!", 200)
        body = etree.Element(f"{{{OAI}}}{verb}")
        for record in page:
            element = self._record_element(record, updated(record), metadata=verb == "ListRecords")
            body.append(element if verb == "ListRecords" else element[0])  # ListIdentifiers: the header alone
        if first + len(page) < high:
            self._resumption(body, selection, high - low, page[-1])
        return self._envelope(body, given)

    def _selection(self, given: dict[str, str], verb: str) -> _Selection:
        if "resumptionToken" in given:
            for other in given:
                if other not in ("verb", "resumptionToken"):
                    raise OaiError(
                        "badArgument", f'Parameter "resumptionToken" cannot be used with parameter "{other}"'
                    )
            token = _token(given["resumptionToken"], self.clock())
            after = _mark_key(token.mark, given["resumptionToken"])
            return _Selection(token.start, token.until, token.set, token.cursor + self.page_size, after)
        _only(given, ("metadataPrefix", "from", "until", "set"), verb)
        if "metadataPrefix" not in given:
            raise OaiError("badArgument", 'Required parameter "metadataPrefix" is missing.')
        _format(given["metadataPrefix"])
        spec = given.get("set", "")
        if not SET_ID.match(spec):
            raise OaiError("badArgument", "Set id is invalid")
        _dates(given)
        return _Selection(given.get("from", ""), given.get("until", ""), spec)

    def _resumption(self, body: etree._Element, selection: _Selection, size: int, last: Record) -> None:
        expiry = self.clock() + self.token_ttl
        token = _Token(
            selection.start,
            selection.until,
            selection.set,
            "edm",
            int(expiry * 1000),
            size,
            selection.cursor,
            _mark(last),
        )
        element = etree.SubElement(body, f"{{{OAI}}}resumptionToken")
        element.set("completeListSize", str(size))
        element.set("expirationDate", stamp(dt.datetime.fromtimestamp(expiry, dt.UTC)))
        element.set("cursor", str(selection.cursor))
        element.text = token.encode()

    # -- pieces

    def _record(self, identifier: str, message: str) -> Record:
        record = self._by_id.get(identifier.removeprefix(ITEM))
        if record is None:
            raise OaiError("idDoesNotExist", message, 404)
        return record

    def _record_element(self, record: Record, datestamp: dt.datetime, *, metadata: bool) -> etree._Element:
        element = etree.Element(f"{{{OAI}}}record")
        header = etree.SubElement(element, f"{{{OAI}}}header")
        etree.SubElement(header, f"{{{OAI}}}identifier").text = ITEM + record.id
        etree.SubElement(header, f"{{{OAI}}}datestamp").text = stamp(datestamp)
        etree.SubElement(header, f"{{{OAI}}}setSpec").text = record.dataset
        if metadata:
            etree.SubElement(element, f"{{{OAI}}}metadata").append(self.writer.rdf(record))
        return element

    def _envelope(self, body: etree._Element | None, given: Mapping[str, str], error: OaiError | None = None) -> bytes:
        root = etree.Element(f"{{{OAI}}}OAI-PMH", nsmap={None: OAI, "xsi": XSI})
        root.set(f"{{{XSI}}}schemaLocation", f"{OAI} {OAI}OAI-PMH.xsd")
        etree.SubElement(root, f"{{{OAI}}}responseDate").text = stamp(dt.datetime.fromtimestamp(self.clock(), dt.UTC))
        request = etree.SubElement(root, f"{{{OAI}}}request")
        for name, value in given.items():
            request.set(name, value)
        request.text = self.base_url
        if error is not None:
            etree.SubElement(root, f"{{{OAI}}}error", code=error.code).text = error.message
        if body is not None:
            root.append(body)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


_VERBS: dict[str, Callable[[OaiRepository, dict[str, str]], bytes]] = {
    "Identify": OaiRepository.identify,
    "ListMetadataFormats": OaiRepository.list_metadata_formats,
    "ListSets": OaiRepository.list_sets,
    "ListIdentifiers": OaiRepository.list_identifiers,
    "ListRecords": OaiRepository.list_records,
    "GetRecord": OaiRepository.get_record,
}


def _order(record: Record) -> tuple[dt.datetime, str]:
    return updated(record), record.id


def _mark(record: Record) -> str:
    """Where a page ended (Solr's cursorMark to Europeana): opaque to clients."""
    return base64.b64encode(f"{int(updated(record).timestamp())}/{record.id}".encode()).decode()


def _mark_key(mark: str, token: str) -> tuple[dt.datetime, str]:
    """The (update, id) a token's mark names."""
    try:
        seconds, _, record_id = base64.b64decode(mark, validate=True).decode().partition("/")
        return dt.datetime.fromtimestamp(int(seconds), dt.UTC), record_id
    except (ValueError, binascii.Error, OverflowError, OSError):
        raise OaiError("badResumptionToken", f"Resumption token {token} is not correct.") from None


def _validated(params: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each parameter once, with a value, and one of those OAI-PMH knows (Europeana's server refuses others)."""
    given: dict[str, str] = {}
    for name, values in params.items():
        if name not in ALLOWED:
            raise OaiError("badArgument", f'Parameter "{name}" is not supported!')
        if len(values) > 1:
            raise OaiError("badArgument", f'Parameter "{name}" can be specified only once.')
        if not values[0]:
            raise OaiError("badArgument", f'Parameter "{name}" requires a value')
        given[name] = values[0]
    return given


def _only(given: Mapping[str, str], allowed: tuple[str, ...], verb: str) -> None:
    for name in given:
        if name not in ("verb", *allowed):
            raise OaiError("badArgument", f'Parameter "{name}" is illegal for verb "{verb}"')


def _format(prefix: str) -> None:
    if prefix != "edm":
        raise OaiError("cannotDisseminateFormat", prefix)


def _dates(given: Mapping[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
    start, until = (_date(given.get(name) or "") for name in ("from", "until"))
    if start is not None and until is not None and start > until:
        raise OaiError("badArgument", 'Parameter "from" must specify date that is before "until".')
    return start, until


def _date(text: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise OaiError(
            "badArgument",
            'Either "from" or "until" parameter specifies incorrect date. Proper date format is YYYY-MM-DDThh:mm:ssZ.',
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _within(when: dt.datetime, start: dt.datetime | None, until: dt.datetime | None) -> bool:
    """Europeana's ``timestamp_update:[from TO until]``: both ends inclusive, to the second."""
    return (start is None or when >= start) and (until is None or when <= until)


def _token(text: str, now: float) -> _Token:
    try:
        parts = base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8").split("|")
        if len(parts) != 8:
            raise ValueError(parts)
        token = _Token(parts[0], parts[1], parts[2], parts[3], int(parts[4]), int(parts[5]), int(parts[6]), parts[7])
    except (ValueError, binascii.Error, UnicodeError):
        raise OaiError("badResumptionToken", f"Resumption token {text} is not correct.") from None
    if token.expiry_ms < now * 1000:
        expired = dt.datetime.fromtimestamp(token.expiry_ms / 1000, dt.UTC)
        raise OaiError(
            "badResumptionToken", f"Resumption token expired at {expired.strftime('%a %b %d %H:%M:%S UTC %Y')}"
        )
    return token
