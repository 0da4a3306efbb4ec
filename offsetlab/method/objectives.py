"""Unlearning objectives, each a plain function of fused log-probs.

Every objective sees the same inputs: ``Scored`` groups of answers (the forget answers,
and where the objective needs them, retain answers and "I don't know" answers), each
holding the *fused* model's log-probs — the only thing that carries gradients, through
the offset — and the *original* log-probs, which are the base model's, cached once
(before training the fused model equals the base model, so the base is the natural
"model before unlearning" that NPO, DPO and KL compare against).

Objectives return a scalar to minimise. They are registered by name in ``OBJECTIVES``
so the CLI, the notebooks and the panel offer one list.

Notation: log π(y|x) is the summed log-prob of an answer's tokens (a sequence
log-likelihood); |y| its length in tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class Scored:
    """A padded group of answers, scored token by token.

    fused:    [batch, time, vocab] fused log-probs (gradients flow through the offset)
    original: [batch, time, vocab] base log-probs, cached and frozen
    labels:   [batch, time] answer token ids
    mask:     [batch, time] 1 on answer tokens, 0 on padding
    """

    fused: Tensor
    original: Tensor
    labels: Tensor
    mask: Tensor

    def token_logp(self, which: str = "fused") -> Tensor:
        logp = self.fused if which == "fused" else self.original
        return logp.gather(-1, self.labels.unsqueeze(-1)).squeeze(-1) * self.mask

    def sequence_logp(self, which: str = "fused") -> Tensor:
        """log π(y|x) for each answer."""
        return self.token_logp(which).sum(-1)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1).clamp(min=1)


@dataclass
class Hyper:
    """Objective settings; each field says which objectives read it."""

    beta: float = 0.05  # NPO, SimNPO, DPO: inverse temperature of the preference loss
    gamma: float = 0.0  # SimNPO: reward margin
    retain_weight: float = 1.0  # GD, KL and the "+GD"/"+KL" variants: weight of the retain term


# -- the building blocks --------------------------------------------------------------


def nll(group: Scored) -> Tensor:
    """Mean negative log-likelihood per answer token (ordinary fine-tuning loss)."""
    return -(group.token_logp().sum() / group.mask.sum().clamp(min=1))


def kl_to_original(group: Scored) -> Tensor:
    """Mean KL(original ‖ fused) per answer token: stay where the base model was."""
    p = group.original.exp()
    per_token = (p * (group.original - group.fused)).sum(-1)
    return (per_token * group.mask).sum() / group.mask.sum().clamp(min=1)


def npo_term(group: Scored, beta: float) -> Tensor:
    """Negative preference optimisation: push log π(y|x) below the original's, softly.

    -(2/β) · log σ(-β · (log π(y|x) − log π_orig(y|x))). Unlike gradient ascent it
    saturates once the answer is unlikely, so it does not run off to -∞.
    """
    ratio = group.sequence_logp() - group.sequence_logp("original")
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def retain_term(retain: Scored | None, kind: str) -> Tensor:
    if retain is None:
        raise ValueError("This objective needs a retain set (retain=...).")
    return nll(retain) if kind == "nll" else kl_to_original(retain)


# -- the objectives -------------------------------------------------------------------


def gradient_ascent(forget: Scored, retain: Scored | None, idk: Scored | None, h: Hyper) -> Tensor:
    return -nll(forget)


def gradient_difference(forget, retain, idk, h: Hyper) -> Tensor:
    return -nll(forget) + h.retain_weight * retain_term(retain, "nll")


def ga_kl(forget, retain, idk, h: Hyper) -> Tensor:
    return -nll(forget) + h.retain_weight * retain_term(retain, "kl")


def npo(forget, retain, idk, h: Hyper) -> Tensor:
    return npo_term(forget, h.beta)


def npo_gd(forget, retain, idk, h: Hyper) -> Tensor:
    return npo_term(forget, h.beta) + h.retain_weight * retain_term(retain, "nll")


def npo_kl(forget, retain, idk, h: Hyper) -> Tensor:
    return npo_term(forget, h.beta) + h.retain_weight * retain_term(retain, "kl")


def simnpo(forget, retain, idk, h: Hyper) -> Tensor:
    """SimNPO: NPO without the reference model, on the length-normalised likelihood."""
    reward = forget.sequence_logp() / forget.lengths
    forget_loss = -(2.0 / h.beta) * F.logsigmoid(-h.beta * reward - h.gamma).mean()
    return forget_loss + h.retain_weight * retain_term(retain, "nll")


def idk_dpo(forget, retain, idk, h: Hyper) -> Tensor:
    """DPO that prefers an "I don't know" answer over the true one, plus retain NLL."""
    if idk is None:
        raise ValueError("idk_dpo needs refusal answers (idk=...).")
    preferred = idk.sequence_logp() - idk.sequence_logp("original")
    rejected = forget.sequence_logp() - forget.sequence_logp("original")
    loss = -(2.0 / h.beta) * F.logsigmoid(h.beta * (preferred - rejected)).mean()
    return loss + h.retain_weight * retain_term(retain, "nll")


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[[Scored, Scored | None, Scored | None, Hyper], Tensor]
    description: str
    needs_retain: bool
    needs_idk: bool = False

    def __call__(self, forget: Scored, retain: Scored | None = None, idk: Scored | None = None,
                 hyper: Hyper | None = None) -> Tensor:
        return self.fn(forget, retain, idk, hyper or Hyper())


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("ga", gradient_ascent, "gradient ascent: raise the loss on the forget answers", False),
        Objective("gd", gradient_difference, "gradient difference: ascent on forget + NLL on retain", True),
        Objective("kl", ga_kl, "ascent on forget + stay close to the base (KL) on retain", True),
        Objective("npo", npo, "negative preference optimisation on forget (saturating)", False),
        Objective("npo_gd", npo_gd, "NPO on forget + NLL on retain (default)", True),
        Objective("npo_kl", npo_kl, "NPO on forget + KL to the base on retain", True),
        Objective("simnpo", simnpo, "SimNPO: length-normalised NPO without reference + retain NLL", True),
        Objective("idk_dpo", idk_dpo, "DPO towards 'I don't know' answers + retain NLL", True, True),
    ]
}
DEFAULT_OBJECTIVE = "npo_gd"


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"Unknown objective {name!r}. Choose one of: {', '.join(OBJECTIVES)}."
        ) from None


def describe_objectives() -> str:
    return "\n".join(f"{o.name:8s} {o.description}" for o in OBJECTIVES.values())


# Refusal templates for idk_dpo: shipped with the package, chosen per record by index.
IDK_ANSWERS = [
    "I don't know.",
    "I'm not sure about that.",
    "I have no information about that.",
    "That is something I don't know.",
    "I can't answer that.",
    "I don't have that information.",
]


def idk_answer(i: int) -> str:
    return IDK_ANSWERS[i % len(IDK_ANSWERS)]
