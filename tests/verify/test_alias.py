"""Aliasing proofs against numpy: ``np.shares_memory`` and simulated in-place loops are the
oracle."""

from __future__ import annotations

import numpy as np
import pytest
import z3
from hypothesis import given, settings
from hypothesis import strategies as st
from satura.engine.verify.alias import (
    StridedView,
    overlap_witness,
    prove_inplace_safe,
    prove_no_overlap,
)

pytestmark = pytest.mark.z3


def view_of(arr: np.ndarray, base: np.ndarray) -> StridedView:
    """The StridedView (element units) of a numpy view into ``base``."""
    item = base.itemsize
    off = (arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
    return StridedView(off, tuple(arr.shape), tuple(s // item for s in arr.strides))


def test_overlapping_slices_detected() -> None:
    buf = np.zeros(64, dtype=np.float32)
    a, b = buf[0:10], buf[8:20]
    assert np.shares_memory(a, b)
    assert prove_no_overlap(view_of(a, buf), view_of(b, buf)) is False
    w = overlap_witness(view_of(a, buf), view_of(b, buf))
    assert w is not None
    assert 8 <= w["address"] < 10


def test_interleaved_strided_slices_do_not_overlap() -> None:
    buf = np.zeros(64, dtype=np.float32)
    a, b = buf[0::2], buf[1::2]
    assert not np.shares_memory(a, b)
    assert prove_no_overlap(view_of(a, buf), view_of(b, buf)) is True


def test_transpose_view_overlaps_its_source_and_not_the_next_tensor() -> None:
    buf = np.zeros(2 * 12, dtype=np.float32)
    x = buf[:12].reshape(3, 4)
    y = buf[12:].reshape(4, 3)
    xt = x.T
    assert prove_no_overlap(view_of(xt, buf), view_of(x, buf)) is False
    assert prove_no_overlap(view_of(xt, buf), view_of(y, buf)) is True
    sv = StridedView.contiguous((3, 4)).transpose((1, 0))
    assert sv == view_of(xt, buf)


def test_symbolic_sizes() -> None:
    n = z3.Int("n")
    a = StridedView.contiguous((n,), 0)
    b = StridedView.contiguous((n,), n)  # the next n elements
    assert prove_no_overlap(a, b, [n >= 1]) is True
    c = StridedView.contiguous((n,), n - 1)
    assert prove_no_overlap(a, c, [n >= 2]) is False


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.integers(0, 5),
    st.integers(1, 30),
    st.integers(1, 4),
    st.integers(0, 5),
    st.integers(1, 30),
    st.integers(1, 4),
    st.booleans(),
)
def test_random_slices_match_numpy(s1, n1, k1, s2, n2, k2, two_d) -> None:
    buf = np.zeros(200, dtype=np.float32)
    a = buf[s1 : s1 + n1 * k1 : k1]
    b = buf[s2 : s2 + n2 * k2 : k2]
    if two_d:
        m = buf[:120].reshape(10, 12)
        a = m[s1:, ::k1][: max(1, n1 // 6)]
        b = m[:, s2::k2].T
    if a.size == 0 or b.size == 0:
        return
    assert prove_no_overlap(view_of(a, buf), view_of(b, buf)) is (not np.shares_memory(a, b))


def _simulate(buf: np.ndarray, out: np.ndarray, src: np.ndarray, order: list) -> np.ndarray:
    """Run ``out[i] = src[i] * 2 + 1`` in place, iteration by iteration, in ``order``."""
    for idx in order:
        out[idx] = src[idx] * 2 + 1
    return out.copy()


def _orders(shape: tuple[int, ...]) -> list[list]:
    fwd = list(np.ndindex(*shape))
    return [fwd, fwd[::-1]]


@pytest.mark.parametrize(
    ("desc", "out_sl", "src_sl", "order", "expect"),
    [
        ("same elements", slice(0, 10), slice(0, 10), "any", True),
        ("read shifted by one", slice(0, 10), slice(1, 11), "any", False),
        ("read shifted forward, sequential", slice(0, 10), slice(1, 11), "sequential", True),
        ("read shifted backward, sequential", slice(1, 11), slice(0, 10), "sequential", False),
        ("disjoint halves", slice(0, 10), slice(10, 20), "any", True),
    ],
)
def test_inplace_elementwise(desc, out_sl, src_sl, order, expect) -> None:
    buf0 = np.arange(32, dtype=np.float64)
    ref = buf0[src_sl] * 2 + 1  # out-of-place result
    got = prove_inplace_safe(
        view_of(buf0[out_sl], buf0), [view_of(buf0[src_sl], buf0)], order=order
    )
    assert got is expect, desc
    orders = _orders(ref.shape)[:1] if order == "sequential" else _orders(ref.shape)
    results = []
    for o in orders:
        buf = buf0.copy()
        results.append(np.array_equal(_simulate(buf, buf[out_sl], buf[src_sl], o), ref))
    assert all(results) is expect, desc


def test_inplace_transposed_read_is_unsafe_in_place() -> None:
    buf0 = np.arange(9, dtype=np.float64)
    x = buf0.reshape(3, 3)
    w, r = view_of(x, buf0), view_of(x.T, buf0)
    assert prove_inplace_safe(w, [r]) is False
    buf = buf0.copy()
    xb = buf.reshape(3, 3)
    ref = xb.T * 2 + 1
    assert not np.array_equal(_simulate(buf, xb, xb.T, list(np.ndindex(3, 3))), ref)


def test_broadcast_write_is_unsafe() -> None:
    w = StridedView(0, (4,), (0,))  # every iteration writes address 0
    assert prove_inplace_safe(w, [StridedView(10, (4,), (1,))]) is False
