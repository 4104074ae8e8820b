"""Near-miss analysis kernels against the peers a user would otherwise run.

1. All-pairs shortest paths: `xai_jax.kernels.floyd_warshall` (unblocked and blocked) vs
   `scipy.sparse.csgraph.floyd_warshall` on random near-miss-like graphs (each label joined to ~10 random others,
   weights 1 - s with s in (0, 0.5), symmetric), plus a block-size sweep and the small-C crossover behind
   `floyd_warshall_auto`.
2. Accumulation (run first, see `main`): `near_miss_update` folded by `xai_jax.engine.run` over synthetic
   probabilities made deterministically from each image's index (so host memory stays flat), images/s and
   peak RSS for two N; the bare kernel on one device-resident batch vs the same definition in NumPy.
3. Hierarchical clustering: `scipy.cluster.hierarchy.linkage(..., "average")` vs the naive O(n^3) pure-Python
   average linkage a research package would contain (the NMA paper's own package is not reachable here).

    python experiments/bench_nma.py [--quick]

Prints Markdown tables (warm-up, then the median of the repeats; JAX results blocked on) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy
from scipy.cluster import hierarchy
from scipy.sparse import csgraph
from scipy.spatial.distance import squareform

from benchutil import median_seconds, peer_row
from xai_jax import engine
from xai_jax.data import Batches
from xai_jax.data.base import Source
from xai_jax.kernels.floyd_warshall import floyd_warshall
from xai_jax.kernels.near_miss import NearMissState, near_miss_init, near_miss_update

BLOCK = 32  # the block size the sweep below picks on this CPU


def near_miss_graph(n: int, seed: int = 0, neighbours: int = 10) -> np.ndarray:
    """Symmetric weights 1 - s, s in (0, 0.5), on ~``neighbours`` random edges per label; inf elsewhere."""
    rng = np.random.default_rng(seed)
    w = np.full((n, n), np.inf)
    rows = np.repeat(np.arange(n), neighbours)
    w[rows, rng.integers(0, n, rows.size)] = 1 - rng.uniform(0, 0.5, rows.size)
    w = np.minimum(w, w.T)
    np.fill_diagonal(w, 0)
    return w


def fmt(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:,.0f}"


# ------------------------------------------------------------------------------------------- Floyd–Warshall

def floyd_warshall_rows(n: int) -> list[dict]:
    """All-pairs shortest paths on a near-miss-like graph of ``n`` labels: the blocked (b = ``BLOCK``) and the
    unblocked JAX kernel, each against SciPy (median of 5 up to C = 100, of 3 up to 1,000, else one run).

    Returns:
      two :func:`benchutil.peer_row`, blocked then unblocked, with ``max_abs_diff`` (against SciPy's float64)
      and ``repeats``; reachability is asserted to be SciPy's.
    """
    w = near_miss_graph(n)
    wj = jax.device_put(jnp.asarray(w, jnp.float32))
    repeats = 5 if n <= 100 else 3 if n <= 1000 else 1
    out = {}

    def scipy_fw():
        out["scipy"] = csgraph.floyd_warshall(w, directed=True)

    def jax_fw(block):
        def run():
            out[block] = floyd_warshall(wj, block_size=block).block_until_ready()
        return run

    # Over a minute each at C = 5,000: SciPy (nothing to compile) and the unblocked loop (compiling takes
    # under a second of that) run once without a warm-up.
    big = n > 2000
    t_scipy = median_seconds(scipy_fw, repeats, warm_up=not big)
    t_blocked = median_seconds(jax_fw(BLOCK), repeats)
    t_unblocked = median_seconds(jax_fw(None), repeats, warm_up=not big)
    ref = out["scipy"]
    diffs = []
    for key in (None, BLOCK):
        d = np.asarray(out[key], np.float64)
        assert (np.isinf(d) == np.isinf(ref)).all(), "reachability differs from SciPy"
        finite = np.isfinite(ref)
        diffs.append(float(np.abs(d[finite] - ref[finite]).max()))
    peer, sizes = "SciPy csgraph.floyd_warshall", f"C = {n:,}"
    return [peer_row(f"Floyd-Warshall, blocked b = {BLOCK}", t_blocked, t_scipy, peer, sizes,
                     max_abs_diff=diffs[1], repeats=repeats),
            peer_row("Floyd-Warshall, unblocked", t_unblocked, t_scipy, peer, sizes, max_abs_diff=diffs[0],
                     repeats=repeats)]


def bench_floyd_warshall(sizes, quick: bool) -> None:
    print("### Floyd–Warshall: JAX vs scipy.sparse.csgraph.floyd_warshall\n")
    print(f"| C | SciPy (s) | JAX unblocked (s) | JAX blocked b={BLOCK} (s) | SciPy / unblocked | SciPy / blocked "
          "| max abs diff vs SciPy | repeats |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        blocked, unblocked = floyd_warshall_rows(n)
        print(f"| {n:,} | {fmt(blocked['peer_s'])} | {fmt(unblocked['xai_jax_s'])} | {fmt(blocked['xai_jax_s'])} | "
              f"{unblocked['ratio']:.1f}x | {blocked['ratio']:.1f}x | "
              f"{max(blocked['max_abs_diff'], unblocked['max_abs_diff']):.1e} | {blocked['repeats']} |", flush=True)

    print("\nBlock-size sweep (JAX blocked, seconds, median of 3):\n")
    sweep_sizes = (1000,) if quick else (1000, 2000)
    blocks = (16, 32, 64, 128)
    print("| C | " + " | ".join(f"b={b}" for b in blocks) + " |")
    print("|---|" + "---|" * len(blocks))
    for n in sweep_sizes:
        wj = jnp.asarray(near_miss_graph(n, seed=1), jnp.float32)
        times = [median_seconds(lambda b=b: floyd_warshall(wj, block_size=b).block_until_ready(), 3) for b in blocks]
        print(f"| {n:,} | " + " | ".join(fmt(t) for t in times) + " |", flush=True)

    print("\nSmall C: unblocked vs blocked b=32 (milliseconds, median of 5):\n")
    print("| C | unblocked | blocked b=32 | SciPy |")
    print("|---|---|---|---|")
    for n in (64, 128, 256, 384, 512):
        w = near_miss_graph(n, seed=2)
        wj = jnp.asarray(w, jnp.float32)
        t_u = median_seconds(lambda: floyd_warshall(wj).block_until_ready(), 5)
        t_b = median_seconds(lambda: floyd_warshall(wj, block_size=BLOCK).block_until_ready(), 5)
        t_s = median_seconds(lambda: csgraph.floyd_warshall(w, directed=True), 5)
        print(f"| {n} | {1e3 * t_u:.2f} | {1e3 * t_b:.2f} | {1e3 * t_s:.2f} |", flush=True)

    # Memory of the ImageNet-21k case, from the compiled program alone (nothing is allocated).
    n = 21_841
    compiled = floyd_warshall.lower(jax.ShapeDtypeStruct((n, n), jnp.float32), block_size=BLOCK).compile()
    memory = compiled.memory_analysis()
    gib = {key: getattr(memory, f"{key}_size_in_bytes") / 2**30 for key in ("argument", "output", "temp")}
    print(f"\nC = 21,841, blocked b={BLOCK}, float32, compiled only: argument {gib['argument']:.2f} GiB, "
          f"output {gib['output']:.2f} GiB, temporaries {gib['temp']:.2f} GiB (no [C, b, C] intermediate).\n",
          flush=True)


# --------------------------------------------------------------------------------------------- accumulation

class SyntheticProbabilities(Source):
    """Softmax probabilities computed from each index alone, so any N streams in constant host memory.

    Row ``i``: a fixed random logit row ``base[i % 509]`` plus ``sin`` terms of ``i``, softmaxed; its label is
    the argmax for 4 of 5 indices (so most images count) and a hashed label otherwise.
    """

    def __init__(self, size: int, num_classes: int):
        self.size, self.num_classes_ = size, num_classes
        self.class_names = tuple(str(c) for c in range(num_classes))
        self.base = np.random.default_rng(0).normal(size=(509, num_classes)).astype(np.float32) * 2.0
        self.phase = np.arange(num_classes, dtype=np.float32) * 1.3

    def __len__(self) -> int:
        return self.size

    def read(self, indices):
        indices = np.asarray(indices)
        logits = self.base[indices % len(self.base)] + np.sin(
            (indices[:, None] % 1000).astype(np.float32) * 0.618 + self.phase)
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        hashed = (indices * 2654435761) % 2**32
        labels = np.where(hashed % 5 != 0, probs.argmax(1), hashed % self.num_classes_)
        return probs, labels.astype(np.int32)


def near_miss_step(state, batch, params):
    return near_miss_update(state, batch["images"], batch["labels"], batch["mask"], k=3, t=1e-6)


def numpy_near_miss_update(state, probs, labels, mask, k=3, t=1e-6):
    """The same definition vectorised in NumPy: argpartition for the top k, np.add.at to accumulate (the near
    misses, and every image's probability row into its label's literal sums)."""
    top = np.argpartition(-probs, k, axis=1)[:, :k]
    top_p = np.take_along_axis(probs, top, 1)
    counted = mask & (probs.argmax(1) == labels)
    near = counted[:, None] & (top != labels[:, None]) & (top_p >= t)
    rows = np.broadcast_to(labels[:, None], top.shape)
    np.add.at(state.sums, (rows[near], top[near]), top_p[near])
    np.add.at(state.events, (rows[near], top[near]), 1)
    np.add.at(state.counts, labels[counted], 1)
    np.add.at(state.label_sums, labels[mask], probs[mask])
    np.add.at(state.label_counts, labels[mask], 1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_accumulation(sizes, num_classes: int, batch_size: int) -> None:
    print(f"### Near-miss accumulation: C = {num_classes:,}, batch {batch_size:,}, k = 3\n")
    print("| N images | engine pass (s) | images/s | peak RSS before (MiB) | peak RSS after (MiB) | counted images |")
    print("|---|---|---|---|---|---|")
    warm = SyntheticProbabilities(2 * batch_size, num_classes)
    engine.run(near_miss_step, near_miss_init(num_classes), Batches(warm, batch_size), progress=False)
    for n in sizes:
        source = SyntheticProbabilities(n, num_classes)
        before = peak_rss_mib()
        start = time.perf_counter()
        state = engine.run(near_miss_step, near_miss_init(num_classes), Batches(source, batch_size), progress=False)
        seconds = time.perf_counter() - start
        after = peak_rss_mib()
        counted = int(np.asarray(state.counts).sum())
        print(f"| {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {before:,.0f} | {after:,.0f} | {counted:,} |",
              flush=True)

    r = near_miss_row(num_classes, batch_size)
    t_jax, t_numpy = r["xai_jax_s"], r["peer_s"]
    print(f"\nBare update of one {batch_size:,}-image batch (median of 10): JAX {1e3 * t_jax:.1f} ms "
          f"({batch_size / t_jax:,.0f} img/s), NumPy argpartition + add.at {1e3 * t_numpy:.1f} ms "
          f"({batch_size / t_numpy:,.0f} img/s): {t_numpy / t_jax:.1f}x; same sums, events and counts: {r['agree']}.")

    n = 21_841
    compiled = jax.jit(near_miss_update, static_argnames=("k",), donate_argnums=0).lower(
        jax.eval_shape(lambda: near_miss_init(n)), jax.ShapeDtypeStruct((batch_size, n), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32), jax.ShapeDtypeStruct((batch_size,), jnp.bool_), k=3).compile()
    memory = compiled.memory_analysis()
    print(f"C = 21,841, batch {batch_size:,}, compiled only: state {memory.argument_size_in_bytes / 2**30:.2f} GiB in "
          f"(batch included), temporaries {memory.temp_size_in_bytes / 2**20:.0f} MiB (no [B, C] x [B, C] product).\n",
          flush=True)


def near_miss_row(num_classes: int, batch_size: int, repeats: int = 10) -> dict:
    """The bare near-miss update (k = 3) of one device-resident batch against the NumPy version of the same
    definition: :func:`benchutil.peer_row` with ``agree`` (same sums, events and counts)."""
    probs, labels = SyntheticProbabilities(batch_size, num_classes).read(np.arange(batch_size))
    mask = np.ones(batch_size, bool)
    device = [jax.device_put(x) for x in (probs, labels, mask)]
    kernel = jax.jit(near_miss_update, static_argnames=("k",), donate_argnums=0)
    box = {"state": near_miss_init(num_classes)}

    def jax_update():
        box["state"] = kernel(box["state"], *device, k=3)
        jax.block_until_ready(box["state"])

    # NumPy arrays in the kernel's state type: np.add.at updates them in place.
    numpy_state = NearMissState(sums=np.zeros((num_classes, num_classes), np.float32),
                                events=np.zeros((num_classes, num_classes), np.int32),
                                counts=np.zeros(num_classes, np.float32),
                                label_sums=np.zeros((num_classes, num_classes), np.float32),
                                label_counts=np.zeros(num_classes, np.float32))
    t_jax = median_seconds(jax_update, repeats)
    t_numpy = median_seconds(lambda: numpy_near_miss_update(numpy_state, probs, labels, mask), repeats)
    check = near_miss_update(near_miss_init(num_classes), *device, k=3)
    reference = NearMissState(*(np.zeros_like(v) for v in numpy_state))
    numpy_near_miss_update(reference, probs, labels, mask)
    agree = all(np.allclose(np.asarray(a), b, rtol=1e-6) for a, b in zip(check, reference))
    return peer_row("near-miss update, one batch", t_jax, t_numpy, "NumPy argpartition + add.at",
                    f"C = {num_classes:,}, batch {batch_size:,}, k = 3", agree=bool(agree))


# -------------------------------------------------------------------------------------------- linkage

def python_average_linkage(distances: list[list[float]]) -> list[tuple[int, int, float, int]]:
    """Naive UPGMA as a pure-Python research package writes it: scan every active pair for the closest,
    merge, update the merged row by the size-weighted mean (Lance–Williams). O(n^3) time, O(n^2) memory.
    Returns SciPy-style rows (cluster a, cluster b, height, size), new clusters numbered from n."""
    n = len(distances)
    d = [row[:] for row in distances]
    size = [1] * n
    ids = list(range(n))
    active = list(range(n))
    merges = []
    for step in range(n - 1):
        best, best_i, best_j = float("inf"), -1, -1
        for a in range(len(active)):
            i = active[a]
            row = d[i]
            for b in range(a + 1, len(active)):
                j = active[b]
                if row[j] < best:
                    best, best_i, best_j = row[j], i, j
        i, j = best_i, best_j
        merges.append((min(ids[i], ids[j]), max(ids[i], ids[j]), best, size[i] + size[j]))
        for m in active:
            if m != i and m != j:
                value = (size[i] * d[i][m] + size[j] * d[j][m]) / (size[i] + size[j])
                d[i][m] = d[m][i] = value
        size[i] += size[j]
        ids[i] = n + step
        active.remove(j)
    return merges


def shortest_path_metric(n: int, seed: int) -> np.ndarray:
    d = csgraph.floyd_warshall(near_miss_graph(n, seed=seed), directed=False)
    assert np.isfinite(d).all(), "the benchmark graph should be connected"
    return d


def linkage_row(n: int) -> dict:
    """Average linkage of the shortest-path metric of ``n`` labels: SciPy's ``linkage`` (what the NMA method
    runs, so the xai_jax side) against the naive pure-Python loop (median of 5; Python's of 3 up to C = 300, else
    one run). :func:`benchutil.peer_row` with ``same_heights`` and ``repeats`` (Python's)."""
    d = shortest_path_metric(n, seed=3)
    condensed = squareform(d, checks=False)
    out = {}
    t_scipy = median_seconds(lambda: out.__setitem__("scipy", hierarchy.linkage(condensed, "average")), 5)
    rows = d.tolist()
    repeats = 3 if n <= 300 else 1
    t_python = median_seconds(lambda: out.__setitem__("python", python_average_linkage(rows)), repeats,
                              warm_up=False)
    heights = np.array([m[2] for m in out["python"]])
    same = np.allclose(np.sort(heights), np.sort(out["scipy"][:, 2]), rtol=1e-12)
    return peer_row("average linkage (SciPy, as NMA runs it)", t_scipy, t_python, "naive pure-Python UPGMA",
                    f"C = {n:,}", same_heights=bool(same), repeats=repeats)


def bench_linkage(sizes) -> None:
    print("### Average-linkage clustering of the shortest-path metric\n")
    print("| C | SciPy linkage (s) | pure-Python naive (s) | ratio | same merge heights | repeats (Python) |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        r = linkage_row(n)
        print(f"| {n:,} | {fmt(r['xai_jax_s'])} | {fmt(r['peer_s'])} | {r['ratio']:,.0f}x | {r['same_heights']} | "
              f"{r['repeats']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} at start; jax {jax.__version__} on {jax.devices()[0].platform}; numpy {np.__version__}, "
          f"scipy {scipy.__version__}\n", flush=True)
    started = time.perf_counter()
    # Accumulation first: ru_maxrss is the process's peak, which the large Floyd–Warshall inputs would raise.
    if args.quick:
        bench_accumulation((16_384, 65_536), 1000, 4096)
        bench_floyd_warshall((100, 500), quick=True)
        bench_linkage((100, 200))
    else:
        bench_accumulation((128_000, 1_280_000), 1000, 4096)
        bench_floyd_warshall((100, 1000, 2000, 5000), quick=False)
        bench_linkage((100, 300, 1000))
    load = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {load[0]:.2f} at the end")


if __name__ == "__main__":
    main()
