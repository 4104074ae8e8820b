"""Checkpoint readers and the orbax store: formats, nesting, refusals, damage, and atomic saves.

A CIFAR ResNet-20 (0.27M parameters, akamaster layout) with random weights stands in for a real
checkpoint; every readable variant must convert to exactly the variables of its in-memory state dict.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest
import torch

import torch_ref_resnet_vgg as ref
from xai_jax import models, weights
from xai_jax.errors import XaiJaxError
from xai_jax.weights import store


class TrainingConfig:
    """A custom class, as training scripts pickle next to their weights."""

    def __init__(self, lr: float):
        self.lr = lr


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


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), path)
    with pytest.raises(XaiJaxError, match="code execution") as err:
        weights.load(models.get("cifar_resnet20"), path)
    assert str(path) in str(err.value)


def test_custom_class_next_to_weights_is_refused(tmp_path, cifar20):
    model, _ = cifar20
    path = tmp_path / "with_config.pth"
    torch.save({"state_dict": model.state_dict(), "config": TrainingConfig(0.1)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(XaiJaxError, match="code execution"):
        weights.read_torch_state_dict(path)


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
    assert str(bad) in str(err.value)
    assert "\n" not in str(err.value)
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
