"""token_logprobs: log-probability of the target token (and the entropy) per position, one read of the
logits, no [N, V] float32 temporary. Differentiable: the backward is one more pass over the logits.

Order: reference -> launchers -> custom ops + autograd -> functional API.
"""
from __future__ import annotations

import torch

from . import _backend, _checks


# --- reference (the spec) -----------------------------------------------------------------------------
def logprobs_at_dtype(logits, targets, temperature=1.0, with_entropy=False):
    """Naive reference at the logits' dtype (TRL selective_log_softmax / entropy_from_logits).

    logits (..., V), targets (...) int -> logp (...) [, entropy (...)] in logits.dtype.
    """
    z = logits / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, None
    p = logp_all.exp()
    entropy = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(-1)
    return logp, entropy


def token_logprobs_ref(logits, targets, *, temperature=1.0, with_entropy=False):
    """Reference: logp (...) float32 (float64 for float64 logits) [, entropy (...)]."""
    out = torch.promote_types(logits.dtype, torch.float32)
    logp, ent = logprobs_at_dtype(logits, targets, temperature, with_entropy)
    return (logp.to(out), ent.to(out)) if with_entropy else logp.to(out)


# --- launchers ----------------------------------------------------------------------------------------
def launch_logprobs(logits2d, targets1d, temperature, with_entropy, want_stats=True, backend="cpu", logp_lo=None):
    """(N, V) logits, (N,) int64 targets -> logp (N,), stats (N, 2) [row max, log sum exp(z - max)],
    entropy (N,), all float32 (stats/entropy may be None). `backend`: a resolved one ("cpu", "cuda",
    "triton"); "cpu" and "cuda" both go to grpo._C, which picks the device from the tensor. `logp_lo`
    (N,) float32, optional, receives logp's rounding residual (logp + logp_lo is the unrounded value)."""
    if backend == "triton":
        from grpo.kernels import logprobs as tk
        return tk.logprobs(logits2d, targets1d, temperature, with_entropy, want_stats, logp_lo=logp_lo)
    N, V = logits2d.shape
    f32 = dict(dtype=torch.float32, device=logits2d.device)
    logp = torch.empty(N, **f32)
    stats = torch.empty(N, 2, **f32) if want_stats else None
    ent = torch.empty(N, **f32) if with_entropy else None
    _backend.native().logprobs(
        **_backend.launch_args(logits2d), logits=logits2d.data_ptr(), targets=targets1d.data_ptr(),
        logp=logp.data_ptr(), stats=_backend.ptr(stats), entropy=_backend.ptr(ent), N=N, V=V,
        row_stride=_checks.row_stride(logits2d), temperature=float(temperature),
        dtype=_checks.KERNEL_DTYPE_CODES[logits2d.dtype], logp_lo=_backend.ptr(logp_lo))
    return logp, stats, ent


def launch_softmax_grad(logits2d, targets1d, stats, entropy, g_logp, g_ent, temperature, out=None, backend="cpu"):
    """dlogits (N, V) in the logits' dtype: d/dz of sum(g_logp * logp + g_ent * entropy). `out` may be
    logits2d itself (in place)."""
    if backend == "triton":
        from grpo.kernels import logprobs as tk
        return tk.softmax_grad(logits2d, targets1d, stats, entropy, g_logp, g_ent, temperature, out=out)
    N, V = logits2d.shape
    out = torch.empty((N, V), dtype=logits2d.dtype, device=logits2d.device) if out is None else out
    _backend.native().softmax_grad(
        **_backend.launch_args(logits2d), logits=logits2d.data_ptr(), targets=targets1d.data_ptr(),
        stats=stats.data_ptr(), entropy=_backend.ptr(entropy), g_logp=g_logp.data_ptr(), g_ent=_backend.ptr(g_ent),
        dlogits=out.data_ptr(), N=N, V=V, row_stride=_checks.row_stride(logits2d),
        grad_row_stride=_checks.row_stride(out), temperature=float(temperature),
        dtype=_checks.KERNEL_DTYPE_CODES[logits2d.dtype])
    return out


# --- custom ops (opaque to torch.compile) + autograd -----------------------------------------------------
@torch.library.custom_op("grpo::token_logprobs", mutates_args=())
def _logprobs_op(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    V = logits.shape[-1]
    _checks.check_targets_range("targets", targets, V)
    logp, stats, ent = launch_logprobs(logits.view(-1, V), targets.reshape(-1), temperature, with_entropy, backend=backend)
    ent = ent if ent is not None else logp.new_empty(0)
    return logp.view(targets.shape), stats, ent.view(targets.shape) if with_entropy else ent


@_logprobs_op.register_fake
def _(logits, targets, temperature, with_entropy, backend):
    N = targets.numel()
    ent = logits.new_empty(targets.shape, dtype=torch.float32) if with_entropy else logits.new_empty(0, dtype=torch.float32)
    return (logits.new_empty(targets.shape, dtype=torch.float32), logits.new_empty((N, 2), dtype=torch.float32), ent)


@torch.library.custom_op("grpo::softmax_grad", mutates_args=())
def _softmax_grad_op(logits: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, entropy: torch.Tensor,
                     g_logp: torch.Tensor, g_ent: torch.Tensor, temperature: float, backend: str) -> torch.Tensor:
    V = logits.shape[-1]
    has_ent = g_ent.numel() > 0
    out = launch_softmax_grad(logits.view(-1, V), targets.reshape(-1), stats,
                              entropy.reshape(-1).contiguous() if has_ent else None,
                              g_logp.reshape(-1).to(torch.float32).contiguous(),
                              g_ent.reshape(-1).to(torch.float32).contiguous() if has_ent else None, temperature,
                              backend=backend)
    return out.view(logits.shape)


@_softmax_grad_op.register_fake
def _(logits, targets, stats, entropy, g_logp, g_ent, temperature, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, targets, temperature, with_entropy, backend = inputs
    _, stats, ent = output
    ctx.save_for_backward(logits, targets, stats, ent)
    ctx.temperature, ctx.with_entropy, ctx.backend = temperature, with_entropy, backend


def _backward(ctx, g_logp, g_stats, g_ent):
    logits, targets, stats, ent = ctx.saved_tensors
    if g_ent is None or not ctx.with_entropy:
        g_ent = ent.new_empty(0)
    if g_logp is None:
        g_logp = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    dlogits = _softmax_grad_op(logits, targets, stats, ent, g_logp, g_ent, ctx.temperature, ctx.backend)
    return dlogits, None, None, None, None


_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


# --- functional API -----------------------------------------------------------------------------------
def check_logits_targets(logits, targets, dtypes=_checks.FLOAT_DTYPES):
    _checks.check_tensor("logits", logits, floating=True, dtypes=dtypes)
    _checks.check_tensor("targets", targets, integer=True)
    if logits.dim() < 2:
        raise ValueError(f"logits: expected (..., V) with at least 2 dims, got {_checks.describe(logits)}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits without the vocab dim), "
                         f"got {_checks.describe(targets)}")
    _checks.check_same_device("logits", logits, targets=targets)


def token_logprobs(logits, targets, *, temperature=1.0, with_entropy=False, backend="auto"):
    """logits (B, T, V) fp32/bf16/fp16 (any leading dims), targets (B, T) int ->
    logp (B, T) float32 [, entropy (B, T) float32]. Differentiable in the logits."""
    backend_req = backend
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if backend_req == "torch" else ())
    check_logits_targets(logits, targets, dtypes)
    _checks.check_scalar("temperature", temperature, positive=True, allow_none=False)
    backend = _backend.resolve(backend, logits)
    if backend == "torch":
        if _checks.data_checks_enabled():
            _checks.check_targets_range("targets", targets, logits.shape[-1])
        return token_logprobs_ref(logits, targets, temperature=temperature, with_entropy=with_entropy)
    _checks.check_rows_viewable("logits", logits)
    targets = targets.to(torch.int64).contiguous()
    logp, _, ent = _logprobs_op(logits, targets, float(temperature), bool(with_entropy), backend)
    return (logp, ent) if with_entropy else logp
