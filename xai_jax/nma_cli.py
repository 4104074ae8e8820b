"""``xai-jax nma``: fit near-miss analysis from a model or from saved scores, and explain labels or images."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.methods.nma import NearMissAnalysis, NMAConfig, NMAResult, classes_without_images


def _read_class_names(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise XaiJaxError(f"class names file not found: {path}")
    text = pathlib.Path(path).read_text()
    if text.lstrip().startswith("["):
        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_json(path: str, what: str):
    if not os.path.isfile(path):
        raise XaiJaxError(f"{what} file not found: {path}")
    try:
        return json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as err:
        raise XaiJaxError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


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


def _config(args) -> NMAConfig:
    return NMAConfig(k=args.k, t=args.t, min_confidence=args.min_confidence, symmetrize=args.symmetrize,
                     edge_weight=args.edge_weight, linkage=args.linkage, linkage_input=args.linkage_input,
                     block_size=args.block_size)


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
        raw = _read_json(reference, "human grouping")
        if not isinstance(raw, dict):
            raise XaiJaxError(f"{reference}: expected an object {{group name: [class names]}}")
        groups = {name: [result.label_index(m) for m in members] for name, members in raw.items()}
    return hierarchy.grouping_hierarchy(groups, result.num_classes), "members"


def _synset(name):
    from xai_jax.naming.wordnet import synset
    return synset(name)


def leaf_groups(concepts, num_classes: int) -> dict[int, str]:
    """Each label's largest non-root human concept, to colour the dendrogram's leaves."""
    groups = {}
    for concept in sorted(concepts, key=lambda c: -len(c.members)):
        if len(concept.members) == num_classes or len(concept.members) < 2:
            continue
        for m in concept.members:
            groups.setdefault(m, concept.name)
    return groups


def fit(args) -> None:
    from xai_jax.viz.dendrogram import dendrogram
    from xai_jax.viz.report import Report
    if not args.out:
        raise XaiJaxError("--out DIR is required")
    method = NearMissAnalysis(_config(args))
    progress = False if args.quiet else None
    if args.from_probs:
        if args.model or args.data:
            raise XaiJaxError("give either --from-probs or --model/--weights/--data, not both")
        if not os.path.isfile(args.from_probs):
            raise XaiJaxError(f"scores file not found: {args.from_probs}")
        arrays = np.load(args.from_probs, allow_pickle=False)
        from_logits = "probs" not in arrays
        if from_logits and "logits" not in arrays or "labels" not in arrays:
            raise XaiJaxError(f"{args.from_probs} must hold `probs` (or `logits`) and `labels`; "
                              f"it holds {', '.join(arrays.files)}")
        scores = arrays["logits" if from_logits else "probs"]
        if args.class_names:
            class_names = _read_class_names(args.class_names)
        elif "class_names" in arrays:
            class_names = [str(c) for c in arrays["class_names"]]
        elif args.dataset and args.dataset != "imagenet":
            from xai_jax.naming.hierarchy import packaged_table
            class_names = list(packaged_table(args.dataset))
        else:
            raise XaiJaxError("name the classes: --class-names FILE, --dataset NAME, or `class_names` in the npz")
        dataset = args.dataset or guess_dataset(class_names)
        result = method.fit_scores(scores, arrays["labels"], class_names, from_logits=from_logits,
                                   synsets=args.synset_table, dataset=dataset, names=not args.no_names,
                                   meta={"scores": os.path.abspath(args.from_probs)}, progress=progress)
    else:
        if not args.model:
            raise XaiJaxError("give --model/--weights/--data, or --from-probs FILE.npz")
        from xai_jax.cli import data_meta, load_model_and_data
        spec, variables, source = load_model_and_data(args)
        class_names = _read_class_names(args.class_names) if args.class_names else list(source.class_names)
        if len(class_names) != (args.num_classes or spec.num_classes):
            raise XaiJaxError(f"{len(class_names)} class names for a model with "
                              f"{args.num_classes or spec.num_classes} outputs; pass --class-names")
        source.class_names = tuple(class_names)
        dataset = args.dataset or guess_dataset(class_names)
        result = method.fit(spec.name, variables, source, synsets=args.synset_table, dataset=dataset,
                            names=not args.no_names, num_classes=args.num_classes, batch_size=args.batch_size,
                            compute_dtype="bfloat16" if args.bf16 else None, progress=progress,
                            meta={"weights": os.path.abspath(args.weights), **data_meta(args)})
    if args.names:
        result = result.with_overrides(_read_json(args.names, "names"))

    human, match = human_reference(result, args.human)
    score = None
    if human is not None:
        phi, phi_m = result.score(human, match)
        score = {"reference": args.human, "match": match, "phi_M": None if np.isnan(phi_m) else float(phi_m),
                 "phi": {n: None if np.isnan(v) else float(v) for n, v in zip(result.class_names, phi)}}
    nodes = result.members()[result.num_classes:]
    png = dendrogram(result.linkage, result.class_names, [result.name_of(m) for m in nodes],
                     leaf_groups(human, result.num_classes) if human else None,
                     title="near-miss dendrogram" + (f" of {result.meta['model']}" if "model" in result.meta else ""))
    report = Report("Near-miss analysis")
    empty = classes_without_images(result)
    report.paragraph(f"{int(result.counts.sum())} correctly classified images counted over "
                     f"{result.num_classes} labels; K = {result.config.k}, t = {result.config.t:g}, "
                     f"{result.config.linkage} linkage on the {result.config.linkage_input} shortest-path metric."
                     + (f" Without any counted image (singleton leaves): {', '.join(empty)}." if empty else ""))
    report.figure(png, "dendrogram: WordNet concept names at the merges where they first appear")
    if score:
        report.paragraph(f"Explanatory score phi(M) = {score['phi_M']} against the {args.human} hierarchy "
                         f"(concepts matched by {match}).")
    report.table([{"merge": i + 1, "left": a, "right": b, "height": h}
                  for i, (a, b, h) in enumerate(result.merge_order(min(10, result.num_classes - 1)))])
    result.save(args.out, {"dendrogram.png": png, "report.html": report.render().encode()}, score=score)
    print(f"wrote {args.out}: nma.json, nma.npz, dendrogram.png, report.html "
          f"({int(result.counts.sum())} images counted"
          + (f", phi(M) = {score['phi_M']:.3f} vs {args.human}" if score and score["phi_M"] is not None else "")
          + ")")
    for a, b, h in result.merge_order(3):
        print(f"  merges first: {a} | {b} at {h:.4f}")
    if empty:
        print(f"  note: no counted image for {', '.join(empty)}; they stay singleton leaves")


def explain(args) -> None:
    if not args.result:
        raise XaiJaxError("explain needs --result DIR (the output of `xai-jax nma ... --out DIR`)")
    if bool(args.label) == bool(args.image):
        raise XaiJaxError("explain needs exactly one of --label NAME or --image FILE")
    result = NMAResult.load(args.result)
    if args.names:
        result = result.with_overrides(_read_json(args.names, "names"))
    if args.label:
        print(result.explain(args.label).text())
        return
    import jax

    from xai_jax import models, weights
    from xai_jax.data.sources import load_folder_image
    model = args.model or result.meta.get("model")
    weights_path = args.weights or result.meta.get("weights")
    if not model or not weights_path:
        raise XaiJaxError("explaining an image needs the model: --model NAME --weights PATH "
                          "(this result was fitted from saved scores)")
    spec = models.get(model)
    if not os.path.isfile(args.image):
        raise XaiJaxError(f"image not found: {args.image}")
    image = load_folder_image(pathlib.Path(args.image), spec.resize,
                              spec.input_shape[:2] if spec.resize else None)
    logits = models.make_forward(spec.name, (), args.num_classes)(image[None], weights.load(spec, weights_path))["logits"]
    probs = np.asarray(jax.nn.softmax(logits[0]))
    label = int(probs.argmax())
    print(f"classified as {result.class_names[label]} (p = {probs[label]:.3f})")
    print(result.explain(label).text())
