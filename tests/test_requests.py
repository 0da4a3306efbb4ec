import pytest
from conftest import make_model

from offsetlab.data import QARecord
from offsetlab.lab import Lab
from offsetlab.offsets import Offset
from offsetlab.requests import evaluate_requests, interference_table
from offsetlab.train import TrainConfig, train_offset


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
    config = TrainConfig(steps=6, lr=3e-3, batch_size=2, retain_batch_size=2)
    for name, forget in REQUESTS.items():
        result = train_offset(base, reference, tokenizer, forget, SHARED["retain"], config, progress=False)
        lab.offsets[name] = Offset.from_training(result, base, reference, tokenizer, forget, name=name)
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
