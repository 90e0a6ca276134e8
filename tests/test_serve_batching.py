"""Batching under load, against the app under a real uvicorn server on 127.0.0.1 (a free port, a background
thread): concurrent requests share model batches (read back from /metrics), batches respect --max-batch, and a
full queue answers 503 with Retry-After. Plus the worker on its own: max-wait, failures, cancellation."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from aligngemini.cli.serve import background_server
from aligngemini.decode import load_image
from aligngemini.detector import Detector
from aligngemini.serve.app import ServeSettings, create_app
from aligngemini.serve.batcher import Batcher, QueueFull
from aligngemini.serve.metrics import ServeMetrics


def image_bytes(seed: int, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def det(tiny_bundle_dir: Path) -> Detector:
    return Detector.load(tiny_bundle_dir, device="cpu")


class GatedDetector:
    """The real detector, whose first scoring call waits at a gate: requests pile up in the queue meanwhile,
    so what the worker does next is decided by the batcher, not by how fast this machine happens to be."""

    def __init__(self, det: Detector) -> None:
        self._det = det
        self.gate = threading.Event()
        self.calls: list[int] = []

    def score_loaded(self, images):
        self.calls.append(len(images))
        assert self.gate.wait(60), "the test never opened the gate"
        return self._det.score_loaded(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._det, name)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _histogram(metrics_text: str, name: str) -> dict[str, float]:
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == name:
            out = {}
            for s in fam.samples:
                key = s.labels.get("le") if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[-1]
                out[key] = s.value
            return out
    raise AssertionError(f"{name} not in /metrics")


def test_concurrent_requests_share_batches_under_a_real_server(det: Detector) -> None:
    gated = GatedDetector(det)
    settings = ServeSettings(max_batch=4, max_wait_ms=5, max_queue=64)
    app = create_app(gated, settings)
    n_requests = 10
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        serve = app.state.serve

        def post(i: int) -> httpx.Response:
            return client.post("/v1/detect", files=[("files", (f"{i}.png", image_bytes(i), "image/png"))])

        with ThreadPoolExecutor(n_requests) as pool:
            try:
                futures = [pool.submit(post, i) for i in range(n_requests)]
                # The worker holds its first batch at the gate; every other image waits in the queue.
                _wait_for(
                    lambda: len(gated.calls) == 1 and gated.calls[0] + serve.batcher.depth == n_requests
                )
                depth_now = _gauge(client.get("/metrics").text, "aligngemini_queue_depth")
            finally:
                gated.gate.set()
            responses = [f.result() for f in futures]
        first = gated.calls[0]
        assert depth_now == n_requests - first
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        names = [r.json()["results"][0]["path"] for r in responses]
        assert names == [f"{i}.png" for i in range(n_requests)]  # each answer reached its own request
        # Each answer equals scoring the image alone: batching changes nothing but speed.
        for i in (0, 5, 9):
            alone = det.predict(image_bytes(i))[0].p_fake
            assert responses[i].json()["results"][0]["p_fake"] == pytest.approx(alone, abs=1e-5)

        hist = _histogram(client.get("/metrics").text, "aligngemini_batch_size")
    assert sum(gated.calls) == n_requests and max(gated.calls) <= 4
    assert n_requests - first >= 6 and gated.calls[1] == 4  # the queued images go in full batches
    assert hist["count"] == len(gated.calls) and hist["sum"] == n_requests
    assert hist["1.0"] < hist["count"]  # batches larger than one happened
    assert hist["count"] <= 1 + -(-(n_requests - first) // 4)
    assert hist["4.0"] == hist["+Inf"]  # none above --max-batch


def _gauge(metrics_text: str, name: str) -> float:
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == name:
            return fam.samples[0].value
    raise AssertionError(f"{name} not in /metrics")


@contextlib.contextmanager
def _opens(gate: threading.Event):
    """Open the gate on the way out, even when an assertion failed (no worker left waiting)."""
    try:
        yield
    finally:
        gate.set()


def test_a_full_queue_answers_503_with_retry_after(det: Detector) -> None:
    gated = GatedDetector(det)
    app = create_app(gated, ServeSettings(max_batch=8, max_wait_ms=0, max_queue=4, max_images=2))
    two = [("files", (f"{i}.png", image_bytes(i), "image/png")) for i in range(2)]
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        serve = app.state.serve
        with ThreadPoolExecutor(3) as pool, _opens(gated.gate):
            first = pool.submit(client.post, "/v1/detect", files=two)
            _wait_for(lambda: len(gated.calls) == 1)  # the worker holds the first request's two images
            queued = [pool.submit(client.post, "/v1/detect", files=two) for _ in range(2)]
            _wait_for(lambda: serve.batcher.depth == 4)  # the queue is full: 4 of 4 image slots
            refused = client.post("/v1/detect", files=two)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            err = refused.json()["error"]
            assert err["kind"] == "overloaded" and err["limit"] == {"name": "max_queue", "value": 4}
            assert serve.batcher.depth == 4  # refused whole: nothing of it was queued
            gated.gate.set()
            assert first.result().status_code == 200
            assert [q.result().status_code for q in queued] == [200, 200]
        metrics = client.get("/metrics").text
    assert 'aligngemini_errors_total{kind="overloaded"} 1.0' in metrics
    assert 'aligngemini_requests_total{endpoint="/v1/detect",method="POST",status="503"} 1.0' in metrics


def test_one_image_that_breaks_the_model_fails_alone(det: Detector) -> None:
    class Picky:
        def __init__(self, det: Detector) -> None:
            self._det = det

        def score_loaded(self, images):
            if any(im.image.width == 33 for im in images):
                raise RuntimeError("this backbone cannot take 33 px")
            return self._det.score_loaded(images)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._det, name)

    app = create_app(Picky(det), ServeSettings(max_batch=8, max_wait_ms=50))
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        parts = [("files", ("ok.png", image_bytes(1), "image/png")),
                 ("files", ("odd.png", image_bytes(2, w=33), "image/png")),
                 ("files", ("ok2.png", image_bytes(3), "image/png"))]  # fmt: skip
        resp = client.post("/v1/detect", files=parts)
        assert resp.status_code == 200
        recs = resp.json()["results"]
        assert [r["error"] is None for r in recs] == [True, False, True]
        assert "scoring failed" in recs[1]["error"] and "33 px" in recs[1]["error"]
        assert 'aligngemini_errors_total{kind="scoring_failed"} 1.0' in client.get("/metrics").text


# -- the worker on its own ----------------------------------------------------------------------------------
def _loaded(n: int):
    return [load_image(Image.new("RGB", (8 + i, 8), (i, i, i))) for i in range(n)]


def test_a_lone_image_waits_at_most_max_wait() -> None:
    sizes: list[int] = []

    def score(images):
        sizes.append(len(images))
        return [im.image.width for im in images]

    b = Batcher(score, max_batch=8, max_wait_ms=30, max_queue=8)
    try:
        start = time.monotonic()
        (fut,) = b.submit(_loaded(1))
        assert fut.result(timeout=10) == 8
        assert time.monotonic() - start < 5
        assert sizes == [1]
    finally:
        b.stop()


def test_queue_bound_is_all_or_nothing_and_cancelled_work_is_dropped() -> None:
    gate = threading.Event()
    seen: list[list[int]] = []

    def score(images):
        seen.append([im.image.width for im in images])
        gate.wait(10)
        return [0] * len(images)

    metrics = ServeMetrics()
    b = Batcher(score, max_batch=4, max_wait_ms=0, max_queue=3, metrics=metrics)
    try:
        (held,) = b.submit(_loaded(1))
        _wait_for(lambda: seen == [[8]])
        kept = b.submit(_loaded(2))
        with pytest.raises(QueueFull) as info:
            b.submit(_loaded(2))  # 2 + 2 > 3: refused whole
        assert info.value.capacity == 3 and info.value.retry_after >= 1
        assert b.depth == 2
        assert metrics.queue_depth._value.get() == 2
        kept[0].cancel()  # a client that went away
        gate.set()
        assert kept[1].result(timeout=10) == 0
        assert seen[1] == [9]  # the cancelled image never reached the model
    finally:
        gate.set()
        b.stop()
