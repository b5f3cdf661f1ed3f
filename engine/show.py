"""Draw graphs as SVG: one column per graph, nodes in layers by depth, edges as lines.

No dependency on graphviz: the layout is the longest-path layering, good enough to see what a
rewrite changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from satura.engine.graph import Graph

BOX_W, BOX_H, GAP_X, GAP_Y = 150, 28, 20, 26


def _layers(g: Graph) -> dict[int, tuple[int, int]]:
    """id(node or input) -> (layer, slot)."""
    depth: dict[int, int] = {id(v): 0 for v in g.inputs}
    pos: dict[int, tuple[int, int]] = {}
    slots: dict[int, int] = {}
    for v in g.inputs:
        pos[id(v)] = (0, slots.setdefault(0, 0))
        slots[0] += 1
    for n in g.nodes:
        d = 1 + max((depth.get(id(v), 0) for v in n.inputs if v is not None), default=0)
        for o in n.outputs:
            depth[id(o)] = d
        pos[id(n)] = (d, slots.get(d, 0))
        slots[d] = slots.get(d, 0) + 1
    return pos


def graph_svg_body(g: Graph, x0: int, title: str) -> tuple[list[str], int, int]:
    pos = _layers(g)
    producer = {id(o): n for n in g.nodes for o in n.outputs}
    parts = [
        f'<text x="{x0}" y="16" font-weight="bold">{escape(title)} ({len(g.nodes)} nodes)</text>'
    ]

    def xy(key: int) -> tuple[int, int]:
        layer, slot = pos[key]
        return x0 + slot * (BOX_W + GAP_X), 30 + layer * (BOX_H + GAP_Y)

    for n in g.nodes:
        x, y = xy(id(n))
        for v in n.inputs:
            if v is None:
                continue
            src = producer.get(id(v))
            key = id(src) if src is not None else id(v)
            if key in pos:
                sx, sy = xy(key)
                parts.append(
                    f'<line x1="{sx + BOX_W // 2}" y1="{sy + BOX_H}" '
                    f'x2="{x + BOX_W // 2}" y2="{y}" stroke="#888"/>'
                )
    for v in g.inputs:
        x, y = xy(id(v))
        parts.append(
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="12" '
            f'fill="#e8f0ff" stroke="#446"/><text x="{x + 6}" y="{y + 18}">'
            f"{escape(v.name[:20])}</text>"
        )
    for n in g.nodes:
        x, y = xy(id(n))
        label = n.op if n.op != "linear" else f"linear[{n.attrs.get('act', 'none')}]"
        parts.append(
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="3" '
            f'fill="#fff6e0" stroke="#664"/><text x="{x + 6}" y="{y + 18}">'
            f"{escape(label[:20])}</text>"
        )
    width = max((p[1] + 1 for p in pos.values()), default=1) * (BOX_W + GAP_X)
    height = 30 + (max((p[0] for p in pos.values()), default=0) + 1) * (BOX_H + GAP_Y)
    return parts, width, height


def graphs_to_svg(graphs: Sequence[tuple[str, Graph]]) -> str:
    """One SVG with the graphs side by side, titled."""
    parts: list[str] = []
    x0, height = 10, 0
    for title, g in graphs:
        body, w, h = graph_svg_body(g, x0, title)
        parts += body
        x0 += w + 40
        height = max(height, h)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{x0}" height="{height + 10}" '
        f'font-family="monospace" font-size="12">' + "".join(parts) + "</svg>\n"
    )
