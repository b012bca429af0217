"""EDM RDF/XML read as a harvest reads it: real Europeana records (tests/data/edm/, SOURCES.md) to the values written
here from reading the files by hand, the vocabulary's concepts in both spellings, and XML that attacks its reader."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.europeana import edm
from europeana_imgcls.europeana.edm import Classifier, EdmRecord, Harvested, iter_rdf_records, record_from_bytes
from europeana_imgcls.europeana.rights import reusability
from europeana_imgcls.europeana.vocabulary import default_vocabulary

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "edm"
API = "https://api.europeana.eu/record/v2/search.json"
THUMB = "https://api.europeana.eu/thumbnail/v2/url.json?uri="
ITEM = "http://data.europeana.eu/item"


def only(name: str) -> EdmRecord:
    (record,) = list(iter_rdf_records(str(SAMPLES / name)))
    return record


def test_an_oai_pmh_page_gives_its_three_records_as_published() -> None:
    records = list(iter_rdf_records(str(SAMPLES / "oai_ListRecords_2021672_mauritshuis.xml")))
    assert [r.id for r in records] == [f"/2021672/resource_document_mauritshuis_{n}" for n in (1, 100, 101)]
    first = records[0]
    assert first.uri == ITEM + "/2021672/resource_document_mauritshuis_1"
    assert first.type == "IMAGE"
    assert first.media_url == "https://www.mauritshuis.nl/media/k2bndlyn/0001_repro.jpg"
    assert (first.media_mime, first.media_size) == ("image/jpeg", 224811)
    assert first.rights == "http://creativecommons.org/publicdomain/mark/1.0/" and first.reusability == "open"
    # organisation URIs named by their foaf:Organization's English label, as the Search API names them
    assert (first.data_provider, first.provider) == ("Mauritshuis", "Dutch Collections for Europe")
    assert first.dataset == "2021672_Ag_NL_DigitaleCollectie_Mauritshuis"
    assert first.preview == first.media_url
    assert first.concepts == ()  # its dc:type "painting" is a literal, not a concept
    assert records[1].concepts == records[2].concepts == ("http://data.europeana.eu/concept/1770",)
    assert (records[2].media_url, records[2].media_size) == (
        "https://www.mauritshuis.nl/media/jtod4e5a/0101.jpg",
        3428232,
    )


def test_the_rights_of_the_media_file_itself_decide_its_level() -> None:
    """EDM: a web resource's own edm:rights is the statement for that file, over the aggregation's. In a record whose
    aggregation is CC BY-NC-ND, an image (its isShownBy) in copyright is not restricted but permission; a statement
    on another web resource (a view eic does not fetch) changes nothing."""
    text = (SAMPLES / "metis_internal_277_CMC_HA_1185.xml").read_text(encoding="utf-8")
    record = only("metis_internal_277_CMC_HA_1185.xml")
    assert record.reusability == "restricted" and record.media_url and record.media_url.endswith("_I2P1856.JPG")
    in_copyright = '<edm:rights rdf:resource="http://rightsstatements.org/vocab/InC/1.0/"/>'
    view = '<edm:rights rdf:resource="http://creativecommons.org/licenses/by-nc-nd/4.0/"/>\n    <ebucore:hasMime'
    assert text.count(view) == 1  # the hasView's web resource, _I2P1872.JPG
    other = record_from_bytes(text.replace(view, in_copyright + "\n    <ebucore:hasMime").encode(), "e.xml")
    assert other is not None and other.reusability == "restricted"
    own = f'<edm:WebResource rdf:about="{record.media_url}">{in_copyright}</edm:WebResource>\n  <ore:Aggregation'
    image = record_from_bytes(text.replace("<ore:Aggregation", own, 1).encode(), "e.xml")
    assert image is not None and image.media_url == record.media_url
    assert (image.rights, image.reusability) == ("http://rightsstatements.org/vocab/InC/1.0/", "permission")


def test_a_one_line_published_record_with_a_base_concept() -> None:
    record = only("topfoto_2024904_EU017407.rdf")
    assert record.id == "/2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407"
    assert record.media_url == "http://www.topfoto.co.uk/imageflows/imagepreview/f=EU017407"
    # the page at isShownAt is text/html; the media's own WebResource says image/jpeg
    assert (record.media_mime, record.media_size) == ("image/jpeg", 167471)
    assert record.reusability == "permission"  # rightsstatements.org InC
    assert (record.data_provider, record.provider) == ("TopFoto.co.uk", "Photoconsortium")
    assert "http://data.europeana.eu/concept/base/1711" in record.concepts
    assert "http://bib.arts.kuleuven.be/photoVocabulary/24000" in record.concepts


def test_an_older_record_with_namespaces_on_each_element_and_getty_types() -> None:
    record = only("rijksmuseum_90402_BK_1978_399.xml")
    assert record.id == "/90402/BK_1978_399"
    assert record.media_url.startswith("https://lh3.ggpht.com/V4jYDrlLI8WiHjv_")
    assert record.media_mime is None  # its WebResource gives dc:format, not ebucore:hasMimeType
    assert record.dataset == "90402_M_NL_Rijksmuseum"  # edm:collectionName, the older name of datasetName
    assert (record.data_provider, record.provider) == ("Rijksmuseum", "Rijksmuseum")  # literals
    assert {"http://vocab.getty.edu/aat/300053642", "http://vocab.getty.edu/aat/300133711"} <= set(record.concepts)
    assert record.concepts.count("http://vocab.getty.edu/aat/300053642") == 1  # given twice, kept once


def test_the_media_is_is_shown_by_before_object_and_has_view() -> None:
    record = only("metis_internal_277_CMC_HA_1185.xml")
    assert record.id == "/277/CMC_HA_1185"  # the internal form's relative URI
    assert record.media_url.endswith("/_I2P1856.JPG")  # isShownBy; object is _I2P1856_th.jpg, hasView _I2P1872
    assert record.reusability == "restricted"  # CC BY-NC-ND
    assert record.data_provider == "CMC - CMC Associates Ltd."
    assert record.concepts == (
        "http://vocab.getty.edu/aat/300000810",
        "http://vocab.getty.edu/aat/300008372",
        "http://data.europeana.eu/concept/48",
        "http://data.europeana.eu/concept/25",
    )
    without = (SAMPLES / "metis_internal_277_CMC_HA_1185.xml").read_bytes()
    for tag in (b"isShownBy", b"object"):
        without = without.replace(b"<edm:" + tag + b"\n", b"<edm:x" + tag + b"\n")
    assert record_from_bytes(without, "x").media_url.endswith("/_I2P1872.JPG")  # then the first hasView


def test_the_sound_record_is_left_out() -> None:
    record = only("memovs_09903_0081AD17_sound.rdf")
    assert (record.type, record.media_url) == ("SOUND", None)  # only isShownAt, a page
    classifier = Classifier({"parliament": "http://example.org/parlement"}, API)
    assert classifier.classify(record) == edm.NO_CONCEPT
    linked = EdmRecord(**{**record.__dict__, "concepts": ("http://example.org/parlement",)})
    assert classifier.classify(linked) == edm.NOT_IMAGE


def test_the_records_become_the_rows_the_search_api_would_give() -> None:
    vocab = {
        **default_vocabulary(),  # photograph: concept/base/48, written concept/48 in the metis record
        "copper": "http://data.europeana.eu/concept/base/1770",  # written concept/1770 in the OAI page
        "purse": "http://vocab.getty.edu/aat/300053642",
        "photography": "http://data.europeana.eu/concept/1711",  # written concept/base/1711 in TopFoto's
    }
    classifier = Classifier(vocab, API)
    kept = {}
    reasons = []
    for name in sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".xml", ".rdf")):
        for record in iter_rdf_records(str(SAMPLES / name)):
            outcome = classifier.classify(record)
            if isinstance(outcome, Harvested):
                kept[record.id] = outcome
            else:
                reasons.append(outcome)
    assert sorted(reasons) == [edm.NO_CONCEPT, edm.NO_CONCEPT]  # the Mauritshuis painting and the sound record
    assert {k: (v.labels, v.level) for k, v in kept.items()} == {
        "/277/CMC_HA_1185": (("photograph",), "restricted"),
        "/2021672/resource_document_mauritshuis_100": (("copper",), "open"),
        "/2021672/resource_document_mauritshuis_101": (("copper",), "open"),
        "/90402/BK_1978_399": (("purse",), "open"),
        "/2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407": (("photography",), "permission"),
    }
    assert kept["/2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407"].item == {
        "ID": "/2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407",
        "URL": "http://www.topfoto.co.uk/imageflows/imagepreview/f=EU017407",
        "preview": THUMB + "http%3A%2F%2Fwww.topfoto.co.uk%2Fimageflows%2Fimagepreview%2Ff%3DEU017407&type=IMAGE",
        "rights": "http://rightsstatements.org/vocab/InC/1.0/",
        "data_provider": "TopFoto.co.uk",
        "reusability": "permission",
    }


def test_a_record_of_two_categories_has_both_and_a_non_image_media_is_left_out() -> None:
    record = only("metis_internal_277_CMC_HA_1185.xml")
    both = Classifier(
        {"site": "http://vocab.getty.edu/aat/300000810", "photo": "http://data.europeana.eu/concept/48"}, API
    )
    assert both.classify(record).labels == ("site", "photo")
    html = EdmRecord(**{**record.__dict__, "media_mime": "text/html"})
    assert both.classify(html) == edm.MEDIA_NOT_IMAGE
    nowhere = EdmRecord(**{**record.__dict__, "rights": "http://example.org/my-own-licence"})
    assert both.classify(nowhere) == edm.NO_LEVEL


@pytest.mark.parametrize(
    ("rights", "level"),
    [
        ("http://creativecommons.org/publicdomain/mark/1.0/", "open"),
        ("https://creativecommons.org/licenses/by-sa/3.0/nl/", "open"),
        ("http://creativecommons.org/licenses/by/4.0", "open"),
        ("http://creativecommons.org/licenses/by-nc/4.0/", "restricted"),
        ("http://creativecommons.org/licenses/by-nd/4.0/", "restricted"),
        ("http://rightsstatements.org/vocab/NoC-NC/1.0/", "restricted"),
        ("http://rightsstatements.org/vocab/InC/1.0/", "permission"),
        ("http://rightsstatements.org/vocab/InC-EDU/1.0/", "restricted"),
        ("http://www.europeana.eu/rights/rr-f/", "permission"),
        ("http://example.org/licence", None),
        (None, None),
    ],
)
def test_rights_map_to_the_search_apis_levels(rights: str | None, level: str | None) -> None:
    assert reusability(rights) == level


def test_the_sandboxs_rights_map_back_to_their_levels() -> None:
    from europeana_imgcls.europeana.sandbox import RIGHTS

    assert {level: reusability(uri) for level, uri in RIGHTS.items()} == {level: level for level in RIGHTS}


LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rdf:RDF [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:edm="http://www.europeana.eu/schemas/edm/"
  xmlns:ore="http://www.openarchives.org/ore/terms/">
 <edm:ProvidedCHO rdf:about="http://data.europeana.eu/item/1/laughs"/>
 <ore:Proxy><edm:type>&g;</edm:type></ore:Proxy>
</rdf:RDF>"""


def external(target: str) -> bytes:
    return f"""<?xml version="1.0"?>
<!DOCTYPE rdf:RDF [ <!ENTITY secret SYSTEM "{target}"> ]>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:edm="http://www.europeana.eu/schemas/edm/"
  xmlns:ore="http://www.openarchives.org/ore/terms/">
 <edm:ProvidedCHO rdf:about="http://data.europeana.eu/item/1/xxe"/>
 <ore:Proxy><edm:type>IMAGE</edm:type></ore:Proxy>
 <ore:Aggregation><edm:dataProvider>&secret;</edm:dataProvider></ore:Aggregation>
</rdf:RDF>""".encode()


def test_billion_laughs_is_refused_in_one_line_without_expanding() -> None:
    # libxml2 refuses the amplification outright; without that, resolve_entities=False would leave &g; unexpanded
    with pytest.raises(DatasetError, match=r"^laughs\.xml: not well-formed XML") as caught:
        list(iter_rdf_records(io.BytesIO(LAUGHS), "laughs.xml"))
    assert "\n" not in str(caught.value)
    with pytest.raises(DatasetError, match=r"^laughs\.xml: not well-formed XML"):
        record_from_bytes(LAUGHS, "laughs.xml")


def test_an_external_entity_reads_no_file_and_reaches_no_server(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("THE-SECRET")
    for target in (secret.as_uri(), str(secret), "http://127.0.0.1:9/secret"):
        data = external(target)
        streamed = list(iter_rdf_records(io.BytesIO(data)))
        whole = record_from_bytes(data, "xxe.xml")
        assert streamed == [whole]
        assert whole.id == "/1/xxe" and whole.data_provider is None  # the entity left unexpanded, nothing read
        assert "THE-SECRET" not in repr(whole)


@pytest.mark.parametrize("data", [b"", b"<rdf:RDF", b"not xml at all", b"\xff\xfe<x/>", b"<a><b></a>"])
def test_broken_xml_is_one_line(data: bytes) -> None:
    with pytest.raises(DatasetError, match=r"^broken\.xml: not well-formed XML") as caught:
        list(iter_rdf_records(io.BytesIO(data), "broken.xml"))
    assert "\n" not in str(caught.value)


def test_a_record_without_an_id_is_skipped() -> None:
    data = (
        (SAMPLES / "topfoto_2024904_EU017407.rdf")
        .read_bytes()
        .replace(b"edm:ProvidedCHO rdf:about", b"edm:ProvidedCHO rdf:x")
    )
    assert record_from_bytes(data, "x") is None
    assert list(iter_rdf_records(io.BytesIO(data))) == []
