"""Every pass timed against the ceiling of the device it runs on, in one command (issue "ready for the accelerator").

    PYTHONPATH=. python experiments/bench_device.py --out DIR            # the full sizes (an H100/H200-class GPU)
    PYTHONPATH=. python experiments/bench_device.py --smoke --out DIR    # every row at tiny sizes (CPU, CI)
    PYTHONPATH=. python experiments/bench_device.py --rows backbone,nma --out DIR

The ceilings are measured in the same run: dense matrix products in float32 and bfloat16 (the FLOP/s a row can
reach) and a large on-device copy (the bytes/s). Each row counts its own work from XLA's cost analysis of the
compiled program (FLOPs and bytes accessed), so "fraction of ceiling" is achieved rate / ceiling of the resource
that bounds it (the larger of the two fractions). Inputs are random, generated on the device, never zeros.

Writes ``DIR/bench_device.json`` (device, versions, date, every row) and ``DIR/bench_device.md`` (the table for
BENCHMARKS.md). Runs from the repository root with no install step: nothing on this path imports nltk, the
installed package's metadata, or a file outside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]  # the repository (xai_jax) and experiments/ (benchutil), no install

from benchutil import median_seconds  # noqa: E402

from xai_jax import __version__, engine, models  # noqa: E402
from xai_jax.data import ArraySource  # noqa: E402
from xai_jax.kernels import clustering, near_miss, www  # noqa: E402
from xai_jax.kernels.floyd_warshall import floyd_warshall_auto  # noqa: E402
from xai_jax.outputs import atomic_dir, check_output  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes of every row: ``full`` on an accelerator, ``smoke`` on a CPU in CI."""

    matmul: int
    copy_mib: int
    backbone: str
    contribution_tap: str
    batch: int
    nma_classes: tuple[int, ...]
    fw_classes: tuple[int, ...]
    neurons: int
    concepts: int
    kmeans_points: int
    probe_images: int
    dissect_concepts: int
    clip: str
    srae_classes: tuple[int, ...]
    srae_inputs: int
    srae_samples: int
    srae_hidden: tuple[int, ...]


FULL = Sizes(matmul=8192, copy_mib=4096, backbone="resnet50", contribution_tap="layer4", batch=256, nma_classes=(1000, 21841),
             fw_classes=(1000, 5000, 21841), neurons=2048, concepts=82115, kmeans_points=1_281_167,
             probe_images=50_000, dissect_concepts=20_000, clip="ViT-B/32", srae_classes=(200, 1000),
             srae_inputs=512, srae_samples=5_000, srae_hidden=(800, 100))
SMOKE = Sizes(matmul=1024, copy_mib=64, backbone="resnet18", contribution_tap="layer4", batch=2, nma_classes=(10, 37), fw_classes=(17, 64),
              neurons=16, concepts=100, kmeans_points=500, probe_images=200, dissect_concepts=100, clip="tiny",
              srae_classes=(3,), srae_inputs=16, srae_samples=64, srae_hidden=(8, 4))

#: rows whose one call runs for many seconds at the full sizes are timed once after the warm-up
SLOW_ITEMS = 1e12


@dataclasses.dataclass
class Row:
    name: str
    seconds: float
    flops: float
    bytes: float
    items: float = 0.0
    unit: str = ""
    peer: str = ""
    peer_seconds: float | None = None
    note: str = ""


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call (compilation), each call blocked on its result."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one call, from XLA's cost analysis of a compiled program
    (``jax.jit(f).lower(*args).compile()``)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def jitted_row(name: str, fn, args, repeats: int, **extra) -> Row:
    """``fn(*args)`` compiled once ahead of time: the cost analysis and the timed calls share the program."""
    compiled = jax.jit(fn).lower(*args).compile()
    flops, moved = cost(compiled)
    return Row(name, timed(lambda: compiled(*args), repeats), flops, moved, **extra)


# --- ceilings ----------------------------------------------------------------------------------------------

def ceilings(s: Sizes, key, repeats: int) -> dict[str, float]:
    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(key, (s.matmul, s.matmul), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (s.matmul, s.matmul), dtype)
        seconds = timed(lambda: jnp.matmul(a, b), repeats)
        out[f"flops_{dtype}"] = 2 * s.matmul ** 3 / seconds
    x = jax.random.uniform(key, (s.copy_mib * 2 ** 18,), jnp.float32)  # MiB of float32
    copy = jax.jit(lambda v: v * 1.0000001)  # a read and a write of every byte, not elided
    seconds = timed(lambda: copy(x), repeats)
    out["bytes_per_s"] = 2 * x.nbytes / seconds
    return out


# --- rows --------------------------------------------------------------------------------------------------

def backbone_rows(s: Sizes, key, repeats: int) -> list[Row]:
    name = s.backbone
    spec = models.get(name)
    variables = initialised(lambda k: models.init_variables(spec, k), key)
    images = random_images(key, s.batch, spec)
    rows = []
    for dtype in (None, "bfloat16"):
        forward = models.make_forward(name, compute_dtype=dtype)
        label = dtype or "float32"
        peer, peer_seconds = torch_forward(s, dtype, repeats)
        rows.append(jitted_row(f"{name} forward {label}", lambda x, v: forward(x, v)["logits"],
                               (images, variables), repeats, items=s.batch, unit="img", peer=peer,
                               peer_seconds=peer_seconds))
    # the engine's pass on top of the same forward: host batches of random images, padded, sharded
    host = np.asarray(random_images(jax.random.fold_in(key, 1), 2 * s.batch, spec))
    source = ArraySource(host, np.arange(len(host)) % 1000, [str(i) for i in range(1000)])
    forward = models.make_forward(name)
    step = _predict_step(forward)
    seconds = timed(lambda: engine.collect(engine.map_batches(step, source, variables, batch_size=s.batch,
                                                              progress=False)), repeats)
    base = rows[0]
    rows.append(Row(f"{name} engine predict float32", seconds, 2 * base.flops, 2 * base.bytes, items=len(host),
                    unit="img", note="map_batches over host uint8 batches, one batch in flight"))
    return rows


def initialised(init, *args):
    """Random weights from ``init(*args)`` as one compiled program: run eagerly, every parameter's initialiser
    compiles on its own (dozens of small programs, most of a CPU smoke run)."""
    return jax.jit(init)(*args)


def random_images(key, n: int, spec) -> jax.Array:
    """``n`` uint8 images of random pixels at the model's input size (no resize in the timed program)."""
    return jax.random.randint(key, (n, *spec.input_shape), 0, 256, jnp.int32).astype(jnp.uint8)


def _predict_step(forward):
    def step(batch, variables):
        return forward(batch["images"], variables)["logits"]
    return step


def torch_device() -> str | None:
    """PyTorch's device of the kind JAX runs on ("cuda" beside a JAX GPU, else "cpu"), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_synchronize(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def torch_backbone(name: str, device: str):
    """``(label, model)``: torchvision's ``name`` in eval mode on ``device``, else (no torchvision) the
    repository's PyTorch reference of the same architecture (``tests/torch_ref_resnet_vgg.py``, torchvision's
    layout, which the converter tests check layer by layer)."""
    try:
        import torchvision
        return f"torchvision {name}", getattr(torchvision.models, name)().eval().to(device)
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))
        import torch_ref_resnet_vgg
        return f"PyTorch {name} (tests' reference)", getattr(torch_ref_resnet_vgg, name)().eval().to(device)


def torch_forward(s: Sizes, dtype: str | None, repeats: int) -> tuple[str, float | None]:
    """The backbone in PyTorch on the same device kind, eval mode, ``inference_mode`` (bf16 autocast)."""
    device = torch_device()
    if device is None:
        return "", None
    import torch
    label, model = torch_backbone(s.backbone, device)
    x = torch.rand(s.batch, 3, 224, 224, device=device)

    def run():
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        torch_synchronize(device)
        return out

    return f"{label}, eval, inference_mode" + (", bf16 autocast" if dtype else ""), median_seconds(run, repeats)


def taylor_shapley_rows(s: Sizes, key, repeats: int) -> list[Row]:
    """WWW's class-contribution step at the backbone's ``contribution_tap`` (the library's step: one
    ``jax.vjp`` per batch and the per-class sums), against the same contributions through ``torch.func.vjp``."""
    from xai_jax.methods.www import passes as www_passes
    name, tap = s.backbone, s.contribution_tap
    spec = models.get(name)
    variables = initialised(lambda k: models.init_variables(spec, k), key)
    shape = models.tap_shapes(name)[tap]
    batch = {"images": random_images(key, s.batch, spec), "labels": jnp.zeros(s.batch, jnp.int32),
             "mask": jnp.ones(s.batch, bool), "index": jnp.arange(s.batch)}
    rows = []
    for dtype in (None, "bfloat16"):
        step = www_passes.class_step(name, tap, None, "signed", "prediction", shape, dtype)
        state = www.class_sums_init(spec.num_classes, shape[-1])
        peer, peer_seconds = torch_taylor_shapley(s, dtype, repeats)
        rows.append(jitted_row(f"Taylor-Shapley {name} {tap} {dtype or 'float32'}", step, (state, batch, variables),
                               repeats, items=s.batch, unit="img", peer=peer, peer_seconds=peer_seconds))
    return rows


def torch_taylor_shapley(s: Sizes, dtype: str | None, repeats: int) -> tuple[str, float | None]:
    """``w = sum_hw a * d logit_c / d a`` at ``layer4`` for the predicted class: the backbone in ``no_grad``, the
    head through ``torch.func.vjp`` (what the JAX vjp computes: nothing before the layer is differentiated)."""
    device = torch_device()
    if device is None or s.contribution_tap != "layer4":
        return "", None
    import torch
    label, model = torch_backbone(s.backbone, device)
    body = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                               model.layer3, model.layer4)

    def head(a):
        return model.fc(torch.flatten(model.avgpool(a), 1))

    x = torch.rand(s.batch, 3, 224, 224, device=device)

    def run():
        with torch.autocast(device, torch.bfloat16, enabled=dtype is not None):
            with torch.no_grad():
                a = body(x)
            logits, pullback = torch.func.vjp(head, a)
            seed = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
            (g,) = pullback(seed)
            w = (a * g).sum((2, 3))
        torch_synchronize(device)
        return w

    return f"{label}, torch.func.vjp at layer4" + (", bf16 autocast" if dtype else ""), median_seconds(run, repeats)


def clip_rows(s: Sizes, key, repeats: int) -> list[Row]:
    """The CLIP image tower (random weights: the cost does not depend on them) on normalised pixels."""
    from xai_jax.models import clip
    config = clip.get_config(s.clip)
    params = initialised(lambda k: clip.init_params(config, k), key)
    pixels = jax.random.normal(key, (s.batch, config.image_size, config.image_size, 3))
    return [jitted_row(f"CLIP {config.name} image tower float32", clip.make_image_fn(config), (params, pixels),
                       repeats, items=s.batch, unit="img")]


def nma_rows(s: Sizes, key, repeats: int) -> list[Row]:
    rows = []
    for c in s.nma_classes:
        n = max(s.batch, 256)
        probs = jax.nn.softmax(4 * jax.random.normal(key, (n, c)), -1)
        labels = jax.random.randint(key, (n,), 0, c)
        mask = jnp.ones(n, bool)
        state = near_miss.near_miss_init(c)
        rows.append(jitted_row(f"near-miss accumulation C={c:,}", lambda st, p, y, m: near_miss.near_miss_update(
            st, p, y, m), (state, probs, labels, mask), repeats, items=n, unit="img"))
    for c in s.fw_classes:
        w = jax.random.uniform(key, (c, c), jnp.float32, 0.01, 1.0)
        rows.append(jitted_row(f"Floyd-Warshall C={c:,}", floyd_warshall_auto, (w,),
                               repeats if float(c) ** 3 < SLOW_ITEMS else 1,
                               items=float(c) ** 3, unit="relax", note="C^3 min-plus relaxations"))
    return rows


def www_rows(s: Sizes, key, repeats: int) -> list[Row]:
    d = 512
    neurons = jax.random.normal(key, (s.neurons, d))
    concepts = jax.random.normal(jax.random.fold_in(key, 1), (s.concepts, d))
    template = jax.random.normal(jax.random.fold_in(key, 2), (d,))
    rows = [jitted_row(f"WWW adaptive cosine {s.neurons:,} x {s.concepts:,}", www.adaptive_cosine_scores,
                       (neurons, concepts, template), repeats, items=s.neurons * s.concepts, unit="score")]
    rows.append(soft_wpmi_row(s, key, repeats))
    return rows


def soft_wpmi_row(s: Sizes, key, repeats: int) -> Row:
    """CLIP-Dissect's soft-WPMI from embeddings at its sizes (``methods.www.clip_dissect``: host arrays in, scores
    out), against CLIP-Dissect's own per-neuron loop on the same device. FLOPs: the similarity product and the
    kernel, from the compiled kernel over every neuron at once."""
    from xai_jax.methods.www import clip_dissect
    p, m, u, d = s.probe_images, s.dissect_concepts, s.neurons, 512
    keys = jax.random.split(key, 3)
    image_emb = np.asarray(jax.random.normal(keys[0], (p, d)))
    concepts = np.asarray(jax.random.normal(keys[1], (m, d)))
    acts = np.asarray(jax.random.normal(keys[2], (p, u)))
    top_k = min(100, p)
    similarity = jax.ShapeDtypeStruct((p, m), jnp.float32)
    flops, moved = cost(jax.jit(lambda sim, act: www.soft_wpmi_log_p_given_e(sim, act, top_k)).lower(
        similarity, jax.ShapeDtypeStruct((p, u), jnp.float32)).compile())
    chunk = max(1, int(2e9 // (top_k * m * 4)))  # about 2 GB of gathered rows per block of neurons
    seconds = median_seconds(lambda: clip_dissect(acts, image_emb, concepts, neuron_chunk=chunk), repeats)
    return Row(f"CLIP-Dissect soft-WPMI {u:,} neurons x {m:,} concepts, {p:,} probe images", seconds,
               flops + 2.0 * p * m * d, moved, items=u, unit="neuron", peer="CLIP-Dissect's per-neuron loop",
               peer_seconds=torch_soft_wpmi(image_emb, concepts, acts, repeats),
               note="host embeddings in, scores out")


def torch_soft_wpmi(image_emb, concepts, acts, repeats: int) -> float | None:
    device = torch_device()
    if device is None:
        return None
    import torch
    from bench_www import clip_dissect_loop
    tensors = [torch.from_numpy(np.array(a)).to(device) for a in (image_emb, concepts, acts)]

    def run():
        with torch.no_grad():
            out = clip_dissect_loop(*tensors)
        torch_synchronize(device)
        return out

    return median_seconds(run, repeats)


def dec_rows(s: Sizes, key, repeats: int) -> list[Row]:
    from bench_dec import mixture, refine_case
    x = jax.random.normal(key, (s.kmeans_points, 20))
    fn = lambda v, k: clustering.kmeans(v, 15, k, n_init=20)  # noqa: E731
    seconds = timed(lambda: fn(x, key), max(1, repeats // 2))
    rows = [Row(f"k-means k=15, 20 restarts, N={s.kmeans_points:,}, e=20", seconds, 0.0, 0.0,
                items=s.kmeans_points, unit="point", note="Lloyd steps vary per restart: no FLOP count")]
    # one refinement round: T = 140 SGD steps of batch 256, then the embedding and target over all N
    host, _ = mixture(s.kmeans_points, 15)
    device = torch_device()
    run_jax, run_torch, _ = refine_case(host, 15, 1, device=device or "cpu")
    seconds = median_seconds(run_jax, max(1, repeats // 2))
    peer = median_seconds(run_torch, max(1, repeats // 2)) if device else None
    rows.append(Row(f"DEC refinement round N={s.kmeans_points:,}, k=15, e=20", seconds, 0.0, 0.0,
                    items=s.kmeans_points, unit="point", peer="bench_dec.py's PyTorch DEC loop", peer_seconds=peer,
                    note="T=140 steps of batch 256 + target over all N; host array in"))
    return rows


def srae_rows(s: Sizes, key, repeats: int) -> list[Row]:
    """One epoch of C one-vs-all SRAE explainers trained at once (one ``vmap``) against one class alone, times C
    (the per-class loop's cost: the classes are independent programs of the same shape)."""
    from bench_xnn import jax_trainer
    from xai_jax.methods.xnn import XNNConfig
    keys = jax.random.split(key, 2)
    c_max = max(s.srae_classes)
    z = np.asarray(jax.random.normal(keys[0], (s.srae_samples, s.srae_inputs)))
    targets = np.asarray(jax.random.normal(keys[1], (s.srae_samples, c_max)))
    w = np.ones_like(targets)
    config = XNNConfig(hidden=s.srae_hidden, epochs=1)
    one = median_seconds(jax_trainer(config, z, targets, w, np.arange(1)), repeats)
    rows = []
    for c in s.srae_classes:
        seconds = median_seconds(jax_trainer(config, z, targets, w, np.arange(c)), repeats)
        rows.append(Row(f"SRAE {c:,} explainers at once, one epoch of {s.srae_samples:,} x {s.srae_inputs}",
                        seconds, 0.0, 0.0, items=c, unit="explainer", peer=f"one class at a time x {c:,}",
                        peer_seconds=one * c, note=f"hidden {s.srae_hidden}; ratio = the vmap's gain"))
    return rows


def cladec_rows(s: Sizes, key, repeats: int) -> list[Row]:
    """ClaDec on its paper's VGG-style classifier (32x32 RGB, layer -2): a decoder training step (eq. 1 with
    alpha = 0.5: the decoder, then the frozen classifier on the reconstruction, and the gradient of both) and the
    16-occlusion relevance pass (Grad-CAM and both relevances for a batch)."""
    import optax
    from xai_jax import train
    from xai_jax.methods.cladec.occlusion import occlusion_step
    from xai_jax.methods.cladec.training import decoder_loss
    from xai_jax.models.cladec import Decoder, layer_tap
    model = "cladec_vgg_rgb"
    spec = models.get(model)
    tap = layer_tap(model, -2)
    classifier = initialised(lambda k: models.init_variables(spec, k), key)
    code_shape = models.tap_shapes(model)[tap]
    decoder = Decoder(3, spec.input_shape[0])
    batch_size = s.batch
    keys = jax.random.split(key, 3)
    code = jax.random.normal(keys[0], (batch_size, *code_shape))
    init = initialised(decoder.init, keys[1], code)
    optimizer = optax.adam(1e-3)
    step = train.make_train_step(decoder_loss(model, decoder, 0.5, "sum"), optimizer)
    state = train.init_state(init["params"], optimizer, classifier)
    data = {"code": code, "x": jax.random.uniform(keys[2], (batch_size, *spec.input_shape)),
            "labels": jax.random.randint(keys[2], (batch_size,), 0, 10)}
    rows = [jitted_row(f"ClaDec decoder training step, batch {batch_size}", step, (state, data, keys[0]), repeats,
                       items=batch_size, unit="img", note=f"{model} {tap}, alpha 0.5")]
    images = jax.random.randint(key, (batch_size, *spec.input_shape), 0, 256, jnp.int32).astype(jnp.uint8)
    fn = occlusion_step(model, tap, None, decoder)
    params = {"classifier": classifier, "decoder": init, "fill": jnp.full((3,), 0.5), "key": keys[1]}
    batch = {"images": images, "labels": jnp.zeros(batch_size, jnp.int32), "index": jnp.arange(batch_size)}
    rows.append(jitted_row(f"ClaDec 16-occlusion relevance, batch {batch_size}", fn, (batch, params), repeats,
                           items=batch_size, unit="img", note="17 classifier + decoder passes per image"))
    return rows


ROWS: dict[str, Callable[[Sizes, jax.Array, int], list[Row]]] = {
    "backbone": backbone_rows, "nma": nma_rows, "taylor_shapley": taylor_shapley_rows, "www": www_rows,
    "clip": clip_rows, "dec": dec_rows, "srae": srae_rows, "cladec": cladec_rows}


def fraction(row: Row, ceiling: dict[str, float], dtype: str) -> float | None:
    parts = []
    if row.flops:
        parts.append(row.flops / row.seconds / ceiling[f"flops_{dtype}"])
    if row.bytes:
        parts.append(row.bytes / row.seconds / ceiling["bytes_per_s"])
    return max(parts) if parts else None


def table(rows: list[dict], device: str) -> str:
    lines = [f"Device: {device}. Fraction: achieved FLOP/s or bytes/s over the ceiling measured in the same run.",
             "", "| row | seconds | rate | fraction of ceiling | PyTorch ratio | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['items'] / r['seconds']:,.0f} {r['unit']}/s" if r["items"] else ""
        frac = "" if r["fraction"] is None else f"{r['fraction']:.2f}"
        ratio = "" if r["peer_seconds"] is None else f"{r['peer_seconds'] / r['seconds']:.2f}x"
        lines.append(f"| {r['name']} | {r['seconds']:.4g} | {rate} | {frac} | {ratio} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--smoke", action="store_true", help="every row at tiny sizes (CPU, CI)")
    parser.add_argument("--rows", help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; smoke 1)")
    args = parser.parse_args(argv)
    wanted = args.rows.split(",") if args.rows else list(ROWS)
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    check_output(args.out, "bench.device")
    sizes, repeats = (SMOKE, args.repeats or 1) if args.smoke else (FULL, args.repeats or 5)
    key = jax.random.key(0)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))"
    started = time.perf_counter()
    ceiling = ceilings(sizes, key, repeats)
    records, group_seconds = [], {}
    for name in wanted:
        group_start = time.perf_counter()
        for row in ROWS[name](sizes, key, repeats):
            record = dataclasses.asdict(row)
            record["fraction"] = fraction(row, ceiling, "bfloat16" if "bfloat16" in row.name else "float32")
            records.append(record)
            print(f"{row.name}: {row.seconds:.4g} s ({time.perf_counter() - started:.0f} s into the run)", flush=True)
        group_seconds[name] = round(time.perf_counter() - group_start, 1)  # compilation included: sizes the run
    bad = [r["name"] for r in records if not math.isfinite(r["seconds"]) or r["seconds"] <= 0]
    if bad:
        raise SystemExit(f"bench_device: rows without a finite time: {', '.join(bad)}")
    summary = {"device": device, "date": datetime.date.today().isoformat(), "xai_jax": __version__,
               "jax": jax.__version__, "python": platform.python_version(), "smoke": args.smoke,
               "ceilings": ceiling, "rows": records, "group_seconds": group_seconds, "seconds": round(time.perf_counter() - started, 1)}
    with atomic_dir(args.out, "bench.device") as tmp:
        with open(os.path.join(tmp, "bench_device.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(tmp, "bench_device.md"), "w") as f:
            f.write(table(records, device))
    print(table(records, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
