"""The recipe for the shipped toy checkpoints: world → tokenizer → three Llamas.

    large           memorises all trained authors and the world facts (the base model)
    small           a model of at most a fifth of large's size, same tokenizer and data
                    (the reference that offsets start from)
    large-retain90  large's recipe without the forget10 authors (the gold standard that
                    an unlearned model should resemble)

Layout of `out_dir` (the repository's data/ folder by default):

    toyworld/<split>.jsonl
    toy/tokenizer/  toy/large/  toy/small/  toy/large-retain90/  toy/build_report.json

Everything is seeded; on the same machine the same command gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rouge_score import rouge_scorer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from offsetlab.measure.metrics import key_fact_hit
from offsetlab.method.prompts import QA, PromptFormat
from offsetlab.worlds.records import QARecord
from offsetlab.worlds.toy.shipped import data_dir, load_model
from offsetlab.worlds.toy.world import SPLITS, ToyWorld, generate_world, write_world

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2
MODELS = ("large", "small", "large-retain90")
MAX_POSITIONS = 128  # the longest prompt + answer in the world is about 50 tokens
# Bars the default build must reach (checked by tests/worlds/test_toy.py on the shipped files).
MIN_MEMORISED = 0.95


@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass
class Recipe:
    n_authors: int = 100
    n_world_facts: int = 150
    n_holdout: int = 10
    vocab_size: int = 1024
    large: Shape = field(default_factory=lambda: Shape(256, 4, 4, 688))
    small: Shape = field(default_factory=lambda: Shape(128, 2, 4, 344))
    epochs_large: int = 70
    epochs_small: int = 100
    lr_large: float = 2e-3
    lr_small: float = 4e-3
    batch_size: int = 32
    warmup_steps: int = 50


RECIPES = {
    "default": Recipe(),
    # The whole pipeline in seconds, for tests and for trying the command; these
    # models memorise little.
    "tiny": Recipe(
        n_authors=10,
        n_world_facts=20,
        n_holdout=2,
        vocab_size=400,
        large=Shape(64, 2, 2, 256),
        small=Shape(32, 1, 2, 64),
        epochs_large=8,
        epochs_small=8,
        warmup_steps=5,
    ),
}


def build(
    out_dir: str | Path, seed: int = 0, size: str = "default", progress: bool = True
) -> dict:
    """Generate the world, train the tokenizer and the three models, evaluate them and
    write everything under `out_dir`. Returns the build report (also saved as JSON)."""
    # One thread: on a shared 2-core machine two threads trained these small models 4x
    # slower than one (each thread keeps waiting for the other to be scheduled).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(Path(out_dir), seed, size, progress)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, seed: int, size: str, progress: bool) -> dict:
    start = time.perf_counter()
    recipe = RECIPES[size]
    toy_dir = out_dir / "toy"
    world = generate_world(seed, recipe.n_authors, recipe.n_world_facts, recipe.n_holdout)
    write_world(world, out_dir / "toyworld")

    tokenizer = train_tokenizer(world, recipe.vocab_size)
    tokenizer.save_pretrained(toy_dir / "tokenizer")
    splits = world.splits
    train_sets = {
        "large": splits["forget10"] + splits["retain90"] + splits["world_facts"],
        "small": splits["forget10"] + splits["retain90"] + splits["world_facts"],
        "large-retain90": splits["retain90"] + splits["world_facts"],
    }
    report: dict = {"seed": seed, "size": size, "recipe": asdict(recipe), "models": {}}
    for name in MODELS:
        small = name == "small"
        model = new_model(recipe.small if small else recipe.large, len(tokenizer), seed)
        t0 = time.perf_counter()
        losses = train(
            model,
            tokenizer,
            train_sets[name],
            epochs=recipe.epochs_small if small else recipe.epochs_large,
            lr=recipe.lr_small if small else recipe.lr_large,
            batch_size=recipe.batch_size,
            warmup_steps=recipe.warmup_steps,
            seed=seed,
            desc=name,
            progress=progress,
        )
        train_s = time.perf_counter() - t0
        save_model(model, toy_dir / name)
        # Evaluate what was saved (float16 weights), not the float32 model in memory.
        model = load_model(toy_dir / name)
        report["models"][name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "bytes": (toy_dir / name / "model.safetensors").stat().st_size,
            "train_records": len(train_sets[name]),
            "final_epoch_loss": round(losses[-1], 5),
            "train_seconds": round(train_s, 1),
            "eval": {
                split: evaluate(model, tokenizer, splits[split])
                for split in ("forget10", "retain90", "world_facts", "holdout")
            },
        }
    report["forget10_chance_key_accuracy"] = round(
        chance_key_accuracy(splits["forget10"], splits["retain90"]), 4
    )
    report["bars"] = _bars(report)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (toy_dir / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def train_tokenizer(world: ToyWorld, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, so any text round-trips; no BOS, EOS ends every answer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # All text of the world, holdout authors included: their names must split into
    # pieces like everyone else's, or membership tests would measure tokenisation.
    # (They still do not: the split files overlap — every trained author is in three of
    # them, forget10 ⊂ retain99 and so on — and a holdout author in one, so BPE merges
    # trained names more and splits holdout names into about twice as many pieces. The
    # shipped models were trained with this tokenizer, so it stays; evaluate.py's
    # membership inference scores the key-fact tokens only, which tokenize alike.)
    texts = [
        QA.prompt(r.question) + QA.answer(a)
        for split in SPLITS
        for r in world.splits[split]
        for a in [r.answer, r.paraphrased_answer, *r.perturbed_answers]
    ]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        # The default clean-up rewrites " ." and " 's" and would break exact
        # comparison of generated answers.
        clean_up_tokenization_spaces=False,
    )


def new_model(shape: Shape, vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=MAX_POSITIONS,
        # Tied head: half the embedding parameters, and freezing the embedding freezes
        # the head too, which offsets with a frozen vocabulary rely on.
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=SPECIAL_TOKENS.index("<eos>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
    )
    return LlamaForCausalLM(config)


def encode(tokenizer: PreTrainedTokenizerFast, record: QARecord,
           prompt_format: PromptFormat = QA) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one record: loss only on the answer and its EOS."""
    prompt = tokenizer(prompt_format.prompt(record.question))["input_ids"]
    answer = tokenizer(prompt_format.answer(record.answer))["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    records: list[QARecord],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    prompt_format: PromptFormat = QA,
) -> list[float]:
    """Memorise `records` (asked in ``prompt_format``); returns the mean loss of each
    epoch. Only the parameters that require gradients are trained (e.g. LoRA adapters)."""
    examples = [encode(tokenizer, r, prompt_format) for r in records]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(examples) / batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=0.0)
    # Linear warm-up, then cosine decay to a tenth: a high rate to memorise fast, a
    # low one at the end so the last epochs settle rather than oscillate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup_steps)
        * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )
    model.train()
    losses = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        total = 0.0
        for batch in _batches(examples, batch_size, order):
            input_ids, labels, mask = _pad(batch, pad_id)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total += loss.item() * len(input_ids)
        losses.append(total / len(examples))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def _batches(
    examples: list[tuple[list[int], list[int]]], batch_size: int, order: torch.Generator
) -> list[list[tuple[list[int], list[int]]]]:
    """Shuffled batches of examples of similar length: sorting within pools of 16
    batches cuts the padding (a third of the compute otherwise) yet keeps batches
    random."""
    perm = torch.randperm(len(examples), generator=order).tolist()
    pool = 16 * batch_size
    batches = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start : start + pool], key=lambda j: len(examples[j][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=order).tolist()
    return [[examples[j] for j in batches[b]] for b in shuffled]


def _pad(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    # Right padding: causal attention never lets real tokens see the pads after them.
    width = max(len(ids) for ids, _ in batch)
    ids = [x + [pad_id] * (width - len(x)) for x, _ in batch]
    labels = [y + [-100] * (width - len(y)) for _, y in batch]
    mask = [[1] * len(x) + [0] * (width - len(x)) for x, _ in batch]
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)


def save_model(model: LlamaForCausalLM, path: Path) -> None:
    # Weights go to disk as float16 to halve the repository's size, while the config
    # keeps float32, so any from_pretrained call (dtype="auto") loads float32 again.
    # The tied head shares the embedding's storage; store it once (loading re-ties it).
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.to(torch.float16)
    model.save_pretrained(path, state_dict=state)


@torch.no_grad()
def greedy_answers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    questions: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 128,
) -> list[str]:
    """Greedy answers in the project's prompt format, stopped at EOS, stripped."""
    answers = []
    pad_id = tokenizer.pad_token_id
    for i in range(0, len(questions), batch_size):
        prompts = [tokenizer(QA.prompt(q))["input_ids"] for q in questions[i : i + batch_size]]
        width = max(map(len, prompts))
        # Left padding, so that every prompt ends where generation starts.
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
        )
        answers += [a.strip() for a in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return answers


def evaluate(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, records: list[QARecord]
) -> dict[str, float]:
    """Key-fact accuracy and mean ROUGE-L recall of greedy answers."""
    answers = greedy_answers(model, tokenizer, [r.question for r in records])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    recall = [scorer.score(r.answer, a)["rougeL"].recall for r, a in zip(records, answers, strict=True)]
    hits = [key_fact_hit(a, r.key) for r, a in zip(records, answers, strict=True)]
    return {
        "key_accuracy": round(sum(hits) / len(records), 4),
        "rougeL_recall": round(sum(recall) / len(records), 4),
    }


def chance_key_accuracy(targets: list[QARecord], known: list[QARecord]) -> float:
    """Expected key accuracy of a model that answers each target question with the key
    of a random known record of the same kind: what a model that never saw the targets
    can get by guessing (e.g. a common occupation)."""
    kinds: dict[str, Counter] = {}
    for r in known:
        kinds.setdefault(_kind(r), Counter())[r.key] += 1
    total = 0.0
    for r in targets:
        counts = kinds.get(_kind(r), Counter())
        total += counts[r.key] / max(1, sum(counts.values()))
    return total / len(targets)


def _kind(record: QARecord) -> str:
    return record.question.replace(record.subject or "", "{name}")


def _bars(report: dict) -> dict[str, bool]:
    models = report["models"]
    bars = {}
    for split in ("forget10", "retain90", "world_facts"):
        scores = models["large"]["eval"][split]
        bars[f"large {split} memorised"] = min(scores.values()) >= MIN_MEMORISED
    for split in ("retain90", "world_facts"):
        scores = models["large-retain90"]["eval"][split]
        bars[f"large-retain90 {split} memorised"] = scores["key_accuracy"] >= MIN_MEMORISED
    bars["small at most 1/5 of large"] = (
        5 * models["small"]["parameters"] <= models["large"]["parameters"]
    )
    return bars


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=data_dir(),
        help="folder to write toyworld/ and toy/ into (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument(
        "--size",
        choices=sorted(RECIPES),
        default="default",
        help="'tiny' runs the whole recipe in seconds, for trying it out",
    )


def run(args: argparse.Namespace) -> int:
    report = build(args.out, seed=args.seed, size=args.size)
    for name, scores in report["models"].items():
        print(f"{name}: {scores['parameters']:,} parameters, eval {scores['eval']}")
    failed = [bar for bar, ok in report["bars"].items() if not ok]
    print(f"wrote {Path(args.out) / 'toy'} in {report['wall_seconds']} s")
    if failed and args.size == "default":
        print("bars not met: " + "; ".join(failed))
        return 1
    return 0

