"""europeana/sandbox_bulk.py: the sandbox's world as EDM RDF/XML, over OAI-PMH and as dataset dumps, in Europeana's
shapes (``shared/europeana_bulk.md``), read back with the harvest's own EDM parser."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from europeana_imgcls.europeana.edm import Classifier, Harvested, iter_rdf_records, record_from_bytes
from europeana_imgcls.europeana.sandbox import Knobs, Sandbox, build_catalogue
from europeana_imgcls.europeana.sandbox_bulk import local_id, md5sum, updated

from ..support import VOCAB, sandbox_config

OAI = "{http://www.openarchives.org/OAI/2.0/}"
# One client for the module: http.get() builds a TLS context per call (~50 ms), more than the answer takes.
http = httpx.Client()


@pytest.fixture(scope="module")
def world() -> Iterator[Sandbox]:
    """A small world with strays (SOUND records, images under no concept) and pages of 7 records."""
    with Sandbox(sandbox_config(per_level=3), Knobs(strays=2, oai_page_size=7)) as sb:
        yield sb
    http.close()


def oai(sb: Sandbox, **params: str) -> tuple[int, etree._Element]:
    answer = http.get(sb.base_url + "/oai", params=params)
    assert answer.headers["content-type"] == "text/xml;charset=UTF-8"
    return answer.status_code, etree.fromstring(answer.content)


def error(root: etree._Element) -> tuple[str, str] | None:
    element = root.find(f"{OAI}error")
    return None if element is None else (element.get("code"), element.text)


def pages(sb: Sandbox, **params: str) -> list[etree._Element]:
    """Every page of a ListRecords list, its tokens followed."""
    found = []
    status, root = oai(sb, verb="ListRecords", metadataPrefix="edm", **params)
    while True:
        assert status == 200 and error(root) is None
        found.append(root)
        token = root.find(f"{OAI}ListRecords/{OAI}resumptionToken")
        if token is None:
            return found
        status, root = oai(sb, verb="ListRecords", resumptionToken=token.text)


def identifiers(page: etree._Element) -> list[str]:
    return [e.text.removeprefix("http://data.europeana.eu/item") for e in page.iter(f"{OAI}identifier")]


def test_list_records_pages_the_whole_world_once_in_update_order_with_europeanas_tokens(world: Sandbox) -> None:
    found = pages(world)
    ids = [i for page in found for i in identifiers(page)]
    assert sorted(ids) == sorted(r.id for r in world.catalogue) and len(ids) == len(set(ids))
    by_id = {r.id: r for r in world.catalogue}
    assert ids == sorted(ids, key=lambda i: (updated(by_id[i]), i))  # timestamp_update asc, europeana_id asc
    assert [len(identifiers(p)) for p in found[:-1]] == [7] * (len(found) - 1)
    tokens = [p.find(f"{OAI}ListRecords/{OAI}resumptionToken") for p in found]
    assert tokens[-1] is None  # the last page has no token, not an empty one
    for k, token in enumerate(tokens[:-1]):
        assert list(token.attrib) == ["completeListSize", "expirationDate", "cursor"]
        assert token.get("completeListSize") == str(len(ids)) and token.get("cursor") == str(7 * k)
        parts = base64.urlsafe_b64decode(token.text).decode().split("|")
        assert len(parts) == 8 and parts[:4] == ["", "", "", "edm"] and parts[5:7] == [str(len(ids)), str(7 * k)]


def test_a_set_and_dates_choose_records_as_europeana_does(world: Sandbox) -> None:
    dataset = world.datasets[0]
    in_set = [i for page in pages(world, set=dataset) for i in identifiers(page)]
    assert sorted(in_set) == sorted(r.id for r in world.catalogue if r.dataset == dataset)
    times = sorted(updated(r) for r in world.catalogue)
    start, until = times[10], times[30]  # both ends inclusive, to the second
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    chosen = pages(world, **{"from": start.strftime(stamp), "until": until.strftime(stamp)})
    assert len([i for page in chosen for i in identifiers(page)]) == 21
    header = chosen[0].find(f"{OAI}ListRecords/{OAI}record/{OAI}header")
    assert header.findtext(f"{OAI}datestamp") == start.strftime(stamp)
    token = chosen[0].find(f"{OAI}ListRecords/{OAI}resumptionToken").text
    assert base64.urlsafe_b64decode(token).decode().split("|")[:2] == [start.strftime(stamp), until.strftime(stamp)]


def expired_token() -> str:
    return base64.urlsafe_b64encode(b"|||edm|1000|5|0|MTIzLy85MDAwL3g=").decode()


@pytest.mark.parametrize(
    ("params", "status", "code", "message"),
    [
        ({}, 400, "badVerb", 'Verb "null" is invalid!'),
        ({"verb": "Nope"}, 400, "badVerb", 'Verb "Nope" is invalid!'),
        ({"verb": "ListRecords"}, 400, "badArgument", 'Required parameter "metadataPrefix" is missing.'),
        ({"verb": "ListRecords", "metadataPrefix": "oai_dc"}, 400, "cannotDisseminateFormat", "oai_dc"),
        ({"verb": "ListRecords", "metadataPrefix": "edm", "wskey": "api2demo"}, 400, "badArgument", '"wskey"'),
        ({"verb": "ListRecords", "metadataPrefix": "edm", "set": "9 0"}, 400, "badArgument", "Set id is invalid"),
        ({"verb": "ListRecords", "metadataPrefix": "edm", "set": ""}, 400, "badArgument", "requires a value"),
        ({"verb": "ListRecords", "metadataPrefix": "edm", "from": "May"}, 400, "badArgument", "incorrect date"),
        (
            {"verb": "ListRecords", "metadataPrefix": "edm", "from": "2024-01-01", "until": "2023-01-01"},
            400,
            "badArgument",
            "before",
        ),
        ({"verb": "ListRecords", "resumptionToken": "x", "set": "9000"}, 400, "badArgument", "cannot be used with"),
        ({"verb": "ListRecords", "resumptionToken": "bm90IGEgdG9rZW4="}, 400, "badResumptionToken", "not correct"),
        ({"verb": "ListRecords", "resumptionToken": expired_token()}, 400, "badResumptionToken", "expired at Thu Jan"),
        ({"verb": "ListRecords", "metadataPrefix": "edm", "set": "1"}, 200, "noRecordsMatch", "No records found!"),
        ({"verb": "Identify", "set": "9000"}, 400, "badArgument", 'is illegal for verb "Identify"'),
        ({"verb": "GetRecord", "metadataPrefix": "edm", "identifier": "/1/x"}, 404, "idDoesNotExist", "/1/x"),
    ],
)
def test_errors_have_europeanas_code_status_and_shape(
    world: Sandbox, params: dict[str, str], status: int, code: str, message: str
) -> None:
    got, root = oai(world, **params)
    assert root.tag == f"{OAI}OAI-PMH" and root.findtext(f"{OAI}request") == world.base_url + "/oai"
    assert (got, error(root)[0]) == (status, code) and message in error(root)[1]


def test_a_parameter_given_twice_put_or_posted_is_answered_as_europeana_does(world: Sandbox) -> None:
    twice = http.get(world.base_url + "/oai", params=[("verb", "Identify"), ("verb", "Identify")])
    assert twice.status_code == 400 and b"can be specified only once" in twice.content
    put = http.put(world.base_url + "/oai", params={"verb": "Identify"})
    assert put.status_code == 405 and error(etree.fromstring(put.content)) == ("badMethod", "PUT is not allowed.")
    form = {"verb": "ListRecords", "metadataPrefix": "edm", "set": world.datasets[1]}
    posted = http.post(world.base_url + "/oai", data=form)
    asked = http.get(world.base_url + "/oai", params=form)
    assert posted.status_code == 200 and identifiers(etree.fromstring(posted.content)) == identifiers(
        etree.fromstring(asked.content)
    )


def test_identify_list_sets_and_get_record(world: Sandbox) -> None:
    _, root = oai(world, verb="Identify")
    assert root.findtext(f"{OAI}Identify/{OAI}baseURL") == world.base_url + "/oai"
    assert root.findtext(f"{OAI}Identify/{OAI}granularity") == "YYYY-MM-DDThh:mm:ssZ"
    _, root = oai(world, verb="ListSets")
    specs = [s.text for s in root.iter(f"{OAI}setSpec")]
    sizes = [sum(r.dataset == s for r in world.catalogue) for s in specs]
    assert sorted(specs) == sorted({r.dataset for r in world.catalogue}) and sizes == sorted(sizes, reverse=True)
    assert root.findtext(f"{OAI}ListSets/{OAI}set/{OAI}setName") == f"{specs[0]}_Sandbox"
    record = world.catalogue[4]
    _, root = oai(world, verb="GetRecord", metadataPrefix="edm", identifier="http://data.europeana.eu/item" + record.id)
    assert [r.id for r in iter_rdf_records(io.BytesIO(etree.tostring(root)))] == [record.id]


def test_gzip_when_asked(world: Sandbox) -> None:
    params = {"verb": "ListRecords", "metadataPrefix": "edm"}
    with httpx.Client() as client:
        request = client.build_request(
            "GET", world.base_url + "/oai", params=params, headers={"Accept-Encoding": "gzip"}
        )
        answer = client.send(request, stream=True)
        raw = b"".join(answer.iter_raw())
        answer.close()
        plain = client.get(world.base_url + "/oai", params=params, headers={"Accept-Encoding": "identity"})
    assert answer.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert identifiers(etree.fromstring(gzip.decompress(raw))) == identifiers(etree.fromstring(plain.content))


def test_every_record_reads_back_as_what_the_search_api_says_of_it(world: Sandbox) -> None:
    """The EDM of each record, read by the harvest's parser, links exactly the concepts the Search API finds it by,
    and gives the row the Search API's item gives: the three sources can agree only if this holds."""
    classifier = Classifier(VOCAB, world.api_url)
    records = {r.id: r for page in pages(world) for r in iter_rdf_records(io.BytesIO(etree.tostring(page)))}
    assert len(records) == len(world.catalogue)
    forms = set()
    for record in world.catalogue:
        edm = records[record.id]
        assert classifier.labels(edm) == tuple(name for name in VOCAB if name in record.labels)
        forms |= {uri.rsplit("/", 2)[-2] for uri in edm.concepts if "data.europeana.eu/concept" in uri}
        outcome = classifier.classify(edm)
        item = world.item(record, "k")
        if record.type != "IMAGE" or not record.has_url or not record.labels:
            assert not isinstance(outcome, Harvested)
            continue
        assert isinstance(outcome, Harvested) and outcome.level == record.level
        assert outcome.item == {
            "ID": record.id,
            "URL": item["edmIsShownBy"][0],
            "preview": item["edmPreview"][0],
            "rights": item["rights"][0],
            "data_provider": item["dataProvider"][0],
            "reusability": record.level,
        }
    assert {"base", "concept"} <= forms  # both spellings of Europeana's concepts: concept/base/N and concept/N


def test_strays_are_appended_and_move_no_record(world: Sandbox) -> None:
    config = sandbox_config(per_level=3)
    plain = build_catalogue(VOCAB, config, Knobs())
    assert world.catalogue[: len(plain)] == plain
    strays = world.catalogue[len(plain) :]
    assert {r.type for r in strays} == {"SOUND", "IMAGE"} and any(not r.labels for r in strays)
    assert len({r.dataset for r in world.catalogue}) > 3


def test_dumps_are_flat_zips_of_one_edm_file_per_record_with_europeanas_md5sum(world: Sandbox, tmp_path: Path) -> None:
    dataset = world.datasets[0]
    served = http.get(world.dump_url(dataset))
    assert served.status_code == 200 and served.headers["content-type"] == "application/zip"
    members = [r for r in world.catalogue if r.dataset == dataset]
    with zipfile.ZipFile(io.BytesIO(served.content)) as archive:
        assert archive.namelist() == [f"{local_id(r.id)}.xml" for r in members]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        entry = archive.read(archive.namelist()[0])
    assert entry.startswith(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<rdf:RDF ')
    assert entry.count(b"\n") == 1  # the record on one line, as the dump generator writes it
    assert record_from_bytes(entry, "entry").id == members[0].id
    checksum = http.get(world.dump_url(dataset) + ".md5sum").text
    assert checksum == md5sum(served.content) and int(checksum, 16) == int(hashlib.md5(served.content).hexdigest(), 16)
    written = world.write_dumps(tmp_path, [dataset])
    assert written == [tmp_path / f"{dataset}.zip"] and written[0].read_bytes() == served.content
    assert (tmp_path / f"{dataset}.zip.md5sum").read_text() == checksum
    for missing in ("/dumps/XML/1.zip", "/dumps/XML/../9000.zip", f"/dumps/XML/{dataset}.tar"):
        assert http.get(world.base_url + missing).status_code == 404


def test_md5sum_drops_leading_zeros_as_the_dump_generator_does() -> None:
    data = next(str(i).encode() for i in range(1000) if hashlib.md5(str(i).encode()).hexdigest().startswith("0"))
    digest = hashlib.md5(data).hexdigest()
    assert md5sum(data) == digest.lstrip("0") + "\n" and len(md5sum(data)) < 33


def test_datestamps_are_utc_seconds_within_three_years(world: Sandbox) -> None:
    times = [updated(r) for r in world.catalogue]
    assert all(t.tzinfo == dt.UTC and t.microsecond == 0 for t in times)
    assert len(set(times)) == len(times)


def test_hold_after_and_fail_next_work_on_the_oai_paths(world: Sandbox) -> None:
    import threading

    from europeana_imgcls.europeana.sandbox import OAI_PATHS

    world.fail_next(500, OAI_PATHS)
    assert http.get(world.base_url + "/oai", params={"verb": "Identify"}).status_code == 500
    world.hold_after(1, OAI_PATHS)
    answers: list[int] = []
    asks = [threading.Thread(target=lambda: answers.append(oai(world, verb="Identify")[0])) for _ in range(2)]
    for ask in asks:
        ask.start()
    assert world.wait_until_held(1, timeout=30)
    assert len(answers) <= 1  # one answered, one held at the gate
    world.release()
    for ask in asks:
        ask.join(30)
    assert answers == [200, 200]
