"""The real panel under load: 20 compares from five visitors at once while two trainings
run, on 127.0.0.1 through gradio_client. Every request is answered (or cleanly refused),
trainings run one at a time without holding up compares, each visitor gets the answer to
its own question and keeps its own offset picked, the server still serves afterwards,
and its memory comes back."""

from __future__ import annotations

import gc
import html
import re
import shutil
import socket
import time

import psutil
import pytest
from conftest import FORGET_QUESTION, free_port, make_lab, noisy_offset

from offsetlab.frontends import app
from offsetlab.offsets.artifact import META

pytestmark = pytest.mark.slow

QUESTIONS = (FORGET_QUESTION, "when was Alra born ?", "where was Benn born ?", "who wrote the book ?")
ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
# Growth of the server's resident memory allowed after the load, once warmed up: the
# two new offsets are tiny; what it guards against is memory kept per request
# (20 requests of traces and figures would keep well above this if held).
RSS_TOLERANCE_MB = 60
# Steps of each of the two trainings: long enough that compares, which have their own lane,
# are answered while they run even on a loaded machine (8 steps took about as long as the
# 20 compares when two test suites shared the cores).
STEPS = 40


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def fused_text(answers_html: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", "", answers_html))
    return "".join(text.split("fused:")[1].split("gold:")[0].split())


def compare_args(question: str, alpha: float, max_new_tokens: int = 6):
    return (question, "random", [], alpha, max_new_tokens, False, 1.0, 0, 1.0, 0, 0.0)


def test_twenty_compares_and_two_trainings_at_once(tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    lab = make_lab()
    # The panel is started over a folder with a good offset and a broken one: it warns
    # about the broken one and offers the other.
    saved = tmp_path / "offsets"
    noisy_offset(lab.base, lab.reference, lab.tokenizer, 5, lab.splits["forget10"]).save(
        saved / "good")
    shutil.copytree(saved / "good", saved / "broken")
    (saved / "broken" / META).write_text("{")

    expected = {(q, a): "".join(lab.model([("random", a)]).generate(
        lab.prompt_format.prompt(q), 6).split()) for q in QUESTIONS for a in ALPHAS}
    trainings: list[tuple[float, float]] = []
    real_train = lab.train

    def timed_train(*args, **kwargs):  # the real training, its start and end recorded
        start = time.perf_counter()
        try:
            return real_train(*args, **kwargs)
        finally:
            trainings.append((start, time.perf_counter()))

    lab.train = timed_train
    port = free_port()
    with pytest.warns(UserWarning, match="not offering .*broken"):
        server = app.launch(port=port, lab=lab, offsets_dir=saved, registry=tmp_path / "none",
                            block=False)
    started = time.perf_counter()
    try:
        assert set(lab.offsets) == {"random", "seed5"}
        visitors = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(5)]
        # Warm up once (first calls allocate caches for good), then measure.
        visitors[0].predict(*compare_args(FORGET_QUESTION, 1.0), api_name="/compare")
        visitors[0].predict("forget10", "ga", 2, 1e-3, "warm", api_name="/train")
        gc.collect()
        before = rss_mb()

        loaded = time.perf_counter()
        trains = [visitors[i].submit("forget10", "npo_gd", STEPS, 1e-3, f"load-{i}",
                                     api_name="/train") for i in (0, 1)]
        asked, jobs = [], []
        # When each answer came back, taken as it arrives (the client calls back from its
        # own thread), not when this test gets round to reading it: on a busy machine the
        # test could read the first answer after both trainings had ended.
        answered_at: list[float] = []
        for n in range(20):
            question, alpha = QUESTIONS[n % len(QUESTIONS)], ALPHAS[n % len(ALPHAS)]
            asked.append((question, alpha))
            jobs.append(visitors[n % 5].submit(
                *compare_args(question, alpha), api_name="/compare",
                result_callbacks=[lambda *_: answered_at.append(time.perf_counter())]))
        for (question, alpha), job in zip(asked, jobs):
            answers, *_ = job.result(timeout=60)
            assert expected[(question, alpha)] in fused_text(answers), (question, alpha)
        statuses = [job.result(timeout=60)[0] for job in trains]
        assert all(f"step {STEPS}/{STEPS}" in s for s in statuses)
        deadline = time.monotonic() + 10  # the callbacks run just after the results land
        while len(answered_at) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(answered_at) == len(jobs)
        assert {"load-0", "load-1"} <= set(lab.offsets)

        # Trainings ran one after the other, and compares were answered meanwhile.
        (s1, e1), (s2, e2) = sorted(trainings[-2:])
        assert e1 <= s2, "two trainings ran at the same time"
        assert min(answered_at) < e2, "no compare was answered before the trainings ended"

        # Each visitor's offset picker is its own: the two who trained see their new
        # offset picked, the others keep theirs (the page's state, kept per session).
        picker = next(b for b in server.blocks.values()
                      if getattr(b, "label", None) == "Offset (trained in this lab)")

        def picked(visitor) -> str:  # what the server holds for that visitor's page
            shown = server.state_holder[visitor.session_hash].config_values.get(picker._id)
            return shown["props"]["value"] if shown else picker.value

        assert [picked(v) for v in visitors] == ["load-0", "load-1", "random", "random", "random"]

        # Caps hold through the API too, with the panel's message.
        # (gradio's slider refuses first; the panel's own check backs it, see test_app.py)
        with pytest.raises(AppError, match="greater than maximum value 64|from 1 to 64"):
            visitors[2].predict(*compare_args(FORGET_QUESTION, 1.0, 1000), api_name="/compare")
        with pytest.raises(AppError, match="at most 2,000"):
            visitors[2].predict(*compare_args("who " * 600, 1.0), api_name="/compare")
        # Still serving.
        answers, *_ = visitors[3].predict(*compare_args(FORGET_QUESTION, 1.0), api_name="/compare")
        assert expected[(FORGET_QUESTION, 1.0)] in fused_text(answers)
        gc.collect()
        after = rss_mb()
        print(f"\nRSS {before:.0f} MB -> {after:.0f} MB; the load took "
              f"{time.perf_counter() - loaded:.1f} s, the panel's whole run "
              f"{time.perf_counter() - started:.1f} s")
        assert after - before < RSS_TOLERANCE_MB
    finally:
        server.close()
        lab.train = real_train
    with pytest.raises(OSError):  # and it is closed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
