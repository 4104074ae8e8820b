"""CLIP checkpoints -> :mod:`xai_jax.models.clip` parameters: OpenAI's layout and Hugging Face's ``CLIPModel``.

OpenAI (``ViT-B-32.pt`` from openai/CLIP, also open_clip's ViT checkpoints): ``visual.conv1.weight``,
``visual.transformer.resblocks.{i}.attn.in_proj_weight`` (q, k and v stacked), ``visual.proj`` ``[W, D]``,
``token_embedding.weight``, ``transformer.resblocks.{i}...``, ``text_projection`` ``[W, D]``, ``logit_scale``.
OpenAI's own files are TorchScript archives; they are opened with ``torch.jit.load(path, map_location="cpu")``
and only their ``state_dict()`` is used (plain state dicts are read weights-only).

Hugging Face (``CLIPModel.save_pretrained``): ``vision_model.embeddings.patch_embedding.weight``,
``vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``vision_model.pre_layrnorm`` (sic),
``visual_projection.weight`` ``[D, W]``, ``text_model...``, ``text_projection.weight``, ``logit_scale``.

Shapes come from the tensors; what tensors cannot tell (heads, activation, end-token id) comes from
``config.json`` when there is one, else OpenAI's conventions (64-dimensional heads, QuickGELU, id 49407).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Mapping

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.models.clip import CONFIGS, ClipConfig, ClipModel
from xai_jax.weights.layout import StateDict, strip_prefix
from xai_jax.weights.torch_reader import read_safetensors, read_torch_state_dict

ACCEPTED = ("an OpenAI CLIP checkpoint (ViT-B-32.pt / ViT-B-16.pt, TorchScript or state dict), "
            "a Hugging Face CLIPModel directory (config.json + model.safetensors or pytorch_model.bin), "
            "or a state-dict file (.pt/.pth/.bin/.safetensors) of either layout")
NO_WEIGHTS = "no CLIP weights ship with xai_jax and none are downloaded"

# Integers OpenAI's TorchScript archives keep beside the weights.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.fullmatch(k))})


def _named(config: ClipConfig) -> ClipConfig:
    """Gives the config a known name ("ViT-B/32") when its shapes are those of one."""
    for name, known in CONFIGS.items():
        if dataclasses.replace(config, name=name) == known:
            return known
    return config


def detect_layout(tensors: Mapping[str, np.ndarray]) -> str:
    """"openai" or "hf"; raises with the accepted layouts otherwise."""
    if "visual.conv1.weight" in tensors and "visual.proj" in tensors:
        return "openai"
    if "vision_model.embeddings.patch_embedding.weight" in tensors:
        return "hf"
    if any(k.startswith("visual.layer1.") for k in tensors):
        raise XaiJaxError("this is a ResNet CLIP (RN50 and kin); only ViT CLIP models are supported")
    example = ", ".join(sorted(tensors)[:3]) or "no tensors"
    raise XaiJaxError(f"not a CLIP checkpoint of a known layout (first keys: {example}); expected {ACCEPTED}")


# ---------------------------------------------------------------------------------------------- OpenAI


def openai_config(tensors: Mapping[str, np.ndarray], **overrides) -> ClipConfig:
    """The :class:`ClipConfig` of an OpenAI-layout state dict (as OpenAI's ``build_model`` infers it)."""
    keys = list(tensors)
    vision_width, _, patch, _ = tensors["visual.conv1.weight"].shape
    grid = round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = tensors["ln_final.weight"].shape[0]
    fields = dict(
        image_size=patch * grid, patch=patch,
        vision_width=vision_width,
        vision_layers=_count(keys, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"),
        vision_heads=vision_width // 64,
        vision_mlp=tensors["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        text_width=text_width,
        text_layers=_count(keys, r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"),
        text_heads=text_width // 64,
        text_mlp=tensors["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        embed_dim=tensors["text_projection"].shape[1],
        context_length=tensors["positional_embedding"].shape[0],
        vocab=tensors["token_embedding.weight"].shape[0],
    )
    fields["eot_token"] = fields["vocab"] - 1  # OpenAI reads argmax(ids): the top id, <|endoftext|>
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return _named(ClipConfig(**fields))


def _openai_block(sd: StateDict, prefix: str) -> dict:
    qkv_w = sd.take(f"{prefix}.attn.in_proj_weight")
    qkv_b = sd.take(f"{prefix}.attn.in_proj_bias")
    q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
    q_b, k_b, v_b = np.split(qkv_b, 3)
    return {
        "ln_1": _layer_norm(sd, f"{prefix}.ln_1"),
        "query": {"kernel": q_w.T, "bias": q_b},
        "key": {"kernel": k_w.T, "bias": k_b},
        "value": {"kernel": v_w.T, "bias": v_b},
        "out": sd.linear(f"{prefix}.attn.out_proj"),
        "ln_2": _layer_norm(sd, f"{prefix}.ln_2"),
        "c_fc": sd.linear(f"{prefix}.mlp.c_fc"),
        "c_proj": sd.linear(f"{prefix}.mlp.c_proj"),
    }


def _layer_norm(sd: StateDict, prefix: str) -> dict:
    return {"scale": sd.take(f"{prefix}.weight"), "bias": sd.take(f"{prefix}.bias")}


def convert_openai(tensors: Mapping[str, np.ndarray], config: ClipConfig | None = None, **overrides):
    """OpenAI-layout state dict -> ``(config, params)``.

    Args:
      tensors: name -> array, as ``torch.jit.load(...).state_dict()`` or open_clip's ``state_dict()`` has it.
      config: the shapes; inferred from the tensors if None.
      overrides: :class:`ClipConfig` fields the tensors cannot tell (``vision_heads``, ``text_heads``,
        ``activation="gelu"`` for LAION/open_clip models trained without QuickGELU).
    """
    tensors = {k: v for k, v in tensors.items() if k not in _OPENAI_EXTRAS}
    config = config or openai_config(tensors, **overrides)
    sd = StateDict(tensors, "OpenAI CLIP checkpoint")
    visual = {
        "conv1": sd.conv("visual.conv1"),
        "class_embedding": sd.take("visual.class_embedding"),
        "positional_embedding": sd.take("visual.positional_embedding"),
        "ln_pre": _layer_norm(sd, "visual.ln_pre"),
        "ln_post": _layer_norm(sd, "visual.ln_post"),
        "proj": sd.take("visual.proj"),
        **{f"block{i}": _openai_block(sd, f"visual.transformer.resblocks.{i}") for i in range(config.vision_layers)},
    }
    text = {
        "token_embedding": {"embedding": sd.take("token_embedding.weight")},
        "positional_embedding": sd.take("positional_embedding"),
        "ln_final": _layer_norm(sd, "ln_final"),
        "text_projection": sd.take("text_projection"),
        **{f"block{i}": _openai_block(sd, f"transformer.resblocks.{i}") for i in range(config.text_layers)},
    }
    logit_scale = sd.take("logit_scale").reshape(())
    sd.finish()
    _check_shapes(config, visual, text)
    return config, {"visual": visual, "text": text, "logit_scale": logit_scale}


# ---------------------------------------------------------------------------------------- Hugging Face


def hf_config(tensors: Mapping[str, np.ndarray], hf_json: Mapping | None = None, **overrides) -> ClipConfig:
    """The :class:`ClipConfig` of a Hugging Face ``CLIPModel`` state dict (+ its ``config.json`` if known)."""
    keys = list(tensors)
    hf_json = dict(hf_json or {})
    vision_json = hf_json.get("vision_config") or {}
    text_json = hf_json.get("text_config") or {}
    patch_w = tensors["vision_model.embeddings.patch_embedding.weight"]
    vision_width, patch = patch_w.shape[0], patch_w.shape[-1]
    grid = round((tensors["vision_model.embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5)
    text_width = tensors["text_model.final_layer_norm.weight"].shape[0]
    vocab = tensors["text_model.embeddings.token_embedding.weight"].shape[0]
    # config.json (written with only the values that differ from transformers' defaults) -> those defaults.
    have_json = bool(hf_json)
    eos = text_json.get("eos_token_id", 49407)
    activations = {vision_json.get("hidden_act", "quick_gelu"), text_json.get("hidden_act", "quick_gelu")}
    if len(activations) != 1 or not activations <= {"quick_gelu", "gelu"}:
        raise XaiJaxError(f"unsupported CLIP activations {sorted(activations)} (quick_gelu or gelu, the same in "
                          "both towers)")
    eps = {vision_json.get("layer_norm_eps", 1e-5), text_json.get("layer_norm_eps", 1e-5)}
    if len(eps) != 1:
        raise XaiJaxError(f"different layer-norm eps in the two towers ({sorted(eps)}) is not supported")
    fields = dict(
        image_size=patch * grid, patch=patch,
        vision_width=vision_width,
        vision_layers=_count(keys, r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight"),
        vision_heads=vision_json.get("num_attention_heads", 12) if have_json else vision_width // 64,
        vision_mlp=tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        text_width=text_width,
        text_layers=_count(keys, r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight"),
        text_heads=text_json.get("num_attention_heads", 8) if have_json else text_width // 64,
        text_mlp=tensors["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        embed_dim=tensors["text_projection.weight"].shape[0],
        context_length=tensors["text_model.embeddings.position_embedding.weight"].shape[0],
        vocab=vocab,
        # eos_token_id 2 is the legacy value, for which transformers reads argmax(ids) like OpenAI.
        eot_token=vocab - 1 if eos == 2 else int(eos),
        activation=activations.pop(),
        layer_norm_eps=float(eps.pop()),
    )
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return _named(ClipConfig(**fields))


def _hf_block(sd: StateDict, prefix: str) -> dict:
    return {
        "ln_1": _layer_norm(sd, f"{prefix}.layer_norm1"),
        "query": sd.linear(f"{prefix}.self_attn.q_proj"),
        "key": sd.linear(f"{prefix}.self_attn.k_proj"),
        "value": sd.linear(f"{prefix}.self_attn.v_proj"),
        "out": sd.linear(f"{prefix}.self_attn.out_proj"),
        "ln_2": _layer_norm(sd, f"{prefix}.layer_norm2"),
        "c_fc": sd.linear(f"{prefix}.mlp.fc1"),
        "c_proj": sd.linear(f"{prefix}.mlp.fc2"),
    }


def convert_hf(tensors: Mapping[str, np.ndarray], hf_json: Mapping | None = None,
               config: ClipConfig | None = None, **overrides):
    """Hugging Face ``CLIPModel`` state dict -> ``(config, params)``.

    Args:
      tensors: name -> array (``model.state_dict()`` or ``model.safetensors``).
      hf_json: the parsed ``config.json`` (for heads, activation, eps and the end-token id); without it
        64-dimensional heads and QuickGELU are assumed.
      config: the shapes; inferred if None. ``overrides``: as in :func:`convert_openai`.
    """
    tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    config = config or hf_config(tensors, hf_json, **overrides)
    sd = StateDict(tensors, "Hugging Face CLIP checkpoint")
    v, t = "vision_model", "text_model"
    visual = {
        "conv1": sd.conv(f"{v}.embeddings.patch_embedding"),
        "class_embedding": sd.take(f"{v}.embeddings.class_embedding"),
        "positional_embedding": sd.take(f"{v}.embeddings.position_embedding.weight"),
        "ln_pre": _layer_norm(sd, f"{v}.pre_layrnorm"),
        "ln_post": _layer_norm(sd, f"{v}.post_layernorm"),
        "proj": sd.take("visual_projection.weight").T,
        **{f"block{i}": _hf_block(sd, f"{v}.encoder.layers.{i}") for i in range(config.vision_layers)},
    }
    text = {
        "token_embedding": {"embedding": sd.take(f"{t}.embeddings.token_embedding.weight")},
        "positional_embedding": sd.take(f"{t}.embeddings.position_embedding.weight"),
        "ln_final": _layer_norm(sd, f"{t}.final_layer_norm"),
        "text_projection": sd.take("text_projection.weight").T,
        **{f"block{i}": _hf_block(sd, f"{t}.encoder.layers.{i}") for i in range(config.text_layers)},
    }
    logit_scale = sd.take("logit_scale").reshape(())
    sd.finish()
    _check_shapes(config, visual, text)
    return config, {"visual": visual, "text": text, "logit_scale": logit_scale}


def _check_shapes(config: ClipConfig, visual: dict, text: dict) -> None:
    """Compares the converted arrays with a freshly initialised model's shapes (catches a wrong config)."""
    import jax

    from xai_jax.models.clip import init_params
    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    for tower, got in (("visual", visual), ("text", text)):
        want = jax.tree.map(lambda a: tuple(a.shape), expected[tower])
        have = jax.tree.map(lambda a: tuple(np.shape(a)), got)
        if want != have:
            raise XaiJaxError(f"CLIP {tower} tower: converted shapes do not match config {config.name!r}")


# ---------------------------------------------------------------------------------------------- files


def _is_torchscript(path: pathlib.Path) -> bool:
    """A TorchScript archive is a zip with ``code/`` and ``constants.pkl`` beside the tensors."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not _is_torchscript(path):
        return strip_prefix(read_torch_state_dict(path))
    # OpenAI's released .pt files are TorchScript archives: load on the CPU, keep only the weights.
    try:
        import torch
    except ImportError:
        raise XaiJaxError("reading OpenAI CLIP .pt files needs the torch extra: pip install 'xai-jax[torch]'") from None
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError with pages of TorchScript context
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise XaiJaxError(f"{path}: a TorchScript archive torch.jit.load cannot read ({first[:200]})") from None
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in module.state_dict().items()}


def read_clip_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """``(tensors, hf_config_json_or_None)`` from a file or a Hugging Face directory."""
    path = pathlib.Path(path)
    if not path.exists():
        raise XaiJaxError(f"CLIP weights not found: {path} ({NO_WEIGHTS}); pass {ACCEPTED}")
    if path.is_dir():
        config_file = path / "config.json"
        weights = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not config_file.is_file() or not weights:
            raise XaiJaxError(f"{path}: a directory without config.json and model.safetensors/pytorch_model.bin; "
                              f"expected {ACCEPTED}")
        try:
            hf_json = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise XaiJaxError(f"{config_file}: unreadable JSON ({err})") from None
        if hf_json.get("model_type") not in (None, "clip"):
            raise XaiJaxError(f"{path}: a {hf_json.get('model_type')!r} model, not a Hugging Face CLIPModel")
        return _read_file(weights[0]), hf_json
    return _read_file(path), None


def convert_clip(tensors: Mapping[str, np.ndarray], hf_json: Mapping | None = None, **overrides):
    """A state dict of either layout -> ``(config, params)`` (the layout is detected from the names)."""
    tensors = strip_prefix(tensors)
    if detect_layout(tensors) == "openai":
        return convert_openai(tensors, **overrides)
    return convert_hf(tensors, hf_json, **overrides)


def load_clip(path: str | os.PathLike, *, vision_heads: int | None = None, text_heads: int | None = None,
              activation: str | None = None, config: ClipConfig | None = None):
    """Reads and converts CLIP weights.

    Args:
      path: an OpenAI ``.pt`` (TorchScript or state dict), a Hugging Face ``CLIPModel`` directory, or a state
        dict file (``.pt``/``.pth``/``.bin``/``.safetensors``) of either layout.
      vision_heads, text_heads, activation: override what the tensors cannot tell (see module docstring).
      config: the full :class:`ClipConfig`, skipping inference.

    Returns:
      ``(config, params)`` for :class:`xai_jax.models.clip.ClipModel`.

    Raises:
      XaiJaxError: the path is missing or not a CLIP checkpoint; the message names the accepted formats.
    """
    tensors, hf_json = read_clip_checkpoint(path)
    return convert_clip(tensors, hf_json, config=config, vision_heads=vision_heads, text_heads=text_heads,
                        activation=activation)


def load(path: str | os.PathLike, **kwargs) -> ClipModel:
    """Loads CLIP weights the user has into a :class:`~xai_jax.models.clip.ClipModel` (none ship with the library
    and nothing is downloaded).

    Accepted: an OpenAI checkpoint (``ViT-B-32.pt``, a TorchScript archive, or a state dict of that layout as
    ``.pt``/``.pth``/``.safetensors``), a Hugging Face ``CLIPModel`` directory (``config.json`` +
    ``model.safetensors`` or ``pytorch_model.bin``) or a Hugging Face state-dict file; ``kwargs`` as
    :func:`load_clip` takes them.
    """
    config, params = load_clip(path, **kwargs)
    return ClipModel(config, params)
