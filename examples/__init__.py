"""Example models for satura: real architectures built in code (``examples.models``), their
torch counterparts and exports (``examples.torch_models``, needs torch), and a builder CLI
(``python -m examples.build --out DIR``)."""
