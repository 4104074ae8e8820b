"""``xai-jax xnn``: fit explanation networks (SRAE and baselines) and explain images with their x-features."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from xai_jax.cli.common import (DATA_HELP, add_bf16, add_decoding_args, add_pass_args, add_sample_seed, add_scratch_arg,
                               compute_dtype, data_meta, decoding_of, inputs_of, model_and_weights, rows_dir)
from xai_jax.cli.flags import add_config_flags, config_from_args, to_argv
from xai_jax.cli.options import choice_list, int_list, positive_int
from xai_jax.errors import XaiJaxError
from xai_jax.methods import METHODS
from xai_jax.methods.xnn.config import VARIANTS, XNNConfig
from xai_jax.readers import numeric, read_npz

def register(subparsers) -> None:
    p = subparsers.add_parser("xnn", help=METHODS["xnn"].summary)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    f = sub.add_parser("fit", help="train one-vs-all explainers for every class (or --classes)")
    f.add_argument("--model", help="backbone name (see `xai-jax info`)")
    f.add_argument("--weights", metavar="PATH", help="checkpoint of --model")
    f.add_argument("--num-classes", type=positive_int, help="outputs of the head if not the model's default")
    add_bf16(f)
    f.add_argument("--data", metavar="SPEC", help=DATA_HELP + " (training set)")
    f.add_argument("--split", help="split of --data (default train where the source has splits)")
    f.add_argument("--limit", type=positive_int, help="use only the first N training images (a random N with --sample-seed)")
    add_sample_seed(f)
    add_pass_args(f)
    f.add_argument("--test-data", metavar="SPEC", help="held-out data for the _test metrics (e.g. the test file of "
                                                       "jpeg-npz data; default: --test-split of --data)")
    f.add_argument("--test-split", help="held-out split of --data (or of --test-data) for the _test metrics")
    f.add_argument("--test-limit", type=positive_int, help="use only the first N held-out images")
    f.add_argument("--synsets", metavar="FILE", help="folder data: wnid order file")
    add_decoding_args(f)
    f.add_argument("--batch-size", type=positive_int, default=128, help="images per backbone pass (default 128)")
    f.add_argument("--features", metavar="Z.npz", help="precomputed arrays `features`, `logits`, `labels` "
                   "(optional `class_names`) instead of --model/--data")
    f.add_argument("--test-features", metavar="Z.npz", help="held-out arrays like --features")
    default_variant = XNNConfig().variant
    f.add_argument("--variants", type=choice_list(VARIANTS), default=(default_variant,), metavar="A,B,...",
                   help=f"comma-separated, each fitted on the same features: {', '.join(VARIANTS)} "
                        f"(default {default_variant})")
    f.add_argument("--classes", type=int_list(0), help="comma-separated class indices to explain (default all)")
    # `variant` is no flag: fit() sets it per --variants entry
    fields = add_config_flags(f, XNNConfig)
    f.add_argument("--orthogonality-images", type=positive_int, default=512,
                   help="images whose heatmaps give O1/O2 (with --model; default 512)")
    f.add_argument("--out", required=True, metavar="DIR")
    add_scratch_arg(f)
    f.set_defaults(func=fit, config_fields=fields)

    e = sub.add_parser("explain", help="x-features, contributions and heatmaps of one image (figure 8)")
    e.add_argument("--result", required=True, metavar="DIR", help="output of `xai-jax xnn fit` (or one variant in it)")
    e.add_argument("--variant", help="which variant of a multi-variant result (default srae, else the first)")
    e.add_argument("--image", required=True, metavar="FILE")
    e.add_argument("--model", help="backbone (default: the one the result was fitted on)")
    e.add_argument("--weights", metavar="PATH", help="checkpoint (default: the one the result was fitted with)")
    e.add_argument("--num-classes", type=positive_int)
    e.add_argument("--label", help="explained class (name or index; default the predicted one)")
    e.add_argument("--heatmap", choices=["gradcam", "cmwp"], default="gradcam",
                   help="gradcam (any backbone) or cmwp (sequential backbones: small_cnn, vgg11/16/19, "
                        "cladec_vgg(_rgb))")
    e.add_argument("--out", required=True, metavar="DIR")
    e.set_defaults(func=explain)


def _read_features(path: str, what: str) -> dict:
    arrays = read_npz(path, what, ("features", "logits"))
    arrays["features"] = numeric(arrays["features"], path, "features", ndim=2)
    arrays["logits"] = numeric(arrays["logits"], path, "logits", ndim=(1, 2))
    if len(arrays["logits"]) != len(arrays["features"]):
        raise XaiJaxError(f"{path}: {len(arrays['features'])} rows of features but {len(arrays['logits'])} of logits")
    if "labels" in arrays:
        arrays["labels"] = numeric(arrays["labels"], path, "labels", ndim=1, integer=True)
    return arrays


def _configs(args) -> dict[str, XNNConfig]:
    """One validated config per --variants entry (all checked before any work)."""
    configs = {}
    for variant in dict.fromkeys(args.variants):
        config = config_from_args(XNNConfig, args, args.config_fields, variant=variant)
        config.validate()
        configs[variant] = config
    return configs


def fit(args) -> None:
    from xai_jax import outputs
    from xai_jax.methods.xnn import BASES, KIND, extract_splits, fit_features, metrics_bars, metrics_table
    from xai_jax.methods.xnn import fit as fit_xnn
    from xai_jax.viz.report import Report
    configs = _configs(args)
    classes = list(args.classes) if args.classes else None
    outputs.check_output(args.out, KIND, inputs=inputs_of(args, "features", "test_features", "weights", "data",
                                                         "test_data", "synsets"))
    progress = False if args.quiet else None
    results = {}
    if args.features:
        if args.model or args.data:
            raise XaiJaxError("give either --features or --model/--weights/--data, not both")
        train = _read_features(args.features, "features")
        test = _read_features(args.test_features, "test features") if args.test_features else None
        names = [str(c) for c in train["class_names"]] if "class_names" in train else None
        for variant, config in configs.items():
            results[variant] = fit_features(
                config, train["features"], train["logits"], train.get("labels"), classes=classes,
                class_names=names, test=test, meta={"features": os.path.abspath(args.features),
                                                    "flags": to_argv(config, args.config_fields)})
    else:
        if not args.model:
            raise XaiJaxError("give --model/--weights/--data, or --features Z.npz")
        from xai_jax import data, evaluation, models, weights
        if not args.weights or not args.data:
            raise XaiJaxError("--model needs --weights and --data")
        evaluation.check_taps(args.model, (args.tap,), args.num_classes)
        spec = models.get(args.model)
        crop = spec.input_shape[:2] if spec.resize else None
        source = data.open_source(args.data, split=args.split or data.split_if_any(args.data, "train"),
                                  limit=args.limit, resize=spec.resize, crop=crop, synsets=args.synsets,
                                  sample_seed=args.sample_seed, **decoding_of(args))
        test_source = None
        if args.test_data or args.test_split:
            test_spec = args.test_data or args.data
            test_source = data.open_source(
                test_spec, split=args.test_split or data.split_if_any(test_spec, "test"), limit=args.test_limit,
                resize=spec.resize, crop=crop, synsets=args.synsets, sample_seed=args.sample_seed,
                **decoding_of(args))
        variables = weights.load(spec, args.weights, num_classes=args.num_classes)
        rows = (len(source) + (0 if test_source is None else len(test_source)))
        width = math.prod(models.tap_shapes(spec.name, args.num_classes)[args.tap])
        with rows_dir(args, rows * width * 4) as directory:  # float32 features, on disk beyond 256 MiB
            features, test_features = extract_splits(
                spec.name, variables, source, test_source, args.tap, num_classes=args.num_classes,
                batch_size=args.batch_size, compute_dtype=compute_dtype(args), progress=progress,
                directory=directory)
            for variant, config in configs.items():
                results[variant] = fit_xnn(
                    config, spec.name, variables, source, test_source=test_source, classes=classes,
                    num_classes=args.num_classes, batch_size=args.batch_size,
                    orthogonality_images=args.orthogonality_images, progress=progress,
                    meta={"weights": os.path.abspath(args.weights), **data_meta(args),
                          "flags": to_argv(config, args.config_fields)},
                    features=features, test_features=test_features)
    table = metrics_table(results)
    summary = {"methods": {v: r.metrics for v, r in results.items()}, "mean": table,
               "orthogonality_basis": next(iter(results.values())).orthogonality_basis}
    report = Report("XNN: explanation networks")
    report.paragraph(f"One-vs-all explainers of {len(next(iter(results.values())).classes)} classes from tap "
                     f"{args.tap}; O1/O2 from the correlation of "
                     f"{BASES.get(summary['orthogonality_basis'], summary['orthogonality_basis'])}.")
    report.table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in table])
    report.figure(metrics_bars(table), "mean over classes")
    with outputs.atomic_dir(args.out, KIND) as tmp:
        for variant, result in results.items():
            result.save(os.path.join(tmp, variant))
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(tmp, "report.html"), "w") as f:
            f.write(report.render())
    print(f"wrote {args.out}: summary.json, report.html, {', '.join(v + '/' for v in results)}")
    for row in table:
        print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


def _result_dir(path: str, variant: str | None) -> str:
    if os.path.isfile(os.path.join(path, "xnn.json")):
        return path
    if not os.path.isdir(path):
        raise XaiJaxError(f"result folder not found: {path}")
    found = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "xnn.json")))
    if not found:
        raise XaiJaxError(f"{path}: no XNN result in it (write one with `xai-jax xnn fit --out`)")
    chosen = variant or ("srae" if "srae" in found else found[0])
    if chosen not in found:
        raise XaiJaxError(f"{path} has no variant {chosen!r}; it has {', '.join(found)}")
    return os.path.join(path, chosen)


def explain(args) -> None:
    from xai_jax import models, outputs, weights
    from xai_jax.data.sources import read_image
    from xai_jax.methods.xnn import EXPLANATION_KIND, XNNResult, explanation_figure
    from xai_jax.methods.xnn import explain as explain_xnn
    outputs.check_output(args.out, EXPLANATION_KIND, inputs=inputs_of(args, "result", "weights", "image"))
    result = XNNResult.load(_result_dir(args.result, args.variant))
    spec, weights_path = model_and_weights(args, result.meta, fitted_from="saved features")
    image = read_image(args.image, spec)
    variables = weights.load(spec, weights_path, num_classes=args.num_classes)
    label = args.label
    if label is None:
        logits = models.make_forward(spec.name, (), args.num_classes)(image[None], variables)["logits"]
        label = int(np.argmax(logits[0]))
    explanation = explain_xnn(result, spec.name, variables, image[None], label, method=args.heatmap,
                              num_classes=args.num_classes)
    name = result.class_names[explanation.class_index]
    record = {"class": name, "class_index": explanation.class_index, "logit": float(explanation.logit[0]),
              "approximation": float(explanation.approximation[0]), "heatmap": args.heatmap,
              "x_features": explanation.x_features[0].tolist(), "contributions": explanation.contributions[0].tolist()}
    with outputs.atomic_dir(args.out, EXPLANATION_KIND) as tmp:
        outputs.write_files(tmp, {"explanation.json": json.dumps(record, indent=2).encode(),
                                  "xfeatures.png": explanation_figure(image[None], explanation, name)})
        outputs.save_npz(os.path.join(tmp, "heatmaps.npz"), {"heatmaps": explanation.heatmaps[0],
                                                              "baseline": explanation.baseline[0]})
    print(f"wrote {args.out}: explanation.json, heatmaps.npz, xfeatures.png")
    print(f"  {name}: logit {record['logit']:.3f}, approximation {record['approximation']:.3f}")
    for i in np.argsort(-explanation.contributions[0]):
        print(f"  x{i + 1}: E = {explanation.x_features[0, i]:.3f}, v*E = {explanation.contributions[0, i]:+.3f}")
