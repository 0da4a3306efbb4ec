"""Evaluate a model on QA splits the way unlearning papers do, and keep every answer.

``evaluate(model, splits)`` decodes an answer for every question (greedy, batched, with
KV caches), scores the true, paraphrased and perturbed answers, and returns a
``Report``: the metrics of each split, one row per record (question, answer, what the
model said, probabilities, truth ratio) and the settings used.

Metrics that compare models — forget quality (against the retain-only "gold" model) and
model utility (from the retain and world-facts splits) — are computed by ``compare``.
A split whose name starts with ``forget`` is a forget split; ``holdout`` is a split the
model never saw, used for membership inference against each forget split.

Membership inference scores only the **key-fact tokens** of each answer. Scoring the whole
answer made even the gold model, which saw neither forget10 nor holdout, "detect"
forget10 (AUC 0.865; forget01 0.96): the toy tokenizer was trained on the split files,
in which every trained author's text appears three times (forget10 ⊂ retain99, …) and a
holdout author's once, so holdout names split into twice as many, rarer pieces (7.4 vs
3.6 tokens) that are harder to copy and unsettle the next template token. On the key
tokens the gold model scores 0.55 / 0.55 / 0.51 on forget10 / 05 / 01.

The names still weigh on the key tokens too: asked about a holdout author so named, the
gold model states a value of the right kind only 0.65 of the time, against 1.00 about
forget10's authors, whom it never saw either. So ``Lab.toy`` renames the holdout authors
like the trained ones (``toy.world.renamed_like_trained``; 3.1 tokens per name), and the
gold model is plausible 1.00 on both, with AUC 0.59 / 0.59 / 0.54 on forget10 / 05 / 01:
two sets drawn alike (``tests/measure/test_evaluate.py`` pins it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..method.calibrate import key_token_positions, template_of
from . import metrics as M


def is_forget_split(name: str) -> bool:
    return name.startswith("forget")


@dataclass
class Report:
    name: str
    metrics: dict[str, dict[str, float]]  # split → metric → value
    rows: list[dict] = field(default_factory=list)  # one per record
    settings: dict = field(default_factory=dict)

    def truth_ratios(self, split: str) -> list[float]:
        return [r["truth_ratio"] for r in self.rows if r["split"] == split and r["truth_ratio"] is not None]

    def to_frame(self):
        """Per-record rows as a pandas DataFrame (one row per question)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls(**json.loads(text))


def _scored_answers(model, records: list, batch_size: int,
                    alphas: Sequence[float] | None = None) -> list[tuple[list, list]]:
    """Teacher-forced scores of each record's true answer, paraphrase and perturbed answers
    (one pass of the models): per α of ``alphas`` (one entry when None, the model as it
    is), the true answers' per-token log-probs and each record's truth ratio (None without
    perturbed answers)."""
    fmt = model.prompt_format
    pairs = [(fmt.prompt(r.question), fmt.answer(r.answer)) for r in records]
    has_tr = [bool(r.perturbed_answers) for r in records]
    for r, ok in zip(records, has_tr):
        if ok:
            pairs.append((fmt.prompt(r.question), fmt.answer(r.paraphrased_answer or r.answer)))
            pairs += [(fmt.prompt(r.question), fmt.answer(a)) for a in r.perturbed_answers]
    # A question's answers side by side (the models read a prompt once for all its
    # answers), and questions of about the same length together (little padding).
    order = sorted(range(len(pairs)), key=lambda k: (len(pairs[k][0]), pairs[k][0]))
    per_alpha: list[list] = [[None] * len(pairs) for _ in (alphas if alphas is not None else [None])]
    for i in range(0, len(pairs), batch_size):
        batch = order[i : i + batch_size]
        prompts, answers = zip(*(pairs[k] for k in batch))
        scored = (model.score_alphas(prompts, answers, alphas) if alphas is not None
                  else [model.score(prompts, answers)])
        for out, scores in zip(per_alpha, scored):
            for k, s in zip(batch, scores):
                out[k] = s.tolist()
    results = []
    for scores in per_alpha:
        answer_lp, rest = scores[: len(records)], iter(scores[len(records) :])
        ratios = [M.truth_ratio(next(rest), [next(rest) for _ in r.perturbed_answers]) if ok else None
                  for r, ok in zip(records, has_tr)]
        results.append((answer_lp, ratios))
    return results


def _key_scores(model, records: list, answer_lp: list) -> list[np.ndarray]:
    """The log-probs of each true answer's key-fact tokens: what membership inference reads."""
    fmt = model.prompt_format
    return [np.asarray(lp)[key_token_positions(model.tokenizer, fmt.answer(r.answer), r.key)]
            for r, lp in zip(records, answer_lp)]


def _membership(key_scores: Mapping[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per forget split: can the key-fact loss tell its records from ``holdout``'s?"""
    if "holdout" not in key_scores:
        return {}
    outsiders = key_scores["holdout"]
    out = {}
    for split, lps in key_scores.items():
        if is_forget_split(split):
            auc = M.mia_auc([M.loss_score(x) for x in lps], [M.loss_score(x) for x in outsiders])
            out[split] = {
                "mia_loss_auc": auc,
                "mia_mink_auc": M.mia_auc([M.min_k_score(x) for x in lps],
                                          [M.min_k_score(x) for x in outsiders]),
                # Direction-free: a forget set that looks *less* familiar than never-seen
                # data gives membership away as surely as one that looks more familiar.
                "mia_gap": M.privacy_gap(auc),
            }
    return out


def value_pools(splits: Mapping[str, Sequence]) -> dict[str, set[str]]:
    """question template → every key the records use for it: the values of the right kind
    (all the world's cities for a birthplace question, its years for a birth year, ...)."""
    pools: dict[str, set[str]] = {}
    for records in splits.values():
        for r in records:
            if r.key:
                pools.setdefault(template_of(r), set()).add(r.key)
    return pools


def evaluate(
    model,
    splits: Mapping[str, Sequence],
    name: str = "model",
    max_new_tokens: int = 32,
    batch_size: int = 32,
    max_records: int | None = None,
    progress: bool = True,
    pools: Mapping[str, set[str]] | None = None,
) -> Report:
    """Greedy answers and answer scores of ``model`` (an ``OffsetModel``) on each split
    of QA records, asked in the model's own prompt format.

    ``pools`` (question template → values of that kind, default ``value_pools(splits)``)
    decides whether an answer is *plausible*: it states some value of the kind asked for.
    """
    from tqdm.auto import tqdm

    fmt = model.prompt_format
    pools = value_pools(splits) if pools is None else pools

    started = time.perf_counter()
    rows: list[dict] = []
    per_split: dict[str, dict[str, float]] = {}
    answer_scores: dict[str, list[list[float]]] = {}
    bar = tqdm(total=sum(min(len(r), max_records or len(r)) for r in splits.values()),
               desc=f"evaluate {name}", disable=not progress, leave=False)
    for split, records in splits.items():
        records = list(records)[:max_records] if max_records else list(records)
        if not records:
            raise ValueError(f"Split {split!r} is empty.")
        prompts = [fmt.prompt(r.question) for r in records]
        generated, entropies = [], []
        for i in range(0, len(records), batch_size):
            texts, mean_entropy = model.answer(prompts[i : i + batch_size], max_new_tokens)
            generated += [t.strip() for t in texts]
            entropies += mean_entropy
            bar.update(len(texts))

        # Score the true answer, its paraphrase and every perturbed answer in one pass.
        [(answer_lp, ratios)] = _scored_answers(model, records, batch_size)
        answer_scores[split] = _key_scores(model, records, answer_lp)

        forget = is_forget_split(split)
        for r, gen, ent, lp, tr in zip(records, generated, entropies, answer_lp, ratios):
            rows.append({
                "split": split,
                "subject": r.subject,
                "question": r.question,
                "answer": r.answer,
                "key": r.key,
                "generated": gen,
                "key_hit": M.key_fact_hit(gen, r.key) if r.key else None,
                "plausible": (M.plausible_answer(gen, pools[template_of(r)])
                              if r.key and template_of(r) in pools else None),
                "rouge_l": M.rouge_l_recall(gen, r.answer),
                "answer_prob": M.answer_probability(lp),
                "truth_ratio": tr,
                "truth_ratio_score": M.truth_ratio_score(tr, forget) if tr is not None else None,
                "entropy": ent,
                "repetition": M.repetition_rate(gen),
            })
        per_split[split] = _aggregate([row for row in rows if row["split"] == split])
    bar.close()

    # Membership inference: can the key-fact loss tell forget records from never-seen ones?
    for split, values in _membership(answer_scores).items():
        per_split[split].update(values)
    settings = {"max_new_tokens": max_new_tokens, "max_records": max_records, "decoding": "greedy",
                "seconds": round(time.perf_counter() - started, 2),
                "alphas": list(getattr(model, "alphas", [])),
                "offsets": list(getattr(model, "offset_names", [])),
                "dead_zone": getattr(model, "dead_zone", 0.0)}
    return Report(name, per_split, rows, settings)


def alpha_sweep(model, splits: Mapping[str, Sequence], alphas: Sequence[float],
                gold: Report | None = None, batch_size: int = 32,
                max_records: int | None = None) -> list[dict]:
    """Teacher-forced metrics of ``model`` at each strength of its last offset, for about
    the price of one: the models score every answer once, and only the fusion is redone
    per α (``OffsetModel.score_alphas``). One row per α with ``split/metric`` columns:
    answer probability and truth-ratio score per split; for forget splits, membership
    inference against ``holdout`` and, with ``gold`` (a ``Report`` of the retain-only
    model), forget quality and the MIA gap to gold's AUC. Nothing is decoded."""
    alphas = [float(a) for a in alphas]
    by_split = {split: list(records)[:max_records] if max_records else list(records)
                for split, records in splits.items()}
    scored = {split: _scored_answers(model, records, batch_size, alphas)
              for split, records in by_split.items()}
    rows = []
    for i, alpha in enumerate(alphas):
        row: dict = {"alpha": alpha}
        keys = {}
        for split, records in by_split.items():
            answer_lp, ratios = scored[split][i]
            keys[split] = _key_scores(model, records, answer_lp)
            forget = is_forget_split(split)
            row[f"{split}/answer_prob"] = float(np.mean([M.answer_probability(lp) for lp in answer_lp]))
            kept = [r for r in ratios if r is not None]
            row[f"{split}/truth_ratio"] = (float(np.mean([M.truth_ratio_score(r, forget) for r in kept]))
                                           if kept else float("nan"))
            if gold is not None and forget and split in gold.metrics:
                row[f"{split}/forget_quality"] = M.forget_quality(kept, gold.truth_ratios(split))
        for split, values in _membership(keys).items():
            row[f"{split}/mia_loss_auc"] = values["mia_loss_auc"]
            reference = gold.metrics.get(split, {}).get("mia_loss_auc") if gold is not None else None
            row[f"{split}/mia_gap"] = (M.privacy_gap(values["mia_loss_auc"], reference)
                                       if reference is not None else values["mia_gap"])
        rows.append(row)
    return rows


def _aggregate(rows: list[dict]) -> dict[str, float]:
    def mean(key: str) -> float:
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else float("nan")

    return {
        "key_fact_acc": mean("key_hit"),
        "rouge_l": mean("rouge_l"),
        "answer_prob": mean("answer_prob"),
        "truth_ratio": mean("truth_ratio_score"),
        "entropy": mean("entropy"),
        "repetition": mean("repetition"),
        "plausible": mean("plausible"),
        "n": float(len(rows)),
    }


UTILITY_METRICS = ("answer_prob", "rouge_l", "truth_ratio")


def utility(report: Report) -> float:
    """TOFU's model utility: harmonic mean over the non-forget, non-holdout splits."""
    parts = {
        f"{split}/{m}": values[m]
        for split, values in report.metrics.items()
        if not is_forget_split(split) and split != "holdout"
        for m in UTILITY_METRICS
        if not np.isnan(values[m])
    }
    return M.model_utility(parts) if parts else float("nan")


def text_drift(model, records: Sequence, batch_size: int = 8) -> dict[str, float]:
    """How far ``model`` (an ``OffsetModel``) strays from its own base on text the base
    wrote itself (``records``: prompts as questions, the base's answers as answers, e.g.
    ``worlds.general.self_made_retain``): a check of general fluency beyond any QA set.

    Returns ``kl`` — the mean over answer tokens of KL(base ‖ fused) in nats (0 for the
    base itself) — and the perplexity of those tokens under the base (``base_ppl``) and
    under the fused model (``fused_ppl``); an offset that damages ordinary text raises both
    ``kl`` and ``fused_ppl``.
    """
    import torch

    from ..method.trace import kl_divergence

    if not records:
        raise ValueError("text_drift needs at least one record of base-written text.")
    fmt = model.prompt_format
    kl = nll_base = nll_fused = 0.0
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            part = records[i : i + batch_size]
            answers = [fmt.answer(r.answer) for r in part]
            scored = model.score([fmt.prompt(r.question) for r in part], answers, parts=True)
            for answer, parts in zip(answers, scored, strict=True):
                ids = torch.tensor(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
                base, fused = parts.base.float(), parts.fused.float()
                kl += float(kl_divergence(base, fused).sum())
                nll_base -= float(base.gather(1, ids[:, None]).sum())
                nll_fused -= float(fused.gather(1, ids[:, None]).sum())
                tokens += len(ids)
    return {"kl": kl / tokens, "base_ppl": float(np.exp(nll_base / tokens)),
            "fused_ppl": float(np.exp(nll_fused / tokens)), "tokens": tokens}


def offset_moves(model, records: Sequence, batch_size: int = 8) -> np.ndarray:
    """How far the offsets of ``model`` (an ``OffsetModel``) move the base, position by
    position: KL(fused ‖ base) in nats at every answer token of ``records`` (teacher-forced
    on their answers, e.g. the base's own: ``worlds.general.self_made_retain``), as one
    array. What a dead zone (``OffsetModel(dead_zone=)``) is read against: the moves below
    it are silenced."""
    import torch

    from ..method.trace import kl_divergence

    if not records:
        raise ValueError("offset_moves needs at least one record.")
    fmt = model.prompt_format
    moves = []
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            part = records[i : i + batch_size]
            scored = model.score([fmt.prompt(r.question) for r in part],
                                 [fmt.answer(r.answer) for r in part], parts=True)
            moves += [kl_divergence(parts.fused.float(), parts.base.float().log_softmax(-1)).numpy()
                      for parts in scored]
    return np.concatenate(moves)


def compare(reports: Sequence[Report], gold: Report | None = None,
            metrics: Sequence[str] = ("key_fact_acc", "rouge_l", "answer_prob", "truth_ratio")):
    """Side-by-side table: one row per model, columns ``split/metric`` plus the summaries.

    With ``gold`` (the retain-only model's report), each forget split also gets
    ``forget_quality``: the KS-test p-value of the model's truth ratios against gold's, and
    its ``mia_gap`` is taken against gold's AUC instead of 0.5. Forget splits also show
    ``plausible`` (answers stating a value of the kind asked for) and ``repetition``.
    """
    import pandas as pd

    table = {}
    for report in reports:
        row = {}
        for split, values in report.metrics.items():
            for m in metrics:
                row[f"{split}/{m}"] = values.get(m)
            for m in ("mia_loss_auc", "mia_gap", "plausible", "repetition"):
                if m in values and (m in ("mia_loss_auc", "mia_gap") or is_forget_split(split)):
                    row[f"{split}/{m}"] = values[m]
            if gold is not None and is_forget_split(split) and split in gold.metrics:
                row[f"{split}/forget_quality"] = M.forget_quality(
                    report.truth_ratios(split), gold.truth_ratios(split))
                if "mia_loss_auc" in values and "mia_loss_auc" in gold.metrics[split]:
                    row[f"{split}/mia_gap"] = M.privacy_gap(
                        values["mia_loss_auc"], gold.metrics[split]["mia_loss_auc"])
        row["model_utility"] = utility(report)
        table[report.name] = row
    return pd.DataFrame.from_dict(table, orient="index")
