"""The demo's activation clustering section: DEC on three layers of the digits CNN, fidelity, similar digits,
concepts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from xai_jax.demo.context import DemoContext
from xai_jax.viz.report import Report

if TYPE_CHECKING:
    from xai_jax.results import Result

TAPS = ("pool2", "conv3", "fc")


def section(report: Report, context: DemoContext) -> tuple[dict, Result]:
    """Fits the surrogate on the training digits (3 layers, 10 clusters each) and scores it on the test digits.

    Args:
      report: the demo's report; the section adds its heading, text, table and figures.
      context: the trained digits CNN and its data.

    Returns:
      the section's summary (seconds, taps, accuracy and fidelity, per layer).
    """
    from xai_jax.methods.dec import ActivationClusteringSurrogate, DECConfig, layer_emphasis
    from xai_jax.methods.dec.figures import concept_grid, similar_samples
    # Smaller than the paper's CIFAR setting so the section stays within seconds on a 2-core CPU: 10 clusters
    # (one per digit), an autoencoder of widths 256-256-512 (DEC's 500-500-2000 on 1,437 digits would cost
    # ~1.5 TFLOP), 6 autoencoder epochs, at most 200 DEC steps.
    config = DECConfig(taps=TAPS, clusters=10, hidden=(256, 256, 512), pretrain_epochs=6, batch_size=128,
                       update_interval=50, max_dec_steps=200, seed=context.seed)
    start = time.perf_counter()
    method = ActivationClusteringSurrogate(context.model, context.variables, config, progress=context.progress)
    result = method.fit(context.train_set)
    fit_seconds = time.perf_counter() - start
    test = method.embed(result, context.test_set)
    scores = result.scores(test["embeddings"], test["labels"], test["predictions"])
    seconds = time.perf_counter() - start

    report.heading("Activation clustering surrogate (DEC)")
    report.paragraph(
        f"One DEC per layer ({', '.join(TAPS)}; autoencoder d-256-256-512-20, embeddings on the radius-8 sphere, "
        f"10 clusters, "
        f"alpha = 100) fitted on {len(context.train_set)} training digits in {fit_seconds:.1f} s. On the "
        f"{scores['samples']} test digits the surrogate p(y|x) = sum_j w_j sum_k p(y|z_k) q_k(x) reaches accuracy "
        f"{scores['surrogate_accuracy']:.3f} (model {scores['baseline_accuracy']:.3f}) and fidelity "
        f"{scores['fidelity']:.3f} (agreement with the model's predictions).")
    report.table([{"layer": t, **v} for t, v in scores["layers"].items()])
    query = 0
    test_images, _ = context.test_set.read(np.array([query]))
    rows = []
    for name, weights in (("equal", None), ("low layers", layer_emphasis(len(TAPS), "low")),
                          ("high layers", layer_emphasis(len(TAPS), "high"))):
        bank_rows, _ = result.similar(test["embeddings"][:, query:query + 1], 10, weights)
        images, labels = context.train_set.read(result.train_indices[bank_rows[0]])
        rows.append((name, images, [str(int(y)) for y in labels]))
    bank_rows, _ = result.similar_by_features(test["features"][query:query + 1], 10)
    images, labels = context.train_set.read(result.train_indices[bank_rows[0]])
    rows.append((f"{result.feature_tap} features", images, [str(int(y)) for y in labels]))
    report.figure(similar_samples(test_images[0], f"test digit {int(test['labels'][query])}", rows),
                  "a test digit (red border) and its ten most similar training digits under equal, low-layer "
                  "and high-layer weights (paper figure 3), and by Euclidean distance of the penultimate "
                  f"{result.feature_tap} features (the baseline of figure 2)")
    concept_rows, _ = result.concepts("fc", 8)
    images, _ = context.train_set.read(result.train_indices[concept_rows.ravel()])
    sizes = result.cluster_sizes()[TAPS.index("fc")]
    top = result.posteriors[TAPS.index("fc")].argmax(-1)
    report.figure(concept_grid(images.reshape(concept_rows.shape + images.shape[1:]),
                               [f"{k}: n={sizes[k]}, {top[k]}" for k in range(len(sizes))]),
                  "concepts of layer fc: the training digits nearest each centroid (paper figures 4, 5)")
    return {"seconds": round(seconds, 2), "taps": list(TAPS), "surrogate_accuracy": scores["surrogate_accuracy"],
            "fidelity": scores["fidelity"], "baseline_accuracy": scores["baseline_accuracy"],
            "layers": scores["layers"]}, result
