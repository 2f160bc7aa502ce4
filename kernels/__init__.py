"""Triton kernels, importable as `grpo.kernels` (never as a top-level `kernels`).

One op per module, each ordered @triton.jit kernels -> launch configuration -> a Python launcher on torch
tensors: `advantages` (group advantages), `logprobs` (selective log-softmax + entropy, softmax gradient),
`loss` (fused GRPO token loss with optional in-place dlogits; per-sequence head). They import nothing from
the engine; `grpo.ops` calls them for `backend="triton"`.

AVAILABLE is True when triton imports and either a CUDA device is present (compiled kernels) or
TRITON_INTERPRET=1 was set before triton was imported (Triton's CPU interpreter: slow, for tests).
"""
import os

try:
    import triton  # noqa: F401
    import torch

    AVAILABLE = bool(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
except ImportError:  # no triton in this environment
    AVAILABLE = False
