"""``python -m xai_jax.cli``: the ``xai-jax`` command."""

import sys

from xai_jax.cli.main import main

sys.exit(main())
