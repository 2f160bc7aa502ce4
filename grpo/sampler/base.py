"""The sampler contract: SamplingConfig in, Rollout out, shared by VLLMSampler and TorchSampler.

A Rollout holds B = P * n sequences, prompt-major: rows [i*n, (i+1)*n) are the n completions of prompt i,
so consecutive rows of n form one group (the layout grpo.ops.group_advantages expects).
The sampler imports nothing from the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol, Sequence, Union

import torch

# A prompt is chat messages ([{"role": ..., "content": ...}, ...]), plain text, or token ids.
Prompt = Union[str, Sequence[dict], Sequence[int]]


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 8                          # completions per prompt (the group size G)
    max_tokens: int = 128               # completion length cap; a capped completion finishes with "length"
    temperature: float = 1.0            # the loss must use the same temperature (LossConfig.temperature)
    top_p: float = 1.0
    top_k: int = -1                     # -1: off
    stop: tuple[str, ...] = ()          # stop strings (the stop string itself is not part of the completion)
    logprobs: bool = True               # return the sampler's logprobs of the chosen tokens

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"SamplingConfig.{name}: expected {expected}, got {getattr(self, name)!r}")
        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "an int >= 1")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "an int >= 1")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            bad("temperature", "a number >= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        if not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k != -1):
            bad("top_k", "-1 (off) or an int >= 1")


@dataclass
class Rollout:
    """B = P * n sampled sequences, prompt-major (rows [i*n, (i+1)*n) share prompt i)."""
    prompt_ids: list[list[int]]         # (B,) prompt token ids per sequence (chat template applied)
    completion_ids: torch.Tensor        # (B, T) int64, right-padded with pad_id; T = longest completion
    completion_mask: torch.Tensor       # (B, T) bool, True on generated tokens (EOS included when sampled)
    sampling_logp: Optional[torch.Tensor]  # (B, T) float32 logprob of each chosen token as the sampler
                                        # computed it after temperature; 0 at padding; None if not asked
    finish_reasons: list[str]           # (B,) "stop" (EOS or stop string) | "length" (max_tokens reached)
    group_index: torch.Tensor           # (B,) int64 index of the prompt each row came from
    texts: list[str]                    # (B,) decoded completions (special tokens skipped)
    n: int                              # group size
    pad_id: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # timings, token counts, which engine ran

    @property
    def num_sequences(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def lengths(self) -> torch.Tensor:
        """(B,) int64 completion lengths."""
        return self.completion_mask.sum(dim=1)


def encode_prompts(tokenizer, prompts: Sequence[Prompt], *, chat_template: bool = True) -> list[list[int]]:
    """The one place prompts become token ids. Chat messages go through the tokenizer's chat template
    (with the generation prompt); text goes through it as a single user turn when `chat_template` and the
    tokenizer has one, else is tokenized raw; token ids pass through unchanged."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if chat_template and getattr(tokenizer, "chat_template", None):
                out.append(_apply_template(tokenizer, [{"role": "user", "content": p}]))
            else:
                out.append(list(tokenizer(p, add_special_tokens=False)["input_ids"]))
        elif len(p) > 0 and isinstance(p[0], dict):
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"prompts[{i}]: chat messages given but the tokenizer has no chat template")
            out.append(_apply_template(tokenizer, list(p)))
        elif all(isinstance(t, int) for t in p) and len(p) > 0:
            out.append(list(p))
        else:
            raise TypeError(f"prompts[{i}]: expected chat messages, text or a non-empty list of token ids, "
                            f"got {type(p).__name__} {str(p)[:80]!r}")
    return out



def encode_checked(tokenizer, prompts, *, chat_template: bool, max_model_len: int, vocab_size=None) -> list[list[int]]:
    """encode_prompts, each prompt checked to fit: at most max_model_len - 1 tokens (the sampler must
    generate at least one) and, when vocab_size is given, ids inside the vocabulary. Errors name the prompt."""
    if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts: expected a list of prompts, got {type(prompts).__name__}")
    ids = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    for i, p in enumerate(ids):
        if len(p) > max_model_len - 1:
            raise ValueError(f"prompts[{i}]: {len(p)} tokens, but this sampler's max_model_len is "
                             f"{max_model_len}, so a prompt may have at most {max_model_len - 1}")
        bad = [t for t in p if vocab_size is not None and not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]} is outside the model's vocabulary (size {vocab_size})")
    return ids

def _apply_template(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def pad_completions(seqs: Sequence[Sequence[int]], logps: Optional[Sequence[Sequence[float]]], pad_id: int):
    """Right-pads completions into (B, T) ids, (B, T) bool mask and (B, T) float32 logprobs (or None).
    T >= 1 even when every completion is empty, so downstream shapes never have a zero dim."""
    B = len(seqs)
    T = max([len(s) for s in seqs] + [1])
    ids = torch.full((B, T), pad_id, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.bool)
    lp = torch.zeros((B, T), dtype=torch.float32) if logps is not None else None
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
            mask[i, : len(s)] = True
            if lp is not None:
                lp[i, : len(s)] = torch.as_tensor(list(logps[i]), dtype=torch.float32)
    return ids, mask, lp



def make_rollout(engine: str, prompt_ids: list, prompt_rows: list, seqs, logps, reasons, texts, n: int, pad_id: int,
                 seconds: float) -> Rollout:
    """The Rollout of P = len(prompt_ids) prompts' n completions each (rows prompt-major): pads the
    completions and records the timings. prompt_rows (B,) are each row's prompt ids; logps None when
    logprobs were not asked for."""
    comp, mask, lp = pad_completions(seqs, logps, pad_id)
    n_comp = sum(len(x) for x in seqs)
    meta = dict(engine=engine, seconds=seconds, prompts=len(prompt_ids),
                prompt_tokens=sum(len(p) for p in prompt_ids), completion_tokens=n_comp,
                tokens_per_s=n_comp / max(seconds, 1e-9), logprobs_mode="processed_logprobs")
    return Rollout(prompt_ids=prompt_rows, completion_ids=comp, completion_mask=mask, sampling_logp=lp,
                   finish_reasons=reasons, group_index=torch.arange(len(prompt_ids)).repeat_interleave(n),
                   texts=texts, n=n, pad_id=pad_id, meta=meta)

class Sampler(Protocol):
    """What the engine needs from a sampler."""
    tokenizer: Any

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Rollout:
        """n = sampling.n completions per prompt, prompt-major."""

    def update_weights(self, named_tensors: Union[Iterable[tuple[str, torch.Tensor]], torch.nn.Module]) -> dict:
        """Loads (hf_name, tensor) pairs in place; returns stats (bytes, seconds, GB/s, path)."""

    def check_in_sync(self, model: torch.nn.Module) -> float:
        """max |logprob(sampler) - logprob(model)| on a fixed probe sequence."""

    def sleep(self) -> None:
        """Frees what the sampler can between rollouts (KV cache, weights at level 2)."""

    def wake(self) -> None:
        """Undoes sleep before the next rollout."""


# --- weight updates and sync checks, shared by VLLMSampler and TorchSampler ---------------------------
NamedTensors = Union[Iterable[tuple[str, torch.Tensor]], torch.nn.Module]


def named_tensors_of(source: NamedTensors, *, tied: bool) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """(pairs, skipped): the (hf_name, detached tensor) pairs of `source` (an nn.Module's state_dict, or an
    iterable of pairs), without `lm_head.weight` when the model ties it to the embedding (`tied`): the
    embedding carries it, and loading both would load one tensor twice."""
    if isinstance(source, torch.nn.Module):
        items = list(source.state_dict().items())
    elif isinstance(source, (str, bytes, dict)) or not hasattr(source, "__iter__"):
        kind = "a dict (pass dict.items())" if isinstance(source, dict) else type(source).__name__
        raise TypeError(f"named_tensors: expected an nn.Module or an iterable of (name, tensor) pairs, got {kind}")
    else:
        items = list(source)
    pairs, skipped = [], []
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"named_tensors[{i}]: expected a (name, tensor) pair, got {type(item).__name__}")
        name, t = item
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"named_tensors[{i}] {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        if tied and name == "lm_head.weight":
            skipped.append(name)
            continue
        pairs.append((name, t.detach()))
    return pairs, skipped


def check_weights(pairs: Sequence[tuple[str, torch.Tensor]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Raises before anything is loaded: ValueError naming the first unknown name (with the closest known
    one), wrong shape, duplicate, or non-floating tensor. `expected` maps hf_name -> shape."""
    import difflib

    seen = set()
    for name, t in pairs:
        if name not in expected:
            close = difflib.get_close_matches(name, list(expected), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown weight name {name!r} (the model has {len(expected)} weights "
                             f"under Hugging Face names such as {next(iter(expected))!r}){hint}")
        if tuple(t.shape) != tuple(expected[name]):
            raise ValueError(f"{where}: weight {name!r} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[name])}")
        if not t.is_floating_point():
            raise ValueError(f"{where}: weight {name!r} has dtype {t.dtype}, expected a floating dtype")
        if name in seen:
            raise ValueError(f"{where}: weight {name!r} given twice")
        seen.add(name)


def weight_buckets(pairs: Sequence[tuple[str, torch.Tensor]], bucket_bytes: int):
    """Yields consecutive lists of pairs of at most `bucket_bytes` (a larger tensor goes alone)."""
    bucket, size = [], 0
    for name, t in pairs:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def probe_ids(tokenizer, length: int = 48) -> list[int]:
    """A fixed probe sequence of `length` token ids for check_in_sync: a chat-templated prompt and answer,
    repeated to length (deterministic for a given tokenizer)."""
    text = "What is 12 + 30? <think> 12 plus 30 equals 42 </think> <answer> 42 </answer>"
    ids = encode_prompts(tokenizer, [text], chat_template=True)[0] + list(
        tokenizer(text, add_special_tokens=False)["input_ids"])
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


@torch.no_grad()
def hf_token_logprobs(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """(len(ids) - 1,) float32 log p(ids[t] | ids[:t]) for t >= 1 under a Hugging Face causal LM, from an
    fp32 log_softmax of its logits (the trainer's view, for check_in_sync)."""
    dev = next(model.parameters()).device
    x = torch.as_tensor([list(ids)], dtype=torch.int64, device=dev)
    was_training = model.training
    model.eval()  # no dropout in the probe; the trainer's mode comes back after
    try:
        logits = model(input_ids=x).logits[0, :-1].float()
    finally:
        model.train(was_training)
    return torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])[:, 0].cpu()
