"""The policy passes of the engine on a tiny random Qwen2 (no sampler): completion hidden states in the
padded, packed and shared-prefix layouts, the fused logprob pass against transformers' full log_softmax,
gradient accumulation over micro-batches equal to the whole batch's gradient, and the bf16 autocast head."""
import pytest
import torch

from grpo import ops
from grpo.models import build_tiny_model
from grpo.policy import (Batch, choose_layout, completion_hidden, load_policy, logprob_pass, loss_on_micro_batch,
                         micro_batches)

LAYOUTS = ["padded", "packed", "shared_prefix"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3, init_std=0.2)
    return load_policy(folder)


def _batch(model, B=6, seed=0, G=1):
    """B sequences; with G > 1, groups of G consecutive sequences share their prompt (as in a rollout)."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompts = [torch.randint(3, V, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(-(-B // G))]
    prompts = [p for p in prompts for _ in range(G)][:B]
    lens = torch.randint(1, 7, (B,), generator=g)
    T = int(lens.max())
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.arange(T)[None] < lens[:, None]
    adv = torch.randn(B, generator=g)
    samp = torch.randn(B, T, generator=g) * 0.01 - 5.0
    return Batch(prompt_ids=prompts, completion_ids=ids, mask=mask, advantages=adv, sampling_logp=samp)


def _hf_logp(model, batch, temperature=1.0):
    """Reference: full logits of each sequence alone, log_softmax in fp64."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float64)
    with torch.no_grad():
        for b, p in enumerate(batch.prompt_ids):
            n = int(batch.mask[b].sum())
            seq = torch.tensor(p + batch.completion_ids[b, :n].tolist())[None]
            logits = model(seq).logits[0].double() / temperature
            lp = torch.log_softmax(logits, -1)[len(p) - 1: len(p) - 1 + n]
            out[b, :n] = lp.gather(1, batch.completion_ids[b, :n, None]).squeeze(1)
    return out


def test_micro_batches_respect_the_budget():
    prompts = [[1] * 3, [1] * 3, [2] * 9, [2] * 9, [3], [4] * 20, [4] * 20, [5] * 2]
    lengths = [5, 17, 10, 12, 9, 30, 21, 12]
    costs = {"packed": lambda mb: sum(lengths[i] for i in mb),
             "padded": lambda mb: len(mb) * max(lengths[i] for i in mb),
             "shared_prefix": lambda mb: (len({tuple(prompts[i]) for i in mb}) * max(len(prompts[i]) for i in mb)
                                          + len(mb) * max(lengths[i] - len(prompts[i]) for i in mb))}
    for layout, cost in costs.items():
        mbs = micro_batches(lengths, 32, layout, prompts)
        assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
        for mb in mbs:
            assert cost(mb) <= 32 or len(mb) == 1
    # shared_prefix keeps a prompt's sequences together when the budget allows
    mbs = micro_batches(lengths, 64, "shared_prefix", prompts)
    assert all(len({id(m) for m in mbs if i in m and j in m}) == 1
               for i, j in ((0, 1), (2, 3), (5, 6)))


@pytest.mark.parametrize("layout", ["packed", "shared_prefix"])
def test_layouts_give_the_padded_hidden_states(model, layout):
    batch = _batch(model, B=9, G=3)
    with torch.no_grad():
        a = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, layout="padded")
        b = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, layout=layout)
    m = batch.mask
    torch.testing.assert_close(b[m], a[m], rtol=1e-4, atol=1e-5)


def test_shared_prefix_gradients_equal_padded(model):
    """The shared prompt's cache gathered to its G sequences: the gradient sums over the group, as G
    separate copies of the prompt give."""
    batch = _batch(model, B=8, G=4, seed=6)
    w = torch.randn(*batch.completion_ids.shape, model.config.hidden_size)
    grads = []
    for layout in ("padded", "shared_prefix"):
        model.zero_grad()
        h = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, layout=layout)
        (h * w * batch.mask[..., None]).sum().backward()
        grads.append(_grads(model))
    assert any(float(g.abs().max()) > 0 for g in grads[0].values())
    for n, want in grads[0].items():  # relative to each tensor's scale (the packed layout differs by ~2e-6)
        err, scale = float((grads[1][n] - want).abs().max()), float(want.abs().max())
        assert err <= 1e-5 * scale, f"{n}: max |shared - padded| {err:.3e} vs max |grad| {scale:.3e}"


def test_shared_prefix_single_token_completions(model):
    batch = _batch(model, B=4, G=2, seed=7)
    batch.completion_ids, batch.mask = batch.completion_ids[:, :1], torch.ones(4, 1, dtype=torch.bool)
    with torch.no_grad():
        a = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, layout="padded")
        b = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, layout="shared_prefix")
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_choose_layout(model, tmp_path):
    assert choose_layout("auto", model) == "shared_prefix"  # SDPA, no checkpointing
    assert choose_layout("padded", model) == "padded"
    with pytest.raises(ValueError, match="train.layout"):
        choose_layout("diagonal", model)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    ckpt = load_policy(folder, gradient_checkpointing=True)
    assert choose_layout("auto", ckpt) == "padded"
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        choose_layout("shared_prefix", ckpt)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprob_pass_matches_full_log_softmax(model, layout):
    batch = _batch(model, B=8, G=2, seed=1)
    got = logprob_pass(model, batch, temperature=0.7, budget=24, layout=layout)
    want = _hf_logp(model, batch, temperature=0.7)
    assert float((got.double() - want).abs()[batch.mask].max()) < 1e-4
    assert bool((got[~batch.mask] == 0).all())


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["padded", "shared_prefix"])
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_gradients_sum_to_the_whole_batch(model, agg, layout):
    batch = _batch(model, B=8, seed=2, G=2)
    batch.old_logp = logprob_pass(model, batch, temperature=1.0, budget=10_000, layout="padded") + 0.05
    cfg = ops.LossConfig(loss_agg=agg, is_mode="token_truncate", max_completion_length=8)
    kw = dict(config=cfg, num_tokens=int(batch.mask.sum()), num_sequences=batch.size, layout="padded")
    model.zero_grad()
    whole, _ = loss_on_micro_batch(model, batch, list(range(batch.size)), **kw)
    whole.loss.backward()
    want = _grads(model)
    model.zero_grad()
    total = 0.0
    kw["layout"] = layout
    mbs = micro_batches(batch.lengths(), 20, layout, batch.prompt_ids)
    assert len(mbs) > 1
    for idx in mbs:
        out, _ = loss_on_micro_batch(model, batch, idx, **kw)
        out.loss.backward()
        total += float(out.loss)
    assert abs(total - float(whole.loss)) < 1e-5
    got = _grads(model)
    assert any(float(g.abs().max()) > 0 for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_bf16_autocast_head_gives_fp32_master_gradients(model):
    batch = _batch(model, seed=4)
    cfg = ops.LossConfig()
    model.zero_grad()
    out, _ = loss_on_micro_batch(model, batch, list(range(batch.size)), config=cfg, num_tokens=None,
                                 num_sequences=None, layout="padded", autocast="cpu")
    out.loss.backward()
    w = model.get_output_embeddings().weight
    assert w.grad is not None and w.grad.dtype == torch.float32 and bool(torch.isfinite(w.grad).all())
    model.zero_grad()
    out32, _ = loss_on_micro_batch(model, batch, list(range(batch.size)), config=cfg, num_tokens=None,
                                   num_sequences=None, layout="padded")
    out32.loss.backward()
    assert abs(float(out.loss) - float(out32.loss)) < 0.05 * max(1.0, abs(float(out32.loss)))


def test_gradient_checkpointing_gives_the_same_gradients(model, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    ckpt = load_policy(folder, gradient_checkpointing=True)
    batch = _batch(model, seed=5)
    grads = []
    for m in (model, ckpt):
        m.zero_grad()
        out, _ = loss_on_micro_batch(m, batch, list(range(batch.size)), config=ops.LossConfig(), num_tokens=None,
                                     num_sequences=None, layout="padded")
        out.loss.backward()
        grads.append(_grads(m))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)
