"""core/progress.py: the long steps show one progress bar in a terminal, plain lines in a log, and none with
--quiet; a rate only once it is measured."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from europeana_imgcls.cli.app import app
from europeana_imgcls.core.progress import EVERY, RATE, Rate, progress_bar

from ..support import make_folders


@pytest.mark.slow(seconds=2)  # two embeddings and two audits
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
            "evaluate": ["evaluate", str(trained), str(eval_dir), "-o", str(out), "--gallery", "0"],
        }[command]
        result = CliRunner().invoke(app, [*args, *(["--quiet"] if quiet else [])], env=TERMINAL)
        assert result.exit_code == 0, result.stderr
        assert shows_progress(result.stderr, description) != quiet, result.stderr


# ---------------------------------------------------------------------------------------------
# Off a terminal (a file, a pipe, a CI log), and the rate


class FakeClock:
    """Seconds that pass only when a test says so: no test races a real clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log() -> tuple[Console, io.StringIO]:
    """A console as a file or a CI log is: no terminal."""
    out = io.StringIO()
    return Console(file=out, force_terminal=False, force_interactive=False), out


def _run(quiet: bool, seconds: float, steps: int = 30, transient: bool = True) -> list[str]:
    """A bar of ``steps`` steps over ``seconds`` with a rate and a count, written to a log; its lines."""
    clock, (console, out) = FakeClock(), _log()
    rate = Rate(clock=clock)
    with progress_bar(
        quiet, RATE, "{task.fields[failed]} failed", transient=transient, console=console, clock=clock
    ) as bar:
        task = bar.add_task("download [open]", total=steps, rate=rate, failed=0)
        for step in range(steps):
            clock.now += seconds / steps
            rate.add(2)
            bar.update(task, advance=1, failed=step // 10)
    return out.getvalue().splitlines()


def test_without_a_terminal_a_bar_writes_a_plain_line_every_ten_seconds_and_at_its_end() -> None:
    lines = _run(quiet=False, seconds=60)
    # a line each 10 s as the bar moves, the last one at its end (not twice): no bar drawing, no escape codes
    assert lines == [
        "download [open] 5/30  1.0 images/s  0 failed  0:00:10",
        "download [open] 10/30  1.0 images/s  0 failed  0:00:20",
        "download [open] 15/30  1.0 images/s  1 failed  0:00:30",
        "download [open] 20/30  1.0 images/s  1 failed  0:00:40",
        "download [open] 25/30  1.0 images/s  2 failed  0:00:50",
        "download [open] 30/30  1.0 images/s  2 failed  0:01:00",
    ]
    assert EVERY == 10


def test_quiet_silences_the_plain_lines() -> None:
    assert _run(quiet=True, seconds=60) == []


def test_a_short_bar_in_a_log_says_nothing_unless_it_stays() -> None:
    # A few seconds' labelling keeps the log as short as before; download's and embed's bars, which stay on a
    # terminal, leave their last state in a log too.
    assert _run(quiet=False, seconds=3) == []
    assert _run(quiet=False, seconds=3, transient=False) == ["download [open] 30/30  20.0 images/s  2 failed  0:00:03"]


def test_a_bar_ended_by_an_error_leaves_the_error_alone() -> None:
    clock, (console, out) = FakeClock(), _log()
    with pytest.raises(RuntimeError), progress_bar(False, console=console, clock=clock) as bar:
        task = bar.add_task("label", total=3)
        bar.advance(task)
        raise RuntimeError("the error's one line")
    assert out.getvalue() == ""


def test_a_plain_line_says_the_description_and_the_count_as_they_are() -> None:
    clock, (console, out) = FakeClock(), _log()
    with progress_bar(False, console=console, clock=clock) as bar:  # a bar that stays: its end is written
        task = bar.add_task("map [/b] [open]", total=2_500_000)  # rich markup, were it read as such
        bar.advance(task, 1_234_567)
    assert out.getvalue() == "map [/b] [open] 1234567/2500000  0:00:00\n"


def test_a_terminal_gets_richs_bar_and_no_plain_line() -> None:
    clock, out = FakeClock(), io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=100)
    with progress_bar(False, console=console, clock=clock) as bar:
        task = bar.add_task("label", total=3)
        for _ in range(3):
            clock.now += 20
            bar.advance(task)
    assert "━" in out.getvalue() and "3/3" in out.getvalue()
    assert "label 1/3" not in out.getvalue()


@pytest.mark.parametrize(
    ("seconds", "steps", "each", "shown"),
    [
        (1e-6, 1, 7, "— images/s"),  # one batch over a microsecond: no rate (6,999,392 images/s was shown)
        (0.5, 4, 10, "— images/s"),  # under a second and under five steps
        (0.0, 0, 0, "— images/s"),  # nothing done yet: no 0.0 images/s
        (0.5, 5, 7, "70.0 images/s"),  # five steps are enough, however quick
        (2.0, 1, 35, "17.5 images/s"),  # a second is enough, however few the steps
        (10.0, 100, 350, "3,500 images/s"),
    ],
)
def test_a_rate_is_shown_once_measured_over_enough_work(seconds: float, steps: int, each: int, shown: str) -> None:
    clock = FakeClock()
    rate = Rate(clock=clock)
    for _ in range(steps):
        rate.add(each)
    clock.now += seconds
    assert str(rate) == shown
