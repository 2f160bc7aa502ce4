"""The policy side of a GRPO step: loading a transformers causal LM, turning a Rollout into training
sequences, micro-batches by a token budget, and the two passes over completion tokens that go through
grpo.ops: the no-grad fused logprob pass (old / reference logprobs) and the fused linear + GRPO loss.

The lm_head never produces an [N, V] logits tensor: the decoder's last hidden states at completion
positions (B, T, H) go with the lm_head weight (V, H) straight into grpo.ops.
Two layouts: padded (B, L) rows with an attention mask, or packed (1, sum L) with position ids that
restart per sequence (padding-free; transformers turns them into varlen flash-attention or a
block-causal mask). Packing pays with flash-attn's varlen kernels; with SDPA/eager the block-causal mask
costs (sum L)^2, so `packing="auto"` packs only under flash_attention_2.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from . import ops


def load_policy(path, *, dtype: str = "float32", device: str = "cpu", gradient_checkpointing: bool = False,
                attn_implementation: Optional[str] = None):
    """A transformers causal LM in train mode. On CUDA with flash-attn installed, flash_attention_2
    (varlen packing) unless attn_implementation says otherwise."""
    from transformers import AutoModelForCausalLM

    if attn_implementation is None:
        attn_implementation = "sdpa"
        if device.startswith("cuda") and _has_flash_attn():
            attn_implementation = "flash_attention_2"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                 attn_implementation=attn_implementation)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


def lm_head_of(model):
    """(weight (V, H), bias (V,) or None) of the output projection (tied embeddings included)."""
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def decoder_of(model):
    """The decoder stack that returns last hidden states (model.model for Qwen2 / Llama)."""
    return getattr(model, model.base_model_prefix)


# --- training sequences -------------------------------------------------------------------------------
@dataclass
class Batch:
    """B sequences of one rollout, on the training device, ready for logprob passes and the loss."""
    prompt_ids: list                   # (B,) lists of prompt token ids
    completion_ids: torch.Tensor       # (B, T) int64
    mask: torch.Tensor                 # (B, T) bool
    advantages: torch.Tensor           # (B,) float32
    sampling_logp: Optional[torch.Tensor] = None  # (B, T) float32 (sampler, after temperature)
    old_logp: Optional[torch.Tensor] = None       # (B, T) float32 (trainer before the updates), mu > 1
    ref_logp: Optional[torch.Tensor] = None       # (B, T) float32 (reference model), beta > 0

    @property
    def size(self) -> int:
        return self.completion_ids.shape[0]

    def lengths(self) -> list[int]:
        """Prompt + completion tokens per sequence (what a micro-batch pays for)."""
        comp = self.mask.sum(1).tolist()
        return [len(p) + int(c) for p, c in zip(self.prompt_ids, comp)]


def micro_batches(lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Sequence indices split so each micro-batch costs at most `budget` tokens: count * max length when
    padded, sum of lengths when packed. Longest first (similar lengths share a micro-batch: less padding);
    a sequence longer than the budget gets a micro-batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur, cur_max, cur_sum = [], [], 0, 0
    for i in order:
        L = lengths[i]
        cost = (cur_sum + L) if packed else (len(cur) + 1) * max(cur_max, L)
        if cur and cost > budget:
            out.append(cur)
            cur, cur_max, cur_sum = [], 0, 0
        cur.append(i)
        cur_max, cur_sum = max(cur_max, L), cur_sum + L
    if cur:
        out.append(cur)
    return out


def _completion_hidden_padded(model, prompts, comp_ids, comp_mask, device):
    """Right-padded (B, L) rows -> hidden states (B, T, H) at the positions that predict each completion
    token (position prompt_len - 1 + t predicts completion token t)."""
    B, T = comp_ids.shape
    p_len = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    c_len = comp_mask.sum(1).cpu()
    L = int((p_len + c_len).max())
    ids = torch.zeros((B, L), dtype=torch.int64)
    attn = torch.zeros((B, L), dtype=torch.int64)
    for b, p in enumerate(prompts):
        n = int(c_len[b])
        ids[b, : len(p)] = torch.as_tensor(p)
        ids[b, len(p): len(p) + n] = comp_ids[b, :n].cpu()
        attn[b, : len(p) + n] = 1
    hidden = decoder_of(model)(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
    pos = (p_len[:, None] - 1 + torch.arange(T)[None, :]).clamp(max=L - 1).to(device)   # (B, T)
    return torch.gather(hidden, 1, pos[:, :, None].expand(B, T, hidden.shape[-1]))


def _completion_hidden_packed(model, prompts, comp_ids, comp_mask, device):
    """One (1, sum L) row with restarting position ids (padding-free) -> hidden (B, T, H)."""
    B, T = comp_ids.shape
    c_len = comp_mask.sum(1).cpu().tolist()
    pieces, pos_ids, starts = [], [], []
    offset = 0
    for b, p in enumerate(prompts):
        seq = list(p) + comp_ids[b, : c_len[b]].tolist()
        pieces.append(torch.as_tensor(seq, dtype=torch.int64))
        pos_ids.append(torch.arange(len(seq), dtype=torch.int64))
        starts.append(offset + len(p) - 1)
        offset += len(seq)
    ids = torch.cat(pieces)[None].to(device)
    hidden = decoder_of(model)(input_ids=ids, position_ids=torch.cat(pos_ids)[None].to(device),
                               use_cache=False).last_hidden_state[0]                       # (sum L, H)
    idx = (torch.tensor(starts)[:, None] + torch.arange(T)[None, :]).clamp(max=offset - 1).to(device)
    return hidden[idx]                                                                       # (B, T, H)


def completion_hidden(model, prompts, comp_ids, comp_mask, *, packed: bool):
    """Decoder hidden states (B, T, H) predicting the completion tokens (B, T); rows beyond a
    completion's length hold some valid hidden state (they are masked in every use)."""
    device = next(model.parameters()).device
    fn = _completion_hidden_packed if packed else _completion_hidden_padded
    return fn(model, prompts, comp_ids, comp_mask, device)


def _trim(mask_rows: torch.Tensor) -> int:
    """Completion columns a micro-batch needs (its longest completion, at least 1)."""
    return max(1, int(mask_rows.sum(1).max()))


def _select(t: Optional[torch.Tensor], idx, T):
    return None if t is None else t[idx, :T]


@torch.no_grad()
def logprob_pass(model, batch: Batch, *, temperature: float, budget: int, packed: bool, backend: str = "auto",
                 chunk_tokens=None, autocast=None) -> torch.Tensor:
    """(B, T) float32 logprobs of the completion tokens under `model` (0 at padding), micro-batched,
    through grpo.ops.fused_linear_logprobs (no [N, V] logits)."""
    was_training = model.training
    model.eval()
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=batch.completion_ids.device)
    try:
        for idx in micro_batches(batch.lengths(), budget, packed):
            T, ids, m, h, w, b = _micro_batch_head_inputs(model, batch, idx, packed, autocast)
            lp = ops.fused_linear_logprobs(h, w, ids.to(h.device), temperature=temperature, bias=b,
                                           chunk_tokens=chunk_tokens, backend=backend)
            out[idx, :T] = torch.where(m, lp.to(out.device), 0.0)
    finally:
        model.train(was_training)
    return out


def _micro_batch_head_inputs(model, batch: Batch, idx: list[int], packed: bool, autocast):
    """What the lm_head ops take for micro-batch `idx`: (T, completion ids (b, T), mask (b, T), hidden
    (b, T, H), weight (V, H), bias), trimmed to its longest completion, in the head's dtype."""
    T = _trim(batch.mask[idx])
    ids, m = batch.completion_ids[idx, :T], batch.mask[idx, :T]
    with _autocast(autocast):
        h = completion_hidden(model, [batch.prompt_ids[i] for i in idx], ids, m, packed=packed)
    return (T, ids, m) + _head_dtype(h, *lm_head_of(model), autocast)


def _head_dtype(h, weight, bias, autocast):
    """Under bf16 autocast the lm_head GEMMs run in bf16 too (a differentiable cast of the fp32 master
    weight: its gradient arrives in fp32); otherwise hidden states take the weight's dtype."""
    if autocast is None:
        return h.to(weight.dtype), weight, bias
    cast = lambda t: None if t is None else t.to(torch.bfloat16)  # noqa: E731
    return cast(h), cast(weight), cast(bias)


def _autocast(device_type):
    if device_type is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def loss_on_micro_batch(model, batch: Batch, idx: list[int], *, config: ops.LossConfig, num_tokens, num_sequences,
                        packed: bool, backend: str = "auto", chunk_tokens=None, autocast=None):
    """The fused linear + GRPO loss of one micro-batch (differentiable in the model), normalised by the
    global counts so that summing the micro-batches' gradients gives the whole batch's gradient.
    Returns (LossOutput, tokens in this micro-batch)."""
    T, ids, m, h, weight, bias = _micro_batch_head_inputs(model, batch, idx, packed, autocast)
    out = ops.fused_linear_grpo_loss(
        h, weight, ids.to(h.device), m.to(h.device), batch.advantages[idx].to(h.device),
        old_logp=_select(batch.old_logp, idx, T), ref_logp=_select(batch.ref_logp, idx, T),
        sampling_logp=_select(batch.sampling_logp, idx, T), config=config, num_tokens=num_tokens,
        num_sequences=num_sequences, bias=bias, chunk_tokens=chunk_tokens, backend=backend)
    return out, int(m.sum())
