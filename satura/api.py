"""The public facade: load, optimize, compile, verify (DESIGN §8)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from satura.engine.errors import SaturaError
from satura.engine.graph import Graph, is_data_dependent
from satura.engine.saturate import Limits, Report, load_rule_sets, saturate

TARGETS = ("cpu", "reference")


@dataclass
class OptimizeResult:
    """What :func:`optimize` returns: the extracted graph and the numbers behind it."""

    graph: Graph
    report: Report
    cost_before: float
    cost_after: float


def load(model: str | Path | onnx.ModelProto) -> Graph:
    """Load an ONNX model (a file path or an ``onnx.ModelProto``) into a Graph.
    Raises ModelError / UnsupportedOpError."""
    from satura.engine.onnx_import import load_onnx

    return load_onnx(model if isinstance(model, onnx.ModelProto) else str(model))


def _profile_for(target: str) -> str:
    return {"cpu": "host", "reference": "host"}.get(target, target)


def optimize(
    graph: Graph,
    target: str = "cpu",
    rules: Iterable[str | Path] | None = None,
    fp: str = "real",
    limits: Limits | None = None,
    hints: Mapping[str, int] | None = None,
) -> OptimizeResult:
    """Saturate ``graph`` with the rule files (default: the shipped ones) and extract the
    cheapest program for ``target``'s hardware profile (``cpu``, or a profile name such as
    ``h100``). ``fp`` picks the rule classes: strict (exact only), real (default), fast."""
    from satura.engine.fold import fold_constants
    from satura.extract.cost import graph_time
    from satura.extract.select import extract_graph

    profile = _profile_for(target)
    rule_sets = load_rule_sets(rules, fp)
    # A data-dependent op's outputs are extracted too: when only its size is used (the
    # length of a nonzero), no data edge would keep it, and its run is what binds that size.
    roots = Graph(graph.name)
    roots.inputs, roots.nodes = graph.inputs, graph.nodes
    roots.outputs = graph.outputs + [
        o for n in graph.nodes if is_data_dependent(n) for o in n.outputs if o not in graph.outputs
    ]
    eg, report = saturate(roots, rule_sets, limits or Limits())
    snap = eg.snapshot()
    best, _, seconds = extract_graph(snap, profile, hints)
    best.outputs = best.outputs[: len(graph.outputs)]
    fold_constants(best)  # what rules computed over weights (folded BatchNorm, ...) is data
    best.prune()
    report.cost_before = graph_time(graph, profile, hints)
    report.cost_after = graph_time(best, profile, hints)
    report.extract_seconds = seconds
    if report.cost_after > report.cost_before:
        # The extractor's DAG heuristic can lose to the input program; never return worse.
        best, report.cost_after = graph, report.cost_before
    return OptimizeResult(best, report, report.cost_before, report.cost_after)


def object_cache_dir() -> str | None:
    """Where :func:`compile` caches machine code (keyed by a hash of the module's LLVM IR, the
    host CPU and satura's version; a hit skips LLVM): ``$SATURA_CACHE_DIR``, else
    ``~/.cache/satura/objects``; None (no disk cache) when ``SATURA_CACHE_DIR`` is set empty."""
    env = os.environ.get("SATURA_CACHE_DIR")
    if env is not None:
        return env or None
    return str(Path.home() / ".cache" / "satura" / "objects")


def compile(
    graph: Graph | str | Path | onnx.ModelProto, target: str = "cpu"
) -> Callable[..., dict[str, np.ndarray]]:
    """A callable running ``graph``: ``exe(name=array, ...) -> {output name: array}``.

    ``graph``: a Graph, or an ONNX model (a file path or an ``onnx.ModelProto``), loaded as
    :func:`load` does. ``target``: ``cpu`` (llvmlite kernels where lowered) or ``reference``
    (numpy oracle).
    """
    if target not in TARGETS:
        raise SaturaError(f"unknown target '{target}' (known: {', '.join(TARGETS)})")
    if isinstance(graph, str | Path | onnx.ModelProto):
        graph = load(graph)
    elif not isinstance(graph, Graph):
        raise SaturaError(
            f"compile takes a Graph, an ONNX file path or an onnx.ModelProto, "
            f"not {type(graph).__name__}"
        )
    from satura.engine.interpret import run_graph

    if target == "cpu":
        from satura.targets import compile_graph

        # one variant per input shape if symbolic; machine code cached on disk across processes
        return compile_graph(graph, target="cpu", cache_dir=object_cache_dir())

    def run(inputs: Mapping[str, Any] | None = None, /, **kw: Any) -> dict[str, np.ndarray]:
        return run_graph(graph, {**(inputs or {}), **kw})

    return run


def verify(*paths: str | Path) -> list[Any]:
    """Verdicts of every rule in ``paths`` (default: the shipped rule files)."""
    from satura.engine.saturate import default_rule_files
    from satura.engine.verify import verify_rules

    files = [Path(p) for p in paths] or [p for p in default_rule_files() if p.suffix == ".rules"]
    return verify_rules(files)
