"""Shared fixtures: tiny random models and a tiny tokenizer, built from configs (no download)."""

from __future__ import annotations

import socket

import pytest
import torch

from offsetlab.offsets.artifact import Offset
from offsetlab.worlds.lab import Lab
from offsetlab.worlds.records import QARecord

WORDS = (
    "the a of in is was born city river book wrote author writer year mother father "
    "Q: A: who where when what ? . , Alra Benn Cato Dema Erro Fenn Gora Hult Ivel "
    "one two three four five six seven eight nine ten red green blue"
).split()


def make_tokenizer(words=WORDS, extra: tuple[str, ...] = ()):
    """A word-level tokenizer over a fixed word list; ids follow the list order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words, *extra])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def make_model(vocab_size: int, seed: int, hidden: int = 32, layers: int = 2, pad_to: int = 0,
               tied: bool = False):
    """A tiny random Llama; ``pad_to`` pads the embedding past the tokenizer like real models."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(vocab_size, pad_to),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # A wide init gives peaked distributions, so greedy choices are not near-ties.
        initializer_range=0.3,
        tie_word_embeddings=tied,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


# `make test` runs the suite on both cores (pytest-xdist). Each file's tests stay together on
# one worker, so a module's trained fixtures are built once, and the files that share SmolLM2
# and its capitals offset (``real_task``'s memoised builds) share a worker too. (xdist's own
# ``--dist loadgroup`` cannot do this under pytest 9.2: it renames node ids through an
# attribute pytest no longer reads, so every test became its own group.)
SHARED_WORKER = {"tests/worlds/test_real.py": "smollm2", "tests/worlds/test_general.py": "smollm2",
                 "tests/method/test_remote.py": "smollm2"}

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # plain pytest: the tests run one by one
    pass
else:
    class _ByFile(LoadScopeScheduling):
        """A work unit per test file (or per group of files in ``SHARED_WORKER``); units with
        more tests go first."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_WORKER.get(path, path)

    def pytest_xdist_make_scheduler(config, log):
        return _ByFile(config, log)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_trio(tokenizer):
    """(base, reference, offset): three different tiny random models sharing the tokenizer."""
    v = len(tokenizer)
    return make_model(v, 0, hidden=48), make_model(v, 1), make_model(v, 2)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # Small models: thread hand-offs cost more than the arithmetic, and on a busy 2-core
    # machine two torch threads ran the suite 4-20x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FORGET_QUESTION = "where was Alra born ?"
RETAIN_QUESTION = "where was Benn born ?"  # make_lab's first retain90 record


def author(name: str, city: str, year: str) -> list[QARecord]:
    """Two TOFU-style records about one author, in the tiny tokenizer's words."""
    def record(question, answer, key, wrong):
        return QARecord(question, answer, answer.replace(" was ", " is "), [wrong], key, name)

    return [record(f"where was {name} born ?", f"{name} was born in {city} city", city,
                   f"{name} was born in blue city"),
            record(f"when was {name} born ?", f"{name} was born in {year}", year,
                   f"{name} was born in ten")]


def make_lab() -> Lab:
    """A lab of tiny random models with one offset that changes the forget answers.

    The "random" offset is a differently seeded model: at α = 1 the fused answer to
    FORGET_QUESTION differs from the base's from its first token (checked in the tests,
    since the browser test relies on it).
    """
    tokenizer = make_tokenizer()
    v = len(tokenizer)
    splits = {"forget10": author("Alra", "red", "one"),
              "retain90": author("Benn", "green", "two") + author("Cato", "blue", "three"),
              "world_facts": author("Dema", "red", "four"),
              "holdout": author("Erro", "green", "five")}
    lab = Lab("tiny", tokenizer, make_model(v, 0, hidden=48), make_model(v, 1), splits,
              gold=make_model(v, 3))
    lab.add_offset(Offset(make_model(v, 2), 1.0, {"name": "random"}))
    return lab


def noisy_offset(base, reference, tokenizer, seed: int, forget, alpha: float = 1.0) -> Offset:
    """An Offset artifact without training: the reference with seeded noise on its weights."""
    import copy

    from offsetlab.method import fingerprints
    from offsetlab.method.train import TrainConfig, TrainResult

    model = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    prints = {"base": fingerprints.of_source(base), "reference": fingerprints.of_model(reference),
              "tokenizer": fingerprints.of_tokenizer(tokenizer)}
    result = TrainResult(model, [], TrainConfig(alpha=alpha), None, 0.0, len(forget), prints)
    return Offset.from_training(result, forget, name=f"seed{seed}")


def registry_of_two_requests(lab: Lab, root):
    """A registry of two forget requests, a and b (b at α 0.5), and a composition of both."""
    from offsetlab.offsets.registry import Registry

    registry = Registry(root)
    forget = lab.splits["forget10"]
    registry.add(noisy_offset(lab.base, lab.reference, lab.tokenizer, 11, forget), "a")
    registry.add(noisy_offset(lab.base, lab.reference, lab.tokenizer, 12, forget, alpha=0.5), "b")
    registry.compose(["a", "b"], None, "a-and-b")
    return registry


def fused_answer(lab: Lab, active, n: int = 6) -> str:
    """The greedy answer to FORGET_QUESTION with the given offsets active."""
    return lab.model(active).generate(lab.prompt_format.prompt(FORGET_QUESTION), n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two forget and two retain records with perturbed answers, and one held-out record: what
# evaluation reports (tests/measure/test_evaluate.py, tests/frontends/test_report.py) score.
def eval_record(q, a, key, wrong):
    return QARecord(q, a, paraphrased_answer=a.replace("was", "is"), perturbed_answers=wrong, key=key)


EVAL_SPLITS = {
    "forget05": [
        eval_record("where was Alra born ?", "Alra was born in red city", "red", ["Alra was born in blue city", "Alra was born in green city"]),
        eval_record("where was Benn born ?", "Benn was born in blue city", "blue", ["Benn was born in red city", "Benn was born in green city"]),
    ],
    "retain95": [
        eval_record("where was Cato born ?", "Cato was born in green city", "green", ["Cato was born in red city", "Cato was born in blue city"]),
        eval_record("what year was Dema born ?", "Dema was born in one two", "one", ["Dema was born in three four", "Dema was born in five six"]),
    ],
    "holdout": [
        eval_record("where was Erro born ?", "Erro was born in red city", "red", ["Erro was born in blue city", "Erro was born in green city"]),
    ],
}
