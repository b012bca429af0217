"""The one retry policy (core/retry.py): which statuses are worth another attempt, asked of each real client
(the Search API's, the downloader, the Annotations API's) against the sandbox, and the loop they share."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import polars as pl
import pytest

from europeana_imgcls.acquisition.download import download
from europeana_imgcls.core.config import DEMO_API_KEY, DownloadConfig
from europeana_imgcls.core.errors import ApiError
from europeana_imgcls.core.retry import RETRYABLE, Failed, Retry, send, send_async
from europeana_imgcls.europeana.annotation_client import AnnotationsClient
from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN
from europeana_imgcls.europeana.ratelimit import RateLimit
from europeana_imgcls.europeana.sandbox import SEARCH_PATHS, Sandbox, SandboxRecord
from europeana_imgcls.europeana.search_api import SearchClient

from ..support import sandbox_records

# The one table: a status, and whether every client tries again after it (once here: retries=1).
RETRIED = {
    429: True,  # slow down
    500: True,
    502: True,
    503: True,
    504: True,
    520: True,  # a CDN's word for an origin that failed
    524: True,
    400: False,  # the request's own fault: asked again, refused again
    404: False,
    413: False,
    501: False,  # the server cannot, ever
    505: False,
}
# ...but the Annotations API answers 500 for what its parser refuses: the same request would be refused again,
# and publish halves a refused batch only when the refusal comes back at once.
REFUSAL = 500


def test_the_table_is_the_policy() -> None:
    assert {status for status, again in RETRIED.items() if again} <= RETRYABLE
    assert not {status for status, again in RETRIED.items() if not again} & RETRYABLE


def _search(sb: Sandbox) -> bool:
    with SearchClient(sb.api_url, DEMO_API_KEY, retries=1, backoff=0.0) as client:
        try:
            return bool(client.search([("query", "*"), ("rows", "1")])["success"])
        except ApiError:
            return False


def _download(sb: Sandbox, record: SandboxRecord, folder: Path) -> bool:
    table = folder / "table.csv"
    pl.DataFrame([{"category": record.labels[0], "ID": record.id, "URL": sb.image_url(record)}]).write_csv(table)
    config = DownloadConfig(table=table, output_dir=folder / "images", retries=1, max_side=32, quiet=True)
    return download(config).saved == 1


def _annotations(sb: Sandbox) -> bool:
    with AnnotationsClient(sb.base_url, SANDBOX_TOKEN, retries=1) as client:
        try:
            return client.by_generator("https://example.org/#model-0000000000000000") == []
        except ApiError:
            return False


@pytest.mark.parametrize("status", sorted(RETRIED))
def test_every_client_retries_the_same_statuses(status: int, tmp_path: Path) -> None:
    with Sandbox() as sb:
        record = sandbox_records(sb)[0]
        routes = {
            "search": (SEARCH_PATHS, lambda: _search(sb)),
            "download": (("/images/",), lambda: _download(sb, record, tmp_path)),
            "annotations": (("/annotation/search",), lambda: _annotations(sb)),
        }
        for client, (paths, call) in routes.items():
            asked = sum(sb.count(path) for path in paths)
            sb.fail_next(status, paths)
            got = call()
            tries = sum(sb.count(path) for path in paths) - asked
            again = RETRIED[status] and not (client == "annotations" and status == REFUSAL)
            assert (got, tries) == ((True, 2) if again else (False, 1)), client


def _failing(attempts: list[int]) -> Failed:
    attempts.append(len(attempts) + 1)
    return Failed("answered 503", retry_after="0")


def test_send_and_send_async_stop_alike_after_the_retries() -> None:
    tried: list[int] = []
    last = send(lambda: _failing(tried), Retry(2))
    assert isinstance(last, Failed) and last.attempts == 3 and tried == [1, 2, 3]

    async def attempt() -> Failed:
        return _failing(tried_async)

    tried_async: list[int] = []
    last = asyncio.run(send_async(attempt, Retry(2)))
    assert isinstance(last, Failed) and last.attempts == 3 and tried_async == [1, 2, 3]
    assert send(lambda: "answer", Retry(0)) == "answer"


def test_the_one_pacer_holds_a_client_of_one_thread_too() -> None:
    limit = RateLimit(None)
    limit.pause(0.05)  # a spent quota, or a 429's Retry-After
    started = time.monotonic()
    limit.block()
    assert time.monotonic() - started >= 0.04
    started = time.monotonic()
    limit.block()  # no rate: nothing more to wait for
    assert time.monotonic() - started < 0.04


# ---------------------------------------------------------------------------------------------
# Hostile answers: nothing hangs, nothing crashes


def test_one_retry_policy_reads_both_forms_of_retry_after() -> None:
    import email.utils
    import time

    from europeana_imgcls.core.retry import Retry, retry_after

    soon = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 < retry_after(soon) <= 5.0
    assert retry_after("7") == 7.0 and retry_after("soon") is None and retry_after("") is None
    first = Retry(2, backoff=0.5, cap=30.0).increment()
    assert first.wait("120") == 30.0  # never past the cap, whatever the server says
    second = first.increment()
    assert 0.25 <= first.wait(None) <= 0.75 and 0.5 <= second.wait("") <= 1.5  # backoff doubles, with jitter
    assert not second.is_exhausted() and second.increment().is_exhausted()  # two retries, then no more
