"""The semantic tower's kernels: what the plain attention products and the SiLU-folded MLP save, and how far
they move the scores.

The bundle's semantic branch scores corpus images (``aligngemini data fetch-starter``) four ways: attention
by PyTorch's fused kernel or by plain products (``attention: sdpa | eager``), each with CLIP's quick_gelu as
three passes or folded into one SiLU pass (``tower_kernels``). Time per image is the median over ``--rounds``
rounds, each round running every variant once on the same images, the first variant rotating (on a small
shared box one run drifts by 5-10%, more than these changes). Scores are compared with the old kernels
(fused attention, quick_gelu): P(fake) change, verdicts changed at the branch's threshold, and the AUC of both
on the corpus labels (in-sample for the shipped head: it says whether a ranking moved, not how well it
generalises).

    python benchmarks/tower_kernels.py --out benchmarks/results/tower_kernels_cpu
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402
from shipped_semantic import corpus_and_clip_branch, score_change  # noqa: E402

from aligngemini.branches.semantic.tower_kernels import QUICK_GELU_SCALE  # noqa: E402
from aligngemini.decode import load_image  # noqa: E402

BASELINE = ("sdpa", False)  # (attention, quick_gelu folded): the kernels before
VARIANTS = [BASELINE, ("sdpa", True), ("eager", False), ("eager", True)]


def unfolded(model: nn.Module) -> nn.Module:
    """A copy of a folded tower with quick_gelu back in its MLPs: the tower as it computed before folding."""
    from transformers.activations import QuickGELUActivation

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(getattr(module, "activation_fn", None), nn.SiLU) and hasattr(module, "fc1"):
            with torch.no_grad():
                module.fc1.weight.div_(QUICK_GELU_SCALE)
                module.fc1.bias.div_(QUICK_GELU_SCALE)
                module.fc2.weight.mul_(QUICK_GELU_SCALE)
            module.activation_fn = QuickGELUActivation()
    return model


def name(variant: tuple[str, bool]) -> str:
    attention, folded = variant
    return f"attention {attention}, " + ("SiLU (folded)" if folded else "quick_gelu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--images", type=int, default=0, help="corpus images, spread over its manifest (0: all)")
    p.add_argument("--timed", type=int, default=64, help="images timed per variant and round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    header = record_header("tower_kernels", argv, args.machine)
    det, branch, rows = corpus_and_clip_branch(p, args.bundle, args.images)
    if not branch.tower.folded_mlps:
        p.error(f"the tower of {args.bundle} has no quick_gelu MLPs to compare")
    labels = np.array([r.label == "fake" for r in rows])
    prepared = [branch.prepare(load_image(r.path)) for r in rows]
    towers = {}
    for variant in VARIANTS:
        attention, folded = variant
        model = copy.deepcopy(branch.tower.model) if folded else unfolded(branch.tower.model)  # both copies
        model.set_attn_implementation(attention)
        towers[variant] = model

    def score(variant: tuple[str, bool], items: list[torch.Tensor]) -> np.ndarray:
        branch.tower.model = towers[variant]
        return branch.score(items)

    timed = prepared[: args.timed]
    ms: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        score(v, timed[:8])  # warm-up
    for r in range(args.rounds):
        for v in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
            t0 = time.perf_counter()
            score(v, timed)
            ms[v].append(1000 * (time.perf_counter() - t0) / len(timed))
    scores = {v: score(v, prepared) for v in VARIANTS}
    base = scores[BASELINE]
    threshold = branch.threshold
    results: list[dict[str, Any]] = []
    for v in VARIANTS:
        results.append({
            "attention": v[0], "quick_gelu_folded": v[1], "ms_per_image_median": statistics.median(ms[v]),
            "ms_per_image": [round(t, 2) for t in ms[v]], "auc": float(roc_auc_score(labels, scores[v])),
            **score_change(scores[v], base, threshold),
        })  # fmt: skip
    record = {**header, "bundle": det.bundle_id, "images": len(rows), "timed_images": len(timed),
              "rounds": args.rounds, "threshold": threshold, "threads": torch.get_num_threads(),
              "tower": {"image_size": branch.tower.image_size, "precision": branch.tower.compute_precision,
                        "batch": "8 images per forward pass"}, "results": results}  # fmt: skip
    lines = [
        "# The semantic tower's kernels: speed against score change",
        "",
        describe_run(record) + ".",
        f"`{record['bundle']}`'s semantic branch (tower at {branch.tower.image_size} px, "
        f"{branch.tower.compute_precision}, torch threads {record['threads']}). Time: median over {args.rounds} "
        f"rounds of {len(timed)} images, each round running every variant once, the first rotating. Scores: "
        f"{len(rows)} corpus images, compared with the first row; verdicts at the threshold {threshold:.3f}; "
        "AUC in-sample for the shipped head.",
        "",
        "| kernels | ms / image, median (range) | AUC | mean dP | p99 dP | max dP | verdicts changed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v, r in zip(VARIANTS, results, strict=True):
        spread = f"{min(ms[v]):.1f}-{max(ms[v]):.1f}"
        lines.append(f"| {name(v)} | {r['ms_per_image_median']:.1f} ({spread}) | {r['auc']:.4f} | "
                     f"{r['dp_mean']:.4f} | {r['dp_p99']:.4f} | {r['dp_max']:.4f} | {r['verdicts_changed']} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        write_record(args.out, record, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
