"""grpo_loss forward+backward and token_logprobs: our kernels vs the torch reference vs torch.compile of it
(vs Liger's Triton GRPO loss when installed, on GPU), in ms, GB/s and % of the measured copy rate.

    python -m bench.bench_loss [--quick] [--threads N] [--dtypes float32,bfloat16] [--rounds 5]

Bytes moved (written down; the same count is used for every provider, i.e. effective bandwidth):
  grpo_loss fwd+bwd: 3 N V e   (forward reads the logits once; backward reads them and writes dlogits)
  token_logprobs:      N V e   (one read)
O(N) per-token terms (targets, logprobs, mask) are left out: they are < 0.1% at V >= 32000.
"""
from __future__ import annotations

import argparse
import gc

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from grpo import ops  # noqa: E402
from grpo.ops import LossConfig, grpo_loss_ref, token_logprobs_ref  # noqa: E402

FULL_SHAPES = [(4096, 32000), (1024, 151936)]
QUICK_SHAPES = [(512, 32000)]
GPU_SHAPES = [(16384, 151936), (4096, 32000)]
T = 256  # tokens per sequence: N = B * T


def bytes_moved(op, N, V, dtype):
    e = torch.finfo(dtype).bits // 8
    return (3 if op == "grpo_loss" else 1) * N * V * e


def make_batch(N, V, dtype, device):
    B = max(1, N // T)
    Tn = N // B
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, Tn, V, generator=g) * 2).to(dtype).to(device)
    targets = torch.randint(0, V, (B, Tn), generator=g).to(device)
    mask = torch.ones(B, Tn, dtype=torch.bool, device=device)
    adv = torch.randn(B, generator=g).to(device)
    old = (torch.randn(B, Tn, generator=g) * 0.1 - 10).to(device)
    return logits, targets, mask, adv, old


def loss_providers(batch, backends, with_compile):
    logits, targets, mask, adv, old = batch
    cfg = LossConfig()

    def fwd_bwd(fn):
        def run():
            x = logits.detach().requires_grad_()
            fn(x).backward()
        return run

    provs = {f"grpo.{b}": fwd_bwd(lambda x, b=b: ops.grpo_loss(x, targets, mask, adv, old_logp=old, config=cfg,
                                                                 backend=b).loss) for b in backends}
    provs["torch"] = fwd_bwd(lambda x: grpo_loss_ref(x, targets, mask, adv, old_logp=old, config=cfg).loss)
    if with_compile:
        compiled = torch.compile(grpo_loss_ref)
        provs["torch.compile"] = fwd_bwd(lambda x: compiled(x, targets, mask, adv, old_logp=old, config=cfg).loss)
    liger = _liger_loss(batch)
    if liger is not None:
        provs["liger"] = fwd_bwd(liger)
    return provs


def _liger_loss(batch):
    """Liger's Triton GRPO loss (GPU only) when liger-kernel is installed, else None."""
    logits = batch[0]
    if not logits.is_cuda:
        return None
    try:
        from liger_kernel.chunked_loss.grpo_loss import triton_grpo_loss  # noqa: F401
    except ImportError:
        try:
            from liger_kernel.transformers.grpo_loss import triton_grpo_loss  # noqa: F401
        except ImportError:
            return None
    _, targets, mask, adv, old = batch
    # Liger's kernel expects logits with one extra position (it drops the last), as TRL's model output.
    return lambda x: triton_grpo_loss(torch.nn.functional.pad(x, (0, 0, 0, 1)), old, None, targets, mask.int(),
                                      advantages=adv, temperature=1.0, beta=0.0, eps_low=0.2, eps_high=0.2)[0]


def logprob_providers(batch, backends, with_compile):
    logits, targets = batch[0], batch[1]
    provs = {f"grpo.{b}": (lambda b=b: ops.token_logprobs(logits, targets, backend=b)) for b in backends}
    provs["torch"] = lambda: token_logprobs_ref(logits, targets)
    if with_compile:
        compiled = torch.compile(token_logprobs_ref)
        provs["torch.compile"] = lambda: compiled(logits, targets)
    return provs


def run_case(sink, op, N, V, dtype, device, backends, rounds, with_compile, ceiling):
    batch = make_batch(N, V, dtype, device)
    make = loss_providers if op == "grpo_loss" else logprob_providers
    grad = torch.enable_grad() if op == "grpo_loss" else torch.no_grad()
    with grad:
        provs = make(batch, backends, with_compile)
        for name in [k for k in provs if k == "torch.compile"]:
            try:  # compile outside the timed rounds; drop the provider if it does not compile
                provs[name]()
            except Exception as e:  # noqa: BLE001
                print(f"  {name} failed to compile ({type(e).__name__}: {e}); skipped")
                provs.pop(name)
        q = common.interleaved(provs, device, rounds)
    nbytes = bytes_moved(op, N, V, dtype)
    shape = f"N={N},V={V}"
    rows = {}
    for name, (p20, p50, p80) in q.items():
        backend = name.split(".", 1)[1] if name.startswith("grpo.") else name
        sink.add(op, name, backend, dtype, shape, "time", "ms", p20 * 1e3, p50 * 1e3, p80 * 1e3)
        bw = [nbytes / t / 1e9 for t in (p80, p50, p20)]
        sink.add(op, name, backend, dtype, shape, "bandwidth", "GB/s", *bw)
        sink.add(op, name, backend, dtype, shape, "pct_of_copy", "%", *[100 * b / ceiling for b in bw])
        rows[name] = (p50 * 1e3, bw[1], 100 * bw[1] / ceiling)
    del batch, provs
    gc.collect()
    return rows


def print_table(op, shape, dtype, rows):
    ours = [k for k in rows if k.startswith("grpo.")]
    base = rows[ours[0]][0] if ours else None
    for name, (ms, gbs, pct) in rows.items():
        ratio = f"{ms / base:6.2f}x" if base else ""
        print(f"{op:15s} {shape:18s} {str(dtype)[6:]:9s} {name:14s} {ms:10.2f} ms {gbs:8.2f} GB/s {pct:6.1f}% "
              f"{ratio} of {ours[0] if ours else ''}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, 3 rounds, no torch.compile (~1 min)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--ops", default="grpo_loss,token_logprobs")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per provider (default 5, quick 3)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--out", default=None, help="CSV path (default bench/results/bench_loss.csv)")
    a = p.parse_args(argv)
    threads = common.set_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = ["cpu"] if device == "cpu" else ["cuda"] + (["triton"] if ops._backend.triton_available() else [])
    shapes = QUICK_SHAPES if a.quick else (GPU_SHAPES if device == "cuda" else FULL_SHAPES)
    rounds = a.rounds or (3 if a.quick else 5)
    ceiling = common.copy_bandwidth(device)
    sink = common.CsvSink("bench_loss", "kernels", device, a.out)
    print(f"device: {common.device_name(device)}  threads: {threads}  copy ceiling: {ceiling:.2f} GB/s  "
          f"({common.versions()}, rev {common.git_rev()})")
    sink.add("copy", "torch", "torch", "float32", "512MiB", "bandwidth", "GB/s", ceiling, ceiling, ceiling)
    for op in a.ops.split(","):
        for N, V in shapes:
            for dt in a.dtypes.split(","):
                dtype = getattr(torch, dt)
                rows = run_case(sink, op, N, V, dtype, device, backends, rounds,
                                not a.quick and not a.no_compile, ceiling)
                print_table(op, f"N={N},V={V}", dtype, rows)
    print(f"wrote {sink.flush()} rows to {sink.path}")


if __name__ == "__main__":
    main()
