"""Every subcommand against every class of bad input: exit 2, one stderr line, no traceback, nothing written or
removed. Plus the data-loss cases of ``--out`` and the signals (Ctrl-C, SIGTERM) on a real pass.

Each row takes a command whose other inputs are good (real CIFAR-10 images and ResNet-20 weights, small
generated files) and spoils one thing. The commands must find the problem before their expensive work: the rows
that could only fail late (after a pass or a training) run with that work replaced by a tripwire.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, require_module, shared_path, snapshot
from xai_jax import cli

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Evil:
    """Unpickling this runs a shell command (a checkpoint from an untrusted source could do anything)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good and bad input files; ``{name: path}``."""
    torch = require_module("torch")
    root = tmp_path_factory.mktemp("inputs")
    p = {"root": root, "test": str(shared_path("cifar10", "cifar10_test_jpeg.npz")),
         "r20": str(next(shared_path("cifar10_resnet").glob("resnet20-*.th"))),
         "fashion": str(shared_path("fashion_mnist"))}
    rng = np.random.default_rng(0)

    def path(name):
        p[name] = str(root / name)
        return p[name]

    logits = rng.standard_normal((40, 10)).astype(np.float32)
    np.savez(path("probs.npz"), logits=logits, labels=logits.argmax(1))
    np.save(path("probs.npy"), logits)
    np.savez(path("object.npz"), logits=np.array([{"a": 1}] * 40, dtype=object), labels=np.zeros(40, int))
    np.savez(path("zero_rows.npz"), logits=np.zeros((0, 10)), labels=np.zeros(0, int))
    np.savez(path("one_dim.npz"), logits=logits[:, 0], labels=logits.argmax(1))
    np.savez(path("nan_probs.npz"), probs=np.full((40, 10), np.nan), labels=logits.argmax(1))
    np.savez(path("label_range.npz"), logits=logits, labels=np.full(40, 12))
    np.savez(path("no_labels.npz"), logits=logits)
    np.savez(path("empty_images.npz"), images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, int))
    with open(path("probs.npz"), "rb") as f:
        whole = f.read()
    open(path("truncated.npz"), "wb").write(whole[: len(whole) // 2])
    for ext in ("npz", "th", "json", "txt", "png", "npy"):
        open(path(f"empty.{ext}"), "wb").close()
        open(path(f"random.{ext}"), "wb").write(rng.integers(0, 256, 997, dtype=np.uint8).tobytes())
    open(path("latin1.txt"), "wb").write(b"caf\xe9\nna\xefve\n")
    open(path("latin1.json"), "wb").write(b'{"caf\xe9": "x"}')
    open(path("invalid.json"), "w").write('{"cat": ')
    open(path("list.json"), "w").write("[1, 2]")
    open(path("groups_bad.json"), "w").write('{"animals": "cat"}')
    open(path("groups_lion.json"), "w").write('{"animals": ["cat", "lion"]}')
    open(path("names_range.json"), "w").write('{"0,99": "zoo"}')
    open(path("words.txt"), "w").write("dog\ncat\nbird\ncar\ntree\n")
    open(path("blank.txt"), "w").write("\n  \n")
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path("image.png"))
    open(path("truncated.png"), "wb").write(open(p["image.png"], "rb").read()[:80])
    # WWW embeddings: 50 probe images, 8 neurons, 5 concepts, D = 4
    np.savez(path("acts.npz"), activations=rng.random((50, 8), np.float32))
    np.savez(path("image_emb.npz"), embeddings=rng.standard_normal((50, 4)).astype(np.float32))
    np.savez(path("text_emb.npz"), embeddings=rng.standard_normal((5, 4)).astype(np.float32))
    np.save(path("template.npy"), rng.standard_normal(4).astype(np.float32))
    np.savez(path("acts_nan.npz"), activations=np.full((50, 8), np.nan, np.float32))
    # XNN features
    np.savez(path("features.npz"), features=rng.standard_normal((60, 16)).astype(np.float32),
             logits=rng.standard_normal((60, 3)).astype(np.float32), labels=rng.integers(0, 3, 60))
    np.savez(path("features_rows.npz"), features=rng.standard_normal((60, 16)).astype(np.float32),
             logits=rng.standard_normal((59, 3)).astype(np.float32))
    # checkpoints
    from xai_jax import models, weights
    state = torch.load(p["r20"], map_location="cpu", weights_only=True)["state_dict"]
    head100 = dict(state, **{"module.linear.weight": torch.randn(100, 64), "module.linear.bias": torch.randn(100)})
    torch.save({"state_dict": head100}, path("head100.th"))
    torch.save({"w": torch.ones(3)}, path("small_zip.pt"))
    zipped = open(p["small_zip.pt"], "rb").read()
    open(path("truncated.th"), "wb").write(zipped[: len(zipped) // 2])
    p["pwned"] = str(root / "PWNED")
    with open(path("evil.th"), "wb") as f:
        pickle.dump(Evil(p["pwned"]), f)
    with open(path("plain.th"), "wb") as f:
        pickle.dump({"a": [1, 2]}, f)
    weights.save_variables(path("ck"), weights.load(models.get("cifar_resnet20"), p["r20"]), {"model": "cifar_resnet20"})
    shutil.copytree(p["ck"], path("ck_badmeta"))
    open(os.path.join(p["ck_badmeta"], "xai_jax_meta.json"), "w").write("{")
    shutil.copytree(p["ck"], path("ck_nometa"))
    os.remove(os.path.join(p["ck_nometa"], "variables", "_METADATA"))
    # results
    assert cli.main(["--quiet", "nma", "--from-probs", p["probs.npz"], "--dataset", "cifar10", "--no-names",
                     "--out", path("nma")]) == 0
    from xai_jax.methods.www import WWWResult
    WWWResult(model="cifar_resnet20", tap="pool", map_tap="layer3", num_neurons=64, class_names=CIFAR10,
              class_contributions=rng.standard_normal((10, 64)).astype(np.float32),
              class_counts=np.full(10, 5)).save(path("www"))
    for kind, main_file in (("nma", "nma.json"), ("www", "www.json")):
        shutil.copytree(p[kind], path(f"{kind}_badjson"))
        open(os.path.join(p[f"{kind}_badjson"], main_file), "w").write("{")
        shutil.copytree(p[kind], path(f"{kind}_list"))
        open(os.path.join(p[f"{kind}_list"], main_file), "w").write("[]")
        shutil.copytree(p[kind], path(f"{kind}_keys"))
        open(os.path.join(p[f"{kind}_keys"], main_file), "w").write('{"labels": []}')
    shutil.copytree(p["nma"], path("nma_npz"))
    np.savez(os.path.join(p["nma_npz"], "nma.npz"), p=np.zeros((10, 10)))
    shutil.copytree(p["www"], path("www_npz"))
    open(os.path.join(p["www_npz"], "www.npz"), "wb").write(b"\x00" * 50)
    for kind, files in (("dec", ("dec.json", "dec.npz")), ("xnn", ("xnn.json", "xnn.npz")),
                        ("cladec", ("cladec.json", "cladec.npz"))):
        os.makedirs(path(f"{kind}_bad"))
        for name in files:
            open(os.path.join(p[f"{kind}_bad"], name), "w").write("{")
        shutil.copytree(p["ck_nometa"], os.path.join(p[f"{kind}_bad"], {"dec": "layers", "xnn": "params",
                                                                         "cladec": "decoder"}[kind]))
        os.makedirs(path(f"{kind}_keys"))
        open(os.path.join(p[f"{kind}_keys"], files[0]), "w").write('{"config": {}}')
        shutil.copytree(p["ck"], os.path.join(p[f"{kind}_keys"], {"dec": "layers", "xnn": "params",
                                                                   "cladec": "decoder"}[kind]))
        if kind == "dec":
            np.savez(os.path.join(p["dec_keys"], "dec.npz"), centroids=np.zeros(3))
        if kind == "xnn":  # the current result format, with fields missing
            open(os.path.join(p["xnn_keys"], "xnn.json"), "w").write('{"xai_jax_format": 1, "config": {}}')
            np.savez(os.path.join(p["xnn_keys"], "xnn.npz"), history=np.zeros(3))
    os.makedirs(path("empty_dir"))
    os.makedirs(path("photos"))
    open(os.path.join(p["photos"], "holiday.jpg"), "wb").write(b"\xff\xd8\xff mine")
    open(path("notes.txt"), "w").write("my notes")
    return p


def commands(p):
    """Each subcommand with good inputs: ``{name: (argv, {flag: kind of input})}``."""
    data = f"jpeg-npz:{p['test']}"
    model = ["--model", "cifar_resnet20", "--weights", p["r20"]]
    out = lambda name: os.path.join(p["work"], name)  # noqa: E731
    return {
        "predict": (["predict", *model, "--data", data, "--limit", "8", "--out", out("p.npz")], {"--out": "npz-out"}),
        "convert": (["convert", *model, "--out", out("ck")], {"--out": "dir-out"}),
        "nma-probs": (["nma", "--from-probs", p["probs.npz"], "--dataset", "cifar10", "--no-names",
                       "--out", out("nma")], {"--from-probs": "npz", "--out": "dir-out"}),
        "nma-model": (["nma", *model, "--data", data, "--limit", "8", "--no-names", "--out", out("nma")],
                      {"--out": "dir-out"}),
        "nma-explain": (["nma", "explain", "--result", p["nma"], "--label", "cat"], {"--result": "result:nma"}),
        "nma-explain-image": (["nma", "explain", "--result", p["nma"], "--image", p["image.png"], *model],
                              {"--image": "image"}),
        "nma-serve": (["nma", "serve", "--result", p["nma"], "--port", "0", *model], {"--result": "result:nma"}),
        "dec-fit": (["dec", "fit", *model, "--data", data, "--limit", "64", "--taps", "layer3", "--pretrain-epochs",
                     "1", "--out", out("dec")], {"--out": "dir-out"}),
        "dec-similar": (["dec", "similar", "--result", p["dec_bad"], "--image", p["image.png"],
                         "--out", out("s.png")], {"--result": "result:dec", "--out": "png-out"}),
        "dec-concepts": (["dec", "concepts", "--result", p["dec_bad"], "--tap", "layer3", "--out", out("c.png")],
                         {"--result": "result:dec", "--out": "png-out"}),
        "www-concepts": (["www", "concepts", "--activations", p["acts.npz"], "--image-embeddings", p["image_emb.npz"],
                          "--concept-embeddings", p["text_emb.npz"], "--template-embedding", p["template.npy"],
                          "--concepts", p["words.txt"], "--n-examples", "10", "--out", out("www")],
                         {"--activations": "npz", "--image-embeddings": "npz", "--concepts": "text",
                          "--out": "dir-out"}),
        "www-contributions": (["www", "contributions", *model, "--data", data, "--limit", "8", "--tap", "pool",
                               "--out", out("www")], {"--out": "dir-out"}),
        "www-explain": (["www", "explain", "--result", p["www"], "--image", p["image.png"], "--weights", p["r20"],
                         "--out", out("e")], {"--result": "result:www", "--image": "image", "--out": "dir-out"}),
        "xnn-fit": (["xnn", "fit", "--features", p["features.npz"], "--epochs", "1", "--out", out("xnn")],
                    {"--features": "npz", "--out": "dir-out"}),
        "xnn-explain": (["xnn", "explain", "--result", p["xnn_bad"], "--image", p["image.png"], "--out", out("e")],
                        {"--result": "result:xnn", "--out": "dir-out"}),
        "cladec-fit": (["cladec", "fit", "--model", "cladec_vgg", "--classifier-epochs", "1", "--epochs", "1",
                        "--eval-epochs", "0", "--data", f"idx:{p['fashion']}", "--limit", "64", "--test-limit",
                        "64", "--out", out("cladec")], {"--out": "dir-out"}),
        "cladec-explain": (["cladec", "explain", "--result", p["cladec_bad"], "--image", p["image.png"],
                            "--out", out("x.png")], {"--result": "result:cladec", "--out": "png-out"}),
        "cladec-occlusion": (["cladec", "occlusion", "--result", p["cladec_bad"], "--data", f"idx:{p['fashion']}",
                              "--out", out("occ")], {"--result": "result:cladec", "--out": "dir-out"}),
        "demo": (["demo", "--out", out("demo")], {"--out": "dir-out"}),
        "info": (["info", "--model", "cifar_resnet20"], {}),
        "setup": (["setup", "wordnet", "--target", out("nltk_data")], {}),
    }


BAD_FILES = {
    "npz": ["empty.npz", "truncated.npz", "random.npz", "probs.npy", "object.npz", "latin1.txt", "missing.npz",
            "empty_dir"],
    "text": ["empty.txt", "blank.txt", "latin1.txt", "random.txt", "missing.txt", "empty_dir"],
    "image": ["empty.png", "random.png", "truncated.png", "latin1.txt", "missing.png", "empty_dir"],
    "result:nma": ["nma_badjson", "nma_list", "nma_keys", "nma_npz", "empty_dir", "missing", "notes.txt"],
    "result:www": ["www_badjson", "www_list", "www_keys", "www_npz", "empty_dir", "missing"],
    "result:dec": ["dec_bad", "dec_keys", "empty_dir", "missing"],
    "result:xnn": ["xnn_bad", "xnn_keys", "empty_dir", "missing"],
    "result:cladec": ["cladec_bad", "cladec_keys", "empty_dir", "missing"],
}
BAD_OUTPUTS = {  # the --out values every command with an output must refuse, and the start of the message
    "under a file": lambda p, ext: os.path.join(p["notes.txt"], "out" + ext),
    "in /proc": lambda p, ext: "/proc/xai-jax-out" + ext,
    "missing parent": lambda p, ext: os.path.join(p["root"], "no", "such", "out" + ext),
    "someone's folder": lambda p, ext: p["photos"],
    "someone's file": lambda p, ext: p["notes.txt"],
    "the inputs folder": lambda p, ext: str(p["root"]),
}
WEIGHTS = ["head100.th", "evil.th", "plain.th", "random.th", "empty.th", "truncated.th", "ck_badmeta", "ck_nometa",
           "missing.th", "empty_dir"]


def _replace(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def rows():
    """``(id, command, how to spoil its argv)``: resolved against the fixture's paths in the test."""
    out = []
    names = ["predict", "convert", "nma-probs", "nma-model", "nma-explain", "nma-explain-image", "nma-serve", "dec-fit",
             "dec-similar", "dec-concepts", "www-concepts", "www-contributions", "www-explain", "xnn-fit",
             "xnn-explain", "cladec-fit", "cladec-explain", "cladec-occlusion", "demo"]
    flags = {  # the file-typed flags of each command, as in commands()
        "nma-probs": {"--from-probs": "npz"}, "nma-explain": {"--result": "result:nma"},
        "nma-explain-image": {"--image": "image"}, "nma-serve": {"--result": "result:nma"},
        "dec-similar": {"--result": "result:dec"},
        "dec-concepts": {"--result": "result:dec"},
        "www-concepts": {"--activations": "npz", "--image-embeddings": "npz", "--concepts": "text"},
        "www-explain": {"--result": "result:www", "--image": "image"}, "xnn-fit": {"--features": "npz"},
        "xnn-explain": {"--result": "result:xnn"}, "cladec-explain": {"--result": "result:cladec"},
        "cladec-occlusion": {"--result": "result:cladec"},
    }
    outs = {"predict": ".npz", "dec-similar": ".png", "dec-concepts": ".png", "cladec-explain": ".png"}
    no_out = {"nma-explain", "nma-explain-image", "nma-serve"}
    for name in names:
        for flag, kind in flags.get(name, {}).items():
            for bad in BAD_FILES[kind]:
                out.append((f"{name} {flag} {bad}", name, ("file", flag, bad)))
        if name not in no_out:
            for label in BAD_OUTPUTS:
                out.append((f"{name} --out {label}", name, ("out", label, outs.get(name, ""))))
    for name in ("predict", "convert", "nma-model", "www-contributions", "nma-explain-image", "nma-serve",
                 "www-explain"):
        for bad in WEIGHTS:
            out.append((f"{name} --weights {bad}", name, ("file", "--weights", bad)))
    # option values out of range, checked where they are parsed
    for name, flag, value in [
        ("predict", "--batch-size", "0"), ("predict", "--limit", "-3"), ("predict", "--sample-seed", "-1"),
        ("predict", "--num-classes", "0"), ("convert", "--num-classes", "0"),
        ("nma-probs", "--k", "0"), ("nma-probs", "--t", "nan"), ("nma-probs", "--t", "1.5"),
        ("nma-probs", "--min-confidence", "-0.1"), ("nma-probs", "--block-size", "0"), ("nma-probs", "--k", "2.5"),
        ("dec-fit", "--clusters", "1"), ("dec-fit", "--hidden", "500,,20"), ("dec-fit", "--tolerance", "inf"),
        ("dec-fit", "--seed", "-2"), ("dec-fit", "--layer-weights", "1,x"), ("dec-fit", "--radius", "0"),
        ("dec-fit", "--max-dec-steps", "-1"), ("dec-similar", "--m", "0"),
        ("www-concepts", "--alpha-major", "0"), ("www-concepts", "--n-examples", "0"),
        ("www-explain", "--top-k", "-1"), ("xnn-fit", "--epochs", "0"), ("xnn-fit", "--lr", "-1"),
        ("xnn-fit", "--classes", "1,a"), ("xnn-fit", "--x-features", "0"), ("xnn-fit", "--beta", "nan"),
        ("cladec-fit", "--alpha", "1.5"), ("cladec-fit", "--neurons", "5:2"), ("cladec-fit", "--epochs", "0"),
        ("cladec-fit", "--decoder-widths", "64,-1"), ("cladec-occlusion", "--batch-size", "0"),
        ("demo", "--epochs", "0"), ("demo", "--seed", "-1"), ("predict", "--num-classes", "100"),
        ("www-contributions", "--num-classes", "7"), ("info", "--model", "no_such_model"),
        ("setup", "--target", "/proc/nltk_data"),
    ]:
        out.append((f"{name} {flag} {value}", name, ("set", flag, value)))
    # empty, mis-shaped and out-of-range contents
    for name, flag, value in [
        ("nma-probs", "--from-probs", "zero_rows.npz"), ("nma-probs", "--from-probs", "one_dim.npz"),
        ("nma-probs", "--from-probs", "nan_probs.npz"), ("nma-probs", "--from-probs", "label_range.npz"),
        ("nma-probs", "--from-probs", "no_labels.npz"), ("predict", "--data", "npz:empty_images.npz"),
        ("nma-model", "--data", "npz:empty_images.npz"), ("www-concepts", "--activations", "acts_nan.npz"),
        ("xnn-fit", "--features", "features_rows.npz"), ("www-concepts", "--concepts", "blank.txt"),
    ]:
        out.append((f"{name} {flag} {value}", name, ("file", flag, value)))
    # JSON of the wrong shape in the optional files
    for name, extra in [
        ("nma-probs", ["--names", "list.json"]), ("nma-probs", ["--names", "invalid.json"]),
        ("nma-probs", ["--names", "latin1.json"]), ("nma-probs", ["--human", "groups_bad.json"]),
        ("nma-probs", ["--human", "list.json"]), ("nma-probs", ["--class-names", "latin1.txt"]),
        ("nma-probs", ["--class-names", "blank.txt"]), ("nma-explain", ["--names", "names_range.json"]),
        ("nma-probs", ["--synset-table", "list.json"]), ("nma-probs", ["--score-groups", "groups_bad.json"]),
        ("nma-probs", ["--score-groups", "list.json"]),
    ]:
        out.append((f"{name} {' '.join(extra)}", name, ("add", *extra)))
    # configuration errors that would otherwise show only after the pass or the training
    for name, extra in [
        ("dec-fit", ["--eval-data", "jpeg-npz:missing.npz"]), ("dec-fit", ["--taps", "layer9"]),
        ("dec-fit", ["--layer-weights", "1,2"]), ("cladec-fit", ["--layer", "-9"]),
        ("cladec-fit", ["--neurons", "0:9999"]), ("cladec-fit", ["--layer", "nolayer"]),
        ("cladec-fit", ["--decoder-widths", "64,32,16,8,4"]), ("xnn-fit", ["--variants", "srae,nope"]),
        ("nma-probs", ["--k", "10"]), ("predict", ["--taps", "layer9"]),
        ("nma-model", ["--labels", "cat,lion"]), ("nma-model", ["--labels", "cat,cat"]),
        ("nma-model", ["--labels", "cat"]), ("nma-model", ["--score-groups", "groups_lion.json"]),
        ("nma-model", ["--labels", "cat,dog", "--score-groups", "groups_lion.json"]),
        ("nma-probs", ["--graph", "literal"]), ("nma-probs", ["--human-root", "top"]),
    ]:
        out.append((f"{name} {' '.join(extra)}", name, ("add", *extra)))
    return out


@pytest.fixture()
def tripwires(monkeypatch):
    """Expensive work raises: a row that reaches it was not checked early enough."""
    from xai_jax import engine, train

    def tripped(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was found")

    for module, name in ((engine, "run"), (engine, "map_batches"), (train, "fit")):
        monkeypatch.setattr(module, name, tripped)


@pytest.mark.parametrize("row", rows(), ids=lambda r: r[0])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(inputs, tmp_path, monkeypatch, capsys, tripwires, row):
    _, name, (how, *what) = row
    p = dict(inputs, work=str(tmp_path / "work"))
    os.makedirs(p["work"])
    monkeypatch.chdir(p["work"])
    monkeypatch.setenv("NLTK_DATA", str(shared_path("nltk_data")))
    from xai_jax.naming import wordnet
    monkeypatch.setattr(wordnet, "host_reachable", lambda *a, **k: False)  # offline, as the machines here are
    argv, _ = commands(p)[name]
    resolve = lambda v: (v.split(":", 1)[0] + ":" + os.path.join(p["root"], v.split(":", 1)[1]) if ":" in v  # noqa
                         else os.path.join(p["root"], v) if not v.startswith("-") and not v[0].isdigit()
                         and os.path.sep not in v and "." in v or v in ("empty_dir", "missing") else v)
    if how == "file":
        flag, bad = what
        argv = _replace(argv, flag, resolve(bad) if bad not in p or bad in ("nma", "www") else p[bad])
    elif how == "out":
        label, ext = what
        argv = _replace(argv, "--out", BAD_OUTPUTS[label](p, ext))
    elif how == "set":
        flag, value = what
        argv = _replace(argv, flag, value) if flag in argv else argv + [flag, value]
    else:
        if "--synset-table" in what:  # a table is read only where names are made
            argv.remove("--no-names")
        argv = argv + [resolve(v) if v.endswith((".json", ".txt")) or v.startswith("jpeg-npz:") else v for v in what]
    before = snapshot(p["root"]), snapshot(tmp_path)
    code = cli.main(["--quiet", *argv])
    captured = capsys.readouterr()
    assert code == 2, (argv, captured.err)
    assert captured.err.startswith("xai-jax: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and "weights_only=False" not in captured.err
    assert (snapshot(p["root"]), snapshot(tmp_path)) == before
    if os.environ.get("XAI_JAX_SHOW_ERRORS"):
        with open(os.environ["XAI_JAX_SHOW_ERRORS"], "a") as f:
            f.write(f"{row[0]:<55} {captured.err}")
    assert not os.path.exists(p["pwned"])  # the malicious pickle was not unpickled


@pytest.mark.parametrize("cause, expected", [
    ("evil.th", "refusing to load .*evil.th: it would run code when unpickled"),
    ("head100.th", "pass --num-classes 100"),
    ("photos", "exists and is not written by xai-jax"),
])
def test_the_messages_say_what_is_wrong(inputs, tmp_path, monkeypatch, capsys, cause, expected):
    import re
    monkeypatch.chdir(tmp_path)
    args = {"--model": "cifar_resnet20", "--weights": inputs["r20"], "--out": str(tmp_path / "ck")}
    args["--out" if cause == "photos" else "--weights"] = inputs[cause] if cause == "photos" else os.path.join(
        inputs["root"], cause)
    code = cli.main(["convert", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and re.search(expected, err), err


# --- the data-loss cases of --out --------------------------------------------------------------------------

def test_out_never_deletes_what_xai_jax_did_not_write(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    probs = str(tmp_path / "run1" / "p.npz")
    os.makedirs(tmp_path / "run1")
    shutil.copy(inputs["probs.npz"], probs)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"mine")
    (tmp_path / "notes.txt").write_text("notes")
    fit = ["nma", "--from-probs", probs, "--dataset", "cifar10", "--no-names", "--out"]
    before = snapshot(tmp_path)
    for target in ("photos", "run1", ".", "notes.txt", str(tmp_path)):
        assert cli.main([*fit, target]) == 2
    assert cli.main(["convert", "--model", "cifar_resnet20", "--weights", inputs["r20"], "--out", "notes.txt"]) == 2
    assert cli.main(["predict", "--model", "cifar_resnet20", "--weights", inputs["r20"], "--data",
                     f"npz:{inputs['empty_images.npz']}", "--out", "notes.npz"]) == 2
    assert snapshot(tmp_path) == before
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 7 and all(e.startswith("xai-jax: error: ") for e in errors), errors
    # An earlier result of the same kind is replaced; the first run writes a new folder.
    assert cli.main(["--quiet", *fit, "nma-out"]) == 0
    first = (tmp_path / "nma-out" / "nma.json").read_text()
    assert cli.main(["--quiet", *fit[:-1], "--k", "2", "--out", "nma-out"]) == 0
    assert json.loads((tmp_path / "nma-out" / "nma.json").read_text())["config"]["k"] == 2 != json.loads(first)[
        "config"]["k"]
    assert sorted(os.listdir(tmp_path)) == ["nma-out", "notes.txt", "photos", "run1"]


# --- signals on a real pass ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "xai-jax: interrupted"),
                                             (signal.SIGTERM, 143, "xai-jax: terminated")])
def test_a_signal_during_a_pass_is_one_line_and_leaves_nothing(inputs, tmp_path, sig, code, line):
    # The CIFAR-10 training set through ResNet-56: about 130 s of CPU here, of which JAX's import and the
    # compilation take under 10. The signal goes when the process has used 14 s of CPU, so it lands in the pass
    # on a slow or a fast processor alike, loaded or not. (With the 10,000 test images, about 36 s of CPU, a CI
    # run's process had finished the pass and was exiting when its SIGINT came: exit 0.)
    out = tmp_path / "pred.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO), XAI_JAX_NO_PROGRESS="1")
    r56 = str(next(shared_path("cifar10_resnet").glob("resnet56-*.th")))
    train = shared_path("cifar10", "cifar10_train_jpeg.npz")
    # A test run started in the background inherits SIGINT ignored, and so would the CLI, which keeps an ignored
    # signal ignored; with a handler here the child starts with SIGINT at its default and Python installs its own.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # -X faulthandler: should it not stop, SIGABRT prints where every thread is, for the failure message.
        process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "xai_jax.cli", "predict", "--model", "cifar_resnet56",
                                    "--weights", r56, "--data", f"jpeg-npz:{train}", "--batch-size", "64",
                                    "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 300
    while _cpu_seconds(process.pid) < 14 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the pass ended before the signal"
    process.send_signal(sig)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"still running 120 s after the signal; its threads then:\n{stderr}")
    assert process.returncode == code, (stdout, stderr)
    assert stderr == line + "\n", stderr
    assert os.listdir(tmp_path) == []


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
