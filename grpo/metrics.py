"""Per-step metrics and phase timers: metrics.jsonl in the run folder, TensorBoard when installed, and a
rich progress bar with ETA and the headline numbers. Phase timers also open torch.profiler ranges
(`record_function`, NVTX on GPU) so traces show each phase by name."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch


class PhaseTimer:
    """Accumulates wall seconds per named phase; `with timer("generation"): ...`."""

    def __init__(self, sync_cuda: bool = False):
        self.seconds: dict[str, float] = {}
        self.sync_cuda = sync_cuda

    @contextlib.contextmanager
    def __call__(self, name: str):
        nvtx = torch.cuda.is_available() and self.sync_cuda
        if nvtx:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_push(f"grpo/{name}")
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"grpo/{name}"):
                yield
        finally:
            if nvtx:
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated bytes on CUDA since the last reset; on CPU the process's resident high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _clean(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/NaN; keep them visible
    return v


class MetricsLogger:
    """Appends one JSON object per step to run_dir/metrics.jsonl (flushed and fsynced: a killed run keeps
    every finished step), mirrors scalars to TensorBoard when available, drives the progress bar."""

    HEADLINE = ("reward/total_mean", "accuracy", "format_rate", "completion_len/mean", "tokens_per_s/overall")

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)
        self.tb = _tensorboard(run_dir) if tensorboard else None
        self.progress = _Progress(total_steps, start_step) if progress else None

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        row = {"step": step, "kind": kind, "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
        if self.progress is not None and kind == "train":
            self.progress.update(step, {k: row.get(k) for k in self.HEADLINE})

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            self.tb.close()
        self._f.close()


def _tensorboard(run_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(Path(run_dir) / "tb"))
    except Exception:  # tensorboard not installed: metrics.jsonl has everything
        return None


class _Progress:
    def __init__(self, total: int, start: int):
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        except ImportError:
            self.bar = None
            return
        self.bar = Progress(TextColumn("[bold]grpo[/] step {task.completed}/{task.total}"), BarColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"))
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, head: dict) -> None:
        if self.bar is None:
            return
        short = {"reward/total_mean": "reward", "accuracy": "acc", "format_rate": "fmt",
                 "completion_len/mean": "len", "tokens_per_s/overall": "tok/s"}
        info = "  ".join(f"{short[k]} {v:.3g}" for k, v in head.items() if isinstance(v, (int, float)))
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def read_metrics(run_dir, kind: Optional[str] = "train") -> list[dict]:
    """The rows of run_dir/metrics.jsonl (of one kind, or all with kind=None)."""
    rows = []
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                if kind is None or row.get("kind") == kind:
                    rows.append(row)
    return rows
