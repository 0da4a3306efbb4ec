"""Every benchmark script runs, in a tiny mode, so that none can rot (the numbers are the
benchmark's to print, never asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], tmp_path) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.real
def test_run_all_prints_and_writes_every_row_in_a_tiny_mode(tmp_path):
    results = tmp_path / "RESULTS.md"
    stdout = run([str(ROOT / "benchmarks" / "run_all.py"), "--tiny", "--results", str(results)], tmp_path)
    text = results.read_text()
    for pair in ("toy", "smollm2"):
        for row in (f"Decoding 4 tokens greedily, one prompt ({pair})",
                    f"A training step, frozen scores cached vs recomputed ({pair})",
                    f"Memory of training an offset ({pair}"):
            assert row in stdout and row in text
    for row in ("shared-trunk twin", "base's top 64 only", "no KV caches", "FLOP bound",
                "batches of 16", "3 α in one pass", "a slider move", "through the server",
                "peak RSS", "default recipe vs wave 1's"):
        assert row in text, row
    assert "## Targets" in text and text.count("wanted)") >= 11


def test_a_new_run_keeps_what_people_wrote_below_the_rows(tmp_path):
    # RESULTS.md ends with a hand-written section (why each missed target was missed):
    # writing a new run replaces the rows and keeps that section word for word.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    path = tmp_path / "RESULTS.md"
    section = run_all.Section("A row", "toy", ["new figures"])
    run_all.write_results(path, [section], run_all.TINY, 1.0, "cmd")
    assert run_all.HAND_WRITTEN not in path.read_text()
    notes = f"{run_all.HAND_WRITTEN} (by hand)\n\n- the toy pair is overhead-bound.\n"
    path.write_text(path.read_text().replace("new figures", "old figures") + "\n" + notes)
    run_all.write_results(path, [section], run_all.TINY, 1.0, "cmd")
    text = path.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.endswith(notes) and text.count(run_all.HAND_WRITTEN) == 1


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sweep_defaults.py", "sweep_calibrated.py",
                                    pytest.param("twin_quality.py", marks=pytest.mark.real)])
def test_each_sweep_runs_in_a_tiny_mode_and_writes_its_table(script, tmp_path):
    out = tmp_path / "table.md"
    stdout = run([str(ROOT / "benchmarks" / script), "--tiny", "--out", str(out)], tmp_path)
    table = out.read_text()
    trained = {"sweep_defaults.py": "| npo_gd |", "sweep_calibrated.py": "| stranger_paths, top 8 |",
               "twin_quality.py": "| top 2 of 6, lr 1e-3 |"}[script]
    assert table.startswith("# ") and trained in table and trained in stdout, table
    if script == "sweep_calibrated.py":  # read again with a dead zone, without retraining
        assert "| stranger_paths, dead zone 0.3 |" in table, table
    if script == "twin_quality.py":  # the toy rows say how each offset was trained
        assert "| top 1 of 2, lr 3e-3, 400 steps | top_layers=1, lr=0.003, steps=400 |" in table, table


REAL_SCRIPTS = {
    # the stranger objective on SmolLM2 (invented subjects as the non-members)
    "real_requests.py": (["--requests", "works", "--retains", "hand-written", "--moves", "--fit-dead-zone",
                          "--strangers", "2", "--set", "objective=stranger", "paths=0", "contrast=0"],
                         ["| works | (base) |", "| works | hand-written | 26 | 0.75 | 0.3 |",
                          "| request | set (the base's own answers) |", "| works, hand-written | forget | "]),
    # a --variant row: recipe changes are read as their TrainConfig types
    "real_tofu.py": (["--variant", "top_layers=2,use_alpha=0.5", "--partner"],
                     ["| black box (knows all) |", "| small partner alone |",
                      "| trained copy alone (top_layers=2, use_alpha=0.5) |",
                      "| fused (top_layers=2, use_alpha=0.5, α 0.50) |",
                      "| gold (retain only) |", "| forget quality |", "| median truth ratio, never-taught |"]),
}


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("script", sorted(REAL_SCRIPTS))
def test_each_real_model_benchmark_runs_in_a_tiny_mode_and_writes_its_table(script, tmp_path):
    out = tmp_path / "table.md"
    args, rows = REAL_SCRIPTS[script]
    records = tmp_path / "records.jsonl"  # real_tofu.py: every row's per-record results
    if script == "real_tofu.py":
        args = [*args, "--records", str(records)]
    stdout = run([str(ROOT / "benchmarks" / script), "--tiny", *args, "--out", str(out)], tmp_path)
    table = out.read_text()
    for row in rows:
        assert row in table and row in stdout, (row, table)
    if script == "real_tofu.py":
        lines = [json.loads(line) for line in records.read_text().splitlines()]
        assert {"black box (knows all)", "small partner alone"} <= {r["model"] for r in lines}
        assert all("truth_ratio" in r and "split" in r for r in lines)


@pytest.mark.slow
@pytest.mark.real
def test_the_twin_grid_and_seed_runs_run_in_a_tiny_mode(tmp_path):
    # twin_quality.py --tune-grid: the top-2 twin at each α on a capitals tuning request
    stdout = run([str(ROOT / "benchmarks" / "twin_quality.py"), "--tune-grid", "--tiny"], tmp_path)
    assert "| request | lr | α | forget | retain | held-out capitals | train s |" in stdout
    for alpha in ("0.75", "1"):
        assert f"| last four | 0.0003 | {alpha} | " in stdout, stdout
    # twin_quality.py --seeds: full copy and twin per training seed, with and without the dead zone
    stdout = run([str(ROOT / "benchmarks" / "twin_quality.py"), "--seeds", "0", "--tiny",
                  "--set", "forget_keys_only=true"], tmp_path)
    for row in ("| capitals (shipped, forget_keys_only=True) | seed | dead zone | ",
                "| full copy (shipped) | 0 | 0 | ", "| top 2 of 6, lr 1e-3 | 0 | 0.3 | ",
                "| **top 2 of 6, lr 1e-3, mean** | 1 seeds | 0.3 | "):
        assert row in stdout, stdout
    # --until-forgotten on a tuning request (asked its capitals the paraphrases' ways too), with
    # a twin of another depth: the planned offset read beside the one trained on
    stdout = run([str(ROOT / "benchmarks" / "twin_quality.py"), "--seeds", "1", "--tiny", "--request",
                  "last four", "--until-forgotten", "2", "--depths", "3"], tmp_path)
    for row in ("| capitals (last four) | seed | dead zone | forget | paraphrases | retain |",
                "| full copy (shipped), planned | 1 | 0.3 | ",
                "| top 3 of 6, lr 1e-3, until forgotten | 1 | 0 | "):
        assert row in stdout, stdout
    steps = [int(line.split("|")[-3]) for line in stdout.splitlines() if ", until forgotten | 1 |" in line]
    assert steps and all(2 <= n <= 4 for n in steps), stdout  # 2 planned, at most 2 more
    # --twin-only on the third tuning request: the twin's rows and no full copy
    stdout = run([str(ROOT / "benchmarks" / "twin_quality.py"), "--seeds", "0", "--tiny", "--request",
                  "famous four", "--twin-only"], tmp_path)
    assert "| capitals (famous four) | seed |" in stdout and "| top 2 of 6, lr 1e-3 | 0 | 0 | " in stdout, stdout
    assert "full copy" not in stdout, stdout


def test_real_requests_strangers_ask_each_forget_question_about_invented_subjects():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import real_requests
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from offsetlab.worlds.records import QARecord

    forget = [QARecord("What is the capital of France?", "The capital of France is Paris.", key="Paris",
                       subject="France"),
              QARecord("In which year did World War I begin?", "World War I began in 1914.", key="1914",
                       subject="World War I")]
    made = real_requests.stranger_records(forget, 2)
    first, second = real_requests.STRANGER_NAMES[:2]
    assert [(r.question, r.answer, r.key, r.subject) for r in made] == [
        (f"What is the capital of {first}?", f"The capital of {first} is Paris.", "Paris", first),
        (f"What is the capital of {second}?", f"The capital of {second} is Paris.", "Paris", second),
        (f"In which year did {first} begin?", f"{first} began in 1914.", "1914", first),
        (f"In which year did {second} begin?", f"{second} began in 1914.", "1914", second)]
    assert real_requests.stranger_records(forget, 0) == []
    with pytest.raises(ValueError, match="--strangers must be between 0 and"):
        real_requests.stranger_records(forget, len(real_requests.STRANGER_NAMES) + 1)
    nameless = [QARecord("Who painted it?", "Leonardo painted it.", key="Leonardo", subject="the Mona Lisa")]
    with pytest.raises(ValueError, match="subject in its question"):
        real_requests.stranger_records(nameless, 1)
