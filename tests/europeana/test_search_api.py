"""The Search API client against httpx.MockTransport: paging, retries and errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from europeana_imgcls.core.errors import ApiError
from europeana_imgcls.europeana.quota import Quota
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.europeana.search_api import SearchClient

from ..support import QuietHandler, assert_one_line_error, eic, sandbox_config, send_json, serving

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


def test_a_search_api_url_that_answers_404_is_named_with_europeanas(tmp_path: Path) -> None:
    with Sandbox(sandbox_config(per_level=2)) as sb:
        wrong = sb.api_url.replace("search.json", "serch.json")  # a typo: nothing is there
        result = eic(
            "harvest", "-o", tmp_path / "h.csv", "--api-url", wrong, "--retries", "0", "--quiet",
            env={"EUROPEANA_API_KEY": "api2demo"},
        )  # fmt: skip
    assert_one_line_error(result, f"the Search API URL {wrong} answered 404")
    assert "check --api-url (Europeana's: https://api.europeana.eu/record/v2/search.json)" in result.stderr


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

    from ..support import sandbox_config

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


@pytest.mark.parametrize("status", [400, 401, 404, 500])
def test_an_api_error_that_quotes_the_key_is_printed_without_it(status: int, tmp_path: Path) -> None:
    class Echo(QuietHandler):
        def do_GET(self) -> None:  # an API whose error quotes the request, key and all, over several lines
            said = f"Invalid request\nwith key {self.headers['X-Api-Key']} for {self.path}" + " and more" * 200
            send_json(self, status, {"success": False, "error": said})

    with serving(Echo) as base:
        result = eic(
            "harvest", "-o", tmp_path / "h.csv", "--api-url", f"{base}/record/v2/search.json", "--retries", "0",
            "--quiet", env={"EUROPEANA_API_KEY": "k3y-0f-the-museum"},
        )  # fmt: skip
    assert_one_line_error(result, "with key *** for")
    assert "k3y-0f-the-museum" not in result.output + result.stderr and len(result.stderr) < 600


# ---------------------------------------------------------------------------------------------
# Rule 4: the API key is sent only to the origin the user configured


def test_api_key_never_follows_a_redirect_to_another_origin(caplog: pytest.LogCaptureFixture) -> None:
    import httpx

    from europeana_imgcls.europeana.search_api import SearchClient

    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[f"{request.url.host}:{request.url.port}"] = request.headers.get("X-Api-Key")
        if request.url.host == "api.test" and request.url.port is None:
            return httpx.Response(302, headers={"Location": "https://api.test:8443/elsewhere"})
        if request.url.host == "api.test":
            return httpx.Response(302, headers={"Location": "https://evil.test/search.json"})
        return httpx.Response(200, json={"success": True, "items": [], "totalResults": 0, "itemsCount": 0})

    with SearchClient(
        "https://api.test/record/v2/search.json", "secret-key", retries=0, transport=httpx.MockTransport(handler)
    ) as client:
        client.search([("query", "*")])
    assert seen == {"api.test:None": "secret-key", "api.test:8443": None, "evil.test:None": None}
    assert not caplog.records
    with caplog.at_level("WARNING"):
        SearchClient("http://api.example.org/search.json", "k").close()
        SearchClient("http://127.0.0.1:8642/search.json", "k").close()
    assert [r.getMessage() for r in caplog.records] == [
        "the API key travels unencrypted to api.example.org: use an https:// API URL"
    ]


# ---------------------------------------------------------------------------------------------
# Rule 9: smaller ones


@pytest.mark.waits
@pytest.mark.slow
def test_a_server_trickling_its_answer_cannot_hold_a_harvest(tmp_path: Path) -> None:
    from europeana_imgcls.core.errors import ApiError
    from europeana_imgcls.europeana.search_api import SearchClient

    class Trickle(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    started = time.monotonic()
    try:
        with (
            SearchClient(
                f"http://127.0.0.1:{server.server_address[1]}/search.json", "k", timeout=1.0, retries=0
            ) as client,
            pytest.raises(ApiError, match="did not answer in time"),
        ):
            client.search([("query", "*")])
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------------
# Found in review: resumes, encodings and paths


def test_a_compressed_search_answer_is_decoded_once() -> None:
    import gzip

    import httpx

    from europeana_imgcls.europeana.search_api import SearchClient

    body = json.dumps({"success": True, "items": [], "totalResults": 0, "itemsCount": 0}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=gzip.compress(body), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    with SearchClient("https://api.test/search.json", "k", retries=0, transport=httpx.MockTransport(handler)) as c:
        assert c.search([("query", "*")])["success"] is True


# ---------------------------------------------------------------------------------------------
# The key's quota


@pytest.mark.waits
@pytest.mark.slow
def test_a_429_from_a_spent_quota_waits_for_the_window_without_spending_retries() -> None:
    with Sandbox(sandbox_config(per_level=5, quota=1, quota_window=0.6)) as sb:
        with SearchClient(sb.api_url, "api2demo", retries=0) as other:
            other.search([("query", "*")])  # someone else spends the window
        with SearchClient(sb.api_url, "api2demo", retries=0) as client:
            client.quota = Quota(limit=1, window=0.6, remaining=1, reset=0.6)  # stale: it believes there is room
            started = time.monotonic()
            body = client.search([("query", "*")])
            assert body["success"] and time.monotonic() - started >= 0.4
        assert sb.quota_refusals == 1
        with (
            SearchClient(sb.api_url, "api2demo", retries=0, max_quota_wait=0.0) as impatient,
            pytest.raises(ApiError, match="of waiting"),
        ):
            for _ in range(3):  # the window's one request is spent by the first, or by the client above
                impatient.search([("query", "*")])


def test_a_redirect_loop_and_a_deeply_nested_answer_are_one_line_each() -> None:
    """Two answers that came out as tracebacks: a redirect that never ends (httpx's TooManyRedirects) and a JSON
    body nested deeper than Python's recursion limit."""
    loop = httpx.Response(302, headers={"Location": URL})
    with pytest.raises(ApiError, match="redirect"):
        make_client(lambda r: loop, retries=0).search([("query", "*")])
    nested = httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"})
    with pytest.raises(ApiError, match="not a JSON object"):
        make_client(lambda r: nested).search([("query", "*")])


@pytest.mark.parametrize("key", ["SECRÉTKEY", "key\nwith a line", " "])
def test_an_api_key_no_http_header_can_carry_is_refused_before_any_request(key: str, tmp_path: Path) -> None:
    result = eic("harvest", "--n", "1", "--output", tmp_path / "h.csv", env={"EUROPEANA_API_KEY": key})
    assert_one_line_error(result, "API key")
    assert key.strip() not in result.stderr or not key.strip()
    assert not (tmp_path / "h.csv").exists()


def test_an_unsendable_api_key_is_refused_only_where_a_request_would_carry_it(
    trained_run: Path, tmp_path: Path
) -> None:
    """A malformed EUROPEANA_API_KEY left exported in a shell made `eic predict RUN photo.jpg` refuse, though no
    request of it carries the key; a `--query` does, and is refused before any work."""
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    bad = {"EUROPEANA_API_KEY": "key\nwith a line"}
    labelled = eic("predict", trained_run, photo, "-o", tmp_path / "p.csv", "--quiet", env=bad)
    assert labelled.exit_code == 0, labelled.stderr
    asked = eic("predict", trained_run, "--query", "map", "-o", tmp_path / "q.csv", "--quiet", env=bad)
    assert_one_line_error(asked, "API key")
    nothing = eic("predict", trained_run, "--query", "", "-o", tmp_path / "q.csv", "--quiet", env=bad)  # asks no API
    assert_one_line_error(nothing, "nothing to predict")


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [("harvest", "--timeout", "inf"), ("harvest", "--timeout", "1e400"), ("download", "--rate", "nan")],
)
def test_a_setting_that_is_no_finite_number_is_refused_in_one_line(
    command: str, flag: str, value: str, tmp_path: Path
) -> None:
    (tmp_path / "t.csv").write_text("ID,URL,category\n/1/a,http://127.0.0.1:9/a.jpg,map\n")
    given = ["--n", "1", "--output", tmp_path / "h.csv"] if command == "harvest" else [tmp_path / "t.csv"]
    result = eic(
        command,
        *given,
        "--output-dir" if command == "download" else "--quiet",
        *([tmp_path / "img"] if command == "download" else []),
        flag,
        value,
    )
    assert_one_line_error(result, flag.removeprefix("--"))


def test_a_page_of_items_none_of_which_is_a_record_is_one_line_not_the_end_of_the_unit() -> None:
    """A page of 100 items whose ids are null ended the paging as an empty page does: 0 records, exit 0, and the
    unit journaled as finished, so a resume never asked for it again."""
    body = {"success": True, "itemsCount": 2, "totalResults": 99, "items": [{"id": None}, {"id": None}]}
    answer = httpx.Response(200, json={**body, "nextCursor": "next"})
    with pytest.raises(ApiError, match="none is a record"):
        list(make_client(lambda r: answer).iter_items("*"))


def test_a_key_echoed_url_encoded_or_in_capitals_is_masked_too(tmp_path: Path) -> None:
    """The key was masked only as typed: a server echoing it URL-encoded or upper-cased printed it."""
    from urllib.parse import quote, quote_plus

    key = "SeCrEtKeY+/="

    class Echo(QuietHandler):
        def do_GET(self) -> None:
            said = f"bad key {quote(key, safe='')} / {key.upper()} / {quote_plus(key)}"
            send_json(self, 400, {"success": False, "error": said})

    with serving(Echo) as base:
        url = f"{base}/record/v2/search.json"
        result = eic(
            "harvest", "-o", tmp_path / "h.csv", "--api-url", url, "--retries", "0", env={"EUROPEANA_API_KEY": key}
        )
    assert_one_line_error(result, "bad key ***")
    assert "SECRETKEY" not in result.stderr.upper().replace("%2B", "+").replace("%2F", "/"), result.stderr
