"""Locks on files that the OS lets go of when their process dies (killed or not: never a stale lock to clean
up): the journal's parts and the output policy's outputs are held with them.

A lock is a file beside what it guards (``NAME.lock``, ``.NAME.eic-lock``). Its exclusive holder writes its name
into it ("process N on HOST"), so a refused writer can be told who holds it. A shared lock is held by any number
of processes, never beside an exclusive one (shards on the unsharded part's lock).
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

from .errors import DatasetError


class Held(Exception):
    """A lock another process holds: who (as its lock file says), and how."""

    def __init__(self, holder: str, shared: bool, by_shards: bool) -> None:
        super().__init__(holder)
        self.holder, self.shared, self.by_shards = holder, shared, by_shards


class Lock:
    """A lock on the file ``path``, held while its process lives. Exclusive, and holding the writer's name; or
    ``shared`` (any number of holders, but never beside an exclusive one). ``what`` names what it guards in
    messages."""

    def __init__(self, path: Path, what: str, shared: bool = False) -> None:
        self.path = path
        while True:
            fd = _open_lock_file(path, what)
            if not try_lock(fd, shared):
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                # Held, but not exclusively: only shards (shared holders) are at work.
                by_shards = not shared and try_lock(fd, shared=True)
                os.close(fd)
                raise Held(holder, shared, by_shards)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file another process removed while this one waited for it
                break
            os.close(fd)
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd: int | None = fd

    def release(self, remove: bool = False) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing lets go of the lock
        self.fd = None


def _open_lock_file(path: Path, what: str) -> int:
    """A lock file opened for writing its holder's name: never through a symbolic link (it would truncate the
    link's target), never a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise DatasetError(f"{path} is a symbolic link, not a lock of {what}: remove it, then run again") from None
        raise DatasetError(f"{path}: cannot open the lock of {what} ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(f"{path} is not a regular file, so not a lock of {what}: remove it, then run again")
    return fd


def holder_of(lock: Path) -> str | None:
    """What a lock file says of its holder, while one holds it (None when it is free)."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or try_lock(fd, shared=True):
            return None
        return os.read(fd, 200).decode("utf-8", "replace").strip() or None
    finally:
        os.close(fd)  # closing lets go of a lock taken to look


def try_lock(fd: int, shared: bool = False) -> bool:
    """A lock without waiting: False when another process holds it (or, ``shared``, holds it exclusively)."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        if shared:  # no shared locks here: a look at the moment, let go at once (another shard may look too)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
