"""The demo's ClaDec section: decode two layers of the digits CNN back to 8x8 images, next to RefAE."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from xai_jax.results import Result
    from xai_jax.demo.context import DemoContext
    from xai_jax.viz.report import Report

# The demo CNN's taps explained, input side first: a 4x4x64 map and the 128-unit dense layer.
TAPS = ("conv3", "fc")
EPOCHS = 6


def section(report: Report, context: DemoContext) -> tuple[dict, Result]:
    """ClaDec + RefAE for two taps of the demo CNN (a few epochs each), reconstructions and their losses."""
    from xai_jax.methods.cladec import ClaDec, ClaDecConfig
    from xai_jax.methods.cladec.figures import layer_rows
    start = time.perf_counter()
    results = []
    for i, tap in enumerate(TAPS):
        config = ClaDecConfig(layer=tap, epochs=EPOCHS, batch_size=128, learning_rate=3e-3, decoder_base=16,
                              eval_epochs=0, seed=context.seed + i)
        results.append(ClaDec(config).fit(context.model, context.variables, context.train_set, context.test_set,
                                          progress=context.progress))
    images, labels = context.test_set.read(np.arange(6))
    recs = [r.reconstruct(context.variables, images) for r in results]
    summary = {"seconds": round(time.perf_counter() - start, 2), "epochs": EPOCHS}
    rows = []
    for tap, r in zip(TAPS, results):
        m = r.metrics
        summary[tap] = {k: round(float(m[k]), 4) for k in ("rec_loss_cladec", "rec_loss_refae", "d_rec",
                                                           "classifier_accuracy_on_cladec")}
        rows.append({"tap": tap, "code": " x ".join(map(str, r.code_shape)), **summary[tap]})
    report.heading("ClaDec: what a layer keeps of the input")
    report.paragraph("A decoder learns to reconstruct each digit from the frozen CNN's activations at a layer "
                     "(ClaDec); a reference autoencoder of the same architecture learns from the image itself "
                     "(RefAE). Where ClaDec's reconstruction departs from RefAE's, the layer has dropped that detail. "
                     f"{summary['epochs']} epochs each (the paper: 64), Adam.")
    report.figure(layer_rows(recs[0]["x"], [r.get("refae") for r in recs], [r["cladec"] for r in recs], list(TAPS),
                             [str(int(y)) for y in labels]),
                  "original, then per tap RefAE, ClaDec and their difference (red: RefAE brighter)")
    report.table(rows)
    return summary, results[-1]
