"""WWW's final-layer neurons on a CIFAR ResNet (``tap="logits"``): the CAM identity, and the two minor-concept
crop protocols side by side (no CLIP needed: both are compared by the crops they choose).

1. CAM: for the global-pooled linear head, the spatial mean of each class's CAM plus the bias is its logit; the
   largest deviation over the probe images.
2. Minor crops, for each of the 10 final-layer neurons, its top-n crops under
   ``peak`` (the default: its top-n probe images by logit, cropped around the CAM peak) and
   ``probe`` (the paper's: every probe image cut into ``crop_grid`` x ``crop_grid`` crops, re-ranked by the logit);
   reported: the share of crops cut from an image of the neuron's class, the share the model classifies as that
   class when shown the crop alone (resized to 32 x 32), the neuron's mean logit on the crops, and the share of
   the paper's crops cut from one of the neuron's top-n images.

    python experiments/www_logits_cifar10.py --model cifar_resnet56 --limit 2000
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from benchutil import DATA
from xai_jax import models, weights
from xai_jax.data import JpegNpzSource, subset
from xai_jax.kernels import www as K
from xai_jax.methods.www import WWW, WWWConfig
from xai_jax.methods.www.concepts import crop_size

CHECKPOINTS = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet32": "resnet32-d509ac18.th",
               "cifar_resnet44": "resnet44-014dd654.th", "cifar_resnet56": "resnet56-4bfd9763.th"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet56", choices=sorted(CHECKPOINTS))
    parser.add_argument("--limit", type=int, default=2000, help="probe images (a random subset of the test split)")
    parser.add_argument("--n-examples", type=int, default=40)
    parser.add_argument("--crop-grid", type=int, default=3)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    variables = weights.load(models.get(args.model), str(DATA / "cifar10_resnet" / CHECKPOINTS[args.model]))
    probe = subset(JpegNpzSource(str(DATA / "cifar10" / "cifar10_test_jpeg.npz")), args.limit, seed=0)
    config = WWWConfig(n_examples=args.n_examples, crop_grid=args.crop_grid)
    www = WWW(args.model, variables, tap="logits", config=config)
    images, labels = probe.all()
    forward = jax.jit(models.make_forward(args.model))
    start = time.time()

    # 1. the CAM identity over the probe images (batched)
    bias = np.asarray(variables["params"]["linear"]["bias"])
    worst = 0.0
    for s in range(0, len(images), 500):
        batch = images[s:s + 500]
        cam = www.neuron_maps(batch, np.tile(np.arange(10), (len(batch), 1)))
        worst = max(worst, float(np.abs(cam.mean((2, 3)) + bias - np.asarray(forward(batch, variables)["logits"]))
                                 .max()))

    # 2. the crops of both protocols, as 32 x 32 images [n, 10, ...] with their source images
    top, _ = www.probe(probe, progress=False)                                          # [n, 10]
    n = top.shape[0]
    neuron = np.tile(np.arange(10), n)
    maps = www.neuron_maps(images[top.ravel()], neuron[:, None])[:, 0]
    crop = crop_size(32, 32, config.crop_fraction)
    corners = K.peak_crop_corners(maps, (32, 32), crop)
    peak = np.asarray(K.crop_images(images[top.ravel()], corners, crop, (32, 32))).round().clip(0, 255)
    crops, paper_top, _ = www.probe_crops(probe, progress=False)                      # indices into the crops
    per = config.crop_grid ** 2
    paper = crops.read(paper_top.ravel())[0]
    rows = {}
    for name, crop_images, source in (("peak", peak.astype(np.uint8), top.ravel()),
                                      ("probe", paper, paper_top.ravel() // per)):
        logits = np.concatenate([np.asarray(forward(crop_images[s:s + 500], variables)["logits"])
                                 for s in range(0, len(crop_images), 500)])
        rows[name] = {"from_class_image": float(np.mean(labels[source] == neuron)),
                      "crop_classified_as_class": float(np.mean(logits.argmax(-1) == neuron)),
                      "mean_logit_on_crop": float(np.mean(logits[np.arange(len(neuron)), neuron]))}
    in_top = [np.isin(paper_top[:, u] // per, top[:, u]).mean() for u in range(10)]
    rows["probe"]["from_neuron_top_n_image"] = float(np.mean(in_top))
    summary = {"model": args.model, "probe_images": len(probe), "n_examples": n, "crop_grid": args.crop_grid,
               "crop_fraction": config.crop_fraction, "cam_identity_max_abs_error": worst,
               "protocols": rows, "seconds": round(time.time() - start, 1)}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
