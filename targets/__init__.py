"""satura.targets: lowering to loop kernels, llvmlite code generation, memory planning, runtime.

``compile_graph(graph, target="cpu")`` returns a :class:`CompiledModel`; call it with numpy arrays.
"""

from satura.targets.runtime import CompiledModel, compile_graph
from satura.targets.specialize import SpecializingModel

__all__ = ["CompiledModel", "SpecializingModel", "compile_graph"]
