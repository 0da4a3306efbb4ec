"""Property-based tests of the fusion formula (``fusion.fuse``) and of the vocabulary cut
(``sources.normalise``) on tiny random tensors."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offsetlab.method.fusion import fuse
from offsetlab.method.sources import normalise

SETTINGS = settings(max_examples=80, deadline=None)
ATOL = 1e-4

shapes = st.tuples(st.integers(1, 3), st.integers(2, 9))  # (batch, vocabulary)
alphas = st.floats(-3, 3, allow_nan=False)


def scores(shape, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def parts(shape, seed: int, offsets: int = 1):
    base, reference, *others = (scores(shape, seed * 7 + i) for i in range(2 + offsets))
    return base, reference, others


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    finite = torch.isfinite(a)
    return bool(torch.equal(finite, torch.isfinite(b))
                and torch.allclose(a[finite], b[finite], atol=ATOL)
                and torch.equal(a[~finite], b[~finite]))


@SETTINGS
@given(shapes, st.integers(0, 10_000))
def test_alpha_zero_gives_the_base(shape, seed):
    base, reference, [offset] = parts(shape, seed)
    assert close(fuse(base, reference, [offset], [0.0]), torch.log_softmax(base, -1))


@SETTINGS
@given(shapes, st.integers(0, 10_000), alphas)
def test_an_offset_equal_to_the_reference_gives_the_base(shape, seed, alpha):
    base, reference, _ = parts(shape, seed)
    assert close(fuse(base, reference, [reference.clone()], [alpha]), torch.log_softmax(base, -1))


@SETTINGS
@given(shapes, st.integers(0, 10_000), st.lists(alphas, min_size=1, max_size=3),
       st.floats(0, 0.6))
def test_the_fused_output_is_a_normalised_log_distribution(shape, seed, alpha_list, holes):
    base, reference, offsets = parts(shape, seed, len(alpha_list))
    # A base that only knows its top candidates puts -inf elsewhere (remote sources);
    # every row keeps at least one known token.
    hidden = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < holes
    hidden[:, 0] = False
    base = base.masked_fill(hidden, float("-inf"))
    fused = fuse(base, reference, offsets, alpha_list)
    assert not fused.isnan().any() and (fused <= ATOL).all()
    assert torch.allclose(fused.logsumexp(-1), torch.zeros(shape[0], dtype=fused.dtype), atol=ATOL)
    assert torch.equal(fused.isinf(), hidden)  # unknown to the base stays impossible


@SETTINGS
@given(shapes, st.integers(0, 10_000), alphas, st.floats(-50, 50), st.floats(-50, 50),
       st.floats(-50, 50))
def test_constants_added_to_a_position_change_nothing(shape, seed, alpha, cb, cr, co):
    # Logits or log-probs give the same fusion: softmax ignores a per-position constant.
    base, reference, [offset] = parts(shape, seed)
    shifted = fuse(base + cb, reference + cr, [offset + co], [alpha])
    assert close(shifted, fuse(base, reference, [offset], [alpha]))


@SETTINGS
@given(shapes, st.integers(0, 10_000), alphas, alphas)
def test_stacking_two_offsets_adds_their_deltas(shape, seed, a1, a2):
    base, reference, [o1, o2] = parts(shape, seed, 2)
    both = fuse(base, reference, [o1, o2], [a1, a2])
    summed = torch.log_softmax(base + a1 * (o1 - reference) + a2 * (o2 - reference), -1)
    assert close(both, summed)
    # ... and fusing the second onto the first's fused model is the same model.
    assert close(fuse(fuse(base, reference, [o1], [a1]), reference, [o2], [a2]), both)
    assert close(fuse(base, reference, [o2, o1], [a2, a1]), both)  # order does not matter


@SETTINGS
@given(shapes, st.integers(0, 10_000), alphas, st.integers(0, 5), st.integers(1, 9))
def test_the_vocabulary_cut_commutes_with_fusion(shape, seed, alpha, pad, cut):
    # Models whose heads are padded past the shared vocabulary are cut to it: fusing the
    # cut parts equals cutting the fused scores, and the padded rows never matter.
    batch, vocab = shape
    cut = min(cut, vocab)
    base, reference, [offset] = parts((batch, vocab + pad), seed)
    cut_parts = fuse(normalise(base, cut), normalise(reference, cut),
                     [normalise(offset, cut)], [alpha])
    assert cut_parts.shape == (batch, cut)
    assert close(cut_parts, normalise(base + alpha * (offset - reference), cut))
    noisy = base.clone()
    noisy[:, cut:] += scores((batch, vocab + pad - cut), seed + 1, 100.0)
    assert close(normalise(noisy, cut), normalise(base, cut))
