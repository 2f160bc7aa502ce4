"""Backend resolution and the bridge to grpo._C (the only module that touches it)."""
from __future__ import annotations

import os

import torch

from grpo.ops._checks import KERNEL_DTYPE_CODES, row_stride

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")
_C = None


def native():
    """grpo._C, imported on first use with a build hint when it is missing."""
    global _C
    if _C is None:
        try:
            from grpo import _C as mod
        except ImportError as e:
            raise ImportError(f"grpo._C is not built ({e}); run `make build` or `pip install -e .`") from e
        _C = mod
    return _C


def resolve(backend: str, t: torch.Tensor, arg: str = "logits") -> str:
    """Maps `backend` to a concrete one for tensor `t` and checks that they are compatible."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if t.is_cuda:
            backend = "cuda" if os.environ.get("GRPO_BACKEND") == "cuda" or not triton_available() else "triton"
        elif t.device.type == "cpu":
            backend = "cpu"
        else:
            backend = "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton': the Triton kernels are not available in this build")
        if not t.is_cuda and not triton_on_cpu():
            raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU "
                             f"interpreter); {arg} is on {t.device}")
    if backend == "cpu" and t.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors; {arg} is on {t.device}")
    if backend == "cuda" and not t.is_cuda:
        raise ValueError(f"backend='cuda' needs CUDA tensors; {arg} is on {t.device}")
    return backend


def triton_available() -> bool:
    """The Triton backend lands with grpo.kernels' ops; until then auto never picks it."""
    try:
        from grpo import kernels
    except ImportError:
        return False
    return bool(getattr(kernels, "AVAILABLE", False))


def triton_on_cpu() -> bool:
    """backend='triton' on CPU tensors runs Triton's interpreter, under TRITON_INTERPRET=1 (read by triton
    when the kernels are defined, so it must be set before grpo.kernels is imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch_args(t: torch.Tensor) -> dict:
    """device code, stream handle and thread count for a grpo._C host function."""
    if t.is_cuda:
        return {"device": 1, "stream": torch.cuda.current_stream(t.device).cuda_stream, "num_threads": 1}
    return {"device": 0, "stream": 0, "num_threads": torch.get_num_threads()}


def rows_on_chip_knob() -> tuple[int, bool]:
    """GRPO_ROWS_ON_CHIP, a measurement knob for the CUDA fused loss's rows-on-chip kernel: 0 keeps it off,
    1 (or unset) its default plan, 4 / 8 / 16 that many 16-byte vectors a thread (clusters of up to 16
    blocks); a trailing "p" (e.g. 16p) runs it on a persistent grid that prefetches each cluster's next row.
    Returns (policy, prefetch): csrc/params.h FusedLossParams.rows_on_chip and rows_prefetch."""
    value = os.environ.get("GRPO_ROWS_ON_CHIP", "1")
    policy, prefetch = (value[:-1], True) if value.endswith("p") else (value, False)
    if policy not in ("0", "1", "4", "8", "16") or (prefetch and policy == "0"):
        raise ValueError(f"GRPO_ROWS_ON_CHIP: expected 0, or 1, 4, 8 or 16 with an optional trailing p, got {value!r}")
    return int(policy), prefetch


def rows_on_chip(rows: torch.Tensor) -> bool:
    """Whether the CUDA fused loss reads each row of `rows` (N, V) once for both the loss and dlogits: on
    sm_90 a cluster of blocks holds a row in registers (csrc/cuda/loss.cu, resident_loss_kernel) when its
    rows are whole 16-byte vectors at 16-byte aligned addresses and V is within the kernel's range (the
    launcher's own rule, asked through grpo._C)."""
    policy, _ = rows_on_chip_knob()
    if not rows.is_cuda or policy == 0 or rows.dim() != 2 or rows.dtype not in KERNEL_DTYPE_CODES:
        return False
    with torch.cuda.device(rows.device):
        plan = native().cuda_rows_on_chip(rows.shape[1], KERNEL_DTYPE_CODES[rows.dtype], policy=policy,
                                          logits=rows.data_ptr(), row_stride=row_stride(rows))
    return plan[0] != 0


def ptr(t):
    """data_ptr of an optional tensor (0 for None)."""
    return 0 if t is None else t.data_ptr()
