"""satura: an AI compiler built on equality saturation."""

__version__ = "0.1.0"
