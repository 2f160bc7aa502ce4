"""Config -> the objects a run needs: the model folder, the sampler, the optimizer and its schedule, and
the train / eval data (prompts too long for the context reported and skipped)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import data as data_mod
from .config import Config, ConfigError, ModelConfig
from .models import ensure_default_model, ensure_tiny_model
from .sampler.base import encode_prompts

# Which reward is "accuracy" for a task (evaluation reports it as accuracy).
CORRECTNESS = {"countdown": "countdown"}


def correctness_reward(task: str) -> str:
    return CORRECTNESS.get(task, "accuracy")


def resolve_model_path(mc: ModelConfig) -> Path:
    """"default" -> the converted SmolLM2 folder; "tiny" -> the random tiny Qwen2; else a local folder."""
    if mc.path == "default":
        return ensure_default_model()
    if mc.path == "tiny":
        return ensure_tiny_model(mc.tiny_seed)
    p = Path(mc.path).expanduser()
    if not (p / "config.json").exists():
        raise ConfigError(f"model.path: {p} is not a model folder (no config.json); there is no model hub here, "
                          f"give a local folder, or 'default' / 'tiny'")
    return p


def build_sampler(cfg: Config, model_path: Path):
    sc = cfg.sampler
    if sc.backend == "vllm":
        from .sampler.vllm_sampler import VLLMSampler
        return VLLMSampler(str(model_path), dtype=sc.dtype, max_model_len=sc.max_model_len,
                           gpu_memory_utilization=sc.gpu_memory_utilization, cpu_kv_cache_gib=sc.cpu_kv_cache_gib,
                           enforce_eager=sc.enforce_eager, seed=cfg.train.seed,
                           enable_prefix_caching=sc.prefix_caching, bucket_bytes=sc.bucket_mb << 20,
                           block_size=sc.block_size or None, cpu_gemm=sc.cpu_gemm,
                           plain_torch_rows=sc.plain_torch_rows)
    from .sampler.torch_sampler import TorchSampler
    return TorchSampler(str(model_path), dtype=sc.dtype)


def _lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return f


def build_optimizer(cfg: Config, model):
    """AdamW over the trainable parameters (tied weights once) and a warm-up + schedule LambdaLR over
    all optimizer updates (steps x updates_per_rollout)."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
                            **({"fused": True} if o.fused else {"foreach": False}))
    total = cfg.train.steps * cfg.train.updates_per_rollout
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(o.schedule, o.warmup_steps, total))
    return opt, sched


def build_data(cfg: Config, tokenizer):
    """(train examples, eval examples, report): generated or loaded, split, and filtered by prompt length
    against the context (skipped prompts are reported, never truncated)."""
    d = cfg.data
    if d.task.endswith(".jsonl"):
        examples = data_mod.load_jsonl(d.task, question_field=d.question_field, answer_field=d.answer_field,
                                       template=d.template, on_error=d.on_error)
        if isinstance(examples, tuple):  # on_error="skip" also returns the problems found
            examples, problems = examples
        else:
            problems = []
    else:
        examples = data_mod.make_dataset(task=d.task, n=d.size, seed=d.seed, level=d.level, template=d.template)
        problems = []
    train, evals = data_mod.train_eval_split(examples, eval_size=d.eval_size, seed=d.seed)

    def encode(messages):
        return encode_prompts(tokenizer, [messages])[0]

    limit = min(d.max_prompt_tokens, cfg.sampler.max_model_len - cfg.sampling.max_tokens)
    train, skipped_train = data_mod.filter_prompts(train, encode, limit)
    evals, skipped_eval = data_mod.filter_prompts(evals, encode, limit)
    if not train:
        raise ConfigError(f"data: every training prompt is longer than {limit} tokens "
                          f"(data.max_prompt_tokens / sampler.max_model_len - sampling.max_tokens)")
    report = {"malformed_rows": problems, "skipped_long_train": skipped_train, "skipped_long_eval": skipped_eval,
              "train": len(train), "eval": len(evals)}
    return train, evals, report
