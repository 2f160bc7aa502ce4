"""The registered GRPO variants: pure PyTorch functions (the reference math) plus the codes the C++/CUDA
kernels switch on (csrc/params.h). Each formula names the TRL function it matches
(trl/trainer/grpo_trainer.py)."""
from __future__ import annotations

import torch

from .registry import Registry

KL_ESTIMATORS = Registry("KL estimator")
ADV_ESTIMATORS = Registry("advantage estimator")
ADV_SCALES = Registry("advantage scale")
IS_MODES = Registry("importance-sampling mode")
RATIO_LEVELS = Registry("ratio level")
AGGREGATIONS = Registry("loss aggregation")


# --- KL(policy || ref) per token; TRL GRPOTrainer._compute_loss uses k3 -----------------------------
@KL_ESTIMATORS.register("k3", code=0)
def kl_k3(logp, ref):  # (B, T) -> (B, T): exp(ref - logp) - (ref - logp) - 1
    d = ref - logp
    return torch.exp(d) - d - 1


@KL_ESTIMATORS.register("k2", code=1)
def kl_k2(logp, ref):  # 1/2 (logp - ref)^2
    return 0.5 * (logp - ref) ** 2


@KL_ESTIMATORS.register("k1", code=2)
def kl_k1(logp, ref):  # logp - ref
    return logp - ref


# --- advantages: baseline (estimator) then scale; TRL _generate_and_score_completions ---------------
@ADV_ESTIMATORS.register("grpo", code=0)
def centered_grpo(grouped):  # (n, G) -> (n, G): r - mean(group)
    return grouped - grouped.mean(dim=1, keepdim=True)


@ADV_ESTIMATORS.register("rloo", code=1)
def centered_rloo(grouped):  # r - mean(others) = G / (G - 1) * (r - mean); G == 1 has no baseline
    G = grouped.shape[1]
    if G == 1:
        return torch.zeros_like(grouped)
    return (grouped - grouped.mean(dim=1, keepdim=True)) * (G / (G - 1))


def _std(x, dim=None, keepdim=False):  # unbiased like torch.std; a single element has std 0, not NaN
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.sum(dim=dim, keepdim=keepdim) if dim is not None else x.sum())
    return x.std(dim=dim, keepdim=keepdim) if dim is not None else x.std()


@ADV_SCALES.register("group", code=0)
def scale_group(centered, grouped, eps):  # TRL scale_rewards="group": / (std(group) + eps)
    return centered / (_std(grouped, dim=1, keepdim=True) + eps)


@ADV_SCALES.register("batch", code=1)
def scale_batch(centered, grouped, eps):  # TRL scale_rewards="batch": / (std(all rewards) + eps)
    return centered / (_std(grouped.reshape(-1)) + eps)


@ADV_SCALES.register("none", code=2)
def scale_none(centered, grouped, eps):  # Dr. GRPO: no std division
    return centered


# --- truncated importance sampling between trainer (old) and sampler logprobs ------------------------
# TRL: vllm_importance_sampling_mode; the weight is a constant (no gradient) that multiplies the policy term.
def _token_log_ratio(old, samp, mask):
    return old - samp


def _seq_log_ratio(old, samp, mask):  # product of token ratios over the sequence
    return ((old - samp) * mask).sum(-1, keepdim=True)


@IS_MODES.register("token_truncate", code=1)
def is_token_truncate(old, samp, mask, cap):  # (B, T) -> (B, T)
    return torch.exp(_token_log_ratio(old, samp, mask)).clamp(max=cap)


@IS_MODES.register("token_mask", code=2)
def is_token_mask(old, samp, mask, cap):
    w = torch.exp(_token_log_ratio(old, samp, mask))
    return w.masked_fill(w > cap, 0.0)


@IS_MODES.register("sequence_truncate", code=3)
def is_sequence_truncate(old, samp, mask, cap):  # (B, T) -> (B, 1)
    return torch.exp(_seq_log_ratio(old, samp, mask)).clamp(max=cap)


@IS_MODES.register("sequence_mask", code=4)
def is_sequence_mask(old, samp, mask, cap):
    w = torch.exp(_seq_log_ratio(old, samp, mask))
    return w.masked_fill(w > cap, 0.0)


IS_NONE_CODE = 0


# --- policy ratio level ------------------------------------------------------------------------------
@RATIO_LEVELS.register("token", code=0)
def log_ratio_token(logp, old, mask):  # (B, T): logp - old
    return logp - old


@RATIO_LEVELS.register("sequence", code=1)
def log_ratio_sequence(logp, old, mask):  # GSPO: masked mean of logp - old, broadcast to (B, 1)
    return (((logp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


# --- loss aggregation: `fn` reduces per-token losses as TRL does; `extra` gives the equivalent per-token
# weights the kernels use (loss = sum(weights * per_token_loss)). num_tokens / num_sequences are the
# global counts under gradient accumulation; max_len is Dr. GRPO's constant (default: T).
def _w_token_mean(mask, num_tokens, num_sequences, max_len):
    denom = mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens
    return mask / denom


def _w_seq_mean_token_mean(mask, num_tokens, num_sequences, max_len):
    nseq = mask.shape[0] if num_sequences is None else num_sequences
    return mask / (mask.sum(-1, keepdim=True).clamp(min=1.0) * nseq)


def _w_seq_mean_token_sum_norm(mask, num_tokens, num_sequences, max_len):
    nseq = mask.shape[0] if num_sequences is None else num_sequences
    return mask / (nseq * (mask.shape[1] if max_len is None else max_len))


@AGGREGATIONS.register("token_mean", extra=_w_token_mean)
def agg_token_mean(ptl, mask, num_tokens, num_sequences, max_len):  # TRL loss_type "bnpo"/"dapo"
    denom = mask.sum().clamp(min=1.0) if num_tokens is None else num_tokens
    return (ptl * mask).sum() / denom


@AGGREGATIONS.register("seq_mean_token_mean", extra=_w_seq_mean_token_mean)
def agg_seq_mean_token_mean(ptl, mask, num_tokens, num_sequences, max_len):  # TRL loss_type "grpo"
    per_seq = (ptl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / (mask.shape[0] if num_sequences is None else num_sequences)


@AGGREGATIONS.register("seq_mean_token_sum_norm", extra=_w_seq_mean_token_sum_norm)
def agg_seq_mean_token_sum_norm(ptl, mask, num_tokens, num_sequences, max_len):  # TRL "dr_grpo"
    nseq = mask.shape[0] if num_sequences is None else num_sequences
    return (ptl * mask).sum() / (nseq * (mask.shape[1] if max_len is None else max_len))
