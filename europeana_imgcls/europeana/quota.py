"""An API key's request quota, as Europeana's key service announces it, and the pace that stays inside it.

The key service counts requests in fixed windows (an hour by default: about 1,000 requests for a personal
key, 10,000 for a project key) and says so on every answer, in the IETF draft headers::

    RateLimit-Policy: "personal";q=1000;w=3600     # quota q per window of w seconds
    RateLimit: "personal";r=998;t=3412              # r requests left, the window resets in t seconds

(the older draft's ``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` are read too). A client that knows
how many requests it still needs spaces them so that the quota lasts until the window resets, and waits
for the reset when it is spent, instead of running into 429s.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_PARAM = re.compile(r"(?:^|;)\s*([a-z]+)\s*=\s*(\d+(?:\.\d+)?)(?![\w.])")  # a whole number: not 1 of 1e400


@dataclass
class Quota:
    """What the last answer said about the key's quota; ``seen`` is when (``time.monotonic()``)."""

    limit: int  # requests per window
    window: float  # seconds
    remaining: int
    reset: float  # seconds from ``seen`` until the window resets
    seen: float = field(default_factory=time.monotonic)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Quota | None:
        """The quota an answer announces, or None when it announces none (``httpx.Headers`` is such a mapping)."""
        get = headers.get
        policy, state = _params(get("RateLimit-Policy")), _params(get("RateLimit"))
        limit = policy.get("q") or _number(get("RateLimit-Limit"))
        remaining = state.get("r", _number(get("RateLimit-Remaining")))
        reset = state.get("t", _number(get("RateLimit-Reset")))
        if limit is None or remaining is None or reset is None:
            return None
        # Without a policy the window is unknown: an hour, Europeana's default, rather than the time left in it.
        return cls(int(limit), float(policy.get("w") or 3600), int(remaining), float(reset))

    def reset_in(self) -> float:
        """Seconds until the window resets, from now."""
        return max(0.0, self.reset - (time.monotonic() - self.seen))

    def spend(self) -> None:
        """One request made since the answer was read (the next answer corrects the count)."""
        self.remaining = max(0, self.remaining - 1)

    def renew(self) -> None:
        """The window has reset: a full quota, the next reset a window away."""
        self.remaining, self.reset, self.seen = self.limit, self.window, time.monotonic()

    def waiting(self, needed: int) -> float:
        """Seconds of waiting for the quota that ``needed`` more requests take (0 when they fit now)."""
        if needed <= self.remaining:
            return 0.0
        windows = math.ceil((needed - self.remaining) / max(self.limit, 1))
        return self.reset_in() + (windows - 1) * self.window

    def pause_before_next(self, needed: int) -> float:
        """How long to wait before the next request: until the reset when nothing is left; spread over the
        window when more is needed than is left (the last request lands as the window resets); else 0."""
        if self.remaining <= 0:
            return self.reset_in()
        if needed > self.remaining:
            return self.reset_in() / self.remaining
        return 0.0

    def describe(self) -> str:
        return (
            f"{self.limit} requests per {duration(self.window)} ({self.remaining} left, resets in "
            f"{duration(self.reset_in())})"
        )


MOST = 1e9  # a count or a number of seconds (31 years) past which a header says nothing believable


def _params(value: str | None) -> dict[str, float]:
    if not value:
        return {}
    found = {key: _sane(float(number)) for key, number in _PARAM.findall(value.lower())}
    return {key: number for key, number in found.items() if number is not None}


def _number(value: str | None) -> float | None:
    try:
        return _sane(float(value)) if value is not None else None
    except ValueError:
        return None


def _sane(number: float) -> float | None:
    """A header's number, or None when no server means it: not finite, negative, or past ``MOST``."""
    return number if math.isfinite(number) and 0 <= number <= MOST else None


def duration(seconds: float) -> str:
    """3 s, 12 min, 2.5 h: as a person says it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
