"""An LLVM IR text emitter and vectorizable maths on it: fp32 exp, log, trigonometry, activations,
pow and fmod.

Every maths function is straight-line code (FMA polynomials, bit tricks, ``select``), never a libm
call, so it runs on scalars or on ``<L x float>`` vectors alike and lets the loop vectorizer work.
``Emitter`` works on one LLVM type at a time (``float`` or ``<8 x float>``; ``double`` vectors for
the exact cores of ``pow`` and ``fmod``): constants are splat. Each function's docstring states its
largest error against float64 numpy, measured by ``tests/targets/test_cpu_ewops.py`` over the ranges
named there (ulp: units in the last place of the fp32 result).
"""

from __future__ import annotations

import itertools
import math
import struct
from decimal import Decimal

from satura.engine.errors import CodegenError


def f32(c: float) -> float:
    """``c`` rounded to the nearest fp32 value (as a Python float)."""
    return float(struct.unpack("<f", struct.pack("<f", float(c)))[0])


def fconst(c: float) -> str:
    """An fp32 constant in LLVM's exact hexadecimal double notation."""
    v = f32(c)
    if math.isinf(v):
        return "0x7FF0000000000000" if v > 0 else "0xFFF0000000000000"
    if math.isnan(v):
        return "0x7FF8000000000000"
    return f"0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016X}"


def dconst(c: float) -> str:
    """An fp64 constant in LLVM's hexadecimal notation."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', float(c)))[0]:016X}"


def vec_type(lanes: int, elem: str = "float") -> str:
    return elem if lanes == 1 else f"<{lanes} x {elem}>"


def _split(v: Decimal, parts: int) -> tuple[float, ...]:
    """``v`` as a sum of ``parts`` fp32 values, largest first (Cody-Waite constants)."""
    out = []
    for _ in range(parts):
        f = f32(float(v))
        out.append(f)
        v -= Decimal(f)
    return tuple(out)


_PI_2 = Decimal("1.57079632679489661923132169163975144209858469968755291048747229615390820")
_PIO2_PARTS = _split(_PI_2, 3)  # x - q·π/2 with FMAs: exact first step, ~2^-75 relative tail
_TWO_PI = _split(1 / _PI_2, 2)  # 2/π in two fp32 parts
_LOG_P = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)  # Cephes logf
_SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)  # Cephes sinf on [-π/4, π/4]
_COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)  # Cephes cosf
# Cephes atanf on [-tan(π/8), tan(π/8)] and asinf on [-0.5, 0.5] (z = x², highest first)
_ATAN_P = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)
_ASIN_P = (4.2163199048e-2, 2.4181311049e-2, 4.5470025998e-2, 7.4953002686e-2, 1.6666752422e-1)
_HYP_BIG = 4096.0  # past this asinh and acosh are log(2|x|) to fp32 precision (x² would overflow)
# fdlibm's log: ln(1+f) = 2s + s·R(s²), s = f/(2+f), |R error| < 2^-58.
_DLOG_P = (
    1.479819860511658591e-01,
    1.531383769920937332e-01,
    1.818357216161805012e-01,
    2.222219843214978396e-01,
    2.857142874366239149e-01,
    3.999999999940941908e-01,
    6.666666666666735130e-01,
)
_DEXP_P = tuple(1.0 / math.factorial(k) for k in range(11, -1, -1))  # e^r, |r| ≤ ln2/2: 7e-15
_POW_INT_MAX = 64  # integer exponents up to this take products in fp64, not exp(y·log x)


class Emitter:
    """Appends SSA instructions of one type to ``lines``; each method returns the result's name.

    ``elem`` is ``float`` (the default) or ``double``; integer helpers work on the same-width
    integers (i32 or i64). Constants made by :meth:`const` are remembered, so a maths function
    can specialise on a literal operand (``pow`` by a constant exponent)."""

    _ids = itertools.count()

    def __init__(
        self, lines: list[str], lanes: int = 1, fast: bool = False, elem: str = "float"
    ) -> None:
        if elem not in ("float", "double"):
            raise CodegenError(f"Emitter: element type '{elem}' is not float or double")
        self.lines, self.lanes, self.elem = lines, lanes, elem
        self.ty = vec_type(lanes, elem)
        self.ibits = 32 if elem == "float" else 64
        self.ity = vec_type(lanes, f"i{self.ibits}")
        self.cty = vec_type(lanes, "i1")
        self.fm = " reassoc nsz arcp contract afn" if fast else ""
        scalar = "f32" if elem == "float" else "f64"
        self.sfx = scalar if lanes == 1 else f"v{lanes}{scalar}"
        self.literals: dict[str, float] = {}

    @classmethod
    def reset_names(cls) -> None:
        cls._ids = itertools.count()

    def tmp(self) -> str:
        return f"%e{next(self._ids)}"

    def emit(self, rhs: str) -> str:
        """Append ``%tmp = rhs``; returns ``%tmp``."""
        r = self.tmp()
        self.lines.append(f"  {r} = {rhs}")
        return r

    def splat(self, scalar: str, ty: str) -> str:
        return scalar if self.lanes == 1 else "<" + ", ".join([f"{ty} {scalar}"] * self.lanes) + ">"

    def const(self, c: float) -> str:
        lit = fconst(c) if self.elem == "float" else dconst(c)
        r = self.splat(lit, self.elem)
        self.literals[r] = f32(c) if self.elem == "float" else float(c)
        return r

    def iconst(self, c: int) -> str:
        return self.splat(str(c), f"i{self.ibits}")

    def op(self, opcode: str, a: str, b: str) -> str:
        return self.emit(f"{opcode}{self.fm} {self.ty} {a}, {b}")

    def add(self, a: str, b: str) -> str:
        return self.op("fadd", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("fsub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("fmul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.op("fdiv", a, b)

    def call(self, intrinsic: str, *args: str) -> str:
        params = ", ".join(f"{self.ty} {a}" for a in args)
        return self.emit(f"call{self.fm} {self.ty} @llvm.{intrinsic}.{self.sfx}({params})")

    def fma(self, a: str, b: str, c: str) -> str:
        return self.call("fma", a, b, c)

    def neg(self, a: str) -> str:
        return self.emit(f"fneg {self.ty} {a}")

    def max(self, a: str, b: str) -> str:
        """IEEE maxNum: a NaN operand yields the other one (clamps, reductions)."""
        return self.call("maxnum", a, b)

    def min(self, a: str, b: str) -> str:
        return self.call("minnum", a, b)

    # -- comparisons, selects, integer views ------------------------------------------------------
    def cmp(self, pred: str, a: str, b: str) -> str:
        """``fcmp pred`` (o* predicates are false, u* true, when an operand is NaN)."""
        return self.emit(f"fcmp {pred} {self.ty} {a}, {b}")

    def icmp(self, pred: str, a: str, b: str) -> str:
        return self.emit(f"icmp {pred} {self.ity} {a}, {b}")

    def select(self, c: str, a: str, b: str, ty: str | None = None) -> str:
        """``c ? a : b`` lane by lane (``ty``: the operands' type, default this emitter's)."""
        return self.emit(f"select {self.cty} {c}, {ty or self.ty} {a}, {ty or self.ty} {b}")

    def both(self, c1: str, c2: str) -> str:
        return self.emit(f"and {self.cty} {c1}, {c2}")

    def either(self, c1: str, c2: str) -> str:
        return self.emit(f"or {self.cty} {c1}, {c2}")

    def select_lt(self, a: str, b: str, if_lt: str, otherwise: str) -> str:
        """``a < b ? if_lt : otherwise``."""
        return self.select(self.cmp("olt", a, b), if_lt, otherwise)

    def iop(self, opcode: str, a: str, b: str) -> str:
        """An integer instruction (add, sub, mul, and, or, xor, shl, ashr, lshr) on the
        same-width integers."""
        return self.emit(f"{opcode} {self.ity} {a}, {b}")

    def bits(self, x: str) -> str:
        return self.emit(f"bitcast {self.ty} {x} to {self.ity}")

    def from_bits(self, i: str) -> str:
        return self.emit(f"bitcast {self.ity} {i} to {self.ty}")

    def to_int(self, x: str) -> str:
        """fptosi: the caller keeps ``x`` in range (out of range is poison in LLVM)."""
        return self.emit(f"fptosi {self.ty} {x} to {self.ity}")

    def to_fp(self, i: str) -> str:
        return self.emit(f"sitofp {self.ity} {i} to {self.ty}")

    def wide(self) -> Emitter:
        """An emitter of fp64 values with the same lanes, writing to the same lines."""
        return Emitter(self.lines, self.lanes, elem="double")

    def extend(self, x: str) -> str:
        """fp32 ``x`` as fp64 (exact)."""
        return self.emit(f"fpext {self.ty} {x} to {vec_type(self.lanes, 'double')}")

    def narrow(self, xd: str) -> str:
        """fp64 ``xd`` rounded to fp32 (to nearest; overflow to inf, underflow to subnormals)."""
        return self.emit(f"fptrunc {vec_type(self.lanes, 'double')} {xd} to {self.ty}")

    def clamp(self, x: str, lo: float, hi: float) -> str:
        """x limited to [lo, hi]; NaN stays NaN (two selects: one maxps and one minps on x86,
        as many instructions as maxNum/minNum, which would turn NaN into a bound)."""
        x = self.select_lt(x, self.const(lo), self.const(lo), x)
        return self.select(self.cmp("ogt", x, self.const(hi)), self.const(hi), x)

    def maximum(self, a: str, b: str) -> str:
        """numpy's maximum: NaN if either operand is NaN (maxNum would drop it)."""
        t = self.select(self.cmp("ogt", a, b), a, b)  # b when either is NaN
        return self.select(self.cmp("uno", a, a), a, t)

    def minimum(self, a: str, b: str) -> str:
        """numpy's minimum: NaN if either operand is NaN."""
        t = self.select(self.cmp("olt", a, b), a, b)
        return self.select(self.cmp("uno", a, a), a, t)

    def poly(self, x: str, coeffs: tuple[float, ...] | list[float]) -> str:
        """Horner's rule, highest degree first."""
        acc = self.const(coeffs[0])
        for c in coeffs[1:]:
            acc = self.fma(acc, x, self.const(c))
        return acc

    def scale2(self, n: str) -> str:
        """2**n for an integer-valued float ``n`` in the normal exponent range (bit assembly)."""
        bias, shift = (127, 23) if self.elem == "float" else (1023, 52)
        i = self.iop("add", self.to_int(n), self.iconst(bias))
        return self.from_bits(self.iop("shl", i, self.iconst(shift)))

    # -- exp family -------------------------------------------------------------------------------
    def _exp_reduced(self, x: str) -> tuple[str, str]:
        """Cody-Waite: ``x = n·ln2 + r`` with |r| <= ln2/2 (n integral); returns n and e^r - 1
        by a degree-6 polynomial (no cancellation: r + r²·P(r))."""
        n = self.call("rint", self.mul(x, self.const(1.4426950408889634)))
        r = self.fma(n, self.const(-0.693359375), x)
        r = self.fma(n, self.const(2.12194440e-4), r)
        coeffs = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                  1.6666665459e-1, 5.0000001201e-1]  # fmt: skip
        return n, self.fma(self.mul(self.poly(r, coeffs), r), r, r)

    def exp(self, x: str) -> str:
        """e**x: Cody-Waite range reduction, degree-6 polynomial, 2**n by exponent bits.
        The argument is clamped to [-87.34, 88.38]: below, the result is 1.2e-38 (not a
        subnormal or 0); above, 2.4e38 (not inf). NaN stays NaN (the clamp is two selects, one
        maxps and one minps on x86, like maxNum's), so softmax, sigmoid, ... of NaN are NaN as in
        numpy. Callers that need the other ends exact mask them (see softplus)."""
        x = self.clamp(x, -87.33654, 88.37626)
        n, em1 = self._exp_reduced(x)
        y = self.add(em1, self.const(1.0))
        return self.mul(y, self.scale2(n))

    def exp_op(self, x: str) -> str:
        """The ``exp`` op: :meth:`exp` with numpy's ends. NaN stays NaN; inf above ln(FLT_MAX);
        near both ends of the clamp e^(x ± 20)·e^∓20: below -87.34 that rounds once into the
        subnormals (0 below about -104), above 88.38 it reaches FLT_MAX without overflowing the
        2^n scale. (Inside other functions the clamped :meth:`exp` serves: their results do not
        depend on those ends.)"""
        low = self.cmp("olt", x, self.const(-87.33654))
        high = self.cmp("ogt", x, self.const(88.37626))  # 2^128 would overflow the scale
        shift = self.select(
            low, self.const(20.0), self.select(high, self.const(-20.0), self.const(0.0))
        )
        y = self.exp(self.add(x, shift))
        back = self.select(
            low,
            self.const(2.0611536224385579e-9),
            self.select(high, self.const(485165195.40979028), self.const(1.0)),
        )
        y = self.mul(y, back)
        y = self.select(
            self.cmp("ogt", x, self.const(88.72283935546875)), self.const(float("inf")), y
        )
        return self.select(self.cmp("uno", x, x), x, y)

    def expm1(self, x: str) -> str:
        """e**x - 1 without cancellation near 0: expm1(r)·2^n + (2^n - 1) by one FMA, with
        2^(n-1) and a final doubling so that n = 128 does not overflow the scale. Exact ends:
        -1 below -17.5, inf above ln(FLT_MAX), NaN for NaN; subnormals stay exact. Max error
        1.44 ulp (measured; at x ~ 0.37, where 2·expm1(x - ln2) doubles the polynomial's)."""
        xc = self.min(self.max(x, self.const(-17.5)), self.const(89.0))
        n, em1 = self._exp_reduced(xc)
        half = self.scale2(self.sub(n, self.const(1.0)))  # 2^(n-1)
        y = self.fma(half, em1, self.sub(half, self.const(0.5)))
        y = self.add(y, y)
        y = self.select(self.cmp("oeq", n, self.const(0.0)), em1, y)  # exact for subnormal x
        return self.select(self.cmp("uno", x, x), x, y)

    def tanh(self, x: str) -> str:
        """Odd polynomial below |x| < 0.625, 1 - 2/(e**2|x| + 1) above, sign restored."""
        ax = self.call("fabs", x)
        z = self.mul(x, x)
        small = self.fma(
            self.mul(x, z),
            self.poly(
                z,
                [
                    -5.70498872745e-3,
                    2.06390887954e-2,
                    -5.37397155531e-2,
                    1.33314422036e-1,
                    -3.33332819422e-1,
                ],
            ),
            x,
        )
        e = self.exp(self.mul(ax, self.const(2.0)))
        big = self.sub(self.const(1.0), self.div(self.const(2.0), self.add(e, self.const(1.0))))
        big = self.call("copysign", big, x)
        return self.select_lt(ax, self.const(0.625), small, big)

    # -- logarithms -------------------------------------------------------------------------------
    def _log_reduce(self, x: str) -> tuple[str, str]:
        """(e, f) with x = 2^e·(1 + f), 1 + f in [√½, √2), from the bits (subnormals scaled by
        2^23 first); meaningless for x <= 0, inf and NaN (the callers select those)."""
        tiny = self.cmp("olt", x, self.const(2.0**-126))
        xs = self.select(tiny, self.mul(x, self.const(2.0**23)), x)
        bits = self.bits(xs)
        k = self.iop("ashr", self.iop("sub", bits, self.iconst(0x3F3504F3)), self.iconst(23))
        m = self.from_bits(self.iop("sub", bits, self.iop("shl", k, self.iconst(23))))
        e = self.add(self.to_fp(k), self.select(tiny, self.const(-23.0), self.const(0.0)))
        return e, self.sub(m, self.const(1.0))

    def _log_poly(self, e: str, f: str) -> str:
        """e·ln2 + ln(1 + f): Cephes' logf polynomial, ln2 in two parts."""
        z = self.mul(f, f)
        y = self.mul(self.mul(f, z), self.poly(f, _LOG_P))
        y = self.fma(e, self.const(-2.12194440e-4), y)
        y = self.fma(z, self.const(-0.5), y)
        return self.fma(e, self.const(0.693359375), self.add(f, y))

    def _log_specials(self, x: str, r: str) -> str:
        """log's values at inf (inf), ±0 (-inf), below 0 and NaN (NaN) over ``r``."""
        r = self.select(self.cmp("oeq", x, self.const(math.inf)), x, r)
        r = self.select(self.cmp("oeq", x, self.const(0.0)), self.const(-math.inf), r)
        return self.select(self.cmp("ult", x, self.const(0.0)), self.const(math.nan), r)

    def log(self, x: str) -> str:
        """Natural log: x = 2^e·m with m in [√½, √2) from the bits (subnormals scaled by 2^23
        first), ln(m) by Cephes' logf polynomial, e·ln2 in two parts. log(0) = -inf,
        log(x < 0) = NaN, log(inf) = inf, NaN stays NaN. Max error 0.77 ulp (measured over
        subnormals to FLT_MAX)."""
        return self._log_specials(x, self._log_poly(*self._log_reduce(x)))

    def log1p(self, x: str) -> str:
        """ln(1 + x) with u = 1 + x rounded: where u is in [√½, √2) the polynomial takes x
        itself (exact, so nothing is lost near 0); elsewhere log(u) + (x - (u - 1))/u, the
        quotient restoring what the rounding of u lost. log1p(-1) = -inf, below -1 NaN.
        Max error 1.2 ulp (measured; at x ~ -0.3, just outside the polynomial's own range)."""
        u = self.add(x, self.const(1.0))
        e, f = self._log_reduce(u)
        near = self.cmp("oeq", e, self.const(0.0))
        c = self.div(self.sub(x, self.sub(u, self.const(1.0))), u)
        # u = 0 or inf make c NaN: log(u) alone then.
        c = self.select(self.either(near, self.cmp("uno", c, c)), self.const(0.0), c)
        r = self.add(self._log_poly(e, self.select(near, x, f)), c)
        return self._log_specials(u, r)

    def softplus(self, x: str) -> str:
        """log(1 + e^x) as numpy's logaddexp(0, x) computes it: max(x, 0) + log1p(e^-|x|).
        Where e^-|x| is subnormal (|x| > 80) it is computed as e^(32-|x|)·e^-32, so the
        far negative tail keeps its subnormal values. NaN stays NaN. Max error 1.8 ulp
        (measured; most of it is exp's)."""
        nax = self.neg(self.call("fabs", x))
        far = self.cmp("olt", nax, self.const(-80.0))
        e = self.exp(self.select(far, self.add(nax, self.const(32.0)), nax))
        e = self.select(far, self.mul(e, self.const(math.exp(-32.0))), e)
        return self.add(self.maximum(x, self.const(0.0)), self.log1p(e))

    # -- trigonometry -----------------------------------------------------------------------------
    def _sincos(self, x: str, quadrant_shift: int) -> str:
        """sin(x + shift·π/2): q = rint(x·2/π), r = x - q·π/2 in three FMA steps (the first
        exact), then sin or cos of r by q's parity and a sign flip by its second bit."""
        # q = rint(x·2/π) of the exact product: x·C rounds (|x| > 1e6 it can pick the wrong
        # integer), so the product's lost part (an FMA) and x·(2/π - C) move q by one where due.
        c_hi = self.const(_TWO_PI[0])
        t = self.mul(x, c_hi)
        q = self.call("rint", t)
        frac = self.add(
            self.sub(t, q), self.fma(x, self.const(_TWO_PI[1]), self.fma(x, c_hi, self.neg(t)))
        )
        one = self.const(1.0)
        step = self.select(
            self.cmp("ogt", frac, self.const(0.5)),
            one,
            self.select(self.cmp("olt", frac, self.const(-0.5)), self.neg(one), self.const(0.0)),
        )
        q = self.add(q, step)
        r = x
        for part in _PIO2_PARTS:
            r = self.fma(q, self.const(-part), r)
        # q as an integer; beyond ±2^30 (|x| > 1.6e9) the reduction is meaningless anyway,
        # and the clamp keeps fptosi defined (maxnum also turns NaN into a number here).
        qc = self.min(self.max(q, self.const(-(2.0**30))), self.const(2.0**30))
        qi = self.iop("add", self.to_int(qc), self.iconst(quadrant_shift))
        z = self.mul(r, r)
        s = self.fma(self.mul(r, z), self.poly(z, _SIN_P), r)
        c = self.fma(
            self.mul(z, z), self.poly(z, _COS_P), self.fma(z, self.const(-0.5), self.const(1.0))
        )
        odd = self.icmp("ne", self.iop("and", qi, self.iconst(1)), self.iconst(0))
        v = self.select(odd, c, s)
        sign = self.iop("shl", self.iop("and", qi, self.iconst(2)), self.iconst(30))
        v = self.from_bits(self.iop("xor", self.bits(v), sign))
        # Past |x| ~ 1e8 the reduction fails (q is no longer exact): keep the value in range.
        v = self.min(self.max(v, self.const(-1.0)), self.const(1.0))
        finite = self.cmp("one", self.call("fabs", x), self.const(math.inf))
        return self.select(finite, v, self.const(math.nan))

    def sin(self, x: str) -> str:
        """sin: reduction by π/2 in three FMA parts, Cephes' polynomials on [-π/4, π/4].
        Max error (measured, the fp32 arguments closest to multiples of π/2 included):
        1.6 ulp for |x| ≤ 1e6, 2.4 ulp for |x| ≤ 1e7. Beyond ~1.6e7 (q past 2^23) the
        reduction is not exact (no Payne-Hanek): results are wrong there, but within
        [-1, 1]. sin(±inf) = sin(NaN) = NaN."""
        return self._sincos(x, 0)

    def cos(self, x: str) -> str:
        """cos(x) = sin(x + π/2) by quadrant: the same reduction and error as :meth:`sin`."""
        return self._sincos(x, 1)

    # -- inverse trigonometric and hyperbolic functions -------------------------------------------
    def _with_sign_of(self, v: str, x: str) -> str:
        """|v| with x's sign bit (v >= 0 or NaN here)."""
        return self.call("copysign", v, x)

    def atan(self, x: str) -> str:
        """Cephes atanf: |x| past tan(3π/8) as π/2 - atan(1/|x|), past tan(π/8) as
        π/4 + atan((|x| - 1)/(|x| + 1)), then an odd polynomial; x's sign. ~2e-7 relative;
        atan(±inf) = ±π/2, NaN stays NaN."""
        a = self.call("fabs", x)
        big = self.cmp("ogt", a, self.const(2.414213562373095))
        mid = self.cmp("ogt", a, self.const(0.4142135623730950))
        one = self.const(1.0)
        t = self.select(
            big,
            self.div(self.const(-1.0), a),
            self.select(mid, self.div(self.sub(a, one), self.add(a, one)), a),
        )
        y0 = self.select(
            big, self.const(math.pi / 2), self.select(mid, self.const(math.pi / 4), self.const(0.0))
        )
        z = self.mul(t, t)
        y = self.fma(self.mul(self.mul(self.poly(z, _ATAN_P), z), t), one, t)
        return self._with_sign_of(self.add(y0, y), x)

    def _asin_small(self, t: str) -> str:
        """asin(t) for |t| <= 0.5: Cephes' odd polynomial."""
        z = self.mul(t, t)
        return self.fma(self.mul(self.poly(z, _ASIN_P), z), t, t)

    def asin(self, x: str) -> str:
        """Cephes asinf: |x| <= 0.5 by the polynomial, else π/2 - 2·asin(sqrt((1 - |x|)/2)); x's
        sign. |x| > 1 gives NaN. ~3e-7 relative."""
        a = self.call("fabs", x)
        high = self.cmp("ogt", a, self.const(0.5))
        half = self.const(0.5)
        t = self.select(high, self.call("sqrt", self.mul(half, self.sub(self.const(1.0), a))), a)
        p = self._asin_small(t)
        p = self.select(high, self.fma(p, self.const(-2.0), self.const(math.pi / 2)), p)
        return self._with_sign_of(p, x)

    def acos(self, x: str) -> str:
        """Cephes acosf: 2·asin(sqrt((1 - x)/2)) above 0.5, π - that of -x below -0.5, else
        π/2 - asin(x) (no cancellation near ±1). |x| > 1 gives NaN."""
        a = self.call("fabs", x)
        high = self.cmp("ogt", a, self.const(0.5))
        t = self.select(
            high, self.call("sqrt", self.mul(self.const(0.5), self.sub(self.const(1.0), a))), x
        )
        p = self._asin_small(t)
        two_p = self.add(p, p)
        neg = self.cmp("olt", x, self.const(0.0))
        outer = self.select(neg, self.sub(self.const(math.pi), two_p), two_p)
        return self.select(high, outer, self.sub(self.const(math.pi / 2), p))

    def asinh(self, x: str) -> str:
        """log1p(|x| + x²/(1 + sqrt(1 + x²))) (no cancellation near 0), log(2|x|) past 4096;
        x's sign."""
        a = self.call("fabs", x)
        one = self.const(1.0)
        z = self.mul(a, a)
        small = self.log1p(
            self.add(a, self.div(z, self.add(one, self.call("sqrt", self.add(one, z)))))
        )
        big = self.add(self.log(a), self.const(math.log(2.0)))
        return self._with_sign_of(
            self.select(self.cmp("ogt", a, self.const(_HYP_BIG)), big, small), x
        )

    def acosh(self, x: str) -> str:
        """log1p(t + sqrt(2t + t²)) with t = x - 1 (exact near 1), log(2x) past 4096; x < 1
        gives NaN."""
        t = self.sub(x, self.const(1.0))
        small = self.log1p(self.add(t, self.call("sqrt", self.fma(t, t, self.add(t, t)))))
        big = self.add(self.log(x), self.const(math.log(2.0)))
        r = self.select(self.cmp("ogt", x, self.const(_HYP_BIG)), big, small)
        return self.select(self.cmp("olt", x, self.const(1.0)), self.const(math.nan), r)

    def atanh(self, x: str) -> str:
        """½·log1p(2|x|/(1 - |x|)), x's sign: ±inf at ±1, NaN past."""
        a = self.call("fabs", x)
        r = self.log1p(self.div(self.add(a, a), self.sub(self.const(1.0), a)))
        return self._with_sign_of(self.mul(r, self.const(0.5)), x)

    # -- erf, GELU, sigmoid -----------------------------------------------------------------------
    # erf(x) = x·P(x²)/Q(x²) on [-4, 4] (rational minimax, absolute error ~3e-7), ±1 beyond.
    _ERF_P = (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
    _ERF_Q = (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )

    def erf_scaled(self, x: str, s: float = 1.0, k: float = 1.0) -> str:
        """k·erf(s·x), with s and k folded into the polynomials' coefficients (no extra mul)."""
        xc = self.clamp(x, -4.0 / s, 4.0 / s)
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

    # -- pow and fmod: exact cores in fp64 --------------------------------------------------------
    def _dlog(self, xd: str) -> str:
        """ln of a positive normal fp64 (fdlibm's reduction and polynomial, ~1e-16 relative);
        ``self`` is an fp64 emitter. 0, inf and NaN give a number the caller replaces."""
        bits = self.bits(xd)
        k = self.iop(
            "ashr", self.iop("sub", bits, self.iconst(0x3FE6A09E667F3BCD)), self.iconst(52)
        )
        m = self.from_bits(self.iop("sub", bits, self.iop("shl", k, self.iconst(52))))
        f = self.sub(m, self.const(1.0))
        s = self.div(f, self.add(f, self.const(2.0)))
        z = self.mul(s, s)
        ln_m = self.fma(s, self.mul(z, self.poly(z, _DLOG_P)), self.add(s, s))
        return self.fma(self.to_fp(k), self.const(math.log(2.0)), ln_m)

    def _dexp(self, t: str) -> str:
        """e**t in fp64 for t clamped to [-110, 90] (wider than fp32's range, so the final
        rounding to fp32 makes the overflows, subnormals and zeros); ~1e-15 relative."""
        t = self.min(self.max(t, self.const(-110.0)), self.const(90.0))
        n = self.call("rint", self.mul(t, self.const(1.4426950408889634)))
        r = self.fma(n, self.const(-6.93147180369123816490e-01), t)
        r = self.fma(n, self.const(-1.90821492927058770002e-10), r)
        return self.mul(self.poly(r, _DEXP_P), self.scale2(n))

    def pow(self, x: str, y: str) -> str:
        """x**y as numpy's float32 power (C powf): a literal exponent is specialised (0, 1, 2,
        -1, ±0.5, integers up to 64 in magnitude by products in fp64); otherwise
        exp(y·ln|x|) in fp64, rounded once to fp32, with powf's rules: a negative base gives
        NaN unless y is an integer, whose parity sets the sign; x**0 = 1**y = 1 (even NaN),
        (-1)**±inf = 1, 0**negative = inf. Max error 0.5 ulp against float64 (measured: one
        rounding of an fp64 result good to ~1e-14); numpy's own powf is up to 1 ulp away."""
        c = self.literals.get(y)
        if c is not None:
            special = self._pow_literal(x, c)
            if special is not None:
                return special
        d = self.wide()
        ax = self.call("fabs", x)
        axd = self.extend(ax)
        ln = d._dlog(axd)
        ln = d.select(d.cmp("oeq", axd, d.const(0.0)), d.const(-math.inf), ln)
        ln = d.select(d.cmp("oeq", axd, d.const(math.inf)), d.const(math.inf), ln)
        r = self.narrow(d._dexp(d.mul(self.extend(y), ln)))
        yr = self.call("rint", y)
        yint = self.cmp("oeq", y, yr)
        half = self.mul(y, self.const(0.5))
        odd = self.both(yint, self.cmp("une", half, self.call("rint", half)))
        negative = self.icmp("slt", self.bits(x), self.iconst(0))  # sign bit, -0 included
        r = self.select(self.both(negative, odd), self.neg(r), r)
        finite_neg = self.both(
            self.cmp("olt", x, self.const(0.0)), self.cmp("ogt", x, self.const(-math.inf))
        )
        r = self.select(self.both(finite_neg, self.cmp("une", y, yr)), self.const(math.nan), r)
        r = self.select(self.cmp("uno", x, y), self.const(math.nan), r)
        one = self.const(1.0)
        r = self.select(
            self.both(
                self.cmp("oeq", ax, one),
                self.cmp("oeq", self.call("fabs", y), self.const(math.inf)),
            ),
            one,
            r,
        )
        r = self.select(self.cmp("oeq", x, one), one, r)
        return self.select(self.cmp("oeq", y, self.const(0.0)), one, r)

    def _pow_literal(self, x: str, c: float) -> str | None:
        """x**c for the literal exponents with a cheaper exact form (None: the general path),
        each with numpy's special values for a scalar exponent: x**0.5 is sqrt(x) there
        ((-0)**0.5 = -0, (-inf)**0.5 = NaN), x**-0.5 is powf's ((-0)**-0.5 = inf, sqrt(x + 0)
        and -inf set apart)."""
        if c == 0.0:
            return self.const(1.0)
        if c == 1.0:
            return x
        if c == 2.0:
            return self.mul(x, x)
        if c == -1.0:
            return self.div(self.const(1.0), x)
        if c == 0.5:  # numpy's float32 power by a scalar 0.5 is sqrt, -0 and -inf included
            return self.call("sqrt", x)
        if c == -0.5:  # in fp64: one rounding, as powf's
            d = self.wide()
            r = self.narrow(
                d.div(d.const(1.0), d.call("sqrt", self.extend(self.add(x, self.const(0.0)))))
            )
            return self.select(self.cmp("oeq", x, self.const(-math.inf)), self.const(0.0), r)
        if not math.isfinite(c) or c != int(c) or abs(c) > _POW_INT_MAX:
            return None
        # |x|**n by squaring in fp64: each product rounds at 2^-53, and fp64's range holds
        # every intermediate that matters (an overflow or underflow there does in fp32 too).
        d = self.wide()
        base, acc, n = self.extend(x), None, abs(int(c))
        while n:
            if n & 1:
                acc = base if acc is None else d.mul(acc, base)
            n >>= 1
            if n:
                base = d.mul(base, base)
        assert acc is not None
        if c < 0:
            acc = d.div(d.const(1.0), acc)
        return self.narrow(acc)

    def _mulmod(self, a: str, b: str, m: str, inv: str) -> str:
        """(a·b) mod m for integer-valued fp64 a, b < m < 2^24: the product is exact, the
        quotient estimate from 1/m is off by at most one, and the FMA remainder is exact."""
        t = self.mul(a, b)
        q = self.call("floor", self.mul(t, inv))
        r = self.fma(self.neg(q), m, t)
        r = self.select(self.cmp("olt", r, self.const(0.0)), self.add(r, m), r)
        return self.select(self.cmp("oge", r, m), self.sub(r, m), r)

    def fmod(self, x: str, y: str) -> str:
        """C fmod (sign of x), exact for every fp32 pair: with |x| = mx·2^(ex-23) and
        |y| = my·2^(ey-23) (24-bit integer mantissas, subnormals normalized in fp64), the
        remainder is (mx·2^(ex-ey) mod my)·2^(ey-23), where 2^(ex-ey) mod my comes from nine
        square-and-double steps of exact fp64 integer arithmetic. fmod(x, 0), fmod(±inf, y)
        and NaNs give NaN; |x| < |y| (y = ±inf included) gives x. Error: 0."""
        d = self.wide()
        ax, ay = self.call("fabs", x), self.call("fabs", y)
        xd, yd = self.extend(ax), self.extend(ay)
        ex = d.iop("lshr", d.bits(xd), d.iconst(52))
        ey = d.iop("lshr", d.bits(yd), d.iconst(52))

        def mantissa(v: str, e: str) -> str:  # v·2^(23 - E), E = e - 1023
            return d.mul(
                v, d.from_bits(d.iop("shl", d.iop("sub", d.iconst(2069), e), d.iconst(52)))
            )

        mx, my = mantissa(xd, ex), mantissa(yd, ey)
        inv = d.div(d.const(1.0), my)
        gap = d.iop("sub", ex, ey)
        gap = d.select(d.icmp("slt", gap, d.iconst(0)), d.iconst(0), gap, d.ity)
        gap = d.iop("and", gap, d.iconst(511))  # 0..276 for fp32 operands: nine bits
        p = d.const(1.0)
        for b in range(8, -1, -1):
            p = d._mulmod(p, p, my, inv)
            bit = d.icmp(
                "ne", d.iop("and", d.iop("lshr", gap, d.iconst(b)), d.iconst(1)), d.iconst(0)
            )
            p2 = d.add(p, p)
            p2 = d.select(d.cmp("oge", p2, my), d.sub(p2, my), p2)
            p = d.select(bit, p2, p)
        rem = d._mulmod(mx, p, my, inv)
        unit = d.from_bits(d.iop("shl", d.iop("sub", ey, d.iconst(23)), d.iconst(52)))
        r = self.call("copysign", self.narrow(d.mul(rem, unit)), x)
        r = self.select(self.cmp("olt", ax, ay), x, r)
        bad = self.either(
            self.cmp("oeq", ay, self.const(0.0)), self.cmp("oeq", ax, self.const(math.inf))
        )
        return self.select(self.either(bad, self.cmp("uno", x, y)), self.const(math.nan), r)

    def floor_mod(self, x: str, y: str) -> str:
        """numpy's float mod (sign of y), as npy_divmod makes it from C fmod: a nonzero
        remainder whose sign differs from y's gets y added (one fp32 rounding, as numpy's);
        a zero one takes y's sign. Error: 0 against numpy."""
        r = self.fmod(x, y)
        differ = self.emit(
            f"xor {self.cty} {self.cmp('olt', y, self.const(0.0))}, "
            f"{self.cmp('olt', r, self.const(0.0))}"
        )
        r = self.select(self.both(self.cmp("une", r, self.const(0.0)), differ), self.add(r, y), r)
        zero = self.call("copysign", self.const(0.0), y)
        return self.select(self.cmp("oeq", r, self.const(0.0)), zero, r)

    # -- dispatch ---------------------------------------------------------------------------------
    def unary(self, name: str, x: str, alpha: float = 0.01) -> str:
        """Apply the satura unary op or activation ``name`` (default attributes).
        Raises CodegenError if unknown."""
        if name in ("identity", "none"):
            return x
        simple = {
            "neg": self.neg,
            "exp": self.exp_op,
            "tanh": self.tanh,
            "erf": self.erf,
            "gelu": self.gelu,
            "gelu_tanh": self.gelu_tanh,
            "sigmoid": self.sigmoid,
            "log": self.log,
            "sin": self.sin,
            "cos": self.cos,
            "softplus": self.softplus,
            "expm1": self.expm1,
            "log1p": self.log1p,
            "atan": self.atan,
            "asin": self.asin,
            "acos": self.acos,
            "asinh": self.asinh,
            "acosh": self.acosh,
            "atanh": self.atanh,
        }
        if name in simple:
            return simple[name](x)
        if name == "abs":
            return self.call("fabs", x)
        if name == "sqrt":
            return self.call("sqrt", x)
        if name in ("floor", "ceil"):
            return self.call(name, x)
        if name == "round":
            return self.call("rint", x)  # half to even in the default rounding mode
        if name == "reciprocal":
            return self.div(self.const(1.0), x)
        if name == "relu":
            # x < 0 ? 0 : x keeps NaN as numpy's maximum(x, 0) does; one maxps on x86.
            return self.select_lt(x, self.const(0.0), self.const(0.0), x)
        if name == "relu6":  # clip(x, 0, 6), numpy's order and NaN
            return self.minimum(self.maximum(x, self.const(0.0)), self.const(6.0))
        if name == "silu":
            return self.mul(x, self.sigmoid(x))
        if name == "leaky_relu":
            return self.select_lt(x, self.const(0.0), self.mul(x, self.const(alpha)), x)
        raise CodegenError(f"no LLVM lowering for elementwise op '{name}'")

    def binary(self, name: str, a: str, b: str) -> str:
        """Apply the satura binary op ``name`` with numpy's semantics (max and min propagate
        NaN). Raises CodegenError if unknown."""
        table = {
            "add": self.add,
            "sub": self.sub,
            "mul": self.mul,
            "div": self.div,
            "max": self.maximum,
            "min": self.minimum,
            "pow": self.pow,
            "fmod": self.fmod,
            "floor_mod": self.floor_mod,
        }
        if name not in table:
            raise CodegenError(f"no LLVM lowering for elementwise op '{name}'")
        return table[name](a, b)


# The functions of kernel expressions: satura's unary and binary ops (default attributes) and
# kernel-only helpers that lowerings compose: expm1 (elu), log1p, relu6 (clip to [0, 6]), and
# the two float remainders of mod (fmod: C fmod, sign of x; floor_mod: numpy's, sign of y).
KERNEL_ONLY = frozenset({"expm1", "log1p", "relu6", "fmod", "floor_mod"})
UNARY_OPS = frozenset(
    {
        "identity",
        "neg",
        "exp",
        "tanh",
        "erf",
        "gelu",
        "sigmoid",
        "abs",
        "sqrt",
        "floor",
        "ceil",
        "reciprocal",
        "relu",
        "silu",
        "leaky_relu",
        "log",
        "sin",
        "cos",
        "round",
        "atan",
        "asin",
        "acos",
        "asinh",
        "acosh",
        "atanh",
        "softplus",
        "expm1",
        "log1p",
        "relu6",
    }
)
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "max", "min", "pow", "fmod", "floor_mod"})
# What a GEMM or convolution kernel may apply to its result before the store (by name, with
# default attributes): every unary op of one value, and relu6 (MobileNet's clip).
ACTIVATIONS = frozenset({"none", "gelu_tanh", "relu6"}) | (UNARY_OPS - KERNEL_ONLY - {"identity"})
# Activations a register-tile epilogue applies on its accumulators; a costlier one (exp, division,
# ...) needs enough registers that applying it to a whole tile at once spills, so kernels apply it
# in a pass over the tile just stored (in L1).
CHEAP_ACTIVATIONS = ("none", "relu")

_INTRINSIC_ARITY = (
    ("fma", 3),
    ("maxnum", 2),
    ("minnum", 2),
    ("rint", 1),
    ("fabs", 1),
    ("sqrt", 1),
    ("floor", 1),
    ("ceil", 1),
    ("copysign", 2),
)
INTRINSICS = [
    f"declare {vec_type(w, t)} @llvm.{name}.{'' if w == 1 else f'v{w}'}{s}"
    f"({', '.join([vec_type(w, t)] * n)})"
    for t, s in (("float", "f32"), ("double", "f64"))
    for w in (1, 8, 16, 4, 32, 64)
    for name, n in _INTRINSIC_ARITY
]


# dtype -> (LLVM type, kind): "f" float, "s" signed int, "u" unsigned int, "b" bool (a 0/1 byte).
# No float16: LLVM lowers some of its conversions to runtime-library calls the JIT does not link.
CAST_TYPES = {
    "float32": ("float", "f"),
    "float64": ("double", "f"),
    "int64": ("i64", "s"),
    "int32": ("i32", "s"),
    "int16": ("i16", "s"),
    "int8": ("i8", "s"),
    "uint8": ("i8", "u"),
    "uint16": ("i16", "u"),
    "uint32": ("i32", "u"),
    "uint64": ("i64", "u"),
    "bool": ("i8", "b"),
}
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
        op = (
            ("sext" if sk == "s" else "zext")
            if _bits(dt) > _bits(st)
            else "trunc"
            if _bits(dt) < _bits(st)
            else None
        )
    if op is None:
        return v
    lines.append(f"  %cv = {op} {st} {v} to {dt}")
    return "%cv"


def _ftype(ty: str) -> str:
    return {"float": "f32", "double": "f64"}[ty]


def cast_declares() -> str:
    """The saturating float-to-int intrinsics ``convert`` may call."""
    ints = sorted({t for t, k in CAST_TYPES.values() if k != "f"})
    return "\n".join(
        f"declare {i} @llvm.{op}.sat.{i}.{_ftype(f)}({f})"
        for op in ("fptosi", "fptoui")
        for i in ints
        for f in _FLOAT_BITS
    )
