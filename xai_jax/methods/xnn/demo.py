"""The demo's XNN section: SRAE explainers of every digit's logit from the CNN's pooled features, and
figure 8 (x-feature heatmaps by contrastive marginal winning probability) for a few test digits."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xai_jax.results import Result
    from xai_jax.demo.context import DemoContext
    from xai_jax.viz.report import Report

# Small enough for ~10 s on a 2-core CPU; the paper's (800, 100) encoder changes little on 64 features.
HIDDEN = (128, 32)
EPOCHS = 10


def section(report: Report, context: DemoContext) -> tuple[dict, Result]:
    """SRAE explainers of the 10 digit logits (tap ``pool``): faithfulness, orthogonality, figure 8.

    (NN and the other baselines are left out to stay within the section's time budget; the comparison is
    ``experiments/xnn_cifar10.py``'s.)"""
    from xai_jax.methods.xnn import XNNConfig, explain, explanation_figure, extract_features, fit, metrics_table
    start = time.perf_counter()
    features = extract_features(context.model, context.variables, context.train_set, "pool", progress=False)
    test_features = extract_features(context.model, context.variables, context.test_set, "pool", progress=False)
    results = {}
    for variant in ("srae",):
        config = XNNConfig(tap="pool", hidden=HIDDEN, variant=variant, epochs=EPOCHS, batch_size=128, seed=context.seed)
        results[variant] = fit(config, context.model, context.variables, context.train_set,
                               test_source=context.test_set, orthogonality_images=100, progress=False,
                               features=features, test_features=test_features)
    table = metrics_table(results)
    images, labels = context.test_set.read(np.arange(len(context.test_set)))
    digit = 4
    shown = np.flatnonzero(labels == digit)[:3]
    explanation = explain(results["srae"], context.model, context.variables, images[shown], digit, method="cmwp")
    seconds = time.perf_counter() - start
    report.heading("XNN: explanation networks (SRAE)")
    report.paragraph(f"One-vs-all explainers of all ten digit logits from the CNN's 64 pooled features, trained "
                     f"at once (vmap over classes), {EPOCHS} epochs, encoder 64-{HIDDEN[0]}-{HIDDEN[1]}-5. F_cls: "
                     "share of test digits whose prediction survives replacing the logit by the explainer's "
                     "5-x-feature approximation; O1/O2: correlation of the x-features' c-MWP heatmaps at the "
                     "pixels, each normalised to sum to 1 on its image, as in the paper (0 = orthogonal).")
    report.table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in table])
    report.figure(explanation_figure(images[shown], explanation, str(digit)),
                  "figure 8 layout: test digits, the 1-heatmap of the logit, and each x-feature's c-MWP "
                  "heatmap with its contribution v_i * E_i")
    summary = {"seconds": round(seconds, 2)}
    for row in table:
        summary[row["method"]] = {k: v for k, v in row.items() if k != "method"}
    return summary, results["srae"]
