"""DEC kernels against the peers a user would otherwise run.

1. k-means (k = 15, d = 20, 20 restarts, max_iter 300, tol 1e-4): `xai_jax.kernels.clustering.kmeans` (k-means++
   seeding and Lloyd for all restarts in one `vmap`) vs `sklearn.cluster.KMeans(n_init=20, algorithm="lloyd")`
   with the same max_iter and tol, on the same Gaussian blobs (15 centres, overlapping), in this process. Reports
   seconds, the ratio, both inertias, and the Lloyd iterations (JAX: the slowest restart, which every restart
   waits for under `vmap`; scikit-learn: the sum over its sequential restarts, estimated by 20 single-restart
   fits, untimed, skipped from 1M on). From N = 1M on each side runs once (see `bench_kmeans`).
2. One DEC loss evaluation on N = 1M embeddings (k = 15, d = 20, alpha = 100): soft assignment + target + KL
   jitted in JAX vs the same three equations in NumPy (float32, the broadcast difference of DEC's Keras layer).
3. Similar training samples: `nearest_neighbours` (1,000 queries, a bank of 50,000, 4 layers, m = 10) vs SciPy's
   `cdist` per layer + `argpartition`.

    python experiments/bench_dec_kernels.py [--quick] [--sizes 10000 100000 1000000] [--loss-size 1000000]

Prints Markdown tables (warm-up, then the median of 3; JAX results blocked on) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import sklearn
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from benchutil import median_seconds, peer_row
from xai_jax.kernels.clustering import (kl_divergence, kmeans, kmeans_plusplus, lloyd, nearest_neighbours,
                                        soft_assignment, target_distribution)

K, D, N_INIT, MAX_ITER, TOL = 15, 20, 20, 300, 1e-4
CHUNK_ROWS = 4096  # kmeans' default


def fmt(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:,.0f}"


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """15 overlapping Gaussian blobs in 20-D (centres in [-10, 10]^20, std 4), so Lloyd needs a few dozen steps."""
    x, _ = make_blobs(n, D, centers=K, cluster_std=4.0, center_box=(-10, 10), random_state=seed)
    return x.astype(np.float32)


def jax_iterations(x: jax.Array, key: jax.Array) -> np.ndarray:
    """The Lloyd iterations of each restart, rerun from the same seeds as `kmeans` (diagnostic, untimed).

    `kmeans` seeds each restart with k-means++ on the centred points and runs `lloyd` from there; the seeds are
    shifted back here because `lloyd` centres on its own (the round trip rounds them by an ulp or so)."""
    @jax.jit
    def run(x, key):
        mean = jnp.mean(x, axis=0)
        centred = x - mean

        def one(run_key):
            seeds = kmeans_plusplus(centred, K, run_key) + mean
            return lloyd(x, seeds, max_iter=MAX_ITER, tol=TOL, chunk_rows=CHUNK_ROWS)[3]
        return jax.vmap(one)(jax.random.split(key, N_INIT))
    return np.asarray(run(x, key))


def sklearn_steps(x: np.ndarray) -> int:
    """scikit-learn keeps only the best restart's n_iter_: the sum over 20 single-restart fits (untimed)."""
    seeds = np.random.RandomState(0).randint(np.iinfo(np.int32).max, size=N_INIT)
    return sum(KMeans(K, n_init=1, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd", random_state=seed).fit(x).n_iter_
               for seed in seeds)


def kmeans_row(n: int, lloyd_steps: bool = True) -> dict:
    """k-means of ``n`` blob points, JAX against scikit-learn (each once from 1M on, else the median of 3).

    Args:
      n: points.
      lloyd_steps: also count both sides' Lloyd steps (untimed diagnostics; scikit-learn's only below 1M).

    Returns:
      :func:`benchutil.peer_row` with both inertias and the steps (None where not counted).
    """
    x = blobs(n)
    xj = jax.device_put(jnp.asarray(x))
    key = jax.random.key(0)
    out = {}

    def run_sklearn():
        out["sklearn"] = KMeans(K, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd",
                                random_state=0).fit(x)

    def run_jax(tol=TOL):
        out["jax"] = jax.block_until_ready(kmeans(xj, K, key, n_init=N_INIT, max_iter=MAX_ITER, tol=tol))

    # From 1M on, each side runs once; JAX is warmed up (compiled) by a run whose huge tol (traced, so the
    # same executable) stops Lloyd after one step, and scikit-learn needs no compilation.
    big = n >= 1_000_000
    if big:
        run_jax(tol=1e9)
    t_sklearn = median_seconds(run_sklearn, repeats=1 if big else 3, warm_up=not big)
    t_jax = median_seconds(run_jax, repeats=1 if big else 3, warm_up=not big)
    jax_steps = jax_iterations(xj, key) if lloyd_steps else None
    return peer_row("k-means, 20 restarts", t_jax, t_sklearn, "scikit-learn KMeans(n_init=20, lloyd)",
                    f"N = {n:,}, k = {K}, d = {D}", inertia_sklearn=float(out["sklearn"].inertia_),
                    inertia_jax=float(out["jax"][2]),
                    steps_sklearn=sklearn_steps(x) if lloyd_steps and not big else None,
                    steps_jax_max=None if jax_steps is None else int(jax_steps.max()),
                    steps_jax_mean=None if jax_steps is None else float(jax_steps.mean()))


def bench_kmeans(sizes) -> None:
    print("### k-means: JAX (20 restarts) vs scikit-learn KMeans (n_init=20, lloyd)\n")
    print(f"k = {K}, d = {D}, max_iter = {MAX_ITER}, tol = {TOL}, float32 data for both; warm-up then median of 3.\n")
    print("| N | scikit-learn (s) | JAX (s) | sklearn / JAX | inertia sklearn | inertia JAX | JAX / sklearn inertia "
          "| Lloyd steps sklearn (20 single fits, sum) | JAX (slowest restart) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        r = kmeans_row(n)
        steps = r["steps_sklearn"]
        print(f"| {n:,} | {fmt(r['peer_s'])} | {fmt(r['xai_jax_s'])} | {r['ratio']:.2f}x | {r['inertia_sklearn']:,.6g} | "
              f"{r['inertia_jax']:,.6g} | {r['inertia_jax'] / r['inertia_sklearn']:.5f} | "
              f"{steps if steps is not None else 'n/a'} | {r['steps_jax_max']} (mean {r['steps_jax_mean']:.0f}) |",
              flush=True)


# -------------------------------------------------------------------------------------------- DEC loss


def numpy_dec_loss(z: np.ndarray, mu: np.ndarray, alpha: float) -> float:
    """DEC eqs. 1-3 as a NumPy user writes them (DEC's Keras ClusteringLayer, float32)."""
    squared = np.sum(np.square(z[:, None, :] - mu[None, :, :]), axis=2)
    q = 1.0 / (1.0 + squared / alpha)
    q **= (alpha + 1.0) / 2.0
    q /= q.sum(axis=1, keepdims=True)
    weight = q ** 2 / q.sum(0)
    p = weight / weight.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0)
    return float(terms.sum(1).mean())


@jax.jit
def jax_dec_loss(z, mu, alpha):
    q = soft_assignment(z, mu, alpha)
    return kl_divergence(target_distribution(q), q)


def dec_loss_row(n: int, alpha: float = 100.0) -> dict:
    """One DEC loss evaluation on ``n`` embeddings, jitted JAX against NumPy: :func:`benchutil.peer_row` with
    both losses."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, D)).astype(np.float32)
    z *= 8 / np.linalg.norm(z, axis=1, keepdims=True)  # on the paper's radius-8 sphere
    mu = z[rng.choice(n, K, replace=False)]
    zj, muj = jax.device_put(jnp.asarray(z)), jax.device_put(jnp.asarray(mu))
    out = {}

    def run_numpy():
        out["numpy"] = numpy_dec_loss(z, mu, alpha)

    def run_jax():
        out["jax"] = float(jax.block_until_ready(jax_dec_loss(zj, muj, alpha)))

    t_numpy = median_seconds(run_numpy)
    t_jax = median_seconds(run_jax)
    return peer_row("DEC loss (soft assignment + target + KL)", t_jax, t_numpy, "NumPy float32",
                    f"N = {n:,}, k = {K}, d = {D}", loss_numpy=out["numpy"], loss_jax=out["jax"])


def bench_dec_loss(n: int, alpha: float = 100.0) -> None:
    print(f"\n### DEC loss (soft assignment + target + KL), N = {n:,}, k = {K}, d = {D}, alpha = {alpha:g}\n")
    r = dec_loss_row(n, alpha)
    print("| NumPy (s) | JAX jitted (s) | NumPy / JAX | loss NumPy | loss JAX |")
    print("|---|---|---|---|---|")
    print(f"| {fmt(r['peer_s'])} | {fmt(r['xai_jax_s'])} | {r['ratio']:.1f}x | {r['loss_numpy']:.6g} | "
          f"{r['loss_jax']:.6g} |", flush=True)


def numpy_neighbours(queries, bank, weights, m):
    """The brute-force peer: SciPy's exact cdist per layer, the weighted sum, argpartition + sort of the top m."""
    distances = sum(w * cdist(q, b) for w, q, b in zip(weights, queries, bank))
    top = np.argpartition(distances, m - 1, axis=1)[:, :m]
    order = np.argsort(np.take_along_axis(distances, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def neighbours_row(num_queries: int, n: int, layers: int = 4, m: int = 10) -> dict:
    """``m`` nearest neighbours of ``num_queries`` queries in a bank of ``n`` over ``layers`` layers, JAX against
    SciPy's cdist + argpartition: :func:`benchutil.peer_row` with ``same_indices`` (the fraction that agree)."""
    rng = np.random.default_rng(2)

    def sphere(count):
        z = rng.normal(size=(count, D))
        return (z * 8 / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

    queries = [sphere(num_queries) for _ in range(layers)]
    bank = [sphere(n) for _ in range(layers)]
    weights = [1.0] * layers
    queries_j = [jax.device_put(jnp.asarray(q)) for q in queries]
    bank_j = [jax.device_put(jnp.asarray(b)) for b in bank]
    out = {}

    def run_numpy():
        out["numpy"] = numpy_neighbours(queries, bank, weights, m)

    def run_jax():
        out["jax"] = jax.block_until_ready(nearest_neighbours(queries_j, bank_j, weights, m))

    t_numpy = median_seconds(run_numpy)
    t_jax = median_seconds(run_jax)
    return peer_row("nearest training samples", t_jax, t_numpy, "SciPy cdist + argpartition",
                    f"{num_queries:,} queries, bank {n:,}, {layers} layers, m = {m}",
                    same_indices=float((np.asarray(out["jax"][0]) == out["numpy"]).mean()))


def bench_neighbours(num_queries: int, n: int, layers: int = 4, m: int = 10) -> None:
    print(f"\n### Nearest neighbours: {num_queries:,} queries, bank N = {n:,}, {layers} layers of e = {D}, m = {m}\n")
    r = neighbours_row(num_queries, n, layers, m)
    print("| SciPy cdist + argpartition (s) | JAX blocked, 4,096 per block (s) | SciPy / JAX | same indices |")
    print("|---|---|---|---|")
    print(f"| {fmt(r['peer_s'])} | {fmt(r['xai_jax_s'])} | {r['ratio']:.1f}x | {r['same_indices']:.2%} |", flush=True)


def peak_load() -> threading.Event:
    """Samples the 1-minute load average every 5 s until the returned event is set; prints the peak."""
    stop = threading.Event()
    peak = [os.getloadavg()[0]]

    def sample():
        while not stop.wait(5):
            peak[0] = max(peak[0], os.getloadavg()[0])
        print(f"peak 1-minute load average while running: {peak[0]:.2f}")
    threading.Thread(target=sample, daemon=True).start()
    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--sizes", type=int, nargs="+", help="k-means sizes (default 10,000, 100,000, 1,000,000)")
    parser.add_argument("--loss-size", type=int, default=1_000_000, help="N of the DEC loss benchmark")
    args = parser.parse_args()
    sizes = args.sizes or ((2_000, 10_000) if args.quick else (10_000, 100_000, 1_000_000))
    loss_size = 100_000 if args.quick else args.loss_size
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; numpy {np.__version__}, scikit-learn {sklearn.__version__}\n"
          f"uptime at start: {uptime}\n", flush=True)
    started = time.perf_counter()
    sampler = peak_load()
    bench_kmeans(sizes)
    bench_dec_loss(loss_size)
    bench_neighbours(200 if args.quick else 1000, 10_000 if args.quick else 50_000)
    sampler.set()
    time.sleep(0.1)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; uptime at the end: {uptime}")


if __name__ == "__main__":
    main()
