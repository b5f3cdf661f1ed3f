"""Data-movement ops: transpose, reshape, concat, split, slice, gather, expand, pad, tile, and the
shape ops (``shape_of``, ``constant_of_shape``). Every static parameter is an attribute."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from satura.engine.errors import InputError
from satura.engine.ops.registry import AttrSpec, OpInfo, Work, register
from satura.engine.shapes import DimOps, IntDims, Shape, normalize_axis


def _numel(shape: Sequence[Any]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def move_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    """Data movement: no arithmetic, read what is written plus the outputs."""
    out_bytes = sum(_numel(t.shape) * t.itemsize for t in outs)
    return Work(0.0, float(2 * out_bytes))


def _view_work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    return Work(0.0, 0.0)


def _x(ins: Sequence[Shape | None]) -> Shape:
    x = ins[0]
    assert x is not None
    return tuple(x)


# -- transpose ---------------------------------------------------------------------------------
def _transpose_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    perm = at["perm"]
    d.require(
        sorted(perm) == list(range(len(x))),
        f"transpose: perm {perm} is not a permutation of rank {len(x)}",
    )
    return [tuple(x[p] for p in perm)]


register(
    OpInfo(
        name="transpose",
        shape=_transpose_shape,
        attrs={"perm": AttrSpec("ints")},
        reference=lambda ins, at: [np.transpose(ins[0], at["perm"])],  # type: ignore[arg-type]
        work=move_work,
        onnx=("Transpose",),
        traits=frozenset({"layout"}),
        doc="permute dimensions: out.shape[i] = x.shape[perm[i]]",
    )
)


# -- reshape -----------------------------------------------------------------------------------
def _reshape_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    shape = tuple(at["shape"])
    d.require(
        d.eq(d.prod(x), d.prod(shape)),
        f"reshape: {len(x)}-D input and target {shape} differ in element count",
    )
    return [shape]


def _concrete(dims: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in dims)


register(
    OpInfo(
        name="reshape",
        shape=_reshape_shape,
        attrs={"shape": AttrSpec("dims")},
        reference=lambda ins, at: [np.reshape(ins[0], _concrete(at["shape"]))],  # type: ignore
        work=_view_work,
        onnx=("Reshape", "Flatten", "Squeeze", "Unsqueeze"),
        traits=frozenset({"view", "layout"}),
        doc="same elements in a new shape (explicit dims: the importer resolves -1 and 0)",
    )
)


# -- concat / split ----------------------------------------------------------------------------
def _concat_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    shapes = [tuple(s) for s in ins if s is not None]
    rank = len(shapes[0])
    axis = normalize_axis(at["axis"], rank)
    total: Any = 0
    for s in shapes:
        d.require(len(s) == rank, "concat: inputs differ in rank")
        for i in range(rank):
            if i != axis:
                d.require(d.eq(s[i], shapes[0][i]), f"concat: dimension {i} differs")
        total = total + s[axis]
    return [(*shapes[0][:axis], total, *shapes[0][axis + 1 :])]


register(
    OpInfo(
        name="concat",
        shape=_concat_shape,
        inputs=(1, None),
        attrs={"axis": AttrSpec("int")},
        reference=lambda ins, at: [np.concatenate(list(ins), axis=at["axis"])],  # type: ignore
        work=move_work,
        onnx=("Concat",),
        traits=frozenset({"layout"}),
        doc="join inputs along axis",
    )
)


def _split_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    axis = normalize_axis(at["axis"], len(x))
    sizes = at["sizes"]
    d.require(len(sizes) >= 1, "split: sizes is empty")
    total: Any = 0
    for s in sizes:
        total = total + s
    d.require(d.eq(total, x[axis]), f"split: sizes {tuple(sizes)} do not sum to the axis length")
    return [(*x[:axis], s, *x[axis + 1 :]) for s in sizes]


def _split_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    cuts = np.cumsum([int(s) for s in at["sizes"]])[:-1]
    return list(np.split(x, cuts, axis=at["axis"]))


register(
    OpInfo(
        name="split",
        shape=_split_shape,
        reference=_split_ref,
        outputs=0,
        dtype=lambda ins, at: [ins[0] or "float32"] * len(at["sizes"]),
        num_outputs_fn=lambda at: len(at["sizes"]),
        attrs={"axis": AttrSpec("int", 0), "sizes": AttrSpec("dims")},
        work=move_work,
        onnx=("Split",),
        traits=frozenset({"layout"}),
        doc="cut x along axis into pieces of the given sizes (one output each)",
    )
)


# -- slice -------------------------------------------------------------------------------------
BIG = 2**31  # ONNX exporters write INT_MAX / INT64_MAX for "to the end"


def _clamp(d: DimOps, v: Any, lo: Any, hi: Any) -> Any:
    """v clamped to [lo, hi]; where sympy cannot decide, v is kept (an in-range index)."""
    return d.select(d.ge(hi, v), d.select(d.ge(v, lo), v, lo), hi)


def _nonneg(d: DimOps, v: Any) -> Any:
    """max(v, 0); where sympy cannot decide, v is kept (a non-empty slice)."""
    return d.select(d.ge(v, 0), v, 0)


def slice_bounds(d: DimOps, size: Any, start: Any, end: Any, step: int) -> tuple[Any, Any, Any]:
    """ONNX Slice clamping of one axis: (start, end, length); end -1 means 'before index 0'."""
    if step == 0:
        d.require(False, "slice: step 0")
    if isinstance(start, int):
        if start >= BIG:
            start = size if step > 0 else size - 1
        elif start < 0:
            start = start + size
    if isinstance(end, int):
        if end >= BIG:
            end = size
        elif end <= -BIG:
            end = 0 if step > 0 else -1
        elif end < 0:
            end = end + size
    if step > 0:
        start = _clamp(d, start, 0, size)
        end = _clamp(d, end, 0, size)
        return start, end, _nonneg(d, d.floordiv(end - start + step - 1, step))
    start = _clamp(d, start, 0, size - 1)
    end = _clamp(d, end, -1, size - 1)
    return start, end, _nonneg(d, d.floordiv(start - end - step - 1, -step))


def _slice_params(rank: int, at: Any) -> list[tuple[int, Any, Any, int]]:
    starts, ends = at["starts"], at["ends"]
    axes = at["axes"] if at["axes"] is not None else tuple(range(len(starts)))
    steps = at["steps"] if at["steps"] is not None else (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        IntDims().require(False, "slice: starts, ends, axes, steps differ in length")
    return [
        (normalize_axis(a, rank), s, e, st)
        for a, s, e, st in zip(axes, starts, ends, steps, strict=True)
    ]


def _slice_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    out = list(_x(ins))
    for axis, s, e, st in _slice_params(len(out), at):
        out[axis] = slice_bounds(d, out[axis], s, e, st)[2]
    return [tuple(out)]


def _slice_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    idx: list[slice] = [slice(None)] * x.ndim
    d = IntDims()
    for axis, s, e, st in _slice_params(x.ndim, at):
        b, f, _ = slice_bounds(d, x.shape[axis], int(s), int(e), st)
        idx[axis] = slice(b, None if f < 0 else f, st)
    return [x[tuple(idx)]]


register(
    OpInfo(
        name="slice",
        shape=_slice_shape,
        reference=_slice_ref,
        work=move_work,
        attrs={
            "starts": AttrSpec("dims"),
            "ends": AttrSpec("dims"),
            "axes": AttrSpec("ints", None),
            "steps": AttrSpec("ints", None),
        },
        onnx=("Slice",),
        traits=frozenset({"layout"}),
        doc="ONNX Slice: per axis, start:end:step with negative indices and clamping",
    )
)


# -- gather ------------------------------------------------------------------------------------
def wrap_indices(op: str, idx: np.ndarray, sizes: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """``idx`` with each negative index counted from the end of its axis. ``sizes``/``axes``: the
    size and number of the axis each index selects on (one entry: every index; several: one per
    element of the indices' last dim). An index outside ``[-size, size-1]`` raises InputError:
    ONNX leaves it undefined, and numpy would wrap it a second time or raise IndexError."""
    lim = np.asarray(sizes[0] if len(sizes) == 1 else sizes, np.int64)
    bad = np.flatnonzero((idx < -lim) | (idx >= lim))
    if bad.size:
        pos = int(bad[0])
        k = 0 if len(sizes) == 1 else pos % len(sizes)
        where = [int(i) for i in np.unravel_index(pos, idx.shape)]
        raise InputError(
            f"{op}: index {int(idx.reshape(-1)[pos])} at {where} is out of range "
            f"[{-sizes[k]}, {sizes[k] - 1}] for axis {axes[k]} (size {sizes[k]})"
        )
    return np.where(idx < 0, idx + lim, idx)


def _first_dtype(ins: Sequence[str | None], at: Any) -> list[str]:
    return [ins[0] or "float32"]


def _gather_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    axis = normalize_axis(at["axis"], len(x))
    return [(*x[:axis], *idx, *x[axis + 1 :])]


def _gather_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    axis = normalize_axis(at["axis"], x.ndim)
    return [np.take(x, wrap_indices("gather", idx, [x.shape[axis]], [axis]), axis=axis)]


register(
    OpInfo(
        name="gather",
        shape=_gather_shape,
        reference=_gather_ref,
        inputs=(2, 2),
        attrs={"axis": AttrSpec("int", 0)},
        work=move_work,
        dtype=_first_dtype,
        onnx=("Gather",),
        traits=frozenset({"index"}),
        doc="take x's slices at integer indices along axis (negative indices count from the end)",
    )
)


def _gather_elements_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    d.require(len(x) == len(idx), "gather_elements: x and indices differ in rank")
    normalize_axis(at["axis"], len(x))
    return [tuple(idx)]


def _gather_elements_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    axis = normalize_axis(at["axis"], x.ndim)
    idx = wrap_indices("gather_elements", idx, [x.shape[axis]], [axis])
    return [np.take_along_axis(x, idx, axis=axis)]


register(
    OpInfo(
        name="gather_elements",
        shape=_gather_elements_shape,
        reference=_gather_elements_ref,
        inputs=(2, 2),
        attrs={"axis": AttrSpec("int", 0)},
        work=move_work,
        dtype=_first_dtype,
        onnx=("GatherElements",),
        traits=frozenset({"index"}),
        doc="out[i][j]... = x[..., indices[i][j]..., ...] along axis (numpy take_along_axis)",
    )
)


# -- expand / tile / pad -----------------------------------------------------------------------
def _expand_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    return [d.broadcast_shapes(_x(ins), tuple(at["shape"]))]


def _expand_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    shape = _expand_shape(IntDims(), [x.shape], {"shape": _concrete(at["shape"])})[0]
    return [np.array(np.broadcast_to(x, shape))]


register(
    OpInfo(
        name="expand",
        shape=_expand_shape,
        reference=_expand_ref,
        work=move_work,
        attrs={"shape": AttrSpec("dims")},
        onnx=("Expand",),
        traits=frozenset({"layout"}),
        doc="broadcast x with a shape (ONNX Expand: both ways, numpy rules)",
    )
)


def _tile_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    reps = at["repeats"]
    d.require(len(reps) == len(x), "tile: repeats must have one entry per dimension")
    return [tuple(a * r for a, r in zip(x, reps, strict=True))]


register(
    OpInfo(
        name="tile",
        shape=_tile_shape,
        work=move_work,
        attrs={"repeats": AttrSpec("ints")},
        reference=lambda ins, at: [np.tile(ins[0], at["repeats"])],  # type: ignore[arg-type]
        onnx=("Tile",),
        traits=frozenset({"layout"}),
        doc="repeat x repeats[i] times along axis i",
    )
)


def _pad_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    pads = at["pads"]
    d.require(len(pads) == 2 * len(x), "pad: pads must be (begin..., end...) for every axis")
    d.require(
        at["mode"] in ("constant", "reflect", "edge", "wrap"), f"pad: unknown mode {at['mode']}"
    )
    return [tuple(x[i] + pads[i] + pads[len(x) + i] for i in range(len(x)))]


def _pad_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    r = x.ndim
    pads = at["pads"]
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[r + i])) for i in range(r))
    x = x[crop]
    width = [(max(0, pads[i]), max(0, pads[r + i])) for i in range(r)]
    if at["mode"] == "constant":
        return [np.pad(x, width, constant_values=np.asarray(at["value"]).astype(x.dtype))]
    return [np.pad(x, width, mode=at["mode"])]


register(
    OpInfo(
        name="pad",
        shape=_pad_shape,
        reference=_pad_ref,
        work=move_work,
        attrs={
            "pads": AttrSpec("ints"),
            "mode": AttrSpec("str", "constant"),
            "value": AttrSpec("float", 0.0),
        },
        onnx=("Pad",),
        traits=frozenset({"layout"}),
        doc="pad (or crop, when negative) each axis by (begin..., end...); constant/reflect/edge",
    )
)


# -- shape ops ---------------------------------------------------------------------------------
def _shape_range(rank: int, at: Any) -> tuple[int, int]:
    start, end = at["start"], at["end"]
    end = rank if end is None else end
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(start, end)


def _shape_of_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    b, e = _shape_range(len(_x(ins)), at)
    return [(e - b,)]


def _shape_of_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    b, e = _shape_range(x.ndim, at)
    return [np.array(x.shape[b:e], dtype=np.int64)]


register(
    OpInfo(
        name="shape_of",
        shape=_shape_of_shape,
        reference=_shape_of_ref,
        work=_view_work,
        attrs={"start": AttrSpec("int", 0), "end": AttrSpec("int", None)},
        dtype=lambda ins, at: ["int64"],
        onnx=("Shape",),
        traits=frozenset({"shape"}),
        doc="x's dimensions start:end as an int64 vector",
    )
)


register(
    OpInfo(
        name="constant_of_shape",
        inputs=(0, 0),
        work=move_work,
        shape=lambda d, ins, at: [tuple(at["shape"])],
        reference=lambda ins, at: [np.full(_concrete(at["shape"]), at["value"], dtype=at["dtype"])],
        attrs={
            "shape": AttrSpec("dims"),
            "value": AttrSpec("float", 0.0),
            "dtype": AttrSpec("dtype", "float32"),
        },
        dtype=lambda ins, at: [at["dtype"]],
        onnx=("ConstantOfShape",),
        traits=frozenset({"shape"}),
        doc="a tensor of the given shape filled with value",
    )
)


def _arange_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    (start, limit), delta = at["bounds"], at["delta"]
    # ceil((limit - start) / delta), at least 0; the bounds are integers, delta a nonzero one
    span = limit - start if delta > 0 else start - limit
    step = abs(delta)
    return [(d.max(d.floordiv(span + step - 1, step), 0),)]


register(
    OpInfo(
        name="arange",
        inputs=(0, 0),
        work=move_work,
        shape=_arange_shape,
        reference=lambda ins, at: [
            np.arange(*_concrete(at["bounds"]), at["delta"], dtype=at["dtype"])
        ],
        attrs={
            "bounds": AttrSpec("dims"),
            "delta": AttrSpec("int"),
            "dtype": AttrSpec("dtype", "int64"),
        },
        dtype=lambda ins, at: [at["dtype"]],
        onnx=("Range",),
        traits=frozenset({"shape"}),
        doc="start, start + delta, ... below limit (bounds = (start, limit), integers that may "
        "be symbolic: torch's arange over a dynamic length)",
    )
)


def _nonzero_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    return [(max(len(_x(ins)), 1), at["count"][0])]  # a scalar counts as [1]


register(
    OpInfo(
        name="nonzero",
        work=move_work,
        shape=_nonzero_shape,
        reference=lambda ins, at: [
            np.array(np.nonzero(np.atleast_1d(ins[0])), dtype=np.int64).reshape(
                max(np.ndim(ins[0]), 1), -1
            )
        ],
        attrs={"count": AttrSpec("dims")},
        dtype=lambda ins, at: ["int64"],
        onnx=("NonZero",),
        traits=frozenset({"data_dependent"}),
        doc="the indices of the nonzero entries, [rank, count]: count = (symbol,) is known only "
        "once the input's values are (a data-dependent size; see targets/staged.py)",
    )
)


def _unique_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, n, axis = _x(ins), at["count"][0], at["axis"]
    if axis is None:
        return [(n,), (n,), (d.prod(x),), (n,)]
    ax = normalize_axis(axis, len(x))
    return [(*x[:ax], n, *x[ax + 1 :]), (n,), (x[ax],), (n,)]


def _unique_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    """np.unique's values, first indices, inverse and counts; ``sorted=0``: in order of first
    occurrence (ONNX Unique)."""
    x = ins[0]
    assert x is not None
    axis = at["axis"]
    if axis is not None:
        axis = normalize_axis(axis, x.ndim)
    y, first, inverse, counts = np.unique(
        x, return_index=True, return_inverse=True, return_counts=True, axis=axis
    )
    inverse = inverse.reshape(-1)
    if not at["sorted"]:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return [y, *(a.astype(np.int64) for a in (first, inverse, counts))]


register(
    OpInfo(
        name="unique",
        shape=_unique_shape,
        reference=_unique_ref,
        outputs=4,
        attrs={
            "count": AttrSpec("dims"),
            "axis": AttrSpec("int", None),
            "sorted": AttrSpec("int", 1),
        },
        dtype=lambda ins, at: [ins[0] or "float32", "int64", "int64", "int64"],
        work=move_work,
        onnx=("Unique",),
        traits=frozenset({"data_dependent"}),
        doc="the distinct values (slices along axis; of the flattened input without one), the "
        "index of each one's first occurrence, each entry's index among them, and their counts; "
        "count = (symbol,) is a data-dependent size",
    )
)


def _corners(boxes: np.ndarray, center: int) -> tuple[np.ndarray, ...]:
    """(x_min, x_max, y_min, y_max) of [..., 4] boxes: [y1, x1, y2, x2] with either diagonal
    (``center`` 0), or [x_center, y_center, width, height]."""
    if center:
        x, y, w, h = (boxes[..., i] for i in range(4))
        return x - w / 2, x + w / 2, y - h / 2, y + h / 2
    y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
    return np.minimum(x1, x2), np.maximum(x1, x2), np.minimum(y1, y2), np.maximum(y1, y2)


def _suppresses(one: np.ndarray, many: np.ndarray, center: int, iou: float) -> np.ndarray:
    """Which of ``many`` boxes overlap ``one`` with an IoU above ``iou`` (boxes that do not
    intersect, or have no area, never do)."""
    ax0, ax1, ay0, ay1 = _corners(one, center)
    bx0, bx1, by0, by1 = _corners(many, center)
    w = np.minimum(ax1, bx1) - np.maximum(ax0, bx0)
    h = np.minimum(ay1, by1) - np.maximum(ay0, by0)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    a, b = (ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0)
    union = a + b - inter
    ok = (inter > 0) & (a > 0) & (b > 0) & (union > 0)
    with np.errstate(all="ignore"):
        return ok & (inter / np.where(ok, union, 1.0) > iou)


def _nms_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    """Greedy per batch and class: the highest score left (ties: the lower index) is kept, and
    the candidates it overlaps by more than the IoU threshold are dropped; at most
    ``max_output_boxes_per_class`` a class; candidates score above ``score_threshold``."""
    boxes, scores = ins[0], ins[1]
    assert boxes is not None
    assert scores is not None

    def scalar(i: int, default: float) -> float:
        v = ins[i] if len(ins) > i else None
        return default if v is None or np.size(v) == 0 else np.asarray(v).reshape(-1)[0].item()

    most, iou = int(max(scalar(2, 0), 0)), float(scalar(3, 0.0))
    threshold = None if len(ins) <= 4 or ins[4] is None or ins[4].size == 0 else scalar(4, 0.0)
    out: list[tuple[int, int, int]] = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            cand = np.arange(s.size) if threshold is None else np.flatnonzero(s > threshold)
            order = cand[np.argsort(-s[cand], kind="stable")]
            kept = 0
            while order.size and kept < most:
                i, order = order[0], order[1:]
                out.append((b, c, int(i)))
                kept += 1
                order = order[
                    ~_suppresses(boxes[b, i], boxes[b, order], at["center_point_box"], iou)
                ]
    return [np.array(out, dtype=np.int64).reshape(-1, 3)]


def _nms_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    boxes, scores = _x(ins), ins[1]
    d.require(len(boxes) == 3 and d.eq(boxes[2], 4), "nms: boxes must be [batch, n, 4]")
    d.require(scores is not None and len(scores) == 3, "nms: scores must be [batch, classes, n]")
    assert scores is not None
    d.require(d.eq(scores[0], boxes[0]), "nms: boxes and scores differ in batch")
    d.require(d.eq(scores[2], boxes[1]), "nms: boxes and scores differ in the number of boxes")
    return [(at["count"][0], 3)]


register(
    OpInfo(
        name="nms",
        shape=_nms_shape,
        reference=_nms_ref,
        inputs=(2, 5),
        attrs={"count": AttrSpec("dims"), "center_point_box": AttrSpec("int", 0)},
        dtype=lambda ins, at: ["int64"],
        work=move_work,
        onnx=("NonMaxSuppression",),
        traits=frozenset({"data_dependent"}),
        doc="non-maximum suppression of boxes [batch, n, 4] by scores [batch, classes, n] "
        "(optional inputs: max boxes per class, IoU threshold, score threshold): the kept "
        "(batch, class, box) indices, [count, 3]; count = (symbol,) is a data-dependent size",
    )
)


def _same_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    return [tuple(_x(ins))]


def _scan_ref(op: str) -> Callable[[Sequence[np.ndarray | None], Any], list[np.ndarray]]:
    """Reference of cumsum or cumprod (exclusive: shifted by one, the identity first)."""
    fn, ident = (np.cumsum, 0) if op == "cumsum" else (np.cumprod, 1)

    def ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
        x = ins[0]
        assert x is not None
        ax = normalize_axis(at["axis"], x.ndim)
        y = np.flip(x, ax) if at["reverse"] else x
        s = fn(y, axis=ax, dtype=x.dtype)
        if at["exclusive"] and x.shape[ax]:
            first = np.full_like(np.take(s, [0], axis=ax), ident)
            s = np.concatenate([first, np.delete(s, -1, axis=ax)], axis=ax)
        return [np.flip(s, ax) if at["reverse"] else s]

    return ref


for _op, _onnx, _what in (("cumsum", "CumSum", "sum"), ("cumprod", "CumProd", "product")):
    register(
        OpInfo(
            name=_op,
            shape=_same_shape,
            reference=_scan_ref(_op),
            work=move_work,
            attrs={
                "axis": AttrSpec("int"),
                "exclusive": AttrSpec("int", 0),
                "reverse": AttrSpec("int", 0),
            },
            onnx=(_onnx,),
            traits=frozenset({"scan"}),
            doc=f"running {_what} along axis (exclusive: without the element itself; reverse: "
            "from the end)",
        )
    )


def _trilu_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    fn = np.triu if at["upper"] else np.tril
    return [fn(x, at["k"]) if x.ndim >= 2 else x.copy()]


register(
    OpInfo(
        name="trilu",
        shape=_same_shape,
        reference=_trilu_ref,
        work=move_work,
        attrs={"upper": AttrSpec("int", 1), "k": AttrSpec("int", 0)},
        onnx=("Trilu",),
        traits=frozenset({"layout"}),
        doc="the upper (upper=1) or lower triangle of the last two axes from diagonal k, "
        "0 elsewhere",
    )
)


# -- indexing by tuples, scatter, top-k, one-hot -----------------------------------------------
def _gather_nd_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    b, depth = at["batch_dims"], idx[-1]
    d.require(
        isinstance(depth, int) and b + depth <= len(x),
        "gather_nd: the index depth (indices' last dim) must be static and fit the data",
    )
    return [(*idx[:-1], *x[b + int(depth) :])]


def _gather_nd_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, idx = ins[0], ins[1]
    assert x is not None
    assert idx is not None
    b = at["batch_dims"]
    depth = idx.shape[-1]
    lead = x.shape[:b]
    axes = list(range(b, b + depth))
    idx = wrap_indices("gather_nd", idx, [x.shape[a] for a in axes], axes)
    xb = x.reshape(int(np.prod(lead)), *x.shape[b:])
    ib = idx.reshape(xb.shape[0], int(np.prod(idx.shape[b:-1])), depth)
    out = [xb[i][tuple(ib[i].T)] for i in range(ib.shape[0])]
    res = np.stack(out)
    return [res.reshape(*lead, *idx.shape[b:-1], *x.shape[b + depth :])]


register(
    OpInfo(
        name="gather_nd",
        shape=_gather_nd_shape,
        reference=_gather_nd_ref,
        inputs=(2, 2),
        attrs={"batch_dims": AttrSpec("int", 0)},
        work=move_work,
        dtype=_first_dtype,
        onnx=("GatherND",),
        traits=frozenset({"index"}),
        doc="take x's slices at integer index tuples (the indices' last axis), after batch_dims",
    )
)


_SCATTER_COMBINE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_update(reduction: str, old: Any, new: Any) -> Any:
    """What a scatter writes where an update lands: the update, or it combined with the old."""
    return new if reduction == "none" else _SCATTER_COMBINE[reduction](old, new)


def _scatter_nd_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, idx, upd = ins
    assert x is not None
    assert idx is not None
    assert upd is not None
    out = x.copy()
    depth = idx.shape[-1]
    axes = list(range(depth))
    flat_i = wrap_indices("scatter_nd", idx, [x.shape[a] for a in axes], axes).reshape(-1, depth)
    flat_u = upd.reshape(len(flat_i), *x.shape[depth:])
    for t, u in zip(flat_i, flat_u, strict=True):
        key = tuple(t)
        out[key] = _scatter_update(at["reduction"], out[key], u)
    return [out]


def _scatter_elements_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, idx, upd = ins
    assert x is not None
    assert idx is not None
    assert upd is not None
    ax = normalize_axis(at["axis"], x.ndim)
    out = x.copy()
    idx = wrap_indices("scatter_elements", idx, [x.shape[ax]], [ax])
    for pos in np.ndindex(*idx.shape):
        key = list(pos)
        key[ax] = int(idx[pos])
        k = tuple(key)
        out[k] = _scatter_update(at["reduction"], out[k], upd[pos])
    return [out]


def _scatter_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    d.require(
        at["reduction"] in ("none", "add", "mul", "max", "min"),
        f"scatter: unknown reduction {at['reduction']}",
    )
    return [tuple(_x(ins))]


register(
    OpInfo(
        name="scatter_nd",
        shape=_scatter_shape,
        reference=_scatter_nd_ref,
        inputs=(3, 3),
        attrs={"reduction": AttrSpec("str", "none")},
        work=move_work,
        dtype=_first_dtype,
        onnx=("ScatterND",),
        traits=frozenset({"index"}),
        doc="x with the slices at index tuples replaced by (or combined with) updates",
    )
)
register(
    OpInfo(
        name="scatter_elements",
        shape=_scatter_shape,
        reference=_scatter_elements_ref,
        inputs=(3, 3),
        attrs={"axis": AttrSpec("int", 0), "reduction": AttrSpec("str", "none")},
        work=move_work,
        dtype=_first_dtype,
        onnx=("ScatterElements", "Scatter"),
        traits=frozenset({"index"}),
        doc="x with the elements at indices along axis replaced by (or combined with) updates",
    )
)


def _topk_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = _x(ins)
    ax = normalize_axis(at["axis"], len(x))
    d.require(at["k"] >= 0, "topk: k must be >= 0")
    shape = tuple(at["k"] if i == ax else s for i, s in enumerate(x))
    return [shape, shape]


def _topk_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x = ins[0]
    assert x is not None
    ax = normalize_axis(at["axis"], x.ndim)
    # stable sort: equal values keep the smaller index first (as ONNX asks)
    # largest: an order-reversing key, ~x for integers (no overflow) and -x for floats
    key = (~x if x.dtype.kind in "iu" else -x) if at["largest"] else x
    order = np.argsort(key, axis=ax, kind="stable")
    idx = np.take(order, np.arange(at["k"]), axis=ax)  # sorted: also a valid unsorted order
    return [np.take_along_axis(x, idx, axis=ax), idx.astype(np.int64)]


register(
    OpInfo(
        name="topk",
        shape=_topk_shape,
        reference=_topk_ref,
        outputs=2,
        attrs={
            "k": AttrSpec("dim"),
            "axis": AttrSpec("int", -1),
            "largest": AttrSpec("int", 1),
            "sorted": AttrSpec("int", 1),
        },
        dtype=lambda ins, at: [ins[0] or "float32", "int64"],
        work=move_work,
        onnx=("TopK",),
        traits=frozenset({"index"}),
        doc="the k largest (or smallest) values along axis and their "
        "indices, sorted; ties: the smaller index first",
    )
)


def _one_hot_shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    idx, values = _x(ins), ins[1]
    assert values is not None
    d.require(
        d.eq(d.prod(values), 2),
        f"one_hot: values must be the two values [off, on], got shape {tuple(values)}",
    )
    ax = normalize_axis(at["axis"], len(idx) + 1)
    return [(*idx[:ax], at["depth"], *idx[ax:])]


def _one_hot_ref(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    idx, values = ins[0], ins[1]
    assert idx is not None
    assert values is not None
    depth = at["depth"]
    ax = normalize_axis(at["axis"], idx.ndim + 1)
    i = np.where(idx < 0, idx + depth, idx).astype(np.int64)
    hot = np.expand_dims(i, ax) == np.arange(depth).reshape(
        [-1 if k == ax else 1 for k in range(idx.ndim + 1)]
    )
    off, on = values.ravel()[0], values.ravel()[1]
    return [np.where(hot, on, off).astype(values.dtype)]


register(
    OpInfo(
        name="one_hot",
        shape=_one_hot_shape,
        reference=_one_hot_ref,
        inputs=(2, 2),
        attrs={"depth": AttrSpec("int"), "axis": AttrSpec("int", -1)},
        dtype=lambda ins, at: [ins[1] or "float32"],
        work=move_work,
        onnx=("OneHot",),
        traits=frozenset({"index"}),
        doc="values[1] where the index equals the position along the "
        "new axis (of size depth), values[0] elsewhere",
    )
)
