"""DEC's two clustering phases, xai_jax against what users run today, same data, same steps, one process.

1. Initialisation: :func:`xai_jax.kernels.clustering.kmeans` (k-means++, 20 restarts, Lloyd to
   scikit-learn's tolerance) against scikit-learn's ``KMeans(n_clusters=k, n_init=20, init="k-means++")``.
2. Refinement: :func:`xai_jax.methods.dec.dec_refine` against a faithful PyTorch DEC (the loop of DEC's
   reference code and of pt-dec: Student-t soft assignment, target ``p = q^2 / f`` recomputed over the whole data
   every T steps, ``kl_div(log q, p, "batchmean")``, SGD with momentum 0.9 on encoder and centroids). Both run
   the same number of steps (tolerance 0) from the same encoder weights and centroids, on the same synthetic
   embeddings: a mixture of k Gaussian blobs in e = 20 dimensions, N from 10,000 to 1,000,000, through a
   linear 20 -> 20 encoder projected on the radius-8 sphere (the clustering phase's cost without an
   autoencoder's, which is the same dense layers in both frameworks).

    python experiments/bench_dec.py --quick      # N = 10k, 100k
    python experiments/bench_dec.py              # N = 10k, 100k, 300k; k = 15, 50
    python experiments/bench_dec.py --full       # adds N = 1M
    python experiments/bench_dec.py --sizes 1000000 --ks 15 --skip refine    # chosen rows only

From N = 300k on, each side runs once, and scikit-learn and PyTorch (which compile nothing) without a warm-up.

Prints Markdown tables (median of repeats after a warm-up, blocking on results) and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import median_seconds, peer_row  # noqa: E402

from xai_jax.kernels.clustering import kmeans  # noqa: E402
from xai_jax.methods.dec import DECConfig, dec_refine, embed_rows  # noqa: E402
from xai_jax.models.mlp import MLP  # noqa: E402

E = 20


def mixture(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (k, E))
    labels = rng.integers(0, k, n)
    return (means[labels] + rng.normal(0, 0.5, (n, E))).astype(np.float32), labels


def bench_kmeans(x: np.ndarray, k: int, repeats: int, warm_up_peer: bool = True) -> dict:
    """k-means++ with 20 restarts on ``x``, xai_jax against scikit-learn: :func:`benchutil.peer_row` with
    ``inertia_ratio`` (xai_jax / scikit-learn)."""
    from sklearn.cluster import KMeans
    key = jax.random.key(0)
    xj = jnp.asarray(x)
    last = {}

    def run_jax():
        last["jax"] = jax.block_until_ready(kmeans(xj, k, key, n_init=20))

    def run_sklearn():
        last["sklearn"] = KMeans(k, n_init=20, init="k-means++", random_state=0).fit(x)

    jax_time = median_seconds(run_jax, repeats)
    # scikit-learn compiles nothing: at large N its warm-up would only double the (long) run
    sk_time = median_seconds(run_sklearn, repeats, warm_up=warm_up_peer)
    return peer_row(f"DEC k-means init, k = {k}", jax_time, sk_time, "scikit-learn KMeans(n_init=20)",
                    f"N = {len(x):,}, k = {k}, e = {E}",
                    inertia_ratio=float(last["jax"][2]) / float(last["sklearn"].inertia_))


def torch_dec(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, centroids: np.ndarray, config: DECConfig,
              seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, float]:
    """DEC's clustering phase in PyTorch, as DEC's reference code and pt-dec run it (float32, on ``device``)."""
    import torch
    torch.manual_seed(seed)
    encoder = torch.nn.Linear(E, E).to(device)
    with torch.no_grad():
        encoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))  # flax kernels are [in, out]
        encoder.bias.copy_(torch.from_numpy(bias))
    mu = torch.nn.Parameter(torch.from_numpy(centroids.copy()).to(device))
    optimizer = torch.optim.SGD(list(encoder.parameters()) + [mu], lr=config.dec_learning_rate, momentum=0.9)
    data = torch.from_numpy(x).to(device)
    alpha, radius = config.alpha, config.radius

    def embed(v):
        return torch.nn.functional.normalize(encoder(v), dim=1) * radius

    def log_q(z):
        # pt-dec's ClusterAssignment: squared distances from the broadcast difference
        logits = -(alpha + 1) / 2 * torch.log1p(torch.sum((z.unsqueeze(1) - mu) ** 2, 2) / alpha)
        return torch.log_softmax(logits, dim=1)

    n, steps, loss = len(x), 0, torch.tensor(0.0)
    generator = torch.Generator(device).manual_seed(seed)
    while steps < config.max_dec_steps:
        with torch.no_grad():  # the target over the whole data, every T steps
            q = torch.cat([log_q(embed(data[s:s + 65536])).exp() for s in range(0, n, 65536)])
            weight_q = q.square() / q.sum(0)
            p = weight_q / weight_q.sum(1, keepdim=True)
        for _ in range(config.update_interval):
            idx = torch.randint(0, n, (min(config.batch_size, n),), generator=generator, device=device)
            loss = torch.nn.functional.kl_div(log_q(embed(data[idx])), p[idx], reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        steps += config.update_interval
        with torch.no_grad():
            assigned = torch.cat([log_q(embed(data[s:s + 65536])).argmax(1) for s in range(0, n, 65536)])
    return assigned.cpu().numpy(), float(loss.detach())  # .cpu() waits for the device


def refine_case(x: np.ndarray, k: int, refreshes: int, device: str = "cpu"):
    """Both refinements of ``x`` from one start: ``(run_jax, run_torch, agreement)``.

    Same linear encoder weights and k-means centroids, ``refreshes`` x T = 140 steps of batch 256 (tolerance 0);
    ``run_jax()`` / ``run_torch()`` refine (PyTorch on ``device``) and block on their results, and
    ``agreement()`` is the adjusted Rand index of their last clusterings (different minibatch draws).
    """
    config = DECConfig(taps=("x",), hidden=(), embedding_size=E, clusters=k, tolerance=0.0,
                       update_interval=140, max_dec_steps=140 * refreshes, batch_size=256)
    params = MLP((E,)).init(jax.random.key(1), jnp.zeros((1, E)))["params"]
    layer = {"encoder": params, "norm": {"mean": jnp.zeros(E), "scale": jnp.ones(())}}
    z = embed_rows((), E, 8.0, layer, x)
    centroids, _, _ = kmeans(jnp.asarray(z), k, jax.random.key(2), n_init=5)
    centroids = np.asarray(centroids)
    weight, bias = np.asarray(params["dense0"]["kernel"]), np.asarray(params["dense0"]["bias"])
    last = {}

    def run_jax():
        last["jax"] = dec_refine(config, layer, x, z, centroids, jax.random.key(3))
        jax.block_until_ready(last["jax"][1])

    def run_torch():
        last["torch"] = torch_dec(x, weight, bias, centroids, config, device=device)

    def agreement() -> float:
        from sklearn.metrics import adjusted_rand_score
        _, z_final, mu_final, _ = last["jax"]
        a = np.asarray(jnp.argmin(jnp.sum((z_final[:, None] - mu_final[None]) ** 2, -1), -1))
        return adjusted_rand_score(a, last["torch"][0])

    return run_jax, run_torch, agreement


def bench_refine(x: np.ndarray, k: int, repeats: int, refreshes: int, warm_up_peer: bool = True) -> dict:
    """DEC's refinement of ``x``, xai_jax against PyTorch: :func:`benchutil.peer_row` with ``ari``."""
    import torch
    run_jax, run_torch, agreement = refine_case(x, k, refreshes)
    jax_time = median_seconds(run_jax, repeats)
    torch_time = median_seconds(run_torch, repeats, warm_up=warm_up_peer)
    return peer_row(f"DEC refinement, k = {k}", jax_time, torch_time,
                    f"PyTorch DEC loop ({torch.get_num_threads()} threads)",
                    f"N = {len(x):,}, k = {k}, {refreshes} x 140 steps", ari=agreement())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 100k, k = 15 only")
    parser.add_argument("--full", action="store_true", help="add N = 1,000,000")
    parser.add_argument("--sizes", help="comma-separated N (overrides --quick/--full), e.g. 300000,1000000")
    parser.add_argument("--ks", help="comma-separated k (overrides the default 15,50)")
    parser.add_argument("--skip", default="", help="kmeans and/or refine: phases not to run")
    parser.add_argument("--refreshes", type=int, default=5, help="target refreshes (T = 140 steps each)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch intra-op threads (default 1: on a shared 2-core CPU two threads spin and run "
                             "several times slower)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.torch_threads)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 300_000] + ([1_000_000] if args.full else [])
    ks = [15] if args.quick else [15, 50]
    if args.sizes:
        sizes = [int(v) for v in args.sizes.split(",")]
    if args.ks:
        ks = [int(v) for v in args.ks.split(",")]
    repeats = 3 if args.quick else 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads); load average "
          f"{os.getloadavg()[0]:.1f} at the start (other processes share these cores)\n")
    if "kmeans" not in args.skip:
        print("k-means initialisation (20 restarts, k-means++), e = 20\n")
        print("| N | k | xai_jax s | scikit-learn s | speed-up | inertia xai_jax / sklearn |")
        print("|---|---|---|---|---|---|")
        for k in ks:
            for n in sizes:
                x, _ = mixture(n, k)
                row = bench_kmeans(x, k, 1 if n >= 300_000 else repeats, warm_up_peer=n < 300_000)
                print(f"| {n:,} | {k} | {row['xai_jax_s']:.3f} | {row['peer_s']:.3f} | {row['ratio']:.2f}x | "
                      f"{row['inertia_ratio']:.4f} |", flush=True)
    if "refine" in args.skip:
        return
    print(f"\nDEC refinement ({args.refreshes} x T = 140 steps of batch 256, target over all N before each T), "
          "e = 20\n")
    print("| N | k | xai_jax s | PyTorch s | speed-up | ARI between the two results |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        for n in sizes:
            x, _ = mixture(n, k)
            row = bench_refine(x, k, 1 if n >= 300_000 else repeats, args.refreshes, warm_up_peer=n < 300_000)
            print(f"| {n:,} | {k} | {row['xai_jax_s']:.3f} | {row['peer_s']:.3f} | {row['ratio']:.2f}x | "
                  f"{row['ari']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
