"""The one result layout (:mod:`xai_jax.results`) on a result with a field of every kind it stores."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from xai_jax import config as C
from xai_jax import results
from xai_jax.errors import XaiJaxError
from xai_jax.outputs import existing_kind


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings.

    Attributes:
      widths: layer widths.
      cutoff: a cutoff.
    """

    widths: tuple[int, ...] = (4, 2)
    cutoff: float = 0.5


@dataclasses.dataclass
class Example(results.Result):
    KIND = "example"
    STEM = "example"
    WHAT = "example result"

    names: list[str]
    scores: np.ndarray
    parts: dict | None
    network: dict | None = results.trained(default=None)
    shape: tuple[int, ...] = (3, 4)
    settings: Settings = dataclasses.field(default_factory=Settings)
    metrics: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        if self.scores.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} names for {self.scores.shape[0]} score rows")


def example(rng, network=True) -> Example:
    return Example(names=["a", "b", "c"], scores=rng.normal(size=(3, 5)).astype(np.float32),
                   parts={"major": {"indices": np.arange(6).reshape(3, 2), "selected": rng.random((3, 2)) > .5},
                          "count": np.array([1, 2, 3])},
                   network={"params": {"w": rng.normal(size=(5, 2)), "b": np.zeros(2)}} if network else None,
                   shape=(7, 1), settings=Settings((8,), 0.25),
                   metrics={"accuracy": np.float32(0.75), "per_class": [0.5, 1.0]}, meta={"model": "m"})


def assert_same(a: Example, b: Example) -> None:
    for field in dataclasses.fields(Example):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name in ("parts", "network") and x is not None:
            flat = lambda t, p="": ({p: t} if not isinstance(t, dict) else  # noqa: E731
                                    {k: v for key, sub in t.items() for k, v in flat(sub, f"{p}/{key}").items()})
            fx, fy = flat(x), flat(y)
            assert fx.keys() == fy.keys()
            for key in fx:
                np.testing.assert_array_equal(fx[key], fy[key])
                assert np.asarray(fx[key]).dtype == np.asarray(fy[key]).dtype
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
        else:
            assert x == y, field.name


@pytest.mark.parametrize("network", [True, False])
def test_save_load_round_trip(tmp_path, network):
    rng = np.random.default_rng(0)
    result = example(rng, network)
    result.save(tmp_path / "out", notes={"score": np.float64(0.5)})
    loaded = Example.load(tmp_path / "out")
    assert_same(loaded, dataclasses.replace(result, metrics={"accuracy": 0.75, "per_class": [0.5, 1.0]}))
    assert isinstance(loaded.shape, tuple) and isinstance(loaded.settings.widths, tuple)
    assert existing_kind(tmp_path / "out") == "example"
    summary = json.loads((tmp_path / "out" / "example.json").read_text())
    assert summary[results.FORMAT_KEY] == results.FORMAT_VERSION and summary["notes"] == {"score": 0.5}
    assert "scores" not in summary and summary["names"] == ["a", "b", "c"]
    assert os.path.isdir(tmp_path / "out" / "network") == network


def test_a_result_is_replaced_whole(tmp_path):
    rng = np.random.default_rng(1)
    example(rng).save(tmp_path / "out")
    example(rng, network=False).save(tmp_path / "out")
    assert not (tmp_path / "out" / "network").exists()
    assert Example.load(tmp_path / "out").network is None


def test_load_errors_are_one_line(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(XaiJaxError, match=r"is not a example result \(no example.json\)"):
        Example.load(tmp_path)
    example(rng).save(tmp_path / "out")
    path = tmp_path / "out" / "example.json"
    summary = json.loads(path.read_text())

    path.write_text(json.dumps({**summary, results.FORMAT_KEY: 0}))
    with pytest.raises(XaiJaxError, match="result format 0; this xai-jax reads format 1: fit it again"):
        Example.load(tmp_path / "out")

    path.write_text(json.dumps({**summary, "names": ["a", "b"]}))
    with pytest.raises(XaiJaxError, match=r"not a readable example result \(2 names for 3 score rows\)"):
        Example.load(tmp_path / "out")

    path.write_text(json.dumps({k: v for k, v in summary.items() if k != "names"}))
    with pytest.raises(XaiJaxError, match=r"not a readable example result \(missing 'names'\)"):
        Example.load(tmp_path / "out")

    path.write_text(json.dumps({**summary, "settings": {"colour": 1}}))
    with pytest.raises(XaiJaxError, match="Settings has no field colour"):
        Example.load(tmp_path / "out")

    path.write_text(json.dumps(summary))
    (tmp_path / "out" / "example.npz").write_bytes(b"not a zip")
    with pytest.raises(XaiJaxError) as err:
        Example.load(tmp_path / "out")
    assert "\n" not in str(err.value) and "example.npz" in str(err.value)


def test_config_fields_use_the_config_layout(tmp_path):
    result = example(np.random.default_rng(3))
    result.save(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "example.json").read_text())
    assert summary["settings"] == C.to_json(result.settings) == {"widths": [8], "cutoff": 0.25}
