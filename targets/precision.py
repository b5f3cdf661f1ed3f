"""Half-precision models computed in fp32: the CPU kernels are fp32 (and integer) only.

A float16 graph becomes one that casts its half inputs to fp32 on entry, holds its
half constants as fp32, computes every op in fp32 and casts its half outputs back, so that it
runs in the kernels instead of in numpy. The results are the fp32 computation rounded at the
end: at least as accurate as computing in half step by step (they may differ from such a
computation by a few half ulps), as onnxruntime computes on CPU the ops it has no half kernel
for. A Cast to half inside the graph keeps its rounding: it becomes a cast to half and back to
fp32 (fused into the kernels around it).
"""

from __future__ import annotations

from satura.engine.graph import Graph, Value

# bfloat16 stays on numpy's reference: numpy has no bfloat16 maths of its own to check against,
# and the node tests compare it bit for bit with a computation that rounds every step
HALF = frozenset({"float16"})


def has_half(graph: Graph) -> bool:
    values = [*graph.inputs, *graph.outputs, *(o for n in graph.nodes for o in n.outputs)]
    values += [v for n in graph.nodes for v in n.inputs if v is not None]
    return any(v.type.dtype in HALF for v in values)


def compute_half_in_float(graph: Graph) -> Graph:
    """``graph`` with its half-precision values computed in fp32 (inputs and outputs keep their
    names and dtypes); ``graph`` itself when it holds no half value."""
    if not has_half(graph):
        return graph
    g = Graph(graph.name)
    new: dict[int, Value] = {}
    # a half output's fp32 value takes a suffix: the cast back to half takes the output's name
    suffix = {id(v): "_f32" for v in graph.outputs if v.type.dtype in HALF}
    for v in graph.inputs:
        x = g.add_input(v.name, v.type.shape, v.type.dtype)
        new[id(v)] = g.apply("cast", x, to="float32") if v.type.dtype in HALF else x

    def mapped(v: Value) -> Value:
        if id(v) not in new:  # a constant
            data = v.data.astype("float32") if v.type.dtype in HALF else v.data
            new[id(v)] = g.add_const(data, v.name + suffix.get(id(v), ""))
        return new[id(v)]

    for n in graph.nodes:
        ins = [None if v is None else mapped(v) for v in n.inputs]
        names = [o.name + suffix.get(id(o), "") for o in n.outputs]
        if n.op == "cast" and n.attrs["to"] in HALF:  # rounded to half, computed on in fp32
            if ins[0] is not None and ins[0].type.dtype not in ("float32", *HALF):
                ins = [g.apply("cast", ins[0], to="float32")]  # integers: exact below 2**24
            half = g.add("cast", ins, n.attrs, name=n.name, out_names=[f"{names[0]}_half"])
            new[id(n.outputs[0])] = g.add(
                "cast", half.outputs, {"to": "float32"}, out_names=names
            ).outputs[0]
            continue
        attrs = dict(n.attrs)
        if n.op == "constant_of_shape" and attrs.get("dtype") in HALF:
            attrs["dtype"] = "float32"
        node = g.add(n.op, ins, attrs, name=n.name, out_names=names)
        for o, o2 in zip(n.outputs, node.outputs, strict=True):
            new[id(o)] = o2
    outs = []
    for v in graph.outputs:
        w = mapped(v)
        if v.type.dtype in HALF and w.type.dtype != v.type.dtype:
            w = g.add("cast", [w], {"to": v.type.dtype}, out_names=[v.name]).outputs[0]
        outs.append(w)
    g.set_outputs(*outs)
    return g
