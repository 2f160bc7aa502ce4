"""token_logprobs (+ entropy), forward and backward, every CPU backend against the reference."""
import pytest
import torch

from conftest import check_rule
from grpo import ops
from grpo.ops import token_logprobs_ref

SHAPES = [  # (B, T, V): odd vocab sizes, T = 1, V = 1, and one realistic shape
    (2, 3, 1), (3, 5, 7), (2, 4, 1000), (1, 1, 4097), (2, 7, 4097), (4, 64, 32000),
]
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(B, T, V, dtype, scale=3.0):
    logits = (torch.randn(B, T, V) * scale).to(dtype)
    targets = torch.randint(0, V, (B, T))
    return logits, targets


def _fwd_bwd(fn, logits, targets, g_lp, g_ent, temperature):
    x = logits.detach().clone().requires_grad_()
    lp, ent = fn(x, targets, temperature=temperature, with_entropy=True)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_matches_reference(seed, backend, dtype, shape, temperature):
    logits, targets = _inputs(*shape, dtype)
    g_lp, g_ent = torch.randn(shape[:2]), torch.randn(shape[:2])
    kern = _fwd_bwd(lambda *a, **k: ops.token_logprobs(*a, backend=backend, **k), logits, targets, g_lp, g_ent,
                    temperature)
    naive = _fwd_bwd(token_logprobs_ref, logits, targets, g_lp, g_ent, temperature)
    ref = _fwd_bwd(token_logprobs_ref, logits.double(), targets, g_lp.double(), g_ent.double(), temperature)
    assert kern[0].dtype == torch.float32 and kern[1].dtype == torch.float32
    assert kern[2].dtype == dtype
    check_rule("logp", kern[0], naive[0], ref[0])
    check_rule("entropy", kern[1], naive[1], ref[1])
    check_rule("dlogits", kern[2], naive[2], ref[2], grad=True)


def test_logprobs_without_entropy_and_no_grad(seed):
    logits, targets = _inputs(2, 3, 50, torch.float32)
    with torch.no_grad():
        lp = ops.token_logprobs(logits, targets, backend="cpu")
    assert lp.shape == (2, 3) and lp.dtype == torch.float32
    torch.testing.assert_close(lp, token_logprobs_ref(logits, targets), rtol=0, atol=2e-6)


def test_logprobs_inf_logits_match_reference():
    # -inf logits (a masked vocab slot) give p = 0; a row of all -inf gives NaN, as torch does.
    logits = torch.randn(1, 3, 9)
    logits[0, 0, 2] = float("-inf")
    logits[0, 1, :] = float("-inf")
    targets = torch.tensor([[1, 4, 2]])
    lp, ent = ops.token_logprobs(logits, targets, with_entropy=True, backend="cpu")
    rlp, rent = token_logprobs_ref(logits.double(), targets, with_entropy=True)
    assert torch.equal(torch.isnan(lp), torch.isnan(rlp.float())) and torch.isnan(lp[0, 1])
    ok = torch.isfinite(rlp)
    torch.testing.assert_close(lp[ok].double(), rlp[ok], rtol=0, atol=1e-6)
    torch.testing.assert_close(ent[ok].double(), rent[ok], rtol=0, atol=1e-5)
    logits[0, 2, 2] = float("-inf")  # target itself masked: logp = -inf
    lp = ops.token_logprobs(logits, targets, backend="cpu")
    assert lp[0, 2].item() == float("-inf")


def test_logprobs_strided_rows(seed):
    # Rows with a stride larger than V (a slice of a wider buffer) are read in place.
    base = torch.randn(6, 40)
    logits = base[:, :33].view(2, 3, 33)  # strides (120, 40, 1)
    targets = torch.randint(0, 33, (2, 3))
    x = logits.clone().requires_grad_()
    y = logits.detach().requires_grad_()
    lp = ops.token_logprobs(y, targets, backend="cpu")
    lp.sum().backward()
    ref = token_logprobs_ref(x, targets)
    ref.sum().backward()
    torch.testing.assert_close(lp, ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(y.grad, x.grad, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend,N", [("cpu", 8192), ("triton", 1024)])
@pytest.mark.parametrize("temperature", [1.3, 0.7])
def test_temperature_leaves_no_bias(seed, backend, N, temperature):
    """Logits are divided by the exact (fp64) temperature: the signed error of logp averages to ~0, and
    logp + logp_lo (its rounding residual) is closer to the fp64 logp than logp. Dividing by fp32(T)
    instead scales every z by the same 1 + O(3e-8): that biased logp by -0.15 (T = 1.3) and -0.12 (T = 0.7)
    eps * |logp| (measured), a bias that adds up in a sequence sum such as the sequence IS weight."""
    from grpo.ops.logprobs import launch_logprobs
    V = 1000
    logits = torch.randn(N, V) * 3.0
    targets = torch.randint(0, V, (N,))
    lo = torch.empty(N)
    lp, _, _ = launch_logprobs(logits, targets, temperature, False, backend=backend, logp_lo=lo)
    ref = token_logprobs_ref(logits.double(), targets, temperature=temperature)
    keep = ref.abs() > 1.0  # errors in units of eps * |logp|: away from logp ~ 0, where that unit vanishes
    unit = torch.finfo(torch.float32).eps * ref.abs()
    err = ((lp.double() - ref) / unit)[keep]
    err_lo = ((lp.double() + lo.double() - ref) / unit)[keep]
    assert abs(err.mean()) < 0.075 and abs(err_lo.mean()) < 0.075, \
        f"logp bias {err.mean():.4f} (unrounded {err_lo.mean():.4f}) eps*|logp|: fp32 temperature?"
    assert err_lo.square().mean() < 0.5 * err.square().mean(), "logp_lo does not hold logp's rounding residual"
