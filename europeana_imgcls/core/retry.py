"""One retry policy for every HTTP client of eic (the Search API client and the image downloader).

What is worth retrying is decided by the caller (429, 5xx, timeouts, dropped connections); how long to
wait is decided here: the server's ``Retry-After`` (seconds or an HTTP date) when it gives one, else
exponential backoff with jitter; never longer than the caller's cap.
"""

from __future__ import annotations

import email.utils
import random
import time


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


def wait_before(attempt: int, header: str | None = None, *, base: float = 0.5, cap: float = 60.0) -> float:
    """Seconds to wait before retry ``attempt + 1``: what the server asked for, else backoff with jitter."""
    asked = retry_after(header)
    if asked is None:
        asked = base * 2**attempt * (0.5 + random.random())
    return min(asked, cap)
