"""Coarse-to-fine evaluation of LLM inference efficiency."""

__version__ = "0.1.0"
