"""The ``Detector``: a loaded bundle's branches, thresholds and fusion rule, turning inputs into ``Verdict``
records (``record.py``). The public Python API, with ``Verdict``.

>>> from aligngemini import Detector
>>> det = Detector.load("starter")
>>> [v.verdict for v in det.predict(["photo.jpg"])]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aligngemini.allocator import retain_freed_memory
from aligngemini.branches.base import Branch, build_branch, compile_branch
from aligngemini.branches.precision import default_dtype, parse_dtype
from aligngemini.bundle import Bundle, load_bundle
from aligngemini.decode import DEFAULT_MAX_PIXELS, ImageLoadError, ImageSource, LoadedImage, load_image
from aligngemini.fusion import fuse
from aligngemini.provenance import PROVENANCE_MODES, Provenance, read_provenance
from aligngemini.record import ROLES, BranchResult, Verdict

log = logging.getLogger(__name__)
__all__ = ["BranchResult", "Detector", "Verdict"]


def default_device() -> torch.device:
    name = os.environ.get("ALIGNGEMINI_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def one_thread_per_worker() -> None:
    """A decoding worker's initializer: its tensor work (the semantic view's resize) runs on the worker's own
    thread. Left to OpenMP, each worker would start a team as large as the model's, on the cores the model uses;
    on 2 cores that team took back what the faster resize saved."""
    torch.set_num_threads(1)  # per calling thread under OpenMP: the model's threads are unchanged


@dataclass
class _Ready:
    """A decoded input, prepared for every branch."""

    source: str
    prepared: dict[str, Any]
    provenance: Provenance | None = None
    sha256: str | None = None


class Detector:
    """A loaded bundle: its branches, thresholds and fusion rule."""

    def __init__(self, bundle: Bundle, branches: dict[str, Branch], device: torch.device, dtype: torch.dtype,
                 max_pixels: int = DEFAULT_MAX_PIXELS, provenance: str = "report",
                 trust_anchors: str | None = None):  # fmt: skip
        if not branches:
            raise ValueError(f"bundle {bundle.name!r} has no usable branch")
        if provenance not in PROVENANCE_MODES:
            raise ValueError(f"provenance must be one of {PROVENANCE_MODES}, not {provenance!r}")
        self.bundle = bundle
        self.branches = branches
        self.device = device
        self.dtype = dtype
        self.max_pixels = max_pixels
        self.provenance = (
            provenance  # "report": beside the verdict; "override": a signed AI claim makes it fake
        )
        self.trust_anchors = trust_anchors  # PEM certificates a C2PA signer may chain to

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike | Bundle = "starter",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        only: Sequence[str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        provenance: str = "report",
        trust_anchors: str | None = None,
        compile_mode: str | None = None,
    ) -> Detector:
        """Load a registered name (``"starter"``), a bundle folder or archive, or a hub id.
        ``only`` restricts to some branches (e.g. ``["pixel"]``). ``provenance``: "report" (what each file
        declares about its origin, beside the verdict), "override" (a validly signed C2PA claim of AI
        generation makes the verdict fake) or "off". ``compile_mode``: a torch.compile mode ("default",
        "reduce-overhead", "max-autotune") for every branch that offers one; None runs eagerly."""
        b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        dev = torch.device(device) if device is not None else default_device()
        dt = parse_dtype(dtype, default_dtype(dev))
        if dev.type == "cpu":
            retain_freed_memory()
        sections = b.config["branches"]
        if only:
            unknown = sorted(set(only) - set(sections))
            if unknown:
                raise ValueError(f"bundle {b.name!r} has no branch {unknown}; it has {sorted(sections)}")
            sections = {k: v for k, v in sections.items() if k in only}
        branches = {
            role: build_branch(role, cfg, b.dir, device=dev, dtype=dt) for role, cfg in sections.items()
        }
        if compile_mode is not None:
            for role, branch in branches.items():
                if not compile_branch(branch, compile_mode):
                    log.warning("branch %s (%s) has no compiled path: it runs eagerly", role,
                                sections[role].get("family"))  # fmt: skip
        det = cls(b, branches, dev, dt, max_pixels, provenance, trust_anchors)
        if det.missing_branches:
            log.warning("bundle %s has no %s branch: verdicts rest on %s alone", b.name,
                        " or ".join(det.missing_branches), " and ".join(sorted(branches)))  # fmt: skip
        return det

    # -- configuration -------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.bundle.config

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def missing_branches(self) -> list[str]:
        return [r for r in ROLES if r not in self.branches]

    @property
    def thresholds(self) -> dict[str, float]:
        return {role: float(branch.threshold) for role, branch in self.branches.items()}

    @property
    def fusion_rule(self) -> str:
        return str(self.config.get("fusion", {}).get("rule", "or"))

    @property
    def fusion_params(self) -> dict[str, Any]:
        """The fusion rule's fitted parameters (the ``stack`` rule's weights and bias), from the bundle."""
        return dict(self.config.get("fusion", {}))

    @property
    def uncertain_band(self) -> tuple[float, float] | None:
        band = self.config.get("fusion", {}).get("uncertain_band")
        return (float(band[0]), float(band[1])) if band else None

    # -- scoring -------------------------------------------------------------------------------
    def load_input(self, item: ImageSource, name: str | None = None) -> LoadedImage:
        return load_image(item, max_pixels=self.max_pixels, name=name)

    def provenance_of(self, image: LoadedImage) -> Provenance | None:
        """What the image's original bytes declare about its origin; None when off or there were no bytes."""
        if self.provenance == "off" or image.data is None:
            return None
        return read_provenance(image.data, trust_anchors=self.trust_anchors)

    def prepare(self, image: LoadedImage) -> dict[str, Any]:
        """Every branch's model input for one decoded image (CPU work: crops, resizing). Thread-safe, so that
        it runs in the decoding workers, off the models' critical path."""
        return {role: branch.prepare(image) for role, branch in self.branches.items()}

    @torch.inference_mode()
    def score_prepared(self, prepared: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Per-branch P(fake) for images already through ``prepare``."""
        out: dict[str, np.ndarray] = {}
        for role, branch in self.branches.items():
            if not prepared:
                out[role] = np.zeros(0)
                continue
            scores = branch.score([p[role] for p in prepared])
            out[role] = np.asarray(scores, dtype=np.float64).reshape(len(prepared))
        return out

    def score_loaded(self, images: Sequence[LoadedImage]) -> dict[str, np.ndarray]:
        """Per-branch P(fake) for already decoded images."""
        return self.score_prepared([self.prepare(img) for img in images])

    def verdicts_from_scores(
        self,
        names: Sequence[str | None],
        scores: dict[str, np.ndarray],
        provenance: Sequence[Provenance | None] | None = None,
    ) -> list[Verdict]:
        """Fuse per-branch scores into verdicts. With ``provenance="override"``, a file whose validly signed
        C2PA manifest declares AI generation is fake whatever the pixels say, and "provenance" is in
        ``fired``; its ``p_fake`` stays the pixels' score."""
        thresholds = self.thresholds
        fused = fuse(scores, thresholds, self.fusion_rule, self.uncertain_band, self.fusion_params)
        results = []
        for j, name in enumerate(names):
            branches = {
                role: BranchResult(
                    float(scores[role][j]), bool(scores[role][j] >= thresholds[role]), thresholds[role]
                )
                for role in scores
            }
            prov = provenance[j] if provenance is not None else None
            verdict, fired = fused.verdicts[j], list(fused.fired[j])
            if self.provenance == "override" and prov is not None and prov.signed_ai_claim:
                verdict, fired = "fake", [*fired, "provenance"]
            results.append(Verdict(name, float(fused.p_fake[j]), verdict, branches, fired, provenance=prov))
        return results

    def iter_predict(
        self,
        inputs: Iterable[ImageSource],
        *,
        batch_size: int = 16,
        names: Iterable[str | None] | None = None,
        workers: int | None = None,
    ) -> Iterator[Verdict]:
        """Stream verdicts in input order. Workers decode and prepare (crop, resize) the next batch while the
        models score this one; an input that cannot be read yields a Verdict with ``error`` set instead of
        stopping the stream."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        name_iter = iter(names) if names is not None else None
        workers = workers or self.default_workers()

        def load(pair: tuple[ImageSource, str | None]) -> _Ready | Verdict:
            item, name = pair
            label = name if name is not None else (str(item) if isinstance(item, str | os.PathLike) else None)
            try:
                image = self.load_input(item, name=label)
            except ImageLoadError as exc:
                return Verdict.failed(label, exc.reason)
            return _Ready(image.source, self.prepare(image), self.provenance_of(image), image.facts.sha256)

        def batches() -> Iterator[list[tuple[ImageSource, str | None]]]:
            batch: list[tuple[ImageSource, str | None]] = []
            for item in inputs:
                batch.append((item, next(name_iter, None) if name_iter is not None else None))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        with ThreadPoolExecutor(max_workers=workers, initializer=one_thread_per_worker) as pool:
            ahead: list[Future[_Ready | Verdict]] | None = None
            for batch in batches():
                submitted = [pool.submit(load, pair) for pair in batch]
                if ahead is not None:
                    yield from self._score_ready([f.result() for f in ahead])
                ahead = submitted
            if ahead is not None:
                yield from self._score_ready([f.result() for f in ahead])

    def default_workers(self) -> int:
        """Decoding threads: on a GPU, enough to keep it fed; on the CPU the models already use every core, so
        few (measured on 2 cores: one worker gives 94% of the models-only rate, two 84%)."""
        cpus = os.cpu_count() or 2
        return min(16, cpus) if self.device.type == "cuda" else max(1, min(4, cpus // 4))

    def _score_ready(self, items: list[_Ready | Verdict]) -> list[Verdict]:
        good = [d for d in items if isinstance(d, _Ready)]
        scores = self.score_prepared([g.prepared for g in good])
        verdicts = (
            self.verdicts_from_scores([g.source for g in good], scores, [g.provenance for g in good])
            if good
            else []
        )
        for g, verdict in zip(good, verdicts, strict=True):
            verdict.sha256 = g.sha256
        scored = iter(verdicts)
        return [next(scored) if isinstance(d, _Ready) else d for d in items]

    def predict(self, inputs: ImageSource | Iterable[ImageSource], *, batch_size: int = 16) -> list[Verdict]:
        """Verdicts for paths, PIL images, bytes or arrays (one or a list)."""
        if isinstance(inputs, str | os.PathLike | bytes | np.ndarray) or hasattr(inputs, "getpixel"):
            inputs = [inputs]  # type: ignore[list-item]
        return list(self.iter_predict(inputs, batch_size=batch_size))  # type: ignore[arg-type]

    def explain(self, image: ImageSource) -> str:
        """The semantic branch's rationale in words, when it can explain."""
        branch = self.branches.get("semantic")
        if branch is None:
            raise NotImplementedError(f"bundle {self.bundle.name!r} has no semantic branch to explain with")
        if not branch.can_explain:
            raise NotImplementedError(
                f"the semantic branch of {self.bundle.name!r} ({self.config['branches']['semantic'].get('family')}) "
                "scores but cannot explain; a vision-language (semantic-vlm) branch can"
            )
        return branch.explain(self.load_input(image))
