"""One retry policy for every HTTP client of eic (the Search API client, the image downloader, the
Annotations API client), and the one loop that sends with it (``send``, and ``send_async`` for the downloader).

What is worth another attempt is said once: the statuses in ``RETRYABLE``, and whatever a client's attempt calls
a passing failure (a timeout, a dropped connection), which it answers as a ``Failed``. How often and how long to
wait is decided by a ``Retry`` value as urllib3 has it: ``increment()`` after a failed attempt gives the next
state, ``is_exhausted()`` says when to stop, ``wait()`` how long to sleep first (the server's ``Retry-After``,
seconds or an HTTP date, when it gives one, else exponential backoff with jitter; never longer than the cap).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

# The statuses worth another attempt, for every client: 429 (slow down), and the 5xx that say "not now" rather
# than "never": 500, 502, 503, 504, and 520-524, the origin errors a CDN in front of an image host answers
# (Cloudflare's: the museum's server down, slow or out of reach). Not 501 or 505 (the server cannot do it, ever)
# nor any other 4xx (the request's own fault). It is the usual ``status_forcelist`` of urllib3's ``Retry``
# (429, 500, 502, 503, 504) and holds urllib3's ``RETRY_AFTER_STATUS_CODES`` but 413 (a body too large stays so).
RETRYABLE = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
# Of those, the answers of a gateway that passed the request on and then lost the server's answer (bad gateway,
# gateway timeout, a CDN's unknown error and its timeout): the server may have carried it out. A request that must
# not be carried out twice (an upload) is not sent again after one; its outcome is unknown until looked up.
MAY_HAVE_ACTED = frozenset({502, 504, 520, 524})
T = TypeVar("T")
log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Failed:
    """An attempt that failed for a passing reason (a status of ``RETRYABLE``, a timeout, a dropped connection):
    worth another. ``send`` gives back the last one, its ``attempts`` set, once the retries are spent."""

    reason: str  # short, after the service's name in the log: "answered 503", "timed out"; a download's error
    retry_after: str | None = None  # the server's Retry-After header, when it sent one
    response: Any = None  # the answer that said it (an httpx.Response), when one did
    error: BaseException | None = None  # the exception that said it, when one did
    attempts: int = 0  # on the failure ``send`` gives back: the attempts made in all


def _after(retry: Retry, failed: Failed, service: str | None) -> tuple[Retry, float | None]:
    """After a failed attempt: the next state and the seconds to wait before the next attempt (None: no more).
    Said when ``service`` names it, so that a user facing an unreachable API sees retries, not a silent wait."""
    retry = retry.increment()
    if retry.is_exhausted():
        return retry, None
    wait = retry.wait(failed.retry_after)
    if service:
        log.warning("%s %s; retry %d of %d in %.1f s", service, failed.reason, retry.failures, retry.total, wait)
    return retry, wait


def send(attempt: Callable[[], T | Failed], retry: Retry, service: str | None = None) -> T | Failed:
    """Call ``attempt`` until it answers something other than a ``Failed``, sleeping between attempts as ``retry``
    says; the last ``Failed`` (its ``attempts`` set) once the retries are spent."""
    while True:
        outcome = attempt()
        if not isinstance(outcome, Failed):
            return outcome
        retry, wait = _after(retry, outcome, service)
        if wait is None:
            return replace(outcome, attempts=retry.attempts)
        time.sleep(wait)


async def send_async(
    attempt: Callable[[], Awaitable[T | Failed]], retry: Retry, service: str | None = None
) -> T | Failed:
    """``send`` for a coroutine: the other tasks of the loop go on while this one waits."""
    while True:
        outcome = await attempt()
        if not isinstance(outcome, Failed):
            return outcome
        retry, wait = _after(retry, outcome, service)
        if wait is None:
            return replace(outcome, attempts=retry.attempts)
        await asyncio.sleep(wait)
