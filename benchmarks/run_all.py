"""What fusion costs, measured side by side in one run, against what the model sizes allow.

On the toy pair (3.4 M-parameter base, 0.5 M reference) and on SmolLM2-135M-Instruct with
its 6-layer truncated twin:

1. Decoding 128 tokens greedily: the base alone; fused with one full-copy offset (two
   small models beside the base, one KV cache each); fused with a top-layer offset run as
   a shared-trunk twin; the same with two offsets; the twin fusing over the base's top 64
   tokens only (its head on 64 rows; how often it picks the exact fusion's token is
   measured too); and fused without caches. Each fused row is set beside its bound:
   1 + (the small side's cost ÷ the base's), from measured single-model times and from the
   matmul FLOPs per token (2 × the weights a token meets).
2. A training step with the frozen scores cached once, against recomputing them at every
   step, beside the FLOP bound of that speed-up; peak memory (RSS) of training an offset
   (a child process per pair) and the size of its training cache.
3. Evaluation in batches of 16 against one question at a time (toy forget10).
4. An 11-point α sweep of teacher-forced metrics (answer probability, truth ratio, MIA,
   forget quality) against one α, and against re-scoring at every α.
5. SmolLM2 behind llama.cpp's server (top-20 log-probs) against local fusion, per token.
6. Moving α in the panel's Compare view on the toy world (base, fused and gold answers
   with their figures): the target is ≤ 1 s a move, so the plots follow the slider.
7. Training an offset on toy forget10 with the default recipe (``stranger`` with paths)
   against the wave-1 default it replaced (``npo_gd``), the same steps: issue 14 allows
   the calibrated recipe at most 2 × the time.

Only ratios between runs made here, now, on the same machine are results: absolute
seconds are printed for context. Every time is the median of ``--repeats`` runs, taken in
turns with the rows it is compared with, so a busy moment weighs on all of them alike.

    python benchmarks/run_all.py                              # prints every row
    python benchmarks/run_all.py --results benchmarks/RESULTS.md
    python benchmarks/run_all.py --tiny                       # every row in seconds (the test)
    python benchmarks/run_all.py --pairs toy --only recipe_time  # some sections, printed only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    tokens: int = 128  # decoded per timing run
    repeats: int = 3
    steps: int = 8  # training steps timed (the first is left out of the per-step time)
    records: int | None = None  # questions for the batched evaluation (None: all of forget10)
    alphas: int = 11
    server_tokens: int = 16
    moves: int = 6
    pairs: tuple[str, ...] = ("toy", "smollm2")
    candidates: int = 64  # the base's top tokens that fusion over candidates keeps
    agreement_prompts: int = 16
    recipe_steps: int = 200  # a whole training run, as the recipes train


TINY = Settings(tokens=4, repeats=1, steps=3, records=4, alphas=3, server_tokens=2, moves=2,
                agreement_prompts=2, recipe_steps=2)


@dataclass
class Section:
    title: str
    pair: str  # which models: "toy" or "smollm2"
    lines: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)

    def row(self, text: str) -> None:
        self.lines.append(text)
        print("  " + text, flush=True)

    def target(self, name: str, value: float, limit: float, at_most: bool = True, unit: str = "×") -> None:
        met = value <= limit if at_most else value >= limit
        text = (f"{self.pair}: {name}: {value:.2f}{unit} ({'≤' if at_most else '≥'} {limit:g}{unit} wanted) — "
                f"{'met' if met else 'MISSED'}")
        self.verdicts.append(text)
        print("  → " + text, flush=True)


def median_time(fn, repeats: int) -> float:
    return median_times({"": fn}, repeats)[""]


def median_times(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (one of each, then again): whatever
    else the machine is doing then weighs on all of them alike, so their ratios hold."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- the pairs -------------------------------------------------------------------------------


def load_lab(pair: str):
    from offsetlab.worlds.lab import Lab

    return Lab.toy() if pair == "toy" else Lab.smollm2()


def perturbed(reference, top_layers: int, seed: int):
    """An offset as training leaves it (its trainable weights moved a little): a full copy
    (``top_layers=0``) or one trained on its top layers only."""
    from offsetlab.method.train import make_offset

    offset = make_offset(reference, 0, top_layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in offset.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return offset.eval().requires_grad_(False)


def matmul_weights(model, layers: slice = slice(None), head: bool = True) -> int:
    """Weights a token is multiplied by in ``layers`` of the decoder (and the output head):
    a forward costs about twice this in FLOPs (attention over the prefix left out)."""
    from offsetlab.method.twin import body

    decoder = body(model)
    count = sum(p.numel() for layer in decoder.layers[layers] for p in layer.parameters() if p.dim() >= 2)
    return count + (model.get_output_embeddings().weight.numel() if head else 0)


# -- 1. decoding -----------------------------------------------------------------------------


def decoding(lab, pair: str, s: Settings) -> Section:
    from offsetlab.method.fusion import OffsetModel

    prompt = lab.prompt_format.prompt(lab.split(lab.default_forget)[0].question)
    # As many tokens as asked, or as fit in the models' context window (the toy's is 128).
    window = lab.model().context_window or s.tokens + 10**6
    tokens = min(s.tokens, window - len(lab.model().encode([prompt])[0]) + 1)
    sec = Section(f"Decoding {tokens} tokens greedily, one prompt ({pair})", pair)
    print(f"\n{sec.title}:", flush=True)
    ref = lab.reference
    n_layers = ref.config.num_hidden_layers
    top = 1 if n_layers <= 2 else 2
    full, tops = perturbed(ref, 0, 1), [perturbed(ref, top, 2), perturbed(ref, top, 3)]

    def model(offsets, shared=None, base=None, candidates=0):
        return OffsetModel(base if base is not None else lab.base, ref if offsets else None, offsets,
                           tokenizer=lab.tokenizer, shared_trunk=shared, candidates=candidates)

    def run(m, use_cache=True):
        return lambda: m.generate(prompt, max_new_tokens=tokens, ignore_eos=True, use_cache=use_cache)

    models = {
        "base alone": model([]),
        "one small model alone": model([], base=ref),
        "fused, full-copy offset (two small models)": model([(full, 1.0)], shared=False),
        f"fused, top-{top} offset as a shared-trunk twin": model([(tops[0], 1.0)], shared=True),
        "fused, two full-copy offsets": model([(full, 1.0), (perturbed(ref, 0, 4), 1.0)], shared=False),
        "fused, two top offsets, shared trunk": model([(o, 1.0) for o in tops], shared=True),
        f"fused, shared trunk, base's top {s.candidates} only": model([(tops[0], 1.0)], shared=True,
                                                                     candidates=s.candidates),
    }
    for m in models.values():
        run(m)()  # warm-up
    t = {name: seconds / tokens
         for name, seconds in median_times({n: run(m) for n, m in models.items()}, s.repeats).items()}
    uncached = run(models["fused, full-copy offset (two small models)"], use_cache=False)
    t["fused, full-copy offset, no KV caches"] = median_time(uncached, 1) / tokens

    base_t, small_t = t["base alone"], t["one small model alone"]
    f_base, f_small = matmul_weights(lab.base), matmul_weights(ref)
    f_top = matmul_weights(ref, slice(n_layers - top, None), head=False)
    f_trunk = matmul_weights(ref, slice(0, n_layers - top), head=False)
    f_head = ref.get_output_embeddings().weight.numel()
    bounds = {  # (measured-time bound, FLOP bound)
        "fused, full-copy offset (two small models)": ((base_t + 2 * small_t) / base_t, 1 + 2 * f_small / f_base),
        f"fused, top-{top} offset as a shared-trunk twin": (None, 1 + (f_trunk + 2 * f_top + f_head) / f_base),
        "fused, two full-copy offsets": ((base_t + 3 * small_t) / base_t, 1 + 3 * f_small / f_base),
        "fused, two top offsets, shared trunk": (None, 1 + (f_trunk + 3 * f_top + f_head) / f_base),
        f"fused, shared trunk, base's top {s.candidates} only": (None, 1 + (f_trunk + 2 * f_top) / f_base),
    }
    for name, value in t.items():
        text = f"{name:48s} {value * 1000:8.1f} ms/token  {value / base_t:5.2f}× base"
        if name in bounds:
            timed_bound, flop_bound = bounds[name]
            text += (f"   bound {timed_bound:.2f}× (timed), " if timed_bound else "   bound ") + f"{flop_bound:.2f}× (FLOPs)"
        sec.row(text)
    two, twin = (t["fused, full-copy offset (two small models)"],
                 t[f"fused, top-{top} offset as a shared-trunk twin"])
    cands = t[f"fused, shared trunk, base's top {s.candidates} only"]
    agree = candidate_agreement(lab, tops[0], s)
    sec.row(f"the base's top {s.candidates} vs every token, same offset: the same next token at "
            f"{agree:.1%} of steps (greedy answers to {s.agreement_prompts} questions, shared prefixes)")
    sec.target("twin's extra cost per token ÷ two full small passes'", (twin - base_t) / (two - base_t), 0.6)
    sec.target("fused decoding with the shared-trunk twin ÷ base alone", twin / base_t, 1.25)
    sec.target(f"the same over the base's top {s.candidates} ÷ base alone", cands / base_t, 1.25)
    sec.target("two-model fused decoding ÷ its timed bound",
               (two / base_t) / bounds["fused, full-copy offset (two small models)"][0], 1.25)
    sec.target("caches' speed-up over recomputing every prefix",
               t["fused, full-copy offset, no KV caches"] / two, 5.0, at_most=False)
    return sec


def candidate_agreement(lab, offset, s: Settings) -> float:
    """How often fusion over the base's top candidates picks the token that fusion over
    the whole vocabulary picks, after the same prefix (that answer's tokens so far)."""
    from offsetlab.method.fusion import OffsetModel

    def model(candidates):
        return OffsetModel(lab.base, lab.reference, [(offset, 1.0)], tokenizer=lab.tokenizer,
                           candidates=candidates, prompt_format=lab.prompt_format)

    exact, restricted = model(0), model(s.candidates)
    records = (lab.split(lab.default_forget) + lab.split(lab.retain_for(lab.default_forget)))
    prompts = [lab.prompt_format.prompt(r.question) for r in records[: s.agreement_prompts]]
    prefixes, chosen = [], []
    for ids, trace in zip(exact.encode(prompts), exact.generate(prompts, max_new_tokens=s.tokens // 4 or 1,
                                                                 trace=True)):
        tokens = [step.token_id for step in trace.steps]
        prefixes += [ids + tokens[:i] for i in range(len(tokens))]
        chosen += tokens
    picked = torch.cat([restricted.step(prefixes[i : i + 32]).fused.argmax(-1)
                        for i in range(0, len(prefixes), 32)]).tolist()
    return sum(a == b for a, b in zip(picked, chosen)) / len(chosen)


# -- 2. training -----------------------------------------------------------------------------


def training(lab, pair: str, s: Settings) -> Section:
    from offsetlab.method.train import TrainConfig, train_offset

    sec = Section(f"A training step, frozen scores cached vs recomputed ({pair})", pair)
    print(f"\n{sec.title}:", flush=True)
    forget, retain = lab.training_sets(lab.default_forget)
    config = TrainConfig(objective="npo_gd", steps=s.steps, batch_size=16, retain_batch_size=16,
                         lora_rank=0)
    per_step = {}
    for cache in (True, False):
        result = train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain[:200], config,
                              progress=False, cache=cache, prompt_format=lab.prompt_format)
        seconds = [row["seconds"] for row in result.history]
        per_step[cache] = statistics.median(b - a for a, b in zip(seconds, seconds[1:]))
    f_base, f_small = matmul_weights(lab.base), matmul_weights(lab.reference)
    # A cached step: the offset's forward and backward (≈ 3 forwards). The naive step adds
    # a forward of the base and of the reference on the same answers.
    bound = (3 * f_small + f_base + f_small) / (3 * f_small)
    speedup = per_step[False] / per_step[True]
    sec.row(f"cached    {per_step[True] * 1000:8.1f} ms/step")
    sec.row(f"naive     {per_step[False] * 1000:8.1f} ms/step")
    sec.row(f"speed-up  {speedup:.2f}×, FLOP bound {bound:.2f}× (npo_gd, 16 forget + 16 retain answers)")
    sec.target("cached step's speed-up ÷ its bound", speedup / bound, 0.8, at_most=False)
    return sec


def training_memory(pair: str, s: Settings) -> Section:
    """Peak RSS of a child process that loads the pair and trains an offset the lab's way."""
    sec = Section(f"Memory of training an offset ({pair}, the lab's own recipe, {s.steps} steps)", pair)
    print(f"\n{sec.title}:", flush=True)
    child = subprocess.run([sys.executable, __file__, "--child-train", pair, "--steps", str(s.steps)],
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    if child.returncode != 0:
        raise RuntimeError(f"the training child failed:\n{child.stderr[-3000:]}")
    out = json.loads(child.stdout.strip().splitlines()[-1])
    sec.row(f"peak RSS {out['loaded_mb']:.0f} MB after loading, {out['peak_mb']:.0f} MB at the end "
            f"of training; training cache {out['cache_mb']:.1f} MB")
    if pair == "smollm2":
        sec.target("peak RSS of training on the SmolLM2 pair", out["peak_mb"] / 1024, 3.0, unit=" GB")
    return sec


def peak_rss_mb() -> float:
    """This process's peak resident memory. (Not ``getrusage``: on Linux its maxrss
    survives ``exec``, so a child started from a big parent reports the parent's.)"""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_train(pair: str, steps: int) -> None:
    lab = load_lab(pair)
    loaded = peak_rss_mb()
    config = replace(lab.train_config, steps=steps)
    forget, retain = lab.training_sets(lab.default_forget)
    from offsetlab.method.train import train_offset

    result = train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain, config,
                          progress=False, prompt_format=lab.prompt_format, nonmembers=lab.nonmembers)
    peak = peak_rss_mb()
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "cache_mb": result.cache_bytes / 2**20}))


# -- 3. batched evaluation, 4. the α sweep ----------------------------------------------------


def batched_evaluation(lab, s: Settings) -> Section:
    from offsetlab.measure.evaluate import evaluate

    records = lab.split("forget10")[: s.records]
    sec = Section(f"Evaluating {len(records)} forget10 questions (toy, shipped offset)", "toy")
    print(f"\n{sec.title}:", flush=True)
    model = lab.model(list(lab.offsets)[:1])
    t = {b: median_time(lambda b=b: evaluate(model, {"forget10": records}, batch_size=b, progress=False), 1)
         for b in (1, 16)}
    sec.row(f"one question at a time {t[1]:7.2f} s;  batches of 16 {t[16]:7.2f} s")
    sec.target("batches of 16 vs one at a time", t[1] / t[16], 4.0, at_most=False)
    return sec


def alpha_sweep_cost(lab, s: Settings) -> Section:
    from offsetlab.measure.evaluate import alpha_sweep, evaluate

    splits = {name: lab.split(name)[: s.records] for name in ("forget10", "holdout")}
    alphas = [round(2.0 * i / (s.alphas - 1), 2) for i in range(s.alphas)]
    sec = Section(f"Teacher-forced metrics at {len(alphas)} strengths (toy forget10 + holdout)", "toy")
    print(f"\n{sec.title}:", flush=True)
    name = next(iter(lab.offsets))
    gold = evaluate(lab.standalone(lab.gold), splits, max_new_tokens=1, progress=False)
    model = lab.model([name])
    timed = median_times({"one": lambda: alpha_sweep(model, splits, [1.0], gold),
                          "sweep": lambda: alpha_sweep(model, splits, alphas, gold)}, s.repeats)
    one, sweep = timed["one"], timed["sweep"]
    rescored = median_time(lambda: [alpha_sweep(lab.model([(name, a)]), splits, [a], gold)
                                    for a in alphas], 1)
    sec.row(f"one α {one:6.2f} s;  {len(alphas)} α in one pass {sweep:6.2f} s;  "
            f"re-scored at every α {rescored:6.2f} s")
    sec.target(f"{len(alphas)}-point sweep ÷ one α", sweep / one, 2.0)
    return sec


# -- 5. a black box behind an API -------------------------------------------------------------


def server_decoding(lab, s: Settings) -> Section:
    from offsetlab.method.fusion import OffsetModel
    from offsetlab.worlds.models import make_base
    from offsetlab.worlds.real import llama_server

    sec = Section(f"SmolLM2 behind llama.cpp's server vs local, fused, {s.server_tokens} tokens", "smollm2")
    print(f"\n{sec.title}:", flush=True)
    offset = perturbed(lab.reference, 0, 1)
    prompt = lab.prompt_format.prompt(lab.split(lab.default_forget)[0].question)
    t = {}
    with llama_server(threads=torch.get_num_threads()) as url:
        for where, base in (("local", lab.base), ("server", make_base(url, tokenizer=lab.tokenizer))):
            m = OffsetModel(base, lab.reference, [(offset, 1.0)], tokenizer=lab.tokenizer)
            t[where] = median_time(lambda m=m: m.generate(prompt, max_new_tokens=s.server_tokens,
                                                          ignore_eos=True), s.repeats) / s.server_tokens
    sec.row(f"local fusion {t['local'] * 1000:7.1f} ms/token;  through the server "
            f"{t['server'] * 1000:7.1f} ms/token ({t['server'] / t['local']:.2f}×; one HTTP request "
            "a token, the server re-reads the prompt unless it caches it)")
    return sec


# -- 6. the panel's slider --------------------------------------------------------------------


def alpha_moves(lab, s: Settings) -> Section:
    from offsetlab.frontends.app import compare_view
    from offsetlab.frontends.explore import Decoding

    shipped = next(iter(lab.offsets))
    question = lab.split("forget10")[0].question
    alphas = [round(2.0 * i / max(s.moves - 1, 1), 2) for i in range(s.moves)]
    decoding = Decoding(max_new_tokens=min(24, s.tokens))
    sec = Section(f"Moving α in Compare ({shipped}, {len(alphas)} strengths, base + fused + gold)", "toy")
    print(f"\n{sec.title}:", flush=True)
    compare_view(lab, question, shipped, 1.0, decoding)  # warm-up
    moves = sorted(median_time(lambda a=a: compare_view(lab, question, shipped, a, decoding), 1)
                   for a in alphas)
    median = moves[len(moves) // 2]
    sec.row(f"median {median:.2f} s a move (fastest {moves[0]:.2f} s, slowest {moves[-1]:.2f} s)")
    sec.target("a slider move", median, 1.0, unit=" s")
    return sec


# -- the run ---------------------------------------------------------------------------------


def recipe_time(lab, s: Settings) -> Section:
    """A whole training run of the default recipe against wave 1's (``npo_gd``), in turns."""
    from offsetlab.method.train import TrainConfig

    sec = Section(f"Training an offset on forget10, {s.recipe_steps} steps: default recipe vs "
                  "wave 1's (toy)", "toy")
    print(f"\n{sec.title}:", flush=True)
    forget, retain = lab.training_sets("forget10")
    recipes = {"default": TrainConfig(steps=s.recipe_steps),
               "npo_gd": TrainConfig(objective="npo_gd", steps=s.recipe_steps)}
    nonmembers = lab.nonmembers
    if s.records:  # tiny: a few records of each kind
        forget, retain, lab.nonmembers = forget[: s.records], retain[: 4 * s.records], nonmembers[: s.records]

    def train(config):
        return lambda: lab.offsets.pop(lab.train(forget, retain, config=config, name="timed"))

    try:
        t = median_times({name: train(config) for name, config in recipes.items()}, s.repeats)
    finally:
        lab.nonmembers = nonmembers
    default = recipes["default"]
    sec.row(f"default ({default.objective}, {default.paths} paths) {t['default']:7.1f} s;  "
            f"wave 1 (npo_gd) {t['npo_gd']:7.1f} s")
    sec.target("default recipe's training time ÷ wave 1's", t["default"] / t["npo_gd"], 2.0)
    return sec


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()}")


HAND_WRITTEN = "## Why the misses"


def write_results(path: Path, sections: list[Section], s: Settings, seconds: float, command: str) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or "unknown"
    lines = ["# Benchmark results", "",
             f"`{command}` at commit `{commit}` on {time.strftime('%Y-%m-%d')}: {machine()}; "
             f"medians of {s.repeats} runs; {seconds / 60:.1f} min in all. Written by the script; "
             "the figures are this run's, the targets those of the project.", "",
             "## Targets", ""]
    lines += [f"- {v}" for sec in sections for v in sec.verdicts]
    for sec in sections:
        lines += ["", f"## {sec.title}", "", "```", *sec.lines, "```"]
    text = "\n".join(lines) + "\n"
    # What people wrote below the rows (why a target was missed) is kept, never overwritten.
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if HAND_WRITTEN in old:
        text += "\n" + old[old.index(HAND_WRITTEN):]
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="every row with tiny sizes (seconds)")
    p.add_argument("--pairs", default=None, help="comma-separated: toy,smollm2 (default both)")
    p.add_argument("--results", type=Path, default=None, help="write the rows to this Markdown file")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=None,
                   help="run these sections only (printed; not with --results)")
    p.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_train:
        return child_train(args.child_train, args.steps)
    if args.only and args.results:
        p.error("--only runs part of the benchmark: it cannot write a RESULTS file (drop --results)")
    s = TINY if args.tiny else Settings()
    if args.pairs:
        s = replace(s, pairs=tuple(args.pairs.split(",")))
    torch.manual_seed(0)
    print(machine())
    started = time.perf_counter()
    sections = []
    for pair in s.pairs:
        lab = load_lab(pair)
        for name in PLAN[pair]:
            if args.only is None or name in args.only:
                sections.append(SECTIONS[name](lab, pair, s))
    seconds = time.perf_counter() - started
    print(f"\n[{machine()}; {seconds / 60:.1f} min]")
    if args.results:
        write_results(args.results, sections, s, seconds, "python benchmarks/run_all.py"
                      + (" --tiny" if args.tiny else ""))
        print(f"wrote {args.results}")


# Every section, as (lab, pair, settings) → Section, and which pairs run which, in order.
SECTIONS = {
    "decoding": decoding,
    "training": training,
    "batched_evaluation": lambda lab, pair, s: batched_evaluation(lab, s),
    "alpha_sweep_cost": lambda lab, pair, s: alpha_sweep_cost(lab, s),
    "alpha_moves": lambda lab, pair, s: alpha_moves(lab, s),
    "recipe_time": lambda lab, pair, s: recipe_time(lab, s),
    "server_decoding": lambda lab, pair, s: server_decoding(lab, s),
    "training_memory": lambda lab, pair, s: training_memory(pair, s),
}
PLAN = {
    "toy": ["decoding", "training", "batched_evaluation", "alpha_sweep_cost", "alpha_moves",
            "recipe_time", "training_memory"],
    "smollm2": ["decoding", "training", "server_decoding", "training_memory"],
}


if __name__ == "__main__":
    main()
