"""The one pacer of eic's clients: a request rate, and pauses every request waits out.

The Thumbnail API is one server, so a per-host connection limit alone would still let a fast client send it
hundreds of requests a second; the Annotations API is asked for a polite rate (`rate`); the Search API's pace is
what the key's quota allows (``quota.py`` decides the pause, this keeps it).

Starts are spaced ``1 / rate`` seconds apart (no bursts), and a pause (a 429's ``Retry-After``) holds every
request, not only the one that was told: the server spoke about the client, not about one request. The
downloader's tasks share one with ``await limit.wait()``; a client of one thread calls ``limit.block()``.
"""

from __future__ import annotations

import asyncio
import time


class RateLimit:
    """``await limit.wait()`` (or ``limit.block()``) before each request; ``rate`` None or 0: no limit."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0  # monotonic time of the next free start

    def _claim(self) -> float | None:
        """Seconds until this request may start, its start claimed; None when there is no limit to keep."""
        now = time.monotonic()
        start = max(now, self._next)
        if not self.interval and start <= now:
            return None
        # Claimed before sleeping: an asyncio loop runs one task at a time, so no two tasks get the same start.
        self._next = start + self.interval
        return start - now

    async def wait(self) -> None:
        delay = self._claim()
        if delay is not None:
            await asyncio.sleep(delay)

    def block(self) -> None:
        """``wait`` for a client of one thread (the Search API's, the Annotations API's)."""
        delay = self._claim()
        if delay:
            time.sleep(delay)

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (a 429's Retry-After, a spent quota)."""
        self._next = max(self._next, time.monotonic() + max(0.0, seconds))
