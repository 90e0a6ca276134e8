"""``read_provenance``: every provenance source of one file, combined into one ``Provenance``."""

from __future__ import annotations

from aligngemini.decode import sniff_image_type
from aligngemini.provenance.c2pa_store import read_c2pa
from aligngemini.provenance.embedded import read_embedded
from aligngemini.provenance.model import Provenance


def read_provenance(data: bytes, *, trust_anchors: str | None = None) -> Provenance:
    """What the original bytes of one file declare about its origin. Never raises for bad input; never
    reads the network. ``trust_anchors`` (PEM certificates) lets a C2PA signer be reported as trusted."""
    prov = Provenance()
    if not data:
        return prov
    read_c2pa(data, sniff_image_type(data), prov, trust_anchors)
    read_embedded(data, prov)
    c2pa = prov.c2pa or {}
    if c2pa.get("declares_ai"):  # a C2PA claim of AI generation counts whether or not its signature verifies
        prov.declared_ai = True
    elif prov.declared_ai is None and c2pa.get("declares_capture"):
        prov.declared_ai = False
    return prov
