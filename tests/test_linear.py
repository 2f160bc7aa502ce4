"""rowwise_linear (csrc/cpu/linear.cpp) against F.linear in fp64 under the numerics rule (DESIGN.md §5):
odd shapes around the kernel's tiles (dot-product tiles of 6 or 4 weight rows x 4 or 2 x rows, 16 or 8
lanes; fp32 broadcast tiles of 12 or 6 weight rows x 2 vectors of x rows past 24 / 12 rows, with a last
block of up to 24 / 12 rows on dot-product tiles), K tails,
strided rows, bias or none, fp32 / bf16 / fp16, inf/NaN positions, bad input."""
import pytest
import torch
import torch.nn.functional as F

from conftest import check_rule
from grpo.ops.linear import rowwise_linear, rowwise_linear_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def case(M, N, K, dtype, bias):
    x = torch.randn(M, K).to(dtype)
    w = (torch.randn(N, K) / K ** 0.5).to(dtype)
    b = torch.randn(N).to(dtype) if bias else None
    return x, w, b


def check(x, w, b):
    ours = rowwise_linear(x, w, b, backend="cpu")
    torch_d = rowwise_linear_ref(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert ours.dtype == x.dtype and ours.shape == ref.shape
    check_rule("y", ours.float(), torch_d.float(), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 7, 16), (3, 5, 17), (4, 6, 32), (5, 13, 100), (8, 25, 64),
                                   (17, 64, 33), (33, 7, 129), (64, 96, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference(seed, M, N, K, dtype, bias):
    check(*case(M, N, K, dtype, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows_and_batch_dims(seed, dtype):
    big_x = torch.randn(2, 5, 40).to(dtype)
    big_w = (torch.randn(11, 48) / 6).to(dtype)
    x, w = big_x[..., 3:35], big_w[:, 5:37]  # row strides 40 and 48, K = 32
    assert not x.is_contiguous() and not w.is_contiguous() and w.stride(1) == 1
    check(x, w, torch.randn(11).to(dtype))
    xt = torch.randn(32, 7).to(dtype).t()  # unit stride along M, not K: copied before the kernel
    check(xt, w, None)


@pytest.mark.parametrize("M", [17, 24, 25, 40, 56, 57, 70])
def test_strided_weight_rows_broadcast_tiles(seed, M):
    """fp32 past 24 rows of x (AVX-512; 12 on AVX2): the broadcast tiles (AVX-512: weight rows addressed as
    base + j x row stride), on full and tail tiles of 12 rows, a row stride other than K, a K of several
    64-step chunks and a partial one; a last block of 1-24 rows on dot-product tiles over the same weight rows (40, 56, 70),
    or on a broadcast tile (25, 57); 17 and 24 on dot-product tiles only."""
    big_w = torch.randn(29, 300) / 17
    w = big_w[:, 7:290]  # row stride 300, K = 283
    x = torch.randn(M, 283)
    check(x, w, torch.randn(29))
    check(x[:, :250], big_w[:25, :250], None)


def test_empty_rows_and_nonfinite_inputs(seed):
    x, w, b = case(6, 9, 20, torch.float32, True)
    assert rowwise_linear(x[:0], w, b).shape == (0, 9)
    x[1, 3] = float("nan")
    x[4, 0] = float("inf")
    check(x, w, b)  # NaN / inf land where F.linear in fp64 puts them


def test_bad_input_raises():
    x, w, b = case(2, 3, 4, torch.float32, True)
    with pytest.raises(ValueError, match="last dimension of K = 4"):
        rowwise_linear(torch.randn(2, 5), w)
    with pytest.raises(TypeError, match="weight: expected dtype"):
        rowwise_linear(x, w.bfloat16())
    with pytest.raises(ValueError, match=r"bias: expected shape \(3,\)"):
        rowwise_linear(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="backend"):
        rowwise_linear(x, w, backend="triton")
    with pytest.raises(TypeError, match="x: expected dtype"):
        rowwise_linear(x.double(), w.double())


@pytest.mark.parametrize("shape,torch_rows,streams", [((3, 20), 0, True), ((63, 20), 64, True),
                                                      ((64, 20), 64, False), ((2, 50, 20), 64, False),
                                                      ((2, 31, 20), 64, True), ((500, 20), 0, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_linear_sends_prefills_to_torch(monkeypatch, shape, torch_rows, streams, dtype):
    """vLLM's plain-mode GEMM: the row-streaming kernel below torch_rows rows of x (any leading dims), F.linear
    from there on (0: never); either way the result is F.linear's under the rule."""
    import grpo.sampler.cpu_gemm as cg
    calls = []

    def spy(*a, **k):
        calls.append(a[0].shape)
        return rowwise_linear(*a, **k)
    monkeypatch.setattr(cg, "rowwise_linear_checked", spy)
    x, w = torch.randn(*shape).to(dtype), (torch.randn(9, 20) / 20 ** 0.5).to(dtype)
    y = cg.plain_linear(x, w, None, torch_rows=torch_rows)
    assert bool(calls) == streams and y.dtype == dtype
    check_rule("y", y, F.linear(x, w), F.linear(x.double(), w.double()))
