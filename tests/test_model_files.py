"""A model's files and a stored config read back in this process: what a logged model folder holds, how it is made
into the model again, and each way a file can be missing, malformed or hostile, refused in one line with nothing
run. (The CLI's encode, evaluate and resume tests hold the same end to end in other processes; these are what
mutation testing of the stored-config and model loading can see: docs/MUTATION.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from evil_model import Payload
from omegaconf import OmegaConf

import aeexp
from aeexp import model_files, models, stored_config

SHAPE = (1, 8, 8)
CONFIG = OmegaConf.to_yaml(OmegaConf.create({
    "dataset": {"name": "digits"},
    "model": {"_target_": "aeexp.models.DenseAutoencoder", "name": "ae", "widths": [16], "bottleneck": 4,
              "code_norm": "none"}}))


def _model(bottleneck: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.DenseAutoencoder(SHAPE, widths=[16], bottleneck=bottleneck, code_norm="none")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder as every run logs it."""
    model_files.write(tmp_path / "model", _model(), CONFIG)
    return tmp_path / "model"


def _refusal(folder: Path) -> str:
    """The one line :func:`model_files.load` refuses the model folder with."""
    with pytest.raises(model_files.ModelFilesError) as err:
        model_files.load(folder, "run r")
    return str(err.value)


@pytest.fixture(autouse=True)
def _torch_unpickles_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.load's default turns weights_only off under this variable: only an explicit weights_only=True holds."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_the_three_files_make_the_same_model_again_on_the_cpu_in_eval_mode(tmp_path):
    model = _model()
    written = model_files.write(tmp_path / "model", model, CONFIG)
    folder = tmp_path / "model"
    assert written == [folder / "weights.pt", folder / "config.yaml", folder / "model.json"]
    assert model_files.present(folder)
    assert json.loads((folder / "model.json").read_text()) == {"format_version": 1, "image_shape": [1, 8, 8],
                                                               "aeexp": aeexp.__version__}
    assert (folder / "config.yaml").read_text() == CONFIG
    assert set(torch.load(folder / "weights.pt", weights_only=True)) == set(model.state_dict())

    rebuilt = model_files.load(folder, "run r")
    assert rebuilt.dataset == "digits"
    assert type(rebuilt.model) is models.DenseAutoencoder and not rebuilt.model.training
    assert tuple(rebuilt.model.image_shape) == SHAPE
    images = torch.rand(5, *SHAPE)
    with torch.no_grad():
        assert torch.equal(rebuilt.model.encode(images), model.eval().encode(images))
    for key, value in rebuilt.model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, model.state_dict()[key]), key


def test_a_config_without_a_dataset_name_gives_no_dataset(folder):
    for dataset in ("", "dataset: {}\n", "dataset: {name: ''}\n"):
        (folder / "config.yaml").write_text(CONFIG.split("model:")[0].replace("dataset:\n  name: digits\n", "")
                                            + dataset + "model:" + CONFIG.split("model:")[1])
        assert model_files.load(folder, "it").dataset is None, dataset


@pytest.mark.parametrize("name", ["weights.pt", "config.yaml", "model.json"])
def test_a_missing_file_is_named(folder, name):
    (folder / name).unlink()
    assert not model_files.present(folder)
    message = _refusal(folder)
    assert message == f"run r: {folder} lacks {name}"


def test_every_missing_file_is_named_at_once(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    message = _refusal(tmp_path)
    assert message == f"run r: {tmp_path} lacks weights.pt, model.json"
    (tmp_path / "weights.pt").mkdir()  # not a file
    assert not model_files.present(tmp_path)


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "JSONDecodeError"),
    ('{"format_version": 1}', "KeyError"),
    ('{"image_shape": 3}', "TypeError"),
    ('{"image_shape": ["a", 8, 8]}', "ValueError"),
])
def test_an_unreadable_model_json_is_named(folder, text, reason):
    (folder / "model.json").write_text(text)
    message = _refusal(folder)
    assert message.startswith(f"run r: {folder / 'model.json'} is unreadable ({reason}: ")
    assert "\n" not in message


@pytest.mark.parametrize("shape", [[8, 8], [1, 8, 8, 1], [0, 8, 8], [1, 8, 0], [1, -8, 8]])
def test_an_image_shape_that_is_not_c_h_w_is_refused(folder, shape):
    (folder / "model.json").write_text(json.dumps({"format_version": 1, "image_shape": shape}))
    message = _refusal(folder)
    assert message == (f"run r: {folder / 'model.json'} gives the image shape {shape}; expected [C, H, W]")


def test_the_smallest_image_shape_is_taken(folder):
    """One channel of one pixel is an image shape (the check is >= 1, not > 1): the model class is asked for it."""
    (folder / "model.json").write_text(json.dumps({"format_version": 1, "image_shape": [1, 1, 1]}))
    with pytest.raises(model_files.ModelFilesError, match=r"^run r cannot be made here from its config: "
                                                          r"model\.bottleneck=4 is invalid"):
        model_files.load(folder, "run r")  # the class is asked to make it, and says why it cannot


@pytest.mark.parametrize(("text", "expected"), [
    ("model: [unclosed\n", "run r's extra_files/config.yaml is unreadable (ParserError: while parsing a flow "
                           "sequence)"),
    ("- a list\n", "run r's extra_files/config.yaml is not a config (a YAML mapping); it was not written by aeexp"),
    ("seed: 0\n", "run r: {config} has no model section; it is not an aeexp run's config"),
    ("model: ae32\n", "run r: {config} has no model section; it is not an aeexp run's config"),
])
def test_a_config_that_is_not_an_aeexp_runs_is_refused(folder, text, expected):
    (folder / "config.yaml").write_text(text)
    message = _refusal(folder)
    assert message.startswith(expected.format(config=folder / "config.yaml"))
    assert "\n" not in message


def test_an_undecodable_config_is_named(folder):
    (folder / "config.yaml").write_bytes(b"model: \xff\xfe\n")
    message = _refusal(folder)
    assert message.startswith(f"run r: {folder / 'config.yaml'} is unreadable (UnicodeDecodeError: ")


def test_a_config_naming_another_class_builds_nothing(folder, tmp_path):
    marker = tmp_path / "ran"
    (folder / "config.yaml").write_text(CONFIG.replace("aeexp.models.DenseAutoencoder", "os.system")
                                        + f"command: touch {marker}\n")
    message = _refusal(folder)
    assert message.startswith("run r's extra_files/config.yaml has model._target_=os.system: from a stored "
                              "config aeexp builds only its own classes")
    assert not marker.exists()
    with stored_config.allowing(["evil_model.EvilAE"]):  # allowed: then built like aeexp's own
        (folder / "config.yaml").write_text(CONFIG.replace("aeexp.models.DenseAutoencoder", "evil_model.EvilAE"))
        assert type(model_files.load(folder, "run r").model).__name__ == "EvilAE"


def test_only_the_model_section_is_built_from(folder):
    """A stored config's other targets (a run's metric list, say) are never built from a model folder, so an
    unknown one there is no reason to refuse the model."""
    (folder / "config.yaml").write_text(CONFIG + "metrics:\n  odd:\n    _target_: mine.metric\n")
    assert type(model_files.load(folder, "run r").model) is models.DenseAutoencoder


def test_an_interpolation_in_the_config_is_refused_not_resolved(folder, monkeypatch):
    monkeypatch.setenv("AEEXP_SECRET", "16")
    (folder / "config.yaml").write_text(CONFIG.replace("- 16", "- ${oc.env:AEEXP_SECRET}"))
    message = _refusal(folder)
    assert message == ("run r's extra_files/config.yaml holds the interpolation model.widths.0: "
                       "'${oc.env:AEEXP_SECRET}', which aeexp never writes (it stores configs resolved) and "
                       "never resolves in a stored config: refused, nothing was read or run")


def test_a_config_the_model_class_refuses_is_one_line(folder):
    (folder / "config.yaml").write_text(CONFIG.replace("bottleneck: 4", "bottleneck: 0"))
    message = _refusal(folder)
    assert message.startswith("run r cannot be made here from its config: ") and "\n" not in message


def test_weights_with_a_pickle_payload_run_nothing(folder, tmp_path):
    marker = tmp_path / "payload-ran"
    state = torch.load(folder / "weights.pt", weights_only=True)
    state["note"] = Payload(str(marker))
    torch.save(state, folder / "weights.pt")
    message = _refusal(folder)
    assert message.startswith(f"run r: {folder / 'weights.pt'} is not a plain state_dict of tensors "
                              "(UnpicklingError: ")
    assert "\n" not in message and not marker.exists()


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "EOFError"),
    (b"PK\x03\x04 not a zip", "RuntimeError"),
    (b"\x80\x02 not a pickle", "UnpicklingError"),
])
def test_damaged_weights_are_named(folder, content, reason):
    (folder / "weights.pt").write_bytes(content)
    message = _refusal(folder)
    assert message.startswith(f"run r: {folder / 'weights.pt'} is not a plain state_dict of tensors "
                              f"({reason}")


def test_weights_that_are_not_a_state_dict_are_named(folder):
    torch.save([torch.zeros(2)], folder / "weights.pt")
    message = _refusal(folder)
    assert message == f"run r: {folder / 'weights.pt'} holds a list, not a state_dict"


def test_weights_of_another_model_do_not_fit(folder):
    torch.save(_model(bottleneck=3).state_dict(), folder / "weights.pt")
    text = _refusal(folder)
    assert text.startswith(f"run r: the weights in {folder / 'weights.pt'} do not fit the model its config "
                           "describes (Error(s) in loading state_dict for DenseAutoencoder:")
    assert "\n" not in text


# ------------------------------------------------------------------------------------------- stored configs


def test_a_stored_config_is_parsed_as_data():
    config = stored_config.parse("model:\n  _target_: x.Y\n  widths: [1, 2]\n", "it")
    assert OmegaConf.to_container(config) == {"model": {"_target_": "x.Y", "widths": [1, 2]}}
    for text, message in (("[1, 2]\n", "it is not a config (a YAML mapping); it was not written by aeexp"),
                          ("a: 'unclosed\n", "it is unreadable (ScannerError: while scanning a quoted scalar)"),
                          ("a: [1\n", "it is unreadable (ParserError: while parsing a flow sequence)")):
        with pytest.raises(stored_config.StoredConfigError) as err:
            stored_config.parse(text, "it")
        assert str(err.value) == message  # the first line of YAML's many


@pytest.mark.parametrize(("text", "key"), [
    ("a: ${b}\nb: 1\n", "a"),
    ("a:\n  b: [1, 'x${oc.env:HOME}']\n", "a.b.1"),
    ("a:\n  - {c: '${oc.decode:1}'}\n", "a.0.c"),
])
def test_an_interpolation_anywhere_is_refused_by_its_key(text, key):
    with pytest.raises(stored_config.StoredConfigError, match=rf"^it holds the interpolation {key}: "):
        stored_config.parse(text, "it")


def test_a_long_interpolation_is_cut_in_the_message():
    with pytest.raises(stored_config.StoredConfigError) as err:
        stored_config.parse(f"a: '${{oc.env:{'X' * 300}}}'\n", "it")
    value = f"${{oc.env:{'X' * 300}}}"
    assert str(err.value).startswith(f"it holds the interpolation a: {value[:120]!r}, which aeexp never writes")


def test_a_target_that_is_not_a_dotted_path_is_refused():
    for value in ("1", "[a.B]", "{a: 1}"):
        config = OmegaConf.create(f"model:\n  _target_: {value}\n")
        with pytest.raises(stored_config.StoredConfigError) as err:
            stored_config.check_targets(config, "it")
        assert str(err.value).startswith("it has model._target_=") and "not a dotted path" in str(err.value)


def test_a_top_level_target_and_a_null_one():
    with pytest.raises(stored_config.StoredConfigError, match=r"^it has _target_=os\.system: "):
        stored_config.check_targets(OmegaConf.create({"_target_": "os.system"}), "it")
    stored_config.check_targets(OmegaConf.create({"scheduler": {"_target_": None}}), "it")
    after_a_null = OmegaConf.create({"scheduler": {"_target_": None}, "model": {"_target_": "os.system"}})
    with pytest.raises(stored_config.StoredConfigError, match=r"^it has model\._target_=os\.system: "):
        stored_config.check_targets(after_a_null, "it")  # a null target ends nothing: the next is checked
    named = OmegaConf.create({"_target_": "mine.Top"})
    stored_config.check_targets(named, "it", current=named)


def test_the_refusal_says_how_to_allow_the_class():
    with pytest.raises(stored_config.StoredConfigError) as err:
        stored_config.check_targets(OmegaConf.create({"model": {"_target_": "mine.AE"}}), "it")
    assert str(err.value) == (
        "it has model._target_=mine.AE: from a stored config aeexp builds only its own classes (aeexp.models, "
        "aeexp.data, torch.optim), one given again on the command line (model=...) or one allowed "
        "(allow_targets=[mine.AE]; --allow-target mine.AE for evaluate and encode); nothing was built or run")


def test_given_again_means_the_same_target_at_the_same_key():
    stored = OmegaConf.create({"model": {"_target_": "mine.AE"}})
    for current in ({"model": {"_target_": "mine.Other"}}, {"dataset": {"_target_": "mine.AE"}}, {"model": {}},
                    {"model": {"_target_": "${missing}"}}):
        with pytest.raises(stored_config.StoredConfigError):
            stored_config.check_targets(stored, "it", current=OmegaConf.create(current))
    stored_config.check_targets(stored, "it", current=OmegaConf.create({"model": {"_target_": "mine.AE"}}))


def test_an_allow_list_holds_only_inside_its_block_and_keeps_what_was_there():
    stored = OmegaConf.create({"model": {"_target_": "mine.AE"}})
    with stored_config.allowing(["mine.AE"]):
        with stored_config.allowing(["mine.AE", "mine.Other"]):
            stored_config.check_targets(stored, "it")
        stored_config.check_targets(stored, "it")  # the outer block's entry outlives the inner block
    with pytest.raises(stored_config.StoredConfigError):
        stored_config.check_targets(stored, "it")


def test_read_parses_and_checks():
    assert stored_config.read("model: {_target_: aeexp.models.DenseAutoencoder}\n", "it").model._target_ == (
        "aeexp.models.DenseAutoencoder")
    with pytest.raises(stored_config.StoredConfigError, match=r"^it has model\._target_=mine\.AE: "):
        stored_config.read("model: {_target_: mine.AE}\n", "it")
    with pytest.raises(stored_config.StoredConfigError, match=r"^it is not a config"):
        stored_config.read("[1]\n", "it")
    assert stored_config.read("model: {_target_: mine.AE}\n", "it", allowed=["mine.AE"]).model._target_ == "mine.AE"
    current = OmegaConf.create({"model": {"_target_": "mine.AE"}})
    assert stored_config.read("model: {_target_: mine.AE}\n", "it", current=current).model._target_ == "mine.AE"


def test_a_target_is_read_as_written_never_resolved(monkeypatch):
    """A ``_target_`` put there as an interpolation (only :func:`check_targets` sees it, e.g. on a config that was
    not parsed from text) is the text itself, which is no class of aeexp's: the environment is never read."""
    monkeypatch.setenv("AEEXP_TARGET", "aeexp.models.DenseAutoencoder")
    config = OmegaConf.create({"model": {"_target_": "${oc.env:AEEXP_TARGET}"}})
    assert stored_config.targets(config) == [("model", "${oc.env:AEEXP_TARGET}")]
    with pytest.raises(stored_config.StoredConfigError, match=r"^it has model\._target_=\$\{oc\.env:AEEXP_TARGET\}"):
        stored_config.check_targets(config, "it")


def test_torch_optim_names_only_what_torch_optim_holds():
    for other in ("evil.module.Adam", "mine.optim.SGD", "torch.optim.NoSuchOptimizer", "torch.optim.Adam.nothing"):
        assert not stored_config.shipped(other), other


def test_a_long_error_is_cut_to_one_line_of_300_characters():
    assert stored_config._one_line(ValueError("x" * 400)) == "ValueError: " + "x" * 288
    assert stored_config._one_line(ValueError("first\nsecond")) == "ValueError: first"


class SilentFailure(models.DenseAutoencoder):
    """A user's model whose weights loading fails without a message."""

    def load_state_dict(self, *args, **kwargs):
        raise RuntimeError()


def test_weights_refused_without_a_message_are_named_by_the_error(folder):
    (folder / "config.yaml").write_text(CONFIG.replace("aeexp.models.DenseAutoencoder",
                                                       "test_model_files.SilentFailure"))
    with stored_config.allowing(["test_model_files.SilentFailure"]):
        message = _refusal(folder)
    assert message == (f"run r: the weights in {folder / 'weights.pt'} do not fit the model its config "
                       "describes (RuntimeError)")


def test_a_model_folder_is_made_where_it_does_not_exist_and_written_again_over_itself(tmp_path):
    folder = tmp_path / "a" / "b" / "model"
    model_files.write(folder, _model(), CONFIG)
    model_files.write(folder, _model(bottleneck=3), CONFIG.replace("bottleneck: 4", "bottleneck: 3"))
    assert model_files.load(folder, "it").model.bottleneck == 3
