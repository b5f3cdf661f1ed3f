"""``satura extract EGRAPH.json``: run the extractors on a serialized e-graph and compare them.

The lead wires this into ``satura/cli.py``; this module only does the work and prints the table.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, TextIO

from satura.engine.errors import ExtractError
from satura.extract.egraph_data import load_serialized
from satura.extract.greedy import (
    Choices,
    check_choices,
    dag_cost,
    dag_greedy,
    tree_cost,
    tree_greedy,
)
from satura.extract.ilp import ilp_extract

EXTRACTORS = ("tree", "dag", "ilp")


def extract_command(
    path: str,
    out: str | None = None,
    extractor: str = "dag",
    ilp_time_limit_s: float = 5.0,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Load ``path`` and run tree-greedy, DAG-greedy and the ILP (skipped when
    ``ilp_time_limit_s <= 0``; it starts from the DAG-greedy result and never returns worse).

    Prints a table (extractor, DAG cost, tree cost, time in ms) to ``stream`` (stdout), and writes
    ``{"choices": {eclass: node_id}}`` of ``extractor``'s result to ``out`` (temp file + rename).
    Returns ``{"file", "nodes", "classes", "extractor", "results": {name: {"dag_cost",
    "tree_cost", "ms"}}}`` (the ILP's entry also has ``"optimal"``). Raises ExtractError for a bad
    file, an unknown extractor or an e-graph with no finite extraction.
    """
    if extractor not in EXTRACTORS:
        raise ExtractError(f"unknown extractor '{extractor}' (known: {', '.join(EXTRACTORS)})")
    if extractor == "ilp" and ilp_time_limit_s <= 0:
        raise ExtractError("extractor 'ilp' needs a positive ILP time limit")
    stream = stream or sys.stdout
    g = load_serialized(path)
    results: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Choices] = {}

    def record(name: str, choices: Choices, t0: float) -> None:
        ms = (time.perf_counter() - t0) * 1e3
        check_choices(g, choices)
        chosen[name] = choices
        results[name] = {
            "dag_cost": dag_cost(g, choices),
            "tree_cost": tree_cost(g, choices),
            "ms": ms,
        }

    t0 = time.perf_counter()
    record("tree", tree_greedy(g), t0)
    t0 = time.perf_counter()
    record("dag", dag_greedy(g), t0)
    if ilp_time_limit_s > 0:
        t0 = time.perf_counter()
        r = ilp_extract(g, ilp_time_limit_s, start=chosen["dag"])
        record("ilp", r.choices, t0)
        results["ilp"]["optimal"] = r.optimal
    print(
        f"{path}: {len(g.nodes)} e-nodes, {len(g.classes)} e-classes, {len(g.roots)} roots",
        file=stream,
    )
    print(f"{'extractor':<10} {'DAG cost':>14} {'tree cost':>14} {'time ms':>10}", file=stream)
    for name, r in results.items():
        note = "" if r.get("optimal") is None else ("  optimal" if r["optimal"] else "  time limit")
        print(
            f"{name:<10} {r['dag_cost']:>14.6g} {r['tree_cost']:>14.6g} {r['ms']:>10.2f}{note}",
            file=stream,
        )
    if out is not None:
        write_choices(out, chosen[extractor])
    return {
        "file": path,
        "nodes": len(g.nodes),
        "classes": len(g.classes),
        "extractor": extractor,
        "results": results,
    }


def write_choices(out: str, choices: Choices) -> None:
    """Write ``{"choices": {eclass: node_id}}`` (extraction-gym's format) atomically."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".choices-", suffix=".json", dir=folder)
    except OSError as e:
        raise ExtractError(f"{out}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"choices": choices}, f, indent=1, sort_keys=True)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ExtractError(f"{out}: cannot write: {e.strerror}") from None


def benchmark_folder(
    folder: str, ilp_time_limit_s: float | None = None, stream: TextIO | None = None
) -> dict[str, Any]:
    """Run the extractors on every ``*.json`` under ``folder``; print one line per file and totals.

    Files that fail to load are listed under ``"errors"`` (one-line messages), not raised.
    Returns ``{"files", "errors", "totals": {name: {"dag_cost", "ms"}}, "per_file": [...]}``;
    DAG costs of every extractor are summed over the files that extract.
    """
    stream = stream or sys.stdout
    paths = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".json")
    )
    names = ["tree", "dag"] + (["ilp"] if ilp_time_limit_s is not None else [])
    totals = {n: {"dag_cost": 0.0, "ms": 0.0} for n in names}
    per_file: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in paths:
        try:
            g = load_serialized(path)
        except ExtractError as e:
            errors.append(str(e))
            continue
        row: dict[str, Any] = {"file": os.path.relpath(path, folder), "nodes": len(g.nodes)}
        start: Choices | None = None
        for name in names:
            t0 = time.perf_counter()
            if name == "tree":
                choices = tree_greedy(g)
            elif name == "dag":
                choices = start = dag_greedy(g)
            else:
                choices = ilp_extract(g, ilp_time_limit_s or 0.0, start).choices
            ms = (time.perf_counter() - t0) * 1e3
            check_choices(g, choices)
            row[name] = dag_cost(g, choices)
            totals[name]["dag_cost"] += row[name]
            totals[name]["ms"] += ms
        per_file.append(row)
        print(
            f"{row['file']:<60} {row['nodes']:>7} " + " ".join(f"{n}={row[n]:.6g}" for n in names),
            file=stream,
        )
    for n in names:
        print(
            f"total {n:<5} DAG cost {totals[n]['dag_cost']:.6g}  time {totals[n]['ms']:.0f} ms",
            file=stream,
        )
    for e in errors:
        print(f"error: {e}", file=stream)
    return {"files": len(paths), "errors": errors, "totals": totals, "per_file": per_file}
