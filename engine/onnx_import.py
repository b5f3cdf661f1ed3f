"""ONNX import: a ``ModelProto`` (opset 13 and later) becomes a satura :class:`Graph`.

Each ONNX op type has one converter in ``CONVERTERS`` (a table keyed by op type, as xDSL's
lowering tables are). Static parameters that ONNX passes as tensors (Reshape's shape, Slice's
starts, Unsqueeze's axes, ...) must be known at import and become attributes. "Known" covers
constants and small integer tensors whose values are symbolic (``Shape`` of a tensor with a
``batch`` dimension is known as ``(batch, 128)``), so torch's Shape → Gather → Concat → Reshape
chains fold into reshape attributes. Nodes whose inputs are all constant are folded with the
ops' numpy references.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import sympy
from onnx import helper, numpy_helper
from satura.engine.errors import (
    InputError,
    ModelError,
    SaturaError,
    ShapeError,
    UnsupportedOpError,
)
from satura.engine.fold import try_fold
from satura.engine.graph import DTYPES, Graph, Value
from satura.engine.ops import OPS
from satura.engine.shapes import as_dim

MIN_OPSET = 7  # converters handle the changes since (attrs that became inputs)
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest the pinned onnx knows
MAX_KNOWN = 64  # integer tensors up to this size have their values tracked at import

Converter = Callable[["NodeCtx"], list[Value | None]]
CONVERTERS: dict[str, Converter] = {}
SATURA_DOMAIN = "ai.satura"  # satura's own ops, as onnx_export writes them
SATURA_CONVERTER: Converter | None = None  # set by onnx_converters
# An ONNX op satura has no converter for, but whose schema defines it as a function of other
# ops, imports as that function's body (set by onnx_control).
FUNCTION_CONVERTER: Converter | None = None
# onnxruntime's contrib ops that exporters and its quantizer write into model files
CONTRIB_DOMAIN = "com.microsoft"


class Seq(tuple):  # type: ignore[type-arg]
    """An ONNX sequence known at import: its tensors, in order (sequences live only at import;
    the graph holds tensors). ``dtype`` is the element type (an empty sequence has one too)."""

    dtype: str

    def __new__(cls, items: Sequence[Value], dtype: str) -> Seq:
        seq = super().__new__(cls, items)
        seq.dtype = dtype
        return seq


# domain -> its converters (ai.onnx is the default domain spelled out)
DOMAIN_CONVERTERS: dict[str, dict[str, Converter]] = {
    "": CONVERTERS,
    "ai.onnx": CONVERTERS,
    CONTRIB_DOMAIN: {},
}


def converter(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register a function as the converter of the given ONNX op types of ``domain`` (one of
    ``DOMAIN_CONVERTERS``)."""
    table = DOMAIN_CONVERTERS[domain]

    def deco(fn: Converter) -> Converter:
        for t in op_types:
            table[t] = fn
        return fn

    return deco


def onnx_dtype(elem_type: int, where: str) -> str:
    """satura dtype name of an ONNX element type; ModelError when satura has none."""
    try:
        name = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        name = ""
    if elem_type == onnx.TensorProto.BFLOAT16:
        name = "bfloat16"
    if elem_type == onnx.TensorProto.STRING or name not in DTYPES or name == "string":
        tname = (
            onnx.TensorProto.DataType.Name(elem_type)
            if elem_type in onnx.TensorProto.DataType.values()
            else str(elem_type)
        )
        raise ModelError(f"{where}: element type {tname} is not supported")
    return name


# -- the importer ------------------------------------------------------------------------------
class Importer:
    """Builds one Graph from one ModelProto."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | None) -> None:
        self.model, self.base_dir = model, base_dir
        self.graph = Graph(model.graph.name or "model")
        self.values: dict[str, Value] = {}
        # id(Value) -> (the Value, its known value: an object array of ints / sympy). The entry
        # holds the Value, so its id is never reused for another while this import runs
        # (constants that folding consumed are otherwise freed, and a stale entry once attached
        # a freed constant's value to a new one).
        self._known: dict[int, tuple[Value, np.ndarray]] = {}
        self.symbols: dict[str, sympy.Symbol] = {}
        # id(an integer Value QuantizeLinear made) -> (that Value, the float it was cast from,
        # which holds the same integers): DequantizeLinear reads the float, and no cast pair runs
        self.quantized: dict[int, tuple[Value, Value]] = {}
        self.opset = self._opset()

    def _opset(self) -> int:
        versions = [o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise ModelError("model has no default-domain opset import (not an ONNX model?)")
        v = versions[0]
        if not MIN_OPSET <= v <= MAX_OPSET:
            raise ModelError(
                f"opset {v} is not supported (satura reads opsets "
                f"{MIN_OPSET}..{MAX_OPSET}); convert the model with "
                "onnx.version_converter"
            )
        return v

    def exact_float(self, v: Value, dtype: str) -> Value | None:
        """The float of type ``dtype`` that a quantizing op cast integer ``v`` from, if any."""
        made = self.quantized.get(id(v))
        return (
            made[1] if made is not None and made[0] is v and made[1].type.dtype == dtype else None
        )

    def symbol(self, name: str) -> sympy.Symbol:
        if name not in self.symbols:
            self.symbols[name] = sympy.Symbol(name, positive=True, integer=True)
        return self.symbols[name]

    def data_symbol(self, hint: str) -> sympy.Symbol:
        """A fresh size known only from the values at run time (NonZero's count), possibly 0."""
        base = re.sub(r"\W", "_", hint).strip("_") or "n"
        name, i = base, 1
        while name in self.symbols:
            name, i = f"{base}_{i}", i + 1
        self.symbols[name] = sympy.Symbol(name, nonnegative=True, integer=True)
        return self.symbols[name]

    # -- tensors ---------------------------------------------------------------------------------
    def tensor_array(self, t: onnx.TensorProto) -> np.ndarray:
        onnx_dtype(t.data_type, f"initializer '{t.name}'")
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t = self._load_external(t)
        try:
            return np.asarray(numpy_helper.to_array(t))
        except Exception as e:
            raise ModelError(f"initializer '{t.name}' cannot be read: {e}") from None

    def _load_external(self, t: onnx.TensorProto) -> onnx.TensorProto:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if self.base_dir is None:
            raise ModelError(
                f"initializer '{t.name}' has external data '{loc}' but the model "
                "was not loaded from a file"
            )
        base = os.path.realpath(self.base_dir)
        path = os.path.realpath(os.path.join(base, loc))
        if os.path.isabs(loc) or os.path.commonpath([base, path]) != base:
            raise ModelError(
                f"initializer '{t.name}': external data path '{loc}' is outside "
                f"the model's folder {base}"
            )
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                raw = f.read(int(length)) if length else f.read()
        except OSError as e:
            raise ModelError(
                f"initializer '{t.name}': cannot read external data '{loc}': {e.strerror}"
            ) from None
        out = onnx.TensorProto()
        out.CopyFrom(t)
        del out.external_data[:]
        out.data_location = onnx.TensorProto.DEFAULT
        out.raw_data = raw
        return out

    def add_const(self, arr: np.ndarray, name: str) -> Value:
        v = self.graph.add_const(arr, name=name)
        self.note_known(v)
        return v

    def note_known(self, v: Value) -> None:
        if v.data is not None and v.data.dtype.kind in "iub" and v.data.size <= MAX_KNOWN:
            self.set_known(v, np.asarray(v.data.tolist(), dtype=object).reshape(v.data.shape))

    def set_known(self, v: Value, value: np.ndarray) -> None:
        self._known[id(v)] = (v, value)

    def known_of(self, v: Value | None) -> np.ndarray | None:
        """``v``'s value when import knows it (ints and sympy dims), else None."""
        entry = None if v is None else self._known.get(id(v))
        return None if entry is None else entry[1]

    def value_shape(self, vi: onnx.ValueInfoProto) -> tuple[Any, ...]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input '{vi.name}' is not a tensor")
        if not tt.HasField("shape"):
            raise ModelError(f"input '{vi.name}' has no shape (its rank must be known)")
        dims: list[Any] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(self.symbol(d.dim_param))
            else:
                dims.append(self.symbol(f"{vi.name}_d{i}"))
        return tuple(dims)

    # -- the whole model ------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        for t in g.initializer:
            self.values[t.name] = self.add_const(self.tensor_array(t), t.name)
        for vi in g.input:
            if vi.name in self.values:
                continue  # an initializer also listed as an input (old exporters): a constant
            if not vi.type.HasField("tensor_type"):
                kind = vi.type.WhichOneof("value") or "untyped"
                raise ModelError(
                    f"input '{vi.name}' has type {kind}, not a tensor (satura reads tensors only)"
                )
            dtype = onnx_dtype(vi.type.tensor_type.elem_type, f"input '{vi.name}'")
            self.values[vi.name] = self.graph.add_input(vi.name, self.value_shape(vi), dtype)
        for i, node in enumerate(g.node):
            self.convert(node, i)
        outs = []
        for vo in g.output:
            if vo.name not in self.values:
                raise ModelError(f"graph output '{vo.name}' is not produced by any node")
            v = self.values[vo.name]
            if isinstance(v, Seq):
                raise ModelError(
                    f"graph output '{vo.name}' is a sequence (satura's graphs output tensors)"
                )
            if v.name != vo.name or v in self.graph.inputs:
                v = self.graph.add("identity", [v], name=vo.name, out_names=[vo.name]).outputs[0]
            outs.append(v)
        self.graph.set_outputs(*outs)
        self.graph.prune()
        return self.graph

    def schema_function(self, op_type: str) -> bool:
        """Whether ONNX defines ``op_type`` (at this model's opset) as a function of other ops."""
        try:
            schema = onnx.defs.get_schema(op_type, self.opset, "")
        except Exception:  # no such op at this opset
            return False
        return bool(schema.has_function or schema.has_context_dependent_function)

    def convert(self, node: onnx.NodeProto, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        if node.domain == SATURA_DOMAIN:
            fn = SATURA_CONVERTER
        else:
            fn = DOMAIN_CONVERTERS.get(node.domain, {}).get(node.op_type)
        if fn is None and node.domain in ("", "ai.onnx") and self.schema_function(node.op_type):
            fn = FUNCTION_CONVERTER
        if fn is None:
            dom = f"{node.domain}." if node.domain else ""
            hint = ""
            if node.domain == "com.microsoft.nchwc":
                hint = (
                    ": onnxruntime's blocked layout for the machine that saved the model; save "
                    "it at ORT_ENABLE_EXTENDED (or lower) instead of ORT_ENABLE_ALL"
                )
            raise UnsupportedOpError(
                f"unsupported ONNX op '{dom}{node.op_type}' (node '{name}', opset "
                f"{self.opset}){hint}"
            )
        ctx = NodeCtx(self, node, name)
        try:
            outs = fn(ctx)
        except SaturaError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:
            raise ModelError(f"node '{name}' ({node.op_type}): cannot import: {e}") from None
        except AssertionError:  # a converter's expectation of a required input or attribute
            raise ModelError(
                f"node '{name}' ({node.op_type}): cannot import: a required input or "
                "attribute is missing or malformed"
            ) from None
        for i, oname in enumerate(node.output):
            if not oname:
                continue
            if i >= len(outs) or outs[i] is None:
                raise UnsupportedOpError(
                    f"{node.op_type} output {i} ('{oname}') is not supported "
                    f"(node '{name}', opset {self.opset})"
                )
            v = outs[i]
            assert v is not None
            if not isinstance(v, Seq) and id(v) in ctx.created and v.name != oname:
                v.name = self.graph.fresh_name(oname)
            self.values[oname] = v


class NodeCtx:
    """What a converter sees of one ONNX node: its inputs, known values, attributes, emitter."""

    def __init__(self, imp: Importer, node: onnx.NodeProto, name: str) -> None:
        self.imp, self.node, self.name = imp, node, name
        self.op_type, self.opset = node.op_type, imp.opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.created: set[int] = set()

    def fail(self, msg: str) -> ModelError:
        return ModelError(f"node '{self.name}' ({self.op_type}): {msg}")

    # -- inputs --------------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return len(self.node.input)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def inp(self, i: int) -> Value | None:
        if not self.has(i):
            return None
        name = self.node.input[i]
        if name not in self.imp.values:
            raise self.fail(f"input '{name}' is not defined before use")
        v = self.imp.values[name]
        if isinstance(v, Seq):
            raise self.fail(f"input {i} ('{name}') is a sequence, where a tensor is expected")
        return v

    def seq(self, i: int) -> Seq:
        """Input ``i`` as a sequence (ModelError when it is a tensor or absent)."""
        name = self.node.input[i] if i < len(self.node.input) else ""
        v = self.imp.values.get(name) if name else None
        if not isinstance(v, Seq):
            raise self.fail(f"input {i} ('{name}') must be a sequence")
        return v

    def is_seq(self, i: int) -> bool:
        return self.has(i) and isinstance(self.imp.values.get(self.node.input[i]), Seq)

    def x(self, i: int = 0) -> Value:
        v = self.inp(i)
        if v is None:
            raise self.fail(f"input {i} is required")
        return v

    def known(self, i: int) -> np.ndarray | None:
        v = self.inp(i)
        return self.imp.known_of(v)

    def dims(self, i: int, what: str) -> tuple[Any, ...] | None:
        """Input ``i`` as a tuple of dims (ints or sympy), None when absent; ModelError when it is
        not known at import."""
        if not self.has(i):
            return None
        k = self.known(i)
        if k is None:
            raise self.fail(
                f"{what} (input {i}, '{self.node.input[i]}') must be known at "
                "import (a constant or computed from shapes)"
            )
        return tuple(as_dim(v) for v in k.ravel().tolist())

    def const(self, i: int) -> np.ndarray | None:
        v = self._as_const(self.inp(i))
        if v is None:
            return None
        if v.data is None:
            raise self.fail(
                f"input {i} ('{self.node.input[i]}') must be known at import (a constant)"
            )
        return v.data

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.attrs.get(name, default)
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, list):
            return tuple(v)
        return v

    def dtype(self, code: int, what: str) -> str:
        """satura's dtype of an ONNX element type code (an attribute); a ModelError naming the
        node when satura has none."""
        try:
            return onnx_dtype(int(code), what)
        except ModelError as e:
            raise self.fail(str(e)) from None

    def param(self, attr: str, index: int, since: int, what: str) -> tuple[Any, ...] | None:
        """A parameter that is an attribute before opset ``since`` and input ``index`` after."""
        if self.opset >= since:
            return self.dims(index, what)
        a = self.attr(attr)
        return None if a is None else tuple(a)

    def inner(
        self, op_type: str, inputs: Sequence[Value | None], opset: int | None = None, **attrs: Any
    ) -> list[Value | None]:
        """The outputs of a default-domain ``op_type`` node over ``inputs`` with ``attrs``, as
        its converter makes them; errors name this node."""
        names = [f"{self.name}::{i}" if v is not None else "" for i, v in enumerate(inputs)]
        node = helper.make_node(op_type, names, [f"{self.name}::out"], **attrs)
        sub = NodeCtx(self.imp, node, self.name)
        sub.created = self.created
        if opset is not None:
            sub.opset = opset
        for n, v in zip(names, inputs, strict=True):
            if v is not None:
                self.imp.values[n] = v
        try:
            return CONVERTERS[op_type](sub)
        finally:
            for n in names:
                self.imp.values.pop(n, None)

    # -- emitting --------------------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Value | None], **attrs: Any) -> list[Value]:
        """Add (or fold) one satura node; returns its outputs."""
        graph = self.imp.graph
        try:
            folded = try_fold(op, [self._as_const(v) for v in inputs], attrs)
            if folded is not None:
                outs = [self.imp.add_const(a, f"{self.name}_c") for a in folded]
            else:
                outs = graph.add(op, list(inputs), attrs, name=self.name).outputs
        except (ShapeError, InputError) as e:  # InputError: folding met a bad constant index
            raise self.fail(str(e)) from None
        self.created |= {id(o) for o in outs}
        if folded is None:
            self._propagate_known(op, inputs, attrs, outs)
        return outs

    def _as_const(self, v: Value | None) -> Value | None:
        """``v``, or a constant twin of it when its value is known with no symbols (a Shape of a
        static tensor), so that computations on it fold."""
        if v is None or v.is_const:
            return v
        k = _plain(self.imp.known_of(v))
        if k is None or k.dtype == object:
            return v
        return Value(v.name, v.type, data=k.astype(v.type.dtype))

    def one(self, op: str, *inputs: Value | None, **attrs: Any) -> Value:
        return self.emit(op, list(inputs), **attrs)[0]

    def _propagate_known(
        self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any], outs: list[Value]
    ) -> None:
        fn = KNOWN_FNS.get(op)
        if fn is None or len(outs) != 1:
            return
        ks = [self.imp.known_of(v) for v in inputs]
        if op != "shape_of" and any(
            k is None for k, v in zip(ks, inputs, strict=True) if v is not None
        ):
            return
        try:
            out = fn(inputs, ks, attrs)
        except (TypeError, ValueError, IndexError):
            return
        if out is not None and out.size <= MAX_KNOWN:
            self.imp.set_known(outs[0], np.asarray(out, dtype=object))

    def quantized(self, exact: Value, to: str) -> Value:
        """``exact`` (a float holding integers) cast to integer type ``to``, remembered as made
        from it (``Importer.exact_float``): the next reader of the integers reads the float."""
        y = self.one("cast", exact, to=to)
        self.imp.quantized[id(y)] = (y, exact)
        return y

    def scalar(self, value: Any, like: Value, hint: str = "c") -> Value:
        return self.imp.add_const(np.asarray(value, dtype=like.type.dtype), f"{self.name}_{hint}")


# -- known-value evaluation over object arrays (ints and sympy) ----------------------------------
def _kdiv(a: Any, b: Any) -> Any:
    return as_dim(sympy.floor(sympy.sympify(a) / b)) if not isinstance(a, int) else a // b


def _shape_of_known(vs: Sequence[Value | None], ks: Any, at: dict[str, Any]) -> np.ndarray:
    v = vs[0]
    assert v is not None
    shape = v.type.shape
    r = len(shape)
    start, end = at.get("start", 0), at.get("end")
    end = r if end is None else end
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return np.asarray(list(shape[start:end]), dtype=object)


def _plain(k: np.ndarray | None) -> np.ndarray | None:
    """A known array as int64 when it holds no symbols (indices must be real ints)."""
    if k is None or not all(isinstance(v, int) for v in k.ravel().tolist()):
        return k
    return np.asarray(k.ravel().tolist(), dtype=np.int64).reshape(k.shape)


def _ref_on_objects(op: str) -> Callable[..., np.ndarray]:
    def fn(vs: Any, ks: Sequence[np.ndarray | None], at: dict[str, Any]) -> np.ndarray:
        info = OPS[op]
        out = info.reference([_plain(k) for k in ks], info.with_defaults(at))[0]
        return np.asarray(out, dtype=object)

    return fn


def _keq(a: Any, b: Any) -> bool:
    zero = sympy.simplify(sympy.sympify(a) - sympy.sympify(b)).is_zero
    if zero is None:
        raise ValueError("undecidable")  # dims are positive: batch == -1 is decidable
    return bool(zero)


def _kwhere(vs: Any, ks: Sequence[np.ndarray | None], at: dict[str, Any]) -> np.ndarray | None:
    c, a, b = ks
    assert c is not None
    if not all(isinstance(v, bool) for v in c.ravel().tolist()):
        return None
    return np.where(c.astype(bool), a, b)


KNOWN_FNS: dict[str, Callable[..., np.ndarray | None]] = {
    "equal": lambda vs, ks, at: np.vectorize(_keq, otypes=[object])(*ks),
    "where": _kwhere,
    "shape_of": _shape_of_known,
    "gather": _ref_on_objects("gather"),
    "concat": _ref_on_objects("concat"),
    "reshape": lambda vs, ks, at: np.reshape(ks[0], tuple(int(d) for d in at["shape"])),
    "slice": _ref_on_objects("slice"),
    "identity": lambda vs, ks, at: ks[0],
    # a float cast keeps integer values exact (torch casts a length to float for arange)
    "cast": lambda vs, ks, at: (
        ks[0] if at["to"] in ("int64", "int32", "float32", "float64") else None
    ),
    "add": lambda vs, ks, at: np.vectorize(lambda a, b: as_dim(a + b), otypes=[object])(*ks),
    "sub": lambda vs, ks, at: np.vectorize(lambda a, b: as_dim(a - b), otypes=[object])(*ks),
    "mul": lambda vs, ks, at: np.vectorize(lambda a, b: as_dim(a * b), otypes=[object])(*ks),
    "min": lambda vs, ks, at: np.vectorize(lambda a, b: as_dim(sympy.Min(a, b)), otypes=[object])(
        *ks
    ),
    "max": lambda vs, ks, at: np.vectorize(lambda a, b: as_dim(sympy.Max(a, b)), otypes=[object])(
        *ks
    ),
    "div": lambda vs, ks, at: (
        np.vectorize(_kdiv, otypes=[object])(*ks) if vs[0].type.dtype.startswith("int") else None
    ),
    "reduce_prod": lambda vs, ks, at: (
        np.asarray(as_dim(sympy.Mul(*ks[0].ravel().tolist())))
        if at.get("axes") is None and not at.get("keepdims", 1)
        else None
    ),
    "expand": lambda vs, ks, at: np.broadcast_to(ks[0], tuple(int(d) for d in at["shape"])),
}


# -- loading -----------------------------------------------------------------------------------
def load_onnx(model: str | os.PathLike[str] | onnx.ModelProto) -> Graph:
    """Import an ONNX model (a path or a ModelProto) as a satura Graph.

    External data is read only from inside the model's folder. Raises ModelError for a malformed
    or unreadable model and UnsupportedOpError for an op satura has no converter for.
    """
    base_dir: str | None = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = Path(model)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read model '{path}': {e.strerror}") from None
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception:
            raise ModelError(
                f"'{path}' is not a valid ONNX model (protobuf parse failed)"
            ) from None
        base_dir = str(path.resolve().parent)
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelError("not a valid ONNX model (no graph or ir_version)")
    if proto.functions:  # model-local functions (exporters' modules): their bodies, inlined
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise ModelError(f"cannot inline the model's local functions: {e}") from None
    return Importer(proto, base_dir).run()


# The converters live in their own module; importing it fills CONVERTERS.
from satura.engine import onnx_converters  # noqa: E402

SATURA_CONVERTER = onnx_converters.satura_op
