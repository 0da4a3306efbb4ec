"""Fuzz the panel's plain handlers with random input: every outcome is a result or a
ValueError/KeyError (which the panel shows as a message), never another exception."""

from __future__ import annotations

import pytest
from conftest import FORGET_QUESTION, make_lab
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from offsetlab.frontends import app
from offsetlab.frontends.explore import Decoding

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAR = (ValueError, KeyError)

numbers = st.floats() | st.integers(-10**6, 10**6) | st.booleans()
names = st.none() | st.text(max_size=20) | st.sampled_from(["random", "", " random", "RANDOM"])
pairs = st.lists(st.tuples(names.filter(lambda n: isinstance(n, str)), numbers), max_size=3)
questions = st.text(max_size=60) | st.sampled_from(
    [FORGET_QUESTION, "", "   ", "?" * 2_001, "where " * 60, "\x00\ud7ff\U0010ffff"])


@pytest.fixture(scope="module")
def lab():
    return make_lab()


@pytest.fixture(scope="module")
def requests(lab):
    return {"a@1": [("random", 1.0)], "both@1": [("random", 0.5), ("random", 0.25)]}


def outcome(call):
    try:
        result = call()
    except CLEAR as err:
        assert str(err)  # a message to show
        event(f"refused: {type(err).__name__}")
        return err
    event("answered")
    return result


@FUZZ
@given(names | pairs, numbers)
def test_active_pairs(offset, alpha):
    result = outcome(lambda: app.active_pairs(offset, alpha))
    assert isinstance(result, CLEAR) or all(isinstance(n, str) for n, _ in result)


@FUZZ
@given(st.none() | st.lists(st.text(max_size=10) | st.sampled_from(["a@1", "both@1"]), max_size=4))
def test_ticked_requests(requests, ticked):
    result = outcome(lambda: app.ticked_requests(requests, ticked))
    assert isinstance(result, CLEAR) or {n for n, _ in result} <= {"random"}


# Mostly inputs the panel can answer, so that answering is fuzzed too, not only refusing.
def mostly(valid, junk):
    return st.one_of(valid, valid, valid, junk)


@FUZZ
@given(mostly(st.just(FORGET_QUESTION) | st.text(min_size=1, max_size=30), questions),
       mostly(st.just("random") | st.just([("random", 0.5), ("random", -1.0)]), names | pairs),
       mostly(st.floats(-3, 3), numbers),
       mostly(st.integers(1, 4), st.integers(-2, 0) | st.sampled_from([64, 65, 10**9])))
def test_compare_view(lab, question, offset, alpha, max_new_tokens):
    result = outcome(lambda: app.compare_view(lab, question, offset, alpha,
                                              Decoding(max_new_tokens=max_new_tokens)))
    assert isinstance(result, CLEAR) or "fused" in result.answers


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names | pairs, numbers, st.text(max_size=12) | st.sampled_from(["retain90", "forget99"]),
       numbers, numbers)
def test_evaluate_view_refuses_junk(lab, offset, alpha, split, max_records, max_new_tokens):
    # Valid evaluations are tested in test_app.py; here none of the splits is one.
    result = outcome(lambda: app.evaluate_view(lab, offset, alpha, split, max_records,
                                               max_new_tokens))
    assert isinstance(result, CLEAR), result
