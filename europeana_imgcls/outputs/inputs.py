"""What ``eic predict`` and ``eic enrich`` label: image files, folders (recursive), http(s) URLs, the records of a
harvest table, or a Search API query's; URL and record images are fetched (``eic download``) into an image folder
predict owns. A shard takes its share: a file by its name, a record by its ID.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..core.config import DownloadConfig, PredictConfig
from ..core.errors import DatasetError
from ..core.journal import input_key
from ..core.naming import record_id_of
from ..core.outputs import OutputKind, claim
from ..core.recognise import IMAGE_SUFFIXES, is_run, what_is
from ..core.tables import check_table_suffix, read_table
from ..datasets.class_folders import list_images
from ..datasets.tasks import MultiLabel
from ..europeana.search_api import PAGE_ROWS, SearchClient, first, is_record_id, record_uri
from ..europeana.thumbnails import shows
from ..modelling.processes import Dist

IMAGE_DIR_MARKER = ".eic-predict-images"  # an image folder predict made (and may write inputs and labels in)
Record = dict[str, str | None]  # a record to fetch: ID, URL, URI, preview, image (what was given), record ("yes")


@dataclass(frozen=True)
class Item:
    image: str  # what the user gave: a path or a URL
    path: Path  # the local file to read (a URL's once fetched)
    id: str | None = None
    uri: str | None = None

    @functools.cached_property
    def key(self) -> str:  # cached: a local file's key resolves its path, and runs look it up more than once
        return input_key(self.record, self.image)

    @property
    def record(self) -> str | None:
        """The record the image shows: its ID, or the one a file named by eic download encodes."""
        return self.id or (
            None if self.image.lower().startswith(("http://", "https://")) else record_id_of(self.path.name)
        )


def _unique(items: list[Any], key: Callable[[Any], str]) -> list[Any]:
    """``items`` in order, each key once: an input given twice is labelled (and annotated) once."""
    seen: set[str] = set()
    kept = []
    for item in items:
        known = key(item)
        if known not in seen:
            seen.add(known)
            kept.append(item)
    return kept


def check_arguments(run: Path, inputs: list[str]) -> None:
    """Before any work: a run and images given the other way round, or a table given as images, said with what
    to pass instead (the command would otherwise find nothing to read and end with an empty output)."""
    runs = [given for given in inputs if is_run(Path(given))]
    if runs and not is_run(run):
        raise DatasetError(
            f"{run} is {what_is(run) or 'not a training run'} and {runs[0]} is a training run: the run comes "
            "first, then the images"
        )
    for given in inputs:
        kind = what_is(Path(given))
        if kind == "a table":
            raise DatasetError(f"{given} is a table: pass it as `table` {given}")
        if kind and not kind.startswith(("an image", "a folder of class folders")):
            raise DatasetError(f"{given} is {kind}, not images")


def gather(config: PredictConfig, world: Dist) -> tuple[list[Item], int]:
    """The images to label, each once (a shard's: its share), and how many records' images could not be fetched."""
    items, urls = _given(config.inputs)
    urls += _table_records(config) + (_query(config) if config.query else [])
    urls = _unique(urls, lambda row: row["ID"] or "")  # a record listed twice is fetched once
    shard = config.shard_spec
    if shard is not None:  # a file by its name (the same on every machine), a record by its ID
        items = [item for item in items if shard.owns(Path(item.image).name)]
        urls = [row for row in urls if shard.owns(row["ID"] or "")]
    fetched, failed = _fetch(urls, config, world) if urls else ([], 0)
    items = _unique(items + fetched, lambda item: item.key)
    if not items and not failed:
        raise DatasetError(f"no images found in the inputs{_skipped(config.inputs)}")
    return items, failed


def _skipped(inputs: list[str]) -> str:
    """What the folders among ``inputs`` hold instead of images, for the message that found none: the files
    (a few named), or that a folder is empty; eic's own hidden folders and files are no one's to list."""
    said = []
    for given in inputs:
        folder = Path(given)
        if not folder.is_dir():
            continue
        files = sorted(
            p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        files = [p for p in files if p.is_file()]
        names = ", ".join(p.relative_to(folder).as_posix() for p in files[:3]) + (", ..." if len(files) > 3 else "")
        count = f"{len(files)} file" + ("s" if len(files) > 1 else "")
        said.append(f"{given} holds {count}, none an image ({names})" if files else f"{given} is empty")
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    return f": {'; '.join(said)}; images are files ending in {kinds}" if said else ""


def _given(inputs: list[str]) -> tuple[list[Item], list[Record]]:
    """The local images and the URLs among the inputs."""
    items: list[Item] = []
    urls: list[Record] = []
    for given in inputs:
        if given.lower().startswith(("http://", "https://")):
            urls.append({"ID": _url_id(given), "URL": given, "URI": None, "image": given})
            continue
        path = Path(given)
        if path.is_dir():
            items += [Item(str(p), p) for p in list_images(path)]
        elif path.is_file():
            items.append(Item(str(path), path))
        else:
            raise DatasetError(f"{given}: no such image file, folder or URL")
    return items, urls


def _table_records(config: PredictConfig) -> list[Record]:
    """The records of ``config.table`` that have an ID."""
    if config.table is None:
        return []
    check_table_suffix(config.table)
    table = read_table(config.table, required=("ID", "URL"), columns=config.columns)
    return [
        {
            "ID": row["ID"],
            "URL": row["URL"],
            "URI": table_uri(row["ID"], row.get("URI"), config.item_uri),
            "preview": row.get("preview"),
            "image": row["URL"] or row["ID"],
            "record": "yes",
        }
        for row in table.iter_rows(named=True)
        if row["ID"]
    ]


def table_uri(record_id: str, given: str | None, template: str | None) -> str | None:
    """The URI of a table row's record: the table's own, else ``template``'s (a museum's IDs), else Europeana's
    for a Europeana record ID; None when nothing says which record the row is."""
    if given:
        return given
    if template:
        return template.replace("{ID}", quote(record_id, safe="/:@-._~"))
    return record_uri(record_id) if is_record_id(record_id) else None


def _url_id(url: str) -> str:
    """A bare URL's stand-in record ID: its last path part and a hash, so its fetched file gets a readable
    name (not ``http:[ph][ph]host[ph]...``) and two URLs never share one."""
    return f"url-{hashlib.sha1(url.encode()).hexdigest()[:10]}-{last_part(url)[:60]}"


def last_part(url: str) -> str:
    """A URL's (or path's) last part, query dropped, in characters any file system takes."""
    last = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in last) or "image"


def _query(config: PredictConfig) -> list[Record]:
    """Up to ``n`` records with an image, level after level, as harvest asks for them."""
    found: list[Record] = []
    with SearchClient(
        config.api_url,
        config.api_key.get_secret_value(),
        timeout=config.timeout,
        retries=config.retries,
        max_quota_wait=config.max_quota_wait * 3600,
    ) as client:
        for level in config.reusability:
            client.expect(-(-(config.n - len(found)) // PAGE_ROWS))  # the key's quota is paced to what is left
            for item in client.iter_items(config.query or "*", ["TYPE:IMAGE"], reusability=level):
                if len(found) >= config.n:
                    return found
                url = first(item.get("edmIsShownBy"))
                if url:
                    found.append(
                        {
                            "ID": item["id"],
                            "URL": url,
                            "URI": record_uri(item["id"]),
                            "preview": first(item.get("edmPreview")),
                            "image": url,
                            "record": "yes",
                        }
                    )
    return found


def _fetch(rows: list[Record], config: PredictConfig, world: Dist) -> tuple[list[Item], int]:
    """Download (once, on rank 0) the images of URL inputs into the image folder; map them back."""
    import polars as pl

    from ..acquisition.download import download, fetched_from, file_name
    from ..core.tables import write_table

    folder = config.image_dir or config.output.with_name(f"{config.output.stem}_images")
    shard = config.shard_spec
    table = folder / (f"inputs.{shard.tag}.csv" if shard else "inputs.csv")  # shards share the folder
    if world.main:
        _check_image_dir(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / IMAGE_DIR_MARKER).touch()  # first: shards starting at once see the folder is predict's
        write_table(
            pl.DataFrame(
                [{k: r.get(k) for k in ("ID", "URL", "preview")} for r in rows],
                schema={"ID": pl.Utf8, "URL": pl.Utf8, "preview": pl.Utf8},
            ),
            table,
        )
        download(
            DownloadConfig(
                table=table,
                output_dir=folder,
                mode=MultiLabel.name,  # one flat folder and a labels table: no class folders to sort into
                add=True,  # predict's own folder, filled from each run's (and each shard's) inputs: they add up
                quiet=config.quiet,
                fallback_preview=True,
                max_side=512,
                source=config.source,
                thumbnail_url=config.thumbnail_url,
                rate=config.rate,
                shard=config.shard,
                timeout=config.timeout,
                retries=config.retries,
            )
        )
    world.barrier()
    items, failed = [], 0
    fetched = fetched_from(folder)  # fetched.csv, and the journal a shard leaves its outcomes in
    for row in rows:
        path = folder / file_name(row["ID"] or "")
        if path.is_file():
            # A URL given as an input names no record: its ID is only a file name
            image = depicted(row["image"] or "", fetched.get(row["ID"] or ""))
            items.append(Item(image, path, row["ID"] if row.get("record") else None, row.get("URI")))
        else:
            failed += 1
    return items, failed


def depicted(image: str, fetched: str | None) -> str:
    """The image an annotation's source names, of the file saved for a record whose table names ``image``: that
    image where the file came from it or a thumbnail of it (the Thumbnail API names a thumbnail by the MD5 of its
    image's URL), or, where only the record's preview could be had, what the preview shows (the Thumbnail API names
    it in its ``uri``), else the preview itself: never a URL whose picture was not the one labelled."""
    if not fetched or shows(fetched, image):
        return image
    shown = parse_qs(urlsplit(fetched).query).get("uri", [""])[0]
    return shown if shown.startswith(("http://", "https://")) else fetched


def _written_by_predict(config_file: Path, folder: Path) -> bool:
    """Whether a download's config file says it fetched one of predict's input tables into ``folder``."""
    try:
        written = Path(json.loads(config_file.read_text(encoding="utf-8")).get("table")).resolve()
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return written.parent == folder.resolve() and written.name.startswith("inputs") and written.suffix == ".csv"


def _check_image_dir(folder: Path) -> None:
    """The image folder is predict's own (it writes inputs.csv, labels.csv and config.json there; a shard
    its own inputs and config): refuse a folder that holds anything else, such as a training set, rather
    than overwrite its files."""
    claim(folder, IMAGE_DIR, resume=True, option="image_dir")


def _is_image_dir(folder: Path) -> bool:
    return (folder / IMAGE_DIR_MARKER).is_file() or any(
        _written_by_predict(path, folder) for path in folder.glob("config*.json")
    )


IMAGE_DIR = OutputKind("predict-images", "the images eic predict fetched", folder=True, recognise=_is_image_dir)
