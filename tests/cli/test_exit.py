"""cli/app.leave: how an eic process ends. It skips the interpreter's teardown (seconds with torch loaded), so
what a user relies on at exit is checked here: the code, every byte of output, threads joined, handlers run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A process that leaves with work still pending: a thread that writes only once the main thread has finished, an
# exit handler, and output left in Python's and in the C library's buffers. It notes whether it took the quick
# exit (os._exit) or Python's own.
SCRIPT = """
import atexit, ctypes, os, sys, threading
from pathlib import Path
from europeana_imgcls.cli.app import leave

out, code = Path(sys.argv[1]), sys.argv[2]
atexit.register(lambda: (out / "handler").write_text("ran"))

def after_main():
    threading.main_thread().join()  # returns once the process is shutting down
    (out / "thread").write_text("joined")

threading.Thread(target=after_main).start()
real_exit = os._exit
os._exit = lambda status: ((out / "quick").write_text(str(status)), real_exit(status))
sys.stdout.write("x" * 200_000)  # a large write goes out at once; the short tail stays in the buffer
sys.stdout.write("END")
ctypes.CDLL(None).printf(b"C")  # C's stdout into a pipe: buffered until exit() or fflush
leave(None if code == "none" else int(code) if code.isdigit() else code)
"""


@pytest.mark.slow(seconds=3)  # four processes
@pytest.mark.parametrize(
    ("code", "full_exit", "status", "quick"),
    [("3", "", 3, True), ("none", "0", 0, True), ("3", "1", 3, False), ("a message", "", 1, False)],
    ids=["code", "none", "full-exit", "message"],
)
def test_leaving_keeps_the_code_the_output_the_threads_and_the_exit_handlers(
    tmp_path: Path, code: str, full_exit: str, status: int, quick: bool
) -> None:
    # Without PYTHONUNBUFFERED, which makes C's stdout unbuffered too (CPython's -u)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "EIC_FULL_EXIT": full_exit}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == status, done.stderr
    assert (tmp_path / "quick").exists() == quick  # EIC_FULL_EXIT=0 is no
    # All of it (its size and ends, not 200 kB in a diff): Python's buffer and C's, in either order (Python's own
    # exit flushes C's first).
    assert (len(done.stdout), set(done.stdout[:200_000])) == (200_004, {"x"})
    assert done.stdout[200_000:] in ("ENDC", "CEND")
    assert (tmp_path / "thread").read_text() == "joined" and (tmp_path / "handler").read_text() == "ran"
    assert done.stderr == ("a message\n" if code == "a message" else "")


@pytest.mark.slow(seconds=1)  # a process
def test_a_profiler_gets_its_report(tmp_path: Path) -> None:
    """Under a profiler (or coverage) eic keeps Python's full exit, at which the tool writes what it saw."""
    script = "import sys; from europeana_imgcls.cli.app import leave; leave(0)"
    (tmp_path / "run.py").write_text(script)
    profile = tmp_path / "profile.out"
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), str(tmp_path / "run.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "EIC_FULL_EXIT": ""},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert profile.stat().st_size > 0


def test_a_file_system_refusal_naming_a_path_with_a_line_break_is_one_line(tmp_path: Path) -> None:
    """The file system's refusal printed the path as it was: one with a line break in it made two lines."""
    from typer.testing import CliRunner

    from europeana_imgcls.cli.app import app

    (tmp_path / "t.csv").write_text("ID,category\n/1/a,map\n")
    (tmp_path / "e.csv").write_text("ID\n/1/b\n")
    result = CliRunner().invoke(
        app, ["subtract", str(tmp_path / "t.csv"), str(tmp_path / "e.csv"), "--output", "/proc/a\nb/o.csv"]
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("eic: error: "), result.stderr
