"""What eic prints is what the paths and the data hold: a `[` in a path or a value is never taken for rich markup
(a MarkupError after the work is done, a hyperlink a table's author planted, text that vanishes)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.europeana.sandbox import Sandbox

from ..support import VOCAB

LINK = "[link=http://evil.example/]map[/link]"
runner = CliRunner()


def eic(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def shown(text: str) -> str:
    """The output without the line breaks and spaces rich adds to fit the terminal's width."""
    return "".join(text.split())


def printed(result, *values: object) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "\x1b]8;" not in result.output  # no OSC 8 hyperlink either
    for value in values:
        assert shown(str(value)) in shown(result.stdout), (value, result.stdout)


def test_a_path_with_markup_is_printed_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("category,ID,URL\nmap,/1/a,u\nmap,/1/b,u\n")
    (tmp_path / "e.csv").write_text("ID\n/1/a\n")
    out = tmp_path / "q[/b]" / "p.csv"
    printed(eic("subtract", tmp_path / "t.csv", tmp_path / "e.csv", "-o", out), out)
    assert out.is_file()


def test_a_category_with_markup_is_printed_as_it_is_never_a_link(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(f'category,ID,URL\n"{LINK}",/1/a,u\n"[bold]x[/bold]",/1/b,u\n')
    printed(eic("stats", tmp_path / "t.csv"), LINK, "[bold]x[/bold]")


def test_a_harvest_prints_its_categories_and_output_as_they_are(sandbox: Sandbox, tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.json"
    names = ["[red]map", "[link=x]painting"]  # a category is one word without slashes
    vocab.write_text(json.dumps(dict(zip(names, (VOCAB["map"], VOCAB["painting"]), strict=True))))
    out = tmp_path / "[red]h[/red]" / "h.csv"
    result = eic(
        "harvest",
        "--vocab",
        vocab,
        "--n",
        "3",
        "--reusability",
        "open",
        "-o",
        out,
        "--quiet",
        env={"EUROPEANA_API_URL": sandbox.api_url},
    )
    printed(result, *names, out)
    assert set(pl.read_csv(out, glob=False)["category"]) == set(names)


def test_a_download_prints_its_folder_and_failures_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("category,ID,URL\nmap,/1/a,ftp://[/b]/x.jpg\n")
    out = tmp_path / "img[/i]"
    result = eic("download", tmp_path / "t.csv", "-o", out, "--quiet", "--retries", "0")
    printed(result, out / "failures.csv")


def test_the_dump_eic_sandbox_names_gives_rows(tmp_path: Path) -> None:
    # With eic's own vocabulary it named the largest dataset, 8999, which holds only text records: 0 rows.
    from rich.console import Console

    from europeana_imgcls import SandboxConfig
    from europeana_imgcls.cli.report import print_sandbox

    console = Console(record=True, width=300)
    with Sandbox(SandboxConfig(port=0)) as server:
        print_sandbox(console, server)
        (url,) = [line.split()[2] for line in console.export_text().splitlines() if line.startswith("Dataset dumps:")]
        out = tmp_path / "dump.csv"
        harvested = eic("harvest", "--source", "dump", "--dump", url, "-o", out, "--quiet")
    assert harvested.exit_code == 0, harvested.output
    assert pl.read_csv(out).height > 0


def test_an_int8_export_says_what_its_accuracy_control_kept_in_float() -> None:
    from io import StringIO

    from rich.console import Console

    from europeana_imgcls.cli.report import print_export
    from europeana_imgcls.outputs.export import ExportReport, QuantisationCheck

    def said(check: QuantisationCheck) -> str:
        out = StringIO()
        files, checked = [Path("split_0.onnx")], {"split_0": "50 test images"}
        report = ExportReport(Path("int8"), "m", ["split_0"], files, {"split_0": 1e-6}, checked)
        report.quantize, report.quantisation = "static", [check]
        print_export(Console(file=out, width=400), report)
        return out.getvalue()

    plain = QuantisationCheck("split_0", 50, 1.0, "accuracy", 0.9, 0.9, control_agreement={"onnx": 0.97})
    assert "accuracy control" not in said(plain)  # the all-int8 file kept its labels: the control did nothing
    controlled = QuantisationCheck(
        "split_0", 50, 0.99, "accuracy", 0.9, 0.9, ["/conv0", "/proj0"], {"onnx": 1.0, "openvino": 0.995}, 200
    )
    assert "accuracy control: 2 node(s) kept in float32, same top class on 99.5% of 200 calibration" in said(controlled)
    capped = QuantisationCheck("split_0", 50, 0.99, "accuracy", None, None, [], {"onnx": 0.97}, 200, capped=True)
    assert "0 node(s) kept in float32 (its cap reached), same top class on 97.0%" in said(capped)
