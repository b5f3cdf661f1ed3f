"""Write every example model as ``DIR/<name>.onnx``: ``python -m examples.build --out DIR``.

Each file is written to a temporary name in ``DIR`` and renamed into place, so a reader never
sees a half-written model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from examples.models import EXAMPLES


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Check ``model`` with ``onnx.checker`` (full check) and write it to ``path`` atomically."""
    path = Path(path)
    onnx.checker.check_model(model, full_check=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model file is for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def build_all(out: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[Path]:
    """Build ``names`` (default: all of ``EXAMPLES``) into directory ``out``; returns the paths.

    Raises ValueError for an unknown name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(EXAMPLES) if names is None else list(names)
    unknown = [n for n in chosen if n not in EXAMPLES]
    if unknown:
        raise ValueError(f"examples.build: unknown example(s) {unknown}; known: {sorted(EXAMPLES)}")
    return [save_model(EXAMPLES[n](), out / f"{n}.onnx") for n in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``--out DIR`` and optional example names."""
    parser = argparse.ArgumentParser(prog="python -m examples.build", description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write <name>.onnx into")
    parser.add_argument(
        "names", nargs="*", help=f"examples to build (default: all of {', '.join(EXAMPLES)})"
    )
    args = parser.parse_args(argv)
    try:
        paths = build_all(args.out, args.names or None)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"{p}  {p.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
