"""Recurrent layers: ONNX's RNN, GRU and LSTM as one op, ``rnn``, with ``cell`` naming the kind.

The reference runs the time steps in a numpy loop (a compiled target runs it as a fallback
step). Layouts, directions, sequence lengths, initial states, clip, GRU's linear_before_reset
and LSTM's peepholes follow the ONNX operator definitions; activations are the defaults
(RNN: tanh; GRU: sigmoid, tanh; LSTM: sigmoid, tanh, tanh).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from satura.engine.ops.registry import AttrSpec, OpInfo, Work, register
from satura.engine.shapes import DimOps, Shape

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _require_shape(d: DimOps, name: str, shape: Shape | None, want: Sequence[Any]) -> None:
    """``shape`` (an input; None: absent) must be ``want``: the reference indexes it so."""
    if shape is None:
        return
    msg = f"rnn: {name} has shape {tuple(shape)}, expected {tuple(want)}"
    d.require(len(shape) == len(want), msg)
    for a, b in zip(shape, want, strict=False):
        d.require(d.eq(a, b), msg)


def _shape(d: DimOps, ins: Sequence[Shape | None], at: Any) -> list[Shape]:
    x = ins[0]
    assert x is not None
    d.require(at["cell"] in GATES, f"rnn: unknown cell {at['cell']}")
    d.require(
        at["direction"] in ("forward", "reverse", "bidirectional"),
        f"rnn: unknown direction {at['direction']}",
    )
    d.require(len(x) == 3, "rnn: X must be 3-D")
    dirs, h = 2 if at["direction"] == "bidirectional" else 1, at["hidden_size"]
    seq, batch = (x[1], x[0]) if at["layout"] else (x[0], x[1])
    gh = GATES[at["cell"]] * h
    state = (batch, dirs, h) if at["layout"] else (dirs, batch, h)
    w, r, b, lens, h0, c0, p = (list(ins[1:]) + [None] * 7)[:7]
    for name, shape, want in (
        ("W", w, (dirs, gh, x[2])),
        ("R", r, (dirs, gh, h)),
        ("B", b, (dirs, 2 * gh)),
        ("sequence_lens", lens, (batch,)),
        ("initial_h", h0, state),
        ("initial_c", c0, state),
        ("P", p, (dirs, 3 * h)),
    ):
        _require_shape(d, name, shape, want)
    y = (batch, seq, dirs, h) if at["layout"] else (seq, dirs, batch, h)
    return [y, state] + ([state] if at["cell"] == "lstm" else [])


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _reference(ins: Sequence[np.ndarray | None], at: Any) -> list[np.ndarray]:
    x, w, r, b, lens, h0, c0, p = (list(ins) + [None] * 8)[:8]
    assert x is not None
    assert w is not None
    assert r is not None
    cell, hs, clip = at["cell"], at["hidden_size"], at["clip"]
    g = GATES[cell]
    if at["layout"]:  # batch first: work in seq-first, transpose back at the end
        x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    seq, batch = x.shape[0], x.shape[1]
    dirs = w.shape[0]
    dt = x.dtype
    lens = np.full(batch, seq, np.int64) if lens is None else lens.astype(np.int64)
    y = np.zeros((seq, dirs, batch, hs), dt)
    y_h = np.zeros((dirs, batch, hs), dt)
    y_c = np.zeros((dirs, batch, hs), dt)
    with np.errstate(over="ignore"):
        for d in range(dirs):
            reverse = at["direction"] == "reverse" or d == 1
            wb = np.zeros(2 * g * hs, dt) if b is None else b[d]
            h = np.zeros((batch, hs), dt) if h0 is None else h0[d].copy()
            c = np.zeros((batch, hs), dt) if c0 is None else c0[d].copy()
            pe = np.zeros(3 * hs, dt) if p is None else p[d]
            for step in range(seq):
                live = step < lens  # batch rows still inside their sequence
                # reverse: each sequence runs backwards over its own valid length
                t = np.where(reverse, np.maximum(lens - 1 - step, 0), step)
                xt = x[t, np.arange(batch)]
                gx = xt @ w[d].T + wb[: g * hs]
                gh = h @ r[d].T + wb[g * hs :]
                if cell == "rnn":
                    pre = gx + gh
                    pre = pre if clip is None else np.clip(pre, -clip, clip)
                    hn, cn = np.tanh(pre), c
                elif cell == "gru":
                    z, rr = (
                        gx[:, k * hs : (k + 1) * hs] + gh[:, k * hs : (k + 1) * hs] for k in (0, 1)
                    )
                    if clip is not None:
                        z, rr = np.clip(z, -clip, clip), np.clip(rr, -clip, clip)
                    z, rr = _sigmoid(z), _sigmoid(rr)
                    rh = r[d][2 * hs :]
                    if at["linear_before_reset"]:
                        hh = gx[:, 2 * hs :] + rr * gh[:, 2 * hs :]
                    else:
                        hh = gx[:, 2 * hs :] + (rr * h) @ rh.T + wb[g * hs + 2 * hs :]
                    hh = hh if clip is None else np.clip(hh, -clip, clip)
                    hn, cn = (1 - z) * np.tanh(hh) + z * h, c
                else:  # lstm, gates i, o, f, c; peepholes i, o, f
                    pre = gx + gh
                    pre = pre if clip is None else np.clip(pre, -clip, clip)
                    i, o, f, cc = (pre[:, k * hs : (k + 1) * hs] for k in range(4))
                    i = _sigmoid(i + pe[:hs] * c)
                    f = _sigmoid(f + pe[2 * hs :] * c)
                    cn = f * c + i * np.tanh(cc)
                    o = _sigmoid(o + pe[hs : 2 * hs] * cn)
                    hn = o * np.tanh(cn)
                h = np.where(live[:, None], hn, h).astype(dt)
                c = np.where(live[:, None], cn, c).astype(dt)
                y[t[live], d, np.arange(batch)[live]] = h[live]
            y_h[d], y_c[d] = h, c
    if at["layout"]:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return [y, y_h] + ([y_c] if cell == "lstm" else [])


def _work(ins: Sequence[Any], outs: Sequence[Any], at: Any) -> Work:
    x, w, r = ins[0], ins[1], ins[2]
    steps = int(np.prod([int(s) for s in x.shape[:2]]))
    flops = 2.0 * steps * w.shape[0] * (int(w.shape[1]) * (int(w.shape[2]) + int(r.shape[2])))
    moved = sum(
        float(np.prod([int(s) for s in v.shape])) * v.itemsize
        for v in (*ins, *outs)
        if v is not None
    )
    return Work(flops, moved)


register(
    OpInfo(
        name="rnn",
        shape=_shape,
        reference=_reference,
        inputs=(3, 8),
        work=_work,
        attrs={
            "cell": AttrSpec("str"),
            "hidden_size": AttrSpec("int"),
            "direction": AttrSpec("str", "forward"),
            "layout": AttrSpec("int", 0),
            "clip": AttrSpec("float", None),
            "linear_before_reset": AttrSpec("int", 0),
        },
        num_outputs_fn=lambda at: 3 if at["cell"] == "lstm" else 2,
        dtype=lambda ins, at: [ins[0] or "float32"] * (3 if at["cell"] == "lstm" else 2),
        onnx=("RNN", "GRU", "LSTM"),
        traits=frozenset({"recurrent"}),
        doc="RNN/GRU/LSTM over a sequence (ONNX semantics, default activations): Y, Y_h[, Y_c]",
    )
)
