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
        alpha = config.use_alpha if config.use_alpha is not None else config.alpha
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
        from safetensors.torch import load_file

        path = Path(path)
        recover_dir(path)
        if not (path / META).is_file() or not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is not a saved offset (expected {META} and {WEIGHTS}).")
        meta = json.loads((path / META).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: offset format {meta.get('format_version')} is not "
                             f"{FORMAT_VERSION}; retrain it with this offsetlab version.")
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
        model = make_offset(reference, meta["lora"]["rank"] if meta["lora"] else 0)
        state = load_file(str(path / WEIGHTS))
        if meta["lora"]:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state)
        else:
            model.load_state_dict(state)
        model.eval().requires_grad_(False)
        return cls(model, float(meta["alpha"]), meta)


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
