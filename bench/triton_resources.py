"""Static resource report of the Triton row kernels for a GPU target, without a GPU: each tile is compiled
ahead of time for sm_90 (or --arch) with Triton's bundled ptxas, and the cubin's registers, stack, spills
(local memory) and shared memory are read with Triton's bundled cuobjdump, next to the widths of the
global loads and stores in the PTX (v4.b32 = 16 bytes per thread per instruction; b16 = one bf16).

    python -m bench.triton_resources [--tiles 4096x4,8192x16,4096x4rp] [--dtype bf16] [--arch 90]
                                     [--kernels logprobs,softmax_grad,loss] [--no-div16]

Arguments are compiled as the launcher specializes them at run time: pointers 16-byte aligned and V and
the row strides divisible by 16 (true for V = 151936 or 32000; --no-div16 shows the code for a V that is
not, e.g. 50257: scalar loads). The loss kernel is compiled for the default LossConfig with old logprobs
and the gradient written (the bench_loss configuration). No timing: occupancy follows from the registers
(65536 per SM, at most 32 programs and 64 warps per SM on sm_90).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bench.tune_triton import parse_tile

PTR_ARGS_F32 = ("logp_out", "stats_out", "ent_out", "lo_out", "tok_loss_out", "g_out", "old_lp", "ref_lp", "samp_lp",
                "coef_in", "mask_in", "adv", "stats", "ent", "g_logp", "g_ent")
INT_ARGS = ("N", "V", "T_seq", "stride", "out_stride")
DIV16_INTS = ("V", "stride", "out_stride")
FLOAT_ARGS = ("T", "Tlo", "invT", "lo", "hi", "eps_low", "eps_high", "dual_clip", "beta", "is_cap")


def arg_types(fn, dtype: str) -> dict:
    """Triton signature types of a row kernel's runtime arguments (logits and dlogits in `dtype`)."""
    types = {}
    for n in fn.arg_names:
        if n in ("logits", "dlogits"):
            types[n] = f"*{dtype}"
        elif n == "targets":
            types[n] = "*i64"
        elif n in PTR_ARGS_F32:
            types[n] = "*fp32"
        elif n in INT_ARGS:
            types[n] = "i32"
        elif n in FLOAT_ARGS:
            types[n] = "fp32"
    return types


def kernel_consts(kernel: str, tile) -> tuple:
    """(jit function, constexpr values, num_warps, num_stages) for one kernel and Tile."""
    from grpo.kernels import logprobs as kl
    from grpo.kernels import loss as kloss
    tile_kw = tile.launch()
    warps, stages = tile_kw.pop("num_warps"), tile_kw.pop("num_stages", 3)
    if kernel == "logprobs":
        consts = dict(HAS_T=False, WITH_STATS=True, WITH_ENT=False, WITH_LO=False, **tile_kw)
        return kl._logprobs_kernel, consts, warps, stages
    if kernel == "softmax_grad":
        tile_kw = tile.launch(stats_pass=False)
        warps, stages = tile_kw.pop("num_warps"), tile_kw.pop("num_stages", 3)
        return kl._softmax_grad_kernel, dict(HAS_T=False, HAS_ENT=False, BF16_RNE=False, **tile_kw), warps, stages
    consts = dict(HAS_T=False, WITH_ENT=False, HAS_OLD=True, HAS_REF=False, HAS_SAMP=False, IS_MODE=0, KL=0,
                  HAS_BETA=False, HAS_DUAL=False, WRITE_GRAD=True, BF16_RNE=False,
                  POLICY1="evict_last" if tile.l2_hints else "", POLICY2="evict_first" if tile.l2_hints else "",
                  **tile_kw)
    return kloss._fused_loss_kernel, consts, warps, stages


def aot_compile(fn, types: dict, consts: dict, warps: int, stages: int, arch: int, div16=()):
    """Compiles jit function `fn` for sm_<arch> without a GPU: `types` the Triton types of its runtime
    arguments, `consts` its constexpr values, `div16` the arguments specialized as divisible by 16 (as the
    launcher does for 16-byte-aligned pointers and multiples of 16)."""
    sig, cx, attrs = {}, {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts:
            sig[n], cx[(i,)] = "constexpr", consts[n]
            continue
        sig[n] = types[n]
        if n in div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, cx, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))


def compile_tile(kernel: str, tile, dtype: str, arch: int, div16: bool):
    fn, consts, warps, stages = kernel_consts(kernel, tile)
    types = arg_types(fn, dtype)
    aligned = {n for n, t in types.items() if t.startswith("*") or n in DIV16_INTS} if div16 else set()
    return aot_compile(fn, types, consts, warps, stages, arch, aligned)


def resources(compiled) -> dict:
    """Registers, stack, local (spills) and shared bytes from the cubin; global access widths from the PTX."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"cuobjdump printed no resource line:\n{out}")
    ops = collections.Counter(re.sub(r"\.(L1|L2)::[a-z_0-9]+", "", op)
                              for op in re.findall(r"(?:ld|st)\.global[.a-zA-Z0-9:_]*", compiled.asm["ptx"]))
    return dict(regs=int(m.group(1)), stack=int(m.group(2)), local=int(m.group(4)),
                shared=int(m.group(3)) + compiled.metadata.shared, ops=dict(ops))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", default="4096x4,8192x16,2048x1,4096x4r,4096x4p,4096x4rp,4096x8rp,2048x2rp,8192x16hp")
    p.add_argument("--dtype", default="bf16", help="bf16, fp16 or fp32 (Triton type names)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = Hopper)")
    p.add_argument("--kernels", default="logprobs,softmax_grad,loss")
    p.add_argument("--no-div16", dest="div16", action="store_false")
    a = p.parse_args(argv)
    print(f"triton {triton.__version__}  sm_{a.arch}  {a.dtype}  divisibility 16: {a.div16}")
    print(f"{'kernel':>12} {'tile':>14} {'regs':>5} {'warps':>5} {'progs/SM':>8} {'stack':>5} {'local':>5} "
          f"{'shared':>6}  global accesses (PTX)")
    for kernel in a.kernels.split(","):
        for s in a.tiles.split(","):
            tile = parse_tile(s)
            r = resources(compile_tile(kernel, tile, a.dtype, a.arch, a.div16))
            threads = 32 * tile.num_warps
            progs = min(32, 65536 // max(1, r["regs"] * threads), 64 // tile.num_warps)
            progs = min(progs, tile.persistent) if tile.persistent and kernel == "loss" else progs
            ops = " ".join(f"{k}x{v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1]))
            print(f"{kernel:>12} {s:>14} {r['regs']:5d} {tile.num_warps:5d} {progs:8d} {r['stack']:5d} "
                  f"{r['local']:5d} {r['shared']:6d}  {ops}", flush=True)


if __name__ == "__main__":
    main()
