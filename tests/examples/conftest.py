"""Make ``import examples`` (repo root) and ``import numpy_refs`` (this folder) work under plain
``pytest`` and any import mode; ``python -m pytest`` alone only adds the cwd."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parents[1]), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
