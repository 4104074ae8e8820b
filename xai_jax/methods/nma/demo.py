"""The near-miss section of ``xai-jax demo``: which digits the CNN nearly confuses, named with WordNet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from xai_jax.errors import XaiJaxError

if TYPE_CHECKING:
    from xai_jax.results import Result
    from xai_jax.demo.context import DemoContext
    from xai_jax.viz.report import Report


def section(report: Report, context: DemoContext) -> tuple[dict, Result]:
    """Near-miss analysis of the demo CNN on the test digits: dendrogram, names, an explanation, phi(M)."""
    from xai_jax.methods.nma.figures import dendrogram
    from xai_jax.methods.nma.passes import NearMissAnalysis
    from xai_jax.naming.wordnet import load_wordnet
    try:
        load_wordnet()
        named = True
    except XaiJaxError as err:
        named, reason = False, str(err)
    start = time.perf_counter()
    result = NearMissAnalysis().fit(context.model, context.variables, context.test_set, dataset="mnist", names=named,
                                    progress=context.progress)
    seconds = time.perf_counter() - start
    summary = {"seconds": round(seconds, 2), "counted_images": int(result.counts.sum()),
               "first_merges": [f"{a} + {b}" for a, b, _ in result.merge_order(3)]}
    report.heading("Near-miss analysis")
    nodes = result.members()[result.num_classes:]
    report.figure(dendrogram(result.linkage, result.class_names, [result.name_of(m) for m in nodes],
                             title="which digits the CNN nearly confuses"),
                  "average linkage of the shortest-path metric of near misses (K = 3, t = 1e-6)")
    report.table([{"merge": i + 1, "left": a, "right": b, "height": h}
                  for i, (a, b, h) in enumerate(result.merge_order(5))])
    if named:
        phi, phi_m = result.score()
        summary["phi_M"] = None if np.isnan(phi_m) else float(phi_m)
        summary["explanation_of_8"] = result.explain("8").text()
        report.paragraph(f"Explanation of a prediction of 8: {summary['explanation_of_8']}")
        if np.isnan(phi_m):
            report.paragraph("The explanatory score phi(M) is not defined here: WordNet puts all ten digits "
                             "directly under 'digit', so no label has a concept between it and the root to match. "
                             "Score digits against a grouping of your own (xai-jax nma fit --human FILE.json).")
        else:
            report.paragraph(f"Explanatory score against the WordNet hierarchy of the digits: phi(M) = {phi_m:.3f}.")
    else:
        summary["note"] = "no WordNet: clusters unnamed (xai-jax setup wordnet)"
        report.paragraph(f"Concept names need WordNet ({reason})")
    return summary, result
