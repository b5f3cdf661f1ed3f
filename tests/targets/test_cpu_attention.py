"""The fused attention kernel vs the numpy reference: masks, causal, GQA, odd sizes, threads."""

from __future__ import annotations

import numpy as np
import pytest
from satura.engine.graph import Graph
from satura.targets import compile_graph

from tests.targets.helpers import check_compiled, reference

pytestmark = pytest.mark.llvm


def attention_graph(qs, ks, vs, ms=None, seed=0, **attrs):
    """A graph of one attention node over random fp32 q, k, v (and mask)."""
    rng = np.random.default_rng(seed)
    g = Graph("attn")
    names = ["q", "k", "v"] + (["m"] if ms is not None else [])
    shapes = [qs, ks, vs] + ([ms] if ms is not None else [])
    ins = [g.add_input(n, s) for n, s in zip(names, shapes, strict=True)]
    feeds = {
        n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes, strict=True)
    }
    g.set_outputs(g.apply("attention", *ins, **{"scale": 0.35, **attrs}))
    return g, feeds


def check(g, feeds, threads=(1, 2)):
    return check_compiled(g, feeds, threads)


@pytest.mark.parametrize(
    ("qs", "ks", "vs"),
    [
        ((1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)),
        ((2, 3, 37, 64), (2, 3, 300, 64), (2, 3, 300, 64)),  # T not a multiple of a block
        ((1, 2, 130, 64), (1, 2, 1100, 64), (1, 2, 1100, 64)),  # several key blocks: rescaling
        ((1, 1, 1, 5), (1, 1, 7, 5), (1, 1, 7, 3)),  # S=1, T=7, D=5, Dv=3
        ((2, 2, 13, 5), (2, 2, 7, 5), (2, 2, 7, 3)),
        ((3, 24, 16), (3, 40, 16), (3, 40, 24)),  # no batch dims
    ],
)
def test_no_mask(qs, ks, vs):
    check(*attention_graph(qs, ks, vs))


@pytest.mark.parametrize("ms", [(20, 29), (2, 1, 1, 29), (2, 3, 20, 29), (3, 20, 1), (29,)])
def test_mask_broadcast(ms):
    check(*attention_graph((2, 3, 20, 8), (2, 3, 29, 8), (2, 3, 29, 8), ms))


def test_mask_long_rows():
    check(*attention_graph((1, 2, 50, 32), (1, 2, 700, 32), (1, 2, 700, 16), (1, 2, 50, 700)))


@pytest.mark.parametrize(("s", "t"), [(20, 20), (20, 45), (130, 130), (600, 700), (9, 9)])
def test_causal(s, t):
    check(*attention_graph((2, 2, s, 16), (2, 2, t, 16), (2, 2, t, 16), causal=1))


def test_causal_more_queries_than_keys():
    """Rows before the diagonal see no key: the reference gives NaN there, and so must we."""
    g, feeds = attention_graph((1, 2, 12, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=1)
    want = check(g, feeds)
    assert np.isnan(want[g.outputs[0].name][0, :, :7]).all()
    assert np.isfinite(want[g.outputs[0].name][0, :, 7:]).all()


def test_causal_with_mask():
    check(*attention_graph((2, 2, 30, 8), (2, 2, 30, 8), (2, 2, 30, 8), (30, 30), causal=1))


@pytest.mark.parametrize(("hq", "hkv"), [(4, 2), (4, 1), (6, 3)])
def test_grouped_query(hq, hkv):
    check(*attention_graph((2, hq, 17, 16), (2, hkv, 33, 16), (2, hkv, 33, 8)))


def test_broadcast_batch():
    check(*attention_graph((3, 2, 10, 8), (1, 2, 12, 8), (3, 2, 12, 8), (3, 1, 10, 1)))
    check(*attention_graph((1, 4, 10, 8), (2, 4, 12, 8), (1, 4, 12, 8)))
    check(*attention_graph((2, 1, 4, 10, 8), (1, 3, 2, 12, 8), (2, 3, 2, 12, 8)))


def test_masked_out_rows():
    """Rows with every score -inf give NaN like the reference; a large finite mask does not."""
    g, feeds = attention_graph((1, 2, 9, 8), (1, 2, 21, 8), (1, 2, 21, 8), (1, 2, 9, 21))
    feeds["m"][0, 0, 3, :] = -np.inf
    feeds["m"][0, 1, 5, :] = -100.0
    feeds["m"][0, 1, 6, ::2] = -np.inf
    want = check(g, feeds)
    out = want[g.outputs[0].name]
    assert np.isnan(out[0, 0, 3]).all()
    assert np.isfinite(out[0, 1]).all()


def test_negative_scale_and_large_scores():
    g, feeds = attention_graph((1, 2, 11, 8), (1, 2, 19, 8), (1, 2, 19, 8), scale=-3.0)
    check(g, feeds)
    g, feeds = attention_graph((1, 2, 11, 8), (1, 2, 19, 8), (1, 2, 19, 8), scale=40.0)
    check(g, feeds)


def test_self_attention_one_tensor():
    """q, k and v may be one value (the kernel only reads them)."""
    rng = np.random.default_rng(1)
    g = Graph("self")
    x = g.add_input("x", (2, 3, 33, 16))
    g.set_outputs(g.apply("attention", x, x, x, scale=0.25))
    check(g, {"x": rng.standard_normal((2, 3, 33, 16)).astype(np.float32)})


@pytest.mark.parametrize(("causal", "ms"), [(0, None), (1, (1, 1, 200, 300)), (0, (1, 6, 1, 300))])
def test_parallel_shares(causal, ms):
    """Large enough to be split between cores: shares cut heads into query blocks, each part
    packs its own kv heads."""
    g, feeds = attention_graph((1, 6, 200, 64), (1, 3, 300, 64), (1, 3, 300, 48), ms, causal=causal)
    check(g, feeds, threads=(2, 3))
    model = compile_graph(g, threads=2)
    assert any(st.parallel for st in model._prog.steps if st.op == "attention")


@pytest.mark.parametrize("fill", [float(np.finfo(np.float32).min), -1e4, float("-inf")])
@pytest.mark.parametrize("const_mask", [True, False])
@pytest.mark.parametrize("ms", [(20, 29), (2, 1, 1, 29), (2, 3, 20, 29)])
def test_bool_mask(fill, const_mask, ms):
    """A bool mask (GPT-2's causal buffer through where): kept scores stay, the rest become
    mask_fill; rows with every key masked included."""
    rng = np.random.default_rng(5)
    keep = rng.random(ms) < 0.6
    keep[..., :3, :] = False  # fully masked rows
    if keep.shape[-2] > 5:
        keep[..., 5, 2:] = False
    g = Graph("attn_bool")
    q, k, v = (
        g.add_input(n, s)
        for n, s in (("q", (2, 3, 20, 8)), ("k", (2, 3, 29, 8)), ("v", (2, 3, 29, 8)))
    )
    m = g.add_const(keep, "keep") if const_mask else g.add_input("m", ms, "bool")
    g.set_outputs(g.apply("attention", q, k, v, m, scale=0.35, mask_fill=fill))
    feeds = {
        n: rng.standard_normal(s).astype(np.float32)
        for n, s in (("q", (2, 3, 20, 8)), ("k", (2, 3, 29, 8)), ("v", (2, 3, 29, 8)))
    }
    if not const_mask:
        feeds["m"] = keep
    want = reference(g, feeds)
    for t in (1, 2):
        model = compile_graph(g, threads=t)
        # the kernel reads the mask's bytes: nothing runs in numpy, constant mask or not
        assert model.fallback_nodes == []
        got = model(**feeds)
        for name, w in want.items():
            np.testing.assert_allclose(
                got[name], w, rtol=1e-4, atol=1e-5, err_msg=f"{name} threads={t}"
            )


def _causal_masks(s: int, t: int) -> dict[str, tuple[np.ndarray, float | None]]:
    keep = np.tril(np.ones((s, t), bool), t - s)
    lowest = float(np.finfo(np.float32).min)
    return {
        "bool": (keep[None, None], lowest),
        "bool, default fill": (keep, None),  # the op's mask_fill default (-inf)
        "additive -inf": (np.where(keep, 0, -np.inf).astype(np.float32), None),
        "additive lowest": (np.where(keep, 0, lowest).astype(np.float32), None),
    }


@pytest.mark.parametrize("kind", ["bool", "bool, default fill", "additive -inf", "additive lowest"])
@pytest.mark.parametrize(("s", "t"), [(20, 20), (7, 300), (300, 300)])
def test_a_constant_causal_mask_runs_as_causal(kind, s, t):
    """A constant mask that keeps exactly j <= i + T - S (torch's tril buffer, HF's additive
    causal mask) becomes the kernel's causal flag: the keys past the diagonal are skipped."""
    from satura.engine.graph import Value
    from satura.engine.ops import OPS
    from satura.targets.attention import _is_causal_mask

    keep, fill = _causal_masks(s, t)[kind]
    mv = Value("m", None, data=keep)  # type: ignore[arg-type]
    attrs = {"scale": 0.25} | ({} if fill is None else {"mask_fill": fill})
    assert _is_causal_mask(mv, s, t, OPS["attention"].with_defaults(attrs)["mask_fill"])
    rng = np.random.default_rng(s + t)
    g = Graph("attn_causal_const")
    q, k, v = (g.add_input(n, (1, 2, s if n == "q" else t, 16)) for n in "qkv")
    g.set_outputs(g.apply("attention", q, k, v, g.add_const(keep, "m"), **attrs))
    feeds = {
        n: rng.standard_normal((1, 2, s if n == "q" else t, 16)).astype(np.float32) for n in "qkv"
    }
    check(g, feeds)


def test_masks_that_are_not_causal_keep_the_mask():
    from satura.engine.graph import Value
    from satura.targets.attention import _is_causal_mask

    keep = np.tril(np.ones((6, 6), bool))
    lowest = float(np.finfo(np.float32).min)

    def causal(m, fill=-np.inf, s=6, t=6):
        return _is_causal_mask(Value("m", None, data=m), s, t, fill)  # type: ignore[arg-type]

    assert causal(keep, lowest)
    assert not causal(keep, -1e4)  # a fill whose exp is not 0 next to large scores
    assert not causal(np.tril(np.ones((6, 6), bool), 1), lowest)  # another diagonal
    assert not causal(np.stack([keep, ~keep])[None], lowest)  # differs per head
    assert not causal(np.where(keep, 0.5, -np.inf).astype(np.float32))  # a bias on kept scores
    assert not causal(keep[:1], lowest, s=1)  # a broadcast row is a padding mask
