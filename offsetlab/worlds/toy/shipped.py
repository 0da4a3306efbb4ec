"""Load the shipped toy world and checkpoints (see offsetlab.worlds.toy.build for the recipe)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from offsetlab.worlds.records import QARecord, load_records
from offsetlab.worlds.toy.world import SPLITS


@dataclass(frozen=True)
class Toy:
    """The toy world's splits, its tokenizer and three float32 models in eval mode.

    Objects are cached per process and shared by every caller of `load`: do not train
    or edit them in place — `copy.deepcopy` a model first. Their parameters are frozen
    (requires_grad=False), so a deep copy meant for training needs
    `requires_grad_(True)`.
    """

    splits: dict[str, list[QARecord]]
    tokenizer: PreTrainedTokenizerFast
    large: LlamaForCausalLM  # has memorised every trained author and the world facts
    small: LlamaForCausalLM  # at most a fifth of large, same tokenizer and data
    gold: LlamaForCausalLM  # large's recipe without forget10: what forgetting aims at


def data_dir() -> Path:
    """The repository's data/ folder, or $OFFSETLAB_DATA when set."""
    env = os.environ.get("OFFSETLAB_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "data"


SHIPPED_OFFSETS = "offsets"  # under <root>/toy/: one saved offset per folder


def shipped_offsets(root: str | Path | None = None) -> list[Path]:
    """Folders of the offsets that ship with the toy world under ``root`` (default:
    ``data_dir()``), e.g. ``data/toy/offsets/forget10-shipped``; none for a world built
    elsewhere until ``offsetlab toy offset --out ROOT`` trains one there."""
    folder = Path(root or data_dir()).resolve() / "toy" / SHIPPED_OFFSETS
    return sorted(p for p in folder.iterdir() if (p / "offset.json").is_file()) if folder.is_dir() else []


def load(root: str | Path | None = None) -> Toy:
    """The toy world under `root` (default: `data_dir()`), as written by
    `offsetlab toy build`."""
    return _load(Path(root or data_dir()).resolve())


@lru_cache(maxsize=4)
def _load(root: Path) -> Toy:
    toy = root / "toy"
    if not (toy / "large").is_dir():
        raise FileNotFoundError(
            f"no toy checkpoints in {toy}; run `offsetlab toy build --out {root}` to make them"
        )
    splits = {name: load_records(root / "toyworld" / f"{name}.jsonl") for name in SPLITS}
    tokenizer = PreTrainedTokenizerFast.from_pretrained(toy / "tokenizer")
    large, small, gold = (load_model(toy / name) for name in ("large", "small", "large-retain90"))
    return Toy(splits=splits, tokenizer=tokenizer, large=large, small=small, gold=gold)


def load_model(path: Path) -> LlamaForCausalLM:
    """A toy checkpoint as a frozen float32 model in eval mode."""
    # transformers draws a "Loading weights" bar per checkpoint: noise for models this
    # small, so it is hidden here (and the caller's setting restored).
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval().requires_grad_(False)
