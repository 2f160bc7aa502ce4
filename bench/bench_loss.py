"""grpo_loss forward+backward and token_logprobs forward: our kernels vs the torch reference vs
torch.compile of the reference, in ms, effective GB/s and % of the measured copy rate.

    python -m bench.bench_loss [--quick] [--threads N] [--shapes 4096x32000,1024x151936] [--dtypes fp32,bf16]
                               [--providers cpu,torch,compile] [--ops grpo_loss,token_logprobs] [--reps R]
                               [--warmup W] [--out CSV]

Providers: `cpu` / `cuda` / `triton` = grpo.ops with backend=...; `cuda-offchip` = backend="cuda" with
GRPO_ROWS_ON_CHIP=0, grpo_loss only (on sm_90 the cuda loss holds each row on chip and reads the logits once
for loss and dlogits; this is the path without it: a forward, then a backward that reads them again);
`cuda-r4` / `cuda-r8` / `cuda-r16` = the rows-on-chip kernel with that many 16-byte vectors a thread
(GRPO_ROWS_ON_CHIP=4/8/16, clusters of up to 16 blocks), `cuda-p` / `cuda-r8p` / `cuda-r16p` the default plan
/ those slices on a persistent grid that prefetches each cluster's next row (GRPO_ROWS_ON_CHIP=1p/8p/16p); for
sweeps, not in the defaults; `cpu-inplace` / `cuda-inplace` / `triton-inplace` = grpo_loss(..., inplace=True)
on that backend (grpo_loss only; the gradient is written over its own copy of the logits, no [N, V]
allocation); `torch` = grpo.ops with backend="torch" (the eager reference); `compile` =
torch.compile(grpo.ops.grpo_loss_ref / token_logprobs_ref); `liger` = Liger-Kernel's Triton GRPO loss
(liger_kernel.transformers.grpo_loss.triton_grpo_loss, grpo_loss only, CUDA only, when liger_kernel is
installed; it takes (B, T + 1, V) logits, so it gets its own padded copy made outside the timing, and runs
with inplace=False like every other provider); `trl` = TRL's trl.trainer.utils.selective_log_softmax
(token_logprobs) and selective_log_softmax + entropy_from_logits (token_logprobs_entropy), when trl is
installed (TRL has no standalone GRPO loss function). The op token_logprobs_entropy is token_logprobs(...,
with_entropy=True): logp and entropy stacked into one (2, B, T) float32 tensor so that every provider is
checked the same way. On CUDA the default providers are cuda, cuda-offchip, triton (when grpo.kernels is
available), liger (when installed), trl (when installed), torch, compile; on CPU cpu, trl (when installed),
torch, compile. Shapes are N x V with N = B sequences x T = 256 tokens. Each case draws one batch, checks
every provider against the first (that call also warms it up and compiles), then times interleaved rounds and
reports p20/p50/p80. Rows are appended to bench/results/bench_loss.csv.
"""
from __future__ import annotations

import argparse

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from grpo import ops  # noqa: E402
from grpo.ops import LossConfig, grpo_loss_ref, token_logprobs_ref  # noqa: E402

OPS = ("grpo_loss", "token_logprobs", "token_logprobs_entropy")
DEFAULT_OPS = ("grpo_loss", "token_logprobs")  # what a plain run times (the entropy op on request)
OURS = ("cpu", "cuda", "triton")  # grpo.ops backends; the first one present is the ratios' base
BACKEND_OF = {"cpu": "cpu", "cuda": "cuda", "triton": "triton", "torch": "torch", "compile": "inductor",
              "liger": "liger-triton", "trl": "trl",
              "cpu-inplace": "cpu", "cuda-inplace": "cuda", "triton-inplace": "triton"}
# backend="cuda" with GRPO_ROWS_ON_CHIP set (grpo/ops/_backend.py rows_on_chip_knob): off, a fixed slice, and
# with "p" the persistent grid that prefetches each cluster's next row
ROWS_ON_CHIP = {"cuda-offchip": "0", "cuda-r4": "4", "cuda-r8": "8", "cuda-r16": "16", "cuda-p": "1p",
                "cuda-r8p": "8p", "cuda-r16p": "16p"}
BACKEND_OF.update({name: "cuda" for name in ROWS_ON_CHIP})
FULL_SHAPES = {"cpu": [(4096, 32000), (1024, 151936)], "cuda": [(16384, 151936), (4096, 32000)]}
QUICK_SHAPES = {"cpu": [(512, 32000)], "cuda": [(4096, 32000)]}
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
SEQ_LEN = 256  # T: tokens per sequence, N = B * T


def bytes_moved(op: str, B: int, T: int, V: int, dtype) -> int:
    """Written-down bytes: the least memory traffic the op needs, used for every provider (effective
    bandwidth), so a provider that moves more shows it as a lower GB/s.

    grpo_loss fwd+bwd: the logits are read once and dlogits written once, 2 N V e. Ours does exactly that
    when `loss.backward()` follows the forward (the forward writes dlogits for an upstream gradient of 1
    while each row is in cache: its second read of the row is a cache hit on rows of up to a few hundred
    KB per CPU core or GPU SM slot), and 3 N V e for a scaled loss (the backward then re-reads the logits).
    O(N) terms: targets int64 (8 N), mask bool (N), old_logp fp32 (4 N), advantages fp32 (4 B); the loss and
    metrics are O(1).
    token_logprobs fwd: one read of the logits, N V e, plus targets int64 read (8 N) and logp fp32 written
    (4 N). The torch reference moves several times more (it materializes [N, V] temporaries); that is
    exactly what the effective-bandwidth comparison shows.
    """
    N, e = B * T, torch.finfo(dtype).bits // 8
    if op == "grpo_loss":
        return 2 * N * V * e + N * (8 + 1 + 4) + 4 * B
    if op == "token_logprobs_entropy":  # + entropy fp32 written (4 N)
        return N * V * e + N * (8 + 4 + 4)
    return N * V * e + N * (8 + 4)


def seq_shape(N: int) -> tuple:
    """(B, T): B = N // 256 sequences of T = 256 tokens (one sequence of N tokens when N < 256)."""
    if N < SEQ_LEN:
        return 1, N
    if N % SEQ_LEN:
        raise ValueError(f"--shapes: N = {N} must be < {SEQ_LEN} or a multiple of {SEQ_LEN}")
    return N // SEQ_LEN, SEQ_LEN


def make_batch(B: int, T: int, V: int, dtype, device, seed: int = 0) -> dict:
    """Random inputs on `device`: logits ~ 2 N(0, 1) in `dtype`; completion lengths in [T/2, T] (mask);
    old_logp = logp + 0.05 N(0, 1), so ratios sit near 1 and some tokens clip, as in a real step."""
    kw = dict(generator=torch.Generator(device=device).manual_seed(seed), device=device)
    logits = (torch.randn(B, T, V, **kw) * 2).to(dtype)
    targets = torch.randint(0, V, (B, T), **kw)
    lengths = torch.randint(max(1, T // 2), T + 1, (B, 1), **kw)
    mask = torch.arange(T, device=device).unsqueeze(0) < lengths
    adv = torch.randn(B, **kw)
    with torch.no_grad():
        logp = ops.token_logprobs(logits, targets, backend="torch")
    old = logp + 0.05 * torch.randn(B, T, **kw)
    return dict(logits=logits, targets=targets, mask=mask, advantages=adv, old_logp=old)


def liger_grpo_loss():
    """Liger-Kernel's Triton GRPO loss function, or None when liger_kernel is not installed."""
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception:  # noqa: BLE001 -- not installed, or an install that does not import here
        return None
    return triton_grpo_loss


def trl_logprob_fns():
    """(selective_log_softmax, entropy_from_logits) from trl.trainer.utils, or None when TRL is absent."""
    try:
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    except Exception:  # noqa: BLE001 -- not installed, or an install that does not import here
        return None
    return selective_log_softmax, entropy_from_logits


class LigerLoss:
    """f(logits) for Liger's triton_grpo_loss with our default LossConfig (token_mean = Liger's "bnpo":
    sum(mask * loss) / sum(mask), eps 0.2 / 0.2, beta 0, T = 1). Liger drops the last position of its
    (B, T + 1, V) logits, so it reads a padded copy made once here; each call makes that copy a fresh leaf
    (the `x` passed in is unused) and keeps it in `leaf`, whose gradient evaluate() compares."""

    def __init__(self, fn, batch: dict):
        import inspect
        lg = batch["logits"]
        self.fn, self.leaf = fn, None
        self.padded = torch.cat([lg, lg.new_zeros(lg.shape[0], 1, lg.shape[2])], dim=1)
        self.args = (batch["old_logp"], None, batch["targets"], batch["advantages"], batch["mask"].to(torch.int32))
        self.mask = batch["mask"].to(torch.float32)
        self.reduces = "reduce" in inspect.signature(fn).parameters  # liger >= 0.6.x: loss_type / reduce

    def __call__(self, x):
        self.leaf = self.padded.detach().requires_grad_(x.requires_grad)
        kw = dict(temperature=1.0, beta=0.0, eps_low=0.2, eps_high=0.2, inplace=False)
        if self.reduces:
            return self.fn(self.leaf, *self.args, loss_type="bnpo", reduce=True, **kw)[0]
        per_token = self.fn(self.leaf, *self.args, **kw)[0]
        return (per_token * self.mask).sum() / self.mask.sum().clamp(min=1.0)


class InplaceLoss:
    """f(logits) for grpo_loss(..., inplace=True) on one of our backends (grpo_loss only): the gradient is
    written over the logits, so it runs on its own copy of them (made here, outside the timing) and its
    backward is torch.autograd.grad, as when the logits come from the lm_head and their gradient flows on
    to the matmul's backward (a leaf's AccumulateGrad would copy a gradient that autograd still holds).
    After its first call the copy holds a gradient, which the next calls read as logits: the same rows and
    masks, the same work. `grad` keeps the last gradient for evaluate()."""

    def __init__(self, backend: str, batch: dict, config: LossConfig):
        self.backend, self.batch, self.config, self.grad = backend, batch, config, None
        self.buf = batch["logits"].clone()

    def __call__(self, x):
        b, leaf = self.batch, self.buf.detach().requires_grad_(x.requires_grad)
        loss = ops.grpo_loss(leaf, b["targets"], b["mask"], b["advantages"], old_logp=b["old_logp"],
                             config=self.config, backend=self.backend, inplace=True).loss
        return _GradOf(loss, leaf, self)


class _GradOf:
    """A loss whose .backward() is torch.autograd.grad into the owner's `grad` (see InplaceLoss)."""

    def __init__(self, loss, leaf, owner):
        self.loss, self.leaf, self.owner = loss, leaf, owner

    def backward(self):
        (self.owner.grad,) = torch.autograd.grad(self.loss, self.leaf)

    def detach(self):
        return self.loss.detach()


def make_fns(op: str, names: list, batch: dict) -> dict:
    """name -> f(logits) for the requested providers: the loss tensor (grpo_loss) or logp (token_logprobs).
    `compile` wraps the reference function itself (dynamic=False, one graph per shape and dtype)."""
    cfg = LossConfig()
    t, m, a, old = batch["targets"], batch["mask"], batch["advantages"], batch["old_logp"]
    fns = {}
    for name in names:
        if name in ROWS_ON_CHIP and op != "grpo_loss":  # the rows-on-chip kernel is the loss's
            continue
        if name.endswith("-inplace"):
            if op == "grpo_loss":  # a gradient written over the logits: the loss only
                fns[name] = InplaceLoss(BACKEND_OF[name], batch, cfg)
            continue
        if name == "liger":
            if op == "grpo_loss":  # Liger has no selective-logprob op with this API: grpo_loss only
                fns[name] = LigerLoss(liger_grpo_loss(), batch)
            continue
        if name == "trl":
            sls, efl = trl_logprob_fns()
            if op == "token_logprobs":
                fns[name] = lambda x: sls(x, t)
            elif op == "token_logprobs_entropy":
                fns[name] = lambda x: torch.stack((sls(x, t).float(), efl(x).float()))
            continue
        if op == "token_logprobs_entropy":
            if name == "compile":
                ref = torch.compile(token_logprobs_ref, dynamic=False)
                fns[name] = lambda x, f=ref: torch.stack(f(x, t, with_entropy=True))
            else:
                fns[name] = lambda x, b=BACKEND_OF[name]: torch.stack(ops.token_logprobs(x, t, with_entropy=True,
                                                                                         backend=b))
            continue
        if op == "grpo_loss":
            if name == "compile":
                ref = torch.compile(grpo_loss_ref, dynamic=False)
                fns[name] = lambda x, f=ref: f(x, t, m, a, old_logp=old, config=cfg).loss
            else:
                fns[name] = lambda x, b=BACKEND_OF[name]: ops.grpo_loss(x, t, m, a, old_logp=old, config=cfg,
                                                                         backend=b).loss
                if name in ROWS_ON_CHIP:
                    fns[name] = common.with_env(fns[name], GRPO_ROWS_ON_CHIP=ROWS_ON_CHIP[name])
        elif name == "compile":
            ref = torch.compile(token_logprobs_ref, dynamic=False)
            fns[name] = lambda x, f=ref: f(x, t)
        else:
            fns[name] = lambda x, b=BACKEND_OF[name]: ops.token_logprobs(x, t, backend=b)
    return fns


def timed(op: str, f, logits):
    """The call that is timed. grpo_loss: a fresh leaf (so no gradient accumulates across calls), forward,
    backward; the gradient is freed on return. token_logprobs: forward under no_grad."""
    if op == "grpo_loss":
        def run():
            x = logits.detach().requires_grad_()
            f(x).backward()
    else:
        def run():
            with torch.no_grad():
                f(logits)
    return run


def evaluate(op: str, f, logits) -> tuple:
    """One untimed call: (value, grad or None) as float32 tensors, for the cross-provider check."""
    if op == "grpo_loss":
        x = logits.detach().requires_grad_()
        loss = f(x)
        loss.backward()
        if isinstance(f, LigerLoss):  # its own padded leaf: the gradient of our T positions
            return loss.detach().float(), f.leaf.grad[:, :-1]
        if isinstance(f, InplaceLoss):
            return loss.detach().float(), f.grad
        return loss.detach().float(), x.grad
    with torch.no_grad():
        return f(logits).float(), None


def max_abs_diff(a, b, rows: int = 256) -> float:
    """max |a - b| over [N, V] tensors in float32, a few rows at a time (no full-size temporaries)."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    out = 0.0
    for i in range(0, a2.shape[0], rows):
        d = (a2[i:i + rows].float() - b2[i:i + rows].float()).abs().max()
        out = max(out, float(d))
    return out


def check_and_warm(op: str, fns: dict, logits) -> tuple:
    """Calls each provider once (warm-up; torch.compile compiles here) and compares its output with the
    first provider's: max |d value| and max |d grad| (keeping at most two gradients alive). A provider
    that raises is dropped and its error recorded. Returns (working fns, errors, diffs)."""
    ok, errors, diffs, base = {}, {}, {}, None
    for name, f in fns.items():
        try:
            val, grad = evaluate(op, f, logits)
        except Exception as e:  # noqa: BLE001 -- a failing provider (e.g. compile) is recorded, not fatal
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            continue
        ok[name] = f
        if base is None:
            base = (name, val, grad)
            continue
        dv = float((val - base[1]).abs().max())
        dg = max_abs_diff(grad, base[2]) if grad is not None else float("nan")
        diffs[name] = (base[0], dv, dg)
        del val, grad
    return ok, errors, diffs


def run_case(op: str, B: int, T: int, V: int, dtype, device, names: list, reps: int, warmup: int) -> dict:
    """One (op, shape, dtype): batch, check + warm-up, interleaved timed rounds. Returns a result dict."""
    batch = make_batch(B, T, V, dtype, device)
    logits = batch["logits"]
    fns, errors, diffs = check_and_warm(op, make_fns(op, names, batch), logits)
    common.sync(device)
    runs = {k: timed(op, f, logits) for k, f in fns.items()}
    meter = common.LoadMeter()  # other processes' CPU share during the timed rounds (not the compile)
    times = common.interleaved(runs, device, reps, max(0, warmup - 1)) if runs else {}
    del runs, fns, batch, logits
    torch._dynamo.reset()  # drop the compiled graphs (and their buffers) of this case
    common.free_memory(device)
    return dict(op=op, B=B, T=T, V=V, dtype=dtype, times=times, errors=errors, diffs=diffs,
                nbytes=bytes_moved(op, B, T, V, dtype), background=meter.others())


def run_quietest(a, op: str, B: int, T: int, V: int, dtype) -> dict:
    """run_case, repeated up to `a.retries` more times while other processes took more than 10% of the
    CPUs during its timed rounds (a shared machine); keeps the attempt with the least background load."""
    best = None
    for attempt in range(1 + a.retries):
        r = run_case(op, B, T, V, dtype, a.device, a.providers, a.reps, a.warmup)
        if best is None or r["background"] < best["background"]:
            best = r
        if r["background"] <= 0.10:
            break
        if attempt < a.retries:
            print(f"{'':15s} (busy machine: {100 * r['background']:.0f}% background load; retrying "
                  f"{op} {shape_str(r)} {common.dtype_name(dtype)})", flush=True)
            common.wait_quiet(max(a.wait_quiet, 30.0))
    return best


def shape_str(r: dict) -> str:
    """The `shape` column: N,V,B,T of a case."""
    return f"N={r['B'] * r['T']},V={r['V']},B={r['B']},T={r['T']}"


def record(sink, r: dict, ceiling: float):
    """CSV rows of one case: per provider time (ms), bandwidth (GB/s), pct_of_copy (%), the per-round
    time ratio to our first backend (x), and an `error` row for a provider that failed (e.g. compile)."""
    op, dt, shape, times = r["op"], r["dtype"], shape_str(r), r["times"]
    base = next((k for k in times if k in OURS), None)
    for name, ts in times.items():
        p20, p50, p80 = common.quantiles(ts)
        bw = [r["nbytes"] / t / 1e9 for t in (p80, p50, p20)]
        row = (op, name, BACKEND_OF[name], dt, shape)
        sink.add(*row, "time", "ms", p20 * 1e3, p50 * 1e3, p80 * 1e3)
        sink.add(*row, "bandwidth", "GB/s", *bw)
        sink.add(*row, "pct_of_copy", "%", *[100 * b / ceiling for b in bw])
        if base is not None and name != base:
            sink.add(*row, f"time_ratio_vs_{base}", "x", *common.paired_ratios(ts, times[base]))
        if name in r["diffs"]:
            ref, dv, dg = r["diffs"][name]
            sink.add(*row, f"max_abs_diff_value_vs_{ref}", "abs", None, dv, None)
            if dg == dg:  # not NaN: the op has a gradient
                sink.add(*row, f"max_abs_diff_grad_vs_{ref}", "abs", None, dg, None)
    for name, msg in r["errors"].items():
        sink.add(op, name, BACKEND_OF[name], dt, shape, "error", msg.replace("\n", " "), None, None, None)
    sink.add(op, "machine", "-", dt, shape, "background_cpu_load", "%", None, 100 * r["background"], None)


def print_case(r: dict, ceiling: float):
    """Table lines of one case: p20/p50/p80 ms, GB/s and % of copy at the median, time / ours."""
    times = r["times"]
    base = next((k for k in times if k in OURS), None)
    for name, ts in times.items():
        p20, p50, p80 = common.quantiles(ts)
        gbs = r["nbytes"] / p50 / 1e9
        ratio = f"{p50 / common.quantiles(times[base])[1]:7.2f}x" if base else ""
        diff = r["diffs"].get(name)
        chk = f"  max|d value| {diff[1]:.1e}" if diff else ""
        chk += f" |d grad| {diff[2]:.1e}" if diff and diff[2] == diff[2] else ""
        chk += f" vs {diff[0]}" if diff else ""
        print(f"{r['op']:15s} {shape_str(r):28s} {common.dtype_name(r['dtype']):9s} {name:8s} "
              f"{p20 * 1e3:9.2f} {p50 * 1e3:9.2f} {p80 * 1e3:9.2f} {gbs:8.2f} {100 * gbs / ceiling:7.1f}% "
              f"{ratio}{chk}", flush=True)
    for name, msg in r["errors"].items():
        print(f"{r['op']:15s} {shape_str(r):28s} {common.dtype_name(r['dtype']):9s} {name:8s} FAILED: {msg}",
              flush=True)
    if r["background"] > 0.05:
        print(f"{'':15s} (other processes took {100 * r['background']:.0f}% of the CPUs during this case)")


def print_ratios(results: list):
    """Speed-ups of our backend per case: p50(provider) / p50(ours), and in brackets the median of the
    per-round ratios (each round runs every provider once, back to back)."""
    print("\nratios: provider time / our time (p50/p50 [median of per-round ratios])")
    for r in results:
        times = r["times"]
        base = next((k for k in times if k in OURS), None)
        if base is None:
            continue
        b50 = common.quantiles(times[base])[1]
        parts = [f"{k}/{base} = {common.quantiles(ts)[1] / b50:5.2f}x "
                 f"[{common.paired_ratios(ts, times[base])[1]:5.2f}x]" for k, ts in times.items() if k != base]
        parts += [f"{k}/{base} = failed" for k in r["errors"]]
        print(f"  {r['op']:15s} {shape_str(r):28s} {common.dtype_name(r['dtype']):9s} " + "   ".join(parts))


def parse_args(argv=None):
    """Command line -> namespace with parsed lists: providers, ops, dtypes, shapes as (B, T, V)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (N=512, V=32000 on CPU), 5 rounds (~1 min)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--shapes", default=None, help="comma-separated NxV, e.g. 4096x32000,1024x151936")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--providers", default=None,
                   help="comma-separated from cpu, cuda, triton, cpu-inplace, cuda-inplace, triton-inplace, "
                        + ", ".join(ROWS_ON_CHIP) + ", "
                        "liger, trl, torch, compile (default: ours, the installed peers, torch, compile)")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS), help="comma-separated from " + ", ".join(OPS))
    p.add_argument("--reps", type=int, default=None, help="timed rounds per provider (default 15, quick 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per provider (the first one checks)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--retries", type=int, default=2,
                   help="re-run a case up to this many times when other processes took > 10%% of the CPUs")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_loss.csv)")
    a = p.parse_args(argv)
    a.device = a.device or common.default_device()
    dev = torch.device(a.device).type
    ours = ["cpu"] if dev == "cpu" else ["cuda", "cuda-offchip"] + (["triton"] if ops._backend.triton_available()
                                                                      else [])
    ours += [f"{ours[-1]}-inplace"]  # the default backend with inplace=True (grpo_loss only)
    peers = ["liger"] if dev == "cuda" and liger_grpo_loss() is not None else []
    peers += ["trl"] if trl_logprob_fns() is not None else []
    a.providers = a.providers.split(",") if a.providers else ours + peers + ["torch", "compile"]
    for name in a.providers:
        if name not in BACKEND_OF:
            p.error(f"--providers: unknown {name!r}; expected some of {', '.join(BACKEND_OF)}")
    if "liger" in a.providers and (dev != "cuda" or liger_grpo_loss() is None):
        p.error("--providers: liger needs a CUDA device and the liger_kernel package (its GRPO loss is Triton)")
    if "trl" in a.providers and trl_logprob_fns() is None:
        p.error("--providers: trl needs the trl package (pip install trl torch==<this torch>)")
    a.ops = a.ops.split(",")
    if any(o not in OPS for o in a.ops):
        p.error(f"--ops: expected some of {', '.join(OPS)}, got {a.ops}")
    try:
        a.dtypes = [DTYPES[d] for d in a.dtypes.split(",")]
        a.shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",")] if a.shapes
                    else (QUICK_SHAPES if a.quick else FULL_SHAPES)[dev])
        a.shapes = [(*seq_shape(N), V) for N, V in a.shapes]
    except (KeyError, ValueError) as e:
        p.error(f"--dtypes / --shapes: {e}")
    a.reps = a.reps or (5 if a.quick else 15)
    return a


def main(argv=None):
    """Copy ceiling, every (op, shape, dtype) case, tables, ratios; rows appended after each case."""
    a = parse_args(argv)
    threads = common.set_threads(a.threads)  # before any work, the copy ceiling included
    sink = common.CsvSink("bench_loss", "kernels", a.device, a.out)
    if a.wait_quiet > 0:
        common.wait_quiet(a.wait_quiet)
    print(common.busy_note(), flush=True)
    ceiling = common.copy_bandwidth(a.device)
    print(f"device: {common.device_name(a.device)}  threads: {threads}  {common.versions()}  "
          f"rev {common.git_rev()}\ncopy ceiling (dst.copy_(src), 512 MiB, read+write): p50 {ceiling[1]:.2f} GB/s "
          f"(p20-p80 {ceiling[0]:.2f}-{ceiling[2]:.2f})  reps {a.reps}, warm-up {a.warmup}", flush=True)
    sink.add("memcpy", "torch", "torch", "float32", "512MiB,start", "bandwidth", "GB/s", *ceiling)
    print(f"\n{'op':15s} {'shape':28s} {'dtype':9s} {'provider':8s} {'p20 ms':>9s} {'p50 ms':>9s} {'p80 ms':>9s} "
          f"{'GB/s':>8s} {'%copy':>8s} {'x ours':>8s}")
    results = []
    for op in a.ops:
        for B, T, V in a.shapes:
            for dtype in a.dtypes:
                r = run_quietest(a, op, B, T, V, dtype)
                record(sink, r, ceiling[1])
                sink.flush()
                print_case(r, ceiling[1])
                results.append(r)
    print_ratios(results)
    end = common.copy_bandwidth(a.device)
    sink.add("memcpy", "torch", "torch", "float32", "512MiB,end", "bandwidth", "GB/s", *end)
    print(f"\ncopy ceiling at the end: p50 {end[1]:.2f} GB/s (start {ceiling[1]:.2f}); % of copy uses the start")
    print(common.busy_note(), flush=True)
    n = sink.flush()
    print(f"appended rows to {sink.path} (last flush {n})")


if __name__ == "__main__":
    main()
