"""Opset 23's transformer ops (Attention, RMSNormalization, RotaryEmbedding) and LRN, beyond
ONNX's own node tests (allow-listed in node_allowlist.txt): which path Attention takes, run-time
masks that leave a row no key, broadcast scales, and clear errors. ONNX's reference evaluator is
the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from satura.engine.errors import ModelError

import satura

pytestmark = pytest.mark.onnx


def _model(
    op: str,
    inputs: list[tuple[str, int, tuple[int, ...]]],
    outputs: list[str],
    opset: int = 23,
    **attrs: object,
) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs if n]
    node = helper.make_node(op, [n for n, _, _ in inputs], outputs, **attrs)
    return helper.make_model(
        helper.make_graph([node], "g", ins, outs),
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=10,
    )


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> satura.api.Any:
    """Compiled output against ONNX's reference evaluator; returns the compiled model."""
    want = ReferenceEvaluator(model).run(None, feeds)
    exe = satura.compile(model)
    got = exe(**feeds)
    for o, w in zip(model.graph.output, want, strict=True):
        np.testing.assert_allclose(got[o.name], w, rtol=1e-5, atol=1e-6)
    return exe


F = TensorProto.FLOAT
B = TensorProto.BOOL


@pytest.mark.llvm
@pytest.mark.parametrize(
    ("attrs", "past"),
    [({}, 0), ({"is_causal": 1}, 0), ({"is_causal": 1}, 3), ({"scale": 0.3}, 2)],
    ids=["plain", "causal", "causal-past", "scaled-past"],
)
def test_attention_is_one_fused_kernel(attrs, past):
    """fp32 Attention without a softcap or a scores output is satura's attention op: GQA (4
    query heads on 2 kv heads), a float mask, causal masks aligned to the past's end."""
    rng = np.random.default_rng(0)
    shapes = {"q": (2, 4, 5, 8), "k": (2, 2, 5, 8), "v": (2, 2, 5, 6), "m": (5, 5 + past)}
    ins = [(n, F, s) for n, s in shapes.items()]
    if past:
        ins += [("pk", F, (2, 2, past, 8)), ("pv", F, (2, 2, past, 6))]
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, _, s in ins}
    model = _model("Attention", ins, ["y", "present_k", "present_v"] if past else ["y"], **attrs)
    exe = _check(model, feeds)
    graph = satura.load(model)
    assert [n.op for n in graph.nodes if n.op in ("attention", "softmax")] == ["attention"]
    assert exe.fallback_ops == []


@pytest.mark.llvm
def test_a_run_time_mask_that_hides_every_key_of_a_row_gives_zeros():
    """ONNX gives such a row zeros (a plain softmax would give NaN)."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    mask = np.ones((1, 1, 4, 4), dtype=bool)
    mask[0, 0, 2] = False
    model = _model(
        "Attention",
        [("q", F, q.shape), ("k", F, k.shape), ("v", F, v.shape), ("m", B, mask.shape)],
        ["y"],
    )
    exe = _check(model, {"q": q, "k": k, "v": v, "m": mask})
    y = exe(q=q, k=k, v=v, m=mask)["y"]
    assert np.all(y[0, :, 2] == 0)
    assert np.all(np.isfinite(y))


@pytest.mark.llvm
def test_causal_and_a_mask_that_together_hide_a_row_give_zeros():
    """Row 0 may see only key 0, which the mask hides: neither alone hides the row."""
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3))
    mask = np.ones((1, 1, 4, 4), dtype=bool)
    mask[..., 0] = False
    ins = [("q", F, q.shape), ("k", F, k.shape), ("v", F, v.shape), ("m", B, mask.shape)]
    exe = _check(_model("Attention", ins, ["y"], is_causal=1), {"q": q, "k": k, "v": v, "m": mask})
    y = exe(q=q, k=k, v=v, m=mask)["y"]
    assert np.all(y[0, :, 0] == 0)
    assert np.all(y[0, :, 1:] != 0)


@pytest.mark.llvm
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_scores_output_and_softcap_take_the_steps(mode, causal):
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    mask = rng.standard_normal((3, 3)).astype(np.float32)
    ins = [("q", F, q.shape), ("k", F, k.shape), ("v", F, v.shape), ("m", F, mask.shape)]
    model = _model(
        "Attention",
        ins,
        ["y", "", "", "s"],
        qk_matmul_output_mode=mode,
        softcap=2.0,
        is_causal=causal,
    )
    exe = _check(model, {"q": q, "k": k, "v": v, "m": mask})
    assert exe.fallback_ops == []


@pytest.mark.llvm
@pytest.mark.parametrize(
    ("scale_shape", "axis"), [((6,), -1), ((1,), -1), ((4, 6), 1)], ids=["row", "bcast", "axis1"]
)
def test_rms_normalization(scale_shape, axis):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    s = rng.standard_normal(scale_shape).astype(np.float32)
    model = _model(
        "RMSNormalization", [("x", F, x.shape), ("s", F, s.shape)], ["y"], axis=axis, epsilon=1e-3
    )
    assert _check(model, {"x": x, "s": s}).fallback_ops == []


@pytest.mark.llvm
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_onnxruntime(size):
    """ONNX's reference evaluator sums channels for c < N only (it loops over the batch axis),
    so onnxruntime is the reference here; it takes odd sizes only."""
    import onnxruntime as ort

    x = np.random.default_rng(4).standard_normal((2, 7, 3, 5)).astype(np.float32)
    model = _model("LRN", [("x", F, x.shape)], ["y"], size=size, alpha=0.01, beta=0.6, bias=2.0)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    exe = satura.compile(model)
    np.testing.assert_allclose(exe(x=x)["y"], want, rtol=1e-5, atol=1e-6)
    assert exe.fallback_ops == []


@pytest.mark.llvm
@pytest.mark.parametrize("size", [2, 4])
def test_lrn_of_even_size_matches_the_reference_evaluator(size):
    """Where N = C, ONNX's reference evaluator covers every channel."""
    x = np.random.default_rng(5).standard_normal((4, 4, 3, 5)).astype(np.float32)
    model = _model("LRN", [("x", F, x.shape)], ["y"], size=size, alpha=0.01, beta=0.6, bias=2.0)
    assert _check(model, {"x": x}).fallback_ops == []


@pytest.mark.llvm
def test_causal_softcap_without_a_mask():
    """The step path with equal lengths: the causal limit is a bias there, not the op's flag."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 2, 5, 4)).astype(np.float32) for _ in range(3))
    ins = [("q", F, q.shape), ("k", F, k.shape), ("v", F, v.shape)]
    model = _model("Attention", ins, ["y"], is_causal=1, softcap=3.0)
    assert _check(model, {"q": q, "k": k, "v": v}).fallback_ops == []


BAD = [
    (
        "Attention",
        [("q", F, (1, 4, 8)), ("k", F, (1, 4, 8)), ("v", F, (1, 4, 8))],
        {},
        "q_num_heads",
    ),
    (
        "Attention",
        [
            ("q", F, (1, 2, 3, 4)),
            ("k", F, (1, 2, 3, 4)),
            ("v", F, (1, 2, 3, 4)),
            ("", F, ()),
            ("pk", F, (1, 2, 1, 4)),
        ],
        {},
        "past_key and past_value must be given together",
    ),
    (
        "Attention",
        [("q", F, (1, 3, 3, 4)), ("k", F, (1, 2, 3, 4)), ("v", F, (1, 2, 3, 4))],
        {},
        "not a multiple of the 2 kv heads",
    ),
    (
        "Attention",
        [("q", F, (1, 2, 3, 4)), ("k", F, (1, 2, 3, 4)), ("v", F, (1, 2, 3, 4)), ("m", F, (3, 5))],
        {},
        "does not fit the 3 keys",
    ),
    (
        "RotaryEmbedding",
        [("x", F, (1, 2, 3, 8)), ("c", F, (3, 2)), ("s", F, (3, 2))],
        {"rotary_embedding_dim": 6},
        "caches' last axis 2 is not 3",
    ),
    (
        "RotaryEmbedding",
        [("x", F, (1, 2, 3, 8)), ("c", F, (3, 3)), ("s", F, (3, 3))],
        {"rotary_embedding_dim": 5},
        "must be even",
    ),
    ("LRN", [("x", F, (1, 4, 3, 3))], {"size": 0}, "size must be a positive integer"),
]


@pytest.mark.parametrize(("op", "ins", "attrs", "msg"), BAD, ids=[b[3][:30] for b in BAD])
def test_bad_nodes_are_a_model_error_naming_the_node(op, ins, attrs, msg):
    named = [(n, t, s) for n, t, s in ins if n]
    node = helper.make_node(op, [n for n, _, _ in ins], ["y"], name="bad", **attrs)
    model = helper.make_model(
        helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info(n, t, s) for n, t, s in named],
            [helper.make_tensor_value_info("y", F, None)],
        ),
        opset_imports=[helper.make_opsetid("", 23)],
        ir_version=10,
    )
    with pytest.raises(ModelError, match=msg) as e:
        satura.load(model)
    assert "node 'bad'" in str(e.value)
