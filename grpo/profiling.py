"""Profiling a run: a torch.profiler trace (Chrome / Perfetto JSON) of N engine steps, with the phase
ranges the engine opens (grpo/generation, grpo/reward, grpo/logprobs, grpo/train, grpo/weight_sync) and
a top-ops table by self time."""
from __future__ import annotations

from pathlib import Path

import torch


def profile_steps(engine, steps: int, trace_path, logger=None) -> str:
    """Runs `steps` engine steps under torch.profiler, writes the trace to trace_path and the top-ops
    table next to it (top_ops.txt); returns the table."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
        for _ in range(steps):
            m = engine.train_step()
            if logger is not None:
                logger.log(engine.step, m)
    trace_path = Path(trace_path)
    prof.export_chrome_trace(str(trace_path))
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    (trace_path.parent / "top_ops.txt").write_text(table)
    return table
