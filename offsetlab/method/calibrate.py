"""Calibrated forgetting: the "never seen" level, measured on records known to be non-members.

An unlearned model should answer a forgotten question the way a model that never saw it
would — not with the least likely answer it can find. Nobody has that model (the toy
world's gold model is only for measuring), but anyone can have *non-members*: a few
invented records of the same shape (``toy.world.invent_authors``), about subjects no model
was trained on. How the base model scores the facts of those records is the level to aim
for.

The statistic is the log-probability of the **key-fact tokens** only (the tokens that spell
"Vormor" in "… was born in the city of Vormor."): membership lives in the fact, and the
rest of an answer — the template, the name copied from the question — says more about how
the tokenizer split a name than about what the model knows (see ``key_token_positions``).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

# The level used when no non-members are given (mean key-token log-prob of the toy base
# on 30 invented authors, `never_seen_level`); a real model needs its own.
FALLBACK_LEVEL = -3.5


def normalise_space(text: str) -> str:
    """Lower-case (casefold) and collapse every run of whitespace to one space."""
    return " ".join(text.split()).casefold()


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_TENS_RE, _DIGIT_RE, _UNIT_RE = "|".join(_TENS), "|".join(_UNITS[1:10]), "|".join(_UNITS)
_NUMBER_WORD = re.compile(rf"\b(?:({_TENS_RE})(?:[- ]({_DIGIT_RE}))?|({_UNIT_RE}))\b")
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}\b)")


def _number(match: re.Match) -> str:
    tens, unit, alone = match.groups()
    if alone:
        return str(_UNITS.index(alone))
    return str(10 * (_TENS.index(tens) + 2) + (_UNITS.index(unit) if unit else 0))


@functools.lru_cache(maxsize=1 << 16)
def fold(text: str) -> str:
    """How facts are compared: ``normalise_space``, accents dropped ("Curie" = "Curié"),
    number words 0–99 written as digits ("seven" = "7", "twenty-one" = "21") and digit
    groups joined ("1,000" = "1000"). Remembered: training compares the same values and
    keys with each other many thousand times."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _GROUPED.sub("", _NUMBER_WORD.sub(_number, normalise_space(plain)))


def mentions(text: str, value: str) -> bool:
    """True when ``text`` states ``value`` (both ``fold``-ed); an empty value never. A
    number must stand alone: "7" is not in "17" or "1970"."""
    needle = fold(value)
    if not needle:
        return False
    haystack = fold(text)
    if needle[0].isdigit() or needle[-1].isdigit():
        before = r"(?<!\d)" if needle[0].isdigit() else ""
        after = r"(?!\d)" if needle[-1].isdigit() else ""
        return re.search(before + re.escape(needle) + after, haystack) is not None
    return needle in haystack


def key_token_positions(tokenizer, continuation: str, key: str | None) -> list[int]:
    """Indices of the tokens of ``continuation`` (tokenized without special tokens) that
    overlap the key fact's characters; every token when there is no key or it is absent."""
    return key_token_positions_many(tokenizer, [continuation], [key])[0]


def key_token_positions_many(tokenizer, continuations: Sequence[str],
                             keys: Sequence[str | None]) -> list[list[int]]:
    """``key_token_positions`` of each continuation and its key, tokenized in one call."""
    enc = tokenizer(list(continuations), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for continuation, key, ids, spans in zip(continuations, keys, enc["input_ids"],
                                             enc["offset_mapping"], strict=True):
        n = len(ids)
        start = continuation.casefold().find(key.casefold()) if key else -1
        if start < 0:
            out.append(list(range(n)))
            continue
        end = start + len(key)
        hits = [i for i, (a, b) in enumerate(spans) if a < end and b > start]
        out.append(hits or list(range(n)))
    return out


def key_logprobs(model, records: Sequence, batch_size: int = 32,
                 alphas: Sequence[float] | None = None) -> list[np.ndarray] | list[list[np.ndarray]]:
    """Per record, the log-probs ``model`` (an ``OffsetModel``) gives the key-fact tokens
    of the true answer. With ``alphas``: one such list per strength of the model's last
    offset, all from one pass of the models (``OffsetModel.score_alphas``)."""
    fmt = model.prompt_format  # the model's world decides how it is asked
    answers = [fmt.answer(r.answer) for r in records]
    keys = [key_token_positions(model.tokenizer, a, r.key) for r, a in zip(records, answers)]
    per_alpha: list[list[np.ndarray]] = [[] for _ in (alphas if alphas is not None else [None])]
    for i in range(0, len(records), batch_size):
        prompts = [fmt.prompt(r.question) for r in records[i : i + batch_size]]
        part = answers[i : i + batch_size]
        scored = (model.score_alphas(prompts, part, alphas) if alphas is not None
                  else [model.score(prompts, part)])
        for out, scores in zip(per_alpha, scored):
            out += [s.numpy()[k] for s, k in zip(scores, keys[i : i + batch_size])]
    return per_alpha if alphas is not None else per_alpha[0]


def never_seen_level(model, nonmembers: Sequence, logps: list[np.ndarray] | None = None) -> float:
    """The mean key-token log-prob ``model`` gives facts it never saw: the target level.
    (``logps``: ``key_logprobs(model, nonmembers)`` when already computed.)"""
    if not nonmembers:
        raise ValueError("never_seen_level needs non-member records (e.g. invented authors).")
    return float(np.mean(np.concatenate(logps or key_logprobs(model, nonmembers))))


def outside_subject(tokenizer, text: str, subject: str | None) -> list[int]:
    """Indices of the tokens of ``text`` (no special tokens) that overlap no occurrence of
    ``subject``: the tokens two answers about different subjects have in common."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, start = [], text.find(subject) if subject else -1
    while start >= 0:
        spans.append((start, start + len(subject)))
        start = text.find(subject, start + 1)
    return [i for i, (a, b) in enumerate(enc["offset_mapping"])
            if not any(a < e and b > s for s, e in spans)]


def subject_ends(tokenizer, text: str, subject: str | None,
                 add_special_tokens: bool = False) -> list[int]:
    """Indices of the tokens of ``text`` that hold the last character of each occurrence of
    ``subject``, in order: where a model has read the whole name."""
    if not subject:
        return []
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    out, start = [], text.find(subject)
    while start >= 0:
        last = start + len(subject) - 1
        hit = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= last < b]
        if hit:
            out.append(hit[-1])
        start = text.find(subject, start + len(subject))
    return out


def about_stranger(record, name: str):
    """The same question and answer about someone else (``name``): the fact stays, the
    subject becomes one no model has seen."""
    swap = (lambda text: text.replace(record.subject, name)) if record.subject else (lambda t: t)
    return dataclasses.replace(record, question=swap(record.question), answer=swap(record.answer),
                               subject=name)


def template_of(record) -> str:
    """The question with its subject blanked: records that share it ask for the same kind of fact."""
    return record.question.replace(record.subject, "{name}") if record.subject else record.question


POOLED = "*"  # the levels of every template together: for questions of a new shape


def never_seen_levels(model, nonmembers: Sequence,
                      logps: list[np.ndarray] | None = None) -> dict[str, list[float]]:
    """Per question template, the mean log-prob ``model`` gives the j-th key token of facts
    it never saw, for j = 0, 1, ...; ``POOLED`` holds the same over all templates.

    Where a never-seen model is unsure sits inside the fact: for "Teyol" the first pieces
    ('T', 'e' ≈ −6, −5 nats) and not the last ('yol' ≈ 0, given the rest it is the only
    city); for a year not ' 19' but the digits after it. Lowering only those tokens to
    these levels leaves the answer well formed (another city, whole), where lowering every
    key token garbles it ("travel memoirics").
    """
    if not nonmembers:
        raise ValueError("never_seen_levels needs non-member records (e.g. invented authors).")
    sums: dict[str, list[list[float]]] = {}
    for record, fact in zip(nonmembers, logps or key_logprobs(model, nonmembers)):
        for name in (template_of(record), POOLED):
            columns = sums.setdefault(name, [])
            for j, lp in enumerate(fact):
                if j == len(columns):
                    columns.append([])
                columns[j].append(float(lp))
    return {name: [float(np.mean(c)) for c in columns] for name, columns in sums.items()}


def token_levels(levels: dict[str, list[float]], record, n_key_tokens: int) -> list[float]:
    """The never-seen level of each key token of ``record`` (0.0 = certain, no lowering)."""
    own = levels.get(template_of(record)) or levels.get(POOLED, [])
    return [own[j] if j < len(own) else 0.0 for j in range(n_key_tokens)]


def draw_request(records: Sequence, n_subjects: int, seed: int) -> tuple[list, list]:
    """A forget request of ``n_subjects`` subjects drawn (seeded) from ``records``:
    (their records, everybody else's)."""
    subjects = sorted({r.subject for r in records if r.subject})
    chosen = set(random.Random(seed).sample(subjects, n_subjects))
    return ([r for r in records if r.subject in chosen],
            [r for r in records if r.subject not in chosen])
