"""The ClaDec paper's classifiers at 32x32, its decoder, and the reference autoencoder (RefAE).

Classifiers (Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts", table 1 and the
authors' ``models.py``), registered for grey (``cladec_vgg``, ``cladec_resnet10``: 32x32x1, MNIST and
Fashion-MNIST resized) and colour images (``cladec_vgg_rgb``, ``cladec_resnet10_rgb``: 32x32x3, CIFAR):

- VGG-style: 8 blocks conv3x3 (no bias) - BN - ReLU with 32, 64, 128, 128, 256, 256, 512, 512 channels and
  stride 2 at blocks 1, 2, 4, 6, 8 (32 -> 16 -> 8 -> 8 -> 4 -> 4 -> 2 -> 2 -> 1), flatten, dropout 0.5, linear.
  Taps ``block1`` .. ``block8`` (after the ReLU), ``logits``.
- ResNet-10: conv3x3(64) - BN - ReLU stem, four stages of one basic block each (64, 128, 256, 512 channels,
  stride 2 from the second stage on, 1x1 conv + BN shortcut where the shape changes), global average pool,
  linear. Taps ``stem``, ``layer1`` .. ``layer4`` (after each block), ``pool``, ``logits``.

The paper explains "layers -1 .. -5" counted from the output (:data:`LAYER_TAPS`):

=======  ==========================  ===============================
layer    VGG-style                   ResNet-10
=======  ==========================  ===============================
-1       ``logits`` (classes)        ``logits`` (classes)
-2       ``block8`` (1x1x512)        ``layer4`` (4x4x512)
-3       ``block7`` (2x2x512)        ``layer3`` (8x8x256)
-4       ``block6`` (2x2x256)        ``layer2`` (16x16x128)
-5       ``block5`` (4x4x256)        ``layer1`` (32x32x64)
=======  ==========================  ===============================

Decoder (the authors' ``ClaDecNet``): a code with no spatial extent (a vector or 1x1 map) goes through a dense
layer to ``max(D, base)`` features + ReLU, reshaped to 1x1; a spatial code through a 3x3 convolution keeping its
channels + ReLU. Then ``log2(image / code size)`` stride-2 transposed convolutions (4x4, PyTorch ``padding=1``,
exactly doubling the size) halve the channels ``..., 4 base, 2 base, base`` (ReLU after each), the last mapping to
the image's channels; a sigmoid gives pixels in [0, 1]. A code already at image size gets a 3x3 convolution.

RefAE is the same encoder freshly initialised plus the same decoder, trained jointly on reconstruction only:
:func:`refae_apply` runs it on parameters ``{"encoder": ..., "decoder": ...}``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.models.common import BATCH_NORM_EPSILON, basic_residual_branch, batch_norm, tap
from xai_jax.models.registry import ModelSpec, apply_model, register

VGG_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512)
VGG_STRIDES = (2, 2, 1, 2, 1, 2, 1, 2)

LAYER_TAPS: dict[str, dict[int, str]] = {
    "vgg": {-1: "logits", -2: "block8", -3: "block7", -4: "block6", -5: "block5"},
    "resnet10": {-1: "logits", -2: "layer4", -3: "layer3", -4: "layer2", -5: "layer1"},
}
MODELS = ("cladec_vgg", "cladec_vgg_rgb", "cladec_resnet10", "cladec_resnet10_rgb")


# im2col is used on CPU while one image's patch matrix has at most this many entries (a 512-channel 4x4 map's);
# see Conv3x3.
IM2COL_MAX_PATCH_ENTRIES = 9 * 512 * 4 * 4


class Conv3x3(nn.Module):
    """A 3x3 convolution with padding 1 (PyTorch's ``Conv2d(k=3, p=1)``), parameters ``kernel [3, 3, in, out]``
    (and ``bias`` with ``use_bias``), ``nn.Conv``'s layout.

    On CPU, small maps run as nine shifted views concatenated and one matrix product (im2col), because XLA:CPU's
    convolution is slow there, badly so from 4x4 down; larger maps run as ``lax.conv``, which wins once the patch
    matrix gets big. Input gradient, 64 images (32 from 4x4 up), ms, lax / im2col / PyTorch on 2 threads:
    256 -> 512 at 2x2 244 / 5.0 / 4.3, 256 -> 256 at 4x4 stride 2 53 / 3.0 / 4.9, 64 -> 128 at 8x8 9.5 / 6.8 /
    5.4, 1 -> 32 at 32x32 stride 2 2.0 / 1.0 / 3.6, 512 -> 512 at 4x4 23.5 / 21.2 / 14.5, but 256 -> 256 at 8x8
    19.6 / 27.7 / 15.8 and 64 -> 64 at 32x32 38.6 / 65.5 / 24.1. Hence im2col while one image's patch matrix
    (``9 in x out height x out width``) has at most :data:`IM2COL_MAX_PATCH_ENTRIES` entries. Other backends
    always run ``lax.conv``. The residual networks keep ``nn.Conv``: as im2col, ResNet-56's 32- and 64-channel
    stages (16x16, 8x8) made its forward pass 1.5x slower.

    Attributes:
      features: output channels.
      stride: the same in both directions.
      use_bias: add a learned bias.
      im2col: force the im2col form (True) or ``lax.conv`` (False); None chooses as above.
      bias_init: initialiser of the bias.
    """

    features: int
    stride: int = 1
    use_bias: bool = False
    im2col: bool | None = None
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        kernel = kernel.astype(x.dtype)
        s = self.stride
        ho, wo = (x.shape[1] - 1) // s + 1, (x.shape[2] - 1) // s + 1
        im2col = self.im2col
        if im2col is None:
            im2col = jax.default_backend() == "cpu" and 9 * x.shape[-1] * ho * wo <= IM2COL_MAX_PATCH_ENTRIES
        if im2col:
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            views = [xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] for i in range(3) for j in range(3)]
            y = jnp.concatenate(views, -1) @ kernel.reshape(-1, self.features)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (s, s), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


# Output row 2m + a of ConvTranspose2d(k=4, s=2, p=1) reads input rows m + offset through kernel row ky, for the
# (offset, ky) pairs of its parity a (the same for columns): out[2m] = x[m-1] k[3] + x[m] k[1],
# out[2m+1] = x[m] k[2] + x[m+1] k[0].
_PHASE_TAPS = {0: ((-1, 3), (0, 1)), 1: ((0, 2), (1, 0))}
# The kernel rows of parity a, by offset: _PHASE_ROWS[a][r] is the row read at offset r - 1 + a.
_PHASE_ROWS = np.array([[ky for _, ky in _PHASE_TAPS[a]] for a in (0, 1)])


class ConvTranspose4x4(nn.Module):
    """PyTorch's ``ConvTranspose2d(in, out, 4, stride=2, padding=1)``: every input pixel adds ``x @ kernel`` (a 4x4
    patch) to the output at twice its position, minus the padding of 1, so the map exactly doubles.

    Each output phase (row and column parity ``a, b``) is a 2x2 convolution of the input (``_PHASE_TAPS``); the
    phases are interleaved into the doubled map. Two ways to compute them, whichever moves less data:

    - taps first: one matrix product ``x @ kernel`` for all 16 taps, then per phase the sum of its four taps read
      at shifted positions. For 2x2 maps, and when the output has far fewer channels than the input. A 1x1 map
      needs only the four central taps, and takes one product with those (4x fewer FLOPs).
    - windows first: the 2x2 windows of the padded input at ``(h + 1) x (w + 1)`` positions, concatenated, times
      one ``[4 in, 4 out]`` matrix holding every phase's taps; phase ``a, b`` reads window ``m + a, n + b``.

    ``lax.conv_transpose`` (a dilated convolution) is slow on XLA:CPU at these small maps, and so are 16 strided
    scatter-adds, whose gradient is strided gathers. Forward and backward, 128 images, ms, scatter-adds / this /
    PyTorch on 2 threads: the authors' decoder layers 512 -> 512 at 1x1 29 / 29 / 44, 512 -> 256 at 2x2 52 / 49
    / 60, 256 -> 128 at 4x4 80 / 39 / 28, 128 -> 64 at 8x8 166 / 49 / 34, 64 -> 1 at 16x16 12 / 7 / 8 (the first
    column measured at 64 images). The layout is PyTorch's kernel semantics (``kernel[ky, kx, in, out]``, no flip).

    Attributes:
      features: output channels.
      windows_first: force one form (True: windows first, False: taps first); None chooses as above.
      bias_init: initialiser of the bias.
    """

    features: int
    windows_first: bool | None = None
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=2, out_axis=3),
                            (4, 4, x.shape[-1], self.features)).astype(x.dtype)
        bias = self.param("bias", self.bias_init, (self.features,))
        n, h, w, c = x.shape
        d = self.features
        windows_first = self.windows_first
        if windows_first is None:
            windows_first = h * w >= 16 and 16 * d > c
        if h == w == 1 and windows_first is not True:
            # A 1x1 input reaches its 2x2 output through the four central taps only (out = 2m - 1 + ky with
            # m = 0 and out in {0, 1}: ky in {1, 2}); the other twelve fall on the padding. One product with
            # those four is 4x fewer FLOPs than all sixteen (the first layer of the authors' decoder).
            centre = kernel[1:3, 1:3].transpose(2, 0, 1, 3).reshape(c, 4 * d)
            return (x.reshape(n, c) @ centre).reshape(n, 2, 2, d) + bias
        if windows_first:
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            windows = jnp.concatenate([xp[:, r:r + h + 1, s:s + w + 1] for r in (0, 1) for s in (0, 1)], -1)
            # [a, r, b, s, in, out] -> rows (r, s, in), columns (a, b, out)
            phase_kernel = kernel[_PHASE_ROWS[:, :, None, None], _PHASE_ROWS[None, None, :, :]]
            phase_kernel = phase_kernel.transpose(1, 3, 4, 0, 2, 5).reshape(4 * c, 4 * d)
            y = (windows.reshape(-1, 4 * c) @ phase_kernel).reshape(n, h + 1, w + 1, 2, 2, d)
            rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], 3) for a in (0, 1)]
        else:
            taps = x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, -1)
            taps = jnp.pad(taps.reshape(n, h, w, 4, 4, d), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
            rows = [jnp.stack([sum(taps[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w, ky, kx]
                                   for dy, ky in _PHASE_TAPS[a] for dx, kx in _PHASE_TAPS[b]) for b in (0, 1)], 3)
                    for a in (0, 1)]
        # rows[a]: [n, h, w, column parity b, out] -> [n, h, a, w, b, out] -> the doubled map
        return jnp.stack(rows, 2).reshape(n, 2 * h, 2 * w, d) + bias


class ClaDecVGG(nn.Module):
    """The paper's VGG-style classifier (table 1); see the module docstring for the taps."""

    num_classes: int = 10
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, (channels, stride) in enumerate(zip(VGG_CHANNELS, VGG_STRIDES), start=1):
            x = Conv3x3(channels, stride, name=f"conv{i}")(x)
            x = tap(self, f"block{i}", nn.relu(batch_norm(train, f"bn{i}")(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return tap(self, "logits", nn.Dense(self.num_classes, name="fc")(x))


class _Block(nn.Module):
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = basic_residual_branch(x, self.planes, self.stride, train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = nn.Conv(self.planes, (1, 1), self.stride, padding="VALID", use_bias=False, name="down_conv")(x)
            shortcut = batch_norm(train, "down_bn")(shortcut)
        return nn.relu(out + shortcut)


class ResNet10(nn.Module):
    """ResNet-10 at 32x32: a CIFAR stem and one basic block per stage (64, 128, 256, 512)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (3, 3), 1, padding=((1, 1), (1, 1)), use_bias=False, name="stem_conv")(x)
        x = tap(self, "stem", nn.relu(batch_norm(train, "stem_bn")(x)))
        for stage, planes in enumerate((64, 128, 256, 512), start=1):
            x = tap(self, f"layer{stage}", _Block(planes, 1 if stage == 1 else 2, name=f"layer{stage}")(x, train))
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        return tap(self, "logits", nn.Dense(self.num_classes, name="fc")(x))


def architecture(model: str) -> str:
    """``"vgg"`` or ``"resnet10"`` for one of :data:`MODELS`."""
    if model not in MODELS:
        raise XaiJaxError(f"{model!r} is not a ClaDec classifier; choose one of {', '.join(MODELS)}")
    return "vgg" if "vgg" in model else "resnet10"


def layer_tap(model: str, layer: int | str) -> str:
    """The tap of layer ``-1 .. -5`` (counted from the output) of a ClaDec classifier, or a tap name as is."""
    if isinstance(layer, str) and not layer.lstrip("-").isdigit():
        return layer
    layer = int(layer)
    taps = LAYER_TAPS[architecture(model)]
    if layer not in taps:
        raise XaiJaxError(f"layer must be one of -1 .. -5 (or a tap name), got {layer}")
    return taps[layer]


class Decoder(nn.Module):
    """ClaDec's decoder from a code ``[N, D]`` or ``[N, h, w, c]`` to images ``[N, S, S, out_channels]`` in [0, 1].

    Attributes:
      out_channels: channels of the reconstructed image.
      image_size: side ``S`` of the square image; ``S / h`` must be a power of two.
      base: channels of the last hidden transposed convolution (the authors' 64); earlier ones double it.
      widths: explicit channels of the hidden transposed convolutions, input side first (overrides ``base``);
        there must be ``log2(S / h) - 1`` of them.
      output_mean: per-channel mean intensity of the training images; the output layer's bias starts at its
        logit, so that the untrained decoder paints the mean instead of grey 0.5. Without it, on MNIST (87% of
        pixels black) the first Adam steps drove the sigmoid into saturation at black, and its vanishing gradient
        kept the decoder there for good (1,500 steps at a constant 103 per-image squared error; with it 27 after
        300). Only initialisation reads it.
    """

    out_channels: int
    image_size: int = 32
    base: int = 64
    widths: Sequence[int] | None = None
    output_mean: Sequence[float] | None = None

    @nn.compact
    def __call__(self, code):
        if code.ndim == 2 or code.shape[1:3] == (1, 1):
            code = code.reshape(code.shape[0], -1)
            x = nn.relu(nn.Dense(max(code.shape[-1], self.base), name="fc")(code))[:, None, None, :]
        else:
            x = nn.relu(Conv3x3(code.shape[-1], use_bias=True, name="conv_in")(code))
        widths = decoder_widths(x.shape[1], self.image_size, self.base, self.widths)
        output_bias = nn.initializers.zeros
        if self.output_mean is not None:
            mean = np.clip(np.asarray(self.output_mean, np.float32), 1e-3, 1 - 1e-3)
            output_bias = nn.initializers.constant(np.log(mean / (1 - mean)))
        if not widths:  # the code is already at image size
            return nn.sigmoid(Conv3x3(self.out_channels, use_bias=True, bias_init=output_bias, name="conv_out")(x))
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            x = ConvTranspose4x4(self.out_channels if last else width, bias_init=output_bias if last else
                                 nn.initializers.zeros, name=f"deconv{i + 1}")(x)
            x = nn.sigmoid(x) if last else nn.relu(x)
        return x


def decoder_widths(code_size: int, image_size: int, base: int = 64, widths: Sequence[int] | None = None) -> list[int]:
    """Channels of the transposed convolutions from a ``code_size`` map to ``image_size``, the last being the
    output's (given as -1 here). Raises if the ratio is not a power of two or ``widths`` has the wrong length."""
    ratio = image_size / code_size
    steps = round(math.log2(ratio)) if ratio >= 1 else -1
    if steps < 0 or 2 ** steps != ratio:
        raise XaiJaxError(f"a decoder needs image size / code size to be a power of two, got {image_size}/{code_size}")
    if steps == 0:
        return []
    hidden = [base * 2 ** (steps - 2 - i) for i in range(steps - 1)] if widths is None else list(widths)
    if len(hidden) != steps - 1:
        raise XaiJaxError(f"decoder widths: a {code_size}x{code_size} code needs {steps - 1} hidden widths "
                          f"to reach {image_size}x{image_size}, got {len(hidden)}")
    return [int(w) for w in hidden] + [-1]


def refae_apply(encoder: nn.Module, decoder: Decoder, tap_name: str, variables: dict, x: jax.Array,
                train: bool = False, neurons: tuple[int, int] | None = None, rngs: dict | None = None):
    """RefAE forward pass: encoder (a classifier, run to ``tap_name``) then decoder.

    Args:
      encoder: the classifier module used as encoder (freshly initialised for RefAE).
      decoder: a :class:`Decoder`.
      tap_name: the encoder's tap that is the code.
      variables: ``{"encoder": encoder variables, "decoder": decoder variables}``.
      x: preprocessed encoder input ``[N, H, W, C]``.
      train: batch norm of the encoder on batch statistics (then its updated ``batch_stats`` are returned).
      neurons: keep only channels ``[start, stop)`` of the code, like the ClaDec decoder it is compared with.
      rngs: dropout keys for training mode (the tap precedes VGG's dropout, so none are needed there).

    Returns:
      ``(reconstruction, new encoder batch_stats or None)``.
    """
    _, out = apply_model(encoder, variables["encoder"], x, (tap_name,), train=train, rngs=rngs)
    code = out[tap_name]
    if neurons is not None:
        code = code[..., neurons[0]:neurons[1]]
    return decoder.apply(variables["decoder"], code), out.get("batch_stats")


def vgg_layer_list(variables, input_shape):
    """:class:`ClaDecVGG` as a c-MWP layer list (``ModelSpec.sequential``): per block a bias-free 3x3 conv
    (padding 1, the block's stride) - batch norm (running statistics, folded by the kernel) - ReLU, then
    flatten and ``fc`` (dropout is the identity at inference). Taps ``block{i}`` end after their ReLU."""
    params, stats = variables["params"], variables["batch_stats"]
    layers, ends = [], {}
    for i, stride in enumerate(VGG_STRIDES, start=1):
        kernel = params[f"conv{i}"]["kernel"]
        bn = f"bn{i}"
        layers += [{"kind": "conv", "w": kernel, "b": jnp.zeros(kernel.shape[-1], kernel.dtype),
                    "stride": (stride, stride), "padding": ((1, 1), (1, 1))},
                   {"kind": "batchnorm", "scale": params[bn]["scale"], "bias": params[bn]["bias"],
                    "mean": stats[bn]["mean"], "var": stats[bn]["var"], "eps": BATCH_NORM_EPSILON},
                   {"kind": "relu"}]
        ends[f"block{i}"] = len(layers)
    layers += [{"kind": "flatten"}, {"kind": "dense", "w": params["fc"]["kernel"], "b": params["fc"]["bias"]}]
    ends["logits"] = len(layers)
    return layers, ends


def _register(name: str, build, channels: int, description: str, sequential=None) -> None:
    register(ModelSpec(name=name, build=build, input_shape=(32, 32, channels), num_classes=10,
                       mean=(0.5,) * channels, std=(0.5,) * channels, description=description,
                       sequential=sequential))


_register("cladec_vgg", lambda n: ClaDecVGG(n), 1, "ClaDec paper's VGG-style classifier, 32x32 grey (table 1)",
          vgg_layer_list)
_register("cladec_vgg_rgb", lambda n: ClaDecVGG(n), 3, "ClaDec paper's VGG-style classifier, 32x32 RGB (table 1)",
          vgg_layer_list)
_register("cladec_resnet10", lambda n: ResNet10(n), 1, "ClaDec paper's ResNet-10, 32x32 grey")
_register("cladec_resnet10_rgb", lambda n: ResNet10(n), 3, "ClaDec paper's ResNet-10, 32x32 RGB")
