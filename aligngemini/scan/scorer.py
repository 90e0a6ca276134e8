"""The scan's unit of work, shared by both engines: read a block of inputs, hash their bytes, and score each
distinct content once. A byte-identical copy of content already scored (in the store, or earlier in the
block) is not scored again: its record is the first one's, with its own path and ``duplicate_of``."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aligngemini.decode import DEFAULT_MAX_BYTES, LoadedImage
from aligngemini.provenance import Provenance
from aligngemini.record import Verdict
from aligngemini.scan.sources import read_input

Record = dict[str, Any]
RECENT_CONTENTS = 20_000  # first records kept in memory, so that a popular content's copies skip the store


@dataclass
class Fetched:
    """One input's bytes and their sha256, or why they could not be read; or, when a task decoded it already,
    its pixels and provenance (``image``, ``provenance``) in place of the bytes."""

    seq: int
    path: str
    data: bytes | None = None
    sha256: str | None = None
    error: str | None = None
    image: LoadedImage | None = None
    provenance: Provenance | None = None


def fetch(seq: int, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Fetched:
    try:
        data = read_input(path, max_bytes)
    except FileNotFoundError:
        return Fetched(seq, path, error="no such file")
    except IsADirectoryError:
        return Fetched(seq, path, error="is a directory")
    except PermissionError:
        return Fetched(seq, path, error="permission denied")
    except ValueError as exc:
        return Fetched(seq, path, error=str(exc))
    except OSError as exc:
        return Fetched(seq, path, error=f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a remote filesystem's own errors: a result, never a stopped scan
        return Fetched(seq, path, error=f"cannot read: {type(exc).__name__}: {exc}")
    return Fetched(seq, path, data, hashlib.sha256(data).hexdigest())


def as_duplicate(first: Record, path: str) -> Record:
    """``first``'s record for another input with the same bytes."""
    return {**first, "path": path, "duplicate_of": first.get("duplicate_of") or first["path"]}


class ContentScorer:
    """Scores blocks of fetched inputs with a Detector, each distinct content once. ``known`` looks up the
    first record of a content already in the store (None when new)."""

    def __init__(self, detector: Any, known: Callable[[str], Record | None], *, batch_size: int = 16,
                 workers: int | None = None):  # fmt: skip
        self.detector = detector
        self.known = known
        self.batch_size = batch_size
        self.workers = workers
        self.scored = 0  # inputs the models ran on, over this scorer's life
        self.recent: OrderedDict[str, Record] = OrderedDict()  # first records of recent contents (an LRU)

    def _first(self, sha: str) -> Record | None:
        rec = self.recent.get(sha)
        if rec is not None:
            self.recent.move_to_end(sha)
            return rec
        rec = self.known(sha)
        if rec is not None:
            self._remember(sha, rec)
        return rec

    def _remember(self, sha: str, rec: Record) -> None:
        self.recent[sha] = rec
        if len(self.recent) > RECENT_CONTENTS:
            self.recent.popitem(last=False)

    def score(self, items: Sequence[Fetched]) -> list[Record]:
        out: list[Record | None] = [None] * len(items)
        first_in_block: dict[str, int] = {}
        fresh: list[int] = []
        later: list[int] = []
        for i, it in enumerate(items):
            if it.sha256 is None:  # unreadable: no content to share
                out[i] = Verdict.failed(it.path, it.error or "cannot read").to_dict()
            elif it.sha256 in first_in_block:
                later.append(i)
            elif (prior := self._first(it.sha256)) is not None:
                out[i] = as_duplicate(prior, it.path)
            else:
                first_in_block[it.sha256] = i
                if it.error is None:
                    fresh.append(i)
                    continue
                out[i] = {
                    **Verdict.failed(it.path, it.error).to_dict(),
                    "sha256": it.sha256,
                }  # read, not decodable
                self._remember(it.sha256, out[i])
        self._score_fresh(items, fresh, out)
        for i in later:
            first = out[first_in_block[items[i].sha256]]  # type: ignore[index]
            assert first is not None
            out[i] = as_duplicate(first, items[i].path)
        return [r for r in out if r is not None]

    def _score_fresh(self, items: Sequence[Fetched], fresh: list[int], out: list[Record | None]) -> None:
        det = self.detector
        raw = [i for i in fresh if items[i].image is None]
        verdicts = list(det.iter_predict([items[i].data for i in raw], names=[items[i].path for i in raw],
                                         batch_size=self.batch_size, workers=self.workers)) if raw else []  # fmt: skip
        decoded = [i for i in fresh if items[i].image is not None]
        for start in range(0, len(decoded), self.batch_size):  # decoded by a task already: prepare and score
            chunk = decoded[start : start + self.batch_size]
            scores = det.score_prepared([det.prepare(items[i].image) for i in chunk])
            verdicts += det.verdicts_from_scores([items[i].path for i in chunk], scores,
                                                 [items[i].provenance for i in chunk])  # fmt: skip
        for i, verdict in zip(raw + decoded, verdicts, strict=True):
            verdict.sha256 = items[i].sha256  # also for bytes that would not decode: their copies are known
            out[i] = verdict.to_dict()
            self._remember(items[i].sha256, out[i])  # type: ignore[arg-type]
        self.scored += len(fresh)
