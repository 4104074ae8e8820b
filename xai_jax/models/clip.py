"""CLIP in Flax: the ViT image tower and the causal text tower of OpenAI's CLIP, with their projections.

The layout follows OpenAI's ``model.py``: pre-norm residual attention blocks with QuickGELU
(``x * sigmoid(1.702 x)``) in the MLP, a class token and learned positions in the image tower, a causal
mask in the text tower whose output is read at the end token, LayerNorm eps 1e-5, and linear projections
(no bias) into the joint embedding space. Hugging Face's ``CLIPModel`` is the same network with other
names; :mod:`xai_jax.weights.clip` converts both.

Usage::

    from xai_jax.models import clip
    model = weights.clip.load("ViT-B-32.pt")    # or clip.tiny(jax.random.key(0)) for tests
    v = model.encode_images(images_uint8_nhwc)  # [N, D], not normalised
    t = model.encode_texts(["a photo of a dog"])

No CLIP weights ship with the library and none are downloaded: :func:`load` reads a file the user has.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError

# The normalisation CLIP was trained with (OpenAI's preprocess).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def quick_gelu(x):
    """OpenAI CLIP's GELU approximation, ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": functools.partial(jax.nn.gelu, approximate=False)}


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Shapes of a CLIP model (ViT image tower + text transformer).

    Attributes:
      name: a label ("ViT-B/32", "tiny", "custom").
      image_size: side of the square input image.
      patch: side of the square patches.
      vision_width, vision_layers, vision_heads, vision_mlp: the image transformer.
      text_width, text_layers, text_heads, text_mlp: the text transformer.
      embed_dim: the joint embedding dimension D.
      context_length: tokens per text (77).
      vocab: vocabulary size (49408).
      eot_token: the id whose (first) position the text tower reads out (49407, ``<|endoftext|>``).
      activation: "quick_gelu" (OpenAI) or "gelu" (exact, some Hugging Face/LAION models).
      layer_norm_eps: 1e-5 in both OpenAI and Hugging Face checkpoints.
    """

    name: str = "custom"
    image_size: int = 224
    patch: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp: int = 2048
    embed_dim: int = 512
    context_length: int = 77
    vocab: int = 49408
    eot_token: int = 49407
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.image_size % self.patch:
            raise XaiJaxError(f"CLIP image_size {self.image_size} is not a multiple of the patch {self.patch}")
        for width, heads, tower in ((self.vision_width, self.vision_heads, "vision"),
                                    (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise XaiJaxError(f"CLIP {tower} width {width} is not divisible by its {heads} heads")
        if self.activation not in _ACTIVATIONS:
            raise XaiJaxError(f"unknown CLIP activation {self.activation!r}; choose from {sorted(_ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def widths(self) -> tuple[int, int]:
        return self.vision_width, self.text_width

    @property
    def layers(self) -> tuple[int, int]:
        return self.vision_layers, self.text_layers

    @property
    def heads(self) -> tuple[int, int]:
        return self.vision_heads, self.text_heads


CONFIGS = {
    "ViT-B/32": ClipConfig(name="ViT-B/32", patch=32),
    "ViT-B/16": ClipConfig(name="ViT-B/16", patch=16),
    # Small enough for tests and CPU benchmarks; the real vocabulary so the real tokenizer works with it.
    "tiny": ClipConfig(name="tiny", image_size=32, patch=8, vision_width=64, vision_layers=2, vision_heads=4,
                       vision_mlp=256, text_width=64, text_layers=2, text_heads=4, text_mlp=256, embed_dim=32),
}


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; ``mask`` is added to the attention logits."""

    width: int
    heads: int
    mlp: int
    activation: str
    eps: float

    @nn.compact
    def __call__(self, x, mask=None):
        batch, length, _ = x.shape
        head_dim = self.width // self.heads
        h = nn.LayerNorm(epsilon=self.eps, name="ln_1")(x)

        def split(name):  # [B, L, W] -> [B, heads, L, head_dim]
            y = nn.Dense(self.width, name=name)(h)
            return y.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = split("query"), split("key"), split("value")
        logits = jnp.einsum("bhqd,bhkd->bhqk", q / math.sqrt(head_dim), k)
        if mask is not None:
            logits = logits + mask
        attended = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, length, self.width)
        x = x + nn.Dense(self.width, name="out")(attended)
        h = nn.LayerNorm(epsilon=self.eps, name="ln_2")(x)
        h = nn.Dense(self.mlp, name="c_fc")(h)
        h = nn.Dense(self.width, name="c_proj")(_ACTIVATIONS[self.activation](h))
        return x + h


class VisionTransformer(nn.Module):
    """Normalised pixels ``[N, S, S, 3]`` -> image embeddings ``[N, D]`` (the class token, projected)."""

    config: ClipConfig

    @nn.compact
    def __call__(self, pixels):
        cfg = self.config
        w = cfg.vision_width
        x = nn.Conv(w, (cfg.patch, cfg.patch), strides=cfg.patch, padding="VALID", use_bias=False,
                    name="conv1")(pixels)
        x = x.reshape(x.shape[0], -1, w)
        cls = self.param("class_embedding", nn.initializers.normal(w ** -0.5), (w,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, w)).astype(x.dtype), x], axis=1)
        x = x + self.param("positional_embedding", nn.initializers.normal(w ** -0.5), (cfg.grid ** 2 + 1, w))
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="ln_pre")(x)
        for i in range(cfg.vision_layers):
            x = ResidualAttentionBlock(w, cfg.vision_heads, cfg.vision_mlp, cfg.activation, cfg.layer_norm_eps,
                                       name=f"block{i}")(x)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="ln_post")(x[:, 0])
        return x @ self.param("proj", nn.initializers.normal(w ** -0.5), (w, cfg.embed_dim))


class TextTransformer(nn.Module):
    """Token ids ``[M, L]`` -> text embeddings ``[M, D]`` (the end token's state, projected)."""

    config: ClipConfig

    @nn.compact
    def __call__(self, token_ids):
        cfg = self.config
        w = cfg.text_width
        length = token_ids.shape[1]
        if length > cfg.context_length:
            raise XaiJaxError(f"{length} tokens per text; this CLIP takes at most {cfg.context_length}")
        x = nn.Embed(cfg.vocab, w, embedding_init=nn.initializers.normal(0.02), name="token_embedding")(token_ids)
        x = x + self.param("positional_embedding", nn.initializers.normal(0.01), (cfg.context_length, w))[:length]
        # Causal: position i attends to positions <= i, so the padding after the end token changes nothing.
        mask = jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, -jnp.inf).astype(x.dtype)
        for i in range(cfg.text_layers):
            x = ResidualAttentionBlock(w, cfg.text_heads, cfg.text_mlp, cfg.activation, cfg.layer_norm_eps,
                                       name=f"block{i}")(x, mask)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="ln_final")(x)
        # The first end token (OpenAI reads argmax(ids), the same position since <|endoftext|> is the top id).
        end = jnp.argmax(token_ids == cfg.eot_token, axis=-1)
        x = jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0]
        return x @ self.param("text_projection", nn.initializers.normal(w ** -0.5), (w, cfg.embed_dim))


def init_params(config: ClipConfig, key) -> dict:
    """Random parameters ``{"visual": ..., "text": ..., "logit_scale": log(1/0.07)}``."""
    k_image, k_text = jax.random.split(key)
    pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, config.context_length), jnp.int32)
    return {
        "visual": VisionTransformer(config).init(k_image, pixels)["params"],
        "text": TextTransformer(config).init(k_text, tokens)["params"],
        "logit_scale": jnp.asarray(np.log(1 / 0.07), jnp.float32),
    }


def make_image_fn(config: ClipConfig) -> Callable:
    """Jitted ``(params, pixels [N, S, S, 3] normalised) -> [N, D]``."""
    module = VisionTransformer(config)
    return jax.jit(lambda params, pixels: module.apply({"params": params["visual"]}, pixels))


def make_text_fn(config: ClipConfig) -> Callable:
    """Jitted ``(params, token_ids [M, L] int32) -> [M, D]``."""
    module = TextTransformer(config)
    return jax.jit(lambda params, tokens: module.apply({"params": params["text"]}, tokens))


def _resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)``: the shorter side becomes ``size``, the longer one ``int(size * long / short)``."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _resize_crop_normalise(images, size: int):
    """uint8 (or [0, 1] float) ``[N, H, W, C]`` -> CLIP pixels: shorter side resized to ``size`` (bicubic,
    antialiased like PIL), centre crop, mean/std. Greyscale is repeated to 3 channels."""
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    images = images.astype(jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    n, h, w, c = images.shape
    new_h, new_w = _resized_shape(h, w, size)
    if (new_h, new_w) != (h, w):
        images = jax.image.resize(images, (n, new_h, new_w, c), method="bicubic", antialias=True)
        images = jnp.clip(images, 0.0, 1.0)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))  # torchvision's CenterCrop
    images = images[:, top:top + size, left:left + size]
    return (images - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


#: token positions are kept in multiples of this many (see :meth:`ClipModel.encode_tokens`)
TEXT_LENGTH_STEP = 8


def _bucket(n: int, batch_size: int) -> int:
    """Rows per call: ``batch_size``, or the next power of two for smaller inputs, so a handful of shapes
    is ever compiled and a single image is not padded to a full batch."""
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


def _batched(fn: Callable, params, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn(params, rows[chunk])`` over fixed-size chunks (the last one zero-padded), concatenated."""
    n = len(rows)
    size = _bucket(n, batch_size)
    out = []
    for start in range(0, n, size):
        chunk = rows[start:start + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real,) + chunk.shape[1:], chunk.dtype)])
        out.append(fn(params, chunk)[:real])
    return np.asarray(jnp.concatenate(out)) if out else np.zeros((0,), np.float32)


class ClipModel:
    """A CLIP model: config, parameters and batched, jitted encoders.

    Attributes:
      config: the :class:`ClipConfig`.
      params: ``{"visual", "text", "logit_scale"}``.
      image_fn: jitted ``(params, pixels) -> [N, D]`` on preprocessed pixels (for benchmarks).
      text_fn: jitted ``(params, token_ids) -> [M, D]``.
    """

    def __init__(self, config: ClipConfig, params: dict, tokenizer=None):
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.image_fn = make_image_fn(config)
        self.text_fn = make_text_fn(config)
        self._tokenizer = tokenizer
        size = config.image_size
        self._preprocess = jax.jit(lambda images: _resize_crop_normalise(images, size))
        visual = VisionTransformer(config)
        self._encode_raw = jax.jit(lambda params, images: visual.apply(
            {"params": params["visual"]}, _resize_crop_normalise(images, size)))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from xai_jax.models.clip_tokenizer import default_tokenizer
            self._tokenizer = default_tokenizer()
        return self._tokenizer

    @property
    def logit_scale(self) -> float:
        return float(np.exp(self.params["logit_scale"]))

    def _as_batch(self, images) -> np.ndarray | list:
        """An ``[N, H, W, C]`` array (C = 1 or 3), or a list of ``[1, H, W, C]`` arrays of different sizes."""
        if isinstance(images, (list, tuple)):
            shapes = {np.shape(im) for im in images}
            if len(shapes) > 1:
                return [self._as_batch(np.asarray(im)[None]) for im in images]
            images = np.stack([np.asarray(im) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
        images = np.asarray(images)
        if images.ndim == 3:  # [N, H, W] greyscale
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise XaiJaxError(f"CLIP takes images as [N, H, W, 3] (or 1 channel), got shape {images.shape}")
        return images if images.dtype == np.uint8 else images.astype(np.float32)

    def preprocess(self, images) -> np.ndarray:
        """Images -> normalised ``[N, S, S, 3]`` float32 pixels, as :meth:`encode_images` feeds the tower."""
        batch = self._as_batch(images)
        if isinstance(batch, list):
            return np.concatenate([self.preprocess(b) for b in batch])
        if len(batch) == 0:
            return np.zeros((0, self.config.image_size, self.config.image_size, 3), np.float32)
        return np.asarray(self._preprocess(batch))

    def encode_images(self, images, batch_size: int = 256) -> np.ndarray:
        """Image embeddings ``[N, D]`` float32, not normalised.

        Args:
          images: uint8 ``[N, H, W, C]`` (or floats in [0, 1]; or a list of ``[H, W, C]`` arrays) of any size:
            the shorter side is resized to ``config.image_size`` and the centre cropped, as CLIP's preprocess does.
            Preprocessing and the tower run in one jitted call per batch, so memory stays at one batch.
          batch_size: images per jitted call.
        """
        batch = self._as_batch(images)
        if isinstance(batch, list):  # different sizes: one call each (compiled once per distinct size)
            return np.concatenate([self.encode_images(b, batch_size) for b in batch])
        if len(batch) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        return _batched(self._encode_raw, self.params, batch, batch_size)

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        ids = self.tokenizer.tokenize(texts, self.config.context_length)
        if ids.max(initial=0) >= self.config.vocab:
            raise XaiJaxError(f"token id {ids.max()} is outside this CLIP's vocabulary of {self.config.vocab}")
        return ids

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Text embeddings ``[M, D]`` float32, not normalised; texts are tokenised with CLIP's BPE."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        return self.encode_tokens(self.tokenize(texts), batch_size)

    def encode_tokens(self, token_ids, batch_size: int = 256) -> np.ndarray:
        """Text embeddings of already tokenised texts ``[M, L]`` (``L <= context_length``).

        The text tower's attention is causal, so the end token's state (the embedding) depends on the positions
        up to it alone, and the padding after it can be dropped without changing the result. The texts are
        therefore encoded in batches of similar length (sorted by their end token's position), each batch cut
        after its longest text's end token, rounded up to a multiple of :data:`TEXT_LENGTH_STEP` so that at most
        ``L / 8`` lengths ever compile. A prompt such as "a photo of a dog" then costs 8 positions instead of 77.
        The embeddings come back in the input's order.
        """
        ids = np.asarray(token_ids, np.int32)
        if ids.ndim != 2:
            raise XaiJaxError(f"token ids must be [M, L], got shape {ids.shape}")
        if len(ids) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        ends = np.argmax(ids == self.config.eot_token, axis=1)  # 0 without one, as the tower reads it
        order = np.argsort(ends, kind="stable")
        size = _bucket(len(ids), batch_size)
        pending = []
        for start in range(0, len(ids), size):
            rows = order[start:start + size]
            length = min(ids.shape[1], -(-(int(ends[rows].max()) + 1) // TEXT_LENGTH_STEP) * TEXT_LENGTH_STEP)
            chunk = ids[rows, :length]
            if len(rows) < size:
                chunk = np.concatenate([chunk, np.zeros((size - len(rows), length), np.int32)])
            pending.append((rows, self.text_fn(self.params, chunk)))  # dispatched; read back below
        out = np.empty((len(ids), self.config.embed_dim), np.float32)
        for rows, embeddings in pending:
            out[rows] = np.asarray(embeddings)[:len(rows)]
        return out

    def __repr__(self) -> str:
        return f"ClipModel({self.config.name}, embed_dim={self.config.embed_dim})"


def get_config(name: str) -> ClipConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise XaiJaxError(f"unknown CLIP config {name!r}; choose from {', '.join(CONFIGS)}") from None


def create(name_or_config: str | ClipConfig, key) -> ClipModel:
    """A CLIP model with random weights."""
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return ClipModel(config, init_params(config, key))


def tiny(key=None) -> ClipModel:
    """The tiny configuration (32x32 images, 2+2 layers of width 64, D = 32) with random weights."""
    return create("tiny", jax.random.key(0) if key is None else key)
