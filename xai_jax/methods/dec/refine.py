"""DEC's clustering phase for one layer (DEC section 3.1) and the clusters' empirical posteriors (paper eq. 3).

The refinement runs ``T`` steps as one jitted ``lax.scan`` over device-resident activations, then recomputes
the target ``P`` over the whole training set on the host side of the loop; the scan is compiled once per
hyper-parameters and shapes. Activations kept on disk (:class:`xai_jax.rowstore.DiskRows`) on a CPU backend,
or larger than the device budget, stay where they are: the host gathers the minibatches of a few steps at a
time and a scan of that many steps runs them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import rowstore, train
from xai_jax.kernels.clustering import (cluster_frequencies, kl_divergence_log, log_soft_assignment,
                                        target_distribution)
from xai_jax.methods.dec.autoencoder import embed_rows, encode
from xai_jax.methods.dec.config import DECConfig

# Activations up to this size are copied to the device for the refinement (as for the autoencoder's pretraining).
DEVICE_BYTES = 4 << 30


@functools.lru_cache(maxsize=None)
def _dec_steps(hidden: tuple[int, ...], embedding: int, radius: float, alpha: float, learning_rate: float):
    """``T`` DEC steps in one jitted ``lax.scan``: minibatch KL(P || Q) (DEC eq. 2) over encoder and centroids,
    targets ``P`` fixed (computed over the whole training set before the call)."""
    optimizer = optax.sgd(learning_rate, momentum=0.9)

    def loss_fn(params, norm, x, p):
        z = encode(hidden, embedding, radius, {"encoder": params["encoder"], "norm": norm}, x)
        return kl_divergence_log(p, log_soft_assignment(z, params["centroids"], alpha))

    def update(params, opt_state, norm, x, p):
        loss, grads = jax.value_and_grad(loss_fn)(params, norm, x, p)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run(params, opt_state, norm, x_all, p_all, order):
        # device-resident activations: each step gathers its minibatch inside the scan
        def step(carry, idx):
            params, opt_state, loss = update(*carry, norm, x_all[idx], p_all[idx])
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, losses

    def run_gathered(params, opt_state, norm, x_steps, p_steps):
        # minibatches gathered on the host, ``[g, b, d]`` and ``[g, b, k]``: the activations stay there
        def step(carry, rows):
            params, opt_state, loss = update(*carry, norm, *rows)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (x_steps, p_steps))
        return params, opt_state, losses

    return optimizer, jax.jit(run, donate_argnums=(0, 1)), jax.jit(run_gathered, donate_argnums=(0, 1))


def _steps_per_call(interval: int, step_bytes: int, budget: int = 16 << 20) -> int:
    """The largest divisor of ``interval`` whose minibatches fit in ``budget`` bytes (at least 1): every call
    of the host-fed scan then has the same shapes."""
    limit = max(1, budget // max(1, step_bytes))
    return max(d for d in range(1, interval + 1) if interval % d == 0 and d <= limit)


def dec_refine(config: DECConfig, layer: dict, x: np.ndarray, z: np.ndarray, centroids, key: jax.Array):
    """DEC's clustering phase (DEC section 3.1) for one layer: minibatch SGD on ``KL(P || Q)`` over the encoder
    and the centroids, the target ``P`` recomputed over the whole training set every ``T = update_interval``
    steps, until fewer than ``tolerance`` of the hard assignments change between two refreshes or
    ``max_dec_steps`` (rounded up to a multiple of ``T``) ran.

    Args:
      config: the surrogate's config (alpha, radius, hidden, embedding size, T, tolerance, steps, batch size).
      layer: ``{"encoder": params, "norm": {"mean", "scale"}}`` (the pretrained encoder).
      x: ``[n, d]`` the layer's training activations (host, any float dtype).
      z: ``[n, e]`` their current embeddings; centroids: ``[k, e]`` from k-means.
      key: ``jax.random`` key of the minibatch draws.

    Returns:
      ``(layer, z, centroids, history)`` with the refined encoder, the final embeddings and centroids, and
      ``dec_steps``, ``dec_kl`` (mean loss per T steps) and ``changed`` (fraction per refresh). The arguments
      are not changed.
    """
    c = config
    n = len(x)
    hidden, e = tuple(c.hidden), c.embedding_size
    norm = layer["norm"]
    dec_optimizer, run, run_gathered = _dec_steps(hidden, e, float(c.radius), float(c.alpha), float(c.dec_learning_rate))
    # copies: the scan donates its parameters, which must not be the caller's
    params = {"encoder": jax.tree.map(jnp.array, layer["encoder"]), "centroids": jnp.array(centroids)}
    opt_state = dec_optimizer.init(params)
    batch = min(c.batch_size, n)
    x = rowstore.as_rows(x)
    on_device = train.fits_on_device({"x": x}, DEVICE_BYTES)
    x_device = train.to_device(x) if on_device else None
    group = _steps_per_call(c.update_interval, batch * rowstore.nbytes(x) // max(1, n))
    q = jnp.exp(log_soft_assignment(z, params["centroids"], c.alpha))
    assigned = np.asarray(jnp.argmax(q, -1))
    changed, kl, steps = [], [], 0
    while steps < c.max_dec_steps:
        p = target_distribution(q, cluster_frequencies(q))
        # Always T steps per call (one compiled program): max_dec_steps is rounded up to a multiple of T.
        order = jax.random.randint(jax.random.fold_in(key, steps), (c.update_interval, batch), 0, n)
        if on_device:
            params, opt_state, losses = run(params, opt_state, norm, x_device, p, order)
        else:
            p_host, losses = np.asarray(p), []
            for rows in np.sort(np.asarray(order), axis=1).reshape(-1, group, batch):
                x_steps = x[rows.reshape(-1)].reshape(group, batch, -1)
                if losses:  # one call in flight: dispatch would otherwise queue every gathered block in memory
                    jax.block_until_ready(losses[-1])
                params, opt_state, part = run_gathered(params, opt_state, norm, x_steps, p_host[rows])
                losses.append(part)
            losses = jnp.concatenate(losses)
        steps += c.update_interval
        kl.append(float(jnp.mean(losses)))
        layer = {"encoder": params["encoder"], "norm": norm}
        z = embed_rows(hidden, e, c.radius, layer, x)
        q = jnp.exp(log_soft_assignment(z, params["centroids"], c.alpha))
        new = np.asarray(jnp.argmax(q, -1))
        changed.append(float(np.mean(new != assigned)))
        assigned = new
        if changed[-1] < c.tolerance:
            break
    return layer, z, np.asarray(params["centroids"]), {"dec_steps": steps, "dec_kl": kl, "changed": changed}


def cluster_posteriors(embeddings: np.ndarray, centroids: np.ndarray, targets: np.ndarray, num_classes: int,
                       alpha: float) -> np.ndarray:
    """``[L, k, C]`` ``p(y | z_k) = sum_i q_ik [y_i = y] / sum_i q_ik`` (paper eq. 3's empirical posteriors).

    Args:
      embeddings: ``[L, n, e]`` the training embeddings; centroids: ``[L, k, e]``.
      targets: ``[n]`` the training labels (or the model's predictions).
      num_classes: ``C``; alpha: the Student-t degrees of freedom.

    Returns:
      the posteriors; a cluster with no mass (``sum_i q_ik = 0``) gets the overall class frequencies.

    The class sums ``sum_i q_ik [y_i = y]`` are taken over the images sorted by class (``np.add.reduceat``), so
    that host memory is a few ``[n, k]`` arrays, not an ``[n, C]`` one-hot (10 GB of float64 for ImageNet).
    """
    targets = np.asarray(targets)
    prior = np.bincount(targets, minlength=num_classes) / max(1, len(targets))
    order = np.argsort(targets, kind="stable")
    classes, starts = np.unique(targets[order], return_index=True)
    out = []
    for z, mu in zip(embeddings, centroids):
        q = np.asarray(jnp.exp(log_soft_assignment(z, mu, alpha)), np.float64)
        mass = q.sum(0)[:, None]
        counts = np.zeros((q.shape[1], num_classes))
        if len(order):
            counts[:, classes] = np.add.reduceat(q[order], starts, axis=0).T
        out.append(np.where(mass > 0, counts / np.where(mass > 0, mass, 1), prior))
    return np.stack(out)
