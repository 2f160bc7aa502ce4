"""vLLM's linear layers on CPU, computing over their weights as loaded (no packed copy).

vLLM 0.32 on CPU hands every linear layer to `dispatch_cpu_unquantized_gemm` once its weights are loaded:
the weight is re-packed for oneDNN (or sgl-kernel), the plain tensor is emptied, and every in-place
update must go through a layerwise reload that re-packs it again (~60% of a sync's time, measured in
bench/bench_sampler.py). `plain_cpu_gemm()` replaces that dispatch while vLLM loads or reloads: the layer
keeps its weight tensor and computes with `plain_linear`, which reads that tensor at every call, so an
update is a copy into it through vLLM's own per-parameter loaders (VLLMSampler weight_transfer="copy").
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from grpo.ops._checks import FLOAT_DTYPES
from grpo.ops.linear import rowwise_linear_checked


def plain_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 torch_rows: int = 0) -> torch.Tensor:
    """vLLM's `layer.cpu_linear(x, weight, bias)`: x (..., K), weight (N, K) -> (..., N). The row-streaming
    kernel below `torch_rows` rows of x (0: at every row count), F.linear from there on. F.linear packs the
    weight again at every call, which only many rows (a prefill) amortize. A 100M model's decode-step GEMMs
    (12 layers + lm_head, weights streamed from memory, 2-core AVX-512 Xeon, fp32): the kernel was 1.87x
    F.linear's speed at M = 8, 1.51x at 32, 1.14x at 64, and F.linear 1.12x faster at 96, 1.19x at 128,
    1.40x at 256 (the default torch_rows, 80, sits between)."""
    # vLLM's weights are Parameter subclasses with a Python __torch_function__: every attribute read of one
    # (shape, stride, data_ptr, ...) goes through it, ~24 us a call at this kernel's ~30 us for small M
    with torch._C.DisableTorchFunctionSubclass():
        K = weight.shape[-1] if weight.dim() == 2 else -1
        rows = x.numel() // max(x.shape[-1], 1)
        if (x.dtype == weight.dtype and x.dtype in FLOAT_DTYPES and (bias is None or bias.dtype == x.dtype)
                and x.shape[-1] == K and x.device.type == "cpu" and not 0 < torch_rows <= rows):
            return rowwise_linear_checked(x, weight, bias)
        return F.linear(x, weight, bias)


@torch.library.custom_op("grpo::plain_linear", mutates_args=())
def plain_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    torch_rows: int) -> torch.Tensor:
    """plain_linear as a torch operator, for engines vLLM compiles (enforce_eager=False): dynamo records it
    as one opaque node, where it breaks the graph at a Python call it cannot trace (the kernel takes raw
    pointers), which left a compiled 100M model no faster than eager. Eager engines call plain_linear
    directly: the operator dispatch costs ~15-20 us a call."""
    return plain_linear(x, weight, bias, torch_rows)


@plain_linear_op.register_fake
def _(x, weight, bias, torch_rows):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _dispatch_plain(original, torch_rows: int, as_op: bool):
    fn = plain_linear_op if as_op else plain_linear

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        w = getattr(layer, "weight", None)
        if not isinstance(w, torch.Tensor) or w.is_meta or w.dim() != 2 or w.dtype not in FLOAT_DTYPES:
            return original(layer, remove_weight)  # MoE / conv weights and missing layers: vLLM's own way
        layer.cpu_linear = functools.partial(fn, torch_rows=torch_rows)
    return dispatch


@contextlib.contextmanager
def plain_cpu_gemm(enabled: bool = True, torch_rows: int = 0, as_op: bool = False):
    """While active, vLLM's CPU GEMM dispatch keeps weights as loaded and uses `plain_linear` with
    `torch_rows` (as the operator `plain_linear_op` with as_op, for compiled engines; wrap the engine's
    construction and every reload in it); restores vLLM's dispatch on exit."""
    if not enabled:
        yield
        return
    import vllm.model_executor.layers.utils as U
    original = U.dispatch_cpu_unquantized_gemm
    U.dispatch_cpu_unquantized_gemm = _dispatch_plain(original, torch_rows, as_op)
    try:
        yield
    finally:
        U.dispatch_cpu_unquantized_gemm = original
