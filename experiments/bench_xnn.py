"""XNN benchmarks: C one-vs-all explainers trained at once with vmap vs one at a time vs a faithful PyTorch
SRAE (same architecture, loss, optimiser, minibatches and step count), and heatmaps per second (c-MWP on the
digits CNN, Grad-CAM on ResNet-56; with ``--vgg`` also c-MWP through VGG-11 at 224x224) for a batch vs one image
at a time.

    python experiments/bench_xnn.py [--quick] [--vgg]

Inputs are real: ResNet-56 `pool` features of CIFAR-10 training images (one backbone pass, not timed) and
scikit-learn digits. VGG-11 has randomly initialised weights (no ImageNet checkpoint in the shared data; the
cost does not depend on the values) on CIFAR-10 images resized to 224x224. Warm-up first (compilation excluded), block_until_ready, median of repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import DATA, median_seconds, peer_row  # noqa: E402

from xai_jax import data, evaluation, models, weights  # noqa: E402
from xai_jax.methods import xnn  # noqa: E402
from xai_jax.methods.xnn import XNNConfig  # noqa: E402


def jax_trainer(config, z, targets, w, classes):
    """A closure that trains the explainers of ``classes`` once (compiled on first call)."""
    batch = min(config.batch_size, len(z))
    order_key = jax.random.split(jax.random.key(config.seed))[1]
    zj, tj, wj = jnp.asarray(z), jnp.asarray(targets[:, classes]), jnp.asarray(w[:, classes])
    params = xnn.init_params(config, z.shape[1], classes, tj, wj)
    optimizer, train = xnn.make_trainer(config, z.shape[1], len(z), batch)
    opt_state = optimizer.init(params)
    keys = jax.random.split(order_key, config.epochs)

    def run():
        out = train(params, opt_state, zj, tj, wj, keys)
        jax.block_until_ready(out)
        return out
    return run


def torch_srae(config, z, targets, w, classes, threads):
    """The same SRAE in PyTorch: one model per class, Adam, the same minibatch schedule and loss."""
    import torch
    torch.set_num_threads(threads)
    s = z.shape[1]
    widths = (s, *config.hidden, config.num_x_features)
    steps = len(z) // config.batch_size
    zt, tt, wt = torch.from_numpy(z), torch.from_numpy(targets), torch.from_numpy(w)
    rng = np.random.default_rng(0)
    orders = [torch.from_numpy(rng.permutation(len(z))[: steps * config.batch_size].reshape(steps, -1))
              for _ in range(config.epochs)]

    def mlp(sizes, last_relu):
        layers = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2 or last_relu:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    def loss_fn(enc, head, dec, zb, yb, wb):
        e = enc(zb)
        faith = torch.sum(wb / wb.sum() * (head(e)[:, 0] - yb) ** 2)
        q_k = torch.mean((dec(e) - zb) ** 2, dim=0)
        sparse = torch.mean(torch.log1p(config.q * q_k))
        norms = torch.linalg.norm(e, dim=0).clamp_min(1e-12)
        cos = (e.T @ e) / (norms[:, None] * norms[None, :])
        n = e.shape[1]
        pull = (torch.sum(cos ** 2) - torch.sum(torch.diagonal(cos) ** 2)) / (n * (n - 1))
        return faith + config.beta * sparse + config.eta * pull

    def run():
        for c in classes:
            enc, head, dec = mlp(widths, False), torch.nn.Linear(config.num_x_features, 1), mlp(widths[::-1], False)
            parameters = [*enc.parameters(), *head.parameters(), *dec.parameters()]
            optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
            for order in orders:
                for idx in order:
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(enc, head, dec, zt[idx], tt[idx, c], wt[idx, c])
                    loss.backward()
                    optimizer.step()
    return run


def vgg_cmwp_case(images: np.ndarray, labels: np.ndarray):
    """(result, variables) for c-MWP through VGG-11: an SRAE explainer of class 3 on the ``fc7`` features of
    ``images`` (random backbone weights, CIFAR-10 labels as the one-vs-all targets)."""
    variables = models.init_variables(models.get("vgg11"), jax.random.key(0))
    source = data.ArraySource(images, labels, [str(i) for i in range(10)])
    feats = evaluation.predict("vgg11", variables, source, ("fc7",), batch_size=16, progress=False)
    result = xnn.fit_features(XNNConfig(tap="fc7", hidden=(128, 32), epochs=1, batch_size=16),
        feats["fc7"], feats["logits"], labels, classes=[3])
    return result, variables


def pool_features(images: int):
    """ResNet-56 (real weights) and the ``pool`` features of ``images`` CIFAR-10 training JPEGs (seed 0).

    Returns:
      ``(spec, variables, subset, feats)``: the model, its variables, the image subset and ``evaluation.predict``'s
      outputs (``pool``, ``logits``, ``labels``).
    """
    spec = models.get("cifar_resnet56")
    variables = weights.load(spec, DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    source = data.JpegNpzSource(DATA / "cifar10" / "cifar10_train_jpeg.npz")
    subset = data.subset(source, images, seed=0)
    feats = evaluation.predict(spec.name, variables, subset, ("pool",), batch_size=256, progress=False)
    return spec, variables, subset, feats


def srae_row(feats: dict, epochs: int, repeats: int, threads: int, with_singles: bool = True) -> dict:
    """Ten one-vs-all SRAE explainers on standardised ``pool`` features: all at once (one ``vmap``, JAX) against
    the faithful PyTorch SRAE one class at a time (same minibatch schedule and step count).

    Returns:
      :func:`benchutil.peer_row` with ``single_s`` (JAX, one class at a time; None without ``with_singles``),
      ``features`` and ``steps``.
    """
    z = ((feats["pool"] - feats["pool"].mean(0)) / feats["pool"].std()).astype(np.float32)
    logits, labels = feats["logits"], feats["labels"]
    classes = np.arange(10)
    w = xnn.class_weights(labels, classes, None)
    config = XNNConfig(epochs=epochs, batch_size=256)
    steps = epochs * (len(z) // 256)
    vmapped = jax_trainer(config, z, logits, w, classes)
    t_vmap = median_seconds(vmapped, repeats)
    t_single = None
    if with_singles:  # ten trainers, ten compilations
        singles = [jax_trainer(config, z, logits, w, [c]) for c in classes]
        t_single = median_seconds(lambda: [f() for f in singles], repeats)
    t_torch = median_seconds(torch_srae(config, z, logits, w, classes, threads), repeats, warm_up=False)
    return peer_row("SRAE, 10 explainers at once (vmap)", t_vmap, t_torch,
                    f"PyTorch SRAE one class at a time ({threads} threads)",
                    f"{len(z):,} features, batch 256, {steps} steps", single_s=t_single, features=len(z), steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vgg", action="store_true",
                        help="also time c-MWP through VGG-11 at 224x224 (slow on a CPU)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="PyTorch intra-op threads (default: all CPUs; use 1 on a busy machine, where "
                        "OpenMP spin-waiting inflates PyTorch's time)")
    args = parser.parse_args()
    images = 1024 if args.quick else 4096
    epochs = 2 if args.quick else 5
    repeats = 1 if args.quick else 3
    spec, variables, subset, feats = pool_features(images)
    logits, labels = feats["logits"], feats["labels"]
    threads = args.torch_threads
    row = srae_row(feats, epochs, repeats, threads)
    t_vmap, t_single, t_torch, steps = row["xai_jax_s"], row["single_s"], row["peer_s"], row["steps"]
    device = jax.devices()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, JAX {jax.__version__} "
          f"on {device.platform} ({device.device_kind}); torch threads {threads}\n")
    print(f"### Training 10 one-vs-all SRAE explainers (64-800-100-5, decoder mirrored), {row['features']} ResNet-56 "
          f"pool features, batch 256, {steps} Adam steps each\n")
    print("| path | seconds | ratio vs JAX vmap |")
    print("|---|---|---|")
    for name, t in [("JAX, 10 classes at once (vmap)", t_vmap), ("JAX, one class at a time", t_single),
                    ("PyTorch, one class at a time", t_torch)]:
        print(f"| {name} | {t:.3f} | {t / t_vmap:.2f}x |")

    # Heatmaps: c-MWP through the digits CNN + an explainer, Grad-CAM through ResNet-56 + an explainer.
    digits = data.DigitsSource("train")
    d_images, d_labels = digits.read(np.arange(256))
    cnn = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    d_feats = evaluation.predict("small_cnn", cnn, digits, ("pool",), progress=False)
    small = xnn.fit_features(XNNConfig(hidden=(128, 32), epochs=1),
        d_feats["pool"], d_feats["logits"], d_feats["labels"], classes=[3])
    r_small = xnn.fit_features(XNNConfig(epochs=1, heatmap_tap="layer3"), feats["pool"], logits, labels,
                               classes=[3])
    rows = []
    cases = [("c-MWP, digits CNN (8x8), 5 x-features + 1-heatmap", small, "small_cnn", cnn, d_images, "cmwp", 256),
             ("Grad-CAM at layer3, ResNet-56 (32x32), 5 x-features + 1-heatmap", r_small, spec.name, variables,
              subset.read(np.arange(128))[0], "gradcam", 128)]
    if args.vgg:
        v_images, v_labels = subset.read(np.arange(64))
        r_vgg, vgg_variables = vgg_cmwp_case(v_images, v_labels)
        cases.append(("c-MWP, VGG-11 (224x224, random weights), fc7 explainer, 5 x-features + 1-heatmap", r_vgg,
                      "vgg11", vgg_variables, v_images, "cmwp", 4 if args.quick else 8))
    for name, result, model, variables_, imgs, method, batch in cases:
        one_count = min(batch, 16 if args.quick else 32)

        def batched():
            jax.block_until_ready(xnn.explain(result, model, variables_, imgs[:batch], 3, method=method).heatmaps)

        def one_at_a_time():
            for i in range(one_count):
                xnn.explain(result, model, variables_, imgs[i:i + 1], 3, method=method)

        t_b = median_seconds(batched, repeats)
        t_o = median_seconds(one_at_a_time, repeats)
        rows.append((name, batch * 6 / t_b, one_count * 6 / t_o))
    print("\n### Heatmaps per second (maps = images x (5 x-features + 1-heatmap)), explain() end to end\n")
    print("| method | batch maps/s | one image at a time maps/s | ratio |")
    print("|---|---|---|---|")
    for name, b, o in rows:
        print(f"| {name} | {b:.0f} | {o:.0f} | {b / o:.1f}x |")


if __name__ == "__main__":
    main()
