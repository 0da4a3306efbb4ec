"""Figures are pure functions of data: check their structure, not their pixels."""

import math

import pytest

from offsetlab.frontends import viz
from offsetlab.method.trace import Trace, TraceStep


def step(index, chosen, candidates, base, fused, delta, kl=0.1):
    """A hand-made trace step; candidates are (id, text) pairs, values per candidate."""
    ids = [i for i, _ in candidates]
    return TraceStep(
        index=index, token_id=chosen, token=dict(candidates)[chosen], candidates=ids,
        candidate_tokens=[t for _, t in candidates], base=base, reference=[-1.0] * len(ids),
        offsets=[[-1.0 + d for d in delta]], fused=fused, delta=delta,
        shift=fused[ids.index(chosen)] - base[ids.index(chosen)], kl=kl,
        entropy_base=1.0 + index, entropy_fused=0.5 + index,
    )


L = math.log


@pytest.fixture
def trace():
    # Step 0: the base prefers " Lisbon" but the offset pushes it down and " Porto" wins.
    # Step 1: "<eos>" has to stay literal in hover text; -1e9 stands for "never reported".
    return Trace("Q: where?\nA:", " Porto", [1.0], ["forget"], [
        step(0, 11, [(10, " Lisbon"), (11, " Porto"), (12, " Rome")],
             [L(0.7), L(0.2), L(0.1)], [L(0.05), L(0.9), L(0.05)], [-3.0, 1.5, 0.0], kl=1.2),
        step(1, 1, [(1, "<eos>"), (13, "."), (10, " Lisbon")],
             [L(0.6), L(0.3), -1e9], [L(0.7), L(0.2), -1e9], [0.2, -0.4, -2.0], kl=0.05),
    ])


def test_token_strip_colours_the_shift_and_hovers_candidates(trace):
    fig = viz.token_strip(trace, highlight=0)
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert len(heat.z) == 1 and len(heat.z[0]) == 2
    assert heat.z[0][0] == pytest.approx(math.log(0.9) - math.log(0.2))  # shift of " Porto"
    assert heat.zmid == 0 and heat.zmin == -heat.zmax  # diverging scale centred at zero
    assert list(heat.text[0]) == [" Porto", "<eos>"]
    hover = heat.hovertext[0][0]
    head, *lines = hover.split("<br>")
    assert "Porto" in head  # the chosen token
    # Every candidate, most likely under the base first; the chosen one marked.
    assert [line.split(":")[0] for line in lines] == [" Lisbon", "▸  Porto", " Rome"]
    assert "base 0.700" in hover and "fused 0.050" in hover and "Δ -3.00" in hover
    assert "&lt;eos&gt;" in heat.hovertext[0][1]  # escaped, so plotly shows it literally
    (box,) = fig.layout.shapes
    assert (box.x0, box.x1) == (-0.5, 0.5)
    assert not viz.token_strip(trace).layout.shapes


def test_step_bars_pairs_base_and_fused_with_the_delta_below(trace):
    fig = viz.step_bars(trace, 0)
    assert [t.type for t in fig.data] == ["bar", "bar", "bar"]
    base, fused, delta = fig.data
    assert list(base.x) == list(fused.x) == list(delta.x) == [" Lisbon", " Porto", " Rome"]
    assert list(base.y) == pytest.approx([0.7, 0.2, 0.1])
    assert list(fused.y) == pytest.approx([0.05, 0.9, 0.05])
    assert list(delta.y) == [-3.0, 1.5, 0.0]
    assert base.yaxis == fused.yaxis == "y" and delta.yaxis == "y2"  # delta in its own panel
    assert fig.layout.annotations[-1].x == " Porto"  # the chosen token is pointed at
    assert viz.step_bars(trace, 1).data[0].y[2] == 0.0  # an unreported token has p = 0
    with pytest.raises(IndexError):
        viz.step_bars(trace, 2)


def test_delta_heatmap_uses_the_union_of_candidates_with_gaps(trace):
    fig = viz.delta_heatmap(trace)
    (heat,) = fig.data
    assert list(heat.x) == [" Lisbon", " Porto", " Rome", "<eos>", "."]
    assert list(heat.y) == ["0:  Porto", "1: <eos>"]
    assert list(heat.z[0]) == [-3.0, 1.5, 0.0, None, None]
    assert list(heat.z[1]) == [-2.0, None, None, 0.2, -0.4]  # " Lisbon" sits in column 0 again
    assert "not a candidate" in heat.hovertext[0][3]
    assert "Lisbon" in heat.hovertext[1][0] and "Δ -2.00" in heat.hovertext[1][0]
    # Capped: only the columns with the largest |delta| stay, still in reading order.
    assert list(viz.delta_heatmap(trace, max_columns=2).data[0].x) == [" Lisbon", " Porto"]


def test_labels_of_tokens_that_decode_alike_stay_apart():
    assert viz._unique(["a", "b", "a"], [5, 6, 7]) == ["a #5", "b", "a #7"]
    assert viz.label("\n") == "↵" and viz.label("  ") == "␣␣"


def test_divergence_plots_kl_and_both_entropies(trace):
    fig = viz.divergence(trace)
    assert [t.name for t in fig.data] == ["KL(fused ‖ base)", "entropy base", "entropy fused"]
    assert list(fig.data[0].y) == [1.2, 0.05]
    assert list(fig.data[1].y) == [1.0, 2.0] and list(fig.data[2].y) == [0.5, 1.5]
    assert list(fig.layout.xaxis.ticktext) == [" Porto", "<eos>"]


def test_alpha_sweep_shows_key_probability_and_the_answers():
    rows = [{"alpha": 1.0, "answer": "born in blue", "key_prob": 0.1, "key_in_answer": False},
            {"alpha": 0.0, "answer": "born in red", "key_prob": 0.9, "key_in_answer": True}]
    fig = viz.alpha_sweep(rows)
    line, table = fig.data
    assert (line.type, table.type) == ("scatter", "table")
    assert list(line.x) == [0.0, 1.0] and list(line.y) == [0.9, 0.1]  # sorted by α
    assert list(table.header.values) == ["α", "answer", "key in answer"]
    assert list(table.cells.values[1]) == ["born in red", "born in blue"]
    assert list(table.cells.values[2]) == ["yes", "no"]


def test_training_curves_with_and_without_checkpoints():
    history = [{"step": s, "loss": 1.0 / s, "forget_nll": s, "retain_nll": float("nan")}
               for s in (1, 2, 3)]
    fig = viz.training_curves(history)
    # No retain set: its all-NaN line is left out rather than drawn empty.
    assert [t.name for t in fig.data] == ["forget NLL", "objective"]
    assert list(fig.data[0].x) == [1, 2, 3]
    assert "yaxis2" not in fig.layout.to_plotly_json()  # a single panel

    checkpoints = [{"step": 3, "forget_key_acc": 0.2, "retain_key_acc": 0.9}]
    fig = viz.training_curves(history, checkpoints)
    accs = [t for t in fig.data if "acc" in t.name]
    assert [t.yaxis for t in accs] == ["y2", "y2"]
    assert [list(t.y) for t in accs] == [[0.2], [0.9]]


def test_training_curves_draw_the_never_seen_level():
    history = [{"step": s, "loss": 1.0, "forget_nll": 0.1 * s, "retain_nll": 0.1,
                "forget_key_nll": 0.5 * s} for s in (1, 2, 3)]
    fig = viz.training_curves(history, never_seen=3.4)
    assert "forget key-fact NLL" in [t.name for t in fig.data]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].y0 == lines[0].y1 == 3.4
    assert "never seen" in fig.layout.annotations[-1].text


def test_report_bars_one_panel_per_metric_one_colour_per_model():
    metrics = {"base": {"forget10": {"key_fact_acc": 0.9, "rouge_l": 0.8},
                        "retain90": {"key_fact_acc": 0.95, "rouge_l": 0.9}},
               "fused": {"forget10": {"key_fact_acc": 0.1, "rouge_l": 0.3},
                         "retain90": {"key_fact_acc": 0.9, "rouge_l": 0.85}}}
    fig = viz.report_bars(metrics)
    assert len(fig.data) == 4 and {t.type for t in fig.data} == {"bar"}
    assert [a.text for a in fig.layout.annotations] == ["key_fact_acc", "rouge_l"]
    fused_acc = next(t for t in fig.data if t.name == "fused" and t.xaxis == "x")
    assert list(fused_acc.x) == ["forget10", "retain90"] and list(fused_acc.y) == [0.1, 0.9]
    assert sum(bool(t.showlegend) for t in fig.data) == 2  # one legend entry per model
    assert len(viz.report_bars(metrics, metrics=["rouge_l"]).data) == 2


def test_quality_utility_scatter_is_log_in_forget_quality():
    fig = viz.quality_utility_scatter([
        {"name": "fused", "forget_quality": 0.3, "model_utility": 0.6},
        {"name": "base", "forget_quality": 0.0, "model_utility": 0.7}])
    assert fig.layout.yaxis.type == "log"
    assert [t.name for t in fig.data] == ["fused", "base"]
    assert fig.data[1].y[0] > 0  # a p-value of 0 is clamped onto the log axis


def test_answers_html_shows_gold_beside_base_and_fused(trace):
    html = viz.answers_html(trace, trace, 1, gold=trace)
    assert "gold: never saw the forget set" in html
    assert html.count('class="answer"') == 3
    assert html.count("outline:2px") == 2  # the gold column is not marked
    assert viz.answers_html(trace, trace, 1).count('class="answer"') == 2


def test_answers_html_outlines_where_the_answers_part(trace):
    same = viz.answers_html(trace, trace, None)
    assert "identical" in same and "outline" not in same
    html = viz.answers_html(trace, trace, 1)
    assert html.count("outline:2px") == 2  # step 1 in both columns
    assert "&lt;eos&gt;" in html and "<eos>" not in html
    assert "α = 1" in html


def test_figures_from_a_real_generation(tiny_trio, tokenizer):
    from offsetlab.method.fusion import OffsetModel

    base, ref, off = tiny_trio
    t = OffsetModel(base, ref, [(off, 1.0)], tokenizer).generate(
        "Q: who wrote the book ?\nA:", max_new_tokens=5, trace=True)
    assert len(viz.token_strip(t).data[0].z[0]) == len(t.steps)
    assert len(viz.delta_heatmap(t).data[0].z) == len(t.steps)
    for i in range(len(t.steps)):
        chosen = t.steps[i].candidate_tokens[t.steps[i].chosen]
        assert viz.label(chosen) in viz.step_bars(t, i).data[0].x
