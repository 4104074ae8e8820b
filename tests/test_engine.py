"""The streaming engine: exact folds, padding, compile-once, and 1 vs 8 devices on real data."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import engine
from xai_jax.data import ArraySource, Batches

NUM_CLASSES = 5


def class_pixel_sums(state, batch, params):
    """Per-class sums of each image's mean pixel, scaled by ``params`` (so params really flow in)."""
    weight = batch["mask"].astype(jnp.float32)
    onehot = jax.nn.one_hot(batch["labels"], NUM_CLASSES) * weight[:, None]
    means = batch["images"].astype(jnp.float32).mean(axis=(1, 2)) * params
    return {"sums": state["sums"] + onehot.T @ means, "counts": state["counts"] + onehot.sum(0)}


def empty_state():
    return {"sums": jnp.zeros((NUM_CLASSES,)), "counts": jnp.zeros((NUM_CLASSES,))}


@pytest.fixture(scope="module")
def random_source():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=37)
    return ArraySource(images, labels, [f"c{i}" for i in range(NUM_CLASSES)])


@pytest.mark.parametrize("batch_size", [1, 8, 37, 64])
def test_fold_matches_numpy_for_any_batch_size(random_source, batch_size):
    images, labels = random_source.all()
    expected = np.zeros(NUM_CLASSES)
    np.add.at(expected, labels, images.astype(np.float64).mean(axis=(1, 2)) * 2.0)
    state = engine.run(class_pixel_sums, empty_state(), random_source, jnp.float32(2.0), batch_size=batch_size,
                       progress=False)
    np.testing.assert_allclose(state["sums"], expected, rtol=1e-5)
    np.testing.assert_array_equal(state["counts"], np.bincount(labels, minlength=NUM_CLASSES))


def test_step_compiles_once_per_shape(random_source):
    traces = []

    def counting_step(state, batch, params):
        traces.append(batch["images"].shape)
        return class_pixel_sums(state, batch, params)

    for _ in range(2):  # the second pass reuses the cached program
        engine.run(counting_step, empty_state(), Batches(random_source, 8), jnp.float32(1.0), progress=False)
    assert traces == [(8, 5, 3)]
    engine.run(counting_step, empty_state(), Batches(random_source, 16), jnp.float32(1.0), progress=False)
    assert traces == [(8, 5, 3), (16, 5, 3)]


def test_map_batches_keeps_dataset_order_and_drops_padding(random_source):
    images, _ = random_source.all()
    rows = engine.collect(engine.map_batches(
        lambda batch, params: {"mean": batch["images"].astype(jnp.float32).mean(axis=(1, 2)) + params,
                               "index": batch["index"]},
        Batches(random_source, 8), jnp.float32(1.0), progress=False))
    np.testing.assert_array_equal(rows["index"], np.arange(37))
    np.testing.assert_allclose(rows["mean"], images.mean(axis=(1, 2)) + 1.0, rtol=1e-6)


def test_batch_size_rounds_to_device_count():
    assert engine.round_batch_size(5) % jax.local_device_count() == 0
    assert engine.round_batch_size(5) >= 5


# --- map_arrays: host arrays in padded, sharded chunks -------------------------------------------------------

def scaled_row_stats(rows, params):
    """Row-wise: each image's mean times ``params`` and its label plus one, so params and both arrays flow in."""
    return {"mean": rows["images"].astype(jnp.float32).mean(axis=(1, 2)) * params, "next": rows["labels"] + 1}


def host_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, size=(n, 5, 3), dtype=np.uint8),
            "labels": rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)}


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000])
def test_map_arrays_matches_numpy_on_awkward_sizes(n):
    rows = host_rows(n, seed=n)
    out = engine.map_arrays(scaled_row_stats, rows, np.float32(2.0), chunk=128)
    assert set(out) == {"mean", "next"} and all(isinstance(v, np.ndarray) for v in out.values())
    np.testing.assert_allclose(out["mean"], rows["images"].astype(np.float64).mean(axis=(1, 2)) * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(out["next"], rows["labels"] + 1)
    assert out["next"].dtype == np.int32 and out["mean"].shape == (n,)


def test_map_arrays_takes_any_pytree_and_returns_fn_structure():
    rng = np.random.default_rng(1)
    arrays = {"a": rng.normal(size=(37, 4)).astype(np.float32), "b": (rng.normal(size=(37, 2, 3)).astype(np.float32),)}

    def fn(rows, params):
        return rows["a"] @ params, rows["b"][0].sum(-1)

    weights = rng.normal(size=(4, 6)).astype(np.float32)
    product, sums = engine.map_arrays(fn, arrays, weights, chunk=8)
    np.testing.assert_allclose(product, arrays["a"] @ weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums, arrays["b"][0].sum(-1), rtol=1e-6)


def test_map_arrays_rejects_empty_and_mismatched_inputs():
    with pytest.raises(engine.XaiJaxError, match="0 rows"):
        engine.map_arrays(scaled_row_stats, host_rows(0), np.float32(1.0))
    with pytest.raises(engine.XaiJaxError, match="at least one array"):
        engine.map_arrays(scaled_row_stats, {}, np.float32(1.0))
    rows = host_rows(5)
    with pytest.raises(engine.XaiJaxError, match="same number of rows"):
        engine.map_arrays(scaled_row_stats, {"images": rows["images"], "labels": rows["labels"][:4]})
    with pytest.raises(engine.XaiJaxError, match="chunk must be >= 1"):
        engine.map_arrays(scaled_row_stats, rows, np.float32(1.0), chunk=0)


def test_map_arrays_compiles_one_program_per_chunk_shape_and_reuses_it():
    from xai_jax import debug

    def fresh(rows, params):  # a new function object: nothing cached yet
        return scaled_row_stats(rows, params)

    scale = np.float32(3.0)
    with debug.compiles() as counter:
        engine.map_arrays(fresh, host_rows(1000, seed=2), scale, chunk=128)  # 7 full chunks and a ragged one
    assert sum(counter.values()) == 1 and all("fresh" in name for name in counter), dict(counter)
    with debug.assert_max_compiles(0, "a second call with other rows and params of the same shapes"):
        out = engine.map_arrays(fresh, host_rows(1000, seed=3), np.float32(4.0), chunk=128)
        engine.map_arrays(fresh, host_rows(999, seed=4), scale, chunk=128)
    np.testing.assert_array_equal(out["next"], host_rows(1000, seed=3)["labels"] + 1)


def test_map_arrays_small_inputs_are_not_padded_to_a_full_chunk():
    shapes = []

    def recording(rows, params):
        shapes.append(rows["images"].shape)  # runs only while tracing
        return scaled_row_stats(rows, params)

    engine.map_arrays(recording, host_rows(3), np.float32(1.0), chunk=4096)
    assert shapes == [(engine.round_batch_size(3), 5, 3)]


def test_map_arrays_rounds_chunks_to_the_device_count_and_shards_them():
    # A fresh process: XLA reads the forced device count once, at start-up.
    code = """
import jax, numpy as np
from xai_jax import engine
shapes = []
def fn(rows, params):
    shapes.append(rows["x"].shape)  # runs only while tracing
    return rows["x"] * params
x = np.arange(13 * 2, dtype=np.float32).reshape(13, 2)
out = engine.map_arrays(fn, {"x": x}, np.float32(2), chunk=5)
assert jax.device_count() == 4, jax.devices()
np.testing.assert_array_equal(out, x * 2)
small = engine.map_arrays(fn, {"x": x[:1]}, np.float32(2), chunk=5)
np.testing.assert_array_equal(small, x[:1] * 2)
assert shapes == [(8, 2), (4, 2)], shapes  # 5 -> 8 rows per chunk; 1 row -> 4, not a whole chunk of 8
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_a_fold_over_several_cpu_devices_waits_for_each_step():
    # Steps queued ahead deadlocked XLA:CPU's shared pool in the cross-device reduction under load (a hang about
    # every other run on 2 busy cores): over several CPU devices each step is waited for, over one it is not.
    code = """
import jax, jax.numpy as jnp, numpy as np
from xai_jax import engine
from xai_jax.data import ArraySource
waits = []
real = jax.block_until_ready
jax.block_until_ready = lambda tree: waits.append(1) or real(tree)
def step(state, batch, params):
    return state + jnp.sum(batch["images"].astype(jnp.float32) * batch["mask"][:, None, None, None])
images = np.ones((40, 2, 2, 1), np.uint8)
source = ArraySource(images, np.zeros(40, np.int64))
assert jax.device_count() == 4
total = engine.run(step, jnp.zeros(()), source, batch_size=8)
assert float(total) == 160 and len(waits) == 5 + 1, waits  # 5 batches, then the result
waits.clear()
single = engine.run(step, jnp.zeros(()), source, batch_size=8, mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)))
assert float(single) == 160 and len(waits) == 1, waits
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


# --- the same reduction over CIFAR-10 with ResNet-20, on 1 and on 8 (forced host) devices ---------------

def resnet20_class_logit_sums(state, batch, variables):
    from xai_jax import models
    logits = models.make_forward("cifar_resnet20")(batch["images"], variables)["logits"]
    onehot = jax.nn.one_hot(batch["labels"], 10) * batch["mask"][:, None]
    return {"sums": state["sums"] + onehot.T @ logits, "counts": state["counts"] + onehot.sum(0)}


def reduce_cifar10(test_npz: str, weights: str, batch_size: int) -> dict[str, np.ndarray]:
    from xai_jax import models, weights as W
    from xai_jax.data import JpegNpzSource
    variables = W.load(models.get("cifar_resnet20"), weights)
    state = {"sums": jnp.zeros((10, 10)), "counts": jnp.zeros((10,))}
    state = engine.run(resnet20_class_logit_sums, state, JpegNpzSource(test_npz), variables,
                       batch_size=batch_size, progress=False)
    return {k: np.asarray(v) for k, v in state.items()} | {"devices": np.int64(jax.device_count())}


def _accepted_xla_flags(flags: str) -> str:
    """``flags`` if this jaxlib knows them (another release may rename them, and XLA aborts on an unknown flag),
    else the empty string: the test then runs with XLA's default timeouts rather than failing on a name."""
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                           env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"))
    return flags if probe.returncode == 0 else ""


@pytest.mark.slow
def test_cifar10_reduction_same_on_1_and_8_devices(tmp_path):
    from conftest import shared_path
    test_npz = str(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    weights = str(next(shared_path("cifar10_resnet").glob("resnet20-*.th")))
    results = {}
    for devices in (1, 8):
        out = tmp_path / f"reduce{devices}.npz"
        # Single-threaded Eigen: with the intra-op pool, an all-reduce can run inside a pool worker and wait there
        # for devices whose work is queued behind it on the same 2-core pool (XLA then aborts after its timeout).
        # Rendezvous timeouts raised to 600 s: 8 forced host devices share 2 cores, so on a machine loaded by
        # another job the last device can reach an all-reduce a minute after the first. XLA's CPU defaults warn
        # after 20 s and abort 40 s later ("Termination timeout ... of 40 seconds exceeded ... Expected 8 threads
        # to join the rendezvous"), which is a slow machine, not a bug. The names are jaxlib 0.10's registered
        # flags (the warn flag's is not the DebugOptions field's, xla_cpu_collective_call_warn_stuck_seconds);
        # an unknown name aborts XLA at start-up, so they are probed first (_accepted_xla_flags).
        # (--xla_cpu_collective_timeout_seconds, the collective operation's own limit, is 30 min by default.)
        timeouts = _accepted_xla_flags(" ".join(f"--xla_cpu_collective_call_{name}=600" for name in (
            "warn_stuck_timeout_seconds", "terminate_timeout_seconds")))
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                   f"--xla_cpu_multi_thread_eigen=false {timeouts}",
                   JAX_PLATFORMS="cpu")
        # A fresh process per device count: XLA reads the flag once, at start-up.
        subprocess.run([sys.executable, __file__, test_npz, weights, str(out)], env=env, check=True,
                       cwd=os.path.dirname(__file__))
        results[devices] = dict(np.load(out))
    one, eight = results[1], results[8]
    assert one["devices_b128"] == 1 and eight["devices_b128"] == 8
    for r in (one, eight):
        np.testing.assert_array_equal(r["counts_b128"], np.full(10, 1000.0))
        np.testing.assert_array_equal(r["counts_b200"], r["counts_b128"])  # 128 does not divide 10,000; 200 does
    for key in ("sums_b128", "sums_b200"):
        # Summation order differs with the device count, so equal up to float32 rounding of sums of ~1000 logits.
        np.testing.assert_allclose(one[key], eight[key], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(one["sums_b128"], one["sums_b200"], rtol=1e-5, atol=1e-3)
    # The class-mean logits put each class's own logit first: the reduction really ran the real model.
    assert np.all(np.argmax(one["sums_b200"], axis=1) == np.arange(10))


if __name__ == "__main__":
    test_npz_path, weights_path, out_path = sys.argv[1:4]
    saved = {}
    for bs in (128, 200):
        for key, value in reduce_cifar10(test_npz_path, weights_path, bs).items():
            saved[f"{key}_b{bs}"] = value
    np.savez(out_path, **saved)
