"""grpo_loss: the clipped GRPO policy loss (+ KL, importance-sampling correction) from logits, forward
and backward fused: one read pass and one read+write pass over [N, V]; the backward only scales the
saved dlogits by the upstream gradient.

Order: reference -> metrics -> launchers -> custom op + autograd -> functional API.
"""
from __future__ import annotations

import os

import torch

from . import _backend, _checks
from .config import LossConfig, LossOutput
from .logprobs import (_softmax_grad_op, check_logits_targets, launch_logprobs, launch_softmax_grad,
                       logprobs_at_dtype)
from .variants import AGGREGATIONS, IS_MODES, IS_NONE_CODE, KL_ESTIMATORS, RATIO_LEVELS


# --- reference (the spec) -----------------------------------------------------------------------------
def per_token_loss_ref(logp, mask, advantages, old_logp, ref_logp, sampling_logp, config):
    """TRL GRPOTrainer._compute_loss, per token. logp (B, T) with grad; returns (B, T)."""
    old = logp.detach() if old_logp is None else old_logp.to(logp.dtype)
    log_w = RATIO_LEVELS.get(config.ratio_level).fn(logp, old, mask)  # (B, T) or (B, 1)
    coef_1 = torch.exp(log_w)
    coef_2 = torch.clamp(coef_1, 1 - config.eps_low, 1 + config.eps_high)
    A = advantages.to(logp.dtype).unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * A, coef_2 * A)
    if config.dual_clip is not None:  # verl compute_policy_loss clip_ratio_c
        per_token_loss = torch.where(A < 0, torch.min(per_token_loss, -config.dual_clip * A), per_token_loss)
    if config.is_mode is not None:  # TRL vllm_importance_sampling_correction
        samp = sampling_logp.to(logp.dtype)
        per_token_loss = per_token_loss * IS_MODES.get(config.is_mode).fn(old.detach(), samp, mask, config.is_cap)
    if config.beta != 0.0:
        per_token_loss = per_token_loss + config.beta * KL_ESTIMATORS.get(config.kl).fn(logp, ref_logp.to(logp.dtype))
    return per_token_loss


def grpo_loss_ref(logits, targets, mask, advantages, *, old_logp=None, ref_logp=None, sampling_logp=None,
                  config=LossConfig(), num_tokens=None, num_sequences=None):
    """Reference GRPO loss, computed naively at the logits' dtype (log_softmax over [N, V]); the per-token
    math runs in float32 (float64 for float64 logits). Returns LossOutput(loss () , metrics)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    lp, ent = logprobs_at_dtype(logits, targets, config.temperature, config.entropy)
    logp = lp.to(dtype)
    m = mask.to(dtype)
    ptl = per_token_loss_ref(logp, m, advantages, old_logp, ref_logp, sampling_logp, config)
    loss = AGGREGATIONS.get(config.loss_agg).fn(ptl, m, num_tokens, num_sequences, config.max_completion_length)
    metrics = loss_metrics(logp.detach(), m, advantages, old_logp, ref_logp, sampling_logp, config,
                           None if ent is None else ent.detach().to(dtype))
    return LossOutput(loss, metrics)


# --- metrics (detached, shared by every backend) ------------------------------------------------------
def loss_metrics(logp, mask, advantages, old_logp, ref_logp, sampling_logp, config, entropy=None):
    """Masked means over tokens: KL, clip fractions (TRL's low/high region), ratio mean/min/max, IS weight
    mean and fraction truncated or masked, entropy. All () float32 tensors, no host sync."""
    with torch.no_grad():
        m = mask.to(logp.dtype)
        n = m.sum().clamp(min=1.0)
        has = m > 0
        mean = lambda x: (x * m).sum() / n  # noqa: E731
        old = logp if old_logp is None else old_logp.to(logp.dtype)
        ratio = torch.exp(RATIO_LEVELS.get(config.ratio_level).fn(logp, old, m)).expand_as(logp)
        A = advantages.to(logp.dtype).unsqueeze(1)
        out = {
            "clip_frac_low": mean(((ratio < 1 - config.eps_low) & (A < 0)).to(logp.dtype)),
            "clip_frac_high": mean(((ratio > 1 + config.eps_high) & (A > 0)).to(logp.dtype)),
            "ratio_mean": mean(ratio),
            "ratio_min": torch.where(has, ratio, torch.full_like(ratio, float("inf"))).amin().clamp(max=1e30),
            "ratio_max": torch.where(has, ratio, torch.full_like(ratio, float("-inf"))).amax().clamp(min=-1e30),
            "num_tokens": m.sum(),
        }
        if ref_logp is not None:
            out["kl"] = mean(KL_ESTIMATORS.get(config.kl).fn(logp, ref_logp.to(logp.dtype)))
        if config.is_mode is not None:
            w = IS_MODES.get(config.is_mode).fn(old, sampling_logp.to(logp.dtype), m, config.is_cap).expand_as(logp)
            raw = torch.exp(((old - sampling_logp) * m).sum(-1, keepdim=True)) if config.is_mode.startswith(
                "sequence") else torch.exp(old - sampling_logp)
            out["is_weight_mean"] = mean(w)
            out["is_frac_truncated"] = mean((raw.expand_as(logp) > config.is_cap).to(logp.dtype))
        if entropy is not None:
            out["entropy"] = mean(entropy.to(logp.dtype))
        return {k: v.to(torch.float32) for k, v in out.items()}


# --- launchers ----------------------------------------------------------------------------------------
def head_options(config: LossConfig) -> dict:
    """The LossConfig values the per-token head kernels take (variant names as csrc/params.h codes)."""
    return dict(eps_low=config.eps_low, eps_high=config.eps_high, dual_clip=config.dual_clip or 0.0,
                beta=config.beta, is_cap=config.is_cap, kl=KL_ESTIMATORS.get(config.kl).code,
                is_mode=IS_NONE_CODE if config.is_mode is None else IS_MODES.get(config.is_mode).code)


def _ratio_code(config: LossConfig) -> int:
    return RATIO_LEVELS.get(config.ratio_level).code


def launch_loss_head(logp, mask, coef, adv, old, ref, samp, config: LossConfig, backend="cpu", logp_lo=None):
    """The per-sequence GRPO head over all tokens (needed first by sequence-level ratios and IS weights):
    logp (N,), mask / coef / old / ref / samp (B, T), adv (B,), all float32 -> tok_loss (N,), g (N,).
    logp_lo (N,), optional: logp's rounding residual from launch_logprobs; the sequence sums then read the
    unrounded logp (T roundings would otherwise add up in exp(sum), the sequence IS weight)."""
    B, T = mask.shape
    if backend == "triton":
        from grpo.kernels import loss as tk
        tok_loss, g = tk.sequence_head(logp.view(B, T), mask, coef, adv, old, ref, samp,
                                       ratio_level=_ratio_code(config), logp_lo=logp_lo, **head_options(config))
        return tok_loss.reshape(-1), g.reshape(-1)
    tok_loss, g = torch.empty_like(logp), torch.empty_like(logp)
    _backend.native().loss_head(
        **_backend.launch_args(logp), logp=logp.data_ptr(), old_logp=_backend.ptr(old), ref_logp=_backend.ptr(ref),
        sampling_logp=_backend.ptr(samp), mask=mask.data_ptr(), coef=coef.data_ptr(), advantages=adv.data_ptr(),
        tok_loss=tok_loss.data_ptr(), g_logp=g.data_ptr(), B=B, T=T, ratio_level=_ratio_code(config),
        logp_lo=_backend.ptr(logp_lo), **head_options(config))
    return tok_loss, g


def launch_loss(logits2d, targets1d, mask, coef, adv, old, ref, samp, config: LossConfig, dlogits=None,
                backend="cpu"):
    """Kernel path. logits2d (N, V); mask/coef/old/ref/samp (B, T) float32; adv (B,) float32.

    Returns (tok_loss (N,), logp (N,), entropy (N,) or None, stats (N, 2), g (N,) = dLoss/dlogp), all float32.
    With `dlogits` (N, V) given (it may be logits2d itself: in place), the same launch also writes the
    unscaled gradient while each row is hot: the one-launch forward+backward the fused linear op uses."""
    if config.tokenwise:  # one launch: row stats -> per-token head (-> dlogits while the row is hot)
        return _launch_fused_loss(logits2d, targets1d, mask, coef, adv, old, ref, samp, config, dlogits, backend)
    # Sequence-level ratio or IS weight: a token's gradient needs its whole sequence first, so row stats ->
    # per-sequence head -> softmax-gradient pass (no [N, V] temporary).
    lo = torch.empty(targets1d.shape, dtype=torch.float32, device=logits2d.device)
    logp, stats, ent = launch_logprobs(logits2d, targets1d, config.temperature, config.entropy, True, backend,
                                       logp_lo=lo)
    tok_loss, g = launch_loss_head(logp, mask, coef, adv, old, ref, samp, config, backend, logp_lo=lo)
    if dlogits is not None:
        launch_softmax_grad(logits2d, targets1d, stats, None, g, None, config.temperature, out=dlogits,
                            backend=backend)
    return tok_loss, logp, ent, stats, g


def _launch_fused_loss(logits2d, targets1d, mask, coef, adv, old, ref, samp, config, dlogits, backend):
    """The token-level fused launch of launch_loss (same arguments and outputs) on grpo.kernels or grpo._C."""
    B, T = mask.shape
    if backend == "triton":
        from grpo.kernels import loss as tk
        flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731  (B, T) contiguous -> (N,)
        return tk.fused_loss(logits2d, targets1d, flat(coef), adv, flat(old), flat(ref), flat(samp),
                             mask=flat(mask), T_seq=T, temperature=config.temperature, entropy=config.entropy,
                             dlogits=dlogits, **head_options(config))
    N, V = logits2d.shape
    f32 = dict(dtype=torch.float32, device=logits2d.device)
    tok_loss, g, logp = torch.empty(N, **f32), torch.empty(N, **f32), torch.empty(N, **f32)
    stats = torch.empty(N, 2, **f32)
    ent = torch.empty(N, **f32) if config.entropy else None
    policy, prefetch = _backend.rows_on_chip_knob()
    _backend.native().fused_loss(
        **_backend.launch_args(logits2d), V=V, logits=logits2d.data_ptr(), targets=targets1d.data_ptr(),
        logp=logp.data_ptr(), stats=stats.data_ptr(), entropy=_backend.ptr(ent),
        row_stride=_checks.row_stride(logits2d), temperature=float(config.temperature),
        dtype=_checks.KERNEL_DTYPE_CODES[logits2d.dtype], dlogits=_backend.ptr(dlogits),
        grad_row_stride=_checks.row_stride(dlogits) if dlogits is not None else V,
        old_logp=_backend.ptr(old), ref_logp=_backend.ptr(ref), sampling_logp=_backend.ptr(samp),
        mask=mask.data_ptr(), coef=coef.data_ptr(), advantages=adv.data_ptr(), tok_loss=tok_loss.data_ptr(),
        g_logp=g.data_ptr(), B=B, T=T, ratio_level=_ratio_code(config),
        rows_on_chip=policy, rows_prefetch=prefetch, **head_options(config))
    return tok_loss, logp, ent, stats, g


def kernel_inputs(mask, advantages, old_logp, ref_logp, sampling_logp, config, num_tokens, num_sequences):
    """What the kernels take besides the logits: mask (B, T) and its aggregation weights coef (B, T), and
    advantages / old / ref / sampling logprobs, all contiguous float32; ref is None when beta is 0 and
    sampling None without an IS mode (the kernels then never read them)."""
    m = mask.to(torch.float32).contiguous()
    coef = AGGREGATIONS.get(config.loss_agg).extra(m, num_tokens, num_sequences, config.max_completion_length)
    ref = _f32(ref_logp) if config.beta != 0.0 else None
    samp = _f32(sampling_logp) if config.is_mode is not None else None
    return m, coef.to(torch.float32).contiguous(), _f32(advantages), _f32(old_logp), ref, samp


def _f32(t):
    return None if t is None else t.to(torch.float32).contiguous()


# --- custom ops + autograd ----------------------------------------------------------------------------
# For the (backend, dtype) pairs in FORWARD_GRAD (below), when the logits need a gradient, the forward
# writes dlogits for an upstream gradient of 1 in the same launch as the loss, while each row is hot (one
# read of the logits from memory, one write of dlogits): `loss.backward()` then has nothing left to do.
# Elsewhere the backward reads the logits once more and writes dlogits. Any other upstream gradient (a loss
# scaled after the op) makes the backward recompute dlogits with g * g_out folded in before the single
# rounding to the logits' dtype (one more read + write; pass num_tokens / num_sequences instead of
# scaling the loss to stay on the fast path).
@torch.library.custom_op("grpo::grpo_loss", mutates_args=())
def _loss_op(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor,
             advantages: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
             sampling_logp: torch.Tensor | None, eps_low: float, eps_high: float, dual_clip: float, beta: float,
             kl: str, ratio_level: str, is_mode: str, is_cap: float, temperature: float, entropy: bool,
             want_grad: bool, backend: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    config = LossConfig(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip or None, beta=beta, kl=kl,
                        ratio_level=ratio_level, is_mode=is_mode or None, is_cap=is_cap, temperature=temperature,
                        entropy=entropy)
    dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if want_grad else None
    loss, logp, ent, stats, g = _run_loss(logits, targets, mask, coef, advantages, old_logp, ref_logp,
                                          sampling_logp, config, dlogits, backend)
    dlogits = dlogits if dlogits is not None else logits.new_empty(0)
    return loss, logp, ent, stats, g, dlogits


def _run_loss(logits, targets, mask, coef, adv, old, ref, samp, config, dlogits, backend):
    """The eager body of both autograd paths: target check, launch_loss over (N, V) rows (dlogits (B, T, V)
    or None; it may be the logits themselves), and the loss as sum(coef * tok_loss) in fp64. Returns loss
    (), logp (B, T), entropy (B, T) or an empty tensor, stats (N, 2), g (N,)."""
    V = logits.shape[-1]
    _checks.check_targets_range("targets", targets, V)
    tok_loss, logp, ent, stats, g = launch_loss(logits.view(-1, V), targets.reshape(-1), mask, coef, adv, old, ref,
                                                samp, config, dlogits=None if dlogits is None else dlogits.view(-1, V),
                                                backend=backend)
    loss = (tok_loss.view(mask.shape).double() * coef).sum().to(torch.float32)
    ent = ent.view(mask.shape) if ent is not None else logp.new_empty(0)
    return loss, logp.view(mask.shape), ent, stats, g


@_loss_op.register_fake
def _(logits, targets, mask, coef, advantages, old_logp, ref_logp, sampling_logp, eps_low, eps_high, dual_clip,
      beta, kl, ratio_level, is_mode, is_cap, temperature, entropy, want_grad, backend):
    f = dict(dtype=torch.float32)
    N = mask.numel()
    ent = mask.new_empty(mask.shape, **f) if entropy else mask.new_empty(0, **f)
    dl = torch.empty_like(logits, memory_format=torch.contiguous_format) if want_grad else logits.new_empty(0)
    return (mask.new_empty((), **f), mask.new_empty(mask.shape, **f), ent, mask.new_empty((N, 2), **f),
            mask.new_empty(N, **f), dl)


def _setup_context(ctx, inputs, output):
    logits, targets = inputs[0], inputs[1]
    ctx.save_for_backward(logits, targets, output[3], output[4], output[5])
    ctx.temperature, ctx.want_grad, ctx.backend = inputs[16], inputs[18], inputs[19]


def _backward(ctx, g_loss, g_logp, g_ent, g_stats, g_g, g_dl):
    logits, targets, stats, g, dlogits = ctx.saved_tensors
    if ctx.want_grad and bool((g_loss == 1.0).all()):  # the forward's buffer is the answer (a host check)
        # Handed to autograd as the gradient, so a second backward through the same graph
        # (retain_graph=True) would find it consumed: refuse rather than return a shared buffer.
        if getattr(ctx, "consumed", False):
            raise RuntimeError("grpo_loss: backward ran twice through the same graph; its gradient buffer was "
                               "already handed out (call grpo_loss again instead of retain_graph=True)")
        ctx.consumed = True
        return (dlogits,) + (None,) * 19
    empty = g.new_empty(0)
    dlogits = _softmax_grad_op(logits, targets, stats, empty, g * g_loss, empty, ctx.temperature, ctx.backend)
    return (dlogits,) + (None,) * 19


_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _InplaceLoss(torch.autograd.Function):
    """grpo_loss(..., inplace=True): the forward reads the logits once for the loss and each row's stats; the
    backward writes dlogits for the upstream gradient it is given over the logits' own storage (one read,
    one write) and hands that storage to autograd as their gradient. No [N, V] buffer is allocated: no
    memory for it, and on the CPU no page faults and zeroing of fresh pages, which cost as much as the
    kernel itself for a 260 MB gradient. The gradient is computed in fp32 with the upstream factor and
    rounded once: a forward that wrote it for an upstream gradient of 1 and scaled it at backward rounded
    twice in bf16/fp16, up to one unit in the last place, past the numerics rule for 3 of 1000 random test
    draws. The logits' version counter is bumped in the forward, so an autograd node that saved
    the logits before this call raises at backward instead of reading the gradient."""

    @staticmethod
    def forward(ctx, logits, targets, mask, coef, adv, old, ref, samp, config, backend):
        loss, logp, ent, stats, g = _run_loss(logits, targets, mask, coef, adv, old, ref, samp, config, None,
                                              backend)
        torch.autograd.graph.increment_version(logits)
        ctx.save_for_backward(logits, targets, stats, g)
        ctx.temperature, ctx.backend = config.temperature, backend
        ctx.mark_non_differentiable(logp, ent)
        return loss, logp, ent

    @staticmethod
    def backward(ctx, g_loss, g_logp, g_ent):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("grpo_loss(inplace=True): backward ran twice through the same graph; the gradient "
                               "was already written over the logits (call grpo_loss again instead)")
        ctx.consumed = True
        logits, targets, stats, g = ctx.saved_tensors
        dlogits = logits.detach()  # the same storage, without the logits' autograd history
        V = dlogits.shape[-1]
        rows = dlogits.view(-1, V)
        launch_softmax_grad(rows, targets.reshape(-1), stats, None, g * g_loss, None, ctx.temperature, out=rows,
                            backend=ctx.backend)
        return (dlogits,) + (None,) * 9


# --- functional API -----------------------------------------------------------------------------------
# (backend, logits dtype) pairs whose forward writes dlogits (for an upstream gradient of 1) while each row
# is in cache, all measured on the machines named. C++ bf16/fp16: one exp per element instead of two, and
# the half-precision row is read once: 214 vs 282 ms (1 thread, N=4096, V=32000, 2-core EPYC VM). C++
# fp32: the stored exps cost more than the second exp saves there (293 vs 275 ms), so fp32 keeps two
# launches. GPU: the second read of a 300 KB row in the same launch misses L2 (hundreds of rows in flight
# against 50 MB): on an H100 at N=16384, V=151936 bf16 the CUDA one-launch path took 8.2 ms against 5.9 ms
# for two launches. Where the CUDA launcher holds rows on chip (sm_90, _backend.rows_on_chip) the one launch
# reads each row once, so it is taken there: 2 N V bytes-per-element of traffic against 3 for two launches
# (expected, not yet measured on a GPU). GRPO_FORWARD_GRAD=1 / 0 overrides both (for measurements).
FORWARD_GRAD = {("cpu", torch.bfloat16), ("cpu", torch.float16)}


def _forward_grad(logits, backend: str) -> bool:
    """Whether the forward writes dlogits: when they will be needed, in eager mode, on a backend where it
    pays. Under torch.compile the backward's host check cannot be traced, so the graph never does."""
    if not (torch.is_grad_enabled() and logits.requires_grad and not torch.compiler.is_compiling()):
        return False
    env = os.environ.get("GRPO_FORWARD_GRAD")
    if env is not None:
        return env == "1"
    on_chip = backend == "cuda" and _backend.rows_on_chip(logits.view(-1, logits.shape[-1]))
    return (backend, logits.dtype) in FORWARD_GRAD or on_chip


def _check_loss_inputs(logits, targets, mask, advantages, old_logp, ref_logp, sampling_logp, config, dtypes):
    if not isinstance(config, LossConfig):
        raise TypeError(f"config: expected a grpo.ops.LossConfig, got {type(config).__name__}")
    _checks.check_tensor("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits: expected (B, T, V), got {_checks.describe(logits)}")
    check_logits_targets(logits, targets, dtypes)
    check_token_inputs("logits", logits, mask, advantages, old_logp, ref_logp, sampling_logp, config)


def check_token_inputs(lead_name, lead, mask, advantages, old_logp, ref_logp, sampling_logp, config):
    """The per-token inputs of a GRPO loss against the (B, T, ...) tensor `lead` (logits or hidden states):
    shapes, dtypes, devices, and the ones the config requires."""
    B, T = lead.shape[:2]
    _checks.check_tensor("mask", mask, shape=(B, T))
    _checks.check_tensor("advantages", advantages, shape=(B,), floating=True)
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("sampling_logp", sampling_logp)):
        if t is not None:
            _checks.check_tensor(name, t, shape=(B, T), floating=True)
    _checks.check_same_device(lead_name, lead, mask=mask, advantages=advantages, old_logp=old_logp,
                              ref_logp=ref_logp, sampling_logp=sampling_logp)
    if config.beta != 0.0 and ref_logp is None:
        raise ValueError(f"ref_logp: required when config.beta = {config.beta} != 0")
    if config.is_mode is not None and sampling_logp is None:
        raise ValueError(f"sampling_logp: required when config.is_mode = {config.is_mode!r}")


def grpo_loss(logits, targets, mask, advantages, *, old_logp=None, ref_logp=None, sampling_logp=None,
              config=LossConfig(), num_tokens=None, num_sequences=None, backend="auto", inplace=False):
    """GRPO loss from logits.

    logits (B, T, V) fp32/bf16/fp16, targets (B, T) int, mask (B, T) bool/int/float, advantages (B,),
    old_logp / ref_logp / sampling_logp (B, T) float or None. old_logp=None is on-policy (old = logp,
    detached). num_tokens / num_sequences: global counts for gradient accumulation. Returns
    LossOutput(loss () float32 differentiable in logits, metrics dict of detached () tensors).

    inplace=True (kernel backends, eager mode, logits that need a gradient): `loss.backward()` overwrites
    the logits with their gradient and returns that storage as the gradient; no [N, V] buffer is
    allocated. Use it when nothing else reads the logits after the backward (e.g. they come straight from
    the lm_head matmul); an autograd node that saved them before this call raises at backward. Under
    torch.compile, without a gradient, or on backend="torch" it is the usual path.
    """
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if backend == "torch" else ())
    _check_loss_inputs(logits, targets, mask, advantages, old_logp, ref_logp, sampling_logp, config, dtypes)
    _checks.check_scalar("num_tokens", num_tokens, positive=True)
    _checks.check_scalar("num_sequences", num_sequences, positive=True)
    backend = _backend.resolve(backend, logits)
    if backend == "torch":
        if _checks.data_checks_enabled():
            _checks.check_targets_range("targets", targets, logits.shape[-1])
        return grpo_loss_ref(logits, targets, mask, advantages, old_logp=old_logp, ref_logp=ref_logp,
                             sampling_logp=sampling_logp, config=config, num_tokens=num_tokens,
                             num_sequences=num_sequences)
    _checks.check_rows_viewable("logits", logits)
    m, coef, adv, old, ref, samp = kernel_inputs(mask, advantages, old_logp, ref_logp, sampling_logp, config,
                                                 num_tokens, num_sequences)
    if inplace and torch.is_grad_enabled() and logits.requires_grad and not torch.compiler.is_compiling():
        loss, logp, ent = _InplaceLoss.apply(logits, targets.to(torch.int64).contiguous(), m, coef, adv, old, ref,
                                             samp, config, backend)
        metrics = loss_metrics(logp, m, adv, old, ref_logp, samp, config, ent if config.entropy else None)
        return LossOutput(loss, metrics)
    loss, logp, ent, _, _, _ = _loss_op(logits, targets.to(torch.int64).contiguous(), m, coef, adv, old, ref, samp,
                                  float(config.eps_low), float(config.eps_high), float(config.dual_clip or 0.0),
                                  float(config.beta), config.kl, config.ratio_level, config.is_mode or "",
                                  float(config.is_cap), float(config.temperature), bool(config.entropy),
                                  _forward_grad(logits, backend), backend)
    metrics = loss_metrics(logp.detach(), m, adv, old, ref_logp, samp, config, ent if config.entropy else None)
    return LossOutput(loss, metrics)
