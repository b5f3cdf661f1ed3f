"""ONNX's backend node tests (shipped in the onnx package) through load_onnx + run_graph, and
through the compiled CPU target.

Every allow-listed case must pass; the count test prints how many of the op families' cases
pass. Graph inputs that are static parameters (integer axes and shapes; float scales or pad
values that import reports) are frozen into
initializers first, because satura needs them at import (see ``node_cases._freeze_inputs``).
"""

from __future__ import annotations

import pytest

from tests.engine.node_cases import allowlist, family_cases, outcomes

pytestmark = pytest.mark.onnx

ALLOWED = allowlist()


@pytest.mark.parametrize("name", ALLOWED)
def test_allowlisted_node_case_passes(name: str) -> None:
    results = outcomes()
    assert name in results, f"{name} is not an ONNX node test of satura's op families"
    assert results[name].ok, f"{name}: {results[name].detail}"


def test_node_case_counts() -> None:
    results = outcomes()
    cases = family_cases()
    single = [n for n, c in cases.items() if len(c.model.graph.node) == 1]
    passed = sum(r.ok for r in results.values())
    passed_single = sum(results[n].ok for n in single)
    print(
        f"\nONNX node tests (satura's op families): {passed} / {len(results)} pass; "
        f"single-op cases: {passed_single} / {len(single)}"
    )
    not_listed = sorted(n for n, r in results.items() if r.ok and n not in set(ALLOWED))
    if not_listed:
        print(f"{len(not_listed)} passing cases are not allow-listed yet: {not_listed[:10]}")
    assert passed_single >= 330
    assert len(ALLOWED) == len(set(ALLOWED)), "duplicate names in node_allowlist.txt"


@pytest.mark.llvm
@pytest.mark.parametrize("name", ALLOWED)
def test_allowlisted_node_case_passes_compiled(name: str) -> None:
    """The same cases through satura.compile's CPU target (kernels where lowered)."""
    result = outcomes("cpu")[name]
    assert result.ok, f"{name}: {result.detail}"


# Cases whose graph satura writes correctly but onnxruntime cannot run.
ORT_CANNOT = {
    **dict.fromkeys(
        [
            "test_attention_3d_causal_bf16_expanded",
            "test_attention_4d_attn_mask_causal_bf16_expanded",
            "test_attention_4d_causal_bf16_expanded",
            "test_attention_4d_causal_padded_kv_bf16_expanded",
            "test_attention_4d_padded_kv_bf16_expanded",
            "test_attention_3d_causal_bf16",
            "test_attention_4d_attn_mask_causal_bf16",
            "test_attention_4d_causal_bf16",
            "test_attention_4d_causal_padded_kv_bf16",
            "test_attention_4d_padded_kv_bf16",
            "test_pow_types_float32_uint32",
            "test_pow_types_float32_uint64",
            "test_max_int16",
            "test_max_uint16",
            "test_min_int16",
            "test_min_uint16",
        ],
        "onnxruntime has no CPU kernel for this element type",
    ),
    **dict.fromkeys(
        [
            "test_mod_float16_mixed_sign_fmod_0",
            "test_mod_float32_mixed_sign_fmod_0",
            "test_mod_float64_mixed_sign_fmod_0",
            "test_mod_float_edge_cases_fmod_0_float16",
            "test_mod_float_edge_cases_fmod_0_float32",
            "test_mod_float_edge_cases_fmod_0_float64",
        ],
        "onnxruntime requires fmod=1 for floats",
    ),
    **dict.fromkeys(
        [
            "test_bitshift_right_uint16",
            "test_bitshift_left_uint16",
        ],
        "onnxruntime has no BitShift kernel for uint16",
    ),
    **dict.fromkeys(
        [
            "test_bitshift_right_int8",
            "test_bitshift_right_int16",
            "test_bitshift_right_int32",
            "test_bitshift_right_int64",
            "test_bitshift_left_int8",
            "test_bitshift_left_int16",
            "test_bitshift_left_int32",
            "test_bitshift_left_int64",
            "test_bitshift_right_int8_negative_input",
            "test_bitshift_right_int32_negative_input",
            "test_bitshift_left_int8_overflow",
            "test_bitshift_left_int32_overflow",
            "test_bitshift_right_int8_shift_ge_width",
            "test_bitshift_left_int8_shift_ge_width",
            "test_bitshift_right_int32_shift_ge_width",
            "test_bitshift_left_int32_shift_ge_width",
            "test_bitshift_right_int8_negative_shift",
            "test_bitshift_left_int8_negative_shift",
            "test_bitshift_right_int32_negative_shift",
            "test_bitshift_left_int32_negative_shift",
        ],
        "signed BitShift is opset 28, which onnxruntime does not read yet",
    ),
    "test_bitcast_bool_to_uint8": "onnxruntime has no BitCast kernel from bool",
    "test_reduce_max_empty_set_bool": "onnxruntime rejects ReduceMax of an empty bool tensor",
    **dict.fromkeys(
        ["test_gru_batchwise", "test_lstm_batchwise", "test_simple_rnn_batchwise"],
        "onnxruntime's recurrent kernels take layout 0 only",
    ),
    "test_resize_downsample_scales_linear_align_corners": (
        "onnxruntime's align_corners divides by the rounded output length (the case's own "
        "model gives 4.0, not 3.142857, there)"
    ),
}


@pytest.mark.slow
def test_allowlisted_cases_written_back_run_in_onnxruntime(tmp_path) -> None:
    """Every allow-listed case, imported and written back by satura (``save_onnx``), gives the
    expected outputs in onnxruntime: the exporter's writers against a reference nobody here
    wrote. The cases onnxruntime itself cannot run are listed with the reason."""
    import warnings

    import numpy as np
    from satura.engine.onnx_export import save_onnx

    from tests.engine.node_cases import _array, _feeds, load_case

    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    cases, failed = family_cases(), {}
    for name in ALLOWED:
        case = cases[name]
        ins, outs = case.data_sets[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph, feeds = load_case(case, _feeds(case, ins))
            sess = ort.InferenceSession(str(save_onnx(graph, tmp_path / "m.onnx")), so)
            got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
            for have, want in zip(got, outs, strict=True):
                want = _array(want)
                if want.dtype.kind in "fc":
                    np.testing.assert_allclose(have, want, rtol=case.rtol, atol=case.atol)
                else:
                    np.testing.assert_array_equal(have, want)
        except Exception as e:  # collected: the assertion below lists every one
            failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
    unexpected = {k: v for k, v in failed.items() if k not in ORT_CANNOT}
    assert not unexpected, "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    assert sorted(set(ORT_CANNOT) - set(failed)) == [], "these run in onnxruntime now: unlist them"
