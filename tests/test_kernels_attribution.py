"""Attribution kernels against NumPy loops over their definitions."""

from __future__ import annotations

import numpy as np

from xai_jax.kernels.attribution import grad_cam, normalise_maps


def numpy_grad_cam(activations, gradients):
    n, h, w, k = activations.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for c in range(k):
            out[i] += gradients[i, :, :, c].mean() * activations[i, :, :, c]
    return np.maximum(out, 0)


def test_grad_cam_matches_a_loop_on_awkward_sizes():
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 1, 1), (3, 7, 5, 13), (2, 4, 4, 1)]:
        activations = rng.random(shape).astype(np.float32)
        gradients = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(grad_cam(activations, gradients), numpy_grad_cam(activations, gradients),
                                   rtol=1e-5, atol=1e-6)


def test_normalise_maps_spans_zero_to_one_and_zeroes_constant_maps():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 5, 7)).astype(np.float32)
    maps[1] = 2.5
    out = np.asarray(normalise_maps(maps))
    for i in (0, 2):
        expected = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)
    assert np.all(out[1] == 0)
