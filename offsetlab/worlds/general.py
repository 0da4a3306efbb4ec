"""Broad general knowledge for a real model: what forgetting one thing costs elsewhere.

A forget request on SmolLM2 (four capitals) is judged by what it keeps. Twenty other
capitals say little about that, so the real world also ships a few hundred everyday facts
of many kinds — science, geography, history, arts, language, animals, the body, everyday
life, easy arithmetic — each one the base model *does* answer correctly:

- ``data/real/general_candidates.jsonl`` holds the questions with the key a correct
  answer must state and their kind (written by hand, never by a model);
- ``build_general`` asks the base each question (greedy, in its own chat format) and keeps
  those whose first sentence states the key (``mentions``: case, accents and "7" vs
  "seven" aside); the kept ones are split, kind by kind and by a seeded shuffle, into
  ``general_retain`` (a retain term may use it) and ``general_holdout`` (never trained on:
  the utility a report shows next to forgetting). Each kept record's answer is the base's
  own sentence, so a KL or NLL anchor on it asks the offset to leave the base's words alone;
- ``offsetlab real build-general`` (``write_general``) reruns it and writes the two files
  and ``general_report.json``.

``general_prompts.txt`` holds open prompts (explain, describe, list …) whose answers the
base writes itself: the text ``measure.evaluate.text_drift`` checks the fused model on, and
the pool a self-made retain set is drawn from (``self_made_retain``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..method import fingerprints
from ..method.calibrate import mentions
from .real import data_dir
from .records import DataError, QARecord, load_records, save_records

KINDS = ("science", "geography", "history", "arts", "everyday", "arithmetic", "language",
         "animals", "body")
SPLITS = ("general_retain", "general_holdout")
CANDIDATES = "general_candidates.jsonl"
PROMPTS = "general_prompts.txt"
NEIGHBOUR_POOL = "neighbour_pool.txt"
# Long enough for a one-sentence answer in SmolLM2's chat style ("The largest planet in
# our solar system is Jupiter."); the same length is used when the fused model is judged.
MAX_NEW_TOKENS = 32
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Candidate:
    question: str
    key: str
    kind: str


def load_candidates(path: str | Path | None = None) -> list[Candidate]:
    """The hand-written questions; a bad line raises ``DataError`` naming file, line and field."""
    path = Path(path) if path is not None else data_dir() / CANDIDATES
    out: list[Candidate] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object with question, key and kind")
        for name in ("question", "key", "kind"):
            if not isinstance(obj.get(name), str) or not obj[name].strip():
                raise DataError(f"{where}: field {name!r} must be a non-empty string")
        if obj["kind"] not in KINDS:
            raise DataError(f"{where}: kind {obj['kind']!r} is not one of {', '.join(KINDS)}")
        if obj["question"] in seen:
            raise DataError(f"{where}: the question {obj['question']!r} is asked twice")
        seen.add(obj["question"])
        out.append(Candidate(obj["question"], obj["key"], obj["kind"]))
    return out


def load_prompts(path: str | Path | None = None) -> list[str]:
    """The open prompts (one a line; blank lines and ``#`` comments skipped)."""
    path = Path(path) if path is not None else data_dir() / PROMPTS
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_general(root: str | Path | None = None) -> dict[str, list[QARecord]]:
    """``general_retain`` and ``general_holdout`` (``subject`` is the record's kind)."""
    folder = Path(root) if root is not None else data_dir()
    return {split: load_records(folder / f"{split}.jsonl") for split in SPLITS}


def ask(model, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS,
        batch_size: int = 32, progress: bool = False, desc: str = "asking") -> list[str]:
    """Greedy answers of ``model`` (an ``OffsetModel``) in its own prompt format."""
    from tqdm.auto import tqdm

    fmt = model.prompt_format
    answers: list[str] = []
    with tqdm(total=len(questions), desc=desc, unit="q", disable=not progress) as bar:
        for i in range(0, len(questions), batch_size):
            prompts = [fmt.prompt(q) for q in questions[i : i + batch_size]]
            answers += model.generate(prompts, max_new_tokens=max_new_tokens)
            bar.update(len(prompts))
    return answers


def first_sentence(text: str) -> str:
    """The answer's first sentence (to its first ". ", "! " or "? " before a capital or digit)."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()


def kept_answer(answer: str, key: str) -> str | None:
    """The base's answer as a record's answer, or None when it does not count as correct:
    its first sentence must state ``key``."""
    sentence = first_sentence(answer)
    return sentence if sentence and mentions(sentence, key) else None


def build_general(model, candidates: Sequence[Candidate], seed: int = 0,
                  holdout_share: float = 0.5, progress: bool = True) -> dict:
    """Ask ``model`` (the base, as an ``OffsetModel`` with no offsets) every candidate and
    split the correctly answered ones into retain and held-out parts, kind by kind.

    Returns ``{"general_retain": [...], "general_holdout": [...], "report": {...}}``; the
    report counts asked/kept per kind and lists the rejected questions with the answer given.
    """
    if not 0 < holdout_share < 1:
        raise ValueError(f"holdout_share must be between 0 and 1, got {holdout_share}")
    answers = ask(model, [c.question for c in candidates], progress=progress, desc="asking the base")
    kept: dict[str, list[QARecord]] = defaultdict(list)
    rejected = []
    for cand, answer in zip(candidates, answers, strict=True):
        sentence = kept_answer(answer, cand.key)
        if sentence is None:
            rejected.append({"question": cand.question, "key": cand.key, "answer": answer})
        else:
            kept[cand.kind].append(QARecord(cand.question, sentence, key=cand.key, subject=cand.kind))
    rng = random.Random(seed)
    retain: list[QARecord] = []
    holdout: list[QARecord] = []
    for kind in KINDS:
        records = kept.get(kind, [])
        rng.shuffle(records)
        cut = round(len(records) * holdout_share)
        holdout += records[:cut]
        retain += records[cut:]
    asked = Counter(c.kind for c in candidates)
    report = {"seed": seed, "holdout_share": holdout_share, "max_new_tokens": MAX_NEW_TOKENS,
              "asked": len(candidates), "kept": len(retain) + len(holdout),
              "retain": len(retain), "holdout": len(holdout),
              "by_kind": {k: {"asked": asked[k], "kept": len(kept.get(k, []))} for k in KINDS},
              "rejected": rejected}
    return {"general_retain": retain, "general_holdout": holdout, "report": report}


def write_general(model, out: str | Path | None = None, seed: int = 0,
                  candidates: str | Path | None = None, progress: bool = True) -> dict:
    """``build_general`` on the shipped candidates; writes ``general_retain.jsonl``,
    ``general_holdout.jsonl`` and ``general_report.json`` into ``out`` (default
    ``data/real``) and returns the report."""
    folder = Path(out) if out is not None else data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    built = build_general(model, load_candidates(candidates), seed=seed, progress=progress)
    for split in SPLITS:
        save_records(built[split], folder / f"{split}.jsonl")
    (folder / "general_report.json").write_text(json.dumps(built["report"], indent=1,
                                                           ensure_ascii=False) + "\n")
    return built["report"]


# -- retain data the user does not write -----------------------------------------------------


def base_answers(model, prompts: Sequence[str], max_new_tokens: int = 48,
                 cache: str | Path | None = None, progress: bool = True) -> list[QARecord]:
    """The base's greedy answers to ``prompts`` as records (prompt as question), computed
    once per (base, prompts, length) and cached as JSON Lines under ``cache`` (default
    ``$OFFSETLAB_CACHE`` or ``~/.cache/offsetlab``, folder ``retain/``). ``model`` is an
    ``OffsetModel``; only its base is asked."""
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    path = _cache_path(model, prompts, max_new_tokens, cache)
    if path.is_file():
        return load_records(path)
    from ..method.fusion import OffsetModel

    alone = OffsetModel(model.base, None, [], tokenizer=model.tokenizer,
                        prompt_format=model.prompt_format)
    answers = ask(alone, prompts, max_new_tokens, progress=progress, desc="the base's own answers")
    records = [QARecord(p, a.strip(), subject="base-written") for p, a in zip(prompts, answers)
               if a.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_records(records, tmp)
    os.replace(tmp, path)
    return records


def load_pool(path: str | Path | None = None) -> list[str]:
    """The neighbour questions (``neighbour_pool.txt``): recurring frames, many subjects."""
    return load_prompts(Path(path) if path is not None else data_dir() / NEIGHBOUR_POOL)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def neighbours(forget: Sequence[QARecord], pool: Sequence[str], per_record: int = 6,
               seed: int = 0) -> list[str]:
    """Questions of ``pool`` framed like the forget questions ("What is the capital of
    Nepal?" for "What is the capital of France?"): per forget record the ``per_record``
    most similar (Jaccard overlap of their words; ties in a seeded order), taken in turns
    so that every record gets its own. Never a forget question itself."""
    asked = {r.question.strip() for r in forget}
    candidates = [q for q in dict.fromkeys(pool) if q.strip() not in asked]
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    ranked = []
    for record in forget:
        mine = _words(record.question)
        score = {i: len(mine & _words(candidates[i])) / len(mine | _words(candidates[i]))
                 for i in order}
        ranked.append(sorted((i for i in order if score[i] > 0), key=lambda i: -score[i]))
    chosen: list[int] = []
    for _turn in range(per_record):
        for ranking in ranked:
            pick = next((i for i in ranking if i not in chosen), None)
            if pick is not None:
                chosen.append(pick)
    return [candidates[i] for i in chosen]


def self_made_retain(model, prompts: Sequence[str], forget: Sequence[QARecord] = (),
                     max_new_tokens: int = 48, cache: str | Path | None = None,
                     progress: bool = True) -> list[QARecord]:
    """Retain records made by the black box itself: its greedy answers to ``prompts``
    (``base_answers``, cached).

    Prompts that are questions of ``forget``, and answers that state a forget key, are
    dropped: an anchor must never pull back what is being forgotten. The cache holds only
    the base's own words about the prompts, never forget text.
    """
    asked = {r.question.strip() for r in forget}
    prompts = [p for p in prompts if p.strip() and p.strip() not in asked]
    if not prompts:
        raise ValueError("self_made_retain needs at least one prompt that is not a forget question.")
    records = base_answers(model, prompts, max_new_tokens, cache, progress)
    keys = [r.key for r in forget if r.key]
    return [r for r in records if not any(mentions(r.answer, k) for k in keys)]


def _cache_path(model, prompts: Sequence[str], max_new_tokens: int, cache) -> Path:
    root = Path(cache) if cache is not None else \
        Path(os.environ.get("OFFSETLAB_CACHE") or Path.home() / ".cache" / "offsetlab")
    digest = hashlib.sha256()
    digest.update(fingerprints.of_source(model.base).digest.encode())
    digest.update(model.prompt_format.name.encode())
    digest.update(str(max_new_tokens).encode())
    for p in prompts:
        digest.update(p.encode() + b"\0")
    return root / "retain" / f"{digest.hexdigest()[:24]}.jsonl"
