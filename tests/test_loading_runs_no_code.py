"""Loading a model or an offset never runs code that came with it: no pickle, and no
``trust_remote_code=True`` anywhere in offsetlab (read from the source, and watched at
run time on a real load). Offsets refusing pickled weights: tests/offsets/test_offset_folders.py."""

from __future__ import annotations

import ast
import inspect
import shutil
from pathlib import Path

import transformers

from offsetlab.frontends.cli import build_parser
from offsetlab.worlds import models
from offsetlab.worlds.toy import data_dir

PACKAGE = Path(__file__).resolve().parents[1] / "offsetlab"
UNPICKLERS = {"pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def calls_in(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            yield node


def test_no_source_file_turns_remote_code_on_or_unpickles():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    offences = []
    for path in sources:
        where = path.relative_to(PACKAGE.parent)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                offences += [f"{where}:{node.lineno} imports {n}" for n in names
                             if n.split(".")[0] in UNPICKLERS]
        for call in calls_in(path):
            if ast.unparse(call.func) == "torch.load":
                offences.append(f"{where}:{call.lineno} calls torch.load")
            for kw in call.keywords:
                if kw.arg == "trust_remote_code" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False
                        or isinstance(kw.value, ast.Name) and kw.value.id == "trust_remote_code"):
                    offences.append(f"{where}:{call.lineno} passes trust_remote_code="
                                    f"{ast.unparse(kw.value)}")
                if kw.arg is None and "trust" in ast.unparse(kw.value):
                    offences.append(f"{where}:{call.lineno} passes **{ast.unparse(kw.value)}")
    assert not offences, offences


def test_remote_code_is_off_unless_a_caller_asks_and_the_cli_cannot_ask():
    assert inspect.signature(models.load_causal_lm).parameters["trust_remote_code"].default is False
    options = {o for action in build_parser()._actions for o in action.option_strings}
    sub = [a for a in build_parser()._actions if hasattr(a, "choices") and a.choices]
    for parser in sub[0].choices.values():
        options |= {o for action in parser._actions for o in action.option_strings}
    assert not [o for o in options if "trust" in o or "remote" in o]


def test_a_real_load_passes_trust_remote_code_false(monkeypatch, tmp_path):
    folder = tmp_path / "small"  # the toy small model with its tokenizer: a model folder
    shutil.copytree(data_dir() / "toy" / "small", folder)
    for f in (data_dir() / "toy" / "tokenizer").iterdir():
        shutil.copy(f, folder)
    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def watched(klass, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code", "not given")))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(watched))
    model, tokenizer = models.load_causal_lm(folder)
    assert model.config.max_position_embeddings == 128 and len(tokenizer) > 0
    assert sorted(seen) == [("AutoModelForCausalLM", False), ("AutoTokenizer", False)]
