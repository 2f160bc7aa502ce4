"""TorchSampler: the Sampler contract with plain transformers/PyTorch, for machines without vLLM and as the
test oracle of VLLMSampler.

Batched decoding with a KV cache: all B = P * n rows (prompt-major, each prompt repeated n times) are
left-padded into one batch, prefilled once, then decoded one token per step with the model's own cache
(position ids from the attention mask, so left padding does not shift positions). Each step computes the
logprobs of the chosen tokens exactly as VLLMSampler's engine does (logprobs_mode="processed_logprobs"):
fp32 log_softmax of logits / temperature after top-k/top-p masking; at temperature 0 (greedy) no
temperature, log_softmax(logits). Sampling draws from the sampler's own seeded torch.Generator.
Imports nothing from the engine.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .base import (NamedTensors, Prompt, Rollout, SamplingConfig, check_weights, encode_checked, make_rollout,
                   hf_token_logprobs, named_tensors_of, probe_ids, weight_buckets)


def mask_top_k_top_p(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(R, V) float32 logits with everything outside the top-k / top-p nucleus set to -inf, by vLLM's rule
    (sort ascending; top-k keeps values >= the k-th largest; top-p drops the tokens whose cumulative
    ascending probability is <= 1 - top_p, always keeping the largest)."""
    if top_k == -1 and top_p >= 1.0:
        return z
    srt, idx = z.sort(dim=-1, descending=False)
    if top_k != -1:
        kth = srt[:, z.shape[-1] - min(top_k, z.shape[-1])][:, None]
        srt = srt.masked_fill(srt < kth, float("-inf"))
    if top_p < 1.0:
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False
        srt = srt.masked_fill(drop, float("-inf"))
    return torch.empty_like(z).scatter_(-1, idx, srt)


class TorchSampler:
    """Sampler over a Hugging Face causal LM. model_or_path: an nn.Module (used as is: pass a copy if the
    trainer must not share it) or a model folder; tokenizer: defaults to the folder's. max_model_len caps
    prompt + completion (default: config.max_position_embeddings). batch_size: rows decoded together
    (default all)."""

    def __init__(self, model_or_path, tokenizer=None, *, dtype: torch.dtype = torch.float32, device=None,
                 seed: int = 0, max_model_len: Optional[int] = None, chat_template: bool = True,
                 batch_size: Optional[int] = None, bucket_bytes: int = 256 << 20):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        if isinstance(model_or_path, torch.nn.Module):
            self.model = model_or_path
            if tokenizer is None:
                raise ValueError("tokenizer: required when model_or_path is a module")
        elif isinstance(model_or_path, (str, Path)):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model = AutoModelForCausalLM.from_pretrained(model_or_path, dtype=dtype).to(device)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_or_path)
        else:
            raise TypeError(f"model_or_path: expected an nn.Module or a model folder, got {type(model_or_path).__name__}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected None or an int >= 1, got {batch_size!r}")
        self.tokenizer = tokenizer
        self.device = next(self.model.parameters()).device
        cfg = self.model.config
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.max_model_len = int(max_model_len or getattr(cfg, "max_position_embeddings", 2048))
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.bucket_bytes = bucket_bytes
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = self._eos_ids()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _eos_ids(self) -> set[int]:
        """The tokenizer's EOS and the generation config's EOS ids (vLLM stops on both)."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids |= set(gen if isinstance(gen, (list, tuple)) else [gen] if gen is not None else [])
        return ids

    # --- generation -----------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Prompt token ids (chat template applied), each at most max_model_len - 1 tokens."""
        return encode_checked(self.tokenizer, prompts, chat_template=self.chat_template,
                              max_model_len=self.max_model_len)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Rollout:
        """B = len(prompts) * sampling.n completions, prompt-major (see VLLMSampler.generate for what the
        token ids and texts hold)."""
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling: expected a SamplingConfig, got {type(sampling).__name__}")
        ids = self.encode(prompts)
        rows = [p for p in ids for _ in range(sampling.n)]
        t0 = time.perf_counter()
        seqs, logps, reasons, texts = [], [], [], []
        step = self.batch_size or len(rows)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the caller's mode comes back after
        try:
            for s in range(0, len(rows), step):
                out = self._decode(rows[s:s + step], sampling)
                for part, acc in zip(out, (seqs, logps, reasons, texts)):
                    acc.extend(part)
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        return make_rollout("torch", ids, rows, seqs, logps if sampling.logprobs else None, reasons, texts,
                            sampling.n, self.pad_id, seconds)

    def _pick(self, logits: torch.Tensor, sampling: SamplingConfig):
        """(R, V) fp32 last-position logits -> (R,) chosen ids, (R,) their processed logprobs."""
        if sampling.temperature == 0:
            lp = torch.log_softmax(logits, dim=-1)
            tok = logits.argmax(dim=-1)
        else:
            z = mask_top_k_top_p(logits / sampling.temperature, sampling.top_k, sampling.top_p)
            lp = torch.log_softmax(z, dim=-1)
            tok = torch.multinomial(lp.exp(), 1, generator=self.generator)[:, 0]
        return tok, lp.gather(1, tok[:, None])[:, 0]

    @torch.no_grad()
    def _decode(self, rows: list[list[int]], sampling: SamplingConfig):
        """Decodes a batch of prompt rows; returns (token lists, logprob lists, finish reasons, texts)."""
        R, L = len(rows), max(len(p) for p in rows)
        ids = torch.full((R, L), self.pad_id, dtype=torch.int64, device=self.device)
        attn = torch.zeros((R, L), dtype=torch.int64, device=self.device)
        for i, p in enumerate(rows):
            ids[i, L - len(p):] = torch.as_tensor(p, device=self.device)
            attn[i, L - len(p):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        budget = [min(sampling.max_tokens, self.max_model_len - len(p)) for p in rows]
        seqs, logps = [[] for _ in rows], [[] for _ in rows]
        reasons, texts = [None] * R, [None] * R
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        for _ in range(max(budget)):
            tok, lp = self._pick(out.logits[:, -1].float(), sampling)
            tok_l, lp_l = tok.tolist(), lp.tolist()
            for i in range(R):
                if reasons[i] is None:
                    self._append(i, tok_l[i], lp_l[i], seqs, logps, reasons, texts, budget, sampling)
            if all(r is not None for r in reasons):
                break
            attn = torch.cat([attn, attn.new_ones((R, 1))], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos,
                             past_key_values=out.past_key_values, use_cache=True)
        for i in range(R):
            if texts[i] is None:
                texts[i] = self.tokenizer.decode(seqs[i], skip_special_tokens=True)
        return seqs, logps, reasons, texts

    def _append(self, i, tok, lp, seqs, logps, reasons, texts, budget, sampling) -> None:
        """Adds one token to row i and decides whether the row finished (EOS or a stop string: "stop";
        its token budget: "length")."""
        seqs[i].append(tok)
        logps[i].append(lp)
        if tok in self.eos_ids:
            reasons[i] = "stop"
        elif sampling.stop:
            text = self.tokenizer.decode(seqs[i], skip_special_tokens=True)
            hits = [text.find(s) for s in sampling.stop if s in text]
            if hits:
                reasons[i], texts[i] = "stop", text[:min(hits)]
        if reasons[i] is None and len(seqs[i]) >= budget[i]:
            reasons[i] = "length"

    # --- weights and sync -----------------------------------------------------------------------------
    def update_weights(self, named_tensors: NamedTensors) -> dict:
        """Copies (hf_name, tensor) pairs (or a module's state_dict) into the model in place, all checked
        before the first copy. Returns {bytes, seconds, gbps, tensors, buckets, path, skipped}."""
        pairs, skipped = named_tensors_of(named_tensors, tied=self.tied)
        targets = dict(self.model.state_dict(keep_vars=True))
        check_weights(pairs, {k: tuple(v.shape) for k, v in targets.items()}, "update_weights")
        if not pairs:
            raise ValueError("update_weights: no weights given")
        t0 = time.perf_counter()
        buckets = 0
        with torch.no_grad():
            for bucket in weight_buckets(pairs, self.bucket_bytes):
                buckets += 1
                for name, t in bucket:
                    targets[name].copy_(t)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        nbytes = sum(t.numel() * t.element_size() for _, t in pairs)
        return dict(bytes=nbytes, seconds=seconds, gbps=nbytes / max(seconds, 1e-12) / 1e9, tensors=len(pairs),
                    buckets=buckets, path="copy", skipped=skipped)

    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids) - 1,) float32 log p(ids[t] | ids[:t]) under the sampler's model."""
        return hf_token_logprobs(self.model, ids)

    def check_in_sync(self, model: torch.nn.Module, ids: Optional[Sequence[int]] = None) -> float:
        """max |logprob(sampler) - logprob(model)| over a fixed probe sequence."""
        ids = list(ids) if ids is not None else probe_ids(self.tokenizer, min(48, self.max_model_len - 1))
        return float((self.score(ids) - hf_token_logprobs(model, ids)).abs().max())

    def sleep(self, level: int = 1) -> None:
        """No-op: the model's weights are the sampler (nothing to free between rollouts)."""

    def wake(self) -> None:
        """No-op (see sleep)."""
