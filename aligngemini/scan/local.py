"""The local engine: one process, the Detector's streaming pipeline, SQLite. Blocks of inputs are read and
hashed by I/O threads one block ahead while the models score the current one; each finished block is one
committed transaction, so a killed scan resumes exactly where its last commit left it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from aligngemini.scan.scorer import ContentScorer, Fetched, Record, fetch
from aligngemini.scan.store import SQLiteStore


def run_local(
    store: SQLiteStore,
    detector: object,
    *,
    batch_size: int = 16,
    io_threads: int = 8,
    on_block: Callable[[list[Record]], None] = lambda records: None,
) -> ContentScorer:
    """Score every planned input that has no result yet. ``on_block`` sees each committed block's records."""
    scorer = ContentScorer(detector, store.known, batch_size=batch_size)
    block = 4 * batch_size
    with ThreadPoolExecutor(io_threads, thread_name_prefix="scan-read") as readers, \
            ThreadPoolExecutor(1, thread_name_prefix="scan-plan") as planner:  # fmt: skip

        def read_block(page: list[tuple[int, str]]) -> list[Fetched]:
            return list(readers.map(lambda sp: fetch(*sp), page))

        pages: Iterator[list[tuple[int, str]]] = store.pending(block)
        ahead: Future[list[Fetched]] | None = _next(planner, read_block, pages)
        while ahead is not None:
            items = ahead.result()
            ahead = _next(planner, read_block, pages)  # the next block is read while this one is scored
            records = scorer.score(items)
            store.write(zip((it.seq for it in items), records, strict=True))
            on_block(records)
    return scorer


def _next(pool: ThreadPoolExecutor, read: Callable[[list[tuple[int, str]]], list[Fetched]],
          pages: Iterator[list[tuple[int, str]]]) -> Future[list[Fetched]] | None:  # fmt: skip
    page = next(pages, None)
    return None if page is None else pool.submit(read, page)
