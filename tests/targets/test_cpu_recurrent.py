"""RNN, GRU and LSTM through compiled code (targets/recurrent.py) against the numpy reference.

The cases cover each cell in both layouts and all three directions, hidden sizes that are and
are not a multiple of the vector width, batches of one, of several register tiles and split
into batch groups on two threads, one sequence shared by a team of two threads, initial
states, clip, peepholes, GRU's two ``linear_before_reset`` forms, outputs nobody reads, and
sequence lengths (constant, at run time, and out of range).
"""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.errors import InputError
from satura.engine.graph import Graph
from satura.engine.ops.rnn import GATES
from satura.targets import compile_graph
from satura.targets.recurrent import RnnSpec, team

from tests.targets.helpers import check_compiled


def rnn_graph(
    cell: str,
    hs: int,
    inp: int,
    seq: int,
    batch: int,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    h0: bool = False,
    c0: bool = False,
    peep: bool = False,
    lens: np.ndarray | None = None,
    lens_input: bool = False,
    outputs: tuple[int, ...] = (0, 1, 2),
    **attrs: object,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """One ``rnn`` node with constant W, R (B, P) and run-time X (initial states)."""
    rng = np.random.default_rng(hs * 1000 + seq * 10 + batch)
    dirs, g = (2 if direction == "bidirectional" else 1), GATES[cell]
    gr = Graph(cell)
    xs = (batch, seq, inp) if layout else (seq, batch, inp)
    st = (batch, dirs, hs) if layout else (dirs, batch, hs)
    feeds = {"x": rng.standard_normal(xs).astype(np.float32)}

    def const(name: str, shape: tuple[int, ...], scale: float):
        return gr.add_const((rng.standard_normal(shape) * scale).astype(np.float32), name)

    ins = [
        gr.add_input("x", xs),
        const("w", (dirs, g * hs, inp), 0.4),
        const("r", (dirs, g * hs, hs), 0.4),
        const("b", (dirs, 2 * g * hs), 0.3) if bias else None,
        None,
        None,
        None,
        const("p", (dirs, 3 * hs), 0.3) if peep else None,
    ]
    if lens is not None:
        if lens_input:
            ins[4] = gr.add_input("lens", lens.shape, "int32")
            feeds["lens"] = lens
        else:
            ins[4] = gr.add_const(lens, "lens")
    for k, (name, on) in enumerate((("h0", h0), ("c0", c0))):
        if on:
            ins[5 + k] = gr.add_input(name, st)
            feeds[name] = rng.standard_normal(st).astype(np.float32)
    at = dict(cell=cell, hidden_size=hs, direction=direction, layout=layout, **attrs)
    outs = gr.add("rnn", ins, at).outputs
    gr.set_outputs(*(o for k, o in enumerate(outs) if k in outputs))
    return gr, feeds


CASES = [
    pytest.param(cell, hs, d, layout, batch, id=f"{cell}-h{hs}-{d}-l{layout}-b{batch}")
    for cell in ("rnn", "gru", "lstm")
    for hs, batch in ((16, 1), (13, 3), (8, 13))
    for d, layout in (("forward", 0), ("reverse", 0), ("bidirectional", 0), ("reverse", 1))
]


@pytest.mark.parametrize(("cell", "hs", "direction", "layout", "batch"), CASES)
def test_rnn_compiled(cell, hs, direction, layout, batch):
    g, feeds = rnn_graph(cell, hs, 5, 4, batch, direction, layout)
    check_compiled(g, feeds)


@pytest.mark.parametrize(
    "kw",
    [
        dict(cell="lstm", h0=True, c0=True, peep=True, clip=1.5, direction="bidirectional"),
        dict(cell="lstm", h0=True, c0=True, peep=True, layout=1),
        dict(cell="gru", h0=True, clip=0.7, linear_before_reset=0),
        dict(cell="gru", h0=True, clip=0.7, linear_before_reset=1, direction="bidirectional"),
        dict(cell="gru", linear_before_reset=1, layout=1, batch=7),
        dict(cell="rnn", bias=False, h0=True, clip=0.5, layout=1),
        dict(cell="lstm", outputs=(0,)),
        dict(cell="lstm", outputs=(1, 2), direction="reverse"),
        dict(cell="gru", outputs=(1,), direction="bidirectional"),
        dict(cell="rnn", lens=np.array([4, 4, 4], np.int32)),  # all full: no lengths to read
        # batch 1, one direction: on two threads a team of two shares the hidden units
        dict(cell="lstm", hs=20, batch=1, h0=True, c0=True, peep=True),
        dict(cell="gru", hs=20, batch=1, linear_before_reset=0, h0=True),
        dict(cell="gru", hs=24, batch=1, linear_before_reset=1, layout=1, seq=9),
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if k != "lens") or "lens",
)
def test_rnn_options_compiled(kw):
    kw = {"hs": 10, "inp": 4, "seq": 4, "batch": 3, **kw}
    g, feeds = rnn_graph(**kw)
    check_compiled(g, feeds)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lens=np.array([4, 2, 0], np.int32)),
        dict(lens=np.array([1, 4, 3], np.int32), lens_input=True, direction="bidirectional"),
        dict(lens=np.array([3, 4, 2], np.int32), lens_input=True, layout=1, direction="reverse"),
        dict(cell="gru", lens=np.array([2, 0, 4], np.int32), lens_input=True, h0=True),
        dict(cell="gru", lens=np.array([3], np.int32), lens_input=True, batch=1, hs=24),
    ],
    ids=["const", "runtime-bidirectional", "runtime-reverse-batch-first", "gru", "gru-team"],
)
def test_rnn_sequence_lens_compiled(kw):
    """Rows shorter than the sequence keep their state past their end, read their own times
    backwards, and get zeros in Y where their sequence never reaches."""
    kw = {"cell": "lstm", "hs": 6, "inp": 3, "seq": 4, "batch": 3, "h0": True, **kw}
    g, feeds = rnn_graph(**kw)
    check_compiled(g, feeds)


@pytest.mark.parametrize("bad", [5, -1])
def test_rnn_sequence_lens_out_of_range(bad):
    """A length outside [0, seq] is an error naming the node, the row and the value; nothing
    is computed from it (the reverse direction would read past X)."""
    g, feeds = rnn_graph(
        "lstm", 6, 3, 4, 3, "bidirectional", lens=np.array([4, 2, 3], np.int32), lens_input=True
    )
    feeds["lens"] = np.array([4, bad, 3], np.int32)
    for threads in (1, 2):
        model = compile_graph(g, threads=threads)
        assert model.fallback_ops == []
        with pytest.raises(InputError, match=rf"\(rnn\): index {bad} at lens\[1\] .*\[0, 4\]"):
            model(**feeds)


def test_rnn_batch_groups_and_tiles():
    """Two threads split one direction's batch into two units (13 rows: 7 and 6); a unit's rows
    go into register tiles of near-equal height (7 rows: 4 and 3; 8 rows: 4 and 4, not 6 and 2);
    one row gets a wide panel (8 vectors) to hide the FMA latency."""
    spec = RnnSpec("lstm", 4, 13, 8, 1, "forward", 0, None, False, False, 8, groups=2)
    assert (spec.units, spec.gb, spec.mr) == (2, 7, 4)
    assert RnnSpec("lstm", 4, 8, 8, 1, "forward", 0, None, False, False, 8).mr == 4
    assert RnnSpec("lstm", 4, 1, 8, 1, "forward", 0, None, False, False, 8).nr == 64


def test_rnn_team_slices():
    """One unit (batch 1, one direction) on two cores: a team of two, each a slice of whole
    vectors of hidden units (the last shorter) with its own packed Rᵀ columns; no team with
    two units, one thread, or less than a vector of hidden units each."""
    assert team(1, 20, 8, 2) == 2
    assert team(2, 20, 8, 2) == team(1, 20, 8, 1) == team(1, 8, 8, 2) == 1
    spec = RnnSpec("gru", 4, 1, 20, 1, "forward", 0, None, False, False, 8, members=2)
    assert spec.slices == [(0, 16), (16, 4)]
    # z, r of member 1 (4 units each) padded to one 64-wide panel, then its h gate
    assert [spec.gate_offset(1, k) for k in range(3)] == [0, 4, 64]


RECURRENT_NODE_TESTS = ("RNN", "GRU", "LSTM")


@pytest.mark.onnx
@pytest.mark.parametrize("threads", [1, 2])
def test_onnx_node_tests_through_the_kernel(threads):
    """ONNX's own RNN/GRU/LSTM node tests, checked against their expected outputs through the
    compiled kernel: they feed W, R, B and P as inputs (which keep the reference), so these
    become constants here; sequence lengths and initial states stay run-time inputs."""
    from satura.engine.onnx_import import load_onnx

    from tests.engine.node_cases import _array, _feeds, _freeze_inputs, family_cases

    cases = {
        name: c
        for name, c in family_cases().items()
        if [n.op_type for n in c.model.graph.node] in ([op] for op in RECURRENT_NODE_TESTS)
    }
    assert len(cases) >= 15, sorted(cases)
    for name, case in sorted(cases.items()):
        node = case.model.graph.node[0]
        weights = {node.input[i] for i in (1, 2, 3, 7) if i < len(node.input) and node.input[i]}
        for ins, outs in case.data_sets:
            feeds = _feeds(case, ins)
            model = _freeze_inputs(case.model, feeds, weights)
            exe = compile_graph(load_onnx(model), threads=threads)
            assert exe.fallback_ops == [], name
            got = exe(**{k: v for k, v in feeds.items() if k not in weights})
            for vo, want in zip(case.model.graph.output, outs, strict=True):
                np.testing.assert_allclose(
                    got[vo.name], _array(want), rtol=case.rtol, atol=case.atol, err_msg=name
                )
