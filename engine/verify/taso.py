"""Translate TASO's graph substitutions (``taso_rules.json``) into satura rules, for comparison.

TASO ops map to satura ops: ``matmul`` (acti NONE), ``ew_add`` -> ``add``, ``ew_mul`` -> ``mul``,
``relu``, ``concat`` (axis; ``numdim`` becomes a rank guard on variable operands) and ``conv2d``
(3x3, stride 1, SAME -> ``conv`` with pads 1; TASO's grouped reading: ``group`` is the input's
channels over the weight's). TASO's inputs carry no shapes, so variables feeding a matmul are
2-D and those feeding a conv 4-D (TASO's generator conventions); others range over all ranks.
TASO's elementwise ops need equal shapes (no broadcasting): guards say so.
Rules with two outputs or a ``split`` have no single-root satura form and are skipped. TASO
applies a rule only where its replacement is well-formed, so the verifier is asked to assume that
(``assume_rhs_wellformed``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from satura.engine.errors import SaturaError


def _dim(t: tuple, i: int) -> str:
    """A guard-language expression for dimension ``i`` of term ``t`` (shapes as TASO has them)."""
    kind = t[0]
    if kind == "var":
        return f"dim({t[1]}, {i})"
    if kind == "concat":
        if i == t[2]:
            return f"({_dim(t[3], i)} + {_dim(t[4], i)})"
        return _dim(t[3], i)
    if kind in ("add", "mul", "relu"):
        return _dim(t[1], i)
    if kind == "matmul":
        return _dim(t[1], 0) if i == 0 else _dim(t[2], 1)
    if kind == "conv":
        return _dim(t[2], 0) if i == 1 else _dim(t[1], i)
    raise SaturaError(f"no dimension rule for {kind}")


class _Side:
    def __init__(self, ops: list[dict[str, Any]], names: dict[int, str]) -> None:
        self.ops, self.names = ops, names
        self.ranks: dict[str, int] = {}
        self.guards: list[str] = []
        self.same_shape: list[tuple[tuple, tuple]] = []

    def tree(self, ref: list[int]) -> tuple:
        op_id, _ = ref
        if op_id < 0:
            return ("var", self.names[op_id])
        op = self.ops[op_id]
        kind, p = op["type"], op["params"]
        ins = [self.tree(r) for r in op["inputs"]]
        if kind == "matmul":
            if p.get("acti", 0) != 0:
                raise SaturaError("matmul with an activation")
            self._rank(ins, 2)
            return ("matmul", *ins)
        if kind in ("ew_add", "ew_mul"):
            self.same_shape.append((ins[0], ins[1]))  # TASO's elementwise ops never broadcast
            return ("add" if kind == "ew_add" else "mul", ins[0], ins[1])
        if kind == "relu":
            return ("relu", ins[0])
        if kind == "concat":
            self._rank(ins, p["numdim"])
            return ("concat", p["numdim"], p["axis"], *ins)
        if kind == "conv2d":
            if p.get("pad") != 0 or p.get("stride_h") != 1 or p.get("stride_w") != 1:
                raise SaturaError("conv2d other than stride 1, SAME")
            self._rank(ins, 4)
            if ins[1][0] == "var":
                self.guards += [f"dim({ins[1][1]}, 2) == 3", f"dim({ins[1][1]}, 3) == 3"]
            return ("conv", ins[0], ins[1], "RELU" if p.get("acti") == 2 else "NONE")
        raise SaturaError(f"TASO op {kind} has no satura counterpart here")

    def _rank(self, ins: list[tuple], r: int) -> None:
        for t in ins:
            if t[0] == "var":
                self.ranks[t[1]] = r


def _rank_of(t: tuple, ranks: dict[str, int]) -> int | None:
    kind = t[0]
    if kind == "var":
        return ranks.get(t[1])
    if kind == "concat":
        return int(t[1])
    if kind in ("add", "mul", "relu"):
        return _rank_of(t[1], ranks)
    return 2 if kind == "matmul" else 4


def _same_shape_guards(pairs: list[tuple[tuple, tuple]], ranks: dict[str, int]) -> list[str]:
    out = []
    for a, b in pairs:
        r = _rank_of(a, ranks) or _rank_of(b, ranks)
        if a[0] == "var" and b[0] == "var":
            out.append(f"shape({a[1]}) == shape({b[1]})")
        elif r is not None:
            out += [f"{_dim(a, i)} == {_dim(b, i)}" for i in range(r)]
    return out


def _text(t: tuple, groups: list[str] | None, counter: list[int]) -> str:
    kind = t[0]
    if kind == "var":
        return t[1]
    if kind in ("add", "mul"):
        return f"{kind}({_text(t[1], groups, counter)}, {_text(t[2], groups, counter)})"
    if kind == "relu":
        return f"relu({_text(t[1], groups, counter)})"
    if kind == "matmul":
        return f"matmul({_text(t[1], groups, counter)}, {_text(t[2], groups, counter)})"
    if kind == "concat":
        return (
            f"concat({_text(t[3], groups, counter)}, {_text(t[4], groups, counter)}, axis={t[2]})"
        )
    if kind == "conv":
        x, w = _text(t[1], groups, counter), _text(t[2], groups, counter)
        group_expr = f"({_dim(t[1], 1)}) // ({_dim(t[2], 1)})"
        if groups is None:  # replacement: the group follows from the shapes
            g = group_expr
        else:  # pattern: a group variable, pinned by the guard
            counter[0] += 1
            g = f"g{counter[0]}"
            groups.append(f"{g} * {_dim(t[2], 1)} == {_dim(t[1], 1)}")
        act = '"relu"' if t[3] == "RELU" else '"none"'
        return (
            f"conv({x}, {w}, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], "
            f"group={g}, act={act})"
        )
    raise SaturaError(kind)


def translate(rule: dict[str, Any]) -> str:
    """One TASO rule as satura rule text. Raises SaturaError when it has no satura form."""
    if len(rule["mapped_outputs"]) != 1:
        raise SaturaError("two outputs")
    names = {v: k for k, v in rule["vars"].items()}
    src, dst = _Side(rule["src"], names), _Side(rule["dst"], names)
    out = rule["mapped_outputs"][0]
    lhs = src.tree(out["src"])
    rhs = dst.tree(out["dst"])
    groups: list[str] = []
    lhs_text = _text(lhs, groups, [0])
    rhs_text = _text(rhs, None, [0])
    ranks = {**dst.ranks, **src.ranks}
    guard = [f"rank({v}) == {r}" for v, r in sorted(ranks.items())]
    guard += sorted(set(src.guards + dst.guards)) + groups
    guard += _same_shape_guards(src.same_shape + dst.same_shape, ranks)
    text = f"rule {rule['name']} [real]:\n    {lhs_text}  =>  {rhs_text}\n"
    if guard:
        text += f"    if {' and '.join(guard)}\n"
    return text


def translate_file(path: str | Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(translated: [(name, rule text)], skipped: [(name, why)]) for a ``taso_rules.json``."""
    rules = json.loads(Path(path).read_text())
    done, skipped = [], []
    for r in rules:
        try:
            done.append((r["name"], translate(r)))
        except SaturaError as e:
            skipped.append((r["name"], str(e)))
    return done, skipped
