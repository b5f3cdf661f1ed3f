"""onnxruntime's com.microsoft fused ops (what its transformer optimizer and optimum write):
onnxruntime runs the same models as the reference, through satura's reference executor and
compiled CPU target."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from satura.engine.errors import ModelError

import satura

pytestmark = pytest.mark.onnx
ort = pytest.importorskip("onnxruntime")

F = TensorProto.FLOAT


def _model(
    node: onnx.NodeProto, ins: dict[str, np.ndarray], consts: dict[str, np.ndarray], n_out: int = 1
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in ins.items()
        ],
        [helper.make_tensor_value_info(o, F, None) for o in node.output[:n_out] if o],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    names = [o.name for o in model.graph.output]
    for target in ("reference", "cpu"):
        got = satura.compile(model, target=target)(**feeds)
        for n, w in zip(names, want, strict=True):
            np.testing.assert_allclose(got[n], w, rtol=tol, atol=tol, err_msg=f"{target}: {n}")


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("name", ["mlp", "gpt2_block", "bert_block", "llama_block", "resnet_small"])
def test_models_rewritten_by_onnxruntime_optimizer_match_onnxruntime(name, tmp_path):
    """The example models after onnxruntime's transformer optimizer (level 2): each holds fused
    contrib ops (SkipLayerNormalization, BiasGelu, FastGelu, QuickGelu, FusedConv,
    SimplifiedLayerNormalization)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from examples.models import EXAMPLES, example_inputs

    path = tmp_path / "m.onnx"
    onnx.save(EXAMPLES[name](), path)
    logging.disable(logging.WARNING)
    try:
        kind = "gpt2" if name in ("gpt2_block", "llama_block") else "bert"
        opt = optimize_model(str(path), model_type=kind, num_heads=4, hidden_size=256, opt_level=2)
    finally:
        logging.disable(logging.NOTSET)
    model = opt.model
    fused = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    fused |= {n.op_type for n in model.graph.node if n.op_type == "SimplifiedLayerNormalization"}
    assert fused, "the optimizer fused nothing: the test would not test the contrib ops"
    _check(model, example_inputs(name, batch=2), tol=2e-5)


@pytest.mark.parametrize("mask", ["none", "raw", "lengths", "raw3d"])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_matches_onnxruntime(mask, causal):
    b, s, h, heads = 2, 7, 16, 2
    ins = {"x": _rand(b, s, h)}
    names = ["x", "w", "bias", ""]
    if mask == "raw":
        ins["m"] = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)
    elif mask == "lengths":
        ins["m"] = np.array([7, 3], np.int32)
    elif mask == "raw3d":
        ins["m"] = (np.random.default_rng(1).random((b, s, s)) > 0.3).astype(np.int32)
        ins["m"][..., 0] = 1
    if mask != "none":
        names[3] = "m"
    node = helper.make_node(
        "Attention", names, ["y"], domain="com.microsoft", num_heads=heads, unidirectional=causal
    )
    consts = {"w": _rand(h, 3 * h, seed=2, scale=0.3), "bias": _rand(3 * h, seed=3)}
    _check(_model(node, ins, consts), ins)


def test_multi_head_attention_matches_onnxruntime():
    b, s, t, d, heads = 2, 5, 6, 16, 4
    ins = {
        "q": _rand(b, s, d),
        "k": _rand(b, t, d, seed=1),
        "v": _rand(b, t, d, seed=2),
        "m": np.array([[1] * 6, [1] * 2 + [0] * 4], np.int32),
        "ab": _rand(1, heads, s, t, seed=4),
    }
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "bias", "m", "ab"],
        ["y"],
        domain="com.microsoft",
        num_heads=heads,
    )
    _check(_model(node, ins, {"bias": _rand(3 * d, seed=3)}), ins)


def test_embed_layer_normalization_matches_onnxruntime():
    b, s, h, vocab = 2, 6, 8, 20
    rng = np.random.default_rng(0)
    ins = {
        "ids": rng.integers(0, vocab, (b, s)).astype(np.int32),
        "seg": rng.integers(0, 2, (b, s)).astype(np.int32),
        "mask": np.array([[1] * 6, [1] * 3 + [0] * 3], np.int32),
    }
    consts = {
        "we": _rand(vocab, h),
        "pe": _rand(16, h, seed=1),
        "se": _rand(2, h, seed=2),
        "g": _rand(h, seed=3),
        "be": _rand(h, seed=4),
    }
    node = helper.make_node(
        "EmbedLayerNormalization",
        ["ids", "seg", "we", "pe", "se", "g", "be", "mask"],
        ["y", "mi", "sum"],
        domain="com.microsoft",
        epsilon=1e-5,
    )
    model = _model(node, ins, consts, n_out=1)
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("mi", TensorProto.INT32, None),
            helper.make_tensor_value_info("sum", F, None),
        ]
    )
    _check(model, ins)


@pytest.mark.parametrize(("k", "block", "zp"), [(64, 32, False), (48, 32, True), (40, 16, "float")])
def test_matmul_nbits_matches_onnxruntime(k, block, zp):
    n, bits = 24, 4
    blocks = -(-k // block)
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (n, blocks * block)).astype(np.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, blocks, block // 2)
    consts = {"b": packed, "s": rng.random(n * blocks).astype(np.float32) * 0.1}
    names = ["a", "b", "s"]
    if zp is True:
        z = rng.integers(0, 16, (n, blocks + blocks % 2)).astype(np.uint8)
        consts["z"] = (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1)
        names.append("z")
    elif zp == "float":
        consts["z"] = rng.random(n * blocks).astype(np.float32) * 8
        names.append("z")
    ins = {"a": _rand(3, k)}
    node = helper.make_node(
        "MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block
    )
    _check(_model(node, ins, consts), ins, tol=1e-4)


def test_skip_norms_match_onnxruntime():
    x, skip = _rand(2, 5, 8), _rand(2, 5, 8, seed=1)
    consts = {"g": _rand(8, seed=2), "be": _rand(8, seed=3), "bi": _rand(8, seed=4)}
    node = helper.make_node(
        "SkipLayerNormalization",
        ["x", "skip", "g", "be", "bi"],
        ["y", "mean", "inv", "sum"],
        domain="com.microsoft",
        epsilon=1e-5,
    )
    _check(_model(node, {"x": x, "skip": skip}, consts, n_out=4), {"x": x, "skip": skip})
    node = helper.make_node(
        "SkipSimplifiedLayerNormalization",
        ["x", "skip", "g", "bi"],
        ["y", "", "", "sum"],
        domain="com.microsoft",
        epsilon=1e-5,
    )
    model = _model(node, {"x": x, "skip": skip}, consts, n_out=1)
    model.graph.output.append(helper.make_tensor_value_info("sum", F, None))
    _check(model, {"x": x, "skip": skip})
    node = helper.make_node(
        "SimplifiedLayerNormalization", ["x", "g"], ["y", "inv"], axis=-1, epsilon=1e-5
    )
    _check(_model(node, {"x": x}, {"g": consts["g"]}, n_out=2), {"x": x})


@pytest.mark.parametrize(
    ("op", "ins", "consts", "attrs"),
    [
        (
            "FusedMatMul",
            {"a": _rand(2, 5, 3)},
            {"b": _rand(2, 4, 5, seed=1)},
            {"transA": 1, "transB": 1, "alpha": 0.5},
        ),
        ("FastGelu", {"x": _rand(3, 8)}, {"b": _rand(8, seed=1)}, {}),
        (
            "FusedConv",
            {"x": _rand(1, 3, 6, 5)},
            {"w": _rand(4, 3, 3, 3, seed=1)},
            {"activation": "LeakyRelu", "activation_params": [0.2]},
        ),
    ],
)
def test_other_fused_ops_match_onnxruntime(op, ins, consts, attrs):
    names = list(ins)[:1] + list(consts) + list(ins)[1:]
    node = helper.make_node(op, names, ["y"], domain="com.microsoft", **attrs)
    _check(_model(node, ins, consts), ins)


@pytest.mark.parametrize("mask", [False, True])
def test_attention_with_a_key_value_cache_matches_onnxruntime(mask):
    """GPT-2's decoder step: past [2, B, heads, P, D] in, present with this step's keys out."""
    b, s, p, h, heads = 2, 3, 4, 16, 2
    ins = {"x": _rand(b, s, h), "past": _rand(2, b, heads, p, h // heads, seed=5)}
    names = ["x", "w", "bias", "m" if mask else "", "past"]
    if mask:
        ins["m"] = np.array([[1] * 7, [0] * 2 + [1] * 5], np.int32)
    node = helper.make_node(
        "Attention",
        names,
        ["y", "present"],
        domain="com.microsoft",
        num_heads=heads,
        unidirectional=1,
    )
    consts = {"w": _rand(h, 3 * h, seed=2, scale=0.3), "bias": _rand(3 * h, seed=3)}
    _check(_model(node, ins, consts, n_out=2), ins)


def test_attention_with_rotary_is_a_clear_error():
    node = helper.make_node(
        "Attention", ["x", "w"], ["y"], domain="com.microsoft", num_heads=2, do_rotary=1
    )
    with pytest.raises(ModelError, match=r"\(Attention\): do_rotary"):
        satura.load(_model(node, {"x": _rand(1, 3, 8)}, {"w": _rand(8, 24)}))


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("offset", [False, True])
def test_rotary_embedding_matches_onnxruntime(interleaved, offset):
    b, s, heads, d, max_pos = 2, 5, 2, 8, 16
    angles = np.arange(max_pos)[:, None] * (0.5 ** np.arange(d // 2))[None]
    consts = {"cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}
    ins = {"x": _rand(b, s, heads * d)}
    if offset:
        ins["p"] = np.array([3], np.int64)
    else:
        ins["p"] = np.random.default_rng(1).integers(0, max_pos, (b, s)).astype(np.int64)
    node = helper.make_node(
        "RotaryEmbedding",
        ["x", "p", "cos", "sin"],
        ["y"],
        domain="com.microsoft",
        interleaved=interleaved,
        num_heads=heads,
    )
    _check(_model(node, ins, consts), ins)


@pytest.mark.parametrize(
    ("past", "s", "rotary", "packed"),
    [
        (0, 5, 0, False),
        (4, 1, 0, False),
        (4, 3, 1, False),
        (0, 4, 1, True),
        (3, 1, 1, True),
    ],
)
def test_group_query_attention_matches_onnxruntime(past, s, rotary, packed):
    """A prompt (no past) and decode steps, 4 query heads sharing 2 kv heads."""
    b, heads, kv, d, max_pos = 2, 4, 2, 16, 16
    if past and s > 1:
        b = 1  # onnxruntime runs a continued prompt for one row only
    ins = {"q": _rand(b, s, heads * d)}
    if packed:
        ins["q"] = _rand(b, s, (heads + 2 * kv) * d)
    else:
        ins["k"], ins["v"] = _rand(b, s, kv * d, seed=1), _rand(b, s, kv * d, seed=2)
    names = ["q", "" if packed else "k", "" if packed else "v", "pk", "pv", "sl", "tl"]
    ins["pk"], ins["pv"] = _rand(b, kv, past, d, seed=3), _rand(b, kv, past, d, seed=4)
    ins["sl"] = np.full(b, past + s - 1, np.int32)
    ins["tl"] = np.array(past + s, np.int32)
    consts = {}
    if rotary:
        angles = np.arange(max_pos)[:, None] * (0.5 ** np.arange(d // 2))[None]
        consts = {
            "cos": np.cos(angles).astype(np.float32),
            "sin": np.sin(angles).astype(np.float32),
        }
        names += ["cos", "sin"]
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["y", "pko", "pvo"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv,
        do_rotary=rotary,
    )
    model = _model(node, ins, consts, n_out=3)
    _check(model, ins)


def test_matmul_integer_to_float_matches_onnxruntime():
    """A below 128: onnxruntime's AVX2 u8×s8 product adds pairs in saturating int16
    (``vpmaddubsw``), which only such operands keep exact."""
    rng = np.random.default_rng(0)
    ins = {"a": rng.integers(0, 128, (3, 6, 16)).astype(np.uint8)}
    consts = {
        "b": rng.integers(-128, 128, (16, 5)).astype(np.int8),
        "sa": np.array(0.02, np.float32),
        "sb": (rng.random(5) * 0.1).astype(np.float32),
        "za": np.array(128, np.uint8),
        "zb": np.zeros(5, np.int8),
        "bias": _rand(5),
    }
    node = helper.make_node(
        "MatMulIntegerToFloat",
        ["a", "b", "sa", "sb", "za", "zb", "bias"],
        ["y"],
        domain="com.microsoft",
    )
    _check(_model(node, ins, consts), ins)


def test_dynamic_quantize_matmul_matches_onnx_reference_composition():
    """The fused op against ONNX's reference evaluator running the standard ops it fuses
    (onnxruntime's own dynamic quantization rounds its scale differently: 0.05 off at most on
    the example models)."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    x = _rand(4, 16)
    b = rng.integers(-128, 128, (16, 6)).astype(np.int8)
    sb = (rng.random(6) * 0.05).astype(np.float32)
    bias = _rand(6, seed=2)
    consts = {"b": b, "sb": sb, "zb": np.zeros(6, np.int8), "bias": bias}
    fused = helper.make_node(
        "DynamicQuantizeMatMul", ["x", "b", "sb", "zb", "bias"], ["y"], domain="com.microsoft"
    )
    got = satura.compile(_model(fused, {"x": x}, consts))(x=x)["y"]
    plain = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
            helper.make_node("MatMulInteger", ["q", "b", "z", "zb"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=F),
            helper.make_node("Mul", ["s", "sb"], ["scale"]),
            helper.make_node("Mul", ["accf", "scale"], ["p"]),
            helper.make_node("Add", ["p", "bias"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, x.shape)],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    ref = helper.make_model(plain, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    want = ReferenceEvaluator(ref).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["Relu", "Tanh", "LeakyRelu"])
def test_fused_gemm_matches_onnxruntime(act):
    ins = {"a": _rand(5, 4)}
    consts = {"b": _rand(6, 4, seed=1), "c": _rand(6, seed=2)}
    attrs = {"transB": 1, "alpha": 0.5}
    if act:
        attrs["activation"] = act
    if act == "LeakyRelu":
        attrs["activation_alpha"] = 0.2
    node = helper.make_node("FusedGemm", ["a", "b", "c"], ["y"], domain="com.microsoft", **attrs)
    _check(_model(node, ins, consts), ins)


@pytest.mark.parametrize("name", ["mlp", "bert_block", "llama_block"])
def test_models_saved_by_onnxruntime_after_its_extended_optimizations(name, tmp_path):
    """onnxruntime's own session optimizations, saved (``optimized_model_filepath``): the float
    model equals onnxruntime; its dynamically quantized model, rewritten into
    DynamicQuantizeMatMul and MatMulIntegerToFloat, equals satura's run of the model before
    the rewrite (onnxruntime's own int8 products saturate and round differently)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from examples.models import EXAMPLES, example_inputs

    src = tmp_path / "m.onnx"
    onnx.save(EXAMPLES[name](), src)
    quant = tmp_path / "q.onnx"
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(src), str(quant), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    feeds = example_inputs(name, batch=2)
    for path in (src, quant):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(path), so)
        optimized = onnx.load(tmp_path / "opt.onnx")
        fused = {n.op_type for n in optimized.graph.node if n.domain == "com.microsoft"}
        assert fused, "onnxruntime fused nothing: the test would not test the contrib ops"
        if path == src:
            _check(optimized, feeds, tol=2e-5)
            continue
        assert fused & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
        before = satura.compile(onnx.load(path))(**feeds)
        after = satura.compile(optimized)(**feeds)
        for o in optimized.graph.output:
            # the rewrite reorders float sums (SkipLayerNormalization's input + skip + bias):
            # an activation on a rounding boundary can then quantize one step apart
            np.testing.assert_allclose(after[o.name], before[o.name], rtol=0, atol=5e-3)
