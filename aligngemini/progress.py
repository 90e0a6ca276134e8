"""Progress bars of the libraries we load models with, switched off when a command is asked to be quiet."""

from __future__ import annotations

import os


def silence_library_bars() -> None:
    """No tqdm bars from transformers (weight loading, shard writing), diffusers or huggingface_hub, for
    the rest of this process. Our own bars take their ``disable`` from the command's ``--quiet``."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        import diffusers
    except ImportError:  # pragma: no cover - a dependency, but keep quiet mode working without it
        return
    diffusers.utils.logging.disable_progress_bar()
