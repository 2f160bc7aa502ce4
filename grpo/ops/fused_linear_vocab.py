"""The "vocab" schedule of fused_linear_grpo_loss: the forward keeps only O(N) per-token vectors, the backward
recomputes the logits one block of vocabulary columns at a time.

Why: the "tokens" schedule (fused_linear.py) builds dW in the forward, chunk by chunk over the tokens, so the
chunks' dW meet in an fp32 (V, H) accumulator (the numerics rule: low-precision sums accumulate in fp32),
which lives until the backward. At N=16384, H=4096, V=151936 bf16 that is 2.49 GB, plus 0.27 GB of fp32
dhidden (2759 MB extra, measured on an H100). Here a block's dW[v0:v1] is one GEMM over all N tokens: the
sum over tokens runs inside the GEMM in fp32 and rounds once, and no (V, H) fp32 buffer exists. dhidden sums
over the blocks in an fp32 (N, H) buffer (for fp32 inputs: the output itself). Price: the logits are computed
twice, 8 N H V FLOPs against 6 N H V.

Forward: the tokens schedule's sweep without gradients (loss, logp, entropy), keeping the row stats (N, 2)
[max, log sum exp] and g = dLoss/dlogp (N,). Backward, with g_out the upstream gradient: per vocabulary block
[v0, v1) and token chunk [s, e): tile = h[s:e] @ W[v0:v1]^T (+ b[v0:v1]) in the input dtype; dlogits over the
tile from the saved stats and g * g_out (the softmax-gradient kernel with targets shifted by v0: a target
outside the block adds no one-hot term; in place, or an fp32 copy for low precision on CPU: _grad_rows);
dh[s:e] += tile @ W[v0:v1]; dW[v0:v1] (+)= tile^T @ h[s:e].
The tile holds the tokens schedule's chunk of logits (chunk * V elements): as many tokens as fit with blocks
of at least VOCAB_MULTIPLE columns, all N when the budget allows (then dW needs no fp32 accumulator at all
for fp32 weights, and one block-sized one for low precision).

Order: block planning -> forward sweep -> backward sweep -> custom op (the backward) -> registration.
"""
from __future__ import annotations

import torch

from .fused_linear import (SCHEDULES, Schedule, _addmm_fp32, _exact_bias_grad, _fp32_grad_rows, _grad_rows,
                           _mm_fp32_out, _sequence_forward, _tokenwise_sweep, chunk_bounds)

VOCAB_MULTIPLE = 64  # block widths come in multiples of 64 columns (GEMM tiles, vector rows)


# --- block planning -----------------------------------------------------------------------------------
def plan_vocab_blocks(N: int, V: int, chunk: int) -> tuple[int, int]:
    """(columns per vocabulary block, tokens per chunk) of the backward's logits tile, for a budget of
    chunk * V elements (the tokens schedule's chunk of logits): all N tokens with the widest block the budget
    allows (a multiple of 64, at least 64, at most V); when even 64 columns of N tokens exceed it, 64-column
    blocks (or V, if smaller) over token chunks of budget / 64."""
    budget = max(1, chunk) * V
    vb = min(V, max(VOCAB_MULTIPLE, budget // max(N, 1) // VOCAB_MULTIPLE * VOCAB_MULTIPLE))
    return vb, max(1, min(N, budget // vb))


# --- forward ------------------------------------------------------------------------------------------
def _vocab_forward(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, need, backend):
    """Loss, logp, entropy (N,) fp32 over token chunks, no gradient; returns them with the row stats (N, 2)
    and g (N,) (both None when no gradient is wanted) and an unused third slot."""
    N = m.numel()
    f32 = dict(dtype=torch.float32, device=h2d.device)
    out = (torch.empty(N, **f32), torch.empty(N, **f32), torch.empty(N, **f32) if config.entropy else None)
    want = any(need)
    keep = (torch.empty(N, 2, **f32), torch.empty(N, **f32)) if want else (None, None)
    if N > 0 and config.tokenwise:
        _tokenwise_sweep(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, (None,) * 3, out,
                         backend, keep=keep if want else None)
    elif N > 0:
        buf = torch.empty(min(chunk, N), weight.shape[0], dtype=h2d.dtype, device=h2d.device)
        keep = _sequence_forward(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, out, backend,
                                 want, buf)
    return (*out, *(keep if want else (None, None)), None)


# --- backward -----------------------------------------------------------------------------------------
def _tile_logits(h, w, b, buf):
    """h (n, H) @ w (vb, H)^T (+ b (vb,)) into the first n * vb elements of the flat buffer, (n, vb)."""
    out = buf[: h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
    return torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)


def _fp32_gemm(a, b, out, accumulate):
    """out (m, n) fp32 (+)= a (m, k) @ b (k, n), a and b in the input dtype."""
    if accumulate:
        _addmm_fp32(out, a, b)
    else:
        _mm_fp32_out(a, b, out)


def launch_vocab_backward(h2d, weight, bias, t1d, stats, g, temperature, chunk, need, backend="cpu"):
    """h2d (N, H), weight (V, H), bias (V,) or None in the input dtype; t1d (N,) int64; stats (N, 2) and
    g (N,) = g_out * dLoss/dlogp, fp32; need = (dhidden, dweight, dbias) wanted.
    Returns dhidden (N, H), dweight (V, H), dbias (V,) (each None unless wanted) in the input dtype."""
    N, H = h2d.shape
    V = weight.shape[0]
    lowp = h2d.dtype != torch.float32
    f32 = dict(dtype=torch.float32, device=h2d.device)
    vb, nc = plan_vocab_blocks(N, V, chunk)
    dh = torch.empty(N, H, **f32) if need[0] else None
    dW = (torch.zeros if N == 0 else torch.empty)(V, H, dtype=weight.dtype, device=weight.device) if need[1] else None
    dW_acc = torch.empty(vb, H, **f32) if need[1] and lowp else None  # one block's fp32 sums
    db = torch.zeros(V, **f32) if need[2] and bias is not None else None
    buf = torch.empty(min(nc, N) * vb, dtype=h2d.dtype, device=h2d.device)
    exact_db = db is not None and lowp and not _fp32_grad_rows(buf)  # rounded dlogits: sum db from the logits
    for v0, v1 in chunk_bounds(V, vb):
        w, b = weight[v0:v1], None if bias is None else bias[v0:v1]
        acc = None if dW is None else (dW_acc[: v1 - v0] if lowp else dW[v0:v1])
        for s, e in chunk_bounds(N, nc):
            lg = _tile_logits(h2d[s:e], w, b, buf)
            t = t1d[s:e] - v0  # the block's column of each target; outside [0, v1 - v0): not in this block
            if exact_db:
                _exact_bias_grad(db[v0:v1], lg, t, stats[s:e], g[s:e], temperature)
            dl = _grad_rows(lg, t, stats[s:e], g[s:e], temperature, backend)
            if dh is not None:  # the first block writes the fp32 sums, the others add to them
                _fp32_gemm(dl, w, dh[s:e], accumulate=v0 > 0)
            if acc is not None:
                _fp32_gemm(dl.t(), h2d[s:e], acc, accumulate=s > 0)
            if db is not None and not exact_db:
                db[v0:v1] += dl.sum(0, dtype=torch.float32)
        if acc is not None and lowp:
            dW[v0:v1].copy_(acc)
    return (None if dh is None else dh.to(h2d.dtype), dW, None if db is None else db.to(bias.dtype))


# --- custom op (opaque to torch.compile) for the backward -----------------------------------------------
@torch.library.custom_op("grpo::fused_linear_grpo_loss_vocab_backward", mutates_args=())
def _vocab_backward_op(g_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       targets: torch.Tensor, stats: torch.Tensor, g: torch.Tensor, temperature: float, chunk: int,
                       need_dh: bool, need_dw: bool, need_db: bool, backend: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H = weight.shape[1]
    gs = g * g_loss.to(torch.float32)  # one rounding of each dlogit, already scaled
    dh, dW, db = launch_vocab_backward(hidden.reshape(-1, H), weight, bias, targets.reshape(-1), stats, gs,
                                       temperature, chunk, (need_dh, need_dw, need_db), backend)
    empty = lambda: hidden.new_empty(0)  # noqa: E731 -- "not computed" placeholders (distinct: no aliasing)
    return (empty() if dh is None else dh.view(hidden.shape), empty() if dW is None else dW,
            empty() if db is None else db)


@_vocab_backward_op.register_fake
def _(g_loss, hidden, weight, bias, targets, stats, g, temperature, chunk, need_dh, need_dw, need_db, backend):
    return (hidden.new_empty(hidden.shape if need_dh else (0,)), weight.new_empty(weight.shape if need_dw else (0,)),
            hidden.new_empty((0,)) if bias is None or not need_db else bias.new_empty(bias.shape))


# --- registration ---------------------------------------------------------------------------------------
def _fake(hidden, weight, bias, N, need):
    n = N if any(need) else 0
    return hidden.new_empty((n, 2), dtype=torch.float32), hidden.new_empty((n,), dtype=torch.float32), \
        hidden.new_empty((0,), dtype=torch.float32)


def _save(ctx, inputs, output):
    hidden, weight, bias, targets = inputs[:4]
    ctx.save_for_backward(hidden, weight, bias, targets, output[3], output[4])
    ctx.vocab_args = (inputs[18], inputs[20], inputs[24])  # temperature, chunk, backend


def _backward(ctx, g_loss):
    hidden, weight, bias, targets, stats, g = ctx.saved_tensors
    temperature, chunk, backend = ctx.vocab_args
    dh, dW, db = _vocab_backward_op(g_loss, hidden, weight, bias, targets, stats, g, temperature, chunk, *ctx.need,
                                    backend)
    return dh if ctx.need[0] else None, dW if ctx.need[1] else None, db if ctx.need[2] else None


SCHEDULES["vocab"] = Schedule(_vocab_forward, _fake, _save, _backward, cuda_floor=False)
