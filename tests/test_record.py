"""The one result record: the object, JSON, CSV, table, the API's schema and the web page agree."""

from __future__ import annotations

import csv
import io
import json
import re

from aligngemini.record import ROLES, BranchResult, Verdict, record_model, render_table
from aligngemini.serve.app import STATIC_DIR


def scored(verdict: str = "fake", p: float = 0.7) -> Verdict:
    return Verdict("a.jpg", p, verdict, {"pixel": BranchResult(0.2, False, 0.5),
                                         "semantic": BranchResult(0.8, True, 0.5)}, ["semantic"])  # fmt: skip


def test_every_role_is_present_whatever_happened() -> None:
    failed = Verdict.failed("bad.jpg", "corrupt or truncated image data")
    pixel_only = Verdict("p.jpg", 0.3, "real", {"pixel": BranchResult(0.3, False, 0.5)})
    for v in (failed, pixel_only, scored()):
        assert set(v.branches) == set(ROLES)
        assert set(v.to_dict()["branches"]) == set(ROLES)
    # the README's access pattern works on an unreadable input: nulls, not KeyError
    assert failed.branches["pixel"].p_fake is None and failed.branches["semantic"].fake is None
    assert failed.to_dict()["branches"]["semantic"] == {"p_fake": None, "fake": None}
    assert pixel_only.to_dict()["branches"]["semantic"] == {"p_fake": None, "fake": None}


def test_non_finite_scores_become_null_with_an_error() -> None:
    v = Verdict("x", float("nan"), "error", {"pixel": BranchResult(float("nan"), False, 0.5)})
    rec = v.to_dict()
    assert (
        rec["p_fake"] is None
        and rec["verdict"] is None
        and rec["error"] == "no branch could score this image"
    )
    assert rec["branches"]["pixel"] == {"p_fake": None, "fake": None}
    json.loads(v.to_json())  # strict JSON: no NaN


def test_error_is_set_exactly_when_verdict_is_null() -> None:
    for v in (scored(), scored("uncertain", 0.55), Verdict.failed("b", "why"), Verdict("c", 0.4, None)):
        rec = v.to_dict()
        assert (rec["verdict"] is None) == (rec["error"] is not None), rec


def test_csv_row_flattens_the_record() -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=Verdict.CSV_FIELDS)
    writer.writeheader()
    for v in (scored(), Verdict.failed("bad.png", "not a recognised image format")):
        writer.writerow(v.to_csv_row())
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["semantic_p_fake"] == "0.8" and rows[0]["fired"] == "semantic" and rows[0]["error"] == ""
    assert rows[1]["verdict"] == "" and rows[1]["pixel_p_fake"] == "" and "recognised" in rows[1]["error"]


def test_table_says_why_a_verdict_is_uncertain() -> None:
    table = render_table(
        [scored("uncertain", 0.55), scored(), Verdict.failed("bad.png", "empty file")], (0.4, 0.6)
    )
    lines = table.splitlines()
    assert lines[0].split() == list(Verdict.TABLE_HEADER)
    assert "fired: semantic; fused score inside the uncertain band [0.40, 0.60)" in lines[1]
    assert "uncertain band" not in lines[2] and "fired: semantic" in lines[2]
    assert lines[3].split()[:2] == ["bad.png", "error"] and "empty file" in lines[3]


def test_api_schema_validates_every_record_and_names_the_same_fields() -> None:
    model = record_model()
    for v in (
        scored(),
        Verdict.failed("b", "why"),
        Verdict("p.jpg", 0.3, "real", {"pixel": BranchResult(0.3, False)}),
    ):
        assert model.model_validate(v.to_dict()).model_dump() == v.to_dict()
    assert set(model.model_fields) == set(scored().to_dict())


def test_the_web_page_reads_only_fields_the_record_has() -> None:
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    record_keys = set(scored().to_dict())
    branch_keys = set(scored().to_dict()["branches"]["pixel"])
    used = set(re.findall(r"\brec\.(\w+)", js))
    used_branch = set(re.findall(r"\bres\.(\w+)", js))
    assert used and used_branch, "the page no longer reads records as rec.X / res.X; update this test"
    assert used <= record_keys, used - record_keys
    assert used_branch <= branch_keys, used_branch - branch_keys
