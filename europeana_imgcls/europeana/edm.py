"""EDM (the Europeana Data Model) as RDF/XML, read for a harvest: OAI-PMH ListRecords pages and dataset dumps.

One record is one ``rdf:RDF`` element: an ``edm:ProvidedCHO`` (its ID), the provider's ``ore:Aggregation`` (media
links, rights, providers), ``ore:Proxy`` blocks (the provider's values and Europeana's enrichments: ``edm:type``
and the concept links), ``edm:EuropeanaAggregation`` (dataset, preview) and contextual blocks (``edm:WebResource``,
``skos:Concept``, ``foaf:Organization``). Elements are matched by namespace URI, never by prefix: older files
declare namespaces on each element. Facts and real samples: ``shared/europeana_bulk.md`` §C, ``edm_samples/``.

``record_from_rdf`` reads one parsed ``rdf:RDF``; ``iter_rdf_records`` streams a file holding one record or an
OAI-PMH page, clearing each record once read so memory stays flat; ``record_from_bytes`` reads one dump entry.
``classify`` is what a harvest makes of a record: its categories, level and row, or the reason it is left out.

Every parser here refuses what XML can do to its reader: no entity is expanded (a "billion laughs" stays a few
bytes), no DTD or external entity is loaded (a ``file://`` or ``http://`` entity reads nothing), and no tree deeper
or larger than libxml2's safe limits is built (``huge_tree`` off).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import httpx
from lxml import etree

from ..core.errors import DatasetError
from .rights import reusability
from .search_api import ITEM_BASE, is_record_id

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
DCTERMS = "http://purl.org/dc/terms/"
EDM = "http://www.europeana.eu/schemas/edm/"
ORE = "http://www.openarchives.org/ore/terms/"
SKOS = "http://www.w3.org/2004/02/skos/core#"
FOAF = "http://xmlns.com/foaf/0.1/"
EBUCORE = "http://www.ebu.ch/metadata/ontologies/ebucore/ebucore#"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

RDF_TAG = f"{{{RDF}}}RDF"
ABOUT = f"{{{RDF}}}about"
RESOURCE = f"{{{RDF}}}resource"
_CHO = f"{{{EDM}}}ProvidedCHO"
_AGGREGATION = f"{{{ORE}}}Aggregation"
_EUROPEANA_AGGREGATION = f"{{{EDM}}}EuropeanaAggregation"
_PROXY = f"{{{ORE}}}Proxy"
_WEB_RESOURCE = f"{{{EDM}}}WebResource"
_CONCEPT = f"{{{SKOS}}}Concept"
_ORGANIZATION = f"{{{FOAF}}}Organization"
_PREF_LABEL = f"{{{SKOS}}}prefLabel"
_TYPE = f"{{{EDM}}}type"
_RIGHTS = f"{{{EDM}}}rights"
_MEDIA = (f"{{{EDM}}}isShownBy", f"{{{EDM}}}object", f"{{{EDM}}}hasView")  # in the order the media is chosen
_DATASET = (f"{{{EDM}}}datasetName", f"{{{EDM}}}collectionName")  # collectionName: older records' name for it
_MIME = f"{{{EBUCORE}}}hasMimeType"
_SIZE = f"{{{EBUCORE}}}fileByteSize"
# The properties of a proxy whose rdf:resource can name a concept: what the Search API's concept search matches.
CONCEPT_PROPERTIES = frozenset(
    {f"{{{DC}}}type", f"{{{DC}}}subject", f"{{{DCTERMS}}}medium", f"{{{DC}}}format", f"{{{EDM}}}hasType"}
)


_PREVIEW = f"{{{EDM}}}preview"
_DATA_PROVIDER = f"{{{EDM}}}dataProvider"
_PROVIDER = f"{{{EDM}}}provider"
_AGGREGATION_PROPERTIES = (*_MEDIA, _RIGHTS, _DATA_PROVIDER, _PROVIDER)
_BLOCKS = (_CHO, _AGGREGATION, _PROXY, _EUROPEANA_AGGREGATION, _WEB_RESOURCE, _CONCEPT, _ORGANIZATION)


def safe_parser() -> etree.XMLParser:
    """An XML parser that expands no entity, loads no DTD and reaches no network (a fresh one per use: lxml's
    parsers are not thread-safe)."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
    )


_SAFE = {"resolve_entities": False, "no_network": True, "load_dtd": False, "huge_tree": False}


@dataclass(frozen=True)
class EdmRecord:
    """What a harvest needs of one EDM record (None: the record does not say)."""

    id: str  # /DATASET/LOCAL
    uri: str  # http://data.europeana.eu/item/DATASET/LOCAL
    type: str | None  # edm:type: IMAGE, TEXT, SOUND, VIDEO, 3D
    media_url: str | None  # edm:isShownBy, else edm:object, else the first edm:hasView
    media_mime: str | None  # the media's edm:WebResource: ebucore:hasMimeType
    media_size: int | None  # and ebucore:fileByteSize
    rights: str | None  # the media's own edm:rights, else the provider aggregation's (else the Europeana one's)
    data_provider: str | None  # a name (an organisation URI's English label when the record holds it)
    provider: str | None
    dataset: str | None  # edm:datasetName (edm:collectionName in older records), e.g. 2021672_Ag_NL_...
    preview: str | None  # edm:EuropeanaAggregation's edm:preview
    concepts: tuple[str, ...]  # every concept URI the record links to, as written, first occurrence first

    @property
    def reusability(self) -> str | None:
        return reusability(self.rights)


def record_from_rdf(rdf: Any) -> EdmRecord | None:
    """One record from its parsed ``rdf:RDF`` element; None when it names no record ID (no ``edm:ProvidedCHO`` with
    an ``rdf:about`` of the form ``http://data.europeana.eu/item/DS/LOCAL`` or ``/DS/LOCAL``)."""
    parts = _Parts()
    for child in rdf.iterchildren(*_BLOCKS):  # the tag filter runs in C: the blocks never read are never touched
        parts.take(child)
    record_id = _record_id(parts.about)
    if record_id is None:
        return None
    media = next((url for url in parts.media if url), None)
    mime, size, media_rights = parts.web_resources.get(media, (None, None, None)) if media else (None, None, None)
    return EdmRecord(
        id=record_id,
        uri=ITEM_BASE + record_id,
        type=parts.type,
        media_url=media,
        media_mime=mime,
        media_size=size,
        # A web resource's own statement is the one for that file (EDM): an open record's image may be in copyright.
        rights=media_rights or parts.rights or parts.europeana_rights,
        data_provider=parts.agent(parts.data_provider),
        provider=parts.agent(parts.provider),
        dataset=parts.dataset,
        preview=parts.preview,
        concepts=tuple(dict.fromkeys(parts.concepts)),
    )


class _Parts:
    """The pieces of one record as its top-level blocks are read, in any order."""

    def __init__(self) -> None:
        self.about: str | None = None
        self.type: str | None = None
        self.media: list[str | None] = [None, None, None]
        self.rights: str | None = None
        self.europeana_rights: str | None = None
        self.data_provider: str | None = None
        self.provider: str | None = None
        self.dataset: str | None = None
        self.preview: str | None = None
        self.concepts: list[str] = []
        self.web_resources: dict[str, tuple[str | None, int | None, str | None]] = {}  # mime, size, rights
        self.organizations: dict[str, str] = {}

    def take(self, block: Any) -> None:
        tag = block.tag
        if tag == _CHO:
            self.about = self.about or _about(block)
        elif tag == _AGGREGATION:
            self._aggregation(block)
        elif tag == _PROXY:
            self._proxy(block)
        elif tag == _EUROPEANA_AGGREGATION:
            self._europeana_aggregation(block)
        elif tag == _WEB_RESOURCE:
            self._web_resource(block)
        elif tag == _CONCEPT:
            about = _about(block)
            if about:
                self.concepts.append(about)
        elif tag == _ORGANIZATION:
            self._organization(block)

    def _aggregation(self, block: Any) -> None:
        for child in block.iterchildren(*_AGGREGATION_PROPERTIES):
            tag = child.tag
            if tag in _MEDIA:
                at = _MEDIA.index(tag)
                self.media[at] = self.media[at] or _resource(child)
            elif tag == _RIGHTS:
                self.rights = self.rights or _resource(child)
            elif tag == _DATA_PROVIDER:
                self.data_provider = self.data_provider or _value(child)
            elif tag == _PROVIDER:
                self.provider = self.provider or _value(child)

    def _proxy(self, block: Any) -> None:
        for child in block.iterchildren(*CONCEPT_PROPERTIES, _TYPE):
            if child.tag in CONCEPT_PROPERTIES:
                resource = _resource(child)
                if resource:
                    self.concepts.append(resource)
            elif child.tag == _TYPE and not self.type:
                self.type = _text(child)

    def _europeana_aggregation(self, block: Any) -> None:
        for child in block.iterchildren(*_DATASET, _PREVIEW, _RIGHTS):
            if child.tag in _DATASET:
                self.dataset = self.dataset or _text(child)
            elif child.tag == _PREVIEW:
                self.preview = self.preview or _resource(child)
            elif child.tag == _RIGHTS:
                self.europeana_rights = self.europeana_rights or _resource(child)

    def _web_resource(self, block: Any) -> None:
        about = _about(block)
        if not about:
            return
        mime = _text(block.find(_MIME))
        size_text = _text(block.find(_SIZE))
        size = int(size_text) if size_text and size_text.isdigit() else None
        rights = block.find(_RIGHTS)
        self.web_resources[about] = (mime, size, _resource(rights) if rights is not None else None)

    def _organization(self, block: Any) -> None:
        about = _about(block)
        labels = [(child.get(XML_LANG), _text(child)) for child in block.iterchildren(_PREF_LABEL)]
        label = next((text for lang, text in labels if lang == "en" and text), None)
        label = label or next((text for _, text in labels if text), None)
        if about and label:
            self.organizations[about] = label

    def agent(self, value: str | None) -> str | None:
        """A provider as a name: an organisation URI's label when the record has it, else the value as written."""
        return self.organizations.get(value, value) if value else None


def _about(element: Any) -> str | None:
    value = element.get(ABOUT)
    return value.strip() or None if value else None


def _resource(element: Any) -> str | None:
    value = element.get(RESOURCE)
    return value.strip() or None if value else None


def _text(element: Any) -> str | None:
    if element is None or element.text is None:
        return None
    return " ".join(element.text.split()) or None


def _value(element: Any) -> str | None:
    """A property given as a resource or as a literal (providers: a name in older records, a URI in newer)."""
    return _resource(element) or _text(element)


def _record_id(about: str | None) -> str | None:
    if not about:
        return None
    for base in (ITEM_BASE, "https://data.europeana.eu/item"):
        if about.startswith(base + "/"):
            about = about[len(base) :]
            break
    return about if is_record_id(about) else None


# -- reading files


def iter_rdf_records(source: str | IO[bytes], name: str | None = None) -> Iterator[EdmRecord]:
    """Every record of a file (a path or a binary stream) holding one ``rdf:RDF`` or an OAI-PMH page of them,
    streamed: each record is read as soon as its ``rdf:RDF`` ends and then cleared, with what came before it, so
    a page of any size is read in the memory of one record. Records without an ID are skipped. Not well-formed
    XML is a ``DatasetError`` naming ``name`` (the path or the stream's name)."""
    where = name or (source if isinstance(source, str) else getattr(source, "name", "the EDM file"))
    events = etree.iterparse(source, events=("end",), tag=RDF_TAG, remove_comments=True, **_SAFE)
    try:
        for _, rdf in events:
            record = record_from_rdf(rdf)
            _forget(rdf)
            if record is not None:
                yield record
    except etree.XMLSyntaxError as exc:
        raise DatasetError(f"{where}: not well-formed XML ({_reason(exc)}); is it EDM RDF/XML?") from None


def _forget(element: Any) -> None:
    """Drop a record read from the tree, and the siblings before it and before each of its ancestors (an OAI-PMH
    page's earlier ``record`` elements), so the tree never grows with the file."""
    element.clear(keep_tail=True)
    for ancestor in element.iterancestors():
        while ancestor.getprevious() is not None:
            parent = ancestor.getparent()
            if parent is None:
                break
            del parent[0]


def record_from_bytes(data: bytes, name: str, parser: Any | None = None) -> EdmRecord | None:
    """One dump entry (an XML declaration and one ``rdf:RDF``), parsed whole: a dump's entries are small, and one
    parse of bytes is faster than a streaming one. None when it names no record ID."""
    try:
        root = etree.fromstring(data, parser if parser is not None else safe_parser())
    except etree.XMLSyntaxError as exc:
        raise DatasetError(f"{name}: not well-formed XML ({_reason(exc)}); is it EDM RDF/XML?") from None
    if root.tag == RDF_TAG:
        return record_from_rdf(root)
    rdf = next(root.iter(RDF_TAG), None)  # an OAI-PMH GetRecord answer saved as a file
    return record_from_rdf(rdf) if rdf is not None else None


def _reason(exc: etree.XMLSyntaxError) -> str:
    return " ".join(str(exc.msg or exc).split())[:200]


# -- what a harvest makes of a record


@dataclass(frozen=True)
class Harvested:
    """A record a harvest keeps: the vocabulary's categories it links to, its level, and its row's values (the
    ``harvest.COLUMNS`` a Search API item gives: ID, URL, preview, rights, data_provider, reusability)."""

    labels: tuple[str, ...]
    level: str
    item: dict[str, str | None]


# Why a record is left out, in the order they are asked (the first that applies is counted).
NO_CONCEPT = "no vocabulary concept"
NOT_IMAGE = "not an IMAGE record"
NO_MEDIA = "no media URL"
MEDIA_NOT_IMAGE = "media not an image"
NO_LEVEL = "rights in no reusability level"
REASONS = (NO_CONCEPT, NOT_IMAGE, NO_MEDIA, MEDIA_NOT_IMAGE, NO_LEVEL)


def concept_key(uri: str) -> str:
    """A concept URI as compared: https read as http, ``concept/base/N`` as ``concept/N`` (the same numbering,
    the older spelling), no trailing slash."""
    key = uri.strip()
    if key.startswith("https://"):
        key = "http://" + key.removeprefix("https://")
    return key.replace("://data.europeana.eu/concept/base/", "://data.europeana.eu/concept/").rstrip("/")


class Classifier:
    """``classify`` for one vocabulary and one Thumbnail API: built once per harvest."""

    def __init__(self, vocab: Mapping[str, str], api_url: str) -> None:
        self.order = list(vocab)
        self.by_concept: dict[str, list[str]] = {}
        for name, uri in vocab.items():
            self.by_concept.setdefault(concept_key(uri), []).append(name)
        self.thumbnails = preview_base(api_url)

    def labels(self, record: EdmRecord) -> tuple[str, ...]:
        """The vocabulary's categories the record links to, in the vocabulary's order."""
        found = {name for uri in record.concepts for name in self.by_concept.get(concept_key(uri), ())}
        return tuple(name for name in self.order if name in found)

    def classify(self, record: EdmRecord) -> Harvested | str:
        """The record as a harvest keeps it, or the reason it is left out (one of ``REASONS``)."""
        labels = self.labels(record)
        if not labels:
            return NO_CONCEPT
        if (record.type or "").upper() != "IMAGE":
            return NOT_IMAGE
        if not record.media_url:
            return NO_MEDIA
        if record.media_mime and not record.media_mime.lower().startswith("image/"):
            return MEDIA_NOT_IMAGE
        level = record.reusability
        if level is None:
            return NO_LEVEL
        item: dict[str, str | None] = {
            "ID": record.id,
            "URL": record.media_url,
            "preview": self.preview(record.preview or record.media_url),
            "rights": record.rights,
            "data_provider": record.data_provider,
            "reusability": level,
        }
        return Harvested(labels, level, item)

    def preview(self, media: str) -> str:
        """The Search API's ``edmPreview`` of a record: the Thumbnail API v2 link of its preview image."""
        return f"{self.thumbnails}?uri={quote(media, safe='')}&type=IMAGE"


def preview_base(api_url: str) -> str:
    """The Thumbnail API v2 address beside a Search API (Europeana's, or the sandbox's): what its ``edmPreview``
    links point to."""
    url = httpx.URL(api_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}/thumbnail/v2/url.json"
