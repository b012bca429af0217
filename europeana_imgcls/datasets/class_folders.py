"""Class folders read into an image set, checked, and split into folds (stratified, groups kept together); whether
an image can be read. Torch-free: predict and enrich with an exported model list their inputs through it, and the
tasks (``tasks``) scan and split through it without loading torch; ``folders`` turns the images into tensors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import DatasetError
from ..core.recognise import IMAGE_SUFFIXES, what_is
from ..core.tables import read_table
from .decoding import load_image
from .imageset import ImageSet, Split, Task

T = TypeVar("T")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden and temporary files, and whatever is in a hidden
    folder (what eic download set aside, ``.eic-set-aside/``), left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def scan_class_folders(root: Path, classes: Sequence[str] | None, task: Task, *, whole: bool = True) -> ImageSet:
    """Read ``root/<class>/<image>``. With ``classes`` given (a model's), label by that order."""
    if not root.is_dir():
        kind = what_is(root)
        if kind == "a table":
            raise DatasetError(
                f"{root} is a table: fetch its images into class folders first (eic download {root} -o DIR), "
                "then pass DIR"
            )
        raise DatasetError(
            f"{root} is {kind}, not a folder of class folders" if kind else f"{root}: no such folder of class folders"
        )
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError(_no_class_folders(root))
    names = list(classes) if classes is not None else [d.name for d in folders]
    index = {name: i for i, name in enumerate(names)}
    found = [(path, index[folder.name]) for folder in folders if folder.name in index for path in list_images(folder)]
    kept, unreadable = keep_decodable(found, whole=whole)
    labels = np.asarray([label for _, label in kept], dtype=np.int64)
    return ImageSet([path for path, _ in kept], labels, names, task, unreadable)


def _no_class_folders(root: Path) -> str:
    """What to do with a folder that has no class folders: most often its images lie in it loose."""
    loose = list_images(root)
    held = f" (it holds {len(loose)} image{'s' if len(loose) > 1 else ''} directly)" if loose else ""
    multi = " (or, with a labels table, pass `mode` multi-label)" if (root / "labels.csv").is_file() else ""
    return f"{root}: no class subfolders{held}: put the images in {root}/<class>/, one folder per class{multi}"


def readable(path: Path) -> bool:
    """Cheap: reads the header only."""
    try:
        with Image.open(path) as image:
            return image.size[0] > 0 and image.size[1] > 0
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def check_trainable(images: ImageSet, root: Path, folds: int) -> None:
    counts = images.counts()
    present = {name: n for name, n in counts.items() if n}
    if not images.paths:
        raise DatasetError(f"{root}: no readable images in its class folders")
    if len(present) < 2:
        raise DatasetError(
            f"{root}: needs at least two class folders with images (found: {', '.join(present) or 'none'})"
        )
    empty = [name for name, n in counts.items() if not n]
    if empty:  # every split needs an image of every class in each of its parts: fewer folds cannot give it one
        raise DatasetError(
            f"class folder {root / empty[0]} holds no readable image: add images to it, or remove it (lowering "
            "`folds` cannot help: every split needs images of every class)"
        )
    small = {name: n for name, n in present.items() if n < folds}
    if small:
        worst = min(small, key=small.__getitem__)
        raise DatasetError(
            f"class '{worst}' has {small[worst]} images, fewer than the {folds} folds; lower `folds` or add images"
        )


def sample(images: ImageSet, fraction: float, seed: int) -> ImageSet:
    if fraction >= 1.0:
        return images
    from sklearn.model_selection import train_test_split  # see make_splits

    keep, _ = train_test_split(
        np.arange(len(images)), train_size=fraction, stratify=images.task.stratify(images.labels), random_state=seed
    )
    return images.subset(np.sort(keep))


def make_splits(labels: np.ndarray, folds: int, seed: int, groups: Sequence[str] | None = None) -> list[Split]:
    """Stratified k folds; in split i, fold i tests, a stratified slice of the rest validates.

    With ``groups`` (e.g. the provider of each record) no group straddles train, validation and test.
    """
    group_array = np.asarray(groups) if groups is not None else None
    splits = []
    try:
        for i, (rest, test) in enumerate(_folds(labels, folds, seed, group_array)):
            inner_groups = group_array[rest] if group_array is not None else None
            train_pos, val_pos = _folds(labels[rest], folds - 1, seed + i, inner_groups)[0]
            splits.append(Split(np.sort(rest[train_pos]), np.sort(rest[val_pos]), np.sort(test)))
    except ValueError as exc:
        raise DatasetError(f"cannot make {folds} folds: {exc}") from None
    return splits


def _folds(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) of each stratified fold; with ``groups``, no group in two folds (scikit-learn's
    StratifiedGroupKFold, and the scipy and pandas it loads: a second of CPU, only where groups are kept together)."""
    if groups is None:
        return stratified_folds(labels, folds, seed)
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(labels, labels, groups))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices of each of ``folds`` stratified, shuffled folds of ``labels`` (one class a row):
    scikit-learn's ``StratifiedKFold(folds, shuffle=True, random_state=seed).split``, fold for fold and with its
    refusals, in numpy, so that training does not import scikit-learn (a second and a half of CPU a process) and a
    run made before keeps its folds. Each class's members go round-robin over the folds, in a random order."""
    y = np.asarray(labels)
    if folds > len(y):
        raise ValueError(
            f"Cannot have number of splits n_splits={folds} greater than the number of samples: n_samples={len(y)}."
        )
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    encoded = np.unique(first, return_inverse=True)[1][inverse.ravel()]  # classes numbered as they first appear
    counts = np.bincount(encoded)
    if np.all(folds > counts):
        raise ValueError(f"n_splits={folds} cannot be greater than the number of members in each class.")
    if folds > counts.min():
        warnings.warn(
            f"The least populated class in y has only {counts.min()} members, which is less than n_splits={folds}.",
            UserWarning,
            stacklevel=2,
        )
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::folds], minlength=len(counts)) for i in range(folds)])
    rng = np.random.RandomState(seed)
    fold_of = np.empty(len(y), dtype="i")
    for k in range(len(counts)):
        assigned = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(assigned)
        fold_of[encoded == k] = assigned
    everything = np.arange(len(y))
    return [(everything[fold_of != i], everything[fold_of == i]) for i in range(folds)]


def fold_groups(images: ImageSet, by_provider: bool, duplicates: Path | None) -> list[str] | None:
    """What must stay in one fold: a provider's records (``by_provider``), the images of one near-duplicate
    group (``duplicates``, eic audit's duplicates.csv), or both joined; None when nothing must."""
    if duplicates is None:
        return images.groups() if by_provider else None
    table = read_table(duplicates, required=("image", "group"))
    group_of = {
        str(Path(image).resolve()): group
        for image, group in zip(table["image"].to_list(), table["group"].to_list(), strict=True)
    }
    if group_of and not any(str(p.resolve()) in group_of for p in images.paths):
        raise DatasetError(
            f"{duplicates}: none of its images is in this data folder; audit this folder's images "
            "(or their embeddings) to get its duplicate groups"
        )
    # A graph of images and the keys they share (their provider, their duplicate group): each connected
    # part stays in one fold.
    key_node: dict[str, int] = {}
    edges = []
    for i, (provider, path) in enumerate(zip(images.groups(), images.paths, strict=True)):
        for key in (f"provider:{provider}" if by_provider else None, group_of.get(str(path.resolve()))):
            if key is not None:
                edges.append((i, len(images) + key_node.setdefault(key, len(key_node))))
    return [str(label) for label in connected(len(images) + len(key_node), edges)[: len(images)]]


def connected(nodes: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """The connected part each node belongs to (a label per node), for undirected ``edges``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1]


# What decoding a file that passed ``readable`` (its header) can still raise: the file is unreadable.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def keep_decodable(found: list[tuple[Path, T]], *, whole: bool = True) -> tuple[list[tuple[Path, T]], list[Path]]:
    """The (image, label) pairs whose image decodes (``decodable``; ``whole`` False: whose header reads), and the
    images that do not."""
    ok = decodable([path for path, _ in found]) if whole else [readable(path) for path, _ in found]
    kept = [item for item, good in zip(found, ok, strict=True) if good]
    return kept, [path for (path, _), good in zip(found, ok, strict=True) if not good]


def decodable(paths: Sequence[Path]) -> list[bool]:
    """Whether each image decodes whole (``decodes``): a folder is read before training counts its classes, so a
    class of files cut short is no class. A thread a core: Pillow decodes without the GIL, and a JPEG at its
    smallest scale (a 400-pixel thumbnail: about 0.5 ms)."""
    if len(paths) < 64:
        return [decodes(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(decodes, paths, chunksize=16))


def decodes(path: Path) -> bool:
    """Whether the whole image decodes, not only its header (a truncated file passes ``readable``)."""
    try:
        load_image(path, 16)
    except DECODE_ERRORS:
        return False
    return True
