"""Shared test fixtures: where the real data lives, and whether its absence skips or fails."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("XAI_JAX_REQUIRE_DATA") == "1"


def shared_path(*parts: str) -> pathlib.Path:
    """The path of a file under the shared data folder; skips the test when it is missing, or fails it
    when ``XAI_JAX_REQUIRE_DATA=1`` (as in CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared data missing: {path}"
        if REQUIRE_DATA:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name: str):
    """Imports an optional dependency; skips without it unless ``XAI_JAX_REQUIRE_DATA=1``."""
    try:
        return __import__(name)
    except ImportError:
        if REQUIRE_DATA:
            pytest.fail(f"optional dependency {name} is not installed")
        pytest.skip(f"optional dependency {name} is not installed")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    return shared_path()
