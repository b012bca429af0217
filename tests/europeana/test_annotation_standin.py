"""europeana/annotation_standin.py: the sandbox's Annotations API answers as Europeana's does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from europeana_imgcls.europeana.annotation_standin import SANDBOX_TOKEN
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.outputs.publish import publish

from ..support import _config, _items, _made, _write, sandbox_config

# ---------------------------------------------------------------------------------------------
# Publish and withdraw


def test_the_stand_in_refuses_what_europeana_refuses(enriched) -> None:
    """The upload shapes Europeana's parser and validator reject, as the stand-in answers them."""
    import httpx

    good = _items(enriched["path"]["europeana.jsonl"])[0]
    with Sandbox(sandbox_config(per_level=2)) as sb:

        def post(page: dict[str, Any], token: str | None = SANDBOX_TOKEN) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{sb.base_url}/annotations/", json=page, headers=headers)

        page = {"@context": "http://www.w3.org/ns/anno.jsonld", "type": "AnnotationPage", "items": [good]}
        labelled = post({**page, "label": "eic"})
        assert labelled.status_code == 500 and "Unsupported Property: label" in labelled.json()["error"]
        collection = post({"type": "AnnotationCollection", "first": page})
        assert collection.status_code == 500 and "Unsupported Property: first" in collection.json()["error"]
        long_tag = dict(good, body={"value": "x" * 70})
        report = post({**page, "items": [good, long_tag]})
        assert report.status_code == 400 and report.json()["operationReport"]["errors"] == {
            "0": "Invalid tag size. Must be shorter then 64 characters! tag.size: 70"
        }
        assert post(page, token=None).status_code == 401 and not sb.annotations.live()  # all or nothing
        stored = post(page)
        assert stored.status_code == 201 and stored.json()["items"][0]["id"].startswith(
            "http://data.europeana.eu/annotation/"
        )
        assert post(page).status_code == 201 and len(sb.annotations.live()) == 2  # no duplicate check


# ---------------------------------------------------------------------------------------------
# Publishing only what Europeana should hold: hostile files, answers, settings (issue #31)


ANNOTATION = "http://data.europeana.eu/annotation/"


def test_the_stand_ins_search_answers_in_europeanas_shape_page_by_page(tmp_path: Path) -> None:
    import httpx

    path = _write(tmp_path / "a.jsonl", _made(12))
    generator = _made(1)[0]["generator"]["id"]
    with Sandbox(sandbox_config(per_level=2)) as sb:
        publish(_config(path, sb))
        url = f"{sb.base_url}/annotation/search"
        query = f'generator_uri:"{generator}"'
        first = httpx.get(url, params={"query": query, "pageSize": "5", "profile": "standard"}).json()
        assert first["type"] == "AnnotationPage" and first["total"] == 5 and first["partOf"]["total"] == 12
        assert len(first["items"]) == 5 and "page=1" in first["next"] and "prev" not in first
        last = httpx.get(url, params={"query": query, "pageSize": "5", "page": "2"}).json()
        assert last["total"] == 2 and "next" not in last and "page=1" in last["prev"]
        minimal = httpx.get(url, params={"query": query, "pageSize": "5", "profile": "minimal"}).json()
        assert all(isinstance(i, str) and i.startswith(ANNOTATION) for i in minimal["items"])
        none = httpx.get(url, params={"query": 'generator_uri:"http://nobody.example.org/"'}).json()
        assert none["total"] == 0 and "items" not in none
        assert httpx.get(url, params={"query": query, "pageSize": "101"}).status_code == 400
