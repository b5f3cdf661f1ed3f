"""The op registry (DESIGN §3). Importing this package registers every op.

Families live in their own modules; each op is declared once with :class:`OpInfo`.
"""

from satura.engine.ops import (  # noqa: F401  (importing registers the ops)
    elementwise,
    fused,
    linalg,
    nn,
    reduce,
    rnn,
    shape,
)
from satura.engine.ops.registry import (
    OPS,
    REQUIRED,
    AttrSpec,
    OpInfo,
    Work,
    elementwise_work,
    get_op,
    infer_types,
    ops_with_trait,
    register,
    run_reference,
    same_dtype,
)

__all__ = [
    "OPS",
    "REQUIRED",
    "AttrSpec",
    "OpInfo",
    "Work",
    "elementwise_work",
    "get_op",
    "infer_types",
    "ops_with_trait",
    "register",
    "run_reference",
    "same_dtype",
]
