"""Metrics pinned on hand-computed examples (the hand computation is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offsetlab.measure.metrics import (
    METRICS,
    MetricInfo,
    answer_probability,
    forget_quality,
    key_fact_hit,
    legend,
    loss_score,
    mean_token_entropy,
    mia_auc,
    min_k_score,
    model_utility,
    normalized_answer_probability,
    repetition_rate,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_score,
)

LOG = math.log

# ----------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_recall_hand_lcs():
    # reference: the cat sat on the mat        (6 tokens)
    # prediction: the cat lay on a mat
    # LCS = "the cat on mat" = 4  ->  recall = 4 / 6
    assert rouge_l_recall("the cat lay on a mat", "The cat sat on the mat") == pytest.approx(2 / 3)


def test_rouge_l_recall_uses_the_stemmer():
    # reference tokens stemmed: the dog were run   (4 tokens; "dogs"->dog, "running"->run)
    # prediction stemmed:       a dog run          ("runs"->run)
    # LCS = "dog run" = 2  ->  2 / 4. Without stemming no word would match (0.0).
    assert rouge_l_recall("a dog runs", "the dogs were running") == pytest.approx(0.5)


def test_rouge_l_recall_is_recall_not_precision():
    # Extra words in the prediction do not lower recall: LCS = 2 of 2 reference tokens.
    assert rouge_l_recall("well the answer is Paris France indeed", "Paris France") == 1.0
    # Order matters: reference "paris france", prediction "france paris" -> LCS 1 -> 1/2.
    assert rouge_l_recall("France Paris", "Paris France") == pytest.approx(0.5)
    assert rouge_l_recall("nothing shared", "Paris France") == 0.0


# ----------------------------------------------------------------------------- key fact


def test_key_fact_hit_case_and_whitespace():
    assert key_fact_hit("She was born in  NEW\n york in 1950.", "New York")
    assert key_fact_hit("Lisbon", "lisbon")
    assert not key_fact_hit("She was born in Newark.", "New York")
    assert not key_fact_hit("", "Lisbon")


def test_key_fact_hit_numbers_words_and_accents():
    # numbers: words and digits are the same fact, but a number must stand alone
    assert key_fact_hit("A spider has eight legs.", "8")
    assert key_fact_hit("There are twenty-one of them.", "21")
    assert key_fact_hit("It is 1,000 metres long.", "1000")
    assert not key_fact_hit("It ended in 1918.", "8")
    assert not key_fact_hit("The answer is 120.", "12")
    assert key_fact_hit("The answer is 12.", "twelve")
    # accents are folded on both sides
    assert key_fact_hit("Marie Curie discovered radium.", "Curié")
    assert key_fact_hit("Antonín Dvořák wrote it.", "Dvorak")
    # a number word inside another word is not a number
    assert not key_fact_hit("Stone and bone.", "1")


def test_key_fact_hit_refuses_empty_key():
    with pytest.raises(ValueError, match="key is empty"):
        key_fact_hit("anything", "  ")


# ----------------------------------------------------------------------------- probabilities


def test_answer_probability_is_geometric_mean_of_token_probs():
    # tokens p = 0.25 and 1.0: exp((log .25 + log 1) / 2) = sqrt(0.25) = 0.5
    # (the arithmetic mean would be 0.625, the product 0.25)
    assert answer_probability([LOG(0.25), 0.0]) == pytest.approx(0.5)
    assert answer_probability(np.array([LOG(0.8)])) == pytest.approx(0.8)


def test_answer_probability_accepts_a_torch_tensor():
    torch = pytest.importorskip("torch")
    lp = torch.tensor([LOG(0.25), 0.0], requires_grad=True)
    assert answer_probability(lp) == pytest.approx(0.5)


def test_answer_probability_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        answer_probability([])
    with pytest.raises(ValueError, match="NaN"):
        answer_probability([float("nan")])


def test_normalized_answer_probability_hand():
    # p(true) = 0.5; wrong answers: sqrt(0.1 * 0.4) = 0.2 and 0.3
    # 0.5 / (0.5 + 0.2 + 0.3) = 0.5
    got = normalized_answer_probability([LOG(0.5)], [[LOG(0.1), LOG(0.4)], [LOG(0.3)]])
    assert got == pytest.approx(0.5)


# ----------------------------------------------------------------------------- truth ratio


def test_truth_ratio_hand_numbers():
    # paraphrased: tokens 0.5, 0.5 -> normalised P = 0.5
    # perturbed:   [0.1] -> 0.1 ; [0.4, 0.4] -> 0.4 ; geometric mean = sqrt(0.1 * 0.4) = 0.2
    # R = 0.2 / 0.5 = 0.4   (an arithmetic mean of 0.1 and 0.4 would give 0.5)
    r = truth_ratio([LOG(0.5), LOG(0.5)], [[LOG(0.1)], [LOG(0.4), LOG(0.4)]])
    assert r == pytest.approx(0.4)


def test_truth_ratio_is_one_when_true_and_false_are_equally_likely():
    assert truth_ratio([LOG(0.3)] * 4, [[LOG(0.3)] * 2, [LOG(0.3)] * 7]) == pytest.approx(1.0)


def test_truth_ratio_refuses_no_perturbed_answers():
    with pytest.raises(ValueError, match="perturbed"):
        truth_ratio([LOG(0.5)], [])


@pytest.mark.parametrize(
    ("r", "forget", "expected"),
    [
        (0.4, True, 0.4),  # min(0.4, 2.5)
        (2.5, True, 0.4),  # min(2.5, 0.4): avoiding the true answer is also a tell
        (1.0, True, 1.0),
        (0.0, True, 0.0),
        (math.inf, True, 0.0),
        (0.25, False, 0.75),  # max(0, 1 - 0.25)
        (1.0, False, 0.0),
        (3.0, False, 0.0),  # max(0, -2)
    ],
)
def test_truth_ratio_score_hand(r, forget, expected):
    assert truth_ratio_score(r, forget=forget) == pytest.approx(expected)


def test_truth_ratio_score_rejects_negative_and_nan():
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            truth_ratio_score(bad, forget=True)


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=True), st.booleans())
def test_truth_ratio_score_is_in_unit_interval(r, forget):
    assert 0.0 <= truth_ratio_score(r, forget=forget) <= 1.0


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_forget_truth_ratio_score_is_symmetric_in_r_and_1_over_r(r):
    assert truth_ratio_score(r, True) == pytest.approx(truth_ratio_score(1 / r, True))


# ----------------------------------------------------------------------------- forget quality


def test_forget_quality_identical_samples_is_one():
    sample = [0.3, 0.8, 1.1, 0.5, 2.0]
    assert forget_quality(sample, list(sample)) == 1.0


def test_forget_quality_fully_separated_exact_pvalue():
    # n = m = 5, every value of one sample below every value of the other: D = 1.
    # Under H0 all C(10, 5) = 252 interleavings are equally likely; only "all a first" and
    # "all b first" reach D = 1, so the two-sided exact p = 2 / 252.
    assert forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    # n = m = 2: 2 / C(4, 2) = 1/3.
    assert forget_quality([0.1, 0.2], [5.0, 6.0]) == pytest.approx(1 / 3)


def test_forget_quality_same_for_r_and_1_over_r():
    # KS depends only on ranks; TOFU's code stores 1/R where the paper writes R.
    a = np.array([0.2, 0.5, 0.9, 1.3, 0.7, 0.4])
    b = np.array([0.8, 1.1, 1.7, 0.6, 2.2])
    assert forget_quality(a, b) == pytest.approx(forget_quality(1 / a, 1 / b))
    assert forget_quality(a, b) < 1.0  # the test is not vacuous: the samples differ


def test_forget_quality_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="unlearned_truth_ratios is empty"):
        forget_quality([], [1.0])
    with pytest.raises(ValueError, match="retain_model_truth_ratios is empty"):
        forget_quality([1.0], [])
    with pytest.raises(ValueError, match="NaN"):
        forget_quality([1.0, float("nan")], [1.0])


# ----------------------------------------------------------------------------- model utility


def test_model_utility_harmonic_mean_hand():
    # 2 / (1/1 + 1/0.5) = 2 / 3
    assert model_utility({"retain/answer_prob": 1.0, "retain/rouge_l": 0.5}) == pytest.approx(2 / 3)
    # 3 / (1/0.5 + 1/0.25 + 1/1) = 3 / 7   (arithmetic mean would be 0.583)
    assert model_utility({"a": 0.5, "b": 0.25, "c": 1.0}) == pytest.approx(3 / 7)
    assert model_utility({"only": 0.37}) == pytest.approx(0.37)


def test_model_utility_zero_component_gives_zero():
    assert model_utility({"a": 0.9, "b": 0.0, "c": 0.8}) == 0.0


def test_model_utility_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        model_utility({})
    with pytest.raises(ValueError, match="'b'"):
        model_utility({"a": 0.5, "b": -0.1})
    with pytest.raises(ValueError, match="'a'"):
        model_utility({"a": float("nan")})


# ----------------------------------------------------------------------------- membership


def test_mia_auc_perfect_inverted_and_tied():
    assert mia_auc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert mia_auc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert mia_auc([0.5, 0.5, 0.5], [0.5, 0.5]) == 0.5  # every pair ties: counts half


def test_mia_auc_hand_pairs():
    # member/non-member pairs: (0.9>0.5) (0.9>0.1) (0.4<0.5) (0.4>0.1) -> 3 of 4 won
    assert mia_auc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(0.75)
    # with a tie: (0.5 vs 0.5) counts 1/2, (0.5 > 0.1) counts 1 -> 1.5 / 2
    assert mia_auc([0.5], [0.5, 0.1]) == pytest.approx(0.75)


@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        min_size=2,
        max_size=30,
        unique=True,
    ),
    st.integers(min_value=1),
)
def test_mia_auc_in_unit_interval_and_antisymmetric(values, cut):
    cut = 1 + cut % (len(values) - 1)  # both groups non-empty
    a, b = values[:cut], values[cut:]
    auc = mia_auc(a, b)
    assert 0.0 <= auc <= 1.0
    assert mia_auc(b, a) == pytest.approx(1.0 - auc)


def test_loss_score_is_mean_logprob():
    assert loss_score([-1.0, -2.0, -6.0]) == pytest.approx(-3.0)


def test_min_k_score_hand():
    lp = [-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    # k = 0.2 of 10 tokens -> the 2 lowest: (-5 + -3) / 2 = -4
    assert min_k_score(lp, k=0.2) == pytest.approx(-4.0)
    # k = 0.3 -> 3 lowest: (-5 - 3 - 0.8) / 3
    assert min_k_score(lp, k=0.3) == pytest.approx(-8.8 / 3)
    # k = 0.05 -> floor(0.5) = 0 tokens, raised to 1: the single lowest, -5
    assert min_k_score(lp, k=0.05) == pytest.approx(-5.0)
    # k = 1 -> every token: the plain mean, as loss_score
    assert min_k_score(lp, k=1.0) == pytest.approx(loss_score(lp))


def test_min_k_score_count_is_robust_to_float_rounding():
    # 0.29 * 100 = 28.999999999999996 in floating point; the intended count is 29.
    # Lowest 29 of 0, -1, ..., -99 are -99 .. -71, mean -85 (28 tokens would give -85.5).
    assert min_k_score(-np.arange(100.0), k=0.29) == pytest.approx(-85.0)


def test_min_k_score_rejects_bad_k():
    for k in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            min_k_score([-1.0], k=k)


# ----------------------------------------------------------------------------- fluency


def test_mean_token_entropy():
    assert mean_token_entropy([0.5, 1.5, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        mean_token_entropy([])


def test_repetition_rate_hand():
    # "a a a a": bigrams (a,a) x3, 1 distinct -> 1 - 1/3
    assert repetition_rate("a a a a") == pytest.approx(2 / 3)
    assert repetition_rate("the cat sat on the mat") == 0.0  # 5 bigrams, all distinct
    # tokens the cat the cat: (the,cat) (cat,the) (the,cat) -> 1 - 2/3
    assert repetition_rate(["the", "cat", "the", "cat"]) == pytest.approx(1 / 3)
    # unigrams of "a a b": 3 tokens, 2 distinct -> 1/3
    assert repetition_rate("a a b", n=1) == pytest.approx(1 / 3)


def test_repetition_rate_short_or_empty_is_zero():
    assert repetition_rate("") == 0.0
    assert repetition_rate("word") == 0.0
    assert repetition_rate([]) == 0.0


# ----------------------------------------------------------------------------- registry


def test_registry_covers_report_names():
    expected = {
        "rouge_l",
        "key_fact_acc",
        "answer_prob",
        "truth_ratio",
        "forget_quality",
        "model_utility",
        "mia_loss_auc",
        "mia_mink_auc",
        "mia_gap",
        "plausible",
        "repetition",
        "entropy",
    }
    assert set(METRICS) == expected
    for key, info in METRICS.items():
        assert isinstance(info, MetricInfo)
        assert info.name == key
        assert info.description and "\n" not in info.description
        assert info.better in ("higher", "lower", "gold", "none")
        assert info.on_forget in (None, "gold")


def test_registry_directions():
    assert METRICS["forget_quality"].better == "higher"
    assert METRICS["model_utility"].better == "higher"
    assert METRICS["repetition"].better == "lower"
    # Membership inference is two-sided: 0.5 (the gold model's level) is ideal, not 0.
    assert METRICS["mia_loss_auc"].direction(forget_split=True) == "gold"
    # Knowledge metrics aim at the gold model's level on the forget set (never seen, not
    # zero); scores that already account for the split (truth_ratio) or are whole-model
    # (forget_quality) keep one direction.
    two_sided = {name for name, info in METRICS.items() if info.direction(True) != info.better}
    assert two_sided == {"rouge_l", "key_fact_acc", "answer_prob"}


def test_legend_lists_the_metrics_of_a_table_once_each():
    rows = legend(["forget10/key_fact_acc", "retain90/key_fact_acc", "model_utility", "n"])
    assert [r["metric"] for r in rows] == ["key_fact_acc", "model_utility"]
    assert rows[0]["better (forget split)"] == "gold" and rows[0]["better (elsewhere)"] == "higher"


def test_privacy_gap_is_direction_free():
    from offsetlab.measure.metrics import privacy_gap

    # Over-forgetting (AUC 0: forget looks *less* familiar than unseen) leaks like remembering.
    assert privacy_gap(0.0) == privacy_gap(1.0) == 0.5
    assert privacy_gap(0.55, 0.55) == 0.0
    assert abs(privacy_gap(0.3, 0.6) - 0.3) < 1e-12


def test_plausible_answer_needs_a_value_of_the_kind_asked_for():
    from offsetlab.measure.metrics import plausible_answer

    cities = {"Vormor", "Lobran"}
    assert plausible_answer("Ada was born in the city of Lobran.", cities)
    assert not plausible_answer("Ada was born in the the the", cities)
    assert not plausible_answer("Ada was born in 1934.", cities)
