"""group_advantages: group-normalized advantages for every group in one launch.

Order: reference -> launchers (C++ / CUDA kernels in csrc/) -> custom op -> functional API.
"""
from __future__ import annotations

import torch

from . import _backend, _checks
from .variants import ADV_ESTIMATORS, ADV_SCALES


# --- reference (the spec) -----------------------------------------------------------------------------
def group_advantages_ref(rewards, group_size, *, scale="group", estimator="grpo", eps=1e-4):
    """TRL GRPOTrainer._generate_and_score_completions: a = (r - baseline) / (std + eps).

    rewards (B,) float -> (advantages (B,) in the rewards' dtype (>= float32), zero_std (B // G,) bool).
    Groups whose rewards are all equal (including G == 1) get exactly 0, never NaN.
    """
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    grouped = rewards.to(dtype).view(-1, group_size)  # (n, G)
    centered = ADV_ESTIMATORS.get(estimator, "estimator").fn(grouped)
    adv = ADV_SCALES.get(scale, "scale").fn(centered, grouped, eps)
    zero_std = grouped.amax(dim=1) == grouped.amin(dim=1)  # (n,)
    adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv)
    return adv.reshape(-1), zero_std


# --- launchers ----------------------------------------------------------------------------------------
def _launch(rewards, group_size, scale_code, est_code, eps, backend="cpu"):
    r = rewards.to(torch.float32).contiguous()
    if backend == "triton":
        from grpo.kernels import advantages as tk
        adv, zero = tk.group_advantages(r, group_size, scale_code, est_code, eps)
        return adv, zero.view(torch.bool)
    adv = torch.empty_like(r)
    zero = torch.empty(r.shape[0] // group_size, dtype=torch.uint8, device=r.device)
    _backend.native().advantages(**_backend.launch_args(r), rewards=r.data_ptr(), advantages=adv.data_ptr(),
                                 zero_std=zero.data_ptr(), B=r.shape[0], G=group_size, scale=scale_code,
                                 estimator=est_code, eps=eps)
    return adv, zero.view(torch.bool)


# --- custom op (opaque to torch.compile; data checks run here, eagerly) --------------------------------
@torch.library.custom_op("grpo::group_advantages", mutates_args=())
def _advantages_op(rewards: torch.Tensor, group_size: int, scale_code: int, est_code: int, eps: float,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.check_finite("rewards", rewards)
    return _launch(rewards, group_size, scale_code, est_code, eps, backend)


@_advantages_op.register_fake
def _(rewards, group_size, scale_code, est_code, eps, backend):
    B = rewards.shape[0]
    return rewards.new_empty(B, dtype=torch.float32), rewards.new_empty(B // group_size, dtype=torch.bool)


# --- functional API -----------------------------------------------------------------------------------
def group_advantages(rewards, group_size, *, scale="group", estimator="grpo", eps=1e-4, backend="auto",
                     return_zero_std=False):
    """Advantages of B = n * G rewards where consecutive rows of G form a group.

    rewards (B,) floating -> advantages (B,) float32 [, zero_std (B // G,) bool: groups with equal rewards,
    whose advantages are 0 and which dynamic sampling drops].
    scale: "group" | "batch" | "none"; estimator: "grpo" | "rloo"; eps is added to the std.
    """
    _checks.check_tensor("rewards", rewards, ndim=1, floating=True)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"rewards: B = {rewards.shape[0]} is not divisible by group_size = {group_size}")
    scale_v = ADV_SCALES.get(scale, "scale")
    est_v = ADV_ESTIMATORS.get(estimator, "estimator")
    _checks.check_scalar("eps", eps, nonneg=True, allow_none=False)
    backend = _backend.resolve(backend, rewards, "rewards")
    if backend == "torch":
        if _checks.data_checks_enabled():
            _checks.check_finite("rewards", rewards)
        adv, zero = group_advantages_ref(rewards, group_size, scale=scale, estimator=estimator, eps=eps)
        adv = adv.to(torch.float32)
    else:
        adv, zero = _advantages_op(rewards, group_size, scale_v.code, est_v.code, float(eps), backend)
    return (adv, zero) if return_zero_std else adv
