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


def plan(V, dtype):
    return C.cuda_rows_on_chip(V, CODES[dtype], on_device=False)


def per_vec(dtype):
    return 16 // torch.empty((), dtype=dtype).element_size()


def slices(V, dtype):
    """Vector indices each (block, thread) loads, by the kernel's rule i = v0 + thread + k * 256, i < v1."""
    R, Cl, per_block = plan(V, dtype)
    nvec = V // per_vec(dtype)
    idx = []
    for rank in range(Cl):
        v0, v1 = rank * per_block, min(rank * per_block + per_block, nvec)
        i = v0 + np.arange(THREADS)[:, None] + np.arange(R)[None, :] * THREADS
        idx.append(i[i < v1])
    return np.concatenate(idx), nvec


@pytest.mark.parametrize("dtype", list(CODES))
def test_plan_takes_the_rows_it_should(dtype):
    n = per_vec(dtype)
    cap = 8 * 16 * THREADS * n  # 8 blocks of 256 threads holding 16 vectors each
    for V in [1, 7, 1000, 4095, 4096, 4097, 4104, 32000, 65536, 128256, 151936, cap, cap + n, 2 * cap]:
        want = V >= 4096 and V % n == 0 and V <= cap
        R, Cl, per_block = plan(V, dtype)
        assert (R != 0) == want, (V, R)
        if not want:
            assert (R, Cl, per_block) == (0, 0, 0)
            continue
        nvec = V // n
        assert R in (4, 16) and 1 <= Cl <= 8 and per_block <= R * THREADS
        assert Cl * per_block >= nvec and (Cl - 1) * per_block < nvec  # no empty block
        if R == 16:  # the smaller slice would need more than 8 blocks
            assert -(-nvec // (4 * THREADS)) > 8


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("V", [4096, 4104, 32000, 49152, 128256, 151936, 262144])
def test_blocks_cover_each_vector_once(V, dtype):
    if plan(V, dtype)[0] == 0:
        pytest.skip("not held on chip")
    idx, nvec = slices(V, dtype)
    assert idx.size == nvec and np.array_equal(np.sort(idx), np.arange(nvec))


def test_no_device_no_plan_and_bad_arguments():
    if not torch.cuda.is_available():
        assert C.cuda_rows_on_chip(151936, 1) == (0, 0, 0)  # on_device: no sm_90 device here
    with pytest.raises(ValueError, match="dtype code"):
        C.cuda_rows_on_chip(4096, 7)
    with pytest.raises(ValueError, match="V must be"):
        C.cuda_rows_on_chip(0, 1)
