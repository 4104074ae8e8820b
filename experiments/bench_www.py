"""WWW's steps against the structure of the reference code, timed in one process.

1. Adaptive cosine scores (eq. 1): the reference loops over neurons, one ``[n, D] x [D, M]`` product each (PyTorch,
   as the authors' code), against xai_jax's one ``[U, D] x [D, M]`` product of per-neuron mean normalised image
   embeddings, with adaptive selection, for concept sets of 1k, 20k and 82k random embeddings (D = 512, n = 40).
2. CLIP-Dissect's soft-WPMI from embeddings: normalised similarity then its per-neuron loop (PyTorch,
   CLIP-Dissect's ``get_similarity_from_activations`` and ``soft_wpmi``) against the batched kernel (blocks of
   neurons). Both sides start from the same image and concept embeddings.
3. Taylor-Shapley contributions on ResNet-56 (real weights, CIFAR-10 test JPEGs): batch-size-1 forward/backward
   (PyTorch, the reference code's loop, and the same loop through JAX's jitted function at batch 1) against one
   ``jax.vjp`` for a batch.

CLIP encoder timings (one string/image at a time vs batched) are in ``experiments/bench_clip.py``.

    python experiments/bench_www.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchutil import DATA, REPO, median_seconds, peer_row
from xai_jax import models, weights
from xai_jax.data import JpegNpzSource
from xai_jax.kernels import www as K
from xai_jax.methods.www import clip_dissect


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def scores_rows(concept_sizes, units: int, loop_units: int, repeats: int) -> list[dict]:
    """Adaptive cosine scores + selection for each concept count: the reference's per-neuron loop (PyTorch, timed
    on ``loop_units`` neurons and scaled to ``units``) against one product for ``units`` neurons (JAX).

    Returns:
      one :func:`benchutil.peer_row` a concept count, with ``concepts``.
    """
    n, dim, probe = 40, 512, 5000
    rng = np.random.default_rng(0)
    image_emb = rng.normal(size=(probe, dim)).astype(np.float32)
    topn = rng.integers(0, probe, size=(n, units)).astype(np.int32)
    rows = []
    for m in concept_sizes:
        concepts = rng.normal(size=(m, dim)).astype(np.float32)
        template = rng.normal(size=dim).astype(np.float32)
        t_img, t_txt, t_tem = torch.from_numpy(image_emb), torch.from_numpy(concepts), torch.from_numpy(template)

        def loop():
            # the reference's structure: for each neuron, its images against every concept
            txt = t_txt / t_txt.norm(dim=-1, keepdim=True)
            tem = t_tem / t_tem.norm()
            out = []
            for u in range(loop_units):
                v = t_img[torch.from_numpy(topn[:, u]).long()]
                v = v / v.norm(dim=-1, keepdim=True)
                s = (v @ txt.T - (v @ tem)[:, None]).mean(0)
                out.append(s >= 0.95 * s.max())
            return out

        img_j, topn_j, txt_j, tem_j = map(jnp.asarray, (image_emb, topn, concepts, template))

        def batched():
            scores = K.adaptive_cosine_scores(K.mean_image_embeddings(img_j, topn_j), txt_j, tem_j)
            return jax.block_until_ready(K.select_concepts(scores, 0.95, 20))

        t_loop = median_seconds(loop, repeats) * units / loop_units
        t_jax = median_seconds(batched, repeats)
        rows.append(peer_row(f"WWW adaptive cosine scores, {m:,} concepts", t_jax, t_loop,
                             f"PyTorch per-neuron loop ({torch.get_num_threads()} threads; {loop_units} neurons, "
                             f"scaled)", f"{units} neurons, {m:,} concepts, D = {dim}", concepts=m))
    return rows


def bench_scores(concept_sizes, units: int, loop_units: int, repeats: int) -> None:
    print(f"\n### Adaptive cosine scores + adaptive selection ({units} neurons, n = 40, D = 512)\n")
    print(f"| concepts | per-neuron loop (PyTorch), {loop_units} neurons, scaled to {units} | xai_jax one product "
          f"(JAX), {units} neurons | ratio |")
    print("|---|---|---|---|")
    for r in scores_rows(concept_sizes, units, loop_units, repeats):
        print(f"| {r['concepts']:,} | {fmt(r['peer_s'])} | {fmt(r['xai_jax_s'])} | {r['ratio']:.1f}x |", flush=True)


def clip_dissect_loop(image_features, text_features, target_feats, top_k=100, a=10, lam=1, min_prob=1e-7,
                      p_start=0.998, p_end=0.97):
    """CLIP-Dissect's similarity (utils.py) and ``soft_wpmi`` (similarity.py), as published, on the inputs' device
    (the two constants it builds are placed there, so that it runs on a GPU too)."""
    device = image_features.device
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    clip_feats = torch.nn.functional.softmax(a * (image_features @ text_features.T), dim=1)
    inds = torch.topk(target_feats, dim=0, k=top_k)[1]
    prob_d_given_e = []
    p_in_examples = p_start - (torch.arange(start=0, end=top_k, device=device) / top_k * (p_start - p_end)).unsqueeze(1)
    for orig_id in range(target_feats.shape[1]):
        curr = clip_feats.gather(0, inds[:, orig_id:orig_id + 1].expand(-1, clip_feats.shape[1]))
        curr_p = 1 + p_in_examples * (curr - 1)
        prob_d_given_e.append(torch.sum(torch.log(curr_p + min_prob), dim=0, keepdim=True))
    prob_d_given_e = torch.cat(prob_d_given_e, dim=0)
    prob_d = torch.logsumexp(prob_d_given_e, dim=0, keepdim=True) - torch.log(prob_d_given_e.shape[0] * torch.ones([1], device=device))
    return prob_d_given_e - lam * prob_d


def soft_wpmi_rows(concept_sizes, units: int, repeats: int, probe: int = 5000) -> list[dict]:
    """CLIP-Dissect's soft-WPMI from embeddings for each concept count: its similarity and per-neuron loop
    (PyTorch) against the batched kernel (JAX), both from the same embeddings.

    Returns:
      one :func:`benchutil.peer_row` a concept count, with ``concepts`` and ``max_abs_diff``.
    """
    dim = 512
    rng = np.random.default_rng(1)
    image_emb = rng.normal(size=(probe, dim)).astype(np.float32)
    acts = rng.normal(size=(probe, units)).astype(np.float32)
    rows = []
    for m in concept_sizes:
        concepts = rng.normal(size=(m, dim)).astype(np.float32)
        t_images, t_concepts, t_acts = torch.from_numpy(image_emb), torch.from_numpy(concepts), torch.from_numpy(acts)
        chunk = max(1, int(2e8 // (100 * m * 4)))             # about 200 MB of gathered rows per block

        def batched():
            return clip_dissect(acts, image_emb, concepts, neuron_chunk=chunk)

        def loop():
            with torch.no_grad():
                return clip_dissect_loop(t_images, t_concepts, t_acts)

        t_loop = median_seconds(loop, repeats)
        t_jax = median_seconds(batched, repeats)
        diff = float(np.abs(loop().numpy() - batched()).max())
        rows.append(peer_row(f"CLIP-Dissect soft-WPMI, {m:,} concepts", t_jax, t_loop,
                             f"PyTorch CLIP-Dissect loop ({torch.get_num_threads()} threads)",
                             f"{units} neurons, {probe:,} probe images, {m:,} concepts", concepts=m,
                             max_abs_diff=diff))
    return rows


def bench_soft_wpmi(concept_sizes, units: int, repeats: int) -> None:
    print(f"\n### CLIP-Dissect soft-WPMI from embeddings ({units} neurons, 5000 probe images, D = 512, "
          "top_k = 100)\n")
    print("| concepts | per-neuron loop (PyTorch, CLIP-Dissect) | batched kernel (JAX) | ratio | max abs difference |")
    print("|---|---|---|---|---|")
    for r in soft_wpmi_rows(concept_sizes, units, repeats):
        print(f"| {r['concepts']:,} | {fmt(r['peer_s'])} | {fmt(r['xai_jax_s'])} | {r['ratio']:.1f}x | "
              f"{r['max_abs_diff']:.1e} |", flush=True)


def contributions_row(batch: int, loop_images: int, repeats: int) -> dict:
    """Taylor-Shapley contributions on ResNet-56 ``pool`` (real weights and JPEGs), per image: the reference's
    PyTorch batch-1 loop over ``loop_images`` against one ``jax.vjp`` for ``batch`` images (asserted equal).

    Returns:
      :func:`benchutil.peer_row` (seconds per image) with ``jax_batch1_s``, the same loop through JAX's jitted
      function at batch 1, per image, and ``batch``.
    """
    sys.path.insert(0, str(REPO / "tests"))
    from torch_ref_resnet_vgg import cifar_resnet
    path = DATA / "cifar10_resnet" / "resnet56-4bfd9763.th"
    test = JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    images, _ = test.read(np.arange(0, len(test), len(test) // batch)[:batch])
    variables = weights.load(models.get("cifar_resnet56"), path)
    net = cifar_resnet(56).eval()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.read_state_dict(path).items()})
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x_torch = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std

    def torch_one(i):
        out = torch.nn.functional.relu(net.bn1(net.conv1(x_torch[i:i + 1])))
        out = net.layer3(net.layer2(net.layer1(out)))
        feats = out.mean(dim=(2, 3))
        feats.retain_grad()
        logits = net.linear(feats)
        logits[0, logits.argmax()].backward()
        return (feats * feats.grad).detach()

    forward = models.make_forward("cifar_resnet56", ("pool",))

    @jax.jit
    def vjp_batch(x, v):
        def from_offset(o):
            out = forward(x, v, {"pool": o})
            return out["logits"], out["pool"]
        return K.taylor_shapley(from_offset, jnp.zeros((x.shape[0], 64)), lambda logits: jnp.argmax(logits, -1))[0]

    def torch_loop():
        return [torch_one(i) for i in range(loop_images)]

    def jax_loop():
        return [jax.block_until_ready(vjp_batch(images[i:i + 1], variables)) for i in range(loop_images)]

    def jax_batch():
        return jax.block_until_ready(vjp_batch(images, variables))

    ref = torch.cat(torch_loop()).numpy()
    np.testing.assert_allclose(np.asarray(jax_batch())[:loop_images], ref, rtol=1e-3, atol=1e-4)
    t_torch = median_seconds(torch_loop, repeats) / loop_images
    t_jax1 = median_seconds(jax_loop, repeats) / loop_images
    t_batch = median_seconds(jax_batch, repeats) / batch
    return peer_row("Taylor-Shapley contributions, per image", t_batch, t_torch,
                    f"PyTorch batch-1 loop ({torch.get_num_threads()} threads)",
                    f"ResNet-56 pool, batch {batch}, loop of {loop_images}", jax_batch1_s=t_jax1, batch=batch)


def bench_contributions(batch: int, loop_images: int, repeats: int) -> None:
    r = contributions_row(batch, loop_images, repeats)
    t_torch, t_jax1, t_batch = r["peer_s"], r["jax_batch1_s"], r["xai_jax_s"]
    print(f"\n### Taylor-Shapley contributions, ResNet-56 pool, per image (CIFAR-10 test JPEGs; batch {batch})\n")
    print("| path | per image | images/s | vs one vjp |")
    print("|---|---|---|---|")
    for name, t in (("PyTorch forward/backward, batch 1 (reference loop)", t_torch),
                    ("JAX jitted forward/backward, batch 1", t_jax1), (f"JAX one vjp for {batch} images", t_batch)):
        print(f"| {name} | {t * 1e3:.2f} ms | {1 / t:.0f} | {t / t_batch:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument("--only", choices=["scores", "wpmi", "contributions"], help="run one section")
    parser.add_argument("--torch-threads", type=int, help="PyTorch intra-op threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    repeats = 1 if args.quick else 3
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}, PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f} at start")
    sizes = (1000, 20000) if args.quick else (1000, 20000, 82115)
    if args.only in (None, "scores"):
        bench_scores(sizes, units=512 if args.quick else 2048, loop_units=32 if args.quick else 64, repeats=repeats)
    if args.only in (None, "wpmi"):
        bench_soft_wpmi((1000,) if args.quick else (1000, 20000), units=64 if args.quick else 256, repeats=repeats)
    if args.only in (None, "contributions"):
        bench_contributions(batch=64 if args.quick else 256, loop_images=16 if args.quick else 64, repeats=repeats)


if __name__ == "__main__":
    main()
