"""ipywidgets panels for notebooks: compare base and fused answers, watch training.

    from offsetlab.frontends.widgets import Compare, TrainMonitor
    Compare(lab)                                   # live: every change re-asks both models
    monitor = TrainMonitor(); display(monitor)
    lab.train("forget10", callback=monitor)        # the trainer knows nothing of widgets

Figures are plain ``go.Figure`` objects shown in ``Output`` widgets as plotly's JSON
mime bundle, which JupyterLab renders with the plotly extension. (``go.FigureWidget``
would need ``anywidget`` with plotly ≥ 6; this way nothing beyond plotly and ipywidgets
is needed, and the figures stay inspectable in ``panel.figures``.)
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable

import ipywidgets as w
import plotly.graph_objects as go

from ..worlds.lab import Lab
from . import viz
from .explore import (
    MAX_DEAD_ZONE,
    Comparison,
    Decoding,
    alpha_sweep_rows,
    compare,
    example_questions,
    find_record,
)

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def show_figure(out: w.Output, fig: go.Figure) -> None:
    """Replace what ``out`` shows with ``fig`` (works with or without a running kernel)."""
    out.outputs = ({
        "output_type": "display_data",
        "data": {PLOTLY_MIME: json.loads(fig.to_json()),
                 "text/plain": f"<figure: {fig.layout.title.text or 'plotly'}>"},
        "metadata": {},
    },)


def _error(message: object) -> str:
    return f"<span style='color:#b2182b'>{html.escape(str(message))}</span>"


class Compare(w.VBox):
    """Ask the base and the fused model the same question and see where they differ.

    Controls: question (type one or pick an example from the forget/retain sets), known
    offset, strength α, dead zone (the lab's own at first) and decoding options. Every change re-decodes both answers and
    redraws the token strip, the chosen step's candidate bars, the delta heatmap and the
    divergence curve. ``sweep`` draws answers and key probability across α.
    """

    def __init__(self, lab: Lab, question: str | None = None, offset: str | None = None,
                 alpha: float | None = None):
        if not lab.offsets:
            raise ValueError("The lab has no offsets yet: train one first "
                             "(lab.train).")
        super().__init__()
        self.lab = lab
        examples = [q for qs in example_questions(lab).values() for q in qs]
        self.question = w.Combobox(
            value=question or (examples[0] if examples else ""), options=examples,
            placeholder="a question, or pick an example", description="question",
            ensure_option=False, continuous_update=False, layout={"width": "95%"})
        self.offset = w.Dropdown(options=list(lab.offsets), value=offset or next(iter(lab.offsets)),
                                 description="offset")
        if alpha is None:
            alpha = lab.offsets[self.offset.value].alpha
        self.alpha = w.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.05, description="α",
                                   continuous_update=False)
        self.dead_zone = w.FloatSlider(
            value=lab.dead_zone, min=0.0, max=MAX_DEAD_ZONE, step=0.05, description="dead zone",
            tooltip="nats: where the offset moves the base by less, the base answers (0 = fuse "
                    "everywhere)", continuous_update=False)
        d = Decoding()
        self.max_new_tokens = w.IntSlider(value=d.max_new_tokens, min=1, max=64,
                                          description="max tokens", continuous_update=False)
        self.do_sample = w.Checkbox(value=d.do_sample, description="sample (else greedy)")
        self.temperature = w.FloatSlider(value=d.temperature, min=0.1, max=2.0, step=0.05,
                                         description="temperature", continuous_update=False)
        self.top_k = w.IntSlider(value=d.top_k, min=0, max=50, description="top-k (0 = off)",
                                 continuous_update=False)
        self.top_p = w.FloatSlider(value=d.top_p, min=0.05, max=1.0, step=0.05,
                                   description="top-p", continuous_update=False)
        self.seed = w.IntText(value=d.seed, description="seed")
        self.step = w.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False)
        self.sweep_button = w.Button(description="sweep α", tooltip="answers for α = 0 … 2")
        self.answers = w.HTML()
        self.status = w.HTML()
        self.outputs = {name: w.Output()
                        for name in ("strip", "step", "heatmap", "divergence", "sweep")}
        self.figures: dict[str, go.Figure] = {}
        self.comparison: Comparison | None = None

        decoding = w.Accordion([w.VBox([self.max_new_tokens, self.do_sample, self.temperature,
                                        self.top_k, self.top_p, self.seed])],
                               titles=("decoding",))
        tabs = w.Tab([w.VBox([self.step, self.outputs["step"]]), self.outputs["heatmap"],
                      self.outputs["divergence"],
                      w.VBox([self.sweep_button, self.outputs["sweep"]])],
                     titles=("step", "delta heatmap", "divergence", "α sweep"))
        self.children = [self.question, w.HBox([self.offset, self.alpha, self.dead_zone]), decoding,
                         self.status,
                         self.answers, self.outputs["strip"], tabs]

        for control in (self.question, self.offset, self.alpha, self.dead_zone, self.max_new_tokens,
                        self.do_sample,
                        self.temperature, self.top_k, self.top_p, self.seed):
            control.observe(self._on_change, names="value")
        self.step.observe(lambda _: self.show_step(), names="value")
        self.sweep_button.on_click(lambda _: self.sweep())
        self.refresh()

    def decoding(self) -> Decoding:
        return Decoding(max_new_tokens=self.max_new_tokens.value, do_sample=self.do_sample.value,
                        temperature=self.temperature.value, top_k=self.top_k.value,
                        top_p=self.top_p.value, seed=self.seed.value)

    def _on_change(self, change) -> None:
        if change["owner"] is self.offset:
            # A new offset starts at the strength it was trained with.
            # (Quietly, or the α change would decode everything a second time.)
            self.alpha.unobserve(self._on_change, names="value")
            self.alpha.value = self.lab.offsets[self.offset.value].alpha
            self.alpha.observe(self._on_change, names="value")
        self.refresh()

    def refresh(self) -> None:
        """Decode both answers again and redraw everything."""
        question = self.question.value.strip()
        if not question:
            self.status.value = _error("Type a question or pick an example.")
            return
        try:
            c = compare(self.lab, question, self.offset.value, self.alpha.value, self.decoding(),
                        dead_zone=self.dead_zone.value)
        except (KeyError, ValueError) as err:  # bad settings or unknown offset: say so in place
            self.status.value = _error(err.args[0] if err.args else err)
            return
        self.status.value = ""
        self.comparison = c
        self.answers.value = viz.answers_html(c.base, c.fused, c.divergence, c.gold)
        self._draw("strip", viz.token_strip(c.fused, highlight=c.divergence))
        self._draw("heatmap", viz.delta_heatmap(c.fused))
        self._draw("divergence", viz.divergence(c.fused))
        # Open at the step where the answers part ways: the most telling one.
        last = len(c.fused.steps) - 1
        with self.step.hold_trait_notifications():
            self.step.max = max(last, 0)
            self.step.value = min(c.divergence or 0, max(last, 0))
        self.show_step()

    def show_step(self) -> None:
        if self.comparison is None or not self.comparison.fused.steps:
            return
        self._draw("step", viz.step_bars(self.comparison.fused, self.step.value))

    def sweep(self) -> None:
        """Answers and key probability for α from 0 to 2 (the question must be a known one)."""
        record = find_record(self.lab, self.question.value)
        if record is None:
            self.status.value = _error("The α sweep needs a question from the lab's splits "
                                       "(it scores the known answer's key fact).")
            return
        rows = alpha_sweep_rows(lambda a: self.lab.model([(self.offset.value, a)]), record,
                                max_new_tokens=self.max_new_tokens.value)
        self._draw("sweep", viz.alpha_sweep(rows))

    def _draw(self, name: str, fig: go.Figure) -> None:
        self.figures[name] = fig
        show_figure(self.outputs[name], fig)


class TrainMonitor(w.VBox):
    """A progress bar and a live loss plot; the instance is the trainer's callback.

        monitor = TrainMonitor(checkpoint=key_accuracy_probe(lab, forget[:20], retain[:20]))
        display(monitor)
        lab.train("forget10", callback=monitor)

    ``checkpoint(offset_module) -> dict`` (optional) is called every ``every`` steps and
    at the last one; its numbers (e.g. key-fact accuracy) are drawn under the losses.
    The plot is redrawn about ``redraws`` times per run, so drawing never dominates.
    ``never_seen`` (a key-fact NLL, e.g. ``-calibrate.never_seen_level(lab.model(),
    lab.nonmembers)``) draws where the forget fact's NLL should stop.
    """

    def __init__(self, checkpoint: Callable[[object], dict] | None = None, every: int = 25,
                 redraws: int = 40, never_seen: float | None = None):
        super().__init__()
        self.checkpoint, self.every, self.redraws = checkpoint, every, redraws
        self.never_seen = never_seen
        self.history: list[dict] = []
        self.checkpoints: list[dict] = []
        self.figure: go.Figure | None = None
        self.progress = w.IntProgress(value=0, min=0, max=1, description="training")
        self.label = w.HTML()
        self.plot = w.Output()
        self.children = [w.HBox([self.progress, self.label]), self.plot]

    def __call__(self, event: dict) -> None:
        step, steps = event["step"], event["steps"]
        self.history.append({k: v for k, v in event.items() if k != "offset"})
        self.progress.max, self.progress.value = steps, step
        self.label.value = (f"step {step}/{steps} · loss {event['loss']:.3f} · "
                            f"forget NLL {event['forget_nll']:.2f}")
        last = step == steps
        if self.checkpoint is not None and (step % self.every == 0 or last):
            self.checkpoints.append({"step": step, **self.checkpoint(event["offset"])})
        if last or step % max(1, steps // self.redraws) == 0:
            self.figure = viz.training_curves(self.history, self.checkpoints or None,
                                              never_seen=self.never_seen)
            show_figure(self.plot, self.figure)
