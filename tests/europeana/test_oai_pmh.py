"""europeana/oai_pmh.py and ``eic harvest --source oai-pmh`` (acquisition/oai_source.py): ListRecords paged with
resumption tokens against the sandbox's OAI-PMH stand-in, journaled page by page, resumed at a killed harvest's token;
every failure one line; and the three sources giving the same table for the same sandbox request."""

from __future__ import annotations

import datetime as dt
import gzip
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from europeana_imgcls import HarvestConfig, harvest
from europeana_imgcls.acquisition.harvest import COLUMNS
from europeana_imgcls.core.journal import read_records
from europeana_imgcls.europeana.oai_pmh import BadResumptionToken, OaiPmhClient, OaiPmhError
from europeana_imgcls.europeana.sandbox import OAI_PATHS, Knobs, Sandbox
from europeana_imgcls.europeana.sandbox_bulk import updated

from ..support import VOCAB, QuietHandler, assert_one_line_error, eic, sandbox_config, serving

LEVELS = ["open", "restricted", "permission"]


@pytest.fixture(scope="module")
def world() -> Iterator[Sandbox]:
    """A small world with strays (SOUND records, images under no concept) and pages of 7 records: 13 pages."""
    with Sandbox(sandbox_config(per_level=3), Knobs(strays=2, oai_page_size=7)) as sb:
        yield sb


def oai_config(sb: Sandbox, output: Path, **kw: Any) -> HarvestConfig:
    settings: dict[str, Any] = dict(n=1000, reusability=LEVELS, retries=0, timeout=10.0)
    settings.update(kw)
    return HarvestConfig(
        output=output, metadata_source="oai-pmh", oai_url=sb.base_url + "/oai", api_url=sb.api_url, vocab=VOCAB,
        quiet=True, **settings,
    )  # fmt: skip


def client(sb: Sandbox, **kw: Any) -> OaiPmhClient:
    return OaiPmhClient(sb.base_url + "/oai", **{"retries": 2, "backoff": 0.0, **kw})


def test_pages_of_a_set_and_of_the_whole_repository_each_record_once(world: Sandbox) -> None:
    with client(world) as oai:
        everything = list(oai.list_records())
        dataset = world.datasets[0]
        one_set = list(oai.list_records(spec=dataset))
    ids = [r.id for page in everything for r in page.records]
    assert len(everything) > 3 and sorted(ids) == sorted(r.id for r in world.catalogue)
    assert everything[0].size == len(ids) and everything[-1].token is None
    assert sorted(r.id for page in one_set for r in page.records) == sorted(
        r.id for r in world.catalogue if r.dataset == dataset
    )
    asked = list(world.oai_requests)[-len(one_set) :]
    assert asked[0] == {"verb": ["ListRecords"], "metadataPrefix": ["edm"], "set": [dataset]}  # no key, no more
    assert all(set(a) == {"verb", "resumptionToken"} for a in asked[1:])


def test_an_empty_set_is_no_error_but_zero_rows_and_a_note(
    world: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with client(world) as oai:
        assert [(p.empty, p.records) for p in oai.list_records(spec="1")] == [(True, [])]
    report = harvest(oai_config(world, tmp_path / "h.csv", set=["1"]))
    assert report.rows == 0 and pl.read_csv(tmp_path / "h.csv").columns == COLUMNS
    assert "set 1: the OAI-PMH service has no records there (noRecordsMatch)" in caplog.text


def test_passing_failures_are_retried_then_said_in_one_line(world: Sandbox) -> None:
    world.fail_next(503, OAI_PATHS, answers=2)
    with client(world) as oai:
        assert sum(len(p.records) for p in oai.list_records()) == len(world.catalogue)
    world.fail_next(503, OAI_PATHS, answers=3)
    with client(world, retries=1) as oai, pytest.raises(OaiPmhError, match="answered 503 after 2 attempts"):
        list(oai.list_records())
    world.fail_next(503, OAI_PATHS, answers=0)  # nothing left on cue for the next test


def test_a_page_that_fails_with_500_every_time_points_to_the_dump(world: Sandbox) -> None:
    """Europeana fails a whole ListRecords page with 500 when one of its records cannot be converted: no resume gets
    past it, and the dataset's dump holds the record."""
    world.fail_next(500, OAI_PATHS, answers=2)
    with client(world, retries=1) as oai, pytest.raises(OaiPmhError) as failed:
        list(oai.list_records())
    world.fail_next(500, OAI_PATHS, answers=0)
    said = str(failed.value)
    assert (
        "answered 500 after 2 attempts" in said and "harvest that dataset from its dump instead (`source` dump)" in said
    )


@pytest.mark.parametrize("kill", ["503", "ctrl-c"])
def test_a_killed_harvest_resumes_at_its_token_with_nothing_lost_or_repeated(
    world: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str
) -> None:
    whole = harvest(oai_config(world, tmp_path / "whole.csv"))
    out = tmp_path / "h.csv"
    real, asked = OaiPmhClient.request, {"n": 0}

    def dies_on_the_third_page(self: OaiPmhClient, params: Any) -> Any:
        asked["n"] += 1
        if asked["n"] == 3:
            if kill == "ctrl-c":
                raise KeyboardInterrupt
            world.fail_next(503, OAI_PATHS)  # the server fails the third page, and the harvest has no retries
        return real(self, params)

    monkeypatch.setattr(OaiPmhClient, "request", dies_on_the_third_page)
    with pytest.raises(KeyboardInterrupt if kill == "ctrl-c" else OaiPmhError):
        harvest(oai_config(world, out))
    monkeypatch.setattr(OaiPmhClient, "request", real)
    journaled = [value for _, value in read_records(out.with_name("h.csv.journal") / "part.ndjson")]
    assert len(journaled) == 2 and journaled[-1]["next"]  # two pages kept, with where the list goes on
    before = len(world.oai_requests)
    resumed = harvest(oai_config(world, out, resume=True))
    asked_now = list(world.oai_requests)[before:]
    assert asked_now[0] == {"verb": ["ListRecords"], "resumptionToken": [journaled[-1]["next"]]}  # not page 1
    assert not any("metadataPrefix" in a for a in asked_now)
    kept = sum(len(v["items"]) + sum(v["left_out"].values()) for v in journaled)
    pages_whole = -(-len(world.catalogue) // world.oai_page_size)
    assert len(asked_now) == pages_whole - 2 and kept == 14  # every page asked once over the two runs
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(whole.output).sort("ID"))
    assert resumed.rows == whole.rows and resumed.left_out == whole.left_out


def test_a_token_that_expires_while_the_harvest_runs_is_one_line(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2), Knobs(oai_page_size=5, oai_token_ttl=0.0)) as sb:
        with client(sb) as oai, pytest.raises(BadResumptionToken, match="expired at .* run the same harvest with"):
            list(oai.list_records())
        result = eic(
            "harvest", "--source", "oai-pmh", "--oai-url", sb.base_url + "/oai", "-o", tmp_path / "h.csv", "--quiet"
        )
    assert_one_line_error(result, "answered badResumptionToken: Resumption token expired at")
    assert "with --resume, which reads a set whose token expired again from its first page" in result.stderr


@pytest.mark.parametrize("sets", [0, 2])
def test_a_harvest_resumed_after_its_token_expired_reads_the_set_again_and_keeps_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, sets: int
) -> None:
    """Killed on a page, resumed two days later: the kept token has expired, so its set is read again from its first
    page. The table and the counts of records left out are those of a harvest never stopped."""
    with Sandbox(sandbox_config(per_level=3), Knobs(strays=2, oai_page_size=7)) as sb:
        chosen = {"set": sb.datasets[:sets]} if sets else {}
        whole = harvest(oai_config(sb, tmp_path / "whole.csv", **chosen))
        real = OaiPmhClient.request

        def killed_at_the_first_token(self: OaiPmhClient, params: Any) -> Any:
            if "resumptionToken" in dict(params):
                raise KeyboardInterrupt
            return real(self, params)

        out = tmp_path / "h.csv"
        monkeypatch.setattr(OaiPmhClient, "request", killed_at_the_first_token)
        with pytest.raises(KeyboardInterrupt):
            harvest(oai_config(sb, out, **chosen))
        monkeypatch.setattr(OaiPmhClient, "request", real)
        kept = [value for _, value in read_records(out.with_name("h.csv.journal") / "part.ndjson")]
        sb.oai.clock = lambda: time.time() + 2 * 86_400  # two days on: every token the sandbox gave has expired
        before = len(sb.oai_requests)
        resumed = harvest(oai_config(sb, out, resume=True, **chosen))
        asked_now = list(sb.oai_requests)[before:]
        again = harvest(oai_config(sb, out, resume=True, **chosen))
        assert len(sb.oai_requests) == before + len(asked_now)  # a finished harvest resumed asks nothing
    assert asked_now[0] == {"verb": ["ListRecords"], "resumptionToken": [kept[-1]["next"]]}
    spec = kept[-1]["unit"].removeprefix("oai|")
    assert asked_now[1] == {"verb": ["ListRecords"], "metadataPrefix": ["edm"], **({"set": [spec]} if sets else {})}
    finished = {value["unit"] for value in kept if value["next"] is None}
    todo = [[d] for d in chosen.get("set", []) if f"oai|{d}" not in finished] or [None]
    assert [a.get("set") for a in asked_now if "metadataPrefix" in a] == todo  # the killed set read again, once
    assert "has expired (Europeana keeps one 24 hours): reading it again from its first page" in caplog.text
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(whole.output).sort("ID"))
    assert resumed.rows == again.rows == whole.rows and resumed.left_out == again.left_out == whole.left_out
    assert sum(resumed.left_out.values()) > 0  # the strays: counted once, though their pages were read twice


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--set", "9 0"], "answered badArgument: Set id is invalid; check --set"),
        (["--from", "yesterday"], 'answered badArgument: Either "from" or "until" parameter specifies incorrect date'),
        (["--from", "2024-01-01", "--until", "2023-01-01"], 'Parameter "from" must specify date that is before'),
        (["--oai-url", "{base}/record/v2/search.json"], "answered 401 with something that is not OAI-PMH"),
        (["--oai-url", "{base}/nothing"], "answered 404 with something that is not OAI-PMH"),
        (["--oai-url", "http://127.0.0.1:9/oai", "--retries", "0"], "cannot reach the OAI-PMH service"),
        (["--oai-url", "http://[::1"], "'http://[::1' is no URL (Invalid IPv6 URL): give the service's http(s)"),
        (["--oai-url", "http://127.0.0.1:port/oai"], "is no URL (Port could not be cast to integer value as 'port')"),
        (["--oai-url", "ftp://127.0.0.1/oai"], "'ftp://127.0.0.1/oai' is no http(s) URL"),
    ],
)
def test_errors_are_one_line_from_the_command(world: Sandbox, tmp_path: Path, args: list[str], said: str) -> None:
    args = [a.format(base=world.base_url) for a in args]
    flags = ["--oai-url", world.base_url + "/oai", *args] if "--oai-url" not in args else args
    result = eic("harvest", "--source", "oai-pmh", *flags, "-o", tmp_path / "h.csv", "--quiet", "--retries", "0")
    assert_one_line_error(result, said)
    # The way out it names is one the command takes (the remedy once said --from-date for --from).
    helped = eic("harvest", "--help").stdout
    assert all(option in helped for option in re.findall(r"--[a-z][a-z-]*", result.stderr)), result.stderr


def test_a_date_alone_takes_in_its_whole_day(world: Sandbox, tmp_path: Path) -> None:
    """`until` a day and `from` the next split the records in two: every record once, whatever its time of day (a
    date alone is midnight to Europeana, so `until` left its day out)."""
    whole = pl.read_csv(harvest(oai_config(world, tmp_path / "whole.csv")).output)
    days = sorted({updated(r).date() for r in world.catalogue if r.id in set(whole["ID"])})
    for day in (days[len(days) // 3], days[len(days) // 2]):
        before = pl.read_csv(harvest(oai_config(world, tmp_path / f"u{day}.csv", until=day.isoformat())).output)
        after = harvest(oai_config(world, tmp_path / f"f{day}.csv", from_date=(day + dt.timedelta(days=1)).isoformat()))
        both = pl.concat([before, pl.read_csv(after.output)])
        assert both["ID"].is_unique().all() and both.sort("ID").equals(whole.sort("ID"))
        on_the_day = {r.id for r in world.catalogue if updated(r).date() == day} & set(whole["ID"])
        assert on_the_day & set(before["ID"]) and not on_the_day & set(pl.read_csv(after.output)["ID"])


def test_a_resume_with_other_levels_is_refused_not_taken_as_finished(world: Sandbox, tmp_path: Path) -> None:
    """A set is done for the levels it was read with: a resume that adds one would find it finished and nothing of
    the new level."""
    out = tmp_path / "h.csv"
    harvest(oai_config(world, out, reusability=["open"]))
    result = eic(
        "harvest", "--source", "oai-pmh", "--oai-url", world.base_url + "/oai", "-o", out, "--resume",
        "--reusability", "open", "--reusability", "permission", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "reusability")
    assert "resume with the settings it was started with" in result.stderr


def test_harvest_from_the_command_line(world: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "h.csv"
    result = eic(
        "harvest", "--source", "oai-pmh", "--oai-url", world.base_url + "/oai", "--set", world.datasets[0],
        "--set", world.datasets[1], "--vocab", _vocab_file(tmp_path), "--api-url", world.api_url, "-o", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    wanted = {
        r.id
        for r in world.catalogue
        if r.dataset in world.datasets[:2] and r.type == "IMAGE" and r.has_url and len(r.labels) == 1
        and r.level == "open"
    }  # fmt: skip
    assert set(pl.read_csv(out)["ID"]) == wanted


def _vocab_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# What a hostile or broken server sends


PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
DOCTYPE
<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><ListRecords><record><header>
<identifier>http://data.europeana.eu/item/1/x</identifier></header><metadata>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:edm="http://www.europeana.eu/schemas/edm/"
 xmlns:ore="http://www.openarchives.org/ore/terms/">
<edm:ProvidedCHO rdf:about="http://data.europeana.eu/item/1/x"/>
<ore:Aggregation rdf:about="a"><edm:dataProvider>PROVIDER</edm:dataProvider>
<edm:isShownBy rdf:resource="http://example.org/1.jpg"/></ore:Aggregation>
</rdf:RDF></metadata></record>TOKEN</ListRecords></OAI-PMH>"""
SECRET = b'<!DOCTYPE OAI-PMH [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
LAUGHS = (
    b"<!DOCTYPE OAI-PMH [<!ENTITY a0 'ha'>"
    + b"".join(b"<!ENTITY a%d '%s'>" % (k, b"&a%d;" % (k - 1) * 10) for k in range(1, 10))
    + b"]>"
)


def page(doctype: bytes = b"", provider: bytes = b"Museum", token: bytes = b"") -> bytes:
    return PAGE.replace(b"DOCTYPE", doctype).replace(b"PROVIDER", provider).replace(b"TOKEN", token)


class _Hostile(QuietHandler):
    pages: dict[str, bytes] = {}
    headers_seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.headers_seen.append(dict(self.headers))
        body = self.pages["token" if "resumptionToken" in self.path else "first"]
        data = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_no_file_is_read_through_an_entity_and_gzip_is_read() -> None:
    token = b"<resumptionToken>t1</resumptionToken>"
    _Hostile.pages = {"first": page(SECRET, b"&secret;", token), "token": page(SECRET, b"&secret;")}
    with serving(_Hostile) as base, OaiPmhClient(base + "/oai", retries=0) as oai:
        pages = list(oai.list_records())
    assert [len(p.records) for p in pages] == [1, 1]
    assert "root:" not in (pages[0].records[0].data_provider or "")  # /etc/passwd stays where it is
    assert _Hostile.headers_seen[-1]["Accept-Encoding"] == "gzip" and "X-Api-Key" not in _Hostile.headers_seen[-1]


def test_a_billion_laughs_is_refused_in_one_line_not_expanded() -> None:
    _Hostile.pages = {"first": page(LAUGHS, b"&a9;")}
    with (
        serving(_Hostile) as base,
        OaiPmhClient(base + "/oai", retries=0) as oai,
        pytest.raises(OaiPmhError, match="not well-formed XML"),
    ):
        list(oai.list_records())


def test_a_token_sent_again_ends_the_list_in_one_line() -> None:
    _Hostile.pages = {"first": page(token=b"<resumptionToken>t1</resumptionToken>")}
    _Hostile.pages["token"] = _Hostile.pages["first"]
    with (
        serving(_Hostile) as base,
        OaiPmhClient(base + "/oai", retries=0) as oai,
        pytest.raises(OaiPmhError, match="sent a resumption token it sent before"),
    ):
        list(oai.list_records())


def test_a_page_that_is_not_xml_is_one_line() -> None:
    _Hostile.pages = {"first": b"<html><body>Service moved</body>"}
    with (
        serving(_Hostile) as base,
        OaiPmhClient(base + "/oai", retries=0) as oai,
        pytest.raises(OaiPmhError, match="not OAI-PMH .*not well-formed XML.*check `oai_url`"),
    ):
        list(oai.list_records())


# ---------------------------------------------------------------------------------------------
# The test: the three sources, one table


@pytest.mark.parametrize("mode", ["single-label", "multi-label"])
def test_the_three_sources_give_the_same_table_for_the_same_sandbox_request(
    world: Sandbox, tmp_path: Path, mode: str
) -> None:
    common: dict[str, Any] = dict(mode=mode, keep_ambiguous=mode == "single-label")
    api = harvest(
        HarvestConfig(
            output=tmp_path / "api.csv", api_url=world.api_url, vocab=VOCAB, n=1000, reusability=LEVELS, quiet=True,
            **common,
        )
    )  # fmt: skip
    oai = harvest(oai_config(world, tmp_path / "oai.csv", **common))
    dumps = world.write_dumps(tmp_path / "dumps")
    dump = harvest(
        HarvestConfig(
            output=tmp_path / "dump.csv", metadata_source="dump", dump=[str(tmp_path / "dumps")], api_url=world.api_url,
            vocab=VOCAB, n=1000, reusability=LEVELS, quiet=True, **common,
        )
    )  # fmt: skip
    tables = [pl.read_csv(report.output).sort("ID") for report in (api, oai, dump)]
    assert tables[0].height > 20 and len(dumps) == len(world.datasets)
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert api.per_category == oai.per_category == dump.per_category
    assert oai.left_out == dump.left_out and oai.left_out["not an IMAGE record"] > 0  # the strays were there
    assert oai.left_out["no vocabulary concept"] > 0
