"""Time torch-exported architectures beyond the examples against onnxruntime, end to end.

Each model is written here in torch (random weights, batch norms with non-trivial statistics),
exported with ``torch.onnx.export`` (a dynamic batch dimension; the TorchScript exporter at opset
17, or torch.export at ``--opset`` 18 and up: at 23, SDPA and RMSNorm are ONNX ops), loaded
by satura (``optimize(load(model))``, compiled for the input's shape) and by onnxruntime (all
graph optimizations), and run on the same input with the same thread count. Medians over
interleaved repeats; ``ort/sat`` > 1: satura is faster; ``max Δ``: largest difference from
onnxruntime relative to the largest output; ``fallback``: ops run by their numpy reference.

    python -m benchmarks.zoo [--threads 1,2] [--batch 1,8] [--budget 0.4] [--opset 17] [name ...]

Needs torch (and onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Callable

import numpy as np

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - the CLI says so
    torch = None  # type: ignore[assignment]


def architectures() -> dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[int, ...]]]]:
    class ConvNeXtBlock(nn.Module):
        def __init__(self, c: int = 96) -> None:
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.ln = nn.LayerNorm(c)
            self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 0.1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln(self.dw(x).permute(0, 2, 3, 1))
            h = self.fc2(nn.functional.gelu(self.fc1(h))) * self.gamma
            return x + h.permute(0, 3, 1, 2)

    def inverted_residual(cin: int, cout: int, e: int, stride: int) -> nn.Module:
        h = cin * e
        return nn.Sequential(
            nn.Conv2d(cin, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(),
            nn.Conv2d(h, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    class MobileNetV2Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
            )
            self.b1 = inverted_residual(32, 16, 1, 1)
            self.b2 = inverted_residual(16, 24, 6, 2)
            self.b3 = inverted_residual(24, 24, 6, 1)
            self.b4 = inverted_residual(24, 32, 6, 2)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.b2(self.b1(self.stem(x)))
            x = self.b4(x + self.b3(x))
            return self.head(x.mean((2, 3)))

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.sc = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + self.sc(x))

    class ResNet18Stages12(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            self.layers = nn.Sequential(
                Basic(64, 64, 1), Basic(64, 64, 1), Basic(64, 128, 2), Basic(128, 128, 1)
            )
            self.fc = nn.Linear(128, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
            return self.fc(torch.flatten(x, 1))

    def encoder(d: int = 256, heads: int = 4, layers: int = 2, pre: bool = False) -> nn.Module:
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, batch_first=True, activation="gelu", norm_first=pre
        )
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    class CausalSdpa(nn.Module):
        def __init__(self, d: int = 512, heads: int = 8) -> None:
            super().__init__()
            self.heads = heads
            self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(y.transpose(1, 2).reshape(b, t, c))

    class LlamaDecoder(nn.Module):
        """RMSNorm, grouped-query attention (8 query heads on 2 kv heads), SwiGLU. Causal, or
        under ``mask`` (bool, True where a query may see a key) when one is given."""

        def __init__(self, d: int = 512, heads: int = 8, kv_heads: int = 2, ff: int = 1376) -> None:
            super().__init__()
            self.heads, self.kv_heads, self.dh = heads, kv_heads, d // heads
            self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
            self.q = nn.Linear(d, d, bias=False)
            self.kv = nn.Linear(d, 2 * kv_heads * self.dh, bias=False)
            self.o = nn.Linear(d, d, bias=False)
            self.up, self.down = nn.Linear(d, 2 * ff, bias=False), nn.Linear(ff, d, bias=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            b, t, d = x.shape
            h = self.norm1(x)
            q = self.q(h).view(b, t, self.heads, self.dh).transpose(1, 2)
            k, v = self.kv(h).view(b, t, 2, self.kv_heads, self.dh).transpose(1, 3).unbind(1)
            a = nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True
            )
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            gate, up = self.up(self.norm2(x)).chunk(2, dim=-1)
            return x + self.down(nn.functional.silu(gate) * up)

    class Conv1dSpeech(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv1d(80, 256, 5, padding=2),
                nn.BatchNorm1d(256),
                nn.ReLU(),
                nn.Conv1d(256, 256, 5, padding=2, groups=256),
                nn.Conv1d(256, 256, 1),
                nn.BatchNorm1d(256),
                nn.ReLU(),
                nn.Conv1d(256, 256, 3, stride=2, padding=1),
                nn.ReLU(),
            )
            self.fc = nn.Linear(256, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.net(x).transpose(1, 2)).log_softmax(-1)

    class ViTTiny(nn.Module):
        def __init__(self, d: int = 192) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, d, 16, 16)
            self.cls = nn.Parameter(torch.zeros(1, 1, d))
            self.pos = nn.Parameter(torch.randn(1, 197, d) * 0.02)
            self.enc = encoder(d, 3, 2, pre=True)
            self.head = nn.Linear(d, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.enc(x)[:, 0])

    class UNetDecoder(nn.Module):
        """Up-sampling by the three usual ConvTranspose forms: k2 s2, k4 s2 p1, k3 s2 p1 op1."""

        def __init__(self) -> None:
            super().__init__()

            def block(c: int) -> nn.Module:
                return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

            self.net = nn.Sequential(
                nn.ConvTranspose2d(128, 64, 2, stride=2),
                block(64),
                nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
                block(32),
                nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),
                nn.Conv2d(16, 2, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    class RecurrentSpeech(nn.Module):
        """Frames through a bidirectional GRU, then a two-layer LSTM and a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(80, 128, batch_first=True, bidirectional=True)
            self.lstm = nn.LSTM(256, 256, 2, batch_first=True)
            self.fc = nn.Linear(256, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.lstm(self.gru(x)[0])[0])

    return {
        "convnext_block": (ConvNeXtBlock, lambda b: (b, 96, 28, 28)),
        "mobilenetv2_head": (MobileNetV2Head, lambda b: (b, 3, 112, 112)),
        "resnet18_stages12": (ResNet18Stages12, lambda b: (b, 3, 112, 112)),
        "transformer_encoder": (encoder, lambda b: (b, 128, 256)),
        "causal_sdpa": (CausalSdpa, lambda b: (b, 128, 512)),
        "llama_decoder": (LlamaDecoder, lambda b: (b, 128, 512)),
        "conv1d_speech": (Conv1dSpeech, lambda b: (b, 80, 200)),
        "vit_tiny": (ViTTiny, lambda b: (b, 3, 224, 224)),
        "unet_decoder": (UNetDecoder, lambda b: (b, 128, 14, 14)),
        "recurrent_speech": (RecurrentSpeech, lambda b: (b, 100, 80)),
    }


# The TorchScript exporter has no RMSNorm: these go through torch.export at opset 18 or later.
DYNAMO_ONLY = frozenset({"llama_decoder"})


def export(name: str, path: str, models: dict | None = None, opset: int = 17) -> None:
    """Build ``name`` (seeded weights and batch-norm statistics) and export it to ``path``:
    with the TorchScript exporter at opset 17, or with torch.export (``dynamo=True``) at a later
    ``opset`` (from 23 on, SDPA is ONNX Attention and RMSNorm is RMSNormalization)."""
    make, shape = (models or architectures())[name]
    torch.manual_seed(0)
    module = make().eval()
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path has no ONNX export
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset <= 17 and name not in DYNAMO_ONLY:
            torch.onnx.export(
                module,
                (torch.randn(*shape(1)),),
                path,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
            return
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(
            module,
            (torch.randn(*shape(2)),),
            input_names=["x"],
            dynamic_shapes=({0: batch},),
            opset_version=max(opset, 18),
            dynamo=True,
            verbose=False,
        )
        program.save(path, external_data=False)


def run(
    names: list[str],
    threads: list[int],
    batches: list[int],
    budget: float,
    print_fn=print,
    opset: int = 17,
) -> list[dict]:
    """Time every model at every batch and thread count; print and return the rows."""
    import onnx
    from satura.targets.runtime import compile_graph
    from satura.targets.specialize import SpecializingModel

    import satura
    from benchmarks.run import _ort_session, median_times

    rows = []
    models = architectures()
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            path = os.path.join(d, f"{name}.onnx")
            export(name, path, models, opset)
            proto = onnx.load(path)
            graph = satura.optimize(satura.load(proto)).graph
            for t in threads:
                compiled = compile_graph(graph, threads=t)
                sess = _ort_session(proto.SerializeToString(), t)
                for b in batches:
                    x = np.random.default_rng(1).standard_normal(models[name][1](b))
                    feeds = {"x": x.astype(np.float32)}
                    m = (
                        compiled.variant(feeds)
                        if isinstance(compiled, SpecializingModel)
                        else compiled
                    )
                    got, want = list(m(**feeds).values()), sess.run(None, feeds)
                    diff = max(
                        float(np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1.0))
                        for g, w in zip(got, want, strict=True)
                    )
                    med = median_times(
                        {
                            "sat": lambda m=m, f=feeds: m(**f),
                            "ort": lambda s=sess, f=feeds: s.run(None, f),
                        },
                        budget,
                    )
                    rows.append(
                        {
                            "name": name,
                            "threads": t,
                            "batch": b,
                            "satura": med["sat"],
                            "ort": med["ort"],
                            "max_diff": diff,
                            "fallback": list(m.fallback_ops),
                        }
                    )
    print_fn("| model | threads | batch | satura ms | ort ms | ort/sat | max Δ | fallback |")
    print_fn("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print_fn(
            f"| {r['name']} | {r['threads']} | {r['batch']} | {r['satura'] * 1e3:.3f} | "
            f"{r['ort'] * 1e3:.3f} | {r['ort'] / r['satura']:.2f} | {r['max_diff']:.0e} | "
            f"{', '.join(r['fallback']) or '-'} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models (default: all)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    ap.add_argument(
        "--opset",
        type=int,
        default=17,
        help="17: the TorchScript exporter (default); 18 and up: torch.export (dynamo=True)",
    )
    args = ap.parse_args(argv)
    if torch is None:
        print("benchmarks.zoo needs torch (pip install torch)")
        return 2
    known = list(architectures())
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(known)})")
        return 2
    run(
        args.names or known,
        [int(t) for t in args.threads.split(",")],
        [int(b) for b in args.batch.split(",")],
        args.budget,
        opset=args.opset,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
