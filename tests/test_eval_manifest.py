"""Eval over JSONL manifests written by aligngemini.data.manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_eval_layouts import _counts, _fill

from aligngemini.eval import layouts as L


def test_jsonl_manifest_from_the_data_package(tmp_path: Path) -> None:
    from aligngemini.data.manifest import scan_folder, write_manifest

    root = tmp_path / "gen"
    _fill(root / "sdxl" / "val" / "ai", 2)
    _fill(root / "sdxl" / "val" / "nature", 2)
    _fill(root / "flux" / "val" / "ai", 3)
    _fill(root / "flux" / "val" / "nature", 1)
    manifest = write_manifest(scan_folder(root), tmp_path / "sets" / "gen.jsonl")
    assert L.detect_layout(manifest) == "manifest"
    es = L.read_data([manifest])
    assert _counts(es) == {"flux": (1, 3), "sdxl": (2, 2)}
    assert all(it.path.is_file() for it in es.items) and es.inputs[0]["benchmark"] == "gen"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(L.LayoutError, match="bad.jsonl:1"):
        L.read_data([bad])
