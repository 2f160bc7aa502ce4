"""Every Triton launch of grpo.ops compiles for sm_90 (Hopper) on this machine, without a GPU.

The rest of the Triton tests run the kernels in Triton's CPU interpreter, which accepts some code the GPU
compiler rejects (it did once: an early return in a constexpr branch of a row helper). bench/
triton_sm90_check.py runs the launchers with the kernel launch recorded instead of executed and compiles
each distinct launch (kernel, argument types, constexprs, warps, stages) with Triton's bundled ptxas.
It runs in a subprocess without TRITON_INTERPRET, so @triton.jit gives real JIT functions.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_triton_launch_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice
    r = subprocess.run([sys.executable, "-m", "bench.triton_sm90_check", "--quick"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    tail = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, tail
    last = r.stdout.strip().splitlines()[-1]
    n = int(last.split()[0])
    assert n >= 100 and last.endswith(", 0 failed"), tail  # loss, head, logprobs, softmax-grad, advantages
    for kernel in ("_fused_loss_kernel", "_seq_head_kernel", "_logprobs_kernel", "_softmax_grad_kernel",
                   "_advantages_kernel"):
        assert f" {kernel} " in r.stdout, kernel
