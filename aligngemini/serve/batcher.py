"""One worker thread that owns the models, fed by a bounded queue.

Request handlers decode images in the thread pool and ``submit`` them here; the worker gathers queued images
into batches of up to ``max_batch``, waiting at most ``max_wait_ms`` after the oldest waiting image arrived,
and answers each through a ``concurrent.futures.Future``. The queue holds at most ``max_queue`` images: a
request that does not fit is refused whole (:class:`QueueFull`, answered 503 with ``Retry-After``), so load
beyond capacity never piles up. Explanations go through the same queue and worker, one at a time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aligngemini.decode import LoadedImage
from aligngemini.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[LoadedImage]], list[Any]]
ExplainFn = Callable[[LoadedImage], str]


class QueueFull(Exception):
    """The queue cannot take this request now; ``retry_after`` is a whole-second estimate of when it can."""

    def __init__(self, wanted: int, depth: int, capacity: int, retry_after: int) -> None:
        super().__init__(
            f"the model queue is full ({depth} of {capacity} image slots taken, this request needs {wanted}); "
            f"retry in {retry_after} s"
        )
        self.wanted, self.depth, self.capacity, self.retry_after = wanted, depth, capacity, retry_after


class WorkerStopped(RuntimeError):
    """The worker has stopped (server shutting down); queued work is refused."""


@dataclass
class _Job:
    kind: str  # "score" | "explain"
    image: LoadedImage
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        score: ScoreFn,
        explain: ExplainFn | None = None,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        metrics: ServeMetrics | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self._score = score
        self._explain = explain
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._metrics = metrics
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seconds_per_image = 0.05  # running estimate, for Retry-After
        self.batches_run = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="aligngemini-model-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, refuse what is still queued, and join the worker."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._set_depth()
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerStopped("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- submission -----------------------------------------------------------------------------
    def submit(self, images: Sequence[LoadedImage]) -> list[Future]:
        """Queue images for scoring, all or none; one future per image, resolving to the score function's
        item for it."""
        return self._enqueue([_Job("score", img) for img in images])

    def submit_explain(self, image: LoadedImage) -> Future:
        return self._enqueue([_Job("explain", image)])[0]

    def _enqueue(self, jobs: list[_Job]) -> list[Future]:
        with self._cond:
            if self._stopping:
                raise WorkerStopped("the server is shutting down")
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(len(jobs), len(self._queue), self.max_queue, self.retry_after(len(jobs)))
            self._queue.extend(jobs)
            self._set_depth()
            self._cond.notify_all()
        if self._thread is None:
            self.start()
        return [j.future for j in jobs]

    def retry_after(self, extra: int = 0) -> int:
        wait = (len(self._queue) + extra) * self._seconds_per_image
        return int(min(60, max(1, math.ceil(wait))))

    # -- the worker -------------------------------------------------------------------------------
    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._queue))

    def _take(self) -> list[_Job] | None:
        """The next unit of work: one explain job, or a batch of score jobs. None when stopping."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch = [first]
            if first.kind == "score":
                deadline = first.enqueued + self.max_wait
                while len(batch) < self.max_batch and not self._stopping:
                    while self._queue and self._queue[0].kind == "score" and len(batch) < self.max_batch:
                        batch.append(self._queue.popleft())
                    if len(batch) >= self.max_batch or (self._queue and self._queue[0].kind != "score"):
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            self._set_depth()
        return [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop cancelled ones

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            try:
                if jobs[0].kind == "explain":
                    self._run_explain(jobs[0])
                else:
                    self._run_batch(jobs)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any one bad batch
                log.exception("model worker: unexpected failure")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _run_explain(self, job: _Job) -> None:
        if self._explain is None:
            job.future.set_exception(NotImplementedError("this server cannot explain"))
            return
        try:
            job.future.set_result(self._explain(job.image))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            job.future.set_exception(exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = self._score([j.image for j in jobs])
        except Exception as exc:  # noqa: BLE001 - retry one by one so one bad image fails alone
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            log.warning("model worker: batch of %d failed (%s); scoring one by one", len(jobs), exc)
            for job in jobs:
                self._run_batch_single(job)
            return
        elapsed = time.perf_counter() - start
        self._observe(len(jobs), elapsed)
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)

    def _run_batch_single(self, job: _Job) -> None:
        start = time.perf_counter()
        try:
            result = self._score([job.image])[0]
        except Exception as exc:  # noqa: BLE001
            job.future.set_exception(exc)
            return
        self._observe(1, time.perf_counter() - start)
        job.future.set_result(result)

    def _observe(self, n: int, seconds: float) -> None:
        self.batches_run += 1
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * (seconds / max(n, 1))
        if self._metrics is not None:
            self._metrics.batch_size.observe(n)
            self._metrics.batch_seconds.observe(seconds)
