"""Load test of ``aligngemini serve``: concurrent loopback clients against a real server process.

The server runs as its own process (``python -m aligngemini.cli serve``, as a user would start it), so the
clients here do not share its interpreter. Each client keeps one connection and sends its requests one after
another (one image per request by default). Reported: throughput, latency percentiles, mean model batch size
(read from the server's /metrics, warm-up excluded) and errors. The starter bundle is used when it loads;
otherwise a tiny random bundle from tests/tiny_bundles.py, and the output says so.

    python benchmarks/serve_load.py                                  # 8 clients x 200 requests
    python benchmarks/serve_load.py --clients 4 --requests 50 --bundle path/to/bundle
    python benchmarks/serve_load.py --out benchmarks/results/serve_load   # writes .json and .md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import record_path, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MACHINE_NOTE = "2-core CPU dev box, shared with other jobs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle", default="starter", help="bundle to serve (default: starter; tiny if it is absent)"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--requests", type=int, default=200, help="requests per client (default: 200)")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument(
        "--image-size", type=int, default=320, help="test images are SIZE x SIZE JPEGs (default 320)"
    )
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--warmup", type=int, default=8, help="requests before timing starts (default: 8)")
    p.add_argument("--max-seconds", type=float, default=240.0,
                   help="stop sending after this long and report what finished (default: 240)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="the server's PyTorch threads (default: 1; on this shared 2-core box 2 threads made a "
                   "batch of 4 about 20x slower, OpenMP workers waiting on each other)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    return p.parse_args(argv)


# -- inputs and bundle -------------------------------------------------------------------------------------
def make_images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """Distinct photo-like JPEGs (smooth gradients, shapes and sensor-like noise), quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(n):
        base = np.stack([np.sin(xx * rng.uniform(1, 6) + rng.uniform(0, 6)),
                         np.cos(yy * rng.uniform(1, 6) + rng.uniform(0, 6)),
                         np.sin((xx + yy) * rng.uniform(1, 4))], axis=-1)  # fmt: skip
        img = (base * 0.5 + 0.5) * 200 + rng.normal(0, 8, (size, size, 3))
        cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def choose_bundle(name: str, workdir: Path) -> tuple[str, str]:
    """(bundle path or name, a note on which bundle and why)."""
    from aligngemini.bundle import BundleError, load_bundle
    from aligngemini.resolve import ResolveError

    try:
        bundle = load_bundle(name)
        return str(bundle.dir), f"bundle {bundle.name!r} ({bundle.bundle_id})"
    except (BundleError, ResolveError, ValueError) as exc:
        if name != "starter":
            raise SystemExit(f"serve_load: cannot load bundle {name!r}: {exc}") from None
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_bundles import make_tiny_bundle

        tiny = make_tiny_bundle(workdir / "tiny")
        note = (f"the starter bundle is not available here ({exc}); measured with the TINY random test bundle "
                f"({tiny.bundle_id}: a resnet10t pixel branch on 32 px crops and a 2-layer CLIP semantic branch), "
                "so these numbers show the serving path's own cost, not the starter's model time")  # fmt: skip
        print(f"serve_load: NOTE: {note}", file=sys.stderr)
        return str(tiny.dir), note


# -- the server process ------------------------------------------------------------------------------------
class Server:
    def __init__(self, bundle: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, "-m", "aligngemini.cli", "serve", "--bundle", bundle, "--port", "0",
               "--device", args.device, "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue),
               "--max-images", str(max(args.images_per_request, 16))]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "ALIGNGEMINI_SERVE_TOKEN"}
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                self._found.set()

    def wait_ready(self, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        if not self._found.wait(timeout) or self.url is None:
            raise SystemExit("serve_load: the server did not start:\n" + "".join(self.lines[-30:]))
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while c.get("/readyz").status_code != 200:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(
                        "serve_load: the server never became ready:\n" + "".join(self.lines[-30:])
                    )
                time.sleep(0.2)
        return self.url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- metrics ------------------------------------------------------------------------------------------------
def batch_stats(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the server's batch size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == "aligngemini_batch_size":
            vals = {s.name: s.value for s in fam.samples}
            return vals["aligngemini_batch_size_sum"], vals["aligngemini_batch_size_count"]
    raise SystemExit("serve_load: no aligngemini_batch_size in /metrics")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the load -------------------------------------------------------------------------------------------------
def run_load(url: str, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    record_errors = 0
    sent = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + args.max_seconds
    stopped_early = threading.Event()

    def client(idx: int) -> None:
        nonlocal record_errors, sent
        with httpx.Client(base_url=url, timeout=120) as c:
            for j in range(args.requests):
                if time.monotonic() > stop_at:
                    stopped_early.set()
                    return
                k = args.images_per_request
                parts = [("files", (f"c{idx}-{j}-{i}.jpg", images[(idx * 31 + j * k + i) % len(images)],
                                    "image/jpeg")) for i in range(k)]  # fmt: skip
                t0 = time.perf_counter()
                try:
                    resp = c.post("/v1/detect", files=parts)
                    code = str(resp.status_code)
                    bad = (
                        sum(r["error"] is not None for r in resp.json()["results"])
                        if resp.status_code == 200
                        else 0
                    )
                except httpx.HTTPError as exc:
                    code, bad = type(exc).__name__, 0
                dt = time.perf_counter() - t0
                with lock:
                    sent += 1
                    statuses[code] = statuses.get(code, 0) + 1
                    record_errors += bad
                    if code == "200":
                        latencies.append(dt)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = statuses.get("200", 0)
    return {
        "wall_s": round(wall, 2),
        "requests_sent": sent,
        "requests_planned": args.clients * args.requests,
        "stopped_by_time_budget": stopped_early.is_set(),
        "status_counts": statuses,
        "errors": sent - ok + record_errors,
        "record_errors": record_errors,
        "throughput_requests_per_s": round(ok / wall, 2),
        "throughput_images_per_s": round(ok * args.images_per_request / wall, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 1),
            "p95": round(percentile(latencies, 95) * 1000, 1),
            "p99": round(percentile(latencies, 99) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
            "max": round(max(latencies) * 1000, 1) if latencies else None,
        },
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"note": MACHINE_NOTE, "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}  # fmt: skip


def render_md(result: dict[str, Any]) -> str:
    r, s = result["results"], result["settings"]
    lat = r["latency_ms"]
    lines = [
        "# Serving load test",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['note']} ({result['machine']['cpu']}, {result['machine']['cpu_count']} "
        f"logical CPUs; load average {result['load_average_before']} before, {result['load_average_after']} "
        "after)  ",
        f"Bundle: {result['bundle']}",
        "",
        f"Server: `{result['server_command']}` as its own process; {s['clients']} loopback clients, "
        f"{s['requests']} requests each, {s['images_per_request']} image(s) of {s['image_size']}x{s['image_size']} "
        f"JPEG per request, {s['warmup']} warm-up requests not counted.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests answered 200 / sent | {r['status_counts'].get('200', 0)} / {r['requests_sent']} |",
        f"| throughput | {r['throughput_requests_per_s']} requests/s, {r['throughput_images_per_s']} images/s |",
        f"| latency p50 / p95 / p99 | {lat['p50']} / {lat['p95']} / {lat['p99']} ms |",
        f"| mean model batch size | {r['mean_batch_size']} ({r['batches']} batches; --max-batch {s['max_batch']}) |",
        f"| errors | {r['errors']} (status counts: {r['status_counts']}) |",
        f"| wall time | {r['wall_s']} s{' (stopped by the time budget)' if r['stopped_by_time_budget'] else ''} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    images = make_images(24, args.image_size)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        bundle, note = choose_bundle(args.bundle, Path(tmp))
        load_before = os.getloadavg()
        server = Server(bundle, args)
        try:
            url = server.wait_ready()
            with httpx.Client(base_url=url, timeout=120) as c:
                for i in range(args.warmup):
                    c.post(
                        "/v1/detect", files=[("files", (f"w{i}.jpg", images[i % len(images)], "image/jpeg"))]
                    )
                sum0, count0 = batch_stats(c.get("/metrics").text)
            print(
                f"serve_load: {args.clients} clients x {args.requests} requests against {url}",
                file=sys.stderr,
            )
            results = run_load(url, images, args)
            with httpx.Client(base_url=url, timeout=30) as c:
                sum1, count1 = batch_stats(c.get("/metrics").text)
        finally:
            server.stop()
        load_after = os.getloadavg()
    batches = count1 - count0
    results["batches"] = int(batches)
    results["mean_batch_size"] = round((sum1 - sum0) / batches, 2) if batches else None
    result = {
        "command": command,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bundle": note,
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "server_command": "python -m aligngemini.cli "
        + " ".join("BUNDLE" if c == bundle else shlex.quote(c) for c in server.cmd[3:]),
        "settings": {
            k: getattr(args, k)
            for k in (
                "clients",
                "requests",
                "images_per_request",
                "image_size",
                "max_batch",
                "max_wait_ms",
                "max_queue",
                "warmup",
                "max_seconds",
                "device",
                "threads",
            )
        },
        "results": results,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_record(args.out, result, render_md(result))
        print(f"serve_load: wrote {record_path(args.out, '.json')} and .md", file=sys.stderr)
    return 0 if results["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
