"""What an image file declares about its own origin, read from its original bytes: C2PA Content Credentials,
IPTC ``DigitalSourceType``, generator parameters in PNG text chunks or EXIF, and the ``Software`` /
``CreatorTool`` that wrote it.

It sits beside the verdict from pixels and never replaces it unless asked (``--provenance override``).
Nothing here touches the network: a C2PA manifest stored at a remote URL is reported, not fetched. Every
field is bounded and malformed metadata becomes a warning, never an exception.
"""

from __future__ import annotations

from aligngemini.provenance.model import (
    AI_SOURCE_TYPES,
    PROVENANCE_MODES,
    PROVENANCE_SCHEMA,
    Provenance,
)
from aligngemini.provenance.reader import read_provenance

__all__ = ["AI_SOURCE_TYPES", "PROVENANCE_MODES", "PROVENANCE_SCHEMA", "Provenance", "read_provenance"]
