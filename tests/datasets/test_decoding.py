"""JPEGs decoded where the model runs (``decode`` auto on CUDA, gpu): the device path is torchvision's
``decode_jpeg``, which also decodes on the CPU, so its batching, resizing, flips, cache and every fallback are
tested here on the CPU; what only a GPU can say (speed, nvJPEG's refusals) is measured by benchmarks/gpu.sh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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

from ..support import make_folders, rows

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
    result = evaluate_run(EvaluateConfig(run=tmp_path / "run", eval_dir=data, output_dir=tmp_path / "eval", quiet=True))
    assert result.images == 18 and not result.unreadable
    assert sum(decoded) == 36
    embedded = embed(
        EmbedConfig(
            data_dir=data, output=tmp_path / "e.parquet", arch="tiny", weights="none", input_size=32, quiet=True
        )
    )
    assert embedded.embedded == 18 and sum(decoded) == 54
