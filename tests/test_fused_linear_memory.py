"""Memory proof (a test, not a timing): the fused linear + GRPO loss keeps no [N, V] tensor, so its peak
extra memory over inputs and outputs stays below two chunks of logits and does not grow with N (both
schedules: "tokens", and "vocab" whose backward tile holds the same budget of chunk * V logits), while the
naive materialized path (matmul + reference loss + autograd) grows by at least the [N, V] logits and their
gradient.

Each measurement runs in a fresh process (this file is the child's script): fp32 on CPU, backend "cpu",
V = 32000, H = 256, N = 2048 and 8192. The child builds the inputs, warms the op up on a small N (libraries,
OpenMP threads, GEMM buffers of the same chunk shape), then resets the RSS high-water mark (write "5" to
/proc/self/clear_refs) and runs forward + backward once. extra = VmHWM - RSS before - bytes of the outputs
(hidden.grad and weight.grad, which did not exist before; .grad starts as None, as after
zero_grad(set_to_none=True)). Torch's huge-page allocation stays off (THP_MEM_ALLOC_ENABLE unset), so RSS
moves in 4 KiB pages, and glibc's mmap threshold is fixed at 64 KiB, so freed buffers leave RSS. Chunk size used: the default rule, plan_chunk(N, 256, 32000) = 256 tokens at both N
(N * H / V = 16 and 66, raised to the floor of 256), so two chunks of fp32 logits are
2 * 256 * 32000 * 4 B = 65.5 MB.
"""
import json
import os
import subprocess
import sys

import pytest

V, H = 32000, 256
NS = (2048, 8192)
MB = 1e6


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _child(variant, N):
    """Runs in the subprocess: one measurement, printed as JSON."""
    import torch

    from grpo import ops
    from grpo.ops.fused_linear import fused_linear_grpo_loss_ref, plan_chunk

    torch.set_num_threads(2)
    torch.manual_seed(0)

    def make(n):
        B, T = n // 256, 256
        h = torch.randn(B, T, H).requires_grad_()
        w = (torch.randn(V, H) * 0.1).requires_grad_()
        t = torch.randint(0, V, (B, T))
        mask = torch.rand(B, T) > 0.1
        adv = torch.randn(B)
        old = torch.randn(B, T) * 0.1 - 10.0
        return h, w, t, mask, adv, old

    def step(h, w, t, mask, adv, old):
        if variant in ("fused", "vocab"):
            schedule = "tokens" if variant == "fused" else "vocab"
            out = ops.fused_linear_grpo_loss(h, w, t, mask, adv, old_logp=old, backend="cpu", schedule=schedule)
        else:
            out = fused_linear_grpo_loss_ref(h, w, t, mask, adv, old_logp=old)
        out.loss.backward()

    step(*make(512))  # warm-up: same V, H and chunk shape (256 tokens), small N
    inputs = make(N)
    h, w = inputs[0], inputs[1]
    out_bytes = (h.numel() + w.numel()) * 4  # hidden.grad + weight.grad, fp32
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS now
    before = _rss_kb("VmRSS")
    step(*inputs)
    hwm, after = _rss_kb("VmHWM"), _rss_kb("VmRSS")
    assert h.grad is not None and w.grad is not None
    print(json.dumps(dict(variant=variant, N=N, chunk=plan_chunk(N, H, V), extra=hwm * 1024 - before * 1024 - out_bytes,
                          kept=after * 1024 - before * 1024, out_bytes=out_bytes)))


def _measure(variant, N):
    # A fixed glibc mmap threshold: every buffer >= 64 KiB is its own mapping, returned to the system when
    # freed. With glibc's dynamic threshold (up to 32 MiB) freed buffers stay resident in the heap, and RSS
    # then mixes live and cached memory.
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="65536")
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), variant, str(N)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, f"child {variant} N={N} failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc RSS high-water marks")
def test_fused_linear_peak_memory_independent_of_n():
    fused = {N: _measure("fused", N) for N in NS}
    vocab = {N: _measure("vocab", N) for N in NS}
    naive = {N: _measure("naive", N) for N in NS}
    for N in NS:
        f, v, n = fused[N], vocab[N], naive[N]
        print(f"N={N}: fused extra {f['extra'] / MB:.1f} MB (chunk {f['chunk']}), vocab schedule {v['extra'] / MB:.1f} "
              f"MB, naive extra {n['extra'] / MB:.1f} MB, outputs {f['out_bytes'] / MB:.1f} MB (kept after: fused "
              f"{f['kept'] / MB:.1f}, vocab {v['kept'] / MB:.1f}, naive {n['kept'] / MB:.1f})")
    for N in NS:
        bound = 2 * fused[N]["chunk"] * V * 4  # two chunks of fp32 logits
        assert fused[N]["extra"] < bound, (N, fused[N], bound)
        assert vocab[N]["extra"] < bound, (N, vocab[N], bound)
    growth = naive[NS[1]]["extra"] - naive[NS[0]]["extra"]
    logits_and_grad = 2 * (NS[1] - NS[0]) * V * 4
    assert growth >= logits_and_grad, (growth, logits_and_grad, naive)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
