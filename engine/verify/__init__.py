"""Z3 verification of rewrite rules (DESIGN §7).

For each rule, under its guard:

1. **Shapes, every size** (:mod:`.instance`, :func:`.check.check_shape_case`): dimensions are Z3
   integers >= 1; the registry's own shape functions run on them (``Z3Dims``). A *case* fixes what
   Z3 integers cannot: each tensor variable's rank (0..4, pruned by the guard and the pattern),
   each list variable's length (1..2), each enumerable attribute (permutations, axes, acts;
   ``group`` 1..3), including attributes the pattern leaves open. ``dims`` attributes
   (reshape/expand shape, split sizes) are Z3 dimensions; float attributes and ``value(v)`` are
   symbolic reals; an ``ew`` expression variable is an uninterpreted function. Proved: guard and a
   well-formed pattern imply a well-formed replacement of equal shape and dtype (float32).
2. **Values, bounded sizes** (:mod:`.semantics`, :func:`.check.check_values`): for each case,
   every dimension assignment up to ``bound`` (reduced per case so each has at most a few dozen),
   smallest cases first, whole ranks, within a budget counted in concrete cases (never in
   seconds: the coverage is the same on any machine; the timeout only makes a rule ``unknown``);
   tensors are numpy object arrays of Z3 terms. Equal
   over the reals (transcendentals uninterpreted, with instantiated axioms; named constants exact);
   ``exact`` rules also bit-equal in IEEE fp32 (RNE, numpy's NaN and signed-zero conventions).
   numpy's references are tried first on random inputs (special values included), so most
   refutations come with inputs numpy itself tells apart; Z3 counterexamples are re-run with numpy
   and marked confirmed or not. ``approx`` rules never pass unless provably equal.
3. **Aliasing** (:mod:`.alias`): strided views over Z3 integers, for the memory planner.

The verdict's reason states the coverage of the value check (which cases, which bound).
"""

from satura.engine.verify.api import (
    Verdict,
    format_counterexample,
    verdicts_json,
    verify_command,
    verify_file,
    verify_rule,
    verify_rules,
)

__all__ = [
    "Verdict",
    "format_counterexample",
    "verdicts_json",
    "verify_command",
    "verify_file",
    "verify_rule",
    "verify_rules",
]
