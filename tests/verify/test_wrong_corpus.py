"""Every deliberately wrong rule in ``tests/verify/wrong/`` is refuted, with a counterexample
that numpy's references confirm, and by the check its ``# expect:`` line names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from satura.engine.rulelang import load_rules
from satura.engine.verify import format_counterexample, verify_rules
from satura.engine.verify.alias import StridedView, prove_inplace_safe

pytestmark = pytest.mark.z3

WRONG = Path(__file__).parent / "wrong"
FILES = sorted(WRONG.glob("*.rules"))


def _expect(path: Path) -> tuple[str, str]:
    for line in path.read_text().splitlines():
        if "expect:" in line:
            status, check = line.split("expect:")[1].split()[:2]
            return status, check
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_corpus_is_large_enough() -> None:
    kinds = {p.name.split("_")[0] for p in FILES}
    assert len(FILES) >= 25
    assert {"shape", "broadcast", "sizes", "axis", "perm", "fp", "guard"} <= kinds


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_wrong_rule_refuted_and_confirmed(path: Path, tmp_path: Path) -> None:
    status, check = _expect(path)
    rules = load_rules(path)
    assert rules
    for v in verify_rules(rules, cache_dir=tmp_path):
        assert v.status == status, f"{v.name}: {v.status} ({v.reason})"
        assert v.check == check, f"{v.name}: refuted by {v.check}, expected {check}"
        cx = v.counterexample
        assert cx is not None
        assert cx["confirmed"], format_counterexample(cx)
        if "lhs" in cx:  # a value counterexample: recompute the disagreement here
            lhs = np.asarray(cx["lhs"][0][0], dtype=np.float64)
            rhs = np.asarray(cx["rhs"][0][0], dtype=np.float64)
            same = lhs.shape == rhs.shape and (
                np.array_equal(lhs, rhs, equal_nan=True)
                if check != "fp32"
                else np.array_equal(
                    np.asarray(cx["lhs"][0][0]).astype(np.float32).view(np.uint32),
                    np.asarray(cx["rhs"][0][0]).astype(np.float32).view(np.uint32),
                )
            )
            assert not same


def _view(spec: list) -> StridedView:
    return StridedView(spec[0], tuple(spec[1]), tuple(spec[2]))


def _np_view(buf: np.ndarray, spec: list) -> np.ndarray:
    item = buf.itemsize
    return np.lib.stride_tricks.as_strided(
        buf[spec[0] :], shape=tuple(spec[1]), strides=tuple(s * item for s in spec[2])
    )


CASES = json.loads((WRONG / "alias_inplace.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_alias_unsafe_inplace_refuted(case: dict) -> None:
    got = prove_inplace_safe(
        _view(case["write"]), [_view(r) for r in case["reads"]], order=case["order"]
    )
    assert got is False
    # Confirm by running the kernel in place (row-major, and reversed for "any" order).
    buf0 = np.arange(case["buffer"], dtype=np.float64) * 1.5 + 1
    reads0 = [_np_view(buf0, r).copy() for r in case["reads"]]
    ref = sum(reads0) * 2.0 + 1.0
    idxs = list(np.ndindex(*case["write"][1]))
    orders = [idxs] if case["order"] == "sequential" else [idxs, idxs[::-1]]
    wrong = False
    for order in orders:
        buf = buf0.copy()
        out = _np_view(buf, case["write"])
        reads = [_np_view(buf, r) for r in case["reads"]]
        for i in order:
            out[i] = sum(r[i] for r in reads) * 2.0 + 1.0
        wrong |= not np.array_equal(_np_view(buf, case["write"]), ref)
    assert wrong
