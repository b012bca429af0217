"""eic harvest --source dump: dataset zips of EDM RDF/XML (real records, and records made from a real one's shape)
to the same table the Search API gives, their checksums, and a harvest stopped mid-way resumed."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from europeana_imgcls import HarvestConfig, harvest
from europeana_imgcls.acquisition import dumps
from europeana_imgcls.acquisition.harvest import COLUMNS
from europeana_imgcls.core.errors import DatasetError

from ..hostile import assert_untouched, scratch, snapshot, works_or_one_line
from ..support import QuietHandler, assert_one_line_error, eic, examples, serving

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "edm"
TEMPLATE = (SAMPLES / "topfoto_2024904_EU017407.rdf").read_bytes()  # one published record, one line, as dumps hold
DECLARATION = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
PAINTING, MAP = "http://data.europeana.eu/concept/base/47", "http://data.europeana.eu/concept/43"
VOCAB = {"painting": PAINTING, "map": "http://data.europeana.eu/concept/base/43"}
OPEN, PERMISSION = "http://creativecommons.org/publicdomain/zero/1.0/", "http://rightsstatements.org/vocab/InC/1.0/"


def record(dataset: str, local: str, concept: str = PAINTING, rights: str = OPEN, kind: str = "IMAGE") -> bytes:
    """A record in the real TopFoto record's shape: its ID, concept (both its dc:type and skos:Concept), rights,
    media URL and type replaced."""
    data = TEMPLATE.replace(b"2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407", f"{dataset}/{local}".encode())
    data = data.replace(b"http://data.europeana.eu/concept/base/1711", concept.encode())
    data = data.replace(b"http://rightsstatements.org/vocab/InC/1.0/", rights.encode())
    data = data.replace(
        b"http://www.topfoto.co.uk/imageflows/imagepreview/f=EU017407", f"http://127.0.0.1:9/{local}.jpg".encode()
    )
    return data.replace(b"<edm:type>IMAGE</edm:type>", f"<edm:type>{kind}</edm:type>".encode())


def catalogue(dataset: str, count: int) -> dict[str, bytes]:
    """``count`` records: painting and map in turn, open and permission in turn, every 7th a SOUND record and
    every 11th linked to no vocabulary concept."""
    entries = {}
    for i in range(count):
        concept = "http://data.europeana.eu/concept/999" if i % 11 == 10 else (PAINTING, MAP)[i % 2]
        kind = "SOUND" if i % 7 == 6 else "IMAGE"
        entries[f"r{i}.xml"] = record(dataset, f"r{i}", concept, (OPEN, PERMISSION)[(i // 2) % 2], kind)
    return entries


# A second category for a record: map, beside its own concept, in the record's main proxy.
TWO = f'<edm:type>IMAGE</edm:type><dc:subject rdf:resource="{MAP}"/>'.encode()


def write_zip(path: Path, entries: dict[str, bytes], md5sum: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    if md5sum:  # as Europeana writes them: BigInteger.toString(16), the leading zeros dropped, no file name
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".md5sum").write_text(digest.lstrip("0") + "\n")
    return path


def config(out: Path, *dump: str | Path, **kw) -> HarvestConfig:
    settings = {"vocab": VOCAB, "n": 1000, "reusability": ["open", "permission"], "quiet": True, **kw}
    return HarvestConfig(metadata_source="dump", dump=[str(d) for d in dump], output=out, **settings)


def test_a_dump_of_real_records_becomes_the_table(tmp_path: Path) -> None:
    names = ["topfoto_2024904_EU017407.rdf", "rijksmuseum_90402_BK_1978_399.xml", "memovs_09903_0081AD17_sound.rdf"]
    entries = {name.rsplit(".", 1)[0] + ".xml": (SAMPLES / name).read_bytes() for name in names}
    dump = write_zip(tmp_path / "mixed.zip", entries)
    vocab = {"photography": "http://data.europeana.eu/concept/1711", "purse": "http://vocab.getty.edu/aat/300053642"}
    out = tmp_path / "h.csv"
    report = harvest(config(out, dump, vocab=vocab, reusability=["open", "restricted", "permission"]))
    df = pl.read_csv(out)
    assert df.columns == COLUMNS
    assert df.sort("ID").select("category", "ID", "reusability", "data_provider").rows() == [
        ("photography", "/2024904/photography_ProvidedCHO_TopFoto_co_uk_EU017407", "permission", "TopFoto.co.uk"),
        ("purse", "/90402/BK_1978_399", "open", "Rijksmuseum"),
    ]
    assert report.left_out == {"no vocabulary concept": 1}  # the sound record
    row = df.filter(pl.col("category") == "purse").row(0, named=True)
    assert row["URI"] == "http://data.europeana.eu/item/90402/BK_1978_399"
    assert row["skos_concept"] == "http://vocab.getty.edu/aat/300053642"
    assert row["rights"] == "http://creativecommons.org/publicdomain/mark/1.0/"


def test_n_per_category_and_level_by_seeded_rank_whatever_the_order_of_the_zips(tmp_path: Path) -> None:
    a = write_zip(tmp_path / "111.zip", catalogue("111", 60))
    b = write_zip(tmp_path / "222.zip", catalogue("222", 60))
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    report = harvest(config(one, a, b, n=8))
    harvest(config(two, b, a, n=8))
    df = pl.read_csv(one)
    assert df.group_by("category", "reusability").len()["len"].to_list() == [8, 8, 8, 8]
    assert sorted(df["ID"]) == sorted(pl.read_csv(two)["ID"])
    assert report.fetched == {f"{c}|{lvl}": 8 for c in VOCAB for lvl in ("open", "permission")}
    assert report.left_out == {"no vocabulary concept": 10, "not an IMAGE record": 16}
    assert sorted(pl.read_csv(tmp_path / "one.csv")["ID"]) != sorted(
        pl.read_csv(harvest(config(tmp_path / "s.csv", a, b, n=8, seed=1)).output)["ID"]
    )


def test_a_folder_of_zips_and_a_record_under_two_categories(tmp_path: Path) -> None:
    folder = tmp_path / "XML"
    folder.mkdir()
    entries = catalogue("333", 20)
    both = record("333", "both").replace(
        b'<skos:Concept rdf:about="' + PAINTING.encode(), b'<skos:Concept rdf:about="' + MAP.encode()
    )
    entries["both.xml"] = both  # dc:type painting, skos:Concept map
    write_zip(folder / "333.zip", entries)
    write_zip(folder / "444.zip", catalogue("444", 10))
    (folder / "notes.txt").write_text("not a dump")
    single = harvest(config(tmp_path / "s.csv", folder))
    assert single.ambiguous == 1 and "/333/both" not in pl.read_csv(tmp_path / "s.csv")["ID"].to_list()
    harvest(config(tmp_path / "m.csv", folder, mode="multi-label"))
    multi = pl.read_csv(tmp_path / "m.csv")
    assert multi.rows(named=True) and multi.filter(pl.col("ID") == "/333/both")["category"].to_list() == [
        "painting map"
    ]
    assert multi.height == 1  # a 2-concept combination: only that record has both


def test_a_checksum_without_its_leading_zeros_is_accepted_and_a_stale_one_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Europeana drops an MD5's leading zeros, and many of its checksums are stale (a zip rebuilt, its .md5sum not):
    a mismatch is said, and the zip read all the same, each entry checked against its CRC."""
    entries = catalogue("555", 30)
    for salt in range(400):  # a zip whose MD5 starts with 0, so that Europeana's .md5sum drops it
        entries["salt.txt"] = str(salt).encode()
        dump = write_zip(tmp_path / "555.zip", entries)
        if hashlib.md5(dump.read_bytes()).hexdigest().startswith("0"):
            break
    assert len((tmp_path / "555.zip.md5sum").read_text().strip()) < 32
    report = harvest(config(tmp_path / "ok.csv", dump))
    assert report.rows > 0 and report.left_out["not an .xml entry"] == 1 and "MD5" not in caplog.text
    (tmp_path / "555.zip.md5sum").write_text("5d41402abc4b2a76b9719d911017c592\n")
    stale = harvest(config(tmp_path / "stale.csv", dump))
    assert "555.zip: its MD5 is " in caplog.text and "5d41402abc4b2a76b9719d911017c592 (Europeana's are" in caplog.text
    assert pl.read_csv(tmp_path / "stale.csv").equals(pl.read_csv(tmp_path / "ok.csv")) and stale.rows == report.rows


def vocab_json(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: write_zip(p / "t.zip", {"a.ttl": b"@prefix edm: <http://www.europeana.eu/schemas/edm/> ."}),
            "a Turtle dump",
        ),
        (lambda p: (p / "t.zip").write_bytes(b"PK\x03\x04 not really a zip") and p / "t.zip", "not a zip eic can read"),
        (lambda p: p / "missing.zip", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "a folder with no .zip in it"),
        (lambda p: "ftp://download.europeana.eu/dataset/XML/2021672.zip", "eic does not fetch over FTP"),
    ],
)
def test_what_is_no_xml_dump_is_one_line(tmp_path: Path, make, message: str) -> None:
    target = make(tmp_path)
    result = eic(
        "harvest",
        "--source",
        "dump",
        "--dump",
        str(target),
        "--vocab",
        str(vocab_json(tmp_path)),
        "-o",
        str(tmp_path / "h.csv"),
    )
    assert_one_line_error(result, message)


@pytest.mark.parametrize(
    ("source", "flags", "said"),
    [
        ("dump", ["--set", "100"], "--set is for --source oai-pmh only (this harvest's is dump): leave it out"),
        (
            "dump",
            ["--from", "2030-01-01", "--until", "2030-01-02"],
            "--from-date, --until are for --source oai-pmh only",
        ),
        ("api", ["--until", "2030-01-02"], "--until is for --source oai-pmh only (this harvest's is api)"),
    ],
)
def test_options_another_source_reads_are_refused_not_ignored(
    tmp_path: Path, source: str, flags: list[str], said: str
) -> None:
    """A dump holds a dataset's every record as it is now: a set or dates given with it would be ignored, and the
    table hold what was not asked for."""
    zipped = write_zip(tmp_path / "100.zip", {})
    dump = ["--dump", str(zipped)] if source == "dump" else []
    result = eic("harvest", "--source", source, *dump, *flags, "-o", str(tmp_path / "h.csv"), "--quiet")
    assert_one_line_error(result, said)
    assert not (tmp_path / "h.csv").exists()


def laughs() -> bytes:
    """A billion laughs: seven entities of ten each, 10**7 copies of the first."""
    chain = "".join(f'<!ENTITY e{k} "{f"&e{k - 1};" * 10}">' for k in range(1, 8))
    return f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e0 "aaaaaaaaaa">{chain}]><x>&e7;</x>'.encode()


def test_entries_that_are_no_record_are_left_out_and_counted(tmp_path: Path) -> None:
    entries = catalogue("666", 10)
    entries["broken.xml"] = b"<rdf:RDF><unclosed>"
    entries["noid.xml"] = record("666", "noid").replace(b"edm:ProvidedCHO rdf:about", b"edm:ProvidedCHO rdf:nothing")
    entries["laughs.xml"] = laughs()
    report = harvest(config(tmp_path / "h.csv", write_zip(tmp_path / "666.zip", entries)))
    assert report.left_out["not well-formed XML"] == 2 and report.left_out["no record ID"] == 1
    assert report.rows == 10 - 1  # all but the SOUND record (r6)


def test_a_dump_by_url_is_fetched_with_its_checksum(tmp_path: Path) -> None:
    dump = write_zip(tmp_path / "777.zip", catalogue("777", 24))
    files = {"/XML/777.zip": dump.read_bytes(), "/XML/777.zip.md5sum": (tmp_path / "777.zip.md5sum").read_bytes()}
    asked: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    with serving(Handler) as base:
        by_url = harvest(config(tmp_path / "u.csv", f"{base}/XML/777.zip"))
        local = harvest(config(tmp_path / "l.csv", dump))
        assert sorted(asked) == ["/XML/777.zip", "/XML/777.zip.md5sum"]
        files["/XML/777.zip.md5sum"] = b"123\n"  # stale: said, and the zip read as its CRCs allow
        assert harvest(config(tmp_path / "stale.csv", f"{base}/XML/777.zip")).rows == local.rows
        files["/XML/777.zip"] = files["/XML/777.zip"][: len(files["/XML/777.zip"]) // 2]  # cut short on the way
        with pytest.raises(DatasetError, match="777.zip"):
            harvest(config(tmp_path / "cut.csv", f"{base}/XML/777.zip"))
        with pytest.raises(DatasetError, match="answered 404"):
            harvest(config(tmp_path / "none.csv", f"{base}/XML/888.zip"))
    assert by_url.rows == local.rows > 0
    assert pl.read_csv(tmp_path / "u.csv").equals(pl.read_csv(tmp_path / "l.csv"))


def test_a_harvest_stopped_inside_a_zip_resumes_there_with_nothing_lost_or_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dumps, "CHUNK", 7)  # a piece journaled every 7 entries
    entries = catalogue("999", 40)
    reference = harvest(config(tmp_path / "ref.csv", write_zip(tmp_path / "ref.zip", entries)))
    # Entry 23 damaged (its CRC fails as it is read): the harvest stops in the fourth piece, after three journaled.
    dump = write_zip(tmp_path / "999.zip", entries, md5sum=False)
    whole = dump.read_bytes()
    damaged = bytearray(whole)
    with zipfile.ZipFile(dump) as archive:
        info = archive.getinfo("r23.xml")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 5
    damaged[at] ^= 0xFF
    dump.write_bytes(bytes(damaged))
    out = tmp_path / "h.csv"
    with pytest.raises(DatasetError, match="entry r23.xml is damaged"):
        harvest(config(out, dump))
    part = tmp_path / "h.csv.journal" / "part.ndjson"
    assert _keys(part) == ["999.zip#0", "999.zip#7", "999.zip#14"]
    assert pl.read_csv(out).height > 0  # what it had is in the table already
    dump.write_bytes(whole)
    resumed = harvest(config(out, dump, resume=True))
    assert _keys(part) == [f"999.zip#{at}" for at in range(0, 40, 7)]  # each piece once: resumed at entry 21
    assert resumed.resumed_units == 0 and resumed.left_out == reference.left_out
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(tmp_path / "ref.csv").sort("ID"))


@pytest.mark.parametrize("keep", [False, True])
def test_a_record_of_two_categories_is_ambiguous_whatever_n_is(tmp_path: Path, keep: bool) -> None:
    """Single-label: a record linked to painting and map could teach neither. It is left out (and counted) however
    many records a category keeps, and takes no category's place; kept, it is in the table once, in one category."""
    entries = {f"p{i}.xml": record("1", f"p{i}", PAINTING) for i in range(12)}
    entries |= {f"m{i}.xml": record("1", f"m{i}", MAP) for i in range(12)}
    both = {
        f"b{i}.xml": record("1", f"both{i}", PAINTING).replace(b"<edm:type>IMAGE</edm:type>", TWO, 1) for i in range(6)
    }
    dump = write_zip(tmp_path / "1.zip", entries | both)
    for n in (3, 6, 12, 1000):
        out = tmp_path / f"{n}.csv"
        report = harvest(config(out, dump, n=n, reusability=["open"], keep_ambiguous=keep))
        table = pl.read_csv(out)
        kept = table.filter(pl.col("ID").str.contains("both"))
        if keep:
            assert kept["ID"].is_unique().all() and set(kept["category"]) <= {"painting", "map"}
        else:
            assert report.ambiguous == 6 and "under several categories" not in report.left_out, n
            assert kept.height == 0 and table.height == 2 * min(n, 12), n  # each category its full n


def test_a_damaged_zip_in_a_folder_stops_only_itself(tmp_path: Path) -> None:
    """A folder of three zips, the second damaged: the other two are read, the table written with their records,
    and the run ends in one line naming the damaged zip; once it is mended, a resume adds its records."""
    folder = tmp_path / "XML"
    folder.mkdir()
    zips = [write_zip(folder / f"{ds}.zip", catalogue(str(ds), 12), md5sum=False) for ds in (301, 302, 303)]
    reference = harvest(config(tmp_path / "ref.csv", *zips))
    whole = zips[1].read_bytes()
    with zipfile.ZipFile(zips[1]) as archive:
        info = archive.getinfo("r3.xml")
    damaged = bytearray(whole)
    damaged[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5] ^= 0xFF
    zips[1].write_bytes(bytes(damaged))
    out = tmp_path / "h.csv"
    result = eic(
        "harvest", "--source", "dump", "--dump", str(folder), "--vocab", str(vocab_json(tmp_path)), "-o", str(out),
        "--reusability", "open", "--reusability", "permission", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "1 zip could not be read: ")
    assert "302.zip: entry r3.xml is damaged" in result.stderr
    said = "what was read of it and of the others is kept: once it is mended, run the same harvest with --resume"
    assert said in result.stderr
    datasets = {record_id.split("/")[1] for record_id in pl.read_csv(out)["ID"]}
    assert datasets == {"301", "303"}
    zips[1].write_bytes(whole)
    resumed = harvest(config(out, folder, resume=True))
    assert resumed.rows == reference.rows and resumed.left_out == reference.left_out
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(tmp_path / "ref.csv").sort("ID"))


def _dies_on_a_zip(path: str, *args: Any) -> Any:
    """A worker process reading a.zip ends as the kernel ends one out of memory; the others read."""
    if Path(path).name == "a.zip":
        os._exit(9)
    return READ_IN_WORKER(path, *args)


READ_IN_WORKER = dumps._read_in_worker


def test_a_worker_that_dies_on_one_zip_leaves_the_next_zips_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker pool broken on one zip is not the next zip's: that one gets a new pool and is read."""
    monkeypatch.setattr(dumps, "WORKERS_FROM", 4)  # small zips, parsed by worker processes
    monkeypatch.setattr(dumps, "_workers", lambda: 2)
    monkeypatch.setattr(dumps, "_context", lambda: multiprocessing.get_context("fork"))  # they see the patch
    monkeypatch.setattr(dumps, "_read_in_worker", _dies_on_a_zip)
    folder = tmp_path / "XML"
    folder.mkdir()
    for name, dataset in (("a", "1"), ("b", "2"), ("c", "3")):
        write_zip(folder / f"{name}.zip", catalogue(dataset, 12), md5sum=False)
    with pytest.raises(DatasetError, match=r"1 zip could not be read: .*a\.zip: a worker process reading it ended"):
        harvest(config(tmp_path / "h.csv", folder))
    assert {i.split("/")[1] for i in pl.read_csv(tmp_path / "h.csv")["ID"]} == {"2", "3"}


def _keys(part: Path) -> list[str]:
    """A journal part's keys, without the zips' identities (``999.zip@<16 hex>#7``: ``999.zip#7``)."""
    return [re.sub(r"@[0-9a-f]{16}#", "#", json.loads(line)[0]) for line in part.read_text().splitlines()]


def test_a_zip_rebuilt_since_the_harvest_stopped_inside_it_is_read_again_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Europeana rebuilds its zips weekly. Stopped after a piece, resumed after the zip gained 10 records at its
    front: going on at the old entry number would skip 10 records and read 10 twice. The zip is read again from its
    start, and the table and its counts are those of a harvest of the new zip."""
    monkeypatch.setattr(dumps, "CHUNK", 10)
    old = catalogue("7", 30)
    dump = write_zip(tmp_path / "7.zip", old)
    real, read = dumps.DumpSource._read, {"n": 0}

    def stopped_in_the_second_piece(self: Any, *args: Any) -> Any:
        read["n"] += 1
        if read["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    out = tmp_path / "h.csv"
    monkeypatch.setattr(dumps.DumpSource, "_read", stopped_in_the_second_piece)
    with pytest.raises(KeyboardInterrupt):
        harvest(config(out, dump))
    monkeypatch.setattr(dumps.DumpSource, "_read", real)
    assert _keys(tmp_path / "h.csv.journal" / "part.ndjson") == ["7.zip#0"]
    front = {f"new{k}.xml": record("7", f"new{k}", (PAINTING, MAP)[k % 2], OPEN) for k in range(10)}
    # and two records changed: r0 (a painting, open) now in copyright, r2 (a painting) now a map
    rebuilt = (
        front | old | {"r0.xml": record("7", "r0", PAINTING, PERMISSION), "r2.xml": record("7", "r2", MAP, PERMISSION)}
    )
    write_zip(dump, rebuilt)
    resumed = harvest(config(out, dump, resume=True))
    (tmp_path / "ref").mkdir()
    reference = harvest(config(tmp_path / "ref.csv", write_zip(tmp_path / "ref" / "7.zip", rebuilt)))
    changed = pl.read_csv(out).filter(pl.col("ID").is_in(["/7/r0", "/7/r2"])).sort("ID")
    assert changed.select("category", "reusability").rows() == [("painting", "permission"), ("map", "permission")]
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(tmp_path / "ref.csv").sort("ID"))
    assert resumed.rows == reference.rows == 10 + pl.read_csv(out).filter(~pl.col("ID").str.contains("new")).height
    assert resumed.left_out == reference.left_out
    assert "7.zip is not the zip this harvest stopped inside (it was rebuilt since)" in caplog.text


def test_shards_split_the_zips_and_the_run_without_shard_writes_the_table(tmp_path: Path) -> None:
    zips = [write_zip(tmp_path / f"{ds}.zip", catalogue(str(ds), 12)) for ds in range(100, 106)]
    reference = harvest(config(tmp_path / "ref.csv", *zips))
    out = tmp_path / "h.csv"
    shards = [harvest(config(out, *zips, shard=f"{i}/2")) for i in range(2)]
    assert not out.exists() and all(s.shard for s in shards)
    final = harvest(config(out, *zips, resume=True))
    assert final.resumed_units == 6 and pl.read_csv(out).sort("ID").equals(pl.read_csv(tmp_path / "ref.csv").sort("ID"))
    assert final.rows == reference.rows


@pytest.mark.slow
def test_a_dump_harvest_killed_mid_way_resumes_to_the_same_table(tmp_path: Path) -> None:
    """A real process killed while it waits for its third dump (a server that holds its answer), two zips journaled:
    --resume takes those two from the journal, reads the third, and ends with the uninterrupted table."""
    zips = [write_zip(tmp_path / f"{ds}.zip", catalogue(str(ds), 50)) for ds in (201, 202, 203)]
    held = threading.Event()
    asked: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.endswith(".zip"):
                held.wait(30)
            body = zips[2].read_bytes() if self.path.endswith(".zip") else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    reference = tmp_path / "ref.csv"
    harvest(config(reference, *zips))
    out = tmp_path / "h.csv"
    with serving(Handler) as base:
        dumps_given = [str(zips[0]), str(zips[1]), f"{base}/203.zip"]
        args = [sys.executable, "-m", "europeana_imgcls", "harvest", "--source", "dump", "-o", str(out), "--quiet"]
        args += ["--vocab", str(vocab_json(tmp_path)), "--reusability", "open", "--reusability", "permission"]
        args += [a for d in dumps_given for a in ("--dump", d)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while "/203.zip" not in asked and proc.poll() is None:  # the first two zips are journaled before it asks
            assert time.monotonic() < deadline, "the harvest never asked for its third dump"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
        part = tmp_path / "h.csv.journal" / "part.ndjson"
        assert _keys(part) == ["201.zip#0", "202.zip#0"]
        held.set()
        report = harvest(HarvestConfig(**{**config(out, *dumps_given).model_dump(), "resume": True}))
    assert report.resumed_units == 2
    assert pl.read_csv(out).sort("ID").equals(pl.read_csv(reference).sort("ID"))


@pytest.mark.slow
def test_a_large_zip_read_by_worker_processes_gives_the_same_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = write_zip(tmp_path / "300.zip", catalogue("300", 90))
    inline = harvest(config(tmp_path / "inline.csv", dump, n=10))
    monkeypatch.setattr(dumps, "WORKERS_FROM", 30)  # every piece of 30 entries or more split among workers
    monkeypatch.setattr(dumps, "CHUNK", 45)
    monkeypatch.setattr(dumps, "_workers", lambda: 3)
    split = harvest(config(tmp_path / "split.csv", dump, n=10))
    assert (split.rows, split.left_out, split.skipped_no_url) == (inline.rows, inline.left_out, inline.skipped_no_url)
    assert pl.read_csv(tmp_path / "split.csv").sort("ID").equals(pl.read_csv(tmp_path / "inline.csv").sort("ID"))


def _small_dump() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return write_zip(Path(folder) / "d.zip", catalogue("12", 6), md5sum=False).read_bytes()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_dump_works_or_is_one_line(data: st.DataObject) -> None:
    """A dump zip cut, overwritten or holding a mutated record, and its .md5sum mutated: the harvest works or says
    one line (hostile.works_or_one_line), and writes nothing but its own files."""
    original = _small_dump()
    what = data.draw(st.sampled_from(["zip", "entry", "md5sum"]))
    with scratch() as folder:
        dump = folder / "12.zip"
        if what == "zip":
            at = data.draw(st.integers(0, len(original) - 1))
            cut = data.draw(st.booleans())
            junk = data.draw(st.binary(min_size=1, max_size=8))
            dump.write_bytes(original[:at] if cut else original[:at] + junk + original[at + len(junk) :])
        elif what == "entry":
            text = record("12", "r0").decode()
            at = data.draw(st.integers(0, len(text)))
            insert = data.draw(st.sampled_from(["<", "&", "]]>", "\x00", "<!DOCTYPE x>", "</rdf:RDF>", "\udcff"]))
            entry = (text[:at] + insert + text[at:]).encode("utf-8", errors="surrogateescape")
            write_zip(dump, {"r0.xml": entry, **{k: v for k, v in catalogue("12", 6).items() if k != "r0.xml"}})
        else:
            dump.write_bytes(original)
            (folder / "12.zip.md5sum").write_bytes(data.draw(st.binary(max_size=40)))
        before = snapshot(folder)
        works_or_one_line(lambda: harvest(config(folder / "h.csv", dump)))
        written = {"h.csv", "h.config.json"} | {p for p in snapshot(folder) if p.startswith("h.csv.journal/")}
        assert_untouched(before, snapshot(folder), written)


@pytest.mark.parametrize(
    ("field", "offset", "value", "said"),
    [
        ("compression method", 10, b"\x63\x00", "cannot be read"),  # 99: a method zipfile does not have
        ("flags", 8, b"\x01\x00", "cannot be read"),  # encrypted
        ("flags", 8, b"\x20\x00", "cannot be read"),  # compressed patched data
        ("local header offset", 42, b"\xf0\xff\xff\x7f", "damaged"),
    ],
)
def test_a_zip_whose_directory_says_what_zipfile_cannot_do_is_one_line(
    tmp_path: Path, field: str, offset: int, value: bytes, said: str
) -> None:
    dump = write_zip(tmp_path / "13.zip", catalogue("13", 3), md5sum=False)
    data = bytearray(dump.read_bytes())
    at = data.index(b"PK\x01\x02") + offset  # the central directory's first entry
    data[at : at + len(value)] = value
    dump.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"13.zip: .*{said}") as caught:
        harvest(config(tmp_path / "h.csv", dump))
    assert "\n" not in str(caught.value), field


def test_an_endless_checksum_answer_is_not_read_to_its_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dump = write_zip(tmp_path / "14.zip", catalogue("14", 3), md5sum=False)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            if self.path.endswith(".md5sum"):
                self.end_headers()  # no length: the body ends when the connection does, never
                try:
                    while True:
                        self.wfile.write(b"0" * 65536)
                except OSError:
                    return
            body = dump.read_bytes()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as base:  # no checksum that can be one: said, and the zip read as its CRCs allow
        report = harvest(config(tmp_path / "h.csv", f"{base}/14.zip"))
    assert report.rows == harvest(config(tmp_path / "ref.csv", dump)).rows > 0
    assert "14.zip.md5sum: not an MD5 checksum (expected hex digits): the zip is read without it" in caplog.text


def test_a_resume_from_another_source_is_refused_naming_both(tmp_path: Path) -> None:
    dump = write_zip(tmp_path / "15.zip", catalogue("15", 6))
    out = tmp_path / "h.csv"
    harvest(config(out, dump))
    api = HarvestConfig(vocab=VOCAB, output=out, n=1000, reusability=["open", "permission"], resume=True, quiet=True)
    with pytest.raises(DatasetError, match=r'source: "dump" then, null now\)'):
        harvest(api, client=None)
