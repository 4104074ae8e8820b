"""Every peer comparison of BENCHMARKS.md in one run, one table: xai_jax's time, the peer's, and their ratio.

A thin runner over the per-method scripts: ``BENCHMARKS`` maps a name to the script's own comparison function
(the one its ``main()`` prints from) at three scales, and each returns rows (:func:`benchutil.peer_row`). A
regression shows as a ratio that fell.

    python experiments/bench_all.py --quick                  # every comparison at small sizes, a few minutes
    python experiments/bench_all.py --quick --only nma,dec   # chosen benchmarks (a prefix picks its group)
    python experiments/bench_all.py --quick --json all.json  # also save the table
    python experiments/bench_all.py --list                   # the registry

Without ``--quick`` every comparison runs at its script's default sizes (the documented measurements: an hour or
more on a 2-core CPU). ``--tiny`` is for the test suite: seconds-long sizes whose timings mean nothing. A peer
that is not installed, or shared data that is missing, gives a "skipped: reason" row; a comparison that fails
gives a "failed" row (its traceback on stderr) and the exit status 1, after the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import traceback
from typing import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchutil import DATA, REPO, malloc_settings, skipped_row  # noqa: E402

sys.path.insert(0, str(REPO))  # the tree this script is in, whatever is installed

SCALES = ("tiny", "quick", "full")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One registered comparison.

    Attributes:
      script: the ``experiments/`` script whose function runs it.
      run: ``run(scale)`` -> rows, ``scale`` one of :data:`SCALES`.
      needs: the modules the peers need (checked before running: a missing one skips the benchmark).
      data: the shared data files or folders it reads, relative to the data folder.
      torch_threads: PyTorch's intra-op threads, as the script's own default (None: all CPUs).
    """

    script: str
    run: Callable[[str], list]
    needs: tuple = ()
    data: tuple = ()
    torch_threads: int | None = None


def pick(scale: str, tiny, quick, full):
    return {"tiny": tiny, "quick": quick, "full": full}[scale]


def engine(scale: str) -> list:
    import bench_engine
    import torch
    from xai_jax.data import JpegNpzSource
    jpeg = JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    images, labels = jpeg.all()
    names, n, batch, repeats = pick(scale, (["cifar_resnet20"], 128, 64, 1), (["cifar_resnet20"], 1024, 256, 5),
                                    (["cifar_resnet20", "cifar_resnet56"], len(labels), 256, 3))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [bench_engine.compare_model(name, jpeg, images[:n], labels[:n], batch, repeats, device,
                                       with_jpeg=False) for name in names]


def clip(scale: str) -> list:
    import bench_clip
    from xai_jax.models import clip as clip_models
    n, repeats = pick(scale, (8, 1), (128, 9), (1024, 3))
    return bench_clip.bench(clip_models.CONFIGS["tiny"], n, n, repeats)[0]


def dec_kmeans(scale: str) -> list:
    import bench_dec
    cases, repeats = pick(scale, ([(1_000, 15)], 1), ([(10_000, 15)], 3),
                          ([(n, k) for k in (15, 50) for n in (10_000, 100_000, 300_000)], 2))
    return [bench_dec.bench_kmeans(bench_dec.mixture(n, k)[0], k, 1 if n >= 300_000 else repeats,
                                   warm_up_peer=n < 300_000) for n, k in cases]


def dec_refine(scale: str) -> list:
    import bench_dec
    cases, repeats, refreshes = pick(scale, ([(1_000, 15)], 1, 1), ([(10_000, 15)], 3, 5),
                                     ([(n, k) for k in (15, 50) for n in (10_000, 100_000, 300_000)], 2, 5))
    return [bench_dec.bench_refine(bench_dec.mixture(n, k)[0], k, 1 if n >= 300_000 else repeats, refreshes,
                                   warm_up_peer=n < 300_000) for n, k in cases]


def dec_kernels_kmeans(scale: str) -> list:
    import bench_dec_kernels
    sizes = pick(scale, (1_000,), (2_000,), (10_000, 100_000, 1_000_000))
    return [bench_dec_kernels.kmeans_row(n, lloyd_steps=scale == "full") for n in sizes]


def dec_kernels_loss(scale: str) -> list:
    import bench_dec_kernels
    return [bench_dec_kernels.dec_loss_row(pick(scale, 10_000, 100_000, 1_000_000))]


def dec_kernels_neighbours(scale: str) -> list:
    import bench_dec_kernels
    return [bench_dec_kernels.neighbours_row(*pick(scale, (50, 2_000), (200, 10_000), (1_000, 50_000)))]


def nma_floyd_warshall(scale: str) -> list:
    import bench_nma
    return [row for n in pick(scale, (100,), (500,), (100, 1000, 2000, 5000))
            for row in bench_nma.floyd_warshall_rows(n)]


def nma_near_miss(scale: str) -> list:
    import bench_nma
    return [bench_nma.near_miss_row(*pick(scale, (100, 256, 3), (1000, 4096, 10), (1000, 4096, 10)))]


def nma_linkage(scale: str) -> list:
    import bench_nma
    return [bench_nma.linkage_row(n) for n in pick(scale, (50,), (100,), (100, 300, 1000))]


def www_scores(scale: str) -> list:
    import bench_www
    sizes, units, loop_units, repeats = pick(scale, ((1000,), 64, 8, 1), ((1000, 20000), 512, 32, 3),
                                             ((1000, 20000, 82115), 2048, 64, 3))
    return bench_www.scores_rows(sizes, units, loop_units, repeats)


def www_wpmi(scale: str) -> list:
    import bench_www
    sizes, units, repeats, probe = pick(scale, ((100,), 16, 1, 500), ((1000,), 64, 9, 5000),
                                        ((1000, 20000), 256, 3, 5000))
    return bench_www.soft_wpmi_rows(sizes, units, repeats, probe=probe)


def www_contributions(scale: str) -> list:
    import bench_www
    return [bench_www.contributions_row(*pick(scale, (4, 2, 1), (32, 8, 5), (256, 64, 3)))]


def xnn_srae(scale: str) -> list:
    import bench_xnn
    import torch
    images, epochs, repeats = pick(scale, (256, 1, 1), (512, 2, 5), (4096, 5, 3))
    feats = bench_xnn.pool_features(images)[3]
    return [bench_xnn.srae_row(feats, epochs, repeats, torch.get_num_threads(), with_singles=scale == "full")]


def cladec(scale: str) -> list:
    import bench_cladec
    import torch
    return bench_cladec.compare(*pick(scale, (8, 1), (32, 9), (128, 5)), threads=torch.get_num_threads())


def input_pipeline(scale: str) -> list:
    import bench_input
    with tempfile.TemporaryDirectory() as tmp:
        smoke = ["--smoke"] if scale != "full" else []
        args = bench_input.parse_args(smoke + ["--tree", str(pathlib.Path(tmp) / "tree"),
                                               "--pipelines", "library,torchvision"])
        return bench_input.peer_rows(bench_input.measure(args, progress=False))


CIFAR_TEST, RESNET = "cifar10/cifar10_test_jpeg.npz", "cifar10_resnet"
BENCHMARKS = {
    "engine": Benchmark("bench_engine.py", engine, ("torch",), (CIFAR_TEST, RESNET)),
    "clip": Benchmark("bench_clip.py", clip, ("torch", "transformers")),
    "dec.kmeans": Benchmark("bench_dec.py", dec_kmeans, ("sklearn",)),
    "dec.refine": Benchmark("bench_dec.py", dec_refine, ("torch", "sklearn"), torch_threads=1),
    "dec_kernels.kmeans": Benchmark("bench_dec_kernels.py", dec_kernels_kmeans, ("sklearn",)),
    "dec_kernels.loss": Benchmark("bench_dec_kernels.py", dec_kernels_loss, ("sklearn",)),
    "dec_kernels.neighbours": Benchmark("bench_dec_kernels.py", dec_kernels_neighbours, ("sklearn",)),
    "nma.floyd_warshall": Benchmark("bench_nma.py", nma_floyd_warshall),
    "nma.near_miss": Benchmark("bench_nma.py", nma_near_miss),
    "nma.linkage": Benchmark("bench_nma.py", nma_linkage),
    "www.scores": Benchmark("bench_www.py", www_scores, ("torch",)),
    "www.wpmi": Benchmark("bench_www.py", www_wpmi, ("torch",)),
    "www.contributions": Benchmark("bench_www.py", www_contributions, ("torch",), (CIFAR_TEST, RESNET)),
    "xnn.srae": Benchmark("bench_xnn.py", xnn_srae, ("torch",), ("cifar10/cifar10_train_jpeg.npz", RESNET)),
    "cladec": Benchmark("bench_cladec.py", cladec, ("torch",), ("fashion_mnist",)),
    "input": Benchmark("bench_input.py", input_pipeline, ("torchvision",), (CIFAR_TEST,)),
}
# bench_dec_kernels imports scikit-learn when it loads, so all its rows need it.

PACKAGES = {"sklearn": "scikit-learn"}


def selected(only: str | None) -> list[str]:
    """The registry names ``--only`` picks: each given name exactly, or the group it prefixes (``dec`` picks
    ``dec.kmeans`` and ``dec.refine``). Raises ``SystemExit`` naming an unknown one, before any work."""
    if not only:
        return list(BENCHMARKS)
    names = []
    for wanted in (w.strip() for w in only.split(",") if w.strip()):
        matched = [n for n in BENCHMARKS if n == wanted or n.startswith(wanted + ".")]
        if not matched:
            raise SystemExit(f"bench_all.py: unknown benchmark {wanted!r}; known: {', '.join(BENCHMARKS)}")
        names += [n for n in matched if n not in names]
    return names


def why_skipped(benchmark: Benchmark) -> str | None:
    """The reason ``benchmark`` cannot run here (a peer's package or a data file missing), or None."""
    missing = [PACKAGES.get(m, m) for m in benchmark.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    absent = [d for d in benchmark.data if not (DATA / d).exists()]
    if absent:
        return f"shared data missing: {', '.join(str(DATA / d) for d in absent)}"
    return None


def run_one(name: str, scale: str, torch_threads: int | None = None) -> tuple[list[dict], float]:
    """The rows of benchmark ``name`` at ``scale`` (each tagged with ``benchmark``) and its wall seconds
    (compilation included): a skipped row where it cannot run, a ``failed`` row where it raised. PyTorch runs on
    ``torch_threads`` threads, by default the script's own default."""
    benchmark = BENCHMARKS[name]
    started = time.perf_counter()
    reason = why_skipped(benchmark)
    if reason is not None:
        rows = [skipped_row(name, reason)]
    else:
        try:
            if "torch" in benchmark.needs:
                import torch
                torch.set_num_threads(torch_threads or benchmark.torch_threads or os.cpu_count() or 1)
            rows = benchmark.run(scale)
        except Exception as error:  # noqa: BLE001 -- reported in the table and the exit status, not hidden
            traceback.print_exc()
            rows = [{"name": name, "failed": f"{type(error).__name__}: {error}".splitlines()[0]}]
    return [{"benchmark": name, **row} for row in rows], time.perf_counter() - started


def seconds(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2e}"


def table(rows: list[dict]) -> str:
    """The Markdown table: one line a row, skipped and failed rows saying why."""
    lines = ["| benchmark | row | xai_jax (s) | peer | peer (s) | peer / xai_jax | sizes |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        if "skipped" in r or "failed" in r:
            status = f"skipped: {r['skipped']}" if "skipped" in r else f"**failed**: {r['failed']}"
            lines.append(f"| {r['benchmark']} | {status} | | | | | |")
        else:
            lines.append(f"| {r['benchmark']} | {r['name']} | {seconds(r['xai_jax_s'])} | {r['peer']} | "
                         f"{seconds(r['peer_s'])} | {r['ratio']:.2f}x | {r['sizes']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: every comparison in a few minutes")
    size.add_argument("--tiny", action="store_true", help="seconds-long sizes for the tests (timings mean nothing)")
    parser.add_argument("--only", help="comma-separated benchmark names or groups (see --list)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the table and the machine here as JSON")
    parser.add_argument("--torch-threads", type=int, help="PyTorch's threads in every benchmark (default: each "
                        "script's own, mostly all CPUs; 1 on a busy machine, where OpenMP threads spin-wait)")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    args = parser.parse_args(argv)
    names = selected(args.only)
    if args.list:
        for name in names:
            print(f"{name:24s} experiments/{BENCHMARKS[name].script}")
        return {"benchmarks": names}
    scale = "tiny" if args.tiny else "quick" if args.quick else "full"

    import jax
    load_start = os.getloadavg()
    started = time.perf_counter()
    rows, wall = [], {}
    for name in names:
        got, wall[name] = run_one(name, scale, args.torch_threads)
        rows += got
        print(f"{name}: {wall[name]:.1f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "jax": f"{jax.__version__} on {jax.devices()[0].platform}", "python": platform.python_version(),
               "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0],
               "malloc": malloc_settings()}
    print(f"machine: {machine['processor']}, {machine['cpus']} CPUs, JAX {machine['jax']}; load average "
          f"{machine['load_average_start']:.1f} at the start, {machine['load_average_end']:.1f} at the end; "
          f"malloc: {machine['malloc']}; {scale} sizes, {total:.0f} s\n")
    print(table(rows), flush=True)
    result = {"command": " ".join(["bench_all.py", *(argv if argv is not None else sys.argv[1:])]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "scale": scale, "machine": machine,
              "seconds": total, "benchmark_seconds": wall, "rows": rows}
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)
    return result


if __name__ == "__main__":
    sys.exit(1 if any("failed" in r for r in main().get("rows", ())) else 0)
