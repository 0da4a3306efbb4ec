"""TOFU-format question-answer records: the unit of every forget, retain and eval set.

A record is one question with its true answer, a paraphrase of that answer and a few
perturbed (wrong) answers, as in TOFU (Maini et al., 2024). Two optional fields go
beyond TOFU: `key`, the fact the answer must contain (measuring forgetting by the key
catches garbled answers that still leak it), and `subject`, the author or fact group a
record belongs to (splits and forget requests are made per subject).

Files are JSON Lines, one record per line; real TOFU files, which are either JSON Lines
or one JSON list, load too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A record file that cannot be read; the message names file, line and field."""


@dataclass
class QARecord:
    question: str
    answer: str
    paraphrased_answer: str = ""
    perturbed_answers: list[str] = field(default_factory=list)
    key: str | None = None
    subject: str | None = None

    def to_dict(self) -> dict:
        # TOFU's field names and order; `perturbed_answer` (singular) holds a list there.
        return {
            "question": self.question,
            "answer": self.answer,
            "paraphrased_answer": self.paraphrased_answer,
            "perturbed_answer": list(self.perturbed_answers),
            "key": self.key,
            "subject": self.subject,
        }


def load_records(path: str | Path) -> list[QARecord]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return [_record_from_dict(obj, path, line) for obj, line in _json_objects(text, path)]


def save_records(records: list[QARecord], path: str | Path) -> None:
    # Fixed field order, raw UTF-8 and "\n" line ends: the same records always give the
    # same bytes, so generated files can be compared and committed.
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records]
    Path(path).write_text("".join(lines), encoding="utf-8", newline="\n")


def _json_objects(text: str, path: Path) -> list[tuple[object, int]]:
    """(object, line number) pairs from JSON Lines or from a single JSON list."""
    if text.lstrip().startswith("["):
        return _json_list(text, path)
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objects.append((json.loads(line), number))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err
    return objects


def _json_list(text: str, path: Path) -> list[tuple[object, int]]:
    # Decode element by element rather than with json.loads, to know on which line
    # each record starts and so point at the bad one.
    decoder = json.JSONDecoder()
    objects = []
    pos = text.index("[") + 1
    try:
        while True:
            pos = _skip(text, pos, " \t\r\n")
            if text.startswith("]", pos):
                break
            obj, end = decoder.raw_decode(text, pos)
            objects.append((obj, text.count("\n", 0, pos) + 1))
            pos = _skip(text, end, " \t\r\n")
            if text.startswith(",", pos):
                pos += 1
            elif not text.startswith("]", pos):
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    return objects


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _record_from_dict(obj: object, path: Path, line: int) -> QARecord:
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")

    def text_field(name: str, required: bool) -> str | None:
        if name not in obj or obj[name] is None:
            if required:
                raise DataError(f"{where}: field '{name}' is missing")
            return None
        value = obj[name]
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field '{name}' must be a string, got {type(value).__name__}"
            )
        return value

    question = text_field("question", required=True)
    if not question.strip():
        raise DataError(f"{where}: field 'question' is empty")
    perturbed = obj.get("perturbed_answer", [])
    if isinstance(perturbed, str):  # some TOFU files hold a single perturbed answer
        perturbed = [perturbed]
    if perturbed is None:
        perturbed = []
    if not isinstance(perturbed, list) or not all(isinstance(p, str) for p in perturbed):
        raise DataError(f"{where}: field 'perturbed_answer' must be a string or a list of strings")
    return QARecord(
        question=question,
        answer=text_field("answer", required=True),
        paraphrased_answer=text_field("paraphrased_answer", required=False) or "",
        perturbed_answers=perturbed,
        key=text_field("key", required=False),
        subject=text_field("subject", required=False),
    )
