import copy
import math

import pytest
import torch
from conftest import make_model, make_tokenizer

from offsetlab.method.fusion import OffsetModel, VocabularyMismatch, fuse
from offsetlab.method.trace import Trace

PROMPTS = ["Q: where was Alra born ? A:", "Q: who wrote the book ? A:", "Q: what year ? A:"]


def test_hand_computed_fusion():
    # base p = (1/2, 1/4, 1/4), reference uniform, offset (0.2, 0.2, 0.6), α = 1:
    # p ∝ base · offset / reference = (0.3, 0.15, 0.45)/… → normalised (1/3, 1/6, 1/2).
    base = torch.tensor([0.5, 0.25, 0.25]).log()
    ref = torch.full((3,), 1 / 3).log()
    off = torch.tensor([0.2, 0.2, 0.6]).log()
    fused = fuse(base, ref, [off], [1.0]).exp()
    assert torch.allclose(fused, torch.tensor([1 / 3, 1 / 6, 1 / 2]), atol=1e-6)
    # α = 2 squares the ratio: (0.5·0.36, 0.25·0.36, 0.25·3.24)·9 → ∝ (0.18, 0.09, 0.81)
    fused2 = fuse(base, ref, [off], [2.0]).exp()
    assert torch.allclose(fused2, torch.tensor([0.18, 0.09, 0.81]) / 1.08, atol=1e-6)


def test_logits_and_logprobs_give_the_same_fusion():
    torch.manual_seed(0)
    b, r, o = torch.randn(3, 11)
    from_logits = fuse(b, r, [o], [0.7])
    from_logprobs = fuse(b.log_softmax(-1), r.log_softmax(-1), [o.log_softmax(-1)], [0.7])
    assert torch.allclose(from_logits, from_logprobs, atol=1e-5)


@pytest.mark.parametrize("how", ["alpha0", "identical_offset"])
def test_neutral_offset_gives_the_base_model(tiny_trio, tokenizer, how):
    base, ref, off = tiny_trio
    if how == "alpha0":
        fused_model = OffsetModel(base, ref, [(off, 0.0)], tokenizer=tokenizer)
    else:
        fused_model = OffsetModel(base, ref, [(copy.deepcopy(ref), 1.0)], tokenizer=tokenizer)
    plain = OffsetModel(base, ref, [], tokenizer=tokenizer)

    step = fused_model.step(PROMPTS)
    assert torch.allclose(step.fused, step.base, atol=1e-5)

    conts = [" red green", " the book of", " one"]
    for a, b in zip(fused_model.score(PROMPTS, conts), plain.score(PROMPTS, conts)):
        assert torch.allclose(a, b, atol=1e-5)

    assert fused_model.generate(PROMPTS, max_new_tokens=8) == plain.generate(PROMPTS, max_new_tokens=8)


def test_an_offset_changes_the_distribution(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    parts = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer).step(PROMPTS)
    assert (parts.fused - parts.base).abs().max() > 0.1
    # The fused distribution is a distribution.
    assert torch.allclose(parts.fused.exp().sum(-1), torch.ones(len(PROMPTS)), atol=1e-5)
    # And it is exactly the formula applied to the parts.
    assert torch.allclose(parts.fused, fuse(parts.base, parts.reference, parts.offsets, [1.0]))


def test_cached_generation_matches_recomputation(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 0.8)], tokenizer=tokenizer)
    cached = model.generate(PROMPTS, max_new_tokens=10, trace=True)
    fresh = model.generate(PROMPTS, max_new_tokens=10, trace=True, use_cache=False)
    for a, b in zip(cached, fresh):
        assert [s.token_id for s in a.steps] == [s.token_id for s in b.steps]
        assert len(a.steps) >= 2
        for sa, sb in zip(a.steps, b.steps):
            assert sa.candidates == sb.candidates
            assert sa.fused == pytest.approx(sb.fused, abs=1e-4)
            assert sa.base == pytest.approx(sb.base, abs=1e-4)


def test_batched_generation_equals_one_by_one(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer)
    batched = model.generate(PROMPTS, max_new_tokens=10, trace=True)
    for prompt, together in zip(PROMPTS, batched):
        alone = model.generate(prompt, max_new_tokens=10, trace=True)
        assert [s.token_id for s in alone.steps] == [s.token_id for s in together.steps]
        for sa, sb in zip(alone.steps, together.steps):
            assert sa.fused == pytest.approx(sb.fused, abs=1e-4)


class CountdownSource:
    """A real source (the protocol, not a mock): prefers word ``red``, then EOS at step 3."""

    def __init__(self, tokenizer, eos_at: int = 3):
        self.tokenizer, self.vocab_size, self.eos_at = tokenizer, len(tokenizer), eos_at

    def _row(self, batch: int) -> torch.Tensor:
        favourite = self.tokenizer.eos_token_id if self.steps >= self.eos_at else self.tokenizer.convert_tokens_to_ids("red")
        logits = torch.zeros(batch, self.vocab_size)
        logits[:, favourite] = 20.0
        return logits.log_softmax(-1)

    def begin(self, input_ids, attention_mask):
        self.steps = 0
        return self._row(len(input_ids))

    def advance(self, next_ids):
        self.steps += 1
        return self._row(len(next_ids))

    def score(self, input_ids, attention_mask):
        raise NotImplementedError


def test_generation_stops_at_eos(tokenizer):
    ref = make_model(len(tokenizer), 1)
    model = OffsetModel(CountdownSource(tokenizer), ref, [], tokenizer=tokenizer)
    traces = model.generate(PROMPTS[:2], max_new_tokens=10, trace=True)
    for t in traces:
        assert [s.token for s in t.steps] == ["red", "red", "red", "<eos>"]
        assert t.text == "red red red"  # EOS is not part of the answer text
    # and max_new_tokens caps a row that never ends
    assert model.generate(PROMPTS[0], max_new_tokens=2) == "red red"


class StaggeredSource(CountdownSource):
    """Row i says ``red`` i + 1 times, then EOS: the rows of one batch finish at different steps."""

    def _row(self, batch: int) -> torch.Tensor:
        logits = torch.zeros(batch, self.vocab_size)
        logits[:, self.tokenizer.convert_tokens_to_ids("red")] = 3.0 + torch.arange(batch)
        logits[torch.arange(batch) <= self.steps - 1, self.tokenizer.eos_token_id] = 30.0
        return logits.log_softmax(-1)


@pytest.mark.parametrize("source", ["trio", "staggered"])
def test_answer_gives_the_traced_texts_and_entropies(tiny_trio, tokenizer, source):
    # evaluate() reads answers and their mean fused entropy through answer(), the batched
    # path; it must say exactly what the per-row traces say, rows that finish early included.
    base, ref, off = tiny_trio
    if source == "staggered":
        base, ref = StaggeredSource(tokenizer), make_model(len(tokenizer), 1)
    model = OffsetModel(base, ref, [(off, 0.7)], tokenizer=tokenizer)
    traces = model.generate(PROMPTS, max_new_tokens=8, trace=True)
    texts, entropies = model.answer(PROMPTS, max_new_tokens=8)
    assert texts == [t.text for t in traces]
    expected = [sum(s.entropy_fused for s in t.steps) / len(t.steps) for t in traces]
    assert entropies == pytest.approx(expected, abs=1e-5)
    if source == "staggered":
        assert [len(t.steps) for t in traces] == [2, 3, 4]  # i + 1 reds, then EOS
    assert model.answer([], 4) == ([], [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.answer(PROMPTS, max_new_tokens=0)


def test_seeded_sampling_is_reproducible(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer)
    kw = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=20, top_p=0.95)
    first = model.generate(PROMPTS, seed=123, **kw)
    assert first == model.generate(PROMPTS, seed=123, **kw)
    others = {tuple(model.generate(PROMPTS, seed=s, **kw)) for s in range(5)}
    assert len(others) > 1  # different seeds do give different samples


def test_mismatched_tokenizers_are_refused(tiny_trio, tokenizer):
    from offsetlab.method.sources import HFSource

    base, ref, _ = tiny_trio
    shuffled = make_tokenizer(list(reversed(tokenizer.convert_ids_to_tokens(range(3, len(tokenizer))))))
    with pytest.raises(VocabularyMismatch, match="disagree on .* token ids .*id 3"):
        OffsetModel(HFSource(base, shuffled), ref, [], tokenizer=tokenizer)


def test_padded_embeddings_use_the_common_range(tokenizer):
    v = len(tokenizer)
    base = make_model(v, 0, pad_to=v + 13)  # like a hub model padded to a multiple of 64
    ref, off = make_model(v, 1), make_model(v, 2, pad_to=v + 5)
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer)
    parts = model.step(PROMPTS)
    assert parts.fused.shape == (len(PROMPTS), v)
    assert torch.allclose(parts.base.exp().sum(-1), torch.ones(len(PROMPTS)), atol=1e-5)


def test_trace_contents_and_round_trip(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, offset_names=["forget-A"])
    trace = model.generate(PROMPTS[0], max_new_tokens=6, trace=True, trace_top_k=4)
    assert trace.text == model.generate(PROMPTS[0], max_new_tokens=6)
    for s in trace.steps:
        assert s.token_id in s.candidates and 4 <= len(s.candidates) <= 9
        j = s.chosen
        assert s.shift == pytest.approx(s.fused[j] - s.base[j], abs=1e-5)
        assert s.delta[j] == pytest.approx(s.offsets[0][j] - s.reference[j], abs=1e-5)
        assert s.kl >= -1e-6 and s.entropy_base >= 0
        # entropy of a distribution over |V| tokens is at most log |V|
        assert s.entropy_fused <= math.log(len(tokenizer)) + 1e-5
    again = Trace.from_json(trace.to_json())
    assert again == trace
    frame = trace.to_frame()
    assert len(frame) == sum(len(s.candidates) for s in trace.steps)
    assert {"base", "fused", "delta", "offset:forget-A", "is_chosen"} <= set(frame.columns)
    assert frame["is_chosen"].sum() == len(trace.steps)


def test_step_on_token_ids_matches_the_generated_prefix(tiny_trio, tokenizer):
    """step() on prompt + generated ids gives the distribution generation chose from."""
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer)
    trace = model.generate(PROMPTS[0], max_new_tokens=4, trace=True)
    prompt_ids = model.encode([PROMPTS[0]])[0]
    chosen = [s.token_id for s in trace.steps]
    rows = [prompt_ids + chosen[:t] for t in range(len(chosen))]
    parts = model.step(rows)
    assert parts.fused.argmax(-1).tolist() == chosen
    assert torch.allclose(model.step([prompt_ids]).fused, model.step(PROMPTS[0]).fused, atol=1e-5)
    with pytest.raises(TypeError, match="not a mix"):
        model.step([PROMPTS[0], prompt_ids])


def test_a_fused_model_is_a_source_to_stack_offsets_on(tiny_trio, tokenizer):
    """base + A as a black box, plus B, is the same model as base + A + B."""
    base, ref, off = tiny_trio
    other = make_model(len(tokenizer), 7)
    both = OffsetModel(base, ref, [(off, 1.0), (other, 0.5)], tokenizer=tokenizer)
    deployed = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer).as_source()
    stacked = OffsetModel(deployed, ref, [(other, 0.5)], tokenizer=tokenizer)
    assert torch.allclose(stacked.step(PROMPTS).fused, both.step(PROMPTS).fused, atol=1e-5)
    for a, b in zip(stacked.score(PROMPTS, [" one two"] * 3), both.score(PROMPTS, [" one two"] * 3)):
        assert torch.allclose(a, b, atol=1e-5)
    assert stacked.generate(PROMPTS, max_new_tokens=5) == both.generate(PROMPTS, max_new_tokens=5)
    same = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer).as_source().fingerprint()
    weaker = OffsetModel(base, ref, [(off, 0.5)], tokenizer=tokenizer).as_source().fingerprint()
    assert deployed.fingerprint() == same != weaker and same.kind == "stack"
    assert same.root().same_model(weaker.root())  # one base under both stacks


def test_decoding_options_are_checked_where_generate_is_called(tiny_trio, tokenizer):
    base, ref, off = tiny_trio
    model = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer)
    for options, message in [({"max_new_tokens": 0}, "max_new_tokens"),
                             ({"do_sample": True, "temperature": float("nan")}, "temperature"),
                             ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
                             ({"top_p": 0.0}, "top_p"), ({"top_p": float("nan")}, "top_p")]:
        with pytest.raises(ValueError, match=message):
            model.generate(PROMPTS[0], **options)
    assert isinstance(model.generate(PROMPTS[0], max_new_tokens=2, do_sample=True, top_k=3,
                                     top_p=0.5, seed=1), str)


@pytest.mark.parametrize("candidates", [0, 5])
def test_a_dead_zone_gives_the_base_where_the_offset_moves_it_little(tiny_trio, tokenizer, candidates):
    base, ref, off = tiny_trio
    conts = [" red green blue", " the book of the", " one two"]
    plain = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, candidates=candidates)
    parts = plain.score(PROMPTS, conts, parts=True)
    kls = [(p.fused.exp() * (p.fused - p.base)).sum(-1) for p in parts]
    tau = float(torch.cat(kls).median())  # half the positions on each side
    zoned = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, candidates=candidates,
                        dead_zone=tau)
    quiet = loud = 0
    for p, z, kl in zip(parts, zoned.score(PROMPTS, conts, parts=True), kls, strict=True):
        still = kl < tau
        assert torch.allclose(z.fused[still], p.base[still], atol=1e-5)
        assert torch.allclose(z.fused[~still], p.fused[~still], atol=1e-5)
        quiet, loud = quiet + int(still.sum()), loud + int((~still).sum())
    assert quiet > 0 and loud > 0
    # the α sweep reads the same fusion
    for a, b in zip(zoned.score_alphas(PROMPTS, conts, [1.0])[0], zoned.score(PROMPTS, conts)):
        assert torch.allclose(a, b, atol=1e-5)
    # a dead zone wider than any move leaves the base itself, in decoding too
    silent = OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, candidates=candidates,
                         dead_zone=1e9)
    alone = OffsetModel(base, None, [], tokenizer=tokenizer)
    assert silent.generate(PROMPTS, max_new_tokens=8) == alone.generate(PROMPTS, max_new_tokens=8)
    assert plain.generate(PROMPTS, max_new_tokens=8) != alone.generate(PROMPTS, max_new_tokens=8)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), True, "0.3"])
def test_a_dead_zone_must_be_a_number_of_nats(tiny_trio, tokenizer, bad):
    base, ref, off = tiny_trio
    with pytest.raises(ValueError, match="dead_zone"):
        OffsetModel(base, ref, [(off, 1.0)], tokenizer=tokenizer, dead_zone=bad)
