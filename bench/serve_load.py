"""`bgrm serve` under load, as its clients use it: the bench's serve rows.

    .venv/bin/python bench/serve_load.py [--total 500] [--size 160]

runs the load alone and prints its numbers and the server's memory curve:
10 clients, each in a loop sending 5 photos in one request, polling
/v1/results/ until the job is finished and downloading every result, until
``--total`` photos are done. Every /v1/results/ answer's latency is kept
(the cores are busy with the photos all along); the server's RSS is read from
/proc after every photo done.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
IMAGE = "image-backgroundremover"


def make_photos(folder: Path, count: int, size: int | None = None) -> list[Path]:
    """``count`` distinct photos from the fixtures (mirrored, turned, cropped), each
    at most ``size`` pixels on its longer side when given."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        im = Image.open(FIXTURES / PHOTOS[i % 4]).convert("RGB")
        variant = i // 4
        if variant % 2:
            im = ImageOps.mirror(im)
        crop = 1 + (variant // 2) % 4  # 1..4 pixels off each side: distinct bytes
        im = im.crop((crop, crop, im.width - crop, im.height - crop))
        if size:
            im.thumbnail((size, size))
        path = folder / f"photo{i:03d}.png"
        im.save(path)
        out.append(path)
    return out


class Server:
    """A `bgrm serve` process on a free port with its own data dir."""

    def __init__(self, env: dict, data_dir: Path, *args: str):
        self.log = data_dir.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bgrm", "serve", "--port", "0", "--data-dir",
                 str(data_dir), *args], env=env, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + 120
        while not (m := re.search(r"serving on (http://\S+?)/ ", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bgrm serve did not start: {self.log.read_text()}")
            time.sleep(0.05)
        self.url = m.group(1)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)


def one_job(http: requests.Session, url: str, paths: list[Path], latencies: list | None = None,
            poll_s: float = 0.05) -> dict:
    """Send ``paths`` in one request, poll until finished, download every result."""
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    r = http.post(url + "/v1/convert/", files=files, data={"convert_to": IMAGE}, timeout=600)
    r.raise_for_status()
    key = r.json()["uuid"]
    while True:
        t0 = time.perf_counter()
        answer = http.post(url + "/v1/results/", data={"uuid": key}, timeout=600).json()
        if latencies is not None:
            latencies.append(time.perf_counter() - t0)
        if answer["finished"]:
            break
        time.sleep(poll_s)
    for f in answer["files"]:
        body = http.get(url + f["url"], timeout=600).content
        if body[:4] != b"\x89PNG":
            answer["failed"].append({"filename": f["filename"], "error": "not a PNG"})
    return answer


def batch_seconds(server: Server, paths: list[Path]) -> float:
    """Wall time of one request of all ``paths``, to the last download."""
    with requests.Session() as http:
        t0 = time.perf_counter()
        answer = one_job(http, server.url, paths)
        seconds = time.perf_counter() - t0
    if answer["failed"] or len(answer["files"]) != len(paths):
        raise SystemExit(f"serve batch failed: {answer}")
    return seconds


def load(server: Server, photos: list[Path], clients: int = 10, per: int = 5,
         total: int = 500) -> dict:
    """``clients`` loops of ``per`` photos per request until ``total`` are done."""
    lock = threading.Lock()
    state = {"sent": 0, "done": 0, "failed": 0, "lost": 0, "curve": [], "rss50": None}
    latencies: list[float] = []

    def client(c: int) -> None:
        with requests.Session() as http:
            while True:
                with lock:
                    if state["sent"] >= total:
                        return
                    start = state["sent"]
                    state["sent"] += per
                paths = [photos[(start + k) % len(photos)] for k in range(per)]
                try:
                    answer = one_job(http, server.url, paths, latencies, poll_s=0.2)
                except Exception as exc:  # noqa: BLE001 - counted, and the load goes on
                    print(f"  client {c}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    with lock:
                        state["lost"] += per
                    continue
                with lock:
                    state["done"] += len(answer["files"])
                    state["failed"] += len(answer["failed"])
                    state["lost"] += per - len(answer["files"]) - len(answer["failed"])
                    rss = server.rss_mb()
                    state["curve"].append((state["done"], rss))
                    if state["rss50"] is None and state["done"] >= 50:
                        state["rss50"] = rss

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    latencies.sort()
    return {**state, "seconds": seconds, "rss_end": server.rss_mb(),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "max_ms": 1000 * latencies[-1], "polls": len(latencies)}


def curve_lines(curve: list[tuple[int, float]], every: int = 50) -> list[str]:
    """The RSS after each ``every`` photos done."""
    lines, mark = [], every
    for done, rss in curve:
        if done >= mark:
            lines.append(f"{done:5d} photos: {rss:7.1f} MB")
            while mark <= done:
                mark += every
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=500)
    parser.add_argument("--size", type=int, default=160, help="longer side of the photos")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bgrm-serve-load-"))
    env = dict(os.environ, BGRM_MODELS=str(work / "models"))
    server = Server(env, work / "data")
    try:
        photos = make_photos(work / "photos", 50, args.size)
        before = os.getloadavg()
        got = load(server, photos, total=args.total)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} cores; load average {before[0]:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print(f"{got['done']} photos done in {got['seconds']:.0f} s, {got['failed']} failed, "
          f"{got['lost']} lost; /v1/results/ p50 {got['p50_ms']:.1f} ms, p99 "
          f"{got['p99_ms']:.1f} ms, max {got['max_ms']:.1f} ms ({got['polls']} polls); RSS "
          f"{got['rss50']:.1f} MB after 50, {got['rss_end']:.1f} MB at end "
          f"({got['rss_end'] / got['rss50']:.3f}x)")
    print("\n".join(curve_lines(got["curve"])))


if __name__ == "__main__":
    main()
