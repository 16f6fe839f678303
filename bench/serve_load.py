"""``pixelwise serve`` under load: concurrent clients on the loopback, latency, errors and memory.

    python bench/serve_load.py [--run RUN] [--images DIR] [--clients 1 8 32] [--seconds 60]
        [--cases default overload timeout batch] [--threads 1] [--json FILE]

Each case starts its own ``pixelwise serve RUN --port P`` subprocess on 127.0.0.1, sends a few
warm-up requests, then runs N client threads for a bounded time. Each client keeps one HTTP
connection (a new one after any non-2xx answer) and posts real image files (round robin) as
the raw body of ``POST /predict``; after a 503 it waits the ``Retry-After`` the server asked
for, as a polite client does (``--ignore-retry-after``: it retries at once). The server's
resident memory (``VmRSS`` of ``/proc/PID/status``) is sampled every 0.25 s.

Cases (``--cases``):

    default   the server's defaults (--max-queue 16, --timeout 30, --batch 1), each --clients
    overload  --max-queue 4 with --overload-clients (32): deliberate 503s with Retry-After
    timeout   --timeout 3x the 1-client p50 latency (100 ms without a 1-client row) with 8
              clients: requests that wait too long get 503 and are dropped
    batch     --batch 8 (same-size images batched) with 8 clients: compare with default's row

Cases run in the order given and may repeat: ``--cases default batch default batch --clients 8``
alternates the two servers so that a change in the machine's load hits both alike.

Without ``--run``, a run with the demo's U-Net (unet_same, depth 3, width 16) is trained for 2
short epochs on the embedded digits (the weights' quality does not change the speed); without
``--images``, ``--count`` digit scenes of ``--size`` x ``--size`` pixels are written (one size:
what batching needs). Prints one row per case x clients and the load average, and writes every
latency summary and the RSS series to ``--json`` (default bench/results/serve_load.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def train_default_run(folder: Path, threads: int) -> Path:
    """The demo's U-Net trained 2 short epochs on the digits: a realistic model to serve."""
    from pixelwise.cli.train import DEMO
    from pixelwise.training import TrainConfig, train

    out = folder / "run"
    options = {**DEMO, "data_args": {"num_images": 160, "digits_per_image": [4, 8]}}
    train(TrainConfig(**{**options, "epochs": 2, "out": str(out), "device": "cpu",
                         "threads": threads, "overlays": 0}))  # fmt: skip
    return out


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    from pixelwise.data.digits import DigitsScenes
    from pixelwise.data.io import write_image

    ds = DigitsScenes("val", seed=1, num_images=count, min_size=size, max_size=size)
    paths = []
    for i, sample in enumerate(ds):
        paths.append(folder / f"scene{i:03d}.png")
        write_image(paths[-1], sample.image)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``pixelwise serve RUN`` in a subprocess on 127.0.0.1, its RSS sampled in a thread."""

    def __init__(self, run: Path, args: list[str], threads: int) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "pixelwise", "--quiet", "serve", str(run),
               "--port", str(self.port), "--threads", str(threads), *args]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        deadline = time.monotonic() + 180
        while not self.get("/api/stats"):
            if self.proc.poll() is not None:
                raise SystemExit(f"pixelwise serve exited: {self.proc.stderr.read().strip()}")
            if time.monotonic() > deadline:
                raise SystemExit("pixelwise serve did not start within 180 s")
            time.sleep(0.2)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def get(self, path: str) -> dict | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        except OSError:
            return None

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            mb = rss_mb(self.proc.pid)
            if mb is not None:
                self.samples.append((round(time.monotonic() - t0, 2), round(mb, 1)))
            self._stop.wait(0.25)

    def rss_now(self) -> float:
        return rss_mb(self.proc.pid) or float("nan")

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@dataclass
class Tally:
    """What the clients saw: latencies (s) by kind, status counts, Retry-After values."""

    ok: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    retry_after: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, retry: int | None = None) -> None:
        with self.lock:
            self.status[kind] = self.status.get(kind, 0) + 1
            if kind == "2xx":
                self.ok.append(seconds)
            elif kind == "503":
                self.busy.append(seconds)
                if retry is not None:
                    self.retry_after.append(retry)


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "2xx"
    if status == 503:
        return "503"
    return "5xx" if status >= 500 else "other"


def client(port: int, bodies: list[bytes], start: int, end: float, tally: Tally,
           polite: bool) -> None:  # fmt: skip
    """Post ``bodies`` round robin until ``end`` (monotonic); one connection, renewed after a
    non-2xx answer or an error."""
    conn, i = None, start
    while time.monotonic() < end:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = bodies[i % len(bodies)]
        i += 1
        t = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            tally.add("conn_error", time.perf_counter() - t)
            conn.close()
            conn = None
            continue
        kind = classify(r.status)
        retry = r.getheader("Retry-After")
        tally.add(kind, time.perf_counter() - t, int(retry) if retry else None)
        if kind != "2xx":
            conn.close()
            conn = None
        if kind == "503" and polite and retry:
            time.sleep(max(0.0, min(int(retry), end - time.monotonic())))
    if conn is not None:
        conn.close()


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def load_phase(server: Server, bodies: list[bytes], clients: int, seconds: float,
               polite: bool) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads for ``seconds``; the row of the table as a dict."""
    tally = Tally()
    before = server.get("/api/stats") or {}
    first = len(server.samples)
    rss_start = server.rss_now()
    load0 = loadavg()
    t0 = time.monotonic()
    end = t0 + seconds
    threads = [threading.Thread(target=client, args=(server.port, bodies, k * 7, end, tally,
                                                     polite)) for k in range(clients)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    time.sleep(0.5)  # one more RSS sample after the last answer
    stats = server.get("/api/stats") or {}
    rss = [mb for _, mb in server.samples[first:]] or [rss_start]
    n = sum(tally.status.values())
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": n,
        "throughput": round(len(tally.ok) / wall, 2),
        "p50_ms": percentile_ms(tally.ok, 50),
        "p95_ms": percentile_ms(tally.ok, 95),
        "p99_ms": percentile_ms(tally.ok, 99),
        "max_ms": percentile_ms(tally.ok, 100),
        "busy_p50_ms": percentile_ms(tally.busy, 50),
        "status": {k: tally.status.get(k, 0) for k in ("2xx", "503", "5xx", "other", "conn_error")},
        "retry_after": sorted(set(tally.retry_after)),
        "rss_mb": {
            "start": round(rss_start, 1),
            "max": max(rss),
            "end": round(server.rss_now(), 1),
        },
        "server": {
            **{k: stats.get(k, 0) - before.get(k, 0) for k in ("timed_out", "rejected")},
            "mean_batch": (stats.get("images", 0) - before.get("images", 0))
            / max(1, stats.get("batches", 0) - before.get("batches", 0)),
            **{k: stats.get(k) for k in ("in_server", "ms_per_image")},
        },
        "load": [load0, loadavg()],
    }


def header() -> str:
    return (
        "| case | server options | clients | s | requests | 2xx/s | p50 ms | p95 ms | p99 ms | "
        "max ms | 2xx | 503 | other 5xx | other | RSS start/max/end MB | 503: p50 ms, "
        "Retry-After s | timed out | mean batch | load |\n|" + "---|" * 19
    )


def row(case: str, options: list[str], r: dict[str, Any]) -> str:
    s, m = r["status"], r["rss_mb"]
    busy = f"{r['busy_p50_ms']}, {r['retry_after'] or '-'}" if s["503"] else "-"
    mean_batch = r["server"]["mean_batch"]
    return (
        f"| {case} | {' '.join(options) or 'defaults'} | {r['clients']} | {r['seconds']:.0f} | "
        f"{r['requests']} | {r['throughput']:.1f} | {r['p50_ms']} | {r['p95_ms']} | "
        f"{r['p99_ms']} | {r['max_ms']} | {s['2xx']} | {s['503']} | {s['5xx']} | "
        f"{s['other'] + s['conn_error']} | {m['start']:.0f}/{m['max']:.0f}/{m['end']:.0f} | "
        f"{busy} | {r['server']['timed_out']} | "
        f"{mean_batch if mean_batch is None else round(mean_batch, 2)} | {r['load'][0]} |"
    )


def run_case(run: Path, bodies: list[bytes], options: list[str], counts: list[int],
             seconds: float, args: argparse.Namespace) -> list[dict[str, Any]]:  # fmt: skip
    server = Server(run, options, args.threads)
    try:
        for body in bodies[:4]:  # warm-up: first calls, allocator, engine
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            conn.getresponse().read()
            conn.close()
        rows = []
        for n in counts:
            r = load_phase(server, bodies, n, seconds, not args.ignore_retry_after)
            r["rss_series"] = server.samples[-int(seconds * 4) - 4 :]
            rows.append(r)
        return rows
    finally:
        server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="run directory to serve (default: train a small one)")
    p.add_argument("--images", type=Path, help="folder of images to post (default: digits)")
    p.add_argument("--count", type=int, default=16, help="digit scenes to write")
    p.add_argument("--size", type=int, default=128, help="side of the digit scenes")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=60, help="per row of the default case")
    p.add_argument("--short-seconds", type=float, default=30, help="per row of the other cases")
    p.add_argument("--overload-clients", type=int, default=32)
    p.add_argument("--cases", nargs="+", default=["default", "overload", "timeout", "batch"],
                   choices=["default", "overload", "timeout", "batch"])  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--ignore-retry-after", action="store_true")
    p.add_argument("--json", type=Path, default=HERE / "results" / "serve_load.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        run = args.run or train_default_run(Path(tmp), args.threads)
        if args.images:
            paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in
                           {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})  # fmt: skip
        else:
            paths = write_images(Path(tmp), args.count, args.size)
        bodies = [p.read_bytes() for p in paths]
        print(f"serving {run} ({len(bodies)} images from {args.images or 'digits'}), "
              f"server --threads {args.threads}, {os.cpu_count()} CPUs, load {loadavg()}",
              flush=True)  # fmt: skip
        print(header(), flush=True)
        results: list[dict[str, Any]] = []

        def case(name: str, options: list[str], counts: list[int], seconds: float) -> None:
            for r in run_case(run, bodies, options, counts, seconds, args):
                results.append({"case": name, "options": options, **r})
                print(row(name, options, r), flush=True)

        for name in args.cases:  # in the order given; a case may come back (A B A B)
            if name == "default":
                case("default", [], args.clients, args.seconds)
            elif name == "overload":
                case("overload", ["--max-queue", "4"], [args.overload_clients], args.short_seconds)
            elif name == "timeout":
                one = next((r for r in results if r["clients"] == 1 and r["p50_ms"]), None)
                p50 = one["p50_ms"] if one else 100.0
                case("timeout", ["--timeout", f"{3 * p50 / 1000:.3f}"], [8], args.short_seconds)
            else:
                case("batch", ["--batch", "8"], [8], args.seconds)
        print(f"load average at the end: {loadavg()}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    args.json.write_text(json.dumps({"env": env, "args": {k: str(v) for k, v in vars(args).items()},
                                     "results": results}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
