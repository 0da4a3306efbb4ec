"""The embedded default: a fictitious world in TOFU's format and small models that know it.

    from offsetlab.worlds import toy
    t = toy.load()          # splits, tokenizer, large, small, gold (see Toy)

`offsetlab.worlds.toy.world` generates the world; `offsetlab.worlds.toy.build` trains the models.
"""

from offsetlab.worlds.toy.shipped import Toy, data_dir, load, shipped_offsets

__all__ = ["Toy", "data_dir", "load", "shipped_offsets"]
