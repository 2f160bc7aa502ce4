"""Tile sweep for the Triton row kernels (grpo_loss forward+backward, token_logprobs forward) on a GPU,
and the device time of one group_advantages launch (CUDA-graph replays, no host work).

    python -m bench.tune_triton [--shape 16384x151936] [--dtype bf16] [--ops grpo_loss,token_logprobs]
                                [--tiles 8192x16,2048x1x4,2048x1h,...] [--reps R] [--adv 4096x16] [--out CSV]

A tile is BLOCK_V x num_warps [x num_stages] [h: the loss kernel's L2 hints] [r: per-row scalar sums]
[p: next-tile prefetch] [@K: a persistent loss grid of K programs per SM], one row per program
(kernels.logprobs.TILE); `default` is what row_config picks. Every tile's result is compared with the
default's (max |d| printed: a tile that changes the result beyond rounding order is wrong, not fast), then
all tiles are timed in interleaved rounds. Bytes are bench_loss.bytes_moved (2 N V e for grpo_loss,
N V e for token_logprobs), GB/s next to the measured copy rate. The advantages row is the device time
per launch: K launches of the raw launcher (grpo.ops.advantages._launch, which skips the argument and NaN
checks) captured in one CUDA graph, replayed, divided by K. Rows go to bench/results/tune_triton.csv.
"""
from __future__ import annotations

import argparse

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from bench.bench_loss import DTYPES, bytes_moved, make_batch, seq_shape  # noqa: E402
from grpo import ops  # noqa: E402
from grpo.ops import LossConfig  # noqa: E402

DEFAULT_TILES = ("4096x4,8192x16,2048x1,4096x8,2048x1r,2048x2r,4096x4r,4096x8r,4096x4p,4096x8p,2048x2rp,"
                 "4096x4rp,4096x8rp,8192x8rp,8192x16p,4096x4hrp,8192x16hp,8192x16hp@1,8192x16hrp@1,16384x32hrp@1,"
                 "4096x8hrp@1,4096x8hrp@2,4096x4hrp@2,4096x4hrp@4")


def parse_tile(s: str):
    """"BLOCKxWARPS[xSTAGES][h][r][p][@K]" -> a kernels.logprobs.Tile of one row per program; h turns on
    the loss kernel's L2 cache hints (first pass evict_last, second pass evict_first), r the per-row scalar
    sums, p the next-tile prefetch, @K a persistent loss grid of K programs per SM."""
    from grpo.kernels.logprobs import Tile
    s, _, per_sm = s.partition("@")
    body = s.lower().rstrip("hrp")
    flags = s.lower()[len(body):]
    v = [int(x) for x in body.split("x")]
    if len(v) not in (2, 3) or set(flags) - {"h", "r", "p"} or (per_sm and not per_sm.isdigit()):
        raise ValueError(f"tile {s!r}: expected BLOCKxWARPS[xSTAGES][h][r][p][@K]")
    return Tile(v[0], 1, v[1], v[2] if len(v) == 3 else None, l2_hints="h" in flags, row_acc="r" in flags,
                prefetch="p" in flags, persistent=int(per_sm or 0))


def op_fn(op: str, batch: dict):
    """f() -> (value, grad or None) of one call on the batch's logits."""
    b, cfg = batch, LossConfig()

    def loss():
        x = b["logits"].detach().requires_grad_()
        out = ops.grpo_loss(x, b["targets"], b["mask"], b["advantages"], old_logp=b["old_logp"], config=cfg,
                            backend="triton").loss
        out.backward()
        return out.detach(), x.grad

    def logprobs():
        return ops.token_logprobs(b["logits"], b["targets"], backend="triton"), None

    return loss if op == "grpo_loss" else logprobs


def with_tile(tile, f):
    from grpo.kernels import logprobs as kl

    def g():
        kl.TILE = tile
        try:
            return f()
        finally:
            kl.TILE = None
    return g


def sweep(a, op, sink, copy_gbs):
    N, V = a.shape
    B, T = seq_shape(N)
    batch = make_batch(B, T, V, a.dtype, a.device)
    f = op_fn(op, batch)
    base = f()
    fns, flags = {"default": f}, {}
    for s in a.tiles:
        g = with_tile(parse_tile(s), f)
        try:
            res = g()
        except Exception as e:  # noqa: BLE001 -- a tile that does not compile is reported, not fatal
            print(f"  {op} tile {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        d = max(float((x.float() - y.float()).abs().max()) for x, y in zip(res, base) if x is not None)
        flags[s] = d
        fns[s] = g
    del base
    times = common.interleaved(fns, a.device, a.reps, warmup=1)
    nbytes = bytes_moved(op, B, T, V, a.dtype)
    rows = []
    for name, ts in times.items():
        q = common.quantiles(ts)
        gbs = nbytes / q[1] / 1e9
        rows.append((q[1], name, q, gbs))
        prov = f"triton[{name}]"
        sink.add(op, prov, "triton", a.dtype, f"N={N},V={V},B={B},T={T}", "time", "ms", *(x * 1e3 for x in q))
        sink.add(op, prov, "triton", a.dtype, f"N={N},V={V},B={B},T={T}", "bandwidth", "GB/s",
                 *(nbytes / x / 1e9 for x in reversed(q)))
    print(f"\n{op} N={N} V={V} {a.dtype_name}: bytes {nbytes / 1e9:.2f} GB, copy {copy_gbs:.0f} GB/s")
    print(f"{'tile':>12} {'p20 ms':>8} {'p50 ms':>8} {'p80 ms':>8} {'GB/s':>8} {'%copy':>6}  max|d| vs default")
    for _, name, q, gbs in sorted(rows):
        ms = " ".join(f"{x * 1e3:8.3f}" for x in q)
        print(f"{name:>12} {ms} {gbs:8.0f} {100 * gbs / copy_gbs:5.1f}%"
              f"  {flags.get(name, 0.0):.1e}", flush=True)
    del batch
    common.free_memory(a.device)


def advantages_graph(a, sink):
    """Device time per launch of group_advantages (graph of K launches, replayed), per backend."""
    from grpo.ops.advantages import _launch
    from grpo.ops.variants import ADV_ESTIMATORS, ADV_SCALES
    codes = (ADV_SCALES.get("group", "scale").code, ADV_ESTIMATORS.get("grpo", "estimator").code)
    B, G = a.adv
    rewards = torch.randint(0, 3, (B,), device="cuda").float()
    K = 100
    for backend in ("triton", "cuda"):
        try:
            _launch(rewards, G, *codes, 1e-4, backend)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(K):
                    _launch(rewards, G, *codes, 1e-4, backend)
        except Exception as e:  # noqa: BLE001 -- reported, not fatal
            print(f"  advantages {backend}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        ts = common.interleaved({"g": graph.replay}, "cuda", a.reps, warmup=2)["g"]
        q = [t / K for t in common.quantiles(ts)]
        sink.add("group_advantages", f"{backend}-graph", backend, torch.float32, f"B={B},G={G},scale=group",
                 "device_time", "us", *(x * 1e6 for x in q))
        print(f"group_advantages B={B} G={G} {backend}: {q[1] * 1e6:.2f} us per launch (graph of {K})", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="16384x151936", help="NxV")
    p.add_argument("--dtype", default="bf16", help="fp32, bf16 or fp16")
    p.add_argument("--ops", default="grpo_loss,token_logprobs")
    p.add_argument("--tiles", default=DEFAULT_TILES, help="comma-separated BLOCKxWARPS[xSTAGES][h][r][p][@K]")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--adv", default="4096x16", help="BxG for the advantages graph timing ('' skips it)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu under TRITON_INTERPRET=1 (a dry run)")
    p.add_argument("--out", default=None, help="CSV (default bench/results/tune_triton.csv)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("needs a CUDA device (or --device cpu with TRITON_INTERPRET=1)")
    a.shape = tuple(int(x) for x in a.shape.lower().split("x"))
    a.dtype_name, a.dtype = a.dtype, DTYPES[a.dtype]
    a.tiles = [s for s in a.tiles.split(",") if s]
    for s in a.tiles:
        parse_tile(s)
    a.adv = tuple(int(x) for x in a.adv.lower().split("x")) if a.adv else None
    sink = common.CsvSink("tune_triton", "tune_triton", a.device, a.out)
    print(f"device: {common.device_name(a.device)}  {common.versions()}", flush=True)
    copy_gbs = common.copy_bandwidth(a.device)[1]
    for op in a.ops.split(","):
        sweep(a, op, sink, copy_gbs)
        sink.flush()
    if a.adv and a.device == "cuda":
        advantages_graph(a, sink)
    sink.flush()
    print(f"appended rows to {sink.path}")


if __name__ == "__main__":
    main()
