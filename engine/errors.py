"""One exception base for satura, one subclass per stage.

Messages name the thing, the place and (where there is one) the fix. The CLI prints ``str(err)`` on
one line and exits 1; tracebacks only with ``--debug``.
"""

from __future__ import annotations


class SaturaError(Exception):
    """Base of every error satura raises on bad input."""


class ModelError(SaturaError):
    """A model could not be loaded: malformed ONNX, unsupported op, bad external data."""


class UnsupportedOpError(ModelError):
    """An ONNX op satura has no entry for. Names the op, the node and the opset."""


class ShapeError(SaturaError):
    """Shapes or dtypes that do not fit an op's rules."""


class RuleError(SaturaError):
    """A rule file that does not parse or type-check. Carries ``file:line:col``."""

    def __init__(
        self, message: str, file: str = "<rules>", line: int = 0, col: int = 0, text: str = ""
    ) -> None:
        self.file, self.line, self.col, self.text = file, line, col, text
        where = f"{file}:{line}:{col}: " if line else f"{file}: "
        shown = f"\n    {text.strip()}" if text.strip() else ""
        super().__init__(f"{where}{message}{shown}")


class SaturationError(SaturaError):
    """The e-graph engine failed (a rule produced something egglog refused)."""


class ExtractError(SaturaError):
    """An e-graph could not be read or has no complete, acyclic extraction."""


class InputError(SaturaError):
    """Inputs given to a compiled model or to ``satura run`` that do not match the model."""


class CodegenError(SaturaError):
    """Lowering or LLVM code generation failed."""


class VerifyError(SaturaError):
    """The verifier could not be set up for a rule (not a refutation: those are verdicts)."""
