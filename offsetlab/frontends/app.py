"""The Gradio panel: compare base and fused answers, train an offset, evaluate it.

    offsetlab panel                      # = launch(): the toy world on http://127.0.0.1:7860
    build_app(lab).launch(...)           # any Lab (tests use tiny random models)

The panel is a thin layer. Each tab calls a plain function below (``compare_view``,
``train_updates``, ``evaluate_view``) that takes a ``Lab`` and returns data and plotly
figures; ``build_app`` only wires those to components. Offsets are chosen by name from
``lab.offsets`` — the panel never opens a path typed by a user.

A panel may be shown to a room, so every input has a cap (below; the same through the
page and through its HTTP API), at most ``COMPARE_LANES`` quick requests run at once,
training and evaluation each run one at a time in lanes of their own (a long training
never holds the slots compares use), and the queue refuses requests beyond
``QUEUE_SIZE`` instead of piling them up.
"""

from __future__ import annotations

import html
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import plotly.graph_objects as go

from ..method.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from ..method.trace import Trace
from ..worlds.lab import Lab
from . import viz
from .explore import (
    MAX_DEAD_ZONE,
    Comparison,
    Decoding,
    ForgetCheck,
    compare,
    example_questions,
    forget_check,
)

# -- limits ----------------------------------------------------------------------------

MAX_QUESTION_CHARS = 2_000
MAX_NEW_TOKENS = 64  # the decoding slider's maximum
MAX_TRAIN_STEPS = 400  # the steps slider's maximum
MAX_EVAL_RECORDS = 200  # the records-per-split slider's maximum
MAX_NAME_CHARS = 80
COMPARE_LANES = 4  # compares (and the other quick events) answered at the same time
QUEUE_SIZE = 64  # requests waiting beyond these are refused ("queue is full")


def _within(value, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{what} must be a number from {low:g} to {high:g}, got {value!r:.40}.")


# -- Compare ---------------------------------------------------------------------------


@dataclass
class CompareView:
    """Everything the Compare tab shows for one question."""

    comparison: Comparison
    answers: str  # HTML: both answers side by side, the first difference outlined
    strip: go.Figure
    step: int  # the step whose candidates are shown first: where the answers part
    bars: go.Figure | None
    heatmap: go.Figure
    divergence: go.Figure


# What the fused model adds: one offset by name, or (name, α) pairs — the members of the
# forget requests ticked in the panel.
Active = str | list[tuple[str, float]] | None


def active_pairs(offset: Active, alpha: float) -> list[tuple[str, float]]:
    """``offset`` as (name, α) pairs; requests' own α are scaled by ``alpha``."""
    if not offset:
        raise ValueError("Pick an offset or tick a forget request — or train one in the "
                         "Train tab first.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"α must be a finite number, got {alpha!r:.40}.")
    if isinstance(offset, str):
        return [(offset, alpha)]
    return [(name, a * alpha) for name, a in offset]


def ticked_requests(requests: dict[str, list[tuple[str, float]]], ticked) -> list[tuple[str, float]]:
    """The offsets the ticked registry entries activate, each once (a composition's
    members may be ticked on their own too)."""
    pairs: dict[str, float] = {}
    for ref in ticked or []:
        if ref not in requests:
            raise KeyError(f"{ref!r} is not a registered forget request; known: {sorted(requests)}.")
        for name, a in requests[ref]:
            pairs.setdefault(name, a)
    return list(pairs.items())


def compare_view(lab: Lab, question: str, offset: Active, alpha: float,
                 decoding: Decoding | None = None, dead_zone: float | None = None) -> CompareView:
    """``offset``: one offset's name, or (name, α) pairs fused together (α scaled by ``alpha``).
    ``dead_zone`` (nats): where the offsets stay silent (default: the lab's own)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("Type a question or pick an example.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(question):,} characters; the panel takes at most "
                         f"{MAX_QUESTION_CHARS:,}.")
    if decoding is not None:
        _within(decoding.max_new_tokens, 1, MAX_NEW_TOKENS, "max new tokens")
    if dead_zone is not None:
        _within(dead_zone, 0, MAX_DEAD_ZONE, "Dead zone")
    c = compare(lab, question, active_pairs(offset, alpha), 1.0, decoding, dead_zone=dead_zone)
    step = min(c.divergence or 0, max(len(c.fused.steps) - 1, 0))
    return CompareView(
        comparison=c,
        answers=viz.answers_html(c.base, c.fused, c.divergence, c.gold),
        strip=viz.token_strip(c.fused, highlight=c.divergence),
        step=step,
        bars=viz.step_bars(c.fused, step) if c.fused.steps else None,
        heatmap=viz.delta_heatmap(c.fused),
        divergence=viz.divergence(c.fused),
    )


# -- Train -----------------------------------------------------------------------------


@dataclass
class TrainUpdate:
    """Training so far: drawn while it runs; ``name`` is set once the offset is registered."""

    step: int
    steps: int
    history: list[dict] = field(default_factory=list)
    name: str | None = None
    stopped: str | None = None
    check: ForgetCheck | None = None  # once trained: what the fused model still states

    def status(self) -> str:
        done = (f"trained <b>{html.escape(self.name)}</b> — pick it under Compare"
                if self.name else "")
        last = self.history[-1] if self.history else {}
        loss = f" · loss {last['loss']:.3f}" if last else ""
        warning = (f"<div style='color:#b2182b'>{html.escape(self.stopped)}</div>"
                   if self.stopped else "")
        return (f"<progress value='{self.step}' max='{self.steps}' style='width:60%'></progress> "
                f"step {self.step}/{self.steps}{loss} {done}{warning}{self.check_html()}")

    def check_html(self) -> str:
        """The forget check as a line (and up to three answers that still state a fact)."""
        c = self.check
        if c is None:
            return ""
        colour = "#1a7f37" if not c.stating else "#b2182b"
        line = (f"<div class='forget-check' style='color:{colour}'>check ({html.escape(c.settings)}): "
                f"{html.escape(c.headline())}</div>")
        if not c.stating:
            return line
        said = "".join(f"<li>{html.escape(q)} → <i>{html.escape(a)}</i></li>" for _, q, a in c.stating[:3])
        if len(c.stating) > 3:
            said += f"<li>… and {len(c.stating) - 3} more</li>"
        return f"{line}<ul>{said}</ul><div>train longer (more steps) or use a larger α</div>"

    def figure(self) -> go.Figure:
        return viz.training_curves(self.history)


def train_updates(lab: Lab, forget_split: str, objective: str = DEFAULT_OBJECTIVE,
                  steps: int = 100, lr: float = 1e-3, name: str = "",
                  redraws: int = 40) -> Iterator[TrainUpdate]:
    """Train an offset, yielding progress about ``redraws`` times, then the registered name.

    The trainer only knows callbacks, so it runs in a thread and its events come back
    through a queue; the generator turns them into updates the panel can stream.
    """
    _within(steps, 1, MAX_TRAIN_STEPS, "Steps")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"The name is {len(name):,} characters; at most {MAX_NAME_CHARS} please.")
    config = replace(lab.train_config, objective=objective, steps=int(steps), lr=float(lr))
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["name"] = lab.train(forget_split, config=config, name=name.strip() or None,
                                        callback=lambda e: events.put({k: v for k, v in e.items()
                                                                       if k != "offset"}))
        except Exception as err:  # re-raised in the caller's thread below
            outcome["error"] = err
        finally:
            events.put(None)

    thread = threading.Thread(target=work, name="offsetlab-train", daemon=True)
    thread.start()
    update = TrainUpdate(0, config.steps)
    every = max(1, config.steps // redraws)
    while (event := events.get()) is not None:
        update.history.append(event)
        update.step, update.steps = event["step"], event["steps"]  # until_forgotten may move the end
        if update.step % every == 0:
            yield update
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    update.name = outcome["name"]
    update.stopped = lab.offsets[update.name].meta.get("stopped")
    if not (update.stopped or "").startswith("interrupted"):
        forget, _ = lab.training_sets(forget_split)
        update.check = forget_check(lab, lab.offsets[update.name], forget, config)
    yield update


# -- Evaluate --------------------------------------------------------------------------


@dataclass
class EvaluateView:
    table: object  # pandas DataFrame: one row per model, columns split/metric
    rows: object  # pandas DataFrame: the fused model's answer to every question
    bars: go.Figure
    scatter: go.Figure | None  # needs the lab's gold (retain-only) model
    legend: object  # pandas DataFrame: what each metric means and which way is better


def evaluate_view(lab: Lab, offset: Active, alpha: float, forget_split: str,
                  max_records: int = 20, max_new_tokens: int = 32) -> EvaluateView:
    """Evaluate the base, the fused model and (when the lab has one) the gold model."""
    import pandas as pd

    from ..measure.evaluate import compare as compare_reports
    from ..measure.evaluate import evaluate
    from ..measure.metrics import legend

    _within(max_records, 1, MAX_EVAL_RECORDS, "Records per split")
    _within(max_new_tokens, 1, MAX_NEW_TOKENS, "max new tokens")
    splits = lab.eval_splits(forget_split)
    models = {"base": lab.model(), "fused": lab.model(active_pairs(offset, alpha))}
    if lab.gold is not None:
        models["gold"] = lab.standalone(lab.gold)
    reports = {name: evaluate(m, splits, name=name, max_records=int(max_records),
                              max_new_tokens=int(max_new_tokens), progress=False)
               for name, m in models.items()}
    table = compare_reports(list(reports.values()), gold=reports.get("gold"))
    quality = f"{forget_split}/forget_quality"
    points = [{"name": name, "forget_quality": row[quality], "model_utility": row["model_utility"]}
              for name, row in table.iterrows()
              if quality in table and not math.isnan(row[quality])]
    rows = reports["fused"].to_frame()[["split", "question", "answer", "generated", "key_hit"]]
    return EvaluateView(
        table=table.round(3).reset_index(names="model"),
        rows=rows,
        bars=viz.report_bars({n: r.metrics for n, r in reports.items()},
                             metrics=["key_fact_acc", "rouge_l", "answer_prob", "truth_ratio"],
                             columns=2),
        scatter=viz.quality_utility_scatter(points) if points else None,
        legend=pd.DataFrame(legend(table.columns)),
    )


# -- the Gradio app --------------------------------------------------------------------


def _theme():
    import gradio as gr

    # System fonts: the default theme fetches web fonts, and the lab must work offline.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(lab: Lab, requests: dict[str, list[tuple[str, float]]] | None = None):
    """The panel for ``lab`` as a ``gr.Blocks`` (not launched).

    ``requests`` — what ``Lab.add_registry`` returns: registry entries (forget requests,
    compositions) that the Compare and Evaluate tabs can tick on and off; the ticked ones
    are fused together instead of the single offset picked above them.
    """
    import gradio as gr

    requests = dict(requests or {})
    with gr.Blocks(title="offsetlab", analytics_enabled=False) as app:
        gr.Markdown("## offsetlab — what does the offset change?\n"
                    "The base model is a black box; the **fused** model adds "
                    "α · (offset − reference) to its log-probabilities.")
        compare_tab = _compare_tab(lab, requests)
        offset = compare_tab["offset"]
        train = _train_tab(lab)
        eval_offset = _evaluate_tab(lab, requests)
        # A finished training offers its offset in both tabs' pickers — of the visitor
        # who trained it only: an event's outputs go to the page that sent it, so nobody
        # else's pick changes (they see the new offset when they next open the page).
        # Training runs in a lane of its own, one at a time.
        train["button"].click(train["handler"], train["inputs"],
                              [train["status"], train["plot"], offset, eval_offset],
                              api_name="train", concurrency_limit=1, concurrency_id="train")

        # A page opened after training elsewhere should offer the new offsets too.
        def known_offsets():
            names = list(lab.offsets)
            first = names[0] if names else None
            return gr.Dropdown(names, value=first), gr.Dropdown(names, value=first)

        # ... and open with the first forget question already answered by both models
        # (the toy world ships an offset, so a room sees forgetting before training).
        app.load(known_offsets, None, [offset, eval_offset], api_visibility="private").then(
            compare_tab["first"], compare_tab["inputs"], compare_tab["outputs"],
            api_visibility="private")
    app.queue(default_concurrency_limit=COMPARE_LANES, max_size=QUEUE_SIZE)
    return app


def _fail(err: Exception):
    import gradio as gr

    return gr.Error(str(err.args[0]) if err.args else str(err))


def _compare_tab(lab: Lab, requests: dict):
    """Question, offset (or ticked requests), α and decoding in; answers and figures out.
    Returns the offset picker (training updates it) and what the page runs on load."""
    import gradio as gr

    offsets = list(lab.offsets)
    examples = example_questions(lab)
    first_question = next((q for qs in examples.values() for q in qs), "")
    first_alpha = lab.offsets[offsets[0]].alpha if offsets else 1.0
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column(scale=3):
                question = gr.Textbox(label="Question", value=first_question, lines=1,
                                      max_length=MAX_QUESTION_CHARS)
                for split, qs in examples.items():
                    what = ("should be forgotten" if split.startswith("forget")
                            else "should be kept")
                    gr.Examples([[q] for q in qs], inputs=[question],
                                label=f"{split} ({what})")
            with gr.Column(scale=2):
                offset = gr.Dropdown(offsets, value=offsets[0] if offsets else None,
                                     label="Offset (trained in this lab)")
                ticked = gr.CheckboxGroup(
                    list(requests), label="Forget requests in the registry — tick to fuse "
                    "them together (instead of the offset above); α scales each one's own",
                    visible=bool(requests), elem_id="requests")
                alpha = gr.Slider(0.0, 2.0, value=first_alpha, step=0.05,
                                  label="α (offset strength)")
                dead_zone = gr.Slider(
                    0.0, MAX_DEAD_ZONE, value=lab.dead_zone, step=0.05, elem_id="dead-zone",
                    label="Dead zone (nats): where the offset moves the base by less, the base "
                    "answers (0 = fuse everywhere)")
                with gr.Accordion("Decoding", open=False):
                    d = Decoding()
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=d.max_new_tokens,
                                               step=1, label="max new tokens")
                    do_sample = gr.Checkbox(d.do_sample, label="sample (else greedy)")
                    temperature = gr.Slider(0.1, 2.0, value=d.temperature, step=0.05,
                                            label="temperature")
                    top_k = gr.Slider(0, 50, value=d.top_k, step=1, label="top-k (0 = off)")
                    top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top-p")
                    seed = gr.Number(d.seed, precision=0, label="seed")
                run = gr.Button("Compare", variant="primary")
        answers = gr.HTML(elem_id="answers")
        strip = gr.Plot(label="Token strip: colour = how the offset moved the chosen token",
                        elem_id="token-strip")
        step = gr.Slider(0, 1, value=0, step=1, label="Step (candidates below)")
        bars = gr.Plot(label="Candidates at this step", elem_id="step-bars")
        with gr.Accordion("Delta heatmap and divergence", open=False):
            heatmap = gr.Plot(label="Offset delta per step and candidate")
            div = gr.Plot(label="KL and entropies per step")
        fused_trace = gr.State()

        def on_compare(q, o, r, a, n, sample, t, k, p, s, z):
            try:
                decoding = Decoding(max_new_tokens=int(n), do_sample=bool(sample),
                                    temperature=t, top_k=int(k), top_p=p, seed=int(s or 0))
                v = compare_view(lab, q, ticked_requests(requests, r) if r else o, a, decoding,
                                 dead_zone=z)
            except (KeyError, ValueError, TypeError, OverflowError) as err:
                raise _fail(err) from err
            last = max(len(v.comparison.fused.steps) - 1, 1)
            return (v.answers, v.strip, gr.Slider(maximum=last, value=v.step), v.bars,
                    v.heatmap, v.divergence, v.comparison.fused)

        def on_step(trace: Trace | None, i):
            if trace is None or not trace.steps:
                return None
            return viz.step_bars(trace, min(int(i), len(trace.steps) - 1))

        def on_first(q, o, r, *rest):  # on page load: answer if there is something to fuse
            if not q.strip() or not (o in lab.offsets or r):
                return (gr.skip(),) * 7
            return on_compare(q, o, r, *rest)

        inputs = [question, offset, ticked, alpha, max_new_tokens, do_sample, temperature,
                  top_k, top_p, seed, dead_zone]
        outputs = [answers, strip, step, bars, heatmap, div, fused_trace]
        run.click(on_compare, inputs, outputs, api_name="compare")
        step.change(on_step, [fused_trace, step], bars, api_name="step")

    def own_alpha(o):  # a newly picked offset starts at its own strength
        return gr.Slider(value=lab.offsets[o].alpha) if o in lab.offsets else gr.skip()

    offset.change(own_alpha, offset, alpha, api_visibility="private")
    return {"offset": offset, "first": on_first, "inputs": inputs, "outputs": outputs}


def _train_tab(lab: Lab) -> dict:
    """Split, objective, steps, rate and name in; progress and the loss curve out."""
    import gradio as gr

    with gr.Tab("Train"):
        with gr.Row():
            forget_split = gr.Dropdown(lab.forget_splits, value=lab.default_forget
                                       if lab.default_forget in lab.splits else None,
                                       label="Forget split")
            objective = gr.Dropdown([(f"{o.name} — {o.description}", o.name)
                                     for o in OBJECTIVES.values()],
                                    value=lab.train_config.objective, label="Objective")
        with gr.Row():
            steps = gr.Slider(1, MAX_TRAIN_STEPS, value=lab.train_config.steps, step=1,
                              label="Steps", elem_id="train-steps")
            lr = gr.Number(lab.train_config.lr, label="Learning rate")
            name = gr.Textbox(label="Name (optional)", placeholder="e.g. forget10-npo_gd",
                              max_length=MAX_NAME_CHARS)
        train_button = gr.Button("Train", variant="primary")
        status = gr.HTML(elem_id="train-status")
        loss_plot = gr.Plot(label="Loss")

    def on_train(split, obj, n, rate, label):
        try:
            for update in train_updates(lab, split, obj, n, float(rate), label or ""):
                if update.name is None:
                    yield update.status(), update.figure(), gr.skip(), gr.skip()
                else:
                    names = list(lab.offsets)
                    yield (update.status(), update.figure(),
                           gr.Dropdown(names, value=update.name),
                           gr.Dropdown(names, value=update.name))
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            raise _fail(err) from err

    return {"button": train_button, "handler": on_train, "status": status, "plot": loss_plot,
            "inputs": [forget_split, objective, steps, lr, name]}


def _evaluate_tab(lab: Lab, requests: dict):
    """Offset (or ticked requests), α, split and sample size in; tables and charts out.
    Returns the offset picker (training updates it)."""
    import gradio as gr

    offsets = list(lab.offsets)
    with gr.Tab("Evaluate"):
        with gr.Row():
            eval_offset = gr.Dropdown(offsets, value=offsets[0] if offsets else None,
                                      label="Offset")
            eval_ticked = gr.CheckboxGroup(list(requests), label="or forget requests",
                                           visible=bool(requests))
            eval_alpha = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="α")
            eval_split = gr.Dropdown(lab.forget_splits, value=lab.default_forget
                                     if lab.default_forget in lab.splits else None,
                                     label="Forget split (evaluated with its retain split, "
                                           "world facts and holdout)")
            max_records = gr.Slider(2, MAX_EVAL_RECORDS, value=20, step=1,
                                    label="Records per split")
        eval_button = gr.Button("Evaluate base, fused and gold", variant="primary")
        table = gr.Dataframe(label="Metrics per model")
        report_plot = gr.Plot(label="Metrics by split")
        scatter = gr.Plot(label="Forget quality vs model utility")
        per_record = gr.Dataframe(label="Fused answers, question by question")
        meaning = gr.Dataframe(label="Which way is better (gold = closest to the model that "
                                     "never saw the forget set)")

    def on_evaluate(o, r, a, split, n):
        try:
            v = evaluate_view(lab, ticked_requests(requests, r) if r else o, a, split, n)
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            raise _fail(err) from err
        return v.table, v.bars, v.scatter, v.rows, v.legend

    eval_button.click(on_evaluate, [eval_offset, eval_ticked, eval_alpha, eval_split, max_records],
                      [table, report_plot, scatter, per_record, meaning], api_name="evaluate",
                      concurrency_limit=1, concurrency_id="evaluate")
    return eval_offset


def registered_requests(lab: Lab, root: str | Path | None = None) -> dict[str, list[tuple[str, float]]]:
    """Add the registry's entries to ``lab`` (see ``Lab.add_registry``); a registry
    trained against another reference is passed over with a warning."""
    import warnings

    from ..offsets.artifact import FingerprintMismatch
    from ..offsets.registry import Registry

    registry = Registry(root)
    if not registry.root.is_dir():
        return {}
    try:
        return lab.add_registry(registry)
    except (FingerprintMismatch, FileNotFoundError, ValueError) as err:
        warnings.warn(f"not offering the registry {registry.root}: {err}", stacklevel=2)
        return {}


def register_saved(lab: Lab, folder: str | Path) -> list[str]:
    """Register every offset saved under ``folder`` (one sub-folder each) that was
    trained against this lab's reference; returns the names added. Folders that hold
    no offset (such as the registry, ``offsets/registry``) are passed over."""
    import warnings

    from ..offsets.artifact import META, FingerprintMismatch

    added = []
    folder = Path(folder)
    saved = sorted(p for p in folder.iterdir() if (p / META).is_file()) if folder.is_dir() else []
    for path in saved:
        try:
            added.append(lab.load_offset(path))
        except (FileNotFoundError, FingerprintMismatch, ValueError) as err:
            warnings.warn(f"not offering {path}: {err}", stacklevel=2)
    return added


def launch(host: str = "127.0.0.1", port: int = 7860, lab: Lab | None = None,
           offsets_dir: str | Path | None = "offsets", registry: str | Path | None = None,
           block: bool = True):
    """Serve the panel (the toy world unless ``lab`` is given) on ``host:port``.

    Offsets saved under ``offsets_dir`` (e.g. by ``offsetlab demo`` or ``offsetlab train
    --out offsets/NAME``) are offered at start, and the latest version of every entry of
    the offset registry (``registry``, default ``$OFFSETLAB_REGISTRY`` or
    ``offsets/registry``) can be ticked on and off. ``block=False`` returns the running
    app at once; stop it with ``app.close()``.
    """
    lab = lab or Lab.toy()
    if offsets_dir is not None:
        register_saved(lab, offsets_dir)
    app = build_app(lab, registered_requests(lab, registry))  # queue limits set there
    # share=False: never a public gradio.live tunnel; the host is 127.0.0.1 unless the
    # caller names another interface on purpose.
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
               ssr_mode=False, show_error=True, quiet=not block, theme=_theme())
    return app
