"""The panel's handlers as plain functions, then the real panel served and called over HTTP."""

import html
import re
import socket

import pytest
from conftest import (
    FORGET_QUESTION,
    free_port,
    fused_answer,
    make_lab,
    make_model,
    registry_of_two_requests,
)

from offsetlab.frontends import app
from offsetlab.frontends.explore import Decoding
from offsetlab.offsets.artifact import Offset


@pytest.fixture(scope="module")
def lab():
    return make_lab()


def test_compare_view_marks_where_the_answers_part(lab):
    v = app.compare_view(lab, FORGET_QUESTION, "random", 1.0, Decoding(max_new_tokens=6))
    c = v.comparison
    assert c.base.text != c.fused.text and c.divergence == 0 and v.step == 0
    assert "part ways at token 0" in v.answers
    assert v.strip.layout.shapes[0].x0 == -0.5  # the divergence step is outlined
    assert v.bars.layout.title.text.startswith("step 0")
    assert len(v.heatmap.data[0].z) == len(c.fused.steps) == len(v.divergence.data[0].x)

    same = app.compare_view(lab, FORGET_QUESTION, "random", 0.0, Decoding(max_new_tokens=6))
    assert same.comparison.divergence is None and "identical" in same.answers


def test_the_dead_zone_slider_gives_the_base_where_the_offset_moves_it_little(lab):
    decoding = Decoding(max_new_tokens=6)
    everywhere = app.compare_view(lab, FORGET_QUESTION, "random", 0.5, decoding, dead_zone=0.0)
    assert everywhere.comparison.divergence == 0  # at α 0.5 the offset changes the first token
    quiet = app.compare_view(lab, FORGET_QUESTION, "random", 0.5, decoding, dead_zone=app.MAX_DEAD_ZONE)
    assert quiet.comparison.divergence is None and "identical" in quiet.answers
    assert quiet.comparison.fused.text == everywhere.comparison.base.text
    assert app.compare_view(lab, FORGET_QUESTION, "random", 0.5, decoding).comparison.fused.text == \
        everywhere.comparison.fused.text  # the lab's own dead zone (0 in the toy world)
    for bad in (-0.1, app.MAX_DEAD_ZONE + 1, float("nan")):
        with pytest.raises(ValueError, match="Dead zone must be a number from 0 to 2"):
            app.compare_view(lab, FORGET_QUESTION, "random", 0.5, decoding, dead_zone=bad)


def test_compare_view_refuses_unknown_offsets_and_empty_questions(lab):
    with pytest.raises(KeyError, match="Unknown offset"):
        app.compare_view(lab, FORGET_QUESTION, "/etc/passwd", 1.0)
    with pytest.raises(ValueError, match="question"):
        app.compare_view(lab, "  ", "random", 1.0)
    with pytest.raises(ValueError, match="Train tab"):
        app.compare_view(lab, FORGET_QUESTION, None, 1.0)


def test_train_updates_stream_progress_then_register_the_offset():
    lab = make_lab()  # training adds offsets: keep the shared lab as it is
    updates = [(u.step, u.name, len(u.history)) for u in
               app.train_updates(lab, "forget10", "npo_gd", steps=4, redraws=2)]
    assert updates == [(2, None, 2), (4, None, 4), (4, "forget10-npo_gd", 4)]
    assert set(lab.offsets) == {"random", "forget10-npo_gd"}
    *_, last = app.train_updates(lab, "forget10", "ga", steps=1)
    assert last.name == "forget10-ga" and "step 1/1" in last.status()
    # once trained, the panel asks the fused model every forget question as it will be served
    forget, _ = lab.training_sets("forget10")
    assert last.check.total == len(forget) and last.check.settings == "α 1, dead zone 0"
    stated = {q for _, q, _ in last.check.stating}
    assert stated <= {r.question for r in forget}
    assert f"check (α 1, dead zone 0): {last.check.headline()}" in last.status()
    assert [t.name for t in last.figure().data][:1] == ["forget NLL"]
    with pytest.raises(ValueError, match="not a forget split"):
        list(app.train_updates(lab, "retain90", "npo_gd", steps=1))


def test_the_forget_check_shows_what_is_still_stated_escaped_and_cut_after_three():
    from offsetlab.frontends.explore import ForgetCheck

    clean = app.TrainUpdate(1, 1, name="x", check=ForgetCheck(4, [], 0.75, 0.3))
    assert "check (α 0.75, dead zone 0.3): the fused model states none of the 4 forget facts" in clean.status()
    assert "<li>" not in clean.status()
    stating = [(i, f"Q{i} <b>?", f"A{i}") for i in range(5)]
    html = app.TrainUpdate(1, 1, name="x", check=ForgetCheck(9, stating, 1.0, 0.0)).status()
    assert "still states 5 of the 9 forget facts" in html and html.count("<li>") == 4
    assert "Q0 &lt;b&gt;? → <i>A0</i>" in html and "Q3" not in html and "… and 2 more" in html
    assert "train longer" in html and "train longer" not in clean.status()


def test_evaluate_view_compares_base_fused_and_gold(lab):
    v = app.evaluate_view(lab, "random", 1.0, "forget10", max_records=2, max_new_tokens=4)
    assert list(v.table["model"]) == ["base", "fused", "gold"]
    assert "forget10/forget_quality" in v.table and "model_utility" in v.table
    assert set(v.rows["split"]) == {"forget10", "retain90", "world_facts", "holdout"}
    assert {t.name for t in v.bars.data} == {"base", "fused", "gold"}
    assert [t.name for t in v.scatter.data] == ["base", "fused", "gold"]


def test_saved_offsets_are_registered_only_for_their_reference(tmp_path):
    from offsetlab.method.train import TrainConfig, train_offset

    lab = make_lab()  # its own: this test adds an offset

    forget = lab.splits["forget10"]
    result = train_offset(lab.base, lab.reference, lab.tokenizer, forget,
                          config=TrainConfig(objective="ga", steps=1), progress=False)
    Offset.from_training(result, forget, name="saved").save(tmp_path / "saved")
    other = make_lab()
    other.reference = make_model(len(lab.tokenizer), 9)  # a different small model
    assert app.register_saved(lab, tmp_path) == ["saved"]
    with pytest.warns(UserWarning, match="not offering"):
        assert app.register_saved(other, tmp_path) == []
    assert app.register_saved(lab, tmp_path / "missing") == []


def test_the_real_panel_answers_over_http(tmp_path):
    from gradio_client import Client

    lab = make_lab()
    port = free_port()
    server = app.launch(port=port, lab=lab, offsets_dir=None, registry=tmp_path / "none",
                        block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        answers, strip, step, bars, heatmap, div = client.predict(
            FORGET_QUESTION, "random", [], 1.0, 6, False, 1.0, 0, 1.0, 0, 0.0, api_name="/compare")
        assert "part ways at token 0" in answers
        quiet = client.predict(FORGET_QUESTION, "random", [], 0.5, 6, False, 1.0, 0, 1.0, 0, 2.0,
                               api_name="/compare")[0]
        assert "identical" in quiet  # the dead zone's slider reaches the fused model
        assert strip["type"] == "plotly" and '"heatmap"' in strip["plot"]
        assert step["value"] == 0
        status, loss, offset, _ = client.predict("forget10", "npo_gd", 3, 1e-3, "",
                                                 api_name="/train")
        assert "step 3/3" in status and offset["value"] == "forget10-npo_gd"
        assert "forget10-npo_gd" in lab.offsets
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_ticked_registry_requests_are_fused_together(tmp_path):
    lab = make_lab()
    registry_of_two_requests(lab, tmp_path / "reg")
    requests = app.registered_requests(lab, tmp_path / "reg")
    assert requests == {"a@1": [("a@1", 1.0)], "b@1": [("b@1", 0.5)],
                        "a-and-b@1": [("a@1", 1.0), ("b@1", 0.5)]}
    assert app.ticked_requests(requests, ["a@1", "a-and-b@1"]) == [("a@1", 1.0), ("b@1", 0.5)]
    with pytest.raises(KeyError, match="not a registered forget request"):
        app.ticked_requests(requests, ["c@1"])

    decoding = Decoding(max_new_tokens=6)
    both = app.compare_view(lab, FORGET_QUESTION, app.ticked_requests(requests, ["a@1", "b@1"]),
                            1.0, decoding).comparison.fused.text
    only_a = app.compare_view(lab, FORGET_QUESTION, app.ticked_requests(requests, ["a@1"]),
                              1.0, decoding).comparison.fused.text
    assert both == fused_answer(lab, [("a@1", 1.0), ("b@1", 0.5)])
    assert only_a == fused_answer(lab, [("a@1", 1.0)])
    assert both != only_a  # ticking b changes the answer: b is really fused
    half = app.compare_view(lab, FORGET_QUESTION, [("a@1", 1.0), ("b@1", 0.5)], 0.5, decoding)
    assert half.comparison.fused.text == fused_answer(lab, [("a@1", 0.5), ("b@1", 0.25)])
    with pytest.raises(ValueError, match="tick a forget request"):
        app.compare_view(lab, FORGET_QUESTION, [], 1.0)
    assert app.registered_requests(lab, tmp_path / "missing") == {}


def test_the_real_panel_toggles_registered_requests(tmp_path):
    from gradio_client import Client

    lab = make_lab()
    registry_of_two_requests(lab, tmp_path / "reg")
    port = free_port()
    server = app.launch(port=port, lab=lab, offsets_dir=None, registry=tmp_path / "reg",
                        block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)

        def fused(ticked):
            answers, *_ = client.predict(FORGET_QUESTION, "random", ticked, 1.0, 6, False, 1.0,
                                         0, 1.0, 0, api_name="/compare")
            text = html.unescape(re.sub(r"<[^>]+>", "", answers))  # the answers' text
            return "".join(text.split("fused:")[1].split())  # the fused one's, spaces aside

        with_a, with_both, with_none = fused(["a@1"]), fused(["a@1", "b@1"]), fused([])
        def expected(active):
            return "".join(fused_answer(lab, active).split())

        assert expected([("a@1", 1.0)]) in with_a
        assert expected([("a@1", 1.0), ("b@1", 0.5)]) in with_both and with_both != with_a
        assert expected([("random", 1.0)]) in with_none  # nothing ticked: the offset above
        table, *_ = client.predict("random", ["a-and-b@1"], 1.0, "forget10", 2,
                                   api_name="/evaluate")
        assert [row[0] for row in table["data"]] == ["base", "fused", "gold"]
    finally:
        server.close()


def test_inputs_are_capped_with_a_message(lab):
    padded = FORGET_QUESTION.ljust(app.MAX_QUESTION_CHARS)  # at the cap: still answered
    assert app.compare_view(lab, padded, "random", 1.0, Decoding(max_new_tokens=2)).answers
    with pytest.raises(ValueError, match="2,001 characters; the panel takes at most 2,000"):
        app.compare_view(lab, padded + "?", "random", 1.0)
    with pytest.raises(ValueError, match="max new tokens must be a number from 1 to 64"):
        app.compare_view(lab, FORGET_QUESTION, "random", 1.0, Decoding(max_new_tokens=65))
    with pytest.raises(ValueError, match="α must be a finite number"):
        app.compare_view(lab, FORGET_QUESTION, "random", float("nan"))
    with pytest.raises(ValueError, match="Records per split must be a number from 1 to 200"):
        app.evaluate_view(lab, "random", 1.0, "forget10", max_records=201)
    with pytest.raises(ValueError, match="max new tokens must be"):
        app.evaluate_view(lab, "random", 1.0, "forget10", max_new_tokens=10_000)
    with pytest.raises(ValueError, match="Steps must be a number from 1 to 400"):
        next(app.train_updates(lab, "forget10", steps=401))
    with pytest.raises(ValueError, match="at most 80"):
        next(app.train_updates(lab, "forget10", steps=1, name="x" * 81))
    assert set(lab.offsets) == {"random"}  # nothing refused was trained


def test_the_queue_has_lanes_and_a_size(lab):
    blocks = app.build_app(lab)
    assert blocks._queue.max_size == app.QUEUE_SIZE
    assert blocks._queue.default_concurrency_limit == app.COMPARE_LANES
    lanes = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in blocks.fns.values()
             if fn.api_name in ("compare", "train", "evaluate")}
    assert lanes["train"] == ("train", 1) and lanes["evaluate"] == ("evaluate", 1)
    assert lanes["compare"][0] not in ("train", "evaluate")  # compares never wait on training
