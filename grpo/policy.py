"""The policy side of a GRPO step: loading a transformers causal LM, turning a Rollout into training
sequences, micro-batches by a token budget, and the two passes over completion tokens that go through
grpo.ops: the no-grad fused logprob pass (old / reference logprobs) and the fused linear + GRPO loss.

The lm_head never produces an [N, V] logits tensor: the decoder's last hidden states at completion
positions (B, T, H) go with the lm_head weight (V, H) straight into grpo.ops.
Three layouts (LAYOUTS): padded (B, L) rows with an attention mask; packed (1, sum L) with position ids
that restart per sequence (padding-free; transformers turns them into varlen flash-attention or a
block-causal mask: it pays with flash-attn's varlen kernels, while with SDPA/eager the block-causal mask
costs (sum L)^2); shared_prefix: each distinct prompt of the micro-batch runs once and the G completions
of a group attend to its key/value cache, so a group's prompt tokens cost one forward and one backward
instead of G (the gradient through the shared cache sums over the group, exactly as G copies would).
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


def micro_batches(lengths: list[int], budget: int, layout: str, prompts: Optional[list] = None) -> list[list[int]]:
    """Sequence indices split so each micro-batch costs at most `budget` tokens in `layout` (_COSTS). Taken
    in units (_UNITS): padded and packed take single sequences, longest first (similar lengths share a
    micro-batch: less padding); shared_prefix takes a prompt's whole group (it needs `prompts`), split only
    when the group alone is over the budget. A sequence longer than the budget gets a micro-batch of its
    own."""
    cost = _COSTS[layout]
    out, cur = [], []
    for unit in _UNITS[layout](lengths, prompts):
        if cur and cost(cur + unit, lengths, prompts) > budget:
            out.append(cur)
            cur = []
        if not cur and cost(unit, lengths, prompts) > budget:  # a group over the budget: one by one
            for i in unit:
                if cur and cost(cur + [i], lengths, prompts) > budget:
                    out.append(cur)
                    cur = []
                cur.append(i)
            continue
        cur += unit
    if cur:
        out.append(cur)
    return out


def _longest_first(lengths, prompts):
    return [[i] for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]


def _groups(lengths, prompts):
    """One unit per distinct prompt (in order of first appearance), its sequences longest completion first."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    return [sorted(g, key=lambda i: len(prompts[i]) - lengths[i]) for g in groups.values()]


def _shared_cost(idx, lengths, prompts):
    """Distinct prompts x their longest + sequences x the longest completion (both parts padded)."""
    distinct = {tuple(prompts[i]) for i in idx}
    return (len(distinct) * max(len(k) for k in distinct)
            + len(idx) * max(lengths[i] - len(prompts[i]) for i in idx))


# Tokens the decoder runs for a micro-batch (padding included), and the units sequences are taken in.
_COSTS = {"padded": lambda idx, lengths, prompts: len(idx) * max(lengths[i] for i in idx),
          "packed": lambda idx, lengths, prompts: sum(lengths[i] for i in idx),
          "shared_prefix": _shared_cost}
_UNITS = {"padded": _longest_first, "packed": _longest_first, "shared_prefix": _groups}


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


def _completion_hidden_shared(model, prompts, comp_ids, comp_mask, device):
    """Shared prefixes: the K distinct prompts run once as right-padded (K, Lp) rows with a KV cache; the
    cache is gathered to the B sequences (each row its prompt's), then the B completions run as (B, T - 1)
    rows that attend to it (positions continue from each prompt's length; the prompt's padding is masked).
    Completion token 0 is predicted by the prompt's last hidden state, token t by completion position
    t - 1. transformers keeps no cache under gradient checkpointing, hence that layout's exclusion."""
    from transformers import DynamicCache

    B, T = comp_ids.shape
    index: dict = {}
    row_prompt = torch.tensor([index.setdefault(tuple(p), len(index)) for p in prompts])  # (B,) -> 0..K-1
    distinct = list(index)
    p_len = torch.tensor([len(p) for p in distinct])
    Lp = int(p_len.max())
    ids = torch.zeros((len(distinct), Lp), dtype=torch.int64)
    attn = torch.zeros((len(distinct), Lp), dtype=torch.int64)
    for k, p in enumerate(distinct):
        ids[k, : len(p)] = torch.as_tensor(p)
        attn[k, : len(p)] = 1
    decoder = decoder_of(model)
    out = decoder(input_ids=ids.to(device), attention_mask=attn.to(device),
                  past_key_values=DynamicCache(config=model.config), use_cache=True)
    first = out.last_hidden_state[row_prompt.to(device), (p_len[row_prompt] - 1).to(device)]  # (B, H)
    if T == 1:
        return first[:, None]
    cache = out.past_key_values
    cache.batch_select_indices(row_prompt.to(device))  # (K, ...) -> (B, ...), differentiable gathers
    c_len = comp_mask.sum(1).cpu()
    c_attn = (torch.arange(T - 1)[None, :] < c_len[:, None]).to(torch.int64)
    pos = p_len[row_prompt][:, None] + torch.arange(T - 1)[None, :]                           # (B, T - 1)
    rest = decoder(input_ids=comp_ids[:, : T - 1].to(device), position_ids=pos.to(device),
                   attention_mask=torch.cat([attn[row_prompt], c_attn], 1).to(device),
                   past_key_values=cache, use_cache=True).last_hidden_state                  # (B, T - 1, H)
    return torch.cat([first[:, None], rest], 1)


LAYOUTS = {"padded": _completion_hidden_padded, "packed": _completion_hidden_packed,
           "shared_prefix": _completion_hidden_shared}


def choose_layout(requested: str, model) -> str:
    """train.layout "auto": packed under flash_attention_2 (varlen kernels), else shared_prefix, else
    padded when gradient checkpointing is on (transformers keeps no KV cache under it)."""
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    if requested == "auto":
        if getattr(model.config, "_attn_implementation", "") == "flash_attention_2":
            return "packed"
        return "padded" if checkpointing else "shared_prefix"
    if requested not in LAYOUTS:
        raise ValueError(f"train.layout: expected auto or one of {', '.join(LAYOUTS)}, got {requested!r}")
    if requested == "shared_prefix" and checkpointing:
        raise ValueError("train.layout: shared_prefix needs model.gradient_checkpointing = false (transformers "
                         "keeps no KV cache under gradient checkpointing)")
    return requested


def completion_hidden(model, prompts, comp_ids, comp_mask, *, layout: str):
    """Decoder hidden states (B, T, H) predicting the completion tokens (B, T); rows beyond a
    completion's length hold some valid hidden state (they are masked in every use)."""
    device = next(model.parameters()).device
    return LAYOUTS[layout](model, prompts, comp_ids, comp_mask, device)


def _trim(mask_rows: torch.Tensor) -> int:
    """Completion columns a micro-batch needs (its longest completion, at least 1)."""
    return max(1, int(mask_rows.sum(1).max()))


def _select(t: Optional[torch.Tensor], idx, T):
    return None if t is None else t[idx, :T]


@torch.no_grad()
def logprob_pass(model, batch: Batch, *, temperature: float, budget: int, layout: str, backend: str = "auto",
                 chunk_tokens=None, autocast=None) -> torch.Tensor:
    """(B, T) float32 logprobs of the completion tokens under `model` (0 at padding), micro-batched,
    through grpo.ops.fused_linear_logprobs (no [N, V] logits)."""
    was_training = model.training
    model.eval()
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=batch.completion_ids.device)
    try:
        for idx in micro_batches(batch.lengths(), budget, layout, batch.prompt_ids):
            T, ids, m, h, w, b = _micro_batch_head_inputs(model, batch, idx, layout, autocast)
            lp = ops.fused_linear_logprobs(h, w, ids.to(h.device), temperature=temperature, bias=b,
                                           chunk_tokens=chunk_tokens, backend=backend)
            out[idx, :T] = torch.where(m, lp.to(out.device), 0.0)
    finally:
        model.train(was_training)
    return out


def _micro_batch_head_inputs(model, batch: Batch, idx: list[int], layout: str, autocast):
    """What the lm_head ops take for micro-batch `idx`: (T, completion ids (b, T), mask (b, T), hidden
    (b, T, H), weight (V, H), bias), trimmed to its longest completion, in the head's dtype."""
    T = _trim(batch.mask[idx])
    ids, m = batch.completion_ids[idx, :T], batch.mask[idx, :T]
    with _autocast(autocast):
        h = completion_hidden(model, [batch.prompt_ids[i] for i in idx], ids, m, layout=layout)
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
                        layout: str, backend: str = "auto", chunk_tokens=None, autocast=None, schedule="auto"):
    """The fused linear + GRPO loss of one micro-batch (differentiable in the model), normalised by the
    global counts so that summing the micro-batches' gradients gives the whole batch's gradient.
    Returns (LossOutput, tokens in this micro-batch)."""
    T, ids, m, h, weight, bias = _micro_batch_head_inputs(model, batch, idx, layout, autocast)
    out = ops.fused_linear_grpo_loss(
        h, weight, ids.to(h.device), m.to(h.device), batch.advantages[idx].to(h.device),
        old_logp=_select(batch.old_logp, idx, T), ref_logp=_select(batch.ref_logp, idx, T),
        sampling_logp=_select(batch.sampling_logp, idx, T), config=config, num_tokens=num_tokens,
        num_sequences=num_sequences, bias=bias, chunk_tokens=chunk_tokens, backend=backend, schedule=schedule)
    return out, int(m.sum())
