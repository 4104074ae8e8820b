"""Where `xai-jax dec fit` holds host memory: the peak resident set (anonymous and file-backed) of each phase.

Runs the command of BENCHMARKS "Host memory" in this process (ResNet-56 on a seeded random subset of the CIFAR-10
training JPEGs, taps stem, layer1, layer2, layer3, a small autoencoder and one epoch: memory does not depend on
the schedule) while a thread reads ``/proc/self/status`` every 20 ms, and prints each phase's peak. Run it at
two ``--limit`` values: a phase whose peak grows between them holds something per image.

    python experiments/dec_memory.py --limit 3125 && python experiments/dec_memory.py --limit 12500

``--bank-rows N`` measures Figure 2's baseline search instead: 10 queries against a bank of ``N`` penultimate
features of ResNet-50's size (2,048, float16, random) in a ``.npy`` file, once read a chunk at a time from the
file (what a saved surrogate does) and once read whole into memory as float32 (what it did before), with the
peak of each.

    python experiments/dec_memory.py --bank-rows 250000
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import DATA, commit  # noqa: E402

from xai_jax import cli, train  # noqa: E402
from xai_jax.methods.dec import passes, refine  # noqa: E402
from xai_jax.methods.dec.result import DECResult  # noqa: E402

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def resident_mib() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) // 1024 for k, v in (line.split(":", 1) for line in f) if k in FIELDS}


class PhasePeaks:
    """The peak of each :data:`FIELDS` while each phase (the innermost wrapped function running) runs."""

    def __init__(self, interval_s: float = 0.02):
        self.phase, self.peaks, self._stop = "other", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)

    def _sample(self, interval_s: float) -> None:
        while not self._stop.is_set():
            peak = self.peaks.setdefault(self.phase, dict.fromkeys(FIELDS, 0))
            for key, value in resident_mib().items():
                peak[key] = max(peak[key], value)
            time.sleep(interval_s)

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def labelled(*args, **kwargs):
            outer, self.phase = self.phase, label
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = outer

        setattr(owner, name, labelled)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bank_search(rows: int, dim: int = 2048, m: int = 10) -> None:
    """Peak memory of the baseline's nearest neighbours over a bank on disk, chunked and whole."""
    import jax
    import numpy as np
    from xai_jax.kernels.clustering import nearest_neighbours
    from xai_jax.rowstore import DiskRows
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(10, dim)).astype(np.float32)
    peaks = PhasePeaks()
    with tempfile.TemporaryDirectory() as scratch, peaks:
        bank = DiskRows(os.path.join(scratch, "features.npy"), (rows, dim), np.float16)
        peaks.phase = "writing the bank"
        for start in range(0, rows, 8192):
            bank[start:start + 8192] = rng.normal(size=(min(8192, rows - start), dim)).astype(np.float16)
        bank.flush()
        found, seconds = {}, {}
        for label, layer in [("chunks from the file", lambda: bank), ("whole, in memory", lambda: bank[:].astype(
                np.float32))]:
            time.sleep(0.2)
            peaks.phase = label
            start = time.perf_counter()
            found[label] = jax.block_until_ready(nearest_neighbours([queries], [layer()], [1.0], m))
            seconds[label] = time.perf_counter() - start
            peaks.phase = "other"
            time.sleep(0.2)
    (a, b), (c, d) = found.values()
    assert np.array_equal(a, c) and np.array_equal(b, d)
    print(f"baseline search, 10 queries x {rows:,} bank rows of {dim} float16 ({rows * dim * 2 / 2**30:.2f} GiB "
          f"on disk), m = {m}, commit {commit()}: the same neighbours\n")
    print("| phase | seconds | resident | anonymous | file-backed |")
    print("|---|---:|---:|---:|---:|")
    for phase, peak in peaks.peaks.items():
        took = f"{seconds[phase]:.1f}" if phase in seconds else ""
        print(f"| {phase} | {took} | {peak['VmRSS']:,} | {peak['RssAnon']:,} | {peak['RssFile']:,} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=12500, help="training images (a seeded random subset)")
    p.add_argument("--bank-rows", type=int, default=0,
                   help="measure the baseline's search over this many features instead of `dec fit`")
    args = p.parse_args()
    if args.bank_rows:
        return bank_search(args.bank_rows)
    weights = DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
    argv = ["--quiet", "dec", "fit", "--model", "cifar_resnet56", "--weights", str(weights),
            "--data", f"jpeg-npz:{DATA / 'cifar10' / 'cifar10_train_jpeg.npz'}", "--limit", str(args.limit),
            "--sample-seed", "0", "--taps", "stem,layer1,layer2,layer3", "--hidden", "64,64,128",
            "--pretrain-epochs", "1", "--max-dec-steps", "1", "--kmeans-inits", "1"]
    peaks = PhasePeaks()
    for owner, name, label in [(passes.ActivationClusteringSurrogate, "activations", "activations pass"),
                               (passes, "normalisation", "normalisation"), (train, "fit", "autoencoder pretraining"),
                               (passes, "embed_rows", "embedding"), (passes, "kmeans", "k-means"),
                               (passes, "dec_refine", "DEC refinement"), (refine, "embed_rows", "DEC refinement"),
                               (passes, "cluster_posteriors", "posteriors"), (DECResult, "scores", "scores"),
                               (DECResult, "save", "saving")]:
        peaks.wrap(owner, name, label)
    with tempfile.TemporaryDirectory() as scratch, peaks:
        start = time.perf_counter()
        code = cli.main(argv + ["--out", os.path.join(scratch, "dec")])
        seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    print(f"`dec fit` on {args.limit:,} images, commit {commit()}, {seconds:.0f} s: peak MiB per phase\n")
    print("| phase | resident | anonymous | file-backed |")
    print("|---|---:|---:|---:|")
    for phase, peak in peaks.peaks.items():
        print(f"| {phase} | {peak['VmRSS']:,} | {peak['RssAnon']:,} | {peak['RssFile']:,} |")
    total = {k: max(p[k] for p in peaks.peaks.values()) for k in FIELDS}
    print(f"| **whole run** | {total['VmRSS']:,} | {total['RssAnon']:,} | {total['RssFile']:,} |")


if __name__ == "__main__":
    main()
