"""Compile counting (``xai_jax.debug``) and the passes that must not recompile when called again."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xai_jax import debug, models, train
from xai_jax.methods.nma import NearMissAnalysis, NMAConfig
from xai_jax.methods.www import WWW


def test_compiles_counts_each_new_program_once():
    double = jax.jit(lambda x: x * 2)
    with debug.compiles() as counter:
        double(jnp.ones(3))
        double(jnp.ones(3) + 1)  # same shape: the cached program
    assert counter["jit(<lambda>)"] == 1
    with debug.compiles() as counter:
        double(jnp.ones(4))  # a new shape: one more
        double(jnp.ones(3))
    assert counter["jit(<lambda>)"] == 1
    ones = jnp.ones(5)
    with pytest.raises(AssertionError, match=r"compiled 1 XLA programs, at most 0 expected: \{'jit\(<lambda>\)': 1"):
        with debug.assert_max_compiles(0):
            jax.jit(lambda x: x + 1)(ones)


def test_near_miss_thresholds_do_not_recompile_the_pass():
    # t and min_confidence are traced: a new value reuses the compiled pass (before, each value compiled anew).
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 10)).astype(np.float32)
    labels, names = logits.argmax(1), [str(i) for i in range(10)]
    first = NearMissAnalysis(NMAConfig(t=1e-6)).fit_scores(logits, labels, names, from_logits=True, names=False,
                                                           progress=False)
    with debug.assert_max_compiles(0, "a second near-miss fit with other thresholds"):
        other = NearMissAnalysis(NMAConfig(t=0.05, min_confidence=0.3)).fit_scores(
            logits, labels, names, from_logits=True, names=False, progress=False)
    assert other.counts.sum() < first.counts.sum() and other.events.sum() < first.events.sum()


def test_fit_reuses_its_programs_for_the_same_loss_and_optimizer():
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((64, 3)).astype(np.float32), "y": rng.standard_normal(64).astype(np.float32)}

    def loss(params, model_state, batch, key):
        value = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
        return value, (model_state, {"loss": value})

    optimizer = optax.adam(1e-2)
    state = train.init_state({"w": jnp.zeros(3)}, optimizer)
    train.fit(loss, optimizer, state, data, batch_size=16, epochs=1, key=jax.random.key(0), progress=False)
    with debug.assert_max_compiles(0, "a second fit"):
        _, history = train.fit(loss, optimizer, state, data, batch_size=16, epochs=2, key=jax.random.key(1),
                               progress=False)
    assert history.train[-1]["loss"] < history.train[0]["loss"]


def test_sample_contributions_compiles_once_per_shape():
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    images = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    www = WWW("small_cnn", variables, tap="conv2")
    by_prediction = www.sample_contributions(images)
    given = www.sample_contributions(images, np.arange(5))
    with debug.assert_max_compiles(0, "WWW.sample_contributions called again"):
        again = www.sample_contributions(images)
        other_classes = www.sample_contributions(images, np.arange(5)[::-1])
    np.testing.assert_array_equal(again, by_prediction)
    assert by_prediction.shape == given.shape == other_classes.shape == (5, 64)
    assert not np.allclose(given, other_classes)  # the classes really are an input
