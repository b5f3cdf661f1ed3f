"""Z3 verification of rewrite rules (DESIGN §7): shapes for all sizes, values for bounded sizes
(reals, IEEE fp32), and aliasing of strided views for the memory planner."""

from satura.engine.verify.api import (
    Verdict,
    format_counterexample,
    verdicts_json,
    verify_command,
    verify_file,
    verify_rule,
    verify_rules,
)

__all__ = ["Verdict", "format_counterexample", "verdicts_json", "verify_command", "verify_file",
           "verify_rule", "verify_rules"]
