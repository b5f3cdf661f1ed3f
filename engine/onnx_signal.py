"""ONNX's signal ops as products with constant matrices: DFT and STFT, and the window generators.

A discrete Fourier transform of static length is linear in its input, so it imports as one
``matmul`` with a constant ``[taps·c_in, bins·2]`` matrix over the (real, imaginary) pairs, run in
the GEMM kernels. STFT gathers the frames first and folds the window into the matrix's rows.
Registered in ``onnx_import.CONVERTERS`` when ``onnx_converters`` imports this module.
"""

from __future__ import annotations

import numpy as np
from satura.engine.graph import Value
from satura.engine.onnx_converters import Outs, dims_product
from satura.engine.onnx_import import NodeCtx, converter


def dft_matrix(
    taps: int,
    cin: int,
    length: int,
    bins: int,
    inverse: bool,
    real_out: bool = False,
    window: np.ndarray | None = None,
    freqs: np.ndarray | None = None,
) -> np.ndarray:
    """``[taps·cin, bins·cout]`` float64: row ``(k, c)`` (input sample k, c = 0 real, 1
    imaginary) to column ``(j, c')`` of the ``length``-point DFT (``inverse``: e^{+2πijk/N}/N).
    ``real_out``: the real signal of a one-sided spectrum (irfft: bins 1 to N/2 - 1 stand for
    their conjugate twins too, so they count twice, and imaginary parts of bins 0 and N/2 drop
    out through sin(0) = sin(πt) = 0). ``window`` scales row k; ``freqs`` are the columns'
    frequencies (default 0..bins-1)."""
    k = np.arange(taps)[:, None]
    j = (np.arange(bins) if freqs is None else np.asarray(freqs))[None, :]
    theta = 2.0 * np.pi * ((k * j) % length) / length
    sign = 1.0 if inverse else -1.0
    cos, sin = np.cos(theta), sign * np.sin(theta)
    if real_out:  # k indexes the spectrum's bins, j the signal's samples
        twice = np.where((k == 0) | (2 * k == length), 1.0, 2.0)
        w = np.stack([twice * cos, -twice * sin], axis=1)[:, :cin, :, None]
    else:  # (a + ib)(cos + i·sin) = (a·cos - b·sin) + i(a·sin + b·cos)
        w = np.stack([np.stack([cos, sin], axis=-1), np.stack([-sin, cos], axis=-1)], axis=1)
        w = w[:, :cin]
    if inverse:
        w = w / length
    if window is not None:
        w = w * window[:taps, None, None, None]
    return w.reshape(taps * cin, -1)


def _complex_last(ctx: NodeCtx, x: Value, what: str) -> int:
    c = x.type.shape[-1] if x.type.rank else None
    if c not in (1, 2):
        raise ctx.fail(
            f"{what} must end in a dimension of 1 (real) or 2 (complex), got shape "
            f"{tuple(x.type.shape)}"
        )
    return int(c)


# The largest DFT matrix built (elements: 256 MiB of fp32); a longer transform is an error.
MAX_MATRIX = 1 << 26


def check_size(ctx: NodeCtx, rows: int, cols: int) -> None:
    if rows * cols > MAX_MATRIX:
        raise ctx.fail(
            f"a {rows}x{cols} DFT matrix exceeds {MAX_MATRIX} elements: transforms this long "
            "are not supported (satura runs a DFT as a product with its matrix, not an FFT)"
        )


def _times_matrix(ctx: NodeCtx, x: Value, w: np.ndarray, lead: tuple, cout: int) -> Value:
    """``x`` [*lead, taps, cin] as [*lead, taps·cin] times ``w``, as [*lead, bins, cout]."""
    rows = w.shape[0]
    flat = ctx.one("reshape", x, shape=(*lead, rows))
    wv = ctx.imp.add_const(w.astype(x.type.dtype), f"{ctx.name}_dft")
    y = ctx.one("matmul", flat, wv)
    return ctx.one("reshape", y, shape=(*lead, w.shape[1] // cout, cout))


# Forward transforms at least this long run as two smaller products (a Cooley-Tukey split).
SPLIT_MIN = 256


def _split(length: int) -> tuple[int, int] | None:
    """(N1, N2) with N1·N2 = length, N1 the largest divisor up to sqrt(length), both at least
    8; None when the length is short or has no such factors."""
    if length < SPLIT_MIN:
        return None
    n1 = max((d for d in range(8, int(length**0.5) + 1) if length % d == 0), default=0)
    return (n1, length // n1) if n1 else None


def forward_dft(
    ctx: NodeCtx,
    y: Value,
    length: int,
    cin: int,
    bins: int,
    lead: tuple,
    window: np.ndarray | None = None,
) -> Value:
    """The forward DFT of ``y`` [*lead, length, cin] (times ``window``), its first ``bins``
    bins: [*lead, bins, 2]. One product with the DFT matrix, or for a long transform two:
    with n = N2·n1 + n2 and k = k1 + N1·k2, a length-N1 DFT over n1 for every n2, then for
    every k1 a product over n2 whose matrix holds the twiddle e^{-2πi·n2·k/N} (the second
    stage a product batched over k1)."""
    parts = _split(length)
    if parts is None:
        check_size(ctx, length * cin, bins * 2)
        w = dft_matrix(length, cin, length, bins, False, window=window)
        return _times_matrix(ctx, y, w, lead, 2)
    n1, n2 = parts
    r = len(lead)
    if window is not None:
        wv = ctx.imp.add_const(window.reshape(length, 1).astype(y.type.dtype), f"{ctx.name}_win")
        y = ctx.one("mul", y, wv)
    y = ctx.one("reshape", y, shape=(*lead, n1, n2, cin))
    y = ctx.one("transpose", y, perm=(*range(r), r + 1, r, r + 2))  # [*lead, N2, N1, cin]
    y = _times_matrix(ctx, y, dft_matrix(n1, cin, n1, n1, False), (*lead, n2), 2)
    y = ctx.one("transpose", y, perm=(r + 1, *range(r), r, r + 2))  # [N1, *lead, N2, 2]
    rows = dims_product(lead)
    y = ctx.one("reshape", y, shape=(n1, rows, n2 * 2))
    k2s = min(n2, (bins - 1) // n1 + 1)  # the k2 that some kept bin needs
    w2 = np.stack(
        [dft_matrix(n2, 2, length, k2s, False, freqs=k1 + n1 * np.arange(k2s)) for k1 in range(n1)]
    )
    y = ctx.one("matmul", y, ctx.imp.add_const(w2.astype(y.type.dtype), f"{ctx.name}_dft2"))
    y = ctx.one("reshape", y, shape=(n1, *lead, k2s, 2))
    y = ctx.one("transpose", y, perm=(*range(1, r + 1), r + 1, 0, r + 2))  # [*lead, K2, N1, 2]
    y = ctx.one("reshape", y, shape=(*lead, k2s * n1, 2))
    if k2s * n1 > bins:
        y = ctx.one("slice", y, starts=(0,), ends=(bins,), axes=(r,), steps=(1,))
    return y


@converter("DFT")
def _dft(ctx: NodeCtx) -> Outs:
    """The DFT along ``axis`` as a product with a constant matrix (the axis moved last)."""
    x = ctx.x(0)
    rank = x.type.rank
    cin = _complex_last(ctx, x, "the input")
    if ctx.opset >= 20:
        ax = ctx.dims(2, "axis")
        axis = int(ax[0]) if ax else -2
    else:
        axis = int(ctx.attr("axis", 1))
    if not -rank <= axis < rank or axis % rank == rank - 1:
        raise ctx.fail(f"axis {axis} is out of range or the complex dimension (rank {rank})")
    axis %= rank
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise ctx.fail(f"the transformed axis must have a static length, got {n}")
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    given = ctx.dims(1, "dft_length")
    default = 2 * (n - 1) if inverse and onesided else n  # irfft: the even signal length
    length = int(given[0]) if given else default
    if length < 1:
        raise ctx.fail(f"dft_length must be positive, got {length}")
    if inverse and onesided:  # irfft: a one-sided spectrum to a real signal
        taps, bins, cout = min(n, length // 2 + 1), length, 1
    else:
        taps, cout = min(n, length), 2
        bins = length // 2 + 1 if onesided else length
    perm = [i for i in range(rank - 1) if i != axis] + [axis, rank - 1]
    y = ctx.one("transpose", x, perm=tuple(perm)) if axis != rank - 2 else x
    if taps < n:
        y = ctx.one("slice", y, starts=(0,), ends=(taps,), axes=(rank - 2,), steps=(1,))
    lead = tuple(y.type.shape[:-2])
    if not inverse and taps == length:
        y = forward_dft(ctx, y, length, cin, bins, lead)
    else:
        check_size(ctx, taps * cin, bins * cout)
        w = dft_matrix(taps, cin, length, bins, inverse, real_out=cout == 1)
        y = _times_matrix(ctx, y, w, lead, cout)
    if axis != rank - 2:
        y = ctx.one("transpose", y, perm=tuple(int(i) for i in np.argsort(perm)))
    return [y]


@converter("STFT")
def _stft(ctx: NodeCtx) -> Outs:
    """Frames gathered by a constant index ([frames, frame_length]), then the windowed DFT as
    one product: [batch, frames, bins, 2]."""
    x = ctx.x(0)
    if x.type.rank != 3:
        raise ctx.fail(f"signal must be [batch, length, 1 or 2], got {tuple(x.type.shape)}")
    cin = _complex_last(ctx, x, "the signal")
    size = x.type.shape[1]
    if not isinstance(size, int):
        raise ctx.fail(f"the signal length must be static, got {size}")
    step = ctx.dims(1, "frame_step")
    if not step or int(step[0]) < 1:
        raise ctx.fail("frame_step must be a positive constant")
    hop = int(step[0])
    window = ctx.const(2) if ctx.has(2) else None
    if window is not None:
        window = np.asarray(window, np.float64).ravel()
    given = ctx.dims(3, "frame_length")
    length = int(given[0]) if given else (len(window) if window is not None else size)
    if window is not None and len(window) != length:
        raise ctx.fail(f"window length {len(window)} differs from frame_length {length}")
    if not 1 <= length <= size:
        raise ctx.fail(f"frame_length {length} must be within 1..signal length {size}")
    frames = 1 + (size - length) // hop
    onesided = bool(ctx.attr("onesided", 1))
    bins = length // 2 + 1 if onesided else length
    idx = np.arange(frames)[:, None] * hop + np.arange(length)[None, :]
    framed = ctx.one("gather", x, ctx.imp.add_const(idx.astype(np.int64), f"{ctx.name}_i"), axis=1)
    return [forward_dft(ctx, framed, length, cin, bins, (x.type.shape[0], frames), window)]


def window(kind: str, size: int, periodic: bool) -> np.ndarray:
    """Hann, Hamming or Blackman window of ``size`` samples, float64 (ONNX's definitions)."""
    n = np.arange(size, dtype=np.float64)
    denom = size if periodic else size - 1
    t = 2.0 * np.pi * n / denom if denom else np.zeros(size)
    if kind == "HannWindow":
        return np.sin(t / 2.0) ** 2
    if kind == "HammingWindow":
        alpha = 25.0 / 46.0
        return alpha - (1.0 - alpha) * np.cos(t)
    return 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2.0 * t)


@converter("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(ctx: NodeCtx) -> Outs:
    size = ctx.dims(0, "size")
    if not size or not isinstance(size[0], int) or size[0] < 0:
        raise ctx.fail(f"size must be a non-negative constant, got {size}")
    dtype = ctx.dtype(ctx.attr("output_datatype", 1), "output_datatype")
    w = window(ctx.op_type, int(size[0]), bool(ctx.attr("periodic", 1)))
    return [ctx.imp.add_const(w.astype(dtype), f"{ctx.name}_w")]


def mel_weight_matrix(
    mels: int, dft_length: int, rate: int, low_hz: float, high_hz: float
) -> np.ndarray:
    """[dft_length/2 + 1, mels] triangular filters, float64, as ONNX (and onnxruntime) build them:
    mels + 2 edges equally spaced in mel (the step is the span over mels + 2), mapped back to
    bin indices ``floor((dft_length + 1)·f / rate)``; each filter rises from its left edge to
    its centre and falls to its right one."""

    def mel(f: float) -> float:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    lo, hi = mel(low_hz), mel(high_hz)
    points = lo + np.arange(mels + 2) * (hi - lo) / (mels + 2)
    hz = 700.0 * (10.0 ** (points / 2595.0) - 1.0)
    edges = np.floor((dft_length + 1) * hz / rate).astype(np.int64)
    out = np.zeros((dft_length // 2 + 1, mels))
    for i in range(mels):
        left, centre, right = edges[i], edges[i + 1], edges[i + 2]
        if centre == left:
            out[centre, i] = 1.0
        else:
            j = np.arange(left, centre + 1)
            out[j, i] = (j - left) / (centre - left)
        if right > centre:
            j = np.arange(centre, right)
            out[j, i] = (right - j) / (right - centre)
    return out


@converter("MelWeightMatrix")
def _mel_weight_matrix(ctx: NodeCtx) -> Outs:
    vals = []
    for i, what in enumerate(
        ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
    ):
        v = ctx.const(i)
        if v is None:
            raise ctx.fail(f"{what} (input {i}) is required")
        vals.append(np.asarray(v).item())
    mels, dft, rate, low, high = vals
    if int(mels) < 1 or int(dft) < 1 or int(rate) < 1 or not 0 <= low < high:
        raise ctx.fail(f"bad parameters: {mels} mels, dft {dft}, rate {rate}, {low}..{high} Hz")
    m = mel_weight_matrix(int(mels), int(dft), int(rate), float(low), float(high))
    dtype = ctx.dtype(ctx.attr("output_datatype", 1), "output_datatype")
    return [ctx.imp.add_const(m.astype(dtype), f"{ctx.name}_mel")]
