"""Where each record's image belongs when ``eic download`` fills a folder it filled before.

A table whose labels changed (``eic review apply``) names the same records under other classes. Fetching them
again would leave the old copy in its old class folder: the noise stays in training, and the record sits in two
classes. So before a record is fetched, the folder is asked whether it holds the record already, elsewhere:
the file is moved to where the table now puts it (no request). When the run has gone through the whole table
and was asked to (``prune``), the records the table no longer holds are set aside, out of the class folders, into
``SET_ASIDE`` (a hidden folder that training never reads), and listed in ``SET_ASIDE_LIST``: the folder then holds
exactly the table's records, each in its current class. Unasked, they stay where they are, and are counted.

Only files eic named (``naming.record_id_of`` reads a record ID from the name) directly inside the class folders
(single-label) or the folder itself (multi-label) are ever moved; nothing is deleted. A shard moves only the
records it owns, so shards sharing a folder never move the same file.

Nothing is moved, set aside or written through a symbolic link (it may lead out of the folder, to files that are
not eic's), and nothing but a regular file is ever opened where a record's image belongs (a FIFO would hang the
run): a class folder or the set-aside folder that is a link, or a record's path that holds a link, a FIFO, a
device, a socket or a folder, is refused in one line before any work, and what it leads to is left as it is.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ..core.errors import DatasetError
from ..core.naming import record_id_of
from ..core.sharding import Shard
from ..core.sidecars import not_regular
from ..core.tables import write_csv

SET_ASIDE = ".eic-set-aside"
SET_ASIDE_LIST = "set_aside.csv"


class Placement:
    """The record files a folder holds, by name, and what a run has done with them."""

    def __init__(self, root: Path, multi_label: bool, shard: Shard | None = None) -> None:
        self.root, self.shard = root, shard
        self.found: defaultdict[str, list[Path]] = defaultdict(list)  # file name -> where it is
        self.claimed: set[str] = set()  # file names the table holds
        self.moved = 0
        self.set_aside: list[tuple[str, str]] = []  # (record ID, where it was) of every file set aside
        _refuse_link(root, root / SET_ASIDE)
        folders = [root] if multi_label else _class_folders(root)
        for folder in folders:
            with os.scandir(folder) as entries:
                for entry in entries:
                    record = record_id_of(entry.name)
                    if not record:
                        continue
                    if not entry.is_file(follow_symlinks=False):  # the entry's type, known without a system call
                        _refuse_unless_regular(root, Path(entry.path))
                    if shard is None or shard.owns(record):
                        self.found[entry.name].append(Path(entry.path))

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
        return sum(len(paths) for name, paths in self.found.items() if name not in self.claimed)

    def set_aside_the_rest(self) -> None:
        """After a complete run: every record file the table did not claim is set aside."""
        for name, paths in self.found.items():
            if name not in self.claimed:
                for path in paths:
                    self._set_aside(path)
        self.found.clear()

    def _set_aside(self, path: Path) -> None:
        where = self.root / SET_ASIDE / path.parent.relative_to(self.root)
        for folder in {self.root / SET_ASIDE, where}:  # checked again as it is used: it may have changed since
            _refuse_link(self.root, folder)
        where.mkdir(parents=True, exist_ok=True)
        os.replace(path, where / path.name)
        self.set_aside.append((record_id_of(path.name) or path.name, str(path.relative_to(self.root))))


def write_set_aside(root: Path, rows: list[tuple[str, str]], shard: Shard | None) -> Path:
    """``set_aside.csv``: each record set aside and where it was (a shard writes its own list)."""
    path = root / (f"set_aside.{shard.tag}.csv" if shard else SET_ASIDE_LIST)
    write_csv(path, ["ID", "was"], rows)
    return path


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
