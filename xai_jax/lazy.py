"""Package ``__init__`` modules that name their exports up front and import them on first use.

A method package (``xai_jax.methods.nma``) exports its config, which the command line needs to build its flags
without JAX, beside its passes, which import JAX. With :func:`attach` the package imports a submodule only when
one of its names is first read (PEP 562 module ``__getattr__``), so ``from xai_jax.methods.nma import
NMAConfig`` stays light and ``from xai_jax.methods.nma import NearMissAnalysis`` works as if imported eagerly.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def attach(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package ``package``.

    Args:
      package: the package's ``__name__``.
      exports: ``{submodule: [names it defines]}``, submodules relative to the package.

    Returns:
      the module-level ``__getattr__`` that imports ``package.submodule`` when one of its names is read, the
      matching ``__dir__``, and the ``__all__`` list of every exported name.
    """
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in owner:
            value = getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
            globals_of(package)[name] = value  # later reads skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals_of(package)) | set(owner))

    return __getattr__, __dir__, sorted(owner)


def globals_of(package: str) -> dict:
    return vars(sys.modules[package])
