"""``xai-jax nma``: fit near-miss analysis from a model or from saved scores, and explain labels or images.

    xai-jax nma fit --model cifar_resnet56 --weights resnet56.th --data jpeg-npz:test.npz --out nma56
    xai-jax nma fit --from-probs preds.npz --out nma          # `fit` may be left out: xai-jax nma --from-probs ...
    xai-jax nma explain --result nma56 --label cat            # or --image photo.png
    xai-jax nma serve --result nma56                          # the near-miss explorer at http://127.0.0.1:8765/
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import numpy as np

from xai_jax.cli.common import (DATA_HELP, add_bf16, add_decoding_args, add_num_classes, add_pass_args, add_sample_seed, compute_dtype,
                                data_meta, inputs_of, load_model_and_data, model_and_weights)
from xai_jax.cli.flags import add_config_flags, config_from_args
from xai_jax.cli.options import int_in, positive_int, positive_number
from xai_jax.errors import XaiJaxError
from xai_jax.methods.nma.config import NMAConfig
from xai_jax.readers import numeric, read_json, read_names, read_npz

if TYPE_CHECKING:  # the methods import JAX: loaded by the commands that run, not by `xai-jax --help`
    from xai_jax.methods.nma import NMAResult


def register(subparsers) -> None:
    from xai_jax.methods import METHODS
    p = subparsers.add_parser("nma", help=METHODS["nma"].summary,
                              description="Fit: `xai-jax nma [fit] --model/--weights/--data or --from-probs, with "
                                          "--out`. Explain: `xai-jax nma explain --result DIR --label NAME | "
                                          "--image FILE`. Explore in a browser: `xai-jax nma serve --result DIR`.")
    _add_fit_args(p)  # the bare `xai-jax nma --out DIR ...` fits, as before the verbs
    p.set_defaults(func=fit)
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    f = actions.add_parser("fit", help="the concept hierarchy of a model's (or saved scores') near misses")
    _add_fit_args(f)
    _defer_to(f, p)
    f.set_defaults(func=fit)

    e = actions.add_parser("explain", help="explain a label, or an image the result's model classifies")
    e.add_argument("--result", required=True, metavar="DIR", help="output folder of `xai-jax nma fit`")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", help="explain this label")
    which.add_argument("--image", metavar="FILE", help="classify this image with the model and explain it")
    e.add_argument("--model", help="backbone of --image (default: the result's)")
    e.add_argument("--weights", metavar="PATH", help="checkpoint of --model (default: the result's)")
    add_num_classes(e)
    e.add_argument("--names", metavar="FILE.json", help="human overrides: cluster (ids or class names, "
                   "comma-separated) -> name")
    _defer_to(e, p)
    e.set_defaults(func=explain)

    s = actions.add_parser("serve", help="the near-miss explorer: browse, rename and query a result in a browser",
                           description="Serves a local web page over an NMA result (and its JSON API): the "
                                       "dendrogram, renaming concepts (saved into the result at once, with undo), "
                                       "and queries of images with the model.")
    s.add_argument("--result", required=True, metavar="DIR", help="output folder of `xai-jax nma fit`")
    s.add_argument("--data", metavar="SPEC", help="labelled images to show and pick (default: the result's own, "
                   "when it was fitted from images); " + DATA_HELP)
    s.add_argument("--split")
    s.add_argument("--limit", type=positive_int, help="use only the first N images (a random N with --sample-seed)")
    add_sample_seed(s)
    s.add_argument("--synsets", metavar="FILE", help="folder data: wnid order file")
    s.add_argument("--model", help="backbone that classifies queries (default: the result's)")
    s.add_argument("--weights", metavar="PATH", help="checkpoint of --model (default: the result's)")
    add_num_classes(s)
    s.add_argument("--human", metavar="REF", help="reference of the explanatory score: wordnet, "
                   "cifar100-superclasses, or a JSON file {group name: [class names]} (default: the one the "
                   "result was scored against, else wordnet where the labels have synsets)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int_in(0, 65535), default=8765, help="port (default 8765; 0 picks a free one)")
    s.add_argument("--max-upload-mb", type=positive_number, default=8.0, metavar="MB",
                   help="largest image upload accepted (default 8)")
    s.add_argument("--verbose", action="store_true", help="log every request")
    _defer_to(s, p)
    s.set_defaults(func=serve)


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="backbone name (fit from images)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint of --model")
    add_num_classes(p)
    add_bf16(p)
    p.add_argument("--data", metavar="SPEC", help=DATA_HELP)
    p.add_argument("--split")
    p.add_argument("--limit", type=positive_int, help="use only the first N images (a random N with --sample-seed)")
    add_sample_seed(p)
    p.add_argument("--synsets", metavar="FILE", help="folder data: wnid order file")
    add_decoding_args(p)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--from-probs", metavar="FILE.npz", help="precomputed `probs` (or `logits`) and `labels`")
    p.add_argument("--class-names", metavar="FILE", help="one class name a line (or a JSON list)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet"],
                   help="names and WordNet synsets of a known label set")
    p.add_argument("--synset-table", metavar="FILE.json", help="class name -> WordNet synset (or wnid)")
    p.add_argument("--no-names", action="store_true", help="skip WordNet naming")
    add_config_flags(p, NMAConfig)
    p.add_argument("--names", metavar="FILE.json", help="human overrides: cluster (ids or class names, "
                   "comma-separated) -> name")
    p.add_argument("--human", default="wordnet", metavar="REF",
                   help="reference of the explanatory score: wordnet, cifar100-superclasses, or a JSON file "
                        "{group name: [class names]}")
    p.add_argument("--score-groups", metavar="FILE.json",
                   help="the explanatory score per group of labels too (the paper's Table 2 columns): a JSON file "
                        "{group name: [class names]}, e.g. animals and vehicles")
    p.add_argument("--out", metavar="DIR", help="output folder")
    add_pass_args(p)


def _defer_to(verb: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    """A verb's flags that the parent also has keep the parent's value unless given after the verb.

    argparse copies every default of a sub-parser over the parent's namespace, so without this
    ``xai-jax nma --k 2 fit ...`` would silently fit with the default K.
    """
    shared = {a.dest for a in parent._actions if a.dest != "help"}
    for action in verb._actions:
        if action.dest in shared:
            action.default = argparse.SUPPRESS


def _read_class_names(path: str) -> list[str]:
    return read_names(path, "class names file")


def _read_groups(path: str) -> dict[str, list[str]]:
    """``--human FILE.json``: ``{group name: [class names]}``."""
    raw = read_json(path, "human grouping")
    if not raw or not all(isinstance(v, list) and v and all(isinstance(m, (str, int)) for m in v)
                          for v in raw.values()):
        raise XaiJaxError(f"human grouping {path} must be a JSON object {{group name: [class names]}} with "
                          f"non-empty lists")
    return raw


def _read_names(path: str) -> dict[str, str]:
    """``--names FILE.json``: ``{cluster (ids or class names, comma-separated): name}``."""
    raw = read_json(path, "names")
    if not all(isinstance(v, str) and v.strip() for v in raw.values()):
        raise XaiJaxError(f"names file {path} must map clusters to non-empty name strings")
    return raw


def guess_dataset(class_names) -> str | None:
    """The packaged label table whose class names these are, if any."""
    from xai_jax.naming import hierarchy
    wanted = [n.lower().replace(" ", "_") for n in class_names]
    for dataset in hierarchy.DATASETS:
        if dataset == "imagenet":
            continue
        table = [n.lower().replace(" ", "_") for n in hierarchy.packaged_table(dataset)]
        if table == wanted:
            return dataset
    return None


def human_reference(result: NMAResult, reference: str):
    """(concepts, match) for ``--human``: wordnet, cifar100-superclasses, or a JSON grouping file."""
    from xai_jax.naming import hierarchy
    if reference == "wordnet":
        if result.synsets is None:
            return None, None
        return hierarchy.wordnet_hierarchy([_synset(s) for s in result.synsets]), "name"
    if reference == "cifar100-superclasses":
        groups = hierarchy.cifar100_superclasses(result.class_names)
    else:
        raw = _read_groups(reference)
        groups = {name: [result.label_index(m) for m in members] for name, members in raw.items()}
    return hierarchy.grouping_hierarchy(groups, result.num_classes), "members"


def _synset(name):
    from xai_jax.naming.wordnet import synset
    return synset(name)


def _check_synsets(args, config: NMAConfig, class_names, dataset) -> None:
    """Resolves the analysed labels' synsets (and the ``--labels`` subset) before the pass, so that a bad table,
    an unknown label or a missing WordNet stops it early."""
    subset = config.label_indices(class_names)
    kept = class_names if subset is None else [class_names[i] for i in subset]
    lookup = {str(n).lower() for n in kept}
    for path in (args.score_groups, None if args.human in ("wordnet", "cifar100-superclasses") else args.human):
        for group, members in (_read_groups(path) if path else {}).items():
            unknown = [m for m in members if str(m).lower() not in lookup and not
                       (isinstance(m, int) and 0 <= m < len(kept))]
            if unknown:
                raise XaiJaxError(f"{path}: group {group!r} names {unknown[0]!r}, not one of the analysed labels")
    if args.no_names:
        return
    from xai_jax.naming import hierarchy
    hierarchy.label_synsets(kept, dataset=dataset, table=args.synset_table)


def leaf_groups(concepts, num_classes: int) -> dict[int, str]:
    """Each label's largest non-root human concept, to colour the dendrogram's leaves."""
    groups = {}
    for concept in sorted(concepts, key=lambda c: -len(c.members)):
        if len(concept.members) == num_classes or len(concept.members) < 2:
            continue
        for m in concept.members:
            groups.setdefault(m, concept.name)
    return groups


def _check_human(reference: str, score_groups: str | None = None) -> None:
    if reference not in ("wordnet", "cifar100-superclasses"):
        _read_groups(reference)
    if score_groups:
        _read_groups(score_groups)


def fit(args) -> None:
    from xai_jax import outputs
    from xai_jax.methods.nma import KIND, NearMissAnalysis, classes_without_images, dendrogram
    from xai_jax.viz.report import Report
    if not args.out:
        raise XaiJaxError("--out DIR is required")
    inputs = inputs_of(args, "from_probs", "weights", "data", "synsets", "class_names", "synset_table", "names",
                       "human", "score_groups")
    outputs.check_output(args.out, KIND, inputs=inputs)
    method = NearMissAnalysis(config_from_args(NMAConfig, args))
    progress = False if args.quiet else None
    overrides = _read_names(args.names) if args.names else None
    _check_human(args.human, args.score_groups)
    if args.from_probs:
        if args.model or args.data:
            raise XaiJaxError("give either --from-probs or --model/--weights/--data, not both")
        arrays = read_npz(args.from_probs, "scores file", ("labels",))
        from_logits = "probs" not in arrays
        if from_logits and "logits" not in arrays:
            raise XaiJaxError(f"scores file {args.from_probs} must hold `probs` (or `logits`) and `labels`; "
                              f"it holds {', '.join(arrays)}")
        key = "logits" if from_logits else "probs"
        scores = numeric(arrays[key], args.from_probs, key, ndim=2)
        labels = numeric(arrays["labels"], args.from_probs, "labels", ndim=1, integer=True)
        if args.class_names:
            class_names = _read_class_names(args.class_names)
        elif "class_names" in arrays:
            class_names = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1)]
        elif args.dataset and args.dataset != "imagenet":
            from xai_jax.naming.hierarchy import packaged_table
            class_names = list(packaged_table(args.dataset))
        else:
            raise XaiJaxError("name the classes: --class-names FILE, --dataset NAME, or `class_names` in the npz")
        dataset = args.dataset or guess_dataset(class_names)
        if len(class_names) != scores.shape[1]:
            raise XaiJaxError(f"{len(class_names)} class names for {scores.shape[1]} columns of scores")
        method.config.validate(len(class_names))
        _check_synsets(args, method.config, class_names, dataset)
        result = method.fit_scores(scores, labels, class_names, from_logits=from_logits,
                                   synsets=args.synset_table, dataset=dataset, names=not args.no_names,
                                   meta={"scores": os.path.abspath(args.from_probs)}, progress=progress)
    else:
        if not args.model:
            raise XaiJaxError("give --model/--weights/--data, or --from-probs FILE.npz")
        spec, variables, source = load_model_and_data(args)
        class_names = _read_class_names(args.class_names) if args.class_names else list(source.class_names)
        if len(class_names) != (args.num_classes or spec.num_classes):
            raise XaiJaxError(f"{len(class_names)} class names for a model with "
                              f"{args.num_classes or spec.num_classes} outputs; pass --class-names")
        source.class_names = tuple(class_names)
        dataset = args.dataset or guess_dataset(class_names)
        method.config.validate(len(class_names))
        _check_synsets(args, method.config, class_names, dataset)
        result = method.fit(spec.name, variables, source, synsets=args.synset_table, dataset=dataset,
                            names=not args.no_names, num_classes=args.num_classes, batch_size=args.batch_size,
                            compute_dtype=compute_dtype(args), progress=progress,
                            meta={"weights": os.path.abspath(args.weights), **data_meta(args)})
    if overrides:
        result = result.with_overrides(overrides)

    human, match = human_reference(result, args.human)
    groups = _read_groups(args.score_groups) if args.score_groups else None
    score = None if human is None else result.score_note(human, match, args.human, groups)
    nodes = result.members()[result.num_classes:]
    png = dendrogram(result.linkage, result.class_names, [result.name_of(m) for m in nodes],
                     leaf_groups(human, result.num_classes) if human else None,
                     title="near-miss dendrogram" + (f" of {result.meta['model']}" if "model" in result.meta else ""))
    report = Report("Near-miss analysis")
    empty = classes_without_images(result)
    counted = "images" if result.config.graph == "paper" else "correctly classified images"
    report.paragraph(f"{int(result.counts.sum())} {counted} counted over "
                     f"{result.num_classes} labels; K = {result.config.k}, t = {result.config.t:g}, "
                     f"{result.config.linkage} linkage on the {result.config.linkage_input} shortest-path metric."
                     + (f" Without any counted image (singleton leaves): {', '.join(empty)}." if empty else ""))
    report.figure(png, "dendrogram: WordNet concept names at the merges where they first appear")
    if score:
        report.paragraph(f"Explanatory score phi(M) = {score['phi_M']} against the {args.human} hierarchy "
                         f"(concepts matched by {match}).")
        if "groups" in score:
            report.table([{"group": n, "phi": v} for n, v in score["groups"].items()])
    report.table([{"merge": i + 1, "left": a, "right": b, "height": h}
                  for i, (a, b, h) in enumerate(result.merge_order(min(10, result.num_classes - 1)))])
    result.save(args.out, {"dendrogram.png": png, "report.html": report.render().encode()},
                notes={"score": score} if score else None)
    print(f"wrote {args.out}: nma.json, nma.npz, dendrogram.png, report.html "
          f"({int(result.counts.sum())} images counted"
          + (f", phi(M) = {score['phi_M']:.3f} vs {args.human}" if score and score["phi_M"] is not None else "")
          + ")")
    if score and "groups" in score:
        print("  phi per group: " + ", ".join(f"{n} {'-' if v is None else f'{v:.3f}'}"
                                              for n, v in score["groups"].items()))
    for a, b, h in result.merge_order(3):
        print(f"  merges first: {a} | {b} at {h:.4f}")
    if empty:
        print(f"  note: no counted image for {', '.join(empty)}; they stay singleton leaves")


def explain(args) -> None:
    if args.out:  # given before the verb, where the fit flags are
        raise XaiJaxError("explain prints its explanation; it takes no --out")
    from xai_jax.methods.nma import NMAResult
    result = NMAResult.load(args.result)
    if args.names:
        result = result.with_overrides(_read_names(args.names))
    if args.label:
        print(result.explain(args.label).text())
        return
    from xai_jax.data.sources import read_image
    from xai_jax.methods.nma.query import Classifier, answer
    spec, weights_path = model_and_weights(args, result.meta, fitted_from="saved scores")
    image = read_image(args.image, spec)
    classifier = Classifier.load(spec, weights_path, result, args.num_classes)
    print("\n".join(answer(result, classifier.probabilities(image))["printed"]))


def serve(args) -> None:
    """``xai-jax nma serve``: binds the port first (a port in use is one line before any loading), then loads
    the result, the human reference, the images and the model, and serves until Ctrl-C."""
    if args.out:
        raise XaiJaxError("serve edits the result in place; it takes no --out")
    from xai_jax.methods.nma import NMAResult
    from xai_jax.methods.nma.server import Explorer, make_server
    from xai_jax.readers import read_json
    result = NMAResult.load(args.result)  # a wrong folder is one line before the port is taken
    if args.human:
        _check_human(args.human)
    server = make_server(None, args.host, args.port, verbose=args.verbose)
    try:
        notes = read_json(os.path.join(args.result, "nma.json"), "near-miss analysis result file").get("notes") or {}
        reference = args.human or (notes.get("score") or {}).get("reference") or "wordnet"
        human, match = human_reference(result, reference)
        server.explorer = Explorer(args.result, human=human, match=match, reference=reference,
                                   classifier=_classifier(args, result), source=_source(args, result),
                                   max_upload=int(args.max_upload_mb * (1 << 20)))
        explorer = server.explorer
        print(f"serving {args.result} at {server.url}  ({result.num_classes} labels; "
              + ("images from " + explorer.source.description if explorer.source is not None else "no images")
              + ("; queries with " + explorer.classifier.spec.name if explorer.classifier else "; no queries")
              + "; Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C is how a server stops
        print("stopped")
    finally:
        server.server_close()


def _source(args, result):
    """The images of ``--data``, else of the data the result was fitted from (``None`` without either)."""
    from xai_jax import data, models
    meta = result.meta
    spec = args.data or meta.get("data")
    if not spec:
        return None
    given = args.data is not None
    model = args.model or meta.get("model")
    shape = models.get(model) if model else None
    return data.open_source(spec, split=args.split if given else meta.get("split"),
                            limit=args.limit if given else meta.get("limit"),
                            sample_seed=args.sample_seed if given else meta.get("sample_seed"),
                            resize=shape.resize if shape else None,
                            crop=shape.input_shape[:2] if shape and shape.resize else None, synsets=args.synsets)


def _classifier(args, result):
    """The model of ``--model/--weights``, else the result's own (``None`` without either)."""
    if not (args.model or args.weights or (result.meta.get("model") and result.meta.get("weights"))):
        return None
    from xai_jax.methods.nma.query import Classifier
    spec, weights_path = model_and_weights(args, result.meta, fitted_from="saved scores")
    return Classifier.load(spec, weights_path, result, args.num_classes)
