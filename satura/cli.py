"""The ``satura`` command line (DESIGN §8).

Errors print on one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from satura.engine.errors import InputError, SaturaError


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: nothing is ever written half."""
    _write_all_atomic([(path, data)])


def _write_all_atomic(files: Sequence[tuple[str, bytes]]) -> None:
    """Write every file through a temporary beside it, renaming only once all are written: a
    failure leaves no file half written and none of the new ones in place."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            target = Path(path)
            fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
            temps.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, target in temps:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def _limits(args: argparse.Namespace) -> Any:
    from satura.engine.saturate import Limits

    return Limits(iterations=args.iterations, nodes=args.nodes, seconds=args.seconds)


def cmd_optimize(args: argparse.Namespace) -> int:
    import satura

    g = satura.load(args.model)
    r = satura.optimize(
        g, target=args.target, rules=args.rules or None, fp=args.fp, limits=_limits(args)
    )
    print(r.report.summary())
    print(f"ops before: {_fmt_counts(g.op_counts())}")
    print(f"ops after:  {_fmt_counts(r.graph.op_counts())}")
    if args.out:
        from satura.engine.onnx_export import save_onnx

        save_onnx(r.graph, args.out)
        print(f"wrote {args.out}")
    if args.report:
        _write_atomic(args.report, json.dumps(r.report.to_dict(), indent=2, default=str).encode())
        print(f"wrote {args.report}")
    return 0


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "(none)"


def _load_inputs(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read inputs as .npz ({e})") from None


def cmd_run(args: argparse.Namespace) -> int:
    import satura

    g = satura.load(args.model)
    if not args.no_optimize:
        g = satura.optimize(g, target=args.target).graph
    exe = satura.compile(g, target=args.target)
    outputs = exe(**_load_inputs(args.inputs))
    if args.out:
        import io

        buf = io.BytesIO()
        np.savez(buf, **outputs)
        _write_atomic(args.out, buf.getvalue())
        print(
            f"wrote {args.out}: "
            + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in outputs.items())
        )
    else:
        for k, v in outputs.items():
            print(f"{k}: {v.dtype}{list(v.shape)}\n{v}")
    return 0


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME=SIZE, e.g. batch=1")
    return name, int(value)


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a model for a CPU target into an ELF object (and assembly) without running it."""
    import satura
    from satura.targets.runtime import emit_cross

    g = satura.load(args.model)
    if not args.no_optimize:
        g = satura.optimize(g, target="cpu").graph  # the CPU cost model serves every CPU ISA
    mod = emit_cross(g, args.target, threads=args.threads, dims=dict(args.dim or []))
    files = [(args.out, mod.object)]
    if args.asm:
        files.append((args.asm, mod.assembly.encode()))
    _write_all_atomic(files)
    print(
        f"wrote {args.out}: {mod.target.triple} ({mod.target.cpu}), {len(mod.kernels)} kernels "
        f"({', '.join(mod.kernels)}), arena {mod.arena_bytes} bytes"
    )
    if args.asm:
        print(f"wrote {args.asm}")
    if mod.fallback_nodes:
        print(
            f"note: {len(mod.fallback_nodes)} nodes have no kernel and are not in the object: "
            + ", ".join(mod.fallback_nodes)
        )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from satura.extract.cli import extract_command

    extract_command(args.egraph, args.out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from satura.engine.saturate import default_rule_files
    from satura.engine.verify.api import DEFAULT_CACHE as DEFAULT_VERIFY_CACHE
    from satura.engine.verify.api import VALUE_CASE_BUDGET, verify_command

    paths = args.rules or [str(p) for p in default_rule_files() if p.suffix == ".rules"]
    cases = VALUE_CASE_BUDGET if args.cases is None else args.cases or None  # 0: no limit
    return verify_command(
        paths,
        bound=args.bound,
        timeout_s=args.timeout,
        cache_dir=None if args.no_cache else DEFAULT_VERIFY_CACHE,
        as_json=args.json,
        case_budget=cases,
        jobs=args.jobs or len(os.sched_getaffinity(0)),
    )


def cmd_show(args: argparse.Namespace) -> int:
    import satura
    from satura.engine.show import graphs_to_svg

    g = satura.load(args.model)
    r = satura.optimize(g, target=args.target)
    _write_atomic(args.out, graphs_to_svg([("before", g), ("after", r.graph)]).encode())
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Optimize and run the shipped example model; print what changed."""
    import satura
    from satura.engine.interpret import run_graph

    model = Path(__file__).resolve().parent.parent / "examples" / "mlp_small.onnx"
    g = satura.load(model)
    print(f"model: {model.name}  ({len(g.nodes)} nodes: {_fmt_counts(g.op_counts())})")
    r = satura.optimize(g, target="cpu")
    print(r.report.summary())
    print(f"optimized: {len(r.graph.nodes)} nodes: {_fmt_counts(r.graph.op_counts())}")
    rng = np.random.default_rng(0)
    inputs = {}
    for v in g.inputs:
        shape = [d if isinstance(d, int) else 4 for d in v.type.shape]
        inputs[v.name] = rng.standard_normal(shape).astype(v.type.dtype)
    ref = run_graph(g, inputs)
    exe = satura.compile(r.graph, target="cpu")
    out = exe(**inputs)
    for k in ref:
        err = float(np.max(np.abs(out[k] - ref[k])) / max(float(np.max(np.abs(ref[k]))), 1e-30))
        print(
            f"output {k}: {out[k].dtype}{list(out[k].shape)}, max relative difference to the "
            f"unoptimized model: {err:.2e}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="satura", description="Equality-saturation compiler for ONNX models."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def saturation_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--iterations", type=int, default=12, help="saturation iteration limit")
        s.add_argument("--nodes", type=int, default=8_000, help="e-node limit")
        s.add_argument("--seconds", type=float, default=30.0, help="saturation time limit")

    s = sub.add_parser("optimize", help="saturate and extract the cheapest program")
    s.add_argument("model")
    s.add_argument("--rules", nargs="+", metavar="FILE", help="rule files (default: shipped)")
    s.add_argument("--target", default="cpu", help="cpu, or a hardware profile (h100, ...)")
    s.add_argument("--fp", default="real", choices=["strict", "real", "fast"])
    s.add_argument("--out", help="write the optimized model as ONNX")
    s.add_argument("--report", help="write the saturation report as JSON")
    saturation_args(s)
    s.set_defaults(fn=cmd_optimize)

    s = sub.add_parser("run", help="run a model on inputs from an .npz file")
    s.add_argument("model")
    s.add_argument("--inputs", required=True)
    s.add_argument("--out")
    s.add_argument("--target", default="cpu", choices=["cpu", "reference"])
    s.add_argument("--no-optimize", action="store_true")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "compile",
        help="compile a model to an object file (and assembly) for a "
        "CPU target, without running it",
    )
    s.add_argument("model")
    s.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "aarch64"],
        help="cpu (the host) or aarch64 (Linux, NEON; a cross target)",
    )
    s.add_argument("-o", "--out", required=True, help="the ELF object to write")
    s.add_argument("--asm", help="also write the assembly")
    s.add_argument(
        "--dim",
        type=_dim,
        action="append",
        metavar="NAME=SIZE",
        help="bind a symbolic input dimension (repeatable); shapes must be static",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="size scratch for this many cores (parts = threads x 4)",
    )
    s.add_argument("--no-optimize", action="store_true")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("extract", help="extract from a serialized e-graph (egraph-serialize JSON)")
    s.add_argument("egraph")
    s.add_argument("--out", help='write {"choices": {eclass: node}}')
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("verify", help="prove rules with Z3 (exit 1 when one is not proved)")
    s.add_argument("rules", nargs="*", help="rule files (default: every shipped one)")
    s.add_argument("--bound", type=int, default=3, help="largest dimension of the value check")
    s.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds per rule, a safety net: a rule past it is unknown, never proved",
    )
    s.add_argument(
        "--cases",
        type=int,
        metavar="N",
        help="most concrete shape cases in a rule's value check, whole ranks, "
        "smallest first (default 1000; 0: no limit)",
    )
    s.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")
    s.add_argument("--json", action="store_true", help="verdicts as JSON on stdout")
    s.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="processes proving rules (default: one per core this process may use)",
    )
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("show", help="an SVG of the graph before and after optimization")
    s.add_argument("model")
    s.add_argument("--out", required=True)
    s.add_argument("--target", default="cpu")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("demo", help="optimize and run the shipped example")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except SaturaError as e:
        if args.debug:
            raise
        print(
            f"satura: error: {e}".splitlines()[0]
            if "\n" not in str(e)
            else f"satura: error: {_one_line(str(e))}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("satura: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `satura verify | head`: the reader left; nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python flushes stdout at exit)
        return 0


def _one_line(msg: str) -> str:
    first, *rest = msg.splitlines()
    return first + (f"  [{rest[0].strip()}]" if rest else "")


if __name__ == "__main__":
    sys.exit(main())
