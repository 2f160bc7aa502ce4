"""GPU tests: the CUDA backend against the reference on the GPU (run where a GPU is present)."""
import pytest
import torch

from conftest import check_rule
from grpo import ops
from grpo.ops import grpo_loss_ref, group_advantages_ref, token_logprobs_ref
from test_loss import CONFIGS, make_inputs, run_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
SHAPES = [(2, 3, 1), (4, 5, 7), (2, 4, 1000), (3, 2, 4097), (2, 8, 151936), (8, 256, 32000)]


def _cuda(inp):
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("upstream", ["one", "random"])  # dlogits from the forward's launch / recomputed
def test_cuda_loss_matches_reference(seed, name, shape, dtype, upstream):
    config = CONFIGS[name]
    inp = _cuda(make_inputs(*shape, dtype, config))
    g = 1.0 if upstream == "one" else torch.randn(()).item()
    kern = run_loss(lambda *a, **k: ops.grpo_loss(*a, backend="cuda", **k), inp, config, g)
    naive = run_loss(grpo_loss_ref, inp, config, g)
    ref = run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64)
    check_rule("loss", kern[0].cpu(), naive[0].cpu(), ref[0].cpu())
    check_rule("dlogits", kern[1].cpu(), naive[1].cpu(), ref[1].cpu(), grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_logprobs_matches_reference(seed, shape, dtype):
    logits = (torch.randn(*shape) * 3).to(dtype).cuda()
    targets = torch.randint(0, shape[-1], shape[:2]).cuda()
    g1, g2 = torch.randn(shape[:2]).cuda(), torch.randn(shape[:2]).cuda()

    def run(fn, x, a, b, **kw):
        x = x.detach().clone().requires_grad_()
        lp, ent = fn(x, targets, with_entropy=True, temperature=0.8, **kw)
        ((lp * a).sum() + (ent * b).sum()).backward()
        return lp.detach().cpu(), ent.detach().cpu(), x.grad.cpu()

    k = run(ops.token_logprobs, logits, g1, g2, backend="cuda")
    n = run(token_logprobs_ref, logits, g1, g2)
    r = run(token_logprobs_ref, logits.double(), g1.double(), g2.double())
    check_rule("logp", k[0], n[0], r[0])
    check_rule("entropy", k[1], n[1], r[1])
    check_rule("dlogits", k[2], n[2], r[2], grad=True)


@pytest.mark.parametrize("B,G", [(1, 1), (8, 2), (4096, 16), (21, 7), (100000, 8)])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_cuda_advantages_match_reference(seed, B, G, scale, estimator):
    rewards = torch.randn(B).cuda()
    adv, zero = ops.group_advantages(rewards, G, scale=scale, estimator=estimator, backend="cuda", return_zero_std=True)
    naive, _ = group_advantages_ref(rewards, G, scale=scale, estimator=estimator)
    ref, rz = group_advantages_ref(rewards.double(), G, scale=scale, estimator=estimator)
    assert torch.equal(zero.cpu(), rz.cpu())
    check_rule("advantages", adv.cpu(), naive.cpu(), ref.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_masked_rows_are_not_read(seed, dtype):
    """As tests/test_loss.py: NaN logits in masked rows change neither the loss nor the gradient."""
    config = CONFIGS["k3_beta"]
    inp = make_inputs(4, 64, 4097, dtype, config)
    masked = ~inp["mask"]
    poisoned = dict(inp, logits=inp["logits"].masked_fill(masked.unsqueeze(-1), float("nan")))
    for g in (1.0, 0.7):
        kern = run_loss(lambda *a, **k: ops.grpo_loss(*a, backend="cuda", **k), _cuda(poisoned), config, g)
        naive = run_loss(grpo_loss_ref, inp, config, g)
        ref = run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64)
        check_rule("loss", kern[0].cpu(), naive[0], ref[0])
        check_rule("dlogits", kern[1].cpu(), naive[1], ref[1], grad=True)
        assert torch.equal(kern[1].cpu()[masked], torch.zeros_like(kern[1].cpu()[masked]))
