"""Triton: selective log-softmax (+ entropy) in one read of each logits row, and the softmax-gradient pass.

Twin of csrc/cuda/logprobs.cu (same math as csrc/grpo_math.h): pass 1 folds each row into (m, s, t) with
m the row max of z = logits / T, s = sum exp(z - m), t = sum exp(z - m)(z - m); logp = (z_t - m) - log s,
stats = [m, log s], entropy H = log s - t / s. Pass 2 writes
dlogits = (g_logp (onehot - p) - g_ent p (log p + H)) / T in the logits' dtype, optionally in place.
The row helpers (_scale, _row_stats, _finish_stats, _grad_pass) are shared with kernels/loss.py.

Design (why):
- One program owns ROWS whole rows and loops over V in BLOCK_V tiles, so any V works and no [N, V]
  temporary exists; for small V several rows share a program so its threads stay busy.
- Online max/sum-exp: the running max is a per-row scalar (one reduction per tile), while s and t stay
  per-lane vectors rescaled by one scalar exp per tile and are reduced once at the end: one exp per
  element, no separate max pass over HBM, and each lane sums only V / BLOCK_V terms (accurate in fp32).
- exp as exp2((z - m) * log2 e): the max comes off first, so the dominant terms are exact; prescaling the
  logits by log2 e / T before the subtraction would round every z once more (~1e-6 of logp for large
  logits) to save one FMUL per element in a kernel bound by memory, not arithmetic.
- z = x / T is rounded once for the exact (fp64) temperature, held as an fp32 pair T + Tlo, with the fma
  correction of grpo_math.h's scale_logit (dividing by fp32(T), as torch's fp32 logits / T does, leaves a
  relative error of up to 3e-8 in every z of the same sign: it adds up over a sequence's logprobs);
  fp32 `/` in Triton is div.full (2 ulp). T == 1 is a constexpr specialization with no scaling at all.
- Row offsets are int64 (N * V passes 2^31 at N = 16384, V = 151936); column offsets stay int32.
- Loads are 16-byte vectors only when Triton's launcher can specialize the row stride (and V) as
  divisible by 16 (V = 151936, 32000, 128256 are); for an odd V such as 50257 they compile to one element
  per instruction (bench/triton_resources.py --no-div16 shows it). The CUDA twin peels an unaligned head.
- The tile (row_config, or TILE for sweeps) also picks per-row scalar sums (row_acc) and a next-tile
  prefetch; bench/tune_triton.py times them on a GPU and bench/triton_resources.py reports their
  registers and load widths for sm_90 without one.
- Rows with g_logp = g_ent = 0 (masked tokens) write zeros with their loads masked off: no read.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)     # jit code may read module globals only as constexprs
FLT_MAX = tl.constexpr(3.4028234663852886e38)
MAX_BLOCK_V = None  # tests set a small value to force the multi-tile loop on small V
ROW_ELEMS = 2048    # elements a program holds per tile when several short rows share it
TILE = None         # a Tile that every row launch uses instead of row_config's choice (bench/tune_triton.py)


# --- @triton.jit row helpers --------------------------------------------------------------------------
@triton.jit
def _scale(x, T, Tlo, invT, lo, hi, HAS_T: tl.constexpr):
    """x / (T + Tlo) rounded once (the temperature as an fp32 pair, so an fp64 temperature such as 1.3
    leaves no systematic error): q = x (1/T), r = x - q T exactly by fma, minus q Tlo, then q + r / T
    (exact steps for |x| in [lo, hi]; as grpo_math.h scale_logit)."""
    z = x
    if HAS_T:
        q = x * invT
        r = tl.fma(-q, T, x)
        r = tl.fma(-q, Tlo, r)
        ax = tl.abs(x)
        z = tl.where((ax >= lo) & (ax <= hi), tl.fma(invT, r, q), q)
    return z


@triton.jit
def _to_out(val, out_ptr, BF16_RNE: tl.constexpr):
    """fp32 -> the output's dtype, rounding to nearest even. BF16_RNE (set only under TRITON_INTERPRET for
    bf16 outputs) rounds by hand: the interpreter's fp32 -> bf16 cast truncates, the GPU's cvt.rn does not."""
    if BF16_RNE:
        u = val.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)  # quiet NaNs and infs keep their top half
        return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return val.to(out_ptr.dtype.element_ty)


@triton.jit
def _row_stats(row_ptr, row_ok, V, T, Tlo, invT, lo, hi, HAS_T: tl.constexpr, WITH_ENT: tl.constexpr,
               BLOCK_V: tl.constexpr, ROWS: tl.constexpr, POLICY: tl.constexpr = "",
               ROW_ACC: tl.constexpr = False, PREFETCH: tl.constexpr = False):
    """(m, s, t) of z = row / T for ROWS rows; row_ptr (ROWS,) pointers, row_ok (ROWS,) bool. POLICY: the
    loads' L2 eviction policy ("evict_last" keeps the row for a second pass). ROW_ACC: s and t are per-row
    scalars summed every tile (fewer registers, one more reduction per tile) instead of per-lane vectors.
    PREFETCH: the next tile's load is issued before this tile's reductions, so two tiles are in flight."""
    cols0 = tl.arange(0, BLOCK_V)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    if ROW_ACC:
        s = tl.zeros([ROWS], tl.float32)
        t = tl.zeros([ROWS], tl.float32)
    else:
        s = tl.zeros([ROWS, BLOCK_V], tl.float32)
        t = tl.zeros([ROWS, BLOCK_V], tl.float32)
    if PREFETCH:
        nxt = tl.load(row_ptr[:, None] + cols0[None, :], mask=row_ok[:, None] & (cols0 < V)[None, :],
                      other=float("-inf"), eviction_policy=POLICY)
    for start in range(0, V, BLOCK_V):
        cols = start + cols0
        if PREFETCH:
            x = nxt
            cn = cols + BLOCK_V  # past V on the last tile: masked, no traffic
            nxt = tl.load(row_ptr[:, None] + cn[None, :], mask=row_ok[:, None] & (cn < V)[None, :],
                          other=float("-inf"), eviction_policy=POLICY)
        else:
            x = tl.load(row_ptr[:, None] + cols[None, :], mask=row_ok[:, None] & (cols < V)[None, :],
                        other=float("-inf"), eviction_policy=POLICY)
        z = _scale(x.to(tl.float32), T, Tlo, invT, lo, hi, HAS_T)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing finite yet: keep -inf - -inf out
        dm = m - base                                         # <= 0; -inf for an empty state (c = 0)
        c = tl.exp2(dm * LOG2E)
        d = z - base[:, None]
        e = tl.exp2(d * LOG2E)
        if ROW_ACC:
            if WITH_ENT:  # as below, with the tile's terms summed first
                t = (t + s * tl.maximum(dm, -FLT_MAX)) * c + tl.sum(e * tl.maximum(d, -FLT_MAX), axis=1)
            s = s * c + tl.sum(e, axis=1)
        else:
            if WITH_ENT:  # (t + s dm) c re-expresses the old sum against the new max (row_stats_merge);
                # clamping -inf to -FLT_MAX makes the empty terms (s = 0, e = 0) add 0, not 0 * -inf = NaN
                t = (t + s * tl.maximum(dm, -FLT_MAX)[:, None]) * c[:, None] + e * tl.maximum(d, -FLT_MAX)
            s = s * c[:, None] + e
        m = m_new
    if not ROW_ACC:  # one return: the compiler traces code after an early return in a constexpr branch
        s = tl.sum(s, axis=1)
        t = tl.sum(t, axis=1)
    return m, s, t


@triton.jit
def _finish_stats(x_t, m, s, t, T, Tlo, invT, lo, hi, HAS_T: tl.constexpr):
    """logp, log s, entropy and the unrounded logp (fp64) from (m, s, t) and the target's raw logit x_t.
    Rows whose max is infinite (all -inf, or a +inf logit) get NaN, as torch. logp has one rounding:
    x_t / T, the subtraction of m and log s are in fp64 (as grpo_math.h target_logp64)."""
    bad = (m == float("inf")) | (m == float("-inf"))
    s = tl.where(bad, float("nan"), s)
    t = tl.where(bad, float("nan"), t)
    z_t = x_t.to(tl.float64)
    if HAS_T:
        z_t = z_t / (tl.cast(T, tl.float64) + tl.cast(Tlo, tl.float64))
    log_s64 = tl.log(s.to(tl.float64))
    logp64 = (z_t - m.to(tl.float64)) - log_s64
    logs = log_s64.to(tl.float32)
    ent = logs - tl.math.div_rn(t, s)
    return logp64.to(tl.float32), logs, ent, logp64


@triton.jit
def _grad_pass(row_ptr, out_ptr, row_ok, tgt, x_t, m, logs, H, g, ge, V, T, Tlo, invT, lo, hi,
               HAS_T: tl.constexpr, HAS_ENT: tl.constexpr, REVERSE: tl.constexpr, BF16_RNE: tl.constexpr,
               BLOCK_V: tl.constexpr, ROWS: tl.constexpr, POLICY: tl.constexpr = "",
               PREFETCH: tl.constexpr = False):
    """dlogits rows: a p_j (+ b p_j (log p_j + H)), a = -g / T, b = -ge / T; at the target
    g (1 - p_t) / T (+ the same entropy term), computed once per row from x_t, which every thread read
    before the caller's barrier (out may alias the row). Each element is loaded and stored by the same
    thread in the same tile, so in place is safe. REVERSE walks the tiles last to first: right after pass 1
    the row's tail is the part most likely still in L2. POLICY: the L2 eviction policy of this pass's loads
    and stores ("evict_first": their lines are not needed again, so they do not push other rows'
    first-pass lines out). PREFETCH: the next tile's load is issued before this tile's math and store
    (it reads other columns, so in place stays safe)."""
    if HAS_T:  # per-row scalars divided by the fp64 temperature
        t64 = tl.cast(T, tl.float64) + tl.cast(Tlo, tl.float64)
        a = (-g.to(tl.float64) / t64).to(tl.float32)
        b = (-ge.to(tl.float64) / t64).to(tl.float32)
    else:
        a = -g
        b = -ge
    live = row_ok & ((g != 0.0) | (ge != 0.0))  # zero rows: stores only, loads masked off
    zl_t = (_scale(x_t, T, Tlo, invT, lo, hi, HAS_T) - m) - logs
    p_t = tl.exp2(zl_t * LOG2E)
    v_t = g * (1.0 - p_t)
    if HAS_T:
        v_t = (v_t.to(tl.float64) / t64).to(tl.float32)
    if HAS_ENT:  # p (log p + H), 0 where p = 0 (log p = -inf clamped: 0 * -FLT_MAX, not NaN)
        v_t = v_t + b * (p_t * (tl.maximum(zl_t, -FLT_MAX) + H))
    cols0 = tl.arange(0, BLOCK_V)
    n_tiles = tl.cdiv(V, BLOCK_V)
    if PREFETCH:
        c0 = (n_tiles - 1) * BLOCK_V + cols0 if REVERSE else cols0
        nxt = tl.load(row_ptr[:, None] + c0[None, :], mask=(c0 < V)[None, :] & live[:, None], other=0.0,
                      eviction_policy=POLICY)
    for i in range(0, n_tiles):
        if REVERSE:
            start = (n_tiles - 1 - i) * BLOCK_V
        else:
            start = i * BLOCK_V
        cols = start + cols0
        cmask = (cols < V)[None, :]
        if PREFETCH:
            x = nxt
            if REVERSE:  # the tile before (none after the first: start - BLOCK_V < 0, masked)
                cn = cols - BLOCK_V
            else:
                cn = cols + BLOCK_V
            nxt = tl.load(row_ptr[:, None] + cn[None, :], mask=((cn >= 0) & (cn < V))[None, :] & live[:, None],
                          other=0.0, eviction_policy=POLICY)
        else:
            x = tl.load(row_ptr[:, None] + cols[None, :], mask=cmask & live[:, None], other=0.0,
                        eviction_policy=POLICY)
        # log p_j, the max off first
        zl = (_scale(x.to(tl.float32), T, Tlo, invT, lo, hi, HAS_T) - m[:, None]) - logs[:, None]
        p = tl.exp2(zl * LOG2E)
        val = a[:, None] * p
        if HAS_ENT:
            val = val + b[:, None] * (p * (tl.maximum(zl, -FLT_MAX) + H[:, None]))
        val = tl.where(cols[None, :] == tgt[:, None], v_t[:, None], val)
        val = tl.where(live[:, None], val, 0.0)
        tl.store(out_ptr[:, None] + cols[None, :], _to_out(val, out_ptr, BF16_RNE), mask=cmask & row_ok[:, None],
                 eviction_policy=POLICY)


# --- @triton.jit kernels ------------------------------------------------------------------------------
@triton.jit
def _logprobs_kernel(logits, targets, logp_out, stats_out, ent_out, lo_out, N, V, stride, T, Tlo, invT, lo, hi,
                     HAS_T: tl.constexpr, WITH_STATS: tl.constexpr, WITH_ENT: tl.constexpr, WITH_LO: tl.constexpr,
                     BLOCK_V: tl.constexpr, ROWS: tl.constexpr, ROW_ACC: tl.constexpr, PREFETCH: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    row_ptr = logits + rows64 * stride
    tgt = tl.load(targets + rows64, mask=row_ok, other=0)
    x_t = tl.load(row_ptr + tgt, mask=row_ok, other=0.0).to(tl.float32)  # issued before the row loop
    m, s, t = _row_stats(row_ptr, row_ok, V, T, Tlo, invT, lo, hi, HAS_T, WITH_ENT, BLOCK_V, ROWS, "", ROW_ACC,
                         PREFETCH)
    logp, logs, ent, logp64 = _finish_stats(x_t, m, s, t, T, Tlo, invT, lo, hi, HAS_T)
    tl.store(logp_out + rows64, logp, mask=row_ok)
    if WITH_LO:  # the rounding residual, for sums of logp over a sequence (grpo_math.h target_logp)
        tl.store(lo_out + rows64, (logp64 - logp.to(tl.float64)).to(tl.float32), mask=row_ok)
    if WITH_STATS:
        tl.store(stats_out + 2 * rows64, m, mask=row_ok)
        tl.store(stats_out + 2 * rows64 + 1, logs, mask=row_ok)
    if WITH_ENT:
        tl.store(ent_out + rows64, ent, mask=row_ok)


@triton.jit
def _softmax_grad_kernel(logits, targets, stats, ent, g_logp, g_ent, dlogits, N, V, stride, out_stride, T, Tlo, invT,
                         lo, hi, HAS_T: tl.constexpr, HAS_ENT: tl.constexpr, BF16_RNE: tl.constexpr,
                         BLOCK_V: tl.constexpr, ROWS: tl.constexpr, PREFETCH: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    row_ptr = logits + rows64 * stride
    out_ptr = dlogits + rows64 * out_stride
    tgt = tl.load(targets + rows64, mask=row_ok, other=0)
    g = tl.load(g_logp + rows64, mask=row_ok, other=0.0)
    if HAS_ENT:
        ge = tl.load(g_ent + rows64, mask=row_ok, other=0.0)
        H = tl.load(ent + rows64, mask=row_ok, other=0.0)
    else:
        ge = tl.zeros([ROWS], tl.float32)
        H = tl.zeros([ROWS], tl.float32)
    live = row_ok & ((g != 0.0) | (ge != 0.0))
    # a target outside [0, V) (a block of vocabulary columns without it): no one-hot term, x_t not read
    x_t = tl.load(row_ptr + tgt, mask=live & (tgt >= 0) & (tgt < V), other=0.0).to(tl.float32)
    m = tl.load(stats + 2 * rows64, mask=row_ok, other=0.0)
    logs = tl.load(stats + 2 * rows64 + 1, mask=row_ok, other=0.0)
    tl.debug_barrier()  # every thread has read x_t before any thread overwrites the row (in place)
    _grad_pass(row_ptr, out_ptr, row_ok, tgt, x_t, m, logs, H, g, ge, V, T, Tlo, invT, lo, hi, HAS_T, HAS_ENT, False,
               BF16_RNE, BLOCK_V, ROWS, "", PREFETCH)


# --- launchers ----------------------------------------------------------------------------------------
class Tile(NamedTuple):
    """A row launch's shape: BLOCK_V elements per tile, ROWS rows per program, num_warps, num_stages (None:
    Triton's default), l2_hints (the two-pass loss kernel's cache policies: pass 1 loads evict_last, pass 2
    loads and stores evict_first), row_acc (_row_stats ROW_ACC: per-row scalar sums), prefetch (both
    passes issue the next tile's load before the current tile's math: two tiles in flight) and persistent
    (the loss kernel only: that many programs per SM loop over the row blocks, bounding the rows in flight
    so that pass 2 can find them in L2)."""
    block_v: int
    rows: int
    num_warps: int
    num_stages: int | None = None
    l2_hints: bool = False
    row_acc: bool = False
    prefetch: bool = False
    persistent: int = 0  # the loss kernel: programs per SM of a persistent grid (0: a program per row block)

    def launch(self, stats_pass: bool = True) -> dict:
        """The launch's keyword arguments: tile constexprs (ROW_ACC only for kernels with a stats pass),
        num_warps and num_stages."""
        kw = dict(BLOCK_V=self.block_v, ROWS=self.rows, PREFETCH=self.prefetch, num_warps=self.num_warps)
        if stats_pass:
            kw["ROW_ACC"] = self.row_acc
        return kw if self.num_stages is None else dict(kw, num_stages=self.num_stages)


def row_config(V: int, elem_bytes: int) -> Tile:
    """The Tile for rows of V elements (TILE overrides it). A long row's tile is 4096 elements, 64 bytes
    per thread (bf16/fp16: 4 warps, fp32: 8 warps). On an H200 (bench/results/tune_triton.csv) 4096 x 4
    warps ran bf16 token_logprobs at N = 16384, V = 151936 in 1.56 ms against 2.16 ms for the earlier
    8192 x 16 warps, and the loss kernel within noise of it (5.41 vs 5.47 ms; no tile of that sweep was
    faster beyond the noise). Short rows are packed ROWS to a program (~2048 elements a tile)."""
    if TILE is not None:
        return TILE
    block_v = max(16, min(triton.next_power_of_2(V), MAX_BLOCK_V or 4096))
    rows = max(1, min(64, ROW_ELEMS // block_v))
    if rows == 1:  # 64 bytes per thread
        num_warps = max(1, min(16, block_v * elem_bytes // (64 * 32)))
    else:
        num_warps = max(1, min(16, rows * block_v // 512))
    return Tile(block_v, rows, num_warps)


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (a persistent grid's unit); the CPU interpreter counts cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return os.cpu_count() or 1


def temperature_args(temperature: float) -> dict:
    """The temperature as an fp32 pair T + Tlo, fp32 RN(1/temperature) and the |x| range where the fma
    steps are exact (as grpo_math.h TempScale)."""
    t = float(temperature)
    t32 = float(torch.tensor(t, dtype=torch.float32))
    tlo = float(torch.tensor(t - t32, dtype=torch.float32))
    inv = float(torch.tensor(1.0 / t, dtype=torch.float32))
    ok = 2.0 ** -32 <= t32 <= 2.0 ** 32
    return dict(T=t32, Tlo=tlo, invT=inv, lo=2.0 ** -64 if ok else float("inf"), hi=2.0 ** 64 if ok else 0.0,
                HAS_T=t != 1.0)


def bf16_rne(out: torch.Tensor) -> bool:
    """Whether stores to `out` round fp32 -> bf16 by hand (the interpreter's cast truncates)."""
    return out.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def row_stride(x2d: torch.Tensor) -> int:
    return x2d.stride(0) if x2d.shape[0] > 1 else x2d.shape[1]


def logprobs(logits2d, targets1d, temperature=1.0, with_entropy=False, want_stats=True, logp_lo=None):
    """logits2d (N, V) fp32/bf16/fp16 with unit vocab stride, targets1d (N,) int64 ->
    logp (N,), stats (N, 2) [m, log s] or None, entropy (N,) or None, all float32. logp_lo (N,) float32,
    optional, receives logp's rounding residual."""
    N, V = logits2d.shape
    f32 = dict(dtype=torch.float32, device=logits2d.device)
    logp = torch.empty(N, **f32)
    stats = torch.empty(N, 2, **f32) if want_stats else None
    ent = torch.empty(N, **f32) if with_entropy else None
    if N == 0:
        return logp, stats, ent
    tile = row_config(V, logits2d.element_size())
    _logprobs_kernel[(triton.cdiv(N, tile.rows),)](
        logits2d, targets1d, logp, logp if stats is None else stats, logp if ent is None else ent,
        logp if logp_lo is None else logp_lo, N, V, row_stride(logits2d), **temperature_args(temperature),
        WITH_STATS=want_stats, WITH_ENT=with_entropy, WITH_LO=logp_lo is not None, **tile.launch())
    return logp, stats, ent


def softmax_grad(logits2d, targets1d, stats, entropy, g_logp, g_ent, temperature=1.0, out=None):
    """dlogits (N, V) in the logits' dtype = d/dz of sum(g_logp logp + g_ent entropy). stats (N, 2) from
    `logprobs`; entropy and g_ent (N,) float32 or both None; g_logp (N,) float32. `out` may be logits2d."""
    N, V = logits2d.shape
    out = torch.empty((N, V), dtype=logits2d.dtype, device=logits2d.device) if out is None else out
    if N == 0:
        return out
    has_ent = g_ent is not None
    tile = row_config(V, logits2d.element_size())
    _softmax_grad_kernel[(triton.cdiv(N, tile.rows),)](
        logits2d, targets1d, stats, entropy if has_ent else g_logp, g_logp, g_ent if has_ent else g_logp, out, N, V,
        row_stride(logits2d), row_stride(out), **temperature_args(temperature), HAS_ENT=has_ent,
        BF16_RNE=bf16_rne(out), **tile.launch(stats_pass=False))
    return out
