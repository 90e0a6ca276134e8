"""Where the semantic tower's CPU time goes, and how close its matrix products run to the machine's own rate.

The tower of the bundle's semantic branch (its input size, precision and layers) runs ``--batch`` random
images at a time under ``torch.profiler``; ``torch.utils.flop_counter`` counts the floating-point work of its
matrix products. The record gives, per setting of ``--merge`` (token pairs merged per layer, 0 = the bundle's
plain forward pass): milliseconds per image (timed with the profiler on), each operator's share of the time, and the rate of the linear
layers (addmm) in GFLOP/s. It then times plain matrix products of the tower's own shapes (tokens of a batch
times 768 -> 768, 768 -> 3072, 3072 -> 768 for ViT-B) in the same dtype: when the tower's rate is close to
theirs, only less work makes the tower faster.

    python benchmarks/tower_profile.py --out benchmarks/results/tower_profile_cpu
    python benchmarks/tower_profile.py --merge 0 2 4 8 --out /tmp/tp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, record_header, write_record  # noqa: E402

TOP_OPS = 8  # operators listed per profile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (the CPU branch uses 8)")
    p.add_argument("--repeats", type=int, default=3, help="profiled forward passes per setting")
    p.add_argument("--merge", type=int, nargs="*", default=[0], metavar="R",
                   help="token pairs merged per layer, one profile each (default: 0, the plain pass)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    return p.parse_args(argv)


def profile_tower(tower: Any, x: Any, features: str, repeats: int) -> dict[str, Any]:
    """Milliseconds per image, operator shares and the linear layers' GFLOP/s of ``repeats`` forward passes."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        tower(x, features)  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            tower(x, features)
        flops = counter.get_flop_counts().get("Global", {})
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                tower(x, features)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    addmm_s = sum(e.self_cpu_time_total for e in events if e.key == "aten::addmm") / 1e6 / repeats
    addmm_flops = sum(int(v) for k, v in flops.items() if str(k) in ("aten.addmm", "aten.addmm.default"))
    return {
        "ms_per_image": round(1000 * wall / repeats / len(x), 1),
        "share": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:TOP_OPS]},
        "gflop_per_image": float(f"{sum(int(v) for v in flops.values()) / len(x) / 1e9:.3g}"),
        # three significant digits, not one decimal: a tiny model on a loaded box runs below 0.05 GFLOP/s
        "linear_gflop_per_s": float(f"{addmm_flops / addmm_s / 1e9:.3g}") if addmm_s else None,
    }


def gemm_rates(rows: int, width: int, hidden: int, dtype: Any, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of plain matrix products of the tower's shapes, ``rows`` tokens at a time."""
    import torch

    out = {}
    with torch.inference_mode():
        for k, n in ((width, width), (width, hidden), (hidden, width)):
            a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(2):
                a @ b
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ b
            out[f"{rows}x{k} @ {k}x{n}"] = round(
                2 * rows * k * n * repeats / (time.perf_counter() - t0) / 1e9, 1
            )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from aligngemini.detector import Detector

    header = record_header("tower_profile", argv, args.machine)
    det = Detector.load(args.bundle, device="cpu")
    branch = det.branches.get("semantic")
    if branch is None or not hasattr(branch, "tower"):
        raise SystemExit(f"{args.bundle}: no semantic-clip branch to profile")
    tower, size = branch.tower, branch.tower.image_size
    dtype = torch.bfloat16 if tower.compute_precision == "bf16" else torch.float32
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    settings = {}
    for merge in args.merge:
        tower.set_merge_tokens(merge)
        settings[str(merge)] = profile_tower(tower, x, branch.features, args.repeats)
        print(f"merge {merge}: {settings[str(merge)]}", file=sys.stderr)
    cfg = tower.model.config
    tokens = (size // int(cfg.patch_size)) ** 2 + 1
    record = {
        **header,
        "bundle": det.bundle_id,
        "torch_threads": torch.get_num_threads(),
        "tower": {
            "image_size": size,
            "precision": tower.compute_precision,
            "layers": tower.n_layers,
            "tokens": tokens,
            "features": branch.features,
        },  # fmt: skip
        "batch": args.batch,
        "by_merge": settings,
        "plain_gemm_gflop_per_s": gemm_rates(
            args.batch * tokens, int(cfg.hidden_size), int(cfg.intermediate_size), dtype
        ),  # fmt: skip
    }
    print(json.dumps(record, indent=1))
    if args.out:
        write_record(args.out, record, render_md(record))
    return 0


def render_md(record: dict[str, Any]) -> str:
    t = record["tower"]
    lines = [
        f"# The semantic tower's CPU time: `{record['bundle']}`",
        "",
        describe_run(record, f"torch threads {record['torch_threads']}") + ".",
        f"Tower at {t['image_size']} px ({t['tokens']} tokens), {t['precision']}, {t['layers']} layers, features "
        f"`{t['features']}`; {record['batch']} random images per forward pass.",
        "",
        "| pairs merged per layer | ms / image | GFLOP / image | linear layers, GFLOP/s | largest shares of the time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for merge, s in record["by_merge"].items():
        shares = ", ".join(
            f"{k.removeprefix('aten::')} {100 * v:.0f}%" for k, v in list(s["share"].items())[:4]
        )
        lines.append(
            f"| {merge} | {s['ms_per_image']} | {s['gflop_per_image']} | {s['linear_gflop_per_s']} | {shares} |"
        )
    rates = ", ".join(f"{k}: {v}" for k, v in record["plain_gemm_gflop_per_s"].items())
    lines += ["", f"Plain matrix products of the tower's shapes in {t['precision']}, GFLOP/s: {rates}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
