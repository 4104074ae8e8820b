"""Checkpoint readers and the orbax store: formats, nesting, refusals, damage, and atomic saves.

A CIFAR ResNet-20 (0.27M parameters, akamaster layout) with random weights stands in for a real
checkpoint; every readable variant must convert to exactly the variables of its in-memory state dict.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import shlex

import jax
import numpy as np
import pytest
import torch

import torch_ref_resnet_vgg as ref
from conftest import shared_path
from xai_jax import models, weights
from xai_jax.errors import XaiJaxError
from xai_jax.weights import store


class TrainingConfig:
    """A custom class, as training scripts pickle next to their weights."""

    def __init__(self, lr: float):
        self.lr = lr


class RunsCommand:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, command: str, function=os.system):
        self.command, self.function = command, function

    def __reduce__(self):
        return self.function, (self.command,)


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def cifar20():
    """``(torch model, expected Flax variables)`` of a seeded CIFAR ResNet-20 with random BN statistics."""
    torch.manual_seed(0)
    model = ref.cifar_resnet(20)
    ref.randomize_batch_norm(model, torch.Generator().manual_seed(0))
    expected = models.get("cifar_resnet20").convert(ref.state_dict_numpy(model))
    return model, expected


def _assert_same_tree(got, want):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for a, b in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _prefixed(state_dict):
    return {f"module.{k}": v for k, v in state_dict.items()}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("layout", ["plain", "nested_module_prefix"])
def test_torch_checkpoint_formats_load_to_the_same_variables(tmp_path, cifar20, zip_format, layout):
    model, expected = cifar20
    state_dict = model.state_dict()
    if layout == "nested_module_prefix":  # as akamaster's trainer (DataParallel) saves it
        obj = {"state_dict": _prefixed(state_dict), "best_prec1": 91.7, "epoch": 200}
    else:
        obj = state_dict
    path = tmp_path / f"resnet20-{layout}.th"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
        assert (f.read(2) == b"PK") == zip_format  # the two formats really differ on disk
    _assert_same_tree(weights.load(models.get("cifar_resnet20"), path), expected)


def _save(obj, path, fmt):
    if fmt == "plain":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    elif fmt == "plain_protocol0":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=0)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")


def test_the_payload_really_runs_code(tmp_path):
    """The control for the refusals below: unpickled, the payload creates its marker file."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(RunsCommand(f"touch {shlex.quote(str(marker))}")))
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain", "plain_protocol0"])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, cifar20, fmt):
    model, _ = cifar20
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = RunsCommand(f"touch {shlex.quote(str(marker))}")
    _save({"state_dict": model.state_dict() if fmt in ("zip", "legacy") else [1.0, 2.0], "hook": payload},
          path, fmt)
    for read in (weights.read_torch_state_dict, lambda p: weights.load(models.get("cifar_resnet20"), p)):
        with pytest.raises(XaiJaxError) as err:
            read(path)
        assert _one_line(err) == f"refusing to load {path}: it would run code when unpickled (it references os.system)"
    assert not marker.exists()


def test_every_code_reference_is_named(tmp_path):
    # Protocol 4 names globals by strings on the stack; the second reference to "posix" is a memo lookup.
    path = tmp_path / "two.pkl"
    marker = tmp_path / "pwned"
    _save([RunsCommand(f"touch {shlex.quote(str(marker))}"), RunsCommand("true", os.popen)], path, "plain")
    with pytest.raises(XaiJaxError) as err:
        weights.read_torch_state_dict(path)
    assert _one_line(err).endswith("(it references os.system, os.popen)")
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), path)
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert _one_line(err) == (f"refusing to load {path}: it would run code when unpickled "
                              f"(it references torch.nn.modules.container.Sequential, torch.nn.modules.conv.Conv2d, "
                              f"torch.nn.modules.activation.ReLU)")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_custom_class_next_to_weights_is_refused(tmp_path, cifar20, zip_format):
    model, _ = cifar20
    path = tmp_path / "with_config.pth"
    torch.save({"state_dict": model.state_dict(), "config": TrainingConfig(0.1)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(XaiJaxError, match=r"it would run code when unpickled \(it references [\w.]*TrainingConfig\)$"):
        weights.read_torch_state_dict(path)


@pytest.mark.parametrize("obj", [{"weights": [[1.0, 2.0], [3.0]], "epoch": 3}, [1, 2, 3], "just text"],
                         ids=["dict_of_lists", "list", "str"])
def test_plain_pickle_of_harmless_data_is_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "data.pt"
    _save(obj, path, "plain")
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert _one_line(err).startswith(f"{path}: not a PyTorch checkpoint: a plain Python pickle that holds no "
                                     f"state dict of tensors")


def test_torch_file_without_tensors_names_its_keys(tmp_path):
    path = tmp_path / "history.pt"
    torch.save({"loss": [0.5, 0.25], "epoch": 3}, path)
    with pytest.raises(XaiJaxError) as err:
        weights.read_torch_state_dict(path)
    assert _one_line(err) == f"{path}: no state dict of tensors found (top-level keys: loss, epoch)"


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"\x00\xffnot a checkpoint at all" * 10, "neither a zip archive nor a complete pickle"),
    ("npz", "a zip archive without data.pkl, holding a.npy"),
    ("truncated_zip", "a truncated or damaged zip archive"),
], ids=["empty", "random", "npz", "truncated_zip"])
def test_unreadable_file_gives_one_short_line(tmp_path, content, reason):
    path = tmp_path / "bad.pt"
    if content == "npz":
        np.savez(tmp_path / "arrays.npz", a=np.ones(3))
        os.replace(tmp_path / "arrays.npz", path)
    elif content == "truncated_zip":
        torch.save({"w": torch.ones(1000)}, tmp_path / "good.pt")
        data = (tmp_path / "good.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert _one_line(err) == f"{path}: not a readable PyTorch checkpoint ({reason})"


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet20.th"
    with pytest.raises(XaiJaxError, match="not found") as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file_names_the_path(tmp_path, cifar20, zip_format, damage):
    model, _ = cifar20
    good = tmp_path / "good.th"
    torch.save(model.state_dict(), good, _use_new_zipfile_serialization=zip_format)
    data = good.read_bytes()
    bad = tmp_path / "bad.th"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), bad)
    assert str(bad) in _one_line(err)
    assert len(str(err.value)) < len(str(bad)) + 200
    assert "not a readable PyTorch checkpoint" in str(err.value)  # damage is not mistaken for a code refusal


def test_state_dict_of_the_wrong_depth_is_refused(tmp_path, cifar20):
    model, _ = cifar20
    path = tmp_path / "resnet20.th"
    torch.save(model.state_dict(), path)
    # ResNet-32 needs layer1.3, which ResNet-20 lacks: StateDict.take fails.
    with pytest.raises(XaiJaxError, match=r"no tensor 'layer1\.3\.conv1\.weight'.*right model"):
        weights.load(models.get("cifar_resnet32"), path)
    # ResNet-56's state dict has blocks ResNet-20 never reads: StateDict.finish fails.
    deeper = tmp_path / "resnet56.th"
    torch.save(ref.cifar_resnet(56).state_dict(), deeper)
    with pytest.raises(XaiJaxError, match=r"tensors the model does not use.*right model"):
        weights.load(models.get("cifar_resnet20"), deeper)


def test_torchvision_resnet18_state_dict_is_not_a_resnet50():
    tensors = ref.state_dict_numpy(ref.resnet18(num_classes=3))
    with pytest.raises(XaiJaxError, match="right model"):
        models.get("resnet50").convert(tensors)


def test_safetensors_round_trip(tmp_path, cifar20):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, expected = cifar20
    path = tmp_path / "resnet20.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in _prefixed(model.state_dict()).items()},
                                str(path))
    _assert_same_tree(weights.load(models.get("cifar_resnet20"), path), expected)


def test_orbax_round_trip_and_load(tmp_path, cifar20):
    _, expected = cifar20
    path = tmp_path / "ckpt"
    weights.save_variables(path, expected, meta={"model": "cifar_resnet20", "note": "parity"})
    variables, meta = weights.load_variables(path)
    assert meta == {"model": "cifar_resnet20", "note": "parity"}
    _assert_same_tree(variables, expected)
    _assert_same_tree(weights.load(models.get("cifar_resnet20"), path), expected)
    with pytest.raises(XaiJaxError, match="cifar_resnet20"):
        weights.load(models.get("cifar_resnet56"), path)


def test_orbax_save_replaces_an_existing_directory(tmp_path, cifar20):
    _, expected = cifar20
    path = tmp_path / "ckpt"
    first = jax.tree.map(lambda a: a + 1.0, expected)
    weights.save_variables(path, first, meta={"model": "cifar_resnet20"})
    (path / "stale.txt").write_text("from the first save")
    weights.save_variables(path, expected, meta={"model": "cifar_resnet20"})
    assert not (path / "stale.txt").exists()
    _assert_same_tree(weights.load_variables(path)[0], expected)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary siblings left behind


class _FailingCheckpointer:
    """Stands in for orbax's StandardCheckpointer and fails half-way through a save."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def save(self, directory, item):
        pathlib.Path(directory).mkdir(parents=True)
        (pathlib.Path(directory) / "partial").write_bytes(b"half a checkpoint")
        raise OSError("disk full")


def test_failed_save_leaves_no_directory(tmp_path, cifar20, monkeypatch):
    _, expected = cifar20
    monkeypatch.setattr(store.ocp, "StandardCheckpointer", _FailingCheckpointer)
    path = tmp_path / "ckpt"
    with pytest.raises(OSError, match="disk full"):
        weights.save_variables(path, expected)
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, cifar20, monkeypatch):
    _, expected = cifar20
    path = tmp_path / "ckpt"
    weights.save_variables(path, expected, meta={"model": "cifar_resnet20"})
    monkeypatch.setattr(store.ocp, "StandardCheckpointer", _FailingCheckpointer)
    with pytest.raises(OSError, match="disk full"):
        weights.save_variables(path, jax.tree.map(lambda a: a * 0, expected))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    _assert_same_tree(weights.load(models.get("cifar_resnet20"), path), expected)


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(XaiJaxError, match="not an xai_jax checkpoint") as err:
        weights.load(models.get("cifar_resnet20"), tmp_path)
    assert str(tmp_path) in str(err.value)


# --- tensor shapes against the model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20_100_classes(tmp_path_factory):
    """The real ResNet-20 checkpoint with its head replaced by a random 100-class one."""
    checkpoint = torch.load(shared_path("cifar10_resnet", "resnet20-12fca82f.th"), map_location="cpu",
                            weights_only=True)
    generator = torch.Generator().manual_seed(0)
    checkpoint["state_dict"]["module.linear.weight"] = torch.randn(100, 64, generator=generator)
    checkpoint["state_dict"]["module.linear.bias"] = torch.randn(100, generator=generator)
    path = tmp_path_factory.mktemp("head100") / "resnet20-100.th"
    torch.save(checkpoint, path)
    return path, checkpoint["state_dict"]


def test_head_of_another_size_suggests_num_classes(resnet20_100_classes):
    path, _ = resnet20_100_classes
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert _one_line(err) == (f"{path}: params/linear/kernel has shape (64, 100) but cifar_resnet20 with 10 outputs "
                              f"expects (64, 10); pass --num-classes 100 if the head has 100 outputs")


def test_num_classes_loads_a_head_of_another_size(resnet20_100_classes):
    path, state_dict = resnet20_100_classes
    variables = weights.load(models.get("cifar_resnet20"), path, num_classes=100)
    head = variables["params"]["linear"]
    assert head["kernel"].shape == (64, 100) and head["bias"].shape == (100,)
    np.testing.assert_array_equal(head["kernel"], state_dict["module.linear.weight"].numpy().T)
    with pytest.raises(XaiJaxError, match=r"has shape \(64, 100\) but cifar_resnet20 with 7 outputs expects "
                                          r"\(64, 7\); pass --num-classes 100"):
        weights.load(models.get("cifar_resnet20"), path, num_classes=7)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "10", True])
def test_num_classes_must_be_a_positive_integer(cifar20, tmp_path, num_classes):
    model, _ = cifar20
    path = tmp_path / "resnet20.th"
    torch.save(model.state_dict(), path)
    with pytest.raises(XaiJaxError, match=r"^num_classes must be a whole number >= 1, got "):
        weights.load(models.get("cifar_resnet20"), path, num_classes=num_classes)


def _edit(tree, path, value):
    """A copy of the nested dict ``tree`` with the leaf at ``path`` (a/b/c) replaced, or removed (None)."""
    out = dict(tree)
    first, _, rest = path.partition("/")
    if rest:
        out[first] = _edit(tree[first], rest, value)
    elif value is None:
        del out[first]
    else:
        out[first] = value
    return out


@pytest.mark.parametrize("change,message", [
    ("body", "params/layer2_1/conv1/kernel has shape (3, 3, 32, 16) but cifar_resnet20 with 10 outputs expects "
             "(3, 3, 32, 32)"),
    ("head", "params/linear/bias has shape (100,) but cifar_resnet20 with 10 outputs expects (10,); "
             "pass --num-classes 100 if the head has 100 outputs"),
    ("missing", "has no batch_stats/bn1/mean, which cifar_resnet20 with 10 outputs expects with shape (16,); "
                "are these the weights of the right model?"),
    ("unexpected", "holds params/extra/kernel of shape (2, 2), which cifar_resnet20 with 10 outputs does not "
                   "have; are these the weights of the right model?"),
])
def test_orbax_directory_of_the_wrong_shapes(tmp_path, cifar20, change, message):
    _, expected = cifar20
    variables = {
        "body": lambda v: _edit(v, "params/layer2_1/conv1/kernel", np.zeros((3, 3, 32, 16), np.float32)),
        "head": lambda v: _edit(v, "params/linear/bias", np.zeros(100, np.float32)),
        "missing": lambda v: _edit(v, "batch_stats/bn1/mean", None),
        "unexpected": lambda v: _edit(v, "params/extra", {"kernel": np.zeros((2, 2), np.float32)}),
    }[change](expected)
    path = tmp_path / "ckpt"
    weights.save_variables(path, variables, {"model": "cifar_resnet20"})
    with pytest.raises(XaiJaxError) as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert _one_line(err) == f"{path}: {message}"


# --- damaged orbax directories ----------------------------------------------------------------------------


def _small_checkpoint(tmp_path) -> pathlib.Path:
    path = tmp_path / "ck"
    store.save_variables(path, {"params": {"w": np.ones((3, 2), np.float32)}}, {"model": "x"})
    return path


def _array_files(path):
    return sorted(p for p in (path / "variables").rglob("*") if p.is_file() and p.parent.name == "d")


def _truncate(files):
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage,reason", [
    (lambda ck: (ck / "xai_jax_meta.json").write_text("{not json"),
     "xai_jax_meta.json is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (lambda ck: (ck / "xai_jax_meta.json").write_text("[1, 2]"), "xai_jax_meta.json holds an array, not a JSON object"),
    (lambda ck: (ck / "xai_jax_meta.json").write_bytes(b'{"model": "\xff\xfe"}'),
     "xai_jax_meta.json is not UTF-8 text"),
    (lambda ck: (ck / "variables" / "_METADATA").unlink(), "variables/_METADATA is missing"),
    (lambda ck: (ck / "variables" / "_METADATA").write_text("{garbage"), "variables/_METADATA is not valid JSON"),
    (lambda ck: (ck / "variables" / "_METADATA").write_text("[]"),
     "variables/_METADATA is not an orbax tree description"),
    (lambda ck: _truncate(_array_files(ck)), "cannot restore variables/: "),
    (lambda ck: [f.unlink() for f in _array_files(ck)], "cannot restore variables/: "),
], ids=["meta_invalid_json", "meta_not_object", "meta_not_utf8", "metadata_missing", "metadata_corrupt",
        "metadata_not_a_tree", "arrays_truncated", "arrays_removed"])
def test_damaged_checkpoint_directory_gives_one_line(tmp_path, damage, reason):
    path = _small_checkpoint(tmp_path)
    assert weights.load_variables(path)[1] == {"model": "x"}  # intact before the damage
    damage(path)
    for read in (weights.load_variables, lambda p: weights.load(models.get("cifar_resnet20"), p)):
        with pytest.raises(XaiJaxError) as err:
            read(path)
        message = _one_line(err)
        assert message.startswith(f"{path}: damaged xai_jax checkpoint ({reason}")
        assert message.endswith(")") and len(message) < len(str(path)) + 260
