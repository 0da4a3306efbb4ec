"""The panel in a real browser: headless Debian chromium driven by Playwright.

Screenshots go to pytest's tmp_path and, when $OFFSETLAB_ARTIFACTS is set, there too
(CI keeps them as artifacts).
"""

import os
import shutil
from pathlib import Path

import pytest
from conftest import FORGET_QUESTION, free_port, make_lab

from offsetlab import app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: install Debian's chromium package "
                              "(`make chromium`) to run the browser tests"),
]


@pytest.fixture(scope="module")
def panel_url():
    port = free_port()
    server = app.launch(port=port, lab=make_lab(), offsets_dir=None, block=False)
    yield f"http://127.0.0.1:{port}/"
    server.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
    assert not errors, f"JavaScript errors in the panel: {errors}"


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("OFFSETLAB_ARTIFACTS"):
        target = Path(os.environ["OFFSETLAB_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_a_forget_question_shows_two_answers_and_the_token_strip(panel_url, page, tmp_path):
    page.goto(panel_url, wait_until="domcontentloaded")
    # Pick the question from the forget-set examples, as a student would.
    page.get_by_role("button", name=FORGET_QUESTION).first.click()
    assert page.get_by_label("Question").input_value() == FORGET_QUESTION
    page.get_by_role("button", name="Compare").click()

    page.locator("#answers .tok").first.wait_for(timeout=60_000)
    base, fused = page.locator("#answers .answer").all_inner_texts()
    assert base.startswith("base model") and fused.startswith("fused")
    assert base.split("\n", 1)[1] != fused.split("\n", 1)[1]
    assert "part ways at token 0" in page.locator("#answers").inner_text()

    # The token strip: a drawn plotly heatmap with one label per generated token.
    page.locator("#token-strip .js-plotly-plot .heatmaplayer").wait_for(timeout=30_000)
    box = page.locator("#token-strip .js-plotly-plot").bounding_box()
    assert box["height"] > 100
    fused_tokens = page.locator("#answers .answer").nth(1).locator(".tok").count()
    assert page.locator("#token-strip .heatmaplayer text").count() == fused_tokens
    page.locator("#step-bars .js-plotly-plot .barlayer").first.wait_for(timeout=30_000)

    shot = save_screenshot(page, tmp_path, "panel_compare.png")
    assert shot.stat().st_size > 10_000
