"""ClaDec throughput: decoder training steps/s and occlusion analysis images/s, JAX vs a faithful PyTorch port.

Both sides run the same models (the paper's VGG-style classifier, the authors' decoder: dense 512 -> transposed
convolutions 4x4/2 of 512, 256, 128, 64 channels -> 1, sigmoid) and the same loss (eq. 1, alpha 0.001 as the
authors' code) on the same real Fashion-MNIST batch, in one process. The PyTorch occlusion analysis loops over the
16 occlusions (each a batch of images) as a straightforward port would; JAX runs them in one ``vmap``.

    python experiments/bench_cladec.py --quick
    python experiments/bench_cladec.py --fault-profile   # where a training step's time goes: CPU, system, faults
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import DATA, malloc_settings, median_seconds, peer_row, step_costs  # noqa: E402

from xai_jax import data, models, train  # noqa: E402
from xai_jax.kernels import cladec as K  # noqa: E402
from xai_jax.methods.cladec import occlusion_step, to_unit  # noqa: E402
from xai_jax.models.cladec import Decoder  # noqa: E402

MODEL, TAP, ALPHA = "cladec_vgg", "block8", 0.001


def torch_models():
    import torch
    from torch import nn

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            chans, strides, layers, cin = (32, 64, 128, 128, 256, 256, 512, 512), (2, 2, 1, 2, 1, 2, 1, 2), [], 1
            for c, s in zip(chans, strides):
                layers += [nn.Conv2d(cin, c, 3, s, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 10)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            code = self.features((x - 0.5) / 0.5)
            return self.fc(self.drop(code.flatten(1))), code

    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU())
            layers, cin = [], 512
            for c in (512, 256, 128, 64):
                layers += [nn.ConvTranspose2d(cin, c, 4, 2, 1), nn.ReLU()]
                cin = c
            layers += [nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Sigmoid()]
            self.deconv = nn.Sequential(*layers)

        def forward(self, code):
            return self.deconv(self.fc(code.flatten(1))[:, :, None, None])

    torch.manual_seed(0)
    return VGG().eval(), Dec()


def torch_train_step(x, y, code, threads=None, classifier_term=True):
    """One decoder training step of the PyTorch port, as a function of nothing (its state lives in the closure)."""
    import torch
    torch.set_num_threads(threads or os.cpu_count() or 1)
    clf, dec = torch_models()
    for p in clf.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-4, weight_decay=1e-5)
    xt, yt = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y, dtype=torch.long)
    ct = torch.tensor(code.transpose(0, 3, 1, 2))

    def step():
        opt.zero_grad()
        xhat = dec(ct)
        rec = ((xhat - xt) ** 2).flatten(1).sum(1).mean()
        loss = (1 - ALPHA) * rec
        if classifier_term:
            loss = loss + ALPHA * torch.nn.functional.cross_entropy(clf(xhat)[0], yt)
        loss.backward()
        opt.step()

    return step, (clf, dec, xt, yt)


def bench_torch(x, y, code, masks, fill, repeats, threads=None, classifier_term=True):
    import torch
    step, (clf, dec, xt, yt) = torch_train_step(x, y, code, threads, classifier_term)
    step_s = median_seconds(step, repeats)
    mt = torch.tensor(masks)

    def occlusion():
        with torch.enable_grad():
            xg = xt.clone().requires_grad_(True)  # the classifier is frozen: grads flow from the input
            logits, code = clf(xg)
            code.retain_grad()
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
            cam = torch.relu((code.grad.mean((2, 3), keepdim=True) * code).sum(1, keepdim=True))
            cam = torch.nn.functional.interpolate(cam, size=(32, 32), mode="bilinear")[:, 0]
            lo, hi = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
            cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
        with torch.no_grad():
            xhat = dec(clf(xt)[1])
            rel_c, rel_g, correct = [], [], []
            for m in range(len(mt)):  # the loop a straightforward port has
                xo = torch.where(mt[m], torch.tensor(float(fill[0])), xt)
                lo_, co = clf(xo)
                rel_c.append((((dec(co) - xhat) ** 2).sum(1) * mt[m]).sum((1, 2)))
                rel_g.append((cam * mt[m]).sum((1, 2)))
                correct.append(lo_.argmax(1) == yt)
            return torch.stack(rel_c, 1).argmax(1), torch.stack(rel_g, 1).argmax(1), torch.stack(correct, 1)

    occ_s = median_seconds(occlusion, repeats)
    return step_s, occ_s


def jax_train_step(x, y, code, classifier_term=True):
    """One decoder training step of xai_jax (jitted, state donated), as a function of nothing; and the holder of
    its state and the classifier's variables."""
    spec = models.get(MODEL)
    variables = models.init_variables(spec, jax.random.key(0))
    forward = models.make_forward(MODEL)
    decoder = Decoder(1, 32)
    params = decoder.init(jax.random.key(1), jnp.asarray(code[:1]))["params"]

    def loss_fn(p, model_state, batch, key):
        xhat = decoder.apply({"params": p}, batch["code"])
        if not classifier_term:
            loss = (1 - ALPHA) * jnp.mean(jnp.sum(jnp.square(xhat - batch["x"]), axis=(1, 2, 3)))
            return loss, (model_state, {"loss": loss})
        loss, metrics = K.cladec_loss(batch["x"], xhat, forward(xhat, variables)["logits"], batch["labels"], ALPHA)
        return loss, (model_state, metrics)

    optimizer = optax.chain(optax.add_decayed_weights(1e-5), optax.adam(3e-4))
    step = jax.jit(train.make_train_step(loss_fn, optimizer), donate_argnums=0)
    batch = jax.device_put({"code": code, "x": x, "labels": y.astype(np.int32)})
    holder = {"state": train.init_state(params, optimizer), "variables": variables, "decoder": decoder}
    key = jax.random.key(2)

    def run_step():
        holder["state"], m = step(holder["state"], batch, key)
        jax.block_until_ready(m)

    return run_step, holder


def bench_jax(x, y, code, images_uint8, repeats, classifier_term=True):
    run_step, holder = jax_train_step(x, y, code, classifier_term)
    variables, decoder = holder["variables"], holder["decoder"]
    step_s = median_seconds(run_step, repeats)
    occ = jax.jit(occlusion_step(MODEL, TAP, None, decoder))
    dec_vars = {"params": holder["state"].params}
    occ_params = {"classifier": variables, "decoder": dec_vars, "fill": jnp.asarray([float(x.mean())]),
                  "key": jax.random.key(3)}
    occ_batch = jax.device_put({"images": images_uint8, "labels": y.astype(np.int32),
                                "index": np.arange(len(y), dtype=np.int32)})
    occ_s = median_seconds(lambda: jax.block_until_ready(occ(occ_batch, occ_params)), repeats)
    return step_s, occ_s, variables


def inputs(batch_size: int):
    """A real Fashion-MNIST test batch: the images (uint8), labels, the classifier's input in [0, 1] and its
    layer -2 code."""
    source = data.open_source(f"idx:{DATA / 'fashion_mnist'}", split="test", limit=batch_size)
    images, labels = source.all()
    spec = models.get(MODEL)
    variables = models.init_variables(spec, jax.random.key(0))
    code = np.asarray(models.make_forward(MODEL, (TAP,))(images, variables)[TAP])
    return images, labels, np.asarray(to_unit(spec, images)), code


def fault_profile(batch_size: int, repeats: int) -> None:
    """Prints where a training step's wall time goes on each side: CPU time in user and system mode, and the
    minor page faults, the pages the kernel had to map and zero afresh during the step."""
    import torch
    _, labels, x, code = inputs(batch_size)
    sides = {"xai_jax": jax_train_step(x, labels, code)[0],
             f"PyTorch ({torch.get_num_threads()} threads)": torch_train_step(x, labels, code)[0]}
    print(f"ClaDec training step, batch {batch_size}, median of {repeats} steps after a warm-up, malloc: "
          f"{malloc_settings()}\n")
    print("| side | wall (ms) | user CPU (ms) | system CPU (ms) | minor faults (MiB of fresh pages) |")
    print("|---|---|---|---|---|")
    for side, step in sides.items():
        c = step_costs(step, repeats)
        print(f"| {side} | {c['wall_s'] * 1e3:.0f} | {c['user_s'] * 1e3:.0f} | {c['system_s'] * 1e3:.0f} | "
              f"{c['minor_faults']:,.0f} ({c['minor_faults'] * resource.getpagesize() / 2 ** 20:.0f}) |")


def compare(batch_size: int, repeats: int, threads: int | None = None, classifier_term: bool = True) -> list[dict]:
    """A decoder training step and the occlusion analysis of one real Fashion-MNIST batch, JAX against PyTorch
    (on ``threads`` threads, default all CPUs).

    Returns:
      two :func:`benchutil.peer_row`: seconds a training step, then seconds of the occlusion analysis of the batch.
    """
    import torch
    images, labels, x, code = inputs(batch_size)
    masks = K.occlusion_masks(32, 32)
    jax_step, jax_occ, _ = bench_jax(x, labels, code, images, repeats, classifier_term)
    torch_step, torch_occ = bench_torch(x, labels, code, masks, [float(x.mean())], repeats, threads, classifier_term)
    peer, sizes = f"PyTorch port ({torch.get_num_threads()} threads)", f"batch {batch_size}, 32x32, layer -2"
    return [peer_row("ClaDec decoder training step", jax_step, torch_step, peer, sizes),
            peer_row("ClaDec occlusion analysis, 16 occlusions + Grad-CAM", jax_occ, torch_occ, peer, sizes)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="batch 64, 3 repeats")
    p.add_argument("--decoder-only", action="store_true",
                   help="train on the reconstruction term alone (no classifier pass): the decoder's share of a step")
    p.add_argument("--fault-profile", action="store_true",
                   help="per training step: wall, user and system CPU time and minor page faults, both sides")
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 64, 3
    if args.fault_profile:
        fault_profile(args.batch_size, max(args.repeats, 7))
        return
    step, occlusion = compare(args.batch_size, args.repeats, classifier_term=not args.decoder_only)
    jax_step, torch_step = step["xai_jax_s"], step["peer_s"]
    jax_occ, torch_occ = occlusion["xai_jax_s"], occlusion["peer_s"]
    n = args.batch_size
    print(f"ClaDec on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, JAX {jax.__version__} "
          f"({jax.devices()[0].platform}), batch {n}, layer -2 ({TAP}), alpha {ALPHA}, real Fashion-MNIST\n")
    print("| pass | JAX | PyTorch | JAX / PyTorch |")
    print("|---|---|---|---|")
    print(f"| decoder training (steps/s) | {1 / jax_step:.2f} | {1 / torch_step:.2f} | {torch_step / jax_step:.2f}x |")
    print(f"| occlusion analysis, 16 occlusions + Grad-CAM (images/s) | {n / jax_occ:.1f} | {n / torch_occ:.1f} | "
          f"{torch_occ / jax_occ:.2f}x |")


if __name__ == "__main__":
    main()
