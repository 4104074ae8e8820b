"""SRAE loss terms (XNN paper eq. 5) against NumPy loops over their definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from xai_jax.kernels.srae import (faithfulness_loss, one_vs_all_weights, pull_away_loss, reconstruction_loss,
                                  sparse_reconstruction_loss, srae_loss)


def numpy_faithfulness(e, v, b, y, w=None):
    e, v, y = (np.asarray(a, np.float64) for a in (e, v, y))
    w = np.ones(len(e)) if w is None else np.asarray(w, np.float64)
    total = 0.0
    for i in range(len(e)):
        total += w[i] * np.sum((e[i] @ v + b - y[i]) ** 2)
    return total / w.sum()


def numpy_q(z, z_rec):
    z, z_rec = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (z, z_rec))
    return np.array([np.mean([(z_rec[i, k] - z[i, k]) ** 2 for i in range(len(z))]) for k in range(z.shape[1])])


def numpy_sparse_reconstruction(z, z_rec, q):
    qk = numpy_q(z, z_rec)
    return sum(np.log(1 + q * qk_) for qk_ in qk) / len(qk)


def numpy_pull_away(e):
    e = np.asarray(e, np.float64)
    n = e.shape[1]
    if n == 1:
        return 0.0
    total = 0.0
    for l in range(n):
        for m in range(n):
            if l != m:
                total += (e[:, l] @ e[:, m] / (np.linalg.norm(e[:, l]) * np.linalg.norm(e[:, m]))) ** 2
    return total / (n * (n - 1))


def random_problem(rng, m, n, s, outputs=None):
    """Random x-features, head, targets and activations with their reconstruction; ``outputs=None`` is one
    logit ([n] head, [M] targets)."""
    head_shape = (n,) if outputs is None else (n, outputs)
    target_shape = (m,) if outputs is None else (m, outputs)
    return dict(x_features=rng.normal(size=(m, n)).astype(np.float32),
                head_weights=rng.normal(size=head_shape).astype(np.float32),
                head_bias=np.float32(rng.normal()) if outputs is None else rng.normal(size=outputs).astype(np.float32),
                targets=rng.normal(size=target_shape).astype(np.float32),
                z=rng.normal(size=(m, s)).astype(np.float32),
                z_rec=rng.normal(size=(m, s)).astype(np.float32))


@pytest.mark.parametrize("m,n,s,outputs", [(11, 1, 7, None), (17, 2, 13, 3), (13, 5, 9, None), (7, 5, 1, 1)])
def test_terms_match_numpy(m, n, s, outputs):
    rng = np.random.default_rng(m * n * s)
    p = random_problem(rng, m, n, s, outputs)
    weights = rng.uniform(0.1, 3, m).astype(np.float32)
    args = (p["x_features"], p["head_weights"], p["head_bias"], p["targets"])
    np.testing.assert_allclose(faithfulness_loss(*args), numpy_faithfulness(*args), rtol=1e-5)
    np.testing.assert_allclose(faithfulness_loss(*args, weights), numpy_faithfulness(*args, weights), rtol=1e-5)
    np.testing.assert_allclose(sparse_reconstruction_loss(p["z"], p["z_rec"], 100.0),
                               numpy_sparse_reconstruction(p["z"], p["z_rec"], 100.0), rtol=1e-5)
    np.testing.assert_allclose(sparse_reconstruction_loss(p["z"], p["z_rec"], 0.5),
                               numpy_sparse_reconstruction(p["z"], p["z_rec"], 0.5), rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(p["z"], p["z_rec"]), numpy_q(p["z"], p["z_rec"]).sum(), rtol=1e-5)
    np.testing.assert_allclose(pull_away_loss(p["x_features"]), numpy_pull_away(p["x_features"]), rtol=1e-5,
                               atol=1e-7)


def test_activations_of_any_shape_are_flattened():
    rng = np.random.default_rng(1)
    z, z_rec = rng.normal(size=(2, 5, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(sparse_reconstruction_loss(z, z_rec), sparse_reconstruction_loss(
        z.reshape(5, -1), z_rec.reshape(5, -1)), rtol=1e-6)
    np.testing.assert_allclose(sparse_reconstruction_loss(z, z_rec), numpy_sparse_reconstruction(z, z_rec, 100.0),
                               rtol=1e-5)


@pytest.mark.parametrize("variant", ["srae", "nn", "sae", "cae"])
def test_srae_loss_combines_the_variant_terms(variant):
    rng = np.random.default_rng(2)
    p = random_problem(rng, 19, 5, 11)
    weights = np.asarray(one_vs_all_weights(rng.random(19) < 0.3, 4.0))
    total, terms = srae_loss(**p, variant=variant, beta=2.5, eta=0.75, q=30.0, sample_weights=weights)
    faith = numpy_faithfulness(p["x_features"], p["head_weights"], p["head_bias"], p["targets"], weights)
    expected = {"srae": {"faithfulness": faith,
                         "reconstruction": numpy_sparse_reconstruction(p["z"], p["z_rec"], 30.0),
                         "pull_away": numpy_pull_away(p["x_features"])},
                "nn": {"faithfulness": faith},
                "sae": {"faithfulness": faith, "reconstruction": numpy_q(p["z"], p["z_rec"]).sum()},
                "cae": {"reconstruction": numpy_q(p["z"], p["z_rec"]).sum()}}[variant]
    assert sorted(terms) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(terms[key], value, rtol=1e-5)
    weighted = {"faithfulness": 1.0, "reconstruction": 2.5, "pull_away": 0.75}
    np.testing.assert_allclose(total, sum(weighted[key] * value for key, value in expected.items()), rtol=1e-5)


def test_defaults_are_q100_beta10_eta10():
    rng = np.random.default_rng(3)
    p = random_problem(rng, 7, 2, 5)
    total, terms = srae_loss(**p)
    np.testing.assert_allclose(terms["reconstruction"], numpy_sparse_reconstruction(p["z"], p["z_rec"], 100.0),
                               rtol=1e-5)
    np.testing.assert_allclose(total, terms["faithfulness"] + 10 * terms["reconstruction"] + 10 * terms["pull_away"],
                               rtol=1e-6)


def test_variants_accept_none_for_unused_parts_and_reject_missing_ones():
    rng = np.random.default_rng(4)
    p = random_problem(rng, 7, 3, 5)
    nn_total, _ = srae_loss(p["x_features"], p["head_weights"], p["head_bias"], p["targets"], variant="nn")
    np.testing.assert_allclose(nn_total, numpy_faithfulness(p["x_features"], p["head_weights"], p["head_bias"],
                                                            p["targets"]), rtol=1e-5)
    cae_total, _ = srae_loss(p["x_features"], None, None, None, p["z"], p["z_rec"], variant="cae")
    np.testing.assert_allclose(cae_total, 10 * numpy_q(p["z"], p["z_rec"]).sum(), rtol=1e-5)  # beta = 10
    with pytest.raises(ValueError, match="valid: srae, nn, sae, cae"):
        srae_loss(**p, variant="lasso")
    with pytest.raises(ValueError, match="needs z, z_rec"):
        srae_loss(p["x_features"], p["head_weights"], p["head_bias"], p["targets"], variant="sae")
    with pytest.raises(ValueError, match="needs head_weights, head_bias, targets"):
        srae_loss(p["x_features"], None, None, None, p["z"], p["z_rec"], variant="srae")


@pytest.mark.parametrize("n", [2, 5])
def test_pull_away_is_0_for_orthogonal_and_1_for_identical_columns(n):
    rng = np.random.default_rng(n)
    orthogonal, _ = np.linalg.qr(rng.normal(size=(13, n)))
    assert float(pull_away_loss(jnp.asarray(orthogonal, jnp.float32))) == pytest.approx(0, abs=1e-6)
    # Disjoint supports: orthogonal and non-negative, like ReLU x-features.
    disjoint = np.zeros((13, n), np.float32)
    disjoint[np.arange(13), np.arange(13) % n] = rng.uniform(0.5, 2, 13)
    assert float(pull_away_loss(disjoint)) == 0
    column = rng.normal(size=(13, 1)).astype(np.float32)
    identical = np.repeat(column, n, axis=1) * rng.uniform(0.5, 2, n).astype(np.float32)  # parallel, any scale
    assert float(pull_away_loss(identical)) == pytest.approx(1, rel=1e-6)
    assert float(pull_away_loss(np.concatenate([identical[:, :1], -identical[:, 1:]], axis=1))) == pytest.approx(
        1, rel=1e-6)  # cosines are squared: opposite directions count as correlated too


def test_pull_away_with_one_feature_is_0_and_zero_columns_are_safe():
    rng = np.random.default_rng(5)
    assert float(pull_away_loss(rng.normal(size=(11, 1)).astype(np.float32))) == 0
    e = rng.normal(size=(11, 4)).astype(np.float32)
    e[:, 2] = 0
    # The dead column's pairs count as 0 in a sum still divided by n(n-1) = 12.
    live = numpy_pull_away(e[:, [0, 1, 3]]) * 6 / 12
    np.testing.assert_allclose(pull_away_loss(e), live, rtol=1e-5)
    gradient = jax.grad(pull_away_loss)(jnp.asarray(e))
    assert np.isfinite(np.asarray(gradient)).all()
    np.testing.assert_array_equal(np.asarray(gradient[:, 2]), 0)
    assert float(pull_away_loss(np.zeros((11, 3), np.float32))) == 0


def test_mask_equals_dropping_the_padding_rows():
    rng = np.random.default_rng(6)
    p = random_problem(rng, 17, 5, 9)
    keep = rng.random(17) < 0.6
    weights = rng.uniform(0.5, 2, 17).astype(np.float32)
    kept = {key: (value[keep] if key in ("x_features", "targets", "z", "z_rec") else value) for key, value in p.items()}
    for variant in ("srae", "sae"):
        total, terms = srae_loss(**p, variant=variant, sample_weights=weights, mask=keep)
        expected_total, expected_terms = srae_loss(**kept, variant=variant, sample_weights=weights[keep])
        np.testing.assert_allclose(total, expected_total, rtol=1e-5)
        for key in expected_terms:
            np.testing.assert_allclose(terms[key], expected_terms[key], rtol=1e-5, atol=1e-7)
    nothing = np.zeros(17, bool)
    assert float(faithfulness_loss(p["x_features"], p["head_weights"], p["head_bias"], p["targets"],
                                   mask=nothing)) == 0


def test_one_vs_all_weights_balance_positives():
    is_positive = np.array([True, False, False, False, True, False])
    weights = np.asarray(one_vs_all_weights(is_positive, 2.0))
    np.testing.assert_array_equal(weights, [2, 1, 1, 1, 2, 1])
    assert weights[is_positive].sum() == weights[~is_positive].sum()


@pytest.mark.parametrize("variant,n", [("srae", 3), ("srae", 1), ("sae", 2)])
def test_gradients_of_the_combined_loss(variant, n):
    rng = np.random.default_rng(7 + n)
    with jax.enable_x64(True):
        p = {key: jnp.asarray(np.asarray(value, np.float64)) for key, value in random_problem(rng, 7, n, 5, 2).items()}
        weights = jnp.asarray(rng.uniform(0.5, 2, 7))

        def loss(x_features, head_weights, head_bias, z_rec):
            return srae_loss(x_features, head_weights, head_bias, p["targets"], p["z"], z_rec, variant=variant,
                             beta=1.5, eta=0.5, q=3.0, sample_weights=weights)[0]

        check_grads(loss, (p["x_features"], p["head_weights"], p["head_bias"], p["z_rec"]), order=2,
                    modes=["rev"], atol=1e-5, rtol=1e-5)


def test_jit_agrees_with_eager_and_vmap_over_classes_with_a_loop():
    rng = np.random.default_rng(8)
    problems = [random_problem(rng, 13, 5, 7) for _ in range(3)]
    stacked = {key: np.stack([p[key] for p in problems]) for key in problems[0]}
    batched_total, batched_terms = jax.vmap(lambda p: srae_loss(**p))(stacked)  # one explainer per class
    for k, p in enumerate(problems):
        jitted_total, jitted_terms = srae_loss(**p)
        with jax.disable_jit():
            eager_total, eager_terms = srae_loss(**p)
        np.testing.assert_allclose(jitted_total, eager_total, rtol=1e-5)
        np.testing.assert_allclose(batched_total[k], eager_total, rtol=1e-5)
        for key in eager_terms:
            np.testing.assert_allclose(jitted_terms[key], eager_terms[key], rtol=1e-5)
            np.testing.assert_allclose(batched_terms[key][k], eager_terms[key], rtol=1e-5)
