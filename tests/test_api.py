"""The public API on tiny bundles built from the real branch families."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligngemini import Detector, Verdict
from aligngemini.fusion import fuse


def _img(seed: int, w: int = 80, h: int = 60) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_pixel_only_bundle_works_and_says_what_is_missing(tiny_pixel_bundle_dir: Path, caplog) -> None:
    with caplog.at_level("WARNING"):
        det = Detector.load(tiny_pixel_bundle_dir, device="cpu")
    assert det.missing_branches == ["semantic"]
    assert "no semantic branch" in caplog.text
    verdicts = det.predict([_img(0), _img(1)])
    assert all(isinstance(v, Verdict) for v in verdicts)
    for v in verdicts:
        rec = v.to_dict()
        assert rec["branches"]["semantic"] == {"p_fake": None, "fake": None}
        assert 0.0 <= rec["branches"]["pixel"]["p_fake"] <= 1.0
        assert rec["verdict"] in ("real", "fake")
        assert (rec["verdict"] == "fake") == rec["branches"]["pixel"]["fake"]


def test_all_input_kinds_agree(tiny_pixel_bundle_dir: Path, tmp_path: Path) -> None:
    det = Detector.load(tiny_pixel_bundle_dir, device="cpu")
    img = _img(3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    results = det.predict([str(path), path, img, buf.getvalue(), np.asarray(img)])
    scores = [r.p_fake for r in results]
    assert max(scores) - min(scores) < 1e-6
    assert results[0].path == str(path)
    assert det.predict(img)[0].p_fake == pytest.approx(scores[0])  # a single input, not a list


def test_batching_does_not_change_scores(tiny_pixel_bundle_dir: Path) -> None:
    det = Detector.load(tiny_pixel_bundle_dir, device="cpu")
    images = [_img(i, 60 + 7 * i, 50 + 5 * i) for i in range(5)]
    batched = [v.p_fake for v in det.predict(images, batch_size=4)]
    single = [det.predict(im)[0].p_fake for im in images]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert len(set(np.round(batched, 6))) > 1  # the model really looks at the pixels


def test_bad_inputs_become_errors_not_exceptions(tiny_pixel_bundle_dir: Path, tmp_path: Path) -> None:
    det = Detector.load(tiny_pixel_bundle_dir, device="cpu", max_pixels=100_000)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    verdicts = det.predict(
        [_img(0), str(tmp_path / "bad.jpg"), str(tmp_path / "nope.png"), _img(0, 400, 300)]
    )
    assert verdicts[0].error is None and verdicts[0].verdict in ("real", "fake")
    assert verdicts[1].error and verdicts[1].path.endswith("bad.jpg") and verdicts[1].p_fake is None
    assert verdicts[2].error == "no such file"
    assert "exceeds the limit" in verdicts[3].error


def test_two_branches_fuse_with_or_rule(tiny_bundle_dir: Path) -> None:
    det = Detector.load(tiny_bundle_dir, device="cpu")
    assert sorted(det.branches) == ["pixel", "semantic"]
    images = [_img(i) for i in range(6)]
    verdicts = det.predict(images)
    scores = {r: np.array([v.branches[r].p_fake for v in verdicts]) for r in ("pixel", "semantic")}
    expected = fuse(scores, det.thresholds, "or")
    assert [v.verdict for v in verdicts] == expected.verdicts
    for v in verdicts:
        fired = [r for r in ("pixel", "semantic") if v.branches[r].p_fake >= det.thresholds[r]]
        assert v.fired == fired
        assert (v.verdict == "fake") == bool(fired)


def test_only_and_explain_errors(tiny_bundle_dir: Path) -> None:
    det = Detector.load(tiny_bundle_dir, device="cpu", only=["semantic"])
    assert list(det.branches) == ["semantic"]
    with pytest.raises(NotImplementedError, match="cannot explain"):
        det.explain(_img(0))
    with pytest.raises(ValueError, match="has no branch"):
        Detector.load(tiny_bundle_dir, device="cpu", only=["colour"])


def test_compiled_detector_scores_like_the_eager_one(tiny_bundle_dir: Path, caplog) -> None:
    images = [_img(s, 70 + 9 * s, 50 + 7 * s) for s in range(3)]
    eager = Detector.load(tiny_bundle_dir, device="cpu").predict(images)
    det = Detector.load(tiny_bundle_dir, device="cpu", compile_mode="default")
    assert all(type(b.model if hasattr(b, "model") else b.tower.model).__name__ == "OptimizedModule"
               for b in det.branches.values())  # fmt: skip
    for batch in (3, 1):  # a second batch shape: recompiled, same scores
        compiled = det.predict(images, batch_size=batch)
        for a, b in zip(eager, compiled, strict=True):
            for role in ("pixel", "semantic"):
                assert a.to_dict()["branches"][role]["p_fake"] == pytest.approx(
                    b.to_dict()["branches"][role]["p_fake"], abs=1e-4
                )
            assert a.verdict == b.verdict
    with pytest.raises(ValueError, match="compile mode"):
        Detector.load(tiny_bundle_dir, device="cpu", compile_mode="fast")


def test_a_branch_without_a_compiled_path_stays_eager() -> None:
    from aligngemini.branches.base import compile_branch

    class Eager:  # e.g. the VLM family: no compile(mode) method
        pass

    assert compile_branch(Eager(), "reduce-overhead") is False  # type: ignore[arg-type]
