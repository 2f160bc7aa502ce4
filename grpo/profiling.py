"""Profiling a run: a torch.profiler trace (Chrome / Perfetto JSON) of N engine steps, with the phase
ranges the engine opens (grpo/generation, grpo/reward, grpo/logprobs, grpo/train, grpo/weight_sync:
`record_function` ranges on CPU, also NVTX ranges on GPU, see grpo.metrics.PhaseTimer), a top-kernels
table by self time, and each step's metrics (per-phase timers included) in the run folder.

    grpo profile --preset tiny --steps 2 --warmup 1 --out runs/profile-tiny
    grpo train --profile 2 ...            # the first 2 steps of a training run

Files written next to the trace: top_kernels.txt (torch.profiler's table, sorted by self device time on
GPU, self CPU time on CPU), top_kernels.json (the same rows, structured), phases.json (seconds per phase
range read back from the trace). Our ops are torch.library custom ops, so they appear in the trace and the
table under their registered names (grpo::grpo_loss, grpo::fused_linear_grpo_loss, grpo::token_logprobs,
grpo::softmax_grad, grpo::group_advantages, grpo::fused_linear_logprobs, and the vocab schedule's backward
grpo::fused_linear_grpo_loss_vocab_backward).
Open the trace in https://ui.perfetto.dev or chrome://tracing.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

PHASE_PREFIX = "grpo/"


def _sort_key() -> str:
    """The key_averages column to sort by: self device time on GPU, self CPU time on CPU."""
    return "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"


def top_kernels(prof, n: int = 25) -> list:
    """The n most expensive ops/kernels by self time: name, calls, self and total time (us), % of all self
    time (the phase ranges' own Python time excluded). On GPU the device times are used."""
    gpu = torch.cuda.is_available()
    rows = []
    for e in prof.key_averages():
        if e.key.startswith(PHASE_PREFIX):  # the phase ranges are reported by trace_phases, not as kernels
            continue
        self_us = float(getattr(e, "self_device_time_total", 0.0) if gpu else e.self_cpu_time_total)
        total_us = float(getattr(e, "device_time_total", 0.0) if gpu else e.cpu_time_total)
        rows.append(dict(name=e.key, calls=int(e.count), self_us=self_us, total_us=total_us))
    everything = sum(r["self_us"] for r in rows) or 1.0
    rows.sort(key=lambda r: r["self_us"], reverse=True)
    for r in rows:
        r["pct"] = 100 * r["self_us"] / everything
    return rows[:n]


def trace_phases(trace_path) -> dict:
    """{phase: {"seconds": total duration, "count": ranges}} of the grpo/<phase> ranges in a Chrome trace."""
    with open(trace_path) as f:
        events = json.load(f).get("traceEvents", [])
    out: dict = {}
    for ev in events:
        name = ev.get("name", "")
        if ev.get("ph") == "X" and isinstance(name, str) and name.startswith(PHASE_PREFIX):
            cat = ev.get("cat", "")
            if cat and "gpu" in cat:  # the GPU-side copy of a range: count the host range once
                continue
            p = out.setdefault(name[len(PHASE_PREFIX):], {"seconds": 0.0, "count": 0})
            p["seconds"] += float(ev.get("dur", 0.0)) / 1e6
            p["count"] += 1
    return out


def profile_steps(engine, steps: int, trace_path, logger=None, *, warmup: int = 0, row_limit: int = 25) -> dict:
    """Runs `warmup` engine steps unprofiled (start-up costs such as vLLM's first-request compile stay out
    of the trace), then `steps` steps under torch.profiler. Writes the trace to `trace_path` and
    top_kernels.txt / top_kernels.json / phases.json next to it; every step's metrics go to `logger`.
    Returns {"trace", "table", "top", "phases", "metrics"} (metrics: the profiled steps' dicts)."""
    for _ in range(warmup):
        m = engine.train_step()
        if logger is not None:
            logger.log(engine.step, m)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    profiled = []
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
        for _ in range(steps):
            m = engine.train_step()
            profiled.append(m)
            if logger is not None:
                logger.log(engine.step, m)
    trace_path = Path(trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    table = prof.key_averages().table(sort_by=_sort_key(), row_limit=row_limit)
    top = top_kernels(prof, row_limit)
    phases = trace_phases(trace_path)
    folder = trace_path.parent
    (folder / "top_kernels.txt").write_text(table)
    (folder / "top_kernels.json").write_text(json.dumps(top, indent=1))
    (folder / "phases.json").write_text(json.dumps(phases, indent=1))
    return dict(trace=str(trace_path), table=table, top=top, phases=phases, metrics=profiled)


def run_profile(cfg, out_dir, *, steps: int = 2, warmup: int = 1, row_limit: int = 25) -> dict:
    """`grpo profile`: builds the engine for `cfg`, writes out_dir/trace.json and the tables, and the
    metrics of every step (warm-up ones too) to out_dir/metrics.jsonl."""
    from .engine import GRPOEngine
    from .metrics import MetricsLogger

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = GRPOEngine(cfg, run_dir=out_dir)
    logger = MetricsLogger(out_dir, total_steps=warmup + steps, tensorboard=False, progress=False)
    try:
        res = profile_steps(engine, steps, out_dir / "trace.json", logger, warmup=warmup, row_limit=row_limit)
    finally:
        logger.close()
        close = getattr(engine.sampler, "close", None)
        if close is not None:
            close()
    return res


def format_report(res: dict, top_n: int = 15) -> str:
    """Human-readable lines: the phases (trace ranges next to the engine's timers) and the top kernels."""
    lines = ["phase          trace s   timer s (sum over profiled steps)"]
    for phase, p in res["phases"].items():
        timer = sum(float(m.get(f"time/{phase}", 0.0)) for m in res["metrics"])
        lines.append(f"{phase:14s} {p['seconds']:8.3f}  {timer:8.3f}   ({p['count']} ranges)")
    unit = "self device us" if torch.cuda.is_available() else "self CPU us"
    lines += ["", f"top kernels by {unit}:", f"{'%':>6s} {'self us':>12s} {'calls':>7s}  name"]
    for r in res["top"][:top_n]:
        lines.append(f"{r['pct']:6.1f} {r['self_us']:12.0f} {r['calls']:7d}  {r['name']}")
    return "\n".join(lines)
