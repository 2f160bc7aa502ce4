"""fused_linear_grpo_loss(schedule="vocab"): the forward keeps O(N) vectors, the backward recomputes the logits
per vocabulary block (grpo/ops/fused_linear_vocab.py). Against the reference by the numerics rule of DESIGN.md
section 5 (the helpers of test_fused_linear: the fp64 reference on the op's own dtype-d logits), for every
LossConfig, fp32 and bf16 (fp16 on the odd shapes), with and without bias, tiles whose vocabulary blocks and token chunks do not divide
V and N; the softmax-gradient kernels on a block of columns (targets shifted out of range) against the slice of
the full-row gradient, every backend of the machine; the block rule; compile, opcheck and retain_graph."""
import os

import pytest
import torch

from conftest import has_cuda
from grpo import ops
from grpo.ops import LossConfig
from grpo.ops.fused_linear import resolve_schedule
from grpo.ops.fused_linear_vocab import VOCAB_MULTIPLE, plan_vocab_blocks
from grpo.ops.logprobs import launch_logprobs, launch_softmax_grad
from test_fused_linear import ALL_DTYPES, check_against_reference, make_inputs, run
from test_loss import CONFIGS

DTYPES = [torch.float32, torch.bfloat16]
# (chunk_tokens, bias) at N = 15, V = 301 -> (block columns, tokens per chunk): 1 -> (64, 4): five blocks,
# the last of 45 columns, four token chunks, the last of 3; 4 -> (64, 15); None -> (256, 15): 256 + 45
TILES = [(1, True), (4, False), (None, True)]


def backends():
    out = ["cpu"]
    if has_cuda():
        out.append("cuda")
    if has_cuda() or os.environ.get("TRITON_INTERPRET") == "1":
        out.append("triton")
    return out


@pytest.mark.parametrize("chunk,bias", TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(seed, name, dtype, chunk, bias):
    config = CONFIGS[name]
    inp = make_inputs(3, 5, 16, 301, dtype, config, bias=bias, chunk_tokens=chunk)
    ours = check_against_reference(inp, config, dtype, chunk, schedule="vocab")
    tokens = run(inp, config, 1.0, "cpu", chunk_tokens=chunk)
    # same forward sweep as the tokens schedule: the loss and every metric are the same numbers
    assert torch.equal(ours[0], tokens[0])
    for k, v in tokens[4].items():
        torch.testing.assert_close(ours[4][k], v, rtol=0, atol=0, equal_nan=True, msg=k)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 8, 1), (1, 1, 8, 7), (1, 3, 16, 4097), (3, 1, 16, 9)])
@pytest.mark.parametrize("name", ["default", "k2_seqmean", "is_seq_mask_gspo"])
def test_odd_shapes(seed, name, shape, dtype):
    config = CONFIGS[name]
    inp = make_inputs(*shape, dtype, config, bias=shape[-1] % 2 == 1, chunk_tokens=3)
    check_against_reference(inp, config, dtype, 3, schedule="vocab")


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_softmax_grad_on_a_block_of_columns(seed, backend, dtype):
    """dlogits of columns [v0, v1) with targets shifted by v0 (so outside [0, v1 - v0) for the rows whose target
    is elsewhere, below or above) equal those columns of the full-row gradient, in place too. Not bit for bit: a
    column can fall in a vector of the row and in the block's scalar tail (C++), whose exp differs by up to
    ~8 fp32 ulp (measured); so 16 ulp in fp32, 2 in bf16 / fp16. A misplaced one-hot column would be off by |g| / T."""
    dev = "cuda" if backend in ("cuda", "triton") and has_cuda() else "cpu"
    N, V, T = 9, 300, 0.7
    logits = (torch.randn(N, V, device=dev) * 3).to(dtype)
    t = torch.randint(0, V, (N,), device=dev)
    t[:3] = torch.tensor([0, 150, V - 1])  # first column, a middle one, the last
    g = torch.randn(N, device=dev)
    g[4] = 0.0  # a zero row: written without a read
    _, stats, _ = launch_logprobs(logits, t, T, False, backend=backend)
    full = launch_softmax_grad(logits, t, stats, None, g, None, T, backend=backend)
    rtol = 16 * torch.finfo(dtype).eps if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for v0, v1 in ((0, 64), (64, 150), (150, 151), (151, 300)):
        blk = logits[:, v0:v1].contiguous()
        ours = launch_softmax_grad(blk, t - v0, stats, None, g, None, T, backend=backend)
        torch.testing.assert_close(ours, full[:, v0:v1], rtol=rtol, atol=1e-30, msg=str((v0, v1)))
        launch_softmax_grad(blk, t - v0, stats, None, g, None, T, out=blk, backend=backend)
        torch.testing.assert_close(blk, ours, rtol=0, atol=0, msg=str(("in place", v0, v1)))


def test_block_rule():
    # the tokens schedule's chunk of logits (448 x V at the GPU shape), all N tokens: 448 V / 16384 -> 4096
    assert plan_vocab_blocks(16384, 151936, 448) == (4096, 16384)
    assert plan_vocab_blocks(2048, 32000, 256) == (3968, 2048) and plan_vocab_blocks(8192, 32000, 256) == (960, 8192)
    assert plan_vocab_blocks(10**6, 32000, 256) == (64, 128000)  # 64-column blocks over token chunks
    assert plan_vocab_blocks(15, 7, 3) == (7, 3)  # V below one block
    for N, V, c in ((15, 301, 1), (1, 1, 1), (5, 4097, 2), (100, 50, 7)):
        vb, nc = plan_vocab_blocks(N, V, c)
        assert 1 <= vb <= V and 1 <= nc <= N and (vb % VOCAB_MULTIPLE == 0 or vb == V)
        assert vb * nc <= max(c * V, vb), (N, V, c)  # the tile stays within the budget


def test_retain_graph_and_accumulation(seed):
    """Nothing is scaled in place: a retained graph backpropagates twice, giving the same gradient each time."""
    config = CONFIGS["gspo"]
    inp = make_inputs(2, 5, 8, 23, torch.float32, config)
    h, w = inp["hidden"].clone().requires_grad_(), inp["weight"].clone().requires_grad_()
    out = ops.fused_linear_grpo_loss(h, w, inp["targets"], inp["mask"], inp["advantages"], old_logp=inp["old_logp"],
                                     config=config, chunk_tokens=2, schedule="vocab")
    out.loss.backward(retain_graph=True)
    first = h.grad.clone(), w.grad.clone()
    out.loss.backward()
    torch.testing.assert_close(h.grad, 2 * first[0])
    torch.testing.assert_close(w.grad, 2 * first[1])
    inp["mask"][:] = False  # every token masked: zero gradients, finite loss
    h.grad = w.grad = None
    out = ops.fused_linear_grpo_loss(h, w, inp["targets"], inp["mask"], inp["advantages"], old_logp=inp["old_logp"],
                                     schedule="vocab")
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


@pytest.mark.parametrize("wants", [(True, False, False), (False, True, True), (False, False, True), (False,) * 3])
def test_partial_gradients(seed, wants):
    """Only the wanted gradients are computed (frozen hidden / weight / bias, or none under no_grad), and
    they agree with the tokens schedule's."""
    config = CONFIGS["k3_beta"]
    inp = make_inputs(2, 7, 16, 150, torch.float32, config, bias=True)
    res = {}
    for schedule in ("tokens", "vocab"):
        h, w, b = (inp[k].clone().requires_grad_(want) for k, want in zip(("hidden", "weight", "bias"), wants))
        with torch.set_grad_enabled(any(wants)):
            out = ops.fused_linear_grpo_loss(h, w, inp["targets"], inp["mask"], inp["advantages"], bias=b,
                                             old_logp=inp["old_logp"], ref_logp=inp["ref_logp"], config=config,
                                             chunk_tokens=3, schedule=schedule)
        assert out.loss.requires_grad == any(wants)
        if any(wants):
            out.loss.backward()
        res[schedule] = (out.loss.detach(), h.grad, w.grad, b.grad)
    for x, y, want in zip(res["vocab"][1:], res["tokens"][1:], wants):
        assert (x is not None) == want and (y is not None) == want
        if want:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    assert torch.equal(res["vocab"][0], res["tokens"][0])


def _step(hidden, weight, targets, mask, adv, old):
    out = ops.fused_linear_grpo_loss(hidden, weight, targets, mask, adv, old_logp=old, config=LossConfig(beta=0.0),
                                     chunk_tokens=2, backend="cpu", schedule="vocab")
    return out.loss


def test_compile_fullgraph_and_opcheck(seed):
    B, T, H, V = 2, 5, 8, 131
    hidden, weight = torch.randn(B, T, H), torch.randn(V, H) * 0.5
    targets, mask, adv = torch.randint(0, V, (B, T)), torch.rand(B, T) > 0.2, torch.randn(B)
    old = ops.fused_linear_logprobs(hidden, weight, targets) + 0.05 * torch.randn(B, T)
    torch._dynamo.reset()
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager_decomp_partition")
    res = []
    for fn in (_step, compiled):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        fn(h, w, targets, mask, adv, old).backward()
        res.append((h.grad, w.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(b, a)
    g = torch.randn(N := B * T)
    stats = torch.randn(N, 2)
    args = (torch.tensor(0.5), hidden, weight, torch.randn(V), targets, stats, g, 0.9, 3, True, True, True, "cpu")
    torch.library.opcheck(torch.ops.grpo.fused_linear_grpo_loss_vocab_backward.default, args)


@pytest.mark.parametrize("name", ["default", "gspo", "is_seq_truncate", "is_seq_mask_gspo", "clip_higher_dual"])
def test_auto_schedule(seed, name):
    """"auto" (the default) is "vocab" for sequence-level ratios / IS weights and "tokens" otherwise: the same
    numbers as that schedule, bit for bit."""
    config = CONFIGS[name]
    assert resolve_schedule("auto", config) == ("tokens" if config.tokenwise else "vocab")
    assert resolve_schedule("tokens", config) == "tokens" and resolve_schedule("vocab", config) == "vocab"
    inp = make_inputs(2, 5, 8, 67, torch.float32, config, bias=True)
    auto = run(inp, config, 0.8, "cpu", chunk_tokens=2, schedule="auto")
    chosen = run(inp, config, 0.8, "cpu", chunk_tokens=2, schedule=resolve_schedule("auto", config))
    for a, b in zip(auto[:4], chosen[:4]):
        assert torch.equal(a, b)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="schedule"):
        ops.fused_linear_grpo_loss(torch.randn(1, 2, 4), torch.randn(5, 4), torch.zeros(1, 2, dtype=torch.long),
                                   torch.ones(1, 2), torch.randn(1), schedule="rows")


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["default", "k3_beta", "gspo"])
def test_cuda_bf16_matches_reference(seed, name):
    config = CONFIGS[name]
    inp = make_inputs(4, 64, 256, 4097, torch.bfloat16, config, bias=name == "k3_beta", chunk_tokens=48,
                      device="cuda")
    check_against_reference(inp, config, torch.bfloat16, 48, backend="auto", schedule="vocab")


@pytest.mark.skipif(not (has_cuda() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="Triton backend needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["default", "gspo"])
def test_triton_backend(seed, name, dtype):
    config = CONFIGS[name]
    dev = "cuda" if has_cuda() else "cpu"
    inp = make_inputs(3, 4, 16, 97, dtype, config, bias=True, chunk_tokens=1, device=dev)
    check_against_reference(inp, config, dtype, 1, backend="triton", schedule="vocab")
