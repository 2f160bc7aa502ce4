"""Triton: the fused GRPO token loss (row statistics -> per-token head -> dlogits in one launch) and the
per-sequence head for sequence-level ratios (GSPO) and sequence-level importance-sampling weights.

Twin of csrc/cuda/loss.cu; the head is csrc/grpo_math.h `token_head` / `head_sequence`, expression for
expression, codes as csrc/params.h. Sequence configurations run kernels/logprobs.py's row pass (stats),
then `_seq_head_kernel` (O(N)), then the softmax-gradient pass: never an [N, V] temporary.

Design (why):
- The fused kernel reads each row once for pass 1 and, when a dlogits buffer is given, re-reads it right
  away for pass 2, walking the tiles backwards so the first re-read tiles are the ones pass 1 touched last
  (the likeliest to be in L2): one HBM read + one write of [N, V] instead of two reads + one write when
  the row is still in L2. With long rows it mostly is not: at V = 151936 a bf16 row is 304 KB and a
  program per row block keeps a few hundred rows in flight (80-200 MB against an H200's 60 MB of L2), and
  on the H200 no tile shape moved the kernel's time (bench/README.md). Tile.persistent (a grid of K
  programs per SM looping over row blocks) bounds the rows in flight; it is tested, not yet timed.
- The head is per-row fp32 arithmetic on (ROWS,) vectors; its options (IS mode, KL kind, beta, dual clip,
  which of old/ref/sampling logprobs exist) are constexprs, so each configuration compiles to the few
  instructions it needs.
- Masked rows (mask 0; their coef is 0) are never read by the fused kernel: all their outputs are 0 and
  their dlogits row is written as zeros (as the CUDA/C++ twins). A program whose rows are all masked skips
  the row loop.
- The sequence head is one program per sequence looping over T; sums are in fp64 as the C++ twin.
  The seq-ratio gradient term needs the whole sequence's sum first, so the token loop runs again rather
  than re-reading g it stored (different threads may own the two accesses).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .logprobs import (_finish_stats, _grad_pass, _row_stats, bf16_rne, row_config, row_stride, sm_count,
                       temperature_args)

# csrc/params.h codes
KL3, KL2, KL1 = 0, 1, 2
IS_NONE, IS_TOKEN_TRUNCATE, IS_TOKEN_MASK, IS_SEQ_TRUNCATE, IS_SEQ_MASK = 0, 1, 2, 3, 4
RATIO_TOKEN, RATIO_SEQUENCE = 0, 1


# --- @triton.jit head math (grpo_math.h) --------------------------------------------------------------
@triton.jit
def _is_weight(log_ratio, cap, MODE: tl.constexpr):
    w = tl.exp(log_ratio)
    if (MODE == 1) or (MODE == 3):  # truncate
        w = tl.where(w < cap, w, cap)
    else:  # mask
        w = tl.where(w > cap, 0.0, w)
    return w


@triton.jit
def _kl(logp, ref, KL: tl.constexpr):
    """(KL value, dKL/dlogp) of the policy vs the reference (k3 / k2 / k1)."""
    d = ref - logp
    if KL == 0:
        e = tl.exp(d)
        kv = e - d - 1.0
        kg = 1.0 - e
    elif KL == 1:
        kv = 0.5 * d * d
        kg = -d
    else:
        kv = -d
        kg = tl.full(d.shape, 1.0, tl.float32)
    return kv, kg


@triton.jit
def _policy_term(r, A, eps_low, eps_high, dual_clip, HAS_DUAL: tl.constexpr):
    """max(-r A, -clip(r) A), capped at -c A for A < 0; (loss, dloss/dr); ties take the unclipped branch."""
    lo = 1.0 - eps_low
    hi = 1.0 + eps_high
    rc = tl.where(r < lo, lo, tl.where(r > hi, hi, r))
    u1 = -r * A
    u2 = -rc * A
    clipped = u2 > u1
    loss = tl.where(clipped, u2, u1)
    dr = tl.where(clipped, 0.0, -A)
    if HAS_DUAL:
        u3 = -dual_clip * A
        cap = (A < 0.0) & (u3 < loss)
        loss = tl.where(cap, u3, loss)
        dr = tl.where(cap, 0.0, dr)
    return loss, dr


@triton.jit
def _token_head(logp, old, ref, samp, A, coef, eps_low, eps_high, dual_clip, beta, is_cap,
                IS_MODE: tl.constexpr, KL: tl.constexpr, HAS_BETA: tl.constexpr, HAS_DUAL: tl.constexpr):
    """grpo_math.h token_head: (unweighted per-token loss, g = coef dloss/dlogp)."""
    r = tl.exp(logp - old)
    pl, dr = _policy_term(r, A, eps_low, eps_high, dual_clip, HAS_DUAL)
    if IS_MODE == 0:
        loss = pl
        dl = dr * r
    else:
        w = _is_weight(old - samp, is_cap, IS_MODE)
        loss = pl * w
        dl = dr * r * w
    if HAS_BETA:
        kv, kg = _kl(logp, ref, KL)
        loss = loss + beta * kv
        dl = dl + beta * kg
    return loss, coef * dl


@triton.jit
def _head_inputs(logp_in, old_lp, samp_lp, mask_in, idx, ok, HAS_OLD: tl.constexpr, HAS_SAMP: tl.constexpr):
    """logp, old (= logp on-policy), sampling (= old when absent) and mask at token indices idx."""
    lp = tl.load(logp_in + idx, mask=ok, other=0.0)
    old = lp
    if HAS_OLD:
        old = tl.load(old_lp + idx, mask=ok, other=0.0)
    samp = old
    if HAS_SAMP:
        samp = tl.load(samp_lp + idx, mask=ok, other=0.0)
    msk = tl.load(mask_in + idx, mask=ok, other=0.0)
    return lp, old, samp, msk


@triton.jit
def _head_inputs64(logp_in, lo_in, old_lp, samp_lp, mask_in, idx, ok, HAS_OLD: tl.constexpr,
                   HAS_SAMP: tl.constexpr, HAS_LO: tl.constexpr):
    """_head_inputs in fp64 for the sequence sums, logp unrounded (logp + its residual) when HAS_LO."""
    lp, old, samp, msk = _head_inputs(logp_in, old_lp, samp_lp, mask_in, idx, ok, HAS_OLD, HAS_SAMP)
    lp64 = lp.to(tl.float64)
    if HAS_LO:
        lp64 += tl.load(lo_in + idx, mask=ok, other=0.0).to(tl.float64)
    old64 = lp64
    if HAS_OLD:
        old64 = old.to(tl.float64)
    samp64 = old64
    if HAS_SAMP:
        samp64 = samp.to(tl.float64)
    return lp64, old64, samp64, msk.to(tl.float64)


@triton.jit
def _tok_weight(old, samp, w_seq, is_cap, IS_MODE: tl.constexpr, SEQ_IS: tl.constexpr):
    """The IS weight of each token: the sequence's, a token-level one, or 1."""
    if SEQ_IS:
        w = w_seq + tl.zeros(old.shape, tl.float32)
    elif IS_MODE != 0:
        w = _is_weight(old - samp, is_cap, IS_MODE)
    else:
        w = tl.full(old.shape, 1.0, tl.float32)
    return w


# --- @triton.jit kernels ------------------------------------------------------------------------------
@triton.jit
def _fused_loss_kernel(logits, targets, logp_out, stats_out, ent_out, tok_loss_out, g_out, old_lp, ref_lp, samp_lp,
                       coef_in, mask_in, adv, dlogits, N, V, T_seq, stride, out_stride, T, Tlo, invT, lo, hi,
                       eps_low, eps_high, dual_clip, beta, is_cap,
                       HAS_T: tl.constexpr, WITH_ENT: tl.constexpr, HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr,
                       HAS_SAMP: tl.constexpr, IS_MODE: tl.constexpr, KL: tl.constexpr, HAS_BETA: tl.constexpr,
                       HAS_DUAL: tl.constexpr, WRITE_GRAD: tl.constexpr, BF16_RNE: tl.constexpr,
                       BLOCK_V: tl.constexpr, ROWS: tl.constexpr, ROW_ACC: tl.constexpr, PREFETCH: tl.constexpr,
                       POLICY1: tl.constexpr, POLICY2: tl.constexpr):
    """Row blocks pid, pid + grid, ...: one block per program when the grid covers them all, or, with a
    persistent grid (Tile.persistent: a few programs per SM), a loop that keeps only grid rows in flight
    at once, so that pass 2 can find its row in L2."""
    for rb in range(tl.program_id(0), tl.cdiv(N, ROWS), tl.num_programs(0)):
        rows = rb * ROWS + tl.arange(0, ROWS)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        row_ptr = logits + rows64 * stride
        # Masked rows (mask 0: coef 0, metrics mask them) are never read: every output of theirs is 0, and
        # the gradient pass writes their dlogits row as zeros with the loads off (g = 0 there).
        live = row_ok & (tl.load(mask_in + rows64, mask=row_ok, other=0.0) != 0.0)
        # Per-row loads for the head are issued now and consumed after the row pass.
        tgt = tl.load(targets + rows64, mask=row_ok, other=0)
        x_t = tl.load(row_ptr + tgt, mask=live, other=0.0).to(tl.float32)
        A = tl.load(adv + rows64 // T_seq, mask=live, other=0.0)
        coef = tl.load(coef_in + rows64, mask=live, other=0.0)
        # Every head input is defined on both sides of its constexpr branch, before the row pass.
        if HAS_OLD:
            old_in = tl.load(old_lp + rows64, mask=live, other=0.0)
        else:
            old_in = tl.zeros([ROWS], tl.float32)
        if HAS_REF:
            ref = tl.load(ref_lp + rows64, mask=live, other=0.0)
        else:
            ref = tl.zeros([ROWS], tl.float32)
        if HAS_SAMP:
            samp_in = tl.load(samp_lp + rows64, mask=live, other=0.0)
        else:
            samp_in = tl.zeros([ROWS], tl.float32)
        # A block whose rows are all masked skips the row loop (V_eff = 0): m = -inf, s = t = 0, zeroed below.
        V_eff = tl.where(tl.max(live.to(tl.int32), axis=0) > 0, V, 0)
        m, s, t = _row_stats(row_ptr, live, V_eff, T, Tlo, invT, lo, hi, HAS_T, WITH_ENT, BLOCK_V, ROWS, POLICY1,
                             ROW_ACC, PREFETCH)
        logp, logs, ent, _ = _finish_stats(x_t, m, s, t, T, Tlo, invT, lo, hi, HAS_T)
        logp = tl.where(live, logp, 0.0)
        m = tl.where(live, m, 0.0)
        logs = tl.where(live, logs, 0.0)
        # Store the row outputs before the head reads logp: with the head first, triton 3.6's
        # TritonGPURemoveLayoutConversions reused the store's layout conversion of logp ahead of its
        # definition ("operand #0 does not dominate this use").
        tl.store(logp_out + rows64, logp, mask=row_ok)
        tl.store(stats_out + 2 * rows64, m, mask=row_ok)
        tl.store(stats_out + 2 * rows64 + 1, logs, mask=row_ok)
        if WITH_ENT:
            tl.store(ent_out + rows64, tl.where(live, ent, 0.0), mask=row_ok)
        if HAS_OLD:
            old = old_in
        else:
            old = logp  # on-policy
        if HAS_SAMP:
            samp = samp_in
        else:
            samp = old
        loss, g = _token_head(logp, old, ref, samp, A, coef, eps_low, eps_high, dual_clip, beta, is_cap,
                              IS_MODE, KL, HAS_BETA, HAS_DUAL)
        loss = tl.where(live, loss, 0.0)
        g = tl.where(live, g, 0.0)
        tl.store(tok_loss_out + rows64, loss, mask=row_ok)
        tl.store(g_out + rows64, g, mask=row_ok)
        if WRITE_GRAD:
            tl.debug_barrier()  # x_t was read by every thread before any thread writes the row (in place)
            zero = tl.zeros([ROWS], tl.float32)
            _grad_pass(row_ptr, dlogits + rows64 * out_stride, row_ok, tgt, x_t, m, logs, zero, g, zero, V, T,
                       Tlo, invT, lo, hi, HAS_T, False, True, BF16_RNE, BLOCK_V, ROWS, POLICY2, PREFETCH)


@triton.jit
def _seq_head_kernel(logp_in, lo_in, old_lp, ref_lp, samp_lp, mask_in, coef_in, adv, tok_loss_out, g_out, T_seq,
                     eps_low, eps_high, dual_clip, beta, is_cap, HAS_LO: tl.constexpr,
                     HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, HAS_SAMP: tl.constexpr, IS_MODE: tl.constexpr,
                     KL: tl.constexpr, HAS_BETA: tl.constexpr, HAS_DUAL: tl.constexpr, SEQ_RATIO: tl.constexpr,
                     BLOCK_T: tl.constexpr):
    """grpo_math.h head_sequence for sequence b = program_id(0): T_seq tokens at b * T_seq."""
    b = tl.program_id(0).to(tl.int64)
    base = b * T_seq
    A = tl.load(adv + b)
    SEQ_IS: tl.constexpr = (IS_MODE == 3) or (IS_MODE == 4)
    offs0 = tl.arange(0, BLOCK_T)
    r_seq = 1.0
    w_seq = 1.0
    n_cl = 1.0
    if SEQ_RATIO or SEQ_IS:  # sequence sums (fp64): masked log-ratio, IS log-ratio, token count
        lr = tl.zeros([BLOCK_T], tl.float64)
        isr = tl.zeros([BLOCK_T], tl.float64)
        cnt = tl.zeros([BLOCK_T], tl.float64)
        for t0 in range(0, T_seq, BLOCK_T):
            offs = t0 + offs0
            ok = offs < T_seq
            lp, old, samp, m64 = _head_inputs64(logp_in, lo_in, old_lp, samp_lp, mask_in, base + offs, ok,
                                                HAS_OLD, HAS_SAMP, HAS_LO)
            lr += m64 * (lp - old)
            isr += m64 * (old - samp)
            cnt += m64
        n = tl.sum(cnt, axis=0)
        n_cl = tl.where(n < 1.0, 1.0, n.to(tl.float32))
        r_seq = tl.exp((tl.sum(lr, axis=0) / n_cl.to(tl.float64)).to(tl.float32))
        if SEQ_IS:
            w_seq = _is_weight(tl.sum(isr, axis=0).to(tl.float32), is_cap, IS_MODE)
    scale = 0.0
    if SEQ_RATIO:  # dL/dlogp_t gets (sum_t' coef_t' w_t' dp/dr) r m_t / n: the sum needs a first sweep
        acc = tl.zeros([BLOCK_T], tl.float64)
        for t0 in range(0, T_seq, BLOCK_T):
            offs = t0 + offs0
            ok = offs < T_seq
            lp, old, samp, msk = _head_inputs(logp_in, old_lp, samp_lp, mask_in, base + offs, ok,
                                              HAS_OLD, HAS_SAMP)
            coef = tl.load(coef_in + base + offs, mask=ok, other=0.0)
            w = _tok_weight(old, samp, w_seq, is_cap, IS_MODE, SEQ_IS)
            pl, dr = _policy_term(r_seq + tl.zeros([BLOCK_T], tl.float32), A, eps_low, eps_high, dual_clip, HAS_DUAL)
            acc += tl.where(ok, coef.to(tl.float64) * dr.to(tl.float64) * w.to(tl.float64), 0.0)
        scale = tl.math.div_rn(tl.sum(acc, axis=0).to(tl.float32) * r_seq, n_cl)
    for t0 in range(0, T_seq, BLOCK_T):
        offs = t0 + offs0
        ok = offs < T_seq
        lp, old, samp, msk = _head_inputs(logp_in, old_lp, samp_lp, mask_in, base + offs, ok, HAS_OLD, HAS_SAMP)
        coef = tl.load(coef_in + base + offs, mask=ok, other=0.0)
        if SEQ_RATIO:
            r = r_seq + tl.zeros([BLOCK_T], tl.float32)
        else:
            r = tl.exp(lp - old)
        w = _tok_weight(old, samp, w_seq, is_cap, IS_MODE, SEQ_IS)
        pl, dr = _policy_term(r, A, eps_low, eps_high, dual_clip, HAS_DUAL)
        loss = pl * w
        if SEQ_RATIO:
            g = tl.zeros([BLOCK_T], tl.float32)
        else:
            g = dr * r * w
        if HAS_BETA:
            ref = tl.load(ref_lp + base + offs, mask=ok, other=0.0)
            kv, kg = _kl(lp, ref, KL)
            loss = loss + beta * kv
            g = g + beta * kg
        g = coef * g
        if SEQ_RATIO:
            g = g + scale * msk
        tl.store(tok_loss_out + base + offs, loss, mask=ok)
        tl.store(g_out + base + offs, g, mask=ok)


# --- launchers ----------------------------------------------------------------------------------------
def _head_args(eps_low, eps_high, dual_clip, beta, is_cap, kl, is_mode):
    dual = float(dual_clip or 0.0)
    return dict(eps_low=float(eps_low), eps_high=float(eps_high), dual_clip=dual, beta=float(beta),
                is_cap=float(is_cap), IS_MODE=int(is_mode), KL=int(kl), HAS_BETA=float(beta) != 0.0,
                HAS_DUAL=dual > 0.0)


def fused_loss(logits2d, targets1d, coef, adv, old, ref, samp, *, mask, T_seq, eps_low, eps_high, dual_clip, beta,
               kl, is_mode, is_cap, temperature, entropy, dlogits=None):
    """Token-level configurations (token ratio; no or token-level IS), one launch.

    logits2d (N, V) fp32/bf16/fp16, targets1d (N,) int64, coef (N,) float32 (aggregation weight, mask folded
    in), mask (N,) float32: rows with mask 0 are never read (all their outputs and dlogits rows are 0),
    adv (N // T_seq,) float32, old/ref/samp (N,) float32 or None. kl / is_mode: csrc/params.h codes.
    Returns tok_loss, logp, entropy (or None), stats (N, 2), g = dLoss/dlogp, all float32; with `dlogits`
    (N, V) in the logits' dtype (may be logits2d: in place) it also writes g (onehot - p) / T.
    """
    N, V = logits2d.shape
    f32 = dict(dtype=torch.float32, device=logits2d.device)
    tok_loss, g, logp = torch.empty(N, **f32), torch.empty(N, **f32), torch.empty(N, **f32)
    stats = torch.empty(N, 2, **f32)
    ent = torch.empty(N, **f32) if entropy else None
    if N == 0:
        return tok_loss, logp, ent, stats, g
    tile = row_config(V, logits2d.element_size())
    dummy = coef
    blocks = triton.cdiv(N, tile.rows)
    grid = min(blocks, tile.persistent * sm_count(logits2d.device)) if tile.persistent else blocks
    _fused_loss_kernel[(grid,)](
        logits2d, targets1d, logp, stats, dummy if ent is None else ent, tok_loss, g,
        dummy if old is None else old, dummy if ref is None else ref, dummy if samp is None else samp,
        coef, mask, adv, logits2d if dlogits is None else dlogits, N, V, T_seq, row_stride(logits2d),
        row_stride(dlogits) if dlogits is not None else V, **temperature_args(temperature),
        **_head_args(eps_low, eps_high, dual_clip, beta, is_cap, kl, is_mode),
        WITH_ENT=bool(entropy), HAS_OLD=old is not None, HAS_REF=ref is not None, HAS_SAMP=samp is not None,
        WRITE_GRAD=dlogits is not None, BF16_RNE=dlogits is not None and bf16_rne(dlogits),
        POLICY1="evict_last" if tile.l2_hints and dlogits is not None else "",
        POLICY2="evict_first" if tile.l2_hints else "", **tile.launch())
    return tok_loss, logp, ent, stats, g


def sequence_head(logp, mask, coef, adv, old, ref, samp, *, eps_low, eps_high, dual_clip, beta, kl, ratio_level,
                  is_mode, is_cap, logp_lo=None):
    """head_sequence for every sequence: logp/mask/coef/old/ref/samp (B, T) float32 (old/ref/samp may be
    None), adv (B,) float32 -> tok_loss (B, T), g (B, T) float32 (g = dLoss/dlogp, coef folded in).
    logp_lo (B * T,) float32 or None: logp's rounding residual, read by the sequence sums."""
    B, T_seq = mask.shape
    tok_loss, g = torch.empty_like(mask), torch.empty_like(mask)
    if B * T_seq == 0:
        return tok_loss, g
    block_t = max(16, min(1024, triton.next_power_of_2(T_seq)))
    _seq_head_kernel[(B,)](
        logp, mask if logp_lo is None else logp_lo, mask if old is None else old, mask if ref is None else ref,
        mask if samp is None else samp, mask, coef, adv, tok_loss, g, T_seq,
        **_head_args(eps_low, eps_high, dual_clip, beta, is_cap, kl, is_mode), HAS_LO=logp_lo is not None,
        HAS_OLD=old is not None, HAS_REF=ref is not None, HAS_SAMP=samp is not None,
        SEQ_RATIO=int(ratio_level) == RATIO_SEQUENCE, BLOCK_T=block_t, num_warps=4 if block_t >= 512 else 2)
    return tok_loss, g
