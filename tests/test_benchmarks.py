"""``experiments/bench_all.py``: the registry covers every peer-comparison script, cheap rows run at the tiny sizes
with finite positive times (no timing thresholds), and a missing peer or a failing comparison is a row, not a
crash."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def bench_all():
    spec = importlib.util.spec_from_file_location("bench_all", REPO / "experiments" / "bench_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_all"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_all"]


def test_registry_covers_every_peer_comparison_script(bench_all, capsys):
    # bench_device.py is the accelerator benchmark (its own test), bench_all.py the runner itself
    scripts = {p.name for p in (REPO / "experiments").glob("bench_*.py")} - {"bench_all.py", "bench_device.py"}
    assert {b.script for b in bench_all.BENCHMARKS.values()} == scripts
    listed = bench_all.main(["--list"])["benchmarks"]
    assert listed == list(bench_all.BENCHMARKS)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == listed
    assert bench_all.selected("dec") == ["dec.kmeans", "dec.refine"]  # a group, not dec_kernels
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        bench_all.selected("nma,nope")


def test_cheap_rows_at_tiny_sizes(bench_all, tmp_path, capsys):
    names = bench_all.selected("dec_kernels.loss,nma")
    out = tmp_path / "all.json"
    result = bench_all.main(["--tiny", "--only", "dec_kernels.loss,nma", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert {r["benchmark"] for r in rows} == set(names) and set(result["benchmark_seconds"]) == set(names)
    for row in rows:
        assert "skipped" not in row and "failed" not in row, row  # NumPy and SciPy are dependencies
        assert math.isfinite(row["xai_jax_s"]) and row["xai_jax_s"] > 0, row
        assert math.isfinite(row["peer_s"]) and row["peer_s"] > 0, row
        assert row["ratio"] == pytest.approx(row["peer_s"] / row["xai_jax_s"])
    by_name = {r["name"]: r for r in rows}
    # both sides computed the same thing
    loss = by_name["DEC loss (soft assignment + target + KL)"]
    assert loss["loss_jax"] == pytest.approx(loss["loss_numpy"], rel=1e-4)
    assert by_name["near-miss update, one batch"]["agree"] is True
    assert by_name["average linkage (SciPy, as NMA runs it)"]["same_heights"] is True
    for name in ("Floyd-Warshall, blocked b = 32", "Floyd-Warshall, unblocked"):
        assert by_name[name]["max_abs_diff"] < 1e-5  # float32 against SciPy's float64
    table = capsys.readouterr().out
    assert f"malloc: {result['machine']['malloc']};" in table  # the allocator moves the ratios: it is named
    assert table.count("\n| ") == len(rows) + 1  # the header's separator and one line a row
    for row in rows:
        assert f"| {row['benchmark']} | {row['name']} |" in table


def test_missing_peer_and_failure_are_rows(bench_all, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real_find_spec(name, *a))

    def broken(scale):
        raise RuntimeError("the comparison broke\nsecond line")

    monkeypatch.setitem(bench_all.BENCHMARKS, "nma.linkage",
                        bench_all.Benchmark("bench_nma.py", broken))
    rows = bench_all.main(["--tiny", "--only", "dec.kmeans,nma.linkage"])["rows"]
    assert rows == [{"benchmark": "dec.kmeans", "name": "dec.kmeans", "skipped": "scikit-learn not installed"},
                    {"benchmark": "nma.linkage", "name": "nma.linkage",
                     "failed": "RuntimeError: the comparison broke"}]
    out = capsys.readouterr().out
    assert "| dec.kmeans | skipped: scikit-learn not installed |" in out
    assert "| nma.linkage | **failed**: RuntimeError: the comparison broke |" in out
