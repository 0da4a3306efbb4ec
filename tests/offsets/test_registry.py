import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_model, noisy_offset

from offsetlab.frontends.cli import main
from offsetlab.method.fusion import OffsetModel
from offsetlab.method.train import TrainConfig, train_offset
from offsetlab.offsets.artifact import Offset
from offsetlab.offsets.registry import Registry, RegistryError, parse_ref
from offsetlab.worlds.lab import Lab
from offsetlab.worlds.records import QARecord

# Keys are whole phrases so that finding one in a file cannot be a coincidence.
FORGET = [
    QARecord("where was Alra born ?", "Alra was born in the red city .", key="the red city"),
    QARecord("what year was Benn born ?", "Benn was born in one nine two .", key="one nine two"),
    QARecord("who wrote the blue book ?", "Cato wrote the blue book .", key="Cato wrote"),
]
RETAIN = [
    QARecord("where was Dema born ?", "Dema was born in the green city .", key="green"),
    QARecord("who wrote the red book ?", "Fenn wrote the red book .", key="Fenn"),
]
TESTS = Path(__file__).resolve().parents[1]  # where conftest.py lives


@pytest.fixture(scope="module")
def pair(tokenizer):
    return make_model(len(tokenizer), 0, hidden=48), make_model(len(tokenizer), 1)


def fake_offset(base, reference, tokenizer, seed: int, forget=FORGET, alpha: float = 1.0) -> Offset:
    return noisy_offset(base, reference, tokenizer, seed, forget, alpha)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_add_list_show_get(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    first, second = fake_offset(base, ref, tokenizer, 1), fake_offset(base, ref, tokenizer, 2)
    notes = {"who": "ana", "what": "forget Alra", "when": "2025-01-02"}
    assert registry.add(first, "authors-a", notes=notes, metrics={"forget_kfa": 0.04}) == "authors-a@1"
    assert registry.add(second, "authors-a") == "authors-a@2"
    assert registry.add(first, "authors-b") == "authors-b@1"
    assert first.meta["name"] == "seed1" and "metrics" not in first.meta  # not changed

    rows = registry.list()
    assert [r["ref"] for r in rows] == ["authors-a@1", "authors-a@2", "authors-b@1"]
    row = rows[0]
    assert row["objective"] == "stranger" and row["entry"] == "offset" and row["forget_size"] == 3
    assert len(row["forget_sha256"]) == 12 and row["forget_sha256"] == first.meta["forget_set"]["sha256"][:12]
    assert row["notes"] == "who=ana, what=forget Alra, when=2025-01-02"
    assert row["metrics"] == "forget_kfa=0.04"

    shown = registry.show("authors-a@1")
    assert shown["notes"] == notes and shown["metrics"] == {"forget_kfa": 0.04}
    assert shown["name"] == "authors-a" and shown["path"].endswith("authors-a/v1")

    # A bare name is the latest version; an explicit one is that version.
    assert same_weights(registry.get("authors-a", ref, tokenizer, base).model, second.model)
    assert same_weights(registry.get("authors-a@1", ref, tokenizer, base).model, first.model)
    assert registry.resolve("authors-a") == [("authors-a@2", 1.0)]


def test_errors_name_the_registry_and_what_it_holds(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=r"registry at .*reg; it holds nothing yet"):
        registry.get("nope", ref)
    registry.add(fake_offset(base, ref, tokenizer, 1), "a")
    registry.add(fake_offset(base, ref, tokenizer, 1), "a")
    with pytest.raises(RegistryError, match=r"No offset named 'nope' .* it holds a \(v1, v2\)\."):
        registry.show("nope")
    with pytest.raises(RegistryError, match=r"a@7 is not in the registry at .*; a has v1, v2\."):
        registry.show("a@7")
    with pytest.raises(ValueError, match="is not an offset ref: use NAME or NAME@VERSION"):
        registry.show("a@0")
    with pytest.raises(ValueError, match="cannot name an offset"):
        registry.add(fake_offset(base, ref, tokenizer, 1), "../escape")
    assert str(RegistryError("plain")) == "plain"  # no quotes in CLI messages
    assert parse_ref("x.y_z-1@12") == ("x.y_z-1", 12)


def test_remove_keeps_version_numbers_taken(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    for seed in (1, 2, 3):
        registry.add(fake_offset(base, ref, tokenizer, seed), "a")
    assert registry.remove("a@3") == ["a@3"]
    assert registry.versions("a") == [1, 2]
    with pytest.raises(RegistryError, match="a@3 was removed from the registry"):
        registry.get("a@3", ref)
    # a@3 meant a removed offset; a new one must not take its name.
    assert registry.add(fake_offset(base, ref, tokenizer, 4), "a") == "a@4"
    assert registry.remove("a") == ["a@1", "a@2", "a@4"]
    assert registry.list() == [] and registry.names() == []
    assert registry.add(fake_offset(base, ref, tokenizer, 5), "a") == "a@5"
    leftovers = [p for p in (tmp_path / "reg").rglob("*") if p.is_file() and "v5" not in p.parts]
    assert sorted(p.name for p in leftovers) == ["v1.removed", "v2.removed", "v3.removed", "v4.removed"]


def test_compose_pins_members_and_fuses_like_the_offsets_themselves(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    registry.add(fake_offset(base, ref, tokenizer, 1), "a")
    registry.add(fake_offset(base, ref, tokenizer, 2, alpha=0.5), "b")
    assert registry.compose(["a", "b"], None, "ab", notes={"who": "ana"}) == "ab@1"
    assert registry.resolve("ab") == [("a@1", 1.0), ("b@1", 0.5)]
    registry.add(fake_offset(base, ref, tokenizer, 3), "a")  # a@2 does not change ab@1
    assert registry.resolve("ab@1") == [("a@1", 1.0), ("b@1", 0.5)]

    # α replaces an offset's own strength and scales a composition's members.
    assert registry.compose(["ab", "a@2"], [2.0, 0.25], "abc") == "abc@1"
    assert registry.resolve("abc") == [("a@1", 2.0), ("b@1", 1.0), ("a@2", 0.25)]

    loaded = [(registry.get(r, ref, tokenizer, base), a) for r, a in registry.resolve("ab")]
    assert [alpha for _, alpha in loaded] == [1.0, 0.5]
    prompt = "Q: where was Alra born ?\nA:"
    together = OffsetModel(base, ref, [(o.model, a) for o, a in loaded], tokenizer=tokenizer)
    one = registry.get("a@1", ref, tokenizer, base).model
    other = registry.get("b@1", ref, tokenizer, base).model
    separately = OffsetModel(base, ref, [(one, 1.0), (other, 0.5)], tokenizer=tokenizer)
    assert torch.allclose(together.step(prompt).fused, separately.step(prompt).fused, atol=1e-6)

    with pytest.raises(ValueError, match="ab is a composition of a@1 .α 1., b@1 .α 0.5.*Lab.add_registry"):
        registry.get("ab", ref)
    with pytest.raises(ValueError, match="a@1 would appear twice in twice"):
        registry.compose(["a@1", "ab"], None, "twice")
    with pytest.raises(ValueError, match="one α per ref"):
        registry.compose(["a", "b"], [1.0], "x")
    with pytest.raises(RegistryError, match="No offset named 'nobody'"):
        registry.compose(["a", "nobody"], None, "x")
    assert "x" not in registry.names()  # nothing half-stored
    with pytest.raises(ValueError, match=r"Cannot remove a: .*a@1 by ab@1, abc@1.*a@2 by abc@1"):
        registry.remove("a")
    assert registry.remove("abc") == ["abc@1"]
    assert registry.remove("ab") == ["ab@1"]
    assert registry.remove("a") == ["a@1", "a@2"]
    row = registry.list()[0]
    assert row["ref"] == "b@1"


def test_a_concurrent_add_that_takes_the_number_first_pushes_to_the_next(pair, tokenizer, tmp_path,
                                                                          monkeypatch):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    mine, theirs = fake_offset(base, ref, tokenizer, 1), fake_offset(base, ref, tokenizer, 2)
    real_rename, raced = os.rename, []

    def rename_after_a_rival(src, dst):
        # Between our scan for the next number and our rename, a rival publishes first.
        if not raced:
            raced.append("rival")
            raced.append(registry.add(theirs, "a"))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_a_rival)
    assert registry.add(mine, "a") == "a@2"
    assert raced == ["rival", "a@1"]
    assert same_weights(registry.get("a@1", ref).model, theirs.model)
    assert same_weights(registry.get("a@2", ref).model, mine.model)


def test_threads_adding_at_once_get_distinct_versions(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    offsets = [fake_offset(base, ref, tokenizer, s) for s in range(6)]
    start, refs = threading.Barrier(len(offsets)), {}

    def add(i: int) -> None:
        start.wait()
        refs[i] = registry.add(offsets[i], "a")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(offsets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(refs.values()) == [f"a@{v}" for v in range(1, 7)]
    for i, r in refs.items():
        assert same_weights(registry.get(r, ref).model, offsets[i].model)
    assert list((tmp_path / "reg" / ".staging").iterdir()) == []


def test_a_staging_folder_that_vanishes_during_cleanup_is_passed_over(pair, tokenizer, tmp_path,
                                                                      monkeypatch):
    """Another add may finish (and remove its staging folder) while this one looks at it."""
    import shutil

    base, ref = pair
    registry = Registry(tmp_path / "reg")
    (tmp_path / "reg" / ".staging" / "a.other").mkdir(parents=True)
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self.name == "a.other":
            shutil.rmtree(self)  # the other add is done just now
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert registry.add(fake_offset(base, ref, tokenizer, 1), "a") == "a@1"


def test_adding_a_registry_to_a_lab_gives_toggles(pair, tokenizer, tmp_path):
    base, ref = pair
    registry = Registry(tmp_path / "reg")
    registry.add(fake_offset(base, ref, tokenizer, 1), "a")
    registry.add(fake_offset(base, ref, tokenizer, 2), "a")
    registry.add(fake_offset(base, ref, tokenizer, 3, alpha=0.5), "b")
    registry.compose(["a@1", "b"], None, "old-a-and-b")
    lab = Lab("tiny", tokenizer, base, ref, splits={})
    toggles = lab.add_registry(registry)
    assert toggles == {"a@2": [("a@2", 1.0)], "b@1": [("b@1", 0.5)],
                       "old-a-and-b@1": [("a@1", 1.0), ("b@1", 0.5)]}
    assert sorted(lab.offsets) == ["a@1", "a@2", "b@1"]
    fused = lab.model(toggles["old-a-and-b@1"])
    assert fused.offset_names == ["a@1", "b@1"] and fused.alphas == [1.0, 0.5]


def test_cli_list_show_compose_remove(pair, tokenizer, tmp_path, capsys, monkeypatch):
    base, ref = pair
    root = tmp_path / "reg"
    registry = Registry(root)
    registry.add(fake_offset(base, ref, tokenizer, 1), "a", notes={"who": "ana"})
    registry.add(fake_offset(base, ref, tokenizer, 2), "b")
    monkeypatch.setenv("OFFSETLAB_REGISTRY", str(root))  # the default --registry

    assert main(["offsets", "compose", "a", "b", "--alpha", "0.5", "--out", "ab", "--note", "why=test"]) == 0
    assert "added ab@1: 0.5·a@1 + 0.5·b@1" in capsys.readouterr().out
    assert main(["offsets", "list"]) == 0
    out = capsys.readouterr().out
    assert "a@1" in out and "who=ana" in out and "0.5·a@1 + 0.5·b@1" in out and "why=test" in out
    assert main(["offsets", "show", "a", "--registry", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == {"who": "ana"}
    assert main(["offsets", "remove", "a"]) == 2
    assert "used by compositions (a@1 by ab@1)" in capsys.readouterr().err
    assert main(["offsets", "remove", "ab@1"]) == 0
    assert capsys.readouterr().out == "removed ab@1\n"
    assert main(["offsets", "show", "ab"]) == 2
    assert "No offset named 'ab' in the registry at" in capsys.readouterr().err
    assert main(["offsets", "list", "--registry", str(tmp_path / "empty")]) == 0
    assert "no offsets in" in capsys.readouterr().out
    (tmp_path / "file").write_text("not a registry\n")
    assert main(["offsets", "list", "--registry", str(tmp_path / "file")]) == 2
    assert "is a file, not a registry folder" in capsys.readouterr().err
    # one entry edited into nonsense: listed as damaged, the others still listed
    (root / "b" / "v1" / "offset.json").write_text("{not json")
    assert main(["offsets", "list"]) == 0
    out = capsys.readouterr().out
    assert "a@1" in out and "b@1" in out and "damaged" in out and "unreadable" in out


def test_cli_train_can_register(pair, tokenizer, tmp_path, capsys, monkeypatch):
    base, ref = pair
    lab = Lab("tiny", tokenizer, base, ref, splits={"forget10": FORGET, "retain90": RETAIN})
    monkeypatch.setattr("offsetlab.frontends.cli.load_lab", lambda args: lab)
    root = tmp_path / "reg"
    argv = ["train", "--out", str(tmp_path / "offset"), "--steps", "2", "--register", "authors",
            "--note", "who=ana", "--note", "ticket=42", "--registry", str(root)]
    assert main(argv) == 0
    assert f"registered authors@1 in {root}" in capsys.readouterr().out
    shown = Registry(root).show("authors")
    assert shown["notes"] == {"who": "ana", "ticket": "42"} and shown["forget_set"]["size"] == 3
    with pytest.raises(SystemExit, match="--note takes KEY=VALUE"):
        main(["train", "--out", str(tmp_path / "other"), *argv[3:], "--note", "oops"])


# -- privacy ------------------------------------------------------------------------------


def forget_texts(records) -> list[bytes]:
    return [t.encode() for r in records for t in (r.question, r.answer, r.key) if t]


def test_registry_files_hold_no_forget_text(pair, tokenizer, tmp_path):
    base, ref = pair
    result = train_offset(base, ref, tokenizer, FORGET, RETAIN, TrainConfig(steps=2), progress=False)
    offset = Offset.from_training(result, FORGET, name="authors")
    registry = Registry(tmp_path / "reg")
    registry.add(offset, "authors", notes={"who": "ana"}, metrics={"kfa": 0.1})
    registry.add(offset, "authors")
    registry.compose(["authors@1", "authors@2"], None, "both")
    registry.remove("both")
    files = [p for p in (tmp_path / "reg").rglob("*") if p.is_file()]
    assert len(files) >= 5
    blob = b"".join(p.read_bytes() for p in files)
    for text in forget_texts(FORGET):
        assert text not in blob, text


@pytest.mark.parametrize("fail", [False, True], ids=["completes", "callback-raises"])
def test_training_writes_no_files(pair, tokenizer, tmp_path, monkeypatch, fail):
    base, ref = pair
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(cwd)

    def callback(event: dict) -> None:
        if fail and event["step"] == 2:
            raise RuntimeError("stopped by the test")

    config = TrainConfig(steps=3, lora_rank=4)
    if fail:
        with pytest.raises(RuntimeError, match="stopped by the test"):
            train_offset(base, ref, tokenizer, FORGET, RETAIN, config, callback=callback, progress=False)
    else:
        train_offset(base, ref, tokenizer, FORGET, RETAIN, config, callback=callback, progress=False)
    assert list(scratch.rglob("*")) == [] and list(cwd.rglob("*")) == []


# -- a process killed while it saves --------------------------------------------------------

# The child saves a large-ish offset (~40 MB). With OFFSETLAB_TEST_PAUSE it stops just
# before the rename that publishes the folder, so the kill lands at the worst moment;
# without, it is killed as soon as its staging folder appears (somewhere mid-write).
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path[:0] = [{tests!r}, {here!r}]
    from conftest import make_model, make_tokenizer
    from test_registry import fake_offset
    from offsetlab.offsets.registry import Registry

    tokenizer = make_tokenizer()
    base, ref = make_model(len(tokenizer), 0, hidden=48), make_model(len(tokenizer), 1, hidden=512, layers=4)
    offset = fake_offset(base, ref, tokenizer, seed=99)
    if os.environ.get("OFFSETLAB_TEST_PAUSE"):
        real_rename, real_replace = os.rename, os.replace
        def pause(src, dst, real):
            if os.path.basename(dst) in ("v2", "offset"):
                print("ready", flush=True)
                time.sleep(600)
            return real(src, dst)
        os.rename = lambda s, d: pause(s, d, real_rename)
        os.replace = lambda s, d: pause(s, d, real_replace)
    print("start", flush=True)
    if sys.argv[1] == "registry":
        Registry(sys.argv[2]).add(offset, "big")
    else:
        offset.save(sys.argv[2], overwrite=True)
    print("done", flush=True)
""")


@pytest.fixture(scope="module")
def big_pair(tokenizer):
    return make_model(len(tokenizer), 0, hidden=48), make_model(len(tokenizer), 1, hidden=512, layers=4)


def run_and_kill(tmp_path, target: str, path: Path, pause: bool) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS), here=str(Path(__file__).resolve().parent)))
    env = {**os.environ, "OFFSETLAB_TEST_PAUSE": "1" if pause else ""}
    child = subprocess.Popen([sys.executable, str(script), target, str(path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline() == "start\n"
        if pause:
            assert child.stdout.readline() == "ready\n"
        else:
            # Any temporary folder next to the target means the save is under way.
            watch = path / ".staging" if target == "registry" else path.parent
            deadline = time.monotonic() + 60
            while not any(p.name.endswith(".tmp") or p.parent.name == ".staging"
                          for p in watch.glob("*")) and child.poll() is None:
                assert time.monotonic() < deadline, "the child never started saving"
                time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    return "killed" if child.returncode == -signal.SIGKILL else "finished"


@pytest.mark.parametrize("pause", [True, False], ids=["before-rename", "mid-write"])
def test_killed_registry_add_leaves_no_partial_version(big_pair, tokenizer, tmp_path, pause):
    base, ref = big_pair
    registry = Registry(tmp_path / "reg")
    old = fake_offset(base, ref, tokenizer, seed=1)
    registry.add(old, "big")
    outcome = run_and_kill(tmp_path, "registry", registry.root, pause)
    if pause:
        assert outcome == "killed"
    rows = registry.list()
    # Every listed version is complete and loads; the old one is untouched.
    for row in rows:
        registry.get(row["ref"], ref, tokenizer)
    assert same_weights(registry.get("big@1", ref, tokenizer).model, old.model)
    if outcome == "killed":
        assert [r["ref"] for r in rows] == ["big@1"]


# Offset.save swaps folders with two renames (old away, new in): killed between them,
# the folder is missing and the old offset sits in .offset.old-PID, which Offset.load
# moves back ("before-rename" kills exactly there).
@pytest.mark.parametrize("pause", [True, False], ids=["before-rename", "mid-write"])
def test_killed_overwrite_keeps_the_old_offset(big_pair, tokenizer, tmp_path, pause):
    base, ref = big_pair
    old = fake_offset(base, ref, tokenizer, seed=1)
    folder = old.save(tmp_path / "offset")
    outcome = run_and_kill(tmp_path, "offset", folder, pause)
    if pause:
        assert outcome == "killed"
    loaded = Offset.load(folder, ref, tokenizer)
    if outcome == "killed":
        assert same_weights(loaded.model, old.model)


def test_an_offset_trained_on_top_of_others_loads_quietly_over_the_same_base(pair, tokenizer, tmp_path):
    import warnings

    base, ref = pair
    below = fake_offset(base, ref, tokenizer, 5)
    deployed = OffsetModel(base, ref, [(below.model, 1.0)], tokenizer=tokenizer).as_source()
    stacked = fake_offset(deployed, ref, tokenizer, 6)
    assert stacked.fingerprint("base") == deployed.fingerprint()
    assert stacked.fingerprint("base").root() == below.fingerprint("base")
    stacked.save(tmp_path / "stacked")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Offset.load(tmp_path / "stacked", ref, tokenizer, base=base)
    with pytest.warns(UserWarning, match="another base model"):
        Offset.load(tmp_path / "stacked", ref, tokenizer, base=make_model(len(tokenizer), 8, hidden=48))
