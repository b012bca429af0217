"""core/progress.py: the long steps show one progress bar in a terminal, and none with --quiet."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app

from ..support import make_folders


def test_embed_and_audit_show_progress_in_a_terminal_unless_quiet(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    from ..support import TERMINAL, shows_progress

    data = make_folders(tmp_path / "data", per_class=6, size=32)
    for quiet in (False, True):
        flag = ["--quiet"] if quiet else []
        table = tmp_path / f"e{quiet}.parquet"
        tiny = ["--arch", "tiny", "--weights", "none", "--input-size", "32"]
        embedded = CliRunner().invoke(app, ["embed", str(data), "-o", str(table), *tiny, *flag], env=TERMINAL)
        assert embedded.exit_code == 0 and shows_progress(embedded.stderr, "embed") != quiet, embedded.stderr
        audited = CliRunner().invoke(
            app, ["audit", str(table), "-o", str(tmp_path / f"a{quiet}"), "--folds", "3", *flag], env=TERMINAL
        )
        assert audited.exit_code == 0 and shows_progress(audited.stderr, "probe 1 of 3") != quiet, audited.stderr


@pytest.mark.parametrize(
    ("command", "description"),
    [("predict", "label"), ("gradcam", "label + Grad-CAM"), ("evaluate", "score 3 split model(s)")],
)
def test_long_steps_show_progress_in_a_terminal_unless_quiet(
    trained: Path, eval_dir: Path, tmp_path: Path, command: str, description: str
) -> None:
    from ..support import TERMINAL, copy_of, shows_progress

    trained = copy_of(trained, tmp_path)  # evaluate keeps its latest evaluation in the run
    for quiet in (False, True):
        out = tmp_path / f"q{quiet}"
        args = {
            "predict": ["predict", str(trained), str(eval_dir / "map"), "-o", str(out) + ".csv"],
            "gradcam": [
                "predict",
                str(trained),
                str(eval_dir / "map"),
                "-o",
                str(out) + ".csv",
                "--gradcam-dir",
                str(out),
            ],
            "evaluate": ["evaluate", str(trained), str(eval_dir), "-o", str(out)],
        }[command]
        result = CliRunner().invoke(app, [*args, *(["--quiet"] if quiet else [])], env=TERMINAL)
        assert result.exit_code == 0, result.stderr
        assert shows_progress(result.stderr, description) != quiet, result.stderr
