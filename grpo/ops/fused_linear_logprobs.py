"""fused_linear_logprobs: the no-grad logprob (+ entropy) pass from hidden states and the lm_head (old and
reference logprobs), chunked over tokens like fused_linear_grpo_loss's tokens schedule, so no [N, V] logits
tensor exists: per chunk, logits = h_chunk @ W^T (+ b) in the input dtype, then one read of them by the
logprobs kernel.

Order: reference -> launcher -> custom op -> functional API.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from .fused_linear import _check_chunk, _check_linear, _chunk_logits, chunk_bounds, materialize_logits, plan_chunk
from .logprobs import launch_logprobs, token_logprobs_ref


# --- reference (the spec) -----------------------------------------------------------------------------
def fused_linear_logprobs_ref(hidden, weight, targets, *, temperature=1.0, with_entropy=False, bias=None):
    """Reference: token_logprobs_ref of the materialized logits."""
    return token_logprobs_ref(materialize_logits(hidden, weight, bias), targets, temperature=temperature,
                              with_entropy=with_entropy)


# --- launcher -----------------------------------------------------------------------------------------
def launch_fused_linear_logprobs(h2d, weight, bias, t1d, temperature, with_entropy, chunk, backend="cpu"):
    """h2d (N, H), weight (V, H), t1d (N,) int64 -> logp (N,), entropy (N,) or None, float32; no gradient."""
    N = h2d.shape[0]
    f32 = dict(dtype=torch.float32, device=h2d.device)
    logp, ent = torch.empty(N, **f32), torch.empty(N, **f32) if with_entropy else None
    buf = torch.empty(min(chunk, N), weight.shape[0], dtype=h2d.dtype, device=h2d.device)
    for s, e in chunk_bounds(N, chunk):
        lp, _, en = launch_logprobs(_chunk_logits(h2d, weight, bias, s, e, buf), t1d[s:e], temperature,
                                    with_entropy, want_stats=False, backend=backend)
        logp[s:e] = lp
        if ent is not None:
            ent[s:e] = en
    return logp, ent


# --- custom op (opaque to torch.compile) --------------------------------------------------------------
@torch.library.custom_op("grpo::fused_linear_logprobs", mutates_args=())
def _logprobs_op(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 temperature: float, with_entropy: bool, chunk: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    V, H = weight.shape
    _checks.check_targets_range("targets", targets, V)
    logp, ent = launch_fused_linear_logprobs(hidden.reshape(-1, H), weight, bias, targets.reshape(-1), temperature,
                                             with_entropy, chunk, backend)
    return logp.view(targets.shape), ent.view(targets.shape) if ent is not None else logp.new_empty(0)


@_logprobs_op.register_fake
def _(hidden, weight, bias, targets, temperature, with_entropy, chunk, backend):
    f = dict(dtype=torch.float32)
    return targets.new_empty(targets.shape, **f), targets.new_empty(targets.shape if with_entropy else (0,), **f)


# --- functional API -----------------------------------------------------------------------------------
def fused_linear_logprobs(hidden, weight, targets, *, temperature=1.0, with_entropy=False, bias=None,
                          chunk_tokens=None, backend="auto"):
    """No-grad logprobs of the targets from hidden states and the lm_head (old / reference passes).

    hidden (B, T, H) (any leading dims), weight (V, H), bias (V,) or None, targets (B, T) int ->
    logp (B, T) float32 [, entropy (B, T) float32]. Chunked like fused_linear_grpo_loss (no [N, V] tensor);
    backend "torch" materializes the logits (the reference)."""
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if backend == "torch" else ())
    _check_linear(hidden, weight, bias, targets, dtypes)
    _checks.check_scalar("temperature", temperature, positive=True, allow_none=False)
    _check_chunk(chunk_tokens)
    backend = _backend.resolve(backend, hidden, "hidden")
    with torch.no_grad():
        if backend == "torch":
            if _checks.data_checks_enabled():
                _checks.check_targets_range("targets", targets, weight.shape[0])
            return fused_linear_logprobs_ref(hidden, weight, targets, temperature=temperature,
                                             with_entropy=with_entropy, bias=bias)
        H = hidden.shape[-1]
        chunk = plan_chunk(targets.numel(), H, weight.shape[0], chunk_tokens, cuda=hidden.is_cuda)
        logp, ent = _logprobs_op(hidden.detach(), weight.detach(), None if bias is None else bias.detach(),
                                 targets.to(torch.int64).contiguous(), float(temperature), bool(with_entropy), chunk,
                                 backend)
    return (logp, ent) if with_entropy else logp
