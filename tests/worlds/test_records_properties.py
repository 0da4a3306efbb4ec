"""Property-based and fuzz tests of the record loader: any valid record round-trips,
any invalid one — and any bytes at all — gives a DataError naming the file and line."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offsetlab.worlds.records import DataError, QARecord, load_records, save_records

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any unicode text (hypothesis leaves out lone surrogates, which UTF-8 cannot hold).
text = st.text(max_size=40)
question = text.filter(lambda s: s.strip())
records = st.builds(QARecord, question=question, answer=question, paraphrased_answer=text,
                    perturbed_answers=st.lists(text, max_size=3),
                    key=st.none() | text, subject=st.none() | text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8)


def write(folder, data: bytes):
    path = folder / "set.jsonl"  # one file per test, rewritten for every example
    path.write_bytes(data)
    return path


@SETTINGS
@given(st.lists(records, min_size=1, max_size=4))
def test_any_valid_records_round_trip(tmp_path, rs):
    path = write(tmp_path, b"")
    save_records(rs, path)
    assert load_records(path) == rs


# A record with one field made invalid, at a random line among valid ones.
BAD_FIELDS = {
    "question": st.none() | st.integers() | st.just("  ") | st.lists(text, min_size=1),
    "answer": st.none() | st.just("") | st.just(" \n") | st.integers() | st.floats(allow_nan=False) | st.booleans(),
    "perturbed_answer": st.integers() | st.lists(st.integers(), min_size=1),
    "key": st.integers() | st.lists(text, min_size=1),
    "subject": st.floats(allow_nan=False) | st.dictionaries(text, text, min_size=1),
}


@SETTINGS
@given(st.lists(records, max_size=3), st.sampled_from(sorted(BAD_FIELDS)), st.data())
def test_any_invalid_record_is_refused_naming_its_line(tmp_path, good, field, data):
    bad = QARecord("Q?", "A.").to_dict()
    bad[field] = data.draw(BAD_FIELDS[field], label=field)
    at = data.draw(st.integers(0, len(good)), label="line index")
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) for r in good]
    lines.insert(at, json.dumps(bad))
    path = write(tmp_path, ("\n".join(lines) + "\n").encode())
    try:
        load_records(path)
    except DataError as err:
        assert str(err).startswith(f"{path}:{at + 1}: "), str(err)
        assert field in str(err) or "question" in str(err)
    else:
        raise AssertionError(f"{field}={bad[field]!r} was accepted")


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_give_records_or_a_data_error(tmp_path, data):
    path = write(tmp_path, data)
    try:
        assert all(isinstance(r, QARecord) for r in load_records(path))
    except DataError as err:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(err)), str(err)


@SETTINGS
@given(st.lists(json_values, min_size=1, max_size=4), st.booleans())
def test_random_json_values_give_records_or_a_data_error(tmp_path, values, as_list):
    body = json.dumps(values) if as_list else "\n".join(json.dumps(v) for v in values)
    path = write(tmp_path, body.encode())
    try:
        assert all(isinstance(r, QARecord) for r in load_records(path))
    except DataError as err:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", str(err)), str(err)
