"""aligngemini: a two-branch detector of AI-generated images (AlignGemini, arXiv 2512.06746)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Detector", "Verdict", "__version__"]


def __getattr__(name: str):  # lazy: `import aligngemini` must not pull in torch for the CLI's --help
    if name in ("Detector", "Verdict"):
        from aligngemini import detector

        return getattr(detector, name)
    raise AttributeError(name)
