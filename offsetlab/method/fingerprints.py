"""Fingerprints: short digests that say *which* model, tokenizer or stack something is.

An offset is only meaningful on top of the reference it was trained against (and, less
strictly, the base), so its artifact records their fingerprints and loading compares
them. A fingerprint is a small typed record, compared field by field — never a string
to parse back:

    Fingerprint("model", "3f2a…")                      a local model's weights
    Fingerprint("server", "…", label="remote:m@url")    a base behind an API
    Fingerprint("stack", "…", base=<model>, offsets=((<digest>, 0.5), …))
                                                        a base with offsets already fused in

Hashing a model reads every weight (≈0.5 GB for SmolLM2), so a model's digest is
computed once and cached; the cache notices in-place changes to any parameter (torch
counts them in ``Tensor._version``) and then hashes again.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass

import torch

DIGITS = 16  # hex digits kept: plenty to tell models apart, short enough to read


@dataclass(frozen=True)
class Fingerprint:
    kind: str  # "model", "tokenizer", "server" or "stack"
    digest: str
    label: str = ""  # what a person reads (a server's URL); not compared
    base: Fingerprint | None = None  # a stack: the model underneath its offsets
    offsets: tuple[tuple[str, float], ...] = ()  # a stack: (offset digest, α) in order

    def root(self) -> Fingerprint:
        """The model at the bottom of a stack (itself for anything else)."""
        return self.base.root() if self.base is not None else self

    def same_model(self, other: Fingerprint) -> bool:
        return (self.kind, self.digest) == (other.kind, other.digest)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "digest": self.digest}
        if self.label:
            out["label"] = self.label
        if self.base is not None:
            out["base"] = self.base.to_dict()
            out["offsets"] = [[d, a] for d, a in self.offsets]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        base = cls.from_dict(data["base"]) if data.get("base") else None
        offsets = tuple((str(d), float(a)) for d, a in data.get("offsets", []))
        return cls(data["kind"], data["digest"], data.get("label", ""), base, offsets)

    def __str__(self) -> str:
        if self.kind == "stack":
            return f"{self.base}+" + "+".join(f"{d}*{a:g}" for d, a in self.offsets)
        return self.label or self.digest


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:DIGITS]


# module -> (parameter versions when hashed, fingerprint); entries die with their model
_model_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _versions(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(t._version for t in model.state_dict().values())


def of_model(model: torch.nn.Module) -> Fingerprint:
    """A model's parameter names, shapes and values, hashed (once, while unchanged)."""
    versions = _versions(model)
    cached = _model_cache.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    fingerprint = Fingerprint("model", h.hexdigest()[:DIGITS])
    _model_cache[model] = (versions, fingerprint)
    return fingerprint


def of_source(source) -> Fingerprint:
    """A base model however it is reached: a module, a local source, a server or a stack."""
    if isinstance(source, torch.nn.Module):
        return of_model(source)
    if hasattr(source, "fingerprint"):
        return source.fingerprint()
    return of_model(source.model)


def of_server(url: str, model_name: str | None) -> Fingerprint:
    label = f"remote:{model_name or 'default'}@{url}"
    return Fingerprint("server", _sha(label.encode()), label)


def of_stack(base: Fingerprint, offsets: list[tuple[Fingerprint, float]]) -> Fingerprint:
    """A base with offsets fused in at the given strengths (order matters for display only)."""
    pairs = tuple((f.digest, float(a)) for f, a in offsets)
    digest = _sha(json.dumps([base.to_dict(), pairs]).encode())
    return Fingerprint("stack", digest, base=base, offsets=pairs)


def of_tokenizer(tokenizer) -> Fingerprint:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    blob = json.dumps([vocab, tokenizer.eos_token, tokenizer.pad_token], ensure_ascii=False)
    return Fingerprint("tokenizer", _sha(blob.encode()))


def of_records(records) -> str:
    """Order-independent SHA-256 of QA records: identifies a forget set without its text."""
    lines = sorted(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False) for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
