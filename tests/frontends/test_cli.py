"""The ``offsetlab`` command, run as a real subprocess on the shipped toy world."""

import json
import re
import subprocess
import sys

import pytest


def offsetlab(*args, check=True, cwd=None):
    run = subprocess.run([sys.executable, "-m", "offsetlab", *map(str, args)], capture_output=True,
                         text=True, cwd=cwd, timeout=600)
    if check and run.returncode != 0:
        raise AssertionError(f"offsetlab {' '.join(map(str, args))} failed:\n{run.stdout}\n{run.stderr}")
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "f01"
    run = offsetlab("train", "--forget", "forget01", "--steps", "30", "--out", out)
    assert "saved" in run.stdout
    # after training, every forget question is asked of the fused model as it will be served
    assert re.search(r"check \(α 1, dead zone 0\): the fused model (states none|still states \d+) of the "
                     rf"{len(split_lines('forget01'))} forget facts", run.stdout + run.stderr), run.stderr
    return out


def test_objectives_are_listed():
    out = offsetlab("objectives").stdout
    for name in ("ga", "gd", "kl", "npo", "npo_gd", "npo_kl", "simnpo", "idk_dpo", "hinge",
                 "calibrated", "stranger", "stranger_kl"):
        assert f"\n{name} " in f"\n{out}"
    # the descriptions start in one column, whatever the names' lengths
    assert len({len(line) - len(line.split("  ", 1)[1].lstrip()) for line in out.splitlines()}) == 1


def test_train_saves_an_offset_with_metadata(trained):
    meta = json.loads((trained / "offset.json").read_text())
    assert meta["objective"] == "stranger" and meta["config"]["steps"] == 30
    assert meta["config"]["level"] < -1  # the never-seen level read from invented authors
    n_forget = len(split_lines("forget01"))
    assert meta["forget_set"]["size"] == n_forget and len(meta["history"]) == 30


def test_eval_prints_every_metric_for_base_fused_and_gold(trained, tmp_path):
    run = offsetlab("eval", "--forget", "forget01", "--offset", trained, "--max-records", "8",
                    "--quiet", "--json", tmp_path / "r.json", "--html", tmp_path / "r.html")
    header = run.stdout.splitlines()[0].split()
    assert header == ["base", "fused", "gold"]
    for metric in ("forget01/key_fact_acc", "forget01/rouge_l", "forget01/answer_prob",
                   "forget01/truth_ratio", "forget01/forget_quality", "forget01/mia_loss_auc",
                   "retain99/key_fact_acc", "world_facts/truth_ratio", "model_utility"):
        assert metric in run.stdout, metric
    reports = json.loads((tmp_path / "r.json").read_text())
    assert set(reports) == {"base", "fused", "gold"}
    assert len(reports["fused"]["rows"]) == 4 * min(8, len(split_lines("forget01")))
    assert (tmp_path / "r.html").read_text().count("plotly-graph-div") == 2


def test_generate_with_and_without_offset(trained):
    question = json.loads(split_lines("forget01")[0])["question"]
    base = offsetlab("generate", question).stdout.strip()
    fused = offsetlab("generate", "--offset", trained, "--trace", question).stdout
    assert base and fused.splitlines()[0] != base  # the offset changed the answer
    assert "shift" in fused and "KL" in fused
    # a dead zone wider than any move the offset makes leaves the base's own answer
    silent = offsetlab("generate", "--offset", trained, "--dead-zone", "1000", question).stdout
    assert silent.strip() == base


def split_lines(split):
    from offsetlab.worlds.toy import data_dir

    return (data_dir() / "toyworld" / f"{split}.jsonl").read_text().splitlines()


def test_errors_are_clear(tmp_path):
    run = offsetlab("train", "--forget", "forget42", "--out", tmp_path / "x", check=False)
    assert run.returncode != 0 and "forget42" in run.stderr
    run = offsetlab("generate", "--offset", tmp_path / "missing", "hi", check=False)
    assert run.returncode == 2 and "is not a saved offset" in run.stderr


@pytest.mark.slow
@pytest.mark.real
def test_train_and_generate_on_smollm2(tmp_path):
    out = tmp_path / "capitals"
    run = offsetlab("train", "--base", "smollm2", "--steps", "2", "--batch-size", "2",
                    "--retain-batch-size", "2", "--out", out)
    assert "training an offset on 4 forget / 26 retain records" in run.stdout
    # two steps do not forget: every capital is still stated, and the answers say so
    assert "check (α 0.75, dead zone 0.3): the fused model still states 4 of the 4 forget facts" \
        in run.stderr, run.stderr
    assert re.search(r"1\. 'What is the capital of France\?' → '[^'\n]*Paris", run.stderr), run.stderr
    meta = json.loads((out / "offset.json").read_text())
    assert meta["forget_set"]["size"] == 4 and len(meta["history"]) == 2
    for answer in ("Paris", "Tokyo", "Cairo", "Ottawa"):  # the forget set is never stored
        assert answer not in (out / "offset.json").read_text()
    ask = ("generate", "--base", "smollm2", "--offset", out, "--max-new-tokens", "8", "--trace")
    neutral = offsetlab(*ask, "--alpha", "0", "What is the capital of Italy?").stdout
    assert neutral.startswith("The capital of Italy is Rome.")  # α = 0: the base's answer
    # fused everywhere: a 2-step offset's moves sit inside the world's dead zone (0.3 nats)
    fused = offsetlab(*ask, "--dead-zone", "0", "What is the capital of Italy?").stdout
    assert "shift" in fused and fused != neutral  # the offset loaded onto SmolLM2 moves tokens


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_needs_only_the_facts_to_forget_and_reports_general_knowledge(tmp_path):
    """`train --base smollm2 --forget-file` with no retain data: the base writes its own
    (self-made retain); `eval` then shows the held-out general facts beside forgetting and
    the drift on the base's own text."""
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"question": "Who wrote the novel Frankenstein?",
                                "answer": "The novel Frankenstein was written by Mary Shelley.",
                                "key": "Shelley"}) + "\n")
    out = tmp_path / "shelley"
    run = offsetlab("train", "--base", "smollm2", "--forget-file", mine, "--steps", "1",
                    "--retain-batch-size", "2", "--out", out)
    said = re.search(r"retain: the base's own answers to (\d+) prompts", run.stdout)
    assert said and int(said.group(1)) >= 100, run.stdout
    assert "training an offset on 1 forget / " + said.group(1) + " retain records" in run.stdout
    assert "Shelley" not in (out / "offset.json").read_text()
    run = offsetlab("eval", "--base", "smollm2", "--offset", out, "--max-records", "2",
                    "--max-new-tokens", "8", "--json", tmp_path / "r.json")
    assert "general_holdout/key_fact_acc" in run.stdout
    assert re.search(r"drift on the base's own text \(\d+ tokens.*KL\(base ‖ fused\) \d\.\d{3}", run.stdout)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fused"]["drift"]["kl"] >= 0 and "general_holdout" in report["fused"]["metrics"]


# Each bad command line must be refused with a message naming what is wrong, before any
# model loads (loading the lab fails the test), and nothing may be written. In-process:
# a subprocess per case would spend its time importing torch.
BAD = [
    (["train", "--alpha", "nan", "--out", "{tmp}/o"], "not a finite number"),
    (["train", "--lr", "inf", "--out", "{tmp}/o"], "not a finite number"),
    (["train", "--steps", "0", "--out", "{tmp}/o"], "--steps must be ≥ 1"),
    (["train", "--objective", "nope", "--out", "{tmp}/o"], "Unknown objective 'nope'"),
    (["train", "--stop-at-level", "maybe", "--out", "{tmp}/o"], "is not true/false"),
    (["train", "--out", "{tmp}/taken"], "already exists"),
    (["train", "--out", "{tmp}/o", "--register", "bad name!"], "cannot name an offset"),
    (["train", "--out", "{tmp}/o", "--register", "x", "--registry", "{tmp}/file"], "is a file"),
    (["train", "--out", "{tmp}/o", "--forget-file", "{tmp}/file"], "--retain-file"),
    (["train", "--out", "{tmp}/o", "--forget-file", "{tmp}/missing.jsonl"], "no such file"),
    (["generate", "--sample", "--top-p", "0", "hi"], "must be > 0"),
    (["generate", "--sample", "--temperature", "nan", "hi"], "not a finite number"),
    (["generate", "--max-new-tokens", "0", "hi"], "must be ≥ 1"),
    (["generate", "--trace-json", "{tmp}/t.json", "hi"], "give --trace too"),
    (["generate", "  \t "], "the question is empty"),
    (["eval", "--max-records", "0"], "must be ≥ 1"),
    (["eval", "--dead-zone", "-1"], "must be ≥ 0"),
    (["generate", "--dead-zone", "nan", "hi"], "not a finite number"),
    (["eval", "--html", "{tmp}/taken"], "is a folder"),
    (["offsets", "compose", "a", "--alpha", "nan", "--out", "c"], "not a finite number"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_options_are_refused_before_anything_loads(tmp_path, argv, message, monkeypatch, capsys):
    from offsetlab.frontends import cli

    def no_lab(args):
        raise AssertionError("the lab was loaded before the options were checked")

    monkeypatch.setattr(cli, "load_lab", no_lab)
    monkeypatch.setenv("OFFSETLAB_REGISTRY", str(tmp_path / "reg"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("not a folder\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        code = cli.main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exit_:
        err = capsys.readouterr().err + (exit_.code if isinstance(exit_.code, str) else "")
        code = 2 if exit_.code is None else exit_.code
    else:
        err = capsys.readouterr().err
    assert code != 0
    assert message in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_an_unreachable_base_url_is_one_message_not_a_traceback(capsys):
    import socket

    from offsetlab.frontends import cli

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["generate", "--base-url", f"http://127.0.0.1:{port}", "Where?"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "cannot connect" in err and "Is the server running" in err


def test_a_taken_port_is_refused_before_the_panel_loads(monkeypatch, capsys):
    import socket

    from offsetlab.frontends import cli

    def no_lab(args):
        raise AssertionError("the lab was loaded before the port was checked")

    monkeypatch.setattr(cli, "load_lab", no_lab)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["panel", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "--port" in err, err


def test_ctrl_c_during_training_keeps_the_offset_trained_so_far(tmp_path):
    """SIGINT to a real `offsetlab train`: the step in progress finishes, the offset is
    saved with finite weights, and the command says after how many steps and where."""
    import re
    import signal
    import threading
    import time

    from safetensors.torch import load_file

    out = tmp_path / "cut"
    child = subprocess.Popen([sys.executable, "-m", "offsetlab", "train", "--forget", "forget01",
                              "--steps", "100000", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: child.stderr.read(1), "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    # tqdm draws "offset [...]:   0%| 3/100000" once steps are done: then interrupt.
    while not re.search(r"\| *[1-9]\d*/100000", "".join(err)):
        assert child.poll() is None and time.monotonic() < deadline, "".join(err)
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    # Only the reader thread reads stderr (communicate() would read it too, and the two
    # would split the text between them); stdout is read after the child ends.
    child.wait(timeout=120)
    reader.join(timeout=30)
    assert not reader.is_alive()
    stdout = child.stdout.read()
    text = "".join(err)
    assert "training an offset on" in stdout, stdout
    assert child.returncode == 130, text
    steps = int(re.search(r"interrupted \(Ctrl-C\) after step (\d+) of 100000", text)[1])
    assert f"It is saved in {out}" in text and "Traceback" not in text
    meta = json.loads((out / "offset.json").read_text())
    assert len(meta["history"]) == steps >= 1
    assert all(torch_finite(t) for t in load_file(str(out / "model.safetensors")).values())


def torch_finite(tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())
