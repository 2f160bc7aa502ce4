"""Compiles every Triton launch our ops make, for a GPU target, on a machine without a GPU.

Triton's CPU interpreter runs the kernels in the test suite, but it accepts code the GPU compiler rejects
(found once: a constexpr branch with an early return). This script runs the launchers of grpo.kernels
through grpo.ops for a set of loss configurations, dtypes and tile variants with `JITFunction.run`
replaced by a recorder (nothing executes), then compiles each distinct launch (kernel, argument types,
constexpr values, num_warps, num_stages) ahead of time for sm_90 with Triton's bundled ptxas.

    python -m bench.triton_sm90_check [--arch 90] [--quick]

Prints one line per distinct launch and exits non-zero when any fails to compile.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import traceback

import torch
import triton.runtime.jit as triton_jit

from bench.triton_resources import aot_compile
from grpo.ops import LossConfig
from grpo.ops.advantages import _launch as launch_advantages
from grpo.ops.logprobs import launch_logprobs, launch_softmax_grad
from grpo.ops.loss import launch_loss
from grpo.ops.variants import ADV_ESTIMATORS, ADV_SCALES, AGGREGATIONS

PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64",
       torch.int32: "*i32", torch.uint8: "*u8", torch.bool: "*i1"}
CONFIGS = [LossConfig(), LossConfig(eps_high=0.28, dual_clip=3.0), LossConfig(beta=0.04, kl="k3"),
           LossConfig(beta=0.1, kl="k2"), LossConfig(beta=0.1, kl="k1"),
           LossConfig(ratio_level="sequence", loss_agg="seq_mean_token_mean"),
           LossConfig(is_mode="token_truncate", temperature=0.7, entropy=True),
           LossConfig(is_mode="token_mask", beta=0.02), LossConfig(is_mode="sequence_truncate", entropy=True),
           LossConfig(is_mode="sequence_mask", ratio_level="sequence", beta=0.05, temperature=1.3)]


class Recorder:
    """Replaces JITFunction.run: records (fn, args, kwargs) of each launch and runs nothing."""

    def __init__(self):
        self.launches = {}

    def __call__(self, fn, *args, grid, warmup, **kwargs):
        params = fn.params
        sig, consts = {}, {}
        for p, a in zip(params, args):
            self._put(p, a, sig, consts)
        for p in params[len(args):]:
            if p.name in kwargs:
                self._put(p, kwargs[p.name], sig, consts)
            elif p.has_default:
                self._put(p, p.default, sig, consts)
        opts = (kwargs.get("num_warps", 4), kwargs.get("num_stages", 3))
        key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, repr(v)) for k, v in consts.items())), opts)
        self.launches.setdefault(key, (fn, sig, consts, opts))

    @staticmethod
    def _put(p, value, sig, consts):
        if p.is_constexpr:
            consts[p.name] = value
        elif isinstance(value, torch.Tensor):
            sig[p.name] = PTR[value.dtype]
        elif isinstance(value, bool):
            sig[p.name] = "i1"
        elif isinstance(value, int):
            sig[p.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{p.name}: cannot type {type(value).__name__}")


def exercise(quick: bool):
    """Calls the launchers (not the kernels: run is recorded) for every configuration, dtype and tile."""
    from grpo.kernels import logprobs as kl
    # row_config's default tile: long rows in each dtype, short rows (several a program) in bf16; then the
    # sweep's variants on long bf16 rows
    every_flag = kl.Tile(4096, 1, 4, row_acc=True, prefetch=True, l2_hints=True, persistent=1)
    cases = [(None, torch.float32, 4097), (None, torch.bfloat16, 4097), (None, torch.bfloat16, 7),
             (every_flag, torch.bfloat16, 4097)]
    if not quick:
        cases += [(None, torch.float16, 4097), (None, torch.float32, 7)]
        cases += [(t, torch.bfloat16, 151936) for t in (kl.Tile(8192, 1, 16, prefetch=True, persistent=1),
                                                       kl.Tile(2048, 1, 2, 2), kl.Tile(2048, 1, 1, row_acc=True))]
    B, T = 2, 3
    for tile, dtype, V in cases:
        kl.TILE = tile
        logits = torch.randn(B * T, V).to(dtype)
        targets = torch.randint(0, V, (B * T,))
        mask = torch.ones(B, T)
        f32 = lambda: torch.randn(B, T)  # noqa: E731
        for cfg in CONFIGS:
            coef = AGGREGATIONS.get(cfg.loss_agg).extra(mask, None, None, cfg.max_completion_length)
            ref = f32() if cfg.beta else None
            samp = f32() if cfg.is_mode else None
            for dlogits in (None, torch.empty_like(logits)):
                launch_loss(logits, targets, mask, coef.contiguous(), torch.randn(B), f32(), ref, samp, cfg,
                            dlogits=dlogits, backend="triton")
        for temp, ent in ((1.0, False), (0.7, True)):
            logp, stats, e = launch_logprobs(logits, targets, temp, ent, True, "triton", logp_lo=torch.empty(B * T))
            launch_logprobs(logits, targets, temp, ent, False, "triton")
            g = torch.randn(B * T)
            launch_softmax_grad(logits, targets, stats, e, g, g if ent else None, temp, out=logits, backend="triton")
    kl.TILE = None
    for scale, est, (n, G) in itertools.product(ADV_SCALES.names(), ADV_ESTIMATORS.names(), ((8, 4), (12, 1))):
        launch_advantages(torch.randn(n), G, ADV_SCALES.get(scale, "scale").code,
                          ADV_ESTIMATORS.get(est, "estimator").code, 1e-4, "triton")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--quick", action="store_true",
                   help="default tiles in fp32 and bf16 and one tile with every option (what the test runs)")
    a = p.parse_args(argv)
    rec = Recorder()
    original = triton_jit.JITFunction.run
    triton_jit.JITFunction.run = lambda self, *args, grid, warmup, **kw: rec(self, *args, grid=grid, warmup=warmup,
                                                                              **kw)
    try:
        exercise(a.quick)
    finally:
        triton_jit.JITFunction.run = original
    failed = 0
    for n, (key, (fn, sig, consts, opts)) in enumerate(sorted(rec.launches.items(), key=lambda kv: kv[0][0])):
        short = ",".join(f"{k}={v}" for k, v in consts.items() if k.isupper())
        try:
            aot_compile(fn, sig, consts, *opts, a.arch, div16={n for n, t in sig.items() if t.startswith("*")})
            status = "ok"
        except Exception as e:  # noqa: BLE001 -- reported per launch
            failed += 1
            status = "FAILED " + "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1][:300]
        print(f"{n:3d} {fn.__name__} warps={opts[0]} stages={opts[1]} {short}: {status}", flush=True)
    print(f"{len(rec.launches)} distinct launches compiled for sm_{a.arch}, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
