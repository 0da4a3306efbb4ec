"""An evaluation as one self-contained HTML page: the comparison table and the charts.

The page embeds plotly.js, so it opens offline in any browser.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from ..measure.evaluate import Report, compare
from ..measure.metrics import legend

CHART_METRICS = ("key_fact_acc", "rouge_l", "answer_prob", "truth_ratio")


def write_html(path: str | Path, reports: Sequence[Report], gold: Report | None = None,
               forget_split: str | None = None, title: str = "offsetlab evaluation") -> Path:
    from . import viz

    table = compare(reports, gold=gold)
    figures = [viz.report_bars({r.name: r.metrics for r in reports}, metrics=list(CHART_METRICS))]
    quality_column = f"{forget_split}/forget_quality"
    if gold is not None and forget_split and quality_column in table.columns:
        figures.append(viz.quality_utility_scatter([
            {"name": name, "forget_quality": row[quality_column], "model_utility": row["model_utility"]}
            for name, row in table.iterrows()
        ]))
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    samples = _sample_rows(reports, forget_split)
    import pandas as pd

    meaning = pd.DataFrame(legend(table.columns)).to_html(index=False)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
 table {{ border-collapse: collapse; font-size: 0.9rem; }}
 th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
 td.text {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Rows are metrics (split/metric), columns the models. Forget quality is the KS-test p-value
of the model's truth ratios against the gold model's on the forget split (higher = closer to
never having learnt it); model utility is the harmonic mean of the retain and world-facts
probabilities, ROUGE-L and truth-ratio scores.</p>
{table.T.to_html(float_format=lambda v: f"{v:.3f}", na_rep="")}
<h2>What each metric means, and which way is better</h2>
<p>"gold" means: closest to the model that never saw the forget set.</p>
{meaning}
{''.join(parts)}
<h2>Sample answers</h2>
{samples}
</body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _sample_rows(reports: Sequence[Report], forget_split: str | None, n: int = 5) -> str:
    """The first few forget-split questions with every model's answer."""
    split = forget_split or next(iter(reports[0].metrics))
    questions = [r for r in reports[0].rows if r["split"] == split][:n]
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in reports)
    body = []
    for q in questions:
        cells = []
        for report in reports:
            row = next(x for x in report.rows if x["split"] == split and x["question"] == q["question"])
            cells.append(f'<td class="text">{html.escape(row["generated"])}</td>')
        body.append(f'<tr><td class="text">{html.escape(q["question"])}</td>'
                    f'<td class="text">{html.escape(q["answer"])}</td>{"".join(cells)}</tr>')
    return (f"<table><tr><th>question ({html.escape(split)})</th><th>true answer</th>{head}</tr>"
            f"{''.join(body)}</table>")
