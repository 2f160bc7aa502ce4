"""Bad input gets a clear ValueError/TypeError naming the argument and what was expected."""
import pytest
import torch

from grpo import ops
from grpo.ops import LossConfig

B, T, V = 2, 3, 11


def _args(**over):
    a = dict(logits=torch.randn(B, T, V), targets=torch.randint(0, V, (B, T)), mask=torch.ones(B, T, dtype=torch.bool),
             advantages=torch.randn(B))
    a.update(over)
    return a


def _loss(backend="cpu", **over):
    a = _args(**over)
    kw = {k: a.pop(k) for k in list(a) if k not in ("logits", "targets", "mask", "advantages")}
    return ops.grpo_loss(a["logits"], a["targets"], a["mask"], a["advantages"], backend=backend, **kw)


LOSS_CASES = [  # (overrides, exception, words the message must contain)
    (dict(logits=torch.randn(B * T, V)), ValueError, ["logits", "(B, T, V)"]),
    (dict(targets=torch.randint(0, V, (B, T + 1))), ValueError, ["targets", "shape"]),
    (dict(targets=torch.rand(B, T)), TypeError, ["targets", "integer"]),
    (dict(logits=torch.randint(0, 3, (B, T, V))), TypeError, ["logits", "floating"]),
    (dict(logits=torch.randn(B, T, V, dtype=torch.float64)), TypeError, ["logits", "dtype"]),
    (dict(mask=torch.ones(B, T + 1)), ValueError, ["mask", "shape"]),
    (dict(advantages=torch.randn(B, 1)), ValueError, ["advantages", "shape"]),
    (dict(advantages=torch.ones(B, dtype=torch.long)), TypeError, ["advantages", "floating"]),
    (dict(old_logp=torch.randn(B, T - 1)), ValueError, ["old_logp", "shape"]),
    (dict(targets=torch.full((B, T), V)), ValueError, ["targets", f"[0, {V})"]),
    (dict(targets=torch.full((B, T), -1)), ValueError, ["targets", f"[0, {V})"]),
    (dict(targets=torch.randint(0, V, (B, T), device="meta")), ValueError, ["targets", "device"]),
    (dict(advantages=torch.randn(B, device="meta")), ValueError, ["advantages", "device"]),
    (dict(logits=torch.randn(B, T, V + 4)[..., :V]), None, []),  # row stride V + 4: read in place
    (dict(logits=torch.randn(V, T, B).permute(2, 1, 0)), ValueError, ["logits", "contiguous"]),
    (dict(logits=torch.randn(B, T + 1, V)[:, :-1]), ValueError, ["logits", "contiguous"]),
    (dict(config=LossConfig(beta=0.1)), ValueError, ["ref_logp", "beta"]),
    (dict(config=LossConfig(is_mode="token_mask")), ValueError, ["sampling_logp", "is_mode"]),
    (dict(config="token_mean"), TypeError, ["config", "LossConfig"]),
    (dict(num_tokens=0), ValueError, ["num_tokens"]),
]


@pytest.mark.parametrize("over,exc,words", LOSS_CASES)
def test_grpo_loss_bad_inputs(over, exc, words):
    if exc is None:  # a strided-but-viewable layout is accepted (no copy needed)
        _loss(**over)
        return
    with pytest.raises(exc) as e:
        _loss(**over)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("backend,exc,words", [
    ("gpu", ValueError, ["backend", "auto"]),
    ("cuda", ValueError, ["backend='cuda'", "CUDA"]),
    ("triton", ValueError, ["triton"]),
])
def test_bad_backend(backend, exc, words, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # 'triton' on CPU tensors is the interpreter's only
    with pytest.raises(exc) as e:
        _loss(backend=backend)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("kw,words", [
    (dict(eps_low=-0.1), ["eps_low", ">= 0"]),
    (dict(eps_high=float("nan")), ["eps_high"]),
    (dict(dual_clip=0.5), ["dual_clip", "> 1"]),
    (dict(beta=-1.0), ["beta"]),
    (dict(kl="k4"), ["kl", "k4", "k3"]),
    (dict(ratio_level="seq"), ["ratio_level", "sequence"]),
    (dict(loss_agg="mean"), ["loss_agg", "token_mean"]),
    (dict(is_mode="truncate"), ["is_mode", "token_truncate"]),
    (dict(is_cap=0.0), ["is_cap"]),
    (dict(temperature=0.0), ["temperature"]),
    (dict(max_completion_length=0), ["max_completion_length"]),
])
def test_bad_config(kw, words):
    with pytest.raises(ValueError) as e:
        LossConfig(**kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("rewards,G,kw,exc,words", [
    (torch.randn(6), 4, {}, ValueError, ["B = 6", "group_size = 4"]),
    (torch.randn(6), 0, {}, ValueError, ["group_size"]),
    (torch.randn(6), 2.0, {}, ValueError, ["group_size"]),
    (torch.tensor([1.0, float("nan"), 0.0, 1.0]), 2, {}, ValueError, ["rewards", "finite", "nan", "[1]"]),
    (torch.tensor([1.0, 0.0, float("inf"), 1.0]), 2, {}, ValueError, ["rewards", "inf", "[2]"]),
    (torch.randn(4, 1), 2, {}, ValueError, ["rewards", "1-d"]),
    (torch.ones(4, dtype=torch.long), 2, {}, TypeError, ["rewards", "floating"]),
    (torch.randn(4), 2, dict(scale="global"), ValueError, ["scale", "group"]),
    (torch.randn(4), 2, dict(estimator="ppo"), ValueError, ["estimator", "rloo"]),
    (torch.randn(4), 2, dict(eps=-1.0), ValueError, ["eps"]),
])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_advantages_bad_inputs(rewards, G, kw, exc, words, backend):
    with pytest.raises(exc) as e:
        ops.group_advantages(rewards, G, backend=backend, **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("logits,targets,kw,exc,words", [
    (torch.randn(V), torch.tensor(1), {}, ValueError, ["logits", "2 dims"]),
    (torch.randn(B, T, V), torch.randint(0, V, (T, B)), {}, ValueError, ["targets", "shape"]),
    (torch.randn(B, T, V), torch.randint(0, V, (B, T)).float(), {}, TypeError, ["targets", "integer"]),
    (torch.randn(B, T, V), torch.full((B, T), V + 3), {}, ValueError, ["targets", f"[0, {V})"]),
    (torch.randn(B, T, V), torch.randint(0, V, (B, T)), dict(temperature=0), ValueError, ["temperature"]),
    (torch.randn(B, T, V).half().double(), torch.randint(0, V, (B, T)), {}, TypeError, ["logits", "dtype"]),
])
def test_token_logprobs_bad_inputs(logits, targets, kw, exc, words):
    with pytest.raises(exc) as e:
        ops.token_logprobs(logits, targets, backend="cpu", **kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_native_layer_checks_its_inputs():
    from grpo import _C
    with pytest.raises(ValueError, match="multiple of G"):
        _C.advantages(device=0, stream=0, num_threads=1, rewards=0, advantages=0, zero_std=0, B=5, G=2, scale=0,
                      estimator=0, eps=1e-4)
    with pytest.raises(ValueError, match="dtype code"):
        _C.logprobs(device=0, stream=0, num_threads=1, logits=0, targets=0, logp=0, stats=0, entropy=0, N=1, V=4,
                    row_stride=4, temperature=1.0, dtype=7)
    if not _C.has_cuda:
        with pytest.raises(RuntimeError, match="without CUDA"):
            _C.advantages(device=1, stream=0, num_threads=1, rewards=1, advantages=1, zero_std=1, B=2, G=2, scale=0,
                          estimator=0, eps=1e-4)
