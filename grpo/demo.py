"""The main job until the engine lands: the ops on random data, every backend this machine has, side by
side with the reference (loss, gradient agreement, which backend ran, how long it took).

    python -m grpo.demo [--B 8] [--T 128] [--V 32000] [--G 4] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # huge pages for large CPU tensors (fewer page faults)

import torch  # noqa: E402

from grpo import ops  # noqa: E402
from grpo.ops import LossConfig  # noqa: E402


def _make_batch(B, T, V, G, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype).to(device)
    targets = torch.randint(0, V, (B, T), generator=g).to(device)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    rewards = torch.randint(0, 2, (B,), generator=g).float().to(device)  # a 0/1 verifier
    noise = torch.randn(2, B, T, generator=g).mul(0.05).to(device)  # policy drift since sampling
    return logits, targets, mask, rewards, noise


def _run(backend, logits, targets, mask, adv, old, sampling, config):
    """Forward + backward once to warm up, then once timed (median-free: this is a demo, not a benchmark)."""
    for _ in range(2):
        x = logits.detach().clone().requires_grad_()
        t0 = time.perf_counter()
        out = ops.grpo_loss(x, targets, mask, adv, old_logp=old, sampling_logp=sampling, config=config,
                            backend=backend)
        out.loss.backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return out, x.grad, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=8, help="sequences (default 8)")
    p.add_argument("--T", type=int, default=128, help="completion tokens per sequence (default 128)")
    p.add_argument("--V", type=int, default=32000, help="vocab size (default 32000)")
    p.add_argument("--G", type=int, default=4, help="group size (default 4)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, a.dtype)
    logits, targets, mask, rewards, noise = _make_batch(a.B, a.T, a.V, a.G, dtype, device, a.seed)
    config = LossConfig(eps_high=0.28, is_mode="token_truncate", entropy=True)
    adv, zero = ops.group_advantages(rewards, a.G, return_zero_std=True)
    with torch.no_grad():  # the "old policy" pass; the sampler's logprobs differ slightly from the trainer's
        old = ops.token_logprobs(logits, targets) + noise[0]
        sampling = old + noise[1]
    print(f"grpo demo on {device} ({torch.get_num_threads()} threads): B={a.B} T={a.T} V={a.V} G={a.G} {a.dtype}")
    print(f"rewards     {rewards.tolist()}")
    print(f"advantages  {[round(v, 3) for v in adv.tolist()]}  (zero-variance groups: {int(zero.sum())})")
    print(f"config      {config}")
    ref_out, ref_grad, ref_s = _run("torch", logits, targets, mask, adv, old, sampling, config)
    backends = ["auto", "cpu"] if device == "cpu" else ["auto", "cuda"]
    print(f"{'backend':10s} {'ran':8s} {'loss':>12s} {'max|dgrad|':>12s} {'ms':>9s}")
    print(f"{'torch':10s} {'torch':8s} {ref_out.loss.item():12.6f} {0.0:12.3e} {ref_s * 1e3:9.1f}")
    for be in backends:
        out, grad, s = _run(be, logits, targets, mask, adv, old, sampling, config)
        ran = ops._backend.resolve(be, logits)
        diff = (grad.float() - ref_grad.float()).abs().max().item()
        print(f"{be:10s} {ran:8s} {out.loss.item():12.6f} {diff:12.3e} {s * 1e3:9.1f}")
    print("metrics     " + ", ".join(f"{k}={v.item():.4g}" for k, v in out.metrics.items()))
    print("(ms: forward + backward after one warm-up call; benchmarks: python -m bench.bench_loss)")
    print("The engine (grpo train) replaces this demo when it lands.")


if __name__ == "__main__":
    main()
