"""The CUDA fused loss's rows-on-chip launch shape (csrc/cuda/loss.cu resident_plan_for), checked on the
host: which rows it takes, and that its blocks and threads cover every 16-byte vector of a row exactly once
with the index rule of resident_loss_kernel. The kernel itself runs in tests/test_gpu.py."""
import numpy as np
import pytest
import torch

C = pytest.importorskip("grpo._C")
pytestmark = pytest.mark.skipif(not C.has_cuda, reason="grpo._C built without the CUDA kernels")
THREADS = 256  # kResThreads
CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def plan(V, dtype, policy=1):
    return C.cuda_rows_on_chip(V, CODES[dtype], on_device=False, policy=policy)


def per_vec(dtype):
    return 16 // torch.empty((), dtype=dtype).element_size()


def slices(V, dtype, policy):
    """Vector indices each (block, thread) loads, by the kernel's rule i = v0 + thread + k * 256, i < v1."""
    R, Cl, per_block = plan(V, dtype, policy)
    nvec = V // per_vec(dtype)
    idx = []
    for rank in range(Cl):
        v0, v1 = rank * per_block, min(rank * per_block + per_block, nvec)
        i = v0 + np.arange(THREADS)[:, None] + np.arange(R)[None, :] * THREADS
        idx.append(i[i < v1])
    return np.concatenate(idx), nvec


def _check_shape(V, dtype, R, Cl, per_block, max_blocks):
    nvec = V // per_vec(dtype)
    assert R in (4, 8, 16) and 1 <= Cl <= max_blocks and per_block <= R * THREADS
    assert Cl * per_block >= nvec and (Cl - 1) * per_block < nvec  # the row covered, no empty block


@pytest.mark.parametrize("dtype", list(CODES))
def test_default_plan_takes_the_rows_it_should(dtype):
    n = per_vec(dtype)
    cap = 8 * 16 * THREADS * n  # 8 blocks of 256 threads holding 16 vectors each
    for V in [1, 7, 1000, 4095, 4096, 4097, 4104, 32000, 65536, 128256, 151936, cap, cap + n, 2 * cap]:
        want = V >= 4096 and V % n == 0 and V <= cap
        R, Cl, per_block = plan(V, dtype)
        assert (R != 0) == want, (V, R)
        if not want:
            assert (R, Cl, per_block) == (0, 0, 0)
            continue
        _check_shape(V, dtype, R, Cl, per_block, 8)
        for smaller in (4, 8):  # the smallest slice that fits in 8 blocks
            if smaller < R:
                assert -(-(V // n) // (smaller * THREADS)) > 8


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("R", [4, 8, 16])
def test_fixed_slice_plans(dtype, R):
    n = per_vec(dtype)
    for V in [4096, 32000, 151936, 16 * R * THREADS * n, 16 * R * THREADS * n + n]:
        want = -(-(V // n) // (R * THREADS)) <= 16
        got = plan(V, dtype, R)
        assert (got[0] == R) == want and (got[0] in (0, R)), (V, got)
        if want:
            _check_shape(V, dtype, *got, 16)
    assert plan(151936, dtype, 0) == (0, 0, 0)


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("V", [4096, 4104, 32000, 49152, 128256, 151936, 262144])
@pytest.mark.parametrize("policy", [1, 4, 8, 16])
def test_blocks_cover_each_vector_once(V, dtype, policy):
    if plan(V, dtype, policy)[0] == 0:
        pytest.skip("not held on chip")
    idx, nvec = slices(V, dtype, policy)
    assert idx.size == nvec and np.array_equal(np.sort(idx), np.arange(nvec))


def test_unaligned_rows_get_no_plan():
    """The launcher's alignment rule, the one _backend.rows_on_chip asks: rows must start on 16-byte
    boundaries (base pointer and row stride)."""
    want = plan(32000, torch.bfloat16)
    assert want[0] != 0
    ask = lambda **kw: C.cuda_rows_on_chip(32000, 1, on_device=False, **kw)  # noqa: E731
    assert ask(logits=4096, row_stride=32000) == want and ask(logits=4096, row_stride=32008) == want
    assert ask(logits=4098, row_stride=32000) == (0, 0, 0)  # 2 bytes past a boundary
    assert ask(logits=4096, row_stride=32001) == (0, 0, 0)  # the second row is not
    with pytest.raises(ValueError, match="row_stride"):
        ask(row_stride=31999)


def test_no_device_no_plan_and_bad_arguments():
    if not torch.cuda.is_available():
        assert C.cuda_rows_on_chip(151936, 1) == (0, 0, 0)  # on_device: no sm_90 device here
    with pytest.raises(ValueError, match="dtype code"):
        C.cuda_rows_on_chip(4096, 7)
    with pytest.raises(ValueError, match="V must be"):
        C.cuda_rows_on_chip(0, 1)
    with pytest.raises(ValueError, match="rows_on_chip must be"):
        C.cuda_rows_on_chip(4096, 1, policy=2)


def test_policy_knob(monkeypatch):
    from grpo.ops import _backend
    for value, knob in (("0", (0, False)), ("1", (1, False)), ("8", (8, False)), ("16p", (16, True)),
                        ("1p", (1, True))):
        monkeypatch.setenv("GRPO_ROWS_ON_CHIP", value)
        assert _backend.rows_on_chip_knob() == knob
    monkeypatch.delenv("GRPO_ROWS_ON_CHIP")
    assert _backend.rows_on_chip_knob() == (1, False)
    for bad in ("3", "0p", "p", "8pp", "on"):
        monkeypatch.setenv("GRPO_ROWS_ON_CHIP", bad)
        with pytest.raises(ValueError, match="GRPO_ROWS_ON_CHIP"):
            _backend.rows_on_chip_knob()
