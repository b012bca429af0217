"""The standing suite of hostile files: every file eic reads back, mutated by Hypothesis (a value of another type, a
key gone, a cut, a flipped byte, nesting a thousand deep) and swapped for a pipe. Each read has two outcomes only:
it works, or one line (an EicError, which the CLI prints as ``eic: error: ...`` and exits non-zero); and nothing
eic did not write is touched.

Files covered here: an export's ``model.json``, the embeddings' sidecar, a journal's parts and settings, a
checkpoint's metadata, a run's ``calibration.json``, a vocabulary, a table. The review loop's files are attacked in
``outputs/test_review.py`` and ``outputs/test_review_apply.py``, the publication journal in ``outputs/test_publish.py``,
download's lists in ``acquisition/test_download.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import ExportConfig, PredictConfig
from europeana_imgcls.core.errors import EicError
from europeana_imgcls.core.tables import read_table
from europeana_imgcls.europeana.vocabulary import load_vocabulary
from europeana_imgcls.modelling.calibration import load_calibration
from europeana_imgcls.modelling.embedding import read_embeddings
from europeana_imgcls.outputs.export import export
from europeana_imgcls.outputs.inference import load_run
from europeana_imgcls.outputs.prediction import predict

from .hostile import (
    HOSTILE_WORDS,
    cli_works_or_one_line,
    mutated_bytes,
    mutated_json,
    scratch,
    snapshot,
    without_hanging,
    works_or_one_line,
)
from .support import VOCAB, examples, make_folders

SETTINGS = settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A table's cells: text UTF-8 can encode (the table is written as UTF-8), hostile words among it.
_CELLS = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(HOSTILE_WORDS)


@pytest.fixture(scope="module")
def lab(shared_trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run (exported), images to label, and a predict journal half done by shard 1 of 2."""
    root = tmp_path_factory.mktemp("hostile")
    run = Path(shutil.copytree(shared_trained_run, root / "run"))
    export(ExportConfig(run=run, quiet=True))
    images = make_folders(root / "new", per_class=2, size=40)
    out = root / "half" / "p.csv"
    predict(PredictConfig(run=run, inputs=[str(images)], output=out, shard="0/2", quiet=True))
    return {"root": root, "run": run, "images": images, "journal": out.with_name("p.csv.journal")}


# ---------------------------------------------------------------------------------------------
# The files


@SETTINGS
@given(data=st.data())
def test_an_exports_sidecar(lab: dict[str, Path], data: st.DataObject) -> None:
    run_before = snapshot(lab["run"])
    with scratch() as folder:
        shutil.copytree(lab["run"] / "onnx", folder / "onnx")
        original = json.loads((folder / "onnx" / "model.json").read_text())
        (folder / "onnx" / "model.json").write_bytes(data.draw(mutated_bytes(original)))
        (folder / "bystander.txt").write_text("not eic's")
        args = ["predict", str(lab["run"]), str(lab["images"]), "-o", str(folder / "p.csv"), "--runtime", "onnx"]
        cli_works_or_one_line(CliRunner().invoke(app, [*args, "--onnx-model", str(folder / "onnx"), "--quiet"]))
        assert (folder / "bystander.txt").read_text() == "not eic's" and snapshot(lab["run"]) == run_before


@SETTINGS
@given(data=st.data())
def test_a_journals_parts_and_settings(lab: dict[str, Path], data: st.DataObject) -> None:
    """A merge reads every part and the settings: a part line or the settings mutated."""
    with scratch() as folder:
        journal = Path(shutil.copytree(lab["journal"], folder / "p.csv.journal"))
        part = next(journal.glob("part.shard-*.ndjson"))
        if data.draw(st.booleans(), label="the settings"):
            settings_file = journal / "settings.json"
            settings_file.write_bytes(data.draw(mutated_bytes(json.loads(settings_file.read_text()))))
        else:
            lines = part.read_bytes().splitlines(keepends=True)
            at = data.draw(st.integers(0, len(lines) - 1))
            key, value = json.loads(lines[at])
            lines[at] = data.draw(mutated_bytes([key, value])).replace(b"\n", b" ") + b"\n"
            part.write_bytes(b"".join(lines))
        args = ["predict", str(lab["run"]), str(lab["images"]), "-o", str(folder / "p.csv"), "--resume", "--quiet"]
        cli_works_or_one_line(CliRunner().invoke(app, args))


@SETTINGS
@given(data=st.data())
def test_a_checkpoints_metadata(lab: dict[str, Path], data: st.DataObject) -> None:
    with scratch() as folder:
        run = Path(shutil.copytree(lab["run"], folder / "run", ignore=shutil.ignore_patterns("onnx")))
        path = run / "split_0" / "model.pt"
        checkpoint = torch.load(path, weights_only=True)
        state = checkpoint.pop("model_state")
        meta = json.loads(json.dumps(checkpoint, default=str))
        mutated = data.draw(mutated_json(meta, depth=100))  # pickle (torch.save) cannot nest 1000 deep
        torch.save({**mutated, "model_state": state} if isinstance(mutated, dict) else mutated, path)
        works_or_one_line(lambda: load_run(run, torch.device("cpu")))


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data())
def test_a_runs_calibration(lab: dict[str, Path], data: st.DataObject) -> None:
    with scratch() as folder:
        run = Path(shutil.copytree(lab["run"], folder / "run", ignore=shutil.ignore_patterns("onnx", "split_*")))
        path = run / "calibration.json"
        path.write_bytes(data.draw(mutated_bytes(json.loads(path.read_text()))))
        works_or_one_line(lambda: load_calibration(run))


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from europeana_imgcls.core.config import EmbedConfig
    from europeana_imgcls.modelling.embedding import embed

    root = tmp_path_factory.mktemp("emb")
    data = make_folders(root / "data", per_class=3, size=32)
    embed(EmbedConfig(data_dir=data, output=root / "e.parquet", arch="tiny", weights="none", input_size=32, quiet=True))
    return root / "e.parquet"


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data())
def test_the_embeddings_sidecar(embeddings: Path, data: st.DataObject) -> None:
    with scratch() as folder:
        table = Path(shutil.copy(embeddings, folder / "e.parquet"))
        original = json.loads(embeddings.with_name("e.embedding.json").read_text())
        (folder / "e.embedding.json").write_bytes(data.draw(mutated_bytes(original)))
        works_or_one_line(lambda: read_embeddings(table))


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data())
def test_a_vocabulary(data: st.DataObject) -> None:
    with scratch() as folder:
        path = folder / "vocab.json"
        path.write_bytes(data.draw(mutated_bytes(VOCAB)))
        works_or_one_line(lambda: load_vocabulary(path))


@settings(max_examples=examples(60), deadline=None)
@given(cells=st.lists(st.lists(_CELLS, min_size=1, max_size=4), max_size=5), cut=st.integers(0, 400))
def test_a_table(cells: list[list[str]], cut: int) -> None:
    import csv
    import io

    text = io.StringIO()
    csv.writer(text).writerows([["ID", "category", "URL"], *cells])
    with scratch() as folder:
        path = folder / "t.csv"
        path.write_bytes(text.getvalue().encode("utf-8")[: cut or None])
        works_or_one_line(lambda: read_table(path, required=("ID",)))


# ---------------------------------------------------------------------------------------------
# A pipe where a file is read back: one line, never a hang


def _pipe_at(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


@pytest.mark.parametrize("which", ["model.json", "calibration.json", "embedding.json", "vocabulary"])
def test_a_pipe_is_refused_not_read(which: str, lab: dict[str, Path], embeddings: Path, tmp_path: Path) -> None:
    read: Callable[[], object]
    if which == "model.json":
        run = Path(shutil.copytree(lab["run"], tmp_path / "run"))
        fifo = run / "onnx" / "model.json"
        config = PredictConfig(run=run, inputs=[str(lab["images"])], output=tmp_path / "p.csv", runtime="onnx")
        read = lambda: predict(config.model_copy(update={"quiet": True}))  # noqa: E731
    elif which == "calibration.json":
        run = Path(shutil.copytree(lab["run"], tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
        fifo = run / "calibration.json"
        read = lambda: load_calibration(run)  # noqa: E731
    elif which == "embedding.json":
        table = Path(shutil.copy(embeddings, tmp_path / "e.parquet"))
        fifo = tmp_path / "e.embedding.json"
        read = lambda: read_embeddings(table)  # noqa: E731
    else:
        fifo = tmp_path / "vocab.json"
        read = lambda: load_vocabulary(fifo)  # noqa: E731
    _pipe_at(fifo)
    raised = without_hanging(read, fifo)
    if which == "calibration.json":  # not a file: the run is calibrated afresh from its out-of-fold predictions
        assert not isinstance(raised, BaseException), repr(raised)
    else:
        assert isinstance(raised, EicError) and "pipe" in str(raised) and "\n" not in str(raised), repr(raised)


def test_a_value_holding_a_line_end_keeps_the_error_one_line(lab: dict[str, Path], tmp_path: Path) -> None:
    """Found by the journal's Hypothesis test: settings naming U+0085 (NEL, a line end to str.splitlines and some
    terminals) split the refusal that quoted them over two lines."""
    journal = Path(shutil.copytree(lab["journal"], tmp_path / "p.csv.journal"))
    settings_file = journal / "settings.json"
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "columns": {"\x85\u2028": None}}))
    args = ["predict", str(lab["run"]), str(lab["images"]), "-o", str(tmp_path / "p.csv"), "--resume", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "started with other settings" in result.stderr
    cli_works_or_one_line(result)
