"""All-pairs shortest paths of a dense weight matrix by Floyd–Warshall (NMA paper section 3.2).

The recurrence, over the intermediate vertices ``k = 0 .. C-1``::

    d[i, j] <- min(d[i, j], d[i, k] + d[k, j])

starting from ``d = w`` (``inf`` = no edge, zero diagonal). It is exact in min-plus arithmetic: the only
difference from a float64 reference is the rounding of the sums in the input's dtype. Work is ``C^3``
additions and minima in both forms below; they differ in memory traffic.

- Unblocked (:func:`floyd_warshall` with ``block_size=None``): a ``lax.fori_loop`` over ``k`` of the rank-1
  min-plus update of the whole matrix. ``O(C^2)`` memory, but every step streams all ``C^2`` entries through
  memory, so once the matrix outgrows the cache it is bound by memory bandwidth.
- Blocked (``block_size=b``): the standard three-phase tiled algorithm. ``C`` is padded with ``inf`` (zero
  diagonal) to ``P = ceil(C / b) * b``; for each diagonal block ``K``:

  1. the ``b x b`` diagonal tile ``D_KK`` is closed by the unblocked recurrence;
  2. the row panel ``D_K: <- min(D_K:, D_KK (x) D_K:)``, with ``(x)`` the min-plus product (the textbook
     column-panel update ``D_:K (x) D_KK`` is left out: phase 3 produces it, see ``_blocked``);
  3. every entry ``D <- min(D, D_:K (x) D_K:)`` — a ``[P, b] (x) [b, P]`` min-plus product.

  Each block streams the matrix once instead of ``b`` times. Phase 3 is written as a min-reduction of a
  broadcast sum, which XLA fuses (no ``[P, b, P]`` temporary; verified on CPU with
  ``compiled.memory_analysis()``); where the temporary would exceed ``PHASE3_CHUNK_BYTES`` if it were
  materialised, phase 3 runs over row chunks so that even an unfused temporary stays bounded (or over
  ``chunk_rows`` rows, when given). Memory:
  the input, the padded working matrix (``P^2`` entries, updated in place) and the cropped output, plus at
  most ``PHASE3_CHUNK_BYTES``. For ImageNet-21k (``C = 21,841``, float32) each is about 1.8 GiB (compiled
  program: 1.78 GiB argument, 1.78 GiB output, 1.78 GiB temporaries).

Measured on a 2-core CPU (``experiments/bench_nma.py``, BENCHMARKS.md): blocked with ``b = 32`` is several
times faster than unblocked from a few hundred labels on, and slower below about 256 labels, which is the
policy of :func:`floyd_warshall_auto`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

#: phase 3 is split into row chunks when a materialised [rows, b, P] temporary would exceed this. Only a
#: safety net: XLA:CPU fuses the product (no temporary), and chunks cost an extra pass over the matrix per
#: block (+25 % at C = 2,000 on CPU), so the budget is set where an unfused temporary still fits a GPU.
PHASE3_CHUNK_BYTES = 1 << 30
#: floyd_warshall_auto's choice, from the CPU measurements in BENCHMARKS.md
AUTO_BLOCK_SIZE = 32
AUTO_MIN_CLASSES = 256


def _as_float(w) -> jax.Array:
    w = jnp.asarray(w)
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


def _rank1_closure(d: jax.Array) -> jax.Array:
    """The unblocked recurrence: one rank-1 min-plus update of the whole matrix per intermediate k."""
    def relax_through(k, d):
        return jnp.minimum(d, lax.dynamic_slice_in_dim(d, k, 1, axis=1) + lax.dynamic_slice_in_dim(d, k, 1, axis=0))
    return lax.fori_loop(0, d.shape[0], relax_through, d)


def _min_plus(a: jax.Array, b: jax.Array) -> jax.Array:
    """``(a (x) b)[i, j] = min_k a[i, k] + b[k, j]``; XLA fuses the broadcast sum into the reduction."""
    return jnp.min(a[:, :, None] + b[None, :, :], axis=1)


def _phase3_chunk_rows(padded: int, block: int, itemsize: int) -> int:
    """Rows of phase 3 per chunk: all of them unless a materialised temporary would pass the budget."""
    rows = PHASE3_CHUNK_BYTES // max(1, block * padded * itemsize)
    if rows >= padded:
        return padded
    return max(block, rows // block * block)


@functools.partial(jax.jit, static_argnames=("block_size", "chunk_rows"))
def _blocked(w: jax.Array, block_size: int, chunk_rows: int | None = None) -> jax.Array:
    n = w.shape[0]
    b = block_size
    blocks = -(-n // b)
    padded = blocks * b
    rows = chunk_rows or _phase3_chunk_rows(padded, b, w.dtype.itemsize)
    rows = min(rows, padded)
    # Padding vertices have no edges and a zero diagonal, so they never shorten a path.
    d = jnp.full((padded, padded), jnp.inf, w.dtype).at[:n, :n].set(w)
    pad = jnp.arange(n, padded)
    d = d.at[pad, pad].set(0)

    def one_block(kb, d):
        start = kb * b
        diagonal = _rank1_closure(lax.dynamic_slice(d, (start, start), (b, b)))
        row = lax.dynamic_slice(d, (start, 0), (b, padded))
        row = jnp.minimum(row, _min_plus(diagonal, row))
        # The column panel is used as it stands: with the row panel closed, column (x) row already
        # equals closed-column (x) row (the closed diagonal tile is idempotent under (x)), and phase 3
        # over the whole matrix writes the closed column panel, row panel and diagonal tile itself.
        column = lax.dynamic_slice(d, (0, start), (padded, b))
        if rows == padded:
            return jnp.minimum(d, _min_plus(column, row))

        def one_chunk(c, d):
            # The last chunk's start is clamped (dynamic_slice semantics) and overlaps the one before:
            # recomputing a row with the same panels gives the same minimum, so the overlap is harmless.
            first = jnp.minimum(c * rows, padded - rows)
            current = lax.dynamic_slice(d, (first, 0), (rows, padded))
            panel = lax.dynamic_slice(column, (first, 0), (rows, b))
            return lax.dynamic_update_slice(d, jnp.minimum(current, _min_plus(panel, row)), (first, 0))

        return lax.fori_loop(0, -(-padded // rows), one_chunk, d)

    return lax.fori_loop(0, blocks, one_block, d)[:n, :n]


@functools.partial(jax.jit, static_argnames=("block_size", "chunk_rows"))
def floyd_warshall(w: jax.Array, *, block_size: int | None = None, chunk_rows: int | None = None) -> jax.Array:
    """All-pairs shortest path lengths of a directed graph given as a dense weight matrix.

    Equal to ``scipy.sparse.csgraph.floyd_warshall(w, directed=True)`` up to the rounding of the input's
    float dtype (float32 unless JAX x64 is enabled and ``w`` is float64), for graphs without zero-weight
    edges: SciPy reads an off-diagonal 0 of a dense matrix as "no edge", here it is an edge of weight 0
    (NMA weights ``1 - s`` are never 0 since ``s <= 1/2``). See the module docstring for the
    recurrence, the blocked algorithm, complexity (``C^3`` min-plus operations either way) and memory.
    Compiled once per shape, dtype, ``block_size`` and ``chunk_rows``.

    Args:
      w: ``[C, C]`` non-negative weights, ``w[i, j]`` the edge ``i -> j``; ``inf`` where there is no
        edge; zero diagonal expected. Integer inputs are computed in float32.
      block_size: ``None`` for the unblocked loop; otherwise the tile size ``b >= 1`` of the blocked
        algorithm (clamped to ``C``; ``C`` need not be a multiple of it).
      chunk_rows: rows per chunk of the blocked algorithm's phase 3 (static; clamped to the padded size, need
        not divide it); ``None`` chunks only where a materialised temporary would pass ``PHASE3_CHUNK_BYTES``.
        Ignored by the unblocked loop.

    Returns:
      ``[C, C]`` shortest path lengths, ``inf`` where ``j`` cannot be reached from ``i``.
    """
    w = _as_float(w)
    if block_size is None:
        return _rank1_closure(w)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
    return _blocked(w, min(block_size, max(w.shape[0], 1)), chunk_rows)


def floyd_warshall_auto(w: jax.Array) -> jax.Array:
    """:func:`floyd_warshall` with the block size that measured fastest (blocked, ``b = 32``, from
    ``AUTO_MIN_CLASSES`` labels on; unblocked below). Measured on CPU; no GPU figures yet."""
    w = jnp.asarray(w)
    block = AUTO_BLOCK_SIZE if w.shape[0] >= AUTO_MIN_CLASSES else None
    return floyd_warshall(w, block_size=block)
