"""The notebook widgets, driven in-process: set values, click, check what they show."""

import pytest
from conftest import FORGET_QUESTION, make_lab

from offsetlab.frontends.widgets import PLOTLY_MIME, Compare, TrainMonitor
from offsetlab.offsets.artifact import Offset


@pytest.fixture
def panel():
    lab = make_lab()
    lab.add_offset(Offset(lab.offsets["random"].model, 0.0, {"name": "weak"}))
    p = Compare(lab, question=FORGET_QUESTION, offset="random")
    p.max_new_tokens.value = 6
    return p


def shown(output) -> dict:
    (item,) = output.outputs
    return item["data"][PLOTLY_MIME]


def test_compare_shows_both_answers_and_every_figure(panel):
    assert "part ways at token 0" in panel.answers.value
    assert set(panel.figures) == {"strip", "step", "heatmap", "divergence"}
    strip = shown(panel.outputs["strip"])
    assert strip["data"][0]["type"] == "heatmap"
    assert len(strip["data"][0]["z"][0]) == len(panel.comparison.fused.steps) <= 6
    assert panel.step.max == len(panel.comparison.fused.steps) - 1 and panel.step.value == 0


def test_every_control_redecodes(panel):
    before = panel.answers.value
    panel.alpha.value = 0.0
    assert "identical" in panel.answers.value and panel.answers.value != before
    assert panel.comparison.fused.alphas == [0.0]
    panel.alpha.value = 1.0
    panel.max_new_tokens.value = 3
    assert len(panel.comparison.fused.steps) <= 3
    panel.do_sample.value = True
    assert panel.status.value == ""
    panel.temperature.value = 0.5
    assert panel.comparison.fused.text  # sampled, seeded, still an answer


def test_the_dead_zone_slider_gives_the_base_where_the_offset_moves_it_little(panel):
    assert panel.dead_zone.value == panel.lab.dead_zone == 0.0
    panel.alpha.value = 0.5  # the offset still changes the first token at α 0.5 …
    assert "part ways at token 0" in panel.answers.value
    panel.dead_zone.value = 2.0  # … by less than 2 nats at every step of the base's answer
    assert "identical" in panel.answers.value
    assert panel.comparison.fused.text == panel.comparison.base.text


def test_changing_the_offset_resets_alpha_to_its_own_strength(panel):
    panel.offset.value = "weak"
    assert panel.alpha.value == 0.0 and panel.comparison.fused.alphas == [0.0]


def test_step_slider_redraws_the_candidate_bars(panel):
    assert shown(panel.outputs["step"])["layout"]["title"]["text"].startswith("step 0")
    panel.step.value = 2
    assert panel.figures["step"].layout.title.text.startswith("step 2")


def test_errors_are_shown_in_place(panel):
    panel.question.value = "   "
    assert "Type a question" in panel.status.value
    panel.question.value = "who is Fenn ?"  # any question can be compared ...
    assert panel.status.value == "" and panel.comparison.base.prompt.endswith("who is Fenn ?\nA:")
    panel.sweep_button.click()  # ... but the sweep needs the record's known answer
    assert "needs a question from the lab" in panel.status.value


def test_sweep_button_draws_answers_across_alpha(panel):
    panel.sweep_button.click()
    line, table = panel.figures["sweep"].data
    assert list(line.x) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert table.type == "table" and len(table.cells.values[1]) == 9


def test_a_lab_without_offsets_is_refused():
    lab = make_lab()
    lab.offsets.clear()
    with pytest.raises(ValueError, match="no offsets"):
        Compare(lab)


def test_train_monitor_is_the_trainers_callback():
    from offsetlab.frontends.explore import key_accuracy_probe
    from offsetlab.method.train import TrainConfig, train_offset

    lab = make_lab()
    forget, retain = lab.splits["forget10"], lab.splits["retain90"]
    monitor = TrainMonitor(checkpoint=key_accuracy_probe(lab, forget, retain[:1], max_new_tokens=3),
                           every=2, redraws=2)
    train_offset(lab.base, lab.reference, lab.tokenizer, forget, retain,
                 TrainConfig(steps=3), callback=monitor, progress=False)
    assert (monitor.progress.value, monitor.progress.max) == (3, 3)
    assert "step 3/3" in monitor.label.value
    assert [c["step"] for c in monitor.checkpoints] == [2, 3]  # every 2 steps and the last
    assert [h["step"] for h in monitor.history] == [1, 2, 3]
    assert "offset" not in monitor.history[0]  # no module kept alive in the history
    names = [t["name"] for t in shown(monitor.plot)["data"]]
    assert names == ["forget NLL", "retain NLL", "forget key-fact NLL", "objective", "forget key acc",
                     "retain key acc"]
