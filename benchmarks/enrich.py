"""Enrichment against prediction: does calibration and annotation bookkeeping cost images/s?

Trains a small cross-validated run on sandbox images, then labels the same harvest table of
already-downloaded images (the main case: ``--table`` with a filled ``--image-dir``) with ``eic predict``
and with ``eic enrich`` (annotations plus a review file), alternating, and prints the best of each.
Target: enrich within 10% of predict.

    python benchmarks/enrich.py [--records-per-level 40] [--arch resnet18] [--input-size 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from europeana_imgcls import DownloadConfig, PredictConfig, TrainConfig, download, predict, train
from europeana_imgcls.core.config import EnrichConfig, SandboxConfig
from europeana_imgcls.europeana.sandbox import Sandbox
from europeana_imgcls.outputs.enrichment import enrich

VOCAB = {
    "map": "http://data.europeana.eu/concept/base/43",
    "painting": "http://data.europeana.eu/concept/base/47",
    "specimen": "http://data.europeana.eu/concept/base/167",
    "photograph": "http://data.europeana.eu/concept/base/48",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records-per-level", type=int, default=40)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(SandboxConfig(vocab=VOCAB, port=0, per_level=args.records_per_level)) as sb,
    ):
        root = Path(tmp)
        records = [r for r in sb.catalogue if r.type == "IMAGE" and r.has_url]
        rows = [{"category": r.labels[0], "ID": r.id, "URL": sb.image_url(r)} for r in records]
        pl.DataFrame(rows[0::3]).write_csv(root / "train.csv")
        pl.DataFrame(rows).write_csv(root / "table.csv")
        download(DownloadConfig(table=root / "train.csv", output_dir=root / "train", quiet=True, max_side=256))
        train(
            TrainConfig(
                data_dir=root / "train",
                output_dir=root / "run",
                arch=args.arch,
                weights="none",
                epochs=1,
                input_size=args.input_size,
                folds=3,
                quiet=True,
                gradcam_images=0,
                device=args.device,
            )
        )
        common = dict(
            run=root / "run",
            table=root / "table.csv",
            image_dir=root / "images",
            batch_size=args.batch_size,
            device=args.device,
            quiet=True,
        )
        predict(PredictConfig(**common, output=root / "warm-up.csv"))  # fetches the images once
        best = {"eic predict": float("inf"), "eic enrich": float("inf")}
        counted = 0
        for n in range(args.rounds):
            started = time.perf_counter()
            result = predict(PredictConfig(**common, output=root / f"p{n}.csv"))
            best["eic predict"] = min(best["eic predict"], time.perf_counter() - started)
            counted = result.predicted
            started = time.perf_counter()
            enrich(EnrichConfig(**common, output=root / f"e{n}.jsonld", review_output=root / f"r{n}.json"))
            best["eic enrich"] = min(best["eic enrich"], time.perf_counter() - started)
    rate = {tool: counted / seconds for tool, seconds in best.items()}
    print(f"{counted} images, {args.arch} at {args.input_size} px, batch {args.batch_size}, best of {args.rounds}")
    print("| tool | seconds | images/s | vs predict |")
    print("| --- | --- | --- | --- |")
    for tool, seconds in best.items():
        print(f"| {tool} | {seconds:.2f} | {rate[tool]:.1f} | {rate[tool] / rate['eic predict']:.2f} |")


if __name__ == "__main__":
    main()
