"""Shared test setup: the repository root on sys.path so ``examples`` and ``benchmarks`` import."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
