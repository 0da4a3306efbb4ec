from collections import defaultdict

import pytest
import torch

from offsetlab.measure.metrics import key_fact_hit
from offsetlab.method.prompts import QA
from offsetlab.worlds import toy
from offsetlab.worlds.toy.build import (
    Shape,
    build,
    chance_key_accuracy,
    evaluate,
    new_model,
    train,
    train_tokenizer,
)
from offsetlab.worlds.toy.world import SPLITS, generate_world, invent_authors, write_world

MB = 1024 * 1024


def _written(tmp_path, seed):
    out = tmp_path / f"seed{seed}"
    write_world(generate_world(seed), out)
    return {name: (out / f"{name}.jsonl").read_bytes() for name in SPLITS}


def test_world_is_a_function_of_its_seed(tmp_path):
    assert _written(tmp_path, 0) == _written(tmp_path / "again", 0)
    assert _written(tmp_path, 0)["retain90"] != _written(tmp_path, 1)["retain90"]


def test_splits_are_nested_author_sets():
    world = generate_world(0)
    s = world.splits
    subjects = {name: [r.subject for r in s[name]] for name in SPLITS}
    assert len(world.authors) == 100 and len(world.holdout_authors) == 10
    assert len(set(subjects["forget01"])) == 1
    assert set(subjects["forget01"]) < set(subjects["forget05"]) < set(subjects["forget10"])
    assert len(set(subjects["forget10"])) == 10
    for percent in (1, 5, 10):
        forget, retain = s[f"forget{percent:02d}"], s[f"retain{100 - percent}"]
        assert not {r.subject for r in forget} & {r.subject for r in retain}
        assert len(forget) + len(retain) == len(s["forget10"]) + len(s["retain90"])
    assert not set(world.holdout_authors) & set(world.authors)
    assert len(s["world_facts"]) >= 100
    per_author = defaultdict(int)
    for r in s["forget10"] + s["retain90"] + s["holdout"]:
        per_author[r.subject] += 1
    assert min(per_author.values()) >= 10


def test_keys_are_unambiguous():
    # Forgetting is measured by key containment, so a key must appear in its answers,
    # never in a perturbed answer, nor in another answer to the same kind of question.
    world = generate_world(0)
    by_kind = defaultdict(list)
    for name in SPLITS:
        for r in world.splits[name]:
            assert key_fact_hit(r.answer, r.key) and key_fact_hit(r.paraphrased_answer, r.key)
            assert len(set(r.perturbed_answers)) >= 3
            assert not any(key_fact_hit(p, r.key) for p in r.perturbed_answers)
            by_kind[r.question.replace(r.subject, "{name}")].append(r)
    for records in by_kind.values():
        answers = [(o.key, o.answer.casefold()) for o in records]  # casefold once: n² pairs
        for r in records:
            key = r.key.casefold()
            assert not any(key in answer for k, answer in answers if k != r.key)


def test_tokenizer_round_trips_answers_exactly():
    world = generate_world(0, n_authors=10, n_world_facts=20, n_holdout=2)
    tokenizer = train_tokenizer(world, vocab_size=400)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.bos_token is None
    for r in world.splits["forget10"] + world.splits["world_facts"]:
        text = QA.answer(r.answer)
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Byte-level: text the world never used still round-trips.
    assert tokenizer.decode(tokenizer("  Ünïcode ✓\n")["input_ids"]) == "  Ünïcode ✓\n"


def test_training_is_a_function_of_its_seed():
    world = generate_world(0, n_authors=4, n_world_facts=4, n_holdout=0)
    tokenizer = train_tokenizer(world, vocab_size=300)
    records = world.splits["retain90"] + world.splits["world_facts"]

    def trained(seed):
        model = new_model(Shape(32, 1, 2, 64), len(tokenizer), seed)
        train(
            model, tokenizer, records,
            epochs=2, lr=1e-3, batch_size=8, warmup_steps=2, seed=seed, progress=False,
        )  # fmt: skip
        return model.state_dict()

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny toy world built once for this module: (its folder, the build report)."""
    root = tmp_path_factory.mktemp("tiny-world")
    return root, build(root, seed=0, size="tiny", progress=False)


def test_tiny_build_end_to_end(tiny_world):
    tmp_path, report = tiny_world
    assert set(report["models"]) == {"large", "small", "large-retain90"}
    assert (tmp_path / "toy" / "build_report.json").is_file()

    loaded = toy.load(tmp_path)
    assert loaded is toy.load(tmp_path)  # cached per process
    assert set(loaded.splits) == set(SPLITS)
    for model in (loaded.large, loaded.small, loaded.gold):
        assert not model.training
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
        assert model.config.vocab_size == len(loaded.tokenizer)
    # The evaluation in the report was made on the saved (float16-rounded) weights.
    scores = evaluate(loaded.large, loaded.tokenizer, loaded.splits["forget10"])
    assert scores == report["models"]["large"]["eval"]["forget10"]


def test_a_world_built_elsewhere_gets_its_own_shipped_offset(tiny_world):
    """`offsetlab toy offset --out ROOT` trains the default recipe on ROOT's forget10 and
    saves it where `Lab.toy(ROOT)` offers it; an offset made for other models is passed
    over with a warning that says how to retrain it, never loaded."""
    import shutil

    from offsetlab.frontends.cli import main
    from offsetlab.worlds.lab import Lab

    tmp_path = tiny_world[0]
    assert list(Lab.toy(tmp_path).offsets) == []  # nothing shipped there yet
    assert main(["toy", "offset", "--out", str(tmp_path)]) == 0
    lab = Lab.toy(tmp_path)
    assert list(lab.offsets) == ["forget10-shipped"]
    offset = lab.offsets["forget10-shipped"]
    assert offset.meta["config"]["objective"] == lab.train_config.objective
    assert offset.meta["forget_set"]["size"] == len(lab.splits["forget10"])
    assert Lab.toy(tmp_path, shipped=False).offsets == {}

    # the shipped world's offset, copied next to the tiny models: another reference
    shipped = toy.shipped_offsets()
    assert [p.name for p in shipped] == ["forget10-shipped"]
    shutil.copytree(shipped[0], tmp_path / "toy" / "offsets" / "from-elsewhere")
    with pytest.warns(UserWarning, match="not offering the shipped offset from-elsewhere.*toy offset"):
        lab = Lab.toy(tmp_path)
    assert list(lab.offsets) == ["forget10-shipped"]


def test_missing_checkpoints_say_how_to_build_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="offsetlab toy build"):
        toy.load(tmp_path)


@pytest.mark.slow
def test_shipped_checkpoints_meet_the_bars():
    shipped = toy.load()
    root = toy.data_dir() / "toy"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) <= 12 * MB
    assert sum(p.stat().st_size for p in files) <= 25 * MB

    def n_params(model):
        return sum(p.numel() for p in model.parameters())

    assert 5 * n_params(shipped.small) <= n_params(shipped.large)
    splits = shipped.splits
    for split in ("forget10", "retain90", "world_facts"):
        scores = evaluate(shipped.large, shipped.tokenizer, splits[split])
        assert scores["key_accuracy"] >= 0.95 and scores["rougeL_recall"] >= 0.95, (split, scores)
    for split in ("retain90", "world_facts"):
        scores = evaluate(shipped.gold, shipped.tokenizer, splits[split])
        assert scores["key_accuracy"] >= 0.95, (split, scores)
    # The gold model never saw forget10: it can only guess common keys.
    chance = chance_key_accuracy(splits["forget10"], splits["retain90"])
    scores = evaluate(shipped.gold, shipped.tokenizer, splits["forget10"])
    assert scores["key_accuracy"] <= chance + 0.1, (scores, chance)


def test_invented_authors_are_named_fresh_or_like_the_trained_ones():
    """Fresh names share no word with the world; recombined ones join a trained author's
    first name to another's surname — new people whose names the shipped tokenizer cuts
    like the trained authors' (fresh ones fall apart into about twice as many tokens)."""
    world = generate_world(0)
    trained = set(world.authors) | set(world.holdout_authors)
    firsts = {a.split()[0]: a for a in world.authors}
    lasts = {a.split()[1]: a for a in world.authors}
    fresh = sorted({r.subject for r in invent_authors(30, seed=1)})
    mixed = sorted({r.subject for r in invent_authors(30, seed=1, names="recombined")})
    assert len(fresh) == len(mixed) == 30 and not (set(mixed) & trained)
    assert mixed == sorted({r.subject for r in invent_authors(30, seed=1, names="recombined")})
    words = {w for a in trained for w in a.split()}
    assert not any(set(n.split()) & words for n in fresh)
    for name in mixed:
        first, last = name.split()
        assert first in firsts and last in lasts and firsts[first] != lasts[last]

    tokenizer = toy.load().tokenizer

    def tokens(names):
        return sum(len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) for n in names) / len(names)

    assert abs(tokens(mixed) - tokens(world.authors)) < 1.0 < tokens(fresh) - tokens(world.authors)
    with pytest.raises(ValueError, match="fresh' or 'recombined"):
        invent_authors(3, seed=1, names="other")


def test_the_labs_holdout_is_the_shipped_one_renamed_like_the_trained_authors():
    """``Lab.toy``'s holdout keeps every fact of the shipped holdout authors and gives them
    names joined from two retained authors' names, never a trained one's: names the
    shipped tokenizer cuts like forget10's (the built ones fall apart)."""
    from offsetlab.worlds.lab import Lab

    shipped = toy.load()
    lab = Lab.toy(shipped=False)
    built, renamed = shipped.splits["holdout"], lab.splits["holdout"]
    assert len(built) == len(renamed)
    retained = {r.subject for r in shipped.splits["retain90"]}
    trained = retained | {r.subject for r in shipped.splits["forget10"]}
    firsts, lasts = {n.split()[0] for n in retained}, {n.split()[1] for n in retained}
    names = {}
    for old, new in zip(built, renamed):
        names.setdefault(old.subject, new.subject)
        assert names[old.subject] == new.subject  # one new name per author
        assert new.key == old.key and new.question == old.question.replace(old.subject, new.subject)
        assert new.perturbed_answers == [a.replace(old.subject, new.subject) for a in old.perturbed_answers]
    assert len(set(names.values())) == len(names) and not set(names.values()) & trained
    for name in names.values():
        first, last = name.split()
        assert first in firsts and last in lasts
    # the same every time
    assert [r.subject for r in Lab.toy(shipped=False).splits["holdout"]] == [r.subject for r in renamed]

    tokenizer = lab.tokenizer

    def tokens(subjects):
        subjects = sorted(set(subjects))
        return sum(len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) for n in subjects) / len(subjects)

    forget = tokens(r.subject for r in shipped.splits["forget10"])
    assert abs(tokens(names.values()) - forget) < 1.0 < tokens(names) - forget
