"""What the front ends compute: the models of a session and the questions asked of them.

Everything here starts from an ``offsetlab.worlds.lab.Lab`` (the base, the small reference,
the QA splits and the *known* offsets by name), so notebooks, the ipywidgets panels and
the Gradio app ask the same questions of the same models. ``offsetlab.frontends.viz``
then draws what these functions return (traces and plain rows), never a model.

    lab = Lab.toy()
    name = lab.train("forget10")
    c = compare(lab, "Where was Alra Benn born?", name, alpha=1.0)
    viz.token_strip(c.fused, highlight=c.divergence)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from ..measure.metrics import key_fact_hit
from ..method.fusion import OffsetModel
from ..method.trace import Trace
from ..worlds.lab import Lab
from ..worlds.records import QARecord

if TYPE_CHECKING:
    from ..method.train import TrainConfig
    from ..offsets.artifact import Offset

SWEEP_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
MAX_DEAD_ZONE = 2.0  # nats: the dead-zone sliders' maximum (the base's answer long before it)


@dataclass
class Decoding:
    """How to decode an answer; greedy by default, so answers are reproducible."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Comparison:
    """The base model's answer and the fused model's answer to one question."""

    base: Trace
    fused: Trace
    divergence: int | None  # first step where they chose different tokens; None if equal
    gold: Trace | None = None  # the gold model's answer, where the lab has one


def first_divergence(a: Trace, b: Trace) -> int | None:
    """Index of the first step where two traces chose different tokens.

    When one answer is a prefix of the other, they part where the shorter one ends.
    """
    for i, (x, y) in enumerate(zip(a.steps, b.steps)):
        if x.token_id != y.token_id:
            return i
    return None if len(a.steps) == len(b.steps) else min(len(a.steps), len(b.steps))


def compare(lab: Lab, question: str, offset: str | Sequence[tuple[str, float]],
            alpha: float | None = None, decoding: Decoding | None = None,
            trace_top_k: int = 5, dead_zone: float | None = None) -> Comparison:
    """Ask the base alone and the fused model the same question.

    ``offset`` is one known offset's name — ``alpha`` then defaults to the strength it was
    trained with — or several ``(name, α)`` pairs fused together (e.g. the forget
    requests ticked in the panel), each α then scaled by ``alpha`` (default 1). Both
    answers use the same decoding (and seed), so any difference comes from the offsets.
    ``dead_zone``: where the offsets stay silent (default: the lab's own, ``Lab.dead_zone``).
    """
    decoding = decoding or Decoding()
    if isinstance(offset, str):
        active = lab.active([offset if alpha is None else (offset, alpha)])
    else:
        scale = 1.0 if alpha is None else alpha
        active = [(name, a * scale) for name, a in lab.active(offset)]
        if not active:
            raise ValueError("No offset is active: pick one or tick a forget request.")
    fused_model = lab.model(active, dead_zone=dead_zone)
    prompt = lab.prompt_format.prompt(question.strip())
    kwargs = {**asdict(decoding), "trace": True, "trace_top_k": trace_top_k}
    base = lab.model().generate(prompt, **kwargs)
    fused = fused_model.generate(prompt, **kwargs)
    # The gold model (toy world: never saw the forget set) answers too, as the reference.
    gold = lab.standalone(lab.gold).generate(prompt, **kwargs) if lab.gold is not None else None
    return Comparison(base, fused, first_divergence(base, fused), gold)


def find_record(lab: Lab, question: str) -> QARecord | None:
    """The record a question comes from, when it is in one of the lab's splits."""
    question = question.strip()
    for records in lab.splits.values():
        for r in records:
            if r.question == question:
                return r
    return None


def example_questions(lab: Lab, n: int = 6) -> dict[str, list[str]]:
    """``n`` questions, spread over the default forget split and over its retain split
    (evenly spaced, so they are about different subjects, not one author's records)."""
    splits = [lab.default_forget]
    if lab.default_forget in lab.splits:
        splits.append(lab.retain_for(lab.default_forget))
    examples = {}
    for split in splits:
        records = lab.splits.get(split, [])
        k = min(n, len(records))
        examples[split] = [records[i * len(records) // k].question for i in range(k)]
    return examples


# -- measurements that need a model ----------------------------------------------------


def key_probability(model: OffsetModel, record: QARecord) -> float:
    """P(key | question, true answer up to the key) under ``model`` (teacher forcing).

    The key fact is the part of the answer that unlearning should make unlikely. Without
    a key (or when the answer does not spell it), the whole answer is scored.
    """
    answer, key = record.answer, record.key or record.answer
    at = answer.casefold().find(key.casefold())
    if at < 0:
        at, key = 0, answer
    # The space before the key goes with the key: byte-level tokenizers read " Lisbon".
    fmt = model.prompt_format
    before = fmt.answer(answer[:at])
    head = before.rstrip()
    context = fmt.prompt(record.question) + head
    continuation = before[len(head):] + answer[at:at + len(key)]
    (logps,) = model.score([context], [continuation])
    return math.exp(float(logps.sum()))


def key_accuracy(model: OffsetModel, records: Sequence[QARecord],
                 max_new_tokens: int = 32) -> float:
    """Share of greedy answers that state the record's key fact (or whole answer)."""
    if not records:
        return float("nan")
    answers = model.generate([model.prompt_format.prompt(r.question) for r in records], max_new_tokens)
    return sum(key_fact_hit(a, r.key or r.answer) for r, a in zip(records, answers)) / len(records)


@dataclass
class ForgetCheck:
    """What the fused model, read as it will be served, still says of the forget facts."""

    total: int  # forget facts asked
    stating: list[tuple[int, str, str]]  # (record's index, question, answer) per fact still stated
    alpha: float
    dead_zone: float

    @property
    def settings(self) -> str:
        return f"α {self.alpha:g}, dead zone {self.dead_zone:g}"

    def headline(self) -> str:
        if not self.stating:
            return f"the fused model states none of the {self.total} forget facts"
        return f"the fused model still states {len(self.stating)} of the {self.total} forget facts"


def forget_check(lab: Lab, offset: Offset, forget: Sequence[QARecord], config: TrainConfig) -> ForgetCheck:
    """Ask the fused model every forget question with ``offset`` (an ``Offset``) at its
    stored α and the lab's dead zone — as it will be served — and keep the answers that
    still state their fact (greedy, ``config.check_tokens`` tokens)."""
    from dataclasses import replace

    from ..method.train import stated_answers

    served = replace(config, use_alpha=offset.alpha, check_dead_zone=lab.dead_zone)
    stating = stated_answers(lab.base, lab.reference, offset.model, lab.tokenizer, forget, served,
                             prompt_format=lab.prompt_format)
    return ForgetCheck(len(forget), [(i, forget[i].question, stating[i]) for i in sorted(stating)],
                       float(offset.alpha), float(lab.dead_zone))


def alpha_sweep_rows(make_model: Callable[[float], OffsetModel], record: QARecord,
                     alphas: Sequence[float] = SWEEP_ALPHAS,
                     max_new_tokens: int = 32) -> list[dict]:
    """The greedy answer and the key's probability at each offset strength α.

    ``make_model(alpha)`` returns the fused model at that strength, e.g.
    ``lambda a: lab.model([("forget10-npo_gd", a)])``. Rows feed ``viz.alpha_sweep``.
    """
    rows = []
    for alpha in alphas:
        model = make_model(alpha)
        answer = model.generate(model.prompt_format.prompt(record.question), max_new_tokens)
        rows.append({
            "alpha": float(alpha),
            "answer": answer,
            "key_prob": key_probability(model, record),
            "key_in_answer": key_fact_hit(answer, record.key or record.answer),
        })
    return rows


def key_accuracy_probe(lab: Lab, forget: Sequence[QARecord], retain: Sequence[QARecord],
                       alpha: float = 1.0,
                       max_new_tokens: int = 32) -> Callable[[torch.nn.Module], dict]:
    """A function that measures forget/retain key-fact accuracy of an offset in training.

    Pass it to ``widgets.TrainMonitor(checkpoint=...)``: it is called with the module
    being trained every few steps. Keep the record lists short; each call decodes them.
    """
    def probe(offset: torch.nn.Module) -> dict:
        was_training = offset.training  # fusion puts models in eval mode; give it back
        model = OffsetModel(lab.base, lab.reference, [(offset, alpha)], lab.tokenizer,
                            prompt_format=lab.prompt_format)
        scores = {"forget_key_acc": key_accuracy(model, forget, max_new_tokens),
                  "retain_key_acc": key_accuracy(model, retain, max_new_tokens)}
        offset.train(was_training)
        return scores

    return probe
