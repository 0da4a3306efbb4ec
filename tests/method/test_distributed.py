"""Two processes (``accelerate launch --num_processes 2``, CPU, gloo) train the same offset
as one process accumulating their two micro-batches.

Real subprocesses on the shipped toy world: ``offsetlab train`` launched on two processes
with grad_accum 1, and a plain ``offsetlab train`` with grad_accum 2, same seed, same
micro-batch sizes — so every step of both runs trains on the same two micro-batches of
4 forget and 4 retain answers.

The two must agree exactly, not within a tolerance: every process draws the same batches
from one seeded generator and trains on its own share (process 0 the first micro-batch,
process 1 the second, as the single process does them in turn); each micro-batch is
collated and scored alike in both runs; the single process adds loss/2 gradients, DDP
halves each process's gradient and adds the two — the same float operations (halving is
exact, and two terms add alike in either order). So the weights are compared bit for bit,
the history step by step, and the fused forget/retain numbers measured from the two saved
offsets to 1e-12. A run whose processes drew their own batches (as train.py once did, with
seed + process index) or trained on the same share would differ in all three.

Also checked: exit code 0, one save, one print, one registration, and nothing else written
next to the offset. The two runs go at the same time; about a minute on two busy cores,
most of it starting four Python processes (the retain set is cut to 24 records so that the
frozen scores cost little).

The fast tests at the end check, in this process, how a step's batches are shared, that
sharded training (DeepSpeed, FSDP) is refused, and how a launcher's Ctrl-C is counted.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

STEPS = 6
COMMON = ["--forget", "forget01", "--steps", str(STEPS), "--batch-size", "4",
          "--retain-batch-size", "4", "--seed", "3"]


def run_together(*commands, env) -> list[str]:
    """Run the commands at the same time (the machine's cores are shared between them);
    each must exit 0. Returns their standard outputs."""
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for argv in commands]
    outputs = [child.communicate(timeout=300) for child in children]
    for argv, child, (stdout, stderr) in zip(commands, children, outputs):
        assert child.returncode == 0, f"{' '.join(argv)}\n{stdout}\n{stderr}"
    return [stdout for stdout, _ in outputs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    tmp = tmp_path_factory.mktemp("distributed")
    from offsetlab.worlds.toy import data_dir

    keep = tmp / "keep.jsonl"
    keep.write_text("".join((data_dir() / "toyworld" / "retain99.jsonl").read_text()
                            .splitlines(keepends=True)[:24]))
    # Nothing from this machine's accelerate config (HF_HOME), the CPU even where GPUs
    # are, one thread per process in both runs.
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "ACCELERATE_USE_CPU": "1",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    two, one, registry = tmp / "two" / "offset", tmp / "one" / "offset", tmp / "registry"
    # --multi_gpu picks accelerate's torchrun launcher, which starts the N processes; with
    # the CPU it sets up gloo. (--cpu alone would start a single process.)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "0"]
    stdout_two, stdout_one = run_together(
        [*launch, "-m", "offsetlab", "train", *COMMON, "--retain-file", str(keep),
         "--grad-accum", "1", "--out", str(two), "--register", "f01", "--registry", str(registry)],
        [sys.executable, "-m", "offsetlab", "train", *COMMON, "--retain-file", str(keep),
         "--grad-accum", "2", "--out", str(one)], env=env)
    return two, one, registry, keep, stdout_two, stdout_one


@pytest.mark.slow
def test_only_the_main_process_saves_prints_and_registers(runs):
    two, _, registry, _, stdout, _ = runs
    assert stdout.count("training an offset on 11 forget / 24 retain records") == 1, stdout
    assert "2 processes" in stdout
    assert stdout.count(f"saved {two}") == 1 and stdout.count("registered f01@") == 1, stdout
    assert sorted(p.name for p in two.parent.iterdir()) == ["offset"]  # no second writer's folder
    from offsetlab.offsets.registry import Registry

    assert Registry(registry).versions("f01") == [1]


@pytest.mark.slow
def test_two_processes_train_bit_for_bit_like_one_accumulating(runs):
    from safetensors.torch import load_file

    two, one, *_ = runs
    a, b = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert a.keys() == b.keys()
    differing = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differing, differing
    history = [json.loads((p / "offset.json").read_text())["history"] for p in (two, one)]
    assert len(history[0]) == len(history[1]) == STEPS
    for x, y in zip(*history):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}


def mean_nll(model, records) -> float:
    """Mean per-token NLL of the true answers under ``model``, in the world's prompt format."""
    fmt = model.prompt_format
    scores = model.score([fmt.prompt(r.question) for r in records], [fmt.answer(r.answer) for r in records])
    return float(-torch.cat(scores).mean())


@pytest.mark.slow
def test_the_fused_numbers_of_both_offsets_agree(runs):
    from offsetlab.measure.evaluate import evaluate
    from offsetlab.worlds.lab import Lab
    from offsetlab.worlds.records import load_records

    two, one, _, keep, *_ = runs
    lab = Lab.toy()
    splits = {"forget01": lab.splits["forget01"], "retain": load_records(keep)}
    numbers = {}
    for name, path in (("two", two), ("one", one)):
        model = lab.model([lab.load_offset(path, name)])
        report = evaluate(model, splits, name=name, max_new_tokens=24, progress=False)
        numbers[name] = {"forget_key_fact_acc": report.metrics["forget01"]["key_fact_acc"],
                         "retain_key_fact_acc": report.metrics["retain"]["key_fact_acc"],
                         "forget_nll": mean_nll(model, splits["forget01"]),
                         "retain_nll": mean_nll(model, splits["retain"])}
    print("\n" + json.dumps(numbers, indent=1))
    for key, value in numbers["one"].items():
        assert numbers["two"][key] == pytest.approx(value, rel=0, abs=1e-12), key
    # and the offsets did change the fused model, so agreeing is not trivial
    assert numbers["two"]["forget_nll"] > mean_nll(lab.model(), splits["forget01"]) + 0.1
    assert numbers["two"]["forget_key_fact_acc"] < 0.5


class FakeAccelerator:
    """What ``Team`` reads of an accelerator, for process ``rank`` of ``size``."""

    def __init__(self, rank: int, size: int):
        self.process_index, self.num_processes, self.is_main_process = rank, size, rank == 0


def test_each_process_gets_its_own_share_of_what_one_process_would_draw(tokenizer):
    from conftest import make_model

    from offsetlab.method.train import Team, TrainConfig, prepare_groups
    from offsetlab.worlds.records import QARecord

    records = [QARecord(f"where was {n} born ?", f"{n} was born in {c} city", key=c)
               for n in ("Alra", "Benn", "Cato", "Dema") for c in ("red", "blue")]
    model = make_model(len(tokenizer), 1)
    config = TrainConfig(objective="npo_gd", batch_size=2, retain_batch_size=3)

    def steps(rank: int, size: int, accum: int, n: int = 3):
        generator = torch.Generator().manual_seed(7)
        groups = prepare_groups(model, model, tokenizer, records, records, config, generator)
        team = Team(FakeAccelerator(rank, size))
        return [team.share(groups, accum) for _ in range(n)]

    one = steps(0, 1, 4)  # one process, 4 micro-batches a step
    shares = [steps(rank, 2, 2) for rank in (0, 1)]  # two processes, 2 each
    for step, (mine, theirs, whole) in enumerate(zip(*shares, one)):
        assert mine + theirs == whole, step  # together, exactly the single process's step
    assert shares[0] != shares[1]  # and not the same batches twice


def test_sharded_training_is_refused(monkeypatch, tokenizer):
    import accelerate
    from accelerate.utils import DistributedType
    from conftest import make_model

    from offsetlab.method.train import TrainConfig, train_offset
    from offsetlab.worlds.records import QARecord

    monkeypatch.setattr(accelerate.Accelerator, "distributed_type",
                        property(lambda self: DistributedType.DEEPSPEED))
    model = make_model(len(tokenizer), 1)
    forget = [QARecord("where was Alra born ?", "Alra was born in red city", key="red")]
    with pytest.raises(ValueError, match="DEEPSPEED is not supported.*--multi_gpu"):
        train_offset(model, model, tokenizer, forget, [], TrainConfig(objective="ga", steps=1),
                     progress=False)


def test_the_launchers_echo_of_a_ctrl_c_counts_as_the_same_ctrl_c():
    """Under accelerate launch a terminal's Ctrl-C reaches each process twice (from the
    terminal, then from the launcher): within the grace the second one must not abort the
    step, after it a second Ctrl-C still interrupts at once."""
    import os
    import signal
    import time

    from offsetlab.method.train import _ctrl_c_ends_the_step

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs before the next one is sent

    with _ctrl_c_ends_the_step(grace=5.0) as interrupt:
        ctrl_c()
        ctrl_c()
        assert interrupt.is_set()
    with pytest.raises(KeyboardInterrupt), _ctrl_c_ends_the_step(grace=0.02) as interrupt:
        ctrl_c()
        assert interrupt.is_set()
        ctrl_c()
