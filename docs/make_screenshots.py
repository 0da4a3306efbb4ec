"""Make the documentation images from the project's own code and the shipped toy world.

    .venv/bin/python docs/make_screenshots.py   # → docs/images/panel.png, token_strip.png

It loads the toy world, registers the offsets saved under offsets/ (or trains one on
forget10 when there are none), picks a forget question whose answer the offset
changes, then

* serves the Gradio panel on 127.0.0.1 and photographs the Compare tab, and
* draws ``viz.token_strip`` for that question and photographs the figure.

Both pictures are taken by Debian's headless chromium through Playwright (plotly's own
static export would need kaleido and a downloaded Chrome).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from offsetlab.frontends import app, viz
from offsetlab.frontends.explore import compare
from offsetlab.method.train import TrainConfig
from offsetlab.worlds.lab import Lab

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking"]
IMAGES = Path(__file__).resolve().parent / "images"


def telling_question(lab: Lab, offset: str, split: str, tries: int = 30) -> str:
    """The first question of ``split`` whose fused answer differs from the base's."""
    for record in lab.splits[split][:tries]:
        if compare(lab, record.question, offset).divergence is not None:
            return record.question
    raise SystemExit(f"The offset {offset!r} changes none of the first {tries} answers of "
                     f"{split}; train it longer (--steps).")


def shoot_panel(lab: Lab, offset: str, question: str, out: Path, browser) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = app.launch(port=port, lab=lab, offsets_dir=None, block=False)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        page.get_by_label("Question").fill(question)
        page.get_by_role("button", name="Compare").click()
        page.locator("#token-strip .heatmaplayer").wait_for(timeout=120_000)
        page.locator("#step-bars .barlayer").first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # let plotly finish its transitions
        page.screenshot(path=str(out), full_page=True)
    finally:
        server.close()


def shoot_figure(fig, out: Path, browser) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "figure.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)  # offline: plotly.js inline
        page = browser.new_page(viewport={"width": 1100, "height": 400})
        page.goto(html.as_uri())
        plot = page.locator(".js-plotly-plot")
        plot.wait_for()
        plot.screenshot(path=str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offsets", default="offsets", help="folder of saved offsets to offer")
    parser.add_argument("--forget", default="forget10", help="forget split to train on / ask from")
    parser.add_argument("--steps", type=int, default=200, help="training steps if none is saved")
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium package.", file=sys.stderr)
        return 1

    lab = Lab.toy()
    saved = app.register_saved(lab, args.offsets)
    if saved:
        offset = saved[0]
    else:
        print(f"no saved offset under {args.offsets}/: training one on {args.forget} "
              f"({args.steps} steps)")
        offset = lab.train(args.forget, config=TrainConfig(steps=args.steps), progress=True)
    question = telling_question(lab, offset, args.forget)
    print(f"offset {offset!r}, question {question!r}")

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        shoot_panel(lab, offset, question, args.out / "panel.png", browser)
        c = compare(lab, question, offset)
        shoot_figure(viz.token_strip(c.fused, highlight=c.divergence),
                     args.out / "token_strip.png", browser)
        browser.close()
    print(f"wrote {args.out / 'panel.png'} and {args.out / 'token_strip.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
