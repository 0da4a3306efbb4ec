import pytest
from browser import chromium_page
from conftest import EVAL_SPLITS as SPLITS
from conftest import make_model

from offsetlab.frontends.report import write_html
from offsetlab.measure.evaluate import evaluate
from offsetlab.method.fusion import OffsetModel


@pytest.fixture(scope="module")
def html_report(tokenizer, tmp_path_factory):
    v = len(tokenizer)
    reports = [evaluate(OffsetModel(make_model(v, s), None, [], tokenizer=tokenizer), SPLITS,
                        name=name, max_new_tokens=5, progress=False)
               for s, name in [(0, "base"), (3, "gold")]]
    path = tmp_path_factory.mktemp("report") / "report.html"
    return write_html(path, reports, gold=reports[1], forget_split="forget05"), reports


def test_html_report_contents(html_report):
    path, reports = html_report
    text = path.read_text()
    assert "forget05/forget_quality" in text and "model_utility" in text
    assert text.count('class="plotly-graph-div"') == 2  # metric bars + quality/utility scatter
    assert "where was Alra born ?" in text  # sample answers table


@pytest.mark.browser
def test_html_report_opens_in_a_real_browser_without_errors(html_report):
    path, _ = html_report
    with chromium_page() as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(path.as_uri())
        page.wait_for_selector(".plotly-graph-div .main-svg", timeout=20000)
        assert page.locator(".plotly-graph-div").count() == 2
        assert page.locator("table").first.inner_text().count("forget05/") >= 4
    assert errors == []
