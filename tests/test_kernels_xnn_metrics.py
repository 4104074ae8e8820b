"""XNN metrics (paper section 4.2 and Algorithm 1) against NumPy loops over their definitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax.kernels.xnn_metrics import (correlation_init, correlation_matrix, correlation_update, f_cls, f_reg,
                                         heatmap_correlation, locality, locality_from_histogram, mask_part_weights,
                                         o1, o2, part_probabilities, pixel_distribution,
                                         voronoi_part_weights)


def test_f_reg_matches_a_loop():
    rng = np.random.default_rng(0)
    approx, target = rng.normal(size=(2, 29)).astype(np.float32)
    mask = rng.random(29) < 0.7
    expected = sum(abs(float(a) - float(t)) for a, t in zip(approx, target)) / 29
    np.testing.assert_allclose(f_reg(approx, target), expected, rtol=1e-6)
    expected_masked = np.mean([abs(float(a) - float(t)) for a, t, m in zip(approx, target, mask) if m])
    np.testing.assert_allclose(f_reg(approx, target, mask), expected_masked, rtol=1e-6)


def numpy_f_cls(logits, class_index, approx):
    kept = 0
    for row, value in zip(logits, approx):
        replaced = row.copy()
        replaced[class_index] = value
        kept += int(np.argmax(replaced) == np.argmax(row))
    return kept / len(logits)


def test_f_cls_matches_a_loop_for_one_class_and_for_many_at_once():
    rng = np.random.default_rng(1)
    logits = rng.integers(-3, 4, (31, 7)).astype(np.float32)  # small integers: many exact ties
    classes = np.array([0, 3, 6, 3])
    approx = (logits[:, classes] + rng.integers(-2, 3, (31, 4))).astype(np.float32)
    expected = [numpy_f_cls(logits, c, approx[:, k]) for k, c in enumerate(classes)]
    assert 0 < min(expected) and max(expected) < 1  # some decisions change, some do not
    np.testing.assert_allclose(f_cls(logits, classes, approx), expected, rtol=1e-6)
    for k, c in enumerate(classes):
        np.testing.assert_allclose(f_cls(logits, int(c), approx[:, k]), expected[k], rtol=1e-6)
    mask = rng.random(31) < 0.5
    np.testing.assert_allclose(f_cls(logits, classes, approx, mask),
                               [numpy_f_cls(logits[mask], c, approx[mask, k]) for k, c in enumerate(classes)],
                               rtol=1e-6)


def test_f_cls_is_1_for_exact_approximations():
    logits = np.random.default_rng(2).normal(size=(13, 5)).astype(np.float32)
    assert float(f_cls(logits, 2, logits[:, 2])) == 1


@pytest.mark.parametrize("n", [1, 2, 5])
def test_heatmap_correlation_matches_corrcoef_and_streams(n):
    rng = np.random.default_rng(n)
    shared = rng.random((23, 1, 5, 7))
    heatmaps = (rng.random((23, n, 5, 7)) + shared + 100).astype(np.float32)  # correlated, far from 0
    expected = np.atleast_2d(np.corrcoef(np.moveaxis(heatmaps, 1, 0).reshape(n, -1).astype(np.float64)))
    np.testing.assert_allclose(heatmap_correlation(heatmaps), expected, rtol=1e-4, atol=1e-5)
    state = correlation_init(n)
    for start in range(0, 23, 8):  # batches of 8 with the last one padded
        batch = heatmaps[start:start + 8]
        mask = np.arange(8) < len(batch)
        batch = np.concatenate([batch, np.full((8 - len(batch), n, 5, 7), 1e3, np.float32)])
        state = correlation_update(state, batch, mask)
    assert float(state.count) == 23 * 5 * 7
    np.testing.assert_allclose(correlation_matrix(state), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 4, 7, 5), (1, 1, 1, 1), (2, 3, 2, 5, 9)])
def test_pixel_distribution_sums_each_map_to_one_and_leaves_zero_maps_zero(shape):
    rng = np.random.default_rng(sum(shape))
    maps = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
    maps.reshape(-1, *shape[-2:])[0] = 0  # an all-zero map has no distribution
    expected = np.zeros_like(maps)
    flat, out = maps.reshape(-1, *shape[-2:]), expected.reshape(-1, *shape[-2:])
    for i, one in enumerate(flat):
        if one.sum() > 0:
            out[i] = one / one.sum()
    np.testing.assert_allclose(pixel_distribution(maps), expected, rtol=1e-6, atol=1e-8)


def test_o1_and_o2_are_0_for_the_identity_and_match_numpy():
    for n in (1, 2, 5):
        assert float(o1(jnp.eye(n))) == pytest.approx(0, abs=1e-6)
        assert float(o2(jnp.eye(n))) == pytest.approx(0, abs=1e-6)
    rng = np.random.default_rng(3)
    p = np.corrcoef(rng.normal(size=(5, 11)) + rng.normal(size=(1, 11)))
    np.testing.assert_allclose(o1(p.astype(np.float32)), np.linalg.norm(p) - math.sqrt(5), rtol=1e-5)
    np.testing.assert_allclose(o2(p.astype(np.float32)), -np.linalg.slogdet(p)[1], rtol=1e-4)
    assert float(o1(np.ones((5, 5), np.float32))) == pytest.approx(5 - math.sqrt(5), rel=1e-6)


def test_uncorrelated_heatmaps_give_o1_and_o2_of_0():
    # Orthogonal centred columns: every off-diagonal correlation is 0.
    columns = np.linalg.qr(np.random.default_rng(4).normal(size=(3 * 4 * 5, 4)))[0]
    columns -= columns.mean(0)
    columns = np.linalg.qr(np.concatenate([np.ones((60, 1)), columns], axis=1))[0][:, 1:]
    heatmaps = columns.T.reshape(4, 3, 4, 5).transpose(1, 0, 2, 3).astype(np.float32)
    p = heatmap_correlation(heatmaps)
    np.testing.assert_allclose(p, np.eye(4), atol=1e-5)
    assert float(o1(p)) == pytest.approx(0, abs=1e-4) and float(o2(p)) == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("n,duplicate", [(2, (0, 1)), (5, (1, 4))])
def test_o2_is_inf_for_duplicated_heatmaps(n, duplicate):
    heatmaps = np.random.default_rng(n).random((13, n, 6, 5)).astype(np.float32)
    heatmaps[:, duplicate[1]] = heatmaps[:, duplicate[0]]
    p = heatmap_correlation(heatmaps)
    assert float(p[duplicate]) == pytest.approx(1, abs=1e-6)
    assert float(o2(p)) == np.inf
    assert np.isfinite(float(o1(p)))


def test_constant_heatmaps_have_no_correlation():
    heatmaps = np.random.default_rng(5).random((7, 3, 4, 4)).astype(np.float32)
    heatmaps[:, 1] = 0  # a dead x-feature
    p = np.asarray(heatmap_correlation(heatmaps))
    assert np.isnan(p[1]).all() and np.isnan(p[:, 1]).all() and np.isfinite(p[[0, 2]][:, [0, 2]]).all()
    assert np.isnan(float(o1(p))) and np.isnan(float(o2(p)))


def numpy_voronoi(keypoints, visible, height, width, box=None):
    """Algorithm 1 pixel by pixel: the nearest visible keypoint (ties to the lower index) owns a pixel,
    then 1 - distance / (largest distance in the region)."""
    parts = len(keypoints)
    owner = np.full((height, width), -1)
    for i in range(height):
        for j in range(width):
            if box is not None and not (box[0] <= j <= box[2] and box[1] <= i <= box[3]):
                continue
            best = np.inf
            for p in range(parts):
                squared = (j - keypoints[p][0]) ** 2 + (i - keypoints[p][1]) ** 2
                if visible[p] and squared < best:
                    best, owner[i, j] = squared, p
    weights = np.zeros((parts, height, width))
    for p in range(parts):
        region = [(i, j) for i in range(height) for j in range(width) if owner[i, j] == p]
        distances = {(i, j): math.hypot(j - keypoints[p][0], i - keypoints[p][1]) for i, j in region}
        farthest = max(distances.values(), default=0)
        for (i, j), d in distances.items():
            weights[p, i, j] = 1 - d / farthest if farthest > 0 else 1
    if box is None:
        return weights
    context = np.array([[not (box[0] <= j <= box[2] and box[1] <= i <= box[3]) for j in range(width)]
                        for i in range(height)], float)
    return np.concatenate([weights, context[None]])


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("integer", [True, False])
def test_voronoi_weights_match_a_pixel_loop(parts, integer):
    rng = np.random.default_rng(parts * 2 + integer)
    height, width = 7, 11
    keypoints = rng.integers(0, [width, height], (parts, 2)) if integer else rng.uniform(-1, [width, height],
                                                                                        (parts, 2))
    keypoints = keypoints.astype(np.float32)
    visible = np.ones(parts, bool) if parts == 1 else rng.random(parts) < 0.7
    visible[0] = True
    box = np.array([2, 1, 8, 5], np.float32)
    np.testing.assert_allclose(voronoi_part_weights(keypoints, visible, height, width),
                               numpy_voronoi(keypoints, visible, height, width), atol=1e-6)
    np.testing.assert_allclose(voronoi_part_weights(keypoints, visible, height, width, box),
                               numpy_voronoi(keypoints, visible, height, width, box), atol=1e-6)


def test_voronoi_ties_invisible_parts_and_batches():
    # Keypoints at x = 1 and x = 5 on row 2: column 3 is equidistant and goes to part 0; part 2 is invisible.
    keypoints = np.array([[1, 2], [5, 2], [3, 0]], np.float32)
    visible = np.array([True, True, False])
    weights = np.asarray(voronoi_part_weights(keypoints, visible, 5, 7))
    assert (weights[2] == 0).all()
    assert weights[0, 2, 1] == 1 and weights[1, 2, 5] == 1  # the keypoints' own pixels
    assert weights[0, 2, 3] > 0 and weights[1, 2, 3] == 0
    np.testing.assert_allclose(weights, numpy_voronoi(keypoints, visible, 5, 7), atol=1e-6)
    nothing = np.asarray(voronoi_part_weights(keypoints, np.zeros(3, bool), 5, 7))
    assert (nothing == 0).all()
    batch = np.stack([keypoints, keypoints[::-1]])
    batched = jax.vmap(lambda k, v: voronoi_part_weights(k, v, 5, 7))(batch, np.stack([visible, visible[::-1]]))
    np.testing.assert_array_equal(batched[0], weights)
    np.testing.assert_allclose(batched[1], numpy_voronoi(batch[1], visible[::-1], 5, 7), atol=1e-6)


def test_mask_part_weights_from_masks_and_label_maps():
    labels = np.array([[0, 0, 1], [2, -1, 1]])
    weights = np.asarray(mask_part_weights(labels, num_parts=3))
    assert weights.shape == (3, 2, 3)
    np.testing.assert_array_equal(weights, [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]],
                                            [[0, 0, 0], [1, 0, 0]]])
    masks = np.stack([labels == 0, labels >= 0])  # overlapping masks
    np.testing.assert_array_equal(mask_part_weights(masks), masks.astype(np.float32))
    np.testing.assert_array_equal(mask_part_weights(labels[None], num_parts=3), weights[None])


def numpy_locality(heatmaps, part_weights):
    histogram = np.zeros((heatmaps.shape[1], part_weights.shape[1]))
    for m in range(len(heatmaps)):
        for n in range(heatmaps.shape[1]):
            total = heatmaps[m, n].sum()
            if total == 0:
                continue
            for p in range(part_weights.shape[1]):
                histogram[n, p] += (heatmaps[m, n] / total * part_weights[m, p]).sum() / len(heatmaps)
    share = histogram / histogram.sum(1, keepdims=True)
    return np.array([-sum(s * math.log(s) for s in row if s > 0) for row in share]), histogram


def test_locality_matches_a_loop():
    rng = np.random.default_rng(6)
    heatmaps = rng.random((13, 5, 6, 7)).astype(np.float32) ** 4
    heatmaps[3, 2] = 0  # an all-zero heatmap adds nothing
    keypoints = rng.integers(0, [7, 6], (13, 4, 2)).astype(np.float32)
    visible = rng.random((13, 4)) < 0.8
    box = np.array([1, 1, 5, 4], np.float32)
    weights = jax.vmap(lambda k, v: voronoi_part_weights(k, v, 6, 7, box))(keypoints, visible)
    expected, histogram = numpy_locality(heatmaps, np.asarray(weights))
    np.testing.assert_allclose(locality(heatmaps, weights), expected, rtol=1e-5)
    np.testing.assert_allclose(part_probabilities(heatmaps, weights).mean(0), histogram, rtol=1e-5, atol=1e-7)
    mask = np.arange(13) < 9
    np.testing.assert_allclose(locality(heatmaps, weights, mask), numpy_locality(heatmaps[:9], np.asarray(
        weights[:9]))[0], rtol=1e-5)


def test_locality_is_0_on_one_part_and_log_parts_when_spread_evenly():
    labels = np.arange(4 * 6).reshape(4, 6) % 6  # 6 objects, one column each
    weights = np.asarray(mask_part_weights(np.stack([labels, labels]), num_parts=6))
    on_one = np.zeros((2, 3, 4, 6), np.float32)
    on_one[:, 0, :, 2] = np.random.default_rng(7).random((2, 4)) + 0.1  # x-feature 0 on object 2 only
    on_one[0, 1, 1, 4] = 5.0  # x-feature 1 on object 4 only
    on_one[:, 2] = 1.0  # x-feature 2 spread evenly
    np.testing.assert_allclose(locality(on_one, weights), [0, 0, math.log(6)], atol=1e-6)
    np.testing.assert_allclose(locality_from_histogram(np.array([[0, 0, 0], [1, 1, 0]], np.float32)),
                               [np.nan, math.log(2)], rtol=1e-6)


def test_jit_agrees_with_eager():
    """The kernels with Python-level branches (vmap over classes, optional box, masks), run op by op."""
    rng = np.random.default_rng(8)
    heatmaps = rng.random((5, 3, 4, 5)).astype(np.float32)
    keypoints = rng.uniform(0, 4, (3, 2)).astype(np.float32)
    visible = np.array([True, False, True])
    box = np.array([1, 0, 3, 2], np.float32)
    logits, approx = rng.normal(size=(11, 4)).astype(np.float32), rng.normal(size=(11, 2)).astype(np.float32)
    mask = np.array([True, True, False, True, True])

    def metrics():
        weights = jnp.broadcast_to(voronoi_part_weights(keypoints, visible, 4, 5, box), (5, 4, 4, 5))
        return [f_cls(logits, np.array([1, 3]), approx), weights, locality(heatmaps, weights, mask)]

    jitted = metrics()
    with jax.disable_jit():
        eager = metrics()
    for a, b in zip(jitted, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
