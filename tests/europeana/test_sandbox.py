"""europeana/sandbox.py: the sandbox's routes, and eic sandbox as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.europeana.sandbox_images import VARIANTS

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


def test_an_image_is_served_as_drawn_however_often_and_by_whichever_sandbox_asks() -> None:
    """The sandbox keeps the images it served (made once a process, for all its sandboxes): what it sends must be
    what drawing the record would give, per record, size, variant and thumbnail size, whichever sandbox asks."""
    import io

    import httpx
    from PIL import Image

    from europeana_imgcls.europeana.sandbox import Knobs
    from europeana_imgcls.europeana.sandbox_images import encode, variant_bytes

    def drawn(sb: Sandbox, serial: int, max_side: int = 0) -> bytes:
        record, size = sb.catalogue[serial], sb.image_size
        image = sb._drawn(serial, (size[0] * 5, size[1] * 5) if record.variant == "large" else size)
        if max_side:
            image.thumbnail((max_side, max_side))
            return encode(image, quality=85)
        return variant_bytes(image, record.variant)[0]

    config, small, other_size = sandbox_config(per_level=1), Knobs(image_size=(40, 30), variant_every=2), (56, 42)
    with Sandbox(config, small) as a, Sandbox(config, Knobs(image_size=other_size)) as b, httpx.Client() as client:
        records = [r for r in a.catalogue if r.type == "IMAGE" and r.has_url]
        assert {r.variant for r in records} == {None, *VARIANTS}
        for record in records:
            for _ in range(2):  # drawn, then kept
                assert client.get(a.image_url(record)).content == drawn(a, record.serial), record
                assert a.image_bytes(record.serial, max_side=32)[0] == drawn(a, record.serial, 32)
            other = b.catalogue[record.serial]  # the same record in a sandbox of another image size
            assert client.get(b.image_url(other)).content == drawn(b, other.serial)
        assert max(Image.open(io.BytesIO(a.image_bytes(records[0].serial, max_side=32)[0])).size) == 32


def test_the_sandbox_takes_every_connection_a_downloader_opens_at_once() -> None:
    """The downloader opens up to --concurrency connections at once. While the sandbox's accepting thread waits
    (for the GIL, on a busy machine), the kernel queues them; socketserver's queue of 5 overflowed, and the client
    resent the dropped ones a whole second later, which slowed every download test under xdist."""
    import selectors
    import socket
    import threading

    from europeana_imgcls.core.config import DownloadConfig

    opened = 2 * DownloadConfig.model_fields["concurrency"].default
    accepting, held = threading.Event(), threading.Event()

    with Sandbox(sandbox_config(per_level=1)) as sb:
        server = sb._server

        def hold() -> None:  # socketserver's hook between two accepts: the loop waits here until released
            accepting.set()
            held.wait(30)

        accepting.clear()
        server.service_actions = hold  # type: ignore[method-assign]
        assert accepting.wait(30)  # the loop is held: from now on only the kernel's queue takes connections
        host, port = server.server_address[:2]
        sockets, waiting = [], selectors.DefaultSelector()
        try:
            for _ in range(opened):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((host, port))
                sockets.append(s)
                waiting.register(s, selectors.EVENT_WRITE)
            connected, events = 0, [None]
            while waiting.get_map() and events:  # a connection the kernel took is writable at once; a dropped one
                events = waiting.select(timeout=10)  # is not, until the loop accepts again
                for key, _ in events:
                    waiting.unregister(key.fileobj)
                    connected += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            assert connected == len(sockets)
        finally:
            held.set()
            server.service_actions = lambda: None  # type: ignore[method-assign]
            waiting.close()
            for s in sockets:
                s.close()
