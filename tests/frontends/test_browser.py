"""The panel in a real browser: headless Debian chromium driven by Playwright.

Screenshots go to pytest's tmp_path and, when $OFFSETLAB_ARTIFACTS is set, there too
(CI keeps them as artifacts).
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import (
    FORGET_QUESTION,
    RETAIN_QUESTION,
    free_port,
    fused_answer,
    make_lab,
    registry_of_two_requests,
)

from offsetlab.frontends import app

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


def answers_on_load(page, url: str) -> list[str]:
    """Open the panel and wait for the answers it shows on load (the lab's first forget
    question, answered with its first offset); each answer's text without its header."""
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#answers .answer").nth(1).wait_for(timeout=120_000)
    return [t.split("\n", 1)[1] for t in page.locator("#answers .answer").all_inner_texts()]


def mark_answers_old(page) -> None:
    """Tag the answers shown now, so that a wait can tell the next ones from them."""
    page.eval_on_selector_all("#answers .answer", "els => els.forEach(e => e.dataset.old = '1')")


def new_answers(page, tries: int = 3) -> list[str]:
    """The answers drawn after the ones tagged by ``mark_answers_old``. A click on Compare
    that lands while the page still handles the previous event can be dropped, so after
    40 s without new answers Compare is clicked again (at most ``tries`` times in all)."""
    fresh = page.locator("#answers .answer:not([data-old])").nth(1)
    for attempt in range(tries):
        try:
            fresh.wait_for(timeout=40_000)
            return page.locator("#answers .answer").all_inner_texts()
        except Exception as err:
            if attempt == tries - 1:  # say what the page shows instead
                shown = page.locator("#answers").inner_text()
                toasts = page.locator(".toast-body").all_inner_texts()
                raise AssertionError(f"no new answers after {tries} clicks; shown: {shown!r}; "
                                     f"errors: {toasts}") from err
            page.get_by_role("button", name="Compare").click()
    raise AssertionError("unreachable")


def pick_example(page, question: str) -> None:
    """Click the example button for ``question`` until the Question box holds it (a click
    that lands while the page is still drawing the previous answer can be lost)."""
    box = page.get_by_label("Question")
    for _ in range(5):
        page.get_by_role("button", name=question).first.click()
        for _ in range(40):
            if box.input_value() == question:
                return
            page.wait_for_timeout(250)
    raise AssertionError(f"the example {question!r} never reached the Question box "
                         f"(it holds {box.input_value()!r})")


def test_a_forget_question_shows_two_answers_and_the_token_strip(panel_url, page, tmp_path):
    first = answers_on_load(page, panel_url)
    assert page.get_by_label("Question").input_value() == FORGET_QUESTION  # the first example
    assert first[0] != first[1]
    # A retained fact first, then back to the forget question, from the examples, as a
    # student would. (An answer identical to the one shown is not redrawn, so each
    # Compare here asks something new.)
    mark_answers_old(page)
    pick_example(page, RETAIN_QUESTION)
    page.get_by_role("button", name="Compare").click()
    assert new_answers(page)[0].split("\n", 1)[1] != first[0]
    mark_answers_old(page)
    pick_example(page, FORGET_QUESTION)
    assert page.get_by_label("Question").input_value() == FORGET_QUESTION
    page.get_by_role("button", name="Compare").click()

    # base, fused, and the gold model's answer beside them (what "forgotten" looks like)
    base, fused, gold = new_answers(page)
    assert base.startswith("base model") and fused.startswith("fused") and gold.startswith("gold")
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

    # The dead zone's slider (the toy world fuses everywhere: 0): at 2 nats the base speaks
    # wherever the offset moves it by less, and the fused answer changes.
    zone = page.locator("#dead-zone input[type=number]")
    assert zone.input_value() == "0"
    mark_answers_old(page)
    zone.fill("2")
    zone.press("Enter")
    page.get_by_role("button", name="Compare").click()
    quiet = new_answers(page)[1].split("\n", 1)[1]
    assert quiet != fused.split("\n", 1)[1], quiet
    zone.fill("0")
    zone.press("Enter")

    # A request that fails says why in the page, and the panel goes on serving.
    page.get_by_label("Question").fill("   ")
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Type a question or pick an example.").first.wait_for(timeout=60_000)
    mark_answers_old(page)
    pick_example(page, RETAIN_QUESTION)
    page.get_by_role("button", name="Compare").click()
    assert len(new_answers(page)) == 3


def test_training_in_the_panel_ends_with_the_forget_check(panel_url, page, tmp_path):
    answers_on_load(page, panel_url)
    page.get_by_role("tab", name="Train").click()
    steps = page.locator("#train-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.get_by_label("Name (optional)").fill("browser-check")
    page.get_by_role("button", name="Train").click()
    check = page.locator("#train-status .forget-check")
    check.wait_for(timeout=120_000)
    status = page.locator("#train-status").inner_text()
    assert "step 2/2" in status and "trained browser-check" in status, status
    # the tiny lab's forget split: one author, two questions, asked as they will be served
    assert re.search(r"check \(α 1, dead zone 0\): the fused model (states none|still states [12]) of "
                     r"the 2 forget facts", check.inner_text()), check.inner_text()
    save_screenshot(page, tmp_path, "panel_train_check.png")


def test_ticking_registered_requests_fuses_them(page, tmp_path):
    """The registry's forget requests, ticked on and off in the Compare tab."""
    lab = make_lab()
    registry_of_two_requests(lab, tmp_path / "reg")
    port = free_port()
    server = app.launch(port=port, lab=lab, offsets_dir=None, registry=tmp_path / "reg", block=False)
    try:
        answers_on_load(page, f"http://127.0.0.1:{port}/")  # with the offset picked above
        page.get_by_label("Question").fill(FORGET_QUESTION)
        requests = page.locator("#requests")

        def compare(previous: str) -> str:
            """Click Compare; the fused answer it shows (base, fused and, where the lab has
            one, gold), spaces and special tokens (<unk>, <eos>) aside — text decoding drops
            those."""
            mark_answers_old(page)
            page.get_by_role("button", name="Compare").click()
            return re.sub(r"<\w+>", "", "".join(new_answers(page)[1].split("\n", 1)[1].split()))

        def expected(active) -> str:
            return "".join(fused_answer(lab, active, 32).split())

        requests.get_by_role("checkbox", name="a@1", exact=True).check()
        with_a = compare("")
        requests.get_by_role("checkbox", name="b@1", exact=True).check()
        with_both = compare(with_a)
        requests.get_by_role("checkbox", name="b@1", exact=True).uncheck()  # B withdrawn
        without_b = compare(with_both)
        assert with_a == expected([("a@1", 1.0)])
        assert with_both == expected([("a@1", 1.0), ("b@1", 0.5)]) != with_a
        assert without_b == with_a
        save_screenshot(page, tmp_path, "panel_requests.png")
    finally:
        server.close()


@pytest.mark.slow
def test_a_fresh_toy_panel_shows_forgetting_before_anything_is_trained(page, tmp_path):
    """`offsetlab panel` as `make panel` starts it on a fresh clone (the toy world, no
    offsets saved, no registry): the Compare tab opens on a forget question with the
    shipped offset picked, and base and fused already answer it differently."""
    import subprocess
    import sys
    import time
    import urllib.request

    from offsetlab.frontends.explore import find_record
    from offsetlab.worlds.lab import Lab

    port = free_port()
    env = {**os.environ, "OFFSETLAB_REGISTRY": str(tmp_path / "no-registry")}
    server = subprocess.Popen([sys.executable, "-m", "offsetlab", "panel", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the panel did not start in 180 s"
                time.sleep(0.5)
        base, fused, gold = answers_on_load(page, url)
        question = page.get_by_label("Question").input_value()
        lab = Lab.toy()
        record = find_record(lab, question)
        assert record is not None and record in lab.splits["forget10"], question
        assert page.get_by_label("Offset (trained in this lab)").input_value() == "forget10-shipped"
        assert base != fused
        print(f"\n{question}\n  base  {base}\n  fused {fused}\n  gold  {gold}")
        save_screenshot(page, tmp_path, "panel_first_start.png")
    finally:
        # Close the page before its server: it may still be fetching a lazily loaded
        # component (the plots), and a server gone mid-fetch is a JavaScript error there.
        page.close()
        server.terminate()
        server.wait(timeout=30)
