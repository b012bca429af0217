"""The Search API client against httpx.MockTransport: paging, retries and errors."""

from __future__ import annotations

import json

import httpx
import pytest

from europeana_imgcls.core.errors import ApiError
from europeana_imgcls.europeana.search_api import SearchClient

URL = "http://api.test/record/v2/search.json"


def make_client(handler, retries: int = 3) -> SearchClient:
    return SearchClient(URL, "secret-key", retries=retries, backoff=0.0, transport=httpx.MockTransport(handler))


def page(ids: list[str], cursor: str | None) -> httpx.Response:
    body = {
        "success": True,
        "itemsCount": len(ids),
        "totalResults": 99,
        "items": [{"id": i, "edmIsShownBy": [f"http://img/{i}"]} for i in ids],
    }
    if cursor:
        body["nextCursor"] = cursor
    return httpx.Response(200, json=body)


def test_cursor_paging_follows_a_partial_last_page_to_the_empty_one() -> None:
    pages = {"*": (["a", "b"], "c1"), "c1": (["c"], "c2"), "c2": ([], None)}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params["cursor"]
        seen.append(cursor)
        assert request.headers["X-Api-Key"] == "secret-key"
        assert "wskey" not in request.url.params
        assert request.url.params["rows"] == "100"
        return page(*pages[cursor])

    items = list(make_client(handler).iter_items("*", ["TYPE:IMAGE"], reusability="open"))
    assert [i["id"] for i in items] == ["a", "b", "c"]
    assert seen == ["*", "c1", "c2"]


def test_zero_hits_is_one_request() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return page([], None)

    assert list(make_client(handler).iter_items("*")) == []
    assert len(calls) == 1


def test_429_and_503_are_retried_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("europeana_imgcls.europeana.search_api.time.sleep", waits.append)
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "limit"}),
            httpx.Response(503, text="busy"),
            page(["a"], None),
        ]
    )
    items = list(make_client(lambda request: next(answers)).iter_items("*"))
    assert [i["id"] for i in items] == ["a"]
    assert waits[0] == 2.0 and len(waits) == 2


def test_timeouts_and_dropped_connections_are_retried_then_reported() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ApiError, match="did not answer in time after 3 attempts"):
        make_client(handler, retries=2).search([("query", "*")])
    assert len(calls) == 3


def test_persistent_5xx_ends_with_one_clear_error() -> None:
    with pytest.raises(ApiError, match="answered 500 .* after 2 attempts"):
        make_client(lambda r: httpx.Response(500, json={"error": "Internal server error"}), retries=1).search(
            [("query", "*")]
        )


def test_bad_key_is_not_retried_and_names_the_way_out() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(
            401, json={"success": False, "error": "Unauthorized", "message": "Invalid API key provided!"}
        )

    with pytest.raises(ApiError, match="rejected the API key.*EUROPEANA_API_KEY") as info:
        make_client(handler).search([("query", "*")])
    assert len(calls) == 1
    assert "secret-key" not in str(info.value)


def test_bad_query_and_unreadable_answers() -> None:
    bad = httpx.Response(400, json={"success": False, "error": "Invalid search query", "code": "400-SA"})
    with pytest.raises(ApiError, match="refused the query .*Invalid search query: 400-SA"):
        make_client(lambda r: bad).search([("query", "(")])
    html = httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"})
    with pytest.raises(ApiError, match="not a JSON object"):
        make_client(lambda r: html).search([("query", "*")])
    failed = httpx.Response(200, content=json.dumps({"success": False, "error": "odd"}).encode())
    with pytest.raises(ApiError, match="reported a failure: odd"):
        make_client(lambda r: failed).search([("query", "*")])


# ---------------------------------------------------------------------------------------------
# Hostile answers: nothing hangs, nothing crashes


def test_a_cursor_that_comes_back_ends_the_paging_in_one_line() -> None:
    """An API whose nextCursor alternates A, B, A, B would page for ever (and spend the key's quota)."""
    calls = {"n": 0}

    def cycling(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        assert calls["n"] < 50, "paged for ever"
        cursor = request.url.params["cursor"]
        return page([f"/1/{calls['n']}"], "B" if cursor in ("*", "A") else "A")

    with pytest.raises(ApiError, match="cursor it sent before") as error:
        list(make_client(cycling).iter_items("*"))
    assert calls["n"] <= 4 and "\n" not in str(error.value)


def test_a_page_that_adds_no_new_record_ends_the_paging_in_one_line() -> None:
    calls = {"n": 0}

    def stuck(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        assert calls["n"] < 50, "paged for ever"
        return page(["/1/a", "/1/b"], f"c{calls['n']}")  # new cursors, the same records

    with pytest.raises(ApiError, match="no record it had not sent") as error:
        list(make_client(stuck).iter_items("*"))
    assert calls["n"] == 2 and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit-Limit": "inf", "RateLimit-Remaining": "5", "RateLimit-Reset": "10"},
        {"RateLimit-Limit": "1e400", "RateLimit-Remaining": "5", "RateLimit-Reset": "10"},
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "nan", "RateLimit-Reset": "10"},
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "RateLimit-Reset": "1e18"},
        {"RateLimit-Policy": '"p";q=100;w=3600', "RateLimit": '"p";r=0;t=99999999999'},
    ],
)
def test_absurd_quota_headers_are_read_as_absent(headers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)

    def answer(request: httpx.Request) -> httpx.Response:
        response = page(["/1/a"], None)
        response.headers.update(headers)
        return response

    client = make_client(answer)
    client.max_quota_wait = 6 * 3600
    assert [i["id"] for i in client.iter_items("*")] == ["/1/a"]
    client.search([("query", "*")])  # a second request, paced by what the first announced: nothing absurd
    assert all(s < 3600 for s in slept)


def test_a_quota_that_would_make_a_prediction_wait_a_year_stops_it_in_one_line(
    tmp_path, trained_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict --query (and enrich --query) honour the same longest wait as harvest (`max_quota_wait`)."""
    from europeana_imgcls import PredictConfig, predict
    from europeana_imgcls.europeana.sandbox import Sandbox

    from .support import sandbox_config

    def no_long_sleep(seconds: float) -> None:
        assert seconds < 3600, f"would sleep {seconds} s"

    monkeypatch.setattr("europeana_imgcls.europeana.search_api.time.sleep", no_long_sleep)

    with (
        Sandbox(sandbox_config(per_level=40, quota=2, quota_window=31536000)) as sb,
        pytest.raises(ApiError, match="max_quota_wait"),
    ):
        predict(
            PredictConfig(run=trained_run, query="*", n=150, api_url=sb.api_url, output=tmp_path / "p.csv", quiet=True)
        )
