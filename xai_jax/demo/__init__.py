"""``xai-jax demo``: train the small CNN on scikit-learn's digits and explain it with every method there is.

Runs on a 2-core CPU in well under two minutes, needs nothing but the package's dependencies, and writes
``report.html`` (figures inlined), ``summary.json`` and the trained model (orbax) to the output folder.
Each method adds a section: a module ``xai_jax.demo.<method>`` with ``section(report, context) -> dict`` (see
:class:`DemoContext`), listed in :data:`SECTIONS`. A section should take at most ~15 s on a 2-core CPU.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time

import jax
import numpy as np
import optax

from xai_jax import __version__, evaluation, models, train
from xai_jax.data import DigitsSource
from xai_jax.demo.context import DemoContext
from xai_jax.outputs import atomic_dir
from xai_jax.viz import figures
from xai_jax.viz.report import Report
from xai_jax.weights import save_variables

MODEL = DemoContext.model

# (summary key, module under xai_jax.demo or a full module path), in report order.
SECTIONS: tuple[tuple[str, str], ...] = (("nma", "near_miss"), ("dec", "dec"), ("xnn", "xnn"), ("www", "www"),
                                          ("cladec", "xai_jax.methods.cladec.demo"))


def train_digits_model(epochs: int = 30, seed: int = 0, progress: bool | None = None):
    """Trains the demo CNN on the digits training split; returns ``(variables, history, train_seconds)``."""
    train_set, test_set = DigitsSource("train"), DigitsSource("test")
    images, labels = train_set.all()
    test_images, test_labels = test_set.all()
    forward = jax.jit(models.make_forward(MODEL))
    variables = models.init_variables(models.get(MODEL), jax.random.key(seed))
    optimizer = optax.adam(1e-3)

    def evaluate(state):
        logits = forward(test_images, train.variables_of(state))["logits"]
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == test_labels))}

    start = time.perf_counter()
    state, history = train.fit(train.classifier_loss(MODEL), optimizer, train.init_state(variables["params"], optimizer),
                               {"images": images, "labels": labels}, batch_size=64, epochs=epochs,
                               key=jax.random.key(seed + 1), evaluate=evaluate, progress=progress, desc="demo CNN")
    return train.variables_of(state), history, time.perf_counter() - start


def run_demo(out: str, epochs: int = 30, seed: int = 0, progress: bool | None = None) -> dict:
    """Runs the demo and writes its folder; returns the summary."""
    started = time.perf_counter()
    variables, history, train_seconds = train_digits_model(epochs, seed, progress)
    test_set = DigitsSource("test")
    counts = evaluation.confusion_counts(MODEL, variables, test_set, progress=progress)
    accuracy = float(np.trace(counts) / counts.sum())
    test_images, test_labels = test_set.all()
    predictions = evaluation.predict(MODEL, variables, test_set, progress=progress)
    predicted = predictions["logits"].argmax(-1)
    wrong = np.flatnonzero(predicted != test_labels)
    shown = np.concatenate([wrong[:8], np.setdiff1d(np.arange(len(test_labels)), wrong)[: 16 - min(8, len(wrong))]])

    summary = {
        "xai_jax_version": __version__,
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "dataset": {"name": "scikit-learn digits", "train": len(DigitsSource("train")), "test": len(test_set)},
        "model": {"name": MODEL, "taps": {k: list(v) for k, v in models.tap_shapes(MODEL).items()}},
        "training": {"epochs": epochs, "seconds": round(train_seconds, 2),
                     "final_train_accuracy": history.train[-1]["accuracy"]},
        "test_accuracy": accuracy,
        "methods": {},  # one entry per explanation method, as each lands in the library
    }

    report = Report("xai_jax demo: a small CNN on scikit-learn's digits")
    report.paragraph(f"xai_jax {__version__}, JAX {jax.__version__} on {jax.devices()[0].platform}, "
                     f"{platform.machine()}. Trained {epochs} epochs in {train_seconds:.1f} s; "
                     f"test accuracy {accuracy:.2%} on {len(test_set)} held-out digits.")
    report.heading("Training")
    report.figure(figures.training_curves(history.train, history.eval), "loss and accuracy per epoch")
    report.heading("Confusions on the test split")
    report.figure(figures.confusion_matrix(counts, test_set.class_names), "rows: true digit, columns: prediction")
    report.figure(figures.image_grid(test_images[shown],
                                     [f"{test_labels[i]} -> {predicted[i]}" for i in shown],
                                     colors=["red" if predicted[i] != test_labels[i] else "black" for i in shown]),
                  "test digits, true -> predicted (mistakes in red first)")
    report.heading("Model taps")
    report.table([{"tap": k, "shape": " x ".join(map(str, v))} for k, v in models.tap_shapes(MODEL).items()])
    context = DemoContext(variables=variables, train_set=DigitsSource("train"), test_set=test_set, seed=seed,
                          progress=progress)
    for key, module in SECTIONS:
        path = module if "." in module else f"xai_jax.demo.{module}"
        summary["methods"][key] = importlib.import_module(path).section(report, context)

    summary["seconds"] = round(time.perf_counter() - started, 2)
    with atomic_dir(out, "demo") as tmp:
        save_variables(os.path.join(tmp, "model"), variables, {"model": MODEL, "test_accuracy": accuracy})
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(tmp, "report.html"), "w") as f:
            f.write(report.render())
    return summary
