"""The shared-trunk twin gives the two-model fusion's numbers, for less work."""

import copy

import pytest
import torch
from conftest import make_model

from offsetlab.method.fusion import OffsetModel
from offsetlab.method.train import TrainConfig, make_offset, train_offset
from offsetlab.method.twin import NotShareable, shared_depth
from offsetlab.offsets.artifact import Offset

PROMPTS = ["Q: where was Alra born ? A:", "Q: who wrote the book ? A:", "Q: what year ? A: one"]
CONTINUATIONS = [" Alra was born in the red city .", " Cato wrote the book", " two three"]


def trained_like(reference, seed: int, lora_rank: int = 0, top_layers: int = 2):
    """An offset as training leaves it: the trainable weights moved, the rest untouched."""
    offset = make_offset(reference, lora_rank, top_layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in offset.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return offset.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=["untied", "tied"])
def models(request, tokenizer):
    """A base, a 4-layer reference and two offsets: full copy trained on its top 2 layers,
    LoRA on its top layer (the toy world's and SmolLM2's twins tie their heads)."""
    v, tied = len(tokenizer), request.param == "tied"
    reference = make_model(v, 1, layers=4, tied=tied)
    return (make_model(v, 0, hidden=48), reference,
            trained_like(reference, 5), trained_like(reference, 6, lora_rank=4, top_layers=1))


def both_ways(base, reference, offsets, tokenizer):
    make = lambda shared: OffsetModel(base, reference, offsets, tokenizer=tokenizer,  # noqa: E731
                                      shared_trunk=shared)
    return make(True), make(False)


@pytest.mark.parametrize("which", ["full", "lora", "both"])
def test_the_twin_gives_the_two_model_fusion(models, tokenizer, which):
    base, reference, full, lora = models
    offsets = {"full": [(full, 1.0)], "lora": [(lora, 0.7)], "both": [(full, 1.0), (lora, -0.5)]}[which]
    twin, separate = both_ways(base, reference, offsets, tokenizer)
    assert twin.twin is not None and separate.twin is None
    assert twin.twin.depth == (3 if which == "lora" else 2)

    a, b = twin.step(PROMPTS), separate.step(PROMPTS)
    assert torch.allclose(a.fused, b.fused, atol=1e-5)
    assert (b.fused - b.base).abs().max() > 0.1  # the offsets do move the distribution

    for x, y in zip(twin.score(PROMPTS, CONTINUATIONS), separate.score(PROMPTS, CONTINUATIONS)):
        assert torch.allclose(x, y, atol=1e-5)

    # Decoding, cached and not, batched, with the per-model log-probs a trace shows.
    assert twin.generate(PROMPTS, max_new_tokens=8) == separate.generate(PROMPTS, max_new_tokens=8)
    assert (twin.generate(PROMPTS, max_new_tokens=8, use_cache=False)
            == separate.generate(PROMPTS, max_new_tokens=8))
    ta = twin.generate(PROMPTS[0], max_new_tokens=6, trace=True)
    tb = separate.generate(PROMPTS[0], max_new_tokens=6, trace=True)
    assert [s.token_id for s in ta.steps] == [s.token_id for s in tb.steps]
    for sa, sb in zip(ta.steps, tb.steps):
        assert sa.candidates == sb.candidates
        for got, want in [(sa.fused, sb.fused), (sa.reference, sb.reference), (sa.base, sb.base),
                          *zip(sa.offsets, sb.offsets)]:
            assert got == pytest.approx(want, abs=1e-5)


def test_offsets_that_changed_more_than_their_top_layers_are_fused_as_two_models(models, tokenizer):
    base, reference, full, _ = models
    whole = trained_like(reference, 7, top_layers=0)  # every weight moved, embeddings too
    auto = OffsetModel(base, reference, [(whole, 1.0)], tokenizer=tokenizer)
    assert auto.twin is None
    with pytest.raises(NotShareable, match="embed_tokens"):
        OffsetModel(base, reference, [(whole, 1.0)], tokenizer=tokenizer, shared_trunk=True)
    # An offset whose lowest layer moved shares no layer, but still the embeddings and head.
    low = copy.deepcopy(full)
    with torch.no_grad():
        next(low.model.layers[0].parameters()).add_(0.1)
    assert shared_depth(reference, [low]) == 0 and shared_depth(reference, [full]) == 2
    assert shared_depth(reference, [full, low]) == 0
    twin, separate = both_ways(base, reference, [(full, 1.0), (low, 1.0)], tokenizer)
    assert torch.allclose(twin.step(PROMPTS).fused, separate.step(PROMPTS).fused, atol=1e-5)


def test_training_top_layers_leaves_a_shareable_offset(tokenizer, tmp_path):
    from test_train import FORGET, RETAIN

    v = len(tokenizer)
    base, reference = make_model(v, 0, hidden=48), make_model(v, 1, layers=3, tied=True)
    config = TrainConfig(steps=4, lr=1e-2, top_layers=1, paths=0)
    result = train_offset(base, reference, tokenizer, FORGET, RETAIN, config, progress=False)
    assert shared_depth(reference, [result.offset]) == 2
    trained = [n for n, p in result.offset.named_parameters()
               if not torch.equal(p, reference.get_parameter(n))]
    assert trained and all(n.startswith("model.layers.2.") for n in trained)

    # Saved and loaded, it is still a top-layer offset, fused the same both ways.
    folder = Offset.from_training(result, FORGET).save(tmp_path / "top1")
    loaded = Offset.load(folder, reference, tokenizer)
    twin, separate = both_ways(base, reference, [(loaded.model, 1.0)], tokenizer)
    assert twin.twin.depth == 2
    assert torch.allclose(twin.step(PROMPTS).fused, separate.step(PROMPTS).fused, atol=1e-5)
    with pytest.raises(ValueError, match="top-layers 4 is more than"):
        make_offset(reference, 0, 4)


@pytest.mark.parametrize("shared", [True, False])
def test_scoring_at_many_strengths_equals_scoring_at_each(models, tokenizer, shared):
    """The α sweep runs the models once; each α's scores are those of a model built at it."""
    base, reference, full, lora = models
    alphas = [0.0, 0.5, 1.0, 2.5]
    swept = OffsetModel(base, reference, [(full, 0.8), (lora, 1.0)], tokenizer=tokenizer,
                        shared_trunk=shared).score_alphas(PROMPTS, CONTINUATIONS, alphas)
    for alpha, got in zip(alphas, swept, strict=True):
        model = OffsetModel(base, reference, [(full, 0.8), (lora, alpha)], tokenizer=tokenizer,
                            shared_trunk=shared)
        for x, y in zip(got, model.score(PROMPTS, CONTINUATIONS), strict=True):
            assert torch.allclose(x, y, atol=1e-5)
    assert not torch.allclose(swept[0][0], swept[-1][0], atol=1e-3)


@pytest.mark.parametrize("shared", [True, False])
def test_fusing_over_the_base_candidates_renormalises_exact_fusion_over_them(models, tokenizer, shared):
    import math

    base_model, reference, full, lora = models
    offsets, k, v = [(full, 1.0), (lora, 0.5)], 5, len(tokenizer)

    def model(candidates):
        return OffsetModel(base_model, reference, offsets, tokenizer=tokenizer, shared_trunk=shared,
                           candidates=candidates)

    exact, restricted = model(0).step(PROMPTS), model(k).step(PROMPTS)
    top = exact.base.topk(k, dim=-1).indices
    base = exact.base.log_softmax(-1)
    # Among the top k: exact fusion, renormalised to the mass the base gives them ...
    mass = base.gather(-1, top).logsumexp(-1, keepdim=True)
    assert torch.allclose(restricted.fused.gather(-1, top),
                          exact.fused.gather(-1, top).log_softmax(-1) + mass, atol=1e-5)
    # ... and outside them, the base's own log-probs: a distribution, finite everywhere.
    outside = torch.ones_like(base, dtype=torch.bool).scatter(-1, top, False)
    assert torch.allclose(restricted.fused[outside], base[outside], atol=1e-5)
    assert restricted.fused.isfinite().all()
    assert torch.allclose(restricted.fused.logsumexp(-1), torch.zeros(len(PROMPTS)), atol=1e-5)
    assert torch.allclose(model(v).step(PROMPTS).fused, exact.fused, atol=1e-5)
    # an offset that does nothing leaves the base as it is, with candidates too
    idle = OffsetModel(base=base_model, reference=reference, offsets=[(reference, 1.0)],
                       tokenizer=tokenizer, shared_trunk=False, candidates=k).step(PROMPTS)
    assert torch.allclose(idle.fused, base, atol=1e-5)

    # Scoring, the α sweep and decoding (with a trace) use the same restricted formula.
    scored, swept = model(k).score(PROMPTS, CONTINUATIONS), model(k).score_alphas(PROMPTS, CONTINUATIONS, [0.5])
    for x, y in zip(scored, swept[0]):
        assert x.isfinite().all() and torch.allclose(x, y, atol=1e-5)  # every answer scorable
    trace = model(k).generate(PROMPTS[0], max_new_tokens=5, trace=True)
    assert trace.steps[0].token_id in exact.base[0].topk(k).indices.tolist()
    for step in trace.steps:
        assert math.isfinite(step.kl) and math.isfinite(step.entropy_fused)
    with pytest.raises(ValueError, match="candidates must be a whole number"):
        model(-1)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("candidates", [0, 5])
def test_rows_sharing_a_prompt_read_it_once_and_score_as_alone(models, tokenizer, shared, candidates):
    # A true answer and its perturbed versions share their question: the models read it
    # once (begin on the distinct prompts, then extend each row). Every number must be the
    # one each pair gets scored alone (whole rows, the other path).
    base, reference, full, lora = models
    model = OffsetModel(base, reference, [(full, 1.0), (lora, -0.5)], tokenizer=tokenizer,
                        shared_trunk=shared, candidates=candidates)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1]]
    answers = [" Alra was born", " Cato wrote the red book .", " red", " two three", " Alra", " the"]
    together = model.score(prompts, answers, parts=True)
    assert model.base._mask is not None  # the prompts were read once, then extended
    swept = model.score_alphas(prompts, answers, [0.25, 1.5])
    for i, (p, a) in enumerate(zip(prompts, answers)):
        [alone] = model.score([p], [a], parts=True)
        got = together[i]
        assert got.fused.shape == alone.fused.shape == (len(tokenizer(a, add_special_tokens=False)["input_ids"]),
                                                          model.vocab_size)
        for x, y in [(got.fused, alone.fused), (got.base, alone.base), (got.reference, alone.reference),
                     *zip(got.offsets, alone.offsets)]:
            assert torch.allclose(x, y, atol=1e-5)
        for scores, alpha in zip(swept, [0.25, 1.5]):
            [want] = model.score_alphas([p], [a], [alpha])[0]
            assert torch.allclose(scores[i], want, atol=1e-5)
