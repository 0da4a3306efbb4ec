"""OpenAISource against real HTTP servers: a local http.server for protocol and error
handling, and a real llama.cpp server for agreement with local fusion."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import make_tokenizer

from offsetlab.method.remote import OpenAISource, RemoteSourceError
from offsetlab.worlds.models import make_base

# -- a scriptable local server -------------------------------------------------------------


@contextmanager
def serve(answer: Callable[[str, dict | None], tuple[int, bytes]]):
    """Run ``answer(path, json_body) -> (status, body)`` behind a real HTTP server."""
    requests: list[dict | None] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict | None) -> None:
            requests.append(body)
            status, data = answer(self.path, body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", 0))
            self._reply(json.loads(self.rfile.read(length) or b"null"))

        def do_GET(self):  # noqa: N802
            self._reply(None)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def completion(top: dict[str, float], finish: str = "length") -> bytes:
    """A llama-cpp-python style legacy completions answer with top log-probs."""
    if not top:
        choice = {"text": "", "index": 0, "finish_reason": finish,
                  "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}}
    else:
        best = max(top, key=top.get)
        choice = {"text": best, "index": 0, "finish_reason": finish,
                  "logprobs": {"tokens": [best], "token_logprobs": [top[best]],
                               "top_logprobs": [top], "text_offset": [0]}}
    return json.dumps({"object": "text_completion", "choices": [choice]}).encode()


def prompt_tensors(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left-padded, as fusion sends them
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- protocol ------------------------------------------------------------------------------


def test_maps_top_tokens_and_falls_back_to_text_prompts(tokenizer):
    """Like llama-cpp-python: token-id prompts are refused (HTTP 500), text is answered."""

    def answer(path, body):
        if path == "/v1/models":
            return 200, json.dumps({"data": [{"id": "toy-model"}]}).encode()
        if isinstance(body["prompt"], list):
            return 500, b'{"error": {"message": "Input should be a valid string"}}'
        return 200, completion({"city": -0.1, "river": -2.5, "": -4.0, "zzz-not-a-token": -6.0})

    with serve(answer) as (url, requests):
        source = OpenAISource(url + "/v1", tokenizer=tokenizer, top_k=4)
        assert source.fingerprint().label == f"remote:toy-model@{url}"
        ids, mask = prompt_tensors(tokenizer, ["Q: where was Alra born", "A: in the"])
        with pytest.warns(UserWarning, match="skipped"):
            out = source.begin(ids, mask)
    assert out.shape == (2, len(tokenizer))
    vocab = tokenizer.get_vocab()
    for row in out:
        assert row[vocab["city"]] == pytest.approx(-0.1)
        assert row[vocab["river"]] == pytest.approx(-2.5)
        assert torch.isinf(row).sum() == len(tokenizer) - 2  # -inf outside the known top-k
    assert source.skipped == 4  # "" and the unknown token, in both rows
    assert source.prompt_as == "text"
    posted = [r for r in requests if r is not None]
    # The rows are asked concurrently, so any row may carry the token-id probe: check
    # what was posted, not the order in which it arrived.
    rows = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
    probes = [r["prompt"] for r in posted if isinstance(r["prompt"], list)]
    assert probes and all(p in rows for p in probes)
    texts = [r["prompt"] for r in posted if isinstance(r["prompt"], str)]
    assert sorted(texts) == ["A: in the", "Q: where was Alra born"]
    assert all(r["max_tokens"] == 1 and r["logprobs"] == 4 and r["model"] == "toy-model" for r in posted)


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_hidden_choice_is_asked_again_with_a_ban(finish):
    """llama-cpp-python answers an EOS (finish "stop") or BOS (finish "length") choice
    with no log-probs; the source re-asks with that token banned and fills it in."""
    tokenizer = make_tokenizer(extra=("<bos>",))
    tokenizer.bos_token = "<bos>"
    hidden = tokenizer.eos_token_id if finish == "stop" else tokenizer.bos_token_id

    def answer(path, body):
        if path == "/v1/models":
            return 404, b"{}"
        if "logit_bias" in body:
            assert body["logit_bias"] == {str(hidden): -100}
            return 200, completion({"": -0.2, "city": -2.0, "river": -3.0})
        return 200, completion({}, finish=finish)

    with serve(answer) as (url, _):
        source = OpenAISource(url, tokenizer=tokenizer, prompt_as="text")
        out = source.begin(*prompt_tensors(tokenizer, ["A: in the"]))[0]
    assert source.skipped == 0
    assert int(out.argmax()) == hidden
    # The hidden token gets the mass the others leave over.
    expected = math.log(1 - math.exp(-2.0) - math.exp(-3.0))
    assert float(out[hidden]) == pytest.approx(expected, abs=1e-5)
    assert torch.isfinite(out).sum() == 3


def test_score_is_not_available(tokenizer):
    source = OpenAISource("http://127.0.0.1:9", tokenizer=tokenizer)
    with pytest.raises(NotImplementedError, match="local"):
        source.score(*prompt_tensors(tokenizer, ["A: in"]))
    assert isinstance(make_base("http://127.0.0.1:9/v1", tokenizer=tokenizer), OpenAISource)


# -- errors ----------------------------------------------------------------------------------


def test_connection_refused_is_a_clear_error_after_retries(tokenizer):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    source = OpenAISource(url, model="m", tokenizer=tokenizer, retries=2, backoff=0.05)
    start = time.perf_counter()
    with pytest.raises(RemoteSourceError) as err:
        source.begin(*prompt_tensors(tokenizer, ["A: in"]))
    message = str(err.value)
    assert url in message and "cannot connect" in message and "after 3 attempts" in message
    assert "llama_cpp.server" in message  # says how to start one
    assert time.perf_counter() - start >= 0.05 + 0.1  # it did back off


def test_slow_server_times_out_with_a_clear_error(tokenizer):
    def answer(path, body):
        time.sleep(2.0)
        return 200, completion({"city": -0.1})

    with serve(answer) as (url, requests):
        source = OpenAISource(url, model="m", tokenizer=tokenizer, timeout=0.3, retries=1,
                              backoff=0.01, prompt_as="text")
        start = time.perf_counter()
        with pytest.raises(RemoteSourceError, match=r"timeout.*after 2 attempts"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))
        assert time.perf_counter() - start < 1.9
        assert len(requests) == 2


def test_malformed_json_is_a_clear_error(tokenizer):
    with serve(lambda path, body: (200, b"<html>not json</html>")) as (url, requests):
        source = OpenAISource(url, model="m", tokenizer=tokenizer, prompt_as="text")
        with pytest.raises(RemoteSourceError, match="did not answer with JSON.*not json"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))
        assert len(requests) == 1  # garbage is not retried


def test_http_errors_name_what_to_check(tokenizer):
    calls = []

    def answer(path, body):
        calls.append(path)
        return (401, b'{"error": "bad key"}') if len(calls) == 1 else (503, b"busy")

    with serve(answer) as (url, _):
        source = OpenAISource(url, model="m", tokenizer=tokenizer, prompt_as="text",
                              api_key_env="OFFSETLAB_TEST_KEY", retries=1, backoff=0.01)
        with pytest.raises(RemoteSourceError, match=r"HTTP 401.*OFFSETLAB_TEST_KEY"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))
        with pytest.raises(RemoteSourceError, match=r"HTTP 503.*after 2 attempts"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))


def test_malformed_answers_are_clear_errors(tokenizer):
    answers = iter([(200, b'{"no": "choices"}'),
                    (200, json.dumps({"choices": [{"text": "x", "finish_reason": "length"}]}).encode())])
    with serve(lambda path, body: next(answers)) as (url, _):
        source = OpenAISource(url, model="m", tokenizer=tokenizer, prompt_as="text")
        with pytest.raises(RemoteSourceError, match="without choices"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))
        with pytest.raises(RemoteSourceError, match="no log-probs.*logits_all"):
            source.begin(*prompt_tensors(tokenizer, ["A: in"]))


# -- a real llama.cpp server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the SmolLM2 GGUF, on a free port."""
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    from offsetlab.worlds.real import llama_server as serve

    with serve(log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


@pytest.mark.real
def test_remote_base_agrees_with_local_fusion(llama_server):
    """The same offset steering SmolLM2 served by llama.cpp (top-20 log-probs, Q4_1
    arithmetic) and SmolLM2 in transformers (full vocabulary, fp32).

    The bar is per step on a shared prefix: after the prompt and the tokens local fusion
    generated so far, does the remote fused model pick the same next token? (Counting
    free-running generations instead would score every step after a first near-tie
    (Q4_1 vs fp32) as a disagreement; generating through the server is
    ``test_cli_generates_through_the_server_with_an_offset``.) Every prefix is one request
    to the server: 7 questions × 12 tokens keep it to about 80.
    """
    from real_task import capitals_offset, smollm2

    from offsetlab.method.fusion import OffsetModel
    from offsetlab.worlds.real import CAPITALS_ALPHA, PROMPT_FORMAT, load_capitals

    base, small, tokenizer = smollm2()
    offset = capitals_offset().offset
    splits = load_capitals()
    records = (splits["forget"] + splits["forget_paraphrased"][:1] + splits["retain"][:1]
               + splits["holdout"][:1])
    remote = make_base(llama_server, tokenizer=tokenizer)
    prompts = [PROMPT_FORMAT.prompt(r.question) for r in records]
    local_model = OffsetModel(base, small, [(offset, CAPITALS_ALPHA)], tokenizer=tokenizer)
    remote_model = OffsetModel(remote, small, [(offset, CAPITALS_ALPHA)], tokenizer=tokenizer)
    local = local_model.generate(prompts, max_new_tokens=12, trace=True)
    prefixes, expected = [], []  # every step of every local answer, as a token-id prefix
    for prompt_ids, trace in zip(local_model.encode(prompts), local):
        chosen = [s.token_id for s in trace.steps]
        prefixes += [prompt_ids + chosen[:t] for t in range(len(chosen))]
        expected += chosen
    start = time.perf_counter()
    fused = remote_model.step(prefixes).fused
    seconds = time.perf_counter() - start
    remote_choice = fused.argmax(-1).tolist()

    agree = sum(a == b for a, b in zip(remote_choice, expected))
    rate = agree / len(expected)
    print(f"\nremote vs local fusion, same prefix: {agree}/{len(expected)} next tokens agree "
          f"({rate:.1%}); {seconds / len(prefixes):.2f} s per remote step, {remote.skipped} "
          "returned tokens skipped")
    for r, trace in zip(records, local):
        print(f"  {r.question!r}: local {trace.text!r}")
    assert rate >= 0.9
    assert remote.prompt_as == "text"  # llama-cpp-python takes no token ids
    assert remote.fingerprint().kind == "server" and llama_server in str(remote.fingerprint())
    # -inf outside the server's top tokens, but never NaN, and a finite best token per row
    assert not torch.isnan(fused).any() and torch.isfinite(fused.max(-1).values).all()


@pytest.mark.real
def test_cli_generates_through_the_server_with_an_offset(llama_server, tmp_path):
    """`offsetlab generate --base smollm2 --base-url URL --offset DIR`, as the README shows."""
    from real_task import capitals_offset, smollm2

    from offsetlab.offsets.artifact import Offset

    base, small, tokenizer = smollm2()
    Offset.from_training(capitals_offset(), [], name="capitals").save(
        tmp_path / "capitals")
    ask = [sys.executable, "-m", "offsetlab", "generate", "--base", "smollm2", "--base-url",
           llama_server, "--offset", str(tmp_path / "capitals"), "--max-new-tokens", "8"]
    # No --alpha: the offset carries the recipe's strength (0.75) and is used at it.
    kept = subprocess.run([*ask, "What is the capital of Italy?"],
                          capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0, kept.stderr
    assert "Rome" in kept.stdout
    neutral = subprocess.run([*ask, "--alpha", "0", "What is the capital of France?"],
                             capture_output=True, text=True, timeout=300)
    assert "Paris" in neutral.stdout, neutral.stderr  # α = 0: the served base's own answer
