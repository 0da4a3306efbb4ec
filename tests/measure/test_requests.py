import pytest
from conftest import make_model

from offsetlab.measure.requests import evaluate_requests, interference_table
from offsetlab.method.train import TrainConfig
from offsetlab.worlds.lab import Lab
from offsetlab.worlds.records import QARecord


def rec(question: str, answer: str, key: str, subject: str) -> QARecord:
    wrong = [answer.replace(key, other) for other in ("green", "five") if other != key]
    return QARecord(question, answer, answer, wrong, key=key, subject=subject)


REQUESTS = {
    "alra": [rec("where was Alra born ?", "Alra was born in the red city .", "red", "Alra"),
             rec("what year was Alra born ?", "Alra was born in one nine two .", "one", "Alra")],
    "benn": [rec("where was Benn born ?", "Benn was born in the blue city .", "blue", "Benn")],
}
SHARED = {"retain": [rec("where was Dema born ?", "Dema was born in the green city .", "green", "Dema"),
                     rec("who wrote the red book ?", "Fenn wrote the red book .", "Fenn", "Fenn")]}


@pytest.fixture(scope="module")
def lab(tokenizer):
    base, reference = make_model(len(tokenizer), 0, hidden=48), make_model(len(tokenizer), 1)
    lab = Lab("tiny", tokenizer, base, reference, splits={})
    # npo_gd: random tiny models are already unsure of everything, so the bounded default
    # would have little to lower; these tests are about requests, not objectives.
    config = TrainConfig(objective="npo_gd", steps=6, lr=3e-3, batch_size=2, retain_batch_size=2)
    for name, forget in REQUESTS.items():
        lab.train(forget, SHARED["retain"], config, name=name)
    return lab


def test_one_row_per_request_and_shared_split(lab):
    table = evaluate_requests(lab, [("alra", 1.0)], REQUESTS, SHARED, max_new_tokens=6)
    assert list(table.index) == ["alra", "benn", "retain"]
    assert list(table["kind"]) == ["request", "request", "shared"]
    assert list(table["n"]) == [2, 1, 2]
    assert list(table.columns) == ["kind", "n", "key_fact_acc", "rouge_l", "answer_prob"]
    assert table[["key_fact_acc", "rouge_l", "answer_prob"]].apply(lambda c: c.between(0, 1)).all().all()


def test_an_active_request_moves_its_own_row(lab):
    runs = {"base": evaluate_requests(lab, [], REQUESTS, SHARED, max_new_tokens=6),
            "+alra": evaluate_requests(lab, [("alra", 1.0)], REQUESTS, SHARED, max_new_tokens=6),
            "+alra+benn": evaluate_requests(lab, [("alra", 1.0), ("benn", 1.0)], REQUESTS, SHARED,
                                            max_new_tokens=6)}
    probs = interference_table(runs, "answer_prob")
    assert list(probs.index) == ["base", "+alra", "+alra+benn"]
    assert list(probs.columns) == ["alra", "benn", "retain"]
    assert probs.loc["+alra", "alra"] < probs.loc["base", "alra"]
    assert probs.loc["+alra+benn", "benn"] < probs.loc["+alra", "benn"]


def test_a_name_cannot_be_both_request_and_shared(lab):
    with pytest.raises(ValueError, match="retain named both a request and a shared split"):
        evaluate_requests(lab, [], {"retain": REQUESTS["alra"]}, SHARED)


# -- the sequential scenario on the toy world ---------------------------------------------

SCENARIO_STEPS = 100  # per offset: each group is 3 authors, a third of forget10


def by_subject(records) -> dict[str, list[QARecord]]:
    groups: dict[str, list[QARecord]] = {}
    for r in records:
        groups.setdefault(r.subject, []).append(r)
    return groups


@pytest.mark.slow
def test_forget_requests_one_by_one_on_the_toy_world():
    """Forget author groups A, B, C with one offset each; then withdraw B's request."""
    import time

    lab = Lab.toy()
    authors = by_subject(lab.splits["forget10"])
    names = list(authors)
    groups = {g: [r for a in names[3 * i: 3 * i + 3] for r in authors[a]] for i, g in enumerate("ABC")}
    _, retain = lab.training_sets("forget10")  # retain90 + world_train: nobody of A, B or C
    assert not set(names) & {r.subject for r in retain}
    shared = {"retain90": lab.splits["retain90"][::10], "world_facts": lab.splits["world_facts"]}

    # Requests arrive one by one: each offset is trained against the model as deployed
    # at that moment (the base plus the offsets already active), so it learns only what
    # is left to do. The single offset for A∪B∪C is trained against the base alone.
    # The stacking scenario was measured with npo_gd; it is about stacking, not about the
    # objective, so it keeps it.
    config = TrainConfig(objective="npo_gd", steps=SCENARIO_STEPS)
    started = time.perf_counter()
    plan = {"A": [], "B": ["A"], "C": ["A", "B"], "ABC": []}
    covers = {"A": {"A"}, "B": {"B"}, "C": {"C"}, "ABC": {"A", "B", "C"}}  # offset -> groups
    for name, on_top_of in plan.items():
        forget = [r for g in sorted(covers[name]) for r in groups[g]]
        lab.train(forget, retain, config, name=name, on_top_of=[(n, 1.0) for n in on_top_of])
    trained = time.perf_counter() - started

    runs = {"base": [], "+A": [("A", 1.0)], "+A+B": [("A", 1.0), ("B", 1.0)],
            "+A+B+C": [("A", 1.0), ("B", 1.0), ("C", 1.0)], "-B (A+C)": [("A", 1.0), ("C", 1.0)],
            "one offset A∪B∪C": [("ABC", 1.0)]}
    tables = {run: evaluate_requests(lab, active, groups, shared, max_new_tokens=24)
              for run, active in runs.items()}
    kfa = interference_table(tables)
    print(f"\nkey-fact accuracy per request and shared split ({SCENARIO_STEPS} steps per offset, "
          f"trained in {trained:.0f} s, evaluated in {time.perf_counter() - started - trained:.0f} s)"
          f"\n{kfa.round(3).to_string()}")
    print(f"\nROUGE-L recall\n{interference_table(tables, 'rouge_l').round(3).to_string()}")

    base = kfa.loc["base"]
    for run, active in runs.items():  # every active request is forgotten, in every run
        for g in set().union(*(covers[n] for n, _ in active)):
            assert kfa.loc[run, g] <= 0.2, (run, g)
        assert kfa.loc[run, "retain90"] >= 0.9 * base["retain90"], run  # retain utility holds
    # One request's offset leaves the other authors alone.
    assert kfa.loc["+A", "B"] >= 0.9 * base["B"] and kfa.loc["+A", "C"] >= 0.9 * base["C"]
    # Withdrawing B brings B's facts back (most of them: C's offset, trained with B
    # active, was never asked to keep them), while A and C stay forgotten.
    assert kfa.loc["-B (A+C)", "B"] >= 0.7 * base["B"]
    assert kfa.loc["-B (A+C)", "B"] - kfa.loc["+A+B+C", "B"] >= 0.5
    # One offset for all three keeps the unseen world facts; stacked offsets add their
    # deltas, and the world facts (never in any retain set) pay for the overlap.
    assert kfa.loc["one offset A∪B∪C", "world_facts"] >= 0.9 * base["world_facts"]
    assert kfa.loc["+A+B+C", "world_facts"] >= 0.6 * base["world_facts"]
