"""XLA compiler options for the engine's dataset passes, one set per backend.

On a CPU, XLA can hand its elementwise fusions to the YNNPACK library instead of emitting its own loops
(``xla_cpu_experimental_ynn_fusion_type = ELTWISE``). A backbone's batch norm, ReLU and residual additions
are such fusions, and YNNPACK's kernels run them faster. Measured on a 2-core x86_64 CPU (JAX 0.10.2, batch
256 of 32x32 images, the same programs compiled both ways in one process, runs interleaved):

=====================================  =======  ===========  =======
pass                                   default  YNN eltwise  speed-up
=====================================  =======  ===========  =======
ResNet-20 forward (images/s)           2,053    2,493        1.21x
ResNet-56 forward (images/s)           662      915          1.38x
ResNet-56 input gradient (ms, 128)     481      454          1.06x
ClaDec occlusion pass (ms, 64)         565      617          0.92x
=====================================  =======  ===========  =======

(BENCHMARKS "Forward pass over a dataset" has the engine's rows.) The logits moved by at most 7e-7.

The option is set per compiled program (``jax.jit(..., compiler_options=...)``), not process-wide through
``XLA_FLAGS``: other programs got slower with it (process-wide: the DEC loss 2.8x, WWW's cosine scores 1.7x;
ClaDec's decoder training step 1.4-2.7x), so only the engine's passes over images use it, and ClaDec's
occlusion pass opts out (:func:`without_library_fusion`). Other backends compile as they always did.
``XAI_JAX_CPU_LIBRARY_FUSION=0`` turns it off; a jaxlib that does not know the option (it is experimental) is
detected once and compiles without it.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh

CPU_PASS_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE"}
OPT_OUT = "XAI_JAX_CPU_LIBRARY_FUSION"
_WITHOUT = "_xai_jax_without_library_fusion"


def without_library_fusion(fn):
    """Marks a pass's step function to compile with the backend's defaults on a CPU too, and returns it.

    For passes that measured slower with YNNPACK's fusions: ClaDec's occlusion pass (its decoders' transposed
    convolutions are slicing and interleaving, which YNNPACK runs slower: 565 ms against 617 ms for 64 images
    here; the decoder's training step, not a pass, was 2.3-2.7x slower with them).
    """
    setattr(fn, _WITHOUT, True)
    return fn


@functools.lru_cache(maxsize=None)
def _cpu_accepts(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles a program for the CPU with ``options`` (checked once per set)."""
    try:
        cpu = jax.devices("cpu")[0]
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jax.ShapeDtypeStruct((2,), np.float32, sharding=jax.sharding.SingleDeviceSharding(cpu))).compile()
        return True
    except Exception:  # an unknown option, or a jax.jit without compiler_options: compile without
        return False


def step_options(fn, mesh: Mesh) -> dict | None:
    """:func:`pass_options` for step function ``fn``, or None where it is marked :func:`without_library_fusion`."""
    return None if getattr(fn, _WITHOUT, False) else pass_options(mesh)


def pass_options(mesh: Mesh) -> dict | None:
    """The compiler options of a dataset pass over ``mesh``: :data:`CPU_PASS_OPTIONS` when its devices are CPUs
    (and neither the opt-out nor this jaxlib says no), else None (the backend's defaults).

    The same for one CPU device and for several (forced host devices, or one per process under
    ``jax.distributed``), so that a pass gives the same numbers whatever the number of processes.

    Args:
      mesh: the devices the pass runs on.

    Returns:
      a new dict for ``jax.jit(compiler_options=...)``, or None.
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return None
    if any(device.platform != "cpu" for device in mesh.devices.flat):
        return None
    if not _cpu_accepts(tuple(sorted(CPU_PASS_OPTIONS.items()))):
        return None
    return dict(CPU_PASS_OPTIONS)
