"""The Offset artifact: a trained offset on disk, with what it was trained for.

A saved offset is a folder with two files:

    model.safetensors   the offset's weights (the whole small model, or only LoRA adapters)
    offset.json         metadata: objective and settings, α, fingerprints of the base,
                        reference and tokenizer, a hash and the size of the forget set,
                        the loss history, a format version

It never contains forget-set text: the forget set is represented by a SHA-256 of its
records and its size, enough to recognise it again, not to recover it.

A folder is written to a temporary sibling first and renamed into place, so a crash
during a save never leaves a half-written offset behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..method import fingerprints
from ..method.fingerprints import Fingerprint
from ..method.train import make_offset

# 2: fingerprints are records ({"kind", "digest", ...}), not strings
FORMAT_VERSION = 2
WEIGHTS, META = "model.safetensors", "offset.json"


class FingerprintMismatch(ValueError):
    """An offset was loaded onto a model it was not trained against."""


class OffsetFolderError(ValueError):
    """A saved offset folder that cannot be used as it is (damaged, edited or made for
    another model); the message names the file and what to do."""


# Weight files offsetlab never opens: loading a pickle can run any code it holds.
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
RETRAIN = "restore the folder from a copy, or retrain the offset"


# -- the artifact -----------------------------------------------------------------------


@dataclass
class Offset:
    """A trained offset model plus its metadata; ``alpha`` is its default strength."""

    model: torch.nn.Module
    alpha: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.get("name", "offset")

    @classmethod
    def from_training(cls, result, forget, name: str = "offset", notes: dict | None = None) -> Offset:
        """Wrap a ``TrainResult`` with its fingerprints and the forget set's hash (no text).

        Its default strength is the one the recipe recommends (``config.use_alpha``),
        else the one it was trained at."""
        from dataclasses import asdict

        lora = _lora_settings(result.offset)
        config = result.config
        alpha = config.served_alpha
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "objective": config.objective,
            "config": asdict(config),
            "alpha": alpha,
            "kind": "lora" if lora else "full",
            "lora": lora,
            "fingerprints": {k: f.to_dict() for k, f in result.fingerprints.items()},
            "forget_set": {"sha256": fingerprints.of_records(forget), "size": len(forget)},
            "history": [{k: v for k, v in row.items() if k != "offset"} for row in result.history],
            "stopped": result.stopped,
            "still_stated": result.still_stated,
            "train_seconds": round(result.seconds, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "notes": dict(notes or {}),
        }
        return cls(result.offset, alpha, meta)

    def fingerprint(self, what: str) -> Fingerprint:
        """What it was trained against: ``"base"``, ``"reference"`` or ``"tokenizer"``."""
        return Fingerprint.from_dict(self.meta["fingerprints"][what])

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the folder atomically; refuses to replace an existing one unless asked."""
        from safetensors.torch import save_file

        path = Path(path)
        recover_dir(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            weights = {k: v.detach().to("cpu").contiguous() for k, v in _trained_state(self.model).items()}
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "offsetlab"})
            _write_text(tmp / META, json.dumps({**self.meta, "alpha": self.alpha}, indent=2))
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, reference: torch.nn.Module, tokenizer=None, base=None) -> Offset:
        """Rebuild an offset on top of ``reference`` (which must be the one it was trained on).

        A different reference or tokenizer is refused with the differing fingerprint; a
        different base only warns (using an offset on another base is an experiment,
        not an error).
        """
        path = Path(path)
        recover_dir(path)
        if not (path / META).is_file() or not (path / WEIGHTS).is_file():
            pickled = sorted(p.name for pattern in PICKLED for p in path.glob(pattern))
            if pickled and not (path / WEIGHTS).is_file():
                raise FileNotFoundError(
                    f"{path} holds {', '.join(pickled)} but no {WEIGHTS}: offsetlab loads offset "
                    "weights only from safetensors files (a pickled file can run code when "
                    "loaded). Retrain the offset, or convert its weights to safetensors yourself "
                    "if you trust where they come from.")
            raise FileNotFoundError(f"{path} is not a saved offset (expected {META} and {WEIGHTS}).")
        meta = parse_meta((path / META).read_bytes(), path / META)
        expected = {k: Fingerprint.from_dict(v) for k, v in meta["fingerprints"].items()}
        found = {"reference": fingerprints.of_model(reference)}
        if tokenizer is not None:
            found["tokenizer"] = fingerprints.of_tokenizer(tokenizer)
        for what, value in found.items():
            if not value.same_model(expected[what]):
                raise FingerprintMismatch(
                    f"{path} was trained against a {what} with fingerprint {expected[what]}, but "
                    f"the {what} given has fingerprint {value}. Load the same {what} it was "
                    f"trained with (offset {meta.get('name')!r}, objective {meta.get('objective')})."
                )
        # An offset trained on top of other offsets records the stack; over the same
        # base (the stack's root) it loads quietly.
        if base is not None and not fingerprints.of_source(base).root().same_model(
                expected["base"].root()):
            warnings.warn(f"{path} was trained for another base model (fingerprint "
                          f"{expected['base']}); the fused model may not forget as measured.",
                          stacklevel=2)
        top = meta["config"].get("top_layers", 0) if isinstance(meta.get("config"), dict) else 0
        model = make_offset(reference, meta["lora"]["rank"] if meta["lora"] else 0,
                            top if isinstance(top, int) and not isinstance(top, bool) else 0)
        state = _read_weights(path / WEIGHTS, _trained_state(model))
        if meta["lora"]:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state)
        else:
            model.load_state_dict(state)
        model.eval().requires_grad_(False)
        if isinstance(meta.get("config"), dict):
            meta["config"] = with_later_options(meta["config"])
        return cls(model, float(meta["alpha"]), meta)


def with_later_options(config: dict) -> dict:
    """A stored training config with the options added since it was written, at their
    defaults: every option joined ``TrainConfig`` off (its default is how training ran
    before it existed), so an older offset was trained with exactly that."""
    from dataclasses import MISSING, fields

    from ..method.train import TrainConfig

    later = {f.name: f.default for f in fields(TrainConfig)
             if f.name not in config and f.default is not MISSING}
    return {**config, **later}


def parse_meta(raw: bytes, where: Path | str = META) -> dict:
    """An offset's metadata from the bytes of its ``offset.json``, checked field by field
    for what loading reads; anything else is refused with ``OffsetFolderError`` naming
    ``where`` and the field."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise OffsetFolderError(f"{where}: not UTF-8 text; {RETRAIN}.") from None
    except (ValueError, RecursionError) as err:
        raise OffsetFolderError(f"{where}: not valid JSON ({err}); {RETRAIN}.") from None
    if not isinstance(meta, dict):
        raise OffsetFolderError(f"{where}: expected a JSON object, got {type(meta).__name__}; "
                                f"{RETRAIN}.")

    def bad(field: str, wanted: str) -> OffsetFolderError:
        got = "missing" if field not in meta else f"{type(meta[field]).__name__} {meta[field]!r}"
        return OffsetFolderError(f"{where}: field {field!r} must be {wanted}, got {got}"[:300]
                                 + f"; {RETRAIN}.")

    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise OffsetFolderError(f"{where}: offset format {version!r:.40} is not {FORMAT_VERSION}; "
                                "retrain it with this offsetlab version.")
    prints = meta.get("fingerprints")
    if not isinstance(prints, dict) or not all(k in prints for k in ("base", "reference", "tokenizer")):
        raise bad("fingerprints", "an object with 'base', 'reference' and 'tokenizer'")
    for what, value in prints.items():
        if not _is_fingerprint(value):
            raise OffsetFolderError(f"{where}: fingerprints.{what!s:.40} is not a fingerprint "
                                    f"record ({{'kind': ..., 'digest': ...}}); {RETRAIN}.")
    alpha = meta.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad("alpha", "a finite number")
    lora = meta.get("lora", "missing")
    if lora is not None and not (isinstance(lora, dict) and isinstance(lora.get("rank"), int)
                                 and not isinstance(lora["rank"], bool) and lora["rank"] >= 1):
        raise bad("lora", "null (a full offset) or an object with an integer 'rank' ≥ 1")
    for name in ("name", "objective"):
        if name in meta and not isinstance(meta[name], str):
            raise bad(name, "a string")
    return meta


def _is_fingerprint(value, depth: int = 0) -> bool:
    if not isinstance(value, dict) or depth > 32:
        return False
    if not isinstance(value.get("kind"), str) or not isinstance(value.get("digest"), str):
        return False
    if not isinstance(value.get("label", ""), str):
        return False
    if value.get("base") and not _is_fingerprint(value["base"], depth + 1):
        return False
    offsets = value.get("offsets", [])
    return isinstance(offsets, list) and all(
        isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
        and isinstance(o[1], (int, float)) and not isinstance(o[1], bool) for o in offsets)


def _read_weights(path: Path, wanted: dict) -> dict:
    """The tensors of a safetensors file, refused unless their names and shapes are
    exactly those of ``wanted`` (the state the offset model expects)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except SafetensorError as err:
        raise OffsetFolderError(f"{path}: not a complete safetensors file ({err}); it was cut "
                                f"short or damaged: {RETRAIN}.") from None
    missing = sorted(set(wanted) - set(state))
    extra = sorted(set(state) - set(wanted))
    shapes = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (first {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (first {extra[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (first {k!r}: "
                         f"{tuple(state[k].shape)} instead of {tuple(wanted[k].shape)})")
        raise OffsetFolderError(f"{path}: the weights do not fit the reference model: "
                                f"{'; '.join(parts)}. The file belongs to another model or was "
                                f"edited: {RETRAIN}.")
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise OffsetFolderError(f"{path}: tensor {not_float[0]!r} holds {state[not_float[0]].dtype}, "
                                f"not floating-point weights: {RETRAIN}.")
    return state


def _lora_settings(model) -> dict | None:
    config = getattr(model, "peft_config", None)
    if not config:
        return None
    c = config["default"]
    return {"rank": c.r, "lora_alpha": c.lora_alpha, "target_modules": sorted(c.target_modules)}


def _trained_state(model) -> dict:
    if getattr(model, "peft_config", None):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    # Tied weights appear under two names; safetensors refuses shared storage.
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        state[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return state


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def recover_dir(path: Path) -> None:
    """Undo a swap that was interrupted between its two renames (see ``replace_dir``):
    the folder is missing but its previous version waits in a ``.NAME.old-PID`` sibling."""
    if path.exists() or not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing ``dst`` is swapped out, then removed."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
