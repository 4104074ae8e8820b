"""The loss of the sparse reconstruction autoencoder (SRAE) behind an explanation network (XNN).

Paper eq. 5 (DESIGN "XNN with SRAE"): for a batch of ``M`` samples with layer activations ``Z[M, S]``,
x-features ``E = E_theta(Z)`` of shape ``[M, n]``, their reconstruction ``Zrec = E^-1(E)`` and target logits
``yhat``,

    L = (1/M) sum_i ||v.E_i + b - yhat_i||^2                      faithfulness
        + beta * (1/S) sum_k log(1 + q * Q_k)                     sparse reconstruction
        + eta * 1/(n(n-1)) sum_{l != l'} cos(E_l, E_l')^2         pull-away (orthogonality)

with ``Q_k = (1/M) sum_i (Zrec_ik - Z_ik)^2`` and ``E_l`` the l-th x-feature's column over the batch.
The defaults are the authors' code's ``q = 100``, ``beta = 10``, ``eta = 10``.

The baselines train with the same code and another ``variant`` of :func:`srae_loss`: ``"nn"``
(faithfulness only), ``"sae"`` (faithfulness plus plain reconstruction) and ``"cae"`` (plain
reconstruction only; its head is fitted afterwards).

Every function takes one batch, is pure ``jnp`` and jits; an optional ``mask`` (False in padding rows)
removes rows from every mean, so the last padded batch of a pass counts only its real rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

VARIANTS = ("srae", "nn", "sae", "cae")
DEFAULT_Q = 100.0
DEFAULT_BETA = 10.0
DEFAULT_ETA = 10.0


def approximation(x_features: jax.Array, head_weights: jax.Array, head_bias: jax.Array | float) -> jax.Array:
    """The explanation's prediction ``ybar = v.E + b`` (the paper's ``v^T E_theta(Z)``, plus a bias).

    Args:
      x_features: ``[M, n]`` x-features ``E``.
      head_weights: ``[n]`` for one output (a one-vs-all logit) or ``[n, c]`` for ``c`` outputs.
      head_bias: a scalar, or ``[c]`` with ``[n, c]`` weights.

    Returns:
      ``[M]`` or ``[M, c]``, following ``head_weights``.
    """
    return x_features @ head_weights + head_bias


def _row_weights(num_rows: int, sample_weights: jax.Array | None, mask: jax.Array | None,
                 dtype) -> jax.Array:
    """Per-row weights that sum to 1 (all 0 when every row is masked or weighs 0)."""
    weights = jnp.ones((num_rows,), dtype) if sample_weights is None else jnp.asarray(sample_weights, dtype)
    if mask is not None:
        weights = jnp.where(mask, weights, 0)
    total = jnp.sum(weights)
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1), 0)


@jax.jit
def faithfulness_loss(x_features: jax.Array, head_weights: jax.Array, head_bias: jax.Array | float,
                      targets: jax.Array, sample_weights: jax.Array | None = None,
                      mask: jax.Array | None = None) -> jax.Array:
    """The first term of eq. 5: the (weighted) mean squared error of ``ybar = v.E + b`` against ``yhat``.

    Each sample's error is the squared Euclidean norm ``||ybar_i - yhat_i||^2`` over its outputs (just
    the squared difference for one output). The mean over samples is weighted:
    ``sum_i w_i ||ybar_i - yhat_i||^2 / sum_i w_i``, with ``w_i = 1`` when ``sample_weights`` is None (the
    paper's plain mean) and ``w_i = 0`` in masked rows. Only the ratio of the weights matters, so
    up-weighting the positives of a one-vs-all explainer (see :func:`one_vs_all_weights`) leaves the
    loss on the scale of a mean. A batch whose weights are all 0 has loss 0.

    Args:
      x_features: ``[M, n]`` x-features ``E``.
      head_weights: ``[n]`` or ``[n, c]`` head ``v``.
      head_bias: scalar or ``[c]`` bias ``b``.
      targets: ``[M]`` or ``[M, c]`` logits ``yhat`` to explain, shaped like the head's output.
      sample_weights: optional ``[M]`` non-negative weights.
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      A scalar.
    """
    residual = approximation(x_features, head_weights, head_bias) - targets
    squared = jnp.sum(jnp.square(residual).reshape(residual.shape[0], -1), axis=1)
    return jnp.sum(_row_weights(squared.shape[0], sample_weights, mask, squared.dtype) * squared)


def one_vs_all_weights(is_positive: jax.Array, positive_weight: float | jax.Array) -> jax.Array:
    """Sample weights that up-weight the positives of a one-vs-all explainer (DESIGN "XNN with SRAE").

    The paper trains on 50 positives against 8,000 negatives per CUB class and "enhances the weights of
    the positive examples"; ``positive_weight = #negatives / #positives`` (160 there) gives both sides
    the same total weight.

    Args:
      is_positive: ``bool[M]``, True for samples of the explained class.
      positive_weight: the weight of a positive; negatives weigh 1.

    Returns:
      ``f32[M]`` weights for :func:`faithfulness_loss`.
    """
    return jnp.where(is_positive, jnp.asarray(positive_weight, jnp.float32), jnp.float32(1))


def _per_feature_squared_error(z: jax.Array, z_rec: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``Q_k = mean_i (Zrec_ik - Z_ik)^2`` over the unmasked rows, one value per flattened feature ``k``."""
    error = jnp.square(z_rec - z).reshape(z.shape[0], -1)
    return _row_weights(error.shape[0], None, mask, error.dtype) @ error


@jax.jit
def sparse_reconstruction_loss(z: jax.Array, z_rec: jax.Array, q: float = DEFAULT_Q,
                               mask: jax.Array | None = None) -> jax.Array:
    """The second term of eq. 5 (without ``beta``): ``(1/S) sum_k log(1 + q * Q_k)``.

    ``Q_k = (1/M) sum_i (Zrec_ik - Z_ik)^2`` is the mean squared reconstruction error of feature ``k``
    over the batch (paper eq. 2 with a square loss). The log penalty grows sublinearly, so the
    autoencoder can afford to leave some features unreconstructed: it reconstructs a sparse subset.

    Args:
      z: ``[M, ...]`` activations; everything after the batch axis is flattened into ``S`` features.
      z_rec: the reconstruction, shaped like ``z``.
      q: the sparsity parameter (``q > 0``; the authors' code uses 100).
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      A scalar.
    """
    return jnp.mean(jnp.log1p(q * _per_feature_squared_error(z, z_rec, mask)))


@jax.jit
def reconstruction_loss(z: jax.Array, z_rec: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The plain reconstruction term of the SAE and CAE baselines: ``sum_k Q_k``.

    That is the squared Euclidean reconstruction error of a sample summed over its ``S`` features and
    averaged over the batch, ``(1/M) sum_i ||Zrec_i - Z_i||^2`` (``S`` times the element-wise mean
    squared error) — the square loss of the faithfulness term applied to ``Z``.

    Args:
      z: ``[M, ...]`` activations.
      z_rec: the reconstruction, shaped like ``z``.
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      A scalar.
    """
    return jnp.sum(_per_feature_squared_error(z, z_rec, mask))


@jax.jit
def pull_away_loss(x_features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The third term of eq. 5 (without ``eta``; paper eq. 3): the mean squared cosine of x-feature pairs.

    ``PT = 1/(n(n-1)) sum_{l != l'} (E_l . E_l' / (|E_l| |E_l'|))^2``, where ``E_l`` is the l-th column of
    ``E`` over the batch. It is 0 for orthogonal columns and 1 when all columns are parallel. With one
    x-feature there are no pairs and it is 0. An all-zero column has no direction: its cosines count
    as 0 (and its gradient stays finite), so a dead x-feature neither adds to nor cancels the penalty.

    Args:
      x_features: ``[M, n]`` x-features ``E``.
      mask: optional ``bool[M]``, False in padding rows (they are left out of the dot products).

    Returns:
      A scalar.
    """
    n = x_features.shape[1]
    if n < 2:
        return jnp.zeros((), x_features.dtype)
    if mask is not None:
        x_features = jnp.where(mask[:, None], x_features, 0)
    gram = x_features.T @ x_features
    squared_norms = jnp.diagonal(gram)
    nonzero = squared_norms > 0
    # The double where keeps rsqrt away from 0, whose gradient would turn the whole loss into NaN.
    inverse_norms = jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, squared_norms, 1)), 0)
    cosines = gram * inverse_norms[:, None] * inverse_norms[None, :]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    return jnp.sum(jnp.where(off_diagonal, jnp.square(cosines), 0)) / (n * (n - 1))


@functools.partial(jax.jit, static_argnames=("variant",))
def srae_loss(x_features: jax.Array, head_weights: jax.Array | None, head_bias: jax.Array | float | None,
              targets: jax.Array | None, z: jax.Array | None = None, z_rec: jax.Array | None = None, *,
              variant: str = "srae", beta: float = DEFAULT_BETA, eta: float = DEFAULT_ETA, q: float = DEFAULT_Q,
              sample_weights: jax.Array | None = None, mask: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of an explanation network: SRAE (paper eq. 5) or one of its baselines.

    With ``F`` = :func:`faithfulness_loss`, ``SR`` = :func:`sparse_reconstruction_loss`,
    ``R`` = :func:`reconstruction_loss` and ``PT`` = :func:`pull_away_loss`:

    - ``"srae"``: ``F + beta * SR + eta * PT`` (eq. 5);
    - ``"nn"``: ``F`` (a network with a faithful low-dimensional layer, no decoder);
    - ``"sae"``: ``F + beta * R`` (a stacked autoencoder with plain reconstruction, no sparsity);
    - ``"cae"``: ``R`` (a classic autoencoder; the head is fitted afterwards).

    ``beta`` weighs whichever reconstruction term the variant has; ``eta`` only matters for ``"srae"``.
    ``sample_weights`` weigh only the faithfulness term (the one-vs-all balance); ``mask`` removes padding
    rows from every term. Arguments a variant does not use may be None (``z``/``z_rec`` for ``"nn"``, the
    head and targets for ``"cae"``).

    Args:
      x_features: ``[M, n]`` x-features ``E``.
      head_weights: ``[n]`` or ``[n, c]`` head ``v``.
      head_bias: scalar or ``[c]`` bias ``b``.
      targets: ``[M]`` or ``[M, c]`` logits to explain.
      z: ``[M, ...]`` the explained layer's activations.
      z_rec: their reconstruction from ``E``.
      variant: ``"srae"``, ``"nn"``, ``"sae"`` or ``"cae"`` (static).
      beta, eta, q: the weights of eq. 5 and the log penalty's sparsity parameter (traced).
      sample_weights: optional ``[M]`` weights of the faithfulness term.
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      ``(total, terms)``: the scalar loss and the unweighted terms it combines, a dict with the keys
      ``"faithfulness"``, ``"reconstruction"`` (the log penalty for ``"srae"``, the plain one otherwise)
      and ``"pull_away"`` restricted to the variant's terms.

    Raises:
      ValueError: an unknown variant, or None for an argument the variant needs.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    needs_head, needs_decoder = variant != "cae", variant != "nn"
    missing = [name for name, value, needed in [
        ("head_weights", head_weights, needs_head), ("head_bias", head_bias, needs_head),
        ("targets", targets, needs_head), ("z", z, needs_decoder), ("z_rec", z_rec, needs_decoder)]
        if needed and value is None]
    if missing:
        raise ValueError(f"variant {variant!r} needs {', '.join(missing)}")
    terms = {}
    if needs_head:
        terms["faithfulness"] = faithfulness_loss(x_features, head_weights, head_bias, targets, sample_weights,
                                                  mask)
    if variant == "srae":
        terms["reconstruction"] = sparse_reconstruction_loss(z, z_rec, q, mask)
        terms["pull_away"] = pull_away_loss(x_features, mask)
    elif needs_decoder:
        terms["reconstruction"] = reconstruction_loss(z, z_rec, mask)
    total = (terms.get("faithfulness", 0) + beta * terms.get("reconstruction", 0)
             + eta * terms.get("pull_away", 0))
    return jnp.asarray(total), terms
