"""How many images of an evaluation set carry which provenance, so that a benchmark never profits from
metadata unknowingly: scores come from pixels, and the report says what the files would have given away."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aligngemini.provenance import Provenance

KINDS = (
    "c2pa",
    "signed",
    "declared_ai",
    "declared_capture",
    "generator_parameters",
    "xmp_source_type",
    "any",
)


def kinds_of(prov: Provenance | None) -> set[str]:
    """The census columns one file counts in."""
    if prov is None:
        return set()
    found = {"any"} if (prov.evidence or prov.c2pa) else set()
    if prov.c2pa:
        found.add("c2pa")
    if prov.signed:
        found.add("signed")
    if prov.declared_ai is True:
        found.add("declared_ai")
    if prov.declared_ai is False:
        found.add("declared_capture")
    if any(("parameters" in e or "ComfyUI" in e or "InvokeAI" in e or "NovelAI" in e) for e in prov.evidence):
        found.add("generator_parameters")
    if any(e.startswith("XMP IPTC DigitalSourceType") for e in prov.evidence):
        found.add("xmp_source_type")
    return found


def census(provenance: Sequence[Provenance | None], groups: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Counts of each kind, overall and per group of item indices."""
    kinds = [kinds_of(p) for p in provenance]

    def count(idx: Sequence[int] | np.ndarray) -> dict[str, int]:
        idx = list(idx)
        return {"n": len(idx), **{k: sum(k in kinds[i] for i in idx) for k in KINDS}}

    return {
        "overall": count(range(len(kinds))),
        "subsets": {name: count(idx) for name, idx in groups.items()},
    }
