"""Where each record's image belongs when ``eic download`` fills a folder it filled before.

A table whose labels changed (``eic review apply``) names the same records under other classes. Fetching them
again would leave the old copy in its old class folder: the noise stays in training, and the record sits in two
classes. So before a record is fetched, the folder is asked whether it holds the record already, elsewhere:
the file is moved to where the table now puts it (no request). When the run has gone through the whole table
and was asked to (``prune``), the records the table no longer holds are set aside, out of the class folders, into
``SET_ASIDE`` (a hidden folder that training never reads), and listed in ``SET_ASIDE_LIST``: the folder then holds
exactly the table's records, each in its current class. Unasked, they stay where they are, and are counted.

Only record files directly inside the class folders (single-label) or the folder itself (multi-label) are ever
moved: to where the table puts the record a file is named for, or (``prune``) into ``SET_ASIDE`` when it is one
eic saved (its lists and journal name it, or the pilot's ``[ph]`` name does); nothing is deleted, and a file set
aside never replaces one set aside before (``NAME~2.jpg``), every run's listed. A shard moves only the
records it owns, so shards sharing a folder never move the same file.

Nothing is moved, set aside or written through a symbolic link (it may lead out of the folder, to files that are
not eic's), and nothing but a regular file is ever opened where a record's image belongs (a FIFO would hang the
run): a class folder or the set-aside folder that is a link, or a record's path that holds a link, a FIFO, a
device, a socket or a folder, is refused in one line before any work, and what it leads to is left as it is.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

from ..core.errors import DatasetError
from ..core.naming import SUFFIX, id_named, record_id_of
from ..core.sharding import Shard
from ..core.sidecars import not_regular
from ..core.tables import write_csv

SET_ASIDE = ".eic-set-aside"
SET_ASIDE_LIST = "set_aside.csv"


class Placement:
    """The record files a folder holds, by name, and what a run has done with them. ``saved``: the files runs
    saved here (file name -> record ID, from the folder's lists and journal), which ``prune`` may set aside beside
    the pilot's ``[ph]`` names; a file of any other name is moved only to where the table puts the record it is
    named for (a class changed), never set aside."""

    def __init__(
        self, root: Path, multi_label: bool, shard: Shard | None = None, saved: Mapping[str, str] | None = None
    ) -> None:
        self.root, self.shard = root, shard
        self.found: defaultdict[str, list[Path]] = defaultdict(list)  # file name -> where it is
        self.ours: dict[str, str] = {}  # of them, those eic named (a record's, this shard's): name -> record ID
        self.claimed: set[str] = set()  # file names the table holds
        self.moved = 0
        self.set_aside: list[tuple[str, str, str]] = []  # (record ID, where it was, where it is) of each set aside
        _refuse_link(root, root / SET_ASIDE)
        folders = [root] if multi_label else _class_folders(root)
        for folder in folders:
            with os.scandir(folder) as entries:
                for entry in entries:
                    self._found(entry, saved or {})

    def _found(self, entry: os.DirEntry[str], saved: Mapping[str, str]) -> None:
        name = entry.name
        if not name.endswith(SUFFIX) or name.startswith("."):
            return
        record = record_id_of(name) or saved.get(name)
        regular = entry.is_file(follow_symlinks=False)  # the entry's type, known without a system call
        if record and not regular:
            _refuse_unless_regular(self.root, Path(entry.path))
        if not regular:
            return
        owner = record or id_named(name)  # a hashed name no run listed: its record is known only to the table
        if self.shard is not None and (owner is None or not self.shard.owns(owner)):
            return
        self.found[name].append(Path(entry.path))
        if record:
            self.ours[name] = record

    def place(self, target: Path) -> bool:
        """Claim ``target`` for the table; True when the record's file is there now (moved from another class
        folder if need be), False when it must be fetched. A copy left in another class is set aside."""
        name = target.name
        self.claimed.add(name)
        copies = [p for p in self.found.pop(name, []) if p != target]
        if not target.exists() and copies:
            os.replace(copies.pop(0), target)  # the same file system: a rename, never a copy
            self.moved += 1
        for stale in copies:  # the record in two classes: only the table's one stays
            self._set_aside(stale)
        return target.exists()

    def replaced(self, target: Path) -> None:
        """``target`` is the record's file, of another image than its table names now: set aside, to be fetched."""
        self._set_aside(target)

    def unclaimed(self) -> int:
        """After a complete run: how many record files the table did not claim (left where they are)."""
        return sum(len(self.found[name]) for name in self.ours if name not in self.claimed and name in self.found)

    def set_aside_the_rest(self) -> None:
        """After a complete run: every record file the table did not claim is set aside."""
        for name in self.ours:
            if name not in self.claimed:
                for path in self.found.get(name, []):
                    self._set_aside(path)
        self.found.clear()

    def _set_aside(self, path: Path) -> None:
        where = self.root / SET_ASIDE / path.parent.relative_to(self.root)
        for folder in {self.root / SET_ASIDE, where}:  # checked again as it is used: it may have changed since
            _refuse_link(self.root, folder)
        where.mkdir(parents=True, exist_ok=True)
        stem = path.name.removesuffix(SUFFIX)
        kept = _free(where, lambda n: f"{stem}~{n}{SUFFIX}" if n > 1 else path.name)  # an earlier one stays too
        os.replace(path, kept)
        record = self.ours.get(path.name) or id_named(path.name) or path.name
        self.set_aside.append(
            (record, path.relative_to(self.root).as_posix(), kept.relative_to(self.root / SET_ASIDE).as_posix())
        )


def _free(folder: Path, named: Callable[[int], str]) -> Path:
    """The first of ``folder / named(1)``, ``named(2)``... where nothing is yet."""
    n = 1
    while os.path.lexists(folder / named(n)):
        n += 1
    return folder / named(n)


SET_ASIDE_COLUMNS = ["ID", "was", "kept_as"]


def write_set_aside(root: Path, rows: list[tuple[str, str, str]], shard: Shard | None) -> Path:
    """``set_aside.csv``: each record set aside, where it was and where it is in ``SET_ASIDE``, every run's rows
    after the earlier runs' (a shard writes its own list)."""
    path = root / (f"set_aside.{shard.tag}.csv" if shard else SET_ASIDE_LIST)
    write_csv(path, SET_ASIDE_COLUMNS, [*_listed(path), *rows])
    return path


def _listed(path: Path) -> list[tuple[str, str, str]]:
    """The rows of an earlier ``set_aside.csv`` as eic wrote it. One it cannot take whole (an earlier version's,
    without ``kept_as``; one with columns someone added; one that cannot be read) is kept beside, under a name of
    its own (``set_aside.earlier1.csv``), rather than written over."""
    if not os.path.lexists(path):
        return []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, None) == SET_ASIDE_COLUMNS:
                return [(row[0], row[1], row[2]) for row in reader if len(row) == len(SET_ASIDE_COLUMNS)]
    except (OSError, ValueError, csv.Error):
        pass
    os.replace(path, _free(path.parent, lambda n: f"{path.stem}.earlier{n}.csv"))
    return []


def _class_folders(root: Path) -> list[Path]:
    """The class folders (training's: not hidden), each read once; one that is a link is refused."""
    with os.scandir(root) as entries:
        folders = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    for folder in folders:
        _refuse_link(root, folder)
    return folders


def _refuse_link(root: Path, folder: Path) -> None:
    if folder.is_symlink():
        raise DatasetError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}): eic download moves, sets aside and writes "
            f"only inside {root}, never through a link; put a folder of its own there, or download into another "
            "`output_dir`"
        )


def _refuse_unless_regular(root: Path, path: Path) -> None:
    """Where a record's image belongs, only a regular file is read, moved or replaced."""
    kind = not_regular(path)
    if kind is None:
        return
    if path.is_symlink():
        kind += f" (to {os.readlink(path)})"
    raise DatasetError(
        f"{path} is {kind}, where eic download keeps a record's image: it is never opened, moved or written "
        f"through; remove it, or download into another `output_dir`"
    )
