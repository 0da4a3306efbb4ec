"""The ``offsetlab`` command, run as a real subprocess on the shipped toy world."""

import json
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
    return out


def test_objectives_are_listed():
    out = offsetlab("objectives").stdout
    for name in ("ga", "gd", "kl", "npo", "npo_gd", "npo_kl", "simnpo", "idk_dpo", "hinge",
                 "calibrated", "stranger"):
        assert f"\n{name} " in f"\n{out}"


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


def split_lines(split):
    from offsetlab.toy import data_dir

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
    meta = json.loads((out / "offset.json").read_text())
    assert meta["forget_set"]["size"] == 4 and len(meta["history"]) == 2
    for answer in ("Paris", "Tokyo", "Cairo", "Ottawa"):  # the forget set is never stored
        assert answer not in (out / "offset.json").read_text()
    ask = ("generate", "--base", "smollm2", "--offset", out, "--max-new-tokens", "8", "--trace")
    neutral = offsetlab(*ask, "--alpha", "0", "What is the capital of Italy?").stdout
    assert neutral.startswith("The capital of Italy is Rome.")  # α = 0: the base's answer
    fused = offsetlab(*ask, "What is the capital of Italy?").stdout
    assert "shift" in fused and fused != neutral  # the offset loaded onto SmolLM2 moves tokens
