"""Every pass timed against the ceiling of the device it runs on, in one command (issue "ready for the accelerator").

    PYTHONPATH=. python experiments/bench_device.py --out DIR            # the full sizes (an H100/H200-class GPU)
    PYTHONPATH=. python experiments/bench_device.py --smoke --out DIR    # every row at tiny sizes (CPU, CI)
    PYTHONPATH=. python experiments/bench_device.py --rows resnet50,nma --out DIR

The ceilings are measured in the same run: dense matrix products in float32 and bfloat16 (the FLOP/s a row can
reach) and a large on-device copy (the bytes/s). Each row counts its own work from XLA's cost analysis of the
compiled program (FLOPs and bytes accessed), so "fraction of ceiling" is achieved rate / ceiling of the resource
that bounds it (the larger of the two fractions). Inputs are random, generated on the device, never zeros.

Writes ``DIR/bench_device.json`` (device, versions, date, every row) and ``DIR/bench_device.md`` (the table for
BENCHMARKS.md). Runs from the repository root with no install step: nothing on this path imports nltk, the
installed package's metadata, or a file outside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]  # the repository (xai_jax) and experiments/ (benchutil), no install

from benchutil import median_seconds  # noqa: E402

from xai_jax import __version__, engine, models  # noqa: E402
from xai_jax.data import ArraySource  # noqa: E402
from xai_jax.kernels import clustering, near_miss, www  # noqa: E402
from xai_jax.kernels.floyd_warshall import floyd_warshall_auto  # noqa: E402
from xai_jax.outputs import atomic_dir, check_output  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes of every row: ``full`` on an accelerator, ``smoke`` on a CPU in CI."""

    matmul: int
    copy_mib: int
    image: int
    batch: int
    nma_classes: tuple[int, ...]
    fw_classes: tuple[int, ...]
    neurons: int
    concepts: int
    kmeans_points: int
    probe_images: int


FULL = Sizes(matmul=8192, copy_mib=4096, image=224, batch=256, nma_classes=(1000, 21841),
             fw_classes=(1000, 5000, 21841), neurons=2048, concepts=82115, kmeans_points=1_281_167,
             probe_images=10_000)
SMOKE = Sizes(matmul=1024, copy_mib=64, image=64, batch=4, nma_classes=(10, 37), fw_classes=(17, 64),
              neurons=16, concepts=100, kmeans_points=500, probe_images=200)


@dataclasses.dataclass
class Row:
    name: str
    seconds: float
    flops: float
    bytes: float
    items: float = 0.0
    unit: str = ""
    peer: str = ""
    peer_seconds: float | None = None
    note: str = ""


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call (compilation), each call blocked on its result."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost(jitted, *args) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one call, from XLA's cost analysis of the compiled program."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def jitted_row(name: str, fn, args, repeats: int, **extra) -> Row:
    jitted = jax.jit(fn)
    flops, moved = cost(jitted, *args)
    return Row(name, timed(lambda: jitted(*args), repeats), flops, moved, **extra)


# --- ceilings ----------------------------------------------------------------------------------------------

def ceilings(s: Sizes, key, repeats: int) -> dict[str, float]:
    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(key, (s.matmul, s.matmul), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (s.matmul, s.matmul), dtype)
        seconds = timed(lambda: jnp.matmul(a, b), repeats)
        out[f"flops_{dtype}"] = 2 * s.matmul ** 3 / seconds
    x = jax.random.uniform(key, (s.copy_mib * 2 ** 18,), jnp.float32)  # MiB of float32
    copy = jax.jit(lambda v: v * 1.0000001)  # a read and a write of every byte, not elided
    seconds = timed(lambda: copy(x), repeats)
    out["bytes_per_s"] = 2 * x.nbytes / seconds
    return out


# --- rows --------------------------------------------------------------------------------------------------

def resnet50_rows(s: Sizes, key, repeats: int) -> list[Row]:
    spec = models.get("resnet50")
    variables = models.init_variables(spec, key)
    images = jax.random.randint(key, (s.batch, s.image, s.image, 3), 0, 256, jnp.int32).astype(jnp.uint8)
    rows = []
    for dtype in (None, "bfloat16"):
        forward = models.make_forward("resnet50", compute_dtype=dtype)
        label = dtype or "float32"
        rows.append(jitted_row(f"resnet50 forward {label}", lambda x, v: forward(x, v)["logits"],
                               (images, variables), repeats, items=s.batch, unit="img",
                               peer="torchvision resnet50, eval, inference_mode" + (", bf16 autocast" if dtype else ""),
                               peer_seconds=torch_resnet50(s, dtype, repeats)))
    # the engine's pass on top of the same forward: host batches of random images, padded, sharded
    host = np.asarray(jax.random.randint(key, (2 * s.batch, s.image, s.image, 3), 0, 256, jnp.int32), np.uint8)
    source = ArraySource(host, np.arange(len(host)) % 1000, [str(i) for i in range(1000)])
    forward = models.make_forward("resnet50")
    step = _predict_step(forward)
    seconds = timed(lambda: engine.collect(engine.map_batches(step, source, variables, batch_size=s.batch,
                                                              progress=False)), repeats)
    base = rows[0]
    rows.append(Row("resnet50 engine predict float32", seconds, 2 * base.flops, 2 * base.bytes, items=len(host),
                    unit="img", note="map_batches over host uint8 batches, one batch in flight"))
    return rows


def _predict_step(forward):
    def step(batch, variables):
        return forward(batch["images"], variables)["logits"]
    return step


def torch_resnet50(s: Sizes, dtype: str | None, repeats: int) -> float | None:
    """torchvision's ResNet-50 on the same device kind, eval mode, ``inference_mode`` (bf16 autocast), or None
    where torchvision is not installed (the row's ratio stays empty)."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    model = torchvision.models.resnet50().eval().to(device)
    x = torch.rand(s.batch, 3, s.image, s.image, device=device)

    def run():
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return median_seconds(run, repeats)


def nma_rows(s: Sizes, key, repeats: int) -> list[Row]:
    rows = []
    for c in s.nma_classes:
        n = max(s.batch, 256)
        probs = jax.nn.softmax(4 * jax.random.normal(key, (n, c)), -1)
        labels = jax.random.randint(key, (n,), 0, c)
        mask = jnp.ones(n, bool)
        state = near_miss.near_miss_init(c)
        rows.append(jitted_row(f"near-miss accumulation C={c:,}", lambda st, p, y, m: near_miss.near_miss_update(
            st, p, y, m), (state, probs, labels, mask), repeats, items=n, unit="img"))
    for c in s.fw_classes:
        w = jax.random.uniform(key, (c, c), jnp.float32, 0.01, 1.0)
        rows.append(jitted_row(f"Floyd-Warshall C={c:,}", floyd_warshall_auto, (w,), repeats,
                               items=float(c) ** 3, unit="relax", note="C^3 min-plus relaxations"))
    return rows


def www_rows(s: Sizes, key, repeats: int) -> list[Row]:
    d = 512
    neurons = jax.random.normal(key, (s.neurons, d))
    concepts = jax.random.normal(jax.random.fold_in(key, 1), (s.concepts, d))
    template = jax.random.normal(jax.random.fold_in(key, 2), (d,))
    rows = [jitted_row(f"WWW adaptive cosine {s.neurons:,} x {s.concepts:,}", www.adaptive_cosine_scores,
                       (neurons, concepts, template), repeats, items=s.neurons * s.concepts, unit="score")]
    p, m, u = s.probe_images, min(s.concepts, 20_000), min(s.neurons, 512)
    similarity = jax.random.normal(key, (p, m))
    activations = jax.random.normal(jax.random.fold_in(key, 3), (p, u))
    top_k = min(100, p)
    rows.append(jitted_row(f"CLIP-Dissect soft-WPMI {u} neurons x {m:,} concepts",
                           lambda sim, act: www.soft_wpmi_log_p_given_e(sim, act, top_k), (similarity, activations),
                           repeats, items=u, unit="neuron"))
    return rows


def dec_rows(s: Sizes, key, repeats: int) -> list[Row]:
    x = jax.random.normal(key, (s.kmeans_points, 20))
    fn = lambda v, k: clustering.kmeans(v, 15, k, n_init=20)  # noqa: E731
    seconds = timed(lambda: fn(x, key), max(1, repeats // 2))
    return [Row(f"k-means k=15, 20 restarts, N={s.kmeans_points:,}, e=20", seconds, 0.0, 0.0,
                items=s.kmeans_points, unit="point", note="Lloyd steps vary per restart: no FLOP count")]


ROWS: dict[str, Callable[[Sizes, jax.Array, int], list[Row]]] = {
    "resnet50": resnet50_rows, "nma": nma_rows, "www": www_rows, "dec": dec_rows}


def fraction(row: Row, ceiling: dict[str, float], dtype: str) -> float | None:
    parts = []
    if row.flops:
        parts.append(row.flops / row.seconds / ceiling[f"flops_{dtype}"])
    if row.bytes:
        parts.append(row.bytes / row.seconds / ceiling["bytes_per_s"])
    return max(parts) if parts else None


def table(rows: list[dict], device: str) -> str:
    lines = [f"Device: {device}. Fraction: achieved FLOP/s or bytes/s over the ceiling measured in the same run.",
             "", "| row | seconds | rate | fraction of ceiling | PyTorch ratio | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['items'] / r['seconds']:,.0f} {r['unit']}/s" if r["items"] else ""
        frac = "" if r["fraction"] is None else f"{r['fraction']:.2f}"
        ratio = "" if r["peer_seconds"] is None else f"{r['peer_seconds'] / r['seconds']:.2f}x"
        lines.append(f"| {r['name']} | {r['seconds']:.4g} | {rate} | {frac} | {ratio} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--smoke", action="store_true", help="every row at tiny sizes (CPU, CI)")
    parser.add_argument("--rows", help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; smoke 1)")
    args = parser.parse_args(argv)
    wanted = args.rows.split(",") if args.rows else list(ROWS)
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    check_output(args.out, "bench.device")
    sizes, repeats = (SMOKE, args.repeats or 1) if args.smoke else (FULL, args.repeats or 5)
    key = jax.random.key(0)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))"
    started = time.perf_counter()
    ceiling = ceilings(sizes, key, repeats)
    records = []
    for name in wanted:
        for row in ROWS[name](sizes, key, repeats):
            record = dataclasses.asdict(row)
            record["fraction"] = fraction(row, ceiling, "bfloat16" if "bfloat16" in row.name else "float32")
            records.append(record)
            print(f"{row.name}: {row.seconds:.4g} s", flush=True)
    bad = [r["name"] for r in records if not math.isfinite(r["seconds"]) or r["seconds"] <= 0]
    if bad:
        raise SystemExit(f"bench_device: rows without a finite time: {', '.join(bad)}")
    summary = {"device": device, "date": datetime.date.today().isoformat(), "xai_jax": __version__,
               "jax": jax.__version__, "python": platform.python_version(), "smoke": args.smoke,
               "ceilings": ceiling, "rows": records, "seconds": round(time.perf_counter() - started, 1)}
    with atomic_dir(args.out, "bench.device") as tmp:
        with open(os.path.join(tmp, "bench_device.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(tmp, "bench_device.md"), "w") as f:
            f.write(table(records, device))
    print(table(records, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
