"""The reference (the spec): pure-PyTorch GRPO math, importable by tests and benchmarks.

Every backend of grpo.ops is tested against these functions (DESIGN.md section 5).
"""
from grpo.ops.advantages import group_advantages_ref
from grpo.ops.logprobs import logprobs_at_dtype, token_logprobs_ref
from grpo.ops.loss import grpo_loss_ref, loss_metrics, per_token_loss_ref
from grpo.ops.variants import ADV_ESTIMATORS, ADV_SCALES, AGGREGATIONS, IS_MODES, KL_ESTIMATORS, RATIO_LEVELS

__all__ = [
    "group_advantages_ref", "token_logprobs_ref", "logprobs_at_dtype", "grpo_loss_ref", "per_token_loss_ref",
    "loss_metrics", "ADV_ESTIMATORS", "ADV_SCALES", "AGGREGATIONS", "IS_MODES", "KL_ESTIMATORS", "RATIO_LEVELS",
]
