"""Verify rules: one :class:`Verdict` per rule, cached on disk; the ``satura verify`` command.

A rule is proved when (1) for every case of ranks and attributes (see
:mod:`satura.engine.verify.instance`) and every size, the guard and a well-formed pattern imply a
well-formed replacement of the same shape and dtype, and (2) for every dimension up to ``bound``
the two sides are equal over the reals, and for ``exact`` rules bit-equal in IEEE fp32. ``approx``
rules pass only where equality is provable; otherwise they are ``unknown`` (never a pass).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from satura.engine.errors import SaturaError
from satura.engine.rulelang import Rule, load_rules
from satura.engine.verify import check
from satura.engine.verify.instance import Unsupported, z3_cases

DEFAULT_CACHE = Path.home() / ".cache" / "satura" / "verify"
VERSION = "1"
VALUE_CASE_BUDGET = check.VALUE_CASE_BUDGET  # concrete shape cases per rule, smallest first


@dataclass
class Verdict:
    """The result of verifying one rule."""

    rule: Rule
    status: str  # proved | refuted | unknown
    check: str  # shape | value | fp32 | approx | setup
    reason: str
    counterexample: dict[str, Any] | None
    seconds: float
    cached: bool = False

    @property
    def name(self) -> str:
        return self.rule.name


def _cache_key(rule: Rule, bound: int, case_budget: int | None = VALUE_CASE_BUDGET) -> str:
    """The verdict's cache key: everything a verdict depends on (the value check's coverage is
    fixed by ``bound`` and ``case_budget``; the timeout only turns verdicts into ``unknown``,
    which is never cached)."""
    from satura.engine.ops import get_op
    from satura.engine.verify import instance, semantics

    h = hashlib.sha256()
    h.update(
        f"{VERSION}|{bound}|cases={case_budget}|{rule.name}|{rule.exactness}|"
        f"{rule.tolerance}|".encode()
    )
    h.update(rule.text.encode())
    h.update(repr((rule.lhs, rule.rhs)).encode())
    for mod in (semantics, check, instance):
        h.update(Path(mod.__file__ or "").read_bytes())
    for op in check.uses_ops(rule):
        info = get_op(op)
        h.update(f"{op}|{info.shape.__code__.co_code!r}|{sorted(info.attrs)}".encode())
    return h.hexdigest()[:32]


def verify_rule(
    rule: Rule,
    bound: int = 3,
    timeout_s: float = 30.0,
    case_budget: int | None = VALUE_CASE_BUDGET,
    assume_rhs_wellformed: bool = False,
) -> Verdict:
    """Verify one rule (no cache). The shape check covers every case; the value check runs
    cases smallest first, at most ``case_budget`` concrete shape cases (None: all; the verdict's
    reason says how far). The coverage is counted, never timed, so a rule gets the same verdict
    and reason on any machine; ``timeout_s`` is only a safety net: past it the verdict is
    ``unknown``. ``assume_rhs_wellformed`` reads the rule as TASO does: it applies only where the
    replacement is well-formed (satura's own rules must imply that from the guard: keep it
    False)."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    step_ms = int(max(1000, min(timeout_s, 20) * 1000))
    out = _verify(rule, bound, deadline, step_ms, case_budget, assume_rhs_wellformed)
    return Verdict(
        rule, out.status, out.check, out.reason, out.counterexample, time.monotonic() - t0
    )


def _verify(
    rule: Rule,
    bound: int,
    deadline: float,
    step_ms: int,
    case_budget: int | None,
    assume_rhs: bool = False,
) -> check.Outcome:
    try:
        insts = []
        for inst in z3_cases(rule):
            if time.monotonic() > deadline:
                return check.Outcome("unknown", "shape", "timeout while enumerating cases")
            inst.assume_rhs = assume_rhs
            res = check.check_shape_case(rule, inst, step_ms)
            if res is not None:
                return res
            if inst.rhs_error is None:
                insts.append(inst)
        if not insts:
            return check.Outcome("unknown", "shape", "the pattern never matches under its guard")
        missing = check.missing_semantics(rule)
        if missing:
            return check.Outcome(
                "unknown", "value", f"no value semantics for {', '.join(missing)} (shapes proved)"
            )
        return check.check_values(rule, insts, bound, deadline, step_ms, case_budget)
    except Unsupported as e:
        return check.Outcome("unknown", "setup", str(e))


def verify_rules(
    rules: Iterable[Rule | str | Path],
    bound: int = 3,
    timeout_s: float = 30.0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    case_budget: int | None = VALUE_CASE_BUDGET,
    jobs: int = 1,
) -> list[Verdict]:
    """Verify rules (``Rule`` objects or paths of rule files). ``cache_dir`` None disables the
    on-disk cache (keyed by the rule text, ``bound``, ``case_budget`` and the semantics and shape
    functions it uses); ``jobs`` processes prove the rules the cache lacks."""
    return list(iter_verdicts(rules, bound, timeout_s, cache_dir, case_budget, jobs))


def iter_verdicts(
    rules: Iterable[Rule | str | Path],
    bound: int = 3,
    timeout_s: float = 30.0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    case_budget: int | None = VALUE_CASE_BUDGET,
    jobs: int = 1,
) -> Iterator[Verdict]:
    """The verdicts of ``rules`` in order, each as soon as it and those before it are known."""
    flat: list[Rule] = []
    for r in rules:
        flat += load_rules(r) if isinstance(r, str | Path) else [r]
    files = [
        Path(cache_dir) / f"{_cache_key(rule, bound, case_budget)}.pkl" if cache_dir else None
        for rule in flat
    ]
    hits = [_load_verdict(rule, f) for rule, f in zip(flat, files, strict=True)]
    misses = [rule for rule, hit in zip(flat, hits, strict=True) if hit is None]
    fresh = _prove_all(misses, bound, timeout_s, case_budget, jobs)
    for hit, cache_file in zip(hits, files, strict=True):
        if hit is not None:
            yield hit
            continue
        v = next(fresh)
        if cache_file is not None and v.status != "unknown":
            _store_verdict(v, cache_file)
        yield v


def _prove_all(
    rules: list[Rule], bound: int, timeout_s: float, case_budget: int | None, jobs: int
) -> Iterator[Verdict]:
    """verify_rule over ``rules``, in order; on ``jobs`` worker processes when that is more
    than one and there are several rules (each worker is a fresh interpreter: no Z3 state is
    shared)."""
    n = len(rules)
    args = (rules, [bound] * n, [timeout_s] * n, [case_budget] * n)
    if jobs <= 1 or n <= 1:
        yield from map(verify_rule, *args)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, n), mp_context=ctx) as pool:
        yield from pool.map(verify_rule, *args)


def _load_verdict(rule: Rule, cache_file: Path | None) -> Verdict | None:
    if cache_file is None or not cache_file.exists():
        return None
    try:
        v = pickle.loads(cache_file.read_bytes())
        return Verdict(
            rule, v["status"], v["check"], v["reason"], v["counterexample"], v["seconds"], True
        )
    except Exception:
        return None  # a stale or broken entry is recomputed


def _store_verdict(v: Verdict, cache_file: Path) -> None:
    """Written to a temporary name and renamed: concurrent runs never read half an entry."""
    data = {
        "status": v.status,
        "check": v.check,
        "reason": v.reason,
        "counterexample": v.counterexample,
        "seconds": v.seconds,
    }
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(data))
        os.replace(tmp, cache_file)
    except OSError:
        pass


def verify_file(
    path: str | Path,
    bound: int = 3,
    timeout_s: float = 30.0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    case_budget: int | None = VALUE_CASE_BUDGET,
) -> list[Verdict]:
    """Verify every rule of one rule file."""
    return verify_rules([Path(path)], bound, timeout_s, cache_dir, case_budget)


def format_counterexample(cx: dict[str, Any]) -> str:
    """A few lines: the case, the dims, the inputs, both sides, and numpy's confirmation."""
    lines = []
    if cx.get("case"):
        lines.append(f"case: {cx['case']}")
    dims = cx.get("dims") or {}
    if dims:
        lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in dims.items()))
    with np.printoptions(floatmode="unique", threshold=40, linewidth=100):
        for n, a in (cx.get("inputs") or {}).items():
            lines.append(
                f"{n} = {np.array2string(np.asarray(a), separator=', ')}".replace("\n", " ")
            )
        for side in ("lhs", "rhs"):
            if side in cx:
                vals = [
                    np.array2string(np.asarray(o), separator=", ").replace("\n", " ")
                    for root in cx[side]
                    for o in root
                ]
                lines.append(f"{side} -> {'; '.join(vals)}")
    first = _first_difference(cx)
    if first:
        lines.append(first)
    for k in ("lhs_shapes", "rhs_shapes", "rhs_error"):
        if k in cx:
            lines.append(f"{k}: {cx[k]}")
    lines.append(
        "numpy confirms" if cx.get("confirmed") else f"numpy does NOT confirm: {cx.get('note', '')}"
    )
    return "\n".join(lines)


def _first_difference(cx: dict[str, Any]) -> str:
    """'first difference at [i]: lhs vs rhs' with float32 bit patterns, when both sides ran."""
    try:
        lhs = np.asarray(cx["lhs"][0][0])
        rhs = np.asarray(cx["rhs"][0][0])
    except (KeyError, IndexError, TypeError):
        return ""
    if lhs.shape != rhs.shape or lhs.dtype == np.bool_:
        return ""
    a32, b32 = lhs.astype(np.float32), rhs.astype(np.float32)
    diff = np.argwhere(
        (a32.view(np.uint32) != b32.view(np.uint32)) & ~(np.isnan(a32) & np.isnan(b32))
    )
    if lhs.dtype == np.float64:
        diff = np.argwhere(~np.isclose(lhs, rhs, rtol=1e-9, atol=1e-9, equal_nan=True))
    if not len(diff):
        return ""
    idx = tuple(int(i) for i in diff[0])
    bits = (
        f" (float32 bits {int(a32[idx].view(np.uint32)):#010x} vs "
        f"{int(b32[idx].view(np.uint32)):#010x})"
        if lhs.dtype == np.float32
        else ""
    )
    return f"first difference at {list(idx)}: {lhs[idx].item()!r} vs {rhs[idx].item()!r}{bits}"


def verify_command(
    paths: Sequence[str],
    bound: int = 3,
    timeout_s: float = 30.0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    as_json: bool = False,
    case_budget: int | None = VALUE_CASE_BUDGET,
    jobs: int = 1,
) -> int:
    """``satura verify``: one line per rule, printed as each is known; exit code 1 if any rule
    is refuted or unknown. ``case_budget`` None (``--cases 0``) checks every value case;
    ``jobs`` processes prove the rules."""
    from satura.engine.rulelang import load_rules as _load

    if not paths:
        from importlib.resources import files

        paths = sorted(str(p) for p in files("satura.rules").iterdir() if str(p).endswith(".rules"))
    if bound < 1 or timeout_s <= 0:
        raise SaturaError(f"--bound must be >= 1 and --timeout > 0 (got {bound}, {timeout_s})")
    if jobs < 1:
        raise SaturaError(f"--jobs must be >= 1 (got {jobs})")
    if case_budget is not None and case_budget < 1:
        raise SaturaError(f"--cases must be >= 1, or 0 for no limit (got {case_budget})")
    bad = 0
    rules: list[Rule] = []
    for p in paths:
        try:
            rules += _load(p)
        except SaturaError as e:
            print(str(e))
            bad += 1
    everything: list[Verdict] = []
    for v in iter_verdicts(rules, bound, timeout_s, cache_dir, case_budget, jobs):
        everything.append(v)
        bad += v.status != "proved"
        if as_json:
            continue
        mark = {"proved": "ok", "refuted": "REFUTED", "unknown": "UNKNOWN"}[v.status]
        print(
            f"{v.rule.where}  {v.name:<32} {mark:<8} {v.check:<6} {v.seconds:6.2f}s  {v.reason}",
            flush=True,
        )
        if v.counterexample:
            for line in format_counterexample(v.counterexample).splitlines():
                print(f"    {line}")
    if as_json:
        print(verdicts_json(everything))
    elif everything:
        n = {s: sum(v.status == s for v in everything) for s in ("proved", "refuted", "unknown")}
        secs = sorted(v.seconds for v in everything)
        print(
            f"{len(everything)} rules: {n['proved']} proved, {n['refuted']} refuted, "
            f"{n['unknown']} unknown; median {secs[len(secs) // 2]:.2f}s, "
            f"slowest {secs[-1]:.2f}s"
        )
    return 1 if bad else 0


def verdicts_json(verdicts: Sequence[Verdict]) -> str:
    """Verdicts as JSON (counterexample arrays as lists)."""

    def conv(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [conv(x) for x in o]
        if isinstance(o, np.generic):
            return o.item()
        return o

    return json.dumps(
        [
            {
                "rule": v.name,
                "status": v.status,
                "check": v.check,
                "reason": v.reason,
                "seconds": round(v.seconds, 4),
                "counterexample": conv(v.counterexample),
            }
            for v in verdicts
        ]
    )
