"""JPEGs decoded where the model runs (``decode`` auto on CUDA, gpu): the device path is torchvision's
``decode_jpeg``, which also decodes on the CPU, so its batching, resizing, flips, cache and every fallback are
tested here on the CPU; what only a GPU can say (speed, nvJPEG's refusals) is measured by benchmarks/gpu.sh."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from europeana_imgcls.core.config import PredictConfig
from europeana_imgcls.core.errors import ConfigError
from europeana_imgcls.datasets import decoding
from europeana_imgcls.datasets.decoding import decode_device, device_decodable
from europeana_imgcls.datasets.folders import DecodedCache, ImageDataset, LoaderSettings, make_loader
from europeana_imgcls.datasets.imageset import UNREADABLE, ImageSet
from europeana_imgcls.datasets.tasks import task_for
from europeana_imgcls.europeana.sandbox import draw_image
from europeana_imgcls.modelling import runtime
from europeana_imgcls.outputs.prediction import predict

from ..support import examples, make_folders, rows

CPU = torch.device("cpu")
SIZE = 48


def _files(root: Path) -> dict[str, Path]:
    """One file of every kind the device path must take or hand to the CPU."""
    root.mkdir(parents=True, exist_ok=True)
    picture = draw_image((0,), 3, seed=1, size=(120, 90))
    files = {
        name: root / f"{name}.{'png' if name == 'png' else 'jpg'}"
        for name in ("baseline", "grey", "png", "cmyk", "progressive", "rotated", "truncated", "junk")
    }
    picture.save(files["baseline"], quality=90)
    picture.convert("L").save(files["grey"], quality=90)
    picture.save(files["png"])
    picture.convert("CMYK").save(files["cmyk"], quality=90)
    picture.save(files["progressive"], quality=90, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned by 90 degrees
    picture.save(files["rotated"], quality=90, exif=exif)
    whole = files["baseline"].read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["junk"].write_bytes(b"\xff\xd8\xff not a picture")
    return files


def _batches(images: ImageSet, decode_on: torch.device | None, **kw) -> tuple[torch.Tensor, np.ndarray]:
    loader = make_loader(
        ImageDataset(images, SIZE, **kw), LoaderSettings(batch_size=4, decode_on=decode_on), shuffle=False
    )
    pixels, labels = [], []
    for batch, label, _ in loader:
        pixels.append(batch.cpu())
        labels.append(label)
    return torch.cat(pixels), torch.cat(labels).numpy()


def _images(files: dict[str, Path]) -> ImageSet:
    return ImageSet(list(files.values()), np.zeros(len(files), dtype=np.int64), ["a"], task_for("single-label"))


def test_only_plain_jpegs_go_to_the_device_the_rest_decode_as_before(tmp_path: Path) -> None:
    files = _files(tmp_path)
    taken = {name for name, path in files.items() if device_decodable(path.read_bytes())}
    assert taken == {"baseline", "grey"}  # not PNG, CMYK, progressive, rotated, cut short, or junk
    images = _images(files)
    before, labels_before = _batches(images, None)
    after, labels_after = _batches(images, CPU)
    names = list(files)
    assert labels_before.tolist() == labels_after.tolist()
    assert [n for n, label in zip(names, labels_after, strict=True) if label == UNREADABLE] == ["truncated", "junk"]
    for i, name in enumerate(names):
        if name in taken:  # decoded whole and resized by torch: a few levels from Pillow's reduced decode
            assert after[i].shape == (3, SIZE, SIZE)
            assert (after[i].float() - before[i].float()).abs().mean() < 6, name
        else:  # the CPU path, exactly as without device decoding
            assert torch.equal(after[i], before[i]), name


def test_flips_and_the_decode_cache_work_on_device_decoded_images(tmp_path: Path) -> None:
    files = {k: v for k, v in _files(tmp_path).items() if k in ("baseline", "grey", "png")}
    images = _images(files)
    plain, _ = _batches(images, CPU)
    flipped, _ = _batches(images, CPU, hflip=1.0, vflip=1.0)
    assert torch.equal(flipped, plain.flip(2).flip(3))
    cache = DecodedCache(len(images), SIZE, shared=False)
    dataset = ImageDataset(images, SIZE, cache=cache)
    loader = make_loader(dataset, LoaderSettings(batch_size=4, decode_on=CPU), shuffle=False)
    first = next(iter(loader))[0]
    assert bool(cache.filled.all())  # what the device decoded is kept for the next epochs
    assert [dataset[i][3] for i in range(len(images))] == [0, 0, 0]  # the next epoch reads the cache
    assert torch.equal(next(iter(loader))[0], first)


def test_an_image_the_device_refuses_is_decoded_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.io

    files = {k: v for k, v in _files(tmp_path).items() if k in ("baseline", "grey")}
    images = _images(files)
    before, _ = _batches(images, None)
    real = torchvision.io.decode_jpeg

    def refusing(data, **kw):  # as nvJPEG refuses what it cannot decode: the whole batch, then that image
        if isinstance(data, list) or data.numel() == files["grey"].stat().st_size:
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refusing)  # what decoding.py calls
    after, labels = _batches(images, CPU)
    assert torch.equal(after[1], before[1]) and not torch.equal(after[0], before[0])  # grey: the CPU path
    assert (labels != UNREADABLE).all()


def test_gpu_decoding_without_cuda_is_one_line() -> None:
    with pytest.raises(ConfigError, match="`decode` gpu needs a CUDA device"):
        decode_device("gpu", CPU)
    assert decode_device("auto", CPU) is None and decode_device("cpu", CPU) is None


def test_predict_labels_device_decoded_images_as_the_cpu_path_does(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folders(tmp_path / "new", per_class=6, size=48)
    out = {}
    for name in ("cpu", "device"):
        if name == "device":  # what decode auto does on CUDA, here with the CPU as the device
            monkeypatch.setattr(runtime, "decode_device", lambda decode, device: device)
        out[name] = tmp_path / f"{name}.csv"
        predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=out[name], quiet=True))
    cpu, device = rows(out["cpu"]), rows(out["device"])
    assert len(cpu) == len(device) == 18
    agree = sum(a["prediction"] == b["prediction"] for a, b in zip(cpu, device, strict=True))
    assert agree >= 17  # the same top-1 but where two classes were within a few pixel levels of each other


@pytest.mark.slow  # end to end: train, evaluate and embed
def test_train_evaluate_and_embed_run_on_device_decoded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from europeana_imgcls.core.config import EmbedConfig, EvaluateConfig
    from europeana_imgcls.modelling import training
    from europeana_imgcls.modelling.embedding import embed
    from europeana_imgcls.modelling.training import train
    from europeana_imgcls.outputs.evaluation import evaluate_run

    from ..support import config

    for module in (training, runtime):  # as decode auto on CUDA, with the CPU as the device
        monkeypatch.setattr(module, "decode_device", lambda decode, device: device)
    decoded = []
    real = decoding._decode_jpeg
    monkeypatch.setattr(decoding, "_decode_jpeg", lambda data, device: decoded.append(len(data)) or real(data, device))
    data = make_folders(tmp_path / "data", per_class=6, size=48)
    report = train(config(data, tmp_path / "run", epochs=2, crossvalidation=False, gradcam_images=0, hflip=0.5))
    assert len(report.splits) == 1
    assert sum(decoded) == 18  # each image decoded by the device once: the second epoch reads the decode cache
    result = evaluate_run(
        EvaluateConfig(run=tmp_path / "run", eval_dir=data, output_dir=tmp_path / "eval", quiet=True, figures=False)
    )
    assert result.images == 18 and not result.unreadable
    assert sum(decoded) == 36
    embedded = embed(
        EmbedConfig(
            data_dir=data, output=tmp_path / "e.parquet", arch="tiny", weights="none", input_size=32, quiet=True
        )
    )
    assert embedded.embedded == 18 and sum(decoded) == 54


# ---------------------------------------------------------------------------------------------
# The CPU path: one load_image for training and inference, JPEGs decoded at the scale the resize needs


def _jpeg(width: int, height: int, orientation: int = 1) -> io.BytesIO:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, "JPEG", quality=80, exif=exif)
    buffer.seek(0)
    return buffer


@settings(max_examples=examples(40), deadline=None)
@given(
    width=st.integers(8, 900),
    height=st.integers(8, 900),
    size=st.integers(8, 300),
    keep_aspect=st.booleans(),
    orientation=st.sampled_from([1, 3, 6, 8]),  # upright, upside down, and the two that swap the sides
)
def test_a_jpeg_decodes_at_the_smallest_dct_scale_that_still_covers_its_resize(
    width: int, height: int, size: int, keep_aspect: bool, orientation: int
) -> None:
    with Image.open(_jpeg(width, height, orientation)) as image:
        shown = decoding.upright_size(image)
        target = decoding.resized_size(*shown, size, keep_aspect)
        decoded = decoding.decode(image, target)
    assert shown == ((height, width) if orientation in (6, 8) else (width, height))
    assert decoded.mode == "RGB"
    # the resize only ever shrinks (a picture smaller than its target decodes whole)
    assert decoded.size == shown or (decoded.width >= target[0] and decoded.height >= target[1])
    if shown[0] >= 2 * target[0] and shown[1] >= 2 * target[1]:  # room for a reduced scale: it is taken
        assert decoded.width < shown[0]
    scale = next(s for s in (1, 2, 4, 8) if decoded.size == (-(-shown[0] // s), -(-shown[1] // s)))
    if scale < 8:  # the next coarser scale would not cover the target
        assert 2 * scale * target[0] > shown[0] or 2 * scale * target[1] > shown[1]


def test_what_is_not_a_big_jpeg_reads_exactly_as_a_full_decode(tmp_path: Path) -> None:
    files = _files(tmp_path)  # 120 x 90: too small to decode reduced for 48 px
    for name in ("baseline", "grey", "png", "cmyk", "progressive", "rotated"):
        reduced, whole = decoding.load_image(files[name], SIZE), decoding.load_image(files[name], SIZE, draft=False)
        assert reduced.size == (SIZE, SIZE) and reduced.mode == "RGB"
        assert np.array_equal(np.asarray(reduced), np.asarray(whole)), name
    big = tmp_path / "big.png"
    draw_image((1,), 3, seed=2, size=(640, 480)).save(big)
    assert np.array_equal(
        np.asarray(decoding.load_image(big, SIZE)), np.asarray(decoding.load_image(big, 48, draft=False))
    )


def test_training_and_predict_read_a_large_jpeg_reduced_with_the_labels_of_a_full_decode(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from europeana_imgcls.datasets import folders

    folder = tmp_path / "new"
    folder.mkdir()
    for j in range(6):  # originals 20 times the tiny net's 32 px: decoded at 1/8
        draw_image((j % 3,), 3, seed=50 + j, size=(640, 800)).save(folder / f"{j}.jpg", quality=90)
    sizes: list[tuple[int, int]] = []
    real = decoding.decode
    monkeypatch.setattr(
        decoding, "decode", lambda image, target: sizes.append(real(image, target).size) or real(image, target)
    )
    images = ImageSet(sorted(folder.glob("*.jpg")), np.arange(6) % 3, ["a", "b", "c"], task_for("single-label"))
    trained_on = torch.stack([ImageDataset(images, 32)[i][0] for i in range(6)])  # what training reads
    assert sizes == [(80, 100)] * 6
    reduced = tmp_path / "reduced.csv"
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=reduced, quiet=True))
    assert sizes == [(80, 100)] * 12  # predict reads them through the same function, at the same scale
    monkeypatch.setattr(folders, "load_image", functools.partial(decoding.load_image, draft=False))
    full = tmp_path / "full.csv"
    predict(PredictConfig(run=trained_run, inputs=[str(folder)], output=full, quiet=True))
    assert [r["prediction"] for r in rows(reduced)] == [r["prediction"] for r in rows(full)]
    whole = torch.stack([ImageDataset(images, 32)[i][0] for i in range(6)])
    assert (trained_on.float() - whole.float()).abs().mean() < 3  # a few levels apart, the same picture
