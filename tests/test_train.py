"""The shared trainer: it learns, it is deterministic, both data paths agree, checkpoints round-trip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xai_jax import XaiJaxError, train


def linear_loss(params, model_state, batch, key):
    logits = batch["x"] @ params["w"] + params["b"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, (model_state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])})


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 4
    y = rng.integers(0, 3, size=301)
    x = (centres[y] + rng.normal(size=(301, 5))).astype(np.float32)
    return {"x": x, "y": y.astype(np.int32)}


def fresh(optimizer):
    return train.init_state({"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}, optimizer)


def test_fit_learns_separable_blobs(blobs):
    opt = optax.sgd(0.1)
    state, history = train.fit(linear_loss, opt, fresh(opt), blobs, batch_size=32, epochs=15,
                               key=jax.random.key(0), progress=False)
    assert history.train[0]["loss"] > history.train[-1]["loss"]
    assert history.train[-1]["accuracy"] > 0.97
    assert int(state.step) == 15 * (301 // 32)  # the remainder of each epoch is dropped


def test_device_and_host_paths_take_identical_steps(blobs):
    opt = optax.adam(0.05)
    runs = [train.fit(linear_loss, opt, fresh(opt), blobs, batch_size=16, epochs=3, key=jax.random.key(3),
                      device_bytes=limit, progress=False)[0] for limit in (1 << 30, 0)]
    np.testing.assert_allclose(runs[0].params["w"], runs[1].params["w"], rtol=1e-5, atol=1e-6)


def test_same_key_same_result_other_key_other_order(blobs):
    opt = optax.sgd(0.1)
    a, b, c = (train.fit(linear_loss, opt, fresh(opt), blobs, batch_size=32, epochs=2, key=jax.random.key(k),
                         progress=False)[0] for k in (1, 1, 2))
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not np.allclose(a.params["w"], c.params["w"])


def test_evaluate_and_checkpoint_round_trip(blobs, tmp_path):
    opt = optax.adam(0.01)
    calls = []

    def evaluate(state):
        calls.append(int(state.step))
        return {"w_norm": float(jnp.linalg.norm(state.params["w"]))}

    state, history = train.fit(linear_loss, opt, fresh(opt), blobs, batch_size=50, epochs=2, key=jax.random.key(0),
                               evaluate=evaluate, checkpoint_dir=str(tmp_path / "ckpt"), progress=False)
    assert calls == [6, 12] and len(history.eval) == 2
    restored, meta = train.restore_train_state(tmp_path / "ckpt", fresh(opt))
    assert meta == {"epoch": 2}
    assert type(restored.opt_state) is type(state.opt_state)  # optax named tuples come back as themselves
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    # Training continues from the restored state exactly as from the live one.
    more = [train.fit(linear_loss, opt, s, blobs, batch_size=50, epochs=1, key=jax.random.key(9), progress=False)[0]
            for s in (restored, state)]
    np.testing.assert_array_equal(more[0].params["w"], more[1].params["w"])


def test_bad_training_data_is_one_clear_error():
    opt = optax.sgd(0.1)
    with pytest.raises(XaiJaxError, match="differ in length"):
        train.fit(linear_loss, opt, fresh(opt), {"x": np.zeros((3, 5)), "y": np.zeros(4, int)}, batch_size=2,
                  epochs=1, key=jax.random.key(0))
    with pytest.raises(XaiJaxError, match="empty"):
        train.fit(linear_loss, opt, fresh(opt), {"x": np.zeros((0, 5)), "y": np.zeros(0, int)}, batch_size=2,
                  epochs=1, key=jax.random.key(0))


def test_classifier_loss_trains_a_batchnorm_model():
    """cifar_resnet20 has batch norm: its running statistics must move while training."""
    from xai_jax import models
    spec = models.get("cifar_resnet20")
    variables = models.init_variables(spec, jax.random.key(0))
    opt = optax.sgd(0.05, momentum=0.9)
    state = train.init_state(variables["params"], opt, {"batch_stats": variables["batch_stats"]})
    rng = np.random.default_rng(0)
    data = {"images": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), "labels": rng.integers(0, 10, 16)}
    state, history = train.fit(train.classifier_loss("cifar_resnet20"), opt, state, data, batch_size=8, epochs=6,
                               key=jax.random.key(1), progress=False)
    assert history.train[-1]["loss"] < history.train[0]["loss"]
    before = variables["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(state.model_state["batch_stats"]["bn1"]["mean"], before)


def test_recalibrated_batch_stats_are_the_mean_of_each_batchs_statistics():
    import flax.linen as nn

    class DenseBN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(7, name="dense")(x)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
            return nn.Dense(3)(nn.relu(h))

    module = DenseBN()
    rng = np.random.default_rng(2)
    data = {"x": (rng.normal(size=(101, 5)) * 3 + 1).astype(np.float32),
            "y": rng.integers(0, 3, 101).astype(np.int32)}

    def loss_fn(params, model_state, batch, key):
        logits, new_state = module.apply({"params": params, **model_state}, batch["x"], train=True,
                                         mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (new_state, {"loss": loss})

    variables = module.init(jax.random.key(0), data["x"][:2], train=False)
    opt = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(variables["params"], opt, {"batch_stats": variables["batch_stats"]})
    state, _ = train.fit(loss_fn, opt, state, data, batch_size=16, epochs=2, key=jax.random.key(1), progress=False)
    recalibrated = train.recalibrate_batch_stats(loss_fn, state.params, state.model_state, data, batch_size=16)

    dense = state.params["dense"]
    h = data["x"][:96].reshape(6, 16, 5).astype(np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    stats = recalibrated["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], h.mean(1).mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["var"], h.var(1).mean(0), rtol=1e-4, atol=1e-4)
    # The running averages after 12 steps are not these statistics: that is what recalibrating fixes.
    assert not np.allclose(state.model_state["batch_stats"]["bn"]["mean"], stats["mean"], atol=1e-2)
    # other weights and data of the same shapes reuse the compiled statistics (a jit per call compiled again)
    from xai_jax import debug
    with debug.assert_max_compiles(0, "a second recalibration"):
        train.recalibrate_batch_stats(loss_fn, variables["params"], state.model_state,
                                      {k: v[::-1].copy() for k, v in data.items()}, batch_size=16)


def test_recalibrating_a_model_without_batch_norm_returns_its_empty_state_untouched():
    def must_not_run(*_):
        raise AssertionError("a model without batch norm has nothing to recalibrate")

    data = {"x": np.zeros((8, 5), np.float32)}
    assert train.recalibrate_batch_stats(must_not_run, {}, {}, data, batch_size=4) == {}
