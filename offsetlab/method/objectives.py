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
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .calibrate import FALLBACK_LEVEL


@dataclass
class Scored:
    """A padded group of answers, scored token by token.

    fused:    [batch, time, vocab] fused log-probs (gradients flow through the offset)
    original: [batch, time, vocab] base log-probs, cached and frozen
    labels:   [batch, time] answer token ids
    mask:     [batch, time] 1 on answer tokens, 0 on padding
    key_mask: [batch, time] 1 on the tokens that spell the key fact (None: every answer token)
    """

    fused: Tensor
    original: Tensor
    labels: Tensor
    mask: Tensor
    key_mask: Tensor | None = None
    levels: Tensor | None = None  # [batch, time] never-seen log-prob per key token (0 elsewhere)
    target: Tensor | None = None  # [batch, time, vocab] log-probs to forget towards (``stranger``)

    @property
    def keys(self) -> Tensor:
        return self.key_mask if self.key_mask is not None else self.mask

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
    # calibrated: the key-token log-prob a model that never saw the facts gives them
    # (``calibrate.never_seen_level`` on non-member records)
    level: float = FALLBACK_LEVEL


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


def masked_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def token_levels(group: Scored, level: float) -> Tensor:
    """[batch, time] the log-prob each answer token should not exceed: its own never-seen
    level where the batch has them (``calibrate.never_seen_levels``), ``level`` on every
    key token otherwise, and 0 (no limit) off the key fact."""
    if group.levels is not None:
        return group.levels
    return torch.where(group.keys > 0, torch.full_like(group.keys, level), torch.zeros_like(group.keys))


def capped_target(group: Scored, level: float) -> Tensor:
    """The distribution to forget towards (log-probs, frozen): the base's, except that on
    key-fact tokens the true token's log-prob is lowered to its never-seen level (where it
    is above; ``token_levels``) and the freed mass goes to the other tokens in the base's
    own proportions.

    So the base's runner-ups — other cities for a birthplace, other years for a year —
    become likely, and tokens outside the fact (the template, the name copied from the
    question) stay exactly where the base had them. Forgetting has a floor: an answer
    is never pushed below what a model that never saw it would give it (UNDIAL-like,
    with the target set by data rather than by a fixed logit penalty).
    """
    original, labels = group.original, group.labels.unsqueeze(-1)
    true_lp = original.gather(-1, labels).squeeze(-1)
    # Limits too close to 0 would ask for nothing but rounding: leave those tokens alone.
    cap = token_levels(group, level).clamp(max=-1e-3)
    new_lp = torch.minimum(true_lp, cap)
    # log of the mass the base gives every token but the true one
    others = original.scatter(-1, labels, float("-inf")).logsumexp(-1)
    shift = torch.log(-torch.expm1(new_lp)) - others
    target = (original + shift.unsqueeze(-1)).scatter(-1, labels, new_lp.unsqueeze(-1))
    lower = (group.keys > 0) & (true_lp > cap) & (token_levels(group, level) < -1e-3)
    return torch.where(lower.unsqueeze(-1), target, original).detach()


def kl_to(target: Tensor, group: Scored) -> Tensor:
    """Mean KL(target ‖ fused) per answer token."""
    per_token = (target.exp() * (target - group.fused)).sum(-1)
    return masked_mean(per_token, group.mask)


def choice_tokens(group: Scored, level: float) -> Tensor:
    """[batch, time] 1 on the key tokens where a never-seen model is unsure (its level is
    below log ½): where a value of the kind asked for is chosen."""
    return ((group.keys > 0) & (token_levels(group, level) < -0.69)).float()


def inverted_hinge(group: Scored, level: float) -> Tensor:
    """LoKU's inverted hinge on the fact's choice tokens: 1 + p(true) − max p(other token).

    Pushes the true token just below the most likely alternative and no further: its
    gradient vanishes once another token has taken the lead.
    """
    p = group.fused.exp()
    labels = group.labels.unsqueeze(-1)
    p_true = p.gather(-1, labels).squeeze(-1)
    p_other = p.scatter(-1, labels, 0.0).max(-1).values
    return masked_mean(1 + p_true - p_other, choice_tokens(group, level))


def keep_the_rest(group: Scored, level: float) -> Tensor:
    """Mean KL(original ‖ fused) on the answer tokens outside the fact's choice tokens."""
    p = group.original.exp()
    per_token = (p * (group.original - group.fused)).sum(-1)
    return masked_mean(per_token, group.mask * (1 - choice_tokens(group, level)))


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


def calibrated(forget, retain, idk, h: Hyper) -> Tensor:
    """Forget towards ``capped_target`` (the never-seen level on the fact, the base
    elsewhere) + retain NLL. Bounded on both sides: if the fact falls below the level it
    is pulled back up."""
    return kl_to(capped_target(forget, h.level), forget) + h.retain_weight * retain_term(retain, "nll")


def hinge(forget, retain, idk, h: Hyper) -> Tensor:
    """Inverted hinge on the fact's tokens, KL to the base on the rest of the answer, +
    retain NLL."""
    return (inverted_hinge(forget, h.level) + keep_the_rest(forget, h.level)
            + h.retain_weight * retain_term(retain, "nll"))


def stranger(forget, retain, idk, h: Hyper) -> Tensor:
    """Answer about the forgotten subject as the base answers about a stranger: on the
    fact's tokens, KL to the base's distribution for the same question asked about
    invented people (``train.stranger_targets``); elsewhere, KL to the base; + retain NLL.

    The target *is* the never-seen behaviour, token by token — the base's prior over
    cities for "born in the city of", over digits for a year — so forgetting stops there.
    """
    return toward_strangers(forget, h) + h.retain_weight * retain_term(retain, "nll")


def stranger_kl(forget, retain, idk, h: Hyper) -> Tensor:
    """``stranger`` with the retain answers held where the base has them (KL), not made
    surer (NLL): for a base that is itself unsure of some retain answers — a real model —
    an NLL pull moves the whole model."""
    return toward_strangers(forget, h) + h.retain_weight * retain_term(retain, "kl")


def toward_strangers(forget: Scored, h: Hyper) -> Tensor:
    """The forget term of ``stranger`` and ``stranger_kl``: KL to the strangers' target,
    capped at the never-seen level. A few strangers can agree on the true value by chance
    (a memorising base answers an unknown name with some author's facts): the level keeps
    the target from exceeding what non-members get on average. Without a target (no
    non-members given) the base itself, capped, as ``calibrated`` does."""
    source = forget if forget.target is None else replace(forget, original=forget.target)
    return kl_to(capped_target(source, h.level), forget)


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[[Scored, Scored | None, Scored | None, Hyper], Tensor]
    description: str
    needs_retain: bool
    needs_idk: bool = False
    needs_strangers: bool = False

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
        Objective("npo_gd", npo_gd, "NPO on forget + NLL on retain (the default until wave 2)", True),
        Objective("npo_kl", npo_kl, "NPO on forget + KL to the base on retain", True),
        Objective("simnpo", simnpo, "SimNPO: length-normalised NPO without reference + retain NLL", True),
        Objective("idk_dpo", idk_dpo, "DPO towards 'I don't know' answers + retain NLL", True, True),
        Objective("calibrated", calibrated,
                  "lower only the fact's tokens to the never-seen level, keep the rest + retain NLL", True),
        Objective("hinge", hinge, "inverted hinge on the fact's tokens, KL on the rest + retain NLL", True),
        Objective("stranger", stranger,
                  "answer the fact as the base does about invented people, keep the rest + retain NLL "
                  "(default)",
                  True, needs_strangers=True),
        Objective("stranger_kl", stranger_kl,
                  "stranger with a KL retain term: retain answers held at the base's, not raised",
                  True, needs_strangers=True),
    ]
}
DEFAULT_OBJECTIVE = "stranger"  # chosen by benchmarks/sweep_calibrated.py


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"Unknown objective {name!r}. Choose one of: {', '.join(OBJECTIVES)}."
        ) from None


def describe_objectives() -> str:
    """One line per objective, its name in a column as wide as the longest."""
    width = max(len(name) for name in OBJECTIVES)
    return "\n".join(f"{o.name:{width}s}  {o.description}" for o in OBJECTIVES.values())


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
