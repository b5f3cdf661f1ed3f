"""satura.extract: hardware profiles, the cost model, extractors and serialized e-graph I/O."""

from satura.extract.cost import Roofline, graph_time, node_roofline, node_time, symbol_hint
from satura.extract.egraph_data import EGraphData, ENode, load_serialized, to_serialized
from satura.extract.greedy import check_choices, dag_cost, dag_greedy, tree_cost, tree_greedy
from satura.extract.hardware import PROFILES, HardwareProfile, get_profile, host_cpu
from satura.extract.ilp import IlpResult, ilp_extract

__all__ = [
    "PROFILES",
    "EGraphData",
    "ENode",
    "HardwareProfile",
    "IlpResult",
    "Roofline",
    "check_choices",
    "dag_cost",
    "dag_greedy",
    "get_profile",
    "graph_time",
    "host_cpu",
    "ilp_extract",
    "load_serialized",
    "node_roofline",
    "node_time",
    "symbol_hint",
    "to_serialized",
    "tree_cost",
    "tree_greedy",
]
