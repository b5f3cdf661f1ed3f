"""The verifier on true rules (proved, and numpy agrees on random inputs), the CLI-facing
command, the cache, approx rules and ops without value semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from satura.engine.errors import SaturaError
from satura.engine.rulelang import parse_rules
from satura.engine.verify import verify_command, verify_rules
from satura.engine.verify.check import concrete_dims, numpy_sides, random_inputs, sides_differ
from satura.engine.verify.instance import concrete_instance, z3_cases

pytestmark = pytest.mark.z3

TRUE_RULES = """
rule add-commute [exact]:
    add(x, y)  =>  add(y, x)

rule transpose-transpose [exact]:
    transpose(transpose(x, perm=p), perm=q)  =>  transpose(x, perm=compose_perm(p, q))
    if rank(x) <= 3

rule matmul-reassoc [real]:
    matmul(matmul(a, b), c)  =>  matmul(a, matmul(b, c))
    if rank(a) == 2 and rank(b) == 2 and rank(c) == 2

rule unary-transpose for u in [exp, relu] [exact]:
    u(transpose(x, perm=p))  =>  transpose(u(x), perm=p)

rule gemm-bias [exact]:
    add(matmul(a, b), c)  =>  linear(a, b, c)
    if rank(a) == 2 and rank(b) == 2 and rank(c) == 1 and shape(c) == [dim(b, 1)]

rule div-to-mul [real]:
    div(x, y)  =>  mul(x, reciprocal(y))

rule gelu-erf [real]:
    mul(mul(x, add(erf(div(x, SQRT2)), 1.0)), 0.5)  =>  gelu(x)

rule reshape-reshape [exact]:
    reshape(reshape(x, shape=s), shape=t)  =>  reshape(x, shape=t)
    if rank(x) <= 2 and len(s) <= 2 and len(t) <= 2
"""


@pytest.fixture(scope="module")
def true_verdicts(tmp_path_factory: pytest.TempPathFactory) -> list:
    rules = parse_rules(TRUE_RULES, "true.rules")
    return verify_rules(rules, cache_dir=tmp_path_factory.mktemp("cache"))


def test_true_rules_are_proved(true_verdicts: list) -> None:
    for v in true_verdicts:
        assert v.status == "proved", f"{v.name}: {v.status} {v.check} {v.reason}"
        assert v.counterexample is None
        assert v.seconds < 30


def test_proved_rules_agree_with_numpy_on_random_inputs(true_verdicts: list) -> None:
    """The oracle: numpy's references never tell two sides of a proved rule apart (reals for
    'real' rules, float32 bits for 'exact' ones), on every case the verifier enumerates."""
    rng = np.random.default_rng(7)
    for v in true_verdicts:
        mode = "bits" if v.rule.exactness == "exact" else "real"
        if v.name == "gelu-erf":
            mode = "real"  # the reference computes gelu in float64 and rounds once
        checked = 0
        for zi in z3_cases(v.rule):
            if zi.rhs_error is not None:
                continue
            assignments, _ = concrete_dims(v.rule, zi, 3, 4, 5000)
            if not assignments:
                continue
            inst = concrete_instance(v.rule, zi.choices, assignments[-1])
            for _ in range(3):
                ins = random_inputs(inst, rng, mode == "bits")
                if mode == "real":  # keep to finite, well-scaled inputs for the tolerance
                    ins = {k: np.clip(np.nan_to_num(a), -50, 50) for k, a in ins.items()}
                lhs, rhs = numpy_sides(
                    v.rule, inst, ins, np.float32 if mode == "bits" else np.float64
                )
                if mode == "real":
                    for lr, rr in zip(lhs, rhs, strict=True):
                        for a, b in zip(lr, rr, strict=True):
                            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
                else:
                    assert not sides_differ(lhs, rhs, "bits"), v.name
                checked += 1
            if checked > 60:
                break
        assert checked > 0, v.name


def test_fp32_refutation_of_reassociation_is_confirmed(tmp_path: Path) -> None:
    rule = parse_rules("""
rule reassoc-exact [exact]:
    matmul(matmul(a, b), c)  =>  matmul(a, matmul(b, c))
    if rank(a) == 2 and rank(b) == 2 and rank(c) == 2
""")
    (v,) = verify_rules(rule, cache_dir=None)
    assert (v.status, v.check) == ("refuted", "fp32")
    cx = v.counterexample
    a, b, c = (cx["inputs"][n].astype(np.float32) for n in "abc")
    left, right = (a @ b) @ c, a @ (b @ c)
    assert not np.array_equal(left.view(np.uint32), right.view(np.uint32))


def test_approx_rule_is_never_a_pass() -> None:
    rules = parse_rules("""
rule fast-gelu [approx 1e-3]:
    gelu(x, approximate="none") => gelu(x, approximate="tanh")
""")
    (v,) = verify_rules(rules, cache_dir=None)
    assert v.status == "unknown"
    assert "tolerance" in v.reason or "uninterpreted" in v.reason


def test_op_without_value_semantics_is_unknown() -> None:
    rules = parse_rules("""
rule softplus-neg [exact]:
    neg(softplus(x))  =>  softplus(neg(neg(neg(x))))
""")
    (v,) = verify_rules(rules, cache_dir=None)
    assert v.status == "unknown"
    assert "softplus" in v.reason


def test_keyword_ops_parse_and_a_mistyped_operand_is_a_verdict() -> None:
    # 'not_' names the op 'not'; the unguarded m is also tried as a float, which Z3's Not
    # cannot take: that case does not apply (no crash), the bool ones prove the rule.
    rules = parse_rules("""
rule where-not [exact]:
    where(not_(m), a, b)  =>  where(m, b, a)

rule not-not-wrong [exact]:
    not_(not_(m))  =>  not_(m)
    if dtype(m) == "bool"
""")
    good, wrong = verify_rules(rules, cache_dir=None)
    assert good.status == "proved"
    assert wrong.status == "refuted"


def test_isnan_has_value_semantics() -> None:
    rules = parse_rules("""
rule isnan-neg [exact]:
    isnan(neg(x))  =>  isnan(x)

rule isnan-is-never-true-wrong [exact]:
    where(isnan(x), y, x)  =>  x
""")
    good, wrong = verify_rules(rules, cache_dir=None)
    assert good.status == "proved"
    assert wrong.status == "refuted"  # a NaN x gives y: fp32 bits find it


def test_cache_hits_and_invalidates(tmp_path: Path) -> None:
    text = "rule neg-neg [exact]:\n    neg(neg(x))  =>  x\n"
    (first,) = verify_rules(parse_rules(text), cache_dir=tmp_path)
    (again,) = verify_rules(parse_rules(text), cache_dir=tmp_path)
    assert not first.cached
    assert again.cached
    assert again.status == first.status == "proved"
    changed = text.replace("neg(neg(x))", "neg(x)")
    (other,) = verify_rules(parse_rules(changed), cache_dir=tmp_path)
    assert not other.cached
    assert other.status == "refuted"


def test_verify_command_lines_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.rules"
    good.write_text("rule mul-commute [exact]:\n    mul(x, y)  =>  mul(y, x)\n")
    bad = tmp_path / "bad.rules"
    bad.write_text("rule add-zero [exact]:\n    add(x, 0.0)  =>  x\n")
    assert verify_command([str(good)], cache_dir=tmp_path / "c") == 0
    out = capsys.readouterr().out
    assert "mul-commute" in out
    assert " ok " in out
    assert verify_command([str(good), str(bad)], cache_dir=tmp_path / "c") == 1
    out = capsys.readouterr().out
    assert "REFUTED" in out
    assert "numpy confirms" in out
    assert "x = " in out


def test_verify_command_reports_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.rules"
    bad.write_text("rule nope [exact]:\n    frobnicate(x)  =>  x\n")
    assert verify_command([str(bad)], cache_dir=None) == 1
    assert "broken.rules:2" in capsys.readouterr().out


def test_several_processes_give_the_same_verdicts_in_order(tmp_path: Path) -> None:
    """``jobs`` workers prove the rules the cache lacks; verdicts come back in the rules' order
    (a refuted rule's counterexample crosses the process boundary), and are cached."""
    text = (
        "rule neg-neg [exact]:\n    neg(neg(x))  =>  x\n"
        "rule add-zero [exact]:\n    add(x, 0.0)  =>  x\n"
        "rule mul-commute [exact]:\n    mul(x, y)  =>  mul(y, x)\n"
    )
    one = verify_rules(parse_rules(text), cache_dir=None)
    two = verify_rules(parse_rules(text), cache_dir=tmp_path, jobs=2)
    assert [(v.name, v.status, v.check) for v in two] == [(v.name, v.status, v.check) for v in one]
    assert [v.status for v in two] == ["proved", "refuted", "proved"]
    assert two[1].counterexample is not None
    again = verify_rules(parse_rules(text), cache_dir=tmp_path, jobs=2)
    assert [v.cached for v in again] == [True, True, True]


def test_verify_command_rejects_no_jobs(tmp_path: Path) -> None:
    rules = tmp_path / "r.rules"
    rules.write_text("rule neg-neg [exact]:\n    neg(neg(x))  =>  x\n")
    with pytest.raises(SaturaError, match="--jobs must be >= 1"):
        verify_command([str(rules)], cache_dir=None, jobs=0)
