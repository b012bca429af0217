"""Typed files that eic writes and reads back (an export's ``model.json``, the embeddings' sidecar, review and
audit notes, publish's states): each a pydantic model with a format tag, read in one place.

Whatever such a file holds (cut short, another tool's JSON, a pipe, a gigabyte, nesting a thousand deep, values
of the wrong type or out of range), reading it gives the model or one line naming the file and what to do: never
a traceback, never a hang, never a value the model's own checks refuse.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import DatasetError, EicError

# The most eic reads of a file it reads back (a sidecar, a manifest, review tasks): a larger one is not its own.
MAX_SIDECAR_BYTES: Final = 64 * 1024 * 1024

Typed = TypeVar("Typed", bound=BaseModel)


class Sidecar(BaseModel):
    """Base of eic's typed files: immutable, no NaN or infinity, and what a later version adds is ignored by an
    earlier one."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


def read_typed(
    path: Path,
    model: type[Typed],
    *,
    what: str,
    remedy: str,
    error: type[EicError] = DatasetError,
    max_bytes: int = MAX_SIDECAR_BYTES,
) -> Typed:
    """``path`` as ``model``, or ``error`` in one line: "PATH is not WHAT (why): REMEDY"."""
    return parse_typed(
        read_bounded(path, what=what, remedy=remedy, error=error, max_bytes=max_bytes),
        model,
        path=path,
        what=what,
        remedy=remedy,
        error=error,
    )


def parse_typed(
    data: bytes | str, model: type[Typed], *, path: Path | str, what: str, remedy: str, error: type[EicError]
) -> Typed:
    """JSON text as ``model`` (pydantic's own parser: a depth limit, no recursion error), or one line."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise error(f"{path} is not {what} ({first_problem(exc)}): {remedy}") from None


def read_bounded(
    path: Path, *, what: str, remedy: str, error: type[EicError] = DatasetError, max_bytes: int = MAX_SIDECAR_BYTES
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``: a pipe, a device or a larger file is refused before
    it is read (a FIFO would block, ``/dev/zero`` never end)."""
    data = read_capped(path, max_bytes, what=what, remedy=remedy, error=error)
    if data is None:
        raise error(f"{path} is larger than {max_bytes // 2**20} MB, too large for {what}: {remedy}")
    return data


def read_capped(
    path: Path, max_bytes: int, *, what: str, remedy: str, error: type[EicError] = DatasetError
) -> bytes | None:
    """At most ``max_bytes`` of the regular file ``path``, None when it holds more. Anything else (a pipe, a
    device, a folder) is refused before it is read, and again once opened: the open does not wait for a writer
    (``O_NONBLOCK``), so a pipe swapped in since the check cannot hold it. The size the file system reports is not
    trusted (``/proc`` files say 0): the read itself stops at the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{path}: missing; {remedy}") from None
    except OSError as exc:
        raise error(f"{path}: unreadable ({exc.strerror}); {remedy}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # before open(fd): Python refuses a folder's descriptor, naming its number
        os.close(fd)
        raise error(f"{path} is {special_kind(mode)}, not a regular file holding {what}: {remedy}")
    with open(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: unreadable ({exc.strerror}); {remedy}") from None
    return None if len(data) > max_bytes else data


def small_regular_file(path: Path, max_bytes: int = MAX_SIDECAR_BYTES) -> bool:
    """Whether ``path`` itself (not a link's target) is a regular file of at most ``max_bytes``: one eic may open
    to judge (a pipe would block the reader, a device never end)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= max_bytes


def not_regular(path: Path) -> str | None:
    """What ``path`` is, in words, when it is there and is not a regular file itself (a link, a folder, a pipe, a
    device, a socket); None for a regular file or nothing: what readers and writers of eic's files refuse."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(mode) else special_kind(mode)


def special_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def first_problem(exc: ValidationError) -> str:
    """A pydantic error in a few words: where, and what is wrong there."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).splitlines()[0][:120]
    return f"{where}: {message}" if where else message
