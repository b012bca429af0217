"""One retry policy for every HTTP client of eic (the Search API client, the image downloader, the
Annotations API client).

What is worth retrying is decided by the caller (429, 5xx, timeouts, dropped connections); how often and how
long to wait is decided here, by a ``Retry`` value as urllib3 has it: ``increment()`` after a failed attempt
gives the next state, ``is_exhausted()`` says when to stop, ``wait()`` how long to sleep first (the server's
``Retry-After``, seconds or an HTTP date, when it gives one, else exponential backoff with jitter; never longer
than the cap).
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, replace


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (either form), or None when it says nothing usable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class Retry:
    """The retries a request has left. Immutable: each failed attempt makes the next state."""

    total: int  # retries allowed after the first attempt
    backoff: float = 0.5  # seconds before the first retry (doubled each time, with jitter)
    cap: float = 60.0  # never wait longer than this, whatever the server asks
    failures: int = 0  # failed attempts so far

    def increment(self) -> Retry:
        return replace(self, failures=self.failures + 1)

    def is_exhausted(self) -> bool:
        return self.failures > self.total

    @property
    def attempts(self) -> int:
        """Attempts made so far (a request whose first attempt failed has made one)."""
        return self.failures

    def wait(self, header: str | None = None) -> float:
        """Seconds to sleep before the next attempt: what the server asked for, else backoff with jitter."""
        asked = retry_after(header)
        if asked is None:
            asked = self.backoff * 2 ** max(self.failures - 1, 0) * (0.5 + random.random())
        return min(asked, self.cap)
