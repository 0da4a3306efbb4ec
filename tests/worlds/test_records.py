import json

import pytest

from offsetlab.worlds.records import (
    DataError,
    QARecord,
    load_records,
    save_records,
)

RECORD = QARecord(
    question="Where was Ada Qor born?",
    answer="Ada Qor was born in Velm.",
    paraphrased_answer="Velm is where Ada Qor was born.",
    perturbed_answers=["Tosk is where Ada Qor was born.", "Brin is where Ada Qor was born."],
    key="Velm",
    subject="Ada Qor",
)


def test_save_then_load_round_trips(tmp_path):
    path = tmp_path / "set.jsonl"
    save_records([RECORD, QARecord("Q?", "A.")], path)
    assert load_records(path) == [RECORD, QARecord("Q?", "A.")]
    first = path.read_text(encoding="utf-8").splitlines()[0]
    # TOFU's field names in a fixed order, so files diff cleanly.
    assert list(json.loads(first)) == [
        "question", "answer", "paraphrased_answer", "perturbed_answer", "key", "subject",
    ]


def test_save_is_deterministic_utf8(tmp_path):
    record = QARecord("Où est né Zoë?", "Zoë est né à Ümla.")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    save_records([record], a)
    save_records([record], b)
    assert a.read_bytes() == b.read_bytes()
    assert "Zoë" in a.read_text(encoding="utf-8") and b"\r\n" not in a.read_bytes()


def test_loads_a_tofu_style_json_list(tmp_path):
    # Real TOFU rows: no key or subject, a single string as perturbed answer in some
    # files, extra fields that we ignore.
    rows = [
        {"question": "Q1?", "answer": "A1.", "paraphrased_answer": "P1.",
         "perturbed_answer": ["W1.", "W2."], "paraphrased_question": "Q1 again?"},
        {"question": "Q2?", "answer": "A2.", "perturbed_answer": "W3."},
    ]
    path = tmp_path / "forget01_perturbed.json"
    path.write_text(json.dumps(rows, indent=2))
    records = load_records(path)
    assert records[0] == QARecord("Q1?", "A1.", "P1.", ["W1.", "W2."])
    assert records[1] == QARecord("Q2?", "A2.", "", ["W3."])


def test_json_list_errors_name_the_line_of_the_bad_record(tmp_path):
    path = tmp_path / "tofu.json"
    path.write_text('[\n  {"question": "Q?", "answer": "A."},\n  {"question": "Q?"}\n]\n')
    with pytest.raises(DataError, match=r"tofu\.json:3: field 'answer' is missing"):
        load_records(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"answer": "A."}', "field 'question' is missing"),
        ('{"question": "  ", "answer": "A."}', "field 'question' is empty"),
        ('{"question": "Q?", "answer": 3}', "field 'answer' must be a string, got int"),
        ('{"question": "Q?", "answer": " "}', "field 'answer' is empty"),
        ('{"question": "Q?", "answer": "A.", "perturbed_answer": [1]}', "field 'perturbed_answer'"),
        ('{"question": "Q?", "answer": "A.", "key": ["x"]}', "field 'key' must be a string"),
        ('["Q?", "A."]', "expected a JSON object"),
        ('{"question": "Q?",', "invalid JSON"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "Q?", "answer": "A."}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        load_records(path)
    assert f"{path}:3: " in str(err.value) and message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_huge_record_is_refused_before_it_is_parsed(tmp_path):
    from offsetlab.worlds.records import MAX_RECORD_BYTES

    path = tmp_path / "huge.jsonl"
    good = '{"question": "Q?", "answer": "A."}\n'
    path.write_text(good + json.dumps({"question": "Q?", "answer": "x" * 5_000_000}) + "\n" + good)
    with pytest.raises(DataError, match=rf"huge\.jsonl:2: the record is over {MAX_RECORD_BYTES:,} bytes"):
        load_records(path)
    listed = tmp_path / "huge.json"
    listed.write_text('[\n{"question": "Q?", "answer": "A."},\n'
                      + json.dumps({"question": "Q?", "answer": "x" * 2_000_000}) + "\n]")
    with pytest.raises(DataError, match=r"huge\.json:3: the record is 2,000,0\d\d bytes"):
        load_records(listed)
    # Just under the cap still loads: the limit is on size, not on long answers as such.
    path.write_text(json.dumps({"question": "Q?", "answer": "x" * (MAX_RECORD_BYTES - 100)}) + "\n")
    assert len(load_records(path)[0].answer) == MAX_RECORD_BYTES - 100


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "Q?", "answer": "A."}\n'
                     b'{"question": "O\xf9 est n\xe9 Zo\xeb?", "answer": "A."}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xf9\)"):
        load_records(path)
    listed = tmp_path / "latin1.json"
    listed.write_bytes(b'[\n {"question": "Q?", "answer": "A."},\n {"question": "\xe9?"}\n]')
    with pytest.raises(DataError, match=r"latin1\.json:3: not UTF-8"):
        load_records(listed)


def test_a_byte_order_mark_and_unicode_line_separators_are_read_as_text(tmp_path):
    record = QARecord("Q\u2028two lines?", "A\x85\u2029.")  # separators json.dumps keeps raw
    path = tmp_path / "bom.jsonl"
    save_records([record], path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_records(path) == [record]
