"""eic evaluate and eic predict on a tiny run trained in the test."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from europeana_imgcls.cli.app import app


def test_arguments_in_the_wrong_place_are_told_what_to_pass(trained: Path, eval_dir: Path, tmp_path: Path) -> None:
    table = tmp_path / "eval.csv"
    table.write_text("category,ID,URL\nmap,/1/a,http://127.0.0.1:9/a.jpg\n")
    image = next((eval_dir / "map").glob("*.jpg"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    out = str(tmp_path / "e.jsonld")
    said = {
        ("enrich", str(trained), str(table), "-o", out): f"{table} is a table: pass it as --table {table}",
        ("predict", str(image), str(trained), "-o", str(tmp_path / "p.csv")): "the run comes first, then the images",
        ("evaluate", str(eval_dir), str(trained), "-o", str(tmp_path / "ev")): "the run comes first",
        ("evaluate", str(trained), str(table), "-o", str(tmp_path / "ev")): f"{table} is a table: fetch its images",
        ("train", str(table), "-o", str(tmp_path / "r")): "eic download",
        ("calibrate", str(table)): f"{table} is a table, not a training run",
        ("download", str(table), str(tmp_path / "images")): f"one argument too many: to write into {tmp_path}",
        ("enrich", str(trained), str(notes), "-o", out): "nothing could be labelled",  # not an empty output, exit 0
    }
    for args, message in said.items():
        result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] not in ("calibrate",) else list(args))
        assert result.exit_code != 0, (args, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert not list(tmp_path.glob("e.*jsonl")) and not (tmp_path / "e.jsonld").exists()
