"""A screenshot of the web page with results on it, for the README: docs/screenshot.png.

Same set-up as tests/test_serve_browser.py: the app under uvicorn on 127.0.0.1, Debian's chromium driven
headless by Playwright. Three scikit-image sample photos are uploaded through the page's file input. The starter
bundle is used when it loads; otherwise the tiny random test bundle with an uncertain band added, named
"tiny-random" on the page so that nobody mistakes its verdicts for a detector's.

    python benchmarks/serve_screenshot.py --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def sample_photos(folder: Path) -> list[Path]:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path, "JPEG", quality=92)
        out.append(path)
    return out


def load_detector(name: str, workdir: Path):
    import torch

    from aligngemini.bundle import BundleError
    from aligngemini.detector import Detector
    from aligngemini.resolve import ResolveError

    torch.set_num_threads(1)
    try:
        return Detector.load(name, device="cpu")
    except (BundleError, ResolveError, ValueError) as exc:
        print(f"serve_screenshot: {name!r} is not available ({exc}); using the tiny random test bundle",
              file=sys.stderr)  # fmt: skip
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_bundles import make_tiny_bundle

        tiny = make_tiny_bundle(workdir / "tiny")
        demo = tiny.copy_with(workdir / "tiny-random", {"name": "tiny-random",
                                                        "fusion": {"uncertain_band": [0.35, 0.65]}})  # fmt: skip
        return Detector.load(demo, device="cpu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="starter")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    p.add_argument("--width", type=int, default=1100)
    args = p.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"serve_screenshot: {CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    from aligngemini.cli.serve import background_server
    from aligngemini.serve.app import ServeSettings, create_app

    with tempfile.TemporaryDirectory(prefix="serve_screenshot_") as tmp:
        det = load_detector(args.bundle, Path(tmp))
        photos = sample_photos(Path(tmp))
        with background_server(create_app(det, ServeSettings())) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
            page.goto(url + "/")
            expect(page.locator("#bundle-line")).to_have_text(re.compile(r"^Bundle "), timeout=60_000)
            page.set_input_files("#file-input", [str(x) for x in photos])
            expect(page.locator(".result[data-state=done]")).to_have_count(len(photos), timeout=120_000)
            verdicts = page.locator(".verdict").all_text_contents()
            page.locator("main").evaluate("m => m.scrollIntoView()")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(f"serve_screenshot: wrote {args.out} ({det.bundle.name}: {verdicts})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
