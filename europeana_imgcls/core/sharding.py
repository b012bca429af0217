"""Shards: one job split over independent processes on any scheduler (Slurm arrays, Kubernetes Indexed
Jobs, GNU parallel), with no coordinator.

A record belongs to shard ``hash(ID) mod N``: SHA-1 of its ID, so the same on every run, machine and
Python (the built-in ``hash`` is salted per process). Shards write only files named for their shard;
a final run without ``--shard`` sees their work as done and writes the merged outputs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import ConfigError

_SHAPE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# A shard's name in the files it writes (``tag``), as a pattern that finds it inside a longer name.
TAG_PATTERN = r"shard-\d+-of-\d+"
_TAG = re.compile(r"^shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, as ``SLURM_ARRAY_TASK_ID`` and ``JOB_COMPLETION_INDEX`` are)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 0 <= I < N."""
        problem = shard_problem(text)
        if problem:
            raise ConfigError(f"`shard` {text!r}: {problem}")
        index, count = (int(part) for part in text.replace(" ", "").split("/"))
        return cls(index, count)

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    @property
    def tag(self) -> str:
        """The part of a file name that says which shard wrote it: ``shard-2-of-4``."""
        return f"shard-{self.index}-of-{self.count}"

    @classmethod
    def from_tag(cls, tag: str) -> Shard | None:
        """The shard a file name's ``tag`` names (read back as written, whoever wrote it), or None."""
        match = _TAG.match(tag)
        return cls(int(match[1]), int(match[2])) if match else None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_problem(text: str) -> str | None:
    """Why ``text`` is not a shard ``I/N``, or None."""
    match = _SHAPE.match(text)
    if not match:
        return "write it as I/N, e.g. 0/4 for the first of four shards"
    index, count = int(match[1]), int(match[2])
    if count < 1:
        return "N, the number of shards, must be at least 1"
    if index >= count:
        return f"shards of {count} are numbered 0 to {count - 1}"
    return None


def shard_of(key: str, count: int) -> int:
    """The shard of a record ID (or any key) among ``count``: stable across runs and machines."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(text: str | None) -> Shard | None:
    return Shard.parse(text) if text else None
