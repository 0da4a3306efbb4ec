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

import codecs
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


# A record is a question and a few answers: even the longest fit in a few KB, and the
# longest context window offsetlab meets (SmolLM2's 8192 tokens) in about 40 KB. Bigger
# ones are refused before they are parsed, so a damaged or hostile file cannot exhaust
# memory one record at a time.
MAX_RECORD_BYTES = 1 << 20  # 1 MiB per record (one JSON Lines line, one JSON-list element)
# A file in the one-JSON-list format is read whole (TOFU's largest is about 2 MB).
MAX_LIST_FILE_BYTES = 64 << 20
_SPACE = b" \t\r\n"


def load_records(path: str | Path) -> list[QARecord]:
    path = Path(path)
    with open(path, "rb") as f:
        listed = _first_byte(f) == b"["
        f.seek(0)
        objects = _json_list(f, path) if listed else _json_lines(f, path)
    return [_record_from_dict(obj, path, line) for obj, line in objects]


def save_records(records: list[QARecord], path: str | Path) -> None:
    # Fixed field order, raw UTF-8 and "\n" line ends: the same records always give the
    # same bytes, so generated files can be compared and committed.
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records]
    Path(path).write_text("".join(lines), encoding="utf-8", newline="\n")


def _first_byte(f) -> bytes:
    """The first byte that is not whitespace or a UTF-8 byte-order mark (b"" if none)."""
    start = True
    while block := f.read(1 << 16):
        if start and block.startswith(codecs.BOM_UTF8):
            block = block[len(codecs.BOM_UTF8):]
        start = False
        stripped = block.lstrip(_SPACE)
        if stripped:
            return stripped[:1]
    return b""


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text of ``raw`` (which starts at ``line``); invalid bytes name their line."""
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        bad = line + raw.count(b"\n", 0, err.start)
        raise DataError(f"{path}:{bad}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the "
                        "file as UTF-8") from None


def _parse(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # e.g. a 5000-digit number, [[[[...]]]]
        raise DataError(f"{where}: invalid JSON ({err})") from None


def _too_big(where: str, size: str) -> DataError:
    return DataError(f"{where}: the record is {size}, more than the {MAX_RECORD_BYTES:,} bytes a "
                     "record may take (a question and its answers); split or shorten it")


def _json_lines(f, path: Path) -> list[tuple[object, int]]:
    """(object, line number) pairs, one JSON Lines line at a time (only "\n" ends a line:
    a record's text may hold any other line separator)."""
    objects = []
    number = 0
    while raw := f.readline(MAX_RECORD_BYTES + 1):
        number += 1
        if len(raw) > MAX_RECORD_BYTES:
            raise _too_big(f"{path}:{number}", f"over {MAX_RECORD_BYTES:,} bytes")
        text = _decode(raw, path, number)
        if text.strip():
            objects.append((_parse(text, f"{path}:{number}"), number))
    return objects


def _json_list(f, path: Path) -> list[tuple[object, int]]:
    # Decode element by element rather than with json.loads, to know on which line
    # each record starts and so point at the bad one.
    raw = f.read(MAX_LIST_FILE_BYTES + 1)
    if len(raw) > MAX_LIST_FILE_BYTES:
        raise DataError(f"{path}: over {MAX_LIST_FILE_BYTES:,} bytes, too big to read as one JSON "
                        "list; write it as JSON Lines (one record per line)")
    text = _decode(raw, path, 1)
    decoder = json.JSONDecoder()
    objects = []
    pos = text.index("[") + 1
    try:
        while True:
            pos = _skip(text, pos, " \t\r\n")
            if text.startswith("]", pos):
                break
            line = text.count("\n", 0, pos) + 1
            try:
                obj, end = decoder.raw_decode(text, pos)
            except (RecursionError, ValueError) as err:
                if isinstance(err, json.JSONDecodeError):
                    raise
                raise DataError(f"{path}:{line}: invalid JSON ({err})") from None
            if end - pos > MAX_RECORD_BYTES // 4 and len(text[pos:end].encode()) > MAX_RECORD_BYTES:
                raise _too_big(f"{path}:{line}", f"{len(text[pos:end].encode()):,} bytes")
            objects.append((obj, line))
            pos = _skip(text, end, " \t\r\n")
            if text.startswith(",", pos):
                pos += 1
            elif not text.startswith("]", pos):
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
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
    answer = text_field("answer", required=True)
    if not answer.strip():  # nothing to forget or keep, and training on it teaches EOS only
        raise DataError(f"{where}: field 'answer' is empty")
    return QARecord(
        question=question,
        answer=answer,
        paraphrased_answer=text_field("paraphrased_answer", required=False) or "",
        perturbed_answers=perturbed,
        key=text_field("key", required=False),
        subject=text_field("subject", required=False),
    )
