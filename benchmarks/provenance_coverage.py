"""How many images of each dataset carry which kind of provenance (C2PA, signatures, AI or capture
declarations, generator parameters, IPTC source types, EXIF Software), by dataset, label and source.

    python benchmarks/provenance_coverage.py --datasets ../shared/datasets \
        --out benchmarks/results/provenance_coverage

Each dataset is a folder with a ``manifest.csv`` naming its files (column ``path`` or ``file``) and their
``label``; the source is the file's first folder.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import record_header, write_record  # noqa: E402

from aligngemini.eval.layouts import EvalItem  # noqa: E402
from aligngemini.eval.provenance_census import KINDS, kinds_of  # noqa: E402
from aligngemini.eval.runner import hash_items  # noqa: E402

COLUMNS = ("n", *KINDS, "exif_software")


def rows_of(dataset: Path) -> list[dict[str, str]]:
    with open(dataset / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["path"] = row.get("path") or row["file"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--datasets", type=Path, required=True, help="folder of datasets, each with a manifest.csv"
    )
    p.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box", help="how the result names this machine")
    args = p.parse_args(argv)
    header = record_header("provenance_coverage", argv, args.machine)
    t0 = time.perf_counter()
    groups: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    examples: dict[str, list[str]] = defaultdict(list)
    for dataset in sorted(d for d in args.datasets.iterdir() if (d / "manifest.csv").is_file()):
        rows = rows_of(dataset)
        items = [EvalItem(dataset / r["path"], 0, None) for r in rows]
        found = hash_items(items, provenance=True, progress=False).provenance or []
        for row, prov in zip(rows, found, strict=True):
            label = "real" if row["label"] in ("real", "0") else "ai"
            source = row["path"].split("/", 1)[0] if dataset.name != "realorai" else "-"
            kinds = kinds_of(prov)
            if prov is not None and any(e.startswith("EXIF Software") for e in prov.evidence):
                kinds.add("exif_software")
            for key in (dataset.name, label, source), (dataset.name, label, "all"):
                groups[key]["n"] += 1
                for k in kinds:
                    groups[key][k] += 1
            for k in kinds - {"any", "exif_software"}:
                if len(examples[k]) < 3 and prov is not None:
                    examples[k].append(
                        f"{dataset.name}/{row['path']}: {prov.evidence[0] if prov.evidence else ''}"
                    )
    table = [{"dataset": d, "label": lab, "source": s, **c} for (d, lab, s), c in sorted(groups.items())]
    result: dict[str, Any] = {
        **header,
        "seconds": round(time.perf_counter() - t0, 1),
        "columns": list(COLUMNS),
        "groups": table,
        "examples": dict(examples),
    }
    lines = [
        "# Provenance coverage of the validation datasets",
        "",
        f"`{result['command']}` ({result['date']}, {result['seconds']} s). Counts of images carrying each "
        "kind of provenance; `any` = at least one finding. `declared_ai`: C2PA claim, IPTC AI source type or "
        "generator parameters; `signed`: a C2PA manifest whose signature and content hashes verify.",
        "",
        "| dataset | label | source | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in table:
        lines.append(f"| {row['dataset']} | {row['label']} | {row['source']} | "
                     + " | ".join(str(row[c]) for c in COLUMNS) + " |")  # fmt: skip
    totals = {k: sum(r[k] for r in table if r["source"] == "all") for k in COLUMNS}
    lines += ["", f"In all: {totals['n']} images; {totals['c2pa']} carry C2PA ({totals['signed']} validly signed), "
              f"{totals['declared_ai']} declare AI generation, {totals['declared_capture']} declare a capture, "
              f"{totals['n'] - totals['any']} carry nothing this reader finds."]  # fmt: skip
    if examples:
        lines += ["", "Examples (first finding of up to three files per kind):", ""]
        lines += [f"- `{k}`: " + "; ".join(v) for k, v in sorted(examples.items())]
    write_record(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
