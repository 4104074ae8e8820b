"""The ``xai-jax`` command: :func:`main` and :func:`build_parser`; one module per method (``cli.nma``,
``cli.dec``, ``cli.www``, ``cli.xnn``, ``cli.cladec``) over the shared groups of :mod:`xai_jax.cli.common`."""

from xai_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
