"""Row kernels: softmax, log_softmax, layer_norm and rms_norm over the trailing ``n`` elements of
each row.

Each row is read in a few passes (statistics, then the normalized write). The loops are written as
scalar code with fast-math flags on the reductions, so LLVM's loop vectorizer turns them into
``<L x float>`` loops with vector accumulators. Rows are split between parts (cores).
"""

from __future__ import annotations

from collections.abc import Callable

from satura.targets.elementwise import Expr, apply_expr
from satura.targets.irmath import Emitter, fconst, vec_type
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper

FAST = "fast"


def row_kernel(
    name: str,
    kind: str,
    rows: int,
    n: int,
    out: Operand,
    x: Operand,
    scale: Operand | None = None,
    bias: Operand | None = None,
    epsilon: float = 1e-5,
    post: Expr | None = None,
    lanes: int = 8,
    logit_scale: float = 1.0,
) -> str:
    """LLVM IR of ``kind`` ('softmax', 'log_softmax', 'layer_norm', 'rms_norm') over ``rows``
    rows of ``n``.

    ``post``: an elementwise expression of ``("in", 0)`` applied to each result before its store
    (a fused activation). ``logit_scale`` (> 0): softmax of ``x · logit_scale``.
    """
    L = [body_header(name, 4), "entry:"]
    loops = Loops(L)
    for v in ("r", "j1", "j2", "j3", f"nw{lanes * 4}", "nw1"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    for v in ("acc1", "acc2"):
        L.append(f"  %{v}.a = alloca float, align 4")
    L.append(f"  %vacc.a = alloca {vec_type(lanes * 4)}, align 64")
    for t in ("e", "s"):
        for w in (lanes * 4, 1):
            L.append(f"  %{t}w{w}.a = alloca i64, align 8")
    share(L, rows, 1, "%r0", "%r1")
    loops.open("r", "%r0", "%r1", 1)
    L += [
        f"  %rb = mul i64 %r, {n}",
        "  %xr = getelementptr float, ptr %a1, i64 %rb",
        "  %or = getelementptr float, ptr %a0, i64 %rb",
    ]
    em = Emitter(L, 1)
    fast = Emitter(L, 1, fast=True)

    def load(ptr: str, idx: str, tag: str) -> str:
        L.extend(
            [
                f"  %{tag}p = getelementptr float, ptr {ptr}, i64 {idx}",
                f"  %{tag} = load float, ptr %{tag}p, align 4",
            ]
        )
        return f"%{tag}"

    def reduce_loop(var: str, acc: str, init: str, step: object) -> str:
        L.append(f"  store float {init}, ptr %{acc}.a")
        loops.open(var, "0", str(n), 1)
        L.append(f"  %{acc}.{var} = load float, ptr %{acc}.a")
        new = step(load("%xr", f"%{var}", f"x{var}"), f"%{acc}.{var}")  # type: ignore[operator]
        L.append(f"  store float {new}, ptr %{acc}.a")
        loops.close(var, 1)
        L.append(f"  %{acc}.{var}f = load float, ptr %{acc}.a")
        return f"%{acc}.{var}f"

    def sq(v: str) -> str:
        # fmul + fadd (not llvm.fma): the vectorizer only recognizes fadd reductions.
        return fast.mul(v, v)

    inv_n = fconst(1.0 / n)
    wide = lanes * 4
    nv = n // wide * wide if n >= wide else 0

    def splat(scalar: str, tag: str) -> str:
        vty = vec_type(wide)
        L.extend(
            [
                f"  %{tag}i = insertelement {vty} poison, float {scalar}, i64 0",
                f"  %{tag} = shufflevector {vty} %{tag}i, {vty} poison, "
                f"<{wide} x i32> zeroinitializer",
            ]
        )
        return f"%{tag}"

    def write_pass(
        tag: str,
        body: Callable[[Emitter, Callable[[str, str], str], str], str],
        scalars: dict[str, str],
        sum_into: str | None = None,
        store: bool = True,
    ) -> None:
        """Loop ``j`` over the row in <4L x float> values, then one float at a time.

        ``sum_into``: a float alloca that also receives the sum of the values computed;
        ``store``: whether they are written to the output row (False: only summed).
        """
        for width, lo, hi in ((wide, "0", str(nv)), (1, str(nv), str(n))):
            if lo == hi:
                continue
            var = f"{tag}w{width}"
            vty = vec_type(width)
            e = Emitter(L, width)
            if sum_into is not None and width > 1:
                L.append(f"  store {vty} zeroinitializer, ptr %vacc.a")
            loops.open(var, lo, hi, width)
            sc = {k: (splat(v, f"{k}{var}") if width > 1 else v) for k, v in scalars.items()}

            def ld(ptr: str, what: str, var: str = var, vty: str = vty) -> str:
                L.extend(
                    [
                        f"  %{what}{var}p = getelementptr float, ptr {ptr}, i64 %{var}",
                        f"  %{what}{var} = load {vty}, ptr %{what}{var}p, align 4",
                    ]
                )
                return f"%{what}{var}"

            v = body(e, ld, sc)  # type: ignore[arg-type]
            if store:
                L.extend(
                    [
                        f"  %st{var}p = getelementptr float, ptr %or, i64 %{var}",
                        f"  store {vty} {v}, ptr %st{var}p, align 4",
                    ]
                )
            if sum_into is not None:
                acc = "%vacc.a" if width > 1 else sum_into
                L.extend(
                    [
                        f"  %sa{var} = load {vty}, ptr {acc}",
                        f"  %sn{var} = fadd {vty} %sa{var}, {v}",
                        f"  store {vty} %sn{var}, ptr {acc}",
                    ]
                )
            loops.close(var, width)
            if sum_into is not None and width > 1:
                L.extend(
                    [
                        f"  %vs{var} = load {vty}, ptr %vacc.a",
                        f"  %vr{var} = call reassoc float @llvm.vector.reduce.fadd.v{width}f32("
                        f"float -0.0, {vty} %vs{var})",
                        f"  %vo{var} = load float, ptr {sum_into}",
                        f"  %vt{var} = fadd float %vo{var}, %vr{var}",
                        f"  store float %vt{var}, ptr {sum_into}",
                    ]
                )

    if kind == "softmax":
        mx = reduce_loop("j1", "acc1", fconst(float("-inf")), lambda v, a: fast.max(a, v))
        L += [f"  store float {fconst(0.0)}, ptr %acc2.a", f"  %mx = fadd float {mx}, 0.0"]

        def expo(e: Emitter, ld: Callable[[str, str], str], sc: dict[str, str]) -> str:
            d = e.sub(ld("%xr", "x"), sc["mx"])
            return e.exp(e.mul(d, e.const(logit_scale)) if logit_scale != 1.0 else d)

        write_pass("e", expo, {"mx": "%mx"}, sum_into="%acc2.a")
        L += ["  %sum = load float, ptr %acc2.a", f"  %inv = fdiv float {fconst(1.0)}, %sum"]
        write_pass("s", lambda e, ld, sc: e.mul(ld("%or", "o"), sc["inv"]), {"inv": "%inv"})
    elif kind == "log_softmax":
        # (x - max) - log(sum(exp(x - max))), the reference's order; the exps are only summed.
        mx = reduce_loop("j1", "acc1", fconst(float("-inf")), lambda v, a: fast.max(a, v))
        L += [f"  store float {fconst(0.0)}, ptr %acc2.a", f"  %mx = fadd float {mx}, 0.0"]
        write_pass(
            "e",
            lambda e, ld, sc: e.exp(e.sub(ld("%xr", "x"), sc["mx"])),
            {"mx": "%mx"},
            sum_into="%acc2.a",
            store=False,
        )
        L.append("  %sum = load float, ptr %acc2.a")
        lse = em.log("%sum")
        write_pass(
            "s",
            lambda e, ld, sc: e.sub(e.sub(ld("%xr", "x"), sc["mx"]), sc["lse"]),
            {"mx": "%mx", "lse": lse},
        )
    else:
        if kind == "layer_norm":
            s = reduce_loop("j1", "acc1", fconst(0.0), lambda v, a: fast.add(a, v))
            mean = em.mul(s, inv_n)
            ss = reduce_loop(
                "j2", "acc2", fconst(0.0), lambda v, a: fast.add(a, sq(fast.sub(v, mean)))
            )
        else:
            mean = fconst(0.0)
            ss = reduce_loop("j2", "acc2", fconst(0.0), lambda v, a: fast.add(a, sq(v)))
        var = em.fma(ss, inv_n, fconst(epsilon))
        rstd = em.div(fconst(1.0), em.call("sqrt", var))
        L.append(f"  %mean = fadd float {mean}, {fconst(0.0)}")

        def norm(e: Emitter, ld: Callable[[str, str], str], sc: dict[str, str]) -> str:
            v = e.mul(e.sub(ld("%xr", "x"), sc["mean"]), sc["rstd"])
            if scale is not None:
                v = e.mul(v, ld("%a2", "sc"))
            if bias is not None:
                v = e.add(v, ld("%a3", "bi"))
            return apply_expr(post, e, [v]) if post is not None else v

        write_pass("n", norm, {"mean": "%mean", "rstd": rstd})
    loops.close("r", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [out, x, scale, bias]) + "\n" + "\n".join(L)
