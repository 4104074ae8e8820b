"""CLIP encoders: batched, jitted Flax vs the WWW reference code's one-image / one-string-at-a-time PyTorch loop.

The WWW authors' code embeds each probe image and each concept string separately through CLIP. Here the same
random weights run (a) through Hugging Face's ``CLIPModel`` one input at a time (the reference's structure),
(b) through ``CLIPModel`` in batches (what a careful PyTorch user would do), and (c) through
:mod:`xai_jax.models.clip` batched and jitted, in one process on this machine. Inputs are real: CIFAR-10 test
images (32x32, from the shared data folder; random uint8 if it is missing) and "a photo of a {word}" prompts
over words of the CLIP vocabulary. Tokenising is outside the timed text loop for all three (it is the same
Python code); image preprocessing is inside (c) ``encode_images`` and measured separately.

    python experiments/bench_clip.py [--quick] [--full-size]

``--full-size`` adds ViT-B/32 (random weights: no CLIP weights exist here) on fewer inputs.
Prints Markdown tables (warm-up, then the median of the repeats, JAX outputs blocked on) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import numpy as np

from benchutil import DATA, median_seconds, peer_row
from xai_jax.models import clip
from xai_jax.models.clip_tokenizer import default_tokenizer
from xai_jax.weights.clip import convert_hf


def hf_reference(config: clip.ClipConfig, seed: int = 0):
    import torch
    import transformers
    hf_config = transformers.CLIPConfig(
        text_config=dict(vocab_size=config.vocab, hidden_size=config.text_width, intermediate_size=config.text_mlp,
                         num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
                         max_position_embeddings=config.context_length, projection_dim=config.embed_dim),
        vision_config=dict(hidden_size=config.vision_width, intermediate_size=config.vision_mlp,
                           num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                           image_size=config.image_size, patch_size=config.patch, projection_dim=config.embed_dim),
        projection_dim=config.embed_dim)
    torch.manual_seed(seed)
    return transformers.CLIPModel(hf_config).eval()


def probe_images(n: int, size: int) -> np.ndarray:
    path = DATA / "cifar10" / "cifar10_test_jpeg.npz"
    if path.exists():
        from xai_jax.data import JpegNpzSource
        images, _ = JpegNpzSource(path).read(np.arange(n))
    else:
        images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    if images.shape[1] != size:  # ViT-B/32 takes 224x224: repeat pixels (preprocessing is timed separately)
        images = np.repeat(np.repeat(images, -(-size // images.shape[1]), 1), -(-size // images.shape[2]), 2)
    return images


def prompts(n: int) -> list[str]:
    tokenizer = default_tokenizer()
    words = [t[:-4] for t in list(tokenizer.encoder)[512:] if t.endswith("</w>") and t[:-4].isalpha()
             and len(t) > 7]
    return [f"a photo of a {w}" for w in words[:n]]


def pooled(output):
    """transformers >= 5 returns a model output whose ``pooler_output`` is the projected embedding."""
    return getattr(output, "pooler_output", output)


def fmt(seconds: float) -> str:
    return f"{seconds:.3g}"


def bench(config: clip.ClipConfig, n_images: int, n_texts: int, repeats: int) -> tuple[list[dict], int, float]:
    """The three paths on ``n_images`` probe images and ``n_texts`` prompts, and the image tower alone.

    Returns:
      the peer rows (:func:`benchutil.peer_row`; for images then texts, one against the one-at-a-time loop and
      one against batched PyTorch, with ``config``, ``inputs``, ``n`` and ``max_abs_diff``), and the batch and
      seconds of the image tower alone on preprocessed pixels.
    """
    import torch
    reference = hf_reference(config)
    model = clip.ClipModel(*convert_hf({k: v.numpy() for k, v in reference.state_dict().items()},
                                       reference.config.to_dict()))
    images = probe_images(n_images, config.image_size)
    texts = prompts(n_texts)
    pixels = model.preprocess(images)  # [N, S, S, 3] normalised, the same input for every path
    pixels_t = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    tokens = model.tokenize(texts)
    tokens_t = torch.from_numpy(tokens).long()
    out = {}

    def torch_images_one():
        with torch.no_grad():
            out["ti1"] = torch.cat([pooled(reference.get_image_features(pixel_values=pixels_t[i:i + 1]))
                                    for i in range(len(pixels_t))])

    def torch_images_batched():
        with torch.no_grad():
            out["tib"] = torch.cat([pooled(reference.get_image_features(pixel_values=pixels_t[i:i + 256]))
                                    for i in range(0, len(pixels_t), 256)])

    def torch_texts_one():
        with torch.no_grad():
            out["tt1"] = torch.cat([pooled(reference.get_text_features(input_ids=tokens_t[i:i + 1]))
                                    for i in range(len(tokens_t))])

    def torch_texts_batched():
        with torch.no_grad():
            out["ttb"] = torch.cat([pooled(reference.get_text_features(input_ids=tokens_t[i:i + 256]))
                                    for i in range(0, len(tokens_t), 256)])

    def jax_images():
        out["ji"] = model.encode_images(images)  # includes resize/crop/normalise on device

    def jax_images_pixels():
        out["jp"] = jax.block_until_ready(model.image_fn(model.params, jax.numpy.asarray(pixels[:256])))

    def jax_texts():
        out["jt"] = model.encode_tokens(tokens)

    rows = []
    threads = torch.get_num_threads()
    for what, n, one, batched, ours in (("images", n_images, torch_images_one, torch_images_batched, jax_images),
                                        ("texts", n_texts, torch_texts_one, torch_texts_batched, jax_texts)):
        t_one = median_seconds(one, repeats)
        t_batched = median_seconds(batched, repeats)
        t_ours = median_seconds(ours, repeats)
        key = "ji" if what == "images" else "jt"
        reference_out = np.asarray(out["ti1" if what == "images" else "tt1"])
        diff = float(np.abs(out[key] - reference_out).max())
        for peer, t_peer in ((f"PyTorch one at a time ({threads} threads)", t_one),
                             (f"PyTorch batched 256 ({threads} threads)", t_batched)):
            rows.append(peer_row(f"CLIP {config.name} {what}, vs {peer.split(' (')[0].removeprefix('PyTorch ')}",
                                 t_ours, t_peer, peer, f"n = {n}", config=config.name, inputs=what, n=n,
                                 max_abs_diff=diff))
    tower = min(256, n_images)
    return rows, tower, median_seconds(jax_images_pixels, repeats)


def table_rows(rows: list[dict], tower: int, tower_s: float) -> list[list[str]]:
    """The Markdown rows of :func:`bench`'s comparisons: one a config and input, both peers side by side."""
    out = []
    for one, batched in zip(rows[::2], rows[1::2]):
        n = one["n"]
        out.append([one["config"], one["inputs"], str(n), fmt(n / one["peer_s"]), fmt(n / batched["peer_s"]),
                    fmt(n / one["xai_jax_s"]), f"{one['ratio']:.1f}x", f"{batched['ratio']:.1f}x",
                    f"{one['max_abs_diff']:.1e}"])
    out.append([rows[0]["config"], "images, tower only (preprocessed, one batch)", str(tower), "", "",
                fmt(tower / tower_s), "", "", ""])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer inputs and repeats (CI smoke run)")
    parser.add_argument("--full-size", action="store_true", help="also ViT-B/32 (random weights)")
    args = parser.parse_args(argv)
    import torch
    n, repeats = (128, 1) if args.quick else (1024, 3)
    print(f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs visible, "
          f"JAX {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)\n")
    print("| config | inputs | n | PyTorch one at a time (/s) | PyTorch batched 256 (/s) | Flax batched+jit (/s) "
          "| vs one at a time | vs PyTorch batched | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    runs = [("tiny", n)] + ([("ViT-B/32", 32 if args.quick else 128)] if args.full_size else [])
    for name, count in runs:
        for row in table_rows(*bench(clip.CONFIGS[name], count, count, repeats)):
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
