"""Download speed on one loopback corpus: eic download vs the pilot's approach vs img2dataset; thumbnails vs
originals; one run vs 1, 2 and 4 concurrent shards.

The corpus: photo-like JPEGs (40% ~0.5 MP, 40% ~2 MP, 15% ~6 MP, 5% ~24 MP) served from 127.0.0.1
with 100 ms latency per response and 5% bad answers (404, HTML, truncated). The same server answers
Europeana's Thumbnail API route (``/thumbnail/v3/{200|400}/{md5 of the URL}``) with a rendition of the
same picture (404 for the bad ones, as for media without a thumbnail). Each tool runs in its own
process; the tables show images saved per second, bytes received, CPU seconds and peak memory (RSS) of
that process and its children, and the CPU floor of Pillow's draft decode + resize + encode.

    python benchmarks/download.py [--images 600] [--pilot-images 120] [--img2dataset PATH/TO/img2dataset]
                                  [--shards 1,2,4]

img2dataset is measured when an executable is given or found on PATH (install it into a separate
venv: `python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"0.5MP": (816, 612), "2MP": (1632, 1224), "6MP": (3000, 2000), "24MP": (6000, 4000)}
MIX = {"0.5MP": 0.40, "2MP": 0.40, "6MP": 0.15, "24MP": 0.05}
VARIANTS_PER_SIZE = {"0.5MP": 6, "2MP": 6, "6MP": 3, "24MP": 2}
BAD = ("404", "html", "truncated")
LATENCY = 0.1
MEASURE = (
    "import json,resource,subprocess,sys,time;t=time.perf_counter();rc=subprocess.call(sys.argv[1:]);"
    "w=time.perf_counter()-t;u=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(json.dumps({'rc':rc,'wall':w,'cpu':u.ru_utime+u.ru_stime,'rss_mb':u.ru_maxrss/1024}))"
)


def photo(size: tuple[int, int], seed: int) -> bytes:
    """Smooth random shapes plus grain: entropy (and so decode cost) like a photograph's."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    base += rng.integers(-10, 11, base.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_corpus(folder: Path, count: int) -> list[tuple[str, str]]:
    """Write the image pool to ``folder``; return (kind, pool file) for each of ``count`` URLs."""
    pool: dict[str, list[str]] = {}
    for kind, size in SIZES.items():
        pool[kind] = []
        for v in range(VARIANTS_PER_SIZE[kind]):
            name = f"{kind}_{v}.jpg"
            (folder / name).write_bytes(photo(size, seed=hash((kind, v)) % 2**32))
            pool[kind].append(name)
    rng = np.random.default_rng(0)
    kinds = rng.choice(list(MIX), size=count, p=list(MIX.values()))
    entries = []
    for i, kind in enumerate(kinds):
        if rng.random() < 0.05:
            entries.append((BAD[i % len(BAD)], ""))
        else:
            entries.append(("good", pool[kind][i % len(pool[kind])]))
    return entries


def rendition(data: bytes, side: int) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (side, side))
    image = image.convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def serve(folder: Path, entries: list[tuple[str, str]], port_out: multiprocessing.Queue) -> None:
    blobs = {name: (folder / name).read_bytes() for _, name in entries if name}
    thumbs = {(name, side): rendition(data, side) for name, data in blobs.items() for side in (200, 400)}
    by_digest: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(LATENCY)
            if self.path.startswith("/thumbnail/v3/"):
                return self._thumbnail()
            try:
                index = int(self.path.rsplit("/", 1)[-1].split(".")[0])
                kind, name = entries[index]
            except (ValueError, IndexError):
                kind, name = "404", ""
            if kind == "good":
                body, status, ctype = blobs[name], 200, "image/jpeg"
            elif kind == "html":
                body, status, ctype = b"<html>viewer</html>", 200, "text/html"
            elif kind == "truncated":
                body, status, ctype = next(iter(blobs.values()))[:5000], 200, "image/jpeg"
            else:
                body, status, ctype = b"not found", 404, "text/plain"
            self._send(status, ctype, body)

        def _thumbnail(self) -> None:
            _, _, _, size, digest = self.path.split("/")[:5]
            if not by_digest:
                host = self.headers.get("Host")
                by_digest.update(
                    {hashlib.md5(f"http://{host}/img/{i}.jpg".encode()).hexdigest(): i for i in range(len(entries))}
                )
            index = by_digest.get(digest)
            if index is None or entries[index][0] != "good":
                return self._send(404, "application/json", b'{"error":"Media file not found"}')
            self._send(200, "image/jpeg", thumbs[(entries[index][1], int(size))])

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        # A listen backlog as real web servers have (nginx: 511). It must be a class attribute:
        # the constructor calls listen() with it; socketserver's default of 5 drops the SYNs of
        # any client opening more connections at once, which then wait a second to retry.
        request_queue_size = 511
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # clients that hang up are not news

    server = Server(("127.0.0.1", 0), Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


def pilot_fetch(url: str, path: str) -> None:
    with urllib.request.urlopen(url) as response:
        data = response.read()
    Image.open(io.BytesIO(data)).convert("RGB").save(path)


def pilot_download(table: str, out: str) -> None:
    """The pilot's approach: one row at a time, a forked process per image, killed after 7 s."""
    ctx = multiprocessing.get_context("fork")
    with open(table, newline="") as handle:
        for row in csv.DictReader(handle):
            path = os.path.join(out, row["ID"].replace("/", "[ph]") + ".jpg")
            proc = ctx.Process(target=pilot_fetch, args=(row["URL"], path))
            proc.start()
            proc.join(7)
            if proc.is_alive():
                proc.terminate()


def measure(cmd: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".webp", ".png"))


def cpu_floor(folder: Path, max_side: int = 256) -> float:
    """Images/s that decode (draft) + resize + encode alone allow on all cores, for this mix."""
    per_kind = {}
    for kind in SIZES:
        data = (folder / f"{kind}_0.jpg").read_bytes()
        start = time.process_time()
        for _ in range(3):
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (max_side, max_side))
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side))
            image.save(io.BytesIO(), "JPEG", quality=90)
        per_kind[kind] = (time.process_time() - start) / 3
    mean = sum(MIX[k] * per_kind[k] for k in SIZES)
    return (os.cpu_count() or 1) / mean


def write_table(path: Path, base: str, indices: range) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "ID", "URL"])
        for i in indices:
            writer.writerow(["photo", f"/bench/{i}", f"{base}/img/{i}.jpg"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--pilot-images", type=int, default=120)
    parser.add_argument("--img2dataset", default=shutil.which("img2dataset"))
    parser.add_argument("--shards", default="1,2,4", help="Shard counts to compare with one run (empty: none).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eic-bench-"))
    entries = build_corpus(work, args.images)
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(work, entries, ports), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{ports.get(timeout=60)}"
    good = sum(1 for kind, _ in entries if kind == "good")
    rows = []
    try:
        write_table(work / "all.csv", base, range(args.images))
        out = work / "eic"
        m = measure(
            [
                sys.executable,
                "-m",
                "europeana_imgcls",
                "download",
                str(work / "all.csv"),
                "-o",
                str(out),
                "--max-side",
                "256",
                "--concurrency",
                "32",
                "--per-host",
                "32",
                "--quiet",
            ]
        )
        rows.append(("eic download --max-side 256", count_images(out), args.images, m))

        write_table(work / "pilot.csv", base, range(args.pilot_images))
        out = work / "pilot"
        out.mkdir()
        m = measure([sys.executable, __file__, "--pilot", str(work / "pilot.csv"), str(out)])
        rows.append(("pilot approach (sequential, fork per image)", count_images(out), args.pilot_images, m))

        if args.img2dataset:
            urls = work / "urls.csv"
            shutil.copy(work / "all.csv", urls)
            out = work / "i2d"
            m = measure(
                [
                    args.img2dataset,
                    "--url_list",
                    str(urls),
                    "--input_format",
                    "csv",
                    "--url_col",
                    "URL",
                    "--output_folder",
                    str(out),
                    "--output_format",
                    "files",
                    "--image_size",
                    "256",
                    "--processes_count",
                    "2",
                    "--enable_wandb",
                    "False",
                ]
            )
            rows.append(("img2dataset --image_size 256 --processes_count 2", count_images(out), args.images, m))
        scale = scale_rows(work, base, args, entries, [int(n) for n in args.shards.split(",") if n.strip()])
    finally:
        server.terminate()
    floor = cpu_floor(work)
    print(
        f"corpus: {args.images} URLs ({good} good), {LATENCY * 1000:.0f} ms latency, 5% bad; "
        f"{os.cpu_count()} CPU cores; CPU floor (draft decode + resize + encode): {floor:.0f} images/s"
    )
    print(f"{'tool':<50} {'saved':>7} {'asked':>6} {'wall s':>8} {'images/s':>9} {'CPU s':>7} {'peak MB':>8}")
    pilot_rate = None
    for name, saved, asked, m in rows:
        rate = saved / m["wall"]
        pilot_rate = rate if name.startswith("pilot") else pilot_rate
        print(f"{name:<50} {saved:>7} {asked:>6} {m['wall']:>8.1f} {rate:>9.1f} {m['cpu']:>7.1f} {m['rss_mb']:>8.0f}")
    eic_rate = rows[0][1] / rows[0][3]["wall"]
    if pilot_rate:
        print(f"eic / pilot approach: {eic_rate / pilot_rate:.1f}x")
    if len(rows) > 2:
        print(f"eic / img2dataset: {eic_rate / (rows[2][1] / rows[2][3]['wall']):.1f}x")
    print(f"eic / CPU floor: {eic_rate / floor:.2f}")
    print()
    print(
        f"{'eic download --max-side 256':<50} {'saved':>7} {'wall s':>8} {'images/s':>9} {'MB in':>7} "
        f"{'CPU s':>7} {'peak MB':>8}"
    )
    for name, saved, m, megabytes in scale:
        print(
            f"{name:<50} {saved:>7} {m['wall']:>8.1f} {saved / m['wall']:>9.1f} {megabytes:>7.1f} "
            f"{m['cpu']:>7.1f} {m['rss_mb']:>8.0f}"
        )
    shutil.rmtree(work, ignore_errors=True)


def scale_rows(
    work: Path, base: str, args: argparse.Namespace, entries: list[tuple[str, str]], shard_counts: list[int]
) -> list[tuple[str, int, dict[str, float], float]]:
    """Thumbnails vs originals, and N concurrent shards (the same total concurrency) vs one run."""
    eic = [
        sys.executable,
        "-m",
        "europeana_imgcls",
        "download",
        str(work / "all.csv"),
        "--max-side",
        "256",
        "--per-host",
        "32",
        "--quiet",
    ]
    rows = []
    for source in ("original", "thumbnail"):
        out = work / f"src-{source}"
        m = measure(
            [*eic, "-o", str(out), "--concurrency", "32", "--source", source, "--thumbnail-url", f"{base}/thumbnail/v3"]
        )
        # Bytes received: the originals' sizes, or the 400 px renditions' (what --max-side 256 asks for).
        # The corpus reuses a small pool of pictures: each pool file's size (or its rendition's) once.
        pool = {name for kind, name in entries if kind == "good"}
        sizes = {
            n: (work / n).stat().st_size if source == "original" else len(rendition((work / n).read_bytes(), 400))
            for n in pool
        }
        size = sum(sizes[name] for kind, name in entries if kind == "good")
        rows.append((f"--source {source}", count_images(out), m, size / 1e6))
    for count in shard_counts:
        out = work / f"shards-{count}"
        per = str(max(1, 32 // count))
        cmd = [sys.executable, "-c", SHARDS, str(count), *eic, "-o", str(out), "--concurrency", per]
        m = measure(cmd)
        label = "one run (no --shard)" if count == 1 else f"{count} concurrent shards (--concurrency {per} each)"
        rows.append((label, count_images(out), m, float("nan")))
    return rows


# N processes of the same command with --shard k/N, started together; waits for all.
SHARDS = (
    "import subprocess,sys;n=int(sys.argv[1]);cmd=sys.argv[2:];"
    "ps=[subprocess.Popen(cmd+(['--shard',f'{k}/{n}'] if n>1 else [])) for k in range(n)];"
    "sys.exit(max(p.wait() for p in ps))"
)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--pilot":
        pilot_download(sys.argv[2], sys.argv[3])
    else:
        main()
