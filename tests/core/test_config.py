"""core/config.py: settings from a flag, a config file, the environment or a default, and the mistakes named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from europeana_imgcls.core.config import HarvestConfig, build_config
from europeana_imgcls.core.errors import ConfigError

from ..support import assert_one_line_error, eic


def test_precedence_flag_over_file_over_env_over_default(tmp_path: Path) -> None:
    toml = tmp_path / "eic.toml"
    toml.write_text('api_url = "http://file/api"\n[harvest]\nn = 3\nseed = 9\n')
    env = {
        "EUROPEANA_N": "4",
        "EUROPEANA_SEED": "5",
        "EUROPEANA_API_KEY": "env-key",
        "EUROPEANA_REUSABILITY": "open,permission",
    }
    cfg = build_config(HarvestConfig, {"seed": 1}, toml, env=env)
    assert (cfg.n, cfg.seed, cfg.api_url) == (3, 1, "http://file/api")
    assert cfg.api_key.get_secret_value() == "env-key" and cfg.reusability == ["open", "permission"]
    assert build_config(HarvestConfig, {}, None, env={}).n == 1000
    js = tmp_path / "eic.json"
    js.write_text(json.dumps({"harvest": {"n": 7}}))
    assert build_config(HarvestConfig, {}, js, env=env).n == 7


def test_config_file_mistakes_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nn = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'nn'"):
        build_config(HarvestConfig, {}, bad, env={})
    bad.write_text("n = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(HarvestConfig, {}, bad, env={})
    bad.write_text("[harvest]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        build_config(HarvestConfig, {}, bad, env={})
    result = eic("harvest", "--config", tmp_path / "missing.toml")
    assert_one_line_error(result, "missing.toml: missing")


def test_reusability_takes_a_list_as_well_as_the_flag_repeated() -> None:
    listed = build_config(HarvestConfig, {"reusability": ["open,permission"]}, None)
    repeated = build_config(HarvestConfig, {"reusability": ["open", "permission"]}, None)
    assert listed.reusability == repeated.reusability == ["open", "permission"]


def test_audit_refuses_two_folds_as_train_does_naming_the_minimum(tmp_path: Path) -> None:
    # The probe on embeddings trains on k-2 folds, validates on one and tests on one, as `eic train` does: two folds
    # used to reach scikit-learn and come back as "got n_splits=1", after the embeddings were read.
    table = tmp_path / "e.parquet"
    table.write_bytes(b"not read: the setting is refused first")
    result = eic("audit", table, "--output-dir", tmp_path / "audit", "--folds", "2")
    assert_one_line_error(result, "'folds'")
    assert "greater than or equal to 3" in result.stderr
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize(
    ("command", "flag"),
    [("harvest", "--api-url"), ("harvest", "--oai-url"), ("download", "--thumbnail-url"), ("predict", "--api-url")],
)
@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://[::1", "is no URL (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999/x", "is no URL (Port out of range 0-65535)"),
        ("127.0.0.1:8642/record", "is no http(s) URL"),
        ("https://", "is no http(s) URL"),
    ],
)
def test_a_service_address_that_cannot_be_one_is_refused_before_any_work(
    tmp_path: Path, command: str, flag: str, url: str, said: str
) -> None:
    """Not a traceback at the first request: one line, naming the value."""
    table = tmp_path / "t.csv"
    table.write_text("ID,URL,category\n/1/a,http://127.0.0.1:9/a.jpg,map\n")
    given = {"harvest": [], "download": [str(table)], "predict": [str(tmp_path), "--query", "x"]}[command]
    out = tmp_path / ("out.csv" if command != "download" else "out")
    result = eic(command, *given, flag, url, "-o", str(out))
    assert_one_line_error(result, f"{url!r} {said}")
    assert not out.exists()


def test_the_annotations_api_address_is_checked_as_every_service_address_is() -> None:
    """A port that is no number was taken, and failed at the first request; an address with a user in it is still
    refused with the Annotations API's own line."""
    from europeana_imgcls.core.config import PublishConfig

    for url, said in (
        ("http://127.0.0.1:port", "is no URL (Port could not be cast to integer value as 'port')"),
        ("ftp://api.europeana.eu", "is no http(s) URL"),
        ("https://me@api.europeana.eu", "give the http(s) address of the Annotations API"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            PublishConfig(enrichments=Path("a.jsonld"), annotation_api=url)


@pytest.mark.parametrize(
    ("command", "flag", "url"),
    [
        ("withdraw", "--annotation-api", "https://user:S3CRETPW@api.example.org"),
        ("withdraw", "--annotation-api", "https://api.example.org?wskey=S3CRETKEY"),
        ("harvest", "--api-url", "https://u:S3CRETPW@api.example.org/record/v2/search.json"),
        ("harvest", "--api-url", "https://api.example.org/record/v2/search.json?wskey=S3CRETKEY"),
        ("harvest", "--dump", "https://user:S3CRETPW@127.0.0.1:9/x.zip?wskey=S3CRETKEY"),
    ],
)
def test_a_secret_inside_a_service_url_is_refused_and_never_echoed(
    command: str, flag: str, url: str, tmp_path: Path
) -> None:
    """A key or password written into an address was echoed back by the refusal, or (the Search API's) accepted
    and written into the table's settings file and every error line."""
    given = ["--model", "0" * 16] if command == "withdraw" else ["--output", tmp_path / "h.csv"]
    given += ["--source", "dump"] if flag == "--dump" else []
    result = eic(command, *given, flag, url)
    assert_one_line_error(result, flag.removeprefix("--").replace("-", "_"))
    assert "S3CRET" not in result.stderr + result.stdout
    assert not list(tmp_path.iterdir())


def test_a_config_file_that_is_a_pipe_or_endless_is_refused_in_one_line(tmp_path: Path) -> None:
    """`--config` read with read_text: a FIFO hung forever, /dev/zero read without end."""
    import os

    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    for given in (fifo, Path("/dev/zero")):
        result = eic("stats", tmp_path / "t.csv", "--config", given)
        assert_one_line_error(result, str(given))


def test_stats_writes_its_json_only_to_a_json_file(tmp_path: Path) -> None:
    """EUROPEANA_OUTPUT exported for a harvest (harvested.csv) made `eic stats` write its JSON there."""
    (tmp_path / "t.csv").write_text("ID,category\n/1/a,map\n")
    result = eic("stats", tmp_path / "t.csv", env={"EUROPEANA_OUTPUT": str(tmp_path / "harvested.csv")})
    assert_one_line_error(result, ".json")
    assert not (tmp_path / "harvested.csv").exists()


def test_a_list_setting_from_the_environment_is_split_as_the_docs_say() -> None:
    """docs/configuration.md: lists are comma- or space-separated; only `reusability` was (EUROPEANA_SET=9000 was
    "Input should be a valid list")."""
    from europeana_imgcls.core.config import WithdrawConfig

    harvest = build_config(HarvestConfig, {"metadata_source": "oai-pmh"}, None, env={"EUROPEANA_SET": "9000,9001 9002"})
    assert harvest.set == ["9000", "9001", "9002"]
    withdraw = build_config(WithdrawConfig, {"model": "0" * 16}, None, env={"EUROPEANA_PUBLISHED": "a.jsonl b.jsonl"})
    assert withdraw.published == [Path("a.jsonl"), Path("b.jsonl")]


def test_a_refused_path_is_shown_as_typed(tmp_path: Path) -> None:
    """`eic stats t.csv -o x.txt` said "(got PosixPath('x.txt'))": Python's name for the object, not the path."""
    (tmp_path / "t.csv").write_text("ID,category\n/1/a,map\n")
    result = eic("stats", tmp_path / "t.csv", "-o", "x.txt")
    assert_one_line_error(result, "(got 'x.txt')")
    assert "PosixPath" not in result.stderr
