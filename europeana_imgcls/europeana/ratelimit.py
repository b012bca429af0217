"""A request rate shared by every task of one asyncio loop: the Thumbnail API is one server, so a
per-host connection limit alone would still let a fast client send it hundreds of requests a second.

Starts are spaced ``1 / rate`` seconds apart (no bursts), and a 429's ``Retry-After`` pauses every
task, not only the one that was told: the server spoke about the client, not about one request.
"""

from __future__ import annotations

import asyncio
import time


class RateLimit:
    """``await limit.wait()`` before each request; ``rate`` None or 0: no limit."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0  # monotonic time of the next free start

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        if not self.interval and start <= now:
            return
        # Claimed before sleeping: the loop runs one task at a time, so no two tasks get the same start.
        self._next = start + self.interval
        await asyncio.sleep(start - now)

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (a 429's Retry-After)."""
        self._next = max(self._next, time.monotonic() + max(0.0, seconds))
