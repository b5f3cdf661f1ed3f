"""TASO's rule file, translated to satura rules: every one-output rule translates and parses, and
a sample verifies (TASO's own verifier is the comparison: it proves 117 of 133)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from satura.engine.rulelang import parse_rules
from satura.engine.verify import verify_rule
from satura.engine.verify.taso import translate_file

pytestmark = pytest.mark.z3

TASO = Path("/work/shared/taso_rules/taso_rules.json")
needs_taso = pytest.mark.skipif(not TASO.exists(), reason="TASO rule file not present")


@needs_taso
def test_every_one_output_rule_translates() -> None:
    done, skipped = translate_file(TASO)
    assert len(done) + len(skipped) == 133
    assert {why for _, why in skipped} == {"two outputs"}
    for name, text in done:
        (rule,) = parse_rules(text, name)
        assert rule.name == name


@needs_taso
def test_reassociation_and_distribution_are_proved() -> None:
    done = dict(translate_file(TASO)[0])
    for name in ("taso_000", "taso_023"):
        (rule,) = parse_rules(done[name], name)
        v = verify_rule(rule, assume_rhs_wellformed=True)
        assert v.status == "proved", f"{name}: {v.reason}"


@needs_taso
def test_grouped_conv_concat_needs_equal_halves() -> None:
    """taso_099 merges two convs into one with 2 groups: wrong when the two output channel
    counts differ (TASO's verify.py disabled the axiom for this reason)."""
    done = dict(translate_file(TASO)[0])
    (rule,) = parse_rules(done["taso_099"], "taso_099")
    v = verify_rule(rule, assume_rhs_wellformed=True)
    assert v.status == "refuted"
    cx = v.counterexample
    assert cx is not None, v.reason
    assert cx["confirmed"], v.reason
    if "rhs" in cx:
        lhs, rhs = np.asarray(cx["lhs"][0][0]), np.asarray(cx["rhs"][0][0])
        assert lhs.shape != rhs.shape or not np.allclose(lhs, rhs)
