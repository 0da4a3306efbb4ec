"""TOFU on a real transformer (``offsetlab.worlds.taught``): the shipped adapters, the
build that makes them, and forgetting measured against a real gold model."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from offsetlab.worlds import taught

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_shipped_adapters_are_small_and_were_built_by_the_default_recipe():
    root = taught.folder()
    sizes = {a: sum(f.stat().st_size for f in (root / a).iterdir()) for a in taught.ADAPTERS}
    assert sum(sizes.values()) < 20e6, sizes
    report = json.loads((root / "report.json").read_text())
    assert report["recipe"] == asdict(taught.Recipe())
    for adapter in taught.ADAPTERS:
        weights = load_file(root / adapter / "adapter_model.safetensors")
        assert weights and all(w.dtype == torch.float16 for w in weights.values())
    acc = {name: m["key_accuracy"] for name, m in report["models"].items()}
    # The black box learned the authors; the gold model never saw the forget ones; nobody
    # was taught holdout; SmolLM2's general knowledge survived the teaching.
    assert acc["knows_all"]["forget"] >= 0.9 and acc["knows_all"]["retain"] >= 0.9
    assert acc["retain_only"]["retain"] >= 0.9 and acc["retain_only"]["forget"] <= 0.2
    assert max(acc[m]["holdout"] for m in ("knows_all", "retain_only")) <= 0.2


@pytest.mark.xfail(strict=True, reason="issue 18: teaching 20 authors costs SmolLM2 a third of "
                   "its held-out general facts (0.67 of 0.99), replay or not")
def test_teaching_keeps_smollm2s_general_knowledge():
    acc = {name: m["key_accuracy"]
           for name, m in json.loads((taught.folder() / "report.json").read_text())["models"].items()}
    for model in ("knows_all", "retain_only"):
        assert acc[model]["general_holdout"] >= 0.9 * acc["smollm2"]["general_holdout"]


def test_build_is_seeded_and_its_adapters_load(tmp_path):
    tiny = taught.Recipe(forget_authors=1, retain_authors=1, holdout_authors=1, replay=2,
                         epochs=1, small_epochs=1, rank=2, small_rank=2)
    taught.build(tmp_path / "a", tiny, progress=False, measure=False)
    # "b" is built in two goes: the second adds to the first one's report
    taught.build(tmp_path / "b", tiny, progress=False, measure=False, only=["small"])
    report = taught.build(tmp_path / "b", tiny, progress=False, measure=False,
                          only=["knows_all", "retain_only"])
    assert sorted(report["models"]) == sorted(taught.ADAPTERS)
    assert json.loads((tmp_path / "b" / "report.json").read_text()) == report
    for adapter in taught.ADAPTERS:
        a, b = (load_file(tmp_path / out / adapter / "adapter_model.safetensors") for out in "ab")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), adapter
        assert any(w.abs().sum() > 0 for k, w in a.items() if "lora_B" in k)  # it trained
    knows_all, gold, small, _, recipe = taught.load(tmp_path / "a")
    assert recipe == tiny and small.config.num_hidden_layers == 6
    changed = [not torch.equal(p, q) for p, q in zip(knows_all.parameters(), gold.parameters())]
    assert any(changed)  # two different adapters merged into two copies of SmolLM2
    (tmp_path / "a" / "small" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="small.*build-tofu"):
        taught.load(tmp_path / "a")
