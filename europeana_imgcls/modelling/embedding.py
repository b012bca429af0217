"""``eic embed``: one vector per image from a frozen pretrained backbone, its classifier head removed.

Most museums have no GPU. Embedding every image once and fitting a light head per fold (``eic train
--method linear-probe|knn``) turns a k-fold protocol of hours into minutes. Images are read by the same
pipeline as training (draft decoding, resize, normalisation, DataLoader; CUDA-aware), and the table is
written in chunks (``OUT.partial/``), so an interrupted run carries on with ``resume``. With ``shard``
I/N a run embeds only the images whose file name hashes to its shard, into chunks named for the shard;
a run without ``shard`` and with ``resume`` finds them done and writes the table.

The table has ``image, category, ID, provider, embedding``; ``OUT.embedding.json`` beside it says which
backbone, weights and input size made it, so a run never mixes vectors of different backbones.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ..core.config import EmbedConfig, public_dict
from ..core.errors import ConfigError, DatasetError
from ..core.naming import record_id_of
from ..core.sharding import Shard
from ..core.tables import atomic_path, refuse_existing, sidecar, write_json
from ..core.version import __version__
from ..datasets.folders import ImageDataset, ModelInput, make_loader
from ..datasets.imageset import ImageSet, provider_of
from ..datasets.tasks import scan_images
from .models import build_model, get_arch, set_head
from .runtime import autocast_dtype, default_workers, resolve_device

CHUNK = 2048  # images per chunk written: what an interruption can cost at most


@dataclass
class EmbedReport:
    output: Path
    images: int = 0
    embedded: int = 0
    already_done: int = 0
    unreadable: int = 0
    dim: int = 0
    seconds: float = 0.0
    shard: str | None = None  # a shard's run leaves its chunks in OUT.partial/ for the merging run

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def feature_model(arch: str, weights: str) -> nn.Module:
    """The backbone of ``arch`` with ``weights`` and the classifier head replaced by the identity.

    With ``weights`` none the random weights are seeded (in a forked RNG, the caller's left alone), so two
    runs embed with the same backbone: a table and a run fitted on it always agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, 1, weights)
    set_head(model, arch, nn.Identity())
    return model.eval()


@torch.inference_mode()
def batches(model: nn.Module, images: ImageSet, input_size: int, mean: Any, std: Any, device: torch.device, *,
            batch_size: int = 64, num_workers: int | None = None, amp: bool = True
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch, in order: the positions in ``images``, their embeddings (float32) and whether each could be
    decoded. One loader for all the images, so its workers start once and its prefetching never drains."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(ImageDataset(images, input_size), batch_size=batch_size, shuffle=False,
                         num_workers=default_workers(device, num_workers), seed=0, pin_memory=device.type == "cuda")
    dtype = autocast_dtype(device, amp)
    to_model = ModelInput(mean, std, device)
    for inputs, labels, index in loader:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            vectors = model(to_model(inputs)).float().cpu().numpy()
        yield index.numpy(), vectors, np.asarray(images.task.readable(labels))


def compute(model: nn.Module, images: ImageSet, input_size: int, mean: Any, std: Any, device: torch.device, *,
            batch_size: int = 64, num_workers: int | None = None, amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N x D, float32) of ``images`` and a mask of those that could be decoded."""
    parts = list(batches(model, images, input_size, mean, std, device, batch_size=batch_size,
                         num_workers=num_workers, amp=amp))
    return _joined(parts)


def _joined(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, dtype=bool)
    return np.concatenate([v for _, v, _ in parts]), np.concatenate([ok for _, _, ok in parts])


def embed(config: EmbedConfig) -> EmbedReport:
    """Embed every image of ``config.data_dir`` into ``config.output``; see the module docstring."""
    if config.output.suffix.lower() != ".parquet":
        raise ConfigError(f"{config.output}: embeddings are written as .parquet")
    arch = get_arch(config.arch)
    partial = config.output.with_name(config.output.name + ".partial")
    shard = config.shard_spec
    if not config.resume:
        refuse_existing(config.output, False)
        if any(partial.glob(_chunks(shard))):
            raise DatasetError(f"an interrupted (or sharded) embedding into {config.output} was found: pass "
                               f"`resume` to carry on (and merge shards), or delete {partial}")
    images = scan_images(config.data_dir, config.mode, config.labels)
    if not images.paths:
        raise DatasetError(f"{config.data_dir}: no readable images to embed")
    meta = describe(config.arch, config.weights, config.input_size, arch.mean, arch.std, images, config.mode)
    meta["data_dir"] = str(config.data_dir.resolve())
    _check_partial(partial, meta)
    done = _done(partial)
    # A file's name, not its path, picks its shard: the same on every machine that mounts the folder. What is
    # done is known by where a path points, not by how it was typed (`data` in one run, `/mnt/data` in another).
    finished = [str(p.resolve()) in done for p in images.paths]
    todo = [i for i, (p, was) in enumerate(zip(images.paths, finished, strict=True))
            if not was and (shard is None or shard.owns(p.name))]
    report = EmbedReport(config.output, images=len(images), already_done=sum(finished), shard=config.shard)
    device = resolve_device(config.device)
    model = feature_model(config.arch, config.weights)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / "meta.json", meta)
    started = time.perf_counter()
    wanted = images.subset(todo)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held = 0  # images in ``pending``
    for batch in (batches(model, wanted, config.input_size, arch.mean, arch.std, device,
                          batch_size=config.batch_size, num_workers=config.num_workers, amp=config.amp)
                  if todo else ()):
        pending.append(batch)
        held += len(batch[0])
        if held >= CHUNK:
            _write_chunk(partial, shard, wanted, pending, report)
            pending, held = [], 0
    if pending:
        _write_chunk(partial, shard, wanted, pending, report)
    report.seconds = time.perf_counter() - started
    if shard is not None:
        return report
    table = _merged(partial)
    report.dim = int(table["embedding"].list.len().first() if table.height else 0)
    meta["dim"] = report.dim
    with atomic_path(config.output) as tmp:
        table.write_parquet(tmp)
    write_json(sidecar(config.output, "embedding"), {**meta, "config": public_dict(config)})
    shutil.rmtree(partial)
    return report


def describe(arch: str, weights: str, input_size: int, mean: Any, std: Any, images: ImageSet,
             mode: str) -> dict[str, Any]:
    """What makes embeddings comparable: two tables (or a table and a run) must agree on all of it."""
    return {"arch": arch, "weights": weights if weights in ("imagenet", "none") else str(Path(weights).resolve()),
            "input_size": input_size, "mean": list(mean), "std": list(std), "mode": mode, "classes": images.classes,
            "software": f"europeana-imgcls {__version__}"}


def rows_frame(images: ImageSet, vectors: np.ndarray, readable: np.ndarray) -> pl.DataFrame:
    """One row per decodable image: path, label(s), record ID, provider and the vector."""
    keep = np.flatnonzero(readable)
    return pl.DataFrame({
        "image": [str(images.paths[i]) for i in keep],
        "category": [images.task.truth_text(images.labels[i], images.classes) for i in keep],
        "ID": [record_id_of(images.paths[i].name) for i in keep],
        "provider": [provider_of(images.paths[i]) for i in keep],
        "embedding": [vectors[i].astype(np.float32).tolist() for i in keep],
    }, schema={"image": pl.Utf8, "category": pl.Utf8, "ID": pl.Utf8, "provider": pl.Utf8,
               "embedding": pl.List(pl.Float32)})


def read_embeddings(path: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """An embeddings table and what made it."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such embeddings table (eic embed writes one)")
    meta_path = sidecar(path, "embedding")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DatasetError(f"{path}: {meta_path.name} is missing or unreadable, so it is unknown which backbone "
                           "made these embeddings; run eic embed again") from None
    try:
        table = pl.read_parquet(path)
    except Exception as exc:  # polars raises many kinds; all mean "unreadable"
        raise DatasetError(f"{path}: cannot read it ({type(exc).__name__})") from None
    missing = {"image", "category", "embedding"} - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: not an eic embeddings table (no {', '.join(sorted(missing))} column)")
    return table, meta


def matrix(table: pl.DataFrame) -> np.ndarray:
    return np.asarray(table["embedding"].to_list(), dtype=np.float32).reshape(table.height, -1)


def check_compatible(meta: dict[str, Any], arch: str, weights: str, input_size: int, source: Path) -> None:
    """Refuse embeddings made by another backbone, weights or input size, naming both."""
    wanted = {"arch": arch, "weights": weights if weights in ("imagenet", "none") else str(Path(weights).resolve()),
              "input_size": input_size}
    differ = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    if differ:
        said = "; ".join(f"{k}: {have} in {source.name}, {want} for this run" for k, (have, want) in differ.items())
        raise DatasetError(f"{source} was embedded with another backbone ({said}): embed again with the run's "
                           "settings, or train with the embeddings' ones")


def _check_partial(partial: Path, meta: dict[str, Any]) -> None:
    if not (partial / "meta.json").is_file():
        return
    before = json.loads((partial / "meta.json").read_text(encoding="utf-8"))
    differ = [k for k in ("arch", "weights", "input_size", "mode", "data_dir", "classes")
              if before.get(k) != meta.get(k)]
    if differ:
        raise DatasetError(f"{partial} was started with other settings ({', '.join(differ)}: "
                           f"{', '.join(str(before.get(k)) for k in differ)}): resume with those, or delete it")


def _chunks(shard: Shard | None) -> str:
    """The chunk files a run writes: ``chunk-00003.parquet``, or a shard's ``chunk-shard-1-of-4-00003.parquet``."""
    return f"chunk-{shard.tag}-*.parquet" if shard else "chunk-*.parquet"


def _write_chunk(partial: Path, shard: Shard | None, images: ImageSet,
                 parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], report: EmbedReport) -> None:
    """The batches embedded since the last chunk, as the next chunk file (written whole or not at all)."""
    vectors, readable = _joined(parts)
    report.unreadable += int((~readable).sum())
    report.embedded += int(readable.sum())
    rows = rows_frame(images.subset(np.concatenate([index for index, _, _ in parts])), vectors, readable)
    with atomic_path(partial / _chunk_name(partial, shard)) as tmp:
        rows.write_parquet(tmp)


def _chunk_name(partial: Path, shard: Shard | None) -> str:
    """The next chunk's name (numbered among the run's own chunks)."""
    prefix, own = (f"chunk-{shard.tag}-", _chunks(shard)) if shard else ("chunk-", "chunk-[0-9]*.parquet")
    return f"{prefix}{len(list(partial.glob(own))):05d}.parquet"


def _done(partial: Path) -> set[str]:
    """The images the chunks hold, as resolved paths."""
    done: set[str] = set()
    for chunk in sorted(partial.glob("chunk-*.parquet")):
        done.update(str(Path(p).resolve()) for p in pl.read_parquet(chunk, columns=["image"])["image"].to_list())
    return done


def _merged(partial: Path) -> pl.DataFrame:
    """Every chunk's rows, an image once (by where its path points), in chunk order."""
    table = pl.concat([pl.read_parquet(p) for p in sorted(partial.glob("chunk-*.parquet"))], how="vertical")
    where = pl.Series([str(Path(p).resolve()) for p in table["image"].to_list()])
    return table.filter(where.is_first_distinct())
