"""europeana/ratelimit.py: the one pacer of the three clients."""

from __future__ import annotations

import asyncio
import time

import pytest

from europeana_imgcls.europeana.ratelimit import RateLimit

# ---------------------------------------------------------------------------------------------
# One request rate for the whole client


@pytest.mark.waits
def test_a_429_pauses_every_request_not_only_its_own() -> None:
    async def run() -> list[float]:
        limit = RateLimit(100.0)
        await limit.wait()
        limit.pause(0.3)  # what one task heard in a Retry-After
        started = time.monotonic()
        for _ in range(3):
            await limit.wait()
        return [time.monotonic() - started]

    assert asyncio.run(run())[0] >= 0.3
