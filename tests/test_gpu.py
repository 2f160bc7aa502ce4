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
    _check_cuda_loss(inp, config, 1.0 if upstream == "one" else torch.randn(()).item())


def _check_cuda_loss(inp, config, g):
    """grpo_loss(backend="cuda") forward + backward (upstream g) against the reference by the numerics rule:
    the loss and dlogits. Returns the (loss, dlogits, metrics) of the kernel, torch_d and fp64 runs."""
    kern = run_loss(lambda *a, **k: ops.grpo_loss(*a, backend="cuda", **k), inp, config, g)
    naive = run_loss(grpo_loss_ref, inp, config, g)
    ref = run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64)
    check_rule("loss", kern[0].cpu(), naive[0].cpu(), ref[0].cpu())
    check_rule("dlogits", kern[1].cpu(), naive[1].cpu(), ref[1].cpu(), grad=True)
    return kern, naive, ref


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
@pytest.mark.parametrize("V", [4097, 4096, 32000])  # 4096 and 32000: rows held on chip on sm_90
def test_cuda_masked_rows_are_not_read(seed, dtype, V):
    """As tests/test_loss.py: NaN logits in masked rows change neither the loss nor the gradient."""
    config = CONFIGS["k3_beta"]
    inp = make_inputs(4, 64, V, dtype, config)
    masked = ~inp["mask"]
    poisoned = dict(inp, logits=inp["logits"].masked_fill(masked.unsqueeze(-1), float("nan")))
    for g in (1.0, 0.7):
        kern = run_loss(lambda *a, **k: ops.grpo_loss(*a, backend="cuda", **k), _cuda(poisoned), config, g)
        naive = run_loss(grpo_loss_ref, inp, config, g)
        ref = run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64)
        check_rule("loss", kern[0].cpu(), naive[0], ref[0])
        check_rule("dlogits", kern[1].cpu(), naive[1], ref[1], grad=True)
        assert torch.equal(kern[1].cpu()[masked], torch.zeros_like(kern[1].cpu()[masked]))


# --- rows held on chip (sm_90 clusters, csrc/cuda/loss.cu resident_loss_kernel) --------------------------
# Shapes around the kernel's plan: one block a row (4096), clusters of 4 and 8 (32000 bf16 / fp32), the
# 16-vector slices (65536 fp32, 151936), the largest bf16 row (262144: 8 blocks) and one past it (262152:
# the other kernel).
ON_CHIP_SHAPES = [(2, 3, 4096), (1, 5, 32000), (2, 2, 65536), (2, 8, 151936), (1, 3, 262144), (1, 2, 262152)]
TOKENWISE = [n for n, c in CONFIGS.items() if c.tokenwise]


def _on_chip_expected(V, dtype):
    """The plan written out independently of the launcher: V >= 4096 in whole 16-byte vectors, at most 8
    blocks of 256 threads holding 4 or 16 vectors each."""
    per_vec = 16 // torch.empty((), dtype=dtype).element_size()
    if V < 4096 or V % per_vec or torch.cuda.get_device_capability() < (9, 0):
        return False
    return -(-(V // per_vec) // (16 * 256)) <= 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ON_CHIP_SHAPES)
@pytest.mark.parametrize("name", TOKENWISE)
@pytest.mark.parametrize("upstream", ["one", "random"])
def test_cuda_rows_on_chip_match_reference(seed, name, shape, dtype, upstream):
    from grpo.ops import _backend
    config = CONFIGS[name]
    inp = _cuda(make_inputs(*shape, dtype, config))
    V = shape[-1]
    assert _backend.rows_on_chip(inp["logits"].view(-1, V)) == _on_chip_expected(V, dtype)
    kern, naive, ref = _check_cuda_loss(inp, config, 1.0 if upstream == "one" else torch.randn(()).item())
    for k in ("entropy", "kl", "ratio_mean"):
        if k in ref[2]:
            check_rule(k, kern[2][k].cpu(), naive[2][k].cpu(), ref[2][k].cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [4096, 32000, 151936])
def test_cuda_rows_on_chip_in_place_and_off(seed, V, dtype, monkeypatch):
    """launch_loss with dlogits over the logits themselves (the fused linear op's chunks) gives the bits of a
    separate buffer; with GRPO_ROWS_ON_CHIP=0 (the row read twice) the same values up to the order of the
    row sums; logp, stats and g of both paths agree with the fp64 reference's logp."""
    from grpo.ops.loss import kernel_inputs, launch_loss
    config = CONFIGS["is_token_truncate"]  # temperature and entropy: the scaled, entropy-keeping kernel
    inp = _cuda(make_inputs(2, 16, V, dtype, config))
    m, coef, adv, old, ref, samp = kernel_inputs(inp["mask"], inp["advantages"], inp["old_logp"], inp["ref_logp"],
                                                 inp["sampling_logp"], config, None, None)
    rows, t = inp["logits"].view(-1, V), inp["targets"].reshape(-1)

    def run(dl_alias):
        x = rows.clone()
        dl = x if dl_alias else torch.empty_like(x)
        out = launch_loss(x, t, m, coef, adv, old, ref, samp, config, dlogits=dl, backend="cuda")
        return out, dl

    (sep, dl_sep), (ali, dl_ali) = run(False), run(True)
    assert torch.equal(dl_sep, dl_ali)
    for a, b in zip(sep, ali):
        assert a is None or torch.equal(a, b)
    monkeypatch.setenv("GRPO_ROWS_ON_CHIP", "0")
    off, dl_off = run(False)
    lp64 = token_logprobs_ref(rows.double(), t, temperature=config.temperature).reshape(-1)
    lp32 = token_logprobs_ref(rows, t, temperature=config.temperature).reshape(-1)
    keep = m.reshape(-1) > 0
    for out in (sep, off):
        check_rule("logp", out[1][keep].cpu(), lp32[keep].cpu(), lp64[keep].cpu())
    torch.testing.assert_close(dl_sep.float(), dl_off.float(), rtol=2 ** -7, atol=1e-6)


def test_cuda_unaligned_rows_take_the_other_kernel(seed):
    """Rows that start off a 16-byte boundary are not held on chip, and still match the reference."""
    from grpo.ops import _backend
    config = CONFIGS["default"]
    inp = _cuda(make_inputs(2, 4, 32000, torch.bfloat16, config))
    wide = torch.zeros(2, 4, 32001, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    with torch.no_grad():
        wide[..., 1:] = inp["logits"]
    logits = wide[..., 1:]  # row stride 32001, 2 bytes past the allocation's alignment
    assert not _backend.rows_on_chip(logits.reshape(-1, 32000))
    args = dict(old_logp=inp["old_logp"], config=config)
    loss = ops.grpo_loss(logits, inp["targets"], inp["mask"], inp["advantages"], backend="cuda", **args).loss
    loss.backward()
    naive = run_loss(grpo_loss_ref, inp, config, 1.0)
    ref = run_loss(grpo_loss_ref, inp, config, 1.0, dtype=torch.float64)
    check_rule("loss", loss.detach().cpu(), naive[0].cpu(), ref[0].cpu())
    check_rule("dlogits", wide.grad[..., 1:].cpu(), naive[1].cpu(), ref[1].cpu(), grad=True)
    assert torch.equal(wide.grad[..., 0].cpu(), torch.zeros(2, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_rows_on_chip_inf_nan_rows(seed, dtype):
    """-inf logits give p = 0; an all -inf row, a +inf logit and a NaN logit give NaN rows; a single finite
    logit in the last block's slice gives logp ~0 (x / T - fp32(x / T)). NaN placement and the finite values
    follow the C++ twin."""
    from grpo.ops import _backend
    from grpo.ops.loss import kernel_inputs, launch_loss
    config = CONFIGS["is_token_truncate"]  # temperature and entropy
    V = 32000
    inp = make_inputs(1, 6, V, dtype, config)
    inp["mask"][:] = True
    logits = inp["logits"]
    logits[0, 0, 2] = float("-inf")
    logits[0, 1, :] = float("-inf")
    logits[0, 2, 7] = float("inf")
    logits[0, 3, 28000] = float("nan")
    logits[0, 4, :V - 1] = float("-inf")  # one finite logit, in the cluster's last block
    inp["targets"][0, :5] = torch.tensor([1, 4, 2, 5, V - 1])
    assert _backend.rows_on_chip(logits.view(-1, V).cuda())
    out = {}
    for backend, dev in (("cuda", "cuda"), ("cpu", "cpu")):
        d = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
        m, coef, adv, old, ref, samp = kernel_inputs(d["mask"], d["advantages"], d["old_logp"], d["ref_logp"],
                                                     d["sampling_logp"], config, None, None)
        rows = d["logits"].view(-1, V).clone()
        dl = torch.empty_like(rows)
        res = launch_loss(rows, d["targets"].reshape(-1), m, coef, adv, old, ref, samp, config, dlogits=dl,
                          backend=backend)
        out[backend] = [t.cpu() for t in res if t is not None] + [dl.cpu()]
    names = ("tok_loss", "logp", "entropy", "stats", "g", "dlogits")
    for name, x, y in zip(names, out["cuda"], out["cpu"]):
        assert torch.equal(torch.isnan(x), torch.isnan(y)), name
        ok = torch.isfinite(y)
        torch.testing.assert_close(x[ok].float(), y[ok].float(), rtol=2 ** -7, atol=1e-5, msg=name)
    assert bool(torch.isnan(out["cuda"][1][1:4]).all()) and abs(out["cuda"][1][4].item()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 32000), (4, 128, 32000), (2, 256, 151936)])
@pytest.mark.parametrize("knob", ["4", "8", "16", "1p", "8p", "16p"])
def test_cuda_rows_on_chip_fixed_slices(seed, knob, shape, dtype, monkeypatch):
    """GRPO_ROWS_ON_CHIP=4/8/16 (the bench's cuda-r* sweeps): that slice size, clusters of up to 16 blocks
    (past 8 non-portable: 151936 bf16 with 8 vectors a thread takes 10); with "p" a persistent grid that
    prefetches each cluster's next row (512 rows: more than the clusters that fit at once on an H100, so
    each runs several, masked rows among them)."""
    from grpo.ops import _backend
    monkeypatch.setenv("GRPO_ROWS_ON_CHIP", knob)
    config = CONFIGS["k3_beta"]
    inp = _cuda(make_inputs(*shape, dtype, config))
    V, R = shape[-1], int(knob.rstrip("p"))
    nvec = V // (16 // torch.empty((), dtype=dtype).element_size())
    fits = _on_chip_expected(V, dtype) if R == 1 else (
        torch.cuda.get_device_capability() >= (9, 0) and -(-nvec // (R * 256)) <= 16)
    assert _backend.rows_on_chip(inp["logits"].view(-1, V)) == fits
    _check_cuda_loss(inp, config, 1.0)
