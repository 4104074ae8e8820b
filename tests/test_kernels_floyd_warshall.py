"""Floyd–Warshall in JAX against SciPy and a NumPy loop: unblocked, blocked, chunked, jit and not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import csgraph

from xai_jax.kernels.floyd_warshall import floyd_warshall, floyd_warshall_auto

SIZES = (1, 2, 7, 13, 31, 97)


def numpy_floyd_warshall(w: np.ndarray) -> np.ndarray:
    """The textbook recurrence in float64 (also valid for zero-weight edges, which SciPy reads as no edge)."""
    d = np.array(w, np.float64)
    for k in range(len(d)):
        d = np.minimum(d, d[:, k, None] + d[None, k, :])
    return d


def sparse_graph(n: int, seed: int, *, density: float = 0.15, components: int = 1, directed: bool = True) -> np.ndarray:
    """Random positive weights on a few edges, inf elsewhere, zero diagonal; edges only inside each of
    ``components`` consecutive label groups, so the groups stay mutually unreachable."""
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((n, n)) < density, rng.uniform(0.05, 1.0, (n, n)), np.inf)
    group = np.arange(n) * components // max(n, 1)
    w[group[:, None] != group[None, :]] = np.inf
    if not directed:
        w = np.minimum(w, w.T)
    np.fill_diagonal(w, 0)
    return w.astype(np.float32)


def assert_same_paths(actual, expected):
    actual = np.asarray(actual)
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))  # same reachability, exactly
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("n", SIZES)
def test_unblocked_matches_scipy_on_directed_sparse_graphs(n):
    w = sparse_graph(n, seed=n, components=2 if n > 2 else 1)
    expected = csgraph.floyd_warshall(w.astype(np.float64), directed=True)
    assert_same_paths(floyd_warshall(w), expected)
    assert_same_paths(floyd_warshall(w), numpy_floyd_warshall(w))


@pytest.mark.parametrize("n,block_size", [(1, 4), (2, 1), (7, 3), (7, 7), (13, 4), (13, 13), (31, 8), (31, 64),
                                          (97, 16), (97, 32), (96, 32)])
def test_blocked_matches_scipy_whether_or_not_the_block_divides(n, block_size):
    w = sparse_graph(n, seed=100 + n, components=3 if n > 3 else 1)
    expected = csgraph.floyd_warshall(w.astype(np.float64), directed=True)
    assert_same_paths(floyd_warshall(w, block_size=block_size), expected)


@pytest.mark.parametrize("chunk_rows", [8, 24, 104])
def test_phase3_row_chunks_give_the_same_paths(chunk_rows):
    # 97 labels in blocks of 8 pad to 104: 24-row chunks leave a clamped, overlapping last chunk.
    w = sparse_graph(97, seed=7, density=0.05, components=2)
    expected = csgraph.floyd_warshall(w.astype(np.float64), directed=True)
    assert_same_paths(floyd_warshall(w, block_size=8, chunk_rows=chunk_rows), expected)


def test_zero_weight_edges_and_dense_asymmetric_weights():
    rng = np.random.default_rng(3)
    w = rng.uniform(0, 1, (13, 13)).astype(np.float32)
    w[rng.random((13, 13)) < 0.3] = 0.0  # zero-weight edges: SciPy would read them as missing
    np.fill_diagonal(w, 0)
    expected = numpy_floyd_warshall(w)
    for block_size in (None, 4):
        assert_same_paths(floyd_warshall(w, block_size=block_size), expected)


def test_no_edges_keeps_everything_unreachable():
    w = np.full((5, 5), np.inf, np.float32)
    np.fill_diagonal(w, 0)
    for block_size in (None, 2):
        np.testing.assert_array_equal(floyd_warshall(w, block_size=block_size), w)


def test_jit_and_no_jit_agree():
    w = sparse_graph(13, seed=11, components=2)
    jitted = {b: np.asarray(floyd_warshall(w, block_size=b)) for b in (None, 4)}
    with jax.disable_jit():
        for b in (None, 4):
            np.testing.assert_array_equal(np.asarray(floyd_warshall(w, block_size=b)), jitted[b])


def test_float64_under_x64_matches_scipy_to_double_rounding():
    w = sparse_graph(31, seed=5, density=0.2).astype(np.float64)
    w[np.isfinite(w)] += np.random.default_rng(5).uniform(0, 1e-9, np.isfinite(w).sum())  # below f32 resolution
    np.fill_diagonal(w, 0)
    expected = csgraph.floyd_warshall(w, directed=True)
    with jax.enable_x64(True):
        for block_size in (None, 8):
            d = floyd_warshall(jnp.asarray(w), block_size=block_size)
            assert d.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-13, atol=0)


def test_auto_policy_and_bad_block_size():
    w = sparse_graph(300, seed=1, density=0.02, directed=False)
    expected = csgraph.floyd_warshall(w.astype(np.float64), directed=False)
    assert_same_paths(floyd_warshall_auto(w), expected)
    with pytest.raises(ValueError, match="block_size"):
        floyd_warshall(w[:4, :4], block_size=0)
