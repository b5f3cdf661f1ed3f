"""An LLVM IR text emitter and vectorizable fp32 maths (exp, tanh, erf, GELU, sigmoid) on it.

Every maths function is straight-line code (FMA polynomials, bit tricks, ``select``), never a libm
call, so it runs on scalars or on ``<L x float>`` vectors alike and lets the loop vectorizer work.
``Emitter`` works on one LLVM type at a time (``float`` or ``<8 x float>``): constants are splat.
"""

from __future__ import annotations

import itertools
import math
import struct

from satura.engine.errors import CodegenError


def fconst(c: float) -> str:
    """An fp32 constant in LLVM's exact hexadecimal double notation."""
    f32 = struct.unpack("<f", struct.pack("<f", float(c)))[0]
    if math.isinf(f32):
        return "0x7FF0000000000000" if f32 > 0 else "0xFFF0000000000000"
    return f"0x{struct.unpack('<Q', struct.pack('<d', f32))[0]:016X}"


def vec_type(lanes: int) -> str:
    return "float" if lanes == 1 else f"<{lanes} x float>"


class Emitter:
    """Appends SSA instructions of one type to ``lines``; each method returns the result's name."""

    _ids = itertools.count()

    def __init__(self, lines: list[str], lanes: int = 1, fast: bool = False) -> None:
        self.lines, self.lanes, self.ty = lines, lanes, vec_type(lanes)
        self.ity = "i32" if lanes == 1 else f"<{lanes} x i32>"
        self.fm = " reassoc nsz arcp contract afn" if fast else ""
        self.sfx = "f32" if lanes == 1 else f"v{lanes}f32"

    @classmethod
    def reset_names(cls) -> None:
        cls._ids = itertools.count()

    def tmp(self) -> str:
        return f"%e{next(self._ids)}"

    def const(self, c: float) -> str:
        if self.lanes == 1:
            return fconst(c)
        return "<" + ", ".join([f"float {fconst(c)}"] * self.lanes) + ">"

    def iconst(self, c: int) -> str:
        return str(c) if self.lanes == 1 else "<" + ", ".join([f"i32 {c}"] * self.lanes) + ">"

    def op(self, opcode: str, a: str, b: str) -> str:
        r = self.tmp()
        self.lines.append(f"  {r} = {opcode}{self.fm} {self.ty} {a}, {b}")
        return r

    def add(self, a: str, b: str) -> str:
        return self.op("fadd", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("fsub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("fmul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.op("fdiv", a, b)

    def call(self, intrinsic: str, *args: str) -> str:
        r = self.tmp()
        params = ", ".join(f"{self.ty} {a}" for a in args)
        self.lines.append(f"  {r} = call{self.fm} {self.ty} @llvm.{intrinsic}.{self.sfx}({params})")
        return r

    def fma(self, a: str, b: str, c: str) -> str:
        return self.call("fma", a, b, c)

    def neg(self, a: str) -> str:
        r = self.tmp()
        self.lines.append(f"  {r} = fneg {self.ty} {a}")
        return r

    def max(self, a: str, b: str) -> str:
        return self.call("maxnum", a, b)

    def min(self, a: str, b: str) -> str:
        return self.call("minnum", a, b)

    def select_lt(self, a: str, b: str, if_lt: str, otherwise: str) -> str:
        """``a < b ? if_lt : otherwise``."""
        c, r = self.tmp(), self.tmp()
        cty = "i1" if self.lanes == 1 else f"<{self.lanes} x i1>"
        self.lines.append(f"  {c} = fcmp olt {self.ty} {a}, {b}")
        self.lines.append(f"  {r} = select {cty} {c}, {self.ty} {if_lt}, {self.ty} {otherwise}")
        return r

    def poly(self, x: str, coeffs: list[float]) -> str:
        """Horner's rule, highest degree first."""
        acc = self.const(coeffs[0])
        for c in coeffs[1:]:
            acc = self.fma(acc, x, self.const(c))
        return acc

    # -- maths ------------------------------------------------------------------------------------
    def exp(self, x: str) -> str:
        """e**x: Cody-Waite range reduction, degree-6 polynomial, 2**n by exponent bits."""
        x = self.min(self.max(x, self.const(-87.33654)), self.const(88.37626))
        n = self.call("rint", self.mul(x, self.const(1.4426950408889634)))
        r = self.fma(n, self.const(-0.693359375), x)
        r = self.fma(n, self.const(2.12194440e-4), r)
        p = self.poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                          1.6666665459e-1, 5.0000001201e-1])
        y = self.add(self.fma(self.mul(p, r), r, r), self.const(1.0))
        ni, sh, bits, scale = self.tmp(), self.tmp(), self.tmp(), self.tmp()
        self.lines += [
            f"  {ni} = fptosi {self.ty} {n} to {self.ity}",
            f"  {sh} = add {self.ity} {ni}, {self.iconst(127)}",
            f"  {bits} = shl {self.ity} {sh}, {self.iconst(23)}",
            f"  {scale} = bitcast {self.ity} {bits} to {self.ty}",
        ]
        return self.mul(y, scale)

    def tanh(self, x: str) -> str:
        """Odd polynomial below |x| < 0.625, 1 - 2/(e**2|x| + 1) above, sign restored."""
        ax = self.call("fabs", x)
        z = self.mul(x, x)
        small = self.fma(self.mul(x, z), self.poly(z, [
            -5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
            -3.33332819422e-1]), x)
        e = self.exp(self.mul(ax, self.const(2.0)))
        big = self.sub(self.const(1.0), self.div(self.const(2.0), self.add(e, self.const(1.0))))
        big = self.call("copysign", big, x)
        return self.select_lt(ax, self.const(0.625), small, big)

    # erf(x) = x·P(x²)/Q(x²) on [-4, 4] (rational minimax, absolute error ~3e-7), ±1 beyond.
    _ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
    _ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
              -7.37332916720468e-03, -1.42647390514189e-02)

    def erf_scaled(self, x: str, s: float = 1.0, k: float = 1.0) -> str:
        """k·erf(s·x), with s and k folded into the polynomials' coefficients (no extra mul)."""
        xc = self.min(self.max(x, self.const(-4.0 / s)), self.const(4.0 / s))
        x2 = self.mul(xc, xc)
        hp, hq = len(self._ERF_P) - 1, len(self._ERF_Q) - 1
        p = self.poly(x2, [c * s ** (2 * (hp - i) + 1) * k for i, c in enumerate(self._ERF_P)])
        q = self.poly(x2, [c * s ** (2 * (hq - i)) for i, c in enumerate(self._ERF_Q)])
        return self.div(self.mul(xc, p), q)

    def erf(self, x: str) -> str:
        """erf: odd/even rational minimax on [-4, 4] (absolute error ~3e-7)."""
        return self.erf_scaled(x)

    def gelu(self, x: str) -> str:
        """x·(½ + ½erf(x/√2)), the form onnxruntime and PyTorch evaluate: one rational erf with
        the 1/√2 and ½ folded in, no exp (~2.5x cheaper than an erfc-based Φ). Absolute error
        below 1e-6 everywhere (erf's ~3e-7 times |x|/2); relative accuracy is lost only in the
        negative tail, where |gelu(x)| < 1e-6, and Φ is kept >= 0 there so the sign is right."""
        h = self.erf_scaled(x, 0.7071067811865476, 0.5)
        return self.mul(x, self.max(self.add(h, self.const(0.5)), self.const(0.0)))

    def gelu_tanh(self, x: str) -> str:
        """½x(1 + tanh(u)) with u = √(2/π)(x + 0.044715x³), evaluated as x / (1 + e^(-2u)) (the
        same function: ½(1 + tanh u) = sigmoid(2u)): one exp and one division instead of tanh's
        two branches. The exp's clamp keeps both tails exact (x for large x, -0 for very
        negative x)."""
        c = -2.0 * 0.7978845608028654
        poly = self.fma(self.mul(x, x), self.const(0.044715 * c), self.const(c))
        e = self.exp(self.mul(poly, x))
        return self.div(x, self.add(e, self.const(1.0)))

    def sigmoid(self, x: str) -> str:
        e = self.exp(self.neg(x))
        return self.div(self.const(1.0), self.add(self.const(1.0), e))

    def unary(self, name: str, x: str, alpha: float = 0.01) -> str:
        """Apply the satura unary op or activation ``name``. Raises CodegenError if unknown."""
        if name in ("identity", "none"):
            return x
        simple = {"neg": self.neg, "exp": self.exp, "tanh": self.tanh, "erf": self.erf,
                  "gelu": self.gelu, "gelu_tanh": self.gelu_tanh, "sigmoid": self.sigmoid}
        if name in simple:
            return simple[name](x)
        if name == "abs":
            return self.call("fabs", x)
        if name == "sqrt":
            return self.call("sqrt", x)
        if name in ("floor", "ceil"):
            return self.call(name, x)
        if name == "reciprocal":
            return self.div(self.const(1.0), x)
        if name == "relu":
            return self.max(x, self.const(0.0))
        if name == "silu":
            return self.mul(x, self.sigmoid(x))
        if name == "leaky_relu":
            return self.select_lt(x, self.const(0.0), self.mul(x, self.const(alpha)), x)
        raise CodegenError(f"no LLVM lowering for elementwise op '{name}'")

    def binary(self, name: str, a: str, b: str) -> str:
        """Apply the satura binary op ``name``. Raises CodegenError if unknown."""
        table = {"add": self.add, "sub": self.sub, "mul": self.mul, "div": self.div,
                 "max": self.max, "min": self.min}
        if name not in table:
            raise CodegenError(f"no LLVM lowering for elementwise op '{name}'")
        return table[name](a, b)


UNARY_OPS = frozenset({"identity", "neg", "exp", "tanh", "erf", "gelu", "sigmoid", "abs", "sqrt",
                       "floor", "ceil", "reciprocal", "relu", "silu", "leaky_relu"})
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "max", "min"})
ACTIVATIONS = frozenset({"none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"})

INTRINSICS = [
    f"declare {t} @llvm.{name}.{s}({', '.join([t] * n)})"
    for t, s in (("float", "f32"), ("<8 x float>", "v8f32"), ("<16 x float>", "v16f32"),
                 ("<4 x float>", "v4f32"), ("<32 x float>", "v32f32"), ("<64 x float>", "v64f32"))
    for name, n in (("fma", 3), ("maxnum", 2), ("minnum", 2), ("rint", 1), ("fabs", 1),
                    ("sqrt", 1), ("floor", 1), ("ceil", 1), ("copysign", 2))
]


# dtype -> (LLVM type, kind): "f" float, "s" signed int, "u" unsigned int, "b" bool (a 0/1 byte).
# No float16: LLVM lowers some of its conversions to runtime-library calls the JIT does not link.
CAST_TYPES = {"float32": ("float", "f"), "float64": ("double", "f"),
              "int64": ("i64", "s"), "int32": ("i32", "s"), "int16": ("i16", "s"),
              "int8": ("i8", "s"), "uint8": ("i8", "u"), "uint16": ("i16", "u"),
              "uint32": ("i32", "u"), "uint64": ("i64", "u"), "bool": ("i8", "b")}
_FLOAT_BITS = {"float": 32, "double": 64}


def _bits(ty: str) -> int:
    return _FLOAT_BITS.get(ty) or int(ty[1:])


def convert(lines: list[str], v: str, src: str, dst: str) -> str:
    """Emit ``v`` (of numpy dtype ``src``) converted to ``dst`` as numpy's astype does; returns
    the result's name. Float to int saturates (out of range is undefined in ONNX and numpy; the
    saturating form keeps LLVM from treating it as poison); NaN becomes 0."""
    (st, sk), (dt, dk) = CAST_TYPES[src], CAST_TYPES[dst]
    if dk == "b":
        test = f"fcmp une {st} {v}, 0.0" if sk == "f" else f"icmp ne {st} {v}, 0"
        lines += [f"  %cb = {test}", "  %cv = zext i1 %cb to i8"]
        return "%cv"
    if sk == "f" and dk == "f":
        op = "fpext" if _bits(dt) > _bits(st) else "fptrunc" if _bits(dt) < _bits(st) else None
    elif sk == "f":
        sat = "fptosi" if dk == "s" else "fptoui"
        lines.append(f"  %cv = call {dt} @llvm.{sat}.sat.{dt}.{_ftype(st)}({st} {v})")
        return "%cv"
    elif dk == "f":
        op = "sitofp" if sk == "s" else "uitofp"
    else:
        op = ("sext" if sk == "s" else "zext") if _bits(dt) > _bits(st) else \
            "trunc" if _bits(dt) < _bits(st) else None
    if op is None:
        return v
    lines.append(f"  %cv = {op} {st} {v} to {dt}")
    return "%cv"


def _ftype(ty: str) -> str:
    return {"float": "f32", "double": "f64"}[ty]


def cast_declares() -> str:
    """The saturating float-to-int intrinsics ``convert`` may call."""
    ints = sorted({t for t, k in CAST_TYPES.values() if k != "f"})
    return "\n".join(f"declare {i} @llvm.{op}.sat.{i}.{_ftype(f)}({f})"
                     for op in ("fptosi", "fptoui") for i in ints for f in _FLOAT_BITS)
