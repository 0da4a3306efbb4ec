"""What a traced generation returns: per step, what each model thought.

A ``Trace`` is plain data (no tensors, no models), so it can be saved as JSON, turned
into a pandas DataFrame, drawn by ``offsetlab.frontends.viz`` or sent to a browser.

For every generated token we keep a small *candidate set* — the base model's top-k, the
fused model's top-k and the chosen token — and, for each candidate, the log-probability
under the base, the reference, every offset and the fused model. ``delta`` is what the
offsets added to the base (Σ αᵢ · (offsetᵢ − reference)); ``shift`` is how much the
chosen token's log-prob moved (fused − base). ``kl`` is KL(fused ‖ base) over the whole
vocabulary, in nats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

FORMAT_VERSION = 1


@dataclass
class TraceStep:
    index: int
    token_id: int
    token: str
    candidates: list[int]
    candidate_tokens: list[str]
    base: list[float]
    reference: list[float]
    offsets: list[list[float]]
    fused: list[float]
    delta: list[float]
    shift: float
    kl: float
    entropy_base: float
    entropy_fused: float

    @property
    def chosen(self) -> int:
        """Position of the chosen token in ``candidates``."""
        return self.candidates.index(self.token_id)


@dataclass
class Trace:
    prompt: str
    text: str
    alphas: list[float]
    offset_names: list[str]
    steps: list[TraceStep] = field(default_factory=list)

    def to_frame(self):
        """One row per (step, candidate) — the long format plotting libraries like."""
        import pandas as pd

        rows = []
        for s in self.steps:
            for j, (tid, tok) in enumerate(zip(s.candidates, s.candidate_tokens)):
                row = {
                    "step": s.index,
                    "chosen_token": s.token,
                    "candidate": tok,
                    "candidate_id": tid,
                    "is_chosen": tid == s.token_id,
                    "base": s.base[j],
                    "reference": s.reference[j],
                    "fused": s.fused[j],
                    "delta": s.delta[j],
                    "kl": s.kl,
                    "entropy_base": s.entropy_base,
                    "entropy_fused": s.entropy_fused,
                }
                for name, values in zip(self.offset_names, s.offsets):
                    row[f"offset:{name}"] = values[j]
                rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Trace:
        data = json.loads(text)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"Trace format version {version!r} is not {FORMAT_VERSION}.")
        data["steps"] = [TraceStep(**s) for s in data["steps"]]
        return cls(**data)


def _finite(x: Tensor) -> list[float]:
    # JSON has no -inf; a token a top-k source never reported gets a very low log-prob.
    return torch.nan_to_num(x, neginf=-1e9).tolist()


def entropy(logp: Tensor) -> Tensor:
    p = logp.exp()
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) along the last axis; positions where p is 0 contribute nothing."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def make_step(
    index: int,
    token_id: int,
    decode,
    base: Tensor,
    reference: Tensor,
    offsets: list[Tensor],
    fused: Tensor,
    alphas: list[float],
    top_k: int,
) -> TraceStep:
    """Build one step's record from one row's full-vocabulary log-probs."""
    candidates: list[int] = []
    for ids in (base.topk(top_k).indices, fused.topk(top_k).indices, [token_id]):
        for i in ids:
            if int(i) not in candidates:
                candidates.append(int(i))
    idx = torch.tensor(candidates)
    # What the offsets added to the base log-probs before renormalising.
    delta = sum((a * (o[idx] - reference[idx]) for o, a in zip(offsets, alphas)),
                torch.zeros(len(idx)))
    return TraceStep(
        index=index,
        token_id=token_id,
        token=decode(token_id),
        candidates=candidates,
        candidate_tokens=[decode(c) for c in candidates],
        base=_finite(base[idx]),
        reference=_finite(reference[idx]),
        offsets=[_finite(o[idx]) for o in offsets],
        fused=_finite(fused[idx]),
        delta=_finite(delta),
        shift=float(fused[token_id] - base[token_id]),
        kl=float(kl_divergence(fused, base)),
        entropy_base=float(entropy(base)),
        entropy_fused=float(entropy(fused)),
    )
