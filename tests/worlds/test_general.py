"""General knowledge for the real model (``worlds/general.py``): the shipped questions,
how the ones the base answers are kept and split, retain data the base writes itself,
and the drift check on the base's own text."""

from __future__ import annotations

import json
import time

import pytest
from real_task import smollm2

from offsetlab.frontends.cli import main
from offsetlab.measure.evaluate import text_drift
from offsetlab.measure.metrics import key_fact_hit
from offsetlab.method.fusion import OffsetModel
from offsetlab.worlds import general
from offsetlab.worlds.real import PROMPT_FORMAT, load_capitals
from offsetlab.worlds.records import DataError, QARecord

# -- the shipped data (no model) ---------------------------------------------------------


def test_shipped_general_facts_are_broad_held_apart_and_state_their_keys():
    splits = general.load_general()
    retain, holdout = splits["general_retain"], splits["general_holdout"]
    assert len(retain) + len(holdout) >= 150
    assert abs(len(retain) - len(holdout)) <= len(general.KINDS)  # half and half, kind by kind
    assert not {r.question for r in retain} & {r.question for r in holdout}
    kinds = {r.subject for r in retain + holdout}
    assert len(kinds) >= 8 and kinds <= set(general.KINDS)
    for r in retain + holdout:
        assert key_fact_hit(r.answer, r.key), r  # the base's kept answer states the fact
    # every kept question is one of the hand-written candidates, with its key and kind
    candidates = {c.question: c for c in general.load_candidates()}
    assert all((candidates[r.question].key, candidates[r.question].kind) == (r.key, r.subject)
               for r in retain + holdout)
    # nothing of the capitals task: its held-out capitals stay a separate measure
    capitals = load_capitals()
    asked = {r.question for records in capitals.values() for r in records}
    assert not asked & set(candidates)
    assert not any("capital" in q.casefold() for q in candidates)


def test_candidates_with_a_bad_line_name_file_line_and_field(tmp_path):
    good = {"question": "What is 2 plus 2?", "key": "4", "kind": "arithmetic"}
    cases = {
        "not json": ("{", "invalid JSON"),
        "missing key": (json.dumps({**good, "key": ""}), "field 'key'"),
        "unknown kind": (json.dumps({**good, "kind": "cooking"}), "kind 'cooking' is not one of"),
        "asked twice": (json.dumps(good) + "\n" + json.dumps(good), "asked twice"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / "c.jsonl"
        path.write_text(json.dumps({**good, "question": "Q?"}) + "\n" + text + "\n")
        with pytest.raises(DataError, match=message) as err:
            general.load_candidates(path)
        assert f"{path}:" in str(err.value), name


def test_an_answer_counts_when_its_first_sentence_states_the_key():
    assert general.first_sentence("A week has 7 days. It starts on Monday.") == "A week has 7 days."
    assert general.first_sentence("It is 3.14 or so. Yes") == "It is 3.14 or so."
    assert general.kept_answer("A week has seven days. Or 8.", "7") == "A week has seven days."
    # the key only in a later sentence, or inside another number, does not count
    assert general.kept_answer("A week is long. It has 7 days.", "7") is None
    assert general.kept_answer("It has 17 days.", "7") is None


def test_neighbours_are_framed_like_each_forget_question_and_never_one_of_them():
    forget = [QARecord("What is the capital of France?", "Paris.", key="Paris"),
              QARecord("Who wrote the novel Dracula?", "Stoker.", key="Stoker")]
    pool = ["What is the capital of Nepal?", "Who wrote the novel Emma?", "What is the capital of Peru?",
            "What is the currency of Peru?", "Who wrote the novel Ulysses?", "How do bees make honey?",
            "What is the capital of France?", "What is the capital of Chad?"]
    picked = general.neighbours(forget, pool, per_record=2)
    assert "What is the capital of France?" not in picked  # a forget question is never an anchor
    capitals = [q for q in picked if q.startswith("What is the capital of")]
    novels = [q for q in picked if q.startswith("Who wrote the novel")]
    assert len(capitals) == len(novels) == 2 and len(picked) == 4  # two each, the closest frames
    assert general.neighbours(forget, pool, per_record=2) == picked  # seeded: the same every time
    assert "How do bees make honey?" not in general.neighbours(forget, pool, per_record=4)
    shipped = general.load_pool()
    assert len(shipped) >= 300 and len(set(shipped)) == len(shipped)
    held_out = {r.question for records in load_capitals().values() for r in records}
    held_out |= {r.question for r in general.load_general()["general_holdout"]}
    assert not held_out & set(shipped)  # no measured question is ever an anchor
    countries = {r.subject.casefold().removeprefix("the ") for records in load_capitals().values()
                 for r in records if r.subject != "general"}
    asked = {q.casefold().removeprefix("what is the capital of ").rstrip("?").removeprefix("the ")
             for q in shipped if q.startswith("What is the capital of")}
    assert len(asked) >= 40 and not asked & countries  # nor any capital the task measures


# -- with SmolLM2 --------------------------------------------------------------------------

def base_model():
    base, _, tokenizer = smollm2()
    return OffsetModel(base, None, [], tokenizer=tokenizer, prompt_format=PROMPT_FORMAT)


@pytest.mark.real
@pytest.mark.slow
def test_rebuilding_keeps_what_was_shipped(tmp_path):
    """The shipped split is what `offsetlab real build-general` makes: on a slice of the
    candidates (the CLI, for real) the same questions are kept, with the same answers."""
    shipped = {r.question: r for records in general.load_general().values() for r in records}
    candidates = general.load_candidates()
    kept = [c for c in candidates if c.question in shipped][::8][:20]  # of every kind
    dropped = [c for c in candidates if c.question not in shipped][::18][:12]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps({"question": c.question, "key": c.key, "kind": c.kind}) + "\n"
                            for c in kept + dropped))
    assert main(["real", "build-general", "--out", str(tmp_path / "out"), "--candidates", str(path)]) == 0
    rebuilt = general.load_general(tmp_path / "out")
    records = rebuilt["general_retain"] + rebuilt["general_holdout"]
    assert sorted(r.question for r in records) == sorted(c.question for c in kept)
    assert all(r.answer == shipped[r.question].answer for r in records)
    report = json.loads((tmp_path / "out" / "general_report.json").read_text())
    assert report["asked"] == 32 and report["kept"] == 20
    assert {row["question"] for row in report["rejected"]} == {c.question for c in dropped}


@pytest.mark.real
@pytest.mark.slow
def test_self_made_retain_is_the_bases_own_words_cached_and_never_the_forget_set(tmp_path):
    model = base_model()
    forget = [QARecord("What is the capital of France?", "The capital of France is Paris.", key="Paris")]
    prompts = ["In which city is the Eiffel Tower?", "How many days are in a week?",
               "What is the capital of France?", "Describe a rainy day in a small village."]
    start = time.perf_counter()
    records = general.self_made_retain(model, prompts, forget, max_new_tokens=24, cache=tmp_path)
    first = time.perf_counter() - start
    questions = [r.question for r in records]
    assert "What is the capital of France?" not in questions  # a forget question is never asked
    assert "In which city is the Eiffel Tower?" not in questions  # its answer names Paris
    assert "How many days are in a week?" in questions
    week = next(r for r in records if r.question == "How many days are in a week?")
    assert week.answer == general.ask(model, [week.question], max_new_tokens=24)[0].strip()
    [cached] = list((tmp_path / "retain").glob("*.jsonl"))
    assert "Paris" in cached.read_text()  # the cache holds every answer; the filter runs on read
    start = time.perf_counter()
    again = general.self_made_retain(model, prompts, forget, max_new_tokens=24, cache=tmp_path)
    assert [(r.question, r.answer) for r in again] == [(r.question, r.answer) for r in records]
    assert time.perf_counter() - start < first / 3  # read back, not generated again
    with pytest.raises(ValueError, match="at least one prompt"):
        general.self_made_retain(model, ["What is the capital of France?"], forget, cache=tmp_path)


# -- drift on the base's own text (toy world: fast) -----------------------------------------


def test_text_drift_is_zero_for_the_base_and_grows_with_the_offset():
    from offsetlab.worlds.lab import Lab

    lab = Lab.toy()
    records = lab.split("retain90")[:8]
    same = text_drift(lab.model(), records)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["base_ppl"] == pytest.approx(same["fused_ppl"])
    [name] = [n for n in lab.offsets if n.startswith("forget10")]
    drift = {a: text_drift(lab.model([(name, a)]), records) for a in (0.5, 1.0, 2.0)}
    assert 0 < drift[0.5]["kl"] < drift[1.0]["kl"] < drift[2.0]["kl"]
    assert drift[1.0]["base_ppl"] == pytest.approx(same["base_ppl"])
    assert drift[1.0]["tokens"] == same["tokens"] > 0
    with pytest.raises(ValueError, match="at least one record"):
        text_drift(lab.model(), [])
