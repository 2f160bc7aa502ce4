"""Triton: group advantages for every group and estimator in one launch.

Twin of csrc/cuda/advantages.cu (grpo_math.h `group_stats` / `advantage_of`): per group of G consecutive
rewards, mean and unbiased std (sums in fp64), a = (r - mean) [* G / (G - 1) for RLOO] / (std + eps);
scale="batch" divides by the std of all B rewards instead, scale="none" not at all. Groups whose rewards
are all equal (includes G == 1) get exactly 0 and are flagged in zero_std (uint8).

Design (why): a program takes a [GB groups, BLOCK_G rewards] tile, so small G packs many groups per tile
and any G works by looping over BLOCK_G-wide column chunks (three sweeps: sum/min/max, squared deviations,
write; the re-reads hit L1/L2). scale="batch" needs the std of the whole batch before any group can be
written, so that case runs as a single program that computes it first (B ~ 1e4-1e5 floats: a few tiles);
the other scales spread groups over programs. fp32 divisions use div_rn (Triton's `/` is div.full).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SCALE_GROUP, SCALE_BATCH, SCALE_NONE = 0, 1, 2  # csrc/params.h
EST_GRPO, EST_RLOO = 0, 1
TILE = 2048      # rewards per group tile
BLOCK_B = 4096   # rewards per step of the batch-std sweep


# --- @triton.jit kernels ------------------------------------------------------------------------------
@triton.jit
def _batch_std(rewards, B, BLOCK: tl.constexpr):
    """Unbiased std of all B rewards (fp64 sums, two sweeps as torch.std); 0 for B == 1."""
    offs0 = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float64)
    for i in range(0, B, BLOCK):
        offs = i + offs0
        acc += tl.load(rewards + offs, mask=offs < B, other=0.0).to(tl.float64)
    mean = tl.sum(acc, axis=0) / B
    acc2 = tl.zeros([BLOCK], tl.float64)
    for i in range(0, B, BLOCK):
        offs = i + offs0
        d = tl.load(rewards + offs, mask=offs < B, other=0.0).to(tl.float64) - mean
        acc2 += tl.where(offs < B, d * d, 0.0)
    std = tl.sqrt(tl.sum(acc2, axis=0) / tl.maximum(B - 1, 1)).to(tl.float32)
    return tl.where(B > 1, std, 0.0)


@triton.jit
def _group_stats(rewards, base, gok, G, BLOCK_G: tl.constexpr, GB: tl.constexpr):
    """(mean fp64, std fp32, zero) of GB groups starting at rewards + base (GB,), valid where gok."""
    cols0 = tl.arange(0, BLOCK_G)
    s = tl.zeros([GB, BLOCK_G], tl.float64)
    mn = tl.full([GB, BLOCK_G], float("inf"), tl.float32)
    mx = tl.full([GB, BLOCK_G], float("-inf"), tl.float32)
    for c0 in range(0, G, BLOCK_G):
        cols = c0 + cols0
        ok = gok[:, None] & (cols < G)[None, :]
        r = tl.load(rewards + base[:, None] + cols[None, :], mask=ok, other=0.0)
        s += tl.where(ok, r.to(tl.float64), 0.0)
        mn = tl.minimum(mn, tl.where(ok, r, float("inf")))
        mx = tl.maximum(mx, tl.where(ok, r, float("-inf")))
    mean = tl.sum(s, axis=1) / G
    ss = tl.zeros([GB, BLOCK_G], tl.float64)
    for c0 in range(0, G, BLOCK_G):
        cols = c0 + cols0
        ok = gok[:, None] & (cols < G)[None, :]
        r = tl.load(rewards + base[:, None] + cols[None, :], mask=ok, other=0.0)
        d = r.to(tl.float64) - mean[:, None]
        ss += tl.where(ok, d * d, 0.0)
    std = tl.sqrt(tl.sum(ss, axis=1) / tl.maximum(G - 1, 1)).to(tl.float32)
    std = tl.where(G > 1, std, 0.0)
    zero = tl.max(mx, axis=1) <= tl.min(mn, axis=1)  # every reward equal (rewards are finite)
    return mean, std, zero


@triton.jit
def _advantages_kernel(rewards, adv_out, zero_out, B, G, n_groups, groups_per_prog, eps, rloo_factor,
                       SCALE: tl.constexpr, RLOO: tl.constexpr, BLOCK_G: tl.constexpr, GB: tl.constexpr,
                       BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if SCALE == 1:
        batch_std = _batch_std(rewards, B, BLOCK)
    g_first = pid * groups_per_prog
    g_end = tl.minimum(g_first + groups_per_prog, n_groups)
    cols0 = tl.arange(0, BLOCK_G)
    for g0 in range(g_first, g_end, GB):
        grp = g0 + tl.arange(0, GB)
        gok = grp < g_end
        base = grp.to(tl.int64) * G
        mean, std, zero = _group_stats(rewards, base, gok, G, BLOCK_G, GB)
        mean32 = mean.to(tl.float32)
        if SCALE == 1:
            denom = batch_std + eps + tl.zeros([GB], tl.float32)
        else:
            denom = std + eps
        for c0 in range(0, G, BLOCK_G):
            cols = c0 + cols0
            ok = gok[:, None] & (cols < G)[None, :]
            r = tl.load(rewards + base[:, None] + cols[None, :], mask=ok, other=0.0)
            a = r - mean32[:, None]
            if RLOO:  # r - mean(others) = G / (G - 1) (r - mean)
                a = a * rloo_factor
            if SCALE != 2:
                a = tl.math.div_rn(a, denom[:, None])
            a = tl.where(zero[:, None], 0.0, a)
            tl.store(adv_out + base[:, None] + cols[None, :], a, mask=ok)
        tl.store(zero_out + grp, zero.to(tl.uint8), mask=gok)


# --- launchers ----------------------------------------------------------------------------------------
def group_advantages(rewards, G, scale, estimator, eps):
    """rewards (B,) float32 contiguous, G | B; scale / estimator: csrc/params.h codes ->
    advantages (B,) float32, zero_std (B // G,) uint8."""
    B = rewards.shape[0]
    adv = torch.empty_like(rewards)
    zero = torch.empty(B // G, dtype=torch.uint8, device=rewards.device)
    n_groups = B // G
    if n_groups == 0:
        return adv, zero
    block_g = min(triton.next_power_of_2(G), TILE)
    gb = max(1, min(TILE // block_g, triton.next_power_of_2(n_groups)))
    per_prog = n_groups if scale == SCALE_BATCH else gb
    g32 = torch.tensor(float(G), dtype=torch.float32)
    rloo = float(g32 / (g32 - 1)) if G > 1 else 1.0  # fp32 quotient, as (float)G / (float)(G - 1)
    _advantages_kernel[(triton.cdiv(n_groups, per_prog),)](
        rewards, adv, zero, B, G, n_groups, per_prog, float(eps), rloo, SCALE=int(scale),
        RLOO=int(estimator) == EST_RLOO, BLOCK_G=block_g, GB=gb, BLOCK=BLOCK_B, num_warps=4)
    return adv, zero
