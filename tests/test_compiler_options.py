"""The engine's compiler options per backend (xai_jax/compiler_options.py): on a CPU, passes over images compile
with YNNPACK's elementwise fusions, and give the default program's results."""

from __future__ import annotations

import types

import jax
import numpy as np

from conftest import shared_path
from xai_jax import compiler_options, engine, evaluation, models, weights
from xai_jax.data import JpegNpzSource
from xai_jax.data.base import subset


def test_pass_options_by_platform_and_opt_out(monkeypatch):
    monkeypatch.delenv(compiler_options.OPT_OUT, raising=False)
    mesh = engine.local_mesh()
    assert compiler_options.pass_options(mesh) == compiler_options.CPU_PASS_OPTIONS
    monkeypatch.setenv(compiler_options.OPT_OUT, "0")
    assert compiler_options.pass_options(mesh) is None
    monkeypatch.setenv(compiler_options.OPT_OUT, "1")
    accelerator = types.SimpleNamespace(devices=np.asarray([types.SimpleNamespace(platform="gpu")]))
    assert compiler_options.pass_options(accelerator) is None  # other backends keep their defaults
    two_cpus = types.SimpleNamespace(devices=np.asarray([jax.devices("cpu")[0]] * 2))
    assert compiler_options.pass_options(two_cpus) == compiler_options.CPU_PASS_OPTIONS  # as over several processes
    assert not compiler_options._cpu_accepts((("xla_cpu_no_such_option", "1"),))  # an unknown one is dropped


def test_a_pass_with_the_cpu_options_gives_the_default_logits_on_real_weights(monkeypatch):
    monkeypatch.delenv(compiler_options.OPT_OUT, raising=False)
    [path] = sorted(shared_path("cifar10_resnet").glob("resnet20-*.th"))
    spec = models.get("cifar_resnet20")
    variables = weights.load(spec, path)
    # 300 of every class: two batches of 256, the second padded and masked
    source = subset(JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz")), 300, seed=0)
    images, labels = source.all()
    asked = []
    monkeypatch.setattr(compiler_options, "pass_options",
                        lambda mesh, real=compiler_options.pass_options: asked.append(mesh) or real(mesh))
    engine._jitted_map.cache_clear()  # so that this pass compiles here, and asks for its options
    logits = evaluation.predict("cifar_resnet20", variables, source, batch_size=256, progress=False)["logits"]
    assert asked and all(mesh.devices.flat[0].platform == "cpu" for mesh in asked)
    forward = models.make_forward("cifar_resnet20")
    default = np.asarray(jax.jit(forward)(images, variables)["logits"])
    np.testing.assert_allclose(logits, default, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == default.argmax(1)).all() and (default.argmax(1) == labels).mean() > 0.7
    # and the options take effect: the program they compile is another one
    options = compiler_options.pass_options(engine.local_mesh())
    with_options = jax.jit(forward, compiler_options=options).lower(images[:8], variables).compile().as_text()
    assert with_options != jax.jit(forward).lower(images[:8], variables).compile().as_text()


def test_a_step_marked_without_library_fusion_compiles_with_the_defaults(monkeypatch):
    monkeypatch.delenv(compiler_options.OPT_OUT, raising=False)
    from xai_jax.methods.cladec import occlusion_step
    from xai_jax.models.cladec import Decoder
    mesh = engine.local_mesh()

    def plain(batch, params):
        return batch

    assert compiler_options.step_options(plain, mesh) == compiler_options.CPU_PASS_OPTIONS
    # ClaDec's occlusion pass measured slower with YNNPACK's fusions: it keeps XLA's defaults
    step = occlusion_step("cladec_vgg", "block8", None, Decoder(1, 32))
    assert compiler_options.step_options(step, mesh) is None
    assert engine._options(step, mesh) == {} and engine._options(plain, mesh) == {
        "compiler_options": compiler_options.CPU_PASS_OPTIONS}
