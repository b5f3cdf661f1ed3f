"""Real model graphs built in code with ``onnx.helper``, shaped like exporters emit them.

Each builder returns an ``onnx.ModelProto`` (opset 18, IR version 8) with random weights drawn from
a fixed seed. The graphs are written the way torch.onnx / tf2onnx exports look: decomposed ops
(GELU as Erf or Tanh arithmetic, RMSNorm as Pow/ReduceMean/Sqrt/Reciprocal, one LayerNorm spelled
out as ReduceMean/Sub/Pow/Sqrt/Div), symbolic ``batch``/``seq`` dims, shape arithmetic through
Shape/Gather/Unsqueeze/Concat, masks built with Where or Add, and Reshape shapes using ``0``/``-1``.

``EXAMPLES`` maps a name to its builder; :func:`example_inputs` gives valid random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 8  # what opset 18 shipped with (onnx 1.13); onnxruntime 1.31 reads it
NEG_LARGE = float(np.finfo(np.float32).min)  # what HF models use as "masked out"


class _Builder:
    """Collects nodes and initializers; hands out fresh tensor names."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[str, int] = {}

    def _fresh(self, base: str) -> str:
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, name: str, value: np.ndarray | float | int | Sequence[int]) -> str:
        """Add an initializer; Python ints/int lists become int64, floats float32."""
        if isinstance(value, np.ndarray):
            arr = value
        elif isinstance(value, float):
            arr = np.array(value, dtype=np.float32)
        else:
            arr = np.array(value, dtype=np.int64)
        name = self._fresh(name)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, name: str, shape: Sequence[int], scale: float | None = None) -> str:
        """A random float32 weight, scaled by 1/sqrt(fan_in) unless ``scale`` is given."""
        if scale is None:
            fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
            scale = 1.0 / math.sqrt(fan_in)
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def norm_params(self, prefix: str, n: int) -> tuple[str, str]:
        """LayerNorm-style gamma (near 1) and beta (near 0)."""
        gamma = (1.0 + 0.1 * self.rng.standard_normal(n)).astype(np.float32)
        beta = (0.1 * self.rng.standard_normal(n)).astype(np.float32)
        return self.const(f"{prefix}.weight", gamma), self.const(f"{prefix}.bias", beta)

    def op(
        self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1, **attrs: object
    ) -> str | list[str]:
        """Append one node named ``name``; returns its output name (a list if ``n_out`` > 1)."""
        node_name = self._fresh(name)
        outs = [f"{node_name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(
        self,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        results: Sequence[str],
    ) -> onnx.ModelProto:
        """Rename the last producers to the declared outputs and wrap everything in a model."""
        for res, out in zip(results, outputs, strict=True):
            for node in self.nodes:
                for i, o in enumerate(node.output):
                    if o == res:
                        node.output[i] = out.name
                for i, x in enumerate(node.input):
                    if x == res:
                        node.input[i] = out.name
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="satura.examples",
            ir_version=IR_VERSION,
        )
        return model


def _f32(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# ----------------------------------------------------------------------------- shared pieces


def _linear(b: _Builder, x: str, prefix: str, n_in: int, n_out: int, bias: bool = True) -> str:
    """MatMul + Add, as exporters emit nn.Linear on a rank-3 input (weight stored [in, out])."""
    y = b.op("MatMul", [x, b.weight(f"{prefix}.weight", [n_in, n_out])], f"/{prefix}/MatMul")
    if not bias:
        return y
    bias_w = b.weight(f"{prefix}.bias", [n_out], scale=0.1)
    return b.op("Add", [bias_w, y], f"/{prefix}/Add")


def _gelu_erf(b: _Builder, x: str, prefix: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt(2))), the torch.nn.GELU() export order."""
    t = b.op("Div", [x, b.const("sqrt2", math.sqrt(2.0))], f"/{prefix}/Div")
    t = b.op("Erf", [t], f"/{prefix}/Erf")
    t = b.op("Add", [t, b.const("one", 1.0)], f"/{prefix}/Add")
    t = b.op("Mul", [x, t], f"/{prefix}/Mul")
    return b.op("Mul", [t, b.const("half", 0.5)], f"/{prefix}/Mul_1")


def _gelu_tanh(b: _Builder, x: str, prefix: str) -> str:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3))), GPT-2's NewGELU."""
    half_x = b.op("Mul", [b.const("half", 0.5), x], f"/{prefix}/Mul")
    cube = b.op("Pow", [x, b.const("three", 3.0)], f"/{prefix}/Pow")
    t = b.op("Mul", [b.const("gelu_c", 0.044715), cube], f"/{prefix}/Mul_1")
    t = b.op("Add", [x, t], f"/{prefix}/Add")
    t = b.op("Mul", [b.const("sqrt_2_over_pi", math.sqrt(2.0 / math.pi)), t], f"/{prefix}/Mul_2")
    t = b.op("Tanh", [t], f"/{prefix}/Tanh")
    t = b.op("Add", [b.const("one", 1.0), t], f"/{prefix}/Add_1")
    return b.op("Mul", [half_x, t], f"/{prefix}/Mul_3")


def _layer_norm(b: _Builder, x: str, prefix: str, n: int, eps: float) -> str:
    """One fused LayerNormalization node over the last axis (what opset >= 17 exports emit)."""
    gamma, beta = b.norm_params(prefix, n)
    return b.op(
        "LayerNormalization",
        [x, gamma, beta],
        f"/{prefix}/LayerNormalization",
        axis=-1,
        epsilon=eps,
    )


def _layer_norm_decomposed(b: _Builder, x: str, prefix: str, n: int, eps: float) -> str:
    """LayerNorm spelled out as opset <= 16 exporters did: ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add."""
    gamma, beta = b.norm_params(prefix, n)
    axes = b.const("axes_last", [-1])
    mean = b.op("ReduceMean", [x, axes], f"/{prefix}/ReduceMean", keepdims=1)
    centered = b.op("Sub", [x, mean], f"/{prefix}/Sub")
    sq = b.op("Pow", [centered, b.const("two", 2.0)], f"/{prefix}/Pow")
    var = b.op("ReduceMean", [sq, axes], f"/{prefix}/ReduceMean_1", keepdims=1)
    var = b.op("Add", [var, b.const(f"{prefix}.eps", eps)], f"/{prefix}/Add")
    std = b.op("Sqrt", [var], f"/{prefix}/Sqrt")
    y = b.op("Div", [centered, std], f"/{prefix}/Div")
    y = b.op("Mul", [y, gamma], f"/{prefix}/Mul")
    return b.op("Add", [y, beta], f"/{prefix}/Add_1")


def _rms_norm(b: _Builder, x: str, prefix: str, n: int, eps: float, use_div: bool) -> str:
    """LLaMA RMSNorm: x * rsqrt(mean(x**2) + eps) * w; rsqrt as Reciprocal(Sqrt) or Div(1, Sqrt)."""
    w = b.const(f"{prefix}.weight", (1.0 + 0.1 * b.rng.standard_normal(n)).astype(np.float32))
    sq = b.op("Pow", [x, b.const("two", 2.0)], f"/{prefix}/Pow")
    var = b.op("ReduceMean", [sq, b.const("axes_last", [-1])], f"/{prefix}/ReduceMean", keepdims=1)
    var = b.op("Add", [var, b.const(f"{prefix}.eps", eps)], f"/{prefix}/Add")
    std = b.op("Sqrt", [var], f"/{prefix}/Sqrt")
    if use_div:
        inv = b.op("Div", [b.const("one", 1.0), std], f"/{prefix}/Div")
    else:
        inv = b.op("Reciprocal", [std], f"/{prefix}/Reciprocal")
    y = b.op("Mul", [x, inv], f"/{prefix}/Mul")
    return b.op("Mul", [w, y], f"/{prefix}/Mul_1")


def _seq_len(b: _Builder, x: str, prefix: str) -> str:
    """Shape(x)[1] as a 1-element int64 tensor: the torchscript exporter's idiom."""
    shape = b.op("Shape", [x], f"/{prefix}/Shape")
    dim = b.op("Gather", [shape, b.const("one_i64", 1)], f"/{prefix}/Gather", axis=0)
    return b.op("Unsqueeze", [dim, b.const("axes_zero", [0])], f"/{prefix}/Unsqueeze")


def _dims_from_shape(b: _Builder, x: str, prefix: str, idx: Sequence[int]) -> list[str]:
    """[Shape(x)[i] as 1-element tensors for i in idx], each via Shape/Gather/Unsqueeze."""
    shape = b.op("Shape", [x], f"/{prefix}/Shape")
    out = []
    for i in idx:
        d = b.op("Gather", [shape, b.const(f"idx{i}", i)], f"/{prefix}/Gather", axis=0)
        out.append(b.op("Unsqueeze", [d, b.const("axes_zero", [0])], f"/{prefix}/Unsqueeze"))
    return out


# ----------------------------------------------------------------------------- models


def mlp(hidden: int = 768, ffn: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """2-layer MLP hidden -> ffn (4*hidden) -> hidden with erf-GELU; input ``x[batch, hidden]``."""
    ffn = 4 * hidden if ffn is None else ffn
    b = _Builder("mlp", seed)
    h = _linear(b, "x", "fc1", hidden, ffn)
    h = _gelu_erf(b, h, "act")
    y = _linear(b, h, "fc2", ffn, hidden)
    return b.model([_f32("x", ["batch", hidden])], [_f32("y", ["batch", hidden])], [y])


def gpt2_block(
    hidden: int = 256, heads: int = 4, seq: int | None = None, max_pos: int = 128, seed: int = 0
) -> onnx.ModelProto:
    """Pre-LN GPT-2 block on ``x[batch, seq, hidden]`` (``seq`` symbolic unless given).

    ln_1 is the decomposed LayerNorm (older exporters), ln_2 the fused one. The causal mask is a
    constant ``bias[1, 1, max_pos, max_pos]`` buffer sliced to ``[:, :, :seq, :seq]`` through
    Shape/Gather (fixed ``seq``: a constant mask) and applied with Where, as HF GPT-2 exports do.
    """
    d = hidden // heads
    b = _Builder("gpt2_block", seed)
    s_dim: int | str = "seq" if seq is None else seq
    h = _layer_norm_decomposed(b, "x", "ln_1", hidden, 1e-5)
    qkv = _linear(b, h, "attn/c_attn", hidden, 3 * hidden)
    q, k, v = b.op(
        "Split", [qkv, b.const("split_qkv", [hidden] * 3)], "/attn/Split", n_out=3, axis=2
    )
    heads_shape = b.const("heads_shape", [0, 0, heads, d])
    q = b.op("Reshape", [q, heads_shape], "/attn/Reshape")
    k = b.op("Reshape", [k, heads_shape], "/attn/Reshape_1")
    v = b.op("Reshape", [v, heads_shape], "/attn/Reshape_2")
    q = b.op("Transpose", [q], "/attn/Transpose", perm=[0, 2, 1, 3])
    k = b.op("Transpose", [k], "/attn/Transpose_1", perm=[0, 2, 1, 3])
    v = b.op("Transpose", [v], "/attn/Transpose_2", perm=[0, 2, 1, 3])
    kt = b.op("Transpose", [k], "/attn/Transpose_3", perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [q, kt], "/attn/MatMul")
    scores = b.op("Div", [scores, b.const("attn_scale", float(math.sqrt(d)))], "/attn/Div")
    causal = np.tril(np.ones((max_pos, max_pos), dtype=bool))[None, None]
    if seq is None:
        n = _seq_len(b, "x", "attn")
        mask = b.op(
            "Slice",
            [
                b.const("attn.bias", causal),
                b.const("zeros2", [0, 0]),
                b.op("Concat", [n, n], "/attn/Concat", axis=0),
                b.const("axes23", [2, 3]),
            ],
            "/attn/Slice",
        )
    else:
        mask = b.const("attn.bias", np.ascontiguousarray(causal[:, :, :seq, :seq]))
    scores = b.op("Where", [mask, scores, b.const("mask_value", NEG_LARGE)], "/attn/Where")
    probs = b.op("Softmax", [scores], "/attn/Softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], "/attn/MatMul_1")
    ctx = b.op("Transpose", [ctx], "/attn/Transpose_4", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const("merge_shape", [0, 0, hidden])], "/attn/Reshape_3")
    attn = _linear(b, ctx, "attn/c_proj", hidden, hidden)
    x1 = b.op("Add", ["x", attn], "/Add")
    h = _layer_norm(b, x1, "ln_2", hidden, 1e-5)
    h = _linear(b, h, "mlp/c_fc", hidden, 4 * hidden)
    h = _gelu_tanh(b, h, "mlp/act")
    h = _linear(b, h, "mlp/c_proj", 4 * hidden, hidden)
    y = b.op("Add", [x1, h], "/Add_1")
    return b.model(
        [_f32("x", ["batch", s_dim, hidden])], [_f32("y", ["batch", s_dim, hidden])], [y]
    )


def bert_block(
    hidden: int = 256,
    heads: int = 4,
    ffn: int = 1024,
    seq: int | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """Post-LN BERT encoder layer on ``hidden_states[batch, seq, hidden]``.

    ``attention_mask[batch, seq]`` (int64, 1 = keep) becomes the additive mask
    ``(1 - float(mask[:, None, None, :])) * -10000``. Head reshapes build their shape tensors
    from Shape/Gather/Concat, the torchscript exporter's way with dynamic axes; with a fixed
    ``seq`` they are constants ``[-1, seq, heads, d]``.
    """
    d = hidden // heads
    b = _Builder("bert_block", seed)
    x = "hidden_states"
    m = b.op("Unsqueeze", ["attention_mask", b.const("axes12", [1, 2])], "/Unsqueeze")
    m = b.op("Cast", [m], "/Cast", to=TensorProto.FLOAT)
    m = b.op("Sub", [b.const("one", 1.0), m], "/Sub")
    m = b.op("Mul", [m, b.const("mask_scale", -10000.0)], "/Mul")

    s_dim: int | str = "seq" if seq is None else seq
    if seq is None:
        batch, seqn = _dims_from_shape(b, x, "attention/self", [0, 1])
        heads_shape = b.op(
            "Concat",
            [batch, seqn, b.const("heads_d", [heads, d])],
            "/attention/self/Concat",
            axis=0,
        )
        merge_shape = b.op(
            "Concat", [batch, seqn, b.const("hidden_dim", [hidden])], "/attention/self/Concat_1",
            axis=0,
        )  # fmt: skip
    else:
        heads_shape = b.const("heads_shape", [-1, seq, heads, d])
        merge_shape = b.const("merge_shape", [-1, seq, hidden])

    def to_heads(t: str, tag: str) -> str:
        t = b.op("Reshape", [t, heads_shape], f"/attention/self/{tag}/Reshape")
        return b.op("Transpose", [t], f"/attention/self/{tag}/Transpose", perm=[0, 2, 1, 3])

    q = to_heads(_linear(b, x, "attention/self/query", hidden, hidden), "query")
    # the exporters' peephole pass merges view->permute->transpose(-1,-2) into one Transpose
    k = _linear(b, x, "attention/self/key", hidden, hidden)
    k = b.op("Reshape", [k, heads_shape], "/attention/self/key/Reshape")
    kt = b.op("Transpose", [k], "/attention/self/key/Transpose", perm=[0, 2, 3, 1])
    v = to_heads(_linear(b, x, "attention/self/value", hidden, hidden), "value")
    scores = b.op("MatMul", [q, kt], "/attention/self/MatMul")
    scores = b.op(
        "Div", [scores, b.const("attn_scale", float(math.sqrt(d)))], "/attention/self/Div"
    )
    scores = b.op("Add", [scores, m], "/attention/self/Add")
    probs = b.op("Softmax", [scores], "/attention/self/Softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], "/attention/self/MatMul_1")
    ctx = b.op("Transpose", [ctx], "/attention/self/Transpose_1", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, merge_shape], "/attention/self/Reshape")
    attn = _linear(b, ctx, "attention/output/dense", hidden, hidden)
    attn = b.op("Add", [attn, x], "/attention/output/Add")
    h1 = _layer_norm(b, attn, "attention/output/LayerNorm", hidden, 1e-12)
    h = _linear(b, h1, "intermediate/dense", hidden, ffn)
    h = _gelu_erf(b, h, "intermediate/intermediate_act_fn")
    h = _linear(b, h, "output/dense", ffn, hidden)
    h = b.op("Add", [h, h1], "/output/Add")
    y = _layer_norm(b, h, "output/LayerNorm", hidden, 1e-12)
    inputs = [
        _f32(x, ["batch", s_dim, hidden]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", s_dim]),
    ]
    return b.model(inputs, [_f32("y", ["batch", s_dim, hidden])], [y])


def rope_tables(
    head_dim: int,
    max_pos: int,
    theta: float = 10000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """LLaMA rotary cos/sin tables, each ``[max_pos, head_dim]`` float32 (halves duplicated)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(max_pos, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def llama_block(
    hidden: int = 256,
    q_heads: int = 8,
    kv_heads: int = 2,
    ffn: int = 688,
    max_pos: int = 128,
    seq: int | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """LLaMA decoder layer on ``x[batch, seq, hidden]`` with grouped-query attention.

    RMSNorm decomposed, rotary embedding by Slice halves / Neg / Concat / Mul cos,sin / Add, kv
    heads repeated by Unsqueeze/Expand/Reshape (HF ``repeat_kv``), causal mask added from a
    sliced constant, SiLU-gated MLP (x * Sigmoid(x)), no biases. The rotary tables and the mask
    are sliced to ``seq`` through Shape/Gather; with a fixed ``seq`` they are constants.
    """
    d = hidden // q_heads
    rep = q_heads // kv_heads
    b = _Builder("llama_block", seed)
    x = "x"
    h = _rms_norm(b, x, "input_layernorm", hidden, 1e-6, use_div=False)
    s_dim: int | str = "seq" if seq is None else seq
    zero = b.const("zero1", [0])
    axes_last = b.const("axes_last", [-1])

    def heads_of(t: str, nh: int, tag: str) -> str:
        t = b.op(
            "Reshape", [t, b.const(f"{tag}_shape", [0, 0, nh, d])], f"/self_attn/{tag}/Reshape"
        )
        return b.op("Transpose", [t], f"/self_attn/{tag}/Transpose", perm=[0, 2, 1, 3])

    q = heads_of(_linear(b, h, "self_attn/q_proj", hidden, q_heads * d, bias=False), q_heads, "q")
    k = heads_of(_linear(b, h, "self_attn/k_proj", hidden, kv_heads * d, bias=False), kv_heads, "k")
    v = heads_of(_linear(b, h, "self_attn/v_proj", hidden, kv_heads * d, bias=False), kv_heads, "v")

    cos_t, sin_t = rope_tables(d, max_pos)
    mask_t = np.triu(np.full((max_pos, max_pos), NEG_LARGE, dtype=np.float32), k=1)
    if seq is None:
        n = _seq_len(b, x, "self_attn")
        cos = b.op(
            "Slice", [b.const("rotary.cos_cached", cos_t), zero, n, zero],
            "/self_attn/rotary_emb/Slice",
        )  # fmt: skip
        sin = b.op(
            "Slice", [b.const("rotary.sin_cached", sin_t), zero, n, zero],
            "/self_attn/rotary_emb/Slice_1",
        )  # fmt: skip
        mask = b.op(
            "Slice",
            [b.const("causal_mask", mask_t), b.const("zeros2", [0, 0]),
             b.op("Concat", [n, n], "/self_attn/Concat", axis=0), b.const("axes01", [0, 1])],
            "/self_attn/Slice",
        )  # fmt: skip
    else:
        cos = b.const("rotary.cos_cached", np.ascontiguousarray(cos_t[:seq]))
        sin = b.const("rotary.sin_cached", np.ascontiguousarray(sin_t[:seq]))
        mask = b.const("causal_mask", np.ascontiguousarray(mask_t[:seq, :seq]))
    half = b.const("half_dim", [d // 2])
    big = b.const("int64_max", [np.iinfo(np.int64).max])

    def rotate(t: str, tag: str) -> str:
        x1 = b.op("Slice", [t, zero, half, axes_last], f"/self_attn/{tag}/Slice")
        x2 = b.op("Slice", [t, half, big, axes_last], f"/self_attn/{tag}/Slice_1")
        rot = b.op(
            "Concat",
            [b.op("Neg", [x2], f"/self_attn/{tag}/Neg"), x1],
            f"/self_attn/{tag}/Concat",
            axis=-1,
        )
        a = b.op("Mul", [t, cos], f"/self_attn/{tag}/Mul")
        c = b.op("Mul", [rot, sin], f"/self_attn/{tag}/Mul_1")
        return b.op("Add", [a, c], f"/self_attn/{tag}/Add")

    q = rotate(q, "rope_q")
    k = rotate(k, "rope_k")

    def repeat_kv(t: str, tag: str) -> str:
        t = b.op("Unsqueeze", [t, b.const("axes2", [2])], f"/self_attn/{tag}/Unsqueeze")
        t = b.op("Expand", [t, b.const("rep_shape", [1, 1, rep, 1, 1])], f"/self_attn/{tag}/Expand")
        return b.op(
            "Reshape", [t, b.const("gqa_shape", [0, q_heads, -1, d])], f"/self_attn/{tag}/Reshape"
        )

    k = repeat_kv(k, "repeat_k")
    v = repeat_kv(v, "repeat_v")
    kt = b.op("Transpose", [k], "/self_attn/Transpose", perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [q, kt], "/self_attn/MatMul")
    scores = b.op(
        "Mul", [scores, b.const("attn_scale", float(1.0 / math.sqrt(d)))], "/self_attn/Mul"
    )
    scores = b.op("Add", [scores, mask], "/self_attn/Add")
    probs = b.op("Softmax", [scores], "/self_attn/Softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], "/self_attn/MatMul_1")
    ctx = b.op("Transpose", [ctx], "/self_attn/Transpose_1", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const("merge_shape", [0, 0, hidden])], "/self_attn/Reshape")
    attn = _linear(b, ctx, "self_attn/o_proj", hidden, hidden, bias=False)
    x1 = b.op("Add", [x, attn], "/Add")
    h = _rms_norm(b, x1, "post_attention_layernorm", hidden, 1e-6, use_div=True)
    gate = _linear(b, h, "mlp/gate_proj", hidden, ffn, bias=False)
    act = b.op("Mul", [gate, b.op("Sigmoid", [gate], "/mlp/act_fn/Sigmoid")], "/mlp/act_fn/Mul")
    up = _linear(b, h, "mlp/up_proj", hidden, ffn, bias=False)
    h = b.op("Mul", [act, up], "/mlp/Mul")
    h = _linear(b, h, "mlp/down_proj", ffn, hidden, bias=False)
    y = b.op("Add", [x1, h], "/Add_1")
    return b.model([_f32(x, ["batch", s_dim, hidden])], [_f32("y", ["batch", s_dim, hidden])], [y])


def _conv_bn(
    b: _Builder, x: str, prefix: str, cin: int, cout: int, k: int, stride: int, relu: bool
) -> str:
    """Conv (no bias) + BatchNormalization (+ Relu), as an eval-mode export without BN folding."""
    w = b.weight(f"{prefix}.conv.weight", [cout, cin, k, k])
    y = b.op(
        "Conv",
        [x, w],
        f"/{prefix}/conv/Conv",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
        dilations=[1, 1],
        group=1,
    )
    scale = (1.0 + 0.1 * b.rng.standard_normal(cout)).astype(np.float32)
    bias = (0.1 * b.rng.standard_normal(cout)).astype(np.float32)
    mean = (0.1 * b.rng.standard_normal(cout)).astype(np.float32)
    var = (1.0 + 0.2 * b.rng.random(cout)).astype(np.float32)
    y = b.op(
        "BatchNormalization",
        [
            y,
            b.const(f"{prefix}.bn.weight", scale),
            b.const(f"{prefix}.bn.bias", bias),
            b.const(f"{prefix}.bn.running_mean", mean),
            b.const(f"{prefix}.bn.running_var", var),
        ],
        f"/{prefix}/bn/BatchNormalization",
        epsilon=1e-5,
        momentum=0.9,
    )
    return b.op("Relu", [y], f"/{prefix}/Relu") if relu else y


def _basic_block(b: _Builder, x: str, prefix: str, cin: int, cout: int, stride: int) -> str:
    """ResNet basic block: conv-bn-relu-conv-bn + (identity | 1x1 conv-bn downsample), Relu."""
    h = _conv_bn(b, x, f"{prefix}/0", cin, cout, 3, stride, relu=True)
    h = _conv_bn(b, h, f"{prefix}/1", cout, cout, 3, 1, relu=False)
    skip = (
        x
        if stride == 1 and cin == cout
        else _conv_bn(b, x, f"{prefix}/downsample", cin, cout, 1, stride, relu=False)
    )
    y = b.op("Add", [h, skip], f"/{prefix}/Add")
    return b.op("Relu", [y], f"/{prefix}/Relu_1")


def resnet_small(classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Small ResNet on ``input[N, 3, 32, 32]``: stem, two basic blocks, pool, Gemm classifier."""
    b = _Builder("resnet_small", seed)
    h = _conv_bn(b, "input", "stem", 3, 16, 3, 1, relu=True)
    h = b.op(
        "MaxPool", [h], "/stem/MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    )
    h = _basic_block(b, h, "layer1", 16, 16, 1)
    h = _basic_block(b, h, "layer2", 16, 32, 2)
    h = b.op("GlobalAveragePool", [h], "/GlobalAveragePool")
    h = b.op("Flatten", [h], "/Flatten", axis=1)
    w = b.weight("fc.weight", [classes, 32], scale=1.0 / math.sqrt(32))
    bias = b.weight("fc.bias", [classes], scale=0.1)
    y = b.op("Gemm", [h, w, bias], "/fc/Gemm", alpha=1.0, beta=1.0, transB=1)
    return b.model([_f32("input", ["N", 3, 32, 32])], [_f32("logits", ["N", classes])], [y])


def mlp_small(seed: int = 0) -> onnx.ModelProto:
    """The MLP with hidden 64 (ffn 256): small enough to ship as ``examples/mlp_small.onnx``."""
    return mlp(hidden=64, seed=seed)


EXAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp,
    "mlp_small": mlp_small,
    "gpt2_block": gpt2_block,
    "bert_block": bert_block,
    "llama_block": llama_block,
    "resnet_small": resnet_small,
}


def example_inputs(
    name: str,
    batch: int = 1,
    seed: int = 0,
    seq: int = 16,
) -> dict[str, np.ndarray]:
    """Valid random inputs for ``EXAMPLES[name]()``: float activations ~N(0, 1), and for BERT an
    int64 ``attention_mask`` of ones followed by zero padding (at least one kept token per row).

    Raises KeyError for an unknown name. ``seq`` must not exceed 128 (the models' max positions).
    """
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if name == "mlp":
        return {"x": normal(batch, 768)}
    if name == "mlp_small":
        return {"x": normal(batch, 64)}
    if name in ("gpt2_block", "llama_block"):
        return {"x": normal(batch, seq, 256)}
    if name == "bert_block":
        lengths = rng.integers(1, seq + 1, size=batch)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        return {"hidden_states": normal(batch, seq, 256), "attention_mask": mask}
    if name == "resnet_small":
        return {"input": normal(batch, 3, 32, 32)}
    raise KeyError(f"example_inputs: unknown example {name!r}; known: {sorted(EXAMPLES)}")


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Count of each op_type in the model's main graph, sorted by op_type."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
