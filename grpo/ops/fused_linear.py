"""fused_linear_grpo_loss: lm_head matmul + GRPO loss + its gradients, chunked so no [N, V] logits tensor
ever exists (the no-grad logprob pass, fused_linear_logprobs, is in fused_linear_logprobs.py).

The "tokens" schedule (the default for token-level ratios), per chunk of tokens: logits = h_chunk @ W^T (+ b)
in the input dtype (fp32 accumulation inside the GEMM), the loss kernel turns them into dlogits (in place;
an fp32 copy for low precision on CPU: _grad_rows), then dhidden_chunk = dlogits @ W and dW += dlogits^T @ h
(db += sum of dlogits rows). All of it runs in the
forward; the backward only scales the saved gradients by the upstream gradient, in place where the dtype
allows (no copy of dW or dhidden). The "vocab" schedule (fused_linear_vocab.py, registered in SCHEDULES)
keeps no gradient from the forward and recomputes the logits per vocabulary block in the backward.

Order: reference -> chunk planning -> launch helpers -> schedules -> custom ops + autograd -> functional API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import _backend, _checks
from .config import LossConfig, LossOutput
from .logprobs import launch_logprobs, launch_softmax_grad
from .loss import check_token_inputs, grpo_loss_ref, kernel_inputs, launch_loss, launch_loss_head, loss_metrics


# --- reference (the spec) -----------------------------------------------------------------------------
def materialize_logits(hidden, weight, bias=None):
    """hidden (..., H) @ weight (V, H)^T (+ bias (V,)) -> logits (..., V) in the input dtype: the naive path.
    The bias goes into the GEMM (addmm, one rounding), exactly as the fused op's chunks do."""
    if bias is None:
        return torch.matmul(hidden, weight.t())
    H = hidden.shape[-1]
    return torch.addmm(bias, hidden.reshape(-1, H), weight.t()).view(*hidden.shape[:-1], weight.shape[0])


def fused_linear_grpo_loss_ref(hidden, weight, targets, mask, advantages, *, bias=None, **kw):
    """Reference: materialized logits + grpo_loss_ref (autograd does every gradient). Same keywords as
    grpo_loss_ref (old_logp, ref_logp, sampling_logp, config, num_tokens, num_sequences)."""
    return grpo_loss_ref(materialize_logits(hidden, weight, bias), targets, mask, advantages, **kw)


# --- chunk planning -----------------------------------------------------------------------------------
CHUNK_MULTIPLE = 64   # rows per chunk come in multiples of 64 (GEMM tiles, vector rows)
MIN_CHUNK = 256       # thinner GEMMs run far below the machine's rate (2-core CPU: 64 rows ~1.7x slower
                      # than 256 end to end), and each chunk re-reads and re-writes the fp32 dW (8 V H bytes)
MAX_CHUNK = 16384     # tiny vocabularies would otherwise ask for enormous chunks; one GEMM is plenty
# On a GPU each chunk also reads and writes the fp32 dW accumulator (8 V H bytes) while its GEMMs do
# 6 chunk H V FLOPs: 0.75 chunk FLOP/byte against the H100's ~265 (767 TFLOP/s bf16 over 2.9 TB/s), so
# chunks under ~3500 tokens are bound by the accumulator. Measured on an H100 at N=16384, H=4096,
# V=151936 bf16 (bench/results/bench_fused_linear.csv): chunk 448 (N H / V) 156 ms = 391 TFLOP/s,
# chunk 4096 92 ms = 665 TFLOP/s, with 1.2 GB of chunk logits.
MIN_CHUNK_CUDA = 4096


def plan_chunk(N: int, H: int, V: int, chunk_tokens=None, cuda: bool = False) -> int:
    """Tokens per chunk. Default rule: chunk * V ~ N * H, i.e. one chunk of logits is about as large as
    the hidden states already in memory; round(N * H / V / 64) * 64, clamped to [256, 16384] (on CUDA to
    [4096, 16384]: MIN_CHUNK_CUDA), at most N (one chunk when it all fits). Peak extra memory is one chunk
    of logits (chunk * V elements in the input dtype) plus O(N) vectors, plus the fp32 dW accumulator for
    low-precision weights (and an fp32 chunk * V temporary when a low-precision bias needs its gradient).
    `chunk_tokens` (an int >= 1) overrides the rule (still at most N)."""
    if chunk_tokens is not None:
        return max(1, min(int(chunk_tokens), N))
    c = int(round(N * H / max(V, 1) / CHUNK_MULTIPLE)) * CHUNK_MULTIPLE
    floor = MIN_CHUNK_CUDA if cuda else MIN_CHUNK
    return max(1, min(max(floor, min(MAX_CHUNK, c)), N))


def chunk_bounds(N: int, chunk: int):
    """(start, end) token ranges of the chunks."""
    return [(s, min(N, s + chunk)) for s in range(0, N, max(1, chunk))]


# --- launch helpers -----------------------------------------------------------------------------------
def _chunk_logits(h2d, weight, bias, s, e, buf):
    """buf[:e-s] = h2d[s:e] @ W^T (+ b), in the input dtype, written into the reused chunk buffer."""
    out = buf[: e - s]
    if bias is None:
        return torch.mm(h2d[s:e], weight.t(), out=out)
    return torch.addmm(bias, h2d[s:e], weight.t(), out=out)


_ADDMM_OUT_DTYPE = {"ok": None}  # whether this torch has addmm(..., out_dtype=fp32, out=) for CUDA bf16/fp16


def _addmm_fp32(acc, a, b):
    """acc (m, n) fp32 += a (m, k) @ b (k, n), a and b in the input dtype (dW += dl^T h: a = dl^T). fp32 data:
    one in-place addmm. Low precision on CUDA: the GEMM in the input dtype straight into the fp32 accumulator
    (addmm out_dtype); where torch lacks it, a GEMM in the input dtype whose (m, n) result is added in fp32.
    On CPU (no out_dtype kernel) a and b are upcast (a may already be fp32: _grad_rows): the products of bf16
    numbers are exact in fp32, so this only costs time."""
    if a.dtype == torch.float32 or not a.is_cuda:
        acc.addmm_(a.float(), b.float())  # .float() of an fp32 tensor is the tensor itself
    else:
        if _ADDMM_OUT_DTYPE["ok"] is not False:
            try:
                torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
                _ADDMM_OUT_DTYPE["ok"] = True
                return
            except (RuntimeError, TypeError, NotImplementedError):
                _ADDMM_OUT_DTYPE["ok"] = False
        acc.add_(torch.mm(a, b))


def _mm_fp32_out(a, b, out, k_block=8192):
    """out (m, n) fp32 = a (m, k) @ b (k, n), a and b in the input dtype, fp32 output (no rounding to the
    input dtype: the backward's scaling then rounds once). CUDA low precision: the GEMM in the input dtype
    with an fp32 output (mm out_dtype); CPU low precision: fp32 GEMMs on k-blocks upcast on the fly (exact
    products; the transient is k_block * (m + n) floats, not a copy of b; a may already be fp32)."""
    if a.dtype == b.dtype == torch.float32:
        torch.mm(a, b, out=out)
    elif a.is_cuda:
        try:
            torch.mm(a, b, out_dtype=torch.float32, out=out)
        except (RuntimeError, TypeError, NotImplementedError):
            out.copy_(torch.mm(a, b))
    else:
        out.zero_()
        for k0 in range(0, a.shape[1], k_block):
            out.addmm_(a[:, k0:k0 + k_block].float(), b[k0:k0 + k_block].float())


def _fp32_grad_rows(lg) -> bool:
    """Whether a chunk's dlogits go to an fp32 copy rather than in place in the input dtype: low precision on
    CPU. There the gradient GEMMs run in fp32 anyway (torch's CPU build has no bf16-in, fp32-out GEMM, so
    their inputs are upcast), and rounding dlogits to bf16 first only adds an error torch's one rounding of
    g * dlogits does not have (bf16 dW / dhidden then failed the numerics rule in ~3 of 1000 draws at small
    shapes). On CUDA the GEMMs read bf16 dlogits (tensor cores), written in place."""
    return lg.dtype != torch.float32 and not lg.is_cuda


def _grad_rows(lg, t, stats, g, temperature, backend):
    """The chunk's dlogits from its logits lg (n, V), row stats (n, 2) and g (n,): in place in lg, or (where
    _fp32_grad_rows) into an fp32 copy of lg (the upcast is exact: the kernel sees the same values)."""
    out = lg.float() if _fp32_grad_rows(lg) else lg
    return launch_softmax_grad(out, t, stats, None, g, None, temperature, out=out, backend=backend)


def _chunk_backward(dl, h2d, weight, s, e, grads, db_done=False):
    """From the chunk's dlogits dl (n, V): dhidden rows, dW and db (unless _exact_bias_grad took it), all into
    fp32 buffers."""
    dh, dW, db = grads
    if dh is not None:
        _mm_fp32_out(dl, weight, dh[s:e])
    if dW is not None:
        _addmm_fp32(dW, dl.t(), h2d[s:e])
    if db is not None and not db_done:
        db.add_(dl.sum(0, dtype=torch.float32))


def _exact_bias_grad(db, lg, t, stats, g, temperature):
    """db (V,) fp32 += sum_n g_n (onehot(t_n) - p_n) / T over the chunk, from its logits lg (n, V) in the input
    dtype, stats (n, 2) [max, log s] of the scaled logits and g (n,) = dLoss/dlogp, in fp32 (lg may be a block
    of vocabulary columns: a target t_n outside [0, V) adds no one-hot term). Why: for
    low-precision logits, summing the dlogits after their rounding and scaling by the upstream gradient in the
    backward rounds twice (up to ~1 ulp where one token dominates a column; torch rounds g * dlogits once).
    Costs an fp32 (rows with g != 0, V) temporary per chunk, only when a low-precision bias needs its gradient."""
    rows = g.nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    gt = g[rows] / temperature  # (n',)
    p = lg[rows].float().div_(temperature).sub_(stats[rows, :1]).sub_(stats[rows, 1:]).exp_()  # (n', V)
    db.sub_(gt @ p)
    tr = t[rows]
    inside = (tr >= 0) & (tr < db.numel())
    db.index_add_(0, tr[inside], gt[inside])


def _needs_exact_db(grads, lg):
    """Low-precision bias gradient from rounded dlogits (CUDA): _exact_bias_grad sums it in fp32 first."""
    return grads[2] is not None and lg.dtype != torch.float32 and not _fp32_grad_rows(lg)


def _tokenwise_sweep(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, grads, out, backend,
                     keep=None):
    """One sweep: per chunk, logits -> launch_loss (loss, logp, entropy and dlogits in place) -> GEMMs.
    The chunk's per-token inputs are passed as (n, 1) views with per-token advantages, so the kernel's
    (B, T) = (n, 1) indexing sees exactly that chunk's tokens. keep = (stats (N, 2), g (N,)) fp32 buffers,
    optional: filled with the row stats and dLoss/dlogp (the vocab schedule's forward, grads all None)."""
    N, T = m.numel(), m.shape[1]
    tok_loss, logp, ent = out
    col = lambda x, s, e: None if x is None else x.reshape(N, 1)[s:e]  # noqa: E731
    adv_tok = adv.repeat_interleave(T)
    want_grad = any(x is not None for x in grads)
    buf = torch.empty(min(chunk, N), weight.shape[0], dtype=h2d.dtype, device=h2d.device)
    exact_db = _needs_exact_db(grads, buf)
    # exact_db: the bias gradient reads the logits after the head gave g, so dlogits come in a second pass;
    # so do fp32 dlogits of low-precision logits (_fp32_grad_rows)
    in_place = want_grad and not exact_db and not _fp32_grad_rows(buf)
    for s, e in chunk_bounds(N, chunk):
        lg = _chunk_logits(h2d, weight, bias, s, e, buf)
        tl, lp, en, st, g = launch_loss(lg, t1d[s:e], col(m, s, e), col(coef, s, e), adv_tok[s:e], col(old, s, e),
                                        col(ref, s, e), col(samp, s, e), config,
                                        dlogits=lg if in_place else None, backend=backend)
        tok_loss[s:e], logp[s:e] = tl, lp
        if ent is not None:
            ent[s:e] = en
        if keep is not None:
            keep[0][s:e], keep[1][s:e] = st, g
        if not want_grad:
            continue
        if exact_db:
            _exact_bias_grad(grads[2], lg, t1d[s:e], st, g, config.temperature)
        dl = lg if in_place else _grad_rows(lg, t1d[s:e], st, g, config.temperature, backend)
        _chunk_backward(dl, h2d, weight, s, e, grads, db_done=exact_db)


def _sequence_forward(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, out, backend,
                      want_stats, buf):
    """Sweep 1 of a sequence-level ratio / IS weight (no gradient): per chunk logits -> logp, row stats
    (m, log s) when `want_stats`, entropy; then the per-sequence head over all N tokens (O(N)).
    Returns stats (N, 2) or None and g (N,) = dLoss/dlogp, fp32."""
    N = m.numel()
    tok_loss, logp, ent = out
    stats = torch.empty(N, 2, dtype=torch.float32, device=h2d.device) if want_stats else None
    lo = torch.empty(N, dtype=torch.float32, device=h2d.device)  # logp's rounding residual, for the sums
    for s, e in chunk_bounds(N, chunk):
        lg = _chunk_logits(h2d, weight, bias, s, e, buf)
        lp, st, en = launch_logprobs(lg, t1d[s:e], config.temperature, ent is not None, want_stats=want_stats,
                                     backend=backend, logp_lo=lo[s:e])
        logp[s:e] = lp
        if want_stats:
            stats[s:e] = st
        if ent is not None:
            ent[s:e] = en
    tl, g = launch_loss_head(logp, m, coef, adv, old, ref, samp, config, backend, logp_lo=lo)
    tok_loss.copy_(tl)
    return stats, g


def _sequence_sweeps(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, grads, out, backend):
    """Sequence-level ratio / IS weight: a token's gradient needs its whole sequence's logp. Sweep 1:
    _sequence_forward. Sweep 2: recompute each chunk's logits (same GEMM, same shapes: the same values the
    stats came from) and write dlogits from the saved stats and g (_grad_rows), then the GEMMs."""
    want_grad = any(x is not None for x in grads)
    buf = torch.empty(min(chunk, m.numel()), weight.shape[0], dtype=h2d.dtype, device=h2d.device)
    stats, g = _sequence_forward(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, out, backend,
                                 want_grad, buf)
    if not want_grad:
        return
    exact_db = _needs_exact_db(grads, buf)
    for s, e in chunk_bounds(m.numel(), chunk):
        lg = _chunk_logits(h2d, weight, bias, s, e, buf)
        if exact_db:
            _exact_bias_grad(grads[2], lg, t1d[s:e], stats[s:e], g[s:e], config.temperature)
        dl = _grad_rows(lg, t1d[s:e], stats[s:e], g[s:e], config.temperature, backend)
        _chunk_backward(dl, h2d, weight, s, e, grads, db_done=exact_db)


def launch_fused_linear_loss(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config: LossConfig, chunk: int,
                             need=(True, True, True), backend="cpu"):
    """h2d (N, H), weight (V, H), bias (V,) or None (input dtype); t1d (N,) int64; m / coef / old / ref /
    samp (B, T) float32 (or None), adv (B,) float32; need = (dhidden, dweight, dbias) wanted.

    Returns tok_loss (N,), logp (N,), entropy (N,) or None, dhidden (N, H) or None, dweight (V, H) or None,
    dbias (V,) or None, all float32: the gradients of sum(coef * tok_loss)."""
    N, V = h2d.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=h2d.device)
    out = (torch.empty(N, **f32), torch.empty(N, **f32), torch.empty(N, **f32) if config.entropy else None)
    grads = (torch.empty(N, h2d.shape[1], **f32) if need[0] else None,
             torch.zeros(V, weight.shape[1], **f32) if need[1] else None,
             torch.zeros(V, **f32) if need[2] and bias is not None else None)
    if N > 0:
        sweep = _tokenwise_sweep if config.tokenwise else _sequence_sweeps
        sweep(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, grads, out, backend)
    return (*out, *grads)


# --- schedules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """How fused_linear_grpo_loss orders its work; each is registered by name in SCHEDULES.

    forward(h2d, weight, bias, t1d, m, coef, adv, old, ref, samp, config, chunk, need, backend) ->
        (tok_loss (N,), logp (N,), entropy (N,) or None, s0, s1, s2): three tensors (or None) for the backward;
    fake(hidden, weight, bias, N, need) -> the fakes of s0, s1, s2 (torch.compile's shapes);
    save(ctx, inputs, output) keeps what backward(ctx, g_loss) -> (dhidden, dweight, dbias) reads;
    cuda_floor: plan_chunk applies MIN_CHUNK_CUDA (the fp32 dW accumulator's traffic) on CUDA."""
    forward: Callable
    fake: Callable
    save: Callable
    backward: Callable
    cuda_floor: bool


SCHEDULES: dict[str, Schedule] = {}


def schedule_names() -> tuple[str, ...]:
    """What `schedule=` accepts: "auto" (resolve_schedule) and the registered schedules."""
    return ("auto", *SCHEDULES)


def get_schedule(name) -> Schedule:
    try:
        return SCHEDULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"schedule: expected one of {list(schedule_names())}, got {name!r}") from None


def resolve_schedule(name, config: LossConfig) -> str:
    """'auto' -> 'vocab' for sequence-level ratios / IS weights, else 'tokens'. Why: for those the tokens
    schedule recomputes every chunk's logits too (8 N H V), so the vocab schedule's extra GEMM is gone and
    only its savings remain (no fp32 (V, H) dW accumulator, no per-chunk read-modify-write of it). Measured
    on a 2-core Zen 4 (bench_fused_linear --ratio-level sequence, N=4096, H=512, V=32000): vocab 0.94x the
    tokens schedule's time in fp32, 0.97x in bf16 with 87 MB extra against 139. Token-level: tokens (6 N H V)."""
    if name == "auto":
        return "tokens" if config.tokenwise else "vocab"
    get_schedule(name)
    return name


def _tokens_fake(hidden, weight, bias, N, need):
    f = dict(dtype=torch.float32)
    V, H = weight.shape
    return (hidden.new_empty((N, H) if need[0] else (0,), **f), weight.new_empty((V, H) if need[1] else (0,), **f),
            weight.new_empty((V,) if need[2] and bias is not None else (0,), **f))


def _tokens_save(ctx, inputs, output):
    ctx.save_for_backward(output[3], output[4], output[5])


def _scaled(buf, g, dtype):
    """buf * g in `dtype`. Same dtype, eager: in place, so the saved buffer itself becomes the gradient
    (autograd takes it without a copy once the graph is freed; a second backward through a retained graph is
    caught by the saved tensor's version counter). While torch.compile traces the backward (tensors are
    functional/fake subclasses there) a mutation of a forward output breaks the partitioner: out of place.
    Different dtype (fp32 accumulator, bf16 parameter): one rounding from fp32, no fp32 temporary."""
    if buf.dtype == dtype:
        return buf.mul_(g) if type(buf) is torch.Tensor and not torch.compiler.is_compiling() else buf * g
    return torch.mul(buf, g, out=torch.empty(buf.shape, dtype=dtype, device=buf.device))


def _tokens_backward(ctx, g):
    dh, dW, db = ctx.saved_tensors
    shape, h_dtype, w_dtype, b_dtype = ctx.meta
    return (_scaled(dh, g, h_dtype).view(shape) if ctx.need[0] else None,
            _scaled(dW, g, w_dtype) if ctx.need[1] else None,
            _scaled(db, g, b_dtype) if ctx.need[2] else None)


# "tokens": every gradient built in the forward, chunk by chunk over the tokens (6 N H V FLOPs; an fp32 (V, H)
# dW accumulator for low-precision weights); the backward only scales them. "vocab": fused_linear_vocab.py.
SCHEDULES["tokens"] = Schedule(launch_fused_linear_loss, _tokens_fake, _tokens_save, _tokens_backward, True)


# --- custom ops (opaque to torch.compile) + autograd -----------------------------------------------------
# Forward: loss, logp, entropy and the schedule's three tensors for the backward (the "tokens" schedule: the
# gradients dhidden, dW, db, which its backward scales by the upstream gradient in place in eager mode, see
# _scaled). Those outputs are the op's own buffers: the functional API drops them and nobody else should keep
# them.
@torch.library.custom_op("grpo::fused_linear_grpo_loss", mutates_args=())
def _fused_op(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              mask: torch.Tensor, coef: torch.Tensor, advantages: torch.Tensor, old_logp: torch.Tensor | None,
              ref_logp: torch.Tensor | None, sampling_logp: torch.Tensor | None, eps_low: float, eps_high: float,
              dual_clip: float, beta: float, kl: str, ratio_level: str, is_mode: str, is_cap: float,
              temperature: float, entropy: bool, chunk: int, need_dh: bool, need_dw: bool, need_db: bool,
              backend: str, schedule: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor, torch.Tensor]:
    V, H = weight.shape
    _checks.check_targets_range("targets", targets, V)
    config = LossConfig(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip or None, beta=beta, kl=kl,
                        ratio_level=ratio_level, is_mode=is_mode or None, is_cap=is_cap, temperature=temperature,
                        entropy=entropy)
    tok_loss, logp, ent, *saved = get_schedule(schedule).forward(
        hidden.reshape(-1, H), weight, bias, targets.reshape(-1), mask, coef, advantages, old_logp, ref_logp,
        sampling_logp, config, chunk, (need_dh, need_dw, need_db), backend)
    loss = (tok_loss.view(mask.shape).double() * coef).sum().to(torch.float32)
    empty = lambda x: x if x is not None else logp.new_empty(0)  # noqa: E731 -- "not computed" placeholders
    return (loss, logp.view(mask.shape), empty(ent if ent is None else ent.view(mask.shape)), *map(empty, saved))


@_fused_op.register_fake
def _(hidden, weight, bias, targets, mask, coef, advantages, old_logp, ref_logp, sampling_logp, eps_low, eps_high,
      dual_clip, beta, kl, ratio_level, is_mode, is_cap, temperature, entropy, chunk, need_dh, need_dw, need_db,
      backend, schedule):
    f = dict(dtype=torch.float32)
    return (mask.new_empty((), **f), mask.new_empty(mask.shape, **f),
            mask.new_empty(mask.shape if entropy else (0,), **f),
            *get_schedule(schedule).fake(hidden, weight, bias, mask.numel(), (need_dh, need_dw, need_db)))


def _setup_context(ctx, inputs, output):
    hidden, weight, bias = inputs[0], inputs[1], inputs[2]
    ctx.schedule = get_schedule(inputs[25])
    ctx.schedule.save(ctx, inputs, output)
    ctx.set_materialize_grads(False)  # else autograd builds zero (V, H) / (N, H) grads for the unused outputs
    ctx.meta = (hidden.shape, hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.need = (inputs[21], inputs[22], inputs[23] and bias is not None)


def _backward(ctx, g_loss, g_logp, g_ent, g_s0, g_s1, g_s2):
    if g_loss is None:  # only the detached outputs (logp, entropy) were used downstream
        return (None,) * 26
    return ctx.schedule.backward(ctx, g_loss.to(torch.float32)) + (None,) * 23


_fused_op.register_autograd(_backward, setup_context=_setup_context)


# --- functional API -----------------------------------------------------------------------------------
def _check_linear(hidden, weight, bias, targets, dtypes, lead_dims=None):
    """hidden (..., H) floating, weight (V, H) same dtype/device, bias (V,) or None, targets (...) int."""
    _checks.check_tensor("hidden", hidden, floating=True, dtypes=dtypes)
    if lead_dims is not None and hidden.dim() != lead_dims + 1:
        raise ValueError(f"hidden: expected (B, T, H), got {_checks.describe(hidden)}")
    if hidden.dim() < 2:
        raise ValueError(f"hidden: expected (..., H) with at least 2 dims, got {_checks.describe(hidden)}")
    _checks.check_tensor("weight", weight, ndim=2, floating=True)
    H = hidden.shape[-1]
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight: expected dtype {hidden.dtype} like hidden, got {_checks.describe(weight)}")
    if weight.shape[1] != H or weight.shape[0] < 1:
        raise ValueError(f"weight: expected (V, H) with H = {H} (hidden's last dim) and V >= 1, got "
                         f"{_checks.describe(weight)}")
    if bias is not None:
        _checks.check_tensor("bias", bias, shape=(weight.shape[0],), floating=True)
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias: expected dtype {hidden.dtype} like hidden, got {_checks.describe(bias)}")
    _checks.check_tensor("targets", targets, integer=True)
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets: expected shape {tuple(hidden.shape[:-1])} (hidden without the hidden dim), "
                         f"got {_checks.describe(targets)}")
    _checks.check_same_device("hidden", hidden, weight=weight, bias=bias, targets=targets)


def _check_chunk(chunk_tokens):
    if chunk_tokens is None:
        return
    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool):
        raise TypeError(f"chunk_tokens: expected None or an int >= 1, got {chunk_tokens!r}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: expected None or an int >= 1, got {chunk_tokens!r}")


def _check_loss_inputs(hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, sampling_logp, config,
                       dtypes):
    if not isinstance(config, LossConfig):
        raise TypeError(f"config: expected a grpo.ops.LossConfig, got {type(config).__name__}")
    _checks.check_tensor("hidden", hidden)
    _check_linear(hidden, weight, bias, targets, dtypes, lead_dims=2)
    check_token_inputs("hidden", hidden, mask, advantages, old_logp, ref_logp, sampling_logp, config)


def fused_linear_grpo_loss(hidden, weight, targets, mask, advantages, *, old_logp=None, ref_logp=None,
                           sampling_logp=None, config=LossConfig(), num_tokens=None, num_sequences=None, bias=None,
                           chunk_tokens=None, backend="auto", schedule="auto"):
    """GRPO loss straight from the last hidden states and the lm_head, without an [N, V] logits tensor.

    hidden (B, T, H) fp32/bf16/fp16, weight (V, H) and bias (V,) or None in hidden's dtype (a tied
    embedding weight works: autograd adds both uses), targets (B, T) int, mask (B, T), advantages (B,),
    old_logp / ref_logp / sampling_logp (B, T) or None, config, num_tokens / num_sequences as in grpo_loss.
    chunk_tokens: tokens per chunk (default: plan_chunk's rule, chunk * V ~ N * H). backend: "auto", "cpu",
    "cuda", "triton" (chunked, the loss kernels of that backend) or "torch" (the materialized reference).
    schedule: "tokens" (the gradients are built in the forward, chunk by chunk over the tokens: 6 N H V FLOPs,
    and an fp32 (V, H) dW accumulator for low-precision weights), "vocab" (the forward keeps O(N) per-token
    vectors; the backward recomputes the logits one vocabulary block at a time: 8 N H V FLOPs, no (V, H) fp32
    buffer; see fused_linear_vocab.py) or "auto" (resolve_schedule: vocab for sequence-level ratios and IS
    weights, where both schedules do 8 N H V, else tokens). chunk_tokens sets both schedules' logits budget (chunk * V elements).
    Returns LossOutput(loss () float32 differentiable in hidden, weight and bias; metrics as grpo_loss).
    """
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if backend == "torch" else ())
    _check_loss_inputs(hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, sampling_logp, config,
                       dtypes)
    _checks.check_scalar("num_tokens", num_tokens, positive=True)
    _checks.check_scalar("num_sequences", num_sequences, positive=True)
    _check_chunk(chunk_tokens)
    schedule = resolve_schedule(schedule, config)
    sched = get_schedule(schedule)
    backend = _backend.resolve(backend, hidden, "hidden")
    if backend == "torch":
        if _checks.data_checks_enabled():
            _checks.check_targets_range("targets", targets, weight.shape[0])
        return fused_linear_grpo_loss_ref(hidden, weight, targets, mask, advantages, bias=bias, old_logp=old_logp,
                                          ref_logp=ref_logp, sampling_logp=sampling_logp, config=config,
                                          num_tokens=num_tokens, num_sequences=num_sequences)
    B, T, H = hidden.shape
    m, coef, adv, old, ref, samp = kernel_inputs(mask, advantages, old_logp, ref_logp, sampling_logp, config,
                                                 num_tokens, num_sequences)
    grad = torch.is_grad_enabled()
    need = (grad and hidden.requires_grad, grad and weight.requires_grad,
            grad and bias is not None and bias.requires_grad)
    chunk = plan_chunk(B * T, H, weight.shape[0], chunk_tokens, cuda=hidden.is_cuda and sched.cuda_floor)
    loss, logp, ent, _, _, _ = _fused_op(
        hidden, weight, bias, targets.to(torch.int64).contiguous(), m, coef, adv, old, ref, samp,
        float(config.eps_low), float(config.eps_high), float(config.dual_clip or 0.0), float(config.beta), config.kl,
        config.ratio_level, config.is_mode or "", float(config.is_cap), float(config.temperature),
        bool(config.entropy), chunk, *need, backend, schedule)
    metrics = loss_metrics(logp.detach(), m, adv, old, ref_logp, samp, config, ent if config.entropy else None)
    return LossOutput(loss, metrics)
