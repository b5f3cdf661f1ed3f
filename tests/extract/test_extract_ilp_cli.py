"""The exact (Z3) extractor against the brute-force oracle, and ``satura extract``'s function."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from satura.engine.errors import ExtractError
from satura.extract.cli import extract_command
from satura.extract.egraph_data import load_serialized
from satura.extract.greedy import check_choices, dag_cost, dag_greedy
from satura.extract.ilp import ilp_extract
from test_extract_greedy import BROKEN, DATA, SMALL, brute_force

pytestmark = pytest.mark.z3


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_ilp_is_optimal_on_small_files(path: Path) -> None:
    g = load_serialized(path)
    greedy = dag_greedy(g)
    r = ilp_extract(g, time_limit_s=10.0, start=greedy)
    check_choices(g, r.choices)
    assert r.cost == pytest.approx(dag_cost(g, r.choices))
    assert r.cost <= dag_cost(g, greedy) + 1e-9
    assert r.optimal
    ref = brute_force(path, limit=200_000 if path.stem != "choice" else 0)
    if ref is not None:
        assert r.cost == pytest.approx(ref[1])


def test_ilp_finds_the_shared_choice() -> None:
    # choice.json: the DAG optimum 37 shares A and B among 17 f's (see test_choice_hand_costs).
    g = load_serialized(DATA / "choice.json")
    r = ilp_extract(g, time_limit_s=10.0)
    assert r.cost == 37.0
    assert r.improved


def test_ilp_time_limit_keeps_greedy() -> None:
    g = load_serialized(DATA / "lots_of_paths_through_cycle.json")
    r = ilp_extract(g, time_limit_s=0.001)
    check_choices(g, r.choices)
    assert r.cost <= dag_cost(g, dag_greedy(g))


def test_extract_command_table_and_output(tmp_path: Path) -> None:
    out = tmp_path / "choices.json"
    buf = io.StringIO()
    res = extract_command(str(DATA / "choice.json"), str(out), extractor="ilp", stream=buf)
    table = buf.getvalue()
    assert "extractor" in table
    assert "ilp" in table
    assert res["results"]["tree"]["tree_cost"] == 52.0
    assert res["results"]["ilp"]["dag_cost"] == 37.0
    written = json.loads(out.read_text())["choices"]
    g = load_serialized(DATA / "choice.json")
    check_choices(g, written)
    assert dag_cost(g, written) == 37.0
    assert [p.name for p in tmp_path.iterdir()] == ["choices.json"]  # no temp file left


def test_extract_command_errors(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="root e-class '36'"):
        extract_command(str(DATA / BROKEN), None, stream=io.StringIO())
    with pytest.raises(ExtractError, match="unknown extractor 'best'"):
        extract_command(str(DATA / "loop.json"), None, extractor="best")
