"""The README's Python example runs as written, on the shipped starter bundle, including an unreadable input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs_as_written(
    starter_env: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    (block,) = [b for b in python_blocks(README.read_text(encoding="utf-8")) if "Detector.load" in b]
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    # the names the example leaves to the reader: a PIL image, raw bytes (here: not an image) and an array
    namespace = {
        "pil_image": photo.convert("RGB"),
        "raw_bytes": b"these bytes are not an image",
        "numpy_array": np.asarray(photo),
    }
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4, lines
    for line in (lines[0], lines[1], lines[3]):
        assert line.split()[0] in ("real", "fake", "uncertain"), line
    # the unreadable input prints its error, with None scores for every branch
    assert lines[2].startswith("None None None None []") and "not a recognised image format" in lines[2]


def test_every_python_block_in_the_readme_compiles() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks
    for block in blocks:
        compile(block, str(README), "exec")


def test_every_json_record_in_the_readme_fits_the_record_schema() -> None:
    from aligngemini.record import record_model

    blocks = re.findall(r"```json\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    for block in blocks:
        record = json.loads(block)
        assert record_model().model_validate(record).model_dump() == record
