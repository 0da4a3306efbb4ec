import math

import pytest
from conftest import EVAL_SPLITS as SPLITS
from conftest import make_model

from offsetlab.measure.evaluate import Report, compare, evaluate, utility
from offsetlab.method.fusion import OffsetModel


@pytest.fixture(scope="module")
def reports(tokenizer):
    v = len(tokenizer)
    a = OffsetModel(make_model(v, 0), None, [], tokenizer=tokenizer)
    b = OffsetModel(make_model(v, 3), None, [], tokenizer=tokenizer)
    return evaluate(a, SPLITS, name="a", max_new_tokens=6, progress=False), \
        evaluate(b, SPLITS, name="b", max_new_tokens=6, progress=False)


def test_report_has_metrics_rows_and_settings(reports):
    a, _ = reports
    assert set(a.metrics) == set(SPLITS)
    assert len(a.rows) == sum(len(v) for v in SPLITS.values())
    for values in a.metrics.values():
        assert 0 <= values["key_fact_acc"] <= 1 and 0 < values["answer_prob"] <= 1
        assert 0 <= values["truth_ratio"] <= 1
    # membership inference is computed for forget splits when a holdout split exists
    assert 0 <= a.metrics["forget05"]["mia_loss_auc"] <= 1
    assert "mia_loss_auc" not in a.metrics["retain95"]
    row = a.rows[0]
    assert row["question"] == "where was Alra born ?" and isinstance(row["generated"], str)
    assert row["key_hit"] == (row["key"].lower() in row["generated"].lower())
    assert a.settings["max_new_tokens"] == 6


def test_json_round_trip(reports):
    a, _ = reports
    again = Report.from_json(a.to_json())
    assert again == a
    assert list(again.to_frame().columns)[:3] == ["split", "subject", "question"]


def test_compare_forget_quality_and_utility(reports):
    a, b = reports
    table = compare([a, b, a], gold=a)
    # a model compared with itself as gold: identical truth ratios ⇒ KS p-value 1
    assert table.loc["a", "forget05/forget_quality"] == pytest.approx(1.0)
    assert 0 <= table.loc["b", "forget05/forget_quality"] <= 1
    assert table.loc["a", "model_utility"] == pytest.approx(utility(a))
    # utility is the harmonic mean of retain components only (forget/holdout excluded)
    parts = [a.metrics["retain95"][m] for m in ("answer_prob", "rouge_l", "truth_ratio")]
    expected = 0.0 if min(parts) == 0 else len(parts) / sum(1 / p for p in parts)
    assert utility(a) == pytest.approx(expected)
    assert not math.isnan(table.loc["b", "model_utility"])


def test_empty_split_is_refused(tokenizer):
    model = OffsetModel(make_model(len(tokenizer), 0), None, [], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="Split 'retain' is empty"):
        evaluate(model, {"retain": []}, progress=False)


@pytest.mark.slow
def test_forget_quality_on_the_toy_world_separates_base_from_gold():
    from offsetlab.worlds.lab import Lab

    lab = Lab.toy()
    splits = {"forget10": lab.splits["forget10"]}
    base = evaluate(lab.model(), splits, name="base", max_new_tokens=4, progress=False)
    gold = evaluate(lab.standalone(lab.gold), splits, name="gold", max_new_tokens=4, progress=False)
    table = compare([base, gold], gold=gold)
    print(table[["forget10/forget_quality", "forget10/truth_ratio"]])
    # The base model still knows forget10: its truth ratios are nothing like gold's.
    assert table.loc["base", "forget10/forget_quality"] < 0.01
    assert table.loc["gold", "forget10/forget_quality"] == pytest.approx(1.0)


def test_plausible_answers_and_mia_gap_are_reported(reports):
    a, b = reports
    assert 0 <= a.metrics["forget05"]["plausible"] <= 1
    assert a.metrics["forget05"]["mia_gap"] == pytest.approx(abs(a.metrics["forget05"]["mia_loss_auc"] - 0.5))
    table = compare([a, b], gold=a)
    # against gold, the gap is measured from gold's own AUC
    assert table.loc["a", "forget05/mia_gap"] == pytest.approx(0.0)
    assert "forget05/plausible" in table.columns


@pytest.mark.slow
def test_a_model_that_saw_neither_set_cannot_tell_forget_from_holdout():
    """The gold model never saw forget01/05/10 nor holdout: membership inference must find
    nothing (AUC 0.5 ± 0.1). Scoring whole answers gave 0.865 / 0.96 on forget10 / 01,
    because the toy tokenizer splits holdout names into more pieces (see evaluate.py);
    the lab's holdout authors are renamed like the trained ones for the same reason."""
    from offsetlab.worlds.lab import Lab

    lab = Lab.toy()
    splits = {s: lab.splits[s] for s in ("forget01", "forget05", "forget10", "holdout")}
    gold = evaluate(lab.standalone(lab.gold), splits, name="gold", max_new_tokens=2, progress=False)
    base = evaluate(lab.model(), {"forget10": splits["forget10"], "holdout": splits["holdout"]},
                    name="base", max_new_tokens=2, progress=False)
    aucs = {s: gold.metrics[s]["mia_loss_auc"] for s in ("forget01", "forget05", "forget10")}
    print(aucs, "base forget10", base.metrics["forget10"]["mia_loss_auc"])
    assert all(abs(auc - 0.5) <= 0.1 for auc in aucs.values())
    # ... while the same score sees that the base model was trained on forget10.
    assert base.metrics["forget10"]["mia_loss_auc"] > 0.95


def test_alpha_sweep_is_an_evaluation_at_each_strength(tokenizer, reports):
    """The sweep scores once; each α's numbers are those of evaluating a model built at it."""
    from offsetlab.measure.evaluate import alpha_sweep

    v = len(tokenizer)
    base, reference, offset = make_model(v, 0), make_model(v, 1), make_model(v, 2)
    _, gold = reports
    alphas = [0.0, 0.5, 1.5]
    rows = alpha_sweep(OffsetModel(base, reference, [(offset, 1.0)], tokenizer=tokenizer),
                       SPLITS, alphas, gold=gold)
    assert [r["alpha"] for r in rows] == alphas
    for alpha, row in zip(alphas, rows):
        model = OffsetModel(base, reference, [(offset, alpha)], tokenizer=tokenizer)
        report = evaluate(model, SPLITS, max_new_tokens=1, progress=False)
        table = compare([report], gold).iloc[0]
        for split, values in report.metrics.items():
            for m in ("answer_prob", "truth_ratio"):
                assert row[f"{split}/{m}"] == pytest.approx(values[m], abs=1e-6), (alpha, split, m)
        assert row["forget05/mia_loss_auc"] == pytest.approx(report.metrics["forget05"]["mia_loss_auc"])
        for m in ("forget_quality", "mia_gap"):
            assert row[f"forget05/{m}"] == pytest.approx(table[f"forget05/{m}"], abs=1e-9)
    assert rows[0]["forget05/answer_prob"] != pytest.approx(rows[-1]["forget05/answer_prob"], abs=1e-3)


def test_offset_moves_are_what_a_dead_zone_is_read_against(tiny_trio, tokenizer):
    from offsetlab.measure.evaluate import offset_moves
    from offsetlab.worlds.records import QARecord

    base, ref, off = tiny_trio
    records = [QARecord("where was Alra born ?", "red green blue"), QARecord("what year ?", "one two")]
    n_tokens = sum(len(tokenizer(" " + r.answer, add_special_tokens=False)["input_ids"]) for r in records)
    alone = offset_moves(OffsetModel(base, None, [], tokenizer=tokenizer), records)
    assert alone.shape == (n_tokens,) and abs(alone).max() < 1e-6  # the base moves nothing
    moves = offset_moves(OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer), records)
    assert moves.shape == (n_tokens,) and (moves > 0).all()
    # with a dead zone the moves below it are gone and the others stay as they were
    tau = float(sorted(moves)[len(moves) // 2])
    zoned = offset_moves(OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, dead_zone=tau), records)
    below = moves < tau
    assert below.any() and (~below).any()
    assert abs(zoned[below]).max() < 1e-6 and abs(zoned[~below] - moves[~below]).max() < 1e-4
    with pytest.raises(ValueError, match="at least one record"):
        offset_moves(OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer), [])
