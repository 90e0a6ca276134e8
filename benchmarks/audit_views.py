"""Which reduced view makes the audit's CLIP probe a content probe: box, Lanczos or anti-aliased (default).

The audit's "semantic probe" is a CLIP linear probe on each image reduced to a small view, so that it
sees scene, layout and colour but not pixel-level texture. This script measures, for each view filter,
that probe's balanced accuracy on sets given by name, and the real-vs-reconstruction PSNR at the view for
paired sets. A good content view is near chance on a pixel set whose pairs share their coarse scales,
above chance on a semantic set, and still above chance on a pixel set whose generator changed colour or
tone (a control showing the probe is not blind).

    python benchmarks/audit_views.py \\
        --set aligned=~/.cache/aligngemini/data/audit-starter/pixel \\
        --set unaligned=~/.cache/aligngemini/data/audit-starter-interim/pixel-no-lowfreq \\
        --set semantic=~/.cache/aligngemini/data/audit-starter/semantic

A set whose folder name or given name contains "semantic" is expected above chance, any other near it.
Embeddings are cached per filter (the anti-aliased cache is the one ``aligngemini data audit`` uses).
Writes ``audit_views.json`` and ``audit_views.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    from aligngemini.data.build.audit import (
        AuditConfig,
        ImageSet,
        embedding_probe_on,
        pair_fidelity,
        set_embeddings,
        verdict,
    )
    from aligngemini.data.build.balance import (
        VIEW_METHODS,
        EmbeddingCache,
        clip_embedder,
        embedder_id,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--view", type=int, default=AuditConfig().content_view)
    ap.add_argument("--methods", nargs="+", default=list(VIEW_METHODS), choices=VIEW_METHODS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    cfg = AuditConfig(content_view=args.view)
    embedder = clip_embedder()
    sets = []
    for spec in args.sets:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--set {spec!r}: expected NAME=DIR")
        kind = "semantic" if "semantic" in name or "semantic" in Path(folder).name else "pixel"
        sets.append((name, kind, ImageSet.load(kind, Path(folder).expanduser())))
    rows_out = []
    for method in args.methods:
        cache = EmbeddingCache.default(embedder_id(embedder, "clip", args.view, method))
        for name, kind, image_set in sets:
            started = time.perf_counter()
            emb, rows = set_embeddings(image_set, embedder, cache, view=args.view, view_method=method)
            result = embedding_probe_on(emb, rows, cfg)
            expect = "above" if kind == "semantic" else "chance"
            fidelity = pair_fidelity(image_set, args.view, seed=cfg.seed, view_method=method)
            rows_out.append(
                {
                    "method": method,
                    "set": name,
                    "path": str(image_set.root),
                    "expect": "clearly above chance" if expect == "above" else "near chance",
                    "verdict": verdict(result, expect, cfg),
                    "probe": result.to_dict(),
                    "psnr_db_at_view": (fidelity or {}).get("psnr_db_at_view"),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(
                method,
                name,
                rows_out[-1]["probe"]["balanced_accuracy"],
                rows_out[-1]["verdict"],
                file=sys.stderr,
            )
    machine = f"{platform.machine()} {os.cpu_count()} CPUs ({platform.platform()}), python {platform.python_version()}"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "view": args.view, "command": " ".join(sys.argv), "rows": rows_out}
    (args.out / "audit_views.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = [
        "# CLIP content probe by view filter",
        "",
        f"Machine: {machine}. View: short side {args.view} px. Command: `python {' '.join(sys.argv)}`",
        "",
        "| view filter | set | expected | balanced acc | 95% CI | AUC | median PSNR at view (dB) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows_out:
        p = r["probe"]
        psnr = (r["psnr_db_at_view"] or {}).get("median")
        md.append(
            f"| {r['method']} | {r['set']} | {r['expect']} | {p['balanced_accuracy']:.3f} | "
            f"{p['ci95'][0]:.3f}-{p['ci95'][1]:.3f} | {p['auc']:.3f} | {'-' if psnr is None else f'{psnr:.1f}'} | "
            f"{r['verdict']} |"
        )
    (args.out / "audit_views.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'audit_views.json'} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
