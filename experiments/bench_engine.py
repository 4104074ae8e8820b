"""Forward-pass throughput: the xai_jax engine vs the PyTorch evaluation loop a user would otherwise run.

Same process, same images (the CIFAR-10 test set from ../shared/data, decoded once), same batch size.
The JAX side is a full engine pass (`evaluation.confusion_counts`: one jitted step, padded batches,
confusion counts accumulated on device); the PyTorch side is akamaster's ResNet in eval mode under
`torch.no_grad()` with all CPU threads (or on CUDA when there is a GPU), looping over the same batches and counting correct predictions.
A third row times the engine with JPEG decoding in the loop (the background batcher), as `xai-jax` runs it.

    python experiments/bench_engine.py [--models cifar_resnet20,cifar_resnet56] [--repeats 3]
    python experiments/bench_engine.py --conv-profile     # one convolution of each ResNet-56 stage, both sides

Prints a Markdown table (median of the repeats after one warm-up) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import numpy as np

from benchutil import DATA, REPO, median_seconds, peer_row

sys.path.insert(0, str(REPO / "tests"))  # the faithful PyTorch reference models live with the parity tests

from xai_jax import evaluation, models, weights  # noqa: E402
from xai_jax.data import ArraySource, JpegNpzSource  # noqa: E402


def torch_pass(model, images: np.ndarray, labels: np.ndarray, batch_size: int, spec, device: str) -> int:
    """The evaluation loop of the reference repository: host batches moved to ``device``, correct counts summed."""
    import torch
    correct = torch.zeros((), dtype=torch.int64, device=device)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
            y = torch.from_numpy(labels[start:start + batch_size].astype(np.int64)).to(device)
            correct += (model((x - mean) / std).argmax(1) == y).sum()
    return int(correct)  # blocks until the device is done


def compare_model(name: str, jpeg, images: np.ndarray, labels: np.ndarray, batch_size: int, repeats: int,
                  device: str, with_jpeg: bool = True) -> dict:
    """The PyTorch eval loop and the engine pass of model ``name`` over the same decoded images.

    Args:
      name: ``cifar_resnet<depth>``, with akamaster's checkpoint in the shared data.
      jpeg: the JPEG source the images came from (for the engine + decode row).
      images, labels: the decoded images ``[N, 32, 32, 3]`` uint8 and their labels.
      batch_size, repeats: the batch size of both loops; timed calls after the warm-up.
      device: PyTorch's device.
      with_jpeg: also time the engine with JPEG decoding in the loop (``jpeg_s``; None otherwise).

    Returns:
      :func:`benchutil.peer_row` with ``images``, ``jpeg_s`` and both accuracies.
    """
    import torch
    from torch_ref_resnet_vgg import cifar_resnet
    depth = int(name.removeprefix("cifar_resnet"))
    spec = models.get(name)
    checkpoint = next((DATA / "cifar10_resnet").glob(f"resnet{depth}-*.th"))
    variables = weights.load(spec, checkpoint)
    reference = cifar_resnet(depth).eval().to(device)
    reference.load_state_dict({k: torch.from_numpy(np.array(v)).to(device) for k, v in
                               weights.read_state_dict(checkpoint).items()})
    decoded = ArraySource(images, labels, jpeg.class_names)
    n = len(labels)
    counts = {}

    def jax_pass(source=decoded):
        counts["jax"] = evaluation.confusion_counts(name, variables, source, batch_size=batch_size, progress=False)

    def reference_pass():
        counts["torch"] = torch_pass(reference, images, labels, batch_size, spec, device)

    t_torch = median_seconds(reference_pass, repeats)
    t_jax = median_seconds(jax_pass, repeats)
    t_jpeg = median_seconds(lambda: jax_pass(jpeg), repeats) if with_jpeg else None
    return peer_row(f"engine forward pass, {name}", t_jax, t_torch,
                    f"PyTorch eval loop ({torch.get_num_threads()} threads, {device})",
                    f"N = {n:,}, batch {batch_size}", images=n, jpeg_s=t_jpeg,
                    accuracy_jax=float(np.trace(counts["jax"]) / n), accuracy_torch=counts["torch"] / n)


# ResNet-56's 3x3 convolutions: (channels, map side, how many), the stem's included in the first stage.
RESNET56_CONVS = ((16, 32, 19), (32, 16, 18), (64, 8, 18))


def conv_profile(batch_size: int, repeats: int = 20) -> list[dict]:
    """Where a CIFAR ResNet's forward pass spends its time: one 3x3 convolution of each stage (stride 1,
    ``lax.conv_general_dilated`` NHWC, jitted) against PyTorch's ``Conv2d`` (NCHW and channels-last), on random
    inputs of ``batch_size``; the median of ``repeats`` after a warm-up. A minimal reproduction of XLA:CPU's
    convolutions at 16-64 channels against oneDNN's.

    Returns:
      one dict a stage: ``channels``, ``side``, ``count`` (in ResNet-56) and the milliseconds of each side.
    """
    import torch
    rng = np.random.default_rng(0)
    rows = []
    for channels, side, count in RESNET56_CONVS:
        x = jax.numpy.asarray(rng.normal(size=(batch_size, side, side, channels)).astype(np.float32))
        kernel = jax.numpy.asarray(rng.normal(size=(3, 3, channels, channels)).astype(np.float32))
        conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")))
        reference = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False).eval()
        xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
        xcl = xt.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            rows.append({"channels": channels, "side": side, "count": count,
                         "jax_ms": 1e3 * median_seconds(lambda: jax.block_until_ready(conv(x, kernel)), repeats),
                         "torch_ms": 1e3 * median_seconds(lambda: reference(xt), repeats),
                         "torch_channels_last_ms": 1e3 * median_seconds(lambda: reference(xcl), repeats)})
    return rows


def print_conv_profile(batch_size: int) -> None:
    print(f"### One 3x3 convolution of each ResNet-56 stage, batch {batch_size} (ms)\n")
    print("| channels | map | in ResNet-56 | JAX (XLA:CPU) | PyTorch NCHW | PyTorch channels-last | JAX / PyTorch best |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for r in conv_profile(batch_size):
        best = min(r["torch_ms"], r["torch_channels_last_ms"])
        total += r["jax_ms"] * r["count"]
        print(f"| {r['channels']} | {r['side']}x{r['side']} | {r['count']} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | "
              f"{r['torch_channels_last_ms']:.2f} | {r['jax_ms'] / best:.2f}x |", flush=True)
    print(f"\nResNet-56's convolutions timed one at a time in JAX: {total:.0f} ms a batch\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar_resnet20,cifar_resnet56")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conv-profile", action="store_true",
                        help="only time one convolution of each ResNet-56 stage against PyTorch's")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(os.cpu_count())
    if args.conv_profile:
        print_conv_profile(args.batch_size)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"

    test_file = DATA / "cifar10" / "cifar10_test_jpeg.npz"
    jpeg = JpegNpzSource(test_file)
    images, labels = jpeg.all()
    n = len(labels)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} on {device}; "
          f"{n} CIFAR-10 test images, batch {args.batch_size}\n")
    print("| model | PyTorch eval loop (img/s) | xai_jax engine (img/s) | ratio | engine + JPEG decode (img/s) | accuracy (both) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        row = compare_model(name, jpeg, images, labels, args.batch_size, args.repeats, device)
        print(f"| {name} | {n / row['peer_s']:,.0f} | {n / row['xai_jax_s']:,.0f} | {row['ratio']:.2f}x | "
              f"{n / row['jpeg_s']:,.0f} | {row['accuracy_torch']:.4f} / {row['accuracy_jax']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
