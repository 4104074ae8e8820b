"""Near-miss kernels against a NumPy loop over the definition (DESIGN "Near-miss analysis")."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import csgraph

from xai_jax import engine
from xai_jax.data import Batches
from xai_jax.data.base import Source
from xai_jax.kernels import www, xnn_metrics
from xai_jax.kernels.floyd_warshall import floyd_warshall
from xai_jax.kernels.near_miss import (connection_weights, fill_disconnected, label_probability_matrix,
                                       near_miss_init, near_miss_matrix, near_miss_update)


def numpy_near_misses(probs, labels, mask, num_classes, *, k=3, t=1e-6, min_confidence=0.0):
    """The definition, one image at a time: stable descending order = argmax's and top_k's tie rule."""
    sums = np.zeros((num_classes, num_classes))
    events = np.zeros((num_classes, num_classes), np.int64)
    counts = np.zeros(num_classes)
    for p, label, valid in zip(np.asarray(probs, np.float64), labels, mask):
        order = np.argsort(-p, kind="stable")
        if not valid or order[0] != label or p[order[0]] < min_confidence:
            continue
        counts[label] += 1
        for j in order[:k]:
            if j != label and p[j] >= t:
                sums[label, j] += p[j]
                events[label, j] += 1
    return sums, events, counts


def numpy_label_sums(probs, labels, mask, num_classes):
    """The paper's sums literally, one image at a time: every non-padding image adds its whole row."""
    sums, counts = np.zeros((num_classes, num_classes)), np.zeros(num_classes)
    for p, label, valid in zip(np.asarray(probs, np.float64), labels, mask):
        if valid:
            sums[label] += p
            counts[label] += 1
    return sums, counts


def random_batch(rng, batch, num_classes, *, ties=False, sharp=3.0):
    """Softmax probabilities whose labels are right about half the time; ``ties`` makes exact ties by
    normalising small integers (equal integers over the same sum give equal floats)."""
    if ties:
        scores = rng.integers(0, 4, (batch, num_classes)).astype(np.float32)
        scores[scores.sum(1) == 0, 0] = 1
        probs = scores / scores.sum(1, keepdims=True)
    else:
        logits = rng.normal(size=(batch, num_classes)) * sharp
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    labels = np.where(rng.random(batch) < 0.5, probs.argmax(1), rng.integers(0, num_classes, batch))
    mask = rng.random(batch) < 0.8
    return probs.astype(np.float32), labels.astype(np.int32), mask


def update(state, probs, labels, mask, **options):
    return near_miss_update(state, jnp.asarray(probs), jnp.asarray(labels), jnp.asarray(mask), **options)


def assert_state_equals(state, sums, events, counts):
    np.testing.assert_allclose(np.asarray(state.sums), sums, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(state.events), events)
    np.testing.assert_array_equal(np.asarray(state.counts), counts)


def test_init_shapes_and_dtypes():
    state = near_miss_init(7)
    assert {k: (v.shape, v.dtype) for k, v in state._asdict().items()} == {
        "sums": ((7, 7), jnp.float32), "events": ((7, 7), jnp.int32), "counts": ((7,), jnp.float32),
        "label_sums": ((7, 7), jnp.float32), "label_counts": ((7,), jnp.float32)}
    assert not any(np.any(np.asarray(v)) for v in state)


@pytest.mark.parametrize("make_state", [
    lambda: near_miss_init(4),
    lambda: www.topn_init(3, 2),
    lambda: www.class_sums_init(4, 3),
    lambda: xnn_metrics.correlation_init(3),
], ids=["NearMissState", "TopNState", "ClassContributionState", "CorrelationState"])
def test_kernel_states_are_named_tuples_that_round_trip_through_jit(make_state):
    state = make_state()
    assert isinstance(state, tuple) and hasattr(state, "_fields")
    out = jax.jit(lambda s: s)(state)
    assert type(out) is type(state)
    assert out._fields == state._fields
    for a, b in zip(out, state):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Saved as state._asdict() in an npz file, the fields rebuild the same state.
    buffer = io.BytesIO()
    np.savez(buffer, **jax.device_get(state)._asdict())
    buffer.seek(0)
    with np.load(buffer) as saved:
        loaded = type(state)(**saved)
    for a, b in zip(loaded, state):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("num_classes,k,t,min_confidence,ties", [
    (2, 1, 1e-6, 0.0, False),     # k = 1: no near misses, only counts
    (7, 3, 1e-6, 0.0, False),
    (7, 6, 1e-6, 0.0, True),      # k = C - 1, exact ties
    (13, 3, 0.05, 0.0, True),     # a cut-off that removes some top-k labels
    (13, 4, 1e-6, 0.6, False),    # min_confidence drops uncertain images
    (31, 30, 1e-3, 0.3, False),   # k = C - 1 with both filters
])
def test_update_matches_the_definition(num_classes, k, t, min_confidence, ties):
    rng = np.random.default_rng(num_classes * 100 + k)
    probs, labels, mask = random_batch(rng, 57, num_classes, ties=ties)
    state = update(near_miss_init(num_classes), probs, labels, mask, k=k, t=t, min_confidence=min_confidence)
    sums, events, counts = numpy_near_misses(probs, labels, mask, num_classes, k=k, t=t,
                                             min_confidence=min_confidence)
    assert counts.sum() > 0 and (k == 1 or events.sum() > 0)  # the case really exercises something
    assert_state_equals(state, sums, events, counts)


def test_ties_follow_argmax_and_the_lower_label():
    # Image 0: labels 1 and 3 tie at the top, so it is correct only as label 1; its near misses among the
    # top 2 are {3}. Image 1: labelled 3, the tie's argmax is 1, so it is not counted.
    probs = np.array([[0.1, 0.3, 0.1, 0.3, 0.2], [0.1, 0.3, 0.1, 0.3, 0.2]], np.float32)
    state = update(near_miss_init(5), probs, np.array([1, 3]), np.array([True, True]), k=2)
    expected_sums = np.zeros((5, 5), np.float32)
    expected_sums[1, 3] = 0.3
    assert_state_equals(state, expected_sums, (expected_sums > 0).astype(int), [0, 1, 0, 0, 0])


def test_thresholds_are_inclusive():
    # P(j) == t makes a near miss and a top-1 probability == min_confidence counts (both ">=").
    probs = np.array([[0.5, 0.25, 0.125, 0.125], [0.25, 0.5, 0.125, 0.125]], np.float32)
    state = update(near_miss_init(4), probs, np.array([0, 1]), np.array([True, True]), k=3, t=0.125,
                   min_confidence=0.5)
    sums, events, counts = numpy_near_misses(probs, [0, 1], [True, True], 4, k=3, t=0.125, min_confidence=0.5)
    assert counts.tolist() == [1, 1, 0, 0] and events[0, 2] == 1 and events[1, 2] == 1
    assert_state_equals(state, sums, events, counts)
    excluding = update(near_miss_init(4), probs, np.array([0, 1]), np.array([True, True]), k=3, t=0.126,
                       min_confidence=0.51)
    assert not np.asarray(excluding.counts).any()


def test_padding_rows_change_nothing():
    rng = np.random.default_rng(1)
    probs, labels, _ = random_batch(rng, 40, 9)
    everything = update(near_miss_init(9), probs, labels, np.ones(40, bool))
    padded = update(near_miss_init(9), np.concatenate([probs, probs[:8]]), np.concatenate([labels, labels[:8]]),
                    np.arange(48) < 40)
    for got, expected in zip(padded, everything):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_several_batches_equal_one_big_batch():
    rng = np.random.default_rng(2)
    probs, labels, mask = random_batch(rng, 96, 11)
    big = update(near_miss_init(11), probs, labels, mask, k=4)
    state = near_miss_init(11)
    for start in range(0, 96, 32):
        state = update(state, probs[start:start + 32], labels[start:start + 32], mask[start:start + 32], k=4)
    np.testing.assert_allclose(np.asarray(state.sums), np.asarray(big.sums), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.label_sums), np.asarray(big.label_sums), rtol=1e-6)
    for key in ("events", "counts", "label_counts"):
        np.testing.assert_array_equal(np.asarray(getattr(state, key)), np.asarray(getattr(big, key)))


class ProbabilitySource(Source):
    """Precomputed probabilities served as the batch's ``images``."""

    def __init__(self, probs, labels):
        self.probs, self.labels = probs, labels
        self.class_names = tuple(str(i) for i in range(probs.shape[1]))

    def __len__(self):
        return len(self.labels)

    def read(self, indices):
        return self.probs[indices], self.labels[indices]


def test_engine_pass_traces_once_and_matches_the_definition():
    rng = np.random.default_rng(4)
    probs, labels, _ = random_batch(rng, 45, 13)  # 45 = 2 full batches of 16 and a padded one
    traces = []

    def step(state, batch, params):
        traces.append(batch["images"].shape)  # runs only while tracing
        return near_miss_update(state, batch["images"], batch["labels"], batch["mask"], k=3,
                                t=params["t"], min_confidence=params["min_confidence"])

    source = ProbabilitySource(probs, labels)
    for t, min_confidence in [(1e-6, 0.0), (1e-2, 0.4)]:  # traced hyper-parameters: no recompilation
        state = engine.run(step, near_miss_init(13), Batches(source, 16), {"t": t, "min_confidence": min_confidence},
                           progress=False)
        expected = numpy_near_misses(probs, labels, np.ones(45, bool), 13, t=t, min_confidence=min_confidence)
        assert_state_equals(state, *expected)
    assert traces == [(16, 13)]


def test_direct_update_does_not_retrace_for_new_values():
    rng = np.random.default_rng(5)
    traces = []

    @jax.jit
    def counted_update(state, probs, labels, mask, t):
        traces.append(1)
        return near_miss_update(state, probs, labels, mask, k=2, t=t)

    state = near_miss_init(6)
    for t in (1e-6, 1e-3, 0.1):
        state = counted_update(state, *map(jnp.asarray, random_batch(rng, 10, 6)), t)
    assert len(traces) == 1


def test_matrix_divides_by_counted_images_and_leaves_empty_rows_zero():
    rng = np.random.default_rng(6)
    probs, labels, mask = random_batch(rng, 80, 8)
    labels[labels == 5] = 4  # label 5 has no images at all
    mask[labels == 2] = False  # label 2 has images, none counted
    state = update(near_miss_init(8), probs, labels, mask)
    sums, _, counts = numpy_near_misses(probs, labels, mask, 8)
    expected = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    p = np.asarray(near_miss_matrix(state))
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    assert not p[[2, 5]].any() and np.isfinite(p).all() and p[counts > 0].any()


@pytest.mark.parametrize("num_classes,num_images,batch", [
    (2, 1, 1),      # one image, one batch
    (7, 57, 16),    # three full batches and a padded one
    (13, 45, 45),   # one batch, no padding
    (31, 100, 37),  # a batch size that divides nothing
])
def test_label_sums_fold_over_every_image_and_match_numpy(num_classes, num_images, batch):
    # The paper's p_ij literally: all images of label i (misclassified and uncertain ones too), all labels j,
    # divided by N_i = all images of label i; through the engine's fold with its padded last batch.
    rng = np.random.default_rng(num_classes * 1000 + num_images)
    probs, labels, _ = random_batch(rng, num_images, num_classes)
    if num_classes > 2:
        labels[labels == 1] = 0  # label 1 has no images: its row of p stays 0
    state = engine.run(lambda st, b, params: near_miss_update(st, b["images"], b["labels"], b["mask"], k=1,
                                                              **params),
                       near_miss_init(num_classes), Batches(ProbabilitySource(probs, labels), batch),
                       {"t": 0.5, "min_confidence": 0.99}, progress=False)  # thresholds play no part in these sums
    sums, counts = numpy_label_sums(probs, labels, np.ones(num_images, bool), num_classes)
    np.testing.assert_allclose(np.asarray(state.label_sums), sums, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(state.label_counts), counts)
    expected = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    np.fill_diagonal(expected, 0)
    p = np.asarray(label_probability_matrix(state))
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    # each row of an image-holding label sums to 1 - mean P(i | x) of its images
    held = counts > 0
    np.testing.assert_allclose(p[held].sum(1) + np.diag(sums)[held] / counts[held], 1, rtol=1e-5)
    if num_classes > 2:
        assert not p[1].any()


def test_the_update_keeps_no_batch_sized_copy_of_the_probabilities():
    """The compiled update scatters the probability rows it is given: its temporaries stay well below one
    ``[B, C]`` float32 copy (a masked copy of the rows was 341 MiB at B = 4,096, C = 21,841)."""
    num_classes, batch = 1_003, 517
    state = jax.eval_shape(lambda: near_miss_init(num_classes))
    compiled = jax.jit(near_miss_update, static_argnames="k", donate_argnums=0).lower(
        state, jax.ShapeDtypeStruct((batch, num_classes), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((batch,), jnp.bool_), k=3).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < batch * num_classes * 4 // 4


def test_label_sums_skip_padding_rows():
    rng = np.random.default_rng(8)
    probs, labels, mask = random_batch(rng, 50, 9)
    state = update(near_miss_init(9), probs, labels, mask)
    sums, counts = numpy_label_sums(probs, labels, mask, 9)
    assert counts.sum() == mask.sum() < 50
    np.testing.assert_allclose(np.asarray(state.label_sums), sums, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(state.label_counts), counts)


def numpy_weights(p, events, t, symmetrize, mode):
    s = (p + p.T) / 2 if symmetrize == "mean" else np.maximum(p, p.T)
    if mode == "probability":
        w = np.where(s >= t, 1 - s, np.inf)
    elif mode == "summed":
        w = np.where(s >= t, (1 - p) + (1 - p.T), np.inf)
    else:
        n = events + events.T
        w = np.full(p.shape, np.inf)
        w[n > 0] = 1 / n[n > 0]
    np.fill_diagonal(w, 0)
    return w


@pytest.mark.parametrize("symmetrize", ["mean", "max"])
@pytest.mark.parametrize("mode", ["probability", "summed", "count"])
def test_connection_weights_match_their_equations(symmetrize, mode):
    rng = np.random.default_rng(7)
    n = 13
    p = np.where(rng.random((n, n)) < 0.3, rng.uniform(0, 0.5, (n, n)), 0).astype(np.float32)
    p[0, 1], p[1, 0] = 1.5e-6, 0.0  # mean 7.5e-7 is below t = 1e-6, max 1.5e-6 above it
    events = np.where(p > 0, rng.integers(1, 5, (n, n)), 0).astype(np.int32)
    w = connection_weights(p, events, t=1e-6, symmetrize=symmetrize, mode=mode)
    expected = numpy_weights(p.astype(np.float64), events, 1e-6, symmetrize, mode)
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w).T)
    assert np.isinf(expected).any() and np.isfinite(expected[~np.eye(n, dtype=bool)]).any()


def test_connection_weights_reject_unknown_names_and_count_without_events():
    p = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="valid: mean, max"):
        connection_weights(p, symmetrize="min")
    with pytest.raises(ValueError, match="valid: probability, summed, count"):
        connection_weights(p, mode="distance")
    with pytest.raises(ValueError, match="events"):
        connection_weights(p, mode="count")


def test_fill_disconnected():
    d = np.array([[0, 1, np.inf], [1, 0, np.inf], [np.inf, np.inf, 0]], np.float32)
    d[0, 1] = 0.75
    np.testing.assert_array_equal(fill_disconnected(d), [[0, 0.75, 2], [1, 0, 2], [2, 2, 0]])
    nothing = np.full((3, 3), np.inf, np.float32)
    np.fill_diagonal(nothing, 0)
    np.testing.assert_array_equal(fill_disconnected(nothing), 1 - np.eye(3))
    np.testing.assert_array_equal(fill_disconnected(np.zeros((1, 1), np.float32)), [[0]])
    connected = np.array([[0, 0.5], [0.5, 0]], np.float32)
    np.testing.assert_array_equal(fill_disconnected(connected), connected)


def test_pipeline_matches_scipy_shortest_paths():
    """Probabilities -> near-miss matrix -> weights -> shortest paths -> filled metric, against SciPy."""
    rng = np.random.default_rng(8)
    probs, labels, mask = random_batch(rng, 300, 31, sharp=2.0)
    probs[:, 28:] = 0  # labels 28-30 are never predicted nor near misses: isolated vertices
    state = update(near_miss_init(31), probs, labels, mask)
    sums, _, counts = numpy_near_misses(probs, labels, mask, 31)
    p = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    w = numpy_weights(p, None, 1e-6, "mean", "probability")
    expected = csgraph.floyd_warshall(w, directed=False)
    finite = np.isfinite(expected)
    assert not finite.all()  # some labels are cut off, so the fill matters
    expected[~finite] = 2 * expected[finite & ~np.eye(31, dtype=bool)].max()
    d = fill_disconnected(floyd_warshall(connection_weights(near_miss_matrix(state)), block_size=8))
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-5)
