"""The five example architectures as small ``torch.nn.Module``s, and their ONNX exports.

Written out by hand (no transformers library), with parameter names that match the initializer
names of :mod:`examples.models` (``attn/c_attn.weight`` there is ``attn.c_attn.weight`` here), so
:func:`load_onnx_weights` can load a hand-built model's weights and torch's forward becomes an
independent reference for it. :func:`export` runs ``torch.onnx.export`` with either exporter.

Importing this module needs torch (and ``onnxscript`` for ``dynamo=True``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from examples.models import EXAMPLES, example_inputs, op_histogram, rope_tables

OPSET = 18


class MLP(nn.Module):
    """Linear -> GELU (erf) -> Linear."""

    def __init__(self, hidden: int = 768, ffn: int | None = None) -> None:
        super().__init__()
        ffn = 4 * hidden if ffn is None else ffn
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _new_gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU, spelled as HF writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class _GPT2Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, max_pos: int) -> None:
        super().__init__()
        self.heads, self.d = heads, hidden // heads
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.c_proj = nn.Linear(hidden, hidden)
        mask = torch.tril(torch.ones(max_pos, max_pos, dtype=torch.bool))[None, None]
        self.register_buffer("bias", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.c_attn(x).split(h, dim=2)
        q = q.view(b, s, self.heads, self.d).transpose(1, 2)
        k = k.view(b, s, self.heads, self.d).transpose(1, 2)
        v = v.view(b, s, self.heads, self.d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d)
        mask = self.bias[:, :, :s, :s]
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
        ctx = scores.softmax(dim=-1) @ v
        return self.c_proj(ctx.transpose(1, 2).reshape(b, s, h))


class _GPT2MLP(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(hidden, 4 * hidden)
        self.c_proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_new_gelu(self.c_fc(x)))


class GPT2Block(nn.Module):
    """Pre-LN GPT-2 block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, hidden: int = 256, heads: int = 4, max_pos: int = 128) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-5)
        self.attn = _GPT2Attention(hidden, heads, max_pos)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-5)
        self.mlp = _GPT2MLP(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.d).permute(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d) + mask
        ctx = scores.softmax(dim=-1) @ v
        return ctx.permute(0, 2, 1, 3).reshape(b, s, h)


class _BertOutput(nn.Module):
    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.self = _BertSelfAttention(hidden, heads)
        self.output = _BertOutput(hidden, hidden)


class _BertIntermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)


class BertBlock(nn.Module):
    """Post-LN BERT encoder layer with an int64 ``attention_mask[batch, seq]`` (1 = keep)."""

    def __init__(self, hidden: int = 256, heads: int = 4, ffn: int = 1024) -> None:
        super().__init__()
        self.attention = _BertAttention(hidden, heads)
        self.intermediate = _BertIntermediate(hidden, ffn)
        self.output = _BertOutput(ffn, hidden)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * -10000.0
        ctx = self.attention.self(hidden_states, mask)
        h1 = self.attention.output(ctx, hidden_states)
        h = nn.functional.gelu(self.intermediate.dense(h1))
        return self.output(h, h1)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x**2) + eps) * weight."""

    def __init__(self, n: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LlamaAttention(nn.Module):
    def __init__(self, hidden: int, q_heads: int, kv_heads: int, max_pos: int) -> None:
        super().__init__()
        self.q_heads, self.kv_heads, self.d = q_heads, kv_heads, hidden // q_heads
        self.q_proj = nn.Linear(hidden, q_heads * self.d, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.d, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.d, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        cos, sin = rope_tables(self.d, max_pos)
        self.register_buffer("cos_cached", torch.from_numpy(cos), persistent=False)
        self.register_buffer("sin_cached", torch.from_numpy(sin), persistent=False)
        mask = torch.full((max_pos, max_pos), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        b, kvh, s, d = t.shape
        rep = self.q_heads // kvh
        return t[:, :, None, :, :].expand(b, kvh, rep, s, d).reshape(b, kvh * rep, s, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q = self.q_proj(x).view(b, s, self.q_heads, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        cos, sin = self.cos_cached[:s], self.sin_cached[:s]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d) + self.causal_mask[:s, :s]
        ctx = scores.softmax(dim=-1) @ v
        return self.o_proj(ctx.transpose(1, 2).reshape(b, s, h))


class _LlamaMLP(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """LLaMA decoder layer: RMSNorm, rotary GQA attention, SiLU-gated MLP, two residuals."""

    def __init__(
        self,
        hidden: int = 256,
        q_heads: int = 8,
        kv_heads: int = 2,
        ffn: int = 688,
        max_pos: int = 128,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden)
        self.self_attn = _LlamaAttention(hidden, q_heads, kv_heads, max_pos)
        self.post_attention_layernorm = RMSNorm(hidden)
        self.mlp = _LlamaMLP(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.add_module("0", _ConvBN(cin, cout, 3, stride))
        self.add_module("1", _ConvBN(cout, cout, 3, 1))
        self.downsample = _ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, "1")(torch.relu(getattr(self, "0")(x)))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(h + skip)


class ResNetSmall(nn.Module):
    """Stem conv-bn-relu-maxpool, basic blocks 16->16 and 16->32 (stride 2), pool, Linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _ConvBN(3, 16, 3, 1)
        self.layer1 = _BasicBlock(16, 16, 1)
        self.layer2 = _BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.stem(x)), 3, 2, 1)
        h = self.layer2(self.layer1(h))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


TORCH_EXAMPLES: dict[str, Callable[[], nn.Module]] = {
    "mlp": MLP,
    "mlp_small": lambda: MLP(hidden=64),
    "gpt2_block": GPT2Block,
    "bert_block": BertBlock,
    "llama_block": LlamaBlock,
    "resnet_small": ResNetSmall,
}

# (input names, {input name: {axis: dim name}}) per example, as the hand-built models declare them
INPUT_AXES: dict[str, dict[str, dict[int, str]]] = {
    "mlp": {"x": {0: "batch"}},
    "mlp_small": {"x": {0: "batch"}},
    "gpt2_block": {"x": {0: "batch", 1: "seq"}},
    "bert_block": {
        "hidden_states": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
    },
    "llama_block": {"x": {0: "batch", 1: "seq"}},
    "resnet_small": {"input": {0: "N"}},
}


def build(name: str, seed: int = 0) -> nn.Module:
    """``TORCH_EXAMPLES[name]()`` in eval mode, with parameters drawn from ``torch.manual_seed``."""
    torch.manual_seed(seed)
    module = TORCH_EXAMPLES[name]().eval()
    for mod in module.modules():  # non-trivial BatchNorm statistics, so BN is not an identity
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(n))
            mod.running_var.copy_(1.0 + 0.2 * torch.rand(n))
            mod.weight.data.copy_(1.0 + 0.1 * torch.randn(n))
            mod.bias.data.copy_(0.1 * torch.randn(n))
        if isinstance(mod, (nn.LayerNorm, RMSNorm)):
            mod.weight.data.copy_(1.0 + 0.1 * torch.randn_like(mod.weight))
    return module


def load_onnx_weights(module: nn.Module, model: onnx.ModelProto) -> nn.Module:
    """Copy a hand-built model's initializers into ``module`` (names ``a/b.w`` -> ``a.b.w``).

    Weights the ONNX graph feeds to MatMul (stored ``[in, out]``) are transposed to
    nn.Linear's ``[out, in]``. Raises KeyError when a parameter or BN statistic has no
    initializer, ValueError on a shape mismatch.
    """
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    inits = {
        t.name.replace("/", "."): (t.name, numpy_helper.to_array(t))
        for t in model.graph.initializer
    }
    state = module.state_dict()
    new_state = {}
    for key, cur in state.items():
        if key.endswith("num_batches_tracked"):
            new_state[key] = cur
            continue
        onnx_name, arr = inits[key]
        if onnx_name in matmul_weights:
            arr = arr.T
        if tuple(arr.shape) != tuple(cur.shape):
            raise ValueError(
                f"load_onnx_weights: {key}: onnx {arr.shape} vs torch {tuple(cur.shape)}"
            )
        new_state[key] = torch.from_numpy(np.ascontiguousarray(arr))
    module.load_state_dict(new_state)
    return module


def torch_inputs(
    name: str,
    batch: int = 1,
    seed: int = 0,
    seq: int = 16,
) -> tuple[torch.Tensor, ...]:
    """:func:`examples.models.example_inputs` as torch tensors, in forward-argument order."""
    return tuple(torch.from_numpy(a) for a in example_inputs(name, batch, seed, seq).values())


def export(
    name: str, dynamo: bool, path: str | os.PathLike[str], module: nn.Module | None = None
) -> onnx.ModelProto:
    """Export ``module`` (default: ``build(name)``) to ``path`` with torch.onnx and return it.

    ``dynamo=False`` is the TorchScript exporter with ``dynamic_axes``; ``dynamo=True`` the
    torch.export-based one with ``dynamic_shapes`` (batch and seq marked dynamic; the example
    input has batch 2 so torch.export does not specialize it to 1). Writes through a temp file
    and a rename; weights are kept inside the .onnx file.
    """
    module = build(name) if module is None else module
    axes = INPUT_AXES[name]
    args = torch_inputs(name, batch=2, seq=8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        if dynamo:
            dims = {
                n: torch.export.Dim(n, min=1, max=128) for a in axes.values() for n in a.values()
            }
            shapes = tuple({ax: dims[n] for ax, n in a.items()} for a in axes.values())
            program = torch.onnx.export(
                module,
                args,
                dynamic_shapes=shapes,
                dynamo=True,
                opset_version=OPSET,
                input_names=list(axes),
                external_data=False,
                verbose=False,  # no progress lines on stdout
            )
            program.save(tmp, external_data=False)
        else:
            torch.onnx.export(
                module,
                args,
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=list(axes),
                output_names=["y"],
                dynamic_axes=dict(axes) | {"y": next(iter(axes.values()))},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return onnx.load(path)


ARCHITECTURES = ("mlp", "gpt2_block", "bert_block", "llama_block", "resnet_small")


def export_histograms(
    out: str | os.PathLike[str], names: tuple[str, ...] = ARCHITECTURES
) -> dict[str, dict[str, dict[str, int]]]:
    """Export each of ``names`` with both exporters into ``out`` (``<name>.torchscript.onnx``,
    ``<name>.dynamo.onnx``) and return ``{name: {"hand" | "torchscript" | "dynamo": op
    histogram}}``, the hand-built model's histogram included for comparison."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, dict[str, int]]] = {}
    for name in names:
        result[name] = {"hand": op_histogram(EXAMPLES[name]())}
        for dynamo, tag in ((False, "torchscript"), (True, "dynamo")):
            result[name][tag] = op_histogram(export(name, dynamo, out / f"{name}.{tag}.onnx"))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.torch_models --out DIR``: export all, print op histograms as JSON."""
    parser = argparse.ArgumentParser(prog="python -m examples.torch_models")
    parser.add_argument("--out", required=True, help="directory for the exported .onnx files")
    args = parser.parse_args(argv)
    print(json.dumps(export_histograms(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
