"""satura.engine: op registry, Graph, ONNX import, shapes, rule language, e-graph, saturation."""
