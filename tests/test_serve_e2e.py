"""End to end: ``aligngemini serve`` as a real process (models load after the port opens), and /v1/explain
answering with a bundle whose semantic branch is a (tiny, random) vision-language model."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from aligngemini.bundle import save_bundle
from aligngemini.detector import Detector
from aligngemini.serve.app import ServeSettings, create_app


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.slow
def test_the_serve_command_loads_in_the_background_and_answers(tiny_bundle_dir: Path) -> None:
    exe = shutil.which("aligngemini") or str(Path(sys.executable).parent / "aligngemini")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ALIGNGEMINI_SERVE_TOKEN", None)
    cmd = [exe, "serve", "--bundle", str(tiny_bundle_dir), "--port", "0", "--device", "cpu", "--max-batch", "4",
           "--max-images", "2", "--max-queue", "8", "--token", "tok"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 180
        lines = []
        while url is None:
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert any("models load in the background" in x for x in lines)
        auth = {"Authorization": "Bearer tok"}
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").status_code == 200
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline and proc.poll() is None, "never became ready"
                time.sleep(0.1)
            assert client.post("/v1/detect", content=image_bytes(0), headers={"content-type": "image/png"}
                               ).status_code == 401  # fmt: skip
            resp = client.post("/v1/detect", files=[("files", ("x.jpg", image_bytes(1, "JPEG"), "image/jpeg"))],
                               headers=auth)  # fmt: skip
            assert resp.status_code == 200, resp.text
            (rec,) = resp.json()["results"]
            expected = Detector.load(tiny_bundle_dir, device="cpu").predict(image_bytes(1, "JPEG"))[0]
            assert rec["path"] == "x.jpg" and rec["p_fake"] == pytest.approx(expected.p_fake, abs=1e-5)
            three = [("files", (f"{i}.png", image_bytes(i), "image/png")) for i in range(3)]
            assert client.post("/v1/detect", files=three, headers=auth).json()["error"]["limit"] == {
                "name": "max_images", "value": 2}  # fmt: skip
            assert client.get("/v1/info", headers=auth).json()["batching"]["max_batch"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, -signal.SIGINT, 130)


@pytest.mark.slow
def test_explain_answers_with_a_vision_language_branch(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    from tiny_vlm import build_tiny_qwen2_5_vl

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = build_tiny_qwen2_5_vl(tmp_path / "qwen")
        pixel = json.loads((tiny_bundle_dir / "config.json").read_text())["branches"]["pixel"]
        (tmp_path / "b").mkdir()
        shutil.copy(tiny_bundle_dir / pixel["weights"], tmp_path / "b" / pixel["weights"])
        semantic = {"family": "semantic-vlm", "model": str(model), "max_pixels": 112 * 112, "batch_size": 4,
                    "max_new_tokens": 6, "threshold": 0.5}  # fmt: skip
        config = {"name": "tiny-vlm", "branches": {"pixel": pixel, "semantic": semantic},
                  "fusion": {"rule": "or", "uncertain_band": [0.4, 0.6]}}  # fmt: skip
        save_bundle(tmp_path / "b", config, card="# tiny-vlm\n")
        det = Detector.load(tmp_path / "b", device="cpu")
        with TestClient(create_app(det, ServeSettings(max_wait_ms=1))) as c:
            info = c.get("/v1/info").json()
            assert info["explain"] == {"available": True, "reason": None}
            assert info["bundle"]["uncertain_band"] == [0.4, 0.6]
            sem = next(b for b in info["bundle"]["branches"] if b["role"] == "semantic")
            assert sem["can_explain"] and sem["sources"]["model"] == "local:qwen"  # its name, not the path
            assert str(tmp_path) not in json.dumps(info)
            resp = c.post("/v1/explain", files=[("file", ("q.png", image_bytes(3), "image/png"))])
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["path"] == "q.png" and body["bundle"] == det.bundle_id
            assert body["explanation"] == det.explain(image_bytes(3))  # greedy: the same words as the API
            two = [("file", (f"{i}.png", image_bytes(i), "image/png")) for i in range(2)]
            assert c.post("/v1/explain", files=two).json()["error"]["kind"] == "too_many_images"
            (rec,) = c.post("/v1/detect", files=[("files", ("q.png", image_bytes(3), "image/png"))]).json()[
                "results"
            ]
            assert rec["verdict"] in ("real", "fake", "uncertain")
    finally:
        torch.set_num_threads(old)
