"""The one output policy (core/outputs.py) and the stages that write through it: new or refused, `overwrite`
replacing only what eic wrote, folders swapped in whole, a lock per output, nothing written through a link or into
a pipe. Each stage is run the way a user runs it, on real files."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.config import AuditConfig, EvaluateConfig
from europeana_imgcls.core.errors import DatasetError
from europeana_imgcls.core.outputs import MANIFEST, TABLE, Claim, OutputKind, build_folder, claim, claimed, output_lock
from europeana_imgcls.outputs.audit import audit
from europeana_imgcls.outputs.evaluation import evaluate_run

from ..support import make_folders

FOLDER = OutputKind("thing", "a thing", folder=True)


def one_line(args: list[str], quiet: bool = True) -> str:
    """Run eic; it must refuse in one line on stderr, without a traceback."""
    result = CliRunner().invoke(app, [*args, "--quiet"] if quiet else args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def refused(match: str, manager: AbstractContextManager[object]) -> None:
    """Entering ``manager`` is refused with a DatasetError matching ``match``."""
    with pytest.raises(DatasetError, match=match), manager:
        pass


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# The policy itself


def test_a_folder_is_built_beside_and_swapped_in_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with build_folder(out, FOLDER, overwrite=False) as staging:
        (staging / "a.txt").write_text("1")
        assert not out.exists() and staging.parent == tmp_path
    assert tree(out)["a.txt"] == b"1" and json.loads(tree(out)[MANIFEST])["files"] == ["a.txt"]
    refused("already exists: pass `overwrite` to replace it", build_folder(out, FOLDER, overwrite=False))
    with pytest.raises(RuntimeError), build_folder(out, FOLDER, overwrite=True) as staging:
        (staging / "b.txt").write_text("2")
        raise RuntimeError("killed halfway")
    assert set(tree(out)) == {"a.txt", MANIFEST}  # the earlier output stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no building folder, no lock left
    with build_folder(out, FOLDER, overwrite=True) as staging:
        (staging / "b.txt").write_text("2")
    assert set(tree(out)) == {"b.txt", MANIFEST}


def test_overwrite_refuses_a_folder_of_another_kind_or_with_a_stranger_in_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with build_folder(out, FOLDER, overwrite=False) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "a.txt").write_text("1")
    other = OutputKind("other", "another thing", folder=True)
    refused("holds sub/a.txt, which eic did not write as another thing", build_folder(out, other, overwrite=True))
    (out / "sub" / "mine.txt").write_text("a user's")
    refused("holds sub/mine.txt, which eic did not write as a thing", build_folder(out, FOLDER, overwrite=True))
    (out / "sub" / "mine.txt").unlink()
    (out / "sub" / "link").symlink_to(tmp_path)
    refused(r"holds sub/link \(a symbolic link\)", build_folder(out, FOLDER, overwrite=True))
    assert (out / "sub" / "a.txt").read_text() == "1"


@pytest.mark.parametrize("what", ["fifo", "symlink", "device", "folder"])
def test_nothing_is_written_into_a_pipe_a_device_or_through_a_link(what: str, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    target = tmp_path / "elsewhere.csv"
    target.write_text("not eic's")
    if what == "fifo":
        os.mkfifo(path)
    elif what == "symlink":
        path.symlink_to(target)
    elif what == "device":
        path = Path("/dev/null")
    else:
        path.mkdir()
    expected = {"fifo": "a pipe", "symlink": "a symbolic link", "device": "a device", "folder": "is a folder"}[what]
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match=expected), claimed(path, TABLE, overwrite=overwrite):
            path.write_text("x")
    assert target.read_text() == "not eic's"


def test_a_file_is_replaced_only_when_its_kind_recognises_it(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID\n/1/a\n")
    with pytest.raises(DatasetError, match="is not a table that eic wrote"):
        claim(table, TABLE, overwrite=True)
    (tmp_path / "t.config.json").write_text('{"output": "t.csv"}')  # eic's settings beside every table it makes
    assert claim(table, TABLE, overwrite=True) is Claim.REPLACE
    assert claim(table, TABLE, resume=True) is Claim.RESUME
    assert claim(tmp_path / "new.csv", TABLE, overwrite=False) is Claim.NEW
    with pytest.raises(DatasetError, match=r"already exists: choose another `output`"):
        claim(table, TABLE)  # a stage with neither option


def test_one_writer_per_output_and_a_dead_writers_leftovers_go(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with output_lock(out):
        refused(f"{out} is being written by process {os.getpid()}", claimed(out, TABLE, overwrite=False))
    leftover = tmp_path / ".out.csv.0123456789ab.eic-part"
    leftover.write_text("half")
    unrelated = tmp_path / ".other.csv.0123456789ab.eic-part"
    unrelated.write_text("another output's")
    with claimed(out, TABLE, overwrite=False):
        out.write_text("ID\n")
    assert not leftover.exists() and unrelated.exists() and out.read_text() == "ID\n"


# ---------------------------------------------------------------------------------------------
# The stages


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def test_audit_never_writes_its_review_tasks_over_a_file_eic_did_not_make(run: Path, tmp_path: Path) -> None:
    table = tmp_path / "train.csv"
    table.write_text("ID,category,URL\n/1/a,map,http://127.0.0.1:9/a.jpg\n")
    before = table.read_bytes()
    for target, extra in ((table, []), (table, ["--overwrite"]), (run / "summary.json", ["--overwrite"])):
        kept = target.read_bytes()
        line = one_line(["audit", str(run), "-o", str(tmp_path / "audit"), "--review-output", str(target), *extra])
        assert "review tasks" in line or "already exists" in line, line
        assert target.read_bytes() == kept
    assert table.read_bytes() == before
    assert not list(run.glob("*.labelling.xml")) and not list(tmp_path.glob("*.labelling.xml"))
    assert not (tmp_path / "audit").exists()


def test_audit_replaces_its_own_audit_and_review_tasks_and_keeps_them_inside_its_folder(
    run: Path, tmp_path: Path
) -> None:
    review = tmp_path / "suspects.json"
    config = AuditConfig(source=run, output_dir=tmp_path / "audit", review_output=review, quiet=True)
    audit(config)
    with pytest.raises(DatasetError, match="already exists"):
        audit(config)
    audit(config.model_copy(update={"overwrite": True}))
    assert json.loads(review.read_text()) and (tmp_path / "suspects.labelling.xml").is_file()
    inside = config.model_copy(update={"output_dir": tmp_path / "a2", "review_output": tmp_path / "a2" / "r.json"})
    report = audit(inside)
    assert report.review_tasks and json.loads((tmp_path / "a2" / "r.json").read_text())
    assert {"r.json", "r.labelling.xml"} <= set(json.loads((tmp_path / "a2" / MANIFEST).read_text())["files"])


@pytest.mark.slow(seconds=2)  # two evaluations
def test_evaluate_replaces_only_its_own_evaluation(run: Path, tmp_path: Path) -> None:
    data = make_folders(tmp_path / "eval", per_class=3, size=40)
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "thesis.docx").write_text("a user's")
    config = EvaluateConfig(run=run, eval_dir=data, output_dir=out, gallery=0, quiet=True)
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match="thesis.docx" if overwrite else "already exists"):
            evaluate_run(config.model_copy(update={"overwrite": overwrite}))
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]
    (out / "thesis.docx").unlink()
    evaluate_run(config)
    first = (out / "metrics.json").read_bytes()
    evaluate_run(config.model_copy(update={"overwrite": True}))
    assert (out / "metrics.json").read_bytes() == first and (run / "evaluation.json").is_file()


@pytest.mark.parametrize(
    ("command", "name", "what"),
    [("predict", "catalogue.csv", "predictions"), ("enrich", "catalogue.jsonld", "annotations")],
)
def test_a_resume_carries_on_only_eics_own_output(
    command: str, name: str, what: str, run: Path, tmp_path: Path
) -> None:
    images = make_folders(tmp_path / "new", per_class=2, size=40)
    mine = tmp_path / name
    mine.write_text("ID,title\n/1/a,A map\n")
    line = one_line([command, str(run), str(images), "-o", str(mine), "--resume"])
    assert f"is not {what} that eic wrote" in line and mine.read_text() == "ID,title\n/1/a,A map\n"


def test_predict_resumes_only_its_own_predictions(run: Path, tmp_path: Path) -> None:
    images = make_folders(tmp_path / "new", per_class=2, size=40)
    table = tmp_path / "catalogue.csv"
    table.write_text("ID,title\n/1/a,A map\n")
    line = one_line(["predict", str(run), str(images), "-o", str(table), "--resume"])
    assert "is not predictions that eic wrote" in line and table.read_text() == "ID,title\n/1/a,A map\n"
    out = tmp_path / "p.csv"
    assert CliRunner().invoke(app, ["predict", str(run), str(images), "-o", str(out), "--quiet"]).exit_code == 0
    assert "already exists: pass --resume" in one_line(["predict", str(run), str(images), "-o", str(out)])
    result = CliRunner().invoke(app, ["predict", str(run), str(images), "-o", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("command", ["predict", "enrich", "embed"])
def test_no_stage_writes_into_a_pipe_or_through_a_link(command: str, run: Path, tmp_path: Path) -> None:
    images = make_folders(tmp_path / "new", per_class=2, size=40)
    victim = tmp_path / "victim.csv"
    victim.write_text("someone else's")
    suffix = {"predict": ".csv", "enrich": ".jsonld", "embed": ".parquet"}[command]
    fifo, link = tmp_path / f"fifo{suffix}", tmp_path / f"link{suffix}"
    os.mkfifo(fifo)
    link.symlink_to(victim)
    for out, said in ((fifo, "is a pipe (FIFO)"), (link, "is a symbolic link")):
        args = {
            "predict": ["predict", str(run), str(images), "-o", str(out)],
            "enrich": ["enrich", str(run), str(images), "-o", str(out)],
            "embed": ["embed", str(images), "-o", str(out), "--arch", "tiny", "--weights", "none"],
        }[command]
        for resume in ([], ["--resume"]):
            assert said in one_line([*args, *resume])
    assert victim.read_text() == "someone else's"


def test_train_carries_on_only_a_training_runs_folder(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", per_class=3, size=32)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.docx").write_text("a user's")
    args = ["train", str(data), "-o", str(documents), "--arch", "tiny", "--weights", "none", "--input-size", "32"]
    for extra in ([], ["--resume"]):
        assert "holds files that are not a training run" in one_line([*args, "--epochs", "1", "--folds", "3", *extra])
    assert [p.name for p in documents.iterdir()] == ["thesis.docx"]


# ---------------------------------------------------------------------------------------------
# Found by a review of the policy (each failed before its fix)


def _subtract(table: Path, evaluation: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["subtract", str(table), str(evaluation), "-o", str(out), *extra])


def test_a_tables_settings_name_the_table_they_were_written_with(tmp_path: Path) -> None:
    """catalogue.csv and catalogue.parquet share catalogue.config.json: only the table it names is eic's."""
    import polars as pl

    museum = tmp_path / "catalogue.parquet"
    pl.DataFrame({"ID": ["/1/a", "/1/b"], "category": ["map", "map"]}).write_parquet(museum)
    evaluation = tmp_path / "ev.csv"
    evaluation.write_text("ID\n/1/b\n")
    assert _subtract(museum, evaluation, tmp_path / "catalogue.csv").exit_code == 0
    line = one_line(["subtract", str(museum), str(evaluation), "-o", str(museum), "--overwrite"], quiet=False)
    assert "is not a table that eic wrote" in line and pl.read_parquet(museum).height == 2
    assert _subtract(museum, evaluation, tmp_path / "catalogue.csv", "--overwrite").exit_code == 0


def test_the_file_checked_is_the_file_written_through_a_link_and_dot_dot(tmp_path: Path) -> None:
    table, evaluation = tmp_path / "train.csv", tmp_path / "ev.csv"
    table.write_text("ID\n/1/a\n")
    evaluation.write_text("ID\n/1/b\n")
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    here.mkdir()
    assert _subtract(table, evaluation, here / "t.csv").exit_code == 0  # eic's own t.csv in here/
    (elsewhere / "t.csv").write_text("someone else's")
    (here / "link").symlink_to(elsewhere / "sub")
    out = here / "link" / ".." / "t.csv"
    line = one_line(["subtract", str(table), str(evaluation), "-o", str(out), "--overwrite"], quiet=False)
    assert str(elsewhere / "t.csv") in line and (elsewhere / "t.csv").read_text() == "someone else's"


def test_download_carries_on_only_a_folder_it_filled(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID,category,URL\n/1/a,map,http://127.0.0.1:9/a.jpg\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"mine": true}')
    line = one_line(["download", str(table), "-o", str(project)])
    assert "holds files that are not a download folder" in line
    assert (project / "config.json").read_text() == '{"mine": true}'


def test_review_tasks_over_a_mebibyte_are_still_eics(tmp_path: Path) -> None:
    from europeana_imgcls.core.recognise import is_review_tasks
    from europeana_imgcls.datasets.tasks import task_for
    from europeana_imgcls.outputs.review import review_task, write_review_tasks

    path = tmp_path / "review.json"
    tasks = [review_task(f"/1/r{i}", f"http://127.0.0.1:9/{i}.jpg", ["map"], 0.5, "x" * 400) for i in range(2500)]
    write_review_tasks(path, tasks, ["map", "painting"], task_for("single-label"), "eic test")
    assert path.stat().st_size > 1 << 20 and is_review_tasks(path)


def test_review_tasks_people_answered_are_no_longer_eics_to_replace(run: Path, tmp_path: Path) -> None:
    """Label Studio's export of eic's tasks keeps their data and suggestions and adds people's answers
    (``annotations``): saved where eic wrote the tasks, it is their work, which --overwrite or --resume must not
    replace."""
    review = tmp_path / "suspects.json"
    config = AuditConfig(source=run, output_dir=tmp_path / "audit", review_output=review, quiet=True)
    audit(config)
    tasks = json.loads(review.read_text())
    tasks[0]["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["map"]}}], "completed_by": 1}]
    review.write_text(json.dumps(tasks))
    answered = review.read_bytes()
    line = one_line(["audit", str(run), "-o", str(tmp_path / "a2"), "--review-output", str(review), "--overwrite"])
    assert str(review) in line, line
    assert review.read_bytes() == answered and not (tmp_path / "a2").exists()


def test_an_evaluation_of_an_earlier_eic_is_replaced_with_overwrite(run: Path, tmp_path: Path) -> None:
    data = make_folders(tmp_path / "eval", per_class=3, size=40)
    out = tmp_path / "evaluation"
    config = EvaluateConfig(run=run, eval_dir=data, output_dir=out, gallery=0, quiet=True)
    evaluate_run(config)
    (out / MANIFEST).unlink()  # as an eic without manifests left it
    evaluate_run(config.model_copy(update={"overwrite": True}))
    assert (out / MANIFEST).is_file()


@pytest.mark.parametrize("stage", ["audit", "evaluate"])
def test_a_folder_of_the_users_that_mentions_eics_words_is_not_an_earlier_eics_output(
    stage: str, run: Path, tmp_path: Path
) -> None:
    """An output without a manifest was taken for an earlier eic's when one JSON file merely held a word eic wrote
    there ("label_issues" in summary.json, "eval_dir" in config.json): then every *.json, *.csv and *.png in the
    folder counted as eic's, and --overwrite deleted a cleanlab user's own label_issues work, figures and
    parameters."""
    out = tmp_path / "analysis"
    out.mkdir()
    first = {"audit": "summary.json", "evaluate": "config.json"}[stage]
    (out / first).write_text(json.dumps({"label_issues": 12, "eval_dir": "photos", "notes": "mine"}))
    mine = {"my_label_issues.csv": b"rank,image\n1,a.jpg\n", "figure1.png": b"\x89PNG mine", "params.json": b"{}"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    data = make_folders(tmp_path / "eval", per_class=3, size=40)
    args = {"audit": ["audit", str(run)], "evaluate": ["evaluate", str(run), str(data)]}[stage]
    line = one_line([*args, "-o", str(out), "--overwrite"])
    assert str(out) in line, line
    assert {name: (out / name).read_bytes() for name in mine} == mine and (out / first).is_file()


def test_a_file_eic_did_not_write_is_refused_without_offering_a_flag_that_would_be_refused(
    run: Path, tmp_path: Path
) -> None:
    """`eic audit --review-output catalogue.csv` (the user's table) said "pass --overwrite to replace it", and with
    --overwrite it was refused as not eic's: the advice led nowhere."""
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("ID,title\n/1/a,mine\n")
    line = one_line(["audit", str(run), "-o", str(tmp_path / "audit"), "--review-output", str(catalogue)])
    assert "catalogue.csv" in line and "overwrite" not in line and "is not review tasks that eic wrote" in line
    assert catalogue.read_text() == "ID,title\n/1/a,mine\n"


def test_a_recogniser_is_never_a_traceback_on_deep_nesting(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("ID\n/1/a\n")
    out = tmp_path / "st.json"
    out.write_text("[" * 200_000)
    line = one_line(["stats", str(table), "-o", str(out), "--overwrite"], quiet=False)
    assert "is not statistics that eic wrote" in line


def test_leftovers_of_one_output_only(tmp_path: Path) -> None:
    """The lock of `res` cleans `.res.<hex>.eic-part`, never `.res.json.<hex>.eic-part` (another output's)."""
    other = tmp_path / ".res.json.0123456789ab.eic-part"
    other.write_text("being written")
    with output_lock(tmp_path / "res"):
        pass
    assert other.exists()


def test_a_kill_between_the_swaps_two_renames_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with build_folder(out, FOLDER, overwrite=False) as staging:
        (staging / "a.txt").write_text("1")
    out.rename(tmp_path / ".out.eic-replaced")  # killed after renaming the old output aside
    with build_folder(out, FOLDER, overwrite=True) as staging:
        assert (out / "a.txt").read_text() == "1"  # put back at the start, under the lock
        (staging / "b.txt").write_text("2")
    assert (out / "b.txt").read_text() == "2"


def test_a_review_file_is_never_lost_inside_the_audit_folder(run: Path, tmp_path: Path) -> None:
    audit(AuditConfig(source=run, output_dir=tmp_path / "au", quiet=True))
    (tmp_path / "link").symlink_to(tmp_path)
    review = tmp_path / "link" / "au" / "r.json"  # inside the audit's folder, through a link
    audit(AuditConfig(source=run, output_dir=tmp_path / "au", review_output=review, overwrite=True, quiet=True))
    assert json.loads((tmp_path / "au" / "r.json").read_text())
    line = one_line(["audit", str(run), "-o", str(tmp_path / "au"), "--review-output", str(tmp_path / "au")])
    assert "is the audit's folder" in line


def test_the_current_folder_reached_through_a_link_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    with build_folder(real, FOLDER, overwrite=False) as staging:
        (staging / "a.txt").write_text("1")
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(real)
    refused("holds the current folder", build_folder(tmp_path / "link" / "real", FOLDER, overwrite=True))
    assert (real / "a.txt").read_text() == "1"


def test_a_folder_with_only_a_json_called_model_json_is_no_earlier_export(run: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.json").write_text('{"a": "model of theirs"}')
    line = one_line(["export", str(run), "-o", str(theirs), "--overwrite"])
    assert "holds model.json, which eic did not write" in line
    assert (theirs / "model.json").read_text() == '{"a": "model of theirs"}'
