"""The page in a real browser: Debian's chromium driven by playwright (never 'playwright install').

PIXELWISE_SCREENSHOT=path saves the final page there (docs/images/serve.png is made this way by
bench/gallery.py); PIXELWISE_SERVE_RUN=RUN serves that run instead of training a tiny one.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import ARGS, CHROMIUM, have_chromium, serving

if not have_chromium():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")

from pixelwise.data.digits import DigitsScenes  # noqa: E402
from pixelwise.data.io import write_image  # noqa: E402
from pixelwise.predict import Segmenter  # noqa: E402
from pixelwise.serve.app import create_app  # noqa: E402
from pixelwise.training import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def run(digits_folder, tmp_path_factory) -> Path:
    if os.environ.get("PIXELWISE_SERVE_RUN"):
        return Path(os.environ["PIXELWISE_SERVE_RUN"])
    out = tmp_path_factory.mktemp("serve") / "tiny"
    cfg = TrainConfig(
        data=str(digits_folder),
        out=str(out),
        epochs=1,
        model="unet_same",
        model_args={"depth": 2, "base_width": 8},
        batch_size=4,
        crop_size=40,
        optimizer="adamw",
        lr=1e-2,
        schedule="constant",
        hflip=False,
        overlays=1,
        device="cpu",
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def server(run):
    """(base URL, segmenter): uvicorn in a thread on a free loopback port."""
    seg = Segmenter.from_run(run, device="cpu")
    app = create_app(seg, info={"model": "served", "run": run.name})
    with serving(app) as url:
        yield url, seg


def _visible_overlay_pixels(page) -> int:
    return page.evaluate(
        """() => {
        const c = document.getElementById("overlay");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] === 255) n++;
        return n;
    }"""
    )


def test_upload_overlay_legend_toggle_download(server, tmp_path):
    url, seg = server
    scene = DigitsScenes("val", seed=3, num_images=1, min_size=96, max_size=128)[0]
    image_path = tmp_path / "scene.png"
    write_image(image_path, scene.image)
    h, w = scene.image.shape[:2]
    names = list(seg.classes.names)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800}, accept_downloads=True)
            external = []
            page.on(
                "request",
                lambda r: None if r.url.startswith((url, "data:", "blob:")) else external.append(r),
            )
            page.goto(url + "/")
            page.wait_for_function(
                f"document.querySelectorAll('#legend li').length == {len(names)}"
            )
            page.set_input_files("#file", str(image_path))
            page.wait_for_selector("#overlay[data-ready='1']", state="attached", timeout=60_000)

            assert page.locator("#legend li .name").all_inner_texts() == names
            shares = [
                float(re.fullmatch(r"([\d.]+)%", t).group(1))
                for t in page.locator("#legend li .share").all_inner_texts()
            ]
            assert sum(shares) == pytest.approx(100, abs=0.06 * len(names))
            assert page.evaluate("document.getElementById('overlay').width") == w
            assert _visible_overlay_pixels(page) == h * w

            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            assert download.suggested_filename == "scene_mask.png"
            mask_path = tmp_path / "downloaded.png"
            download.save_as(mask_path)
            with Image.open(mask_path) as img:
                assert img.format == "PNG" and img.mode == "P" and img.size == (w, h)
                mask = np.asarray(img)
            assert mask.max() < len(names)
            np.testing.assert_array_equal(mask, seg.predict(seg.read(image_path)))
            shown = [round(100 * float((mask == i).mean()), 1) for i in range(len(names))]
            assert shares == pytest.approx(shown, abs=0.051)

            # Hide the most frequent class: exactly its pixels vanish from the overlay.
            biggest = int(np.bincount(mask.ravel(), minlength=len(names)).argmax())
            page.uncheck(f"#class-{biggest}")
            assert _visible_overlay_pixels(page) == h * w - int((mask == biggest).sum())
            assert "hidden" in page.locator(f"#legend li[data-index='{biggest}']").get_attribute(
                "class"
            )
            page.locator("#opacity").fill("75")
            opacity = "getComputedStyle(document.getElementById('overlay')).opacity"
            assert page.evaluate(opacity) == "0.75"

            shot = Path(os.environ.get("PIXELWISE_SCREENSHOT") or tmp_path / "serve.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            assert not external, [r.url for r in external]
        finally:
            browser.close()


def test_error_message_for_a_text_file(server, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all\n")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "not an image" in page.inner_text("#status")
        finally:
            browser.close()
