"""Where models come from: local folders, hub ids, GGUF files, truncated twins.

``load_causal_lm`` turns a *spec* into ``(model, tokenizer)``:

* a folder holding a Hugging Face checkpoint;
* a ``.gguf`` file, or a folder plus ``gguf_file=`` (llama.cpp's format; transformers
  dequantises it to fp32 — needs the ``gguf`` package);
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` — from the local cache when
  offline, downloaded when online. Whether we are online is decided once per call:
  ``HF_HUB_OFFLINE=1`` says offline, otherwise a two-second reachability check of the
  hub decides, so an unplugged laptop gets a clear error instead of a long hang.

Parsing a GGUF file is slow (SmolLM2-135M: ~35 s, mostly metadata), so the first load
converts it to a safetensors folder in a user cache directory, keyed by the SHA-256 of
the file; later loads read that folder (~2.5 s). The cache lives in
``$OFFSETLAB_CACHE/converted`` (default ``~/.cache/offsetlab/converted``), never in the
repository: it holds fp32 weights (~0.5 GB for SmolLM2-135M).

``truncate_model`` builds the small partner of a base model: its first N decoder
layers, final norm and output head. It shares the base's tokenizer and vocabulary
exactly, which is what fusion needs.

``make_base`` turns a spec *or a server URL* into a ``LogProbSource`` for the base.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import torch

from ..method.sources import HFSource, LogProbSource

HUB_CHECK_SECONDS = 2.0


class ModelLoadError(OSError):
    """A model could not be found or read; the message says where we looked."""


# -- the converted-copy cache ------------------------------------------------------------


def cache_dir() -> Path:
    """Root of offsetlab's user cache (``$OFFSETLAB_CACHE`` or ``~/.cache/offsetlab``)."""
    root = os.environ.get("OFFSETLAB_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "offsetlab"


def file_sha256(path: str | Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a file rewritten in place is hashed again; hashing
    # a 100 MB GGUF takes ~1 s, worth skipping on every later load in the same process.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def converted_path(gguf_path: str | Path) -> Path:
    """The cache folder that holds (or will hold) the safetensors copy of a GGUF file."""
    return cache_dir() / "converted" / file_sha256(gguf_path)


def _load_gguf(path: Path, dtype: torch.dtype, use_cache: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_path(path) if use_cache else None
    if target is not None and (target / "config.json").exists():
        return _load_folder(target, dtype, trust_remote_code=False, local_files_only=True)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    # The weights are plain dequantised tensors, but the model still carries a GGUF
    # "quantizer" that makes save_pretrained refuse; dropping it changes no weight.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if target is not None:
        _save_atomically(model, tokenizer, target)
    return model.eval(), tokenizer


def _save_atomically(model, tokenizer, target: Path) -> None:
    # Write into a temporary sibling and rename it into place: a crash or a concurrent
    # loader never sees a half-written folder. If another process won the race, keep its.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- hub ids -----------------------------------------------------------------------------


def hub_reachable(timeout: float = HUB_CHECK_SECONDS) -> bool:
    """Whether the hub endpoint answers within ``timeout`` seconds (never blocks longer).

    Runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    from huggingface_hub import constants

    result: list[bool] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
            urllib.request.urlopen(request, timeout=timeout).close()
            result.append(True)
        except Exception as err:  # any HTTP answer (even 4xx/5xx) means reachable
            result.append(hasattr(err, "code"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def offline() -> bool:
    """True when the hub must not be contacted: HF_HUB_OFFLINE is set or unreachable."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return not hub_reachable()


def _offline_error(spec: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{spec!r} is not a local folder or file and is not in the Hugging Face cache, and "
        f"the hub cannot be reached (offline: HF_HUB_OFFLINE is set or the hub did not "
        f"answer within {HUB_CHECK_SECONDS:g} s). Download it once while online (e.g. "
        f"`hf download {spec}`), or pass a local folder or .gguf file. ({err})"
    )


# -- loading -----------------------------------------------------------------------------


def _load_folder(spec: str | Path, dtype, trust_remote_code: bool, local_files_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    tokenizer = AutoTokenizer.from_pretrained(str(spec), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(spec), dtype=dtype, **kwargs)
    return model.eval(), tokenizer


def load_causal_lm(
    spec: str | Path,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    use_cache: bool = True,
):
    """Load ``(model, tokenizer)`` from a folder, a ``.gguf`` file or a hub id.

    ``gguf_file`` names a GGUF file inside the folder or hub repository ``spec``.
    ``use_cache=False`` skips the converted-copy cache for GGUF files (slow every time).
    ``trust_remote_code`` stays off unless you trust the repository's Python code.
    Raises ``ModelLoadError`` when nothing can be found.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a model folder, "
                                 "a .gguf file or a hub id.")
        return _load_gguf(path, dtype, use_cache)
    if path.is_dir():
        if gguf_file:
            return _load_gguf(_existing(path / gguf_file), dtype, use_cache)
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a folder without config.json: not a Hugging Face "
                                 "model folder (for a GGUF file inside it, pass gguf_file=...).")
        return _load_folder(path, dtype, trust_remote_code, local_files_only=True)
    if _looks_like_path(str(spec)):
        raise ModelLoadError(f"No such file or folder: {path}")
    return _load_hub(str(spec), gguf_file, dtype, trust_remote_code, use_cache)


def _load_hub(repo_id: str, gguf_file: str | None, dtype, trust_remote_code: bool, use_cache: bool):
    local_only = offline()
    try:
        if gguf_file:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id, gguf_file, local_files_only=local_only)
            return _load_gguf(Path(path), dtype, use_cache)
        return _load_folder(repo_id, dtype, trust_remote_code, local_files_only=local_only)
    except ModelLoadError:
        raise
    except Exception as err:
        if local_only:
            raise _offline_error(repo_id, err) from err
        raise ModelLoadError(f"Could not load {repo_id!r} from the hub: {err}") from err


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a typo'd path.
    return (spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~"))
            or spec.count("/") > 1 or os.sep != "/" and os.sep in spec)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ModelLoadError(f"No such GGUF file: {path}")
    return path


# -- the small partner -------------------------------------------------------------------


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama-style ``layers`` or GPT-2 ``h``)."""
    decoder = model.get_decoder()
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"Cannot find the decoder layers of {type(model).__name__}: "
                     "expected a ModuleList named layers, h or blocks.")


def truncate_model(model, n_layers: int):
    """A copy of ``model`` keeping its first ``n_layers`` decoder layers.

    Embeddings, final norm and output head are copied unchanged (a tied head stays tied
    to the copied embedding), so the truncated model has exactly the base's vocabulary.
    The copy owns its weights: training it never touches ``model``.
    """
    layers = decoder_layers(model)
    if not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be between 1 and {len(layers)}, got {n_layers}.")
    decoder = model.get_decoder()
    name = next(n for n, m in decoder.named_children() if m is layers)
    # Detach the dropped layers for the duration of the copy so they are never copied.
    setattr(decoder, name, torch.nn.ModuleList(layers[:n_layers]))
    try:
        small = copy.deepcopy(model)
    finally:
        setattr(decoder, name, layers)
    small.config.num_hidden_layers = n_layers
    if getattr(small.config, "layer_types", None):
        # Per-layer attention kinds (sliding/full) must match the remaining layers.
        small.config.layer_types = list(small.config.layer_types[:n_layers])
    return small.eval()


# -- the base as a log-prob source ---------------------------------------------------------


def make_base(spec_or_url: str | Path, tokenizer=None, **kwargs) -> LogProbSource:
    """A ``LogProbSource`` for the base model, whatever it is.

    * ``http://`` / ``https://`` URL → ``OpenAISource`` (top-k log-probs from a server;
      ``tokenizer`` is required: the small models' tokenizer, used to map tokens);
    * anything else → ``load_causal_lm(spec_or_url, **kwargs)`` wrapped in ``HFSource``.
    """
    spec = str(spec_or_url)
    if spec.startswith(("http://", "https://")):
        from ..method.remote import OpenAISource

        if tokenizer is None:
            raise ValueError("A remote base needs the local tokenizer (tokenizer=...) to map "
                             "the server's tokens to ids.")
        return OpenAISource(spec, tokenizer=tokenizer, **kwargs)
    model, loaded_tokenizer = load_causal_lm(spec, **kwargs)
    return HFSource(model, tokenizer if tokenizer is not None else loaded_tokenizer)
