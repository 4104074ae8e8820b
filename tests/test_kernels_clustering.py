"""DEC kernels against NumPy/SciPy/scikit-learn (DESIGN "DEC activation clustering surrogate")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp, rel_entr
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from xai_jax.kernels.clustering import (cluster_frequencies, kl_divergence, kl_divergence_log, kmeans,
                                        kmeans_plusplus, lloyd, lloyd_step, log_soft_assignment, nearest_neighbours,
                                        project_to_sphere, soft_assignment, target_distribution)


def numpy_soft_assignment(z, mu, alpha):
    """DEC eq. 1 as written, in float64."""
    kernel = (1 + ((z[:, None, :] - mu[None]) ** 2).sum(-1) / alpha) ** (-(alpha + 1) / 2)
    return kernel / kernel.sum(1, keepdims=True)


def numpy_target(q):
    """DEC eq. 3 as written, in float64."""
    weight = q ** 2 / q.sum(0)
    return weight / weight.sum(1, keepdims=True)


def random_embeddings(rng, n, k, e=5, scale=2.0):
    return (rng.normal(size=(n, e)) * scale).astype(np.float32), rng.normal(size=(k, e)).astype(np.float32)


# ------------------------------------------------------------------------------------------ DEC loss


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (97, 15), (1000, 3)])
@pytest.mark.parametrize("alpha", [1.0, 100.0])
def test_soft_assignment_and_target_match_the_formulas(n, k, alpha):
    z, mu = random_embeddings(np.random.default_rng(n * k), n, k)
    q = np.asarray(soft_assignment(z, mu, alpha))
    expected_q = numpy_soft_assignment(z.astype(np.float64), mu.astype(np.float64), alpha)
    np.testing.assert_allclose(q, expected_q, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(q.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(log_soft_assignment(z, mu, alpha))), q, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(target_distribution(q)), numpy_target(q.astype(np.float64)),
                               rtol=1e-5, atol=1e-7)


def test_soft_assignment_survives_alpha_100_at_large_distances():
    # Every kernel value underflows in float32 (and most in float64): the direct ratio is 0 / 0.
    rng = np.random.default_rng(0)
    z, mu = random_embeddings(rng, 31, 15, scale=300.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(numpy_soft_assignment(z, mu, 100.0)).any()
    logits = -101 / 2 * np.log1p(((z[:, None].astype(np.float64) - mu[None]) ** 2).sum(-1) / 100)
    expected = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    q = np.asarray(soft_assignment(z, mu, 100.0))
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, expected, rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(q.sum(1), 1, rtol=1e-6)
    p = np.asarray(target_distribution(q))
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1)


def test_target_of_a_batch_with_the_whole_sets_frequencies():
    z, mu = random_embeddings(np.random.default_rng(1), 97, 7)
    q = soft_assignment(z, mu, 1.0)
    frequencies = cluster_frequencies(q[:50]) + cluster_frequencies(q[50:])  # streamed over two batches
    np.testing.assert_allclose(np.asarray(target_distribution(q[13:40], frequencies)),
                               np.asarray(target_distribution(q))[13:40], rtol=1e-5)


def test_target_handles_empty_clusters_and_rows_without_weight():
    q = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.25, 0.0, 0.75]], np.float32)  # column 1 has f = 0
    p = np.asarray(target_distribution(q))
    assert np.isfinite(p).all() and not p[:, 1].any()
    weight = q ** 2 / np.where(q.sum(0) > 0, q.sum(0), 1)
    np.testing.assert_allclose(p, weight / weight.sum(1, keepdims=True), rtol=1e-6)
    # External frequencies that are 0 wherever a row has mass leave nothing to normalise: the row keeps q.
    p = np.asarray(target_distribution(q, np.array([0.0, 1.0, 2.0], np.float32)))
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 0, 1], [0, 0, 1]], rtol=1e-6)


@pytest.mark.parametrize("n,k", [(1, 3), (7, 1), (97, 15)])
def test_kl_divergence_is_batchmean_of_rel_entr(n, k):
    rng = np.random.default_rng(n + k)
    p = rng.dirichlet(np.ones(k), n).astype(np.float32)
    q = rng.dirichlet(np.ones(k), n).astype(np.float32)
    if k > 1:
        p[0] = np.r_[0.0, p[0, 1:] / p[0, 1:].sum()]  # a zero target contributes 0
    expected = rel_entr(p.astype(np.float64), q.astype(np.float64)).sum(1).mean()
    np.testing.assert_allclose(float(kl_divergence(p, q)), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(kl_divergence_log(p, np.log(q))), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [1.0, 100.0])
def test_kl_gradients_through_soft_assignment(alpha):
    z, mu = random_embeddings(np.random.default_rng(3), 7, 3, e=3, scale=1.0)
    z, mu = z.astype(np.float64), mu.astype(np.float64)
    p = target_distribution(soft_assignment(z, mu, alpha))  # fixed, as in DEC

    def loss(z, mu):
        return kl_divergence(p, soft_assignment(z, mu, alpha))

    def loss_from_logs(z, mu):
        return kl_divergence_log(p, log_soft_assignment(z, mu, alpha))

    with jax.enable_x64(True):
        args = (jnp.asarray(z), jnp.asarray(mu))
        p = jnp.asarray(np.asarray(p, np.float64))
        check_grads(loss, args, order=2, modes=("rev",))
        check_grads(loss_from_logs, args, order=1, modes=("rev",))
        np.testing.assert_allclose(jax.grad(loss)(*args), jax.grad(loss_from_logs)(*args), rtol=1e-10)


def test_project_to_sphere():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(9, 5)).astype(np.float32) * np.logspace(-6, 3, 9, dtype=np.float32)[:, None]
    z[4] = 0
    out = np.asarray(project_to_sphere(z))
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(np.delete(norms, 4), 8.0, rtol=1e-6)
    assert not out[4].any()
    nonzero = np.delete(np.arange(9), 4)
    np.testing.assert_allclose(out[nonzero], 8.0 * z[nonzero] / np.linalg.norm(z[nonzero], axis=1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(project_to_sphere(z[:3], 2.5)), axis=1), 2.5, rtol=1e-6)
    gradient = jax.grad(lambda z: jnp.sum(project_to_sphere(z) ** 3))(jnp.asarray(z))
    assert np.isfinite(np.asarray(gradient)).all() and not np.asarray(gradient)[4].any()


def test_jit_and_eager_agree():
    z, mu = random_embeddings(np.random.default_rng(5), 13, 5)
    def dec_loss():
        q = soft_assignment(z, mu, 100.0)
        p = target_distribution(q)
        return np.stack([kl_divergence(p, q), kl_divergence_log(p, log_soft_assignment(z, mu, 100.0))])

    functions = [lambda: soft_assignment(z, mu, 100.0), lambda: target_distribution(soft_assignment(z, mu)), dec_loss,
                 lambda: project_to_sphere(z), lambda: lloyd_step(z, mu)[0],
                 lambda: nearest_neighbours([z, z[:, :2]], [z[::-1], z[::-1, :2]], [1.0, 0.5], 4, block_size=7)[1]]
    # (k-means is a jitted while loop of these same pieces; run eagerly it takes seconds, so it is left out.)
    for function in functions:
        compiled = np.asarray(function())
        with jax.disable_jit():
            eager = np.asarray(function())
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- k-means


def numpy_inertia(x, centroids, labels):
    x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    distances = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, distances.argmin(1))  # labels are the closest centroids
    return distances.min(1).sum()


@pytest.mark.parametrize("n,d,k,std", [(97, 3, 3, 2.0), (1000, 7, 15, 1.0)])
def test_kmeans_inertia_within_one_percent_of_sklearn(n, d, k, std):
    x, _ = make_blobs(n, d, centers=k, cluster_std=std, random_state=n)
    x = x.astype(np.float32)
    centroids, labels, inertia = kmeans(x, k, jax.random.key(0))
    reference = KMeans(k, n_init=20, random_state=0).fit(x)
    assert float(inertia) <= 1.01 * reference.inertia_
    np.testing.assert_allclose(float(inertia), numpy_inertia(x, centroids, np.asarray(labels)), rtol=1e-5)


def test_kmeans_recovers_well_separated_blobs():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(15, 7)) * 20  # same shape as above: no new compilation
    x, truth = make_blobs(1000, 7, centers=centres, cluster_std=0.5, random_state=6)
    centroids, labels, inertia = kmeans(x.astype(np.float32), 15, jax.random.key(1))
    assert adjusted_rand_score(truth, np.asarray(labels)) == 1.0
    reference = KMeans(15, n_init=20, random_state=0).fit(x)
    np.testing.assert_allclose(float(inertia), reference.inertia_, rtol=1e-4)


def test_kmeans_edge_cases():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    # n = k: every point is its own centroid
    centroids, labels, inertia = kmeans(x, 7, jax.random.key(0), n_init=3)
    np.testing.assert_allclose(np.asarray(centroids)[np.asarray(labels)], x, atol=1e-6)
    assert sorted(np.asarray(labels).tolist()) == list(range(7)) and float(inertia) < 1e-5
    # duplicates: 3 distinct points, 7 clusters (empty clusters re-seeded with points already on a centroid)
    duplicated = np.repeat(x[:3], [4, 1, 2], axis=0)
    centroids, labels, inertia = kmeans(duplicated, 7, jax.random.key(2), n_init=3)
    assert float(inertia) < 1e-5 and np.isfinite(np.asarray(centroids)).all()
    np.testing.assert_allclose(np.asarray(centroids)[np.asarray(labels)], duplicated, atol=1e-6)
    assert len(np.unique(np.asarray(labels))) == 3
    # k = 1: the mean, and the total sum of squares
    centroids, labels, inertia = kmeans(x, 1, jax.random.key(0), n_init=3)
    np.testing.assert_allclose(np.asarray(centroids)[0], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(float(inertia), ((x - x.mean(0)) ** 2).sum(), rtol=1e-5)
    assert not np.asarray(labels).any()
    # n = 1
    centroids, labels, inertia = kmeans(x[:1], 1, jax.random.key(0), n_init=3)
    np.testing.assert_allclose(np.asarray(centroids), x[:1])
    assert float(inertia) == 0 and np.asarray(labels).tolist() == [0]


def test_kmeans_is_deterministic_per_key_and_does_not_recompile():
    from xai_jax import debug
    x, _ = make_blobs(97, 3, centers=3, cluster_std=2.0, random_state=97)  # the shape of the sklearn test
    x = x.astype(np.float32)
    first = kmeans(x, 3, jax.random.key(3))
    with debug.assert_max_compiles(0, "k-means with other keys and tolerances"):  # both are traced
        again = kmeans(x, 3, jax.random.key(3), tol=1e-4)
        others = [np.asarray(kmeans(x, 3, jax.random.key(s), tol=t)[1]) for s, t in [(4, 1e-4), (5, 1e-3), (6, 0)]]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any((labels != np.asarray(first[1])).any() for labels in others)  # the key matters (label order)
    # 97 points in chunks of 10 (the last one padded) give the same clustering as one chunk
    chunked = kmeans(x, 3, jax.random.key(3), chunk_rows=10)
    np.testing.assert_array_equal(np.asarray(chunked[1]), np.asarray(first[1]))
    np.testing.assert_allclose(np.asarray(chunked[0]), np.asarray(first[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(chunked[2]), float(first[2]), rtol=1e-5)


@pytest.mark.parametrize("n,d,k,n_init", [(97, 3, 3, 4), (1013, 7, 50, 5)])
def test_kmeans_restarts_in_vmap_and_in_sequence_agree(n, d, k, n_init):
    # the accelerator's form (every restart until the slowest converges) and the CPU's (each its own steps);
    # tight blobs, so that no point sits near a tie that the two forms' float rounding could break differently
    x, _ = make_blobs(n, d, centers=k, cluster_std=0.3, random_state=n)
    x = x.astype(np.float32)
    batched = kmeans(x, k, jax.random.key(4), n_init=n_init, chunk_rows=256, batched_restarts=True)
    sequential = kmeans(x, k, jax.random.key(4), n_init=n_init, chunk_rows=256, batched_restarts=False)
    np.testing.assert_array_equal(np.asarray(batched[1]), np.asarray(sequential[1]))
    np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(sequential[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(batched[2]), float(sequential[2]), rtol=1e-5)
    np.testing.assert_allclose(float(sequential[2]), numpy_inertia(x, sequential[0], np.asarray(sequential[1])),
                               rtol=1e-5)


def test_lloyd_step_gives_a_tie_to_the_first_closest_centroid():
    # centroids 0 and 2 coincide, as do 1 and 4: NumPy's argmin (and scikit-learn) label their points 0 and 1
    x = np.random.default_rng(11).normal(size=(301, 4)).astype(np.float32)
    start = np.stack([x[0], x[1], x[0], x[2], x[1]])
    _, labels, _ = lloyd_step(x, start, chunk_rows=64)
    _, expected_labels, _ = numpy_lloyd_step(x, start)
    np.testing.assert_array_equal(np.asarray(labels), expected_labels)
    assert not np.isin(np.asarray(labels), [2, 4]).any() and np.isin(np.asarray(labels), [0, 1, 3]).all()


def test_kmeans_plusplus_picks_distinct_points_and_spreads_out():
    x = np.random.default_rng(9).normal(size=(97, 5)).astype(np.float32)
    seeds = np.asarray(kmeans_plusplus(x, 15, jax.random.key(0)))
    matches = (seeds[:, None, :] == x[None]).all(-1)
    assert (matches.sum(1) == 1).all() and len(set(matches.argmax(1))) == 15
    # plain D^2 sampling: with two far groups, the second seed lands in the other group every time
    two_groups = np.concatenate([np.zeros((50, 2)), np.full((3, 2), 100.0)]).astype(np.float32)
    picks = [np.asarray(kmeans_plusplus(two_groups, 2, jax.random.key(s), local_trials=1)) for s in range(8)]
    assert all(abs(p[0, 0] - p[1, 0]) == 100 for p in picks)


def numpy_lloyd_step(x, centroids):
    """One Lloyd step with scikit-learn's relocation rule, written out with loops."""
    x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    distances = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    labels = distances.argmin(1)
    closest = distances.min(1)
    sums = np.zeros_like(centroids)
    counts = np.zeros(len(centroids))
    np.add.at(sums, labels, x)
    np.add.at(counts, labels, 1)
    empty = np.flatnonzero(counts == 0)
    farthest = np.argsort(-closest, kind="stable")[:len(empty)]
    for cluster, point in zip(empty, farthest):
        sums[labels[point]] -= x[point]
        counts[labels[point]] -= 1
        sums[cluster], counts[cluster] = x[point], 1
    new = centroids.copy()
    new[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    return new, labels, np.isin(np.arange(len(centroids)), empty)


def test_empty_clusters_are_reseeded_with_the_farthest_points():
    x, _ = make_blobs(97, 5, centers=3, random_state=10)
    x = x.astype(np.float32)
    # Clusters 1 and 3 start far from every point: both empty after the first assignment. Chunks of 10
    # points leave 3 padding rows, which must never be taken as the farthest points.
    start = np.stack([x[0], np.full(5, 1e3), x[1], np.full(5, -1e3), x[2]]).astype(np.float32)
    centroids, labels, reseeded = lloyd_step(x, start, chunk_rows=10)
    expected, expected_labels, expected_reseeded = numpy_lloyd_step(x, start)
    assert np.asarray(reseeded).tolist() == [False, True, False, True, False] == expected_reseeded.tolist()
    np.testing.assert_array_equal(np.asarray(labels), expected_labels)
    np.testing.assert_allclose(np.asarray(centroids), expected, rtol=1e-5, atol=1e-5)
    # the whole loop from there matches scikit-learn's Lloyd from the same start (same relocation rule)
    centroids, labels, inertia, iterations = lloyd(x, start, chunk_rows=10)
    reference = KMeans(5, init=start, n_init=1, algorithm="lloyd").fit(x)
    assert int(iterations) > 1 and len(np.unique(np.asarray(labels))) == 5
    np.testing.assert_allclose(float(inertia), reference.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(labels), reference.labels_)


def test_kmeans_rejects_bad_arguments():
    x = np.zeros((5, 2), np.float32)
    for k in (0, 6):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            kmeans(x, k, jax.random.key(0))
    for name in ("n_init", "max_iter", "local_trials", "chunk_rows"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            kmeans(x, 2, jax.random.key(0), **{name: 0})
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        kmeans(x[0], 1, jax.random.key(0))


# -------------------------------------------------------------------------------- nearest neighbours


def brute_force_distances(queries, bank, weights):
    return sum(w * np.linalg.norm(np.asarray(q, np.float64)[:, None] - np.asarray(b, np.float64)[None], axis=-1)
               for w, q, b in zip(weights, queries, bank))


def brute_force_neighbours(queries, bank, weights, m):
    distances = brute_force_distances(queries, bank, weights)
    order = np.argsort(distances, axis=1, kind="stable")[:, :m]
    return order, np.take_along_axis(distances, order, axis=1)


def assert_same_neighbours(indices, distances, queries, bank, weights, m):
    """Equal to the brute-force order, except that float32 may swap neighbours whose float64 distances
    differ by less than its rounding (1e-5 here)."""
    indices, distances = np.asarray(indices), np.asarray(distances)
    full = brute_force_distances(queries, bank, weights)
    expected_indices, expected_distances = brute_force_neighbours(queries, bank, weights, m)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, indices, axis=1), expected_distances, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == m for row in indices.tolist())
    sorted_all = np.sort(full, axis=1)
    gap_before = np.diff(sorted_all, axis=1, prepend=-np.inf)[:, :m]
    gap_after = np.diff(sorted_all, axis=1, append=np.inf)[:, :m]
    clear = (gap_before > 1e-5) & (gap_after > 1e-5)
    assert clear.mean() > 0.9  # the comparison is not vacuous
    np.testing.assert_array_equal(indices[clear], expected_indices[clear])


def random_layers(rng, count, dims):
    return [project_to_sphere(rng.normal(size=(count, e)).astype(np.float32)) for e in dims]


@pytest.mark.parametrize("samples_minor", [True, False])  # the CPU's and the accelerators' layout
@pytest.mark.parametrize("n,m,block_size", [(1, 1, 4096), (97, 10, 7), (97, 97, 16), (1000, 300, 128),
                                            (1000, 5, 4096), (1000, 64, 999), (10_000, 10, 4096)])
def test_nearest_neighbours_equal_brute_force(n, m, block_size, samples_minor):
    rng = np.random.default_rng(n + m)
    dims, weights = (5, 3, 7), (1.0, 0.0, 2.5)
    queries, bank = random_layers(rng, 13, dims), random_layers(rng, n, dims)
    indices, distances = nearest_neighbours(queries, bank, weights, m, block_size=block_size,
                                            samples_minor=samples_minor)
    assert_same_neighbours(indices, distances, queries, bank, weights, m)


@pytest.mark.parametrize("samples_minor", [True, False])
def test_nearest_neighbours_find_themselves_and_break_ties_by_index(samples_minor):
    rng = np.random.default_rng(11)
    bank = random_layers(rng, 50, (4, 9))
    bank = [jnp.concatenate([layer, layer[:5]]) for layer in bank]  # samples 50..54 duplicate 0..4
    indices, distances = nearest_neighbours([layer[:5] for layer in bank], bank, [1.0, 1.0], 2, block_size=8,
                                            samples_minor=samples_minor)
    np.testing.assert_array_equal(np.asarray(indices), np.stack([np.arange(5), np.arange(50, 55)], 1))
    assert not np.asarray(distances).any()  # exactly 0, not sqrt(rounding noise)


def test_nearest_neighbours_trace_once_for_new_weights():
    rng = np.random.default_rng(12)
    queries, bank = random_layers(rng, 3, (5, 5)), random_layers(rng, 40, (5, 5))
    from xai_jax import debug
    results = [nearest_neighbours(queries, bank, (1, 1), 6, block_size=11)]
    with debug.assert_max_compiles(0, "nearest neighbours with other layer weights"):
        results += [nearest_neighbours(queries, bank, w, 6, block_size=11) for w in ((1, 0), (0, 3))]
    for w, (indices, distances) in zip(((1, 1), (1, 0), (0, 3)), results):
        assert_same_neighbours(indices, distances, queries, bank, w, 6)


@pytest.mark.parametrize("n,m,chunk_rows,block_size", [(97, 10, 7, 3), (97, 97, 16, 16), (1000, 300, 333, 128),
                                                       (200, 5, 1, 4096), (64, 64, 64, 5), (130, 40, 129, 7)])
def test_nearest_neighbours_read_in_chunks_equal_brute_force(n, m, chunk_rows, block_size):
    rng = np.random.default_rng(n + m + chunk_rows)
    dims, weights = (5, 3, 7), (1.0, 0.0, 2.5)
    queries, bank = random_layers(rng, 13, dims), random_layers(rng, n, dims)
    indices, distances = nearest_neighbours(queries, bank, weights, m, block_size=block_size, chunk_rows=chunk_rows)
    assert_same_neighbours(indices, distances, queries, bank, weights, m)


class _CountedReads:
    """A bank layer that records the rows of every read."""

    def __init__(self, rows):
        self.rows, self.reads = rows, []
        self.shape, self.ndim = rows.shape, rows.ndim

    def __getitem__(self, key):
        out = self.rows[key]
        self.reads.append(len(out))
        return out


def test_nearest_neighbours_read_a_disk_bank_a_chunk_at_a_time_with_one_program(tmp_path):
    from xai_jax import debug
    from xai_jax.rowstore import DiskRows
    rng = np.random.default_rng(13)
    x = rng.normal(size=(50, 6)).astype(np.float16)
    x = np.concatenate([x, x[:5]])  # rows 50..54 duplicate 0..4: ties across chunks keep the lower index
    disk = DiskRows(tmp_path / "bank.npy", x.shape, x.dtype)
    disk[:] = x
    counted = _CountedReads(disk)
    queries = x[:5].astype(np.float32)
    indices, distances = nearest_neighbours([queries], [counted], [1.0], 2, block_size=3, chunk_rows=8)
    np.testing.assert_array_equal(np.asarray(indices), np.stack([np.arange(5), np.arange(50, 55)], 1))
    assert not np.asarray(distances).any()
    assert counted.reads == [8] * 6 + [7]  # never more than a chunk of the 55 rows in memory
    expected = nearest_neighbours([queries], [x.astype(np.float32)], [1.0], 12)
    other = DiskRows(tmp_path / "other.npy", x.shape, x.dtype)
    other[:] = x[::-1]
    again = nearest_neighbours([queries], [disk], [1.0], 12, block_size=3, chunk_rows=8)
    with debug.assert_max_compiles(0, "nearest neighbours over another bank of the same size"):
        nearest_neighbours([queries], [other], [1.0], 12, block_size=3, chunk_rows=8)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(expected[0]))
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(expected[1]))


@pytest.mark.parametrize("weights,match", [((1.0, -0.5), "non-negative"), ((0, 0), "all zero"),
                                           ((1.0,), "expected 2 layer weights"), ((1.0, np.nan), "finite")])
def test_nearest_neighbours_reject_bad_layer_weights(weights, match):
    layers = [np.zeros((4, 3), np.float32)] * 2
    with pytest.raises(ValueError, match=match):
        nearest_neighbours(layers, layers, weights, 2)


def test_nearest_neighbours_reject_bad_shapes():
    q, b = np.zeros((4, 3), np.float32), np.zeros((9, 3), np.float32)
    with pytest.raises(ValueError, match=r"m must be in \[1, N\]"):
        nearest_neighbours([q], [b], [1.0], 10)
    with pytest.raises(ValueError, match="layer 1"):
        nearest_neighbours([q, q], [b, np.zeros((9, 4), np.float32)], [1.0, 1.0], 2)
    with pytest.raises(ValueError, match="same positive number"):
        nearest_neighbours([q], [b, b], [1.0, 1.0], 2)
    with pytest.raises(ValueError, match="block_size"):
        nearest_neighbours([q], [b], [1.0], 2, block_size=0)
    with pytest.raises(ValueError, match="chunk_rows"):
        nearest_neighbours([q], [b], [1.0], 2, chunk_rows=0)
