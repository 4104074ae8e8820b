"""``xai-jax cladec``: fit ClaDec + RefAE for a layer, explain an image, run the occlusion analysis.

    xai-jax cladec fit --model cladec_vgg --classifier-epochs 8 --data idx:DIR --limit 5000 --layer -2 --out DIR
    xai-jax cladec explain --result DIR --image FILE.png --out FILE.png
    xai-jax cladec occlusion --result DIR --data idx:DIR --limit 500 --out DIR

``fit`` (alias ``train``) takes every :class:`~xai_jax.methods.cladec.ClaDecConfig` field as a flag.
"""

from __future__ import annotations

import json
import math
import os

from xai_jax.cli.common import add_pass_args, add_sample_seed, add_scratch_arg, inputs_of, rows_dir
from xai_jax.cli.flags import add_config_flags, config_from_args
from xai_jax.cli.options import non_negative_int, positive_int
from xai_jax.errors import XaiJaxError
from xai_jax.methods import METHODS
from xai_jax.methods.cladec.config import ClaDecConfig

DATA_HELP = ("data source KIND:PATH (idx:DIR for MNIST/Fashion-MNIST, jpeg-npz:FILE, npz:FILE, folder:DIR, "
             "digits); for idx and digits the train/test splits are taken from it")


def register(subparsers) -> None:
    p = subparsers.add_parser("cladec", help=METHODS["cladec"].summary, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    t = sub.add_parser("fit", aliases=["train"],
                       help="train ClaDec's decoder and RefAE for one layer; write the result and summary.json")
    t.add_argument("--model", required=True, help="cladec_vgg, cladec_resnet10 (grey 32x32) or their _rgb variants")
    t.add_argument("--weights", metavar="PATH", help="the classifier to explain (xai_jax checkpoint directory)")
    t.add_argument("--classifier-epochs", type=non_negative_int, default=0,
                   help="without --weights: train the classifier first for this many epochs (saved to OUT/classifier)")
    t.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    t.add_argument("--test-data", metavar="SPEC", help="test set where --data has no test split")
    t.add_argument("--limit", type=positive_int,
                   help="use only the first N training images (a random N with --sample-seed)")
    t.add_argument("--test-limit", type=positive_int, help="use only the first N test images (likewise)")
    add_sample_seed(t)
    add_pass_args(t)
    fields = add_config_flags(t.add_argument_group("ClaDec"), ClaDecConfig)
    t.add_argument("--out", required=True, metavar="DIR")
    add_scratch_arg(t)
    t.set_defaults(func=fit_cmd, config_fields=fields)

    e = sub.add_parser("explain", help="reconstruct one image with a trained result: original/RefAE/ClaDec/difference")
    e.add_argument("--result", required=True, metavar="DIR", help="output of `xai-jax cladec fit`")
    e.add_argument("--image", required=True, metavar="FILE")
    e.add_argument("--weights", metavar="PATH", help="classifier weights (default: the ones the result names)")
    e.add_argument("--out", required=True, metavar="FILE.png")
    e.set_defaults(func=explain_cmd)

    o = sub.add_parser("occlusion", help="section 6.6: accuracy when the least/most relevant square is occluded")
    o.add_argument("--result", required=True, metavar="DIR", help="output of `xai-jax cladec fit`")
    o.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    o.add_argument("--split", help="split of --data (default test for idx)")
    o.add_argument("--limit", type=positive_int, help="use only the first N images (a random N with --sample-seed)")
    add_sample_seed(o)
    add_pass_args(o)
    o.add_argument("--weights", metavar="PATH", help="classifier weights (default: the ones the result names)")
    o.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    o.add_argument("--seed", type=non_negative_int, default=0, help="breaks ties between squares (default 0)")
    o.add_argument("--out", required=True, metavar="DIR")
    o.set_defaults(func=occlusion_cmd)


def _progress(args):
    return False if getattr(args, "quiet", False) else None


def fit_rows_bytes(model: str, tap: str, config: ClaDecConfig, images: int) -> int:
    """Bytes of the per-image rows that :meth:`~xai_jax.methods.cladec.ClaDec.fit` keeps for ``images`` training
    and test images (at most): the targets, the whole layer's code and the label (float32, int32), and the
    ClaDec (and RefAE) reconstructions."""
    from xai_jax import models
    target = math.prod(models.get(model).input_shape) * 4
    code = math.prod(models.tap_shapes(model)[tap]) * 4
    return images * (target * (2 + bool(config.refae)) + code + 4)


def fit_cmd(args) -> None:
    import jax
    import numpy as np

    from xai_jax import data, models, outputs, weights
    from xai_jax.methods.cladec import KIND, ClaDec, train_classifier
    from xai_jax.methods.cladec.figures import layer_rows
    from xai_jax.methods.cladec.passes import source_images, subfolder
    from xai_jax.models.cladec import architecture
    architecture(args.model)  # a ClaDec classifier, or a clear error
    spec = models.get(args.model)
    # without RefAE there is no dAcc: the command skips the evaluation classifiers too
    config = config_from_args(ClaDecConfig, args, args.config_fields, **({} if args.refae else {"eval_epochs": 0}))
    method = ClaDec(config)  # validates the values
    tap = method.check(args.model)  # and the layer, neurons and decoder against the model, before any data is read
    if not args.weights and args.classifier_epochs < 1:
        raise XaiJaxError("give the classifier to explain (--weights DIR) or train one (--classifier-epochs N)")
    out = outputs.check_output(args.out, KIND, inputs=inputs_of(args, "weights", "data", "test_data"))
    train_set = data.open_source(args.data, split=data.split_if_any(args.data, "train"), limit=args.limit,
                                 sample_seed=args.sample_seed)
    if args.test_data:
        test_set = data.open_source(args.test_data, split=data.split_if_any(args.test_data, "test"),
                                    limit=args.test_limit, sample_seed=args.sample_seed)
    elif data.split_if_any(args.data, "test"):
        test_set = data.open_source(args.data, split="test", limit=args.test_limit, sample_seed=args.sample_seed)
    else:
        raise XaiJaxError(f"{args.data} has no test split; pass --test-data SPEC")
    progress = _progress(args)
    classifier_info = None
    # the scratch folder is checked (free space) before the classifier's training too
    nbytes = fit_rows_bytes(args.model, tap, config, len(train_set) + len(test_set))
    if not args.weights:  # and the training images, for the classifier
        nbytes += len(train_set) * (math.prod(train_set.image_shape()) + 4)
    with rows_dir(args, nbytes) as directory:
        if args.weights:
            variables = weights.load(spec, args.weights)
            weights_path = os.path.abspath(args.weights)
        else:
            # train_set.all(), through the scratch folder when there is one
            stored = source_images(train_set, progress=progress, directory=subfolder(directory, "images"))
            variables, classifier_info = train_classifier(args.model, stored["images"], stored["labels"],
                                                          epochs=args.classifier_epochs,
                                                          key=jax.random.key(config.seed + 100), progress=progress)
            del stored  # the fit's passes read the source again
            weights_path = os.path.join(out, "classifier")
        result = method.fit(args.model, variables, train_set, test_set, progress=progress, directory=directory,
                            meta={"weights": weights_path, "data": args.data, "test_data": args.test_data,
                                  "limit": args.limit, "test_limit": args.test_limit,
                                  "sample_seed": args.sample_seed})
    shown_images, shown_labels = test_set.read(np.arange(min(6, len(test_set))))
    rec = result.reconstruct(variables, shown_images)
    names = list(getattr(test_set, "class_names", ()) or ())
    titles = [names[int(y)] if names else str(int(y)) for y in shown_labels]
    png = layer_rows(rec["x"], [rec.get("refae")], [rec["cladec"]], [str(config.layer)], titles)
    summary = {"model": args.model, "layer": config.layer, "tap": result.tap, "alpha": config.alpha,
               "neurons": config.neurons, **result.metrics}
    if classifier_info:
        summary["classifier_train_accuracy"] = classifier_info["train_accuracy"]
    extra = {"summary.json": json.dumps(summary, indent=2).encode(), "reconstructions.png": png}
    # One folder, written once: the result, its summary and figure, and the classifier it trained (if any).
    with outputs.atomic_dir(out, KIND) as tmp:
        result.write(tmp, extra)
        if classifier_info:
            weights.save_variables(os.path.join(tmp, "classifier"), variables, {"model": args.model})
    shown = {k: summary[k] for k in ("rec_loss_cladec", "rec_loss_refae", "d_rec", "acc_eval_cladec",
                                     "acc_eval_refae", "d_acc") if k in summary}
    trained = "decoder/, refae/" if result.refae is not None else "decoder/"
    print(f"wrote {out}: summary.json, reconstructions.png, cladec.json, cladec.npz, {trained} ({result.tap})")
    print(json.dumps(shown))


def _result_and_weights(args):
    from xai_jax import models, weights
    from xai_jax.methods.cladec import ClaDecResult
    result = ClaDecResult.load(args.result)
    path = args.weights or result.meta.get("weights")
    if not path:
        raise XaiJaxError("the result names no classifier weights; pass --weights PATH")
    return result, weights.load(models.get(result.model), path)


def explain_cmd(args) -> None:
    import numpy as np

    from xai_jax import outputs
    from xai_jax.data.sources import read_image
    from xai_jax.methods.cladec.figures import layer_rows
    if not args.out.endswith(".png"):
        raise XaiJaxError(f"--out must name a .png file, got {args.out}")
    outputs.check_output(args.out, "cladec.explain", file=True, inputs=inputs_of(args, "result", "weights", "image"))
    result, variables = _result_and_weights(args)
    image = read_image(args.image)
    rec = result.reconstruct(variables, image[None])
    predicted = int(np.argmax(rec["logits"][0]))
    png = layer_rows(rec["x"], [rec.get("refae")], [rec["cladec"]], [str(result.config.layer)], [f"pred {predicted}"])
    outputs.write_file(args.out, png, "cladec.explain")
    err = float(np.mean(np.square(rec["x"] - rec["cladec"])))
    line = f"wrote {args.out}: class {predicted}, ClaDec reconstruction MSE {err:.4f}"
    if "refae" in rec:
        line += f", RefAE {float(np.mean(np.square(rec['x'] - rec['refae']))):.4f}"
    print(line)


def occlusion_cmd(args) -> None:
    import jax
    import numpy as np

    from xai_jax import data, outputs
    from xai_jax.kernels.cladec import occlusion_masks
    from xai_jax.methods.cladec import OCCLUSION_KIND, occlusion_analysis
    from xai_jax.methods.cladec.figures import occlusion_rows
    outputs.check_output(args.out, OCCLUSION_KIND, inputs=inputs_of(args, "result", "weights", "data"))
    result, variables = _result_and_weights(args)
    source = data.open_source(args.data, split=args.split or data.split_if_any(args.data, "test"), limit=args.limit,
                              sample_seed=args.sample_seed)
    occ = occlusion_analysis(result, variables, source, key=jax.random.key(args.seed), batch_size=args.batch_size,
                             progress=_progress(args))
    n = min(6, len(source))
    images, _ = source.read(np.arange(n))
    rec = result.reconstruct(variables, images)
    masks = occlusion_masks(*rec["x"].shape[1:3])
    rows = np.arange(n)

    def occluded(which):
        m = masks[which][..., None]
        return np.where(m, result.fill, rec["x"])

    x_min, x_max = occluded(occ.min_cladec[:n]), occluded(occ.max_cladec[:n])
    png = occlusion_rows(rec["x"], rec["cladec"], x_min, result.reconstruct(variables, x_min)["cladec"],
                         x_max, result.reconstruct(variables, x_max)["cladec"],
                         [f"y={int(y)}" for y in occ.labels[rows]])
    occ.save(args.out, {"occlusion.png": png})
    acc = occ.accuracy
    print(f"wrote {args.out}: occlusion.json, occlusion.npz, occlusion.png ({len(occ.labels)} images, {result.tap})")
    print(json.dumps({k: round(v, 4) for k, v in acc.items()}))
