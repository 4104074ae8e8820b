"""ClaDec's evaluation (section 5): comprehensibility (reconstruction losses, dRec) and fidelity (dAcc)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import jax
import numpy as np

from xai_jax import engine
from xai_jax.kernels import cladec as K
from xai_jax.methods.cladec.passes import classifier_accuracy
from xai_jax.methods.cladec.training import train_classifier

if TYPE_CHECKING:
    from xai_jax.methods.cladec.result import ClaDecResult


def _per_image_errors(rows, params) -> dict:
    """For :func:`xai_jax.engine.map_arrays` over ``{"x", "cladec"[, "refae"]}``: per image and reconstruction,
    the per-pixel ``mse`` and the Euclidean ``distance`` ``||X - Xhat||`` of dRec."""
    x = rows["x"]
    return {k: {"mse": K.reconstruction_loss(x, v, "mean"), "distance": K.reconstruction_distance(x, v)}
            for k, v in rows.items() if k != "x"}


def evaluate(result: ClaDecResult, variables, train_acts: Mapping[str, np.ndarray],
             test_acts: Mapping[str, np.ndarray], train_recs: Mapping[str, np.ndarray],
             test_recs: Mapping[str, np.ndarray], *, key: jax.Array, eval_epochs: int, eval_batch_size: int = 128,
             progress: bool | None = None) -> dict:
    """The metrics of a trained result.

    Args:
      result: the trained decoder (and RefAE), with its training history.
      variables: the explained classifier.
      train_acts, test_acts: :func:`xai_jax.methods.cladec.layer_activations` of both sets (``x``, ``labels``).
      train_recs, test_recs: their reconstructions, ``{"cladec", "refae" (if trained)}``
        (:func:`xai_jax.methods.cladec.reconstruct_codes`; the training set's only read with ``eval_epochs``,
        and may be ``{}`` without). Every array may be a
        :class:`xai_jax.rowstore.DiskRows`: they are read a block (or a minibatch) at a time.
      key: the evaluation classifiers' (both get ``fold_in(key, 10)``: paired).
      eval_epochs: their epochs; 0 skips the fidelity evaluation.
      eval_batch_size: their batch size.

    Returns:
      floats: ``n_train``, ``n_test``, ``rec_loss_cladec``, ``train_loss_cladec``, ``classifier_accuracy``,
      ``classifier_accuracy_on_cladec``; with RefAE ``rec_loss_refae``, ``train_loss_refae``, ``d_rec``; with
      ``eval_epochs`` ``acc_eval_cladec`` (``acc_eval_refae``, ``d_acc``).
    """
    tr, te = train_acts, test_acts
    # per-image errors in one blocked pass: the mean of per-image means is the per-pixel mean (equal sizes)
    errors = engine.map_arrays(_per_image_errors, {"x": te["x"], **test_recs}, chunk=256)
    metrics = {"n_train": int(len(tr["x"])), "n_test": int(len(te["x"])),
               "rec_loss_cladec": float(np.mean(errors["cladec"]["mse"], dtype=np.float64)),
               "train_loss_cladec": result.history["cladec"][-1]["loss"],
               "classifier_accuracy": classifier_accuracy(result.model, variables, te["x"], te["labels"]),
               "classifier_accuracy_on_cladec": classifier_accuracy(result.model, variables, test_recs["cladec"],
                                                                    te["labels"])}
    if "refae" in test_recs:
        metrics["rec_loss_refae"] = float(np.mean(errors["refae"]["mse"], dtype=np.float64))
        metrics["train_loss_refae"] = result.history["refae"][-1]["loss"]
        # K.d_rec, a block at a time
        metrics["d_rec"] = float(np.mean(errors["cladec"]["distance"] - errors["refae"]["distance"],
                                         dtype=np.float64))
    if eval_epochs > 0:
        # Paired: both evaluation classifiers start from the same weights and see the same batches, so dAcc
        # measures the reconstructions and not the draw (at short schedules the draw alone moves accuracy
        # by more than 0.2).
        for which in (k for k in ("cladec", "refae") if k in test_recs):
            _, info = train_classifier(result.model, train_recs[which], tr["labels"], epochs=eval_epochs,
                                       batch_size=eval_batch_size, key=jax.random.fold_in(key, 10),
                                       test=(test_recs[which], te["labels"]), progress=progress,
                                       desc=f"C_eval on {which}")
            metrics[f"acc_eval_{which}"] = info["test_accuracy"]
        if "acc_eval_refae" in metrics:
            metrics["d_acc"] = metrics["acc_eval_cladec"] - metrics["acc_eval_refae"]
    return metrics
