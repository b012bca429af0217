"""datasets/folders.py: folds that keep groups together, the loaders and the decoded-image cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from europeana_imgcls.datasets.class_folders import stratified_folds
from europeana_imgcls.datasets.folders import make_splits
from europeana_imgcls.datasets.imageset import provider_of
from europeana_imgcls.datasets.tasks import scan_images

from ..support import CLASSES, assert_one_line_error, copy_of, eic, examples, make_folders


def _sklearn_splits(labels: np.ndarray, folds: int, seed: int) -> list[tuple[list[int], ...]]:
    """What make_splits made with scikit-learn's StratifiedKFold before it made its folds itself."""
    from sklearn.model_selection import StratifiedKFold

    made = []
    for i, (rest, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels)):
        inner = StratifiedKFold(folds - 1, shuffle=True, random_state=seed + i)
        train, val = next(inner.split(rest, labels[rest]))
        made.append((sorted(rest[train]), sorted(rest[val]), sorted(test)))
    return made


@settings(max_examples=examples(80), deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=120)
    | st.lists(st.sampled_from("abc"), min_size=1, max_size=40),
    folds=st.integers(2, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_folds_are_scikit_learns_fold_for_fold(labels: list, folds: int, seed: int) -> None:
    """Training makes its folds without scikit-learn (a second of CPU to import), and a run made before makes the
    same folds: StratifiedKFold(shuffle=True)'s, index for index, and its refusals, word for word."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer members than folds: both warn alike
        try:
            expected = [
                (list(a), list(b)) for a, b in StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)
            ]
        except ValueError as refused:
            with pytest.raises(ValueError) as ours:
                stratified_folds(y, folds, seed)
            assert str(ours.value) == str(refused)
            return
        assert [(list(a), list(b)) for a, b in stratified_folds(y, folds, seed)] == expected


def test_a_runs_splits_are_the_ones_scikit_learn_made() -> None:
    """Train, validation and test of each split, as make_splits made them with scikit-learn, on the pilot-like
    shapes: balanced, unbalanced, and the least class with exactly as many images as folds."""
    rng = np.random.default_rng(3)
    for labels in (np.repeat(np.arange(3), 9), rng.integers(0, 5, 97), np.array([0] * 3 + [1] * 20 + [2] * 7)):
        for folds, seed in ((3, 0), (3, 42), (5, 7) if np.bincount(labels).min() >= 5 else (3, 1)):
            ours = [(list(s.train), list(s.val), list(s.test)) for s in make_splits(labels, folds, seed)]
            assert ours == _sklearn_splits(labels, folds, seed)


def test_make_splits_accepts_duplicate_groups_as_groups() -> None:
    import numpy as np

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    groups = ["a", "a", "b", "c", "d", "d", "e", "f", "g", "h"]
    for split in make_splits(labels, 3, 0, groups):
        for part in (split.train, split.val, split.test):
            others = np.setdiff1d(np.arange(10), part)
            assert not {groups[i] for i in part} & {groups[i] for i in others}


def test_group_by_provider_keeps_each_dataset_in_one_part(folders: Path) -> None:
    paths = sorted(folders.rglob("*.jpg"))
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])
    groups = [provider_of(p) for p in paths]
    assert groups[0] == "9000"
    for split in make_splits(labels, 3, seed=0, groups=groups):
        parts = [{groups[i] for i in part} for part in (split.train, split.val, split.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_decoded_images_are_cached_across_epochs_and_workers(folders: Path, tmp_path: Path) -> None:
    from europeana_imgcls.datasets.folders import DecodedCache, ImageDataset, LoaderSettings, make_loader

    images = scan_images(copy_of(folders, tmp_path), "single-label")  # a copy: its files are moved away below
    cache = DecodedCache.for_images(len(images), 32, budget_mb=16, workers=1)
    assert cache is not None and not cache.filled.any()
    loader = make_loader(
        ImageDataset(images, 32, cache=cache), LoaderSettings(batch_size=8, num_workers=1), shuffle=True
    )
    first = {int(i): x for xs, _, idx in loader for x, i in zip(xs, idx, strict=True)}
    assert cache.filled.all()  # written by the worker process, seen here
    for path in images.paths:  # the second epoch must not need the files
        path.rename(path.with_suffix(".moved"))
    try:
        second = {int(i): x for xs, _, idx in loader for x, i in zip(xs, idx, strict=True)}
    finally:
        for path in images.paths:
            path.with_suffix(".moved").rename(path)
    assert all(torch.equal(first[i], second[i]) for i in first)
    assert DecodedCache.for_images(len(images), 32, budget_mb=0) is None


def test_loaders_hand_over_bytes_that_model_input_normalises(folders: Path) -> None:
    from europeana_imgcls.datasets.folders import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        ImageDataset,
        LoaderSettings,
        ModelInput,
        load_image,
        make_loader,
    )

    images = scan_images(folders, "single-label")
    loader = make_loader(ImageDataset(images, 32), LoaderSettings(batch_size=4), shuffle=False)
    pixels, _, index = next(iter(loader))
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, 32, 32)  # a quarter of float32's bytes
    first = np.asarray(load_image(images.paths[int(index[0])], 32), dtype=np.float32)  # H x W x 3
    assert torch.equal(pixels[0].permute(1, 2, 0), torch.from_numpy(first).to(torch.uint8))
    inputs = ModelInput(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))(pixels)
    expected = (first / 255 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    assert inputs.dtype == torch.float32
    np.testing.assert_allclose(inputs[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# A data folder that is not class folders, said in one line with what to do


def test_a_folder_of_loose_images_is_told_to_put_them_in_class_folders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(flat / f"img{i}.jpg")
    result = eic("train", flat, "-o", tmp_path / "run", "--weights", "none", "--quiet")
    assert_one_line_error(
        result, f"{flat}: no class subfolders (it holds 4 images directly): put the images in {flat}/<class>/"
    )
    (flat / "labels.csv").write_text("file,category\nimg0.jpg,map\n")  # a multi-label folder, read as class folders
    assert_one_line_error(eic("train", flat, "-o", tmp_path / "run", "--quiet"), "pass --mode multi-label")


def test_an_empty_class_folder_is_named_and_fewer_folds_would_not_help(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", per_class=4)
    (data / "textile").mkdir()
    result = eic("train", data, "-o", tmp_path / "run", "--folds", "3", "--weights", "none", "--quiet")
    assert_one_line_error(result, f"class folder {data / 'textile'} holds no readable image: add images to it")
    assert "lowering --folds cannot help" in result.stderr


def _cut_short(path: Path) -> None:
    """The file's header kept, its picture's data cut: it opens, and does not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def test_an_image_cut_short_is_no_readable_image(tmp_path: Path) -> None:
    """A file whose header opens but whose data is cut short counted as readable: a class of them was 'trained' on
    no image, and a folder of nothing else ended in a traceback."""
    data = make_folders(tmp_path / "d", per_class=4, size=96)
    cut = sorted((data / CLASSES[1]).iterdir())
    for path in cut[:3]:
        _cut_short(path)
    images = scan_images(data, "single-label")
    assert images.counts()[CLASSES[1]] == 1 and sorted(images.unreadable) == cut[:3]
    _cut_short(cut[3])
    result = eic("train", data, "-o", tmp_path / "run", "--arch", "tiny", "--weights", "none", "--folds", "3")
    assert_one_line_error(result, f"class folder {data / CLASSES[1]} holds no readable image")
    assert not (tmp_path / "run").exists()
