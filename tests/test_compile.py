"""torch.compile(fullgraph=True) traces functions that call grpo.ops (the kernels are torch.library ops)."""
import torch

from grpo import ops
from grpo.ops import LossConfig


def _step(logits, targets, mask, rewards, old, ref):
    adv = ops.group_advantages(rewards, 2, backend="cpu")
    logp = ops.token_logprobs(logits.detach(), targets, backend="cpu")
    out = ops.grpo_loss(logits, targets, mask, adv, old_logp=old, ref_logp=ref,
                        config=LossConfig(beta=0.04, eps_high=0.28), backend="cpu")
    return out.loss, logp, out.metrics["kl"]


def test_compile_fullgraph_matches_eager(seed):
    B, T, V = 4, 5, 37
    logits = torch.randn(B, T, V)
    targets = torch.randint(0, V, (B, T))
    mask = torch.rand(B, T) > 0.2
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    old = ops.token_logprobs(logits, targets, backend="torch") + 0.05 * torch.randn(B, T)
    ref = old + 0.05 * torch.randn(B, T)
    torch._dynamo.reset()
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager")
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    l1, lp1, kl1 = _step(x1, targets, mask, rewards, old, ref)
    l2, lp2, kl2 = compiled(x2, targets, mask, rewards, old, ref)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(lp2, lp1)
    torch.testing.assert_close(kl2, kl1)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_ops_are_registered_with_torch_library():
    for name in ("group_advantages", "token_logprobs", "softmax_grad", "grpo_loss"):
        assert hasattr(torch.ops.grpo, name)
    logits = torch.randn(2, 3, 9, requires_grad=True)
    targets = torch.randint(0, 9, (2, 3))
    torch.library.opcheck(torch.ops.grpo.token_logprobs.default, (logits, targets, 1.0, True, "cpu"))


def test_opcheck_loss_and_advantages():
    B, T, V = 2, 3, 9
    logits = torch.randn(B, T, V, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    coef = mask / mask.sum()
    adv = torch.randn(B)
    old = torch.randn(B, T) * 0.1 - 2.0
    for want_grad in (False, True):  # dlogits by the backward from the logits, or made in the forward
        args = (logits, targets, mask, coef, adv, old, None, None, 0.2, 0.28, 0.0, 0.0, "k3", "token", "", 3.0, 1.0,
                False, want_grad, "cpu")
        # want_grad=True is the eager path only (grpo_loss passes False under torch.compile: its backward
        # checks the upstream gradient on the host), so it is not put through the AOT-dispatch tracer.
        utils = ("test_schema", "test_autograd_registration", "test_faketensor") if want_grad else None
        torch.library.opcheck(torch.ops.grpo.grpo_loss.default, args, **({"test_utils": utils} if utils else {}))
    torch.library.opcheck(torch.ops.grpo.group_advantages.default, (torch.randn(8), 4, 0, 0, 1e-4, "cpu"))
