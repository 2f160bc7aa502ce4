"""Input validation shared by the ops: every failure names the argument, what it got and what was expected."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KERNEL_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}"
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name, t, *, ndim=None, shape=None, floating=False, integer=False, dtypes=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got {describe(t)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {describe(t)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {describe(t)}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor (token ids), got {describe(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {describe(t)}")


def check_same_device(ref_name, ref, **others):
    for name, t in others.items():
        if isinstance(t, torch.Tensor) and t.device != ref.device:
            raise ValueError(f"{name}: expected a tensor on {ref.device} like {ref_name}, got {describe(t)}")


def check_rows_viewable(name, logits):
    """Kernels walk (N, V) rows with a unit vocab stride and one row stride: no hidden [N, V] copy."""
    if logits.shape[-1] > 1 and logits.stride(-1) != 1:
        raise ValueError(f"{name}: the vocab dimension must be contiguous (stride 1), got strides "
                         f"{tuple(logits.stride())}; call .contiguous() first")
    try:
        logits.view(-1, logits.shape[-1])
    except RuntimeError:
        raise ValueError(f"{name}: leading dimensions must flatten into rows without a copy, got strides "
                         f"{tuple(logits.stride())} for {describe(logits)}; call .contiguous() first") from None


def row_stride(logits2d) -> int:
    return logits2d.stride(0) if logits2d.shape[0] > 1 else logits2d.shape[1]


def data_checks_enabled() -> bool:
    """Data-dependent checks (target range, NaN rewards) read values; they are skipped while torch.compile
    traces (the kernels' custom ops still run them eagerly)."""
    return not torch.compiler.is_compiling()


def check_targets_range(name, targets, V):
    if targets.numel() == 0:
        return
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= V:
        bad = ((targets < 0) | (targets >= V)).nonzero()[0].tolist()
        raise ValueError(f"{name}: token ids must lie in [0, {V}) (the vocab size of logits), got min {lo}, "
                         f"max {hi}; first offending index {bad}")


def check_finite(name, t):
    # A NaN or inf anywhere makes the sum non-finite; a finite sum proves every element finite. Only a
    # non-finite sum (which finite values can reach by overflow) takes the elementwise check: one small
    # reduction and one host read on the common path instead of a (B,) bool temporary and a second pass.
    if t.numel() == 0 or math.isfinite(float(t.sum(dtype=torch.float64))):
        return
    if not bool(torch.isfinite(t).all()):
        idx = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name}: expected finite values, got {t[tuple(idx)].item()} at index {idx}")


def check_scalar(name, v, *, positive=False, nonneg=False, allow_none=True):
    if v is None and allow_none:
        return
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise TypeError(f"{name}: expected a finite number, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    if nonneg and v < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
