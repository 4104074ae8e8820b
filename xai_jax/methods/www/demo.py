"""The demo's WWW section: where and why the digits CNN decides, and how far to trust it (concepts need CLIP)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from xai_jax.demo.context import DemoContext
from xai_jax.viz.report import Report

if TYPE_CHECKING:
    from xai_jax.results import Result


def section(report: Report, context: DemoContext) -> tuple[dict, Result]:
    """Class contributions of the ``pool`` neurons on the training digits, explanations of test digits with
    concept maps from ``conv3``, and heatmap similarity vs maximum softmax probability for catching mistakes."""
    from xai_jax.methods.www import WWW, rejection_analysis
    from xai_jax.methods.www.figures import explanation_panel, rejection_curves
    start = time.perf_counter()
    www = WWW(context.model, context.variables, tap="pool")
    result = www.fit_class_contributions(context.train_set, batch_size=256, progress=context.progress)
    scores = www.trust_scores(context.test_set, result, batch_size=120, progress=context.progress)
    wrong = scores["predicted"] != scores["labels"]
    analysis = rejection_analysis(scores["trust"], scores["msp"], wrong)
    # one correct and one mispredicted test digit (the lowest-trust mistake), with their top training digits
    order = np.argsort(scores["trust"])
    picks = [int(np.flatnonzero(~wrong)[0])] + ([int(order[wrong[order]][0])] if wrong.any() else [])
    images, labels = context.test_set.read(np.asarray(picks))
    explanation = www.explain(images, result)
    topn, _ = www.probe(context.train_set, batch_size=256, progress=context.progress)
    examples = {u: context.train_set.read(topn[:3, u])[0] for u in range(topn.shape[1])}
    seconds = time.perf_counter() - start
    names = list(context.test_set.class_names)

    report.heading("WWW: where, why and trust")
    report.paragraph(
        "Taylor-Shapley contributions (a * dlogit/da) of the 64 pooled neurons, averaged per class over the "
        "training digits; each test digit is explained by its own top-3 neurons and by its predicted class's, with "
        "concept maps (conv3 activation maps above their 70th percentile) and the two overall heatmaps, whose "
        "cosine similarity is the trust score. Concept names ('what') need CLIP weights, which do not ship with "
        "xai_jax: `xai-jax www concepts --clip PATH ...`, or give embeddings you already have; here neurons are "
        "shown by index with their most activating training digits.")
    for j, i in enumerate(picks):
        report.figure(explanation_panel(explanation, j, names, examples, true_label=int(labels[j])),
                      f"test digit {i}: class explanation (left), sample explanation (right)")
    report.figure(rejection_curves(analysis, f"{len(wrong)} test digits, {int(wrong.sum())} mistakes"),
                  "mistakes caught when the least trusted digits are rejected first")
    summary = {"seconds": round(seconds, 2), "tap": "pool", "map_tap": www.map_tap,
               "auroc_heatmap_similarity": round(analysis["auroc_similarity"], 4),
               "auroc_max_softmax": round(analysis["auroc_msp"], 4), "mispredictions": int(wrong.sum()),
               "mean_trust_correct": round(float(scores["trust"][~wrong].mean()), 4),
               "mean_trust_wrong": round(float(scores["trust"][wrong].mean()), 4) if wrong.any() else None,
               "concepts": "not run: concept discovery needs CLIP weights (xai-jax www concepts --clip PATH)"}
    report.table([{"score": "heatmap similarity", "AUROC for mistakes": summary["auroc_heatmap_similarity"]},
                  {"score": "max softmax probability", "AUROC for mistakes": summary["auroc_max_softmax"]}])
    return summary, result
