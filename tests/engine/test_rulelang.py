"""The rule language: parsing, expansion, and errors at file:line:col."""

import pytest
from satura.engine.errors import RuleError
from satura.engine.rulelang import Call, Lit, Star, Var, parse_rules
from satura.engine.saturate import default_rule_files, load_rule_sets


def test_parse_simple_rule():
    (r,) = parse_rules(
        "rule r [exact]:\n    add(matmul(a, b), c) => linear(a, b, c)\n    if rank(b) == 2\n",
        "f.rules",
    )
    assert r.name == "r"
    assert r.exactness == "exact"
    assert r.line == 1
    assert r.lhs == (Call("add", (Call("matmul", (Var("a"), Var("b"))), Var("c"))),)
    assert r.rhs == (Call("linear", (Var("a"), Var("b"), Var("c"))),)
    assert r.guard is not None


def test_family_and_both_ways_expand():
    rules = parse_rules("rule f for u in [exp, relu] [exact]:\n    u(neg(x)) <=> neg(u(x))\n")
    assert [r.name for r in rules] == ["f[exp]", "f[exp]-rev", "f[relu]", "f[relu]-rev"]
    assert rules[1].lhs == rules[0].rhs


def test_trait_family_star_and_named_constant():
    rules = parse_rules(
        "rule g for b in commutative [exact]:\n    b(x, y) => b(y, x)\n"
        "rule s [real]:\n    ew(*xs, expr=e) => ew(*xs, expr=e)\n"
        "rule c [real]:\n    div(x, SQRT2) => mul(x, SQRT1_2)\n"
    )
    assert {"g[add]", "g[mul]"} <= {r.name for r in rules}
    star = next(r for r in rules if r.name == "s")
    assert star.lhs[0].args == (Star("xs"),)
    c = next(r for r in rules if r.name == "c")
    assert isinstance(c.lhs[0].args[1], Lit)
    assert c.lhs[0].args[1].name == "SQRT2"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("rule x [exact]:\n    add(a, b) => mul(a, c)\n", "f.rules:2:25", "not bound"),
        ("rule x [exact]:\n    addd(a, b) => a\n", "f.rules:2:5", "unknown op 'addd'"),
        ("rule x [exact]:\n    add(a) => a\n", "f.rules:2:5", "takes 2 inputs, got 1"),
        ("rule x [exact]:\n    add(a, b) => (a\n", "f.rules:2:", "syntax error"),
        ("rule x [exakt]:\n    add(a, b) => a\n", "f.rules:1:9", "exactness"),
        ("rule x [exact]:\n    transpose(a, prem=p) => a\n", "f.rules:2:", "no attribute 'prem'"),
        ("rule x [exact]:\n    add(a, b) => a\n    if rank(q) == 2\n", "f.rules:3:", "q"),
        (
            "rule x [exact]:\n    add(a, b) => a\n    if launch(a)\n",
            "f.rules:3:",
            "unknown function",
        ),
        ("rule x [approx]:\n    gelu(a) => a\n", "f.rules:1:", "tolerance"),
        ("rule x [exact]:\n    add(a, b)\n", "f.rules:2:", "=>"),
        ("  add(a, b) => a\n", "f.rules:1:", "outside a rule"),
        (
            "rule x [exact]:\n    add(a, b) => a\nrule x [exact]:\n    mul(a, b) => a\n",
            "f.rules:3:",
            "already defined",
        ),
        (
            "rule x for u in nosuchtrait [exact]:\n    u(a) => a\n",
            "f.rules:1:",
            "no op has the trait",
        ),
        ("rule x [exact]:\n    a => a\n", "f.rules:2:", "pattern root"),
        (
            "rule x [exact]:\n    cast(a, to=3) => a\n    if rank(a) == 1\nrule y [exact]:\n"
            "    relu(a) => cast(a, to=3)\n",
            "f.rules:5:",
            "must be dtype",
        ),
    ],
)
def test_errors_point_at_file_line_col(text, where, what):
    with pytest.raises(RuleError) as e:
        parse_rules(text, "f.rules")
    msg = str(e.value)
    assert msg.startswith(where), msg
    assert what in msg.splitlines()[0], msg


def test_shipped_rule_files_parse_and_count():
    files = default_rule_files()
    assert {p.name for p in files} >= {"algebra.rules", "fusion.rules"}
    rules = [r for _, rs in load_rule_sets(None, "fast") for r in rs]
    assert len({r.name.split("[")[0] for r in rules}) >= 25
    strict = [r for _, rs in load_rule_sets(None, "strict") for r in rs]
    assert all(r.exactness == "exact" for r in strict)
    assert len(strict) < len(rules)
