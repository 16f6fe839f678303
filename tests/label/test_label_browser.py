"""The labeling page in a real browser: Debian's chromium driven by playwright (never
'playwright install'). Strokes drawn with mouse events are saved exactly (the page's preview and
the server's mask agree pixel for pixel), undo, reload, two tabs, the live prediction, "next"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.browser import ARGS, CHROMIUM, have_chromium, serving

if not have_chromium():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")

from pixelwise.data.io import read_mask, write_image  # noqa: E402
from pixelwise.label.app import create_label_app  # noqa: E402
from pixelwise.label.project import ERASE, stroke_footprint  # noqa: E402
from pixelwise.label.trainer import TrainerOptions  # noqa: E402

H, W = 96, 128


def scenes(folder: Path, n: int = 4) -> Path:
    """Dark disc on a bright background, noisy."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        cy, cx = 30 + 10 * i, 40 + 12 * i
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 22**2
        img = np.where(disc, 60, 190) + rng.integers(-25, 25, (H, W))
        rgb = np.stack([img, img * 0.9, img * 0.8], -1).clip(0, 255).astype(np.uint8)
        write_image(folder / f"scene{i}.png", rgb)
    return folder


@pytest.fixture
def server(tmp_path):
    """(base URL, project folder, session): uvicorn in a thread, the trainer running."""
    images = scenes(tmp_path / "in")
    options = TrainerOptions(
        model_args={"depth": 2, "base_width": 8},
        crop=48,
        batch_size=4,
        publish_every=1.0,
        score_seconds=0.5,
        threads=1,
        device="cpu",
        lr=5e-3,
    )
    app = create_label_app(images, "background,blob", tmp_path / "proj", options=options)
    try:
        with serving(app, lifespan="on", stop_seconds=30) as url:
            yield url, tmp_path / "proj", app.state.label
    finally:
        app.state.label.close()


def draw(page, points, key=None):
    """Press ``key`` (a class digit) then drag the mouse through image pixel ``points``."""
    if key:
        page.keyboard.press(key)
    box = page.locator("#canvas").bounding_box()
    screen = [page.evaluate(f"window.pixelwiseLabel.toScreen({x}, {y})") for x, y in points]
    page.mouse.move(box["x"] + screen[0][0], box["y"] + screen[0][1])
    page.mouse.down()
    for sx, sy in screen[1:]:
        page.mouse.move(box["x"] + sx, box["y"] + sy, steps=4)
    page.mouse.up()


def page_labels(page) -> np.ndarray:
    data = page.evaluate("Array.from(window.pixelwiseLabel.state.cur.labels)")
    return np.asarray(data, np.uint8).reshape(H, W)


def wait_saved(page, version: int) -> None:
    page.wait_for_function(
        f"document.getElementById('canvas').dataset.pending === '0' && "
        f"Number(document.getElementById('canvas').dataset.version) >= {version}",
        timeout=30_000,
    )


def test_draw_save_undo_reload_predict_next(server, tmp_path):
    url, project, session = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            external = []
            page.on("request", lambda r: None if r.url.startswith(url) else external.append(r.url))
            page.goto(url + "/")
            page.wait_for_selector("#canvas[data-image='scene0'][data-version='0']", timeout=30_000)
            assert page.locator("#images li").count() == 4
            assert "0 labelled" in page.inner_text("#counts")

            # the page's footprint is the server's, pixel for pixel
            rng = np.random.default_rng(5)
            for _ in range(20):
                n = int(rng.integers(1, 5))
                pts = [tuple(np.round(rng.uniform(-5, 130, 2), 2).tolist()) for _ in range(n)]
                r = float(np.round(rng.uniform(0.5, 9), 2))
                js = page.evaluate(
                    "([p, r]) => { const f = window.pixelwiseLabel.footprint(p, r, 96, 128);"
                    " return f && [f.top, f.left, f.bottom, f.right, Array.from(f.hit)]; }",
                    [[list(q) for q in pts], r],
                )
                py = stroke_footprint(pts, r, H, W)
                if py is None:
                    assert js is None or not any(js[4])
                    continue
                (t, lft, b, rt), hit = py
                full_js = np.zeros((H, W), bool)
                full_js[js[0] : js[2], js[1] : js[3]] = np.asarray(js[4], bool).reshape(
                    js[2] - js[0], js[3] - js[1]
                )
                full_py = np.zeros((H, W), bool)
                full_py[t:b, lft:rt] = hit
                np.testing.assert_array_equal(full_js, full_py)

            page.keyboard.press("]")  # a bigger brush (8 -> 10 px)
            draw(page, [(35, 25), (45, 35), (40, 38)], key="2")  # blob, inside the disc
            wait_saved(page, 1)
            draw(page, [(100, 80), (120, 85)], key="1")  # background, far from it
            wait_saved(page, 2)
            saved = read_mask(project / "masks" / "scene0.png")
            np.testing.assert_array_equal(page_labels(page), saved)
            assert saved[30, 40] == 1 and saved[82, 110] == 0
            assert saved[5, 5] == ERASE and saved[60, 5] == ERASE
            assert set(np.unique(saved)) == {0, 1, ERASE}

            page.keyboard.press("z")  # undo the background stroke
            wait_saved(page, 3)
            after_undo = read_mask(project / "masks" / "scene0.png")
            assert set(np.unique(after_undo)) == {1, ERASE}
            np.testing.assert_array_equal(after_undo[saved == 1], 1)
            page.keyboard.press("Shift+Z")  # redo it
            wait_saved(page, 4)
            np.testing.assert_array_equal(read_mask(project / "masks" / "scene0.png"), saved)

            page.reload()
            page.wait_for_selector("#canvas[data-image='scene0'][data-version='4']", timeout=30_000)
            np.testing.assert_array_equal(page_labels(page), saved)

            # the trainer publishes; the page shows the prediction by itself
            page.wait_for_function(
                "Number(document.getElementById('canvas').dataset.prediction) >= 1",
                timeout=120_000,
            )
            assert page.evaluate("window.pixelwiseLabel.state.cur.predCanvas !== null")
            page.wait_for_function(  # the status line follows at its next poll
                "document.getElementById('trainer').innerText.includes('model v')",
                timeout=30_000,
            )
            assert (project / "run" / "config.json").is_file()

            page.click("#next")
            page.wait_for_function(
                "document.getElementById('canvas').dataset.image !== 'scene0'", timeout=30_000
            )
            opened = page.evaluate("document.getElementById('canvas').dataset.image")
            assert opened in {"scene1", "scene2", "scene3"}
            assert not external, external
        finally:
            browser.close()


def test_two_tabs_and_a_vanished_image(server, tmp_path):
    url, project, _ = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            one = browser.new_page(viewport={"width": 1100, "height": 700})
            two = browser.new_page(viewport={"width": 1100, "height": 700})
            for page in (one, two):
                page.goto(url + "/#scene1")
                page.wait_for_selector("#canvas[data-image='scene1']", timeout=30_000)
            draw(one, [(20, 20), (60, 20)], key="2")
            draw(two, [(20, 70), (60, 70)], key="1")
            wait_saved(one, 1)
            wait_saved(two, 1)
            saved = read_mask(project / "masks" / "scene1.png")
            assert saved[20, 40] == 1 and saved[70, 40] == 0  # both tabs' strokes survive
            # the first tab catches up with the second's stroke by itself
            one.wait_for_function(
                "window.pixelwiseLabel.state.cur.labels[70 * 128 + 40] === 0", timeout=30_000
            )
            np.testing.assert_array_equal(page_labels(one), saved)

            (project / "images" / "scene1.png").unlink()
            draw(one, [(90, 40), (100, 40)], key="2")
            one.wait_for_selector("#status.error", timeout=30_000)
            assert "no longer exists" in one.inner_text("#status")
        finally:
            browser.close()


def ring_pixels(page, points) -> list[list[int]]:
    """The canvas's RGB where the ring of each suggested image pixel is drawn (the ring's
    radius, max(6, 1.5 x zoom) screen px, right of its centre)."""
    return page.evaluate(
        "(pts) => { const c = document.getElementById('canvas'), d = window.devicePixelRatio;"
        " const L = window.pixelwiseLabel, r = Math.max(6, 1.5 * L.state.view.scale);"
        " const ctx = c.getContext('2d'); return pts.map(([x, y]) => {"
        " const [sx, sy] = L.toScreen(x + 0.5, y + 0.5);"
        " return Array.from(ctx.getImageData(Math.round((sx + r) * d),"
        " Math.round(sy * d), 1, 1).data).slice(0, 3); }); }",
        points,
    )


def test_suggested_points_are_drawn_and_give_way_when_labelled(server, tmp_path):
    url, project, session = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url + "/#scene2")
            page.wait_for_selector("#canvas[data-image='scene2'][data-points='5']", timeout=30_000)
            points = page.evaluate("window.pixelwiseLabel.state.points")
            assert points == session.project.suggested_points("scene2", 5)["points"]
            drawn = ring_pixels(page, points)
            page.keyboard.press("p")  # points off: the image shows through where rings were
            page.wait_for_selector("#canvas[data-points='0']", timeout=10_000)
            page.wait_for_timeout(100)  # the next animation frame
            under = ring_pixels(page, points)
            for ring, image in zip(drawn, under, strict=True):  # grey rings on tinted scenes
                moved = np.abs(np.subtract(ring, image)).max()
                assert max(ring) - min(ring) < 12 < moved, (ring, image)

            page.keyboard.press("p")  # on again; label the first point as background
            page.wait_for_selector("#canvas[data-points='5']", timeout=10_000)
            x, y = points[0]
            draw(page, [(x + 0.5, y + 0.5)], key="1")
            wait_saved(page, 1)
            assert read_mask(project / "masks" / "scene2.png")[y, x] == 0
            page.wait_for_function(
                "JSON.stringify(window.pixelwiseLabel.state.points.slice(0, 4)) === "
                f"'{str(points[1:]).replace(' ', '')}'",
                timeout=10_000,
            )  # the others stay where they were, a new one joins them
            new = page.evaluate("window.pixelwiseLabel.state.points")
            assert len(new) == 5 and points[0] not in new
            assert page.evaluate("document.getElementById('canvas').dataset.points") == "5"
        finally:
            browser.close()
