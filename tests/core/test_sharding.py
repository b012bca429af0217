"""core/sharding.py: which records a shard does."""

from __future__ import annotations

import hashlib

from europeana_imgcls.core.sharding import Shard, shard_of

# ---------------------------------------------------------------------------------------------
# Shards


def test_shards_partition_records_stably() -> None:
    ids = [f"/{k}/record_{k * 7}" for k in range(2000)]
    owners = [shard_of(i, 4) for i in ids]
    assert owners == [shard_of(i, 4) for i in ids]  # no salt: the same on every run and machine
    assert min(owners.count(k) for k in range(4)) > 400
    shards = [Shard.parse(f"{k}/4") for k in range(4)]
    assert all(sum(s.owns(i) for s in shards) == 1 for i in ids)
    assert shard_of("/2058612/object_1", 4) == int(hashlib.sha1(b"/2058612/object_1").hexdigest()[:16], 16) % 4
