"""offsetlab — make a black-box language model forget, by steering it with a small offset.

    fused = log_softmax(base + Σ αᵢ · (offsetᵢ − reference))

Start with ``offsetlab demo`` (or ``make demo``) and the notebooks in ``notebooks/``.
"""

from .fusion import OffsetModel, VocabularyMismatch, fuse
from .trace import Trace, TraceStep

__version__ = "0.1.0"
__all__ = ["OffsetModel", "VocabularyMismatch", "fuse", "Trace", "TraceStep", "__version__"]
