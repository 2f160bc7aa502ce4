"""LossConfig: the GRPO loss options (TRL-compatible semantics, DESIGN.md section 3) and LossOutput."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .variants import AGGREGATIONS, IS_MODES, KL_ESTIMATORS, RATIO_LEVELS


@dataclass(frozen=True)
class LossConfig:
    eps_low: float = 0.2                  # clip ratio below at 1 - eps_low
    eps_high: float = 0.2                 # clip ratio above at 1 + eps_high (DAPO clip-higher: 0.28)
    dual_clip: Optional[float] = None     # c > 1: for A < 0 the loss is capped at -c * A (verl clip_ratio_c)
    beta: float = 0.0                     # KL coefficient; 0 needs no reference logprobs
    kl: str = "k3"                        # k3 | k2 | k1
    ratio_level: str = "token"            # token | sequence (GSPO)
    loss_agg: str = "token_mean"          # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    temperature: float = 1.0              # logits / temperature before log_softmax, as in sampling
    is_mode: Optional[str] = None         # None | token_truncate | token_mask | sequence_truncate | sequence_mask
    is_cap: float = 3.0                   # importance-sampling cap
    max_completion_length: Optional[int] = None  # Dr. GRPO's normalizer (None: the padded length T)
    entropy: bool = False                 # also compute the entropy metric (same read of the logits)

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"LossConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("eps_low", "eps_high"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(name, "a finite number >= 0")
        if self.eps_low >= 1:
            bad("eps_low", "a number in [0, 1)")
        if self.dual_clip is not None and (not isinstance(self.dual_clip, (int, float)) or not self.dual_clip > 1):
            bad("dual_clip", "None or a number > 1")
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0:
            bad("beta", "a finite number >= 0")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature <= 0:
            bad("temperature", "a finite number > 0")
        if not isinstance(self.is_cap, (int, float)) or not self.is_cap > 0:
            bad("is_cap", "a number > 0")
        if self.max_completion_length is not None and (
            not isinstance(self.max_completion_length, int) or self.max_completion_length < 1
        ):
            bad("max_completion_length", "None or an int >= 1")
        KL_ESTIMATORS.get(self.kl, "LossConfig.kl")
        RATIO_LEVELS.get(self.ratio_level, "LossConfig.ratio_level")
        AGGREGATIONS.get(self.loss_agg, "LossConfig.loss_agg")
        if self.is_mode is not None:
            IS_MODES.get(self.is_mode, "LossConfig.is_mode")

    @property
    def tokenwise(self) -> bool:
        """True when every token's loss depends on that token alone (the one-launch fused kernel)."""
        return self.ratio_level == "token" and (self.is_mode is None or self.is_mode.startswith("token"))


class LossOutput(NamedTuple):
    loss: torch.Tensor                     # () float32, differentiable in the logits (or hidden/weight)
    metrics: dict                          # name -> detached () tensor
