"""``xai-jax www``: concepts (what), class contributions (why), and explanations of images (where, why, trust).

    xai-jax www concepts --activations A.npz --image-embeddings V.npz --concept-embeddings T.npz \\
        --concepts WORDS.txt --template-embedding TT.npy --out DIR            # embeddings you already have
    xai-jax www concepts --model M --weights W --data SPEC --tap pool --clip CLIP.pt --concepts WORDS.txt --out DIR
    xai-jax www contributions --model M --weights W --data SPEC --tap pool [--result DIR] --out DIR2
    xai-jax www fit --model M --weights W --tap pool --data PROBE --clip CLIP.pt --concepts WORDS.txt \
        --train-data TRAIN --out DIR                                              # both stages, one result
    xai-jax www explain --result DIR --image FILE [--out DIR2]
    xai-jax www metrics --result DIR [--labels LABELS.txt] [--clip-text-embeddings E.npz] \
        [--sentence-embeddings S.npz] [--out DIR2]                             # final-layer neurons vs labels

``fit`` runs both stages into one result: the concepts from the probe set ``--data`` (or from embeddings, as
``concepts`` takes them), then the class contributions over ``--train-data``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from xai_jax.cli.common import (DATA_HELP, add_bf16, add_data_args, compute_dtype, data_meta, decoding_of, inputs_of, load_model_and_data,
                               model_and_weights)
from xai_jax.cli.flags import add_config_flags, config_from_args
from xai_jax.cli.options import positive_int
from xai_jax.errors import XaiJaxError
from xai_jax.methods.www.config import CONCEPT_FIELDS, CONTRIBUTION_FIELDS, EXPLAIN_FIELDS, LOGIT_MAPS, WWWConfig
from xai_jax.readers import numeric, read_lines, read_npz

NO_CLIP = ("concept discovery from images needs CLIP weights: --clip PATH (an OpenAI .pt file or a Hugging Face "
           "CLIPModel folder). No CLIP weights ship with xai_jax and none can be downloaded here; with embeddings "
           "you already have, use --activations/--image-embeddings/--concept-embeddings/--template-embedding")


def register(subparsers) -> None:
    from xai_jax.methods import METHODS
    p = subparsers.add_parser("www", help=METHODS["www"].summary, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def model_args(q):
        q.add_argument("--model", help="backbone name (see `xai-jax info`)")
        q.add_argument("--weights", metavar="PATH", help="checkpoint of --model")
        q.add_argument("--num-classes", type=positive_int, help="outputs of the head if not the model's default")
        add_bf16(q)
        q.add_argument("--tap", help="the explained layer, e.g. pool (see `xai-jax info --model NAME`)")
        q.add_argument("--map-tap", help="spatial layer giving the neuron activation maps (default: the tap, or "
                                         "the last spatial tap before it with as many channels; for --tap logits "
                                         "the last convolutional tap)")
        q.add_argument("--logit-maps", choices=LOGIT_MAPS, help="maps of final-layer neurons (--tap logits): "
                       "class activation maps or Grad-CAM (default: cam for global-pooled heads, else gradcam)")

    q = sub.add_parser("concepts", help="each neuron's major (and minor) concepts -> concepts.json")
    model_args(q)
    add_data_args(q, required=False)
    _concept_source_args(q)
    q.add_argument("--out", required=True, metavar="DIR")
    q.set_defaults(func=concepts, config_fields=add_config_flags(q, WWWConfig, only=CONCEPT_FIELDS))

    q = sub.add_parser("contributions", help="class-wise mean Taylor-Shapley contributions -> www.npz")
    model_args(q)
    add_data_args(q, required=False)
    q.add_argument("--result", metavar="DIR", help="add the contributions to this result (e.g. with concepts)")
    q.add_argument("--out", required=True, metavar="DIR")
    q.set_defaults(func=contributions, config_fields=add_config_flags(q, WWWConfig, only=CONTRIBUTION_FIELDS))

    q = sub.add_parser("fit", help="both stages into one result: concepts, then class contributions over "
                                   "--train-data")
    model_args(q)
    add_data_args(q, required=False)
    _concept_source_args(q)
    q.add_argument("--train-data", required=True, metavar="SPEC", help="the images the class contributions "
                   "average over (the training split): " + DATA_HELP)
    q.add_argument("--train-split", help="split of --train-data")
    q.add_argument("--train-limit", type=positive_int, help="use only the first N training images (a random N "
                   "with --sample-seed)")
    q.add_argument("--out", required=True, metavar="DIR")
    q.set_defaults(func=fit,
                   config_fields=add_config_flags(q, WWWConfig, only=CONCEPT_FIELDS + CONTRIBUTION_FIELDS))

    q = sub.add_parser("explain", help="explain an image: top neurons, concepts, heatmaps, trust")
    q.add_argument("--result", required=True, metavar="DIR", help="a result with class contributions")
    q.add_argument("--image", required=True, metavar="FILE")
    q.add_argument("--model", help="default: the result's")
    q.add_argument("--weights", metavar="PATH", help="default: the result's")
    q.add_argument("--num-classes", type=positive_int)
    add_bf16(q)
    q.add_argument("--out", metavar="DIR", help="write explanation.json, panel.png and explanation.npz here")
    q.set_defaults(func=explain, config_fields=add_config_flags(q, WWWConfig, only=EXPLAIN_FIELDS))

    q = sub.add_parser("metrics", help="final-layer neurons' concepts against their class names (section 4.1.2: "
                                       "hit rate, precision/recall/F1, CLIP-text and sentence cosine)")
    q.add_argument("--result", required=True, metavar="DIR", help="a result with concepts of --tap logits neurons")
    q.add_argument("--labels", metavar="LABELS.txt", help="one line per class: its name, then synonyms after "
                   "commas (default: the result's class names)")
    q.add_argument("--clip-text-embeddings", metavar="E.npz", help="`words` [M] and `embeddings` [M, D]: CLIP "
                   "text embeddings of every selected concept and label name, for the CLIP cosine")
    q.add_argument("--sentence-embeddings", metavar="S.npz", help="`words` [M] and `embeddings` [M, D] of a "
                   "sentence encoder (the paper's mpnet), for the sentence cosine")
    q.add_argument("--out", metavar="DIR", help="write metrics.json here")
    q.set_defaults(func=metrics)


def _concept_source_args(q) -> None:
    q.add_argument("--clip", metavar="PATH", help="CLIP weights (OpenAI .pt or Hugging Face folder)")
    q.add_argument("--concepts", metavar="WORDS.txt", help="the concept set, one word or phrase a line")
    q.add_argument("--activations", metavar="A.npz", help="`activations` [images, neurons] of the probe images")
    q.add_argument("--image-embeddings", metavar="V.npz", help="`embeddings` [images, D], one row per probe image")
    q.add_argument("--concept-embeddings", metavar="T.npz", help="`embeddings` [concepts, D] of the prompted concepts")
    q.add_argument("--template-embedding", metavar="TT.npy", help="[D] embedding of the bare template (not "
                   "needed with --no-acs)")
    q.add_argument("--crop-embeddings", metavar="C.npz", help="`embeddings` [neurons, crops, D] for minor concepts")
    q.add_argument("--no-minor", action="store_true", help="skip minor concepts (no crops)")


def _stage_config(args, result=None) -> WWWConfig:
    """The command's config: its flags over the result's config (or over the library's defaults)."""
    if result is None:
        config = config_from_args(WWWConfig, args, args.config_fields)
    else:
        config = dataclasses.replace(result.config, **{n: getattr(args, n) for n in args.config_fields})
    config.validate()
    return config


def _npz_array(path: str, key: str, what: str, ndim) -> np.ndarray:
    if not path:
        raise XaiJaxError(f"{what} FILE is required with the embeddings")
    array = read_npz(path, what, (key,), allow_npy=True)[key]
    return numeric(array, path, key, ndim=ndim)


def _read_words(path: str) -> list[str]:
    if not path:
        raise XaiJaxError("--concepts WORDS.txt is required (one concept a line)")
    return read_lines(path, "concepts file")


def _model(args, config):
    """The :class:`WWW` of the model flags alone (no data)."""
    from xai_jax import models, weights
    from xai_jax.methods.www import WWW
    spec = models.get(args.model)
    variables = weights.load(spec, args.weights, num_classes=args.num_classes)
    return WWW(spec.name, variables, tap=args.tap, map_tap=args.map_tap, config=config, num_classes=args.num_classes,
               compute_dtype=compute_dtype(args), logit_maps=args.logit_maps)


def _method(args, config):
    """The :class:`WWW` of the model flags, the data source, and the provenance to put in the result's meta."""
    from xai_jax.methods.www import WWW
    if not args.model:
        raise XaiJaxError("--model, --weights, --data and --tap are required")
    if not args.tap:
        raise XaiJaxError("--tap is required (see `xai-jax info --model NAME` for the taps)")
    spec, variables, source = load_model_and_data(args)
    www = WWW(spec.name, variables, tap=args.tap, map_tap=args.map_tap, config=config, num_classes=args.num_classes,
              compute_dtype=compute_dtype(args), logit_maps=args.logit_maps)
    return www, source, {"weights": os.path.abspath(args.weights), **data_meta(args)}


#: the files the concepts stage reads
CONCEPT_INPUTS = ("activations", "image_embeddings", "concept_embeddings", "template_embedding", "crop_embeddings",
                  "concepts", "clip", "weights", "data", "synsets")


def concepts(args) -> None:
    from xai_jax import outputs
    from xai_jax.methods.www import KIND
    config = _stage_config(args)
    outputs.check_output(args.out, KIND, inputs=inputs_of(args, *CONCEPT_INPUTS))
    result = _concept_result(args, config)
    result.save(args.out)
    _report_concepts(args.out, result)


def _embeddings_form(args) -> bool:
    return any([args.activations, args.image_embeddings, args.concept_embeddings, args.template_embedding])


def _concept_result(args, config, www=None, probe=None):
    """The concepts stage: from embeddings, or from the probe images with CLIP (``www`` and ``probe`` when the
    caller opened the model and data already)."""
    from xai_jax.methods.www import WWW
    progress = False if args.quiet else None
    if _embeddings_form(args):
        if args.data or (args.model and www is None):
            raise XaiJaxError("give either embeddings (--activations ...) or --model/--data with --clip, not both")
        words = _read_words(args.concepts)
        activations = _npz_array(args.activations, "activations", "--activations", (2, 4))
        images = _npz_array(args.image_embeddings, "embeddings", "--image-embeddings", 2)
        texts = _npz_array(args.concept_embeddings, "embeddings", "--concept-embeddings", 2)
        template = (_npz_array(args.template_embedding, "embedding", "--template-embedding", (1, 2))
                    if args.template_embedding or config.acs else None)
        crops = (_npz_array(args.crop_embeddings, "embeddings", "--crop-embeddings", 3)
                 if args.crop_embeddings else None)
        if len(words) != len(texts):
            raise XaiJaxError(f"{len(words)} concepts in {args.concepts} but {len(texts)} concept embeddings")
        if template is not None and np.ndim(template) == 2 and len(template) == 1:
            template = template[0]
        result = WWW(config=config).fit_concepts_from_embeddings(
            words, texts, template, image_embeddings=images, activations=activations, crop_embeddings=crops)
        meta = {"activations": os.path.abspath(args.activations)}
    else:
        if not args.clip:
            raise XaiJaxError(NO_CLIP)
        if not os.path.exists(args.clip):
            raise XaiJaxError(f"CLIP weights not found: {args.clip}. " + NO_CLIP.split(". ", 1)[1])
        words = _read_words(args.concepts)
        if www is None:
            www, probe, meta = _method(args, config)
        else:
            meta = {"weights": os.path.abspath(args.weights), **data_meta(args)}
        from xai_jax.weights import clip
        model = clip.load(args.clip)
        result = www.fit_concepts(probe, model, words, minor=not args.no_minor, batch_size=args.batch_size,
                                  progress=progress)
        meta["clip"] = os.path.abspath(args.clip)
    return dataclasses.replace(result, meta={**result.meta, **meta})


def _report_concepts(out: str, result) -> None:
    counts = [len(entry["major"]) for entry in result.concepts()]
    print(f"wrote {out}: concepts.json ({result.num_neurons} neurons, {len(result.concept_names)} concepts, "
          f"{np.mean(counts):.2f} major concepts per neuron" + (", minor from crops" if result.minor is not None
                                                                   else "") + ")")
    for u, entry in enumerate(result.concepts()[:5]):
        print(f"  neuron {u}: " + ", ".join(c["concept"] for c in entry["major"][:5]))


def contributions(args) -> None:
    from xai_jax import outputs
    from xai_jax.methods.www import KIND, WWWResult
    outputs.check_output(args.out, KIND, inputs=inputs_of(args, "result", "weights", "data", "synsets"))
    previous = WWWResult.load(args.result) if args.result else None
    www, source, meta = _method(args, _stage_config(args, previous))
    result = www.fit_class_contributions(source, previous, batch_size=args.batch_size,
                                         progress=False if args.quiet else None)
    result = dataclasses.replace(result, meta={**result.meta, **meta})
    result.save(args.out)
    _report_contributions(args.out, result, args.tap)


def fit(args) -> None:
    """Both stages into one result: the concepts (probe images with CLIP, or embeddings), then the class
    contributions over ``--train-data``. Every input is opened and checked before either stage runs."""
    from xai_jax import data, models, outputs
    from xai_jax.methods.www import KIND
    config = _stage_config(args)
    outputs.check_output(args.out, KIND, inputs=inputs_of(args, *CONCEPT_INPUTS, "train_data"))
    if not args.model or not args.weights or not args.tap:
        raise XaiJaxError("--model, --weights and --tap are required: the class contributions run the model "
                          "over --train-data")
    spec = models.get(args.model)
    if _embeddings_form(args):
        www, probe = _model(args, config), None
    else:
        if not args.data:
            raise XaiJaxError("--data (the probe images) is required with --clip; or give embeddings")
        www, probe, _ = _method(args, config)
    train = data.open_source(args.train_data, split=args.train_split, limit=args.train_limit,
                             resize=spec.resize, crop=spec.input_shape[:2] if spec.resize else None,
                             synsets=args.synsets, sample_seed=args.sample_seed, **decoding_of(args))
    result = _concept_result(args, config, www=www, probe=probe)
    result = www.fit_class_contributions(train, result, batch_size=args.batch_size,
                                         progress=False if args.quiet else None)
    result = dataclasses.replace(result, meta={**result.meta, "weights": os.path.abspath(args.weights),
                                               "train_data": args.train_data, "train_split": args.train_split,
                                               "train_limit": args.train_limit})
    result.save(args.out)
    _report_concepts(args.out, result)
    _report_contributions(args.out, result, args.tap)


def _report_contributions(out: str, result, tap: str) -> None:
    top = np.argsort(-result.class_contributions, axis=1)[:, :3]
    names = result.class_names or [str(c) for c in range(len(top))]
    print(f"wrote {out}: www.npz (class_contributions {result.class_contributions.shape[0]} classes "
          f"x {result.class_contributions.shape[1]} neurons of {tap}, {int(result.class_counts.sum())} images)")
    for c in range(min(len(top), 10)):
        print(f"  {names[c]}: top neurons " + ", ".join(f"{u} ({result.concept_label(int(u))})" if result.major
                                                         is not None else str(u) for u in top[c]))


def explain(args) -> None:
    from xai_jax import outputs, weights
    from xai_jax.data.sources import read_image
    from xai_jax.methods.www import EXPLANATION_KIND, WWW, WWWResult
    if args.out:
        outputs.check_output(args.out, EXPLANATION_KIND, inputs=inputs_of(args, "result", "weights", "image"))
    result = WWWResult.load(args.result)
    if result.class_contributions is None:
        raise XaiJaxError(f"{args.result} has no class contributions; run `xai-jax www contributions ... --result "
                          f"{args.result} --out DIR` first")
    spec, weights_path = model_and_weights(args, result.meta, result.model, fitted_from="embeddings")
    image = read_image(args.image, spec)
    www = WWW(spec.name, weights.load(spec, weights_path, num_classes=args.num_classes), tap=result.tap,
              map_tap=result.map_tap, config=_stage_config(args, result), num_classes=args.num_classes,
              compute_dtype=compute_dtype(args), logit_maps=result.meta.get("logit_maps"))
    explanation = www.explain(image[None], result)
    record = explanation.summary(result.class_names)[0]
    print(f"classified as {record['predicted']} (p = {record['probability']:.3f}); heatmap similarity (trust) "
          f"{record['trust']:.3f}")
    for side in ("class", "sample"):
        print(f"  {side} explanation:")
        for n in record[f"{side}_neurons"]:
            print(f"    neuron {n['neuron']}: contribution {n['contribution']:.4g}  {n['concepts']}")
    if args.out:
        from xai_jax.methods.www.figures import explanation_panel
        png = explanation_panel(explanation, 0, result.class_names)
        with outputs.atomic_dir(args.out, EXPLANATION_KIND) as tmp:
            outputs.write_files(tmp, {"explanation.json": json.dumps(record, indent=2).encode(), "panel.png": png})
            explanation.save(os.path.join(tmp, "explanation.npz"))
        print(f"wrote {args.out}: explanation.json, panel.png, explanation.npz")


def _encoder(path: str | None, flag: str):
    """:func:`lookup_encoder` of a ``words`` / ``embeddings`` npz, or None without ``path``."""
    if not path:
        return None
    from xai_jax.methods.www.metrics import lookup_encoder
    arrays = read_npz(path, flag, ("words", "embeddings"))
    words = arrays["words"]
    if words.ndim != 1 or words.dtype.kind not in "US":
        raise XaiJaxError(f"{path}: `words` must be a 1-D array of strings; got {words.dtype} {words.shape}")
    return lookup_encoder([str(w) for w in words], numeric(arrays["embeddings"], path, "embeddings", ndim=2),
                          f"{flag} {path}")


def metrics(args) -> None:
    """Section 4.1.2 for the final-layer neurons of a result: their concepts against the class names."""
    from xai_jax import outputs
    from xai_jax.methods.www import WWWResult
    from xai_jax.methods.www.metrics import result_metrics
    kind = "www.metrics"
    if args.out:
        outputs.check_output(args.out, kind, inputs=inputs_of(args, "result", "labels", "clip_text_embeddings",
                                                               "sentence_embeddings"))
    result = WWWResult.load(args.result)
    if result.major is None:
        raise XaiJaxError(f"{args.result} has no concepts; run `xai-jax www concepts --tap logits ...` first")
    labels = None
    if args.labels:
        labels = [[w.strip() for w in line.split(",") if w.strip()] for line in read_lines(args.labels, "--labels")]
    text, sentence = (_encoder(args.clip_text_embeddings, "--clip-text-embeddings"),
                      _encoder(args.sentence_embeddings, "--sentence-embeddings"))
    values = result_metrics(result, labels, text_encoder=text, sentence_encoder=sentence)
    if result.tap not in (None, "logits"):
        print(f"note: {args.result} explains {result.tap!r}; the metrics assume neuron u is class u (tap logits)")
    print(f"{values['neurons']} final-layer neurons: hit rate {values['hit']:.4f}, precision "
          f"{values['precision']:.4f}, recall {values['recall']:.4f}, F1 {values['f1']:.4f}"
          + "".join(f", {k} {values[k]:.4f}" for k in ("clip_cos", "sentence_cos") if k in values))
    if args.out:
        with outputs.atomic_dir(args.out, kind) as tmp:
            outputs.write_files(tmp, {"metrics.json": json.dumps(values, indent=2).encode()})
        print(f"wrote {args.out}: metrics.json")
