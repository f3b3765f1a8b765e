"""Measured half of the fine-grained analysis: per-op time (and DRAM bytes on a GPU), sweeps, time model."""
