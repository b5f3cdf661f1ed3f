"""Architectures beyond the five examples, written in torch and exported by both exporters:
a MobileNetV3 block (depthwise conv, HardSwish, squeeze-excite), a UNet decoder step
(ConvTranspose, GroupNorm, SiLU, interpolate), a ViT-style block (patch conv, einsum attention,
LayerNorm, GELU), a classifier head (embedding lookup, masked mean, LogSoftmax) and a recurrent
speech model (bidirectional GRU, LSTM); and a Llama-style decoder block exported at opset 23
(ONNX Attention and RMSNormalization).

Each goes through satura (import, optimize, compiled CPU code) and must match onnxruntime on
the exported model and torch's own forward, with every node compiled (no numpy fallback)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from torch import nn  # noqa: E402

import satura  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.onnx, pytest.mark.slow]


class MobileBlock(nn.Module):
    def __init__(self, c: int = 16, e: int = 32) -> None:
        super().__init__()
        self.expand = nn.Sequential(
            nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish()
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(e, 8, 1),
            nn.ReLU(),
            nn.Conv2d(8, e, 1),
            nn.Hardsigmoid(),
        )
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        return x + self.project(h * self.se(h))


class UNetUp(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.conv = nn.Conv2d(c, c // 2, 3, padding=1)
        self.norm = nn.GroupNorm(4, c // 2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        y = self.act(self.norm(self.conv(torch.cat([up, skip], dim=1))))
        return y + nn.functional.interpolate(x[:, : y.shape[1]], scale_factor=2.0, mode="nearest")


class ViTBlock(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.heads = heads

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch(img).flatten(2).transpose(1, 2)
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).unbind(2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) * (d // self.heads) ** -0.5
        ctx = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(b, n, d)
        x = x + self.proj(ctx)
        return (x + self.mlp(self.norm2(x))).mean(dim=1)


class TextHead(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 24, classes: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) * mask.unsqueeze(-1)
        pooled = h.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.log_softmax(self.fc(torch.tanh(pooled)), dim=-1)


class SpeechRNN(nn.Module):
    """A bidirectional GRU over batch-first frames, then an LSTM and a linear head."""

    def __init__(self, feats: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(feats, hidden, batch_first=True, bidirectional=True)
        self.lstm = nn.LSTM(2 * hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 6)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(frames)
        h, _ = self.lstm(h)
        return self.head(h)


def _inputs(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if name == "speech":
        return {"frames": rng.standard_normal((2, 9, 12)).astype(np.float32)}
    if name == "mobile":
        return {"x": rng.standard_normal((2, 16, 12, 12)).astype(np.float32)}
    if name == "unet":
        return {
            "x": rng.standard_normal((2, 16, 6, 6)).astype(np.float32),
            "skip": rng.standard_normal((2, 8, 12, 12)).astype(np.float32),
        }
    if name == "vit":
        return {"img": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
    mask = (rng.random((2, 7)) < 0.7).astype(np.float32)
    return {"ids": rng.integers(0, 50, (2, 7)).astype(np.int64), "mask": mask}


ZOO = {
    "mobile": MobileBlock,
    "unet": UNetUp,
    "vit": ViTBlock,
    "text": TextHead,
    "speech": SpeechRNN,
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_export_compiles_and_matches(name, dynamo, tmp_path):
    torch.manual_seed(0)
    module = ZOO[name]().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    feeds = _inputs(name, np.random.default_rng(0))
    args = tuple(torch.from_numpy(a) for a in feeds.values())
    path = tmp_path / f"{name}.onnx"
    if dynamo:
        torch.onnx.export(module, args, dynamo=True, input_names=list(feeds), verbose=False).save(
            str(path), external_data=False
        )
    else:
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=list(feeds), opset_version=18
        )
    model = onnx.load(str(path))
    with torch.no_grad():
        want = module(*args).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-5)
    exe = satura.compile(satura.optimize(satura.load(model)).graph)
    got = next(iter(exe(**feeds).values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    fallback = exe.fallback_ops
    print(
        f"{name} ({'dynamo' if dynamo else 'torchscript'}): {len(fallback)} fallback nodes "
        f"{fallback}"
    )
    assert fallback == [], fallback


def test_opset_23_attention_and_rms_norm_compile(tmp_path):
    """From opset 23 on, torch's exporter writes SDPA as ONNX Attention and RMSNorm as
    RMSNormalization: they import, compile with no fallback and match onnxruntime and torch."""
    from benchmarks.zoo import architectures

    torch.manual_seed(0)
    make = architectures()["llama_decoder"][0]
    module = make(d=64, heads=4, kv_heads=2, ff=96).eval()
    x = torch.randn(2, 10, 64)
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool).tril()
    mask[1, :, :, :3] = False  # the second sequence is left-padded by three tokens
    mask[1, :, :3, :] = True
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(
        module, (x, mask), dynamo=True, opset_version=23, input_names=["x", "mask"], verbose=False
    ).save(str(path), external_data=False)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"Attention", "RMSNormalization"} <= ops, ops
    feeds = {"x": x.numpy(), "mask": mask.numpy()}
    with torch.no_grad():
        want = module(x, mask).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-5)
    exe = satura.compile(satura.optimize(satura.load(model)).graph)
    np.testing.assert_allclose(next(iter(exe(**feeds).values())), want, rtol=1e-4, atol=1e-5)
    assert exe.fallback_ops == []
