"""Triton kernels, importable as `grpo.kernels` (never as a top-level `kernels`).

The Triton backend arrives with the Triton issue; until then AVAILABLE is False and `backend="auto"`
uses the CUDA kernels on GPUs.
"""
AVAILABLE = False
