"""Shared benchmark plumbing: interleaved timing with medians, the memcpy ceiling, hardware and version
facts, and CSV rows (suite, op, provider, backend, dtype, shape, metric, unit, p20, p50, p80, device,
threads, versions, git revision, timestamp)."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
import time

# Large CPU tensors take transparent huge pages (fewer TLB misses and page faults in this VM); set before
# torch allocates anything, and it applies to every provider alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLUMNS = ["suite", "op", "provider", "backend", "dtype", "shape", "metric", "unit", "p20", "p50", "p80",
           "device", "threads", "versions", "git_rev", "timestamp"]


def set_threads(n: int | None) -> int:
    if n:
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch.set_num_threads(n)
    return torch.get_num_threads()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_once(fn, device) -> float:
    """Seconds for one call: CUDA events on GPU, perf_counter on CPU."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quantiles(xs):
    t = torch.tensor(xs, dtype=torch.float64)
    return tuple(float(torch.quantile(t, q)) for q in (0.2, 0.5, 0.8))


def interleaved(fns: dict, device, rounds: int, warmup: int = 1) -> dict:
    """Times each provider `rounds` times, alternating providers within every round (so drift in the
    machine's speed hits all of them alike). Returns name -> (p20, p50, p80) seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
        sync(device)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(time_once(fn, device))
    return {k: quantiles(v) for k, v in times.items()}


def copy_bandwidth(device, nbytes=512 * 2**20, rounds=7) -> float:
    """Measured copy rate in GB/s, counting read + write (2 x size): the memory ceiling on this machine."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    q = interleaved({"copy": lambda: dst.copy_(src)}, device, rounds, warmup=2)["copy"]
    return 2 * nbytes / q[1] / 1e9


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_rev() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def versions() -> str:
    import grpo
    v = [f"torch {torch.__version__}", f"grpo {grpo.__version__}"]
    try:
        import triton
        v.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(v)


class CsvSink:
    """Appends rows to bench/results/<name>.csv (header written once)."""

    def __init__(self, name: str, suite: str, device, path: str | None = None):
        self.path = path or os.path.join(RESULTS, f"{name}.csv")
        self.suite = suite
        self.common = dict(device=device_name(device), threads=torch.get_num_threads(), versions=versions(),
                           git_rev=git_rev(), timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
                               timespec="seconds"))
        self.rows = []

    def add(self, op, provider, backend, dtype, shape, metric, unit, p20, p50, p80):
        row = dict(suite=self.suite, op=op, provider=provider, backend=backend, dtype=str(dtype).replace("torch.", ""),
                   shape=shape, metric=metric, unit=unit, p20=f"{p20:.6g}", p50=f"{p50:.6g}", p80=f"{p80:.6g}",
                   **self.common)
        self.rows.append(row)

    def flush(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerows(self.rows)
        n, self.rows = len(self.rows), []
        return n
