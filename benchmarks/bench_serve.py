"""Benchmark: ``autoscale serve`` under load (issue 12, item 6). Not run in CI (``--smoke`` is).

For each model, one real ``python -m autoscale serve`` process (1 torch / OpenMP thread, default
queue of 16, uvicorn on a free port of 127.0.0.1) is loaded by client threads on the same machine
(only 127.0.0.1 is ever contacted). Each client posts real photos as the web page does
(``multipart/form-data`` field ``file``) on a fresh connection and records the status, the latency
and, for 200 answers, the count. Levels (each bounded in requests *and* seconds; the number done is
reported):

* concurrency 1, 4 and 16: ``--requests`` requests each (default 500), at most ``--level-seconds``
  (default 100) - 16 clients never exceed the queue of 16, so every answer should be 200;
* overload: 32 clients (twice the queue) for ``--overload-requests`` (default 200) requests, at most
  ``--overload-seconds`` (default 30): the queue fills and the surplus must be answered 503 with a
  ``Retry-After`` header, at once - never left hanging, never 5xx of another kind.

Reported per level: requests answered (by status), throughput (200 answers per second of wall
time), latency percentiles p50 / p95 / p99 (ms, client side, 200 answers; 503 answers separately),
whether every 200 answer for the same photo carried the same count. Per model: the server's peak
resident memory (``VmHWM`` from ``/proc/<pid>/status``) after a warm-up of 10 requests ("before"),
after each level and after all levels ("after"), and its resident set (``VmRSS``) at the same
moments: the load must not grow them (a leak would raise VmRSS level after level).

Inputs: the first ``--photos`` (default 8) ShanghaiTech B test photos (``../shared/data``),
downscaled to ``--size`` (default 256x192, JPEG quality 90, ~15 kB each) so that the whole run
stays under ~10 minutes on this project's 2-core machine, with 1 thread, next to other jobs.
Models: seeded random weights (Kaiming) built by the trainer's own ``build_model`` /
``model_checkpoint`` - latency and memory do not depend on trained values: EfficientNet-Lite0
FPN at full width and VGG16 FPN at width ``--vgg-width`` (default 0.25: full width takes ~3 s per
512x384 image on this machine, 500 requests would take 25 minutes per level), both regression
with an L2S network (two-pass AutoScale). Random weights rarely pass the dense-region gate, so
most answers take the first pass only (the second pass's cost is measured in
``bench_inference.py``).

Run from the project root::

    .venv/bin/python benchmarks/bench_serve.py            # ~10 min, writes results/serve.json and .md
    .venv/bin/python benchmarks/bench_serve.py --smoke --out /tmp/x   # seconds: tiny model, few requests
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AUTOSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PHOTO_DIR = SHARED / "shanghaitech" / "part_B" / "test_data" / "images"
MIB = 2.0**20


# ------------------------------------------------------------------------------ inputs and models
def load_photos(n: int, size: tuple[int, int]) -> list[tuple[str, bytes]]:
    """The first ``n`` ShanghaiTech B test photos (natural order), downscaled to ``size`` (W, H)
    with INTER_AREA and encoded as JPEG quality 90: ``[(name, bytes)]``."""
    from autoscale.data.formats import natural_key
    from autoscale.data.image_io import read_image

    paths = sorted(PHOTO_DIR.glob("*.jpg"), key=lambda p: natural_key(p.name))[:n]
    if len(paths) < n:
        raise SystemExit(f"bench_serve: need {n} photos in {PHOTO_DIR} (set AUTOSCALE_SHARED_DATA)")
    out = []
    for p in paths:
        rgb = cv2.resize(read_image(p), size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append((p.name, buf.tobytes()))
    return out


def make_checkpoint(path: Path, backbone: str, width: float, seed: int = 0) -> Path:
    """A random-weight (Kaiming, seeded) regression AutoScale checkpoint through the trainer's own
    ``build_model`` / ``model_checkpoint`` (no model card: the server reads the header)."""
    import torch

    from autoscale.engine.config import config_from_dict
    from autoscale.engine.trainer import build_model, model_checkpoint

    cfg = config_from_dict({"data": {"root": str(path.parent)}, "method": "autoscale", "seed": seed,
                            "out": str(path.parent / "unused"),
                            "model": {"variant": "regression", "backbone": backbone, "width": width, "init": "kaiming"}})
    torch.save(model_checkpoint(build_model(cfg).eval(), cfg), path)
    return path


# ------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    """``VmHWM`` / ``VmRSS`` of ``pid`` in MiB (Linux ``/proc``)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024.0, 1)
    return out


class Server:
    """``python -m autoscale serve`` on a free loopback port, 1 thread, output to a log file."""

    def __init__(self, ckpt: Path, log: Path, *, queue: int, max_side: int) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoscale", "serve", "--checkpoint", str(ckpt), "--port", str(self.port),
             "--threads", "1", "--queue", str(queue), "--max-side", str(max_side), "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _, _ = request(self.port, "GET", "/healthz", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"bench_serve: the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def memory(self) -> dict[str, float]:
        return proc_status(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection to 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------ load
def run_level(port: int, photos: list[tuple[str, bytes]], *, concurrency: int, requests: int,
              seconds: float) -> dict[str, Any]:
    """``concurrency`` client threads send up to ``requests`` requests in all, stopping early after
    ``seconds``; returns the level's statistics."""
    bodies = [(name, *multipart(name, data)) for name, data in photos]
    lock = threading.Lock()
    issued = 0
    records: list[tuple[int, float, str, float | None, str | None]] = []  # status, ms, photo, count, retry-after
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= requests or time.monotonic() >= deadline:
                    return
                i = issued
                issued += 1
            name, body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                status, headers, data = request(port, "POST", "/v1/count", body, {"Content-Type": ctype})
            except OSError as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            ms = (time.perf_counter() - t0) * 1000
            count = json.loads(data)["count"] if status == 200 else None
            with lock:
                records.append((status, ms, name, count, headers.get("retry-after")))

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    by_status: dict[str, int] = {}
    for status, *_ in records:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    ok = [ms for status, ms, *_ in records if status == 200]
    refused = [ms for status, ms, *_ in records if status == 503]
    counts: dict[str, set[float]] = {}
    for status, _, name, count, _ in records:
        if status == 200:
            counts.setdefault(name, set()).add(count)
    return {
        "concurrency": concurrency, "requests_planned": requests, "seconds_cap": seconds,
        "requests_sent": issued, "answered": len(records), "by_status": by_status, "connection_failures": failures[:5],
        "n_connection_failures": len(failures), "wall_s": round(wall, 6),
        "stopped_by_time_cap": issued < requests,
        "throughput_rps": round(len(ok) / wall, 3) if wall > 0 else 0.0,
        "latency_ms": percentiles(ok), "latency_503_ms": percentiles(refused),
        "retry_after_present": all(ra is not None and int(ra) >= 1 for s, _, _, _, ra in records if s == 503),
        "consistent_counts": all(len(v) == 1 for v in counts.values()),
        "counts": {k: next(iter(v)) for k, v in sorted(counts.items()) if len(v) == 1},
    }


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "mean": round(float(a.mean()), 1),
            "max": round(float(a.max()), 1)}


def bench_model(name: str, ckpt: Path, photos: list[tuple[str, bytes]], work: Path, a: argparse.Namespace) -> dict[str, Any]:
    server = Server(ckpt, work / f"server_{name}.log", queue=a.queue, max_side=max(a.size))
    try:
        t0 = time.perf_counter()
        warm = run_level(server.port, photos, concurrency=1, requests=a.warmup, seconds=120)
        before = server.memory()
        print(f"[bench_serve] {name}: warm-up {warm['answered']} requests, p50 {warm['latency_ms']['p50']} ms, "
              f"VmHWM {before['VmHWM']} MiB", flush=True)
        levels = []
        for c in a.concurrency:
            lv = run_level(server.port, photos, concurrency=c, requests=a.requests, seconds=a.level_seconds)
            lv["kind"] = "load"
            lv["memory_mib_after"] = server.memory()
            levels.append(lv)
            print(f"[bench_serve] {name}: c={c}: {lv['by_status']} in {lv['wall_s']:.3f} s, "
                  f"{lv['throughput_rps']} req/s, latency {lv['latency_ms']}", flush=True)
        ov = run_level(server.port, photos, concurrency=a.overload, requests=a.overload_requests,
                       seconds=a.overload_seconds)
        ov["kind"] = "overload"
        ov["memory_mib_after"] = server.memory()
        levels.append(ov)
        print(f"[bench_serve] {name}: overload c={a.overload}: {ov['by_status']} in {ov['wall_s']:.3f} s", flush=True)
        after = server.memory()
        status, _, body = request(server.port, "GET", "/healthz")
        health = json.loads(body) if status == 200 else {"status": status}
    finally:
        server.stop()
    log_lines = [ln for ln in server.log_path.read_text().splitlines() if ln.strip()]
    return {"checkpoint": ckpt.name, "levels": levels, "warmup": warm,
            "memory_mib": {"before": before, "after": after,
                           "vmhwm_growth": round(after["VmHWM"] - before["VmHWM"], 1)},
            "health_after": health, "server_log_tail": log_lines[-5:], "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any]) -> str:
    lines = [f"# autoscale serve under load ({res['config']['size']} photos, 1 thread)", "",
             f"`{res['command']}`; {res['machine']['cpu_count']} CPU cores shared with other jobs "
             f"(load average at start {res['machine']['load_average_at_start']}); random weights.", "",
             "| model | clients | requests | 200 | 503 | wall s | 200/s | p50 ms | p95 ms | p99 ms | same counts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, m in res["models"].items():
        for lv in m["levels"]:
            lat = lv["latency_ms"] or {}
            label = f"{lv['concurrency']}" + (" (overload)" if lv["kind"] == "overload" else "")
            lines.append(f"| {name} | {label} | {lv['answered']} | {lv['by_status'].get('200', 0)} | "
                         f"{lv['by_status'].get('503', 0)} | {lv['wall_s']:.3f} | {lv['throughput_rps']} | "
                         f"{lat.get('p50', '-')} | {lat.get('p95', '-')} | {lat.get('p99', '-')} | "
                         f"{'yes' if lv['consistent_counts'] else 'NO'} |")
    lines += ["", "| model | VmHWM after warm-up MiB | VmHWM after each level MiB | growth MiB | "
                  "VmRSS after warm-up / each level MiB |", "|---|---:|---|---:|---|"]
    for name, m in res["models"].items():
        mem = m["memory_mib"]
        per = [lv["memory_mib_after"] for lv in m["levels"]]
        lines.append(f"| {name} | {mem['before']['VmHWM']} | {' / '.join(str(x['VmHWM']) for x in per)} | "
                     f"{mem['vmhwm_growth']} | {mem['before']['VmRSS']} / {' / '.join(str(x['VmRSS']) for x in per)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="seconds-long run: tiny VGG16 (width 1/16), few requests")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for serve.json / serve.md")
    ap.add_argument("--work", type=Path, default=None, help="folder for checkpoints and server logs (default: temp)")
    ap.add_argument("--size", default="256x192", help="WxH the photos are downscaled to")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="requests per concurrency level")
    ap.add_argument("--level-seconds", type=float, default=100.0, help="time cap of each level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--overload", type=int, default=32, help="clients of the overload level")
    ap.add_argument("--overload-requests", type=int, default=200)
    ap.add_argument("--overload-seconds", type=float, default=30.0)
    ap.add_argument("--queue", type=int, default=16, help="the server's --queue")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--vgg-width", type=float, default=0.25)
    ap.add_argument("--models", default="lite0,vgg16")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.size, a.photos, a.requests, a.level_seconds = "128x96", 2, 6, 60.0
        a.concurrency, a.overload, a.overload_requests, a.overload_seconds, a.queue, a.warmup = "1,3", 6, 12, 60.0, 2, 2
        a.models = "vgg16_tiny"
    a.size = tuple(int(v) for v in a.size.lower().split("x"))
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    widths = {"lite0": ("efficientnet_lite0", 1.0), "vgg16": ("vgg16", a.vgg_width), "vgg16_tiny": ("vgg16", 0.0625)}
    import torch

    command = "python benchmarks/bench_serve.py" + ("" if not (argv if argv is not None else sys.argv[1:])
                                                   else " " + " ".join(argv if argv is not None else sys.argv[1:]))
    res: dict[str, Any] = {
        "command": command,
        "config": {"size": f"{a.size[0]}x{a.size[1]}", "photos": a.photos, "requests_per_level": a.requests,
                   "level_seconds_cap": a.level_seconds, "concurrency": a.concurrency, "overload_clients": a.overload,
                   "overload_requests": a.overload_requests, "queue": a.queue, "threads": 1, "warmup": a.warmup,
                   "upload": "multipart/form-data, fresh connection per request", "weights": "random (Kaiming, seed 0)",
                   "models": {m: {"backbone": widths[m][0], "width": widths[m][1]} for m in a.models.split(",")}},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "models": {},
    }
    work = a.work or Path(tempfile.mkdtemp(prefix="autoscale_bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        photos = load_photos(a.photos, a.size)
        res["config"]["photo_names"] = [n for n, _ in photos]
        res["config"]["photo_bytes_mean"] = round(statistics.mean(len(b) for _, b in photos))
        for m in a.models.split(","):
            backbone, width = widths[m]
            ckpt = make_checkpoint(work / f"{m}.pt", backbone, width)
            res["models"][m] = bench_model(m, ckpt, photos, work, a)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "serve.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / "serve.md").write_text(markdown(res))
    if not a.quiet:
        print(markdown(res))
    return res


if __name__ == "__main__":
    main()
