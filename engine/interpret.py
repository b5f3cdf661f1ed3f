"""The reference executor: runs a Graph node by node with the ops' numpy references.

It is the oracle every compiled model is compared with (torch.fx's Interpreter plays this part
in PyTorch). Inputs are checked first: names, dtypes, ranks and dimensions, with each symbolic
dimension (``batch``) bound to one value across all inputs. Symbolic attributes (a reshape to
``(batch, 12)``) are evaluated with those bindings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy
from satura.engine.errors import InputError, ShapeError
from satura.engine.graph import Graph, TensorType, Value, is_data_dependent
from satura.engine.ops import get_op


def _fmt(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def bind_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[sympy.Symbol, int]:
    """Check ``inputs`` against the graph's inputs and return the symbol bindings.

    Raises InputError naming the input, its expected type and what was given.
    """
    names = {v.name for v in graph.inputs}
    unknown = sorted(set(inputs) - names)
    if unknown:
        raise InputError(
            f"unknown input '{unknown[0]}' (the model's inputs: "
            f"{', '.join(sorted(names)) or 'none'})"
        )
    env: dict[sympy.Symbol, int] = {}
    pending: list[tuple[Value, int, Any, np.ndarray]] = []
    for v in graph.inputs:
        if v.name not in inputs:
            raise InputError(f"missing input '{v.name}' ({v.type})")
        arr = np.asarray(inputs[v.name])
        want = v.type
        if arr.dtype.name != want.dtype:
            raise InputError(
                f"input '{v.name}': dtype {arr.dtype.name}, the model expects "
                f"{want.dtype} (shape {_fmt(want.shape)})"
            )
        if arr.ndim != want.rank:
            raise InputError(
                f"input '{v.name}': shape {_fmt(arr.shape)} has rank {arr.ndim}, "
                f"the model expects {_fmt(want.shape)}"
            )
        for i, d in enumerate(want.shape):
            got = int(arr.shape[i])
            if isinstance(d, int):
                if d != got:
                    raise InputError(
                        f"input '{v.name}': shape {_fmt(arr.shape)}, the model "
                        f"expects {_fmt(want.shape)} (dimension {i})"
                    )
            elif isinstance(d, sympy.Symbol):
                if d in env and env[d] != got:
                    raise InputError(
                        f"input '{v.name}': shape {_fmt(arr.shape)}, the model "
                        f"expects {_fmt(want.shape)} with {d} = {env[d]} "
                        "(bound by an earlier input)"
                    )
                env[d] = got
            else:
                pending.append((v, i, d, arr))
    for v, i, d, arr in pending:  # expressions like 2*seq: check once every symbol is bound
        want_i = d.subs(env)
        if not want_i.is_Integer or int(want_i) != arr.shape[i]:
            raise InputError(
                f"input '{v.name}': shape {_fmt(arr.shape)}, the model expects "
                f"{_fmt(v.type.shape)} (dimension {i} = {d})"
            )
    return env


def bind_attr(value: Any, env: Mapping[sympy.Symbol, int]) -> Any:
    """An attribute value with every sympy expression evaluated to an int under ``env``."""
    if isinstance(value, sympy.Basic):
        out = value.subs(env)
        if not out.is_Integer:
            raise InputError(f"attribute {value} is not determined by the inputs' shapes")
        return int(out)
    if isinstance(value, tuple):
        return tuple(bind_attr(v, env) for v in value)
    return value


def bind_data_dims(t: TensorType, shape: tuple[int, ...], env: dict[sympy.Symbol, int]) -> None:
    """Bind the sizes an op's values decide (a nonzero count: a bare symbol no input binds) to
    the computed array's."""
    for d, n in zip(t.shape, shape, strict=False):
        if isinstance(d, sympy.Symbol) and d not in env:
            env[d] = int(n)


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``inputs`` (name -> array) with the numpy references.

    Returns output name -> array. Raises InputError for inputs that do not match the graph.
    """
    env = bind_inputs(graph, inputs)
    vals: dict[int, np.ndarray] = {id(v): np.asarray(inputs[v.name]) for v in graph.inputs}

    def get(v: Value | None) -> np.ndarray | None:
        if v is None:
            return None
        if v.data is not None:
            return v.data
        return vals[id(v)]

    for node in graph.nodes:
        info = get_op(node.op)
        # a data-dependent op's size attributes are what its run decides (bound after it)
        dd = is_data_dependent(node)
        attrs = info.with_defaults(
            {k: a if dd else bind_attr(a, env) for k, a in node.attrs.items()}
        )
        ins = [get(v) for v in node.inputs]
        try:
            with np.errstate(all="ignore"):
                outs = info.reference(ins, attrs)
        except ShapeError as e:
            raise ShapeError(f"node '{node.name}' ({node.op}): {e}") from None
        for o, arr in zip(node.outputs, outs, strict=True):
            vals[id(o)] = _as_type(np.asarray(arr), o.type)
            bind_data_dims(o.type, vals[id(o)].shape, env)
    return {v.name: np.asarray(get(v)) for v in graph.outputs}


def _as_type(arr: np.ndarray, t: TensorType) -> np.ndarray:
    if t.dtype not in ("bfloat16", "string") and arr.dtype.name != t.dtype:
        return arr.astype(t.dtype)
    return arr
