"""Representation-misdirection unlearning (RMU, Adaptive RMU, RNA) of LLMs, driven by Hydra configs."""

__version__ = "0.1.0"
