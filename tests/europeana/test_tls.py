"""europeana/tls.py: one TLS context per process for every HTTP client eic makes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from europeana_imgcls import DownloadConfig
from europeana_imgcls.acquisition.download import _clients
from europeana_imgcls.europeana.annotation_client import AnnotationsClient
from europeana_imgcls.europeana.search_api import SearchClient
from europeana_imgcls.europeana.tls import tls_context


def test_every_client_shares_the_process_tls_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Building a TLS context loads the CA bundle (~50 ms): the Search API's, the Annotations API's and the
    downloader's clients build one between them, however many of them a process makes."""
    built: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)  # what httpx builds a context with
    tls_context.cache_clear()
    try:
        for _ in range(3):
            SearchClient("https://127.0.0.1:9/record/v2/search.json", "key").close()  # never sent
            with AnnotationsClient("https://127.0.0.1:9/annotation", None):
                pass
            table = tmp_path / "t.csv"
            table.write_text("category,ID,URL\n")
            for client in _clients(DownloadConfig(table=table, output_dir=tmp_path / "out", concurrency=32)):
                asyncio.run(client.aclose())
        assert len(built) == 1
    finally:
        tls_context.cache_clear()
