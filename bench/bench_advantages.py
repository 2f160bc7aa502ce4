"""group_advantages: ours per backend vs the torch reference vs torch.compile of it, in microseconds per
call, for one launch over every group.

    python -m bench.bench_advantages [--threads N] [--device cpu|cuda] [--sizes 4096x16,65536x16]
                                     [--scales group,batch] [--reps R] [--calls K] [--out CSV]

A timed sample is K back-to-back calls (default 100) divided by K, so on a GPU it is the steady-state
cost of a call: the larger of the host's work (argument checks, the NaN-reward check, which reads the
rewards back, and the launch) and the kernel's. Rows (p20/p50/p80 of R samples, and GB/s of the bytes
below) are appended to bench/results/bench_advantages.csv.

Bytes moved (written down, used for every provider): the rewards read once and the advantages written
once, 8 B bytes, plus B / G zero-variance flags.
"""
from __future__ import annotations

import argparse

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from grpo import ops  # noqa: E402
from grpo.ops import group_advantages_ref  # noqa: E402

OURS = ("cpu", "cuda", "triton")
BACKEND_OF = {"cpu": "cpu", "cuda": "cuda", "triton": "triton", "torch": "torch", "compile": "inductor"}


def bytes_moved(B: int, G: int) -> int:
    """Rewards read (4 B) + advantages written (4 B) + one flag byte per group."""
    return 8 * B + B // G


def make_fns(names, rewards, G, scale):
    """provider -> zero-argument callable computing the advantages of `rewards`."""
    fns = {}
    for name in names:
        if name in OURS:
            fns[name] = lambda b=name: ops.group_advantages(rewards, G, scale=scale, backend=b)
        elif name == "torch":
            fns[name] = lambda: ops.group_advantages(rewards, G, scale=scale, backend="torch")
        elif name == "compile":
            ref = torch.compile(group_advantages_ref, dynamic=False)
            fns[name] = lambda: ref(rewards, G, scale=scale)[0]
    return fns


def run_case(a, B: int, G: int, scale: str) -> dict:
    """Checks every provider against the reference, then times interleaved rounds of K calls each."""
    gen = torch.Generator(device=a.device).manual_seed(0)
    rewards = torch.randint(0, 3, (B,), generator=gen, device=a.device).float()  # ties: zero-variance groups
    ref = group_advantages_ref(rewards.double(), G, scale=scale)[0]
    fns = make_fns(a.providers, rewards, G, scale)
    diffs = {k: float((f().double() - ref).abs().max()) for k, f in fns.items()}  # also the first warm-up
    loops = {k: (lambda f=f: [f() for _ in range(a.calls)]) for k, f in fns.items()}
    times = common.interleaved(loops, a.device, a.reps, warmup=2)
    return dict(B=B, G=G, scale=scale, diffs=diffs, times={k: [t / a.calls for t in v] for k, v in times.items()})


def record(sink, r: dict):
    """Rows: time (us), bandwidth (GB/s of bytes_moved), max |diff| vs the fp64 reference."""
    shape = f"B={r['B']},G={r['G']},scale={r['scale']}"
    nbytes = bytes_moved(r["B"], r["G"])
    for name, ts in r["times"].items():
        q = common.quantiles(ts)
        row = ("group_advantages", name, BACKEND_OF[name], "float32", shape)
        sink.add(*row, "time", "us", *(x * 1e6 for x in q))
        sink.add(*row, "bandwidth", "GB/s", *(nbytes / x / 1e9 for x in reversed(q)))
        sink.add(*row, "max_abs_diff_vs_fp64", "abs", None, r["diffs"][name], None)


def parse_args(argv=None):
    """Command line -> namespace with parsed lists."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--sizes", default="4096x16,65536x16", help="comma-separated BxG")
    p.add_argument("--scales", default="group,batch", help="comma-separated: group, batch, none")
    p.add_argument("--providers", default=None, help="from cpu, cuda, triton, torch, compile")
    p.add_argument("--reps", type=int, default=15, help="timed samples per provider")
    p.add_argument("--calls", type=int, default=100, help="back-to-back calls per sample")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_advantages.csv)")
    a = p.parse_args(argv)
    a.device = a.device or common.default_device()
    if a.providers is None:
        ours = ["cuda"] + (["triton"] if ops._backend.triton_available() else []) if common.is_cuda(a.device) else ["cpu"]
        a.providers = ours + ["torch", "compile"]
    else:
        a.providers = a.providers.split(",")
    a.sizes = [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
    a.scales = a.scales.split(",")
    return a


def main(argv=None):
    """Every (size, scale) case, a table, rows appended after each case."""
    a = parse_args(argv)
    threads = common.set_threads(a.threads)
    sink = common.CsvSink("bench_advantages", "kernels", a.device, a.out)
    print(f"device: {common.device_name(a.device)}  threads: {threads}  {common.versions()}  "
          f"{a.calls} calls per sample, {a.reps} samples")
    print(f"{'shape':28s} {'provider':9s} {'p20 us':>9s} {'p50 us':>9s} {'p80 us':>9s} {'x ours':>7s}  max|d| vs fp64")
    for B, G in a.sizes:
        for scale in a.scales:
            r = run_case(a, B, G, scale)
            record(sink, r)
            sink.flush()
            base = common.quantiles(r["times"][a.providers[0]])[1]
            for name, ts in r["times"].items():
                q = [x * 1e6 for x in common.quantiles(ts)]
                print(f"{f'B={B},G={G},{scale}':28s} {name:9s} {q[0]:9.1f} {q[1]:9.1f} {q[2]:9.1f} "
                      f"{q[1] / 1e6 / base:6.2f}x  {r['diffs'][name]:.1e}", flush=True)
    print(common.busy_note())


if __name__ == "__main__":
    main()
