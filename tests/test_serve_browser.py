"""The web page in a real browser: Debian's chromium, headless, driven by Playwright, against the app under a
real uvicorn server on 127.0.0.1. The page's verdicts must equal the API's for the same bytes.

Needs /usr/bin/chromium (``apt-get install chromium``; scripts/setup.sh installs it). Without it these tests
fail, on purpose: a browser test that skips itself proves nothing."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from aligngemini.cli.serve import background_server
from aligngemini.detector import Detector
from aligngemini.serve.app import ServeSettings, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_MS = 90_000


def image_file(folder: Path, name: str, seed: int, fmt: str, size: tuple[int, int] = (96, 72)) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], axis=-1)
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    path = folder / name
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
                    "(apt-get install chromium; scripts/setup.sh installs it)")  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def det(tiny_bundle_dir: Path) -> Detector:
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield Detector.load(tiny_bundle_dir, device="cpu")
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def server(det: Detector):
    with background_server(create_app(det, ServeSettings(max_wait_ms=5))) as url:
        yield url


class Page:
    """A fresh page that records console errors and every URL it requested."""

    def __init__(self, browser, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1100, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        # Playwright turns on file-chooser interception when the first listener arrives, asynchronously; a listener
        # from the start means a picker opened later is always caught rather than racing that switch.
        self.page.on("filechooser", lambda chooser: None)
        self.page.goto(url + "/")
        self.page.set_default_timeout(WAIT_MS)

    # Waits go through locators: the page's Content-Security-Policy forbids the string evaluation that
    # wait_for_function would need, and the tests keep that policy on.
    def wait_info(self) -> None:
        expect(self.page.locator("#bundle-line")).to_have_text(re.compile(r"^Bundle "), timeout=WAIT_MS)

    def wait_cards(self, n: int) -> None:
        expect(self.page.locator(".result:not([data-state=pending])")).to_have_count(n, timeout=WAIT_MS)


def api_record(url: str, path: Path) -> dict:
    resp = httpx.post(url + "/v1/detect", files=[("files", (path.name, path.read_bytes()))], timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"][0]


def test_the_page_shows_the_same_verdict_as_the_api(browser, server: str, tmp_path: Path) -> None:
    paths = [image_file(tmp_path, "street.png", 1, "PNG"), image_file(tmp_path, "portrait.jpg", 2, "JPEG")]
    p = Page(browser, server)
    page = p.page
    p.wait_info()
    assert "pixel ≥ 0.500" in page.text_content("#bundle-line") and "no uncertain band" in page.text_content(
        "#bundle-line"
    )
    page.set_input_files("#file-input", [str(x) for x in paths])
    p.wait_cards(2)
    info = httpx.get(server + "/v1/info").json()
    cards = page.locator(".result")
    for i, path in enumerate(paths):
        rec = api_record(server, path)
        card = cards.nth(i)
        assert card.locator(".name").text_content() == path.name
        assert card.get_attribute("data-state") == "done"
        verdict = card.locator(".verdict")
        assert verdict.get_attribute("data-verdict") == rec["verdict"]
        assert verdict.text_content() == f"{rec['verdict'].capitalize()} · P(fake) {rec['p_fake']:.3f}"
        values = card.locator(".meter-value").all_text_contents()
        labels = card.locator(".meter-label").all_text_contents()
        assert labels == ["fused", "pixel", "semantic"]
        assert values == [f"{rec['p_fake']:.3f}"] + [
            f"{rec['branches'][r]['p_fake']:.3f}" for r in labels[1:]
        ]
        ticks = card.locator(".bar .tick")
        assert ticks.count() == 3 and ticks.nth(1).get_attribute("title") == "threshold 0.500"
        fired = card.locator(".fired").text_content()
        assert fired == ("Fired: " + ", ".join(rec["fired"]) if rec["fired"] else "No branch fired.")
        assert card.locator(".thumb").get_attribute("src").startswith("blob:")  # kept in page memory
        btn = card.locator("button.explain")
        assert btn.get_attribute("aria-disabled") == "true"
        assert btn.get_attribute("title") == info["explain"]["reason"]
    assert page.text_content("#status") == "2 of 2 image(s) checked."
    assert not p.errors, p.errors
    assert all(u.startswith((server, "blob:", "data:")) for u in p.requests), p.requests  # nothing external
    page.close()


def test_keyboard_alone_opens_the_picker_and_gets_a_verdict(browser, server: str, tmp_path: Path) -> None:
    path = image_file(tmp_path, "keys.webp", 3, "WEBP")
    p = Page(browser, server)
    page = p.page
    p.wait_info()
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    assert page.evaluate("document.activeElement.tagName") == "BUTTON"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # a visible focus style
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    chooser.value.set_files(str(path))
    p.wait_cards(1)
    rec = api_record(server, path)
    assert page.locator(".verdict").get_attribute("data-verdict") == rec["verdict"]
    page.keyboard.press("Tab")  # on from the drop zone: the results' controls are reachable too
    assert page.evaluate("document.activeElement.id") == "clear"
    page.keyboard.press("Tab")
    focused = page.evaluate("[document.activeElement.className, document.activeElement.title]")
    assert focused[0] == "btn explain" and "cannot explain" in focused[1]  # its reason is readable on focus
    page.close()


def test_dropped_files_and_refused_ones(browser, server: str, tmp_path: Path) -> None:
    good = image_file(tmp_path, "dropped.png", 4, "PNG")
    p = Page(browser, server)
    page = p.page
    p.wait_info()
    payload = base64.b64encode(good.read_bytes()).decode()
    page.evaluate(
        """([data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            dt.items.add(new File(["just text"], "notes.png", { type: "image/png" }));
            const drop = document.querySelector("#drop");
            drop.dispatchEvent(new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: dt }));
            drop.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: dt }));
        }""",
        [payload],
    )
    p.wait_cards(2)
    cards = page.locator(".result")
    assert (
        cards.nth(0).locator(".verdict").get_attribute("data-verdict") == api_record(server, good)["verdict"]
    )
    bad = cards.nth(1)
    assert bad.get_attribute("data-state") == "error"
    assert "not a supported image" in bad.locator(".error-text").text_content()
    page.click("#clear")
    assert cards.count() == 0
    page.close()


def test_a_token_server_asks_for_the_token_first(browser, det: Detector, tmp_path: Path) -> None:
    path = image_file(tmp_path, "t.png", 5, "PNG")
    with background_server(create_app(det, ServeSettings(token="page-token"))) as url:
        p = Page(browser, url)
        page = p.page
        page.wait_for_selector("#auth:not([hidden])")
        page.fill("#token", "wrong")
        page.click("#auth-form button")
        expect(page.locator("#auth-msg")).to_contain_text("not accepted", timeout=WAIT_MS)
        page.fill("#token", "page-token")
        page.keyboard.press("Enter")
        p.wait_info()
        assert page.is_hidden("#auth")
        page.set_input_files("#file-input", str(path))
        p.wait_cards(1)
        rec = httpx.post(url + "/v1/detect", files=[("files", (path.name, path.read_bytes()))],
                         headers={"Authorization": "Bearer page-token"}).json()["results"][0]  # fmt: skip
        assert page.locator(".verdict").get_attribute("data-verdict") == rec["verdict"]
        page.close()


def test_the_uncertain_band_is_drawn_on_the_fused_bar(browser, det: Detector, tmp_path: Path) -> None:
    """A bundle copy with a calibrated band: the page shades it and names it."""
    banded = Detector.load(det.bundle.copy_with(tmp_path / "banded", {"fusion": {"uncertain_band": [0.3, 0.7]}}),
                           device="cpu")  # fmt: skip
    path = image_file(tmp_path, "b.png", 6, "PNG")
    with background_server(create_app(banded)) as url:
        p = Page(browser, url)
        page = p.page
        p.wait_info()
        assert "uncertain band 0.300–0.700" in page.text_content("#bundle-line")
        page.set_input_files("#file-input", str(path))
        p.wait_cards(1)
        band = page.locator(".result .bar .band")
        assert band.count() == 1  # on the fused bar only
        assert band.evaluate("e => [e.style.left, e.style.width]") == ["30%", "40%"]
        rec = api_record(url, path)
        assert page.locator(".verdict").get_attribute("data-verdict") == rec["verdict"]
        page.close()


def test_each_verdict_shows_what_the_file_declares(browser, server: str, tmp_path: Path) -> None:
    from provenance_files import A1111, c2pa_signed, make_credentials, png

    signed = tmp_path / "signed.jpg"
    signed.write_bytes(
        c2pa_signed(image_file(tmp_path, "src.jpg", 3, "JPEG").read_bytes(), make_credentials())[0]
    )
    params = tmp_path / "params.png"
    params.write_bytes(png({"parameters": A1111}, seed=4))
    plain = image_file(tmp_path, "plain.png", 5, "PNG")
    p = Page(browser, server)
    p.wait_info()
    p.page.set_input_files("#file-input", [str(signed), str(params), str(plain)])
    p.wait_cards(3)
    lines = p.page.locator(".result .provenance")
    assert lines.nth(0).text_content() == ("Provenance: The file declares AI generation · C2PA from Example Image "
                                           "Model 3.1, issued by Example AI Lab (signed, issuer not in a trust list)")  # fmt: skip
    assert (
        lines.nth(1)
        .text_content()
        .startswith(
            "Provenance: The file declares AI generation · unsigned · PNG text 'parameters': Stable Diffusion web UI"
        )
    )
    assert lines.nth(2).is_hidden()  # a file that says nothing shows nothing: silence is not evidence
    assert not p.errors, p.errors
    p.page.close()
