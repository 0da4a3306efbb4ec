"""Plotly figures of what an offset does — pure functions of plain data.

Every function here takes traces (``offsetlab.method.trace.Trace``), data rows or dicts of
numbers and returns a ``plotly.graph_objects.Figure`` (or, for the answers, an HTML
string). Nothing here touches a model, so notebooks, widgets and the Gradio panel draw
the same pictures, and tests check their structure without running anything.

Colours: a token the offset pushed *down* is red, one it pushed *up* is blue, always on
a scale centred at zero (no change is white).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..method.trace import Trace, TraceStep

DIVERGING = "RdBu"  # red = pushed down by the offset, blue = pushed up
BASE_COLOUR, FUSED_COLOUR = "#7f7f7f", "#d62728"
GOLD_COLOUR = "#b8860b"  # the never-seen reference (gold model, non-members)


# -- small helpers ---------------------------------------------------------------------


def label(token: str) -> str:
    """A token as a reader should see it: newlines and blank tokens made visible."""
    shown = token.replace("\n", "↵")
    return shown if shown.strip() else "␣" * max(1, len(shown))


def _esc(token: str) -> str:
    # Plotly renders a few HTML tags in hover text; "<eos>" must stay literal.
    return html.escape(label(token), quote=False)


def _prob(logp: float) -> float:
    return math.exp(logp) if logp > -700 else 0.0


def _unique(labels: Sequence[str], ids: Sequence[int]) -> list[str]:
    """Category labels for an axis: two ids that decode alike get their id appended."""
    counts: dict[str, int] = {}
    for text in labels:
        counts[text] = counts.get(text, 0) + 1
    return [text if counts[text] == 1 else f"{text} #{i}" for text, i in zip(labels, ids)]


def candidate_lines(step: TraceStep) -> list[str]:
    """One hover line per candidate, most likely under the base first."""
    order = sorted(range(len(step.candidates)), key=lambda j: -step.base[j])
    return [
        f"{'▸ ' if step.candidates[j] == step.token_id else ''}{_esc(step.candidate_tokens[j])}: "
        f"base {_prob(step.base[j]):.3f} · Δ {step.delta[j]:+.2f} · "
        f"fused {_prob(step.fused[j]):.3f}"
        for j in order
    ]


def _step_hover(step: TraceStep) -> str:
    head = f"<b>step {step.index}: {_esc(step.token)}</b> (shift {step.shift:+.2f} nats)"
    return "<br>".join([head, *candidate_lines(step)])


def _colour(i: int) -> str:
    palette = qualitative.Plotly
    return palette[i % len(palette)]


# -- one trace -------------------------------------------------------------------------


def token_strip(trace: Trace, highlight: int | None = None) -> go.Figure:
    """The generated tokens in a row, coloured by how much the offset moved each one.

    Colour is the shift of the chosen token, log p_fused − log p_base: red where the
    offset made the token less likely than the base would have, blue where more. Hover
    shows every candidate of the step under the base, the offset's delta and fused.
    ``highlight`` outlines one step (e.g. where base and fused answers part ways).
    """
    steps = trace.steps
    shifts = [s.shift for s in steps]
    bound = max([abs(x) for x in shifts] + [1e-6])
    fig = go.Figure(go.Heatmap(
        z=[shifts],
        x=list(range(len(steps))),
        y=[""],
        text=[[label(s.token) for s in steps]],
        texttemplate="%{text}",
        hovertext=[[_step_hover(s) for s in steps]],
        hoverinfo="text",
        colorscale=DIVERGING,
        zmid=0,
        zmin=-bound,
        zmax=bound,
        xgap=2,
        colorbar={"title": {"text": "shift<br>(nats)"}, "thickness": 12},
    ))
    if highlight is not None and 0 <= highlight < len(steps):
        fig.add_shape(type="rect", x0=highlight - 0.5, x1=highlight + 0.5, y0=-0.5, y1=0.5,
                      line={"color": "black", "width": 3})
    fig.update_layout(
        title=f"fused answer, token by token (α = {_alphas(trace)})",
        # Tall enough for hosts that add a top margin for their own label (Gradio: 100 px).
        height=240, margin={"l": 20, "r": 20, "t": 40, "b": 30},
        xaxis={"title": None, "dtick": 1}, yaxis={"showticklabels": False},
    )
    return fig


def _alphas(trace: Trace) -> str:
    return ", ".join(f"{a:g}" for a in trace.alphas) or "none"


def step_bars(trace: Trace, step: int) -> go.Figure:
    """One decoding step: base vs fused probability of each candidate, and the delta.

    Top: grouped bars of p_base and p_fused. Bottom: the log-prob the offsets added to
    each candidate (Σ α·(offset − reference)) — what turned the one into the other.
    """
    if not 0 <= step < len(trace.steps):
        raise IndexError(f"step {step} is outside this trace's {len(trace.steps)} steps.")
    s = trace.steps[step]
    x = _unique([label(t) for t in s.candidate_tokens], s.candidates)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35],
                        vertical_spacing=0.08,
                        subplot_titles=("probability of each candidate", "offset's log-prob delta"))
    for name, values, colour in (("base", s.base, BASE_COLOUR), ("fused", s.fused, FUSED_COLOUR)):
        fig.add_trace(go.Bar(name=name, x=x, y=[_prob(v) for v in values], marker_color=colour,
                             hovertemplate=f"{name} p(%{{x}}) = %{{y:.3f}}<extra></extra>"),
                      row=1, col=1)
    fig.add_trace(go.Bar(name="delta", x=x, y=s.delta, showlegend=False,
                         marker_color=["#2166ac" if d >= 0 else "#b2182b" for d in s.delta],
                         hovertemplate="Δ log p(%{x}) = %{y:+.2f}<extra></extra>"),
                  row=2, col=1)
    fig.add_annotation(x=x[s.chosen], y=max(_prob(s.base[s.chosen]), _prob(s.fused[s.chosen])),
                       text="chosen", showarrow=True, arrowhead=2, row=1, col=1)
    fig.update_layout(barmode="group", height=420,
                      title=f"step {s.index}: chose {label(s.token)!r}",
                      margin={"l": 50, "r": 20, "t": 60, "b": 40})
    fig.update_yaxes(title_text="p", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="Δ (nats)", row=2, col=1)
    return fig


def delta_heatmap(trace: Trace, max_columns: int = 30) -> go.Figure:
    """Steps × candidate tokens, coloured by the offset's delta on each.

    Candidate sets differ from step to step, so columns are the union of all candidates
    (the ``max_columns`` with the largest |delta| anywhere, in order of first
    appearance); a cell is empty where the token was not a candidate at that step.
    """
    strongest: dict[int, float] = {}
    names: dict[int, str] = {}
    for s in trace.steps:
        for tid, tok, d in zip(s.candidates, s.candidate_tokens, s.delta):
            strongest[tid] = max(strongest.get(tid, 0.0), abs(d))
            names.setdefault(tid, tok)
    keep = set(sorted(strongest, key=lambda t: -strongest[t])[:max_columns])
    columns = [t for t in strongest if t in keep]  # dicts keep first-appearance order
    z, hover = [], []
    for s in trace.steps:
        where = {tid: j for j, tid in enumerate(s.candidates)}
        z.append([s.delta[where[t]] if t in where else None for t in columns])
        hover.append([
            f"step {s.index} (chose {_esc(s.token)})<br>candidate {_esc(names[t])}<br>"
            + (f"Δ {s.delta[where[t]]:+.2f} · base {_prob(s.base[where[t]]):.3f} → "
               f"fused {_prob(s.fused[where[t]]):.3f}" if t in where else "not a candidate here")
            for t in columns
        ])
    bound = max([abs(v) for row in z for v in row if v is not None] + [1e-6])
    fig = go.Figure(go.Heatmap(
        z=z,
        x=_unique([label(names[t]) for t in columns], columns),
        y=[f"{s.index}: {label(s.token)}" for s in trace.steps],
        hovertext=hover,
        hoverinfo="text",
        colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
        colorbar={"title": {"text": "Δ log p"}},
    ))
    fig.update_layout(title="what the offset added to each candidate, step by step",
                      height=max(300, 22 * len(trace.steps) + 120),
                      yaxis={"autorange": "reversed", "title": "step: chosen token"},
                      xaxis={"title": "candidate token", "tickangle": -45})
    return fig


def divergence(trace: Trace) -> go.Figure:
    """KL(fused ‖ base) and the entropy of both models at every step, in nats."""
    x = list(range(len(trace.steps)))
    tokens = [label(s.token) for s in trace.steps]
    series = (
        ("KL(fused ‖ base)", [s.kl for s in trace.steps], FUSED_COLOUR, "solid"),
        ("entropy base", [s.entropy_base for s in trace.steps], BASE_COLOUR, "dot"),
        ("entropy fused", [s.entropy_fused for s in trace.steps], FUSED_COLOUR, "dot"),
    )
    fig = go.Figure([
        go.Scatter(x=x, y=y, name=name, mode="lines+markers", customdata=tokens,
                   line={"color": colour, "dash": dash},
                   hovertemplate=f"{name} = %{{y:.3f}} at %{{customdata}}<extra></extra>")
        for name, y, colour, dash in series
    ])
    fig.update_layout(title="how far the fused model moved from the base, per step",
                      height=320, yaxis_title="nats", hovermode="x unified",
                      xaxis={"tickvals": x, "ticktext": tokens, "tickangle": -45})
    return fig


# -- sweeps and training ---------------------------------------------------------------


def alpha_sweep(rows: Sequence[Mapping]) -> go.Figure:
    """How the answer and the key fact's probability change with the offset strength α.

    ``rows`` hold ``alpha``, ``answer`` and ``key_prob`` (optionally ``key_in_answer``),
    e.g. from ``offsetlab.frontends.explore.alpha_sweep_rows``.
    """
    rows = sorted(rows, key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rows]
    leaked = [r.get("key_in_answer") for r in rows]
    fig = make_subplots(rows=2, cols=1, row_heights=[0.55, 0.45], vertical_spacing=0.1,
                        specs=[[{"type": "xy"}], [{"type": "table"}]])
    fig.add_trace(go.Scatter(
        x=alphas, y=[r["key_prob"] for r in rows], mode="lines+markers", name="P(key)",
        marker={"size": 10, "color": ["#b2182b" if k else "#4d4d4d" for k in leaked]},
        hovertext=[html.escape(r["answer"]) for r in rows],
        hovertemplate="α = %{x}<br>P(key) = %{y:.3f}<br>%{hovertext}<extra></extra>",
    ), row=1, col=1)
    columns = ["α", "answer"] + (["key in answer"] if any(k is not None for k in leaked) else [])
    cells = [[f"{a:g}" for a in alphas], [r["answer"] for r in rows]]
    if len(columns) == 3:
        cells.append(["yes" if k else "no" for k in leaked])
    fig.add_trace(go.Table(header={"values": columns}, cells={"values": cells, "align": "left"},
                           columnwidth=[1, 8, 2][: len(columns)]), row=2, col=1)
    fig.update_xaxes(title_text="α (offset strength)", row=1, col=1)
    fig.update_yaxes(title_text="P(key | question, answer so far)", range=[0, 1.05], row=1, col=1)
    fig.update_layout(title="turning the offset up: answer and key-fact probability",
                      height=520, showlegend=False)
    return fig


def never_seen_line(fig: go.Figure, level_nll: float, row: int = 1) -> go.Figure:
    """A dashed horizontal line at the never-seen level (key-fact NLL of records no model
    saw): where forgetting should stop, not a floor to dive under."""
    fig.add_hline(y=level_nll, line={"color": GOLD_COLOUR, "dash": "dash"}, row=row, col=1,
                  annotation_text="never seen (invented non-members)", annotation_position="top left")
    return fig


def training_curves(history: Sequence[Mapping],
                    checkpoints: Sequence[Mapping] | None = None,
                    never_seen: float | None = None) -> go.Figure:
    """Forget and retain loss per step; key-fact accuracy at checkpoints when given.

    ``history`` rows are what ``train_offset`` reports (``step``, ``loss``,
    ``forget_nll``, ``retain_nll``, ``forget_key_nll``); ``checkpoints`` rows hold
    ``step``, ``forget_key_acc`` and ``retain_key_acc``. ``never_seen`` (a key-fact NLL,
    e.g. ``-result.config.level``) draws the level the forget fact's NLL should reach.
    """
    rows = 2 if checkpoints else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("loss per answer token (nats)", "key-fact accuracy")[:rows])
    steps = [h["step"] for h in history]
    for key, name, colour, dash in (("forget_nll", "forget NLL", FUSED_COLOUR, "solid"),
                                    ("retain_nll", "retain NLL", "#1f77b4", "solid"),
                                    ("forget_key_nll", "forget key-fact NLL", FUSED_COLOUR, "dash"),
                                    ("loss", "objective", "#7f7f7f", "dot")):
        values = [h.get(key, float("nan")) for h in history]
        if all(v is None or math.isnan(v) for v in values):
            continue  # e.g. no retain set: drawing an empty line would only confuse
        fig.add_trace(go.Scatter(x=steps, y=values, name=name, mode="lines",
                                 line={"color": colour, "dash": dash}), row=1, col=1)
    if checkpoints:
        at = [c["step"] for c in checkpoints]
        for key, name, colour in (("forget_key_acc", "forget key acc", FUSED_COLOUR),
                                  ("retain_key_acc", "retain key acc", "#1f77b4")):
            fig.add_trace(go.Scatter(x=at, y=[c.get(key) for c in checkpoints], name=name,
                                     mode="lines+markers", line={"color": colour}), row=2, col=1)
        fig.update_yaxes(range=[-0.05, 1.05], row=2, col=1)
    if never_seen is not None:
        never_seen_line(fig, never_seen)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_layout(title="training the offset", height=300 + 200 * (rows - 1),
                      margin={"t": 60})
    return fig


# -- evaluation reports ----------------------------------------------------------------


def report_bars(report_metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
                metrics: Sequence[str] | None = None, columns: int = 3) -> go.Figure:
    """Metric bars per model: one panel per metric, splits on x, one bar per model.

    ``report_metrics`` is ``{model name: {split: {metric: value}}}`` — e.g.
    ``{"base": report.metrics, "fused": other.metrics}``. ``metrics`` picks and orders
    the panels (default: every metric found, in order of appearance).
    """
    if metrics is None:
        metrics = list(dict.fromkeys(m for per_split in report_metrics.values()
                                     for values in per_split.values() for m in values))
    n_rows = max(1, math.ceil(len(metrics) / columns))
    fig = make_subplots(rows=n_rows, cols=columns, subplot_titles=list(metrics),
                        vertical_spacing=0.5 / n_rows, horizontal_spacing=0.08)
    for k, metric in enumerate(metrics):
        r, c = divmod(k, columns)
        for i, (model, per_split) in enumerate(report_metrics.items()):
            splits = [s for s, values in per_split.items() if metric in values]
            fig.add_trace(go.Bar(
                name=model, x=splits, y=[per_split[s][metric] for s in splits],
                marker_color=_colour(i), legendgroup=model, showlegend=k == 0,
                hovertemplate=f"{model} · %{{x}} · {metric} = %{{y:.3f}}<extra></extra>",
            ), row=r + 1, col=c + 1)
    fig.update_layout(barmode="group", height=280 * n_rows, title="evaluation by split")
    return fig


def quality_utility_scatter(points: Sequence[Mapping]) -> go.Figure:
    """Forget quality against model utility, one point per model (TOFU's main picture).

    ``points`` hold ``name``, ``forget_quality`` (a KS-test p-value: higher means the
    forget set looks as if it was never learnt) and ``model_utility``. The best models
    sit top right. Forget quality spans many orders of magnitude, so its axis is log.
    """
    floor = 1e-30  # a p-value of exactly 0 has no place on a log axis
    fig = go.Figure([
        go.Scatter(x=[p["model_utility"]], y=[max(p["forget_quality"], floor)], name=p["name"],
                   mode="markers+text", text=[p["name"]], textposition="top center",
                   marker={"size": 14, "color": _colour(i)},
                   hovertemplate=(f"{html.escape(p['name'])}<br>utility %{{x:.3f}}<br>"
                                  f"forget quality {p['forget_quality']:.3g}<extra></extra>"))
        for i, p in enumerate(points)
    ])
    fig.update_layout(title="forget quality vs model utility (top right is best)", height=420,
                      showlegend=False,
                      xaxis={"title": "model utility", "range": [0, 1.05]},
                      yaxis={"title": "forget quality (KS p-value)", "type": "log"})
    return fig


# -- the two answers side by side ------------------------------------------------------


def answers_html(base: Trace, fused: Trace, divergence: int | None, gold: Trace | None = None) -> str:
    """Base and fused answers side by side, token boxes, the first difference outlined.

    From ``divergence`` on (the first step where the two chose different tokens), the
    tokens are tinted: that is where the offset changed the answer. ``gold`` (the model
    that never saw the forget set) adds a third column: what "forgotten" should look like.
    """
    def column(title: str, trace: Trace, tint: str, marked: bool = True) -> str:
        spans = []
        for s in trace.steps:
            style = ("display:inline-block;border:1px solid #ddd;border-radius:3px;padding:0 2px;"
                     "margin:1px;white-space:pre;")
            if marked and divergence is not None and s.index >= divergence:
                style += f"background:{tint};"
            if marked and s.index == divergence:
                style += "outline:2px solid #000;"
            spans.append(f'<span class="tok" style="{style}">{html.escape(label(s.token))}</span>')
        return (f'<div class="answer" style="flex:1;min-width:0">'
                f"<div style='font-weight:600;margin-bottom:4px'>{title}</div>"
                f"<div style='line-height:1.9'>{''.join(spans) or '<i>(empty)</i>'}</div></div>")

    note = ("the answers are identical" if divergence is None
            else f"the answers part ways at token {divergence} (outlined)")
    return (f'<div class="offsetlab-answers"><div style="display:flex;gap:16px">'
            f"{column('base model (black box)', base, '#e0e0e0')}"
            f"{column(f'fused: base + offset (α = {_alphas(fused)})', fused, '#fddbc7')}"
            + (column("gold: never saw the forget set", gold, "", marked=False) if gold is not None else "")
            + f"</div><div style='color:#555;margin-top:6px'>{note}</div></div>")
