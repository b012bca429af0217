"""europeana/annotations.py: what Europeana's Annotations API refuses, and eic's own rules."""

from __future__ import annotations

from typing import Any

import pytest

from europeana_imgcls.europeana.annotations import CONFIDENCE, publish_problem

from ..support import VOCAB, _made

# ---------------------------------------------------------------------------------------------
# Publishing only what Europeana should hold: hostile files, answers, settings (issue #31)


GOOD_SCOPE = "http://data.europeana.eu/item/9000/r0"


@pytest.mark.parametrize(
    "change",
    [
        {"target": "javascript:alert(1)"},
        {"target": {"scope": GOOD_SCOPE, "source": "javascript:alert(1)"}},
        {"target": {"scope": GOOD_SCOPE, "source": "https://images.example.org/a/../../b.jpg"}},
        {"target": {"scope": GOOD_SCOPE, "source": "https://images.example.org/a/%2E%2E/b.jpg"}},
        {"target": {"scope": GOOD_SCOPE, "source": "https://user:pw@images.example.org/b.jpg"}},
        {"target": {"scope": "http://data.europeana.eu/item/9000/../../user/1", "source": "https://i.example.org/1"}},
        {"target": "http://data.europeana.eu/item/9000/r0/.."},
        {"target": "http://data.europeana.eu/item/9000//r0"},
        {"target": "http://data.europeana.eu/item/9000/r0?view=1"},
        {"target": "http://data.europeana.eu/item/9000/r0\u202e"},
        {"target": {"scope": "http://evil.example.org/item/9000/r0", "source": "https://images.example.org/1"}},
        {
            "target": {
                "scope": "http://data.europeana.eu.evil.example.org/item/9000/r0",
                "source": "https://i.example/1",
            }
        },
        {"target": {"scope": "http://data.europeana.eu:8080/item/9000/r0", "source": "https://images.example.org/1"}},
        {"body": {"type": "SpecificResource", "source": "http://data.europeana.eu/concept/../item/1"}},
        {"body": {"type": "SpecificResource", "source": VOCAB["map"], "scope": "http://x.example.org/a/../b"}},
        {CONFIDENCE: float("nan")},
        {CONFIDENCE: float("inf")},
        {CONFIDENCE: 1.5},
        {CONFIDENCE: "0.9"},
    ],
)
def test_targets_sources_and_scopes_are_europeana_records_and_plain_web_addresses(change: dict[str, Any]) -> None:
    """The europeana profile targets Europeana's records (http://data.europeana.eu/item/DATASET/LOCAL, nothing
    else, no dot segment, no query); a source is an http(s) address without dot segments or credentials."""
    good = _made(1)[0]
    assert publish_problem(good) is None
    assert publish_problem({**good, **change}) is not None
