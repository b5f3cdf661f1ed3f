"""Budgeted equality saturation: run rulesets until saturated or a limit, and report.

Like egg's ``Runner``: explicit limits (iterations, e-nodes, seconds) and a stop reason. The loop
runs one egglog iteration at a time so it can check limits, count e-nodes and show progress on a
terminal. It always returns the e-graph as it stands: the best program found so far is extracted
from it whatever the stop reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from satura.engine.egraph import EGraph
from satura.engine.errors import RuleError
from satura.engine.graph import Graph
from satura.engine.rulelang import Rule, load_rules

FP_MODES = {"strict": ("exact",), "real": ("exact", "real"), "fast": ("exact", "real", "approx")}
RULES_DIR = Path(__file__).resolve().parent.parent / "rules"


@dataclass(frozen=True)
class Limits:
    iterations: int = 12
    nodes: int = 8_000
    seconds: float = 30.0


@dataclass
class Report:
    """What a saturation run did. ``stop_reason``: saturated | iterations | nodes | time."""

    stop_reason: str = ""
    iterations: int = 0
    nodes_before: int = 0
    nodes: int = 0
    classes: int = 0
    seconds: float = 0.0
    rules: int = 0
    candidates: dict[str, int] = field(default_factory=dict)  # pattern matches seen by the guard
    fired: dict[str, int] = field(default_factory=dict)  # matches that passed guard and type check
    cost_before: float | None = None
    cost_after: float | None = None
    extract_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        fired = {k: v for k, v in sorted(self.fired.items()) if v}
        lines = [
            f"saturation: {self.stop_reason} after {self.iterations} iterations, "
            f"{self.nodes_before} -> {self.nodes} e-nodes, {self.classes} e-classes, "
            f"{self.seconds:.2f} s"
        ]
        if fired:
            lines.append("rules fired: " + ", ".join(f"{k} x{v}" for k, v in fired.items()))
        if self.cost_before is not None and self.cost_after is not None:
            lines.append(
                f"cost: {self.cost_before * 1e6:.1f} us -> {self.cost_after * 1e6:.1f} us"
                f" ({self.cost_before / max(self.cost_after, 1e-30):.2f}x)"
            )
        return "\n".join(lines)


def default_rule_files() -> list[Path]:
    """The shipped rule files, in a stable order."""
    return sorted(RULES_DIR.glob("*.rules")) + sorted(RULES_DIR.glob("*.egg"))


def load_rule_sets(
    paths: Iterable[str | Path] | None, fp: str = "real"
) -> list[tuple[str, list[Rule] | str]]:
    """Parse rule files (default: the shipped ones), keeping the exactness classes ``fp`` allows.

    Returns (ruleset name, rules or raw egglog text) per file.
    """
    if fp not in FP_MODES:
        raise RuleError(f"unknown --fp mode '{fp}' (use strict, real or fast)")
    allowed = FP_MODES[fp]
    out: list[tuple[str, list[Rule] | str]] = []
    for p in default_rule_files() if paths is None else [Path(x) for x in paths]:
        if p.suffix == ".egg":
            try:
                out.append((p.stem, p.read_text()))
            except OSError as e:
                raise RuleError(f"cannot read rule file: {e.strerror}", str(p)) from None
            continue
        rules = [r for r in load_rules(p) if r.exactness in allowed]
        out.append((p.stem, rules))
    return out


def saturate(
    graph: Graph,
    rule_sets: Sequence[tuple[str, list[Rule] | str]],
    limits: Limits = Limits(),
    progress: TextIO | None = None,
) -> tuple[EGraph, Report]:
    """Load ``graph`` into an e-graph and run the rule sets within ``limits``.

    ``progress``: a stream for one status line per iteration (default: stderr when it is a
    terminal, else nothing).
    """
    if progress is None and sys.stderr.isatty():
        progress = sys.stderr
    start = time.perf_counter()
    eg = EGraph(graph)
    for name, rules in rule_sets:
        if isinstance(rules, str):
            eg.add_egg(rules, name)
        else:
            eg.add_rules(rules, name)
    report = Report(rules=len(eg.rules))
    report.nodes_before, _ = eg.size()
    reason = "iterations"
    for it in range(limits.iterations):
        changed, _ = eg.run_iteration()
        report.iterations = it + 1
        nodes, classes = eg.size()
        elapsed = time.perf_counter() - start
        if progress is not None:
            progress.write(
                f"\r  iteration {it + 1}: {nodes} e-nodes, {classes} e-classes, {elapsed:.1f} s"
            )
            progress.flush()
        if not changed:
            reason = "saturated"
            break
        if nodes >= limits.nodes:
            reason = "nodes"
            break
        if elapsed >= limits.seconds:
            reason = "time"
            break
    if progress is not None:
        progress.write("\n")
    report.stop_reason = reason
    report.nodes, report.classes = eg.size()
    report.candidates = dict(eg.candidates)
    report.fired = dict(eg.fired)
    report.seconds = time.perf_counter() - start
    return eg, report
