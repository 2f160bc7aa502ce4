"""fused_linear_grpo_loss forward+backward (hidden states and lm_head in, loss and dhidden / dW out): ours
per backend vs the naive materialized path (matmul + reference loss, autograd) vs torch.compile of it vs
Liger-Kernel's LigerFusedLinearGRPOLoss (when `liger_kernel` imports): time, FLOP/s next to the measured
matmul ceiling, and peak extra memory measured in a fresh process per provider.

    python -m bench.bench_fused_linear [--quick] [--threads N] [--device cpu|cuda] [--shapes NxHxV,...]
                                       [--dtype fp32|bf16] [--providers cpu,cpu-vocab,torch,compile,liger]
                                       [--chunk-tokens C] [--ratio-level token|sequence] [--reps R]
                                       [--warmup W] [--no-memory] [--out CSV]

Shapes (N = B sequences x T = 256 tokens): CPU (N=4096, H=512, V=32000) fp32; CUDA (N=16384, H=4096,
V=151936) bf16; --quick: CPU (1024, 256, 32000), CUDA (4096, 4096, 151936). Loss: LossConfig() (token_mean,
clip 0.2, beta 0) with old logprobs near the current ones; --ratio-level sequence: GSPO's sequence-level
ratio (clip 0.2 as above, so that no sequence's ratio clips and every row has a gradient to compute; the
shape column gets ",ratio=sequence"; Liger is left out), where the tokens schedule also recomputes the
logits (8 N H V, as the vocab schedule). Rows are appended to
bench/results/bench_fused_linear.csv (schema of bench/common.py: one row per provider and metric).

Providers: cpu / cuda / triton are our op with schedule="tokens" on that backend (the "auto" default picks
it for token-level ratios); cpu-vocab / cuda-vocab / triton-vocab the same with schedule="vocab" (the
backward recomputes the logits per vocabulary block: no (V, H) fp32 dW accumulator; its chunk is plan_chunk
without the CUDA floor, its backward tile plan_vocab_blocks(N, V, chunk)); cuda-offchip is cuda with
GRPO_ROWS_ON_CHIP=0 (on sm_90 the cuda loss holds each chunk row on chip, reading it once; this reads it twice).

FLOPs (written down, used for every provider): flops() = 6 N H V = forward logits GEMM (2 N H V) + dhidden =
dlogits W (2 N H V) + dW = dlogits^T h (2 N H V); the softmax / loss work, O(N V), is not counted. A
provider that recomputes the logits (the vocab schedule: 8 N H V; sequence-level configs; Liger's chunks do
not) does more work than it is credited with. The ceiling is the measured rate of one (N, H) x (H, V) matmul
in the same run.

Peak memory: each provider runs in a fresh process (`--memory-child`): inputs made, one warm-up step,
then one measured step with .grad starting as None. CPU: VmHWM after a reset ("5" > /proc/self/clear_refs,
glibc mmap threshold fixed at 64 KiB so freed buffers leave RSS); CUDA: torch.cuda.max_memory_allocated
after reset_peak_memory_stats. extra = peak - before - bytes of the outputs (hidden.grad + weight.grad).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from grpo import ops  # noqa: E402
from grpo.ops import LossConfig  # noqa: E402
from grpo.ops.fused_linear import fused_linear_grpo_loss_ref, plan_chunk  # noqa: E402

SEQ_LEN = 256
OURS = ("cpu", "cuda", "triton", "cpu-vocab", "cuda-vocab", "triton-vocab")
BACKEND_OF = {"cpu": "cpu", "cuda": "cuda", "triton": "triton", "cpu-vocab": "cpu", "cuda-vocab": "cuda",
              "triton-vocab": "triton", "cuda-offchip": "cuda", "torch": "torch", "compile": "inductor",
              "liger": "liger"}
FULL_SHAPES = {"cpu": [(4096, 512, 32000)], "cuda": [(16384, 4096, 151936)]}
QUICK_SHAPES = {"cpu": [(1024, 256, 32000)], "cuda": [(4096, 4096, 151936)]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_DTYPE = {"cpu": "fp32", "cuda": "bf16"}
CONFIGS = {"token": LossConfig(), "sequence": LossConfig(ratio_level="sequence")}


def flops(N: int, H: int, V: int) -> int:
    """6 N H V: logits GEMM + dhidden GEMM + dW GEMM, 2 N H V each (multiply-add = 2 FLOPs)."""
    return 6 * N * H * V


def liger_loss_cls():
    """LigerFusedLinearGRPOLoss, or None when liger_kernel is not importable."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception:  # noqa: BLE001 -- absent or broken install: the provider is skipped
        return None
    return LigerFusedLinearGRPOLoss


def make_batch(N: int, H: int, V: int, dtype, device, seed: int = 0) -> dict:
    """hidden (B, T, H) ~ N(0, 1), weight (V, H) ~ 2 N(0, 1) / sqrt(H) (logits ~ 2 N(0, 1)), completion
    lengths in [T/2, T] (mask), advantages ~ N(0, 1), old_logp = logp + 0.05 N(0, 1)."""
    B, T = (1, N) if N < SEQ_LEN else (N // SEQ_LEN, SEQ_LEN)
    kw = dict(generator=torch.Generator(device=device).manual_seed(seed), device=device)
    hidden = torch.randn(B, T, H, **kw).to(dtype)
    weight = (torch.randn(V, H, **kw) * (2 / H ** 0.5)).to(dtype)
    targets = torch.randint(0, V, (B, T), **kw)
    lengths = torch.randint(max(1, T // 2), T + 1, (B, 1), **kw)
    mask = torch.arange(T, device=device).unsqueeze(0) < lengths
    old = ops.fused_linear_logprobs(hidden, weight, targets) + 0.05 * torch.randn(B, T, **kw)
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, advantages=torch.randn(B, **kw),
                old_logp=old, B=B, T=T)


def make_fns(names, batch, chunk_tokens, device, ratio_level="token") -> dict:
    """name -> f(hidden, weight) -> loss () for the requested providers."""
    config = CONFIGS[ratio_level]
    t, m, a, old = batch["targets"], batch["mask"], batch["advantages"], batch["old_logp"]
    fns = {}

    def ours(b, s):
        return lambda h, w: ops.fused_linear_grpo_loss(h, w, t, m, a, old_logp=old, config=config,
                                                       chunk_tokens=chunk_tokens, backend=b, schedule=s).loss

    for name in names:
        if name in OURS:
            fns[name] = ours(BACKEND_OF[name], "vocab" if name.endswith("-vocab") else "tokens")
        elif name == "cuda-offchip":  # the tokens schedule with the chunk's rows read twice (GRPO_ROWS_ON_CHIP=0)
            fns[name] = common.with_env(ours("cuda", "tokens"), GRPO_ROWS_ON_CHIP="0")
        elif name == "torch":
            fns[name] = lambda h, w: fused_linear_grpo_loss_ref(h, w, t, m, a, old_logp=old, config=config).loss
        elif name == "compile":
            ref = torch.compile(fused_linear_grpo_loss_ref, dynamic=False)
            fns[name] = lambda h, w, f=ref: f(h, w, t, m, a, old_logp=old, config=config).loss
        elif name == "liger":
            cls = liger_loss_cls()
            # token_mean ("bnpo"), no KL, clip 0.2 / 0.2; compiled chunks on GPU, eager on CPU (no C++ build)
            mod = cls(beta=0.0, use_ref_model=False, loss_type="bnpo", epsilon_low=config.eps_low,
                      epsilon_high=config.eps_high, compiled=common.is_cuda(device))
            fns[name] = lambda h, w, f=mod: f(h, w, t, m.to(torch.int64), a, old_per_token_logps=old)[0]
    return fns


def step(f, batch):
    """The timed call: fresh leaves (no gradient accumulates across calls), forward, backward. Returns
    (loss, dhidden, dweight)."""
    h = batch["hidden"].detach().requires_grad_()
    w = batch["weight"].detach().requires_grad_()
    loss = f(h, w)
    loss.backward()
    return loss.detach().float(), h.grad, w.grad


def check_and_warm(fns, batch) -> tuple:
    """One call per provider (warm-up; compile compiles here), compared with the first one: max |d loss|,
    |d dhidden|, |d dweight|. A provider that raises is dropped with its error."""
    ok, errors, diffs, base = {}, {}, {}, None
    for name, f in fns.items():
        try:
            res = step(f, batch)
        except Exception as e:  # noqa: BLE001 -- recorded, not fatal
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            continue
        ok[name] = f
        if base is None:
            base = (name, res)
            continue
        diffs[name] = (base[0],) + tuple(float((x.float() - y.float()).abs().max()) for x, y in zip(res, base[1]))
        del res
    return ok, errors, diffs


def matmul_ceiling(batch, device, reps) -> tuple:
    """(p20, p50, p80) FLOP/s of one (N, H) x (H, V) matmul in the input dtype (p20 = the slow end)."""
    h2 = batch["hidden"].reshape(-1, batch["hidden"].shape[-1])
    w = batch["weight"]
    ts = common.interleaved({"mm": lambda: torch.mm(h2, w.t())}, device, reps, 1)["mm"]
    fl = 2 * h2.shape[0] * h2.shape[1] * w.shape[0]
    return tuple(fl / t for t in reversed(common.quantiles(ts)))


def measure_memory_child(a) -> dict:
    """In the child process: peak extra bytes of one forward+backward of provider `a.memory_child`."""
    N, H, V = a.shapes[0]
    batch = make_batch(N, H, V, a.dtype, a.device)
    f = make_fns([a.memory_child], batch, a.chunk_tokens, a.device, a.ratio_level)[a.memory_child]
    step(f, batch)  # warm-up (and compile)
    common.free_memory(a.device)
    out_bytes = (batch["hidden"].numel() + batch["weight"].numel()) * batch["hidden"].element_size()
    if common.is_cuda(a.device):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res = step(f, batch)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kb("VmRSS") * 1024
        res = step(f, batch)
        peak = _status_kb("VmHWM") * 1024
    del res
    return dict(extra=peak - before - out_bytes, peak=peak, before=before, out_bytes=out_bytes)


def _status_kb(field) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def peak_memory(a, name, shape) -> float:
    """Runs the memory child for one provider in a fresh process; extra bytes (NaN on failure)."""
    N, H, V = shape
    cmd = [sys.executable, "-m", "bench.bench_fused_linear", "--memory-child", name, "--shapes", f"{N}x{H}x{V}",
           "--dtype", a.dtype_name, "--device", a.device, "--threads", str(a.threads), "--ratio-level", a.ratio_level]
    if a.chunk_tokens:
        cmd += ["--chunk-tokens", str(a.chunk_tokens)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", THP_MEM_ALLOC_ENABLE="0")
    r = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        print(f"  memory child {name} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", flush=True)
        return float("nan")
    return json.loads(r.stdout.strip().splitlines()[-1])["extra"]


def run_case(a, shape, sink):
    """One shape: batch, ceiling, check + warm-up, interleaved timed rounds, memory per provider; rows."""
    N, H, V = shape
    batch = make_batch(N, H, V, a.dtype, a.device)
    chunk = plan_chunk(N, H, V, a.chunk_tokens, cuda=common.is_cuda(a.device))
    shape_s = f"N={N},H={H},V={V},B={batch['B']},T={batch['T']},chunk={chunk}"
    shape_s += ",ratio=sequence" if a.ratio_level == "sequence" else ""
    gpu = common.is_cuda(a.device)
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    ceil = matmul_ceiling(batch, a.device, max(3, a.reps // 2))
    sink.add("matmul", "torch", "torch", a.dtype, shape_s, "throughput", unit, *[c / scale for c in ceil])
    fns, errors, diffs = check_and_warm(make_fns(a.providers, batch, a.chunk_tokens, a.device, a.ratio_level), batch)
    runs = {k: (lambda f=f: step(f, batch)) for k, f in fns.items()}
    meter = common.LoadMeter()
    times = common.interleaved(runs, a.device, a.reps, max(0, a.warmup - 1)) if runs else {}
    background = meter.others()
    del runs, fns, batch
    torch._dynamo.reset()
    common.free_memory(a.device)
    mem = {k: peak_memory(a, k, shape) for k in times} if a.memory else {}
    fl, base = flops(N, H, V), next((k for k in times if k in OURS), None)
    print(f"\n{shape_s} {a.dtype_name}: matmul ceiling p50 {ceil[1] / scale:.1f} {unit}; flops 6NHV = {fl:.3e}")
    print(f"{'provider':9s} {'p20 ms':>10s} {'p50 ms':>10s} {'p80 ms':>10s} {unit:>9s} {'%mm':>6s} {'x ours':>7s} "
          f"{'extra MB':>9s}  check")
    for name, ts in times.items():
        p20, p50, p80 = common.quantiles(ts)
        thr = [fl / t / scale for t in (p80, p50, p20)]
        row = ("fused_linear_grpo_loss", name, BACKEND_OF[name], a.dtype, shape_s)
        sink.add(*row, "time", "ms", p20 * 1e3, p50 * 1e3, p80 * 1e3)
        sink.add(*row, "throughput", unit, *thr)
        sink.add(*row, "pct_of_matmul", "%", *[100 * x / (ceil[1] / scale) for x in thr])
        if name in mem:
            sink.add(*row, "peak_extra_memory", "MB", None, mem[name] / 1e6, None)
        ratio = ""
        if base is not None and name != base:
            sink.add(*row, f"time_ratio_vs_{base}", "x", *common.paired_ratios(ts, times[base]))
            ratio = f"{p50 / common.quantiles(times[base])[1]:6.2f}x"
        chk = ""
        if name in diffs:
            ref, dl, dh, dw = diffs[name]
            for metric, v in (("loss", dl), ("dhidden", dh), ("dweight", dw)):
                sink.add(*row, f"max_abs_diff_{metric}_vs_{ref}", "abs", None, v, None)
            chk = f"|d loss| {dl:.1e} |d dh| {dh:.1e} |d dW| {dw:.1e} vs {ref}"
        print(f"{name:9s} {p20 * 1e3:10.1f} {p50 * 1e3:10.1f} {p80 * 1e3:10.1f} {thr[1]:9.2f} "
              f"{100 * thr[1] / (ceil[1] / scale):5.1f}% {ratio:>7s} {mem.get(name, float('nan')) / 1e6:9.1f}  {chk}",
              flush=True)
    for name, msg in errors.items():
        sink.add("fused_linear_grpo_loss", name, BACKEND_OF[name], a.dtype, shape_s, "error", msg.replace("\n", " "),
                 None, None, None)
        print(f"{name:9s} FAILED: {msg}", flush=True)
    sink.add("fused_linear_grpo_loss", "machine", "-", a.dtype, shape_s, "background_cpu_load", "%", None,
             100 * background, None)
    if background > 0.05:
        print(f"(other processes took {100 * background:.0f}% of the CPUs during the timed rounds)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shape, 3 rounds")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--shapes", default=None, help="comma-separated NxHxV")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--providers", default=None, help="from cpu, cuda, triton (each also as <name>-vocab), "
                                                     "cuda-offchip, torch, compile, liger (default: ours in both "
                                                     "schedules, torch, compile, and liger when importable)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="override the default chunk rule")
    p.add_argument("--ratio-level", default="token", choices=list(CONFIGS), help="the loss's ratio level "
                   "(sequence: GSPO)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per provider (the first one checks)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-provider memory runs")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_fused_linear.csv)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = a.device or common.default_device()
    dev = torch.device(a.device).type
    a.dtype_name = a.dtype or DEFAULT_DTYPE[dev]
    if a.dtype_name not in DTYPES:
        p.error(f"--dtype: expected one of {', '.join(DTYPES)}, got {a.dtype_name!r}")
    a.dtype = DTYPES[a.dtype_name]
    ours = ["cpu"] if dev == "cpu" else ["cuda"] + (["triton"] if ops._backend.triton_available() else [])
    ours += [f"{name}-vocab" for name in ours]
    a.providers = (a.providers.split(",") if a.providers
                   else ours + ["torch", "compile"] + (["liger"] if liger_loss_cls() is not None else []))
    if a.ratio_level == "sequence":
        a.providers = [name for name in a.providers if name != "liger"]
    for name in a.providers:
        if name not in BACKEND_OF:
            p.error(f"--providers: unknown {name!r}; expected some of {', '.join(BACKEND_OF)}")
    try:
        a.shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",")] if a.shapes
                    else (QUICK_SHAPES if a.quick else FULL_SHAPES)[dev])
    except ValueError as e:
        p.error(f"--shapes: {e}")
    a.reps = a.reps or (3 if a.quick else 7)
    return a


def main(argv=None):
    a = parse_args(argv)
    a.threads = common.set_threads(a.threads)
    if a.memory_child:
        print(json.dumps(measure_memory_child(a)))
        return
    sink = common.CsvSink("bench_fused_linear", "fused_linear", a.device, a.out)
    print(common.busy_note(), flush=True)
    print(f"device: {common.device_name(a.device)}  threads: {a.threads}  {common.versions()}  "
          f"liger: {'yes' if liger_loss_cls() is not None else 'not importable'}  reps {a.reps}", flush=True)
    for shape in a.shapes:
        run_case(a, shape, sink)
        sink.flush()
    print(common.busy_note(), flush=True)
    print(f"appended rows to {sink.path}")


if __name__ == "__main__":
    main()
