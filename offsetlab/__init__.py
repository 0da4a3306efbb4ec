"""offsetlab — make a black-box language model forget, by steering it with a small offset.

    fused = log_softmax(base + Σ αᵢ · (offsetᵢ − reference))

The package, in the order a reader meets it (arrows point only downwards):

    frontends/  cli, demo, explore, viz, widgets, app, report   — what people use
    worlds/     Lab, the toy world, SmolLM2, record files, model loading
    measure/    metrics, evaluate, per-request evaluation
    offsets/    the Offset artifact, the registry of forget requests
    method/     sources → fusion → trace, objectives → train, prompts, fingerprints

Start with ``offsetlab demo`` (or ``make demo``) and the notebooks in ``notebooks/``.
"""

from .method.fusion import OffsetModel, VocabularyMismatch, fuse
from .method.trace import Trace, TraceStep
from .method.train import TrainConfig, train_offset
from .offsets.artifact import Offset
from .offsets.registry import Registry
from .worlds.lab import Lab

__version__ = "0.1.0"
__all__ = ["Lab", "OffsetModel", "Offset", "Registry", "TrainConfig", "Trace", "TraceStep",
           "VocabularyMismatch", "fuse", "train_offset", "__version__"]
