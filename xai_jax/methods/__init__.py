"""The explanation methods, chosen by name from :data:`METHODS`.

Each method is a package ``xai_jax.methods.<name>`` with

- ``config.py``: its config dataclass (:mod:`xai_jax.config`; no JAX, so that the command line builds its
  flags from it),
- its result dataclass (a :class:`xai_jax.results.Result`: ``save``/``load`` in the one result layout),
- its passes, explanations and metrics, and ``figures.py`` / ``demo.py`` (a section of ``xai-jax demo``),

exported lazily from the package (:func:`xai_jax.lazy.attach`), a kernel module in :mod:`xai_jax.kernels`, and
a command-line module ``xai_jax.cli.<name>``. The command line, the demo and the contract tests iterate
:data:`METHODS`; a new method is one more :func:`register` line below.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class Method:
    """One explanation method as the command line, the demo and the tests see it.

    Attributes:
      name: the subcommand (``xai-jax nma``) and the key of :data:`METHODS`.
      package: the method's package.
      config: name of its config dataclass, in ``<package>.config``.
      result: name of its result dataclass, exported by the package.
      summary: one line for ``xai-jax --help``.
    """

    name: str
    package: str
    config: str
    result: str
    summary: str

    @property
    def config_type(self) -> type:
        """The config dataclass (imports no JAX)."""
        return getattr(importlib.import_module(f"{self.package}.config"), self.config)

    @property
    def result_type(self) -> type:
        return getattr(importlib.import_module(self.package), self.result)

    @property
    def cli(self) -> ModuleType:
        """``xai_jax.cli.<name>``: ``register(subparsers)`` adds the subcommand."""
        return importlib.import_module(f"xai_jax.cli.{self.name}")

    @property
    def demo(self) -> ModuleType:
        """``<package>.demo``: ``section(report, context) -> dict`` of ``xai-jax demo``."""
        return importlib.import_module(f"{self.package}.demo")


#: every method, in the order of the command line's help and of the demo's report
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


register(Method("nma", "xai_jax.methods.nma", "NMAConfig", "NMAResult",
                "near-miss analysis: the concept hierarchy of a model's confusions"))
register(Method("dec", "xai_jax.methods.dec", "DECConfig", "DECResult",
                "activation clustering surrogate (DEC per layer): fit, similar, concepts"))
register(Method("xnn", "xai_jax.methods.xnn", "XNNConfig", "XNNResult",
                "explanation networks (SRAE x-features): fit, explain"))
register(Method("www", "xai_jax.methods.www", "WWWConfig", "WWWResult",
                "WWW: neuron concepts (what), heatmaps (where), contributions (why)"))
register(Method("cladec", "xai_jax.methods.cladec", "ClaDecConfig", "ClaDecResult",
                "ClaDec: decode a layer into images, compare with a reference autoencoder"))
