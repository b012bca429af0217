"""europeana/sandbox.py: the sandbox's routes, and eic sandbox as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from europeana_imgcls.europeana.sandbox import Sandbox

from ..support import sandbox_config


@pytest.mark.slow  # two eic processes
def test_eic_sandbox_serves_what_its_flags_say_and_a_taken_port_is_one_line(vocab_file: Path) -> None:
    import os

    import httpx

    from europeana_imgcls.core.config import DEMO_API_KEY, SandboxConfig
    from europeana_imgcls.europeana.sandbox import Knobs, build_catalogue

    from ..support import VOCAB

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "europeana_imgcls", "sandbox", "--vocab", str(vocab_file)]
    flags = ["--per-level", "2", "--quota", "5", "--quota-window", "60"]
    with subprocess.Popen([*command, "--port", "0", *flags], stdout=subprocess.PIPE, text=True, env=env) as server:
        try:
            assert server.stdout is not None
            url = next(line.split(": ", 1)[1].strip() for line in server.stdout if line.startswith("Search API: "))
            answer = httpx.get(url, params={"query": "*", "rows": "1"}, headers={"X-Api-Key": DEMO_API_KEY})
            assert answer.headers["RateLimit-Policy"] == '"personal";q=5;w=60'
            catalogue = build_catalogue(VOCAB, SandboxConfig(per_level=2), Knobs())
            assert answer.json()["totalResults"] == len(catalogue)
            port = httpx.URL(url).port
            taken = subprocess.run(
                [*command, "--port", str(port)], capture_output=True, text=True, env=env, timeout=120
            )
            assert taken.returncode == 1 and "Traceback" not in taken.stderr
            assert taken.stderr.strip().splitlines() == [
                f"eic: error: cannot listen on 127.0.0.1:{port} (Address already in use); try --port 0"
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


def test_the_sandbox_answers_odd_paths_with_404() -> None:
    import httpx

    with Sandbox(sandbox_config(per_level=2)) as sb:
        for path in ("/images/²", "/images/-1", "/images/99999999", "/thumbnail/%FF"):
            assert httpx.get(sb.base_url + path).status_code in (400, 404), path
