"""The Triton backend (grpo.kernels) against the reference by the numerics rule of DESIGN.md section 5,
forward and backward together with the same random upstream gradient: group advantages, token logprobs
(+ entropy) and the GRPO loss for every LossConfig of test_loss, odd shapes, fp32 and bf16, the multi-tile
vocab loop, and launch_loss's one-launch dlogits path (also in place).

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1; ~1 ms per program
instance), so the CPU shapes are small and MAX_BLOCK_V is forced down where the tile loop must run more
than once. With a GPU the same tests run compiled, plus the larger shapes marked `gpu`.
"""
import dataclasses

import pytest
import torch

from conftest import check_rule
from grpo import kernels, ops
from grpo.kernels import logprobs as tk_logprobs
from grpo.ops import LossConfig, group_advantages_ref, grpo_loss_ref, token_logprobs_ref
from grpo.ops.loss import launch_loss
from grpo.ops.variants import AGGREGATIONS
from test_loss import CONFIGS, make_inputs, run_loss

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")
pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="Triton backend unavailable (no triton, or no CUDA "
                                                                 "device and TRITON_INTERPRET unset)")


@pytest.fixture
def small_tiles(monkeypatch):
    """BLOCK_V = 256: V = 1000 / 4097 run 4 / 17 tiles, the last one partial."""
    monkeypatch.setattr(tk_logprobs, "MAX_BLOCK_V", 256)


def _dev(inp):
    return {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}


def _cpu(xs):
    return [x.detach().cpu() if isinstance(x, torch.Tensor) else x for x in xs]


# --- grpo_loss --------------------------------------------------------------------------------------
def check_loss(name, shape, dtype, on_policy=False, g=None):
    config = CONFIGS[name]
    inp = _dev(make_inputs(*shape, dtype, config, on_policy=on_policy))
    g = torch.randn(()).item() if g is None else g
    kern = _cpu(run_loss(lambda *a, **k: ops.grpo_loss(*a, backend="triton", **k), inp, config, g))
    naive = _cpu(run_loss(grpo_loss_ref, inp, config, g))
    ref = _cpu(run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64))
    assert kern[0].dtype == torch.float32 and kern[1].dtype == dtype
    check_rule("loss", kern[0], naive[0], ref[0])
    check_rule("dlogits", kern[1], naive[1], ref[1], grad=True)
    for k in kern[2]:  # diagnostics derived from logp (held to the rule by the logprobs tests)
        torch.testing.assert_close(kern[2][k].double(), ref[2][k].double(), rtol=2e-5, atol=2e-6, msg=k)


SHAPES = [(2, 3, 1), (4, 5, 7), (2, 4, 1000), (1, 1, 4097), (3, 2, 4097)]


Tile = tk_logprobs.Tile
TILES = {"256x1h": Tile(256, 1, 1, l2_hints=True), "128x2x2": Tile(128, 1, 2, 2),
         "512x4hr": Tile(512, 1, 4, l2_hints=True, row_acc=True), "128x1r": Tile(128, 1, 1, row_acc=True),
         "64x4rows_r": Tile(64, 4, 2, row_acc=True), "128x2p": Tile(128, 1, 2, prefetch=True),
         "256x1hrp": Tile(256, 1, 1, l2_hints=True, row_acc=True, prefetch=True),
         "64x4rows_p": Tile(64, 4, 2, prefetch=True), "2048x4p": Tile(2048, 1, 4, prefetch=True),
         "256x2hrp@1": Tile(256, 1, 2, l2_hints=True, row_acc=True, prefetch=True, persistent=1),
         "64x4rows@2": Tile(64, 4, 2, persistent=2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", list(TILES))
@pytest.mark.parametrize("name", ["default", "k3_beta"])
def test_triton_loss_tile_overrides(seed, monkeypatch, name, tile, dtype):
    """kernels.logprobs.TILE (bench/tune_triton.py's sweep): other tile shapes, pipelining depths, the loss
    kernel's L2 cache hints and per-row scalar sums compute the same loss and gradient (V = 1000: several
    tiles, one partial; several rows a program in the last)."""
    monkeypatch.setattr(tk_logprobs, "TILE", TILES[tile])
    check_loss(name, (2, 4, 1000), dtype, g=1.0)
    check_loss(name, (2, 4, 1000), dtype)


CASES = [(n, False) for n in CONFIGS] + [(n, True) for n in ("default", "gspo", "is_seq_mask_gspo", "k3_beta")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,on_policy", CASES)
def test_triton_loss(seed, name, on_policy, shape, dtype):
    check_loss(name, shape, dtype, on_policy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 1000), (3, 2, 4097)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_loss_multi_tile(seed, small_tiles, name, shape, dtype):
    check_loss(name, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_loss_unit_upstream_gradient(seed, name, dtype):
    # g = 1: grpo_loss may hand back the dlogits its forward launch wrote (the one-launch path)
    check_loss(name, (3, 2, 1000), dtype, g=1.0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 256, 32000), (2, 8, 151936)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_loss_large(seed, name, shape, dtype):
    check_loss(name, shape, dtype)


# --- launch_loss with dlogits: the one-launch forward + backward the fused linear op uses ----------------
def _launch_inputs(inp, config):
    logits = inp["logits"]
    V = logits.shape[-1]
    m = inp["mask"].to(torch.float32).contiguous()
    coef = AGGREGATIONS.get(config.loss_agg).extra(m, None, None, config.max_completion_length)
    f32 = lambda t: None if t is None else t.to(torch.float32).contiguous()  # noqa: E731
    return (logits.reshape(-1, V), inp["targets"].reshape(-1).contiguous(), m, f32(coef), f32(inp["advantages"]),
            f32(inp["old_logp"]), f32(inp["ref_logp"]) if config.beta != 0.0 else None,
            f32(inp["sampling_logp"]) if config.is_mode is not None else None)


def check_launch_loss(name, shape, dtype, in_place):
    config = CONFIGS[name]
    inp = _dev(make_inputs(*shape, dtype, config))
    logits2d, t1d, m, coef, adv, old, ref, samp = _launch_inputs(inp, config)
    src = logits2d.clone()
    out = src if in_place else torch.empty_like(src)
    tok_loss, logp, ent, stats, g = launch_loss(src, t1d, m, coef, adv, old, ref, samp, config, dlogits=out,
                                                backend="triton")
    if not in_place:
        assert torch.equal(src, logits2d), "launch_loss changed its logits without being asked to"
    loss = (tok_loss.view(m.shape).double() * coef).sum().to(torch.float32)
    naive = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0))
    ref64 = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0, dtype=torch.float64))
    assert out.dtype == dtype and logp.shape == (m.numel(),) and stats.shape == (m.numel(), 2)
    assert (ent is not None) == config.entropy
    check_rule("loss", loss.cpu(), naive[0], ref64[0])
    check_rule("dlogits", out.view(shape).cpu(), naive[1], ref64[1], grad=True)
    lp64 = token_logprobs_ref(inp["logits"].double(), inp["targets"], temperature=config.temperature).cpu()
    lpd = token_logprobs_ref(inp["logits"], inp["targets"], temperature=config.temperature).cpu()
    lp = logp.view(m.shape).cpu()
    if config.tokenwise:  # the fused kernel never reads masked rows: logp 0 there
        keep = m.cpu() != 0
        assert torch.equal(lp[~keep], torch.zeros_like(lp[~keep]))
        lp, lpd, lp64 = lp[keep], lpd[keep], lp64[keep]
    check_rule("logp", lp, lpd, lp64)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "out"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7), (3, 2, 1000)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_launch_loss_dlogits(seed, name, shape, dtype, in_place):
    check_launch_loss(name, shape, dtype, in_place)


@pytest.mark.parametrize("name", ["default", "is_token_truncate", "gspo"])
def test_triton_launch_loss_dlogits_multi_tile(seed, small_tiles, name):
    check_launch_loss(name, (2, 2, 4097), torch.bfloat16, True)


@pytest.mark.parametrize("tile", ["256x1hrp", "128x2p", "256x2hrp@1", "64x4rows@2"])
@pytest.mark.parametrize("name", ["default", "is_token_truncate", "gspo"])
def test_triton_launch_loss_in_place_tile_overrides(seed, monkeypatch, name, tile):
    """dlogits written over the logits with the next tile prefetched (pass 2 walks the row backwards and
    prefetches the tile before it), the L2 hints, and a persistent grid (fewer programs than row blocks,
    each looping): every element is still read before it is written, every row is done once."""
    monkeypatch.setattr(tk_logprobs, "TILE", TILES[tile])
    check_launch_loss(name, (2, 2, 4097), torch.bfloat16, True)
    check_launch_loss(name, (3, 2, 1000), torch.float32, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["default", "k3_beta", "is_token_truncate"])
@pytest.mark.parametrize("shape,tiles", [((3, 4, 7), False), ((2, 3, 1000), True)], ids=["one_tile", "multi_tile"])
def test_triton_fused_loss_skips_masked_rows(seed, monkeypatch, name, shape, tiles, dtype):
    # Rows with mask 0 are never read by the fused loss: NaN logits there give logp = stats = entropy =
    # tok_loss = g = 0 and a zero dlogits row; the loss and dlogits equal the reference on finite logits.
    if tiles:
        monkeypatch.setattr(tk_logprobs, "MAX_BLOCK_V", 256)
    config = CONFIGS[name]
    assert config.tokenwise
    inp = _dev(make_inputs(*shape, dtype, config))
    B, T, V = shape
    inp["mask"][0, 1] = False
    inp["mask"][-1] = False  # a fully masked sequence: with small V its rows share programs with live ones
    logits2d, t1d, m, coef, adv, old, ref, samp = _launch_inputs(inp, config)
    dead = m.reshape(-1) == 0
    poisoned = logits2d.clone()
    poisoned[dead] = float("nan")
    for in_place in (False, True):
        src = poisoned.clone()
        out = src if in_place else torch.empty_like(src).fill_(float("nan"))
        tok_loss, logp, ent, stats, g = launch_loss(src, t1d, m, coef, adv, old, ref, samp,
                                                    dataclasses.replace(config, entropy=True), dlogits=out,
                                                    backend="triton")
        for nm, x in (("logp", logp), ("tok_loss", tok_loss), ("g", g), ("stats", stats.view(-1, 2)),
                      ("dlogits", out)):
            assert torch.equal(x[dead], torch.zeros_like(x[dead])), f"{nm}: masked rows not zero"
            assert bool(torch.isfinite(x).all()), f"{nm}: NaN from a masked row leaked"
        if ent is not None:
            assert torch.equal(ent[dead], torch.zeros_like(ent[dead])) and bool(torch.isfinite(ent).all())
        loss = (tok_loss.view(m.shape).double() * coef).sum().to(torch.float32)
        naive = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0))
        ref64 = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0, dtype=torch.float64))
        check_rule("loss", loss.cpu(), naive[0], ref64[0])
        check_rule("dlogits", out.view(shape).cpu(), naive[1], ref64[1], grad=True)
    # the same through grpo_loss (its backward: the softmax-gradient pass, which skips g = 0 rows)
    x = poisoned.view(shape).detach().clone().requires_grad_()
    args = {k: v for k, v in inp.items() if k not in ("logits", "targets", "mask", "advantages")}
    res = ops.grpo_loss(x, inp["targets"], inp["mask"], inp["advantages"], config=config, backend="triton", **args)
    res.loss.backward()
    naive = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0))
    ref64 = _cpu(run_loss(grpo_loss_ref, inp, config, 1.0, dtype=torch.float64))
    check_rule("loss", res.loss.detach().cpu(), naive[0], ref64[0])
    check_rule("dlogits", x.grad.cpu(), naive[1], ref64[1], grad=True)
    for k, v in res.metrics.items():
        assert bool(torch.isfinite(v)), f"metric {k} is not finite"


# --- token_logprobs -----------------------------------------------------------------------------------
def _fwd_bwd(fn, logits, targets, g_lp, g_ent, temperature):
    x = logits.detach().clone().requires_grad_()
    lp, ent = fn(x, targets, temperature=temperature, with_entropy=True)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return lp.detach().cpu(), ent.detach().cpu(), x.grad.cpu()


def check_logprobs(shape, dtype, temperature, logits=None):
    if logits is None:
        logits = (torch.randn(*shape) * 3).to(dtype)
    logits = logits.to(DEV)
    targets = torch.randint(0, shape[-1], shape[:2], device=DEV)
    g_lp, g_ent = torch.randn(shape[:2], device=DEV), torch.randn(shape[:2], device=DEV)
    kern = _fwd_bwd(lambda *a, **k: ops.token_logprobs(*a, backend="triton", **k), logits, targets, g_lp, g_ent,
                    temperature)
    naive = _fwd_bwd(token_logprobs_ref, logits, targets, g_lp, g_ent, temperature)
    ref = _fwd_bwd(token_logprobs_ref, logits.double(), targets, g_lp.double(), g_ent.double(), temperature)
    assert kern[0].dtype == torch.float32 and kern[1].dtype == torch.float32 and kern[2].dtype == logits.dtype
    check_rule("logp", kern[0], naive[0], ref[0])
    check_rule("entropy", kern[1], naive[1], ref[1])
    check_rule("dlogits", kern[2], naive[2], ref[2], grad=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 1), (3, 5, 7), (2, 4, 1000), (1, 1, 4097), (2, 3, 4097), (2, 16, 32000)])
def test_triton_logprobs(seed, shape, dtype, temperature):
    check_logprobs(shape, dtype, temperature)


@pytest.mark.parametrize("temperature", [1.0, 1.3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 1000), (1, 3, 4097)])
def test_triton_logprobs_multi_tile(seed, small_tiles, shape, dtype, temperature):
    check_logprobs(shape, dtype, temperature)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", ["128x1r", "64x4rows_r", "512x4hr", "128x2p", "64x4rows_p", "2048x4p"])
def test_triton_logprobs_tile_overrides(seed, monkeypatch, tile, dtype):
    """Per-row scalar sums (Tile.row_acc) in token_logprobs with entropy, several tiles a row, and several
    rows a program; with and without a temperature."""
    monkeypatch.setattr(tk_logprobs, "TILE", TILES[tile])
    for temperature in (1.0, 1.3):
        check_logprobs((2, 4, 1000), dtype, temperature)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 64, 32000), (8, 256, 32000), (2, 8, 151936)])
def test_triton_logprobs_large(seed, shape, dtype):
    check_logprobs(shape, dtype, 0.8)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the interpreter
@pytest.mark.parametrize("tile", [None, "128x1r", "256x1hrp"])
def test_triton_logprobs_inf_nan_rows(seed, small_tiles, monkeypatch, tile):
    # -inf logits give p = 0; an all -inf row, a +inf logit and a NaN logit give NaN logp, entropy and
    # gradient rows. torch's entropy masks NaN p to 0 and its backward turns 0 * -inf into NaN rows, so the
    # reference holds the forward on the finite rows; NaN placement and the gradient follow the C++ twin.
    logits = torch.randn(1, 6, 300) * 3
    logits[0, 0, 2] = float("-inf")
    logits[0, 1, :] = float("-inf")
    logits[0, 2, 7] = float("inf")
    logits[0, 3, 280] = float("nan")
    logits[0, 4, :299] = float("-inf")  # a single finite logit, in the last (partial) tile
    targets = torch.tensor([[1, 4, 2, 5, 299, 3]])
    g = torch.randn(2, 1, 6)
    ok = [0, 4, 5]
    if tile is not None:  # per-row scalar sums: the same NaN rows and values
        monkeypatch.setattr(tk_logprobs, "TILE", TILES[tile])
    for temperature in (1.0, 0.7):
        # the C++ twin takes CPU tensors; the Triton kernel runs on DEV (compiled on a GPU)
        got, cpu = [_fwd_bwd(lambda *a, b=be, **k: ops.token_logprobs(*a, backend=b, **k), logits.to(d),
                             targets.to(d), g[0].to(d), g[1].to(d), temperature) for be, d in (("triton", DEV),
                                                                                              ("cpu", "cpu"))]
        for name, x, y in zip(("logp", "entropy", "dlogits"), got, cpu):
            assert torch.equal(torch.isnan(x), torch.isnan(y)), name
        assert bool(torch.isnan(got[0][0, 1:4]).all()) and bool(torch.isnan(got[2][0, 1:4]).all())
        naive = token_logprobs_ref(logits[:, ok], targets[:, ok], temperature=temperature, with_entropy=True)
        ref = token_logprobs_ref(logits[:, ok].double(), targets[:, ok], temperature=temperature, with_entropy=True)
        check_rule("logp", got[0][:, ok], naive[0], ref[0])
        check_rule("entropy", got[1][:, ok], naive[1], ref[1])
        torch.testing.assert_close(got[2][:, ok], cpu[2][:, ok], rtol=1e-5, atol=1e-6)


def test_triton_zero_gradient_rows_are_zero_without_reading(seed):
    # Rows with g_logp = g_ent = 0 are written as zeros without being read: NaN logits there stay out.
    logits = torch.randn(4, 50, device=DEV)
    logits[1] = float("nan")
    targets = torch.randint(0, 50, (4,), device=DEV)
    _, stats, ent = tk_logprobs.logprobs(logits, targets, 1.0, True)
    g = torch.tensor([1.0, 0.0, -0.5, 0.0], device=DEV)
    d = tk_logprobs.softmax_grad(logits, targets, stats, ent, g, torch.zeros(4, device=DEV), 1.0)
    assert torch.equal(d[1], torch.zeros(50, device=DEV)) and torch.equal(d[3], torch.zeros(50, device=DEV))
    assert torch.isfinite(d[0]).all() and torch.isfinite(d[2]).all()


# --- group_advantages ---------------------------------------------------------------------------------
def check_advantages(B, G, scale, estimator, kind):
    rewards = (torch.randn(B) if kind == "gauss" else torch.randint(0, 2, (B,)).float()).to(DEV)
    adv, zero = ops.group_advantages(rewards, G, scale=scale, estimator=estimator, backend="triton",
                                     return_zero_std=True)
    naive, _ = group_advantages_ref(rewards, G, scale=scale, estimator=estimator)
    ref, ref_zero = group_advantages_ref(rewards.double(), G, scale=scale, estimator=estimator)
    assert adv.dtype == torch.float32 and adv.shape == (B,) and zero.dtype == torch.bool
    assert torch.equal(zero.cpu(), ref_zero.cpu())
    check_rule("advantages", adv.cpu(), naive.cpu(), ref.cpu())
    assert torch.equal(adv.view(-1, G)[zero], torch.zeros_like(adv.view(-1, G)[zero]))


@pytest.mark.parametrize("kind", ["gauss", "binary"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("B,G", [(1, 1), (6, 1), (8, 2), (12, 4), (21, 7), (4096, 16), (6000, 3000)])
def test_triton_advantages(seed, B, G, scale, estimator, kind):
    check_advantages(B, G, scale, estimator, kind)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("B,G", [(100000, 8), (131072, 64)])
def test_triton_advantages_large(seed, B, G, scale):
    check_advantages(B, G, scale, "grpo", "gauss")


def test_triton_advantages_equal_rewards():
    rewards = torch.tensor([0.3, 0.3, 0.3, 0.3, 1.0, 0.0, 1.0, 0.0], device=DEV)
    for scale in ("group", "batch", "none"):
        for est in ("grpo", "rloo"):
            adv, zero = ops.group_advantages(rewards, 4, scale=scale, estimator=est, backend="triton",
                                             return_zero_std=True)
            assert torch.equal(adv[:4].cpu(), torch.zeros(4)) and zero.tolist() == [True, False]
            assert torch.isfinite(adv).all()
    adv, zero = ops.group_advantages(rewards, 1, backend="triton", return_zero_std=True)
    assert torch.equal(adv.cpu(), torch.zeros(8)) and bool(zero.all())


# --- row offsets past 2^31 elements (GPU only: the logits alone are 5 GB) -------------------------------
@pytest.mark.gpu
@needs_cuda
def test_triton_int64_row_offsets(seed):
    N, V, tail = 16384, 151936, 3
    x = torch.empty(N, V, dtype=torch.bfloat16, device="cuda").normal_(0.0, 2.0)
    targets = torch.randint(0, V, (N,), device="cuda")
    last = x[-tail:].clone()  # rows whose offsets pass 2^31 elements, kept before the in-place pass
    config = LossConfig()
    m = torch.ones(N // 256, 256, device="cuda")
    coef = (m / m.sum()).contiguous()
    adv = torch.randn(N // 256, device="cuda")
    tok_loss, logp, _, stats, g = launch_loss(x, targets, m, coef, adv, None, None, None, config, dlogits=x,
                                              backend="triton")
    lp64 = torch.log_softmax(last.double(), -1).gather(-1, targets[-tail:, None]).squeeze(-1)
    lpd = torch.log_softmax(last, -1).gather(-1, targets[-tail:, None]).squeeze(-1).float()
    check_rule("logp", logp[-tail:].cpu(), lpd.cpu(), lp64.cpu())
    onehot = torch.nn.functional.one_hot(targets[-tail:], V)
    gt = g[-tail:, None]
    ref = (gt.double() * (onehot - torch.softmax(last.double(), -1))).cpu()
    naive = (gt * (onehot - torch.softmax(last, -1).float())).to(torch.bfloat16).cpu()
    check_rule("dlogits", x[-tail:].cpu(), naive, ref, grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["default", "is_seq_mask_gspo"])
def test_triton_inplace_matches_reference(seed, name, dtype):
    config = CONFIGS[name]
    inp = _dev(make_inputs(3, 4, 1000, dtype, config))
    g = torch.randn(()).item()
    logits = inp["logits"].clone().requires_grad_()
    rest = {k: v for k, v in inp.items() if k not in ("logits", "targets", "mask", "advantages")}
    out = ops.grpo_loss(logits, inp["targets"], inp["mask"], inp["advantages"], config=config, backend="triton",
                        inplace=True, **rest)
    (out.loss * g).backward()
    naive = _cpu(run_loss(grpo_loss_ref, inp, config, g))
    ref = _cpu(run_loss(grpo_loss_ref, inp, config, g, dtype=torch.float64))
    check_rule("loss", out.loss.detach().cpu(), naive[0], ref[0])
    check_rule("dlogits", logits.grad.cpu(), naive[1], ref[1], grad=True)
