"""satura: an AI compiler built on equality saturation.

import satura
g = satura.load("model.onnx")
r = satura.optimize(g, target="cpu")       # .graph .report .cost_before .cost_after
exe = satura.compile(r.graph, target="cpu")
outputs = exe(input_ids=ids)
"""

from satura.api import OptimizeResult, compile, load, optimize, verify
from satura.engine.errors import SaturaError
from satura.engine.saturate import Limits

__version__ = "0.1.0"
__all__ = ["Limits", "OptimizeResult", "SaturaError", "compile", "load", "optimize", "verify"]
