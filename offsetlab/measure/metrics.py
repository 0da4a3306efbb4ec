"""Metrics used in LLM unlearning, as small pure functions.

The definitions follow TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for
LLMs", arXiv 2401.06121) and its successor framework open-unlearning. Every function
takes plain Python / numpy values (a 1-D torch tensor also works: it is detached and
copied to numpy), so the same numbers can be computed in a test, a notebook or the panel
without loading a model.

Conventions:

* "token log-probs" are natural-log probabilities of the answer tokens only (not the
  question), one per token, as a model scores a fixed answer (teacher forcing).
* Probabilities of whole answers are *length-normalised*: the geometric mean of the
  per-token probabilities, ``exp(mean log-prob)``. Otherwise long answers would always
  look improbable.

``METRICS`` lists every metric name that reports use, with a one-line description and
the direction in which a value is better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..method.calibrate import mentions, normalise_space

# scipy, sklearn and rouge_score are imported inside the functions that use them:
# importing them takes about a second that the CLI and panel should not pay at start-up.

__all__ = [
    "METRICS",
    "MetricInfo",
    "legend",
    "answer_probability",
    "forget_quality",
    "key_fact_hit",
    "loss_score",
    "mean_token_entropy",
    "mia_auc",
    "min_k_score",
    "plausible_answer",
    "privacy_gap",
    "model_utility",
    "normalized_answer_probability",
    "repetition_rate",
    "rouge_l_recall",
    "truth_ratio",
    "truth_ratio_score",
]


# --------------------------------------------------------------------------- helpers


def _as_1d(values: Any, what: str) -> np.ndarray:
    """Plain 1-D float64 array from a list, numpy array or torch tensor; refuses empty/NaN."""
    if hasattr(values, "detach"):  # a torch tensor: no torch import needed for duck typing
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what} is empty: need at least one value")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains NaN")
    return arr


# --------------------------------------------------------------------------- answers


_ROUGE_SCORER = None  # built once, on first use


def _rouge_scorer():
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE_SCORER


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: share of the reference's words that the prediction reproduces in order.

    ``LCS(prediction, reference) / len(reference)`` over lower-cased, Porter-stemmed word
    tokens (the ``rouge-score`` package, as in TOFU). 1.0 means every reference word
    appears, in order, in the prediction; extra words in the prediction are not
    penalised (that would be precision). On the forget set lower is better.
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].recall)


def key_fact_hit(generated: str, key: str) -> bool:
    """True when the key fact (e.g. "Lisbon") appears in the generated answer.

    Plain substring containment after case-folding and collapsing whitespace in both.
    Exact match and ROUGE overstate forgetting (a garbled answer can still leak the fact),
    so the key fact is the sharper test. The mean over questions is ``key_fact_acc``.
    """
    if not normalise_space(key):
        # An empty key is contained in every string and would count as a leak everywhere.
        raise ValueError("key is empty (or only whitespace)")
    return mentions(generated, key)


def plausible_answer(generated: str, values) -> bool:
    """True when the generated answer states *some* value of the kind asked for — any of
    ``values`` (e.g. every city the world uses for "Where was X born?").

    A model that never saw a fact guesses one of the right kind ("born in the city of
    Lorvan"); one damaged by unlearning often states none ("born in the the the").
    """
    return any(key_fact_hit(generated, v) for v in values)


def answer_probability(token_logprobs: Sequence[float]) -> float:
    """Length-normalised probability of an answer: ``exp(mean token log-prob)``.

    The geometric mean of the per-token probabilities, in [0, 1]; 0.5 means "on average
    each answer token had probability 0.5". TOFU's "Prob." on the forget/retain sets.
    """
    return float(np.exp(_as_1d(token_logprobs, "token_logprobs").mean()))


def normalized_answer_probability(
    correct_logprobs: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]
) -> float:
    """Probability of the correct answer relative to wrong ones (TOFU's "Prob." on
    real-authors / world-facts): ``p(correct) / (p(correct) + sum_i p(perturbed_i))``.

    Each ``p`` is length-normalised (``answer_probability``). It reads like a
    multiple-choice accuracy: 1.0 means all probability mass on the correct answer.
    """
    if len(perturbed_logprobs) == 0:
        raise ValueError("perturbed_logprobs is empty: need at least one wrong answer")
    p_true = answer_probability(correct_logprobs)
    p_false = sum(answer_probability(lp) for lp in perturbed_logprobs)
    return p_true / (p_true + p_false)


# --------------------------------------------------------------------------- truth ratio


def truth_ratio(
    paraphrased_logprobs: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]
) -> float:
    """TOFU's truth ratio R = P(wrong answers) / P(paraphrased correct answer).

    ``R = GM_i[ P(perturbed_i)^(1/len_i) ] / P(paraphrased)^(1/len)``, i.e.
    ``exp( mean_i(mean token log-prob of perturbed_i) - mean token log-prob of paraphrased)``.
    R < 1: the model prefers the true answer (it knows the fact); R ≈ 1: it cannot tell
    true from false (the fact is forgotten); R > 1: it prefers the wrong answers.
    Paraphrased / perturbed answers are used so that memorised wording does not count.
    (For real-authors / world-facts, where no paraphrase exists, pass the correct answer.)
    """
    if len(perturbed_logprobs) == 0:
        raise ValueError("perturbed_logprobs is empty: need at least one wrong answer")
    true_mean = _as_1d(paraphrased_logprobs, "paraphrased_logprobs").mean()
    false_means = [
        _as_1d(lp, f"perturbed_logprobs[{i}]").mean() for i, lp in enumerate(perturbed_logprobs)
    ]
    # Averaging mean log-probs == geometric mean of the normalised probabilities.
    return float(np.exp(np.mean(false_means) - true_mean))


def truth_ratio_score(r: float, forget: bool) -> float:
    """Turn a truth ratio R into a score in [0, 1] where higher is better (TOFU's reported
    "Truth Ratio").

    * forget split: ``min(R, 1/R)`` -- 1.0 when true and wrong answers are equally likely
      (forgotten without an obvious "anti-answer"), towards 0 when the model still prefers
      the true answer *or* systematically avoids it.
    * other splits (retain, real authors, world facts): ``max(0, 1 - R)`` -- 1.0 when the
      model puts no weight on wrong answers, 0 when it prefers them.

    The forget quality KS test uses the raw R values, not this score (see
    ``forget_quality``). Same choice as TOFU's ``aggregate_eval_stat.py`` and
    open-unlearning's ``truth_ratio`` aggregators (``closer_to_1_better`` /
    ``true_better``); TOFU's code stores 1/R internally, which leaves all of this unchanged.
    """
    if math.isnan(r) or r < 0:
        raise ValueError(f"truth ratio must be >= 0, got {r}")
    if forget:
        if r == 0 or math.isinf(r):  # min(0, inf) and min(inf, 0): fully one-sided
            return 0.0
        return float(min(r, 1.0 / r))
    return float(max(0.0, 1.0 - r))


def forget_quality(
    unlearned_truth_ratios: Sequence[float], retain_model_truth_ratios: Sequence[float]
) -> float:
    """TOFU's forget quality: how indistinguishable the unlearned model is from a model
    that never saw the forget set.

    The two-sided Kolmogorov-Smirnov p-value (``scipy.stats.ks_2samp``, exact method for
    small samples) between the raw truth ratios R on the forget set of the unlearned model
    and of the retain-only model. High (near 1) = the two distributions look the same;
    TOFU treats p > 0.05 as "forgotten". Identical samples give 1.0. Because the KS
    statistic only depends on the ranks, using R or 1/R gives the same p-value.
    """
    from scipy.stats import ks_2samp

    a = _as_1d(unlearned_truth_ratios, "unlearned_truth_ratios")
    b = _as_1d(retain_model_truth_ratios, "retain_model_truth_ratios")
    return float(ks_2samp(a, b, alternative="two-sided").pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """TOFU's model utility: harmonic mean of the components it is given.

    TOFU uses nine components: {retain, real authors, world facts} x {probability,
    ROUGE-L recall, truth-ratio score}, each in [0, 1] with higher = better; pass what you
    have (e.g. ``{"retain/answer_prob": 0.9, "world_facts/rouge_l": 0.8, ...}``). The
    harmonic mean is dragged down by the worst component, so breaking any one ability
    shows. Zero rule: any component equal to 0 makes the utility 0.0 (the limit of the
    harmonic mean), rather than a division by zero. Negative or NaN components and an
    empty mapping raise ``ValueError``.
    """
    if not values:
        raise ValueError("model_utility needs at least one component value")
    for name, v in values.items():
        if math.isnan(v) or v < 0:
            raise ValueError(f"model_utility component {name!r} must be >= 0, got {v}")
    if any(v == 0 for v in values.values()):
        return 0.0
    return float(len(values) / sum(1.0 / v for v in values.values()))


# --------------------------------------------------------------------------- membership


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """Membership-inference ROC AUC: how well a score separates training members from
    non-members (members labelled 1; higher score = "more likely a member").

    1.0: every member scores above every non-member (the model clearly remembers them);
    0.5: indistinguishable (what unlearning aims for on forget vs. never-seen data);
    well below 0.5: the forget set now looks *less* familiar than unseen data, which
    also gives membership away. Ties count half.
    """
    from sklearn.metrics import roc_auc_score

    members = _as_1d(member_scores, "member_scores")
    nonmembers = _as_1d(nonmember_scores, "nonmember_scores")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return float(roc_auc_score(labels, np.concatenate([members, nonmembers])))


def privacy_gap(auc: float, reference_auc: float = 0.5) -> float:
    """Direction-free privacy score: ``|AUC − AUC_ref|``, 0 is best.

    ``reference_auc`` is what a model that never saw the forget set scores (the gold model's
    AUC where there is one; 0.5 for two sets drawn alike). Unlike the AUC itself it also
    flags over-forgetting: an AUC of 0.0 leaks membership as much as 1.0 (cf. MUSE's
    PrivLeak, ``(AUC − AUC_ref) / AUC_ref``, which keeps the sign).
    """
    return float(abs(auc - reference_auc))


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack score: mean token log-prob of the text (= minus the usual loss).

    Higher = the model finds the text easy = more likely it was trained on it.
    """
    return float(_as_1d(token_logprobs, "token_logprobs").mean())


def min_k_score(token_logprobs: Sequence[float], k: float = 0.2) -> float:
    """Min-K% Prob score (Shi et al., arXiv 2310.16789): mean log-prob of the k fraction
    of tokens the model found *least* likely. Higher = more likely a member.

    Unseen text tends to contain a few very surprising tokens; memorised text does not,
    so looking only at the worst tokens separates the two better than the mean.
    Uses ``floor(k * n)`` tokens, but at least one.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    arr = _as_1d(token_logprobs, "token_logprobs")
    # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    count = max(1, math.floor(k * arr.size + 1e-9))
    return float(np.sort(arr)[:count].mean())


# --------------------------------------------------------------------------- fluency


def mean_token_entropy(entropies: Sequence[float]) -> float:
    """Mean of per-token predictive entropies (nats) along a generation.

    Context, not a goal: near 0 with a repetitive output usually means degeneration; very
    high means the model is guessing among many tokens.
    """
    return float(_as_1d(entropies, "entropies").mean())


def repetition_rate(text: str | Sequence[str], n: int = 2) -> float:
    """Share of repeated n-grams: ``1 - distinct n-grams / all n-grams``.

    0.0 for text without a repeated n-gram (and for text shorter than n tokens); close to
    1 for a degenerate loop such as "the the the the". A string is split on whitespace;
    a list is taken as tokens.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = text.split() if isinstance(text, str) else list(text)
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not ngrams:
        return 0.0
    return 1.0 - len(set(ngrams)) / len(ngrams)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricInfo:
    """What a metric name in a report means, and which way is better.

    ``better`` is where a good model lies on data it should still know (retain, world
    facts) or for whole-model scores: ``"higher"``, ``"lower"``, ``"gold"`` (closest to
    the model that never saw the forget set) or ``"none"`` (context only). On the forget
    set knowledge metrics are two-sided: the target is the gold model's level ("never
    seen"), not zero — a forget set that looks *less* familiar than unseen data is a
    privacy leak too. ``on_forget`` says so for each metric.
    """

    name: str
    description: str
    better: str
    on_forget: str | None = None  # the direction on forget splits, when it differs

    def direction(self, forget_split: bool = False) -> str:
        return (self.on_forget or self.better) if forget_split else self.better


def legend(names: Sequence[str]) -> list[dict[str, str]]:
    """One row per known metric among ``names`` (a report's columns may be ``split/metric``):
    its description and which way is better, on forget splits and elsewhere."""
    rows, seen = [], set()
    for column in names:
        name = column.rsplit("/", 1)[-1]
        if name in METRICS and name not in seen:
            seen.add(name)
            info = METRICS[name]
            rows.append({"metric": name, "meaning": info.description,
                         "better (forget split)": info.direction(forget_split=True),
                         "better (elsewhere)": info.better})
    return rows


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in [
        MetricInfo("rouge_l", "ROUGE-L recall of the generated answer against the reference",
                   "higher", on_forget="gold"),
        MetricInfo("key_fact_acc", "share of generated answers that contain the key fact",
                   "higher", on_forget="gold"),
        MetricInfo("answer_prob", "length-normalised probability of the reference answer",
                   "higher", on_forget="gold"),
        MetricInfo("truth_ratio", "truth-ratio score: forget min(R, 1/R), else max(0, 1 - R)",
                   "higher"),
        MetricInfo("forget_quality",
                   "KS-test p-value of forget-set truth ratios vs. a retain-only model", "higher"),
        MetricInfo("model_utility",
                   "harmonic mean of probability, ROUGE and truth ratio on retained data",
                   "higher"),
        MetricInfo("mia_loss_auc",
                   "membership-inference AUC of the LOSS score on the key-fact tokens, forget vs. "
                   "unseen (gold ≈ 0.5)", "gold"),
        MetricInfo("mia_mink_auc",
                   "membership-inference AUC of the Min-K% Prob score on the key-fact tokens, "
                   "forget vs. unseen (gold ≈ 0.5)", "gold"),
        MetricInfo("mia_gap",
                   "|MIA AUC − AUC of a model that never saw the forget set| (gold's, else 0.5)",
                   "lower"),
        MetricInfo("plausible",
                   "share of generated answers stating a value of the kind asked for (any the "
                   "world uses)", "higher"),
        MetricInfo("repetition", "share of repeated word bigrams in generations (degeneration)",
                   "lower"),
        MetricInfo("entropy", "mean next-token entropy (nats) along generations; context only",
                   "none"),
    ]
}
