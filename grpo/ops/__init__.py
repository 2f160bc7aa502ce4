"""grpo.ops: the public, stable kernels API (DESIGN.md section 3).

    group_advantages(rewards (B,), group_size, *, scale, estimator, eps) -> (B,) float32
    token_logprobs(logits (B,T,V), targets (B,T), *, temperature, with_entropy) -> (B,T) float32 [, entropy]
    grpo_loss(logits, targets, mask, advantages, *, old_logp, ref_logp, sampling_logp, config) -> LossOutput
    rowwise_linear(x (..., K), weight (N, K), bias) -> (..., N)   CPU, inference: the sampler's plain GEMMs

`backend=`: "auto" (CUDA tensor -> Triton when available, GRPO_BACKEND=cuda -> CUDA; CPU tensor -> C++),
"triton", "cuda", "cpu", "torch" (the reference). Imports nothing from the engine.
"""
from .advantages import group_advantages, group_advantages_ref
from .config import LossConfig, LossOutput
from .fused_linear import fused_linear_grpo_loss
from .fused_linear_logprobs import fused_linear_logprobs
from . import fused_linear_vocab  # noqa: F401 -- registers schedule="vocab"
from .linear import rowwise_linear, rowwise_linear_ref
from .logprobs import token_logprobs, token_logprobs_ref
from .loss import grpo_loss, grpo_loss_ref, loss_metrics
from .variants import ADV_ESTIMATORS, ADV_SCALES, AGGREGATIONS, IS_MODES, KL_ESTIMATORS, RATIO_LEVELS

__all__ = [
    "group_advantages", "token_logprobs", "grpo_loss", "fused_linear_grpo_loss", "fused_linear_logprobs",
    "rowwise_linear", "rowwise_linear_ref", "LossConfig", "LossOutput",
    "group_advantages_ref", "token_logprobs_ref", "grpo_loss_ref", "loss_metrics",
    "ADV_ESTIMATORS", "ADV_SCALES", "AGGREGATIONS", "IS_MODES", "KL_ESTIMATORS", "RATIO_LEVELS",
]
