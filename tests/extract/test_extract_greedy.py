"""Greedy extractors on extraction-gym's e-graphs, checked against a brute-force oracle."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from satura.engine.errors import ExtractError
from satura.extract.egraph_data import (
    EGraphData,
    ENode,
    load_serialized,
    reprice,
    to_serialized,
)
from satura.extract.greedy import check_choices, dag_cost, dag_greedy, tree_cost, tree_greedy

DATA = Path(__file__).parent / "data"
GYM = Path("/work/shared/extraction_gym_data")
BROKEN = "invalid_noncanonical_root_BVar_Index_Correction_1.json"
SMALL = sorted(p for p in DATA.glob("*.json") if p.name != BROKEN)


# -- a brute-force oracle, independent of satura.extract ----------------------------------------
def _raw(path: Path) -> tuple[dict, list[str]]:
    data = json.loads(path.read_text())
    return data["nodes"], [str(r) for r in data["root_eclasses"]]


def brute_force(path: Path, limit: int = 20_000) -> tuple[float, float] | None:
    """(best tree cost, best DAG cost) over every complete acyclic choice, or None if too many."""
    nodes, roots = _raw(path)
    by_class: dict[str, list[str]] = {}
    for nid, n in nodes.items():
        by_class.setdefault(n["eclass"], []).append(nid)
    reach, todo = set(roots), list(roots)
    while todo:
        for nid in by_class[todo.pop()]:
            for ch in nodes[nid]["children"]:
                c = nodes[ch]["eclass"]
                if c not in reach:
                    reach.add(c)
                    todo.append(c)
    classes = sorted(reach)
    if math.prod(len(by_class[c]) for c in classes) > limit:
        return None
    best_tree = best_dag = math.inf
    for combo in itertools.product(*(by_class[c] for c in classes)):
        pick = dict(zip(classes, combo, strict=True))
        tree = _tree(nodes, pick, roots)
        if tree is None:
            continue
        used: set[str] = set()
        todo = list(roots)
        while todo:
            nid = pick[todo.pop()]
            if nid not in used:
                used.add(nid)
                todo.extend(nodes[ch]["eclass"] for ch in nodes[nid]["children"])
        best_tree = min(best_tree, tree)
        best_dag = min(best_dag, sum(nodes[n]["cost"] for n in used))
    return best_tree, best_dag


def _tree(nodes: dict, pick: dict, roots: list[str]) -> float | None:
    memo: dict[str, float] = {}

    def cost(c: str, path: frozenset[str]) -> float | None:
        if c in path:
            return None
        if c not in memo:
            n = nodes[pick[c]]
            total = n["cost"]
            for ch in n["children"]:
                sub = cost(nodes[ch]["eclass"], path | {c})
                if sub is None:
                    return None
                total += sub
            memo[c] = total
        return memo[c]

    costs = [cost(r, frozenset()) for r in roots]
    return None if any(c is None for c in costs) else sum(costs)  # type: ignore[misc]


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_small_files_match_brute_force(path: Path) -> None:
    g = load_serialized(path)
    tree, dag = tree_greedy(g), dag_greedy(g)
    check_choices(g, tree)
    check_choices(g, dag)
    ref = brute_force(path)
    if ref is None:
        pytest.skip("too many combinations for the brute-force oracle")
    best_tree, best_dag = ref
    # Knuth's algorithm is optimal for tree cost with non-negative costs.
    assert tree_cost(g, tree) == pytest.approx(best_tree)
    assert dag_cost(g, dag) >= best_dag - 1e-9
    assert dag_cost(g, dag) <= dag_cost(g, tree) + 1e-9


def test_loop_takes_the_only_acyclic_term() -> None:
    # Class 5 = Mul(One, 5) | foo(foo(foo(foo(One)))); only the foo chain is finite: 4 + 1 = 5.
    g = load_serialized(DATA / "loop.json")
    choices = dag_greedy(g)
    assert choices["5"] == "foo-17615343019692007359"
    assert dag_cost(g, choices) == 5.0
    assert tree_cost(g, choices) == 5.0


def test_multi_root_tree_and_dag_costs() -> None:
    # Roots 0 and 1. Class 1 = node_2 (10). Class 0 = node_0(1, 1) (0 + tree 20) | node_1 (5).
    # Tree optimum: node_1, so 5 + 10 = 15.
    g = load_serialized(DATA / "multi_root.json")
    choices = tree_greedy(g)
    assert choices == {"0": "0__1", "1": "1__0"}
    assert tree_cost(g, choices) == 15.0
    assert dag_cost(g, {"0": "0__0", "1": "1__0"}) == 10.0  # node_0 shares the root class 1


def test_cycle_only_root_is_an_error() -> None:
    nodes = {"a": ENode("f", ("1",), "0", 1.0), "b": ENode("g", ("0",), "1", 1.0)}
    g = EGraphData.from_nodes(nodes, ["0"], name="cyc")
    with pytest.raises(ExtractError, match="root e-class '0' has no finite extraction"):
        tree_greedy(g)
    with pytest.raises(ExtractError, match="no finite extraction"):
        dag_greedy(g)


def test_check_choices_rejects_cycles_and_gaps() -> None:
    g = load_serialized(DATA / "loop.json")
    with pytest.raises(ExtractError, match="cyclic"):
        check_choices(g, {"5": "Mul-5040379952546458196", "0": "One-0"})
    with pytest.raises(ExtractError, match="incomplete: e-class '3'"):
        check_choices(g, {"5": "foo-17615343019692007359"})
    with pytest.raises(ExtractError, match="not a node of that class"):
        check_choices(g, {"5": "One-0"})


def test_broken_file_gives_one_line_error() -> None:
    with pytest.raises(ExtractError, match=r"root e-class '36' has no nodes") as err:
        load_serialized(DATA / BROKEN)
    assert BROKEN in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"root_eclasses": []}', "'nodes'"),
        ('{"nodes": {"a": {"op": "x", "children": []}}}', "node 'a' has no 'eclass'"),
        ('{"nodes": {"a": {"op": "x", "eclass": "0", "children": ["b"]}}}', "child 'b'"),
        ('{"nodes": {"a": {"op": "x", "eclass": "0", "cost": "1"}}}', "cost '1'"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, what: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ExtractError, match=r"bad\.json") as err:
        load_serialized(p)
    assert what in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ExtractError, match="no such file"):
        load_serialized("/nonexistent/egraph.json")


def test_round_trip_through_dict() -> None:
    g = load_serialized(DATA / "ab_add.json")
    g2 = load_serialized(to_serialized(g))
    assert g2.classes.keys() == g.classes.keys()
    assert dag_cost(g2, dag_greedy(g2)) == dag_cost(g, dag_greedy(g))


GYM_FILES = sorted(GYM.rglob("*.json")) if GYM.is_dir() else []


@pytest.mark.slow
@pytest.mark.skipif(not GYM_FILES, reason=f"extraction-gym data not at {GYM}")
def test_all_gym_files() -> None:
    """Every file: the broken one errors, the rest extract completely and acyclically."""
    errors, worse = [], []
    for path in GYM_FILES:
        try:
            g = load_serialized(path)
        except ExtractError as e:
            errors.append(str(e))
            continue
        tree, dag = tree_greedy(g), dag_greedy(g)
        check_choices(g, tree)
        check_choices(g, dag)
        if dag_cost(g, dag) > dag_cost(g, tree) + 1e-9:
            worse.append(path.name)
    assert len(errors) == 1
    assert BROKEN in errors[0]
    assert worse == []


def test_choice_hand_costs() -> None:
    # Root: a Cons list of 17 classes (17 Cons + Nil = 18). Each class is g(x(i)) (1 + 1 + free i)
    # or f(i, A, B) (1, plus A and B at 1 each, shared by all f's).
    # Tree optimum: all g, 18 + 17·2 = 52. DAG optimum: all f, 18 + 17 + A + B = 37.
    g = load_serialized(DATA / "choice.json")
    tree = tree_greedy(g)
    assert tree_cost(g, tree) == 52.0
    all_f = {c: next((n for n in ns if g.nodes[n].op == "f"), ns[0]) for c, ns in g.classes.items()}
    assert dag_cost(g, all_f) == 37.0
    assert 37.0 <= dag_cost(g, dag_greedy(g)) <= 52.0


def test_egglog_serialized_egraph() -> None:
    """egglog's own serializer output loads and extracts (roots named by the caller)."""
    from egglog import bindings

    eg = bindings.EGraph()
    eg.run_program(
        *eg.parse_program(
            "(datatype M (Num i64) (Add M M) (Mul M M))\n"
            "(let $x (Mul (Add (Num 1) (Num 2)) (Add (Num 1) (Num 2))))\n"
            "(rewrite (Mul a a) (Add a a))\n(run 2)"
        )
    )
    data = json.loads(eg.serialize([]).to_json())
    g0 = load_serialized(data)
    mul = next(n for n in g0.nodes.values() if n.op == "Mul")
    data["root_eclasses"] = [mul.eclass]
    g = load_serialized(data)
    choices = dag_greedy(g)
    check_choices(g, choices)
    # Mul(s, s) with s = Add(Num 1, Num 2): DAG cost counts s once: Mul + Add + 2 Num + 2 ints.
    assert dag_cost(g, choices) == 6.0
    assert tree_cost(g, choices) == 11.0


def test_subsumed_nodes_are_never_chosen() -> None:
    nodes = {"a": ENode("cheap", (), "0", 1.0, subsumed=True), "b": ENode("dear", (), "0", 5.0)}
    g = EGraphData.from_nodes(nodes, ["0"])
    assert tree_greedy(g) == {"0": "b"}
    with pytest.raises(ExtractError, match="subsumed"):
        check_choices(g, {"0": "a"})
    g2 = reprice(g, lambda nid, n: 2.0)
    assert dag_cost(g2, tree_greedy(g2)) == 2.0
