"""Shared benchmark plumbing, reused by every bench/bench_*.py:

- threads: `set_threads` (torch + OMP_NUM_THREADS + Inductor's C++ kernels, one count for all providers);
- timing: `time_call` (perf_counter on CPU, CUDA events on GPU), `interleaved` (providers alternate within
  every round, warm-up first), `quantiles` (p20, p50, p80) and `paired_ratios` (per-round time ratios);
- the ceiling: `copy_bandwidth`, the measured copy rate `dst.copy_(src)` counting read + write;
- facts: `device_name`, `versions`, `git_rev`, `timestamp`;
- rows: `CsvSink` appends to bench/results/<name>.csv (header written when the file is new) with COLUMNS.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import subprocess
import time

# Large CPU tensors get transparent huge pages (madvise) from torch's allocator: fewer page faults and TLB
# misses in this VM. Set before torch allocates anything; it applies to every provider alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
COLUMNS = ["suite", "op", "provider", "backend", "dtype", "shape", "metric", "unit", "p20", "p50", "p80",
           "device", "threads", "versions", "git_rev", "timestamp"]


# --- threads and devices ------------------------------------------------------------------------------
def all_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Uses `n` threads (default: all cores) everywhere: OMP_NUM_THREADS (child processes, OpenMP runtimes
    loaded later), torch.set_num_threads (ATen and grpo._C, which reads torch.get_num_threads()), and
    Inductor's generated C++ kernels (pinned, so a cached kernel built for another count is not reused)."""
    n = n or all_cores()
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    try:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.threads = n
    except (ImportError, AttributeError):
        pass
    return torch.get_num_threads()


def _cpu_ticks() -> tuple:
    """(all CPUs' ticks, idle ticks, this process's ticks incl. its threads and waited children)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    with open("/proc/self/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()  # s[11:15]: utime stime cutime cstime
    return sum(v), v[3] + v[4], sum(int(x) for x in s[11:15])


class LoadMeter:
    """Share of all CPUs' time taken by *other* processes since creation (or `restart`): busy ticks minus
    this process's own. On a shared 2-core machine it tells whether a timing was contaminated."""

    def __init__(self):
        self.restart()

    def restart(self):
        """Starts a new measurement window."""
        try:
            self.t0 = _cpu_ticks()
        except (OSError, ValueError, IndexError):
            self.t0 = None

    def others(self) -> float:
        """Fraction 0..1 (NaN without /proc)."""
        if self.t0 is None:
            return float("nan")
        total, idle, mine = (b - a for a, b in zip(self.t0, _cpu_ticks()))
        return min(1.0, max(0.0, (total - idle - mine) / max(1, total)))


def busy_note(seconds: float = 1.0) -> str:
    """One line on the background load over `seconds` (this process sleeps); flags it above 10%."""
    m = LoadMeter()
    time.sleep(seconds)
    b = m.others()
    flag = "  WARNING: other processes are busy, timings are skewed" if b > 0.10 else ""
    return f"background CPU load: {100 * b:.0f}% of {all_cores()} cores{flag}"


def wait_quiet(max_seconds: float, threshold: float = 0.10, window: float = 3.0) -> float:
    """Waits (up to `max_seconds`) until other processes use < `threshold` of the CPUs over `window`
    seconds. Returns the last measured background load."""
    deadline = time.monotonic() + max_seconds
    while True:
        m = LoadMeter()
        time.sleep(window)
        b = m.others()
        if b < threshold or time.monotonic() >= deadline:
            return b


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cuda(device) -> bool:
    """Whether `device` (str or torch.device) is a CUDA device."""
    return torch.device(device).type == "cuda"


def sync(device):
    """Waits for queued GPU work (no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize()


def free_memory(device):
    """Returns freed blocks to the system between cases (the CUDA caching allocator keeps them)."""
    import gc
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


# --- timing -------------------------------------------------------------------------------------------
def time_call(fn, device) -> float:
    """Wall seconds of one call: CUDA events around it on GPU (synchronized), perf_counter on CPU."""
    if is_cuda(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def with_env(fn, **env):
    """fn with os.environ updated by `env` during each call: a provider variant chosen by a measurement
    knob (e.g. GRPO_ROWS_ON_CHIP="0"). The previous values come back after the call."""
    def call(*args, **kwargs):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn(*args, **kwargs)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return call


def interleaved(fns: dict, device, reps: int, warmup: int = 1) -> dict:
    """Calls every provider `warmup` times, then times `reps` rounds; within a round the providers run
    one after the other (A, B, C, A, B, C, ...), so a drift in the machine's speed hits all of them alike.
    Returns name -> list of per-call seconds (round order kept, for paired ratios)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
        sync(device)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(time_call(fn, device))
    return times


def quantiles(xs, qs=(0.2, 0.5, 0.8)) -> tuple:
    """Linearly interpolated quantiles (p20, p50, p80 by default) of a non-empty list."""
    s = sorted(xs)
    out = []
    for q in qs:
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return tuple(out)


def paired_ratios(num: list, den: list) -> tuple:
    """(p20, p50, p80) of the per-round ratios num[r] / den[r]: robust to drift between rounds."""
    return quantiles([a / b for a, b in zip(num, den)])


def copy_bandwidth(device, nbytes: int = 512 * 2**20, reps: int = 9, warmup: int = 2) -> tuple:
    """The memory ceiling: GB/s of `dst.copy_(src)` on a `nbytes` buffer, counting read + write (2 x size),
    at the current thread count. Returns (p20, p50, p80) in GB/s (p20 = the slow end)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    ts = interleaved({"copy": lambda: dst.copy_(src)}, device, reps, warmup)["copy"]
    del src, dst
    free_memory(device)
    return tuple(2 * nbytes / t / 1e9 for t in reversed(quantiles(ts)))


# --- facts --------------------------------------------------------------------------------------------
def device_name(device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo with the core count."""
    if is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_rev() -> str:
    """`git rev-parse --short HEAD` of the repository (+dirty when tracked files differ), or "unknown".
    GRPO_GIT_REV overrides it: a snapshot of a commit run where the repository's .git is not (the GPU
    machine gets `git archive` of a commit, see bench/gpu_session.sh)."""
    if os.environ.get("GRPO_GIT_REV"):
        return os.environ["GRPO_GIT_REV"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def extension_digest() -> str:
    """Short sha256 of the built grpo._C library: tells builds apart when the sources are uncommitted."""
    import glob
    import hashlib
    libs = sorted(glob.glob(os.path.join(ROOT, "grpo", "_C*.so")) + glob.glob(os.path.join(ROOT, "grpo", "_C*.pyd")))
    if not libs:
        return "none"
    with open(libs[0], "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def versions() -> str:
    """torch, grpo (package version, git revision, digest of the built _C) and, where installed, triton."""
    v = [f"torch {torch.__version__}"]
    try:
        import grpo
        v.append(f"grpo {getattr(grpo, '__version__', '?')}@{git_rev()} _C {extension_digest()}")
    except ImportError:
        pass
    try:
        import triton
        v.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(v)


def timestamp() -> str:
    """UTC time now, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).replace("torch.", "")


# --- rows ---------------------------------------------------------------------------------------------
class CsvSink:
    """Collects rows and appends them to bench/results/<name>.csv (or `path`), header when the file is new.
    The device, thread count, versions, git revision and timestamp are fixed at creation (one run)."""

    def __init__(self, name: str, suite: str, device, path: str | None = None):
        self.path = path or os.path.join(RESULTS, f"{name}.csv")
        self.suite = suite
        self.fixed = dict(device=device_name(device), threads=torch.get_num_threads(), versions=versions(),
                          git_rev=git_rev(), timestamp=timestamp())
        self.rows = []

    def add(self, op, provider, backend, dtype, shape, metric, unit, p20, p50, p80):
        """Queues one row; None / NaN quantiles are written as "nan"."""
        fmt = lambda x: "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"  # noqa: E731
        self.rows.append(dict(suite=self.suite, op=op, provider=provider, backend=backend,
                              dtype=dtype if isinstance(dtype, str) else dtype_name(dtype), shape=shape,
                              metric=metric, unit=unit, p20=fmt(p20), p50=fmt(p50), p80=fmt(p80), **self.fixed))

    def flush(self) -> int:
        """Appends the collected rows; returns how many."""
        if not self.rows:
            return 0
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerows(self.rows)
        n, self.rows = len(self.rows), []
        return n
