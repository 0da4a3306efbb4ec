"""Prompts longer than the models' context window are refused, never cut — on the shipped
toy world (128 positions), in decoding, scoring, evaluation, training and the CLI."""

from __future__ import annotations

import pytest

from offsetlab.frontends import cli
from offsetlab.measure.evaluate import evaluate
from offsetlab.method.sources import ContextTooLong
from offsetlab.worlds.lab import Lab
from offsetlab.worlds.records import QARecord, save_records

WINDOW = 128  # data/toy/*/config.json: max_position_embeddings


@pytest.fixture(scope="module")
def toy():
    return Lab.toy(shipped=False)


def words(lab, n: int) -> str:
    """A text of exactly ``n`` tokens once the tokenizer has added its special tokens."""
    extra = len(lab.tokenizer("", add_special_tokens=True)["input_ids"])
    text = " ".join(["the"] * (n - extra))  # one token each (the first one too)
    assert len(lab.tokenizer(text, add_special_tokens=True)["input_ids"]) == n
    return text


def test_the_toy_models_report_their_window(toy):
    assert toy.model().context_window == WINDOW
    assert toy.base.config.max_position_embeddings == WINDOW


def test_decoding_refuses_exactly_past_the_window(toy):
    model = toy.model()
    prompt = words(toy, 120)
    # 120 prompt tokens + 9 new ones: the 9th is never fed back, so 128 positions are read.
    assert isinstance(model.generate(prompt, max_new_tokens=9), str)
    with pytest.raises(ContextTooLong) as err:
        model.generate(["a short one", prompt], max_new_tokens=10)
    message = str(err.value)
    assert "(2 of 2) with max_new_tokens=10 needs 129 positions" in message
    assert f"at most {WINDOW}" in message and "lower max_new_tokens" in message
    assert isinstance(err.value, ValueError)  # every front end already reports ValueErrors
    with pytest.raises(ContextTooLong, match="needs 129 positions"):
        model.step(words(toy, 129))


def test_scoring_and_evaluation_refuse_a_record_that_does_not_fit(toy):
    model = toy.model()
    with pytest.raises(ContextTooLong, match="prompt and continuation .* needs 200 positions"):
        model.score([words(toy, 100)], [" ".join(["the"] * 100)])
    long = QARecord("where was Alra born ?", " ".join(["city"] * 150), key="city")
    with pytest.raises(ContextTooLong, match=f"at most {WINDOW}"):
        evaluate(model, {"forget10": [long]}, max_new_tokens=2, progress=False)


def test_training_refuses_a_long_record_and_adds_no_offset(toy):
    fine = toy.splits["forget10"][:2]
    long = QARecord("where was Alra born ?", " ".join(["city"] * 150), key="city")
    before = dict(toy.offsets)
    with pytest.raises(ContextTooLong) as err:
        toy.train([*fine, long], retain=toy.splits["retain90"][:4])
    assert "Record 3 of the forget set (question 'where was Alra born ?')" in str(err.value)
    assert toy.offsets == before


def test_the_cli_reports_it_and_leaves_no_folder(toy, tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    save_records([QARecord("where was Alra born ?", " ".join(["city"] * 150))], data)
    out = tmp_path / "never"
    code = cli.main(["train", "--forget-file", str(data), "--objective", "ga", "--steps", "1",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Record 1 of the forget set" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["long.jsonl"]
    assert cli.main(["generate", "--raw", words(toy, 127)]) == 2  # 127 + 32 new tokens > 128
    assert "max_new_tokens=32 needs 158 positions" in capsys.readouterr().err
