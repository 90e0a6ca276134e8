"""Int8 dynamic quantisation of the semantic tower: how much faster, and how far it moves the scores.

The starter's CLIP tower computes its matrix products in bfloat16. PyTorch's dynamic int8 quantisation
(``torch.ao.quantization.quantize_dynamic``: weights per output channel, activations per tensor at run time)
is the cheapest faster arithmetic on a CPU with VNNI. This script scores corpus images (``aligngemini data
fetch-starter``) with the bundle's semantic branch as shipped and with int8 in some of its linear layers, and
reports each variant's time per image beside the change in P(fake) and the verdicts at the branch's threshold
that change. CLIP's activations carry a few channels far larger than the rest, which per-tensor activation
scales cannot hold; the report shows what that costs.

    python benchmarks/semantic_int8.py --out benchmarks/results/semantic_int8
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402
from shipped_semantic import corpus_and_clip_branch, score_change  # noqa: E402

from aligngemini.branches.semantic.clip import load_tower  # noqa: E402
from aligngemini.decode import load_image  # noqa: E402

# name -> (encoder linear layers in int8, whether the rest computes in bf16 as shipped, or in fp32)
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "int8 every encoder linear layer, the rest fp32": (("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), False),
    "int8 q/k/v and fc1 (inputs from layer norms), the rest bf16": (("q_proj", "k_proj", "v_proj", "fc1"), True),
    "int8 q/k/v, the rest bf16": (("q_proj", "k_proj", "v_proj"), True),
}  # fmt: skip


def quantized(fp32_model: nn.Module, layers: tuple[str, ...], rest_bf16: bool) -> nn.Module:
    """A copy of the tower's network with the named encoder linear layers in dynamic int8."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(fp32_model)
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and ".encoder." in f".{name}" and name.rsplit(".", 1)[-1] in layers
    }
    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        model = quantize_dynamic(model, spec, dtype=torch.qint8)
    if rest_bf16:
        for module in model.modules():
            if type(module) in (nn.Linear, nn.Conv2d):
                module.to(torch.bfloat16)
    return model


def timed_scores(branch: Any, prepared: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    """P(fake) of every image, and the seconds per image of the scoring pass after a warm-up batch."""
    branch.score(prepared[:16])
    t0 = time.perf_counter()
    scores = branch.score(prepared)
    return scores, (time.perf_counter() - t0) / len(prepared)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--images", type=int, default=128, help="corpus images, spread evenly over its manifest")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    header = record_header("semantic_int8", argv, args.machine)
    det, branch, rows = corpus_and_clip_branch(p, args.bundle, args.images)
    prepared = [branch.prepare(load_image(r.path)) for r in rows]
    shipped_model, shipped_precision = branch.tower.model, branch.tower.precision
    section = det.config["branches"]["semantic"]
    fp32 = load_tower(section["tower"], sha256=section.get("tower_sha256"), bundle_dir=det.bundle.dir)
    fp32.configure(image_size=branch.tower.image_size, layers=branch.tower.n_layers)

    base, base_s = timed_scores(branch, prepared)
    results: list[dict[str, Any]] = [{"variant": "shipped (bf16)", "ms_per_image": 1000 * base_s}]
    for name, (layers, rest_bf16) in VARIANTS.items():
        branch.tower.model = quantized(fp32.model, layers, rest_bf16)
        branch.tower.precision = "bf16" if rest_bf16 else "fp32"
        scores, secs = timed_scores(branch, prepared)
        results.append({"variant": name, "ms_per_image": 1000 * secs,
                        **score_change(scores, base, branch.threshold)})  # fmt: skip
    branch.tower.model, branch.tower.precision = shipped_model, shipped_precision

    record = {**header, "bundle": det.bundle_id, "images": len(rows), "threshold": branch.threshold,
              "threads": torch.get_num_threads(), "results": results}  # fmt: skip
    lines = [
        "# The semantic tower in int8: speed against score change",
        "",
        describe_run(record) + ".",
        f"`{record['bundle']}`, {len(rows)} corpus images spread over the starter corpus, torch threads "
        f"{record['threads']}; P(fake) compared with the shipped branch, verdicts at its threshold "
        f"{branch.threshold:.3f}.",
        "",
        "| variant | ms / image | mean dP | p99 dP | max dP | verdicts changed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rest = (
            f"{r['dp_mean']:.4f} | {r['dp_p99']:.3f} | {r['dp_max']:.3f} | {r['verdicts_changed']}"
            if "dp_mean" in r
            else "- | - | - | -"
        )
        lines.append(f"| {r['variant']} | {r['ms_per_image']:.1f} | {rest} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        write_record(args.out, record, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
