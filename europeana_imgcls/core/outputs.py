"""The one output policy: what eic may write where, asked by every stage before it writes.

An output is a file (a table, review tasks, a calibration) or a folder (an export, an evaluation, an audit). The
rules, as git refuses to check out over untracked files and cargo installs over its own artefacts only:

- **New or refused.** A path that holds nothing is created. One that exists is refused, naming the option that
  goes on with it (``resume``) or replaces it (``overwrite``), where the stage has one.
- **``overwrite`` replaces only what eic wrote.** A folder eic builds carries a manifest (``.eic-output.json``:
  its kind and every file it wrote); ``overwrite`` replaces a folder whose manifest names its kind and every file
  in it, and refuses one holding a file eic did not write, naming it. A file is recognised by its kind's own
  reader (review tasks, an eic table...): a training table given as review tasks' output is refused, never emptied.
- **Whole or not at all.** A folder is built beside its place (``.NAME.eic-building/``) and swapped in whole; a
  file is written to a temporary name and renamed. A killed run leaves no half output, and what it left beside
  (its building folder, its temporary files) is cleaned at the next start, under the lock.
- **One writer.** An exclusive OS lock beside the output (``.NAME.eic-lock``, released when the process dies) is
  held while it is written: a second run on the same output is refused in one line.
- **Nothing through a link, nothing but files and folders.** A symbolic link at the output, a FIFO, a device or a
  socket there or inside a folder to be replaced is refused: eic neither writes through a link nor opens
  something that never ends or blocks.

Stages that write record by record (download, predict, embed, enrich) have their journal (``core/journal.py``)
ask ``claim`` as it opens, then lock and merge; the rest write with ``build_folder``, or under ``claimed``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import ValidationError

from .errors import DatasetError
from .locks import Held, Lock
from .recognise import is_eic_table, is_review_tasks, peek_json, sidecar_output, what_is
from .sidecars import Sidecar, small_regular_file, special_kind
from .tables import TEMP_SUFFIX, is_own_temp, sidecar

MANIFEST: Final = ".eic-output.json"
MANIFEST_FORMAT: Final = "europeana-imgcls/output-v1"
LOCK_SUFFIX: Final = ".eic-lock"
BUILDING, REPLACED = ".eic-building", ".eic-replaced"
# What an earlier version left beside a killed export (``.onnx.exporting``), cleaned the same way.
_LEGACY_LEFTOVERS: Final = (".exporting", ".replaced")


@dataclass(frozen=True)
class OutputKind:
    """What a stage writes at a path: ``what`` names it in messages ("an export"); a folder kind is recognised
    by its manifest, a file kind by ``recognise`` (called on a regular file only; None: never replaced, and
    carried on unchecked)."""

    name: str
    what: str
    folder: bool = False
    recognise: Callable[[Path], bool] | None = None  # a folder kind's: whether a folder is one to carry on
    # A folder kind told by its contents: the first thing in a folder that shows it is not one, in words ("x is
    # not eic download's"), or None; the refusal names it (``recognise`` is then whether there is none).
    stranger: Callable[[Path], str | None] | None = None
    # A folder kind's files as an eic without manifests wrote them (top-level names, or ``split_*``-like patterns of
    # names only eic gives; the first must be there, a JSON file that ``legacy_sign`` takes for eic's), so
    # `overwrite` replaces an output of an earlier version too, and never a file eic did not name.
    legacy: tuple[str, ...] = ()
    legacy_sign: Callable[[Any], bool] | None = None


# The file kinds several stages write.
TABLE = OutputKind("table", "a table", recognise=is_eic_table)
REVIEW_TASKS = OutputKind("review-tasks", "review tasks", recognise=is_review_tasks)


class Claim(Enum):
    NEW = "new"  # nothing there (or an empty folder)
    REPLACE = "replace"  # eic's own output of this kind, and `overwrite`
    RESUME = "resume"  # an output to carry on, and `resume`


def claim(
    path: Path,
    kind: OutputKind,
    *,
    overwrite: bool | None = None,
    resume: bool | None = None,
    option: str = "output",
) -> Claim:
    """Whether ``path`` may be written as ``kind``, or a DatasetError in one line saying why not and what to do.

    ``overwrite`` and ``resume`` are the stage's options (None: the stage has no such option); ``option`` names
    the option that chose ``path``."""
    path = absolute(path)
    _check_type(path, kind, option)
    if not _occupied(path):
        return Claim.NEW
    if resume:
        _check_resumable(path, kind, option)
        return Claim.RESUME
    if overwrite:
        _check_ours(path, kind, option)
        return Claim.REPLACE
    if overwrite is not None and not _is_ours(path, kind):  # neither flag would take it: none is offered
        raise DatasetError(f"{path} already exists and is not {kind.what} that eic wrote: choose another `{option}`")
    offered = ["pass `resume` to carry it on"] if resume is not None else []
    offered += ["pass `overwrite` to replace it"] if overwrite is not None else []
    raise DatasetError(f"{path} already exists: " + ", or ".join([*offered, f"choose another `{option}`"]))


def _is_ours(path: Path, kind: OutputKind) -> bool:
    try:
        _check_ours(path, kind, "output")
    except DatasetError:
        return False
    return True


def refuse_input(output: Path, role: str, given: Path, option: str = "output") -> None:
    """An output that is the table given as ``role`` (subtract's evaluation table, the reviewers' table) is refused
    whatever ``overwrite`` says: the input would be replaced by what was made from it."""
    if os.path.lexists(given) and absolute(output).resolve() == Path(given).resolve():
        raise DatasetError(f"`{option}` {output} is the {role} given: write what is made from it to another file")


def dataset_of(given: Path) -> Path | None:
    """The dataset an input belongs to: a folder of class folders (training's and evaluation's shape) given itself,
    or eic download's folder holding the class folder or the image given; None otherwise (a folder of scans may
    hold what is made from it)."""
    given = given.resolve()  # "." has no parent of its own
    if given.is_dir() and what_is(given) == "a folder of class folders":
        return given
    for folder in (given.parent, given.parent.parent) if given.is_file() else (given, given.parent):
        settings = peek_json(folder / "config.json")  # eic download's settings: {"table", "output_dir", ...}
        if isinstance(settings, dict) and {"table", "output_dir"} <= settings.keys():
            return folder
    # A class folder of a dataset of one's own is not told from a folder of scans beside others (~/project/scans,
    # its table written to ~/project): only eic download's folder says it is a dataset.
    return None


def refuse_beside_classes(output: Path, given: Path, option: str = "output") -> None:
    """An output (with the folders written beside it: a journal, fetched images) is refused where a scan of the
    dataset ``given`` belongs to would read it as a class: in the dataset's own folder, or anywhere inside a
    dataset given whole."""
    root = dataset_of(given)
    if root is None:
        return
    where = absolute(output).resolve()
    if where.parent == root or (root == given.resolve() and where.is_relative_to(root)):  # dataset_of's is resolved
        refuse_inside(output, root, option)


def refuse_inside(output: Path, images: Path | None, option: str = "output") -> None:
    """An output inside a folder of images the command reads is refused: the next scan of that folder would read
    what eic wrote there as images (a folder of its as a class)."""
    if images is not None and images.is_dir() and absolute(output).resolve().is_relative_to(images.resolve()):
        raise DatasetError(
            f"`{option}` {output} is inside {images}, the images it reads: the next scan of that folder would take "
            "what is written there for images (a folder of it for a class); choose a place outside it"
        )


SIDECAR_KINDS = ("config", "review", "apply")  # harvest and subtract; review import; review apply


def claim_sidecar(output: Path, kind: str, option: str = "output", own: Path | None = None) -> Path:
    """Where eic writes its settings (or a review's notes) beside the table ``output`` (``NAME.<kind>.json``), once
    it may: nothing there, or eic's own file of a table of that name. A user's file of that name, or eic's of the
    table beside (``x.csv``'s, which ``x.parquet``'s would replace: ``x.csv`` would be no table of eic's), is
    refused in one line before any work."""
    # A table another stage made (its sidecar names it) is not this stage's to replace, unless it is the table this
    # stage works on (``own``: subtract's training table, review apply's), rewritten in place with `overwrite`.
    in_place = own is not None and os.path.lexists(own) and absolute(output).resolve() == Path(own).resolve()
    others = () if in_place or not os.path.lexists(output) else [k for k in SIDECAR_KINDS if k != kind]
    for other in others:
        if sidecar_output(sidecar(absolute(output), other)) == Path(output).name:
            raise DatasetError(
                f"{output} is a table another eic command made ({sidecar(Path(output), other).name} beside it), "
                f"not this one's to replace: choose another `{option}`"
            )
    path = sidecar(absolute(output), kind)
    if not os.path.lexists(path):
        return path
    named = sidecar_output(path)
    if named == Path(output).name or (kind == "embedding" and _probes_own(path)):
        return path
    if named is not None:
        raise DatasetError(
            f"{path} holds eic's settings of {named}, which those of {Path(output).name} would replace: "
            f"choose another `{option}` (or delete {path.name} if {named} is gone)"
        )
    raise DatasetError(
        f"{path} is not eic's, and eic writes the settings of {Path(output).name} there: move it, or choose another "
        f"`{option}`"
    )


def _probes_own(path: Path) -> bool:
    """An embeddings sidecar a linear probe or k-NN run wrote beside its own table (eic train's: it names no
    output, only what made the vectors)."""
    found = peek_json(path)
    return isinstance(found, dict) and {"arch", "weights", "input_size", "dim"} <= found.keys()


def absolute(path: Path) -> Path:
    """``path`` as the system reaches it: its folder with every link and ``..`` resolved (``link/../t.csv`` is
    where the link leads, not ``./t.csv``), its own name kept, so a link at the output is judged as a link."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


@contextmanager
def build_folder(folder: Path, kind: OutputKind, *, overwrite: bool | None, option: str = "output") -> Iterator[Path]:
    """Yield an empty folder to build ``kind`` in; on success it takes ``folder``'s place whole, with a manifest of
    what it holds. Refused (before anything is written) as ``claim`` refuses; held under the output's lock."""
    folder = absolute(folder)
    if folder == Path(folder.anchor) or Path.cwd().resolve().is_relative_to(folder):
        raise DatasetError(f"{folder} holds the current folder: choose a new folder for `{option}`")
    with output_lock(folder):
        claim(folder, kind, overwrite=overwrite, option=option)
        staging = _beside(folder, BUILDING)
        staging.mkdir()
        try:
            yield staging
            _write_manifest(staging, kind)
            _swap(folder, staging)
        finally:
            _remove(staging)


@contextmanager
def claimed(
    path: Path, kind: OutputKind, *, overwrite: bool | None, resume: bool | None = None, option: str = "output"
) -> Iterator[Claim]:
    """``claim`` under the output's lock, held while the caller works and writes ``path`` (atomically, as every
    writer in ``core/tables.py`` does): for outputs written at the end of a stage."""
    with output_lock(path):
        yield claim(path, kind, overwrite=overwrite, resume=resume, option=option)


@contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """The output's lock, held while it is written; what a killed run left beside it is cleaned once it is held."""
    path = absolute(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = Lock(_beside(path, LOCK_SUFFIX), str(path))
    except Held as held:
        raise DatasetError(
            f"{path} is being written by {held.holder}: wait for it to finish (or stop it), then run again"
        ) from None
    try:
        clean_leftovers(path)
        yield
    finally:
        lock.release(remove=True)


def clean_leftovers(path: Path) -> None:
    """What a killed run of this output left beside it: its building folder, its temporary files, and the old
    output it was replacing (put back where it was if the kill fell between the two renames, so the last output is
    never lost). Only names eic gives (never a link's target); call it holding the output's lock."""
    replaced = _beside(path, REPLACED)
    if replaced.is_dir() and not replaced.is_symlink() and not os.path.lexists(path):
        replaced.rename(path)
    for suffix in (BUILDING, REPLACED, *_LEGACY_LEFTOVERS):
        _remove(_beside(path, suffix))
    temporary = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{12}}{re.escape(TEMP_SUFFIX)}$")  # tables.temp_path
    for entry in _entries(path.parent):
        if temporary.match(entry.name) and not entry.is_symlink():
            _remove(Path(entry.path))


# ---------------------------------------------------------------------------------------------
# What is at the path


def _check_type(path: Path, kind: OutputKind, option: str) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise DatasetError(f"{path} is a symbolic link: eic writes no output through a link; choose another `{option}`")
    if stat.S_ISDIR(info.st_mode) and not kind.folder:
        raise DatasetError(f"{path} is a folder: `{option}` is a file; choose a file name")
    if stat.S_ISREG(info.st_mode) and kind.folder:
        raise DatasetError(f"{path} is a file: {kind.what} is a folder; choose another `{option}`")
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise DatasetError(
            f"{path} is {special_kind(info.st_mode)}, not a file eic can write: choose another `{option}`"
        )


def _occupied(path: Path) -> bool:
    """Whether writing ``path`` would replace something: a file, or a folder holding anything but eic's leftovers."""
    if not path.is_dir():
        return path.exists()
    return any(not _leftover_name(entry.name) for entry in _entries(path))


def _leftover_name(name: str) -> bool:
    return is_own_temp(name) or (name.startswith(".") and name.endswith(LOCK_SUFFIX))


def _check_ours(path: Path, kind: OutputKind, option: str) -> None:
    """``overwrite`` replaces ``path`` only if eic wrote it as ``kind``: refused otherwise, naming what is not eic's."""
    if kind.folder:
        stranger = _stranger(path, kind)
        if stranger is not None:
            raise DatasetError(
                f"{path} holds {stranger}, which eic did not write as {kind.what}: `overwrite` replaces only eic's "
                f"own outputs; move it away, or choose another `{option}`"
            )
        return
    if not _recognised(path, kind):
        raise DatasetError(
            f"{path} is not {kind.what} that eic wrote: `overwrite` replaces only eic's own outputs; "
            f"choose another `{option}`"
        )


def _check_resumable(path: Path, kind: OutputKind, option: str) -> None:
    """An output is carried on only if eic wrote it as ``kind`` (where the kind can tell)."""
    if (kind.recognise is None and kind.stranger is None) or _recognised(path, kind):
        return
    if kind.folder:
        said = kind.stranger(path) if kind.stranger is not None else None
        raise DatasetError(
            f"{path} holds files that are not {kind.what}{f': {said};' if said else ':'} eic carries on only its own "
            f"outputs, choose a new or empty `{option}`"
        )
    raise DatasetError(
        f"{path} is not {kind.what} that eic wrote: `resume` carries on only eic's own outputs; "
        f"choose another `{option}`"
    )


def _recognised(path: Path, kind: OutputKind) -> bool:
    """Whether ``kind``'s reader takes ``path`` for its own; a file is read only if it is a regular one."""
    if kind.stranger is not None:
        return kind.stranger(path) is None
    # A regular file of any size (a table of millions of rows is eic's too): each recogniser reads a bounded head.
    if kind.recognise is None or not (kind.folder or small_regular_file(path, max_bytes=1 << 62)):
        return False
    try:
        return kind.recognise(path)
    except (OSError, ValueError, RecursionError):  # a file too damaged to be eic's
        return False


def _stranger(folder: Path, kind: OutputKind) -> str | None:
    """The first thing in ``folder`` that eic did not write as ``kind`` (None: it is all eic's): a file its
    manifest does not name (or, in an earlier version's output, none of the kind's files), a link, a pipe."""
    written = read_manifest(folder, kind)
    if written is None:
        written = _legacy_files(folder, kind)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(root, name)
            relative = entry.relative_to(folder).as_posix()
            info = entry.lstat()
            if stat.S_ISDIR(info.st_mode) or relative == MANIFEST:
                continue
            if not stat.S_ISREG(info.st_mode):
                return f"{relative} ({special_kind(info.st_mode)})"
            if relative not in written:
                return relative
    return None


def _legacy_files(folder: Path, kind: OutputKind) -> set[str]:
    """The files of ``kind`` an eic without manifests wrote in ``folder``: none unless its first file is there."""
    if not kind.legacy or not _signed(folder / kind.legacy[0], kind.legacy_sign):
        return set()
    return {p.name for pattern in kind.legacy for p in folder.glob(pattern) if p.is_file() and not p.is_symlink()}


def _signed(path: Path, sign: Callable[[Any], bool] | None) -> bool:
    """Whether a small regular JSON file is what an earlier eic wrote there (``sign`` judges its contents)."""
    return sign is not None and bool(sign(peek_json(path)))


# ---------------------------------------------------------------------------------------------
# The manifest


class _Manifest(Sidecar):
    """``.eic-output.json``: the kind of a folder eic built and every file it wrote there."""

    format: Literal["europeana-imgcls/output-v1"] = MANIFEST_FORMAT
    kind: str
    files: list[str]


def read_manifest(folder: Path, kind: OutputKind) -> set[str] | None:
    """The files eic wrote in ``folder`` as ``kind`` (None: no manifest of that kind, or a damaged one)."""
    path = folder / MANIFEST
    if not small_regular_file(path):
        return None
    try:
        manifest = _Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    return set(manifest.files) if manifest.kind == kind.name else None


def _write_manifest(folder: Path, kind: OutputKind) -> None:
    files = sorted(
        Path(root, name).relative_to(folder).as_posix() for root, _, names in os.walk(folder) for name in names
    )
    (folder / MANIFEST).write_text(
        _Manifest(kind=kind.name, files=files).model_dump_json(indent=1) + "\n", encoding="utf-8"
    )


# ---------------------------------------------------------------------------------------------
# Moving folders


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def _swap(folder: Path, staging: Path) -> None:
    """``staging`` in ``folder``'s place: the old one renamed aside first and removed after, so a kill between
    the two renames leaves the old output beside its place (put back at the next start), never a half one. A
    folder that cannot be renamed (a mount point: a Docker volume, an NFS export) or an empty one is filled
    instead: its old files (eic's, checked) removed, the new ones moved in."""
    if folder.is_dir() and (os.path.ismount(folder) or not _occupied(folder)):
        for entry in _entries(folder):
            _remove(Path(entry.path))
        for entry in _entries(staging):
            shutil.move(entry.path, folder / entry.name)
        return
    old = _beside(folder, REPLACED)
    _remove(old)
    if folder.is_dir():
        folder.rename(old)
    staging.rename(folder)
    _remove(old)


def _remove(path: Path) -> None:
    """Remove a file or folder eic named; a link is removed itself, never what it points to."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []
