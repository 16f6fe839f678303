"""Screenshot of the served page with a real run on a real image (docs/images/serve.png).

    python bench/screenshot.py RUN IMAGE [--out docs/images/serve.png] [--hide CLASS ...]

Serves RUN (``pixelwise serve``'s app, uvicorn on a free loopback port), opens the page in
Debian's chromium through playwright (never ``playwright install``), uploads IMAGE, waits for the
overlay, hides the classes named by ``--hide`` (e.g. a background class), and saves a full-page
screenshot. Prints the run's validation mIoU (from its metrics.csv) and the classes' shares, so
the picture's caption can quote what it shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import ARGS, CHROMIUM, serving  # noqa: E402


def best_val_miou(run: Path) -> float | None:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    scores = [float(r["val_mean_iou"]) for r in rows if r.get("val_mean_iou")]
    return max(scores) if scores else None


def shoot(run: Path, image: Path, out: Path, hide: list[str], width: int) -> list[str]:
    """The page with ``image`` segmented by ``run``, saved to ``out``; the legend's lines."""
    from playwright.sync_api import sync_playwright

    from pixelwise.predict import Segmenter
    from pixelwise.serve.app import create_app

    seg = Segmenter.from_run(run, device="cpu")
    model = json.loads((run / "config.json").read_text())["model"]["name"]
    app = create_app(seg, info={"model": model, "run": run.name}, tile=512)
    names = list(seg.classes.names)
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(url + "/")
            legend = f"document.querySelectorAll('#legend li').length == {len(names)}"
            page.wait_for_function(legend)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#overlay[data-ready='1']", state="attached", timeout=300_000)
            for name in hide:
                page.uncheck(f"#class-{names.index(name)}")
            page.locator("#opacity").fill("60")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.locator("#legend li").all_inner_texts()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    p.add_argument("--hide", nargs="*", default=[], help="class names to uncheck")
    p.add_argument("--width", type=int, default=1280, help="browser viewport width")
    args = p.parse_args(argv)
    legend = shoot(args.run, args.image, args.out, args.hide, args.width)
    print(f"run {args.run}: best val mIoU {best_val_miou(args.run)}; image {args.image}")
    for line in legend:
        print("  " + " ".join(line.split()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
