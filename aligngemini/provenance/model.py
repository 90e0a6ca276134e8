"""The provenance record: one schema for the Python object, every output format and the REST API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROVENANCE_MODES = ("report", "override", "off")

# IPTC digital source types (the last segment of http://cv.iptc.org/newscodes/digitalsourcetype/...). A file
# that names one of AI_SOURCE_TYPES declares AI generation; one of CAPTURE_SOURCE_TYPES declares the opposite.
# Others (e.g. algorithmicMedia: made by an algorithm without training data) declare neither.
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
CAPTURE_SOURCE_TYPES = frozenset(
    {"digitalCapture", "negativeFilm", "positiveFilm", "print", "minorHumanEdits", "humanEdits",
     "compositeCapture", "digitalCreation"}
)  # fmt: skip

MAX_TEXT = 200  # characters kept of any one string read from a file
MAX_ITEMS = 12  # evidence lines, warnings, actions, failure codes

PROVENANCE_SCHEMA = """\
"provenance": {"c2pa": {...} | null, "declared_ai": true | false | null, "signed": bool,
               "evidence": [str, ...], "warnings": [str, ...]} | null
"declared_ai" is true only for an explicit declaration (a C2PA claim of AI generation, valid or not;
an IPTC AI source type; generator parameters), false for an explicit capture declaration, null when
the file says nothing: missing metadata is never evidence. "signed": a C2PA manifest whose signature
and content hashes verify. null when provenance was not read (--provenance off, or an unreadable file)."""


def clip(value: Any, limit: int = MAX_TEXT) -> str:
    """A printable, bounded string of anything read from a file."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 2]).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def source_type_code(value: Any) -> str | None:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> ``trainedAlgorithmicMedia``."""
    if not isinstance(value, str) or not value.strip():
        return None
    return clip(value.strip().rstrip("/").rsplit("/", 1)[-1], 80)


@dataclass
class Provenance:
    """What one file declares about its origin. ``c2pa`` summarises its Content Credentials (None when it has
    none); ``evidence`` is one short line per finding; ``warnings`` name metadata that could not be read."""

    c2pa: dict[str, Any] | None = None
    declared_ai: bool | None = None
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def signed(self) -> bool:
        return bool(self.c2pa and self.c2pa.get("signature_valid"))

    @property
    def signed_ai_claim(self) -> bool:
        """A C2PA manifest that declares AI generation and whose signature verifies: what ``override`` acts on."""
        return self.signed and bool(self.c2pa and self.c2pa.get("declares_ai"))

    def add_evidence(self, line: str) -> None:
        if len(self.evidence) < MAX_ITEMS:
            self.evidence.append(clip(line))

    def warn(self, line: str) -> None:
        if len(self.warnings) < MAX_ITEMS:
            self.warnings.append(clip(line))

    def to_dict(self) -> dict[str, Any]:
        return {
            "c2pa": self.c2pa,
            "declared_ai": self.declared_ai,
            "signed": self.signed,
            "evidence": list(self.evidence),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        """The inverse of ``to_dict`` (``signed`` follows from ``c2pa``)."""
        return cls(
            d.get("c2pa"), d.get("declared_ai"), list(d.get("evidence") or []), list(d.get("warnings") or [])
        )

    def summary(self) -> str:
        """A short phrase for a table row: what the file declares, how, and by which tool."""
        if self.declared_ai is True:
            head = "file declares AI"
        elif self.declared_ai is False:
            head = "file declares a capture"
        elif self.evidence:
            head = "file metadata"
        else:
            return ""
        if self.c2pa and not self.c2pa.get("remote_url"):
            how = "signed C2PA" if self.signed else "C2PA, signature not valid"
            return f"{head} ({how}: {clip(self.c2pa.get('claim_generator') or 'unnamed tool', 40)})"
        return f"{head} (unsigned: {clip(self.evidence[0], 60)})" if self.evidence else f"{head} (unsigned)"
