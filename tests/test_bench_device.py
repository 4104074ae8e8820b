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
    for expected in ("resnet18 forward float32", "resnet18 forward bfloat16", "resnet18 engine predict float32",
                     "near-miss accumulation C=10", "Floyd-Warshall C=64", "Taylor-Shapley resnet18 layer4 float32",
                     "Taylor-Shapley resnet18 layer4 bfloat16", "WWW adaptive cosine", "CLIP-Dissect soft-WPMI",
                     "CLIP tiny image tower", "k-means k=15", "DEC refinement round", "SRAE 3 explainers at once",
                     "ClaDec decoder training step", "ClaDec 16-occlusion relevance"):
        assert any(n.startswith(expected) for n in names), (expected, names)
    for row in summary["rows"]:
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0, row
        assert row["fraction"] is None or (math.isfinite(row["fraction"]) and row["fraction"] > 0), row
        assert row["peer_seconds"] is None or (math.isfinite(row["peer_seconds"]) and row["peer_seconds"] > 0), row
    # the PyTorch peers that need no torchvision ran (CI's venv has torch): the forward and Taylor-Shapley rows
    # fall back to the repository's PyTorch ResNet, CLIP-Dissect and DEC to their loops
    with_peer = {r["name"].split(",")[0] for r in summary["rows"] if r["peer_seconds"] is not None}
    for expected in ("resnet18 forward float32", "Taylor-Shapley resnet18 layer4 float32", "CLIP-Dissect soft-WPMI",
                     "DEC refinement round", "SRAE 3 explainers at once"):
        assert any(n.startswith(expected) for n in with_peer), (expected, with_peer)
    assert set(summary["group_seconds"]) == {"backbone", "nma", "taylor_shapley", "www", "clip", "dec", "srae",
                                             "cladec"}
    assert all(math.isfinite(v) and v > 0 for v in summary["ceilings"].values())
    table = (tmp_path / "out" / "bench_device.md").read_text()
    assert table.count("\n| ") == len(names) + 1  # the header and one line a row
