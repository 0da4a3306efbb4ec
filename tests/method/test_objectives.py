"""The bounded objectives' targets, on hand-made distributions."""

import math

import torch

from offsetlab.method.calibrate import key_token_positions
from offsetlab.method.objectives import Scored, capped_target, choice_tokens, inverted_hinge


def group(true_logp: list[float], levels: list[float], vocab: int = 5) -> Scored:
    """One answer of len(true_logp) tokens; token 0 is always the true one, the rest of the
    mass spread over the other tokens as 1 : 2 : 3 : ..."""
    rows = []
    for lp in true_logp:
        rest = torch.arange(1, vocab, dtype=torch.float)
        rest = rest / rest.sum() * (1 - math.exp(lp))
        rows.append(torch.log(torch.cat([torch.tensor([math.exp(lp)]), rest])))
    original = torch.stack(rows)[None]
    n = len(true_logp)
    levels_t = torch.tensor([levels])
    return Scored(original.clone(), original, torch.zeros(1, n, dtype=torch.long), torch.ones(1, n),
                  key_mask=(levels_t < 0).float(), levels=levels_t)


def test_capped_target_lowers_only_key_tokens_above_their_level():
    g = group([-1e-4, -1e-4, -5.0, -1e-4], levels=[-3.0, 0.0, -3.0, -2.0])
    target = capped_target(g, level=-3.5)[0]
    true = target[:, 0]
    assert torch.allclose(true, torch.tensor([-3.0, -1e-4, -5.0, -2.0]), atol=1e-4)
    # every row is still a distribution, and the other tokens keep the base's proportions
    assert torch.allclose(target.exp().sum(-1), torch.ones(4), atol=1e-5)
    ratios = target[0, 1:].exp() / g.original[0, 0, 1:].exp()
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)
    assert ratios[0] > 1000  # the freed mass went to the runner-ups


def test_inverted_hinge_stops_once_another_token_leads():
    leading = group([-0.01], levels=[-3.0])
    trailing = group([-3.0], levels=[-3.0])  # true token already below the best other (p≈0.38)
    for g in (leading, trailing):
        g.fused = g.original.clone().requires_grad_(True)
    inverted_hinge(leading, -3.5).backward()
    inverted_hinge(trailing, -3.5).backward()
    assert leading.fused.grad[0, 0, 0] > 0  # minimising lowers the true token
    # no pull on tokens where a never-seen model is sure (level ≈ 0)
    assert choice_tokens(group([-0.01, -0.01], levels=[-3.0, -0.1]), -3.5).tolist() == [[1.0, 0.0]]


def test_key_token_positions_cover_the_fact(tokenizer):
    text = " Alra was born in red city"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    positions = key_token_positions(tokenizer, text, "red")
    assert [tokenizer.decode([ids[i]]) for i in positions] == ["red"]
    assert key_token_positions(tokenizer, text, "absent") == list(range(len(ids)))


def test_key_token_positions_of_many_texts_in_one_call_match_one_by_one(tokenizer):
    from offsetlab.method.calibrate import key_token_positions_many

    texts = [" Alra was born in red city", " the river Zisye", " Alra", " 1970 and 7", ""]
    keys = ["red", "Zisye", None, "7", "x"]
    assert key_token_positions_many(tokenizer, texts, keys) == [
        key_token_positions(tokenizer, t, k) for t, k in zip(texts, keys)]
    # each text's own spans: the fact's tokens sit at another index in each
    assert len({tuple(p) for p in key_token_positions_many(tokenizer, texts[:2], keys[:2])}) == 2
