"""The method's acceptance bars on the shipped toy world, with the settings `make demo` uses.

The fused model must forget like the gold model that never saw the forget set — not more:
key-fact accuracy at most 0.05 above gold's, forget quality (KS p of truth ratios against
gold's) at least 0.1 on forget10 and 0.05 on forget05/01, membership-inference AUC within
0.1 of gold's, at least 0.9 × gold's rate of plausible answers and repetition at most 0.05
above gold's — while keeping retain and the world facts that training never sees (key-fact
accuracy at least 0.9 × base) and model utility (at least 0.95 × base). Default
TrainConfig, default retain set (``Lab.training_sets``) and the lab's invented
non-members; the gold model is only measured, never trained against. One training run
per split (module-scoped); a few minutes on one thread.
"""

import pytest

from offsetlab.measure.evaluate import compare, evaluate, value_pools
from offsetlab.worlds.lab import Lab

SPLITS = ("forget01", "forget05", "forget10")
MIN_FORGET_QUALITY = {"forget01": 0.05, "forget05": 0.05, "forget10": 0.1}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    return Lab.toy()


def eval_splits(lab, forget_split):
    # retain90 is kept data for every split (retain90 ⊂ retain95 ⊂ retain99); every 8th
    # record: the bar is about the ability, not about each record
    return {forget_split: lab.splits[forget_split], "retain90": lab.splits["retain90"][::8],
            "world_facts": lab.splits["world_facts"], "holdout": lab.splits["holdout"]}


def measure(lab, model, name, splits):
    return evaluate(model, splits, name=name, max_new_tokens=24, progress=False,
                    pools=value_pools(lab.splits))


@pytest.fixture(scope="module")
def references(lab):
    """Base and gold, evaluated once on every forget split (forget01 ⊂ forget05 ⊂ forget10)."""
    splits = {**eval_splits(lab, "forget10"), "forget05": lab.splits["forget05"],
              "forget01": lab.splits["forget01"]}
    return measure(lab, lab.model(), "base", splits), measure(lab, lab.standalone(lab.gold), "gold", splits)


@pytest.fixture(scope="module", params=SPLITS)
def outcome(request, lab, references):
    split = request.param
    name = lab.train(split)  # the lab's default recipe, its retain set and its non-members
    offset = lab.offsets[name]
    report = measure(lab, lab.model([name]), "fused", eval_splits(lab, split))
    base, gold = references
    table = compare([base, gold, report], gold=gold)
    print(f"\n{split}: trained in {offset.meta['train_seconds']:.0f} s ({len(offset.meta['history'])} steps)\n"
          + table[[c for c in table.columns if c.startswith((split, "retain90/key", "world_facts/key"))]
                  + ["model_utility"]].T.to_string())
    return split, table, offset


def test_forgets_like_the_gold_model(outcome):
    split, t, _ = outcome
    fused, gold = t.loc["fused"], t.loc["gold"]
    assert fused[f"{split}/key_fact_acc"] <= gold[f"{split}/key_fact_acc"] + 0.05
    assert fused[f"{split}/forget_quality"] >= MIN_FORGET_QUALITY[split]


def test_forgotten_answers_stay_fluent(outcome):
    split, t, _ = outcome
    assert t.loc["fused", f"{split}/repetition"] <= t.loc["gold", f"{split}/repetition"] + 0.05


def test_membership_inference_sees_what_it_sees_on_gold(outcome):
    split, t, _ = outcome
    assert t.loc["fused", f"{split}/mia_gap"] <= 0.1  # |AUC − gold's AUC|


# Splits where the default misses issue #14's plausibility bar. Wave 8's default met it on
# forget01/05 only (0.91 / 0.93 / 0.83); wave 19's recipe, the default since wave 25, meets it
# on all three (1.00 / 0.98 / 0.94; benchmarks/sweep_calibrated.md). Strict: a split listed
# here that meets the bar fails the test, so the list can only shrink.
NOT_YET_PLAUSIBLE: set[str] = set()


def test_forgotten_answers_stay_plausible(outcome):
    split, t, _ = outcome
    met = t.loc["fused", f"{split}/plausible"] >= 0.9 * t.loc["gold", f"{split}/plausible"]
    if split in NOT_YET_PLAUSIBLE:
        assert not met, f"{split} now meets the plausibility bar: take it off NOT_YET_PLAUSIBLE"
        pytest.xfail(f"{split}: some forgotten answers still state no value of the right kind")
    assert met


def test_keeps_what_it_should(outcome):
    _, t, offset = outcome
    assert offset.meta["stopped"] is None
    fused, base = t.loc["fused"], t.loc["base"]
    assert fused["retain90/key_fact_acc"] >= 0.9 * base["retain90/key_fact_acc"]
    assert fused["world_facts/key_fact_acc"] >= 0.9 * base["world_facts/key_fact_acc"]
    assert fused["model_utility"] >= 0.95 * base["model_utility"]


@pytest.mark.parametrize("outcome", ["forget10"], indirect=True)  # the same training run
def test_the_shipped_offset_is_what_the_recipe_trains_today(outcome, lab):
    """``forget10-shipped`` (``offsetlab toy offset``) must be the default recipe's output:
    same settings, same forget set, and — trained here again — the same behaviour. Fails
    when the recipe changes and the shipped offset is not rebuilt."""
    split, _, trained = outcome
    assert split == "forget10"  # the shipped offset is forget10's
    shipped = lab.offsets["forget10-shipped"]
    ours, theirs = dict(shipped.meta["config"]), dict(trained.meta["config"])
    # the never-seen level is measured on the non-members: equal up to float rounding
    assert abs(ours.pop("level") - theirs.pop("level")) < 1e-4
    assert ours == theirs
    assert shipped.meta["forget_set"] == trained.meta["forget_set"]
    assert shipped.alpha == trained.alpha
    # Same seed and data: equal up to float arithmetic (another CPU may round differently).
    a, b = shipped.model.state_dict(), trained.model.state_dict()
    moved = sum((a[k] - b[k]).norm() ** 2 for k in a) ** 0.5
    scale = sum(a[k].norm() ** 2 for k in a) ** 0.5
    assert float(moved / scale) < 1e-3, float(moved / scale)
    prompts = [lab.prompt_format.prompt(r.question) for r in lab.splits["forget10"]]
    same = sum(x == y for x, y in zip(lab.model(["forget10-shipped"]).generate(prompts, 16),
                                       lab.model([trained.meta["name"]]).generate(prompts, 16)))
    assert same >= 0.95 * len(prompts), f"{same}/{len(prompts)} answers agree"
