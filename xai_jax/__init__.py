"""xai_jax: concept-based explanations of image classifiers in JAX/Flax."""

from xai_jax.errors import XaiJaxError

__version__ = "0.1.0"
__all__ = ["XaiJaxError", "__version__"]
