"""Reductions over axes: sum, mean, max, min, prod, and argmax/argmin."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from satura.engine.ops.registry import AttrSpec, OpInfo, Work, register
from satura.engine.shapes import DimOps, Shape, normalize_axis


def _numel(shape: Sequence[Any]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def reduce_axes(rank: int, axes: Sequence[int] | None) -> tuple[int, ...]:
    """Normalized, sorted axes; None means every axis."""
    if axes is None:
        return tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank) for a in axes}))


def _reduce_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    axes = reduce_axes(len(x), at["axes"])
    if at["keepdims"]:
        return [tuple(1 if i in axes else s for i, s in enumerate(x))]
    return [tuple(s for i, s in enumerate(x) if i not in axes)]


def reduce_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    n = _numel(ins[0].shape)
    moved = n * ins[0].itemsize + sum(_numel(o.shape) * o.itemsize for o in outs)
    return Work(float(n), float(moved))


def _identity(dtype: np.dtype, is_max: bool) -> Any:
    """The identity of max (is_max) or min over ``dtype``: what an empty reduction gives."""
    if dtype.kind == "b":
        return not is_max
    if dtype.kind == "f":
        return -np.inf if is_max else np.inf
    info = np.iinfo(dtype)
    return info.min if is_max else info.max


def _reduce_ref(fn: Callable[..., np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
        x = ins[0]
        assert x is not None
        axes = reduce_axes(x.ndim, at["axes"])
        kw: dict[str, Any] = {}
        if fn in (np.max, np.min) and x.size == 0:  # ONNX: the identity (-inf / +inf)
            kw["initial"] = _identity(x.dtype, fn is np.max)
        return [np.asarray(fn(x, axis=axes, keepdims=bool(at["keepdims"]), **kw)).astype(x.dtype)]

    return ref


REDUCTIONS: dict[str, tuple[str, Callable[..., np.ndarray], str]] = {
    "reduce_sum": ("ReduceSum", np.sum, "sum"),
    "reduce_mean": ("ReduceMean", np.mean, "mean"),
    "reduce_max": ("ReduceMax", np.max, "maximum"),
    "reduce_min": ("ReduceMin", np.min, "minimum"),
    "reduce_prod": ("ReduceProd", np.prod, "product"),
}

for _name, (_onnx, _fn, _what) in REDUCTIONS.items():
    register(
        OpInfo(
            name=_name,
            shape=_reduce_shape,
            reference=_reduce_ref(_fn),
            work=reduce_work,
            attrs={"axes": AttrSpec("ints", None), "keepdims": AttrSpec("int", 1)},
            onnx=(_onnx,),
            traits=frozenset({"reduction"}),
            doc=f"{_what} over axes (None: all axes), reduced axes kept as 1 when keepdims",
        )
    )


def _arg_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    return _reduce_shape(d, ins, {"axes": (at["axis"],), "keepdims": at["keepdims"]})


def _arg_ref(fn: Callable[..., np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
        x = ins[0]
        assert x is not None
        axis = normalize_axis(at["axis"], x.ndim)
        if at["select_last_index"]:
            flipped = np.flip(x, axis=axis)
            out = x.shape[axis] - 1 - fn(flipped, axis=axis, keepdims=True)
        else:
            out = fn(x, axis=axis, keepdims=True)
        if not at["keepdims"]:
            out = np.squeeze(out, axis=axis)
        return [np.asarray(out, dtype=np.int64)]

    return ref


for _name, _onnx, _fn in (("argmax", "ArgMax", np.argmax), ("argmin", "ArgMin", np.argmin)):
    register(
        OpInfo(
            name=_name,
            shape=_arg_shape,
            reference=_arg_ref(_fn),
            work=reduce_work,
            attrs={
                "axis": AttrSpec("int", 0),
                "keepdims": AttrSpec("int", 1),
                "select_last_index": AttrSpec("int", 0),
            },
            dtype=lambda ins, at: ["int64"],
            onnx=(_onnx,),
            traits=frozenset({"reduction"}),
            doc=f"int64 index of the {_name[3:]} along axis "
            "(first, or last with select_last_index)",
        )
    )
