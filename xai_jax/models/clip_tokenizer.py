"""CLIP's byte-level BPE tokenizer (OpenAI's ``SimpleTokenizer``), without PyTorch.

Text is cleaned (``ftfy.fix_text`` when ftfy is installed, HTML unescaping, whitespace collapsing),
lower-cased, split with CLIP's regular expression, mapped byte-by-byte to printable characters and
merged with the 48,894 BPE merges of ``bpe_simple_vocab_16e6.txt.gz``. Ids: 256 byte tokens, 256 byte
tokens ending a word, the merges, then ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407.
``tokenize`` wraps each text in those two, truncates to the context length keeping the end token (as
open_clip does) and pads with 0.

"a photo of a dog" -> 49406, 320, 1125, 539, 320, 1929, 49407.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import pathlib
from typing import Sequence

import numpy as np

from xai_jax.errors import XaiJaxError

try:  # the regular expression needs \p{L} and \p{N}, which the standard library's re lacks
    import regex as _re
except ImportError:  # pragma: no cover - regex is a dependency
    _re = None

try:  # optional, as in open_clip: repairs mojibake before tokenising
    import ftfy as _ftfy
except ImportError:
    _ftfy = None

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2
_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
            r"""[^\s\p{L}\p{N}]+""")


def find_bpe_vocab(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the BPE vocabulary is: ``path``, ``$XAI_JAX_CLIP_BPE``, the copy inside an installed
    ``open_clip_torch`` or ``openai-clip``, or the project's shared data folder (``../shared/data/clip/``).

    Raises:
      XaiJaxError: none of them exists (the message names every place looked at).
    """
    if path is not None:
        if not pathlib.Path(path).is_file():
            raise XaiJaxError(f"CLIP BPE vocabulary not found: {path}")
        return pathlib.Path(path)
    candidates = []
    if os.environ.get("XAI_JAX_CLIP_BPE"):
        candidates.append(pathlib.Path(os.environ["XAI_JAX_CLIP_BPE"]))
    import importlib.util
    for package in ("open_clip", "clip"):  # open_clip_torch and openai-clip ship the file
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            candidates.append(pathlib.Path(spec.origin).parent / BPE_FILENAME)
    shared = os.environ.get("XAI_JAX_SHARED_DATA")
    repo = pathlib.Path(__file__).resolve().parents[2]
    candidates.append(pathlib.Path(shared) / "clip" / BPE_FILENAME if shared
                      else repo.parent / "shared" / "data" / "clip" / BPE_FILENAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise XaiJaxError(f"CLIP BPE vocabulary {BPE_FILENAME} not found (looked at "
                      f"{', '.join(map(str, candidates))}); set XAI_JAX_CLIP_BPE or pip install open_clip_torch")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable unicode character, so BPE never sees whitespace or control characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _clean(text: str) -> str:
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _re.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """Text -> CLIP token ids.

    Args:
      bpe_path: the ``bpe_simple_vocab_16e6.txt.gz`` file; found with :func:`find_bpe_vocab` if None.
      context_length: length of the rows :meth:`tokenize` returns.
    """

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH):
        if _re is None:
            raise XaiJaxError("the CLIP tokenizer needs the regex package: pip install regex")
        path = find_bpe_vocab(bpe_path)
        try:
            lines = gzip.open(path).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise XaiJaxError(f"{path}: not a gzipped CLIP BPE vocabulary ({err})") from None
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise XaiJaxError(f"{path}: expected {_NUM_MERGES} BPE merges, found a different file")
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.context_length = context_length
        self.sot_token = self.encoder["<|startoftext|>"]
        self.eot_token = self.encoder["<|endoftext|>"]
        self._pattern = _re.compile(_PATTERN, _re.IGNORECASE)
        self._cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, token: str) -> str:
        """Merges the characters of one pre-token, lowest-ranked pair first (CLIP's ``bpe``)."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start/end tokens."""
        ids = []
        for piece in self._pattern.findall(_clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(piece).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace(
            "</w>", " ")

    def tokenize(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """``[len(texts), context_length]`` int32 ids: start, the text's tokens, end, zeros.

        Texts too long keep their first ``context_length - 1`` tokens and end with the end token.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token] + self.encode(text) + [self.eot_token]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token
            out[row, :len(ids)] = ids
        return out


@functools.lru_cache(maxsize=4)
def default_tokenizer(bpe_path: str | None = None) -> ClipTokenizer:
    """A shared :class:`ClipTokenizer` (the vocabulary takes ~0.3 s to read)."""
    return ClipTokenizer(bpe_path)
