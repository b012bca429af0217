"""One journal under every output that is written record by record, resumed, sharded and merged (download,
predict, embed, enrich, harvest, publish).

A journal is a folder (``<output>.journal/``; a download keeps it inside its image folder as ``.journal/``):

    settings.json                          the settings every writer of this output must share
    part.ndjson                            the records of a run without shard
    part.shard-1-of-4.ndjson               shard 1 of 4's records (``--shard 1/4``)
    part.shard-1-of-4.rank-0.ndjson        ... of its torchrun rank 0
    part.shard-1-of-4.ndjson.lock          held by the process writing that part (its PID inside)

Its rules:

- **Framing.** A record is one line, ``[key, value]`` as JSON with every non-ASCII character escaped
  (``ensure_ascii``): no character of a value, U+2028, U+2029 or U+0085 included, can end a line or split a
  record, and a line is read back byte for byte whatever the platform's newline.
- **Identity.** A record is known by its key: the record ID, else where its file points, else its URL
  (``input_key``). Whatever reads a journal keeps the first record of each key.
- **Cuts.** A last line without its newline (a kill, a full disk, a power cut mid-write, even mid-character) is
  dropped and reported, never fatal; the writer trims it from its own part before appending. So is any line that
  is not ``[text, value]`` with the value the stage writes (``check``: a JSON object unless the stage says more):
  no stage is ever handed a number, a string or a list where it keeps an object.
- **Settings.** What must not change between the runs that write one output (the model, the split, the
  backbone...) is declared by the stage once, stored on the first write and compared on every later one,
  naming both values.
- **One writer per part.** A writer holds an exclusive lock on its part; a second one is refused in one line
  ("... is being written by process N on HOST"), and the run that merges the shards holds all of them. Shards and
  the run without shard exclude each other: each shard holds a shared lock on the unsharded part's lock, which
  the run without shard holds exclusively, so neither starts while the other writes.
- **The merge.** The stage says where its records end (``Output``: the path, its kind, how to read it back);
  the journal asks the output policy as it opens (a new output, or with ``resume`` eic's own; anything else is
  refused before a file is written), takes a finished output that ``resume`` adds to back in (the records no part
  holds), and at the end ``merge(write)``: every part locked, the first record of each key handed to the
  stage's ``write`` (which renames the output into place whole), then the parts removed. A kill at any point
  loses nothing and a resume writes every record once; a shard, or a torchrun rank but 0, leaves its part.
- **Only regular files.** A part, a lock or the settings that is a symbolic link, a FIFO, a device or a socket is
  refused in one line, never opened (a FIFO would hang the reader; a link would write somewhere else).
- **Cost.** Reading streams line by line; what a run keeps of the records it has read is 16 bytes of digest
  per key (``KeySet``), so memory stays flat in the size of the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError
from .locks import Held, Lock, holder_of
from .outputs import Claim, OutputKind, claim
from .sharding import TAG_PATTERN, Shard
from .sidecars import not_regular
from .tables import atomic_path, temp_path

log = logging.getLogger(__name__)

SETTINGS = "settings.json"
_PART = re.compile(rf"^part(?:\.({TAG_PATTERN}))?(?:\.rank-(\d+))?\.ndjson$")
Records = Iterator[tuple[str, Any]]


def input_key(record_id: str | None, image: str) -> str:
    """What an input is known by across runs, shards and resumes: its record, else where its file is (however
    the path was typed: ``new`` in one run, ``/data/new`` in another), else its URL."""
    if record_id:
        return record_id
    if image.lower().startswith(("http://", "https://")):
        return image
    return str(Path(image).resolve())


@dataclass(frozen=True)
class Part:
    """Whose part a file of the journal is: a shard's (or the run without shard's: None), a torchrun rank's (or
    the whole job's: None). The one naming scheme of the files writers append to, both ways."""

    shard: Shard | None = None
    rank: int | None = None

    @property
    def name(self) -> str:
        """``part.ndjson``, ``part.shard-1-of-4.ndjson``, ``part.shard-1-of-4.rank-0.ndjson``."""
        shard = f".{self.shard.tag}" if self.shard else ""
        return f"part{shard}" + (f".rank-{self.rank}" if self.rank is not None else "") + ".ndjson"

    @classmethod
    def of(cls, name: str) -> Part | None:
        """The part a file name is, or None for a file that is not a part (its lock, the settings, a stranger)."""
        match = _PART.match(name)
        if match is None:
            return None
        return cls(Shard.from_tag(match[1]) if match[1] else None, int(match[2]) if match[2] is not None else None)

    def order(self) -> tuple[int, int]:
        """Shards in order, then the run without shard (the one that merges them, so the newest)."""
        return (self.shard.index if self.shard else 1 << 62, self.rank if self.rank is not None else -1)


def part_name(shard: Shard | None = None, rank: int | None = None) -> str:
    return Part(shard, rank).name


@dataclass(frozen=True)
class Output:
    """What a journal's records end in, as the output policy and a resume see it: where it is, its kind
    (``core/outputs.py``), the option that chose it, and ``read``: its records, keyed as the journal keys them,
    for a resume that adds to a finished output (None: there is nothing to take back into the journal)."""

    path: Path
    kind: OutputKind
    read: Callable[[], Iterable[tuple[str, Any]]] | None = None
    option: str = "output"


def json_line(value: Any) -> str:
    """JSON for one line of a JSON Lines file people read: non-ASCII kept readable, but the three characters
    that some line splitters take for a line end (U+2028, U+2029, U+0085) escaped, as JSON allows."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def is_object(value: Any) -> bool:
    """What every stage journals: a JSON object (the journal's default ``check``)."""
    return isinstance(value, dict)


SCAN_BLOCK = 2**20  # bytes read at a time by ``Journal.mentions``


def frame(key: str, value: Any) -> bytes:
    """One record as the journal stores it: a line of ASCII."""
    try:
        text = json.dumps([key, value], ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise DatasetError(
            f"the record of {key!r} holds a number JSON cannot hold (NaN or infinity); it is not written"
        ) from None
    return text.encode("ascii") + b"\n"


class KeySet:
    """A set of keys kept as 16-byte digests in one sorted array: 16 MB per million keys."""

    def __init__(self, digests: bytes | bytearray = b"") -> None:
        self._sorted = np.unique(np.frombuffer(bytes(digests), dtype="S16"))

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not len(self._sorted):
            return False
        digest = np.array(self.digest(key), dtype="S16")
        at = int(np.searchsorted(self._sorted, digest))
        return at < len(self._sorted) and self._sorted[at] == digest


class Journal:
    """The journal of one output, as one writer (a shard, a rank, or the run that merges them) sees it.

    ``what`` names the output in messages ("predictions into out.csv"); ``settings`` are what every writer
    must share; ``hint`` says what to do when they differ; ``check`` says whether a value read back is one the
    stage writes (a line whose value is not is dropped and said, as a cut one is)."""

    def __init__(
        self,
        folder: Path,
        *,
        what: str,
        settings: Mapping[str, Any],
        shard: Shard | None = None,
        rank: int | None = None,
        hint: str = "run with the settings it was started with, or choose another output",
        check: Callable[[Any], bool] = is_object,
    ) -> None:
        self.folder, self.what, self.settings, self.hint, self.check = folder, what, dict(settings), hint, check
        self.shard, self.rank = shard, rank
        self.part = folder / Part(shard, rank).name
        self.cut = 0  # records dropped because their line was cut short
        self._locks: dict[Path, Lock] = {}
        self._handle: Any = None

    # -- opening and closing

    def open(self, resume: bool = True, output: Output | None = None) -> Journal:
        """Take this writer's part (locked), check the settings, trim a cut last record; ready to append.

        Without ``resume`` a writer starts afresh: the records it would carry on from (its own, or for the merging
        run any shard's) are not silently taken over, and settings left by an earlier, finished output give way.

        ``output``, where the records end: asked of the output policy first (``outputs.claim``: a new one, or
        with ``resume`` eic's own to carry on; anything else refused before a file is written), by one process
        of a job (not every torchrun rank); and a finished one that ``resume`` adds to is taken in (``_adopt``)."""
        found = self._claim(output, resume)
        if self.folder.is_symlink():
            raise DatasetError(
                f"{self.folder} is a symbolic link: eic keeps the journal of {self.what} only in a folder of its "
                "own; remove the link (or choose another output)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock(self.part)
            self._exclude_the_other_kind()
            _refuse_unless_regular(self.part, self.what)  # appended to, trimmed: through a link it would be another
            if not resume:
                self._fresh()
            # A finished output whose records a resume takes in (predict's, enrich's, embed's): its journal's
            # settings are what say which model wrote them.
            adopted = output if found is Claim.RESUME and output is not None and output.read is not None else None
            if adopted is not None and not (self.folder / SETTINGS).is_file():
                raise DatasetError(
                    f"{adopted.path} exists, but its journal ({self.folder}) no longer says what wrote it (its "
                    "settings: the model, the runtime): a resume cannot tell whether its records are this run's; "
                    "write to another output, or remove it and run again"
                )
            self._check_settings()
            self._trim(self.part)
            self._handle = self.part.open("ab")
            if adopted is not None and adopted.read is not None and self.merges:
                self._adopt(adopted.read)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Journal:
        return self if self._handle is not None else self.open()

    @property
    def merges(self) -> bool:
        """Whether this writer is the one that merges: the run without shard (rank 0 of it under torchrun)."""
        return self.shard is None and self.rank in (None, 0)

    def _claim(self, output: Output | None, resume: bool) -> Claim | None:
        if output is None or self.rank not in (None, 0):  # one process of a job asks, as the output is one
            return None
        return claim(output.path, output.kind, resume=resume, option=output.option)

    def _adopt(self, read: Callable[[], Iterable[tuple[str, Any]]]) -> None:
        """A resume that adds to a finished output: its records go into this part, as if this run had written
        them, so the merge writes them again. Only those no part holds: a part's record of a key wins over the
        output's, as it would in the merge, and a resume killed before its merge takes none in twice."""
        done = self.done()
        for key, value in read():
            if key not in done:
                self.append(key, value)
        self.flush()

    def _exclude_the_other_kind(self) -> None:
        """Shards and the run without shard never write at once (the merge would take a part still growing, and
        both would do the same records): a shard holds the unsharded part's lock shared, the run without shard
        holds it exclusively, and also takes every shard's lock as it starts."""
        unsharded = self.folder / Part().name
        if self.shard is not None:
            self._lock(unsharded, shared=True)
        elif self.rank is None:  # the ranks of one torchrun job share the job's parts: none of them claims
            for lock in self._shard_locks():
                self._lock(lock.with_name(lock.name.removesuffix(".lock")))

    def _fresh(self) -> None:
        if self.has_records():
            if self.shard is not None:  # the folder holds every shard's work, not this one's alone
                raise DatasetError(
                    f"unfinished work on {self.what} is in {self.folder}, every shard's: pass `resume` to carry on "
                    f"shard {self.shard.index}/{self.shard.count} (deleting that folder would lose the other shards' "
                    "work too)"
                )
            raise DatasetError(
                f"unfinished work on {self.what} is in {self.folder} (an interrupted run, or shards "
                "to merge): pass `resume` to carry on, or delete that folder to start again"
            )
        everyone = [p for p in self.folder.iterdir() if Part.of(p.name)]
        if not any(p.stat().st_size for p in everyone):  # no writer at work: earlier settings are not binding
            (self.folder / SETTINGS).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and let go of every part this writer holds; nothing is lost, everything is kept."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()

    # -- writing

    def append(self, key: str, value: Any) -> None:
        self._handle.write(frame(key, value))

    def flush(self) -> None:
        """What was appended reaches the file (a kill after this loses none of it)."""
        self._handle.flush()

    # -- reading

    def parts(self) -> list[Path]:
        """This writer's parts and those it stands for: a shard its own (every rank's), the merging run all."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            part = Part.of(path.name)
            if part and (self.shard is None or part.shard == self.shard):
                _refuse_unless_regular(path, self.what)
                found.append((part.order(), path))
        return [path for _, path in sorted(found)]

    def has_records(self) -> bool:
        return any(p.stat().st_size for p in self.parts())

    def mentions(self, text: bytes) -> bool:
        """Whether any part holds ``text`` as written (``frame``'s compact JSON): a scan at the disk's pace, where
        reading the records parses every line, to learn whether a rare record is there at all."""
        tail = len(text) - 1
        for path in self.parts():
            with path.open("rb") as handle:
                carried = b""
                while block := handle.read(SCAN_BLOCK):
                    if text in carried + block:
                        return True
                    carried = block[-tail:] if tail > 0 else b""
        return False

    def done(self, also: Iterable[str] = ()) -> KeySet:
        """The keys of every record in ``parts()`` (what is done), and ``also`` those."""
        digests = bytearray()
        for key in also:
            digests += KeySet.digest(key)
        for path in self.parts():
            for key in _keys(path, self):
                digests += KeySet.digest(key)
        return KeySet(digests)

    def entries(self) -> Iterator[tuple[str, Any]]:
        """Every record of ``parts()`` in order, repeats included (for a reader that lets the last one win)."""
        for path in self.parts():
            yield from _read(path, self)

    def records(self, report: bool = False) -> Iterator[tuple[str, Any]]:
        """Every record of ``parts()`` in order, the first of each key only: two streaming passes, one to find
        the first of each key, one to hand them over. ``report``: say what is dropped (a reader that has not
        already, by ``done()``)."""
        parts = self.parts()
        digests = bytearray()
        for path in parts:
            for key in _keys(path, self, report=report):
                digests += KeySet.digest(key)
        keep = np.zeros(len(digests) // 16, dtype=bool)
        if len(keep):
            keep[np.unique(np.frombuffer(bytes(digests), dtype="S16"), return_index=True)[1]] = True
        position = 0
        for path in parts:
            for key, value in _read(path, self, report=False):
                if keep[position]:
                    yield key, value
                position += 1

    # -- merging and finishing

    def merge(self, write: Callable[[Records], None]) -> None:
        """The end of a run: every part's records, the first of each key in part order, handed to ``write``, the
        stage's writer of its output, which writes it whole or not at all (``tables.atomic_path``); then the
        parts go, the settings stay. Only the writer that ``merges`` does: a shard leaves its part for the run
        without shard, a torchrun rank its own for rank 0.

        The order loses nothing to a kill: every part's lock is taken first (no shard can still be writing what
        is merged); until ``write`` has renamed the output into place the parts are whole, and after it a part
        left behind holds only what the output holds, taken in once by a resume (``_adopt``) and merged again."""
        if not self.merges:
            return
        for path in self.parts():
            self._lock(path)
        write(self.records())
        self._remove_parts()

    def _remove_parts(self) -> None:
        """Once their records are in the output: the parts (and their locks) go; the settings stay."""
        for path in self.parts():
            path.unlink(missing_ok=True)
            lock = self._locks.pop(path, None)
            if lock is not None:
                lock.release(remove=True)

    def remove_own_part(self) -> None:
        """This writer's part, once what it holds is kept elsewhere (its lock stays held until ``close``)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.part.unlink(missing_ok=True)

    # -- internals

    def _lock(self, path: Path, shared: bool = False) -> None:
        if path in self._locks:
            return
        try:
            self._locks[path] = Lock(path.with_name(path.name + ".lock"), self.what, shared)
        except Held as held:
            raise DatasetError(self._busy(held)) from None

    def _shard_locks(self) -> list[Path]:
        """The lock files of the shards' parts, whether a shard holds them or not."""
        return sorted(
            lock
            for lock in self.folder.glob("*.lock")
            if (part := Part.of(lock.name.removesuffix(".lock"))) and part.shard is not None
        )

    def _busy(self, held: Held) -> str:
        """Who holds the output, in one line with what to do."""
        then = "wait for it to finish (or stop it), then run again"
        if held.shared:  # this shard, and a run without shard that writes the whole output
            return f"{self.what} is being written by a run without `shard` ({held.holder}): {then}"
        if held.by_shards:  # this run without shard, and shards still at work
            held_by = (holder_of(lock) for lock in self._shard_locks())
            busy = "; ".join(holder for holder in held_by if holder) or "its shards"
            return f"{self.what} is being written by its shards ({busy}): wait for them to finish, then run again"
        return f"{self.what} is being written by {held.holder}: {then}"

    def update_older_settings(self, update: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Before ``open``: the settings an older eic recorded, as this one records the same settings (a key it did
        not record yet, a value it wrote another way), so that its journal still carries on; ``update`` gives
        them. Settings that differ in substance are still refused by ``open``."""
        path = self.folder / SETTINGS
        if not path.is_file():
            return
        before = _settings(path)
        after = update(dict(before))
        if after != before:
            with atomic_path(path) as tmp:
                tmp.write_text(_settings_text(after), encoding="utf-8")

    def check_settings(self) -> None:
        """Refuse, as ``open`` does, a journal started with other settings; reads only (a dry run's question)."""
        if (self.folder / SETTINGS).is_file():
            self._refuse_other_settings()

    def _check_settings(self) -> None:
        path = self.folder / SETTINGS
        if not path.is_file() and _create(path, self._wanted()):
            return
        self._refuse_other_settings()

    def _wanted(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.settings))  # as JSON gives them back: tuples are lists

    def _refuse_other_settings(self) -> None:
        before, wanted = _settings(self.folder / SETTINGS), self._wanted()
        differ = [k for k in sorted({*before, *wanted}) if before.get(k) != wanted.get(k)]
        if differ:
            said = "; ".join(f"{k}: {_shown(before.get(k))} then, {_shown(wanted.get(k))} now" for k in differ)
            raise DatasetError(f"{self.what} was started with other settings ({said}): {self.hint}")

    def _trim(self, path: Path) -> None:
        """Cut a last record short of its newline off the writer's own part."""
        if not path.is_file():
            return
        with path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if not size:
                return
            end = size
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                block = handle.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end < size:
                handle.truncate(end)
                self.cut += 1
                log.warning(
                    "%s: dropped a record cut short at the end of %s (an interrupted write); it is done again",
                    self.what,
                    path.name,
                )


def _lines(path: Path, journal: Journal, report: bool = True) -> Iterator[bytes]:
    """The whole lines of a part; a cut last line is counted and reported, not handed over."""
    try:
        _refuse_unless_regular(path, journal.what)
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield line
            elif line.strip(b"\0 \t\r") and report:  # a power cut can leave zeros where a record was
                journal.cut += 1
                log.warning(
                    "%s: dropped a record cut short at the end of %s (an interrupted write)", journal.what, path.name
                )


def _keys(path: Path, journal: Journal, report: bool = True) -> Iterator[str]:
    return (key for key, _ in _read(path, journal, report))


def _read(path: Path, journal: Journal, report: bool = True) -> Iterator[tuple[str, Any]]:
    """The readable records of a part; a damaged line (not one the journal wrote whole, or a value that is not
    what the stage writes) is skipped."""
    for line in _lines(path, journal, report):
        record = _record(line, journal.check)
        if record is not None:
            yield record
        elif report:
            _damaged(journal, path)


def _record(line: bytes, check: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """``[key, value]`` from one line, or None for anything else: not JSON, nested past the parser's depth, a
    NaN the journal never writes, a key that is not text, a value the stage's ``check`` refuses (or trips on)."""
    try:
        value = json.loads(line, parse_constant=_no_constant)
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and check(value[1]):
            return value[0], value[1]
    except Exception:  # UnicodeDecodeError, ValueError, RecursionError; or a stage's check that trips on a value
        return None
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _damaged(journal: Journal, path: Path) -> None:
    journal.cut += 1
    log.warning("%s: skipped a damaged record in %s", journal.what, path.name)


def _create(path: Path, settings: Any) -> bool:
    """Write the settings if no writer has: True when this one did (atomic: link, never overwrite)."""
    tmp = temp_path(path)
    tmp.write_text(_settings_text(settings), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: a plain rename (the race it leaves is harmless here)
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _settings_text(settings: Any) -> str:
    return json.dumps(settings, indent=1, sort_keys=True) + "\n"


def _settings(path: Path) -> dict[str, Any]:
    try:
        _refuse_unless_regular(path, "the journal's settings")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise DatasetError(f"{path} is unreadable: delete it (and the journal's parts) to start again") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a journal's settings: delete it to start again")
    return data


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse_unless_regular(path: Path, what: str) -> None:
    """A file a journal reads is a regular file: a FIFO would hang the reader, a link lead elsewhere."""
    kind = not_regular(path)
    if kind is not None:
        raise DatasetError(f"{path} is {kind}, not a journal file of {what}: remove it, then run again")


def read_records(path: Path, check: Callable[[Any], bool] = is_object) -> Iterable[tuple[str, Any]]:
    """The records of one part file, for tools and tests (cut and damaged lines left out)."""
    journal = Journal(path.parent, what=str(path), settings={}, check=check)
    return _read(path, journal)
