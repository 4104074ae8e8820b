"""Which platform an array's work runs on, for the kernels that keep one form per backend."""

from __future__ import annotations

import jax


def platform_of(x: jax.Array) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``) a concrete array lives on; for a NumPy array or under a
    trace, the default backend (where the caller's program runs unless it says otherwise)."""
    try:
        return next(iter(x.devices())).platform
    except (AttributeError, jax.errors.ConcretizationTypeError):
        return jax.default_backend()
