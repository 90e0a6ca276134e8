"""Throughput of the detect path, stage by stage: decode only, models only, and end to end from JPEG files.

Stages, each after a warm-up:
- decode: ``Detector.load_input`` on every file, in ``--workers`` threads;
- prepare: each branch's CPU work on decoded images (crops, resizing), in the same threads;
- models: ``Detector.score_prepared`` on prepared images (the branches' forward passes);
- end to end: ``Detector.iter_predict`` over the file paths (decoding and preparing overlap the models).

The images are photo-like JPEGs of ``--size`` (1024x768 by default) written to a temporary folder. The
result names the machine, the bundle, the device and the load average at the start.

    python benchmarks/throughput.py                                    # starter bundle on the CPU
    python benchmarks/throughput.py --images 96 --batch-size 16 --out benchmarks/results/throughput_cpu
    python benchmarks/throughput.py --bundle B --device cuda --images 4096 --batch-size 128 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402

from aligngemini.config import COMPILE_MODES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the detector's)")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("W", "H"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: the detector's)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--semantic-sizes",
        type=int,
        nargs="*",
        default=[],
        metavar="S",
        help="also time the semantic branch with its tower fed S x S inputs (e.g. 224 192 160 128)",
    )
    p.add_argument(
        "--semantic-precisions",
        nargs="*",
        default=None,
        metavar="P",
        help="time each --semantic-sizes entry in these tower precisions (fp32, bf16; default: the bundle's)",
    )
    p.add_argument(
        "--semantic-merge",
        type=int,
        nargs="*",
        default=None,
        metavar="R",
        help="time each --semantic-sizes entry (default: the bundle's size) with R token pairs merged after "
        "each layer's attention (0: none; the head is the bundle's, so this times the tower, not its accuracy)",
    )
    p.add_argument("--compile", dest="compile_mode", default=None,
                   choices=COMPILE_MODES,
                   help="torch.compile every branch in this mode (the warm-up pays the compilation)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    if args.compile_mode and (args.semantic_sizes or args.semantic_merge):
        p.error(
            "--semantic-sizes and --semantic-merge change the tower's shapes, which a compiled tower would "
            "recompile for"
        )
    return args


def make_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    w, h = size
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    paths = []
    for i in range(n):
        tint = rng.random(3).astype(np.float32)
        arr = np.clip(base * tint + rng.normal(0, 20, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from aligngemini.allocator import allocator_mode
    from aligngemini.detector import Detector, one_thread_per_worker

    if args.threads:
        torch.set_num_threads(args.threads)
    header = record_header("throughput", argv, args.machine)
    det = Detector.load(args.bundle, device=args.device, dtype=args.dtype, compile_mode=args.compile_mode)
    workers = args.workers or det.default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, tuple(args.size))
        warm = paths[: args.batch_size]
        started = time.perf_counter()
        warm_verdicts = list(det.iter_predict(warm, batch_size=args.batch_size, workers=workers))  # warm-up
        t_warm = time.perf_counter() - started
        drift = {}
        if args.compile_mode:  # what compiling changed: the same images through an eager detector
            eager = Detector.load(args.bundle, device=args.device, dtype=args.dtype)
            pairs = zip(eager.predict(warm, batch_size=args.batch_size), warm_verdicts, strict=True)
            for a, b in pairs:
                for role in det.branches:
                    change = abs(a.branches[role].p_fake - b.branches[role].p_fake)
                    drift[role] = max(drift.get(role, 0.0), change)
            del eager
        with ThreadPoolExecutor(workers, initializer=one_thread_per_worker) as pool:
            images, t_decode = timed(lambda: list(pool.map(det.load_input, paths)))
            prepared, t_prepare = timed(lambda: list(pool.map(det.prepare, images)))

        def models() -> None:
            for i in range(0, len(prepared), args.batch_size):
                det.score_prepared(prepared[i : i + args.batch_size])

        _, t_models = timed(models)
        per_branch = {}
        for role in det.branches:
            only = [{role: p[role]} for p in prepared]
            branch = det.branches[role]

            def one(only: list[dict[str, Any]] = only, branch: Any = branch, role: str = role) -> None:
                for i in range(0, len(only), args.batch_size):
                    branch.score([p[role] for p in only[i : i + args.batch_size]])

            _, t = timed(one)
            per_branch[role] = round(len(paths) / t, 2)
        verdicts, t_e2e = timed(
            lambda: list(det.iter_predict(paths, batch_size=args.batch_size, workers=workers))
        )
        by_size = {}
        sem = det.branches.get("semantic")
        precisions = (args.semantic_precisions or [sem.tower.precision]) if sem is not None else []
        for precision in precisions:
            sem.tower.set_precision(precision)  # weights as the branch would hold them at this precision
            if sem.tower.compute_precision == "bf16":
                sem.tower.store_matmul_weights_in_bf16()
            else:
                sem.tower.model.float()
            for size in args.semantic_sizes or ([sem.tower.image_size] if args.semantic_merge else []):
                sem.tower.set_input_size(size)
                views = [sem.prepare(img) for img in images]
                for merge in args.semantic_merge or [sem.tower.merge_tokens]:
                    sem.tower.set_merge_tokens(merge)
                    sem.score(views[: args.batch_size])  # warm-up at this size

                    def semantic_only(views: list[Any] = views) -> None:
                        for i in range(0, len(views), args.batch_size):
                            sem.score(views[i : i + args.batch_size])

                    _, t = timed(semantic_only)
                    key = f"{size} px {sem.tower.compute_precision}" + (
                        f", {merge} pairs merged" if merge else ""
                    )
                    by_size[key] = round(len(paths) / t, 2)
    assert all(v.error is None for v in verdicts)
    n = len(paths)
    record = {
        **header,
        "bundle": det.bundle_id,
        "device": str(det.device),
        "dtype": str(det.dtype),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
        "allocator": allocator_mode(),
        "openmp_wait": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
        "images": n,
        "size": list(args.size),
        "batch_size": args.batch_size,
        "compile": args.compile_mode,
        "warm_up_s": round(t_warm, 1),
        "compiled_vs_eager_max_abs_p_fake": {k: float(f"{v:.2e}") for k, v in drift.items()},
        "images_per_s": {
            "decode": round(n / t_decode, 2),
            "prepare": round(n / t_prepare, 2),
            "models": round(n / t_models, 2),
            "end_to_end": round(n / t_e2e, 2),
        },
        "models_per_branch_images_per_s": per_branch,
        "semantic_branch_images_per_s_by_input_size": by_size,
        "end_to_end_over_models": round(t_models / t_e2e, 3),
    }
    print(json.dumps(record, indent=1))
    if args.out:
        ips = record["images_per_s"]
        rows = "\n".join(f"| {k} | {v} |" for k, v in ips.items())
        rows += "".join(f"\n| model: {r} branch alone | {v} |" for r, v in per_branch.items())
        rows += "".join(f"\n| model: semantic branch, tower fed {s} | {v} |" for s, v in by_size.items())
        markdown = (
            f"# Throughput: `{record['bundle']}` on {record['device']} ({record['dtype']})\n\n"
            + describe_run(
                record,
                f"torch threads {record['torch_threads']}, decoding workers {workers}, "
                f"allocator {record['allocator']}, OpenMP wait {record['openmp_wait'] or 'default'}",
            )
            + f". {n} JPEGs of "
            f"{args.size[0]}x{args.size[1]}, batch {args.batch_size}, torch.compile: {args.compile_mode or 'off'} "
            f"(warm-up {record['warm_up_s']} s)."
            + (
                f" Compiled against eager, largest P(fake) change per branch on the warm-up images: "
                f"{record['compiled_vs_eager_max_abs_p_fake']}."
                if drift
                else ""
            )
            + "\n\n| stage | images/s |\n| --- | --- |\n"
            f"{rows}\n\nEnd to end reaches {100 * record['end_to_end_over_models']:.0f}% of the models-only rate.\n"
        )
        write_record(args.out, record, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
