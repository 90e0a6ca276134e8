"""Bundle round trip: save, load, archive, checksum mismatch, refusals."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aligngemini.bundle import BundleError, archive_bundle, load_bundle, save_bundle
from aligngemini.eval.calibrate import CALIBRATION_HEADING


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(tmp_path / "home"))


def _weights(tmp_path: Path, name: str = "w.safetensors") -> Path:
    path = tmp_path / name
    save_file({"head.weight": torch.randn(1, 8)}, str(path))
    return path


CONFIG = {
    "name": "tiny",
    "branches": {"pixel": {"family": "pixel-timm", "weights": "pixel.safetensors", "threshold": 0.4}},
    "fusion": {"rule": "or", "uncertain_band": None},
}


def test_round_trip_records_and_checks_checksums(tmp_path: Path) -> None:
    bundle = save_bundle(
        tmp_path / "b", CONFIG, files={"pixel.safetensors": _weights(tmp_path)}, card="# Tiny\n"
    )
    assert set(bundle.config["files"]) == {"pixel.safetensors"}
    again = load_bundle(tmp_path / "b")
    assert again.config == bundle.config
    assert again.card.startswith("# Tiny")
    assert again.thresholds() == {"pixel": 0.4}
    assert again.bundle_id == bundle.bundle_id

    # flip one byte of the weights: loading must fail and name the file
    wfile = tmp_path / "b" / "pixel.safetensors"
    data = bytearray(wfile.read_bytes())
    data[-1] ^= 0xFF
    wfile.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"pixel\.safetensors: sha256 mismatch"):
        load_bundle(tmp_path / "b")


def test_refuses_unrecorded_weights_and_pickles(tmp_path: Path) -> None:
    save_bundle(tmp_path / "b", CONFIG, files={"pixel.safetensors": _weights(tmp_path)})
    _weights(tmp_path / "b", "extra.safetensors")
    with pytest.raises(BundleError, match="no checksum"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "extra.safetensors").unlink()
    (tmp_path / "b" / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BundleError, match="pickle-format weights are refused"):
        load_bundle(tmp_path / "b")


def test_no_silent_overwrite_and_copy_with(tmp_path: Path) -> None:
    b = save_bundle(tmp_path / "b", CONFIG, files={"pixel.safetensors": _weights(tmp_path)})
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(tmp_path / "b", CONFIG, files={"pixel.safetensors": _weights(tmp_path)})
    c = b.copy_with(
        tmp_path / "c", {"branches": {"pixel": {"threshold": 0.7}}, "fusion": {"uncertain_band": [0.4, 0.6]}}
    )
    assert c.thresholds() == {"pixel": 0.7}
    assert c.config["branches"]["pixel"]["family"] == "pixel-timm"  # deep merge kept the rest
    assert load_bundle(tmp_path / "b").thresholds() == {"pixel": 0.4}  # the source is untouched
    with pytest.raises(BundleError, match="over its source"):
        b.copy_with(tmp_path / "b", {})


def test_archive_loads_like_a_folder(tmp_path: Path) -> None:
    b = save_bundle(tmp_path / "b", CONFIG, files={"pixel.safetensors": _weights(tmp_path)})
    archive = archive_bundle(b, tmp_path / "tiny.tar.gz")
    loaded = load_bundle(archive)
    assert loaded.config["files"] == b.config["files"]
    assert loaded.dir != b.dir


def test_hostile_archive_and_bad_configs(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "p.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tf:
        tf.add(payload, arcname="../../escape.txt")
    with pytest.raises((BundleError, tarfile.TarError)):
        load_bundle(evil)
    assert not (tmp_path / "escape.txt").exists()

    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not an aligngemini bundle"):
        load_bundle(tmp_path / "nb")
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle("definitely-not-registered")
    cfg = {**CONFIG, "branches": {"pixel": {**CONFIG["branches"]["pixel"]}}}
    bad = save_bundle(tmp_path / "x", cfg, files={"pixel.safetensors": _weights(tmp_path)})
    conf = json.loads((bad.dir / "config.json").read_text())
    conf["files"] = {"../outside.safetensors": "0" * 64}
    (bad.dir / "config.json").write_text(json.dumps(conf))
    with pytest.raises(BundleError, match="stay inside"):
        load_bundle(bad.dir)


def test_the_shipped_starter_card_is_the_docs_card_plus_its_calibration() -> None:
    """scripts/build_starter.sh assembles the starter from docs/starter-model-card.md and calibrate appends its
    section: an edit made to one copy only is lost at the next build or never published."""
    repo = Path(__file__).resolve().parents[1]
    shipped = (repo / "aligngemini" / "bundles" / "starter" / "MODEL_CARD.md").read_text(encoding="utf-8")
    body, sep, _ = shipped.partition(CALIBRATION_HEADING)
    assert sep, "the shipped starter card has no calibration section"
    docs = (repo / "docs" / "starter-model-card.md").read_text(encoding="utf-8")
    assert body.rstrip("\n") == docs.rstrip("\n")
