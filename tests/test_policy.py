"""The policy passes of the engine on a tiny random Qwen2 (no sampler): completion hidden states in the
padded and packed layouts, the fused logprob pass against transformers' full log_softmax, gradient
accumulation over micro-batches equal to the whole batch's gradient, and the bf16 autocast head."""
import pytest
import torch

from grpo import ops
from grpo.models import build_tiny_model
from grpo.policy import Batch, load_policy, logprob_pass, loss_on_micro_batch, micro_batches, completion_hidden


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3, init_std=0.2)
    return load_policy(folder)


def _batch(model, B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompts = [torch.randint(3, V, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B)]
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
    lengths = [5, 17, 3, 9, 9, 30, 1, 12]
    for packed in (False, True):
        mbs = micro_batches(lengths, 32, packed)
        assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
        for mb in mbs:
            cost = sum(lengths[i] for i in mb) if packed else len(mb) * max(lengths[i] for i in mb)
            assert cost <= 32 or len(mb) == 1


def test_packed_and_padded_hidden_states_agree(model):
    batch = _batch(model)
    with torch.no_grad():
        a = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, packed=False)
        b = completion_hidden(model, batch.prompt_ids, batch.completion_ids, batch.mask, packed=True)
    m = batch.mask
    torch.testing.assert_close(a[m], b[m], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_logprob_pass_matches_full_log_softmax(model, packed):
    batch = _batch(model, seed=1)
    got = logprob_pass(model, batch, temperature=0.7, budget=24, packed=packed)
    want = _hf_logp(model, batch, temperature=0.7)
    assert float((got.double() - want).abs()[batch.mask].max()) < 1e-4
    assert bool((got[~batch.mask] == 0).all())


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_gradients_sum_to_the_whole_batch(model, agg):
    batch = _batch(model, B=8, seed=2)
    batch.old_logp = logprob_pass(model, batch, temperature=1.0, budget=10_000, packed=False) + 0.05
    cfg = ops.LossConfig(loss_agg=agg, is_mode="token_truncate", max_completion_length=8)
    kw = dict(config=cfg, num_tokens=int(batch.mask.sum()), num_sequences=batch.size, packed=False)
    model.zero_grad()
    whole, _ = loss_on_micro_batch(model, batch, list(range(batch.size)), **kw)
    whole.loss.backward()
    want = _grads(model)
    model.zero_grad()
    total = 0.0
    for idx in micro_batches(batch.lengths(), 20, False):
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
                                 num_sequences=None, packed=False, autocast="cpu")
    out.loss.backward()
    w = model.get_output_embeddings().weight
    assert w.grad is not None and w.grad.dtype == torch.float32 and bool(torch.isfinite(w.grad).all())
    model.zero_grad()
    out32, _ = loss_on_micro_batch(model, batch, list(range(batch.size)), config=cfg, num_tokens=None,
                                   num_sequences=None, packed=False)
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
                                     num_sequences=None, packed=False)
        out.loss.backward()
        grads.append(_grads(m))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)
