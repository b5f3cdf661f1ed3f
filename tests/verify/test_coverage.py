"""The value check's coverage is counted, not timed: a slow or loaded machine checks the same
cases and writes the same reason; a deadline that passes gives ``unknown``, never ``proved``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import z3
from satura.engine.rulelang import Rule, parse_rules
from satura.engine.verify import api, check, verify_rule, verify_rules
from satura.engine.verify.instance import z3_cases

from satura.cli import main

pytestmark = pytest.mark.z3

# Ranks 0..4 for x and y, with broadcasting: 25 rank/attribute cases, 192 concrete ones.
MANY = "rule add-commute [exact]:\n    add(x, y)  =>  add(y, x)\n"
BUDGET = 40  # small, so the check stops after a few ranks


def _rule(text: str = MANY) -> Rule:
    (rule,) = parse_rules(text, "t.rules")
    return rule


class _SlowClock:
    """``time.monotonic`` of a machine where every step between two readings takes ``step``
    seconds more (a machine thousands of times slower than this one); tests may add to
    ``offset`` to make one part slow."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.offset = 0.0

    def monotonic(self) -> float:
        self.offset += self.step
        return time.monotonic() + self.offset


def _cases(reason: str) -> int:
    m = re.search(r"on (\d+) shape cases", reason)
    assert m, reason
    return int(m.group(1))


@pytest.mark.parametrize("budget", [BUDGET, check.VALUE_CASE_BUDGET])
def test_coverage_and_reason_do_not_depend_on_speed(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """The same rule, once at this machine's speed and once on a clock where every reading is a
    second later than the last (the old 6 s budget stopped after six readings and proved 4 of
    the 192 cases): the same cases are checked and the reason is the same, word for word."""
    fast = verify_rule(_rule(), case_budget=budget, timeout_s=1e9)
    clock = _SlowClock(step=1.0)
    monkeypatch.setattr(check, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(api, "time", SimpleNamespace(monotonic=clock.monotonic))
    slow = verify_rule(_rule(), case_budget=budget, timeout_s=1e9)
    assert clock.offset > 100, "the clock did not run slow"
    assert slow.seconds > fast.seconds + 100
    assert fast.status == slow.status == "proved", (fast.reason, slow.reason)
    assert slow.reason == fast.reason
    if budget == BUDGET:
        assert _cases(slow.reason) == _cases(fast.reason) <= BUDGET
        assert f"larger ones skipped (case budget {BUDGET})" in fast.reason
        assert re.search(
            r"the \d+ of 25 rank/attribute cases with at most \d+ dimensions;", fast.reason
        ), fast.reason
    else:  # the default budget holds every case of this rule
        assert _cases(slow.reason) == _cases(fast.reason) == 192
        assert "all 25 rank/attribute cases" in fast.reason


def test_coverage_does_not_depend_on_slow_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each numpy trial and each Z3 proof really taking longer (a sleep) changes nothing."""
    fast = verify_rule(_rule(), case_budget=BUDGET)
    for name in ("_random_search", "_check_one"):
        orig = getattr(check, name)

        def slow(*a: Any, _orig: Any = orig, **k: Any) -> Any:
            time.sleep(0.002)
            return _orig(*a, **k)

        monkeypatch.setattr(check, name, slow)
    slow_v = verify_rule(_rule(), case_budget=BUDGET)
    assert slow_v.status == fast.status == "proved"
    assert slow_v.reason == fast.reason


def test_budget_counts_whole_ranks_smallest_first() -> None:
    """A larger budget checks a superset; without a limit every case is checked."""
    small = check_reason(BUDGET)
    larger = check_reason(4 * BUDGET)
    assert _cases(small) <= BUDGET < _cases(larger) <= 4 * BUDGET
    (rule,) = parse_rules("rule neg-neg [exact]:\n    neg(neg(x))  =>  x\n")
    whole = verify_rule(rule, case_budget=None)
    assert whole.status == "proved"
    assert "all 5 rank/attribute cases" in whole.reason
    assert verify_rule(rule).reason == whole.reason  # 58 cases: within the default budget


def check_reason(budget: int) -> str:
    v = verify_rule(_rule(), case_budget=budget)
    assert v.status == "proved", v.reason
    return v.reason


def test_smallest_rank_group_is_never_cut() -> None:
    """A budget smaller than the smallest group still checks that group in full."""
    v = verify_rule(_rule(), case_budget=1)
    assert v.status == "proved", v.reason
    assert "rank/attribute cases with at most 0 dimensions;" in v.reason
    assert "case budget 1)" in v.reason
    one = _rule(
        "rule matmul-reassoc [real]:\n    matmul(matmul(a, b), c)  =>  matmul(a, matmul(b, "
        "c))\n    if rank(a) == 2 and rank(b) == 2 and rank(c) == 2\n"
    )
    v = verify_rule(one, case_budget=1)
    assert v.status == "proved", v.reason
    assert "all 1 rank/attribute cases" in v.reason
    assert _cases(v.reason) > 1


@pytest.mark.parametrize(
    ("slow_part", "stage"),
    [
        ("concrete_dims", "listing the shape cases"),
        ("_random_search", "trying numpy"),
        ("_check_one", "proving with Z3"),
    ],
)
def test_deadline_gives_unknown_not_proved(
    monkeypatch: pytest.MonkeyPatch, slow_part: str, stage: str
) -> None:
    """When one part of the value check takes longer than the whole timeout, the verdict is
    unknown and says so; it never reports the cases checked so far as proved."""
    clock = _SlowClock(step=0.0)
    monkeypatch.setattr(check, "time", SimpleNamespace(monotonic=clock.monotonic))
    orig = getattr(check, slow_part)

    def slow(*a: Any, **k: Any) -> Any:
        clock.offset += 3600.0  # an hour, far past the 30 s timeout
        return orig(*a, **k)

    monkeypatch.setattr(check, slow_part, slow)
    v = verify_rule(_rule(), case_budget=BUDGET, timeout_s=30.0)
    assert v.status == "unknown", v.reason
    assert v.check == "value"
    assert f"timeout (--timeout) while {stage}" in v.reason, v.reason
    assert "not proved" in v.reason


def test_real_timeout_gives_unknown() -> None:
    """A timeout far too short for the rule (no clock tricks): unknown, never proved."""
    v = verify_rule(_rule(), case_budget=None, timeout_s=0.05)
    assert v.status == "unknown", v.reason
    assert "timeout" in v.reason


def test_z3_giving_up_on_dims_is_unknown_not_fewer_cases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Z3 timing out while listing or sampling assignments raises GaveUp (it must not read as
    "no more assignments", which would check fewer cases on a slower machine); the verdict is
    unknown."""
    rule = _rule(
        "rule mul-commute [exact]:\n    mul(x, y)  =>  mul(y, x)\n    "
        "if rank(x) == 4 and rank(y) == 4\n"
    )
    zi = max((i for i in z3_cases(rule) if i.rhs_error is None), key=check.total_rank)
    names = list(dict.fromkeys(zi.dim_names))
    assert 3 ** len(names) > check.PY_ENUM_LIMIT  # Z3 lists this case's assignments
    with monkeypatch.context() as m:
        m.setattr(z3.Solver, "check", lambda self, *a: z3.unknown)
        with pytest.raises(check.GaveUp, match="Z3 gave up listing"):
            check.concrete_dims(rule, zi, 3, 4, 1000)
        with pytest.raises(check.GaveUp, match="Z3 gave up sampling"):
            check._samples(rule, zi, 3, np.random.default_rng(0))

    def gave_up(*a: Any, **k: Any) -> Any:
        raise check.GaveUp("Z3 gave up sampling dims <= 3 (timeout)")

    monkeypatch.setattr(check, "_samples", gave_up)
    v = verify_rule(_rule())
    assert v.status == "unknown"
    assert "Z3 gave up sampling" in v.reason


def test_cache_key_holds_the_case_budget(tmp_path: Path) -> None:
    rule = _rule("rule neg-neg [exact]:\n    neg(neg(x))  =>  x\n")
    (first,) = verify_rules([rule], cache_dir=tmp_path, case_budget=BUDGET)
    (same,) = verify_rules([rule], cache_dir=tmp_path, case_budget=BUDGET)
    (other,) = verify_rules([rule], cache_dir=tmp_path, case_budget=BUDGET + 1)
    (unlimited,) = verify_rules([rule], cache_dir=tmp_path, case_budget=None)
    assert not first.cached
    assert same.cached
    assert not other.cached
    assert not unlimited.cached
    keys = {api._cache_key(rule, 3, b) for b in (BUDGET, BUDGET + 1, None)}
    assert len(keys) == 3
    assert api._cache_key(rule, 3, BUDGET) == api._cache_key(rule, 3, BUDGET)


def test_cli_cases_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "many.rules"
    f.write_text(MANY)
    assert main(["verify", "--no-cache", "--cases", str(BUDGET), str(f)]) == 0
    out = capsys.readouterr().out
    assert f"case budget {BUDGET})" in out
    assert main(["verify", "--no-cache", "--cases", "-1", str(f)]) == 1
    assert "--cases" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default {check.VALUE_CASE_BUDGET}; 0: no limit" in help_text


def _chosen(rule: Rule) -> list[tuple[str, list[dict[str, Any]]]]:
    insts = sorted((i for i in z3_cases(rule) if i.rhs_error is None), key=check.total_rank)
    chosen = check._value_cases(
        rule, insts, 3, float("inf"), 20000, None, np.random.default_rng(1234)
    )
    assert isinstance(chosen, check._Chosen)
    return [
        (zi.describe(), [{n: ci.env[n].shape for n in ci.leaves} for ci in cis])
        for zi, cis in chosen.work
    ]


def test_cases_do_not_depend_on_earlier_z3_work() -> None:
    """Which model Z3 returns can change with what the process did before; the samples fix
    every dim explicitly and a complete list is sorted, so the rules verified before (here a
    transpose rule) change none of this rule's cases."""
    first = _chosen(_rule())
    verify_rule(
        _rule(
            "rule tt [exact]:\n    transpose(transpose(x, perm=p), perm=q)  =>  "
            "transpose(x, perm=compose_perm(p, q))\n    if rank(x) <= 3\n"
        )
    )
    assert _chosen(_rule()) == first
