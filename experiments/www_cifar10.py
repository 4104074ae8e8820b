"""WWW on ResNet-56 / CIFAR-10: where, why and trust (and what, given CLIP weights).

The explained layer is ``pool``, the penultimate 64 features, as in the paper (which explains ResNet-50's
penultimate layer). Its head is linear, so the Taylor-Shapley contribution ``a_u * W[u, c]`` is exact there
(removing neuron u changes the logit by exactly that), and the neuron activation maps are the channels of
``layer3`` (8 x 8), the map that is averaged into ``pool``. (Explaining ``layer3`` itself would give the same
contributions: the mean pool and the linear head are linear, so ``sum_ij a_uij dF/da_uij = W[u, c] mean_ij a_uij``.)

1. Class-wise contributions: one streamed pass over the training split (50,000 JPEGs, or ``--train-limit``).
2. Explanations of test images: figure-5 panels for correct and mispredicted images.
3. The trust claim of section 4.3.2: does heatmap similarity catch mispredictions better than the maximum
   softmax probability? Both AUROCs and rejection curves over the 10,000 test images, whatever the answer,
   for the default (signed, k = 3) and a few variants.
4. What: only with ``--clip PATH`` (CLIP weights, which cannot be downloaded here) — probe = the test split,
   concepts = ``--concepts FILE`` (one a line; default the ten CIFAR-10 class names); reports the major and minor
   concepts of every pool neuron, and the concepts of the 10 final-layer neurons (``tap="logits"``) scored against
   the class names (hit rate, precision/recall/F1, CLIP-text cosine, sentence-encoder cosine when the MiniLM wheel
   is installed) for Table 5's three rows: bare words / template, plain cosine / ACS.

    python experiments/www_cifar10.py --variants --out experiments/out/www   # all 50,000 / 10,000 images
    python experiments/www_cifar10.py --variants --train-limit 20000         # what BENCHMARKS.md reports
    python experiments/www_cifar10.py --quick                               # 5,000 train / 2,000 test images
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from benchutil import DATA
from xai_jax import models, weights
from xai_jax.data import JpegNpzSource, Subset
from xai_jax.methods.www import WWW, WWWConfig, rejection_analysis
from xai_jax.methods.www.figures import explanation_panel, rejection_curves

MODEL = "cifar_resnet56"


def _subset(source, limit, seed):
    if limit is None or limit >= len(source):
        return source
    return Subset(source, np.sort(np.random.default_rng(seed).choice(len(source), limit, replace=False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out/www")
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--test-limit", type=int)
    parser.add_argument("--quick", action="store_true", help="5,000 training and 2,000 test images")
    parser.add_argument("--clip", metavar="PATH", help="CLIP weights (OpenAI .pt or Hugging Face dir) for concepts; "
                        "tiny-random: a random tiny CLIP, to smoke-test the step")
    parser.add_argument("--concepts", metavar="FILE", help="concept words, one a line")
    parser.add_argument("--variants", action="store_true", help="also k = 1, 5, 10")
    parser.add_argument("--abs", action="store_true", help="also |a * grad| contributions (one more training pass)")
    args = parser.parse_args()
    if args.quick:
        args.train_limit, args.test_limit = args.train_limit or 5000, args.test_limit or 2000
    os.makedirs(args.out, exist_ok=True)
    spec = models.get(MODEL)
    variables = weights.load(spec, DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    train = _subset(JpegNpzSource(DATA / "cifar10" / "cifar10_train_jpeg.npz"), args.train_limit, 0)
    test = _subset(JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz"), args.test_limit, 1)
    names = list(test.class_names)
    summary = {"model": MODEL, "tap": "pool", "map_tap": "layer3", "train_images": len(train),
               "test_images": len(test), "variants": []}

    rows = []
    configs = [WWWConfig()]
    if args.variants:
        configs += [dataclasses.replace(WWWConfig(), top_k=k) for k in (1, 5, 10)]
    if args.abs:
        configs += [dataclasses.replace(WWWConfig(), contribution="abs")]
    fitted = {}
    for config in configs:
        www = WWW(MODEL, variables, tap="pool", config=config)
        key = (config.contribution, config.class_by)
        if key not in fitted:  # top_k changes only the explanations: one training pass per contribution mode
            start = time.perf_counter()
            fitted[key] = (www.fit_class_contributions(train, progress=False), time.perf_counter() - start)
        result, fit_seconds = fitted[key]
        start = time.perf_counter()
        scores = www.trust_scores(test, result, progress=False)
        trust_seconds = time.perf_counter() - start
        wrong = scores["predicted"] != scores["labels"]
        analysis = rejection_analysis(scores["trust"], scores["msp"], wrong)
        caught = {f"caught@{int(r * 100)}%": (int(analysis["caught_similarity"][int(r * len(wrong))]),
                                              int(analysis["caught_msp"][int(r * len(wrong))]))
                  for r in (0.05, 0.1, 0.2)}
        row = {"contribution": config.contribution, "k": config.top_k, "accuracy": float(1 - wrong.mean()),
               "mispredictions": int(wrong.sum()), "auroc_similarity": analysis["auroc_similarity"],
               "auroc_msp": analysis["auroc_msp"], **caught,
               "fit_seconds": round(fit_seconds, 1), "trust_seconds": round(trust_seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if config == WWWConfig():
            main_www, main_result, main_scores = www, result, scores
            with open(os.path.join(args.out, "www_rejection.png"), "wb") as f:
                f.write(rejection_curves(analysis, f"ResNet-56, CIFAR-10 test ({len(test)} JPEGs), pool, k = 3"))
            np.savez(os.path.join(args.out, "www_trust.npz"), **scores)
            main_result.save(os.path.join(args.out, "result"))
    summary["variants"] = rows

    # Explanations: two correct and two mispredicted test images, with the training images that activate each
    # neuron most (a probe pass over a slice of the training split) as examples.
    www, result, scores = main_www, main_result, main_scores
    wrong = np.flatnonzero(scores["predicted"] != scores["labels"])
    right = np.flatnonzero(scores["predicted"] == scores["labels"])
    picks = np.concatenate([right[:2], wrong[:2]])
    images, labels = test.read(picks)
    explanation = www.explain(images, result)
    probe = _subset(train, 5000, 2)
    topn, _ = www.probe(probe, progress=False)
    examples = {u: probe.read(topn[:3, u])[0] for u in range(topn.shape[1])}
    for j, i in enumerate(picks):
        tag = "correct" if j < 2 else "wrong"
        with open(os.path.join(args.out, f"www_panel_{tag}_{j}.png"), "wb") as f:
            f.write(explanation_panel(explanation, j, names, examples, true_label=int(labels[j])))
    summary["explanations"] = explanation.summary(names)
    for j, record in enumerate(summary["explanations"]):
        record["true"] = names[int(labels[j])]

    if args.clip:
        # What: the pool neurons' major and minor concepts with the test split as probe set, and the final-layer
        # neurons' concepts (their top-n test images by logit) scored against the class names (section 4.1.2).
        from xai_jax.methods.www import result_metrics
        from xai_jax.models import clip
        # "tiny-random" runs the step with a random tiny CLIP: a smoke test of the plumbing, meaningless concepts
        model = clip.tiny(jax.random.key(0)) if args.clip == "tiny-random" else clip.load(args.clip)
        concepts = [c.strip() for c in open(args.concepts) if c.strip()] if args.concepts else names
        concept_result = WWW(MODEL, variables, tap="pool").fit_concepts(test, model, concepts, progress=False)
        summary["pool_concepts"] = concept_result.concepts()
        try:  # the sentence encoder (all-MiniLM-L6-v2 from its PyPI wheel), when installed
            from xai_jax.models import sentence
            sentence_encoder = sentence.load_minilm().encode
        except Exception as err:  # noqa: BLE001 - the metric is optional; say why it is missing
            print(f"no sentence-encoder cosine: {err}")
            sentence_encoder = None
        # the final-layer neurons (tap="logits": their top-n test images by logit, CAM maps from layer3) scored
        # against the class names, for Table 5's three rows (template, ACS)
        summary["final_layer_metrics"], summary["final_layer_concepts"] = {}, {}
        for use_template, acs in ((False, False), (True, False), (True, True)):
            config = WWWConfig(use_template=use_template, acs=acs)
            final = WWW(MODEL, variables, tap="logits", config=config).fit_concepts(test, model, concepts,
                                                                                    minor=False, progress=False)
            key = f"template={use_template},acs={acs}"
            summary["final_layer_concepts"][key] = dict(zip(names, [[c["concept"] for c in e["major"]]
                                                                    for e in final.concepts()]))
            summary["final_layer_metrics"][key] = result_metrics(final, [[n] for n in names],
                                                                 text_encoder=model.encode_texts,
                                                                 sentence_encoder=sentence_encoder)
        print("final-layer concepts:", summary["final_layer_concepts"])
        print("final-layer metrics:", summary["final_layer_metrics"])
    else:
        summary["concepts"] = ("skipped: no CLIP weights ship with xai_jax and none can be downloaded here; "
                               "pass --clip PATH")
        print("concept step skipped: no CLIP weights (pass --clip PATH to an OpenAI .pt or Hugging Face CLIP)")

    with open(os.path.join(args.out, "www_cifar10.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print()
    print(f"ResNet-56, CIFAR-10 JPEGs: class contributions from {len(train)} training images, "
          f"trust on {len(test)} test images (tap pool, maps layer3)\n")
    print("| contributions | k | accuracy | mispredictions | AUROC heatmap similarity | AUROC MSP | caught at 10% "
          "rejected (sim / MSP) | fit s | trust pass s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['contribution']} | {r['k']} | {r['accuracy']:.4f} | {r['mispredictions']} | "
              f"{r['auroc_similarity']:.3f} | {r['auroc_msp']:.3f} | {r['caught@10%'][0]} / {r['caught@10%'][1]} | "
              f"{r['fit_seconds']} | {r['trust_seconds']} |")
    print(f"\nwrote {args.out}: www_rejection.png, www_panel_*.png, www_cifar10.json, result/")


if __name__ == "__main__":
    main()
