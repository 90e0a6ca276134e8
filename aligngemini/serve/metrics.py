"""Prometheus metrics for one app, in a registry of its own (several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """Requests by endpoint and status, request latency, batch sizes and model time per batch, queue depth,
    images scored by verdict, and errors by kind."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("aligngemini_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("aligngemini_request_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("aligngemini_batch_size", "images per model batch",
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.batch_seconds = Histogram("aligngemini_batch_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_depth = Gauge("aligngemini_queue_depth", "images waiting for the model worker", registry=r)
        self.images = Counter("aligngemini_images", "images answered, by verdict ('error' when unreadable)",
                              ["verdict"], registry=r)  # fmt: skip
        self.errors = Counter("aligngemini_errors", "refused or failed work, by kind", ["kind"], registry=r)
        self.ready = Gauge(
            "aligngemini_ready", "1 when the models are loaded and the worker runs", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
