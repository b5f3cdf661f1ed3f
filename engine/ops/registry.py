"""The op registry: each op is declared once, with everything every stage needs to know of it.

An :class:`OpInfo` carries the op's attributes, its shape function (written once over a
:class:`~satura.engine.shapes.DimOps`, so it runs on ints, sympy and Z3), its dtype rule, its numpy
reference (the oracle), its work estimate for the cost model and its traits. Importers, the rule
language, the e-graph, the verifier and the targets all read ops from here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
from satura.engine.errors import ShapeError
from satura.engine.shapes import DimOps, Shape, SymDims

Attrs = Mapping[str, Any]
ShapeFn = Callable[[DimOps, Sequence[Shape | None], Attrs], list[Shape]]
DtypeFn = Callable[[Sequence[str | None], Attrs], list[str]]
RefFn = Callable[[Sequence[np.ndarray | None], Attrs], list[np.ndarray]]


@dataclass(frozen=True)
class Work:
    """What an op costs before any hardware is known: arithmetic and memory traffic."""

    flops: float
    bytes: float


WorkFn = Callable[[Sequence[Any], Sequence[Any], Attrs], Work]  # (in TensorTypes, out TensorTypes)

REQUIRED = object()

# Attribute kinds the rule language and the importer check values against.
ATTR_KINDS = ("int", "float", "str", "ints", "floats", "dim", "dims", "dtype", "expr")


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = REQUIRED

    def check(self, op: str, name: str, value: Any) -> None:
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "ints": lambda v: isinstance(v, tuple) and all(isinstance(x, int) for x in v),
            "floats": lambda v: isinstance(v, tuple),
            "dim": lambda v: (
                (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, sympy.Basic)
            ),
            "dims": lambda v: isinstance(v, tuple),
            "dtype": lambda v: isinstance(v, str),
            "expr": lambda v: isinstance(v, tuple),
        }[self.kind]
        if value is not None and not ok(value):
            raise ShapeError(f"{op}: attribute '{name}' must be {self.kind}, got {value!r}")


def same_dtype(ins: Sequence[str | None], attrs: Attrs) -> list[str]:
    first = next((d for d in ins if d is not None), "float32")
    return [first]


def numel(shape: Sequence[Any]) -> int:
    """Elements of a static shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def io_bytes(ins: Sequence[Any], outs: Sequence[Any]) -> float:
    """Bytes an op reads and writes: every present input and output type once."""
    return float(sum(numel(t.shape) * t.itemsize for t in [*ins, *outs] if t is not None))


def elementwise_work(
    ins: Sequence[Any], outs: Sequence[Any], attrs: Attrs, flops_per: float = 1.0
) -> Work:
    n = float(sum(numel(o.shape) for o in outs))
    return Work(n * flops_per, io_bytes(ins, outs))


@dataclass(frozen=True)
class OpInfo:
    """Everything about one op. ``inputs`` is (min, max) arity; max None means variadic."""

    name: str
    shape: ShapeFn
    reference: RefFn
    inputs: tuple[int, int | None] = (1, 1)
    outputs: int = 1  # 0 means: decided by attrs (see ``num_outputs``)
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    dtype: DtypeFn = same_dtype
    work: WorkFn = elementwise_work
    onnx: tuple[str, ...] = ()
    traits: frozenset[str] = frozenset()
    doc: str = ""
    num_outputs_fn: Callable[[Attrs], int] | None = None

    def num_outputs(self, attrs: Attrs) -> int:
        return self.num_outputs_fn(attrs) if self.num_outputs_fn else self.outputs

    def with_defaults(self, attrs: Attrs) -> dict[str, Any]:
        """Attributes with defaults filled in; raises ShapeError on unknown or missing ones."""
        out = dict(attrs)
        for k in out:
            if k not in self.attrs:
                raise ShapeError(
                    f"{self.name}: unknown attribute '{k}' "
                    f"(known: {', '.join(sorted(self.attrs)) or 'none'})"
                )
        for k, spec in self.attrs.items():
            if k not in out:
                if spec.default is REQUIRED:
                    raise ShapeError(f"{self.name}: attribute '{k}' is required")
                out[k] = spec.default
            spec.check(self.name, k, out[k])
        return out


OPS: dict[str, OpInfo] = {}


def register(info: OpInfo) -> OpInfo:
    if info.name in OPS:
        raise ValueError(f"op '{info.name}' registered twice")
    OPS[info.name] = info
    return info


def get_op(name: str) -> OpInfo:
    try:
        return OPS[name]
    except KeyError:
        raise ShapeError(f"unknown op '{name}'") from None


def ops_with_trait(trait: str) -> list[OpInfo]:
    return [o for o in OPS.values() if trait in o.traits]


def infer_types(
    op: str, in_types: Sequence[Any], attrs: Attrs, dims: DimOps | None = None
) -> list[Any]:
    """Output TensorTypes of ``op`` on inputs of ``in_types`` (None for an absent optional input).

    Uses sympy dimensions unless ``dims`` is given. Raises ShapeError when the inputs do not fit.
    """
    from satura.engine.graph import TensorType

    info = get_op(op)
    lo, hi = info.inputs
    n = len(in_types)
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
        raise ShapeError(f"{op} takes {want} inputs, got {n}")
    full = info.with_defaults(attrs)
    shapes = info.shape(dims or SymDims(), [None if t is None else t.shape for t in in_types], full)
    dtypes = info.dtype([None if t is None else t.dtype for t in in_types], full)
    if len(shapes) != len(dtypes):
        raise ShapeError(f"{op}: shape and dtype rules disagree on the output count")
    return [TensorType(tuple(s), d) for s, d in zip(shapes, dtypes, strict=True)]


def run_reference(op: str, inputs: Sequence[np.ndarray | None], attrs: Attrs) -> list[np.ndarray]:
    """Run ``op``'s numpy reference."""
    info = get_op(op)
    return info.reference(inputs, info.with_defaults(attrs))
