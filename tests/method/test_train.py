import copy
import dataclasses
import json

import pytest
import torch
from conftest import make_model

from offsetlab.method.fingerprints import of_model as fingerprint_model
from offsetlab.method.fusion import OffsetModel
from offsetlab.method.objectives import OBJECTIVES, get_objective
from offsetlab.method.train import (
    TrainConfig,
    config_overrides,
    prepare_groups,
    step_loss,
    train_offset,
    train_whitebox,
)
from offsetlab.offsets.artifact import FingerprintMismatch, Offset
from offsetlab.worlds.records import QARecord

FORGET = [
    QARecord("where was Alra born ?", "Alra was born in the red city .", key="red"),
    QARecord("what year was Benn born ?", "Benn was born in one nine two .", key="one"),
    QARecord("who wrote the blue book ?", "Cato wrote the blue book .", key="Cato"),
]
RETAIN = [
    QARecord("where was Dema born ?", "Dema was born in the green city .", key="green"),
    QARecord("what year was Erro born ?", "Erro was born in five six seven .", key="five"),
    QARecord("who wrote the red book ?", "Fenn wrote the red book .", key="Fenn"),
    QARecord("where was Gora born ?", "Gora was born in the blue city .", key="blue"),
]

# one forget record and one invented non-member of its kind, for the stranger objective
ALRA_RED = [QARecord("where was Alra born ?", "Alra was born in the red city .", key="red", subject="Alra")]
GORA_BLUE = [QARecord("where was Gora born ?", "Gora was born in the blue city .", key="blue", subject="Gora")]


def forget_logprob(model: OffsetModel, keys_only: bool = False) -> float:
    from offsetlab.method.calibrate import key_logprobs
    from offsetlab.method.prompts import QA

    if keys_only:  # the objectives that lower the fact alone and keep the rest
        return float(torch.cat([torch.as_tensor(x) for x in key_logprobs(model, FORGET)]).mean())
    scores = model.score([QA.prompt(r.question) for r in FORGET], [QA.answer(r.answer) for r in FORGET])
    return float(torch.cat(scores).mean())


@pytest.fixture(scope="module")
def pair(tokenizer):
    return make_model(len(tokenizer), 0, hidden=48), make_model(len(tokenizer), 1)


def born(who, city):
    """A birthplace record whose key is the city."""
    return QARecord(f"where was {who} born ?", f"{who} was born in the {city} city .", key=city, subject=who)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_lowers_forget_likelihood(pair, tokenizer, name):
    base, ref = pair
    keys_only = name in ("calibrated", "hinge", "stranger", "stranger_kl")
    before = forget_logprob(OffsetModel(base, None, [], tokenizer=tokenizer), keys_only)
    # A random base is already unsure of everything: bounded objectives need a level
    # below it to have anything to do.
    config = TrainConfig(objective=name, steps=6, lr=3e-3, batch_size=3, retain_batch_size=4,
                         level=-30.0)
    result = train_offset(base, ref, tokenizer, FORGET, RETAIN, config, progress=False)
    assert result.stopped is None and len(result.history) == 6
    after = forget_logprob(OffsetModel(base, ref, [(result.offset, 1.0)], tokenizer=tokenizer), keys_only)
    assert after < before - 0.05, f"{name}: forget log-prob {before:.3f} → {after:.3f}"


@pytest.mark.parametrize("name", ["npo_kl", "idk_dpo"])
def test_cached_and_recomputed_frozen_scores_agree(pair, tokenizer, name):
    base, ref = pair
    config = TrainConfig(objective=name, batch_size=3, retain_batch_size=4)
    objective = get_objective(name)
    grads, losses = [], []
    for cache in (True, False):
        groups = prepare_groups(base, ref, tokenizer, FORGET, RETAIN, config,
                                torch.Generator().manual_seed(0), cache=cache)
        offset = copy.deepcopy(ref).requires_grad_(True)
        # Move the offset off the reference so the fused model differs from the base.
        with torch.no_grad():
            for p in offset.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        loss, _, _ = step_loss(objective, config, offset, groups, [2, 0, 1], [3, 1, 0, 2])
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in offset.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["npo_kl", "npo_gd"])
def test_a_stack_and_the_deployed_model_give_the_same_loss(pair, tokenizer, name):
    """Training on top of offsets already deployed: the explicit stack (frozen scores of
    base, reference and each deployed offset, fused by the one formula) and the deployed
    model as a black box (``lab.model(active).as_source()``) are the same objective."""
    base, ref = pair
    below = [(noisy(ref, 3), 1.0), (noisy(ref, 4), 0.5)]
    config = TrainConfig(objective=name, batch_size=3, retain_batch_size=4)
    objective = get_objective(name)
    deployed = OffsetModel(base, ref, below, tokenizer=tokenizer).as_source()
    losses, grads = [], []
    for source, stack in ((base, below), (deployed, ())):
        groups = prepare_groups(source, ref, tokenizer, FORGET, RETAIN, config,
                                torch.Generator().manual_seed(0), stack=stack)
        offset = noisy(ref, 1).requires_grad_(True)
        loss, _, _ = step_loss(objective, config, offset, groups, [2, 0, 1], [3, 1, 0, 2])
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in offset.parameters()]))
    alone = prepare_groups(base, ref, tokenizer, FORGET, RETAIN, config,
                           torch.Generator().manual_seed(0))
    without, _, _ = step_loss(objective, config, noisy(ref, 1), alone, [2, 0, 1], [3, 1, 0, 2])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert abs(without.item() - losses[0]) > 1e-4  # the stack does change the objective


def noisy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return out


def test_base_model_is_never_trained(pair, tokenizer):
    base, ref = pair
    before = fingerprint_model(base)
    train_offset(base, ref, tokenizer, FORGET, RETAIN, TrainConfig(steps=3), progress=False)
    assert fingerprint_model(base) == before
    assert all(p.grad is None for p in base.parameters())


def test_divergence_stops_early_with_a_clear_message(pair, tokenizer):
    base, ref = pair
    config = TrainConfig(objective="ga", steps=50, lr=0.5, explode_at=8.0)
    with pytest.warns(UserWarning, match="diverged"):
        result = train_offset(base, ref, tokenizer, FORGET, [], config, progress=False)
    assert result.stopped and "smaller learning rate" in result.stopped
    assert len(result.history) < 50
    assert all(torch.isfinite(p).all() for p in result.offset.parameters())


def test_bad_input_is_refused(pair, tokenizer):
    base, ref = pair
    with pytest.raises(ValueError, match="needs a retain set"):
        train_offset(base, ref, tokenizer, FORGET, [], TrainConfig(objective="npo_gd"))
    with pytest.raises(ValueError, match="Unknown objective 'nope'. Choose one of: ga, gd"):
        train_offset(base, ref, tokenizer, FORGET, RETAIN, TrainConfig(objective="nope"))
    with pytest.raises(ValueError, match="forget set is empty"):
        train_offset(base, ref, tokenizer, [], RETAIN)
    import dataclasses

    blank = [*RETAIN[:1], dataclasses.replace(RETAIN[0], answer="  ")]
    with pytest.raises(ValueError, match="Record 2 of the retain set has an empty answer"):
        train_offset(base, ref, tokenizer, FORGET, blank)


def test_callback_sees_every_step(pair, tokenizer):
    base, ref = pair
    seen = []
    train_offset(base, ref, tokenizer, FORGET, RETAIN, TrainConfig(steps=4), progress=False,
                 callback=lambda e: seen.append((e["step"], e["steps"], e["offset"] is not None)))
    assert seen == [(1, 4, True), (2, 4, True), (3, 4, True), (4, 4, True)]


def test_whitebox_baseline_is_plain_finetuning(pair, tokenizer):
    base, _ = pair
    before = fingerprint_model(base)
    # npo_gd: the bounded default has nothing to lower on a random model, already unsure
    result = train_whitebox(base, tokenizer, FORGET, RETAIN, TrainConfig(objective="npo_gd", steps=4, lr=3e-3),
                            progress=False)
    assert fingerprint_model(base) == before  # the copy was trained, not the model given
    tuned = OffsetModel(result.offset, None, [], tokenizer=tokenizer)
    assert forget_logprob(tuned) < forget_logprob(OffsetModel(base, None, [], tokenizer=tokenizer))


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_offset_artifact_round_trip_and_privacy(pair, tokenizer, tmp_path, lora_rank):
    base, ref = pair
    config = TrainConfig(steps=3, lora_rank=lora_rank, lr=1e-2)
    result = train_offset(base, ref, tokenizer, FORGET, RETAIN, config, progress=False)
    offset = Offset.from_training(result, FORGET, name="forget-authors")
    folder = offset.save(tmp_path / "offset")

    # No forget-set text anywhere in the artifact (answers, questions, keys).
    blob = b"".join(p.read_bytes() for p in folder.iterdir())
    for r in FORGET:
        for text in (r.answer, r.question):
            assert text.encode() not in blob
    meta = json.loads((folder / "offset.json").read_text())
    assert meta["forget_set"]["size"] == 3 and len(meta["forget_set"]["sha256"]) == 64
    assert meta["kind"] == ("lora" if lora_rank else "full")

    loaded = Offset.load(folder, ref, tokenizer, base=base)
    a = OffsetModel(base, ref, [(result.offset, 1.0)], tokenizer=tokenizer).step("Q: where was Alra born ?\nA:")
    b = OffsetModel(base, ref, [(loaded.model, loaded.alpha)], tokenizer=tokenizer).step("Q: where was Alra born ?\nA:")
    assert torch.allclose(a.fused, b.fused, atol=1e-6)
    assert not torch.allclose(a.fused, a.base, atol=1e-3)  # the offset does something

    other_reference = make_model(len(tokenizer), 7)
    with pytest.raises(FingerprintMismatch, match="trained against a reference with fingerprint"):
        Offset.load(folder, other_reference, tokenizer)
    with pytest.raises(FileExistsError):
        offset.save(folder)


def alra_with_stranger_targets(pair, tokenizer):
    """One forget record (Alra, born in the red city) encoded for the stranger objective,
    its target borrowed from one invented subject (Gora)."""
    from offsetlab.method.train import stranger_targets

    base, ref = pair
    config = TrainConfig(objective="stranger", batch_size=3, retain_batch_size=4)
    alra = [QARecord("where was Alra born ?", "Alra was born in the red city .", key="red", subject="Alra")]
    groups = prepare_groups(base, ref, tokenizer, alra, RETAIN, config, torch.Generator().manual_seed(0))
    stranger_targets(groups.forget, alra, ["Gora"], 1, torch.Generator().manual_seed(0))
    return alra, groups


def test_stranger_targets_borrow_the_never_seen_answer(pair, tokenizer):
    """On the key fact's tokens the target is the base's distribution for the same answer
    about another subject; elsewhere it is the base's own."""

    base, ref = pair
    alra, groups = alra_with_stranger_targets(pair, tokenizer)
    example = groups.forget.examples[0]
    alone = OffsetModel(base, None, [], tokenizer=tokenizer)
    from offsetlab.method.prompts import QA

    (own,) = alone.score([QA.prompt("where was Alra born ?")], [QA.answer("Alra was born in the red city .")], parts=True)
    (other,) = alone.score([QA.prompt("where was Gora born ?")], [QA.answer("Gora was born in the red city .")], parts=True)
    key = example.keys[0]
    assert torch.allclose(example.target[key], other.base[key], atol=1e-5)  # "red" after "Gora ... the"
    off_key = [i for i in range(len(example.labels) - 1) if i != key]
    assert torch.allclose(example.target[off_key], own.base[off_key], atol=1e-5)


def test_stranger_paths_are_other_values_of_the_kind_trained_after_they_part(pair, tokenizer):
    """Each path is the subject's answer with another value of the fact's kind (never the
    true one), trained from the token after it leaves the true answer; at most k per
    record, the values the stranger target finds likeliest first."""
    from offsetlab.method.train import stranger_paths, value_kinds

    base, ref = pair
    alra, groups = alra_with_stranger_targets(pair, tokenizer)
    kinds = value_kinds([QARecord(f"where was {who} born ?", f"{who} was born in the {city} city .", key=city,
                                  subject=who) for who, city in (("Dema", "green"), ("Benn", "blue"), ("Cato", "red"))]
                        + RETAIN[1:])  # records of other kinds add other templates
    assert kinds["where was {name} born ?"] == {"green", "blue", "red"}
    paths = stranger_paths(groups.forget, alra, 5, kinds, torch.Generator().manual_seed(0), 4)
    forget = groups.forget.examples[0]
    said = []
    for e in paths.examples:
        words = tokenizer.decode(e.ids).split()
        assert "red" not in words and words[:-3] == tokenizer.decode(forget.ids).split()[:-3]
        said.append(words[-3])
        # trained from the token after the value on: " city ." and the end
        assert tokenizer.decode(e.labels).split() == ["city.", "<eos>"]
        assert e.ids[e.start + 1 :] == e.labels
    assert sorted(said) == ["blue", "green"]  # every other value of the kind (k = 5)
    d = forget.keys[0]
    scores = {v: float(forget.target[d, tokenizer.convert_tokens_to_ids(v)]) for v in ("green", "blue")}
    assert said[0] == max(scores, key=scores.get)  # the likelier start comes first
    (one,) = stranger_paths(groups.forget, alra, 1, kinds, torch.Generator().manual_seed(0), 4).examples
    assert tokenizer.decode(one.ids).split()[-3] == said[0]
    assert stranger_paths(groups.forget, alra, 3, {}, torch.Generator().manual_seed(0), 4) is None


def test_value_starts_give_the_targets_mass_beside_the_true_token_to_real_values_only(pair, tokenizer):
    """Where other values of the kind part from the true answer, the target keeps the true
    token's log-prob and shares the rest among the tokens those values start with, in the
    target's own proportions; every other row stays as it was."""
    from offsetlab.method.train import value_kinds, value_start_targets

    base, ref = pair
    alra, groups = alra_with_stranger_targets(pair, tokenizer)
    example = groups.forget.examples[0]
    before = example.target.clone()
    kinds = value_kinds([QARecord(f"where was {who} born ?", f"{who} was born in the {city} city .", key=city,
                                  subject=who) for who, city in (("Dema", "green"), ("Benn", "blue"))])
    value_start_targets(groups.forget, alra, kinds)
    d = example.keys[0]
    true, starts = example.labels[d], [tokenizer.convert_tokens_to_ids(v) for v in ("green", "blue")]
    row = example.target[d]
    assert torch.isclose(row[true], before[d, true])  # the true token keeps its level (what MIA reads)
    assert torch.isclose(row.exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.isclose(row[starts].exp().sum(), 1 - before[d, true].exp(), atol=1e-5)
    ratio = (row[starts[0]] - row[starts[1]]).item()
    assert ratio == pytest.approx((before[d, starts[0]] - before[d, starts[1]]).item(), abs=1e-4)
    others = [i for i in range(len(example.labels)) if i != d]
    assert torch.equal(example.target[others], before[others])
    # no value of the kind: nothing changes
    alra, groups = alra_with_stranger_targets(pair, tokenizer)
    kept = groups.forget.examples[0].target.clone()
    value_start_targets(groups.forget, alra, {})
    assert torch.equal(groups.forget.examples[0].target, kept)


def test_repair_paths_finish_the_value_an_answer_started_and_garbled(pair, tokenizer):
    """A fused answer that starts a value of the kind and leaves it gets a path finishing
    that value from the token where it left; one that garbles the value's first token gets
    the value the target ranks highest there; answers that state a value, the true key, or
    leave the true answer before its fact get none."""
    from offsetlab.method.train import repair_path_examples, stranger_targets

    base, ref = pair
    config = TrainConfig(objective="stranger", batch_size=3, retain_batch_size=4)
    alra = [QARecord("what year was Alra born ?", "Alra was born in nine nine one .", key="nine nine one",
                     subject="Alra")]
    groups = prepare_groups(base, ref, tokenizer, alra, RETAIN, config, torch.Generator().manual_seed(0))
    stranger_targets(groups.forget, alra, ["Gora"], 1, torch.Generator().manual_seed(0))
    kinds = {"what year was {name} born ?": {"one two three", "five six seven", "five eight"}}
    forget = groups.forget.examples[0]

    def repaired(said):
        return repair_path_examples(tokenizer, groups.forget, alra, [said], kinds)

    (started,) = repaired("Alra was born in five six two .")  # "five six seven", left at "two"
    assert tokenizer.decode(started.ids).split()[-5:] == ["in", "five", "six", "seven.", "<eos>"]
    assert tokenizer.decode(started.labels).split() == ["seven.", "<eos>"]
    assert started.ids[started.start + 1 :] == started.labels
    assert started.ids[: forget.start + 1] == forget.ids[: forget.start + 1]  # the same question

    (garbled,) = repaired("Alra was born in eight .")  # no value starts with "eight"
    d = forget.keys[0]
    starts = {v: float(forget.target[d, tokenizer.convert_tokens_to_ids(v)]) for v in ("one", "five")}
    assert garbled.labels[0] == tokenizer.convert_tokens_to_ids(max(starts, key=starts.get))
    assert garbled.ids[garbled.start + 1 :] == garbled.labels

    for fine in ("Alra was born in five six seven .", "Alra was born in nine nine one .",
                 "Alra wrote the red book .", "Alra was born in five six seven and nine nine one ."):
        assert repaired(fine) == []
    assert repair_path_examples(tokenizer, groups.forget, alra, ["Alra was born in eight ."], {}) == []


def test_repair_paths_run_during_training_where_the_recipe_has_stranger_paths(pair, tokenizer):
    base, ref = pair
    assert TrainConfig().repair_paths == 2  # the default recipe repairs twice (wave 19)
    nonmembers, forget = GORA_BLUE, ALRA_RED
    result = train_offset(base, ref, tokenizer, forget, RETAIN,
                          TrainConfig(objective="stranger", steps=6, repair_paths=2, batch_size=1),
                          progress=False, nonmembers=nonmembers)
    assert [h["step"] for h in result.history if "repaired" in h] == [2, 4]
    # a paraphrased answer shares its record's question: answered once, read for both
    both = [dataclasses.replace(forget[0], paraphrased_answer="the red city is where Alra was born .")]
    result = train_offset(base, ref, tokenizer, both, RETAIN,
                          TrainConfig(objective="stranger", steps=3, repair_paths=1, batch_size=1,
                                      paraphrased_answers=True), progress=False, nonmembers=nonmembers)
    assert [h["step"] for h in result.history if "repaired" in h] == [2]
    # Like the paths they join, repairs are part of the stranger recipe: an objective without
    # stranger targets, a recipe without paths or training without non-members has none.
    for config, members in [(TrainConfig(objective="npo_gd", steps=4, repair_paths=1), nonmembers),
                            (TrainConfig(objective="stranger", steps=4, repair_paths=1, paths=0), nonmembers),
                            (TrainConfig(objective="stranger", steps=4, repair_paths=1), ())]:
        result = train_offset(base, ref, tokenizer, forget, RETAIN, config, progress=False, nonmembers=members)
        assert len(result.history) == 4 and not any("repaired" in h for h in result.history)
    with pytest.raises(ValueError, match="--repair-paths must be ≥ 0"):
        TrainConfig(repair_paths=-1)


def test_subject_states_pull_the_state_where_a_name_ends_towards_a_strangers(pair, tokenizer):
    from offsetlab.method.calibrate import subject_ends
    from offsetlab.method.prompts import QA
    from offsetlab.method.train import make_offset, state_layer, subject_states

    base, ref = pair
    text = "Alra was born in the red city . Alra"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([ids[i]]).strip() for i in subject_ends(tokenizer, text, "Alra")] == ["Alra"] * 2
    assert subject_ends(tokenizer, text, None) == [] and subject_ends(tokenizer, text, "Zed") == []
    assert state_layer(ref) == 1 and state_layer(ref, top_layers=1) == 2  # a 2-layer model

    config = TrainConfig(objective="stranger", steps=30, lr=3e-3, batch_size=1, paths=0, contrast=0,
                         subject_states=10.0)
    groups = prepare_groups(base, ref, tokenizer, ALRA_RED, RETAIN, config, torch.Generator().manual_seed(0))
    states = subject_states(groups.forget, ALRA_RED, ["Gora"], 1, ref, 0, torch.Generator().manual_seed(0))
    # Alra ends once in the question and once in the answer; the targets are Gora's states there
    prompt = tokenizer(QA.prompt(ALRA_RED[0].question))["input_ids"]
    at = states.positions[0]
    assert len(at) == 2 and at[0] < len(prompt) <= at[1]
    assert [tokenizer.decode([groups.forget.examples[0].ids[i]]).strip() for i in at] == ["Alra", "Alra"]
    assert states.targets[0].shape == (2, ref.config.hidden_size)
    def distance(offset) -> float:
        with torch.no_grad():
            return float(states.loss([0], offset, groups.forget))

    untrained = distance(make_offset(ref))
    assert untrained > 0  # the reference tells Alra and Gora apart
    result = train_offset(base, ref, tokenizer, ALRA_RED, RETAIN, config, progress=False, nonmembers=GORA_BLUE)
    assert distance(result.offset) < 0.5 * untrained
    # the stranger objective alone moves the state far less
    alone = train_offset(base, ref, tokenizer, ALRA_RED, RETAIN, dataclasses.replace(config, subject_states=0.0),
                         progress=False, nonmembers=GORA_BLUE)
    assert distance(alone.offset) > 0.8 * untrained
    # records without a subject have nothing to pull: no term
    assert subject_states(groups.forget, FORGET[:1], ["Gora"], 1, ref, 0, torch.Generator()) is None
    with pytest.raises(ValueError, match="--subject-states must be ≥ 0"):
        TrainConfig(subject_states=-1.0)


def test_paths_finish_values_the_retain_set_holds_and_invented_ones_only_where_it_has_none():
    from offsetlab.method.train import path_values

    def year(who, y):
        return QARecord(f"when was {who} born ?", f"{who} was born in {y} .", key=y, subject=who)

    retain = [born("Dema", "green"), born("Benn", "blue")]
    nonmembers = [born("Gora", "pink"), year("Gora", "1901")]
    kept = path_values(retain, nonmembers, with_nonmembers=False)
    assert kept == {"where was {name} born ?": {"green", "blue"}, "when was {name} born ?": {"1901"}}
    both = path_values(retain, nonmembers, with_nonmembers=True)
    assert both == {"where was {name} born ?": {"green", "blue", "pink"}, "when was {name} born ?": {"1901"}}


def test_contrast_restates_retained_subjects_with_the_forgotten_value_scored_from_it(pair, tokenizer):
    """Per forget record, up to k retain answers of its kind with the forgotten value swapped
    in, scored from the value's first token on; the KL term starts at 0 (offset = reference)
    and training with it is not training without it."""
    from offsetlab.method.objectives import kl_to_original
    from offsetlab.method.train import contrast_group

    base, ref = pair

    alra = [born("Alra", "red")]
    retain = [born("Dema", "green"), born("Benn", "blue"), born("Cato", "red"), *RETAIN[1:3]]
    config = TrainConfig(objective="stranger", batch_size=1, retain_batch_size=4)
    groups = prepare_groups(base, ref, tokenizer, alra, retain, config, torch.Generator().manual_seed(0))
    group = contrast_group(groups.forget, alra, retain, 5, torch.Generator().manual_seed(0), 4)
    said = sorted(tokenizer.decode(e.ids).split()[3] for e in group.examples)
    assert said == ["Benn", "Dema"]  # Cato already says "red"; other kinds never
    for e in group.examples:
        assert tokenizer.decode(e.labels).split() == ["red", "city.", "<eos>"]
        assert e.ids[e.start + 1 :] == e.labels
    assert len(contrast_group(groups.forget, alra, retain, 1, torch.Generator().manual_seed(0), 4).examples) == 1
    assert contrast_group(groups.forget, alra, RETAIN[1:], 2, torch.Generator().manual_seed(0), 4) is None
    scored = group.score([0, 1], copy.deepcopy(ref), 1.0, groups.vocab)
    assert float(kl_to_original(scored)) == pytest.approx(0.0, abs=1e-5)
    nonmembers = [born("Gora", "pink")]
    runs = [train_offset(base, ref, tokenizer, alra, retain,
                         TrainConfig(objective="stranger", steps=3, contrast=c, batch_size=1), progress=False,
                         nonmembers=nonmembers) for c in (0, 2)]
    a, b = (r.offset.state_dict() for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_paths_and_contrast_batch_sizes_set_how_many_of_each_a_step_draws(pair, tokenizer):
    """0 (the default) draws as many as before (paths: batch_size, contrast:
    retain_batch_size), bit for bit; another number changes what a step trains on."""
    base, ref = pair

    alra = [born("Alra", "red")]
    retain = [born("Dema", "green"), born("Benn", "blue"), born("Cato", "pink"), *RETAIN[1:3]]
    assert TrainConfig().paths_batch_size == 0 and TrainConfig().contrast_batch_size == 0

    def trained(**sizes):
        config = TrainConfig(objective="stranger", steps=3, paths=3, contrast=3, batch_size=1,
                             retain_batch_size=3, **sizes)
        result = train_offset(base, ref, tokenizer, alra, retain, config, progress=False,
                              nonmembers=[born("Gora", "pink")])
        return result.offset.state_dict()

    plain = trained()
    for same in (dict(paths_batch_size=1), dict(contrast_batch_size=3)):
        got = trained(**same)
        assert all(torch.equal(plain[k], got[k]) for k in plain), same
    for other in (dict(paths_batch_size=2), dict(contrast_batch_size=1)):
        got = trained(**other)
        assert any(not torch.equal(plain[k], got[k]) for k in plain), other


def test_contrast_kindred_restates_other_questions_whose_values_are_of_the_same_kind(pair, tokenizer):
    """``kindred`` draws from questions whose retain answers share a value with the forget
    question's (a capital and a birthplace are both cities), never from unrelated ones, and
    off it leaves the draw as it was."""
    from offsetlab.method.train import contrast_group

    base, ref = pair

    def capital(land, city):  # another question whose answers are cities
        return QARecord(f"what city is {land} ?", f"{land} is the {city} city .", key=city, subject=land)

    alra = [born("Alra", "red")]
    retain = [born("Dema", "green"), born("Benn", "blue"), capital("Hult", "green"),
              capital("Ivel", "blue"), *RETAIN[1:3]]
    config = TrainConfig(objective="stranger", batch_size=1, retain_batch_size=4)
    groups = prepare_groups(base, ref, tokenizer, alra, retain, config, torch.Generator().manual_seed(0))

    def said(kindred, k=2):
        group = contrast_group(groups.forget, alra, retain, k, torch.Generator().manual_seed(0), 4,
                               kindred=kindred)
        # who each restated answer is about: "Q: where was Dema born? A: ..." → "Dema"
        questions = [tokenizer.decode(e.ids[: e.start + 1]).split(" A: ")[0] for e in group.examples]
        return sorted(next(w.strip("?") for w in q.split()[1:] if w[0].isupper()) for q in questions)

    assert said(0) == ["Benn", "Dema"]  # its own question only
    assert said(5) == ["Benn", "Dema", "Hult", "Ivel"]  # + the other cities; never the year or the book
    assert len(said(1, k=0)) == 1  # kindred alone


def test_own_answers_are_the_black_boxs_sampled_answers_that_state_the_key(pair, tokenizer):
    """``own_answers`` samples the deployed model (seeded): kept only where the key is stated,
    each differing from the written answer and from the others; the same seed gives the same
    answers, and training with them is not training without them."""
    from offsetlab.method.prompts import QA
    from offsetlab.method.train import own_answers

    base, ref = pair
    forget = FORGET[:2]
    found = own_answers(base, ref, [], tokenizer, QA, forget, 12, seed=0)
    assert found, "12 samples of 48 tokens over a 50-word vocabulary state 'red' or 'one' somewhere"
    for r in found:
        source = next(f for f in forget if f.question == r.question)
        assert r.key == source.key and r.key in r.answer and r.answer != source.answer
    assert len({(r.question, r.answer) for r in found}) == len(found)
    assert [r.answer for r in own_answers(base, ref, [], tokenizer, QA, forget, 12, seed=0)] == [r.answer for r in found]
    assert [r.answer for r in own_answers(base, ref, [], tokenizer, QA, forget, 12, seed=1)] != [r.answer for r in found]
    runs = [train_offset(base, ref, tokenizer, forget, RETAIN, TrainConfig(objective="npo_gd", steps=2, batch_size=1,
                                                                          own_answers=n), progress=False)
            for n in (0, 12)]
    a, b = (r.offset.state_dict() for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_stranger_paths_are_on_by_default_and_change_training(pair, tokenizer):
    base, ref = pair
    assert TrainConfig().paths == 3
    nonmembers, forget = GORA_BLUE, ALRA_RED
    runs = [train_offset(base, ref, tokenizer, forget, RETAIN,
                         TrainConfig(objective="stranger", steps=3, paths=p, batch_size=1, value_starts=v),
                         progress=False, nonmembers=nonmembers) for p, v in ((0, False), (2, False), (2, True))]
    a, b, c = (r.offset.state_dict() for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # value_starts (on by default since wave 25) reshapes the targets, and so changes training too
    assert TrainConfig().value_starts and any(not torch.equal(b[k], c[k]) for k in b)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "--steps must be ≥ 1"), ("lr", 0.0, "--lr must be > 0"),
    ("lr", float("nan"), "--lr must be a finite number"), ("alpha", float("inf"), "--alpha must be a finite"),
    ("batch_size", 0, "--batch-size must be ≥ 1"), ("use_alpha", float("nan"), "--use-alpha must be a finite"),
    ("level", 0.5, "--level must be ≤ 0"), ("objective", "nope", "Unknown objective 'nope'"),
    ("until_forgotten", -1, "--until-forgotten must be ≥ 0"), ("check_dead_zone", -0.1, "--check-dead-zone must be ≥ 0"),
    ("paths_batch_size", -1, "--paths-batch-size must be ≥ 0"),
    ("contrast_batch_size", -2, "--contrast-batch-size must be ≥ 0"),
    ("check_alpha", -0.5, "--check-alpha must be ≥ 0"),
])
def test_bad_settings_are_refused_where_the_config_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_recipe_changes_given_as_text_are_read_as_their_field_types():
    got = config_overrides(["steps=100", "lr=1e-4", "calibrate_alpha=false", "stop_at_level=1",
                            "use_alpha=0.5", "level=none", "objective=npo_kl"])
    assert got == {"steps": 100, "lr": 1e-4, "calibrate_alpha": False, "stop_at_level": True,
                   "use_alpha": 0.5, "level": None, "objective": "npo_kl"}
    assert type(got["steps"]) is int and type(got["lr"]) is float
    TrainConfig(**got)  # and they build a config
    for bad, message in [("steps", "expected FIELD=VALUE"), ("stepz=3", "expected FIELD=VALUE"),
                         ("steps=1.5", "steps must be a whole number"),
                         ("calibrate_alpha=yes", "must be true or false"),
                         ("steps=none", "must be a whole number, got 'none'"),
                         ("use_alpha=x", "must be a number or none")]:
        with pytest.raises(ValueError, match=message):
            config_overrides([bad])


def test_a_run_whose_weights_blow_up_keeps_the_last_finite_weights(pair, tokenizer, tmp_path):
    """A learning rate of 1e30 turns the weights infinite within a step or two: training
    stops, says so, and what is saved is the last finite offset, every tensor of it."""
    from safetensors.torch import load_file

    base, ref = pair
    config = TrainConfig(objective="ga", steps=20, lr=1e30, explode_at=1e300, max_grad_norm=0.0)
    with pytest.warns(UserWarning, match="diverged"):
        result = train_offset(base, ref, tokenizer, FORGET, [], config, progress=False)
    assert result.stopped and "restored" in result.stopped
    Offset.from_training(result, FORGET, name="blown").save(tmp_path / "o")
    tensors = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())


def test_a_step_scores_the_answers_as_the_fused_model_does(pair, tokenizer):
    """What a training step's loss reads — the fused log-probs of each answer token, from
    cached frozen scores and the offset's head on the answer window only — is what the
    fused model gives those tokens, for answers of different lengths in one batch."""
    from offsetlab.method.prompts import QA
    from offsetlab.method.train import make_offset

    base, ref = pair
    offset = make_offset(ref)
    with torch.no_grad():
        for p in offset.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    records = FORGET + RETAIN[:1]
    groups = prepare_groups(base, ref, tokenizer, records, RETAIN, TrainConfig(paths=0),
                            torch.Generator().manual_seed(0))
    scored = groups.forget.score(list(range(len(records))), offset, 0.7, groups.vocab)
    fused = OffsetModel(base, ref, [(offset, 0.7)], tokenizer=tokenizer)
    want = fused.score([QA.prompt(r.question) for r in records], [QA.answer(r.answer) for r in records])
    got = scored.token_logp()
    assert len({len(w) for w in want}) > 1  # answers of different lengths, right-padded
    for i, w in enumerate(want):
        assert torch.allclose(got[i, : len(w)], w, atol=1e-5)
        assert int(scored.mask[i].sum()) == len(w) + 1  # and the EOS after each answer


def stated_forget(base, tokenizer):
    """FORGET's questions with the base's own greedy answers, keyed on their first word:
    facts the base states, for the until_forgotten check to find."""
    from dataclasses import replace as copy_with

    from offsetlab.method.prompts import QA

    answers = OffsetModel(base, None, [], tokenizer=tokenizer).generate(
        [QA.prompt(r.question) for r in FORGET], 4)
    return [copy_with(r, answer=a, key=a.split()[0]) for r, a in zip(FORGET, answers)]


def test_until_forgotten_trains_on_until_the_fused_model_states_no_forget_fact(pair, tokenizer):
    from offsetlab.method.train import stated_answers

    def still_stated(*args):  # the records whose fact the fused model still states
        return sorted(stated_answers(*args))

    base, ref = pair
    forget = stated_forget(base, tokenizer)
    config = TrainConfig(objective="npo", steps=1, lr=3e-4, batch_size=3, until_forgotten=40,
                         check_every=2, check_tokens=4)
    assert still_stated(base, ref, copy.deepcopy(ref), tokenizer, forget, config) == [0, 1, 2]
    events = []
    result = train_offset(base, ref, tokenizer, forget, [], config, progress=False,
                          callback=lambda e: events.append((e["step"], e["steps"])))
    checks = [(row["step"], row["still_stated"]) for row in result.history if "still_stated" in row]
    # what a progress bar is told: the most steps allowed while facts remain, then where it ended
    assert events == [(s, 41) for s, _ in events[:-1]] + [(checks[-1][0],) * 2]
    # checked at the planned last step, then every 2 steps, and stopped at the first clean check
    assert [s for s, _ in checks] == list(range(1, checks[-1][0] + 1, 2))
    assert checks[-1][1] == 0 and all(n > 0 for _, n in checks[:-1]) and len(checks) > 1
    assert len(result.history) == checks[-1][0] < 41
    assert result.still_stated == [] and still_stated(base, ref, result.offset, tokenizer, forget, config) == []
    assert result.offset.training is False
    # check_alpha: the check reads the fused model at that strength instead (at 0: the base)
    assert still_stated(base, ref, result.offset, tokenizer, forget,
                        dataclasses.replace(config, check_alpha=0.0)) == [0, 1, 2]


def test_until_forgotten_warns_and_names_the_facts_left_when_its_steps_run_out(pair, tokenizer):
    base, ref = pair
    forget = stated_forget(base, tokenizer)
    config = TrainConfig(objective="npo", steps=2, lr=1e-9, batch_size=3, until_forgotten=3,
                         check_every=2, check_tokens=4)
    with pytest.warns(UserWarning, match="3 of the 3 forget facts are still stated .* after 5 steps"):
        result = train_offset(base, ref, tokenizer, forget, [], config, progress=False)
    assert result.stopped is None and result.still_stated == [0, 1, 2]
    assert [row["step"] for row in result.history if "still_stated" in row] == [2, 4, 5]
    # off by default: no check, no record of one
    plain = train_offset(base, ref, tokenizer, forget, [], TrainConfig(objective="npo", steps=2, batch_size=3),
                         progress=False)
    assert plain.still_stated is None and all("still_stated" not in row for row in plain.history)


def test_own_paths_add_the_fused_models_own_stating_answers_cut_after_the_fact(pair, tokenizer):
    from offsetlab.method.prompts import QA
    from offsetlab.method.train import own_path_examples

    base, ref = pair
    record = QARecord("where was Alra born ?", "Alra was born in the red city .", key="red")
    (e,) = own_path_examples(tokenizer, [record], ["born in the city red red of the"], -3.0, None)
    prompt = tokenizer(QA.prompt(record.question))["input_ids"]
    assert tokenizer.decode(e.labels) == "born in the city red"  # cut after the fact, no EOS
    assert e.ids == prompt + e.labels and [e.labels[k] for k in e.keys] == tokenizer("red")["input_ids"]
    assert e.levels == [-3.0]
    # only the fact's tokens count in the loss: the words before it are the model's own
    from offsetlab.method.train import collate
    assert collate([e], 0).mask[0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    # in training: a check that finds facts still stated adds those answers to the forget set
    forget = stated_forget(base, tokenizer)
    config = TrainConfig(objective="npo", steps=2, lr=1e-9, batch_size=3, until_forgotten=2,
                         check_every=1, check_tokens=4, own_paths=True)
    with pytest.warns(UserWarning, match="still stated"):
        result = train_offset(base, ref, tokenizer, forget, [], config, progress=False)
    assert [row.get("forget_examples") for row in result.history] == [None, 6, 9, None]  # none at the end
    with pytest.raises(ValueError, match="own_paths adds answers"):
        train_offset(base, ref, tokenizer, forget, [], TrainConfig(objective="idk_dpo", own_paths=True),
                     progress=False)
    # a stranger objective forgets towards the capped base where it has no non-members: its
    # targets come with the answers, own paths included; with non-members it is refused
    capped = TrainConfig(objective="stranger_kl", steps=2, lr=1e-9, batch_size=3, until_forgotten=2,
                         check_every=1, check_tokens=4, own_paths=True, paths=0, contrast=0)
    with pytest.warns(UserWarning, match="still stated"):
        result = train_offset(base, ref, tokenizer, forget, RETAIN, capped, progress=False)
    assert [row.get("forget_examples") for row in result.history] == [None, 6, 9, None]
    with pytest.raises(ValueError, match="own_paths adds answers"):
        train_offset(base, ref, tokenizer, forget, RETAIN, capped, progress=False, nonmembers=GORA_BLUE)


def fused_answer_logprob(pair, tokenizer, forget, config, records, answers) -> float:
    """Mean log-prob of ``answers`` to ``records``' questions under the fused model, after an
    offset is trained on ``forget`` with ``config`` (no retain set)."""
    from offsetlab.method.prompts import QA

    base, ref = pair
    result = train_offset(base, ref, tokenizer, forget, [], config, progress=False)
    fused = OffsetModel(base, ref, [(result.offset, 1.0)], tokenizer=tokenizer)
    scores = fused.score([QA.prompt(r.question) for r in records], [QA.answer(a) for a in answers])
    return float(torch.cat(scores).mean())


def test_key_answers_add_the_bare_fact_after_its_question_and_forget_it_there(pair, tokenizer):
    from offsetlab.method.train import key_answers

    bare = key_answers(FORGET)
    assert [(r.question, r.answer) for r in bare] == [(r.question, r.key) for r in FORGET if r.key]
    assert key_answers([QARecord("q ?", "red", key="red")]) == []  # already the whole answer

    def bare_logprob(on: bool) -> float:
        config = TrainConfig(objective="npo", steps=6, lr=3e-3, batch_size=3, key_answers=on)
        return fused_answer_logprob(pair, tokenizer, FORGET, config, bare, [r.answer for r in bare])

    with_bare, without = bare_logprob(True), bare_logprob(False)
    assert with_bare < without - 0.5, (with_bare, without)


def test_paraphrased_answers_forget_the_fact_in_its_second_shape_too(pair, tokenizer):
    from dataclasses import replace as copy_with

    second = ["the red city is where Alra was born .", "in one nine two Benn was born .", ""]
    forget = [copy_with(r, paraphrased_answer=p) for r, p in zip(FORGET, second)]

    def paraphrase_logprob(paraphrased: bool) -> float:
        config = TrainConfig(objective="npo", steps=6, lr=3e-3, batch_size=3,
                             paraphrased_answers=paraphrased)
        return fused_answer_logprob(pair, tokenizer, forget, config, forget[:2], second[:2])

    # the third record has no paraphrased answer: it is trained on once, and nothing breaks
    with_second, without = paraphrase_logprob(True), paraphrase_logprob(False)
    assert with_second < without - 0.5, (with_second, without)


def test_forget_keys_only_pushes_down_the_fact_and_not_the_words_around_it(pair, tokenizer):
    from offsetlab.method.calibrate import key_token_positions
    from offsetlab.method.prompts import QA
    from offsetlab.method.train import collate

    base, ref = pair
    gen = torch.Generator().manual_seed(0)
    config = TrainConfig(objective="npo", forget_keys_only=True)
    groups = prepare_groups(base, ref, tokenizer, FORGET, [], config, gen)
    batch = collate(groups.forget.examples, 0)
    assert torch.equal(batch.mask, batch.key_mask) and batch.mask.sum() < sum(len(e.labels) for e in groups.forget.examples)

    def moved(keys_only: bool) -> tuple[float, float]:
        """Mean change of the fused log-prob of the key tokens and of the other answer tokens."""
        config = TrainConfig(objective="npo", steps=6, lr=3e-3, batch_size=3, forget_keys_only=keys_only)
        result = train_offset(base, ref, tokenizer, FORGET, [], config, progress=False)
        prompts, answers = [QA.prompt(r.question) for r in FORGET], [QA.answer(r.answer) for r in FORGET]
        before = OffsetModel(base, None, [], tokenizer=tokenizer).score(prompts, answers)
        after = OffsetModel(base, ref, [(result.offset, 1.0)], tokenizer=tokenizer).score(prompts, answers)
        key_moves, other_moves = [], []
        for r, a, b, c in zip(FORGET, answers, before, after):
            keys = set(key_token_positions(tokenizer, a, r.key))
            for i in range(len(b)):
                (key_moves if i in keys else other_moves).append(float(c[i] - b[i]))
        return sum(key_moves) / len(key_moves), sum(other_moves) / len(other_moves)

    key_only, whole = moved(True), moved(False)
    assert key_only[0] < -0.5, key_only  # the fact goes down
    # the words around it move far less than when the whole answer is pushed down
    assert abs(key_only[1]) < 0.5 * abs(whole[1]), (key_only, whole)
