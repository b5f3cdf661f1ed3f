"""Time quantized example models against onnxruntime, end to end.

The example models (``examples/models.py``) are quantized by onnxruntime's own tools: the
operator format (``quantize_static(quant_format=QOperator)``, per-channel weights, calibrated on
the example inputs: QLinearConv, QLinearMatMul and com.microsoft ops such as QLinearAdd and QGemm)
and ``quantize_dynamic`` (DynamicQuantizeLinear, MatMulInteger, ConvInteger). satura runs them as
float arithmetic in its float32 kernels; onnxruntime (all graph optimizations) runs its int8
kernels. Same table as ``benchmarks.run``: ``ort/sat`` > 1 means satura is faster; ``max Δ`` is
the largest difference from onnxruntime relative to its largest output (onnxruntime's optimized
int8 kernels round differently from ONNX's reference, which satura follows).

    python -m benchmarks.quantized [--threads 1,2] [--batch 8] [--seq 64] [--budget 0.4]

Needs onnxruntime (its quantization tools).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

# name -> the formats it is quantized in (the operator format needs a calibration run, which
# onnxruntime's quantizer does on conv models in well under a second)
MODELS = {
    "resnet_small": ("operator", "dynamic"),
    "bert_block": ("dynamic",),
    "mlp": ("dynamic",),
}


def quantized_files(folder: str, batch: int, seq: int) -> dict[str, tuple[str, dict[str, int]]]:
    """Write every quantized variant of MODELS into ``folder``: name -> (path, dims)."""
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    from examples.models import EXAMPLES, example_inputs

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing
    out = {}
    for name, formats in MODELS.items():
        src = os.path.join(folder, f"{name}.onnx")
        onnx.save(EXAMPLES[name](), src)
        feeds = example_inputs(name, batch=batch, seq=seq)

        class Calibration(CalibrationDataReader):
            def __init__(self, feeds: dict = feeds) -> None:
                self.feeds = iter([feeds] * 4)

            def get_next(self) -> dict | None:
                return next(self.feeds, None)

        dims = {"batch": batch, "N": batch, "seq": seq}
        for fmt in formats:
            dst = os.path.join(folder, f"{name}_{fmt}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if fmt == "dynamic":
                    quantize_dynamic(src, dst)
                else:
                    quantize_static(
                        src,
                        dst,
                        Calibration(),
                        quant_format=QuantFormat.QOperator,
                        per_channel=True,
                    )
            out[f"{name}_{fmt}"] = (dst, dims)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    ap.add_argument("--seq", type=int, default=64, help="sequence length (bert_block)")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    args = ap.parse_args()
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        ap.error("needs onnxruntime (pip install onnxruntime)")
    from benchmarks.run import file_cases, run

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        files = quantized_files(folder, args.batch, args.seq)
        cases = []
        for path, dims in files.values():
            cases += file_cases([path], dims)
        run(
            [int(t) for t in args.threads.split(",")],
            args.budget,
            False,
            set(),
            torch_compile=False,
            extra=cases,
        )
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
