"""CLIP in Flax against the PyTorch references: Hugging Face ``CLIPModel`` and OpenAI's own ``model.py``
(from the ``openai-clip`` wheel), both built from small random configurations, and the BPE tokenizer
against OpenAI's ``SimpleTokenizer``."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REQUIRE_DATA, require_module
from xai_jax.errors import XaiJaxError
from xai_jax.models import clip
from xai_jax.models.clip_tokenizer import ClipTokenizer, default_tokenizer
from xai_jax.weights import clip as clip_weights
from xai_jax.weights.clip import convert_hf, convert_openai


def _openai_module(name: str):
    """A module of the ``openai-clip`` wheel loaded by path: its ``__init__`` imports torchvision, which
    the reference does not need (model.py needs torch, simple_tokenizer.py ftfy and regex)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None or not (pathlib.Path(spec.origin).parent / f"{name}.py").is_file():
        message = "the OpenAI reference needs: pip install --no-deps openai-clip"
        pytest.fail(message) if REQUIRE_DATA else pytest.skip(message)
    module_spec = importlib.util.spec_from_file_location(f"openai_clip_{name}",
                                                         pathlib.Path(spec.origin).parent / f"{name}.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _perturb(torch_model, seed: int):
    """Random values in every parameter (layer norms included, which default to 1 and 0)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            scale = 0.5 if name.endswith("logit_scale") else 0.1
            base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=generator) + (0 if base else 0.5 * p))
    return torch_model


# ------------------------------------------------------------------------------------------- tokenizer


def _strings() -> list[str]:
    """A few hundred texts: concept prompts, punctuation, contractions, numbers, HTML entities, mojibake,
    accents, CJK, emoji, odd whitespace and very long texts."""
    fixed = [
        "a photo of a dog", "A photo of a", "A photo of a {}.", "", " ", "\t\n", "DOG", "dog's bone", "it's",
        "they'll've", "I'M HERE", "we'd", "you're", "hello, world!", "...", "!!!???", "e-mail", "3.14159",
        "1,000,000", "co-operate", "naïve café", "Ærøskøbing", "straße", "Ωμέγα", "привет мир", "日本語のテキスト",
        "中文 字符", "한국어", "🙂 emoji 🐶🐱", "👩‍👩‍👧", "&amp; &lt;tag&gt; &quot;quoted&quot;", "&amp;amp;",
        "â€™ mojibake â€œquoteâ€\x9d", "tab\tseparated\tvalues", "multiple     spaces", "new\nline",
        "<|startoftext|> literal <|endoftext|>", "C++ & C#", "snake_case_words", "CamelCaseWords",
        "https://example.com/path?q=1", "x" * 300, "word " * 100, "sea lion", "hot-air balloon",
        "jack-o'-lantern", "ping-pong ball", "potter's wheel", "St. Bernard", "Granny Smith",
    ]
    rng = np.random.default_rng(0)
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 .,;:!?'\"-()[]{}/\\@#$%^&*_+=~`|<>"
                "éèêëçñüöäßøåæœ" "ΑΒΓαβγ" "абвгд" "中文字日本" "🙂🐶🎉" "\u00a0\u200b\t")
    words = ["photo", "dog", "cat", "of", "a", "the", "tench", "goldfish", "great", "white", "shark", "mud",
             "turtle", "n't", "'s", "!", "?", ",", "don't", "jalapeño", "Zürich", "東京", "🍕"]
    random = ["".join(rng.choice(pool, size=rng.integers(1, 40))) for _ in range(150)]
    sentences = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(100)]
    return fixed + random + sentences


def test_tokenizer_known_ids():
    tokens = default_tokenizer().tokenize(["a photo of a dog", "cat"])
    assert tokens.shape == (2, 77) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[0, :8], [49406, 320, 1125, 539, 320, 1929, 49407, 0])
    assert tokens[0, 8:].sum() == 0
    assert default_tokenizer().vocab_size == 49408


def test_tokenizer_matches_openai_simple_tokenizer():
    require_module("ftfy")  # the reference cleans with ftfy; ours does too when it is installed
    reference = _openai_module("simple_tokenizer").SimpleTokenizer()
    ours = default_tokenizer()
    strings = _strings()
    assert len(strings) >= 300
    mismatches = [s for s in strings if ours.encode(s) != reference.encode(s)]
    assert not mismatches, f"{len(mismatches)} strings tokenise differently, e.g. {mismatches[:3]!r}"
    # Round trip through decode, as the reference decodes.
    for s in strings[:60]:
        ids = ours.encode(s)
        assert ours.decode(ids) == reference.decode(ids)


def test_tokenize_truncates_like_open_clip():
    ours = ClipTokenizer(context_length=77)
    long = "word " * 100
    row = ours.tokenize(long)[0]
    assert row[0] == 49406 and row[-1] == 49407 and (row[1:-1] > 0).all()
    short = ClipTokenizer(context_length=5).tokenize(["a photo of a dog"])[0]
    np.testing.assert_array_equal(short, [49406, 320, 1125, 539, 49407])


def test_tokenizer_missing_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(XaiJaxError, match="BPE vocabulary not found"):
        ClipTokenizer(tmp_path / "nope.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(XaiJaxError, match="not a gzipped CLIP BPE"):
        ClipTokenizer(bad)


# --------------------------------------------------------------------------------------------- models


def _hf_clip(config: clip.ClipConfig, activation: str = "quick_gelu", seed: int = 0):
    torch = require_module("torch")
    transformers = require_module("transformers")
    hf_config = transformers.CLIPConfig(
        text_config=dict(vocab_size=config.vocab, hidden_size=config.text_width, intermediate_size=config.text_mlp,
                         num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
                         max_position_embeddings=config.context_length, projection_dim=config.embed_dim,
                         hidden_act=activation),
        vision_config=dict(hidden_size=config.vision_width, intermediate_size=config.vision_mlp,
                           num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                           image_size=config.image_size, patch_size=config.patch, projection_dim=config.embed_dim,
                           hidden_act=activation),
        projection_dim=config.embed_dim)
    torch.manual_seed(seed)
    return _perturb(transformers.CLIPModel(hf_config).eval(), seed)


def _torch_features(output):
    return getattr(output, "pooler_output", output).detach().numpy()


def _texts():
    return ["a photo of a dog", "A photo of a", "hello, world! naïve café 🙂", "", "word " * 100,
            "a photo of a hot-air balloon"]


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_hf_clip_parity(tmp_path, activation):
    torch = require_module("torch")
    config = clip.CONFIGS["tiny"]
    reference = _hf_clip(config, activation)
    reference.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors, as users have them
    model = clip_weights.load(tmp_path / "hf")
    assert model.config == (config if activation == "quick_gelu" else
                            clip.ClipConfig(**{**config.__dict__, "name": "custom", "activation": "gelu"}))
    assert model.logit_scale == pytest.approx(float(reference.logit_scale.exp()), rel=1e-6)

    pixels = np.random.default_rng(1).normal(size=(5, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = _torch_features(reference.get_image_features(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    got = np.asarray(model.image_fn(model.params, pixels))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(expected).max() > 0.5  # not a degenerate comparison

    tokens = model.tokenize(_texts())
    with torch.no_grad():
        expected = _torch_features(reference.get_text_features(input_ids=torch.from_numpy(tokens).long()))
    np.testing.assert_allclose(model.encode_texts(_texts(), batch_size=4), expected, atol=1e-4, rtol=1e-4)
    # Distinct texts give distinct embeddings (the end token is read at the right position).
    assert np.abs(expected[0] - expected[5]).max() > 1e-2


def test_hf_state_dict_without_config_json():
    """A bare state dict: shapes from the tensors, 64-dimensional heads assumed (here: 2 heads of 64)."""
    config = clip.ClipConfig(name="custom", image_size=24, patch=8, vision_width=128, vision_layers=1,
                             vision_heads=2, vision_mlp=96, text_width=128, text_layers=1, text_heads=2,
                             text_mlp=80, embed_dim=16, context_length=77, vocab=49408)
    torch = require_module("torch")
    reference = _hf_clip(config, seed=3)
    tensors = {k: v.numpy() for k, v in reference.state_dict().items()}
    got_config, params = convert_hf(tensors)
    assert got_config == config
    model = clip.ClipModel(got_config, params)
    pixels = np.random.default_rng(2).normal(size=(3, 24, 24, 3)).astype(np.float32)
    with torch.no_grad():
        expected = _torch_features(reference.get_image_features(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    np.testing.assert_allclose(model.image_fn(model.params, pixels), expected, atol=1e-4, rtol=1e-4)


def _openai_clip(seed: int = 0):
    torch = require_module("torch")
    model_py = _openai_module("model")
    torch.manual_seed(seed)
    reference = model_py.CLIP(embed_dim=48, image_resolution=40, vision_layers=2, vision_width=128,
                              vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=128,
                              transformer_heads=2, transformer_layers=3).eval()
    return _perturb(reference, seed)


@pytest.mark.parametrize("form", ["torchscript", "state_dict"])
def test_openai_clip_parity(tmp_path, form):
    """OpenAI's own model.py; its released checkpoints are traced TorchScript archives like the one here."""
    torch = require_module("torch")
    reference = _openai_clip()
    tokens = default_tokenizer().tokenize(_texts())
    pixels = np.random.default_rng(3).normal(size=(4, 40, 40, 3)).astype(np.float32)
    images_t = torch.from_numpy(pixels.transpose(0, 3, 1, 2))
    path = tmp_path / "ViT-custom.pt"
    if form == "torchscript":
        torch.jit.trace(reference, (images_t[:1], torch.from_numpy(tokens[:1]).long())).save(str(path))
    else:
        torch.save(reference.state_dict(), path)
    model = clip_weights.load(path)
    assert (model.config.vision_heads, model.config.text_heads, model.config.text_layers) == (2, 2, 3)
    with torch.no_grad():
        expected_images = reference.encode_image(images_t).numpy()
        expected_texts = reference.encode_text(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(model.image_fn(model.params, pixels), expected_images, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.encode_texts(_texts()), expected_texts, atol=1e-4, rtol=1e-4)
    assert model.logit_scale == pytest.approx(float(reference.logit_scale.exp()), rel=1e-6)


def test_named_configs_have_openai_parameter_counts():
    """ViT-B/32 and ViT-B/16 as OpenAI released them: 151,277,313 and 149,620,737 parameters."""
    counts = {}
    for name in ("ViT-B/32", "ViT-B/16"):
        shapes = jax.eval_shape(lambda name=name: clip.init_params(clip.CONFIGS[name], jax.random.key(0)))
        counts[name] = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert counts == {"ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737}


def test_encode_images_preprocesses_like_pil():
    """Any size and uint8 or [0, 1] floats in: shorter side resized (bicubic), centre crop, CLIP mean/std."""
    from PIL import Image
    model = clip.tiny(jax.random.key(1))
    rng = np.random.default_rng(4)
    for h, w in ((45, 61), (100, 37), (20, 28)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # OpenAI's preprocess: torchvision Resize(32, bicubic) on a PIL image, then CenterCrop(32).
        nh, nw = (32, int(32 * w / h)) if h <= w else (int(32 * h / w), 32)
        pil = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC), np.float32) / 255
        top, left = int(round((nh - 32) / 2)), int(round((nw - 32) / 2))
        expected = (pil[top:top + 32, left:left + 32] - np.asarray(clip.CLIP_MEAN)) / np.asarray(clip.CLIP_STD)
        got = model.preprocess(image[None])[0]
        error = np.abs(got - expected) * np.asarray(clip.CLIP_STD)  # in [0, 1] pixel units
        assert error.mean() < 5e-3 and error.max() < 0.1, (h, w, error.mean(), error.max())
        if h == 20:
            np.testing.assert_allclose(model.preprocess(image[None].astype(np.float32) / 255)[0], got, atol=1e-5)
    images = rng.integers(0, 256, (7, 48, 40, 3), dtype=np.uint8)
    embeddings = model.encode_images(images, batch_size=4)
    assert embeddings.shape == (7, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, np.asarray(model.image_fn(model.params, model.preprocess(images))),
                               atol=1e-5)
    # A list of images of different sizes, and greyscale.
    mixed = model.encode_images([images[0], images[1, :40, :33]])
    np.testing.assert_allclose(mixed[0], embeddings[0], atol=1e-5)
    assert model.encode_images(images[..., 0]).shape == (7, 32)
    with pytest.raises(XaiJaxError, match=r"\[N, H, W, 3\]"):
        model.encode_images(np.zeros((2, 8, 8, 5), np.uint8))


def test_encoders_compile_once_per_batch_shape():
    model = clip.tiny(jax.random.key(2))
    traces = []
    text_module = clip.TextTransformer(model.config)

    def counting_text_fn(params, tokens):
        traces.append(tokens.shape)
        return text_module.apply({"params": params["text"]}, tokens)

    model.text_fn = jax.jit(counting_text_fn)
    texts = [f"a photo of a {w}" for w in "abcdefghijklm"]  # 13 texts: batches of 4, the last one padded
    out = model.encode_texts(texts, batch_size=4)
    assert traces == [(4, 8)]  # 7 tokens each, end token included: 8 positions, not the context's 77
    np.testing.assert_allclose(out, model.encode_texts(texts, batch_size=16), atol=1e-5)
    assert model.encode_texts([]).shape == (0, 32)


def test_texts_cut_after_their_end_token_embed_as_at_full_length():
    model = clip.tiny(jax.random.key(3))
    rng = np.random.default_rng(0)
    words = ["dog", "a very long and winding description of a striped animal on a beach at dusk", "cat",
             "red", "two birds on a wire", "x " * 40, "sky"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(37)]
    tokens = model.tokenize(texts)
    full = np.asarray(model.text_fn(model.params, jnp.asarray(tokens)))  # all 77 positions, in one batch
    ends = np.argmax(tokens == model.config.eot_token, axis=1)
    assert ends.min() < 8 and ends.max() > 40  # short and long texts, in batches of 8 sorted by length
    np.testing.assert_allclose(model.encode_tokens(tokens, batch_size=8), full, rtol=1e-5, atol=1e-5)
    # a row without an end token is read at position 0, as the full-length tower reads it
    no_end = tokens[:3].copy()
    no_end[1] = np.where(no_end[1] == model.config.eot_token, 1, no_end[1])
    np.testing.assert_allclose(model.encode_tokens(no_end), np.asarray(model.text_fn(model.params, no_end)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(XaiJaxError, match=r"\[M, L\]"):
        model.encode_tokens(tokens[0])


def test_load_errors_name_the_accepted_formats(tmp_path):
    with pytest.raises(XaiJaxError, match="no CLIP weights ship with xai_jax.*OpenAI.*Hugging Face"):
        clip_weights.load(tmp_path / "ViT-B-32.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(XaiJaxError, match="without config.json"):
        clip_weights.load(tmp_path / "empty")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(XaiJaxError, match="not a readable PyTorch checkpoint"):
        clip_weights.load(garbage)
    torch = require_module("torch")
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, wrong)
    with pytest.raises(XaiJaxError, match="not a CLIP checkpoint of a known layout.*OpenAI"):
        clip_weights.load(wrong)
    rn = tmp_path / "rn50.pth"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(4, 3, 1, 1)}, rn)
    with pytest.raises(XaiJaxError, match="ResNet CLIP"):
        clip_weights.load(rn)
    # A checkpoint missing a tensor.
    tensors = {k: v.detach().numpy() for k, v in _openai_clip().state_dict().items()}
    del tensors["visual.ln_post.bias"]
    with pytest.raises(XaiJaxError, match="visual.ln_post.bias"):
        convert_openai(tensors)
    hf_dir = tmp_path / "other"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (hf_dir / "model.safetensors").write_bytes(b"")
    with pytest.raises(XaiJaxError, match="not a Hugging Face CLIPModel"):
        clip_weights.load(hf_dir)
    with pytest.raises(XaiJaxError, match="unknown CLIP config"):
        clip.create("ViT-Q/7", jax.random.key(0))
