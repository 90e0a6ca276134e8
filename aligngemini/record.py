"""One image's result, defined once: the ``Verdict`` and every form it is written in.

The Python object, ``detect``'s JSON/JSONL/CSV/table output and the REST API's records all come from
here, so a field added to the record is added in one place. ``SCHEMA_TEXT`` below is the schema as the
CLI's help shows it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aligngemini.provenance.model import PROVENANCE_SCHEMA, Provenance

ROLES = ("pixel", "semantic")
VERDICTS = ("real", "fake", "uncertain")
SCHEMA_TEXT = f"""\
{{"path": str, "p_fake": float | null, "verdict": "real" | "fake" | "uncertain" | null,
 "branches": {{"pixel": {{"p_fake": float | null, "fake": bool | null}},
              "semantic": {{"p_fake": float | null, "fake": bool | null}}}},
 "fired": [branch | "provenance", ...], "error": str | null,
 "sha256": str | null, "duplicate_of": str | null, "provenance": {{...}} | null}}
Every branch is always present, with nulls where the bundle lacks it or the image could not
be scored; "error" says why exactly when "verdict" is null. "sha256": of the input's original bytes
(null when they could not be read). "duplicate_of": for a byte-identical copy of an input already
scored (scan), the first such input's path; its scores are that input's.
{PROVENANCE_SCHEMA}"""


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class BranchResult:
    """One branch's score for one image; all None when the branch is missing or could not score it."""

    p_fake: float | None = None
    fake: bool | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        p = _finite(self.p_fake)
        return {"p_fake": p, "fake": None if p is None else self.fake}


@dataclass
class Verdict:
    """One image's result. ``verdict`` is "real", "fake" or "uncertain"; None exactly when ``error`` says why
    the image could not be scored. ``branches`` holds every role in ``ROLES``."""

    path: str | None
    p_fake: float | None = None
    verdict: str | None = None
    branches: dict[str, BranchResult] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)
    error: str | None = None
    provenance: Provenance | None = None  # what the file declares; None when not read
    sha256: str | None = None  # of the original bytes
    duplicate_of: str | None = None  # the first input with the same bytes, when this one was not scored anew

    CSV_FIELDS: ClassVar[tuple[str, ...]] = (
        "path", "verdict", "p_fake",
        *(f"{role}_{key}" for role in ROLES for key in ("p_fake", "fake")),
        "fired", "error", "sha256", "duplicate_of",
        "provenance_declared_ai", "provenance_signed", "provenance_evidence",
    )  # fmt: skip
    TABLE_HEADER: ClassVar[tuple[str, ...]] = ("path", "verdict", "p_fake", *ROLES, "note")

    def __post_init__(self) -> None:
        for role in ROLES:
            self.branches.setdefault(role, BranchResult())
        if self.error is None and (_finite(self.p_fake) is None or self.verdict not in VERDICTS):
            self.error = "no branch could score this image"
        if self.error is not None:
            self.p_fake, self.verdict, self.fired = None, None, []

    @classmethod
    def failed(cls, path: str | None, reason: str) -> Verdict:
        """The record of an input that could not be scored, and why."""
        return cls(path, error=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "p_fake": _finite(self.p_fake),
            "verdict": self.verdict,
            "branches": {role: res.to_dict() for role, res in self.branches.items()},
            "fired": list(self.fired),
            "error": self.error,
            "sha256": self.sha256,
            "duplicate_of": self.duplicate_of,
            "provenance": self.provenance.to_dict() if self.provenance is not None else None,
        }

    def to_json(self) -> str:
        """One JSONL line, without the newline."""
        return json.dumps(self.to_dict(), allow_nan=False)

    def to_csv_row(self) -> dict[str, Any]:
        return csv_row(self.to_dict())

    def to_table_row(self, uncertain_band: tuple[float, float] | None = None) -> list[str]:
        """Cells under ``TABLE_HEADER``. The note says why: the error, which branches fired, and for an
        uncertain verdict that the fused score fell inside the band."""
        if self.error is not None:
            note = self.error
        else:
            parts = [("fired: " + ",".join(self.fired)) if self.fired else "no branch fired"]
            if self.verdict == "uncertain":
                band = f" [{uncertain_band[0]:.2f}, {uncertain_band[1]:.2f})" if uncertain_band else ""
                parts.append(f"fused score inside the uncertain band{band}")
            if self.provenance is not None and self.provenance.summary():
                parts.append(self.provenance.summary())
            note = "; ".join(parts)
        scores = [_fmt(self.branches[role].p_fake) for role in ROLES]
        return [self.path or "", self.verdict or "error", _fmt(self.p_fake), *scores, note]


def csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A record (``Verdict.to_dict()``, or one read back from a scan's store) flattened to ``CSV_FIELDS``."""
    row = {key: rec.get(key) for key in ("path", "verdict", "p_fake", "error", "sha256", "duplicate_of")}
    for role in ROLES:
        branch = (rec.get("branches") or {}).get(role) or {}
        row[f"{role}_p_fake"] = branch.get("p_fake")
        row[f"{role}_fake"] = branch.get("fake")
    row["fired"] = ";".join(rec.get("fired") or [])
    prov = rec.get("provenance")
    row["provenance_declared_ai"] = None if prov is None else prov.get("declared_ai")
    row["provenance_signed"] = None if prov is None else prov.get("signed")
    row["provenance_evidence"] = None if prov is None else " | ".join(prov.get("evidence") or [])
    return {key: row[key] for key in Verdict.CSV_FIELDS}


@functools.cache
def record_model() -> type:
    """The record as a pydantic model, for the REST API's schema and response validation (built on first
    use so that the CLI does not import pydantic for ``--help``)."""
    from typing import Literal

    from pydantic import BaseModel, Field, create_model

    class BranchScore(BaseModel):
        p_fake: float | None = Field(description="this branch's P(fake); null when it did not score")
        fake: bool | None = Field(description="p_fake reached this branch's threshold")

    branches = create_model(
        "Branches", **{role: (BranchScore, Field(description=f"the {role} branch")) for role in ROLES}
    )
    return create_model(
        "Record",
        __doc__="One image's result, in the same schema as `aligngemini detect --format jsonl`.",
        path=(str | None, Field(description="the input's name (an upload's file name, never a server path)")),
        p_fake=(float | None, Field(description="fused P(fake); null when the image could not be scored")),
        verdict=(Literal[VERDICTS] | None, Field(description="null exactly when error is set")),
        branches=(branches, Field(description="every branch; nulls where it is missing or did not score")),
        fired=(list[str], Field(description="branches whose score reached their threshold, and \"provenance\" "
                                            "when --provenance override made the verdict")),
        error=(str | None, Field(description="why this image could not be scored, else null")),
        sha256=(str | None, Field(description="sha256 of the original bytes; null when they could not be read")),
        duplicate_of=(str | None, Field(description="the first input with the same bytes, whose scores these are "
                                                    "(aligngemini scan); else null")),
        provenance=(_provenance_model() | None,
                    Field(description="what the file declares about its origin; null when not read")),
    )  # fmt: skip


def _provenance_model() -> type:
    from pydantic import BaseModel, Field

    class C2paAction(BaseModel):
        action: str
        digital_source_type: str | None
        software_agent: str | None

    class C2paSummary(BaseModel):
        claim_generator: str | None = None
        title: str | None = None
        issuer: str | None = Field(None, description="the signing certificate's organisation")
        signer: str | None = Field(None, description="the signing certificate's common name")
        signed_at: str | None = None
        actions: list[C2paAction] = Field([], description="the active manifest's actions")
        source_types: list[str] = Field([], description="IPTC digital source types named in any manifest")
        declares_ai: bool = False
        declares_capture: bool = False
        manifests: int = 0
        validation_state: str | None = Field(None, description="the SDK's: Invalid, Valid or Trusted")
        signature_valid: bool = Field(False, description="signature and content hashes verify")
        trusted: bool = Field(False, description="the signer chains to a trust anchor the server was given")
        failures: list[str] = Field([], description="C2PA validation failure codes")
        remote_url: str | None = Field(None, description="a remote manifest's URL (never fetched)")

    class ProvenanceRecord(BaseModel):
        c2pa: C2paSummary | None
        declared_ai: bool | None = Field(description="true: the file declares AI generation; false: a capture; "
                                         "null: it says nothing")  # fmt: skip
        signed: bool
        evidence: list[str]
        warnings: list[str]

    return ProvenanceRecord


def _fmt(p: float | None) -> str:
    return "-" if _finite(p) is None else f"{p:.3f}"


def render_table(verdicts: list[Verdict], uncertain_band: tuple[float, float] | None = None) -> str:
    """A fixed-width text table, long paths shortened from the left."""
    rows = [list(Verdict.TABLE_HEADER)] + [v.to_table_row(uncertain_band) for v in verdicts]
    widths = [min(max(len(r[i]) for r in rows), 60 if i == 0 else 200) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [(c if len(c) <= widths[i] else "..." + c[-(widths[i] - 3) :]).ljust(widths[i])
                 for i, c in enumerate(r)]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
