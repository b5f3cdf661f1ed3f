"""ONNX's own backend node tests, run through satura's importer and reference executor.

Shared by ``test_node_tests.py``: loads the cases shipped in the onnx package, picks the ones for
satura's op families and runs each one once per session.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from satura.engine.errors import ModelError, SaturaError
from satura.engine.interpret import run_graph
from satura.engine.onnx_import import load_onnx

import satura

ALLOWLIST = Path(__file__).with_name("node_allowlist.txt")

# The op families satura claims: the acceptance list of the project brief, then the rest of what
# the importer converts (a test there checks each converter against ONNX's own expected outputs).
FAMILY_OPS = frozenset(
    (
        "MatMul",
        "Gemm",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Tanh",
        "Erf",
        "Relu",
        "Sigmoid",
        "Gelu",
        "Softmax",
        "LayerNormalization",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "Where",
        "Cast",
        "Expand",
        "Identity",
        "Constant",
        "ConstantOfShape",
        "Shape",
        "Equal",
        "Less",
        "LessOrEqual",
        "And",
        "Not",
        "IsNaN",
        "Neg",
        "Clip",
        "Conv",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "BatchNormalization",
    )
) | frozenset(
    (
        # and the ONNX ops satura imports beyond the brief's list
        "Abs",
        "ArgMax",
        "ArgMin",
        "CastLike",
        "Ceil",
        "Celu",
        "Cos",
        "Dropout",
        "Elu",
        "Floor",
        "GatherElements",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GroupNormalization",
        "HardSigmoid",
        "HardSwish",
        "InstanceNormalization",
        "LeakyRelu",
        "LogSoftmax",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Or",
        "PRelu",
        "Pad",
        "Range",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
        "Round",
        "Selu",
        "Sign",
        "Sin",
        "Size",
        "Softplus",
        "Softsign",
        "Sum",
        "ThresholdedRelu",
        "Tile",
        "Einsum",
        "DepthToSpace",
        "SpaceToDepth",
        "CumSum",
        "Trilu",
        "Resize",
        "Upsample",
        "ConvTranspose",
        "GatherND",
        "ScatterND",
        "ScatterElements",
        "TopK",
        "OneHot",
        "RNN",
        "GRU",
        "LSTM",
        "IsInf",
        "Xor",
        "Tan",
        "Sinh",
        "Cosh",
        "Shrink",
        "Hardmax",
        "LpNormalization",
        "MeanVarianceNormalization",
        "Attention",
        "RMSNormalization",
        "RotaryEmbedding",
        "LRN",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "SwiGLU",
        "EyeLike",
        "LpPool",
        "GlobalLpPool",
        "Atan",
        "Asin",
        "Acos",
        "Asinh",
        "Acosh",
        "Atanh",
        "CumProd",
        "GridSample",
        "NegativeLogLikelihoodLoss",
        "SoftmaxCrossEntropyLoss",
        "Swish",
        "Scatter",
        "DFT",
        "STFT",
        "HannWindow",
        "HammingWindow",
        "BlackmanWindow",
        "AffineGrid",
        "CenterCropPad",
        "Col2Im",
        "If",
        "Loop",
        "Scan",
        "BitShift",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
        "BitwiseNot",
        "MaxUnpool",
        "CausalConvWithState",
        "LinearAttention",
        "ReverseSequence",
        "NonZero",
        "Compress",
        "Unique",
        "NonMaxSuppression",
        "DeformConv",
        "MelWeightMatrix",
        "RoiAlign",
        "BitCast",
    )
)

# Element types satura does not model (the brief excludes them from the count).
EXCLUDED = (
    "bfloat16",
    "float8",
    "e4m3",
    "e5m2",
    "float4",
    "e2m1",
    "int4",
    "uint4",
    "int2",
    "uint2",
    "e8m0",
)


HALF_RTOL = 4e-3  # 8 half ulps


@dataclass
class Outcome:
    ok: bool
    detail: str = ""


def allowlist() -> list[str]:
    """Names of the node tests that must pass (one per line, '#' comments)."""
    lines = ALLOWLIST.read_text().splitlines() if ALLOWLIST.exists() else []
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


@functools.cache
def family_cases() -> dict[str, Any]:
    """The node test cases whose graph uses one of FAMILY_OPS, by name."""
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_node_model_tests()
    out = {}
    for c in cases:
        if any(x in c.name.lower() for x in EXCLUDED):
            continue
        ops = {n.op_type for n in c.model.graph.node}
        if ops & FAMILY_OPS:
            out[c.name] = c
    return out


def _freeze_inputs(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: set[str]
) -> onnx.ModelProto:
    """Turn the graph inputs ``names`` (axes, shapes, scales...) into initializers.

    satura needs static parameters at import; the node tests pass them as run-time inputs.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = []
    for vi in m.graph.input:
        if vi.name in names and vi.name in feeds:
            m.graph.initializer.append(numpy_helper.from_array(feeds[vi.name], vi.name))
        else:
            keep.append(vi)
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m


def _feeds(case: Any, ins: list[Any]) -> dict[str, np.ndarray]:
    inits = {t.name for t in case.model.graph.initializer}
    vis = [vi for vi in case.model.graph.input if vi.name not in inits]
    out = {}
    for vi, arr in zip(vis, ins, strict=False):
        out[vi.name] = _array(arr)
    return out


def _array(x: Any) -> np.ndarray:
    """The generated cases hold some data as TensorProtos (what the .pb files would hold)."""
    if isinstance(x, onnx.TensorProto):
        return np.asarray(numpy_helper.to_array(x))
    return np.asarray(x)


def load_case(case: Any, feeds: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """The case's graph and the feeds it still takes. A parameter passed as a run-time input
    (axes, shapes, scales) is frozen into an initializer: first the integer inputs, then each
    float input an import error names."""
    model, frozen = case.model, set()
    while True:
        try:
            graph = load_onnx(model)
            break
        except ModelError as e:
            named = re.search(r"\('([^']+)'\) must be known at import", str(e))
            if "must be known at import" not in str(e) or (
                frozen and (named is None or named[1] in frozen)
            ):
                raise
            before = set(frozen)
            frozen |= {k for k, v in feeds.items() if v.dtype.kind in "iu"}
            if named is not None and named[1] in feeds:
                frozen.add(named[1])
            if frozen == before:  # nothing left to freeze
                raise
            model = _freeze_inputs(case.model, feeds, frozen)
    return graph, {k: v for k, v in feeds.items() if k not in frozen}


def run_case(case: Any, target: str = "reference") -> Outcome:
    """Import and run one node test case (``target``: the reference executor, or ``cpu``:
    compiled code); compare with its expected outputs."""
    try:
        for ins, outs in case.data_sets:
            feeds = _feeds(case, ins)
            graph, feeds = load_case(case, feeds)
            got = (
                run_graph(graph, feeds)
                if target == "reference"
                else satura.compile(graph, target=target)(**feeds)
            )
            for vo, want in zip(case.model.graph.output, outs, strict=True):
                want = _array(want)
                have = got[vo.name]
                if have.shape != want.shape:
                    return Outcome(False, f"{vo.name}: shape {have.shape} != {want.shape}")
                if want.dtype != object and have.dtype != want.dtype:
                    return Outcome(False, f"{vo.name}: dtype {have.dtype} != {want.dtype}")
                if want.dtype.kind in "fc":
                    rtol = case.rtol
                    if target == "cpu" and want.dtype == np.float16:
                        # compiled half models compute in fp32 and round at the end
                        # (targets/precision.py); the expected values carry half rounding at
                        # every step: a few half ulps apart
                        rtol = max(rtol, HALF_RTOL)
                    np.testing.assert_allclose(have, want, rtol=rtol, atol=case.atol)
                else:
                    np.testing.assert_array_equal(have, want)
    except SaturaError as e:
        return Outcome(False, f"{type(e).__name__}: {e}")
    except AssertionError as e:
        return Outcome(False, f"mismatch: {str(e).strip().splitlines()[0:4]}")
    except Exception as e:  # a crash is a failure of this case, reported with its type
        return Outcome(False, f"crash {type(e).__name__}: {e}")
    return Outcome(True)


@functools.cache
def outcomes(target: str = "reference") -> dict[str, Outcome]:
    """Every family case's outcome on ``target``, computed once per session."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {name: run_case(c, target) for name, c in sorted(family_cases().items())}
