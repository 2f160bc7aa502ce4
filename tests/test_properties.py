"""Property tests of grpo_loss (hypothesis): batch-split invariance with a global token count, zero
advantages give zero gradient, and the three aggregations relate as their definitions say."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo import ops
from grpo.ops import LossConfig

CONFIGS = [LossConfig(), LossConfig(beta=0.05), LossConfig(ratio_level="sequence", is_mode="sequence_truncate"),
           LossConfig(is_mode="token_mask", is_cap=1.1, eps_high=0.28, dual_clip=2.0)]


def _batch(B, T, V, s):
    g = torch.Generator().manual_seed(s)
    logits = torch.randn(B, T, V, generator=g) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    adv = torch.randn(B, generator=g)
    logp = ops.token_logprobs(logits, targets, backend="torch")
    old = logp + torch.randn(B, T, generator=g) * 0.1
    return dict(logits=logits, targets=targets, mask=mask, advantages=adv, old_logp=old,
                ref_logp=logp + torch.randn(B, T, generator=g) * 0.1, sampling_logp=old + torch.randn(B, T, generator=g) * 0.1)


def _loss_and_grad(b, rows, config, backend, **kw):
    x = b["logits"][rows].clone().requires_grad_()
    out = ops.grpo_loss(x, b["targets"][rows], b["mask"][rows], b["advantages"][rows], old_logp=b["old_logp"][rows],
                        ref_logp=b["ref_logp"][rows], sampling_logp=b["sampling_logp"][rows], config=config,
                        backend=backend, **kw)
    out.loss.backward()
    return out.loss.detach(), x.grad


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(1, 40), st.integers(0, 3), st.integers(0, 2**31 - 1),
       st.sampled_from(["cpu", "torch"]))
def test_token_mean_split_invariance(B, T, V, ci, s, backend):
    config = CONFIGS[ci]
    b = _batch(B, T, V, s)
    total = float(b["mask"].sum().clamp(min=1))
    full, gfull = _loss_and_grad(b, slice(0, B), config, backend, num_tokens=total)
    k = B // 2
    l1, g1 = _loss_and_grad(b, slice(0, k), config, backend, num_tokens=total)
    l2, g2 = _loss_and_grad(b, slice(k, B), config, backend, num_tokens=total)
    torch.testing.assert_close(l1 + l2, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([g1, g2]), gfull, rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(1, 40), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_seq_mean_split_invariance(B, T, V, ci, s):
    config = LossConfig(**{**CONFIGS[ci].__dict__, "loss_agg": "seq_mean_token_mean"})
    b = _batch(B, T, V, s)
    full, _ = _loss_and_grad(b, slice(0, B), config, "cpu")
    k = B // 2
    l1, _ = _loss_and_grad(b, slice(0, k), config, "cpu", num_sequences=B)
    l2, _ = _loss_and_grad(b, slice(k, B), config, "cpu", num_sequences=B)
    torch.testing.assert_close(l1 + l2, full, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**31 - 1), st.sampled_from(["cpu", "torch"]))
def test_zero_advantages_and_beta_zero_give_zero_gradient(B, T, V, s, backend):
    b = _batch(B, T, V, s)
    b["advantages"] = torch.zeros(B)
    for config in CONFIGS:
        if config.beta:
            continue
        loss, grad = _loss_and_grad(b, slice(0, B), config, backend)
        assert loss.item() == 0.0
        assert torch.count_nonzero(grad) == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_dr_grpo_equals_token_sum_over_b_times_len(B, T, V, s):
    b = _batch(B, T, V, s)
    tok, _ = _loss_and_grad(b, slice(0, B), LossConfig(), "cpu")
    dr, _ = _loss_and_grad(b, slice(0, B), LossConfig(loss_agg="seq_mean_token_sum_norm"), "cpu")
    n = float(b["mask"].sum().clamp(min=1))
    torch.testing.assert_close(dr * (B * T), tok * n, rtol=1e-5, atol=1e-6)
