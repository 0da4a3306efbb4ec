"""What the front ends compute: comparisons, key probabilities, sweeps, training in a lab."""

import math

import pytest
from conftest import FORGET_QUESTION, make_lab

from offsetlab.frontends import explore
from offsetlab.method.prompts import QA
from offsetlab.method.trace import Trace, TraceStep
from offsetlab.method.train import TrainConfig


@pytest.fixture
def lab():
    # A fresh lab per test: tests add offsets, and none may see another's.
    return make_lab()


def chose(*ids) -> Trace:
    steps = [TraceStep(i, t, str(t), [t], [str(t)], [0.0], [0.0], [], [0.0], [0.0],
                       0.0, 0.0, 0.0, 0.0) for i, t in enumerate(ids)]
    return Trace("", "", [], [], steps)


def test_first_divergence():
    assert explore.first_divergence(chose(1, 2, 3), chose(1, 2, 3)) is None
    assert explore.first_divergence(chose(1, 2, 3), chose(1, 5, 3)) == 1
    assert explore.first_divergence(chose(1, 2), chose(1, 2, 3)) == 2  # a prefix: parts at its end
    assert explore.first_divergence(chose(), chose(4)) == 0


def test_compare_uses_the_same_decoding_for_both(lab):
    c = explore.compare(lab, FORGET_QUESTION, "random", 1.0, explore.Decoding(max_new_tokens=5))
    assert c.base.alphas == [] and c.fused.alphas == [1.0] and c.fused.offset_names == ["random"]
    assert c.base.prompt == c.fused.prompt == QA.prompt(FORGET_QUESTION)
    assert c.divergence == 0 and c.base.text != c.fused.text
    # Without α the offset's own strength is used; α = 0 is the base exactly.
    assert explore.compare(lab, FORGET_QUESTION, "random").fused.alphas == [1.0]
    zero = explore.compare(lab, FORGET_QUESTION, "random", 0.0, explore.Decoding(max_new_tokens=5))
    assert zero.divergence is None and zero.fused.text == c.base.text
    sampled = explore.Decoding(max_new_tokens=5, do_sample=True, seed=3)
    assert (explore.compare(lab, FORGET_QUESTION, "random", 1.0, sampled).fused.text
            == explore.compare(lab, FORGET_QUESTION, "random", 1.0, sampled).fused.text)


def test_key_probability_scores_the_key_after_the_true_answer_so_far(lab):
    record = lab.splits["forget10"][0]  # "Alra was born in red city", key "red"
    model = lab.model()
    (expected,) = model.score([QA.prompt(record.question) + " Alra was born in"], [" red"])
    assert explore.key_probability(model, record) == pytest.approx(math.exp(float(expected.sum())))
    whole = type(record)(record.question, record.answer)  # no key: the whole answer counts
    (answer,) = model.score([QA.prompt(record.question)], [" " + record.answer])
    assert explore.key_probability(model, whole) == pytest.approx(math.exp(float(answer.sum())))


def test_alpha_sweep_rows(lab):
    record = lab.splits["forget10"][0]
    rows = explore.alpha_sweep_rows(lambda a: lab.model([("random", a)]), record, [0.0, 2.0],
                                    max_new_tokens=4)
    assert [r["alpha"] for r in rows] == [0.0, 2.0]
    assert rows[0]["answer"] == lab.model().generate(QA.prompt(record.question), 4)
    assert rows[0]["key_prob"] == pytest.approx(explore.key_probability(lab.model(), record))
    assert all(isinstance(r["key_in_answer"], bool) for r in rows)


def test_lab_train_adds_under_a_new_name_and_the_probe_keeps_training_mode():
    lab = make_lab()
    config = TrainConfig(objective="ga", steps=2)
    seen = []
    first = lab.train("forget10", config=config, callback=lambda e: seen.append(e["step"]))
    second = lab.train("forget10", config=config)
    assert (first, second, seen) == ("forget10-ga", "forget10-ga-2", [1, 2])
    assert lab.offsets[first].meta["objective"] == "ga"

    probe = explore.key_accuracy_probe(lab, lab.splits["forget10"], lab.splits["retain90"][:1],
                                       max_new_tokens=4)
    offset = lab.offsets[first].model.train()
    scores = probe(offset)
    assert set(scores) == {"forget_key_acc", "retain_key_acc"}
    assert all(0.0 <= v <= 1.0 for v in scores.values()) and offset.training
    assert math.isnan(explore.key_accuracy(lab.model(), []))


def test_example_questions_and_records(lab):
    examples = explore.example_questions(lab, n=1)
    assert examples == {"forget10": [FORGET_QUESTION], "retain90": ["where was Benn born ?"]}
    assert explore.find_record(lab, f"  {FORGET_QUESTION} ").key == "red"
    assert explore.find_record(lab, "who is Fenn ?") is None


def test_a_lab_names_the_retain_split_of_a_forget_split_that_tofu_naming_does_not_cover(lab):
    lab.splits = {"forget": lab.splits["forget10"], "forget_paraphrased": lab.splits["forget10"],
                  "retain": lab.splits["retain90"]}
    lab.default_forget = "forget"
    with pytest.raises(ValueError, match="not a forget split name"):
        lab.retain_for("forget")
    lab.retain_of = {"forget": "retain", "forget_paraphrased": "retain"}
    assert lab.retain_for("forget_paraphrased") == "retain"
    assert set(lab.eval_splits("forget")) == {"forget", "retain"}
    assert explore.example_questions(lab, n=1) == {"forget": [FORGET_QUESTION],
                                                  "retain": ["where was Benn born ?"]}
