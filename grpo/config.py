"""One typed config for a GRPO run: dataclasses per concern, named presets, YAML/JSON files and
`key=value` overrides (dotted: `loss.beta=0.04`, `train.steps=20`), validated with messages that name
the key. The resolved config is printed at start and written to the run folder (config.yaml).

    cfg = resolve_config("tiny", files=["my.yaml"], overrides=["train.steps=3"])
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .ops.config import LossConfig
from .ops.registry import Registry


@dataclass
class ModelConfig:
    path: str = "default"             # "default" (embedded SmolLM2-135M-Instruct), "tiny" (random, built locally)
                                      # or a local HF model folder
    tiny_seed: int = 0                # seed of the tiny random model
    dtype: str = "float32"            # trainer weights: float32 | bfloat16
    gradient_checkpointing: bool = False
    autocast_bf16: bool = True        # bf16 autocast of the forward on GPU (ignored on CPU)


@dataclass
class DataConfig:
    task: str = "arithmetic"          # a registered generator (arithmetic, countdown, ...) or a .jsonl path
    size: int = 2000                  # generated examples (train + eval)
    seed: int = 0
    level: list = field(default_factory=lambda: [0])  # difficulty level(s) of the generator (a list mixes them)
    template: str = "r1"              # prompt template: r1 (think/answer system prompt) | plain
    eval_size: int = 32               # held-out examples
    question_field: str = "question"  # JSONL field names
    answer_field: str = "answer"
    on_error: str = "raise"           # malformed JSONL rows: raise | skip (reported with line numbers)
    max_prompt_tokens: int = 192      # longer prompts are reported and skipped, never truncated


@dataclass
class SamplingOptions:
    group_size: int = 8               # G completions per prompt
    max_tokens: int = 96              # completion cap
    temperature: float = 1.0          # also the loss's temperature (kept equal by the engine)
    top_p: float = 1.0
    top_k: int = -1
    stop: list = field(default_factory=list)
    eval_temperature: float = 0.0     # evaluation decodes greedily by default
    eval_samples: int = 1             # completions per held-out prompt (pass@1 is their mean accuracy)


@dataclass
class SamplerConfig:
    backend: str = "vllm"             # vllm | torch
    dtype: str = "float32"
    max_model_len: int = 512
    gpu_memory_utilization: float = 0.3
    cpu_kv_cache_gib: int = 1
    enforce_eager: bool = True
    prefix_caching: bool = True
    # KV block size in tokens; 0: 32 on CPU (vLLM's own default there, 128, lets no prompt under 128 tokens
    # share), vLLM's default on GPU. Prefix caching shares full blocks only, also among the n completions of
    # one prompt scheduled in the same step: a group's prompt is prefilled once plus its last partial block
    block_size: int = 0
    bucket_mb: int = 256              # weight-sync bucket size
    # CPU GEMMs of vLLM: onednn (packed weights, re-packed at every sync) | plain (weights as loaded, synced by
    # an in-place copy; on the default preset generation 3-10% slower, sync ~4x faster): bench/README.md
    # "Sampler" has the measured trade-off
    cpu_gemm: str = "onednn"
    plain_torch_rows: int = 80        # plain mode: GEMMs of >= this many rows (prefills) use F.linear; 0: never
    sleep_between_rollouts: bool = True  # GPU: free the KV cache while training (no-op on CPU)
    sync_check_every: int = 0         # check_in_sync every K steps (0: never); raises above sync_tolerance
    sync_tolerance: float = 1e-3


@dataclass
class RewardConfig:
    # [{"name": ..., "weight": ..., "kwargs": {...}}]; names are registered rewards or "module:function"
    functions: list = field(default_factory=lambda: [{"name": "accuracy", "weight": 1.0},
                                                     {"name": "format_soft", "weight": 0.5}])
    on_error: str = "raise"           # a raising / NaN reward: raise (names sample and function) | zero (counted)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    max_grad_norm: float = 1.0        # 0: no clipping
    warmup_steps: int = 0             # optimizer updates of linear warm-up
    schedule: str = "constant"        # constant | linear | cosine (decay to 0 over all updates)
    fused: bool = True                # torch's fused AdamW (one kernel per parameter; CPU: 0.08 vs 0.6 s a
                                      # step for 135M fp32 parameters); false: the per-parameter loop


@dataclass
class TrainConfig:
    steps: int = 20                   # rollouts (each followed by `updates_per_rollout` optimizer updates)
    prompts_per_step: int = 8         # P prompts -> P * G sequences per rollout
    updates_per_rollout: int = 1      # mu; > 1 computes old logprobs with a no-grad fused pass
    token_budget: int = 8192          # tokens (prompt + completion, padded) per micro-batch
    advantage_scale: str = "group"    # group | batch | none
    advantage_estimator: str = "grpo" # grpo | rloo
    dynamic_sampling: bool = False    # drop groups with equal rewards, oversample to refill
    max_oversample_rounds: int = 2
    eval_every: int = 0               # evaluate on the held-out split every K steps (0: start and end only)
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    backend: str = "auto"             # kernel backend for grpo.ops
    chunk_tokens: Optional[int] = None  # fused linear loss chunk (None: its rule)
    fused_schedule: str = "auto"      # auto | tokens | vocab: fused linear loss gradients built in the forward over
                                      # token chunks (6 NHV FLOPs, fp32 (V, H) dW accumulator for bf16), or
                                      # recomputed in the backward per vocabulary block (8 NHV FLOPs, no (V, H) fp32
                                      # buffer); auto: vocab for sequence-level ratios (8 NHV either way), else tokens
    layout: str = "auto"              # auto | padded | packed | shared_prefix (auto: packed under flash-attn,
                                      # else shared_prefix: a group's prompt runs once; padded with checkpointing)


@dataclass
class LogConfig:
    run_dir: str = "runs/{preset}"    # {preset}, {time} are filled in
    tensorboard: bool = True          # when installed
    progress: bool = True             # rich progress bar
    checkpoint_every: int = 0         # 0: only at the end
    keep_last: int = 2
    plot: bool = True                 # PNG curves at the end


@dataclass
class Config:
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --- presets ------------------------------------------------------------------------------------------
PRESETS = Registry("preset")


@PRESETS.register("default")
def _default() -> dict:
    """SmolLM2-135M-Instruct on 2 CPU cores, ~10-15 min: one-digit sums without carries (the model
    gets some right at temperature 1, so most groups carry signal) and the R1 format reward."""
    return {"model": {"path": "default"},
            "data": {"task": "arithmetic", "level": [0, 1], "size": 1000, "eval_size": 32},
            "sampling": {"group_size": 6, "max_tokens": 64, "temperature": 0.8, "eval_temperature": 0.6,
                         "eval_samples": 4},
            # The 135M model never writes <think>/<answer> tags on its own (measured: 0 of 192 samples), so
            # accuracy reads the last number when tags are missing; the format reward pays once tags appear.
            "rewards": {"functions": [{"name": "accuracy", "weight": 1.0, "kwargs": {"require_tags": False}},
                                      {"name": "format_soft", "weight": 0.5}]},
            "optim": {"lr": 1e-5, "warmup_steps": 2},
            "train": {"steps": 14, "prompts_per_step": 6, "token_budget": 4096},
            "sampler": {"sync_check_every": 5},
            "loss": {"eps_high": 0.28, "is_mode": "token_truncate"}}


@PRESETS.register("tiny")
def _tiny() -> dict:
    """Random tiny Qwen2 (built locally): tests, smoke runs, the convergence test."""
    return {"model": {"path": "tiny"},
            "data": {"task": "arithmetic", "level": 0, "size": 200, "eval_size": 8, "max_prompt_tokens": 400},
            "sampling": {"group_size": 4, "max_tokens": 16},
            "sampler": {"max_model_len": 512},
            "rewards": {"functions": [{"name": "format_soft", "weight": 1.0}]},
            "optim": {"lr": 1e-3},
            "train": {"steps": 3, "prompts_per_step": 4, "token_budget": 2048},
            "log": {"tensorboard": False, "progress": False, "plot": False}}


def _qwen_gpu(size: str) -> Callable[[], dict]:
    def preset() -> dict:
        return {"model": {"path": f"models/Qwen2.5-{size}-Instruct", "dtype": "bfloat16",
                          "gradient_checkpointing": True},
                "data": {"task": "countdown", "level": 1, "size": 20000, "eval_size": 256},
                "sampling": {"group_size": 8, "max_tokens": 1024},
                "sampler": {"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": 0.35},
                "rewards": {"functions": [{"name": "countdown", "weight": 1.0},
                                          {"name": "format_strict", "weight": 0.1}]},
                "optim": {"lr": 1e-6, "warmup_steps": 10},
                "train": {"steps": 500, "prompts_per_step": 32, "token_budget": 32768, "dynamic_sampling": True},
                "loss": {"eps_high": 0.28, "is_mode": "token_truncate"}}
    preset.__doc__ = f"Qwen2.5-{size}-Instruct from a local folder (model.path=...), Countdown, one GPU."
    return preset


PRESETS.register("qwen2.5-0.5b")(_qwen_gpu("0.5B"))
PRESETS.register("qwen2.5-1.5b")(_qwen_gpu("1.5B"))


# --- building and validating --------------------------------------------------------------------------
class ConfigError(ValueError):
    pass


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """value converted to the annotated type tp, or ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if tp is list or origin is list:
            if isinstance(value, int) and not isinstance(value, bool):  # a single level, say
                return [value]
            if isinstance(value, (str, dict)) or not hasattr(value, "__iter__"):
                raise TypeError
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def _build(cls, data: dict, prefix: str):
    """A dataclass instance from a (partial) nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; {prefix.rstrip('.') or 'config'} has {sorted(names)}")
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v, tp = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping, got {v!r}")
            kw[f.name] = _build(tp, v, f"{prefix}{f.name}.")
        else:
            kw[f.name] = _coerce(prefix + f.name, v, tp)
    try:
        return cls(**kw)
    except ValueError as e:  # LossConfig validates itself
        raise ConfigError(str(e)) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """'loss.beta=0.04' -> {'loss': {'beta': 0.04}}; the value is parsed as YAML (numbers, bools, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return node


def load_file(path) -> dict:
    """A YAML or JSON config file (nested mapping, same keys as Config)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p}: not found")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def resolve_config(preset: Optional[str] = None, *, files=(), overrides=(), data: Optional[dict] = None) -> Config:
    """Preset (or the file's / overrides' `preset`, else "default") <- files <- data <- overrides."""
    layers = [load_file(f) for f in files] + ([data] if data else []) + [parse_override(o) for o in overrides]
    merged: dict = {}
    for layer in layers:
        merged = _merge(merged, layer)
    name = preset or merged.get("preset") or "default"
    base = PRESETS.get(name, "preset").fn()
    cfg = _build(Config, _merge(_merge(base, merged), {"preset": name}), "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks the dataclasses cannot do alone."""
    def need(ok, key, expected, got):
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {got!r}")
    s, t, o = cfg.sampling, cfg.train, cfg.optim
    need(s.group_size >= 1, "sampling.group_size", "an int >= 1", s.group_size)
    need(s.max_tokens >= 1, "sampling.max_tokens", "an int >= 1", s.max_tokens)
    need(s.eval_samples >= 1, "sampling.eval_samples", "an int >= 1", s.eval_samples)
    need(s.eval_temperature >= 0, "sampling.eval_temperature", "a number >= 0 (0: greedy)", s.eval_temperature)
    need(s.temperature > 0 and math.isfinite(s.temperature), "sampling.temperature",
         "a finite number > 0 (training samples; eval_temperature may be 0)", s.temperature)
    need(cfg.loss.temperature in (1.0, s.temperature), "loss.temperature",
         f"sampling.temperature ({s.temperature}) or unset: the loss must see the sampler's temperature",
         cfg.loss.temperature)
    need(t.steps >= 1, "train.steps", "an int >= 1", t.steps)
    need(t.prompts_per_step >= 1, "train.prompts_per_step", "an int >= 1", t.prompts_per_step)
    need(t.updates_per_rollout >= 1, "train.updates_per_rollout", "an int >= 1", t.updates_per_rollout)
    need(t.token_budget >= 16, "train.token_budget", "an int >= 16", t.token_budget)
    need(t.device in ("auto", "cpu", "cuda"), "train.device", "auto | cpu | cuda", t.device)
    from .ops.fused_linear import schedule_names
    need(t.fused_schedule in schedule_names(), "train.fused_schedule", " | ".join(schedule_names()), t.fused_schedule)
    from .policy import LAYOUTS
    need(t.layout in ("auto", *LAYOUTS), "train.layout", " | ".join(("auto", *LAYOUTS)), t.layout)
    need(not (t.layout == "shared_prefix" and cfg.model.gradient_checkpointing), "train.layout",
         "auto, padded or packed with model.gradient_checkpointing (transformers keeps no KV cache under it)",
         t.layout)
    need(o.lr > 0 and math.isfinite(o.lr), "optim.lr", "a finite number > 0", o.lr)
    need(o.schedule in SCHEDULES, "optim.schedule", " | ".join(SCHEDULES), o.schedule)
    need(o.max_grad_norm >= 0, "optim.max_grad_norm", "a number >= 0", o.max_grad_norm)
    need(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype", "float32 | bfloat16", cfg.model.dtype)
    need(cfg.sampler.backend in ("vllm", "torch"), "sampler.backend", "vllm | torch", cfg.sampler.backend)
    need(cfg.sampler.block_size >= 0 and cfg.sampler.block_size % 16 == 0, "sampler.block_size",
         "0 (auto) or a multiple of 16 (of 32 on CPU)", cfg.sampler.block_size)
    need(cfg.sampler.plain_torch_rows >= 0, "sampler.plain_torch_rows", "an int >= 0", cfg.sampler.plain_torch_rows)
    need(cfg.sampler.cpu_gemm in ("onednn", "plain"), "sampler.cpu_gemm", "onednn | plain", cfg.sampler.cpu_gemm)
    need(cfg.rewards.on_error in ("raise", "zero"), "rewards.on_error", "raise | zero", cfg.rewards.on_error)
    need(cfg.data.on_error in ("raise", "skip"), "data.on_error", "raise | skip", cfg.data.on_error)
    need(isinstance(cfg.rewards.functions, list) and len(cfg.rewards.functions) > 0, "rewards.functions",
         "a non-empty list of {name, weight, kwargs}", cfg.rewards.functions)
    for i, spec in enumerate(cfg.rewards.functions):
        need(isinstance(spec, dict) and isinstance(spec.get("name"), str), f"rewards.functions[{i}]",
             "a mapping with a string 'name'", spec)
        need(set(spec) <= {"name", "weight", "kwargs"}, f"rewards.functions[{i}]", "keys name, weight, kwargs",
             sorted(spec))
    need(cfg.data.max_prompt_tokens + s.max_tokens <= cfg.sampler.max_model_len, "sampler.max_model_len",
         f">= data.max_prompt_tokens + sampling.max_tokens = {cfg.data.max_prompt_tokens + s.max_tokens}",
         cfg.sampler.max_model_len)
    from .ops.variants import ADV_ESTIMATORS, ADV_SCALES
    try:
        ADV_SCALES.get(t.advantage_scale, "train.advantage_scale")
        ADV_ESTIMATORS.get(t.advantage_estimator, "train.advantage_estimator")
    except ValueError as e:
        raise ConfigError(str(e)) from None


SCHEDULES = ("constant", "linear", "cosine")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=120)


def describe_options() -> str:
    """Every option with its default (the `grpo train --help` epilog)."""
    lines = []

    def walk(cls, prefix):
        inst = cls()
        for f in dataclasses.fields(cls):
            v = getattr(inst, f.name)
            if dataclasses.is_dataclass(v):
                walk(type(v), prefix + f.name + ".")
            else:
                lines.append(f"  {prefix}{f.name} = {v!r}")
    walk(Config, "")
    return "\n".join(lines)
