"""Shared test helpers: the numerics rule of DESIGN.md section 5 and fresh random seeds.

err(x) = max |x - ref_fp64|; a kernel passes when err(kernel_d) <= 2 err(torch_d) + 1e-6 for values and
<= 3 err(torch_d) + 1e-6 for gradients, where torch_d is the reference computed naively at dtype d.
inf/NaN positions must match exactly.
"""
import os
import random

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
if not torch.cuda.is_available():  # Triton kernels run in its interpreter; read when @triton.jit runs
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def seed(request):
    """A fresh seed per test (printed on failure), so every run draws new inputs."""
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    random.seed(s)
    request.node.user_properties.append(("seed", s))
    print(f"seed={s}")
    return s


def _finite_mask_check(name, x, ref):
    xf, rf = torch.isfinite(x), torch.isfinite(ref)
    if not torch.equal(xf, rf):
        where = (xf != rf).nonzero()[0].tolist()
        raise AssertionError(f"{name}: inf/NaN positions differ from the fp64 reference, first at {where}: "
                             f"got {x[tuple(where)].item()}, reference {ref[tuple(where)].item()}")
    same = (x[~xf].double() == ref[~rf]) | (torch.isnan(x[~xf]) & torch.isnan(ref[~rf]))
    if not bool(same.all()):
        raise AssertionError(f"{name}: non-finite values differ from the reference (inf vs NaN or sign)")


def max_err(x, ref):
    """(max abs error over finite positions, index) against ref (float64)."""
    finite = torch.isfinite(ref)
    d = torch.where(finite, (x.double() - ref).abs(), torch.zeros_like(ref))
    if d.numel() == 0:
        return 0.0, ()
    flat = int(d.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape)) if d.dim() else ()
    return float(d.max()), idx


def check_rule(name, kernel, torch_d, ref64, *, grad=False):
    """Asserts the numerics rule for one output; prints abs/rel error and where on failure."""
    assert kernel.shape == ref64.shape, f"{name}: shape {tuple(kernel.shape)} != reference {tuple(ref64.shape)}"
    _finite_mask_check(name, kernel, ref64)
    if torch.isnan(kernel).any() and not torch.isnan(ref64).any():
        raise AssertionError(f"{name}: NaN where the reference has none")
    k = 3.0 if grad else 2.0
    err_k, idx = max_err(kernel, ref64)
    err_t, _ = max_err(torch_d, ref64)
    bound = k * err_t + 1e-6
    if not err_k <= bound:
        refv = ref64[idx].item() if idx or ref64.dim() == 0 else float("nan")
        rel = err_k / max(abs(refv), 1e-30)
        raise AssertionError(
            f"{name}: max abs err {err_k:.3e} (rel {rel:.3e}) at {idx} (kernel {kernel[idx].item():.8g}, "
            f"fp64 ref {refv:.8g}) exceeds {k:g} x torch_{torch_d.dtype} err {err_t:.3e} + 1e-6 = {bound:.3e}")
    return err_k, err_t


def cpu_backends():
    return ["cpu"]


def has_cuda():
    return torch.cuda.is_available()
