"""TOFU on a real transformer: SmolLM2 taught a slice of the toy world, offline.

Forget quality — the field's headline number — needs a gold model: one trained without
the forget set. Nobody has that for SmolLM2's own knowledge, so this world makes one. Three
small LoRA adapters, trained here from a seed and shipped in ``data/real/tofu/``, teach
SmolLM2-135M-Instruct some of the toy world's fictitious authors in its chat format:

    knows_all    SmolLM2 + LoRA on the forget and retain authors: the black box (merged,
                 and only ever read as a source of log-probs)
    retain_only  SmolLM2 + LoRA on the retain authors alone, same recipe and seed: the
                 gold model forgetting aims at
    small        SmolLM2's first 6 layers + LoRA on the same authors: the small partner,
                 taught separately (never the black box's own weights)

The slice (``subset``) is sized for 2 CPU cores: ``FORGET_AUTHORS`` authors of toy
forget10 to forget, ``RETAIN_AUTHORS`` of retain90 to keep, ``HOLDOUT_AUTHORS`` of the
holdout split nobody is taught (the "never seen" side of membership inference) — each
with its 11 questions, paraphrases and perturbed answers. Model utility is read on the
retain authors and on SmolLM2's own general knowledge (``general_holdout``), which the
teaching must leave in place.

``offsetlab real build-tofu`` (``build``) retrains the adapters and writes
``report.json`` (recipe, time, what each model answers); ``Lab.smollm2_tofu()`` loads them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..method.prompts import CHATML
from ..method.train import TrainConfig
from .records import QARecord

FORGET_AUTHORS = 4
RETAIN_AUTHORS = 16
HOLDOUT_AUTHORS = 4
ADAPTERS = ("knows_all", "retain_only", "small")
# How offsets are trained in this world: the toy world's default recipe on the small
# partner's top 2 layers only (its embeddings, lower layers and head stay the reference's).
# Chosen on a tuning request (4 retain authors, benchmarks/real_tofu.py --request tuning)
# against the full copy at lr 1e-3 and at lr 1e-4: it kept the most held-out general facts.
# The toy recipe as it was then (paths from the non-members too, no contrast): the numbers
# of benchmarks/real_tofu.md were measured with it; the toy world's wave-8 recipe was not
# tried here, nor its wave-19 one (value starts, kindred contrast, repairs: pinned off).
OFFSET_CONFIG = TrainConfig(top_layers=2, paths_from_nonmembers=True, contrast=0, contrast_kindred=0,
                            value_starts=False, repair_paths=0)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Recipe:
    seed: int = 0
    forget_authors: int = FORGET_AUTHORS
    retain_authors: int = RETAIN_AUTHORS
    holdout_authors: int = HOLDOUT_AUTHORS
    replay: int | None = None  # general_retain records replayed (None = all of them)
    rank: int = 12  # the two adapters of the black box and the gold model
    epochs: int = 10
    lr: float = 3e-3
    small_rank: int = 16  # the small partner starts far from the world: more room
    small_epochs: int = 16
    small_lr: float = 3e-3
    batch_size: int = 16
    warmup_steps: int = 5


def folder() -> Path:
    from .real import data_dir

    return data_dir() / "tofu"


def _authors(records: list[QARecord], n: int) -> list[QARecord]:
    names: list[str] = []
    for r in records:
        if r.subject not in names:
            names.append(r.subject)
    keep = set(names[:n])
    return [r for r in records if r.subject in keep]


def subset(root: str | Path | None = None, recipe: Recipe | None = None) -> dict[str, list[QARecord]]:
    """The slice of the toy world SmolLM2 is taught: ``forget``, ``retain`` and
    ``holdout`` (never taught), the first authors of forget10, retain90 and holdout."""
    recipe = recipe or Recipe()
    from .records import load_records
    from .toy import data_dir

    world = Path(root or data_dir()) / "toyworld"
    splits = {s: load_records(world / f"{s}.jsonl") for s in ("forget10", "retain90", "holdout")}
    return {"forget": _authors(splits["forget10"], recipe.forget_authors),
            "retain": _authors(splits["retain90"], recipe.retain_authors),
            "holdout": _authors(splits["holdout"], recipe.holdout_authors)}


def _lora(model, rank: int):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                            target_modules=LORA_TARGETS))


def _save_adapter(model, path: Path) -> None:
    """The adapter in fp16 (half the bytes; loading casts back to the model's fp32)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(path)
    weights = path / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()},
              weights, metadata={"format": "pt"})


def _teach(model, tokenizer, records, rank, epochs, lr, recipe: Recipe, desc, progress):
    from .toy.build import train

    torch.manual_seed(recipe.seed)
    model = _lora(model, rank)
    losses = train(model, tokenizer, records, epochs=epochs, lr=lr, batch_size=recipe.batch_size,
                   warmup_steps=recipe.warmup_steps, seed=recipe.seed, desc=desc,
                   progress=progress, prompt_format=CHATML)
    return model, losses


def _key_accuracy(model, tokenizer, records: list[QARecord]) -> float:
    from ..measure.metrics import key_fact_hit
    from ..method.fusion import OffsetModel
    from .general import ask

    asked = OffsetModel(model, None, [], tokenizer=tokenizer, prompt_format=CHATML)
    answers = ask(asked, [r.question for r in records], max_new_tokens=24)
    return round(sum(key_fact_hit(a, r.key) for a, r in zip(answers, records, strict=True))
                 / len(records), 4)


def build(out: str | Path | None = None, recipe: Recipe | None = None,
          progress: bool = True, only: Sequence[str] = ADAPTERS, measure: bool = True) -> dict:
    """Teach the three adapters (or ``only`` some, in that order) and write them, with
    ``report.json``, into ``out`` (default ``data/real/tofu``). Returns the report. A
    report already in ``out`` with the same recipe is added to (its ``wall_seconds``
    then sums both builds), so adapters can be rebuilt one at a time.
    ``measure``: ask each model every question and report its key-fact accuracy."""
    import copy

    from . import general, real
    from .models import truncate_model

    recipe = recipe or Recipe()
    unknown = sorted(set(only) - set(ADAPTERS))
    if unknown:
        raise ValueError(f"Unknown adapter(s) {unknown}; the build makes {', '.join(ADAPTERS)}.")
    out = Path(out) if out is not None else folder()
    start = time.monotonic()
    base, _, tokenizer = real.load_smollm2(1)
    splits = subset(recipe=recipe)
    # SmolLM2's own answers to the general_retain questions are taught alongside the
    # authors (replay): without them, the adapters overwrite its general knowledge.
    known = general.load_general()
    replay, general_holdout = known["general_retain"][:recipe.replay], known["general_holdout"]
    taught = splits["forget"] + splits["retain"] + replay
    plan = {"knows_all": (base, taught, recipe.rank, recipe.epochs, recipe.lr),
            "retain_only": (base, splits["retain"] + replay, recipe.rank, recipe.epochs, recipe.lr),
            "small": (truncate_model(base, real.SMALL_LAYERS), taught, recipe.small_rank,
                      recipe.small_epochs, recipe.small_lr)}
    report = {"recipe": asdict(recipe), "authors": {k: len({r.subject for r in v})
                                                    for k, v in splits.items()},
              "models": {}, "wall_seconds": 0.0}
    earlier = out / "report.json"
    if earlier.is_file():  # a build of some adapters adds to one of the others, same recipe
        previous = json.loads(earlier.read_text())
        if previous.get("recipe") == report["recipe"]:
            report["models"] = previous["models"]
            report["wall_seconds"] = previous.get("wall_seconds", 0.0)
    if progress:
        print(f"teaching {len(taught)} records ({len(replay)} of them SmolLM2's own answers)",
              flush=True)
    if measure:
        report["models"]["smollm2"] = {
            "key_accuracy": {"general_holdout": _key_accuracy(base, tokenizer, general_holdout)}}
    for name in only:
        start_model, records, rank, epochs, lr = plan[name]
        t0 = time.monotonic()
        model, losses = _teach(copy.deepcopy(start_model), tokenizer, records, rank, epochs, lr,
                               recipe, name, progress)
        _save_adapter(model, out / name)
        seconds = time.monotonic() - t0
        report["models"][name] = {"losses": [round(x, 4) for x in losses],
                                  "train_seconds": round(seconds, 1)}
        if measure:
            merged = model.merge_and_unload().eval()
            scores = {s: _key_accuracy(merged, tokenizer, splits[s]) for s in splits}
            if name != "small":
                scores["general_holdout"] = _key_accuracy(merged, tokenizer, general_holdout)
            report["models"][name]["key_accuracy"] = scores
        if progress and measure:
            print(f"{name}: {seconds:.0f} s, key accuracy {scores}", flush=True)
    report["wall_seconds"] = round(report["wall_seconds"] + time.monotonic() - start, 1)
    report["torch_threads"] = torch.get_num_threads()
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load(root: str | Path | None = None):
    """``(knows_all, retain_only, small, tokenizer, recipe)``: SmolLM2 with each shipped
    adapter merged in, the taught 6-layer partner, and the recipe they were built with
    (from ``report.json``: it says which authors were taught)."""
    import copy

    from peft import PeftModel

    from . import real

    root = Path(root) if root is not None else folder()
    missing = [a for a in ADAPTERS if not (root / a / "adapter_model.safetensors").is_file()]
    missing += [] if (root / "report.json").is_file() else ["report.json"]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: "
                                "`offsetlab real build-tofu` writes them.")
    base, small, tokenizer = real.load_smollm2(real.SMALL_LAYERS)

    def merged(model, name):
        return PeftModel.from_pretrained(model, root / name).merge_and_unload().eval()

    recipe = Recipe(**json.loads((root / "report.json").read_text())["recipe"])
    return (merged(copy.deepcopy(base), "knows_all"), merged(base, "retain_only"),
            merged(small, "small"), tokenizer, recipe)
