"""Damaged, edited or foreign offset folders: one clear error each, from ``Offset.load``,
the CLI and the panel — and loading never runs code (safetensors only, no pickle)."""

from __future__ import annotations

import copy
import json
import pathlib
import pickle
import shutil

import pytest
from conftest import make_lab, make_model, noisy_offset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offsetlab.frontends import app, cli
from offsetlab.offsets.artifact import META, WEIGHTS, Offset, OffsetFolderError, parse_meta


@pytest.fixture(scope="module")
def lab():
    return make_lab()


@pytest.fixture(scope="module")
def good(lab, tmp_path_factory):
    offset = noisy_offset(lab.base, lab.reference, lab.tokenizer, 5, lab.splits["forget10"])
    return offset.save(tmp_path_factory.mktemp("saved") / "good")


def files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def edit_meta(change):
    def apply(folder):
        meta = json.loads((folder / META).read_text())
        change(meta)
        (folder / META).write_text(json.dumps(meta))
    return apply


def save_weights(state_of):
    def apply(folder):
        from safetensors.torch import load_file, save_file

        save_file(state_of(load_file(str(folder / WEIGHTS))), str(folder / WEIGHTS))
    return apply


def renamed(state):
    first = sorted(state)[0]
    return {("renamed." + k if k == first else k): v for k, v in state.items()}


def other_model(state):
    return make_model(len(make_lab().tokenizer), 1, hidden=16).state_dict()


BREAKS = {
    "truncated weights": (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:5000]),
                          "not a complete safetensors file"),
    "empty weights": (lambda d: (d / WEIGHTS).write_bytes(b""), "not a complete safetensors file"),
    "metadata not JSON": (lambda d: (d / META).write_text('{"alpha": 1.0,'), "not valid JSON"),
    "metadata not UTF-8": (lambda d: (d / META).write_bytes(b'{"name": "\xff"}'), "not UTF-8"),
    "metadata a list": (lambda d: (d / META).write_text("[1, 2]"), "expected a JSON object"),
    "alpha missing": (edit_meta(lambda m: m.pop("alpha")), "'alpha' must be a finite number, got missing"),
    "alpha as text": (edit_meta(lambda m: m.update(alpha="strong")), "got str 'strong'"),
    "alpha infinite": (edit_meta(lambda m: m.update(alpha=float("inf"))), "'alpha' must be a finite"),
    "lora rank as text": (edit_meta(lambda m: m.update(lora={"rank": "8"})), "'lora' must be null"),
    "fingerprints missing": (edit_meta(lambda m: m.pop("fingerprints")), "'fingerprints' must be"),
    "a fingerprint edited": (edit_meta(lambda m: m["fingerprints"].update(reference="3f2a")),
                             "fingerprints.reference is not a fingerprint record"),
    "an old format": (edit_meta(lambda m: m.update(format_version=1)), "offset format 1 is not 2"),
    "a tensor renamed": (save_weights(renamed), "1 tensor(s) missing"),
    "another model's weights": (save_weights(other_model), "of another shape"),
}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_broken_folder_gives_one_clear_error_and_is_left_as_it_was(lab, good, tmp_path, how):
    damage, message = BREAKS[how]
    folder = tmp_path / "broken"
    shutil.copytree(good, folder)
    damage(folder)
    before, offsets = files(folder), dict(lab.offsets)
    with pytest.raises(OffsetFolderError) as err:
        lab.load_offset(folder)
    text = str(err.value)
    assert message in text and str(folder) in text
    assert "retrain" in text  # what to do
    assert files(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    assert lab.offsets == offsets


def test_a_missing_weights_file_is_named(lab, good, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(good, folder)
    (folder / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder} is not a saved offset"):
        Offset.load(folder, lab.reference)


class RunsCode:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_offsets_load_only_from_safetensors_never_from_a_pickle(lab, good, tmp_path):
    marker = tmp_path / "code-ran"
    hostile = pickle.dumps({"state_dict": RunsCode(marker)})
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "check")))  # the payload really runs code
    assert (tmp_path / "check").exists()

    only_pickle = tmp_path / "only-pickle"
    only_pickle.mkdir()
    shutil.copy(good / META, only_pickle / META)
    (only_pickle / "pytorch_model.bin").write_bytes(hostile)
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin but no model.safetensors") as err:
        Offset.load(only_pickle, lab.reference, lab.tokenizer)
    assert "only from safetensors" in str(err.value)

    both = tmp_path / "both"
    shutil.copytree(good, both)
    (both / "pytorch_model.bin").write_bytes(hostile)
    assert Offset.load(both, lab.reference, lab.tokenizer).alpha == 1.0  # the safetensors file
    assert not marker.exists()


def test_the_cli_prints_the_error_without_a_traceback(lab, good, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "cut"
    shutil.copytree(good, folder)
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:5000])
    monkeypatch.setattr("offsetlab.frontends.cli.load_lab", lambda args: make_lab())
    assert cli.main(["generate", "--offset", str(folder), "where was Alra born ?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"offsetlab generate: {folder / WEIGHTS}: not a complete safetensors")
    assert "Traceback" not in err and err.count("\n") == 1


def test_the_panel_offers_the_good_offsets_and_passes_over_a_broken_one(lab, good, tmp_path):
    for name in ("a-good", "c-good"):
        shutil.copytree(good, tmp_path / name)
    shutil.copytree(good, tmp_path / "b-broken")
    (tmp_path / "b-broken" / META).write_text("{")
    panel_lab = make_lab()
    with pytest.warns(UserWarning, match="not offering .*b-broken.*not valid JSON"):
        added = app.register_saved(panel_lab, tmp_path)
    assert added == ["seed5", "seed5-2"] and set(panel_lab.offsets) == {"random", *added}
    assert app.build_app(panel_lab) is not None  # the panel is built around the others


# -- fuzz: the metadata parser and the loader never fail in another way -------------------

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=3),
    max_leaves=8)


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_metadata_from_random_bytes_is_a_dict_or_an_offset_folder_error(raw):
    try:
        assert isinstance(parse_meta(raw, "x/offset.json"), dict)
    except OffsetFolderError as err:
        assert str(err).startswith("x/offset.json: ")


@FUZZ
@given(st.data())
def test_edited_metadata_loads_or_gives_a_clear_error(lab, good, tmp_path, data):
    meta = json.loads((good / META).read_text())
    edited = copy.deepcopy(meta)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        key = data.draw(st.sampled_from(sorted(meta)), label="field")
        edited[key] = data.draw(json_values, label=key)
    folder = tmp_path / "edited"
    if not folder.exists():
        shutil.copytree(good, folder)
    (folder / META).write_text(json.dumps(edited))
    try:
        Offset.load(folder, lab.reference, lab.tokenizer)
    except (OffsetFolderError, ValueError) as err:
        assert str(folder) in str(err)


def test_an_offset_saved_before_an_option_existed_loads_with_that_option_off(lab, good, tmp_path):
    from dataclasses import asdict

    from offsetlab.method.train import TrainConfig

    old = tmp_path / "old"
    shutil.copytree(good, old)
    # as written before until_forgotten and paraphrased_answers joined the training config
    edit_meta(lambda meta: [meta["config"].pop(k) for k in ("until_forgotten", "paraphrased_answers")])(old)
    config = Offset.load(old, lab.reference, lab.tokenizer).meta["config"]
    assert config["until_forgotten"] == 0 and config["paraphrased_answers"] is False
    assert config == Offset.load(good, lab.reference, lab.tokenizer).meta["config"]
    assert set(config) == set(asdict(TrainConfig()))
