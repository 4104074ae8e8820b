"""The accelerator benchmark's CPU form (``experiments/bench_device.py --smoke``), run as the device machine runs
it: from the repository root with ``PYTHONPATH=.``, no install, no nltk."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_smoke_run_writes_every_row_with_finite_numbers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    blocker = ("import builtins, sys; real = builtins.__import__\n"
               "def guarded(name, *a, **k):\n"
               "    if name.split('.')[0] == 'nltk':\n"
               "        raise ImportError(f'the device machine has no {name}')\n"
               "    return real(name, *a, **k)\n"
               "builtins.__import__ = guarded\n"
               f"sys.argv = ['bench_device.py', '--smoke', '--out', {str(tmp_path / 'out')!r}]\n"
               f"exec(compile(open({str(REPO / 'experiments' / 'bench_device.py')!r}).read(), 'bench_device.py', "
               "'exec'), {'__name__': '__main__', '__file__': "
               f"{str(REPO / 'experiments' / 'bench_device.py')!r}}})\n")
    done = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "bench_device.json").read_text())
    names = [r["name"] for r in summary["rows"]]
    for expected in ("resnet50 forward float32", "resnet50 forward bfloat16", "resnet50 engine predict float32",
                     "near-miss accumulation C=10", "Floyd-Warshall C=64", "WWW adaptive cosine",
                     "CLIP-Dissect soft-WPMI", "k-means k=15"):
        assert any(n.startswith(expected) for n in names), (expected, names)
    for row in summary["rows"]:
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0, row
        assert row["fraction"] is None or (math.isfinite(row["fraction"]) and row["fraction"] > 0), row
    assert all(math.isfinite(v) and v > 0 for v in summary["ceilings"].values())
    table = (tmp_path / "out" / "bench_device.md").read_text()
    assert table.count("\n| ") == len(names) + 1  # the header and one line a row
