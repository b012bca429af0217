"""europeana/quota.py: the key's quota read from the RateLimit headers of both drafts."""

from __future__ import annotations

from europeana_imgcls.europeana.quota import Quota

# ---------------------------------------------------------------------------------------------
# The key's quota


def test_quota_headers_are_read_in_both_drafts() -> None:
    quota = Quota.from_headers({"RateLimit-Policy": '"personal";q=1000;w=3600', "RateLimit": '"personal";r=7;t=42'})
    assert quota is not None and (quota.limit, quota.window, quota.remaining, quota.reset) == (1000, 3600, 7, 42)
    old = Quota.from_headers({"RateLimit-Limit": "50", "RateLimit-Remaining": "0", "RateLimit-Reset": "9"})
    assert old is not None and (old.limit, old.remaining) == (50, 0)
    assert Quota.from_headers({}) is None
    assert quota.waiting(7) == 0 and 3600 + 40 <= quota.waiting(1008) <= 3600 + 42


# ---------------------------------------------------------------------------------------------
# Found in review


def test_old_draft_headers_without_a_window_assume_an_hour() -> None:
    quota = Quota.from_headers({"RateLimit-Limit": "1000", "RateLimit-Remaining": "0", "RateLimit-Reset": "60"})
    assert quota is not None and quota.window == 3600 and quota.waiting(2000) >= 3600
