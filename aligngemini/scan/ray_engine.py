"""The Ray engine: Ray Data reads, hashes and decodes the inputs (and reads their provenance) in tasks, and
scores them with ``map_batches`` on an actor pool (one Detector per actor, one GPU each when the cluster
has GPUs). The driver writes each finished block as one Parquet shard (``store.ShardStore``).

``ray.init()`` joins the cluster at ``RAY_ADDRESS`` when it is set, else starts a local one. Content is
scored once per actor and per run on the store's earlier shards; two actors that meet the same bytes in one
run may both score them, and one actor may score a block before an earlier one (its memory then takes a
later copy for the first): the driver, which gets the blocks in input order, records every copy after the
first as its duplicate and the first as the original (same scores, ``duplicate_of`` set or not), so the
results are the same as the local engine's.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aligngemini.scan.scorer import ContentScorer, Fetched, Record, as_duplicate, fetch
from aligngemini.scan.sources import iter_sources
from aligngemini.scan.store import ShardStore, StoreError, check_meta, engine_of


def plan_ray(out: Path, sources: list[str], bundle_id: str, on_skip: Callable[[str, str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Expand the sources (each path once, in order), and leave out the paths the store's shards hold."""
    if engine_of(out) == "local":
        raise StoreError(
            f"{out} holds a local scan; continue it with --engine local, or scan into another --out"
        )
    store = ShardStore(out, create=True)
    meta = store.meta()
    check_meta(meta, bundle_id, out)
    paths = list(dict.fromkeys(iter_sources(sources, on_skip=on_skip)))
    if not meta:
        store.set_meta(engine="ray", bundle_id=bundle_id, created=datetime.now(UTC).isoformat(timespec="seconds"),
                       runs=0, seconds=0.0)  # fmt: skip
    store.set_meta(sources=sorted(set(meta.get("sources", [])) | set(sources)), inputs=len(paths))
    done = store.done_paths()
    pending = [(seq, p) for seq, p in enumerate(paths) if p not in done]
    return {"store": store, "planned": len(paths), "done": len(paths) - len(pending), "pending": len(pending),
            "items": pending}  # fmt: skip


def _read_decode_batch(
    batch: dict[str, np.ndarray], *, detector_args: dict[str, Any], known: Any
) -> dict[str, Any]:
    """Ray task: read, hash, decode (within the pixel limit) and read the provenance of a batch of inputs, so
    that the actors only run models. Content already in the store is not decoded. Empty strings and zero
    sizes stand for "none", so that the Arrow columns stay typed."""
    import ray

    from aligngemini.decode import ImageLoadError, decode_bytes
    from aligngemini.provenance import read_provenance

    known_shas = ray.get(known) if isinstance(known, ray.ObjectRef) else known
    cols: dict[str, list[Any]] = {k: [] for k in ("seq", "path", "sha256", "error", "pixels", "height", "width",
                                                   "provenance")}  # fmt: skip
    for seq, path in zip(batch["seq"], batch["path"], strict=True):
        got = fetch(int(seq), str(path))
        pixels, height, width, prov, error = b"", 0, 0, "", got.error or ""
        if got.data is not None and got.sha256 not in known_shas:
            try:
                image = decode_bytes(got.data, got.path, sha256=got.sha256)
                pixels, (width, height) = image.image.tobytes(), image.image.size
                if detector_args.get("provenance", "report") != "off":
                    found = read_provenance(got.data, trust_anchors=detector_args.get("trust_anchors"))
                    prov = json.dumps(found.to_dict(), allow_nan=False)
            except ImageLoadError as exc:
                error = exc.reason
        for key, value in (
            ("seq", got.seq),
            ("path", got.path),
            ("sha256", got.sha256 or ""),
            ("error", error),
            ("pixels", pixels),
            ("height", height),
            ("width", width),
            ("provenance", prov),
        ):
            cols[key].append(value)  # fmt: skip
    return {**cols, "seq": np.array(cols["seq"], dtype=np.int64)}


class ScanActor:
    """One Detector, scoring the blocks Ray Data hands it."""

    def __init__(self, detector_args: dict[str, Any], known: Any, batch_size: int, threads: int | None):
        import ray
        import torch

        from aligngemini.detector import Detector

        if threads:
            torch.set_num_threads(threads)
        known_firsts: dict[str, Record] = ray.get(known) if isinstance(known, ray.ObjectRef) else known
        # contents of earlier runs come from the store; this run's repeats from the scorer's own memory
        self.scorer = ContentScorer(
            Detector.load(**detector_args), known_firsts.get, batch_size=batch_size, workers=1
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from PIL import Image

        from aligngemini.decode import ImageFacts, LoadedImage
        from aligngemini.provenance import Provenance

        items = []
        for seq, path, sha, err, px, h, w, prov in zip(*(batch[k] for k in ("seq", "path", "sha256", "error",
                                                       "pixels", "height", "width", "provenance")), strict=True):  # fmt: skip
            it = Fetched(int(seq), str(path), sha256=str(sha) or None, error=str(err) or None)
            if int(w) > 0:
                rgb = Image.frombytes("RGB", (int(w), int(h)), bytes(px))
                it.image = LoadedImage(
                    rgb, ImageFacts(it.path, None, int(w), int(h), "RGB", sha256=it.sha256)
                )
                it.provenance = Provenance.from_dict(json.loads(str(prov))) if str(prov) else None
            items.append(it)
        records = self.scorer.score(items)
        return {"seq": np.array([it.seq for it in items], dtype=np.int64),
                "record": [json.dumps(r, allow_nan=False) for r in records]}  # fmt: skip


def run_ray(plan: dict[str, Any], detector_args: dict[str, Any], *, actors: int | None, batch_size: int,
            on_block: Callable[[list[Record]], None]) -> None:  # fmt: skip
    import ray

    store: ShardStore = plan["store"]
    started = _init_ray()
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        n_actors = actors or max(1, gpus)
        if gpus:
            actor_opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:  # leave a quarter CPU for the reading tasks, so that they never wait on the actors
            actor_opts = {"num_cpus": max(0.25, min(1.0, (cpus - 0.25) / n_actors))}
            threads = max(1, int(cpus // n_actors))
        firsts = store.first_records()
        # Blocks come back in input order, so that "the first path" of a content is the first in the listing
        # whichever actor finishes first: the records are then the local engine's.
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        items = [{"seq": s, "path": p} for s, p in plan["items"]]
        rows = 4 * batch_size  # inputs per block: read by one task, scored in one actor call, one shard
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // rows)))
        ds = ds.map_batches(_read_decode_batch, batch_size=rows, batch_format="numpy", num_cpus=0.25,
                            fn_kwargs={"detector_args": detector_args, "known": ray.put(set(firsts))})  # fmt: skip
        ds = ds.map_batches(
            ScanActor,
            fn_constructor_kwargs={"detector_args": detector_args, "known": firsts,
                                   "batch_size": batch_size, "threads": threads},
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            batch_size=rows,
            batch_format="numpy",
            ray_remote_args_fn=_no_restarts,
            **actor_opts,
        )  # fmt: skip
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            written: list[tuple[int, Record]] = []
            for seq, text in zip(batch["seq"], batch["record"], strict=True):
                written.append((int(seq), in_input_order(json.loads(str(text)), firsts)))
            store.write(written)
            on_block([r for _, r in written])
    finally:
        if started:
            ray.shutdown()


def in_input_order(rec: Record, firsts: dict[str, Record]) -> Record:
    """An actor's record as the local engine would write it, given in input order: a duplicate of the first
    record of its content in ``firsts`` (sha256 -> record, updated here), or that first record itself. An actor
    may have met a later copy in an earlier call and taken this one for its duplicate; the driver decides."""
    sha = rec.get("sha256")
    if not sha:  # unreadable: no content to share
        return rec
    first = firsts.get(sha)
    if first is None:
        first = firsts[sha] = {**rec, "duplicate_of": None}
        return first
    return as_duplicate(first, rec["path"])


def _no_restarts() -> dict[str, Any]:
    """An actor that dies fails the scan, which then resumes from its last shard (restarting it would re-send
    constructor arguments that may be gone from the object store)."""
    return {"max_restarts": 0}


def _init_ray() -> bool:
    """Join the cluster at RAY_ADDRESS, else start a local one (passing our settings to its workers); True
    when this process started Ray and so shuts it down."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(("ALIGNGEMINI_", "HF_", "OMP_"))}
    logging.getLogger("ray").setLevel(logging.ERROR)  # the scan reports progress and problems itself
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=True,
             runtime_env={"env_vars": env} if env else None)  # fmt: skip
    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.enable_progress_bars = False  # the scan's own bar counts images
    ctx.print_on_execution_start = False
    warnings.filterwarnings("ignore", message=".*won't fully utilize the available concurrency.*")
    warnings.filterwarnings(
        "ignore", message="`ray_remote_args_fn` is deprecated"
    )  # still the only way to max_restarts
    return True
