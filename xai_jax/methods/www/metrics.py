"""WWW's evaluations: the rejection test of heatmap similarity (figure 4) and the concept metrics (4.1.2)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.kernels import www as K


def rejection_analysis(trust: np.ndarray, msp: np.ndarray, wrong: np.ndarray) -> dict:
    """Rejection curves and AUROCs of heatmap similarity and of the maximum softmax probability (figure 4).

    Returns ``{"auroc_similarity", "auroc_msp", "rejected" [N+1] share, "caught_similarity", "caught_msp"
    [N+1] mispredictions caught, "mispredictions"}``; AUROC treats a misprediction as the positive class and low
    confidence as the score.
    """
    trust, msp, wrong = np.asarray(trust, np.float32), np.asarray(msp, np.float32), np.asarray(wrong, bool)
    if not (trust.shape == msp.shape == wrong.shape) or trust.ndim != 1:
        raise XaiJaxError(f"trust, msp and wrong must be [N] alike; got {trust.shape}, {msp.shape}, {wrong.shape}")
    return {"auroc_similarity": float(K.auroc(-trust, wrong)), "auroc_msp": float(K.auroc(-msp, wrong)),
            "rejected": np.arange(len(wrong) + 1) / max(len(wrong), 1),
            "caught_similarity": np.asarray(K.rejection_curve(trust, wrong)),
            "caught_msp": np.asarray(K.rejection_curve(msp, wrong)), "mispredictions": int(wrong.sum())}


def concept_metrics(selected: Sequence[Sequence[str]], label_synonyms: Sequence[Sequence[str]], *,
                    text_encoder=None, sentence_encoder=None) -> dict:
    """Section 4.1.2 for final-layer neurons: selected concepts vs each neuron's class label.

    Args:
      selected: per neuron, its selected concept words.
      label_synonyms: per neuron, the words naming its class (the first is the label itself).
      text_encoder: ``list[str] -> [M, D]`` (e.g. ``clip_model.encode_texts``) for the CLIP-text cosine, or None.
      sentence_encoder: ``list[str] -> [M, D]`` (e.g. ``sentence.load_minilm().encode``) for the sentence cosine.

    Returns:
      Means over neurons of ``hit`` (hit rate), ``precision``, ``recall``, ``f1``, and ``clip_cos`` /
      ``sentence_cos`` (mean over predicted x true-label pairs; neurons with nothing selected are skipped).
    """
    if len(selected) != len(label_synonyms):
        raise XaiJaxError(f"{len(selected)} neurons with concepts but {len(label_synonyms)} label lists")
    vocab = sorted({w.lower() for words in selected for w in words} | {w.lower() for ws in label_synonyms for w in ws})
    column = {w: j for j, w in enumerate(vocab)}
    sel = np.zeros((len(selected), len(vocab)), bool)
    cor = np.zeros_like(sel)
    for u, (words, truth) in enumerate(zip(selected, label_synonyms)):
        sel[u, [column[w.lower()] for w in words]] = True
        cor[u, [column[w.lower()] for w in truth]] = True
    out = {k: float(np.mean(v)) for k, v in K.selection_metrics(sel, cor).items()}
    labels = [ws[0] for ws in label_synonyms]
    for key, encoder in (("clip_cos", text_encoder), ("sentence_cos", sentence_encoder)):
        if encoder is not None:
            emb_vocab = np.asarray(encoder(vocab), np.float32)
            emb_labels = np.asarray(encoder(labels), np.float32)
            per = np.asarray(K.mean_pair_cosine(sel, emb_vocab, emb_labels))
            out[key] = float(np.nanmean(per))
    return out


def result_metrics(result, label_synonyms: Sequence[Sequence[str]] | None = None, *, text_encoder=None,
                   sentence_encoder=None) -> dict:
    """:func:`concept_metrics` of a result's final-layer neurons (``tap="logits"``): each neuron's selected major
    concepts against its class's names.

    Args:
      result: a :class:`WWWResult` with concepts, one neuron per class.
      label_synonyms: per class, its names (the first the label itself); default the result's class names.
      text_encoder, sentence_encoder: as :func:`concept_metrics` (e.g. :func:`lookup_encoder` of given
        embeddings).

    Returns:
      :func:`concept_metrics`'s means, plus ``neurons``.
    """
    if label_synonyms is None:
        if not result.class_names:
            raise XaiJaxError("the result has no class names: give the label names (one line per class)")
        label_synonyms = [[name] for name in result.class_names]
    if len(label_synonyms) != result.num_neurons:
        raise XaiJaxError(f"{len(label_synonyms)} label names for {result.num_neurons} neurons; the metrics compare "
                          "final-layer neurons (tap='logits') with their classes")
    selected = [[c["concept"] for c in entry["major"]] for entry in result.concepts()]
    return {**concept_metrics(selected, label_synonyms, text_encoder=text_encoder,
                              sentence_encoder=sentence_encoder), "neurons": result.num_neurons}


def lookup_encoder(words: Sequence[str], embeddings, what: str = "embeddings"):
    """A text encoder ``list[str] -> [M, D]`` that looks words up in embeddings computed elsewhere (case-blind).

    Args:
      words: ``M`` words (or phrases).
      embeddings: ``[M, D]`` their embeddings, row for row.
      what: how an error names the table.

    Returns:
      ``encode(texts) -> [len(texts), D]``; raises :class:`XaiJaxError` naming a text missing from the table.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(words):
        raise XaiJaxError(f"{what}: {len(words)} words but embeddings of shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise XaiJaxError(f"{what} contain NaN or infinity")
    row = {str(w).strip().lower(): i for i, w in enumerate(words)}

    def encode(texts):
        missing = [t for t in texts if t.lower() not in row]
        if missing:
            raise XaiJaxError(f"{what} have no embedding for {missing[0]!r} ({len(missing)} words missing)")
        return embeddings[[row[t.lower()] for t in texts]]

    return encode
