"""Provenance in every record: the Python API, detect's outputs, the REST API and the web page; and the
verdict from pixels changed only by ``--provenance override`` and only for a validly signed AI claim."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from provenance_files import A1111, c2pa_signed, jpeg, make_credentials, png, tamper

from aligngemini.cli import main
from aligngemini.detector import Detector
from aligngemini.record import Verdict, record_model
from aligngemini.serve.app import STATIC_DIR, ServeSettings, create_app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    creds = make_credentials()
    signed = c2pa_signed(jpeg(seed=1), creds)[0]
    root = tmp_path_factory.mktemp("prov")
    data = {"signed.jpg": signed, "tampered.jpg": tamper(signed), "a1111.png": png({"parameters": A1111}),
            "plain.jpg": jpeg(seed=2)}  # fmt: skip
    for name, blob in data.items():
        (root / name).write_bytes(blob)
    return {name: root / name for name in data}


def _by_name(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {Path(v.path).name: v for v in verdicts}


def test_report_shows_provenance_and_never_changes_the_verdict(files, tiny_bundle_dir: Path) -> None:
    paths = [str(p) for p in files.values()]
    off = _by_name(Detector.load(tiny_bundle_dir, device="cpu", provenance="off").predict(paths))
    report = _by_name(Detector.load(tiny_bundle_dir, device="cpu").predict(paths))
    for name in files:
        assert off[name].provenance is None and off[name].to_dict()["provenance"] is None
        assert report[name].verdict == off[name].verdict and report[name].fired == off[name].fired
        assert report[name].p_fake == pytest.approx(off[name].p_fake)
    assert report["signed.jpg"].provenance.signed_ai_claim
    assert (
        report["tampered.jpg"].provenance.declared_ai is True and not report["tampered.jpg"].provenance.signed
    )
    assert report["a1111.png"].provenance.declared_ai is True
    assert (
        report["plain.jpg"].provenance.declared_ai is None and report["plain.jpg"].provenance.evidence == []
    )


def test_override_acts_only_on_a_validly_signed_ai_claim(files, tiny_bundle_dir: Path) -> None:
    paths = [str(p) for p in files.values()]
    off = _by_name(Detector.load(tiny_bundle_dir, device="cpu", provenance="off").predict(paths))
    over = _by_name(Detector.load(tiny_bundle_dir, device="cpu", provenance="override").predict(paths))
    signed = over["signed.jpg"]
    assert signed.verdict == "fake" and signed.fired[-1] == "provenance"
    assert signed.fired[:-1] == off["signed.jpg"].fired and signed.p_fake == pytest.approx(
        off["signed.jpg"].p_fake
    )
    for name in (
        "tampered.jpg",
        "a1111.png",
        "plain.jpg",
    ):  # invalid signature, unsigned, silent: pixels decide
        assert over[name].verdict == off[name].verdict and "provenance" not in over[name].fired


def test_detect_writes_provenance_in_jsonl_csv_and_table(files, tiny_bundle_dir: Path, capsys) -> None:
    folder = str(files["signed.jpg"].parent)
    base = ["detect", folder, "--bundle", str(tiny_bundle_dir), "--device", "cpu", "-q"]
    assert main([*base, "--format", "jsonl", "--provenance", "override"]) == 0
    recs = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert recs["signed.jpg"]["verdict"] == "fake" and "provenance" in recs["signed.jpg"]["fired"]
    assert recs["signed.jpg"]["provenance"]["c2pa"]["issuer"] == "Example AI Lab"
    assert recs["plain.jpg"]["provenance"] == {"c2pa": None, "declared_ai": None, "signed": False,
                                               "evidence": [], "warnings": []}  # fmt: skip
    for name, rec in recs.items():
        record_model().model_validate(rec)
        assert (
            rec["sha256"] == hashlib.sha256(files[name].read_bytes()).hexdigest()
            and rec["duplicate_of"] is None
        )

    assert main([*base, "--format", "csv"]) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert (
        rows["signed.jpg"]["provenance_signed"] == "True"
        and rows["signed.jpg"]["provenance_declared_ai"] == "True"
    )
    assert (
        rows["a1111.png"]["provenance_signed"] == "False"
        and "Stable Diffusion" in rows["a1111.png"]["provenance_evidence"]
    )
    assert rows["plain.jpg"]["provenance_declared_ai"] == ""

    assert main([*base, "--format", "table"]) == 0
    table = {line.split()[0].rsplit("/", 1)[-1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "file declares AI (signed C2PA: Example Image Model 3.1)" in table["signed.jpg"]
    assert "file declares AI (C2PA, signature not valid: Example Image Model 3.1)" in table["tampered.jpg"]
    assert "file declares AI (unsigned: PNG text 'parameters': Stable Diffusion" in table["a1111.png"]
    assert "declares" not in table["plain.jpg"]


def test_detect_refuses_a_trust_anchor_file_that_is_not_pem(
    files, tiny_bundle_dir: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "anchors.pem"
    bad.write_text("not a certificate\n")
    code = main(
        ["detect", str(files["plain.jpg"]), "--bundle", str(tiny_bundle_dir), "--trust-anchors", str(bad)]
    )
    assert code == 2 and f"--trust-anchors {bad}: no PEM certificate" in capsys.readouterr().err


def test_serve_records_carry_provenance(files, tiny_bundle_dir: Path) -> None:
    det = Detector.load(tiny_bundle_dir, device="cpu", provenance="override")
    with TestClient(create_app(det, ServeSettings(max_wait_ms=2))) as client:
        upload = [
            ("files", (name, files[name].read_bytes(), "image/jpeg")) for name in ("signed.jpg", "plain.jpg")
        ]
        resp = client.post("/v1/detect", files=upload)
    assert resp.status_code == 200, resp.text
    signed, plain = resp.json()["results"]
    assert (
        signed["provenance"]["signed"]
        and signed["provenance"]["c2pa"]["claim_generator"] == "Example Image Model 3.1"
    )
    assert signed["verdict"] == "fake" and signed["fired"][-1] == "provenance"
    assert plain["provenance"]["declared_ai"] is None


def test_the_web_page_reads_only_provenance_fields_the_record_has(files, tiny_bundle_dir: Path) -> None:
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    rec = Detector.load(tiny_bundle_dir, device="cpu").predict([str(files["signed.jpg"])])[0].to_dict()
    used_prov, used_c2pa = set(re.findall(r"\bprov\.(\w+)", js)), set(re.findall(r"\bc\.(\w+)", js))
    assert used_prov and used_c2pa, "the page no longer reads provenance as prov.X / c.X; update this test"
    assert used_prov <= set(rec["provenance"]), used_prov - set(rec["provenance"])
    assert used_c2pa <= set(rec["provenance"]["c2pa"]), used_c2pa - set(rec["provenance"]["c2pa"])
