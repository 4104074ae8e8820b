"""``experiments/cladec_tables.py --merge``: runs of one schedule with other seeds become one mean +- sd table that
names each run's commit; runs of other schedules, a seed held twice or an --out that already holds results are refused
before anything is written. A new run refuses an --out holding any file it would write, and an unknown data set or
model, before it trains anything. The README's merged tables are the rows committed under ``experiments/results/``."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import REPO

SCHEDULE = ("classifier 4 epochs on 2048 training images, decoders and RefAE 4 epochs and evaluation classifiers 2 "
            "on the first 2048 of them, 512 test images, occlusion on 256, batch 128")


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("cladec_tables", REPO / "experiments" / "cladec_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path.remove(str(REPO / "experiments"))  # the script puts its folder first, for benchutil
    return module


def run(seeds, commit, rng, schedule=SCHEDULE, listed=None):
    """A results dict as ``main`` writes it, with random numbers; ``listed`` seeds the header names (a run stopped
    early names more than it holds)."""
    out = {"schedule": f"{schedule}, seeds {','.join(map(str, listed or seeds))}", "commit": commit,
           "seeds": listed or seeds, "classifier": [], "layer": [], "alpha": [], "occlusion": []}
    for seed in seeds:
        tag = {"dataset": "fashion_mnist", "model": "resnet10", "seed": seed}
        out["classifier"].append({**tag, "test_accuracy": rng.uniform(0.7, 0.9), "seconds": rng.uniform(60, 99)})
        for layer in (-1, -2, -3):
            out["layer"].append({**tag, "layer": layer, **{k: rng.uniform(-1, 1) for k in (
                "rec_loss_cladec", "rec_loss_refae", "d_rec", "acc_eval_cladec", "acc_eval_refae", "d_acc")}})
            out["occlusion"].append({**tag, "layer": layer, **{k: rng.uniform(0, 1) for k in (
                "clean", "cladec_min", "cladec_max", "cladec_d_acc", "gradcam_min", "gradcam_max",
                "gradcam_d_acc")}})
        for alpha in (0.0, 1.0):
            out["alpha"].append({**tag, "alpha": alpha, **{k: rng.uniform(0, 9) for k in (
                "total_loss", "rec_loss_sum", "classifier_loss", "acc_eval_cladec",
                "classifier_accuracy_on_cladec")}})
    return out


def cell(md, table, first_cells, column):
    """The cell in ``column`` of the row that starts with ``first_cells`` in the table headed ``table``."""
    for line in md[md.index(table):].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:len(first_cells)] == first_cells:
            return cells[column]
    raise AssertionError(f"no row {first_cells}")


def test_merged_runs_give_mean_and_sd_over_every_seed_and_name_each_commit(tables, tmp_path, capsys):
    rng = np.random.default_rng(3)
    first, later = run([0], "aaa1111", rng), run([1, 2], "bbb2222", rng, listed=[1, 2, 3])
    paths = []
    for name, results in (("first", first), ("later", later)):
        (tmp_path / name).mkdir()
        paths.append(str(tmp_path / name / "cladec_tables.json"))
        with open(paths[-1], "w") as f:
            json.dump(results, f)
    tables.write_merged(paths, str(tmp_path / "merged"))
    md = (tmp_path / "merged" / "tables.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    assert f"Schedule: {SCHEDULE}, seeds 0,1,2; commit seed 0 at aaa1111; seeds 1,2 at bbb2222." in md
    rows = first["layer"] + later["layer"]
    for layer in (-1, -2, -3):
        d_acc = [r["d_acc"] for r in rows if r["layer"] == layer]
        assert len(d_acc) == 3
        assert cell(md, "Layer table", ["fashion_mnist", "resnet10", str(layer)], 8) == \
            f"{np.mean(d_acc):.3f} ± {np.std(d_acc, ddof=1):.3f}"
    occ = [r["gradcam_d_acc"] for r in first["occlusion"] + later["occlusion"] if r["layer"] == -2]
    assert cell(md, "Occlusion table", ["fashion_mnist", "resnet10", "-2"], 9) == \
        f"{np.mean(occ):.3f} ± {np.std(occ, ddof=1):.3f}"
    alpha1 = [r["classifier_accuracy_on_cladec"] for r in first["alpha"] + later["alpha"] if r["alpha"] == 1.0]
    assert cell(md, "Alpha table", ["fashion_mnist", "resnet10", "1"], 7) == f"{np.mean(alpha1):.3f} ± {np.std(alpha1, ddof=1):.3f}"
    saved = json.loads((tmp_path / "merged" / "cladec_tables.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and len(saved["layer"]) == 9 and len(saved["classifier"]) == 3
    assert tables.tables_markdown(saved) == md


@pytest.mark.parametrize("second, message", [
    (lambda rng: run([1], "b", rng, schedule=SCHEDULE.replace("4 epochs", "6 epochs")), "schedules differ"),
    (lambda rng: run([0, 1], "b", rng), "fashion_mnist resnet10 seed 0 is in more than one run"),
])
def test_runs_that_do_not_belong_together_are_refused(tables, second, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        tables.merged([run([0], "a", rng), second(rng)])


def test_merge_refuses_before_writing(tables, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "cladec_tables.json"
    path.write_text(json.dumps(run([0], "a", rng)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(run([1], "b", rng)))
    before = path.read_text()
    with pytest.raises(SystemExit, match="already holds cladec_tables.json; choose a new folder"):
        tables.write_merged([str(path), str(other)], str(tmp_path))
    assert path.read_text() == before
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "tables.md").write_text("someone's table")
    with pytest.raises(SystemExit, match="already holds"):
        tables.write_merged([str(path), str(other)], str(tmp_path / "earlier"))
    assert (tmp_path / "earlier" / "tables.md").read_text() == "someone's table"
    assert not (tmp_path / "earlier" / "cladec_tables.json").exists()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match="cannot read .*broken.json"):
        tables.write_merged([str(other), str(tmp_path / "broken.json")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, held, message", [
    (["--datasets", "fashion_mnist,mnist", "--models", "resnet10"], "layers_mnist_resnet10.png",
     "already holds layers_mnist_resnet10.png; choose a new folder"),
    ([], "cladec_tables.json", "already holds cladec_tables.json; choose a new folder"),
    (["--datasets", "fashion_mnist,cifar100"], None, "unknown data set or model cifar100: choose from"),
    (["--models", "vgg,resnet50"], None, "unknown data set or model resnet50: choose from"),
])
def test_a_new_run_refuses_before_training(tables, tmp_path, monkeypatch, argv, held, message):
    out = tmp_path / "out"
    if held:
        out.mkdir()
        (out / held).write_text("an earlier run's")
    monkeypatch.setattr(tables, "load_dataset", lambda *a, **k: pytest.fail("loaded data before refusing"))
    monkeypatch.setattr(sys, "argv", ["cladec_tables.py", *argv, "--out", str(out)])
    with pytest.raises(SystemExit, match=message):
        tables.main()
    if held:
        assert [p.name for p in out.iterdir()] == [held] and (out / held).read_text() == "an earlier run's"
    else:
        assert not out.exists()


@pytest.mark.parametrize("folder", sorted(p.name for p in (REPO / "experiments" / "results").glob("cladec_*")))
def test_readme_tables_are_the_committed_rows(tables, folder):
    """Every row of the mean +- sd table that the README's ``--merge`` command renders from the committed rows in
    ``experiments/results/<folder>`` is in the README, less the data set and model columns: the README's numbers
    are those of the runs it names."""
    runs = [json.loads(p.read_text()) for p in sorted((REPO / "experiments" / "results" / folder).glob("*.json"))]
    md = tables.tables_markdown(tables.merged(runs))
    readme = (REPO / "README.md").read_text()
    rows = ["| " + line.split(" | ", 2)[2] for line in md.splitlines() if line.startswith("| ") and
            line.split(" | ")[0][2:] == runs[0]["classifier"][0]["dataset"]]
    assert len(rows) >= 10
    missing = [row for row in rows if row not in readme]
    assert not missing, f"README lacks {len(missing)} of {len(rows)} rows of {folder}, first {missing[0]}"
    for r in runs:
        assert r["commit"] in readme, r["commit"]
