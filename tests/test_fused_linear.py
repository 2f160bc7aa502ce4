"""fused_linear_grpo_loss / fused_linear_logprobs against the reference on the materialized logits
(DESIGN.md section 5): values, dhidden, dweight and dbias for every LossConfig, several chunk sizes (ones that
do not divide N, one token, a single chunk), fp32 and bf16 (fp16 on the odd shapes), with and without bias,
tied weights, masked rows, torch.compile, and bad inputs. torch_d = the materialized path at dtype d; ref = everything in float64 on
the logits of the op's own GEMM at dtype d (the op's spec: the logits are an input-dtype GEMM): their values
are the dtype-d logits, their gradient flows as through the fp64 matmul (straight through the rounding). An
all-fp64 reference would count the shared bf16 rounding of the logits in both errors, and the rule on the
scalar loss becomes a coin flip (our error equals exactly that of grpo_loss's kernel on the same logits)."""
import os

import pytest
import torch

from conftest import check_rule, has_cuda
from grpo import ops
from grpo.ops import LossConfig
from grpo.ops.fused_linear import materialize_logits, plan_chunk
from test_loss import CONFIGS, ON_POLICY, _away_from_clip_bounds

DTYPES = [torch.float32, torch.bfloat16]
ALL_DTYPES = DTYPES + [torch.float16]  # fp16 on the odd shapes only (the CPU's fp16 GEMMs are slow)
CHUNKS = [(None, False), (1, True), (4, False), (7, True), (10**6, True)]  # (chunk_tokens, bias); N = 15


def make_inputs(B, T, H, V, dtype, config, *, bias=False, on_policy=False, chunk_tokens=None, device="cpu"):
    """hidden ~ N(0, 1), weight ~ 2 N(0, 1) / sqrt(H) (logits ~ 2 N(0, 1)), optional bias; old / ref /
    sampling logprobs around the fp64 logprobs of the op's dtype-d logits (old kept away from the clip kinks
    of those logits: an fp64-logits margin would not survive the bf16 rounding of the logits)."""
    dev = dict(device=device)
    hidden = torch.randn(B, T, H, **dev).to(dtype)
    weight = (torch.randn(V, H, **dev) * 2 / H ** 0.5).to(dtype)
    b = (torch.randn(V, **dev) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, V, (B, T), **dev)
    mask = torch.rand(B, T, **dev) > 0.25
    if B > 1:
        mask[-1] = False  # a fully masked row
    logits64 = chunked_logits(hidden, weight, b, chunk_tokens).double()
    logp64 = ops.token_logprobs_ref(logits64, targets, temperature=config.temperature).float()
    noise = lambda s: torch.randn(B, T, **dev) * s  # noqa: E731
    spread = 1e-4 if config.ratio_level == "sequence" else 0.15
    old = None if on_policy else _away_from_clip_bounds(logp64, logp64 + noise(spread), mask.float(), config)
    base = logp64 if old is None else old
    return dict(hidden=hidden, weight=weight, bias=b, targets=targets, mask=mask, advantages=torch.randn(B, **dev),
                old_logp=old, ref_logp=logp64 + noise(0.1), sampling_logp=base + noise(0.2))


def run(inp, config, g, backend, dtype=None, **kw):
    """Forward + backward with upstream gradient g -> (loss, dhidden, dweight, dbias or None, metrics);
    dtype=float64 upcasts every floating input (the fp64 reference). schedule="tokens" unless given (this
    file tests that schedule; "auto" would pick "vocab" for the sequence-level configs: test_fused_linear_vocab)."""
    kw.setdefault("schedule", "tokens")
    cast = (lambda t: t if t is None or not t.is_floating_point() else t.to(dtype)) if dtype else (lambda t: t)
    leaf = lambda t: None if t is None else cast(t).detach().clone().requires_grad_()  # noqa: E731
    h, w, b = leaf(inp["hidden"]), leaf(inp["weight"]), leaf(inp["bias"])
    args = {k: cast(v) for k, v in inp.items() if k not in ("hidden", "weight", "bias")}
    out = ops.fused_linear_grpo_loss(h, w, args.pop("targets"), args.pop("mask"), args.pop("advantages"), bias=b,
                                     config=config, backend=backend, **args, **kw)
    (out.loss * g).backward()
    return out.loss.detach(), h.grad, w.grad, None if b is None else b.grad, out.metrics


def chunked_logits(h, w, b, chunk_tokens):
    """(B, T, V) logits built by the very chunk GEMMs the fused op runs, at the inputs' dtype."""
    B, T, H = h.shape
    chunk = plan_chunk(B * T, H, w.shape[0], chunk_tokens)
    h2 = h.reshape(-1, H)
    return torch.cat([materialize_logits(h2[s:s + chunk], w, b) for s in range(0, B * T, chunk)]).view(B, T, -1)


def run_ref64(inp, config, g, chunk_tokens):
    """The fp64 reference: grpo_loss_ref in fp64 on the op's dtype-d logits, gradient straight through to
    hidden / weight / bias via the fp64 matmul. Returns what run() returns."""
    f64 = lambda t: None if t is None or not t.is_floating_point() else t.double()  # noqa: E731
    leaf = lambda t: None if t is None else t.double().requires_grad_()  # noqa: E731
    h, w, b = leaf(inp["hidden"]), leaf(inp["weight"]), leaf(inp["bias"])
    with torch.no_grad():
        logits_d = chunked_logits(inp["hidden"], inp["weight"], inp["bias"], chunk_tokens).double()
    exact = materialize_logits(h, w, b)
    logits = exact + (logits_d - exact.detach())
    rest = {k: f64(v) for k, v in inp.items() if k in ("old_logp", "ref_logp", "sampling_logp")}
    out = ops.grpo_loss_ref(logits, inp["targets"], inp["mask"], f64(inp["advantages"]), config=config, **rest)
    (out.loss * g).backward()
    return out.loss.detach(), h.grad, w.grad, None if b is None else b.grad, out.metrics


def check_against_reference(inp, config, dtype, chunk_tokens, backend="cpu", **kw):
    g = torch.randn(()).item()
    ours = run(inp, config, g, backend, chunk_tokens=chunk_tokens, **kw)
    naive = run(inp, config, g, "torch")
    ref = run_ref64(inp, config, g, chunk_tokens)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == ours[2].dtype == dtype
    check_rule("loss", ours[0].cpu(), naive[0].cpu(), ref[0].cpu())
    for i, name in ((1, "dhidden"), (2, "dweight"), (3, "dbias")):
        if ref[i] is not None:
            check_rule(name, ours[i].cpu(), naive[i].cpu(), ref[i].cpu(), grad=True)
    return ours


def chunked_metrics(inp, config, chunk_tokens):
    """grpo_loss's metrics on logits built by the very chunk GEMMs the fused op runs (identical logits)."""
    logits = chunked_logits(inp["hidden"], inp["weight"], inp["bias"], chunk_tokens)
    rest = {k: v for k, v in inp.items() if k in ("old_logp", "ref_logp", "sampling_logp")}
    return ops.grpo_loss(logits, inp["targets"], inp["mask"], inp["advantages"], config=config, backend="cpu",
                         **rest).metrics


@pytest.mark.parametrize("chunk,bias", CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(seed, name, dtype, chunk, bias):
    config = CONFIGS[name]
    inp = make_inputs(3, 5, 16, 37, dtype, config, bias=bias, chunk_tokens=chunk)
    ours = check_against_reference(inp, config, dtype, chunk)
    expected = chunked_metrics(inp, config, chunk)
    assert set(ours[4]) == set(expected)
    for k in expected:  # diagnostics from the same logits: plumbing, not numerics
        torch.testing.assert_close(ours[4][k], expected[k], rtol=2e-5, atol=2e-6, msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ON_POLICY)
def test_on_policy(seed, name, dtype):
    config = CONFIGS[name]
    # on-policy in bf16: torch_d's only error is the bf16 rounding of dlogits, the same as ours, so the rule
    # compares two equally distributed maxima, and enough elements (N H, V H, V) keep that statistic stable.
    # At N = 32, H = 32 the bf16 dweight ratio (ours / torch_d) passed 3 once in 1500 draws (gspo); at
    # N = 64, H = 64 its maximum over 8000 draws of default and gspo was 2.66-2.82 (p99 1.78).
    inp = make_inputs(4, 16, 64, 256, dtype, config, bias=True, on_policy=True, chunk_tokens=5)
    check_against_reference(inp, config, dtype, 5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 8, 1), (1, 1, 8, 7), (2, 4, 32, 1000), (1, 3, 16, 4097), (3, 1, 16, 9)])
@pytest.mark.parametrize("name", ["default", "k2_seqmean", "is_seq_mask_gspo"])
def test_odd_shapes(seed, name, shape, dtype):
    config = CONFIGS[name]
    # The bias gradient is one rounding of an fp32 sum (_exact_bias_grad), so it is checked in bf16 too even
    # where a few tokens dominate each column (N = 3, or V = 7): summing rounded dlogits and scaling by g
    # afterwards rounded twice and failed the rule about once in 300 draws.
    bias = shape[-1] % 2 == 1
    inp = make_inputs(*shape, dtype, config, bias=bias, chunk_tokens=3)
    check_against_reference(inp, config, dtype, 3)


@pytest.mark.parametrize("name", ["default", "gspo", "is_seq_truncate"])
def test_bf16_bias_grad_rounds_once(seed, name):
    """One unmasked token per column and an upstream gradient g != 1: the bf16 bias gradient is the nearest
    bf16 of the fp64 value (half an ulp, plus fp32 noise), not the rounding of g times a rounded dlogit.
    Configs without a KL term: with one, dLoss/dlogp is a difference of O(1) terms whose fp32 cancellation
    alone (no rounding of ours) can move a column by ~0.02 ulp."""
    config = CONFIGS[name]
    inp = make_inputs(1, 1, 16, 4097, torch.bfloat16, config, bias=True)
    inp["mask"][:] = True
    g = 0.37 + torch.rand(()).item()
    db = run(inp, config, g, "cpu")[3].double()
    ref = run_ref64(inp, config, g, None)[3]
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp(min=1e-30))) - 7)
    excess = (db - ref).abs() / ulp
    assert excess.max().item() <= 0.5 + 1e-3, f"bias grad off by {excess.max().item():.3f} ulp"


def test_realistic_shape(seed):
    config = LossConfig(beta=0.04, eps_high=0.28)
    inp = make_inputs(4, 64, 64, 32000, torch.float32, config)
    check_against_reference(inp, config, torch.float32, None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tied_weight(seed, dtype):
    """The lm_head shares the embedding matrix: autograd adds the embedding's and the head's gradients.
    fp32: the rule against the materialized path (a bf16 hidden state upstream would put a shared rounding
    in both errors); both dtypes: the tied gradient equals the sum of the two untied ones."""
    B, T, H, V = 3, 6, 16, 41
    ids, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    mask, adv = torch.rand(B, T) > 0.2, torch.randn(B)
    emb0, proj0 = torch.randn(V, H) * 0.5, torch.randn(H, H) / H ** 0.5
    config = LossConfig(beta=0.05)
    ref_logp = torch.randn(B, T) * 0.1 - 3.7

    def step(backend, dt, tied=True):
        emb, proj = emb0.to(dt).clone().requires_grad_(), proj0.to(dt).clone().requires_grad_()
        head = emb if tied else emb0.to(dt).clone().requires_grad_()
        hidden = torch.tanh(torch.nn.functional.embedding(ids, emb) @ proj)
        out = ops.fused_linear_grpo_loss(hidden, head, targets, mask, adv, ref_logp=ref_logp, config=config,
                                         chunk_tokens=5, backend=backend)
        out.loss.backward()
        return out.loss.detach(), emb.grad if tied else emb.grad + head.grad, proj.grad

    ours, untied = step("cpu", dtype), step("cpu", dtype, tied=False)
    for a, b in zip(ours, untied):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if dtype == torch.float32:
        naive, ref = step("torch", dtype), step("torch", torch.float64)
        check_rule("loss", ours[0], naive[0], ref[0])
        check_rule("d(tied weight)", ours[1], naive[1], ref[1], grad=True)
        check_rule("d(proj)", ours[2], naive[2], ref[2], grad=True)


def test_masked_rows_and_accumulation(seed):
    B, T, H, V = 3, 4, 8, 19
    inp = make_inputs(B, T, H, V, torch.float32, LossConfig(), bias=True)
    inp["mask"] = torch.zeros(B, T, dtype=torch.bool)
    for config in (LossConfig(), CONFIGS["is_seq_mask_gspo"]):
        loss, dh, dw, db, metrics = run(inp, config, 1.0, "cpu", chunk_tokens=5)
        assert loss.item() == 0.0 and not any(bool(v.isnan()) for v in metrics.values())
        assert all(torch.count_nonzero(x) == 0 for x in (dh, dw, db))
    # two steps into the same .grad accumulate (the second adds into the existing gradient)
    w = inp["weight"].clone().requires_grad_()
    inp["mask"][0] = True
    grads = []
    for _ in range(2):
        out = ops.fused_linear_grpo_loss(inp["hidden"], w, inp["targets"], inp["mask"], inp["advantages"],
                                         old_logp=inp["old_logp"], chunk_tokens=3)
        out.loss.backward()
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[1], 2 * grads[0])


def test_no_grad_frozen_weight_and_retain_graph(seed):
    inp = make_inputs(2, 5, 8, 23, torch.float32, CONFIGS["gspo"])
    a = (inp["hidden"], inp["weight"], inp["targets"], inp["mask"], inp["advantages"])
    with torch.no_grad():
        l0 = ops.fused_linear_grpo_loss(*a, old_logp=inp["old_logp"], config=CONFIGS["gspo"]).loss
    h = inp["hidden"].clone().requires_grad_()  # weight frozen: only dhidden is computed
    out = ops.fused_linear_grpo_loss(h, *a[1:], old_logp=inp["old_logp"], config=CONFIGS["gspo"], chunk_tokens=4,
                                     schedule="tokens")
    torch.testing.assert_close(out.loss, l0)
    out.loss.backward(retain_graph=True)
    assert h.grad is not None and inp["weight"].grad is None
    with pytest.raises(RuntimeError):  # the saved gradients were scaled in place: a second pass must not reuse them
        out.loss.backward()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [None, 1, 4, 10**6])
def test_logprobs_matches_reference(seed, dtype, chunk):
    B, T, H, V = 3, 5, 16, 1000
    for temperature, with_entropy, bias in ((1.0, False, False), (0.7, True, True)):
        h = torch.randn(B, T, H).to(dtype)
        w = (torch.randn(V, H) * 2 / H ** 0.5).to(dtype)
        b = (torch.randn(V) * 0.5).to(dtype) if bias else None
        t = torch.randint(0, V, (B, T))
        kw = dict(temperature=temperature, with_entropy=with_entropy)
        ours = ops.fused_linear_logprobs(h, w, t, bias=b, chunk_tokens=chunk, backend="cpu", **kw)
        naive = ops.fused_linear_logprobs(h, w, t, bias=b, backend="torch", **kw)
        ref = ops.token_logprobs_ref(materialize_logits(h.double(), w.double(), None if b is None else b.double()),
                                     t, **kw)
        ours, naive, ref = [(x,) if not with_entropy else x for x in (ours, naive, ref)]
        for name, o, n, r in zip(("logp", "entropy"), ours, naive, ref):
            assert o.dtype == torch.float32 and o.shape == (B, T)
            check_rule(name, o, n, r)


def _compiled_step(hidden, weight, targets, mask, rewards, old):
    adv = ops.group_advantages(rewards, 2, backend="cpu")
    out = ops.fused_linear_grpo_loss(hidden, weight, targets, mask, adv, old_logp=old,
                                     config=LossConfig(eps_high=0.28), chunk_tokens=3, backend="cpu")
    return out.loss, out.metrics["ratio_mean"]


def test_compile_fullgraph(seed):
    B, T, H, V = 4, 5, 8, 37
    hidden, weight = torch.randn(B, T, H), torch.randn(V, H) * 0.5
    targets, mask = torch.randint(0, V, (B, T)), torch.rand(B, T) > 0.2
    old = ops.fused_linear_logprobs(hidden, weight, targets) + 0.05 * torch.randn(B, T)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    torch._dynamo.reset()
    # aot_eager_decomp_partition: AOT autograd with the min-cut partitioner Inductor uses, without C++ codegen
    compiled = torch.compile(_compiled_step, fullgraph=True, backend="aot_eager_decomp_partition")
    res = []
    for fn in (_compiled_step, compiled):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, ratio = fn(h, w, targets, mask, rewards, old)
        loss.backward()
        res.append((loss, ratio, h.grad, w.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(b, a)
    assert hasattr(torch.ops.grpo, "fused_linear_grpo_loss") and hasattr(torch.ops.grpo, "fused_linear_logprobs")


@pytest.mark.parametrize("schedule", ["tokens", "vocab"])
@pytest.mark.parametrize("ratio_level,dtype", [("token", torch.float32), ("sequence", torch.bfloat16)])
def test_opcheck(ratio_level, dtype, schedule):
    """Schema, fake tensor and autograd registration of both ops; AOT dispatch of the logprobs op. The loss
    op's AOT check is left to test_compile_fullgraph: its outputs 3-5 are its gradient buffers, which the
    eager backward scales in place (no copy of dW / dhidden), so opcheck's eager-vs-traced comparison of
    those outputs after a backward sees the scaling. The public API never hands them out."""
    B, T, H, V = 2, 3, 4, 9
    h, w = torch.randn(B, T, H, dtype=dtype, requires_grad=True), torch.randn(V, H, dtype=dtype, requires_grad=True)
    b = torch.randn(V, dtype=dtype, requires_grad=True) if ratio_level == "token" else None
    t, m, adv = torch.randint(0, V, (B, T)), torch.ones(B, T), torch.randn(B)
    old = torch.randn(B, T) * 0.1 - 2.0
    args = (h, w, b, t, m, m / m.sum(), adv, old, None, None, 0.2, 0.28, 0.0, 0.0, "k3", ratio_level, "", 3.0, 1.0,
            ratio_level == "sequence", 2, True, True, b is not None, "cpu", schedule)
    torch.library.opcheck(torch.ops.grpo.fused_linear_grpo_loss.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(torch.ops.grpo.fused_linear_logprobs.default,
                          (h.detach(), w.detach(), None, t, 0.8, True, 4, "cpu"))


B_, T_, H_, V_ = 2, 3, 4, 11
_BAD = [  # (overrides, exception, words the message must contain)
    (dict(hidden=torch.randn(B_ * T_, H_)), ValueError, ["hidden", "(B, T, H)"]),
    (dict(hidden=torch.randint(0, 3, (B_, T_, H_))), TypeError, ["hidden", "floating"]),
    (dict(hidden=torch.randn(B_, T_, H_, dtype=torch.float64)), TypeError, ["hidden", "dtype"]),
    (dict(weight=torch.randn(V_, H_ + 1)), ValueError, ["weight", "H = 4"]),
    (dict(weight=torch.randn(V_, H_).bfloat16()), TypeError, ["weight", "dtype"]),
    (dict(weight=torch.randn(V_)), ValueError, ["weight", "2-d"]),
    (dict(bias=torch.randn(V_ + 1)), ValueError, ["bias", "shape"]),
    (dict(bias=torch.randn(V_).bfloat16()), TypeError, ["bias", "dtype"]),
    (dict(targets=torch.randint(0, V_, (B_, T_ + 1))), ValueError, ["targets", "shape"]),
    (dict(targets=torch.rand(B_, T_)), TypeError, ["targets", "integer"]),
    (dict(targets=torch.full((B_, T_), V_)), ValueError, ["targets", f"[0, {V_})"]),
    (dict(mask=torch.ones(B_, T_ + 1)), ValueError, ["mask", "shape"]),
    (dict(advantages=torch.randn(B_, 1)), ValueError, ["advantages", "shape"]),
    (dict(old_logp=torch.randn(B_, T_ - 1)), ValueError, ["old_logp", "shape"]),
    (dict(weight=torch.randn(V_, H_, device="meta")), ValueError, ["weight", "device"]),
    (dict(advantages=torch.randn(B_, device="meta")), ValueError, ["advantages", "device"]),
    (dict(config=LossConfig(beta=0.1)), ValueError, ["ref_logp", "beta"]),
    (dict(config=LossConfig(is_mode="token_mask")), ValueError, ["sampling_logp", "is_mode"]),
    (dict(config="token_mean"), TypeError, ["config", "LossConfig"]),
    (dict(chunk_tokens=0), ValueError, ["chunk_tokens"]),
    (dict(chunk_tokens=2.5), TypeError, ["chunk_tokens"]),
    (dict(num_tokens=0), ValueError, ["num_tokens"]),
    (dict(backend="gpu"), ValueError, ["backend"]),
]


@pytest.mark.parametrize("over,exc,words", _BAD)
def test_bad_inputs_raise(over, exc, words):
    a = dict(hidden=torch.randn(B_, T_, H_), weight=torch.randn(V_, H_), targets=torch.randint(0, V_, (B_, T_)),
             mask=torch.ones(B_, T_, dtype=torch.bool), advantages=torch.randn(B_), backend="cpu")
    a.update(over)
    with pytest.raises(exc) as e:
        ops.fused_linear_grpo_loss(a.pop("hidden"), a.pop("weight"), a.pop("targets"), a.pop("mask"),
                                   a.pop("advantages"), **a)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    if not {"mask", "advantages", "old_logp", "config", "num_tokens"} & set(over):  # the logprobs twin checks too
        a = dict(hidden=torch.randn(B_, T_, H_), weight=torch.randn(V_, H_), targets=torch.randint(0, V_, (B_, T_)),
                 backend="cpu")
        a.update(over)
        with pytest.raises(exc):
            ops.fused_linear_logprobs(a.pop("hidden"), a.pop("weight"), a.pop("targets"), **a)


def test_chunk_rule():
    assert plan_chunk(16384, 4096, 151936) == 448  # N * H / V = 441.7 -> nearest multiple of 64
    assert plan_chunk(16384, 4096, 151936, cuda=True) == 4096  # the GPU floor (fp32 dW traffic per chunk)
    assert plan_chunk(1000, 4096, 151936, cuda=True) == 1000
    assert plan_chunk(2048, 256, 32000) == 256 and plan_chunk(8192, 256, 32000) == 256  # floor of 256
    assert plan_chunk(65536, 512, 32000) == 1024  # 1048.6 -> 1024
    assert plan_chunk(15, 16, 37) == 15  # everything fits: one chunk
    assert plan_chunk(10**6, 64, 1) == 16384  # cap
    assert plan_chunk(100, 16, 37, chunk_tokens=7) == 7 and plan_chunk(5, 16, 37, chunk_tokens=64) == 5


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["default", "k3_beta", "gspo", "is_seq_truncate"])
def test_cuda_bf16_matches_reference(seed, name):
    config = CONFIGS[name]
    inp = make_inputs(4, 64, 256, 4097, torch.bfloat16, config, bias=name == "k3_beta", chunk_tokens=48,
                      device="cuda")
    check_against_reference(inp, config, torch.bfloat16, 48, backend="auto")


@pytest.mark.skipif(not (has_cuda() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="Triton backend needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["default", "k3_beta", "gspo", "is_seq_mask_gspo"])
def test_triton_backend(seed, name, dtype):
    """backend="triton": the loss kernel of each chunk (token-level) or the logprobs pass, Triton's
    per-sequence head and the softmax-gradient pass (sequence-level); small, for the CPU interpreter."""
    config = CONFIGS[name]
    dev = "cuda" if has_cuda() else "cpu"
    inp = make_inputs(3, 4, 16, 37, dtype, config, bias=True, chunk_tokens=5, device=dev)
    check_against_reference(inp, config, dtype, 5, backend="triton")
