"""Shared test setup: the repository root on sys.path so ``examples`` and ``benchmarks`` import;
a machine-code cache of the tests' own."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _object_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """satura.compile caches machine code on disk: the tests use a cache of their own, never the
    user's (each xdist worker its own)."""
    os.environ["SATURA_CACHE_DIR"] = str(tmp_path_factory.mktemp("objects"))
