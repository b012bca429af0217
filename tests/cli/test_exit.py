"""cli/app.leave: how an eic process ends. It skips the interpreter's teardown (seconds with torch loaded), so
what a user relies on at exit is checked here: the code, every byte of output, threads joined, handlers run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A process that leaves with work still pending: a thread that writes only once the main thread has finished, an
# exit handler, and more output than a pipe holds, unflushed.
SCRIPT = """
import atexit, sys, threading
from pathlib import Path
from europeana_imgcls.cli.app import leave

out, code = Path(sys.argv[1]), sys.argv[2]
atexit.register(lambda: (out / "handler").write_text("ran"))

def after_main():
    threading.main_thread().join()  # returns once the process is shutting down
    (out / "thread").write_text("joined")

threading.Thread(target=after_main).start()
sys.stdout.write("x" * 200_000)
leave(None if code == "none" else int(code) if code.isdigit() else code)
"""


@pytest.mark.slow(seconds=3)  # four processes
@pytest.mark.parametrize(
    ("code", "full_exit", "status"),
    [("3", False, 3), ("none", False, 0), ("3", True, 3), ("a message", False, 1)],
    ids=["code", "none", "full-exit", "message"],
)
def test_leaving_keeps_the_code_the_output_the_threads_and_the_exit_handlers(
    tmp_path: Path, code: str, full_exit: bool, status: int
) -> None:
    env = {**os.environ, "EIC_FULL_EXIT": "1" if full_exit else ""}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == status, done.stderr
    assert (len(done.stdout), set(done.stdout)) == (200_000, {"x"})  # all of it, its size not its 200 kB in a diff
    assert (tmp_path / "thread").read_text() == "joined" and (tmp_path / "handler").read_text() == "ran"
    assert done.stderr == ("a message\n" if code == "a message" else "")
