"""``xai-jax dec``: fit the activation clustering surrogate, find similar training images, show a layer's concepts.

    xai-jax dec fit --model cifar_resnet56 --weights resnet56.th --data jpeg-npz:train.npz \\
        --eval-data jpeg-npz:test.npz --taps stem,layer1,layer2,layer3 --out dec-out
    xai-jax dec similar --result dec-out --image query.png --weights resnet56.th --out similar.png
    xai-jax dec explain ...     # the same as similar
    xai-jax dec concepts --result dec-out --tap layer3 --out concepts.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import numpy as np

from xai_jax.cli.common import (add_scratch_arg, rows_dir, add_data_args, add_model_args, add_pass_args, add_sample_seed, compute_dtype, data_meta,
                               inputs_of, load_model_and_data)
from xai_jax.cli.flags import add_config_flags, config_from_args, to_argv
from xai_jax.cli.options import number_list, positive_int
from xai_jax.config import to_json
from xai_jax.errors import XaiJaxError
from xai_jax.methods.dec.config import KIND, DECConfig, layer_emphasis


def fit_config(args: argparse.Namespace) -> DECConfig:
    """The :class:`DECConfig` of parsed ``dec fit`` flags."""
    return config_from_args(DECConfig, args, args.config_fields)


def register(subparsers) -> None:
    from xai_jax.methods import METHODS
    p = subparsers.add_parser("dec", help=METHODS["dec"].summary)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    f = actions.add_parser("fit", help="cluster the taps of a training set, fit the surrogate, report fidelity")
    add_model_args(f)
    add_data_args(f)
    f.add_argument("--eval-data", metavar="SPEC", help="held-out data to report accuracy and fidelity on")
    f.add_argument("--eval-split", help="split of --eval-data")
    f.add_argument("--eval-limit", type=positive_int, help="use only the first N held-out images (random with --sample-seed)")
    # every DECConfig field; --batch-size (add_data_args) stays the passes' batch, the config's is --train-batch-size
    f.set_defaults(config_fields=add_config_flags(f, DECConfig, required=("taps",)))
    f.add_argument("--out", required=True, metavar="DIR")
    add_scratch_arg(f)
    f.set_defaults(func=fit)

    # explain: the paper explains a prediction by these similar samples (section 4), as the other methods'
    # `explain --result R --image I` explain one image
    s = actions.add_parser("similar", aliases=["explain"],
                           help="the most similar training images of an image (paper figure 3), and Figure 2's "
                                "baseline by Euclidean distance of the penultimate features")
    _add_result_args(s)
    s.add_argument("--image", required=True, metavar="FILE", help="query image file")
    s.add_argument("--m", type=positive_int, default=10, help="similar images per weighting (default 10)")
    # not DECConfig.layer_weights (fixed at fit): the weighting of this query's similarity (section 4)
    s.add_argument("--layer-weights", type=number_list(0.0),
                   help="comma-separated weight per tap (default: equal, low- and high-layer rows)")
    s.add_argument("--out", metavar="FILE.png", help="write the figure here")
    s.set_defaults(func=similar)

    c = actions.add_parser("concepts", help="the training images nearest each cluster's centroid (figures 4, 5)")
    _add_result_args(c)
    c.add_argument("--tap", required=True, help="which clustered layer")
    c.add_argument("--per-cluster", type=positive_int, default=8)
    c.add_argument("--out", required=True, metavar="FILE.png")
    c.set_defaults(func=concepts)


def _add_result_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--result", required=True, metavar="DIR", help="output folder of `xai-jax dec fit`")
    p.add_argument("--weights", metavar="PATH", help="model weights (default: those the surrogate was fitted with)")
    p.add_argument("--data", metavar="SPEC", help="the training data (default: what the surrogate was fitted on)")
    p.add_argument("--split", help="split of --data")
    p.add_argument("--limit", type=positive_int, help="with --data: use only the first N images (a random N with "
                                             "--sample-seed); default: what the surrogate was fitted on")
    add_sample_seed(p)
    add_pass_args(p)
    p.add_argument("--batch-size", type=positive_int, default=128)


def fit(args) -> None:
    from xai_jax import data, outputs
    from xai_jax.evaluation import check_taps
    from xai_jax.methods.dec import ActivationClusteringSurrogate, feature_tap
    from xai_jax.models import tap_shapes
    config = fit_config(args)
    config.validate()
    taps = config.taps
    check_taps(args.model, taps, args.num_classes)
    outputs.check_output(args.out, KIND, inputs=inputs_of(args, "weights", "data", "eval_data", "synsets"))
    held_out = None
    if args.eval_data:  # opened (and so checked) before the training, which takes minutes
        held_out = data.open_source(args.eval_data, split=args.eval_split, limit=args.eval_limit,
                                    sample_seed=args.sample_seed)
    spec, variables, source = load_model_and_data(args)
    progress = False if args.quiet else None
    method = ActivationClusteringSurrogate(spec.name, variables, config, num_classes=args.num_classes,
                                           batch_size=args.batch_size,
                                           compute_dtype=compute_dtype(args), progress=progress)
    meta = {"weights": os.path.abspath(args.weights), **data_meta(args),
            "config_flags": to_argv(config, args.config_fields)}
    shapes = tap_shapes(spec.name, args.num_classes)
    stored = taps + tuple({feature_tap(spec.name, args.num_classes)} - set(taps))  # the baseline's features too
    # The result keeps the penultimate features where the pass put them: it is saved before the folder goes.
    with rows_dir(args, len(source) * sum(math.prod(shapes[t]) for t in stored) * 2) as directory:  # float16
        result = method.fit(source, meta=meta, directory=directory)
        _finish_fit(args, method, result, held_out, spec, source, config)


def _finish_fit(args, method, result, held_out, spec, source, config) -> None:
    """The held-out scores, summary, figures and report of a fitted surrogate, saved with it in one folder."""
    from xai_jax.methods.dec.figures import concept_grid, convergence
    from xai_jax.viz.report import Report
    taps = config.taps
    if held_out is not None:
        result = dataclasses.replace(result, metrics={**result.metrics, "eval": method.evaluate(result, held_out)})
    shown = result.metrics.get("eval", result.metrics["train"])
    summary = {"evaluated_on": "eval" if args.eval_data else "train",
               "baseline_accuracy": shown["baseline_accuracy"], "surrogate_accuracy": shown["surrogate_accuracy"],
               "fidelity": shown["fidelity"], "layers": shown["layers"], "train": result.metrics["train"],
               "samples": shown["samples"], "config": to_json(result.config),
               "seconds_per_layer": {t: h["seconds"] for t, h in result.history.items()}}
    report = Report(f"Activation clustering surrogate of {spec.name}")
    report.paragraph(f"{len(source)} training images, taps {', '.join(taps)}, {config.clusters} clusters each, "
                     f"embedding {config.embedding_size}. Evaluated on {summary['evaluated_on']} "
                     f"({shown['samples']} images): baseline accuracy {shown['baseline_accuracy']:.4f}, surrogate "
                     f"accuracy {shown['surrogate_accuracy']:.4f}, fidelity {shown['fidelity']:.4f}.")
    report.table([{"layer": t, **v} for t, v in shown["layers"].items()])
    figures = {"convergence.png": convergence(result.history, config.update_interval, config.tolerance)}
    report.figure(figures["convergence.png"], "assignments changed at each refresh of the target (DEC stops below "
                  "the dashed tolerance)")
    for tap in taps:
        rows, _ = result.concepts(tap, 8)
        images, _ = source.read(result.train_indices[rows.ravel()])
        png = concept_grid(images.reshape(rows.shape + images.shape[1:]), _cluster_titles(result, tap),
                           title=f"concepts of {tap}")
        figures[f"concepts_{tap}.png"] = png
        report.figure(png, f"training images nearest each centroid of {tap}")
    report_html = report.render().encode()
    # One atomic folder: the result, then the summary, figures and report beside it.
    result.save(args.out, extra_files={"summary.json": json.dumps(summary, indent=2).encode(),
                                       "report.html": report_html, **figures})
    print(f"wrote {args.out}: surrogate accuracy {shown['surrogate_accuracy']:.4f}, fidelity {shown['fidelity']:.4f}, "
          f"baseline accuracy {shown['baseline_accuracy']:.4f} ({summary['evaluated_on']}, {shown['samples']} images)")


def _cluster_titles(result, tap) -> list[str]:
    j = result.layer_index(tap)
    sizes = result.cluster_sizes()[j]
    top = result.posteriors[j].argmax(-1)
    return [f"{k}: n={sizes[k]}\n{result.posteriors[j][k, top[k]]:.0%} {result.class_names[top[k]]}"
            for k in range(len(sizes))]


def _open_result(args, kind: str | None = None):
    from xai_jax import data, models, outputs, weights
    from xai_jax.methods.dec import ActivationClusteringSurrogate, DECResult
    if kind and args.out:
        outputs.check_output(args.out, kind, file=True, inputs=inputs_of(args, "result", "weights", "data", "image"))
    result = DECResult.load(args.result)
    spec = models.get(result.model)
    weights_path = args.weights or result.meta.get("weights")
    if not weights_path:
        raise XaiJaxError("the model's weights are needed: --weights PATH")
    data_spec = args.data or result.meta.get("data")
    if not data_spec:
        raise XaiJaxError("the training data are needed: --data SPEC")
    fitted = data_meta(args) if args.data else result.meta
    train = data.open_source(data_spec, split=fitted.get("split"), limit=fitted.get("limit"),
                             sample_seed=fitted.get("sample_seed"))
    if len(train) <= int(result.train_indices.max()):
        raise XaiJaxError(f"{data_spec} has {len(train)} images; the surrogate was fitted on at least "
                          f"{int(result.train_indices.max()) + 1}")
    num_classes = len(result.class_names) if len(result.class_names) != spec.num_classes else None
    method = ActivationClusteringSurrogate(result.model, weights.load(spec, weights_path, num_classes=num_classes),
                                           result.config, num_classes=num_classes, batch_size=args.batch_size,
                                           progress=False if args.quiet else None)
    return result, method, train, spec


def _check_png(path: str | None) -> None:
    if path is not None and not path.endswith(".png"):
        raise XaiJaxError(f"--out must name a .png file, got {path}")


def similar(args) -> None:
    from xai_jax import outputs
    from xai_jax.data import ArraySource
    from xai_jax.data.sources import read_image
    from xai_jax.methods.dec.figures import similar_samples
    _check_png(args.out)
    result, method, train, spec = _open_result(args, "dec.similar")
    image = read_image(args.image, spec)
    if args.layer_weights is not None and len(args.layer_weights) != len(result.taps):
        raise XaiJaxError(f"--layer-weights gives {len(args.layer_weights)} weights for {len(result.taps)} taps")
    query = method.embed(result, ArraySource(image[None], np.zeros(1, np.int32), result.class_names))
    prediction = int(query["predictions"][0])
    probabilities = result.predict_proba(query["embeddings"])[0]
    weightings = ([("given", args.layer_weights)] if args.layer_weights else
                  [("equal", None), ("low layers", layer_emphasis(len(result.taps), "low")),
                   ("high layers", layer_emphasis(len(result.taps), "high"))])
    rows = []
    print(f"model predicts {result.class_names[prediction]}; surrogate predicts "
          f"{result.class_names[int(probabilities.argmax())]} (p = {probabilities.max():.3f})")
    for name, weights in weightings:
        bank_rows, distances = result.similar(query["embeddings"], args.m, weights)
        indices = result.train_indices[bank_rows[0]]
        images, labels = train.read(indices)
        captions = [result.class_names[int(y)] for y in labels]
        rows.append((name, images, captions))
        print(f"{name}: " + ", ".join(f"#{i} {c} ({d:.2f})" for i, c, d in zip(indices, captions, distances[0])))
    if result.train_features is None:
        print("baseline: none (this surrogate holds no penultimate features; fit it again for Figure 2's baseline)")
    else:
        # Figure 2's baseline: Euclidean distance of the penultimate features, beside the surrogate's rows
        bank_rows, distances = result.similar_by_features(query["features"], args.m)
        indices = result.train_indices[bank_rows[0]]
        images, labels = train.read(indices)
        captions = [result.class_names[int(y)] for y in labels]
        name = f"{result.feature_tap} features"
        rows.append((name, images, captions))
        print(f"baseline, {name}: " + ", ".join(f"#{i} {c} ({d:.2f})" for i, c, d in
                                                 zip(indices, captions, distances[0])))
    if args.out:
        png = similar_samples(image, f"model: {result.class_names[prediction]}", rows,
                              title="most similar training images")
        outputs.write_file(args.out, png, "dec.similar")
        print(f"wrote {args.out}")


def concepts(args) -> None:
    from xai_jax import outputs
    from xai_jax.methods.dec.figures import concept_grid
    _check_png(args.out)
    result, _, train, _ = _open_result(args, "dec.concepts")
    rows, _ = result.concepts(args.tap, args.per_cluster)
    images, _ = train.read(result.train_indices[rows.ravel()])
    png = concept_grid(images.reshape(rows.shape + images.shape[1:]), _cluster_titles(result, args.tap),
                       title=f"concepts of {args.tap}")
    outputs.write_file(args.out, png, "dec.concepts")
    for line in _cluster_titles(result, args.tap):
        print("  " + line.replace("\n", " "))
    print(f"wrote {args.out}")
