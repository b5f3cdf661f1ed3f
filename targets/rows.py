"""Row kernels: softmax, layer_norm and rms_norm over the trailing ``n`` elements of each row.

Each row is read in a few passes (statistics, then the normalized write). The loops are written as
scalar code with fast-math flags on the reductions, so LLVM's loop vectorizer turns them into
``<L x float>`` loops with vector accumulators. Rows are split between parts (cores).
"""

from __future__ import annotations

from satura.targets.irmath import Emitter, fconst
from satura.targets.kernel import Loops, Operand, body_header, share, wrapper

FAST = "fast"


def row_kernel(name: str, kind: str, rows: int, n: int, out: Operand, x: Operand,
               scale: Operand | None = None, bias: Operand | None = None,
               epsilon: float = 1e-5) -> str:
    """LLVM IR of ``kind`` ('softmax', 'layer_norm', 'rms_norm') over ``rows`` rows of ``n``."""
    L = [body_header(name, 4), "entry:"]
    loops = Loops(L)
    for v in ("r", "j1", "j2", "j3"):
        L.append(f"  %{v}.a = alloca i64, align 8")
    for v in ("acc1", "acc2"):
        L.append(f"  %{v}.a = alloca float, align 4")
    share(L, rows, 1, "%r0", "%r1")
    loops.open("r", "%r0", "%r1", 1)
    L += [f"  %rb = mul i64 %r, {n}", "  %xr = getelementptr float, ptr %a1, i64 %rb",
          "  %or = getelementptr float, ptr %a0, i64 %rb"]
    em = Emitter(L, 1)
    fast = Emitter(L, 1, fast=True)

    def load(ptr: str, idx: str, tag: str) -> str:
        L.extend([f"  %{tag}p = getelementptr float, ptr {ptr}, i64 {idx}",
                  f"  %{tag} = load float, ptr %{tag}p, align 4"])
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
    if kind == "softmax":
        mx = reduce_loop("j1", "acc1", fconst(float("-inf")), lambda v, a: fast.max(a, v))
        L.append(f"  store float {fconst(0.0)}, ptr %acc2.a")
        loops.open("j2", "0", str(n), 1)
        L.append("  %acc2.j2 = load float, ptr %acc2.a")
        e = em.exp(em.sub(load("%xr", "%j2", "xj2"), mx))
        L += ["  %oj2p = getelementptr float, ptr %or, i64 %j2", f"  store float {e}, ptr %oj2p",
              f"  %s2 = fadd fast float %acc2.j2, {e}", "  store float %s2, ptr %acc2.a"]
        loops.close("j2", 1)
        L += ["  %sum = load float, ptr %acc2.a", f"  %inv = fdiv float {fconst(1.0)}, %sum"]
        loops.open("j3", "0", str(n), 1)
        v = em.mul(load("%or", "%j3", "oj3"), "%inv")
        L.append(f"  store float {v}, ptr %oj3p")
        loops.close("j3", 1)
    else:
        if kind == "layer_norm":
            s = reduce_loop("j1", "acc1", fconst(0.0), lambda v, a: fast.add(a, v))
            mean = em.mul(s, inv_n)
            ss = reduce_loop("j2", "acc2", fconst(0.0),
                             lambda v, a: fast.add(a, sq(fast.sub(v, mean))))
        else:
            mean = fconst(0.0)
            ss = reduce_loop("j2", "acc2", fconst(0.0), lambda v, a: fast.add(a, sq(v)))
        var = em.fma(ss, inv_n, fconst(epsilon))
        rstd = em.div(fconst(1.0), em.call("sqrt", var))
        loops.open("j3", "0", str(n), 1)
        v = em.mul(em.sub(load("%xr", "%j3", "xj3"), mean), rstd)
        if scale is not None:
            v = em.mul(v, load("%a2", "%j3", "sc"))
        if bias is not None:
            v = em.add(v, load("%a3", "%j3", "bi"))
        L += ["  %oj3p = getelementptr float, ptr %or, i64 %j3", f"  store float {v}, ptr %oj3p"]
        loops.close("j3", 1)
    loops.close("r", 1)
    L += ["  ret void", "}"]
    return wrapper(name, [out, x, scale, bias]) + "\n" + "\n".join(L)
