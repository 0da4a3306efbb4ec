"""The Lab: the one way every front end adds, names, selects and fuses offsets."""

import pytest
from conftest import make_lab

from offsetlab.method.train import TrainConfig


def test_a_name_in_use_is_never_replaced():
    lab = make_lab()
    first = lab.offsets["random"]
    again = lab.offsets["random"].__class__(first.model, 0.5, {"name": "random"})
    assert lab.add_offset(again) == "random-2"
    assert lab.add_offset(again, "random") == "random-3"
    assert lab.offsets["random"] is first


def test_a_bare_name_uses_the_offsets_own_alpha_and_a_pair_overrides_it():
    lab = make_lab()
    lab.offsets["random"].alpha = 0.25
    assert lab.active(["random"]) == [("random", 0.25)]
    assert lab.active([("random", 2.0)]) == [("random", 2.0)]
    assert lab.model(["random"]).alphas == [0.25]
    with pytest.raises(KeyError, match="Unknown offset.*'nope'"):
        lab.model(["nope"])


def test_the_recommended_alpha_travels_with_the_artifact(tmp_path):
    lab = make_lab()
    name = lab.train("forget10", config=TrainConfig(objective="ga", steps=1, use_alpha=0.75))
    assert lab.offsets[name].alpha == 0.75  # trained at α 1, used at 0.75
    lab.offsets[name].save(tmp_path / "o")
    loaded = lab.load_offset(tmp_path / "o")
    assert loaded == f"{name}-2" and lab.active([loaded]) == [(loaded, 0.75)]


def test_unknown_splits_are_named_with_what_exists():
    with pytest.raises(KeyError, match="Unknown split 'forget99'.*forget10"):
        make_lab().training_sets("forget99")
