"""Shared test fixtures: where the real data lives, whether its absence skips or fails, and random weights."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("XAI_JAX_REQUIRE_DATA") == "1"


def shared_path(*parts: str) -> pathlib.Path:
    """The path of a file under the shared data folder; skips the test when it is missing, or fails it
    when ``XAI_JAX_REQUIRE_DATA=1`` (as in CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared data missing: {path}"
        if REQUIRE_DATA:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name: str):
    """Imports an optional dependency; skips without it unless ``XAI_JAX_REQUIRE_DATA=1``."""
    try:
        return __import__(name)
    except ImportError:
        if REQUIRE_DATA:
            pytest.fail(f"optional dependency {name} is not installed")
        pytest.skip(f"optional dependency {name} is not installed")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return shared_path()


def random_variables(module, shape, seed):
    """He-scaled random weights, with batch norm's running statistics, scale and bias far from the identity
    (variances down to 0.05, so a wrong epsilon shows), filled with NumPy (much faster than Flax's init)."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names, s = [getattr(p, "key", "") for p in path], leaf.shape
        if names[0] == "batch_stats":
            if names[-1] == "mean":
                return (rng.standard_normal(s) * 0.3).astype(np.float32)
            return np.exp(rng.uniform(np.log(0.05), np.log(2.0), s)).astype(np.float32)
        if names[-1] == "kernel":
            return rng.standard_normal(s, np.float32) * np.float32(np.sqrt(2 / np.prod(s[:-1])))
        if names[-1] == "scale":
            return rng.uniform(0.5, 1.5, s).astype(np.float32)
        return (rng.standard_normal(s) * 0.1).astype(np.float32)  # biases

    return jax.tree_util.tree_map_with_path(fill, {k: v for k, v in abstract.items() if k != "taps"})


def snapshot(root, contents: bool = False) -> dict:
    """Every path under ``root``, hidden ones included: ``None`` for a folder, else the file's bytes
    (``contents``) or its size and modification time, so that a test can assert nothing was written or removed."""
    found = {}
    for directory, folders, files in os.walk(root):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in files:
            path = os.path.join(directory, name)
            if contents:
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = f.read()
            else:
                st = os.stat(path)
                found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found



@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> pathlib.Path:
    """The folder of one ``xai-jax demo`` run (the digits CNN and every method's result in ``<method>/``),
    shared by the tests that read it."""
    from xai_jax import cli
    out = tmp_path_factory.mktemp("demo") / "demo"
    previous = os.environ.get("NLTK_DATA")
    os.environ["NLTK_DATA"] = str(shared_path("nltk_data"))
    try:
        assert cli.main(["--quiet", "demo", "--out", str(out)]) == 0
    finally:
        if previous is None:
            os.environ.pop("NLTK_DATA")
        else:
            os.environ["NLTK_DATA"] = previous
    return out
