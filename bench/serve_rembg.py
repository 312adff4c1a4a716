"""`bgrm serve` against `rembg s`, warm, side by side: the bench's serve_rembg row.

    .venv/bin/python bench/serve_rembg.py [--reps 3] [--engines auto,onnxruntime]

Both servers run u2netp (the same file) on loopback, each warmed with one
request first. A round sends the bench's five small photos twice, from 1 or
2 clients at once; a bgrm client polls /v1/results/ every 20 ms and downloads
the result, a rembg client gets the PNG in its answer. Rounds alternate
between the servers, so the machine's noise hits both; each server's own CPU
seconds in the round are read from /proc. The photos' masks (and mattes) are
compared with rembg's once, on the first round's outputs.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402 - bench/ is not a package

BIN = Path(sys.executable).parent


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Rembg:
    """A `rembg s` process on loopback, without its Gradio page (idle CPU)."""

    def __init__(self, env: dict, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN / "rembg"), "s", "--host", "127.0.0.1",
                                      "--port", str(port), "--no-ui", "--log_level", "warning"],
                                     env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(self.url + "/api", timeout=5)
                return
            except requests.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"rembg s did not start: {log.read_text()}") from None
                time.sleep(0.1)

    def one(self, http: requests.Session, path: Path, matting: bool) -> bytes:
        r = http.post(self.url + "/api/remove", files={"file": (path.name, path.read_bytes())},
                      data={"model": "u2netp", "a": str(matting).lower()}, timeout=600)
        r.raise_for_status()
        return r.content

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()


class Bgrm(serve_load.Server):
    """A `bgrm serve` process; one photo per request, polled every 20 ms."""

    def one(self, http: requests.Session, path: Path, matting: bool) -> bytes:
        files = [("files", (path.name, path.read_bytes()))]
        data = {"convert_to": serve_load.IMAGE, "model": "u2netp",
                "alpha_matting": str(matting).lower()}
        r = http.post(self.url + "/v1/convert/", files=files, data=data, timeout=600)
        r.raise_for_status()
        key = r.json()["uuid"]
        while not (answer := http.post(self.url + "/v1/results/", data={"uuid": key},
                                       timeout=600).json())["finished"]:
            time.sleep(0.02)
        if answer["failed"]:
            raise SystemExit(f"bgrm serve failed: {answer['failed']}")
        return http.get(self.url + answer["files"][0]["url"], timeout=600).content


def one_round(server, photos: list[Path], clients: int, matting: bool
              ) -> tuple[float, float, dict]:
    """(wall seconds, the server's CPU seconds, {photo: output}) for ``photos`` sent
    by ``clients`` threads, each taking the next photo when its last is back."""
    todo = list(enumerate(photos))
    lock = threading.Lock()
    outputs: dict[int, bytes] = {}
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as http:
            while True:
                with lock:
                    if not todo:
                        return
                    i, path = todo.pop(0)
                try:
                    outputs[i] = server.one(http, path, matting)
                except Exception as exc:  # noqa: BLE001 - said after the round
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return

    cpu0, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds(server.proc.pid) - cpu0
    if failures or len(outputs) != len(photos):
        raise SystemExit(f"a round failed: {failures}")
    return seconds, cpu, outputs


def alpha_agreement(ours: dict, theirs: dict) -> tuple[float, float]:
    """(worst IoU of alpha > 127, worst mean |difference| in levels) over the photos."""
    worst_iou, worst_mad = 1.0, 0.0
    for i, data in ours.items():
        a = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[..., 3].astype(np.int16)
        b = np.asarray(Image.open(io.BytesIO(theirs[i])).convert("RGBA"))[..., 3] \
            .astype(np.int16)
        fa, fb = a > 127, b > 127
        worst_iou = min(worst_iou, float((fa & fb).sum() / max((fa | fb).sum(), 1)))
        worst_mad = max(worst_mad, float(np.abs(a - b).mean()))
    return worst_iou, worst_mad


def compare(env: dict, work: Path, photos: list[Path], reps: int, engines=("auto",),
            cases=((1, False), (2, False), (1, True), (2, True))) -> list[dict]:
    """Each case (clients, matting): medians of photos/s and CPU-s for rembg and for a
    bgrm server per engine (keys ``rembg``, ``bgrm`` for the first engine, ``bgrm-E``)."""
    photos = photos + photos  # the five photos, sent twice
    servers = {"rembg": Rembg(env, work / "rembg.log")}
    try:
        for i, engine in enumerate(engines):
            servers["bgrm" if i == 0 else f"bgrm-{engine}"] = Bgrm(
                env, work / f"bgrm-data-{engine}", "--engine", engine)
        for matting in (False, True):
            for server in servers.values():  # warm: model loaded, matting imported
                one_round(server, photos[:1], 1, matting)
        return [_case(servers, photos, clients, matting, reps) for clients, matting in cases]
    finally:
        for server in servers.values():
            server.stop()


def _case(servers: dict, photos: list[Path], clients: int, matting: bool, reps: int) -> dict:
    rates: dict[str, list] = {name: [] for name in servers}
    cpus: dict[str, list] = {name: [] for name in servers}
    outs = {}
    for _ in range(reps):
        for name, server in servers.items():
            seconds, cpu, outs[name] = one_round(server, photos, clients, matting)
            rates[name].append(len(photos) / seconds)
            cpus[name].append(cpu)
    iou, mad = alpha_agreement(outs["bgrm"], outs["rembg"])
    return {"clients": clients, "matting": matting,
            **{f"{k}_rate": statistics.median(v) for k, v in rates.items()},
            **{f"{k}_cpu": statistics.median(v) for k, v in cpus.items()},
            "iou": iou, "mad": mad}


def setup(work: Path) -> tuple[dict, list[Path]]:
    """The environment (rembg and bgrm on the same u2netp file) and the five photos."""
    root = Path(__file__).resolve().parent.parent
    home = work / "rembg-home"
    home.mkdir(parents=True)
    shutil.copy(root / "bgrm" / "assets" / "u2netp.onnx", home / "u2netp.onnx")
    env = dict(os.environ, U2NET_HOME=str(home), BGRM_MODELS=str(work / "empty"),
               MODEL_CHECKSUM_DISABLED="1")
    small = work / "small"
    small.mkdir()
    for name in serve_load.PHOTOS:
        shutil.copy(root / "fixtures" / name, small / name)
    Image.open(root / "fixtures" / "astronaut.png").transpose(
        Image.Transpose.FLIP_LEFT_RIGHT).save(small / "astronaut_mirror.png")
    return env, sorted(small.iterdir())


def describe(row: dict) -> str:
    return (f"{row['clients']} client{'s' if row['clients'] > 1 else ''}, "
            f"{'alpha matting' if row['matting'] else 'no matting'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--engines", default="auto",
                        help="bgrm servers to run, one per engine: auto,onnxruntime")
    args = parser.parse_args()
    engines = args.engines.split(",")
    work = Path(tempfile.mkdtemp(prefix="bgrm-serve-rembg-"))
    try:
        env, photos = setup(work)
        start = os.getloadavg()[0]
        rows = compare(env, work, photos, args.reps, engines)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} cores, {args.reps} rounds each; load average {start:.2f} at "
          f"start, {os.getloadavg()[0]:.2f} at end")
    names = ["bgrm", *(f"bgrm-{e}" for e in engines[1:])]
    for row in rows:
        parts = [f"{n} ({e}) {row[n + '_rate']:.2f} photos/s = "
                 f"{row[n + '_rate'] / row['rembg_rate']:.2f}x, CPU "
                 f"{row['rembg_cpu'] / row[n + '_cpu']:.2f}x"
                 for n, e in zip(names, engines, strict=True)]
        print(f"{describe(row)}: rembg {row['rembg_rate']:.2f} photos/s "
              f"({row['rembg_cpu']:.1f} CPU-s); " + "; ".join(parts)
              + f"; alpha vs rembg: IoU {row['iou']:.4f}, mean {row['mad']:.2f}/255")


if __name__ == "__main__":
    main()
